//! What the store says and keeps: revision records, the decision step's
//! pointers, the status, history, events and the metrics textfile.

use super::*;

impl Agent {
    /// Add a revision record; returns its sequence number.
    pub fn record(&self, p: &Prepared, outcome: Outcome, error: Option<String>) -> Result<u64, StoreError> {
        // A failing commit polled again does not flood the history: the record
        // of the same failure is updated in place.
        let latest = self.store.latest_revision()?;
        let seq = match latest {
            Some(l)
                if outcome == Outcome::Failed
                    && l.outcome == Outcome::Failed
                    && l.commit == p.commit
                    && l.render_key == p.render_key =>
            {
                l.seq
            }
            _ => self.store.next_seq()?,
        };
        self.store.put_revision(&RevisionRecord {
            seq,
            commit: p.commit.clone(),
            bundle: self.cfg.source.path.clone(),
            render_key: p.render_key.clone(),
            applied_at: now_rfc3339(),
            outcome,
            error,
            desired: p.desired.clone(),
            forced: p.forced.clone(),
            from: p.from.clone(),
        })?;
        Ok(seq)
    }

    /// Change the outcome of a recorded revision.
    pub fn set_outcome(&self, seq: u64, outcome: Outcome, error: Option<String>) -> Result<(), StoreError> {
        if let Some(mut r) = self.store.revision(seq)? {
            r.outcome = outcome;
            r.error = error;
            self.store.put_revision(&r)?;
        }
        Ok(())
    }

    /// The decision step on the stored state: (before, after, effects).
    pub(super) fn step(
        &self,
        event: &Event,
        now: jiff::Timestamp,
    ) -> Result<(Pointers, Pointers, Vec<Effect>), StoreError> {
        let before = self.store.pointers()?;
        let (after, effects) = cycle::step(&before, event, now, self.rules());
        Ok((before, after, effects))
    }

    /// The rules the decision step takes from the config.
    pub fn rules(&self) -> cycle::Rules {
        cycle::Rules {
            retry_limit: self.cfg.apply.retry.limit,
            crash_limit: self.cfg.apply.crash_limit,
            rollback: self.cfg.apply.rollback,
        }
    }

