//! The local agent configuration (`/etc/tend/agent.toml`, SPEC §1).
//!
//! This file is the trust boundary: the repository can only do what it allows.
//! Everything is parsed here, in one place: unknown keys are errors, durations are
//! humantime strings, and every problem found is reported at once, each naming the
//! file, the key and the reason. Nothing below this module reads the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use crate::bundle::Identity;
use crate::bundle::{Policy, RelPath};

/// The default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/tend/agent.toml";

/// Every problem found in one configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.problems.as_slice() {
            [one] => write!(f, "{file}: {one}"),
            many => {
                write!(f, "{file}: {} problems:", many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// A duration written as a humantime string (`"90s"`, `"5m"`).
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// `http(s)://`, `git://`, `ssh://`, `file://` or a plain path.
    pub url: String,
    #[serde(default = "Source::default_branch")]
    pub branch: String,
    #[serde(default = "Source::default_path")]
    pub path: String,
    #[serde(default = "Source::default_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    #[serde(default = "Source::default_jitter", deserialize_with = "de_duration")]
    pub jitter: Duration,
    #[serde(default = "Source::default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// A fleet-wide sync command or an announced commit (SPEC §4) starts the
    /// fetch after a random delay within this, so the fleet does not reach
    /// the Git server in the same second.
    #[serde(default = "Source::default_announce_spread", deserialize_with = "de_duration")]
    pub announce_spread: Duration,
    pub token_file: Option<PathBuf>,
    pub ssh_key: Option<PathBuf>,
    pub allowed_signers: Option<PathBuf>,
    /// Extension: PEM certificates trusted for `https://` sources in addition to
    /// the system's roots (a fleet's private Git server).
    pub ca_file: Option<PathBuf>,
}

impl Source {
    fn default_branch() -> String {
        "main".into()
    }
    fn default_path() -> String {
        "devices/{device_id}".into()
    }
    fn default_interval() -> Duration {
        Duration::from_secs(60)
    }
    fn default_jitter() -> Duration {
        Duration::from_secs(10)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(30)
    }
    fn default_announce_spread() -> Duration {
        Duration::from_secs(5)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    #[serde(default = "Retry::default_limit")]
    pub limit: u32,
    #[serde(default = "Retry::default_backoff", deserialize_with = "de_duration")]
    pub backoff: Duration,
    #[serde(default = "Retry::default_factor")]
    pub factor: f64,
    #[serde(default = "Retry::default_max", deserialize_with = "de_duration")]
    pub max: Duration,
}

impl Retry {
    fn default_limit() -> u32 {
        5
    }
    fn default_backoff() -> Duration {
        Duration::from_secs(5)
    }
    fn default_factor() -> f64 {
        2.0
    }
    fn default_max() -> Duration {
        Duration::from_secs(180)
    }

    /// The delay before retry number `attempt` (0-based), capped at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let secs = self.backoff.as_secs_f64() * self.factor.powi(attempt.min(64) as i32);
        let max = self.max.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            limit: Self::default_limit(),
            backoff: Self::default_backoff(),
            factor: Self::default_factor(),
            max: Self::default_max(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apply {
    #[serde(default = "yes")]
    pub prune: bool,
    #[serde(default = "yes")]
    pub self_heal: bool,
    #[serde(default = "Apply::default_health_timeout", deserialize_with = "de_duration")]
    pub health_timeout: Duration,
    #[serde(default = "yes")]
    pub rollback: bool,
    #[serde(default = "Apply::default_history")]
    pub history: usize,
    #[serde(default)]
    pub allow_empty: bool,
    #[serde(default)]
    pub retry: Retry,
    /// Update locks (SPEC §7): while an app holds `flock(LOCK_SH)` on a file
    /// here, nothing new is applied.
    #[serde(default = "Apply::default_lock_dir")]
    pub lock_dir: PathBuf,
    /// How long a lock may hold a revision back; none: as long as it is held.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub lock_timeout: Option<Duration>,
    /// The agent died this many times while applying one revision (during
    /// its apply or health window; SPEC §3, 8): the revision is failed,
    /// rolled back and quarantined. Two, so one power cut does not condemn it.
    #[serde(default = "Apply::default_crash_limit")]
    pub crash_limit: u32,
    /// Free space each file system tend writes must keep (SPEC §3, 9): an
    /// import that would leave less is refused, naming the file system.
    #[serde(default = "Apply::default_min_free", deserialize_with = "de_size")]
    pub min_free: u64,
}

/// Logs on demand (SPEC §4 `logs`): the journal units and containers the
/// fleet may read through `tend fleet logs`. Nothing by default.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// Unit names (`myapp.service`: the journal) and container names
    /// (anything else: the runtime's log), each checked by
    /// [`crate::report::logs::valid_name`].
    #[serde(default)]
    pub units: Vec<String>,
}

/// Sites without network (SPEC §9): what `tend import` accepts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// An export must carry a signature by a key in
    /// `[source].allowed_signers` (namespace `tend-export`).
    #[serde(default = "yes")]
    pub require_signature: bool,
}

impl Default for Import {
    fn default() -> Self {
        Import { require_signature: true }
    }
}

/// A size (`"256MiB"`), from 0 to 1 PiB.
fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    crate::bounds::parse_size("size", &text, 0, 1 << 50)
        .map_err(|e| serde::de::Error::custom(e.trim_start_matches("size: ")))
}

fn yes() -> bool {
    true
}

impl Apply {
    fn default_health_timeout() -> Duration {
        Duration::from_secs(60)
    }
    fn default_history() -> usize {
        20
    }
    fn default_lock_dir() -> PathBuf {
        PathBuf::from("/run/tend/locks")
    }
    fn default_crash_limit() -> u32 {
        2
    }
    fn default_min_free() -> u64 {
        256 << 20
    }
}

impl Default for Apply {
    fn default() -> Self {
        Apply {
            prune: true,
            self_heal: true,
            health_timeout: Self::default_health_timeout(),
            rollback: true,
            history: Self::default_history(),
            allow_empty: false,
            retry: Retry::default(),
            lock_dir: Self::default_lock_dir(),
            lock_timeout: None,
            crash_limit: Self::default_crash_limit(),
            min_free: Self::default_min_free(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Files {
    #[serde(default = "Files::default_root")]
    pub root: PathBuf,
    /// Absolute paths (under `root`) tend may write. Empty: no file may be written.
    #[serde(default)]
    pub allow: Vec<PathBuf>,
    pub age_identity: Option<PathBuf>,
    /// Whether a bundle may run commands (`on_change`). Off by default: with
    /// hooks on, whoever can push to the repository runs commands as tend.
    #[serde(default)]
    pub allow_hooks: bool,
}

impl Files {
    fn default_root() -> PathBuf {
        PathBuf::from("/")
    }
}

impl Default for Files {
    fn default() -> Self {
        Files { root: Self::default_root(), allow: Vec::new(), age_identity: None, allow_hooks: false }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Containers {
    pub socket: Option<String>,
    #[serde(default)]
    pub allow_privileged: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3s {
    #[serde(default = "K3s::default_manifests_dir")]
    pub manifests_dir: PathBuf,
    #[serde(default = "K3s::default_kubectl")]
    pub kubectl: Vec<String>,
    /// How long one `kubectl` call (a prune, a rollout check) may take.
    #[serde(default = "K3s::default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl K3s {
    fn default_manifests_dir() -> PathBuf {
        PathBuf::from("/var/lib/rancher/k3s/server/manifests")
    }
    fn default_kubectl() -> Vec<String> {
        vec!["k3s".into(), "kubectl".into()]
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(60)
    }
}

impl Default for K3s {
    fn default() -> Self {
        K3s {
            manifests_dir: Self::default_manifests_dir(),
            kubectl: Self::default_kubectl(),
            timeout: Self::default_timeout(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// `mqtt://` or `mqtts://`; absent = no reporting.
    pub url: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(default = "Mqtt::default_topic_prefix")]
    pub topic_prefix: String,
    #[serde(default = "Mqtt::default_health_interval", deserialize_with = "de_duration")]
    pub health_interval: Duration,
}

impl Mqtt {
    fn default_topic_prefix() -> String {
        "tend/v1".into()
    }
    fn default_health_interval() -> Duration {
        Duration::from_secs(30)
    }
}

impl Default for Mqtt {
    fn default() -> Self {
        Mqtt {
            url: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            topic_prefix: Self::default_topic_prefix(),
            health_interval: Self::default_health_interval(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// A `.prom` file for node_exporter's textfile collector, written
    /// atomically after every sync and health tick (SPEC §8).
    pub textfile: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Default: `{state_dir}/control.sock`.
    pub socket: Option<PathBuf>,
}

/// The validated configuration, with defaults applied and placeholders in
/// `source.branch` and `source.path` resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was read from (for error messages).
    pub file: PathBuf,
    pub device_id: String,
    pub fleet: String,
    pub state_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub source: Source,
    pub apply: Apply,
    pub files: Files,
    pub containers: Containers,
    pub k3s: K3s,
    pub mqtt: Mqtt,
    pub metrics: Metrics,
    pub control: Control,
    pub import: Import,
    pub logs: Logs,
}

impl Config {
    pub fn identity(&self) -> Identity {
        Identity { device_id: self.device_id.clone(), fleet: self.fleet.clone(), labels: self.labels.clone() }
    }

    pub fn control_socket(&self) -> PathBuf {
        self.control.socket.clone().unwrap_or_else(|| self.state_dir.join("control.sock"))
    }

    /// Read and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { file: path.to_path_buf(), problems: vec![format!("cannot read: {e}")] })?;
        let cfg = Self::from_str(&text, path)?;
        // The files the config trusts must be usable now, not at the first
        // commit: a broken allowed-signers file or key is a config error.
        let mut problems = Vec::new();
        if let Some(p) = &cfg.source.allowed_signers
            && let Err(e) = crate::trust::AllowedSigners::load(p)
        {
            problems.push(e);
        }
        if let Some(p) = &cfg.files.age_identity
            && let Err(e) = crate::secrets::AgeKeys::load(p)
        {
            problems.push(e);
        }
        if problems.is_empty() { Ok(cfg) } else { Err(ConfigError { file: path.to_path_buf(), problems }) }
    }

    /// Parse and validate configuration text; `file` names it in errors.
    pub fn from_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError { file: file.to_path_buf(), problems };
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            fail(vec![
                format!("invalid TOML: {}", e.message().trim())
                    + &e.span().map(|s| format!(" (at {})", line_col(text, s.start))).unwrap_or_default(),
            ])
        })?;
        let mut problems = Vec::new();
        let known = [
            "device_id",
            "fleet",
            "state_dir",
            "labels",
            "source",
            "apply",
            "files",
            "containers",
            "k3s",
            "mqtt",
            "metrics",
            "control",
            "import",
            "logs",
        ];
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                problems.push(format!("unknown key `{key}` (expected one of: {})", known.join(", ")));
            }
        }

        // Each section is read on its own so that one bad section does not hide
        // the problems of the others.
        fn section<T: for<'de> Deserialize<'de>>(
            table: &toml::Table,
            key: &str,
            problems: &mut Vec<String>,
        ) -> Option<Option<T>> {
            match table.get(key) {
                None => Some(None),
                // The path names the key inside the section that failed.
                Some(v) => match serde_path_to_error::deserialize::<_, T>(v.clone()) {
                    Ok(t) => Some(Some(t)),
                    Err(e) => {
                        let path = e.path().to_string();
                        let what = match (v.is_table(), path.as_str()) {
                            (false, _) => format!("`{key}`"),
                            (true, ".") => format!("[{key}]"),
                            (true, inner) => format!("[{key}].{inner}"),
                        };
                        problems.push(format!("{what}: {}", e.into_inner().message().trim()));
                        None
                    }
                },
            }
        }
        let device_id = section::<String>(&table, "device_id", &mut problems);
        let fleet = section::<String>(&table, "fleet", &mut problems);
        let state_dir = section::<PathBuf>(&table, "state_dir", &mut problems);
        let labels = section::<BTreeMap<String, String>>(&table, "labels", &mut problems);
        let source = section::<Source>(&table, "source", &mut problems);
        let apply = section::<Apply>(&table, "apply", &mut problems);
        let files = section::<Files>(&table, "files", &mut problems);
        let containers = section::<Containers>(&table, "containers", &mut problems);
        let k3s = section::<K3s>(&table, "k3s", &mut problems);
        let mqtt = section::<Mqtt>(&table, "mqtt", &mut problems);
        let metrics = section::<Metrics>(&table, "metrics", &mut problems);
        let control = section::<Control>(&table, "control", &mut problems);
        let import = section::<Import>(&table, "import", &mut problems);
        let logs = section::<Logs>(&table, "logs", &mut problems);
        if matches!(source, Some(None)) {
            problems.push("missing section [source] (at least `url` is required)".into());
        }

        let (
            Some(device_id),
            Some(fleet),
            Some(state_dir),
            Some(labels),
            Some(Some(mut source)),
            Some(apply),
            Some(files),
            Some(containers),
            Some(k3s),
            Some(mqtt),
            Some(metrics),
            Some(control),
            Some(import),
            Some(logs),
        ) = (
            device_id, fleet, state_dir, labels, source, apply, files, containers, k3s, mqtt, metrics, control, import,
            logs,
        )
        else {
            return Err(fail(problems));
        };
        let device_id = device_id.unwrap_or_else(hostname);
        let cfg_identity = Identity {
            device_id: device_id.clone(),
            fleet: fleet.clone().unwrap_or_else(|| "default".into()),
            labels: labels.clone().unwrap_or_default(),
        };
        check_name("device_id", &cfg_identity.device_id, &mut problems);
        check_name("fleet", &cfg_identity.fleet, &mut problems);
        for (k, v) in &cfg_identity.labels {
            if k.is_empty() || v.chars().any(char::is_control) || k.chars().any(|c| !is_name_char(c)) {
                problems
                    .push(format!("labels.{k}: label keys are [A-Za-z0-9_.-] and values have no control characters"));
            }
        }
        match cfg_identity.expand(&source.branch) {
            Ok(b)
                if b.is_empty()
                    || b.starts_with('-')
                    || b.contains("..")
                    || b.chars().any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c)) =>
            {
                problems.push(format!("[source].branch: {b:?} is not a valid branch name"))
            }
            Ok(b) => source.branch = b,
            Err(e) => problems.push(format!("[source].branch: {e}")),
        }
        match cfg_identity.expand(&source.path) {
            Ok(p) => match crate::bundle::RelPath::parse(&p) {
                Ok(rel) => source.path = rel.to_string(),
                Err(e) => problems.push(format!("[source].path: {p:?}: {e}")),
            },
            Err(e) => problems.push(format!("[source].path: {e}")),
        }
        if source.url.trim().is_empty() {
            problems.push("[source].url: must not be empty".into());
        }
        let apply = apply.unwrap_or_default();
        let files = files.unwrap_or_default();
        let k3s = k3s.unwrap_or_default();
        let mqtt = mqtt.unwrap_or_default();
        check_ranges(&source, &apply, &k3s, &mqtt, &mut problems);
        if !files.root.is_absolute() {
            problems.push(format!("[files].root: {:?} must be an absolute path", files.root));
        }
        for a in &files.allow {
            if !a.is_absolute() || a.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                problems.push(format!("[files].allow: {a:?} must be an absolute path without '..'"));
            }
        }
        let state_dir = state_dir.unwrap_or_else(|| PathBuf::from("/var/lib/tend"));
        if !state_dir.is_absolute() {
            problems.push(format!("state_dir: {state_dir:?} must be an absolute path"));
        }
        if k3s.kubectl.is_empty() {
            problems.push("[k3s].kubectl: must name a command".into());
        }
        let prefix = &mqtt.topic_prefix;
        if prefix.is_empty()
            || prefix.starts_with('/')
            || prefix.ends_with('/')
            || prefix.chars().any(|c| c == '+' || c == '#' || c.is_control())
        {
            problems.push(format!(
                "[mqtt].topic_prefix: {prefix:?} must be a topic without wildcards (+, #), control characters or a leading or trailing '/'"
            ));
        }
        if let Some(url) = mqtt.url.as_ref()
            && !(url.starts_with("mqtt://") || url.starts_with("mqtts://"))
        {
            problems.push(format!("[mqtt].url: {url:?} must start with mqtt:// or mqtts://"));
        }
        if let Some(t) = metrics.as_ref().and_then(|m| m.textfile.as_ref())
            && (!t.is_absolute() || t.extension().is_none_or(|e| e != "prom"))
        {
            problems.push(format!(
                "[metrics].textfile: {t:?} must be an absolute path ending in .prom (node_exporter's textfile collector reads only *.prom)"
            ));
        }
        let logs = logs.unwrap_or_default();
        if logs.units.len() > crate::report::logs::MAX_UNITS {
            problems.push(format!(
                "[logs].units: {} entries, at most {} allowed",
                logs.units.len(),
                crate::report::logs::MAX_UNITS
            ));
        }
        for u in logs.units.iter().filter(|u| !crate::report::logs::valid_name(u)) {
            problems.push(format!(
                "[logs].units: {:?} is not a unit or container name (1-{} characters of [A-Za-z0-9:_.@-], starting with a letter or digit)",
                u.chars().take(80).collect::<String>(),
                crate::report::logs::MAX_NAME
            ));
        }
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok(Config {
            file: file.to_path_buf(),
            device_id: cfg_identity.device_id,
            fleet: cfg_identity.fleet,
            state_dir,
            labels: cfg_identity.labels,
            source,
            apply,
            files,
            containers: containers.unwrap_or_default(),
            k3s,
            mqtt,
            metrics: metrics.unwrap_or_default(),
            control: control.unwrap_or_default(),
            import: import.unwrap_or_default(),
            logs,
        })
    }
}

/// Every duration and count of the file inside its range (`bounds`), each
/// problem naming the key, the value and the range.
fn check_ranges(source: &Source, apply: &Apply, k3s: &K3s, mqtt: &Mqtt, problems: &mut Vec<String>) {
    use crate::bounds::{self, Span, show};
    let mut span = |key: &str, span: Span, v: Duration| {
        if let Err(e) = span.check(key, &show(v), v) {
            problems.push(e);
        }
    };
    span("[source].interval", bounds::POLL_INTERVAL, source.interval);
    span("[source].jitter", bounds::POLL_JITTER, source.jitter);
    span("[source].timeout", bounds::SOURCE_TIMEOUT, source.timeout);
    span("[source].announce_spread", bounds::ANNOUNCE_SPREAD, source.announce_spread);
    span("[apply].health_timeout", bounds::HEALTH_TIMEOUT, apply.health_timeout);
    span("[apply].retry.backoff", bounds::RETRY_BACKOFF, apply.retry.backoff);
    span("[apply].retry.max", bounds::RETRY_MAX, apply.retry.max);
    if let Some(t) = apply.lock_timeout {
        span("[apply].lock_timeout", bounds::LOCK_TIMEOUT, t);
    }
    span("[k3s].timeout", bounds::KUBECTL_TIMEOUT, k3s.timeout);
    span("[mqtt].health_interval", bounds::HEALTH_INTERVAL, mqtt.health_interval);
    let mut int = |key: &str, (min, max): (i128, i128), v: i128| {
        if let Err(e) = bounds::int(key, v, min, max) {
            problems.push(e);
        }
    };
    int("[apply].history", bounds::HISTORY, apply.history as i128);
    int("[apply].retry.limit", bounds::RETRY_LIMIT, i128::from(apply.retry.limit));
    int("[apply].crash_limit", bounds::CRASH_LIMIT, i128::from(apply.crash_limit));
    let (min, max) = bounds::RETRY_FACTOR;
    let factor = apply.retry.factor;
    if !(factor.is_finite() && (min..=max).contains(&factor)) {
        problems.push(format!("[apply].retry.factor: {factor} is out of range (allowed: {min} to {max})"));
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.-".contains(c)
}

/// Device ids and fleet names appear in paths, branch names and MQTT topics.
fn check_name(key: &str, v: &str, problems: &mut Vec<String>) {
    if v.is_empty() || v.len() > 128 || !v.chars().all(is_name_char) || v.starts_with('.') {
        problems.push(format!("`{key}`: {v:?} must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.'"));
    }
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {col}")
}

/// The host name, the default device id.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The local policy a bundle is checked against comes from this file.
impl Policy {
    pub fn from_config(files: &Files) -> Policy {
        let allow = files
            .allow
            .iter()
            .filter_map(|p| RelPath::parse(p.to_string_lossy().trim_start_matches('/')).ok())
            .collect();
        Policy {
            allow: Some(allow),
            allow_privileged: None,
            allow_hooks: Some(files.allow_hooks),
            protected: Vec::new(),
        }
    }

    /// The whole local policy of a configuration.
    pub fn from_agent_config(cfg: &Config) -> Policy {
        let own: Vec<&std::path::Path> = [
            cfg.file.parent(),
            Some(cfg.file.as_path()),
            Some(cfg.state_dir.as_path()),
            cfg.source.allowed_signers.as_deref(),
            cfg.source.token_file.as_deref(),
            cfg.source.ssh_key.as_deref(),
            cfg.source.ca_file.as_deref(),
            cfg.files.age_identity.as_deref(),
            cfg.mqtt.ca_file.as_deref(),
            cfg.mqtt.cert_file.as_deref(),
            cfg.mqtt.key_file.as_deref(),
            cfg.mqtt.password_file.as_deref(),
        ]
        .into_iter()
        .flatten()
        .filter(|p| p.is_absolute() && *p != std::path::Path::new("/"))
        .collect();
        let protected = own
            .iter()
            .filter_map(|p| p.strip_prefix(&cfg.files.root).ok())
            .filter_map(|rel| RelPath::parse(&rel.to_string_lossy()).ok())
            .filter(|rel| !rel.is_root())
            .collect();
        Policy { allow_privileged: Some(cfg.containers.allow_privileged), protected, ..Policy::from_config(&cfg.files) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_str(s, Path::new("agent.toml"))
    }

    #[test]
    fn minimal_config_gets_spec_defaults() {
        let c = parse("device_id = \"gw-1\"\n[source]\nurl = \"file:///srv/fleet\"\n").unwrap();
        assert_eq!(c.fleet, "default");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/tend"));
        assert_eq!(c.source.branch, "main");
        assert_eq!(c.source.path, "devices/gw-1");
        assert_eq!(c.source.interval, Duration::from_secs(60));
        assert_eq!(c.source.jitter, Duration::from_secs(10));
        assert_eq!(c.source.announce_spread, Duration::from_secs(5));
        assert_eq!(c.source.timeout, Duration::from_secs(30));
        assert!(c.apply.prune && c.apply.self_heal && c.apply.rollback && !c.apply.allow_empty);
        assert_eq!(c.apply.history, 20);
        assert_eq!(c.apply.retry, Retry::default());
        assert_eq!(c.files.root, PathBuf::from("/"));
        assert!(c.files.allow.is_empty());
        assert_eq!(c.k3s.kubectl, vec!["k3s", "kubectl"]);
        assert_eq!(c.mqtt.topic_prefix, "tend/v1");
        assert_eq!(c.control_socket(), PathBuf::from("/var/lib/tend/control.sock"));
    }

    #[test]
    fn every_spec_key_parses() {
        let text = include_str!("../tests/fixtures/config/full.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.device_id, "gw-berlin-01");
        assert_eq!(c.source.branch, "fleet/acme");
        assert_eq!(c.source.path, "devices/eu/berlin/gw-berlin-01");
        assert_eq!(c.source.interval, Duration::from_secs(60));
        assert_eq!(c.apply.retry.max, Duration::from_secs(180));
        assert_eq!(c.mqtt.health_interval, Duration::from_secs(30));
        assert_eq!(c.control.socket, Some(PathBuf::from("/run/tend/control.sock")));
        assert_eq!(c.containers.socket.as_deref(), Some("unix:///run/podman/podman.sock"));
        assert_eq!(c.logs.units, ["myapp.service"]);
    }

    #[test]
    fn logs_units_are_names_and_bounded() {
        let base = "device_id = \"gw-1\"\n[source]\nurl = \"x\"\n";
        assert!(parse(base).unwrap().logs.units.is_empty(), "none by default");
        let c =
            parse(&format!("{base}[logs]\nunits = [\"tend.service\", \"getty@tty1.service\", \"modbus-bridge\"]\n"))
                .unwrap();
        assert_eq!(c.logs.units.len(), 3);
        let err = parse(&format!("{base}[logs]\nunits = [\"ok.service\", \"-f\", \"../x\", \"a b\"]\n")).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.iter().filter(|p| p.starts_with("[logs].units: ")).count(), 3, "{text}");
        assert!(text.contains("[logs].units: \"-f\" is not a unit or container name"), "{text}");
        let many: Vec<String> = (0..65).map(|i| format!("\"u{i}.service\"")).collect();
        let err = parse(&format!("{base}[logs]\nunits = [{}]\n", many.join(","))).unwrap_err();
        assert!(err.to_string().contains("[logs].units: 65 entries, at most 64 allowed"), "{err}");
        let err = parse(&format!("{base}[logs]\nunits = \"tend.service\"\nfollow = true\n")).unwrap_err();
        assert!(err.to_string().contains("[logs]"), "{err}");
    }

    #[test]
    fn all_problems_are_reported_at_once_with_their_keys() {
        let err = parse(
            "bogus = 1\ndevice_id = \"gw 1\"\n[source]\nurl = \"x\"\ninterval = \"soon\"\npath = \"{nope}\"\n[apply]\nhistroy = 3\n[files]\nroot = \"relative\"\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("agent.toml: "), "{text}");
        assert!(text.contains("unknown key `bogus`"), "{text}");
        assert!(text.contains("[source].interval: invalid duration \"soon\""), "{text}");
        assert!(text.contains("[apply].histroy: unknown field `histroy`"), "{text}");
        // The sections that did parse are still validated in the same report.
        assert!(err.problems.len() >= 3, "{text}");
    }

    #[test]
    fn semantic_problems_name_the_key() {
        let err = parse(
            "device_id = \"gw 1\"\n[source]\nurl = \"x\"\npath = \"{nope}\"\nbranch = \"a..b\"\n[files]\nroot = \"relative\"\nallow = [\"etc\"]\n",
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "`device_id`",
            "[source].path: unknown placeholder {nope}",
            "[source].branch",
            "[files].root",
            "[files].allow",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
    }

    #[test]
    fn placeholders_expand_from_labels() {
        let c = parse("device_id = \"gw-1\"\nfleet = \"acme\"\nlabels = { site = \"berlin\" }\n[source]\nurl = \"x\"\nbranch = \"{fleet}-{labels.site}\"\npath = \"sites/{labels.site}/{device_id}\"\n").unwrap();
        assert_eq!(c.source.branch, "acme-berlin");
        assert_eq!(c.source.path, "sites/berlin/gw-1");
        let err = parse("device_id = \"gw-1\"\n[source]\nurl = \"x\"\npath = \"{labels.site}\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown placeholder {labels.site}"), "{err}");
    }

    #[test]
    fn path_placeholders_cannot_escape_the_repository() {
        let err = parse("device_id = \"gw-1\"\nlabels = { x = \"..\" }\n[source]\nurl = \"x\"\npath = \"devices/{labels.x}/{labels.x}\"\n").unwrap_err();
        assert!(err.to_string().contains("[source].path"), "{err}");
    }

    #[test]
    fn syntax_errors_give_a_position() {
        let err = parse("[source\nurl = 1").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key_the_value_and_the_range() {
        let src = "[source]\nurl = \"x\"\n";
        for (extra, want) in [
            (
                "[mqtt]\nhealth_interval = \"0s\"",
                "[mqtt].health_interval: \"0s\" is out of range (allowed: 1s to 1day)",
            ),
            (
                "interval = \"18446744073709551615s\"",
                "[source].interval: \"584542046090years 7months 15days 17h 5m 3s\" is out of range (allowed: 1s to 30days)",
            ),
            ("interval = \"0s\"", "[source].interval: \"0s\" is out of range"),
            ("jitter = \"2days\"", "[source].jitter: \"2days\" is out of range (allowed: 0s to 1day)"),
            ("timeout = \"0s\"", "[source].timeout: \"0s\" is out of range"),
            ("announce_spread = \"1year\"", "[source].announce_spread"),
            ("[apply]\nhealth_timeout = \"0s\"", "[apply].health_timeout: \"0s\" is out of range"),
            ("[apply]\nhistory = 0", "[apply].history: 0 is out of range (allowed: 1 to 10000)"),
            ("[apply]\nhistory = -1", "[apply].history: invalid value: integer `-1`"),
            ("[apply]\ncrash_limit = 0", "[apply].crash_limit: 0 is out of range (allowed: 1 to 100)"),
            ("[apply]\ncrash_limit = 4294967296", "[apply].crash_limit: invalid value: integer `4294967296`"),
            ("[apply]\nretry = { limit = 5000 }", "[apply].retry.limit: 5000 is out of range"),
            ("[apply]\nretry = { factor = 0.5 }", "[apply].retry.factor: 0.5 is out of range (allowed: 1 to 10)"),
            ("[apply]\nretry = { factor = nan }", "[apply].retry.factor: NaN is out of range"),
            ("[apply]\nretry = { factor = inf }", "[apply].retry.factor: inf is out of range"),
            ("[apply]\nretry = { max = \"100years\" }", "[apply].retry.max"),
            ("[apply]\nretry = { backoff = \"soon\" }", "[apply].retry.backoff: invalid duration \"soon\""),
            ("[apply]\nlock_timeout = \"10years\"", "[apply].lock_timeout"),
            ("[k3s]\ntimeout = \"0s\"", "[k3s].timeout: \"0s\" is out of range"),
        ] {
            // Keys without a section header go into [source].
            let text = format!("{src}{extra}\n");
            let e = parse(&text).map(|_| ()).unwrap_err().to_string();
            assert!(e.starts_with("agent.toml: "), "{e}");
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
        // The edges of each range are accepted.
        let c = parse("[source]\nurl = \"x\"\ninterval = \"1s\"\njitter = \"0s\"\n[mqtt]\nhealth_interval = \"1day\"\n[apply]\ncrash_limit = 100\nhistory = 10000\n").unwrap();
        assert_eq!(c.apply.crash_limit, 100);
        assert_eq!(parse(src).unwrap().apply.crash_limit, 2);
    }

    #[test]
    fn retry_delay_grows_and_caps() {
        let r = Retry::default();
        assert_eq!(r.delay(0), Duration::from_secs(5));
        assert_eq!(r.delay(1), Duration::from_secs(10));
        assert_eq!(r.delay(10), Duration::from_secs(180));
        assert_eq!(r.delay(u32::MAX), Duration::from_secs(180));
    }
}
