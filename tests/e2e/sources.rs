//! Acceptance 1: tend syncs from git://, http:// (git-http-backend behind
//! lighttpd) and file://; a poll with no new commit fetches no pack; fetches are
//! shallow (depth 1) even when the branch has history.

use std::process::Command;

use tend_e2e::{Fleet, Gateway, GitDaemon, HttpGit, good_bundle, pack_count};

/// Sync through `url`; the fleet already has two commits on `main`.
fn exercise(fleet: &Fleet, url: &str, tmp: &std::path::Path, source_keys: Option<&str>) -> Gateway {
    let gw = Gateway::with_source_keys(tmp, url, source_keys.unwrap_or(""), "");
    let first = gw.sync_ok();
    assert_eq!(first["commit"], fleet.head());
    assert_eq!(first["received_pack"], true);
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 1502\n");
    assert_eq!(gw.mode("/etc/myapp/app.conf"), 0o640);
    assert_eq!(gw.mode("/opt/myapp/run.sh"), 0o755);

    // Shallow: the fetched repository holds the tip, not its parent.
    let git_dir = gw.state.join("git");
    let shallow = std::fs::read_to_string(git_dir.join("shallow")).expect("repository is shallow");
    assert!(shallow.contains(&fleet.head()), "shallow file: {shallow}");
    let parent = Command::new("git").arg("-C").arg(&fleet.dir).args(["rev-parse", "HEAD~1"]).output().unwrap();
    let parent = String::from_utf8(parent.stdout).unwrap().trim().to_owned();
    let has_parent = Command::new("git")
        .arg("--git-dir")
        .arg(&git_dir)
        .args(["cat-file", "-e", &format!("{parent}^{{commit}}")])
        .status()
        .unwrap();
    assert!(!has_parent.success(), "the parent commit was fetched: the fetch was not shallow");

    // Second poll, nothing new: no pack.
    let packs = pack_count(&git_dir);
    let second = gw.sync_ok();
    assert_eq!(second["received_pack"], false);
    assert_eq!(pack_count(&git_dir), packs, "a pack was written although the branch did not move");
    assert_eq!(second["operations"].as_array().unwrap().len(), 0);

    // A new commit is fetched and applied.
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "port = 2502\n");
    let c3 = fleet.commit("third");
    let third = gw.sync_ok();
    assert_eq!(third["commit"], c3);
    assert_eq!(third["received_pack"], true);
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 2502\n");
    let status = gw.tend(&["status", "--json"]).json();
    assert_eq!(status["revision"], c3);
    assert_eq!(status["phase"], "synced");
    assert_eq!(status["source"], "ok");
    gw
}

fn two_commits(base: &std::path::Path) -> Fleet {
    let fleet = Fleet::new(base, "fleet");
    good_bundle(&fleet);
    fleet.commit("first");
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "port = 1502\n");
    fleet.commit("second");
    fleet
}

#[test]
fn syncs_over_file_url() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = two_commits(&tmp.path().join("srv"));
    exercise(&fleet, &fleet.url(), tmp.path(), None);
}

#[test]
fn syncs_over_plain_path() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = two_commits(&tmp.path().join("srv"));
    let gw = Gateway::new(tmp.path(), &fleet.dir.display().to_string(), "");
    assert_eq!(gw.sync_ok()["commit"], fleet.head());
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 1502\n");
}

#[test]
fn syncs_over_git_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let fleet = two_commits(&srv);
    let daemon = GitDaemon::start(&srv);
    exercise(&fleet, &daemon.url("fleet"), tmp.path(), None);
}

#[test]
fn syncs_over_smart_http() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let fleet = two_commits(&srv);
    let http = HttpGit::start(&srv);
    exercise(&fleet, &http.url("fleet"), tmp.path(), None);
}

#[test]
fn unreachable_source_fails_with_exit_1_and_names_the_url() {
    let tmp = tempfile::tempdir().unwrap();
    let port = tend_e2e::free_port();
    let url = format!("git://127.0.0.1:{port}/fleet");
    let gw = Gateway::new(tmp.path(), &url, "");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&url), "{}", r.stderr);
    let status = gw.tend(&["status", "--json"]).json();
    assert_eq!(status["source"], "unreachable");
}

