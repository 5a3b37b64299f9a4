//! `tend run`: the daemon. Wiring only: the sync loop, the control socket and
//! signals, on a single-threaded tokio runtime (gateways have little RAM; the
//! blocking steps run on a small blocking pool).
//!
//! What must always hold:
//! - at start, the revision applied last is re-enforced from the store before
//!   any fetch, so a gateway that boots without network is enforced at once;
//! - polls come every `interval` plus a random part of `jitter`; transient
//!   failures retry sooner, after a random part of `[apply].retry` backoff, up
//!   to its limit;
//! - a fleet-wide sync command and an announced commit (SPEC §4) start their
//!   fetch after a random delay within `[source].announce_spread`, and
//!   announce-triggered fetches are rate-limited (`report::announce::Limiter`):
//!   the fleet never reaches its Git server in the same second;
//! - SIGTERM or SIGINT stops the loop; a step already running on the blocking
//!   pool (an apply) finishes, the store is flushed, and the process exits 0.

mod reporter;

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::{Apply, Source};
use crate::control::{self, Request, Response};
use crate::report::mqtt::{self, CommandKind, Settings};
use crate::report::{Kind, announce};
use crate::sync::{self, Agent, SyncError, SyncOptions};

/// How often, at most, polls make the store durable (see the poll branch).
const FLUSH_EVERY: Duration = Duration::from_secs(30);

/// How often the time of the last idle sync is written to the flash (the
/// live status has it at once; this is what survives a power cut).
const PERSIST_LAST_SYNC_EVERY: Duration = Duration::from_secs(15 * 60);

/// Fleet-wide sync commands kept for the one deferred sync that answers them
/// (each is answered; past this many within one spread, at once, `busy`).
const MAX_DEFERRED: usize = 1024;

/// How long a stopping daemon waits for a running apply to finish.
const STOP_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("control socket {path}: {reason}")]
    Socket { path: String, reason: String },
    #[error("{0}")]
    Setup(String),
}

/// Run the daemon until SIGTERM or SIGINT.
pub fn run(mut agent: Agent) -> Result<(), DaemonError> {
    // Said at start, before any apply meets it (issue 17).
    for r in crate::preflight::read_only_roots(&agent.cfg) {
        tracing::error!("{r}");
        agent.problems.push(r.to_string());
    }
    if agent.cfg.mqtt.url.is_some() {
        let b = crate::report::breaker::Breaker::new(&agent.cfg.mqtt.topic_prefix, &agent.cfg.fleet);
        agent.breaker = Some(Arc::new(b));
    }
    let agent = Arc::new(agent);
    let death = take_last_exit(&agent.cfg.state_dir);
    if let Some(d) = &death {
        tracing::warn!("the last run ended badly: {d}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .thread_keep_alive(Duration::from_secs(10))
        .build()
        .map_err(|e| DaemonError::Setup(format!("cannot start the runtime: {e}")))?;
    let result = rt.block_on(main_loop(agent.clone(), death));
    // Waits for a step still running on the blocking pool (an apply) to finish.
    rt.shutdown_timeout(STOP_GRACE);
    // A clean stop: an apply or health window it leaves is not a death.
    if let Err(e) = agent.persist_status().and_then(|_| sync::stopped(&agent)) {
        tracing::error!(error = %e, "could not flush the store");
    }
    tracing::info!("stopped");
    result
}

/// After a burst of work (start, a sync, a command): freed heap goes back to
/// the system, not to glibc's free lists, and the pages of tend's own code and
/// read-only data are unmapped (they stay in the page cache; the idle loop
/// maps back the little it uses). Measured in `benches/footprint.rs`.
pub(crate) fn give_back_memory() {
    tend_sys::release_free_memory();
    let code = tend_sys::release_code_pages();
    tracing::trace!(code, "memory given back");
}

/// How long until `rfc3339` (a waiting revision's `due_at`), a little after
/// it; `None` if it cannot be read.
fn until(rfc3339: &str) -> Option<Duration> {
    let due: jiff::Timestamp = rfc3339.parse().ok()?;
    let left = due.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO) + Duration::from_millis(50))
}

