//! `tend fleet status` as text: the counts first, then the gateways that
//! need attention (capped), or every gateway with `--all`. Every string in it
//! has been cleaned by [`super::model::clean`]: no escape sequence from the
//! broker reaches the terminal.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::model::{Counts, Device, Tally, clean, short_rev};

/// Rows listed without `--all`.
pub const ATTENTION_ROWS: usize = 50;

/// The whole report: counts, then rows.
pub fn report<'a>(devices: impl Iterator<Item = &'a Device> + Clone, all: bool, now: SystemTime) -> String {
    let counts = Counts::of(devices.clone());
    let mut out = summary(&counts);
    if counts.gateways == 0 {
        return out;
    }
    let mut rows: Vec<&Device> = if all { devices.collect() } else { devices.filter(|d| d.attention).collect() };
    if rows.is_empty() {
        out.push_str("\nevery gateway is online, synced and on its source\n");
        return out;
    }
    // What needs attention most first: failed and rolled back, then offline,
    // then stale; by name within each.
    if !all {
        rows.sort_by_key(|d| (severity(d), d.fleet.clone(), d.device_id.clone()));
    }
    let shown = if all { rows.len() } else { rows.len().min(ATTENTION_ROWS) };
    out.push('\n');
    out.push_str(&table(&rows[..shown], now));
    if shown < rows.len() {
        let _ = writeln!(out, "… {} more need attention (--all lists every gateway)", rows.len() - shown);
    }
    out
}

fn severity(d: &Device) -> u8 {
    match d.phase.as_str() {
        "failed" | "rolled_back" => 0,
        "degraded" | "held" => 1,
        _ if !d.problems.is_empty() => 2,
        _ if d.availability != "online" => 3,
        _ if d.source.as_deref() != Some("ok") => 4,
        _ => 5,
    }
}

/// The counts, one line each.
pub fn summary(c: &Counts) -> String {
    let mut out = format!(
        "{} gateway{}: {} online, {} offline{}{}; {} stale; {} need{} attention\n",
        c.gateways,
        if c.gateways == 1 { "" } else { "s" },
        c.online,
        c.offline,
        if c.availability_unknown > 0 { format!(", {} unknown", c.availability_unknown) } else { String::new() },
        if c.via_import > 0 { format!(", {} known by a stick's report", c.via_import) } else { String::new() },
        c.stale,
        c.attention,
        if c.attention == 1 { "s" } else { "" },
    );
    if let Some(w) = c.warning() {
        // Within 80 columns, as the table.
        let mut line = String::from("!");
        for word in w.split(' ') {
            if line.chars().count() + 1 + word.chars().count() > 79 {
                let _ = writeln!(out, "{line}");
                line = String::from(" ");
            }
            line.push(' ');
            line.push_str(word);
        }
        let _ = writeln!(out, "{line}");
    }
    if c.gateways == 0 {
        return out;
    }
    // Phases: all of them, on as many lines as it takes.
    let mut line = String::from("  phase     ");
    let mut first = true;
    for (p, n) in c.by_phase.iter().filter(|(_, n)| **n > 0) {
        let item = format!("{n} {p}");
        if !first && line.chars().count() + 2 + item.chars().count() > 79 {
            let _ = writeln!(out, "{},", line);
            line = String::from("            ");
            first = true;
        }
        if !first {
            line.push_str(", ");
        }
        line.push_str(&item);
        first = false;
    }
    let _ = writeln!(out, "{line}");
    // Revisions: the most common ones that fit on one line, then the rest summed.
    let total: u64 = c.by_revision.iter().map(|r| r.1).sum::<u64>() + c.other_revisions;
    let mut line = String::from("  revision  ");
    let mut shown = 0u64;
    for (i, (r, n)) in c.by_revision.iter().enumerate() {
        let item = format!("{}{n} {}", if i > 0 { ", " } else { "" }, clean(&short_rev(r), 12));
        let rest = total - shown - n;
        let tail = if rest > 0 { format!(", {rest} on other revisions").chars().count() } else { 0 };
        if line.chars().count() + item.chars().count() + tail > 79 {
            break;
        }
        line.push_str(&item);
        shown += n;
    }
    if total > shown {
        let _ = write!(line, "{}{} on other revisions", if shown > 0 { ", " } else { "" }, total - shown);
    }
    let _ = writeln!(out, "{line}");
    out
}

/// Values listed by `--by` before the rest are summed.
pub const BY_ROWS: usize = 100;

/// `tend fleet status --by KEY`: gateways per value of an inventory key, the
/// most common first.
pub fn by<'a>(devices: impl Iterator<Item = &'a Device>, key: &str) -> String {
    let t = Tally::of(devices, key, BY_ROWS);
    let total: u64 = t.values.iter().map(|v| v.1).sum::<u64>() + t.other;
    let mut out = format!("{total} gateway{} by {key}\n", if total == 1 { "" } else { "s" });
    for (v, n) in &t.values {
        let _ = writeln!(out, "{n:>8}  {}", clip(v, 68));
    }
    if t.other > 0 {
        let _ = writeln!(out, "{:>8}  (other values)", t.other);
    }
    out
}

