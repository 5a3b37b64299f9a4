//! The disk-space preflight (SPEC §3, 9): before a new revision pulls an
//! image or writes a file, each file system it writes must keep
//! `[apply].min_free` after it. A full disk during an apply is the failure
//! that leaves the most behind (a layer half-unpacked, a store that cannot
//! record the rollback), so it is refused before the first byte.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::bounds::show_size;
use crate::offline::import::human;

/// Bytes a revision writes under `path`, for `what` (`[files].root`,
/// `state_dir`, the container storage, `[k3s].manifests_dir`).
#[derive(Debug, Clone)]
pub struct Need {
    pub path: PathBuf,
    pub what: &'static str,
    pub bytes: u64,
}

/// A file system that would drop below `min_free`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Short {
    /// Where it is mounted.
    pub mount: PathBuf,
    /// What tend writes there.
    pub what: Vec<&'static str>,
    pub free: u64,
    pub need: u64,
    pub keep: u64,
}

impl std::fmt::Display for Short {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not enough free space on the file system at {} ({}): {} free; this revision writes {} there and [apply].min_free keeps {}",
            self.mount.display(),
            self.what.join(", "),
            human(self.free),
            human(self.need),
            show_size(self.keep)
        )
    }
}

/// Bytes free to an unprivileged writer on the file system of `path`.
pub fn free_bytes(path: &Path) -> nix::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)?;
    #[allow(clippy::useless_conversion)] // u32 or u64 by target
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// The nearest existing directory at or above `path`: what a write there
/// will land on.
fn existing(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()))
}

/// Where the file system holding `dir` is mounted (the highest ancestor on
/// the same device).
fn mount_of(dir: &Path, dev: u64) -> PathBuf {
    let mut mount = dir;
    while let Some(parent) = mount.parent() {
        match parent.metadata() {
            Ok(m) if m.dev() == dev => mount = parent,
            _ => break,
        }
    }
    mount.to_path_buf()
}

/// Check every file system `needs` touch (needs on one file system are
/// added up): each keeps `keep` bytes free after them. A file system whose
/// free space cannot be read is not checked (the write itself will say).
pub fn check(needs: &[Need], keep: u64) -> Result<(), Short> {
    let mut by_fs: BTreeMap<u64, (PathBuf, Vec<&'static str>, u64)> = BTreeMap::new();
    for n in needs {
        let Some(dir) = existing(&n.path) else { continue };
        let Ok(meta) = dir.metadata() else { continue };
        let entry = by_fs.entry(meta.dev()).or_insert_with(|| (dir.to_path_buf(), Vec::new(), 0));
        if !entry.1.contains(&n.what) {
            entry.1.push(n.what);
        }
        entry.2 = entry.2.saturating_add(n.bytes);
    }
    for (dev, (dir, what, need)) in by_fs {
        let Ok(free) = free_bytes(&dir) else { continue };
        if free < need.saturating_add(keep) {
            return Err(Short { mount: mount_of(&dir, dev), what, free, need, keep });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_on_one_file_system_add_up_and_the_message_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        let need = |bytes, what| Need { path: dir.path().join("not/yet/made"), what, bytes };
        assert!(check(&[need(1, "[files].root")], 0).is_ok());
        // Each fits alone; together they do not.
        let half = free / 2 + free / 8;
        let e = check(&[need(half, "[files].root"), need(half, "state_dir")], 0).unwrap_err();
        assert_eq!(e.what, ["[files].root", "state_dir"]);
        assert_eq!(e.need, 2 * half);
        let text = e.to_string();
        assert!(text.starts_with("not enough free space on the file system at /"), "{text}");
        assert!(text.contains("([files].root, state_dir)") && text.contains("[apply].min_free keeps 0"), "{text}");
        // What min_free keeps counts too, and nothing overflows.
        assert!(check(&[need(0, "state_dir")], free.saturating_mul(2)).is_err());
        assert!(check(&[need(u64::MAX, "state_dir")], u64::MAX).is_err());
        assert!(check(&[], u64::MAX).is_ok());
    }
}
