//! Issue 18: the arm64 gateway image (`packaging/image/build.sh`) booted
//! under `qemu-system-aarch64 -M virt` with the kernel installed in it, two
//! VMs from the same image at once, each provisioned by files dropped on its
//! boot partition, reaching a real git daemon and a real Mosquitto on the
//! host's loopback through QEMU's user-mode network (10.0.2.2). Checked: each
//! comes up with its own device id (from its machine-id) and reports the first
//! commit applied over MQTT, then a second commit; the provisioning is gone
//! from the boot partition and its secret is 0600 root in /etc/tend; after a
//! power cut one boots with no network at all and tend re-enforces the last
//! revision from its store (a file changed on its disk in between is put
//! back, read from the disk after another power cut). Then `build.sh --from`
//! injects tend into a copy of an image tend is not in (`build.sh --plain`):
//! the input is unchanged, a third gateway from the copy gets its own id and
//! applies the current revision.
//!
//! Needs the arm64 `.deb` (`cross/build.sh`, `packaging/deb.sh`) and QEMU, so
//! it is ignored by a plain `cargo test`; `tests/run` runs it in the
//! background once the packages exist. `TEND_IMAGE` names an image already
//! built (its kernel and initrd beside it, as build.sh writes them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tend_e2e::{Fleet, GitDaemon, Mosquitto, Subscription, repo_root, run};

/// The boot partition starts at 1 MiB (build.sh), the root one at 129 MiB.
const BOOT: &str = "@@1M";
const ROOT_MIB: u64 = 129;

struct Vm {
    disk: PathBuf,
    serial: PathBuf,
    /// The kernel and initrd are `{kernel}.vmlinuz` and `{kernel}.initrd`.
    kernel: PathBuf,
    child: Option<Child>,
}

impl Vm {
    /// A copy of `image`, provisioned with `files` in BOOT/tend/, booted with
    /// the kernel build.sh wrote beside `kernel`.
    fn new(dir: &Path, name: &str, image: &Path, kernel: &Path, files: &[(&str, &str)]) -> Vm {
        let disk = dir.join(format!("{name}.img"));
        run(Command::new("cp").arg("--sparse=always").arg(image).arg(&disk));
        let at = format!("{}{BOOT}", disk.display());
        run(Command::new("mmd").args(["-i", &at, "::tend"]));
        for (file, content) in files {
            let local = dir.join(format!("{name}-{file}"));
            std::fs::write(&local, content).unwrap();
            run(Command::new("mcopy").args(["-i", &at]).arg(&local).arg(format!("::tend/{file}")));
        }
        Vm { disk, serial: dir.join(format!("{name}.serial")), kernel: kernel.to_owned(), child: None }
    }

