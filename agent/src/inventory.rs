//! What this gateway is (SPEC §4 `inventory`): the OS, kernel, architecture
//! and board, read once at start; the container runtime's and K3s's
//! versions, asked at the daemon's start and when tend first reaches the
//! runtime for containers.
//!
//! What must always hold: reading it never fails the agent and never blocks
//! it for long (a missing or unreadable file is `null`, a command runs with a
//! short timeout); every string is bounded ([`MAX`] characters, control
//! characters replaced), whatever the files or the runtime say.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Characters kept of any inventory string.
pub const MAX: usize = 100;
/// Bytes read of a file.
const MAX_READ: u64 = 16 * 1024;

/// The status's `inventory`; `None` is `null` (not known, or none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInventory {
    /// `PRETTY_NAME` of os-release.
    pub os: Option<String>,
    /// `uname -r`.
    pub kernel: Option<String>,
    /// `uname -m`: `x86_64`, `aarch64`, `armv7l`.
    pub arch: Option<String>,
    /// The board, where the device tree names it.
    pub model: Option<String>,
    /// `podman 4.3.1`, `docker 24.0.7`.
    pub runtime: Option<String>,
    /// `v1.28.4+k3s2`.
    pub k3s: Option<String>,
}

impl HostInventory {
    /// What the files and the kernel say, from the root `/`.
    pub fn local() -> HostInventory {
        let uts = nix::sys::utsname::uname().ok();
        let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
            uts.as_ref().and_then(|u| bounded(&f(u).to_string_lossy()))
        };
        HostInventory {
            os: read_first(&["/etc/os-release", "/usr/lib/os-release"]).and_then(|b| pretty_name(&b)),
            kernel: field(nix::sys::utsname::UtsName::release),
            arch: field(nix::sys::utsname::UtsName::machine),
            model: read_first(&["/proc/device-tree/model", "/sys/firmware/devicetree/base/model"])
                .and_then(|b| model(&b)),
            runtime: None,
            k3s: None,
        }
    }

    /// Each key (as the status names it) with its value.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 6] {
        let HostInventory { os, kernel, arch, model, runtime, k3s } = self;
        [("os", os), ("kernel", kernel), ("arch", arch), ("model", model), ("runtime", runtime), ("k3s", k3s)]
            .map(|(k, v)| (k, v.as_deref()))
    }

    /// This inventory over `stored` (the status's `inventory`, maybe as an
    /// older run wrote it): what was read at start always; the runtime and
    /// K3s once asked (until then, what the last run said).
    pub fn fill(&self, stored: &mut serde_json::Value) {
        let mut out = serde_json::Map::new();
        for (k, v) in self.fields() {
            let kept = || stored.get(k).filter(|_| matches!(k, "runtime" | "k3s")).cloned();
            out.insert(k.to_owned(), v.map_or_else(|| kept().unwrap_or_default(), Into::into));
        }
        *stored = out.into();
    }
}

/// The first of `paths` that can be read, at most [`MAX_READ`] bytes of it.
fn read_first(paths: &[&str]) -> Option<Vec<u8>> {
    paths.iter().find_map(|p| {
        let mut buf = Vec::new();
        std::fs::File::open(Path::new(p)).and_then(|f| f.take(MAX_READ).read_to_end(&mut buf)).ok()?;
        Some(buf)
    })
}

/// Trimmed, control characters replaced, at most [`MAX`] characters; `None`
/// when nothing is left.
pub fn bounded(s: &str) -> Option<String> {
    let s: String = s.trim().chars().take(MAX).map(|c| if c.is_control() { '\u{FFFD}' } else { c }).collect();
    (!s.is_empty()).then_some(s)
}

/// `PRETTY_NAME` of an os-release file (os-release(5): shell-style
/// assignments, the value quoted with `"` or `'` or not at all, `\` escaping
/// within double quotes).
pub fn pretty_name(file: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(file);
    let value = text.lines().find_map(|l| l.trim_start().strip_prefix("PRETTY_NAME="))?.trim_end();
    let unquoted = match value.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let inner = value.strip_prefix(q)?;
            let inner = inner.strip_suffix(q).unwrap_or(inner);
            if q == '"' {
                let mut out = String::new();
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
                }
                out
            } else {
                inner.to_owned()
            }
        }
        _ => value.to_owned(),
    };
    bounded(&unquoted)
}

/// The device tree's `model` (NUL-terminated).
pub fn model(file: &[u8]) -> Option<String> {
    let end = file.iter().position(|&b| b == 0).unwrap_or(file.len());
    bounded(&String::from_utf8_lossy(&file[..end]))
}

/// `k3s --version`'s first line, `k3s version v1.28.4+k3s2 (6ba6c1b6)`: the
/// version.
pub fn k3s_version(output: &str) -> Option<String> {
    let line = output.lines().next()?;
    let v = line.strip_prefix("k3s version ").unwrap_or(line);
    bounded(v.split_whitespace().next()?)
}

/// Ask the installed K3s its version (`None`: none installed, or it would
/// not say within a few seconds).
pub fn k3s() -> Option<String> {
    let cmd = ["k3s".to_owned(), "--version".to_owned()];
    let out = crate::process::run(&cmd, None, Duration::from_secs(5)).ok()?;
    if !out.status.success() {
        return None;
    }
    k3s_version(&out.stdout)
}

