//! The allowed range of every number tend reads from outside (SPEC §3, 8):
//! agent.toml, a bundle's `tend.toml` and container files, a broker message.
//!
//! What must always hold: a value outside its range is rejected where it is
//! read, with the key, the value and the range in one message, so that no
//! later arithmetic (an `Instant` plus an interval, a timer's period, a
//! percentage in a `u8`) can overflow or make a zero-period timer. The ranges
//! are wide enough for any real fleet and narrow enough that the daemon's
//! time arithmetic stays far from its types' limits (an `Instant` holds
//! centuries; the longest duration allowed anywhere is a year).

use std::time::Duration;

/// An inclusive range of durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub min: Duration,
    pub max: Duration,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

impl Span {
    pub const fn new(min: Duration, max: Duration) -> Span {
        Span { min, max }
    }

    /// `value` if it is inside the range; else the message naming `key`,
    /// the value as written (`shown`) and the range.
    pub fn check(self, key: &str, shown: &str, value: Duration) -> Result<Duration, String> {
        if value < self.min || value > self.max {
            return Err(format!("{key}: {shown:?} is out of range ({})", self.describe()));
        }
        Ok(value)
    }

    /// Parse a humantime string (`"90s"`, `"5m"`) and check it.
    pub fn parse(self, key: &str, text: &str) -> Result<Duration, String> {
        let d = humantime::parse_duration(text).map_err(|e| format!("{key}: {text:?} is not a duration: {e}"))?;
        self.check(key, text, d)
    }

    /// "from 1s to 30days", as humantime writes durations.
    pub fn describe(self) -> String {
        format!("allowed: {} to {}", show(self.min), show(self.max))
    }
}

/// A duration as humantime writes it, `0s` for zero.
pub fn show(d: Duration) -> String {
    if d.is_zero() { "0s".into() } else { humantime::format_duration(d).to_string() }
}

/// An integer in an inclusive range; `value` as read (i128 holds every TOML
/// and JSON integer).
pub fn int(key: &str, value: i128, min: i128, max: i128) -> Result<i128, String> {
    if value < min || value > max {
        return Err(format!("{key}: {value} is out of range (allowed: {min} to {max})"));
    }
    Ok(value)
}

/// A size as people write it: `"256MiB"`, `"1GiB"`, `"512KB"`, `"4096"`
/// (bytes); binary (KiB, MiB, GiB, TiB) and decimal (kB, MB, GB, TB) units.
pub fn parse_size(key: &str, text: &str, min: u64, max: u64) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit = unit.trim();
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(format!("{key}: {text:?} is not a size (like \"256MiB\", \"1GiB\" or a number of bytes)")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{key}: {text:?} is not a size (like \"256MiB\")"))?;
    let bytes = n.checked_mul(scale).filter(|b| (min..=max).contains(b)).ok_or_else(|| {
        format!("{key}: {text:?} is out of range (allowed: {} to {})", show_size(min), show_size(max))
    })?;
    Ok(bytes)
}

/// Bytes in the largest binary unit that divides them (`268435456` → `256MiB`).
pub fn show_size(b: u64) -> String {
    for (unit, scale) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if b >= scale && b.is_multiple_of(scale) {
            return format!("{}{unit}", b / scale);
        }
    }
    format!("{b}B")
}

// agent.toml (SPEC §1).

/// `[source].interval`: the poll period.
pub const POLL_INTERVAL: Span = Span::new(secs(1), secs(30 * DAY));
/// `[source].jitter`: the random extra delay per poll.
pub const POLL_JITTER: Span = Span::new(secs(0), secs(DAY));
/// `[source].timeout`: one fetch.
pub const SOURCE_TIMEOUT: Span = Span::new(secs(1), secs(HOUR));
/// `[source].announce_spread`.
pub const ANNOUNCE_SPREAD: Span = Span::new(secs(0), secs(HOUR));
/// `[apply].health_timeout`.
pub const HEALTH_TIMEOUT: Span = Span::new(secs(1), secs(DAY));
/// `[apply].history`: revisions kept.
pub const HISTORY: (i128, i128) = (1, 10_000);
/// `[apply].retry.limit`.
pub const RETRY_LIMIT: (i128, i128) = (0, 1_000);
/// `[apply].retry.backoff`.
pub const RETRY_BACKOFF: Span = Span::new(secs(0), secs(DAY));
/// `[apply].retry.factor`.
pub const RETRY_FACTOR: (f64, f64) = (1.0, 10.0);
/// `[apply].retry.max`.
pub const RETRY_MAX: Span = Span::new(secs(0), secs(7 * DAY));
/// `[apply].lock_timeout`.
pub const LOCK_TIMEOUT: Span = Span::new(secs(0), secs(365 * DAY));
/// `[apply].crash_limit`: deaths of the agent while one revision is applied.
pub const CRASH_LIMIT: (i128, i128) = (1, 100);
/// `[k3s].timeout`: one kubectl call.
pub const KUBECTL_TIMEOUT: Span = Span::new(secs(1), secs(HOUR));
/// `[mqtt].health_interval`.
pub const HEALTH_INTERVAL: Span = Span::new(secs(1), secs(DAY));

