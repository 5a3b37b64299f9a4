//! Benchmark (issue 13): tend's footprint, measured from outside, every figure
//! beside its goal and its 0.1.0 baseline (docs/footprint-before.md).
//!
//! Real servers on 127.0.0.1: a git daemon serving a fleet repository with a
//! 1,000-file bundle, Mosquitto with TLS and client certificates. The binary is
//! the one `cargo bench` builds (release settings). Figures:
//! - idle `tend run` after 60 s: PSS (`/proc/PID/smaps_rollup`), RSS, threads;
//!   MQTT over TLS connected, 1,000 files, 20 revisions of history;
//! - `tend status` (no daemon): peak RSS and wall time;
//! - peak RSS of the first sync of 1,000 files;
//! - a one-shot no-op `tend sync` over git:// against the cron way
//!   (`git fetch --depth 1 && git reset --hard && rsync -a --checksum`), same run;
//! - CPU per idle poll of `tend run` (interval 1 s, self-heal on) against the
//!   CPU of one cron run;
//! - a soak: RSS over many polls with a file deleted now and then (drift
//!   repaired), with and without MQTT.
//!
//! Run with `cargo bench -p tend --bench footprint` (about 12 minutes);
//! `FOOTPRINT_SOAK_POLLS` sets the soak's length (default 10,000 polls).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tend_e2e::monitor::{median, proc_kib};
use tend_e2e::{Fleet, GitDaemon, Mosquitto};

const FILES: usize = 1000;

/// Measured on 0.1.0 (f85a116), docs/footprint-before.md.
mod baseline {
    pub const IDLE_PSS_MIB: &str = "33-36";
    pub const IDLE_THREADS: &str = "10";
    pub const STATUS: &str = "30 MiB / 32 ms";
    pub const FIRST_SYNC_MIB: &str = "44.4";
    pub const NOOP_RATIO: &str = "0.54-0.57x";
    pub const POLL_CPU_RATIO: &str = "0.29x";
    pub const SOAK: &str = "+14.1 MiB over 240 polls";
}

fn tend_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tend"))
}

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

fn write_files(fleet: &Fleet, version: usize) {
    for i in 0..FILES {
        // Every revision changes 50 of the files.
        let v = if i % 20 == version % 20 { version } else { 0 };
        let line = format!("key_{i} = \"value {i} v{v}\"\n");
        fleet.write(&format!("devices/gw-1/files/etc/myapp/d{:02}/f{i:04}.conf", i % 25), line.repeat(20 + i % 40));
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    _git: GitDaemon,
    url: String,
    broker: Mosquitto,
    fleet: Fleet,
    tls: String,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let base = dir.join("git");
        std::fs::create_dir_all(&base).unwrap();
        let fleet = Fleet::new(&base, "fleet");
        let git = GitDaemon::start(&base);
        let url = git.url("fleet");
        let broker = Mosquitto::start_tls("tend/v1");
        let (cert, key) = broker.client_cert("gw-1", false);
        let ca = broker.dir.path().join("ca.pem");
        let tls = format!(
            "url = \"mqtts://127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            broker.port,
            ca.display(),
            cert.display(),
            key.display()
        );
        Setup { _tmp: tmp, dir, _git: git, url, broker, fleet, tls }
    }

    /// A gateway directory `name` with its config; `extra` is appended.
    fn gateway(&self, name: &str, interval: &str, mqtt: bool, extra: &str) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(d.join("root")).unwrap();
        let mqtt = if mqtt { format!("[mqtt]\n{}health_interval = \"30s\"\n", self.tls) } else { String::new() };
        let text = format!(
            "device_id = \"gw-1\"\nfleet = \"bench\"\nstate_dir = \"{state}\"\n\n[source]\nurl = \"{url}\"\npath = \"devices/gw-1\"\ninterval = \"{interval}\"\njitter = \"0s\"\n\n[files]\nroot = \"{root}\"\nallow = [\"/etc/myapp\"]\n\n[apply]\nhistory = 20\n{extra}\n[control]\nsocket = \"{sock}\"\n{mqtt}",
            state = d.join("state").display(),
            url = self.url,
            root = d.join("root").display(),
            sock = d.join("control.sock").display(),
        );
        let cfg = d.join("agent.toml");
        std::fs::write(&cfg, text).unwrap();
        cfg
    }
}

fn tend(cfg: &Path) -> Command {
    let mut c = Command::new(tend_bin());
    c.env("TEND_CONFIG", cfg).env_remove("TEND_LOG").stdin(Stdio::null());
    c
}

/// Peak RSS (KiB), wall and CPU time of one run of `cmd`, in a fresh child of
/// a fresh process (so its rusage is this run's alone).
struct Usage {
    max_rss_kib: i64,
    wall: Duration,
    cpu: Duration,
}

