//! Acceptance 2: update, prune, overlays, templates, modes and `on_change` once
//! per sync, each asserted on real files; files tend did not write are never
//! touched, and a file tend took over gets its original back when pruned.

use tend_e2e::{Fleet, Gateway};

fn setup() -> (tempfile::TempDir, Fleet, Gateway) {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    // Hooks are off unless the gateway allows them; these tests exercise them.
    let gw = Gateway::new(tmp.path(), &fleet.url(), "allow_hooks = true");
    (tmp, fleet, gw)
}

#[test]
fn overlays_templates_and_modes() {
    let (_tmp, fleet, gw) = setup();
    fleet
        .write("base/tend.toml", "[[file]]\npath = \"/etc/myapp/shared.conf\"\nmode = \"0600\"\n")
        .write("base/files/etc/myapp/shared.conf", "from base\n")
        .write("base/files/etc/myapp/only-base.conf", "base only\n")
        .write("groups/eu/files/etc/myapp/shared.conf", "from group\n")
        .write("groups/eu/files/etc/myapp/group.conf", "group\n")
        .write(
            "devices/gw-1/tend.toml",
            r#"include = ["../../base", "../../groups/eu"]
[[file]]
path = "/etc/myapp/id.conf"
template = true
mode = "0640"
[[file]]
path = "/etc/myapp/literal.conf"
"#,
        )
        .write("devices/gw-1/files/etc/myapp/id.conf", "id={{ device_id }} fleet={{fleet}} site={{ labels.site }}\n")
        .write("devices/gw-1/files/etc/myapp/literal.conf", "not a template: {{ device_id }}\n")
        .write("devices/gw-1/files/etc/myapp/group.conf", "device wins\n")
        .write("devices/gw-1/files/opt/myapp/tool", "#!/bin/sh\n")
        .chmod("devices/gw-1/files/opt/myapp/tool", 0o755);
    fleet.commit("overlays");
    gw.sync_ok();

    // Includes are applied first, the including bundle wins on the same path,
    // and a later include wins over an earlier one.
    assert_eq!(gw.read("/etc/myapp/only-base.conf"), "base only\n");
    assert_eq!(gw.read("/etc/myapp/shared.conf"), "from group\n");
    assert_eq!(gw.read("/etc/myapp/group.conf"), "device wins\n");
    // The base's metadata still applies to the path the group overrode.
    assert_eq!(gw.mode("/etc/myapp/shared.conf"), 0o600);
    // Templates render only where asked.
    assert_eq!(gw.read("/etc/myapp/id.conf"), "id=gw-1 fleet=test site=berlin\n");
    assert_eq!(gw.read("/etc/myapp/literal.conf"), "not a template: {{ device_id }}\n");
    // Modes: declared, default 0644, executable bit in Git gives 0755.
    assert_eq!(gw.mode("/etc/myapp/id.conf"), 0o640);
    assert_eq!(gw.mode("/etc/myapp/literal.conf"), 0o644);
    assert_eq!(gw.mode("/opt/myapp/tool"), 0o755);
}

#[test]
fn update_prune_and_hooks_once_per_sync() {
    let (tmp, fleet, gw) = setup();
    let log = tmp.path().join("hook.log");
    let hook = format!("on_change = [\"sh\", \"-c\", \"echo ran >> {}\"]", log.display());
    fleet
        .write(
            "devices/gw-1/tend.toml",
            format!("[[file]]\npath = \"/etc/myapp/a.conf\"\n{hook}\n[[file]]\npath = \"/etc/myapp/b.conf\"\n{hook}\n"),
        )
        .write("devices/gw-1/files/etc/myapp/a.conf", "a1\n")
        .write("devices/gw-1/files/etc/myapp/b.conf", "b1\n")
        .write("devices/gw-1/files/etc/myapp/sub/c.conf", "c1\n")
        .write("devices/gw-1/files/opt/myapp/new/deep/d.conf", "d1\n");
    fleet.commit("v1");
    // A file nobody asked tend to manage, in a directory tend writes to.
    std::fs::create_dir_all(gw.path("/etc/myapp")).unwrap();
    std::fs::write(gw.path("/etc/myapp/local.conf"), "mine\n").unwrap();

    gw.sync_ok();
    let runs = || std::fs::read_to_string(&log).unwrap_or_default().lines().count();
    assert_eq!(runs(), 1, "two changed files share one hook: it runs once");

    // No change: no hook.
    gw.sync_ok();
    assert_eq!(runs(), 1);

    // Update both files: still once.
    fleet.write("devices/gw-1/files/etc/myapp/a.conf", "a2\n").write("devices/gw-1/files/etc/myapp/b.conf", "b2\n");
    fleet.commit("v2");
    let r = gw.sync_ok();
    assert_eq!(r["updated"], 2);
    assert_eq!(runs(), 2);
    assert_eq!(gw.read("/etc/myapp/a.conf"), "a2\n");

    // Prune: removed from the bundle → removed from disk, with the directories
    // tend created; the file tend never wrote stays.
    fleet.remove("devices/gw-1/files/etc/myapp/sub").remove("devices/gw-1/files/opt/myapp/new");
    fleet.commit("v3");
    let r = gw.sync_ok();
    assert_eq!(r["deleted"], 2);
    assert!(!gw.path("/etc/myapp/sub/c.conf").exists());
    assert!(!gw.path("/etc/myapp/sub").exists(), "empty directory tend created is removed");
    assert!(!gw.path("/opt/myapp/new").exists());
    assert_eq!(gw.read("/etc/myapp/local.conf"), "mine\n");
    assert_eq!(runs(), 2, "a deletion alone does not run the files' hooks");

    // Drift: an edit by hand is repaired at the next sync (and runs the hook).
    std::fs::write(gw.path("/etc/myapp/a.conf"), "edited by hand\n").unwrap();
    gw.sync_ok();
    assert_eq!(gw.read("/etc/myapp/a.conf"), "a2\n");
    assert_eq!(runs(), 3);
}

