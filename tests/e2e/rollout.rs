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

/// An app holding an update lock, as `flock(1)` does it for a shell job.
fn hold_lock(path: &std::path::Path) -> Child {
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
    child
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
    let mut app = hold_lock(&lock);
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

    // The app dies without letting go: the lock dies with it.
    app.kill().unwrap();
    app.wait().unwrap();
    assert_eq!(gw.sync_ok()["action"], "applied");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 503\n");
    assert_eq!(gw.tend(&["status", "--json"]).json()["revision"], v2);

    // lock_timeout: applied anyway once the lock has held it that long.
    gw.write_config(&fleet.url(), "", &apply("lock_timeout = \"2s\"\n"));
    let mut app = hold_lock(&lock);
    revision(&fleet, 504, "");
    let r = gw.sync_ok();
    assert_eq!(r["waiting_for"], "lock", "{r}");
    let due = rfc3339_secs(r["due_at"].as_str().unwrap());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(due >= now && due <= now + 3, "due when the timeout ends: {r}");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(gw.sync_ok()["action"], "applied");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 504\n");
    app.kill().unwrap();
    app.wait().unwrap();
}
