//! The fleet as the broker shows it, built from messages any gateway (or
//! anyone with write access to the broker) may have written: every field of
//! every message is hostile input. What cannot be read is marked in
//! [`Device::problems`], never trusted, never a crash; every string kept is
//! clipped and has its control characters replaced, so no terminal or page
//! ever receives an escape sequence from the broker.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::inventory::HostInventory;

/// Larger messages are not parsed (a status is well under 2 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Characters kept of any string from the broker.
pub const MAX_TEXT: usize = 300;
/// Bytes of a fleet or device id taken from a topic.
pub const MAX_ID: usize = 128;
/// Recent events kept per gateway.
pub const EVENTS_KEPT: usize = 100;
/// Gateways kept; messages for more are counted and dropped.
pub const MAX_DEVICES: usize = 200_000;
/// Revisions listed by count before the rest are summed as "other".
pub const TOP_REVISIONS: usize = 20;
/// Values of each inventory key listed by count before the rest are summed
/// as "other": a fleet of gateways each sending a string of its own makes
/// 21 series per key, not one per gateway.
pub const TOP_INVENTORY: usize = 20;
/// Waves with series of their own in `/metrics` (a hostile gateway may name
/// any wave).
pub const TOP_WAVES: usize = 20;
/// The inventory keys gateways are counted by (SPEC §4).
pub const INVENTORY_KEYS: [&str; 4] = ["arch", "os", "runtime", "model"];
/// What the fleet view keeps in memory (gateways and their recent events),
/// by default: anyone who may publish on the broker can send large distinct
/// events or invent gateways, and the view must not grow past this. Oldest
/// events go first; past that, new gateways are refused.
pub const DEFAULT_MAX_BYTES: usize = 256 << 20;

/// The phases of SPEC §4; anything else a gateway sends counts as `other`.
pub use crate::store::PHASES;

/// One gateway.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub fleet: String,
    pub device_id: String,
    /// `online`, `offline`, `unknown` (no or unreadable availability), or
    /// `import` (known only from a report brought back on a stick).
    pub availability: &'static str,
    /// One of [`PHASES`], `unknown` (no status yet), or what the gateway sent
    /// (cleaned, counted as `other`).
    pub phase: String,
    pub revision: Option<String>,
    pub target_revision: Option<String>,
    pub last_good_revision: Option<String>,
    pub agent_version: Option<String>,
    pub last_sync: Option<String>,
    pub source: Option<String>,
    pub error: Option<String>,
    pub wave: Option<String>,
    pub due_at: Option<String>,
    pub waiting_for: Option<String>,
    pub resources: Option<Resources>,
    /// What the gateway is (each string cleaned and clipped).
    pub inventory: HostInventory,
    /// When this server first saw the gateway on its `revision` (Unix
    /// seconds; for a retained status, when the server started).
    pub revision_seen_at: Option<u64>,
    /// Last sync older than the staleness limit, or none at all.
    pub stale: bool,
    /// Offline, stale, failing, off its source, or unreadable.
    pub attention: bool,
    /// What could not be read from this gateway's messages.
    pub problems: Vec<String>,
    /// Whether a status and an availability message came for it at all: a
    /// gateway known by one and not the other is a sign that the broker
    /// dropped retained messages on the way ([`Counts::missing_status`]).
    pub seen_status: bool,
    pub seen_availability: bool,
    pub health: Option<Health>,
    /// `import`: the status came on a stick (SPEC §9, `tend fleet ingest`),
    /// not from the gateway over the network.
    pub via: Option<String>,
    /// When the gateway wrote the report a status `via` a stick came in.
    pub reported_at: Option<String>,
    #[serde(skip)]
    pub last_sync_at: Option<SystemTime>,
    #[serde(skip)]
    pub events: VecDeque<EventView>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Resources {
    pub total: u64,
    pub ready: u64,
    pub failed: u64,
}

/// The last health report: the numbers SPEC §4 names, and the checks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    pub ts: Option<String>,
    pub uptime_s: Option<f64>,
    pub cpu_percent: Option<f64>,
    pub mem_used_bytes: Option<f64>,
    pub mem_total_bytes: Option<f64>,
    pub disk_free_bytes: Option<f64>,
    pub load1: Option<f64>,
    pub agent_rss_bytes: Option<f64>,
    /// name → `pass`/`fail` (at most 50, cleaned).
    pub checks: BTreeMap<String, String>,
}

/// An event, as much of it as a person needs to read.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub seq: Option<u64>,
    pub ts: Option<String>,
    pub kind: String,
    /// The other fields, as clipped text.
    pub detail: String,
    /// This server's own count of events taken in (oldest first eviction).
    #[serde(skip)]
    serial: u64,
}

