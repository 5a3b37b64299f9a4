//! Issue 3, acceptance 1 and 2: the health gate, automatic rollback to
//! last-known-good, quarantine, `sync --retry`, and `tend rollback [REV]`.

use tend_e2e::{Fleet, Gateway};

const CHECK_TIMEOUTS: &str = "[apply]\nhealth_timeout = \"3s\"\n";

fn setup() -> (tempfile::TempDir, Fleet, Gateway) {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::new(tmp.path(), &fleet.url(), CHECK_TIMEOUTS);
    (tmp, fleet, gw)
}

/// A bundle whose check passes while `flag` exists.
fn bundle(fleet: &Fleet, flag: &std::path::Path, version: &str) {
    fleet
        .write(
            "devices/gw-1/tend.toml",
            format!(
                "[[file]]\npath = \"/etc/myapp/app.conf\"\nmode = \"0600\"\n\n[[check]]\nname = \"flag\"\ncommand = [\"test\", \"-e\", \"{}\"]\ninterval = \"1s\"\n",
                flag.display()
            ),
        )
        .write("devices/gw-1/files/etc/myapp/app.conf", format!("version = {version}\n"))
        .write(&format!("devices/gw-1/files/etc/myapp/only-{version}.conf"), "x\n");
}

#[test]
fn a_failing_check_rolls_back_quarantines_and_retry_reapplies() {
    let (tmp, fleet, gw) = setup();
    let good_flag = tmp.path().join("good-flag");
    std::fs::write(&good_flag, "").unwrap();
    bundle(&fleet, &good_flag, "1");
    let good = fleet.commit("good");
    let r = gw.sync_ok();
    assert_eq!(r["checks"]["flag"], "pass");
    let before = gw.snapshot();

    // v2's check looks for a flag that does not exist.
    let bad_flag = tmp.path().join("bad-flag");
    fleet.remove("devices/gw-1/files/etc/myapp/only-1.conf");
    bundle(&fleet, &bad_flag, "2");
    let bad = fleet.commit("bad");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("unhealthy") && r.stderr.contains("check flag"), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("rolled back to {}", &good[..12])), "{}", r.stderr);
    assert_eq!(gw.snapshot(), before, "files are not back to last-known-good");

    let s = gw.tend(&["status", "--json"]).json();
    assert_eq!(s["phase"], "rolled_back");
    assert_eq!(s["revision"], good);
    assert_eq!(s["target_revision"], bad);
    assert_eq!(s["last_good_revision"], good);
    let h = gw.tend(&["history", "--json"]).json();
    let bad_entry = h.as_array().unwrap().iter().find(|e| e["revision"] == bad).expect("bad revision in history");
    assert_eq!(bad_entry["outcome"], "rolled_back");
    assert_eq!(bad_entry["bad"], true);

    // Syncing again does not re-apply it: nothing written, still exit 1.
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("quarantined"), "{}", r.stderr);
    assert_eq!(gw.snapshot(), before);

    // --retry does re-apply it; with its check now passing it sticks.
    std::fs::write(&bad_flag, "").unwrap();
    let r = gw.tend(&["sync", "--retry", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 2\n");
    assert!(!gw.path("/etc/myapp/only-1.conf").exists());
    let s = gw.tend(&["status", "--json"]).json();
    assert_eq!(s["phase"], "synced");
    assert_eq!(s["last_good_revision"], bad);
}

#[test]
fn the_first_revision_failing_returns_to_the_state_before_tend() {
    let (tmp, fleet, gw) = setup();
    std::fs::create_dir_all(gw.path("/etc/myapp")).unwrap();
    std::fs::write(gw.path("/etc/myapp/app.conf"), "vendor default\n").unwrap();
    let before = gw.snapshot();
    bundle(&fleet, &tmp.path().join("never"), "1");
    fleet.commit("bad first");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(gw.snapshot(), before, "the pre-existing file must be restored, new ones removed");
    assert_eq!(gw.tend(&["status", "--json"]).json()["phase"], "rolled_back");
}

#[test]
fn rollback_off_leaves_the_revision_degraded() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::new(tmp.path(), &fleet.url(), "[apply]\nhealth_timeout = \"2s\"\nrollback = false\n");
    bundle(&fleet, &tmp.path().join("never"), "1");
    fleet.commit("bad");
    assert_eq!(gw.tend(&["sync"]).code, 1);
    assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 1\n");
    assert_eq!(gw.tend(&["status", "--json"]).json()["phase"], "degraded");
}

