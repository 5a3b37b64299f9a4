//! The [`Store`] on sled, the only file that imports it.
//!
//! Layout: tree `blobs` (content hash → bytes), tree `revisions` (big-endian seq →
//! versioned JSON), tree `meta` (`inventory`, `status` → versioned JSON). The
//! cache is kept small on purpose: sled's default is 1 GiB and a gateway may have
//! 256 MB of RAM.

use std::path::{Path, PathBuf};

use super::{
    GcReport, Inventory, Pointers, RevisionRecord, Status, Store, StoreError, decode, encode, referenced_blobs,
};
use crate::hash::ContentHash;

pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    blobs: sled::Tree,
    revisions: sled::Tree,
    meta: sled::Tree,
    outbox: sled::Tree,
    /// Serialises outbox appends (sequence numbers must not repeat).
    outbox_lock: std::sync::Mutex<()>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("path", &self.path).finish()
    }
}

const CACHE_BYTES: u64 = 1 << 20;

impl SledStore {
    /// Open (or create) the store at `dir`. A store held by another process is
    /// reported as [`StoreError::Locked`].
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let path = dir.to_path_buf();
        let shown = path.display().to_string();
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend { path: shown.clone(), reason: format!("cannot create: {e}") })?;
        let db = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).flush_every_ms(Some(1000)).open().map_err(
            |e| match e {
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
                {
                    StoreError::Locked { path: shown.clone() }
                }
                other => StoreError::Backend { path: shown.clone(), reason: other.to_string() },
            },
        )?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|e| StoreError::Backend { path: shown.clone(), reason: e.to_string() })
        };
        Ok(SledStore {
            blobs: tree("blobs")?,
            revisions: tree("revisions")?,
            meta: tree("meta")?,
            outbox: tree("outbox")?,
            outbox_lock: std::sync::Mutex::new(()),
            db,
            path,
        })
    }

    fn err(&self, e: sled::Error) -> StoreError {
        StoreError::Backend { path: self.path.display().to_string(), reason: e.to_string() }
    }

    fn get_meta<T: for<'de> serde::Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.meta.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => decode(key, &bytes).map(Some),
        }
    }
}

impl Store for SledStore {
    fn put_blob(&self, hash: &ContentHash, data: &[u8]) -> Result<(), StoreError> {
        if !self.has_blob(hash)? {
            self.blobs.insert(hash.0, data).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn get_blob(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.blobs.get(hash.0).map_err(|e| self.err(e))?.map(|v| v.to_vec()))
    }

    fn has_blob(&self, hash: &ContentHash) -> Result<bool, StoreError> {
        self.blobs.contains_key(hash.0).map_err(|e| self.err(e))
    }

    fn put_revision(&self, rec: &RevisionRecord) -> Result<(), StoreError> {
        self.revisions.insert(rec.seq.to_be_bytes(), encode(rec)).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn revisions(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.revisions.iter().rev() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push(decode(&format!("revision {}", seq_of(&k)), &v)?);
        }
        Ok(out)
    }

    fn latest_revision(&self) -> Result<Option<RevisionRecord>, StoreError> {
        match self.revisions.last().map_err(|e| self.err(e))? {
            None => Ok(None),
            Some((k, v)) => decode(&format!("revision {}", seq_of(&k)), &v).map(Some),
        }
    }

    fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(match self.revisions.last().map_err(|e| self.err(e))? {
            None => 1,
            Some((k, _)) => seq_of(&k) + 1,
        })
    }

    fn inventory(&self) -> Result<Inventory, StoreError> {
        Ok(self.get_meta("inventory")?.unwrap_or_default())
    }

