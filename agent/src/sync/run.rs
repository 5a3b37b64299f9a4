//! The cycle itself, async: boot, one sync (fetch, decide, prepare, wait or
//! apply, health gate), and drift repair of what is applied.

use super::rollback::{fail_and_roll_back, reject};
use super::*;

/// Run a blocking step of the cycle on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(agent: &Arc<Agent>, f: impl FnOnce(&Agent) -> T + Send + 'static) -> T {
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
        let Some(cur) = a.current()? else { return Ok(None) };
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
        // The failure's record and events first, then the pointers: a death
        // between the two is counted again and reported twice, never lost.
        let crashed = effects.iter().find_map(|e| match e {
            Effect::Crashed { commit, reason, seq } => Some((commit, reason, *seq)),
            _ => None,
        });
        let crashed_seq = crashed.as_ref().and_then(|(_, _, seq)| *seq);
        if let Some((commit, reason, seq)) = crashed {
            let msg = a.crashed(commit, reason, seq, after.current.as_ref())?;
            let back = match &after.current {
                Some(r) => a.store.revision(r.seq)?,
                None => None,
            };
            let resources = a.resources_of(back.as_ref());
            let phase = if after.current.is_some() { "rolled_back" } else { "failed" };
            let mut st = a.status_of(&after)?;
            st.phase = phase.into();
            st.target_revision = Some(commit.clone());
            st.error = Some(msg);
            st.resources = resources;
            st.waiting_for = None;
            st.due_at = None;
            st.waiting_detail = None;
            a.store.set_pointers_and_status(&after, &st)?;
        } else {
            // The status says what the pointers say (the revision in place).
            let st = a.status_of(&after)?;
            a.store.set_pointers_and_status(&after, &st)?;
        }
        if let Some((left, died)) = effects.iter().find_map(|e| match e {
            Effect::Restore { left, died } => Some((left, *died)),
            _ => None,
        }) {
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
            // No last-known-good: back to the state before tend's first revision.
            if after.current.is_none() {
                a.enforce("", &Desired::default(), &HashMap::new(), true)?;
            }
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
    agent.decide(&Event::Stop)?;
    agent.store.flush()
}

/// One sync cycle: fetch, then apply the branch's revision if it is new (health
/// gate, rollback on failure), or re-enforce the current one if not.
pub async fn sync(agent: &Arc<Agent>, opts: SyncOptions) -> Result<SyncSummary, SyncError> {
    let started = Instant::now();
    let rollbacks = agent.counters.events_of("rolled_back");
    let r = sync_inner(agent, opts).await;
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

pub(super) async fn sync_inner(agent: &Arc<Agent>, opts: SyncOptions) -> Result<SyncSummary, SyncError> {
    let mut timings = Timings::default();
    let t = Instant::now();
    let fetched: Result<Fetched, SourceError> = blocking(agent, |a| a.source.fetch()).await;
    timings.fetch_ms = ms(t.elapsed());
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            if opts.dry_run {
                return Err(e.into());
            }
            // Offline: keep enforcing what is applied.
            let healed = if opts.no_heal { Ok(None) } else { enforce_current(agent).await };
            let msg = format!("source: {e}");
            let heal_err = healed.as_ref().err().map(ToString::to_string);
            let shown = e.to_string();
            blocking(agent, move |a| {
                a.note_source(false, Some(&shown));
                let resources = a.resources();
                a.set_status(|s| {
                    s.source = "unreachable".into();
                    s.last_sync = Some(now_rfc3339());
                    s.error = Some(match heal_err {
                        Some(h) => format!("{msg}; {h}"),
                        None => msg,
                    });
                    s.resources = resources;
                    if s.revision.is_none() {
                        s.phase = "failed".into();
                    }
                })
            })
            .await?;
            return Err(match healed {
                Err(repair) => SyncError::Offline { error: e, repair: Box::new(repair) },
                Ok(_) => e.into(),
            });
        }
    };
    let span = tracing::info_span!("sync", revision = %short(&fetched.commit));
    sync_fetched(agent, opts, fetched, timings).instrument(span).await
}

