//! `tend fleet serve`: the fleet view, its JSON API and Prometheus metrics,
//! served from memory on a local address. Read-only (GET and HEAD), every
//! asset embedded (it works on an air-gapped network); one POST, which
//! changes nothing either: `/api/devices/{id}/logs` asks a gateway for its
//! logs (SPEC §4), one at a time and rate-limited, only with the header
//! `X-Tend: logs` (which a page of another site cannot send without a
//! preflight this server never grants).
//! A small HTTP/1.1 server of its own (one request per connection) rather
//! than a framework: see docs/decisions/0004-fleet-serve.md.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::broker::Live;
use super::model::{Device, Fleet};

const PAGE: &str = include_str!("page.html");
/// A request head larger than this is refused.
const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

/// Serve until the process ends.
pub async fn serve(listener: TcpListener, live: Arc<Live>) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Time-based fields (stale, attention) change without any message.
    let ticker = live.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            ticker.fleet.lock().unwrap_or_else(|e| e.into_inner()).refresh(SystemTime::now());
            // What evicted events and answered requests freed goes back to
            // the system: the view's memory follows --max-memory.
            tend_sys::release_free_memory();
        }
    });
    loop {
        let (stream, peer) = listener.accept().await?;
        let Ok(permit) = slots.clone().acquire_owned().await else { return Ok(()) };
        let live = live.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(30), connection(stream, &live)).await {
                tracing::debug!(%peer, error = %e, "connection timed out");
            }
            drop(permit);
        });
    }
}

/// Bind the address; a clear error if it is taken or not an address.
pub async fn bind(addr: &str) -> Result<TcpListener, String> {
    let parsed: SocketAddr = addr.parse().map_err(|_| format!("--listen {addr:?}: not an IP address and port"))?;
    TcpListener::bind(parsed).await.map_err(|e| format!("--listen {addr}: {e}"))
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    etag: Option<String>,
}

impl Response {
    fn new(status: &'static str, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type, body: body.into(), etag: None }
    }

    fn json(status: &'static str, v: &Value) -> Response {
        Response::new(status, "application/json", serde_json::to_vec(v).unwrap_or_default())
    }

    fn error(status: &'static str, msg: &str) -> Response {
        Response::json(status, &json!({ "error": msg }))
    }
}

async fn connection(mut stream: TcpStream, live: &Live) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return write(
                &mut stream,
                Response::error("431 Request Header Fields Too Large", "request head too large"),
                false,
            )
            .await;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let request = lines.next().unwrap_or("");
    let mut parts = request.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let headers: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).collect();
    let header = |name: &str| {
        headers.iter().find(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned())
    };
    let if_none_match = header("if-none-match");
    let head_only = method == "HEAD";
    let logs_of = target.split('?').next().and_then(|p| p.strip_prefix("/api/devices/")?.strip_suffix("/logs"));
    let response = if let ("POST", Some(id)) = (method, logs_of) {
        if header("x-tend").as_deref() != Some("logs") {
            Response::error("403 Forbidden", "a logs request needs the header X-Tend: logs")
        } else {
            ask_logs(live, &percent_decode(id), target.split_once('?').map_or("", |(_, q)| q)).await
        }
    } else if method != "GET" && !head_only {
        Response::error("405 Method Not Allowed", "read-only: GET and HEAD only (and POST /api/devices/{id}/logs)")
    } else {
        route(target, if_none_match.as_deref(), live)
    };
    write(&mut stream, response, head_only).await
}

async fn write(stream: &mut TcpStream, r: Response, head_only: bool) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-cache\r\nx-content-type-options: nosniff\r\ncontent-security-policy: default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self' data:\r\nconnection: close\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    if let Some(tag) = &r.etag {
        let _ = write!(head, "etag: {tag}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(&r.body).await?;
    }
    stream.shutdown().await
}

