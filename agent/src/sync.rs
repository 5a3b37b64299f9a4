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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::bundle::{self, BundleError, Desired, Limits, Policy, RelPath};
use crate::config::Config;
use crate::cycle::{self, Effect, ErrorKind, Event, Phase};
use crate::hash::ContentHash;
use crate::health::{self, Health};
use crate::reconcile::containers::{self, ContainerOp, DockerRuntime, Runtime, RuntimeError};
use crate::reconcile::files::{self, ApplyReport, FileError, FileRoot, ProcessRunner, Runner};
use crate::reconcile::k3s::{self, ManifestOp};
use crate::reconcile::plan::{Live, Op, Plan, plan};
use crate::report::{Events, Kind};
use crate::rollout::gate;
use crate::secrets::AgeKeys;
use crate::source::{AllowedSigners, Fetched, GitSource, SourceError};
use crate::store::{
    Inventory, Outcome, Pointers, Resources, RevRef, RevisionRecord, SledStore, Status, Store, StoreError, Verified,
};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a sync did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// The source is unreachable and the revision applied now could not be
    /// enforced from the store either.
    #[error("source: {source}; and the revision applied now could not be enforced: {repair}")]
    Offline { source: SourceError, repair: Box<SyncError> },
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
            SyncError::Source(e) | SyncError::Offline { source: e, .. } => e.is_transient(),
            SyncError::Apply { error: FileError::Io { .. }, .. } => true,
            SyncError::Container { error, .. } => error.is_transient(),
            SyncError::K3s { .. } => true,
            SyncError::Store(_) => true,
            SyncError::Trust(_) => true,
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
}

/// One gateway's agent: its config, store, source and destination tree.
pub struct Agent {
    pub cfg: Config,
    /// Raises events into the store's outbox (published by the reporter).
    pub events: Events,
    pub store: SledStore,
    pub source: GitSource,
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
}

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

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The first 12 hex digits of a commit.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

impl Agent {
    /// Open the store under `state_dir` (one process at a time).
    pub fn open(cfg: Config) -> Result<Agent, StoreError> {
        let store = SledStore::open(&cfg.state_dir.join("store"), &cfg.state_dir.join("objects"))?;
        Ok(Agent {
            events: Events::new(&cfg.device_id, &cfg.fleet, cfg.mqtt.url.is_some()),
            source: GitSource::new(&cfg),
            root: FileRoot::new(cfg.files.root.clone()),
            runner: Box::new(ProcessRunner { timeout: Duration::from_secs(300) }),
            limits: Limits::default(),
            runtime: std::sync::OnceLock::new(),
            verified: std::sync::Mutex::new(None),
            pending_last_sync: std::sync::Mutex::new(None),
            counters: Default::default(),
            breaker: None,
            store,
            cfg,
        })
    }

    /// Everything besides the commit that shapes the rendered bundle.
    pub fn render_key(&self) -> String {
        let c = &self.cfg;
        // Trust settings too: a new allowed-signers file re-verifies, a new
        // key re-decrypts, hooks switched off re-checks the bundle.
        let signers = c.source.allowed_signers.as_ref().map(|p| match std::fs::read(p) {
            Ok(b) => ContentHash::of(&b).short(),
            Err(_) => "unreadable".into(),
        });
        let text = format!(
            "{}\0{}\0{:?}\0{}\0{:?}\0{:?}\0{:?}\0{:?}\0{}",
            c.device_id,
            c.fleet,
            c.labels,
            c.source.path,
            c.files.allow,
            self.limits,
            signers,
            c.files.age_identity,
            c.files.allow_hooks
        );
        ContentHash::of(text.as_bytes()).short()
    }

    fn bundle_path(&self) -> RelPath {
        RelPath::parse(&self.cfg.source.path).unwrap_or_default()
    }

    /// Render the bundle of `commit` from the fetched repository.
    pub fn render_commit(&self, commit: &str) -> Result<bundle::Rendered, SyncError> {
        self.verify_signature(commit)?;
        let tree = self.source.tree(commit)?;
        let identity = self.cfg.identity();
        let policy = Policy::from_agent_config(&self.cfg);
        let keys = self.age_keys()?;
        let secrets = keys.as_ref().map_or(bundle::Secrets::Missing, bundle::Secrets::Keys);
        let ctx = bundle::Context { identity: &identity, policy: &policy, limits: &self.limits, secrets };
        let rendered = bundle::render(&tree, &self.bundle_path(), &ctx)
            .map_err(|error| SyncError::Bundle { commit: commit.to_owned(), error })?;
        for w in &rendered.warnings {
            tracing::warn!("{w}");
        }
        if rendered.desired.is_empty() && !self.cfg.apply.allow_empty {
            return Err(SyncError::Bundle {
                commit: commit.to_owned(),
                error: BundleError::new(
                    &self.cfg.source.path,
                    "the bundle declares nothing; refusing to prune everything (set [apply].allow_empty = true to allow it)",
                ),
            });
        }
        Ok(rendered)
    }

    /// SPEC §3 step 2: with `allowed_signers` set, `commit` must carry a valid
    /// SSH signature by a listed key, or nothing of it is applied.
    pub fn verify_signature(&self, commit: &str) -> Result<(), SyncError> {
        let Some(path) = &self.cfg.source.allowed_signers else { return Ok(()) };
        let signers = AllowedSigners::load(path).map_err(SyncError::Trust)?;
        let raw = self.source.commit_object(commit)?;
        let signer =
            signers.verify_commit(&raw).map_err(|reason| SyncError::Untrusted { commit: commit.to_owned(), reason })?;
        tracing::info!(signer = %signer, "commit signature verified");
        Ok(())
    }

    /// The gateway's age keys, when `[files].age_identity` is set.
    fn age_keys(&self) -> Result<Option<AgeKeys>, SyncError> {
        match &self.cfg.files.age_identity {
            Some(path) => AgeKeys::load(path).map(Some).map_err(SyncError::Trust),
            None => Ok(None),
        }
    }

    /// The desired state of `commit`: from the store when this commit was
    /// applied before with the same local identity, else rendered.
    pub fn prepare(&self, commit: &str) -> Result<Prepared, SyncError> {
        let render_key = self.render_key();
        let ptr = self.store.pointers()?;
        for rr in [ptr.current, ptr.last_good].into_iter().flatten() {
            if rr.commit == commit
                && rr.render_key == render_key
                && let Some(r) = self.store.revision(rr.seq)?
                // A content missing from a damaged store is rendered again.
                && crate::store::referenced_blobs([&r], &Default::default())
                    .iter()
                    .all(|h| self.store.has_blob(h).unwrap_or(false))
            {
                return Ok(Prepared {
                    commit: commit.into(),
                    render_key,
                    desired: r.desired,
                    blobs: HashMap::new(),
                    rendered: false,
                });
            }
        }
        let r = self.render_commit(commit)?;
        // Verify owners and groups now, so a bundle naming an unknown user is
        // rejected before anything is written.
        files::targets(&r.desired).map_err(|error| SyncError::Bundle { commit: commit.into(), error })?;
        Ok(Prepared { commit: commit.into(), render_key, desired: r.desired, blobs: r.blobs, rendered: true })
    }

