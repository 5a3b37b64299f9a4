//! Loading a bundle from a revision's tree: `tend.toml` and its includes,
//! files, templates, secrets, containers, K3s manifests and `[rollout]`,
//! checked against the local policy and the limits, into a [`Desired`].

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Manifest {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default, rename = "file")]
    files: Vec<FileMeta>,
    #[serde(default, rename = "check")]
    checks: Vec<RawCheck>,
    rollout: Option<rollout::RawRollout>,
    hooks: Option<RawHooks>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    before_apply: Option<Vec<String>>,
    after_apply: Option<Vec<String>>,
    timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileMeta {
    path: String,
    mode: Option<String>,
    owner: Option<String>,
    group: Option<String>,
    #[serde(default)]
    template: bool,
    on_change: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub(super) name: String,
    pub(super) http: Option<String>,
    pub(super) tcp: Option<String>,
    pub(super) command: Option<Vec<String>>,
    pub(super) interval: Option<String>,
}

/// A file as read from one bundle, before metadata and templates.
pub(super) struct Staged {
    content: Vec<u8>,
    executable: bool,
    from: RelPath,
    /// An age-encrypted secret: `content` is the ciphertext.
    sealed: bool,
}

pub(super) struct Loader<'t, 'c> {
    tree: &'t dyn Tree,
    ctx: &'c Context<'c>,
    files: BTreeMap<RelPath, Staged>,
    meta: BTreeMap<RelPath, (FileMeta, RelPath)>,
    checks: Vec<Check>,
    /// `[hooks]` of the last bundle read that has them: the including one.
    hooks: Hooks,
    containers: BTreeMap<String, ContainerSpec>,
    /// The file each container was read from (the including bundle's wins).
    container_files: BTreeMap<String, RelPath>,
    manifests: BTreeMap<String, (Vec<u8>, Vec<manifest::ObjectRef>, RelPath)>,
    rollout: rollout::Merged,
    bundles: Vec<String>,
    loads: usize,
    /// Problems of single files that do not stop the reading of the rest.
    problems: Vec<BundleError>,
}

/// Read the bundle at `bundle` in `tree` and render it for `ctx`.
pub fn render(tree: &dyn Tree, bundle: &RelPath, ctx: &Context<'_>) -> Result<Rendered, BundleError> {
    let mut loader = Loader {
        tree,
        ctx,
        files: BTreeMap::new(),
        meta: BTreeMap::new(),
        checks: Vec::new(),
        hooks: Hooks::default(),
        containers: BTreeMap::new(),
        container_files: BTreeMap::new(),
        manifests: BTreeMap::new(),
        rollout: rollout::Merged::default(),
        bundles: Vec::new(),
        loads: 0,
        problems: Vec::new(),
    };
    let mut stack = Vec::new();
    let loaded = loader.load(bundle, &mut stack);
    let mut problems = std::mem::take(&mut loader.problems);
    if let Err(e) = loaded {
        problems.push(e);
    }
    if !problems.is_empty() {
        return Err(BundleError::many(problems));
    }
    loader.finish()
}