/// The shortest retry after a transient failure.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// The delay before the next poll after `result`; `failures` counts consecutive
/// transient failures. `jitter_fraction` is in [0, 1).
///
/// A retry after a transient failure waits a random part of its backoff
/// ("full jitter", at least a second): gateways that failed together (a Git
/// server that dropped a fleet-wide fetch) do not retry together.
pub fn next_poll(
    source: &Source,
    apply: &Apply,
    transient_failure: bool,
    failures: &mut u32,
    jitter_fraction: f64,
) -> Duration {
    let regular = source.interval + source.jitter.mul_f64(jitter_fraction.clamp(0.0, 1.0));
    if transient_failure {
        *failures += 1;
        if *failures <= apply.retry.limit {
            let backoff = apply.retry.delay(*failures - 1).min(regular);
            return backoff.mul_f64(jitter_fraction.clamp(0.0, 1.0)).max(MIN_RETRY.min(backoff));
        }
        return regular;
    }
    *failures = 0;
    regular
}

/// Where `tend exited` (the unit's `ExecStopPost=`) leaves how the daemon's
/// last run ended, for the next start.
pub fn last_exit_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("last-exit")
}

/// Record how the daemon's run ended, from what systemd hands an
/// `ExecStopPost=` command (`$SERVICE_RESULT`, `$EXIT_CODE`, `$EXIT_STATUS`;
/// see systemd.exec(5)). Each value is cut to 32 printable characters.
pub fn record_exit(state_dir: &Path, result: &str, code: &str, status: &str) -> Result<(), String> {
    let clean = |s: &str| s.chars().filter(|c| c.is_ascii_graphic()).take(32).collect::<String>();
    let line = format!("{} {} {}\n", clean(result), clean(code), clean(status));
    crate::atomic::write(&last_exit_path(state_dir), line.as_bytes(), 0o600, true).map_err(|e| e.to_string())
}

