//! MQTT on rumqttc: connection settings (TLS, credentials) for the daemon's
//! reporter (`daemon::reporter`) and the fleet CLI, and the commands a
//! gateway accepts.
//!
//! What must always hold:
//! - `availability` is `online` (retained) while connected; the Last Will makes
//!   it `offline` when the connection dies, and a clean stop publishes `offline`;
//! - events leave the outbox in `seq` order and are removed only when the broker
//!   acknowledged them (QoS 1); after a reconnection every unacknowledged event
//!   is sent again from the oldest;
//! - the sync loop never waits on the broker: this task only reads the outbox
//!   and a status channel, and publishes without blocking;
//! - a malformed command is answered with a `command` event, never a crash.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Mqtt;

/// The longest command payload read.
const MAX_COMMAND: usize = 4096;

/// Connection settings: the URL, TLS and credentials, for the agent and the fleet CLI.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub url: String,
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
}

impl Settings {
    pub fn from_config(m: &Mqtt) -> Option<Settings> {
        Some(Settings {
            url: m.url.clone()?,
            ca_file: m.ca_file.clone(),
            cert_file: m.cert_file.clone(),
            key_file: m.key_file.clone(),
            username: m.username.clone(),
            password_file: m.password_file.clone(),
        })
    }

    /// rumqttc options for `client_id`, with `will` as the Last Will.
    pub fn options(&self, client_id: &str, will: Option<(String, &str)>) -> Result<MqttOptions, String> {
        let (tls, rest) = if let Some(r) = self.url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = self.url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!("[mqtt].url {:?}: must start with mqtt:// or mqtts://", self.url));
        };
        let hostport = rest.trim_end_matches('/');
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("[mqtt].url {:?}: bad port", self.url))?),
            None => (hostport, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(format!("[mqtt].url {:?}: no host", self.url));
        }
        let mut o = MqttOptions::new(client_id, host, port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(true);
        o.set_max_packet_size(256 * 1024, 256 * 1024);
        if let Some((topic, payload)) = will {
            o.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
        }
        if let Some(user) = &self.username {
            let password = match &self.password_file {
                Some(p) => std::fs::read_to_string(p)
                    .map_err(|e| format!("[mqtt].password_file {}: cannot read: {e}", p.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
                None => String::new(),
            };
            o.set_credentials(user.clone(), password);
        }
        if tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(self.tls_config()?))));
        }
        Ok(o)
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        let (ca, what) = match &self.ca_file {
            Some(p) => (p.clone(), "[mqtt].ca_file"),
            None => (std::path::PathBuf::from("/etc/ssl/certs/ca-certificates.crt"), "system CA bundle"),
        };
        let certs = CertificateDer::pem_file_iter(&ca)
            .map_err(|e| format!("{what} {}: {e}", ca.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{what} {}: {e}", ca.display()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("{what} {}: no usable certificate", ca.display()));
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                let chain = CertificateDer::pem_file_iter(c)
                    .map_err(|e| format!("[mqtt].cert_file {}: {e}", c.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("[mqtt].cert_file {}: {e}", c.display()))?;
                // The key's content is never put in a message.
                let key = PrivateKeyDer::from_pem_file(k)
                    .map_err(|e| format!("[mqtt].key_file {}: not a PEM private key ({e})", k.display()))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| format!("[mqtt].cert_file/key_file: {e}"))
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err("[mqtt]: cert_file and key_file go together".into()),
        }
    }
}

/// A command from the fleet, parsed or not.
#[derive(Debug, Clone)]
pub struct Command {
    pub id: Option<Value>,
    pub cmd: Result<CommandKind, String>,
    /// Sent to every gateway of the fleet (`_all/cmd`): a sync starts after a
    /// random delay within `[source].announce_spread`.
    pub fleet_wide: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandKind {
    /// `now`: go past waves and windows (`tend sync --now`).
    Sync {
        now: bool,
    },
    Rollback {
        revision: Option<String>,
    },
    Suspend,
    Resume,
    /// `tend fleet logs` (SPEC §4): the whole request, checked and answered
    /// by the reporter (`report::logs`), never by the sync loop.
    Logs(Value),
}

impl CommandKind {
    pub fn name(&self) -> &'static str {
        match self {
            CommandKind::Sync { .. } => "sync",
            CommandKind::Rollback { .. } => "rollback",
            CommandKind::Suspend => "suspend",
            CommandKind::Resume => "resume",
            CommandKind::Logs(_) => "logs",
        }
    }
}

