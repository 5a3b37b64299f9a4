//! Out-of-range numbers (SPEC §3, 8): every duration, count, percentage, time
//! and mode read from a bundle is range-checked when the bundle loads. For
//! each class: `tend validate` rejects the bundle naming the file, the key,
//! the value and the allowed range; a gateway with a good revision applied
//! refuses the commit with the same error (exit 1, one line), changes nothing
//! on disk, and is still running and healthy afterwards (no abort, no
//! `progressing` left behind). The same class in agent.toml exits 2 naming
//! the key.
//!
//! The first case is the one that aborted tend inside the health window on
//! every sync (`overflow when adding duration to instant`, exit 134).

use tend_e2e::{Fleet, Gateway, good_bundle};

const B: &str = "devices/gw-1";

/// A good revision applied; then `files` (path → content) written into the
/// bundle and committed: refused by `tend validate` and by the gateway, each
/// error containing every `expect`.
fn refused(files: &[(&str, &str)], expect: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::new(tmp.path(), &fleet.url(), "");
    good_bundle(&fleet);
    let good = fleet.commit("good");
    gw.sync_ok();
    for (rel, content) in files {
        fleet.write(&format!("{B}/{rel}"), content);
    }
    let bad = fleet.commit("out of range");

    let v = gw.tend(&["validate", &fleet.dir.join(B).display().to_string()]);
    assert_eq!(v.code, 1, "validate accepted it: {v:?}");
    for e in expect {
        assert!(v.stderr.contains(e), "validate's error does not contain {e:?}: {}", v.stderr);
    }

    let before = gw.snapshot();
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "the gateway did not refuse it: {r:?}");
    let line = r.stderr.trim();
    assert_eq!(line.lines().count(), 1, "expected one error line: {line}");
    for e in expect {
        assert!(line.contains(e), "the gateway's error does not contain {e:?}: {line}");
    }
    assert_eq!(gw.snapshot(), before, "files changed although the bundle was refused");
    let status = gw.tend(&["status", "--json"]).json();
    assert_eq!(status["phase"], "failed", "{status}");
    assert_eq!(status["revision"], good, "{status}");
    assert_eq!(status["target_revision"], bad, "{status}");
    // And the next sync says the same, without crashing.
    let again = gw.tend(&["sync"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("quarantined"), "{again:?}");
}

fn tend_toml(extra: &str) -> String {
    format!("[[file]]\npath = \"/etc/myapp/app.conf\"\nmode = \"0640\"\n{extra}")
}

#[test]
fn a_check_interval_of_2_64_seconds() {
    let t = tend_toml("[[check]]\nname = \"api\"\ncommand = [\"true\"]\ninterval = \"18446744073709551615s\"\n");
    refused(
        &[("tend.toml", &t)],
        &[
            "devices/gw-1/tend.toml",
            "[[check]] api: interval",
            "\"18446744073709551615s\" is out of range",
            "allowed: 100ms to 1h",
        ],
    );
}

#[test]
fn a_zero_check_interval() {
    let t = tend_toml("[[check]]\nname = \"api\"\ncommand = [\"true\"]\ninterval = \"0s\"\n");
    refused(&[("tend.toml", &t)], &["devices/gw-1/tend.toml", "[[check]] api: interval: \"0s\" is out of range"]);
}

#[test]
fn a_check_interval_past_u64_seconds() {
    let t = tend_toml("[[check]]\nname = \"api\"\ncommand = [\"true\"]\ninterval = \"99999999999999999999999s\"\n");
    refused(&[("tend.toml", &t)], &["devices/gw-1/tend.toml", "[[check]] api: interval", "is not a duration"]);
}

#[test]
fn a_wave_percent_past_its_type() {
    let t = tend_toml("[rollout]\nwaves = [{ name = \"canary\", percent = 300 }, { name = \"all\", percent = 100 }]\n");
    refused(
        &[("tend.toml", &t)],
        &[
            "devices/gw-1/tend.toml",
            "[rollout].waves[0] (\"canary\"): percent: 300 is out of range (allowed: 0 to 100)",
        ],
    );
}

#[test]
fn a_negative_wave_percent() {
    let t = tend_toml("[rollout]\nwaves = [{ name = \"canary\", percent = -1 }, { name = \"all\", percent = 100 }]\n");
    refused(&[("tend.toml", &t)], &["[rollout].waves[0] (\"canary\"): percent: -1 is out of range"]);
}

