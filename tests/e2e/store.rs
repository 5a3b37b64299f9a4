//! Issue 13: the store's layout changed (contents and large records as
//! objects beside sled, a generation marker). A gateway upgraded from 0.1.0
//! keeps everything, tested against a store the real 0.1.0 binary wrote
//! (`tend_e2e::k3s::prev_release_bin`, commit f85a116, tag v0.1.0); a damaged
//! store is one clear error, and nothing is pruned.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tend_e2e::k3s::prev_release_bin;
use tend_e2e::{Fleet, Gateway, Mosquitto, Subscription};

fn old(gw: &Gateway, args: &[&str]) -> tend_e2e::Run {
    Command::new(prev_release_bin()).env("TEND_CONFIG", &gw.config).args(args).output().unwrap().into()
}

fn files(fleet: &Fleet, v: &str) {
    for i in 0..30 {
        fleet.write(&format!("devices/gw-1/files/etc/myapp/conf.d/f{i:02}.conf"), format!("f{i} = {v}\n"));
    }
}

#[test]
fn a_gateway_upgraded_from_0_1_0_keeps_history_inventory_originals_last_good_and_unsent_events() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    // A broker known to the gateway but down while 0.1.0 runs: its events
    // wait in the store's outbox.
    let mut broker = Mosquitto::start();
    broker.stop();
    let gw = Gateway::new(
        tmp.path(),
        &fleet.url(),
        &format!("[apply]\nhealth_timeout = \"3s\"\n[mqtt]\nurl = \"{}\"\nhealth_interval = \"1s\"\n", broker.url()),
    );
    // A file that was there before tend: taken over, its original kept.
    std::fs::create_dir_all(gw.path("/etc/myapp")).unwrap();
    std::fs::write(gw.path("/etc/myapp/site.conf"), "original\n").unwrap();

    files(&fleet, "1");
    fleet.write("devices/gw-1/files/etc/myapp/site.conf", "managed\n");
    let a = fleet.commit("a");
    assert_eq!(old(&gw, &["sync"]).code, 0);
    files(&fleet, "2");
    let b = fleet.commit("b");
    assert_eq!(old(&gw, &["sync"]).code, 0);
    fleet.write("devices/gw-1/tend.toml", "[[check]]\nname = \"never\"\ncommand = [\"false\"]\ninterval = \"1s\"\n");
    files(&fleet, "3");
    let c = fleet.commit("c: never healthy");
    assert_eq!(old(&gw, &["sync"]).code, 1, "0.1.0 rolls c back");
    let history_before = old(&gw, &["history", "--json"]).json();
    let status_before = old(&gw, &["status", "--json"]).json();
    assert_eq!(status_before["last_good_revision"], b.as_str());
    let snapshot = gw.snapshot();

    // This release reads the same store.
    let history = gw.tend(&["history", "--json"]).json();
    let key = |h: &Value| -> Vec<(Value, Value, Value, Value)> {
        h.as_array()
            .unwrap()
            .iter()
            .map(|r| (r["seq"].clone(), r["revision"].clone(), r["outcome"].clone(), r["bad"].clone()))
            .collect()
    };
    assert_eq!(key(&history), key(&history_before));
    assert_eq!(history.as_array().unwrap().len(), 3);
    let status = gw.tend(&["status", "--json"]).json();
    for field in ["phase", "revision", "last_good_revision", "target_revision"] {
        assert_eq!(status[field], status_before[field], "{field}");
    }
    // The contents moved out of sled into the object directory.
    assert!(std::fs::read_dir(gw.state.join("objects")).unwrap().count() > 10);
    // c stays quarantined; nothing changed on disk.
    assert_eq!(gw.tend(&["sync"]).code, 1);
    assert_eq!(gw.snapshot(), snapshot);

    // Offline: the network goes, a rollback to a comes from the store alone.
    let moved = tmp.path().join("fleet-away");
    std::fs::rename(&fleet.dir, &moved).unwrap();
    let r = gw.tend(&["rollback", &a]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(gw.read("/etc/myapp/conf.d/f00.conf"), "f0 = 1\n");
    std::fs::rename(&moved, &fleet.dir).unwrap();

    // The taken-over file's original (kept by 0.1.0) comes back when the
    // bundle lets go of it.
    fleet.remove("devices/gw-1/files/etc/myapp/site.conf").remove("devices/gw-1/tend.toml");
    fleet.commit("d: site.conf released");
    assert_eq!(gw.tend(&["sync"]).code, 0);
    assert_eq!(gw.read("/etc/myapp/site.conf"), "original\n");

    // The events 0.1.0 queued while the broker was down arrive, in order,
    // first, once it is back.
    broker.restart();
    let sub = Subscription::start(&broker, "tend/v1/test/gw-1/events", "upgrade-events");
    let daemon = gw.start_daemon();
    let lines = sub.wait("the old events", Duration::from_secs(20), |l| {
        l.iter().any(|x| x.contains("\"kind\":\"rolled_back\"") && x.contains(&c))
    });
    daemon.terminate(Duration::from_secs(10));
    let events: Vec<Value> =
        lines.iter().filter_map(|l| l.split_once(' ')).map(|(_, p)| serde_json::from_str(p).unwrap()).collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs[0], 1, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "out of order or missing: {seqs:?}");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for k in ["sync_started", "applied", "healthy", "rolled_back"] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
}

