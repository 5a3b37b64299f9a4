//! An in-memory tree of a fleet repository for the fuzz targets: file path
//! (relative, `/`-separated) -> content; directories are implied.
use std::collections::BTreeMap;

use tend::bundle::{EntryKind, RelPath, Tree, TreeError};

/// Files and directories in memory; a path ending in '/' is a directory.
pub struct MemTree(pub BTreeMap<String, Vec<u8>>);

impl MemTree {
    fn key(path: &RelPath) -> String {
        path.to_string()
    }
}

impl Tree for MemTree {
    fn kind(&self, path: &RelPath) -> Result<Option<EntryKind>, TreeError> {
        let k = Self::key(path);
        if path.is_root() || self.0.keys().any(|p| p.starts_with(&format!("{k}/"))) {
            return Ok(Some(EntryKind::Dir));
        }
        Ok(self.0.contains_key(&k).then_some(EntryKind::File { executable: false }))
    }
    fn list(&self, path: &RelPath) -> Result<Vec<(String, EntryKind)>, TreeError> {
        let prefix = if path.is_root() { String::new() } else { format!("{}/", Self::key(path)) };
        let mut out: BTreeMap<String, EntryKind> = BTreeMap::new();
        for p in self.0.keys() {
            if let Some(rest) = p.strip_prefix(&prefix) {
                match rest.split_once('/') {
                    Some((dir, _)) => out.insert(dir.to_owned(), EntryKind::Dir),
                    None => out.insert(rest.to_owned(), EntryKind::File { executable: false }),
                };
            }
        }
        Ok(out.into_iter().collect())
    }
    fn read(&self, path: &RelPath, limit: u64) -> Result<Vec<u8>, TreeError> {
        let data = self.0.get(&Self::key(path)).ok_or_else(|| TreeError::new(path, "not a file"))?;
        if data.len() as u64 > limit {
            return Err(TreeError::new(path, "larger than the limit"));
        }
        Ok(data.clone())
    }
}
