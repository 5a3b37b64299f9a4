//! The fleet's whole retained set, whatever the broker's queue limits: 10,000
//! gateways' statuses and availabilities retained at QoS 1 (as gateways
//! publish them) on a Mosquitto with its default limits. Read at QoS 1, a
//! broker with `max_inflight_messages` 20 and `max_queued_messages` 1000
//! dropped most of the burst and `tend fleet status` listed 940 of 10,000
//! gateways without a word; read at QoS 0 every one is there. A gateway the
//! broker told of by one topic only is counted as such and said.

use std::process::Command;

use tend_e2e::Mosquitto;
use tend_e2e::monitor::publish_retained_at;

const N: usize = 10_000;

fn status(i: usize, phase: &str) -> Vec<u8> {
    format!(
        r#"{{"agent_version":"0.1.0","device_id":"gw-{i:05}","error":null,"fleet":"acme","last_good_revision":"a","last_sync":"{now}","phase":"{phase}","resources":{{"failed":0,"ready":1,"total":1}},"revision":"{rev}","source":"ok","target_revision":"a"}}"#,
        now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        rev = if i.is_multiple_of(10) { "b" } else { "a" },
    )
    .into_bytes()
}

fn fleet_status(broker: &Mosquitto, args: &[&str]) -> std::process::Output {
    Command::new(tend_e2e::tend_bin())
        .args(["fleet", "status", "--mqtt", &broker.url()])
        .args(args)
        .output()
        .expect("tend fleet status")
}

#[test]
fn ten_thousand_gateways_retained_at_qos_1_are_all_counted() {
    let broker = Mosquitto::start();
    let mut messages = Vec::with_capacity(2 * N);
    for i in 0..N {
        let phase = if i % 100 == 0 { "rolled_back" } else { "synced" };
        messages.push((format!("tend/v1/acme/gw-{i:05}/status"), status(i, phase)));
        let online: &[u8] = if i % 50 == 7 { b"offline" } else { b"online" };
        messages.push((format!("tend/v1/acme/gw-{i:05}/availability"), online.to_vec()));
    }
    publish_retained_at(broker.port, &messages, 1);

    let out = fleet_status(&broker, &["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v["counts"];
    assert_eq!(v["devices"].as_array().unwrap().len(), N, "gateways listed");
    assert_eq!(c["gateways"], N);
    assert_eq!(c["online"], N - N / 50);
    assert_eq!(c["offline"], N / 50);
    assert_eq!(c["availability_unknown"], 0);
    assert_eq!(c["by_phase"]["rolled_back"], N / 100);
    assert_eq!(c["by_phase"]["synced"], N - N / 100);
    assert_eq!(c["by_phase"]["unknown"], 0);
    assert_eq!(c["by_revision"][1], serde_json::json!(["b", N / 10]));
    assert_eq!((c["missing_status"].as_u64(), c["missing_availability"].as_u64()), (Some(0), Some(0)));
    let text = fleet_status(&broker, &[]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with(&format!("{N} gateways: {} online, {} offline; ", N - N / 50, N / 50)), "{text}");
    assert!(!text.contains("incomplete"), "{text}");
}

#[test]
fn gateways_known_by_one_topic_only_are_counted_and_said() {
    let broker = Mosquitto::start();
    let mut messages = Vec::new();
    for i in 0..20 {
        messages.push((format!("tend/v1/acme/gw-{i:05}/status"), status(i, "synced")));
        messages.push((format!("tend/v1/acme/gw-{i:05}/availability"), b"online".to_vec()));
    }
    // Three whose availability, and two whose status, never arrive.
    for i in 20..23 {
        messages.push((format!("tend/v1/acme/gw-{i:05}/status"), status(i, "synced")));
    }
    for i in 23..25 {
        messages.push((format!("tend/v1/acme/gw-{i:05}/availability"), b"online".to_vec()));
    }
    publish_retained_at(broker.port, &messages, 1);
    let out = fleet_status(&broker, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["counts"]["gateways"], 25);
    assert_eq!(v["counts"]["missing_status"], 2);
    assert_eq!(v["counts"]["missing_availability"], 3);
    assert_eq!(v["counts"]["by_phase"]["unknown"], 2);
    let text = fleet_status(&broker, &[]);
    let text = String::from_utf8_lossy(&text.stdout);
    let joined = text.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    assert!(
        text.starts_with("25 gateways: ") && text.lines().nth(1).is_some_and(|l| l.starts_with("! incomplete: ")),
        "{text}"
    );
    assert!(
        joined.contains("! incomplete: 2 gateway(s) came without their status and 3 without their availability"),
        "{text}"
    );
    assert!(joined.contains("max_queued_messages"), "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
}
