//! Benchmark: push-to-applied latency through a fleet `sync` command.
//!
//! A real Mosquitto on loopback, a daemon (in this process) whose poll interval
//! is hours, so only the command can make it sync. Each round: commit a new
//! revision, publish `{"cmd":"sync"}` on the device's cmd topic, and time until
//! the retained status shows the new revision applied (target: p50 of at most
//! 1 s over at least 20 runs). Run with `cargo bench -p tend --bench mqtt`
//! (needs mosquitto and mosquitto-clients installed; tests/run installs them).

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tend::config::Config;
use tend::sync::Agent;

const ROUNDS: usize = 25;

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=bench", "-c", "user.email=bench@example.com"])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("git");
    assert!(st.success(), "git {args:?}");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(d.join("m.conf"), format!("user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n")).unwrap();
    let mut broker = Command::new("mosquitto")
        .arg("-c")
        .arg(d.join("m.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (apt-get install mosquitto mosquitto-clients)");
    std::thread::sleep(Duration::from_millis(300));

    let fleet = d.join("fleet");
    let conf = fleet.join("devices/gw-1/files/etc/myapp/app.conf");
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    std::fs::write(&conf, "v = 0\n").unwrap();
    git(d, &["init", "-q", "-b", "main", "fleet"]);
    git(&fleet, &["add", "-A"]);
    git(&fleet, &["commit", "-qm", "0"]);
    std::fs::create_dir_all(d.join("root")).unwrap();
    let text = format!(
        "device_id = \"gw-1\"\nfleet = \"bench\"\nstate_dir = \"{s}\"\n[source]\nurl = \"file://{f}\"\ninterval = \"5h\"\n\
         [files]\nroot = \"{r}\"\nallow = [\"/etc/myapp\"]\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nhealth_interval = \"1h\"\n",
        s = d.join("state").display(),
        f = fleet.display(),
        r = d.join("root").display()
    );
    let cfg = Config::from_str(&text, Path::new("bench.toml")).unwrap();
    let agent = Agent::open(cfg).unwrap();
    std::thread::spawn(move || tend::daemon::run(agent));

    let topic = "tend/v1/bench/gw-1";
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", &format!("{topic}/status")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(sub.stdout.take().unwrap()).lines();
    let mut wait_for = |commit: &str| loop {
        let line = lines.next().expect("status stream ended").unwrap();
        if line.contains(&format!("\"revision\":\"{commit}\"")) && line.contains("\"phase\":\"synced\"") {
            return;
        }
    };
    let head = |dir: &Path| {
        let o = Command::new("git").arg("-C").arg(dir).args(["rev-parse", "HEAD"]).output().unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    };
    wait_for(&head(&fleet));

    let mut samples = Vec::new();
    for i in 1..=ROUNDS {
        std::fs::write(&conf, format!("v = {i}\n")).unwrap();
        git(&fleet, &["commit", "-qam", &i.to_string()]);
        let commit = head(&fleet);
        let t = Instant::now();
        let st = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", &format!("{topic}/cmd")])
            .args(["-m", &format!("{{\"cmd\":\"sync\",\"id\":\"bench-{i}\"}}")])
            .status()
            .unwrap();
        assert!(st.success());
        wait_for(&commit);
        samples.push(t.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("tend push-to-applied benchmark: sync command over MQTT, Mosquitto on loopback, {ROUNDS} runs");
    println!(
        "  command published -> status shows the revision applied (target p50 <= 1000 ms): p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(samples[ROUNDS / 2]),
        ms(samples[ROUNDS * 9 / 10]),
        ms(samples[ROUNDS - 1])
    );
    let _ = sub.kill();
    let _ = broker.kill();
    std::process::exit(0);
}
