//! The sync cycle's decisions, as one pure function (decision 0005):
//! `step(state, event, now, rules) -> (state, effects)`.
//!
//! The driver (`sync`) fetches, renders, applies, probes and rolls back; it
//! tells `step` what happened, persists the state it returns (with the
//! status that state says, in one write) and performs the effects. Every
//! change of the persisted state ([`Pointers`]: the revision in place,
//! last-known-good, quarantine, retries, waiting, the attempt under way) and
//! every phase and error the status shows come out of here, so the rules are
//! tested under a fake clock (`tests.rs`) and the whole agent under a
//! deterministic simulation (`sync/sim.rs`):
//!
//! - a quarantined commit is never applied unless an operator retries it;
//! - an operator's rollback holds the branch tip it left until the branch moves;
//! - nothing new is applied before its wave is due, outside a maintenance
//!   window, or while an update lock is held, unless told `--now` (waves and
//!   windows) or the lock's `lock_timeout` passed (locks: `--now` does not
//!   break them);
//! - a revision the fleet reports failing on `max_failed` gateways is held;
//! - transient failures are retried up to `[apply].retry.limit` times, then
//!   quarantined; permanent ones are quarantined at once;
//! - last-known-good only ever becomes a revision that passed its health
//!   window;
//! - the revision applied now is repaired (drift) in every decision but a
//!   suspended gateway's;
//! - a revision during whose apply or health window the agent died
//!   `crash_limit` times (not counting clean stops) is failed like an
//!   unhealthy one: quarantined, and the gateway is back on last-known-good;
//! - at start, a revision whose health window did not end is not
//!   last-known-good: the gateway returns to the one that is;
//! - a commit imported from a stick is decided as a tip; after it, no tip of
//!   the source that does not descend from it is applied (the driver says
//!   so with [`Event::Behind`]) until the branch reaches it.

#[cfg(test)]
mod tests;

use jiff::Timestamp;

pub use crate::rollout::Gate;
use crate::rollout::{Waiting, WaitingFor};
pub use crate::store::Phase;
use crate::store::{Attempt, Pointers, RevRef};

/// How a failure is retried, decided by the error's type (`SyncError::kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// May fix itself (the network, a busy runtime): retried with backoff.
    Transient,
    /// Will fail the same way again (a bad bundle, an unhealthy revision).
    Permanent,
}

/// Why a revision was refused before anything of it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The bundle is invalid (parse, policy, limits, rollout policy).
    Bundle,
    /// Something on the gateway is in the way.
    Blocked,
    /// The commit's signature is not trusted.
    Untrusted,
    /// Its `before_apply` hook said not now (retried, never quarantined).
    Hook,
    /// A file system it writes would drop below `[apply].min_free` (retried).
    Space,
}

impl Refusal {
    fn why(self) -> &'static str {
        match self {
            Refusal::Blocked => "rejected: something on the gateway is in the way",
            Refusal::Untrusted => "refused: the commit's signature is not trusted",
            Refusal::Bundle => "rejected: the bundle is invalid",
            Refusal::Hook => "not applied now: its before_apply hook failed",
            Refusal::Space => "not applied now: not enough free disk space",
        }
    }
}

