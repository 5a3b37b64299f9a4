//! Bundle parsing: `tend.toml`, a container file and a K3s manifest taken from
//! the input (split at 0xFF bytes) are rendered through the real bundle reader
//! against an in-memory tree. Any input gives a bundle or a BundleError naming
//! a file in the tree, never a panic; an accepted bundle writes only under the
//! allow list.
#![no_main]
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tend::bundle::{self, Limits, Policy, RelPath};
use tend::config::Identity;

#[path = "memtree.rs"]
mod memtree;
use memtree::MemTree;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0xFF);
    let mut files = BTreeMap::new();
    let b = "devices/gw-1";
    for name in ["tend.toml", "containers/web.toml", "k3s/app.yaml"] {
        if let Some(p) = parts.next()
            && !p.is_empty()
        {
            files.insert(format!("{b}/{name}"), p.to_vec());
        }
    }
    files.insert(format!("{b}/files/etc/myapp/app.conf"), b"port = {{ labels.site }}\n".to_vec());
    files.insert("base/files/etc/myapp/base.conf".into(), parts.next().unwrap_or_default().to_vec());
    let tree = MemTree(files);
    let identity = Identity {
        device_id: "gw-1".into(),
        fleet: "fuzz".into(),
        labels: [("site".to_string(), "berlin".to_string())].into_iter().collect(),
    };
    let policy = Policy {
        allow: Some(vec![RelPath::parse("etc/myapp").unwrap()]),
        allow_privileged: Some(false),
        allow_hooks: Some(false),
        protected: Vec::new(),
    };
    let limits = Limits::default();
    let ctx =
        bundle::Context { identity: &identity, policy: &policy, limits: &limits, secrets: bundle::Secrets::Missing };
    match bundle::render(&tree, &RelPath::parse(b).unwrap(), &ctx) {
        Ok(r) => {
            for path in r.desired.files.keys() {
                assert!(path.starts_with(&RelPath::parse("etc/myapp").unwrap()), "{path} outside the allow list");
            }
            for spec in r.desired.containers.values() {
                assert!(!spec.privileged);
            }
        }
        Err(e) => assert!(!e.reason.is_empty() && !e.file.is_empty()),
    }
});
