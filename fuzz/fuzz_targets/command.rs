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
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = tend::control::parse_request(line);
    }
});