impl Loader<'_, '_> {
    fn load(&mut self, bundle: &RelPath, stack: &mut Vec<RelPath>) -> Result<(), BundleError> {
        let manifest_path = bundle.join(MANIFEST).expect("constant segment");
        self.loads += 1;
        if self.loads > self.ctx.limits.max_bundles {
            return Err(BundleError::new(
                &manifest_path,
                format!("more than {} bundles read through includes", self.ctx.limits.max_bundles),
            ));
        }
        match self.tree.kind(bundle)? {
            Some(EntryKind::Dir) => {}
            Some(EntryKind::Symlink) => return Err(BundleError::new(bundle, "bundle directory is a symlink")),
            Some(_) => return Err(BundleError::new(bundle, "bundle path is not a directory")),
            None => return Err(BundleError::new(bundle, "bundle directory not found in this revision")),
        }
        stack.push(bundle.clone());

        let manifest = match self.tree.kind(&manifest_path)? {
            None => None,
            Some(EntryKind::File { .. }) => {
                let bytes = self.tree.read(&manifest_path, 1 << 20)?;
                let text =
                    std::str::from_utf8(&bytes).map_err(|_| BundleError::new(&manifest_path, "not valid UTF-8"))?;
                let m: Manifest = toml::from_str(text)
                    .map_err(|e| BundleError::new(&manifest_path, format!("invalid: {}", e.message().trim())))?;
                Some(m)
            }
            Some(_) => return Err(BundleError::new(&manifest_path, "must be a regular file")),
        };

        if let Some(m) = &manifest {
            for inc in &m.include {
                let target =
                    bundle.resolve(inc).map_err(|e| BundleError::new(&manifest_path, format!("include {e}")))?;
                if let Some(pos) = stack.iter().position(|b| *b == target) {
                    let chain: Vec<String> =
                        stack[pos..].iter().chain(std::iter::once(&target)).map(ToString::to_string).collect();
                    return Err(BundleError::new(&manifest_path, format!("include cycle: {}", chain.join(" -> "))));
                }
                if stack.len() >= self.ctx.limits.max_include_depth {
                    return Err(BundleError::new(
                        &manifest_path,
                        format!(
                            "include of {target} exceeds the include depth limit of {}",
                            self.ctx.limits.max_include_depth
                        ),
                    ));
                }
                self.load(&target, stack)?;
            }
        }

        for (name, kind) in self.tree.list(bundle)? {
            // A crafted tree object may name an entry "" or "a/b" (git's
            // fsck refuses them; a hostile server need not run it).
            let entry = |name: &str| {
                bundle.join(name).map_err(|e| BundleError::new(bundle.clone(), format!("an entry named {name:?}: {e}")))
            };
            match (name.as_str(), kind) {
                ("files", EntryKind::Dir) => {}
                (MANIFEST, _) => {}
                ("containers", EntryKind::Dir) => self.load_containers(&bundle.join("containers").expect("name"))?,
                ("k3s", EntryKind::Dir) => {
                    let root = bundle.join("k3s").expect("name");
                    self.load_manifests(&root, &root)?;
                }
                (_, EntryKind::Dir) => {
                    return Err(BundleError::new(
                        entry(&name)?,
                        "unknown directory in a bundle (expected files/, containers/, k3s/)",
                    ));
                }
                (_, EntryKind::Symlink) => {
                    return Err(BundleError::new(entry(&name)?, "symlinks are not allowed at the top of a bundle"));
                }
                // README and other documentation beside tend.toml are not applied.
                _ => {}
            }
        }

        let files_root = bundle.join("files").expect("constant segment");
        if self.tree.kind(&files_root)? == Some(EntryKind::Dir) {
            self.walk(&files_root, &files_root)?;
        }

        if let Some(m) = manifest {
            if let Some(r) = m.rollout {
                self.rollout.add(r, &manifest_path);
            }
            for meta in m.files {
                let dest = parse_dest(&meta.path)
                    .map_err(|e| BundleError::new(&manifest_path, format!("[[file]] path {:?}: {e}", meta.path)))?;
                self.meta.insert(dest, (meta, manifest_path.clone()));
            }
            if let Some(raw) = m.hooks {
                self.hooks =
                    parse_hooks(raw, self.ctx.policy.allow_hooks).map_err(|e| BundleError::new(&manifest_path, e))?;
            }
            for raw in m.checks {
                let check = parse_check(raw).map_err(|e| BundleError::new(&manifest_path, e))?;
                if matches!(check.probe, Probe::Command(_)) && self.ctx.policy.allow_hooks == Some(false) {
                    return Err(BundleError::new(
                        &manifest_path,
                        format!(
                            "[[check]] {}: a command check runs a command, and hooks are off on this gateway ([files].allow_hooks = false)",
                            check.name
                        ),
                    ));
                }
                self.checks.retain(|c| c.name != check.name);
                self.checks.push(check);
            }
        }
        stack.pop();
        self.bundles.push(bundle.to_string());
        Ok(())
    }

