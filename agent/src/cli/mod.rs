//! The command line (SPEC §5): one variant per command, and what each prints.
//!
//! Exit codes are a contract: 0 success, 1 the sync or command failed, 2 bad
//! usage or configuration. `--json` prints exactly one JSON document on stdout.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use std::sync::Arc;

use crate::bundle::{self, DirTree, Limits, Policy, RelPath};
use crate::config::{Config, Identity};
use crate::control::{self, ClientError, Request};
use crate::daemon;
use crate::fleet;
use crate::report::mqtt;
use crate::store::StoreError;
use crate::sync::{self, Agent, SyncError, SyncOptions, files_by_bundle};

mod print;
use print::{print_history, print_json, print_status, print_summary};

/// `tend --version`: the version, the commit and which build this is (the
/// gateway build leaves the operator's fleet tools out).
#[cfg(feature = "fleet-serve")]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TEND_COMMIT"),
    ", operator build: with the fleet view and the operator's fleet tools)"
);
#[cfg(not(feature = "fleet-serve"))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TEND_COMMIT"), ", gateway build)");

#[derive(Debug, Parser)]
#[command(
    name = "tend",
    version = VERSION,
    about = "Pull-based GitOps agent for IoT gateways",
    long_about = "tend pulls this gateway's desired state (its bundle) from a Git branch, \
reconciles files under [files].root to it, and keeps every applied revision in a local \
store under state_dir.\n\nExit codes: 0 success, 1 the sync or command failed, 2 bad usage or configuration."
)]
pub struct Cli {
    /// Agent configuration file.
    #[arg(long, short = 'c', global = true, env = "TEND_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// More log detail (-v info, -vv debug, -vvv trace); TEND_LOG=filter overrides.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: enforce the stored revision, then poll, apply, gate on
    /// health, roll back, and serve the control socket, until SIGTERM.
    Run,
    /// Run one sync cycle now (through the daemon if it runs). Exit 0 when synced
    /// and healthy, 1 when the revision was refused, rolled back or unhealthy.
    Sync {
        /// Print the plan (create/update/delete per path) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply the branch's revision even if it is quarantined as bad.
        #[arg(long)]
        retry: bool,
        /// Apply a revision now even if its rollout wave is not due or no
        /// maintenance window is open ([rollout], SPEC §7). Update locks still
        /// hold it back: an app holding one must not be disturbed.
        #[arg(long)]
        now: bool,
        /// Print the result as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Show this gateway's status (the same fields as the MQTT status).
    Status {
        /// Print the result as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// List applied revisions, newest first, with their outcome.
    History {
        /// Print the result as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Return to the newest healthy revision older than the one applied now
    /// (exit 1 if there is none), or to REVISION (a commit id or prefix from
    /// `tend history`). The branch's tip is held until the branch moves or
    /// `tend sync --retry`.
    Rollback {
        /// The revision to return to (default: the newest healthy one older
        /// than the one applied now).
        revision: Option<String>,
        /// Print the result as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Apply an update carried on a stick (SPEC §9): each `.tend` file at
    /// PATH (a file, or a directory holding several) is verified whole (its
    /// signature by a key in [source].allowed_signers, every part against
    /// its hash, free space), its commit taken in if it descends from the
    /// applied one, its images loaded, and the commit applied through the
    /// normal cycle (health gate, rollback, quarantine, history). Files for
    /// other gateways are skipped. Exit 1 if any file is refused or fails.
    Import {
        /// A `.tend` file, or a directory of them (a mounted stick).
        path: PathBuf,
        /// Apply a commit that does not descend from the one applied now.
        #[arg(long)]
        allow_downgrade: bool,
        /// Write this gateway's report (status, recent history, undelivered
        /// events) to tend-reports/DEVICE_ID.json beside the files; done
        /// anyway when that directory exists.
        #[arg(long)]
        report: bool,
        /// Print the outcomes as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// The fleet through the MQTT broker: every gateway's status, or commands.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Check a bundle offline (for a fleet repository's CI); exit 1 if it is rejected.
    Validate(ValidateArgs),
    /// Record how the daemon's last run ended, for its next start (run by the
    /// unit's `ExecStopPost=`, which systemd gives $SERVICE_RESULT, $EXIT_CODE
    /// and $EXIT_STATUS): a revision during which the agent died is failed by
    /// `[apply].crash_limit`, and its quarantine says how the agent died.
    #[command(hide = true)]
    Exited,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The bundle directory, inside a checkout of the fleet repository.
    pub dir: PathBuf,
    /// Device id for placeholders and templates (default: the bundle directory's name).
    #[arg(long)]
    pub device_id: Option<String>,
    /// Fleet name for templates.
    #[arg(long, default_value = "default")]
    pub fleet: String,
    /// A label for templates, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Also check destinations against this [files].allow entry (repeatable).
    #[arg(long = "allow")]
    pub allow: Vec<PathBuf>,
    /// The repository root includes must stay in (default: the enclosing Git work tree).
    #[arg(long)]
    pub repo_root: Option<PathBuf>,
    /// Decrypt the bundle's secrets (files/**.age) with this age identity, to
    /// check they are encrypted to it; without it they are checked to be age
    /// files only. Their content is never shown, only the ciphertext's hash.
    #[arg(long)]
    pub age_identity: Option<PathBuf>,
    /// Print the result as one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// The fleet from the broker's retained messages: counts by availability,
    /// phase and revision first, then the gateways that need attention (`!`:
    /// offline, stale, failing, off their source or unreadable), at most 50.
    Status {
        #[command(flatten)]
        conn: MqttArgs,
        /// Only this fleet (default: every fleet under the prefix).
        #[arg(long)]
        fleet: Option<String>,
        /// A gateway whose last sync is older than this is stale.
        #[arg(long, default_value = "15m")]
        stale: humantime::Duration,
        /// List every gateway, not only those that need attention.
        #[arg(long)]
        all: bool,
        /// Count the gateways by what they are instead (their status's
        /// inventory): the most common values first.
        #[arg(long, value_parser = ["arch", "os", "runtime", "model", "kernel", "k3s"], conflicts_with = "all")]
        by: Option<String>,
        /// Print the counts and every gateway as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Serve the fleet view (a web page), its JSON API (/api/devices,
    /// /api/devices/ID) and Prometheus metrics (/metrics) from the broker's
    /// messages; read-only. Operator builds only (the `fleet-serve` feature).
    Serve {
        #[command(flatten)]
        conn: MqttArgs,
        /// Only this fleet (default: every fleet under the prefix).
        #[arg(long)]
        fleet: Option<String>,
        /// Address to listen on (keep it on loopback or a management network:
        /// the view has no authentication).
        #[arg(long, default_value = "127.0.0.1:9700")]
        listen: String,
        /// A gateway whose last sync is older than this is stale.
        #[arg(long, default_value = "15m")]
        stale: humantime::Duration,
        /// The most memory the view keeps for gateways and their events
        /// (oldest events are dropped first, then new gateways refused):
        /// anyone who may publish on the broker cannot make it grow past
        /// this. About 1 KiB a gateway plus its recent events.
        #[arg(long, default_value = "256MiB", value_parser = parse_memory)]
        max_memory: u64,
        /// Which gateways get /metrics series of their own: `attention` (those
        /// offline, stale, failing or unreadable, at most 1,000: what the
        /// alert rules name), `all`, or `none`. The aggregates are always there.
        #[arg(long, default_value = "attention")]
        device_metrics: String,
    },
    /// Ask one gateway (--device) or every gateway of a fleet (--all) to sync now.
    Sync {
        #[command(flatten)]
        conn: MqttArgs,
        #[arg(long, default_value = "default")]
        fleet: String,
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        device: Option<String>,
        #[arg(long)]
        all: bool,
        /// Go past rollout waves and maintenance windows (not update locks),
        /// as `tend sync --now` on each gateway.
        #[arg(long)]
        now: bool,
    },
    /// Publish the reports gateways at sites without network wrote onto a
    /// stick (DIR/tend-reports/*.json, by `tend import`) as if they had sent
    /// them: each status retained, marked via "import" with the report's
    /// time, and the events it had not delivered. A status the gateway sent
    /// itself since is kept. Operator builds only (the `fleet-serve` feature).
    #[cfg(feature = "fleet-serve")]
    Ingest {
        #[command(flatten)]
        conn: MqttArgs,
        /// Only reports of this fleet.
        #[arg(long)]
        fleet: Option<String>,
        /// The stick (its tend-reports/ directory is read), or that directory.
        dir: PathBuf,
    },
    /// Write one signed `.tend` file for sites without network (SPEC §9):
    /// the branch's tip as a Git bundle (thin from --since), the container
    /// images the exported devices' bundles name (from the local Podman or
    /// Docker, pulled when missing), and a manifest signed with --key
    /// (`ssh-keygen -Y sign`, namespace tend-export). Needs git and
    /// ssh-keygen. Operator builds only (the `fleet-serve` feature).
    #[cfg(feature = "fleet-serve")]
    Export {
        /// The fleet repository: a URL, or the path of a local clone.
        #[arg(long)]
        repo: String,
        #[arg(long, default_value = "main")]
        branch: String,
        /// Only what came after this commit (a gateway must run it or a
        /// later one): a smaller file.
        #[arg(long)]
        since: Option<String>,
        /// Which devices (`*` and `?` wildcards over the device directories).
        #[arg(long, default_value = "*")]
        devices: String,
        /// Where a device's bundle is (the gateways' [source].path).
        #[arg(long, default_value = "devices/{device_id}")]
        path: String,
        #[arg(long, default_value = "default")]
        fleet: String,
        /// The SSH private key that signs the export (its public key in the
        /// gateways' allowed_signers).
        #[arg(long)]
        key: PathBuf,
        /// The file to write, or a directory to write FLEET-SHORTREV.tend in.
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// The Podman or Docker API socket (default: the first found).
        #[arg(long)]
        socket: Option<String>,
    },
    /// A gateway's recent journal lines for a unit its [logs].units allows,
    /// or a container's log (SPEC §4 `logs`): asked over the broker, answered
    /// by the gateway on {prefix}/{fleet}/DEVICE/logs/ID (at most 64 KiB, the
    /// newest lines). Exit 1 when the gateway refuses (the reason on stderr)
    /// or does not answer. Operator builds only (the `fleet-serve` feature).
    #[cfg(feature = "fleet-serve")]
    Logs {
        #[command(flatten)]
        conn: MqttArgs,
        #[arg(long, default_value = "default")]
        fleet: String,
        /// The gateway's device id.
        device: String,
        /// A unit (`myapp.service`: its journal) or a container (by name)
        /// that the gateway's [logs].units lists; default: the first listed.
        #[arg(long)]
        unit: Option<String>,
        /// How far back: a duration ("10m", "2h") or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// The newest N lines (1 to 5000; default 200).
        #[arg(long)]
        lines: Option<u64>,
        /// How long to wait for the gateway's answer.
        #[arg(long, default_value = "30s")]
        timeout: humantime::Duration,
        /// Print the gateway's answer as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Tell the fleet a new commit is on a branch (run by the fleet
    /// repository's CI after a push): a retained message on
    /// {prefix}/{fleet}/_source/{branch}. Gateways following that branch fetch
    /// within their [source].announce_spread; what they apply is still what
    /// Git (and allowed_signers) says. Operator builds only (the `fleet-serve`
    /// feature: the amd64 package a CI runner installs).
    #[cfg(feature = "fleet-serve")]
    Announce {
        #[command(flatten)]
        conn: MqttArgs,
        #[arg(long, default_value = "default")]
        fleet: String,
        /// The branch the gateways follow (their [source].branch, placeholders expanded).
        #[arg(long, default_value = "main")]
        branch: String,
        /// The full commit id now at the branch's tip (`git rev-parse HEAD`).
        revision: String,
    },
}

/// How the fleet commands reach the broker (the same TLS options as [mqtt]).
#[derive(Debug, clap::Args)]
pub struct MqttArgs {
    /// Broker URL: mqtt://HOST[:PORT] or mqtts://HOST[:PORT].
    #[arg(long)]
    pub mqtt: String,
    #[arg(long, default_value = "tend/v1")]
    pub topic_prefix: String,
    /// PEM CA certificates to trust (mqtts).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mqtts), with --key-file.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    #[arg(long)]
    pub username: Option<String>,
    /// A file whose first line is the password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

impl MqttArgs {
    fn settings(&self) -> mqtt::Settings {
        mqtt::Settings {
            url: self.mqtt.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            username: self.username.clone(),
            password_file: self.password_file.clone(),
        }
    }
}

fn parse_memory(s: &str) -> Result<u64, String> {
    crate::bounds::parse_size("--max-memory", s, 1 << 20, 1 << 40)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: empty label key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// How a command ended, for the exit code.
#[derive(Debug)]
pub enum Failure {
    /// Exit 1: the sync or command failed.
    Failed(anyhow::Error),
    /// Exit 2: bad usage or configuration.
    Usage(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Failed(_) => 1,
            Failure::Usage(_) => 2,
        }
    }
    pub fn error(&self) -> &anyhow::Error {
        match self {
            Failure::Failed(e) | Failure::Usage(e) => e,
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    Config::load(&cli.config).map_err(|e| Failure::Usage(e.into()))
}

/// Run the parsed command.
pub fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Run => {
            let cfg = load_config(cli)?;
            // A one-shot command (`tend status` while the daemon starts) holds
            // the store for a moment: wait for it rather than fail the start.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            let agent = loop {
                match Agent::open(cfg.clone()) {
                    Err(crate::store::StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    other => break other.map_err(open_failure)?,
                }
            };
            daemon::run(agent).map_err(|e| Failure::Failed(e.into()))
        }
        Command::Sync { dry_run, retry, now, json } => {
            let req = Request::Sync { dry_run: *dry_run, retry: *retry, now: *now };
            let v = call(cli, req)?;
            print_summary(&v, *json);
            Ok(())
        }
        Command::Rollback { revision, json } => {
            let v = call(cli, Request::Rollback { revision: revision.clone() })?;
            print_summary(&v, *json);
            Ok(())
        }
        Command::Status { json } => {
            let v = call(cli, Request::Status)?;
            print_status(&v, *json);
            Ok(())
        }
        Command::History { json } => {
            let v = call(cli, Request::History)?;
            print_history(&v, *json);
            Ok(())
        }
        Command::Validate(args) => cmd_validate(args),
        Command::Import { path, allow_downgrade, report, json } => {
            cmd_import(cli, path, *allow_downgrade, *report, *json)
        }
        Command::Fleet { command } => cmd_fleet(command),
        Command::Exited => {
            let cfg = load_config(cli)?;
            let var = |k: &str| std::env::var(k).unwrap_or_default();
            daemon::record_exit(&cfg.state_dir, &var("SERVICE_RESULT"), &var("EXIT_CODE"), &var("EXIT_STATUS"))
                .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot record how tend ended: {e}")))
        }
    }
}

fn cmd_fleet(command: &FleetCommand) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot start the runtime: {e}")))?;
    let usage = |e: String| {
        if e.starts_with("[mqtt]") || e.contains("must start with") {
            Failure::Usage(anyhow::anyhow!(e.replace("[mqtt].", "--").replace("[mqtt]", "--mqtt")))
        } else {
            Failure::Failed(anyhow::anyhow!(e))
        }
    };
    match command {
        FleetCommand::Status { conn, fleet, stale, all, by, json } => {
            let shown = Shown { all: *all, by: by.as_deref(), json: *json };
            status(&rt, conn, fleet.as_deref(), (*stale).into(), shown, usage)
        }
        FleetCommand::Serve { conn, fleet, listen, stale, max_memory, device_metrics } => {
            serve(&rt, conn, fleet.clone(), listen, (*stale).into(), *max_memory, device_metrics)
        }
        FleetCommand::Sync { conn, fleet: f, device, all, now } => {
            let target = if *all { None } else { device.as_deref() };
            let id = rt
                .block_on(fleet::broker::sync(&conn.settings(), &conn.topic_prefix, f, target, *now))
                .map_err(usage)?;
            println!(
                "sync requested from {} (command id {id})",
                target.map_or_else(|| format!("every gateway of fleet {f}"), |d| format!("{f}/{d}"))
            );
            Ok(())
        }
        #[cfg(feature = "fleet-serve")]
        FleetCommand::Ingest { conn, fleet: f, dir } => {
            let done = rt
                .block_on(fleet::ingest::ingest(&conn.settings(), &conn.topic_prefix, f.as_deref(), dir))
                .map_err(usage)?;
            for (file, why) in &done.skipped {
                eprintln!("skipped {file}: {why}");
            }
            println!(
                "published {} report{} ({} event{}){}",
                done.published.len(),
                if done.published.len() == 1 { "" } else { "s" },
                done.events,
                if done.events == 1 { "" } else { "s" },
                if done.published.is_empty() { String::new() } else { format!(": {}", done.published.join(", ")) }
            );
            Ok(())
        }
        #[cfg(feature = "fleet-serve")]
        FleetCommand::Export { repo, branch, since, devices, path, fleet: f, key, output, socket } => {
            let req = crate::offline::export::Request {
                repo: repo.clone(),
                branch: branch.clone(),
                since: since.clone(),
                devices: devices.clone(),
                path: path.clone(),
                fleet: f.clone(),
                key: key.clone(),
                out: output.clone(),
                socket: socket.clone(),
            };
            let w = crate::offline::export::export(&req).map_err(|e| Failure::Failed(anyhow::anyhow!(e)))?;
            let m = &w.manifest;
            println!(
                "wrote {}: {} of {} ({}{}), {} device{}, {} image{}, {} in {:.1} s",
                w.file.display(),
                crate::sync::short(&m.commit),
                m.branch,
                m.fleet,
                m.since.as_deref().map(|s| format!(", since {}", crate::sync::short(s))).unwrap_or_default(),
                m.devices.len(),
                if m.devices.len() == 1 { "" } else { "s" },
                m.images.len(),
                if m.images.len() == 1 { "" } else { "s" },
                crate::offline::import::human(w.size),
                w.seconds
            );
            Ok(())
        }
        #[cfg(feature = "fleet-serve")]
        FleetCommand::Logs { conn, fleet: f, device, unit, since, lines, timeout, json } => {
            let request = fleet::broker::logs_request(f, device, unit.as_deref(), since.as_deref(), *lines)
                .map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
            let answer = rt
                .block_on(fleet::broker::logs(
                    &conn.settings(),
                    &conn.topic_prefix,
                    f,
                    device,
                    request,
                    (*timeout).into(),
                ))
                .map_err(usage)?;
            print_logs(&answer, *json).map_err(|e| Failure::Failed(anyhow::anyhow!("{f}/{device} refused: {e}")))
        }
        #[cfg(feature = "fleet-serve")]
        FleetCommand::Announce { conn, fleet: f, branch, revision } => {
            let revision = revision.trim().to_ascii_lowercase();
            if !crate::report::announce::is_commit_id(&revision) {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "REVISION {revision:?}: not a full commit id (40 or 64 hexadecimal digits, as `git rev-parse HEAD` prints)"
                )));
            }
            if crate::report::announce::topic(&conn.topic_prefix, f, branch).is_none() {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "--branch {branch:?}: cannot be an MQTT topic (it has + or #)"
                )));
            }
            let topic = rt
                .block_on(fleet::broker::announce(&conn.settings(), &conn.topic_prefix, f, branch, &revision))
                .map_err(usage)?;
            println!("announced {} on {topic}", crate::sync::short(&revision));
            Ok(())
        }
    }
}

/// The answer of `tend fleet logs`: each line as `TIME TEXT` (no control
/// character reaches the terminal), or the answer itself with `json`; a
/// refusal is the error, said on stderr.
#[cfg(feature = "fleet-serve")]
fn print_logs(answer: &serde_json::Value, json: bool) -> Result<(), String> {
    use std::io::Write;
    if json {
        print_json(answer);
    }
    if answer["ok"] != true {
        let why = answer["error"].as_str().unwrap_or("no reason given");
        return Err(fleet::model::clean(why, 1000));
    }
    let lines = answer["lines"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for l in lines {
            let ts = fleet::model::clean(l["ts"].as_str().unwrap_or(""), 40);
            let text = fleet::model::clean(l["text"].as_str().unwrap_or(""), crate::report::logs::LINE_MAX);
            let _ = writeln!(out, "{ts} {text}");
        }
        let _ = out.flush();
    }
    if answer["truncated"] == true {
        eprintln!("(only the newest {} lines fit the gateway's 64 KiB answer)", lines.len());
    }
    Ok(())
}

/// `tend fleet status`.
#[cfg(feature = "fleet-serve")]
fn status(
    rt: &tokio::runtime::Runtime,
    conn: &MqttArgs,
    fleet: Option<&str>,
    stale: std::time::Duration,
    shown: Shown<'_>,
    usage: impl Fn(String) -> Failure,
) -> Result<(), Failure> {
    let Shown { all, by, json } = shown;
    let state =
        rt.block_on(fleet::broker::snapshot(&conn.settings(), &conn.topic_prefix, fleet, stale)).map_err(usage)?;
    if let Some(key) = by {
        let t = fleet::model::Tally::of(state.devices.values(), key, fleet::view::BY_ROWS);
        if json {
            print_json(
                &serde_json::json!({ "by": key, "gateways": state.devices.len(), "values": t.values, "other": t.other }),
            );
        } else {
            print!("{}", fleet::view::by(state.devices.values(), key));
        }
    } else if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            counts: fleet::model::Counts,
            devices: Vec<&'a fleet::model::Device>,
        }
        print_json(&Out { counts: state.counts(), devices: state.devices.values().collect() });
    } else {
        print!("{}", fleet::view::report(state.devices.values(), all, std::time::SystemTime::now()));
    }
    Ok(())
}

