//! When a revision fails: refuse it, roll back to last-known-good; and an
//! operator's `tend rollback`.

use super::run::{blocking, checks_json, probes_for};
use super::*;

/// A bundle that cannot be applied at all: record it as failed, quarantine it
/// (unless the failure is transient), keep enforcing what is applied.
pub(super) async fn reject(agent: &Arc<Agent>, commit: &str, e: &SyncError) -> Result<(), SyncError> {
    let transient = e.is_transient();
    let msg = e.to_string();
    let c = commit.to_owned();
    let e_kind = match e {
        SyncError::Blocked { .. } => "blocked",
        SyncError::Untrusted { .. } => "untrusted",
        _ => "bundle",
    };
    blocking(agent, move |a| -> Result<(), StoreError> {
        let p = Prepared {
            commit: c.clone(),
            render_key: a.render_key(),
            desired: Desired::default(),
            blobs: HashMap::new(),
            rendered: true,
            forced: None,
        };
        if !transient {
            a.record(&p, Outcome::Failed, Some(msg.clone()))?;
            let why = match e_kind {
                "blocked" => "rejected: something on the gateway is in the way",
                "untrusted" => "refused: the commit's signature is not trusted",
                _ => "rejected: the bundle is invalid",
            };
            a.update_pointers(|ptr| {
                ptr.quarantine.insert(c.clone(), why.into());
            })?;
            a.gc()?;
        }
        a.event(Kind::Failed, serde_json::json!({ "revision": c, "error": msg }));
        a.set_status(|s| set_failed(s, c, msg))?;
        Ok(())
    })
    .await?;
    if let Err(h) = enforce_current(agent).await {
        tracing::warn!(error = %h, "could not re-enforce the current revision");
    }
    Ok(())
}

impl Agent {
    /// The agent died `crash_limit` times applying `commit` (the decision
    /// step's [`Effect::Crashed`]): its history record and the `failed` and
    /// `rolled_back` events (the second reaches the fleet's circuit breaker).
    /// `to`: the revision the gateway is back on. Returns the status's error.
    pub(super) fn crashed(
        &self,
        commit: &str,
        reason: &str,
        seq: Option<u64>,
        to: Option<&RevRef>,
    ) -> Result<String, StoreError> {
        let after = match to {
            Some(r) => format!("rolled back to {}", short(&r.commit)),
            None => "rolled back to the state before tend's first revision".into(),
        };
        let msg = format!("revision {} failed: {reason}; {after}", short(commit));
        tracing::error!("{msg}");
        match seq {
            Some(seq) => self.set_outcome(seq, Outcome::RolledBack, Some(msg.clone()))?,
            None => {
                let p = Prepared {
                    commit: commit.to_owned(),
                    render_key: self.render_key(),
                    desired: Desired::default(),
                    blobs: HashMap::new(),
                    rendered: true,
                    forced: None,
                };
                self.record(&p, Outcome::Failed, Some(msg.clone()))?;
            }
        }
        self.event(Kind::Failed, serde_json::json!({ "revision": commit, "error": reason }));
        self.event(
            Kind::RolledBack,
            serde_json::json!({ "revision": commit, "error": reason, "to": to.map(|r| r.commit.clone()), "after": after }),
        );
        self.gc()?;
        Ok(msg)
    }
}

/// The status of a sync that found `commit` on the branch and failed with `error`.
fn set_failed(s: &mut Status, commit: String, error: String) {
    s.phase = "failed".into();
    s.source = "ok".into();
    s.target_revision = Some(commit);
    s.last_sync = Some(now_rfc3339());
    s.error = Some(error);
}

