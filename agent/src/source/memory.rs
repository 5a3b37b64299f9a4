//! A complete in-memory [`Source`] and a settable [`Clock`], so the whole sync
//! cycle (fetch, render, decide, wait, apply, health, roll back) runs in unit
//! tests under a fake clock, without Git.

use std::collections::BTreeMap;
use std::sync::Mutex;

use jiff::Timestamp;

use super::{Clock, Fetched, Source, SourceError};
use crate::bundle::{EntryKind, RelPath, Tree, TreeError};

/// One commit: its id, committer time and files (path -> content).
#[derive(Debug, Clone)]
pub struct MemoryCommit {
    pub id: String,
    pub committed_at: Timestamp,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// A branch in memory: `push` moves its tip; `fail` makes fetches fail.
#[derive(Debug, Default)]
pub struct MemorySource {
    commits: Mutex<Vec<MemoryCommit>>,
    failing: Mutex<Option<SourceError>>,
}

impl MemorySource {
    pub fn new() -> MemorySource {
        MemorySource::default()
    }

    /// A new commit at the tip, with a made-up id; returns the id.
    pub fn push(&self, committed_at: Timestamp, files: &[(&str, &str)]) -> String {
        let mut commits = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        let id = format!("{:040x}", commits.len() + 1);
        let files = files.iter().map(|(p, c)| ((*p).to_owned(), c.as_bytes().to_vec())).collect();
        commits.push(MemoryCommit { id: id.clone(), committed_at, files });
        id
    }

    /// The branch moves back to `id`, an earlier commit (a force-push of an
    /// older tip).
    pub fn reset_to(&self, id: &str) {
        let mut commits = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = commits.iter().find(|c| c.id == id).cloned() {
            commits.push(c);
        }
    }

    /// The branch's tip.
    pub fn tip(&self) -> Option<String> {
        self.commits.lock().unwrap_or_else(|e| e.into_inner()).last().map(|c| c.id.clone())
    }

    /// Fetches fail with `error` until set back to `None`.
    pub fn fail(&self, error: Option<SourceError>) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    fn commit(&self, id: &str) -> Result<MemoryCommit, SourceError> {
        let commits = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        commits
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .ok_or_else(|| SourceError::transient(format!("commit {id}: not fetched")))
    }
}

impl Source for MemorySource {
    fn shown_url(&self) -> String {
        "memory:".into()
    }
    fn fetch(&self) -> Result<Fetched, SourceError> {
        if let Some(e) = self.failing.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(e);
        }
        let commits = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        let tip = commits.last().ok_or_else(|| SourceError::transient("memory: branch main not found"))?;
        Ok(Fetched { commit: tip.id.clone(), received_pack: false })
    }
    fn tree(&self, commit: &str) -> Result<Box<dyn Tree + '_>, SourceError> {
        Ok(Box::new(MemoryTree { files: self.commit(commit)?.files }))
    }
    fn commit_object(&self, commit: &str) -> Result<Vec<u8>, SourceError> {
        Ok(format!("tree 0\ncommitter memory\n\n{commit}\n").into_bytes())
    }
    fn committed_at(&self, commit: &str) -> Result<Timestamp, SourceError> {
        Ok(self.commit(commit)?.committed_at)
    }
}

/// A commit's files; directories are implied by the paths.
struct MemoryTree {
    files: BTreeMap<String, Vec<u8>>,
}

impl Tree for MemoryTree {
    fn kind(&self, path: &RelPath) -> Result<Option<EntryKind>, TreeError> {
        let p = path.to_string();
        if self.files.contains_key(&p) {
            return Ok(Some(EntryKind::File { executable: false }));
        }
        let dir = if p.is_empty() { String::new() } else { format!("{p}/") };
        Ok(self.files.keys().any(|f| f.starts_with(&dir)).then_some(EntryKind::Dir))
    }
    fn list(&self, path: &RelPath) -> Result<Vec<(String, EntryKind)>, TreeError> {
        let p = path.to_string();
        let dir = if p.is_empty() { String::new() } else { format!("{p}/") };
        let mut out: BTreeMap<String, EntryKind> = BTreeMap::new();
        for f in self.files.keys().filter_map(|f| f.strip_prefix(&dir)) {
            match f.split_once('/') {
                Some((d, _)) => out.insert(d.to_owned(), EntryKind::Dir),
                None => out.insert(f.to_owned(), EntryKind::File { executable: false }),
            };
        }
        if out.is_empty() {
            return Err(TreeError::new(path, "not a directory"));
        }
        Ok(out.into_iter().collect())
    }
    fn read(&self, path: &RelPath, limit: u64) -> Result<Vec<u8>, TreeError> {
        let data = self.files.get(&path.to_string()).ok_or_else(|| TreeError::new(path, "not found"))?;
        if data.len() as u64 > limit {
            return Err(TreeError::new(path, format!("{} bytes, larger than the limit of {limit} bytes", data.len())));
        }
        Ok(data.clone())
    }
}

/// A clock that moves only when told.
#[derive(Debug)]
pub struct FakeClock(Mutex<Timestamp>);

impl FakeClock {
    pub fn new(at: Timestamp) -> FakeClock {
        FakeClock(Mutex::new(at))
    }
    /// The clock jumps to `at` (back, too).
    pub fn set(&self, at: Timestamp) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
    pub fn advance(&self, by: std::time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += jiff::SignedDuration::try_from(by).expect("a test duration");
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