/// What happened, as the driver tells it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The agent starts (the daemon, or a one-shot command that may apply).
    /// `death`: how the previous run ended, where systemd said.
    Boot {
        death: Option<String>,
    },
    /// The agent stops cleanly (SIGTERM, SIGINT): an apply or health window
    /// it leaves is not a death.
    Stop,
    /// The source could not be fetched (`error` says why).
    Unreachable {
        error: String,
    },
    /// The branch's tip, fetched. `retry`: `tend sync --retry`.
    Tip {
        commit: String,
        render_key: String,
        retry: bool,
    },
    /// A commit taken from a stick (SPEC §9): decided as a tip, and the
    /// source's branch must reach it before its tips are applied again.
    Import {
        commit: String,
        render_key: String,
        /// The file it came in.
        from: String,
        /// Decided again while the source is unreachable (it waits for its
        /// wave or a window): why the source could not be fetched.
        unreachable: Option<String>,
    },
    /// The source's tip does not descend from the imported commit (`error`
    /// says how it stands): not applied, the source is behind.
    Behind {
        error: String,
    },
    /// The tip is new and prepared (verified, rendered): may it be applied?
    /// `now`: `tend sync --now`.
    Prepared {
        commit: String,
        gate: Gate,
        now: bool,
    },
    /// Preparing the tip, or its apply before the first write, failed.
    Refused {
        commit: String,
        kind: ErrorKind,
        refusal: Refusal,
        error: String,
    },
    /// The apply of `commit` starts: its first write comes next (the driver
    /// makes this durable before it).
    Applying {
        commit: String,
    },
    /// `current` was applied; its health window starts.
    Applied {
        current: RevRef,
    },
    /// The health window of the revision applied now ended; `failures`
    /// says which checks failed.
    Health {
        healthy: bool,
        failures: String,
    },
    /// Applying `record` failed after its first write (the driver recorded
    /// the attempt in the history first).
    Failed {
        record: RevRef,
        kind: ErrorKind,
        error: String,
    },
    /// The driver returned to `to` after a failure (`Effect::RollBack`), or
    /// could not (`restored == false`, `detail` says why).
    RolledBack {
        restored: bool,
        detail: String,
    },
    /// The revision applied now was enforced (drift repaired, or none).
    Healed,
    /// Enforcing the revision applied now failed (something in the way, a
    /// runtime down).
    HealFailed {
        error: String,
    },
    /// An operator rolled back to `to`; `tip` is the branch's tip then.
    OperatorRollback {
        to: RevRef,
        tip: Option<String>,
        healthy: bool,
        failures: String,
    },
    Suspend,
    Resume,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Repair drift of the revision applied now.
    Heal,
    /// The tip is quarantined: apply nothing (the status says why).
    Refuse { reason: String },
    /// Verify, render (and pull the images of) the tip.
    Prepare,
    /// Not yet: the status says what it waits for.
    Wait { phase: Phase, waiting: Waiting },
    /// Apply the prepared tip; `forced` says what it went past, for the
    /// history and the events (`--now`, a lock's timeout).
    Apply { forced: Option<String> },
    /// Run the health window of the revision just applied.
    RunHealth,
    /// It passed: it is last-known-good now (record it, say it).
    Promote,
    /// Record a revision refused before its first write as failed.
    Reject { commit: String, quarantined: bool },
    /// A revision failed after its first write: return every resource to
    /// `to` (last-known-good; `None`: the state before tend's first
    /// revision), then tell [`Event::RolledBack`]. `quarantined`: the commit
    /// is not applied again automatically.
    RollBack { commit: String, to: Option<RevRef>, quarantined: bool, tries: u32 },
    /// A revision failed and `[apply].rollback` is off: it stays in place.
    KeepFailed { commit: String },
    /// At start: the revision in place (`left`) was not last-known-good (its
    /// health window did not end); the state is back on last-known-good,
    /// whose resources the driver restores. `died`: the agent died during
    /// the window (else it stopped cleanly).
    Restore { left: RevRef, died: bool },
    /// The agent died `crash_limit` times applying `commit`: record it as
    /// failed and report it (history, a `failed` and a `rolled_back` event,
    /// the fleet's circuit breaker). It is quarantined with `reason`; `seq`:
    /// its history record, when it got as far as one.
    Crashed { commit: String, reason: String, seq: Option<u64> },
}

/// The rules `step` needs from the local config.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// `[apply].retry.limit`: transient failures of one commit before it is
    /// quarantined.
    pub retry_limit: u32,
    /// `[apply].crash_limit`: deaths of the agent while one revision is
    /// applied before it is failed.
    pub crash_limit: u32,
    /// `[apply].rollback`: return to last-known-good when a revision fails.
    pub rollback: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { retry_limit: 5, crash_limit: 2, rollback: true }
    }
}

