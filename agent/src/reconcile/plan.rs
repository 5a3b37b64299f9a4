//! The plan: a pure function from (desired, live, inventory) to operations.
//!
//! Nothing here touches the disk, so the rules are table- and property-tested:
//! applying a plan and planning again yields nothing. The rules:
//! - a desired file that is missing is created; one whose content differs is
//!   rewritten; one whose mode or declared owner/group differ gets its metadata set;
//! - a file that exists but that tend does not own yet is taken over, its original
//!   content and metadata remembered so prune can put them back;
//! - something that is not a regular file where a file is wanted blocks the whole
//!   plan (nothing is applied);
//! - with prune on, a file tend owns that is no longer desired is deleted (or its
//!   original restored); a file tend does not own is never in the inventory, so it
//!   is never touched;
//! - `on_change` commands of changed files run once per sync, after all writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::bundle::RelPath;
use crate::hash::ContentHash;
use crate::store::{Inventory, Original};

/// What a desired file must look like, with owner and group resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub hash: ContentHash,
    pub mode: u32,
    /// `None`: ownership is not managed (new files belong to tend's user).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub on_change: Option<Vec<String>>,
    /// A secret: the hash of its ciphertext, the only hash shown for it.
    pub sealed: Option<ContentHash>,
}

impl Target {
    /// The content as messages may show it.
    fn shown(&self) -> String {
        match &self.sealed {
            Some(c) => format!("secret {}", c.short()),
            None => self.hash.short(),
        }
    }
}

/// What is at a destination now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    Missing,
    File {
        hash: ContentHash,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A directory, symlink, device…: tend never replaces these.
    Other(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Create,
    Update,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write content (atomically) and metadata.
    Write { path: RelPath, why: Why, target: Target, adopt: Option<Original> },
    /// Content is right; set mode and ownership.
    SetMeta { path: RelPath, target: Target, adopt: Option<Original> },
    /// Content and metadata are right but tend does not own the file yet.
    Adopt { path: RelPath, target: Target, original: Original },
    /// Prune a file tend owns: delete it, or put the original back.
    Delete { path: RelPath, restore: Option<Original> },
    /// Stop tracking a file that is gone, or that prune is off for.
    Forget { path: RelPath },
    /// Remove a directory tend created, if empty, and stop tracking it.
    RemoveDir { path: RelPath },
    /// Run a hook after every write.
    Run { command: Vec<String>, because: Vec<RelPath> },
}

impl Op {
    /// True when the operation changes something on disk (or runs something).
    pub fn changes_disk(&self) -> bool {
        !matches!(self, Op::Adopt { .. } | Op::Forget { .. })
    }
}

/// A reason the plan cannot be applied at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub path: RelPath,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub blocked: Vec<Blocked>,
    /// Container operations (planned by `containers::plan`, applied after files).
    pub containers: Vec<super::containers::ContainerOp>,
    /// K3s manifest operations (planned by `k3s::plan`, applied last).
    pub manifests: Vec<super::k3s::ManifestOp>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.blocked.is_empty() && self.containers.is_empty() && self.manifests.is_empty()
    }
    /// Counts for a one-line summary: (created, updated, deleted, hooks), of
    /// files, containers and K3s manifests together.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        use super::containers::ContainerOp;
        use super::k3s::ManifestOp;
        let mut c = (0, 0, 0, 0);
        for op in &self.ops {
            match op {
                Op::Write { why: Why::Create, .. } => c.0 += 1,
                Op::Write { why: Why::Update, .. } | Op::SetMeta { .. } => c.1 += 1,
                Op::Delete { .. } => c.2 += 1,
                Op::Run { .. } => c.3 += 1,
                _ => {}
            }
        }
        for op in &self.containers {
            match op {
                ContainerOp::Create { .. } => c.0 += 1,
                ContainerOp::Replace { .. } | ContainerOp::Start { .. } | ContainerOp::Restart { .. } => c.1 += 1,
                ContainerOp::Remove { .. } => c.2 += 1,
            }
        }
        for op in &self.manifests {
            match op {
                ManifestOp::Write { create: true, .. } => c.0 += 1,
                ManifestOp::Write { create: false, .. } => c.1 += 1,
                ManifestOp::Delete { .. } => c.2 += 1,
            }
        }
        c
    }
}