fn measure(cmd: &[&str], env: &[(&str, &Path)]) -> Usage {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.arg("--rusage").arg("--").args(cmd);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<i64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    Usage { max_rss_kib: f[0], wall: Duration::from_micros(f[1] as u64), cpu: Duration::from_micros(f[2] as u64) }
}

/// `--rusage -- CMD...`: run CMD, print "max_rss_kib wall_us cpu_us".
fn rusage_child(cmd: &[String]) {
    let start = Instant::now();
    let status = Command::new(&cmd[0]).args(&cmd[1..]).stdout(Stdio::null()).status().unwrap();
    let wall = start.elapsed();
    assert!(status.success(), "{cmd:?}: {status}");
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() * 1_000_000 + t.tv_usec();
    println!("{} {} {}", u.max_rss(), wall.as_micros(), us(u.user_time()) + us(u.system_time()));
}

/// PSS by component, from /proc/PID/smaps: tend's own pages, the main heap,
/// other anonymous memory (thread arenas, sled's buffers, stacks), shared
/// libraries. (component, KiB)
fn pss_breakdown(pid: u32) -> Vec<(&'static str, i64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let mut parts: Vec<(&'static str, i64)> = vec![
        ("tend's code and read-only data", 0),
        ("tend's writable data (relocated, .bss)", 0),
        ("main heap (brk)", 0),
        ("other anonymous (arenas, sled buffers, stacks)", 0),
        ("shared libraries (libc, ld.so, ...)", 0),
    ];
    let mut current = 3;
    for l in text.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let f: Vec<&str> = l.split_whitespace().collect();
            let perms = f.get(1).copied().unwrap_or("");
            let path = f.get(5).copied().unwrap_or("");
            current = if path == exe.to_string_lossy() {
                if perms.contains('w') { 1 } else { 0 }
            } else if path == "[heap]" {
                2
            } else if path.starts_with('/') {
                4
            } else {
                3
            };
        } else if let Some(v) = l.strip_prefix("Pss:") {
            parts[current].1 += v.split_whitespace().next().and_then(|x| x.parse::<i64>().ok()).unwrap_or(0);
        }
    }
    parts
}