impl EventView {
    /// Bytes its strings hold, with its entry's keys in the eviction order
    /// (the slots themselves are counted by their deques' capacity).
    fn weight(&self, key: &(String, String)) -> usize {
        self.ts.as_ref().map_or(0, String::capacity)
            + self.kind.capacity()
            + self.detail.capacity()
            + key.0.capacity()
            + key.1.capacity()
    }
}

/// A slot of [`Fleet`]'s eviction order.
type Slot = (u64, (String, String));

impl Device {
    fn new(fleet: &str, device_id: &str) -> Device {
        Device {
            fleet: fleet.into(),
            device_id: device_id.into(),
            availability: "unknown",
            phase: "unknown".into(),
            revision: None,
            target_revision: None,
            last_good_revision: None,
            agent_version: None,
            last_sync: None,
            source: None,
            error: None,
            wave: None,
            due_at: None,
            waiting_for: None,
            resources: None,
            inventory: HostInventory::default(),
            revision_seen_at: None,
            stale: true,
            attention: true,
            problems: Vec::new(),
            seen_status: false,
            seen_availability: false,
            health: None,
            via: None,
            reported_at: None,
            last_sync_at: None,
            events: VecDeque::new(),
        }
    }

    /// The value of an inventory key (`arch`, `os`, `runtime`, `model`,
    /// `kernel`, `k3s`); `None` for another key.
    pub fn inventory_value(&self, key: &str) -> Option<Option<&str>> {
        self.inventory.fields().into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The phase as a metric label: a known phase, `unknown` or `other`.
    pub fn phase_label(&self) -> &str {
        if self.phase == "unknown" || PHASES.contains(&self.phase.as_str()) { &self.phase } else { "other" }
    }

    fn problem(&mut self, topic_kind: &str, what: String) {
        self.problems.retain(|p| !p.starts_with(&format!("{topic_kind}:")));
        self.problems.push(format!("{topic_kind}: {what}"));
    }

    fn clear_problems(&mut self, topic_kind: &str) {
        self.problems.retain(|p| !p.starts_with(&format!("{topic_kind}:")));
    }

    /// Bytes it holds but for its events (an estimate that errs high: the
    /// map entry and every string's length).
    fn weight(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        std::mem::size_of::<Device>()
            + self.inventory.fields().iter().map(|(_, v)| v.map_or(0, str::len)).sum::<usize>()
            + std::mem::size_of::<(String, String)>()
            + 2 * (self.fleet.capacity() + self.device_id.capacity())
            + self.phase.capacity()
            + [
                &self.revision,
                &self.target_revision,
                &self.last_good_revision,
                &self.agent_version,
                &self.last_sync,
                &self.source,
                &self.error,
                &self.wave,
                &self.due_at,
                &self.waiting_for,
            ]
            .into_iter()
            .map(opt)
            .sum::<usize>()
            + self.problems.iter().map(|p| p.capacity() + std::mem::size_of::<String>()).sum::<usize>()
            + self.events.capacity() * std::mem::size_of::<EventView>()
            + self.health.as_ref().map_or(0, |h| {
                std::mem::size_of::<Health>()
                    + opt(&h.ts)
                    + h.checks.iter().map(|(k, v)| k.len() + v.len() + 64).sum::<usize>()
            })
    }

    /// Whether the status came on a stick (an offline site).
    pub fn via_import(&self) -> bool {
        self.via.as_deref() == Some("import")
    }

    fn refresh(&mut self, now: SystemTime, stale_after: Duration) {
        self.stale = match self.last_sync_at {
            Some(t) => now.duration_since(t).unwrap_or_default() > stale_after,
            None => true,
        };
        // An offline site is known only from its last report: its age, its
        // unreachable source and its missing availability are what such a
        // site is; what needs attention is a revision that failed there.
        if self.via_import() && !self.seen_availability {
            self.availability = "import";
            self.stale = false;
            self.attention = !matches!(self.phase.as_str(), "synced" | "progressing" | "waiting" | "suspended")
                || !self.problems.is_empty();
            return;
        }
        self.attention = self.availability != "online"
            || self.stale
            || !matches!(self.phase.as_str(), "synced" | "progressing" | "waiting" | "suspended")
            || self.source.as_deref() != Some("ok")
            || !self.problems.is_empty();
    }
}

/// Replace control characters (C0, DEL, C1) and the bidirectional overrides
/// that can make text read differently than it is, and clip to `max`
/// characters (marked with `…`).
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max * 4));
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        let bad =
            c.is_control() || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        out.push(if bad { '\u{FFFD}' } else { c });
    }
    // Kept for as long as the view runs: no more room than it needs (the
    // guess above is four bytes a character).
    out.shrink_to_fit();
    out
}

