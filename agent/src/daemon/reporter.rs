//! The daemon's MQTT reporting task (SPEC §4), on rumqttc.
//!
//! What must always hold:
//! - `availability` is `online` (retained) while connected; the Last Will makes
//!   it `offline` when the connection dies, and a clean stop publishes `offline`;
//! - events leave the outbox in `seq` order and are removed only when the broker
//!   acknowledged them (QoS 1); after a reconnection every unacknowledged event
//!   is sent again from the oldest;
//! - the sync loop never waits on the broker: this task only reads the outbox
//!   and a status channel, and publishes without blocking;
//! - a malformed command is answered with a `command` event, never a crash;
//! - a `logs` command (`report::logs`) is answered on its `…/logs/{id}`: a
//!   refusal at once, a read on a thread of its own (one at a time, within
//!   the rate limit) whose answer this task publishes; neither this task nor
//!   the sync loop waits on it.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, Outgoing, QoS};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::report::logs;
use crate::report::mqtt::{Command, CommandKind, Settings, parse_command};
use crate::report::{Host, Topics};
use crate::sync::Agent;

/// Events in flight at once (QoS 1 keeps their order on one connection).
const WINDOW: usize = 16;

/// What is in flight, in the order requests reach the event loop.
enum Tag {
    Event(u64),
    Other,
}

/// The reporting task: runs until `stop` is set, then publishes `offline`.
pub struct Reporter {
    pub agent: Arc<Agent>,
    pub settings: Settings,
    pub topics: Topics,
    pub health_interval: Duration,
    pub status: watch::Receiver<Value>,
    pub commands: mpsc::Sender<Command>,
    /// The branch's announcement topic (`None`: announcements are off), and
    /// where the latest announced revision goes (a flood keeps only the last).
    pub announce_topic: Option<String>,
    pub announced: watch::Sender<Option<String>>,
    pub connection: watch::Sender<String>,
    pub stop: watch::Receiver<bool>,
}

