//! The fleet tools at 10,000 (or 100,000) gateways: a real Mosquitto with its
//! default limits holding every gateway's status and availability retained at
//! QoS 1, as gateways publish them (put there by one raw MQTT connection),
//! then `tend fleet status --json`, `tend fleet status` (the table) and `tend
//! fleet serve` (loaded, one page of `/api/devices`, a filter, `/metrics`),
//! each timed from outside, with the memory `fleet serve` holds, then a
//! stream of events.
//!
//! `cargo bench -p tend --bench fleet` (release build). `FLEET_BENCH_GATEWAYS`
//! sets the fleet's size (default 10,000; the README's figures are at 100,000).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tend_e2e::Mosquitto;
use tend_e2e::monitor::{FleetServe, http_get, median, proc_kib, publish_retained, publish_retained_at};

fn tend_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tend"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("FLEET_BENCH_GATEWAYS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    // A stock Mosquitto drops what a reader leaves past max_queued_messages
    // (1000, QoS 0 too): for a fleet past some 50,000 gateways the fleet
    // tools read the retained burst faster than most readers, but not
    // surely. First what a stock broker gives them, then the setting the
    // README's "Scaling a fleet" gives for a fleet this size.
    let stock = Mosquitto::start();
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let revs = ["3f2a9c01b7e4aa11d2f0c7a6b5e4d3c2b1a09f8e", "98c75931e683c1e8aa0b7c6d5e4f3a2b1c0d9e8f"];
    let mut messages = Vec::with_capacity(2 * n);
    for i in 0..n {
        let (phase, error) = match i % 100 {
            0 => ("rolled_back", "\"revision 98c75931e683 is unhealthy: check api: tcp 127.0.0.1:8080: refused\""),
            1 => ("failed", "\"apply of 98c75931e683 failed: /etc/myapp: Read-only file system\""),
            _ => ("synced", "null"),
        };
        let status = format!(
            r#"{{"agent_version":"0.1.0","device_id":"gw-{i:05}","error":{error},"fleet":"acme","last_good_revision":"{r}","last_sync":"{now}","phase":"{phase}","resources":{{"failed":0,"ready":12,"total":12}},"revision":"{r}","source":"ok","target_revision":"{r}"}}"#,
            r = revs[usize::from(i % 10 == 0)],
        );
        messages.push((format!("tend/v1/acme/gw-{i:05}/status"), status.into_bytes()));
        let online: &[u8] = if i % 50 == 7 { b"offline" } else { b"online" };
        messages.push((format!("tend/v1/acme/gw-{i:05}/availability"), online.to_vec()));
    }
    let t = Instant::now();
    publish_retained_at(stock.port, &messages, 1);
    println!("tend fleet benchmark: {n} gateways' status and availability retained at QoS 1");
    println!("  put on a stock Mosquitto (one raw connection):  {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);
    for _ in 0..3 {
        let out = Command::new(tend_bin()).args(["fleet", "status", "--mqtt", &stock.url()]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let said: Vec<&str> = text.lines().take_while(|l| !l.starts_with("  phase")).collect();
        println!(
            "  stock Mosquitto, fleet status says: {}",
            said.join(" ").split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    drop(stock);
    let broker = Mosquitto::start_with("max_queued_messages 0");
    publish_retained_at(broker.port, &messages, 1);
    println!("  with max_queued_messages 0 (the README's setting for a fleet this size):");

    let url = broker.url();
    let run = |args: &[&str]| -> (f64, usize, u64) {
        let t = Instant::now();
        let out = Command::new("/usr/bin/time")
            .arg("-f")
            .arg("%M")
            .arg(tend_bin())
            .args(["fleet", "status", "--mqtt", &url])
            .args(args)
            .stderr(Stdio::piped())
            .output()
            .expect("tend fleet status");
        let wall = t.elapsed().as_secs_f64();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rss: u64 = String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("0").parse().unwrap_or(0);
        (wall, out.stdout.len(), rss)
    };
    // Warm the page cache, then five runs each.
    run(&["--json"]);
    for (name, args) in [("fleet status --json", &["--json"][..]), ("fleet status (table)", &[][..])] {
        let runs: Vec<(f64, usize, u64)> = (0..5).map(|_| run(args)).collect();
        let wall = median(runs.iter().map(|r| r.0).collect());
        let bytes = runs[0].1;
        let rss = runs.iter().map(|r| r.2).max().unwrap();
        println!(
            "  {name:<24} (goal <= 1 s):   p50 {:.0} ms, {bytes} bytes out, peak RSS {:.1} MiB",
            wall * 1000.0,
            rss as f64 / 1024.0
        );
    }
    let json = Command::new(tend_bin()).args(["fleet", "status", "--mqtt", &url, "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["counts"]["gateways"], n, "every gateway read");
    assert_eq!(v["counts"]["by_phase"]["rolled_back"], n / 100, "every rolled back gateway counted");
    assert_eq!(v["counts"]["missing_status"], 0);

    // fleet serve: from its start to /api/devices answering with every gateway.
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let serve = FleetServe::start(dir.path(), &url, &[]);
    let ready = loop {
        let (code, _, body) = serve.get("/api/devices");
        if code == 200 {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if v["counts"]["gateways"] == n {
                break t.elapsed();
            }
        }
        assert!(t.elapsed() < Duration::from_secs(60), "fleet serve never had every gateway");
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("  fleet serve: start -> /api/devices with all (goal <= 1 s): {:.0} ms", ready.as_secs_f64() * 1000.0);
    let time = |path: &str| {
        let runs: Vec<(f64, usize)> = (0..10)
            .map(|_| {
                let t = Instant::now();
                let (code, _, body) = http_get(serve.port, path, &[]);
                assert_eq!(code, 200);
                (t.elapsed().as_secs_f64(), body.len())
            })
            .collect();
        (median(runs.iter().map(|r| r.0).collect()), runs[0].1)
    };
    for path in ["/api/devices?limit=500", "/api/devices?q=rolled_back&limit=500", "/metrics", "/"] {
        let (wall, bytes) = time(path);
        println!("  GET {path:<38} p50 {:>6.1} ms, {bytes} bytes", wall * 1000.0);
    }
    let pid = serve.pid();
    let mem =
        || (proc_kib(pid, "status", "VmRSS:") as f64 / 1024.0, proc_kib(pid, "smaps_rollup", "Pss:") as f64 / 1024.0);
    let (rss, pss) = mem();
    println!("  fleet serve memory at {n} gateways:            RSS {rss:.1} MiB, PSS {pss:.1} MiB");
    // A stream of events: 10 per gateway, as a busy hour would bring.
    let events: Vec<(String, Vec<u8>)> = (0..10 * n)
        .map(|i| {
            let e = format!(r#"{{"seq":{i},"kind":"drift_repaired","ts":"{now}","revision":"{}","operations":["update  /etc/myapp/app.conf"]}}"#, revs[0]);
            (format!("tend/v1/acme/gw-{:05}/events", i % n), e.into_bytes())
        })
        .collect();
    let t = Instant::now();
    publish_retained(broker.port, &events);
    let metric = |name: &str| -> f64 {
        let (_, _, body) = http_get(serve.port, "/metrics", &[]);
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let sent = events.len() as f64;
    while metric("tend_fleet_messages_total{kind=\"events\"} ") < sent * 0.99 && t.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let taken = metric("tend_fleet_messages_total{kind=\"events\"} ");
    let (rss, pss) = mem();
    println!(
        "  {} events streamed: {taken:.0} taken in {:.1} s; RSS {rss:.1} MiB, PSS {pss:.1} MiB; held {:.1} MiB (bound 256 MiB)",
        events.len(),
        t.elapsed().as_secs_f64(),
        metric("tend_fleet_memory_bytes ") / 1048576.0
    );
}
