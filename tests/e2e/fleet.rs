//! Issue 14: the fleet at a glance, against real things: real `tend run`
//! daemons publishing to a real Mosquitto, `tend fleet serve` loaded in a real
//! headless Chromium, scraped by a real Prometheus, a gateway's textfile read
//! by a real node_exporter, alert rules run by promtool, and a broker full of
//! hostile messages.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tend_e2e::monitor::{Browser, FleetServe, NodeExporter, Prometheus, http_get, publish_retained};
use tend_e2e::{Daemon, Fleet, Gateway, Mosquitto, Subscription, run};

fn bundle(fleet: &Fleet, v: &str, devices: &[&str]) -> String {
    for d in devices {
        fleet.write(&format!("devices/{d}/files/etc/myapp/app.conf"), format!("version = {v}\n")).write(
            &format!("devices/{d}/tend.toml"),
            "[[check]]\nname = \"always\"\ncommand = [\"true\"]\ninterval = \"1s\"\n",
        );
    }
    fleet.commit(v)
}

/// A gateway `dev` with MQTT, polling rarely (commands make it sync).
fn gateway(parent: &Path, fleet: &Fleet, broker: &Mosquitto, dev: &str, extra: &str) -> Gateway {
    let gw = Gateway::new(
        &parent.join(dev),
        &fleet.url(),
        &format!(
            "[apply]\nhealth_timeout = \"3s\"\n[mqtt]\nurl = \"{}\"\nhealth_interval = \"1s\"\n{extra}",
            broker.url()
        ),
    );
    let text = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace("device_id = \"gw-1\"", &format!("device_id = \"{dev}\""))
        .replace("timeout = \"10s\"", "timeout = \"10s\"\ninterval = \"1h\"\njitter = \"0s\"");
    std::fs::write(&gw.config, text).unwrap();
    gw
}

fn start_fleet(parent: &Path, fleet: &Fleet, broker: &Mosquitto, devices: &[&str]) -> (Vec<Gateway>, Vec<Daemon>) {
    let mut gws = Vec::new();
    let mut daemons = Vec::new();
    for dev in devices {
        let gw = gateway(parent, fleet, broker, dev, "");
        daemons.push(gw.start_daemon());
        gw.wait_status("synced", Duration::from_secs(30), |s| s["phase"] == "synced");
        // The local status is answered at once; the retained one on the
        // broker follows the sync's end: wait for it too.
        let start = std::time::Instant::now();
        while !broker
            .read_one(&format!("tend/v1/test/{dev}/status"), &[], 5)
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .is_some_and(|s| s["phase"] == "synced")
        {
            assert!(start.elapsed() < Duration::from_secs(30), "{dev}'s retained status never said synced");
            std::thread::sleep(Duration::from_millis(100));
        }
        gws.push(gw);
    }
    (gws, daemons)
}

fn device<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["devices"].as_array().unwrap().iter().find(|d| d["device_id"] == id).unwrap_or(&Value::Null)
}

