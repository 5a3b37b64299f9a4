//! Reading one gateway's bundle out of a revision (SPEC §2) into [`Desired`].
//!
//! Owns: includes (overlaid in order, the including bundle wins on the same path),
//! `[[file]]` metadata, templates, `[[check]]` parsing, and every policy check that
//! can be made before touching the gateway. What must always hold: a bundle is
//! accepted whole or rejected whole with one [`BundleError`] naming the file and the
//! reason; nothing here writes anywhere.

mod container;
mod load;
pub mod manifest;
mod path;
mod rollout;
mod template;
mod tree;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use container::{ContainerSpec, HealthSpec, Pull, Restart, is_name as is_container_name, parse_port, start_order};
pub use load::render;
pub use path::RelPath;
pub use template::{Identity, render as render_template};
pub use tree::{DirTree, EntryKind, Tree, TreeError, enclosing_repo_root};

use crate::hash::ContentHash;
use crate::secrets::{self, AgeKeys};

/// Bounds on what one bundle may hold, so a hostile commit cannot exhaust a gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Files in the rendered bundle, includes counted.
    pub max_files: usize,
    /// Bytes in one file.
    pub max_file_size: u64,
    /// Bytes in all files together.
    pub max_total_size: u64,
    /// Nesting of includes (a bundle including a bundle including … ).
    pub max_include_depth: usize,
    /// Bundles read for one render, includes counted each time they are read.
    pub max_bundles: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 10_000,
            max_file_size: 16 << 20,
            max_total_size: 256 << 20,
            max_include_depth: 8,
            max_bundles: 64,
        }
    }
}

/// Why a bundle is refused, naming the file in the repository: the first
/// problem found, and every other one found in the same pass (a fleet
/// repository's CI sees all of a bundle's problems in one run).
#[derive(Debug, Clone, PartialEq)]
pub struct BundleError {
    pub file: String,
    pub reason: String,
    pub more: Vec<(String, String)>,
}

/// Further problems shown in the one-line form (status, events); `validate`
/// lists every one.
const MORE_SHOWN: usize = 3;

impl std::fmt::Display for BundleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file, self.reason)?;
        if !self.more.is_empty() {
            let shown: Vec<String> = self.more.iter().take(MORE_SHOWN).map(|(f, r)| format!("{f}: {r}")).collect();
            let rest = self.more.len().saturating_sub(MORE_SHOWN);
            write!(f, " (and {} more: {}", self.more.len(), shown.join("; "))?;
            if rest > 0 {
                write!(f, "; … {rest} more, `tend validate` lists them")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

impl std::error::Error for BundleError {}

impl BundleError {
    pub fn new(file: impl ToString, reason: impl ToString) -> Self {
        BundleError { file: file.to_string(), reason: reason.to_string(), more: Vec::new() }
    }

    /// One error for several problems (at least one).
    fn many(problems: Vec<BundleError>) -> Self {
        let mut all = problems
            .into_iter()
            .flat_map(|e| e.problems().map(|(f, r)| (f.to_owned(), r.to_owned())).collect::<Vec<_>>());
        let (file, reason) = all.next().expect("at least one problem");
        BundleError { file, reason, more: all.collect() }
    }

    /// Every problem: (file, reason).
    pub fn problems(&self) -> impl Iterator<Item = (&str, &str)> {
        std::iter::once((self.file.as_str(), self.reason.as_str()))
            .chain(self.more.iter().map(|(f, r)| (f.as_str(), r.as_str())))
    }
}

impl From<TreeError> for BundleError {
    fn from(e: TreeError) -> Self {
        BundleError::new(e.path, e.reason)
    }
}

/// A file the bundle wants on the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredFile {
    /// Destination below `[files].root` (`etc/myapp/app.conf`).
    pub path: RelPath,
    pub hash: ContentHash,
    pub size: u64,
    pub mode: u32,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub on_change: Option<Vec<String>>,
    /// Where it came from in the repository, for messages.
    pub from: String,
    /// A secret (`files/**.age`): the hash of its ciphertext, which is what
    /// the store keeps; `hash` is then the plaintext's, for drift only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<ContentHash>,
}

/// How a health check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    Http(String),
    Tcp(String),
    Command(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub probe: Probe,
    pub interval: Duration,
}

/// Everything one bundle declares, rendered for one gateway; file contents are
/// referenced by hash (see [`Rendered::blobs`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Desired {
    /// The bundle directory and every bundle it included, in the order applied.
    pub bundles: Vec<String>,
    pub files: BTreeMap<RelPath, DesiredFile>,
    pub checks: Vec<Check>,
    /// Containers by name.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerSpec>,
    /// K3s manifests by their path under `k3s/`.
    #[serde(default)]
    pub manifests: BTreeMap<String, DesiredManifest>,
    /// `[rollout]` (SPEC §7), from the bundle or its includes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::Policy>,
    /// `[hooks]`: commands run around this revision's apply.
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
}

