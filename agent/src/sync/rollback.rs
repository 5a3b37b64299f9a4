//! What the agent's death left (a revision that killed it), and an
//! operator's `tend rollback`.

use super::run::{blocking, checks_json, probes_for};
use super::*;

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
                self.record(&Prepared::nothing(commit, self.render_key()), Outcome::Failed, Some(msg.clone()))?;
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
    let t3 = target.clone();
    let f2 = health.failures();
    blocking(agent, move |a| -> Result<(), StoreError> {
        let status = a.status()?;
        if healthy {
            a.set_outcome(t3.seq, Outcome::Healthy, None)?;
        }
        let resources = a.resources_of(Some(&t3));
        // The branch's tip is held so the next poll does not undo this.
        let back =
            Event::OperatorRollback { to: RevRef::of(&t3), tip: status.target_revision.clone(), healthy, failures: f2 };
        a.transition(&back, Measured::with(resources))?;
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
