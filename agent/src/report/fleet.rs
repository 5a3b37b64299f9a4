//! `tend fleet status` and `tend fleet sync`: the fleet seen from the broker's
//! retained messages, and commands to it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rumqttc::{AsyncClient, Event, Incoming, Outgoing, QoS};
use serde::Serialize;
use serde_json::{Value, json};

use super::mqtt::Settings;

/// One gateway as the broker's retained messages show it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub fleet: String,
    pub device_id: String,
    /// `online`, `offline`, or `unknown` (no availability message).
    pub availability: String,
    pub phase: String,
    pub revision: Option<String>,
    pub target_revision: Option<String>,
    pub last_sync: Option<String>,
    pub source: String,
    pub error: Option<String>,
    /// Last sync older than the staleness limit.
    pub stale: bool,
}

impl Row {
    /// Needs a look: offline, stale, failing, or not on its target.
    pub fn attention(&self) -> bool {
        self.availability != "online"
            || self.stale
            || !matches!(self.phase.as_str(), "synced" | "progressing" | "suspended")
            || self.source != "ok"
    }
}

fn client_id() -> String {
    format!("tend-fleet-{:08x}", fastrand::u32(..))
}

/// Read every gateway's retained status and availability under `prefix`.
pub async fn status(
    settings: &Settings,
    prefix: &str,
    fleet: Option<&str>,
    stale_after: Duration,
) -> Result<Vec<Row>, String> {
    let options = settings.options(&client_id(), None)?;
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let prefix = prefix.trim_end_matches('/');
    let f = fleet.unwrap_or("+");
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut acked = 0;
    let quiet = Duration::from_millis(400);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = if acked >= 2 { tokio::time::Instant::now() + quiet } else { deadline };
        let ev = match tokio::time::timeout_at(next.min(deadline), eventloop.poll()).await {
            Err(_) if acked >= 2 => break,
            Err(_) => return Err(format!("{}: no answer from the broker within 10s", settings.url)),
            Ok(Err(e)) => return Err(format!("{}: {e}", settings.url)),
            Ok(Ok(ev)) => ev,
        };
        match ev {
            Event::Incoming(Incoming::ConnAck(_)) => {
                for kind in ["status", "availability"] {
                    client
                        .subscribe(format!("{prefix}/{f}/+/{kind}"), QoS::AtLeastOnce)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            Event::Incoming(Incoming::SubAck(_)) => acked += 1,
            Event::Incoming(Incoming::Publish(p)) => {
                let Some(rest) = p.topic.strip_prefix(&format!("{prefix}/")) else { continue };
                let parts: Vec<&str> = rest.split('/').collect();
                let [fl, dev, kind] = parts[..] else { continue };
                if dev == "_all" {
                    continue;
                }
                let row = rows.entry((fl.to_owned(), dev.to_owned())).or_insert_with(|| Row {
                    fleet: fl.into(),
                    device_id: dev.into(),
                    availability: "unknown".into(),
                    phase: "unknown".into(),
                    source: "unknown".into(),
                    ..Default::default()
                });
                match kind {
                    "availability" => {
                        row.availability = String::from_utf8_lossy(&p.payload).trim().chars().take(16).collect()
                    }
                    "status" => {
                        let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                        row.phase = s("phase").unwrap_or_else(|| "unknown".into());
                        row.revision = s("revision");
                        row.target_revision = s("target_revision");
                        row.last_sync = s("last_sync");
                        row.source = s("source").unwrap_or_else(|| "unknown".into());
                        row.error = s("error");
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    let now = SystemTime::now();
    let mut out: Vec<Row> = rows.into_values().collect();
    for r in &mut out {
        r.stale = match r.last_sync.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok()) {
            Some(t) => now.duration_since(t).unwrap_or_default() > stale_after,
            None => true,
        };
    }
    Ok(out)
}

/// A table that fits 80 columns; gateways needing a look are marked `!`.
pub fn table(rows: &[Row]) -> String {
    let now = SystemTime::now();
    let mut out = format!(
        "  {:<22} {:<7} {:<11} {:<8} {:>6} {:<11} {}\n",
        "DEVICE", "ONLINE", "PHASE", "REV", "SYNC", "SOURCE", "ERROR"
    );
    for r in rows {
        let age = r
            .last_sync
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .map(|t| short_age(now.duration_since(t).unwrap_or_default()))
            .unwrap_or_else(|| "never".into());
        let device = if r.fleet.is_empty() { r.device_id.clone() } else { format!("{}/{}", r.fleet, r.device_id) };
        let line = format!(
            "{} {:<22} {:<7} {:<11} {:<8} {:>6} {:<11} {}",
            if r.attention() { "!" } else { " " },
            clip(&device, 22),
            clip(&r.availability, 7),
            clip(&r.phase, 11),
            r.revision.as_deref().map_or("-", |c| &c[..c.len().min(8)]),
            if r.stale { format!("{age}!") } else { age },
            clip(&r.source, 11),
            r.error.as_deref().unwrap_or(""),
        );
        out.push_str(&clip(&line, 79));
        out.push('\n');
    }
    let attention = rows.iter().filter(|r| r.attention()).count();
    out.push_str(&format!("{} gateways, {} need attention (!)\n", rows.len(), attention));
    out
}

fn short_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=99 => format!("{s}s"),
        100..=5999 => format!("{}m", s / 60),
        6000..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_owned() } else { s.chars().take(n.saturating_sub(1)).collect::<String>() + "…" }
}

/// Publish a `sync` command to one gateway or to the whole fleet; returns the id.
pub async fn sync(settings: &Settings, prefix: &str, fleet: &str, device: Option<&str>) -> Result<String, String> {
    let options = settings.options(&client_id(), None)?;
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let prefix = prefix.trim_end_matches('/');
    let topic = format!("{prefix}/{fleet}/{}/cmd", device.unwrap_or("_all"));
    let id = format!("fleet-{:08x}", fastrand::u32(..));
    let payload = json!({ "cmd": "sync", "id": id }).to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut sent_pkid = None;
    loop {
        let ev = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => return Err(format!("{}: no acknowledgement within 10s", settings.url)),
            Ok(Err(e)) => return Err(format!("{}: {e}", settings.url)),
            Ok(Ok(ev)) => ev,
        };
        match ev {
            Event::Incoming(Incoming::ConnAck(_)) => {
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => sent_pkid = Some(pkid),
            Event::Incoming(Incoming::PubAck(a)) if Some(a.pkid) == sent_pkid => break,
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while !matches!(eventloop.poll().await, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {}
    })
    .await;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_fits_80_columns_and_marks_problems() {
        let rows = vec![
            Row {
                fleet: "acme".into(),
                device_id: "gw-berlin-01".into(),
                availability: "online".into(),
                phase: "synced".into(),
                revision: Some("98c75931e683c1e8".into()),
                last_sync: Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
                source: "ok".into(),
                ..Default::default()
            },
            Row {
                fleet: "acme".into(),
                device_id: "gw-with-a-very-long-name-indeed-0001".into(),
                availability: "offline".into(),
                phase: "rolled_back".into(),
                revision: Some("3f2a9c01".into()),
                last_sync: Some("2020-01-01T00:00:00Z".into()),
                source: "unreachable".into(),
                error: Some("revision 3f2a9c01b7e4 is unhealthy: check api: tcp 127.0.0.1:8080: refused".into()),
                stale: true,
                ..Default::default()
            },
        ];
        let t = table(&rows);
        for line in t.lines() {
            assert!(line.chars().count() <= 80, "{line:?} is {} wide", line.chars().count());
        }
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("  acme/gw-berlin-01"), "{t}");
        assert!(lines[2].starts_with("! acme/gw-with-a-very"), "{t}");
        assert!(t.contains("2 gateways, 1 need attention"), "{t}");
    }
}