/// `[hooks]` of `tend.toml` (SPEC §2): argv commands run around a
/// revision's apply (only where `[files].allow_hooks` lets a bundle run
/// commands). `before_apply` failing: the revision is not applied now and is
/// retried as a transient failure; `after_apply` failing: the revision fails
/// its health gate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_apply: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_apply: Option<Vec<String>>,
    /// How long each may run; its whole process group is killed then.
    #[serde(default = "Hooks::default_timeout")]
    pub timeout: Duration,
}

impl Hooks {
    pub fn default_timeout() -> Duration {
        Duration::from_secs(120)
    }
    pub fn is_empty(&self) -> bool {
        self.before_apply.is_none() && self.after_apply.is_none()
    }
}

/// A manifest the bundle wants in K3s's auto-deploy directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredManifest {
    pub hash: ContentHash,
    pub objects: Vec<manifest::ObjectRef>,
    pub from: String,
}

impl Desired {
    /// True when the bundle declares nothing at all.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.checks.is_empty() && self.containers.is_empty() && self.manifests.is_empty()
    }
}

/// A rendered bundle with the contents its files refer to.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub desired: Desired,
    pub blobs: HashMap<ContentHash, Vec<u8>>,
    /// What is allowed but likely a mistake (`validate` prints them, a sync
    /// logs them).
    pub warnings: Vec<String>,
}

/// What the local configuration allows (SPEC §1 `[files].allow`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    /// Destinations tend may write, relative to `[files].root`. `None`: not checked
    /// (offline validation without a local config).
    pub allow: Option<Vec<RelPath>>,
    /// `[containers].allow_privileged`; `None`: not checked (offline validation).
    pub allow_privileged: Option<bool>,
    /// `[files].allow_hooks`; `None`: not checked (offline validation).
    pub allow_hooks: Option<bool>,
    /// Destinations no bundle may write whatever `allow` says: tend's own
    /// configuration directory, keys, credentials and state (relative to
    /// `[files].root`), so a broad allow list cannot hand the repository the
    /// gateway's trust settings.
    pub protected: Vec<RelPath>,
}

impl Policy {
    fn allows(&self, dest: &RelPath) -> bool {
        match &self.allow {
            None => true,
            Some(list) => list.iter().any(|a| dest.starts_with(a)),
        }
    }
}

/// How a render treats secrets (`files/**.age`).
#[derive(Debug, Clone, Copy)]
pub enum Secrets<'a> {
    /// Decrypt them with the gateway's keys.
    Keys(&'a AgeKeys),
    /// No `[files].age_identity`: a bundle with secrets is rejected.
    Missing,
    /// Offline validation without keys: checked to be age files, not decrypted.
    Opaque,
}

/// Everything a render needs besides the tree.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub identity: &'a Identity,
    pub policy: &'a Policy,
    pub limits: &'a Limits,
    pub secrets: Secrets<'a>,
}

const MANIFEST: &str = "tend.toml";
/// How deep directories in a repository may nest (a depth bomb otherwise).
const MAX_DEPTH: usize = 48;

#[cfg(test)]
mod tests {
    use super::load::*;

    #[test]
    fn modes_are_octal_strings() {
        assert_eq!(parse_mode("0640").unwrap(), 0o640);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("07777x").is_err());
    }

    #[test]
    fn destinations_are_absolute_and_inside() {
        assert_eq!(parse_dest("/etc/a").unwrap().to_string(), "etc/a");
        assert!(parse_dest("etc/a").is_err());
        assert!(parse_dest("/etc/../a").is_err());
        assert!(parse_dest("/").is_err());
    }

    #[test]
    fn checks_need_exactly_one_probe() {
        let raw = |http: Option<&str>, tcp: Option<&str>| RawCheck {
            name: "x".into(),
            http: http.map(Into::into),
            tcp: tcp.map(Into::into),
            command: None,
            interval: None,
        };
        assert!(parse_check(raw(Some("http://127.0.0.1/"), None)).is_ok());
        assert!(parse_check(raw(Some("http://a/"), Some("a:1"))).is_err());
        assert!(parse_check(raw(None, None)).is_err());
        assert!(parse_check(raw(None, Some("127.0.0.1:502"))).is_ok());
        assert!(parse_check(raw(None, Some("nope"))).is_err());
    }
}
