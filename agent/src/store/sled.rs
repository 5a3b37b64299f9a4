//! The [`Store`] on sled, the only file that imports it.
//!
//! Layout: tree `revisions` (big-endian seq → versioned JSON), tree `meta`
//! (`inventory`, `status`, `pointers` → versioned JSON), tree `outbox`; file
//! contents are not in sled but in the object directory beside it
//! ([`Objects`], `state_dir/objects`). The cache is kept small on purpose:
//! sled's default is 1 GiB and a gateway may have 256 MB of RAM.
//!
//! A store written by 0.1.0 kept contents in a tree `blobs`: at open they are
//! moved into the object directory (made durable first, then the tree is
//! dropped; an interrupted move is done again at the next open).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::objects::{ObjectError, Objects};
use super::{
    GcReport, Inventory, Pointers, RevisionRecord, Status, Store, StoreError, Verified, decode, encode,
    referenced_blobs,
};
use crate::hash::ContentHash;

pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    objects: Objects,
    revisions: sled::Tree,
    meta: sled::Tree,
    outbox: sled::Tree,
    /// Serialises outbox appends (sequence numbers must not repeat).
    outbox_lock: std::sync::Mutex<()>,
    /// Objects of values that were replaced or removed: deleted once the
    /// store no longer names them durably (at the next flush).
    garbage: std::sync::Mutex<Vec<ContentHash>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("path", &self.path).finish()
    }
}

const CACHE_BYTES: u64 = 256 << 10;

/// Values up to this size stay in sled; larger ones become objects.
const INLINE_MAX: usize = 16 * 1024;

/// `{"v":1,"object":"<sha256>"}`: a value kept as an object.
fn encode_reference(hash: &ContentHash) -> Vec<u8> {
    format!("{{\"v\":{},\"object\":\"{hash}\"}}", super::SCHEMA_VERSION).into_bytes()
}

fn reference(bytes: &[u8]) -> Option<ContentHash> {
    #[derive(serde::Deserialize)]
    struct Reference {
        object: ContentHash,
    }
    // Cheap test first: every inline value has "data", a reference has none.
    if bytes.len() > 100 || !bytes.windows(9).any(|w| w == b"\"object\":") {
        return None;
    }
    serde_json::from_slice::<Reference>(bytes).ok().map(|r| r.object)
}

