//! The one atomic writer, for a bundle's files, K3s manifests and the metrics
//! textfile: the data goes to a hidden temporary file beside the destination
//! (`.NAME.tend-tmp`: K3s skips dotfiles that do not end in `.yaml`, and
//! node_exporter reads only `*.prom`), with its final mode and owner, is made
//! durable, and is renamed over the destination, the one step a reader can
//! see. A reader finds the old file or the new one, never a part.
//!
//! Staging and renaming are separate steps so an apply can stage every file,
//! make them all durable with one `syncfs`, and only then rename them
//! (`reconcile::files`); [`write`] does the three for one file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A step that failed, and on which path.
#[derive(Debug)]
pub struct Failed {
    pub path: PathBuf,
    pub step: &'static str,
    pub error: std::io::Error,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.path.display(), self.step, self.error)
    }
}

fn failed<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(std::io::Error) -> Failed + 'a {
    move |error| Failed { path: path.to_owned(), step, error }
}

/// The temporary file beside `dest`.
pub fn tmp_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.tend-tmp"))
}

/// Write `data` to the temporary file beside `dest`, with `mode` and, if
/// given, owner and group. Never follows a link planted at the temporary
/// name. Not yet durable, not yet visible.
pub fn stage(dest: &Path, data: &[u8], mode: u32, uid: Option<u32>, gid: Option<u32>) -> Result<PathBuf, Failed> {
    crate::sim::point("stage a file");
    let tmp = tmp_path(dest);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&tmp)
        .map_err(failed(&tmp, "create temporary file"))?;
    let res = (|| {
        f.write_all(data).map_err(failed(&tmp, "write"))?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&f, uid, gid).map_err(failed(&tmp, "chown"))?;
        }
        // After chown, which clears set-id bits.
        f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(failed(&tmp, "chmod"))
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Rename the staged file over `dest`.
pub fn commit(dest: &Path) -> Result<(), Failed> {
    crate::sim::point("rename a file into place");
    std::fs::rename(tmp_path(dest), dest).map_err(failed(dest, "rename into place"))
}

/// Stage, make durable (if `durable`), rename: one file, atomically. The
/// directory entry is durable once the caller fsyncs the directory
/// ([`fsync_dir`]), once for all the files it wrote there.
pub fn write(dest: &Path, data: &[u8], mode: u32, durable: bool) -> Result<(), Failed> {
    let tmp = stage(dest, data, mode, None, None)?;
    let synced = if durable {
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(failed(&tmp, "fsync"))
    } else {
        Ok(())
    };
    if let Err(e) = synced.and_then(|_| commit(dest)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Make the entries of `dir` durable (a rename is not until its directory is).
pub fn fsync_dir(dir: &Path) -> Result<(), Failed> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(failed(dir, "fsync directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("tend-web-1a2b3c4d.yaml");
        write(&dest, b"old", 0o640, true).unwrap();
        write(&dest, b"new", 0o644, true).unwrap();
        fsync_dir(dir.path()).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary file was left");
        // A link planted at the temporary name is not followed.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, tmp_path(&dest)).unwrap();
        write(&dest, b"newer", 0o644, false).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&dest).unwrap(), b"newer");
        // A failure names the path and the step, and leaves nothing behind.
        let e = write(&dir.path().join("missing/x.yaml"), b"x", 0o644, true).unwrap_err();
        assert_eq!(e.step, "create temporary file");
        assert!(e.to_string().contains("missing/.x.yaml.tend-tmp"), "{e}");
    }
}
