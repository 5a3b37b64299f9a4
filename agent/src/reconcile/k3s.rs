//! K3s manifests: written into `[k3s].manifests_dir` (K3s applies what is
//! there), pruned with the configured `kubectl` (K3s never deletes objects whose
//! file was removed).
//!
//! What must always hold:
//! - every file tend writes there has a name K3s can deploy: K3s tracks a file
//!   as an `Addon` named after its base name up to the first dot, and that
//!   name must be an RFC 1123 subdomain ([`file_name`],
//!   `docs/decisions/0003-k3s-manifest-names.md`);
//! - one bundle file, one Addon: two files never share an Addon name;
//! - tend touches only the files it wrote (its inventory) and never others;
//! - an unchanged manifest is not rewritten: K3s re-applies when a file changes;
//! - a write is atomic (a hidden temporary file K3s ignores, fsync, rename,
//!   fsync the directory);
//! - prune deletes exactly the objects tend's manifests declared and no
//!   manifest of the bundle still declares, by group, kind, namespace and name
//!   (never by apiVersion), in one `kubectl delete` per sync, with a timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::bundle::DesiredManifest;
use crate::bundle::manifest::{ObjectKey, ObjectRef};
pub use crate::bundle::manifest::{PREFIX, file_name};
use crate::hash::ContentHash;
pub use crate::store::OwnedManifest;

/// The Addon K3s makes of a file: its base name up to the first dot
/// (K3s `pkg/deploy/controller.go`, `objectMeta`).
pub fn addon_name(file: &str) -> &str {
    file.split('.').next().unwrap_or(file)
}

/// Whether `name` is a valid Kubernetes object name (an RFC 1123 subdomain:
/// at most 253 characters, lowercase `a-z0-9`, `-` and `.`, each dot-separated
/// label starting and ending with a letter or digit).
pub fn is_valid_addon_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestOp {
    /// Write a file. `after`: files (with the objects they take over) that
    /// K3s must have applied first, because this file gives those objects up:
    /// applied first, its Addon would prune them, and a pruned Namespace takes
    /// everything in it along (docs/decisions/0003-k3s-manifest-names.md).
    Write {
        rel: String,
        file: String,
        hash: ContentHash,
        objects: Vec<ObjectRef>,
        create: bool,
        after: Vec<(String, ObjectRef)>,
    },
    /// Remove a file tend wrote; `prune` are the objects it declared that no
    /// manifest declares any more (each listed once per plan).
    Delete { file: String, prune: Vec<ObjectRef> },
}

impl ManifestOp {
    /// The operation as plan lines: one for the file, one per pruned object,
    /// with a warning on an object whose deletion takes more with it.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ManifestOp::Write { file, rel, create, after, .. } => {
                let verb = if *create { "create" } else { "update" };
                let mut lines = vec![format!("{verb}  manifest {file} (k3s/{rel})")];
                for (first, o) in after {
                    lines.push(format!("  after K3s applied {first}, which takes over {o}"));
                }
                lines
            }
            ManifestOp::Delete { file, prune } => {
                let mut lines = vec![if prune.is_empty() {
                    format!("remove  manifest {file} (its objects are still declared)")
                } else {
                    format!("remove  manifest {file}")
                }];
                for o in prune {
                    lines.push(match o.deletes_more() {
                        Some(what) => format!("prune   {o} (warning: {what})"),
                        None => format!("prune   {o}"),
                    });
                }
                lines
            }
        }
    }
}

impl std::fmt::Display for ManifestOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.lines().join("; "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum K3sError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("kubectl {command}: {reason}")]
    Kubectl { command: String, reason: String },
    #[error(
        "{file} gives up {object} to {to}, and K3s has not applied {to} yet ({reason}); {file} is left as it was so its Addon does not prune {object}"
    )]
    Handoff { file: String, to: String, object: String, reason: String },
}

/// Another file in the auto-deploy directory (or below it: K3s walks the
/// whole tree) that K3s would track as the same Addon as one of tend's.
pub fn addon_collisions(dir: &Path, ours: &BTreeSet<String>) -> Vec<String> {
    let addons: BTreeMap<&str, &str> = ours.iter().map(|f| (addon_name(f), f.as_str())).collect();
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    let mut seen = 0usize;
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            seen += 1;
            if seen > 10_000 {
                return found;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            // K3s skips dotfiles (tend's temporary files among them).
            if name.starts_with('.') {
                continue;
            }
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if depth < 8 {
                    stack.push((path, depth + 1));
                }
                continue;
            }
            let lower = name.to_ascii_lowercase();
            if !(lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")) {
                continue;
            }
            if d == dir && ours.contains(&name) {
                continue;
            }
            if let Some(mine) = addons.get(addon_name(&name)) {
                found.push(format!(
                    "{}: K3s tracks it as Addon {}, the Addon of tend's {mine}: each would prune the other's objects",
                    path.display(),
                    addon_name(&name)
                ));
            }
        }
    }
    found
}

