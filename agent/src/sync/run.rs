//! The cycle itself, async: boot, one sync (fetch, decide, prepare, wait or
//! apply, health gate), and drift repair of what is applied.

use super::*;

/// Run a blocking step of the cycle on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(agent: &Arc<Agent>, f: impl FnOnce(&Agent) -> T + Send + 'static) -> T {
    if crate::sim::inline() {
        return f(agent);
    }
    let a = agent.clone();
    match tokio::task::spawn_blocking(move || f(&a)).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Re-enforce the revision applied now from the store (self-heal, offline, boot).
/// Returns what was repaired; `None` when no revision was ever applied.
///
/// When every file of the revision is as tend last verified it (a stat each,
/// [`files::Fingerprint`]), there is nothing to repair and neither the
/// revision nor the inventory is read: an idle poll costs a stat per file.
/// Revisions with containers or K3s manifests, whose state is not on disk, are
/// checked in full each time, and so is every revision once an hour.
pub async fn enforce_current(agent: &Arc<Agent>) -> Result<Option<SyncSummary>, SyncError> {
    blocking(agent, |a| {
        if let Some(s) = a.verified_unchanged()? {
            return Ok(Some(s));
        }
        let Some(cur) = a.current()? else {
            // No revision in place, yet tend made something: what a first
            // apply the agent died in left behind. Back to the state before
            // tend's first revision.
            let inv = a.store.inventory()?;
            if inv.dirty || !inv.files.is_empty() || !inv.containers.is_empty() || !inv.manifests.is_empty() {
                tracing::info!("no revision in place: removing what an interrupted first apply left");
                a.enforce("", &Desired::default(), &HashMap::new(), true)?;
            }
            return Ok(None);
        };
        let (plan, _) = a.enforce(&cur.commit, &cur.desired, &HashMap::new(), true)?;
        if cur.desired.containers.is_empty() && cur.desired.manifests.is_empty() {
            let inv = a.store.inventory()?;
            let v = a.root.fingerprint(cur.desired.files.keys(), &inv).map(|fingerprint| Verified {
                seq: cur.seq,
                commit: cur.commit.clone(),
                at: unix_now(),
                fingerprint,
            });
            // Kept in the store too, so a one-shot `tend sync` has it.
            a.store.set_verified(v.as_ref())?;
            *a.verified.lock().unwrap_or_else(|e| e.into_inner()) = v;
        }
        let mut s = SyncSummary::from_plan(&plan);
        s.commit = Some(cur.commit.clone());
        s.set_counts(&cur.desired);
        let changed =
            plan.ops.iter().any(|o| o.changes_disk()) || !plan.containers.is_empty() || !plan.manifests.is_empty();
        s.action = if changed { "repaired" } else { "unchanged" }.into();
        if s.action == "repaired" {
            tracing::debug!(revision = short(&cur.commit), "drift repaired");
            a.event(Kind::DriftRepaired, serde_json::json!({ "revision": cur.commit, "operations": s.operations }));
        }
        Ok(Some(s))
    })
    .await
}

/// At start, before any fetch: re-enforce last-known-good from the store.
/// The decision step says what the previous run left (SPEC §3, 8): a revision
/// whose health window did not end is not last-known-good, so the gateway
/// returns to the one that is (the interrupted revision is gated again when
/// the source is reachable); a revision during which the agent died
/// `crash_limit` times is failed, recorded, reported and quarantined.
/// `death`: how the previous run ended, where systemd said (`tend exited`).
pub async fn boot(agent: &Arc<Agent>, death: Option<String>) -> Result<Option<SyncSummary>, SyncError> {
    recover(agent, death).await?;
    enforce_current(agent).await
}

