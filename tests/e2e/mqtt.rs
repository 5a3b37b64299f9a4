//! Issue 4: fleet status over MQTT against a real Mosquitto started by the test.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tend_e2e::{Fleet, Gateway, Mosquitto, Subscription, payloads};

const T: &str = "tend/v1/test/gw-1";

fn gateway(parent: &std::path::Path, fleet: &Fleet, mqtt: &str, interval: &str) -> Gateway {
    let gw = Gateway::new(parent, &fleet.url(), &format!("[apply]\nhealth_timeout = \"5s\"\n{mqtt}"));
    let text = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace("timeout = \"10s\"", &format!("timeout = \"5s\"\ninterval = \"{interval}\"\njitter = \"0s\""));
    std::fs::write(&gw.config, text).unwrap();
    gw
}

fn mqtt_section(url: &str) -> String {
    format!("[mqtt]\nurl = \"{url}\"\nhealth_interval = \"1s\"\n")
}

fn bundle(fleet: &Fleet, v: &str) -> String {
    fleet
        .write("devices/gw-1/files/etc/myapp/app.conf", format!("version = {v}\n"))
        .write("devices/gw-1/tend.toml", "[[check]]\nname = \"always\"\ncommand = [\"true\"]\ninterval = \"1s\"\n");
    fleet.commit(v)
}

fn kinds(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["kind"].as_str().unwrap_or("").to_owned()).collect()
}

