//! Deterministic simulation of the whole agent (issue 23, Build 3): the real
//! driver and decision step against in-memory outside systems — the store
//! (`store::memory`, with sled's durability), the source
//! (`source::memory`, flapping and force-pushed back), the clock (jumping
//! both ways), checks and hooks — and real files in a temporary directory,
//! with faults injected at every step: the agent killed at any store write,
//! file write or command (dropped, and a new one started on what a kill
//! leaves), a full disk, drift by hand. Bundles come from proptest
//! strategies, hostile ones included. One seed gives one run, exactly.
//!
//! After every step the invariants are checked:
//! 1. no file torn or half-written: after a completed sync or start, the
//!    files are exactly the revision in place (or nothing), and no
//!    temporary file is left;
//! 2. last-known-good is always a revision that passed its health window;
//! 3. a quarantined revision is never applied again without `--retry` or a
//!    new branch tip;
//! 4. the status always agrees with the state (revision, last-known-good,
//!    phase);
//! 5. a revision that kills the agent is applied at most `crash_limit` times
//!    in a row, then quarantined and reported;
//! 6. a start leaves the gateway on last-known-good, enforced.
//!
//! `cargo test -p tend --lib sync::sim` runs [`SEEDS`] seeds (about a
//! minute); `TEND_SIM_SEEDS=N TEND_SIM_START=S` more, `TEND_SIM_SEED=S`
//! replays one (printing each step), `TEND_SIM_STEPS=N` makes runs longer.
//! A failing run prints its seed and its steps.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};

use super::*;
use crate::bundle::Check;
use crate::health::{Probe, ProbeFuture};
use crate::sim::Killed;
use crate::source::Clock;
use crate::source::memory::{FakeClock, MemorySource};
use crate::store::memory::MemStore;

/// Seeds run by the suite.
const SEEDS: u64 = 2500;
/// Steps per run.
const STEPS: usize = 32;
/// `[apply].crash_limit` in the simulation.
const CRASH_LIMIT: u32 = 2;
const PATHS: [&str; 5] = ["etc/app/a.conf", "etc/app/b.conf", "etc/app/sub/c.conf", "etc/app/run.sh", "etc/app/d.conf"];

/// How a revision's health check behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckKind {
    None,
    Pass,
    Fail,
    /// Fails its first probes, then passes.
    Flaky,
    /// Kills the agent (a check that kills its parent).
    Die,
}