fn route(target: &str, if_none_match: Option<&str>, live: &Live) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let now = SystemTime::now();
    match path {
        "/" | "/index.html" => Response::new("200 OK", "text/html; charset=utf-8", PAGE),
        "/metrics" => {
            let f = live.fleet.lock().unwrap_or_else(|e| e.into_inner());
            let body = super::metrics::render(&f, live.connected.load(Ordering::Relaxed), live.device_metrics);
            Response::new("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        "/api/devices" => {
            let q = match Query::parse(query) {
                Ok(q) => q,
                Err(e) => return Response::error("400 Bad Request", &e),
            };
            let f = live.fleet.lock().unwrap_or_else(|e| e.into_inner());
            // The time is in the tag too: stale and attention change with it;
            // and the query: another filter is another answer.
            let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let connected = live.connected.load(Ordering::Relaxed);
            let qh = crate::hash::ContentHash::of(query.as_bytes()).short();
            let tag = format!("\"{}-{}-{}-{qh}\"", f.version, secs / 5, u8::from(connected));
            if if_none_match == Some(tag.as_str()) {
                let mut r = Response::new("304 Not Modified", "application/json", Vec::new());
                r.etag = Some(tag);
                return r;
            }
            let mut r = Response::json("200 OK", &devices_json(&f, connected, &q, now));
            r.etag = Some(tag);
            r
        }
        "/healthz" => Response::new("200 OK", "text/plain", "ok\n"),
        _ => match path.strip_prefix("/api/devices/") {
            Some(id) => device(live, &percent_decode(id), query),
            None => Response::error("404 Not Found", "no such page: try /, /api/devices or /metrics"),
        },
    }
}

/// Rows answered by `/api/devices` unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 5000;

/// The inventory keys `/api/devices` filters by.
const INVENTORY_FILTERS: [&str; 6] = ["arch", "os", "runtime", "model", "kernel", "k3s"];

/// What `/api/devices` is asked: a filter, an order and a page. The fleet
/// is filtered and sorted here, so a page of a fleet of 100,000 never
/// downloads 100,000 rows.
#[derive(Debug, Default, PartialEq)]
struct Query {
    /// Words that must all appear in a gateway's fields (case-insensitive).
    words: Vec<String>,
    /// Only these phases (`phase=failed,rolled_back`).
    phases: Vec<String>,
    /// `online=1`: only online; `online=0`: only not online.
    online: Option<bool>,
    stale: bool,
    attention: bool,
    /// Inventory values that must match exactly (`arch=aarch64`; `none`:
    /// the gateway did not say).
    inventory: Vec<(String, String)>,
    sort: String,
    desc: bool,
    offset: usize,
    limit: usize,
}

impl Query {
    fn parse(query: &str) -> Result<Query, String> {
        let mut q = Query { sort: "attention".into(), limit: DEFAULT_LIMIT, ..Query::default() };
        for (k, v) in query.split('&').filter(|kv| !kv.is_empty()).map(|kv| kv.split_once('=').unwrap_or((kv, ""))) {
            let v = percent_decode(&v.replace('+', " "));
            let number = |v: &str| v.parse::<usize>().map_err(|_| format!("{k}: {v:?} is not a number"));
            match k {
                "q" => {
                    q.words = v
                        .split_whitespace()
                        .take(16)
                        .map(|w| w.chars().take(100).collect::<String>().to_lowercase())
                        .collect()
                }
                "phase" => q.phases = v.split(',').filter(|p| !p.is_empty()).take(16).map(str::to_owned).collect(),
                "online" => q.online = Some(v == "1"),
                "stale" => q.stale = v == "1",
                "attention" => q.attention = v == "1",
                "sort" => q.sort = v.chars().take(20).collect(),
                "desc" => q.desc = v == "1",
                "offset" => q.offset = number(&v)?,
                "limit" => q.limit = number(&v)?.min(MAX_LIMIT),
                _ if INVENTORY_FILTERS.contains(&k) && q.inventory.len() < INVENTORY_FILTERS.len() => {
                    q.inventory.push((k.to_owned(), v.chars().take(crate::inventory::MAX + 1).collect()))
                }
                _ => {}
            }
        }
        Ok(q)
    }

