//! The `tend` binary: parse the command line, set up logging, run, and map the
//! outcome to an exit code. Nothing below `main` exits the process.

use std::process::ExitCode;

use clap::Parser;
use tend::cli::{Cli, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    use tracing_subscriber::EnvFilter;
    // One-shot commands print their result on stdout and keep stderr for
    // warnings; -v shows each step.
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // The one place the environment shapes logging.
    let filter = EnvFilter::try_from_env("TEND_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Human => builder.with_target(false).init(),
    }
}