    /// `k3s/**.yaml`: every document checked; the including bundle wins on a path.
    fn load_manifests(&mut self, root: &RelPath, dir: &RelPath) -> Result<(), BundleError> {
        if dir.segments().len() > MAX_DEPTH {
            return Err(BundleError::new(dir, format!("directories nested deeper than {MAX_DEPTH} levels")));
        }
        for (file, kind) in self.tree.list(dir)? {
            let path = dir.join(&file).map_err(|e| BundleError::new(dir, e))?;
            match kind {
                EntryKind::Dir => self.load_manifests(root, &path)?,
                EntryKind::File { .. } if file.ends_with(".yaml") || file.ends_with(".yml") => {
                    // A bad manifest is noted and the rest are read: every
                    // problem of the bundle is reported at once.
                    let bytes = match self.read_limited(&path) {
                        Ok(b) => b,
                        Err(e) => {
                            self.problems.push(e);
                            continue;
                        }
                    };
                    let Ok(text) = std::str::from_utf8(&bytes) else {
                        self.problems.push(BundleError::new(&path, "not valid UTF-8"));
                        continue;
                    };
                    let objects = match manifest::parse(text) {
                        Ok(o) => o,
                        Err(errors) => {
                            self.problems.extend(errors.into_iter().map(|e| BundleError::new(&path, e)));
                            continue;
                        }
                    };
                    let rel = path.strip_prefix(root).expect("under k3s/").to_string();
                    if !self.manifests.contains_key(&rel) && self.manifests.len() >= 1000 {
                        return Err(BundleError::new(&path, "more than 1000 manifests"));
                    }
                    self.manifests.insert(rel, (bytes, objects, path));
                }
                EntryKind::File { .. } => {
                    self.problems.push(BundleError::new(&path, "only .yaml and .yml files belong in k3s/"));
                }
                _ => self.problems.push(BundleError::new(&path, "symlinks and special files are not allowed in k3s/")),
            }
        }
        Ok(())
    }

    /// `containers/NAME.toml`, one container each; the including bundle wins on a name.
    fn load_containers(&mut self, dir: &RelPath) -> Result<(), BundleError> {
        for (file, kind) in self.tree.list(dir)? {
            let path = dir.join(&file).map_err(|e| BundleError::new(dir, e))?;
            let Some(name) = file.strip_suffix(".toml") else {
                return Err(BundleError::new(&path, "only NAME.toml files belong in containers/"));
            };
            if kind != (EntryKind::File { executable: false }) && kind != (EntryKind::File { executable: true }) {
                return Err(BundleError::new(&path, "must be a regular file"));
            }
            if !container::is_name(name) {
                return Err(BundleError::new(
                    &path,
                    format!("{name:?} is not a valid container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 63)"),
                ));
            }
            let bytes = self.tree.read(&path, 64 * 1024)?;
            let text = std::str::from_utf8(&bytes).map_err(|_| BundleError::new(&path, "not valid UTF-8"))?;
            let spec = match ContainerSpec::parse(text, self.ctx.policy.allow_privileged) {
                Ok(s) => s,
                Err(e) => {
                    // Noted; the other container files are still read.
                    self.problems.push(BundleError::new(&path, e));
                    continue;
                }
            };
            if !self.containers.contains_key(name) && self.containers.len() >= 256 {
                return Err(BundleError::new(&path, "more than 256 containers"));
            }
            self.containers.insert(name.to_owned(), spec);
            self.container_files.insert(name.to_owned(), path);
        }
        Ok(())
    }

    fn walk(&mut self, files_root: &RelPath, dir: &RelPath) -> Result<(), BundleError> {
        if dir.segments().len() > MAX_DEPTH {
            return Err(BundleError::new(dir, format!("directories nested deeper than {MAX_DEPTH} levels")));
        }
        let entries = self.tree.list(dir)?;
        for (name, kind) in &entries {
            let path = dir.join(name).map_err(|e| BundleError::new(dir, e))?;
            // `x.age` is written as `x`: both in one directory is ambiguous.
            let sealed = kind != &EntryKind::Dir && secrets::plain_name(name).is_some();
            let dest = match secrets::plain_name(name).filter(|_| sealed) {
                Some(plain) => {
                    if entries.iter().any(|(n, _)| n == plain) {
                        return Err(BundleError::new(
                            &path,
                            format!("both {plain} and {name} would be written as {plain}"),
                        ));
                    }
                    dir.join(plain)
                        .map_err(|e| BundleError::new(dir, e))?
                        .strip_prefix(files_root)
                        .expect("under files/")
                }
                None => path.strip_prefix(files_root).expect("walk stays under files/"),
            };
            match *kind {
                EntryKind::Dir => self.walk(files_root, &path)?,
                EntryKind::File { executable } => {
                    let content = self.read_limited(&path)?;
                    self.stage(dest, Staged { content, executable, from: path, sealed })?;
                }
                EntryKind::Symlink => {
                    let (content, executable) = self.follow(files_root, &path)?;
                    self.stage(dest, Staged { content, executable, from: path, sealed })?;
                }
                EntryKind::Other => {
                    return Err(BundleError::new(&path, "not a regular file, directory or symlink"));
                }
            }
        }
        Ok(())
    }

