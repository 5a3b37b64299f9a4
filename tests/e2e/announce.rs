//! Issue 16: announced commits on real gateways — an idle fleet polling every
//! hour makes no Git request, a push announced with `tend fleet announce`
//! reaches all 20 gateways in seconds, forged announcements apply nothing and
//! cost at most the rate-limited fetches, and a fleet-wide sync command is
//! spread over `[source].announce_spread`. Requests are counted in a real
//! `git daemon`'s `--verbose` log.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tend_e2e::{Fleet, Gateway, GitDaemon, Mosquitto, tend_bin};

/// The bundle every gateway shares.
fn shared(fleet: &Fleet, v: &str) -> String {
    fleet.write("shared/files/etc/myapp/app.conf", format!("version = {v}\n"));
    fleet.commit(v)
}

/// A gateway `dev` following the git daemon's `fleet` repository, polling
/// once an hour, reporting to `broker`.
fn gateway(tmp: &std::path::Path, dev: &str, git: &GitDaemon, broker: &Mosquitto, spread: &str) -> Gateway {
    let gw = Gateway::new(
        &tmp.join(dev),
        &git.url("fleet"),
        &format!("[mqtt]\nurl = \"{}\"\nhealth_interval = \"1h\"\n", broker.url()),
    );
    let text = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace("device_id = \"gw-1\"", &format!("device_id = \"{dev}\""))
        .replace(
            "path = \"devices/{device_id}\"",
            &format!("path = \"shared\"\ninterval = \"1h\"\njitter = \"0s\"\nannounce_spread = \"{spread}\""),
        );
    std::fs::write(&gw.config, text).unwrap();
    gw
}

fn fleet_cmd(broker: &Mosquitto, args: &[&str]) -> String {
    let out = Command::new(tend_bin()).arg("fleet").args(args).args(["--mqtt", &broker.url()]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tend fleet {args:?}: {stdout}{stderr}");
    stdout.into_owned()
}

/// No Git request from the fleet for `for_`, and every daemon still answers
/// (a stuck daemon makes no request either). Nothing marks a poll that did
/// not happen, so this one waits out a time: too short a time on a loaded
/// machine can only let a stray request go unseen, never fail the test.
fn idle(git: &GitDaemon, gateways: &[Gateway], what: &str, for_: Duration) {
    let before = git.connections();
    std::thread::sleep(for_);
    assert_eq!(git.connections(), before, "{what}: an idle fleet made Git requests");
    for gw in gateways {
        let r = gw.tend(&["status", "--json"]);
        assert_eq!(r.code, 0, "{what}: a daemon does not answer: {r:?}");
    }
}

/// A `Debug` duration as tracing prints it (`1.5s`, `834.2ms`, `12µs`, `0ns`).
fn debug_duration(text: &str) -> Duration {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or_else(|| panic!("{text}"));
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("{text}"));
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" => 1e-6,
        "ns" => 1e-9,
        _ => panic!("{text}"),
    };
    Duration::from_secs_f64(n * scale)
}

