//! What the rollout policy and this gateway say about a prepared revision,
//! gathered for the cycle's decision (`cycle::step`): the wave and when it is
//! due, whether a window is open, which update locks are held, what the fleet
//! reported. Reads the clock it is given and the lock directory; decides
//! nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::{Gate, Policy, lock, wave, window};

/// Who this gateway is and what its local config says.
pub struct Local<'a> {
    pub fleet: &'a str,
    pub device_id: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub lock_dir: &'a Path,
    pub lock_timeout: Option<Duration>,
}

/// The gate for a revision committed at `committed_at` under `policy` (none:
/// only the update locks apply). `failing`: the gateways the fleet reported
/// it failed on, `None` when the breaker is off. An error names what in the
/// policy does not fit this gateway (a `wave` label no wave has, a time zone
/// the system does not know): the revision is rejected with it.
pub fn gather(
    policy: Option<&Policy>,
    local: &Local<'_>,
    committed_at: Timestamp,
    failing: Option<Vec<String>>,
    now: Timestamp,
) -> Result<Gate, String> {
    let mut gate = Gate {
        lock_timeout: local.lock_timeout,
        locks: match lock::held(local.lock_dir) {
            Ok(held) => held.iter().map(|p| p.display().to_string()).collect(),
            // Never assumed free: waiting, with why.
            Err(e) => vec![e],
        },
        ..Gate::default()
    };
    let Some(policy) = policy else { return Ok(gate) };
    if !policy.waves.is_empty() {
        let w = wave::of(&policy.waves, local.labels.get("wave").map(String::as_str), local.fleet, local.device_id)?;
        let after = jiff::SignedDuration::try_from(w.after).map_err(|e| format!("wave {}: {e}", w.name))?;
        let due = committed_at.checked_add(after).map_err(|e| format!("wave {}: {e}", w.name))?;
        gate.wave = Some((w.name.clone(), due));
    }
    if !policy.windows.is_empty() {
        let tz = match &policy.timezone {
            Some(name) => TimeZone::get(name)
                .map_err(|e| format!("[rollout].timezone {name:?}: not in this system's time zone database: {e}"))?,
            None => TimeZone::system(),
        };
        let windows = policy.windows.iter().map(|w| window::Window::parse(w)).collect::<Result<Vec<_>, _>>()?;
        if !window::open(&windows, &tz, now) {
            gate.window_closed = Some((window::next_open(&windows, &tz, now), policy.windows.join(", ")));
        }
    }
    gate.max_failed = policy.max_failed;
    gate.failing = failing;
    Ok(gate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::wave::Wave;

    #[test]
    fn a_gate_from_the_policy_and_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let labels = BTreeMap::from([("wave".to_owned(), "early".to_owned())]);
        let local = Local {
            fleet: "acme",
            device_id: "gw-1",
            labels: &labels,
            lock_dir: dir.path(),
            lock_timeout: Some(Duration::from_secs(600)),
        };
        let policy = Policy {
            waves: vec![
                Wave { name: "canary".into(), percent: 10, after: Duration::ZERO },
                Wave { name: "early".into(), percent: 100, after: Duration::from_secs(3600) },
            ],
            max_failed: Some(2),
            // Saturday 2026-11-28 is in it, Friday 2026-11-27 12:00 UTC not.
            windows: vec!["Sat,Sun 00:00-24:00".into()],
            timezone: Some("Europe/Berlin".into()),
        };
        let committed: Timestamp = "2026-11-27T12:00:00Z".parse().unwrap();
        let gate = gather(Some(&policy), &local, committed, None, committed).unwrap();
        assert_eq!(gate.wave, Some(("early".into(), "2026-11-27T13:00:00Z".parse().unwrap())));
        // Saturday 00:00 in Berlin is Friday 23:00 UTC.
        assert_eq!(
            gate.window_closed,
            Some((Some("2026-11-27T23:00:00Z".parse().unwrap()), "Sat,Sun 00:00-24:00".into()))
        );
        assert!(gate.locks.is_empty() && gate.failing.is_none() && gate.max_failed == Some(2));
        let saturday: Timestamp = "2026-11-28T09:00:00Z".parse().unwrap();
        assert_eq!(gather(Some(&policy), &local, committed, None, saturday).unwrap().window_closed, None);
        // No policy: only the locks.
        assert_eq!(
            gather(None, &local, committed, None, committed).unwrap(),
            Gate { lock_timeout: local.lock_timeout, ..Gate::default() }
        );
        // What does not fit this gateway is named.
        let bad = Policy { timezone: Some("Mars/Olympus".into()), ..policy.clone() };
        assert!(
            gather(Some(&bad), &local, committed, None, committed)
                .unwrap_err()
                .contains("[rollout].timezone \"Mars/Olympus\"")
        );
        let labels = BTreeMap::from([("wave".to_owned(), "first".to_owned())]);
        let odd = Local { labels: &labels, ..local };
        assert!(gather(Some(&policy), &odd, committed, None, committed).unwrap_err().contains("names no wave"));
    }
}