/// A revision failed to apply or failed its health window: return to
/// last-known-good (from the store, no network), record and quarantine it.
/// Returns the error to report, with what happened after.
pub(super) async fn fail_and_roll_back(
    agent: &Arc<Agent>,
    p: &Prepared,
    seq: Option<u64>,
    error: SyncError,
) -> SyncError {
    let kind = error.kind();
    let rollback_enabled = agent.cfg.apply.rollback;
    let p = p.clone();
    let msg = error.to_string();
    let p2 = p.clone();
    let outcome = blocking(agent, move |a| -> Result<(String, &'static str), SyncError> {
        let p = p2;
        // Record the attempt (an apply that failed midway has no record yet).
        let seq = match seq {
            Some(s) => s,
            None => a.record(&p, Outcome::Failed, Some(msg.clone()))?,
        };
        let after;
        let mut phase = "failed";
        if rollback_enabled {
            let lkg = a.last_good()?;
            let (lkg_commit, lkg_desired) = match &lkg {
                Some(r) => (r.commit.clone(), r.desired.clone()),
                None => (String::new(), Desired::default()),
            };
            match a.enforce(&lkg_commit, &lkg_desired, &HashMap::new(), true) {
                Ok(_) => {
                    a.update_pointers(|ptr| {
                        ptr.current = lkg.as_ref().map(RevRef::of);
                        ptr.current_gated = true;
                    })?;
                    a.set_outcome(seq, Outcome::RolledBack, Some(msg.clone()))?;
                    phase = "rolled_back";
                    after = match &lkg {
                        Some(r) => format!("rolled back to {}", short(&r.commit)),
                        None => "rolled back to the state before tend's first revision".into(),
                    };
                }
                Err(re) => {
                    a.set_outcome(seq, Outcome::Failed, Some(msg.clone()))?;
                    after = format!("rollback failed too: {re}");
                }
            }
        } else {
            a.set_outcome(seq, Outcome::Failed, Some(msg.clone()))?;
            a.update_pointers(|ptr| {
                ptr.current = Some(RevRef { seq, commit: p.commit.clone(), render_key: p.render_key.clone() });
                ptr.current_gated = true;
            })?;
            phase = "degraded";
            after = "rollback is off ([apply].rollback = false)".into();
        }
        // Once back on last-known-good: the decision step counts a transient
        // failure or quarantines the commit, in one write with the status
        // that says so (a crash before it leaves the commit to be tried
        // again, never a quarantined revision in place).
        let resources = a.resources();
        let full = format!("{msg}; {after}");
        a.transition(&Event::Failed { commit: p.commit.clone(), kind }, |s, _| {
            s.phase = phase.into();
            s.source = "ok".into();
            s.target_revision = Some(p.commit.clone());
            s.last_sync = Some(now_rfc3339());
            s.error = Some(full);
            s.resources = resources;
        })?;
        let kind = if phase == "rolled_back" { Kind::RolledBack } else { Kind::Failed };
        a.event(
            kind,
            serde_json::json!({
                "revision": p.commit,
                "error": msg,
                "to": a.store.pointers()?.current.map(|c| c.commit),
                "after": after,
            }),
        );
        a.gc()?;
        Ok((after, phase))
    })
    .await;
    let (final_error, unrecorded) = match (error, outcome) {
        (SyncError::Unhealthy { commit, failures, .. }, Ok((after, _))) => {
            (SyncError::Unhealthy { commit, failures, after }, false)
        }
        (e, Ok((after, _))) => (SyncError::Rollback(format!("{e}; {after}")), false),
        (e, Err(inner)) => (SyncError::Rollback(format!("{e}; and then: {inner}")), true),
    };
    if unrecorded {
        // The rollback itself could not be recorded: say so, as well as the store lets.
        let (full, commit) = (final_error.to_string(), p.commit.clone());
        let recorded = blocking(agent, move |a| a.set_status(|s| set_failed(s, commit, full))).await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, "could not record the status");
        }
    }
    final_error
}

/// `tend rollback [REVISION]`: return to last-known-good, or to a revision in
/// history (a commit prefix). The branch's current tip is held (quarantined)
/// so the rollback is not undone by the next poll; `tend sync --retry` or a new
/// commit lifts the hold.
pub async fn rollback(agent: &Arc<Agent>, revision: Option<String>) -> Result<SyncSummary, SyncError> {
    let started = Instant::now();
    let r = rollback_inner(agent, revision).await;
    agent.counters.sync_done(if r.is_ok() { "rolled_back" } else { "failed" }, started.elapsed());
    r
}