    /// A symlink inside `files/` is applied as a copy of the file it points to,
    /// which must be inside the same `files/` tree.
    fn follow(&self, files_root: &RelPath, link: &RelPath) -> Result<(Vec<u8>, bool), BundleError> {
        let mut cur = link.clone();
        for _ in 0..8 {
            let target = self.tree.read(&cur, 4096)?;
            let target = std::str::from_utf8(&target)
                .map_err(|_| BundleError::new(link, "symlink target is not valid UTF-8"))?;
            let parent = cur.parent().unwrap_or_default();
            let resolved = parent
                .resolve(target)
                .map_err(|e| BundleError::new(link, format!("symlink points outside the bundle: {e}")))?;
            if !resolved.starts_with(files_root) {
                return Err(BundleError::new(link, format!("symlink points outside the bundle's files/ ({target:?})")));
            }
            match self.tree.kind(&resolved)? {
                Some(EntryKind::File { executable }) => return Ok((self.read_limited(&resolved)?, executable)),
                Some(EntryKind::Symlink) => cur = resolved,
                Some(EntryKind::Dir) => {
                    return Err(BundleError::new(link, "symlinks to directories are not supported"));
                }
                Some(EntryKind::Other) | None => {
                    return Err(BundleError::new(link, format!("dangling symlink ({target:?})")));
                }
            }
        }
        Err(BundleError::new(link, "symlink loop or chain longer than 8"))
    }

    fn read_limited(&self, path: &RelPath) -> Result<Vec<u8>, BundleError> {
        self.tree.read(path, self.ctx.limits.max_file_size).map_err(|e| {
            BundleError::new(
                path,
                if e.reason.contains("limit") { format!("file too large: {}", e.reason) } else { e.reason },
            )
        })
    }

    fn stage(&mut self, dest: RelPath, staged: Staged) -> Result<(), BundleError> {
        if !self.files.contains_key(&dest) && self.files.len() >= self.ctx.limits.max_files {
            return Err(BundleError::new(
                &staged.from,
                format!("bundle has more than {} files", self.ctx.limits.max_files),
            ));
        }
        self.files.insert(dest, staged);
        Ok(())
    }

