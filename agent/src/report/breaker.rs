//! The fleet-wide circuit breaker (SPEC §7): a gateway whose revision fails
//! or rolls back publishes a retained report under
//! `{prefix}/{fleet}/_rollout/{revision}/{device_id}`; a gateway about to
//! apply a revision counts that revision's reports and holds it at
//! `max_failed`.
//!
//! The sync cycle asks [`Breaker::failing`] for the revision it is gating;
//! that makes the reporter subscribe to that revision's reports only (never
//! to every revision's: a fleet's history is not every gateway's business),
//! and what arrives is kept here. Anything on the broker may come from a
//! broken or hostile gateway: the device is taken from the topic, a report
//! must name the revision of its topic, and no more than [`KEEP`] names are
//! kept per revision.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde_json::Value;

/// Reports kept for the watched revision (enough for any `max_failed`).
pub const KEEP: usize = 1000;

/// The outcomes a report counts for.
const FAILED: [&str; 2] = ["failed", "rolled_back"];

#[derive(Debug, Default)]
struct Watched {
    revision: String,
    failing: BTreeSet<String>,
    /// Subscribed and the broker acknowledged it: its retained reports came.
    subscribed: bool,
}

/// Shared between the sync cycle and the reporter task.
#[derive(Debug)]
pub struct Breaker {
    /// `{prefix}/{fleet}/_rollout`.
    pub root: String,
    watched: Mutex<Option<Watched>>,
    /// Wakes the reporter when the watched revision changes.
    pub changed: tokio::sync::Notify,
}

impl Breaker {
    pub fn new(prefix: &str, fleet: &str) -> Breaker {
        Breaker {
            root: format!("{}/{fleet}/_rollout", prefix.trim_end_matches('/')),
            watched: Mutex::new(None),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The topic a gateway reports a failed `revision` on.
    pub fn report_topic(&self, revision: &str, device_id: &str) -> String {
        format!("{}/{revision}/{device_id}", self.root)
    }

    /// The gateways that reported `revision` failed, as far as this gateway
    /// knows; `None` until the broker has answered a subscription to its
    /// reports (the breaker cannot say yet). Watching starts here.
    pub fn failing(&self, revision: &str) -> Option<Vec<String>> {
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        match w.as_ref() {
            Some(x) if x.revision == revision => x.subscribed.then(|| x.failing.iter().cloned().collect()),
            _ => {
                *w = Some(Watched { revision: revision.to_owned(), ..Watched::default() });
                drop(w);
                self.changed.notify_one();
                None
            }
        }
    }

    /// The revision watched now, for the reporter to subscribe to.
    pub fn watched(&self) -> Option<String> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|w| w.revision.clone())
    }

    /// The broker acknowledged the subscription to `revision`'s reports
    /// (retained ones arrive before the acknowledgement's effects are seen).
    pub fn subscribed(&self, revision: &str) {
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(x) = w.as_mut().filter(|x| x.revision == revision) {
            x.subscribed = true;
        }
    }

    /// The connection was lost: what comes after reconnecting is read again.
    pub fn disconnected(&self) {
        if let Some(x) = self.watched.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            x.subscribed = false;
            x.failing.clear();
        }
    }

    /// A message on `topic` (under [`Breaker::root`]); false if it is not a
    /// report this gateway reads. An empty payload clears a report.
    pub fn receive(&self, topic: &str, payload: &[u8]) -> bool {
        let Some(rest) = topic.strip_prefix(&self.root).and_then(|r| r.strip_prefix('/')) else { return false };
        let Some((revision, device)) = rest.split_once('/') else { return false };
        if device.is_empty() || device.contains('/') || device.len() > 128 {
            return false;
        }
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let Some(x) = w.as_mut().filter(|x| x.revision == revision) else { return true };
        let failed = serde_json::from_slice::<Value>(payload).ok().is_some_and(|v| {
            v.get("revision").and_then(Value::as_str) == Some(revision)
                && v.get("outcome").and_then(Value::as_str).is_some_and(|o| FAILED.contains(&o))
        });
        if failed {
            if x.failing.len() < KEEP {
                x.failing.insert(device.to_owned());
            }
        } else {
            x.failing.remove(device);
        }
        true
    }
}

