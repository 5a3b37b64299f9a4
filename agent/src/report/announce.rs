//! Announced commits (SPEC §4): `{prefix}/{fleet}/_source/{branch}`, retained,
//! `{"revision":"<sha>","ts":"…"}`, published by `tend fleet announce` in the
//! fleet repository's CI.
//!
//! What must always hold:
//! - an announcement is only a hint to fetch now: what is applied is what Git
//!   (and `allowed_signers`) says, so a forged one can at most cause a fetch;
//! - anything on the broker is hostile input: a payload that is not a small
//!   JSON object with a full hexadecimal commit id is ignored;
//! - announce-triggered fetches are rate-limited per gateway ([`Limiter`]): a
//!   flood of announcements (forged or from a busy CI) costs at most
//!   [`BURST`] fetches at once, then one every [`REFILL`].

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// The largest announcement read.
const MAX_ANNOUNCEMENT: usize = 1024;

/// Announce-triggered fetches a gateway makes at once...
pub const BURST: u32 = 3;
/// ...and then at most one per this.
pub const REFILL: Duration = Duration::from_secs(20);

/// The announcement topic of `branch`; `None` when the branch name cannot be
/// an MQTT topic (it has `+`, `#` or a NUL).
pub fn topic(prefix: &str, fleet: &str, branch: &str) -> Option<String> {
    if branch.is_empty() || branch.contains(['+', '#', '\0']) {
        return None;
    }
    Some(format!("{}/{fleet}/_source/{branch}", prefix.trim_end_matches('/')))
}

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hexadecimal digits.
pub fn is_commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The announcement's payload.
pub fn payload(revision: &str, ts: &str) -> String {
    serde_json::json!({ "revision": revision, "ts": ts }).to_string()
}

/// The announced revision; never panics on hostile input.
pub fn parse(payload: &[u8]) -> Result<String, String> {
    if payload.len() > MAX_ANNOUNCEMENT {
        return Err(format!("announcement larger than {MAX_ANNOUNCEMENT} bytes"));
    }
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let rev = v.get("revision").and_then(Value::as_str).ok_or("no \"revision\" string")?;
    if !is_commit_id(rev) {
        return Err(format!("\"revision\" {:?} is not a full commit id", rev.chars().take(70).collect::<String>()));
    }
    Ok(rev.to_owned())
}

/// A token bucket for announce-triggered fetches: [`BURST`] tokens, one back
/// every [`REFILL`].
#[derive(Debug)]
pub struct Limiter {
    tokens: f64,
    at: Instant,
}

impl Limiter {
    pub fn new(now: Instant) -> Limiter {
        Limiter { tokens: f64::from(BURST), at: now }
    }

    /// Take a token for a fetch wanted at `wanted`; returns when it may run
    /// (`wanted`, or later when the bucket is empty).
    pub fn reserve(&mut self, wanted: Instant) -> Instant {
        let refill = REFILL.as_secs_f64();
        if wanted > self.at {
            let gained = (wanted - self.at).as_secs_f64() / refill;
            self.tokens = (self.tokens + gained).min(f64::from(BURST));
            self.at = wanted;
        }
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            return self.at;
        }
        // In debt: run when the bucket is back at zero.
        self.at + Duration::from_secs_f64(-self.tokens * refill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn topics_and_payloads() {
        assert_eq!(topic("tend/v1/", "acme", "main").unwrap(), "tend/v1/acme/_source/main");
        assert_eq!(topic("tend/v1", "acme", "release/v2").unwrap(), "tend/v1/acme/_source/release/v2");
        assert_eq!(topic("tend/v1", "acme", "a+b"), None);
        assert_eq!(topic("tend/v1", "acme", "a#"), None);
        assert_eq!(parse(payload(SHA, "2026-11-27T10:00:00Z").as_bytes()).unwrap(), SHA);
        assert!(is_commit_id(&"a".repeat(64)));
    }

    #[test]
    fn hostile_announcements_are_refused() {
        for bad in [
            &b"not json"[..],
            br#"[]"#,
            br#"{"revision":5}"#,
            br#"{"rev":"0123456789abcdef0123456789abcdef01234567"}"#,
            br#"{"revision":"0123456789ABCDEF0123456789ABCDEF01234567"}"#,
            br#"{"revision":"main"}"#,
            br#"{"revision":"0123456"}"#,
            br#"{"revision":"../../etc/passwd"}"#,
            &[0xff, 0xfe][..],
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let big = format!(r#"{{"revision":"{SHA}","pad":"{}"}}"#, " ".repeat(MAX_ANNOUNCEMENT));
        assert!(parse(big.as_bytes()).unwrap_err().contains("larger"));
    }

    #[test]
    fn a_flood_costs_at_most_the_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        // 1,000 announcements in the same second.
        let at: Vec<Instant> = (0..1000).map(|_| l.reserve(t0)).collect();
        assert!(at[..BURST as usize].iter().all(|&t| t == t0));
        let within = |d: Duration| at.iter().filter(|&&t| t <= t0 + d).count();
        assert_eq!(within(Duration::ZERO), BURST as usize);
        assert_eq!(within(REFILL * 10), BURST as usize + 10);
        // Spaced one REFILL apart, never closer.
        for w in at[BURST as usize..].windows(2) {
            assert_eq!(w[1] - w[0], REFILL);
        }
    }

    #[test]
    fn the_bucket_fills_again_while_quiet() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        for _ in 0..BURST {
            assert_eq!(l.reserve(t0), t0);
        }
        assert_eq!(l.reserve(t0), t0 + REFILL);
        // Long after, a full burst again (not more).
        let later = t0 + REFILL * 100;
        for _ in 0..BURST {
            assert_eq!(l.reserve(later), later);
        }
        assert!(l.reserve(later) > later);
    }
}
