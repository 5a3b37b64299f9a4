//! The local store under `state_dir`: applied revisions, file contents, the
//! inventory of what tend created, and the last status.
//!
//! What must always hold: every value carries a schema version and is rejected
//! (not misread) when the version is unknown; file contents are content-addressed
//! (`objects.rs`), so an unchanged file is stored once however many revisions use
//! it; a revision record is only written after every content it references is
//! durable. `sled.rs` is the only file that knows the backing database.

pub mod memory;
pub mod objects;
mod sled;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use self::sled::SledStore;
use crate::bundle::{Desired, RelPath};
use crate::hash::ContentHash;

/// The schema version written with every value.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: in use by another tend process (is `tend run` active?)")]
    Locked { path: String },
    #[error("state store {path}: {reason}")]
    Backend { path: String, reason: String },
    #[error("state store: {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The store lost what it had made durable (truncated or corrupted on
    /// disk): nothing of it can be trusted to say what tend owns.
    #[error(
        "state store {path} is damaged: {reason}. tend does nothing with a store it cannot trust (nothing is pruned): move {path} aside to start over without history (files present are then taken over as they are), or restore it from a backup"
    )]
    Damaged { path: String, reason: String },
}

/// How a revision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Applied; no health gate decided on it (yet).
    Applied,
    /// Applied and passed its health checks: a last-known-good candidate.
    Healthy,
    /// Apply or health failed.
    Failed,
    /// Failed and was rolled back.
    RolledBack,
    /// The agent died or stopped during its apply or health window; the
    /// gateway returned to last-known-good and tries it again (SPEC §3, 8).
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Healthy => "healthy",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Interrupted => "interrupted",
        }
    }
    pub fn is_good(self) -> bool {
        matches!(self, Outcome::Applied | Outcome::Healthy)
    }
}

/// One applied (or attempted) revision: the commit, what it resolved to for this
/// gateway, how it ended and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionRecord {
    /// Increasing sequence number; the key in the store.
    pub seq: u64,
    pub commit: String,
    /// The bundle directory in the repository.
    pub bundle: String,
    /// Identifies what besides the commit shaped the render (device id, fleet,
    /// labels, path, policy): the same commit renders again when it changes.
    pub render_key: String,
    pub applied_at: String,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub desired: Desired,
    /// What its apply went past: `--now` (waves, windows), a lock's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<String>,
    /// Where it came from when not from the source: `import FILE` (SPEC §9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// The content and metadata a file had before tend first wrote it; prune puts
/// it back, so adopting an existing file is never destructive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    pub hash: ContentHash,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What the inventory knows of a file's state on disk when tend last wrote or
/// verified it; when it still matches, the content need not be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A file tend owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// The content tend wrote; `None` while a write is in flight (after a crash:
    /// unknown, so the file is read and compared).
    pub hash: Option<ContentHash>,
    pub stat: Option<Stat>,
    /// What was there before tend took the file over; `None` if tend created it.
    pub original: Option<Original>,
}

/// Everything tend created or took over, and nothing else: prune reads only this.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Inventory {
    pub files: BTreeMap<RelPath, Owned>,
    /// Directories tend created (removed again when empty and no longer needed).
    pub dirs: BTreeSet<RelPath>,
    /// Set while an apply is in flight: a crash leaves it set, and the next sync
    /// cleans temporary files before planning.
    pub dirty: bool,
    /// Names of the containers tend created (so a gateway without containers
    /// never needs a container runtime).
    #[serde(default)]
    pub containers: BTreeSet<String>,
    /// Manifest files tend wrote in `[k3s].manifests_dir`, with their objects.
    #[serde(default)]
    pub manifests: BTreeMap<String, OwnedManifest>,
    /// `on_change` commands due because their files changed, recorded with
    /// the write-ahead before the first write and removed once run: a kill
    /// between a file's write and its hook runs the hook when the same
    /// revision is applied again (at least once), though the file is
    /// already as desired then. Enforcing another revision drops them: its
    /// own writes make its own hooks due, and a hook that kills the agent
    /// is left to `[apply].crash_limit`, never run at every start.
    #[serde(default)]
    pub pending_hooks: Option<PendingHooks>,
}