/// The start's decision without the repair: a one-shot command that may
/// apply (`tend sync`, `tend rollback`) runs it first, so a death during an
/// earlier one-shot apply is counted too.
pub async fn recover(agent: &Arc<Agent>, death: Option<String>) -> Result<(), SyncError> {
    blocking(agent, move |a| -> Result<(), SyncError> {
        let (before, after, effects) = a.step(&Event::Boot { death }, a.clock.now())?;
        if after == before {
            return Ok(());
        }
        // The failure's record and events first, then the state: a death
        // between the two is counted again and reported twice, never lost.
        let mut crashed_seq = None;
        for e in &effects {
            match e {
                Effect::Crashed { commit, reason, seq } => {
                    a.crashed(commit, reason, *seq, after.last_good.as_ref())?;
                    crashed_seq = *seq;
                }
                Effect::Restore { left, died } => {
                    tracing::info!(revision = short(&left.commit), "its health window was interrupted: returning to last-known-good");
                    if crashed_seq != Some(left.seq) {
                        let why = match (died, &after.attempt) {
                            (true, Some(at)) => format!(
                                "the agent died during its health window ({} of [apply].crash_limit {}): back on last-known-good, to be tried again",
                                at.deaths, a.cfg.apply.crash_limit
                            ),
                            _ => "tend stopped during its health window: back on last-known-good, to be tried again".into(),
                        };
                        a.set_outcome(left.seq, Outcome::Interrupted, Some(why))?;
                    }
                }
                _ => {}
            }
        }
        let back = match &after.current {
            Some(r) => a.store.revision(r.seq)?,
            None => None,
        };
        let mut st = a.status_of(&after)?;
        st.resources = a.resources_of(back.as_ref());
        a.store.set_pointers_and_status(&after, &st)?;
        // No last-known-good: back to the state before tend's first revision.
        if after.current.is_none() && effects.iter().any(|e| matches!(e, Effect::Restore { .. })) {
            a.enforce("", &Desired::default(), &HashMap::new(), true)?;
        }
        // Durable before anything else happens: a death counted once.
        a.store.flush()?;
        Ok(())
    })
    .await
}

/// Mark a clean stop (SIGTERM, SIGINT): an apply or health window left now
/// is not a death of the agent. Called once nothing runs on the blocking pool.
pub fn stopped(agent: &Agent) -> Result<(), StoreError> {
    agent.transition(&Event::Stop, Measured::default())?;
    agent.store.flush()
}

/// One sync cycle: fetch, then apply the branch's revision if it is new (health
/// gate, rollback on failure), or re-enforce the current one if not.
pub async fn sync(agent: &Arc<Agent>, opts: SyncOptions) -> Result<SyncSummary, SyncError> {
    sync_from(agent, opts, None).await
}

/// A sync of a commit taken from a stick (SPEC §9; `file` names it): the
/// commit is decided and applied as a fetched tip would be.
pub async fn sync_import(
    agent: &Arc<Agent>,
    opts: SyncOptions,
    commit: String,
    file: String,
) -> Result<SyncSummary, SyncError> {
    sync_from(agent, opts, Some(Imported { commit, file })).await
}

/// A commit taken from a stick, and the file it came in.
struct Imported {
    commit: String,
    file: String,
}

async fn sync_from(agent: &Arc<Agent>, opts: SyncOptions, import: Option<Imported>) -> Result<SyncSummary, SyncError> {
    let started = Instant::now();
    let rollbacks = agent.counters.events_of("rolled_back");
    let r = sync_inner(agent, opts, import).await;
    if !opts.dry_run {
        // A failed sync that rolled back raised a `rolled_back` event,
        // whatever failed (apply, health, a runtime).
        let rolled_back = agent.counters.events_of("rolled_back") > rollbacks;
        agent.counters.sync_done(result_of(&r, rolled_back), started.elapsed());
    }
    r
}

/// How a sync or rollback ended, for `tend_syncs_total`.
pub(super) fn result_of(r: &Result<SyncSummary, SyncError>, rolled_back: bool) -> &'static str {
    match r {
        Ok(s) => match s.action.as_str() {
            "applied" => "applied",
            "repaired" => "repaired",
            "rolled_back" => "rolled_back",
            _ => "unchanged",
        },
        Err(_) if rolled_back => "rolled_back",
        Err(_) => "failed",
    }
}

async fn sync_inner(agent: &Arc<Agent>, opts: SyncOptions, import: Option<Imported>) -> Result<SyncSummary, SyncError> {
    let mut timings = Timings::default();
    let t = Instant::now();
    let (mut fetched, mut from) = match import {
        Some(i) => (Ok(Fetched { commit: i.commit, received_pack: true }), Some(i.file)),
        None => (blocking(agent, |a| a.source.fetch()).await, None),
    };
    timings.fetch_ms = ms(t.elapsed());
    // Offline, an import that waits for its wave or a window is decided
    // again at each poll: it is the tip this gateway has.
    let mut offline = None;
    if let Err(e) = &fetched
        && !opts.dry_run
        && let Some((commit, file)) = blocking(agent, |a| a.store.pointers().map(|p| waiting_import(&p))).await?
    {
        offline = Some(e.to_string());
        fetched = Ok(Fetched { commit, received_pack: false });
        from = Some(file);
    }
    let (event, span) = match &fetched {
        Err(e) if opts.dry_run => return Err(e.clone().into()),
        Err(e) => (Event::Unreachable { error: e.to_string() }, tracing::info_span!("sync")),
        Ok(f) if from.is_some() => (
            Event::Import {
                commit: f.commit.clone(),
                render_key: agent.render_key(),
                from: from.clone().unwrap_or_default(),
                unreachable: offline.clone(),
            },
            tracing::info_span!("sync", revision = %short(&f.commit), import = from.as_deref().unwrap_or_default()),
        ),
        Ok(f) => (
            match behind_import(agent, &f.commit).await? {
                Some(error) => Event::Behind { error },
                None => Event::Tip { commit: f.commit.clone(), render_key: agent.render_key(), retry: opts.retry },
            },
            tracing::info_span!("sync", revision = %short(&f.commit)),
        ),
    };
    let behind = matches!(event, Event::Behind { .. });
    let run = Run {
        agent,
        opts,
        from,
        behind,
        fetched,
        timings,
        outcome: None,
        failure: None,
        prepared: None,
        blobs: None,
        applied: None,
        checks: None,
        newly_waiting: false,
        previous: None,
    };
    run.drive(event).instrument(span).await
}

