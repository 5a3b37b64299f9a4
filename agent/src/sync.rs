//! The sync cycle (SPEC §3): fetch → render → validate → plan → apply → record.
//!
//! What must always hold: a bundle is applied whole or not at all — every check
//! that can fail before the disk is touched (render, policy, owners, things in
//! the way) runs before the first write; a revision record is written only after
//! the blobs it references; a sync where nothing changed reads no file content,
//! renders nothing and writes only the status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::bundle::{self, BundleError, Desired, Limits, Policy, RelPath};
use crate::config::Config;
use crate::hash::ContentHash;
use crate::reconcile::files::{self, ApplyReport, FileError, FileRoot, ProcessRunner, Runner};
use crate::reconcile::plan::{Live, Plan, plan};
use crate::source::{Fetched, GitSource, SourceError};
use crate::store::{Outcome, Resources, RevisionRecord, SledStore, Status, Store, StoreError};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a sync did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("source: {0}")]
    Source(#[from] SourceError),
    #[error("bundle rejected at {commit}: {error}")]
    Bundle { commit: String, error: BundleError },
    #[error("cannot apply {commit}: {}", .blocked.join("; "))]
    Blocked { commit: String, blocked: Vec<String> },
    #[error("apply of {commit} failed: {error}")]
    Apply { commit: String, error: FileError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SyncError {
    /// Transient errors are retried with backoff; the rest wait for a new commit.
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::Source(e) => e.is_transient(),
            SyncError::Apply { error: FileError::Io { .. }, .. } => true,
            SyncError::Blocked { .. } => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    pub dry_run: bool,
}

/// What one sync found and did.
#[derive(Debug, Clone)]
pub struct SyncReport {
    pub commit: String,
    pub received_pack: bool,
    /// Whether the bundle was rendered from the commit (false: reused from the store).
    pub rendered: bool,
    pub plan: Plan,
    pub applied: Option<ApplyReport>,
    pub files: usize,
    pub timings: Timings,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub fetch_ms: f64,
    pub render_ms: f64,
    pub plan_ms: f64,
    pub apply_ms: f64,
}

/// One gateway's agent: its config, store, source and destination tree.
pub struct Agent {
    pub cfg: Config,
    pub store: SledStore,
    pub source: GitSource,
    pub root: FileRoot,
    pub limits: Limits,
    pub runner: Box<dyn Runner + Send + Sync>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("device_id", &self.cfg.device_id).finish()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Agent {
    /// Open the store under `state_dir` (one process at a time).
    pub fn open(cfg: Config) -> Result<Agent, StoreError> {
        let store = SledStore::open(&cfg.state_dir.join("store"))?;
        Ok(Agent {
            source: GitSource::new(&cfg),
            root: FileRoot::new(cfg.files.root.clone()),
            runner: Box::new(ProcessRunner { timeout: Duration::from_secs(300) }),
            limits: Limits::default(),
            store,
            cfg,
        })
    }

    /// Everything besides the commit that shapes the rendered bundle.
    fn render_key(&self) -> String {
        let c = &self.cfg;
        let text = format!(
            "{}\0{}\0{:?}\0{}\0{:?}\0{:?}",
            c.device_id, c.fleet, c.labels, c.source.path, c.files.allow, self.limits
        );
        ContentHash::of(text.as_bytes()).short()
    }

    fn bundle_path(&self) -> RelPath {
        RelPath::parse(&self.cfg.source.path).unwrap_or_default()
    }

    /// Render the bundle of `commit` from the fetched repository.
    pub fn render_commit(&self, commit: &str) -> Result<bundle::Rendered, SyncError> {
        let tree = self.source.tree(commit)?;
        let identity = self.cfg.identity();
        let policy = Policy::from_config(&self.cfg.files);
        let ctx = bundle::Context { identity: &identity, policy: &policy, limits: &self.limits };
        let rendered = bundle::render(&tree, &self.bundle_path(), &ctx)
            .map_err(|error| SyncError::Bundle { commit: commit.to_owned(), error })?;
        if rendered.desired.is_empty() && !self.cfg.apply.allow_empty {
            return Err(SyncError::Bundle {
                commit: commit.to_owned(),
                error: BundleError {
                    file: self.cfg.source.path.clone(),
                    reason: "the bundle declares nothing; refusing to prune everything (set [apply].allow_empty = true to allow it)".into(),
                },
            });
        }
        Ok(rendered)
    }

    /// One sync cycle.
    pub fn sync(&self, opts: SyncOptions) -> Result<SyncReport, SyncError> {
        let mut timings = Timings::default();
        let t = Instant::now();
        let fetched = match self.source.fetch() {
            Ok(f) => f,
            Err(e) => {
                self.record_status(|s| {
                    s.source = "unreachable".into();
                    s.error = Some(format!("source: {e}"));
                    if s.revision.is_none() {
                        s.phase = "failed".into();
                    }
                })?;
                return Err(e.into());
            }
        };
        timings.fetch_ms = ms(t.elapsed());
        let span = tracing::info_span!("sync", revision = %short(&fetched.commit));
        let _enter = span.enter();
        let result = self.sync_fetched(&fetched, opts, &mut timings);
        if opts.dry_run {
            return result;
        }
        match &result {
            Ok(report) => {
                tracing::debug!(?timings, "sync done");
                self.record_status(|s| {
                    s.phase = "synced".into();
                    s.revision = Some(fetched.commit.clone());
                    s.target_revision = Some(fetched.commit.clone());
                    s.last_good_revision = Some(fetched.commit.clone());
                    s.source = "ok".into();
                    s.error = None;
                    s.resources = Resources { total: report.files, ready: report.files, failed: 0 };
                })?;
            }
            Err(e) => {
                if let SyncError::Bundle { error, .. } = e {
                    self.record_revision(
                        &fetched.commit,
                        &self.render_key(),
                        &Desired::default(),
                        Outcome::Failed,
                        Some(error.to_string()),
                    )?;
                }
                let resources = self.count_ready().unwrap_or_default();
                self.record_status(|s| {
                    s.phase = "failed".into();
                    s.target_revision = Some(fetched.commit.clone());
                    s.source = "ok".into();
                    s.error = Some(e.to_string());
                    s.resources = resources;
                })?;
            }
        }
        self.store.flush()?;
        result
    }

    fn sync_fetched(
        &self,
        fetched: &Fetched,
        opts: SyncOptions,
        timings: &mut Timings,
    ) -> Result<SyncReport, SyncError> {
        let commit = &fetched.commit;
        let render_key = self.render_key();
        let latest = self.store.latest_revision()?;
        let t = Instant::now();
        let reuse =
            latest.as_ref().filter(|r| r.commit == *commit && r.render_key == render_key && r.outcome.is_good());
        let (desired, blobs): (Desired, HashMap<ContentHash, Vec<u8>>) = match reuse {
            Some(r) => (r.desired.clone(), HashMap::new()),
            None => {
                let r = self.render_commit(commit)?;
                (r.desired, r.blobs)
            }
        };
        let rendered = reuse.is_none();
        timings.render_ms = ms(t.elapsed());

        let t = Instant::now();
        let targets = files::targets(&desired).map_err(|error| SyncError::Bundle { commit: commit.clone(), error })?;
        let mut inv = self.store.inventory()?;
        let paths: BTreeSet<&RelPath> = targets.keys().chain(inv.files.keys()).collect();
        if inv.dirty && !opts.dry_run {
            self.root.clean_temporaries(paths.iter().copied());
        }
        let live = self
            .root
            .observe(paths.iter().copied(), &inv)
            .map_err(|error| SyncError::Apply { commit: commit.clone(), error })?;
        let plan = plan(&targets, &live, &inv, self.cfg.apply.prune);
        timings.plan_ms = ms(t.elapsed());
        let mut report = SyncReport {
            commit: commit.clone(),
            received_pack: fetched.received_pack,
            rendered,
            plan,
            applied: None,
            files: desired.files.len(),
            timings: Timings::default(),
        };
        if !report.plan.blocked.is_empty() {
            let blocked =
                report.plan.blocked.iter().map(|b| format!("{}: {}", b.path.to_absolute_string(), b.reason)).collect();
            if !opts.dry_run && rendered {
                self.record_revision(commit, &render_key, &desired, Outcome::Failed, Some("blocked".into()))?;
            }
            return Err(SyncError::Blocked { commit: commit.clone(), blocked });
        }
        if opts.dry_run {
            report.timings = timings.clone();
            return Ok(report);
        }

        let t = Instant::now();
        for (h, data) in &blobs {
            self.store.put_blob(h, data)?;
        }
        let content = |h: &ContentHash| -> Result<Vec<u8>, String> {
            match blobs.get(h) {
                Some(b) => Ok(b.clone()),
                None => self
                    .store
                    .get_blob(h)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("content {} missing from the store", h.short())),
            }
        };
        let outcome = if report.plan.is_empty() {
            Ok(ApplyReport::default())
        } else {
            for op in &report.plan.ops {
                if op.changes_disk() {
                    tracing::info!("{op}");
                }
            }
            self.root.apply(&report.plan, &content, &self.store, &mut inv, self.runner.as_ref())
        };
        timings.apply_ms = ms(t.elapsed());
        report.timings = timings.clone();
        match outcome {
            Ok(applied) => {
                if rendered {
                    self.record_revision(commit, &render_key, &desired, Outcome::Applied, None)?;
                }
                if report.plan.ops.iter().any(|o| o.changes_disk()) && !rendered {
                    tracing::info!("drift repaired");
                }
                report.applied = Some(applied);
                Ok(report)
            }
            Err(error) => {
                if rendered {
                    self.record_revision(commit, &render_key, &desired, Outcome::Failed, Some(error.to_string()))?;
                }
                Err(SyncError::Apply { commit: commit.clone(), error })
            }
        }
    }

    fn record_revision(
        &self,
        commit: &str,
        render_key: &str,
        desired: &Desired,
        outcome: Outcome,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        // A failing commit polled again does not flood the history: the record
        // of the same failure is updated in place.
        let latest = self.store.latest_revision()?;
        let seq = match latest {
            Some(l)
                if outcome == Outcome::Failed
                    && l.outcome == Outcome::Failed
                    && l.commit == commit
                    && l.render_key == render_key =>
            {
                l.seq
            }
            _ => self.store.next_seq()?,
        };
        let rec = RevisionRecord {
            seq,
            commit: commit.to_owned(),
            bundle: self.cfg.source.path.clone(),
            render_key: render_key.to_owned(),
            applied_at: now_rfc3339(),
            outcome,
            error,
            desired: desired.clone(),
        };
        self.store.put_revision(&rec)?;
        let gc = self.store.gc(self.cfg.apply.history)?;
        if gc.revisions_removed + gc.blobs_removed > 0 {
            tracing::debug!(revisions = gc.revisions_removed, blobs = gc.blobs_removed, "history trimmed");
        }
        Ok(())
    }

    /// The status as stored, or the initial one.
    pub fn status(&self) -> Result<Status, StoreError> {
        Ok(self.store.status()?.unwrap_or_else(|| self.initial_status()))
    }

    fn initial_status(&self) -> Status {
        Status {
            device_id: self.cfg.device_id.clone(),
            fleet: self.cfg.fleet.clone(),
            agent_version: AGENT_VERSION.into(),
            phase: "progressing".into(),
            revision: None,
            target_revision: None,
            last_good_revision: None,
            source: "ok".into(),
            last_sync: None,
            error: None,
            resources: Resources::default(),
        }
    }

    fn record_status(&self, f: impl FnOnce(&mut Status)) -> Result<(), StoreError> {
        let mut s = self.status()?;
        s.device_id = self.cfg.device_id.clone();
        s.fleet = self.cfg.fleet.clone();
        s.agent_version = AGENT_VERSION.into();
        s.last_sync = Some(now_rfc3339());
        f(&mut s);
        self.store.set_status(&s)
    }

    /// Desired files of the newest good revision that are as desired on disk now.
    fn count_ready(&self) -> Result<Resources, SyncError> {
        let Some(rev) = self.store.revisions()?.into_iter().find(|r| r.outcome.is_good()) else {
            return Ok(Resources::default());
        };
        let targets =
            files::targets(&rev.desired).map_err(|error| SyncError::Bundle { commit: rev.commit.clone(), error })?;
        let inv = self.store.inventory()?;
        let live = self
            .root
            .observe(targets.keys(), &inv)
            .map_err(|error| SyncError::Apply { commit: rev.commit.clone(), error })?;
        let ready = targets
            .iter()
            .filter(|(p, t)| matches!(live.get(*p), Some(Live::File { hash, mode, .. }) if *hash == t.hash && *mode == t.mode))
            .count();
        Ok(Resources { total: targets.len(), ready, failed: targets.len() - ready })
    }

    /// History, newest first.
    pub fn history(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        self.store.revisions()
    }
}

/// The first 12 hex digits of a commit.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Count the desired files per bundle they came from (for `validate`).
pub fn files_by_bundle(desired: &Desired) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for f in desired.files.values() {
        let bundle = f.from.split("/files/").next().unwrap_or("").to_owned();
        *out.entry(bundle).or_insert(0) += 1;
    }
    out
}