    fn matches(&self, d: &Device) -> bool {
        if (self.attention && !d.attention)
            || (self.stale && !d.stale)
            || self.online.is_some_and(|on| on != (d.availability == "online"))
            || (!self.phases.is_empty() && !self.phases.contains(&d.phase))
            || self.inventory.iter().any(|(k, v)| d.inventory_value(k).flatten().unwrap_or("none") != v)
        {
            return false;
        }
        if self.words.is_empty() {
            return true;
        }
        let fields = [
            Some(d.fleet.as_str()),
            Some(d.device_id.as_str()),
            Some(d.phase.as_str()),
            Some(d.availability),
            d.revision.as_deref(),
            d.target_revision.as_deref(),
            d.source.as_deref(),
            d.error.as_deref(),
            d.wave.as_deref(),
            d.agent_version.as_deref(),
        ];
        let hay = fields
            .into_iter()
            .chain(d.inventory.fields().map(|(_, v)| v))
            .flatten()
            .chain(d.problems.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        self.words.iter().all(|w| hay.contains(w.as_str()))
    }
}

/// The key a column sorts by, as the page shows it.
fn sort_key(d: &Device, key: &str) -> (u8, i64, String) {
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let id = || format!("{}/{}", d.fleet, d.device_id);
    match key {
        "online" => (0, 0, d.availability.to_owned()),
        "phase" => (0, 0, d.phase.clone()),
        "revision" => (0, 0, d.revision.clone().unwrap_or_default()),
        // How long on the revision: the longest first.
        "age" => (u8::from(d.revision_seen_at.is_none()), d.revision_seen_at.map_or(0, |t| t as i64), id()),
        "wave" => (0, 0, d.wave.clone().unwrap_or_default()),
        // The most recent sync first; never synced last.
        "last_sync" => (u8::from(d.last_sync_at.is_none()), -d.last_sync_at.map_or(0, secs), id()),
        "source" => (0, 0, d.source.clone().unwrap_or_default()),
        "error" => (0, 0, d.error.clone().or_else(|| d.problems.first().cloned()).unwrap_or_default()),
        "device" => (0, 0, id()),
        // What needs attention first, then by name.
        _ => (u8::from(!d.attention), 0, id()),
    }
}

fn devices_json(f: &Fleet, connected: bool, q: &Query, now: SystemTime) -> Value {
    let mut matched: Vec<&Device> = f.devices.values().filter(|d| q.matches(d)).collect();
    matched.sort_by_cached_key(|d| sort_key(d, &q.sort));
    if q.desc {
        matched.reverse();
    }
    let total = matched.len();
    let page: Vec<&Device> = matched.into_iter().skip(q.offset).take(q.limit).collect();
    json!({
        "generated_at": humantime::format_rfc3339_seconds(now).to_string(),
        "broker_connected": connected,
        "stale_after_s": f.stale_after.as_secs(),
        "counts": f.counts(),
        "total": f.devices.len(),
        "matched": total,
        "offset": q.offset,
        "limit": q.limit,
        "devices": page,
    })
}

/// `/api/devices/{device_id}` (`?fleet=F` when the id is in more than one
/// fleet): the device with its recent events and last health.
fn device(live: &Live, id: &str, query: &str) -> Response {
    let f = live.fleet.lock().unwrap_or_else(|e| e.into_inner());
    match one_device(&f, id, param(query, "fleet").as_deref()) {
        Ok(d) => {
            let mut v = serde_json::to_value(d).unwrap_or(Value::Null);
            v["events"] = serde_json::to_value(d.events.iter().rev().collect::<Vec<_>>()).unwrap_or(Value::Null);
            Response::json("200 OK", &v)
        }
        Err(r) => r,
    }
}

/// The gateway `id` (of `fleet`, when given), or the answer saying why not.
fn one_device<'a>(f: &'a Fleet, id: &str, fleet: Option<&str>) -> Result<&'a Device, Response> {
    let found: Vec<&Device> =
        f.devices.values().filter(|d| d.device_id == id && fleet.is_none_or(|fl| d.fleet == fl)).collect();
    match found[..] {
        [] => Err(Response::error("404 Not Found", "no such gateway")),
        [d] => Ok(d),
        _ => Err(Response::error("409 Conflict", "this id is in more than one fleet: add ?fleet=NAME")),
    }
}

/// The query parameter `key`, decoded (`+` a space); `None` when absent or empty.
fn param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(&v.replace('+', " ")))
        .filter(|v| !v.is_empty())
}