/// The content hash of each of `files` in `dir` now (`None`: absent).
pub fn observe(dir: &Path, files: impl IntoIterator<Item = String>) -> BTreeMap<String, Option<ContentHash>> {
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(&f);
            let h =
                std::fs::symlink_metadata(&p).ok().filter(|m| m.is_file()).and_then(|_| ContentHash::of_file(&p).ok());
            (f, h)
        })
        .collect()
}

/// Pure: the operations taking the directory to `desired`.
pub fn plan(
    desired: &BTreeMap<String, DesiredManifest>,
    live: &BTreeMap<String, Option<ContentHash>>,
    owned: &BTreeMap<String, OwnedManifest>,
    prune: bool,
) -> Vec<ManifestOp> {
    let mut ops = Vec::new();
    let mut wanted = BTreeSet::new();
    // Objects are one object by group, kind, namespace and name: the version
    // a manifest names them in does not matter.
    let declared: BTreeSet<ObjectKey> = desired.values().flat_map(|m| m.objects.iter().map(ObjectRef::key)).collect();
    for (rel, m) in desired {
        let file = file_name(rel);
        let now = live.get(&file).copied().flatten();
        if now != Some(m.hash) {
            ops.push(ManifestOp::Write {
                rel: rel.clone(),
                file: file.clone(),
                hash: m.hash,
                objects: m.objects.clone(),
                create: now.is_none(),
                after: Vec::new(),
            });
        }
        wanted.insert(file);
    }
    // An object leaving a file that stays, for a file written now: the file
    // that takes it over goes first.
    let written: BTreeMap<ObjectKey, String> = ops
        .iter()
        .filter_map(|op| match op {
            ManifestOp::Write { file, objects, .. } => Some(objects.iter().map(move |o| (o.key(), file.clone()))),
            ManifestOp::Delete { .. } => None,
        })
        .flatten()
        .collect();
    for op in &mut ops {
        let ManifestOp::Write { file, objects, after, .. } = op else { continue };
        let Some(before) = owned.get(file.as_str()) else { continue };
        let now: BTreeSet<ObjectKey> = objects.iter().map(ObjectRef::key).collect();
        for o in &before.objects {
            let k = o.key();
            if !now.contains(&k)
                && let Some(to) = written.get(&k)
                && to != file
            {
                after.push((to.clone(), o.clone()));
            }
        }
    }
    if prune {
        let mut pruned: BTreeSet<ObjectKey> = BTreeSet::new();
        for (file, o) in owned {
            if !wanted.contains(file) {
                let prune = o
                    .objects
                    .iter()
                    .filter(|x| {
                        let k = x.key();
                        !declared.contains(&k) && pruned.insert(k)
                    })
                    .cloned()
                    .collect();
                ops.push(ManifestOp::Delete { file: file.clone(), prune });
            }
        }
    }
    ops
}

/// How to reach the cluster for prune.
#[derive(Debug, Clone)]
pub struct Kubectl<'a> {
    pub command: &'a [String],
    pub timeout: Duration,
}