impl Reporter {
    pub async fn run(mut self) {
        let client_id = format!("tend-{}-{}", self.agent.cfg.fleet, self.agent.cfg.device_id);
        let options = match self.settings.options(&client_id, Some((self.topics.availability(), "offline"))) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "mqtt: not reporting");
                let _ = self.connection.send(format!("error: {e}"));
                return;
            }
        };
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let wake = self.agent.events.wake();
        let mut host = Host::new();
        // Bounded in the config; a zero period would panic the timer.
        let mut health_tick = tokio::time::interval(self.health_interval.max(Duration::from_secs(1)));
        health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected = false;
        let mut fifo: VecDeque<Tag> = VecDeque::new();
        let mut acks: HashMap<u16, Tag> = HashMap::new();
        let mut last_sent = 0u64;
        let mut in_flight = 0usize;
        let mut backoff = Duration::from_millis(500);
        let mut last_error = String::new();
        let mut last_status = Value::Null;
        let breaker = self.agent.breaker.clone();
        // Subscriptions in the order made (the revision of a rollout one),
        // then by packet id until acknowledged.
        let mut subs: VecDeque<Option<String>> = VecDeque::new();
        let mut sub_acks: HashMap<u16, Option<String>> = HashMap::new();
        let mut rollout_sub: Option<String> = None;
        let mut ignored = 0u64;
        let mut busy = 0u64;
        // Logs requests: read on a thread of their own, one at a time (the
        // thread holds a clone of `logs_slot` while it reads), the answer
        // left in the slot and `wake` notified: this task publishes it (it
        // owns the session and the order of what is in flight).
        let logs_slot: LogsSlot = Arc::default();
        let mut logs_bucket = logs::Bucket::new(std::time::Instant::now());
        loop {
            tokio::select! {
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        connected = true;
                        backoff = Duration::from_millis(500);
                        tracing::info!(url = %self.settings.url, "mqtt: connected");
                        last_error.clear();
                        let _ = self.connection.send("connected".into());
                        fifo.clear();
                        acks.clear();
                        last_sent = 0;
                        in_flight = 0;
                        subs.clear();
                        sub_acks.clear();
                        let announce = self.announce_topic.iter().cloned();
                        for t in [self.topics.cmd(), self.topics.all_cmd.clone()].into_iter().chain(announce) {
                            if client.try_subscribe(t, QoS::AtLeastOnce).is_ok() {
                                subs.push_back(None);
                            }
                        }
                        rollout_sub = None;
                        if let Some(b) = &breaker {
                            rollout_sub = watch_reports(&client, b, None, &mut subs);
                        }
                        publish(&client, &mut fifo, self.topics.availability(), QoS::AtLeastOnce, true, b"online".to_vec());
                        last_status = self.status.borrow().clone();
                        if !last_status.is_null() {
                            publish(&client, &mut fifo, self.topics.status(), QoS::AtLeastOnce, true, last_status.to_string().into_bytes());
                        }
                        self.publish_health(&client, &mut fifo, &mut host).await;
                        if self.agent.cfg.metrics.textfile.is_some() {
                            let a = self.agent.clone();
                            let _ = tokio::task::spawn_blocking(move || a.write_textfile()).await;
                        }
                        self.pump(&client, &mut fifo, &mut last_sent, &mut in_flight).await;
                    }
                    Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                        sub_acks.insert(pkid, subs.pop_front().flatten());
                    }
                    Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                        if let (Some(Some(rev)), Some(b)) = (sub_acks.remove(&ack.pkid), &breaker) {
                            b.subscribed(&rev);
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p)))
                        if breaker.as_ref().is_some_and(|b| b.receive(&p.topic, &p.payload)) => {}
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let tag = fifo.pop_front().unwrap_or(Tag::Other);
                        if pkid != 0 {
                            acks.insert(pkid, tag);
                        }
                    }
                    Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                        if let Some(Tag::Event(seq)) = acks.remove(&ack.pkid) {
                            in_flight = in_flight.saturating_sub(1);
                            let agent = self.agent.clone();
                            let _ = tokio::task::spawn_blocking(move || agent.store.remove_event(seq)).await;
                            self.pump(&client, &mut fifo, &mut last_sent, &mut in_flight).await;
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) if self.announce_topic.as_deref() == Some(p.topic.as_str()) => {
                        match crate::report::announce::parse(&p.payload) {
                            Ok(rev) => {
                                tracing::debug!(revision = %crate::sync::short(&rev), "mqtt: commit announced");
                                self.announced.send_replace(Some(rev));
                            }
                            // An empty retained message clears the announcement.
                            Err(_) if p.payload.is_empty() => {}
                            // Said at the 1st, 2nd, 4th, 8th... (a flood must not fill the journal).
                            Err(e) => {
                                ignored += 1;
                                if ignored.is_power_of_two() {
                                    tracing::warn!(topic = %p.topic, error = %e, ignored, "mqtt: announcement ignored");
                                }
                            }
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) if p.retain => {
                        // A command is a request of the moment: one kept by the
                        // broker would run again at every reconnect of every
                        // gateway. (The broker flags only stored messages.)
                        tracing::warn!(topic = %p.topic, "mqtt: a retained command is ignored (clear it with an empty retained message)");
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let mut cmd = parse_command(&p.payload);
                        cmd.fleet_wide = p.topic == self.topics.all_cmd;
                        tracing::info!(topic = %p.topic, cmd = ?cmd.cmd.as_ref().map(CommandKind::name), "mqtt: command received");
                        if let Ok(CommandKind::Logs(req)) = &cmd.cmd {
                            match self.logs_request(&cmd, req, &mut logs_bucket, &logs_slot, &wake) {
                                LogsReply::Reading => {}
                                LogsReply::Answer(topic, payload) if connected => {
                                    publish(&client, &mut fifo, topic, QoS::AtLeastOnce, false, payload);
                                }
                                LogsReply::Answer(..) => {}
                                LogsReply::Event(fields) => {
                                    let agent = self.agent.clone();
                                    let _ = tokio::task::spawn_blocking(move || agent.event(crate::report::Kind::Command, fields)).await;
                                }
                            }
                            continue;
                        }
                        // Never wait for the sync loop here: this task also
                        // drives the MQTT session (pings, acknowledgements),
                        // and a long sync with the queue full would stall it
                        // until the broker dropped the connection. A command
                        // that does not fit is answered `busy`.
                        match self.commands.try_send(cmd) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                            Err(mpsc::error::TrySendError::Full(cmd)) => {
                                busy += 1;
                                if busy.is_power_of_two() {
                                    tracing::warn!(busy, "mqtt: command queue full; answered busy");
                                }
                                let name = cmd.cmd.as_ref().map(CommandKind::name).unwrap_or("invalid");
                                let fields = serde_json::json!({
                                    "cmd": name,
                                    "id": cmd.id,
                                    "ok": false,
                                    "error": format!("busy: {} commands already wait for this gateway; try again later", self.commands.max_capacity()),
                                });
                                let agent = self.agent.clone();
                                let _ = tokio::task::spawn_blocking(move || agent.event(crate::report::Kind::Command, fields)).await;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        connected = false;
                        let msg = describe(&e, &self.settings.url);
                        if msg != last_error {
                            tracing::warn!(error = %msg, "mqtt: disconnected; retrying with backoff");
                            last_error = msg.clone();
                        }
                        let _ = self.connection.send(format!("error: {msg}"));
                        // Unacknowledged events are re-sent from the outbox on
                        // reconnection; rumqttc must not re-send them as well.
                        eventloop.pending.clear();
                        fifo.clear();
                        acks.clear();
                        if let Some(b) = &breaker {
                            b.disconnected();
                        }
                        // A random part of the backoff (at least half): a
                        // fleet that lost its broker together does not come
                        // back in the same second.
                        let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = self.stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                },
                _ = async { breaker.as_ref().expect("checked").changed.notified().await }, if connected && breaker.is_some() => {
                    let b = breaker.as_ref().expect("checked");
                    rollout_sub = watch_reports(&client, b, rollout_sub.take(), &mut subs);
                }
                _ = wake.notified(), if connected => {
                    let answer = logs_slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some((topic, payload)) = answer {
                        publish(&client, &mut fifo, topic, QoS::AtLeastOnce, false, payload);
                    }
                    self.pump(&client, &mut fifo, &mut last_sent, &mut in_flight).await;
                }
                changed = self.status.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Every change is published, `last_sync` included: a fleet
                    // view tells a stale gateway by it.
                    let now = self.status.borrow().clone();
                    if connected && now != last_status {
                        publish(&client, &mut fifo, self.topics.status(), QoS::AtLeastOnce, true, now.to_string().into_bytes());
                        last_status = now;
                    }
                }
                _ = health_tick.tick(), if connected => {
                    self.publish_health(&client, &mut fifo, &mut host).await;
                    // Host metrics and a TLS write touch code an idle daemon
                    // does not need until the next report.
                    super::give_back_memory();
                }
                _ = self.stop.changed() => {
                    if connected {
                        publish(&client, &mut fifo, self.topics.availability(), QoS::AtLeastOnce, true, b"offline".to_vec());
                        let _ = client.try_disconnect();
                        // Let the event loop send both before returning.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            loop {
                                match eventloop.poll().await {
                                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                                    _ => {}
                                }
                            }
                        })
                        .await;
                    }
                    return;
                }
            }
        }
    }

    /// A `logs` command (SPEC §4): refused at once (in the answer; without a
    /// usable id, in a `command` event), or its read started on a thread of
    /// its own, which leaves the answer in `slot` and notifies `wake`.
    fn logs_request(
        &self,
        cmd: &Command,
        req: &Value,
        bucket: &mut logs::Bucket,
        slot: &LogsSlot,
        wake: &Arc<tokio::sync::Notify>,
    ) -> LogsReply {
        let Some(id) = cmd.id.as_ref().and_then(Value::as_str).filter(|i| logs::valid_id(i)) else {
            return LogsReply::Event(serde_json::json!({
                "cmd": "logs",
                "id": cmd.id,
                "ok": false,
                "error": format!(
                    "logs: needs an \"id\" of 1-{} characters of [A-Za-z0-9._-] (the answer is published on {})",
                    logs::MAX_ID,
                    self.topics.logs("{id}")
                ),
            }));
        };
        let topic = self.topics.logs(id);
        let refuse = |e: &str| LogsReply::Answer(topic.clone(), logs::refusal(id, e));
        if cmd.fleet_wide {
            return refuse(&format!("logs are asked of one gateway, on {}", self.topics.cmd()));
        }
        let plan = match logs::check(req, &self.agent.cfg.logs.units, std::time::SystemTime::now()) {
            Ok(p) => p,
            Err(e) => return refuse(&e),
        };
        if Arc::strong_count(slot) > 1 {
            return refuse("busy: this gateway is reading logs for another request; try again in a few seconds");
        }
        if let Err(wait) = bucket.take(std::time::Instant::now()) {
            return refuse(&logs::over_limit(wait));
        }
        let socket = self.agent.cfg.containers.socket.clone().or_else(crate::reconcile::containers::default_socket);
        let (slot, wake, id) = (slot.clone(), wake.clone(), id.to_owned());
        let answer_topic = topic.clone();
        let started = std::thread::Builder::new().name("tend-logs".into()).spawn(move || {
            let result = logs::read(&plan, socket.as_deref());
            let said = result.as_ref().map_or_else(Clone::clone, |r| format!("{} lines", r.lines.len()));
            tracing::info!(unit = %plan.unit, "logs: {said}");
            let payload = logs::answer(&id, Some(&plan.unit), Some(plan.source), result);
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((answer_topic, payload));
            drop(slot);
            wake.notify_one();
        });
        match started {
            Ok(_) => LogsReply::Reading,
            Err(e) => refuse(&format!("cannot start the read: {e}")),
        }
    }

    /// Send queued events, oldest first, keeping at most WINDOW in flight.
    async fn pump(&self, client: &AsyncClient, fifo: &mut VecDeque<Tag>, last_sent: &mut u64, in_flight: &mut usize) {
        if *in_flight >= WINDOW {
            return;
        }
        let agent = self.agent.clone();
        let (after, room) = (*last_sent, WINDOW - *in_flight);
        let batch = match tokio::task::spawn_blocking(move || agent.store.events_after(after, room)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "mqtt: cannot read the outbox");
                return;
            }
            Err(_) => return,
        };
        for (seq, event) in batch {
            // A failed revision is reported to the fleet too (retained, for
            // the circuit breaker of the gateways that have not applied it).
            if let (Some(b), Some((revision, report))) =
                (&self.agent.breaker, crate::report::breaker::report_of(&event))
            {
                let topic = b.report_topic(&revision, &self.agent.cfg.device_id);
                publish(client, fifo, topic, QoS::AtLeastOnce, true, report.to_string().into_bytes());
            }
            let payload = event.to_string().into_bytes();
            if client.try_publish(self.topics.events(), QoS::AtLeastOnce, false, payload).is_err() {
                break;
            }
            fifo.push_back(Tag::Event(seq));
            *last_sent = seq;
            *in_flight += 1;
        }
    }

    async fn publish_health(&self, client: &AsyncClient, fifo: &mut VecDeque<Tag>, host: &mut Host) {
        let agent = self.agent.clone();
        let state_dir = agent.cfg.state_dir.clone();
        let (checks, queued, dropped) = tokio::task::spawn_blocking(move || {
            let checks = agent.current().ok().flatten().map(|r| r.desired.checks).unwrap_or_default();
            let queued = agent.store.events_after(0, usize::MAX).map(|v| v.len()).unwrap_or(0);
            (checks, queued, agent.store.dropped_events().unwrap_or(0))
        })
        .await
        .unwrap_or_default();
        let probes = crate::health::probes_for(&checks);
        let results = crate::health::probe_all(&probes).await;
        let mut payload = host.sample(Path::new(&state_dir));
        payload["checks"] = results
            .results
            .iter()
            .map(|(n, r)| (n.clone(), Value::from(if r.is_ok() { "pass" } else { "fail" })))
            .collect::<serde_json::Map<_, _>>()
            .into();
        payload["events_queued"] = queued.into();
        payload["events_dropped"] = dropped.into();
        publish(client, fifo, self.topics.health(), QoS::AtMostOnce, true, payload.to_string().into_bytes());
    }
}

