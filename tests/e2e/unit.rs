//! Issue 17: the installed `.deb` under a real systemd (252, Debian bookworm)
//! running as PID 1 in a Podman container, its Git server (a real git daemon)
//! on the host's loopback. Checked: the sandbox is real (or the test fails
//! loudly), `systemctl start` waits for READY=1, `Status=`, the journal at the
//! default level, a forgotten `ReadWritePaths=` drop-in named in the journal
//! and `Status=`, the watchdog keeping a live daemon and restarting a stopped
//! one, SIGKILL restarted, a bad config exiting 2 and not restarted, the live
//! `systemd-analyze security` rating equal to the offline one and <= 2.5,
//! `tend fleet logs` reading the unit's own journal through its sandbox
//! (issue 26), and `dpkg --purge` leaving nothing.
//!
//! Needs the amd64 `.deb` (`packaging/deb.sh`, after `cross/build.sh`), so it
//! is ignored by a plain `cargo test`: `tests/run` runs it in the background
//! after the packages are built. `TEND_DEB` names another package. The root
//! file system is made once by `tests/systemd/rootfs.sh` (debootstrap).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tend_e2e::{Fleet, GitDaemon, Mosquitto, repo_root};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A container booted with systemd as PID 1; removed on drop.
struct Machine {
    conf: tempfile::TempDir,
    name: String,
}

impl Machine {
    fn podman(&self) -> Command {
        tend_e2e::podman_in(self.conf.path())
    }

    /// `extra`: more `podman run` arguments (`--device` for a stick).
    fn boot(rootfs: &Path, deb_dir: &Path, extra: &[String]) -> Machine {
        let conf = tempfile::tempdir().unwrap();
        tend_e2e::podman_settings(conf.path());
        let m = Machine { conf, name: format!("tend-systemd-{:08x}", fastrand::u32(..)) };
        let o = m.podman().args(["import", "-q"]).arg(rootfs).arg("localhost/tend-systemd").output().unwrap();
        assert!(o.status.success(), "podman import: {}", text(&o));
        let o = m
            .podman()
            .args(["run", "-d", "--name", &m.name, "--systemd=always", "--network=host", "--cap-add=SYS_ADMIN"])
            .arg("-v")
            .arg(format!("{}:/deb:ro", deb_dir.display()))
            .args(extra)
            .args(["localhost/tend-systemd", "/sbin/init"])
            .output()
            .unwrap();
        assert!(o.status.success(), "podman run: {}", text(&o));
        let start = Instant::now();
        loop {
            let state = m.sh("systemctl is-system-running || true");
            if state.trim() == "running" || state.trim() == "degraded" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "systemd did not come up: {state}");
            std::thread::sleep(Duration::from_millis(300));
        }
        m
    }

    /// `sh -c script` in the machine; its output (stdout and stderr).
    fn sh(&self, script: &str) -> String {
        let o = self.podman().args(["exec", &self.name, "sh", "-c", script]).output().unwrap();
        text(&o)
    }

    /// Like [`Machine::sh`], which must succeed.
    fn ok(&self, script: &str) -> String {
        let o = self.podman().args(["exec", &self.name, "sh", "-c", script]).output().unwrap();
        assert!(o.status.success(), "{script}: {}", text(&o));
        text(&o)
    }

    fn write(&self, path: &str, content: &str) {
        let mut c = self
            .podman()
            .args(["exec", "-i", &self.name, "sh", "-c", &format!("mkdir -p \"$(dirname {path})\" && cat > {path}")])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(content.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success(), "write {path}");
    }

    fn prop(&self, p: &str) -> String {
        self.ok(&format!("systemctl show -p {p} --value tend")).trim().to_owned()
    }

    fn wait(&self, what: &str, timeout: Duration, cond: impl Fn(&Machine) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}\n{}",
                self.sh("systemctl status tend --no-pager; journalctl -u tend --no-pager | tail -n 30")
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// "Scheduled restart job" lines: systemd's restarts of tend so far.
    fn restarts(&self) -> usize {
        self.sh("journalctl -u tend --no-pager").matches("Scheduled restart job").count()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.podman().args(["rm", "-f", "-t", "1", &self.name]).output();
    }
}