    fn finish(self) -> Result<Rendered, BundleError> {
        let Loader {
            files, meta, checks, hooks, bundles, ctx, containers, container_files, manifests, rollout, ..
        } = self;
        let rollout = rollout.finish().map_err(BundleError::many)?;
        container::start_order(&containers)
            .map_err(|(name, error)| BundleError::new(&container_files[&name], error))?;
        for (dest, (_, manifest)) in &meta {
            if !files.contains_key(dest) {
                return Err(BundleError::new(
                    manifest,
                    format!("[[file]] path {} names no file under files/", dest.to_absolute_string()),
                ));
            }
        }
        let mut rendered = Rendered::default();
        let mut total: u64 = 0;
        for (dest, staged) in files {
            let from = staged.from.to_string();
            if !ctx.policy.allows(&dest) {
                return Err(BundleError::new(
                    &from,
                    format!("destination {} is outside [files].allow", dest.to_absolute_string()),
                ));
            }
            if ctx.policy.protected.iter().any(|p| dest.starts_with(p)) {
                return Err(BundleError::new(
                    &from,
                    format!(
                        "destination {} is tend's own configuration, key or state, which no bundle may write",
                        dest.to_absolute_string()
                    ),
                ));
            }
            let m = meta.get(&dest);
            let sealed = staged.sealed;
            let mut content = staged.content;
            let (mode, owner, group, on_change) = match m {
                Some((fm, manifest)) => {
                    let mode = match &fm.mode {
                        Some(s) => parse_mode(s).map_err(|e| {
                            BundleError::new(
                                manifest,
                                format!("[[file]] {}: mode {s:?}: {e}", dest.to_absolute_string()),
                            )
                        })?,
                        None if sealed => 0o600,
                        None => default_mode(staged.executable),
                    };
                    for (what, name) in [("owner", &fm.owner), ("group", &fm.group)] {
                        if let Some(n) = name
                            && (n.is_empty()
                                || n.len() > 64
                                || n.chars().any(|c| c.is_control() || c == ':' || c == '/'))
                        {
                            return Err(BundleError::new(
                                manifest,
                                format!("[[file]] {}: {what} {n:?} is not a valid name", dest.to_absolute_string()),
                            ));
                        }
                    }
                    if let Some(cmd) = &fm.on_change
                        && (cmd.is_empty() || cmd[0].is_empty() || cmd.iter().any(|a| a.contains('\0')))
                    {
                        return Err(BundleError::new(
                            manifest,
                            format!("[[file]] {}: on_change must be a non-empty command", dest.to_absolute_string()),
                        ));
                    }
                    if fm.on_change.is_some() && ctx.policy.allow_hooks == Some(false) {
                        return Err(BundleError::new(
                            manifest,
                            format!(
                                "[[file]] {}: on_change runs a command, and hooks are off on this gateway ([files].allow_hooks = false)",
                                dest.to_absolute_string()
                            ),
                        ));
                    }
                    if fm.template && sealed {
                        return Err(BundleError::new(
                            manifest,
                            format!("[[file]] {}: a secret (.age) cannot be a template", dest.to_absolute_string()),
                        ));
                    }
                    if fm.template {
                        let text = String::from_utf8(content)
                            .map_err(|_| BundleError::new(&from, "template is not valid UTF-8"))?;
                        content =
                            render_template(&text, ctx.identity).map_err(|e| BundleError::new(&from, e))?.into_bytes();
                        if content.len() as u64 > ctx.limits.max_file_size {
                            return Err(BundleError::new(&from, "file too large after rendering its template"));
                        }
                    }
                    (mode, fm.owner.clone(), fm.group.clone(), fm.on_change.clone())
                }
                None if sealed => (0o600, None, None, None),
                None => (default_mode(staged.executable), None, None, None),
            };
            // A secret: the store and every message get the ciphertext; the
            // plaintext exists here only to be hashed (and checked to decrypt).
            let mut cipher = None;
            if sealed {
                let plain = match ctx.secrets {
                    Secrets::Keys(keys) => Some(
                        keys.decrypt(&content, ctx.limits.max_file_size)
                            .map_err(|e| BundleError::new(&from, format!("secret {e}")))?,
                    ),
                    Secrets::Missing => {
                        return Err(BundleError::new(
                            &from,
                            "is an age-encrypted secret, but [files].age_identity is not set on this gateway",
                        ));
                    }
                    Secrets::Opaque if secrets::looks_like_age(&content) => None,
                    Secrets::Opaque => return Err(BundleError::new(&from, "ends in .age but is not an age file")),
                };
                let cipher_hash = ContentHash::of(&content);
                let (plain_hash, plain_len) = match &plain {
                    Some(p) => (ContentHash::of(p), p.len() as u64),
                    None => (cipher_hash, content.len() as u64),
                };
                total += plain_len;
                if total > ctx.limits.max_total_size {
                    return Err(BundleError::new(
                        &from,
                        format!("bundle is larger than the limit of {} bytes", ctx.limits.max_total_size),
                    ));
                }
                cipher = Some((plain_hash, plain_len, cipher_hash));
            }
            if let Some((hash, size, cipher_hash)) = cipher {
                let file = DesiredFile {
                    path: dest.clone(),
                    hash,
                    size,
                    mode,
                    owner,
                    group,
                    on_change,
                    from,
                    sealed: Some(cipher_hash),
                };
                rendered.blobs.entry(cipher_hash).or_insert(content);
                rendered.desired.files.insert(dest, file);
                continue;
            }
            total += content.len() as u64;
            if total > ctx.limits.max_total_size {
                return Err(BundleError::new(
                    &from,
                    format!("bundle is larger than the limit of {} bytes", ctx.limits.max_total_size),
                ));
            }
            let hash = ContentHash::of(&content);
            let file = DesiredFile {
                path: dest.clone(),
                hash,
                size: content.len() as u64,
                mode,
                owner,
                group,
                on_change,
                from,
                sealed: None,
            };
            rendered.blobs.entry(hash).or_insert(content);
            rendered.desired.files.insert(dest, file);
        }
        rendered.desired.checks = checks;
        rendered.desired.hooks = hooks;
        rendered.desired.containers = containers;
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for (rel, (bytes, objects, from)) in manifests {
            // Two paths must not land on the same file name in the flat directory.
            let flat = manifest::file_name(&rel);
            if let Some(other) = names.insert(flat.clone(), rel.clone()) {
                return Err(BundleError::new(
                    &from,
                    format!("k3s/{rel} and k3s/{other} would both be written as {flat}"),
                ));
            }
            let hash = ContentHash::of(&bytes);
            rendered.blobs.entry(hash).or_insert(bytes);
            rendered.desired.manifests.insert(rel, DesiredManifest { hash, objects, from: from.to_string() });
        }
        rendered.warnings.extend(duplicate_objects(&rendered.desired.manifests));
        rendered.desired.bundles = bundles;
        rendered.desired.rollout = rollout;
        Ok(rendered)
    }
}