#[test]
fn a_daemon_publishes_availability_status_health_and_events() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let c1 = bundle(&fleet, "1");
    let gw = gateway(tmp.path(), &fleet, &mqtt_section(&broker.url()), "1h");
    let events = Subscription::start(&broker, &format!("{T}/events"), "events-1");
    let daemon = gw.start_daemon();

    let got =
        events.wait("sync events", Duration::from_secs(20), |l| kinds(&payloads(l)).contains(&"healthy".to_string()));
    let ev = payloads(&got);
    assert_eq!(kinds(&ev)[..3], ["sync_started", "applied", "healthy"]);
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    assert!(ev.iter().all(|e| e["device_id"] == "gw-1" && e["ts"].is_string()));
    assert_eq!(ev[1]["revision"], c1);

    assert_eq!(broker.read_one(&format!("{T}/availability"), &[], 5).as_deref(), Some("online"));
    let status: Value = serde_json::from_str(&broker.read_one(&format!("{T}/status"), &[], 5).unwrap()).unwrap();
    assert_eq!(status["revision"], c1);
    assert_eq!(status["phase"], "synced");
    for k in [
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
        assert!(status.get(k).is_some(), "status lacks {k}: {status}");
    }
    // Health comes every second; the first ones predate the first revision.
    let start = std::time::Instant::now();
    let health: Value = loop {
        let h: Value = serde_json::from_str(&broker.read_one(&format!("{T}/health"), &[], 5).unwrap()).unwrap();
        if h["checks"]["always"] == "pass" || start.elapsed() > Duration::from_secs(15) {
            break h;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for k in
        ["ts", "uptime_s", "cpu_percent", "mem_used_bytes", "mem_total_bytes", "disk_free_bytes", "load1", "checks"]
    {
        assert!(health.get(k).is_some(), "health lacks {k}: {health}");
    }
    assert_eq!(health["checks"]["always"], "pass", "{health}");
    assert!(gw.tend(&["status"]).stdout.contains("mqtt        connected"));

    // A clean stop says offline.
    let (code, _) = daemon.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert_eq!(broker.read_one(&format!("{T}/availability"), &[], 5).as_deref(), Some("offline"));
}

#[test]
fn sync_commands_apply_a_new_commit_and_echo_their_id() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    bundle(&fleet, "1");
    // Interval of hours: only a command can make it sync.
    let gw = gateway(tmp.path(), &fleet, &mqtt_section(&broker.url()), "5h");
    let events = Subscription::start(&broker, &format!("{T}/events"), "events-2");
    let _daemon = gw.start_daemon();
    gw.wait_status("first sync", Duration::from_secs(20), |s| s["phase"] == "synced");

    let c2 = bundle(&fleet, "2");
    broker.publish(&format!("{T}/cmd"), r#"{"cmd":"sync","id":"cmd-42"}"#);
    gw.wait_status("c2 applied", Duration::from_secs(20), |s| s["revision"] == c2.as_str());
    let got = events.wait("command event", Duration::from_secs(10), |l| {
        payloads(l).iter().any(|e| e["kind"] == "command" && e["id"] == "cmd-42")
    });
    let cmd = payloads(&got).into_iter().find(|e| e["kind"] == "command").unwrap();
    assert_eq!(cmd["ok"], true);
    assert_eq!(cmd["cmd"], "sync");
    assert_eq!(cmd["revision"], c2);

    // To the whole fleet, with the fleet CLI.
    let c3 = bundle(&fleet, "3");
    let r = gw.tend(&["fleet", "sync", "--mqtt", &broker.url(), "--fleet", "test", "--all"]);
    assert_eq!(r.code, 0, "{r:?}");
    gw.wait_status("c3 applied", Duration::from_secs(20), |s| s["revision"] == c3.as_str());

    // A malformed command: an error event echoing the id, and the daemon lives on.
    broker.publish(&format!("{T}/cmd"), r#"{"cmd":"format_disk","id":"bad-1"}"#);
    broker.publish(&format!("{T}/cmd"), "not json at all");
    let got = events.wait("error event", Duration::from_secs(10), |l| {
        payloads(l).iter().any(|e| e["kind"] == "command" && e["id"] == "bad-1")
    });
    let bad = payloads(&got).into_iter().find(|e| e["id"] == "bad-1").unwrap();
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("unknown command"), "{bad}");
    events.wait("the non-JSON command answered", Duration::from_secs(10), |l| {
        payloads(l)
            .iter()
            .any(|e| e["kind"] == "command" && e["error"].as_str().is_some_and(|x| x.contains("malformed")))
    });

    // Suspend and resume.
    broker.publish(&format!("{T}/cmd"), r#"{"cmd":"suspend","id":"s"}"#);
    gw.wait_status("suspended", Duration::from_secs(10), |s| s["phase"] == "suspended");
    broker.publish(&format!("{T}/cmd"), r#"{"cmd":"resume","id":"r"}"#);
    gw.wait_status("resumed", Duration::from_secs(10), |s| s["phase"] == "synced");
}

#[test]
fn events_raised_while_the_broker_is_down_arrive_in_order_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    bundle(&fleet, "1");
    let gw = gateway(tmp.path(), &fleet, &mqtt_section(&broker.url()), "5h");
    // A persistent QoS 1 subscriber: the broker keeps its messages across the restart.
    let events = Subscription::start(&broker, &format!("{T}/events"), "events-3");
    let daemon = gw.start_daemon();
    events.wait("first events", Duration::from_secs(20), |l| kinds(&payloads(l)).contains(&"healthy".to_string()));
    events.stop();

    broker.stop();
    // Commits applied through `tend sync` (via the daemon) while the broker is down.
    for v in ["2", "3"] {
        bundle(&fleet, v);
        gw.sync_ok();
    }
    // And across an agent restart.
    let (code, _) = daemon.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    bundle(&fleet, "4");
    let daemon = gw.start_daemon();
    gw.wait_status("v4", Duration::from_secs(20), |s| s["phase"] == "synced" && s["revision"] == fleet.head().as_str());

    broker.restart();
    let events = Subscription::start(&broker, &format!("{T}/events"), "events-3");
    let got = events.wait("every event", Duration::from_secs(30), |l| {
        payloads(l).iter().filter(|e| e["kind"] == "healthy").count() >= 4
    });
    let ev = payloads(&got);
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    // In order; QoS 1 may redeliver, but never out of order.
    assert!(seqs.windows(2).all(|w| w[1] >= w[0]), "out of order: {seqs:?}");
    let mut distinct = seqs.clone();
    distinct.dedup();
    let (first, last) = (distinct[0], *distinct.last().unwrap());
    assert_eq!(distinct, (first..=last).collect::<Vec<_>>(), "an event is missing: {seqs:?}");
    assert_eq!(ev.iter().filter(|e| e["kind"] == "applied").count(), 4, "{:?}", kinds(&ev));
    let (code, _) = daemon.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

#[test]
fn sigkill_leaves_availability_offline_through_the_last_will() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    bundle(&fleet, "1");
    let gw = gateway(tmp.path(), &fleet, &mqtt_section(&broker.url()), "5h");
    let daemon = gw.start_daemon();
    let start = std::time::Instant::now();
    while broker.read_one(&format!("{T}/availability"), &[], 2).as_deref() != Some("online") {
        assert!(start.elapsed() < Duration::from_secs(20), "never online");
    }
    daemon.kill();
    let start = std::time::Instant::now();
    while broker.read_one(&format!("{T}/availability"), &[], 2).as_deref() != Some("offline") {
        assert!(start.elapsed() < Duration::from_secs(20), "the Last Will never arrived");
    }
}

/// The ACL file of the README's Mosquitto setup, as written there.
fn readme_acl() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let start = readme.find("# /etc/mosquitto/acl\n").expect("the README's ACL") + "# /etc/mosquitto/acl\n".len();
    let len = readme[start..].find("```").expect("the end of the README's ACL");
    readme[start..start + len].to_owned()
}

#[test]
fn tls_with_client_certificates_and_an_acl() {
    let tmp = tempfile::tempdir().unwrap();
    // The README's ACL, word for word: its admin is `fleet-admin`.
    let acl = readme_acl();
    assert!(acl.starts_with("user fleet-admin\n"), "{acl}");
    let broker = Mosquitto::start_tls_with_acl(&acl);
    let fleet = Fleet::new(tmp.path(), "fleet");
    let c1 = bundle(&fleet, "1");
    let (cert, key) = broker.client_cert("gw-1", false);
    let (admin_cert, admin_key) = broker.client_cert("fleet-admin", false);
    let ca = broker.dir.path().join("ca.pem");
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let tls = |c: &Path, k: &Path| {
        format!("ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n", ca.display(), c.display(), k.display())
    };
    let gw = gateway(tmp.path(), &fleet, &format!("{}{}", mqtt_section(&url), tls(&cert, &key)), "5h");
    let daemon = gw.start_daemon();
    gw.wait_status("synced", Duration::from_secs(20), |s| s["phase"] == "synced");

    // The device published its own topics: read them with the admin identity.
    // None: connected, and nothing retained there within 5 s; any other
    // failure (a refused certificate, a refused subscription) fails here.
    let admin = |topic: &str| -> Option<String> {
        let out = std::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "--cafile", ca.to_str().unwrap()])
            .args(["--cert", admin_cert.to_str().unwrap(), "--key", admin_key.to_str().unwrap()])
            .args(["-t", topic, "-C", "1", "-W", "5"])
            .output()
            .unwrap();
        match out.status.code() {
            Some(0) => Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
            // mosquitto_sub's exit status when -W ran out.
            Some(27) => None,
            _ => panic!("mosquitto_sub as fleet-admin on {topic}: {out:?}"),
        }
    };
    // Publish as gw-1 (the broker takes the message: a write the ACL denies
    // is dropped silently).
    let publish_as_gw1 = |topic: &str, payload: &str| {
        let out = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "--cafile", ca.to_str().unwrap()])
            .args(["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()])
            .args(["-q", "1", "-r", "-t", topic, "-m", payload])
            .output()
            .unwrap();
        assert!(out.status.success(), "mosquitto_pub as gw-1 on {topic}: {out:?}");
    };
    let start = std::time::Instant::now();
    loop {
        let s = admin(&format!("{T}/status"));
        if s.as_deref().is_some_and(|s| s.contains(&c1)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "status never published over TLS: {s:?}\n{}",
            daemon.log_text()
        );
    }
    assert_eq!(admin(&format!("{T}/availability")).as_deref(), Some("online"));
    // The ACL keeps a device to its own topics: gw-1's identity cannot write gw-2's.
    publish_as_gw1("tend/v1/test/gw-2/status", "forged");
    assert_eq!(admin("tend/v1/test/gw-2/status"), None, "a device wrote another device's topic");
    // Rollout reports (the circuit breaker): for itself, not for another.
    let report = |device: &str| {
        publish_as_gw1(
            &format!("tend/v1/test/_rollout/{c1}/{device}"),
            &format!(r#"{{"revision":"{c1}","outcome":"rolled_back"}}"#),
        )
    };
    report("gw-1");
    report("gw-2");
    assert!(
        admin(&format!("tend/v1/test/_rollout/{c1}/gw-1")).is_some_and(|r| r.contains("rolled_back")),
        "a device cannot report for itself"
    );
    assert_eq!(admin(&format!("tend/v1/test/_rollout/{c1}/gw-2")), None, "a device reported for another");
    let (code, _) = daemon.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));

    // A certificate from another CA is refused; the agent says why.
    let (fcert, fkey) = broker.client_cert("gw-1", true);
    gw.write_config(
        &fleet.url(),
        "",
        &format!("[apply]\nhealth_timeout = \"5s\"\n{}{}", mqtt_section(&url), tls(&fcert, &fkey)),
    );
    let daemon = gw.start_daemon();
    let s = gw.wait_status("the TLS error", Duration::from_secs(20), |s| {
        s["mqtt"].as_str().is_some_and(|m| m.starts_with("error"))
    });
    let m = s["mqtt"].as_str().unwrap();
    assert!(m.contains("TLS") || m.contains("certificate") || m.contains("handshake") || m.contains("reset"), "{m}");
    assert!(m.contains("refused this client certificate"), "{m}");
    let log = daemon.log_text();
    let (code, _) = daemon.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(log.contains("mqtt: disconnected") && log.contains("TLS"), "{log}");
    assert!(!log.contains("BEGIN"), "key material in the log");
}

