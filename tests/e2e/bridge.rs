//! Site brokers bridged to the central one (issue 24, Build 4), with the
//! bridge of `examples/site-broker/mosquitto.conf` and real Mosquitto
//! processes on loopback: gateways on a site broker appear in `fleet serve`
//! on the central one; a gateway's Last Will crosses the bridge; a bridge
//! outage of a minute while gateways apply commits loses no event and keeps
//! their order; the circuit breaker trips across the bridges (canaries on
//! site A, the later wave on site B).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tend_e2e::monitor::FleetServe;
use tend_e2e::{Fleet, Gateway, Mosquitto, Subscription, payloads, shared_commit, shared_gateway};

/// A site broker bridged to `central` with the example's bridge settings
/// (the site's own listener, credentials and CA are the test's).
fn site(central: &Mosquitto, name: &str) -> Mosquitto {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site-broker/mosquitto.conf"))
            .unwrap();
    let mut bridge = Vec::new();
    let mut in_bridge = false;
    for line in example.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        in_bridge |= line.starts_with("connection ");
        if line.starts_with("max_queued_messages") {
            bridge.push(line.to_owned());
        }
        if !in_bridge {
            continue;
        }
        let key = line.split_whitespace().next().unwrap_or("");
        bridge.push(match key {
            "address" => format!("address 127.0.0.1:{}", central.port),
            "remote_clientid" => format!("remote_clientid site-{name}"),
            // Loopback, no TLS, no accounts in the test; quicker retries.
            "bridge_cafile" | "remote_username" | "remote_password" => continue,
            "restart_timeout" => "restart_timeout 1 2".into(),
            "keepalive_interval" => "keepalive_interval 5".into(),
            _ => line.to_owned(),
        });
    }
    assert!(bridge.iter().any(|l| l == "topic tend/v1/# both 1"), "{bridge:?}");
    Mosquitto::start_with(&bridge.join("\n"))
}

fn device<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["devices"].as_array().unwrap().iter().find(|d| d["device_id"] == id).unwrap_or(&Value::Null)
}

#[test]
fn a_site_behind_a_bridge_shows_centrally_and_loses_nothing_in_an_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut central = Mosquitto::start();
    let site_a = site(&central, "a");
    let fleet = Fleet::new(tmp.path(), "fleet");
    let v1 = shared_commit(&fleet, "1", "[\"true\"]", "");
    let events = Subscription::start(&central, "tend/v1/test/+/events", "central-events");
    let gws: Vec<Gateway> =
        ["gw-a1", "gw-a2"].iter().map(|d| shared_gateway(tmp.path(), &fleet, &site_a.url(), d, "all", "3s")).collect();
    let mut daemons: Vec<_> = gws.iter().map(|g| Some(g.start_daemon())).collect();
    let serve = FleetServe::start(tmp.path(), &central.url(), &[]);
    serve.wait("both site gateways, synced, in the central view", Duration::from_secs(60), |v| {
        ["gw-a1", "gw-a2"].iter().all(|d| {
            device(v, d)["phase"] == "synced"
                && device(v, d)["revision"] == v1.as_str()
                && device(v, d)["availability"] == "online"
        })
    });

    // A gateway dies: its Last Will, published by the site broker, reaches
    // the center.
    daemons[1].take().unwrap().kill();
    serve.wait("gw-a2 offline in the central view", Duration::from_secs(30), |v| {
        device(v, "gw-a2")["availability"] == "offline"
    });

    // The link to the center is down for a minute while gw-a1 applies three
    // commits; every event reaches the center afterwards, in order.
    central.stop();
    let mut commits = Vec::new();
    for n in 2..5 {
        commits.push(shared_commit(&fleet, &n.to_string(), "[\"true\"]", ""));
        let c = commits.last().unwrap().clone();
        gws[0].wait_status("applied during the outage", Duration::from_secs(30), |s| {
            s["revision"] == c.as_str() && s["phase"] == "synced"
        });
    }
    std::thread::sleep(Duration::from_secs(60));
    central.restart();
    let last = commits.last().unwrap().clone();
    let lines = events.wait("the outage's events at the center", Duration::from_secs(120), |l| {
        payloads(l)
            .iter()
            .any(|e| e["device_id"] == "gw-a1" && e["kind"] == "healthy" && e["revision"] == last.as_str())
    });
    let seqs: Vec<u64> =
        payloads(&lines).iter().filter(|e| e["device_id"] == "gw-a1").map(|e| e["seq"].as_u64().unwrap()).collect();
    let mut distinct = seqs.clone();
    distinct.dedup();
    let (first, last_seq) = (distinct[0], *distinct.last().unwrap());
    let want: Vec<u64> = (first..=last_seq).collect();
    assert_eq!(distinct, want, "events lost or out of order across the bridge: {seqs:?}");
    for c in &commits {
        for kind in ["sync_started", "applied", "healthy"] {
            assert!(
                payloads(&lines)
                    .iter()
                    .any(|e| e["device_id"] == "gw-a1" && e["kind"] == kind && e["revision"] == c.as_str()),
                "{kind} of {c} did not reach the center"
            );
        }
    }
    serve.wait("gw-a1 on the last commit in the central view", Duration::from_secs(60), |v| {
        device(v, "gw-a1")["revision"] == last.as_str()
    });
    drop(daemons);
}

#[test]
fn the_circuit_breaker_trips_across_bridges() {
    let tmp = tempfile::tempdir().unwrap();
    let central = Mosquitto::start();
    let (site_a, site_b) = (site(&central, "a"), site(&central, "b"));
    let fleet = Fleet::new(tmp.path(), "fleet");
    let v1 = shared_commit(&fleet, "1", "[\"true\"]", "");
    let devices = [
        ("gw-a1", "canary", &site_a),
        ("gw-a2", "canary", &site_a),
        ("gw-b1", "all", &site_b),
        ("gw-b2", "all", &site_b),
    ];
    let gws: Vec<Gateway> =
        devices.iter().map(|(d, w, b)| shared_gateway(tmp.path(), &fleet, &b.url(), d, w, "3s")).collect();
    let _daemons: Vec<_> = gws.iter().map(Gateway::start_daemon).collect();
    for gw in &gws {
        gw.wait_status("v1", Duration::from_secs(60), |s| s["phase"] == "synced" && s["revision"] == v1.as_str());
    }
    // v2 fails on the canaries (site A); the later wave (site B) is due
    // 40 s after the commit and holds it once the reports crossed both bridges.
    let waves = "[rollout]\nwaves = [{ name = \"canary\", percent = 50 }, { name = \"all\", percent = 100, after = \"40s\" }]\nmax_failed = 2\n";
    let v2 = shared_commit(&fleet, "2", "[\"false\"]", waves);
    for gw in &gws[..2] {
        gw.wait_status("a canary rolled v2 back", Duration::from_secs(60), |s| {
            s["phase"] == "rolled_back" && s["target_revision"] == v2.as_str()
        });
    }
    for gw in &gws[2..] {
        let s = gw.wait_status("held on site B", Duration::from_secs(60), |s| s["phase"] == "held");
        assert!(s["error"].as_str().unwrap().contains("failed on 2 gateways"), "{s}");
        assert_eq!(s["revision"], v1);
    }
    // The next good commit reaches every gateway, on both sites.
    let v3 = shared_commit(&fleet, "3", "[\"true\"]", "");
    for gw in &gws {
        gw.wait_status("v3", Duration::from_secs(60), |s| s["phase"] == "synced" && s["revision"] == v3.as_str());
    }
}