    /// Power on, with or without a network card.
    fn boot(&mut self, network: bool) {
        let _ = std::fs::remove_file(&self.serial);
        let mut c = Command::new("qemu-system-aarch64");
        c.args(["-M", "virt", "-cpu", "cortex-a57", "-m", "768", "-smp", "1", "-display", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(format!("{}.vmlinuz", self.kernel.display()))
            .arg("-initrd")
            .arg(format!("{}.initrd", self.kernel.display()))
            .args(["-append", "root=/dev/vda2 rw console=ttyAMA0"])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", self.disk.display()))
            .arg("-serial")
            .arg(format!("file:{}", self.serial.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if network {
            // No option ROM: nothing boots from the network.
            c.args(["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile="]);
        } else {
            c.args(["-nic", "none"]);
        }
        self.child = Some(c.spawn().expect("qemu-system-aarch64 (tests/run installs qemu-system-arm)"));
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    fn wait_console(&self, what: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.console().contains(what) {
            assert!(
                start.elapsed() < timeout,
                "no {what:?} on the console after {timeout:?}:\n{}",
                tail(&self.console())
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Pull the plug.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The root partition of `disk` as debugfs opens it, in place.
fn root_fs(disk: &Path) -> String {
    format!("{}?offset={}", disk.display(), ROOT_MIB << 20)
}

/// A file of `disk`'s root file system (`debugfs -R "cat PATH"`).
fn cat_root(disk: &Path, path: &str) -> String {
    run(Command::new("debugfs").arg("-R").arg(format!("cat {path}")).arg(root_fs(disk)))
}

/// Whether the provisioning directory is gone from `disk`'s boot partition.
fn provisioning_gone(disk: &Path) -> bool {
    !Command::new("mdir")
        .arg("-i")
        .arg(format!("{}{BOOT}", disk.display()))
        .arg("::tend")
        .output()
        .unwrap()
        .status
        .success()
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Each gateway's latest status, by device id.
fn statuses(sub: &Subscription) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for line in sub.lines() {
        let Some((topic, payload)) = line.split_once(' ') else { continue };
        let Some(dev) = topic.strip_prefix("tend/v1/img/").and_then(|t| t.strip_suffix("/status")) else { continue };
        if let Ok(v) = serde_json::from_str(payload) {
            out.insert(dev.to_owned(), v);
        }
    }
    out
}

/// The gateways that report `revision` applied (phase `synced`).
fn synced<'a>(s: &'a BTreeMap<String, serde_json::Value>, revision: &str) -> Vec<&'a String> {
    s.iter().filter(|(_, v)| v["revision"] == revision && v["phase"] == "synced").map(|(d, _)| d).collect()
}

/// Wait until `done` finds what it looks for in the statuses; past `timeout`,
/// fail with them and the consoles of `vms`.
fn wait_statuses<T>(
    sub: &Subscription,
    what: &str,
    timeout: Duration,
    vms: &[&Vm],
    done: impl Fn(&BTreeMap<String, serde_json::Value>) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        let s = statuses(sub);
        if let Some(t) = done(&s) {
            return t;
        }
        if start.elapsed() > timeout {
            let consoles: Vec<String> = vms.iter().map(|v| tail(&v.console())).collect();
            panic!("{what} after {timeout:?}; statuses {s:?}\n{}", consoles.join("\n-----\n"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Wait until every one of `vms` reports `revision` applied: their ids.
fn wait_fleet(sub: &Subscription, what: &str, timeout: Duration, revision: &str, vms: &[&Vm]) -> Vec<String> {
    wait_statuses(sub, what, timeout, vms, |s| {
        let done = synced(s, revision);
        (done.len() == vms.len()).then(|| done.into_iter().cloned().collect())
    })
}

#[test]
#[ignore = "needs the arm64 .deb and qemu-system-aarch64; tests/run runs it"]
fn two_gateways_from_one_image_boot_sync_report_and_re_enforce_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let image = match std::env::var_os("TEND_IMAGE") {
        Some(p) => PathBuf::from(p),
        None => {
            let out = tmp.path().join("gateway.img");
            let t = Instant::now();
            run(Command::new(repo_root().join("packaging/image/build.sh")).arg("--out").arg(&out));
            eprintln!("image built in {:.0} s", t.elapsed().as_secs_f64());
            out
        }
    };
    let fleet = Fleet::new(tmp.path(), "fleet");
    fleet.write("shared/files/etc/myapp/app.conf", "version = 1\n");
    let v1 = fleet.commit("v1");
    let git = GitDaemon::start(tmp.path());
    let broker = Mosquitto::start();
    let status = Subscription::start(&broker, "tend/v1/img/+/status", "image-status");
    // What an operator drops on the boot partition: no device_id (each
    // gateway takes its own), a secret.
    let agent = format!(
        "fleet = \"img\"\n[source]\nurl = \"git://10.0.2.2:{}/fleet\"\npath = \"shared\"\ninterval = \"5s\"\njitter = \"0s\"\n\
         [files]\nallow = [\"/etc/myapp\"]\n[mqtt]\nurl = \"mqtt://10.0.2.2:{}\"\nusername = \"gw\"\n\
         password_file = \"/etc/tend/mqtt-password\"\nhealth_interval = \"1h\"\n",
        git.port, broker.port
    );
    let secret = "s3cret-mqtt-password";
    let files = [("agent.toml", agent.as_str()), ("mqtt-password", secret)];
    let mut a = Vm::new(tmp.path(), "a", &image, &image, &files);
    let mut b = Vm::new(tmp.path(), "b", &image, &image, &files);
    if std::env::var_os("TEND_IMAGE").is_none() {
        std::fs::remove_file(&image).unwrap(); // built here; its kernel and initrd stay
    }
    let t = Instant::now();
    a.boot(true);
    b.boot(true);
    let ids = wait_fleet(&status, "both gateways applied v1", Duration::from_secs(600), &v1, &[&a, &b]);
    eprintln!("two gateways booted and applied v1 in {:.0} s: {ids:?}", t.elapsed().as_secs_f64());
    // One image, two gateways, two ids: each VM's tend says its own (on its
    // console: `started: tend … for img/<id>`), and they differ.
    let own_id = |vm: &Vm| -> String {
        let console = vm.console();
        let at = console.find("started: tend ").unwrap_or_else(|| panic!("no start line:\n{}", tail(&console)));
        let rest = &console[at..];
        let id = rest.split(" for img/").nth(1).and_then(|r| r.split(',').next()).expect(rest);
        id.to_owned()
    };
    let (a_id, b_id) = (own_id(&a), own_id(&b));
    assert_ne!(a_id, b_id, "one image, two gateways, one id");
    let mut own = vec![a_id.clone(), b_id];
    own.sort();
    assert_eq!(own, ids, "the ids the VMs say are not the ones that reported");
    // systemd is PID 1 and started tend's unit (its journal is on the console).
    for vm in [&a, &b] {
        assert!(vm.console().contains("systemd[1]: Started tend.service"), "{}", tail(&vm.console()));
    }
    for id in &ids {
        assert!(
            id.starts_with("gw-") && id.len() == 15 && id[3..].bytes().all(|c| c.is_ascii_hexdigit()),
            "not a machine-id device id: {id}"
        );
    }

    // The second commit, polled.
    fleet.write("shared/files/etc/myapp/app.conf", "version = 2\n");
    let v2 = fleet.commit("v2");
    let t = Instant::now();
    wait_fleet(&status, "both gateways applied v2", Duration::from_secs(120), &v2, &[&a, &b]);
    eprintln!("v2 applied by both in {:.0} s", t.elapsed().as_secs_f64());
    b.kill();
    // Each disk holds about 0.7 GB: what is no longer needed goes.
    std::fs::remove_file(&b.disk).unwrap();

    // An image tend is not in (the same recipe with --plain, standing in for
    // one an operator downloaded), tend injected into a copy of it: the
    // input is left as it was; the copy has the package in dpkg's database
    // and the README on its boot partition.
    let plain = tmp.path().join("plain.img");
    run(Command::new(repo_root().join("packaging/image/build.sh")).arg("--plain").arg("--out").arg(&plain));
    // Laid out as an older Raspberry Pi OS is: its FAT partition mounted at
    // /boot, not /boot/firmware (inject.sh tells tend-firstboot with a drop-in).
    let fstab = cat_root(&plain, "/etc/fstab");
    assert!(fstab.contains(" /boot/firmware "), "{fstab}");
    std::fs::write(tmp.path().join("fstab"), fstab.replace(" /boot/firmware ", " /boot ")).unwrap();
    std::fs::write(
        tmp.path().join("fstab.debugfs"),
        format!("rm /etc/fstab\nwrite {}/fstab /etc/fstab\n", tmp.path().display()),
    )
    .unwrap();
    run(Command::new("debugfs").arg("-w").arg("-f").arg(tmp.path().join("fstab.debugfs")).arg(root_fs(&plain)));
    let sum = |p: &Path| run(Command::new("sha256sum").arg(p)).split_whitespace().next().unwrap().to_owned();
    let plain_sum = sum(&plain);
    let injected = tmp.path().join("injected.img");
    run(Command::new(repo_root().join("packaging/image/build.sh"))
        .arg("--from")
        .arg(&plain)
        .arg("--out")
        .arg(&injected));
    assert_eq!(sum(&plain), plain_sum, "the image tend was injected from was modified");
    std::fs::remove_file(&plain).unwrap(); // (its kernel and initrd stay)
    let readme =
        run(Command::new("mtype").arg("-i").arg(format!("{}{BOOT}", injected.display())).arg("::README-tend.txt"));
    assert!(readme.contains("agent.toml"), "{readme}");
    let dpkg = cat_root(&injected, "/var/lib/dpkg/status");
    assert!(dpkg.contains("Package: tend\nStatus: install ok installed"), "tend is not in dpkg's database");
    let dropin = cat_root(&injected, "/etc/systemd/system/tend-firstboot.service.d/boot.conf");
    assert!(dropin.contains("Environment=TEND_BOOT=/boot\n"), "{dropin}");
    // A third gateway from it (in place of b, so two VMs run at a time): its
    // own id, and the current revision applied and reported.
    let mut c = Vm::new(tmp.path(), "c", &injected, &plain, &files);
    std::fs::remove_file(&injected).unwrap();
    c.boot(true);
    let t = Instant::now();
    let c_id = wait_statuses(&status, "the injected image did not apply v2", Duration::from_secs(600), &[&c], |s| {
        synced(s, &v2).into_iter().find(|id| !ids.contains(id)).cloned()
    });
    eprintln!(
        "a gateway from the injected image applied v2 {:.0} s after power-on as {c_id}",
        t.elapsed().as_secs_f64()
    );
    assert!(c.console().contains("systemd[1]: Started tend.service"), "{}", tail(&c.console()));
    c.kill();
    assert!(provisioning_gone(&c.disk), "the provisioning is still on the injected image's boot partition");

    // A power cut, then a boot with no network card: the revision in the
    // store is enforced at start, before any fetch could happen. Between the
    // two, app.conf is changed on the disk; after, it is read back.
    a.kill();
    replay_journal(&a.disk);
    assert!(provisioning_gone(&a.disk), "the provisioning is still on the boot partition");
    let stat = run(Command::new("debugfs").arg("-R").arg("stat /etc/tend/mqtt-password").arg(root_fs(&a.disk)));
    assert!(stat.contains("Mode:  0600") && stat.contains("User:     0"), "{stat}");
    assert_eq!(cat_root(&a.disk, "/etc/tend/mqtt-password").trim(), secret);
    assert_eq!(cat_root(&a.disk, "/etc/myapp/app.conf"), "version = 2\n");
    std::fs::write(tmp.path().join("tampered"), "tampered\n").unwrap();
    std::fs::write(
        tmp.path().join("tamper.debugfs"),
        format!("rm /etc/myapp/app.conf\nwrite {}/tampered /etc/myapp/app.conf\n", tmp.path().display()),
    )
    .unwrap();
    run(Command::new("debugfs").arg("-w").arg("-f").arg(tmp.path().join("tamper.debugfs")).arg(root_fs(&a.disk)));
    assert_eq!(cat_root(&a.disk, "/etc/myapp/app.conf"), "tampered\n");
    let t = Instant::now();
    a.boot(false);
    a.wait_console(&format!("enforced from the store: {}", &v2[..12]), Duration::from_secs(400));
    eprintln!("offline boot: re-enforced v2 {:.0} s after power-on", t.elapsed().as_secs_f64());
    // The first fetch fails after the store was enforced (and its line may
    // come a moment later on the console); then the plug is pulled again.
    a.wait_console("source unreachable", Duration::from_secs(120));
    a.kill();
    replay_journal(&a.disk);
    assert_eq!(cat_root(&a.disk, "/etc/myapp/app.conf"), "version = 2\n", "not re-enforced offline");
}

/// After a power cut: replay the root file system's journal, so what tend
/// fsynced is where debugfs reads (debugfs ignores the journal) and a later
/// boot replays nothing over a file the test changed. e2fsck runs on a loop
/// device at the partition's offset (inject.sh attaches them too): given
/// `disk?offset=`, e2fsprogs 1.47 loses the offset when it re-opens the file
/// system after a replay ("Bad magic number in super-block while trying to
/// re-open").
fn replay_journal(disk: &Path) {
    let offset = (ROOT_MIB << 20).to_string();
    let lo = run(Command::new("losetup").args(["--show", "-f", "-o", &offset]).arg(disk)).trim().to_owned();
    let out = Command::new("e2fsck").args(["-fy", &lo]).output().unwrap();
    let _ = Command::new("losetup").args(["-d", &lo]).status();
    // 0: clean; 1: errors corrected (a replayed journal).
    assert!(matches!(out.status.code(), Some(0 | 1)), "e2fsck: {out:?}");
}