/// The hooks an apply of `commit` made due and has not run yet.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PendingHooks {
    pub commit: String,
    pub commands: Vec<Vec<String>>,
    /// Times these were started: a hook that takes the agent down with it
    /// is tried twice, not at every start.
    #[serde(default)]
    pub tries: u32,
}

/// A reference to a revision record, with what is needed to decide without
/// reading the record (records hold the whole resolved bundle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevRef {
    pub seq: u64,
    pub commit: String,
    pub render_key: String,
}

impl RevRef {
    pub fn of(r: &RevisionRecord) -> RevRef {
        RevRef { seq: r.seq, commit: r.commit.clone(), render_key: r.render_key.clone() }
    }
}

/// Which revisions matter now, and which commits must not be applied again.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Pointers {
    /// The revision applied now (what self-heal enforces).
    pub current: Option<RevRef>,
    /// Whether the current revision's health was decided (false while its
    /// health window runs, or if the agent stopped during it).
    pub current_gated: bool,
    /// The newest revision that passed its health checks.
    pub last_good: Option<RevRef>,
    /// Commits not applied again until the branch moves or an operator asks
    /// (`tend sync --retry`): commit → why.
    pub quarantine: BTreeMap<String, String>,
    /// Consecutive transient failures applying one commit: (commit, count).
    pub transient: Option<(String, u32)>,
    /// Suspended by a fleet command: no automatic sync until resumed.
    #[serde(default)]
    pub suspended: bool,
    /// The last repair of the revision applied now failed (status degraded
    /// until one succeeds).
    #[serde(default)]
    pub heal_failed: bool,
    /// The fetched revision not applied yet (rollout control, SPEC §7).
    #[serde(default)]
    pub waiting: Option<crate::rollout::Waiting>,
    /// The revision whose apply or health window is under way, recorded
    /// before its first write and cleared when its outcome is decided: a
    /// start that finds it running counts a death of the agent (SPEC §3, 8).
    #[serde(default)]
    pub attempt: Option<Attempt>,
    /// The phase the status shows, as the decision step decided it (`None`
    /// in a store written before the step decided phases: the stored
    /// status says it until the next decision).
    #[serde(default)]
    pub phase: Option<Phase>,
    /// What went wrong, for the status (`None`: nothing).
    #[serde(default)]
    pub error: Option<String>,
    /// The commit fetched last (the status's `target_revision`).
    #[serde(default)]
    pub target: Option<String>,
    /// The source could not be fetched: why (the status's `source`).
    #[serde(default)]
    pub unreachable: Option<String>,
    /// This gateway's wave under the last prepared revision's `[rollout]`.
    #[serde(default)]
    pub wave: Option<String>,
    /// The commit last taken from a stick (SPEC §9), until the source's
    /// branch reaches it: a tip that does not descend from it is not
    /// applied.
    #[serde(default)]
    pub imported: Option<String>,
    /// The file it came in (for the history of an apply that waited).
    #[serde(default)]
    pub imported_from: Option<String>,
    /// The source's tip is behind (or beside) the imported commit: why (the
    /// status's `source` says `behind`).
    #[serde(default)]
    pub behind: Option<String>,
}

/// The phases of SPEC §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Synced,
    Progressing,
    Waiting,
    Held,
    Degraded,
    RolledBack,
    Failed,
    Suspended,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Synced => "synced",
            Phase::Progressing => "progressing",
            Phase::Waiting => "waiting",
            Phase::Held => "held",
            Phase::Degraded => "degraded",
            Phase::RolledBack => "rolled_back",
            Phase::Failed => "failed",
            Phase::Suspended => "suspended",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Phase {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One revision's apply, as far as the agent's deaths during it go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub commit: String,
    /// Deaths of the agent during this revision's apply or health window.
    pub deaths: u32,
    /// How the last one happened, where systemd said (`ExecStopPost=`).
    pub last_death: Option<String>,
    /// The apply or its health window is under way (false: stopped cleanly,
    /// or a death was counted; the revision may be tried again).
    pub running: bool,
}

