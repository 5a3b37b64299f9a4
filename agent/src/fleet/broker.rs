//! Reading the fleet from the broker and sending it commands.

#[cfg(feature = "fleet-serve")]
use std::sync::{Arc, Mutex};
use std::time::Duration;
#[cfg(feature = "fleet-serve")]
use std::time::SystemTime;

use rumqttc::{AsyncClient, Event, Incoming, Outgoing, QoS};
use serde_json::json;

#[cfg(feature = "fleet-serve")]
use super::model::Fleet;
use crate::report::mqtt::Settings;

#[cfg(feature = "fleet-serve")]
/// The largest message read from the broker without dropping the connection
/// (larger ones end the session: cap the broker's `message_size_limit`
/// below it). Messages over [`super::model::MAX_PAYLOAD`] are read, not parsed.
const READ_LIMIT: usize = 8 << 20;

fn client_id(what: &str) -> String {
    format!("tend-fleet-{what}-{:08x}", fastrand::u32(..))
}

#[cfg(feature = "fleet-serve")]
/// The subscriptions of a fleet reader: every gateway's retained status and
/// availability, and with `live` its health and events.
///
/// The retained set is read at QoS 0. At subscription the broker sends every
/// retained message at once, a burst of two per gateway; at QoS 1 a broker
/// with its default limits drops what does not fit its per-client queue
/// (Mosquitto: 20 in flight, 1,000 queued), and a fleet of 10,000 came out
/// as 940 gateways. QoS 0 messages to a connected client are not queue-limited
/// that way, and a retained message lost on the way is re-read at the next
/// subscription. Events are not retained: they keep QoS 1.
fn filters(prefix: &str, fleet: Option<&str>, live: bool) -> Vec<(String, QoS)> {
    let prefix = prefix.trim_end_matches('/');
    let f = fleet.unwrap_or("+");
    let kinds: &[&str] =
        if live { &["status", "availability", "health", "events"] } else { &["status", "availability"] };
    kinds
        .iter()
        .map(|k| (format!("{prefix}/{f}/+/{k}"), if *k == "events" { QoS::AtLeastOnce } else { QoS::AtMostOnce }))
        .collect()
}