/// What one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    Accepted,
    /// Not a topic of this fleet's layout (or a command topic): ignored.
    NotOurs,
    /// Refused, with the reason counted in [`Fleet::rejected`].
    Rejected(&'static str),
}

/// Every gateway under a topic prefix (and optionally one fleet).
#[derive(Debug)]
pub struct Fleet {
    prefix: String,
    pub stale_after: Duration,
    pub devices: BTreeMap<(String, String), Device>,
    /// Increases with every accepted message (the page's ETag).
    pub version: u64,
    /// Messages accepted, by topic kind.
    pub received: BTreeMap<&'static str, u64>,
    /// Messages refused, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// What the gateways and their events hold ([`Device::weight`],
    /// [`EventView::weight`]); with the eviction order's slots
    /// ([`Fleet::held`]) kept at most `max_bytes`.
    pub bytes: usize,
    pub max_bytes: usize,
    /// Events by age, oldest first: (serial, gateway).
    order: VecDeque<Slot>,
    serial: u64,
    /// Events dropped to stay within `max_bytes`.
    pub evicted: u64,
    /// The retained set stopped after this many messages, before its end:
    /// the broker dropped the rest ([`Counts::warning`]).
    pub cut_short: Option<usize>,
}

impl Fleet {
    pub fn new(prefix: &str, stale_after: Duration) -> Fleet {
        Fleet {
            prefix: prefix.trim_end_matches('/').to_owned(),
            stale_after,
            devices: BTreeMap::new(),
            version: 0,
            received: BTreeMap::new(),
            rejected: BTreeMap::new(),
            bytes: 0,
            max_bytes: DEFAULT_MAX_BYTES,
            order: VecDeque::new(),
            serial: 0,
            evicted: 0,
            cut_short: None,
        }
    }

    /// Everything the view holds, as far as it counts: the gateways, their
    /// events and the eviction order.
    pub fn held(&self) -> usize {
        self.bytes + self.order.capacity() * std::mem::size_of::<Slot>()
    }

    /// Drop the oldest events until the fleet fits `max_bytes` (or none is
    /// left); deques that emptied out give their room back.
    fn evict(&mut self) {
        while self.held() > self.max_bytes {
            let Some((serial, key)) = self.order.pop_front() else { break };
            let Some(d) = self.devices.get_mut(&key) else { continue };
            // Gone already if its gateway's own cap dropped it.
            if d.events.front().is_some_and(|e| e.serial == serial) {
                let before = d.weight();
                let e = d.events.pop_front().expect("checked");
                if d.events.capacity() > 2 * d.events.len() + 4 {
                    d.events.shrink_to_fit();
                }
                self.bytes = (self.bytes + d.weight()).saturating_sub(before + e.weight(&key));
                self.evicted += 1;
            }
            if self.order.capacity() > 2 * self.order.len() + 1024 {
                self.order.shrink_to_fit();
            }
        }
    }

    /// Take in one message from the broker.
    pub fn ingest(&mut self, topic: &str, payload: &[u8], now: SystemTime) -> Ingest {
        let r = self.ingest_inner(topic, payload, now);
        match r {
            Ingest::Accepted => self.version += 1,
            Ingest::Rejected(why) => *self.rejected.entry(why).or_default() += 1,
            Ingest::NotOurs => {}
        }
        r
    }

