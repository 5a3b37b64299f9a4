//! Issue 7: what reaches a gateway. The release binaries that `cross/build.sh`
//! makes for ARM run under qemu-user (`--version`, `validate` of the example
//! bundle, one real `sync` from a file:// repository), the aarch64 one fits in
//! 8 MiB, and the .deb packages from `packaging/deb.sh` hold the right files for
//! the right architecture; the amd64 one installs, runs and purges with dpkg.
//!
//! These need the release builds, which take minutes per target, so they are
//! `#[ignore]`d for a plain `cargo test`; `tests/run` builds every target once
//! and runs them with `--ignored` once they are built.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tend_e2e::{Fleet, Gateway, Run, good_bundle, run};

/// The workspace's target directory (the one `tend_bin()` lives in).
fn target_dir() -> PathBuf {
    tend_e2e::tend_bin().parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn release_bin(triple: &str) -> PathBuf {
    let bin = target_dir().join(triple).join("release/tend");
    assert!(bin.exists(), "{} is missing: run cross/build.sh {triple}", bin.display());
    bin
}

/// How to run a binary of `triple` on this x86_64 machine: qemu-user, with
/// the cross toolchain's sysroot for the glibc builds (static musl needs none).
fn under_qemu(triple: &str) -> Command {
    let (qemu, sysroot) = match triple {
        "aarch64-unknown-linux-gnu" => ("qemu-aarch64-static", Some("/usr/aarch64-linux-gnu")),
        "aarch64-unknown-linux-musl" => ("qemu-aarch64-static", None),
        "armv7-unknown-linux-gnueabihf" => ("qemu-arm-static", Some("/usr/arm-linux-gnueabihf")),
        "armv7-unknown-linux-musleabihf" => ("qemu-arm-static", None),
        other => panic!("no qemu for {other}"),
    };
    let mut c = Command::new(qemu);
    if let Some(root) = sysroot {
        c.arg("-L").arg(root);
    }
    c.arg(release_bin(triple)).env_remove("TEND_LOG");
    c
}

/// The ELF machine a binary was built for (e_machine, little-endian).
fn elf_machine(bytes: &[u8]) -> u16 {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    u16::from_le_bytes([bytes[18], bytes[19]])
}
const EM_ARM: u16 = 40;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

fn check_binary_under_qemu(triple: &str, machine: u16) {
    let bin = std::fs::read(release_bin(triple)).unwrap();
    assert_eq!(elf_machine(&bin), machine, "{triple} binary is for the wrong machine");
    // Reproducible: the checkout's location is nowhere in the binary.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().canonicalize().unwrap();
    let ws = workspace.to_string_lossy();
    assert!(!bin.windows(ws.len()).any(|w| w == ws.as_bytes()), "{triple} binary holds the build path {ws}");

    // --version
    let r: Run = under_qemu(triple).arg("--version").output().unwrap().into();
    assert_eq!(r.code, 0, "{triple} --version: {}{}", r.stdout, r.stderr);
    // The version, the commit it was built from, and that it is the gateway
    // build (without the operator's fleet tools).
    let commit = tend_e2e::head_commit();
    assert_eq!(
        r.stdout.trim(),
        format!("tend {} (commit {}, gateway build)", env!("CARGO_PKG_VERSION"), commit),
        "{triple} --version"
    );

    // the gateway build has no fleet server, and says where to get it
    for cmd in ["serve", "status"] {
        let r: Run = under_qemu(triple).args(["fleet", cmd, "--mqtt", "mqtt://127.0.0.1:1"]).output().unwrap().into();
        assert_eq!(r.code, 2, "{triple} fleet {cmd}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("gateway build") && r.stderr.contains("--features fleet-serve"), "{}", r.stderr);
    }

    // validate the example bundle, with the labels its templates use
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet/devices/gw-demo-01");
    let r: Run = under_qemu(triple)
        .arg("validate")
        .arg(&example)
        .args(["--label", "site=berlin", "--label", "region=eu", "--json"])
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{triple} validate: {}{}", r.stdout, r.stderr);
    let files = r.json()["files"].as_array().cloned().unwrap_or_default();
    let paths: Vec<&str> = files.iter().filter_map(|f| f["path"].as_str()).collect();
    assert!(paths.contains(&"/etc/myapp/common.conf") && paths.len() == 4, "{triple} validate: {}", r.stdout);

    // one sync from a file:// repository into a temporary root
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    good_bundle(&fleet);
    let commit = fleet.commit("first");
    let gw = Gateway::new(tmp.path(), &fleet.url(), "");
    let r: Run = under_qemu(triple).env("TEND_CONFIG", &gw.config).args(["sync", "--json"]).output().unwrap().into();
    assert_eq!(r.code, 0, "{triple} sync: {}{}", r.stdout, r.stderr);
    let report = r.json();
    assert_eq!(report["commit"], commit.as_str(), "{triple} sync report: {report}");
    assert_eq!(gw.read("/etc/myapp/app.conf"), "port = 502\n");
    assert_eq!(gw.mode("/etc/myapp/app.conf"), 0o640);
    assert_eq!(gw.mode("/opt/myapp/run.sh"), 0o755);
    // and the state it wrote is the host binary's to read: same store format
    let r = gw.tend(&["status", "--json"]);
    assert_eq!(r.code, 0, "status after the {triple} sync: {}{}", r.stdout, r.stderr);
    assert_eq!(r.json()["revision"], commit.as_str());
    // its status's inventory names the machine it runs on (qemu-user answers
    // uname as the emulated CPU, with this machine's kernel)
    let r: Run = under_qemu(triple).env("TEND_CONFIG", &gw.config).args(["status", "--json"]).output().unwrap().into();
    assert_eq!(r.code, 0, "{triple} status: {}{}", r.stdout, r.stderr);
    let inv = &r.json()["inventory"];
    let arch = inv["arch"].as_str().unwrap_or_default();
    assert!(arch.starts_with(if machine == EM_AARCH64 { "aarch64" } else { "armv" }), "{triple} inventory: {inv}");
    assert_eq!(inv["kernel"].as_str(), Some(run(Command::new("uname").arg("-r")).trim()), "{triple} inventory: {inv}");
}

#[test]
#[ignore = "needs cross/build.sh; tests/run runs it"]
fn aarch64_glibc_binary_runs_validates_and_syncs_under_qemu() {
    check_binary_under_qemu("aarch64-unknown-linux-gnu", EM_AARCH64);
}

#[test]
#[ignore = "needs cross/build.sh; tests/run runs it"]
fn armv7_glibc_binary_runs_validates_and_syncs_under_qemu() {
    check_binary_under_qemu("armv7-unknown-linux-gnueabihf", EM_ARM);
}

#[test]
#[ignore = "needs cross/build.sh; tests/run runs it"]
fn aarch64_static_musl_binary_runs_validates_and_syncs_under_qemu() {
    check_binary_under_qemu("aarch64-unknown-linux-musl", EM_AARCH64);
}

#[test]
#[ignore = "needs cross/build.sh; tests/run runs it"]
fn armv7_static_musl_binary_runs_validates_and_syncs_under_qemu() {
    check_binary_under_qemu("armv7-unknown-linux-musleabihf", EM_ARM);
}

#[test]
#[ignore = "needs cross/build.sh; tests/run runs it"]
fn musl_binaries_are_static() {
    for triple in ["aarch64-unknown-linux-musl", "armv7-unknown-linux-musleabihf", "x86_64-unknown-linux-musl"] {
        let bin = std::fs::read(release_bin(triple)).unwrap();
        // A dynamically linked ELF names its loader in a PT_INTERP segment.
        let interp = bin.windows(b"/lib/ld-".len()).any(|w| w == b"/lib/ld-");
        assert!(!interp, "{triple} names a dynamic loader: not static");
    }
}

#[test]
#[ignore = "needs cross/build.sh; tests/run runs it"]
fn the_aarch64_binary_fits_in_8_mib() {
    let size = std::fs::metadata(release_bin("aarch64-unknown-linux-gnu")).unwrap().len();
    eprintln!("aarch64-unknown-linux-gnu: {size} bytes ({:.2} MiB)", size as f64 / 1048576.0);
    assert!(size <= 8 * 1024 * 1024, "aarch64 binary is {size} bytes, over the 8 MiB budget");
}

// ---- Debian packages ------------------------------------------------------

fn deb(triple: &str, arch: &str) -> PathBuf {
    let dir = target_dir().join(triple).join("debian");
    let name = format!("tend_{}-1_{arch}.deb", env!("CARGO_PKG_VERSION"));
    let path = dir.join(&name);
    assert!(path.exists(), "{} is missing: run packaging/deb.sh", path.display());
    path
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    tend_e2e::run(Command::new("dpkg-deb").args(args).arg(deb))
}

/// The package's architecture field, its file list, and the ELF machine of
/// the binary inside it.
fn check_deb(triple: &str, arch: &str, machine: u16) {
    let deb = deb(triple, arch);
    let fields = dpkg_deb(&["-f"], &deb);
    let arch_line = fields.lines().find(|l| l.starts_with("Architecture:"));
    assert_eq!(arch_line, Some(format!("Architecture: {arch}").as_str()), "{fields}");
    assert!(fields.contains("Package: tend"), "{fields}");
    assert!(fields.lines().any(|l| l.starts_with("Depends:") && l.contains("libc6")), "glibc dependency: {fields}");

    let list = dpkg_deb(&["-c"], &deb);
    let files: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().nth(5)).collect();
    for want in [
        "./usr/bin/tend",
        "./etc/tend/agent.toml",
        "./usr/share/doc/tend/copyright",
        "./usr/share/doc/tend/README.md",
        // The hands-free stick import (SPEC §9, docs/stick-notes.md).
        "./usr/lib/systemd/system/tend-import@.service",
        "./usr/lib/udev/rules.d/90-tend-import.rules",
        "./usr/lib/tend/tend-stick",
    ] {
        assert!(files.contains(&want), "{arch} .deb lacks {want}:\n{list}");
    }
    assert!(files.iter().any(|f| f.ends_with("/systemd/system/tend.service")), "{arch} .deb lacks the unit:\n{list}");
    for exe in ["./usr/bin/tend", "./usr/lib/tend/tend-stick"] {
        let line = list.lines().find(|l| l.ends_with(exe)).unwrap();
        let owner = line.split_whitespace().nth(1).unwrap();
        assert!(line.starts_with("-rwxr-xr-x") && ["0/0", "root/root"].contains(&owner), "mode/owner: {line}");
    }

    let control = tempfile::tempdir().unwrap();
    tend_e2e::run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(control.path()));
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert!(conffiles.lines().any(|l| l == "/etc/tend/agent.toml"), "agent.toml is not a conffile: {conffiles}");

    let out = Command::new("sh")
        .arg("-c")
        .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -xOf - ./usr/bin/tend | head -c 64")
        .arg("sh")
        .arg(&deb)
        .output()
        .unwrap();
    assert_eq!(elf_machine(&out.stdout), machine, "{arch} .deb holds a binary for another machine");
}

