//! Reading one gateway's bundle out of a revision (SPEC §2) into [`Desired`].
//!
//! Owns: includes (overlaid in order, the including bundle wins on the same path),
//! `[[file]]` metadata, templates, `[[check]]` parsing, and every policy check that
//! can be made before touching the gateway. What must always hold: a bundle is
//! accepted whole or rejected whole with one [`BundleError`] naming the file and the
//! reason; nothing here writes anywhere.

mod container;
pub mod manifest;
mod path;
mod rollout;
mod template;
mod tree;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use container::{ContainerSpec, HealthSpec, Pull, Restart, is_name as is_container_name, parse_port};
pub use path::RelPath;
pub use template::{Identity, render as render_template};
pub use tree::{DirTree, EntryKind, Tree, TreeError, enclosing_repo_root};

use crate::hash::ContentHash;
use crate::secrets::{self, AgeKeys};

/// Bounds on what one bundle may hold, so a hostile commit cannot exhaust a gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Files in the rendered bundle, includes counted.
    pub max_files: usize,
    /// Bytes in one file.
    pub max_file_size: u64,
    /// Bytes in all files together.
    pub max_total_size: u64,
    /// Nesting of includes (a bundle including a bundle including … ).
    pub max_include_depth: usize,
    /// Bundles read for one render, includes counted each time they are read.
    pub max_bundles: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 10_000,
            max_file_size: 16 << 20,
            max_total_size: 256 << 20,
            max_include_depth: 8,
            max_bundles: 64,
        }
    }
}

/// Why a bundle is refused, naming the file in the repository: the first
/// problem found, and every other one found in the same pass (a fleet
/// repository's CI sees all of a bundle's problems in one run).
#[derive(Debug, Clone, PartialEq)]
pub struct BundleError {
    pub file: String,
    pub reason: String,
    pub more: Vec<(String, String)>,
}

/// Further problems shown in the one-line form (status, events); `validate`
/// lists every one.
const MORE_SHOWN: usize = 3;

impl std::fmt::Display for BundleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file, self.reason)?;
        if !self.more.is_empty() {
            let shown: Vec<String> = self.more.iter().take(MORE_SHOWN).map(|(f, r)| format!("{f}: {r}")).collect();
            let rest = self.more.len().saturating_sub(MORE_SHOWN);
            write!(f, " (and {} more: {}", self.more.len(), shown.join("; "))?;
            if rest > 0 {
                write!(f, "; … {rest} more, `tend validate` lists them")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

impl std::error::Error for BundleError {}

impl BundleError {
    pub fn new(file: impl ToString, reason: impl ToString) -> Self {
        BundleError { file: file.to_string(), reason: reason.to_string(), more: Vec::new() }
    }

    /// One error for several problems (at least one).
    fn many(problems: Vec<BundleError>) -> Self {
        let mut all = problems
            .into_iter()
            .flat_map(|e| e.problems().map(|(f, r)| (f.to_owned(), r.to_owned())).collect::<Vec<_>>());
        let (file, reason) = all.next().expect("at least one problem");
        BundleError { file, reason, more: all.collect() }
    }

    /// Every problem: (file, reason).
    pub fn problems(&self) -> impl Iterator<Item = (&str, &str)> {
        std::iter::once((self.file.as_str(), self.reason.as_str()))
            .chain(self.more.iter().map(|(f, r)| (f.as_str(), r.as_str())))
    }
}

impl From<TreeError> for BundleError {
    fn from(e: TreeError) -> Self {
        BundleError::new(e.path, e.reason)
    }
}

/// A file the bundle wants on the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredFile {
    /// Destination below `[files].root` (`etc/myapp/app.conf`).
    pub path: RelPath,
    pub hash: ContentHash,
    pub size: u64,
    pub mode: u32,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub on_change: Option<Vec<String>>,
    /// Where it came from in the repository, for messages.
    pub from: String,
    /// A secret (`files/**.age`): the hash of its ciphertext, which is what
    /// the store keeps; `hash` is then the plaintext's, for drift only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<ContentHash>,
}

/// How a health check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    Http(String),
    Tcp(String),
    Command(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub probe: Probe,
    pub interval: Duration,
}

/// Everything one bundle declares, rendered for one gateway; file contents are
/// referenced by hash (see [`Rendered::blobs`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Desired {
    /// The bundle directory and every bundle it included, in the order applied.
    pub bundles: Vec<String>,
    pub files: BTreeMap<RelPath, DesiredFile>,
    pub checks: Vec<Check>,
    /// Containers by name.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerSpec>,
    /// K3s manifests by their path under `k3s/`.
    #[serde(default)]
    pub manifests: BTreeMap<String, DesiredManifest>,
    /// `[rollout]` (SPEC §7), from the bundle or its includes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::Policy>,
}

/// A manifest the bundle wants in K3s's auto-deploy directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredManifest {
    pub hash: ContentHash,
    pub objects: Vec<manifest::ObjectRef>,
    pub from: String,
}

impl Desired {
    /// True when the bundle declares nothing at all.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.checks.is_empty() && self.containers.is_empty() && self.manifests.is_empty()
    }
}

/// A rendered bundle with the contents its files refer to.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub desired: Desired,
    pub blobs: HashMap<ContentHash, Vec<u8>>,
    /// What is allowed but likely a mistake (`validate` prints them, a sync
    /// logs them).
    pub warnings: Vec<String>,
}

