//! The decision step under a fake clock: the rules of issue 15's first
//! acceptance point, one unit test each, then a property test that drives
//! random event sequences through `step` as the driver would and checks that
//! no `Apply` ever breaks them.

use super::*;
use proptest::prelude::*;
use std::time::Duration;

const RULES: Rules = Rules { retry_limit: 3, crash_limit: 2, rollback: true };

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn rev(seq: u64, commit: &str) -> RevRef {
    RevRef { seq, commit: commit.into(), render_key: "k".into() }
}

fn tip(commit: &str) -> Event {
    Event::Tip { commit: commit.into(), render_key: "k".into(), retry: false }
}

fn prepared(commit: &str, gate: Gate, now: bool) -> Event {
    Event::Prepared { commit: commit.into(), gate, now }
}

/// SPEC §9: an imported commit is decided as a tip; a source that is behind
/// it only repairs; the source's tip, once the driver lets it through, ends
/// the import's hold.
#[test]
fn an_import_is_a_tip_and_holds_the_source_until_it_catches_up() {
    let import = Event::Import { commit: "i".into(), render_key: "k".into(), from: "f.tend".into(), unreachable: None };
    let (p, fx) = step(&synced(), &import, t(1), RULES);
    assert_eq!(fx, vec![Effect::Prepare]);
    assert_eq!(p.imported.as_deref(), Some("i"));
    let (p, fx) = step(&p, &Event::Behind { error: "behind".into() }, t(2), RULES);
    assert_eq!(fx, vec![Effect::Heal]);
    assert_eq!((p.behind.as_deref(), p.imported.as_deref()), (Some("behind"), Some("i")));
    let (p, _) = step(&p, &Event::Healed, t(2), RULES);
    assert_eq!(p.behind.as_deref(), Some("behind"), "a repair does not end it");
    let (p, fx) = step(&p, &tip("a"), t(3), RULES);
    assert_eq!(fx, vec![Effect::Heal]);
    assert_eq!((p.behind, p.imported), (None, None));
    // Suspended: not even a repair.
    let mut s = synced();
    s.suspended = true;
    assert_eq!(step(&s, &Event::Behind { error: "b".into() }, t(4), RULES).1, vec![]);
}

/// A gateway with `a` applied and healthy.
fn synced() -> Pointers {
    let (p, _) = step(&Pointers::default(), &Event::Applied { current: rev(1, "a") }, t(0), RULES);
    let (p, fx) = step(&p, &Event::Health { healthy: true, failures: String::new() }, t(0), RULES);
    assert_eq!(fx, vec![Effect::Promote]);
    p
}

/// `synced`, then `commit` applied: its health window runs.
fn in_health_window(commit: &str) -> Pointers {
    let (p, _) = step(&synced(), &Event::Applying { commit: commit.into() }, t(1), RULES);
    let (p, fx) = step(&p, &Event::Applied { current: rev(2, commit) }, t(1), RULES);
    assert_eq!(fx, vec![Effect::RunHealth]);
    p
}

/// `commit` failed after its first write (recorded as seq 9).
fn fail(commit: &str, kind: ErrorKind) -> Event {
    Event::Failed { record: rev(9, commit), kind, error: format!("apply of {commit} failed") }
}

fn boot(death: Option<&str>) -> Event {
    Event::Boot { death: death.map(str::to_owned) }
}

fn applies(fx: &[Effect]) -> bool {
    fx.iter().any(|e| matches!(e, Effect::Apply { .. }))
}

fn waits_for(fx: &[Effect]) -> Option<(Phase, WaitingFor, Option<Timestamp>)> {
    fx.iter().find_map(|e| match e {
        Effect::Wait { phase, waiting } => Some((*phase, waiting.waiting_for, waiting.due_at)),
        _ => None,
    })
}

