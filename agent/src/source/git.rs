//! The Git source, on gix.
//!
//! A bare repository under `state_dir/git` holds only what was fetched: one ref,
//! `refs/tend/source`, fetched with depth 1 over protocol v2, so a poll where the
//! branch has not moved is one ref listing and no pack. The repository is opened
//! isolated: no global or user git config, no environment, so nothing outside
//! the local agent config shapes what is fetched or how.

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gix::ObjectId;
use gix::protocol::transport::client::blocking_io::Transport;
use gix::protocol::transport::client::blocking_io::http::{Options as HttpOptions, reqwest::Options as ReqwestOptions};
use gix::protocol::transport::client::git;
use gix::remote::Direction;

mod bundle;
pub use bundle::Taken;

use super::{Fetched, SourceError};
use crate::bundle::{EntryKind, RelPath, Tree, TreeError};

const LOCAL_REF: &str = "refs/tend/source";
/// Shallow fetches accumulate one pack per new commit; past this many the
/// repository is started afresh (a depth-1 clone is cheap).
const MAX_PACKS: usize = 32;

#[derive(Debug, Clone)]
pub struct GitSource {
    dir: PathBuf,
    url: String,
    branch: String,
    token_file: Option<PathBuf>,
    ssh_key: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    timeout: Duration,
}

impl GitSource {
    pub fn new(cfg: &crate::config::Config) -> GitSource {
        GitSource {
            dir: cfg.state_dir.join("git"),
            url: cfg.source.url.clone(),
            branch: cfg.source.branch.clone(),
            token_file: cfg.source.token_file.clone(),
            ssh_key: cfg.source.ssh_key.clone(),
            ca_file: cfg.source.ca_file.clone(),
            timeout: cfg.source.timeout,
        }
    }

    /// The URL with any user:password part hidden, for messages.
    pub fn shown_url(&self) -> String {
        redact_url(&self.url)
    }

    fn overrides(&self) -> Vec<String> {
        let mut v = vec!["protocol.version=2".to_string()];
        let connect = self.timeout.as_secs().max(1);
        let mut ssh = format!(
            "ssh -o BatchMode=yes -o ConnectTimeout={connect} -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={}",
            shell_quote(&self.dir.join("known_hosts").to_string_lossy())
        );
        if let Some(key) = &self.ssh_key {
            ssh.push_str(&format!(" -o IdentitiesOnly=yes -i {}", shell_quote(&key.to_string_lossy())));
        }
        v.push(format!("core.sshCommand={ssh}"));
        v
    }

