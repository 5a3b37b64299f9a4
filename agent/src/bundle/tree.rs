//! Read-only access to the files of one revision: a Git commit's tree (in
//! `source/`) or a directory on disk (for `tend validate` and tests).
//!
//! Implementations never follow symlinks themselves: a symlink is reported as
//! such, with its target, and the bundle reader decides whether it is allowed.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::RelPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File {
        executable: bool,
    },
    Dir,
    Symlink,
    /// Anything else (a submodule, a device node, a socket): never applied.
    Other,
}

/// What went wrong reading the tree: the path and the reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TreeError {
    pub path: String,
    pub reason: String,
}

impl TreeError {
    pub fn new(path: impl ToString, reason: impl ToString) -> Self {
        TreeError { path: path.to_string(), reason: reason.to_string() }
    }
}

/// The files of one revision.
pub trait Tree {
    /// What is at `path`, without following a final symlink; `None` when nothing is.
    fn kind(&self, path: &RelPath) -> Result<Option<EntryKind>, TreeError>;
    /// The entries of the directory at `path`, sorted by name. A name that is not
    /// valid UTF-8 or is not a valid path segment is an error naming it.
    fn list(&self, path: &RelPath) -> Result<Vec<(String, EntryKind)>, TreeError>;
    /// The content of the file at `path`, or the target of the symlink at `path`;
    /// more than `limit` bytes is an error.
    fn read(&self, path: &RelPath, limit: u64) -> Result<Vec<u8>, TreeError>;
}

/// A directory on disk seen as a revision; symlinks are reported, not followed.
#[derive(Debug, Clone)]
pub struct DirTree {
    root: PathBuf,
}

impl DirTree {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirTree { root: root.into() }
    }

    fn full(&self, path: &RelPath) -> PathBuf {
        let mut p = self.root.clone();
        for s in path.segments() {
            p.push(s);
        }
        p
    }
}

fn kind_of(meta: &std::fs::Metadata) -> EntryKind {
    use std::os::unix::fs::PermissionsExt;
    let t = meta.file_type();
    if t.is_symlink() {
        EntryKind::Symlink
    } else if t.is_dir() {
        EntryKind::Dir
    } else if t.is_file() {
        EntryKind::File { executable: meta.permissions().mode() & 0o111 != 0 }
    } else {
        EntryKind::Other
    }
}

impl Tree for DirTree {
    fn kind(&self, path: &RelPath) -> Result<Option<EntryKind>, TreeError> {
        // Every parent must be a real directory, or a symlinked directory would let
        // the walk leave the tree.
        let mut cur = RelPath::root();
        for (i, seg) in path.segments().iter().enumerate() {
            cur = cur.join(seg).map_err(|e| TreeError::new(path, e))?;
            match std::fs::symlink_metadata(self.full(&cur)) {
                Ok(m) => {
                    let k = kind_of(&m);
                    if i + 1 == path.segments().len() {
                        return Ok(Some(k));
                    }
                    if k != EntryKind::Dir {
                        return Ok(None);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(TreeError::new(&cur, e)),
            }
        }
        Ok(Some(EntryKind::Dir))
    }

    fn list(&self, path: &RelPath) -> Result<Vec<(String, EntryKind)>, TreeError> {
        let dir = self.full(path);
        let rd = std::fs::read_dir(&dir).map_err(|e| TreeError::new(path, e))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| TreeError::new(path, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(TreeError::new(path, format!("file name {:?} is not valid UTF-8", name.to_string_lossy())));
            };
            if path.is_root() && name == ".git" {
                continue;
            }
            path.join(name).map_err(|e| TreeError::new(path, e))?;
            let meta = entry.metadata().map_err(|e| TreeError::new(path.join(name).unwrap_or_default(), e))?;
            out.push((name.to_owned(), kind_of(&meta)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn read(&self, path: &RelPath, limit: u64) -> Result<Vec<u8>, TreeError> {
        let full = self.full(path);
        match self.kind(path)? {
            Some(EntryKind::Symlink) => {
                let t = std::fs::read_link(&full).map_err(|e| TreeError::new(path, e))?;
                Ok(t.into_os_string().into_encoded_bytes())
            }
            Some(EntryKind::File { .. }) => {
                let f = std::fs::File::open(&full).map_err(|e| TreeError::new(path, e))?;
                let mut buf = Vec::new();
                f.take(limit + 1).read_to_end(&mut buf).map_err(|e| TreeError::new(path, e))?;
                if buf.len() as u64 > limit {
                    return Err(TreeError::new(path, format!("larger than the limit of {limit} bytes")));
                }
                Ok(buf)
            }
            _ => Err(TreeError::new(path, "not a file")),
        }
    }
}

/// The root of the Git work tree containing `dir`, if any (for `tend validate`).
pub fn enclosing_repo_root(dir: &Path) -> Option<PathBuf> {
    let dir = dir.canonicalize().ok()?;
    dir.ancestors().find(|a| a.join(".git").exists()).map(Path::to_path_buf)
}
