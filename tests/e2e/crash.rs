//! Acceptance 4: SIGKILL of `tend sync` at random moments during the sync of a
//! 1,000-file bundle never leaves a torn or partly written file, and the next
//! sync converges to the commit. Repeated 24 times, alternating between two
//! commits that change every file, so kills land in writes, renames, prunes,
//! store updates and hooks alike.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tend_e2e::{Fleet, Gateway};

const FILES: usize = 1000;

/// The content of file `i` in version `v`: long enough that a torn write shows.
fn content(v: u32, i: usize) -> Vec<u8> {
    let line = format!("version {v} of file {i}: {}\n", "x".repeat(60));
    line.repeat(40 + (i % 7) * 10).into_bytes()
}

fn name(i: usize) -> String {
    format!("etc/myapp/bulk/{:02}/f{i:04}.conf", i % 20)
}

#[test]
fn sigkill_never_tears_a_file_and_the_next_sync_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::new(tmp.path(), &fleet.url(), "allow_hooks = true");
    let hook_log = tmp.path().join("hooks.log");
    fleet.write(
        "devices/gw-1/tend.toml",
        format!(
            "[[file]]\npath = \"/{}\"\non_change = [\"sh\", \"-c\", \"echo ran >> {}\"]\n",
            name(0),
            hook_log.display()
        ),
    );
    let mut versions = BTreeMap::new();
    for v in [1u32, 2] {
        for i in 0..FILES {
            // Version 2 also drops every tenth file, so prunes are interrupted too.
            if v == 2 && i % 10 == 5 {
                fleet.remove(&format!("devices/gw-1/files/{}", name(i)));
            } else {
                fleet.write(&format!("devices/gw-1/files/{}", name(i)), content(v, i));
            }
        }
        versions.insert(v, fleet.commit(&format!("v{v}")));
    }

    // How long an uninterrupted switch between the versions takes here, to
    // spread the kills over it (the first sync also stores every blob).
    fleet.reset_hard(&versions[&1]);
    gw.sync_ok();
    let mut samples = Vec::new();
    for v in [2, 1, 2] {
        fleet.reset_hard(&versions[&v]);
        let t = Instant::now();
        gw.sync_ok();
        samples.push(t.elapsed());
    }
    samples.sort();
    let full = samples[1].max(Duration::from_millis(20));
    eprintln!("uninterrupted 1,000-file switch: {full:?} (median of {samples:?})");

    let check_untorn = |round: usize| {
        for i in 0..FILES {
            let p = gw.path(&name(i));
            match std::fs::read(&p) {
                Ok(data) => assert!(
                    data == content(1, i) || data == content(2, i),
                    "round {round}: {} is torn ({} bytes)",
                    p.display(),
                    data.len()
                ),
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{}: {e}", p.display()),
            }
        }
    };
    let check_converged = |v: u32| {
        for i in 0..FILES {
            let p = gw.path(&name(i));
            if v == 2 && i % 10 == 5 {
                assert!(!p.exists(), "{} should have been pruned", p.display());
            } else {
                assert_eq!(std::fs::read(&p).unwrap(), content(v, i), "{} not converged to v{v}", p.display());
            }
        }
        let leftovers: Vec<_> = tend_e2e::snapshot(&gw.root).into_keys().filter(|k| k.contains(".tend-tmp")).collect();
        assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
    };

    let mut killed_mid_apply = 0;
    for round in 0..24 {
        let v = if round % 2 == 0 { 1 } else { 2 };
        fleet.reset_hard(&versions[&v]);
        let mut child = gw.command().arg("sync").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let delay = full.mul_f64(fastrand::f64());
        std::thread::sleep(delay);
        let still_running = child.try_wait().unwrap().is_none();
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
        if still_running {
            killed_mid_apply += 1;
        }
        check_untorn(round);
        // Every fourth round, and at the end, the next sync must converge.
        if round % 4 == 3 || round == 23 {
            let r = gw.sync_ok();
            assert_eq!(r["commit"], versions[&v]);
            check_converged(v);
            let again = gw.sync_ok();
            assert_eq!(again["operations"].as_array().unwrap().len(), 0, "converged state planned more work");
        }
    }
    eprintln!("{killed_mid_apply} of 24 kills landed while tend was running");
    assert!(killed_mid_apply >= 8, "too few kills landed during a sync: {killed_mid_apply}");
    fleet.reset_hard(&versions[&1]);
    gw.sync_ok();
    check_converged(1);
    let status = gw.tend(&["status", "--json"]).json();
    assert_eq!(status["phase"], "synced");
    assert_eq!(status["revision"], versions[&1]);
}
