//! A site that regains power together does not fetch together, and every
//! fleet-wide sync command is answered (issue 24, Build 3):
//! - 50 real daemons with a revision in their stores, started at the same
//!   instant against one git daemon: each fetches once, and the fetches are
//!   spread over `[source].jitter` (times read off the git daemon's log as
//!   it grows);
//! - 40 fleet-wide sync commands within one `announce_spread` get 40
//!   answers, one per command id.

use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tend_e2e::{Fleet, Gateway, GitDaemon, Mosquitto, Subscription, good_bundle, payloads};

#[test]
fn a_site_that_regains_power_together_spreads_its_first_fetches_over_the_jitter() {
    const N: usize = 50;
    const JITTER: u64 = 20;
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let fleet = Fleet::new(&srv, "fleet");
    for i in 0..N {
        fleet.write(&format!("devices/gw-{i:02}/files/etc/myapp/app.conf"), format!("gateway {i}\n"));
    }
    fleet.commit("v1");
    let log = tmp.path().join("git-daemon.log");
    let server = GitDaemon::start_logged(&srv, &log);
    // Each gateway applied v1 once: its store has a revision.
    let gateways: Vec<Gateway> = (0..N)
        .map(|i| {
            let gw = Gateway::with_source_keys(
                &tmp.path().join(format!("gw-{i:02}")),
                &server.url("fleet"),
                &format!("interval = \"1h\"\njitter = \"{JITTER}s\""),
                "",
            );
            let text = std::fs::read_to_string(&gw.config)
                .unwrap()
                .replace("device_id = \"gw-1\"", &format!("device_id = \"gw-{i:02}\""));
            std::fs::write(&gw.config, text).unwrap();
            gw.sync_ok();
            gw
        })
        .collect();
    let before = server.connections();
    assert_eq!(before, N, "one fetch each for the first revision");

    // Power back: every daemon at once.
    let started = Instant::now();
    let daemons: Vec<Child> = gateways
        .iter()
        .map(|gw| gw.command().arg("run").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
        .collect();
    let mut seen = Vec::new();
    while seen.len() < N {
        let n = server.connections() - before;
        while seen.len() < n {
            seen.push(started.elapsed());
        }
        assert!(started.elapsed() < Duration::from_secs(JITTER + 60), "{} of {N} fetched: {seen:?}", seen.len());
        std::thread::sleep(Duration::from_millis(50));
    }
    let span = *seen.last().unwrap() - seen[0];
    eprintln!("first fetches from {:?} to {:?} after the start ({span:?} apart)", seen[0], seen[N - 1]);
    // Uniform over 20 s, the 50 first fetches all fall in 10 s with a
    // probability of 50 x 2^-49; without the jitter they all come within
    // the time the 50 starts take (a few seconds here, loaded or not).
    assert!(span >= Duration::from_secs(JITTER / 2), "first fetches within {span:?}: {seen:?}");
    // One each (interval 1h): none twice.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.connections() - before, N);
    for mut d in daemons {
        let _ = d.kill();
        let _ = d.wait();
    }
}

#[test]
fn forty_fleet_wide_syncs_within_one_spread_get_forty_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    good_bundle(&fleet);
    fleet.commit("v1");
    let gw = Gateway::with_source_keys(
        tmp.path(),
        &fleet.url(),
        "interval = \"1h\"\nannounce_spread = \"3s\"",
        &format!("[mqtt]\nurl = \"{}\"\n", broker.url()),
    );
    let events = Subscription::start(&broker, "tend/v1/test/gw-1/events", "site-events");
    let _daemon = gw.start_daemon_logging("info");
    gw.wait_status("v1", Duration::from_secs(30), |s| s["phase"] == "synced");
    let ids: Vec<String> = (0..40).map(|i| format!("all-{i}")).collect();
    for id in &ids {
        broker.publish("tend/v1/test/_all/cmd", &format!("{{\"cmd\":\"sync\",\"id\":\"{id}\"}}"));
    }
    let answered = |l: &[String]| -> BTreeSet<String> {
        payloads(l)
            .iter()
            .filter(|e| e["kind"] == "command" && e["cmd"] == "sync" && e["ok"] == true)
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect()
    };
    let l = events.wait("40 answers", Duration::from_secs(30), |l| answered(l).len() == 40);
    assert_eq!(answered(&l), ids.iter().cloned().collect::<BTreeSet<_>>());
}

/// A fleet-wide sync the Git server turns away (down, or killing
/// connections at its limit, as git daemon does past --max-connections) is
/// retried with the poll's backoff, not left to the next poll an interval
/// (here an hour) later.
#[test]
fn a_fleet_wide_sync_the_server_turned_away_is_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let srv = tmp.path().join("srv");
    let fleet = Fleet::new(&srv, "fleet");
    good_bundle(&fleet);
    fleet.commit("v1");
    let server = GitDaemon::start(&srv);
    let port = server.port;
    let gw = Gateway::with_source_keys(
        tmp.path(),
        &server.url("fleet"),
        "interval = \"1h\"\njitter = \"0s\"\nannounce_spread = \"1s\"",
        &format!(
            "[mqtt]\nurl = \"{}\"\n[apply]\nretry = {{ limit = 5, backoff = \"2s\", factor = 1, max = \"2s\" }}\n",
            broker.url()
        ),
    );
    let events = Subscription::start(&broker, "tend/v1/test/gw-1/events", "retry-events");
    let daemon = gw.start_daemon_logging("info");
    gw.wait_status("v1", Duration::from_secs(30), |s| s["phase"] == "synced");
    drop(server);
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "port = 503\n");
    let v2 = fleet.commit("v2");
    broker.publish("tend/v1/test/_all/cmd", "{\"cmd\":\"sync\",\"id\":\"turned-away\"}");
    events.wait("the failed answer", Duration::from_secs(30), |l| {
        payloads(l).iter().any(|e| e["kind"] == "command" && e["id"] == "turned-away" && e["ok"] == false)
    });
    let _server = GitDaemon::start_on(&srv, port);
    gw.wait_status("v2 applied by the retry", Duration::from_secs(30), |s| s["revision"] == v2.as_str());
    assert!(daemon.log_text().contains("fleet command sync failed"), "{}", daemon.log_text());
}