/// The imported commit, and the file it came in, when it waits for its
/// wave or a window (not yet applied, not quarantined).
fn waiting_import(p: &crate::store::Pointers) -> Option<(String, String)> {
    let i = p.imported.as_ref()?;
    let waits = p.waiting.as_ref().is_some_and(|w| w.commit == *i);
    let applied = p.current.as_ref().is_some_and(|c| c.commit == *i);
    (waits && !applied && !p.quarantine.contains_key(i))
        .then(|| (i.clone(), p.imported_from.clone().unwrap_or_else(|| "a stick".into())))
}

/// After an import (SPEC §9): how the source's `tip` stands to the imported
/// commit, when it does not descend from it (`None`: it does, or there was
/// no import). The history a depth-1 fetch leaves is deepened once to tell.
async fn behind_import(agent: &Arc<Agent>, tip: &str) -> Result<Option<String>, SyncError> {
    let tip = tip.to_owned();
    blocking(agent, move |a| {
        let Some(imported) = a.store.pointers()?.imported.filter(|i| *i != tip) else { return Ok(None) };
        let mut descends = a.source.descends(&tip, &imported).ok().flatten();
        if descends.is_none() {
            if let Err(e) = a.source.deepen(DEEPEN) {
                tracing::warn!(error = %e, "could not fetch more history to compare the source with the import");
            }
            descends = a.source.descends(&tip, &imported).ok().flatten();
        }
        if descends == Some(true) {
            tracing::info!(revision = short(&tip), imported = short(&imported), "the source reached the import");
            return Ok(None);
        }
        let branch = &a.cfg.source.branch;
        let why = if a.source.descends(&imported, &tip).ok().flatten() == Some(true) {
            format!(
                "the source's branch {branch} is at {}, behind {} that came from a stick: not applied until the branch reaches it",
                short(&tip),
                short(&imported)
            )
        } else {
            format!(
                "the source's branch {branch} is at {}, which does not descend from {} that came from a stick: not applied until it does",
                short(&tip),
                short(&imported)
            )
        };
        Ok(Some(why))
    })
    .await
}

/// Commits of history fetched to tell whether the source's tip descends
/// from an imported commit.
const DEEPEN: u32 = 1000;

/// One sync, driven: the decision step says what to do next ([`Effect`]),
/// this performs it and tells the step what happened ([`Event`]), until
/// nothing is left to do. Nothing here decides what the gateway should be
/// in; it only does, measures and reports.
struct Run<'a> {
    agent: &'a Arc<Agent>,
    opts: SyncOptions,
    /// The file the tip came in, when it came from a stick.
    from: Option<String>,
    /// The source's tip is behind the imported commit (not applied).
    behind: bool,
    fetched: Result<Fetched, SourceError>,
    timings: Timings,
    /// What `tend sync` answers, once known.
    outcome: Option<Result<SyncSummary, SyncError>>,
    /// The error a failing revision is rolled back for.
    failure: Option<SyncError>,
    /// The prepared tip (its contents go to the store at the apply).
    prepared: Option<Arc<Prepared>>,
    blobs: Option<HashMap<ContentHash, Vec<u8>>>,
    /// The plan applied and the revision's history record.
    applied: Option<(Plan, u64)>,
    /// The health checks' results, for the summary.
    checks: Option<BTreeMap<String, String>>,
    /// The last decision made a revision wait for something it did not
    /// wait for before (said once in the log).
    newly_waiting: bool,
    /// The commit in place before this apply, for the hooks.
    previous: Option<String>,
}

