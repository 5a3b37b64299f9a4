//! Issue 26, logs on demand (SPEC §4 `logs`, §5 `tend fleet logs`): a real
//! daemon and a real Mosquitto; the journal through a stand-in `journalctl`
//! first on the daemon's PATH (it records every run: what the rate limit
//! costs is counted there), a container's log through a real Podman. The
//! journal of a real systemd is read in `unit.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tend_e2e::monitor::{Browser, FleetServe};
use tend_e2e::{Daemon, Fleet, Gateway, Mosquitto, Podman, Run, Subscription, TEST_IMAGE, good_bundle, payloads};

const T: &str = "tend/v1/test/gw-1";

/// A `journalctl` that appends its arguments to `calls` and prints two
/// entries newest first (as `--reverse` asks), one with a field that must
/// never reach an answer.
fn fake_journalctl(dir: &Path) -> (PathBuf, PathBuf) {
    fake_journalctl_saying(dir, "second line")
}

fn fake_journalctl_saying(dir: &Path, newest: &str) -> (PathBuf, PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.join("journalctl-calls");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> {calls}\n\
         echo '{{\"__REALTIME_TIMESTAMP\":\"1800000001000000\",\"MESSAGE\":\"{newest}\",\"_CMDLINE\":\"myapp --password hunter2\"}}'\n\
         echo '{{\"__REALTIME_TIMESTAMP\":\"1800000000000000\",\"MESSAGE\":\"first line\\u001b[31m\"}}'\n",
        calls = calls.display()
    );
    std::fs::write(bin.join("journalctl"), script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("journalctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    (bin, calls)
}

fn calls(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn setup(tmp: &Path, broker: &Mosquitto, extra: &str) -> Gateway {
    let fleet = Fleet::new(tmp, "fleet");
    good_bundle(&fleet);
    fleet.commit("one");
    let gw = Gateway::new(
        tmp,
        &fleet.url(),
        &format!("[mqtt]\nurl = \"{}\"\nhealth_interval = \"1s\"\n{extra}", broker.url()),
    );
    let text = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace("timeout = \"10s\"", "timeout = \"10s\"\ninterval = \"1h\"");
    std::fs::write(&gw.config, text).unwrap();
    gw
}

fn start(gw: &Gateway, bin: Option<&Path>) -> Daemon {
    let path = match bin {
        Some(b) => format!("{}:{}", b.display(), std::env::var("PATH").unwrap_or_default()),
        None => std::env::var("PATH").unwrap_or_default(),
    };
    let d = gw.start_daemon_env("debug", &[("PATH", std::ffi::OsStr::new(&path))]);
    gw.wait_status("the first sync", Duration::from_secs(30), |s| s["phase"] == "synced");
    d
}

fn fleet_logs(gw: &Gateway, broker: &Mosquitto, args: &[&str]) -> Run {
    let url = broker.url();
    let mut all = vec!["fleet", "logs", "--mqtt", url.as_str(), "--fleet", "test", "--timeout", "15s", "gw-1"];
    all.extend_from_slice(args);
    gw.tend(&all)
}

/// The answers on `…/logs/+` so far, by id.
fn answers(sub: &Subscription) -> Vec<Value> {
    payloads(&sub.lines())
}

fn answer(sub: &Subscription, id: &str) -> Value {
    let got = sub
        .wait(&format!("the answer to {id}"), Duration::from_secs(15), |l| payloads(l).iter().any(|a| a["id"] == id));
    payloads(&got).into_iter().find(|a| a["id"] == id).unwrap()
}

#[test]
fn journal_lines_of_an_allowed_unit_and_every_other_request_refused_in_its_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let (bin, calls_file) = fake_journalctl(tmp.path());
    let gw = setup(tmp.path(), &broker, "[logs]\nunits = [\"myapp.service\"]\n");
    let daemon = start(&gw, Some(&bin));
    let sub = Subscription::start(&broker, &format!("{T}/logs/+"), "logs-answers");
    let events = Subscription::start(&broker, &format!("{T}/events"), "logs-events");

    // The CLI: lines in time order, control characters never printed.
    let r = fleet_logs(&gw, &broker, &["--unit", "myapp.service", "--since", "10m", "--lines", "50"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "2027-01-15T08:00:00Z first line\u{FFFD}[31m\n2027-01-15T08:00:01Z second line\n", "{r:?}");
    let c = calls(&calls_file);
    assert_eq!(c.len(), 1, "{c:?}");
    for arg in ["--output=json", "--unit=myapp.service", "--lines=50", "--reverse", "--since=@"] {
        assert!(c[0].contains(arg), "journalctl {arg} missing: {}", c[0]);
    }
    // --json: the gateway's answer, with the time and text only.
    let r = fleet_logs(&gw, &broker, &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let a = r.json();
    assert_eq!(
        (a["ok"].as_bool(), a["unit"].as_str(), a["source"].as_str()),
        (Some(true), Some("myapp.service"), Some("journal"))
    );
    assert_eq!(a["lines"].as_array().unwrap().len(), 2);
    assert_eq!(a["truncated"], false);
    assert!(!r.stdout.contains("hunter2"), "a journal field other than MESSAGE leaked: {}", r.stdout);
    assert!(calls(&calls_file)[1].contains("--lines=200"), "the default");

    // Refused by the gateway, each saying why; exit 1, the reason on stderr.
    let r = fleet_logs(&gw, &broker, &["--unit", "sshd.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("unit \"sshd.service\": not allowed (this gateway's [logs].units: myapp.service)"),
        "{r:?}"
    );
    let r = fleet_logs(&gw, &broker, &["--since", "2099-01-01T00:00:00Z"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("is in the future"), "{r:?}");
    // Bad usage never leaves the CLI (exit 2).
    for (args, says) in [
        (&["--lines", "1000000000"][..], "--lines 1000000000: out of range (allowed: 1 to 5000)"),
        (&["--since", "last tuesday"][..], "--since \"last tuesday\": neither a duration"),
        (&["--unit", "../../etc/shadow"][..], "not a unit or container name"),
    ] {
        let r = fleet_logs(&gw, &broker, args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains(says), "{args:?}: {r:?}");
    }
    let r = gw.tend(&["fleet", "logs", "--mqtt", &broker.url(), "--fleet", "test", "gw-1/#"]);
    assert_eq!(r.code, 2, "{r:?}");

    // Straight onto the broker, as a hostile client would.
    let cmd = format!("{T}/cmd");
    for (id, payload, says) in [
        (
            "big",
            r#"{"cmd":"logs","unit":"myapp.service","lines":1000000000,"id":"big"}"#,
            "lines: 1000000000 is out of range (allowed: 1 to 5000)",
        ),
        ("huge", r#"{"cmd":"logs","lines":1e300,"id":"huge"}"#, "is out of range"),
        ("neg", r#"{"cmd":"logs","lines":-5,"id":"neg"}"#, "lines: -5 is out of range"),
        ("future", r#"{"cmd":"logs","since":"2999-01-01T00:00:00Z","id":"future"}"#, "is in the future"),
        ("nonsense", r#"{"cmd":"logs","since":"; rm -rf /","id":"nonsense"}"#, "neither a duration"),
        ("typed", r#"{"cmd":"logs","unit":{"$ne":null},"id":"typed"}"#, "unit: must be a string"),
        ("extra", r#"{"cmd":"logs","unit":"myapp.service","argv":["-f"],"id":"extra"}"#, "unknown field \"argv\""),
        ("option", r#"{"cmd":"logs","unit":"--file=/etc/shadow","id":"option"}"#, "not allowed"),
        ("all", r#"{"cmd":"logs","id":"all"}"#, ""),
    ] {
        if id == "all" {
            // Sent to the whole fleet: refused, each gateway on its own topic.
            broker.publish("tend/v1/test/_all/cmd", payload);
            let a = answer(&sub, id);
            assert!(a["error"].as_str().unwrap().contains("asked of one gateway"), "{a}");
            continue;
        }
        broker.publish(&cmd, payload);
        let a = answer(&sub, id);
        assert_eq!(a["ok"], false, "{id}: {a}");
        assert!(a["error"].as_str().unwrap().contains(says), "{id}: {a}");
        assert!(a.get("lines").is_none(), "{a}");
    }
    // No usable id, nowhere to answer: a `command` event instead.
    broker.publish(&cmd, r#"{"cmd":"logs","unit":"myapp.service","id":"../../+/#"}"#);
    broker.publish(&cmd, r#"{"cmd":"logs","unit":"myapp.service"}"#);
    broker.publish(&cmd, &format!(r#"{{"cmd":"logs","id":"{}"}}"#, "a".repeat(65)));
    broker.publish(&cmd, r#"{"cmd":"logs","id":"x","#);
    broker.publish(&cmd, "\u{1}\u{2}garbage");
    let got = events.wait("five refusals as command events", Duration::from_secs(15), |l| {
        payloads(l).iter().filter(|e| e["kind"] == "command" && e["ok"] == false).count() >= 5
    });
    let errors: Vec<String> = payloads(&got)
        .iter()
        .filter(|e| e["kind"] == "command")
        .map(|e| e["error"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(errors.iter().filter(|e| e.contains("logs: needs an \"id\"")).count(), 3, "{errors:?}");
    assert_eq!(errors.iter().filter(|e| e.contains("malformed command")).count(), 2, "{errors:?}");
    // None of it ran journalctl, and the daemon is unharmed.
    assert_eq!(calls(&calls_file).len(), 2);
    assert!(gw.tend(&["status"]).code == 0);

    // A hundred requests in a second: at most the burst is read; the rest
    // are refused (rate limit, or busy while one read runs).
    std::thread::sleep(logs_refill() * 3); // the bucket full again
    let before = calls(&calls_file).len();
    // A hundred requests within a second, from one client.
    let started = Instant::now();
    let mut pub_ = Command::new("mosquitto_pub")
        .args(broker.client_args())
        .args(["-q", "1", "-t", &cmd, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = pub_.stdin.take().unwrap();
        for i in 0..100 {
            writeln!(stdin, "{{\"cmd\":\"logs\",\"id\":\"flood-{i}\"}}").unwrap();
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(8));
        }
    }
    assert!(pub_.wait().unwrap().success());
    assert!(started.elapsed() < Duration::from_secs(2), "the flood took {:?}", started.elapsed());
    // Wait until the answers stop coming.
    let flood = |sub: &Subscription| -> Vec<Value> {
        answers(sub).into_iter().filter(|a| a["id"].as_str().is_some_and(|i| i.starts_with("flood-"))).collect()
    };
    let mut seen = 0;
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let n = flood(&sub).len();
        if n == seen {
            break;
        }
        seen = n;
    }
    let got = flood(&sub);
    let read = got.iter().filter(|a| a["ok"] == true).count();
    let refused: Vec<&Value> = got.iter().filter(|a| a["ok"] == false).collect();
    let runs = calls(&calls_file).len() - before;
    // Refusals are published without waiting: one that finds the MQTT
    // client's queue full is dropped (its asker times out), never queued.
    assert!(got.len() >= 50, "most of the hundred are answered: {}", got.len());
    assert!((1..=3).contains(&read), "{read} read in a second (the burst is 3)");
    assert_eq!(runs, read, "journalctl ran once per answer with lines");
    assert!(
        refused.iter().all(|a| {
            let e = a["error"].as_str().unwrap();
            e.starts_with("rate limit: this gateway answers at most 3 logs requests at once") || e.starts_with("busy:")
        }),
        "{refused:?}"
    );
    assert!(refused.iter().any(|a| a["error"].as_str().unwrap().starts_with("rate limit")), "{refused:?}");

    // Unharmed: it answers status, and (once the bucket refills) logs again.
    assert_eq!(gw.tend(&["status"]).code, 0);
    std::thread::sleep(logs_refill());
    let r = fleet_logs(&gw, &broker, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("second line"));
    let log = daemon.log_text();
    assert!(!log.contains("panicked"), "{log}");
    drop(daemon);
}

fn logs_refill() -> Duration {
    Duration::from_secs(10) + Duration::from_millis(500)
}

#[test]
fn a_gateway_without_logs_units_refuses_and_one_that_is_offline_is_said_to_be() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let gw = setup(tmp.path(), &broker, "");
    // No daemon yet: nobody answers.
    let r2 = gw.tend(&["fleet", "logs", "--mqtt", &broker.url(), "--fleet", "test", "--timeout", "2s", "gw-1"]);
    assert_eq!(r2.code, 1, "{r2:?}");
    assert!(r2.stderr.contains("test/gw-1 did not answer within 2s (offline?"), "{r2:?}");
    // A bad entry in [logs].units: the daemon does not start (exit 2), naming the key.
    let good = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, format!("{good}\n[logs]\nunits = [\"--file=/etc/shadow\"]\n")).unwrap();
    let r = gw.tend(&["run"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("[logs].units: \"--file=/etc/shadow\" is not a unit or container name"), "{r:?}");
    std::fs::write(&gw.config, good).unwrap();
    let _daemon = start(&gw, None);
    let r = fleet_logs(&gw, &broker, &["--unit", "tend.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not allowed ([logs].units is empty on this gateway)"), "{r:?}");
}

#[test]
fn an_allowed_containers_log_through_podman() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let podman = Podman::start();
    let out = podman
        .podman()
        .args(["run", "-d", "--name", "app", "--log-driver", "k8s-file", "--network", "host", TEST_IMAGE])
        .args(["sh", "-c", "echo hello from app; echo trouble >&2; sleep 3600"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gw = setup(
        tmp.path(),
        &broker,
        &format!("[containers]\nsocket = \"{}\"\n[logs]\nunits = [\"app\", \"ghost\"]\n", podman.url()),
    );
    let _daemon = start(&gw, None);
    // The runtime has both lines before tend is asked.
    let start = Instant::now();
    while !String::from_utf8_lossy(&podman.podman().args(["logs", "app"]).output().unwrap().stderr).contains("trouble")
    {
        assert!(start.elapsed() < Duration::from_secs(10), "podman logs never showed the lines");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = fleet_logs(&gw, &broker, &["--unit", "app", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let a = r.json();
    assert_eq!(a["source"], "container", "{a}");
    let texts: Vec<&str> = a["lines"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["hello from app", "trouble"], "{a}");
    assert!(a["lines"].as_array().unwrap().iter().all(|l| l["ts"].as_str().unwrap().len() >= 20), "{a}");
    // `--lines 1`: the newest.
    let r = fleet_logs(&gw, &broker, &["--unit", "app", "--lines", "1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.ends_with(" trouble\n") && r.stdout.lines().count() == 1, "{r:?}");
    // Allowed but not there: the runtime's reason. Not allowed: refused.
    let r = fleet_logs(&gw, &broker, &["--unit", "ghost"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("container ghost: ") && r.stderr.contains("no such container"), "{r:?}");
    let r = fleet_logs(&gw, &broker, &["--unit", "other"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not allowed"), "{r:?}");
}

/// A POST to `fleet serve`: (status code, body).
fn post(port: u16, path: &str, headers: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n{headers}\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn the_fleet_views_logs_button_shows_the_answer_as_text() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let (bin, calls_file) = fake_journalctl_saying(tmp.path(), "<img src=x onerror=document.title=42> b&lt;");
    let gw = setup(tmp.path(), &broker, "[logs]\nunits = [\"myapp.service\"]\n");
    let _daemon = start(&gw, Some(&bin));
    let serve = FleetServe::start(tmp.path(), &broker.url(), &[]);
    serve.wait("the gateway", Duration::from_secs(20), |v| v["counts"]["gateways"] == 1);

    // The route: only with its header, only for a gateway the view knows,
    // arguments checked before the gateway is asked.
    let path = "/api/devices/gw-1/logs?unit=myapp.service&lines=5";
    let (code, v) = post(serve.port, path, "");
    assert_eq!(code, 403, "{v}");
    let (code, v) = post(serve.port, "/api/devices/gw-9/logs", "x-tend: logs\r\n");
    assert_eq!(code, 404, "{v}");
    let (code, v) = post(serve.port, "/api/devices/gw-1/logs?lines=1000000000", "x-tend: logs\r\n");
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("out of range"), "{v}");
    assert_eq!(post(serve.port, "/api/devices", "x-tend: logs\r\n").0, 405);
    assert!(calls(&calls_file).is_empty());
    let (code, v) = post(serve.port, path, "x-tend: logs\r\n");
    assert_eq!(code, 200, "{v}");
    assert_eq!((v["ok"].as_bool(), v["lines"].as_array().map(Vec::len)), (Some(true), Some(2)), "{v}");
    let (code, v) = post(serve.port, "/api/devices/gw-1/logs?unit=sshd.service", "x-tend: logs\r\n");
    assert_eq!(code, 200, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not allowed"), "{v}");

    // The page: a device's panel, its logs button, the lines as text.
    std::thread::sleep(Duration::from_secs(11)); // a token for the page
    let mut b = Browser::start();
    b.navigate(&format!("http://127.0.0.1:{}/", serve.port));
    b.wait("the row", Duration::from_secs(20), "document.querySelectorAll('#rows tr').length === 1");
    b.eval("document.querySelector('#rows tr').click(); true");
    b.wait("the logs button", Duration::from_secs(10), "!!document.getElementById('logs-button')");
    b.eval("document.getElementById('logs-unit').value = 'myapp.service'; document.getElementById('logs-button').click(); true");
    b.wait(
        "the lines",
        Duration::from_secs(25),
        "document.getElementById('logs-out').textContent.includes('first line')",
    );
    let shown = b.eval("document.getElementById('logs-out').textContent");
    assert_eq!(
        shown,
        "2027-01-15T08:00:00Z first line\u{1b}[31m\n2027-01-15T08:00:01Z <img src=x onerror=document.title=42> b&lt;"
    );
    assert_eq!(b.eval("document.querySelectorAll('#logs-out *').length"), 0, "log text became HTML");
    assert_ne!(b.eval("document.title"), "42");
    assert!(
        b.eval("document.getElementById('logs-said').textContent")
            .as_str()
            .unwrap()
            .contains("myapp.service (journal): 2 lines")
    );
    // A refusal is said in the panel.
    b.eval("document.getElementById('logs-unit').value = 'sshd.service'; document.getElementById('logs-button').click(); true");
    b.wait(
        "the refusal",
        Duration::from_secs(25),
        "document.getElementById('logs-said').textContent.includes('not allowed')",
    );
}
