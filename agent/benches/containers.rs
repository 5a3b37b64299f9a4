//! Benchmark: a no-op sync of a bundle with 20 managed containers, against a
//! real Podman service (started here, per the sandbox recipe, with an image
//! built from busybox-static). Prints the no-op time and the container-runtime
//! calls one no-op makes: one labelled list, not one call per container.
//! Run with `cargo bench -p tend --bench containers` (needs podman, runc and
//! busybox-static; tests/run installs them).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tend::bundle::ContainerSpec;
use tend::config::Config;
use tend::reconcile::containers::{DockerRuntime, LiveContainer, Runtime, RuntimeError};
use tend::sync::{self, Agent, SyncOptions};

const CONTAINERS: usize = 20;
const ROUNDS: usize = 20;

/// Counts calls by kind, forwarding to the real runtime.
struct Counting {
    inner: DockerRuntime,
    list: AtomicUsize,
    other: AtomicUsize,
}

impl Runtime for Counting {
    fn ping(&self) -> Result<(), RuntimeError> {
        self.other.fetch_add(1, Ordering::SeqCst);
        self.inner.ping()
    }
    fn version(&self) -> Result<Option<String>, RuntimeError> {
        self.other.fetch_add(1, Ordering::SeqCst);
        self.inner.version()
    }
    fn list_managed(&self) -> Result<Vec<LiveContainer>, RuntimeError> {
        self.list.fetch_add(1, Ordering::SeqCst);
        self.inner.list_managed()
    }
    fn find_by_name(&self, name: &str) -> Result<Option<LiveContainer>, RuntimeError> {
        self.other.fetch_add(1, Ordering::SeqCst);
        self.inner.find_by_name(name)
    }
    fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        self.other.fetch_add(1, Ordering::SeqCst);
        self.inner.image_present(image)
    }
    fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        self.other.fetch_add(1, Ordering::SeqCst);
        self.inner.pull(image)
    }
    fn create_and_start(&self, name: &str, spec: &ContainerSpec, revision: &str) -> Result<String, RuntimeError> {
        self.other.fetch_add(1, Ordering::SeqCst);
        self.inner.create_and_start(name, spec, revision)
    }
    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.other.fetch_add(1, Ordering::SeqCst);
        self.inner.start(id)
    }
    fn restart(&self, id: &str) -> Result<(), RuntimeError> {
        self.other.fetch_add(1, Ordering::SeqCst);
        self.inner.restart(id)
    }
    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.other.fetch_add(1, Ordering::SeqCst);
        self.inner.remove(id)
    }
    fn inspect(&self, name: &str) -> Result<Option<LiveContainer>, RuntimeError> {
        self.other.fetch_add(1, Ordering::SeqCst);
        self.inner.inspect(name)
    }
    fn exec(&self, name: &str, command: &[String], timeout: Duration) -> Result<i64, RuntimeError> {
        self.other.fetch_add(1, Ordering::SeqCst);
        self.inner.exec(name, command, timeout)
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tend_e2e::podman_settings(d);
    let podman = || tend_e2e::podman_in(d);
    let rootfs = d.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep")).unwrap();
    run(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(d.join("rootfs.tar")).arg("."));
    run(podman().args(["import", "-q"]).arg(d.join("rootfs.tar")).arg("localhost/tend-bench:1"));
    let socket = d.join("podman.sock");
    let mut service = podman()
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "podman service did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let fleet = d.join("fleet");
    for i in 0..CONTAINERS {
        let p = fleet.join(format!("devices/gw-1/containers/c{i:02}.toml"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "image = \"localhost/tend-bench:1\"\ncommand = [\"sleep\", \"3600\"]\nnetwork = \"host\"\n")
            .unwrap();
    }
    run(Command::new("git").arg("init").arg("-q").arg("-b").arg("main").arg(&fleet));
    run(Command::new("git").arg("-C").arg(&fleet).args(["add", "-A"]));
    run(Command::new("git").arg("-C").arg(&fleet).args([
        "-c",
        "user.name=b",
        "-c",
        "user.email=b@b",
        "commit",
        "-qm",
        "c",
    ]));
    std::fs::create_dir_all(d.join("root")).unwrap();
    let text = format!(
        "device_id = \"gw-1\"\nstate_dir = \"{}\"\n[source]\nurl = \"file://{}\"\n[files]\nroot = \"{}\"\n[containers]\nsocket = \"unix://{}\"\n",
        d.join("state").display(),
        fleet.display(),
        d.join("root").display(),
        socket.display()
    );
    let agent = Arc::new(Agent::open(Config::from_str(&text, Path::new("bench.toml")).unwrap()).unwrap());
    let counting = Arc::new(Counting {
        inner: DockerRuntime::new(&format!("unix://{}", socket.display())),
        list: AtomicUsize::new(0),
        other: AtomicUsize::new(0),
    });
    let _ = agent.runtime.set(counting.clone());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let t = Instant::now();
    let first = rt.block_on(sync::sync(&agent, SyncOptions::default())).unwrap();
    let first_time = t.elapsed();
    assert_eq!(first.operations.len(), CONTAINERS);

    let mut samples = Vec::new();
    let (l0, o0) = (counting.list.load(Ordering::SeqCst), counting.other.load(Ordering::SeqCst));
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = rt.block_on(sync::sync(&agent, SyncOptions::default())).unwrap();
        samples.push(t.elapsed());
        assert!(r.operations.is_empty(), "{:?}", r.operations);
    }
    let lists = (counting.list.load(Ordering::SeqCst) - l0) as f64 / ROUNDS as f64;
    let others = (counting.other.load(Ordering::SeqCst) - o0) as f64 / ROUNDS as f64;
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("tend containers benchmark: {CONTAINERS} managed containers, real Podman 4 API, {ROUNDS} rounds");
    println!("  first sync (create and start all):        {:.0} ms", ms(first_time));
    println!(
        "  no-op sync:                               p50 {:.1} ms, p90 {:.1} ms",
        ms(samples[ROUNDS / 2]),
        ms(samples[ROUNDS * 9 / 10])
    );
    println!("  runtime calls per no-op sync:             {lists} labelled list, {others} other");
    let _ = podman().args(["rm", "-a", "-f", "-t", "0"]).output();
    let _ = service.kill();
    std::process::exit(0);
}
