//! The [`Store`] in memory, for the deterministic simulation of the whole
//! agent (`sync/sim.rs`): what sled keeps, with sled's durability.
//!
//! Writes go to an ordered log, as sled's do; [`Store::flush`] makes the log
//! durable. [`MemStore::kill`] is the process dying: what was flushed stays,
//! and of the writes since the last flush a prefix survives (sled writes its
//! log in order; a SIGKILL keeps what reached the file, loses what was still
//! in its buffers), its length chosen by the caller's random draw. Contents
//! (the object directory beside sled) are files: a kill keeps them.
//! Events are flushed as they are pushed, as `SledStore::push_event` does.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;

use super::{GcReport, Inventory, Pointers, RevisionRecord, Status, Store, StoreError, Verified, referenced_blobs};
use crate::hash::ContentHash;

/// The keyed values sled holds.
#[derive(Debug, Clone, Default)]
struct Values {
    revisions: BTreeMap<u64, RevisionRecord>,
    next_seq: u64,
    inventory: Inventory,
    status: Option<Status>,
    pointers: Pointers,
    outbox: BTreeMap<u64, Value>,
    event_seq: u64,
    dropped: u64,
    verified: Option<Verified>,
}

/// One write of the log.
#[derive(Debug, Clone)]
enum Write {
    Revision(Box<RevisionRecord>),
    RemoveRevision(u64),
    NextSeq(u64),
    Inventory(Box<Inventory>),
    Status(Box<Status>),
    Pointers(Box<Pointers>),
    RemoveEvent(u64),
    Verified(Option<Box<Verified>>),
    /// Writes that survive a kill together or not at all.
    Batch(Vec<Write>),
}

impl Values {
    fn apply(&mut self, w: &Write) {
        match w {
            Write::Revision(r) => {
                self.revisions.insert(r.seq, (**r).clone());
            }
            Write::RemoveRevision(seq) => {
                self.revisions.remove(seq);
            }
            Write::NextSeq(n) => self.next_seq = *n,
            Write::Inventory(i) => self.inventory = (**i).clone(),
            Write::Status(s) => self.status = Some((**s).clone()),
            Write::Pointers(p) => self.pointers = (**p).clone(),
            Write::RemoveEvent(seq) => {
                self.outbox.remove(seq);
            }
            Write::Verified(v) => self.verified = v.as_deref().cloned(),
            Write::Batch(ws) => ws.iter().for_each(|w| self.apply(w)),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// What a restart finds.
    durable: Values,
    /// Writes since the last flush, oldest first.
    log: Vec<Write>,
    /// `durable` with `log` applied: what the running agent sees.
    live: Values,
    blobs: BTreeMap<ContentHash, Vec<u8>>,
    /// Fail every write with this (a full disk), until cleared.
    full: Option<String>,
}

/// A store in memory that a simulated kill can cut short.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A simulated kill may unwind while the lock is held: the data is
        // whole (every write is applied under the lock in one step).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, w: Write) -> Result<(), StoreError> {
        crate::sim::point("a store write");
        let mut i = self.lock();
        if let Some(why) = &i.full {
            return Err(StoreError::Backend { path: "memory".into(), reason: why.clone() });
        }
        i.live.apply(&w);
        i.log.push(w);
        Ok(())
    }

    /// The process dies: the flushed state and `keep` of the writes since
    /// (at most all of them) are what the next start finds.
    pub fn kill(&self, keep: usize) {
        let mut i = self.lock();
        let log = std::mem::take(&mut i.log);
        let mut state = i.durable.clone();
        for w in log.iter().take(keep) {
            state.apply(w);
        }
        i.durable = state.clone();
        i.live = state;
    }

    /// Writes not yet flushed.
    pub fn unflushed(&self) -> usize {
        self.lock().log.len()
    }

    /// Every write fails with `why` (a full disk), or succeeds again (`None`).
    pub fn set_full(&self, why: Option<String>) {
        self.lock().full = why;
    }
}

impl Store for MemStore {
    fn put_blob(&self, hash: &ContentHash, data: &[u8]) -> Result<(), StoreError> {
        let mut i = self.lock();
        if let Some(why) = &i.full {
            return Err(StoreError::Backend { path: "memory/objects".into(), reason: why.clone() });
        }
        i.blobs.entry(*hash).or_insert_with(|| data.to_vec());
        Ok(())
    }