/// The time at the start of a log line.
fn log_time(line: &str) -> jiff::Timestamp {
    line.split_whitespace().next().unwrap().parse().unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn an_announced_push_reaches_twenty_idle_gateways_and_an_idle_fleet_makes_no_git_request() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let git = GitDaemon::start_logged(tmp.path(), &tmp.path().join("git-daemon.log"));
    let mut broker = Mosquitto::start();
    let v1 = shared(&fleet, "1");
    let devices: Vec<String> = (0..20).map(|i| format!("gw-{i:02}")).collect();
    let gateways: Vec<Gateway> = devices.iter().map(|d| gateway(tmp.path(), d, &git, &broker, "3s")).collect();
    let daemons: Vec<_> = gateways.iter().map(Gateway::start_daemon).collect();
    for gw in &gateways {
        gw.wait_status("v1", Duration::from_secs(60), |s| s["phase"] == "synced" && s["revision"] == v1.as_str());
    }
    let events = tend_e2e::Subscription::start(&broker, "tend/v1/test/+/events", "announce-events");
    idle(&git, &gateways, "after the first sync", Duration::from_secs(4));

    // A push is not seen (the interval is an hour) until it is announced.
    let v2 = shared(&fleet, "2");
    idle(&git, &gateways, "after an unannounced push", Duration::from_secs(3));
    for gw in &gateways {
        let s = gw.tend(&["status", "--json"]).json();
        assert!(s["revision"] == v1.as_str() && s["target_revision"] != v2.as_str(), "saw the push: {s}");
    }
    let before = git.connections();
    let out = fleet_cmd(&broker, &["announce", "--fleet", "test", "--branch", "main", &v2]);
    assert!(out.contains("tend/v1/test/_source/main"), "{out}");
    for gw in &gateways {
        gw.wait_status("v2 announced", Duration::from_secs(30), |s| s["revision"] == v2.as_str());
    }
    // One fetch per gateway, no more.
    assert_eq!(git.connections() - before, 20, "fetches for one announcement");
    for gw in &gateways {
        assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 2\n");
    }
    // The retained announcement read again at a reconnect costs nothing:
    // every gateway already has it. The broker restarts (its persistence
    // keeps the announcement); each gateway reconnects and reads it again.
    let read_again = |log: &str| {
        log.matches("mqtt: connected").count() >= 2
            && log.lines().filter(|l| l.contains("mqtt: commit announced") && l.contains(&v2[..12])).count() >= 2
    };
    assert!(daemons.iter().all(|d| !read_again(&d.log_text())), "a reconnect before the broker restarted");
    let before = git.connections();
    broker.stop();
    broker.restart();
    for d in &daemons {
        d.wait_log("a reconnect that reads the announcement again", Duration::from_secs(60), read_again);
    }
    // A gateway that acted on it would fetch within announce_spread (3 s,
    // the rate limit has tokens left): wait that long, from the last read.
    idle(&git, &gateways, "after the announcement was read again", Duration::from_secs(3));
    assert_eq!(git.connections(), before, "the announcement read again cost a fetch");

    // A fleet-wide sync command: every gateway answers, at random points
    // within the 3 s spread rather than in the same instant.
    let v3 = shared(&fleet, "3");
    fleet_cmd(&broker, &["sync", "--fleet", "test", "--all"]);
    let lines = events.wait("20 answers", Duration::from_secs(30), |l| {
        tend_e2e::payloads(l).iter().filter(|e| e["kind"] == "command").count() == 20
    });
    let answers: Vec<_> = tend_e2e::payloads(&lines).into_iter().filter(|e| e["kind"] == "command").collect();
    assert!(answers.iter().all(|e| e["ok"] == true && e["revision"] == v3.as_str()), "{answers:?}");
    // Each daemon drew its own delay within the spread (its debug log says
    // which), and waited it before its sync started.
    let mut delays = Vec::new();
    for d in &daemons {
        let log = d.log_text();
        let received = log.lines().find(|l| l.contains("fleet-wide sync command")).expect("the command received");
        let starts = log.lines().find(|l| l.contains("fleet-wide sync starts")).expect("a fleet-wide sync");
        let delay = debug_duration(
            received.split("starts_in=").nth(1).and_then(|r| r.split_whitespace().next()).expect(received),
        );
        assert!(delay < Duration::from_secs(3), "a delay of {delay:?}, past announce_spread: {received}");
        // (Log times are to the microsecond.)
        let waited = log_time(starts).duration_since(log_time(received)).as_secs_f64();
        assert!(
            waited + 1e-3 >= delay.as_secs_f64(),
            "the sync started {waited:.6} s after the command, before its delay of {delay:?}:\n{received}\n{starts}"
        );
        delays.push(delay.as_secs_f64());
    }
    delays.sort_by(f64::total_cmp);
    // 20 independent draws within 3 s all fall within 1 s of each other with a
    // probability of about 2e-8: a narrower range means they are not spread.
    let range = delays[19] - delays[0];
    assert!(range >= 1.0, "20 delays within {range:.3} s: not spread over announce_spread: {delays:?}");
    drop(daemons);
}