/// What the local configuration allows (SPEC §1 `[files].allow`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    /// Destinations tend may write, relative to `[files].root`. `None`: not checked
    /// (offline validation without a local config).
    pub allow: Option<Vec<RelPath>>,
    /// `[containers].allow_privileged`; `None`: not checked (offline validation).
    pub allow_privileged: Option<bool>,
    /// `[files].allow_hooks`; `None`: not checked (offline validation).
    pub allow_hooks: Option<bool>,
    /// Destinations no bundle may write whatever `allow` says: tend's own
    /// configuration directory, keys, credentials and state (relative to
    /// `[files].root`), so a broad allow list cannot hand the repository the
    /// gateway's trust settings.
    pub protected: Vec<RelPath>,
}

impl Policy {
    fn allows(&self, dest: &RelPath) -> bool {
        match &self.allow {
            None => true,
            Some(list) => list.iter().any(|a| dest.starts_with(a)),
        }
    }
}

/// How a render treats secrets (`files/**.age`).
#[derive(Debug, Clone, Copy)]
pub enum Secrets<'a> {
    /// Decrypt them with the gateway's keys.
    Keys(&'a AgeKeys),
    /// No `[files].age_identity`: a bundle with secrets is rejected.
    Missing,
    /// Offline validation without keys: checked to be age files, not decrypted.
    Opaque,
}

/// Everything a render needs besides the tree.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub identity: &'a Identity,
    pub policy: &'a Policy,
    pub limits: &'a Limits,
    pub secrets: Secrets<'a>,
}

const MANIFEST: &str = "tend.toml";
/// How deep directories in a repository may nest (a depth bomb otherwise).
const MAX_DEPTH: usize = 48;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default, rename = "file")]
    files: Vec<FileMeta>,
    #[serde(default, rename = "check")]
    checks: Vec<RawCheck>,
    rollout: Option<rollout::RawRollout>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMeta {
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
struct RawCheck {
    name: String,
    http: Option<String>,
    tcp: Option<String>,
    command: Option<Vec<String>>,
    interval: Option<String>,
}

/// A file as read from one bundle, before metadata and templates.
struct Staged {
    content: Vec<u8>,
    executable: bool,
    from: RelPath,
    /// An age-encrypted secret: `content` is the ciphertext.
    sealed: bool,
}

struct Loader<'t, 'c> {
    tree: &'t dyn Tree,
    ctx: &'c Context<'c>,
    files: BTreeMap<RelPath, Staged>,
    meta: BTreeMap<RelPath, (FileMeta, RelPath)>,
    checks: Vec<Check>,
    containers: BTreeMap<String, ContainerSpec>,
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
        containers: BTreeMap::new(),
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
                        bundle.join(&name).expect("listed name"),
                        "unknown directory in a bundle (expected files/, containers/, k3s/)",
                    ));
                }
                (_, EntryKind::Symlink) => {
                    return Err(BundleError::new(
                        bundle.join(&name).expect("listed name"),
                        "symlinks are not allowed at the top of a bundle",
                    ));
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
        let Loader { files, meta, checks, bundles, ctx, containers, manifests, rollout, .. } = self;
        let rollout = rollout.finish().map_err(BundleError::many)?;
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
fn duplicate_objects(manifests: &BTreeMap<String, DesiredManifest>) -> Vec<String> {
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

fn default_mode(executable: bool) -> u32 {
    if executable { 0o755 } else { 0o644 }
}

/// A destination written as an absolute path in `tend.toml` (`/etc/myapp/app.conf`).
fn parse_dest(s: &str) -> Result<RelPath, String> {
    let rest = s.strip_prefix('/').ok_or("must be an absolute path like /etc/myapp/app.conf")?;
    let p = RelPath::parse(rest)?;
    if p.is_root() {
        return Err("must name a file".into());
    }
    Ok(p)
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err("must be an octal string like \"0640\"".into());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|e| e.to_string())?;
    // A repository that could set these could plant a setuid-root program.
    if mode & 0o7000 != 0 {
        return Err("setuid, setgid and sticky bits are not allowed".into());
    }
    Ok(mode)
}

fn parse_check(raw: RawCheck) -> Result<Check, String> {
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
        Some(s) => humantime::parse_duration(&s).map_err(|e| format!("[[check]] {name}: interval {s:?}: {e}"))?,
    };
    if interval.is_zero() {
        return Err(format!("[[check]] {name}: interval must be greater than zero"));
    }
    Ok(Check { name, probe, interval })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_strings() {
        assert_eq!(parse_mode("0640").unwrap(), 0o640);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("07777x").is_err());
    }

    #[test]
    fn destinations_are_absolute_and_inside() {
        assert_eq!(parse_dest("/etc/a").unwrap().to_string(), "etc/a");
        assert!(parse_dest("etc/a").is_err());
        assert!(parse_dest("/etc/../a").is_err());
        assert!(parse_dest("/").is_err());
    }

    #[test]
    fn checks_need_exactly_one_probe() {
        let raw = |http: Option<&str>, tcp: Option<&str>| RawCheck {
            name: "x".into(),
            http: http.map(Into::into),
            tcp: tcp.map(Into::into),
            command: None,
            interval: None,
        };
        assert!(parse_check(raw(Some("http://127.0.0.1/"), None)).is_ok());
        assert!(parse_check(raw(Some("http://a/"), Some("a:1"))).is_err());
        assert!(parse_check(raw(None, None)).is_err());
        assert!(parse_check(raw(None, Some("127.0.0.1:502"))).is_ok());
        assert!(parse_check(raw(None, Some("nope"))).is_err());
    }
}