/// The resources summary of SPEC §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    pub total: usize,
    pub ready: usize,
    pub failed: usize,
}

/// The phases a status may be in (SPEC §4).
pub const PHASES: &[&str] =
    &["synced", "progressing", "waiting", "held", "degraded", "rolled_back", "failed", "suspended"];

/// The gateway's status, as `tend status` and MQTT show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub device_id: String,
    pub fleet: String,
    pub agent_version: String,
    pub phase: Phase,
    pub revision: Option<String>,
    pub target_revision: Option<String>,
    pub last_good_revision: Option<String>,
    pub source: String,
    pub last_sync: Option<String>,
    pub error: Option<String>,
    pub resources: Resources,
    /// The gateway's wave, when the revision's `[rollout]` has waves (SPEC §7).
    #[serde(default)]
    pub wave: Option<String>,
    /// When the revision waited for may be applied, if known (RFC 3339).
    #[serde(default)]
    pub due_at: Option<String>,
    /// `wave`, `window`, `lock` or `fleet` while waiting or held; else null.
    #[serde(default)]
    pub waiting_for: Option<String>,
    /// What it waits for, for people: the wave, the windows, the locks held
    /// and since when, the failing gateways.
    #[serde(default)]
    pub waiting_detail: Option<String>,
    /// What this gateway is: OS, kernel, board, runtime (SPEC §4); null in
    /// a status stored before tend reported it. A JSON value, not a typed
    /// struct: serde's code for one more struct in the status, instantiated
    /// for every way the status is read and written, cost the aarch64
    /// binary more than the rest of the inventory (see `inventory::fill`).
    #[serde(default)]
    pub inventory: serde_json::Value,
}