/// Where a logs read leaves its answer (topic, payload) for the reporter.
type LogsSlot = Arc<std::sync::Mutex<Option<(String, Vec<u8>)>>>;

/// What the reporter does about a `logs` command.
enum LogsReply {
    /// The read runs; its answer comes back in the slot.
    Reading,
    /// Publish this (topic, payload) now: a refusal.
    Answer(String, Vec<u8>),
    /// No usable id, so no topic to answer on: a `command` event.
    Event(Value),
}

/// Subscribe to the reports of the revision the breaker watches now, and
/// leave `previous`'s; returns the revision subscribed to.
fn watch_reports(
    client: &AsyncClient,
    b: &crate::report::breaker::Breaker,
    previous: Option<String>,
    subs: &mut VecDeque<Option<String>>,
) -> Option<String> {
    let now = b.watched();
    if now == previous {
        return now;
    }
    if let Some(old) = previous {
        let _ = client.try_unsubscribe(format!("{}/{old}/+", b.root));
    }
    let rev = now?;
    // QoS 0: the retained reports come as a burst at subscription, which a
    // broker's per-client QoS 1 queue limits would cut short (see
    // `fleet::broker::filters`); a report lost is read again at the next
    // subscription.
    if client.try_subscribe(format!("{}/{rev}/+", b.root), QoS::AtMostOnce).is_ok() {
        subs.push_back(Some(rev.clone()));
    }
    Some(rev)
}