    fn set_inventory(&self, inv: &Inventory) -> Result<(), StoreError> {
        self.meta.insert("inventory", encode(inv)).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn status(&self) -> Result<Option<Status>, StoreError> {
        self.get_meta("status")
    }

    fn set_status(&self, status: &Status) -> Result<(), StoreError> {
        self.meta.insert("status", encode(status)).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn revision(&self, seq: u64) -> Result<Option<RevisionRecord>, StoreError> {
        match self.revisions.get(seq.to_be_bytes()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => decode(&format!("revision {seq}"), &v).map(Some),
        }
    }

    fn pointers(&self) -> Result<Pointers, StoreError> {
        Ok(self.get_meta("pointers")?.unwrap_or_default())
    }

    fn set_pointers(&self, p: &Pointers) -> Result<(), StoreError> {
        self.meta.insert("pointers", encode(p)).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn gc(&self, keep: usize) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let all = self.revisions()?;
        let ptr = self.pointers()?;
        let pinned = [ptr.current.map(|r| r.seq), ptr.last_good.map(|r| r.seq)];
        let mut kept = Vec::new();
        for (i, rec) in all.into_iter().enumerate() {
            if i < keep.max(1) || pinned.contains(&Some(rec.seq)) {
                kept.push(rec);
            } else {
                self.revisions.remove(rec.seq.to_be_bytes()).map_err(|e| self.err(e))?;
                report.revisions_removed += 1;
            }
        }
        let needed = referenced_blobs(&kept, &self.inventory()?);
        for item in self.blobs.iter().keys() {
            let k = item.map_err(|e| self.err(e))?;
            let Ok(bytes) = <[u8; 32]>::try_from(k.as_ref()) else { continue };
            if !needed.contains(&ContentHash(bytes)) {
                self.blobs.remove(k).map_err(|e| self.err(e))?;
                report.blobs_removed += 1;
            }
        }
        Ok(report)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    fn push_event(&self, event: &mut serde_json::Value, limit: usize) -> Result<u64, StoreError> {
        let _guard = self.outbox_lock.lock().unwrap_or_else(|e| e.into_inner());
        let last: u64 = self.get_meta("event_seq")?.unwrap_or(0);
        let seq = last + 1;
        self.meta.insert("event_seq", encode(&seq)).map_err(|e| self.err(e))?;
        event["seq"] = seq.into();
        self.outbox.insert(seq.to_be_bytes(), encode(event)).map_err(|e| self.err(e))?;
        while self.outbox.len() > limit.max(1) {
            let Some((k, _)) = self.outbox.pop_min().map_err(|e| self.err(e))? else { break };
            let dropped: u64 = self.get_meta("events_dropped")?.unwrap_or(0);
            self.meta.insert("events_dropped", encode(&(dropped + 1))).map_err(|e| self.err(e))?;
            tracing::debug!(seq = seq_of(&k), "outbox full: oldest event dropped");
        }
        Ok(seq)
    }

    fn events_after(&self, after: u64, max: usize) -> Result<Vec<(u64, serde_json::Value)>, StoreError> {
        let mut out = Vec::new();
        for item in self.outbox.range((after + 1).to_be_bytes()..).take(max) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push((seq_of(&k), decode(&format!("event {}", seq_of(&k)), &v)?));
        }
        Ok(out)
    }

    fn remove_event(&self, seq: u64) -> Result<(), StoreError> {
        self.outbox.remove(seq.to_be_bytes()).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn dropped_events(&self) -> Result<u64, StoreError> {
        Ok(self.get_meta("events_dropped")?.unwrap_or(0))
    }
}

fn seq_of(k: &[u8]) -> u64 {
    <[u8; 8]>::try_from(k).map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{Desired, DesiredFile, RelPath};
    use crate::store::{Outcome, Owned};

    fn record(seq: u64, content: &[u8]) -> RevisionRecord {
        let path = RelPath::parse("etc/a").unwrap();
        let mut desired = Desired::default();
        desired.files.insert(
            path.clone(),
            DesiredFile {
                path,
                hash: ContentHash::of(content),
                size: content.len() as u64,
                mode: 0o644,
                owner: None,
                group: None,
                on_change: None,
                from: "x/files/etc/a".into(),
                sealed: None,
            },
        );
        RevisionRecord {
            seq,
            commit: format!("{seq:040}"),
            bundle: "x".into(),
            render_key: "k".into(),
            applied_at: "2026-01-01T00:00:00Z".into(),
            outcome: Outcome::Applied,
            error: None,
            desired,
        }
    }

    #[test]
    fn revisions_round_trip_newest_first_and_gc_keeps_what_is_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.next_seq().unwrap(), 1);
        for (seq, c) in [(1, b"one".as_slice()), (2, b"two"), (3, b"three")] {
            s.put_blob(&ContentHash::of(c), c).unwrap();
            s.put_revision(&record(seq, c)).unwrap();
        }
        // An adopted file's original must survive gc even if no revision uses it.
        let mut inv = Inventory::default();
        inv.files.insert(
            RelPath::parse("etc/b").unwrap(),
            Owned {
                hash: None,
                stat: None,
                original: Some(crate::store::Original { hash: ContentHash::of(b"one"), mode: 0o600, uid: 0, gid: 0 }),
            },
        );
        s.set_inventory(&inv).unwrap();
        let seqs: Vec<u64> = s.revisions().unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![3, 2, 1]);
        assert_eq!(s.latest_revision().unwrap().unwrap().seq, 3);
        let report = s.gc(2).unwrap();
        assert_eq!(report.revisions_removed, 1);
        assert_eq!(report.blobs_removed, 0, "blob 'one' is still an original");
        inv.files.clear();
        s.set_inventory(&inv).unwrap();
        assert_eq!(s.gc(2).unwrap().blobs_removed, 1);
        assert!(!s.has_blob(&ContentHash::of(b"one")).unwrap());
        assert_eq!(s.get_blob(&ContentHash::of(b"three")).unwrap().unwrap(), b"three");
        assert_eq!(s.next_seq().unwrap(), 4);
    }

    #[test]
    fn the_outbox_keeps_order_across_reopen_and_drops_the_oldest_when_full() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            for i in 0..3 {
                let mut e = serde_json::json!({ "kind": "applied", "i": i });
                assert_eq!(s.push_event(&mut e, 10).unwrap(), i + 1);
                assert_eq!(e["seq"], i + 1);
            }
            s.remove_event(1).unwrap();
            s.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let seqs: Vec<u64> = s.events_after(0, 10).unwrap().into_iter().map(|(q, _)| q).collect();
        assert_eq!(seqs, vec![2, 3]);
        // The sequence continues after a restart, even past removed events.
        let mut e = serde_json::json!({ "kind": "healthy" });
        assert_eq!(s.push_event(&mut e, 3).unwrap(), 4);
        let mut e = serde_json::json!({ "kind": "healthy" });
        assert_eq!(s.push_event(&mut e, 3).unwrap(), 5);
        let seqs: Vec<u64> = s.events_after(0, 10).unwrap().into_iter().map(|(q, _)| q).collect();
        assert_eq!(seqs, vec![3, 4, 5], "the oldest is dropped when full");
        assert_eq!(s.dropped_events().unwrap(), 1);
        assert_eq!(s.events_after(3, 1).unwrap()[0].0, 4);
    }

    #[test]
    fn unknown_schema_version_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.meta.insert("inventory", br#"{"v":99,"data":{}}"#.to_vec()).unwrap();
        let err = s.inventory().unwrap_err().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}
