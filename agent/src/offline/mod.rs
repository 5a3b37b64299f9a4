//! Sites without network (SPEC §9): the `.tend` file a technician carries on
//! a USB stick, written by `tend fleet export` and read by `tend import`.
//!
//! The file is an uncompressed tar (so each part can be read in place, and
//! any tar tool lists it) of, in this order:
//!
//! - `manifest.json`: [`Manifest`] — the commit, branch, devices, images by
//!   id, the time, and the SHA-256 and size of every other part;
//! - `manifest.json.sig`: an SSH signature of `manifest.json`'s exact bytes
//!   (`ssh-keygen -Y sign -n tend-export`);
//! - `repo.bundle`: a Git bundle (git's own format, v2) of the branch tip,
//!   thin when the export was made `--since` a commit;
//! - `images.tar`: the container images the exported devices' bundles name,
//!   as the Docker Engine API's `GET /images/get` writes them (absent when
//!   they name none).
//!
//! Nothing of a file is used before all of it is verified: the signature of
//! the manifest first, then every part against its hash and size. A
//! truncated, corrupted or tampered file is refused whole.

#[cfg(feature = "fleet-serve")]
pub mod export;
pub mod import;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// What `manifest.json` says its format is.
pub const FORMAT: &str = "tend-export/1";
/// The namespace of the manifest's SSH signature.
pub const NAMESPACE: &str = "tend-export";
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.sig";
pub const REPO: &str = "repo.bundle";
pub const IMAGES: &str = "images.tar";

/// The most a manifest may be (a fleet of 100,000 devices names them in
/// about 2 MiB).
const MAX_MANIFEST: u64 = 8 << 20;
/// The most a signature may be (an ed25519 one is about 300 bytes).
const MAX_SIGNATURE: u64 = 64 << 10;

/// The manifest of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub fleet: String,
    pub branch: String,
    /// The branch's tip, as exported (full hex id).
    pub commit: String,
    /// The commit the bundle is thin from (`--since`): a gateway must have it.
    #[serde(default)]
    pub since: Option<String>,
    /// The device ids whose bundles were exported; for a bundle the fleet
    /// shares, the glob of the ids it is for (`*`: every gateway).
    pub devices: Vec<String>,
    #[serde(default)]
    pub images: Vec<Image>,
    /// When the export was made (RFC 3339).
    pub created: String,
    /// Every part but the manifest and its signature.
    pub parts: BTreeMap<String, Part>,
}

/// A container image in `images.tar`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// As the bundles name it.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Its id (`sha256:` and the digest of its config), as the runtime
    /// reports it once loaded.
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub sha256: Sha,
    pub size: u64,
}

/// A SHA-256, as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sha(pub [u8; 32]);

impl std::fmt::Display for Sha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Serialize for Sha {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sha, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("{s:?} is not a SHA-256 (64 hex digits)"));
        if s.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        Ok(Sha(out))
    }
}

