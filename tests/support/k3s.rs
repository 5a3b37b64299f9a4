//! K3s stand-ins for the suites. No API server runs here, so two FAKES stand
//! in for it, each checking what the real one would refuse:
//!
//! - [`FakeKubectl`]: a script in place of `k3s kubectl`
//!   (`tests/support/fake_kubectl.py`, run by Debian's python3 with PyYAML).
//!   It answers the three commands tend sends, and refuses what the real
//!   kubectl refuses, with its message: an unknown command or flag, `delete -f -`
//!   with no object ("error: no objects passed to delete") or a document
//!   without apiVersion, kind or name, `rollout status` of a workload the
//!   cluster does not have (`Error from server (NotFound): deployments.apps "x"
//!   not found`), `get` of an Addon that does not exist. The cluster it answers
//!   for is the auto-deploy directory as K3s would have applied it, read by the
//!   corpus oracle (`tests/corpus/k3s/oracle.py`); an Addon's
//!   `spec.checksum` is the SHA-256 of its file as it is on disk. It records
//!   every call and its input, and at each `get` the tend files' hashes, so a
//!   test can tell what was on disk when tend asked. What it does not model it
//!   refuses, saying FAKE. `rollout status` fails while a flag file exists.
//! - [`k3s_refusals`]: the rules K3s's deploy controller (`pkg/deploy/
//!   controller.go`) applies to the auto-deploy directory, written from that
//!   code, not from tend's: every file below the directory (not dotfiles;
//!   `.yaml`, `.yml`, `.json`) is an Addon named after its base name up to the
//!   first dot, which must be an RFC 1123 subdomain, and no two files may share
//!   an Addon.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct FakeKubectl {
    pub script: PathBuf,
    pub log: PathBuf,
    pub fail_flag: PathBuf,
    /// While it exists, `delete` exits at once with an error, without reading
    /// its input.
    pub refuse_flag: PathBuf,
    /// While it exists, `delete` hangs.
    pub hang_flag: PathBuf,
}

impl FakeKubectl {
    /// The fake, for a manifests directory `manifests`, in `dir`.
    pub fn new(dir: &Path, manifests: &Path) -> FakeKubectl {
        let script = dir.join("fake-kubectl");
        let log = dir.join("kubectl.log");
        let fail_flag = dir.join("kubectl-rollout-fails");
        let refuse_flag = dir.join("kubectl-delete-refuses");
        let hang_flag = dir.join("kubectl-delete-hangs");
        let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/fake_kubectl.py");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n# FAKE kubectl for tests (see tests/support/fake_kubectl.py).\n\
                 exec /usr/bin/python3 '{fake}' '{log}' '{manifests}' '{dir}' -- \"$@\"\n",
                fake = fake.display(),
                log = log.display(),
                manifests = manifests.display(),
                dir = dir.display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeKubectl { script, log, fail_flag, refuse_flag, hang_flag }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn clear_log(&self) {
        std::fs::write(&self.log, "").unwrap();
    }

    /// The objects of every `delete -f -` call since the log was cleared, as
    /// `Kind[.group] namespace/name` (or `Kind[.group] name`).
    pub fn deleted(&self) -> Vec<String> {
        let log = self.log_text();
        let mut out = Vec::new();
        for call in log.split("ARGS: ").filter(|c| c.starts_with("delete")) {
            let body = call.split_once('\n').map_or("", |(_, b)| b);
            let body = body.split("--- end").next().unwrap_or("");
            for doc in body.split("---\n") {
                let field = |k: &str| {
                    doc.lines()
                        .find_map(|l| l.strip_prefix(k))
                        .map(|v| v.trim().trim_matches('"').replace("\\\"", "\"").replace("\\\\", "\\"))
                };
                let (Some(api), Some(kind), Some(name)) = (field("apiVersion: "), field("kind: "), field("  name: "))
                else {
                    continue;
                };
                let group = api.rsplit_once('/').map_or(String::new(), |(g, _)| g.to_owned());
                let kind = if group.is_empty() { kind } else { format!("{kind}.{group}") };
                out.push(match field("  namespace: ") {
                    Some(ns) => format!("{kind} {ns}/{name}"),
                    None => format!("{kind} {name}"),
                });
            }
        }
        out
    }

    /// How many `delete` calls were made since the log was cleared.
    pub fn delete_calls(&self) -> usize {
        self.log_text().matches("ARGS: delete").count()
    }
}

/// Whether `name` is an RFC 1123 subdomain (Kubernetes' `IsDNS1123Subdomain`).
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253
        && !name.is_empty()
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// FAKE K3s deploy controller's view of `dir`: the files it would deploy, by
/// Addon name, and what it would refuse. Empty: K3s takes every file.
pub fn k3s_refusals(dir: &Path) -> Vec<String> {
    let mut refusals = Vec::new();
    let mut by_addon: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for path in k3s_files(dir) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let addon = name.split('.').next().unwrap().to_owned();
        if !is_dns1123_subdomain(&addon) {
            refusals.push(format!(
                "{}: Addon.k3s.cattle.io {addon:?} is invalid: metadata.name: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
                path.display()
            ));
        }
        by_addon.entry(addon).or_default().push(path);
    }
    for (addon, paths) in by_addon {
        if paths.len() > 1 {
            refusals.push(format!("Addon {addon} is claimed by {paths:?}: each apply prunes the other's objects"));
        }
    }
    refusals
}

/// The files K3s would deploy from `dir`: walked recursively, dotfiles
/// skipped, `.yaml`, `.yml` and `.json` (any case).
pub fn k3s_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let lower = name.to_ascii_lowercase();
                if lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json") {
                    out.push(e.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// The pinned commit of the release before K3s file names changed (issue 12).
pub const PREV_RELEASE: &str = "f85a11653ad4caae6fef99a27fc0b1a03c3a8b64";

/// The `tend` binary of [`PREV_RELEASE`]: `target/prev-release/tend`, which
/// `tests/run` builds before the suites; built here when missing (slowly: its
/// own target directory, since the enclosing `cargo test` holds this one).
pub fn prev_release_bin() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let bin = workspace.join("target/prev-release/tend");
    if bin.exists() {
        return bin;
    }
    let src = tempfile::tempdir().unwrap();
    let mut tar = Command::new("sh");
    tar.arg("-c").arg(format!(
        "git -C {} archive {PREV_RELEASE} | tar -x -C {}",
        workspace.display(),
        src.path().display()
    ));
    crate::run(&mut tar);
    let target = workspace.join("target/prev-build");
    crate::run(
        Command::new("cargo")
            .args(["build", "--locked", "-p", "tend", "--bin", "tend", "--manifest-path"])
            .arg(src.path().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target),
    );
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(target.join("debug/tend"), &bin).unwrap();
    bin
}