#[test]
fn the_same_revision_is_repaired_and_a_new_one_prepared() {
    let p = synced();
    assert_eq!(step(&p, &tip("a"), t(1), RULES).1, vec![Effect::Heal]);
    assert_eq!(step(&p, &tip("b"), t(1), RULES).1, vec![Effect::Prepare]);
    // A new render key (a new allowed-signers file, say) renders again.
    let other_key = Event::Tip { commit: "a".into(), render_key: "k2".into(), retry: false };
    assert_eq!(step(&p, &other_key, t(1), RULES).1, vec![Effect::Prepare]);
    // A revision whose health window did not end is decided again.
    let (p, _) = step(&p, &Event::Applied { current: rev(2, "b") }, t(2), RULES);
    assert_eq!(step(&p, &tip("b"), t(3), RULES).1, vec![Effect::Prepare]);
}

#[test]
fn a_quarantined_revision_is_refused_until_retried_or_the_branch_moves() {
    let (p, fx) = step(&synced(), &fail("b", ErrorKind::Permanent), t(1), RULES);
    assert_eq!(fx, vec![Effect::RollBack { commit: "b".into(), to: Some(rev(1, "a")), quarantined: true, tries: 0 }]);
    let (p, fx) = step(&p, &tip("b"), t(2), RULES);
    assert!(matches!(&fx[..], [Effect::Refuse { reason }, Effect::Heal] if reason == "bad revision"), "{fx:?}");
    // --retry lifts it.
    let retry = Event::Tip { commit: "b".into(), render_key: "k".into(), retry: true };
    assert_eq!(step(&p, &retry, t(3), RULES).1, vec![Effect::Prepare]);
    // So does a new commit, for good: the old tip is free again after it.
    let (p, fx) = step(&p, &tip("c"), t(3), RULES);
    assert_eq!(fx, vec![Effect::Prepare]);
    assert!(p.quarantine.is_empty());
}

#[test]
fn transient_failures_are_retried_up_to_the_limit_and_permanent_ones_quarantined_at_once() {
    let mut p = synced();
    for n in 1..RULES.retry_limit {
        let (q, fx) = step(&p, &fail("b", ErrorKind::Transient), t(n.into()), RULES);
        assert_eq!(
            fx,
            vec![Effect::RollBack { commit: "b".into(), to: Some(rev(1, "a")), quarantined: false, tries: n }]
        );
        assert_eq!(q.transient, Some(("b".into(), n)));
        assert_eq!(step(&q, &tip("b"), t(10), RULES).1, vec![Effect::Prepare], "retried after {n} failures");
        p = q;
    }
    let (p, fx) = step(&p, &fail("b", ErrorKind::Transient), t(9), RULES);
    assert_eq!(
        fx,
        vec![Effect::RollBack {
            commit: "b".into(),
            to: Some(rev(1, "a")),
            quarantined: true,
            tries: RULES.retry_limit
        }]
    );
    assert_eq!(p.quarantine["b"], "failed 3 times");
    assert_eq!(p.transient, None);
    // A transient failure of another commit starts its own count.
    let (p, _) = step(&synced(), &fail("b", ErrorKind::Transient), t(1), RULES);
    let (p, _) = step(&p, &tip("c"), t(2), RULES);
    let (p, _) = step(&p, &fail("c", ErrorKind::Transient), t(3), RULES);
    assert_eq!(p.transient, Some(("c".into(), 1)));
    // An unhealthy revision is a permanent failure.
    let (p, _) = step(&synced(), &Event::Applied { current: rev(2, "b") }, t(1), RULES);
    let (p, fx) = step(&p, &Event::Health { healthy: false, failures: "check api: refused".into() }, t(2), RULES);
    assert_eq!(fx, vec![Effect::RollBack { commit: "b".into(), to: Some(rev(1, "a")), quarantined: true, tries: 0 }]);
    assert!(p.quarantine.contains_key("b"));
}