/// Compute the operations that take `live` to `desired`.
///
/// `live` must hold an entry for every desired path and every inventory path;
/// a path absent from it counts as missing.
pub fn plan(
    desired: &BTreeMap<RelPath, Target>,
    live: &BTreeMap<RelPath, Live>,
    inventory: &Inventory,
    prune: bool,
) -> Plan {
    let mut out = Plan::default();
    let mut hooks: Vec<(Vec<String>, Vec<RelPath>)> = Vec::new();
    let missing = Live::Missing;

    for (path, target) in desired {
        let owned = inventory.files.get(path);
        let live = live.get(path).unwrap_or(&missing);
        let changed = match live {
            Live::Missing => {
                out.ops.push(Op::Write { path: path.clone(), why: Why::Create, target: target.clone(), adopt: None });
                true
            }
            Live::Other(kind) => {
                out.blocked.push(Blocked {
                    path: path.clone(),
                    reason: format!("a {kind} is in the way; tend only replaces regular files"),
                });
                false
            }
            Live::File { hash, mode, uid, gid } => {
                let adopt = owned.is_none().then_some(Original { hash: *hash, mode: *mode, uid: *uid, gid: *gid });
                let meta_ok = *mode == target.mode
                    && target.uid.is_none_or(|u| u == *uid)
                    && target.gid.is_none_or(|g| g == *gid);
                if *hash != target.hash {
                    out.ops.push(Op::Write { path: path.clone(), why: Why::Update, target: target.clone(), adopt });
                    true
                } else if !meta_ok {
                    out.ops.push(Op::SetMeta { path: path.clone(), target: target.clone(), adopt });
                    true
                } else {
                    if let Some(original) = adopt {
                        out.ops.push(Op::Adopt { path: path.clone(), target: target.clone(), original });
                    }
                    false
                }
            }
        };
        if changed && let Some(cmd) = &target.on_change {
            match hooks.iter_mut().find(|(c, _)| c == cmd) {
                Some((_, because)) => because.push(path.clone()),
                None => hooks.push((cmd.clone(), vec![path.clone()])),
            }
        }
    }

    for (path, owned) in &inventory.files {
        if desired.contains_key(path) {
            continue;
        }
        match (prune, live.get(path).unwrap_or(&missing)) {
            (true, Live::File { .. }) => {
                out.ops.push(Op::Delete { path: path.clone(), restore: owned.original.clone() })
            }
            _ => out.ops.push(Op::Forget { path: path.clone() }),
        }
    }

    // Directories tend created and no desired file needs any more, deepest first.
    let needed: BTreeSet<RelPath> = desired.keys().flat_map(ancestors).collect();
    let mut stale: Vec<&RelPath> = inventory.dirs.iter().filter(|d| !needed.contains(*d)).collect();
    stale.sort_by_key(|d| std::cmp::Reverse(d.segments().len()));
    out.ops.extend(stale.into_iter().map(|d| Op::RemoveDir { path: d.clone() }));

    out.ops.extend(hooks.into_iter().map(|(command, because)| Op::Run { command, because }));
    out
}

