//! `containers/NAME.toml`: one container per file (SPEC §2), parsed and
//! checked. What must hold: a spec that parses here can be created as written;
//! everything a container could use to reach outside what the local config
//! allows (privileges) is refused before anything is applied.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hash::ContentHash;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    No,
    Always,
    OnFailure,
    UnlessStopped,
}

impl Restart {
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::No => "no",
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::UnlessStopped => "unless-stopped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pull {
    Always,
    Never,
    IfNotPresent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    pub command: Vec<String>,
    #[serde(default = "default_health_interval", with = "humantime_serde_str")]
    pub interval: Duration,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_health_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_retries() -> u32 {
    3
}

/// A duration as a humantime string, both ways (the spec hash must be stable).
mod humantime_serde_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// One container as the bundle declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// host | bridge | none | a named network.
    #[serde(default = "default_network")]
    pub network: String,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default = "default_restart")]
    pub restart: Restart,
    #[serde(default = "default_pull")]
    pub pull: Pull,
    #[serde(default)]
    pub privileged: bool,
    pub health: Option<HealthSpec>,
    /// Containers of the bundle this one is started after (running, and
    /// healthy where they have `[health]`) and stopped before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Recreated whenever one of `depends_on` is (else it is only
    /// restarted after it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recreate_with_dependencies: bool,
}

/// The most containers one container may depend on.
pub const MAX_DEPENDENCIES: usize = 32;

fn default_network() -> String {
    "bridge".into()
}
fn default_restart() -> Restart {
    Restart::Always
}
fn default_pull() -> Pull {
    Pull::IfNotPresent
}

impl ContainerSpec {
    /// The hash that identifies this spec on the running container (label
    /// `io.tend.spec`): a change of any field replaces the container.
    pub fn hash(&self) -> String {
        // The start order is not the container: a new `depends_on` does
        // not replace it (and specs written before it keep their hash).
        let mut own = self.clone();
        own.depends_on.clear();
        own.recreate_with_dependencies = false;
        ContentHash::of(serde_json::to_string(&own).expect("specs serialise").as_bytes()).short()
    }

    /// Parse and check a spec; errors name the field.
    pub fn parse(text: &str, allow_privileged: Option<bool>) -> Result<ContainerSpec, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| format!("invalid: {}", e.message().trim()))?;
        // The path names the key whose value is wrong (`health.retries`).
        let spec: ContainerSpec = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().message().trim().to_owned();
            if path == "." { format!("invalid: {message}") } else { format!("invalid: {path}: {message}") }
        })?;
        spec.check(allow_privileged)?;
        Ok(spec)
    }

    fn check(&self, allow_privileged: Option<bool>) -> Result<(), String> {
        let bad = |c: char| c.is_whitespace() || c.is_control();
        if self.image.is_empty() || self.image.len() > 255 || self.image.chars().any(bad) {
            return Err(format!("image {:?} is not an image reference", self.image));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err("command: NUL in an argument".into());
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.chars().any(bad) || v.contains('\0') {
                return Err(format!("env: {k:?} is not a valid variable name"));
            }
        }
        if !is_name(&self.network) {
            return Err(format!("network {:?}: expected host, bridge, none or a network name", self.network));
        }
        for p in &self.ports {
            parse_port(p).map_err(|e| format!("ports: {p:?}: {e}"))?;
        }
        for v in &self.volumes {
            parse_volume(v).map_err(|e| format!("volumes: {v:?}: {e}"))?;
            // Mounting the host's system directories or a container runtime's
            // socket into a container is root on the host: privileged.
            if let Some(src) = v.split(':').next().filter(|s| s.starts_with('/'))
                && is_sensitive_host_path(src)
                && allow_privileged == Some(false)
            {
                return Err(format!(
                    "volumes: {v:?} mounts the host's {src}, which is as good as privileged, and the local config does not allow it ([containers].allow_privileged)"
                ));
            }
        }
        if let Some(h) = &self.health {
            if h.command.is_empty() || h.command[0].is_empty() {
                return Err("[health]: command must not be empty".into());
            }
            let shown = crate::bounds::show(h.interval);
            crate::bounds::CONTAINER_HEALTH_INTERVAL.check("[health].interval", &shown, h.interval)?;
            let (min, max) = crate::bounds::CONTAINER_HEALTH_RETRIES;
            crate::bounds::int("[health].retries", i128::from(h.retries), min, max)?;
        }
        if self.depends_on.len() > MAX_DEPENDENCIES {
            return Err(format!("depends_on: {} containers, at most {MAX_DEPENDENCIES}", self.depends_on.len()));
        }
        if let Some(d) = self.depends_on.iter().find(|d| !is_name(d)) {
            return Err(format!("depends_on: {d:?} is not a container name"));
        }
        if self.privileged && allow_privileged == Some(false) {
            return Err(
                "privileged = true, but the local config does not allow it ([containers].allow_privileged)".into()
            );
        }
        Ok(())
    }
}