impl Run<'_> {
    fn commit(&self) -> String {
        self.fetched.as_ref().map(|f| f.commit.clone()).unwrap_or_default()
    }

    fn received_pack(&self) -> bool {
        self.fetched.as_ref().is_ok_and(|f| f.received_pack)
    }

    async fn transition(&self, event: Event, m: Measured) -> Result<Transition, SyncError> {
        let tr = blocking(self.agent, move |a| a.transition(&event, m)).await?;
        // The source's reachability changes are said once each.
        match (tr.before.unreachable.is_some(), tr.after.unreachable.as_deref()) {
            (true, None) => self.agent.event(Kind::SourceRestored, serde_json::json!({})),
            (false, Some(e)) => self.agent.event(Kind::SourceUnreachable, serde_json::json!({ "error": e })),
            _ => {}
        }
        Ok(tr)
    }

    async fn drive(mut self, first: Event) -> Result<SyncSummary, SyncError> {
        let mut events = std::collections::VecDeque::from([first]);
        while let Some(event) = events.pop_front() {
            let tr = self.transition(event, Measured::synced()).await?;
            let waits = |p: &Pointers| p.waiting.as_ref().map(|w| (w.commit.clone(), w.waiting_for));
            self.newly_waiting = waits(&tr.after).is_some() && waits(&tr.before) != waits(&tr.after);
            // The effects of one decision: the first is the main one; a
            // repair beside it (`Heal` after a refusal or while waiting) is
            // best effort.
            let main = tr.effects.len() == 1;
            for effect in tr.effects {
                if let Some(next) = self.perform(effect, main).await? {
                    events.push_back(next);
                }
                if self.opts.dry_run && self.outcome.is_some() {
                    break;
                }
            }
        }
        self.outcome.take().unwrap_or_else(|| {
            Ok(SyncSummary { commit: Some(self.commit()), action: "unchanged".into(), ..Default::default() })
        })
    }

    /// Perform one effect; the event it leads to, if any.
    async fn perform(&mut self, effect: Effect, main: bool) -> Result<Option<Event>, SyncError> {
        let agent = self.agent;
        match effect {
            Effect::Heal => self.heal(main).await,
            Effect::Refuse { reason } => {
                self.outcome = Some(Err(SyncError::Quarantined { commit: self.commit(), reason }));
                Ok(None)
            }
            Effect::Prepare => self.prepare().await,
            Effect::Wait { phase, waiting } => {
                let prepared = self.prepared.clone().expect("prepared before a wait");
                if phase == Phase::Waiting && !prepared.desired.containers.is_empty() {
                    let (c, containers) = (prepared.commit.clone(), prepared.desired.containers.clone());
                    blocking(agent, move |a| a.prefetch_images(&c, &containers)).await;
                }
                let due_at = waiting.due_at.map(|t| t.to_string());
                let reason = waiting.waiting_for.as_str();
                // Said once: when it starts to wait, or for something new.
                if self.newly_waiting {
                    tracing::info!(revision = short(&waiting.commit), waiting_for = reason, detail = %waiting.detail, due_at = ?due_at, "{phase}");
                }
                self.outcome = Some(Ok(SyncSummary {
                    commit: Some(waiting.commit.clone()),
                    action: phase.as_str().into(),
                    received_pack: self.received_pack(),
                    timings: self.timings.clone(),
                    waiting_for: Some(reason.into()),
                    due_at,
                    ..Default::default()
                }));
                Ok(None)
            }
            Effect::Apply { forced } => self.apply(forced).await,
            Effect::RunHealth => self.health().await,
            Effect::Promote => {
                let (plan, _seq) = self.applied.take().expect("applied before promoted");
                let prepared = self.prepared.clone().expect("prepared before promoted");
                let c = prepared.commit.clone();
                blocking(agent, move |a| -> Result<(), SyncError> {
                    let resources = a.resources();
                    a.set_status(|s| s.resources = resources)?;
                    a.event(Kind::Healthy, serde_json::json!({ "revision": c }));
                    a.gc()?;
                    Ok(())
                })
                .await?;
                tracing::debug!(revision = short(&prepared.commit), "revision healthy");
                let mut summary = SyncSummary::from_plan(&plan);
                summary.commit = Some(prepared.commit.clone());
                summary.action = "applied".into();
                summary.received_pack = self.received_pack();
                summary.set_counts(&prepared.desired);
                summary.checks = self.checks.take().unwrap_or_default();
                summary.timings = self.timings.clone();
                self.outcome = Some(Ok(summary));
                Ok(None)
            }
            Effect::Reject { commit, quarantined } => {
                let error = match &self.outcome {
                    Some(Err(e)) => e.to_string(),
                    _ => String::new(),
                };
                blocking(agent, move |a| -> Result<(), StoreError> {
                    if quarantined {
                        let p = Prepared::nothing(&commit, a.render_key());
                        a.record(&p, Outcome::Failed, Some(error.clone()))?;
                        a.gc()?;
                    }
                    let mut fields = serde_json::json!({ "revision": commit, "error": error });
                    if !quarantined {
                        // Tried again (a before_apply hook, a local trust
                        // file): not a failure of the revision for the fleet.
                        fields["retry"] = true.into();
                    }
                    a.event(Kind::Failed, fields);
                    Ok(())
                })
                .await?;
                Ok(None)
            }
            Effect::RollBack { commit, to, .. } => self.roll_back(commit, to).await,
            Effect::KeepFailed { commit } => {
                let error = self.failure.take().map(|e| e.to_string()).unwrap_or_default();
                let after = "rollback is off ([apply].rollback = false)".to_owned();
                let (e2, a2) = (error.clone(), after.clone());
                blocking(agent, move |a| -> Result<(), SyncError> {
                    let seq = a.store.pointers()?.current.map(|c| c.seq);
                    if let Some(seq) = seq {
                        a.set_outcome(seq, Outcome::Failed, Some(e2.clone()))?;
                    }
                    let resources = a.resources();
                    a.set_status(|s| s.resources = resources)?;
                    a.event(Kind::Failed, serde_json::json!({ "revision": commit, "error": e2, "after": a2 }));
                    a.gc()?;
                    Ok(())
                })
                .await?;
                self.outcome = Some(Err(SyncError::Rollback(format!("{error}; {after}"))));
                Ok(None)
            }
            Effect::Restore { .. } | Effect::Crashed { .. } => Ok(None),
        }
    }
}

