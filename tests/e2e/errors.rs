//! Issue 17: errors that say what happened and what to do, against real
//! servers — git-http-backend behind lighttpd (401, 404, TLS with an unknown
//! CA, an expired certificate, the wrong host name), an HTTP server answering
//! 403 and 503, a name that does not resolve, a port nobody listens on, a git
//! daemon past its `--max-connections` limit, a
//! `file://` source on a gateway without git, a missing `[files].root` — each
//! asserting the message's what and what-to-do, and that no credential leaks.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use tend_e2e::{Fleet, Gateway, GitDaemon, HttpGit, good_bundle};

const TOKEN: &str = "tok-3a9f-SECRET";

fn fleet(tmp: &std::path::Path) -> Fleet {
    let fleet = Fleet::new(tmp, "fleet");
    good_bundle(&fleet);
    fleet.commit("one");
    fleet
}

/// `tend sync` on a gateway of `url` (with `source_keys`): its stderr, and
/// its status afterwards (both must name the same thing).
fn sync_error(tmp: &std::path::Path, name: &str, url: &str, source_keys: &str) -> String {
    let gw = Gateway::with_source_keys(&tmp.join(name), url, source_keys, "");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{name}: {}{}", r.stdout, r.stderr);
    let status = gw.tend(&["status", "--json"]).json();
    let shown = status["error"].as_str().unwrap_or_default().to_owned();
    for text in [&r.stderr, &shown] {
        assert!(!text.contains(TOKEN), "{name}: a credential leaked: {text}");
    }
    let stderr = r.stderr.trim().to_owned();
    // One line, not the same cause twice.
    assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
    assert!(!stderr.contains("handshake failed"), "{name}: says nothing an operator can act on: {stderr}");
    stderr
}

fn says(text: &str, what: &str, todo: &str) {
    assert!(text.contains(what), "does not say {what:?}: {text}");
    assert!(text.contains(todo), "does not say what to do ({todo:?}): {text}");
}

/// A real HTTP server that reads the request and answers `status` (for the
/// codes git-http-backend does not give).
fn http_answering(status: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = (&s)
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes());
        }
    });
    format!("http://127.0.0.1:{port}/fleet")
}

fn token_file(tmp: &std::path::Path, token: &str) -> String {
    let p = tmp.join(format!("token-{}", token.len()));
    std::fs::write(&p, format!("bob:{token}\n")).unwrap();
    format!("token_file = \"{}\"", p.display())
}

#[test]
fn http_401_without_a_token_and_with_a_wrong_one() {
    let tmp = tempfile::tempdir().unwrap();
    fleet(tmp.path());
    let http = HttpGit::start_with_auth(tmp.path(), Some(("bob", "right-token")));
    let e = sync_error(tmp.path(), "none", &http.url("fleet"), "");
    says(&e, "requires authentication (HTTP 401)", "set [source].token_file");
    // A token is never sent in clear text.
    let e = sync_error(tmp.path(), "clear", &http.url("fleet"), &token_file(tmp.path(), TOKEN));
    says(&e, "does not send [source].token_file over plain http://", "use the https:// URL");
    let https = HttpGit::start_tls(tmp.path(), Some(("bob", "right-token")));
    let keys = format!("{}\nca_file = \"{}\"", token_file(tmp.path(), TOKEN), https.ca_file().display());
    let e = sync_error(tmp.path(), "wrong", &https.url("fleet"), &keys);
    says(&e, "refused the credentials in [source].token_file (HTTP 401)", "check the token");
    // The right token over https: it syncs.
    let keys = format!("{}\nca_file = \"{}\"", token_file(tmp.path(), "right-token"), https.ca_file().display());
    Gateway::with_source_keys(&tmp.path().join("right"), &https.url("fleet"), &keys, "").sync_ok();
}

#[test]
fn http_403_404_and_503() {
    let tmp = tempfile::tempdir().unwrap();
    fleet(tmp.path());
    let http = HttpGit::start(tmp.path());
    let e = sync_error(tmp.path(), "404", &http.url("no-such-repo"), "");
    says(&e, "repository not found (HTTP 404)", "check the path in [source].url");
    let e = sync_error(tmp.path(), "403", &http_answering("403 Forbidden"), &token_file(tmp.path(), TOKEN));
    says(&e, "access denied (HTTP 403)", "no read access");
    let e = sync_error(tmp.path(), "503", &http_answering("503 Service Unavailable"), "");
    says(&e, "the Git server failed (HTTP 503)", "retries");
}