    /// The container runtime: `[containers].socket`, or the first of Podman's and
    /// Docker's usual sockets.
    pub fn runtime(&self, commit: &str) -> Result<Arc<dyn Runtime>, SyncError> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt.clone());
        }
        let socket = self.cfg.containers.socket.clone().or_else(containers::default_socket).ok_or_else(|| {
            SyncError::Container {
                commit: commit.to_owned(),
                error: RuntimeError::Unavailable {
                    socket: "/run/podman/podman.sock or /var/run/docker.sock".into(),
                    reason: "no container runtime socket found; set [containers].socket".into(),
                },
            }
        })?;
        let rt: Arc<dyn Runtime> = Arc::new(DockerRuntime::new(&socket));
        Ok(self.runtime.get_or_init(|| rt).clone())
    }

    /// Plan the containers: pure diff after one labelled list call; an
    /// unlabelled container holding a declared name is a conflict.
    fn plan_containers(
        &self,
        commit: &str,
        desired: &Desired,
        inv: &Inventory,
        prune: bool,
    ) -> Result<Vec<ContainerOp>, SyncError> {
        if desired.containers.is_empty() && inv.containers.is_empty() {
            return Ok(Vec::new());
        }
        let err = |error| SyncError::Container { commit: commit.to_owned(), error };
        let rt = self.runtime(commit)?;
        let live = rt.list_managed().map_err(err)?;
        for name in desired.containers.keys() {
            if !live.iter().any(|c| &c.name == name)
                && let Some(other) = rt.find_by_name(name).map_err(err)?
                && !other.managed
            {
                return Err(err(RuntimeError::Conflict { name: name.clone() }));
            }
        }
        Ok(containers::plan(&desired.containers, &live, prune))
    }

    /// Plan the K3s manifests (reads only tend's files in the directory).
    fn plan_manifests(
        &self,
        commit: &str,
        desired: &Desired,
        inv: &Inventory,
        prune: bool,
    ) -> Result<Vec<k3s::ManifestOp>, SyncError> {
        if desired.manifests.is_empty() && inv.manifests.is_empty() {
            return Ok(Vec::new());
        }
        let dir = &self.cfg.k3s.manifests_dir;
        let files = desired.manifests.keys().map(|r| k3s::file_name(r)).chain(inv.manifests.keys().cloned());
        let live = k3s::observe(dir, files);
        let ops = k3s::plan(&desired.manifests, &live, &inv.manifests, prune);
        // A new file must not share its Addon with a file tend did not write.
        if ops.iter().any(|op| matches!(op, ManifestOp::Write { create: true, .. })) {
            let ours = desired.manifests.keys().map(|r| k3s::file_name(r)).collect();
            let blocked = k3s::addon_collisions(dir, &ours);
            if !blocked.is_empty() {
                return Err(SyncError::Blocked { commit: commit.to_owned(), blocked });
            }
        }
        Ok(ops)
    }

    /// The plan that takes the gateway to `desired`: files, containers and
    /// manifests, against the inventory `inv` (read once per sync).
    pub fn plan(&self, commit: &str, desired: &Desired, inv: &Inventory, prune: bool) -> Result<Plan, SyncError> {
        let targets =
            files::targets(desired).map_err(|error| SyncError::Bundle { commit: commit.to_owned(), error })?;
        let paths: BTreeSet<&RelPath> = targets.keys().chain(inv.files.keys()).collect();
        let live = self
            .root
            .observe(paths.iter().copied(), inv)
            .map_err(|error| SyncError::Apply { commit: commit.to_owned(), error })?;
        let mut plan = plan(&targets, &live, inv, prune);
        if plan.blocked.is_empty() {
            plan.containers = self.plan_containers(commit, desired, inv, prune)?;
            plan.manifests = self.plan_manifests(commit, desired, inv, prune)?;
        }
        Ok(plan)
    }

    /// Make the gateway match `desired` (contents from `blobs` or the store).
    pub fn enforce(
        &self,
        commit: &str,
        desired: &Desired,
        blobs: &HashMap<ContentHash, Vec<u8>>,
        prune: bool,
    ) -> Result<(Plan, ApplyReport), SyncError> {
        // Whatever this changes, the fingerprint no longer stands for it.
        *self.verified.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.store.set_verified(None)?;
        let mut inv = self.store.inventory()?;
        if inv.dirty {
            let paths: BTreeSet<&RelPath> = desired.files.keys().chain(inv.files.keys()).collect();
            self.root.clean_temporaries(paths);
        }
        // Containers are planned, and their images pulled, before anything
        // changes: an unreachable runtime or a failed pull leaves files alone.
        let plan = self.plan(commit, desired, &inv, prune)?;
        if !plan.blocked.is_empty() {
            let blocked =
                plan.blocked.iter().map(|b| format!("{}: {}", b.path.to_absolute_string(), b.reason)).collect();
            return Err(SyncError::Blocked { commit: commit.to_owned(), blocked });
        }
        if !plan.containers.is_empty() {
            let rt = self.runtime(commit)?;
            rt.ping().map_err(|error| SyncError::Container { commit: commit.to_owned(), error })?;
            containers::ensure_images(rt.as_ref(), &desired.containers, &plan.containers)
                .map_err(|error| SyncError::Container { commit: commit.to_owned(), error })?;
        }
        for (h, data) in blobs {
            self.store.put_blob(h, data)?;
        }
        if plan.is_empty() {
            return Ok((plan, ApplyReport::default()));
        }
        // Every content a write or a restore needs is there, or nothing is
        // written (a secret is kept as its ciphertext).
        let sealed: HashMap<ContentHash, ContentHash> =
            desired.files.values().filter_map(|f| f.sealed.map(|c| (f.hash, c))).collect();
        let needed = plan
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Write { target, .. } => Some(sealed.get(&target.hash).copied().unwrap_or(target.hash)),
                Op::Delete { restore: Some(o), .. } => Some(o.hash),
                _ => None,
            })
            .chain(plan.manifests.iter().filter_map(|m| match m {
                ManifestOp::Write { hash, .. } => Some(*hash),
                ManifestOp::Delete { .. } => None,
            }));
        let mut missing = Vec::new();
        for h in needed {
            if !blobs.contains_key(&h) && !self.store.has_blob(&h)? {
                missing.push(self.store.blob_path(&h));
            }
        }
        if !missing.is_empty() {
            return Err(SyncError::MissingContent { commit: commit.to_owned(), paths: missing });
        }
        for op in &plan.ops {
            if op.changes_disk() {
                tracing::info!("{op}");
            }
        }
        for op in &plan.containers {
            tracing::info!("{op}");
        }
        for op in &plan.manifests {
            if let ManifestOp::Write { .. } = op {
                tracing::info!("{op}");
            } else if let Some(first) = op.lines().first() {
                // The pruned objects are logged as kubectl deletes them.
                tracing::info!("{first}");
            }
        }
        let stored = |h: &ContentHash| -> Result<Vec<u8>, String> {
            match blobs.get(h) {
                Some(b) => Ok(b.clone()),
                None => self
                    .store
                    .get_blob(h)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| {
                        format!(
                            "{}: missing from the store (content {}); the store is damaged: with the source reachable, `tend sync --retry` renders the revision from Git again",
                            self.store.blob_path(h),
                            h.short()
                        )
                    }),
            }
        };
        // Secrets are stored as ciphertext and decrypted only on the way to
        // their destination.
        let keys = if sealed.is_empty() { None } else { self.age_keys()? };
        let content = |h: &ContentHash| -> Result<Vec<u8>, String> {
            let Some(cipher) = sealed.get(h) else { return stored(h) };
            let keys = keys.as_ref().ok_or("secrets need [files].age_identity")?;
            let plain = keys.decrypt(&stored(cipher)?, self.limits.max_file_size).map_err(|e| format!("secret {e}"))?;
            if ContentHash::of(&plain) != *h {
                return Err(format!("secret {} decrypts to other content than when it was rendered", cipher.short()));
            }
            Ok(plain)
        };
        let report = if plan.ops.is_empty() {
            ApplyReport::default()
        } else {
            self.root
                .apply(&plan, &content, &self.store, &mut inv, self.runner.as_ref())
                .map_err(|error| SyncError::Apply { commit: commit.to_owned(), error })?
        };
        if !plan.containers.is_empty() {
            self.apply_containers(commit, desired, &plan.containers, &mut inv)?;
        }
        if !plan.manifests.is_empty() {
            let kubectl = k3s::Kubectl { command: &self.cfg.k3s.kubectl, timeout: self.cfg.k3s.timeout };
            let result =
                k3s::apply(&self.cfg.k3s.manifests_dir, &plan.manifests, &content, &kubectl, &mut inv.manifests);
            self.store.set_inventory(&inv)?;
            self.store.flush()?;
            result.map_err(|error| SyncError::K3s { commit: commit.to_owned(), error })?;
        }
        Ok((plan, report))
    }

    fn apply_containers(
        &self,
        commit: &str,
        desired: &Desired,
        ops: &[ContainerOp],
        inv: &mut Inventory,
    ) -> Result<(), SyncError> {
        let rt = self.runtime(commit)?;
        let err = |error| SyncError::Container { commit: commit.to_owned(), error };
        let mut result = Ok(());
        for op in ops {
            let r = match op {
                ContainerOp::Create { name } => {
                    inv.containers.insert(name.clone());
                    rt.create_and_start(name, &desired.containers[name], commit).map(|_| ())
                }
                ContainerOp::Replace { name, old_id } => rt
                    .remove(old_id)
                    .and_then(|_| rt.create_and_start(name, &desired.containers[name], commit))
                    .map(|_| ()),
                ContainerOp::Start { id, .. } => rt.start(id),
                ContainerOp::Remove { name, id } => rt.remove(id).map(|_| {
                    inv.containers.remove(name);
                }),
            };
            if let Err(e) = r {
                result = Err(err(e));
                break;
            }
        }
        self.store.set_inventory(inv)?;
        self.store.flush()?;
        result
    }

    /// Add a revision record; returns its sequence number.
    pub fn record(&self, p: &Prepared, outcome: Outcome, error: Option<String>) -> Result<u64, StoreError> {
        // A failing commit polled again does not flood the history: the record
        // of the same failure is updated in place.
        let latest = self.store.latest_revision()?;
        let seq = match latest {
            Some(l)
                if outcome == Outcome::Failed
                    && l.outcome == Outcome::Failed
                    && l.commit == p.commit
                    && l.render_key == p.render_key =>
            {
                l.seq
            }
            _ => self.store.next_seq()?,
        };
        self.store.put_revision(&RevisionRecord {
            seq,
            commit: p.commit.clone(),
            bundle: self.cfg.source.path.clone(),
            render_key: p.render_key.clone(),
            applied_at: now_rfc3339(),
            outcome,
            error,
            desired: p.desired.clone(),
        })?;
        Ok(seq)
    }

    /// Change the outcome of a recorded revision.
    pub fn set_outcome(&self, seq: u64, outcome: Outcome, error: Option<String>) -> Result<(), StoreError> {
        if let Some(mut r) = self.store.revision(seq)? {
            r.outcome = outcome;
            r.error = error;
            self.store.put_revision(&r)?;
        }
        Ok(())
    }

    /// Tell the cycle's decision step what happened; its pointers are stored
    /// (one write) and its effects returned for the driver to perform.
    pub fn decide(&self, event: &Event) -> Result<(Pointers, Vec<Effect>), StoreError> {
        self.decide_at(event, jiff::Timestamp::now())
    }

    pub fn decide_at(&self, event: &Event, now: jiff::Timestamp) -> Result<(Pointers, Vec<Effect>), StoreError> {
        let before = self.store.pointers()?;
        let rules = cycle::Rules { retry_limit: self.cfg.apply.retry.limit };
        let (after, effects) = cycle::step(&before, event, now, rules);
        if after != before {
            self.store.set_pointers(&after)?;
        }
        Ok((after, effects))
    }

    pub fn update_pointers(&self, f: impl FnOnce(&mut Pointers)) -> Result<Pointers, StoreError> {
        let mut p = self.store.pointers()?;
        f(&mut p);
        self.store.set_pointers(&p)?;
        Ok(p)
    }

    /// The summary of a poll with nothing to repair, when the fingerprint of
    /// the revision applied now says so; `None`: check in full.
    fn verified_unchanged(&self) -> Result<Option<SyncSummary>, StoreError> {
        let mut guard = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = self.store.verified()?;
        }
        let Some(v) = guard.as_ref() else { return Ok(None) };
        let current = self.store.pointers()?.current.map(|c| c.seq);
        let age = Duration::from_secs(unix_now().saturating_sub(v.at));
        if current != Some(v.seq) || age > FULL_CHECK_EVERY || !self.root.unchanged(&v.fingerprint) {
            return Ok(None);
        }
        Ok(Some(SyncSummary {
            commit: Some(v.commit.clone()),
            action: "unchanged".into(),
            files: v.fingerprint.len(),
            ..Default::default()
        }))
    }

    /// The revision applied now, if any.
    pub fn current(&self) -> Result<Option<RevisionRecord>, StoreError> {
        match self.store.pointers()?.current {
            Some(r) => self.store.revision(r.seq),
            None => Ok(None),
        }
    }

    pub fn last_good(&self) -> Result<Option<RevisionRecord>, StoreError> {
        match self.store.pointers()?.last_good {
            Some(r) => self.store.revision(r.seq),
            None => Ok(None),
        }
    }

    /// The status as stored, or the initial one.
    pub fn status(&self) -> Result<Status, StoreError> {
        let mut s = self.store.status()?.unwrap_or_else(|| self.initial_status());
        if let Some(t) = self.pending_last_sync.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            s.last_sync = Some(t);
        }
        Ok(s)
    }

    /// Write a `last_sync` kept in memory (see [`Agent::set_status`]) to the
    /// store; the daemon calls it before it flushes.
    pub fn persist_status(&self) -> Result<(), StoreError> {
        let pending = self.pending_last_sync.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = pending {
            let mut s = self.store.status()?.unwrap_or_else(|| self.initial_status());
            s.last_sync = Some(t);
            self.store.set_status(&s)?;
        }
        Ok(())
    }

    fn initial_status(&self) -> Status {
        Status {
            device_id: self.cfg.device_id.clone(),
            fleet: self.cfg.fleet.clone(),
            agent_version: AGENT_VERSION.into(),
            phase: "progressing".into(),
            revision: None,
            target_revision: None,
            last_good_revision: None,
            source: "ok".into(),
            last_sync: None,
            error: None,
            resources: Resources::default(),
            wave: None,
            due_at: None,
            waiting_for: None,
            waiting_detail: None,
        }
    }

    /// Update the stored status; revision pointers are filled in from the store.
    pub fn set_status(&self, f: impl FnOnce(&mut Status)) -> Result<Status, StoreError> {
        let mut s = self.status()?;
        s.device_id = self.cfg.device_id.clone();
        s.fleet = self.cfg.fleet.clone();
        s.agent_version = AGENT_VERSION.into();
        let ptr = self.store.pointers()?;
        s.revision = ptr.current.map(|r| r.commit);
        s.last_good_revision = ptr.last_good.map(|r| r.commit);
        f(&mut s);
        // An idle poll changes nothing but the time of the last sync: that
        // is kept in memory (and persisted with the next change or flush),
        // so an idle gateway writes nothing to its flash.
        let mut stored = self.store.status()?;
        if let Some(st) = stored.as_mut() {
            st.last_sync.clone_from(&s.last_sync);
        }
        if stored.as_ref() == Some(&s) {
            *self.pending_last_sync.lock().unwrap_or_else(|e| e.into_inner()) = s.last_sync.clone();
        } else {
            self.store.set_status(&s)?;
            *self.pending_last_sync.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        Ok(s)
    }

    /// Desired files of the current revision that are as desired on disk now.
    pub fn resources(&self) -> Resources {
        let count = || -> Result<Resources, SyncError> {
            let Some(rev) = self.current()? else { return Ok(Resources::default()) };
            let targets = files::targets(&rev.desired)
                .map_err(|error| SyncError::Bundle { commit: rev.commit.clone(), error })?;
            let inv = self.store.inventory()?;
            let live = self
                .root
                .observe(targets.keys(), &inv)
                .map_err(|error| SyncError::Apply { commit: rev.commit.clone(), error })?;
            let ready = targets
                .iter()
                .filter(|(p, t)| {
                    matches!(live.get(*p), Some(Live::File { hash, mode, .. }) if *hash == t.hash && *mode == t.mode)
                })
                .count();
            Ok(Resources { total: targets.len(), ready, failed: targets.len() - ready })
        };
        count().unwrap_or_default()
    }

    /// History, newest first.
    pub fn history(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        self.store.revisions()
    }

    /// History as JSON entries, with the current, last-good and bad marks.
    pub fn history_json(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let ptr = self.store.pointers()?;
        Ok(self
            .history()?
            .iter()
            .map(|r| {
                serde_json::json!({
                    "seq": r.seq,
                    "revision": r.commit,
                    "bundle": r.bundle,
                    "applied_at": r.applied_at,
                    "outcome": r.outcome.as_str(),
                    "bad": ptr.quarantine.contains_key(&r.commit),
                    "current": ptr.current.as_ref().is_some_and(|c| c.seq == r.seq),
                    "last_good": ptr.last_good.as_ref().is_some_and(|c| c.seq == r.seq),
                    "error": r.error,
                    "files": r.desired.files.len(),
                    "checks": r.desired.checks.len(),
                })
            })
            .collect())
    }

    /// Raise an event (blocking: it is written to the store first). A failure to
    /// queue it is logged, never fatal to the sync.
    pub fn event(&self, kind: Kind, fields: serde_json::Value) {
        self.counters.event(kind.as_str());
        if let Err(e) = self.events.raise(&self.store, kind, fields) {
            tracing::warn!(error = %e, kind = kind.as_str(), "could not queue an event");
        }
    }

    /// Record whether the source answered, raising `source_unreachable` or
    /// `source_restored` when that changes.
    fn note_source(&self, reachable: bool, error: Option<&str>) {
        let was = self.status().map(|s| s.source).unwrap_or_default();
        match (was.as_str(), reachable) {
            ("unreachable", true) => self.event(Kind::SourceRestored, serde_json::json!({})),
            (w, false) if w != "unreachable" => {
                self.event(Kind::SourceUnreachable, serde_json::json!({ "error": error }))
            }
            _ => {}
        }
    }

    /// Trim history per `[apply].history`, then make the store durable (called
    /// when a revision's fate is decided).
    fn gc(&self) -> Result<(), StoreError> {
        let gc = self.store.gc(self.cfg.apply.history)?;
        if gc.revisions_removed + gc.blobs_removed > 0 {
            tracing::debug!(revisions = gc.revisions_removed, blobs = gc.blobs_removed, "history trimmed");
        }
        self.store.flush()
    }
}

