//! The systemd notification protocol (`Type=notify`): `READY=1` once
//! last-known-good is enforced, `WATCHDOG=1` from the main loop while it turns,
//! `STATUS=` with phase and revision. A datagram to `$NOTIFY_SOCKET`; without
//! one (not under systemd) every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<Target>,
    /// Half of `$WATCHDOG_USEC`, when systemd asks for keep-alives.
    pub watchdog: Option<Duration>,
}

#[derive(Debug)]
enum Target {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From the environment systemd sets (read once, at daemon start).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").map(|s| {
            let bytes = s.into_encoded_bytes();
            match bytes.strip_prefix(b"@") {
                Some(name) => Target::Abstract(name.to_vec()),
                None => Target::Path(std::path::PathBuf::from(std::ffi::OsString::from_vec(bytes))),
            }
        });
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|us| *us > 0)
            // Half the period, never a zero-period timer (`WATCHDOG_USEC=1`)
            // and never past what an `Instant` can add.
            .map(|us| Duration::from_micros((us / 2).clamp(1_000, 86_400_000_000)));
        Notifier { target, watchdog }
    }

    /// Send one notification (`KEY=VALUE` lines); errors are logged, not fatal.
    pub fn send(&self, message: &str) {
        let Some(target) = &self.target else { return };
        let result = UnixDatagram::unbound().and_then(|sock| match target {
            Target::Path(p) => sock.send_to(message.as_bytes(), p).map(|_| ()),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(message.as_bytes(), &addr).map(|_| ())
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

use std::os::unix::ffi::OsStringExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { target: Some(Target::Path(path)), watchdog: None };
        n.send("READY=1\nSTATUS=ok");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");
        // Without a socket: nothing, no error.
        Notifier::default().send("READY=1");
    }
}
