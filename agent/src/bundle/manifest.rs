//! `k3s/**.yaml`: Kubernetes manifests for K3s's auto-deploy directory.
//!
//! tend writes the files byte for byte (K3s applies them); here each file is
//! read the way K3s reads it, to learn which objects it declares, so prune and
//! the rollout checks know them:
//! - a UTF-8 byte order mark at the start is skipped;
//! - documents are split on `---`; empty and comment-only documents declare
//!   nothing;
//! - anchors, aliases and `<<` merge keys are expanded, within a budget on the
//!   expanded size (the rule of go-yaml, which K3s uses): an alias bomb is
//!   refused, the shared blocks real manifests use are not;
//! - `kind: List` and the `*List` kinds (`ConfigMapList`, …) stand for their
//!   `items`, as in kubectl and K3s.
//!
//! Every document must name `apiVersion`, `kind` and `metadata.name`; all the
//! problems of a file are reported at once, each naming its document and line.

use std::collections::HashMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::hash::ContentHash;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One Kubernetes object a manifest declares, as written (`api_version` is
/// kept so `kubectl delete` can name the object in a version the manifest used).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

/// What identifies an object in the cluster: group, kind, namespace and name.
/// The version is not part of it: `rbac.authorization.k8s.io/v1beta1` and `/v1`
/// of one ClusterRole are the same object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    /// `None` for kinds known to be cluster-scoped; otherwise the namespace
    /// K3s applies the object to.
    pub namespace: Option<String>,
    pub name: String,
}

/// The namespace K3s's deploy controller gives a namespaced object whose
/// manifest names none (wrangler's apply, `adjustNamespace`): `default`, not
/// the `kube-system` of the Addon itself.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Kinds of the Kubernetes API and of K3s that are not namespaced: their
/// objects have no namespace, whatever a manifest writes. Kinds not listed
/// (custom resources) are taken as namespaced.
const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("", "ComponentStatus"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("storage.k8s.io", "VolumeAttributesClass"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("networking.k8s.io", "IngressClass"),
    ("networking.k8s.io", "IPAddress"),
    ("networking.k8s.io", "ServiceCIDR"),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
    ("policy", "PodSecurityPolicy"),
    ("resource.k8s.io", "DeviceClass"),
    ("resource.k8s.io", "ResourceSlice"),
    ("certificates.k8s.io", "ClusterTrustBundle"),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicyBinding"),
    ("storagemigration.k8s.io", "StorageVersionMigration"),
];

impl ObjectRef {
    /// The API group (`apps` of `apps/v1`; empty for the core group's `v1`).
    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }

    /// Whether the kind is known to be cluster-scoped.
    pub fn cluster_scoped(&self) -> bool {
        let g = self.group();
        CLUSTER_SCOPED.iter().any(|(cg, ck)| *cg == g && *ck == self.kind)
    }

    /// The namespace the object lives in (`None`: cluster-scoped).
    pub fn effective_namespace(&self) -> Option<&str> {
        if self.cluster_scoped() { None } else { Some(self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)) }
    }

    /// The object's identity in the cluster.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            group: self.group().to_owned(),
            kind: self.kind.clone(),
            namespace: self.effective_namespace().map(str::to_owned),
            name: self.name.clone(),
        }
    }

    /// Deleting it deletes much more (everything in a namespace, every custom
    /// resource of a definition): worth a warning in every plan that does it.
    pub fn deletes_more(&self) -> Option<&'static str> {
        match (self.group(), self.kind.as_str()) {
            ("", "Namespace") => Some("deletes every object in the namespace"),
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                Some("deletes every custom resource of this definition")
            }
            _ => None,
        }
    }

    /// A minimal document naming this object (for `kubectl delete -f -`), in
    /// the namespace K3s put it in.
    pub fn to_yaml(&self) -> String {
        let mut s = format!(
            "apiVersion: {}\nkind: {}\nmetadata:\n  name: {}\n",
            q(&self.api_version),
            q(&self.kind),
            q(&self.name)
        );
        if let Some(ns) = self.effective_namespace() {
            s.push_str(&format!("  namespace: {}\n", q(ns)));
        }
        s
    }
}

impl std::fmt::Display for ObjectRef {
    /// `Deployment.apps metallb-system/controller`, `ClusterRole.rbac.authorization.k8s.io system:coredns`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.group().is_empty() { self.kind.clone() } else { format!("{}.{}", self.kind, self.group()) };
        match self.effective_namespace() {
            Some(ns) => write!(f, "{kind} {ns}/{}", self.name),
            None => write!(f, "{kind} {}", self.name),
        }
    }
}

