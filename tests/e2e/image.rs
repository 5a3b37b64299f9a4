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

use tend_e2e::monitor::{Browser, FleetServe};
use tend_e2e::{Fleet, GitDaemon, Mosquitto, Run, Subscription, commit_signed, repo_root, run, ssh_key, tend_bin};

/// The boot partition starts at 1 MiB (build.sh), the root one at 129 MiB.
const BOOT: &str = "@@1M";
const ROOT_MIB: u64 = 129;

struct Vm {
    disk: PathBuf,
    serial: PathBuf,
    /// QEMU's monitor (a unix socket), to plug devices in.
    monitor: PathBuf,
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
        Vm {
            disk,
            serial: dir.join(format!("{name}.serial")),
            monitor: dir.join(format!("{name}.monitor")),
            kernel: kernel.to_owned(),
            child: None,
        }
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
            // A USB controller (sticks are plugged in through the monitor).
            .args(["-device", "qemu-xhci,id=xhci"])
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", self.monitor.display()))
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

    /// Plug a USB stick in: `image`, a raw disk image, as usb-storage
    /// (ENV.md: `drive_add`, then `device_add` through the monitor).
    fn plug(&self, image: &Path) {
        use std::io::{Read, Write};
        let mut m = std::os::unix::net::UnixStream::connect(&self.monitor).expect("QEMU's monitor");
        m.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut said = String::new();
        let mut until_prompt = |m: &mut std::os::unix::net::UnixStream| {
            let mut buf = [0u8; 4096];
            let start = said.len();
            while !said[start..].contains("(qemu)") {
                let n = m.read(&mut buf).expect("the monitor answers");
                assert!(n > 0, "the monitor closed: {said}");
                said.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            said[start..].to_owned()
        };
        until_prompt(&mut m);
        for cmd in [
            format!("drive_add 0 if=none,id=stick,file={},format=raw", image.display()),
            "device_add usb-storage,bus=xhci.0,drive=stick,id=stick0".to_owned(),
        ] {
            m.write_all(format!("{cmd}\n").as_bytes()).unwrap();
            let answer = until_prompt(&mut m);
            assert!(!answer.to_lowercase().contains("error"), "{cmd}: {answer}");
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

/// The device id a VM's tend says it has (on its console: `started: tend …
/// for img/<id>`).
fn own_id_of(vm: &Vm) -> String {
    let console = vm.console();
    let at = console.find("started: tend ").unwrap_or_else(|| panic!("no start line:\n{}", tail(&console)));
    let rest = &console[at..];
    let id = rest.split(" for img/").nth(1).and_then(|r| r.split(',').next()).expect(rest);
    id.to_owned()
}

/// The `model` at the root of the device tree QEMU's virt machine (as
/// [`Vm::boot`] runs it) hands the kernel: the board /proc/device-tree/model
/// names in the guest. `None` when it names none.
fn virt_model() -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let dtb = dir.path().join("virt.dtb");
    run(Command::new("qemu-system-aarch64").arg("-M").arg(format!("virt,dumpdtb={}", dtb.display())).args([
        "-cpu",
        "cortex-a57",
        "-m",
        "768",
        "-smp",
        "1",
        "-display",
        "none",
        "-nodefaults",
        "-net",
        "none",
    ]));
    let d = std::fs::read(&dtb).unwrap();
    // The flattened device tree: a header, a structure block of tokens
    // (1 begin node, 2 end node, 3 property, 4 nop, 9 end), a strings block.
    let word = |at: usize| u32::from_be_bytes(d[at..at + 4].try_into().unwrap()) as usize;
    let cstr = |at: usize| &d[at..at + d[at..].iter().position(|&b| b == 0).unwrap()];
    assert_eq!(word(0), 0xd00d_feed, "not a device tree");
    let (mut at, strings, mut depth) = (word(8), word(12), 0);
    loop {
        let token = word(at);
        at += 4;
        match token {
            1 => {
                at = (at + cstr(at).len() + 1 + 3) & !3;
                depth += 1;
            }
            2 => depth -= 1,
            3 => {
                let (len, name) = (word(at), word(at + 4));
                let value = &d[at + 8..at + 8 + len];
                if depth == 1 && cstr(strings + name) == b"model" {
                    return Some(String::from_utf8_lossy(value).trim_end_matches('\0').to_owned());
                }
                at = (at + 8 + len + 3) & !3;
            }
            4 => {}
            _ => return None,
        }
    }
}

/// `TEND_IMAGE`, or the image built here into `dir`.
fn gateway_image(dir: &Path) -> PathBuf {
    match std::env::var_os("TEND_IMAGE") {
        Some(p) => PathBuf::from(p),
        None => {
            let out = dir.join("gateway.img");
            let t = Instant::now();
            run(Command::new(repo_root().join("packaging/image/build.sh")).arg("--out").arg(&out));
            eprintln!("image built in {:.0} s", t.elapsed().as_secs_f64());
            out
        }
    }
}

/// Issue 25, acceptance 3: a gateway that never had a network (no NIC at
/// all) gets its first revision from a USB stick plugged in through QEMU's
/// monitor: the .deb's udev rule and tend-import@.service mount it, the
/// running daemon imports it (it sees the stick mounted after it started),
/// the revision is applied, the report is on the stick afterwards; `tend
/// fleet ingest` of the stick makes the gateway appear in `fleet status`
/// and in the fleet view (headless Chromium).
#[test]
#[ignore = "needs the arm64 .deb and qemu-system-aarch64; tests/run runs it"]
fn a_stick_is_imported_hands_free_on_a_gateway_without_network() {
    let tmp = tempfile::tempdir().unwrap();
    let image = gateway_image(tmp.path());
    let (key, public) = ssh_key(tmp.path(), "ops");
    let fleet = Fleet::new(tmp.path(), "fleet");
    fleet.write("shared/files/etc/myapp/app.conf", "version = from-the-stick\n");
    let v1 = commit_signed(&fleet, &key, "v1");
    // Its source and broker are nowhere it could reach (it has no NIC):
    // events wait in its store for the stick.
    let agent = "fleet = \"img\"\n[source]\nurl = \"git://10.0.2.2:9/fleet\"\npath = \"shared\"\n\
                 allowed_signers = \"/etc/tend/allowed_signers\"\n[files]\nallow = [\"/etc/myapp\"]\n\
                 [mqtt]\nurl = \"mqtt://10.0.2.2:1883\"\nhealth_interval = \"1h\"\n";
    let signers = format!("ops@example.com namespaces=\"git,tend-export\" {public}\n");
    let files = [("agent.toml", agent), ("allowed_signers", signers.as_str())];
    let mut vm = Vm::new(tmp.path(), "site", &image, &image, &files);
    if std::env::var_os("TEND_IMAGE").is_none() {
        std::fs::remove_file(&image).unwrap();
    }
    let t = Instant::now();
    vm.boot(false);
    vm.wait_console("source unreachable", Duration::from_secs(600));
    eprintln!("the site gateway is up without a network after {:.0} s", t.elapsed().as_secs_f64());
    let console = vm.console();
    let at = console.find("started: tend ").unwrap_or_else(|| panic!("no start line:\n{}", tail(&console)));
    let id = console[at..].split(" for img/").nth(1).and_then(|r| r.split(',').next()).unwrap().to_owned();

    // The operator's stick: the export, and tend-reports/ to ask for reports.
    let out = tmp.path().join("export");
    std::fs::create_dir_all(&out).unwrap();
    let r: Run = Command::new(tend_bin())
        .args(["fleet", "export", "--fleet", "img", "--path", "shared", "--repo"])
        .arg(&fleet.dir)
        .arg("--key")
        .arg(&key)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    let export = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let stick = tmp.path().join("stick.img");
    run(Command::new("mkfs.vfat").args(["-n", "TEND"]).arg("-C").arg(&stick).arg("32768"));
    let at = stick.display().to_string();
    run(Command::new("mmd").args(["-i", &at, "::tend-reports"]));
    run(Command::new("mcopy").args(["-i", &at]).arg(&export).arg("::"));

    let t = Instant::now();
    vm.plug(&stick);
    vm.wait_console("report written to", Duration::from_secs(300));
    vm.wait_console("tend-import@", Duration::from_secs(60));
    let unmounted = |c: &str| c.lines().any(|l| l.contains("tend-import@") && l.contains("Deactivated successfully"));
    let start = Instant::now();
    while !unmounted(&vm.console()) {
        assert!(start.elapsed() < Duration::from_secs(120), "the import unit did not finish:\n{}", tail(&vm.console()));
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("stick imported hands-free {:.0} s after it was plugged in", t.elapsed().as_secs_f64());
    let console = vm.console();
    assert!(console.contains(&format!("applied {}", &v1[..12])), "{}", tail(&console));
    // Through the running daemon, which opened the file on the stick.
    assert!(console.lines().any(|l| l.contains("importing") && l.contains("tend[")), "{}", tail(&console));
    vm.kill();
    replay_journal(&vm.disk);
    assert_eq!(cat_root(&vm.disk, "/etc/myapp/app.conf"), "version = from-the-stick\n");

    // The report, on the stick.
    let back = tmp.path().join("back");
    std::fs::create_dir_all(back.join("tend-reports")).unwrap();
    run(Command::new("mcopy")
        .args(["-i", &at])
        .arg(format!("::tend-reports/{id}.json"))
        .arg(back.join(format!("tend-reports/{id}.json"))));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join(format!("tend-reports/{id}.json"))).unwrap()).unwrap();
    assert_eq!(report["status"]["revision"], v1.as_str(), "{report}");
    assert_eq!(report["status"]["phase"], "synced", "{report}");
    // Nothing but the report was written: the export is as it was.
    let copy = tmp.path().join("copy.tend");
    run(Command::new("mcopy")
        .args(["-i", &at])
        .arg(format!("::{}", export.file_name().unwrap().to_string_lossy()))
        .arg(&copy));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&export).unwrap());