#[test]
fn names_that_do_not_resolve_and_ports_nobody_listens_on() {
    let tmp = tempfile::tempdir().unwrap();
    let e = sync_error(tmp.path(), "dns", "https://git.nonexistent.invalid/fleet.git", "");
    says(&e, "cannot resolve the host name \"git.nonexistent.invalid\"", "DNS");
    let e = sync_error(tmp.path(), "dns-git", "git://git.nonexistent.invalid/fleet", "");
    says(&e, "cannot resolve the host name \"git.nonexistent.invalid\"", "DNS");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for (name, url) in
        [("http", format!("http://127.0.0.1:{port}/fleet")), ("git", format!("git://127.0.0.1:{port}/fleet"))]
    {
        let e = sync_error(tmp.path(), name, &url, "");
        says(&e, "connection refused by 127.0.0.1", "is the Git server running");
    }
}

#[test]
fn a_git_daemon_at_its_client_limit() {
    // git daemon limited to one client, that one connected and silent: past
    // its limit it closes a new connection, which tend must call that.
    let tmp = tempfile::tempdir().unwrap();
    fleet(tmp.path());
    let log = tmp.path().join("git-daemon.log");
    let git = GitDaemon::start_limited(tmp.path(), &log, 1);
    let _holder = std::net::TcpStream::connect(("127.0.0.1", git.port)).unwrap();
    let connections = || std::fs::read_to_string(&log).unwrap_or_default().matches("Connection from").count();
    let start = std::time::Instant::now();
    // The start's port probe, then the holder.
    while connections() < 2 {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "git daemon never saw the holder");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let e = sync_error(tmp.path(), "limit", &git.url("fleet"), "");
    says(&e, "the server closed the connection", "at its limit of clients");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("Too many children, dropping connection"), "not git daemon's limit: {log}");
}

#[test]
fn tls_unknown_ca_expired_certificate_and_wrong_host_name() {
    let tmp = tempfile::tempdir().unwrap();
    fleet(tmp.path());
    let tls = HttpGit::start_tls(tmp.path(), None);
    let ca = format!("ca_file = \"{}\"", tls.ca_file().display());
    let e = sync_error(tmp.path(), "unknown-ca", &tls.url("fleet"), "");
    says(&e, "not signed by a CA this gateway trusts", "set [source].ca_file");
    let e = sync_error(tmp.path(), "wrong-host", &tls.url("fleet").replace("127.0.0.1", "localhost"), &ca);
    says(&e, "not valid for \"localhost\"", "a host name the certificate was issued for");
    let expired = HttpGit::start_tls_expired(tmp.path());
    let ca = format!("ca_file = \"{}\"", expired.ca_file().display());
    let e = sync_error(tmp.path(), "expired", &expired.url("fleet"), &ca);
    says(&e, "certificate has expired", "renew it");
    // The same CA, a valid certificate: it syncs (the checks above are not
    // refusing everything).
    let ok = Gateway::with_source_keys(
        &tmp.path().join("ok"),
        &tls.url("fleet"),
        &format!("ca_file = \"{}\"", tls.ca_file().display()),
        "",
    );
    ok.sync_ok();
}

#[test]
fn a_file_source_without_git_installed_and_a_missing_files_root() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = fleet(tmp.path());
    let gw = Gateway::new(&tmp.path().join("nogit"), &fleet.url(), "");
    let r = gw.command().arg("sync").env("PATH", "/nonexistent").output().unwrap();
    let e = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{e}");
    says(&e, "git is not installed on this gateway", "apt install git");
    // The same source over git:// needs no git on the gateway.
    let daemon = GitDaemon::start(tmp.path());
    let gw = Gateway::new(&tmp.path().join("daemon"), &daemon.url("fleet"), "");
    let r = gw.command().args(["sync", "--json"]).env("PATH", "/nonexistent").output().unwrap();
    assert_eq!(r.status.code(), Some(0), "{}", String::from_utf8_lossy(&r.stderr));

    let gw = Gateway::new(&tmp.path().join("noroot"), &fleet.url(), "");
    std::fs::remove_dir_all(&gw.root).unwrap();
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    says(&r.stderr, "[files].root: does not exist", "create it, or set [files].root");
    assert!(r.stderr.contains(&gw.root.display().to_string()), "{}", r.stderr);
}
