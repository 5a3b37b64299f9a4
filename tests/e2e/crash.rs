//! Acceptance 4: SIGKILL of `tend sync` at random moments during the sync of a
//! 1,000-file bundle never leaves a torn or partly written file (nor a missing
//! one that both commits have), and the next sync converges to the commit.
//! Repeated 24 times, alternating between two commits that change every file,
//! so kills land in writes, renames, prunes, store updates and hooks alike;
//! every third kill waits for the writes, and the kills that landed among
//! them (both versions on disk at once) are counted. An uninterrupted sync
//! runs file 0's `on_change` hook on its new content.
//!
//! Ignored, and failing (a product bug, issue 28's report): a kill after a
//! file was written and before its hook ran loses the hook.

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

/// A fleet with two versions of the bulk files and a gateway whose file 0
/// has an `on_change` hook that records the version it finds in that file.
struct Setup {
    _tmp: tempfile::TempDir,
    fleet: Fleet,
    gw: Gateway,
    versions: BTreeMap<u32, String>,
    hook_log: std::path::PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let fleet = Fleet::new(tmp.path(), "fleet");
        // These kills are about torn files, not about a revision that kills
        // the agent (crashloop.rs): crash_limit (default 2) at its maximum,
        // so no revision is quarantined for the kills that land in its apply.
        let gw = Gateway::new(tmp.path(), &fleet.url(), "allow_hooks = true\n[apply]\ncrash_limit = 100");
        let hook_log = tmp.path().join("hooks.log");
        fleet.write(
            "devices/gw-1/tend.toml",
            format!(
                "[[file]]\npath = \"/{}\"\non_change = [\"sh\", \"-c\", \"read -r _ v _ < {} && echo $v >> {}\"]\n",
                name(0),
                gw.path(&name(0)).display(),
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
        Setup { _tmp: tmp, fleet, gw, versions, hook_log }
    }

    /// The version file 0's hook found the last time it ran.
    fn last_hook(&self) -> Option<String> {
        std::fs::read_to_string(&self.hook_log).unwrap_or_default().lines().last().map(str::to_owned)
    }

    /// Start `tend sync` to `v` and SIGKILL it as soon as file `i` has v's content.
    fn kill_once_written(&self, v: u32, i: usize) -> bool {
        self.fleet.reset_hard(&self.versions[&v]);
        let mut child = self.gw.command().arg("sync").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let p = self.gw.path(&name(i));
        while child.try_wait().unwrap().is_none() && std::fs::read(&p).ok() != Some(content(v, i)) {
            std::thread::sleep(Duration::from_micros(200));
        }
        let running = child.try_wait().unwrap().is_none();
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
        running
    }
}

#[test]
fn sigkill_never_tears_a_file_and_the_next_sync_converges() {
    let setup = Setup::new();
    let Setup { fleet, gw, versions, .. } = &setup;

    // How long an uninterrupted switch between the versions takes here, to
    // spread the kills over it (the first sync also stores every blob).
    fleet.reset_hard(&versions[&1]);
    gw.sync_ok();
    assert_eq!(setup.last_hook().as_deref(), Some("1"), "the hook did not run on the first sync");
    let mut samples = Vec::new();
    for v in [2, 1, 2] {
        fleet.reset_hard(&versions[&v]);
        let t = Instant::now();
        gw.sync_ok();
        samples.push(t.elapsed());
        assert_eq!(setup.last_hook(), Some(v.to_string()), "the hook did not run on file 0's new content");
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
                // Only the files v2 prunes may be missing: a file both
                // commits have is replaced by a rename, never removed first.
                Err(e) => assert!(
                    e.kind() == std::io::ErrorKind::NotFound && i % 10 == 5,
                    "round {round}: {}: {e}",
                    p.display()
                ),
            }
        }
    };
    // The version of each file on disk (None: missing).
    let state = || -> Vec<Option<u32>> {
        (0..FILES)
            .map(|i| std::fs::read(gw.path(&name(i))).ok().map(|d| if d == content(2, i) { 2 } else { 1 }))
            .collect()
    };
    // Whether a sync to `v` from `before` stopped among its writes: some of
    // the files it had to change are changed, some not yet.
    let among_writes = |v: u32, before: &[Option<u32>], after: &[Option<u32>]| {
        let want = |i: usize| (v == 1 || i % 10 != 5).then_some(v);
        let needed: Vec<usize> = (0..FILES).filter(|&i| before[i] != want(i)).collect();
        let done = needed.iter().filter(|&&i| after[i] == want(i)).count();
        done > 0 && done < needed.len()
    };
    let check_converged = |v: u32, when: &str| {
        for i in 0..FILES {
            let p = gw.path(&name(i));
            if v == 2 && i % 10 == 5 {
                assert!(!p.exists(), "{} should have been pruned", p.display());
            } else {
                assert_eq!(std::fs::read(&p).unwrap(), content(v, i), "{} not converged to v{v}", p.display());
            }
        }
        let leftovers: Vec<_> = tend_e2e::snapshot(&gw.root).into_keys().filter(|k| k.contains(".tend-tmp")).collect();
        assert!(leftovers.is_empty(), "{when}: temporary files left behind: {leftovers:?}");
    };

    // About every third kill waits for the sync to write: it lands right
    // after the first file this sync changes (in path order) has changed.
    // The others land at a random moment of an uninterrupted switch's
    // duration (most of it is not writing: start, fetch, render, store).
    let path_order = {
        let mut o: Vec<usize> = (0..FILES).collect();
        o.sort_by_key(|i| name(*i));
        o
    };
    let (mut killed_running, mut killed_mid_write, mut triggered, mut pending) = (0, 0, 0, false);
    let mut waited_mid_write = 0;
    for round in 0..24 {
        let v = if round % 2 == 0 { 1 } else { 2 };
        fleet.reset_hard(&versions[&v]);
        let before = state();
        // The files this sync writes (not those it prunes), in path order; a
        // kill after the first of several is among the writes.
        let writes: Vec<usize> =
            path_order.iter().copied().filter(|&i| (v == 1 || i % 10 != 5) && before[i] != Some(v)).collect();
        // Every third round, or the next one that has writes to wait for.
        pending |= round % 3 == 2;
        let waited = pending && writes.len() >= 2;
        pending &= !waited;
        let still_running = match writes.first().copied().filter(|_| waited) {
            Some(first) => {
                triggered += 1;
                setup.kill_once_written(v, first)
            }
            _ => {
                let mut child = gw.command().arg("sync").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
                std::thread::sleep(full.mul_f64(fastrand::f64()));
                let running = child.try_wait().unwrap().is_none();
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                running
            }
        };
        killed_running += usize::from(still_running);
        check_untorn(round);
        let mid_write = among_writes(v, &before, &state());
        // Most of a sync is not writing (start, fetch, render, store): a
        // kill that waited for the writes lands among them, unless this
        // process was not scheduled until the sync had written the rest
        // (a loaded machine): counted, and most must land.
        killed_mid_write += usize::from(mid_write);
        waited_mid_write += usize::from(mid_write && waited);
        // Every fourth round, and at the end, the next sync must converge.
        if round % 4 == 3 || round == 23 {
            let r = gw.sync_ok();
            assert_eq!(r["commit"], versions[&v]);
            check_converged(v, &format!("round {round}"));
            let again = gw.sync_ok();
            assert_eq!(again["operations"].as_array().unwrap().len(), 0, "converged state planned more work");
        }
    }
    eprintln!(
        "of 24 kills, {killed_running} landed while tend ran, {killed_mid_write} among its writes \
         ({triggered} waited for the writes)"
    );
    assert!(triggered >= 6, "only {triggered} kills waited for the writes");
    assert!(
        waited_mid_write * 2 >= triggered,
        "only {waited_mid_write} of the {triggered} kills that waited for the writes landed among them"
    );

    fleet.reset_hard(&versions[&1]);
    gw.sync_ok();
    check_converged(1, "at the end");
    let status = gw.tend(&["status", "--json"]).json();
    assert_eq!(status["phase"], "synced");
    assert_eq!(status["revision"], versions[&1]);
}

/// Hooks run after all of a sync's writes. A SIGKILL after file 0 was
/// written and before its hook ran: the next sync must still run the hook on
/// file 0's new content (the app must reload it), though it finds file 0
/// already as desired: the hooks due are recorded with the write-ahead and
/// removed once run (found by this test in issue 28).
#[test]
fn a_kill_between_a_write_and_its_hook_does_not_lose_the_hook() {
    let setup = Setup::new();
    let Setup { fleet, gw, versions, .. } = &setup;
    fleet.reset_hard(&versions[&1]);
    gw.sync_ok();
    assert_eq!(setup.last_hook().as_deref(), Some("1"));
    assert!(setup.kill_once_written(2, 0), "the sync ended before file 0 was written");
    assert_eq!(std::fs::read(gw.path(&name(0))).unwrap(), content(2, 0));
    assert_eq!(setup.last_hook().as_deref(), Some("1"), "the kill came after the hook: it did not test this");
    assert_eq!(gw.sync_ok()["commit"], versions[&2]);
    assert_eq!(setup.last_hook().as_deref(), Some("2"), "file 0 changed to v2 and its on_change hook never ran on it");
}
