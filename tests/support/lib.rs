//! Support for the end-to-end suites: real Git servers on 127.0.0.1 (git daemon,
//! git-http-backend behind lighttpd), fleet repositories made with the real `git`,
//! and gateways that run the real `tend` binary against a temporary root.
//!
//! Every server binds 127.0.0.1 only and is killed when its handle drops.

pub mod k3s;
pub mod monitor;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `tend` binary that cargo built for these integration tests (they belong
/// to the `tend` package): `target/<profile>/tend`, beside `deps/`.
pub fn tend_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable");
        let bin = exe.parent().and_then(Path::parent).expect("target/<profile>/deps").join("tend");
        assert!(bin.exists(), "{} not found: run the suites with `cargo test -p tend`", bin.display());
        bin
    })
    .clone()
}

/// The repository's root (this crate is its `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// Run a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Whether process `pid` runs (a zombie, killed and not yet reaped, does not).
pub fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// The checkout's commit, as `tend --version` names it (12 hex digits).
pub fn head_commit() -> String {
    run(Command::new("git").args(["rev-parse", "--short=12", "HEAD"])).trim().to_owned()
}

/// A tmpfs of `size` (`"16m"`) mounted on a directory for one test (the
/// suite runs as root), unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs on {} (the suite runs as root)", dir.display());
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

pub(crate) fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on 127.0.0.1:{port}");
}

/// A fleet repository: a real Git work tree that tests write to and commit.
pub struct Fleet {
    pub dir: PathBuf,
}

impl Fleet {
    /// A new repository under `parent/name` with branch `main`.
    pub fn new(parent: &Path, name: &str) -> Fleet {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new("git").args(["init", "-q", "-b", "main"]).arg(&dir));
        Fleet { dir }
    }

    fn git(&self) -> Command {
        let mut c = Command::new("git");
        c.current_dir(&self.dir).args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "commit.gpgsign=false",
        ]);
        c
    }

    /// Write a file (creating parents).
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        self
    }

    pub fn chmod(&self, rel: &str, mode: u32) -> &Self {
        std::fs::set_permissions(self.dir.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, &p).unwrap();
        self
    }

    pub fn remove(&self, rel: &str) -> &Self {
        let p = self.dir.join(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
        self
    }

    /// Commit everything; returns the commit id.
    pub fn commit(&self, msg: &str) -> String {
        run(self.git().args(["add", "-A"]));
        run(self.git().args(["commit", "-q", "--allow-empty", "-m", msg]));
        self.head()
    }

    pub fn head(&self) -> String {
        run(self.git().args(["rev-parse", "HEAD"])).trim().to_owned()
    }

    /// Move the branch back to `commit` (a revert without a new commit).
    pub fn reset_hard(&self, commit: &str) {
        run(self.git().args(["reset", "-q", "--hard", commit]));
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// `git daemon` serving every repository under `base` on 127.0.0.1.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
    /// With [`GitDaemon::start_logged`]: its `--verbose` log.
    pub log: Option<PathBuf>,
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        Self::start_on(base, free_port())
    }

    /// On a given port (to bring a killed server back where clients expect it).
    pub fn start_on(base: &Path, port: u16) -> GitDaemon {
        Self::start_with(base, port, None, None)
    }

    /// Logging every connection to `log` (see [`GitDaemon::connections`]).
    pub fn start_logged(base: &Path, log: &Path) -> GitDaemon {
        Self::start_with(base, free_port(), Some(log), None)
    }

    /// Logging, and serving at most `max` clients at once (`--max-connections`;
    /// git daemon's default is 32): past it, git daemon closes a new
    /// connection ("Too many children, dropping connection" in the log).
    pub fn start_limited(base: &Path, log: &Path, max: u32) -> GitDaemon {
        Self::start_with(base, free_port(), Some(log), Some(max))
    }

    fn start_with(base: &Path, port: u16, log: Option<&Path>, max: Option<u32>) -> GitDaemon {
        // Run git-daemon itself: `git daemon` is a wrapper whose child would
        // outlive a kill of the wrapper.
        let exec_path = run(Command::new("git").arg("--exec-path")).trim().to_owned();
        let stderr = match log {
            Some(l) => Stdio::from(std::fs::File::create(l).unwrap()),
            None => Stdio::null(),
        };
        let mut child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .args(["--export-all", "--reuseaddr", "--informative-errors"])
            .args(log.map(|_| "--verbose"))
            .args(max.map(|m| format!("--max-connections={m}")))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start git daemon (is git installed?)");
        wait_for_port(port, &mut child, "git daemon");
        GitDaemon { child, port, log: log.map(Path::to_owned) }
    }

    /// Connections served so far (the port probe of the start excluded):
    /// requests for a repository in the `--verbose` log.
    pub fn connections(&self) -> usize {
        let log = self.log.as_ref().expect("started with start_logged");
        std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains("Request upload-pack")).count()
    }

    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    Off,
    Valid,
    Expired,
}

