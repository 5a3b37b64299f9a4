//! Issue 3, acceptance 3-6: the daemon with a real Git server that is killed and
//! brought back, restarts without network, SIGTERM and SIGKILL mid-sync, and
//! the CLI through the control socket.

use std::time::{Duration, Instant};

use tend_e2e::{Fleet, Gateway, GitDaemon};

const FAST: &str =
    "[apply]\nhealth_timeout = \"3s\"\nretry = { limit = 3, backoff = \"1s\", factor = 1, max = \"1s\" }\n";

fn fast_gateway(parent: &std::path::Path, url: &str) -> Gateway {
    let gw = Gateway::new(parent, url, FAST);
    let text = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace("timeout = \"10s\"", "timeout = \"3s\"\ninterval = \"1s\"\njitter = \"0s\"");
    std::fs::write(&gw.config, text).unwrap();
    gw
}

fn two_files(fleet: &Fleet, version: &str) {
    fleet
        .write("devices/gw-1/files/etc/myapp/app.conf", format!("version = {version}\n"))
        .write("devices/gw-1/files/etc/myapp/other.conf", "other\n");
}

#[test]
fn offline_enforcement_then_recovery_with_a_killed_git_server() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let fleet = Fleet::new(&srv, "fleet");
    two_files(&fleet, "1");
    fleet.commit("v1");
    let server = GitDaemon::start(&srv);
    let port = server.port;
    let gw = fast_gateway(tmp.path(), &server.url("fleet"));
    gw.sync_ok();

    // Server down: `tend sync` restores a deleted file from the store and says
    // the source is unreachable.
    drop(server);
    std::fs::remove_file(gw.path("/etc/myapp/other.conf")).unwrap();
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(gw.read("/etc/myapp/other.conf"), "other\n");
    let s = gw.tend(&["status", "--json"]).json();
    assert_eq!(s["source"], "unreachable");

    // The daemon's self-heal does the same, still offline.
    let daemon = gw.start_daemon();
    std::fs::remove_file(gw.path("/etc/myapp/app.conf")).unwrap();
    gw.wait_files("self-heal to restore app.conf", Duration::from_secs(20), |g| g.path("/etc/myapp/app.conf").exists());
    assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 1\n");
    gw.wait_status("source unreachable", Duration::from_secs(10), |s| s["source"] == "unreachable");

    // Server back on the same port with a new commit: applied by the daemon.
    two_files(&fleet, "2");
    let v2 = fleet.commit("v2");
    let _server = GitDaemon::start_on(&srv, port);
    // The status names v2 from its apply on (`progressing` during its
    // health window), `synced` once it passed.
    let s = gw.wait_status("v2 applied", Duration::from_secs(30), |s| {
        s["revision"] == v2.as_str() && s["phase"] != "progressing"
    });
    assert_eq!(s["source"], "ok");
    assert_eq!(s["phase"], "synced");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 2\n");
    let (code, took) = daemon.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "daemon did not exit 0 on SIGTERM");
    eprintln!("stopped in {took:?}");
}