/// A revision, as the simulation writes it.
#[derive(Debug, Clone)]
struct Spec {
    files: Vec<(usize, String, &'static str)>,
    check: CheckKind,
    /// An `on_change` hook on the first file: true kills the agent.
    hook: Option<bool>,
    /// `[rollout]` with one wave due this long after the commit.
    wave_after: Option<u64>,
    hostile: Option<&'static str>,
}

fn spec() -> impl Strategy<Value = Spec> {
    let file = (0..PATHS.len(), "[a-z0-9 =\n]{0,40}", prop_oneof![Just("0644"), Just("0600"), Just("0755")]);
    let check = prop_oneof![
        3 => Just(CheckKind::None),
        4 => Just(CheckKind::Pass),
        2 => Just(CheckKind::Fail),
        1 => Just(CheckKind::Flaky),
        2 => Just(CheckKind::Die),
    ];
    let hostile = prop_oneof![
        12 => Just(None),
        1 => Just(Some("[[check]]\nname = \"x\"\ncommand = [\"true\"]\ninterval = \"18446744073709551615s\"\n")),
        1 => Just(Some("[[file]]\npath = \"/etc/shadow\"\n")),
        1 => Just(Some("[rollout]\nwaves = [{ name = \"all\", percent = 300 }]\n")),
        1 => Just(Some("this is not toml ===")),
        1 => Just(Some("include = [\"../../../outside\"]\n")),
    ];
    (
        proptest::collection::vec(file, 1..4),
        check,
        proptest::option::weighted(0.2, any::<bool>().prop_map(|die| die)),
        proptest::option::weighted(0.15, 0..7200u64),
        hostile,
    )
        .prop_map(|(files, check, hook, wave_after, hostile)| Spec { files, check, hook, wave_after, hostile })
}

impl Spec {
    /// The commit's files.
    fn tree(&self) -> Vec<(String, String)> {
        let mut toml = String::new();
        let mut files = BTreeMap::new();
        for (i, content, mode) in &self.files {
            files.insert(*i, (content.clone(), *mode));
        }
        for (n, (i, (content, mode))) in files.iter().enumerate() {
            toml.push_str(&format!("[[file]]\npath = \"/{}\"\nmode = \"{mode}\"\n", PATHS[*i]));
            if n == 0
                && let Some(die) = self.hook
            {
                toml.push_str(&format!("on_change = [\"{}\"]\n", if die { "sim-die" } else { "sim-hook" }));
            }
            let _ = content;
        }
        let command = match self.check {
            CheckKind::None => None,
            CheckKind::Pass => Some("[\"true\"]"),
            CheckKind::Fail => Some("[\"false\"]"),
            CheckKind::Flaky => Some("[\"sim-flaky\"]"),
            CheckKind::Die => Some("[\"sim-die\"]"),
        };
        if let Some(c) = command {
            toml.push_str(&format!("[[check]]\nname = \"app\"\ncommand = {c}\ninterval = \"1s\"\n"));
        }
        if let Some(after) = self.wave_after {
            toml.push_str(&format!("[rollout]\nwaves = [{{ name = \"all\", percent = 100, after = \"{after}s\" }}]\n"));
        }
        if let Some(h) = self.hostile {
            toml.push_str(h);
        }
        let mut out = vec![("dev/tend.toml".to_owned(), toml)];
        for (i, (content, _)) in files {
            out.push((format!("dev/files/{}", PATHS[i]), content));
        }
        out
    }

    /// Whether its checks pass, if it is applied. (A hook that kills the
    /// agent runs only when its file changes: a revision with one may well
    /// pass its window, when the file was already as it says.)
    fn healthy(&self) -> bool {
        matches!(self.check, CheckKind::None | CheckKind::Pass | CheckKind::Flaky)
    }
}

/// Commands a bundle runs (hooks), in memory.
struct SimRunner;

impl crate::reconcile::files::Runner for SimRunner {
    fn run(&self, command: &[String]) -> Result<String, String> {
        crate::sim::point("a command");
        match command.first().map(String::as_str) {
            Some("sim-die") => crate::sim::die("a hook that kills its parent"),
            Some("sim-hook") => Ok(String::new()),
            _ => Err("unknown command".into()),
        }
    }
}

/// A `[[check]]` in memory.
struct SimProbe {
    check: Check,
    calls: Mutex<u32>,
}

impl Probe for SimProbe {
    fn name(&self) -> &str {
        &self.check.name
    }
    fn interval(&self) -> Duration {
        self.check.interval
    }
    fn probe(&self) -> ProbeFuture<'_> {
        let n = {
            let mut c = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            *c += 1;
            *c
        };
        let command = match &self.check.probe {
            crate::bundle::Probe::Command(c) => c.first().cloned().unwrap_or_default(),
            _ => String::new(),
        };
        Box::pin(async move {
            match command.as_str() {
                "true" => Ok(()),
                "sim-die" => crate::sim::die("a health check that kills its parent"),
                "sim-flaky" if n > 2 => Ok(()),
                "sim-flaky" => Err("not yet".into()),
                _ => Err("failed".into()),
            }
        })
    }
}

