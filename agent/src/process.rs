//! The one way tend runs a child process: `on_change` hooks, command checks,
//! `kubectl` (delete, rollout status).
//!
//! What must always hold:
//! - a command never runs longer than its timeout: it is killed and reaped;
//! - its output is read on threads and capped (16 KiB of each stream kept, the
//!   rest drained), so a chatty command neither blocks on a full pipe nor fills
//!   memory;
//! - input is written on its own thread; a command that exits without reading
//!   it is reported by its exit status and its own error output, never as the
//!   `Broken pipe` of the write.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Output kept per stream.
const OUTPUT_CAP: u64 = 16 * 1024;

/// How a command ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("empty command")]
    Empty,
    #[error("cannot be run: {0}")]
    Spawn(String),
    #[error("timed out after {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("{0}")]
    Wait(String),
}

/// Run `command` with `input` on its standard input (none: `/dev/null`), wait
/// at most `timeout`.
pub fn run(command: &[String], input: Option<Vec<u8>>, timeout: Duration) -> Result<Output, RunError> {
    output_of(command, &[], input, timeout, OUTPUT_CAP)
}

/// [`run`], keeping `cap` bytes of standard output (standard error keeps
/// 16 KiB): for a reader whose output is the point (`journalctl` for
/// `tend fleet logs`).
pub fn run_capped(command: &[String], input: Option<Vec<u8>>, timeout: Duration, cap: u64) -> Result<Output, RunError> {
    output_of(command, &[], input, timeout, cap)
}

/// [`run`] with `env` added to the environment (lifecycle hooks).
pub fn run_with(
    command: &[String],
    env: &[(&str, &str)],
    input: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Output, RunError> {
    output_of(command, env, input, timeout, OUTPUT_CAP)
}

/// Every run: the command in a process group of its own; the timeout
/// covers its output too (something it started that holds its output
/// open), and when it passes the whole group is killed, not only the
/// command.
fn output_of(
    command: &[String],
    env: &[(&str, &str)],
    input: Option<Vec<u8>>,
    timeout: Duration,
    cap: u64,
) -> Result<Output, RunError> {
    use std::os::unix::process::CommandExt;
    let (prog, args) = command.split_first().ok_or(RunError::Empty)?;
    let mut child = Command::new(prog)
        .args(args)
        .envs(env.iter().copied())
        .process_group(0)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RunError::Spawn(e.to_string()))?;
    let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let kill_group = || {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    };
    let writer = match (input, child.stdin.take()) {
        (Some(data), Some(mut stdin)) => Some(std::thread::spawn(move || {
            // A write error means the command closed its input early (EPIPE):
            // what it says on stderr and its exit status tell why.
            let _ = stdin.write_all(&data);
        })),
        _ => None,
    };
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || tx.send((0, read_capped(&mut out, cap))));
    std::thread::spawn(move || tx2.send((1, read_capped(&mut err, OUTPUT_CAP))));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > timeout => {
                kill_group();
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::TimedOut(timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(RunError::Wait(e.to_string())),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    // Both outputs end when everything holding them open has exited.
    let mut outputs = [String::new(), String::new()];
    for _ in 0..2 {
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok((i, text)) => outputs[i] = text,
            Err(_) => {
                // Something the command started holds its output open:
                // the group is killed; a reader still blocked (a process
                // that left the group) is left behind, not waited for.
                kill_group();
                return Err(RunError::TimedOut(timeout));
            }
        }
    }
    let [stdout, stderr] = outputs;
    Ok(Output { status, stdout, stderr })
}

fn read_capped(r: &mut impl Read, cap: u64) -> String {
    let mut buf = Vec::new();
    let _ = r.by_ref().take(cap).read_to_end(&mut buf);
    // Drain the rest so the child never blocks writing.
    let _ = std::io::copy(r, &mut std::io::sink());
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn output_status_and_input() {
        let o = run(&sh("cat; echo err >&2; exit 3"), Some(b"hello".to_vec()), Duration::from_secs(5)).unwrap();
        assert_eq!((o.stdout.as_str(), o.stderr.as_str(), o.status.code()), ("hello", "err\n", Some(3)));
    }

    #[test]
    fn a_command_that_does_not_read_its_input_reports_its_own_error() {
        // More than a pipe buffer, to a command that exits at once.
        let o = run(&sh("echo 'error: unknown flag' >&2; exit 1"), Some(vec![b'x'; 1 << 20]), Duration::from_secs(5))
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(o.stderr, "error: unknown flag\n");
    }

    #[test]
    fn timeouts_kill_and_output_is_capped() {
        let e = run(&sh("sleep 5"), None, Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.to_string(), "timed out after 200ms");
        let o = run(&sh("head -c 100000 /dev/zero"), None, Duration::from_secs(5)).unwrap();
        assert_eq!(o.stdout.len(), 16 * 1024);
        let o = run_capped(&sh("head -c 100000 /dev/zero"), None, Duration::from_secs(5), 40_000).unwrap();
        assert_eq!(o.stdout.len(), 40_000);
        assert!(matches!(run(&["/nonexistent/x".into()], None, Duration::from_secs(1)), Err(RunError::Spawn(_))));
    }

    #[test]
    fn a_timeout_kills_the_whole_process_group_and_env_is_passed() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // A child in the background and one in the foreground: both killed.
        let script = format!("sleep 30 & echo $! > {0}; sleep 30 & echo $! >> {0}; wait", pids.display());
        let t = Instant::now();
        let e = run_with(&sh(&script), &[], None, Duration::from_millis(500)).unwrap_err();
        assert_eq!(e, RunError::TimedOut(Duration::from_millis(500)));
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(200));
        let text = std::fs::read_to_string(&pids).unwrap();
        for pid in text.lines().map(|l| l.trim().parse::<i32>().unwrap()) {
            assert!(!tend_e2e::pid_alive(pid), "{pid} survived the timeout");
        }
        // The command exits at once, but what it left behind holds its
        // output open: the timeout covers that too, and kills it.
        let script = format!("sleep 30 & echo $! > {}; exit 0", pids.display());
        let e = run_with(&sh(&script), &[], None, Duration::from_millis(500)).unwrap_err();
        assert_eq!(e, RunError::TimedOut(Duration::from_millis(500)));
        std::thread::sleep(Duration::from_millis(200));
        let pid: i32 = std::fs::read_to_string(&pids).unwrap().trim().parse().unwrap();
        assert!(!tend_e2e::pid_alive(pid), "{pid} survived the timeout");
        let o = run_with(&sh("echo $TEND_X"), &[("TEND_X", "rev é")], None, Duration::from_secs(5)).unwrap();
        assert_eq!(o.stdout, "rev é\n");
    }
}