/// Carry out `ops` in `dir`; `content` gives a manifest's bytes; `owned` is
/// kept in step. Files are written, then removed, then every pruned object is
/// deleted in one `kubectl delete`. When that fails, the removed files stay in
/// `owned`, so the next sync deletes their objects again.
pub fn apply(
    dir: &Path,
    ops: &[ManifestOp],
    content: &dyn Fn(&ContentHash) -> Result<Vec<u8>, String>,
    kubectl: &Kubectl<'_>,
    owned: &mut BTreeMap<String, OwnedManifest>,
) -> Result<(), K3sError> {
    let io =
        |p: &Path, e: &dyn std::fmt::Display| K3sError::Io { path: p.display().to_string(), reason: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
    let mut removed = Vec::new();
    let mut prune: Vec<&ObjectRef> = Vec::new();
    let write = |file: &str, hash: &ContentHash| -> Result<(), K3sError> {
        let data = content(hash).map_err(|e| io(&dir.join(file), &e))?;
        // Staged as a dotfile not ending in .yaml: K3s skips it.
        let dest = dir.join(file);
        crate::atomic::write(&dest, &data, 0o644, true).map_err(|e| io(&dest, &format!("{}: {}", e.step, e.error)))
    };
    // Files that take objects over first; then, once K3s has applied them,
    // the files that give those objects up.
    let hashes: BTreeMap<&str, &ContentHash> = ops
        .iter()
        .filter_map(|op| match op {
            ManifestOp::Write { file, hash, .. } => Some((file.as_str(), hash)),
            ManifestOp::Delete { .. } => None,
        })
        .collect();
    let mut written: BTreeSet<&str> = BTreeSet::new();
    let mut confirmed: BTreeSet<&str> = BTreeSet::new();
    let mut pending: Vec<&ManifestOp> = ops.iter().filter(|op| matches!(op, ManifestOp::Write { .. })).collect();
    while !pending.is_empty() {
        // Those whose takers are written (or not written now); with none
        // such, a cycle (two files swapping objects): no order is safe, the
        // rest is written as it is.
        let ready = |op: &&ManifestOp| match op {
            ManifestOp::Write { after, .. } => {
                after.iter().all(|(to, _)| written.contains(to.as_str()) || !hashes.contains_key(to.as_str()))
            }
            ManifestOp::Delete { .. } => true,
        };
        let (now, rest): (Vec<&ManifestOp>, Vec<&ManifestOp>) = pending.into_iter().partition(|op| ready(op));
        let (now, rest) = if now.is_empty() {
            tracing::warn!("manifests swap objects between them: K3s may prune and re-create them");
            (rest, Vec::new())
        } else {
            (now, rest)
        };
        for op in now {
            let ManifestOp::Write { file, hash, objects, after, .. } = op else { continue };
            for (to, object) in after {
                if confirmed.contains(to.as_str()) || !written.contains(to.as_str()) {
                    continue;
                }
                let want = hashes[to.as_str()];
                wait_applied(kubectl, to, want).map_err(|reason| K3sError::Handoff {
                    file: file.clone(),
                    to: to.clone(),
                    object: object.to_string(),
                    reason,
                })?;
                confirmed.insert(to);
            }
            write(file, hash)?;
            written.insert(file);
            owned.insert(file.clone(), OwnedManifest { hash: *hash, objects: objects.clone() });
        }
        pending = rest;
    }
    for op in ops {
        match op {
            ManifestOp::Write { .. } => {}
            ManifestOp::Delete { file, prune: objects } => {
                let dest = dir.join(file);
                match std::fs::remove_file(&dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&dest, &e)),
                }
                removed.push(file);
                prune.extend(objects);
            }
        }
    }
    crate::atomic::fsync_dir(dir).map_err(|e| io(dir, &e.error))?;
    // K3s leaves the Addon of a removed file behind (it deletes nothing when
    // a file goes); tend deletes it with the pruned objects. Nothing hangs on
    // an Addon (no owner references, no finalizers), so this deletes only the
    // record. Old `tend_…` names never had one.
    let addons: Vec<ObjectRef> = removed
        .iter()
        .map(|f| addon_name(f))
        .filter(|a| is_valid_addon_name(a))
        .map(|a| ObjectRef {
            api_version: "k3s.cattle.io/v1".into(),
            kind: "Addon".into(),
            name: a.to_owned(),
            namespace: Some("kube-system".into()),
        })
        .collect();
    if !prune.is_empty() {
        for o in &prune {
            match o.deletes_more() {
                Some(what) => tracing::warn!("prune {o}: {what}"),
                None => tracing::debug!("prune {o}"),
            }
        }
        prune.extend(&addons);
        kubectl_delete(kubectl, &prune)?;
    } else if !addons.is_empty() {
        // Only stale records: worth a try, not worth failing a sync for.
        if let Err(e) = kubectl_delete(kubectl, &addons.iter().collect::<Vec<_>>()) {
            tracing::warn!(error = %e, "could not delete the Addons of removed manifests");
        }
    }
    for file in removed {
        owned.remove(file);
    }
    Ok(())
}