/// How the last run ended, said for a person, and the record removed;
/// `None` when nothing was recorded or it ended cleanly.
fn take_last_exit(state_dir: &Path) -> Option<String> {
    let path = last_exit_path(state_dir);
    let text = std::fs::read_to_string(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    describe_exit(&text)
}

/// `signal killed KILL` → "killed by signal SIGKILL".
fn describe_exit(line: &str) -> Option<String> {
    let mut parts = line.split_whitespace();
    let (result, code, status) = (parts.next()?, parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let signal = |s: &str| if s.starts_with("SIG") { s.to_owned() } else { format!("SIG{s}") };
    Some(match (result, code) {
        ("success", _) => return None,
        ("watchdog", _) => "stopped by systemd's watchdog".into(),
        ("oom-kill", _) => "killed by the kernel's OOM killer".into(),
        ("core-dump", _) | (_, "dumped") => format!("dumped core on signal {}", signal(status)),
        (_, "killed") => format!("killed by signal {}", signal(status)),
        (_, "exited") => format!("exited with status {status}"),
        (other, _) => format!("ended by systemd: {other}"),
    })
}

async fn main_loop(agent: Arc<Agent>, death: Option<String>) -> Result<(), DaemonError> {
    let cfg = agent.cfg.clone();
    // Last-known-good first, before the network is even tried.
    let mut had_revision = false;
    let enforced = match sync::boot(&agent, death).await {
        Ok(Some(s)) => {
            had_revision = true;
            s.commit.as_deref().map(sync::short).unwrap_or("(none)").to_owned()
        }
        Ok(None) => "none (no revision applied yet)".to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "could not enforce the revision in the store");
            "none (it could not be enforced)".to_owned()
        }
    };
    tracing::info!(
        "started: tend {} for {}/{}, config {}, source {} (branch {}); enforced from the store: {enforced}",
        sync::AGENT_VERSION,
        cfg.fleet,
        cfg.device_id,
        cfg.file.display(),
        agent.source.shown_url(),
        cfg.source.branch
    );
    give_back_memory();

    let socket = cfg.control_socket();
    let listener = bind_control(&socket)?;
    let (tx, mut rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(8);

    let mut shutdown = shutdown_signal()?;

    // The inventory's versions (each asked with a timeout of a few seconds).
    sync::blocking(&agent, Agent::ask_versions).await;
    // Reporting: the reporter task reads status from a watch channel and the
    // outbox from the store; fleet commands come back on a channel.
    let mut suspended = read_suspended(&agent).await;
    let (status_tx, status_rx) = watch::channel(status_now(&agent, suspended).await);
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<mqtt::Command>(16);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (conn_tx, conn_rx) = watch::channel(String::from("not configured"));
    let accept = tokio::spawn(accept_loop(listener, agent.clone(), conn_rx.clone(), tx));
    let (announced_tx, mut announced_rx) = watch::channel(None::<String>);
    let announce_topic = announce::topic(&cfg.mqtt.topic_prefix, &cfg.fleet, &cfg.source.branch);
    if cfg.mqtt.url.is_some() && announce_topic.is_none() {
        tracing::warn!(branch = %cfg.source.branch, "announced commits are off: the branch name cannot be an MQTT topic (it has + or #)");
    }
    let reporter = Settings::from_config(&cfg.mqtt).map(|settings| {
        let _ = conn_tx.send("connecting".into());
        tokio::spawn(
            reporter::Reporter {
                agent: agent.clone(),
                settings,
                topics: crate::report::Topics::new(&cfg.mqtt.topic_prefix, &cfg.fleet, &cfg.device_id),
                health_interval: cfg.mqtt.health_interval,
                status: status_rx,
                commands: cmd_tx,
                announce_topic,
                announced: announced_tx,
                connection: conn_tx,
                stop: stop_rx,
            }
            .run(),
        )
    });

    // systemd: ready once last-known-good is enforced and the socket is up;
    // the watchdog is fed from this loop, so a stuck loop gets restarted.
    let notifier = crate::notify::Notifier::from_env();
    let status_line = |v: &serde_json::Value| {
        let mut line = format!(
            "STATUS={} {}",
            v["phase"].as_str().unwrap_or("unknown"),
            v["revision"].as_str().map(sync::short).unwrap_or("(no revision)")
        );
        if let Some(p) = v["problems"].as_array().and_then(|p| p.first()).and_then(|p| p.as_str()) {
            line.push_str("; ");
            line.push_str(p);
        }
        line
    };
    notifier.send(&format!("READY=1\n{}", status_line(&status_tx.borrow())));
    let mut watchdog = tokio::time::interval(notifier.watchdog.unwrap_or(Duration::from_secs(3600)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // The first fetch: at once on a new gateway; with a revision in the
    // store (enforced above), after a random part of `jitter`, so a site
    // whose gateways regain power together does not fetch together.
    let mut next = Instant::now() + if had_revision { within(cfg.source.jitter) } else { Duration::ZERO };
    if had_revision {
        tracing::debug!(first_fetch_in = ?next.saturating_duration_since(Instant::now()), "first fetch");
    }
    let mut failures = 0u32;
    let mut last_flush = Instant::now();
    let mut last_persist = Instant::now();
    // Fleet-wide sync commands wait for a random point within the spread
    // (answered together after one sync); an announced commit is fetched at
    // the next poll, brought forward to such a point, within the rate limit.
    let spread = cfg.source.announce_spread;
    let mut deferred: Vec<mqtt::Command> = Vec::new();
    let mut deferred_at = Instant::now();
    let mut announce_due: Option<Instant> = None;
    let mut acted_on: Option<String> = None;
    let mut limiter = announce::Limiter::new(Instant::now());
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = watchdog.tick(), if notifier.watchdog.is_some() => {
                notifier.send("WATCHDOG=1");
            }
            _ = tokio::time::sleep_until(next), if suspended => {
                next = Instant::now() + cfg.source.interval;
            }
            _ = tokio::time::sleep_until(next), if !suspended => {
                announce_due = None;
                let opts = SyncOptions { no_heal: !cfg.apply.self_heal, ..Default::default() };
                let result = tokio::select! {
                    r = sync::sync(&agent, opts) => r,
                    _ = &mut shutdown => break,
                };
                let transient = result.as_ref().err().is_some_and(SyncError::is_transient);
                let due = result.as_ref().ok().and_then(|s| s.due_at.as_deref()).and_then(until);
                // Changes of state are said by their events (one line each);
                // a failure once until it changes, not at every poll.
                match &result {
                    Ok(s) => {
                        last_error.clear();
                        tracing::debug!(revision = s.commit.as_deref().map(sync::short), action = %s.action, "sync done");
                    }
                    Err(e) => {
                        let text = e.to_string();
                        if text != last_error {
                            tracing::warn!(transient, "sync failed: {text}");
                            last_error = text;
                        } else {
                            tracing::debug!(transient, "sync failed again");
                        }
                    }
                }
                drop(result);
                if agent.cfg.metrics.textfile.is_some() {
                    let a = agent.clone();
                    let _ = tokio::task::spawn_blocking(move || a.write_textfile()).await;
                }
                // sled keeps what a write replaced until a flush makes the
                // log stable: flush now and then (there is no background
                // flusher) or the daemon grows. A flush with nothing new
                // writes nothing.
                if last_flush.elapsed() >= FLUSH_EVERY {
                    let persist = last_persist.elapsed() >= PERSIST_LAST_SYNC_EVERY;
                    if persist {
                        last_persist = Instant::now();
                    }
                    let a = agent.clone();
                    let flushed = tokio::task::spawn_blocking(move || {
                        if persist {
                            a.persist_status()?;
                        }
                        a.store.flush()
                    });
                    if let Ok(Err(e)) = flushed.await {
                        tracing::warn!(error = %e, "could not flush the store");
                    }
                    last_flush = Instant::now();
                }
                // What the sync freed goes back to the system, not to glibc's
                // free lists (an idle daemon stays as small as before it).
                give_back_memory();
                let mut delay = next_poll(&cfg.source, &cfg.apply, transient, &mut failures, fastrand::f64());
                // A revision waiting for its wave or a window: look again
                // when it is due, not an interval later.
                if let Some(due) = due {
                    delay = delay.min(due);
                }
                tracing::debug!(next_in = ?delay, "next poll");
                next = Instant::now() + delay;
                let now = status_now(&agent, suspended).await;
                notifier.send(&status_line(&now));
                let _ = status_tx.send(now);
            }
            Some((req, reply)) = rx.recv() => {
                let resp = tokio::select! {
                    r = handle(&agent, req) => r,
                    _ = &mut shutdown => {
                        let _ = reply.send(Response::err("tend is stopping", 1));
                        break;
                    }
                };
                let _ = reply.send(resp);
                give_back_memory();
                let _ = status_tx.send(status_now(&agent, suspended).await);
            }
            Ok(()) = announced_rx.changed() => {
                let Some(rev) = announced_rx.borrow_and_update().clone() else { continue };
                let known = {
                    let st = status_tx.borrow();
                    [&st["revision"], &st["target_revision"]].iter().any(|v| v.as_str() == Some(rev.as_str()))
                };
                // One fetch per announced revision; none while one is due or
                // while suspended.
                if known || suspended || announce_due.is_some() || acted_on.as_deref() == Some(rev.as_str()) {
                    continue;
                }
                let at = limiter.reserve(Instant::now() + within(spread));
                tracing::info!(revision = %sync::short(&rev), fetch_in = ?at.saturating_duration_since(Instant::now()), "commit announced");
                acted_on = Some(rev);
                announce_due = Some(at);
                next = next.min(at);
            }
            _ = tokio::time::sleep_until(deferred_at), if !deferred.is_empty() => {
                let batch = std::mem::take(&mut deferred);
                tracing::debug!(commands = batch.len(), "fleet-wide sync starts");
                let now = batch.iter().any(|c| matches!(c.cmd, Ok(CommandKind::Sync { now: true })));
                let synced = tokio::select! {
                    r = sync::sync(&agent, SyncOptions { now, ..Default::default() }) => r,
                    _ = &mut shutdown => break,
                };
                // A fleet-wide sync the Git server turned away (a fleet at
                // once is its busiest moment) is retried with the poll's
                // backoff, not left to the next poll an interval later.
                if synced.as_ref().err().is_some_and(SyncError::is_transient) {
                    let retry = next_poll(&cfg.source, &cfg.apply, true, &mut failures, fastrand::f64());
                    tracing::debug!(retry_in = ?retry, "fleet-wide sync failed; retrying");
                    next = next.min(Instant::now() + retry);
                }
                let result = synced.map(|s| s.commit).map_err(|e| e.to_string());
                for cmd in batch {
                    answer(&agent, "sync", cmd.id, &result).await;
                }
                give_back_memory();
                let _ = status_tx.send(status_now(&agent, suspended).await);
            }
            Some(cmd) = cmd_rx.recv() => {
                if cmd.fleet_wide && matches!(cmd.cmd, Ok(CommandKind::Sync { .. })) && !spread.is_zero() {
                    if deferred.is_empty() {
                        let delay = within(spread);
                        tracing::debug!(starts_in = ?delay, "fleet-wide sync command");
                        deferred_at = Instant::now() + delay;
                    }
                    // Bounded: a burst of fleet-wide syncs is one sync,
                    // answered to each command; past the bound, at once.
                    if deferred.len() < MAX_DEFERRED {
                        deferred.push(cmd);
                    } else {
                        let busy = Err(format!("busy: {MAX_DEFERRED} fleet-wide syncs already wait for one sync"));
                        answer(&agent, "sync", cmd.id, &busy).await;
                    }
                    continue;
                }
                let resumed = tokio::select! {
                    r = fleet_command(&agent, cmd, &mut suspended) => r,
                    _ = &mut shutdown => break,
                };
                if resumed {
                    next = Instant::now();
                }
                give_back_memory();
                let _ = status_tx.send(status_now(&agent, suspended).await);
            }
        }
    }
    tracing::info!("stopping");
    notifier.send("STOPPING=1");
    accept.abort();
    if let Some(r) = reporter {
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), r).await;
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn read_suspended(agent: &Arc<Agent>) -> bool {
    let a = agent.clone();
    tokio::task::spawn_blocking(move || a.store.pointers().map(|p| p.suspended).unwrap_or(false)).await.unwrap_or(false)
}

async fn status_now(agent: &Arc<Agent>, suspended: bool) -> serde_json::Value {
    let a = agent.clone();
    tokio::task::spawn_blocking(move || reporter::status_payload(&a, suspended)).await.unwrap_or_default()
}

/// A command from the fleet: carry it out and answer with a `command` event
/// echoing its id. Returns true when the daemon was resumed.
async fn fleet_command(agent: &Arc<Agent>, cmd: mqtt::Command, suspended: &mut bool) -> bool {
    let name = cmd.cmd.as_ref().map(CommandKind::name).unwrap_or("invalid");
    let (result, resumed): (Result<Option<String>, String>, bool) = match cmd.cmd {
        Err(e) => (Err(e), false),
        // Answered by the reporter; never queued here.
        Ok(CommandKind::Logs(_)) => (Err("logs requests are answered on …/logs/{id}".into()), false),
        Ok(CommandKind::Sync { now }) => (fleet_sync(agent, now).await, false),
        Ok(CommandKind::Rollback { revision }) => {
            (sync::rollback(agent, revision).await.map(|s| s.commit).map_err(|e| e.to_string()), false)
        }
        Ok(k @ (CommandKind::Suspend | CommandKind::Resume)) => {
            let on = k == CommandKind::Suspend;
            let a = agent.clone();
            let event = if on { crate::cycle::Event::Suspend } else { crate::cycle::Event::Resume };
            let r = tokio::task::spawn_blocking(move || a.transition(&event, Default::default()).map(|_| ()))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            if r.is_ok() {
                *suspended = on;
                tracing::info!(suspended = on, "fleet command");
            }
            (r.map(|_| None), !on)
        }
    };
    answer(agent, name, cmd.id, &result).await;
    resumed
}

async fn fleet_sync(agent: &Arc<Agent>, now: bool) -> Result<Option<String>, String> {
    let opts = SyncOptions { now, ..Default::default() };
    sync::sync(agent, opts).await.map(|s| s.commit).map_err(|e| e.to_string())
}

/// The `command` event that answers a fleet command.
async fn answer(
    agent: &Arc<Agent>,
    name: &str,
    id: Option<serde_json::Value>,
    result: &Result<Option<String>, String>,
) {
    let mut fields = serde_json::json!({ "cmd": name, "id": id, "ok": result.is_ok() });
    match result {
        Ok(Some(rev)) => fields["revision"] = rev.clone().into(),
        Ok(None) => {}
        Err(e) => fields["error"] = e.clone().into(),
    }
    let a = agent.clone();
    let _ = tokio::task::spawn_blocking(move || a.event(Kind::Command, fields)).await;
}

/// A random delay within `spread`.
fn within(spread: Duration) -> Duration {
    spread.mul_f64(fastrand::f64())
}

/// A control request that changes something (sync, rollback): run by the
/// main loop, one at a time with its own syncs.
async fn handle(agent: &Arc<Agent>, req: Request) -> Response {
    let summary = |r: Result<sync::SyncSummary, SyncError>| match r {
        Ok(s) => Response::ok(serde_json::to_value(s).expect("summary serialises")),
        Err(e) => Response::err(e, 1),
    };
    match req {
        Request::Sync { dry_run, retry, now } => {
            summary(sync::sync(agent, SyncOptions { dry_run, retry, now, no_heal: false }).await)
        }
        Request::Rollback { revision } => summary(sync::rollback(agent, revision).await),
        Request::Import { path, allow_downgrade } => {
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Response::err(
                        format!(
                            "{path}: the daemon cannot see it ({e}; tend.service has its own /tmp and no /home): put it under /run/tend/media or /var/lib/tend, or stop tend.service"
                        ),
                        1,
                    );
                }
                Err(e) => return Response::err(format!("{path}: {e}"), 1),
            };
            let name = crate::offline::shown(Path::new(&path));
            match crate::offline::import::import(agent, file, name, allow_downgrade, SyncOptions::default()).await {
                Ok(o) => Response::ok(serde_json::to_value(o).expect("an outcome serialises")),
                Err(e) => Response::err(e, 1),
            }
        }
        Request::Status | Request::History | Request::Report => Response::err("answered beside the loop", 1),
    }
}