#[test]
fn prune_off_leaves_files_in_place() {
    let (_tmp, fleet, gw) = setup();
    let text = std::fs::read_to_string(&gw.config).unwrap() + "[apply]\nprune = false\n";
    std::fs::write(&gw.config, text).unwrap();
    fleet.write("devices/gw-1/files/etc/myapp/a.conf", "a\n").write("devices/gw-1/files/etc/myapp/b.conf", "b\n");
    fleet.commit("v1");
    gw.sync_ok();
    fleet.remove("devices/gw-1/files/etc/myapp/b.conf");
    fleet.commit("v2");
    gw.sync_ok();
    assert_eq!(gw.read("/etc/myapp/b.conf"), "b\n");
}

#[test]
fn a_file_taken_over_is_restored_when_pruned() {
    let (_tmp, fleet, gw) = setup();
    std::fs::create_dir_all(gw.path("/etc/myapp")).unwrap();
    std::fs::write(gw.path("/etc/myapp/app.conf"), "the vendor's default\n").unwrap();
    std::fs::set_permissions(gw.path("/etc/myapp/app.conf"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "managed\n").write("devices/gw-1/files/etc/myapp/x", "x\n");
    fleet.commit("take over");
    gw.sync_ok();
    assert_eq!(gw.read("/etc/myapp/app.conf"), "managed\n");
    fleet.remove("devices/gw-1/files/etc/myapp/app.conf");
    fleet.commit("release");
    gw.sync_ok();
    assert_eq!(gw.read("/etc/myapp/app.conf"), "the vendor's default\n");
    assert_eq!(gw.mode("/etc/myapp/app.conf"), 0o600);
}

#[test]
fn dry_run_changes_nothing_and_prints_the_plan() {
    let (_tmp, fleet, gw) = setup();
    fleet.write("devices/gw-1/files/etc/myapp/a.conf", "a\n");
    fleet.commit("v1");
    let r = gw.tend(&["sync", "--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("create  /etc/myapp/a.conf"), "{}", r.stdout);
    assert!(gw.snapshot().is_empty(), "dry run wrote something");
    let h = gw.tend(&["history", "--json"]).json();
    assert_eq!(h.as_array().unwrap().len(), 0, "dry run recorded a revision");
    gw.sync_ok();
    fleet.write("devices/gw-1/files/etc/myapp/a.conf", "a2\n");
    fleet.remove("devices/gw-1/files/etc/myapp/a.conf");
    fleet.write("devices/gw-1/files/etc/myapp/b.conf", "b\n");
    fleet.commit("v2");
    let before = gw.snapshot();
    let r = gw.tend(&["sync", "--dry-run"]);
    assert!(
        r.stdout.contains("delete  /etc/myapp/a.conf") && r.stdout.contains("create  /etc/myapp/b.conf"),
        "{}",
        r.stdout
    );
    assert_eq!(gw.snapshot(), before);
}

#[test]
fn history_keeps_revisions_newest_first_bounded() {
    let (_tmp, fleet, gw) = setup();
    let text = std::fs::read_to_string(&gw.config).unwrap() + "[apply]\nhistory = 3\n";
    std::fs::write(&gw.config, text).unwrap();
    let mut commits = Vec::new();
    for i in 0..5 {
        fleet.write("devices/gw-1/files/etc/myapp/a.conf", format!("{i}\n"));
        commits.push(fleet.commit(&format!("c{i}")));
        gw.sync_ok();
    }
    let h = gw.tend(&["history", "--json"]).json();
    let revs: Vec<&str> = h.as_array().unwrap().iter().map(|r| r["revision"].as_str().unwrap()).collect();
    assert_eq!(revs, vec![commits[4].as_str(), commits[3].as_str(), commits[2].as_str()]);
    assert!(h.as_array().unwrap().iter().all(|r| r["outcome"] == "healthy"));
    let human = gw.tend(&["history"]);
    assert!(human.stdout.contains(&commits[4][..12]), "{}", human.stdout);
}

/// `[hooks]` (SPEC §2): before_apply failing holds the revision, retried as a
/// transient failure (the events say why, the fleet's breaker is not told);
/// after_apply failing fails the health gate; a hook past its timeout is
/// killed with everything it started.
#[test]
fn lifecycle_hooks_hold_an_apply_fail_a_revision_and_are_killed_at_their_timeout() {
    use std::time::Duration;
    use tend_e2e::{Mosquitto, Subscription, payloads};
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::with_source_keys(
        tmp.path(),
        &fleet.url(),
        "interval = \"1s\"",
        &format!(
            "[apply]\nhealth_timeout = \"5s\"\nretry = {{ limit = 10, backoff = \"1s\", factor = 1, max = \"1s\" }}\n[mqtt]\nurl = \"{}\"\n",
            broker.url()
        ),
    );
    let hook = |name: &str, body: &str| -> String {
        let p = tmp.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p.to_string_lossy().into_owned()
    };
    // Says "not now" twice, then lets the revision in; both hooks write
    // down what they were told.
    let drain = hook(
        "drain",
        "n=$(cat \"$0.count\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$0.count\"\n\
         echo \"$TEND_REVISION $TEND_PREVIOUS_REVISION $TEND_DEVICE_ID $TEND_FLEET\" >> \"$0.env\"\n\
         if [ $n -le 2 ]; then echo \"draining: $n sessions open\"; exit 1; fi\n",
    );
    let warm = hook("warm", "echo \"$TEND_REVISION $TEND_PREVIOUS_REVISION $TEND_DEVICE_ID\" >> \"$0.env\"\n");
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "v1\n");
    let v1 = fleet.commit("v1");
    gw.sync_ok();
    let events = Subscription::start(&broker, "tend/v1/test/gw-1/events", "hook-events");
    let daemon = gw.start_daemon_logging("info");

    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "v2\n").write(
        "devices/gw-1/tend.toml",
        format!("[hooks]\nbefore_apply = [\"{drain}\"]\nafter_apply = [\"{warm}\"]\ntimeout = \"10s\"\n"),
    );
    let v2 = fleet.commit("v2 with hooks");
    gw.wait_status("v2 applied after the hook let it in", Duration::from_secs(60), |s| {
        s["phase"] == "synced" && s["revision"] == v2.as_str()
    });
    assert_eq!(gw.read("/etc/myapp/app.conf"), "v2\n");
    assert_eq!(std::fs::read_to_string(format!("{drain}.count")).unwrap().trim(), "3");
    let told = format!("{v2} {v1} gw-1 test");
    let env = std::fs::read_to_string(format!("{drain}.env")).unwrap();
    assert!(env.lines().all(|l| l == told), "{env}");
    assert_eq!(std::fs::read_to_string(format!("{warm}.env")).unwrap(), format!("{v2} {v1} gw-1\n"));
    let lines = events.wait("v2 healthy", Duration::from_secs(30), |l| {
        payloads(l).iter().any(|e| e["kind"] == "healthy" && e["revision"] == v2.as_str())
    });
    let evs = payloads(&lines);
    let held: Vec<&serde_json::Value> =
        evs.iter().filter(|e| e["kind"] == "failed" && e["revision"] == v2.as_str()).collect();
    assert_eq!(held.len(), 2, "{evs:?}");
    for (i, e) in held.iter().enumerate() {
        let error = e["error"].as_str().unwrap();
        assert!(
            error.contains("not applied now: before_apply hook")
                && error.contains(&format!("draining: {} sessions open", i + 1)),
            "{e}"
        );
        // Tried again here: not a failure report for the fleet's breaker.
        assert_eq!(e["retry"], true, "{e}");
    }
    // Never recorded as a failed revision, never quarantined.
    let history = gw.tend(&["history", "--json"]).json();
    assert!(history.as_array().unwrap().iter().all(|r| r["outcome"] != "failed"), "{history}");

    // after_apply failing: the revision fails its health gate, rolled back.
    fleet
        .write("devices/gw-1/files/etc/myapp/app.conf", "v3\n")
        .write("devices/gw-1/tend.toml", "[hooks]\nafter_apply = [\"sh\", \"-c\", \"echo warmup failed; exit 3\"]\n");
    let v3 = fleet.commit("v3, its warmup fails");
    let s = gw.wait_status("v3 rolled back", Duration::from_secs(60), |s| {
        s["phase"] == "rolled_back" && s["target_revision"] == v3.as_str()
    });
    let error = s["error"].as_str().unwrap();
    assert!(error.contains("after_apply hook exit status: 3; output: warmup failed"), "{s}");
    assert_eq!(s["revision"], v2.as_str(), "{s}");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "v2\n");

    // A hook that hangs, with a child: both killed at the timeout.
    let pid_file = tmp.path().join("hang.pid");
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "v4\n").write(
        "devices/gw-1/tend.toml",
        format!(
            "[hooks]\nbefore_apply = [\"sh\", \"-c\", \"sleep 300 & echo $! > {}; sleep 300\"]\ntimeout = \"2s\"\n",
            pid_file.display()
        ),
    );
    let v4 = fleet.commit("v4, its hook hangs");
    events.wait("v4 held by a hook past its timeout", Duration::from_secs(60), |l| {
        payloads(l).iter().any(|e| {
            e["kind"] == "failed"
                && e["revision"] == v4.as_str()
                && e["error"].as_str().is_some_and(|x| x.contains("before_apply hook timed out after 2s"))
        })
    });
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!tend_e2e::pid_alive(pid), "the hook's child {pid} outlived its timeout");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "v2\n");
    drop(daemon);
}