#[test]
fn the_fleet_view_lists_every_gateway_and_shows_a_new_revision_without_a_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let devices = ["gw-1", "gw-2", "gw-3"];
    let c1 = bundle(&fleet, "1", &devices);
    let (gws, mut daemons) = start_fleet(tmp.path(), &fleet, &broker, &devices);
    let serve = FleetServe::start(tmp.path(), &broker.url(), &[]);
    serve.wait("three synced gateways on c1", Duration::from_secs(20), |v| {
        v["counts"]["gateways"] == 3 && devices.iter().all(|d| device(v, d)["revision"] == c1.as_str())
    });

    let mut b = Browser::start();
    b.navigate(&format!("http://127.0.0.1:{}/", serve.port));
    let rows_on = |c: &str| {
        format!(
            "(() => {{ const r = [...document.querySelectorAll('#rows tr')]; return r.length === 3 && r.every(tr => tr.children[3].title === '{c}' && tr.children[2].innerText === 'synced'); }})()"
        )
    };
    b.wait("three rows on the first commit", Duration::from_secs(20), &rows_on(&c1));
    assert_eq!(b.eval("document.querySelector('#cards .card .n').innerText"), "3");
    // A mark that a reload would erase.
    b.eval("window.__tend_no_reload = 42");

    let c2 = bundle(&fleet, "2", &devices);
    let r = gws[0].tend(&["fleet", "sync", "--mqtt", &broker.url(), "--fleet", "test", "--all"]);
    assert_eq!(r.code, 0, "{r:?}");
    b.wait("three rows on the second commit", Duration::from_secs(30), &rows_on(&c2));
    assert_eq!(b.eval("window.__tend_no_reload"), 42, "the page reloaded");

    // The detail of a gateway: its recent events, newest first.
    let d = serve.json("/api/devices/gw-1");
    let kinds: Vec<&str> = d["events"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"applied") && kinds.contains(&"healthy"), "{d}");
    assert!(d["health"]["mem_total_bytes"].as_f64().unwrap_or(0.0) > 0.0, "{d}");
    b.eval("document.querySelector('#rows tr[data-device=\"gw-1\"]').click()");
    b.wait(
        "the detail panel",
        Duration::from_secs(10),
        "document.getElementById('detail').innerText.includes('healthy')",
    );
    // A gateway dies: its Last Will makes it offline in the page.
    daemons.pop().unwrap().kill();
    b.wait(
        "gw-3 offline",
        Duration::from_secs(20),
        "document.querySelector('#rows tr[data-device=\"gw-3\"]').children[1].innerText === 'offline'",
    );
    // The picture in docs/ and the README: target/tmp/fleet-view.png.
    let shot = b.screenshot();
    assert!(shot.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-view.png"), &shot).unwrap();
    assert_eq!(serve.get("/api/devices/nope").0, 404);
    assert_eq!(http_get(serve.port, "/", &[]).0, 200);
}