/// A request that only reads (status, history): answered from the store at
/// once, even while a sync runs (a health window may last minutes).
async fn read_only(agent: &Arc<Agent>, req: &Request, mqtt: &watch::Receiver<String>) -> Option<Response> {
    match req {
        Request::Status => {
            let a = agent.clone();
            let mut v = tokio::task::spawn_blocking(move || {
                let suspended = a.store.pointers().map(|p| p.suspended).unwrap_or(false);
                reporter::status_payload(&a, suspended)
            })
            .await
            .unwrap_or_default();
            if v.is_null() {
                return Some(Response::err("cannot read the status", 1));
            }
            v["mqtt"] = mqtt.borrow().clone().into();
            Some(Response::ok(v))
        }
        Request::History => {
            let a = agent.clone();
            Some(match tokio::task::spawn_blocking(move || a.history_json()).await {
                Ok(Ok(h)) => Response::ok(serde_json::Value::Array(h)),
                Ok(Err(e)) => Response::err(e, 1),
                Err(e) => Response::err(e, 1),
            })
        }
        Request::Report => {
            let a = agent.clone();
            Some(match tokio::task::spawn_blocking(move || crate::offline::import::report(&a)).await {
                Ok(Ok(r)) => Response::ok(r),
                Ok(Err(e)) => Response::err(e, 1),
                Err(e) => Response::err(e, 1),
            })
        }
        Request::Sync { .. } | Request::Rollback { .. } | Request::Import { .. } => None,
    }
}