#[test]
fn a_restart_without_network_enforces_last_known_good_before_fetching() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    two_files(&fleet, "1");
    fleet.commit("v1");
    let gw = fast_gateway(tmp.path(), &fleet.url());
    gw.sync_ok();

    // The source is now a server that accepts and holds every connection
    // without a byte of reply until the test lets go, and the fetch timeout
    // is longer than the test: no fetch can end before the test lets go.
    // Enforcement must not wait for one: the files come back meanwhile.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("git://{}/fleet", listener.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::net::TcpStream>::new()));
    // Once the test lets go, a new connection (a retry) is closed at once.
    let let_go = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (held, let_go) = (held.clone(), let_go.clone());
        std::thread::spawn(move || {
            for c in listener.incoming().flatten() {
                if let_go.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                } else {
                    held.lock().unwrap().push(c);
                }
            }
        });
    }
    let text = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace(&fleet.url(), &url)
        .replace("timeout = \"3s\"", "timeout = \"10m\"");
    std::fs::write(&gw.config, text).unwrap();
    std::fs::remove_file(gw.path("/etc/myapp/app.conf")).unwrap();
    std::fs::write(gw.path("/etc/myapp/other.conf"), "tampered\n").unwrap();

    let log = tmp.path().join("daemon.log");
    let child = gw
        .command()
        .arg("run")
        .env("TEND_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = tend_e2e::Daemon { child, log };
    // The limit bounds a hang only: a daemon that fetched first would not
    // restore the files before the test lets its fetch go, in 10 minutes.
    gw.wait_files("boot enforcement while the fetch is held", Duration::from_secs(120), |g| {
        g.path("/etc/myapp/app.conf").exists()
            && std::fs::read_to_string(g.path("/etc/myapp/other.conf")).unwrap() == "other\n"
    });
    // The files are back before the enforcement returns (its record, its
    // flush) and says so: wait for the line, still while the fetch is held.
    let said = std::time::Instant::now();
    while !daemon.log_text().contains("enforced from the store: ") {
        assert!(said.elapsed() < Duration::from_secs(60), "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("enforced while {} fetch(es) were held", held.lock().unwrap().len());
    // Let go: the fetch fails at once (and so does any retry), and the
    // daemon stops.
    let_go.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in held.lock().unwrap().iter() {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    let (code, _) = daemon.terminate(Duration::from_secs(40));
    assert_eq!(code, Some(0));
}

/// 1,000 files, each long enough that a torn write shows.
fn bulk(fleet: &Fleet, version: u32) {
    for i in 0..1000 {
        fleet.write(&format!("devices/gw-1/files/etc/myapp/bulk/{:02}/f{i:04}", i % 20), bulk_content(version, i));
    }
}

fn bulk_content(version: u32, i: usize) -> String {
    format!("version {version} of file {i}\n").repeat(50)
}

/// The version of each bulk file on disk; a torn or missing one fails.
fn bulk_versions(gw: &Gateway) -> Vec<u32> {
    (0..1000)
        .map(|i| {
            let p = gw.path(&format!("/etc/myapp/bulk/{:02}/f{i:04}", i % 20));
            let data = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (1..=2).find(|v| data == bulk_content(*v, i)).unwrap_or_else(|| panic!("{} is torn", p.display()))
        })
        .collect()
}

#[test]
fn sigterm_and_sigkill_during_a_sync_leave_no_torn_file() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    bulk(&fleet, 1);
    let v1 = fleet.commit("v1");
    bulk(&fleet, 2);
    let v2 = fleet.commit("v2");
    let gw = fast_gateway(tmp.path(), &fleet.url());
    // Long interval: only the start and explicit syncs act.
    let text = std::fs::read_to_string(&gw.config).unwrap().replace("interval = \"1s\"", "interval = \"1h\"");
    std::fs::write(&gw.config, text).unwrap();
    fleet.reset_hard(&v1);
    gw.sync_ok();

    for (round, signal) in ["TERM", "KILL", "TERM", "KILL"].iter().enumerate() {
        let (target, version) = if round % 2 == 0 { (&v2, 2) } else { (&v1, 1) };
        fleet.reset_hard(target);
        // The daemon syncs at start: signal it once that sync is writing
        // (the first of the files it changes, in path order, has changed).
        let daemon = gw.start_daemon();
        let first = gw.path("/etc/myapp/bulk/00/f0000");
        let start = Instant::now();
        while std::fs::read_to_string(&first).unwrap() != bulk_content(version, 0) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "round {round}: the sync never wrote: {}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let log = daemon.log.clone();
        if *signal == "TERM" {
            // Waits for the apply (tend's grace is 30 s).
            let (code, _) = daemon.terminate(Duration::from_secs(40));
            assert_eq!(code, Some(0), "round {round}: SIGTERM did not exit 0");
            let log = std::fs::read_to_string(&log).unwrap();
            // It landed mid-sync: the loop stopped before the sync was done...
            assert!(log.contains("stopping") && !log.contains("sync done"), "round {round}: not mid-sync:\n{log}");
            // ...and the apply it was in finished.
            let on_disk = bulk_versions(&gw);
            assert!(on_disk.iter().all(|v| *v == version), "round {round}: SIGTERM left a half-applied revision");
        } else {
            daemon.kill();
            // It landed among the writes: both versions are on disk.
            let on_disk = bulk_versions(&gw);
            assert!(
                on_disk.contains(&1) && on_disk.contains(&2),
                "round {round}: the kill did not land among the writes:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        // The next start converges.
        let daemon = gw.start_daemon();
        gw.wait_status("convergence", Duration::from_secs(60), |s| {
            s["revision"] == target.as_str() && s["phase"] == "synced"
        });
        assert!(bulk_versions(&gw).iter().all(|v| *v == version), "round {round}: not converged");
        let (code, _) = daemon.terminate(Duration::from_secs(40));
        assert_eq!(code, Some(0));
        let left: Vec<_> = tend_e2e::snapshot(&gw.root).into_keys().filter(|k| k.contains(".tend-tmp")).collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}

#[test]
fn cli_commands_go_through_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    two_files(&fleet, "1");
    let v1 = fleet.commit("v1");
    let gw = fast_gateway(tmp.path(), &fleet.url());
    let text = std::fs::read_to_string(&gw.config).unwrap().replace("interval = \"1s\"", "interval = \"1h\"");
    std::fs::write(&gw.config, text).unwrap();
    let daemon = gw.start_daemon();
    gw.wait_status("v1", Duration::from_secs(20), |s| s["revision"] == v1.as_str());

    // The store is held by the daemon: these can only work through the socket.
    two_files(&fleet, "2");
    let v2 = fleet.commit("v2");
    let r = gw.sync_ok();
    assert_eq!(r["commit"], v2);
    assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 2\n");
    let dry = gw.tend(&["sync", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("nothing to do"), "{}", dry.stdout);
    let h = gw.tend(&["history", "--json"]).json();
    assert_eq!(h.as_array().unwrap().len(), 2);
    assert!(gw.tend(&["history"]).stdout.contains(&v2[..12]));
    let r = gw.tend(&["rollback", &v1[..8]]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 1\n");
    let s = gw.tend(&["status"]);
    assert!(s.stdout.contains("phase       rolled_back"), "{}", s.stdout);
    // A malformed request on the socket gets an error answer; the daemon lives on.
    use std::io::{BufRead, Write};
    let mut c = std::os::unix::net::UnixStream::connect(gw.state.join("control.sock")).unwrap();
    c.write_all(b"{\"cmd\":\"format_disk\"}\n").unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(c).read_line(&mut answer).unwrap();
    assert!(answer.contains("\"ok\":false") && answer.contains("bad request"), "{answer}");
    assert_eq!(gw.tend(&["status", "--json"]).code, 0);
    // The socket is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(gw.state.join("control.sock")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second daemon refuses to start.
    let second = gw.command().arg("run").output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let (code, _) = daemon.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    // Without the daemon the same commands work directly.
    assert_eq!(gw.tend(&["status", "--json"]).json()["revision"], v1);
}

#[test]
fn killed_during_a_health_window_the_restart_returns_to_last_known_good() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    two_files(&fleet, "1");
    let v1 = fleet.commit("v1");
    let gw = fast_gateway(tmp.path(), &fleet.url());
    assert_eq!(gw.sync_ok()["commit"], v1);
    let before = gw.snapshot();

    // v2's check waits for a flag that never comes, for up to a minute.
    let flag = tmp.path().join("flag");
    two_files(&fleet, "2");
    fleet.write(
        "devices/gw-1/tend.toml",
        format!(
            "[[check]]\nname = \"slow\"\ncommand = [\"test\", \"-e\", \"{}\"]\ninterval = \"1s\"\n",
            flag.display()
        ),
    );
    fleet.commit("v2");
    let text =
        std::fs::read_to_string(&gw.config).unwrap().replace("health_timeout = \"3s\"", "health_timeout = \"60s\"");
    std::fs::write(&gw.config, text).unwrap();
    let daemon = gw.start_daemon();
    gw.wait_files("v2 applied, in its health window", Duration::from_secs(20), |g| {
        std::fs::read_to_string(g.path("/etc/myapp/app.conf")).is_ok_and(|t| t == "version = 2\n")
    });
    daemon.kill();

    // Restart with the source gone: last-known-good (v1) comes back at once.
    let text = std::fs::read_to_string(&gw.config).unwrap().replace(&fleet.url(), "git://127.0.0.1:9/fleet");
    std::fs::write(&gw.config, text).unwrap();
    let daemon = gw.start_daemon();
    let after = gw.snapshot();
    assert!(after == before, "the restart did not return to last-known-good: {after:?}\n{}", daemon.log_text());
    let s = gw.wait_status("source unreachable", Duration::from_secs(20), |s| s["source"] == "unreachable");
    assert_eq!(
        (s["revision"].as_str(), s["last_good_revision"].as_str()),
        (Some(v1.as_str()), Some(v1.as_str())),
        "{s}"
    );
    let (code, _) = daemon.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

#[test]
fn sd_notify_ready_then_watchdog() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    two_files(&fleet, "1");
    fleet.commit("v1");
    let gw = fast_gateway(tmp.path(), &fleet.url());
    let sock_path = tmp.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let log = tmp.path().join("daemon.log");
    let child = gw
        .command()
        .arg("run")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Killed on drop if the test fails.
    let daemon = tend_e2e::Daemon { child, log };
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let start = Instant::now();
    while got.iter().filter(|m: &&String| m.as_str() == "WATCHDOG=1").count() < 3
        && start.elapsed() < Duration::from_secs(20)
    {
        let n = sock.recv(&mut buf).expect("a notification");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let (code, _) = daemon.terminate(Duration::from_secs(40));
    assert_eq!(code, Some(0));
    assert!(got[0].starts_with("READY=1\nSTATUS="), "{got:?}");
    let first_watchdog = got.iter().position(|m| m == "WATCHDOG=1").expect("WATCHDOG=1");
    assert!(first_watchdog > 0, "WATCHDOG before READY: {got:?}");
    assert!(got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3, "{got:?}");
    assert!(got.iter().any(|m| m.starts_with("STATUS=synced ")), "{got:?}");
}

/// Issue 13: an idle poll checks a stat per file (the fingerprint) instead of
/// reading the revision; every kind of drift still gets through it: content
/// rewritten with size and mtime restored, a mode changed, a parent directory
/// swapped for a symlink.
#[test]
fn the_idle_fast_path_misses_no_drift() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    two_files(&fleet, "1");
    fleet.commit("v1");
    let gw = fast_gateway(tmp.path(), &fleet.url());
    gw.sync_ok();
    let daemon = gw.start_daemon_logging("tend=debug");
    // Two idle polls first, so the fingerprint is in place.
    daemon.wait_log("two idle polls", Duration::from_secs(20), |l| l.matches("action=unchanged").count() >= 2);
    let app = gw.path("/etc/myapp/app.conf");

    // Same size, mtime put back: only ctime and content tell.
    let mtime = std::fs::metadata(&app).unwrap().modified().unwrap();
    std::fs::write(&app, "version = X\n").unwrap();
    std::fs::File::options().write(true).open(&app).unwrap().set_modified(mtime).unwrap();
    gw.wait_files("content repaired", Duration::from_secs(20), |g| g.read("/etc/myapp/app.conf") == "version = 1\n");

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o666)).unwrap();
    gw.wait_files("mode repaired", Duration::from_secs(20), |g| g.mode("/etc/myapp/app.conf") == 0o644);

    // The directory swapped for a symlink to a copy: same files, same stats
    // through the link; tend must not write through it.
    let dir = gw.path("/etc/myapp");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::rename(&dir, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    gw.wait_status("the symlink reported", Duration::from_secs(20), |s| {
        s["error"].as_str().is_some_and(|e| e.contains("symlink"))
    });
    assert!(std::fs::symlink_metadata(&dir).unwrap().file_type().is_symlink(), "tend replaced the symlink");
    let s = gw.tend(&["status", "--json"]).json();
    assert_eq!(s["phase"], "degraded", "{s}");
    // Put back: enforced again, no longer degraded.
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&elsewhere, &dir).unwrap();
    gw.wait_status("synced again", Duration::from_secs(20), |s| s["phase"] == "synced" && s["error"].is_null());
    let (code, _) = daemon.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

#[test]
fn the_daemon_runs_without_glibc_thread_caches_under_its_own_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    two_files(&fleet, "1");
    fleet.commit("v1");
    let gw = fast_gateway(tmp.path(), &fleet.url());
    gw.sync_ok();
    // Started without GLIBC_TUNABLES: tend re-executes itself once, keeping
    // its PID (what systemd's Type=notify and the watchdog rely on).
    let daemon = gw.start_daemon();
    let pid = daemon.child.id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(
        vars.contains(&b"GLIBC_TUNABLES=glibc.malloc.tcache_count=0".as_slice()),
        "{}",
        String::from_utf8_lossy(&environ).replace('\0', "\n")
    );
    // Still named tend (ps, pgrep, the journal).
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim(), "tend");
    assert_eq!(gw.tend(&["status", "--json"]).code, 0);
}

/// The daemon's journal at its default level (no TEND_LOG, no -v): one line
/// per change of state, nothing per poll that changes nothing (issue 17).
#[test]
fn the_default_journal_says_each_change_once_and_nothing_per_idle_poll() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let fleet = Fleet::new(&srv, "fleet");
    two_files(&fleet, "1");
    let v1 = fleet.commit("v1");
    let server = GitDaemon::start(&srv);
    let port = server.port;
    let gw = fast_gateway(tmp.path(), &server.url("fleet"));
    let log = tmp.path().join("journal.log");
    let journal = || std::fs::read_to_string(&log).unwrap_or_default();
    // The metrics textfile counts the polls (tend_syncs_total, rewritten after
    // each): "nothing per poll" is checked after polls are seen to happen.
    let textfile = tmp.path().join("tend.prom");
    let mut config = std::fs::read_to_string(&gw.config).unwrap();
    config.push_str(&format!("\n[metrics]\ntextfile = \"{}\"\n", textfile.display()));
    std::fs::write(&gw.config, config).unwrap();
    let polls = |result: &str| -> u64 {
        let text = std::fs::read_to_string(&textfile).unwrap_or_default();
        let series = format!("tend_syncs_total{{result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
    };
    let wait_polls = |result: &str, n: u64| {
        let from = polls(result);
        let start = Instant::now();
        while polls(result) < from + n {
            assert!(start.elapsed() < Duration::from_secs(60), "no {n} {result} polls after {from}:\n{}", journal());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let child = gw
        .command()
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Killed on drop if the test fails.
    let daemon = tend_e2e::Daemon { child, log: log.clone() };
    gw.wait_status("v1 healthy", Duration::from_secs(30), |s| s["phase"] == "synced" && s["revision"] == v1.as_str());
    let wait_for = |what: &str| {
        let start = Instant::now();
        while !journal().contains(what) {
            assert!(start.elapsed() < Duration::from_secs(20), "no {what:?} in the journal:\n{}", journal());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("is healthy");
    let short = &v1[..12];
    let text = journal();
    for said in [
        "started: tend ",
        "enforced from the store: none (no revision applied yet)",
        &format!("applied {short}: 2 created, 0 updated, 0 deleted"),
        &format!("{short} is healthy"),
    ] {
        assert!(text.contains(said), "the journal lacks {said:?}:\n{text}");
    }
    assert!(!text.contains("DEBUG"), "steps at the default level:\n{text}");
    // Five idle polls (interval 1 s): not a line more.
    let lines = text.lines().count();
    wait_polls("unchanged", 5);
    assert_eq!(journal().lines().count(), lines, "idle polls wrote to the journal:\n{}", journal());

    // Drift: one line. The source lost: one line, however many polls fail;
    // back: one line.
    std::fs::remove_file(gw.path("/etc/myapp/other.conf")).unwrap();
    wait_for("drift repaired on");
    drop(server);
    wait_for("source unreachable");
    // Four more failing polls (retries 1 s apart, then the 1 s interval).
    wait_polls("failed", 4);
    let text = journal();
    assert_eq!(text.matches("source unreachable").count(), 1, "{text}");
    assert_eq!(text.matches("sync failed").count(), 1, "a failing poll said more than once:\n{text}");
    let _server = GitDaemon::start_on(&srv, port);
    wait_for("source reachable again");
    let (code, _) = daemon.terminate(Duration::from_secs(40));
    eprintln!("{}", journal());
    assert_eq!(code, Some(0), "SIGTERM");
}

/// Issue 17: an `[files].allow` root that is read-only to tend (as under
/// systemd's ProtectSystem=strict without the ReadWritePaths= drop-in; here a
/// read-only bind mount in a mount namespace of its own) is named at start in
/// the journal, in `Status=` and in `tend status`, with the line that fixes
/// it, and again in the error of the apply that meets it.
#[test]
fn a_read_only_allow_root_is_named_with_the_drop_in_that_fixes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    two_files(&fleet, "1");
    fleet.commit("v1");
    let gw = fast_gateway(tmp.path(), &fleet.url());
    let ro = gw.path("/etc/myapp");
    std::fs::create_dir_all(&ro).unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let log = tmp.path().join("journal.log");
    let script = format!("mount --bind {d} {d} && mount -o remount,bind,ro {d} && exec \"$0\" run", d = ro.display());
    let child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(tend_e2e::tend_bin())
        .env("TEND_CONFIG", &gw.config)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // (`exec`: the child is tend itself.) Killed on drop if the test fails.
    let daemon = tend_e2e::Daemon { child, log: log.clone() };
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).expect("READY=1");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    let fix = format!("ReadWritePaths={}", ro.display());
    assert!(ready.contains("is read-only to tend") && ready.contains(&fix), "{ready}");
    let journal = std::fs::read_to_string(&log).unwrap();
    let line = journal.lines().find(|l| l.contains("ERROR")).unwrap_or_else(|| panic!("no error line:\n{journal}"));
    assert!(
        line.contains(&format!("[files].allow root {} is read-only", ro.display())) && line.contains(&fix),
        "{line}"
    );
    assert!(line.contains("systemctl edit tend"), "{line}");
    // The apply meets it too, and says so.
    let s = gw.wait_status("the apply failed", Duration::from_secs(20), |s| {
        s["phase"] != "syncing" && s["error"].is_string()
    });
    assert!(s["error"].as_str().unwrap().contains("ReadWritePaths="), "{s}");
    let out = gw.tend(&["status"]);
    assert!(out.stdout.contains("problem") && out.stdout.contains(&fix), "{}", out.stdout);
    // The other root, writable, is not named.
    assert!(!journal.contains("/opt/myapp is read-only"), "{journal}");
    let (code, _) = daemon.terminate(Duration::from_secs(40));
    assert_eq!(code, Some(0), "SIGTERM");
}
