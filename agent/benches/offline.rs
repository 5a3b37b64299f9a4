//! Benchmark of sites without network (SPEC §9): an export of a real-sized
//! image (a Debian bookworm root file system, `OFFLINE_ROOTFS`, by default
//! the one tests/systemd/rootfs.sh caches) from one Podman, and its import
//! into another on a gateway whose source is gone. Prints the file's size,
//! the export's and the import's wall time, and the import's peak RSS.
//!
//! `cargo bench -p tend --bench offline` (needs podman, git, ssh-keygen).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use tend_e2e::{Fleet, Gateway, GitDaemon, Podman, commit_signed, run, ssh_key, tend_bin};

const IMAGE: &str = "localhost/bench-debian:bookworm";

fn main() {
    let rootfs = std::env::var_os("OFFLINE_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs_cache().join("systemd/bookworm-rootfs-2.tar"));
    if !rootfs.exists() {
        eprintln!("offline bench: {} not found (set OFFLINE_ROOTFS to a root file system tar)", rootfs.display());
        std::process::exit(2);
    }
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(tmp.path(), "ops");
    let signers = tmp.path().join("allowed_signers");
    std::fs::write(&signers, format!("ops@example.com namespaces=\"git,tend-export\" {public}\n")).unwrap();
    let operator = Podman::start();
    let t = Instant::now();
    run(operator.podman().args(["import", "-q"]).arg(&rootfs).arg(IMAGE));
    eprintln!("image imported into the operator's Podman in {:.1} s", t.elapsed().as_secs_f64());
    let gateway = Podman::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "version = 1\n");
    let v1 = commit_signed(&fleet, &key, "v1");
    let daemon = GitDaemon::start(tmp.path());
    let gw = Gateway::with_source_keys(
        tmp.path(),
        &daemon.url("fleet"),
        &format!("allowed_signers = \"{}\"", signers.display()),
        &format!("[apply]\nhealth_timeout = \"30s\"\n[containers]\nsocket = \"{}\"\n", gateway.url()),
    );
    gw.sync_ok();
    drop(daemon);
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "version = 2\n").write(
        "devices/gw-1/containers/app.toml",
        format!("image = \"{IMAGE}\"\ncommand = [\"sleep\", \"3600\"]\nnetwork = \"host\"\n"),
    );
    let v2 = commit_signed(&fleet, &key, "v2");

    let stick = tmp.path().join("stick");
    std::fs::create_dir_all(&stick).unwrap();
    let t = Instant::now();
    let out = Command::new(tend_bin())
        .args(["fleet", "export", "--fleet", "test", "--repo"])
        .arg(&fleet.dir)
        .arg("--key")
        .arg(&key)
        .arg("-o")
        .arg(&stick)
        .args(["--socket", &operator.url()])
        .output()
        .unwrap();
    let export_s = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{out:?}");
    let file = std::fs::read_dir(&stick)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "tend"))
        .unwrap();
    let size = std::fs::metadata(&file).unwrap().len();

    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(tend_bin())
        .env("TEND_CONFIG", &gw.config)
        .args(["import", "--report"])
        .arg(&stick)
        .output()
        .unwrap();
    let import_s = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rss_kib: u64 = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes): "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let status = gw.tend(&["status", "--json"]).json();
    assert_eq!(status["revision"], v2.as_str(), "{status}");
    assert_ne!(v1, v2);
    // A refused file, for the docs: one byte of the bundle flipped.
    let bad = tmp.path().join("bad.tend");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.windows(15).position(|w| w == b"# v2 git bundle").unwrap() + 100;
    bytes[at] ^= 0x40;
    std::fs::write(&bad, bytes).unwrap();
    let refused = gw.tend(&["import", &bad.display().to_string()]);
    assert_eq!(refused.code, 1, "{refused:?}");
    let commit = run(Command::new("git").arg("-C").arg(tend_e2e::repo_root()).args(["rev-parse", "--short", "HEAD"]));
    println!("offline bench (commit {}, image {} from {}):", commit.trim(), IMAGE, rootfs.display());
    println!("  export file:   {:.1} MiB", size as f64 / 1048576.0);
    println!("  export:        {export_s:.1} s (git bundle, image export from Podman, sha256, signature)");
    println!("  import:        {import_s:.1} s (verify, index the pack, load the image, apply, health)");
    println!("  import peak RSS: {:.1} MiB", rss_kib as f64 / 1024.0);
    println!("  a file with one byte of its bundle flipped:\n{}", refused.stderr.trim_end());
}

/// Where tests/run caches built things (`$TEND_BUILD_CACHE`, or
/// `~/.cache/tend-build`).
fn dirs_cache() -> PathBuf {
    std::env::var_os("TEND_BUILD_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/tend-build")
    })
}
