//! The fetch of a small change from a fleet repository with a long history
//! (issue 16): a repository with ~100 MB of packed history (400 commits, each
//! replacing a 256 KiB incompressible file beside the gateway's bundle), served
//! by a real `git daemon`. A gateway syncs its tip, then one small file of its
//! bundle changes; what the second fetch costs is measured as the bytes of the
//! packs it adds to tend's object store, beside the change's own packed size
//! (`git rev-list --objects OLD..NEW | git pack-objects`) and beside what
//! `git fetch --depth 1` receives into a shallow clone of the old tip.
//!
//! `cargo bench -p tend --bench fetch`. `FETCH_HISTORY_MIB` sets the history's
//! size (default 100).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use tend_e2e::{Fleet, Gateway, GitDaemon};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Bytes of the pack files under `dir` (recursively).
fn pack_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            total += pack_bytes(&p);
        } else if p.extension().is_some_and(|x| x == "pack") {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

/// Loose objects' bytes under `dir/objects` (a fetch may unpack small packs).
fn loose_bytes(objects: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(objects).into_iter().flatten().flatten() {
        let name = e.file_name();
        if name.len() == 2 && e.path().is_dir() {
            for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                total += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

fn kib(b: u64) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mib: u64 = std::env::var("FETCH_HISTORY_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let commits = mib * 4; // 256 KiB each
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let t = Instant::now();
    // The history, written with git fast-import (a commit a 256 KiB random
    // blob; each commit follows the branch's previous one).
    let mut fi = Command::new("git")
        .arg("-C")
        .arg(&fleet.dir)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut w = std::io::BufWriter::new(fi.stdin.take().unwrap());
        let conf = b"port = 502\n";
        for i in 0..commits {
            let data: Vec<u8> = (0..256 * 1024).map(|_| fastrand::u8(..)).collect();
            write!(
                w,
                "commit refs/heads/main\ncommitter Bench <b@example.com> {} +0000\ndata 8\nhistory\n",
                1_700_000_000 + i
            )
            .unwrap();
            write!(w, "M 100644 inline data/telemetry.bin\ndata {}\n", data.len()).unwrap();
            w.write_all(&data).unwrap();
            write!(w, "\nM 100644 inline devices/gw-1/files/etc/myapp/app.conf\ndata {}\n", conf.len()).unwrap();
            w.write_all(conf).unwrap();
            writeln!(w).unwrap();
        }
    }
    assert!(fi.wait().unwrap().success());
    git(&fleet.dir, &["checkout", "-q", "-f", "main"]);
    git(&fleet.dir, &["gc", "-q"]);
    let history = pack_bytes(&fleet.dir.join(".git/objects/pack"));
    println!(
        "tend fetch benchmark: a fleet repository with {commits} commits, {} MiB of packed history (made in {:.0} s), served by git daemon",
        history / (1 << 20),
        t.elapsed().as_secs_f64()
    );
    let server = GitDaemon::start(tmp.path());
    let url = server.url("fleet");
    let old = fleet.head();

    // tend's first sync: the tip only.
    let gw = Gateway::new(&tmp.path().join("gw"), &url, "");
    let objects = gw.state.join("git/objects");
    let r = gw.tend(&["sync", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let first = pack_bytes(&objects) + loose_bytes(&objects);
    // A shallow clone of the old tip, the way `git fetch --depth 1` users have it.
    let clone = tmp.path().join("clone");
    let out = Command::new("git")
        .args(["-c", "fetch.unpackLimit=1", "clone", "-q", "--depth", "1", "--branch", "main", &url])
        .arg(&clone)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let git_first = pack_bytes(&clone.join(".git/objects/pack"));
    println!("  first fetch (depth 1):        tend {}, git clone --depth 1 {}", kib(first), kib(git_first));

    // One small file of the bundle changes.
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "port = 503\n");
    let new = fleet.commit("port 503");
    let change = {
        let list = git(&fleet.dir, &["rev-list", "--objects", &format!("{old}..{new}")]);
        let ids: String = list.lines().map(|l| format!("{}\n", l.split(' ').next().unwrap())).collect();
        let mut p = Command::new("git")
            .arg("-C")
            .arg(&fleet.dir)
            .args(["pack-objects", "--stdout", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(ids.as_bytes()).unwrap();
        p.wait_with_output().unwrap().stdout.len() as u64
    };
    let t = Instant::now();
    let r = gw.tend(&["sync", "--json"]);
    let tend_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 503\n");
    let tend_second = pack_bytes(&objects) + loose_bytes(&objects) - first;
    let before = pack_bytes(&clone.join(".git/objects/pack"));
    let t = Instant::now();
    let out = Command::new("git")
        .arg("-C")
        .arg(&clone)
        .args(["-c", "fetch.unpackLimit=1", "fetch", "-q", "--depth", "1", "origin", "main"])
        .output()
        .unwrap();
    let git_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let git_second = pack_bytes(&clone.join(".git/objects/pack")) - before;
    println!("  the change's own pack:        {}", kib(change));
    println!(
        "  fetch of the change (goal <= 2x the change): tend {} ({:.1}x, {tend_ms:.0} ms for the whole sync), git fetch --depth 1 {} ({:.1}x, {git_ms:.0} ms)",
        kib(tend_second),
        tend_second as f64 / change as f64,
        kib(git_second),
        git_second as f64 / change as f64
    );
}
