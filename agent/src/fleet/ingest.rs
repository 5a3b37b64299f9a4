//! `tend fleet ingest` (SPEC §9): the reports gateways at sites without
//! network wrote onto a stick (`tend-reports/DEVICE_ID.json`, format
//! `tend-report/1`, written by `tend import`) published as if the gateways
//! had sent them: the status retained at QoS 1, marked `via: "import"` and
//! `reported_at`, and the undelivered events at QoS 1. No availability: the
//! site is not online, and the fleet view shows it as known by a report.
//!
//! A report is a file from the field: it is read bounded, its names checked
//! like a topic level, and a status the gateway itself sent later (its
//! `last_sync` newer) is never overwritten.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::broker;
use crate::report::mqtt::Settings;

/// The most a report may be (1,000 events of up to 8 KiB, and the rest).
const MAX_REPORT: u64 = 16 << 20;
/// The most events one report publishes.
const MAX_EVENTS: usize = 1000;

/// What `ingest` did.
#[derive(Debug, Default)]
pub struct Ingested {
    pub published: Vec<String>,
    pub events: usize,
    /// (file, why) of reports not published.
    pub skipped: Vec<(String, String)>,
}

/// The report files at `dir`: `dir/tend-reports/*.json`, or `dir/*.json`
/// when `dir` is that directory.
pub fn report_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let reports = if dir.join("tend-reports").is_dir() { dir.join("tend-reports") } else { dir.to_path_buf() };
    let files = crate::offline::files_ending(&reports, "json").map_err(|e| format!("{}: {e}", reports.display()))?;
    if files.is_empty() {
        return Err(format!("no reports (*.json) in {}", reports.display()));
    }
    Ok(files)
}

/// A report, read and checked.
struct Report {
    fleet: String,
    device: String,
    status: serde_json::Map<String, Value>,
    last_sync: Option<jiff::Timestamp>,
    events: Vec<Value>,
}

fn read(path: &Path) -> Result<Report, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(MAX_REPORT + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_REPORT {
        return Err(format!("larger than {MAX_REPORT} bytes"));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
    if v["format"] != "tend-report/1" {
        return Err(format!("format {}, expected \"tend-report/1\"", v["format"]));
    }
    let name = |k: &str| -> Result<String, String> {
        let s = v[k].as_str().ok_or_else(|| format!("no {k}"))?;
        if s.is_empty() || s.len() > 128 || s.chars().any(|c| matches!(c, '/' | '+' | '#') || c.is_control()) {
            return Err(format!("{k} {s:?} cannot be a topic level"));
        }
        Ok(s.to_owned())
    };
    let (fleet, device) = (name("fleet")?, name("device_id")?);
    let mut status = v["status"].as_object().cloned().ok_or("no status")?;
    if status.get("device_id").and_then(Value::as_str) != Some(device.as_str()) {
        return Err("its status is another device's".into());
    }
    status.insert("via".into(), "import".into());
    status.insert("reported_at".into(), v["written_at"].clone());
    let last_sync = status.get("last_sync").and_then(Value::as_str).and_then(|t| t.parse().ok());
    let events = v["events"].as_array().map(|a| a.iter().take(MAX_EVENTS).cloned().collect()).unwrap_or_default();
    Ok(Report { fleet, device, status, last_sync, events })
}

/// Publish the reports at `dir` (only those of `fleet`, when given).
pub async fn ingest(settings: &Settings, prefix: &str, fleet: Option<&str>, dir: &Path) -> Result<Ingested, String> {
    let prefix = prefix.trim_end_matches('/');
    let mut out = Ingested::default();
    let mut reports = Vec::new();
    for f in report_files(dir)? {
        let shown = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match read(&f) {
            Ok(r) if fleet.is_some_and(|x| x != r.fleet) => {
                out.skipped.push((shown, format!("of fleet {}", r.fleet)));
            }
            Ok(r) => reports.push((shown, r)),
            Err(e) => out.skipped.push((shown, e)),
        }
    }
    if reports.is_empty() {
        return Ok(out);
    }
    // What the broker holds now: a gateway that came back online since its
    // report keeps the status it sent itself.
    let now: BTreeMap<(String, String), (Option<jiff::Timestamp>, bool)> = {
        let mut held = BTreeMap::new();
        let fleets: std::collections::BTreeSet<&str> = reports.iter().map(|(_, r)| r.fleet.as_str()).collect();
        for f in fleets {
            let state = broker::snapshot(settings, prefix, Some(f), Duration::from_secs(900)).await?;
            for d in state.devices.values() {
                let at = d.last_sync.as_deref().and_then(|t| t.parse().ok());
                held.insert((d.fleet.clone(), d.device_id.clone()), (at, d.via_import()));
            }
        }
        held
    };
    let mut messages = Vec::new();
    for (shown, r) in reports {
        if let Some((at, via_import)) = now.get(&(r.fleet.clone(), r.device.clone()))
            && at.is_some()
            && *at >= r.last_sync
        {
            let whose = if *via_import { "an ingested report as new or newer" } else { "its own newer status" };
            out.skipped.push((shown, format!("the broker holds {whose} for {}/{}", r.fleet, r.device)));
            continue;
        }
        let base = format!("{prefix}/{}/{}", r.fleet, r.device);
        messages.push((format!("{base}/status"), true, Value::Object(r.status).to_string()));
        out.events += r.events.len();
        for e in r.events {
            messages.push((format!("{base}/events"), false, e.to_string()));
        }
        out.published.push(format!("{}/{}", r.fleet, r.device));
    }
    if !messages.is_empty() {
        broker::publish_all(settings, "ingest", messages).await?;
    }
    Ok(out)
}