/// The local store, in our own types.
pub trait Store {
    /// Keep `data` under its hash (a no-op if it is already there).
    fn put_blob(&self, hash: &ContentHash, data: &[u8]) -> Result<(), StoreError>;
    fn get_blob(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StoreError>;
    fn has_blob(&self, hash: &ContentHash) -> Result<bool, StoreError>;
    /// Where the content `hash` is kept, for messages.
    fn blob_path(&self, hash: &ContentHash) -> String;
    /// Add or replace a revision record (keyed by its `seq`).
    fn put_revision(&self, rec: &RevisionRecord) -> Result<(), StoreError>;
    /// All revisions, newest first.
    fn revisions(&self) -> Result<Vec<RevisionRecord>, StoreError>;
    /// The newest revision, without reading the others.
    fn latest_revision(&self) -> Result<Option<RevisionRecord>, StoreError>;
    fn next_seq(&self) -> Result<u64, StoreError>;
    fn inventory(&self) -> Result<Inventory, StoreError>;
    fn set_inventory(&self, inv: &Inventory) -> Result<(), StoreError>;
    fn status(&self) -> Result<Option<Status>, StoreError>;
    fn set_status(&self, status: &Status) -> Result<(), StoreError>;
    /// One revision by its sequence number.
    fn revision(&self, seq: u64) -> Result<Option<RevisionRecord>, StoreError>;
    fn pointers(&self) -> Result<Pointers, StoreError>;
    fn set_pointers(&self, p: &Pointers) -> Result<(), StoreError>;
    /// The pointers and the status together, in one atomic write: a step of
    /// the cycle and what the status says of it are never seen apart.
    fn set_pointers_and_status(&self, p: &Pointers, s: &Status) -> Result<(), StoreError>;
    /// Drop revisions beyond the newest `keep` (never the current or last-good
    /// one) and blobs nothing refers to.
    fn gc(&self, keep: usize) -> Result<GcReport, StoreError>;
    /// Make everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Append an event to the outbox with the next per-device sequence number
    /// (increasing across restarts); when the outbox holds `limit` events the
    /// oldest is dropped and counted. Returns the event's sequence number.
    fn push_event(&self, event: &mut serde_json::Value, limit: usize) -> Result<u64, StoreError>;
    /// Up to `max` queued events with a sequence number greater than `after`, oldest first.
    fn events_after(&self, after: u64, max: usize) -> Result<Vec<(u64, serde_json::Value)>, StoreError>;
    /// Remove an event the broker acknowledged.
    fn remove_event(&self, seq: u64) -> Result<(), StoreError>;
    /// Events dropped because the outbox was full, since the store was created.
    fn dropped_events(&self) -> Result<u64, StoreError>;
    /// Events waiting in the outbox.
    fn queued_events(&self) -> u64;
    /// The files of the revision applied now as last verified (see
    /// `sync::enforce_current`); cleared before anything is applied.
    fn verified(&self) -> Result<Option<Verified>, StoreError>;
    fn set_verified(&self, v: Option<&Verified>) -> Result<(), StoreError>;
}

/// A fingerprint of the files of revision `seq`, taken at `at` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub seq: u64,
    pub commit: String,
    pub at: u64,
    pub fingerprint: Fingerprint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcReport {
    pub revisions_removed: usize,
    pub blobs_removed: usize,
}

/// The blobs a set of revisions and an inventory still need.
pub(crate) fn referenced_blobs<'a>(
    revisions: impl IntoIterator<Item = &'a RevisionRecord>,
    inv: &Inventory,
) -> BTreeSet<ContentHash> {
    let mut keep = BTreeSet::new();
    for r in revisions {
        // A secret is kept as its ciphertext, under the ciphertext's hash.
        keep.extend(r.desired.files.values().map(|f| f.sealed.unwrap_or(f.hash)));
        keep.extend(r.desired.manifests.values().map(|m| m.hash));
    }
    keep.extend(inv.files.values().filter_map(|o| o.original.as_ref().map(|x| x.hash)));
    keep
}

/// Encode a value with its schema version.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Versioned<'a, T> {
        v: u32,
        data: &'a T,
    }
    serde_json::to_vec(&Versioned { v: SCHEMA_VERSION, data: value }).expect("store values serialise")
}

/// Decode a value, refusing a schema version this agent does not know.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    #[derive(Deserialize)]
    struct Versioned<T> {
        v: u32,
        data: T,
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        v: u32,
    }
    let corrupt = |reason: String| StoreError::Corrupt { key: key.to_owned(), reason };
    let head: VersionOnly = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if head.v != SCHEMA_VERSION {
        return Err(corrupt(format!(
            "schema version {} (this tend reads version {SCHEMA_VERSION}; was the store written by a newer tend?)",
            head.v
        )));
    }
    let full: Versioned<T> = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    debug_assert_eq!(full.v, SCHEMA_VERSION);
    Ok(full.data)
}

/// A manifest file tend wrote, and the objects it declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedManifest {
    pub hash: ContentHash,
    pub objects: Vec<crate::bundle::manifest::ObjectRef>,
}

/// The files of a revision as tend last verified them: a poll that finds
/// them all unchanged has nothing to repair and reads nothing else
/// (`reconcile::files::FileRoot::fingerprint` and `unchanged`).
///
/// It lives from poll to poll, so it is compact: the paths (relative to the
/// root) in one string, the stats in one vector. One small allocation per
/// file, made during a full check among its large transient ones, would pin a
/// heap page each long after the check (the soak of `benches/footprint.rs`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// The files' paths, then the directories', each ended by a NUL.
    pub(crate) paths: String,
    pub(crate) files: Vec<Stat>,
    /// The directories' inodes.
    pub(crate) dirs: Vec<u64>,
}