#[test]
fn an_operators_rollback_is_not_undone_by_the_next_poll() {
    let (p, _) = step(&synced(), &Event::Applied { current: rev(2, "b") }, t(1), RULES);
    let (p, _) = step(&p, &Event::Health { healthy: true, failures: String::new() }, t(2), RULES);
    let back =
        Event::OperatorRollback { to: rev(1, "a"), tip: Some("b".into()), healthy: true, failures: String::new() };
    let (p, fx) = step(&p, &back, t(3), RULES);
    assert!(fx.is_empty());
    assert_eq!(p.current, Some(rev(1, "a")));
    let (p, fx) = step(&p, &tip("b"), t(4), RULES);
    assert!(matches!(&fx[0], Effect::Refuse { reason } if reason.contains("an operator rolled back to a")), "{fx:?}");
    // The next commit rolls out as usual.
    assert_eq!(step(&p, &tip("c"), t(5), RULES).1, vec![Effect::Prepare]);
}

#[test]
fn a_revision_waits_for_its_wave_unless_told_now() {
    let gate = Gate { wave: Some(("early".into(), t(3600))), ..Gate::default() };
    let (p, fx) = step(&synced(), &prepared("b", gate.clone(), false), t(10), RULES);
    assert_eq!(waits_for(&fx), Some((Phase::Waiting, WaitingFor::Wave, Some(t(3600)))));
    assert!(fx.contains(&Effect::Heal), "drift is repaired while waiting");
    assert_eq!(p.waiting.as_ref().unwrap().detail, "wave early");
    assert!(!applies(&step(&p, &prepared("b", gate.clone(), false), t(3599), RULES).1));
    assert_eq!(step(&p, &prepared("b", gate.clone(), false), t(3600), RULES).1, vec![Effect::Apply { forced: None }]);
    let (_, fx) = step(&p, &prepared("b", gate, true), t(11), RULES);
    assert!(matches!(&fx[..], [Effect::Apply { forced: Some(f) }] if f.starts_with("--now; wave early")), "{fx:?}");
}

#[test]
fn outside_every_window_nothing_new_is_applied() {
    let closed = Gate { window_closed: Some((Some(t(7200)), "Mon-Fri 22:00-05:00".into())), ..Gate::default() };
    let (p, fx) = step(&synced(), &prepared("b", closed.clone(), false), t(10), RULES);
    assert_eq!(waits_for(&fx), Some((Phase::Waiting, WaitingFor::Window, Some(t(7200)))));
    // The driver finds the window open later: applied.
    assert_eq!(
        step(&p, &prepared("b", Gate::default(), false), t(7200), RULES).1,
        vec![Effect::Apply { forced: None }]
    );
    let (_, fx) = step(&p, &prepared("b", closed, true), t(20), RULES);
    assert!(applies(&fx), "--now goes past a window");
}

#[test]
fn a_held_lock_waits_even_for_now_until_its_timeout() {
    let locked = Gate { locks: vec!["/run/tend/locks/modbus".into()], ..Gate::default() };
    let (p, fx) = step(&synced(), &prepared("b", locked.clone(), false), t(10), RULES);
    assert_eq!(waits_for(&fx), Some((Phase::Waiting, WaitingFor::Lock, None)));
    let (p, fx) = step(&p, &prepared("b", locked.clone(), true), t(20), RULES);
    assert!(!applies(&fx), "--now does not break a lock");
    assert_eq!(p.waiting.as_ref().unwrap().since, t(10), "since when is kept");
    // lock_timeout counts from when the lock was first seen.
    let timed = Gate { lock_timeout: Some(Duration::from_secs(60)), ..locked };
    let (p, fx) = step(&p, &prepared("b", timed.clone(), false), t(30), RULES);
    assert_eq!(waits_for(&fx), Some((Phase::Waiting, WaitingFor::Lock, Some(t(70)))));
    let (_, fx) = step(&p, &prepared("b", timed, false), t(70), RULES);
    assert!(matches!(&fx[..], [Effect::Apply { forced: Some(f) }] if f.starts_with("lock_timeout")), "{fx:?}");
    // The lock is gone: applied.
    assert_eq!(step(&p, &prepared("b", Gate::default(), false), t(31), RULES).1, vec![Effect::Apply { forced: None }]);
}

