//! What arrives from outside the process at run time: MQTT command payloads
//! (anyone with publish rights on the command topic) and control socket lines.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let c = tend::report::mqtt::parse_command(data);
    if let Ok(kind) = &c.cmd {
        // An accepted command has a name to report it under.
        assert!(!kind.name().is_empty());
    }
    // A logs request is checked by the gateway whatever its fields; the
    // runtime's log stream is demultiplexed into lines no longer than asked.
    if let Ok(tend::report::mqtt::CommandKind::Logs(v)) = &c.cmd {
        let allowed = ["myapp.service".to_owned(), "app".to_owned()];
        if let Ok(plan) = tend::report::logs::check(v, &allowed, std::time::SystemTime::now()) {
            assert!(allowed.contains(&plan.unit));
        }
    }
    let mut demux = tend::reconcile::containers::Demux::new(64);
    let _ = demux.feed(data, &mut |line| assert!(line.len() <= 64));
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = tend::control::parse_request(line);
    }
});