    fn open(&self) -> Result<gix::Repository, SourceError> {
        let fresh = !self.dir.join("HEAD").exists();
        if fresh {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| SourceError::permanent(format!("cannot create {}: {e}", self.dir.display())))?;
            gix::init_bare(&self.dir)
                .map_err(|e| SourceError::permanent(format!("cannot init {}: {e}", self.dir.display())))?;
        }
        gix::open_opts(&self.dir, gix::open::Options::isolated().config_overrides(self.overrides())).map_err(|e| {
            // gix says "does not appear to be a git repository" when it could
            // not open a file at all; out of descriptors is a passing state.
            match std::fs::File::open(self.dir.join("HEAD")) {
                Err(io)
                    if [nix::errno::Errno::EMFILE, nix::errno::Errno::ENFILE]
                        .iter()
                        .any(|n| io.raw_os_error() == Some(*n as i32)) =>
                {
                    SourceError::transient(format!("cannot open {}: {io}", self.dir.display()))
                }
                _ => SourceError::permanent(format!("cannot open {}: {e}", self.dir.display())),
            }
        })
    }

    /// Remove what a fetch killed mid-way leaves behind: lock files and
    /// temporary packs. Safe because only the process holding the store (one at a
    /// time, enforced by its lock) ever fetches into this repository.
    fn clear_stale_locks(&self) {
        fn walk(dir: &Path, depth: usize) {
            let Ok(rd) = std::fs::read_dir(dir) else { return };
            for e in rd.filter_map(Result::ok) {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() && depth < 6 {
                    walk(&p, depth + 1);
                } else if ft.is_file()
                    && (name.ends_with(".lock") || (name.starts_with("tmp") && dir.ends_with("pack")))
                {
                    tracing::debug!(path = %p.display(), "removing a leftover of an interrupted fetch");
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        walk(&self.dir, 0);
    }

    /// Start over when shallow fetches have piled up packs.
    fn maintain(&self) {
        self.clear_stale_locks();
        let packs = self.pack_count();
        if packs > MAX_PACKS {
            tracing::info!(packs, "compacting the fetched repository by fetching afresh");
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Poll the branch; fetch its tip (depth 1) if it moved. Blocking; bounded by
    /// `[source].timeout`.
    pub fn fetch(&self) -> Result<Fetched, SourceError> {
        self.fetch_depth(1)
    }

    /// Fetch the branch's tip with `depth` commits of its history (more
    /// than 1: even when the tip has not moved), to tell how it stands to a
    /// commit imported from a stick.
    pub fn deepen(&self, depth: u32) -> Result<Fetched, SourceError> {
        self.fetch_depth(depth.max(2))
    }

    fn fetch_depth(&self, depth: u32) -> Result<Fetched, SourceError> {
        self.maintain();
        let interrupt = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let this = self.clone();
        let flag = interrupt.clone();
        std::thread::Builder::new()
            .name("tend-fetch".into())
            .spawn(move || {
                let _ = tx.send(this.fetch_blocking(&flag, depth));
            })
            .map_err(|e| SourceError::transient(format!("cannot start fetch: {e}")))?;
        match rx.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(_) => {
                interrupt.store(true, Ordering::Relaxed);
                Err(SourceError::transient(format!(
                    "{}: timed out after {}",
                    self.shown_url(),
                    humantime::format_duration(self.timeout)
                )))
            }
        }
    }

    fn fetch_blocking(&self, interrupt: &AtomicBool, depth: u32) -> Result<Fetched, SourceError> {
        let url = self.shown_url();
        let repo = self.open()?;
        // What the server asked of the credentials callback, for messages.
        let asked = Arc::new(AtomicBool::new(false));
        let rejected = Arc::new(AtomicBool::new(false));
        let net = |e: gix::Error| {
            let ctx = super::explain::Context {
                has_token: self.token_file.is_some(),
                asked_for_credentials: asked.load(Ordering::Relaxed),
                credentials_rejected: rejected.load(Ordering::Relaxed),
            };
            // Authentication and "no such repository" will not fix themselves by
            // retrying sooner, but a server may come back: both are retried at the
            // poll interval; only local setup problems are permanent.
            match super::explain::explain(&e, &self.url, &ctx) {
                Some(why) => SourceError::transient(format!("{url}: {why}")),
                None => SourceError::transient(format!("{url}: {}", error_chain(&e))),
            }
        };
        let remote = repo
            .remote_at(self.url.as_str())
            .map_err(|e| SourceError::permanent(format!("[source].url {url:?}: {}", error_chain(&e))))?
            .with_refspecs(Some(format!("+refs/heads/{}:{LOCAL_REF}", self.branch).as_str()), Direction::Fetch)
            .map_err(|e| SourceError::permanent(format!("[source].branch {:?}: {}", self.branch, error_chain(&e))))?;
        let mut conn = match self.daemon_transport(&remote)? {
            Some(t) => remote.to_connection_with_transport(t),
            None => remote.connect(Direction::Fetch).map_err(net)?,
        };
        // TLS is rustls on ring (reqwest builds its TLS config even for http://).
        let _ = rustls::crypto::ring::default_provider().install_default();
        if self.url.starts_with("https://") {
            // System roots, plus [source].ca_file.
            if let Some(ca) = &self.ca_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    SourceError::permanent(format!("[source].ca_file {}: cannot read: {e}", ca.display()))
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    SourceError::permanent(format!("[source].ca_file {}: not PEM certificates: {e}", ca.display()))
                })?;
                let mut opts = repo
                    .transport_options(self.url.as_str(), None)
                    .ok()
                    .flatten()
                    .and_then(|o| o.downcast::<HttpOptions>().ok())
                    .map(|b| *b)
                    .unwrap_or_default();
                let configure = move |mut b: reqwest::blocking::ClientBuilder| {
                    for c in &certs {
                        b = b.add_root_certificate(c.clone());
                    }
                    Ok(b)
                };
                opts.backend = Some(Arc::new(std::sync::Mutex::new(ReqwestOptions {
                    configure_client: Some(Box::new(configure)),
                    configure_request: None,
                })));
                conn.set_transport_options(Box::new(opts));
            }
        }
        let token = match &self.token_file {
            Some(path) if self.url.starts_with("http") => Some(read_token(path)?),
            _ => None,
        };
        let (asked_cb, rejected_cb) = (asked.clone(), rejected.clone());
        let conn = conn.with_credentials(move |action| match (&token, action) {
            (_, gix::credentials::helper::Action::Erase(_)) => {
                rejected_cb.store(true, Ordering::Relaxed);
                Ok(None)
            }
            (None, gix::credentials::helper::Action::Get(_)) => {
                asked_cb.store(true, Ordering::Relaxed);
                Ok(None)
            }
            (Some((user, pass)), gix::credentials::helper::Action::Get(ctx)) => {
                asked_cb.store(true, Ordering::Relaxed);
                Ok(Some(gix::credentials::protocol::Outcome {
                    identity: gix::sec::identity::Account {
                        username: user.clone(),
                        password: pass.clone(),
                        oauth_refresh_token: None,
                    },
                    next: ctx.into(),
                }))
            }
            // No prompts, no credential helpers: only what the local config gives.
            _ => Ok(None),
        });
        let prepare = conn.prepare_fetch(gix::progress::Discard, Default::default()).map_err(net)?;
        let Some(remote_tip) = prepare.ref_map().mappings.iter().find_map(|m| m.remote.as_id()).map(|id| id.to_owned())
        else {
            return Err(SourceError::transient(format!("{url}: branch {:?} not found", self.branch)));
        };
        // The branch has not moved: the ref listing was the whole cost. (gix
        // would negotiate again for a shallow repository.)
        let local_tip = repo.try_find_reference(LOCAL_REF).ok().flatten().and_then(|mut r| r.peel_to_id().ok());
        if depth == 1 && local_tip.is_some_and(|id| id.detach() == remote_tip) && repo.find_commit(remote_tip).is_ok() {
            return Ok(Fetched { commit: remote_tip.to_string(), received_pack: false });
        }
        let outcome = prepare
            .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(NonZeroU32::new(depth.max(1)).expect("non-zero")))
            .receive(gix::progress::Discard, interrupt)
            .map_err(net)?;
        let received_pack = matches!(outcome.status, gix::remote::fetch::Status::Change { .. });
        let id = repo
            .find_reference(LOCAL_REF)
            .map_err(|e| SourceError::transient(format!("{url}: fetched ref missing: {}", error_chain(&e))))?
            .peel_to_id()
            .map_err(|e| SourceError::transient(format!("{url}: {}", error_chain(&e))))?;
        Ok(Fetched { commit: id.to_string(), received_pack })
    }

    /// A `git://` connection with Nagle's algorithm off; `None` for other URLs.
    ///
    /// A protocol v2 request goes out as several small packets. With Nagle on,
    /// the second waits for the server to acknowledge the first, and the server
    /// delays that acknowledgement because it has nothing to answer before the
    /// request is complete: 40 ms of nothing in every poll, three times the
    /// whole no-op sync (`git ls-remote git://` measured 48 ms over protocol
    /// v2, 5 ms over v0; git and gix both leave Nagle on). Otherwise as gix's
    /// own `git://` transport.
    fn daemon_transport(&self, remote: &gix::Remote<'_>) -> Result<Option<Box<dyn Transport + Send>>, SourceError> {
        use std::net::{TcpStream, ToSocketAddrs};
        let (url, version) = remote
            .sanitized_url_and_version(Direction::Fetch)
            .map_err(|e| SourceError::permanent(format!("[source].url {:?}: {}", self.shown_url(), error_chain(&e))))?;
        if url.scheme != gix::url::Scheme::Git {
            return Ok(None);
        }
        let shown = self.shown_url();
        let Some(host) = url.host() else {
            return Err(SourceError::permanent(format!("[source].url {shown:?}: no host")));
        };
        let port = url.port.unwrap_or(9418);
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| {
                SourceError::transient(format!(
                    "{shown}: cannot resolve the host name {host:?} ({e}): check it in [source].url, and this gateway's DNS (/etc/resolv.conf)"
                ))
            })?
            .next()
            .ok_or_else(|| SourceError::transient(format!("{shown}: {host} has no address")))?;
        let stream = TcpStream::connect_timeout(&addr, self.timeout.min(Duration::from_secs(30))).map_err(|e| {
            let why = super::explain::explain(&e, &self.url, &Default::default())
                .unwrap_or_else(|| format!("cannot connect: {e}"));
            SourceError::transient(format!("{shown}: {why}"))
        })?;
        stream.set_nodelay(true).map_err(|e| SourceError::transient(format!("{shown}: {e}")))?;
        let write = stream.try_clone().map_err(|e| SourceError::transient(format!("{shown}: {e}")))?;
        Ok(Some(Box::new(git::blocking_io::Connection::new(
            stream,
            write,
            version,
            url.path.clone(),
            Some((host.to_owned(), url.port)),
            git::ConnectMode::Daemon,
            false,
        ))))
    }

    /// The files of `commit`, which must have been fetched.
    pub fn tree(&self, commit: &str) -> Result<GitTree, SourceError> {
        let repo = self.open()?;
        let id = ObjectId::from_hex(commit.as_bytes())
            .map_err(|e| SourceError::permanent(format!("commit {commit}: {e}")))?;
        let tree_id = repo.find_commit(id).and_then(|c| c.tree_id().map(|t| t.detach())).map_err(|e| {
            SourceError::transient(format!("commit {commit}: not in the local repository: {}", error_chain(&e)))
        })?;
        Ok(GitTree { repo, root: tree_id, cache: RefCell::new(HashMap::new()) })
    }

    /// The committer time of `commit` (a wave is due after it), which must
    /// have been fetched.
    pub fn committed_at(&self, commit: &str) -> Result<jiff::Timestamp, SourceError> {
        let repo = self.open()?;
        let id = ObjectId::from_hex(commit.as_bytes())
            .map_err(|e| SourceError::permanent(format!("commit {commit}: {e}")))?;
        let time =
            repo.find_commit(id).map_err(|e| error_chain(&e)).and_then(|c| c.time().map_err(|e| error_chain(&e)));
        let time = time.map_err(|e| SourceError::transient(format!("commit {commit}: no committer time: {e}")))?;
        jiff::Timestamp::from_second(time.seconds)
            .map_err(|e| SourceError::permanent(format!("commit {commit}: committer time {}: {e}", time.seconds)))
    }

    /// The raw commit object of `commit` (headers, signature and message), as
    /// signed; it must have been fetched.
    pub fn commit_object(&self, commit: &str) -> Result<Vec<u8>, SourceError> {
        let repo = self.open()?;
        let id = ObjectId::from_hex(commit.as_bytes())
            .map_err(|e| SourceError::permanent(format!("commit {commit}: {e}")))?;
        let obj = repo.find_commit(id).map_err(|e| {
            SourceError::transient(format!("commit {commit}: not in the local repository: {}", error_chain(&e)))
        })?;
        Ok(obj.data.clone())
    }

    /// The pack files in the local repository.
    fn pack_count(&self) -> usize {
        std::fs::read_dir(self.dir.join("objects/pack"))
            .map(|rd| rd.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "pack")).count())
            .unwrap_or(0)
    }
}

