//! The daemon's loops cannot be stalled from outside, and `fleet serve`'s
//! memory is bounded in bytes:
//! - a flood of MQTT commands while a sync runs (a long health window) leaves
//!   the MQTT session driven: health reports keep coming, the broker never
//!   drops the connection, and what does not fit the queue is answered
//!   `busy` instead of waiting;
//! - `tend status` is answered during a long health window;
//! - silent clients of the control socket are dropped after their read
//!   timeout, and running out of file descriptors (EMFILE) is said once and
//!   waited out instead of spinning;
//! - a flood of large distinct events keeps `fleet serve` under its
//!   `--max-memory`, oldest events dropped first.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tend_e2e::monitor::{FleetServe, proc_kib, publish_retained};
use tend_e2e::{Fleet, Gateway, Mosquitto, Subscription, good_bundle, payloads};

/// A gateway with MQTT whose second revision stays in its health window
/// until `ready` exists.
fn gateway_in_a_long_health_window(tmp: &std::path::Path, broker: &Mosquitto) -> (Fleet, Gateway, std::path::PathBuf) {
    let fleet = Fleet::new(tmp, "fleet");
    let gw = Gateway::with_source_keys(
        tmp,
        &fleet.url(),
        "interval = \"1s\"\njitter = \"0s\"",
        &format!("[apply]\nhealth_timeout = \"1h\"\n[mqtt]\nurl = \"{}\"\nhealth_interval = \"1s\"\n", broker.url()),
    );
    good_bundle(&fleet);
    fleet.commit("v1");
    let ready = tmp.join("ready");
    (fleet, gw, ready)
}

fn start_health_window(fleet: &Fleet, gw: &Gateway, ready: &std::path::Path) -> String {
    fleet.write(
        "devices/gw-1/tend.toml",
        format!(
            "[[file]]\npath = \"/etc/myapp/app.conf\"\nmode = \"0640\"\n[[check]]\nname = \"ready\"\ncommand = [\"test\", \"-e\", \"{}\"]\ninterval = \"200ms\"\n",
            ready.display()
        ),
    );
    let v2 = fleet.commit("v2");
    // Answered beside the loop, while the sync waits on its health window.
    gw.wait_status("v2 in its health window", Duration::from_secs(30), |s| {
        s["phase"] == "progressing" && s["revision"] == v2.as_str()
    });
    v2
}

#[test]
fn a_flood_of_commands_during_a_long_sync_leaves_the_mqtt_session_up() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let (fleet, gw, ready) = gateway_in_a_long_health_window(tmp.path(), &broker);
    let events = Subscription::start(&broker, "tend/v1/test/gw-1/events", "stall-events");
    let health = Subscription::start(&broker, "tend/v1/test/gw-1/health", "stall-health");
    let daemon = gw.start_daemon_logging("info");
    gw.wait_status("v1", Duration::from_secs(30), |s| s["phase"] == "synced");
    start_health_window(&fleet, &gw, &ready);

    // 60 commands at once: the queue holds 16 while the sync runs.
    let lines: String = (0..60).map(|i| format!("{{\"cmd\":\"sync\",\"id\":\"c{i}\"}}\n")).collect();
    let mut publish = Command::new("mosquitto_pub")
        .args(broker.client_args())
        .args(["-q", "1", "-t", "tend/v1/test/gw-1/cmd", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    publish.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(publish.wait().unwrap().success());
    let busy = |l: &[String]| {
        payloads(l)
            .iter()
            .filter(|e| e["kind"] == "command" && e["error"].as_str().is_some_and(|e| e.starts_with("busy: ")))
            .count()
    };
    let l = events.wait("busy answers", Duration::from_secs(30), |l| busy(l) >= 44);
    assert_eq!(busy(&l), 44, "60 commands, 16 queued");
    // The session is still driven: health reports keep coming while the
    // sync (and 16 commands) wait.
    let before = health.lines().len();
    health.wait("health reports during the sync", Duration::from_secs(30), |l| l.len() >= before + 3);
    assert_eq!(daemon.log_text().matches("mqtt: connected").count(), 1, "{}", daemon.log_text());
    assert!(!daemon.log_text().contains("mqtt: disconnected"), "{}", daemon.log_text());

    // Healthy: the 16 queued commands are each answered.
    std::fs::write(&ready, "").unwrap();
    let answered = |l: &[String]| payloads(l).iter().filter(|e| e["kind"] == "command" && e["ok"] == true).count();
    events.wait("the queued commands answered", Duration::from_secs(60), |l| answered(l) == 16);
    gw.wait_status("v2 synced", Duration::from_secs(30), |s| s["phase"] == "synced");
}

#[test]
fn silent_clients_and_emfile_do_not_stall_the_control_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::new(tmp.path(), &fleet.url(), "");
    good_bundle(&fleet);
    fleet.commit("v1");
    gw.sync_ok();
    let daemon = gw.start_daemon_logging("info");
    let pid = daemon.child.id();
    let socket = gw.state.join("control.sock");

    // Few file descriptors left to the daemon: some of the silent clients
    // below meet EMFILE in its accept.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let limit = (open + 6).to_string();
    let r = Command::new("prlimit").args(["--pid", &pid.to_string(), &format!("--nofile={limit}:{limit}")]).status();
    assert!(r.unwrap().success(), "prlimit");
    let ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let cpu_before = ticks(pid);
    let started = Instant::now();
    let silent: Vec<UnixStream> = (0..40).map(|_| UnixStream::connect(&socket).unwrap()).collect();
    // They are dropped after the read timeout (10 s): EOF on each.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut s, &mut buf).unwrap(), 0, "a silent client was not dropped");
    }
    let elapsed = started.elapsed();
    // Then the socket answers as before.
    let r = gw.tend(&["status", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["phase"], "synced");
    let log = daemon.log_text();
    // Said once a minute at most, however long EMFILE lasts (here 20 to 70
    // s, depending on how many descriptors the daemon held when limited),
    // each later line counting the failures since the one before.
    let said: Vec<&str> = log.lines().filter(|l| l.contains("control socket: cannot accept a connection")).collect();
    let minutes = elapsed.as_secs() / 60;
    assert!(!said.is_empty() && said.len() as u64 <= 1 + minutes, "said {} times in {elapsed:?}: {log}", said.len());
    assert!(
        said[1..].iter().all(|l| !l.ends_with("times=1")),
        "a later line counts the failures since the one before: {log}"
    );
    assert!(log.contains("Too many open files"), "{log}");
    // A poll that met EMFILE says so and retries; it does not call the
    // fetched repository broken.
    assert!(!log.contains("does not appear to be a git repository"), "{log}");
    // Waited out, not spun: a loop retrying accept at once burns a whole
    // core for as long as EMFILE lasts (here 20 to 70 s); this one sleeps
    // between tries. Half a core is far above the waiting loop's cost and
    // far below a spinning one's, even on a loaded machine.
    let cpu = (ticks(pid) - cpu_before) as f64 / 100.0;
    assert!(cpu < elapsed.as_secs_f64() / 2.0, "{cpu:.1} s of CPU in {elapsed:?}: the accept loop spins");
}

