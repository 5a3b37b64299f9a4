//! Why a fetch failed, in words an operator can act on (issue 17): judged by
//! the typed causes of the error — I/O error kinds, the HTTP status in a
//! `reqwest::Error`, rustls' certificate errors, whether the server asked for
//! credentials — never by its text.

use std::error::Error;

use rustls::CertificateError;

/// What the fetch knew besides its error.
#[derive(Debug, Default, Clone)]
pub struct Context {
    /// `[source].token_file` is set (credentials were offered).
    pub has_token: bool,
    /// The server asked for credentials (HTTP 401).
    pub asked_for_credentials: bool,
    /// The server refused the credentials offered.
    pub credentials_rejected: bool,
}

/// Every cause of `e`, `e` first, including what an `io::Error` wraps (its
/// `source()` skips the wrapped error itself). Bounded.
fn causes<'a>(e: &'a (dyn Error + 'static)) -> Vec<&'a (dyn Error + 'static)> {
    let mut out = Vec::new();
    let mut todo = vec![e];
    while let Some(c) = todo.pop() {
        if out.len() >= 64 {
            break;
        }
        out.push(c);
        if let Some(next) = c.source() {
            todo.push(next);
        }
        if let Some(inner) = c.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            todo.push(inner);
        }
    }
    out
}

/// What happened and what to do, for a failed fetch of `url`; `None` when
/// the causes say nothing more than the error itself.
pub fn explain(e: &(dyn Error + 'static), url: &str, ctx: &Context) -> Option<String> {
    let causes = causes(e);
    let host = host_of(url);
    let io_kind = |k: std::io::ErrorKind| {
        causes.iter().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|i| i.kind() == k))
    };
    // gix's HTTP transport reports a 401 as PermissionDenied (after the
    // credentials callback, if it offered any).
    let http = url.starts_with("http://") || url.starts_with("https://");
    let unauthorized = http && io_kind(std::io::ErrorKind::PermissionDenied);
    if ctx.asked_for_credentials && ctx.has_token && url.starts_with("http://") {
        return Some("the server requires authentication, and tend does not send [source].token_file over plain http:// (it would travel in clear text): use the https:// URL".into());
    }
    if ctx.credentials_rejected || (unauthorized && ctx.has_token) {
        return Some("the server refused the credentials in [source].token_file (HTTP 401): check the token, its expiry and its read access to the repository".into());
    }
    if ctx.asked_for_credentials || unauthorized {
        return Some(if ctx.has_token {
            "the server asks for credentials (HTTP 401) and [source].token_file gave none it accepted: check the file"
                .into()
        } else {
            "the server requires authentication (HTTP 401): put a token with read access in a file (mode 0600) and set [source].token_file".into()
        });
    }
    if let Some(status) =
        causes.iter().find_map(|c| c.downcast_ref::<reqwest::Error>().and_then(reqwest::Error::status))
    {
        let code = status.as_u16();
        return Some(match code {
            403 => if ctx.has_token {
                "access denied (HTTP 403): the token in [source].token_file has no read access to this repository".into()
            } else {
                "access denied (HTTP 403): the server wants credentials with read access: set [source].token_file".into()
            },
            404 => "repository not found (HTTP 404): check the path in [source].url (a private repository also answers 404 to a token without access to it)".into(),
            500..=599 => format!("the Git server failed (HTTP {code}); tend retries after a random backoff"),
            _ => format!("the Git server refused the request (HTTP {code}): check [source].url"),
        });
    }
    if let Some(tls) = causes.iter().find_map(|c| c.downcast_ref::<rustls::Error>()) {
        return Some(match tls {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                "TLS: the server's certificate is not signed by a CA this gateway trusts: put your CA's PEM certificate in a file and set [source].ca_file".into()
            }
            rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
                "TLS: the server's certificate has expired: renew it on the server (or, if it is new, check this gateway's clock: timedatectl)".into()
            }
            rustls::Error::InvalidCertificate(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
                "TLS: the server's certificate is not valid yet: check this gateway's clock (timedatectl)".into()
            }
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "TLS: the server's certificate is not valid for {:?}: use in [source].url a host name the certificate was issued for",
                host.as_deref().unwrap_or("")
            ),
            other => format!("TLS: {other}"),
        });
    }
    let local = url.starts_with("file://") || url.starts_with('/') || url.starts_with('.');
    if io_kind(std::io::ErrorKind::NotFound) && local {
        return Some("git is not installed on this gateway: a file:// or path source runs `git upload-pack` (apt install git), or serve the repository over git://, http(s):// or ssh://".into());
    }
    if io_kind(std::io::ErrorKind::NotFound) && url.starts_with("ssh://") {
        return Some(
            "ssh is not installed on this gateway: an ssh:// source runs ssh (apt install openssh-client)".into(),
        );
    }
    if io_kind(std::io::ErrorKind::ConnectionRefused) {
        return Some(format!(
            "connection refused by {}: is the Git server running, and is the port in [source].url right?",
            host.as_deref().unwrap_or("the server")
        ));
    }
    let connect_failed =
        causes.iter().any(|c| c.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_connect));
    if connect_failed
        && let Some(h) = &host
        && !resolves(h)
    {
        return Some(format!(
            "cannot resolve the host name {h:?}: check it in [source].url, and this gateway's DNS (/etc/resolv.conf)"
        ));
    }
    if causes.iter().any(|c| c.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_timeout)) {
        return Some(
            "the server did not answer in time (a network problem or an overloaded server); tend retries".into(),
        );
    }
    if dropped_by_server(&causes) {
        return Some(
            "the server closed the connection (at its limit of clients? tend retries after a random backoff)".into(),
        );
    }
    None
}

/// Whether the server closed the connection under the request (as `git
/// daemon` does past `--max-connections`, or a proxy at its limit).
fn dropped_by_server(causes: &[&(dyn Error + 'static)]) -> bool {
    use std::io::ErrorKind::*;
    causes.iter().any(|s| {
        s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.kind(), BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof))
            || s.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_incomplete_message)
    })
}

/// The host of `scheme://[user@]host[:port]/…`.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host =
        if let Some(v6) = hostport.strip_prefix('[') { v6.split(']').next()? } else { hostport.split(':').next()? };
    (!host.is_empty()).then(|| host.to_owned())
}

fn resolves(host: &str) -> bool {
    use std::net::ToSocketAddrs;
    (host, 443).to_socket_addrs().is_ok_and(|mut a| a.next().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("https://bob:x@git.example.com:8443/a.git").as_deref(), Some("git.example.com"));
        assert_eq!(host_of("git://[::1]:9418/a").as_deref(), Some("::1"));
        assert_eq!(host_of("/srv/git"), None);
    }
}