/// `token_file`: either a bare token (sent as the password of user
/// `x-access-token`, which GitHub, Gitea and GitLab accept) or `user:token`.
fn read_token(path: &Path) -> Result<(String, String), SourceError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SourceError::permanent(format!("[source].token_file {}: cannot read: {e}", path.display())))?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(SourceError::permanent(format!("[source].token_file {}: empty", path.display())));
    }
    Ok(match line.split_once(':') {
        Some((u, p)) => (u.to_owned(), p.to_owned()),
        None => ("x-access-token".to_owned(), line.to_owned()),
    })
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Hide `user:password@` in URLs shown in messages.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((auth, host)) = rest.split_once('@')
        && !auth.contains('/')
    {
        let user = auth.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

/// One line from a gix error (its Display already carries the causes).
fn error_chain(e: &dyn std::error::Error) -> String {
    e.to_string().replace('\n', " ")
}

type Listing = Rc<Vec<(String, EntryKind, ObjectId)>>;

/// One commit's tree. Directory listings are decoded once and cached.
pub struct GitTree {
    repo: gix::Repository,
    root: ObjectId,
    cache: RefCell<HashMap<RelPath, Listing>>,
}

impl std::fmt::Debug for GitTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitTree").field("root", &self.root).finish()
    }
}

impl GitTree {
    fn listing(&self, dir: &RelPath) -> Result<Option<Listing>, TreeError> {
        if let Some(l) = self.cache.borrow().get(dir) {
            return Ok(Some(l.clone()));
        }
        let tree_id = if dir.is_root() {
            self.root
        } else {
            let parent = dir.parent().unwrap_or_default();
            let name = dir.segments().last().expect("not root");
            let Some(listing) = self.listing(&parent)? else { return Ok(None) };
            match listing.iter().find(|(n, _, _)| n == name) {
                Some((_, EntryKind::Dir, id)) => *id,
                _ => return Ok(None),
            }
        };
        let tree = self.repo.find_tree(tree_id).map_err(|e| TreeError::new(dir, error_chain(&e)))?;
        let decoded = tree.decode().map_err(|e| TreeError::new(dir, error_chain(&e)))?;
        let mut entries = Vec::with_capacity(decoded.entries.len());
        for e in &decoded.entries {
            let Ok(name) = std::str::from_utf8(e.filename) else {
                return Err(TreeError::new(dir, format!("file name {:?} is not valid UTF-8", e.filename)));
            };
            let kind = if e.mode.is_tree() {
                EntryKind::Dir
            } else if e.mode.is_link() {
                EntryKind::Symlink
            } else if e.mode.is_blob() {
                EntryKind::File { executable: e.mode.is_executable() }
            } else {
                EntryKind::Other
            };
            entries.push((name.to_owned(), kind, e.oid.to_owned()));
        }
        let listing = Rc::new(entries);
        self.cache.borrow_mut().insert(dir.clone(), listing.clone());
        Ok(Some(listing))
    }