#[test]
fn the_fleets_failures_hold_a_revision() {
    let gate = |n: usize| Gate {
        failing: Some((0..n).map(|i| format!("gw-{i}")).collect()),
        max_failed: Some(3),
        ..Gate::default()
    };
    assert!(applies(&step(&synced(), &prepared("b", gate(2), false), t(1), RULES).1));
    let (p, fx) = step(&synced(), &prepared("b", gate(3), false), t(1), RULES);
    assert_eq!(waits_for(&fx), Some((Phase::Held, WaitingFor::Fleet, None)));
    assert!(p.waiting.unwrap().detail.contains("gw-0, gw-1, gw-2"));
    assert!(applies(&step(&synced(), &prepared("b", gate(3), true), t(1), RULES).1), "an operator's --now");
    // The breaker off (no MQTT): nothing holds.
    let off = Gate { failing: None, max_failed: Some(3), ..Gate::default() };
    assert!(applies(&step(&synced(), &prepared("b", off, false), t(1), RULES).1));
}

#[test]
fn a_suspended_gateway_only_repairs() {
    let (p, _) = step(&synced(), &Event::Suspend, t(1), RULES);
    assert_eq!(step(&p, &tip("b"), t(2), RULES).1, vec![Effect::Heal]);
    let (p, _) = step(&p, &Event::Resume, t(3), RULES);
    assert_eq!(step(&p, &tip("b"), t(4), RULES).1, vec![Effect::Prepare]);
}