/// How long the view waits for a gateway's logs (within the 30 s a
/// connection is served).
const LOGS_WAIT: Duration = Duration::from_secs(20);

/// `POST /api/devices/{device_id}/logs?unit=U&since=D&lines=N` (`&fleet=F`
/// when the id is in more than one fleet): the gateway's answer, refused or
/// not (`ok`), or why there is none. Only gateways the view knows are asked.
async fn ask_logs(live: &Live, id: &str, query: &str) -> Response {
    let Some(asker) = &live.logs else {
        return Response::error("503 Service Unavailable", "this view does not ask gateways for logs");
    };
    let param = |k: &str| param(query, k);
    let fleet = {
        let f = live.fleet.lock().unwrap_or_else(|e| e.into_inner());
        match one_device(&f, id, param("fleet").as_deref()) {
            Ok(d) => d.fleet.clone(),
            Err(r) => return r,
        }
    };
    let lines = match param("lines").map(|l| l.parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Response::error("400 Bad Request", "lines: not a whole number"),
    };
    let request =
        match super::broker::logs_request(&fleet, id, param("unit").as_deref(), param("since").as_deref(), lines) {
            Ok(r) => r,
            Err(e) => return Response::error("400 Bad Request", &e),
        };
    let Ok(_one) = asker.one.try_acquire() else {
        return Response::error("429 Too Many Requests", "busy: the view is asking a gateway for logs already");
    };
    if let Err(wait) = asker.bucket.lock().unwrap_or_else(|e| e.into_inner()).take(std::time::Instant::now()) {
        return Response::error(
            "429 Too Many Requests",
            &crate::report::logs::over_limit(wait).replace("this gateway", "the view"),
        );
    }
    match super::broker::logs(&asker.settings, &asker.prefix, &fleet, id, request, LOGS_WAIT).await {
        Ok(answer) => Response::json("200 OK", &answer),
        Err(e) => Response::error("504 Gateway Timeout", &e),
    }
}

/// `%XX` decoded; invalid sequences are kept as they are, invalid UTF-8
/// replaced.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_filter_by_inventory() {
        let mut f = Fleet::new("tend/v1", Duration::from_secs(60));
        let now = SystemTime::now();
        let arm = r#"{"phase":"synced","inventory":{"arch":"aarch64","os":"Debian GNU/Linux 12 (bookworm)","model":"linux,dummy-virt"}}"#;
        let x86 =
            r#"{"phase":"synced","inventory":{"arch":"x86_64","os":"Ubuntu 24.04 LTS","runtime":"docker 24.0.7"}}"#;
        f.ingest("tend/v1/acme/arm/status", arm.as_bytes(), now);
        f.ingest("tend/v1/acme/pc/status", x86.as_bytes(), now);
        f.ingest("tend/v1/acme/old/status", br#"{"phase":"synced"}"#, now);
        let ids = |query: &str| -> Vec<String> {
            let q = Query::parse(query).unwrap();
            let v = devices_json(&f, true, &q, now);
            v["devices"].as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(ids("arch=aarch64"), ["arm"]);
        assert_eq!(ids("os=Ubuntu%2024.04%20LTS"), ["pc"]);
        assert_eq!(ids("os=Ubuntu+24.04+LTS&runtime=docker+24.0.7"), ["pc"]);
        assert_eq!(ids("os=Ubuntu+24.04+LTS&arch=aarch64"), Vec::<String>::new());
        assert_eq!(ids("model=none&sort=device"), ["old", "pc"]);
        assert_eq!(ids("arch=aarch"), Vec::<String>::new(), "exact, not a substring");
        assert_eq!(ids("q=bookworm"), ["arm"], "the search box finds inventory words");
    }

    #[test]
    fn percent_decoding_never_panics() {
        assert_eq!(percent_decode("gw%2D01"), "gw-01");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%e"), "%e");
        assert_eq!(percent_decode("%zz%C3%A9"), "%zzé");
        assert_eq!(percent_decode("a%ff"), "a\u{FFFD}");
        assert_eq!(percent_decode("é%"), "é%");
        assert_eq!(percent_decode("%aé%é"), "%aé%é");
    }
}