    fn entry(&self, path: &RelPath) -> Result<Option<(EntryKind, ObjectId)>, TreeError> {
        let Some(parent) = path.parent() else { return Ok(Some((EntryKind::Dir, self.root))) };
        let name = path.segments().last().expect("not root");
        Ok(self.listing(&parent)?.and_then(|l| l.iter().find(|(n, _, _)| n == name).map(|(_, k, id)| (*k, *id))))
    }
}

impl Tree for GitTree {
    fn kind(&self, path: &RelPath) -> Result<Option<EntryKind>, TreeError> {
        Ok(self.entry(path)?.map(|(k, _)| k))
    }

    fn list(&self, path: &RelPath) -> Result<Vec<(String, EntryKind)>, TreeError> {
        let listing = self.listing(path)?.ok_or_else(|| TreeError::new(path, "not a directory"))?;
        let mut out = Vec::with_capacity(listing.len());
        for (name, kind, _) in listing.iter() {
            path.join(name).map_err(|e| TreeError::new(path, e))?;
            out.push((name.clone(), *kind));
        }
        Ok(out)
    }

    fn read(&self, path: &RelPath, limit: u64) -> Result<Vec<u8>, TreeError> {
        let (kind, id) = self.entry(path)?.ok_or_else(|| TreeError::new(path, "not found"))?;
        if !matches!(kind, EntryKind::File { .. } | EntryKind::Symlink) {
            return Err(TreeError::new(path, "not a file"));
        }
        // Check the size before inflating, so a huge blob costs nothing.
        let header = self.repo.find_header(id).map_err(|e| TreeError::new(path, error_chain(&e)))?;
        if header.size() > limit {
            return Err(TreeError::new(
                path,
                format!("{} bytes, larger than the limit of {limit} bytes", header.size()),
            ));
        }
        let obj = self.repo.find_object(id).map_err(|e| TreeError::new(path, error_chain(&e)))?;
        Ok(obj.detach().data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("https://bob:s3cret@git.example.com/x.git"), "https://bob:***@git.example.com/x.git");
        assert_eq!(redact_url("https://git.example.com/x.git"), "https://git.example.com/x.git");
        assert_eq!(redact_url("/srv/git/fleet"), "/srv/git/fleet");
    }
}

