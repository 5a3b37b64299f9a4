//! The fleet at scale on one machine (issue 16): N real `tend run` daemons
//! (release build), one real `git daemon` with its default limit of 32
//! clients, one real Mosquitto. In one run it prints:
//!
//! - start → every gateway applied the first revision;
//! - `tend fleet announce` → every gateway applied the new revision;
//! - `tend fleet sync --all` → every gateway applied;
//! - the fleet's total PSS and the broker's connections;
//! - Git requests during the idle period with `interval = "1h"` and
//!   announcements, beside the same number of gateways polling every 10 s
//!   (their own git daemon, counted the same way);
//! - the broker stopped for the outage period while the polling fleet keeps
//!   syncing commits: after it returns, whether every event reached a
//!   persistent subscriber in per-gateway `seq` order, none lost, and whether
//!   every retained status is current.
//!
//! `cargo bench -p tend --bench scale [-- --gateways N]` (200 by default,
//! or `SCALE_GATEWAYS`). Environment: `SCALE_IDLE_S` (600), `SCALE_OUTAGE_S`
//! (600; 0 skips the outage), `SCALE_POLLING` (1; 0 leaves out the polling
//! fleet and the outage, as the 1,000-gateway run of the README does).
//!
//! Before the fleet starts, the bench measures how many fetches a second the
//! git daemon sustains here (16 clients fetching in a loop for 10 s) and sets
//! every gateway's `announce_spread` to gateways / that rate: the formula the
//! README gives for sizing a fleet's spread to its Git server.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tend_e2e::monitor::proc_kib;
use tend_e2e::{Fleet, Gateway, GitDaemon, Mosquitto, Subscription, tend_bin};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Fetches a second the git daemon at `url` sustains: 16 clients each
/// fetching the branch (depth 1) into its own repository in a loop, 10 s.
fn fetch_rate(dir: &Path, url: &str) -> f64 {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|i| {
            let (done, url, repo) = (done.clone(), url.to_owned(), dir.join(format!("rate-{i}")));
            std::thread::spawn(move || {
                let git = |args: &[&str]| {
                    Command::new("git")
                        .arg("-C")
                        .arg(&repo)
                        .args(args)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                };
                std::fs::create_dir_all(&repo).unwrap();
                let _ = git(&["init", "-q"]);
                while t.elapsed() < Duration::from_secs(10) {
                    if git(&["fetch", "-q", "--depth", "1", &url, "main"]).is_ok_and(|s| s.success()) {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    done.load(std::sync::atomic::Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

/// The bundle every gateway shares.
fn shared(fleet: &Fleet, v: &str) -> String {
    fleet.write("shared/files/etc/myapp/app.conf", format!("version = {v}\n"));
    fleet.commit(v)
}

/// Start `n` gateways of fleet `name` following `git`, each polling every
/// `interval`, without waiting for any of them.
fn start_fleet(
    dir: &Path,
    name: &str,
    n: usize,
    git: &GitDaemon,
    broker: &Mosquitto,
    interval: &str,
    spread: Duration,
) -> Vec<(Gateway, Child)> {
    (0..n)
        .map(|i| {
            let dev = format!("gw-{i:04}");
            let gw = Gateway::new(
                &dir.join(name).join(&dev),
                &git.url("fleet"),
                &format!("[mqtt]\nurl = \"{}\"\nhealth_interval = \"1h\"\n", broker.url()),
            );
            let text = std::fs::read_to_string(&gw.config)
                .unwrap()
                .replace("device_id = \"gw-1\"", &format!("device_id = \"{dev}\""))
                .replace("fleet = \"test\"", &format!("fleet = \"{name}\""))
                .replace(
                    "path = \"devices/{device_id}\"",
                    &format!(
                        "path = \"shared\"\ninterval = \"{interval}\"\njitter = \"0s\"\nannounce_spread = \"{}ms\"",
                        spread.as_millis()
                    ),
                );
            std::fs::write(&gw.config, text).unwrap();
            let log = std::fs::File::create(gw.dir.join("daemon.log")).unwrap();
            let child =
                gw.command().arg("run").env("TEND_LOG", "info").stdout(Stdio::null()).stderr(log).spawn().unwrap();
            (gw, child)
        })
        .collect()
}

fn stop_fleet(daemons: Vec<(Gateway, Child)>) {
    for (_, c) in &daemons {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
    }
    for (_, mut c) in daemons {
        let _ = c.wait();
    }
}

/// The latest retained-or-live status of each gateway of `fleet`, from a
/// subscription on `tend/v1/+/+/status`.
fn statuses(sub: &Subscription, fleet: &str) -> HashMap<String, Value> {
    let prefix = format!("tend/v1/{fleet}/");
    let mut latest = HashMap::new();
    for line in sub.lines() {
        let Some((topic, payload)) = line.split_once(' ') else { continue };
        let Some(dev) = topic.strip_prefix(&prefix).and_then(|t| t.strip_suffix("/status")) else { continue };
        if let Ok(v) = serde_json::from_str::<Value>(payload) {
            latest.insert(dev.to_owned(), v);
        }
    }
    latest
}

/// Seconds until every one of the `n` gateways of `fleet` reports `revision`
/// applied (`None`: not within `limit`).
fn converge(sub: &Subscription, fleet: &str, n: usize, revision: &str, since: Instant, limit: Duration) -> Option<f64> {
    loop {
        let done =
            statuses(sub, fleet).values().filter(|s| s["revision"] == revision && s["phase"] == "synced").count();
        if done == n {
            return Some(since.elapsed().as_secs_f64());
        }
        if since.elapsed() > limit {
            println!("    ({done} of {n} after {} s)", limit.as_secs());
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn shown(t: Option<f64>) -> String {
    t.map_or_else(|| "not converged".to_owned(), |t| format!("{t:.1} s"))
}

fn fleet_cmd(broker: &Mosquitto, args: &[&str]) {
    let out = Command::new(tend_bin()).arg("fleet").args(args).args(["--mqtt", &broker.url()]).output().unwrap();
    assert!(out.status.success(), "tend fleet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Fetches the git daemon turned away so far: connections it dropped at
/// its client limit (its log says "Too many children"), and connections it
/// cut to make room (past --max-connections it kills a child from the same
/// address, which says nothing in its log; the gateway's says "the server
/// closed the connection"), counted in the daemons' logs under `dir`.
fn refusals(git: &GitDaemon, dir: &Path) -> usize {
    let log = git.log.as_ref().expect("logged");
    let dropped =
        std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains("Too many children")).count();
    let cut: usize = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|g| {
                    std::fs::read_to_string(g.path().join("gateway/daemon.log"))
                        .unwrap_or_default()
                        .lines()
                        .filter(|l| l.contains("WARN") || l.contains("failed"))
                        .filter(|l| l.contains("the server closed the connection"))
                        .count()
                })
                .sum()
        })
        .unwrap_or(0);
    dropped + cut
}

/// The broker's CPU time (s) and RSS (MiB), from /proc.
fn broker_usage(broker: &Mosquitto) -> (f64, f64) {
    let pid = broker.pid();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(Vec::new(), |(_, r)| r.split_whitespace().collect());
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks / 100.0, proc_kib(pid, "status", "VmRSS:") as f64 / 1024.0)
}

fn pss_mib(daemons: &[(Gateway, Child)]) -> f64 {
    daemons.iter().map(|(_, c)| proc_kib(c.id(), "smaps_rollup", "Pss:")).sum::<i64>() as f64 / 1024.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let flag = args.iter().position(|a| a == "--gateways").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok());
    let n = flag.unwrap_or_else(|| env("SCALE_GATEWAYS", 200)) as usize;
    let idle = Duration::from_secs(env("SCALE_IDLE_S", 600));
    let outage = Duration::from_secs(env("SCALE_OUTAGE_S", 600));
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let git = GitDaemon::start_logged(tmp.path(), &tmp.path().join("git-announced.log"));
    let mut broker = Mosquitto::start();
    let status = Subscription::start(&broker, "tend/v1/+/+/status", "scale-status");
    let events = Subscription::start(&broker, "tend/v1/+/+/events", "scale-events");
    println!(
        "tend scale benchmark: {n} real `tend run` daemons, one git daemon (default --max-connections 32), one Mosquitto (default limits)"
    );

    let v1 = shared(&fleet, "1");
    let rate = fetch_rate(tmp.path(), &git.url("fleet"));
    let spread = Duration::from_secs_f64((n as f64 / rate).max(1.0));
    println!(
        "  the git daemon sustains {rate:.0} fetches/s here: announce_spread = {n} / {rate:.0} = {:.1} s",
        spread.as_secs_f64()
    );
    let gateways_dir = tmp.path().join("announced");
    let refused0 = refusals(&git, &gateways_dir);
    let t = Instant::now();
    let announced = start_fleet(tmp.path(), "announced", n, &git, &broker, "1h", spread);
    let first = converge(&status, "announced", n, &v1, t, Duration::from_secs(300));
    println!("  start -> every gateway applied the first revision:      {}", shown(first));

    let v2 = shared(&fleet, "2");
    let before = git.connections();
    let t = Instant::now();
    fleet_cmd(&broker, &["announce", "--fleet", "announced", &v2]);
    let a = converge(&status, "announced", n, &v2, t, Duration::from_secs(120));
    println!(
        "  tend fleet announce -> every gateway applied (goal <= 20 s): {}, {} Git requests, at least {} turned away by the git daemon",
        shown(a),
        git.connections() - before,
        refusals(&git, &gateways_dir) - refused0
    );

    let v3 = shared(&fleet, "3");
    let before = git.connections();
    let t = Instant::now();
    fleet_cmd(&broker, &["sync", "--fleet", "announced", "--all"]);
    let refused1 = refusals(&git, &gateways_dir);
    let s = converge(&status, "announced", n, &v3, t, Duration::from_secs(120));
    println!(
        "  tend fleet sync --all -> every gateway applied (goal <= 20 s): {}, {} Git requests, at least {} turned away by the git daemon",
        shown(s),
        git.connections() - before,
        refusals(&git, &gateways_dir) - refused1
    );
    // The fleet as the fleet tools read it off the broker.
    let out = Command::new(tend_bin())
        .args(["fleet", "status", "--json", "--fleet", "announced", "--mqtt", &broker.url()])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    println!(
        "  tend fleet status: {} gateways listed, {} synced on the last revision, {} online, warning: {}",
        v["devices"].as_array().map_or(0, Vec::len),
        v["devices"]
            .as_array()
            .map_or(0, |d| d.iter().filter(|d| d["phase"] == "synced" && d["revision"] == v3.as_str()).count()),
        v["counts"]["online"],
        v["counts"]["missing_status"].as_u64().unwrap_or(0) + v["counts"]["missing_availability"].as_u64().unwrap_or(0)
            > 0
    );
    let (cpu, rss) = broker_usage(&broker);
    println!("  the broker: {cpu:.1} s of CPU so far, RSS {rss:.1} MiB");
    std::thread::sleep(Duration::from_secs(11)); // $SYS figures come every 10 s
    let clients = broker.read_one("$SYS/broker/clients/connected", &[], 15).unwrap_or_default();
    println!(
        "  the fleet's total PSS: {:.1} MiB ({:.2} MiB a gateway); broker connections: {clients}",
        pss_mib(&announced),
        pss_mib(&announced) / n as f64
    );

    if env("SCALE_POLLING", 1) == 0 {
        // Idle, the announced fleet alone (no polling fleet beside it).
        let a0 = git.connections();
        std::thread::sleep(idle);
        println!(
            "  Git requests in {} idle s: {} with announcements and interval 1h (goal 0)",
            idle.as_secs(),
            git.connections() - a0
        );
        stop_fleet(announced);
        return;
    }
    // Idle: the announced fleet, beside as many gateways polling every 10 s.
    let poll_git = GitDaemon::start_logged(tmp.path(), &tmp.path().join("git-polling.log"));
    let polling = start_fleet(tmp.path(), "polling", n, &poll_git, &broker, "10s", spread);
    let p = converge(&status, "polling", n, &v3, Instant::now(), Duration::from_secs(300));
    println!("  a second fleet polling every 10 s started: {}", shown(p));
    let (a0, p0) = (git.connections(), poll_git.connections());
    std::thread::sleep(idle);
    println!(
        "  Git requests in {} idle s: {} with announcements and interval 1h (goal 0), {} polling every 10 s",
        idle.as_secs(),
        git.connections() - a0,
        poll_git.connections() - p0
    );
    stop_fleet(announced);

    if outage.is_zero() {
        stop_fleet(polling);
        return;
    }
    // The broker away while the polling fleet keeps applying commits.
    broker.stop();
    let t = Instant::now();
    let mut last = v3.clone();
    let mut commits = 0;
    while t.elapsed() < outage {
        std::thread::sleep(Duration::from_secs(60).min(outage.saturating_sub(t.elapsed())));
        commits += 1;
        last = shared(&fleet, &format!("outage-{commits}"));
    }
    broker.restart();
    let back = Instant::now();
    let c = converge(&status, "polling", n, &last, back, Duration::from_secs(300));
    // Every gateway's events up to its `healthy` for the last commit.
    let want_last = |lines: &[String]| {
        let per = per_device(lines, "polling");
        per.len() == n
            && per.values().all(|evs| evs.iter().any(|e| e["kind"] == "healthy" && e["revision"] == last.as_str()))
    };
    let start = Instant::now();
    while !want_last(&events.lines()) && start.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let drained = back.elapsed().as_secs_f64();
    let per = per_device(&events.lines(), "polling");
    let (mut total, mut out_of_order, mut gaps, mut missing_last) = (0, 0, 0, 0);
    for evs in per.values() {
        total += evs.len();
        let seqs: Vec<u64> = evs.iter().filter_map(|e| e["seq"].as_u64()).collect();
        out_of_order += seqs.windows(2).filter(|w| w[1] <= w[0]).count();
        gaps += seqs.windows(2).filter(|w| w[1] > w[0] + 1).map(|w| (w[1] - w[0] - 1) as usize).sum::<usize>();
        if !evs.iter().any(|e| e["kind"] == "healthy" && e["revision"] == last.as_str()) {
            missing_last += 1;
        }
    }
    let current = statuses(&status, "polling").values().filter(|s| s["revision"] == last.as_str()).count();
    println!(
        "  broker stopped {} s while {commits} commits landed on {n} gateways polling every 10 s",
        outage.as_secs()
    );
    println!(
        "  after it returned: {total} events from {} gateways in {drained:.1} s; {gaps} lost, {out_of_order} out of seq order, {missing_last} without the last commit's healthy; {current} of {n} retained statuses current (converged: {})",
        per.len(),
        shown(c)
    );
    stop_fleet(polling);
}

/// Each gateway's events of `fleet`, in the order received.
fn per_device(lines: &[String], fleet: &str) -> BTreeMap<String, Vec<Value>> {
    let prefix = format!("tend/v1/{fleet}/");
    let mut per: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in lines {
        let Some((topic, payload)) = line.split_once(' ') else { continue };
        let Some(dev) = topic.strip_prefix(&prefix).and_then(|t| t.strip_suffix("/events")) else { continue };
        if let Ok(v) = serde_json::from_str::<Value>(payload) {
            per.entry(dev.to_owned()).or_default().push(v);
        }
    }
    per
}