/// The retained report of a failed revision, from a `failed` or
/// `rolled_back` event; `None` for any other event.
pub fn report_of(event: &Value) -> Option<(String, Value)> {
    let kind = event.get("kind").and_then(Value::as_str)?;
    // A revision that will be tried again here has not failed for the fleet.
    if !FAILED.contains(&kind) || event.get("retry") == Some(&Value::Bool(true)) {
        return None;
    }
    let revision = event.get("revision").and_then(Value::as_str)?.to_owned();
    let report = serde_json::json!({
        "revision": revision,
        "device_id": event.get("device_id"),
        "outcome": kind,
        "ts": event.get("ts"),
        "error": event.get("error"),
    });
    Some((revision, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_are_counted_for_the_watched_revision_only_and_hostile_ones_ignored() {
        let b = Breaker::new("tend/v1/", "acme");
        let r = |dev: &str| format!("tend/v1/acme/_rollout/abc/{dev}");
        let bad = |rev: &str| json!({ "revision": rev, "outcome": "rolled_back" }).to_string().into_bytes();
        assert_eq!(b.failing("abc"), None, "not subscribed yet");
        assert_eq!(b.watched().as_deref(), Some("abc"));
        b.subscribed("abc");
        assert!(b.receive(&r("gw-1"), &bad("abc")));
        assert!(b.receive(&r("gw-2"), &bad("abc")));
        // Hostile or beside the point: another revision in the payload, a
        // healthy outcome, garbage, a deeper topic, another fleet.
        assert!(b.receive(&r("gw-3"), &bad("def")));
        assert!(b.receive(&r("gw-4"), &json!({ "revision": "abc", "outcome": "healthy" }).to_string().into_bytes()));
        assert!(b.receive(&r("gw-5"), b"\xff\xfe not json"));
        assert!(!b.receive("tend/v1/acme/_rollout/abc/gw-6/x", &bad("abc")));
        assert!(!b.receive("tend/v1/other/_rollout/abc/gw-7", &bad("abc")));
        assert!(b.receive("tend/v1/acme/_rollout/def/gw-8", &bad("def")), "another revision: read, not counted");
        assert_eq!(b.failing("abc"), Some(vec!["gw-1".to_owned(), "gw-2".to_owned()]));
        // A cleared report no longer counts.
        b.receive(&r("gw-1"), b"");
        assert_eq!(b.failing("abc"), Some(vec!["gw-2".to_owned()]));
        // A flood is bounded.
        for i in 0..(KEEP + 50) {
            b.receive(&r(&format!("x{i}")), &bad("abc"));
        }
        assert_eq!(b.failing("abc").unwrap().len(), KEEP);
        // A new revision starts over; so does a lost connection.
        assert_eq!(b.failing("def"), None);
        b.subscribed("def");
        assert_eq!(b.failing("def"), Some(vec![]));
        b.disconnected();
        assert_eq!(b.failing("def"), None);
    }

    #[test]
    fn failed_and_rolled_back_events_make_reports() {
        let ev = json!({ "kind": "rolled_back", "revision": "abc", "device_id": "gw-1", "ts": "t", "error": "check" });
        let (rev, report) = report_of(&ev).unwrap();
        assert_eq!(rev, "abc");
        assert_eq!(report["outcome"], "rolled_back");
        assert_eq!(report["device_id"], "gw-1");
        assert!(report_of(&json!({ "kind": "healthy", "revision": "abc" })).is_none());
        assert!(report_of(&json!({ "kind": "failed" })).is_none());
        // Not applied now, tried again (a before_apply hook): no report.
        assert!(report_of(&json!({ "kind": "failed", "revision": "abc", "retry": true })).is_none());
    }
}
