//! `/metrics` of `tend fleet serve`, in the Prometheus text format (0.0.4).
//! Aggregates first (by phase, online, stale, by revision); then one series
//! per gateway where the gateway is the point (online, last sync, info), so
//! alert rules can name it. Label values come from the broker and are escaped.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::model::{Counts, Fleet, PHASES};
use crate::prom::{family, label};

/// Which gateways get series of their own (`--device-metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceMetrics {
    /// Those that need attention (offline, stale, failing, unreadable), at
    /// most [`ATTENTION_SERIES`]: the alert rules name them, and a healthy
    /// fleet of 100,000 costs no per-gateway series at all.
    #[default]
    Attention,
    /// Every gateway (four series each).
    All,
    None,
}

/// Gateways with series of their own under [`DeviceMetrics::Attention`].
pub const ATTENTION_SERIES: usize = 1000;

impl std::str::FromStr for DeviceMetrics {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "attention" => Ok(DeviceMetrics::Attention),
            "all" => Ok(DeviceMetrics::All),
            "none" => Ok(DeviceMetrics::None),
            _ => Err(format!("{s:?}: expected attention, all or none")),
        }
    }
}

/// Everything `fleet serve` knows, as metrics. `connected`: the server's
/// own MQTT session; `per_device`: which gateways get series of their own.
pub fn render(fleet: &Fleet, connected: bool, per_device: DeviceMetrics) -> String {
    let c: Counts = fleet.counts();
    let devices: Vec<&super::model::Device> = match per_device {
        DeviceMetrics::All => fleet.devices.values().collect(),
        DeviceMetrics::Attention => fleet.devices.values().filter(|d| d.attention).take(ATTENTION_SERIES).collect(),
        DeviceMetrics::None => Vec::new(),
    };
    let mut out = String::with_capacity(2048 + devices.len() * 400);
    family(&mut out, "tend_fleet_up", "gauge", "Whether fleet serve is connected to the broker.");
    let _ = writeln!(out, "tend_fleet_up {}", u8::from(connected));
    family(&mut out, "tend_fleet_gateways", "gauge", "Gateways known from retained status and availability.");
    let _ = writeln!(out, "tend_fleet_gateways {}", c.gateways);
    family(&mut out, "tend_fleet_gateways_by_phase", "gauge", "Gateways by the phase of their last status.");
    for p in PHASES.iter().chain(&["unknown", "other"]) {
        let _ = writeln!(out, "tend_fleet_gateways_by_phase{{phase=\"{p}\"}} {}", c.by_phase.get(*p).unwrap_or(&0));
    }
    family(&mut out, "tend_fleet_gateways_online", "gauge", "Gateways whose availability is online.");
    let _ = writeln!(out, "tend_fleet_gateways_online {}", c.online);
    family(&mut out, "tend_fleet_gateways_stale", "gauge", "Gateways whose last sync is older than --stale.");
    let _ = writeln!(out, "tend_fleet_gateways_stale {}", c.stale);
    family(
        &mut out,
        "tend_fleet_memory_bytes",
        "gauge",
        "What the view holds for gateways and events (--max-memory bounds it).",
    );
    let _ = writeln!(out, "tend_fleet_memory_bytes {}", fleet.held());
    family(
        &mut out,
        "tend_fleet_events_evicted_total",
        "counter",
        "Events dropped, oldest first, to stay within --max-memory.",
    );
    let _ = writeln!(out, "tend_fleet_events_evicted_total {}", fleet.evicted);
    family(
        &mut out,
        "tend_fleet_gateways_incomplete",
        "gauge",
        "Gateways known by one retained topic only (the broker dropped messages on the way).",
    );
    let _ = writeln!(out, "tend_fleet_gateways_incomplete{{missing=\"status\"}} {}", c.missing_status);
    let _ = writeln!(out, "tend_fleet_gateways_incomplete{{missing=\"availability\"}} {}", c.missing_availability);
    family(&mut out, "tend_fleet_gateways_attention", "gauge", "Gateways offline, stale, failing or unreadable.");
    let _ = writeln!(out, "tend_fleet_gateways_attention {}", c.attention);
    family(
        &mut out,
        "tend_fleet_gateways_by_revision",
        "gauge",
        "Gateways by the revision applied now (the most common ones; the rest as revision=\"other\").",
    );
    for (r, n) in &c.by_revision {
        let _ = writeln!(out, "tend_fleet_gateways_by_revision{{revision=\"{}\"}} {n}", label(r));
    }
    if c.other_revisions > 0 {
        let _ = writeln!(out, "tend_fleet_gateways_by_revision{{revision=\"other\"}} {}", c.other_revisions);
    }
    family(
        &mut out,
        "tend_fleet_gateways_by_inventory",
        "gauge",
        "Gateways by what they are (key arch, os, runtime, model): the 20 most common values of each, the rest as value=\"other\".",
    );
    for (k, t) in &c.by_inventory {
        for (v, n) in &t.values {
            let _ = writeln!(out, "tend_fleet_gateways_by_inventory{{key=\"{k}\",value=\"{}\"}} {n}", label(v));
        }
        if t.other > 0 {
            let _ = writeln!(out, "tend_fleet_gateways_by_inventory{{key=\"{k}\",value=\"other\"}} {}", t.other);
        }
    }
    family(
        &mut out,
        "tend_fleet_gateways_by_wave",
        "gauge",
        "Gateways by rollout wave (wave=\"none\": outside any) and phase: the 20 largest waves, the rest as wave=\"other\".",
    );
    for (w, phases) in &c.by_wave {
        for (p, n) in phases {
            let _ = writeln!(out, "tend_fleet_gateways_by_wave{{wave=\"{}\",phase=\"{p}\"}} {n}", label(w));
        }
    }
    family(&mut out, "tend_fleet_messages_total", "counter", "Broker messages taken in, by topic kind.");
    for (k, n) in &fleet.received {
        let _ = writeln!(out, "tend_fleet_messages_total{{kind=\"{k}\"}} {n}");
    }
    family(&mut out, "tend_fleet_messages_rejected_total", "counter", "Broker messages refused, by reason.");
    for (k, n) in &fleet.rejected {
        let _ = writeln!(out, "tend_fleet_messages_rejected_total{{reason=\"{}\"}} {n}", label(k));
    }

    family(&mut out, "tend_fleet_gateway_online", "gauge", "1 if the gateway's availability is online.");
    for d in &devices {
        let _ = writeln!(
            out,
            "tend_fleet_gateway_online{{fleet=\"{}\",device_id=\"{}\"}} {}",
            label(&d.fleet),
            label(&d.device_id),
            u8::from(d.availability == "online")
        );
    }
    family(
        &mut out,
        "tend_fleet_gateway_info",
        "gauge",
        "Always 1: the gateway's phase, revision and agent version as labels.",
    );
    for d in &devices {
        let _ = writeln!(
            out,
            "tend_fleet_gateway_info{{fleet=\"{}\",device_id=\"{}\",phase=\"{}\",revision=\"{}\",agent_version=\"{}\"}} 1",
            label(&d.fleet),
            label(&d.device_id),
            label(d.phase_label()),
            label(d.revision.as_deref().unwrap_or("")),
            label(d.agent_version.as_deref().unwrap_or("")),
        );
    }
    family(
        &mut out,
        "tend_fleet_gateway_last_sync_timestamp_seconds",
        "gauge",
        "When the gateway last synced (Unix time), from its status.",
    );
    for d in &devices {
        if let Some(t) = d.last_sync_at.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
            let _ = writeln!(
                out,
                "tend_fleet_gateway_last_sync_timestamp_seconds{{fleet=\"{}\",device_id=\"{}\"}} {}",
                label(&d.fleet),
                label(&d.device_id),
                t.as_secs()
            );
        }
    }
    family(&mut out, "tend_fleet_gateway_stale", "gauge", "1 if the gateway's last sync is older than --stale.");
    for d in &devices {
        let _ = writeln!(
            out,
            "tend_fleet_gateway_stale{{fleet=\"{}\",device_id=\"{}\"}} {}",
            label(&d.fleet),
            label(&d.device_id),
            u8::from(d.stale)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::TOP_INVENTORY;
    use super::*;
    use std::time::Duration;

    #[test]
    fn label_values_from_the_broker_are_escaped() {
        let mut f = Fleet::new("tend/v1", Duration::from_secs(60));
        let now = SystemTime::now();
        f.ingest(
            "tend/v1/acme/gw\"} 1 x\\/status",
            br#"{"phase":"synced","revision":"a\"b\\c\nd","source":"ok"}"#,
            now,
        );
        f.ingest("tend/v1/acme/ok/status", br#"{"phase":"synced","revision":"r1"}"#, now);
        let text = render(&f, true, DeviceMetrics::All);
        assert!(text.contains(r#"device_id="gw\"} 1 x\\",phase="synced",revision="a\"b\\c�d""#), "{text}");
        assert!(text.contains("tend_fleet_gateways_by_phase{phase=\"synced\"} 2"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn waves_are_counted_by_phase_and_bounded() {
        let mut f = Fleet::new("tend/v1", Duration::from_secs(60));
        let now = SystemTime::now();
        let mut put = |id: &str, status: serde_json::Value| {
            f.ingest(&format!("tend/v1/acme/{id}/status"), status.to_string().as_bytes(), now);
        };
        put("c1", serde_json::json!({ "phase": "synced", "wave": "canary" }));
        put("c2", serde_json::json!({ "phase": "synced", "wave": "canary" }));
        put("c3", serde_json::json!({ "phase": "rolled_back", "wave": "canary" }));
        for i in 0..3 {
            put(&format!("w{i}"), serde_json::json!({ "phase": "waiting", "wave": "rest" }));
            put(&format!("n{i}"), serde_json::json!({ "phase": "synced" }));
        }
        // 30 waves that 2 gateways each name (larger waves come first).
        for i in 0..60 {
            put(&format!("h{i}"), serde_json::json!({ "phase": "held", "wave": format!("w\"{}", i / 2) }));
        }
        let text = render(&f, true, DeviceMetrics::None);
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("tend_fleet_gateways_by_wave{")).collect();
        for want in [
            r#"tend_fleet_gateways_by_wave{wave="canary",phase="synced"} 2"#,
            r#"tend_fleet_gateways_by_wave{wave="canary",phase="rolled_back"} 1"#,
            r#"tend_fleet_gateways_by_wave{wave="rest",phase="waiting"} 3"#,
            r#"tend_fleet_gateways_by_wave{wave="none",phase="synced"} 3"#,
        ] {
            assert!(series.contains(&want), "{want} not in {series:?}");
        }
        // The 20 largest waves (the 2-gateway ones, by name), the rest summed.
        let waves: std::collections::BTreeSet<&str> =
            series.iter().map(|l| l.split("wave=\"").nth(1).unwrap().split("\",phase").next().unwrap()).collect();
        assert_eq!(waves.len(), 21, "{waves:?}");
        let held: u64 = series
            .iter()
            .filter(|l| l.contains("phase=\"held\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(held, 60, "{series:?}");
        assert!(
            series.iter().any(|l| l.starts_with(r#"tend_fleet_gateways_by_wave{wave="other",phase="#)),
            "{series:?}"
        );
    }

    #[test]
    fn inventory_gauges_are_bounded_whatever_the_gateways_send() {
        let mut f = Fleet::new("tend/v1", Duration::from_secs(60));
        let now = SystemTime::now();
        // 10,000 gateways, each with an arch of its own (long, with quotes
        // and newlines), and 30 honest aarch64 ones.
        for i in 0..10_000 {
            let arch = format!("x\\\"}} 1\n{i}{}", "é".repeat(500));
            let status = serde_json::json!({ "phase": "synced", "inventory": { "arch": arch, "os": "Debian GNU/Linux 12 (bookworm)" } });
            f.ingest(&format!("tend/v1/acme/h-{i}/status"), status.to_string().as_bytes(), now);
        }
        for i in 0..30 {
            let status =
                r#"{"phase":"synced","inventory":{"arch":"aarch64","model":"linux,dummy-virt","runtime":null}}"#;
            f.ingest(&format!("tend/v1/acme/gw-{i}/status"), status.as_bytes(), now);
        }
        let text = render(&f, true, DeviceMetrics::None);
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("tend_fleet_gateways_by_inventory{")).collect();
        let of = |k: &str| series.iter().filter(|l| l.contains(&format!("key=\"{k}\""))).count();
        assert_eq!(of("arch"), TOP_INVENTORY + 1, "{series:?}");
        assert!(series.contains(&r#"tend_fleet_gateways_by_inventory{key="arch",value="aarch64"} 30"#), "{series:?}");
        let other =
            format!(r#"tend_fleet_gateways_by_inventory{{key="arch",value="other"}} {}"#, 10_000 - (TOP_INVENTORY - 1));
        assert!(series.contains(&other.as_str()), "{series:?}");
        assert!(series.contains(&r#"tend_fleet_gateways_by_inventory{key="model",value="none"} 10000"#), "{series:?}");
        assert!(
            series.contains(
                &r#"tend_fleet_gateways_by_inventory{key="os",value="Debian GNU/Linux 12 (bookworm)"} 10000"#
            )
        );
        assert_eq!(of("runtime"), 1);
        for l in &series {
            assert!(l.chars().count() < 200 + 80, "{l}");
            assert!(l.rsplit(' ').next().unwrap().parse::<u64>().is_ok(), "{l}");
        }
        assert!(text.lines().count() < 200, "{}", text.lines().count());
    }

    #[test]
    fn per_gateway_series_only_for_those_that_need_attention_by_default() {
        let mut f = Fleet::new("tend/v1", Duration::from_secs(900));
        let now = SystemTime::now();
        let ts = humantime::format_rfc3339_seconds(now);
        for i in 0..3000 {
            let phase = if i < 1500 { "rolled_back" } else { "synced" };
            let status = format!(r#"{{"phase":"{phase}","revision":"r","source":"ok","last_sync":"{ts}"}}"#);
            f.ingest(&format!("tend/v1/acme/gw-{i}/status"), status.as_bytes(), now);
            f.ingest(&format!("tend/v1/acme/gw-{i}/availability"), b"online", now);
        }
        let series = |m: DeviceMetrics, name: &str| {
            render(&f, true, m).lines().filter(|l| l.starts_with(&format!("{name}{{"))).count()
        };
        assert_eq!(series(DeviceMetrics::All, "tend_fleet_gateway_info"), 3000);
        assert_eq!(series(DeviceMetrics::Attention, "tend_fleet_gateway_info"), ATTENTION_SERIES);
        assert_eq!(series(DeviceMetrics::None, "tend_fleet_gateway_info"), 0);
        let text = render(&f, true, DeviceMetrics::Attention);
        assert!(!text.contains("gw-2999\""), "a healthy gateway has no series of its own");
        assert!(text.contains("tend_fleet_gateways_by_phase{phase=\"rolled_back\"} 1500"), "the aggregates are whole");
    }
}
