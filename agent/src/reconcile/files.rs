//! Where files are written: observing destinations under `[files].root` and
//! carrying out a [`Plan`] on them.
//!
//! What must always hold:
//! - a destination is never half-written: content goes to a temporary file in
//!   the same directory, is made durable (one `syncfs` for all of a sync's files,
//!   or an fsync each), renamed over the destination, and the directory is
//!   fsynced;
//! - the inventory is written ahead of the disk (a file is recorded as owned,
//!   content unknown, before it is touched), so a crash at any moment leaves the
//!   store able to say which files are tend's;
//! - nothing is written through a symlink: a destination or a parent directory
//!   that is a symlink blocks the plan;
//! - a file tend does not own is only ever read (to keep its original), never
//!   changed or deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::plan::{Live, Op, Plan, Target, ancestors, shell_words};
use crate::bundle::RelPath;
use crate::hash::ContentHash;
pub use crate::store::Fingerprint;
use crate::store::{Inventory, Owned, Stat, Store, StoreError};

/// One failed file operation: the destination, what was being done, and why.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {action}: {reason}")]
    Io { path: String, action: &'static str, reason: String },
    #[error("on_change {command} failed: {reason}")]
    Hook { command: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FileError {
    fn io(path: &Path, action: &'static str, e: impl Reason) -> FileError {
        FileError::Io { path: path.display().to_string(), action, reason: e.reason() }
    }
}

/// Why a file step failed, for its message.
trait Reason {
    fn reason(self) -> String;
}

impl Reason for std::io::Error {
    /// A read-only file system says what to do: under systemd's
    /// `ProtectSystem=strict` every path tend writes needs `ReadWritePaths=`.
    fn reason(self) -> String {
        if self.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
            return format!("{self}: {}", crate::preflight::READ_ONLY_HINT);
        }
        self.to_string()
    }
}

impl Reason for &str {
    fn reason(self) -> String {
        self.to_owned()
    }
}

impl Reason for String {
    fn reason(self) -> String {
        self
    }
}

/// Runs `on_change` commands; the default runs them for real with a timeout.
pub trait Runner {
    /// Run `command`; `Ok(output)` when it exited 0, `Err(reason)` otherwise.
    fn run(&self, command: &[String]) -> Result<String, String>;
    /// Run a lifecycle hook (`[hooks]`) with `env` added, for at most
    /// `timeout`; as [`Runner::run`] otherwise.
    fn run_hook(&self, command: &[String], env: &[(&str, &str)], timeout: Duration) -> Result<String, String> {
        let _ = (env, timeout);
        self.run(command)
    }
}

/// Runs commands as child processes, output captured, killed after `timeout`.
#[derive(Debug, Clone)]
pub struct ProcessRunner {
    pub timeout: Duration,
}

impl Runner for ProcessRunner {
    fn run(&self, command: &[String]) -> Result<String, String> {
        self.run_hook(command, &[], self.timeout)
    }

    fn run_hook(&self, command: &[String], env: &[(&str, &str)], timeout: Duration) -> Result<String, String> {
        let out = crate::process::run_with(command, env, None, timeout).map_err(|e| match e {
            crate::process::RunError::Spawn(e) => format!("cannot start {:?}: {e}", command[0]),
            e => e.to_string(),
        })?;
        let mut output = out.stdout;
        output.push_str(&out.stderr);
        if out.status.success() { Ok(output) } else { Err(format!("{}; output: {}", out.status, output.trim())) }
    }
}

impl Fingerprint {
    pub fn len(&self) -> usize {
        self.files.len()
    }
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub written: usize,
    pub meta_set: usize,
    pub deleted: usize,
    pub hooks_run: usize,
}

/// The tree of destinations, `[files].root`.
#[derive(Debug, Clone)]
pub struct FileRoot {
    root: PathBuf,
}

impl FileRoot {
    pub fn new(root: impl Into<PathBuf>) -> FileRoot {
        FileRoot { root: root.into() }
    }

    pub fn full(&self, p: &RelPath) -> PathBuf {
        let mut out = self.root.clone();
        for s in p.segments() {
            out.push(s);
        }
        out
    }

    fn tmp_path(&self, p: &RelPath) -> PathBuf {
        crate::atomic::tmp_path(&self.full(p))
    }

    /// The stat of every desired file tend owns, and of the directories above
    /// them, as the inventory recorded them; `None` when one is not known
    /// (never verified, or an apply was interrupted).
    pub fn fingerprint<'a>(
        &self,
        desired: impl IntoIterator<Item = &'a RelPath>,
        inv: &Inventory,
    ) -> Option<Fingerprint> {
        if inv.dirty {
            return None;
        }
        let mut paths = String::new();
        let mut files = Vec::new();
        let mut dirs = std::collections::BTreeSet::new();
        for path in desired {
            files.push(inv.files.get(path)?.stat?);
            let _ = write!(paths, "{path}\0");
            dirs.extend(ancestors(path));
        }
        let mut inodes = Vec::with_capacity(dirs.len());
        for d in &dirs {
            let m = std::fs::symlink_metadata(self.full(d)).ok().filter(|m| m.file_type().is_dir())?;
            inodes.push(m.ino());
            let _ = write!(paths, "{d}\0");
        }
        paths.shrink_to_fit();
        files.shrink_to_fit();
        Some(Fingerprint { paths, files, dirs: inodes })
    }

    /// Whether every file and directory of `fp` is as recorded: the same
    /// inode, size, times, mode and owner for a file (any write, rename over,
    /// chmod or chown moves its ctime), the same directory (not a symlink) for
    /// a directory.
    pub fn unchanged(&self, fp: &Fingerprint) -> bool {
        let mut rel = fp.paths.split_terminator('\0');
        let mut full = self.root.clone();
        let mut at = |p: &str| -> std::io::Result<std::fs::Metadata> {
            full.clone_from(&self.root);
            full.push(p);
            std::fs::symlink_metadata(&full)
        };
        let files_ok = fp
            .files
            .iter()
            .all(|st| rel.next().is_some_and(|p| at(p).is_ok_and(|m| m.file_type().is_file() && stat_of(&m) == *st)));
        files_ok
            && fp
                .dirs
                .iter()
                .all(|ino| rel.next().is_some_and(|p| at(p).is_ok_and(|m| m.file_type().is_dir() && m.ino() == *ino)))
    }

    /// Look at each of `paths` as it is now. A file whose size, times and inode
    /// still match what the inventory recorded is not read again.
    pub fn observe<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a RelPath>,
        inv: &Inventory,
    ) -> Result<BTreeMap<RelPath, Live>, FileError> {
        let mut out = BTreeMap::new();
        let mut dirs_ok: HashSet<RelPath> = HashSet::new();
        for path in paths {
            out.insert(path.clone(), self.observe_one(path, inv.files.get(path), &mut dirs_ok)?);
        }
        Ok(out)
    }

    fn observe_one(
        &self,
        path: &RelPath,
        owned: Option<&Owned>,
        dirs_ok: &mut HashSet<RelPath>,
    ) -> Result<Live, FileError> {
        for dir in ancestors(path) {
            if dirs_ok.contains(&dir) {
                continue;
            }
            let full = self.full(&dir);
            match std::fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_dir() => {
                    dirs_ok.insert(dir);
                }
                Ok(m) if m.file_type().is_symlink() => return Ok(Live::Other("symlink in its parent directories")),
                Ok(_) => return Ok(Live::Other("non-directory in its parent directories")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Live::Missing),
                Err(e) => return Err(FileError::io(&full, "stat", e)),
            }
        }
        let full = self.full(path);
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Live::Missing),
            Err(e) => return Err(FileError::io(&full, "stat", e)),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            return Ok(Live::Other("symlink"));
        }
        if ft.is_dir() {
            return Ok(Live::Other("directory"));
        }
        if !ft.is_file() {
            return Ok(Live::Other("special file"));
        }
        let stat = stat_of(&meta);
        let hash = match owned {
            Some(Owned { hash: Some(h), stat: Some(s), .. }) if same_file(s, &stat) => *h,
            _ => ContentHash::of_file(&full).map_err(|e| FileError::io(&full, "read", e))?,
        };
        Ok(Live::File { hash, mode: stat.mode, uid: stat.uid, gid: stat.gid })
    }

    /// After a crash mid-apply, remove the temporary files it may have left.
    pub fn clean_temporaries<'a>(&self, paths: impl IntoIterator<Item = &'a RelPath>) {
        for p in paths {
            let tmp = self.tmp_path(p);
            if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_file()) {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }

    /// Carry out `plan`. `content` gives the bytes for a hash (from the rendered
    /// bundle or the store). The inventory in `inv` and in `store` is kept in step.
    /// Apply the file operations of `plan` (a revision of `commit`).
    pub fn apply(
        &self,
        commit: &str,
        plan: &Plan,
        content: &dyn Fn(&ContentHash) -> Result<Vec<u8>, String>,
        store: &dyn Store,
        inv: &mut Inventory,
        runner: &dyn Runner,
    ) -> Result<ApplyReport, FileError> {
        let mut report = ApplyReport::default();

        // 1. Keep the original of every file about to be taken over.
        for op in &plan.ops {
            let (path, original) = match op {
                Op::Write { path, adopt: Some(o), .. } | Op::SetMeta { path, adopt: Some(o), .. } => (path, o),
                Op::Adopt { path, original, .. } => (path, original),
                _ => continue,
            };
            if !store.has_blob(&original.hash)? {
                let full = self.full(path);
                let data = std::fs::read(&full).map_err(|e| FileError::io(&full, "read original", e))?;
                if ContentHash::of(&data) != original.hash {
                    return Err(FileError::io(&full, "read original", "changed while tend was planning; sync again"));
                }
                store.put_blob(&original.hash, &data)?;
            }
        }

        // 2. Write ahead: every file about to be touched is recorded as owned,
        //    and the hooks its change makes due.
        inv.dirty = true;
        if inv.pending_hooks.as_ref().is_some_and(|p| p.commit != commit) {
            inv.pending_hooks = None;
        }
        for op in &plan.ops {
            if let Op::Write { path, adopt, .. } | Op::SetMeta { path, adopt, .. } = op {
                let original = inv.files.get(path).and_then(|o| o.original.clone()).or_else(|| adopt.clone());
                inv.files.insert(path.clone(), Owned { hash: None, stat: None, original });
            }
            if let Op::Run { command, .. } = op {
                let due = inv.pending_hooks.get_or_insert_with(|| crate::store::PendingHooks {
                    commit: commit.to_owned(),
                    ..Default::default()
                });
                if !due.commands.contains(command) {
                    due.commands.push(command.clone());
                }
            }
        }
        store.set_inventory(inv)?;
        store.flush()?;

        // 3. Stage every new content as a temporary file beside its destination,
        //    then make them all durable at once (one syncfs instead of an fsync
        //    per file: slow flash pays per flush). Until the first rename nothing
        //    is visible, so a failure here leaves the gateway as it was.
        let mut touched_dirs: HashSet<PathBuf> = HashSet::new();
        let mut hooks = Vec::new();
        let result = (|| -> Result<(), FileError> {
            let mut staged = Vec::new();
            for op in &plan.ops {
                match op {
                    Op::Write { path, target, .. } => {
                        self.ensure_parents(path, inv)?;
                        let data =
                            content(&target.hash).map_err(|e| FileError::io(&self.full(path), "load content", e))?;
                        staged.push(self.stage(path, &data, target.mode, target.uid, target.gid)?);
                    }
                    Op::Delete { path, restore: Some(o) } => {
                        let data = store.get_blob(&o.hash)?.ok_or_else(|| {
                            FileError::io(
                                &self.full(path),
                                "restore original",
                                "original content missing from the store",
                            )
                        })?;
                        staged.push(self.stage(path, &data, o.mode, Some(o.uid), Some(o.gid))?);
                    }
                    _ => {}
                }
            }
            if !staged.is_empty() {
                self.make_durable(&staged)?;
            }

            // 4. The operations, in plan order; hooks after every write.
            for op in &plan.ops {
                let _span = tracing::debug_span!("file", op = %op).entered();
                match op {
                    Op::Write { path, target, .. } => {
                        let stat = self.commit(path)?;
                        touched_dirs.insert(self.full(path).parent().map(Path::to_path_buf).unwrap_or_default());
                        set_owned(inv, path, target.hash, stat.filter(|s| as_meant(s, target)));
                        report.written += 1;
                    }
                    Op::SetMeta { path, target, .. } => {
                        let full = self.full(path);
                        set_meta_path(&full, target.mode, target.uid, target.gid)?;
                        let m = std::fs::symlink_metadata(&full).map_err(|e| FileError::io(&full, "stat", e))?;
                        set_owned(inv, path, target.hash, Some(stat_of(&m)).filter(|s| as_meant(s, target)));
                        report.meta_set += 1;
                    }
                    Op::Adopt { path, target, original } => {
                        let full = self.full(path);
                        let m = std::fs::symlink_metadata(&full).map_err(|e| FileError::io(&full, "stat", e))?;
                        inv.files.insert(
                            path.clone(),
                            Owned {
                                hash: Some(target.hash),
                                stat: Some(stat_of(&m)).filter(|s| as_meant(s, target)),
                                original: Some(original.clone()),
                            },
                        );
                    }
                    Op::Delete { path, restore } => {
                        let full = self.full(path);
                        match restore {
                            Some(_) => {
                                self.commit(path)?;
                            }
                            None => match std::fs::remove_file(&full) {
                                Ok(()) => {}
                                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                                Err(e) => return Err(FileError::io(&full, "delete", e)),
                            },
                        }
                        touched_dirs.insert(full.parent().map(Path::to_path_buf).unwrap_or_default());
                        inv.files.remove(path);
                        report.deleted += 1;
                    }
                    Op::Forget { path } => {
                        inv.files.remove(path);
                    }
                    Op::RemoveDir { path } => {
                        // Only when empty: someone else's file inside keeps it.
                        let full = self.full(path);
                        if std::fs::remove_dir(&full).is_ok() {
                            touched_dirs.remove(&full);
                            touched_dirs.insert(full.parent().map(Path::to_path_buf).unwrap_or_default());
                        }
                        inv.dirs.remove(path);
                    }
                    Op::Run { command, because } => hooks.push((command, because)),
                }
            }
            for dir in &touched_dirs {
                crate::atomic::fsync_dir(dir)?;
            }
            Ok(())
        })();
        if result.is_err() {
            // Staged files that were never renamed into place.
            self.clean_temporaries(plan.ops.iter().filter_map(|op| match op {
                Op::Write { path, .. } | Op::Delete { path, restore: Some(_) } => Some(path),
                _ => None,
            }));
        }
        inv.dirty = result.is_err();
        store.set_inventory(inv)?;
        store.flush()?;
        result?;

        // 5. Hooks, once each, after every write is durable (with those an
        //    earlier apply left due).
        drop(hooks);
        report.hooks_run += self.run_pending_hooks(commit, store, inv, runner)?;
        Ok(report)
    }

    /// Run the `on_change` commands an apply of `commit` made due, each
    /// removed (durably) once it ran; returns how many ran. Those of another
    /// revision are dropped. A failing one ends the apply (and is not due
    /// again: the revision is rolled back).
    pub fn run_pending_hooks(
        &self,
        commit: &str,
        store: &dyn Store,
        inv: &mut Inventory,
        runner: &dyn Runner,
    ) -> Result<usize, FileError> {
        let mut ran = 0;
        if inv.pending_hooks.as_ref().is_some_and(|p| p.commit != commit) {
            inv.pending_hooks = None;
            store.set_inventory(inv)?;
        }
        if let Some(p) = inv.pending_hooks.as_mut() {
            if p.tries >= 2 {
                tracing::warn!(commands = ?p.commands, "on_change commands did not complete in two tries (did they stop tend?): dropped");
                inv.pending_hooks = None;
            } else {
                p.tries += 1;
            }
            store.set_inventory(inv)?;
            store.flush()?;
        }
        while let Some(command) = inv.pending_hooks.as_ref().and_then(|p| p.commands.first().cloned()) {
            let shown = shell_words(&command);
            tracing::debug!(command = %shown, "running on_change");
            let result = runner.run(&command);
            if let Some(p) = inv.pending_hooks.as_mut() {
                p.commands.remove(0);
                if p.commands.is_empty() {
                    inv.pending_hooks = None;
                }
            }
            store.set_inventory(inv)?;
            store.flush()?;
            match result {
                Ok(output) => {
                    for line in output.lines().filter(|l| !l.trim().is_empty()) {
                        tracing::debug!(command = %shown, "on_change output: {line}");
                    }
                    ran += 1;
                }
                Err(reason) => {
                    inv.pending_hooks = None;
                    store.set_inventory(inv)?;
                    return Err(FileError::Hook { command: shown, reason });
                }
            }
        }
        Ok(ran)
    }

    /// Create the missing parents of `path`, recording the ones tend made.
    fn ensure_parents(&self, path: &RelPath, inv: &mut Inventory) -> Result<(), FileError> {
        if !self.root.is_dir() {
            let why = if std::fs::symlink_metadata(&self.root).is_err() {
                "does not exist: create it, or set [files].root in the config to the directory the allowed paths live under (default /)"
            } else {
                "not a directory: set [files].root in the config to a directory"
            };
            return Err(FileError::io(&self.root, "[files].root", why));
        }
        for dir in ancestors(path) {
            let full = self.full(&dir);
            match std::fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => return Err(FileError::io(&full, "create directory", "exists and is not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&full)
                        .map_err(|e| FileError::io(&full, "create directory", e))?;
                    if let Some(parent) = full.parent() {
                        crate::atomic::fsync_dir(parent)?;
                    }
                    inv.dirs.insert(dir);
                }
                Err(e) => return Err(FileError::io(&full, "stat", e)),
            }
        }
        Ok(())
    }

    /// Write `data` to the temporary file beside `path`, with its final mode and
    /// ownership. Not yet durable, not yet visible.
    fn stage(
        &self,
        path: &RelPath,
        data: &[u8],
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<PathBuf, FileError> {
        crate::atomic::stage(&self.full(path), data, mode, uid, gid).map_err(FileError::from)
    }

    /// Flush staged files to stable storage: one `syncfs` for the filesystem of
    /// the root, or an fsync per file where that is not available.
    fn make_durable(&self, staged: &[PathBuf]) -> Result<(), FileError> {
        let root = std::fs::File::open(&self.root).map_err(|e| FileError::io(&self.root, "open", e))?;
        let same_fs = {
            use std::os::unix::fs::MetadataExt;
            let dev = root.metadata().map(|m| m.dev()).ok();
            staged.iter().all(|p| std::fs::symlink_metadata(p).map(|m| m.dev()).ok() == dev)
        };
        if same_fs && nix::unistd::syncfs(&root).is_ok() {
            return Ok(());
        }
        for p in staged {
            std::fs::File::open(p).and_then(|f| f.sync_all()).map_err(|e| FileError::io(p, "fsync", e))?;
        }
        Ok(())
    }

    /// Rename the staged file over `path`: the one atomic step. The stat
    /// of what is there after it, if that is still the file tend staged
    /// (the same inode, size, mtime, mode and owner; a rename moves only
    /// the ctime); `None` when anything touched it in between, so the next
    /// poll reads it rather than trusting a stat taken of someone else's
    /// change.
    fn commit(&self, path: &RelPath) -> Result<Option<Stat>, FileError> {
        let full = self.full(path);
        let staged = std::fs::symlink_metadata(self.tmp_path(path)).ok().map(|m| stat_of(&m));
        crate::atomic::commit(&full)?;
        crate::sim::point("stat a file renamed into place");
        let m = std::fs::symlink_metadata(&full).map_err(|e| FileError::io(&full, "stat", e))?;
        let after = stat_of(&m);
        Ok(staged.filter(|b| Stat { ctime_ns: after.ctime_ns, ..*b } == after).map(|_| after))
    }
}

fn set_owned(inv: &mut Inventory, path: &RelPath, hash: ContentHash, stat: Option<Stat>) {
    let original = inv.files.get(path).and_then(|o| o.original.clone());
    inv.files.insert(path.clone(), Owned { hash: Some(hash), stat, original });
}

/// Whether a stat taken after tend set a file shows the mode and owner tend
/// set. A stat that does not (a chmod or chown landed between tend's step
/// and its stat) is not recorded: the idle fast path would otherwise take
/// that change for tend's own and stop seeing it as drift.
fn as_meant(s: &Stat, t: &Target) -> bool {
    s.mode == t.mode && t.uid.is_none_or(|u| u == s.uid) && t.gid.is_none_or(|g| g == s.gid)
}

fn set_meta_path(full: &Path, mode: u32, uid: Option<u32>, gid: Option<u32>) -> Result<(), FileError> {
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::lchown(full, uid, gid).map_err(|e| FileError::io(full, "chown", e))?;
    }
    std::fs::set_permissions(full, std::fs::Permissions::from_mode(mode)).map_err(|e| FileError::io(full, "chmod", e))
}