    /// The summary of a poll with nothing to repair, when the fingerprint of
    /// the revision applied now says so; `None`: check in full.
    pub(super) fn verified_unchanged(&self) -> Result<Option<SyncSummary>, StoreError> {
        let mut guard = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = self.store.verified()?;
        }
        let Some(v) = guard.as_ref() else { return Ok(None) };
        let current = self.store.pointers()?.current.map(|c| c.seq);
        let age = Duration::from_secs(unix_now().saturating_sub(v.at));
        if current != Some(v.seq) || age > FULL_CHECK_EVERY || !self.root.unchanged(&v.fingerprint) {
            return Ok(None);
        }
        Ok(Some(SyncSummary {
            commit: Some(v.commit.clone()),
            action: "unchanged".into(),
            files: v.fingerprint.len(),
            ..Default::default()
        }))
    }

    /// The revision applied now, if any.
    pub fn current(&self) -> Result<Option<RevisionRecord>, StoreError> {
        match self.store.pointers()?.current {
            Some(r) => self.store.revision(r.seq),
            None => Ok(None),
        }
    }

    pub fn last_good(&self) -> Result<Option<RevisionRecord>, StoreError> {
        match self.store.pointers()?.last_good {
            Some(r) => self.store.revision(r.seq),
            None => Ok(None),
        }
    }

    /// The status as stored, or the initial one.
    pub fn status(&self) -> Result<Status, StoreError> {
        let mut s = self.store.status()?.unwrap_or_else(|| self.initial_status());
        self.host.lock().unwrap_or_else(|e| e.into_inner()).fill(&mut s.inventory);
        if let Some(t) = self.pending_last_sync.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            s.last_sync = Some(t);
        }
        Ok(s)
    }

    /// Write a `last_sync` kept in memory (see [`Agent::set_status`]) to the
    /// store; the daemon calls it before it flushes.
    pub fn persist_status(&self) -> Result<(), StoreError> {
        let pending = self.pending_last_sync.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = pending {
            let mut s = self.store.status()?.unwrap_or_else(|| self.initial_status());
            s.last_sync = Some(t);
            self.store.set_status(&s)?;
        }
        Ok(())
    }

    pub(super) fn initial_status(&self) -> Status {
        Status {
            device_id: self.cfg.device_id.clone(),
            fleet: self.cfg.fleet.clone(),
            agent_version: AGENT_VERSION.into(),
            phase: Phase::Progressing,
            revision: None,
            target_revision: None,
            last_good_revision: None,
            source: "ok".into(),
            last_sync: None,
            error: None,
            resources: Resources::default(),
            wave: None,
            due_at: None,
            waiting_for: None,
            waiting_detail: None,
            inventory: serde_json::Value::Null,
        }
    }

    /// One transition of the cycle: the decision step's state for `event`
    /// and the status that state says (with what was measured: `m`),
    /// written in one atomic store write. A transition that changes nothing
    /// but the time of the last sync writes nothing to the flash (the time
    /// is kept in memory and persisted with the next change or flush).
    pub fn transition(&self, event: &Event, m: Measured) -> Result<Transition, StoreError> {
        self.transition_at(event, self.clock.now(), m)
    }

    pub fn transition_at(&self, event: &Event, now: jiff::Timestamp, m: Measured) -> Result<Transition, StoreError> {
        let (before, after, effects) = self.step(event, now)?;
        let mut s = self.status_of(&after)?;
        if let Some(r) = m.resources {
            s.resources = r;
        }
        if m.synced {
            s.last_sync = Some(now_rfc3339());
        }
        if after == before {
            let mut stored = self.store.status()?;
            if let Some(st) = stored.as_mut() {
                st.last_sync.clone_from(&s.last_sync);
            }
            if stored.as_ref() == Some(&s) {
                *self.pending_last_sync.lock().unwrap_or_else(|e| e.into_inner()) = s.last_sync.clone();
                return Ok(Transition { before, after, effects });
            }
        }
        self.store.set_pointers_and_status(&after, &s)?;
        *self.pending_last_sync.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(Transition { before, after, effects })
    }

    /// The stored status with what the state, the config and the decision
    /// step say filled in: the status always agrees with the state.
    pub(super) fn status_of(&self, ptr: &Pointers) -> Result<Status, StoreError> {
        let mut s = self.status()?;
        s.device_id = self.cfg.device_id.clone();
        s.fleet = self.cfg.fleet.clone();
        s.agent_version = AGENT_VERSION.into();
        s.revision = ptr.current.as_ref().map(|r| r.commit.clone());
        s.last_good_revision = ptr.last_good.as_ref().map(|r| r.commit.clone());
        // A store written before the step decided phases keeps its stored
        // status until the next decision.
        let Some(phase) = ptr.phase else { return Ok(s) };
        s.phase = phase;
        s.error.clone_from(&ptr.error);
        if ptr.target.is_some() {
            s.target_revision.clone_from(&ptr.target);
        }
        s.source = if ptr.unreachable.is_some() {
            "unreachable"
        } else if ptr.behind.is_some() {
            "behind"
        } else {
            "ok"
        }
        .into();
        if s.error.is_none() {
            s.error.clone_from(&ptr.behind);
        }
        s.wave.clone_from(&ptr.wave);
        let waiting = ptr.waiting.as_ref().filter(|_| matches!(phase, Phase::Waiting | Phase::Held));
        s.waiting_for = waiting.map(|w| w.waiting_for.as_str().to_owned());
        s.due_at = waiting.and_then(|w| w.due_at).map(|t| t.to_string());
        s.waiting_detail = waiting.map(|w| {
            let mut d = match w.waiting_for {
                crate::rollout::WaitingFor::Lock => format!("{} held since {}", w.detail, w.since),
                _ => w.detail.clone(),
            };
            if let Some(note) = &w.note {
                d = format!("{d}; {note}");
            }
            d
        });
        Ok(s)
    }

    /// Update the stored status; revision pointers are filled in from the store.
    pub fn set_status(&self, f: impl FnOnce(&mut Status)) -> Result<Status, StoreError> {
        let mut s = self.status_of(&self.store.pointers()?)?;
        f(&mut s);
        // An idle poll changes nothing but the time of the last sync: that
        // is kept in memory (and persisted with the next change or flush),
        // so an idle gateway writes nothing to its flash.
        let mut stored = self.store.status()?;
        if let Some(st) = stored.as_mut() {
            st.last_sync.clone_from(&s.last_sync);
        }
        if stored.as_ref() == Some(&s) {
            *self.pending_last_sync.lock().unwrap_or_else(|e| e.into_inner()) = s.last_sync.clone();
        } else {
            self.store.set_status(&s)?;
            *self.pending_last_sync.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        Ok(s)
    }

    /// Desired files of the current revision that are as desired on disk now.
    pub fn resources(&self) -> Resources {
        match self.current() {
            Ok(rev) => self.resources_of(rev.as_ref()),
            Err(_) => Resources::default(),
        }
    }

    /// Desired files of `rev` that are as desired on disk now.
    pub fn resources_of(&self, rev: Option<&RevisionRecord>) -> Resources {
        let count = || -> Result<Resources, SyncError> {
            let Some(rev) = rev else { return Ok(Resources::default()) };
            let targets = files::targets(&rev.desired)
                .map_err(|error| SyncError::Bundle { commit: rev.commit.clone(), error })?;
            let inv = self.store.inventory()?;
            let live = self
                .root
                .observe(targets.keys(), &inv)
                .map_err(|error| SyncError::Apply { commit: rev.commit.clone(), error })?;
            let ready = targets
                .iter()
                .filter(|(p, t)| {
                    matches!(live.get(*p), Some(Live::File { hash, mode, .. }) if *hash == t.hash && *mode == t.mode)
                })
                .count();
            Ok(Resources { total: targets.len(), ready, failed: targets.len() - ready })
        };
        count().unwrap_or_default()
    }

    /// History, newest first.
    pub fn history(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        self.store.revisions()
    }

    /// History as JSON entries, with the current, last-good and bad marks.
    pub fn history_json(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let ptr = self.store.pointers()?;
        Ok(self
            .history()?
            .iter()
            .map(|r| {
                serde_json::json!({
                    "seq": r.seq,
                    "revision": r.commit,
                    "bundle": r.bundle,
                    "applied_at": r.applied_at,
                    "outcome": r.outcome.as_str(),
                    "bad": ptr.quarantine.contains_key(&r.commit),
                    "current": ptr.current.as_ref().is_some_and(|c| c.seq == r.seq),
                    "last_good": ptr.last_good.as_ref().is_some_and(|c| c.seq == r.seq),
                    "error": r.error,
                    "files": r.desired.files.len(),
                    "checks": r.desired.checks.len(),
                    "forced": r.forced,
                    "from": r.from,
                })
            })
            .collect())
    }

    /// Raise an event (blocking: it is written to the store first). A failure to
    /// queue it is logged, never fatal to the sync.
    pub fn event(&self, kind: Kind, fields: serde_json::Value) {
        self.counters.event(kind.as_str());
        log_event(kind, &fields);
        if let Err(e) = self.events.raise(self.store.as_ref(), kind, fields) {
            tracing::warn!(error = %e, kind = kind.as_str(), "could not queue an event");
        }
    }

    /// Trim history per `[apply].history`, then make the store durable (called
    /// when a revision's fate is decided).
    pub(super) fn gc(&self) -> Result<(), StoreError> {
        let gc = self.store.gc(self.cfg.apply.history)?;
        if gc.revisions_removed + gc.blobs_removed > 0 {
            tracing::debug!(revisions = gc.revisions_removed, blobs = gc.blobs_removed, "history trimmed");
        }
        self.store.flush()
    }
}