#[test]
#[ignore = "needs packaging/deb.sh; tests/run runs it"]
fn arm64_deb_lists_the_right_files_and_architecture() {
    check_deb("aarch64-unknown-linux-gnu", "arm64", EM_AARCH64);
}

#[test]
#[ignore = "needs packaging/deb.sh; tests/run runs it"]
fn armhf_deb_lists_the_right_files_and_architecture() {
    check_deb("armv7-unknown-linux-gnueabihf", "armhf", EM_ARM);
}

/// Installs into this machine's /usr and /etc, so it runs only as root (CI's
/// fresh machine) and only when no other `tend` package is installed.
#[test]
#[ignore = "needs packaging/deb.sh and root; tests/run runs it"]
fn amd64_deb_installs_runs_and_purges_clean() {
    check_deb("x86_64-unknown-linux-gnu", "amd64", EM_X86_64);
    assert!(nix::unistd::geteuid().is_root(), "dpkg -i needs root");
    let deb = deb("x86_64-unknown-linux-gnu", "amd64");
    let status = Command::new("dpkg-query").args(["-W", "-f=${Status}", "tend"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("install ok installed"),
        "a tend package is already installed here; not touching it"
    );
    tend_e2e::run(Command::new("dpkg").arg("-i").arg(&deb));
    let r: Run = Command::new("/usr/bin/tend").arg("--version").output().unwrap().into();
    // The amd64 package is the operators' build, of this commit.
    let commit = tend_e2e::head_commit();
    let want = format!("tend {} (commit {}, operator build", env!("CARGO_PKG_VERSION"), commit);
    assert!(r.stdout.starts_with(&want), "{} (expected {want}…)", r.stdout);
    assert!(Path::new("/etc/tend/agent.toml").exists());
    let unit = ["/usr/lib/systemd/system/tend.service", "/lib/systemd/system/tend.service"];
    assert!(unit.iter().any(|u| Path::new(u).exists()), "unit not installed");
    // Not enabled: the sample config has no device_id yet.
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/tend.service").exists());
    // The sample config is commented out, so it is not a valid config: the
    // service would stop with exit 2 (no restart loop) until it is configured.
    let r: Run =
        Command::new("/usr/bin/tend").args(["--config", "/etc/tend/agent.toml", "status"]).output().unwrap().into();
    assert_eq!(r.code, 2, "unconfigured: {}{}", r.stdout, r.stderr);

    // Purge: binary, unit and config go; the state directory (applied history,
    // kept on remove so a reinstall keeps working offline) goes on purge too.
    std::fs::create_dir_all("/var/lib/tend/store").unwrap();
    std::fs::write("/var/lib/tend/store/x", b"history").unwrap();
    tend_e2e::run(Command::new("dpkg").args(["--remove", "tend"]));
    assert!(!Path::new("/usr/bin/tend").exists());
    assert!(Path::new("/var/lib/tend/store/x").exists(), "remove must keep the applied history");
    tend_e2e::run(Command::new("dpkg").args(["--purge", "tend"]));
    for gone in [
        "/usr/bin/tend",
        "/etc/tend",
        "/var/lib/tend",
        unit[0],
        unit[1],
        "/usr/lib/systemd/system/tend-import@.service",
        "/usr/lib/udev/rules.d/90-tend-import.rules",
        "/usr/lib/tend",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
}

// ---- packaging/install.sh (gateways without dpkg) ---------------------------

/// Into a temporary prefix: installs binary, unit and sample config; a second
/// run upgrades the binary but keeps an edited config; --uninstall removes the
/// binary and unit and keeps config and store; --purge removes those too.
#[test]
fn install_script_is_idempotent_and_uninstalls() {
    let prefix = tempfile::tempdir().unwrap();
    let p = |rel: &str| prefix.path().join(rel);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/install.sh");
    let install = || {
        tend_e2e::run(
            Command::new("sh")
                .arg(&script)
                .arg("--binary")
                .arg(tend_e2e::tend_bin())
                .arg("--prefix")
                .arg(prefix.path()),
        )
    };
    let out = install();
    assert!(out.contains("installed") && out.contains("edit /etc/tend/agent.toml"), "{out}");
    let r: Run = Command::new(p("usr/local/bin/tend")).arg("--version").output().unwrap().into();
    // The binary given, installed: its version and the commit it was built from.
    assert!(r.stdout.starts_with(&format!("tend {} (commit ", env!("CARGO_PKG_VERSION"))), "{}", r.stdout);
    let given: Run = Command::new(tend_e2e::tend_bin()).arg("--version").output().unwrap().into();
    assert_eq!(r.stdout, given.stdout);
    let unit = std::fs::read_to_string(p("etc/systemd/system/tend.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/tend run"), "{unit}");
    assert_eq!(std::fs::metadata(p("var/lib/tend")).unwrap().permissions().mode() & 0o777, 0o700);
    // The stick import, pointed at the installed binary and helper.
    let import = std::fs::read_to_string(p("etc/systemd/system/tend-import@.service")).unwrap();
    assert!(
        import.contains("ExecStart=/usr/local/bin/tend import /run/tend/media/%I")
            && import.contains("ExecStartPre=+/usr/local/lib/tend/tend-stick mount %I")
            && !import.contains("/usr/bin/")
            && !import.contains("/usr/lib/"),
        "{import}"
    );
    assert_eq!(std::fs::metadata(p("usr/local/lib/tend/tend-stick")).unwrap().permissions().mode() & 0o777, 0o755);
    assert!(p("etc/udev/rules.d/90-tend-import.rules").exists());
    // An operator's config survives a re-install; the binary is replaced.
    std::fs::write(p("etc/tend/agent.toml"), "device_id = \"gw-1\"\n").unwrap();
    std::fs::write(p("var/lib/tend/history"), "kept").unwrap();
    std::fs::write(p("usr/local/bin/tend"), "old").unwrap();
    install();
    assert_eq!(std::fs::read_to_string(p("etc/tend/agent.toml")).unwrap(), "device_id = \"gw-1\"\n");
    assert_eq!(std::fs::read(p("usr/local/bin/tend")).unwrap(), std::fs::read(tend_e2e::tend_bin()).unwrap());
    let uninstall = |extra: &[&str]| {
        tend_e2e::run(Command::new("sh").arg(&script).arg("--uninstall").args(extra).arg("--prefix").arg(prefix.path()))
    };
    uninstall(&[]);
    for gone in [
        "usr/local/bin/tend",
        "etc/systemd/system/tend.service",
        "etc/systemd/system/tend-import@.service",
        "etc/udev/rules.d/90-tend-import.rules",
        "usr/local/lib/tend",
    ] {
        assert!(!p(gone).exists(), "{gone} is left after --uninstall");
    }
    assert!(
        p("etc/tend/agent.toml").exists() && p("var/lib/tend/history").exists(),
        "uninstall must keep config and store"
    );
    uninstall(&["--purge"]);
    assert!(!p("etc/tend").exists() && !p("var/lib/tend").exists());
}