pub(super) async fn rollback_inner(agent: &Arc<Agent>, revision: Option<String>) -> Result<SyncSummary, SyncError> {
    let target = blocking(agent, move |a| -> Result<RevisionRecord, SyncError> {
        match revision {
            // As `helm rollback`: the newest healthy revision older than the
            // one applied now, so a rollback always undoes something.
            None => {
                let current = a.store.pointers()?.current.ok_or_else(|| {
                    SyncError::Rollback("nothing is applied yet: there is nothing to roll back".into())
                })?;
                a.history()?
                    .into_iter()
                    .filter(|r| {
                        r.seq < current.seq
                            && r.commit != current.commit
                            && r.outcome == Outcome::Healthy
                            && !r.desired.is_empty()
                    })
                    .max_by_key(|r| r.seq)
                    .ok_or_else(|| {
                        SyncError::Rollback(format!(
                            "no healthy revision older than {} in the history: nothing to return to (see `tend history`)",
                            short(&current.commit)
                        ))
                    })
            }
            Some(rev) => {
                if rev.len() < 4 || !rev.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(SyncError::Rollback(format!("{rev:?} is not a commit id (at least 4 hex digits)")));
                }
                let candidates: Vec<RevisionRecord> = a
                    .history()?
                    .into_iter()
                    .filter(|r| r.commit.starts_with(&rev.to_ascii_lowercase()) && !r.desired.is_empty())
                    .collect();
                let distinct: BTreeSet<&str> = candidates.iter().map(|r| r.commit.as_str()).collect();
                match distinct.len() {
                    0 => Err(SyncError::Rollback(format!("revision {rev} is not in the history (see `tend history`)"))),
                    1 => Ok(candidates.into_iter().next().expect("one")),
                    _ => Err(SyncError::Rollback(format!(
                        "revision {rev} is ambiguous: {}",
                        distinct.into_iter().collect::<Vec<_>>().join(", ")
                    ))),
                }
            }
        }
    })
    .await?;
    let span = tracing::info_span!("rollback", revision = %short(&target.commit));
    rollback_to(agent, target).instrument(span).await
}

pub(super) async fn rollback_to(agent: &Arc<Agent>, target: RevisionRecord) -> Result<SyncSummary, SyncError> {
    let t2 = target.clone();
    let (plan, _) = blocking(agent, move |a| a.enforce(&t2.commit, &t2.desired, &HashMap::new(), true)).await?;
    let probes = probes_for(agent, &target.commit, &target.desired)?;
    let health = health::window(&probes, agent.cfg.apply.health_timeout).await;
    let mut summary = SyncSummary::from_plan(&plan);
    summary.commit = Some(target.commit.clone());
    summary.action = "rolled_back".into();
    summary.files = target.desired.files.len();
    summary.checks = checks_json(&health);
    let healthy = health.healthy();
    let failures = health.failures();
    let t3 = target.clone();
    blocking(agent, move |a| -> Result<(), StoreError> {
        let status = a.status()?;
        if healthy {
            a.set_outcome(t3.seq, Outcome::Healthy, None)?;
        }
        let resources = a.resources_of(Some(&t3));
        // The branch's tip is held so the next poll does not undo this.
        let back = Event::OperatorRollback { to: RevRef::of(&t3), tip: status.target_revision.clone(), healthy };
        a.transition(&back, |s, _| {
            s.phase = if !healthy {
                "degraded".into()
            } else if s.target_revision.as_deref().is_none_or(|t| t == t3.commit) {
                "synced".into()
            } else {
                "rolled_back".into()
            };
            s.last_sync = Some(now_rfc3339());
            s.error = (!healthy).then(|| format!("revision {} is unhealthy: {failures}", short(&t3.commit)));
            s.resources = resources;
        })?;
        a.event(Kind::RolledBack, serde_json::json!({ "to": t3.commit, "by": "operator", "healthy": healthy }));
        Ok(())
    })
    .await?;
    if healthy {
        Ok(summary)
    } else {
        Err(SyncError::Unhealthy {
            commit: target.commit,
            failures: health.failures(),
            after: "left in place (an operator asked for it)".into(),
        })
    }
}
