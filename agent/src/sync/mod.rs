//! The sync cycle (SPEC §3): fetch → render → plan → apply → health → commit or
//! roll back.
//!
//! [`Agent`] holds the blocking steps (Git, the store, the disk); the cycle
//! itself ([`sync`], [`rollback`], [`enforce_current`]) is async and runs each
//! blocking step on the blocking pool, so the daemon's tasks never block.
//!
//! What must always hold:
//! - a bundle is applied whole or not at all: every check that can fail before
//!   the disk is touched (render, policy, owners, things in the way) runs first;
//! - a failed apply or a failed health window returns every file to the
//!   last-known-good revision from the store, without the network, and the
//!   revision is quarantined: not applied again until the branch moves or an
//!   operator asks;
//! - an unreachable source never stops enforcement: the revision applied now is
//!   re-enforced from the store;
//! - a revision record is written only after the blobs it references.

mod apply;
mod records;
mod rollback;
mod run;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use rollback::rollback;
pub(crate) use run::blocking;
pub use run::{boot, enforce_current, recover, stopped, sync, sync_import};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::bundle::{self, BundleError, Desired, Limits, Policy, RelPath};
use crate::config::Config;
use crate::cycle::{self, Effect, ErrorKind, Event, Phase, Refusal};
use crate::hash::ContentHash;
use crate::health::{self, Health};
use crate::reconcile::containers::{self, ContainerOp, DockerRuntime, Runtime, RuntimeError};
use crate::reconcile::files::{self, ApplyReport, FileError, FileRoot, ProcessRunner, Runner};
use crate::reconcile::k3s::{self, ManifestOp};
use crate::reconcile::plan::{Live, Op, Plan, plan};
use crate::report::{Events, Kind};
use crate::rollout::{Gate, gate};
use crate::secrets::AgeKeys;
use crate::source::{AllowedSigners, Fetched, GitSource, SourceError};
use crate::store::{
    Inventory, Outcome, Pointers, Resources, RevRef, RevisionRecord, SledStore, Status, Store, StoreError, Verified,
};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

impl From<SourceError> for SyncError {
    fn from(e: SourceError) -> SyncError {
        SyncError::Source(e)
    }
}