/// SPEC §3, 9: before writing, each file system tend writes keeps
/// `[apply].min_free`; short, the revision waits (retried, never
/// quarantined) with the file system and the numbers named, and nothing of
/// it is written; freed, it applies.
#[test]
fn a_revision_that_would_fill_a_file_system_waits_until_there_is_room() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::new(tmp.path(), &fleet.url(), "[apply]\nmin_free = \"2MiB\"");
    // A 16 MiB files root and a 32 MiB state_dir, each on its own tmpfs.
    let _root = tend_e2e::Tmpfs::mount(&gw.root, "16m");
    let _state = tend_e2e::Tmpfs::mount(&gw.state, "32m");
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "v1\n");
    fleet.commit("v1");
    gw.sync_ok();
    let noise =
        |n: usize| -> Vec<u8> { (0..n).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect() };
    // 3 MiB to write; someone else's 12 MiB on the root leaves about 4
    // free: 3 written + 2 kept > 4.
    std::fs::write(gw.root.join("filler"), vec![1u8; 12 << 20]).unwrap();
    fleet.write("devices/gw-1/files/opt/myapp/model.bin", noise(3 << 20));
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "v2\n");
    let v2 = fleet.commit("v2, 3 MiB more");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    let mount = gw.root.display().to_string();
    assert!(
        r.stderr
            .contains(&format!("not applied now: not enough free space on the file system at {mount} ([files].root)"))
            && r.stderr.contains("this revision writes 3.0 MiB there and [apply].min_free keeps 2MiB"),
        "{}",
        r.stderr
    );
    // Nothing of v2 written, not even app.conf, and no temporary file.
    assert_eq!(gw.read("/etc/myapp/app.conf"), "v1\n");
    let left: Vec<String> = gw
        .snapshot()
        .into_iter()
        .filter(|(p, (mode, _))| (p.starts_with("etc/") || p.starts_with("opt/")) && mode & 0o170000 == 0o100000)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(left, ["etc/myapp/app.conf"], "{left:?}");
    let s = gw.tend(&["status", "--json"]).json();
    assert!(s["error"].as_str().unwrap().contains("not enough free space"), "{s}");
    assert_eq!(s["target_revision"], v2.as_str());
    // Still short: still waiting, and never quarantined.
    assert_eq!(gw.tend(&["sync"]).code, 1);
    // Room made: it applies.
    std::fs::remove_file(gw.root.join("filler")).unwrap();
    let r = gw.sync_ok();
    assert_eq!(r["commit"], v2.as_str(), "{r}");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "v2\n");
    assert_eq!(std::fs::metadata(gw.root.join("opt/myapp/model.bin")).unwrap().len(), 3 << 20);

    // The state_dir short: the store is where the new contents go first.
    let fill = gw.state.join("filler");
    let st = tend::reconcile::space::free_bytes(&gw.state).unwrap();
    std::fs::write(&fill, vec![1u8; (st - (4 << 20)) as usize]).unwrap();
    fleet.write("devices/gw-1/files/opt/myapp/model.bin", noise((3 << 20) + 1));
    let v3 = fleet.commit("v3, a new 3 MiB");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&format!("on the file system at {} (state_dir)", gw.state.display())), "{}", r.stderr);
    std::fs::remove_file(&fill).unwrap();
    assert_eq!(gw.sync_ok()["commit"], v3.as_str());
}