    fn ingest_inner(&mut self, topic: &str, payload: &[u8], now: SystemTime) -> Ingest {
        let Some(rest) = topic.strip_prefix(&self.prefix).and_then(|r| r.strip_prefix('/')) else {
            return Ingest::NotOurs;
        };
        let mut parts = rest.split('/');
        let (Some(fleet), Some(device), Some(kind), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ingest::NotOurs;
        };
        let kind: &'static str = match kind {
            "status" => "status",
            "availability" => "availability",
            "health" => "health",
            "events" => "events",
            _ => return Ingest::NotOurs,
        };
        if device.starts_with('_') || fleet.starts_with('_') {
            return Ingest::NotOurs; // _all, _source: commands and announcements
        }
        let odd = |id: &str| id.is_empty() || id.len() > MAX_ID || id.chars().any(|c| c.is_control());
        if odd(fleet) || odd(device) {
            return Ingest::Rejected("odd device or fleet id in the topic");
        }
        let key = (fleet.to_owned(), device.to_owned());
        if !self.devices.contains_key(&key) {
            if self.devices.len() >= MAX_DEVICES {
                return Ingest::Rejected("too many gateways");
            }
            // A retained empty message clears a topic: nothing to add.
            if payload.is_empty() {
                return Ingest::Accepted;
            }
            let new = Device::new(fleet, device);
            // Events give way to gateways; a full view of gateways alone
            // refuses more of them.
            self.bytes += new.weight();
            self.evict();
            if self.held() > self.max_bytes {
                self.bytes -= new.weight();
                return Ingest::Rejected("memory bound reached");
            }
            self.devices.insert(key.clone(), new);
        }
        let d = self.devices.get_mut(&key).expect("inserted above");
        let before = d.weight();
        *self.received.entry(kind).or_default() += 1;
        match kind {
            "status" => d.seen_status = true,
            "availability" => d.seen_availability = true,
            _ => {}
        }
        let result = if payload.len() > MAX_PAYLOAD {
            d.problem(kind, format!("{} bytes, over the {MAX_PAYLOAD}-byte limit: not read", payload.len()));
            Ingest::Rejected("message too large")
        } else {
            match kind {
                "availability" => read_availability(d, payload),
                "status" => read_status(d, payload, now),
                "health" => read_health(d, payload),
                _ => {
                    self.serial += 1;
                    let (r, bytes) = read_event(d, payload, self.serial, &key);
                    if let Some((added, dropped)) = bytes {
                        self.bytes = (self.bytes + added).saturating_sub(dropped);
                        self.order.push_back((self.serial, key.clone()));
                    }
                    r
                }
            }
        };
        let d = self.devices.get_mut(&key).expect("inserted above");
        d.refresh(now, self.stale_after);
        self.bytes = (self.bytes + d.weight()).saturating_sub(before);
        self.evict();
        result
    }

    /// Recompute what depends on the time (stale, attention).
    pub fn refresh(&mut self, now: SystemTime) {
        for d in self.devices.values_mut() {
            d.refresh(now, self.stale_after);
        }
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::of(self.devices.values());
        c.cut_short = self.cut_short.map(|n| n as u64);
        c
    }
}

fn json_object(d: &mut Device, kind: &str, payload: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => {
            d.clear_problems(kind);
            Some(m)
        }
        Ok(_) => {
            d.problem(kind, "not a JSON object".into());
            None
        }
        Err(_) if std::str::from_utf8(payload).is_err() => {
            d.problem(kind, "not UTF-8".into());
            None
        }
        Err(e) => {
            d.problem(kind, format!("not JSON ({})", clean(&e.to_string(), 80)));
            None
        }
    }
}

fn read_availability(d: &mut Device, payload: &[u8]) -> Ingest {
    let text = String::from_utf8_lossy(payload);
    d.availability = match text.trim() {
        "online" => "online",
        "offline" => "offline",
        other => {
            d.problem("availability", format!("{:?} is neither online nor offline", clean(other, 40)));
            d.availability = "unknown";
            return Ingest::Rejected("unreadable availability");
        }
    };
    d.clear_problems("availability");
    Ingest::Accepted
}

/// A string field: absent or null is `None`; another type is a problem.
fn text(m: &serde_json::Map<String, Value>, key: &str, max: usize, bad: &mut Vec<String>) -> Option<String> {
    match m.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(clean(s, max)),
        Some(_) => {
            bad.push(key.to_owned());
            None
        }
    }
}

fn read_status(d: &mut Device, payload: &[u8], now: SystemTime) -> Ingest {
    let Some(m) = json_object(d, "status", payload) else { return Ingest::Rejected("unreadable status") };
    let mut bad = Vec::new();
    let phase = text(&m, "phase", 24, &mut bad);
    let revision = text(&m, "revision", 64, &mut bad);
    if revision != d.revision {
        d.revision_seen_at =
            revision.as_ref().map(|_| now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |t| t.as_secs()));
    }
    d.phase = phase.unwrap_or_else(|| "unknown".into());
    d.revision = revision;
    d.target_revision = text(&m, "target_revision", 64, &mut bad);
    d.last_good_revision = text(&m, "last_good_revision", 64, &mut bad);
    d.agent_version = text(&m, "agent_version", 40, &mut bad);
    d.source = text(&m, "source", 24, &mut bad);
    d.error = text(&m, "error", MAX_TEXT, &mut bad);
    d.wave = match m.get("wave") {
        Some(Value::Number(n)) => Some(clean(&n.to_string(), 24)),
        _ => text(&m, "wave", 40, &mut bad),
    };
    d.due_at = text(&m, "due_at", 40, &mut bad);
    d.waiting_for = text(&m, "waiting_for", 40, &mut bad);
    d.via = text(&m, "via", 16, &mut bad);
    d.reported_at = text(&m, "reported_at", 40, &mut bad);
    d.last_sync = text(&m, "last_sync", 40, &mut bad);
    d.last_sync_at = d.last_sync.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok());
    if d.last_sync.is_some() && d.last_sync_at.is_none() {
        bad.push("last_sync".into());
    }
    d.inventory = match m.get("inventory") {
        None | Some(Value::Null) => HostInventory::default(),
        Some(Value::Object(i)) => {
            let mut t = |k: &str| {
                let mut b = Vec::new();
                let v = text(i, k, crate::inventory::MAX, &mut b);
                bad.extend(b.into_iter().map(|k| format!("inventory.{k}")));
                v
            };
            HostInventory {
                os: t("os"),
                kernel: t("kernel"),
                arch: t("arch"),
                model: t("model"),
                runtime: t("runtime"),
                k3s: t("k3s"),
            }
        }
        Some(_) => {
            bad.push("inventory".into());
            HostInventory::default()
        }
    };
    d.resources = match m.get("resources") {
        None | Some(Value::Null) => None,
        Some(Value::Object(r)) => {
            let n = |k: &str| r.get(k).and_then(Value::as_u64);
            match (n("total"), n("ready"), n("failed")) {
                (Some(total), Some(ready), Some(failed)) => Some(Resources { total, ready, failed }),
                _ => {
                    bad.push("resources".into());
                    None
                }
            }
        }
        Some(_) => {
            bad.push("resources".into());
            None
        }
    };
    if bad.is_empty() {
        d.clear_problems("status");
        Ingest::Accepted
    } else {
        d.problem("status", format!("unreadable field(s): {}", bad.join(", ")));
        Ingest::Accepted
    }
}