/// What the simulation does at one step.
#[derive(Debug, Clone)]
enum Action {
    Push(Spec),
    /// Force-push the branch back to an earlier commit.
    Reset(usize),
    Sync {
        retry: bool,
        now: bool,
    },
    Unreachable(bool),
    Clock(i64),
    Drift(usize),
    Rollback,
    DiskFull(bool),
    /// Kill the agent at the `n`-th kill point of the next sync.
    KillIn(u64),
    Restart,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        5 => spec().prop_map(Action::Push),
        1 => (0..8usize).prop_map(Action::Reset),
        8 => (prop::bool::weighted(0.1), prop::bool::weighted(0.2)).prop_map(|(retry, now)| Action::Sync { retry, now }),
        1 => any::<bool>().prop_map(Action::Unreachable),
        2 => prop_oneof![(-86_400i64..0), (0..86_400i64), (86_400..400 * 86_400i64)].prop_map(Action::Clock),
        1 => (0..PATHS.len()).prop_map(Action::Drift),
        1 => Just(Action::Rollback),
        1 => prop::bool::weighted(0.3).prop_map(Action::DiskFull),
        3 => (0..40u64).prop_map(Action::KillIn),
        1 => Just(Action::Restart),
    ]
}

/// The outside world of one run, and the agent living in it.
struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    cfg: Config,
    store: Arc<MemStore>,
    source: Arc<MemorySource>,
    clock: Arc<FakeClock>,
    agent: Option<(Arc<Agent>, tokio::runtime::Runtime)>,
    rng: fastrand::Rng,
    /// Commits pushed, with how they behave.
    commits: Vec<(String, Spec)>,
    /// Events raised so far (the reporter's view), by kind and revision.
    events: Vec<serde_json::Value>,
    /// Kills of the agent during each revision's apply, since its tip came.
    deaths: BTreeMap<String, u32>,
    /// The newest event taken.
    last_seq: u64,
    armed: Option<u64>,
    full: bool,
    log: Vec<String>,
}

