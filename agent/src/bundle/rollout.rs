//! `[rollout]` in a bundle's `tend.toml` (SPEC §7): waves, the circuit
//! breaker's `max_failed`, maintenance windows and their time zone. Usually in
//! a shared base every device includes; the including bundle wins key by key.
//! A malformed policy rejects the bundle, every problem named with the
//! `tend.toml` that set the key.

use serde::Deserialize;

use super::{BundleError, RelPath};
use crate::bounds;
use crate::rollout::{Policy, wave, window};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    waves: Option<Vec<RawWave>>,
    max_failed: Option<i64>,
    windows: Option<Vec<String>>,
    timezone: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    name: String,
    percent: i64,
    after: Option<String>,
}

/// `[rollout]` as the bundles read so far declare it, each key with the
/// `tend.toml` that set it last.
#[derive(Debug, Default)]
pub(super) struct Merged {
    waves: Option<(Vec<RawWave>, RelPath)>,
    max_failed: Option<(i64, RelPath)>,
    windows: Option<(Vec<String>, RelPath)>,
    timezone: Option<(String, RelPath)>,
}

impl Merged {
    /// Take `raw` from the `tend.toml` at `from`; read after its includes, so
    /// its keys win over theirs.
    pub(super) fn add(&mut self, raw: RawRollout, from: &RelPath) {
        if let Some(w) = raw.waves {
            self.waves = Some((w, from.clone()));
        }
        if let Some(m) = raw.max_failed {
            self.max_failed = Some((m, from.clone()));
        }
        if let Some(w) = raw.windows {
            self.windows = Some((w, from.clone()));
        }
        if let Some(t) = raw.timezone {
            self.timezone = Some((t, from.clone()));
        }
    }

    /// The policy, checked: `None` when no bundle has `[rollout]`.
    pub(super) fn finish(self) -> Result<Option<Policy>, Vec<BundleError>> {
        if self.waves.is_none() && self.max_failed.is_none() && self.windows.is_none() && self.timezone.is_none() {
            return Ok(None);
        }
        let mut problems = Vec::new();
        let mut policy = Policy::default();
        if let Some((raw, from)) = self.waves {
            let mut waves = Vec::new();
            for (i, w) in raw.into_iter().enumerate() {
                let key = format!("[rollout].waves[{i}] ({:?})", w.name);
                let after = match w.after.as_deref().map(|a| bounds::WAVE_AFTER.parse(&format!("{key}: after"), a)) {
                    None => std::time::Duration::ZERO,
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        problems.push(BundleError::new(&from, e));
                        continue;
                    }
                };
                let (min, max) = bounds::WAVE_PERCENT;
                let percent = match bounds::int(&format!("{key}: percent"), i128::from(w.percent), min, max) {
                    Ok(p) => u8::try_from(p).expect("0 to 100"),
                    Err(e) => {
                        problems.push(BundleError::new(&from, e));
                        continue;
                    }
                };
                waves.push(wave::Wave { name: w.name, percent, after });
            }
            if waves.is_empty() {
                problems.push(BundleError::new(&from, "[rollout].waves: at least one wave (the last at 100 percent)"));
            }
            problems.extend(wave::check(&waves).into_iter().map(|p| BundleError::new(&from, p)));
            policy.waves = waves;
        }
        if let Some((m, from)) = self.max_failed {
            let (min, max) = bounds::MAX_FAILED;
            match bounds::int("[rollout].max_failed", i128::from(m), min, max) {
                Ok(n) => policy.max_failed = Some(u32::try_from(n).expect("in range")),
                Err(e) => problems.push(BundleError::new(&from, e)),
            }
        }
        if let Some((windows, from)) = self.windows {
            for w in &windows {
                if let Err(e) = window::Window::parse(w) {
                    problems.push(BundleError::new(&from, format!("[rollout].windows: {e}")));
                }
            }
            policy.windows = windows;
        }
        if let Some((tz, from)) = self.timezone {
            if let Err(e) = jiff::tz::TimeZone::get(&tz) {
                problems.push(BundleError::new(
                    &from,
                    format!("[rollout].timezone: {tz:?} is not a time zone this gateway knows ({e})"),
                ));
            }
            policy.timezone = Some(tz);
        }
        if problems.is_empty() { Ok(Some(policy)) } else { Err(problems) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawRollout {
        #[derive(Deserialize)]
        struct T {
            rollout: RawRollout,
        }
        toml::from_str::<T>(text).unwrap().rollout
    }

    #[test]
    fn the_including_bundle_wins_key_by_key() {
        let base = RelPath::parse("base/tend.toml").unwrap();
        let dev = RelPath::parse("devices/gw-1/tend.toml").unwrap();
        let mut m = Merged::default();
        m.add(
            raw(r#"
                [rollout]
                waves = [{ name = "canary", percent = 5 }, { name = "all", percent = 100, after = "4h" }]
                max_failed = 3
                windows = ["Mon-Fri 22:00-05:00"]
                timezone = "Europe/Berlin"
            "#),
            &base,
        );
        m.add(raw("[rollout]\nmax_failed = 1\nwindows = [\"Sat,Sun 00:00-24:00\"]\n"), &dev);
        let p = m.finish().unwrap().unwrap();
        assert_eq!(p.waves.len(), 2);
        assert_eq!(p.waves[1].after, std::time::Duration::from_secs(4 * 3600));
        assert_eq!(p.max_failed, Some(1));
        assert_eq!(p.windows, vec!["Sat,Sun 00:00-24:00"]);
        assert_eq!(p.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(Merged::default().finish().unwrap(), None);
    }

    #[test]
    fn every_problem_is_named_with_its_file() {
        let base = RelPath::parse("base/tend.toml").unwrap();
        let mut m = Merged::default();
        m.add(
            raw(r#"
                [rollout]
                waves = [{ name = "canary", percent = 50, after = "soon" }, { name = "all", percent = 40 }]
                max_failed = 0
                windows = ["Mon-Fri 22:00-05:00", "Caturday 10:00-11:00"]
                timezone = "Mars/Olympus_Mons"
            "#),
            &base,
        );
        let errs: Vec<String> = m.finish().unwrap_err().iter().map(ToString::to_string).collect();
        let all = errs.join("\n");
        for want in [
            "base/tend.toml: [rollout].waves[0] (\"canary\"): after: \"soon\" is not a duration",
            "the last wave must be 100 percent",
            "base/tend.toml: [rollout].max_failed: 0 is out of range (allowed: 1 to 1000000)",
            "base/tend.toml: [rollout].windows: window \"Caturday 10:00-11:00\": \"Caturday\" is not a day",
            "base/tend.toml: [rollout].timezone: \"Mars/Olympus_Mons\" is not a time zone",
        ] {
            assert!(all.contains(want), "{want:?} not in:\n{all}");
        }
        // An unknown key is refused, not ignored (a typo must not drop a policy).
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct T {
            rollout: RawRollout,
        }
        let e = toml::from_str::<T>("[rollout]\nwave = []\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `wave`"), "{e}");
    }
}