/// Why a sync did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    // The source error is in the message, not a `source()` as well: a
    // printer of error chains would say it twice.
    #[error("source: {0}")]
    Source(SourceError),
    /// The source is unreachable and the revision applied now could not be
    /// enforced from the store either.
    #[error("source: {error}; and the revision applied now could not be enforced: {repair}")]
    Offline { error: SourceError, repair: Box<SyncError> },
    #[error("bundle rejected at {commit}: {error}")]
    Bundle { commit: String, error: BundleError },
    /// The commit's signature is missing or not trusted (`allowed_signers`).
    #[error("refused: commit {commit} {reason}")]
    Untrusted { commit: String, reason: String },
    /// A local trust file (allowed signers, age identity) cannot be used.
    #[error("{0}")]
    Trust(String),
    #[error("cannot apply {commit}: {}", .blocked.join("; "))]
    Blocked { commit: String, blocked: Vec<String> },
    #[error("apply of {commit} failed: {error}")]
    Apply { commit: String, error: FileError },
    #[error("containers of {}: {error}", short(.commit))]
    Container { commit: String, error: RuntimeError },
    #[error("manifests of {}: {error}", short(.commit))]
    K3s { commit: String, error: k3s::K3sError },
    /// A file system would drop below `[apply].min_free`: not applied now,
    /// retried.
    #[error("revision {} not applied now: {error}", short(.commit))]
    Space { commit: String, error: String },
    /// A `[hooks].before_apply` failed: not applied now, retried.
    #[error("revision {} not applied now: {hook} hook {error}", short(.commit))]
    Hook { commit: String, hook: &'static str, error: String },
    #[error("revision {} is unhealthy: {failures}{}", short(.commit), then(.after))]
    Unhealthy { commit: String, failures: String, after: String },
    #[error("revision {} is quarantined ({reason}); it is not applied again until the branch moves or `tend sync --retry`", short(.commit))]
    Quarantined { commit: String, reason: String },
    #[error("{0}")]
    Rollback(String),
    /// The revision's `[rollout]` does not fit this gateway.
    #[error("rollout policy of {}: {error}", short(.commit))]
    Rollout { commit: String, error: String },
    /// Contents a write needs are not in the store (it is damaged).
    #[error("revision {}: {} missing from the store{}; the store is damaged: with the source reachable, tend renders the revision from Git again at the next sync", short(.commit), .paths.first().map(String::as_str).unwrap_or(""), if .paths.len() > 1 { format!(" (and {} more contents)", .paths.len() - 1) } else { String::new() })]
    MissingContent { commit: String, paths: Vec<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// "; what happened after", or nothing.
fn then(after: &str) -> String {
    if after.is_empty() { String::new() } else { format!("; {after}") }
}

impl SyncError {
    /// Transient errors are retried with backoff; the rest quarantine the
    /// revision or wait for a new commit.
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::Source(e) | SyncError::Offline { error: e, .. } => e.is_transient(),
            SyncError::Apply { error: FileError::Io { .. }, .. } => true,
            SyncError::Container { error, .. } => error.is_transient(),
            SyncError::K3s { .. } => true,
            SyncError::Store(_) => true,
            SyncError::Trust(_) => true,
            SyncError::Hook { .. } | SyncError::Space { .. } => true,
            _ => false,
        }
    }

    /// How the cycle treats it ([`cycle::step`]).
    pub fn kind(&self) -> ErrorKind {
        if self.is_transient() { ErrorKind::Transient } else { ErrorKind::Permanent }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct SyncOptions {
    /// Print the plan, change nothing.
    pub dry_run: bool,
    /// Apply the fetched revision even if it is quarantined.
    pub retry: bool,
    /// Do not repair drift when the revision did not change (`[apply].self_heal = false`).
    pub no_heal: bool,
    /// Go past waves and maintenance windows (not update locks): `--now`.
    #[serde(default)]
    pub now: bool,
}

/// What a cycle found and did, as `tend sync` prints it (directly or through
/// the daemon's control socket).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncSummary {
    pub commit: Option<String>,
    /// `applied`, `unchanged`, `repaired`, `rolled_back`, `planned` (dry run).
    pub action: String,
    pub dry_run: bool,
    pub received_pack: bool,
    pub files: usize,
    #[serde(default)]
    pub containers: usize,
    #[serde(default)]
    pub manifests: usize,
    pub operations: Vec<String>,
    /// Files, containers and manifests created, updated and deleted.
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Kubernetes objects deleted (K3s prune).
    #[serde(default)]
    pub pruned: usize,
    pub hooks: usize,
    /// Check name → `pass` or the reason it failed.
    pub checks: BTreeMap<String, String>,
    pub timings: Timings,
    /// With `action` `waiting` or `held`: why (`wave`, `window`, `lock`,
    /// `fleet`) and when it may be applied (RFC 3339), if known.
    #[serde(default)]
    pub waiting_for: Option<String>,
    #[serde(default)]
    pub due_at: Option<String>,
}

impl SyncSummary {
    fn from_plan(plan: &Plan) -> SyncSummary {
        let (created, updated, deleted, hooks) = plan.counts();
        SyncSummary {
            operations: plan
                .ops
                .iter()
                .filter(|o| o.changes_disk())
                .map(ToString::to_string)
                .chain(plan.containers.iter().map(ToString::to_string))
                .chain(plan.manifests.iter().flat_map(ManifestOp::lines))
                .collect(),
            created,
            updated,
            deleted,
            hooks,
            pruned: plan
                .manifests
                .iter()
                .map(|m| match m {
                    ManifestOp::Delete { prune, .. } => prune.len(),
                    ManifestOp::Write { .. } => 0,
                })
                .sum(),
            ..Default::default()
        }
    }
}

impl SyncSummary {
    /// How many resources the revision declares.
    fn set_counts(&mut self, desired: &Desired) {
        self.files = desired.files.len();
        self.containers = desired.containers.len();
        self.manifests = desired.manifests.len();
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub fetch_ms: f64,
    pub render_ms: f64,
    pub plan_ms: f64,
    pub apply_ms: f64,
    pub health_ms: f64,
}

/// What a sync measured, written with a transition's status.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    /// The resources of the revision applied now, when counted.
    pub resources: Option<Resources>,
    /// The time of the last sync is now.
    pub synced: bool,
}

impl Measured {
    /// A sync's transition: the time of the last sync is now.
    pub fn synced() -> Measured {
        Measured { resources: None, synced: true }
    }
    pub fn with(resources: Resources) -> Measured {
        Measured { resources: Some(resources), synced: true }
    }
}

/// One transition of the cycle: the state before and after, and the
/// effects the driver performs.
#[derive(Debug, Clone)]
pub struct Transition {
    pub before: Pointers,
    pub after: Pointers,
    pub effects: Vec<Effect>,
}

/// A bundle ready to apply: the desired state and the contents it needs that
/// are not in the store yet.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub commit: String,
    pub render_key: String,
    pub desired: Desired,
    pub blobs: HashMap<ContentHash, Vec<u8>>,
    /// False when reused from the store (same commit, same local identity).
    pub rendered: bool,
    /// What the apply went past (`--now`, a lock's timeout), for the history.
    pub forced: Option<String>,
    /// Where it came from when not from the source (`import FILE`).
    pub from: Option<String>,
}

