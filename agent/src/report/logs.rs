//! Logs on demand (SPEC §4, the `logs` command): what a gateway answers on
//! `…/logs/{id}` when the fleet asks for a unit's journal or a container's log.
//!
//! What must always hold:
//! - only a name `[logs].units` lists is read: a unit (a name with a systemd
//!   unit suffix, `myapp.service`) from the journal through `journalctl`
//!   (the bounded runner, `process::run_capped`), anything else as a container
//!   through the runtime's Docker-Engine-compatible API
//!   (`reconcile::containers::read_logs`);
//! - every read is bounded: a timeout, a cap on the bytes read, and an answer
//!   of at most [`MAX_ANSWER`] bytes in all (the newest lines kept,
//!   `truncated: true` when some were left out);
//! - a request is checked before anything runs: its fields, `lines` in
//!   [`LINES`], `since` a duration back or an RFC 3339 time not in the
//!   future; whatever is wrong is said in the answer, never a panic;
//! - the gateway reads at most [`BURST`] times at once and one more every
//!   [`REFILL`] after (the [`Bucket`]), one read at a time; the reporter runs
//!   reads on a thread of their own, never on the sync loop's path;
//! - an answer carries the log lines' time and text and nothing else from
//!   the journal (no environment, no command line, no other fields).

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

/// The largest answer published, in bytes (SPEC §4).
pub const MAX_ANSWER: usize = 64 * 1024;
/// Entries in `[logs].units`, at most.
pub const MAX_UNITS: usize = 64;
/// The longest unit or container name.
pub const MAX_NAME: usize = 128;
/// The longest request id (it is the last level of the answer's topic).
pub const MAX_ID: usize = 64;
/// `lines`: the allowed range and the default.
pub const LINES: (u64, u64) = (1, 5000);
pub const LINES_DEFAULT: u64 = 200;
/// How far back `since` may reach.
pub const SINCE_MAX: Duration = Duration::from_secs(366 * 24 * 3600);
/// Reads allowed at once, and the time that earns one more.
pub const BURST: u32 = 3;
pub const REFILL: Duration = Duration::from_secs(10);

/// A read's time limit, and the bytes it reads at most (journalctl's output,
/// or the runtime's stream); only the newest [`MAX_ANSWER`] of it is kept.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CAP: usize = 4 << 20;
/// The longest line kept (in characters); the rest of it is cut.
pub const LINE_MAX: usize = 4096;
/// What an answer holds beside its lines (id, unit, flags), at most.
const ENVELOPE: usize = 1024;

/// Unit suffixes (systemd.unit(5)): a name ending so is a journal unit.
const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".socket",
    ".timer",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".slice",
    ".scope",
    ".device",
];

/// A unit or container name: 1-[`MAX_NAME`] characters of `[A-Za-z0-9:_.@-]`,
/// starting with a letter or digit (never an option to journalctl, never a
/// path or a query in the runtime's URL).
pub fn valid_name(s: &str) -> bool {
    s.len() <= MAX_NAME
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || ":_.@-".contains(c))
}

/// A request id: 1-[`MAX_ID`] characters of `[A-Za-z0-9._-]`, not `.` or `..`
/// (it becomes a topic level).
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID
        && s != "."
        && s != ".."
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Where a name's lines come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Journal,
    Container,
}

impl Source {
    pub fn of(name: &str) -> Source {
        if UNIT_SUFFIXES.iter().any(|s| name.ends_with(s)) { Source::Journal } else { Source::Container }
    }

    fn as_str(self) -> &'static str {
        match self {
            Source::Journal => "journal",
            Source::Container => "container",
        }
    }
}

/// A checked request: what to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub unit: String,
    pub source: Source,
    /// Seconds since the Unix epoch (never in the future).
    pub since: Option<i64>,
    pub lines: u64,
}