#[test]
fn fleet_status_lists_every_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    bundle(&fleet, "1");
    for dev in ["gw-2", "gw-3"] {
        fleet.write(&format!("devices/{dev}/files/etc/myapp/x"), "x\n");
    }
    let head = fleet.commit("more devices");
    let mut daemons = Vec::new();
    let mut gws = Vec::new();
    for dev in ["gw-1", "gw-2", "gw-3"] {
        let gw = gateway(&tmp.path().join(dev), &fleet, &mqtt_section(&broker.url()), "5h");
        let text = std::fs::read_to_string(&gw.config)
            .unwrap()
            .replace("device_id = \"gw-1\"", &format!("device_id = \"{dev}\""));
        std::fs::write(&gw.config, text).unwrap();
        daemons.push(gw.start_daemon());
        gw.wait_status("synced", Duration::from_secs(20), |s| s["phase"] == "synced");
        // And published: the retained status carries the revision.
        let start = std::time::Instant::now();
        while !broker.read_one(&format!("tend/v1/test/{dev}/status"), &[], 2).is_some_and(|s| s.contains(&head)) {
            assert!(start.elapsed() < Duration::from_secs(20), "{dev} never published its revision");
            std::thread::sleep(Duration::from_millis(100));
        }
        gws.push(gw);
    }
    // gw-3 dies: the table must show it offline (once its Last Will is in).
    daemons.pop().unwrap().kill();
    let start = std::time::Instant::now();
    while broker.read_one("tend/v1/test/gw-3/availability", &[], 2).as_deref() != Some("offline") {
        assert!(start.elapsed() < Duration::from_secs(20), "the Last Will never arrived");
    }
    let r = gws[0].tend(&["fleet", "status", "--mqtt", &broker.url(), "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let all = r.json();
    assert_eq!(all["counts"]["gateways"], 3, "{all}");
    assert_eq!(all["counts"]["offline"], 1, "{all}");
    assert_eq!(all["counts"]["by_phase"]["synced"], 3, "{all}");
    let rows = all["devices"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, dev) in rows.iter().zip(["gw-1", "gw-2", "gw-3"]) {
        assert_eq!(row["device_id"], dev);
        assert_eq!(row["revision"], head);
    }
    assert_eq!(rows[2]["availability"], "offline");
    let table = gws[0].tend(&["fleet", "status", "--mqtt", &broker.url(), "--fleet", "test"]);
    assert_eq!(table.code, 0);
    for line in table.stdout.lines() {
        assert!(line.chars().count() <= 80, "{line:?}");
    }
    assert!(
        table.stdout.starts_with("3 gateways: 2 online, 1 offline; 0 stale; 1 needs attention\n"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.lines().any(|l| l.starts_with("! test/gw-3") && l.contains("offline")), "{}", table.stdout);
    assert!(!table.stdout.contains("test/gw-1"), "only what needs attention is listed:\n{}", table.stdout);
    let every = gws[0].tend(&["fleet", "status", "--mqtt", &broker.url(), "--all"]);
    assert!(every.stdout.lines().any(|l| l.starts_with("  test/gw-1")), "{}", every.stdout);
}

#[test]
fn username_and_password_file_and_no_password_in_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = "mqtt-pa55-9d1c";
    let broker = Mosquitto::start_with_password("gw-1", secret);
    let fleet = Fleet::new(tmp.path(), "fleet");
    bundle(&fleet, "1");
    let pw = tmp.path().join("mqtt-password");
    std::fs::write(&pw, format!("{secret}\n")).unwrap();
    let mqtt = format!("{}username = \"gw-1\"\npassword_file = \"{}\"\n", mqtt_section(&broker.url()), pw.display());
    let gw = gateway(tmp.path(), &fleet, &mqtt, "5h");
    let daemon = gw.start_daemon();
    gw.wait_status("connected", Duration::from_secs(20), |s| s["mqtt"] == "connected");
    let log = daemon.log_text();
    let (code, _) = daemon.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    // A wrong password is refused and named, without showing either password.
    std::fs::write(&pw, "wrong-pa55\n").unwrap();
    let daemon = gw.start_daemon();
    let s = gw.wait_status("refused", Duration::from_secs(20), |s| {
        s["mqtt"].as_str().is_some_and(|m| m.starts_with("error"))
    });
    assert!(s["mqtt"].as_str().unwrap().contains("refused"), "{s}");
    let log2 = daemon.log_text();
    for text in [&log, &log2, &s.to_string()] {
        assert!(!text.contains(secret) && !text.contains("wrong-pa55"), "a password leaked: {text}");
    }
}