impl Run<'_> {
    /// Enforce the revision applied now. As the decision's main effect (the
    /// tip is the revision in place, or the source is unreachable) its
    /// outcome is the sync's; beside another effect it is best effort.
    async fn heal(&mut self, main: bool) -> Result<Option<Event>, SyncError> {
        // A dry run of the revision in place plans it again: "nothing to do"
        // when nothing drifted.
        if self.opts.dry_run && main && self.fetched.is_ok() {
            return self.prepare().await;
        }
        if self.opts.dry_run || (self.opts.no_heal && main) {
            if main && self.outcome.is_none() {
                self.outcome = Some(match &self.fetched {
                    Ok(f) => Ok(SyncSummary {
                        commit: Some(f.commit.clone()),
                        action: "unchanged".into(),
                        received_pack: f.received_pack,
                        timings: self.timings.clone(),
                        ..Default::default()
                    }),
                    Err(e) => Err(e.clone().into()),
                });
            }
            return Ok(None);
        }
        let t = Instant::now();
        let healed = enforce_current(self.agent).await;
        if !main {
            if let Err(e) = &healed {
                tracing::warn!(error = %e, "could not re-enforce the current revision");
            }
            let a = self.agent.clone();
            blocking(self.agent, move |_| {
                let resources = a.resources();
                a.set_status(|s| s.resources = resources)
            })
            .await?;
            return Ok(None);
        }
        self.timings.apply_ms = ms(t.elapsed());
        match (&self.fetched, healed) {
            // Offline: what is applied stays enforced; the sync failed.
            (Err(e), healed) => {
                let error = e.clone();
                self.outcome = Some(Err(match healed {
                    Err(repair) => {
                        let h = repair.to_string();
                        self.transition(Event::HealFailed { error: h }, Measured::default()).await?;
                        SyncError::Offline { error, repair: Box::new(repair) }
                    }
                    Ok(_) => {
                        let a = self.agent.clone();
                        blocking(self.agent, move |_| {
                            let resources = a.resources();
                            a.set_status(|s| s.resources = resources)
                        })
                        .await?;
                        error.into()
                    }
                }));
                Ok(None)
            }
            // A damaged store lacks contents the repair needs: the revision
            // is rendered from Git again, as if it were new.
            (Ok(_), Err(e @ SyncError::MissingContent { .. })) => {
                tracing::warn!(error = %e, "rendering the revision from Git again");
                self.prepare().await
            }
            (Ok(_), Err(e)) => {
                self.transition(Event::HealFailed { error: e.to_string() }, Measured::default()).await?;
                self.outcome = Some(Err(e));
                Ok(None)
            }
            (Ok(f), Ok(healed)) => {
                let mut s = healed.unwrap_or_else(|| SyncSummary {
                    commit: Some(f.commit.clone()),
                    action: "unchanged".into(),
                    ..Default::default()
                });
                s.received_pack = f.received_pack;
                s.timings = self.timings.clone();
                if self.behind && s.action == "unchanged" {
                    s.action = "behind".into();
                }
                // Enforced: every file of the revision is as desired.
                let files = s.files;
                let m = Measured::with(Resources { total: files, ready: files, failed: 0 });
                self.transition(Event::Healed, m).await?;
                self.outcome = Some(Ok(s));
                Ok(None)
            }
        }
    }

    /// Verify and render the tip (or take it from the store), then gather
    /// what the rollout gate needs.
    async fn prepare(&mut self) -> Result<Option<Event>, SyncError> {
        let agent = self.agent;
        let commit = self.commit();
        let t = Instant::now();
        let c = commit.clone();
        let prepared = blocking(agent, move |a| a.prepare(&c)).await;
        self.timings.render_ms = ms(t.elapsed());
        let mut prepared = match prepared {
            Ok(p) => p,
            Err(e) => return Ok(self.refused(e)),
        };
        if self.opts.dry_run {
            let t = Instant::now();
            let p = prepared.clone();
            let plan = blocking(agent, move |a| -> Result<Plan, SyncError> {
                let inv = a.store.inventory()?;
                a.plan(&p.commit, &p.desired, &inv, a.cfg.apply.prune)
            })
            .await?;
            self.timings.plan_ms = ms(t.elapsed());
            if !plan.blocked.is_empty() {
                let blocked =
                    plan.blocked.iter().map(|b| format!("{}: {}", b.path.to_absolute_string(), b.reason)).collect();
                self.outcome = Some(Err(SyncError::Blocked { commit, blocked }));
                return Ok(None);
            }
            let mut s = SyncSummary::from_plan(&plan);
            s.commit = Some(commit);
            s.action = "planned".into();
            s.dry_run = true;
            s.received_pack = self.received_pack();
            s.set_counts(&prepared.desired);
            s.timings = self.timings.clone();
            self.outcome = Some(Ok(s));
            return Ok(None);
        }
        // Rollout control (SPEC §7): what the gate needs, gathered here; the
        // decision step decides.
        let (c, policy) = (commit.clone(), prepared.desired.rollout.clone());
        let gate = blocking(agent, move |a| -> Result<(Gate, jiff::Timestamp), SyncError> {
            let committed_at = a.source.committed_at(&c)?;
            let local = gate::Local {
                fleet: &a.cfg.fleet,
                device_id: &a.cfg.device_id,
                labels: &a.cfg.labels,
                lock_dir: &a.cfg.apply.lock_dir,
                lock_timeout: a.cfg.apply.lock_timeout,
            };
            let now = a.clock.now();
            let failing = a.breaker.as_ref().and_then(|b| b.failing(&c));
            // Why the breaker cannot hold anything now, for the status.
            let note = match (&a.breaker, &failing) {
                _ if policy.as_ref().is_none_or(|p| p.max_failed.is_none()) => None,
                (None, _) => Some("circuit breaker off: no [mqtt] (or a one-shot command)"),
                (Some(_), None) => Some("circuit breaker: the fleet's reports not read yet"),
                _ => None,
            };
            let mut gate = gate::gather(policy.as_ref(), &local, committed_at, failing, now)
                .map_err(|error| SyncError::Rollout { commit: c.clone(), error })?;
            gate.note = note.map(str::to_owned);
            Ok((gate, now))
        })
        .await;
        let (gate, _) = match gate {
            Ok(g) => g,
            Err(e @ SyncError::Rollout { .. }) => return Ok(self.refused(e)),
            Err(e) => return Err(e),
        };
        self.blobs = Some(std::mem::take(&mut prepared.blobs));
        self.prepared = Some(Arc::new(prepared));
        Ok(Some(Event::Prepared { commit, gate, now: self.opts.now }))
    }

    /// The tip was refused before anything of it was written.
    fn refused(&mut self, e: SyncError) -> Option<Event> {
        let refusal = match &e {
            SyncError::Blocked { .. } => Refusal::Blocked,
            SyncError::Untrusted { .. } => Refusal::Untrusted,
            SyncError::Hook { .. } => Refusal::Hook,
            SyncError::Space { .. } => Refusal::Space,
            _ => Refusal::Bundle,
        };
        let event = Event::Refused { commit: self.commit(), kind: e.kind(), refusal, error: e.to_string() };
        self.outcome = Some(Err(e));
        (!self.opts.dry_run).then_some(event)
    }

    /// Apply the prepared tip: the attempt made durable first (SPEC §3, 8),
    /// then every write, recorded in the history.
    async fn apply(&mut self, forced: Option<String>) -> Result<Option<Event>, SyncError> {
        let agent = self.agent;
        let mut prepared = Arc::unwrap_or_clone(self.prepared.take().expect("prepared before applied"));
        if let Some(f) = &forced {
            tracing::info!(revision = short(&prepared.commit), forced = %f, "applying past the rollout policy");
        }
        prepared.forced.clone_from(&forced);
        prepared.from = self.from.as_ref().map(|f| format!("import {f}"));
        let prepared = Arc::new(prepared);
        self.prepared = Some(prepared.clone());
        self.previous = blocking(agent, |a| a.store.pointers()).await?.current.map(|c| c.commit);
        // Before the attempt: a hook that says not now leaves nothing to undo.
        if let Some(cmd) = prepared.desired.hooks.before_apply.clone() {
            let (p, previous) = (prepared.clone(), self.previous.clone());
            let ran = blocking(agent, move |a| a.run_hook(&cmd, &p, previous.as_deref())).await;
            if let Err(error) = ran {
                tracing::info!(revision = short(&prepared.commit), "before_apply hook failed: {error}");
                let commit = prepared.commit.clone();
                return Ok(self.refused(SyncError::Hook { commit, hook: "before_apply", error }));
            }
        }
        // The attempt is durable before the first write: if the agent dies
        // from here to the end of the health window, the next start counts it.
        self.transition(Event::Applying { commit: prepared.commit.clone() }, Measured::default()).await?;
        let t = Instant::now();
        let blobs = self.blobs.take().unwrap_or_default();
        let p = prepared.clone();
        let applied = blocking(agent, move |a| -> Result<(Plan, u64), SyncError> {
            a.store.flush()?;
            let mut started = serde_json::json!({ "revision": p.commit });
            if let Some(f) = forced {
                started["forced"] = f.into();
            }
            if let Some(f) = &p.from {
                started["from"] = f.clone().into();
            }
            a.event(Kind::SyncStarted, started);
            let result = a.apply_new(&p.commit, &p.desired, &blobs, a.cfg.apply.prune);
            drop(blobs);
            let (plan, _report) = result?;
            let seq = a.record(&p, Outcome::Applied, None)?;
            let (created, updated, deleted, hooks) = plan.counts();
            let mut fields = serde_json::json!({ "revision": p.commit, "created": created, "updated": updated, "deleted": deleted, "hooks": hooks });
            if let Some(f) = &p.from {
                fields["from"] = f.clone().into();
            }
            a.event(Kind::Applied, fields);
            Ok((plan, seq))
        })
        .await;
        self.timings.apply_ms = ms(t.elapsed());
        match applied {
            Ok((plan, seq)) => {
                let current = RevRef { seq, commit: prepared.commit.clone(), render_key: prepared.render_key.clone() };
                self.applied = Some((plan, seq));
                // Durable with the state: the window starts.
                Ok(Some(Event::Applied { current }))
            }
            // Refused before the first write: nothing to roll back.
            Err(e @ (SyncError::Blocked { .. } | SyncError::Space { .. })) => Ok(self.refused(e)),
            Err(e) => {
                // Recorded first: an apply that failed midway has no record.
                let (p, msg) = (prepared.clone(), e.to_string());
                let seq = blocking(agent, move |a| a.record(&p, Outcome::Failed, Some(msg))).await?;
                let record = RevRef { seq, commit: prepared.commit.clone(), render_key: prepared.render_key.clone() };
                let event = Event::Failed { record, kind: e.kind(), error: e.to_string() };
                self.failure = Some(e);
                Ok(Some(event))
            }
        }
    }

    /// The health window of the revision just applied.
    async fn health(&mut self) -> Result<Option<Event>, SyncError> {
        let agent = self.agent;
        blocking(agent, |a| a.store.flush()).await?;
        let prepared = self.prepared.clone().expect("prepared before its health window");
        let t = Instant::now();
        // after_apply is the first check: failing, the revision is unhealthy.
        if let Some(cmd) = prepared.desired.hooks.after_apply.clone() {
            let (p, previous) = (prepared.clone(), self.previous.clone());
            if let Err(error) = blocking(agent, move |a| a.run_hook(&cmd, &p, previous.as_deref())).await {
                self.timings.health_ms = ms(t.elapsed());
                let failures = format!("after_apply hook {error}");
                self.checks = Some([("after_apply".to_owned(), "fail".to_owned())].into());
                tracing::info!(revision = short(&prepared.commit), "unhealthy: {failures}");
                let commit = prepared.commit.clone();
                self.failure = Some(SyncError::Unhealthy { commit, failures: failures.clone(), after: String::new() });
                return Ok(Some(Event::Health { healthy: false, failures }));
            }
        }
        let probes = probes_for(agent, &prepared.commit, &prepared.desired)?;
        let health = if probes.is_empty() {
            Health::default()
        } else {
            tracing::debug!(checks = probes.len(), timeout = ?agent.cfg.apply.health_timeout, "waiting for health checks");
            health::window(&probes, agent.cfg.apply.health_timeout).await
        };
        self.timings.health_ms = ms(t.elapsed());
        self.checks = Some(checks_json(&health));
        let healthy = health.healthy();
        let failures = health.failures();
        if healthy {
            // The record says it passed before the state makes it
            // last-known-good: a death between the two leaves a healthy
            // record that the next start marks interrupted, never a
            // last-known-good whose record says otherwise.
            let seq = self.applied.as_ref().map(|(_, seq)| *seq).expect("applied before its health window");
            blocking(agent, move |a| a.set_outcome(seq, Outcome::Healthy, None)).await?;
        } else {
            tracing::info!(revision = short(&prepared.commit), "unhealthy: {failures}");
            let commit = prepared.commit.clone();
            self.failure = Some(SyncError::Unhealthy { commit, failures: failures.clone(), after: String::new() });
        }
        Ok(Some(Event::Health { healthy, failures }))
    }

    /// Return every resource to `to` (last-known-good) after a failure, and
    /// record and report how it went.
    async fn roll_back(&mut self, commit: String, to: Option<RevRef>) -> Result<Option<Event>, SyncError> {
        let agent = self.agent;
        let error =
            self.failure.take().unwrap_or_else(|| SyncError::Rollback(format!("revision {} failed", short(&commit))));
        let msg = error.to_string();
        let restored = blocking(agent, move |a| -> Result<Result<(), String>, SyncError> {
            let lkg = match &to {
                Some(r) => a.store.revision(r.seq)?,
                None => None,
            };
            let (c, desired) = lkg.map(|r| (r.commit, r.desired)).unwrap_or_default();
            Ok(a.enforce(&c, &desired, &HashMap::new(), true).map(|_| ()).map_err(|e| e.to_string()))
        })
        .await?;
        let event = Event::RolledBack { restored: restored.is_ok(), detail: restored.err().unwrap_or_default() };
        let tr = self.transition(event, Measured::synced()).await?;
        let after =
            tr.after.error.as_deref().and_then(|e| e.strip_prefix(&format!("{msg}; "))).unwrap_or("").to_owned();
        let (c, m, a2) = (commit.clone(), msg.clone(), after.clone());
        let back_on = tr.after.current.as_ref().map(|r| r.commit.clone());
        let rolled_back = tr.after.phase == Some(Phase::RolledBack);
        blocking(agent, move |a| -> Result<(), SyncError> {
            let seq = a.history()?.into_iter().find(|r| r.commit == c).map(|r| r.seq);
            if let Some(seq) = seq {
                a.set_outcome(seq, if rolled_back { Outcome::RolledBack } else { Outcome::Failed }, Some(m.clone()))?;
            }
            let resources = a.resources();
            a.set_status(|s| s.resources = resources)?;
            let kind = if rolled_back { Kind::RolledBack } else { Kind::Failed };
            a.event(kind, serde_json::json!({ "revision": c, "error": m, "to": back_on, "after": a2 }));
            a.gc()?;
            Ok(())
        })
        .await?;
        self.outcome = Some(Err(match error {
            SyncError::Unhealthy { commit, failures, .. } => SyncError::Unhealthy { commit, failures, after },
            e => SyncError::Rollback(format!("{e}; {after}")),
        }));
        Ok(None)
    }
}

