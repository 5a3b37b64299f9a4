//! The `tend` binary: parse the command line, set up logging, run, and map the
//! outcome to an exit code. Nothing below `main` exits the process.

use std::process::ExitCode;

use clap::Parser;
use tend::cli::{Cli, LogFormat};

fn main() -> ExitCode {
    // Before any thread starts: one malloc arena (glibc only; see tend-sys).
    tend_sys::one_arena();
    let cli = Cli::parse();
    if matches!(cli.command, tend::cli::Command::Run) {
        // The daemon lives long: glibc's per-thread caches would keep freed
        // memory it cannot give back (tend-sys). Re-executes once if needed.
        tend_sys::without_thread_caches();
    }
    init_logging(&cli);
    match tend::cli::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("tend: error: {:#}", failure.error());
            ExitCode::from(failure.exit_code())
        }
    }
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::filter::Targets;
    // One-shot commands print their result on stdout and keep stderr for
    // warnings; -v shows each step.
    // The daemon says each change of state at its default level (its
    // journal is where an operator looks first); -v adds each step.
    let daemon = usize::from(matches!(cli.command, tend::cli::Command::Run));
    let default = match cli.verbose as usize + daemon {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // The one place the environment shapes logging.
    // `Targets` takes the same `tend=debug,warn` syntax as RUST_LOG without
    // pulling a regex engine into the binary.
    let filter: Targets = std::env::var("TEND_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| default.parse().expect("a level parses"));
    use tracing_subscriber::prelude::*;
    let registry = tracing_subscriber::registry().with(filter);
    match cli.log_format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_current_span(true).with_writer(std::io::stderr))
            .init(),
        // Under systemd the journal stamps the time and reads the priority
        // from a `<N>` prefix (so `journalctl -p err` finds errors). One
        // formatter type for both (a second would be a second copy of the
        // formatting code in a binary that must stay under 8 MiB on ARM).
        LogFormat::Human => {
            let journal = to_journal();
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .event_format(Prefixed {
                            journal,
                            inner: tracing_subscriber::fmt::format().without_time().with_target(false),
                        })
                        .with_writer(std::io::stderr),
                )
                .init()
        }
    }
}

/// Whether stderr is the journal: systemd sets `JOURNAL_STREAM` to its
/// `device:inode`, which must still be stderr's (not a redirection).
fn to_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else { return false };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(st) => dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino),
        Err(_) => false,
    }
}

/// In front of each line: the syslog priority of its level for the journal
/// (sd-daemon(3)), else the time.
struct Prefixed<F> {
    journal: bool,
    inner: F,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Prefixed<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if self.journal {
            let priority = match *event.metadata().level() {
                tracing::Level::ERROR => 3,
                tracing::Level::WARN => 4,
                tracing::Level::INFO => 6,
                _ => 7,
            };
            write!(writer, "<{priority}>")?;
        } else {
            use tracing_subscriber::fmt::time::FormatTime;
            tracing_subscriber::fmt::time::SystemTime.format_time(&mut writer)?;
            writer.write_char(' ')?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}
