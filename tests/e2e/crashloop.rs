//! A revision that takes the agent down with it (SPEC §3, 8): real daemons
//! under a restart loop like the unit's (`Restart=on-failure`, and
//! `ExecStopPost=tend exited` recording how each run ended), a real Mosquitto
//! and real Git. A revision whose health check kills the agent is applied by
//! each canary at most `crash_limit` times, then rolled back, quarantined and
//! reported; the later wave holds it and never applies it; the next good
//! commit reaches every gateway. One SIGKILL during a health window does not
//! condemn a revision that is healthy after the restart.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tend_e2e::{Fleet, Gateway, Mosquitto, Subscription, shared_commit, shared_gateway};

/// `tend run` restarted whenever it does not exit 0, as systemd does with
/// `Restart=on-failure`; after each run, `tend exited` with the variables
/// systemd gives `ExecStopPost=`.
struct Supervised {
    deaths: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    child: Arc<Mutex<Option<Child>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Supervised {
    fn start(gw: &Gateway) -> Supervised {
        let log = gw.dir.join("supervised.log");
        let (deaths, stop) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicBool::new(false)));
        let child: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
        let (d, s, c, l) = (deaths.clone(), stop.clone(), child.clone(), log.clone());
        let command = {
            let gw = Gateway {
                dir: gw.dir.clone(),
                root: gw.root.clone(),
                state: gw.state.clone(),
                config: gw.config.clone(),
            };
            move || gw.command()
        };
        let thread = std::thread::spawn(move || {
            loop {
                let out = std::fs::OpenOptions::new().create(true).append(true).open(&l).unwrap();
                let spawned = command().arg("run").env("TEND_LOG", "info").stdout(Stdio::null()).stderr(out).spawn();
                *c.lock().unwrap() = Some(spawned.unwrap());
                let status = loop {
                    if let Some(st) = c.lock().unwrap().as_mut().unwrap().try_wait().unwrap() {
                        break st;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                // ExecStopPost=: $SERVICE_RESULT, $EXIT_CODE, $EXIT_STATUS.
                let (result, code, st) = match (status.code(), status.signal()) {
                    (Some(0), _) => ("success", "exited", "0".to_owned()),
                    (Some(n), _) => ("exit-code", "exited", n.to_string()),
                    (None, Some(sig)) => ("signal", "killed", signal_name(sig)),
                    _ => ("signal", "killed", String::new()),
                };
                let recorded = command()
                    .arg("exited")
                    .env("SERVICE_RESULT", result)
                    .env("EXIT_CODE", code)
                    .env("EXIT_STATUS", &st)
                    .status()
                    .unwrap();
                assert!(recorded.success(), "tend exited failed");
                if status.success() || s.load(Ordering::SeqCst) {
                    return;
                }
                d.fetch_add(1, Ordering::SeqCst);
                let mut f = std::fs::OpenOptions::new().append(true).open(&l).unwrap();
                writeln!(f, "=== supervisor: tend ended ({result} {code} {st}); restarting").unwrap();
                // RestartSec=.
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Supervised { deaths, stop, child, thread: Some(thread), log }
    }

    fn deaths(&self) -> u32 {
        self.deaths.load(Ordering::SeqCst)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL the running daemon (a power cut, an OOM kill).
    fn kill(&self) {
        if let Some(c) = self.child.lock().unwrap().as_mut() {
            let _ = c.kill();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(c) = self.child.lock().unwrap().as_mut() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig).map_or(sig.to_string(), |s| s.as_str().trim_start_matches("SIG").to_owned())
}

/// `kind` events of `device` for `revision`. Events are sent at least once:
/// one the broker got but the killed agent did not see acknowledged comes
/// again after the restart, with the same `seq`.
fn count(lines: &[String], kind: &str, revision: &str, device: &str) -> usize {
    tend_e2e::payloads(lines)
        .iter()
        .filter(|e| e["kind"] == kind && e["revision"] == revision && e["device_id"] == device)
        .map(|e| e["seq"].as_u64().expect("every event has a seq"))
        .collect::<std::collections::BTreeSet<u64>>()
        .len()
}

#[test]
fn a_revision_that_kills_the_agent_is_failed_on_the_canaries_and_held_by_the_later_wave() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let broker = Mosquitto::start();
    let events = Subscription::start(&broker, "tend/v1/test/+/events", "crashloop-events");
    let v1 = shared_commit(&fleet, "1", "[\"true\"]", "");
    let devices = [("gw-0", "canary"), ("gw-1", "canary"), ("gw-2", "all"), ("gw-3", "all")];
    let gateways: Vec<Gateway> =
        devices.iter().map(|(dev, wave)| shared_gateway(tmp.path(), &fleet, &broker.url(), dev, wave, "5s")).collect();
    let daemons: Vec<Supervised> = gateways.iter().map(Supervised::start).collect();
    for gw in &gateways {
        gw.wait_status("v1", Duration::from_secs(60), |s| s["phase"] == "synced" && s["revision"] == v1.as_str());
    }

    // v2's health check kills the agent (SIGKILL to its parent). The later
    // wave is due 40 s after the commit: long after the canaries are done.
    let waves = "[rollout]\nwaves = [{ name = \"canary\", percent = 50 }, { name = \"all\", percent = 100, after = \"40s\" }]\nmax_failed = 2\n";
    let v2 = shared_commit(&fleet, "2", "[\"sh\", \"-c\", \"kill -KILL $PPID\"]", waves);
    for (i, gw) in gateways[..2].iter().enumerate() {
        let s = gw.wait_status("the canary failed v2", Duration::from_secs(90), |s| {
            s["phase"] == "rolled_back" && s["target_revision"] == v2.as_str()
        });
        assert_eq!(s["revision"], v1, "{s}");
        let error = s["error"].as_str().unwrap();
        // Said by the failure, then by each poll that refuses it.
        assert!(
            error.contains("the agent died 2 times while applying it (the last time: killed by signal SIGKILL)"),
            "{s}"
        );
        assert_eq!(daemons[i].deaths(), 2, "{}", daemons[i].log_text());
        assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 1\n");
        let h = gw.tend(&["history", "--json"]).json();
        assert_eq!(h[0]["revision"], v2, "{h}");
        assert_eq!(h[0]["outcome"], "rolled_back", "{h}");
        // Reported for the fleet's circuit breaker, retained.
        let report = broker.read_one(&format!("tend/v1/test/_rollout/{v2}/{}", devices[i].0), &[], 5).unwrap();
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_eq!(report["revision"], v2, "{report}");
        assert!(report["error"].as_str().unwrap().contains("the agent died 2 times"), "{report}");
    }
    // The later wave holds it (before its wave is due and after).
    for gw in &gateways[2..] {
        let s = gw.wait_status("held", Duration::from_secs(60), |s| s["phase"] == "held");
        assert!(s["error"].as_str().unwrap().contains("failed on 2 gateways"), "{s}");
    }
    let committed = committer_time(&fleet, &v2);
    while now() < committed + 44 {
        std::thread::sleep(Duration::from_millis(500));
    }
    // Each canary stays on v1 (quarantined: no third try), and the later wave
    // never applied v2.
    let lines = events.wait("both canaries' rollbacks", Duration::from_secs(30), |l| {
        devices[..2].iter().all(|(d, _)| count(l, "rolled_back", &v2, d) == 1)
    });
    for (i, (dev, _)) in devices.iter().enumerate() {
        let tries = count(&lines, "sync_started", &v2, dev);
        if i < 2 {
            assert!((1..=2).contains(&tries), "{dev} applied v2 {tries} times");
            assert_eq!(daemons[i].deaths(), 2, "{dev} died again: {}", daemons[i].log_text());
            assert_eq!(count(&lines, "failed", &v2, dev), 1, "{dev}");
        } else {
            assert_eq!(tries, 0, "{dev} applied v2");
            assert_eq!(daemons[i].deaths(), 0, "{dev} died: {}", daemons[i].log_text());
            let s = gateways[i].tend(&["status", "--json"]).json();
            assert_eq!((s["phase"].as_str(), s["revision"].as_str()), (Some("held"), Some(v1.as_str())), "{s}");
            assert_eq!(gateways[i].read("/etc/myapp/app.conf"), "version = 1\n");
        }
    }

    // The next good commit reaches every gateway.
    let v3 = shared_commit(&fleet, "3", "[\"true\"]", "");
    for gw in &gateways {
        gw.wait_status("v3", Duration::from_secs(60), |s| s["phase"] == "synced" && s["revision"] == v3.as_str());
        assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 3\n");
    }
    drop(daemons);
}

#[test]
fn one_power_cut_in_a_health_window_does_not_condemn_a_healthy_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let broker = Mosquitto::start();
    let events = Subscription::start(&broker, "tend/v1/test/+/events", "power-cut-events");
    let gw = shared_gateway(tmp.path(), &fleet, &broker.url(), "gw-0", "all", "5s");
    let ready = tmp.path().join("ready");
    let v1 = shared_commit(&fleet, "1", "[\"true\"]", "");
    let daemon = Supervised::start(&gw);
    gw.wait_status("v1", Duration::from_secs(60), |s| s["phase"] == "synced" && s["revision"] == v1.as_str());

    // v2 is healthy once `ready` exists; the health window is long enough
    // to be killed inside it.
    let text =
        std::fs::read_to_string(&gw.config).unwrap().replace("health_timeout = \"5s\"", "health_timeout = \"1h\"");
    std::fs::write(&gw.config, text).unwrap();
    daemon.kill();
    gw.wait_status("restarted on v1", Duration::from_secs(30), |s| s["revision"] == v1.as_str());
    let v2 = shared_commit(&fleet, "2", &format!("[\"test\", \"-e\", \"{}\"]", ready.display()), "");
    events.wait("v2 applied", Duration::from_secs(30), |l| count(l, "applied", &v2, "gw-0") == 1);
    gw.wait_status("v2 in its health window", Duration::from_secs(30), |s| {
        s["phase"] == "progressing" && s["revision"] == v2.as_str()
    });
    daemon.kill();
    // The restart returns to last-known-good, then tries v2 again.
    events.wait("v2 applied again", Duration::from_secs(30), |l| count(l, "applied", &v2, "gw-0") == 2);
    assert_eq!(daemon.deaths(), 2, "{}", daemon.log_text());
    let h = gw.tend(&["history", "--json"]).json();
    let first = h.as_array().unwrap().iter().find(|r| r["revision"] == v2.as_str() && r["outcome"] == "interrupted");
    let first = first.unwrap_or_else(|| panic!("the interrupted try is not in the history: {h}"));
    assert!(first["error"].as_str().unwrap().contains("the agent died during its health window (1 of"), "{first}");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 2\n");
    std::fs::write(&ready, "").unwrap();
    let s = gw.wait_status("v2 healthy", Duration::from_secs(30), |s| s["phase"] == "synced");
    assert_eq!((s["revision"].as_str(), s["last_good_revision"].as_str()), (Some(v2.as_str()), Some(v2.as_str())));
    assert!(s["error"].is_null(), "{s}");
    let h = gw.tend(&["history", "--json"]).json();
    assert_eq!((h[0]["revision"].as_str(), h[0]["outcome"].as_str()), (Some(v2.as_str()), Some("healthy")), "{h}");
    let s = gw.tend(&["status", "--json"]).json();
    assert!(s["error"].is_null(), "{s}");
    assert_eq!(daemon.deaths(), 2, "{}", daemon.log_text());
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn committer_time(fleet: &Fleet, commit: &str) -> u64 {
    let out = std::process::Command::new("git")
        .current_dir(&fleet.dir)
        .args(["show", "-s", "--format=%ct", commit])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