impl Prepared {
    /// A revision refused before it was rendered: only its commit is known.
    pub(super) fn nothing(commit: &str, render_key: String) -> Prepared {
        Prepared {
            commit: commit.to_owned(),
            render_key,
            desired: Desired::default(),
            blobs: HashMap::new(),
            rendered: true,
            forced: None,
            from: None,
        }
    }
}

/// One gateway's agent: its config, store, source and destination tree.
pub struct Agent {
    pub cfg: Config,
    /// Raises events into the store's outbox (published by the reporter).
    pub events: Events,
    /// The store: sled under `state_dir` (`MemStore` in the simulation).
    pub store: Arc<dyn Store + Send + Sync>,
    pub source: Box<dyn crate::source::Source>,
    /// What time it is for the cycle's decisions (waves, windows, locks).
    pub clock: Arc<dyn crate::source::Clock>,
    pub root: FileRoot,
    pub limits: Limits,
    pub runner: Box<dyn Runner + Send + Sync>,
    /// The container runtime, connected on first use (a gateway without
    /// containers never needs one).
    pub runtime: std::sync::OnceLock<Arc<dyn Runtime>>,
    /// The files of the revision applied now as last verified (see
    /// [`enforce_current`]); cleared by every apply.
    verified: std::sync::Mutex<Option<Verified>>,
    /// The time of the last sync when nothing else in the status changed:
    /// not written to the store at each poll ([`Agent::set_status`]).
    pending_last_sync: std::sync::Mutex<Option<String>>,
    /// Counts for `[metrics] textfile`.
    pub counters: crate::report::textfile::Counters,
    /// The fleet's failure reports (SPEC §7), read by the daemon's MQTT
    /// reporter; `None` without `[mqtt]` or in a one-shot command.
    pub breaker: Option<Arc<crate::report::breaker::Breaker>>,
    /// How a bundle's `[[check]]`s are probed; `None`: for real (HTTP, TCP,
    /// commands). The simulation probes them in memory.
    pub check_probe: Option<CheckProbe>,
    /// What the daemon found wrong with its surroundings at start (a
    /// read-only `[files].allow` root), shown in the status until it restarts.
    pub problems: Vec<String>,
    /// What this gateway is, for the status (`inventory`): read at open;
    /// the runtime and K3s versions filled in when asked.
    pub host: std::sync::Mutex<crate::inventory::HostInventory>,
}

/// Makes the probe of one `[[check]]`.
pub type CheckProbe = Arc<dyn Fn(&crate::bundle::Check) -> Box<dyn health::Probe> + Send + Sync>;

/// How long a fingerprint stands in for the full check: past it, a poll reads
/// the revision and checks everything again (level-triggered, as at start).
const FULL_CHECK_EVERY: Duration = Duration::from_secs(3600);

impl Drop for Agent {
    /// A one-shot command's idle sync still records when it happened.
    fn drop(&mut self) {
        if let Err(e) = self.persist_status() {
            tracing::warn!(error = %e, "could not record the last sync");
        }
    }
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("device_id", &self.cfg.device_id).finish()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub use crate::report::now_rfc3339;

/// The first 12 hex digits of a commit.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Count the desired files per bundle they came from (for `validate`).
pub fn files_by_bundle(desired: &Desired) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for f in desired.files.values() {
        let bundle = f.from.split("/files/").next().unwrap_or("").to_owned();
        *out.entry(bundle).or_insert(0) += 1;
    }
    out
}
