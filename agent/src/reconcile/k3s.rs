//! K3s manifests: written into `[k3s].manifests_dir` (K3s applies what is
//! there), pruned with the configured `kubectl` (K3s never deletes objects whose
//! file was removed).
//!
//! What must always hold:
//! - tend writes only files named `tend_*` and never touches others there;
//! - an unchanged manifest is not rewritten: K3s re-applies when a file's mtime
//!   changes;
//! - a write is atomic (temporary file, fsync, rename, fsync the directory);
//! - prune deletes exactly the objects the removed manifest declared and no
//!   manifest of the bundle still declares.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::bundle::DesiredManifest;
use crate::bundle::manifest::ObjectRef;
use crate::hash::ContentHash;

/// The file name of the manifest at `rel` under `k3s/` (the directory is flat).
pub fn file_name(rel: &str) -> String {
    format!("tend_{}", rel.replace('/', "__"))
}

/// A manifest file tend wrote, and the objects it declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedManifest {
    pub hash: ContentHash,
    pub objects: Vec<ObjectRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestOp {
    Write { rel: String, file: String, hash: ContentHash, objects: Vec<ObjectRef>, create: bool },
    Delete { file: String, objects: Vec<ObjectRef> },
}

impl std::fmt::Display for ManifestOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManifestOp::Write { file, create: true, .. } => write!(f, "create  manifest {file}"),
            ManifestOp::Write { file, create: false, .. } => write!(f, "update  manifest {file}"),
            ManifestOp::Delete { file, objects } => {
                let names: Vec<String> = objects.iter().map(|o| format!("{}/{}", o.kind, o.name)).collect();
                write!(
                    f,
                    "delete  manifest {file} (kubectl delete {})",
                    if names.is_empty() { "nothing".into() } else { names.join(", ") }
                )
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum K3sError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("kubectl {command}: {reason}")]
    Kubectl { command: String, reason: String },
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
    let still_declared: BTreeSet<&ObjectRef> = desired.values().flat_map(|m| m.objects.iter()).collect();
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
            });
        }
        wanted.insert(file);
    }
    if prune {
        for (file, o) in owned {
            if !wanted.contains(file) {
                let objects = o.objects.iter().filter(|x| !still_declared.contains(x)).cloned().collect();
                ops.push(ManifestOp::Delete { file: file.clone(), objects });
            }
        }
    }
    ops
}

/// Carry out `ops` in `dir`; `content` gives a manifest's bytes; `owned` is
/// kept in step.
pub fn apply(
    dir: &Path,
    ops: &[ManifestOp],
    content: &dyn Fn(&ContentHash) -> Result<Vec<u8>, String>,
    kubectl: &[String],
    owned: &mut BTreeMap<String, OwnedManifest>,
) -> Result<(), K3sError> {
    let io =
        |p: &Path, e: &dyn std::fmt::Display| K3sError::Io { path: p.display().to_string(), reason: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
    for op in ops {
        match op {
            ManifestOp::Write { file, hash, objects, .. } => {
                let data = content(hash).map_err(|e| io(&dir.join(file), &e))?;
                let tmp: PathBuf = dir.join(format!(".{file}.tend-tmp"));
                let dest = dir.join(file);
                (|| -> std::io::Result<()> {
                    let mut f = std::fs::File::create(&tmp)?;
                    f.write_all(&data)?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, &dest)
                })()
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    io(&dest, &e)
                })?;
                owned.insert(file.clone(), OwnedManifest { hash: *hash, objects: objects.clone() });
            }
            ManifestOp::Delete { file, objects } => {
                let dest = dir.join(file);
                match std::fs::remove_file(&dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&dest, &e)),
                }
                if !objects.is_empty() {
                    kubectl_delete(kubectl, objects)?;
                }
                owned.remove(file);
            }
        }
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, &e))
}

/// `kubectl delete --ignore-not-found -f -` with a document per object.
fn kubectl_delete(kubectl: &[String], objects: &[ObjectRef]) -> Result<(), K3sError> {
    let (prog, args) = kubectl.split_first().expect("[k3s].kubectl is validated non-empty");
    let shown = format!("{} delete --ignore-not-found -f -", kubectl.join(" "));
    let err = |reason: String| K3sError::Kubectl { command: shown.clone(), reason };
    let docs: Vec<String> = objects.iter().map(ObjectRef::to_yaml).collect();
    let mut child = Command::new(prog)
        .args(args)
        .args(["delete", "--ignore-not-found", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot be run: {e}")))?;
    child.stdin.take().expect("piped").write_all(docs.join("---\n").as_bytes()).map_err(|e| err(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// The workloads whose rollout gates a revision.
pub fn rollouts(desired: &BTreeMap<String, DesiredManifest>) -> Vec<ObjectRef> {
    desired
        .values()
        .flat_map(|m| m.objects.iter())
        .filter(|o| matches!(o.kind.as_str(), "Deployment" | "DaemonSet" | "StatefulSet"))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: &str, name: &str) -> ObjectRef {
        ObjectRef { api_version: "v1".into(), kind: kind.into(), name: name.into(), namespace: None }
    }
    fn m(content: &str, objects: Vec<ObjectRef>) -> DesiredManifest {
        DesiredManifest { hash: ContentHash::of(content.as_bytes()), objects, from: "x".into() }
    }

    #[test]
    fn table() {
        let desired: BTreeMap<String, DesiredManifest> =
            [("apps/web.yaml".to_string(), m("a", vec![obj("Deployment", "web"), obj("Service", "shared")]))].into();
        let f = file_name("apps/web.yaml");
        assert_eq!(f, "tend_apps__web.yaml");
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
                "tend_old.yaml".to_string(),
                OwnedManifest {
                    hash: ContentHash::of(b"o"),
                    objects: vec![obj("Deployment", "old"), obj("Service", "shared")],
                },
            ),
        ]
        .into();
        let ops = plan(&desired, &same, &owned, true);
        assert_eq!(
            ops,
            vec![ManifestOp::Delete { file: "tend_old.yaml".into(), objects: vec![obj("Deployment", "old")] }]
        );
        assert!(plan(&desired, &same, &owned, false).is_empty());
    }
}