/// What a damaged store does: one clear error (exit 2), naming it and what to
/// do; nothing on disk changes; nothing is pruned.
#[test]
fn a_truncated_or_corrupted_store_is_an_error_and_nothing_is_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::new(tmp.path(), &fleet.url(), "");
    files(&fleet, "1");
    fleet.commit("a");
    gw.sync_ok();
    // A file the bundle no longer declares: only prune would touch it.
    fleet.remove("devices/gw-1/files/etc/myapp/conf.d/f29.conf");
    fleet.commit("b");
    let good_state = tmp.path().join("state-good");
    tend_e2e::run(Command::new("cp").arg("-a").arg(&gw.state).arg(&good_state));
    let db = gw.state.join("store/db");
    let len = std::fs::metadata(&db).unwrap().len();
    type Damage = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "truncated",
            Box::new(move |db| std::fs::OpenOptions::new().write(true).open(db).unwrap().set_len(len / 3).unwrap()),
        ),
        (
            "corrupted",
            Box::new(|db| {
                use std::io::{Seek, SeekFrom, Write};
                let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
                f.seek(SeekFrom::Start(200)).unwrap();
                f.write_all(&[0xA5; 64]).unwrap();
            }),
        ),
    ];
    for (what, damage) in cases {
        std::fs::remove_dir_all(&gw.state).unwrap();
        tend_e2e::run(Command::new("cp").arg("-a").arg(&good_state).arg(&gw.state));
        damage(&db);
        let before = gw.snapshot();
        for args in [&["sync"][..], &["status"], &["history"]] {
            let r = gw.tend(args);
            assert_eq!(r.code, 2, "{what}: tend {args:?}: {r:?}");
            assert!(
                r.stderr.contains(&format!("state store {} is damaged", gw.state.join("store").display()))
                    && r.stderr.contains("move ")
                    && r.stderr.contains("nothing is pruned"),
                "{what}: {}",
                r.stderr
            );
            assert_eq!(r.stderr.trim().lines().count(), 1, "{what}: one line: {}", r.stderr);
        }
        assert_eq!(gw.snapshot(), before, "{what}: something changed on disk");
        assert!(gw.path("/etc/myapp/conf.d/f29.conf").exists(), "{what}: pruned");
    }
    // Moved aside as the message says: tend starts over, takes over what is
    // there, and still prunes nothing it cannot prove it owns.
    std::fs::rename(gw.state.join("store"), tmp.path().join("store-damaged")).unwrap();
    gw.sync_ok();
    assert!(gw.path("/etc/myapp/conf.d/f29.conf").exists(), "pruned after starting over");
}

/// A content missing from the object directory: named; offline, repair says
/// what to do; with the source reachable, the revision is rendered again.
#[test]
fn a_missing_content_is_named_and_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::new(tmp.path(), &fleet.url(), "");
    files(&fleet, "1");
    fleet.commit("a");
    gw.sync_ok();
    let hash = {
        let out = Command::new("sha256sum").arg(gw.path("/etc/myapp/conf.d/f07.conf")).output().unwrap();
        String::from_utf8_lossy(&out.stdout)[..64].to_owned()
    };
    let object = gw.state.join("objects").join(&hash[..2]).join(&hash[2..]);
    std::fs::remove_file(&object).unwrap();
    std::fs::remove_file(gw.path("/etc/myapp/conf.d/f07.conf")).unwrap();

    // Offline: the drift cannot be repaired; the error names the object.
    let moved = tmp.path().join("fleet-away");
    std::fs::rename(&fleet.dir, &moved).unwrap();
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(&object.display().to_string()) && r.stderr.contains("damaged"), "{}", r.stderr);
    // Nothing else was touched.
    assert_eq!(gw.read("/etc/myapp/conf.d/f08.conf"), "f8 = 1\n");

    // Online: rendered from Git again, the file is back, so is the object.
    std::fs::rename(&moved, &fleet.dir).unwrap();
    gw.sync_ok();
    assert_eq!(gw.read("/etc/myapp/conf.d/f07.conf"), "f7 = 1\n");
    assert!(object.exists());

    // A damaged object (other content under the name) is never written out.
    std::fs::write(&object, "tampered\n").unwrap();
    std::fs::remove_file(gw.path("/etc/myapp/conf.d/f07.conf")).unwrap();
    std::fs::rename(&fleet.dir, &moved).unwrap();
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    assert!(!gw.path("/etc/myapp/conf.d/f07.conf").exists(), "damaged content written");
}