fn publish(client: &AsyncClient, fifo: &mut VecDeque<Tag>, topic: String, qos: QoS, retain: bool, payload: Vec<u8>) {
    if client.try_publish(topic, qos, retain, payload).is_ok() {
        fifo.push_back(Tag::Other);
    }
}

/// One clear line for a connection error (TLS problems named as such).
fn describe(e: &rumqttc::ConnectionError, url: &str) -> String {
    let text = e.to_string();
    let mut msg = format!("{url}: {text}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    let tls_words = ["certificate", "Tls", "TLS", "handshake", "alert", "UnknownCA", "CertificateRequired"];
    if url.starts_with("mqtts://") && tls_words.iter().any(|w| msg.contains(w)) {
        let hint = if msg.contains("UnknownCA") || msg.contains("BadCertificate") || msg.contains("CertificateRequired")
        {
            " (the broker refused this client certificate)"
        } else if msg.contains("invalid peer certificate") {
            " (the broker's certificate is not trusted: check [mqtt].ca_file)"
        } else {
            ""
        };
        msg = format!("TLS: {msg}{hint}");
    }
    msg
}

/// The status payload: the stored status plus what only the daemon knows.
pub fn status_payload(agent: &Agent, suspended: bool) -> Value {
    let mut v = agent.status().ok().and_then(|s| serde_json::to_value(s).ok()).unwrap_or(Value::Null);
    if suspended {
        v["phase"] = "suspended".into();
    }
    if !agent.problems.is_empty() && v.is_object() {
        v["problems"] = agent.problems.clone().into();
    }
    v
}