fn read_health(d: &mut Device, payload: &[u8]) -> Ingest {
    let Some(m) = json_object(d, "health", payload) else { return Ingest::Rejected("unreadable health") };
    let num = |k: &str| m.get(k).and_then(Value::as_f64).filter(|x| x.is_finite());
    let mut bad = Vec::new();
    let mut h = Health {
        ts: text(&m, "ts", 40, &mut bad),
        uptime_s: num("uptime_s"),
        cpu_percent: num("cpu_percent"),
        mem_used_bytes: num("mem_used_bytes"),
        mem_total_bytes: num("mem_total_bytes"),
        disk_free_bytes: num("disk_free_bytes"),
        load1: num("load1"),
        agent_rss_bytes: num("agent_rss_bytes"),
        checks: BTreeMap::new(),
    };
    if let Some(Value::Object(checks)) = m.get("checks") {
        for (k, v) in checks.iter().take(50) {
            let v = v.as_str().map_or_else(|| "?".to_owned(), |s| clean(s, 16));
            h.checks.insert(clean(k, 60), v);
        }
    }
    d.health = Some(h);
    Ingest::Accepted
}

/// Read an event; with the bytes of the one added and of the one its
/// gateway's cap dropped (0 if none).
fn read_event(d: &mut Device, payload: &[u8], serial: u64, key: &(String, String)) -> (Ingest, Option<(usize, usize)>) {
    let Some(mut m) = json_object(d, "events", payload) else { return (Ingest::Rejected("unreadable event"), None) };
    let mut bad = Vec::new();
    let kind = text(&m, "kind", 32, &mut bad).unwrap_or_else(|| "?".into());
    let ts = text(&m, "ts", 40, &mut bad);
    let seq = m.get("seq").and_then(Value::as_u64);
    for k in ["kind", "ts", "seq", "device_id", "fleet"] {
        m.remove(k);
    }
    let detail = clean(&Value::Object(m).to_string(), MAX_TEXT);
    let dropped = if d.events.len() >= EVENTS_KEPT { d.events.pop_front().map_or(0, |e| e.weight(key)) } else { 0 };
    let e = EventView { seq, ts, kind, detail, serial };
    let added = e.weight(key);
    d.events.push_back(e);
    (Ingest::Accepted, Some((added, dropped)))
}

/// Counts first: what an operator reads before any row.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub gateways: u64,
    pub online: u64,
    pub offline: u64,
    /// No or unreadable availability message.
    pub availability_unknown: u64,
    pub stale: u64,
    pub attention: u64,
    /// Every phase of [`PHASES`] (zero included), `unknown` and `other`.
    pub by_phase: BTreeMap<String, u64>,
    /// The most common revisions first (at most [`TOP_REVISIONS`]; `none` for
    /// gateways with no revision).
    pub by_revision: Vec<(String, u64)>,
    /// Gateways on the revisions not listed.
    pub other_revisions: u64,
    /// Gateways by each of [`INVENTORY_KEYS`]: the most common values
    /// ([`TOP_INVENTORY`], `none` for gateways that did not say), the rest
    /// summed as `other`.
    pub by_inventory: BTreeMap<&'static str, Tally>,
    /// Gateways by rollout wave (SPEC §7; `none` outside any), and within
    /// each by phase: the [`TOP_WAVES`] largest waves, the rest as `other`.
    #[serde(skip)]
    pub by_wave: Vec<(String, BTreeMap<&'static str, u64>)>,
    /// Gateways known by their availability but with no status message, and
    /// by their status but with no availability. A tend gateway publishes
    /// both, retained, at every connection: either count above zero means
    /// retained messages were lost between the broker and this reader (or a
    /// gateway's were cleared by hand). See [`Counts::warning`].
    pub missing_status: u64,
    pub missing_availability: u64,
    /// Gateways known only from a report brought back on a stick (SPEC §9).
    pub via_import: u64,
    /// The broker stopped sending the retained set after this many
    /// messages, before its end (`null`: the whole set came).
    pub cut_short: Option<u64>,
}