#[test]
fn fleet_serve_stays_within_its_memory_bound_under_a_flood_of_large_events() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let mut serve = FleetServe::start(tmp.path(), &broker.url(), &["--max-memory", "8MiB"]);
    let base = proc_kib(serve.pid(), "smaps_rollup", "Pss:");
    // 40,000 distinct events of about 1 KiB from 1,000 gateways: 40 MiB of
    // text against an 8 MiB bound, in four bursts.
    for burst in 0..4 {
        let messages: Vec<(String, Vec<u8>)> = (0..10_000)
            .map(|i| {
                let n = burst * 10_000 + i;
                let pad: String = (0..1000).map(|j| char::from(b'a' + ((n * 7 + j) % 26) as u8)).collect();
                let event =
                    format!(r#"{{"seq":{n},"kind":"drift_repaired","ts":"2026-12-04T00:00:00Z","pad":"{pad}"}}"#);
                (format!("tend/v1/acme/gw-{:04}/events", n % 1000), event.into_bytes())
            })
            .collect();
        publish_retained(broker.port, &messages);
    }
    let metric = |name: &str| -> f64 {
        let (_, _, body) = serve.get("/metrics");
        let text = String::from_utf8(body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    };
    let start = Instant::now();
    while metric("tend_fleet_events_evicted_total ") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(60), "nothing was evicted");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Wait until the newest event is in.
    let v = serve
        .wait("the last event", Duration::from_secs(60), |v| v["devices"].as_array().is_some_and(|d| d.len() == 1000));
    assert_eq!(v["devices"].as_array().unwrap().len(), 1000);
    let bytes = metric("tend_fleet_memory_bytes ");
    assert!(bytes <= 8.0 * 1024.0 * 1024.0, "{bytes} bytes held");
    assert!(serve.alive());
    let pss = proc_kib(serve.pid(), "smaps_rollup", "Pss:");
    // The bound is on what the view holds; the allocator keeps some slack
    // around it, and the largest message being parsed is 1 KiB.
    assert!(pss - base < 16 * 1024, "fleet serve grew {} KiB past its start (bound 8 MiB)", pss - base);
}

/// The daemon's thread budget when idle: at most 3 (the main thread, sled's
/// one immortal I/O thread, vendor/sled/PATCHES.md, and one more); the
/// blocking pool (at most 4) retires its threads after 10 s and sled's extra
/// I/O threads after 1 s.
#[test]
fn the_daemon_keeps_its_thread_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::with_source_keys(
        tmp.path(),
        &fleet.url(),
        "interval = \"1h\"",
        &format!("[mqtt]\nurl = \"{}\"\nhealth_interval = \"1h\"\n", broker.url()),
    );
    good_bundle(&fleet);
    fleet.commit("v1");
    let daemon = gw.start_daemon_logging("info");
    gw.wait_status("v1", Duration::from_secs(30), |s| s["phase"] == "synced");
    let pid = daemon.child.id();
    let threads = || std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count();
    // Busy: a sync through the control socket, sampled while it runs.
    let names = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect()
    };
    let mut peak = names();
    let mut sync = gw.command().args(["sync"]).stdout(Stdio::null()).spawn().unwrap();
    while sync.try_wait().unwrap().is_none() {
        let now = names();
        if now.len() > peak.len() {
            peak = now;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Busy, threads come and go (the blocking pool, sled's short-lived I/O
    // threads, the fetch); what is promised is the idle budget.
    eprintln!("threads during a sync: {peak:?}");
    assert!(peak.len() > 1, "the sampling saw nothing: {peak:?}");
    // Idle: the blocking pool's threads retire after 10 s.
    let start = Instant::now();
    while threads() > 3 {
        assert!(start.elapsed() < Duration::from_secs(60), "{} threads after a minute idle", threads());
        std::thread::sleep(Duration::from_millis(200));
    }
    let idle = names();
    assert!(idle.len() <= 3, "{idle:?}");
}