impl From<crate::atomic::Failed> for FileError {
    fn from(f: crate::atomic::Failed) -> FileError {
        FileError::io(&f.path, f.step, f.error)
    }
}

pub fn stat_of(m: &std::fs::Metadata) -> Stat {
    Stat {
        size: m.size(),
        mtime_ns: m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec()),
        ctime_ns: m.ctime().saturating_mul(1_000_000_000).saturating_add(m.ctime_nsec()),
        ino: m.ino(),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
    }
}

/// The content is unchanged if size, inode, mtime and ctime all match: any write,
/// rename over or chmod moves ctime, which cannot be set from user space.
fn same_file(a: &Stat, b: &Stat) -> bool {
    a.size == b.size && a.ino == b.ino && a.mtime_ns == b.mtime_ns && a.ctime_ns == b.ctime_ns
}

/// Resolve `owner` and `group` names (or numeric ids) to ids on this gateway.
pub fn resolve_ids(
    owner: Option<&str>,
    group: Option<&str>,
    cache: &mut HashMap<String, u32>,
) -> Result<(Option<u32>, Option<u32>), String> {
    let mut one = |name: Option<&str>, is_user: bool| -> Result<Option<u32>, String> {
        let Some(name) = name else { return Ok(None) };
        if let Ok(id) = name.parse::<u32>() {
            return Ok(Some(id));
        }
        let key = format!("{}:{name}", if is_user { "u" } else { "g" });
        if let Some(id) = cache.get(&key) {
            return Ok(Some(*id));
        }
        let id = if is_user {
            nix::unistd::User::from_name(name).map_err(|e| e.to_string())?.map(|u| u.uid.as_raw())
        } else {
            nix::unistd::Group::from_name(name).map_err(|e| e.to_string())?.map(|g| g.gid.as_raw())
        }
        .ok_or_else(|| format!("{} {name:?} does not exist on this gateway", if is_user { "user" } else { "group" }))?;
        cache.insert(key, id);
        Ok(Some(id))
    };
    Ok((one(owner, true)?, one(group, false)?))
}

/// The desired files as plan targets (owner and group resolved).
pub fn targets(desired: &crate::bundle::Desired) -> Result<BTreeMap<RelPath, Target>, crate::bundle::BundleError> {
    let mut cache = HashMap::new();
    let mut out = BTreeMap::new();
    for (path, f) in &desired.files {
        let (uid, gid) = resolve_ids(f.owner.as_deref(), f.group.as_deref(), &mut cache)
            .map_err(|reason| crate::bundle::BundleError::new(&f.from, reason))?;
        out.insert(
            path.clone(),
            Target { hash: f.hash, mode: f.mode, uid, gid, on_change: f.on_change.clone(), sealed: f.sealed },
        );
    }
    Ok(out)
}