/// The decision step. Pure: the same input gives the same output.
pub fn step(ptr: &Pointers, event: &Event, now: Timestamp, rules: Rules) -> (Pointers, Vec<Effect>) {
    let mut p = ptr.clone();
    let effects = match event {
        Event::Boot { death } => boot(&mut p, death.as_deref(), rules),
        Event::Stop => {
            if let Some(a) = p.attempt.as_mut() {
                a.running = false;
            }
            Vec::new()
        }
        Event::Unreachable { error } => {
            p.unreachable = Some(error.clone());
            p.error = Some(format!("source: {error}"));
            if p.current.is_none() {
                p.phase = Some(Phase::Failed);
            }
            if p.suspended { Vec::new() } else { vec![Effect::Heal] }
        }
        Event::Tip { commit, render_key, retry } => {
            // The driver passes a tip on only once it reaches the import.
            p.imported = None;
            p.imported_from = None;
            p.behind = None;
            tip(&mut p, commit, render_key, *retry)
        }
        Event::Import { commit, render_key, from, unreachable } => {
            p.imported = Some(commit.clone());
            p.imported_from = Some(from.clone());
            p.behind = None;
            let fx = tip(&mut p, commit, render_key, false);
            // Still offline: the status says so while the import waits.
            p.unreachable.clone_from(unreachable);
            fx
        }
        Event::Behind { error } => {
            p.unreachable = None;
            p.behind = Some(error.clone());
            if p.suspended { Vec::new() } else { vec![Effect::Heal] }
        }
        Event::Prepared { commit, gate, now: told } => prepared(&mut p, commit, gate, *told, now),
        Event::Refused { commit, kind, refusal, error } => {
            // Refused before its first write (something in the way, not
            // enough space): a later death is not one during its apply.
            if let Some(a) = p.attempt.as_mut().filter(|a| a.commit == *commit) {
                a.running = false;
            }
            let quarantined = *kind == ErrorKind::Permanent;
            if quarantined {
                p.quarantine.insert(commit.clone(), refusal.why().into());
            }
            p.waiting = None;
            p.target = Some(commit.clone());
            p.phase = Some(Phase::Failed);
            p.error = Some(error.clone());
            vec![Effect::Reject { commit: commit.clone(), quarantined }, Effect::Heal]
        }
        Event::Applying { commit } => {
            // Deaths count per revision: carried over for the same commit.
            let (deaths, last_death) = match p.attempt.take() {
                Some(a) if a.commit == *commit => (a.deaths, a.last_death),
                _ => (0, None),
            };
            p.attempt = Some(Attempt { commit: commit.clone(), deaths, last_death, running: true });
            Vec::new()
        }
        Event::Applied { current } => {
            p.current = Some(current.clone());
            p.current_gated = false;
            p.transient = None;
            p.waiting = None;
            p.phase = Some(Phase::Progressing);
            p.error = None;
            vec![Effect::RunHealth]
        }
        Event::Health { healthy: true, .. } => {
            p.last_good.clone_from(&p.current);
            p.current_gated = true;
            p.attempt = None;
            p.heal_failed = false;
            p.phase = Some(Phase::Synced);
            p.error = None;
            vec![Effect::Promote]
        }
        Event::Health { healthy: false, failures } => match p.current.clone() {
            Some(c) => {
                let error = format!("revision {} is unhealthy: {failures}", short(&c.commit));
                failed(&mut p, &c, ErrorKind::Permanent, &error, rules)
            }
            None => Vec::new(),
        },
        Event::Failed { record, kind, error } => failed(&mut p, record, *kind, error, rules),
        Event::RolledBack { restored, detail } => {
            let error = p.error.take().unwrap_or_default();
            if *restored {
                p.current.clone_from(&p.last_good);
                p.current_gated = true;
                p.phase = Some(Phase::RolledBack);
                let to = match &p.last_good {
                    Some(r) => format!("rolled back to {}", short(&r.commit)),
                    None => "rolled back to the state before tend's first revision".into(),
                };
                p.error = Some(format!("{error}; {to}"));
            } else {
                p.phase = Some(Phase::Failed);
                p.error = Some(format!("{error}; rollback failed too: {detail}"));
            }
            Vec::new()
        }
        Event::Healed => {
            let recovered = std::mem::take(&mut p.heal_failed);
            p.unreachable = None;
            let settled = !matches!(p.phase, Some(Phase::Degraded | Phase::RolledBack));
            if recovered || settled {
                p.phase = Some(Phase::Synced);
                p.error = None;
            }
            p.target = p.current.as_ref().map(|c| c.commit.clone());
            Vec::new()
        }
        Event::HealFailed { error } => {
            p.heal_failed = true;
            p.phase = Some(Phase::Degraded);
            p.error = Some(error.clone());
            Vec::new()
        }
        Event::OperatorRollback { to, tip, healthy, failures } => {
            p.current = Some(to.clone());
            p.current_gated = true;
            if *healthy {
                p.last_good = Some(to.clone());
            }
            p.waiting = None;
            p.transient = None;
            p.attempt = None;
            if let Some(t) = tip.as_ref().filter(|t| **t != to.commit) {
                p.quarantine.insert(t.clone(), format!("held: an operator rolled back to {}", short(&to.commit)));
            }
            p.phase = Some(if !healthy {
                Phase::Degraded
            } else if p.target.as_deref().is_none_or(|t| t == to.commit) {
                Phase::Synced
            } else {
                Phase::RolledBack
            });
            p.error = (!healthy).then(|| format!("revision {} is unhealthy: {failures}", short(&to.commit)));
            Vec::new()
        }
        Event::Suspend => {
            p.suspended = true;
            Vec::new()
        }
        Event::Resume => {
            p.suspended = false;
            Vec::new()
        }
    };
    (p, effects)
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn boot(p: &mut Pointers, death: Option<&str>, rules: Rules) -> Vec<Effect> {
    let mut effects = Vec::new();
    let died = p.attempt.as_ref().is_some_and(|a| a.running);
    if let Some(a) = p.attempt.as_mut().filter(|a| a.running) {
        a.running = false;
        a.deaths += 1;
        a.last_death = death.map(str::to_owned);
        if a.deaths >= rules.crash_limit.max(1) {
            let how = a.last_death.as_deref().map(|d| format!(" (the last time: {d})")).unwrap_or_default();
            let reason = format!("the agent died {} times while applying it{how}", a.deaths);
            let commit = a.commit.clone();
            p.attempt = None;
            p.transient = None;
            p.waiting = None;
            p.quarantine.insert(commit.clone(), reason.clone());
            let seq = p.current.as_ref().filter(|c| !p.current_gated && c.commit == commit).map(|c| c.seq);
            let to = match &p.last_good {
                Some(r) => format!("rolled back to {}", short(&r.commit)),
                None => "rolled back to the state before tend's first revision".into(),
            };
            p.phase = Some(if p.last_good.is_some() { Phase::RolledBack } else { Phase::Failed });
            p.error = Some(format!("revision {} failed: {reason}; {to}", short(&commit)));
            p.target = Some(commit.clone());
            effects.push(Effect::Crashed { commit, reason, seq });
        }
    }
    // A revision whose health window did not end is not last-known-good.
    if let Some(left) = p.current.clone().filter(|_| !p.current_gated) {
        p.current.clone_from(&p.last_good);
        p.current_gated = true;
        effects.push(Effect::Restore { left, died });
    }
    effects.push(Effect::Heal);
    effects
}

fn tip(p: &mut Pointers, commit: &str, render_key: &str, retry: bool) -> Vec<Effect> {
    p.unreachable = None;
    // The branch moved: what held the old tip no longer applies.
    if !p.quarantine.contains_key(commit) {
        p.quarantine.clear();
    }
    if p.transient.as_ref().is_some_and(|(c, _)| c != commit) {
        p.transient = None;
    }
    if p.waiting.as_ref().is_some_and(|w| w.commit != commit) {
        p.waiting = None;
    }
    if retry {
        p.quarantine.remove(commit);
        p.transient = None;
    }
    if p.suspended {
        return vec![Effect::Heal];
    }
    if let Some(reason) = p.quarantine.get(commit) {
        let reason = reason.clone();
        p.target = Some(commit.to_owned());
        p.error = Some(format!(
            "revision {} is quarantined ({reason}); it is not applied again until the branch moves or `tend sync --retry`",
            short(commit)
        ));
        return vec![Effect::Refuse { reason }, Effect::Heal];
    }
    let unchanged =
        p.current_gated && p.current.as_ref().is_some_and(|c| c.commit == commit && c.render_key == render_key);
    if unchanged { vec![Effect::Heal] } else { vec![Effect::Prepare] }
}

fn prepared(p: &mut Pointers, commit: &str, gate: &Gate, told: bool, now: Timestamp) -> Vec<Effect> {
    let previous = p.waiting.take().filter(|w| w.commit == commit);
    p.target = Some(commit.to_owned());
    p.wave = gate.wave.as_ref().map(|(w, _)| w.clone());
    let since = |reason: WaitingFor| previous.as_ref().filter(|w| w.waiting_for == reason).map_or(now, |w| w.since);
    let mut wait = |phase: Phase, waiting_for: WaitingFor, due_at: Option<Timestamp>, detail: String| {
        let waiting = Waiting {
            commit: commit.to_owned(),
            waiting_for,
            due_at,
            since: since(waiting_for),
            detail,
            note: gate.note.clone(),
        };
        p.phase = Some(phase);
        p.error = (phase == Phase::Held).then(|| format!("held: revision {} {}", short(commit), waiting.detail));
        p.waiting = Some(waiting.clone());
        vec![Effect::Wait { phase, waiting }, Effect::Heal]
    };
    // The fleet's failures first: a held revision is the news, whatever else
    // it would wait for.
    if let (Some(failing), Some(max)) = (&gate.failing, gate.max_failed)
        && failing.len() >= max as usize
        && !told
    {
        let detail = format!("failed on {} gateways (max_failed {max}): {}", failing.len(), failing.join(", "));
        return wait(Phase::Held, WaitingFor::Fleet, None, detail);
    }
    let mut forced = Vec::new();
    if let Some((wave, due)) = &gate.wave
        && *due > now
    {
        if !told {
            return wait(Phase::Waiting, WaitingFor::Wave, Some(*due), format!("wave {wave}"));
        }
        forced.push(format!("wave {wave} not due until {due}"));
    }
    if let Some((opens, windows)) = &gate.window_closed {
        if !told {
            return wait(Phase::Waiting, WaitingFor::Window, *opens, format!("windows {windows}"));
        }
        forced.push(format!("outside the windows {windows}"));
    }
    if told && !forced.is_empty() {
        forced.insert(0, "--now".into());
    }
    if !gate.locks.is_empty() {
        let since = since(WaitingFor::Lock);
        let timeout_at = gate.lock_timeout.and_then(|t| jiff::SignedDuration::try_from(t).ok()).map(|t| since + t);
        match timeout_at {
            Some(at) if at <= now => forced.push(format!("lock_timeout: {} held since {since}", gate.locks.join(", "))),
            _ => return wait(Phase::Waiting, WaitingFor::Lock, timeout_at, gate.locks.join(", ")),
        }
    }
    // Applied next: a new revision in progress, nothing waited for.
    p.phase = Some(Phase::Progressing);
    p.error = None;
    vec![Effect::Apply { forced: (!forced.is_empty()).then(|| forced.join("; ")) }]
}

fn failed(p: &mut Pointers, record: &RevRef, kind: ErrorKind, error: &str, rules: Rules) -> Vec<Effect> {
    let commit = record.commit.as_str();
    let tries = match (&p.transient, kind) {
        (Some((c, n)), ErrorKind::Transient) if c == commit => n + 1,
        (_, ErrorKind::Transient) => 1,
        (_, ErrorKind::Permanent) => 0,
    };
    let quarantined = kind == ErrorKind::Permanent || tries >= rules.retry_limit.max(1);
    p.transient = (!quarantined && kind == ErrorKind::Transient).then(|| (commit.to_owned(), tries));
    p.waiting = None;
    p.attempt = None;
    p.target = Some(commit.to_owned());
    if quarantined {
        let why = match kind {
            ErrorKind::Transient => format!("failed {tries} times"),
            ErrorKind::Permanent => "bad revision".to_owned(),
        };
        p.quarantine.insert(commit.to_owned(), why);
    }
    if rules.rollback {
        // The phase and the final error come with the rollback's outcome.
        p.error = Some(error.to_owned());
        vec![Effect::RollBack { commit: commit.to_owned(), to: p.last_good.clone(), quarantined, tries }]
    } else {
        // It stays in place, decided (not retried as if its window were open).
        p.current = Some(record.clone());
        p.current_gated = true;
        p.phase = Some(Phase::Degraded);
        p.error = Some(format!("{error}; rollback is off ([apply].rollback = false)"));
        vec![Effect::KeepFailed { commit: commit.to_owned() }]
    }
}