#[test]
fn prometheus_scrapes_fleet_serve_and_node_exporter_reads_a_gateways_textfile() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let c1 = bundle(&fleet, "1", &["gw-1", "gw-2"]);
    let textdir = tmp.path().join("textfile");
    std::fs::create_dir_all(&textdir).unwrap();
    let gw1 = gateway(
        tmp.path(),
        &fleet,
        &broker,
        "gw-1",
        &format!("[metrics]\ntextfile = \"{}\"\n", textdir.join("tend.prom").display()),
    );
    let _d1 = gw1.start_daemon();
    let gw2 = gateway(tmp.path(), &fleet, &broker, "gw-2", "");
    let _d2 = gw2.start_daemon();
    let s1 = gw1.wait_status("gw-1 synced", Duration::from_secs(30), |s| s["phase"] == "synced");
    gw2.wait_status("gw-2 synced", Duration::from_secs(30), |s| s["phase"] == "synced");

    // Every gateway's own series (by default only those needing attention).
    let serve = FleetServe::start(tmp.path(), &broker.url(), &["--device-metrics", "all"]);
    let exporter = NodeExporter::start(&textdir);
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus/tend-alerts.yml");
    let prom = Prometheus::start(&[("tend-fleet", serve.port), ("node", exporter.port)], Some(&rules));
    let t = Duration::from_secs(40);
    assert_eq!(prom.wait_value("tend_fleet_gateways_by_phase{phase=\"synced\"}", t, |v| v == 2.0), 2.0);
    assert_eq!(prom.wait_value("tend_fleet_gateways_online", t, |v| v == 2.0), 2.0);
    assert_eq!(prom.wait_value(&format!("tend_fleet_gateways_by_revision{{revision=\"{c1}\"}}"), t, |v| v == 2.0), 2.0);
    let last_sync = humantime::parse_rfc3339(s1["last_sync"].as_str().unwrap())
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    // The gateway's last sync as the fleet sees it, and as its own textfile says.
    let fleet_seen =
        prom.wait_value("tend_fleet_gateway_last_sync_timestamp_seconds{device_id=\"gw-1\"}", t, |v| v >= last_sync);
    let own = prom.wait_value("tend_last_sync_timestamp_seconds{job=\"node\"}", t, |v| v >= last_sync);
    assert!((fleet_seen - own).abs() <= 5.0, "fleet says {fleet_seen}, textfile says {own}");
    assert_eq!(prom.wait_value("tend_syncs_total{job=\"node\",result=\"applied\"}", t, |v| v >= 1.0), 1.0);
    assert_eq!(prom.wait_value("tend_phase{job=\"node\",phase=\"synced\"}", t, |v| v == 1.0), 1.0);
    assert_eq!(
        prom.query(&format!("tend_agent_info{{job=\"node\",device_id=\"gw-1\",revision=\"{c1}\"}}")).len(),
        1,
        "tend_agent_info with the revision"
    );
    assert!(prom.wait_value("tend_agent_resident_memory_bytes", t, |v| v > 0.0) > 1e6);
    // The rules loaded into the real Prometheus, and nothing firing on a healthy fleet.
    let (_, _, body) = http_get(prom.port, "/api/v1/rules", &[]);
    let rules: Value = serde_json::from_slice(&body).unwrap();
    let names: Vec<&str> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()))
        .collect();
    assert!(names.contains(&"TendGatewayOffline") && names.contains(&"TendAgentUnhealthy"), "{names:?}");
    // Nothing firing on a healthy fleet, nor pending: most rules need `for:`
    // of minutes to hours before they fire, but a rule whose expression holds
    // is in ALERTS (pending) from its first evaluation. Every group must have
    // been evaluated twice since the series above were scraped (evaluation
    // every second).
    let scraped = jiff::Timestamp::now();
    let start = std::time::Instant::now();
    loop {
        let (_, _, body) = http_get(prom.port, "/api/v1/rules", &[]);
        let rules: Value = serde_json::from_slice(&body).unwrap();
        let groups = rules["data"]["groups"].as_array().unwrap();
        let evaluated = |g: &Value| {
            g["lastEvaluation"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t.duration_since(scraped) >= jiff::SignedDuration::from_secs(2))
        };
        if !groups.is_empty() && groups.iter().all(evaluated) {
            break;
        }
        assert!(start.elapsed() < t, "the rules were not evaluated after the scrape: {rules}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let alerts = prom.query("ALERTS");
    assert!(alerts.is_empty(), "alerts on a healthy fleet: {alerts:?}");
}

#[test]
fn the_alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus");
    let out = run(Command::new("promtool").arg("check").arg("rules").arg(dir.join("tend-alerts.yml")));
    assert!(out.contains("SUCCESS: 9 rules found"), "{out}");
    let out = run(Command::new("promtool").args(["test", "rules", "tend-alerts.test.yml"]).current_dir(&dir));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The Grafana dashboard (packaging/grafana/tend-fleet.json): every query in
/// it is evaluated by promtool against test series, verbatim, with its
/// expected result; the panels point at the dashboard's Prometheus input.
#[test]
fn the_grafana_dashboards_queries_pass_their_promtool_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tend-fleet.json")).unwrap()).unwrap();
    let tests = std::fs::read_to_string(dir.join("tend-fleet.test.yml")).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = std::collections::BTreeSet::new();
    let mut queries = 0;
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id {} twice", p["id"]);
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                tests.contains(&format!("- expr: '{}'\n", expr.replace('\'', "''"))),
                "panel {:?}: its query {expr:?} has no promql_expr_test in tend-fleet.test.yml",
                p["title"]
            );
            queries += 1;
        }
    }
    // Rollout progress per wave, the fleet by phase and revision, attention,
    // sync and rollback rates, agent memory: each has a panel.
    for needed in [
        "tend_fleet_gateways_by_wave",
        "tend_fleet_gateways_by_phase",
        "tend_fleet_gateways_by_revision",
        "tend_fleet_gateway_info",
        "tend_syncs_total",
        "tend_rollbacks_total",
        "tend_agent_resident_memory_bytes",
    ] {
        assert!(panels.iter().any(|p| p["targets"].to_string().contains(needed)), "no panel queries {needed}");
    }
    assert!(queries >= 15, "{queries} queries");
    let out = run(Command::new("promtool").args(["test", "rules", "tend-fleet.test.yml"]).current_dir(&dir));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Messages a broken or compromised gateway (or anyone with write access to
/// the broker) could leave: (device, topic kind, payload).
fn hostile_corpus() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let s = |x: &str| x.as_bytes().to_vec();
    vec![
        ("h01-not-json", "status", s("this is not json")),
        ("h02-invalid-utf8", "status", b"{\"phase\":\"synced\",\"revision\":\"\xff\xfe\"}".to_vec()),
        ("h03-array", "status", s("[1,2,3]")),
        (
            "h04-wrong-types",
            "status",
            s(r#"{"phase":7,"revision":["a"],"last_sync":false,"resources":"many","source":{}}"#),
        ),
        ("h05-multibyte-rev", "status", s(r#"{"phase":"synced","revision":"é€😀é€😀é€😀é€😀é€😀é€😀","source":"ok"}"#)),
        (
            "h06-escape",
            "status",
            s(r#"{"phase":"synced","revision":"\u001b[2J\u001b]0;pwned\u0007","error":"\u001b[31mred\u001b[0m"}"#),
        ),
        ("h07-huge-error", "status", format!(r#"{{"phase":"failed","error":"{}"}}"#, "x".repeat(60_000)).into_bytes()),
        ("h08-oversized", "status", vec![b' '; 70_000]),
        ("h09-unknown-phase", "status", s(r#"{"phase":"dancing","revision":"abc","source":"ok"}"#)),
        ("h10-bad-time", "status", s(r#"{"phase":"synced","last_sync":"yesterday-ish","source":"ok"}"#)),
        ("h11-future-time", "status", s(r#"{"phase":"synced","last_sync":"9999-12-31T23:59:59Z","source":"ok"}"#)),
        (
            "h12-negative-resources",
            "status",
            s(r#"{"phase":"synced","resources":{"total":-1,"ready":1e308,"failed":null}}"#),
        ),
        ("h13-deep-nesting", "status", format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes()),
        ("h14-null", "status", s("null")),
        ("h15-bidi", "status", s("{\"phase\":\"synced\",\"revision\":\"abc\u{202e}fed\",\"source\":\"ok\"}")),
        ("h16-avail-garbage", "availability", s("\u{1b}[5monline")),
        ("h17-avail-binary", "availability", vec![0, 1, 2, 0xff]),
        (
            "h18-health-nan",
            "health",
            s(r#"{"ts":"x","cpu_percent":"NaN","mem_total_bytes":1e999,"checks":{"\u001b[1m":7}}"#),
        ),
        ("h19-event-garbage", "events", s(r#"{"seq":-5,"kind":{"x":1},"ts":3}"#)),
        (
            "h20-label-injection",
            "status",
            s("{\"phase\":\"synced\",\"revision\":\"x\\\"} 1\\n# evil\\n\",\"source\":\"ok\"}"),
        ),
        (
            "h21-html",
            "status",
            s(
                r#"{"phase":"synced","revision":"<img src=x onerror=alert(1)>","error":"<script>alert(1)</script>","source":"ok"}"#,
            ),
        ),
        ("h22 gw with spaces ✓", "status", s(r#"{"phase":"synced","source":"ok"}"#)),
    ]
}

/// `promtool check metrics`: Prometheus's own parser reads the page.
fn promtool_check_metrics(metrics: &[u8]) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), metrics).unwrap();
    let out = check.wait_with_output().unwrap();
    let complaints = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!complaints.contains("error") && !complaints.contains("parse"), "promtool check metrics: {complaints}");
}

fn no_control_characters(what: &str, text: &str) {
    for (i, line) in text.lines().enumerate() {
        assert!(
            !line.chars().any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
            "{what}: line {} has a control character: {line:?}",
            i + 1
        );
    }
}

#[test]
fn a_hostile_broker_crashes_nothing_and_honest_gateways_still_show() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let c1 = bundle(&fleet, "1", &["gw-1"]);
    // One real gateway, then the hostile messages around it.
    let (gws, mut daemons) = start_fleet(tmp.path(), &fleet, &broker, &["gw-1"]);
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let mut messages: Vec<(String, Vec<u8>)> = hostile_corpus()
        .into_iter()
        .map(|(dev, kind, payload)| (format!("tend/v1/test/{dev}/{kind}"), payload))
        .collect();
    // An honest gateway published raw, and a few topics that are not gateways'.
    messages.push((
        "tend/v1/test/honest-2/status".into(),
        format!(r#"{{"device_id":"honest-2","phase":"synced","revision":"{c1}","source":"ok","last_sync":"{now}","error":null}}"#)
            .into_bytes(),
    ));
    messages.push(("tend/v1/test/honest-2/availability".into(), b"online".to_vec()));
    messages.push(("tend/v1/test/odd/status/extra".into(), b"{}".to_vec()));
    messages.push((format!("tend/v1/test/{}/status", "x".repeat(300)), b"{}".to_vec()));
    assert!(messages.len() >= 24);
    publish_retained(broker.port, &messages);

    // fleet status: the table, --all and --json.
    for args in [&["--all"][..], &[][..]] {
        let r = gws[0].tend(&[&["fleet", "status", "--mqtt", &broker.url()][..], args].concat());
        assert_eq!(r.code, 0, "{r:?}");
        no_control_characters("fleet status", &r.stdout);
        for line in r.stdout.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
        if args == ["--all"] {
            let honest = r.stdout.lines().find(|l| l.contains("test/gw-1")).expect("gw-1 listed");
            assert!(honest.starts_with("  ") && honest.contains("synced") && honest.contains(&c1[..12]), "{honest}");
        }
    }
    let r = gws[0].tend(&["fleet", "status", "--mqtt", &broker.url(), "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(device(&v, "gw-1")["revision"], c1.as_str());
    assert_eq!(device(&v, "gw-1")["attention"], false, "{}", device(&v, "gw-1"));
    assert_eq!(device(&v, "honest-2")["phase"], "synced");
    assert!(device(&v, "h05-multibyte-rev")["revision"].as_str().unwrap().starts_with("é€😀"));
    assert_eq!(device(&v, "h01-not-json")["problems"][0], "status: not JSON (expected ident at line 1 column 2)");
    assert_eq!(device(&v, "h08-oversized")["problems"][0], "status: 70000 bytes, over the 65536-byte limit: not read");
    assert_eq!(device(&v, "h09-unknown-phase")["attention"], true);
    assert_eq!(device(&v, "h22 gw with spaces ✓")["phase"], "synced");
    assert_eq!(v["counts"]["by_phase"]["other"], 1);

    // fleet serve: the API, the metrics (checked by promtool's parser), the page.
    let mut serve = FleetServe::start(tmp.path(), &broker.url(), &[]);
    // 22 from the corpus (the one with a 300-byte id is refused), gw-1 and honest-2.
    let v = serve.wait("every gateway", Duration::from_secs(20), |v| v["counts"]["gateways"] == 24);
    assert_eq!(device(&v, "honest-2")["phase"], "synced");
    assert_eq!(device(&v, "gw-1")["revision"], c1.as_str());
    let (code, _, metrics) = serve.get("/metrics");
    assert_eq!(code, 200);
    promtool_check_metrics(&metrics);
    let text = String::from_utf8(metrics).unwrap();
    assert!(!text.lines().any(|l| l.starts_with("# evil")), "a label value broke a line");
    let mut b = Browser::start();
    b.navigate(&format!("http://127.0.0.1:{}/", serve.port));
    let n = v["devices"].as_array().unwrap().len();
    b.wait(
        "every gateway in the page",
        Duration::from_secs(20),
        &format!("document.querySelectorAll('#rows tr').length === {n}"),
    );
    // HTML from the broker is shown as text, never made into elements: the
    // page's own inline script is its only one, and no image, frame or
    // event handler came in.
    assert_eq!(
        b.eval("document.querySelector('#rows tr[data-device=\"h21-html\"] td.err').innerText"),
        "<script>alert(1)</script>",
        "the hostile error is not shown as text"
    );
    assert_eq!(
        b.eval(
            "[...document.scripts].filter(s => s.src || s.textContent.includes('alert(')).length + document.querySelectorAll('img, iframe, object, embed, [onerror], [onload]').length"
        ),
        0,
        "HTML from the broker was rendered"
    );
    assert_eq!(b.eval("document.scripts.length"), 1, "a script element came from the broker");
    assert!(serve.alive(), "fleet serve died: {}", std::fs::read_to_string(&serve.log).unwrap_or_default());

    // The daemon: hostile commands are refused (each answered by a `command`
    // event with the reason) and it keeps running.
    let events = Subscription::start(&broker, "tend/v1/test/gw-1/events", "hostile-events");
    let cmd = "tend/v1/test/gw-1/cmd";
    let hostile_commands: Vec<(String, Vec<u8>)> = vec![
        (cmd.into(), b"not json".to_vec()),
        (cmd.into(), b"\xff\xfe\x00".to_vec()),
        (cmd.into(), br#"{"cmd":7}"#.to_vec()),
        (cmd.into(), br#"{"cmd":"format-disk"}"#.to_vec()),
        (cmd.into(), br#"{"cmd":"rollback","revision":"\u001b[2J; rm -rf /"}"#.to_vec()),
        (cmd.into(), br#"{"cmd":"sync","revision":"abc","extra":1}"#.to_vec()),
        (cmd.into(), vec![b'{'; 100_000]),
    ];
    publish_retained(broker.port, &hostile_commands);
    // Cleared again (empty retained messages), so only the next one is retained.
    publish_retained(broker.port, &[(cmd.to_owned(), Vec::new())]);
    let mut old = daemons.pop().unwrap();
    // Each refused, in order, with its reason (the clearing message too: an
    // empty command is not JSON).
    let refusals = [
        ("not json", "malformed command: expected ident at line 1 column 2"),
        ("not UTF-8", "malformed command: expected value at line 1 column 1"),
        ("cmd not a string", "malformed command: invalid type: integer `7`, expected a string"),
        ("unknown command", "unknown command \"format-disk\" (sync, rollback, suspend, resume, logs)"),
        ("rollback to no revision", "\"\\u{1b}[2J; rm -rf /\" is not a commit id (at least 4 hex digits)"),
        ("unknown field", "malformed command: unknown field `extra`"),
        ("oversized", "command larger than 4096 bytes"),
        ("empty", "malformed command: EOF while parsing a value"),
    ];
    let answers =
        |l: &[String]| -> Vec<Value> { tend_e2e::payloads(l).into_iter().filter(|e| e["kind"] == "command").collect() };
    let lines =
        events.wait("a command event for each", Duration::from_secs(30), |l| answers(l).len() >= refusals.len());
    let got = answers(&lines);
    assert_eq!(got.len(), refusals.len(), "{got:?}");
    for ((what, reason), e) in refusals.iter().zip(&got) {
        assert_eq!(e["ok"], false, "{what}: {e}");
        assert!(e["error"].as_str().is_some_and(|r| r.contains(reason)), "{what}: {e}");
    }
    assert!(old.child.try_wait().unwrap().is_none(), "the daemon died: {}", old.log_text());
    let s = gws[0].wait_status("synced", Duration::from_secs(20), |s| s["phase"] == "synced");
    assert_eq!(s["revision"], c1.as_str(), "{s}");
    // A command kept by the broker is not run at the next connection (it would
    // run again at every reconnect of every gateway).
    old.kill();
    publish_retained(broker.port, &[("tend/v1/test/_all/cmd".to_owned(), br#"{"cmd":"suspend"}"#.to_vec())]);
    let d = gws[0].start_daemon();
    d.wait_log("the retained command ignored", Duration::from_secs(10), |l| {
        l.contains("a retained command is ignored")
    });
    let s = gws[0].wait_status("synced", Duration::from_secs(20), |s| s["phase"] == "synced");
    assert_eq!(s["revision"], c1.as_str(), "{s}");
    let r = gws[0].tend(&["fleet", "sync", "--mqtt", &broker.url(), "--fleet", "test", "--device", "gw-1"]);
    assert_eq!(r.code, 0, "{r:?}");
    let c2 = bundle(&fleet, "2", &["gw-1"]);
    let r = gws[0].tend(&["fleet", "sync", "--mqtt", &broker.url(), "--fleet", "test", "--device", "gw-1"]);
    assert_eq!(r.code, 0, "{r:?}");
    gws[0].wait_status("the second commit", Duration::from_secs(30), |s| s["revision"] == c2.as_str());
}

/// `PRETTY_NAME` as this test reads os-release itself (not with tend's code).
fn os_pretty_name() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").or_else(|_| std::fs::read_to_string("/usr/lib/os-release"));
    let line = text.ok()?.lines().find(|l| l.starts_with("PRETTY_NAME="))?.to_owned();
    Some(line["PRETTY_NAME=".len()..].trim_matches(|c| c == '"' || c == '\'').to_owned())
}

/// Issue 26, inventory (SPEC §4): a real daemon reports what this machine is
/// and which runtime it talks to (a real Podman service); `tend status`, the
/// retained status, `fleet status --by` and the fleet view say the same; 300
/// hostile gateways with long unique inventory strings do not make /metrics
/// grow past the fixed number of values per key.
#[test]
fn the_inventory_is_this_machines_and_the_fleet_counts_it_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let podman = tend_e2e::Podman::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    bundle(&fleet, "1", &["gw-1"]);
    let extra = format!("[containers]\nsocket = \"{}\"\n", podman.url());
    let gw = gateway(tmp.path(), &fleet, &broker, "gw-1", &extra);
    let _daemon = gw.start_daemon();
    gw.wait_status("synced", Duration::from_secs(30), |s| s["phase"] == "synced");

    // What this machine is, read here independently.
    let sh = |cmd: &[&str]| run(Command::new(cmd[0]).args(&cmd[1..])).trim().to_owned();
    let podman_version = run(podman.podman().args(["version", "--format", "{{.Server.Version}}"])).trim().to_owned();
    let model = ["/proc/device-tree/model", "/sys/firmware/devicetree/base/model"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).trim_end_matches('\0').to_owned());
    let k3s = Command::new("k3s").arg("--version").output().ok().filter(|o| o.status.success());
    let expected = serde_json::json!({
        "os": os_pretty_name(),
        "kernel": sh(&["uname", "-r"]),
        "arch": sh(&["uname", "-m"]),
        "model": model,
        "runtime": format!("podman {podman_version}"),
        "k3s": k3s.map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(2).unwrap_or("").to_owned()),
    });
    assert!(expected["os"].is_string() && !podman_version.is_empty(), "{expected}");

    // tend status: the JSON and the text.
    let r = gw.tend(&["status", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["inventory"], expected);
    let text = gw.tend(&["status"]).stdout;
    let host =
        format!("host        {}, {}, {}", expected["os"].as_str().unwrap(), sh(&["uname", "-r"]), sh(&["uname", "-m"]));
    assert!(text.contains(&host), "{text}");
    assert!(text.contains(&format!("runtime     podman {podman_version}\n")), "{text}");

    // The retained status on the broker.
    let start = std::time::Instant::now();
    loop {
        let s =
            broker.read_one("tend/v1/test/gw-1/status", &[], 5).and_then(|s| serde_json::from_str::<Value>(&s).ok());
        if s.as_ref().is_some_and(|s| s["inventory"] == expected) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "retained status: {s:?}, expected {expected}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Hostile gateways: each a long arch and model of its own, with quotes,
    // newlines and escapes; and some that send the wrong types.
    let mut messages: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            let s = serde_json::json!({
                "phase": "synced",
                "inventory": {
                    "arch": format!("arch\"}} 1\n\u{1b}[2J{i}-{}", "A".repeat(20_000)),
                    "model": format!("{i}{}", "é".repeat(1000)),
                    "os": "Debian GNU/Linux 12 (bookworm)",
                }
            });
            (format!("tend/v1/test/h-{i}/status"), s.to_string().into_bytes())
        })
        .collect();
    messages.push(("tend/v1/test/t-1/status".into(), br#"{"phase":"synced","inventory":{"arch":7}}"#.to_vec()));
    messages.push(("tend/v1/test/t-2/status".into(), br#"{"phase":"synced","inventory":"aarch64"}"#.to_vec()));
    // Two more honest gateways of this machine's kind: a fleet has many of
    // one arch, and they come first, before the ones sent once each.
    let arch = expected["arch"].as_str().unwrap();
    for dev in ["honest-2", "honest-3"] {
        let s = serde_json::json!({ "phase": "synced", "inventory": { "arch": arch, "os": expected["os"] } });
        messages.push((format!("tend/v1/test/{dev}/status"), s.to_string().into_bytes()));
    }
    publish_retained(broker.port, &messages);

    // fleet status --by arch: this machine's arch counted 3 times, the 300 hostile
    // ones within the listed values and "other", no control character.
    let r = gw.tend(&["fleet", "status", "--mqtt", &broker.url(), "--by", "arch"]);
    assert_eq!(r.code, 0, "{r:?}");
    no_control_characters("fleet status --by", &r.stdout);
    assert!(r.stdout.starts_with("305 gateways by arch\n"), "{}", r.stdout);
    assert!(r.stdout.lines().any(|l| l == format!("{:>8}  {arch}", 3)), "{}", r.stdout);
    assert!(r.stdout.lines().any(|l| l == "       2  none"), "{}", r.stdout);
    assert!(r.stdout.contains("  (other values)\n") && r.stdout.lines().count() <= 102, "{}", r.stdout);
    assert!(r.stdout.lines().all(|l| l.chars().count() <= 80), "{}", r.stdout);
    let r = gw.tend(&["fleet", "status", "--mqtt", &broker.url(), "--by", "arch", "--json"]);
    let v = r.json();
    let listed: u64 = v["values"].as_array().unwrap().iter().map(|x| x[1].as_u64().unwrap()).sum();
    assert_eq!((v["gateways"].as_u64(), listed + v["other"].as_u64().unwrap()), (Some(305), 305), "{v}");
    assert!(v["values"].as_array().unwrap().contains(&serde_json::json!([arch, 3])), "{v}");
    let r = gw.tend(&["fleet", "status", "--mqtt", &broker.url(), "--json"]);
    let gw1 = device(&r.json(), "gw-1").clone();
    assert_eq!(gw1["inventory"], expected);
    assert!(device(&r.json(), "t-1")["problems"][0].as_str().unwrap().contains("inventory.arch"), "{}", r.stdout);

    // The fleet view: filtered by arch and os; /metrics bounded and escaped.
    let serve = FleetServe::start(tmp.path(), &broker.url(), &[]);
    serve.wait("every gateway", Duration::from_secs(20), |v| v["counts"]["gateways"] == 305);
    let v = serve.json(&format!("/api/devices?arch={arch}"));
    let ids: Vec<&str> = v["devices"].as_array().unwrap().iter().filter_map(|d| d["device_id"].as_str()).collect();
    assert_eq!(ids.len(), 3, "{v}");
    assert!(ids.contains(&"gw-1") && ids.contains(&"honest-3"), "{v}");
    assert_eq!(serve.json("/api/devices/gw-1")["inventory"], expected);
    let os: String = expected["os"].as_str().unwrap().replace(' ', "%20");
    assert_eq!(serve.json(&format!("/api/devices?os={os}&arch={arch}"))["matched"], 3);
    let (code, _, body) = serve.get("/metrics");
    assert_eq!(code, 200);
    promtool_check_metrics(&body);
    let metrics = String::from_utf8(body).unwrap();
    let series: Vec<&str> = metrics.lines().filter(|l| l.starts_with("tend_fleet_gateways_by_inventory{")).collect();
    let of = |k: &str| {
        series.iter().filter(|l| l.starts_with(&format!("tend_fleet_gateways_by_inventory{{key=\"{k}\""))).count()
    };
    assert_eq!((of("arch"), of("model")), (21, 21), "{series:#?}");
    assert!(series.contains(&format!("tend_fleet_gateways_by_inventory{{key=\"arch\",value=\"{arch}\"}} 3").as_str()));
    assert!(series.contains(&"tend_fleet_gateways_by_inventory{key=\"runtime\",value=\"none\"} 304"), "{series:#?}");
    assert!(series.iter().any(|l| l.starts_with("tend_fleet_gateways_by_inventory{key=\"arch\",value=\"other\"} ")));
    for l in &series {
        // A label value: at most 100 characters from the broker, escaped.
        assert!(l.chars().count() < 100 * 2 + 80, "{l}");
        assert!(!l.contains('\n') && !l.contains('\u{1b}'), "{l}");
    }
}