/// Run a blocking step of the cycle on the blocking pool.
async fn blocking<T: Send + 'static>(agent: &Arc<Agent>, f: impl FnOnce(&Agent) -> T + Send + 'static) -> T {
    let a = agent.clone();
    match tokio::task::spawn_blocking(move || f(&a)).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Re-enforce the revision applied now from the store (self-heal, offline, boot).
/// Returns what was repaired; `None` when no revision was ever applied.
///
/// When every file of the revision is as tend last verified it (a stat each,
/// [`files::Fingerprint`]), there is nothing to repair and neither the
/// revision nor the inventory is read: an idle poll costs a stat per file.
/// Revisions with containers or K3s manifests, whose state is not on disk, are
/// checked in full each time, and so is every revision once an hour.
pub async fn enforce_current(agent: &Arc<Agent>) -> Result<Option<SyncSummary>, SyncError> {
    blocking(agent, |a| {
        if let Some(s) = a.verified_unchanged()? {
            return Ok(Some(s));
        }
        let Some(cur) = a.current()? else { return Ok(None) };
        let (plan, _) = a.enforce(&cur.commit, &cur.desired, &HashMap::new(), true)?;
        if cur.desired.containers.is_empty() && cur.desired.manifests.is_empty() {
            let inv = a.store.inventory()?;
            let v = a.root.fingerprint(cur.desired.files.keys(), &inv).map(|fingerprint| Verified {
                seq: cur.seq,
                commit: cur.commit.clone(),
                at: unix_now(),
                fingerprint,
            });
            // Kept in the store too, so a one-shot `tend sync` has it.
            a.store.set_verified(v.as_ref())?;
            *a.verified.lock().unwrap_or_else(|e| e.into_inner()) = v;
        }
        let mut s = SyncSummary::from_plan(&plan);
        s.commit = Some(cur.commit.clone());
        s.set_counts(&cur.desired);
        let changed =
            plan.ops.iter().any(|o| o.changes_disk()) || !plan.containers.is_empty() || !plan.manifests.is_empty();
        s.action = if changed { "repaired" } else { "unchanged" }.into();
        if s.action == "repaired" {
            tracing::info!(revision = short(&cur.commit), "drift repaired");
            a.event(Kind::DriftRepaired, serde_json::json!({ "revision": cur.commit, "operations": s.operations }));
        }
        Ok(Some(s))
    })
    .await
}

/// At start, before any fetch: re-enforce last-known-good from the store. When
/// the agent stopped during a revision's health window, that revision is not
/// last-known-good: the gateway returns to the one that is (the interrupted
/// revision is gated again when the source is reachable).
pub async fn boot(agent: &Arc<Agent>) -> Result<Option<SyncSummary>, SyncError> {
    let interrupted = blocking(agent, |a| -> Result<Option<String>, StoreError> {
        let p = a.store.pointers()?;
        Ok(match (&p.current, p.current_gated) {
            (Some(c), false) => Some(c.commit.clone()),
            _ => None,
        })
    })
    .await?;
    if let Some(commit) = interrupted {
        tracing::info!(revision = short(&commit), "its health window was interrupted: returning to last-known-good");
        blocking(agent, |a| -> Result<(), SyncError> {
            let lkg = a.last_good()?;
            let desired = lkg.as_ref().map(|r| r.desired.clone()).unwrap_or_default();
            let commit = lkg.as_ref().map(|r| r.commit.clone()).unwrap_or_default();
            a.enforce(&commit, &desired, &HashMap::new(), true)?;
            a.update_pointers(|p| {
                p.current = lkg.as_ref().map(RevRef::of);
                p.current_gated = true;
            })?;
            a.store.flush()?;
            Ok(())
        })
        .await?;
    }
    enforce_current(agent).await
}

/// One sync cycle: fetch, then apply the branch's revision if it is new (health
/// gate, rollback on failure), or re-enforce the current one if not.
pub async fn sync(agent: &Arc<Agent>, opts: SyncOptions) -> Result<SyncSummary, SyncError> {
    let started = Instant::now();
    let rollbacks = agent.counters.events_of("rolled_back");
    let r = sync_inner(agent, opts).await;
    if !opts.dry_run {
        // A failed sync that rolled back raised a `rolled_back` event,
        // whatever failed (apply, health, a runtime).
        let rolled_back = agent.counters.events_of("rolled_back") > rollbacks;
        agent.counters.sync_done(result_of(&r, rolled_back), started.elapsed());
    }
    r
}

/// How a sync or rollback ended, for `tend_syncs_total`.
fn result_of(r: &Result<SyncSummary, SyncError>, rolled_back: bool) -> &'static str {
    match r {
        Ok(s) => match s.action.as_str() {
            "applied" => "applied",
            "repaired" => "repaired",
            "rolled_back" => "rolled_back",
            _ => "unchanged",
        },
        Err(_) if rolled_back => "rolled_back",
        Err(_) => "failed",
    }
}

