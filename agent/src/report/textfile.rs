//! `[metrics] textfile` (SPEC §8): the gateway's own metrics in the
//! Prometheus text format, for node_exporter's textfile collector — no
//! listening socket on the gateway. Written atomically (a temporary file in
//! the same directory, then a rename) after every sync and health tick; an
//! unchanged file is rewritten at most every [`REFRESH`], so an idle gateway
//! does not wear its flash.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::prom::{family, label};
use crate::store::{PHASES, Status};

/// An unchanged file (only the timestamps moved) is rewritten this often.
pub const REFRESH: Duration = Duration::from_secs(300);

/// What the textfile counts since the agent started (counters reset at a
/// restart, as Prometheus expects of counters).
#[derive(Debug, Default)]
pub struct Counters {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Syncs by result: `applied`, `unchanged`, `repaired`, `rolled_back`, `failed`.
    syncs: BTreeMap<&'static str, u64>,
    /// Events raised, by kind.
    events: BTreeMap<&'static str, u64>,
    last_duration: Option<Duration>,
    last_sync: Option<SystemTime>,
    /// The last text written, without its timestamps, and when.
    written: Option<(String, Instant)>,
}

impl Counters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A sync or rollback ended with `result` after `took`.
    pub fn sync_done(&self, result: &'static str, took: Duration) {
        let mut i = self.lock();
        *i.syncs.entry(result).or_default() += 1;
        i.last_duration = Some(took);
        i.last_sync = Some(SystemTime::now());
    }

    pub fn event(&self, kind: &'static str) {
        *self.lock().events.entry(kind).or_default() += 1;
    }

    /// Events of `kind` raised since the agent started.
    pub fn events_of(&self, kind: &str) -> u64 {
        self.lock().events.get(kind).copied().unwrap_or(0)
    }
}

/// What the text needs besides the counters.
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub status: &'a Status,
    pub outbox_queued: u64,
    pub outbox_dropped: u64,
    pub rss_bytes: u64,
}

/// The text: (everything, everything but the timestamp series).
pub fn render(c: &Counters, s: &Snapshot<'_>) -> (String, String) {
    let i = c.lock();
    let st = s.status;
    let mut out = String::with_capacity(2048);
    family(
        &mut out,
        "tend_agent_info",
        "gauge",
        "Always 1: the agent's version, identity and the revision applied now.",
    );
    let _ = writeln!(
        out,
        "tend_agent_info{{version=\"{}\",device_id=\"{}\",fleet=\"{}\",revision=\"{}\"}} 1",
        label(&st.agent_version),
        label(&st.device_id),
        label(&st.fleet),
        label(st.revision.as_deref().unwrap_or(""))
    );
    family(&mut out, "tend_phase", "gauge", "1 for the phase the gateway is in (SPEC 4), 0 for the others.");
    for p in PHASES {
        let _ = writeln!(out, "tend_phase{{phase=\"{p}\"}} {}", u8::from(st.phase == *p));
    }
    family(&mut out, "tend_source_up", "gauge", "1 if the last fetch reached the Git source.");
    let _ = writeln!(out, "tend_source_up {}", u8::from(st.source == "ok"));
    family(&mut out, "tend_syncs_total", "counter", "Syncs since the agent started, by result.");
    for r in ["applied", "unchanged", "repaired", "rolled_back", "failed"] {
        let _ = writeln!(out, "tend_syncs_total{{result=\"{r}\"}} {}", i.syncs.get(r).unwrap_or(&0));
    }
    family(&mut out, "tend_drift_repairs_total", "counter", "Drift repaired since the agent started.");
    let _ = writeln!(out, "tend_drift_repairs_total {}", i.events.get("drift_repaired").unwrap_or(&0));
    family(&mut out, "tend_rollbacks_total", "counter", "Rollbacks (automatic or asked for) since the agent started.");
    let _ = writeln!(out, "tend_rollbacks_total {}", i.events.get("rolled_back").unwrap_or(&0));
    family(
        &mut out,
        "tend_resources",
        "gauge",
        "Files, containers and manifests of the revision applied now, by state.",
    );
    let _ = writeln!(out, "tend_resources{{state=\"ready\"}} {}", st.resources.ready);
    let _ = writeln!(out, "tend_resources{{state=\"failed\"}} {}", st.resources.failed);
    let _ = writeln!(
        out,
        "tend_resources{{state=\"other\"}} {}",
        st.resources.total.saturating_sub(st.resources.ready + st.resources.failed)
    );
    family(&mut out, "tend_outbox_events", "gauge", "Events waiting in the store for the broker.");
    let _ = writeln!(out, "tend_outbox_events {}", s.outbox_queued);
    family(&mut out, "tend_outbox_dropped_events_total", "counter", "Events dropped because the outbox was full.");
    let _ = writeln!(out, "tend_outbox_dropped_events_total {}", s.outbox_dropped);
    family(&mut out, "tend_agent_resident_memory_bytes", "gauge", "Resident memory of the tend process.");
    let _ = writeln!(out, "tend_agent_resident_memory_bytes {}", s.rss_bytes);
    let stable = out.clone();
    if let Some(d) = i.last_duration {
        family(&mut out, "tend_last_sync_duration_seconds", "gauge", "How long the last sync took.");
        let _ = writeln!(out, "tend_last_sync_duration_seconds {:.3}", d.as_secs_f64());
    }
    let last = i.last_sync.or_else(|| st.last_sync.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok()));
    if let Some(t) = last.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        family(&mut out, "tend_last_sync_timestamp_seconds", "gauge", "When the last sync ended (Unix time).");
        let _ = writeln!(out, "tend_last_sync_timestamp_seconds {}", t.as_secs());
    }
    (out, stable)
}