/// Check a `logs` command (the whole JSON object) against `allowed`
/// (`[logs].units`) at `now`: what to read, or why not, in one line.
pub fn check(req: &Value, allowed: &[String], now: SystemTime) -> Result<Plan, String> {
    let obj = req.as_object().ok_or("a logs command is a JSON object")?;
    if let Some(k) = obj.keys().find(|k| !["cmd", "id", "unit", "since", "lines"].contains(&k.as_str())) {
        return Err(format!("unknown field {:?} (a logs command has cmd, id, unit, since, lines)", cut(k, 40)));
    }
    let unit = match obj.get("unit") {
        None | Some(Value::Null) => {
            allowed.first().cloned().ok_or("no unit is allowed: [logs].units is empty on this gateway")?
        }
        Some(Value::String(u)) => u.clone(),
        Some(_) => return Err("unit: must be a string".into()),
    };
    if !allowed.contains(&unit) {
        return Err(if allowed.is_empty() {
            format!("unit {:?}: not allowed ([logs].units is empty on this gateway)", cut(&unit, 80))
        } else {
            format!("unit {:?}: not allowed (this gateway's [logs].units: {})", cut(&unit, 80), allowed.join(", "))
        });
    }
    let (min, max) = LINES;
    let lines = match obj.get("lines") {
        None | Some(Value::Null) => LINES_DEFAULT,
        Some(Value::Number(n)) => match n.as_u64().filter(|l| (min..=max).contains(l)) {
            Some(l) => l,
            None => return Err(format!("lines: {n} is out of range (allowed: {min} to {max})")),
        },
        Some(_) => return Err(format!("lines: must be a whole number from {min} to {max}")),
    };
    let since = match obj.get("since") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(since(s, now)?),
        Some(_) => return Err("since: must be a string (a duration back, \"10m\", or an RFC 3339 time)".into()),
    };
    Ok(Plan { source: Source::of(&unit), unit, since, lines })
}

/// `since`: a duration back from `now` (`"10m"`, at most [`SINCE_MAX`]) or an
/// RFC 3339 time not after `now`; seconds since the epoch.
fn since(s: &str, now: SystemTime) -> Result<i64, String> {
    let shown = cut(s, 64);
    let now_s = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if let Ok(d) = humantime::parse_duration(s.trim()) {
        if d > SINCE_MAX {
            return Err(format!(
                "since: {shown:?} is out of range (at most {} back)",
                humantime::format_duration(SINCE_MAX)
            ));
        }
        return Ok((now_s - d.as_secs() as i64).max(0));
    }
    let t: jiff::Timestamp = s.trim().parse().map_err(|_| {
        format!("since: {shown:?} is neither a duration back (\"10m\", \"2h\") nor an RFC 3339 time (\"2026-12-05T08:00:00Z\")")
    })?;
    if t.as_second() > now_s {
        return Err(format!(
            "since: {shown:?} is in the future (the gateway's clock says {})",
            crate::report::now_rfc3339()
        ));
    }
    Ok(t.as_second().max(0))
}

/// One log line: its time as the source gave it (RFC 3339) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub ts: String,
    pub text: String,
}

impl Line {
    fn json(&self) -> Value {
        json!({ "ts": self.ts, "text": self.text })
    }

    /// The bytes this line takes in the answer (its JSON and a comma).
    fn cost(&self) -> usize {
        self.json().to_string().len() + 1
    }
}

/// The newest lines that fit `limit` bytes of answer, oldest first.
#[derive(Debug)]
pub struct Window {
    lines: VecDeque<Line>,
    bytes: usize,
    limit: usize,
    /// Lines were left out (the read's cap, or the window's).
    pub truncated: bool,
}

impl Window {
    pub fn new(limit: usize) -> Window {
        Window { lines: VecDeque::new(), bytes: 0, limit, truncated: false }
    }

    /// Add the next (newer) line; the oldest go when it does not fit.
    pub fn push(&mut self, line: Line) {
        self.bytes += line.cost();
        self.lines.push_back(line);
        while self.bytes > self.limit {
            let Some(old) = self.lines.pop_front() else { break };
            self.bytes -= old.cost();
            self.truncated = true;
        }
    }

    pub fn into_lines(self) -> (Vec<Line>, bool) {
        (self.lines.into(), self.truncated)
    }
}

/// What a read found.
#[derive(Debug)]
pub struct Read {
    pub lines: Vec<Line>,
    pub truncated: bool,
}

/// Read what `plan` names: blocking, bounded in time and bytes.
pub fn read(plan: &Plan, socket: Option<&str>) -> Result<Read, String> {
    let mut window = Window::new(MAX_ANSWER - ENVELOPE);
    match plan.source {
        Source::Journal => journal(plan, &mut window)?,
        Source::Container => {
            let socket = socket.ok_or("no container runtime socket found; set [containers].socket")?;
            let mut on_line = |raw: &[u8]| window.push(container_line(raw));
            let complete = crate::reconcile::containers::read_logs(
                socket,
                &plan.unit,
                plan.lines,
                plan.since,
                READ_TIMEOUT,
                READ_CAP,
                &mut on_line,
            )?;
            window.truncated |= !complete;
        }
    }
    let (lines, truncated) = window.into_lines();
    Ok(Read { lines, truncated })
}