impl World {
    fn new(seed: u64) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let text = format!(
            "device_id = \"gw-1\"\nfleet = \"sim\"\nstate_dir = \"{state}\"\n[source]\nurl = \"memory:\"\npath = \"dev\"\n\
             [files]\nroot = \"{root}\"\nallow = [\"/etc/app\"]\nallow_hooks = true\n\
             [apply]\nhealth_timeout = \"10s\"\ncrash_limit = {CRASH_LIMIT}\nretry = {{ limit = 3 }}\nlock_dir = \"{locks}\"\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n",
            state = tmp.path().join("state").display(),
            root = root.display(),
            locks = tmp.path().join("locks").display(),
        );
        let cfg = Config::from_str(&text, &tmp.path().join("agent.toml")).unwrap();
        World {
            _tmp: tmp,
            root,
            cfg,
            store: Arc::new(MemStore::new()),
            source: Arc::new(MemorySource::new()),
            clock: Arc::new(FakeClock::new("2026-12-01T10:00:00Z".parse().unwrap())),
            agent: None,
            rng: fastrand::Rng::with_seed(seed),
            commits: Vec::new(),
            events: Vec::new(),
            deaths: BTreeMap::new(),
            last_seq: 0,
            armed: None,
            full: false,
            log: Vec::new(),
        }
    }

    /// A new agent on what is there (the daemon's start: the store's
    /// decision and the repair, before any fetch).
    fn start(&mut self, death: Option<&str>) -> Result<(), Killed> {
        let mut a =
            Agent::with_parts(self.cfg.clone(), self.store.clone(), Box::new(self.source.clone()), self.clock.clone());
        a.runner = Box::new(SimRunner);
        a.check_probe = Some(Arc::new(|c: &Check| -> Box<dyn Probe> {
            Box::new(SimProbe { check: c.clone(), calls: Mutex::new(0) })
        }));
        let agent = Arc::new(a);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        self.agent = Some((agent.clone(), rt));
        let death = death.map(str::to_owned);
        self.run(|a| async move { boot(&a, death).await.map(|_| ()) }).map(|_| ())
    }

    /// Run `f` on the agent; a kill ends it (and the agent) with `Err`.
    fn run<F, Fut, T>(&mut self, f: F) -> Result<Result<T, SyncError>, Killed>
    where
        F: FnOnce(Arc<Agent>) -> Fut,
        Fut: std::future::Future<Output = Result<T, SyncError>>,
    {
        let (agent, rt) = self.agent.as_ref().expect("started");
        let agent = agent.clone();
        crate::sim::arm(self.armed.take());
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(f(agent))));
        crate::sim::arm(None);
        match r {
            Ok(v) => Ok(v),
            Err(payload) => match payload.downcast::<Killed>() {
                Ok(k) => {
                    self.died(*k);
                    Err(*k)
                }
                Err(other) => std::panic::resume_unwind(other),
            },
        }
    }

    /// The agent was killed: nothing more of it runs; the store keeps its
    /// flushed state and a prefix of its log, the files stay as they are.
    fn died(&mut self, k: Killed) {
        let unflushed = self.store.unflushed();
        let keep = self.rng.usize(0..=unflushed);
        // Dropping the agent must not write: a kill runs no destructor, so
        // whatever it writes is past `keep` and lost with the rest.
        self.agent = None;
        self.store.kill(keep);
        // A death during an apply the store knows was under way: one the
        // next start counts (before the attempt was durable, the apply had
        // not started).
        let attempt = self.store.pointers().ok().and_then(|p| p.attempt).filter(|a| a.running);
        if let Some(a) = &attempt {
            *self.deaths.entry(a.commit.clone()).or_default() += 1;
        }
        self.log.push(format!(
            "  killed at {} (attempt {:?}; kept {keep} of {unflushed} writes)",
            k.0,
            attempt.map(|a| a.commit)
        ));
    }

    fn tip(&self) -> Option<String> {
        self.source.tip()
    }

    fn spec_of(&self, commit: &str) -> Option<&Spec> {
        self.commits.iter().find(|(c, _)| c == commit).map(|(_, s)| s)
    }

    /// The reporter's part: take the outbox's events. They are sent at
    /// least once (a removal lost in a kill sends one again, with its seq).
    fn drain_events(&mut self) {
        if let Ok(events) = self.store.events_after(self.last_seq, usize::MAX) {
            for (seq, e) in events {
                self.events.push(e);
                self.last_seq = self.last_seq.max(seq);
                let _ = self.store.remove_event(seq);
            }
        }
    }

    fn step(&mut self, action: &Action) {
        self.log.push(format!("{action:?}"));
        match action {
            Action::Push(spec) => {
                let files = spec.tree();
                let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
                let id = self.source.push(self.clock.now(), &refs);
                self.commits.push((id.clone(), spec.clone()));
                self.deaths.remove(&id);
            }
            Action::Reset(n) => {
                if !self.commits.is_empty() {
                    let (id, _) = self.commits[n % self.commits.len()].clone();
                    self.source.reset_to(&id);
                    self.deaths.remove(&id);
                }
            }
            Action::Unreachable(on) => {
                self.source.fail(on.then(|| crate::source::SourceError::transient("the source is unreachable (sim)")))
            }
            Action::Clock(secs) => {
                let now = self.clock.now();
                if let Ok(t) = now.checked_add(jiff::SignedDuration::from_secs(*secs)) {
                    self.clock.set(t);
                }
            }
            Action::Drift(i) => {
                let p = self.root.join(PATHS[*i]);
                if p.exists() {
                    std::fs::write(&p, "drifted by hand\n").unwrap();
                }
            }
            Action::DiskFull(on) => {
                self.full = *on;
                self.store.set_full(on.then(|| "No space left on device (os error 28)".to_owned()));
            }
            Action::KillIn(n) => self.armed = Some(*n),
            Action::Restart => self.restart(None),
            Action::Sync { retry, now } => self.sync(*retry, *now),
            Action::Rollback => {
                if self.agent.is_some() {
                    let _ = self.run(|a| async move { rollback(&a, None).await });
                    if self.agent.is_none() {
                        self.restart(Some("killed by signal SIGKILL"));
                    }
                }
            }
        }
    }

    fn restart(&mut self, death: Option<&str>) {
        // Until a start completes: each one may be killed too.
        let mut started = false;
        for _ in 0..20 {
            if self.start(death).is_ok() {
                started = true;
                break;
            }
        }
        if !started {
            crate::sim::arm(None);
            self.armed = None;
            self.start(death).expect("a start without a kill armed");
        }
        // 6. A start leaves the gateway on last-known-good (SPEC §3: on
        //    boot, tend re-enforces last-known-good from the store).
        let ptr = self.store.pointers().unwrap();
        assert!(
            ptr.current.is_none() || (ptr.current_gated && ptr.current == ptr.last_good),
            "after a start the revision in place is not last-known-good: {:?} vs {:?}",
            ptr.current,
            ptr.last_good
        );
        self.log.push("  -> started".into());
    }

    fn sync(&mut self, retry: bool, now: bool) {
        let tip = self.tip();
        let quarantined = self.store.pointers().map(|p| p.quarantine).unwrap_or_default();
        // An operator's --retry of a quarantined tip: its deaths count anew.
        if let Some(t) = tip.as_ref().filter(|t| retry && quarantined.contains_key(*t)) {
            self.deaths.remove(t);
        }
        let seen = self.events.len();
        let r = self.run(|a| async move { sync(&a, SyncOptions { retry, now, ..Default::default() }).await });
        let outcome = match &r {
            Ok(Ok(s)) => s.action.clone(),
            Ok(Err(e)) => format!("error: {e}"),
            Err(k) => format!("killed at {}", k.0),
        };
        self.log.push(format!("  -> {outcome}"));
        if self.agent.is_none() {
            self.restart(Some("killed by signal SIGKILL"));
        }
        self.drain_events();
        for e in &self.events[seen..] {
            self.log.push(format!(
                "     event {} {}",
                e["kind"],
                e["revision"].as_str().map_or("", |r| &r[r.len() - 4..])
            ));
        }
        let q =
            self.store.pointers().map(|p| p.quarantine.keys().map(|c| c[c.len() - 4..].to_owned()).collect::<Vec<_>>());
        self.log.push(format!("     quarantined after: {q:?}"));
        // 3. A quarantined tip is not applied again without --retry.
        if let Some(t) = tip.filter(|t| quarantined.contains_key(t) && !retry) {
            let applied =
                self.events[seen..].iter().any(|e| e["kind"] == "sync_started" && e["revision"] == t.as_str());
            assert!(!applied, "quarantined revision {t} was applied again");
        }
    }

    /// The invariants, after a step.
    fn check(&mut self) {
        self.drain_events();
        let ptr = self.store.pointers().unwrap();
        let status = self.store.status().unwrap();
        // 4. The status agrees with the state.
        if let Some(s) = &status {
            assert_eq!(s.revision, ptr.current.as_ref().map(|c| c.commit.clone()), "status revision vs state");
            assert_eq!(
                s.last_good_revision,
                ptr.last_good.as_ref().map(|c| c.commit.clone()),
                "status last_good vs state"
            );
            if let Some(phase) = ptr.phase {
                assert_eq!(s.phase, phase, "status phase vs state");
            }
        }
        if ptr.phase == Some(Phase::Synced) {
            assert!(ptr.current_gated && ptr.current == ptr.last_good, "synced but not on last-known-good: {ptr:?}");
        }
        // 2. Last-known-good passed its health window.
        if let Some(lkg) = &ptr.last_good {
            let spec = self.spec_of(&lkg.commit).expect("a pushed commit");
            assert!(
                spec.healthy() && spec.hostile.is_none(),
                "last-known-good {} never passed its window: {spec:?}",
                lkg.commit
            );
        }
        // 5. A revision that kills the agent: at most crash_limit deaths,
        //    then quarantined and reported.
        for (commit, deaths) in &self.deaths {
            assert!(*deaths <= CRASH_LIMIT, "{commit} killed the agent {deaths} times");
            if *deaths == CRASH_LIMIT && ptr.attempt.as_ref().is_none_or(|a| a.commit != *commit) {
                let reported =
                    self.events.iter().any(|e| e["kind"] == "rolled_back" && e["revision"] == commit.as_str());
                let quarantined = ptr.quarantine.contains_key(commit) || self.tip().as_deref() != Some(commit);
                assert!(reported, "{commit} killed the agent {CRASH_LIMIT} times and was not reported");
                assert!(quarantined, "{commit} killed the agent {CRASH_LIMIT} times and is not quarantined");
            }
        }
        // 1. No file torn: after a completed step with the store writable and
        //    the revision in place enforced, the files are exactly it.
        if self.full || ptr.heal_failed || !ptr.current_gated {
            return;
        }
        let want: BTreeMap<String, Vec<u8>> = match &ptr.current {
            Some(c) => match self.store.revision(c.seq).unwrap() {
                Some(rec) => rec
                    .desired
                    .files
                    .iter()
                    .map(|(p, f)| (p.to_string(), self.store.get_blob(&f.hash).unwrap().unwrap_or_default()))
                    .collect(),
                None => return,
            },
            None => BTreeMap::new(),
        };
        let have = files_under(&self.root);
        assert!(!have.keys().any(|p| p.contains(".tend-tmp")), "a temporary file is left: {have:?}");
        // Only after a step that enforced the state (drift is repaired at the
        // next sync, not at once).
        let last = self.log.iter().rev().find(|l| !l.starts_with("     ") && !l.starts_with("  killed"));
        let enforced = last.filter(|l| l.starts_with("  -> "));
        if enforced.is_some_and(|l| l == "  -> started" || !(l.contains("error") || l.contains("killed"))) {
            assert_eq!(have, want, "the files are not the revision in place");
        }
    }
}

