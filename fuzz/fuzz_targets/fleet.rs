//! What `tend fleet status` and `fleet serve` read from the broker: any topic,
//! any payload. Input: a topic suffix, a NUL byte, the payload. The fleet
//! must take it without panicking, and what it prints must carry no control
//! character to a terminal and stay valid Prometheus text.
#![no_main]
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use tend::fleet::{metrics, model::Fleet, view};

fuzz_target!(|data: &[u8]| {
    let (topic, payload) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let topic = format!("tend/v1/{}", String::from_utf8_lossy(topic));
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut fleet = Fleet::new("tend/v1", Duration::from_secs(900));
    // The same message twice: a gateway's second message updates the first.
    fleet.ingest(&topic, payload, now);
    fleet.ingest(&topic, payload, now);
    fleet.ingest("tend/v1/acme/honest/status", br#"{"phase":"synced","revision":"abc","source":"ok"}"#, now);
    let text = view::report(fleet.devices.values(), true, now);
    for line in text.lines() {
        assert!(!line.chars().any(char::is_control), "control character in {line:?}");
    }
    let m = metrics::render(&fleet, true, metrics::DeviceMetrics::All);
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap_or("");
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        assert!(!line.contains('\n'));
    }
    let _ = serde_json::to_string(&fleet.devices.values().collect::<Vec<_>>()).unwrap();
});
