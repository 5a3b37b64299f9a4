//! The local control API: a unix socket (mode 0600) through which the CLI asks
//! a running daemon to sync, roll back, or report (sled allows one process, so
//! while `tend run` holds the store, the CLI goes through here).
//!
//! Protocol: one JSON request line, one JSON response line, then the server
//! closes. Requests are small and bounded; a malformed one gets an error
//! response, never a crash.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest request line the server reads.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Sync {
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        retry: bool,
        #[serde(default)]
        now: bool,
    },
    Status,
    History,
    Rollback {
        #[serde(default)]
        revision: Option<String>,
    },
    /// Import a `.tend` file (SPEC §9) at `path`, as the daemon sees it.
    Import {
        path: String,
        #[serde(default)]
        allow_downgrade: bool,
    },
    /// This gateway's report for a stick (SPEC §9): status, recent history,
    /// undelivered events.
    Report,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub result: serde_json::Value,
    #[serde(default)]
    pub error: Option<String>,
    /// The exit code the CLI should end with.
    #[serde(default)]
    pub exit: u8,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Response {
        Response { ok: true, result, error: None, exit: 0 }
    }
    pub fn err(error: impl ToString, exit: u8) -> Response {
        Response { ok: false, result: serde_json::Value::Null, error: Some(error.to_string()), exit }
    }
}

/// Why the CLI could not talk to a daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens: go direct.
    #[error("no daemon answers on {0}")]
    NotRunning(String),
    #[error("control socket {path}: {reason}")]
    Failed { path: String, reason: String },
}

/// Send one request to the daemon at `socket`. `timeout` bounds the wait for
/// the answer (a sync can take the whole health window).
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let shown = socket.display().to_string();
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Err(ClientError::NotRunning(shown));
        }
        Err(e) => return Err(ClientError::Failed { path: shown, reason: e.to_string() }),
    };
    let fail = |e: std::io::Error| ClientError::Failed { path: shown.clone(), reason: e.to_string() };
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    let mut line = serde_json::to_vec(req).expect("requests serialise");
    line.push(b'\n');
    stream.write_all(&line).map_err(fail)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(fail)?;
    serde_json::from_str(&answer)
        .map_err(|e| ClientError::Failed { path: shown.clone(), reason: format!("bad answer from the daemon: {e}") })
}

/// Parse a request line (bounded), for the server.
pub fn parse_request(line: &str) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err("request too large".into());
    }
    serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_garbage_is_an_error() {
        for r in [
            Request::Sync { dry_run: true, retry: false, now: false },
            Request::Status,
            Request::History,
            Request::Rollback { revision: Some("abcd".into()) },
        ] {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(&text).unwrap(), r);
        }
        assert_eq!(
            parse_request(r#"{"cmd":"sync"}"#).unwrap(),
            Request::Sync { dry_run: false, retry: false, now: false }
        );
        assert!(parse_request("not json").is_err());
        assert!(parse_request(r#"{"cmd":"format_disk"}"#).is_err());
        assert!(parse_request(r#"{"cmd":"sync","evil":1}"#).is_err());
        assert!(parse_request(&"x".repeat(MAX_REQUEST + 1)).unwrap_err().contains("too large"));
    }
}
