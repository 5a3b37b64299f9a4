//! What an image pull will download, asked of the registry before the pull
//! (the OCI distribution API's manifest): the disk-space preflight (SPEC §3,
//! 9) counts it before anything is pulled.
//!
//! What must hold: a registry's answer is untrusted (bounded read, sizes
//! added without overflow); a registry that cannot be asked (private, down,
//! a name that is no registry's) makes the size unknown, never an error of
//! the revision: the pull itself says what is wrong with it.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

/// The manifest media types tend reads, for `Accept`.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// The most read of one answer.
const MAX_ANSWER: u64 = 1 << 20;

/// An image reference, split: `registry`, `repository`, tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub reference: String,
}

/// Split `image` as Docker does: the first component is a registry when it
/// has a `.` or a `:` or is `localhost`; else Docker Hub (`library/` for
/// one-component names); no tag is `latest`.
pub fn parse(image: &str) -> Option<ImageRef> {
    let (name, reference) = match image.split_once('@') {
        Some((name, digest)) => (strip_tag(name), digest.to_owned()),
        None => match tag_of(image) {
            Some((name, tag)) => (name, tag.to_owned()),
            None => (image, "latest".to_owned()),
        },
    };
    if name.is_empty() {
        return None;
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (first.to_owned(), rest.to_owned())
        }
        _ if name.contains('/') => ("registry-1.docker.io".to_owned(), name.to_owned()),
        _ => ("registry-1.docker.io".to_owned(), format!("library/{name}")),
    };
    let registry = if registry == "docker.io" { "registry-1.docker.io".to_owned() } else { registry };
    (!repository.is_empty() && !reference.is_empty()).then_some(ImageRef { registry, repository, reference })
}

/// `name:tag` → (name, tag), where the `:` is after the last `/` (a port
/// is not a tag).
fn tag_of(image: &str) -> Option<(&str, &str)> {
    let after = image.rfind('/').map_or(0, |i| i + 1);
    image[after..].rfind(':').map(|c| (&image[..after + c], &image[after + c + 1..]))
}

fn strip_tag(name: &str) -> &str {
    tag_of(name).map_or(name, |(n, _)| n)
}

