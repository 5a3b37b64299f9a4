//! The agent config (`agent.toml`): any bytes give a config or a ConfigError,
//! never a panic, and an accepted config's trust boundary is sound.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = tend::config::Config::from_str(text, std::path::Path::new("/fuzz/agent.toml")) {
        assert!(cfg.files.root.is_absolute());
        assert!(cfg.state_dir.is_absolute());
        for a in &cfg.files.allow {
            assert!(a.is_absolute() && !a.components().any(|c| c == std::path::Component::ParentDir));
        }
        assert!(!cfg.mqtt.topic_prefix.contains(['#', '+']));
    }
});