/// A table that fits 80 columns; gateways needing a look are marked `!`.
pub fn table(rows: &[&Device], now: SystemTime) -> String {
    let mut out = format!(
        "  {:<22} {:<7} {:<11} {:<12} {:>5} {:<7} {}\n",
        "DEVICE", "ONLINE", "PHASE", "REVISION", "SYNC", "SOURCE", "ERROR"
    );
    for r in rows {
        let age = r
            .last_sync_at
            .map(|t| short_age(now.duration_since(t).unwrap_or_default()))
            .unwrap_or_else(|| "never".into());
        let device = format!("{}/{}", clean(&r.fleet, 60), clean(&r.device_id, 60));
        let error = match (&r.error, r.problems.first()) {
            (Some(e), _) => e.clone(),
            (None, Some(p)) => format!("[{p}]"),
            (None, None) => String::new(),
        };
        let line = format!(
            "{} {:<22} {:<7} {:<11} {:<12} {:>5} {:<7} {}",
            if r.attention { "!" } else { " " },
            clip(&device, 22),
            r.availability,
            clip(&r.phase, 11),
            r.revision.as_deref().map_or_else(|| "-".to_owned(), short_rev),
            if r.stale { format!("{age}!") } else { age },
            clip(r.source.as_deref().unwrap_or("?"), 7),
            error,
        );
        out.push_str(&clip(&line, 79));
        out.push('\n');
    }
    out
}

fn short_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=99 => format!("{s}s"),
        100..=5999 => format!("{}m", s / 60),
        6000..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_owned() } else { s.chars().take(n.saturating_sub(1)).collect::<String>() + "…" }
}

#[cfg(test)]
mod tests {
    use super::super::model::Fleet;
    use super::*;

    fn fleet_of(n: usize, failing: usize) -> Fleet {
        let mut f = Fleet::new("tend/v1", Duration::from_secs(900));
        let now = SystemTime::now();
        let ts = humantime::format_rfc3339_seconds(now);
        for i in 0..n {
            let phase = if i < failing { "rolled_back" } else { "synced" };
            let status = format!(
                r#"{{"phase":"{phase}","revision":"3f2a9c01b7e4aa","source":"ok","last_sync":"{ts}","error":{}}}"#,
                if i < failing {
                    "\"revision 3f2a9c01b7e4 is unhealthy: check api: tcp 127.0.0.1:8080: refused\""
                } else {
                    "null"
                }
            );
            f.ingest(&format!("tend/v1/acme/gw-{i:05}/availability"), b"online", now);
            f.ingest(&format!("tend/v1/acme/gw-{i:05}/status"), status.as_bytes(), now);
        }
        f
    }

    #[test]
    fn counts_first_then_only_what_needs_attention_capped() {
        let f = fleet_of(1000, 60);
        let t = report(f.devices.values(), false, SystemTime::now());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "1000 gateways: 1000 online, 0 offline; 0 stale; 60 need attention", "{t}");
        assert_eq!(lines[1], "  phase     60 rolled_back, 940 synced");
        assert_eq!(lines[2], "  revision  1000 3f2a9c01b7e4");
        assert!(lines[5].starts_with("! acme/gw-00000"), "{t}");
        assert_eq!(t.lines().filter(|l| l.starts_with('!')).count(), ATTENTION_ROWS);
        assert!(t.contains("… 10 more need attention"), "{t}");
        for line in t.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
        let all = report(f.devices.values(), true, SystemTime::now());
        assert_eq!(all.lines().count(), 3 + 2 + 1000);
    }

    #[test]
    fn by_arch_counts_the_most_common_first() {
        let mut f = fleet_of(3, 0);
        let now = SystemTime::now();
        for (i, arch) in ["aarch64", "aarch64", "x86_64"].iter().enumerate() {
            let s = format!(r#"{{"phase":"synced","inventory":{{"arch":"{arch}"}}}}"#);
            f.ingest(&format!("tend/v1/acme/gw-{i:05}/status"), s.as_bytes(), now);
        }
        f.ingest("tend/v1/acme/weird/status", br#"{"inventory":{"arch":"\u001b[2Jarm"}}"#, now);
        assert_eq!(
            by(f.devices.values(), "arch"),
            "4 gateways by arch\n       2  aarch64\n       1  x86_64\n       1  \u{FFFD}[2Jarm\n"
        );
        assert_eq!(by(f.devices.values(), "model"), "4 gateways by model\n       4  none\n");
        for i in 0..150 {
            let s = format!(r#"{{"inventory":{{"os":"os {i:03}"}}}}"#);
            f.ingest(&format!("tend/v1/acme/many-{i}/status"), s.as_bytes(), now);
        }
        let t = by(f.devices.values(), "os");
        assert_eq!(t.lines().count(), 1 + BY_ROWS + 1, "{t}");
        assert!(t.ends_with(&format!("{:>8}  (other values)\n", 150 - (BY_ROWS - 1))), "{t}");
    }

    #[test]
    fn a_healthy_fleet_says_so() {
        let f = fleet_of(3, 0);
        let t = report(f.devices.values(), false, SystemTime::now());
        assert!(t.ends_with("every gateway is online, synced and on its source\n"), "{t}");
    }
}