    fn get_blob(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().blobs.get(hash).cloned())
    }

    fn has_blob(&self, hash: &ContentHash) -> Result<bool, StoreError> {
        Ok(self.lock().blobs.contains_key(hash))
    }

    fn blob_path(&self, hash: &ContentHash) -> String {
        format!("memory/objects/{}", hash.short())
    }

    fn put_revision(&self, rec: &RevisionRecord) -> Result<(), StoreError> {
        self.write(Write::Revision(Box::new(rec.clone())))
    }

    fn revisions(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        Ok(self.lock().live.revisions.values().rev().cloned().collect())
    }

    fn latest_revision(&self) -> Result<Option<RevisionRecord>, StoreError> {
        Ok(self.lock().live.revisions.values().next_back().cloned())
    }

    fn next_seq(&self) -> Result<u64, StoreError> {
        let next = {
            let i = self.lock();
            i.live.next_seq.max(i.live.revisions.keys().next_back().copied().unwrap_or(0)) + 1
        };
        self.write(Write::NextSeq(next))?;
        Ok(next)
    }

    fn inventory(&self) -> Result<Inventory, StoreError> {
        Ok(self.lock().live.inventory.clone())
    }

    fn set_inventory(&self, inv: &Inventory) -> Result<(), StoreError> {
        self.write(Write::Inventory(Box::new(inv.clone())))
    }

    fn status(&self) -> Result<Option<Status>, StoreError> {
        Ok(self.lock().live.status.clone())
    }

    fn set_status(&self, status: &Status) -> Result<(), StoreError> {
        self.write(Write::Status(Box::new(status.clone())))
    }

    fn revision(&self, seq: u64) -> Result<Option<RevisionRecord>, StoreError> {
        Ok(self.lock().live.revisions.get(&seq).cloned())
    }

    fn pointers(&self) -> Result<Pointers, StoreError> {
        Ok(self.lock().live.pointers.clone())
    }

    fn set_pointers(&self, p: &Pointers) -> Result<(), StoreError> {
        self.write(Write::Pointers(Box::new(p.clone())))
    }

    fn set_pointers_and_status(&self, p: &Pointers, s: &Status) -> Result<(), StoreError> {
        // One batch in sled: never seen apart, after a kill either.
        self.write(Write::Batch(vec![Write::Pointers(Box::new(p.clone())), Write::Status(Box::new(s.clone()))]))
    }

    fn gc(&self, keep: usize) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let (all, ptr, inv) = {
            let i = self.lock();
            (
                i.live.revisions.values().rev().cloned().collect::<Vec<_>>(),
                i.live.pointers.clone(),
                i.live.inventory.clone(),
            )
        };
        let pinned = [ptr.current.map(|r| r.seq), ptr.last_good.map(|r| r.seq)];
        let mut kept = Vec::new();
        for (n, rec) in all.into_iter().enumerate() {
            if n < keep.max(1) || pinned.contains(&Some(rec.seq)) {
                kept.push(rec);
            } else {
                self.write(Write::RemoveRevision(rec.seq))?;
                report.revisions_removed += 1;
            }
        }
        let needed = referenced_blobs(&kept, &inv);
        // Revisions are removed durably before the contents only they used.
        self.flush()?;
        let mut i = self.lock();
        let before = i.blobs.len();
        i.blobs.retain(|h, _| needed.contains(h));
        report.blobs_removed = before - i.blobs.len();
        Ok(report)
    }

    fn flush(&self) -> Result<(), StoreError> {
        crate::sim::point("a store flush");
        let mut i = self.lock();
        i.log.clear();
        i.durable = i.live.clone();
        Ok(())
    }

    fn push_event(&self, event: &mut Value, limit: usize) -> Result<u64, StoreError> {
        let seq = {
            let mut i = self.lock();
            if let Some(why) = &i.full {
                return Err(StoreError::Backend { path: "memory/outbox".into(), reason: why.clone() });
            }
            let seq = i.live.event_seq + 1;
            i.live.event_seq = seq;
            event["seq"] = seq.into();
            i.live.outbox.insert(seq, event.clone());
            while i.live.outbox.len() > limit.max(1) {
                i.live.outbox.pop_first();
                i.live.dropped += 1;
            }
            seq
        };
        // Durable at once, as sled's outbox is.
        self.flush()?;
        Ok(seq)
    }

    fn events_after(&self, after: u64, max: usize) -> Result<Vec<(u64, Value)>, StoreError> {
        Ok(self.lock().live.outbox.range(after + 1..).take(max).map(|(k, v)| (*k, v.clone())).collect())
    }

    fn remove_event(&self, seq: u64) -> Result<(), StoreError> {
        self.write(Write::RemoveEvent(seq))
    }

    fn dropped_events(&self) -> Result<u64, StoreError> {
        Ok(self.lock().live.dropped)
    }

    fn queued_events(&self) -> u64 {
        self.lock().live.outbox.len() as u64
    }

    fn verified(&self) -> Result<Option<Verified>, StoreError> {
        Ok(self.lock().live.verified.clone())
    }

    fn set_verified(&self, v: Option<&Verified>) -> Result<(), StoreError> {
        self.write(Write::Verified(v.map(|v| Box::new(v.clone()))))
    }
}
