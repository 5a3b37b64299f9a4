//! Reporting to the fleet (SPEC §4): event, status and health payloads, the
//! topics they go to, and the host metrics health carries.
//!
//! Events go into the store's outbox before anything publishes them ([`Events`]),
//! so none is lost while the broker is unreachable or the agent restarts;
//! `mqtt.rs` publishes them in order and removes each only once the broker
//! acknowledged it. Status and health are not queued: the newest replaces the old.

pub mod announce;
pub mod breaker;
pub mod logs;
pub mod mqtt;
pub mod textfile;

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::store::{Store, StoreError};

/// Now, as RFC 3339 to the second (event and status times).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Events kept while the broker is unreachable; past this the oldest are dropped
/// (and counted in health as `events_dropped`).
pub const OUTBOX_LIMIT: usize = 10_000;

/// The kinds of event SPEC §4 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SyncStarted,
    Applied,
    Healthy,
    RolledBack,
    Failed,
    DriftRepaired,
    SourceUnreachable,
    SourceRestored,
    Command,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SyncStarted => "sync_started",
            Kind::Applied => "applied",
            Kind::Healthy => "healthy",
            Kind::RolledBack => "rolled_back",
            Kind::Failed => "failed",
            Kind::DriftRepaired => "drift_repaired",
            Kind::SourceUnreachable => "source_unreachable",
            Kind::SourceRestored => "source_restored",
            Kind::Command => "command",
        }
    }
}

/// Raises events: writes them to the outbox and wakes the publisher. Without
/// `[mqtt]` nothing would ever publish them: they are logged, not kept (an
/// outbox no one drains would only grow to its limit).
#[derive(Clone)]
pub struct Events {
    device_id: String,
    fleet: String,
    wake: Arc<tokio::sync::Notify>,
    keep: bool,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish()
    }
}

impl Events {
    /// `keep`: whether events are kept for a publisher (`[mqtt]` is set).
    pub fn new(device_id: &str, fleet: &str, keep: bool) -> Events {
        Events { device_id: device_id.into(), fleet: fleet.into(), wake: Arc::new(tokio::sync::Notify::new()), keep }
    }

    /// Notified whenever an event is queued.
    pub fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Queue an event; `fields` (an object) is merged into it. Blocking (store).
    pub fn raise(&self, store: &dyn Store, kind: Kind, fields: Value) -> Result<u64, StoreError> {
        if !self.keep {
            tracing::debug!(kind = kind.as_str(), "event (not kept: no [mqtt])");
            return Ok(0);
        }
        let mut event = json!({
            "seq": 0,
            "ts": now_rfc3339(),
            "kind": kind.as_str(),
            "device_id": self.device_id,
            "fleet": self.fleet,
        });
        if let (Some(obj), Value::Object(extra)) = (event.as_object_mut(), fields) {
            for (k, v) in extra {
                obj.insert(k, v);
            }
        }
        let seq = store.push_event(&mut event, OUTBOX_LIMIT)?;
        tracing::debug!(seq, kind = kind.as_str(), "event queued");
        self.wake.notify_one();
        Ok(seq)
    }
}

/// The topics of one gateway.
#[derive(Debug, Clone)]
pub struct Topics {
    pub root: String,
    pub all_cmd: String,
}

impl Topics {
    pub fn new(prefix: &str, fleet: &str, device_id: &str) -> Topics {
        let prefix = prefix.trim_end_matches('/');
        Topics { root: format!("{prefix}/{fleet}/{device_id}"), all_cmd: format!("{prefix}/{fleet}/_all/cmd") }
    }
    pub fn availability(&self) -> String {
        format!("{}/availability", self.root)
    }
    pub fn status(&self) -> String {
        format!("{}/status", self.root)
    }
    pub fn health(&self) -> String {
        format!("{}/health", self.root)
    }
    pub fn events(&self) -> String {
        format!("{}/events", self.root)
    }
    pub fn cmd(&self) -> String {
        format!("{}/cmd", self.root)
    }
    /// Where the answer to logs request `id` goes (`id` checked by
    /// [`logs::valid_id`]).
    pub fn logs(&self, id: &str) -> String {
        format!("{}/logs/{id}", self.root)
    }
}

/// Host figures for the health payload, read from /proc and statvfs (Linux).
#[derive(Debug, Default)]
pub struct Host {
    /// The previous (busy, total) jiffies, for CPU use between two reads.
    last_cpu: Option<(u64, u64)>,
    started: Option<std::time::Instant>,
}

impl Host {
    pub fn new() -> Host {
        let mut h = Host { last_cpu: None, started: Some(std::time::Instant::now()) };
        h.last_cpu = read_cpu();
        h
    }

    /// The host part of the health payload; `state_dir` is where disk space is measured.
    pub fn sample(&mut self, state_dir: &Path) -> Value {
        let cpu = read_cpu();
        let cpu_percent = match (self.last_cpu, cpu) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                ((b1 - b0) as f64 * 100.0 / (t1 - t0) as f64 * 10.0).round() / 10.0
            }
            _ => 0.0,
        };
        self.last_cpu = cpu;
        let (mem_total, mem_available) = read_meminfo();
        let disk_free = crate::reconcile::space::free_bytes(state_dir).unwrap_or(0);
        let uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|t| t.split_whitespace().next().and_then(|x| x.parse::<f64>().ok()))
            .unwrap_or(0.0);
        let load1 = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| t.split_whitespace().next().and_then(|x| x.parse::<f64>().ok()))
            .unwrap_or(0.0);
        json!({
            "ts": now_rfc3339(),
            "uptime_s": uptime as u64,
            "agent_uptime_s": self.started.map_or(0, |s| s.elapsed().as_secs()),
            "cpu_percent": cpu_percent,
            "mem_used_bytes": mem_total.saturating_sub(mem_available),
            "mem_total_bytes": mem_total,
            "disk_free_bytes": disk_free,
            "load1": load1,
            "agent_rss_bytes": read_own_rss(),
        })
    }
}

/// (busy, total) jiffies from the first line of /proc/stat.
fn read_cpu() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// (MemTotal, MemAvailable) in bytes.
fn read_meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

pub(crate) fn read_own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1).and_then(|x| x.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_sample_has_every_spec_field() {
        let mut h = Host::new();
        let v = h.sample(Path::new("/"));
        for k in ["ts", "uptime_s", "cpu_percent", "mem_used_bytes", "mem_total_bytes", "disk_free_bytes", "load1"] {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
        assert!(v["mem_total_bytes"].as_u64().unwrap() > 0);
        assert!(v["disk_free_bytes"].as_u64().unwrap() > 0);
    }

    #[test]
    fn topics() {
        let t = Topics::new("tend/v1/", "acme", "gw-1");
        assert_eq!(t.status(), "tend/v1/acme/gw-1/status");
        assert_eq!(t.all_cmd, "tend/v1/acme/_all/cmd");
    }
}