/// Objects declared by more than one manifest: K3s's Addons each claim them,
/// the one applied last owns them, and removing them from that file deletes
/// them though the other still declares them.
pub(super) fn duplicate_objects(manifests: &BTreeMap<String, DesiredManifest>) -> Vec<String> {
    let mut by_key: BTreeMap<manifest::ObjectKey, (&manifest::ObjectRef, Vec<&str>)> = BTreeMap::new();
    for m in manifests.values() {
        for o in &m.objects {
            let e = by_key.entry(o.key()).or_insert((o, Vec::new()));
            if !e.1.contains(&m.from.as_str()) {
                e.1.push(&m.from);
            }
        }
    }
    by_key
        .values()
        .filter(|(_, files)| files.len() > 1)
        .map(|(o, files)| {
            format!(
                "{o} is declared by {}: K3s gives it to the file it applies last, and removing it from that file deletes it",
                files.join(" and ")
            )
        })
        .collect()
}

pub(super) fn default_mode(executable: bool) -> u32 {
    if executable { 0o755 } else { 0o644 }
}

/// A destination written as an absolute path in `tend.toml` (`/etc/myapp/app.conf`).
pub(super) fn parse_dest(s: &str) -> Result<RelPath, String> {
    let rest = s.strip_prefix('/').ok_or("must be an absolute path like /etc/myapp/app.conf")?;
    let p = RelPath::parse(rest)?;
    if p.is_root() {
        return Err("must name a file".into());
    }
    Ok(p)
}

pub(super) fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err("must be an octal string from \"0000\" to \"0777\", like \"0640\"".into());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|e| e.to_string())?;
    // A repository that could set these could plant a setuid-root program.
    if mode & 0o7000 != 0 {
        return Err("setuid, setgid and sticky bits are not allowed".into());
    }
    Ok(mode)
}

pub(super) fn parse_hooks(raw: RawHooks, allow_hooks: Option<bool>) -> Result<Hooks, String> {
    for (key, cmd) in [("before_apply", &raw.before_apply), ("after_apply", &raw.after_apply)] {
        let Some(cmd) = cmd else { continue };
        if cmd.is_empty() || cmd[0].is_empty() || cmd.iter().any(|a| a.contains('\0')) {
            return Err(format!("[hooks] {key} must be a non-empty command (argv), without NUL"));
        }
        if allow_hooks == Some(false) {
            return Err(format!(
                "[hooks] {key} runs a command, and hooks are off on this gateway ([files].allow_hooks = false)"
            ));
        }
    }
    let timeout = match raw.timeout {
        None => Hooks::default_timeout(),
        Some(s) => crate::bounds::HOOK_TIMEOUT.parse("[hooks] timeout", &s)?,
    };
    Ok(Hooks { before_apply: raw.before_apply, after_apply: raw.after_apply, timeout })
}

pub(super) fn parse_check(raw: RawCheck) -> Result<Check, String> {
    let name = raw.name;
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        return Err(format!("[[check]] name {name:?} must be 1-64 printable characters"));
    }
    let probe = match (raw.http, raw.tcp, raw.command) {
        (Some(url), None, None) => {
            if !url.starts_with("http://") {
                return Err(format!("[[check]] {name}: http {url:?} must be an http:// URL"));
            }
            Probe::Http(url)
        }
        (None, Some(addr), None) => {
            let (host, port) = addr.rsplit_once(':').unwrap_or(("", ""));
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!("[[check]] {name}: tcp {addr:?} must be HOST:PORT"));
            }
            Probe::Tcp(addr)
        }
        (None, None, Some(cmd)) => {
            if cmd.is_empty() || cmd[0].is_empty() {
                return Err(format!("[[check]] {name}: command must not be empty"));
            }
            Probe::Command(cmd)
        }
        _ => return Err(format!("[[check]] {name}: needs exactly one of http, tcp, command")),
    };
    let interval = match raw.interval {
        None => Duration::from_secs(5),
        Some(s) => crate::bounds::CHECK_INTERVAL.parse(&format!("[[check]] {name}: interval"), &s)?,
    };
    Ok(Check { name, probe, interval })
}
