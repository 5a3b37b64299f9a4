//! The fleet tools at 10,000 gateways: a real Mosquitto holding 10,000
//! retained statuses and availabilities (put there by one raw MQTT connection),
//! then `tend fleet status --json`, `tend fleet status` (the table) and `tend
//! fleet serve` (`/api/devices` answering with all of them, `/metrics`), each
//! timed from outside, with the memory `fleet serve` holds.
//!
//! `cargo bench -p tend --bench fleet` (release build). `FLEET_BENCH_GATEWAYS`
//! sets the fleet's size (default 10,000).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tend_e2e::Mosquitto;
use tend_e2e::monitor::{FleetServe, http_get, median, proc_kib, publish_retained};

fn tend_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tend"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("FLEET_BENCH_GATEWAYS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let broker = Mosquitto::start();
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
    publish_retained(broker.port, &messages);
    println!("tend fleet benchmark: {n} gateways' retained status and availability in a real Mosquitto");
    println!("  put on the broker (one raw connection):        {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);

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
    for path in ["/api/devices", "/metrics", "/"] {
        let (wall, bytes) = time(path);
        println!("  GET {path:<14} p50 {:>6.1} ms, {bytes} bytes", wall * 1000.0);
    }
    let pid = serve.pid();
    println!(
        "  fleet serve memory at {n} gateways:            RSS {:.1} MiB, PSS {:.1} MiB",
        proc_kib(pid, "status", "VmRSS:") as f64 / 1024.0,
        proc_kib(pid, "smaps_rollup", "Pss:") as f64 / 1024.0
    );
}