/// Write the textfile if something but the timestamps changed, or every
/// [`REFRESH`]. Returns whether it was written.
pub fn update(path: &Path, c: &Counters, s: &Snapshot<'_>) -> std::io::Result<bool> {
    let (text, stable) = render(c, s);
    {
        let i = c.lock();
        if let Some((last, at)) = &i.written
            && *last == stable
            && at.elapsed() < REFRESH
        {
            return Ok(false);
        }
    }
    // Staged as a dotfile, not *.prom: the collector never reads a
    // half-written file. Not fsynced: metrics need not survive a power cut.
    crate::atomic::write(path, text.as_bytes(), 0o644, false).map_err(|e| e.error)?;
    c.lock().written = Some((stable, Instant::now()));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Resources;

    fn status() -> Status {
        Status {
            device_id: "gw-1".into(),
            fleet: "acme".into(),
            agent_version: "0.1.0".into(),
            phase: crate::store::Phase::Synced,
            revision: Some("3f2a9c01b7e4".into()),
            target_revision: None,
            last_good_revision: None,
            source: "ok".into(),
            last_sync: Some("2026-11-27T10:00:00Z".into()),
            error: None,
            resources: Resources { total: 4, ready: 4, failed: 0 },
            wave: None,
            due_at: None,
            waiting_for: None,
            waiting_detail: None,
            inventory: serde_json::Value::Null,
        }
    }

    #[test]
    fn written_atomically_and_not_rewritten_when_only_time_moved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tend.prom");
        let c = Counters::default();
        let st = status();
        let snap = Snapshot { status: &st, outbox_queued: 0, outbox_dropped: 0, rss_bytes: 4 << 20 };
        c.sync_done("applied", Duration::from_millis(120));
        assert!(update(&path, &c, &snap).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("tend_syncs_total{result=\"applied\"} 1\n"), "{text}");
        assert!(text.contains("tend_phase{phase=\"synced\"} 1\n"), "{text}");
        assert!(text.contains("tend_last_sync_duration_seconds 0.120\n"), "{text}");
        assert!(text.contains(
            "tend_agent_info{version=\"0.1.0\",device_id=\"gw-1\",fleet=\"acme\",revision=\"3f2a9c01b7e4\"} 1"
        ));
        // Only the time of the last sync moved: not rewritten.
        c.lock().last_sync = Some(SystemTime::now() + Duration::from_secs(60));
        assert!(!update(&path, &c, &snap).unwrap());
        // A counter moved: rewritten.
        c.event("drift_repaired");
        assert!(update(&path, &c, &snap).unwrap());
        assert!(std::fs::read_to_string(&path).unwrap().contains("tend_drift_repairs_total 1\n"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("tend.prom")], "no temporary file left");
    }
}