impl Agent {
    /// Write `[metrics] textfile`, if configured (after a sync or a health
    /// tick; see `report::textfile` for when it is actually rewritten).
    pub fn write_textfile(&self) {
        let Some(path) = &self.cfg.metrics.textfile else { return };
        let status = match self.status() {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "metrics textfile: cannot read the status"),
        };
        let snap = crate::report::textfile::Snapshot {
            status: &status,
            outbox_queued: self.store.queued_events(),
            outbox_dropped: self.store.dropped_events().unwrap_or(0),
            rss_bytes: crate::report::read_own_rss(),
        };
        if let Err(e) = crate::report::textfile::update(path, &self.counters, &snap) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics textfile");
        }
    }
}

/// One log line per change of state (the daemon's default journal; issue 17):
/// every event but `sync_started`, in words. One log call site: each one is
/// code in a binary with a size budget.
fn log_event(kind: Kind, f: &serde_json::Value) {
    let rev = f["revision"].as_str().map(short).unwrap_or("(none)");
    let text = |k: &str| f[k].as_str().unwrap_or("");
    let n = |k: &str| f[k].as_u64().unwrap_or(0);
    let to = f["to"].as_str().map(short);
    let line = match kind {
        Kind::SyncStarted => return,
        Kind::Applied => format!(
            "applied {rev}: {} created, {} updated, {} deleted, {} hooks run",
            n("created"),
            n("updated"),
            n("deleted"),
            n("hooks")
        ),
        Kind::Healthy => format!("{rev} is healthy: it is last-known-good now"),
        Kind::RolledBack if f["by"] == "operator" => {
            format!("rolled back to {} by the operator", to.unwrap_or("(none)"))
        }
        Kind::RolledBack => format!(
            "rolled back from {rev} to {}: {}",
            to.unwrap_or("the state before tend's first revision"),
            text("error")
        ),
        Kind::Failed => format!("{rev} failed: {}", text("error")),
        Kind::DriftRepaired => {
            let ops: Vec<&str> = f["operations"].as_array().into_iter().flatten().filter_map(|o| o.as_str()).collect();
            let more = if ops.len() > 3 { format!(" and {} more", ops.len() - 3) } else { String::new() };
            format!("drift repaired on {rev}: {}{more}", ops[..ops.len().min(3)].join("; "))
        }
        Kind::SourceUnreachable => format!("source unreachable: {}", text("error")),
        Kind::SourceRestored => "source reachable again".to_owned(),
        Kind::Command if f["ok"] == true => format!("fleet command {} done", text("cmd")),
        Kind::Command => format!("fleet command {} failed: {}", text("cmd"), text("error")),
    };
    tracing::info!("{line}");
}
