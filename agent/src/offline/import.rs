//! `tend import` on the gateway (SPEC §9): verify a `.tend` file whole, take
//! its commit into the local repository and its images into the runtime,
//! then hand the commit to the cycle as a fetched tip — the health gate,
//! rollback, quarantine and history of a fetched one.
//!
//! Refused, with one line saying why and nothing left behind: an unsigned
//! file (unless `[import].require_signature = false`), a signature by a key
//! `[source].allowed_signers` does not list, a truncated or altered file, a
//! file for another fleet or branch, a commit that does not descend from
//! the applied one (unless `--allow-downgrade`), a commit whose own
//! signature `allowed_signers` refuses, images whose ids do not match,
//! too little free space (`[apply].min_free`).

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{Hashing, IMAGES, Opened, REPO, Sha, Trust};
use crate::source::Taken;
use crate::sync::{Agent, SyncOptions, SyncSummary, short};

/// How one file's import ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The file's name.
    pub file: String,
    /// `applied`, `unchanged` (its commit is applied already), `skipped`
    /// (not for this gateway), or what the sync ended as.
    pub outcome: String,
    pub commit: Option<String>,
    /// Who signed the export (the principals of the key).
    pub signer: Option<String>,
    pub detail: Option<String>,
    pub summary: Option<SyncSummary>,
}

/// What `take_in` found.
enum Taken_ {
    Skipped(Box<Outcome>),
    Ready { commit: String, signer: Option<String>, taken: Taken, loaded: Vec<String> },
}