/// Parse a command payload; never panics on hostile input.
pub fn parse_command(payload: &[u8]) -> Command {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        cmd: String,
        // Read above from the raw value; named here so deny_unknown_fields accepts it.
        #[serde(default)]
        #[allow(dead_code)]
        id: Option<Value>,
        #[serde(default)]
        revision: Option<String>,
        #[serde(default)]
        now: Option<bool>,
    }
    if payload.len() > MAX_COMMAND {
        return Command { id: None, cmd: Err(format!("command larger than {MAX_COMMAND} bytes")), fleet_wide: false };
    }
    // Recover the id even from a command that is otherwise wrong, so the error
    // event can echo it.
    let value = serde_json::from_slice::<Value>(payload).ok();
    let id = value.as_ref().and_then(|v| v.get("id").cloned()).filter(|v| v.is_string() || v.is_number());
    // Its fields are checked where it is answered, in the answer.
    if let Some(v) = value.filter(|v| v.get("cmd").and_then(Value::as_str) == Some("logs")) {
        return Command { id, cmd: Ok(CommandKind::Logs(v)), fleet_wide: false };
    }
    let raw: Raw = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return Command { id, cmd: Err(format!("malformed command: {e}")), fleet_wide: false },
    };
    let now = raw.now;
    let cmd = match (raw.cmd.as_str(), raw.revision) {
        ("sync", None) => Ok(CommandKind::Sync { now: now.unwrap_or(false) }),
        (c, _) if c != "sync" && now.is_some() => {
            Err(format!("command {:?} takes no \"now\"", c.chars().take(40).collect::<String>()))
        }
        ("rollback", revision) => Ok(CommandKind::Rollback { revision }),
        ("suspend", None) => Ok(CommandKind::Suspend),
        ("resume", None) => Ok(CommandKind::Resume),
        (c @ ("sync" | "suspend" | "resume"), Some(_)) => Err(format!("command {c:?} takes no revision")),
        (other, _) => Err(format!(
            "unknown command {:?} (sync, rollback, suspend, resume, logs)",
            other.chars().take(40).collect::<String>()
        )),
    };
    Command { id, cmd, fleet_wide: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_parse_and_hostile_payloads_do_not_panic() {
        let c = parse_command(br#"{"cmd":"sync","id":"abc"}"#);
        assert_eq!(c.cmd, Ok(CommandKind::Sync { now: false }));
        assert_eq!(parse_command(br#"{"cmd":"sync","now":true}"#).cmd, Ok(CommandKind::Sync { now: true }));
        assert!(parse_command(br#"{"cmd":"resume","now":true}"#).cmd.is_err());
        assert!(parse_command(br#"{"cmd":"sync","now":"yes"}"#).cmd.is_err());
        assert_eq!(c.id, Some(json!("abc")));
        let c = parse_command(br#"{"cmd":"rollback","revision":"1234abcd","id":7}"#);
        assert_eq!(c.cmd, Ok(CommandKind::Rollback { revision: Some("1234abcd".into()) }));
        assert_eq!(c.id, Some(json!(7)));
        for bad in [
            &b"not json"[..],
            br#"{"cmd":"format"}"#,
            br#"{"cmd":"sync","extra":1,"id":"x"}"#,
            br#"{"cmd":5}"#,
            br#"[]"#,
            &[0xff, 0xfe, 0x00][..],
            br#"{"cmd":"sync","revision":"abc"}"#,
        ] {
            assert!(parse_command(bad).cmd.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_command(br#"{"cmd":"sync","extra":1,"id":"x"}"#).id, Some(json!("x")));
        assert!(parse_command(&vec![b' '; MAX_COMMAND + 1]).cmd.unwrap_err().contains("larger"));
        // A logs command is handed on whole, whatever its fields: the answer says what is wrong.
        let c = parse_command(br#"{"cmd":"logs","unit":"a.service","lines":1e9,"extra":1,"id":"l-1"}"#);
        assert!(matches!(&c.cmd, Ok(CommandKind::Logs(v)) if v["lines"] == json!(1e9) && v["extra"] == 1), "{c:?}");
        assert_eq!(c.id, Some(json!("l-1")));
    }

    #[test]
    fn urls_and_settings() {
        let s = Settings { url: "mqtt://127.0.0.1:1884".into(), ..Default::default() };
        let o = s.options("c", None).unwrap();
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1884));
        let s = Settings {
            url: "mqtts://broker".into(),
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = s.options("c", None).unwrap_err();
        assert!(e.contains("[mqtt].ca_file /nonexistent/ca.pem"), "{e}");
        let s = Settings { url: "http://x".into(), ..Default::default() };
        assert!(s.options("c", None).is_err());
    }
}