/// A YAML double-quoted scalar.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

// ---------------------------------------------------------------------------
// A YAML tree with shared (not copied) aliases and a count of expanded size.

#[derive(Debug)]
enum Value {
    Null,
    Str(String),
    /// A number, a boolean, or another non-string scalar.
    Other,
    Seq(Vec<Rc<Node>>),
    Map(Vec<(Rc<Node>, Rc<Node>)>),
}

#[derive(Debug)]
struct Node {
    value: Value,
    /// Nodes it stands for once its aliases are expanded (saturating).
    size: u64,
}

impl Node {
    fn str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of `key` in a mapping, `<<` merge keys included (an explicit
    /// key wins over a merged one; among either, the last one wins).
    fn get(&self, key: &str) -> Option<&Node> {
        let Value::Map(entries) = &self.value else { return None };
        if let Some((_, v)) = entries.iter().rev().find(|(k, _)| k.str() == Some(key)) {
            return Some(v);
        }
        for (k, v) in entries.iter().rev() {
            if k.str() != Some("<<") {
                continue;
            }
            let found = match &v.value {
                Value::Map(_) => v.get(key),
                Value::Seq(items) => items.iter().find_map(|m| m.get(key)),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

enum Frame {
    Seq { items: Vec<Rc<Node>>, anchor: usize, size: u64 },
    Map { entries: Vec<(Rc<Node>, Rc<Node>)>, key: Option<Rc<Node>>, anchor: usize, size: u64 },
}

/// One document: its root (`None`: empty).
struct Doc {
    root: Option<Rc<Node>>,
    /// Nodes decoded with aliases expanded, and of those, decoded through an alias.
    decoded: u64,
    aliased: u64,
}

#[derive(Default)]
struct Builder {
    docs: Vec<Doc>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Rc<Node>>,
    root: Option<Rc<Node>>,
    decoded: u64,
    aliased: u64,
    error: Option<String>,
}

impl Builder {
    fn push(&mut self, node: Rc<Node>, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, size, .. }) => {
                *size = size.saturating_add(node.size);
                items.push(node);
            }
            Some(Frame::Map { entries, key, size, .. }) => {
                *size = size.saturating_add(node.size);
                match key.take() {
                    None => *key = Some(node),
                    Some(k) => entries.push((k, node)),
                }
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::DocumentStart => {
                self.decoded = 0;
                self.aliased = 0;
                self.anchors.clear();
            }
            Event::DocumentEnd => {
                self.docs.push(Doc { root: self.root.take(), decoded: self.decoded, aliased: self.aliased })
            }
            Event::Scalar(v, style, anchor, tag) => {
                self.decoded = self.decoded.saturating_add(1);
                let value = if style != TScalarStyle::Plain {
                    Value::Str(v)
                } else if let Some(tag) = tag {
                    match (tag.handle.as_str(), tag.suffix.as_str()) {
                        ("tag:yaml.org,2002:", "str") => Value::Str(v),
                        ("tag:yaml.org,2002:", "null") => Value::Null,
                        ("tag:yaml.org,2002:", _) => Value::Other,
                        _ => Value::Str(v),
                    }
                } else if YAML11_BOOLS.contains(&v.as_str()) {
                    // go-yaml v2 reads YAML 1.1, where these are booleans.
                    Value::Other
                } else {
                    match yaml_rust2::Yaml::from_str(&v) {
                        yaml_rust2::Yaml::String(s) => Value::Str(s),
                        yaml_rust2::Yaml::Null => Value::Null,
                        _ => Value::Other,
                    }
                };
                self.push(Rc::new(Node { value, size: 1 }), anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.decoded = self.decoded.saturating_add(1);
                self.stack.push(Frame::Seq { items: Vec::new(), anchor, size: 1 });
            }
            Event::MappingStart(anchor, _) => {
                self.decoded = self.decoded.saturating_add(1);
                self.stack.push(Frame::Map { entries: Vec::new(), key: None, anchor, size: 1 });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq { items, anchor, size }) => (Node { value: Value::Seq(items), size }, anchor),
                    Some(Frame::Map { entries, anchor, size, .. }) => {
                        (Node { value: Value::Map(entries), size }, anchor)
                    }
                    None => {
                        self.error = Some("unbalanced YAML events".into());
                        return;
                    }
                };
                self.push(Rc::new(node), anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => {
                    // The alias stands for a copy of the anchored node: count
                    // it as go-yaml does when it decodes one.
                    self.decoded = self.decoded.saturating_add(node.size);
                    self.aliased = self.aliased.saturating_add(node.size);
                    self.push(node, 0);
                }
                None => self.error = Some(format!("line {}: an alias to an unknown anchor", mark.line())),
            },
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

/// Plain scalars YAML 1.1 (go-yaml v2, which K3s uses) reads as booleans.
const YAML11_BOOLS: &[&str] =
    &["y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF"];

/// At most 40 characters of a line, for a message.
fn shorten(line: &str) -> String {
    let mut s: String = line.chars().take(40).collect();
    if line.chars().count() > 40 {
        s.push('…');
    }
    s
}

/// go-yaml's rule (`allowedAliasRatio`): a document may decode at most this
/// share of its nodes through aliases, once it has more than 100 such nodes
/// and more than 1,000 in all: 99% for small documents, falling to 10% at
/// 4,000,000 nodes. It keeps real anchors and stops the billion laughs.
fn excessive_aliasing(decoded: u64, aliased: u64) -> bool {
    const LOW: f64 = 400_000.0;
    const HIGH: f64 = 4_000_000.0;
    if aliased <= 100 || decoded <= 1000 {
        return false;
    }
    let d = decoded as f64;
    let allowed = if d <= LOW {
        0.99
    } else if d >= HIGH {
        0.10
    } else {
        0.99 - 0.89 * (d - LOW) / (HIGH - LOW)
    };
    aliased as f64 / d > allowed
}

/// The objects of a multi-document manifest. All problems of the file are
/// returned at once, each naming its document (1-based) and line.
pub fn parse(text: &str) -> Result<Vec<ObjectRef>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut lists = 0;
    for (n, (line, chunk)) in split_documents(text)?.into_iter().enumerate() {
        let at = format!("document {} (line {line})", n + 1);
        // A UTF-8 byte order mark at the start of the file is skipped by
        // go-yaml; before the split, K3s counts it as content (below).
        let body = chunk.strip_prefix('\u{feff}').unwrap_or(chunk);
        // Lines before the chunk keep the parser's line numbers the file's.
        let padded = format!("{}{body}", "\n".repeat(line - 1));
        let mut b = Builder::default();
        if let Err(e) = Parser::new_from_str(&padded).load(&mut b, true) {
            errors.push(format!("{at}: invalid YAML: {e}"));
            continue;
        }
        if let Some(e) = b.error {
            errors.push(format!("{at}: invalid YAML: {e}"));
            continue;
        }
        // K3s decodes the first YAML document of a chunk.
        let Some(doc) = b.docs.first() else {
            errors.push(format!("{at}: not an object (K3s reads it as a document without a kind)"));
            continue;
        };
        if excessive_aliasing(doc.decoded, doc.aliased) {
            errors.push(format!(
                "{at}: excessive aliasing: its anchors and aliases expand to {} nodes (an alias bomb?)",
                doc.decoded
            ));
            continue;
        }
        // A chunk that starts with `{` is read as JSON, not YAML.
        if body.trim_start().starts_with('{') && serde_json::from_str::<serde_json::Value>(body).is_err() {
            errors.push(format!("{at}: it starts with `{{`, so K3s reads it as JSON, and it is not valid JSON"));
            continue;
        }
        let root = doc.root.as_deref();
        match root.map(|r| &r.value) {
            Some(Value::Map(_)) => {}
            Some(Value::Null) | None => {
                errors.push(format!("{at}: not an object (K3s reads it as a document without a kind)"));
                continue;
            }
            Some(_) => {
                errors.push(format!("{at}: not a mapping"));
                continue;
            }
        }
        let root = root.expect("a mapping");
        match object(root, None) {
            Err(e) => errors.push(format!("{at}: {e}")),
            Ok(Declared::One(o)) => out.push(o),
            Ok(Declared::List { items, kind, api_version }) => {
                lists += 1;
                // An item with neither kind nor apiVersion takes the List's
                // (apimachinery's `decodeToList`).
                let item_kind = kind.strip_suffix("List").unwrap_or(&kind).to_owned();
                let inherit = (item_kind, api_version);
                for (j, item) in items.iter().enumerate() {
                    match object(item, Some(&inherit)) {
                        Ok(Declared::One(o)) => out.push(o),
                        Ok(Declared::List { .. }) => errors.push(format!("{at}: items[{j}]: a List inside a List")),
                        Err(e) => errors.push(format!("{at}: items[{j}]: {e}")),
                    }
                }
            }
        }
    }
    if errors.is_empty() && out.is_empty() && lists == 0 {
        errors.push("no document".into());
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// The documents K3s reads from a file, with the line each starts on:
/// apimachinery's `YAMLReader` splits at every line that starts with `---`
/// (only whitespace or a comment may follow it, or the whole file is refused),
/// and chunks of blank, comment and `---` lines only are dropped
/// (`isEmptyYaml`).
fn split_documents(text: &str) -> Result<Vec<(usize, &str)>, Vec<String>> {
    let mut errors = Vec::new();
    let mut chunks = Vec::new();
    let (mut start, mut start_line, mut offset) = (0usize, 1usize, 0usize);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if let Some(rest) = line.strip_prefix("---") {
            let rest = rest.trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                errors.push(format!(
                    "line {}: {:?}: K3s splits documents at lines starting with `---` and refuses one followed by anything but a comment",
                    i + 1,
                    shorten(line.trim_end())
                ));
            }
            chunks.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    chunks.push((start_line, &text[start..]));
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(chunks.into_iter().filter(|(_, c)| !is_empty_yaml(c)).collect())
}

/// apimachinery's `isEmptyYaml`: blank, comment and `---` lines only. A byte
/// order mark is content here.
fn is_empty_yaml(chunk: &str) -> bool {
    chunk.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---"
    })
}

enum Declared<'a> {
    One(ObjectRef),
    List { items: &'a [Rc<Node>], kind: String, api_version: String },
}

/// One document's object, or a List's items. `inherit`: the (kind,
/// apiVersion) an item of a List takes when it names neither.
fn object<'a>(doc: &'a Node, inherit: Option<&(String, String)>) -> Result<Declared<'a>, String> {
    if !matches!(doc.value, Value::Map(_)) {
        return Err("not a mapping".into());
    }
    let field = |n: Option<&Node>, what: &str| -> Result<Option<String>, String> {
        match n.map(|n| &n.value) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Str(s)) if s.is_empty() => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{what} is not a string")),
        }
    };
    let mut kind = field(doc.get("kind"), "kind")?;
    let mut api_version = field(doc.get("apiVersion"), "apiVersion")?;
    if let (None, None, Some((k, v))) = (&kind, &api_version, inherit) {
        kind = Some(k.clone()).filter(|k| !k.is_empty());
        api_version = Some(v.clone());
    }
    let (Some(api_version), Some(kind)) = (api_version, kind.clone()) else {
        return Err(match kind {
            None => "missing kind".into(),
            Some(k) => format!("{k}: missing apiVersion"),
        });
    };
    // K3s (apimachinery's unstructured decoder) reads a document with a
    // top-level `items` as a List of them, whatever its kind: `kind: List`,
    // `ConfigMapList`, ….
    if let Some(items) = doc.get("items") {
        return match &items.value {
            Value::Seq(items) => Ok(Declared::List { items, kind, api_version }),
            Value::Null => Ok(Declared::List { items: &[], kind, api_version }),
            _ => Err(format!("{kind}: items is not a list")),
        };
    }
    let metadata = doc.get("metadata");
    let name = field(metadata.and_then(|m| m.get("name")), "metadata.name")?
        .ok_or_else(|| format!("{kind}: missing metadata.name"))?;
    let namespace = field(metadata.and_then(|m| m.get("namespace")), "metadata.namespace")?;
    for (what, v) in [("kind", Some(&kind)), ("metadata.name", Some(&name)), ("metadata.namespace", namespace.as_ref())]
    {
        if let Some(v) = v
            && (v.len() > 253 || v.chars().any(|c| c.is_control() || c == '/' || c.is_whitespace()))
        {
            return Err(format!("{kind}: {what} {v:?} is not valid"));
        }
    }
    Ok(Declared::One(ObjectRef { api_version, kind, name, namespace }))
}

/// What every file name tend writes starts with.
pub const PREFIX: &str = "tend-";

/// The longest slug of the bundle path kept in a file name: the Addon name
/// stays within 63 characters, a DNS label, so it fits wherever K3s or a
/// controller copies it (labels, event names), not only the 253 of a name.
const SLUG_MAX: usize = 40;

/// The file name of the manifest at `rel` under `k3s/` (the directory is flat).
///
/// `tend-<slug>-<hash>.yaml`: the slug is the path without its extension,
/// lowercased, every run of other characters than `a-z0-9` made one `-`, cut
/// at 40 characters; the hash is the first 8 hex digits of the SHA-256 of the
/// path, so two paths with one slug (`apps/web.yaml`, `apps-web.yml`,
/// `Web.yaml` and `web.yaml`) still get two names. The name has no dot before
/// `.yaml`, so the Addon name (base name up to the first dot) is the whole
/// stem, an RFC 1123 label.
pub fn file_name(rel: &str) -> String {
    let stem = rel.strip_suffix(".yaml").or_else(|| rel.strip_suffix(".yml")).unwrap_or(rel);
    let mut slug = String::with_capacity(stem.len());
    for c in stem.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.truncate(SLUG_MAX);
    let slug = slug.trim_end_matches('-');
    let hash = &ContentHash::of(rel.as_bytes()).to_string()[..8];
    if slug.is_empty() { format!("{PREFIX}{hash}.yaml") } else { format!("{PREFIX}{slug}-{hash}.yaml") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(objs: &[ObjectRef]) -> Vec<String> {
        objs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn multi_document_manifests() {
        let objs = parse(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: demo\n---\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n",
        )
        .unwrap();
        assert_eq!(names(&objs), ["Deployment.apps demo/web", "Service default/web"]);
        let back = parse(&objs[0].to_yaml()).unwrap();
        assert_eq!(back[0], objs[0]);
    }

    #[test]
    fn bad_manifests_name_the_document_and_every_problem_is_reported() {
        for (text, needle) in [
            ("kind: X\nmetadata:\n  name: a\n", "document 1 (line 1): X: missing apiVersion"),
            (
                "apiVersion: v1\nkind: A\nmetadata:\n  name: a\n---\napiVersion: v1\nmetadata:\n  name: b\n",
                "document 2 (line 6): missing kind",
            ),
            ("apiVersion: v1\nkind: A\nmetadata: {}\n", "document 1 (line 1): A: missing metadata.name"),
            ("apiVersion: v1\nkind: [\n", "invalid YAML"),
            ("- a\n- b\n", "not a mapping"),
            ("apiVersion: v1\nkind: A\nmetadata:\n  name: 12\n", "metadata.name is not a string"),
            ("a: *x\n", "invalid YAML"),
            ("", "no document"),
            ("# only a comment\n", "no document"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.iter().any(|e| e.contains(needle)), "{text:?}: {e:?}");
        }
        let e =
            parse("kind: A\n---\napiVersion: v1\nkind: B\nmetadata: {name: ok}\n---\napiVersion: v1\n").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("document 1") && e[1].starts_with("document 3"), "{e:?}");
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let objs = parse("\u{feff}apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n").unwrap();
        assert_eq!(names(&objs), ["ConfigMap default/c"]);
        // As in K3s: before an empty first document, the mark is a document.
        let e = parse("\u{feff}# comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n").unwrap_err();
        assert_eq!(e, ["document 1 (line 1): not an object (K3s reads it as a document without a kind)"]);
        // A null document that is not empty is refused, as K3s does.
        assert!(parse("apiVersion: v1\nkind: A\nmetadata: {name: a}\n---\n~\n").is_err());
        // A document starting with `{` must be JSON.
        assert!(parse("{\"apiVersion\": \"v1\", \"kind\": \"A\", \"metadata\": {\"name\": \"a\"}}\n").is_ok());
        let e = parse("{apiVersion: v1, kind: A, metadata: {name: a}}\n").unwrap_err();
        assert!(e[0].contains("reads it as JSON"), "{e:?}");
    }

    #[test]
    fn k3s_rules_on_separators_and_yaml_1_1_booleans() {
        assert!(parse("---\napiVersion: v1\nkind: A\nmetadata: {name: a}\n--- # next\napiVersion: v1\nkind: B\nmetadata: {name: b}\n").is_ok());
        let e = parse("--- {apiVersion: v1, kind: A, metadata: {name: a}}\n").unwrap_err();
        assert!(e[0].starts_with("line 1: ") && e[0].contains("K3s splits documents"), "{e:?}");
        let e = parse("apiVersion: v1\nkind: A\nmetadata: {name: yes}\n").unwrap_err();
        assert!(e[0].contains("metadata.name is not a string"), "{e:?}");
        assert!(parse("apiVersion: v1\nkind: A\nmetadata: {name: \"yes\"}\n").is_ok());
    }

    #[test]
    fn lists_stand_for_their_items() {
        let objs = parse(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: a, namespace: x}\n- apiVersion: rbac.authorization.k8s.io/v1\n  kind: ClusterRole\n  metadata: {name: r}\n---\napiVersion: v1\nkind: ConfigMapList\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n---\napiVersion: v1\nkind: List\nitems: []\n",
        )
        .unwrap();
        assert_eq!(names(&objs), ["ConfigMap x/a", "ClusterRole.rbac.authorization.k8s.io r", "ConfigMap default/b"]);
        let e = parse("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n").unwrap_err();
        assert_eq!(e, ["document 1 (line 1): items[0]: ConfigMap: missing metadata.name"]);
        // An empty List declares nothing, and that is not an error.
        assert_eq!(parse("apiVersion: v1\nkind: List\nitems: []\n").unwrap(), []);
        // Items naming neither kind nor apiVersion take the List's.
        let objs = parse("apiVersion: v1\nkind: ConfigMapList\nitems:\n- metadata: {name: c}\n").unwrap();
        assert_eq!(names(&objs), ["ConfigMap default/c"]);
    }

    #[test]
    fn anchors_aliases_and_merge_keys_are_expanded() {
        let text = "apiVersion: v1\nkind: ServiceAccount\nmetadata: &meta\n  name: longhorn\n  namespace: longhorn-system\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  <<: *meta\n  name: settings\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: *meta\n";
        // Anchors are per document (the alias in document 3 is unknown there).
        assert!(parse(text).is_err());
        let text = "apiVersion: v1\nkind: ServiceAccount\nmetadata: &meta\n  name: longhorn\n  namespace: longhorn-system\nx:\n  - kind: ConfigMap\n    metadata:\n      <<: *meta\n      name: settings\n  - *meta\n";
        let objs = parse(text).unwrap();
        assert_eq!(names(&objs), ["ServiceAccount longhorn-system/longhorn"]);
        let merged = parse(
            "base: &b {apiVersion: v1, kind: ConfigMap}\n<<: *b\nmetadata:\n  <<: [{namespace: ns1}, {name: x}]\n",
        )
        .unwrap();
        assert_eq!(names(&merged), ["ConfigMap ns1/x"]);
    }

    #[test]
    fn an_alias_bomb_is_refused_by_its_expanded_size() {
        let mut bomb = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\na0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!("a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"));
        }
        let e = parse(&bomb).unwrap_err();
        assert!(e[0].contains("excessive aliasing"), "{e:?}");
        // A document that aliases one block a few hundred times is fine.
        let mut many = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\nblock: &b {a: 1, b: 2, c: 3}\nuses:\n",
        );
        for _ in 0..50 {
            many.push_str("- *b\n");
        }
        for i in 0..2000 {
            many.push_str(&format!("- plain{i}\n"));
        }
        assert!(parse(&many).is_ok());
        assert!(!excessive_aliasing(1_000_000, 50_000));
        assert!(excessive_aliasing(10_000, 9_950));
        assert!(excessive_aliasing(5_000_000, 600_000));
    }

    #[test]
    fn identity_is_group_kind_namespace_name() {
        let o = |api: &str, kind: &str, ns: Option<&str>| ObjectRef {
            api_version: api.into(),
            kind: kind.into(),
            name: "x".into(),
            namespace: ns.map(Into::into),
        };
        assert_eq!(
            o("rbac.authorization.k8s.io/v1beta1", "ClusterRole", None).key(),
            o("rbac.authorization.k8s.io/v1", "ClusterRole", Some("ignored")).key()
        );
        assert_eq!(o("apps/v1", "Deployment", None).key(), o("apps/v1beta2", "Deployment", Some("default")).key());
        assert_ne!(o("apps/v1", "Deployment", Some("a")).key(), o("apps/v1", "Deployment", Some("b")).key());
        assert_ne!(o("v1", "Service", None).key(), o("serving.knative.dev/v1", "Service", None).key());
        assert_eq!(o("v1", "Namespace", None).deletes_more(), Some("deletes every object in the namespace"));
        assert!(o("v1", "Namespace", Some("x")).to_yaml().lines().all(|l| !l.contains("namespace")));
        assert!(o("v1", "ConfigMap", None).to_yaml().contains("namespace: \"default\""));
    }
}
