//! The command line as a contract: `validate` for a fleet repository's CI,
//! configuration errors (exit 2, naming file and key), `--help`, `--version`,
//! JSON logs, and a clear error when the store is in use.

use std::process::{Command, Stdio};

use tend_e2e::{Fleet, Gateway, tend_bin};

fn tend(args: &[&str]) -> tend_e2e::Run {
    Command::new(tend_bin()).args(args).env_remove("TEND_CONFIG").output().unwrap().into()
}

#[test]
fn validate_accepts_a_good_bundle_and_rejects_a_broken_one() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    fleet
        .write("base/files/etc/myapp/common.conf", "x\n")
        .write(
            "devices/gw-7/tend.toml",
            "include = [\"../../base\"]\n[[file]]\npath = \"/etc/myapp/id\"\ntemplate = true\n",
        )
        .write("devices/gw-7/files/etc/myapp/id", "{{ device_id }} {{ labels.site }}\n");
    fleet.commit("good");
    let dir = fleet.dir.join("devices/gw-7");
    let dir = dir.to_str().unwrap();

    let ok = tend(&["validate", dir, "--label", "site=berlin"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.starts_with("ok: devices/gw-7: 2 files"), "{}", ok.stdout);
    let j = tend(&["validate", dir, "--label", "site=berlin", "--json"]).json();
    assert_eq!(j["ok"], true);
    assert_eq!(j["bundles"], serde_json::json!(["base", "devices/gw-7"]));

    // A label the template needs is missing: rejected, naming the file.
    let r = tend(&["validate", dir]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("devices/gw-7/files/etc/myapp/id") && r.stderr.contains("labels.site"), "{}", r.stderr);

    // A broken manifest: exit 1, naming it.
    fleet.write("devices/gw-7/tend.toml", "include = [\"../../nowhere\"\n");
    let r = tend(&["validate", dir, "--label", "site=x"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("devices/gw-7/tend.toml"), "{}", r.stderr);
    let j = tend(&["validate", dir, "--json"]);
    assert_eq!(j.code, 1);
    assert_eq!(j.json()["file"], "devices/gw-7/tend.toml");

    // --allow checks destinations the way the gateway's config would.
    fleet.write("devices/gw-7/tend.toml", "");
    let r = tend(&["validate", dir, "--label", "site=x", "--allow", "/opt/other"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("outside [files].allow"), "{}", r.stderr);

    // Not a directory: bad usage.
    assert_eq!(tend(&["validate", "/nonexistent/dir"]).code, 2);
}

#[test]
fn validate_checks_the_rollout_policy_and_the_including_bundle_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    fleet
        .write(
            "base/tend.toml",
            "[rollout]\nwaves = [{ name = \"canary\", percent = 10 }, { name = \"all\", percent = 100, after = \"2h\" }]\nmax_failed = 3\nwindows = [\"Mon-Fri 22:00-05:00\"]\ntimezone = \"Europe/Berlin\"\n",
        )
        .write("base/files/etc/myapp/common.conf", "x\n")
        .write("devices/gw-7/tend.toml", "include = [\"../../base\"]\n[rollout]\nwindows = [\"Sat,Sun 00:00-24:00\"]\n");
    fleet.commit("rollout");
    let dir = fleet.dir.join("devices/gw-7");
    let dir = dir.to_str().unwrap();
    let ok = tend(&["validate", dir]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(!ok.stderr.contains("warning"), "{}", ok.stderr);
    // A broken window in the base rejects the bundle, naming the base's tend.toml.
    fleet.write("devices/gw-7/tend.toml", "include = [\"../../base\"]\n");
    fleet.write(
        "base/tend.toml",
        "[rollout]\nwaves = [{ name = \"all\", percent = 90 }]\nwindows = [\"Mon-Fri 22:00\"]\n",
    );
    let r = tend(&["validate", dir]);
    assert_eq!(r.code, 1, "{r:?}");
    for want in ["base/tend.toml: [rollout].windows: window \"Mon-Fri 22:00\"", "the last wave must be 100 percent"] {
        assert!(r.stderr.contains(want), "{want:?} not in {}", r.stderr);
    }
}

#[test]
fn bad_config_exits_2_naming_file_and_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(&cfg, "device_id = \"gw-1\"\n[source]\nurl = \"file:///x\"\ninterval = \"often\"\n[files]\nallow = [\"relative\"]\nbogus = 1\n").unwrap();
    let r = tend(&["--config", cfg.to_str().unwrap(), "sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains(&cfg.display().to_string()), "{}", r.stderr);
    assert!(r.stderr.contains("[source].interval: invalid duration \"often\""), "{}", r.stderr);
    assert!(r.stderr.contains("[files].bogus: unknown field `bogus`"), "{}", r.stderr);

    let r =
        Command::new(tend_bin()).env("TEND_CONFIG", tmp.path().join("missing.toml")).arg("status").output().unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("missing.toml: cannot read"));
}

#[test]
fn usage_errors_exit_2_and_help_is_complete() {
    assert_eq!(tend(&["sync", "--no-such-flag"]).code, 2);
    assert_eq!(tend(&["no-such-command"]).code, 2);
    let help = tend(&["--help"]);
    assert_eq!(help.code, 0);
    for cmd in ["sync", "status", "history", "validate"] {
        assert!(help.stdout.contains(cmd), "--help lacks {cmd}: {}", help.stdout);
    }
    assert!(help.stdout.contains("Exit codes"), "{}", help.stdout);
    let sync_help = tend(&["sync", "--help"]);
    assert!(sync_help.stdout.contains("--dry-run"));
    let v = tend(&["--version"]);
    assert_eq!(v.code, 0);
    let commit = tend_e2e::head_commit();
    assert_eq!(
        v.stdout.trim(),
        format!(
            "tend {} (commit {}, operator build: with the fleet view and the operator's fleet tools)",
            env!("CARGO_PKG_VERSION"),
            commit
        ),
        "{}",
        v.stdout
    );
}

#[test]
fn json_logs_and_status_before_any_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    tend_e2e::good_bundle(&fleet);
    fleet.commit("c1");
    let gw = Gateway::new(tmp.path(), &fleet.url(), "");
    let s = gw.tend(&["status", "--json"]).json();
    assert_eq!(s["phase"], "progressing");
    assert_eq!(s["revision"], serde_json::Value::Null);
    for key in [
        "device_id",
        "fleet",
        "agent_version",
        "phase",
        "revision",
        "target_revision",
        "last_good_revision",
        "source",
        "last_sync",
        "error",
        "resources",
    ] {
        assert!(s.get(key).is_some(), "status lacks {key}: {s}");
    }
    let r = gw.tend(&["--log-format", "json", "-vv", "sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<serde_json::Value> =
        r.stderr.lines().map(|l| serde_json::from_str(l).expect("each log line is JSON")).collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("create"))),
        "{}",
        r.stderr
    );
    let s = gw.tend(&["status", "--json"]).json();
    assert_eq!(s["phase"], "synced");
    assert_eq!(s["resources"], serde_json::json!({"total": 2, "ready": 2, "failed": 0}));
    let human = gw.tend(&["status"]);
    assert!(human.stdout.contains("phase       synced"), "{}", human.stdout);
}

#[test]
fn a_store_in_use_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    // A hook that blocks keeps the first sync (and its store lock) alive.
    let gate = tmp.path().join("gate");
    fleet
        .write("devices/gw-1/tend.toml", format!("[[file]]\npath = \"/etc/myapp/a\"\non_change = [\"sh\", \"-c\", \"while [ ! -e {} ]; do sleep 0.05; done\"]\n", gate.display()))
        .write("devices/gw-1/files/etc/myapp/a", "a\n");
    fleet.commit("c1");
    let gw = Gateway::new(tmp.path(), &fleet.url(), "allow_hooks = true");
    let mut first = gw.command().arg("sync").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = std::time::Instant::now();
    while !gw.path("/etc/myapp/a").exists() {
        assert!(start.elapsed().as_secs() < 20, "first sync never wrote its file");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let r = gw.tend(&["status"]);
    std::fs::write(&gate, "").unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(0));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("in use by another tend process"), "{}", r.stderr);
}