impl Counts {
    pub fn of<'a>(devices: impl Iterator<Item = &'a Device>) -> Counts {
        let mut c = Counts::default();
        for p in PHASES.iter().chain(&["unknown", "other"]) {
            c.by_phase.insert((*p).to_owned(), 0);
        }
        let devices: Vec<&Device> = devices.collect();
        let mut revs: BTreeMap<&str, u64> = BTreeMap::new();
        let mut waves: BTreeMap<&str, BTreeMap<&'static str, u64>> = BTreeMap::new();
        for &d in &devices {
            c.gateways += 1;
            match d.availability {
                "online" => c.online += 1,
                "offline" => c.offline += 1,
                "import" => {}
                _ => c.availability_unknown += 1,
            }
            c.stale += u64::from(d.stale);
            c.attention += u64::from(d.attention);
            c.missing_status += u64::from(d.seen_availability && !d.seen_status);
            // A site without network has no availability, only its report.
            c.via_import += u64::from(d.via_import() && !d.seen_availability);
            c.missing_availability += u64::from(d.seen_status && !d.seen_availability && !d.via_import());
            *c.by_phase.entry(d.phase_label().to_owned()).or_default() += 1;
            *revs.entry(d.revision.as_deref().unwrap_or("none")).or_default() += 1;
            let phase = PHASES.iter().chain(&["unknown"]).find(|p| **p == d.phase_label()).copied().unwrap_or("other");
            *waves.entry(d.wave.as_deref().unwrap_or("none")).or_default().entry(phase).or_default() += 1;
        }
        // The largest waves by name; the rest, phase by phase, as `other`.
        let sizes: BTreeMap<&str, u64> = waves.iter().map(|(w, p)| (*w, p.values().sum())).collect();
        let top = Tally::top(sizes, TOP_WAVES);
        let mut other: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (w, phases) in waves {
            if top.values.iter().any(|(t, _)| t == w) {
                c.by_wave.push((w.to_owned(), phases));
            } else {
                for (p, n) in phases {
                    *other.entry(p).or_default() += n;
                }
            }
        }
        if !other.is_empty() {
            c.by_wave.push(("other".to_owned(), other));
        }
        let revs = Tally::top(revs, TOP_REVISIONS);
        (c.by_revision, c.other_revisions) = (revs.values, revs.other);
        c.by_inventory =
            INVENTORY_KEYS.into_iter().map(|k| (k, Tally::of(devices.iter().copied(), k, TOP_INVENTORY))).collect();
        c
    }
}

/// Gateways by value: the most common first (by value within a count), at
/// most a given number, and how many have the values left out.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Tally {
    pub values: Vec<(String, u64)>,
    pub other: u64,
}

impl Tally {
    pub fn top(counts: BTreeMap<&str, u64>, n: usize) -> Tally {
        let mut values: Vec<(String, u64)> = counts.into_iter().map(|(v, n)| (v.to_owned(), n)).collect();
        values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let other = values.iter().skip(n).map(|r| r.1).sum();
        values.truncate(n);
        Tally { values, other }
    }

    /// Gateways by the inventory key `key` (one of [`INVENTORY_KEYS`] or
    /// `kernel`, `k3s`), the `n` most common values.
    pub fn of<'a>(devices: impl Iterator<Item = &'a Device>, key: &str, n: usize) -> Tally {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for d in devices {
            *counts.entry(d.inventory_value(key).flatten().unwrap_or("none")).or_default() += 1;
        }
        Tally::top(counts, n)
    }
}