/// One thing the world does, for the property test.
#[derive(Debug, Clone)]
enum Op {
    /// A poll finds this tip (0..3), with `--retry`, `--now`.
    Poll {
        tip: usize,
        retry: bool,
        now: bool,
    },
    /// Time passes (seconds).
    Wait(u16),
    /// The conditions the next gate reports.
    Wave(Option<u16>),
    Window(bool),
    Lock(bool),
    Failing(u8),
    /// How the next apply or health window ends.
    Outcome(u8),
    OperatorRollback,
    Suspend(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, any::<bool>(), any::<bool>()).prop_map(|(tip, retry, now)| Op::Poll { tip, retry, now }),
        2 => (0..4000u16).prop_map(Op::Wait),
        1 => proptest::option::of(0..4000u16).prop_map(Op::Wave),
        1 => any::<bool>().prop_map(Op::Window),
        1 => any::<bool>().prop_map(Op::Lock),
        1 => (0..5u8).prop_map(Op::Failing),
        2 => (0..4u8).prop_map(Op::Outcome),
        1 => Just(Op::OperatorRollback),
        1 => any::<bool>().prop_map(Op::Suspend),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever happens, in whatever order, no Apply breaks a rule.
    #[test]
    fn no_apply_breaks_a_rule(ops in proptest::collection::vec(op(), 1..60)) {
        const TIPS: [&str; 3] = ["a", "b", "c"];
        let mut p = synced();
        let mut clock = t(0);
        let (mut wave, mut window_closed, mut locked, mut failing, mut outcome) = (None, false, false, 0u8, 0u8);
        let lock_timeout = Duration::from_secs(1800);
        // What the rules are about, tracked from the effects alone.
        let mut held: std::collections::BTreeSet<String> = Default::default();
        let mut lock_seen: Option<(String, Timestamp)> = None;
        let mut last_tip: Option<String> = None;
        let mut seq = 1;
        for op in ops {
            match op {
                Op::Wait(s) => clock += jiff::SignedDuration::from_secs(s.into()),
                Op::Wave(w) => wave = w,
                Op::Window(c) => window_closed = c,
                Op::Lock(l) => locked = l,
                Op::Failing(n) => failing = n,
                Op::Outcome(o) => outcome = o,
                Op::Suspend(s) => p = step(&p, if s { &Event::Suspend } else { &Event::Resume }, clock, RULES).0,
                Op::OperatorRollback => {
                    if let Some(lg) = p.last_good.clone() {
                        let tip = last_tip.clone();
                        if let Some(t) = tip.as_ref().filter(|t| **t != lg.commit) {
                            held.insert(t.clone());
                        }
                        p = step(&p, &Event::OperatorRollback { to: lg, tip, healthy: true, failures: String::new() }, clock, RULES).0;
                    }
                }
                Op::Poll { tip, retry, now } => {
                    let commit = TIPS[tip].to_owned();
                    if last_tip.as_ref() != Some(&commit) {
                        held.clear();
                        lock_seen = None;
                    }
                    if retry {
                        held.remove(&commit);
                    }
                    last_tip = Some(commit.clone());
                    let ev = Event::Tip { commit: commit.clone(), render_key: "k".into(), retry };
                    let (q, fx) = step(&p, &ev, clock, RULES);
                    p = q;
                    if fx.iter().any(|e| matches!(e, Effect::Refuse { .. })) {
                        prop_assert!(held.contains(&commit) || p.quarantine.contains_key(&commit));
                    }
                    if !fx.contains(&Effect::Prepare) {
                        continue;
                    }
                    prop_assert!(!held.contains(&commit), "{commit} prepared while held");
                    prop_assert!(!p.suspended, "prepared while suspended");
                    let due = wave.map(|s| t(0) + jiff::SignedDuration::from_secs(s.into()));
                    let gate = Gate {
                        wave: due.map(|d| ("w".to_owned(), d)),
                        window_closed: window_closed.then(|| (None, "Sat 00:00-01:00".to_owned())),
                        locks: if locked { vec!["app".into()] } else { Vec::new() },
                        lock_timeout: Some(lock_timeout),
                        failing: Some((0..failing).map(|i| format!("gw-{i}")).collect()),
                        max_failed: Some(3),
                        note: None,
                    };
                    let (q, fx) = step(&p, &prepared(&commit, gate, now), clock, RULES);
                    p = q;
                    if locked && lock_seen.as_ref().is_none_or(|(c, _)| *c != commit) {
                        lock_seen = Some((commit.clone(), clock));
                    }
                    if !locked {
                        lock_seen = None;
                    }
                    let Some(Effect::Apply { forced }) = fx.iter().find(|e| matches!(e, Effect::Apply { .. })) else {
                        continue;
                    };
                    // The rules, checked at every apply.
                    if !now {
                        prop_assert!(due.is_none_or(|d| d <= clock), "applied before its wave was due");
                        prop_assert!(!window_closed, "applied outside every window");
                        prop_assert!(failing < 3, "applied a revision the fleet holds");
                    }
                    if locked {
                        let (_, since) = lock_seen.clone().expect("seen");
                        prop_assert!(since + jiff::SignedDuration::try_from(lock_timeout).unwrap() <= clock,
                            "applied under a lock before its timeout");
                        prop_assert!(forced.as_deref().is_some_and(|f| f.contains("lock_timeout")));
                    }
                    seq += 1;
                    let (q, _) = step(&p, &Event::Applied { current: rev(seq, &commit) }, clock, RULES);
                    p = q;
                    let (q, fx) = match outcome {
                        0 => step(&p, &Event::Health { healthy: true, failures: String::new() }, clock, RULES),
                        1 => step(&p, &Event::Health { healthy: false, failures: "check api: refused".into() }, clock, RULES),
                        2 => step(&p, &fail(&commit, ErrorKind::Transient), clock, RULES),
                        _ => step(&p, &fail(&commit, ErrorKind::Permanent), clock, RULES),
                    };
                    p = q;
                    if fx.iter().any(|e| matches!(e, Effect::RollBack { quarantined: true, .. })) {
                        held.insert(commit.clone());
                    }
                    if fx.iter().any(|e| matches!(e, Effect::RollBack { .. })) {
                        // The driver returns to last-known-good and says so:
                        // the step moves the state back, nothing beside it.
                        let (q, _) = step(&p, &Event::RolledBack { restored: true, detail: String::new() }, clock, RULES);
                        p = q;
                        prop_assert_eq!(&p.current, &p.last_good);
                    }
                    // Last-known-good only ever is a revision that passed its window.
                    if outcome != 0 {
                        prop_assert!(p.last_good.as_ref().is_none_or(|g| g.commit != commit || g.seq != seq));
                    }
                }
            }
        }
    }
}

