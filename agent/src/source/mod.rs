//! Where desired state comes from: a Git branch, fetched shallowly into
//! `state_dir/git`, and read as a [`Tree`](crate::bundle::Tree) per commit.
//!
//! gix and its blocking I/O stay inside this module; callers on async tasks run
//! these calls in `spawn_blocking`. Errors are sorted: [`ErrorKind::Transient`]
//! (network, timeout: retry with backoff) and [`ErrorKind::Permanent`] (nothing
//! a retry would fix until the repository or the local config changes).

mod explain;
mod git;
pub mod memory;

pub use crate::trust::AllowedSigners;
pub use git::{GitSource, GitTree, Taken};

use crate::bundle::Tree;

/// Where revisions come from, as the sync cycle sees it: Git
/// ([`GitSource`]), or [`memory::MemorySource`] in tests of the whole cycle.
/// Blocking.
pub trait Source: Send + Sync {
    /// The URL with any credentials hidden, for messages.
    fn shown_url(&self) -> String;
    /// The branch's tip, fetched (with what it needs to be read).
    fn fetch(&self) -> Result<Fetched, SourceError>;
    /// The files of a fetched commit.
    fn tree(&self, commit: &str) -> Result<Box<dyn Tree + '_>, SourceError>;
    /// The raw commit object, as signed.
    fn commit_object(&self, commit: &str) -> Result<Vec<u8>, SourceError>;
    /// The commit's committer time (waves are due after it).
    fn committed_at(&self, commit: &str) -> Result<jiff::Timestamp, SourceError>;
    /// Take a Git bundle from a stick into the local repository (SPEC §9).
    fn take_bundle(&self, _r: &mut dyn std::io::BufRead, _commit: &str, _branch: &str) -> Result<Taken, String> {
        Err("this source cannot take a Git bundle".into())
    }
    /// Whether `commit` descends from (or is) `ancestor`, as far as the
    /// local history tells (`None`: it does not reach far enough).
    fn descends(&self, _commit: &str, _ancestor: &str) -> Result<Option<bool>, String> {
        Ok(None)
    }
    /// Fetch more of the branch's history (to answer [`Source::descends`]).
    fn deepen(&self, _depth: u32) -> Result<(), SourceError> {
        Ok(())
    }
}

impl Source for GitSource {
    fn shown_url(&self) -> String {
        GitSource::shown_url(self)
    }
    fn fetch(&self) -> Result<Fetched, SourceError> {
        GitSource::fetch(self)
    }
    fn tree(&self, commit: &str) -> Result<Box<dyn Tree + '_>, SourceError> {
        Ok(Box::new(GitSource::tree(self, commit)?))
    }
    fn commit_object(&self, commit: &str) -> Result<Vec<u8>, SourceError> {
        GitSource::commit_object(self, commit)
    }
    fn committed_at(&self, commit: &str) -> Result<jiff::Timestamp, SourceError> {
        GitSource::committed_at(self, commit)
    }
    fn take_bundle(&self, r: &mut dyn std::io::BufRead, commit: &str, branch: &str) -> Result<Taken, String> {
        GitSource::take_bundle(self, r, commit, branch)
    }
    fn descends(&self, commit: &str, ancestor: &str) -> Result<Option<bool>, String> {
        GitSource::descends(self, commit, ancestor)
    }
    fn deepen(&self, depth: u32) -> Result<(), SourceError> {
        GitSource::deepen(self, depth).map(|_| ())
    }
}

/// A shared source (a test keeps a handle on the one the agent owns).
impl<S: Source + ?Sized> Source for std::sync::Arc<S> {
    fn shown_url(&self) -> String {
        (**self).shown_url()
    }
    fn fetch(&self) -> Result<Fetched, SourceError> {
        (**self).fetch()
    }
    fn tree(&self, commit: &str) -> Result<Box<dyn Tree + '_>, SourceError> {
        (**self).tree(commit)
    }
    fn commit_object(&self, commit: &str) -> Result<Vec<u8>, SourceError> {
        (**self).commit_object(commit)
    }
    fn committed_at(&self, commit: &str) -> Result<jiff::Timestamp, SourceError> {
        (**self).committed_at(commit)
    }
    fn take_bundle(&self, r: &mut dyn std::io::BufRead, commit: &str, branch: &str) -> Result<Taken, String> {
        (**self).take_bundle(r, commit, branch)
    }
    fn descends(&self, commit: &str, ancestor: &str) -> Result<Option<bool>, String> {
        (**self).descends(commit, ancestor)
    }
    fn deepen(&self, depth: u32) -> Result<(), SourceError> {
        (**self).deepen(depth)
    }
}

/// What time it is, for the cycle's decisions: the system's, or a fake one
/// in tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> jiff::Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Transient,
    Permanent,
}

/// Why the source could not give a revision: names the URL or commit.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub kind: ErrorKind,
    pub message: String,
}

impl SourceError {
    pub fn transient(message: impl Into<String>) -> Self {
        SourceError { kind: ErrorKind::Transient, message: message.into() }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        SourceError { kind: ErrorKind::Permanent, message: message.into() }
    }
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// The result of one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The commit the branch points at (hex).
    pub commit: String,
    /// Whether a pack was received (false when the branch had not moved).
    pub received_pack: bool,
}