/// The containers in the order they are started: each after every container
/// it depends on, otherwise by name. Errors name the container whose
/// `depends_on` is wrong: a container the bundle does not have, or a cycle
/// (with its chain).
pub fn start_order(specs: &BTreeMap<String, ContainerSpec>) -> Result<Vec<&str>, (String, String)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        specs: &'a BTreeMap<String, ContainerSpec>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
        order: &mut Vec<&'a str>,
    ) -> Result<(), (String, String)> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let from = path.iter().position(|n| *n == name).unwrap_or(0);
                let chain: Vec<&str> = path[from..].iter().copied().chain(std::iter::once(name)).collect();
                return Err((name.to_owned(), format!("depends_on cycle: {}", chain.join(" -> "))));
            }
            None => {}
        }
        marks.insert(name, Mark::Visiting);
        path.push(name);
        for dep in &specs[name].depends_on {
            let Some((dep, _)) = specs.get_key_value(dep) else {
                let have: Vec<&str> = specs.keys().map(String::as_str).collect();
                return Err((
                    name.to_owned(),
                    format!("depends_on: {dep:?} is not a container of this bundle (it has: {})", have.join(", ")),
                ));
            };
            visit(dep, specs, marks, path, order)?;
        }
        path.pop();
        marks.insert(name, Mark::Done);
        order.push(name);
        Ok(())
    }
    let (mut marks, mut order) = (BTreeMap::new(), Vec::with_capacity(specs.len()));
    for name in specs.keys() {
        visit(name, specs, &mut marks, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// Host paths a container must not mount unless privileged containers are
/// allowed: the root, system directories, runtime sockets and tend's own state.
fn is_sensitive_host_path(src: &str) -> bool {
    const SENSITIVE: &[&str] = &[
        "/etc",
        "/root",
        "/boot",
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/var/run",
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
        "/var/lib/tend",
        "/var/lib/rancher",
        "/var/lib/containers",
        "/var/lib/docker",
    ];
    let src = src.trim_end_matches('/');
    src.is_empty() || SENSITIVE.iter().any(|p| src == *p || src.starts_with(&format!("{p}/")))
}

/// A valid container or network name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 63.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// `HOST:CONTAINER[/tcp|udp]` → (host port, container port, protocol).
pub fn parse_port(p: &str) -> Result<(u16, u16, &str), String> {
    let (ports, proto) = match p.split_once('/') {
        Some((x, proto @ ("tcp" | "udp"))) => (x, proto),
        Some((_, other)) => return Err(format!("protocol {other:?} (tcp or udp)")),
        None => (p, "tcp"),
    };
    let (h, c) = ports.split_once(':').ok_or("expected HOST:CONTAINER")?;
    let h: u16 = h.parse().map_err(|_| "host port is not a number")?;
    let c: u16 = c.parse().map_err(|_| "container port is not a number")?;
    Ok((h, c, proto))
}

/// `SOURCE:DEST[:ro|rw]` with an absolute DEST.
pub fn parse_volume(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst) = match parts[..] {
        [s, d] | [s, d, "ro" | "rw"] => (s, d),
        _ => return Err("expected SOURCE:DEST or SOURCE:DEST:ro".into()),
    };
    if src.is_empty() || !dst.starts_with('/') || v.split('/').any(|s| s == "..") {
        return Err("SOURCE must be set and DEST absolute, without '..'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_order_puts_dependencies_first_and_names_cycles_and_missing_ones() {
        let with = |deps: &[(&str, &[&str])]| -> BTreeMap<String, ContainerSpec> {
            deps.iter()
                .map(|(n, d)| {
                    let mut s = ContainerSpec::parse("image = \"x\"\n", None).unwrap();
                    s.depends_on = d.iter().map(|x| x.to_string()).collect();
                    (n.to_string(), s)
                })
                .collect()
        };
        let ok = with(&[("a", &["c"]), ("b", &[]), ("c", &["b"]), ("d", &["b", "a"])]);
        assert_eq!(start_order(&ok).unwrap(), ["b", "c", "a", "d"]);
        assert_eq!(start_order(&with(&[])).unwrap(), Vec::<&str>::new());
        let cycle = with(&[("web", &["api"]), ("api", &["db"]), ("db", &["web"]), ("x", &[])]);
        assert_eq!(
            start_order(&cycle).unwrap_err(),
            ("api".into(), "depends_on cycle: api -> db -> web -> api".into())
        );
        let own = with(&[("a", &["a"])]);
        assert_eq!(start_order(&own).unwrap_err().1, "depends_on cycle: a -> a");
        let missing = with(&[("api", &["db"])]);
        assert_eq!(
            start_order(&missing).unwrap_err(),
            ("api".into(), "depends_on: \"db\" is not a container of this bundle (it has: api)".into())
        );
        // A long chain, no recursion limit met at the bundle's 256 containers.
        let names: Vec<String> = (0..256).map(|i| format!("c{i:03}")).collect();
        let chain: BTreeMap<String, ContainerSpec> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut s = ContainerSpec::parse("image = \"x\"\n", None).unwrap();
                if i > 0 {
                    s.depends_on = vec![names[i - 1].clone()];
                }
                (n.clone(), s)
            })
            .collect();
        assert_eq!(start_order(&chain).unwrap().len(), 256);
        // depends_on entries are checked as names, and bounded.
        assert!(
            ContainerSpec::parse("image = \"x\"\ndepends_on = [\"../db\"]\n", None).unwrap_err().contains("depends_on")
        );
        let many: Vec<String> = (0..33).map(|i| format!("\"d{i}\"")).collect();
        let e = ContainerSpec::parse(&format!("image = \"x\"\ndepends_on = [{}]\n", many.join(",")), None).unwrap_err();
        assert!(e.contains("at most 32"), "{e}");
    }

    #[test]
    fn the_spec_example_parses_with_defaults() {
        let s = ContainerSpec::parse(
            r#"image = "localhost/modbus-bridge:1.4.2"
command = ["/bin/bridge", "--port", "502"]
env = { MODE = "prod" }
network = "host"
ports = ["502:502/tcp"]
volumes = ["/srv/bridge:/data:ro"]
restart = "always"
pull = "if-not-present"
privileged = false
[health]
command = ["wget", "-q", "-O-", "http://127.0.0.1:8080/"]
interval = "10s"
retries = 3
"#,
            Some(false),
        )
        .unwrap();
        assert_eq!(s.restart, Restart::Always);
        assert_eq!(s.health.as_ref().unwrap().interval, Duration::from_secs(10));
        let minimal = ContainerSpec::parse("image = \"busybox\"\n", None).unwrap();
        assert_eq!((minimal.network.as_str(), minimal.pull), ("bridge", Pull::IfNotPresent));
        assert_ne!(s.hash(), minimal.hash());
        assert_eq!(s.hash(), s.clone().hash());
    }

    #[test]
    fn bad_specs_name_the_field() {
        for (text, needle) in [
            ("image = \"a b\"\n", "image"),
            ("image = \"x\"\nports = [\"80\"]\n", "ports"),
            ("image = \"x\"\nports = [\"80:80/sctp\"]\n", "ports"),
            ("image = \"x\"\nvolumes = [\"/a:relative\"]\n", "volumes"),
            ("image = \"x\"\nvolumes = [\"/a/../b:/c\"]\n", "volumes"),
            ("image = \"x\"\nnetwork = \"bad net\"\n", "network"),
            ("image = \"x\"\nenv = { \"A=B\" = \"c\" }\n", "env"),
            ("image = \"x\"\nrestart = \"sometimes\"\n", "invalid"),
            ("image = \"x\"\nprivileged = true\n", "allow_privileged"),
            ("image = \"x\"\nbogus = 1\n", "unknown field"),
            ("image = \"x\"\n[health]\ncommand = []\n", "[health]"),
        ] {
            let e = ContainerSpec::parse(text, Some(false)).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        assert!(ContainerSpec::parse("image = \"x\"\nprivileged = true\n", Some(true)).is_ok());
        assert!(is_name("modbus-bridge") && !is_name("-x") && !is_name("a/b") && !is_name(&"a".repeat(64)));
    }
}