#[test]
fn missing_branch_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = two_commits(&tmp.path().join("srv"));
    let gw = Gateway::new(tmp.path(), &fleet.url(), "");
    let text = std::fs::read_to_string(&gw.config).unwrap().replace("branch = \"main\"", "branch = \"nope\"");
    std::fs::write(&gw.config, text).unwrap();
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("branch \"nope\" not found"), "{}", r.stderr);
}

#[test]
fn syncs_over_ssh_with_the_configured_key() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let fleet = two_commits(&srv);
    let sshd = tend_e2e::Sshd::start();
    let url = sshd.url(&fleet.dir);
    // Without the key the server refuses, and the error names the URL.
    let keyless = Gateway::new(&tmp.path().join("keyless"), &url, "");
    let r = keyless.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("127.0.0.1"), "{}", r.stderr);
    // With it: the same as every transport, shallow included (protocol v2 over ssh).
    let key = format!("ssh_key = \"{}\"", sshd.client_key.display());
    exercise(&fleet, &url, tmp.path(), Some(&key));
}

#[test]
fn syncs_over_https_with_a_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let fleet = two_commits(&srv);
    let https = HttpGit::start_tls(&srv, None);
    let url = https.url("fleet");
    assert!(url.starts_with("https://"));
    // The server's CA is not trusted by default: refused, naming the URL.
    let untrusted = Gateway::new(&tmp.path().join("untrusted"), &url, "");
    let r = untrusted.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&url), "{}", r.stderr);
    let keys = format!("ca_file = \"{}\"", https.ca_file().display());
    exercise(&fleet, &url, tmp.path(), Some(&keys));
}

#[test]
fn https_token_from_token_file_and_never_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let fleet = two_commits(&srv);
    let secret = "s3cr3t-t0ken-4f9a";
    let https = HttpGit::start_tls(&srv, Some(("x-access-token", secret)));
    let url = https.url("fleet");
    let ca = format!("ca_file = \"{}\"", https.ca_file().display());

    // No token: refused, and the error names the URL.
    let anonymous = Gateway::with_source_keys(&tmp.path().join("anonymous"), &url, &ca, "");
    let r = anonymous.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&url), "{}", r.stderr);

    let token = tmp.path().join("token");
    std::fs::write(&token, format!("{secret}\n")).unwrap();
    let keys = format!("{ca}\ntoken_file = \"{}\"", token.display());
    let gw = exercise(&fleet, &url, tmp.path(), Some(&keys));

    // A wrong token is refused; no output ever shows a token.
    std::fs::write(&token, "wrong-t0ken-77\n").unwrap();
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "port = 9\n");
    fleet.commit("fourth");
    let r = gw.tend(&["-vvv", "sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    let status = gw.tend(&["status", "--json"]);
    for out in [&r.stdout, &r.stderr, &status.stdout] {
        assert!(!out.contains(secret) && !out.contains("wrong-t0ken-77"), "a token leaked: {out}");
    }
}

#[test]
fn credentials_are_never_sent_over_plain_http() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    two_commits(&srv);
    let http = HttpGit::start_with_auth(&srv, Some(("x-access-token", "tok")));
    let token = tmp.path().join("token");
    std::fs::write(&token, "tok\n").unwrap();
    let gw =
        Gateway::with_source_keys(tmp.path(), &http.url("fleet"), &format!("token_file = \"{}\"", token.display()), "");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hold connections without a byte of reply.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().take(4) {
            held.push(c);
        }
        std::thread::sleep(std::time::Duration::from_secs(60));
    });
    let url = format!("git://127.0.0.1:{port}/fleet");
    let gw = Gateway::new(tmp.path(), &url, "");
    let text = std::fs::read_to_string(&gw.config).unwrap().replace("timeout = \"10s\"", "timeout = \"1s\"");
    std::fs::write(&gw.config, text).unwrap();
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("timed out after 1s"), "{}", r.stderr);
}