// A bundle (SPEC §2, §7).

/// `[[check]].interval`.
pub const CHECK_INTERVAL: Span = Span::new(Duration::from_millis(100), secs(HOUR));
/// `[hooks].timeout`.
pub const HOOK_TIMEOUT: Span = Span::new(secs(1), secs(HOUR));
/// A container's `[health].interval`.
pub const CONTAINER_HEALTH_INTERVAL: Span = Span::new(secs(1), secs(HOUR));
/// A container's `[health].retries`.
pub const CONTAINER_HEALTH_RETRIES: (i128, i128) = (1, 100);
/// `[rollout].waves[].after`.
pub const WAVE_AFTER: Span = Span::new(secs(0), secs(365 * DAY));
/// `[rollout].waves[].percent`.
pub const WAVE_PERCENT: (i128, i128) = (0, 100);
/// `[rollout].max_failed`.
pub const MAX_FAILED: (i128, i128) = (1, 1_000_000);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_names_key_value_and_range() {
        let e = CHECK_INTERVAL.parse("[[check]] api: interval", "18446744073709551615s").unwrap_err();
        assert_eq!(e, "[[check]] api: interval: \"18446744073709551615s\" is out of range (allowed: 100ms to 1h)");
        let e = POLL_INTERVAL.parse("[source].interval", "0s").unwrap_err();
        assert!(e.contains("\"0s\" is out of range (allowed: 1s to 30days)"), "{e}");
        assert_eq!(POLL_INTERVAL.parse("k", "90s").unwrap(), secs(90));
        assert_eq!(POLL_INTERVAL.parse("k", "1s").unwrap(), secs(1));
        assert_eq!(POLL_INTERVAL.parse("k", "30days").unwrap(), secs(30 * DAY));
        assert!(POLL_INTERVAL.parse("k", "30days 1s").is_err());
        let e = POLL_INTERVAL.parse("k", "soon").unwrap_err();
        assert!(e.starts_with("k: \"soon\" is not a duration"), "{e}");
        // Past u64 seconds: humantime refuses it itself.
        assert!(POLL_INTERVAL.parse("k", "99999999999999999999999s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("k", "256MiB", 0, u64::MAX), Ok(256 << 20));
        assert_eq!(parse_size("k", "1 GiB", 0, u64::MAX), Ok(1 << 30));
        assert_eq!(parse_size("k", "512kB", 0, u64::MAX), Ok(512_000));
        assert_eq!(parse_size("k", "4096", 0, u64::MAX), Ok(4096));
        assert_eq!(parse_size("k", "0", 0, 10), Ok(0));
        assert!(parse_size("k", "-1MiB", 0, u64::MAX).is_err());
        assert!(parse_size("k", "", 0, u64::MAX).is_err());
        assert!(parse_size("k", "1.5GiB", 0, u64::MAX).is_err());
        assert!(parse_size("k", "12 parsecs", 0, u64::MAX).unwrap_err().contains("is not a size"));
        assert!(parse_size("k", "99999999999999TiB", 0, u64::MAX).unwrap_err().contains("out of range"));
        assert_eq!(
            parse_size("--max-memory", "1KiB", 1 << 20, 1 << 40).unwrap_err(),
            "--max-memory: \"1KiB\" is out of range (allowed: 1MiB to 1TiB)"
        );
        assert_eq!(show_size(256 << 20), "256MiB");
        assert_eq!(show_size(1000), "1000B");
    }

    #[test]
    fn integers() {
        assert_eq!(int("k", 5, 1, 10), Ok(5));
        assert_eq!(int("k", 0, 1, 10).unwrap_err(), "k: 0 is out of range (allowed: 1 to 10)");
        assert!(int("k", i128::from(u64::MAX) + 1, 1, 10).is_err());
        assert!(int("k", -1, 0, 10).is_err());
    }

    #[test]
    fn the_longest_duration_allowed_fits_an_instant_many_times() {
        let now = std::time::Instant::now();
        for s in [POLL_INTERVAL, HEALTH_TIMEOUT, LOCK_TIMEOUT, WAVE_AFTER, RETRY_MAX] {
            assert!(now.checked_add(s.max * 100).is_some());
        }
    }
}