/// lighttpd running git-http-backend (smart HTTP) for every repository under `base`.
pub struct HttpGit {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl HttpGit {
    pub fn start(base: &Path) -> HttpGit {
        Self::start_with_auth(base, None)
    }

    /// With `auth = Some((user, password))`, every request needs HTTP basic auth.
    pub fn start_with_auth(base: &Path, auth: Option<(&str, &str)>) -> HttpGit {
        Self::start_full(base, auth, Tls::Off)
    }

    /// HTTPS with a certificate for 127.0.0.1 signed by a CA made for this
    /// server (its PEM at [`HttpGit::ca_file`]), and optional basic auth.
    pub fn start_tls(base: &Path, auth: Option<(&str, &str)>) -> HttpGit {
        Self::start_full(base, auth, Tls::Valid)
    }

    /// HTTPS whose certificate (for 127.0.0.1, from [`HttpGit::ca_file`]'s CA)
    /// expired on 2020-01-02.
    pub fn start_tls_expired(base: &Path) -> HttpGit {
        Self::start_full(base, None, Tls::Expired)
    }

    /// The CA certificate that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self._dir.path().join("ca.pem")
    }

    fn start_full(base: &Path, auth: Option<(&str, &str)>, tls: Tls) -> HttpGit {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let backend = ["/usr/lib/git-core/git-http-backend", "/usr/libexec/git-core/git-http-backend"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("git-http-backend not found");
        let conf = format!(
            r#"server.modules = ("mod_cgi", "mod_alias", "mod_setenv")
server.bind = "127.0.0.1"
server.port = {port}
server.username = ""
server.document-root = "{root}"
server.errorlog = "{root}/error.log"
alias.url = ("/git/" => "{backend}/")
$HTTP["url"] =~ "^/git/" {{
  cgi.assign = ("" => "")
  setenv.add-environment = ("GIT_PROJECT_ROOT" => "{base}", "GIT_HTTP_EXPORT_ALL" => "1")
}}
"#,
            root = dir.path().display(),
            base = base.display(),
        );
        let conf = match auth {
            None => conf,
            Some((user, password)) => {
                let users = dir.path().join("users");
                std::fs::write(&users, format!("{user}:{password}\n")).unwrap();
                conf.replace("server.modules = (", "server.modules = (\"mod_auth\", \"mod_authn_file\", ")
                    + &format!(
                        "auth.backend = \"plain\"\nauth.backend.plain.userfile = \"{}\"\n\
                         auth.require = (\"/git/\" => (\"method\" => \"basic\", \"realm\" => \"git\", \"require\" => \"valid-user\"))\n",
                        users.display()
                    )
            }
        };
        let conf = if tls != Tls::Off {
            make_ca_and_server_cert(dir.path());
            if tls == Tls::Expired {
                expire_server_cert(dir.path());
            }
            conf.replace("server.modules = (", "server.modules = (\"mod_openssl\", ")
                + &format!(
                    "ssl.engine = \"enable\"\nssl.pemfile = \"{d}/server.pem\"\nssl.privkey = \"{d}/server.key\"\n",
                    d = dir.path().display()
                )
        } else {
            conf
        };
        let conf_path = dir.path().join("lighttpd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let lighttpd = ["/usr/sbin/lighttpd", "/usr/bin/lighttpd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("lighttpd not installed (tests/run installs it)");
        let mut child = Command::new(lighttpd)
            .arg("-D")
            .arg("-f")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start lighttpd");
        wait_for_port(port, &mut child, "lighttpd");
        HttpGit { child, port, _dir: dir }
    }

    pub fn url(&self, repo: &str) -> String {
        let scheme = if self._dir.path().join("server.pem").exists() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/git/{repo}", self.port)
    }
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One gateway: a config, a state directory and a root that files go to.
pub struct Gateway {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
}

/// The outcome of one `tend` invocation.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Gateway {
    /// A gateway under `parent` syncing `url`, device `gw-1`, files allowed under
    /// /etc/myapp and /opt/myapp; `extra` is appended to the config.
    pub fn new(parent: &Path, url: &str, extra: &str) -> Gateway {
        Self::with_source_keys(parent, url, "", extra)
    }

    /// Like [`Gateway::new`], with `source_keys` added to `[source]`.
    pub fn with_source_keys(parent: &Path, url: &str, source_keys: &str, extra: &str) -> Gateway {
        let dir = parent.join("gateway");
        let root = dir.join("root");
        let state = dir.join("state");
        std::fs::create_dir_all(&root).unwrap();
        let config = dir.join("agent.toml");
        let gw = Gateway { dir, root, state, config };
        gw.write_config(url, source_keys, extra);
        gw
    }

    pub fn write_config(&self, url: &str, source_keys: &str, extra: &str) {
        let text = format!(
            r#"device_id = "gw-1"
fleet = "test"
state_dir = "{state}"
labels = {{ site = "berlin" }}

[source]
url = "{url}"
branch = "main"
path = "devices/{{device_id}}"
timeout = "10s"
{source_keys}

[files]
root = "{root}"
allow = ["/etc/myapp", "/opt/myapp"]
{hooks}{extra}
"#,
            state = self.state.display(),
            root = self.root.display(),
            // Most suites use command checks and hooks; the ones about hooks
            // being off say `allow_hooks = false` in `extra`.
            hooks = if extra.contains("allow_hooks") { "" } else { "allow_hooks = true\n" },
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(tend_bin());
        c.env("TEND_CONFIG", &self.config).env_remove("TEND_LOG").stdin(Stdio::null());
        c
    }

    pub fn tend(&self, args: &[&str]) -> Run {
        self.command().args(args).output().expect("run tend").into()
    }

    /// `tend sync --json`, which must succeed.
    pub fn sync_ok(&self) -> serde_json::Value {
        let r = self.tend(&["sync", "--json"]);
        assert_eq!(r.code, 0, "sync failed: {}\n{}", r.stdout, r.stderr);
        r.json()
    }

    pub fn path(&self, dest: &str) -> PathBuf {
        self.root.join(dest.trim_start_matches('/'))
    }

    pub fn read(&self, dest: &str) -> String {
        std::fs::read_to_string(self.path(dest)).unwrap_or_else(|e| panic!("{dest}: {e}"))
    }

    pub fn mode(&self, dest: &str) -> u32 {
        std::fs::metadata(self.path(dest)).unwrap().permissions().mode() & 0o7777
    }

    /// Every file, directory and symlink under the root with its mode and content.
    pub fn snapshot(&self) -> BTreeMap<String, (u32, Vec<u8>)> {
        snapshot(&self.root)
    }
}

/// Every entry under `dir`: relative path → (mode with type bits, content or link target).
pub fn snapshot(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let content = if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()
            } else if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                stack.push(p.clone());
                Vec::new()
            };
            out.insert(rel, (m.mode(), content));
        }
    }
    out
}

