//! The whole cycle — fetch, render, decide, wait, apply, health, roll back —
//! in a unit test: an in-memory source and a fake clock (`source::memory`), a
//! real store and real files in a temporary directory. The end-to-end suites
//! run the same against Git, real time and real processes.

use std::time::Duration;

use super::*;
use crate::source::memory::{FakeClock, MemorySource};

struct Cycle {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    agent: Arc<Agent>,
    source: Arc<MemorySource>,
    clock: Arc<FakeClock>,
    rt: tokio::runtime::Runtime,
}

fn at(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

impl Cycle {
    fn new(extra: &str) -> Cycle {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let text = format!(
            "device_id = \"gw-1\"\nfleet = \"test\"\nstate_dir = \"{state}\"\n[source]\nurl = \"memory:\"\npath = \"dev\"\n[files]\nroot = \"{root}\"\nallow = [\"/etc/app\"]\nallow_hooks = true\n[apply]\nhealth_timeout = \"2s\"\nlock_dir = \"{locks}\"\n{extra}",
            state = tmp.path().join("state").display(),
            root = root.display(),
            locks = tmp.path().join("locks").display(),
        );
        let cfg = Config::from_str(&text, &tmp.path().join("agent.toml")).unwrap();
        let source = Arc::new(MemorySource::new());
        let clock = Arc::new(FakeClock::new(at("2026-11-27T10:00:00Z")));
        let agent = Arc::new(Agent::with_source(cfg, Box::new(source.clone()), clock.clone()).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Cycle { _tmp: tmp, root, agent, source, clock, rt }
    }

    /// A commit of the bundle `dev/`: app.conf says `port`, with `extra` in tend.toml.
    fn push(&self, committed_at: &str, port: u32, extra: &str) -> String {
        let toml = format!("[[file]]\npath = \"/etc/app/app.conf\"\nmode = \"0644\"\n{extra}");
        let conf = format!("port = {port}\n");
        self.source.push(at(committed_at), &[("dev/tend.toml", &toml), ("dev/files/etc/app/app.conf", &conf)])
    }

    fn sync(&self, now: bool) -> Result<SyncSummary, SyncError> {
        self.rt.block_on(sync(&self.agent, SyncOptions { now, ..Default::default() }))
    }

    fn port(&self) -> String {
        std::fs::read_to_string(self.root.join("etc/app/app.conf")).unwrap_or_default()
    }

    fn status(&self) -> Status {
        self.agent.status().unwrap()
    }
}

#[test]
fn waves_and_windows_under_a_fake_clock() {
    let c = Cycle::new("");
    c.push("2026-11-27T09:00:00Z", 1, "");
    assert_eq!(c.sync(false).unwrap().action, "applied");
    assert_eq!(c.port(), "port = 1\n");

    // Every gateway in one wave, due two hours after the commit.
    let waves = "[rollout]\nwaves = [{ name = \"all\", percent = 100, after = \"2h\" }]\n";
    c.push("2026-11-27T09:30:00Z", 2, waves);
    let s = c.sync(false).unwrap();
    assert_eq!((s.action.as_str(), s.waiting_for.as_deref()), ("waiting", Some("wave")));
    assert_eq!(s.due_at.as_deref(), Some("2026-11-27T11:30:00Z"));
    assert_eq!(c.status().phase, "waiting");
    // The status says what this machine is (SPEC §4 inventory).
    let local = crate::inventory::HostInventory::local();
    assert!(local.arch.is_some() && local.kernel.is_some(), "{local:?}");
    assert_eq!(c.status().inventory, serde_json::to_value(&local).unwrap());
    c.clock.advance(Duration::from_secs(89 * 60));
    assert_eq!(c.sync(false).unwrap().action, "waiting", "a minute before it is due");
    assert_eq!(c.port(), "port = 1\n");
    c.clock.advance(Duration::from_secs(60));
    assert_eq!(c.sync(false).unwrap().action, "applied", "due");
    assert_eq!(c.port(), "port = 2\n");
    assert_eq!(c.status().waiting_for, None);

    // A window on Saturdays (2026-11-28) in Berlin; it is Friday 11:30 UTC.
    let window = "[rollout]\nwindows = [\"Sat 00:00-24:00\"]\ntimezone = \"Europe/Berlin\"\n";
    c.push("2026-11-27T11:00:00Z", 3, window);
    let s = c.sync(false).unwrap();
    assert_eq!(s.waiting_for.as_deref(), Some("window"));
    assert_eq!(s.due_at.as_deref(), Some("2026-11-27T23:00:00Z"), "Saturday 00:00 in Berlin");
    c.clock.advance(Duration::from_secs(11 * 3600 + 30 * 60));
    assert_eq!(c.sync(false).unwrap().action, "applied");
    assert_eq!(c.port(), "port = 3\n");
}

#[test]
fn now_goes_past_a_wave_and_a_failed_revision_is_quarantined_under_the_clock() {
    let c = Cycle::new("");
    c.push("2026-11-27T09:00:00Z", 1, "");
    c.sync(false).unwrap();
    let slow = "[rollout]\nwaves = [{ name = \"all\", percent = 100, after = \"10h\" }]\n";
    let v2 = c.push("2026-11-27T09:30:00Z", 2, slow);
    assert_eq!(c.sync(false).unwrap().action, "waiting");
    let s = c.sync(true).unwrap();
    assert_eq!(s.action, "applied", "--now");
    let h = c.agent.history().unwrap();
    assert!(h[0].forced.as_deref().is_some_and(|f| f.starts_with("--now")), "{:?}", h[0].forced);

    // A revision whose check fails: rolled back to v2 and quarantined; the
    // clock moving on does not bring it back.
    let bad = "[[check]]\nname = \"never\"\ncommand = [\"false\"]\ninterval = \"1s\"\n";
    let v3 = c.push("2026-11-27T10:00:00Z", 3, bad);
    let e = c.sync(false).unwrap_err();
    assert!(e.to_string().contains("unhealthy"), "{e}");
    assert_eq!(c.port(), "port = 2\n");
    assert_eq!(c.status().revision.as_deref(), Some(v2.as_str()));
    c.clock.advance(Duration::from_secs(24 * 3600));
    let e = c.sync(false).unwrap_err();
    assert!(matches!(&e, SyncError::Quarantined { commit, .. } if *commit == v3), "{e}");
    assert_eq!(c.port(), "port = 2\n");
}

#[test]
fn an_unreachable_source_keeps_enforcing_what_is_applied() {
    let c = Cycle::new("");
    c.push("2026-11-27T09:00:00Z", 1, "");
    c.sync(false).unwrap();
    c.source.fail(Some(SourceError::transient("memory: connection refused")));
    std::fs::write(c.root.join("etc/app/app.conf"), "edited by hand\n").unwrap();
    let e = c.sync(false).unwrap_err();
    assert!(e.is_transient() && e.to_string().contains("connection refused"), "{e}");
    assert_eq!(c.port(), "port = 1\n", "repaired from the store while offline");
    assert_eq!(c.status().source, "unreachable");
    c.source.fail(None);
    assert_eq!(c.sync(false).unwrap().action, "unchanged");
    assert_eq!(c.status().source, "ok");
}

/// A chmod that lands between tend's rename and its stat is not taken for
/// tend's own work: the idle fast path still sees the mode as drift.
#[test]
fn a_change_between_the_rename_and_the_stat_is_still_drift() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cycle::new("");
    c.push("2026-11-27T09:00:00Z", 1, "");
    c.sync(false).unwrap();
    let app = c.root.join("etc/app/app.conf");
    std::fs::write(&app, "edited by hand\n").unwrap();
    let at = app.clone();
    crate::sim::set_inline(true);
    crate::sim::meddle("stat a file renamed into place", move || {
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o666)).unwrap();
    });
    assert_eq!(c.sync(false).unwrap().action, "repaired");
    assert_eq!(c.port(), "port = 1\n");
    assert_eq!(std::fs::metadata(&app).unwrap().permissions().mode() & 0o7777, 0o666, "the meddling landed");
    assert_eq!(c.sync(false).unwrap().action, "repaired", "the fast path took the chmod for tend's own");
    assert_eq!(std::fs::metadata(&app).unwrap().permissions().mode() & 0o7777, 0o644);
    assert_eq!(c.sync(false).unwrap().action, "unchanged");
}