/// The bundle's checks, and one probe per container.
pub(super) fn probes_for(
    agent: &Agent,
    commit: &str,
    desired: &Desired,
) -> Result<Vec<Box<dyn health::Probe>>, SyncError> {
    let mut probes = match &agent.check_probe {
        Some(make) => desired.checks.iter().map(|c| make(c)).collect(),
        None => health::probes_for(&desired.checks),
    };
    for o in k3s::rollouts(&desired.manifests) {
        probes.push(Box::new(health::RolloutProbe::new(o, agent.cfg.k3s.kubectl.clone(), agent.cfg.k3s.timeout)));
    }
    if !desired.containers.is_empty() {
        let rt = agent.runtime(commit)?;
        for (name, spec) in &desired.containers {
            let interval =
                spec.health.as_ref().map_or(Duration::from_secs(1), |h| h.interval.min(Duration::from_secs(2)));
            probes.push(Box::new(health::ContainerProbe {
                name: format!("container {name}"),
                container: name.clone(),
                command: spec.health.as_ref().map(|h| h.command.clone()),
                runtime: rt.clone(),
                interval,
            }));
        }
    }
    Ok(probes)
}

pub(super) fn checks_json(h: &Health) -> BTreeMap<String, String> {
    h.results
        .iter()
        .map(|(n, r)| {
            (
                n.clone(),
                match r {
                    Ok(()) => "pass".to_owned(),
                    Err(e) => e.clone(),
                },
            )
        })
        .collect()
}
