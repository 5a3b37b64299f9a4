//! What the daemon checks about its surroundings at start (issue 17): that
//! every `[files].allow` root is writable to it. Under systemd the unit's
//! `ProtectSystem=strict` makes the whole file system read-only but for what
//! a drop-in names in `ReadWritePaths=`; forgetting it is the most common
//! first-hour mistake, and it must be named, not found in a rollback.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// What to do about a read-only path, said wherever one is met.
pub const READ_ONLY_HINT: &str = "tend runs with ProtectSystem=strict: add its [files].allow roots to the unit with `systemctl edit tend` -> [Service] ReadWritePaths=<the roots>";

/// A `[files].allow` root tend cannot write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyRoot {
    /// The root as it is on disk (`[files].root` joined with the allow entry).
    pub path: PathBuf,
    /// Why (the error of the check).
    pub reason: String,
}

impl std::fmt::Display for ReadOnlyRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[files].allow root {} is read-only to tend ({}): add it with `systemctl edit tend` -> [Service] ReadWritePaths={}",
            self.path.display(),
            self.reason,
            self.path.display()
        )
    }
}

/// The `[files].allow` roots tend cannot write: a root that does not exist
/// yet is judged by its nearest existing parent (tend creates the rest).
pub fn read_only_roots(cfg: &Config) -> Vec<ReadOnlyRoot> {
    cfg.files
        .allow
        .iter()
        .filter_map(|allow| {
            let path = cfg.files.root.join(allow.strip_prefix("/").unwrap_or(allow));
            let existing = nearest_existing(&path)?;
            match nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK) {
                Err(nix::errno::Errno::EROFS) => Some(ReadOnlyRoot { path, reason: "read-only file system".into() }),
                _ => None,
            }
        })
        .collect()
}

fn nearest_existing(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.exists())
}