#[cfg(test)]
mod dropped {
    use super::*;

    /// A server that accepts and closes at once, as `git daemon` does past
    /// its `--max-connections`, or sends `reply` first.
    fn dropping_server(reply: &'static [u8]) -> (String, std::thread::JoinHandle<()>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            for s in l.incoming().take(1) {
                let mut s = s.unwrap();
                use std::io::Write;
                let _ = s.write_all(reply);
                drop(s);
            }
        });
        (addr.to_string(), h)
    }

    fn source(url: String, dir: &Path) -> GitSource {
        GitSource {
            dir: dir.to_owned(),
            url,
            branch: "main".into(),
            token_file: None,
            ssh_key: None,
            ca_file: None,
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_dropped_connection_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // git:// (the request is refused mid-way), http:// (no response).
        for scheme in ["git", "http"] {
            let (addr, h) = dropping_server(b"");
            let e = source(format!("{scheme}://{addr}/fleet"), dir.path()).fetch().unwrap_err();
            h.join().unwrap();
            assert!(e.is_transient());
            assert!(e.message.contains("the server closed the connection"), "{scheme}: {}", e.message);
            assert!(!e.message.contains("handshake"), "{}", e.message);
        }
        // Nobody listening is not a dropped connection.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = source(format!("git://127.0.0.1:{port}/fleet"), dir.path()).fetch().unwrap_err();
        assert!(!e.message.contains("closed the connection"), "{}", e.message);
    }
}