/// Number of pack files in a repository's object store.
pub fn pack_count(git_dir: &Path) -> usize {
    std::fs::read_dir(git_dir.join("objects/pack"))
        .map(|rd| rd.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "pack")).count())
        .unwrap_or(0)
}

/// A commit of the bundle every gateway of a fleet test shares (`shared/`):
/// `app.conf` says `version`, the health check runs `check` (a TOML array
/// of strings: `["true"]`), and `rollout` goes into its `tend.toml`.
pub fn shared_commit(fleet: &Fleet, version: &str, check: &str, rollout: &str) -> String {
    fleet.write("shared/files/etc/myapp/app.conf", format!("version = {version}\n")).write(
        "shared/tend.toml",
        format!("[[check]]\nname = \"app\"\ncommand = {check}\ninterval = \"1s\"\n\n{rollout}"),
    );
    fleet.commit(version)
}

/// A gateway `dev` of the shared bundle ([`shared_commit`]) under
/// `parent/dev`, polling every second, in `wave` (its label), reporting to
/// the broker at `mqtt`, with `health_timeout`.
pub fn shared_gateway(
    parent: &Path,
    fleet: &Fleet,
    mqtt: &str,
    dev: &str,
    wave: &str,
    health_timeout: &str,
) -> Gateway {
    let gw = Gateway::new(
        &parent.join(dev),
        &fleet.url(),
        &format!(
            "[apply]\nhealth_timeout = \"{health_timeout}\"\n[mqtt]\nurl = \"{mqtt}\"\nhealth_interval = \"30s\"\n"
        ),
    );
    let text = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace("device_id = \"gw-1\"", &format!("device_id = \"{dev}\""))
        .replace("labels = { site = \"berlin\" }", &format!("labels = {{ wave = \"{wave}\" }}"))
        .replace("path = \"devices/{device_id}\"", "path = \"shared\"\ninterval = \"1s\"\njitter = \"0s\"");
    std::fs::write(&gw.config, text).unwrap();
    gw
}