/// Hashes what passes through it.
pub struct Hashing<R> {
    inner: R,
    hash: sha2::Sha256,
    pub read: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Hashing<R> {
        Hashing { inner, hash: sha2::Sha256::new(), read: 0 }
    }
    pub fn finish(self) -> Sha {
        Sha(self.hash.finalize().into())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// A verified export: its manifest, who signed it, and where each part
/// lies in the file.
#[derive(Debug, Clone)]
pub struct Opened {
    pub manifest: Manifest,
    /// The principals of the key that signed it (`None`: unsigned, allowed
    /// by `[import].require_signature = false`).
    pub signer: Option<String>,
    /// Part name → (offset in the file, size).
    at: BTreeMap<String, (u64, u64)>,
}

impl Opened {
    /// Where the part `name` lies in the file: (offset, size).
    pub fn span(&self, name: &str) -> Option<(u64, u64)> {
        self.at.get(name).copied()
    }
}

/// How a file is checked: the keys trusted and whether a signature is
/// required.
pub struct Trust<'a> {
    pub signers: Option<&'a crate::trust::AllowedSigners>,
    pub require_signature: bool,
}

/// Read and verify the whole file: the manifest and its signature, then
/// every part against the manifest. `Err`: why it is refused, in one line.
pub fn open<F: Read + Seek>(file: &mut F, trust: &Trust<'_>) -> Result<Opened, String> {
    file.seek(SeekFrom::Start(0)).map_err(|e| format!("cannot read: {e}"))?;
    let mut manifest_bytes: Option<Vec<u8>> = None;
    let mut signature: Option<String> = None;
    let mut found: BTreeMap<String, (u64, u64, Sha)> = BTreeMap::new();
    let mut archive = tar::Archive::new(&mut *file);
    let entries = archive.entries().map_err(|e| format!("not a tend export (a tar file): {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("truncated or corrupt: {e}"))?;
        let path = entry.path().map_err(|e| format!("truncated or corrupt: {e}"))?.to_string_lossy().into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(format!("{path}: not a regular file in the export"));
        }
        let size = entry.size();
        let offset = entry.raw_file_position();
        let twice = found.contains_key(&path)
            || (path == MANIFEST && manifest_bytes.is_some())
            || (path == SIGNATURE && signature.is_some());
        if twice {
            return Err(format!("{path}: appears twice in the export"));
        }
        match path.as_str() {
            MANIFEST => manifest_bytes = Some(read_small(entry, MAX_MANIFEST, &path)?),
            SIGNATURE => {
                let bytes = read_small(entry, MAX_SIGNATURE, &path)?;
                signature = Some(String::from_utf8(bytes).map_err(|_| format!("{path}: not text"))?);
            }
            REPO | IMAGES => {
                let mut h = Hashing::new(entry);
                std::io::copy(&mut h, &mut std::io::sink())
                    .map_err(|e| format!("{path}: truncated or corrupt: {e}"))?;
                if h.read != size {
                    return Err(format!("{path}: truncated: {} of {size} bytes", h.read));
                }
                found.insert(path, (offset, size, h.finish()));
            }
            other => return Err(format!("{other}: not a part of a tend export")),
        }
    }
    let manifest_bytes = manifest_bytes.ok_or_else(|| format!("no {MANIFEST}: not a tend export, or truncated"))?;
    // The signature before anything the manifest says is believed.
    let signer = match (signature, trust.signers) {
        (Some(sig), Some(signers)) => {
            let created = serde_json::from_slice::<serde_json::Value>(&manifest_bytes)
                .ok()
                .and_then(|v| v["created"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()))
                .map(|t| t.as_second());
            let who = signers
                .verify_detached(NAMESPACE, &manifest_bytes, &sig, created)
                .map_err(|e| format!("{MANIFEST} {e}"))?;
            Some(who)
        }
        (None, _) if trust.require_signature => {
            return Err(format!(
                "unsigned ({SIGNATURE} is missing): [import].require_signature is on; sign exports with `tend fleet export --key`"
            ));
        }
        (Some(_), None) if trust.require_signature => {
            return Err(
                "signed, but this gateway has no [source].allowed_signers to check the signature against".into()
            );
        }
        _ => None,
    };
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| format!("{MANIFEST}: {e}"))?;
    if manifest.format != FORMAT {
        return Err(format!("{MANIFEST}: format {:?}, this tend reads {FORMAT:?}", manifest.format));
    }
    if !crate::report::announce::is_commit_id(&manifest.commit) {
        return Err(format!("{MANIFEST}: commit {:?} is not a full commit id", manifest.commit));
    }
    for img in &manifest.images {
        let ok_ref = !img.reference.is_empty()
            && img.reference.len() <= 255
            && !img.reference.contains("..")
            && img.reference.chars().all(|c| c.is_ascii_alphanumeric() || "._/:@-".contains(c));
        if !ok_ref {
            return Err(format!("{MANIFEST}: image {:?} is not an image reference", model_clean(&img.reference)));
        }
        let ok_id =
            img.id.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok_id {
            return Err(format!(
                "{MANIFEST}: image {}: id {:?} is not sha256:<64 hex digits>",
                img.reference,
                model_clean(&img.id)
            ));
        }
    }
    for (name, part) in &manifest.parts {
        let Some((_, size, sha)) = found.get(name) else {
            return Err(format!("{name}: named by {MANIFEST} but not in the file (truncated?)"));
        };
        if *size != part.size || *sha != part.sha256 {
            return Err(format!(
                "{name}: does not match {MANIFEST} (sha256 {sha}, {size} bytes; expected {}, {} bytes): the file is corrupt or was altered",
                part.sha256, part.size
            ));
        }
    }
    if let Some(extra) = found.keys().find(|k| !manifest.parts.contains_key(*k)) {
        return Err(format!("{extra}: not named by {MANIFEST}"));
    }
    if !found.contains_key(REPO) {
        return Err(format!("no {REPO} in the export"));
    }
    if manifest.images.is_empty() == found.contains_key(IMAGES) {
        return Err(format!("{MANIFEST} and {IMAGES} disagree on whether there are images"));
    }
    let at = found.into_iter().map(|(k, (o, s, _))| (k, (o, s))).collect();
    Ok(Opened { manifest, signer, at })
}

fn read_small(entry: impl Read, max: u64, path: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    entry.take(max + 1).read_to_end(&mut out).map_err(|e| format!("{path}: truncated or corrupt: {e}"))?;
    if out.len() as u64 > max {
        return Err(format!("{path}: larger than {} bytes", max));
    }
    Ok(out)
}