fn files_under(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// One seeded run: the actions from proptest's generator on a ChaCha RNG
/// of the seed, applied and checked one by one.
fn run_seed(seed: u64, steps: usize, verbose: bool) -> Result<(), String> {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        proptest::test_runner::Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let actions: Vec<Action> =
        (0..steps).map(|_| action().new_tree(&mut runner).expect("a strategy that generates").current()).collect();
    let mut world = World::new(seed);
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        world.restart(None);
        for a in &actions {
            world.step(a);
            world.check();
        }
    }));
    let steps = world.log.join("\n");
    if verbose {
        eprintln!("seed {seed}:\n{steps}");
    }
    r.map_err(|e| {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        format!("seed {seed} failed: {why}\nreplay: TEND_SIM_SEED={seed} cargo test -p tend --lib sync::sim\nsteps:\n{steps}")
    })
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn the_whole_agent_under_faults_keeps_its_invariants() {
    crate::sim::set_inline(true);
    // Simulated kills unwind: say nothing of them.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<Killed>().is_none() {
            hook(info);
        }
    }));
    let steps = env("TEND_SIM_STEPS").map_or(STEPS, |s| s as usize);
    let started = std::time::Instant::now();
    if let Some(seed) = env("TEND_SIM_SEED") {
        run_seed(seed, steps, true).unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    let start = env("TEND_SIM_START").unwrap_or(0);
    let seeds = env("TEND_SIM_SEEDS").unwrap_or(SEEDS);
    for seed in start..start + seeds {
        if let Err(e) = run_seed(seed, steps, false) {
            panic!("{e}");
        }
        // Long runs say how far they got.
        if seeds >= 100_000 && (seed - start + 1).is_multiple_of(10_000) {
            eprintln!("simulation: {} seeds held, {:.0} s", seed - start + 1, started.elapsed().as_secs_f64());
        }
    }
    eprintln!(
        "simulation: {seeds} seeds of {steps} steps from seed {start}, all invariants held, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