/// A minimal good bundle for device gw-1.
pub fn good_bundle(fleet: &Fleet) {
    fleet
        .write("devices/gw-1/tend.toml", "[[file]]\npath = \"/etc/myapp/app.conf\"\nmode = \"0640\"\n")
        .write("devices/gw-1/files/etc/myapp/app.conf", "port = 502\n")
        .write("devices/gw-1/files/opt/myapp/run.sh", "#!/bin/sh\necho hi\n")
        .chmod("devices/gw-1/files/opt/myapp/run.sh", 0o755);
}

/// sshd on 127.0.0.1 with its own host key, accepting one client key for the
/// current user, passing GIT_PROTOCOL through (so protocol v2 and depth work).
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// The client's private key.
    pub client_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sshd {
    pub fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all("/run/sshd").ok();
        for (name, kind) in [("host_key", "ed25519"), ("client_key", "ed25519")] {
            run(Command::new("ssh-keygen").args(["-q", "-t", kind, "-N", "", "-f"]).arg(d.join(name)));
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let port = free_port();
        let conf = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n\
             AcceptEnv GIT_PROTOCOL\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), conf).unwrap();
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd not installed (tests/run installs openssh-server)");
        let mut child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        wait_for_port(port, &mut child, "sshd");
        Sshd { child, port, client_key: d.join("client_key"), _dir: dir }
    }

    pub fn url(&self, path: &Path) -> String {
        let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into());
        format!("ssh://{user}@127.0.0.1:{}{}", self.port, path.display())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In `dir`: `ca.pem`/`ca.key`, and `server.pem`/`server.key` for IP 127.0.0.1