#[cfg(not(feature = "fleet-serve"))]
fn status(
    _: &tokio::runtime::Runtime,
    _: &MqttArgs,
    _: Option<&str>,
    _: std::time::Duration,
    _: Shown<'_>,
    _: impl Fn(String) -> Failure,
) -> Result<(), Failure> {
    Err(Failure::Usage(anyhow::anyhow!(GATEWAY_BUILD)))
}

/// What `tend fleet status` prints: the gateways needing attention or
/// `all`, or the counts `by` an inventory key; as text or JSON.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "fleet-serve"), allow(dead_code))]
struct Shown<'a> {
    all: bool,
    by: Option<&'a str>,
    json: bool,
}

/// Why the gateway build has no `fleet status` or `fleet serve`.
#[cfg(not(feature = "fleet-serve"))]
const GATEWAY_BUILD: &str = "this is the gateway build of tend, without `fleet status` and `fleet serve` (it keeps the binary small): run them on an operator machine from the amd64 package or a build with `cargo build --release --features fleet-serve`";

#[cfg(feature = "fleet-serve")]
fn serve(
    rt: &tokio::runtime::Runtime,
    conn: &MqttArgs,
    fleet: Option<String>,
    listen: &str,
    stale: std::time::Duration,
    max_memory: u64,
    device_metrics: &str,
) -> Result<(), Failure> {
    use std::sync::Arc;
    let device_metrics: fleet::metrics::DeviceMetrics =
        device_metrics.parse().map_err(|e: String| Failure::Usage(anyhow::anyhow!("--device-metrics {e}")))?;
    let settings = conn.settings();
    settings.options("probe", None).map_err(|e| Failure::Usage(anyhow::anyhow!(e.replace("[mqtt]", "--mqtt"))))?;
    rt.block_on(async {
        let listener = fleet::serve::bind(listen).await.map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
        let live = Arc::new(fleet::broker::Live {
            fleet: std::sync::Mutex::new({
                let mut f = fleet::model::Fleet::new(&conn.topic_prefix, stale);
                f.max_bytes = usize::try_from(max_memory).unwrap_or(usize::MAX);
                f
            }),
            connected: std::sync::atomic::AtomicBool::new(false),
            device_metrics,
            logs: Some(fleet::broker::LogsAsker::new(settings.clone(), conn.topic_prefix.clone())),
        });
        let addr = listener.local_addr().map_err(|e| Failure::Failed(e.into()))?;
        eprintln!("tend fleet serve: http://{addr}/ (the view), /api/devices, /metrics; broker {}", settings.url);
        let follow = fleet::broker::follow(settings.clone(), conn.topic_prefix.clone(), fleet, live.clone());
        tokio::select! {
            r = follow => r.map_err(|e| Failure::Failed(anyhow::anyhow!(e))),
            r = fleet::serve::serve(listener, live) => r.map_err(|e| Failure::Failed(e.into())),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

#[cfg(not(feature = "fleet-serve"))]
fn serve(
    _: &tokio::runtime::Runtime,
    _: &MqttArgs,
    _: Option<String>,
    _: &str,
    _: std::time::Duration,
    _: u64,
    _: &str,
) -> Result<(), Failure> {
    Err(Failure::Usage(anyhow::anyhow!(GATEWAY_BUILD)))
}

/// A store that cannot be opened: a damaged one is not retried (exit 2, which
/// the unit does not restart); anything else may pass.
fn open_failure(e: StoreError) -> Failure {
    match e {
        e @ StoreError::Damaged { .. } => Failure::Usage(e.into()),
        e => Failure::Failed(e.into()),
    }
}

/// Carry out `req` through the running daemon's control socket, or directly on
/// the store when no daemon runs.
fn call(cli: &Cli, req: Request) -> Result<serde_json::Value, Failure> {
    let cfg = load_config(cli)?;
    let socket = cfg.control_socket();
    // A sync may take the whole health window.
    let wait = cfg.apply.health_timeout
        + cfg.source.timeout
        + std::time::Duration::from_secs(if matches!(req, Request::Import { .. }) { 3600 } else { 300 });
    match control::request(&socket, &req, wait) {
        Ok(resp) if resp.ok => return Ok(resp.result),
        Ok(resp) => {
            let e = anyhow::anyhow!(resp.error.unwrap_or_else(|| "the daemon refused the request".into()));
            return Err(if resp.exit == 2 { Failure::Usage(e) } else { Failure::Failed(e) });
        }
        Err(ClientError::NotRunning(_)) => {}
        Err(e) => return Err(Failure::Failed(e.into())),
    }
    let agent = match Agent::open(cfg) {
        Ok(a) => Arc::new(a),
        Err(e @ StoreError::Locked { .. }) => {
            return Err(Failure::Failed(anyhow::anyhow!(
                "{e}, and no daemon answers on its control socket {}",
                socket.display()
            )));
        }
        Err(e) => return Err(open_failure(e)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot start the runtime: {e}")))?;
    let failed = |e: SyncError| Failure::Failed(e.into());
    // A one-shot command that may apply first counts a death of an earlier
    // one during its apply (SPEC §3, 8), and is stopped cleanly by SIGINT or
    // SIGTERM (not a death).
    let may_apply =
        matches!(req, Request::Sync { dry_run: false, .. } | Request::Rollback { .. } | Request::Import { .. });
    let result = rt.block_on(async {
        if may_apply {
            sync::recover(&agent, None).await.map_err(failed)?;
        }
        let work = async {
            match req {
                Request::Sync { dry_run, retry, now } => {
                    sync::sync(&agent, SyncOptions { dry_run, retry, now, no_heal: false })
                        .await
                        .map(|s| serde_json::to_value(s).expect("summary serialises"))
                        .map_err(failed)
                }
                Request::Rollback { revision } => sync::rollback(&agent, revision)
                    .await
                    .map(|s| serde_json::to_value(s).expect("summary serialises"))
                    .map_err(failed),
                Request::Status => agent
                    .status()
                    .map(|s| serde_json::to_value(s).expect("status serialises"))
                    .map_err(|e| Failure::Failed(e.into())),
                Request::History => {
                    agent.history_json().map(serde_json::Value::Array).map_err(|e| Failure::Failed(e.into()))
                }
                Request::Import { path, allow_downgrade } => {
                    let file = std::fs::File::open(&path)
                        .map_err(|e| Failure::Failed(anyhow::anyhow!("{path}: cannot open: {e}")))?;
                    let name = crate::offline::shown(std::path::Path::new(&path));
                    crate::offline::import::import(&agent, file, name, allow_downgrade, SyncOptions::default())
                        .await
                        .map(|o| serde_json::to_value(o).expect("an outcome serialises"))
                        .map_err(|e| Failure::Failed(anyhow::anyhow!(e)))
                }
                Request::Report => {
                    crate::offline::import::report(&agent).map_err(|e| Failure::Failed(anyhow::anyhow!(e)))
                }
            }
        };
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return work.await;
        };
        tokio::select! {
            r = work => r,
            _ = term.recv() => Err(Failure::Failed(anyhow::anyhow!("stopped by SIGTERM"))),
            _ = int.recv() => Err(Failure::Failed(anyhow::anyhow!("stopped by SIGINT"))),
        }
    });
    // Waits for a step still running on the blocking pool (an apply).
    rt.shutdown_timeout(std::time::Duration::from_secs(30));
    let flushed = if may_apply { sync::stopped(&agent) } else { agent.store.flush() };
    if let Err(e) = flushed {
        tracing::error!(error = %e, "could not flush the store");
    }
    result
}

fn cmd_validate(args: &ValidateArgs) -> Result<(), Failure> {
    let ValidateArgs { dir, device_id, fleet, labels, allow, repo_root, age_identity, json } = args;
    let (device_id, repo_root, json) = (device_id.as_deref(), repo_root.as_deref(), *json);
    let usage = |m: String| Failure::Usage(anyhow::anyhow!(m));
    let abs = dir.canonicalize().map_err(|e| usage(format!("{}: {e}", dir.display())))?;
    if !abs.is_dir() {
        return Err(usage(format!("{}: not a directory", dir.display())));
    }
    let root = match repo_root {
        Some(r) => r.canonicalize().map_err(|e| usage(format!("--repo-root {}: {e}", r.display())))?,
        None => bundle::enclosing_repo_root(&abs).unwrap_or_else(|| abs.clone()),
    };
    let rel = abs
        .strip_prefix(&root)
        .map_err(|_| usage(format!("{} is not inside the repository root {}", dir.display(), root.display())))?;
    let bundle_path = RelPath::parse(&rel.to_string_lossy()).map_err(|e| usage(format!("{}: {e}", dir.display())))?;
    let identity = Identity {
        device_id: device_id
            .map(str::to_owned)
            .or_else(|| abs.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "device".into()),
        fleet: fleet.to_owned(),
        labels: labels.iter().cloned().collect(),
    };
    let policy = if allow.is_empty() {
        Policy::default()
    } else {
        Policy::from_config(&crate::config::Files { allow: allow.to_vec(), ..Default::default() })
    };
    let limits = Limits::default();
    let keys = match age_identity {
        Some(path) => Some(crate::secrets::AgeKeys::load(path).map_err(usage)?),
        None => None,
    };
    let secrets = keys.as_ref().map_or(bundle::Secrets::Opaque, bundle::Secrets::Keys);
    let ctx = bundle::Context { identity: &identity, policy: &policy, limits: &limits, secrets };
    let tree = DirTree::new(&root);
    match bundle::render(&tree, &bundle_path, &ctx) {
        Ok(r) => {
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            let d = &r.desired;
            if json {
                print_json(&json!({
                    "ok": true,
                    "bundle": bundle_path.to_string(),
                    "bundles": d.bundles,
                    "files": d.files.values().map(|f| match f.sealed {
                        // A secret: the ciphertext's hash, never the plaintext's.
                        Some(cipher) => json!({
                            "path": f.path.to_absolute_string(), "mode": format!("{:04o}", f.mode),
                            "sha256": cipher.to_string(), "secret": true, "from": f.from,
                        }),
                        None => json!({
                            "path": f.path.to_absolute_string(), "mode": format!("{:04o}", f.mode),
                            "sha256": f.hash.to_string(), "from": f.from,
                        }),
                    }).collect::<Vec<_>>(),
                    "checks": d.checks.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                    "containers": d.containers.keys().collect::<Vec<_>>(),
                    "manifests": d.manifests.iter().map(|(rel, m)| json!({
                        "path": rel,
                        "file": crate::reconcile::k3s::file_name(rel),
                        "objects": m.objects.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "warnings": r.warnings,
                }));
            } else {
                let per = files_by_bundle(d);
                println!(
                    "ok: {}: {} files, {} containers, {} manifests, {} checks (from {})",
                    bundle_path,
                    d.files.len(),
                    d.containers.len(),
                    d.manifests.len(),
                    d.checks.len(),
                    d.bundles
                        .iter()
                        .map(|b| format!("{b}: {}", per.get(b).copied().unwrap_or(0)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                for (rel, m) in &d.manifests {
                    let n = m.objects.len();
                    println!(
                        "  manifest k3s/{rel} -> {} ({n} object{})",
                        crate::reconcile::k3s::file_name(rel),
                        if n == 1 { "" } else { "s" }
                    );
                }
            }
            Ok(())
        }
        Err(e) => {
            let problems: Vec<(&str, &str)> = e.problems().collect();
            if json {
                print_json(&json!({
                    "ok": false,
                    "file": e.file,
                    "error": e.reason,
                    "problems": problems.iter().map(|(f, r)| json!({ "file": f, "error": r })).collect::<Vec<_>>(),
                }));
            }
            if problems.len() == 1 {
                return Err(Failure::Failed(anyhow::anyhow!("bundle rejected: {e}")));
            }
            // Every problem on its own line, so the fleet repository's CI
            // shows them all in one run.
            for (file, reason) in &problems {
                eprintln!("{file}: {reason}");
            }
            Err(Failure::Failed(anyhow::anyhow!("bundle rejected: {} problems (listed above)", problems.len())))
        }
    }
}

/// `tend import`: each file through the daemon (or directly), then the
/// report onto the stick when asked for or when it has `tend-reports/`.
fn cmd_import(
    cli: &Cli,
    path: &std::path::Path,
    allow_downgrade: bool,
    report: bool,
    json: bool,
) -> Result<(), Failure> {
    let meta = std::fs::metadata(path).map_err(|e| Failure::Failed(anyhow::anyhow!("{}: {e}", path.display())))?;
    let (files, dir) = if meta.is_dir() {
        let files = crate::offline::files_ending(path, "tend")
            .map_err(|e| Failure::Failed(anyhow::anyhow!("{}: {e}", path.display())))?;
        (files, path.to_path_buf())
    } else {
        (vec![path.to_path_buf()], path.parent().unwrap_or(std::path::Path::new(".")).to_path_buf())
    };
    let reports = dir.join("tend-reports");
    let report = report || std::fs::symlink_metadata(&reports).is_ok_and(|m| m.is_dir());
    let mut outcomes = Vec::new();
    let mut failed = 0usize;
    for f in &files {
        let abs = std::path::absolute(f).unwrap_or_else(|_| f.clone());
        let req = Request::Import { path: abs.display().to_string(), allow_downgrade };
        match call(cli, req) {
            Ok(v) => {
                if !json {
                    let o = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                    let commit = crate::sync::short(&o("commit")).to_owned();
                    let detail = v["detail"].as_str().map(|d| format!(": {d}")).unwrap_or_default();
                    let signer = v["signer"].as_str().map(|s| format!(" (signed by {s})")).unwrap_or_default();
                    println!("{}: {} {commit}{signer}{detail}", o("file"), o("outcome"));
                }
                outcomes.push(v);
            }
            Err(e) => {
                failed += 1;
                if !json {
                    eprintln!("error: {}", e.error());
                }
                outcomes.push(
                    json!({ "file": crate::offline::shown(f), "outcome": "refused", "error": e.error().to_string() }),
                );
            }
        }
    }
    let mut written = None;
    if report {
        let r = call(cli, Request::Report)?;
        let device = r["device_id"].as_str().unwrap_or("device").to_owned();
        if let Err(e) = std::fs::create_dir(&reports)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(Failure::Failed(anyhow::anyhow!("{}: {e}", reports.display())));
        }
        let out = reports.join(format!("{device}.json"));
        let text = serde_json::to_vec_pretty(&r).expect("a report serialises");
        match crate::atomic::write(&out, &text, 0o644, true) {
            Ok(()) => {
                let _ = crate::atomic::fsync_dir(&reports);
                if !json {
                    println!("report written to {}", out.display());
                }
                written = Some(out.display().to_string());
            }
            // A write-protected stick: the import stands, the report waits
            // for the next stick.
            Err(e) if e.error.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {
                eprintln!("warning: no report written: {} is read-only", reports.display());
            }
            Err(e) => return Err(Failure::Failed(anyhow::anyhow!("cannot write the report: {e}"))),
        }
    }
    if json {
        print_json(&json!({ "files": outcomes, "report": written }));
    }
    if files.is_empty() {
        return Err(Failure::Failed(anyhow::anyhow!("no .tend file in {}", path.display())));
    }
    if failed > 0 {
        return Err(Failure::Failed(anyhow::anyhow!("{failed} of {} files refused or failed", files.len())));
    }
    Ok(())
}
