//! Waves (SPEC §7): which wave a gateway is in, and when a revision is due
//! for it. No controller: every gateway works it out from the commit, its own
//! identity and the policy in the repository.

use std::time::Duration;

use sha2::{Digest, Sha256};

/// One wave of `[rollout].waves`: a cumulative share of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Wave {
    pub name: String,
    /// 1–100, increasing from wave to wave; the last is 100.
    pub percent: u8,
    /// After the commit's committer time.
    pub after: Duration,
}

/// Check the waves: names unique and not empty, percents increasing and
/// ending at 100, `after` not decreasing. Every problem, each naming the wave.
pub fn check(waves: &[Wave]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, w) in waves.iter().enumerate() {
        let at = format!("[rollout].waves[{i}] ({:?})", w.name);
        if w.name.is_empty() || w.name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            problems.push(format!("{at}: a wave needs a name without spaces"));
        }
        if !seen.insert(&w.name) {
            problems.push(format!("{at}: the name is used twice"));
        }
        if w.percent == 0 || w.percent > 100 {
            problems.push(format!("{at}: percent must be 1 to 100"));
        }
        if let Some(prev) = i.checked_sub(1).map(|p| &waves[p]) {
            if w.percent <= prev.percent {
                problems.push(format!(
                    "{at}: percent must be more than the wave before ({}): shares are cumulative",
                    prev.percent
                ));
            }
            if w.after < prev.after {
                problems.push(format!("{at}: after must not be earlier than the wave before's"));
            }
        }
    }
    if waves.last().is_some_and(|w| w.percent != 100) {
        problems.push("[rollout].waves: the last wave must be 100 percent (every gateway is in a wave)".into());
    }
    problems
}

/// A stable bucket 0–99 from `fleet/device_id`: the same gateway is in the
/// same bucket on every commit, and buckets spread evenly.
pub fn bucket(fleet: &str, device_id: &str) -> u8 {
    let d = Sha256::digest(format!("{fleet}/{device_id}").as_bytes());
    (u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) % 100) as u8
}

/// The wave of a gateway: the one its `wave` label names, else the first
/// whose percent exceeds its bucket. `Err` names a label no wave has.
pub fn of<'a>(waves: &'a [Wave], label: Option<&str>, fleet: &str, device_id: &str) -> Result<&'a Wave, String> {
    if let Some(name) = label {
        return waves.iter().find(|w| w.name == name).ok_or_else(|| {
            format!(
                "label wave = {name:?} names no wave of [rollout].waves ({})",
                waves.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(", ")
            )
        });
    }
    let b = bucket(fleet, device_id);
    Ok(waves.iter().find(|w| b < w.percent).unwrap_or_else(|| waves.last().expect("checked: at least one wave")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waves() -> Vec<Wave> {
        vec![
            Wave { name: "canary".into(), percent: 10, after: Duration::ZERO },
            Wave { name: "early".into(), percent: 50, after: Duration::from_secs(3600) },
            Wave { name: "all".into(), percent: 100, after: Duration::from_secs(4 * 3600) },
        ]
    }

    #[test]
    fn buckets_are_stable_and_spread_evenly() {
        assert_eq!(bucket("acme", "gw-00001"), bucket("acme", "gw-00001"));
        let mut per_wave = [0usize; 3];
        let all = waves();
        for i in 0..10_000 {
            let w = of(&all, None, "acme", &format!("gw-{i:05}")).unwrap();
            per_wave[all.iter().position(|x| x.name == w.name).unwrap()] += 1;
        }
        // 10 % / 40 % / 50 %, within 1.5 points.
        for (got, want) in per_wave.iter().zip([1000, 4000, 5000]) {
            assert!(got.abs_diff(want) < 150, "{per_wave:?}");
        }
    }

    #[test]
    fn a_label_names_the_wave() {
        assert_eq!(of(&waves(), Some("early"), "acme", "x").unwrap().name, "early");
        let e = of(&waves(), Some("first"), "acme", "x").unwrap_err();
        assert!(e.contains("\"first\" names no wave") && e.contains("canary, early, all"), "{e}");
    }

    #[test]
    fn bad_waves_are_each_named() {
        assert!(check(&waves()).is_empty());
        let mut w = waves();
        w[1].percent = 5;
        w[2].percent = 90;
        w[2].after = Duration::from_secs(60);
        w.push(Wave { name: "canary".into(), percent: 0, after: Duration::ZERO });
        let p = check(&w).join("\n");
        for want in [
            "[rollout].waves[1] (\"early\"): percent must be more than the wave before (10)",
            "[rollout].waves[2] (\"all\"): after must not be earlier",
            "[rollout].waves[3] (\"canary\"): the name is used twice",
            "[rollout].waves[3] (\"canary\"): percent must be 1 to 100",
            "the last wave must be 100 percent",
        ] {
            assert!(p.contains(want), "{want} not in:\n{p}");
        }
    }
}
