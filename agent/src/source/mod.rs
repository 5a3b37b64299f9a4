//! Where desired state comes from: a Git branch, fetched shallowly into
//! `state_dir/git`, and read as a [`Tree`](crate::bundle::Tree) per commit.
//!
//! gix and its blocking I/O stay inside this module; callers on async tasks run
//! these calls in `spawn_blocking`. Errors are sorted: [`ErrorKind::Transient`]
//! (network, timeout: retry with backoff) and [`ErrorKind::Permanent`] (nothing
//! a retry would fix until the repository or the local config changes).

mod git;

pub use crate::trust::AllowedSigners;
pub use git::{GitSource, GitTree};

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
