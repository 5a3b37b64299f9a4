//! `k3s/**.yaml`: Kubernetes manifests for K3s's auto-deploy directory.
//!
//! tend writes the files as they are (K3s applies them); here each document is
//! checked to name `apiVersion`, `kind` and `metadata.name`, so prune knows
//! which objects a manifest declared. YAML anchors and aliases are refused: an
//! alias bomb expands exponentially, and manifests do not need them.

use serde::{Deserialize, Serialize};
use yaml_rust2::parser::{Event, EventReceiver, Parser};
use yaml_rust2::{Yaml, YamlLoader};

/// One Kubernetes object a manifest declares.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

impl ObjectRef {
    /// A minimal document naming this object (for `kubectl delete -f -`).
    pub fn to_yaml(&self) -> String {
        let mut s = format!(
            "apiVersion: {}\nkind: {}\nmetadata:\n  name: {}\n",
            q(&self.api_version),
            q(&self.kind),
            q(&self.name)
        );
        if let Some(ns) = &self.namespace {
            s.push_str(&format!("  namespace: {}\n", q(ns)));
        }
        s
    }
}

/// A YAML double-quoted scalar.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

struct AliasCounter {
    aliases: usize,
    anchors: usize,
}

impl EventReceiver for AliasCounter {
    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Alias(_) => self.aliases += 1,
            Event::Scalar(_, _, aid, _) | Event::SequenceStart(aid, _) | Event::MappingStart(aid, _) if aid > 0 => {
                self.anchors += 1
            }
            _ => {}
        }
    }
}

/// The objects of a multi-document manifest; errors name the document (1-based).
pub fn parse(text: &str) -> Result<Vec<ObjectRef>, String> {
    let mut counter = AliasCounter { aliases: 0, anchors: 0 };
    Parser::new_from_str(text).load(&mut counter, true).map_err(|e| format!("invalid YAML: {e}"))?;
    if counter.aliases > 0 || counter.anchors > 0 {
        return Err("YAML anchors and aliases are not allowed in manifests".into());
    }
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let n = i + 1;
        if doc.is_null() {
            continue; // an empty document between `---` separators
        }
        let field = |d: &Yaml, k: &str| d[k].as_str().map(str::to_owned).filter(|s| !s.is_empty());
        if doc.as_hash().is_none() {
            return Err(format!("document {n}: not a mapping"));
        }
        let api_version = field(doc, "apiVersion").ok_or(format!("document {n}: missing apiVersion"))?;
        let kind = field(doc, "kind").ok_or(format!("document {n}: missing kind"))?;
        let name = field(&doc["metadata"], "name").ok_or(format!("document {n} ({kind}): missing metadata.name"))?;
        let namespace = field(&doc["metadata"], "namespace");
        for (what, v) in [("kind", &kind), ("metadata.name", &name)] {
            if v.len() > 253 || v.chars().any(|c| c.is_control() || c == '/' || c.is_whitespace()) {
                return Err(format!("document {n}: {what} {v:?} is not valid"));
            }
        }
        out.push(ObjectRef { api_version, kind, name, namespace });
    }
    if out.is_empty() {
        return Err("no document".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_manifests() {
        let objs = parse(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: demo\n---\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n",
        )
        .unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].namespace.as_deref(), Some("demo"));
        assert_eq!(objs[1].kind, "Service");
        let back = parse(&objs[0].to_yaml()).unwrap();
        assert_eq!(back[0], objs[0]);
    }

    #[test]
    fn bad_manifests_name_the_document() {
        for (text, needle) in [
            ("kind: X\nmetadata:\n  name: a\n", "document 1: missing apiVersion"),
            (
                "apiVersion: v1\nkind: A\nmetadata:\n  name: a\n---\napiVersion: v1\nmetadata:\n  name: b\n",
                "document 2: missing kind",
            ),
            ("apiVersion: v1\nkind: A\nmetadata: {}\n", "document 1 (A): missing metadata.name"),
            ("apiVersion: v1\nkind: [\n", "invalid YAML"),
            ("- a\n- b\n", "not a mapping"),
            ("a: &x [1, 2]\nb: [*x, *x]\n", "anchors and aliases"),
            ("", "no document"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