fn threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .map(|t| std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// utime + stime of a process.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

struct Daemon(Child);

impl Daemon {
    /// `count_polls`: log at debug, where every poll says how it ended.
    fn start(cfg: &Path, log: &Path, count_polls: bool) -> Daemon {
        let child = tend(cfg)
            .arg("run")
            .env("TEND_LOG", if count_polls { "tend=debug" } else { "tend=info" })
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Daemon(child)
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn stop(mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// Polls logged so far (each says "sync done" at debug).
fn polls(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches("sync done").count()
}

fn wait_polls(log: &Path, n: usize, limit: Duration) {
    let start = Instant::now();
    while polls(log) < n {
        assert!(start.elapsed() < limit, "{} polls after {limit:?}", polls(log));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

fn line(name: &str, now: String, goal: &str, base: &str, ok: bool) {
    println!("  {name:<44} {now:<22} goal {goal:<14} 0.1.0 {base:<24} {}", if ok { "ok" } else { "MISSED" });
}

/// What a process keeps between polls: the least `RssAnon` of 40 samples
/// 50 ms apart. One sample taken in the middle of a poll (a repair holds a
/// revision's contents for a moment) reads up to 2 MiB more, and a leak or a
/// queue raises the floor as well as the peaks.
fn floor(pid: u32) -> i64 {
    (0..40)
        .map(|_| {
            let kib = proc_kib(pid, "status", "RssAnon:");
            std::thread::sleep(Duration::from_millis(50));
            kib
        })
        .min()
        .unwrap()
}

/// Many polls 10 ms apart, a file deleted every 500 ms from the start: (RssAnon
/// at the start, at the end, VmRSS growth, repairs). The start is taken after
/// 500 polls with repairs, so it holds what a repair needs once (its working
/// set, a step of about 1 MiB over an idle daemon's heap): growth is what
/// comes after.
fn soak(s: &Setup, name: &str, mqtt: bool, soak_polls: usize) -> (i64, i64, i64, usize) {
    let cfg = s.gateway(name, "10ms", mqtt, "");
    assert!(tend(&cfg).arg("sync").stdout(Stdio::null()).status().unwrap().success());
    let log = s.dir.join(format!("{name}.log"));
    let d = Daemon::start(&cfg, &log, true);
    let victim = s.dir.join(name).join("root/etc/myapp/d00/f0000.conf");
    let mut deleted = 0;
    let mut delete = || {
        if victim.exists() {
            let _ = std::fs::remove_file(&victim);
            deleted += 1;
        }
    };
    let warm = Instant::now();
    while polls(&log) < 500 {
        assert!(warm.elapsed() < Duration::from_secs(300), "{} polls after 300 s", polls(&log));
        delete();
        std::thread::sleep(Duration::from_millis(500));
    }
    // RssAnon: what the process allocated. VmRSS also counts the pages
    // of tend's own code, which the daemon unmaps between polls and the
    // next poll maps back: noise of ±1 MiB, not growth.
    let start_rss = floor(d.pid());
    let start_vm = proc_kib(d.pid(), "status", "VmRSS:");
    // RssAnon at each fifth of the soak: a plateau or a slope.
    let mut curve = Vec::new();
    while polls(&log) < 500 + soak_polls {
        delete();
        if polls(&log) >= 500 + curve.len() * soak_polls / 5 {
            curve.push(format!("{:.1}", mib(floor(d.pid()))));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("  {name}: RssAnon MiB at each fifth of the soak: {}", curve.join(", "));
    let end_rss = floor(d.pid());
    let vm_growth = proc_kib(d.pid(), "status", "VmRSS:") - start_vm;
    d.stop();
    (start_rss, end_rss, vm_growth, deleted)
}

fn soak_only(s: &Setup, soak_polls: usize) {
    for (name, mqtt) in [("soak", false), ("soak-mqtt", true)] {
        let (a0, a1, avm, repairs) = soak(s, name, mqtt, soak_polls);
        println!(
            "  {name}: RssAnon over {soak_polls} polls ({repairs} repairs): {:+.2} MiB ({:.1} -> {:.1}; VmRSS {:+.2})",
            mib(a1 - a0),
            mib(a0),
            mib(a1),
            mib(avm)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--rusage") {
        rusage_child(&args[i + 2..]);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let soak_polls: usize = std::env::var("FOOTPRINT_SOAK_POLLS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let s = Setup::new();
    // FOOTPRINT_ONLY=soak: the soak alone (while looking for where memory goes).
    if std::env::var("FOOTPRINT_ONLY").as_deref() == Ok("soak") {
        write_files(&s.fleet, 0);
        s.fleet.commit("v0");
        let cfg = s.gateway("gw", "60s", false, "");
        assert!(tend(&cfg).arg("sync").stdout(Stdio::null()).status().unwrap().success());
        return soak_only(&s, soak_polls);
    }
    println!(
        "tend footprint benchmark: {FILES} files, git:// and MQTT over TLS on loopback, binary {}",
        tend_bin().display()
    );
    println!("  {:<44} {:<22} {:<19} {:<30}", "figure", "now", "goal", "baseline");

    // 20 revisions of history, applied one by one; the first sync measured.
    let cfg = s.gateway("gw", "60s", true, "");
    write_files(&s.fleet, 0);
    s.fleet.commit("v0");
    let first = measure(&[tend_bin().to_str().unwrap(), "sync"], &[("TEND_CONFIG", &cfg)]);
    for v in 1..20 {
        write_files(&s.fleet, v);
        s.fleet.commit(&format!("v{v}"));
        let out = tend(&cfg).arg("sync").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let history = tend(&cfg).args(["history", "--json"]).output().unwrap();
    let revisions = serde_json::from_slice::<serde_json::Value>(&history.stdout).unwrap().as_array().unwrap().len();

    // `tend status` with no daemon: p50 of 20.
    let runs: Vec<Usage> =
        (0..20).map(|_| measure(&[tend_bin().to_str().unwrap(), "status"], &[("TEND_CONFIG", &cfg)])).collect();
    let status_rss = runs.iter().map(|u| u.max_rss_kib).max().unwrap();
    let status_ms = median(runs.iter().map(|u| u.wall.as_secs_f64() * 1000.0).collect());

    // Idle daemon, 60 s after start.
    let log = s.dir.join("idle.log");
    let d = Daemon::start(&cfg, &log, false);
    std::thread::sleep(Duration::from_secs(60));
    let (pss, rss, names) =
        (proc_kib(d.pid(), "smaps_rollup", "Pss:"), proc_kib(d.pid(), "status", "VmRSS:"), threads(d.pid()));
    let breakdown = pss_breakdown(d.pid());
    let connected = s
        .broker
        .dir
        .path()
        .join("log")
        .exists()
        .then(|| std::fs::read_to_string(s.broker.dir.path().join("log")).unwrap_or_default())
        .is_some_and(|l| l.contains("New client connected"));
    d.stop();

    // One-shot no-op sync over git:// against the cron way, interleaved.
    let cron = s.dir.join("cron");
    let clone = cron.join("clone");
    std::fs::create_dir_all(cron.join("dest")).unwrap();
    git(&cron, &["clone", "-q", "--depth", "1", &s.url, "clone"]);
    let cron_script = cron.join("cron.sh");
    std::fs::write(
        &cron_script,
        format!(
            "set -e\ncd {clone}\ngit fetch -q --depth 1 origin main\ngit reset -q --hard FETCH_HEAD\nrsync -a --checksum {clone}/devices/gw-1/files/ {dest}/\n",
            clone = clone.display(),
            dest = cron.join("dest").display()
        ),
    )
    .unwrap();
    let cron_cmd = ["sh", cron_script.to_str().unwrap()];
    measure(&cron_cmd, &[]);
    let (mut tend_ms, mut cron_ms, mut cron_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..15 {
        tend_ms.push(measure(&[tend_bin().to_str().unwrap(), "sync"], &[("TEND_CONFIG", &cfg)]).wall.as_secs_f64());
        let c = measure(&cron_cmd, &[]);
        cron_ms.push(c.wall.as_secs_f64());
        cron_cpu.push(c.cpu.as_secs_f64());
    }
    let (tend_noop, cron_noop) = (median(tend_ms), median(cron_ms));

    // CPU per idle poll: interval 1 s, self-heal on, no MQTT.
    let poll_cfg = s.gateway("poll", "1s", false, "");
    assert!(tend(&poll_cfg).arg("sync").stdout(Stdio::null()).status().unwrap().success());
    let log = s.dir.join("poll.log");
    let d = Daemon::start(&poll_cfg, &log, true);
    wait_polls(&log, 3, Duration::from_secs(30));
    let (c0, p0) = (cpu_of(d.pid()), polls(&log));
    wait_polls(&log, p0 + 30, Duration::from_secs(90));
    let (c1, p1) = (cpu_of(d.pid()), polls(&log));
    d.stop();
    let per_poll = (c1 - c0).as_secs_f64() / (p1 - p0) as f64;
    let cron_cpu = median(cron_cpu);

    // Soak: many polls, a file deleted now and then.
    let (a0, a1, avm, repairs) = soak(&s, "soak", false, soak_polls);
    let (b0, b1, bvm, repairs_mqtt) = soak(&s, "soak-mqtt", true, soak_polls);

    println!();
    line(
        &format!("idle run PSS after 60 s ({revisions} revisions, TLS)"),
        format!("{:.2} MiB (RSS {:.2})", mib(pss), mib(rss)),
        "<= 5 MiB",
        baseline::IDLE_PSS_MIB,
        pss <= 5 * 1024 && connected,
    );
    line(
        "idle run threads",
        format!("{} ({})", names.len(), names.join(", ")),
        "<= 3",
        baseline::IDLE_THREADS,
        names.len() <= 3,
    );
    line(
        "tend status: peak RSS / wall p50",
        format!("{:.2} MiB / {status_ms:.1} ms", mib(status_rss)),
        "<= 8 MiB/10 ms",
        baseline::STATUS,
        status_rss <= 8 * 1024 && status_ms <= 10.0,
    );
    line(
        "first sync of 1,000 files: peak RSS",
        format!("{:.2} MiB", mib(first.max_rss_kib)),
        "<= 20 MiB",
        baseline::FIRST_SYNC_MIB,
        first.max_rss_kib <= 20 * 1024,
    );
    line(
        "no-op sync vs git fetch+reset+rsync (p50)",
        format!("{:.2}x ({:.1}/{:.1} ms)", tend_noop / cron_noop, tend_noop * 1000.0, cron_noop * 1000.0),
        "<= 0.35x",
        baseline::NOOP_RATIO,
        tend_noop / cron_noop <= 0.35,
    );
    line(
        "CPU per idle poll vs one cron run",
        format!("{:.2}x ({:.1}/{:.1} ms)", per_poll / cron_cpu, per_poll * 1000.0, cron_cpu * 1000.0),
        "<= 0.15x",
        baseline::POLL_CPU_RATIO,
        per_poll / cron_cpu <= 0.15,
    );
    line(
        &format!("soak, no MQTT: RssAnon over {soak_polls} polls ({repairs} repairs)"),
        format!("{:+.2} MiB ({:.1} -> {:.1}; VmRSS {:+.2})", mib(a1 - a0), mib(a0), mib(a1), mib(avm)),
        "< 1 MiB",
        baseline::SOAK,
        a1 - a0 < 1024,
    );
    line(
        &format!("soak, MQTT: RssAnon over {soak_polls} polls ({repairs_mqtt} repairs)"),
        format!("{:+.2} MiB ({:.1} -> {:.1}; VmRSS {:+.2})", mib(b1 - b0), mib(b0), mib(b1), mib(bvm)),
        "< 1 MiB",
        baseline::SOAK,
        b1 - b0 < 1024,
    );
    println!();
    println!("  idle run PSS by component (the first figure above):");
    for (what, kib) in &breakdown {
        println!("    {what:<48} {:>6.2} MiB", mib(*kib));
    }
}