impl Agent {
    /// Write `[metrics] textfile`, if configured (after a sync or a health
    /// tick; see `report::textfile` for when it is actually rewritten).
    pub fn write_textfile(&self) {
        let Some(path) = &self.cfg.metrics.textfile else { return };
        let status = match self.status() {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "metrics textfile: cannot read the status"),
        };
        let snap = crate::report::textfile::Snapshot {
            status: &status,
            outbox_queued: self.store.queued_events(),
            outbox_dropped: self.store.dropped_events().unwrap_or(0),
            rss_bytes: crate::report::read_own_rss(),
        };
        if let Err(e) = crate::report::textfile::update(path, &self.counters, &snap) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics textfile");
        }
    }
}

async fn sync_inner(agent: &Arc<Agent>, opts: SyncOptions) -> Result<SyncSummary, SyncError> {
    let mut timings = Timings::default();
    let t = Instant::now();
    let fetched: Result<Fetched, SourceError> = blocking(agent, |a| a.source.fetch()).await;
    timings.fetch_ms = ms(t.elapsed());
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            if opts.dry_run {
                return Err(e.into());
            }
            // Offline: keep enforcing what is applied.
            let healed = if opts.no_heal { Ok(None) } else { enforce_current(agent).await };
            let msg = format!("source: {e}");
            let heal_err = healed.as_ref().err().map(ToString::to_string);
            let shown = e.to_string();
            blocking(agent, move |a| {
                a.note_source(false, Some(&shown));
                let resources = a.resources();
                a.set_status(|s| {
                    s.source = "unreachable".into();
                    s.last_sync = Some(now_rfc3339());
                    s.error = Some(match heal_err {
                        Some(h) => format!("{msg}; {h}"),
                        None => msg,
                    });
                    s.resources = resources;
                    if s.revision.is_none() {
                        s.phase = "failed".into();
                    }
                })
            })
            .await?;
            return Err(match healed {
                Err(repair) => SyncError::Offline { source: e, repair: Box::new(repair) },
                Ok(_) => e.into(),
            });
        }
    };
    let span = tracing::info_span!("sync", revision = %short(&fetched.commit));
    sync_fetched(agent, opts, fetched, timings).instrument(span).await
}