#[cfg(feature = "fleet-serve")]
/// Read every retained status and availability once. The broker sends
/// retained messages right after a subscription; the end is a probe message
/// this client publishes to itself after its subscriptions are acknowledged
/// (the broker queues it after them), or 400 ms of quiet if the broker's ACL
/// drops the probe.
///
/// What arrives is kept and read after the burst: the socket is drained as
/// fast as rumqttc parses, because a broker drops what a slow reader leaves
/// in its queue (Mosquitto: past `max_queued_messages` packets, QoS 0 too),
/// and then the end never comes either. When messages stop and the end does
/// not come, the snapshot says so ([`Fleet::cut_short`]) instead of failing.
pub async fn snapshot(
    settings: &Settings,
    prefix: &str,
    fleet: Option<&str>,
    stale_after: Duration,
) -> Result<Fleet, String> {
    let id = client_id("status");
    let mut options = settings.options(&id, None)?;
    options.set_max_packet_size(READ_LIMIT, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut state = Fleet::new(prefix, stale_after);
    let topics = filters(prefix, fleet, false);
    let probe = format!("{}/_probe/{id}", prefix.trim_end_matches('/'));
    let mut acked = 0;
    let quiet = Duration::from_millis(400);
    // Ten seconds of silence is no answer; a large fleet's retained set
    // takes longer than that to arrive, and keeps the clock moving. Once
    // messages came, two seconds of silence without the end mean the
    // broker stopped short.
    let silence = Duration::from_secs(10);
    let stopped = Duration::from_secs(2);
    let mut received: Vec<rumqttc::Publish> = Vec::new();
    let mut last = tokio::time::Instant::now();
    let mut end_seen = false;
    loop {
        let wait = if acked > topics.len() {
            quiet
        } else if received.is_empty() {
            silence
        } else {
            stopped
        };
        let ev = match tokio::time::timeout_at(last + wait, eventloop.poll()).await {
            Err(_) if acked > topics.len() => {
                end_seen = true;
                break;
            }
            Err(_) if !received.is_empty() => break,
            Err(_) => return Err(format!("{}: no answer from the broker within 10s", settings.url)),
            Ok(Err(e)) => return Err(format!("{}: {e}", settings.url)),
            Ok(Ok(ev)) => ev,
        };
        last = tokio::time::Instant::now();
        match ev {
            Event::Incoming(Incoming::ConnAck(_)) => {
                for (t, qos) in &topics {
                    client.subscribe(t.clone(), *qos).await.map_err(|e| e.to_string())?;
                }
                client.subscribe(probe.clone(), QoS::AtMostOnce).await.map_err(|e| e.to_string())?;
            }
            Event::Incoming(Incoming::SubAck(_)) => {
                acked += 1;
                if acked == topics.len() + 1 {
                    client.publish(probe.clone(), QoS::AtMostOnce, false, "end").await.map_err(|e| e.to_string())?;
                }
            }
            Event::Incoming(Incoming::Publish(p)) if p.topic == probe => {
                end_seen = true;
                break;
            }
            Event::Incoming(Incoming::Publish(p)) => received.push(p),
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    let now = SystemTime::now();
    for p in &received {
        state.ingest(&p.topic, &p.payload, now);
    }
    if !end_seen {
        state.cut_short = Some(received.len());
    }
    state.refresh(now);
    Ok(state)
}

#[cfg(feature = "fleet-serve")]
/// The state `fleet serve` shares between its MQTT session and its HTTP side.
#[derive(Debug)]
pub struct Live {
    pub fleet: Mutex<Fleet>,
    pub connected: std::sync::atomic::AtomicBool,
    /// Which gateways get `/metrics` series of their own.
    pub device_metrics: super::metrics::DeviceMetrics,
    /// How the view asks a gateway for its logs (`None`: it does not).
    pub logs: Option<LogsAsker>,
}

#[cfg(feature = "fleet-serve")]
/// What `fleet serve` needs to ask gateways for their logs ([`logs`]), and
/// its own bound: one request at a time, and the gateways' rate
/// ([`crate::report::logs::Bucket`]) for the whole view.
#[derive(Debug)]
pub struct LogsAsker {
    pub settings: Settings,
    pub prefix: String,
    pub bucket: Mutex<crate::report::logs::Bucket>,
    pub one: tokio::sync::Semaphore,
}

#[cfg(feature = "fleet-serve")]
impl LogsAsker {
    pub fn new(settings: Settings, prefix: String) -> LogsAsker {
        let bucket = Mutex::new(crate::report::logs::Bucket::new(std::time::Instant::now()));
        LogsAsker { settings, prefix, bucket, one: tokio::sync::Semaphore::new(1) }
    }
}

#[cfg(feature = "fleet-serve")]
/// Keep `live` up to date for as long as the task runs, reconnecting (with
/// rumqttc's session) when the broker goes away.
pub async fn follow(settings: Settings, prefix: String, fleet: Option<String>, live: Arc<Live>) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    let mut options = settings.options(&client_id("serve"), None)?;
    options.set_max_packet_size(READ_LIMIT, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let topics = filters(&prefix, fleet.as_deref(), true);
    let mut failures = 0u32;
    // Messages are taken in batches: while they keep coming (the retained
    // burst at each subscription) the socket is drained as fast as rumqttc
    // parses, so the broker does not drop what a slow reader leaves queued.
    // Its bytes count beside the view's bound: a quarter of it, between
    // 1 and 16 MiB (a view bounded at 8 MiB takes 2 MiB at a time).
    let batch_limit = {
        let f = live.fleet.lock().unwrap_or_else(|e| e.into_inner());
        (f.max_bytes / 4).clamp(1 << 20, 16 << 20)
    };
    let mut batch: Vec<rumqttc::Publish> = Vec::new();
    let mut batch_bytes = 0usize;
    let take_in = |batch: &mut Vec<rumqttc::Publish>| {
        if batch.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let mut f = live.fleet.lock().unwrap_or_else(|e| e.into_inner());
        for p in batch.drain(..) {
            f.ingest(&p.topic, &p.payload, now);
        }
    };
    loop {
        let ev = if batch.is_empty() {
            eventloop.poll().await
        } else {
            match tokio::time::timeout(Duration::from_millis(20), eventloop.poll()).await {
                Ok(ev) => ev,
                Err(_) => {
                    take_in(&mut batch);
                    batch_bytes = 0;
                    continue;
                }
            }
        };
        match ev {
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                batch_bytes += p.payload.len() + p.topic.len();
                batch.push(p);
                // Bounded in count and bytes (a message may be 8 MiB).
                if batch.len() >= 10_000 || batch_bytes >= batch_limit {
                    take_in(&mut batch);
                    batch_bytes = 0;
                }
                continue;
            }
            _ => {
                take_in(&mut batch);
                batch_bytes = 0;
            }
        }
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                failures = 0;
                live.connected.store(true, Ordering::Relaxed);
                tracing::info!(broker = %settings.url, "connected to the broker");
                for (t, qos) in &topics {
                    client.subscribe(t.clone(), *qos).await.map_err(|e| e.to_string())?;
                }
            }
            Ok(_) => {}
            Err(e) => {
                live.connected.store(false, Ordering::Relaxed);
                failures = failures.saturating_add(1);
                let wait = Duration::from_millis(500 * 2u64.pow(failures.min(5))).mul_f64(0.5 + fastrand::f64());
                tracing::warn!(broker = %settings.url, error = %e, retry_in = ?wait, "broker connection lost");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Ask one gateway (`device`) or the whole fleet to sync; returns the command id.
pub async fn sync(
    settings: &Settings,
    prefix: &str,
    fleet: &str,
    device: Option<&str>,
    now: bool,
) -> Result<String, String> {
    let prefix = prefix.trim_end_matches('/');
    let topic = format!("{prefix}/{fleet}/{}/cmd", device.unwrap_or("_all"));
    let id = format!("fleet-{:08x}", fastrand::u32(..));
    let mut payload = json!({ "cmd": "sync", "id": id });
    if now {
        payload["now"] = true.into();
    }
    publish_once(settings, "cmd", topic, false, payload.to_string()).await?;
    Ok(id)
}

/// A `logs` command for `device` (without its id), its arguments checked as
/// the gateway would check them, so that a typo is bad usage here (exit 2)
/// rather than a round trip; whether `since` is in the future is the
/// gateway's to say (its clock).
#[cfg(feature = "fleet-serve")]
pub fn logs_request(
    fleet: &str,
    device: &str,
    unit: Option<&str>,
    since: Option<&str>,
    lines: Option<u64>,
) -> Result<serde_json::Value, String> {
    use crate::report::logs;
    let level =
        |s: &str| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !level(device) || device.starts_with('.') {
        return Err(format!("DEVICE {device:?}: not a device id (1-128 characters of [A-Za-z0-9_.-])"));
    }
    if !level(fleet) || fleet.starts_with('.') {
        return Err(format!("--fleet {fleet:?}: not a fleet name (1-128 characters of [A-Za-z0-9_.-])"));
    }
    let mut req = json!({ "cmd": "logs" });
    if let Some(u) = unit {
        if !logs::valid_name(u) {
            return Err(format!(
                "--unit {u:?}: not a unit or container name (1-{} characters of [A-Za-z0-9:_.@-], starting with a letter or digit)",
                logs::MAX_NAME
            ));
        }
        req["unit"] = u.into();
    }
    if let Some(s) = since {
        if humantime::parse_duration(s.trim()).is_err() && s.trim().parse::<jiff::Timestamp>().is_err() {
            return Err(format!("--since {s:?}: neither a duration back (\"10m\", \"2h\") nor an RFC 3339 time"));
        }
        req["since"] = s.into();
    }
    if let Some(n) = lines {
        let (min, max) = logs::LINES;
        if !(min..=max).contains(&n) {
            return Err(format!("--lines {n}: out of range (allowed: {min} to {max})"));
        }
        req["lines"] = n.into();
    }
    Ok(req)
}

/// Ask `device` for its logs (`request`, from [`logs_request`]): subscribe to
/// the answer's topic first, then publish the command (QoS 1), and wait at
/// most `wait` for the answer (refused or not: the caller reads `ok`).
#[cfg(feature = "fleet-serve")]
pub async fn logs(
    settings: &Settings,
    prefix: &str,
    fleet: &str,
    device: &str,
    mut request: serde_json::Value,
    wait: Duration,
) -> Result<serde_json::Value, String> {
    let prefix = prefix.trim_end_matches('/');
    let id = format!("fleet-{:016x}", fastrand::u64(..));
    let answer_topic = format!("{prefix}/{fleet}/{device}/logs/{id}");
    let cmd_topic = format!("{prefix}/{fleet}/{device}/cmd");
    request["id"] = id.clone().into();
    let options = settings.options(&client_id("logs"), None)?;
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    let deadline = tokio::time::Instant::now() + wait;
    let mut published = false;
    let answer = loop {
        let ev = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) if published => {
                return Err(format!(
                    "{fleet}/{device} did not answer within {} (offline? `tend fleet status` says; a gateway older than the logs command does not answer)",
                    humantime::format_duration(wait)
                ));
            }
            Err(_) => {
                return Err(format!(
                    "{}: no answer from the broker within {}",
                    settings.url,
                    humantime::format_duration(wait)
                ));
            }
            Ok(Err(e)) => return Err(format!("{}: {e}", settings.url)),
            Ok(Ok(ev)) => ev,
        };
        match ev {
            Event::Incoming(Incoming::ConnAck(_)) => {
                client.subscribe(answer_topic.clone(), QoS::AtLeastOnce).await.map_err(|e| e.to_string())?;
            }
            Event::Incoming(Incoming::SubAck(ack)) => {
                if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                    return Err(format!(
                        "{}: the broker refused the subscription to {answer_topic} (its ACL?)",
                        settings.url
                    ));
                }
                client
                    .publish(cmd_topic.clone(), QoS::AtLeastOnce, false, request.to_string())
                    .await
                    .map_err(|e| e.to_string())?;
                published = true;
            }
            Event::Incoming(Incoming::Publish(p)) if p.topic == answer_topic => break p.payload,
            _ => {}
        }
    };
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while !matches!(eventloop.poll().await, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {}
    })
    .await;
    serde_json::from_slice(&answer).map_err(|e| format!("{fleet}/{device}: its answer is not JSON: {e}"))
}