#[test]
fn forged_announcements_apply_nothing_and_cost_at_most_the_rate_limited_fetches() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let git = GitDaemon::start_logged(tmp.path(), &tmp.path().join("git-daemon.log"));
    let broker = Mosquitto::start();
    let v1 = shared(&fleet, "1");
    let gw = gateway(tmp.path(), "gw-00", &git, &broker, "0s");
    let daemon = gw.start_daemon();
    gw.wait_status("v1", Duration::from_secs(30), |s| s["phase"] == "synced" && s["revision"] == v1.as_str());
    daemon.wait_log("mqtt connected", Duration::from_secs(10), |l| l.contains("mqtt: connected"));
    std::thread::sleep(Duration::from_millis(500));
    let before = git.connections();

    // 300 announcements of commits that do not exist, and garbage, as fast
    // as a client can publish them (a broker coalesces nothing)...
    let mut flood = String::new();
    for i in 0..300 {
        let line = match i % 3 {
            0 => format!("{{\"revision\":\"{:040x}\",\"ts\":\"x\"}}", fastrand::u128(..)),
            1 => "{\"revision\":\"main\"}".to_owned(),
            _ => "not json".to_owned(),
        };
        flood.push_str(&line);
        flood.push('\n');
    }
    let started = std::time::Instant::now();
    let mut publisher = Command::new("mosquitto_pub")
        .args(broker.client_args())
        .args(["-q", "1", "-t", "tend/v1/test/_source/main", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    publisher.stdin.take().unwrap().write_all(flood.as_bytes()).unwrap();
    assert!(publisher.wait().unwrap().success());
    // ...then one every 150 ms for 4.5 s, each new to the gateway (without
    // the rate limit, each would be a fetch).
    let mut last = String::new();
    for _ in 0..30 {
        last = format!("{:040x}", fastrand::u128(..));
        broker.publish("tend/v1/test/_source/main", &format!("{{\"revision\":\"{last}\"}}"));
        std::thread::sleep(Duration::from_millis(150));
    }
    // The gateway has read them all (QoS 1, in order) once it logs the last.
    daemon.wait_log("the last announcement read", Duration::from_secs(30), |l| {
        l.lines().any(|l| l.contains("mqtt: commit announced") && l.contains(&last[..12]))
    });
    let fetches = git.connections() - before;
    // The bucket: 3 at once, then one per 20 s.
    let allowed = 3 + (started.elapsed().as_secs() / 20) as usize;
    assert!(fetches >= 1 && fetches <= allowed, "{fetches} fetches for a flood (at most {allowed})");
    let s = gw.tend(&["status", "--json"]).json();
    assert_eq!((s["phase"].as_str(), s["revision"].as_str()), (Some("synced"), Some(v1.as_str())), "{s}");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 1\n");
    // The garbage was said, not at every message.
    let log = daemon.log_text();
    let warned = log.matches("announcement ignored").count();
    assert!((1..=10).contains(&warned), "{warned} warnings for 200 bad announcements");

    // A real announcement after the flood still lands, once the bucket has a
    // token again.
    let v2 = shared(&fleet, "2");
    fleet_cmd(&broker, &["announce", "--fleet", "test", &v2]);
    gw.wait_status("v2 after the flood", Duration::from_secs(45), |s| s["revision"] == v2.as_str());
    drop(daemon);
}

#[test]
fn announce_refuses_what_is_not_a_commit_id() {
    let broker = Mosquitto::start();
    for (args, why) in [
        (vec!["announce", "main"], "not a full commit id"),
        (vec!["announce", "0123abc"], "not a full commit id"),
        (vec!["announce", "--branch", "a+b", "0123456789abcdef0123456789abcdef01234567"], "cannot be an MQTT topic"),
    ] {
        let out = Command::new(tend_bin()).arg("fleet").args(&args).args(["--mqtt", &broker.url()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    // Nothing was published.
    assert_eq!(broker.read_one("tend/v1/+/_source/#", &[], 1), None);
}

/// The shell steps of an example CI file: GitHub Actions' `run:` steps of
/// `job` but "Install tend", or GitLab CI's `script:` of `job`.
fn ci_steps(file: &str, job: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ci").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let doc = &yaml_rust2::YamlLoader::load_from_str(&text).unwrap()[0];
    let steps: Vec<String> = if file.starts_with("github") {
        doc["jobs"][job]["steps"]
            .as_vec()
            .unwrap()
            .iter()
            .filter(|s| s["name"].as_str() != Some("Install tend"))
            .filter_map(|s| s["run"].as_str().map(str::to_owned))
            .collect()
    } else {
        doc[job]["script"].as_vec().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
    };
    assert!(!steps.is_empty(), "{file}: no steps in job {job}");
    steps
}

/// Run `steps` as the CI would (bash, errexit), in `dir`, with tend on PATH.
fn run_steps(steps: &[String], dir: &std::path::Path, env: &[(&str, String)]) -> (bool, String) {
    let bin = tend_bin().parent().unwrap().to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut out = String::new();
    for step in steps {
        let o = Command::new("bash")
            .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", step])
            .current_dir(dir)
            .env("PATH", &path)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        out.push_str(&String::from_utf8_lossy(&o.stdout));
        out.push_str(&String::from_utf8_lossy(&o.stderr));
        if !o.status.success() {
            return (false, out);
        }
    }
    (true, out)
}

#[test]
fn the_example_ci_files_validate_every_bundle_and_announce_the_push() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", example.display()))
            .arg(&fleet.dir)
            .status()
            .unwrap()
            .success()
    );
    let head = fleet.commit("the example fleet");
    for (file, sha_var, branch_var) in [
        ("github-actions.yml", "GITHUB_SHA", "GITHUB_REF_NAME"),
        ("gitlab-ci.yml", "CI_COMMIT_SHA", "CI_COMMIT_BRANCH"),
    ] {
        let env = [
            ("TEND_FLEET", "test".to_owned()),
            ("TEND_MQTT_URL", broker.url()),
            ("TEND_MQTT_USERNAME", "ci".to_owned()),
            ("TEND_MQTT_PASSWORD", "not-checked-by-this-broker".to_owned()),
            ("RUNNER_TEMP", tmp.path().display().to_string()),
            (sha_var, head.clone()),
            (branch_var, "main".to_owned()),
        ];
        // The pull request's check: the example's bundles pass...
        let (ok, out) = run_steps(&ci_steps(file, "validate"), &fleet.dir, &env);
        assert!(ok, "{file}: validate failed:\n{out}");
        assert!(out.contains("== gw-demo-01"), "{file}: {out}");
        // ...and a broken one fails the job, naming the file.
        let conf = fleet.dir.join("devices/gw-demo-01/tend.toml");
        let good = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, format!("{good}\nnonsense = [\n")).unwrap();
        let (ok, out) = run_steps(&ci_steps(file, "validate"), &fleet.dir, &env);
        assert!(!ok && out.contains("tend.toml"), "{file}: a broken bundle passed:\n{out}");
        std::fs::write(&conf, good).unwrap();

        // After the push: the announcement, retained on the branch's topic.
        broker.publish_retained_clear("tend/v1/test/_source/main");
        let (ok, out) = run_steps(&ci_steps(file, "announce"), &fleet.dir, &env);
        assert!(ok, "{file}: announce failed:\n{out}");
        let msg = broker.read_one("tend/v1/test/_source/main", &[], 3).expect("a retained announcement");
        let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
        assert_eq!(v["revision"], head.as_str(), "{file}: {msg}");
    }
}