impl SledStore {
    /// Open (or create) the store at `dir`, with its contents in `objects`. A
    /// store held by another process is reported as [`StoreError::Locked`].
    pub fn open(dir: &Path, objects: &Path) -> Result<SledStore, StoreError> {
        let path = dir.to_path_buf();
        let shown = path.display().to_string();
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend { path: shown.clone(), reason: format!("cannot create: {e}") })?;
        // A store moved aside (or never made) starts over: its marker goes too.
        let marker = if dir.join("db").exists() { read_marker(&marker_path(dir)) } else { None };
        // No background flusher (one thread less): tend flushes when a record
        // must be durable (`flush`, events).
        let db = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).flush_every_ms(None).open().map_err(
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
        let store = SledStore {
            objects: Objects::open(objects).map_err(object_error)?,
            revisions: tree("revisions")?,
            meta: tree("meta")?,
            outbox: tree("outbox")?,
            outbox_lock: std::sync::Mutex::new(()),
            garbage: std::sync::Mutex::new(Vec::new()),
            db,
            path,
        };
        // sled recovers a truncated or corrupted log by dropping everything
        // from the damage on, silently: an empty store would look like a new
        // gateway. The generation written at each flush, and beside the store
        // after it, tells.
        let have: u64 = store.get_meta("generation")?.unwrap_or(0);
        if let Some(want) = marker
            && have < want
        {
            return Err(StoreError::Damaged {
                path: shown,
                reason: format!(
                    "it holds generation {have} of its records, but generation {want} was made durable (it was truncated or corrupted)"
                ),
            });
        }
        store.migrate_blobs()?;
        Ok(store)
    }

    /// 0.1.0 kept contents in the tree `blobs`: move them to the object
    /// directory, durably, then drop the tree.
    fn migrate_blobs(&self) -> Result<(), StoreError> {
        let names = self.db.tree_names();
        if !names.iter().any(|n| n.as_ref() == b"blobs") {
            return Ok(());
        }
        let blobs = self.db.open_tree("blobs").map_err(|e| self.err(e))?;
        let mut moved = 0usize;
        for item in blobs.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let Ok(bytes) = <[u8; 32]>::try_from(k.as_ref()) else { continue };
            let hash = ContentHash(bytes);
            if ContentHash::of(&v) != hash {
                return Err(StoreError::Corrupt {
                    key: format!("blob {}", hash.short()),
                    reason: "its content does not match its hash; the store is damaged".into(),
                });
            }
            self.objects.put(&hash, &v).map_err(object_error)?;
            moved += 1;
        }
        self.objects.sync().map_err(object_error)?;
        drop(blobs);
        self.db.drop_tree("blobs").map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        if moved > 0 {
            tracing::info!(contents = moved, objects = %self.objects.root().display(), "moved file contents out of the store");
        }
        Ok(())
    }

    fn err(&self, e: sled::Error) -> StoreError {
        StoreError::Backend { path: self.path.display().to_string(), reason: e.to_string() }
    }

    fn get_meta<T: for<'de> serde::Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.meta.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => self.read_value(key, &bytes).map(Some),
        }
    }

    /// The encoded `value`, or, when it is large, a reference to it as an
    /// object (made durable first). sled writes a value over 128 KiB (a
    /// quarter of its segment) to a file of its own and never deletes those
    /// files (sled#786); a revision of 1,000 files is 250 KB.
    fn value<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, StoreError> {
        let bytes = encode(value);
        if bytes.len() <= INLINE_MAX {
            return Ok(bytes);
        }
        let hash = ContentHash::of(&bytes);
        self.objects.put(&hash, &bytes).map_err(object_error)?;
        self.objects.sync().map_err(object_error)?;
        Ok(encode_reference(&hash))
    }

    /// Insert a value made by [`SledStore::value`]; the object of the value it
    /// replaces becomes garbage (a drift repair rewrites the inventory: without
    /// this, every repair of a 1,000-file gateway left a 240 KB file behind).
    fn put_value(&self, tree: &sled::Tree, key: impl AsRef<[u8]>, value: Vec<u8>) -> Result<(), StoreError> {
        let old = tree.insert(key, value.clone()).map_err(|e| self.err(e))?;
        self.forget(old.as_deref(), Some(&value));
        Ok(())
    }

    /// `old` (a value no longer in the store) names an object: garbage,
    /// unless `new` names the same one.
    fn forget(&self, old: Option<&[u8]>, new: Option<&[u8]>) {
        if let Some(h) = old.and_then(reference)
            && new.and_then(reference) != Some(h)
        {
            self.garbage.lock().unwrap_or_else(|e| e.into_inner()).push(h);
        }
    }

    /// Delete garbage objects nothing names any more (after a flush).
    fn collect_garbage(&self) -> Result<(), StoreError> {
        let garbage = std::mem::take(&mut *self.garbage.lock().unwrap_or_else(|e| e.into_inner()));
        if garbage.is_empty() {
            return Ok(());
        }
        let named = self.referenced_values()?;
        for h in garbage.iter().filter(|h| !named.contains(h)) {
            self.objects.remove(h).map_err(object_error)?;
        }
        Ok(())
    }

    /// Decode a value written by [`SledStore::value`] (or inline by 0.1.0).
    fn read_value<T: for<'de> serde::Deserialize<'de>>(&self, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        let Some(hash) = reference(bytes) else { return decode(key, bytes) };
        match self.objects.get(&hash).map_err(object_error)? {
            Some(body) => decode(key, &body),
            None => Err(StoreError::Corrupt {
                key: key.to_owned(),
                reason: format!(
                    "its content {} is missing; the store is damaged: move {} and {} aside (tend then starts without history) or restore them from a backup",
                    self.objects.path(&hash).display(),
                    self.path.display(),
                    self.objects.root().display()
                ),
            }),
        }
    }

    /// The objects sled values refer to (kept by gc).
    fn referenced_values(&self) -> Result<BTreeSet<ContentHash>, StoreError> {
        let mut out = BTreeSet::new();
        for tree in [&self.revisions, &self.meta] {
            for item in tree.iter().values() {
                if let Some(h) = reference(&item.map_err(|e| self.err(e))?) {
                    out.insert(h);
                }
            }
        }
        Ok(out)
    }
}