#[test]
fn a_death_in_the_health_window_returns_to_last_known_good_and_counts_once() {
    let p = in_health_window("b");
    let (p, fx) = step(&p, &boot(None), t(2), RULES);
    assert_eq!(fx, vec![Effect::Restore { left: rev(2, "b"), died: true }, Effect::Heal]);
    assert_eq!(p.current, Some(rev(1, "a")));
    assert!(p.current_gated);
    let a = p.attempt.clone().unwrap();
    assert_eq!((a.commit.as_str(), a.deaths, a.running), ("b", 1, false));
    // One death is not enough (a power cut): the revision is tried again.
    assert!(p.quarantine.is_empty());
    assert_eq!(step(&p, &tip("b"), t(3), RULES).1, vec![Effect::Prepare]);
    // A second start with nothing under way counts nothing.
    let (q, fx) = step(&p, &boot(None), t(3), RULES);
    assert_eq!(fx, vec![Effect::Heal]);
    assert_eq!(q, p);
    // Tried again and healthy: the count is gone.
    let (p, _) = step(&p, &Event::Applying { commit: "b".into() }, t(4), RULES);
    assert_eq!(p.attempt.as_ref().map(|a| (a.deaths, a.running)), Some((1, true)));
    let (p, _) = step(&p, &Event::Applied { current: rev(3, "b") }, t(4), RULES);
    let (p, _) = step(&p, &Event::Health { healthy: true, failures: String::new() }, t(5), RULES);
    assert_eq!(p.attempt, None);
    assert_eq!(p.last_good, Some(rev(3, "b")));
}

#[test]
fn a_revision_that_kills_the_agent_crash_limit_times_is_failed_and_quarantined() {
    let p = in_health_window("b");
    let (p, _) = step(&p, &boot(Some("killed by signal SIGKILL")), t(2), RULES);
    let (p, _) = step(&p, &tip("b"), t(3), RULES);
    let (p, _) = step(&p, &Event::Applying { commit: "b".into() }, t(3), RULES);
    // Died mid-apply this time, before its health window: current is still `a`.
    let (p, fx) = step(&p, &boot(Some("dumped core on signal SIGABRT")), t(4), RULES);
    let reason = "the agent died 2 times while applying it (the last time: dumped core on signal SIGABRT)";
    assert_eq!(fx, vec![Effect::Crashed { commit: "b".into(), reason: reason.into(), seq: None }, Effect::Heal]);
    assert_eq!(p.quarantine.get("b").map(String::as_str), Some(reason));
    assert_eq!(p.attempt, None);
    assert_eq!(p.current, Some(rev(1, "a")));
    // Refused at every poll until the branch moves or an operator retries.
    assert!(matches!(&step(&p, &tip("b"), t(5), RULES).1[..], [Effect::Refuse { .. }, Effect::Heal]));
    assert_eq!(step(&p, &tip("c"), t(5), RULES).1, vec![Effect::Prepare]);
}