async fn sync_fetched(
    agent: &Arc<Agent>,
    opts: SyncOptions,
    fetched: Fetched,
    mut timings: Timings,
) -> Result<SyncSummary, SyncError> {
    let commit = fetched.commit.clone();

    // The decision step: quarantine (cleared when the branch moves, honoured
    // otherwise), the same revision (repair), or a new one (prepare).
    let tip = Event::Tip { commit: commit.clone(), render_key: agent.render_key(), retry: opts.retry };
    let (_, effects) = blocking(agent, move |a| {
        a.note_source(true, None);
        a.decide(&tip)
    })
    .await?;
    let refused = effects.iter().find_map(|e| match e {
        Effect::Refuse { reason } => Some(reason.clone()),
        _ => None,
    });
    if let Some(reason) = refused {
        let err = SyncError::Quarantined { commit: commit.clone(), reason };
        if !opts.dry_run {
            let healed = enforce_current(agent).await?;
            let msg = err.to_string();
            let c = commit.clone();
            blocking(agent, move |a| {
                let resources = a.resources();
                a.set_status(|s| {
                    s.source = "ok".into();
                    s.target_revision = Some(c);
                    s.last_sync = Some(now_rfc3339());
                    s.error = Some(msg);
                    s.resources = resources;
                })
            })
            .await?;
            if let Some(h) = healed {
                tracing::debug!(action = %h.action, "current revision enforced");
            }
        }
        return Err(err);
    }

    // The same revision as applied now, its health decided: repair drift
    // (self-heal) without rendering or reading the revision twice.
    let unchanged = !effects.contains(&Effect::Prepare);
    let healed = if unchanged && !opts.dry_run && !opts.no_heal {
        let t = Instant::now();
        let r = enforce_current(agent).await;
        timings.apply_ms = ms(t.elapsed());
        match r {
            // A damaged store lacks contents the repair needs: the revision
            // is rendered from Git again, below, as if it were new.
            Err(e @ SyncError::MissingContent { .. }) => {
                tracing::warn!(error = %e, "rendering the revision from Git again");
                None
            }
            Err(e) => {
                // The revision applied now cannot be enforced (something in
                // the way, a runtime down): the status says so.
                let msg = e.to_string();
                blocking(agent, move |a| -> Result<(), StoreError> {
                    a.update_pointers(|p| p.heal_failed = true)?;
                    a.set_status(|st| {
                        st.source = "ok".into();
                        st.last_sync = Some(now_rfc3339());
                        st.phase = "degraded".into();
                        st.error = Some(msg);
                    })?;
                    Ok(())
                })
                .await?;
                return Err(e);
            }
            Ok(s) => Some(s.unwrap_or_default()),
        }
    } else {
        None
    };
    if unchanged && !opts.dry_run && (opts.no_heal || healed.is_some()) {
        let mut s = match healed {
            Some(s) => s,
            None => SyncSummary { commit: Some(commit.clone()), action: "unchanged".into(), ..Default::default() },
        };
        s.received_pack = fetched.received_pack;
        s.timings = timings;
        let files = s.files;
        let healed = !opts.no_heal;
        blocking(agent, move |a| -> Result<(), StoreError> {
            // Enforced again after a failed repair: no longer degraded.
            let recovered = healed && a.store.pointers()?.heal_failed;
            if recovered {
                a.update_pointers(|p| p.heal_failed = false)?;
            }
            a.set_status(|st| {
                st.source = "ok".into();
                st.last_sync = Some(now_rfc3339());
                if healed {
                    st.resources = Resources { total: files, ready: files, failed: 0 };
                }
                if recovered || (st.phase != "degraded" && st.phase != "rolled_back") {
                    st.phase = "synced".into();
                    st.error = None;
                }
                st.target_revision = st.revision.clone();
            })?;
            Ok(())
        })
        .await?;
        return Ok(s);
    }

    let t = Instant::now();
    let c = commit.clone();
    let prepared = blocking(agent, move |a| a.prepare(&c)).await;
    timings.render_ms = ms(t.elapsed());
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            if !opts.dry_run {
                reject(agent, &commit, &e).await?;
            }
            return Err(e);
        }
    };

    if opts.dry_run {
        let t = Instant::now();
        let p = prepared.clone();
        let plan = blocking(agent, move |a| -> Result<Plan, SyncError> {
            let inv = a.store.inventory()?;
            a.plan(&p.commit, &p.desired, &inv, a.cfg.apply.prune)
        })
        .await?;
        timings.plan_ms = ms(t.elapsed());
        let mut s = SyncSummary::from_plan(&plan);
        if !plan.blocked.is_empty() {
            let blocked =
                plan.blocked.iter().map(|b| format!("{}: {}", b.path.to_absolute_string(), b.reason)).collect();
            return Err(SyncError::Blocked { commit, blocked });
        }
        s.commit = Some(commit);
        s.action = "planned".into();
        s.dry_run = true;
        s.received_pack = fetched.received_pack;
        s.set_counts(&prepared.desired);
        s.timings = timings;
        return Ok(s);
    }

    // Rollout control (SPEC §7): due for this gateway's wave, inside a
    // window, no update lock held?
    let (c, policy, told) = (commit.clone(), prepared.desired.rollout.clone(), opts.now);
    let gated = blocking(agent, move |a| -> Result<Gated, SyncError> {
        let committed_at = a.source.committed_at(&c)?;
        let local = gate::Local {
            fleet: &a.cfg.fleet,
            device_id: &a.cfg.device_id,
            labels: &a.cfg.labels,
            lock_dir: &a.cfg.apply.lock_dir,
            lock_timeout: a.cfg.apply.lock_timeout,
        };
        let now = jiff::Timestamp::now();
        let failing = a.breaker.as_ref().and_then(|b| b.failing(&c));
        // Why the breaker cannot hold anything now, for the status.
        let breaker_off = match (&a.breaker, &failing) {
            _ if policy.as_ref().is_none_or(|p| p.max_failed.is_none()) => None,
            (None, _) => Some("circuit breaker off: no [mqtt] (or a one-shot command)"),
            (Some(_), None) => Some("circuit breaker: the fleet's reports not read yet"),
            _ => None,
        };
        let gate = gate::gather(policy.as_ref(), &local, committed_at, failing, now)
            .map_err(|error| SyncError::Rollout { commit: c.clone(), error })?;
        let wave = gate.wave.as_ref().map(|(w, _)| w.clone());
        let (_, effects) = a.decide_at(&Event::Prepared { commit: c, gate, now: told }, now)?;
        Ok(Gated { wave, breaker_off, effects })
    })
    .await;
    let Gated { wave, breaker_off, effects } = match gated {
        Ok(v) => v,
        Err(e @ SyncError::Rollout { .. }) => {
            reject(agent, &commit, &e).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if let Some((phase, waiting)) = effects.iter().find_map(|e| match e {
        Effect::Wait { phase, waiting } => Some((*phase, waiting.clone())),
        _ => None,
    }) {
        let summary = (fetched.received_pack, timings);
        return wait(agent, &commit, wave, phase, waiting, breaker_off, summary).await;
    }
    let forced = effects.iter().find_map(|e| match e {
        Effect::Apply { forced } => forced.clone(),
        _ => None,
    });
    if let Some(f) = &forced {
        tracing::info!(revision = short(&commit), forced = %f, "applying past the rollout policy");
    }

    // A new revision.
    let c = commit.clone();
    blocking(agent, move |a| {
        a.set_status(|s| {
            s.phase = "progressing".into();
            s.source = "ok".into();
            s.target_revision = Some(c);
            s.error = None;
            s.wave = wave;
            s.waiting_for = None;
            s.due_at = None;
            s.waiting_detail = None;
        })
    })
    .await?;
    let t = Instant::now();
    // The contents go to the apply (and the store) and are dropped there; the
    // rest is shared with the health gate and a rollback, not copied.
    let mut prepared = prepared;
    let blobs = std::mem::take(&mut prepared.blobs);
    let prepared = Arc::new(prepared);
    let p = prepared.clone();
    let applied = blocking(agent, move |a| -> Result<(Plan, ApplyReport, u64), SyncError> {
        let mut started = serde_json::json!({ "revision": p.commit });
        if let Some(f) = forced {
            started["forced"] = f.into();
        }
        a.event(Kind::SyncStarted, started);
        let prune = a.cfg.apply.prune;
        let result = a.enforce(&p.commit, &p.desired, &blobs, prune);
        drop(blobs);
        match result {
            Ok((plan, report)) => {
                let seq = a.record(&p, Outcome::Applied, None)?;
                let current = RevRef { seq, commit: p.commit.clone(), render_key: p.render_key.clone() };
                a.decide(&Event::Applied { current })?;
                let (created, updated, deleted, hooks) = plan.counts();
                a.event(
                    Kind::Applied,
                    serde_json::json!({ "revision": p.commit, "created": created, "updated": updated, "deleted": deleted, "hooks": hooks }),
                );
                a.store.flush()?;
                Ok((plan, report, seq))
            }
            Err(e) => Err(e),
        }
    })
    .await;
    timings.apply_ms = ms(t.elapsed());
    let (plan, _report, seq) = match applied {
        Ok(v) => v,
        // Refused before the first write: nothing to roll back.
        Err(e @ SyncError::Blocked { .. }) => {
            reject(agent, &commit, &e).await?;
            return Err(e);
        }
        Err(e) => return Err(fail_and_roll_back(agent, &prepared, None, e).await),
    };
    let mut summary = SyncSummary::from_plan(&plan);
    summary.commit = Some(commit.clone());
    summary.action = "applied".into();
    summary.received_pack = fetched.received_pack;
    summary.set_counts(&prepared.desired);

    // Health gate.
    let t = Instant::now();
    let probes = probes_for(agent, &commit, &prepared.desired)?;
    let health = if probes.is_empty() {
        Health::default()
    } else {
        tracing::info!(checks = probes.len(), timeout = ?agent.cfg.apply.health_timeout, "waiting for health checks");
        health::window(&probes, agent.cfg.apply.health_timeout).await
    };
    timings.health_ms = ms(t.elapsed());
    summary.checks = checks_json(&health);
    summary.timings = timings;
    if health.healthy() {
        let c = commit.clone();
        blocking(agent, move |a| -> Result<(), StoreError> {
            a.set_outcome(seq, Outcome::Healthy, None)?;
            a.event(Kind::Healthy, serde_json::json!({ "revision": c }));
            a.decide(&Event::Health { healthy: true })?;
            a.gc()?;
            let resources = a.resources();
            a.set_status(|s| {
                s.phase = "synced".into();
                s.target_revision = Some(c);
                s.last_sync = Some(now_rfc3339());
                s.error = None;
                s.resources = resources;
            })?;
            Ok(())
        })
        .await?;
        tracing::info!(revision = short(&commit), "revision healthy");
        Ok(summary)
    } else {
        let failures = health.failures();
        tracing::info!(revision = short(&commit), %failures, "revision unhealthy");
        let e = SyncError::Unhealthy { commit: commit.clone(), failures, after: String::new() };
        Err(fail_and_roll_back(agent, &prepared, Some(seq), e).await)
    }
}

/// What the rollout gate decided for a prepared revision.
struct Gated {
    /// The gateway's wave, if the revision has waves.
    wave: Option<String>,
    /// Why the circuit breaker cannot hold anything now, if it cannot.
    breaker_off: Option<&'static str>,
    effects: Vec<Effect>,
}

/// A prepared revision not applied yet (rollout control): the revision
/// applied now is repaired as usual and the status says what it waits for.
async fn wait(
    agent: &Arc<Agent>,
    commit: &str,
    wave: Option<String>,
    phase: Phase,
    waiting: crate::rollout::Waiting,
    note: Option<&'static str>,
    (received_pack, timings): (bool, Timings),
) -> Result<SyncSummary, SyncError> {
    if let Err(e) = enforce_current(agent).await {
        tracing::warn!(error = %e, "could not re-enforce the current revision");
    }
    let due_at = waiting.due_at.map(|t| t.to_string());
    let reason = waiting.waiting_for.as_str();
    let held = (phase == Phase::Held).then(|| format!("held: revision {} {}", short(commit), waiting.detail));
    let mut detail = match waiting.waiting_for {
        crate::rollout::WaitingFor::Lock => format!("{} held since {}", waiting.detail, waiting.since),
        _ => waiting.detail.clone(),
    };
    if let Some(note) = note {
        detail = format!("{detail}; {note}");
    }
    let (c, d) = (commit.to_owned(), due_at.clone());
    let before = blocking(agent, move |a| -> Result<Status, StoreError> {
        let before = a.status()?;
        let resources = a.resources();
        a.set_status(|s| {
            s.phase = phase.as_str().into();
            s.source = "ok".into();
            s.target_revision = Some(c);
            s.last_sync = Some(now_rfc3339());
            s.error = held;
            s.resources = resources;
            s.wave = wave;
            s.waiting_for = Some(reason.into());
            s.due_at = d;
            s.waiting_detail = Some(detail);
        })?;
        Ok(before)
    })
    .await?;
    if before.waiting_for.as_deref() != Some(reason) || before.target_revision.as_deref() != Some(commit) {
        tracing::info!(revision = short(commit), waiting_for = reason, detail = %waiting.detail, due_at = ?due_at, "{}", phase.as_str());
    }
    Ok(SyncSummary {
        commit: Some(commit.to_owned()),
        action: phase.as_str().into(),
        received_pack,
        timings,
        waiting_for: Some(reason.into()),
        due_at,
        ..Default::default()
    })
}

/// The bundle's checks, and one probe per container.
fn probes_for(agent: &Agent, commit: &str, desired: &Desired) -> Result<Vec<Box<dyn health::Probe>>, SyncError> {
    let mut probes = health::probes_for(&desired.checks);
    for o in k3s::rollouts(&desired.manifests) {
        probes.push(Box::new(health::RolloutProbe::new(o, agent.cfg.k3s.kubectl.clone(), agent.cfg.k3s.timeout)));
    }
    if !desired.containers.is_empty() {
        let rt = agent.runtime(commit)?;
        for (name, spec) in &desired.containers {
            let interval =
                spec.health.as_ref().map_or(Duration::from_secs(1), |h| h.interval.min(Duration::from_secs(2)));
            probes.push(Box::new(health::ContainerProbe {
                name: format!("container {name}"),
                container: name.clone(),
                command: spec.health.as_ref().map(|h| h.command.clone()),
                runtime: rt.clone(),
                interval,
            }));
        }
    }
    Ok(probes)
}

fn checks_json(h: &Health) -> BTreeMap<String, String> {
    h.results
        .iter()
        .map(|(n, r)| {
            (
                n.clone(),
                match r {
                    Ok(()) => "pass".to_owned(),
                    Err(e) => e.clone(),
                },
            )
        })
        .collect()
}

/// A bundle that cannot be applied at all: record it as failed, quarantine it
/// (unless the failure is transient), keep enforcing what is applied.
async fn reject(agent: &Arc<Agent>, commit: &str, e: &SyncError) -> Result<(), SyncError> {
    let transient = e.is_transient();
    let msg = e.to_string();
    let c = commit.to_owned();
    let e_kind = match e {
        SyncError::Blocked { .. } => "blocked",
        SyncError::Untrusted { .. } => "untrusted",
        _ => "bundle",
    };
    blocking(agent, move |a| -> Result<(), StoreError> {
        let p = Prepared {
            commit: c.clone(),
            render_key: a.render_key(),
            desired: Desired::default(),
            blobs: HashMap::new(),
            rendered: true,
        };
        if !transient {
            a.record(&p, Outcome::Failed, Some(msg.clone()))?;
            let why = match e_kind {
                "blocked" => "rejected: something on the gateway is in the way",
                "untrusted" => "refused: the commit's signature is not trusted",
                _ => "rejected: the bundle is invalid",
            };
            a.update_pointers(|ptr| {
                ptr.quarantine.insert(c.clone(), why.into());
            })?;
            a.gc()?;
        }
        a.event(Kind::Failed, serde_json::json!({ "revision": c, "error": msg }));
        a.set_status(|s| {
            s.phase = "failed".into();
            s.source = "ok".into();
            s.target_revision = Some(c);
            s.last_sync = Some(now_rfc3339());
            s.error = Some(msg);
        })?;
        Ok(())
    })
    .await?;
    if let Err(h) = enforce_current(agent).await {
        tracing::warn!(error = %h, "could not re-enforce the current revision");
    }
    Ok(())
}

/// A revision failed to apply or failed its health window: return to
/// last-known-good (from the store, no network), record and quarantine it.
/// Returns the error to report, with what happened after.
async fn fail_and_roll_back(agent: &Arc<Agent>, p: &Prepared, seq: Option<u64>, error: SyncError) -> SyncError {
    let kind = error.kind();
    let rollback_enabled = agent.cfg.apply.rollback;
    let p = p.clone();
    let msg = error.to_string();
    let p2 = p.clone();
    let outcome = blocking(agent, move |a| -> Result<(String, &'static str), SyncError> {
        let p = p2;
        // Record the attempt (an apply that failed midway has no record yet).
        let seq = match seq {
            Some(s) => s,
            None => a.record(&p, Outcome::Failed, Some(msg.clone()))?,
        };
        let after;
        let mut phase = "failed";
        if rollback_enabled {
            let lkg = a.last_good()?;
            let (lkg_commit, lkg_desired) = match &lkg {
                Some(r) => (r.commit.clone(), r.desired.clone()),
                None => (String::new(), Desired::default()),
            };
            match a.enforce(&lkg_commit, &lkg_desired, &HashMap::new(), true) {
                Ok(_) => {
                    a.update_pointers(|ptr| {
                        ptr.current = lkg.as_ref().map(RevRef::of);
                        ptr.current_gated = true;
                    })?;
                    a.set_outcome(seq, Outcome::RolledBack, Some(msg.clone()))?;
                    phase = "rolled_back";
                    after = match &lkg {
                        Some(r) => format!("rolled back to {}", short(&r.commit)),
                        None => "rolled back to the state before tend's first revision".into(),
                    };
                }
                Err(re) => {
                    a.set_outcome(seq, Outcome::Failed, Some(msg.clone()))?;
                    after = format!("rollback failed too: {re}");
                }
            }
        } else {
            a.set_outcome(seq, Outcome::Failed, Some(msg.clone()))?;
            a.update_pointers(|ptr| {
                ptr.current = Some(RevRef { seq, commit: p.commit.clone(), render_key: p.render_key.clone() });
                ptr.current_gated = true;
            })?;
            phase = "degraded";
            after = "rollback is off ([apply].rollback = false)".into();
        }
        // Once back on last-known-good: the decision step counts a transient
        // failure or quarantines the commit (a crash before this line leaves
        // it to be tried again, never a quarantined revision in place).
        a.decide(&Event::Failed { commit: p.commit.clone(), kind })?;
        let kind = if phase == "rolled_back" { Kind::RolledBack } else { Kind::Failed };
        a.event(
            kind,
            serde_json::json!({
                "revision": p.commit,
                "error": msg,
                "to": a.store.pointers()?.current.map(|c| c.commit),
                "after": after,
            }),
        );
        a.gc()?;
        Ok((after, phase))
    })
    .await;
    let (final_error, phase) = match (error, outcome) {
        (SyncError::Unhealthy { commit, failures, .. }, Ok((after, phase))) => {
            (SyncError::Unhealthy { commit, failures, after }, phase)
        }
        (e, Ok((after, phase))) => (SyncError::Rollback(format!("{e}; {after}")), phase),
        (e, Err(inner)) => (SyncError::Rollback(format!("{e}; and then: {inner}")), "failed"),
    };
    let full = final_error.to_string();
    let commit = p.commit.clone();
    let recorded = blocking(agent, move |a| {
        let resources = a.resources();
        a.set_status(|s| {
            s.phase = phase.into();
            s.source = "ok".into();
            s.target_revision = Some(commit);
            s.last_sync = Some(now_rfc3339());
            s.error = Some(full);
            s.resources = resources;
        })
    })
    .await;
    if let Err(e) = recorded {
        tracing::error!(error = %e, "could not record the status");
    }
    final_error
}

/// `tend rollback [REVISION]`: return to last-known-good, or to a revision in
/// history (a commit prefix). The branch's current tip is held (quarantined)
/// so the rollback is not undone by the next poll; `tend sync --retry` or a new
/// commit lifts the hold.
pub async fn rollback(agent: &Arc<Agent>, revision: Option<String>) -> Result<SyncSummary, SyncError> {
    let started = Instant::now();
    let r = rollback_inner(agent, revision).await;
    agent.counters.sync_done(if r.is_ok() { "rolled_back" } else { "failed" }, started.elapsed());
    r
}

async fn rollback_inner(agent: &Arc<Agent>, revision: Option<String>) -> Result<SyncSummary, SyncError> {
    let target = blocking(agent, move |a| -> Result<RevisionRecord, SyncError> {
        match revision {
            // As `helm rollback`: the newest healthy revision older than the
            // one applied now, so a rollback always undoes something.
            None => {
                let current = a.store.pointers()?.current.ok_or_else(|| {
                    SyncError::Rollback("nothing is applied yet: there is nothing to roll back".into())
                })?;
                a.history()?
                    .into_iter()
                    .filter(|r| {
                        r.seq < current.seq
                            && r.commit != current.commit
                            && r.outcome == Outcome::Healthy
                            && !r.desired.is_empty()
                    })
                    .max_by_key(|r| r.seq)
                    .ok_or_else(|| {
                        SyncError::Rollback(format!(
                            "no healthy revision older than {} in the history: nothing to return to (see `tend history`)",
                            short(&current.commit)
                        ))
                    })
            }
            Some(rev) => {
                if rev.len() < 4 || !rev.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(SyncError::Rollback(format!("{rev:?} is not a commit id (at least 4 hex digits)")));
                }
                let candidates: Vec<RevisionRecord> = a
                    .history()?
                    .into_iter()
                    .filter(|r| r.commit.starts_with(&rev.to_ascii_lowercase()) && !r.desired.is_empty())
                    .collect();
                let distinct: BTreeSet<&str> = candidates.iter().map(|r| r.commit.as_str()).collect();
                match distinct.len() {
                    0 => Err(SyncError::Rollback(format!("revision {rev} is not in the history (see `tend history`)"))),
                    1 => Ok(candidates.into_iter().next().expect("one")),
                    _ => Err(SyncError::Rollback(format!(
                        "revision {rev} is ambiguous: {}",
                        distinct.into_iter().collect::<Vec<_>>().join(", ")
                    ))),
                }
            }
        }
    })
    .await?;
    let span = tracing::info_span!("rollback", revision = %short(&target.commit));
    rollback_to(agent, target).instrument(span).await
}