/// Announce `revision` on `branch` (SPEC §4): retained, so a gateway that
/// connects later hears of it too. Returns the topic.
#[cfg(feature = "fleet-serve")]
pub async fn announce(
    settings: &Settings,
    prefix: &str,
    fleet: &str,
    branch: &str,
    revision: &str,
) -> Result<String, String> {
    let topic = crate::report::announce::topic(prefix, fleet, branch)
        .ok_or_else(|| format!("--branch {branch:?}: cannot be an MQTT topic (it has + or #)"))?;
    let ts = crate::report::now_rfc3339();
    publish_once(settings, "announce", topic.clone(), true, crate::report::announce::payload(revision, &ts)).await?;
    Ok(topic)
}

/// Connect, publish one message at QoS 1, wait for the broker's
/// acknowledgement (10 s at most) and disconnect.
async fn publish_once(
    settings: &Settings,
    what: &str,
    topic: String,
    retain: bool,
    payload: String,
) -> Result<(), String> {
    publish_all(settings, what, vec![(topic, retain, payload)]).await
}

/// Connect, publish `messages` (topic, retained, payload) at QoS 1, at most
/// 20 unacknowledged at a time (Mosquitto's default inflight window), wait
/// until the broker acknowledged every one (10 s without progress at most)
/// and disconnect.
pub async fn publish_all(settings: &Settings, what: &str, messages: Vec<(String, bool, String)>) -> Result<(), String> {
    const WINDOW: usize = 20;
    let options = settings.options(&client_id(what), None)?;
    let (client, mut eventloop) = AsyncClient::new(options, WINDOW + 4);
    let total = messages.len();
    let mut queue = messages.into_iter();
    let (mut connected, mut sent, mut acked) = (false, 0usize, 0usize);
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while acked < total {
        while connected && sent < total && sent - acked < WINDOW {
            let Some((topic, retain, payload)) = queue.next() else { break };
            client.try_publish(topic, QoS::AtLeastOnce, retain, payload).map_err(|e| e.to_string())?;
            sent += 1;
        }
        let ev = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => {
                return Err(format!(
                    "{}: no acknowledgement within 10s ({acked} of {total} acknowledged)",
                    settings.url
                ));
            }
            Ok(Err(e)) => return Err(format!("{}: {e}", settings.url)),
            Ok(Ok(ev)) => ev,
        };
        match ev {
            Event::Incoming(Incoming::ConnAck(_)) => connected = true,
            Event::Incoming(Incoming::PubAck(_)) => {
                acked += 1;
                deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            }
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while !matches!(eventloop.poll().await, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {}
    })
    .await;
    Ok(())
}