/// Bind the control socket, mode 0600. A stale socket file is replaced; a live
/// one means another daemon runs.
fn bind_control(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |reason: String| DaemonError::Socket { path: path.display().to_string(), reason };
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        std::fs::create_dir_all(parent).map_err(|e| err(format!("cannot create its directory: {e}")))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700));
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err("another tend daemon is listening there".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| err(e.to_string()))?;
    Ok(listener)
}

/// Control connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;

/// How long a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve the control socket: a silent client is dropped after
/// [`READ_TIMEOUT`], at most [`MAX_CONNECTIONS`] are served at once, and an
/// accept error (EMFILE: out of file descriptors) is said once and retried
/// after a pause instead of spinning.
async fn accept_loop(
    listener: UnixListener,
    agent: Arc<Agent>,
    mqtt: watch::Receiver<String>,
    tx: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Said at most once a minute, with how often it happened since.
    let (mut said_at, mut unsaid) = (None::<Instant>, 0u64);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                unsaid += 1;
                if said_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(error = %e, times = unsaid, "control socket: cannot accept a connection; retrying");
                    (said_at, unsaid) = (Some(Instant::now()), 0);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (tx, agent, mqtt) = (tx.clone(), agent.clone(), mqtt.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(control::MAX_REQUEST as u64 + 1));
            let resp = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
                Err(_) => return,
                Ok(Err(e)) => Response::err(format!("bad request: {e}"), 2),
                Ok(Ok(_)) => match control::parse_request(&line) {
                    Err(e) => Response::err(e, 2),
                    Ok(req) => match read_only(&agent, &req, &mqtt).await {
                        Some(resp) => resp,
                        None => {
                            let (reply_tx, reply_rx) = oneshot::channel();
                            if tx.send((req, reply_tx)).await.is_err() {
                                Response::err("tend is stopping", 1)
                            } else {
                                reply_rx.await.unwrap_or_else(|_| Response::err("tend is stopping", 1))
                            }
                        }
                    },
                },
            };
            let mut out = serde_json::to_vec(&resp).expect("responses serialise");
            out.push(b'\n');
            let _ = tokio::time::timeout(READ_TIMEOUT, write.write_all(&out)).await;
        });
    }
}

