//! The command line (SPEC §5): one variant per command, and what each prints.
//!
//! Exit codes are a contract: 0 success, 1 the sync or command failed, 2 bad
//! usage or configuration. `--json` prints exactly one JSON document on stdout.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::bundle::{self, DirTree, Limits, Policy, RelPath};
use crate::config::{Config, Identity};
use crate::sync::{Agent, SyncError, SyncOptions, files_by_bundle, short};

#[derive(Debug, Parser)]
#[command(
    name = "tend",
    version,
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
    /// Run one sync cycle now: fetch, render, plan, apply. Exit 0 when synced.
    Sync {
        /// Print the plan (create/update/delete per path) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Show this gateway's status (the same fields as the MQTT status).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List applied revisions, newest first, with their outcome.
    History {
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle offline (for a fleet repository's CI); exit 1 if it is rejected.
    Validate {
        /// The bundle directory, inside a checkout of the fleet repository.
        dir: PathBuf,
        /// Device id for placeholders and templates (default: the bundle directory's name).
        #[arg(long)]
        device_id: Option<String>,
        /// Fleet name for templates.
        #[arg(long, default_value = "default")]
        fleet: String,
        /// A label for templates, KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Also check destinations against this [files].allow entry (repeatable).
        #[arg(long = "allow")]
        allow: Vec<PathBuf>,
        /// The repository root includes must stay in (default: the enclosing Git work tree).
        #[arg(long)]
        repo_root: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
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

fn open_agent(cli: &Cli) -> Result<Agent, Failure> {
    let cfg = load_config(cli)?;
    Agent::open(cfg).map_err(|e| Failure::Failed(e.into()))
}

fn print_json(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
}

/// Run the parsed command.
pub fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Sync { dry_run, json } => cmd_sync(cli, *dry_run, *json),
        Command::Status { json } => cmd_status(cli, *json),
        Command::History { json } => cmd_history(cli, *json),
        Command::Validate { dir, device_id, fleet, labels, allow, repo_root, json } => {
            cmd_validate(dir, device_id.as_deref(), fleet, labels, allow, repo_root.as_deref(), *json)
        }
    }
}

fn cmd_sync(cli: &Cli, dry_run: bool, json: bool) -> Result<(), Failure> {
    let agent = open_agent(cli)?;
    let result = agent.sync(SyncOptions { dry_run });
    match result {
        Ok(report) => {
            let (created, updated, deleted, hooks) = report.plan.counts();
            if json {
                print_json(&json!({
                    "commit": report.commit,
                    "dry_run": dry_run,
                    "received_pack": report.received_pack,
                    "files": report.files,
                    "operations": report.plan.ops.iter().filter(|o| o.changes_disk()).map(ToString::to_string).collect::<Vec<_>>(),
                    "created": created, "updated": updated, "deleted": deleted, "hooks": hooks,
                    "timings": report.timings,
                }));
            } else {
                let mut out = std::io::stdout().lock();
                let ops: Vec<_> = report.plan.ops.iter().filter(|o| o.changes_disk()).collect();
                if dry_run {
                    let _ = writeln!(out, "plan for {} (dry run: nothing changed)", short(&report.commit));
                    if ops.is_empty() {
                        let _ = writeln!(out, "  nothing to do: {} files as desired", report.files);
                    }
                }
                for op in &ops {
                    let _ = writeln!(out, "  {op}");
                }
                if !dry_run {
                    let _ = writeln!(
                        out,
                        "synced {}: {} files; {created} created, {updated} updated, {deleted} deleted, {hooks} hooks run",
                        short(&report.commit),
                        report.files
                    );
                }
            }
            Ok(())
        }
        Err(e) => Err(sync_failure(e)),
    }
}

fn sync_failure(e: SyncError) -> Failure {
    Failure::Failed(e.into())
}

fn cmd_status(cli: &Cli, json: bool) -> Result<(), Failure> {
    let agent = open_agent(cli)?;
    let s = agent.status().map_err(|e| Failure::Failed(e.into()))?;
    if json {
        print_json(&serde_json::to_value(&s).expect("status serialises"));
        return Ok(());
    }
    let opt = |o: &Option<String>| o.as_deref().map(|c| short(c).to_owned()).unwrap_or_else(|| "-".into());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "device      {} (fleet {})", s.device_id, s.fleet);
    let _ = writeln!(out, "phase       {}", s.phase);
    let _ = writeln!(out, "revision    {}", opt(&s.revision));
    let _ = writeln!(out, "target      {}", opt(&s.target_revision));
    let _ = writeln!(out, "last good   {}", opt(&s.last_good_revision));
    let _ = writeln!(out, "source      {}", s.source);
    let _ = writeln!(out, "last sync   {}", s.last_sync.as_deref().unwrap_or("never"));
    let _ = writeln!(
        out,
        "resources   {} total, {} ready, {} failed",
        s.resources.total, s.resources.ready, s.resources.failed
    );
    if let Some(e) = &s.error {
        let _ = writeln!(out, "error       {e}");
    }
    let _ = writeln!(out, "agent       tend {}", s.agent_version);
    Ok(())
}

fn cmd_history(cli: &Cli, json: bool) -> Result<(), Failure> {
    let agent = open_agent(cli)?;
    let revs = agent.history().map_err(|e| Failure::Failed(e.into()))?;
    if json {
        let list: Vec<_> = revs
            .iter()
            .map(|r| {
                json!({
                    "seq": r.seq,
                    "revision": r.commit,
                    "bundle": r.bundle,
                    "applied_at": r.applied_at,
                    "outcome": r.outcome.as_str(),
                    "error": r.error,
                    "files": r.desired.files.len(),
                    "checks": r.desired.checks.len(),
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(list));
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    if revs.is_empty() {
        let _ = writeln!(out, "no revision applied yet");
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:>4}  {:<12}  {:<11}  {:<20}  {:>6}  error",
        "seq", "revision", "outcome", "applied at", "files"
    );
    for r in &revs {
        let _ = writeln!(
            out,
            "{:>4}  {:<12}  {:<11}  {:<20}  {:>6}  {}",
            r.seq,
            short(&r.commit),
            r.outcome.as_str(),
            r.applied_at,
            r.desired.files.len(),
            r.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn cmd_validate(
    dir: &std::path::Path,
    device_id: Option<&str>,
    fleet: &str,
    labels: &[(String, String)],
    allow: &[PathBuf],
    repo_root: Option<&std::path::Path>,
    json: bool,
) -> Result<(), Failure> {
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
    let ctx = bundle::Context { identity: &identity, policy: &policy, limits: &limits };
    let tree = DirTree::new(&root);
    match bundle::render(&tree, &bundle_path, &ctx) {
        Ok(r) => {
            let d = &r.desired;
            if json {
                print_json(&json!({
                    "ok": true,
                    "bundle": bundle_path.to_string(),
                    "bundles": d.bundles,
                    "files": d.files.values().map(|f| json!({
                        "path": f.path.to_absolute_string(), "mode": format!("{:04o}", f.mode),
                        "sha256": f.hash.to_string(), "from": f.from,
                    })).collect::<Vec<_>>(),
                    "checks": d.checks.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                }));
            } else {
                let per = files_by_bundle(d);
                println!(
                    "ok: {}: {} files, {} checks (from {})",
                    bundle_path,
                    d.files.len(),
                    d.checks.len(),
                    d.bundles
                        .iter()
                        .map(|b| format!("{b}: {}", per.get(b).copied().unwrap_or(0)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(())
        }
        Err(e) => {
            if json {
                print_json(&json!({ "ok": false, "file": e.file, "error": e.reason }));
            }
            Err(Failure::Failed(anyhow::anyhow!("bundle rejected: {e}")))
        }
    }
}