async fn rollback_to(agent: &Arc<Agent>, target: RevisionRecord) -> Result<SyncSummary, SyncError> {
    let t2 = target.clone();
    let (plan, _) = blocking(agent, move |a| a.enforce(&t2.commit, &t2.desired, &HashMap::new(), true)).await?;
    let probes = probes_for(agent, &target.commit, &target.desired)?;
    let health = health::window(&probes, agent.cfg.apply.health_timeout).await;
    let mut summary = SyncSummary::from_plan(&plan);
    summary.commit = Some(target.commit.clone());
    summary.action = "rolled_back".into();
    summary.files = target.desired.files.len();
    summary.checks = checks_json(&health);
    let healthy = health.healthy();
    let failures = health.failures();
    let t3 = target.clone();
    blocking(agent, move |a| -> Result<(), StoreError> {
        let status = a.status()?;
        // The branch's tip is held so the next poll does not undo this.
        a.decide(&Event::OperatorRollback { to: RevRef::of(&t3), tip: status.target_revision.clone(), healthy })?;
        if healthy {
            a.set_outcome(t3.seq, Outcome::Healthy, None)?;
        }
        a.event(Kind::RolledBack, serde_json::json!({ "to": t3.commit, "by": "operator", "healthy": healthy }));
        let resources = a.resources();
        a.set_status(|s| {
            s.phase = if !healthy {
                "degraded".into()
            } else if s.target_revision.as_deref().is_none_or(|t| t == t3.commit) {
                "synced".into()
            } else {
                "rolled_back".into()
            };
            s.last_sync = Some(now_rfc3339());
            s.error = (!healthy).then(|| format!("revision {} is unhealthy: {failures}", short(&t3.commit)));
            s.resources = resources;
        })?;
        Ok(())
    })
    .await?;
    if healthy {
        Ok(summary)
    } else {
        Err(SyncError::Unhealthy {
            commit: target.commit,
            failures: health.failures(),
            after: "left in place (an operator asked for it)".into(),
        })
    }
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