    // Back at the office: the report, ingested, shows the site.
    let broker = Mosquitto::start();
    let r: Run =
        Command::new(tend_bin()).args(["fleet", "ingest", "--mqtt", &broker.url()]).arg(&back).output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    let v = Command::new(tend_bin()).args(["fleet", "status", "--json", "--mqtt", &broker.url()]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    let d = &v["devices"][0];
    assert_eq!((d["device_id"].as_str(), d["via"].as_str()), (Some(id.as_str()), Some("import")), "{v}");
    assert_eq!(d["revision"], v1.as_str());
    let serve = FleetServe::start(tmp.path(), &broker.url(), &[]);
    serve.wait("the site", Duration::from_secs(30), |v| v["counts"]["gateways"] == 1);
    let mut b = Browser::start();
    b.navigate(&format!("http://127.0.0.1:{}/", serve.port));
    let row = format!(
        "Array.from(document.querySelectorAll('#rows tr')).some(r => r.innerText.includes('{id}') && r.innerText.includes('import'))"
    );
    b.wait("the site's row, via import", Duration::from_secs(20), &row);
}

#[test]
#[ignore = "needs the arm64 .deb and qemu-system-aarch64; tests/run runs it"]
fn two_gateways_from_one_image_boot_sync_report_and_re_enforce_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let image = gateway_image(tmp.path());
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
    // What the image's OS says it is (read from its disk, not by tend).
    let os_release = cat_root(&a.disk, "/usr/lib/os-release");
    let pretty =
        os_release.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_owned());
    let t = Instant::now();
    a.boot(true);
    b.boot(true);
    let ids = wait_fleet(&status, "both gateways applied v1", Duration::from_secs(600), &v1, &[&a, &b]);
    eprintln!("two gateways booted and applied v1 in {:.0} s: {ids:?}", t.elapsed().as_secs_f64());
    // Issue 26, acceptance 5: the inventory of an arm64 gateway. The board
    // is what QEMU's virt machine names in the device tree it hands the
    // kernel (dumped here from the same QEMU), or none if it names none.
    let model = virt_model();
    let kernel = {
        let console = a.console();
        let at = console.find("Linux version ").map(|i| &console[i + "Linux version ".len()..]);
        at.and_then(|r| r.split_whitespace().next()).map(str::to_owned)
    };
    for (id, s) in statuses(&status) {
        let inv = &s["inventory"];
        assert_eq!(inv["arch"], "aarch64", "{id}: {s}");
        assert_eq!(inv["model"], serde_json::json!(model), "{id}: {s}");
        assert_eq!(inv["os"], serde_json::json!(pretty), "{id}: {s}");
        assert!(inv["kernel"].is_string() && inv["runtime"].is_null() && inv["k3s"].is_null(), "{id}: {s}");
        if id == own_id_of(&a) {
            assert_eq!(inv["kernel"], serde_json::json!(kernel), "{id}: {s}");
        }
    }
    // One image, two gateways, two ids: each VM's tend says its own (on its
    // console: `started: tend … for img/<id>`), and they differ.
    let (a_id, b_id) = (own_id_of(&a), own_id_of(&b));
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
