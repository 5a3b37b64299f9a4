//! The fleet view at 10,000 gateways (issue 24, Build 5; the 100,000 figures
//! come from `cargo bench --bench fleet`): statuses and availabilities
//! retained at QoS 1 in a stock Mosquitto, `fleet serve` answering
//! `/api/devices` one filtered, sorted page at a time, and the page in
//! headless Chromium: the counts render within 2 s of opening it and a
//! filter answers within 1 s. Those two bounds are what the view promises
//! an operator (a wall-clock check on purpose; measured from outside the
//! page, the poll of the check itself included).

use std::time::{Duration, Instant};

use tend_e2e::Mosquitto;
use tend_e2e::monitor::{Browser, FleetServe, publish_retained_at};

const N: usize = 10_000;

fn load(broker: &Mosquitto) {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let mut messages = Vec::with_capacity(2 * N);
    for i in 0..N {
        let phase = if i % 100 == 0 { "rolled_back" } else { "synced" };
        let status = format!(
            r#"{{"agent_version":"0.1.0","device_id":"gw-{i:05}","error":null,"fleet":"acme","last_good_revision":"a","last_sync":"{now}","phase":"{phase}","resources":{{"failed":0,"ready":1,"total":1}},"revision":"3f2a9c01b7e4{}","source":"ok","target_revision":"a"}}"#,
            i % 3
        );
        messages.push((format!("tend/v1/acme/gw-{i:05}/status"), status.into_bytes()));
        messages.push((format!("tend/v1/acme/gw-{i:05}/availability"), b"online".to_vec()));
    }
    publish_retained_at(broker.port, &messages, 1);
}

#[test]
fn the_api_answers_one_filtered_sorted_page_of_a_large_fleet() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    load(&broker);
    let serve = FleetServe::start(tmp.path(), &broker.url(), &[]);
    serve.wait("every gateway", Duration::from_secs(60), |v| v["counts"]["gateways"] == N);
    let v = serve.json("/api/devices?limit=50");
    assert_eq!((v["total"].as_u64(), v["matched"].as_u64()), (Some(N as u64), Some(N as u64)));
    assert_eq!(v["devices"].as_array().unwrap().len(), 50);
    // What needs attention first (the rolled back ones), then by name.
    assert_eq!(v["devices"][0]["device_id"], "gw-00000");
    assert_eq!(v["devices"][1]["device_id"], "gw-00100");
    let v = serve.json("/api/devices?q=rolled_back&limit=5000");
    assert_eq!(v["matched"], N / 100);
    assert!(v["devices"].as_array().unwrap().iter().all(|d| d["phase"] == "rolled_back"));
    let v = serve.json("/api/devices?phase=synced&q=3f2a9c01b7e41&sort=device&desc=1&limit=3");
    assert_eq!(v["devices"][0]["device_id"], "gw-09997", "{}", v["devices"]);
    let v = serve.json("/api/devices?online=0");
    assert_eq!(v["matched"], 0);
    let v = serve.json(&format!("/api/devices?offset={N}"));
    assert_eq!(v["devices"].as_array().unwrap().len(), 0);
    // The default page is bounded: a browser never downloads the fleet.
    let (_, _, body) = serve.get("/api/devices");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["devices"].as_array().unwrap().len(), 1000);
    assert!(body.len() < 2 << 20, "{} bytes", body.len());
    assert_eq!(serve.get("/api/devices?limit=x").0, 400);
}

#[test]
fn in_chromium_the_counts_render_within_2_s_and_a_filter_answers_within_1_s() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    load(&broker);
    let serve = FleetServe::start(tmp.path(), &broker.url(), &[]);
    serve.wait("every gateway", Duration::from_secs(60), |v| v["counts"]["gateways"] == N);
    let mut b = Browser::start();
    let started = Instant::now();
    b.navigate(&format!("http://127.0.0.1:{}/", serve.port));
    let counts =
        "document.querySelector('#cards .card .n') && document.querySelector('#cards .card .n').innerText === '10000'";
    wait_for(&mut b, counts, Duration::from_secs(20));
    let to_counts = started.elapsed();
    let rows = b.eval("document.querySelectorAll('#rows tr').length").as_u64().unwrap();
    assert_eq!(rows, 500, "one page of rows");

    let filter = "const f = document.getElementById('filter'); f.value = 'rolled_back'; f.dispatchEvent(new Event('input')); true";
    let started = Instant::now();
    b.eval(filter);
    let filtered = "document.getElementById('shown').innerText.startsWith('100 of 10000') && document.querySelectorAll('#rows tr').length === 100";
    wait_for(&mut b, filtered, Duration::from_secs(20));
    let to_filter = started.elapsed();
    eprintln!("10,000 gateways in Chromium: counts after {to_counts:?}, a filter answered after {to_filter:?}");
    assert!(to_counts <= Duration::from_secs(2), "counts rendered after {to_counts:?}");
    assert!(to_filter <= Duration::from_secs(1), "the filter answered after {to_filter:?}");
}

/// Poll `expr` every 20 ms until it holds.
fn wait_for(b: &mut Browser, expr: &str, timeout: Duration) {
    let start = Instant::now();
    while b.eval(expr) != serde_json::Value::Bool(true) {
        assert!(start.elapsed() < timeout, "timed out: {expr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
