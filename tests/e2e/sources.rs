//! Acceptance 1: tend syncs from git://, http:// (git-http-backend behind
//! lighttpd) and file://; a poll with no new commit fetches no pack; fetches are
//! shallow (depth 1) even when the branch has history.

use std::process::Command;

use tend_e2e::{Fleet, Gateway, GitDaemon, HttpGit, good_bundle, pack_count};

/// Sync through `url`; the fleet already has two commits on `main`.
fn exercise(fleet: &Fleet, url: &str, tmp: &std::path::Path) {
    let gw = Gateway::new(tmp, url, "");
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
    exercise(&fleet, &fleet.url(), tmp.path());
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
    exercise(&fleet, &daemon.url("fleet"), tmp.path());
}

#[test]
fn syncs_over_smart_http() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let fleet = two_commits(&srv);
    let http = HttpGit::start(&srv);
    exercise(&fleet, &http.url("fleet"), tmp.path());
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