#[test]
fn rollback_to_a_revision_and_to_last_known_good() {
    let (tmp, fleet, gw) = setup();
    let flag = tmp.path().join("flag");
    std::fs::write(&flag, "").unwrap();
    let mut commits = Vec::new();
    let mut snapshots = Vec::new();
    for v in ["1", "2", "3"] {
        if v != "1" {
            fleet.remove(&format!("devices/gw-1/files/etc/myapp/only-{}.conf", (v.parse::<u32>().unwrap() - 1)));
        }
        bundle(&fleet, &flag, v);
        commits.push(fleet.commit(v));
        gw.sync_ok();
        snapshots.push(gw.snapshot());
    }
    // To revision 1, by a prefix of its commit id: its files exactly.
    let r = gw.tend(&["rollback", &commits[0][..10]]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(gw.snapshot(), snapshots[0]);
    let s = gw.tend(&["status", "--json"]).json();
    assert_eq!(s["revision"], commits[0]);
    assert_eq!(s["phase"], "rolled_back");
    // The branch still points at 3; it is held, so a sync does not undo the rollback.
    assert_eq!(gw.tend(&["sync"]).code, 1);
    assert_eq!(gw.snapshot(), snapshots[0]);
    // Edits by hand are still repaired while held.
    std::fs::write(gw.path("/etc/myapp/app.conf"), "tampered\n").unwrap();
    gw.tend(&["sync"]);
    assert_eq!(gw.snapshot(), snapshots[0]);

    // `tend rollback` with no revision returns to the newest healthy revision
    // older than the one applied now (as helm rollback does): at revision 1
    // there is none, so it says so, exits 1 and changes nothing.
    let r = gw.tend(&["rollback"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("no healthy revision older than") && r.stderr.contains("nothing to return to"),
        "{}",
        r.stderr
    );
    assert_eq!(gw.snapshot(), snapshots[0]);

    // --retry lifts the hold and goes back to the branch.
    assert_eq!(gw.tend(&["sync", "--retry"]).code, 0);
    assert_eq!(gw.snapshot(), snapshots[2]);
    // Now two healthy revisions are older: it returns to the newer of them.
    let r = gw.tend(&["rollback"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(gw.snapshot(), snapshots[1]);
    assert_eq!(gw.tend(&["status", "--json"]).json()["revision"], commits[1]);

    // Unknown or ambiguous revisions are clear errors.
    let r = gw.tend(&["rollback", "deadbeef"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not in the history"), "{}", r.stderr);
    let r = gw.tend(&["rollback", "xyz"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a commit id"), "{}", r.stderr);
}

#[test]
fn a_new_commit_after_a_bad_one_is_applied() {
    let (tmp, fleet, gw) = setup();
    let flag = tmp.path().join("flag");
    std::fs::write(&flag, "").unwrap();
    bundle(&fleet, &flag, "1");
    fleet.commit("good");
    gw.sync_ok();
    bundle(&fleet, &tmp.path().join("never"), "2");
    fleet.commit("bad");
    assert_eq!(gw.tend(&["sync"]).code, 1);
    bundle(&fleet, &flag, "3");
    let fixed = fleet.commit("fixed");
    let r = gw.sync_ok();
    assert_eq!(r["commit"], fixed);
    assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 3\n");
}
