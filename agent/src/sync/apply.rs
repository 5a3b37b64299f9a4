//! The blocking steps that act: open the store, render and verify a commit,
//! plan, and apply files, containers and manifests.

use super::*;

impl Agent {
    /// Open the store under `state_dir` (one process at a time), with the
    /// Git source and the system clock.
    pub fn open(cfg: Config) -> Result<Agent, StoreError> {
        let source = Box::new(GitSource::new(&cfg));
        Self::with_source(cfg, source, Arc::new(crate::source::SystemClock))
    }

    /// Open the store with another source and clock (tests of the whole
    /// cycle: `source::memory`).
    pub fn with_source(
        cfg: Config,
        source: Box<dyn crate::source::Source>,
        clock: Arc<dyn crate::source::Clock>,
    ) -> Result<Agent, StoreError> {
        let store = SledStore::open(&cfg.state_dir.join("store"), &cfg.state_dir.join("objects"))?;
        Ok(Self::with_parts(cfg, Arc::new(store), source, clock))
    }

    /// The agent on the given outside systems (the simulation's in memory).
    pub fn with_parts(
        cfg: Config,
        store: Arc<dyn Store + Send + Sync>,
        source: Box<dyn crate::source::Source>,
        clock: Arc<dyn crate::source::Clock>,
    ) -> Agent {
        Agent {
            events: Events::new(&cfg.device_id, &cfg.fleet, cfg.mqtt.url.is_some()),
            source,
            clock,
            root: FileRoot::new(cfg.files.root.clone()),
            runner: Box::new(ProcessRunner { timeout: Duration::from_secs(300) }),
            limits: Limits::default(),
            runtime: std::sync::OnceLock::new(),
            verified: std::sync::Mutex::new(None),
            pending_last_sync: std::sync::Mutex::new(None),
            counters: Default::default(),
            breaker: None,
            check_probe: None,
            problems: Vec::new(),
            host: std::sync::Mutex::new(crate::inventory::HostInventory::local()),
            store,
            cfg,
        }
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

    pub(super) fn bundle_path(&self) -> RelPath {
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
        let rendered = bundle::render(tree.as_ref(), &self.bundle_path(), &ctx)
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
        tracing::debug!(signer = %signer, "commit signature verified");
        Ok(())
    }

    /// The gateway's age keys, when `[files].age_identity` is set.
    pub(super) fn age_keys(&self) -> Result<Option<AgeKeys>, SyncError> {
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
                    forced: None,
                    from: None,
                });
            }
        }
        let r = self.render_commit(commit)?;
        // Verify owners and groups now, so a bundle naming an unknown user is
        // rejected before anything is written.
        files::targets(&r.desired).map_err(|error| SyncError::Bundle { commit: commit.into(), error })?;
        Ok(Prepared {
            commit: commit.into(),
            render_key,
            desired: r.desired,
            blobs: r.blobs,
            rendered: true,
            forced: None,
            from: None,
        })
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

    /// Ask K3s and the container runtime (`[containers].socket` or the
    /// usual sockets, whether tend runs containers there or not) their
    /// versions for the status's inventory, at the daemon's start.
    pub fn ask_versions(&self) {
        let k3s = crate::inventory::k3s();
        let socket = self.cfg.containers.socket.clone().or_else(containers::default_socket);
        // A runtime that does not answer is not there, as far as the status goes.
        let runtime = socket.and_then(|s| containers::engine_version(&s).ok().flatten());
        let mut host = self.host.lock().unwrap_or_else(|e| e.into_inner());
        (host.k3s, host.runtime) = (k3s, runtime);
    }

    /// Plan the containers: pure diff after one labelled list call; an
    /// unlabelled container holding a declared name is a conflict.
    pub(super) fn plan_containers(
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
        let mut live = rt.list_managed().map_err(err)?;
        // The start times of the containers in a depends_on relation: one
        // that started before its dependency's current run is restarted.
        let related: BTreeSet<&str> = desired
            .containers
            .iter()
            .filter(|(_, s)| !s.depends_on.is_empty())
            .flat_map(|(n, s)| std::iter::once(n.as_str()).chain(s.depends_on.iter().map(String::as_str)))
            .collect();
        for c in live.iter_mut().filter(|c| c.running && related.contains(c.name.as_str())) {
            c.started_at = rt.inspect(&c.name).map_err(err)?.and_then(|i| i.started_at);
        }
        // The runtime's version, once it answers (the status's inventory;
        // asked without holding the lock the status is read under).
        if self.host.lock().unwrap_or_else(|e| e.into_inner()).runtime.is_none() {
            let v = rt.version().ok().flatten();
            self.host.lock().unwrap_or_else(|e| e.into_inner()).runtime = v;
        }
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
    pub(super) fn plan_manifests(
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
        self.enforce_checked(commit, desired, blobs, prune, false)
    }

    /// Apply a new revision: [`Agent::enforce`] after the disk-space
    /// preflight (SPEC §3, 9), which drift repair, a rollback and the boot's
    /// re-enforcement skip: they restore what was there.
    pub fn apply_new(
        &self,
        commit: &str,
        desired: &Desired,
        blobs: &HashMap<ContentHash, Vec<u8>>,
        prune: bool,
    ) -> Result<(Plan, ApplyReport), SyncError> {
        self.enforce_checked(commit, desired, blobs, prune, true)
    }

    fn enforce_checked(
        &self,
        commit: &str,
        desired: &Desired,
        blobs: &HashMap<ContentHash, Vec<u8>>,
        prune: bool,
        preflight: bool,
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
        let pulls = if plan.containers.is_empty() {
            BTreeSet::new()
        } else {
            containers::images_to_pull(self.runtime(commit)?.as_ref(), &desired.containers, &plan.containers)
                .map_err(|error| SyncError::Container { commit: commit.to_owned(), error })?
        };
        if preflight {
            self.check_space(commit, desired, &plan, blobs, &pulls)?;
        }
        if !plan.containers.is_empty() {
            let err = |error| SyncError::Container { commit: commit.to_owned(), error };
            let rt = self.runtime(commit)?;
            rt.ping().map_err(err)?;
            for image in pulls {
                rt.pull(image).map_err(err)?;
            }
        }
        for (h, data) in blobs {
            self.store.put_blob(h, data)?;
        }
        if plan.is_empty() {
            // Hooks an interrupted apply left due run now, though nothing
            // else is to do.
            let mut report = ApplyReport::default();
            if inv.pending_hooks.is_some() {
                report.hooks_run = self
                    .root
                    .run_pending_hooks(commit, self.store.as_ref(), &mut inv, self.runner.as_ref())
                    .map_err(|error| SyncError::Apply { commit: commit.to_owned(), error })?;
            }
            return Ok((plan, report));
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
        // Each step at debug (-v); the apply itself is one info line (its event).
        for op in &plan.ops {
            if op.changes_disk() {
                tracing::debug!("{op}");
            }
        }
        for op in &plan.containers {
            tracing::debug!("{op}");
        }
        for op in &plan.manifests {
            if let ManifestOp::Write { .. } = op {
                tracing::debug!("{op}");
            } else if let Some(first) = op.lines().first() {
                // The pruned objects are logged as kubectl deletes them.
                tracing::debug!("{first}");
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
                .apply(commit, &plan, &content, self.store.as_ref(), &mut inv, self.runner.as_ref())
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

    /// Run a `[hooks]` command of the revision `p` with the revision, the
    /// one in place before it and the device in its environment; the error
    /// says how it ended, with its output cut to [`HOOK_OUTPUT`] bytes.
    pub(super) fn run_hook(&self, cmd: &[String], p: &Prepared, previous: Option<&str>) -> Result<(), String> {
        let env = [
            ("TEND_REVISION", p.commit.as_str()),
            ("TEND_PREVIOUS_REVISION", previous.unwrap_or("")),
            ("TEND_DEVICE_ID", self.cfg.device_id.as_str()),
            ("TEND_FLEET", self.cfg.fleet.as_str()),
        ];
        self.runner.run_hook(cmd, &env, p.desired.hooks.timeout).map(|_| ()).map_err(|e| cut(e, HOOK_OUTPUT))
    }

    /// Each file system `plan` writes keeps `[apply].min_free` after it: the
    /// files, the contents the store takes, the manifests and the images to
    /// pull, `pulls` (their download as the registry's manifest says, times
    /// three: the layers unpacked as well; an image whose size cannot be
    /// asked counts nothing, and is still pulled).
    fn check_space(
        &self,
        commit: &str,
        desired: &Desired,
        plan: &Plan,
        blobs: &HashMap<ContentHash, Vec<u8>>,
        pulls: &BTreeSet<&str>,
    ) -> Result<(), SyncError> {
        use crate::reconcile::space::{self, Need};
        let mut needs = Vec::new();
        for op in &plan.ops {
            if let Op::Write { path, .. } = op {
                let bytes = desired.files.get(path).map_or(0, |f| f.size);
                needs.push(Need { path: self.root.full(path), what: "[files].root", bytes });
            }
        }
        let stored: u64 =
            blobs.iter().filter(|(h, _)| !self.store.has_blob(h).unwrap_or(false)).map(|(_, b)| b.len() as u64).sum();
        needs.push(Need { path: self.cfg.state_dir.clone(), what: "state_dir", bytes: stored });
        for m in &plan.manifests {
            if let ManifestOp::Write { hash, .. } = m {
                let bytes = blobs.get(hash).map_or(0, |b| b.len() as u64);
                needs.push(Need { path: self.cfg.k3s.manifests_dir.clone(), what: "[k3s].manifests_dir", bytes });
            }
        }
        if !plan.containers.is_empty() {
            needs.extend(image_need(self.runtime(commit)?.as_ref(), pulls.iter().copied()));
        }
        space::check(&needs, self.cfg.apply.min_free)
            .map_err(|short| SyncError::Space { commit: commit.to_owned(), error: short.to_string() })
    }

    /// Room in the container storage for pulling `image` (the prefetch of a
    /// waiting revision's images).
    fn room_for_pull(&self, rt: &dyn Runtime, image: &str) -> Result<(), crate::reconcile::space::Short> {
        let need: Vec<_> = image_need(rt, [image]).into_iter().collect();
        crate::reconcile::space::check(&need, self.cfg.apply.min_free)
    }

    /// While a revision waits (rollout control): pull the images it will need
    /// and does not have, so a window is spent applying, not downloading. A
    /// failure is only logged: the apply pulls again, and says so if it fails.
    pub fn prefetch_images(&self, commit: &str, containers: &BTreeMap<String, crate::bundle::ContainerSpec>) {
        let rt = match self.runtime(commit) {
            Ok(rt) => rt,
            Err(e) => return tracing::warn!(error = %e, "cannot pull images ahead of the apply"),
        };
        for spec in containers.values().filter(|s| s.pull != crate::bundle::Pull::Never) {
            match rt.image_present(&spec.image) {
                Ok(true) => {}
                Ok(false) if let Err(short) = self.room_for_pull(rt.as_ref(), &spec.image) => {
                    tracing::warn!(image = %spec.image, "not pulled ahead of the apply: {short}");
                }
                Ok(false) => match rt.pull(&spec.image) {
                    Ok(()) => tracing::info!(image = %spec.image, "image pulled ahead of the apply"),
                    Err(e) => tracing::warn!(image = %spec.image, error = %e, "cannot pull ahead of the apply"),
                },
                Err(e) => tracing::warn!(image = %spec.image, error = %e, "cannot pull ahead of the apply"),
            }
        }
    }

    pub(super) fn apply_containers(
        &self,
        commit: &str,
        desired: &Desired,
        ops: &[ContainerOp],
        inv: &mut Inventory,
    ) -> Result<(), SyncError> {
        let rt = self.runtime(commit)?;
        let wait = self.cfg.apply.health_timeout;
        let result = containers::apply(rt.as_ref(), &desired.containers, ops, commit, inv, wait);
        // What was made before a failure is recorded, so a rollback finds it.
        self.store.set_inventory(inv)?;
        self.store.flush()?;
        result.map_err(|error| SyncError::Container { commit: commit.to_owned(), error })
    }
}

/// What of a failed hook's output an error (and its event) carries.
pub const HOOK_OUTPUT: usize = 2048;

/// How long the registry may take to say an image's size.
const IMAGE_SIZE_TIMEOUT: Duration = Duration::from_secs(10);

/// What pulling `images` writes to the container storage: their download
/// as the registry's manifest says, times three (the layers unpacked as
/// well); an image whose size cannot be asked counts nothing, and is still
/// pulled.
fn image_need<'a>(
    rt: &dyn Runtime,
    images: impl IntoIterator<Item = &'a str>,
) -> Option<crate::reconcile::space::Need> {
    let mut bytes = 0u64;
    for image in images {
        match crate::reconcile::registry::download_size(image, IMAGE_SIZE_TIMEOUT) {
            Ok(b) => bytes = bytes.saturating_add(b.saturating_mul(3)),
            Err(e) => tracing::debug!(image, error = %e, "the size of the image cannot be known before its pull"),
        }
    }
    let path = rt.storage_root().or_else(|| containers::storage_guess().map(Into::into))?;
    Some(crate::reconcile::space::Need { path, what: "the container storage", bytes })
}

/// `text` cut to at most `max` bytes (on a character boundary), marked.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" […]");
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hooks_output_is_cut_on_a_character_boundary() {
        assert_eq!(super::cut("short".into(), 2048), "short");
        let long = "é".repeat(5000);
        let c = super::cut(long, super::HOOK_OUTPUT);
        assert!(c.len() <= super::HOOK_OUTPUT + " […]".len() && c.ends_with(" […]"), "{}", c.len());
        assert!(c.starts_with("éé"));
    }
}