/// The journal's newest `lines` of the unit: `journalctl --reverse`, so that
/// a capped output keeps the newest, then put back in order.
fn journal(plan: &Plan, window: &mut Window) -> Result<(), String> {
    let mut argv: Vec<String> =
        ["journalctl", "--output=json", "--output-fields=MESSAGE", "--all", "--reverse", "--quiet", "--no-pager"]
            .map(String::from)
            .to_vec();
    argv.push(format!("--unit={}", plan.unit));
    argv.push(format!("--lines={}", plan.lines));
    if let Some(s) = plan.since {
        argv.push(format!("--since=@{s}"));
    }
    let out = crate::process::run_capped(&argv, None, READ_TIMEOUT, READ_CAP as u64)
        .map_err(|e| format!("journalctl: {e}"))?;
    if !out.status.success() {
        let why = out.stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        return Err(format!("journalctl failed ({}): {}", out.status, cut(why, 200)));
    }
    let capped = out.stdout.len() >= READ_CAP;
    let mut newest_first: Vec<Line> = out.stdout.lines().filter_map(journal_line).collect();
    newest_first.reverse();
    for l in newest_first {
        window.push(l);
    }
    window.truncated |= capped;
    Ok(())
}

/// One line of `journalctl --output=json`: its time and MESSAGE (a string,
/// or bytes when it is not UTF-8); `None` for what is not such a line (the
/// cut last line of a capped output).
fn journal_line(json: &str) -> Option<Line> {
    let v: Value = serde_json::from_str(json).ok()?;
    let ts = v["__REALTIME_TIMESTAMP"]
        .as_str()
        .and_then(|us| us.parse::<i64>().ok())
        .and_then(|us| jiff::Timestamp::from_microsecond(us).ok())
        .map(|t| t.to_string())
        .unwrap_or_default();
    let text = match &v["MESSAGE"] {
        Value::String(s) => cut(s, LINE_MAX),
        Value::Array(bytes) => {
            let b: Vec<u8> = bytes.iter().filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect();
            cut(String::from_utf8_lossy(&b).trim_end_matches('\n'), LINE_MAX)
        }
        _ => String::new(),
    };
    Some(Line { ts, text })
}

/// A line of the runtime's log with `timestamps=1`: `TIME TEXT`.
fn container_line(raw: &[u8]) -> Line {
    let s = String::from_utf8_lossy(raw);
    let s = s.trim_end_matches(['\n', '\r']);
    match s.split_once(' ') {
        Some((ts, text)) if ts.parse::<jiff::Timestamp>().is_ok() => {
            Line { ts: ts.to_owned(), text: cut(text, LINE_MAX) }
        }
        _ => Line { ts: String::new(), text: cut(s, LINE_MAX) },
    }
}

/// The answer to request `id` about `unit`: the lines read, or why not.
/// Never larger than [`MAX_ANSWER`].
pub fn answer(id: &str, unit: Option<&str>, source: Option<Source>, result: Result<Read, String>) -> Vec<u8> {
    let mut v = json!({ "id": id, "ok": result.is_ok() });
    if let Some(u) = unit {
        v["unit"] = u.into();
    }
    if let Some(s) = source {
        v["source"] = s.as_str().into();
    }
    match result {
        Ok(r) => {
            v["lines"] = r.lines.iter().map(Line::json).collect::<Vec<_>>().into();
            v["truncated"] = r.truncated.into();
        }
        Err(e) => v["error"] = cut(&e, 1000).into(),
    }
    v.to_string().into_bytes()
}

/// A refusal of request `id`.
pub fn refusal(id: &str, error: &str) -> Vec<u8> {
    answer(id, None, None, Err(error.to_owned()))
}

/// The rate limit: [`BURST`] reads at once, one more every [`REFILL`].
#[derive(Debug)]
pub struct Bucket {
    tokens: u32,
    /// When the next token is earned from (kept while tokens are short).
    since: Instant,
}

