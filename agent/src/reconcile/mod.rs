//! Taking the gateway from what it is to what the bundle declares.
//!
//! `plan` is pure (desired × live × inventory → operations); `files` observes
//! destinations and carries out operations on them.

pub mod containers;
pub mod files;
pub mod k3s;
pub mod plan;
pub mod registry;
pub mod space;

pub use files::{ApplyReport, FileError, FileRoot, ProcessRunner, Runner};
pub use plan::{Live, Op, Plan, Target, plan};