/// The architecture name registries use for this machine's.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// The bytes a pull of `image` downloads for this machine (its layers and
/// config, compressed, as the manifest says), or why it cannot be known.
pub fn download_size(image: &str, timeout: Duration) -> Result<u64, String> {
    let r = parse(image).ok_or_else(|| format!("{image:?} is not an image reference"))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let host = r.registry.rsplit_once(':').map_or(r.registry.as_str(), |(h, _)| h);
    // A registry on this machine is usually plain HTTP (Docker's default
    // insecure range is 127.0.0.0/8).
    let loopback = host == "localhost" || host == "::1" || host == "[::1]" || host.starts_with("127.");
    let mut last = String::new();
    for scheme in if loopback { &["https", "http"][..] } else { &["https"][..] } {
        let base = format!("{scheme}://{}/v2/{}/manifests/", r.registry, r.repository);
        let mut token = None;
        match size_at(&client, &base, &r, &mut token) {
            Ok(size) => return Ok(size),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn size_at(
    client: &reqwest::blocking::Client,
    base: &str,
    r: &ImageRef,
    token: &mut Option<String>,
) -> Result<u64, String> {
    let mut manifest = get(client, &format!("{base}{}", r.reference), r, token)?;
    if let Some(list) = manifest.get("manifests").and_then(Value::as_array) {
        let arch = architecture();
        let digest = list
            .iter()
            .find(|m| {
                let p = &m["platform"];
                p["os"] == "linux" && p["architecture"] == arch
            })
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| format!("the image has no linux/{arch} variant"))?
            .to_owned();
        manifest = get(client, &format!("{base}{digest}"), r, token)?;
    }
    let layers = manifest.get("layers").and_then(Value::as_array).ok_or("the manifest lists no layers")?;
    let sizes = layers.iter().chain(manifest.get("config")).map(|l| l["size"].as_u64().unwrap_or(0));
    Ok(sizes.fold(0u64, u64::saturating_add))
}

/// GET a manifest; on a 401 asking for a bearer token, get an anonymous one
/// from the realm it names and ask again.
fn get(
    client: &reqwest::blocking::Client,
    url: &str,
    r: &ImageRef,
    token: &mut Option<String>,
) -> Result<Value, String> {
    for _ in 0..2 {
        let mut req = client.get(url).header("Accept", ACCEPT);
        if let Some(t) = token.as_deref() {
            req = req.bearer_auth(t);
        }
        let resp = req.send().map_err(|e| format!("{}: {e}", r.registry))?;
        let status = resp.status();
        if status.as_u16() == 401 && token.is_none() {
            let challenge = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("");
            *token = Some(anonymous_token(client, challenge, r)?);
            continue;
        }
        if !status.is_success() {
            return Err(format!("{}: the manifest of {}: {status}", r.registry, r.repository));
        }
        return serde_json::from_slice(&bounded(resp)?).map_err(|e| format!("{}: the manifest: {e}", r.registry));
    }
    Err(format!("{}: the token was not accepted", r.registry))
}

/// `Bearer realm="…",service="…",scope="…"` → a token, anonymously.
fn anonymous_token(client: &reqwest::blocking::Client, challenge: &str, r: &ImageRef) -> Result<String, String> {
    let params = challenge.strip_prefix("Bearer ").ok_or_else(|| format!("{}: asks for credentials", r.registry))?;
    let field = |key: &str| -> Option<String> {
        let start = params.find(&format!("{key}=\""))? + key.len() + 2;
        let len = params[start..].find('"')?;
        Some(params[start..start + len].to_owned())
    };
    let realm = field("realm").ok_or_else(|| format!("{}: a token challenge without a realm", r.registry))?;
    let scope = field("scope").unwrap_or_else(|| format!("repository:{}:pull", r.repository));
    let mut query = vec![("scope", scope)];
    if let Some(service) = field("service") {
        query.push(("service", service));
    }
    let url =
        reqwest::Url::parse_with_params(&realm, &query).map_err(|e| format!("{}: token realm: {e}", r.registry))?;
    let resp = client.get(url).send().map_err(|e| format!("{}: token: {e}", r.registry))?;
    if !resp.status().is_success() {
        return Err(format!("{}: token: {}", r.registry, resp.status()));
    }
    let v: Value = serde_json::from_slice(&bounded(resp)?).map_err(|e| format!("{}: token: {e}", r.registry))?;
    v.get("token")
        .or_else(|| v.get("access_token"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: no token in the answer", r.registry))
}

fn bounded(resp: reqwest::blocking::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    resp.take(MAX_ANSWER).read_to_end(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(registry: &str, repository: &str, reference: &str) -> Option<ImageRef> {
        Some(ImageRef { registry: registry.into(), repository: repository.into(), reference: reference.into() })
    }

    #[test]
    fn references_are_split_as_docker_does() {
        assert_eq!(parse("busybox"), r("registry-1.docker.io", "library/busybox", "latest"));
        assert_eq!(parse("grafana/grafana:11.1"), r("registry-1.docker.io", "grafana/grafana", "11.1"));
        assert_eq!(parse("docker.io/library/redis:7"), r("registry-1.docker.io", "library/redis", "7"));
        assert_eq!(parse("127.0.0.1:5000/tend/big"), r("127.0.0.1:5000", "tend/big", "latest"));
        assert_eq!(parse("ghcr.io/org/app:1.2@sha256:ab"), r("ghcr.io", "org/app", "sha256:ab"));
        assert_eq!(parse("localhost/tend-test:1"), r("localhost", "tend-test", "1"));
        assert_eq!(parse("x:"), None);
        assert_eq!(parse(""), None);
    }
}