impl Bucket {
    pub fn new(now: Instant) -> Bucket {
        Bucket { tokens: BURST, since: now }
    }

    /// Take a token, or say how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.since);
        let earned = (elapsed.as_nanos() / REFILL.as_nanos()).min(u128::from(BURST)) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(BURST);
            self.since = if self.tokens == BURST { now } else { self.since + REFILL * earned };
        }
        if self.tokens == 0 {
            return Err(REFILL.saturating_sub(now.saturating_duration_since(self.since)));
        }
        if self.tokens == BURST {
            self.since = now;
        }
        self.tokens -= 1;
        Ok(())
    }
}

/// The refusal of a request over the rate limit.
pub fn over_limit(wait: Duration) -> String {
    format!(
        "rate limit: this gateway answers at most {BURST} logs requests at once and one more every {}; try again in {}s",
        humantime::format_duration(REFILL),
        wait.as_secs().max(1)
    )
}

/// At most `n` characters of `s` (cut by character, never inside one).
fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["myapp.service".into(), "modbus-bridge".into()]
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn check_str(s: &str) -> Result<Plan, String> {
        check(&serde_json::from_str(s).unwrap(), &allowed(), now())
    }

    #[test]
    fn names_and_ids() {
        for ok in ["myapp.service", "getty@tty1.service", "modbus-bridge", "a", "sys-kernel-debug.mount", "x:y"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-x", ".service", "../etc", "a/b", "a b", "a?b", "a%2f", "é", "a\n", &"a".repeat(129)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name(&"a".repeat(128)));
        for ok in ["fleet-0123abcd", "a", "A.b_c-1"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "+", "#", "a b", "a\u{0}", &"a".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert_eq!(Source::of("myapp.service"), Source::Journal);
        assert_eq!(Source::of("modbus-bridge"), Source::Container);
    }

    #[test]
    fn requests_are_checked_and_each_refusal_says_why() {
        let p = check_str(r#"{"cmd":"logs","unit":"myapp.service","since":"10m","lines":50,"id":"x"}"#).unwrap();
        assert_eq!(
            p,
            Plan { unit: "myapp.service".into(), source: Source::Journal, since: Some(1_800_000_000 - 600), lines: 50 }
        );
        // Without a unit: the first allowed; without lines: the default.
        let p = check_str(r#"{"cmd":"logs","id":"x"}"#).unwrap();
        assert_eq!((p.unit.as_str(), p.lines, p.since), ("myapp.service", LINES_DEFAULT, None));
        let p = check_str(r#"{"cmd":"logs","unit":"modbus-bridge","since":"2027-01-15T06:00:00Z"}"#).unwrap();
        assert_eq!((p.source, p.since), (Source::Container, Some(1_800_000_000 - 2 * 3600)));
        // Now is not the future.
        assert!(check_str(r#"{"cmd":"logs","since":"2027-01-15T08:00:00Z"}"#).is_ok());
        for (req, says) in [
            (
                r#"{"cmd":"logs","unit":"sshd.service"}"#,
                "unit \"sshd.service\": not allowed (this gateway's [logs].units: myapp.service, modbus-bridge)",
            ),
            (r#"{"cmd":"logs","lines":1000000000}"#, "lines: 1000000000 is out of range (allowed: 1 to 5000)"),
            (r#"{"cmd":"logs","lines":0}"#, "lines: 0 is out of range (allowed: 1 to 5000)"),
            (r#"{"cmd":"logs","lines":-1}"#, "lines: -1 is out of range"),
            (r#"{"cmd":"logs","lines":1.5}"#, "lines: 1.5 is out of range"),
            (r#"{"cmd":"logs","lines":"many"}"#, "lines: must be a whole number"),
            (r#"{"cmd":"logs","since":"2099-01-01T00:00:00Z"}"#, "since: \"2099-01-01T00:00:00Z\" is in the future"),
            (r#"{"cmd":"logs","since":"yesterday-ish"}"#, "since: \"yesterday-ish\" is neither a duration"),
            (r#"{"cmd":"logs","since":"-10m"}"#, "is neither a duration"),
            (r#"{"cmd":"logs","since":"500years"}"#, "is out of range (at most"),
            (r#"{"cmd":"logs","since":5}"#, "since: must be a string"),
            (r#"{"cmd":"logs","unit":["a"]}"#, "unit: must be a string"),
            (r#"{"cmd":"logs","rm":"-rf"}"#, "unknown field \"rm\""),
            (r#"[1]"#, "a logs command is a JSON object"),
        ] {
            let e = check_str(req).unwrap_err();
            assert!(e.contains(says), "{req}: {e}");
        }
        let e = check(&json!({"cmd":"logs"}), &[], now()).unwrap_err();
        assert!(e.contains("[logs].units is empty"), "{e}");
    }

    #[test]
    fn the_answer_keeps_the_newest_lines_within_64_kib() {
        let mut w = Window::new(MAX_ANSWER - ENVELOPE);
        // 2,000 lines of 100 bytes, with characters JSON escapes six times.
        for i in 0..2000 {
            w.push(Line { ts: format!("t{i}"), text: format!("{i:04} {}", "\u{1}".repeat(95)) });
        }
        let (lines, truncated) = w.into_lines();
        assert!(truncated);
        assert_eq!(lines.last().unwrap().ts, "t1999");
        let first: usize = lines[0].ts[1..].parse().unwrap();
        assert_eq!(first + lines.len(), 2000, "a contiguous run of the newest");
        let a = answer(
            &"i".repeat(MAX_ID),
            Some(&"u".repeat(MAX_NAME)),
            Some(Source::Journal),
            Ok(Read { lines, truncated }),
        );
        assert!(a.len() <= MAX_ANSWER && a.len() > MAX_ANSWER - 2 * ENVELOPE, "{}", a.len());
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!((v["ok"].as_bool(), v["truncated"].as_bool()), (Some(true), Some(true)));
        // Few lines: all of them, not truncated.
        let mut w = Window::new(MAX_ANSWER - ENVELOPE);
        w.push(Line { ts: "t".into(), text: "x".into() });
        assert!(!w.into_lines().1);
        let r = refusal("id-1", &"é".repeat(5000));
        let v: Value = serde_json::from_slice(&r).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"].as_str().unwrap().chars().count(), 1000);
    }

    #[test]
    fn journal_and_container_lines() {
        let l = journal_line(r#"{"__REALTIME_TIMESTAMP":"1800000000123456","MESSAGE":"started","_CMDLINE":"secret"}"#)
            .unwrap();
        assert_eq!(l, Line { ts: "2027-01-15T08:00:00.123456Z".into(), text: "started".into() });
        let l = journal_line(r#"{"__REALTIME_TIMESTAMP":"x","MESSAGE":[104,105,255,10]}"#).unwrap();
        assert_eq!((l.ts.as_str(), l.text.as_str()), ("", "hi\u{FFFD}"));
        assert_eq!(journal_line(r#"{"MESSAGE":null}"#).unwrap().text, "");
        assert_eq!(journal_line(r#"{"__REALTIME_TIMESTAMP":"18000"#), None);
        let long = format!(r#"{{"MESSAGE":"{}"}}"#, "é".repeat(10_000));
        assert_eq!(journal_line(&long).unwrap().text.chars().count(), LINE_MAX);
        assert_eq!(
            container_line(b"2026-12-05T01:02:03.123456789Z hello world\n"),
            Line { ts: "2026-12-05T01:02:03.123456789Z".into(), text: "hello world".into() }
        );
        assert_eq!(container_line(b"no time here"), Line { ts: String::new(), text: "no time here".into() });
    }

    #[test]
    fn the_bucket_allows_a_burst_then_one_every_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        for _ in 0..BURST {
            assert!(b.take(t0).is_ok());
        }
        // A hundred more in the same second: none.
        for i in 0..100 {
            assert!(b.take(t0 + Duration::from_millis(i * 10)).is_err());
        }
        let wait = b.take(t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        assert!(b.take(t0 + REFILL).is_ok());
        assert!(b.take(t0 + REFILL + Duration::from_secs(1)).is_err());
        // Over a minute at most BURST + 6.
        let mut b = Bucket::new(t0);
        let granted = (0..600).filter(|i| b.take(t0 + Duration::from_millis(i * 100)).is_ok()).count();
        assert_eq!(granted, BURST as usize + 5, "in 60 s");
        // Idle for long: back to the burst, no more.
        let later = t0 + Duration::from_secs(3600);
        let granted = (0..10).filter(|_| b.take(later).is_ok()).count();
        assert_eq!(granted, BURST as usize);
    }
}