/// The proper ancestors of a path, nearest last (`a/b/c` → `a`, `a/b`).
pub fn ancestors(p: &RelPath) -> Vec<RelPath> {
    let mut out = Vec::new();
    let mut cur = p.parent();
    while let Some(d) = cur {
        if d.is_root() {
            break;
        }
        cur = d.parent();
        out.push(d);
    }
    out.reverse();
    out
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Write { path, why: Why::Create, target, .. } => {
                write!(f, "create  {} (mode {:04o}, {})", path.to_absolute_string(), target.mode, target.shown())
            }
            Op::Write { path, why: Why::Update, target, adopt } => write!(
                f,
                "update  {} (mode {:04o}, {}){}",
                path.to_absolute_string(),
                target.mode,
                target.shown(),
                if adopt.is_some() { ", taking over an existing file" } else { "" }
            ),
            Op::SetMeta { path, target, .. } => {
                write!(f, "chmod   {} (mode {:04o}", path.to_absolute_string(), target.mode)?;
                if let Some(u) = target.uid {
                    write!(f, ", uid {u}")?;
                }
                if let Some(g) = target.gid {
                    write!(f, ", gid {g}")?;
                }
                write!(f, ")")
            }
            Op::Adopt { path, .. } => write!(f, "adopt   {} (already as desired)", path.to_absolute_string()),
            Op::Delete { path, restore: None } => write!(f, "delete  {}", path.to_absolute_string()),
            Op::Delete { path, restore: Some(_) } => {
                write!(f, "restore {} (its content from before tend)", path.to_absolute_string())
            }
            Op::Forget { path } => write!(f, "forget  {}", path.to_absolute_string()),
            Op::RemoveDir { path } => write!(f, "rmdir   {} (if empty)", path.to_absolute_string()),
            Op::Run { command, because } => write!(
                f,
                "run     {} (on_change of {})",
                shell_words(command),
                because.iter().map(RelPath::to_absolute_string).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// A command line shown readably (quoted where needed).
pub fn shell_words(cmd: &[String]) -> String {
    cmd.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Owned;
    use proptest::prelude::*;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }
    fn h(s: &str) -> ContentHash {
        ContentHash::of(s.as_bytes())
    }
    fn target(c: &str, mode: u32) -> Target {
        Target { hash: h(c), mode, uid: None, gid: None, on_change: None, sealed: None }
    }
    fn file(c: &str, mode: u32) -> Live {
        Live::File { hash: h(c), mode, uid: 0, gid: 0 }
    }
    fn owned() -> Owned {
        Owned { hash: None, stat: None, original: None }
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            desired: Vec<(&'static str, Target)>,
            live: Vec<(&'static str, Live)>,
            owned: Vec<&'static str>,
            prune: bool,
            expect: Vec<&'static str>,
        }
        let hook = |c: &str| Target { on_change: Some(vec!["reload".into()]), ..target(c, 0o644) };
        let cases = vec![
            Case {
                name: "missing is created",
                desired: vec![("etc/a", target("x", 0o644))],
                live: vec![],
                owned: vec![],
                prune: true,
                expect: vec!["create  /etc/a"],
            },
            Case {
                name: "same is nothing",
                desired: vec![("etc/a", target("x", 0o644))],
                live: vec![("etc/a", file("x", 0o644))],
                owned: vec!["etc/a"],
                prune: true,
                expect: vec![],
            },
            Case {
                name: "changed content is updated",
                desired: vec![("etc/a", target("y", 0o644))],
                live: vec![("etc/a", file("x", 0o644))],
                owned: vec!["etc/a"],
                prune: true,
                expect: vec!["update  /etc/a"],
            },
            Case {
                name: "changed mode is chmod",
                desired: vec![("etc/a", target("x", 0o600))],
                live: vec![("etc/a", file("x", 0o644))],
                owned: vec!["etc/a"],
                prune: true,
                expect: vec!["chmod   /etc/a"],
            },
            Case {
                name: "unowned existing is taken over",
                desired: vec![("etc/a", target("y", 0o644))],
                live: vec![("etc/a", file("x", 0o644))],
                owned: vec![],
                prune: true,
                expect: vec!["update  /etc/a"],
            },
            Case {
                name: "unowned identical is adopted",
                desired: vec![("etc/a", target("x", 0o644))],
                live: vec![("etc/a", file("x", 0o644))],
                owned: vec![],
                prune: true,
                expect: vec!["adopt   /etc/a"],
            },
            Case {
                name: "owned undesired is pruned",
                desired: vec![],
                live: vec![("etc/a", file("x", 0o644))],
                owned: vec!["etc/a"],
                prune: true,
                expect: vec!["delete  /etc/a"],
            },
            Case {
                name: "prune off forgets",
                desired: vec![],
                live: vec![("etc/a", file("x", 0o644))],
                owned: vec!["etc/a"],
                prune: false,
                expect: vec!["forget  /etc/a"],
            },
            Case {
                name: "owned and gone is forgotten",
                desired: vec![],
                live: vec![],
                owned: vec!["etc/a"],
                prune: true,
                expect: vec!["forget  /etc/a"],
            },
            Case {
                name: "unowned undesired is never touched",
                desired: vec![],
                live: vec![("etc/a", file("x", 0o644))],
                owned: vec![],
                prune: true,
                expect: vec![],
            },
            Case {
                name: "one hook for two files",
                desired: vec![("etc/a", hook("1")), ("etc/b", hook("2")), ("etc/c", hook("3"))],
                live: vec![("etc/c", file("3", 0o644))],
                owned: vec!["etc/c"],
                prune: true,
                expect: vec!["create  /etc/a", "create  /etc/b", "run     reload (on_change of /etc/a, /etc/b)"],
            },
        ];
        for c in cases {
            let desired = c.desired.into_iter().map(|(k, v)| (p(k), v)).collect();
            let live = c.live.into_iter().map(|(k, v)| (p(k), v)).collect();
            let mut inv = Inventory::default();
            for o in c.owned {
                inv.files.insert(p(o), owned());
            }
            let got: Vec<String> = plan(&desired, &live, &inv, c.prune).ops.iter().map(ToString::to_string).collect();
            assert_eq!(got.len(), c.expect.len(), "{}: {got:?}", c.name);
            for (g, e) in got.iter().zip(&c.expect) {
                assert!(g.starts_with(e), "{}: {g:?} does not start with {e:?}", c.name);
            }
        }
    }

    #[test]
    fn something_in_the_way_blocks() {
        let desired = [(p("etc/a"), target("x", 0o644))].into();
        let live = [(p("etc/a"), Live::Other("directory"))].into();
        let plan = plan(&desired, &live, &Inventory::default(), true);
        assert_eq!(plan.blocked.len(), 1);
        assert!(plan.blocked[0].reason.contains("directory"));
    }

    #[test]
    fn stale_directories_are_removed_deepest_first() {
        let mut inv = Inventory::default();
        inv.dirs.extend([p("opt/app"), p("opt/app/sub"), p("etc/keep")]);
        let desired = [(p("etc/keep/a"), target("x", 0o644))].into();
        let live = [(p("etc/keep/a"), file("x", 0o644))].into();
        inv.files.insert(p("etc/keep/a"), owned());
        let ops: Vec<String> = plan(&desired, &live, &inv, true).ops.iter().map(ToString::to_string).collect();
        assert_eq!(ops, vec!["rmdir   /opt/app/sub (if empty)", "rmdir   /opt/app (if empty)"]);
    }

    /// The model of the disk that the property test applies plans to: the same
    /// semantics `files.rs` gives each operation.
    fn apply_model(
        plan: &Plan,
        live: &mut BTreeMap<RelPath, Live>,
        inv: &mut Inventory,
        blobs: &BTreeMap<ContentHash, ()>,
    ) {
        let _ = blobs;
        for op in &plan.ops {
            match op {
                Op::Write { path, target, adopt, .. } | Op::SetMeta { path, target, adopt } => {
                    let (uid0, gid0) = match live.get(path) {
                        Some(Live::File { uid, gid, .. }) => (*uid, *gid),
                        _ => (0, 0),
                    };
                    live.insert(
                        path.clone(),
                        Live::File {
                            hash: target.hash,
                            mode: target.mode,
                            uid: target.uid.unwrap_or(uid0),
                            gid: target.gid.unwrap_or(gid0),
                        },
                    );
                    let original = inv.files.get(path).and_then(|o| o.original.clone()).or(adopt.clone());
                    inv.files.insert(path.clone(), Owned { hash: Some(target.hash), stat: None, original });
                    for d in ancestors(path) {
                        inv.dirs.insert(d);
                    }
                }
                Op::Adopt { path, target, original } => {
                    inv.files.insert(
                        path.clone(),
                        Owned { hash: Some(target.hash), stat: None, original: Some(original.clone()) },
                    );
                }
                Op::Delete { path, restore } => {
                    match restore {
                        Some(o) => {
                            live.insert(path.clone(), Live::File { hash: o.hash, mode: o.mode, uid: o.uid, gid: o.gid })
                        }
                        None => live.remove(path),
                    };
                    inv.files.remove(path);
                }
                Op::Forget { path } => {
                    inv.files.remove(path);
                }
                Op::RemoveDir { path } => {
                    inv.dirs.remove(path);
                }
                Op::Run { .. } => {}
            }
        }
    }

    fn arb_path() -> impl Strategy<Value = RelPath> {
        prop::sample::select(vec!["etc/a", "etc/b", "etc/sub/c", "opt/x", "opt/y/z"]).prop_map(p)
    }
    fn arb_target() -> impl Strategy<Value = Target> {
        (0u8..3, prop::sample::select(vec![0o644u32, 0o600, 0o755]), prop::option::of(0u32..2), any::<bool>()).prop_map(
            |(c, mode, uid, hook)| Target {
                hash: h(&c.to_string()),
                mode,
                uid,
                gid: None,
                on_change: hook.then(|| vec!["hook".to_string()]),
                sealed: None,
            },
        )
    }
    fn arb_live() -> impl Strategy<Value = Live> {
        prop_oneof![
            Just(Live::Missing),
            (0u8..3, prop::sample::select(vec![0o644u32, 0o600]), 0u32..2).prop_map(|(c, mode, uid)| Live::File {
                hash: h(&c.to_string()),
                mode,
                uid,
                gid: 0
            }),
        ]
    }

    proptest! {
        /// After applying a plan, planning again yields no operation, whatever the
        /// start: files missing, different, owned or not, prune on or off.
        #[test]
        fn applying_a_plan_then_planning_again_yields_nothing(
            desired in prop::collection::btree_map(arb_path(), arb_target(), 0..5),
            live in prop::collection::btree_map(arb_path(), arb_live(), 0..5),
            owned_paths in prop::collection::btree_set(arb_path(), 0..5),
            dirs in prop::collection::btree_set(prop::sample::select(vec!["etc/sub", "opt", "opt/y", "var"]).prop_map(p), 0..3),
            prune in any::<bool>(),
        ) {
            let mut live = live;
            let mut inv = Inventory::default();
            for o in owned_paths {
                inv.files.insert(o, owned());
            }
            inv.dirs = dirs;
            let first = plan(&desired, &live, &inv, prune);
            prop_assert!(first.blocked.is_empty());
            apply_model(&first, &mut live, &mut inv, &BTreeMap::new());
            let second = plan(&desired, &live, &inv, prune);
            prop_assert!(second.is_empty(), "second plan: {:?}", second.ops);
            // And the desired state holds.
            for (path, t) in &desired {
                match live.get(path) {
                    Some(Live::File { hash, mode, .. }) => {
                        prop_assert_eq!(*hash, t.hash);
                        prop_assert_eq!(*mode, t.mode);
                    }
                    other => prop_assert!(false, "{path} is {other:?}"),
                }
                prop_assert!(inv.files.contains_key(path));
            }
        }
    }
}