impl Store for SledStore {
    fn put_blob(&self, hash: &ContentHash, data: &[u8]) -> Result<(), StoreError> {
        self.objects.put(hash, data).map_err(object_error)
    }

    fn get_blob(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StoreError> {
        self.objects.get(hash).map_err(object_error)
    }

    fn has_blob(&self, hash: &ContentHash) -> Result<bool, StoreError> {
        Ok(self.objects.contains(hash))
    }

    fn blob_path(&self, hash: &ContentHash) -> String {
        self.objects.path(hash).display().to_string()
    }

    fn put_revision(&self, rec: &RevisionRecord) -> Result<(), StoreError> {
        // The contents it references are durable before the record is.
        self.objects.sync().map_err(object_error)?;
        let value = self.value(rec)?;
        self.put_value(&self.revisions, rec.seq.to_be_bytes(), value)
    }

    fn revisions(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.revisions.iter().rev() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push(self.read_value(&format!("revision {}", seq_of(&k)), &v)?);
        }
        Ok(out)
    }

    fn latest_revision(&self) -> Result<Option<RevisionRecord>, StoreError> {
        match self.revisions.last().map_err(|e| self.err(e))? {
            None => Ok(None),
            Some((k, v)) => self.read_value(&format!("revision {}", seq_of(&k)), &v).map(Some),
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
        // Originals it references (files taken over) are durable first.
        self.objects.sync().map_err(object_error)?;
        let value = self.value(inv)?;
        self.put_value(&self.meta, "inventory", value)
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
            Some(v) => self.read_value(&format!("revision {seq}"), &v).map(Some),
        }
    }

    fn pointers(&self) -> Result<Pointers, StoreError> {
        Ok(self.get_meta("pointers")?.unwrap_or_default())
    }

    fn set_pointers(&self, p: &Pointers) -> Result<(), StoreError> {
        self.meta.insert("pointers", encode(p)).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn set_pointers_and_status(&self, p: &Pointers, s: &Status) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert("pointers", encode(p));
        batch.insert("status", encode(s));
        self.meta.apply_batch(batch).map_err(|e| self.err(e))
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
        let mut needed = referenced_blobs(&kept, &self.inventory()?);
        needed.extend(self.referenced_values()?);
        // Revisions are removed durably before the contents only they used.
        Store::flush(self)?;
        for hash in self.objects.list().map_err(object_error)? {
            if !needed.contains(&hash) {
                self.objects.remove(&hash).map_err(object_error)?;
                report.blobs_removed += 1;
            }
        }
        Ok(report)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.objects.sync().map_err(object_error)?;
        // Nothing written since the last flush: no new generation, nothing
        // written to the flash (an idle daemon flushes now and then).
        if self.db.flush().map_err(|e| self.err(e))? == 0 {
            return Ok(());
        }
        let generation: u64 = self.get_meta("generation")?.unwrap_or(0) + 1;
        self.meta.insert("generation", encode(&generation)).map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        write_marker(&marker_path(&self.path), generation)
            .map_err(|e| StoreError::Backend { path: marker_path(&self.path).display().to_string(), reason: e })?;
        self.collect_garbage()
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
        // Durable at once (there is no background flusher): an event survives
        // a SIGKILL the moment it is raised.
        Store::flush(self)?;
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

    fn queued_events(&self) -> u64 {
        self.outbox.len() as u64
    }

    fn verified(&self) -> Result<Option<Verified>, StoreError> {
        // A fingerprint that cannot be read is only a reason to check in full.
        Ok(self.get_meta("verified").ok().flatten())
    }

    fn set_verified(&self, v: Option<&Verified>) -> Result<(), StoreError> {
        match v {
            Some(v) => {
                let value = self.value(v)?;
                self.put_value(&self.meta, "verified", value)?;
            }
            None => {
                // Gone for good before anything is applied: a crash mid-apply
                // must not leave a fingerprint that vouches for the files.
                let old = self.meta.remove("verified").map_err(|e| self.err(e))?;
                self.forget(old.as_deref(), None);
                if old.is_some() {
                    Store::flush(self)?;
                }
            }
        }
        Ok(())
    }
}

/// Beside the store directory: `store.generation`.
fn marker_path(dir: &Path) -> PathBuf {
    dir.with_extension("generation")
}

/// The generation last made durable; `None` when unknown (a new store, one
/// written by 0.1.0, or an unreadable marker: the check is skipped).
fn read_marker(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let n = text.trim().parse().ok();
    if n.is_none() {
        tracing::warn!(path = %path.display(), "unreadable; the store's completeness is not checked");
    }
    n
}

/// Small enough to be written in one sector: in place, then fsynced.
fn write_marker(path: &Path, generation: u64) -> Result<(), String> {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path).map_err(|e| e.to_string())?;
    writeln!(f, "{generation}").and_then(|_| f.sync_all()).map_err(|e| e.to_string())
}