#[test]
fn a_wave_after_of_2_64_seconds() {
    let t = tend_toml("[rollout]\nwaves = [{ name = \"all\", percent = 100, after = \"18446744073709551615s\" }]\n");
    refused(&[("tend.toml", &t)], &["[rollout].waves[0] (\"all\"): after: \"18446744073709551615s\" is out of range"]);
}

#[test]
fn a_max_failed_past_its_type() {
    let t = tend_toml("[rollout]\nmax_failed = 9223372036854775807\n");
    refused(
        &[("tend.toml", &t)],
        &["[rollout].max_failed: 9223372036854775807 is out of range (allowed: 1 to 1000000)"],
    );
}

#[test]
fn an_impossible_window_time() {
    let t = tend_toml("[rollout]\nwindows = [\"Mon-Fri 25:00-26:00\"]\n");
    refused(&[("tend.toml", &t)], &["[rollout].windows", "\"25:00\" is not a time HH:MM (00:00 to 24:00)"]);
}

#[test]
fn a_window_time_with_a_sign() {
    let t = tend_toml("[rollout]\nwindows = [\"Mon +1:00-05:00\"]\n");
    refused(&[("tend.toml", &t)], &["[rollout].windows", "\"+1:00\" is not a time"]);
}

#[test]
fn an_impossible_time_zone() {
    let t = tend_toml("[rollout]\ntimezone = \"Europe/Atlantis\"\n");
    refused(&[("tend.toml", &t)], &["[rollout].timezone: \"Europe/Atlantis\" is not a time zone"]);
}

#[test]
fn a_file_mode_past_0o7777() {
    let t = "[[file]]\npath = \"/etc/myapp/app.conf\"\nmode = \"077777\"\n";
    refused(&[("tend.toml", t)], &["[[file]] /etc/myapp/app.conf: mode \"077777\"", "from \"0000\" to \"0777\""]);
}

#[test]
fn a_container_health_interval_of_2_64_seconds() {
    let c = "image = \"localhost/x:1\"\n[health]\ncommand = [\"true\"]\ninterval = \"18446744073709551615s\"\n";
    refused(
        &[("containers/app.toml", c)],
        &["devices/gw-1/containers/app.toml", "[health].interval", "is out of range (allowed: 1s to 1h)"],
    );
}

#[test]
fn a_container_health_retries_past_its_type() {
    let c = "image = \"localhost/x:1\"\n[health]\ncommand = [\"true\"]\nretries = 4294967296\n";
    refused(&[("containers/app.toml", c)], &["devices/gw-1/containers/app.toml", "retries"]);
}

/// agent.toml: each class exits 2 naming the file and the key, and nothing
/// runs (the daemon included: a zero health interval aborted `tend run`).
#[test]
fn agent_toml_out_of_range_exits_2_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    good_bundle(&fleet);
    fleet.commit("good");
    for (extra, key) in [
        (
            "[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\nhealth_interval = \"0s\"\n",
            "[mqtt].health_interval: \"0s\" is out of range",
        ),
        ("[apply]\nhealth_timeout = \"18446744073709551615s\"\n", "[apply].health_timeout"),
        ("[apply]\ncrash_limit = 0\n", "[apply].crash_limit: 0 is out of range (allowed: 1 to 100)"),
        ("[apply]\nhistory = 100000000000\n", "[apply].history: 100000000000 is out of range"),
        ("[k3s]\ntimeout = \"0s\"\n", "[k3s].timeout"),
    ] {
        let gw = Gateway::new(tmp.path(), &fleet.url(), extra);
        for args in [&["sync"][..], &["run"][..]] {
            let r = gw.tend(args);
            assert_eq!(r.code, 2, "{args:?} with {extra:?}: {r:?}");
            assert!(r.stderr.contains(&gw.config.display().to_string()), "{r:?}");
            assert!(r.stderr.contains(key), "{key:?} not in {:?}", r.stderr);
        }
        assert!(!gw.state.exists(), "the state directory was created");
    }
    let gw = Gateway::with_source_keys(tmp.path(), &fleet.url(), "interval = \"soon\"", "");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("[source].interval: invalid duration \"soon\""), "{r:?}");
}
