//! Maintenance windows (SPEC §7): `DAYS HH:MM-HH:MM`, days as `Mon-Fri`,
//! `Sat,Sun` or `Mon-Sun`. A window that crosses midnight belongs to the day
//! it starts on (`Fri 22:00-05:00` ends Saturday 05:00); `24:00` ends a day.
//! Times are civil times in the rollout's time zone.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// One window: the days it starts on, and its start and end (minutes after
/// midnight; the end may be 1440, or before the start when it crosses midnight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Monday = 0 … Sunday = 6.
    days: [bool; 7],
    start: u16,
    end: u16,
    text: String,
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn day(s: &str) -> Result<usize, String> {
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("{s:?} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
}

fn minutes(s: &str) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time HH:MM (00:00 to 24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    // Digits only: `parse` would take "+1" as 1.
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl Window {
    /// Parse `Mon-Fri 22:00-05:00`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Window, String> {
        let err = |why: String| format!("window {text:?}: {why}");
        let (days_part, times) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| err("expected DAYS HH:MM-HH:MM, e.g. \"Mon-Fri 22:00-05:00\"".into()))?;
        let mut days = [false; 7];
        for part in days_part.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day(a).map_err(err)?, day(b).map_err(err)?);
                    // Mon-Fri, or wrapping as in Fri-Mon.
                    let mut d = a;
                    loop {
                        days[d] = true;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => days[day(part).map_err(err)?] = true,
            }
        }
        let (a, b) = times.trim().split_once('-').ok_or_else(|| err("expected HH:MM-HH:MM".into()))?;
        let (start, end) = (minutes(a).map_err(err)?, minutes(b).map_err(err)?);
        if start == 1440 {
            return Err(err("a window cannot start at 24:00".into()));
        }
        if start == end {
            return Err(err("a window that starts when it ends is empty (00:00-24:00 is a whole day)".into()));
        }
        Ok(Window { days, start, end, text: text.trim().to_owned() })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The window's occurrence starting on `date`, if it starts on that day:
    /// [start, end) as civil date-times.
    fn on(&self, date: Date) -> Option<(DateTime, DateTime)> {
        if !self.days[date.weekday().to_monday_zero_offset() as usize] {
            return None;
        }
        let at = |d: Date, m: u16| -> DateTime {
            if m == 1440 {
                d.tomorrow().map_or(d.at(23, 59, 59, 0), |t| t.to_datetime(Time::midnight()))
            } else {
                d.at((m / 60) as i8, (m % 60) as i8, 0, 0)
            }
        };
        let start = at(date, self.start);
        let end = if self.end > self.start { at(date, self.end) } else { at(date.tomorrow().ok()?, self.end) };
        Some((start, end))
    }
}

/// Is `now` inside one of `windows` (in `tz`)? No windows: always.
pub fn open(windows: &[Window], tz: &TimeZone, now: Timestamp) -> bool {
    if windows.is_empty() {
        return true;
    }
    let local = now.to_zoned(tz.clone()).datetime();
    let today = local.date();
    let yesterday = today.yesterday().unwrap_or(today);
    windows.iter().any(|w| {
        [yesterday, today].into_iter().filter_map(|d| w.on(d)).any(|(start, end)| start <= local && local < end)
    })
}