fn exposure(report: &str) -> f64 {
    let line = report.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{report}"));
    line.split(':').nth(1).and_then(|r| r.split_whitespace().next()).and_then(|x| x.parse().ok()).expect(line)
}

/// The amd64 `.deb` under test and the root file system to boot.
fn deb_and_rootfs() -> (PathBuf, PathBuf) {
    let deb = std::env::var_os("TEND_DEB").map(PathBuf::from).unwrap_or_else(|| {
        let dir = repo_root().join("target/x86_64-unknown-linux-gnu/debian");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| {
                panic!("{}: {e}: build the .deb first (cross/build.sh, packaging/deb.sh)", dir.display())
            })
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .expect("an amd64 .deb")
    });
    let out = Command::new(repo_root().join("tests/systemd/rootfs.sh")).output().unwrap();
    assert!(out.status.success(), "rootfs: {}", text(&out));
    (deb, PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

#[test]
#[ignore = "needs the amd64 .deb (packaging/deb.sh) and Podman; tests/run runs it"]
fn the_installed_unit_under_a_real_systemd() {
    let (deb, rootfs) = deb_and_rootfs();

    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    fleet.write("devices/gw-sd/files/etc/myapp/app.conf", "port = 502\n");
    let v1 = fleet.commit("v1");
    let git = GitDaemon::start(tmp.path());
    // On the host's loopback, which the machine shares: for `tend fleet logs`.
    let broker = Mosquitto::start();

    let m = Machine::boot(&rootfs, deb.parent().unwrap(), &[]);
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    m.ok(&format!("dpkg -i /deb/{name}"));
    m.write(
        "/etc/tend/agent.toml",
        &format!(
            "device_id = \"gw-sd\"\nfleet = \"sd\"\n[source]\nurl = \"{}\"\ninterval = \"2s\"\njitter = \"0s\"\n\
             [files]\nallow = [\"/etc/myapp\"]\n[apply]\nhealth_timeout = \"2s\"\n\
             [mqtt]\nurl = \"{}\"\n[logs]\nunits = [\"tend.service\"]\n",
            git.url("fleet"),
            broker.url()
        ),
    );
    m.ok("mkdir -p /etc/myapp && test \"$(stat -c %a /var/lib/tend)\" = 700");

    // Without the drop-in: running, and the read-only root named with its fix.
    // `systemctl start` of a Type=notify unit returns once READY=1 came; tend
    // sends Status= in the same message, so Status= is set the moment start
    // returns (read in the same shell, not a podman exec later).
    assert_eq!(m.prop("Type"), "notify");
    let t = Instant::now();
    let status = m.ok("systemctl start tend && systemctl show -p StatusText --value tend").trim().to_owned();
    eprintln!("systemctl start returned after {:?} (Type=notify: after READY=1)", t.elapsed());
    assert!(
        status.contains("[files].allow root /etc/myapp is read-only to tend")
            && status.contains("ReadWritePaths=/etc/myapp"),
        "Status= when systemctl start returned: {status:?}"
    );
    assert_eq!(m.prop("ActiveState"), "active");
    // The sandbox is real: without CAP_SYS_ADMIN systemd silently drops it.
    let pid = m.prop("MainPID");
    let root = m.ok(&format!("awk '$5 == \"/\" {{print $6}}' /proc/{pid}/mountinfo"));
    assert!(root.lines().any(|o| o.split(',').any(|f| f == "ro")), "/ is not read-only to tend: no sandbox ({root})");
    eprintln!(
        "== without the drop-in: systemctl status tend\n{}\n== journalctl -u tend\n{}",
        m.sh("systemctl status tend --no-pager --full -n 0"),
        m.sh("journalctl -u tend --no-pager")
    );
    let errors = m.ok("journalctl -u tend -p err --no-pager");
    eprintln!("== journalctl -u tend -p err\n{errors}");
    assert!(
        errors.contains("is read-only to tend")
            && errors.contains("systemctl edit tend")
            && errors.contains("ReadWritePaths=/etc/myapp"),
        "{errors}"
    );

    // With it: applied, said in the journal at the default level and in Status=.
    m.write("/etc/systemd/system/tend.service.d/allow.conf", "[Service]\nReadWritePaths=/etc/myapp\n");
    m.ok("systemctl daemon-reload && systemctl restart tend");
    let short = &v1[..12];
    // (Bounds a hang only: a fetch, an apply and a health window on a loaded
    // machine, read through podman exec.)
    m.wait("synced v1 in Status=", Duration::from_secs(90), |m| m.prop("StatusText") == format!("synced {short}"));
    assert_eq!(m.ok("cat /etc/myapp/app.conf"), "port = 502\n");
    let journal = m.ok("journalctl -u tend --no-pager -o cat");
    eprintln!("== with it: journalctl -u tend (the restart)\n{}", m.ok("journalctl -u tend --no-pager -n 8"));
    for said in ["started: tend", &format!("applied {short}"), &format!("{short} is healthy")] {
        assert!(journal.contains(said), "the journal lacks {said:?}:\n{journal}");
    }
    // Logs on demand (issue 26): from the operator's side, the gateway's own
    // journal lines of tend.service, read by journalctl inside the unit's
    // sandbox; a unit [logs].units does not list is refused.
    let fleet_logs = |args: &[&str]| {
        Command::new(tend_e2e::tend_bin())
            .args(["fleet", "logs", "--mqtt", &broker.url(), "--fleet", "sd", "--timeout", "20s", "gw-sd"])
            .args(args)
            .output()
            .unwrap()
    };
    let o = fleet_logs(&["--unit", "tend.service", "--since", "1h", "--lines", "100"]);
    eprintln!("== tend fleet logs gw-sd --unit tend.service\n{}", text(&o));
    assert!(o.status.success(), "{}", text(&o));
    let shown = String::from_utf8_lossy(&o.stdout);
    for said in ["started: tend", &format!("applied {short}")] {
        assert!(shown.contains(said), "tend fleet logs lacks the journal's {said:?}:\n{shown}");
    }
    let o = fleet_logs(&["--unit", "tend.service", "--lines", "3", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let answer: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!("== the answer\n{answer}");
    assert_eq!((answer["source"].as_str(), answer["lines"].as_array().map(Vec::len)), (Some("journal"), Some(3)));
    let o = fleet_logs(&["--unit", "ssh.service"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not allowed (this gateway's [logs].units: tend.service)"), "{}", text(&o));

    let live = m.ok("systemd-analyze security tend --no-pager || true");
    let offline = m.ok("systemd-analyze security --offline=true /lib/systemd/system/tend.service --no-pager || true");
    let (live, offline) = (exposure(&live), exposure(&offline));
    eprintln!("systemd-analyze security: live {live}, offline {offline}");
    assert!(live <= 2.5 && live == offline, "exposure live {live}, offline {offline}");

    // The watchdog: alive past WatchdogSec while healthy; restarted when stopped.
    m.write("/etc/systemd/system/tend.service.d/watchdog.conf", "[Service]\nWatchdogSec=3s\nRestartSec=1s\n");
    m.ok("systemctl daemon-reload && systemctl restart tend");
    let pid = m.prop("MainPID");
    let restarts = m.restarts();
    // Time is the claim here: more than two WatchdogSec= periods (3 s) pass
    // without a restart. tend feeds the watchdog every half period, so only
    // a stall of over 1.5 s on the machine could fail this.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!((m.prop("MainPID"), m.restarts()), (pid.clone(), restarts), "restarted while healthy");
    m.ok(&format!("kill -STOP {pid}"));
    m.wait("a watchdog restart", Duration::from_secs(20), |m| {
        m.restarts() > restarts && m.prop("ActiveState") == "active"
    });
    assert!(m.ok("journalctl -u tend --no-pager").contains("Watchdog timeout"), "not the watchdog");
    // ExecStopPost= (`tend exited`) recorded how the run ended, sandboxed as
    // the unit is, and the next start read it.
    m.wait("the restart's start line", Duration::from_secs(20), |m| {
        m.sh("journalctl -u tend --no-pager -o cat").contains("the last run ended badly: stopped by systemd's watchdog")
    });
    let pid2 = m.prop("MainPID");
    assert_ne!(pid2, pid);

    // SIGKILL: restarted, and the next start says how the last run ended.
    let restarts = m.restarts();
    m.ok("systemctl kill -s SIGKILL tend");
    m.wait("a restart after SIGKILL", Duration::from_secs(20), |m| {
        m.restarts() > restarts && m.prop("ActiveState") == "active" && m.prop("MainPID") != pid2
    });
    m.wait("the SIGKILL recorded", Duration::from_secs(20), |m| {
        m.sh("journalctl -u tend --no-pager -o cat").contains("the last run ended badly: killed by signal SIGKILL")
    });

    // A bad config: exit 2, not restarted. Every start so far said
    // `config /etc/tend/agent.toml`: only the journal from here on counts.
    let shown = m.ok("journalctl -u tend -n 1 --show-cursor --no-pager -o cat");
    let cursor =
        shown.lines().find_map(|l| l.strip_prefix("-- cursor: ")).unwrap_or_else(|| panic!("{shown}")).to_owned();
    m.write("/etc/tend/agent.toml", "device_id = \"gw-sd\"\n[source]\nurl = 5\n");
    let restarts = m.restarts();
    let _ = m.sh("systemctl restart tend");
    // Settled (past ExecStopPost=, `tend exited`) as failed: a restart to
    // come shows as `auto-restart` from then on (RestartSec= is only its
    // delay), so no waiting for one.
    m.wait("exit 2, settled", Duration::from_secs(20), |m| {
        m.prop("ExecMainStatus") == "2" && ["failed", "auto-restart", "running"].contains(&m.prop("SubState").as_str())
    });
    assert_eq!((m.prop("ActiveState"), m.prop("SubState")), ("failed".to_owned(), "failed".to_owned()));
    assert_eq!(m.restarts(), restarts, "a bad config was restarted");
    let said = m.ok(&format!("journalctl -u tend --after-cursor='{cursor}' --no-pager -o cat"));
    assert!(
        said.contains("tend: error: /etc/tend/agent.toml: [source].url")
            && said.contains("invalid type: integer `5`, expected a string")
            && !said.contains("started: tend"),
        "the error does not name the file, the key and what is wrong:\n{said}"
    );

    // Purge: nothing left.
    m.ok("systemctl stop tend || true; dpkg --purge tend");
    let left =
        m.sh("ls -d /usr/bin/tend /etc/tend /var/lib/tend /lib/systemd/system/tend.service /run/tend 2>/dev/null");
    assert_eq!(left.trim(), "", "dpkg --purge left: {left}");
}

// ---- Issue 25: the hands-free import of a USB stick ---------------------------

/// A loop device over a file system image made on this machine (the stick),
/// detached on drop. The kernel here has ext4 but neither vfat nor exFAT,
/// so the sticks are ext4: the file system with symlinks, the hostile case.
struct Stick {
    image: PathBuf,
    dev: String,
}

impl Stick {
    /// `setup` fills the stick's root before `mkfs.ext4 -d` copies it in.
    /// `write_protected`: a read-only loop device, as a stick with its lock
    /// switch on.
    fn new(dir: &Path, name: &str, write_protected: bool, setup: impl FnOnce(&Path)) -> Stick {
        let root = dir.join(format!("{name}-root"));
        std::fs::create_dir_all(&root).unwrap();
        setup(&root);
        let image = dir.join(format!("{name}.img"));
        std::fs::File::create(&image).unwrap().set_len(16 << 20).unwrap();
        tend_e2e::run(Command::new("mkfs.ext4").arg("-q").arg("-d").arg(&root).arg(&image));
        let mut losetup = Command::new("losetup");
        losetup.args(["-f", "--show"]);
        if write_protected {
            losetup.arg("-r");
        }
        let dev = tend_e2e::run(losetup.arg(&image)).trim().to_owned();
        assert!(dev.starts_with("/dev/loop"), "losetup: {dev}");
        Stick { image, dev }
    }

    /// The kernel name: the unit's instance.
    fn name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }

    /// A file on the stick, read from the image (after the unit unmounted it).
    fn cat(&self, path: &str) -> String {
        tend_e2e::run(Command::new("debugfs").arg("-R").arg(format!("cat {path}")).arg(&self.image))
    }

    fn ls(&self, path: &str) -> String {
        tend_e2e::run(Command::new("debugfs").arg("-R").arg(format!("ls -l {path}")).arg(&self.image))
    }
}

impl Drop for Stick {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
    }
}

/// What the probe standing in for `tend import` (same unit, same sandbox:
/// a drop-in replaces only ExecStart=) saw and did, one line each, in the
/// journal. PROBE_EXIT and PROBE_SLEEP make it fail or hang.
const PROBE: &str = r#"#!/bin/sh
d=$1
echo "probe: mount $(awk -v d="$d" '$5 == d {print $6}' /proc/self/mountinfo)"
echo "probe: reports mount $(awk -v d="$d/tend-reports" '$5 == d {print $6}' /proc/self/mountinfo)"
echo "probe: sees $(ls "$d" | tr '\n' ' ')"
if touch "$d/written-outside" 2>/dev/null; then echo "probe: outside written"; else echo "probe: outside refused"; fi
if echo probed > "$d/tend-reports/probe.txt" 2>/dev/null; then echo "probe: report written"; else echo "probe: report refused"; fi
if cat "$d/evil/hostname" >/dev/null 2>&1; then echo "probe: symlink followed"; else echo "probe: symlink refused"; fi
if touch /run/probe 2>/dev/null; then echo "probe: /run written"; else echo "probe: /run refused"; fi
if touch /var/lib/tend/probe 2>/dev/null; then echo "probe: store written"; else echo "probe: store refused"; fi
sleep "${PROBE_SLEEP:-0}"
exit "${PROBE_EXIT:-0}"
"#;

#[test]
#[ignore = "needs the amd64 .deb (packaging/deb.sh), Podman and loop devices; tests/run runs it"]
fn a_stick_is_mounted_read_only_imported_and_unmounted_under_a_real_systemd() {
    let (deb, rootfs) = deb_and_rootfs();
    let tmp = tempfile::tempdir().unwrap();
    // A stick as a technician brings it: a .tend file, tend-reports/, and
    // (hostile) a symlink out of the stick.
    let stick = Stick::new(tmp.path(), "stick", false, |root| {
        std::fs::write(root.join("fleet-0123456789ab.tend"), "not a real export\n").unwrap();
        std::fs::create_dir(root.join("tend-reports")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("evil")).unwrap();
    });
    // Hostile: tend-reports is a symlink to the gateway's /etc.
    let hostile = Stick::new(tmp.path(), "hostile", false, |root| {
        std::fs::write(root.join("fleet-0123456789ab.tend"), "not a real export\n").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("tend-reports")).unwrap();
    });
    // Write-protected, asking for a report it cannot take.
    let locked = Stick::new(tmp.path(), "locked", true, |root| {
        std::fs::write(root.join("fleet-0123456789ab.tend"), "not a real export\n").unwrap();
        std::fs::create_dir(root.join("tend-reports")).unwrap();
    });
    let devices: Vec<String> =
        [&stick, &hostile, &locked].iter().flat_map(|s| ["--device".into(), s.dev.clone()]).collect();
    let m = Machine::boot(&rootfs, deb.parent().unwrap(), &devices);
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    m.ok(&format!("dpkg -i /deb/{name}"));
    let rule = m.ok("cat /usr/lib/udev/rules.d/90-tend-import.rules");
    assert!(rule.contains("tend-import@%k.service"), "{rule}");

    // A container has no udev and a read-only /sys: systemd cannot start
    // device units there ("Starting of dev-loop0.device unsupported"), so
    // BindsTo=dev-%i.device would fail every start. The shipped unit is
    // used with those two lines taken out, and nothing else changed.
    m.ok("sed '/^BindsTo=dev-/d; /^After=dev-/d' /usr/lib/systemd/system/tend-import@.service \
         > /etc/systemd/system/tend-import@.service");
    let shipped = m.ok("grep -v '^BindsTo=dev-\\|^After=dev-' /usr/lib/systemd/system/tend-import@.service");
    assert_eq!(shipped, m.ok("cat /etc/systemd/system/tend-import@.service"));
    m.write("/usr/local/bin/stick-probe", PROBE);
    m.ok("chmod 755 /usr/local/bin/stick-probe");
    let dropin = "/etc/systemd/system/tend-import@.service.d/probe.conf";
    let probe = |extra: &str| {
        m.write(
            dropin,
            &format!("[Service]\nExecStart=\nExecStart=/usr/local/bin/stick-probe /run/tend/media/%I\n{extra}"),
        );
        m.ok("systemctl daemon-reload");
    };
    let unit = |s: &Stick| format!("tend-import@{}.service", s.name());
    let prop = |s: &Stick, p: &str| m.ok(&format!("systemctl show -p {p} --value {}", unit(s))).trim().to_owned();
    // The journal of one run of the unit: from a cursor taken before it.
    let cursor = || {
        let shown = m.ok("journalctl -n 0 --show-cursor --no-pager");
        shown.lines().find_map(|l| l.strip_prefix("-- cursor: ")).unwrap_or_else(|| panic!("{shown}")).to_owned()
    };
    let journal =
        |s: &Stick, after: &str| m.ok(&format!("journalctl -u {} --after-cursor='{after}' --no-pager -o cat", unit(s)));
    let media = |s: &Stick| format!("/run/tend/media/{}", s.name());
    let unmounted = |s: &Stick| {
        let left = m.sh(&format!("findmnt -n -S {}; ls -d {} 2>/dev/null", s.dev, media(s)));
        assert_eq!(left.trim(), "", "the stick is still mounted or its mount point left");
    };

    // 1. The import succeeds: while it ran the stick was read-only but for
    // tend-reports/, no symlink was followed; afterwards it is unmounted
    // and the report is on the stick.
    probe("");
    let c = cursor();
    let _ = m.sh(&format!("systemctl start {}", unit(&stick)));
    let said = journal(&stick, &c);
    eprintln!("== the stick, the probe as the import\n{said}");
    assert_eq!(prop(&stick, "Result"), "success", "{said}");
    let mount_line = said.lines().find_map(|l| l.strip_prefix("probe: mount ")).unwrap_or_else(|| panic!("{said}"));
    let opts: Vec<&str> = mount_line.split(',').collect();
    for o in ["ro", "nosuid", "nodev", "noexec", "nosymfollow"] {
        assert!(opts.contains(&o), "the stick's mount lacks {o}: {mount_line}");
    }
    let reports = said.lines().find_map(|l| l.strip_prefix("probe: reports mount ")).unwrap();
    assert!(reports.split(',').any(|o| o == "rw"), "tend-reports/ is not writable: {reports}");
    for line in [
        "probe: outside refused",
        "probe: report written",
        "probe: symlink refused",
        "probe: /run refused",
        "probe: store written",
    ] {
        assert!(said.contains(line), "{line:?} not in:\n{said}");
    }
    assert!(said.contains("probe: sees ") && said.contains("fleet-0123456789ab.tend"), "{said}");
    unmounted(&stick);
    assert_eq!(stick.cat("/tend-reports/probe.txt"), "probed\n");
    assert!(!stick.ls("/").contains("written-outside"));

    // 2. The import fails: unmounted all the same.
    probe("Environment=PROBE_EXIT=1\n");
    let c = cursor();
    let _ = m.sh(&format!("systemctl start {}", unit(&stick)));
    assert_eq!(prop(&stick, "Result"), "exit-code", "{}", journal(&stick, &c));
    assert!(journal(&stick, &c).contains("unmounted from"));
    unmounted(&stick);

    // 3. The import hangs past TimeoutStartSec=: killed, then unmounted.
    // Meanwhile tend.service starts and stops (the sample configuration is
    // no configuration: exit 2), and systemd removes its RuntimeDirectory=
    // /run/tend: not the stick mounted under it.
    probe("Environment=PROBE_SLEEP=600\nTimeoutStartSec=20s\n");
    let c = cursor();
    m.ok(&format!("systemctl start --no-block {}", unit(&stick)));
    m.wait("the stick mounted", Duration::from_secs(15), |_| journal(&stick, &c).contains("probe: symlink refused"));
    let _ = m.sh("systemctl reset-failed tend; systemctl start tend");
    m.wait("tend.service stopped", Duration::from_secs(15), |m| {
        m.sh("systemctl show -p ActiveState --value tend").trim() == "failed"
    });
    let listed = m.ok(&format!("ls {}; findmnt -n -o OPTIONS {}", media(&stick), media(&stick)));
    assert!(
        listed.contains("fleet-0123456789ab.tend") && listed.contains("ro,"),
        "the stick after tend stopped: {listed}"
    );
    m.wait("the timeout", Duration::from_secs(40), |_| prop(&stick, "Result") == "timeout");
    m.wait("the unmount", Duration::from_secs(15), |_| prop(&stick, "ActiveState") == "failed");
    eprintln!("== the stick, the import timed out\n{}", journal(&stick, &c));
    unmounted(&stick);
    assert_eq!(stick.cat("/fleet-0123456789ab.tend"), "not a real export\n", "the stick was changed");

    // 4. A hostile stick whose tend-reports is a symlink to /etc: mounted
    // read-only without a writable tend-reports/, nothing written to /etc.
    probe("");
    let c = cursor();
    let _ = m.sh(&format!("systemctl start {}", unit(&hostile)));
    let said = journal(&hostile, &c);
    eprintln!("== the hostile stick\n{said}");
    assert!(said.contains("tend-reports is a symlink: refused"), "{said}");
    assert!(said.contains("probe: report refused") && said.contains("probe: outside refused"), "{said}");
    assert!(said.lines().any(|l| l.trim_end() == "probe: reports mount"), "tend-reports/ mounted: {said}");
    assert_eq!(m.sh("ls /etc/probe.txt 2>/dev/null").trim(), "", "a hostile stick wrote into /etc");
    unmounted(&hostile);

    // 4a. A write-protected stick: imported read-only, without a report.
    let c = cursor();
    let _ = m.sh(&format!("systemctl start {}", unit(&locked)));
    let said = journal(&locked, &c);
    eprintln!("== the write-protected stick\n{said}");
    assert_eq!(prop(&locked, "Result"), "success", "{said}");
    assert!(said.contains("cannot be written (write-protected?), no report"), "{said}");
    assert!(said.contains("probe: sees ") && said.contains("fleet-0123456789ab.tend"), "{said}");
    assert!(said.contains("probe: report refused"), "{said}");
    unmounted(&locked);

    // 4b. Not a stick: a device mounted elsewhere (an fstab entry, a boot
    // partition on USB) is skipped by ExecCondition=, not mounted again.
    m.ok(&format!("mkdir -p /mnt/elsewhere && mount -o ro {} /mnt/elsewhere", hostile.dev));
    let c = cursor();
    let _ = m.sh(&format!("systemctl start {}", unit(&hostile)));
    let said = journal(&hostile, &c);
    eprintln!("== a device mounted elsewhere\n{said}");
    assert!(said.contains("is mounted already (/mnt/elsewhere): not imported"), "{said}");
    assert!(!said.contains("probe:"), "imported all the same: {said}");
    assert_eq!(prop(&hostile, "ActiveState"), "inactive", "{said}");
    assert_eq!(m.sh(&format!("ls -d {} 2>/dev/null", media(&hostile))).trim(), "");
    m.ok("umount /mnt/elsewhere");

    // 5. The unit as shipped runs `tend import` on the stick.
    m.ok(&format!("rm {dropin} && systemctl daemon-reload"));
    let c = cursor();
    let _ = m.sh(&format!("systemctl start {}", unit(&stick)));
    let said = journal(&stick, &c);
    eprintln!("== the stick, tend import\n{said}");
    let exec = prop(&stick, "ExecStart");
    assert!(exec.contains(&format!("argv[]=/usr/bin/tend import /run/tend/media/{} ;", stick.name())), "{exec}");
    eprintln!("tend import: {exec}");
    let ran = m.ok(&format!("journalctl -u {} --after-cursor='{c}' --no-pager -o cat _COMM=tend", unit(&stick)));
    assert!(!ran.trim().is_empty(), "tend import said nothing in the journal: {said}");
    unmounted(&stick);
}
