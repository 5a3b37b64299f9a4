//! Issue 15: rollout control on real gateways — a revision waits for its
//! wave, for a maintenance window and for an app's update lock (a real
//! `flock` process, killed with SIGKILL), `--now` goes past waves and windows
//! but not locks, and `lock_timeout` ends the wait.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tend_e2e::{Fleet, Gateway, good_bundle};

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Days since 1970-01-01 (a Thursday), UTC.
fn today() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() / 86_400
}

fn day_name(days: u64) -> &'static str {
    DAYS[((days + 3) % 7) as usize]
}

/// A new revision of gw-1's bundle: `app.conf` says `port`, with `rollout`
/// as its `[rollout]` table.
fn revision(fleet: &Fleet, port: u32, rollout: &str) -> String {
    fleet
        .write(
            "devices/gw-1/tend.toml",
            format!("[[file]]\npath = \"/etc/myapp/app.conf\"\nmode = \"0640\"\n\n{rollout}"),
        )
        .write("devices/gw-1/files/etc/myapp/app.conf", format!("port = {port}\n"));
    fleet.commit(&format!("port {port}"))
}

fn committer_time(fleet: &Fleet, commit: &str) -> u64 {
    let out =
        Command::new("git").current_dir(&fleet.dir).args(["show", "-s", "--format=%ct", commit]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn rfc3339_secs(text: &str) -> u64 {
    // YYYY-MM-DDTHH:MM:SSZ, as tend writes due_at.
    let out = Command::new("date").args(["-u", "-d", text, "+%s"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("not a time: {text}"))
}

#[test]
fn a_revision_waits_for_its_wave_and_a_window_and_now_goes_past_both() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let locks = tmp.path().join("locks");
    let gw = Gateway::new(tmp.path(), &fleet.url(), &format!("[apply]\nlock_dir = \"{}\"\n", locks.display()));
    good_bundle(&fleet);
    let v1 = fleet.commit("v1");
    gw.sync_ok();

    // Every gateway is in the one wave, due an hour after the commit.
    let v2 = revision(&fleet, 503, "[rollout]\nwaves = [{ name = \"all\", percent = 100, after = \"1h\" }]\n");
    let r = gw.sync_ok();
    assert_eq!((r["action"].as_str(), r["waiting_for"].as_str()), (Some("waiting"), Some("wave")), "{r}");
    let due = rfc3339_secs(r["due_at"].as_str().unwrap());
    assert_eq!(due, committer_time(&fleet, &v2) + 3600, "due at the committer time plus the wave's after");
    let s = gw.tend(&["status", "--json"]).json();
    assert_eq!(s["phase"], "waiting", "{s}");
    assert_eq!(s["wave"], "all");
    assert_eq!(s["waiting_for"], "wave");
    assert_eq!(s["waiting_detail"], "wave all");
    assert_eq!((s["revision"].as_str(), s["target_revision"].as_str()), (Some(v1.as_str()), Some(v2.as_str())));
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 502\n", "nothing new applied before the wave is due");
    let text = gw.tend(&["status"]).stdout;
    assert!(text.contains("waiting for wave: wave all (due "), "{text}");
    // Drift of what is applied is still repaired while waiting.
    std::fs::write(gw.path("/etc/myapp/app.conf"), "port = 1\n").unwrap();
    assert_eq!(gw.sync_ok()["action"], "waiting");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 502\n", "drift repaired while waiting");

    // An operator's --now.
    let r = gw.tend(&["sync", "--now", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["action"], "applied");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 503\n");
    let s = gw.tend(&["status", "--json"]).json();
    assert_eq!((s["phase"].as_str(), s["revision"].as_str()), (Some("synced"), Some(v2.as_str())), "{s}");
    assert!(s["waiting_for"].is_null() && s["due_at"].is_null(), "{s}");
    let h = gw.tend(&["history", "--json"]).json();
    let entry = h.as_array().unwrap().iter().find(|e| e["revision"] == v2.as_str()).unwrap();
    assert!(entry["forced"].as_str().is_some_and(|f| f.starts_with("--now; wave all not due until")), "{entry}");
    assert!(gw.tend(&["history"]).stdout.contains("(applied past: --now; wave all"), "the history says so");

    // A window the day after tomorrow (UTC): waiting, due when it opens.
    let later = day_name(today() + 2);
    revision(&fleet, 504, &format!("[rollout]\nwindows = [\"{later} 00:00-24:00\"]\ntimezone = \"UTC\"\n"));
    let r = gw.sync_ok();
    assert_eq!((r["action"].as_str(), r["waiting_for"].as_str()), (Some("waiting"), Some("window")), "{r}");
    assert_eq!(rfc3339_secs(r["due_at"].as_str().unwrap()), (today() + 2) * 86_400, "{r}");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 503\n");
    // A window open now (today and tomorrow, so midnight cannot close it).
    let open = format!("{},{}", day_name(today()), day_name(today() + 1));
    let v4 = revision(&fleet, 505, &format!("[rollout]\nwindows = [\"{open} 00:00-24:00\"]\ntimezone = \"UTC\"\n"));
    assert_eq!(gw.sync_ok()["action"], "applied");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 505\n");
    assert_eq!(gw.tend(&["status", "--json"]).json()["revision"], v4);
}

/// An app holding an update lock, as `flock(1)` does it for a shell job;
/// killed (SIGKILL) when dropped.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hold_lock(path: &std::path::Path) -> App {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, "").unwrap();
    let child = Command::new("flock")
        .args(["--shared", "--no-fork"])
        .arg(path)
        .args(["sleep", "600"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // flock takes it before it execs sleep.
    let start = std::time::Instant::now();
    while std::fs::read_link(format!("/proc/{}/exe", child.id())).is_ok_and(|e| !e.ends_with("sleep")) {
        assert!(start.elapsed() < Duration::from_secs(10), "flock never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    App(child)
}

#[test]
fn an_update_lock_holds_a_revision_until_its_app_dies_or_its_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let locks = tmp.path().join("locks");
    let apply = |timeout: &str| format!("[apply]\nlock_dir = \"{}\"\n{timeout}", locks.display());
    let gw = Gateway::new(tmp.path(), &fleet.url(), &apply(""));
    good_bundle(&fleet);
    fleet.commit("v1");
    gw.sync_ok();

    let lock = locks.join("modbus-job");
    let app = hold_lock(&lock);
    let v2 = revision(&fleet, 503, "");
    let r = gw.sync_ok();
    assert_eq!((r["action"].as_str(), r["waiting_for"].as_str()), (Some("waiting"), Some("lock")), "{r}");
    assert!(r["due_at"].is_null(), "no lock_timeout: no due time");
    let s = gw.tend(&["status", "--json"]).json();
    let detail = s["waiting_detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("{} held since ", lock.display())), "{s}");
    // --now does not break a lock.
    let r = gw.tend(&["sync", "--now", "--json"]).json();
    assert_eq!(r["action"], "waiting", "{r}");
    assert_eq!(gw.tend(&["status", "--json"]).json()["waiting_detail"], detail, "since when is kept");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 502\n");

    // The app dies (SIGKILL) without letting go: the lock dies with it.
    drop(app);
    assert_eq!(gw.sync_ok()["action"], "applied");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 503\n");
    assert_eq!(gw.tend(&["status", "--json"]).json()["revision"], v2);

    // lock_timeout: applied anyway once the lock has held it that long.
    gw.write_config(&fleet.url(), "", &apply("lock_timeout = \"2s\"\n"));
    let app = hold_lock(&lock);
    revision(&fleet, 504, "");
    let r = gw.sync_ok();
    assert_eq!(r["waiting_for"], "lock", "{r}");
    // Due when the timeout ends: lock_timeout after the lock was first seen.
    let due: jiff::Timestamp = r["due_at"].as_str().unwrap().parse().unwrap();
    let s = gw.tend(&["status", "--json"]).json();
    let since: jiff::Timestamp = s["waiting_detail"]
        .as_str()
        .and_then(|d| d.strip_prefix(&format!("{} held since ", lock.display())))
        .unwrap_or_else(|| panic!("{s}"))
        .parse()
        .unwrap();
    assert_eq!(due.duration_since(since), jiff::SignedDuration::from_secs(2), "due {due}, held since {since}");
    // Before then, still waiting; once it has passed, applied.
    assert_eq!(gw.sync_ok()["action"], "waiting", "applied before the lock_timeout ended");
    while jiff::Timestamp::now() <= due {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(gw.sync_ok()["action"], "applied");
    let h = gw.tend(&["history", "--json"]).json();
    assert!(h[0]["forced"].as_str().is_some_and(|f| f.starts_with("lock_timeout:")), "{}", h[0]);
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 504\n");
    drop(app);
}

/// Waves of 10 % / 50 % / 100 % by the `wave` label, `after` 0, `early`, `all`.
fn waves(early: &str, all: &str) -> String {
    format!(
        "[rollout]\nwaves = [{{ name = \"canary\", percent = 10 }}, {{ name = \"early\", percent = 50, after = \"{early}\" }}, {{ name = \"all\", percent = 100, after = \"{all}\" }}]\nmax_failed = 2\n"
    )
}

/// The bundle every gateway of the fleet shares: `check` is the command its
/// health check runs.
fn shared(fleet: &Fleet, v: &str, check: &str, rollout: &str) -> String {
    fleet.write("shared/files/etc/myapp/app.conf", format!("version = {v}\n")).write(
        "shared/tend.toml",
        format!("[[check]]\nname = \"app\"\ncommand = [\"{check}\"]\ninterval = \"1s\"\n\n{rollout}"),
    );
    fleet.commit(v)
}

fn wave_of(i: usize) -> &'static str {
    match i {
        0..2 => "canary",
        2..10 => "early",
        _ => "all",
    }
}

/// `kind` events for `revision`, by device: the RFC 3339 time of each.
fn events_of(lines: &[String], kind: &str, revision: &str) -> std::collections::BTreeMap<String, u64> {
    tend_e2e::payloads(lines)
        .iter()
        .filter(|e| e["kind"] == kind && e["revision"] == revision)
        .map(|e| (e["device_id"].as_str().unwrap().to_owned(), rfc3339_secs(e["ts"].as_str().unwrap())))
        .collect()
}

#[test]
fn twenty_gateways_roll_out_in_waves_and_hold_what_failed_on_the_canaries() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let broker = tend_e2e::Mosquitto::start();
    let v1 = shared(&fleet, "1", "true", "");
    let devices: Vec<String> = (0..20).map(|i| format!("gw-{i:02}")).collect();
    let mut gateways = Vec::new();
    let mut daemons = Vec::new();
    for (i, dev) in devices.iter().enumerate() {
        let gw = Gateway::new(
            &tmp.path().join(dev),
            &fleet.url(),
            &format!(
                "[apply]\nhealth_timeout = \"2s\"\n[mqtt]\nurl = \"{}\"\nhealth_interval = \"30s\"\n",
                broker.url()
            ),
        );
        let text = std::fs::read_to_string(&gw.config)
            .unwrap()
            .replace("device_id = \"gw-1\"", &format!("device_id = \"{dev}\""))
            .replace("labels = { site = \"berlin\" }", &format!("labels = {{ wave = \"{}\" }}", wave_of(i)))
            .replace("path = \"devices/{device_id}\"", "path = \"shared\"\ninterval = \"1s\"\njitter = \"0s\"");
        std::fs::write(&gw.config, text).unwrap();
        daemons.push(gw.start_daemon());
        gateways.push(gw);
    }
    let events = tend_e2e::Subscription::start(&broker, "tend/v1/test/+/events", "rollout-events");
    for gw in &gateways {
        gw.wait_status("v1", Duration::from_secs(60), |s| s["phase"] == "synced" && s["revision"] == v1.as_str());
    }

    // v2 rolls out in wave order, each wave no earlier than it is due.
    let v2 = shared(&fleet, "2", "true", &waves("5s", "10s"));
    let committed = committer_time(&fleet, &v2);
    gateways[0].wait_status("a canary has v2", Duration::from_secs(30), |s| s["revision"] == v2.as_str());
    let s = gateways[19].wait_status("gw-19 saw v2", Duration::from_secs(30), |s| s["target_revision"] == v2.as_str());
    assert_eq!(
        (s["phase"].as_str(), s["waiting_for"].as_str(), s["wave"].as_str()),
        (Some("waiting"), Some("wave"), Some("all")),
        "{s}"
    );
    let lines =
        events.wait("v2 healthy everywhere", Duration::from_secs(90), |l| events_of(l, "healthy", &v2).len() == 20);
    let applied = events_of(&lines, "applied", &v2);
    let at = |w: &str| -> Vec<u64> {
        devices.iter().enumerate().filter(|(i, _)| wave_of(*i) == w).map(|(_, d)| applied[d]).collect()
    };
    let (canary, early, all) = (at("canary"), at("early"), at("all"));
    assert!(early.iter().all(|t| *t >= committed + 5), "an early gateway applied before its wave was due: {applied:?}");
    assert!(all.iter().all(|t| *t >= committed + 10), "a gateway applied before its wave was due: {applied:?}");
    assert!(
        canary.iter().max() <= early.iter().min() && early.iter().max() <= all.iter().min(),
        "not in wave order: {applied:?}"
    );

    // v3 fails its health check on the canaries: they roll back and report
    // it; every later gateway holds it.
    let v3 = shared(&fleet, "3", "false", &waves("12s", "14s"));
    let committed = committer_time(&fleet, &v3);
    let lines = events
        .wait("the canaries rolled v3 back", Duration::from_secs(60), |l| events_of(l, "rolled_back", &v3).len() == 2);
    assert_eq!(events_of(&lines, "rolled_back", &v3).keys().collect::<Vec<_>>(), ["gw-00", "gw-01"]);
    // The canaries are back on v2, on disk and in their status.
    for gw in &gateways[..2] {
        let s = gw.wait_status("rolled back", Duration::from_secs(30), |s| s["phase"] == "rolled_back");
        assert_eq!(
            (s["revision"].as_str(), s["last_good_revision"].as_str()),
            (Some(v2.as_str()), Some(v2.as_str())),
            "{s}"
        );
        assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 2\n");
    }
    for gw in &gateways[2..] {
        let s = gw.wait_status("held", Duration::from_secs(60), |s| s["phase"] == "held");
        assert_eq!((s["revision"].as_str(), s["waiting_for"].as_str()), (Some(v2.as_str()), Some("fleet")), "{s}");
        let error = s["error"].as_str().unwrap();
        assert!(error.contains("failed on 2 gateways") && error.contains("gw-00, gw-01"), "{s}");
    }
    // Held before their waves were due, and still held after: each has
    // polled (every second) after its wave became due (its last_sync, to the
    // second, a full second past: a poll takes less), and holds v3 still.
    for (i, gw) in gateways.iter().enumerate().skip(2) {
        let due = committed + if wave_of(i) == "early" { 12 } else { 14 };
        let s = gw.wait_status("a poll after its wave was due", Duration::from_secs(60), |s| {
            s["last_sync"].as_str().is_some_and(|t| rfc3339_secs(t) > due + 1)
        });
        assert_eq!((s["phase"].as_str(), s["revision"].as_str()), (Some("held"), Some(v2.as_str())), "{s}");
        assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 2\n", "{}", devices[i]);
    }
    assert_eq!(events_of(&events.lines(), "applied", &v3).len(), 2, "only the canaries applied v3");

    // The next good commit rolls out to every gateway.
    let v4 = shared(&fleet, "4", "true", &waves("2s", "4s"));
    events.wait("v4 healthy everywhere", Duration::from_secs(90), |l| events_of(l, "healthy", &v4).len() == 20);
    for gw in &gateways {
        let s = gw.tend(&["status", "--json"]).json();
        assert_eq!((s["phase"].as_str(), s["revision"].as_str()), (Some("synced"), Some(v4.as_str())), "{s}");
    }
    drop(daemons);
}