/// signed by that CA (made with the openssl command line).
/// Sign `dir/server.csr` again with `dir/ca.pem`, valid 2020-01-01 to
/// 2020-01-02 only (`openssl ca` takes explicit dates; `x509 -days` does not).
fn expire_server_cert(dir: &Path) {
    let db = dir.join("ca-db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("index.txt"), "").unwrap();
    std::fs::write(db.join("serial"), "01\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = tca\n[tca]\ndatabase = ca-db/index.txt\nnew_certs_dir = ca-db\nserial = ca-db/serial\n\
         default_md = sha256\npolicy = any\ncopy_extensions = none\nx509_extensions = ext\nunique_subject = no\n\
         [any]\ncommonName = supplied\n[ext]\nsubjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n",
    )
    .unwrap();
    run(Command::new("openssl").current_dir(dir).args([
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-cert",
        "ca.pem",
        "-keyfile",
        "ca.key",
        "-in",
        "server.csr",
        "-out",
        "server.pem",
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200102000000Z",
    ]));
}

pub fn make_ca_and_server_cert(dir: &Path) {
    let ossl = |args: &[&str]| {
        run(Command::new("openssl").current_dir(dir).args(args));
    };
    ossl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tend test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    ossl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n").unwrap();
    ossl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
}

/// A running `tend run`, its stderr in a log file; SIGKILLed if still running
/// when dropped.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Gateway {
    /// Start `tend run` and wait until its control socket answers.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_logging("debug")
    }

    /// [`Gateway::start_daemon`] with `TEND_LOG` set to `filter`.
    pub fn start_daemon_logging(&self, filter: &str) -> Daemon {
        self.start_daemon_env(filter, &[])
    }

    /// [`Gateway::start_daemon_logging`] with `env` added to the daemon's
    /// environment (a `PATH` with a stand-in command first).
    pub fn start_daemon_env(&self, filter: &str, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let log = self.dir.join(format!("daemon-{}.log", fastrand::u32(..)));
        let err = std::fs::File::create(&log).unwrap();
        let socket = self.state.join("control.sock");
        // The socket a killed daemon left: a child it was spawning at that
        // moment (a health check between fork and exec) may still hold it
        // open for a moment, and a connect would reach that, not this daemon.
        // This daemon's socket is a new file.
        let identity = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::symlink_metadata(p).ok().map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
        };
        let stale = identity(&socket);
        let child = self
            .command()
            .arg("run")
            .env("TEND_LOG", filter)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let d = Daemon { child, log };
        let start = Instant::now();
        loop {
            if (stale.is_none() || identity(&socket) != stale)
                && std::os::unix::net::UnixStream::connect(&socket).is_ok()
            {
                return d;
            }
            // Bounds a hang only: a daemon may take its time (a loaded
            // machine, a store to enforce first).
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "daemon never opened {}: {}",
                socket.display(),
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until `cond` holds on `tend status --json` (through the daemon).
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let r = self.tend(&["status", "--json"]);
            if r.code == 0 {
                let v = r.json();
                if cond(&v) {
                    return v;
                }
                assert!(start.elapsed() < timeout, "timed out waiting for {what}; last status: {v}");
            } else {
                assert!(start.elapsed() < timeout, "timed out waiting for {what}; tend status: {r:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until `cond` holds on the gateway's files.
    pub fn wait_files(&self, what: &str, timeout: Duration, cond: impl Fn(&Gateway) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Daemon {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `cond` holds on the daemon's log.
    pub fn wait_log(&self, what: &str, timeout: Duration, cond: impl Fn(&str) -> bool) {
        let start = Instant::now();
        loop {
            let log = self.log_text();
            if cond(&log) {
                return;
            }
            assert!(start.elapsed() < timeout, "timed out waiting for {what}; the log:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    /// SIGTERM, then wait (up to `timeout`): the exit code and how long it took.
    pub fn terminate(mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        self.signal(nix::sys::signal::Signal::SIGTERM);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code(), start.elapsed());
            }
            if start.elapsed() > timeout {
                return (None, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Mosquitto's log, in its temp dir: the default kinds of line and each
/// subscription (`CLIENT_ID QOS FILTER`, see [`Mosquitto::wait_subscribed`]).
fn log_conf(d: &Path) -> String {
    format!(
        "log_dest file {}/log\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
         log_type subscribe\n",
        d.display()
    )
}

/// Mosquitto on 127.0.0.1, with its config, persistence and log in a temp dir.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Mosquitto {
    /// Plain MQTT, anonymous, with persistence (queued QoS 1 messages survive a
    /// SIGTERM restart).
    pub fn start() -> Mosquitto {
        Self::start_with("")
    }

    /// [`Mosquitto::start`] with `extra` appended to its config (a bridge).
    pub fn start_with(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path();
        let conf = format!(
            "user root\npid_file {d}/pid\npersistence true\npersistence_location {d}/\nautosave_interval 1\n\
             {log}per_listener_settings true\nlistener {port} 127.0.0.1\nallow_anonymous true\n{extra}\n",
            d = d.display(),
            log = log_conf(d)
        );
        Self::with_conf(dir, port, conf)
    }

    /// Plain MQTT requiring a username and password.
    pub fn start_with_password(user: &str, password: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path();
        let pw = d.join("passwd");
        std::fs::write(&pw, "").unwrap();
        run(Command::new("mosquitto_passwd").args(["-b"]).arg(&pw).args([user, password]));
        let conf = format!(
            "user root\npid_file {d}/pid\n{log}per_listener_settings true\nlistener {port} 127.0.0.1\n\
             allow_anonymous false\npassword_file {}\n",
            pw.display(),
            d = d.display(),
            log = log_conf(d)
        );
        Self::with_conf(dir, port, conf)
    }

    /// TLS with client certificates (CN = username) and an ACL that lets each
    /// client write only its own topics under `prefix`; `admin` may read
    /// everything. Files in `dir`: ca.pem, and `<cn>.pem`/`<cn>.key` made by
    /// [`client_cert`].
    pub fn start_tls(prefix: &str) -> Mosquitto {
        Self::start_tls_with_acl(&format!(
            "user admin\ntopic readwrite #\n\npattern readwrite {prefix}/+/%u/#\npattern read {prefix}/+/_all/cmd\npattern write {prefix}/+/_rollout/+/%u\npattern read {prefix}/+/_rollout/#\npattern read {prefix}/+/_source/#\n"
        ))
    }

    /// [`Mosquitto::start_tls`] with the ACL file `acl`.
    pub fn start_tls_with_acl(acl: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path();
        make_ca_and_server_cert(d);
        std::fs::write(d.join("acl"), acl).unwrap();
        let conf = format!(
            "user root\npid_file {d}/pid\npersistence false\n{log}per_listener_settings true\n\
             listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\nuse_identity_as_username true\nacl_file {d}/acl\n",
            d = d.display(),
            log = log_conf(d)
        );
        Self::with_conf(dir, port, conf)
    }

    fn with_conf(dir: tempfile::TempDir, port: u16, conf: String) -> Mosquitto {
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let mut m = Mosquitto { child: None, port, dir, conf: path };
        m.restart();
        m
    }

    /// (Re)start on the same port and config.
    pub fn restart(&mut self) {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto not installed (tests/run installs it)");
        let mut child =
            Command::new(bin).arg("-c").arg(&self.conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        wait_for_port(self.port, &mut child, "mosquitto");
        self.child = Some(child);
    }

    /// SIGTERM (mosquitto saves its persistence) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's process id (0 while stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Make a client certificate with CN `cn` signed by this broker's CA (or by
    /// a fresh unrelated CA when `foreign`). Returns (cert, key) paths.
    pub fn client_cert(&self, cn: &str, foreign: bool) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let (ca, ca_key) = if foreign {
            let other = d.join("other-ca");
            std::fs::create_dir_all(&other).unwrap();
            make_ca_and_server_cert(&other);
            (other.join("ca.pem"), other.join("ca.key"))
        } else {
            (d.join("ca.pem"), d.join("ca.key"))
        };
        let tag = if foreign { format!("{cn}-foreign") } else { cn.to_owned() };
        let ossl = |args: &[&str]| {
            run(Command::new("openssl").current_dir(d).args(args));
        };
        ossl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{tag}.key"),
            "-out",
            &format!("{tag}.csr"),
        ]);
        // An X.509 v3 certificate (extensions make it v3; rustls refuses v1).
        std::fs::write(d.join("client-ext.cnf"), "basicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n")
            .unwrap();
        ossl(&[
            "x509",
            "-req",
            "-in",
            &format!("{tag}.csr"),
            "-CA",
            ca.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "client-ext.cnf",
            "-out",
            &format!("{tag}.pem"),
        ]);
        (d.join(format!("{tag}.pem")), d.join(format!("{tag}.key")))
    }

    /// Wait until the broker has taken `client_id`'s subscription to
    /// `filter` (its log says so when it handles the SUBSCRIBE): from then on,
    /// every message published to a matching topic reaches that client.
    pub fn wait_subscribed(&self, client_id: &str, filter: &str) {
        let log = self.dir.path().join("log");
        let said = |l: &str| {
            l.split_once(": ").is_some_and(|(_, rest)| {
                let mut w = rest.split(' ');
                w.next() == Some(client_id)
                    && w.next().is_some_and(|q| q.parse::<u8>().is_ok())
                    && w.next() == Some(filter)
            })
        };
        let start = Instant::now();
        while !std::fs::read_to_string(&log).unwrap_or_default().lines().any(said) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the broker never took {client_id}'s subscription to {filter}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// mosquitto_sub/mosquitto_pub arguments for this broker (plain listener).
    pub fn client_args(&self) -> Vec<String> {
        vec!["-h".into(), "127.0.0.1".into(), "-p".into(), self.port.to_string()]
    }

    /// The first message on `topic` (retained ones arrive at once), or None.
    pub fn read_one(&self, topic: &str, extra: &[&str], timeout_s: u32) -> Option<String> {
        let out = Command::new("mosquitto_sub")
            .args(self.client_args())
            .args(extra)
            .args(["-t", topic, "-C", "1", "-W", &timeout_s.to_string()])
            .output()
            .expect("mosquitto_sub");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub fn publish(&self, topic: &str, payload: &str) {
        run(Command::new("mosquitto_pub").args(self.client_args()).args(["-q", "1", "-t", topic, "-m", payload]));
    }

    /// Remove the retained message of `topic` (an empty retained message).
    pub fn publish_retained_clear(&self, topic: &str) {
        run(Command::new("mosquitto_pub").args(self.client_args()).args(["-q", "1", "-r", "-n", "-t", topic]));
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A background `mosquitto_sub` collecting messages (one per line: topic payload)
/// into a file, with a persistent QoS 1 session so nothing is missed across
/// broker restarts.
pub struct Subscription {
    child: Child,
    pub out: PathBuf,
}

impl Subscription {
    pub fn start(broker: &Mosquitto, topic: &str, client_id: &str) -> Subscription {
        let out = broker.dir.path().join(format!("sub-{client_id}.txt"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&out).unwrap();
        let child = Command::new("mosquitto_sub")
            .args(broker.client_args())
            .args(["-q", "1", "-c", "-i", client_id, "-v", "-t", topic])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        broker.wait_subscribed(client_id, topic);
        Subscription { child, out }
    }

    /// The lines received so far; a line mosquitto_sub is still writing is
    /// left for the next call.
    pub fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(str::to_owned).collect()
    }

    /// Wait until `cond` holds on the collected lines.
    pub fn wait(&self, what: &str, timeout: Duration, cond: impl Fn(&[String]) -> bool) -> Vec<String> {
        let start = Instant::now();
        loop {
            let l = self.lines();
            if cond(&l) {
                return l;
            }
            assert!(start.elapsed() < timeout, "timed out waiting for {what}; got:\n{}", l.join("\n"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON payloads of `topic payload` lines; a line that is not one is a
/// failure (what tend publishes on the topics read this way is JSON).
pub fn payloads(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| {
            let (_, p) = l.split_once(' ').unwrap_or_else(|| panic!("not `topic payload`: {l:?}"));
            serde_json::from_str(p).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"))
        })
        .collect()
}

/// Podman's Docker-compatible API service, with its own storage and config in
/// a temp dir (runc, cgroupfs, host network: the settings that work in this
/// sandbox), and a test image `localhost/tend-test:1` built from busybox-static.
pub struct Podman {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// Its storage's tmpfs ([`Podman::start_with`]), unmounted after the
    /// service stopped.
    storage: Option<Tmpfs>,
}

pub const TEST_IMAGE: &str = "localhost/tend-test:1";

/// Podman settings that work in this sandbox (ENV.md: runc, cgroupfs, host
/// network, vfs storage under `dir`): writes `dir/containers.conf` and
/// `dir/storage.conf`, and returns the environment that selects them (for a
/// script that runs podman; [`podman_in`] for podman itself).
pub fn podman_settings(dir: &Path) -> [(&'static str, PathBuf); 3] {
    std::fs::write(
        dir.join("containers.conf"),
        "[containers]\nnetns = \"host\"\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("storage.conf"),
        format!("[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n", d = dir.display()),
    )
    .unwrap();
    // The system's registries, to which a test may add its own.
    let system = std::fs::read_to_string("/etc/containers/registries.conf").unwrap_or_default();
    std::fs::write(dir.join("registries.conf"), system).unwrap();
    podman_env(dir)
}

fn podman_env(dir: &Path) -> [(&'static str, PathBuf); 3] {
    [
        ("CONTAINERS_CONF", dir.join("containers.conf")),
        ("CONTAINERS_STORAGE_CONF", dir.join("storage.conf")),
        // The system's, and a test registry on loopback over plain HTTP.
        ("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf")),
    ]
}

/// The podman CLI with the settings [`podman_settings`] wrote in `dir`.
pub fn podman_in(dir: &Path) -> Command {
    let mut c = Command::new("podman");
    c.envs(podman_env(dir));
    c
}

impl Podman {
    pub fn start() -> Podman {
        Self::start_with(None, None)
    }

    /// [`Podman::start`] with its storage on a tmpfs of `storage_size`
    /// (`"16m"`), and `registry` (`127.0.0.1:PORT`) pulled from over plain
    /// HTTP.
    pub fn start_with(storage_size: Option<&str>, registry: Option<&str>) -> Podman {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        podman_settings(d);
        let storage = storage_size.map(|size| Tmpfs::mount(&d.join("storage"), size));
        if let Some(r) = registry {
            let mut conf = std::fs::read_to_string(d.join("registries.conf")).unwrap();
            conf.push_str(&format!("\n[[registry]]\nlocation = \"{r}\"\ninsecure = true\n"));
            std::fs::write(d.join("registries.conf"), conf).unwrap();
        }
        let socket = d.join("podman.sock");
        let mut p = Podman { child: None, dir, socket, storage };
        // The test image: busybox-static and a few applets.
        let rootfs = p.dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        let busybox =
            ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|b| Path::new(b).exists()).expect("busybox-static");
        std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "httpd", "wget", "true", "false", "test", "cat", "rm"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = p.dir.path().join("rootfs.tar");
        run(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg("."));
        run(p.podman().args(["import", "-q"]).arg(&tar).arg(TEST_IMAGE));
        p.start_service();
        p
    }

    /// The podman CLI, pointed at this instance.
    pub fn podman(&self) -> Command {
        podman_in(self.dir.path())
    }

    pub fn start_service(&mut self) {
        let child = self
            .podman()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", self.socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service");
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "podman service did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    pub fn stop_service(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `podman inspect` of one container, or None.
    pub fn inspect(&self, name: &str) -> Option<serde_json::Value> {
        let out = self.podman().args(["inspect", "--type", "container", name]).output().unwrap();
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array().and_then(|a| a.first().cloned())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman().args(["rm", "-a", "-f", "-t", "0"]).output();
        self.stop_service();
        drop(self.storage.take());
    }
}

/// A real image registry (Debian's docker-registry, the CNCF distribution
/// server) on 127.0.0.1, plain HTTP, storage in a temp dir; its request log
/// in `log`.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("registry.err")).unwrap())
            .spawn()
            .expect("docker-registry (apt install docker-registry)");
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Its request log goes to stderr.
        let log = dir.path().join("registry.err");
        Registry { child, addr, log, _dir: dir }
    }

    /// Everything the registry logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ed25519 key pair made by ssh-keygen: (private key path, public key line).
pub fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"]).arg(&key));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_owned())
}

/// Commit everything, signed by git with `key` (SSH format).
pub fn commit_signed(fleet: &Fleet, key: &Path, msg: &str) -> String {
    let git = |args: &[&str]| {
        run(Command::new("git")
            .current_dir(&fleet.dir)
            .args(["-c", "user.name=signer", "-c", "user.email=signer@example.com", "-c", "gpg.format=ssh"])
            .arg("-c")
            .arg(format!("user.signingkey={}", key.display()))
            .args(args))
    };
    git(&["add", "-A"]);
    git(&["commit", "-q", "-S", "--allow-empty", "-m", msg]);
    let head = fleet.head();
    // git itself accepts the signature (so the test's commits are what users make)
    let raw = run(Command::new("git").current_dir(&fleet.dir).args(["cat-file", "commit", &head]));
    assert!(raw.contains("-----BEGIN SSH SIGNATURE-----"), "{raw}");
    head
}