type Shutdown = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn shutdown_signal() -> Result<Shutdown, DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| DaemonError::Setup(format!("SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| DaemonError::Setup(format!("SIGINT handler: {e}")))?;
    Ok(Box::pin(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Retry};

    fn source(interval: u64, jitter: u64) -> Source {
        let text = format!("[source]\nurl = \"x\"\ninterval = \"{interval}s\"\njitter = \"{jitter}s\"\n");
        Config::from_str(&format!("device_id = \"d\"\n{text}"), Path::new("t")).unwrap().source
    }

    #[test]
    fn how_the_last_run_ended() {
        assert_eq!(describe_exit("signal killed KILL\n").as_deref(), Some("killed by signal SIGKILL"));
        assert_eq!(describe_exit("core-dump dumped ABRT").as_deref(), Some("dumped core on signal SIGABRT"));
        assert_eq!(describe_exit("exit-code exited 1").as_deref(), Some("exited with status 1"));
        assert_eq!(describe_exit("watchdog killed ABRT").as_deref(), Some("stopped by systemd's watchdog"));
        assert_eq!(describe_exit("oom-kill killed KILL").as_deref(), Some("killed by the kernel's OOM killer"));
        assert_eq!(describe_exit("success exited 0"), None);
        assert_eq!(describe_exit(""), None);
        let dir = tempfile::tempdir().unwrap();
        record_exit(dir.path(), "signal", "killed", "KILL\n\x1b[31m; rm -rf /").unwrap();
        assert_eq!(take_last_exit(dir.path()).as_deref(), Some("killed by signal SIGKILL[31m;rm-rf/"));
        assert!(!last_exit_path(dir.path()).exists());
        assert_eq!(take_last_exit(dir.path()), None);
    }

    #[test]
    fn polls_every_interval_plus_jitter() {
        let s = source(60, 10);
        let a = Apply::default();
        let mut f = 0;
        assert_eq!(next_poll(&s, &a, false, &mut f, 0.0), Duration::from_secs(60));
        assert_eq!(next_poll(&s, &a, false, &mut f, 0.5), Duration::from_secs(65));
        assert_eq!(next_poll(&s, &a, false, &mut f, 0.999), Duration::from_secs_f64(60.0 + 9.99));
    }

    #[test]
    fn transient_failures_back_off_then_fall_back_to_the_interval() {
        let s = source(600, 0);
        let a = Apply {
            retry: Retry { limit: 3, backoff: Duration::from_secs(5), factor: 2.0, max: Duration::from_secs(15) },
            ..Apply::default()
        };
        let mut f = 0;
        // The longest a retry waits: the backoff itself.
        let delays: Vec<u64> =
            (0..5).map(|_| next_poll(&s, &a, true, &mut f, 0.9999).as_secs_f64().round() as u64).collect();
        assert_eq!(delays, vec![5, 10, 15, 600, 600]);
        // A success resets the count.
        next_poll(&s, &a, false, &mut f, 0.0);
        assert_eq!(next_poll(&s, &a, true, &mut f, 0.5), Duration::from_secs_f64(2.5));
    }

    #[test]
    fn retries_after_a_shared_failure_do_not_fall_in_step() {
        let s = source(600, 0);
        let a = Apply::default();
        // 1,000 gateways failing together, each with its own random draw:
        // their first retries spread over the backoff, none sooner than a second.
        let mut seconds = std::collections::BTreeSet::new();
        for i in 0..1000 {
            let mut f = 0;
            let d = next_poll(&s, &a, true, &mut f, f64::from(i) / 1000.0);
            assert!(d >= MIN_RETRY && d <= a.retry.delay(0), "{d:?}");
            seconds.insert(d.as_millis() / 250);
        }
        assert!(seconds.len() >= 16, "retries bunch up: {} quarter-seconds", seconds.len());
    }

    #[test]
    fn backoff_never_exceeds_the_regular_poll() {
        let s = source(2, 0);
        let a = Apply::default();
        for fraction in [0.0, 0.5, 0.9999] {
            let mut f = 0;
            assert!(next_poll(&s, &a, true, &mut f, fraction) <= Duration::from_secs(2));
        }
    }
}