/// The runtime as a name and a version, from the Engine API's `/version`:
/// Podman's lists a component named `Podman Engine`.
pub fn runtime_label<'a>(mut components: impl Iterator<Item = &'a str>, version: &str) -> Option<String> {
    let name = if components.any(|c| c.to_ascii_lowercase().contains("podman")) { "podman" } else { "docker" };
    bounded(&format!("{name} {}", bounded(version)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_quoted_escaped_or_bare() {
        let debian = b"NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(pretty_name(debian).as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(pretty_name(b"PRETTY_NAME='Yocto 4.0'\n").as_deref(), Some("Yocto 4.0"));
        assert_eq!(pretty_name(b"PRETTY_NAME=Alpine\n").as_deref(), Some("Alpine"));
        assert_eq!(pretty_name(br#"PRETTY_NAME="Say \"hi\" \\ \$HOME""#).as_deref(), Some(r#"Say "hi" \ $HOME"#));
        // Not PRETTY_NAME_X, not a commented line; an unterminated quote is taken as it is.
        assert_eq!(pretty_name(b"# PRETTY_NAME=\"x\"\nPRETTY_NAME_X=y\n"), None);
        assert_eq!(pretty_name(b"PRETTY_NAME=\"open").as_deref(), Some("open"));
        assert_eq!(pretty_name(b"PRETTY_NAME=\"\"\n"), None);
        assert_eq!(pretty_name(b""), None);
        // Hostile: bounded, no control characters, not UTF-8.
        let long = format!("PRETTY_NAME=\"{}\x1b[2J\"", "é".repeat(500));
        let p = pretty_name(long.as_bytes()).unwrap();
        assert_eq!(p.chars().count(), MAX);
        assert!(!p.contains('\u{1b}'));
        assert_eq!(pretty_name(b"PRETTY_NAME=\xff\x1b").as_deref(), Some("\u{FFFD}\u{FFFD}"));
    }

    #[test]
    fn the_device_tree_model_ends_at_its_nul() {
        assert_eq!(model(b"linux,dummy-virt\0").as_deref(), Some("linux,dummy-virt"));
        assert_eq!(model(b"Raspberry Pi 4 Model B Rev 1.4\0\0junk").as_deref(), Some("Raspberry Pi 4 Model B Rev 1.4"));
        assert_eq!(model(b"no nul").as_deref(), Some("no nul"));
        assert_eq!(model(b"\0"), None);
        assert_eq!(model(b""), None);
    }

    #[test]
    fn missing_files_are_none_never_an_error() {
        assert_eq!(read_first(&["/nonexistent/os-release", "/nonexistent/too"]), None);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("os-release");
        std::fs::write(&f, vec![b'x'; 100_000]).unwrap();
        let p = f.to_str().unwrap();
        assert_eq!(read_first(&["/nonexistent", p]).map(|b| b.len()), Some(MAX_READ as usize));
    }

    #[test]
    fn this_machine_has_a_kernel_and_an_arch() {
        let inv = HostInventory::local();
        assert_eq!(
            inv.kernel.as_deref(),
            bounded(&String::from_utf8_lossy(&std::fs::read("/proc/sys/kernel/osrelease").unwrap())).as_deref()
        );
        assert!(
            inv.arch.as_deref().is_some_and(|a| a.starts_with(std::env::consts::ARCH.get(..3).unwrap())),
            "{inv:?}"
        );
        assert_eq!((inv.runtime, inv.k3s), (None, None));
    }

    #[test]
    fn runtime_and_k3s_versions() {
        assert_eq!(runtime_label(["Podman Engine", "Conmon"].into_iter(), "4.3.1").as_deref(), Some("podman 4.3.1"));
        assert_eq!(runtime_label(["Engine", "containerd"].into_iter(), "24.0.7").as_deref(), Some("docker 24.0.7"));
        assert_eq!(runtime_label(std::iter::empty(), " ").as_deref(), None);
        assert_eq!(runtime_label(std::iter::empty(), &"9".repeat(500)).map(|s| s.chars().count()), Some(MAX));
        let out = "k3s version v1.28.4+k3s2 (6ba6c1b6)\ngo version go1.20.11\n";
        assert_eq!(k3s_version(out).as_deref(), Some("v1.28.4+k3s2"));
        assert_eq!(k3s_version(""), None);
    }

    #[test]
    fn a_status_stored_before_the_inventory_still_loads() {
        let old = br#"{"v":1,"data":{"device_id":"gw","fleet":"f","agent_version":"0.1.0","phase":"synced","revision":null,"target_revision":null,"last_good_revision":null,"source":"ok","last_sync":null,"error":null,"resources":{"total":0,"ready":0,"failed":0}}}"#;
        let s: crate::store::Status = crate::store::decode("status", old).unwrap();
        assert_eq!(s.inventory, serde_json::Value::Null);
    }

    #[test]
    fn fill_keeps_what_was_asked_last() {
        let mut stored = serde_json::json!({ "os": "Old", "model": "board", "runtime": "podman 4.3.1", "k3s": "v1" });
        let now = HostInventory { os: Some("Debian".into()), arch: Some("aarch64".into()), ..Default::default() };
        now.fill(&mut stored);
        let want = serde_json::json!({ "os": "Debian", "kernel": null, "arch": "aarch64", "model": null, "runtime": "podman 4.3.1", "k3s": "v1" });
        assert_eq!(stored, want);
        let asked = HostInventory { runtime: Some("podman 5.0.0".into()), ..now };
        asked.fill(&mut stored);
        assert_eq!((&stored["runtime"], &stored["k3s"]), (&"podman 5.0.0".into(), &"v1".into()));
        // A status stored before the inventory: null.
        let mut old = serde_json::Value::Null;
        asked.fill(&mut old);
        assert_eq!(old, serde_json::to_value(&asked).unwrap());
    }
}