impl Counts {
    /// What an operator must know before trusting the counts: gateways the
    /// broker told of by one topic only, and the likely cause. `None` when
    /// every gateway came with both.
    pub fn warning(&self) -> Option<String> {
        if let Some(n) = self.cut_short {
            return Some(format!(
                "incomplete: the broker stopped sending the retained set after {n} messages, before its end, and {} \
                 gateway(s) came without their status and {} without their availability: it dropped the rest. A \
                 broker drops what a reader leaves in its per-client queue (Mosquitto: past max_queued_messages, 1000 \
                 by default, QoS 0 included); for a fleet this size set it to 0 or above twice the number of gateways",
                self.missing_status, self.missing_availability
            ));
        }
        if self.missing_status == 0 && self.missing_availability == 0 {
            return None;
        }
        Some(format!(
            "incomplete: {} gateway(s) came without their status and {} without their availability (counted as unknown). \
             The broker dropped retained messages on the way to this reader: a broker's per-client queue limits \
             (Mosquitto's max_queued_messages, default 1000, and max_inflight_messages, 20, for QoS 1) or its \
             message_size_limit; tend reads the retained set at QoS 0, so check the broker's limits and logs",
            self.missing_status, self.missing_availability
        ))
    }
}

/// The first 12 characters of a revision, by characters (never splits one).
pub fn short_rev(r: &str) -> String {
    r.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        Fleet::new("tend/v1/", Duration::from_secs(900))
    }

    fn status(phase: &str, rev: &str) -> Vec<u8> {
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        format!(
            r#"{{"device_id":"x","fleet":"acme","phase":"{phase}","revision":"{rev}","source":"ok","last_sync":"{now}","error":null,"resources":{{"total":3,"ready":3,"failed":0}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn an_honest_gateway_is_read_in_full() {
        let mut f = fleet();
        let now = SystemTime::now();
        assert_eq!(f.ingest("tend/v1/acme/gw-1/availability", b"online", now), Ingest::Accepted);
        assert_eq!(f.ingest("tend/v1/acme/gw-1/status", &status("synced", "3f2a9c01b7e4aa"), now), Ingest::Accepted);
        let d = &f.devices[&("acme".into(), "gw-1".into())];
        assert_eq!(d.phase, "synced");
        assert_eq!(d.revision.as_deref(), Some("3f2a9c01b7e4aa"));
        assert_eq!(d.resources, Some(Resources { total: 3, ready: 3, failed: 0 }));
        assert!(!d.stale && !d.attention, "{d:?}");
        let c = f.counts();
        assert_eq!((c.gateways, c.online, c.attention), (1, 1, 0));
        assert_eq!(c.by_phase["synced"], 1);
        assert_eq!(c.by_revision, vec![("3f2a9c01b7e4aa".to_owned(), 1)]);
    }

    #[test]
    fn hostile_messages_are_marked_never_trusted() {
        let mut f = fleet();
        let now = SystemTime::now();
        let cases: &[(&str, &[u8])] = &[
            ("tend/v1/acme/a/status", b"\xff\xfe not utf-8"),
            ("tend/v1/acme/b/status", b"[1,2,3]"),
            ("tend/v1/acme/c/status", br#"{"phase":7,"revision":{"x":1},"resources":"all"}"#),
            ("tend/v1/acme/d/status", "{\"phase\":\"synced\",\"revision\":\"é€😀\\u001b[2J\"}".as_bytes()),
            ("tend/v1/acme/e/availability", b"\x1b]0;pwned\x07"),
        ];
        for (t, p) in cases {
            f.ingest(t, p, now);
        }
        let get = |d: &str| &f.devices[&("acme".to_owned(), d.to_owned())];
        assert_eq!(get("a").problems, vec!["status: not UTF-8"]);
        assert_eq!(get("b").problems, vec!["status: not a JSON object"]);
        assert!(get("c").problems[0].contains("phase, revision, resources"), "{:?}", get("c").problems);
        assert_eq!(get("c").phase, "unknown");
        assert_eq!(get("d").revision.as_deref(), Some("é€😀\u{FFFD}[2J"));
        assert_eq!(short_rev("é€😀é€😀é€😀é€😀é€😀"), "é€😀é€😀é€😀é€😀");
        assert_eq!(get("e").availability, "unknown");
        assert!(!get("e").problems[0].contains('\u{1b}'));
        assert!(f.devices.values().all(|d| d.attention));
        // Oversized, odd ids, command topics.
        let big = vec![b'x'; MAX_PAYLOAD + 1];
        assert_eq!(f.ingest("tend/v1/acme/f/status", &big, now), Ingest::Rejected("message too large"));
        let long = format!("tend/v1/acme/{}/status", "g".repeat(MAX_ID + 1));
        assert!(matches!(f.ingest(&long, b"{}", now), Ingest::Rejected(_)));
        assert!(matches!(f.ingest("tend/v1/acme/a\u{7}b/status", b"{}", now), Ingest::Rejected(_)));
        assert_eq!(f.ingest("tend/v1/acme/_all/cmd", b"{}", now), Ingest::NotOurs);
        assert_eq!(f.ingest("tend/v1/acme/x/status/extra", b"{}", now), Ingest::NotOurs);
        assert_eq!(f.ingest("other/acme/x/status", b"{}", now), Ingest::NotOurs);
        // Unknown phases count as other.
        f.ingest("tend/v1/acme/h/status", &status("dancing", "r"), now);
        assert_eq!(f.counts().by_phase["other"], 1);
    }

    #[test]
    fn inventory_strings_are_clipped_and_wrong_types_marked() {
        let mut f = fleet();
        let now = SystemTime::now();
        let long = serde_json::json!({ "inventory": { "os": "é".repeat(5000), "arch": 7, "model": "a\u{1b}[2Jb", "k3s": null } });
        f.ingest("tend/v1/acme/a/status", long.to_string().as_bytes(), now);
        f.ingest("tend/v1/acme/b/status", br#"{"inventory":["aarch64"]}"#, now);
        let get = |d: &str| &f.devices[&("acme".to_owned(), d.to_owned())];
        let a = &get("a").inventory;
        assert_eq!(a.os.as_ref().map(|s| s.chars().count()), Some(crate::inventory::MAX + 1), "clipped, with its …");
        assert_eq!((a.arch.as_deref(), a.model.as_deref()), (None, Some("a\u{FFFD}[2Jb")));
        assert_eq!(get("a").problems, vec!["status: unreadable field(s): inventory.arch"]);
        assert_eq!(get("b").problems, vec!["status: unreadable field(s): inventory"]);
    }

    #[test]
    fn memory_is_bounded_in_bytes_oldest_events_first() {
        let mut f = fleet();
        f.max_bytes = 2 << 20;
        let now = SystemTime::now();
        // Large distinct events from many gateways: a publisher's flood.
        for i in 0..20_000u64 {
            let e = format!(r#"{{"seq":{i},"kind":"x","ts":"t","pad":"{}"}}"#, "é".repeat(200 + (i % 7) as usize));
            f.ingest(&format!("tend/v1/acme/gw-{}/events", i % 500), e.as_bytes(), now);
            assert!(f.held() <= f.max_bytes, "{} > {} after {i}", f.held(), f.max_bytes);
        }
        assert!(f.evicted > 0);
        assert_eq!(f.devices.len(), 500);
        // The newest events are kept, the oldest gone.
        let kept: usize = f.devices.values().map(|d| d.events.len()).sum();
        assert!(kept > 1000, "{kept}");
        let newest = f.devices.values().flat_map(|d| d.events.iter()).filter_map(|e| e.seq).max();
        assert_eq!(newest, Some(19_999));
        let oldest = f.devices.values().flat_map(|d| d.events.iter()).filter_map(|e| e.seq).min().unwrap();
        assert!(oldest > 10_000, "{oldest}");
        // The accounting matches what is held.
        let held: usize =
            f.devices.iter().map(|(k, d)| d.weight() + d.events.iter().map(|e| e.weight(k)).sum::<usize>()).sum();
        assert_eq!(f.bytes, held);
        // Gateways alone past the bound: new ones are refused, none evicted.
        let mut f = fleet();
        f.max_bytes = 1 << 20;
        let mut refused = 0;
        for i in 0..100_000 {
            if f.ingest(&format!("tend/v1/acme/gw-{i}/availability"), b"online", now) != Ingest::Accepted {
                refused += 1;
            }
        }
        assert!(refused > 0 && f.held() <= f.max_bytes, "{refused} {}", f.held());
        assert_eq!(f.rejected["memory bound reached"], refused);
    }

    #[test]
    fn events_are_bounded_per_gateway() {
        let mut f = fleet();
        let now = SystemTime::now();
        for i in 0..250 {
            let e = format!(r#"{{"seq":{i},"kind":"drift_repaired","ts":"2026-01-01T00:00:00Z","files":["/etc/x"]}}"#);
            f.ingest("tend/v1/acme/gw/events", e.as_bytes(), now);
        }
        let d = &f.devices[&("acme".into(), "gw".into())];
        assert_eq!(d.events.len(), EVENTS_KEPT);
        assert_eq!(d.events.front().unwrap().seq, Some(150));
        assert_eq!(d.events.back().unwrap().detail, r#"{"files":["/etc/x"]}"#);
    }

    #[test]
    fn clean_clips_by_characters_and_strips_controls() {
        assert_eq!(clean("ab\u{1b}c\u{202e}d", 10), "ab\u{FFFD}c\u{FFFD}d");
        assert_eq!(clean("äöüß", 2), "äö…");
        assert_eq!(clean("\u{9b}31m", 10), "\u{FFFD}31m");
    }
}
