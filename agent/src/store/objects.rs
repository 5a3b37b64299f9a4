//! File contents, content-addressed, as files under `state_dir/objects`
//! (`objects/ab/cdef…`, the SHA-256 in hex), like Git's loose objects.
//!
//! sled keeps the records (revisions, pointers, inventory, outbox); contents
//! stay out of its log, so its memory and its open time do not grow with the
//! bundle.
//!
//! What must always hold:
//! - an object is written to a temporary file and renamed into place: a
//!   reader sees all of it or nothing;
//! - [`Objects::sync`] makes every object written so far durable; the store
//!   calls it before writing the record that references them;
//! - an object is verified against its name when read: a damaged or missing
//!   one is an error naming its path, never other content.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::hash::ContentHash;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    /// The file's content does not hash to its name.
    #[error(
        "{path}: damaged (its content hashes to {actual}); remove it and run `tend sync` to fetch the revision again"
    )]
    Damaged { path: String, actual: String },
}

#[derive(Debug)]
pub struct Objects {
    root: PathBuf,
    /// Objects were written since the last sync.
    dirty: AtomicBool,
}

impl Objects {
    /// The object directory at `root` (created when missing).
    pub fn open(root: &Path) -> Result<Objects, ObjectError> {
        std::fs::create_dir_all(root).map_err(|e| io(root, e))?;
        Ok(Objects { root: root.to_path_buf(), dirty: AtomicBool::new(false) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the object `hash` lives.
    pub fn path(&self, hash: &ContentHash) -> PathBuf {
        let hex = hash.to_string();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    pub fn contains(&self, hash: &ContentHash) -> bool {
        std::fs::symlink_metadata(self.path(hash)).is_ok_and(|m| m.is_file())
    }

    /// Keep `data` under `hash` (nothing to do when it is there).
    pub fn put(&self, hash: &ContentHash, data: &[u8]) -> Result<(), ObjectError> {
        if self.contains(hash) {
            return Ok(());
        }
        let dest = self.path(hash);
        let dir = dest.parent().expect("under a fan-out directory").to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let tmp = dir.join(format!(".{}.tmp", std::process::id()));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(data)?;
            std::fs::rename(&tmp, &dest)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&dest, e));
        }
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// The content of `hash`: `None` when there is no such object.
    pub fn get(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, ObjectError> {
        let path = self.path(hash);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        };
        let actual = ContentHash::of(&data);
        if actual != *hash {
            return Err(ObjectError::Damaged { path: path.display().to_string(), actual: actual.short() });
        }
        Ok(Some(data))
    }

    /// Make every object written so far durable: one `syncfs` for their file
    /// system, which on Linux writes the files' data and every directory
    /// entry with them (cheaper on slow flash than an fsync per file and per
    /// directory: up to 256 fan-out directories after a first sync).
    pub fn sync(&self) -> Result<(), ObjectError> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let synced = std::fs::File::open(&self.root)
            .and_then(|root| nix::unistd::syncfs(&root).map_err(std::io::Error::from))
            .map_err(|e| io(&self.root, e));
        if synced.is_err() {
            // Still to be made durable: the next sync tries again.
            self.dirty.store(true, Ordering::Release);
        }
        synced
    }

    /// Every object's hash (files whose name is not a hash are skipped).
    pub fn list(&self) -> Result<Vec<ContentHash>, ObjectError> {
        let mut out = Vec::new();
        for fan in std::fs::read_dir(&self.root).map_err(|e| io(&self.root, e))? {
            let fan = fan.map_err(|e| io(&self.root, e))?;
            let prefix = fan.file_name().to_string_lossy().into_owned();
            if prefix.len() != 2 || !fan.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for f in std::fs::read_dir(fan.path()).map_err(|e| io(&fan.path(), e))? {
                let f = f.map_err(|e| io(&fan.path(), e))?;
                let name = f.file_name().to_string_lossy().into_owned();
                if let Ok(h) = ContentHash::try_from(format!("{prefix}{name}")) {
                    out.push(h);
                } else if name.starts_with('.') && name.ends_with(".tmp") {
                    // Left by a crash in the middle of a write.
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(out)
    }

    /// Remove the object `hash` (nothing to do when it is not there).
    pub fn remove(&self, hash: &ContentHash) -> Result<(), ObjectError> {
        let path = self.path(hash);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, e)),
        }
    }
}

fn io(path: &Path, e: std::io::Error) -> ObjectError {
    ObjectError::Io { path: path.display().to_string(), reason: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_remove_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let o = Objects::open(&dir.path().join("objects")).unwrap();
        let h = ContentHash::of(b"hello");
        assert_eq!(o.get(&h).unwrap(), None);
        o.put(&h, b"hello").unwrap();
        o.put(&h, b"hello").unwrap();
        o.sync().unwrap();
        assert_eq!(o.get(&h).unwrap().unwrap(), b"hello");
        let hex = h.to_string();
        assert_eq!(o.path(&h), dir.path().join("objects").join(&hex[..2]).join(&hex[2..]));
        std::fs::write(dir.path().join("objects").join(&hex[..2]).join(".123.tmp"), "half").unwrap();
        assert_eq!(o.list().unwrap(), vec![h]);
        assert!(!dir.path().join("objects").join(&hex[..2]).join(".123.tmp").exists(), "a crash's leftover stays");
        // Damaged: named, never returned as content.
        std::fs::write(o.path(&h), "other").unwrap();
        let e = o.get(&h).unwrap_err().to_string();
        assert!(e.contains(&o.path(&h).display().to_string()) && e.contains("damaged"), "{e}");
        o.remove(&h).unwrap();
        o.remove(&h).unwrap();
        assert!(o.list().unwrap().is_empty());
    }
}