/// The short form of a file's name for messages (its last component).
pub fn shown(path: &std::path::Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The regular files (not symlinks) in `dir` whose names end in `.EXT`,
/// sorted: the exports on a stick, the reports brought back.
pub fn files_ending(dir: &std::path::Path, ext: &str) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    Ok(files)
}

/// Text from a file for a message: control characters replaced, at most 80
/// characters.
fn model_clean(s: &str) -> String {
    s.chars().take(80).map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(images: &str, parts: &str) -> String {
        format!(
            r#"{{"format":"tend-export/1","fleet":"f","branch":"main","commit":"{c}","devices":["*"],"images":[{images}],"created":"2026-12-04T00:00:00Z","parts":{{{parts}}}}}"#,
            c = "a".repeat(40)
        )
    }

    fn part(data: &[u8]) -> String {
        let mut h = Hashing::new(data);
        std::io::copy(&mut h, &mut std::io::sink()).unwrap();
        format!(r#"{{"sha256":"{}","size":{}}}"#, h.finish(), data.len())
    }

    /// Members of a tar: (name, bytes; `None`: a symlink).
    type Members<'a> = Vec<(&'a str, Option<&'a [u8]>)>;

    /// A tar of `members` (name, bytes); a symlink for a `None`.
    fn tar_of(members: &[(&str, Option<&[u8]>)]) -> std::io::Cursor<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            match data {
                Some(d) => {
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, name, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, name, "/etc/shadow").unwrap();
                }
            }
        }
        std::io::Cursor::new(b.into_inner().unwrap())
    }

    fn refused(members: &[(&str, Option<&[u8]>)]) -> String {
        let trust = Trust { signers: None, require_signature: false };
        open(&mut tar_of(members), &trust).expect_err("refused")
    }

    #[test]
    fn hostile_files_are_refused_with_a_reason() {
        let repo = b"# v2 git bundle\n".as_slice();
        let good = manifest("", &format!(r#""repo.bundle":{}"#, part(repo)));
        let trust = Trust { signers: None, require_signature: false };
        let ok = open(&mut tar_of(&[(MANIFEST, Some(good.as_bytes())), (REPO, Some(repo))]), &trust).unwrap();
        assert_eq!(ok.span(REPO).map(|s| s.1), Some(repo.len() as u64));
        let required = Trust { signers: None, require_signature: true };
        let e = open(&mut tar_of(&[(MANIFEST, Some(good.as_bytes())), (REPO, Some(repo))]), &required).unwrap_err();
        assert!(e.contains("unsigned"), "{e}");

        let cases: Vec<(Members<'_>, &str)> = vec![
            (vec![], "no manifest.json"),
            (vec![(MANIFEST, Some(good.as_bytes())), (MANIFEST, Some(good.as_bytes()))], "appears twice"),
            (vec![(MANIFEST, Some(good.as_bytes())), (REPO, Some(repo)), ("extra", Some(b"x"))], "not a part"),
            (vec![(MANIFEST, Some(good.as_bytes())), (REPO, None)], "not a regular file"),
            (vec![(MANIFEST, Some(good.as_bytes()))], "not in the file"),
            (vec![(MANIFEST, Some(good.as_bytes())), (REPO, Some(b"# v2 git bundlX\n"))], "does not match"),
            (vec![(MANIFEST, Some(b"{"))], "manifest.json"),
            (vec![(MANIFEST, Some(&[b' '; (8 << 20) + 1]))], "larger than"),
        ];
        for (members, why) in cases {
            let e = refused(&members);
            assert!(e.contains(why), "{why:?}: {e}");
        }
        let bad_ref = manifest(
            &format!(r#"{{"ref":"../containers/x","id":"sha256:{}"}}"#, "0".repeat(64)),
            &format!(r#""repo.bundle":{}"#, part(repo)),
        );
        let e = refused(&[(MANIFEST, Some(bad_ref.as_bytes())), (REPO, Some(repo))]);
        assert!(e.contains("not an image reference"), "{e}");
        let bad_id = manifest(r#"{"ref":"busybox","id":"sha256:zz"}"#, &format!(r#""repo.bundle":{}"#, part(repo)));
        let e = refused(&[(MANIFEST, Some(bad_id.as_bytes())), (REPO, Some(repo))]);
        assert!(e.contains("is not sha256"), "{e}");
        let e =
            refused(&[(MANIFEST, Some(good.replace("tend-export/1", "tend-export/9").as_bytes())), (REPO, Some(repo))]);
        assert!(e.contains("format"), "{e}");
        let mut not_tar = std::io::Cursor::new(b"hello, this is not a tar file at all".to_vec());
        assert!(open(&mut not_tar, &trust).is_err());
    }
}