/// Import `file` (named `name` in messages, history and events): `Ok` for
/// an import that was applied, skipped or had nothing to do; `Err` for a
/// refusal or a sync that failed (the cycle's error).
pub async fn import(
    agent: &Arc<Agent>,
    file: std::fs::File,
    name: String,
    allow_downgrade: bool,
    opts: SyncOptions,
) -> Result<Outcome, String> {
    let n = name.clone();
    let found = crate::sync::blocking(agent, move |a| {
        let mut file = file;
        take_in(a, &mut file, &n, allow_downgrade)
    })
    .await
    .map_err(|e| format!("{name}: {e}"))?;
    let (commit, signer, taken, loaded) = match found {
        Taken_::Skipped(o) => return Ok(*o),
        Taken_::Ready { commit, signer, taken, loaded } => (commit, signer, taken, loaded),
    };
    // The pack stays: the commit is in the history now, whatever the cycle
    // decides. Images loaded for a revision the cycle refuses at once are
    // left to the runtime's own pruning, as pulled ones are.
    drop((taken, loaded));
    tracing::info!(file = %name, revision = short(&commit), signer = signer.as_deref().unwrap_or("unsigned"), "importing");
    let r = crate::sync::sync_import(agent, opts, commit.clone(), name.clone()).await;
    match r {
        Ok(s) => Ok(Outcome {
            file: name,
            outcome: s.action.clone(),
            commit: Some(commit),
            signer,
            detail: None,
            summary: Some(s),
        }),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// Verify, check and take in: everything before the cycle. On `Err`
/// nothing of the file stays.
fn take_in(a: &Agent, file: &mut std::fs::File, name: &str, allow_downgrade: bool) -> Result<Taken_, String> {
    let cfg = &a.cfg;
    let signers = match &cfg.source.allowed_signers {
        Some(p) => Some(crate::trust::AllowedSigners::load(p)?),
        None => None,
    };
    let opened =
        super::open(file, &Trust { signers: signers.as_ref(), require_signature: cfg.import.require_signature })?;
    let m = &opened.manifest;
    let skipped = |why: String| {
        Ok(Taken_::Skipped(Box::new(Outcome {
            file: name.to_owned(),
            outcome: "skipped".into(),
            commit: Some(m.commit.clone()),
            signer: opened.signer.clone(),
            detail: Some(why),
            summary: None,
        })))
    };
    if m.fleet != cfg.fleet {
        return skipped(format!("exported for fleet {:?}; this gateway is in fleet {:?}", m.fleet, cfg.fleet));
    }
    if !m.devices.iter().any(|d| crate::trust::glob_match(d, &cfg.device_id)) {
        return skipped(format!("exported for {} other devices, not {}", m.devices.len(), cfg.device_id));
    }
    if m.branch != cfg.source.branch {
        return Err(format!(
            "exported from branch {:?}; this gateway follows {:?} ([source].branch)",
            m.branch, cfg.source.branch
        ));
    }
    let current = a.current().map_err(|e| e.to_string())?.map(|c| c.commit);
    if current.as_deref() == Some(m.commit.as_str()) {
        return Ok(Taken_::Skipped(Box::new(Outcome {
            file: name.to_owned(),
            outcome: "unchanged".into(),
            commit: Some(m.commit.clone()),
            signer: opened.signer.clone(),
            detail: Some(format!("revision {} is applied already", short(&m.commit))),
            summary: None,
        })));
    }
    let repo_size = m.parts.get(REPO).map_or(0, |p| p.size);
    // The pack and its index.
    free_space(&cfg.state_dir, "state_dir", repo_size.saturating_mul(2), cfg.apply.min_free)?;
    let runtime = if m.images.is_empty() {
        None
    } else {
        let socket =
            cfg.containers.socket.clone().or_else(crate::reconcile::containers::default_socket).ok_or(
                "it carries container images, and no container runtime socket was found; set [containers].socket",
            )?;
        let rt = crate::reconcile::containers::DockerRuntime::new(&socket);
        use crate::reconcile::containers::Runtime;
        if let Some(root) = rt.storage_root().or_else(|| crate::reconcile::containers::storage_guess().map(Into::into))
        {
            let images = m.parts.get(IMAGES).map_or(0, |p| p.size);
            free_space(&root, "the container storage", images, cfg.apply.min_free)?;
        }
        Some(rt)
    };

    // The commit.
    let (offset, size) = opened.span(REPO).ok_or("no repo.bundle")?;
    file.seek(SeekFrom::Start(offset)).map_err(|e| format!("cannot read: {e}"))?;
    let mut hashing = Hashing::new((&mut *file).take(size));
    let taken = {
        let mut r = BufReader::new(&mut hashing);
        let taken = a.source.take_bundle(&mut r, &m.commit, &m.branch).map_err(|e| format!("{REPO}: {e}"))?;
        // What the pack did not read, so the whole part is hashed again.
        match std::io::copy(&mut r, &mut std::io::sink()) {
            Ok(_) => taken,
            Err(e) => {
                taken.discard();
                return Err(format!("{REPO}: cannot read: {e}"));
            }
        }
    };
    let refuse = |taken: Taken, why: String| -> Result<Taken_, String> {
        taken.discard();
        Err(why)
    };
    if Some(hashing.finish()) != m.parts.get(REPO).map(|p| p.sha256) {
        return refuse(taken, format!("{REPO}: changed while it was read"));
    }
    if let Some(cur) = &current
        && !allow_downgrade
    {
        match a.source.descends(&m.commit, cur) {
            Ok(Some(true)) => {}
            Ok(Some(false)) => {
                return refuse(
                    taken,
                    format!(
                        "revision {} does not descend from {} applied now (a downgrade): refused; `tend import --allow-downgrade` applies it anyway",
                        short(&m.commit),
                        short(cur)
                    ),
                );
            }
            Ok(None) | Err(_) => {
                return refuse(
                    taken,
                    format!(
                        "cannot tell whether revision {} descends from {} applied now (the export does not reach back to it): refused as a possible downgrade; export without --since, or `tend import --allow-downgrade`",
                        short(&m.commit),
                        short(cur)
                    ),
                );
            }
        }
    }
    if let Some(s) = &signers {
        let raw = match a.source.commit_object(&m.commit) {
            Ok(raw) => raw,
            Err(e) => return refuse(taken, e.to_string()),
        };
        if let Err(e) = s.verify_commit(&raw) {
            return refuse(taken, format!("commit {} {e}", short(&m.commit)));
        }
    }
    let loaded = match &runtime {
        Some(rt) => match load_images(rt, file, &opened) {
            Ok(l) => l,
            Err(e) => return refuse(taken, e),
        },
        None => Vec::new(),
    };
    Ok(Taken_::Ready { commit: m.commit.clone(), signer: opened.signer.clone(), taken, loaded })
}

/// Load `images.tar` into the runtime and check each image's id; on any
/// error the references it added are removed again (an image that was here
/// under another name stays). Ok: the references it added.
fn load_images(
    rt: &crate::reconcile::containers::DockerRuntime,
    file: &std::fs::File,
    opened: &Opened,
) -> Result<Vec<String>, String> {
    let m = &opened.manifest;
    // What each reference names before: the load may add a reference (or
    // move one), and undoing it removes that reference only, never an
    // image that was here under another name.
    let mut before = std::collections::HashMap::new();
    for img in &m.images {
        before.insert(img.reference.clone(), rt.image_id(&img.reference).map_err(|e| e.to_string())?);
    }
    let (offset, size) = opened.span(IMAGES).ok_or("no images.tar")?;
    let mut f = file.try_clone().map_err(|e| format!("cannot read: {e}"))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| format!("cannot read: {e}"))?;
    let hashed: Arc<Mutex<Option<Sha>>> = Arc::default();
    let out = hashed.clone();
    let mut reader = Some(Hashing::new(f.take(size)));
    let chunks = std::iter::from_fn(move || {
        let r = reader.as_mut()?;
        let mut buf = vec![0u8; 256 << 10];
        match r.read(&mut buf) {
            Ok(0) => {
                let done = reader.take()?;
                *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(done.finish());
                None
            }
            Ok(n) => {
                buf.truncate(n);
                Some(Ok(hyper::body::Bytes::from(buf)))
            }
            Err(e) => {
                reader = None;
                Some(Err(e))
            }
        }
    });
    let result = rt.load_images(chunks).and_then(|()| {
        let sha = *hashed.lock().unwrap_or_else(|e| e.into_inner());
        if sha != m.parts.get(IMAGES).map(|p| p.sha256) {
            return Err(format!("{IMAGES}: changed while it was read"));
        }
        for img in &m.images {
            match rt.image_id(&img.reference).map_err(|e| e.to_string())? {
                Some(id) if id == img.id => {}
                Some(id) => {
                    return Err(format!("image {}: loaded as {id}, but the manifest says {}", img.reference, img.id));
                }
                None => return Err(format!("image {}: not in {IMAGES}", img.reference)),
            }
        }
        Ok(())
    });
    // The references the load made or moved.
    let added: Vec<String> = m
        .images
        .iter()
        .filter(|img| {
            let now = rt.image_id(&img.reference).ok().flatten();
            now.is_some() && before.get(&img.reference).is_some_and(|b| *b != now)
        })
        .map(|img| img.reference.clone())
        .collect();
    match result {
        Ok(()) => Ok(added),
        Err(e) => {
            for r in &added {
                let undone = rt.untag_image(r).and_then(|()| match before.get(r) {
                    // A reference the load moved (`app:latest` to a new
                    // image) points at the image it named before again.
                    Some(Some(old)) if !r.contains('@') => rt.tag_image(old, r),
                    _ => Ok(()),
                });
                if let Err(why) = undone {
                    tracing::warn!(image = %r, error = %why, "could not undo what the refused import loaded");
                }
            }
            Err(e)
        }
    }
}

/// Refuse when writing `need` bytes under `path` would leave less than
/// `keep` free there.
fn free_space(path: &Path, what: &str, need: u64, keep: u64) -> Result<(), String> {
    let free = crate::reconcile::space::free_bytes(path)
        .map_err(|e| format!("cannot read the free space of {} ({what}): {e}", path.display()))?;
    if free < need.saturating_add(keep) {
        use crate::bounds::show_size;
        return Err(format!(
            "not enough free space on {} ({what}): {} free; the import needs {} and [apply].min_free keeps {}",
            path.display(),
            human(free),
            human(need),
            show_size(keep)
        ));
    }
    Ok(())
}

/// Bytes for people: `1.5 GiB`.
pub fn human(b: u64) -> String {
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (u, s) in units {
        if b >= s {
            return format!("{:.1} {u}", b as f64 / s as f64);
        }
    }
    format!("{b} bytes")
}

/// What a report on a stick holds at most of the history and of the events.
const REPORT_HISTORY: usize = 20;
const REPORT_EVENTS: usize = 1000;

/// This gateway's report for a stick (SPEC §9, format `tend-report/1`): its
/// status, its recent history and the events it has not delivered, for
/// `tend fleet ingest` to publish as if the gateway had sent them.
pub fn report(a: &Agent) -> Result<serde_json::Value, String> {
    let status = a.status().map_err(|e| e.to_string())?;
    let mut history = a.history_json().map_err(|e| e.to_string())?;
    history.truncate(REPORT_HISTORY);
    let events: Vec<serde_json::Value> =
        a.store.events_after(0, REPORT_EVENTS).map_err(|e| e.to_string())?.into_iter().map(|(_, e)| e).collect();
    Ok(serde_json::json!({
        "format": "tend-report/1",
        "device_id": a.cfg.device_id,
        "fleet": a.cfg.fleet,
        "written_at": jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string(),
        "agent_version": env!("CARGO_PKG_VERSION"),
        "status": status,
        "history": history,
        "events": events,
    }))
}