pub(super) async fn sync_fetched(
    agent: &Arc<Agent>,
    opts: SyncOptions,
    fetched: Fetched,
    mut timings: Timings,
) -> Result<SyncSummary, SyncError> {
    let commit = fetched.commit.clone();

    // The decision step: quarantine (cleared when the branch moves, honoured
    // otherwise), the same revision (repair), or a new one (prepare).
    let tip = Event::Tip { commit: commit.clone(), render_key: agent.render_key(), retry: opts.retry };
    let (_, effects) = blocking(agent, move |a| {
        a.note_source(true, None);
        a.decide(&tip)
    })
    .await?;
    let refused = effects.iter().find_map(|e| match e {
        Effect::Refuse { reason } => Some(reason.clone()),
        _ => None,
    });
    if let Some(reason) = refused {
        let err = SyncError::Quarantined { commit: commit.clone(), reason };
        if !opts.dry_run {
            let healed = enforce_current(agent).await?;
            let msg = err.to_string();
            let c = commit.clone();
            blocking(agent, move |a| {
                let resources = a.resources();
                a.set_status(|s| {
                    s.source = "ok".into();
                    s.target_revision = Some(c);
                    s.last_sync = Some(now_rfc3339());
                    s.error = Some(msg);
                    s.resources = resources;
                })
            })
            .await?;
            if let Some(h) = healed {
                tracing::debug!(action = %h.action, "current revision enforced");
            }
        }
        return Err(err);
    }

    // The same revision as applied now, its health decided: repair drift
    // (self-heal) without rendering or reading the revision twice.
    let unchanged = !effects.contains(&Effect::Prepare);
    let healed = if unchanged && !opts.dry_run && !opts.no_heal {
        let t = Instant::now();
        let r = enforce_current(agent).await;
        timings.apply_ms = ms(t.elapsed());
        match r {
            // A damaged store lacks contents the repair needs: the revision
            // is rendered from Git again, below, as if it were new.
            Err(e @ SyncError::MissingContent { .. }) => {
                tracing::warn!(error = %e, "rendering the revision from Git again");
                None
            }
            Err(e) => {
                // The revision applied now cannot be enforced (something in
                // the way, a runtime down): the status says so.
                let msg = e.to_string();
                blocking(agent, move |a| -> Result<(), StoreError> {
                    a.update_pointers(|p| p.heal_failed = true)?;
                    a.set_status(|st| {
                        st.source = "ok".into();
                        st.last_sync = Some(now_rfc3339());
                        st.phase = "degraded".into();
                        st.error = Some(msg);
                    })?;
                    Ok(())
                })
                .await?;
                return Err(e);
            }
            Ok(s) => Some(s.unwrap_or_default()),
        }
    } else {
        None
    };
    if unchanged && !opts.dry_run && (opts.no_heal || healed.is_some()) {
        let mut s = match healed {
            Some(s) => s,
            None => SyncSummary { commit: Some(commit.clone()), action: "unchanged".into(), ..Default::default() },
        };
        s.received_pack = fetched.received_pack;
        s.timings = timings;
        let files = s.files;
        let healed = !opts.no_heal;
        blocking(agent, move |a| -> Result<(), StoreError> {
            // Enforced again after a failed repair: no longer degraded.
            let recovered = healed && a.store.pointers()?.heal_failed;
            if recovered {
                a.update_pointers(|p| p.heal_failed = false)?;
            }
            a.set_status(|st| {
                st.source = "ok".into();
                st.last_sync = Some(now_rfc3339());
                if healed {
                    st.resources = Resources { total: files, ready: files, failed: 0 };
                }
                if recovered || (st.phase != "degraded" && st.phase != "rolled_back") {
                    st.phase = "synced".into();
                    st.error = None;
                }
                st.target_revision = st.revision.clone();
            })?;
            Ok(())
        })
        .await?;
        return Ok(s);
    }

    let t = Instant::now();
    let c = commit.clone();
    let prepared = blocking(agent, move |a| a.prepare(&c)).await;
    timings.render_ms = ms(t.elapsed());
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            if !opts.dry_run {
                reject(agent, &commit, &e).await?;
            }
            return Err(e);
        }
    };

    if opts.dry_run {
        let t = Instant::now();
        let p = prepared.clone();
        let plan = blocking(agent, move |a| -> Result<Plan, SyncError> {
            let inv = a.store.inventory()?;
            a.plan(&p.commit, &p.desired, &inv, a.cfg.apply.prune)
        })
        .await?;
        timings.plan_ms = ms(t.elapsed());
        let mut s = SyncSummary::from_plan(&plan);
        if !plan.blocked.is_empty() {
            let blocked =
                plan.blocked.iter().map(|b| format!("{}: {}", b.path.to_absolute_string(), b.reason)).collect();
            return Err(SyncError::Blocked { commit, blocked });
        }
        s.commit = Some(commit);
        s.action = "planned".into();
        s.dry_run = true;
        s.received_pack = fetched.received_pack;
        s.set_counts(&prepared.desired);
        s.timings = timings;
        return Ok(s);
    }

    // Rollout control (SPEC §7): due for this gateway's wave, inside a
    // window, no update lock held?
    let (c, policy, told) = (commit.clone(), prepared.desired.rollout.clone(), opts.now);
    let gated = blocking(agent, move |a| -> Result<Gated, SyncError> {
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
        let breaker_off = match (&a.breaker, &failing) {
            _ if policy.as_ref().is_none_or(|p| p.max_failed.is_none()) => None,
            (None, _) => Some("circuit breaker off: no [mqtt] (or a one-shot command)"),
            (Some(_), None) => Some("circuit breaker: the fleet's reports not read yet"),
            _ => None,
        };
        let gate = gate::gather(policy.as_ref(), &local, committed_at, failing, now)
            .map_err(|error| SyncError::Rollout { commit: c.clone(), error })?;
        let wave = gate.wave.as_ref().map(|(w, _)| w.clone());
        // The decision and the status that says it, in one store write.
        let mut newly = false;
        let event = Event::Prepared { commit: c.clone(), gate, now: told };
        let (_, effects, _) = a.transition_at(&event, now, |s, effects| {
            if let Some(Effect::Wait { phase, waiting }) = effects.iter().find(|e| matches!(e, Effect::Wait { .. })) {
                let reason = Some(waiting.waiting_for.as_str());
                newly = s.waiting_for.as_deref() != reason || s.target_revision.as_deref() != Some(c.as_str());
                set_waiting(s, &c, wave.clone(), *phase, waiting, breaker_off);
            } else {
                // Applied next: a new revision in progress, nothing waited for.
                s.phase = "progressing".into();
                s.source = "ok".into();
                s.target_revision = Some(c.clone());
                s.error = None;
                s.wave = wave.clone();
                s.waiting_for = None;
                s.due_at = None;
                s.waiting_detail = None;
            }
        })?;
        Ok(Gated { newly, effects })
    })
    .await;
    let Gated { newly, effects } = match gated {
        Ok(v) => v,
        Err(e @ SyncError::Rollout { .. }) => {
            reject(agent, &commit, &e).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if let Some((phase, waiting)) = effects.iter().find_map(|e| match e {
        Effect::Wait { phase, waiting } => Some((*phase, waiting.clone())),
        _ => None,
    }) {
        if phase == Phase::Waiting && !prepared.desired.containers.is_empty() {
            let (c, containers) = (commit.clone(), prepared.desired.containers.clone());
            blocking(agent, move |a| a.prefetch_images(&c, &containers)).await;
        }
        let summary = (fetched.received_pack, timings);
        return wait(agent, &commit, phase, &waiting, newly, summary).await;
    }
    let forced = effects.iter().find_map(|e| match e {
        Effect::Apply { forced } => forced.clone(),
        _ => None,
    });
    if let Some(f) = &forced {
        tracing::info!(revision = short(&commit), forced = %f, "applying past the rollout policy");
    }

    // A new revision (the status says `progressing` since the gate's transition).
    let t = Instant::now();
    // The contents go to the apply (and the store) and are dropped there; the
    // rest is shared with the health gate and a rollback, not copied.
    let mut prepared = prepared;
    prepared.forced.clone_from(&forced);
    let blobs = std::mem::take(&mut prepared.blobs);
    let prepared = Arc::new(prepared);
    let p = prepared.clone();
    let applied = blocking(agent, move |a| -> Result<(Plan, ApplyReport, u64), SyncError> {
        // The attempt is durable before the first write: if the agent dies
        // from here to the end of the health window, the next start counts it.
        a.decide(&Event::Applying { commit: p.commit.clone() })?;
        a.store.flush()?;
        let mut started = serde_json::json!({ "revision": p.commit });
        if let Some(f) = forced {
            started["forced"] = f.into();
        }
        a.event(Kind::SyncStarted, started);
        let prune = a.cfg.apply.prune;
        let result = a.enforce(&p.commit, &p.desired, &blobs, prune);
        drop(blobs);
        match result {
            Ok((plan, report)) => {
                let seq = a.record(&p, Outcome::Applied, None)?;
                let current = RevRef { seq, commit: p.commit.clone(), render_key: p.render_key.clone() };
                // The status names the revision in place, in the same write.
                a.transition(&Event::Applied { current }, |_, _| {})?;
                let (created, updated, deleted, hooks) = plan.counts();
                a.event(
                    Kind::Applied,
                    serde_json::json!({ "revision": p.commit, "created": created, "updated": updated, "deleted": deleted, "hooks": hooks }),
                );
                a.store.flush()?;
                Ok((plan, report, seq))
            }
            Err(e) => Err(e),
        }
    })
    .await;
    timings.apply_ms = ms(t.elapsed());
    let (plan, _report, seq) = match applied {
        Ok(v) => v,
        // Refused before the first write: nothing to roll back.
        Err(e @ SyncError::Blocked { .. }) => {
            reject(agent, &commit, &e).await?;
            return Err(e);
        }
        Err(e) => return Err(fail_and_roll_back(agent, &prepared, None, e).await),
    };
    let mut summary = SyncSummary::from_plan(&plan);
    summary.commit = Some(commit.clone());
    summary.action = "applied".into();
    summary.received_pack = fetched.received_pack;
    summary.set_counts(&prepared.desired);

    // Health gate.
    let t = Instant::now();
    let probes = probes_for(agent, &commit, &prepared.desired)?;
    let health = if probes.is_empty() {
        Health::default()
    } else {
        tracing::debug!(checks = probes.len(), timeout = ?agent.cfg.apply.health_timeout, "waiting for health checks");
        health::window(&probes, agent.cfg.apply.health_timeout).await
    };
    timings.health_ms = ms(t.elapsed());
    summary.checks = checks_json(&health);
    summary.timings = timings;
    if health.healthy() {
        let c = commit.clone();
        blocking(agent, move |a| -> Result<(), StoreError> {
            a.set_outcome(seq, Outcome::Healthy, None)?;
            let resources = a.resources();
            a.transition(&Event::Health { healthy: true }, |s, _| {
                s.phase = "synced".into();
                s.target_revision = Some(c.clone());
                s.last_sync = Some(now_rfc3339());
                s.error = None;
                s.resources = resources;
            })?;
            a.event(Kind::Healthy, serde_json::json!({ "revision": c }));
            a.gc()?;
            Ok(())
        })
        .await?;
        tracing::debug!(revision = short(&commit), "revision healthy");
        Ok(summary)
    } else {
        let failures = health.failures();
        tracing::info!(revision = short(&commit), "unhealthy: {failures}");
        let e = SyncError::Unhealthy { commit: commit.clone(), failures, after: String::new() };
        Err(fail_and_roll_back(agent, &prepared, Some(seq), e).await)
    }
}

/// What the rollout gate decided for a prepared revision.
pub(super) struct Gated {
    /// Whether it waits for something new (said once in the log).
    newly: bool,
    effects: Vec<Effect>,
}

/// A prepared revision not applied yet (rollout control): the status already
/// says what it waits for ([`set_waiting`], written with the decision); the
/// revision applied now is repaired as usual, and the images it will need are
/// pulled.
pub(super) async fn wait(
    agent: &Arc<Agent>,
    commit: &str,
    phase: Phase,
    waiting: &crate::rollout::Waiting,
    newly: bool,
    (received_pack, timings): (bool, Timings),
) -> Result<SyncSummary, SyncError> {
    if let Err(e) = enforce_current(agent).await {
        tracing::warn!(error = %e, "could not re-enforce the current revision");
    }
    blocking(agent, move |a| {
        let resources = a.resources();
        a.set_status(|s| s.resources = resources)
    })
    .await?;
    let due_at = waiting.due_at.map(|t| t.to_string());
    let reason = waiting.waiting_for.as_str();
    if newly {
        tracing::info!(revision = short(commit), waiting_for = reason, detail = %waiting.detail, due_at = ?due_at, "{}", phase.as_str());
    }
    Ok(SyncSummary {
        commit: Some(commit.to_owned()),
        action: phase.as_str().into(),
        received_pack,
        timings,
        waiting_for: Some(reason.into()),
        due_at,
        ..Default::default()
    })
}

/// The status of a revision waiting (or held): why, until when, what for.
fn set_waiting(
    s: &mut Status,
    commit: &str,
    wave: Option<String>,
    phase: Phase,
    waiting: &crate::rollout::Waiting,
    note: Option<&str>,
) {
    let mut detail = match waiting.waiting_for {
        crate::rollout::WaitingFor::Lock => format!("{} held since {}", waiting.detail, waiting.since),
        _ => waiting.detail.clone(),
    };
    if let Some(note) = note {
        detail = format!("{detail}; {note}");
    }
    s.phase = phase.as_str().into();
    s.source = "ok".into();
    s.target_revision = Some(commit.to_owned());
    s.last_sync = Some(now_rfc3339());
    s.error = (phase == Phase::Held).then(|| format!("held: revision {} {}", short(commit), waiting.detail));
    s.wave = wave;
    s.waiting_for = Some(waiting.waiting_for.as_str().into());
    s.due_at = waiting.due_at.map(|t| t.to_string());
    s.waiting_detail = Some(detail);
}

/// The bundle's checks, and one probe per container.
pub(super) fn probes_for(
    agent: &Agent,
    commit: &str,
    desired: &Desired,
) -> Result<Vec<Box<dyn health::Probe>>, SyncError> {
    let mut probes = health::probes_for(&desired.checks);
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
