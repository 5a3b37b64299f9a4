//! Benchmark: a 1,000-file bundle from a file:// repository.
//!
//! Prints: the first sync, the no-op sync (the branch did not move; target
//! ≤ 20 ms), the peak RSS of a sync in a fresh process, the offline rollback of
//! all 1,000 files to an earlier revision from the store (target ≤ 1 s), and,
//! in the same run, the no-op done the classic way — `git fetch` +
//! `rsync -a --checksum` — for comparison. Run with `cargo bench -p tend --bench sync`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tend::config::Config;
use tend::sync::{self, Agent, SyncOptions, SyncSummary};

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

fn run_sync(agent: &Arc<Agent>) -> SyncSummary {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(sync::sync(agent, SyncOptions::default())).unwrap()
}

fn write_files(files: &Path, version: usize) {
    for i in 0..FILES {
        let p = files.join(format!("d{:02}/f{i:04}.conf", i % 25));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let line = format!("key_{i} = \"value {i} v{version}\"\n");
        std::fs::write(&p, line.repeat(40 + i % 100)).unwrap();
    }
}

fn main() {
    // `--child CONFIG`: one sync in a fresh process, for its peak RSS.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let path = Path::new(&args[i + 1]);
        let agent = Arc::new(Agent::open(Config::load(path).unwrap()).unwrap());
        run_sync(&agent);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }

    let tmp = tempfile::tempdir().unwrap();
    let fleet = tmp.path().join("fleet");
    let files = fleet.join("devices/gw-1/files/etc/myapp");
    write_files(&files, 1);
    git(tmp.path(), &["init", "-q", "-b", "main", "fleet"]);
    git(&fleet, &["add", "-A"]);
    git(&fleet, &["commit", "-qm", "bench"]);
    let bytes: u64 = walk_size(&files);

    // tend, in process.
    let gw = tmp.path().join("gw");
    let cfg = config(&gw, &fleet);
    let agent = Arc::new(Agent::open(cfg).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let t = Instant::now();
    let first = rt.block_on(sync::sync(&agent, SyncOptions::default())).unwrap();
    let first_time = t.elapsed();
    assert_eq!(first.created, FILES);
    let first_commit = first.commit.clone().unwrap();
    let mut noop = Vec::new();
    let mut noop_plan = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = rt.block_on(sync::sync(&agent, SyncOptions::default())).unwrap();
        noop.push(t.elapsed());
        noop_plan
            .push(Duration::from_secs_f64((r.timings.render_ms + r.timings.plan_ms + r.timings.apply_ms) / 1000.0));
        assert!(r.operations.is_empty() && !r.received_pack && r.action == "unchanged");
    }

    // Offline rollback: a second revision changes every file; return to the
    // first from the store alone (the source is made unreachable first).
    write_files(&files, 2);
    git(&fleet, &["commit", "-qam", "v2"]);
    let second = rt.block_on(sync::sync(&agent, SyncOptions::default())).unwrap();
    assert_eq!(second.updated, FILES);
    std::fs::rename(&fleet, tmp.path().join("fleet-offline")).unwrap();
    let mut rollbacks = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let r = rt.block_on(sync::rollback(&agent, Some(first_commit.clone()))).unwrap();
        rollbacks.push(t.elapsed());
        assert_eq!(r.updated, FILES);
        rt.block_on(sync::rollback(&agent, second.commit.clone())).unwrap();
    }
    std::fs::rename(tmp.path().join("fleet-offline"), &fleet).unwrap();
    git(&fleet, &["reset", "-q", "--hard", "HEAD~1"]);
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
    println!("    of which render + plan + check:          {}", stats(noop_plan));
    println!("  offline rollback of {FILES} files (<= 1 s):  {}", stats(rollbacks));
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