/// Wait until K3s has applied `file` as it is now: its Addon's
/// `spec.checksum` (the SHA-256 of the file K3s last applied successfully)
/// is `want`. K3s scans the directory every 15 s.
fn wait_applied(kubectl: &Kubectl<'_>, file: &str, want: &ContentHash) -> Result<(), String> {
    let mut command = kubectl.command.to_vec();
    command.extend(
        ["get", "addons.k3s.cattle.io", "-n", "kube-system", addon_name(file), "-o", "jsonpath={.spec.checksum}"]
            .map(String::from),
    );
    let want = want.to_string();
    let start = std::time::Instant::now();
    let mut last;
    loop {
        let left = kubectl.timeout.saturating_sub(start.elapsed());
        match crate::process::run(&command, None, left.max(Duration::from_secs(1))) {
            Ok(o) if o.status.success() && o.stdout.trim() == want => return Ok(()),
            Ok(o) if o.status.success() => last = format!("its Addon's checksum is {:?}", o.stdout.trim()),
            Ok(o) => last = format!("{}: {}", o.status, o.stderr.trim()),
            Err(e) => last = e.to_string(),
        }
        if start.elapsed() + Duration::from_secs(1) >= kubectl.timeout {
            return Err(format!("after {}: {last}", humantime::format_duration(kubectl.timeout)));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `kubectl delete --ignore-not-found -f -` with a document per object.
fn kubectl_delete(kubectl: &Kubectl<'_>, objects: &[&ObjectRef]) -> Result<(), K3sError> {
    let mut command = kubectl.command.to_vec();
    command.extend(["delete", "--ignore-not-found", "--wait=false", "-f", "-"].map(String::from));
    let shown = command.join(" ");
    let err = |reason: String| K3sError::Kubectl { command: shown.clone(), reason };
    let docs: Vec<String> = objects.iter().map(|o| o.to_yaml()).collect();
    let out = crate::process::run(&command, Some(docs.join("---\n").into_bytes()), kubectl.timeout)
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let said = out.stderr.trim();
        let said = if said.is_empty() { out.stdout.trim() } else { said };
        return Err(err(format!("{}: {}", out.status, said)));
    }
    Ok(())
}

/// The workloads whose rollout gates a revision, each once.
pub fn rollouts(desired: &BTreeMap<String, DesiredManifest>) -> Vec<ObjectRef> {
    let mut seen = BTreeSet::new();
    desired
        .values()
        .flat_map(|m| m.objects.iter())
        .filter(|o| o.group() == "apps" && matches!(o.kind.as_str(), "Deployment" | "DaemonSet" | "StatefulSet"))
        .filter(|o| seen.insert(o.key()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(api: &str, kind: &str, name: &str, ns: Option<&str>) -> ObjectRef {
        ObjectRef { api_version: api.into(), kind: kind.into(), name: name.into(), namespace: ns.map(Into::into) }
    }
    fn m(content: &str, objects: Vec<ObjectRef>) -> DesiredManifest {
        DesiredManifest { hash: ContentHash::of(content.as_bytes()), objects, from: "x".into() }
    }

    #[test]
    fn table() {
        let desired: BTreeMap<String, DesiredManifest> = [(
            "apps/web.yaml".to_string(),
            m("a", vec![obj("apps/v1", "Deployment", "web", None), obj("v1", "Service", "shared", None)]),
        )]
        .into();
        let f = file_name("apps/web.yaml");
        assert_eq!(f, format!("tend-apps-web-{}.yaml", &ContentHash::of(b"apps/web.yaml").to_string()[..8]));
        // Missing: create. Same: nothing. Edited: update.
        assert!(matches!(
            &plan(&desired, &BTreeMap::new(), &BTreeMap::new(), true)[..],
            [ManifestOp::Write { create: true, .. }]
        ));
        let same = [(f.clone(), Some(ContentHash::of(b"a")))].into();
        assert!(plan(&desired, &same, &BTreeMap::new(), true).is_empty());
        let edited = [(f.clone(), Some(ContentHash::of(b"edited")))].into();
        assert!(matches!(
            &plan(&desired, &edited, &BTreeMap::new(), true)[..],
            [ManifestOp::Write { create: false, .. }]
        ));
        // A removed manifest: its objects are deleted, except one still declared.
        let owned: BTreeMap<String, OwnedManifest> = [
            (f.clone(), OwnedManifest { hash: ContentHash::of(b"a"), objects: vec![] }),
            (
                "tend-old-00000000.yaml".to_string(),
                OwnedManifest {
                    hash: ContentHash::of(b"o"),
                    objects: vec![obj("apps/v1", "Deployment", "old", None), obj("v1", "Service", "shared", None)],
                },
            ),
        ]
        .into();
        let ops = plan(&desired, &same, &owned, true);
        assert_eq!(
            ops,
            vec![ManifestOp::Delete {
                file: "tend-old-00000000.yaml".into(),
                prune: vec![obj("apps/v1", "Deployment", "old", None)]
            }]
        );
        assert!(plan(&desired, &same, &owned, false).is_empty());
    }

    #[test]
    fn prune_compares_group_kind_namespace_and_name_not_the_version() {
        // ClusterRole system:coredns moves from v1beta1 to v1 and to another file.
        let desired: BTreeMap<String, DesiredManifest> = [(
            "coredns-rbac.yaml".to_string(),
            m("new", vec![obj("rbac.authorization.k8s.io/v1", "ClusterRole", "system:coredns", None)]),
        )]
        .into();
        let owned: BTreeMap<String, OwnedManifest> = [
            (
                "tend-coredns-11111111.yaml".to_string(),
                OwnedManifest {
                    hash: ContentHash::of(b"old"),
                    objects: vec![
                        obj("rbac.authorization.k8s.io/v1beta1", "ClusterRole", "system:coredns", None),
                        // The same name in two namespaces: two objects.
                        obj("apps/v1", "Deployment", "controller", Some("a")),
                        // A namespace-less object is in `default`, where K3s put it.
                        obj("v1", "ConfigMap", "cfg", None),
                    ],
                },
            ),
            (
                "tend-other-22222222.yaml".to_string(),
                OwnedManifest {
                    hash: ContentHash::of(b"other"),
                    objects: vec![obj("apps/v1", "Deployment", "controller", Some("a"))],
                },
            ),
        ]
        .into();
        let mut desired2 = desired.clone();
        desired2.insert(
            "more.yaml".into(),
            m(
                "more",
                vec![
                    obj("apps/v1", "Deployment", "controller", Some("b")),
                    obj("v1", "ConfigMap", "cfg", Some("default")),
                ],
            ),
        );
        let ops = plan(&desired2, &BTreeMap::new(), &owned, true);
        let pruned: Vec<String> = ops
            .iter()
            .filter_map(|o| match o {
                ManifestOp::Delete { prune, .. } => Some(prune.iter().map(ToString::to_string)),
                _ => None,
            })
            .flatten()
            .collect();
        // controller in "a" is pruned once, though two removed files declared it.
        assert_eq!(pruned, ["Deployment.apps a/controller"]);
    }

    #[test]
    fn every_name_is_a_valid_unique_addon_name() {
        let paths = [
            "web.yaml",
            "Web.yaml",
            "apps/web.yaml",
            "apps-web.yaml",
            "apps_web.yml",
            "x.crds.yaml",
            "x.yaml",
            "ÜBER/ärger.yaml",
            "___.yaml",
            "-.yaml",
            "a..b.yaml",
            "1.yaml",
            "UPPER/CASE/Deep/Path/With.Many.Dots.yaml",
            &format!("{}.yaml", "x".repeat(300)),
            &format!("{}/{}.yaml", "d".repeat(100), "y".repeat(100)),
            "kube-prometheus/setup/0prometheusCustomResourceDefinition.yaml",
        ];
        let mut seen = BTreeMap::new();
        for p in paths {
            let f = file_name(p);
            assert!(f.starts_with(PREFIX) && f.ends_with(".yaml"), "{f}");
            let addon = addon_name(&f);
            assert_eq!(format!("{addon}.yaml"), f, "{p}: a dot inside the stem");
            assert!(is_valid_addon_name(addon) && addon.len() <= 63, "{p} -> {addon}");
            assert_eq!(file_name(p), f, "not stable");
            assert!(seen.insert(addon.to_owned(), p).is_none(), "{p} and {:?} share {addon}", seen[addon]);
        }
        assert!(!is_valid_addon_name("tend_apps__web"));
        assert!(!is_valid_addon_name("-a") && !is_valid_addon_name("a-") && !is_valid_addon_name(""));
        assert!(is_valid_addon_name("a.b-c") && !is_valid_addon_name("a..b"));
    }

    proptest::proptest! {
        #[test]
        fn any_path_gives_a_valid_addon_name(p in "[ -~äöü/]{1,300}") {
            let f = file_name(&p);
            let addon = addon_name(&f);
            proptest::prop_assert!(is_valid_addon_name(addon) && addon.len() <= 63, "{} -> {}", p, f);
            proptest::prop_assert_eq!(format!("{addon}.yaml"), f);
        }
    }

    #[test]
    fn rollouts_are_keyed_by_namespace_and_listed_once() {
        let desired: BTreeMap<String, DesiredManifest> = [
            (
                "a.yaml".to_string(),
                m(
                    "a",
                    vec![
                        obj("apps/v1", "Deployment", "controller", Some("metallb-system")),
                        obj("apps/v1", "Deployment", "controller", Some("other")),
                    ],
                ),
            ),
            ("b.yaml".to_string(), m("b", vec![obj("apps/v1", "Deployment", "controller", Some("other"))])),
        ]
        .into();
        let r: Vec<String> = rollouts(&desired).iter().map(ToString::to_string).collect();
        assert_eq!(r, ["Deployment.apps metallb-system/controller", "Deployment.apps other/controller"]);
    }
}
