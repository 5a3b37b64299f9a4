//! What the commands print: a sync's summary, the status, the history, JSON.

use std::io::Write;

use crate::store::Status;
use crate::sync::{SyncSummary, short};

/// One JSON document on stdout, buffered (stdout alone flushes every line:
/// 10,000 gateways' status is 250,000 lines).
pub(super) fn print_json(v: &impl serde::Serialize) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
    let _ = out.flush();
}

pub(super) fn print_summary(v: &serde_json::Value, json: bool) {
    if json {
        print_json(v);
        return;
    }
    let s: SyncSummary = serde_json::from_value(v.clone()).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let commit = s.commit.as_deref().map(short).unwrap_or("-");
    if s.dry_run {
        let _ = writeln!(out, "plan for {commit} (dry run: nothing changed)");
        if s.operations.is_empty() {
            let _ = writeln!(out, "  nothing to do: {} as desired", resources(s.files, s.containers, s.manifests));
        }
    }
    for op in &s.operations {
        let _ = writeln!(out, "  {op}");
    }
    for (name, result) in &s.checks {
        let _ = writeln!(out, "  check {name}: {result}");
    }
    if let Some(why) = s.waiting_for.as_deref().filter(|_| s.action == "waiting" || s.action == "held") {
        let due = s.due_at.as_deref().map(|d| format!(" until {d}")).unwrap_or_default();
        let _ = writeln!(out, "{} {commit}: not applied yet, waiting for its {why}{due} (see `tend status`)", s.action);
        return;
    }
    if !s.dry_run {
        let what = match s.action.as_str() {
            "rolled_back" => "rolled back to",
            "repaired" => "repaired drift at",
            "unchanged" => "in sync at",
            "behind" => "the source is behind the imported revision (see `tend status`); kept",
            _ => "synced",
        };
        let _ = writeln!(
            out,
            "{what} {commit}: {}; {} created, {} updated, {} deleted{}, {} hooks run",
            resources(s.files, s.containers, s.manifests),
            s.created,
            s.updated,
            s.deleted,
            if s.pruned > 0 { format!(", {} objects pruned", s.pruned) } else { String::new() },
            s.hooks
        );
    }
}

/// "12 files, 2 containers, 44 manifests", leaving out kinds the revision has none of.
pub(super) fn resources(files: usize, containers: usize, manifests: usize) -> String {
    let n = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut parts = vec![n(files, "file")];
    if containers > 0 {
        parts.push(n(containers, "container"));
    }
    if manifests > 0 {
        parts.push(n(manifests, "manifest"));
    }
    parts.join(", ")
}

pub(super) fn print_status(v: &serde_json::Value, json: bool) {
    if json {
        print_json(v);
        return;
    }
    let Ok(s) = serde_json::from_value::<Status>(v.clone()) else {
        print_json(v);
        return;
    };
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
    if let Some(w) = &s.wave {
        let _ = writeln!(out, "wave        {w}");
    }
    if let Some(why) = &s.waiting_for {
        let due = s.due_at.as_deref().map(|d| format!(" (due {d})")).unwrap_or_default();
        let detail = s.waiting_detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
        let _ = writeln!(out, "waiting for {why}{detail}{due}");
    }
    let inv = |k: &str| s.inventory[k].as_str();
    let host: Vec<&str> = ["os", "kernel", "arch"].into_iter().filter_map(inv).collect();
    let host = host.join(", ");
    for (what, text) in
        [("host", Some(host.as_str())), ("board", inv("model")), ("runtime", inv("runtime")), ("k3s", inv("k3s"))]
    {
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            let _ = writeln!(out, "{what:<11} {t}");
        }
    }
    for p in v["problems"].as_array().into_iter().flatten().filter_map(|p| p.as_str()) {
        let _ = writeln!(out, "problem     {p}");
    }
    if let Some(m) = v.get("mqtt").and_then(|m| m.as_str()) {
        let _ = writeln!(out, "mqtt        {m}");
    }
    let _ = writeln!(out, "agent       tend {}", s.agent_version);
}

pub(super) fn print_history(v: &serde_json::Value, json: bool) {
    if json {
        print_json(v);
        return;
    }
    let revs = v.as_array().cloned().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if revs.is_empty() {
        let _ = writeln!(out, "no revision applied yet");
        return;
    }
    let _ = writeln!(
        out,
        "{:>4}  {:<12}  {:<12}  {:<20}  {:>6}  error",
        "seq", "revision", "outcome", "applied at", "files"
    );
    for r in &revs {
        let text = |k: &str| r[k].as_str().unwrap_or("").to_owned();
        let mut outcome = text("outcome");
        if r["bad"] == true {
            outcome.push('!');
        }
        let mark = if r["current"] == true { "*" } else { " " };
        let _ = writeln!(
            out,
            "{:>3}{mark}  {:<12}  {:<12}  {:<20}  {:>6}  {}",
            r["seq"].as_u64().unwrap_or(0),
            short(&text("revision")),
            outcome,
            text("applied_at"),
            r["files"].as_u64().unwrap_or(0),
            match (text("error"), text("forced")) {
                (e, f) if f.is_empty() => e,
                (e, f) if e.is_empty() => format!("(applied past: {f})"),
                (e, f) => format!("{e} (applied past: {f})"),
            }
        );
    }
    let _ = writeln!(
        out,
        "(* applied now, ! quarantined: not applied again until the branch moves or `tend sync --retry`)"
    );
}
