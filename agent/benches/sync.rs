//! Benchmark: a 1,000-file bundle from a file:// repository.
//!
//! Prints: the first sync, the no-op sync (the branch did not move; target
//! ≤ 20 ms), the peak RSS of a sync in a fresh process, and, in the same run, the
//! same no-op done the classic way — `git fetch` + `rsync -a --checksum` — for
//! comparison. Run with `cargo bench -p tend --bench sync`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tend::config::Config;
use tend::sync::{Agent, SyncOptions};

const FILES: usize = 1000;
const ROUNDS: usize = 30;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=bench", "-c", "user.email=bench@example.com"])
        .args(args)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn config(dir: &Path, fleet: &Path) -> Config {
    let text = format!(
        "device_id = \"gw-1\"\nstate_dir = \"{}\"\n[source]\nurl = \"file://{}\"\n[files]\nroot = \"{}\"\nallow = [\"/etc/myapp\"]\n",
        dir.join("state").display(),
        fleet.display(),
        dir.join("root").display()
    );
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    Config::from_str(&text, &path).unwrap()
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!("p50 {:.2} ms, p90 {:.2} ms, min {:.2} ms", ms(v[v.len() / 2]), ms(v[v.len() * 9 / 10]), ms(v[0]))
}

/// Peak RSS (KiB) of the children this process has waited for.
fn children_max_rss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).map(|u| u.max_rss()).unwrap_or(-1)
}

fn main() {
    // `--child CONFIG`: one sync in a fresh process, for its peak RSS.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let path = Path::new(&args[i + 1]);
        let agent = Agent::open(Config::load(path).unwrap()).unwrap();
        agent.sync(SyncOptions::default()).unwrap();
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }

    let tmp = tempfile::tempdir().unwrap();
    let fleet = tmp.path().join("fleet");
    let files = fleet.join("devices/gw-1/files/etc/myapp");
    for i in 0..FILES {
        let p = files.join(format!("d{:02}/f{i:04}.conf", i % 25));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let line = format!("key_{i} = \"value {i}\"\n");
        std::fs::write(&p, line.repeat(40 + i % 100)).unwrap();
    }
    git(tmp.path(), &["init", "-q", "-b", "main", "fleet"]);
    git(&fleet, &["add", "-A"]);
    git(&fleet, &["commit", "-qm", "bench"]);
    let bytes: u64 = walk_size(&files);

    // tend, in process.
    let gw = tmp.path().join("gw");
    let cfg = config(&gw, &fleet);
    let agent = Agent::open(cfg).unwrap();
    let t = Instant::now();
    let first = agent.sync(SyncOptions::default()).unwrap();
    let first_time = t.elapsed();
    assert_eq!(first.plan.counts().0, FILES);
    let mut noop = Vec::new();
    let mut noop_plan = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = agent.sync(SyncOptions::default()).unwrap();
        noop.push(t.elapsed());
        noop_plan.push(Duration::from_secs_f64((r.timings.render_ms + r.timings.plan_ms) / 1000.0));
        assert!(r.plan.is_empty() && !r.received_pack);
    }
    drop(agent);

    // Peak RSS of a first sync and of a no-op sync, each in a fresh process.
    let exe = std::env::current_exe().unwrap();
    let gw2 = tmp.path().join("gw2");
    config(&gw2, &fleet);
    let child = |cfg: &Path| {
        let st = Command::new(&exe).arg("--child").arg(cfg).status().unwrap();
        assert!(st.success());
        children_max_rss_kib()
    };
    let rss_first = child(&gw2.join("agent.toml"));
    let t = Instant::now();
    let rss_noop = child(&gw2.join("agent.toml")).max(rss_first);
    let noop_process = t.elapsed();

    // The classic way: git fetch in a clone + rsync --checksum of the files.
    let clone = tmp.path().join("clone");
    let out = Command::new("git")
        .arg("clone")
        .arg("-q")
        .arg("--depth=1")
        .arg(format!("file://{}", fleet.display()))
        .arg(&clone)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dest = tmp.path().join("rsync-root");
    std::fs::create_dir_all(&dest).unwrap();
    let rsync = |q: bool| {
        let mut c = Command::new("rsync");
        c.arg("-a").arg("--checksum").arg(format!("{}/", clone.join("devices/gw-1/files").display())).arg(&dest);
        if q {
            c.arg("-q");
        }
        let st = c.status().expect("rsync (apt-get install rsync)");
        assert!(st.success());
    };
    rsync(true);
    let mut classic = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let st = Command::new("git").arg("-C").arg(&clone).args(["fetch", "-q", "origin", "main"]).status().unwrap();
        assert!(st.success());
        rsync(true);
        classic.push(t.elapsed());
    }

    println!(
        "tend sync benchmark: {FILES} files, {:.1} MiB, file:// source, {ROUNDS} rounds",
        bytes as f64 / 1048576.0
    );
    println!("  first sync (fetch, render, store, write):  {:.1} ms", first_time.as_secs_f64() * 1000.0);
    println!("  no-op sync, in process (target <= 20 ms):  {}", stats(noop));
    println!("    of which render + plan:                  {}", stats(noop_plan));
    println!("  no-op sync in a fresh process (open+sync): {:.1} ms", noop_process.as_secs_f64() * 1000.0);
    println!("  peak RSS of a sync process:                {:.1} MiB", rss_noop as f64 / 1024.0);
    println!("  git fetch + rsync -a --checksum (no-op):   {}", stats(classic));
}

fn walk_size(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let m = e.metadata().unwrap();
        n += if m.is_dir() { walk_size(&e.path()) } else { m.len() };
    }
    n
}