/// When the next window opens after `now` (now itself if one is open); `None`
/// without windows.
pub fn next_open(windows: &[Window], tz: &TimeZone, now: Timestamp) -> Option<Timestamp> {
    if windows.is_empty() {
        return None;
    }
    if open(windows, tz, now) {
        return Some(now);
    }
    let local = now.to_zoned(tz.clone()).datetime();
    let today = local.date();
    let mut best: Option<DateTime> = None;
    for offset in 0..8i64 {
        let Ok(d) = today.checked_add(offset.days()) else { continue };
        for w in windows {
            if let Some((start, _)) = w.on(d)
                && start > local
                && best.is_none_or(|b| start < b)
            {
                best = Some(start);
            }
        }
    }
    best.and_then(|b| b.to_zoned(tz.clone()).ok()).map(|z| z.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    fn at(s: &str) -> Timestamp {
        // A Berlin civil time.
        let dt: DateTime = s.parse().unwrap();
        dt.to_zoned(berlin()).unwrap().timestamp()
    }

    #[test]
    fn windows_parse_and_refuse_with_reasons() {
        assert!(Window::parse("Mon-Fri 22:00-05:00").is_ok());
        assert!(Window::parse("Sat,Sun 00:00-24:00").is_ok());
        assert!(Window::parse("Fri-Mon 01:00-02:00").is_ok());
        for (bad, why) in [
            ("Mon-Fri", "expected DAYS HH:MM-HH:MM"),
            ("Mon-Fry 22:00-05:00", "\"Fry\" is not a day"),
            ("Mon 25:00-26:00", "\"25:00\" is not a time"),
            ("Mon 22:00-22:00", "empty"),
            ("Mon 24:00-05:00", "cannot start at 24:00"),
            ("Mon 9:00-10:00", "\"9:00\" is not a time"),
        ] {
            let e = Window::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.starts_with(&format!("window {bad:?}")), "{e}");
        }
    }

    #[test]
    fn a_window_crossing_midnight_belongs_to_the_day_it_starts() {
        let w = vec![Window::parse("Fri 22:00-05:00").unwrap()];
        let tz = berlin();
        // 2026-11-27 is a Friday.
        assert!(!open(&w, &tz, at("2026-11-27T21:59")));
        assert!(open(&w, &tz, at("2026-11-27T22:00")));
        assert!(open(&w, &tz, at("2026-11-28T04:59"))); // Saturday morning
        assert!(!open(&w, &tz, at("2026-11-28T05:00")));
        assert!(!open(&w, &tz, at("2026-11-29T02:00"))); // Sunday: Saturday does not start one
        assert_eq!(next_open(&w, &tz, at("2026-11-28T05:00")), Some(at("2026-12-04T22:00")));
        assert_eq!(next_open(&w, &tz, at("2026-11-27T12:00")), Some(at("2026-11-27T22:00")));
    }

    #[test]
    fn windows_follow_berlins_clock_across_both_dst_changes() {
        let utc = |s: &str| s.parse::<Timestamp>().unwrap();
        let w = vec![Window::parse("Sun 01:00-04:00").unwrap()];
        let tz = berlin();
        // 2026-03-29: 02:00 CET becomes 03:00 CEST; the window lasts 2 real hours.
        assert_eq!(next_open(&w, &tz, utc("2026-03-28T12:00:00Z")), Some(utc("2026-03-29T00:00:00Z")));
        assert!(!open(&w, &tz, utc("2026-03-28T23:59:00Z")));
        assert!(open(&w, &tz, utc("2026-03-29T00:30:00Z"))); // 01:30 CET
        assert!(open(&w, &tz, utc("2026-03-29T01:30:00Z"))); // 03:30 CEST
        assert!(!open(&w, &tz, utc("2026-03-29T02:00:00Z"))); // 04:00 CEST
        // 2026-10-25: 03:00 CEST becomes 02:00 CET; the window lasts 4 real
        // hours, the repeated hour inside it both times.
        assert_eq!(next_open(&w, &tz, utc("2026-10-24T12:00:00Z")), Some(utc("2026-10-24T23:00:00Z")));
        for inside in ["2026-10-24T23:00:00Z", "2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z", "2026-10-25T02:59:00Z"] {
            assert!(open(&w, &tz, utc(inside)), "{inside}");
        }
        assert!(!open(&w, &tz, utc("2026-10-25T03:00:00Z"))); // 04:00 CET
    }

    #[test]
    fn whole_days_and_no_windows() {
        let w = vec![Window::parse("Sat,Sun 00:00-24:00").unwrap()];
        let tz = berlin();
        assert!(open(&w, &tz, at("2026-11-28T00:00")));
        assert!(open(&w, &tz, at("2026-11-29T23:59")));
        assert!(!open(&w, &tz, at("2026-11-30T00:00")));
        assert_eq!(next_open(&w, &tz, at("2026-11-30T00:00")), Some(at("2026-12-05T00:00")));
        assert!(open(&[], &tz, at("2026-11-30T00:00")));
        assert_eq!(next_open(&[], &tz, at("2026-11-30T00:00")), None);
    }
}