fn object_error(e: ObjectError) -> StoreError {
    match e {
        ObjectError::Io { path, reason } => StoreError::Backend { path, reason },
        e @ ObjectError::Damaged { .. } => StoreError::Corrupt { key: "content".into(), reason: e.to_string() },
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
            forced: None,
            from: None,
        }
    }

    #[test]
    fn revisions_round_trip_newest_first_and_gc_keeps_what_is_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("store"), &dir.path().join("objects")).unwrap();
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
            let s = SledStore::open(&dir.path().join("store"), &dir.path().join("objects")).unwrap();
            for i in 0..3 {
                let mut e = serde_json::json!({ "kind": "applied", "i": i });
                assert_eq!(s.push_event(&mut e, 10).unwrap(), i + 1);
                assert_eq!(e["seq"], i + 1);
            }
            s.remove_event(1).unwrap();
            s.flush().unwrap();
        }
        let s = SledStore::open(&dir.path().join("store"), &dir.path().join("objects")).unwrap();
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
    fn a_flush_with_nothing_new_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("store.generation");
        let s = SledStore::open(&dir.path().join("store"), &dir.path().join("objects")).unwrap();
        s.set_inventory(&Inventory::default()).unwrap();
        s.flush().unwrap();
        let first = std::fs::read_to_string(&marker).unwrap();
        s.flush().unwrap();
        s.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), first, "an idle flush made a new generation");
        s.set_verified(None).unwrap();
        s.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), first);
        let inv = Inventory { dirty: true, ..Inventory::default() };
        s.set_inventory(&inv).unwrap();
        s.flush().unwrap();
        let second = std::fs::read_to_string(&marker).unwrap();
        assert_ne!(second, first, "a write and a flush make a new generation");
        drop(s);
        let s = SledStore::open(&dir.path().join("store"), &dir.path().join("objects")).unwrap();
        assert!(s.inventory().unwrap().dirty);
    }

    #[test]
    fn a_replaced_large_value_leaves_no_object_behind() {
        let dir = tempfile::tempdir().unwrap();
        let objects = dir.path().join("objects");
        let s = SledStore::open(&dir.path().join("store"), &objects).unwrap();
        let count = || s.objects.list().unwrap().len();
        let mut inv = Inventory::default();
        for round in 0..5 {
            inv.files.clear();
            for i in 0..400 {
                inv.files.insert(
                    RelPath::parse(&format!("etc/myapp/f{i:04}-{round}.conf")).unwrap(),
                    Owned { hash: Some(ContentHash::of(b"x")), stat: None, original: None },
                );
            }
            s.set_inventory(&inv).unwrap();
            s.flush().unwrap();
            assert_eq!(count(), 1, "round {round}: one inventory object, the old ones deleted");
        }
        assert_eq!(s.inventory().unwrap(), inv);
        // Not before the flush: until then the durable store names the old one.
        inv.files.clear();
        inv.files.insert(RelPath::parse("etc/a").unwrap(), Owned { hash: None, stat: None, original: None });
        for i in 0..400 {
            inv.files.insert(
                RelPath::parse(&format!("etc/myapp/g{i:04}.conf")).unwrap(),
                Owned { hash: Some(ContentHash::of(b"y")), stat: None, original: None },
            );
        }
        s.set_inventory(&inv).unwrap();
        assert_eq!(count(), 2);
        s.flush().unwrap();
        assert_eq!(count(), 1);
    }

    #[test]
    fn unknown_schema_version_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("store"), &dir.path().join("objects")).unwrap();
        s.meta.insert("inventory", br#"{"v":99,"data":{}}"#.to_vec()).unwrap();
        let err = s.inventory().unwrap_err().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}