#[test]
fn the_crashed_revisions_record_is_named_when_it_was_applied() {
    let p = in_health_window("b");
    let rules = Rules { crash_limit: 1, ..RULES };
    let (p, fx) = step(&p, &boot(None), t(2), rules);
    assert_eq!(
        fx,
        vec![
            Effect::Crashed {
                commit: "b".into(),
                reason: "the agent died 1 times while applying it".into(),
                seq: Some(2)
            },
            Effect::Restore { left: rev(2, "b"), died: true },
            Effect::Heal
        ]
    );
    assert_eq!(p.current, Some(rev(1, "a")));
}

#[test]
fn a_clean_stop_is_not_a_death() {
    let p = in_health_window("b");
    let (p, fx) = step(&p, &Event::Stop, t(2), RULES);
    assert!(fx.is_empty());
    let (p, fx) = step(&p, &boot(None), t(3), RULES);
    // Back on last-known-good (the window did not end), no death counted.
    assert_eq!(fx, vec![Effect::Restore { left: rev(2, "b"), died: false }, Effect::Heal]);
    assert_eq!(p.attempt.as_ref().map(|a| a.deaths), Some(0));
    for n in 0..5 {
        let (q, _) = step(&p, &Event::Applying { commit: "b".into() }, t(4 + n), RULES);
        let (q, _) = step(&q, &Event::Stop, t(4 + n), RULES);
        let (q, fx) = step(&q, &boot(None), t(4 + n), RULES);
        assert!(!fx.iter().any(|e| matches!(e, Effect::Crashed { .. })));
        assert!(q.quarantine.is_empty());
    }
}

#[test]
fn deaths_count_per_revision() {
    let p = in_health_window("b");
    let (p, _) = step(&p, &boot(None), t(2), RULES);
    // The branch moved: `c` starts from zero.
    let (p, _) = step(&p, &tip("c"), t(3), RULES);
    let (p, _) = step(&p, &Event::Applying { commit: "c".into() }, t(3), RULES);
    assert_eq!(p.attempt.as_ref().map(|a| a.deaths), Some(0));
    let (p, fx) = step(&p, &boot(None), t(4), RULES);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Crashed { .. })));
    assert!(p.quarantine.is_empty());
    // A failure decided in the window ends the attempt.
    let (p, _) = step(&p, &Event::Applying { commit: "c".into() }, t(5), RULES);
    let (p, _) = step(&p, &fail("c", ErrorKind::Permanent), t(5), RULES);
    assert_eq!(p.attempt, None);
}

/// A revision refused before its first write (not enough space, something
/// in the way, a before_apply hook) is not being applied: a later death is
/// not counted against it, and it is retried, not quarantined.
#[test]
fn a_refusal_after_applying_began_ends_the_attempt_and_a_transient_one_is_retried() {
    let (p, _) = step(&synced(), &Event::Applying { commit: "b".into() }, t(1), RULES);
    assert!(p.attempt.as_ref().is_some_and(|a| a.running));
    let refused = Event::Refused {
        commit: "b".into(),
        kind: ErrorKind::Transient,
        refusal: Refusal::Space,
        error: "full".into(),
    };
    let (p, fx) = step(&p, &refused, t(2), RULES);
    assert_eq!(fx, vec![Effect::Reject { commit: "b".into(), quarantined: false }, Effect::Heal]);
    assert!(p.attempt.as_ref().is_some_and(|a| !a.running));
    assert!(!p.quarantine.contains_key("b"));
    // Two deaths later, while idle: nothing is counted against b.
    let (p, fx) = step(&p, &boot(None), t(3), RULES);
    let (p, fx2) = step(&p, &boot(None), t(4), RULES);
    assert!(!fx.iter().chain(&fx2).any(|e| matches!(e, Effect::Crashed { .. })), "{fx:?} {fx2:?}");
    assert!(p.attempt.as_ref().is_none_or(|a| a.deaths == 0));
    // And the next poll prepares it again.
    assert_eq!(step(&p, &tip("b"), t(5), RULES).1, vec![Effect::Prepare]);
}
