//! The whole path from an arbitrary bundle tree to a decision, as a gateway
//! takes it: any number of files at any paths (tend.toml, includes, files,
//! containers, K3s manifests) rendered through the real bundle reader; the
//! file targets, the plan of files, containers and manifests; the rollout
//! gate at an arbitrary commit time and clock; the decision step; the health
//! probes. Any input gives a decision or an error naming a file, never a
//! panic (an overflow, a zero-period timer, a slice inside a character), and:
//! - every file the plan writes is under the allow list;
//! - applying the plan and planning again writes nothing (idempotence).
//!
//! Input: entries split at 0xFF, each `path NUL content`; the first byte
//! picks the local policy (hooks, privileged containers) and the next 16 the
//! commit time and the clock.
#![no_main]
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tend::bundle::{self, Limits, Policy, RelPath};
use tend::config::Identity;
use tend::cycle::{self, Event, Rules};
use tend::reconcile::plan::{Live, plan};
use tend::reconcile::{containers, files, k3s};
use tend::rollout::gate;
use tend::store::{Inventory, Pointers};

#[path = "memtree.rs"]
mod memtree;
use memtree::MemTree;

const BUNDLE: &str = "devices/gw-1";

fn timestamp(bytes: &[u8]) -> jiff::Timestamp {
    let mut b = [0u8; 8];
    b[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
    let secs = i64::from_le_bytes(b).rem_euclid(jiff::Timestamp::MAX.as_second());
    jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fuzz_target!(|data: &[u8]| {
    let (flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (times, rest) = rest.split_at(rest.len().min(16));
    let mut files = BTreeMap::new();
    for entry in rest.split(|b| *b == 0xFF) {
        let Some(nul) = entry.iter().position(|b| *b == 0) else { continue };
        let Ok(path) = std::str::from_utf8(&entry[..nul]) else { continue };
        if RelPath::parse(path).is_ok() {
            files.insert(path.to_owned(), entry[nul + 1..].to_vec());
        }
    }
    let tree = MemTree(files);
    let identity = Identity {
        device_id: "gw-1".into(),
        fleet: "fuzz".into(),
        labels: [("site".to_string(), "berlin".to_string()), ("wave".to_string(), "canary".to_string())]
            .into_iter()
            .collect(),
    };
    let allow = vec![RelPath::parse("etc/myapp").unwrap(), RelPath::parse("opt/myapp").unwrap()];
    let policy = Policy {
        allow: Some(allow.clone()),
        allow_privileged: Some(flags & 1 == 1),
        allow_hooks: Some(flags & 2 == 2),
        protected: Vec::new(),
    };
    let limits = Limits::default();
    let ctx =
        bundle::Context { identity: &identity, policy: &policy, limits: &limits, secrets: bundle::Secrets::Missing };
    let rendered = match bundle::render(&tree, &RelPath::parse(BUNDLE).unwrap(), &ctx) {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.reason.is_empty() && !e.file.is_empty(), "an error names a file and a reason");
            return;
        }
    };
    let desired = rendered.desired;

    // Files: the plan writes only under the allow list, and is idempotent.
    let Ok(targets) = files::targets(&desired) else { return };
    let inventory = Inventory::default();
    let first = plan(&targets, &BTreeMap::new(), &inventory, true);
    for op in &first.ops {
        if let tend::reconcile::plan::Op::Write { path, .. } = op {
            assert!(allow.iter().any(|a| path.starts_with(a)), "{path} outside the allow list");
        }
    }
    let live: BTreeMap<RelPath, Live> = targets
        .iter()
        .map(|(p, t)| {
            (p.clone(), Live::File { hash: t.hash, mode: t.mode, uid: t.uid.unwrap_or(0), gid: t.gid.unwrap_or(0) })
        })
        .collect();
    let mut owned = Inventory::default();
    for p in targets.keys() {
        owned.files.insert(p.clone(), tend::store::Owned { hash: Some(targets[p].hash), stat: None, original: None });
    }
    let again = plan(&targets, &live, &owned, true);
    assert!(!again.ops.iter().any(|o| o.changes_disk()), "planning after the apply still writes: {:?}", again.ops);

    // Containers and manifests: planned from nothing, then from themselves.
    let _ = containers::plan(&desired.containers, &[], true);
    let manifests = k3s::plan(&desired.manifests, &BTreeMap::new(), &BTreeMap::new(), true);
    let live_manifests =
        desired.manifests.iter().map(|(rel, m)| (bundle::manifest::file_name(rel), Some(m.hash))).collect();
    let again = k3s::plan(&desired.manifests, &live_manifests, &BTreeMap::new(), false);
    assert!(again.iter().all(|op| !matches!(op, k3s::ManifestOp::Write { .. })), "{manifests:?} then {again:?}");
    let _ = k3s::rollouts(&desired.manifests);

    // The rollout gate and the decision, at any time.
    let (committed_at, now) = (timestamp(times), timestamp(times.get(8..).unwrap_or(&[])));
    let local = gate::Local {
        fleet: "fuzz",
        device_id: "gw-1",
        labels: &identity.labels,
        lock_dir: std::path::Path::new("/nonexistent/tend-fuzz-locks"),
        lock_timeout: Some(std::time::Duration::from_secs(3600)),
    };
    let failing = Some(vec!["gw-2".to_owned()]);
    if let Ok(g) = gate::gather(desired.rollout.as_ref(), &local, committed_at, failing, now) {
        let rules = Rules { retry_limit: 3, crash_limit: 2, rollback: flags & 8 == 8 };
        let ev = Event::Prepared { commit: "c".into(), gate: g, now: flags & 4 == 4 };
        let _ = cycle::step(&Pointers::default(), &ev, now, rules);
    }

    // The health probes are built (not run) from any checks.
    let probes = tend::health::probes_for(&desired.checks);
    for p in &probes {
        let _ = (p.name(), p.interval(), p.timeout());
    }
});
