//! Commit signatures (SPEC §1 `source.allowed_signers`, §3 step 2): the commit
//! to apply must carry a valid SSH signature (`gpg.format = ssh`, namespace
//! `git`) by a key listed in an allowed-signers file, in the format of
//! `ssh-keygen -Y verify` (ALLOWED SIGNERS in ssh-keygen(1)).
//!
//! Verified in Rust with the RustCrypto `ssh-key` crate: no `ssh-keygen`, no
//! gpg, nothing from the repository or the environment decides the outcome.
//! Like git, the signature time is the committer time: `valid-after` and
//! `valid-before` are checked against it.

use std::path::Path;

use ssh_key::{PublicKey, SshSig};

/// The namespace git signs commits in.
const NAMESPACE: &str = "git";

/// One line of an allowed-signers file.
#[derive(Debug, Clone)]
struct Entry {
    principals: String,
    namespaces: Option<Vec<String>>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
    key: PublicKey,
    line: usize,
}

/// The keys whose signatures are trusted, from `source.allowed_signers`.
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    file: String,
    entries: Vec<Entry>,
}

impl AllowedSigners {
    /// Read and parse the file; errors name it, the line and the reason.
    pub fn load(path: &Path) -> Result<AllowedSigners, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("[source].allowed_signers {}: cannot read: {e}", path.display()))?;
        let text = String::from_utf8(text)
            .map_err(|_| format!("[source].allowed_signers {}: not valid UTF-8", path.display()))?;
        AllowedSigners::parse(&text, &path.display().to_string()).map_err(|e| format!("[source].allowed_signers {e}"))
    }

    pub fn parse(text: &str, file: &str) -> Result<AllowedSigners, String> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = parse_line(line, i + 1).map_err(|e| format!("{file}:{}: {e}", i + 1))?;
            entries.push(entry);
        }
        if entries.is_empty() {
            return Err(format!("{file}: lists no keys, so no commit could ever be applied"));
        }
        Ok(AllowedSigners { file: file.to_owned(), entries })
    }

    /// Verify the raw commit object `raw` of `commit`: Ok(principals of the
    /// signer) or the reason it is refused.
    pub fn verify_commit(&self, raw: &[u8]) -> Result<String, String> {
        let (payload, armored) = split_signed(raw).ok_or("is not signed")?;
        if armored.starts_with("-----BEGIN PGP") {
            return Err("carries a PGP signature; only SSH signatures are accepted".into());
        }
        if armored.starts_with("-----BEGIN SIGNED MESSAGE") {
            return Err("carries an X.509 signature; only SSH signatures are accepted".into());
        }
        self.verify(NAMESPACE, &payload, &armored, committer_time(&payload), "commit")
    }

    /// Verify a detached SSH signature (`ssh-keygen -Y sign -n NAMESPACE`)
    /// of `message`: Ok(principals of the signer) or the reason it is
    /// refused. `time` (Unix seconds) is checked against the keys'
    /// `valid-after` and `valid-before`.
    pub fn verify_detached(
        &self,
        namespace: &str,
        message: &[u8],
        armored: &str,
        time: Option<i64>,
    ) -> Result<String, String> {
        self.verify(namespace, message, armored, time, "export")
    }

    fn verify(
        &self,
        namespace: &str,
        payload: &[u8],
        armored: &str,
        time: Option<i64>,
        what: &str,
    ) -> Result<String, String> {
        let sig = SshSig::from_pem(armored.as_bytes()).map_err(|e| format!("has a malformed SSH signature ({e})"))?;
        if sig.namespace() != namespace {
            return Err(format!("is signed for namespace {:?}, not {namespace:?}", sig.namespace()));
        }
        let fingerprint = sig.public_key().fingerprint(Default::default());
        let listed: Vec<&Entry> = self.entries.iter().filter(|e| e.key.key_data() == sig.public_key()).collect();
        if listed.is_empty() {
            return Err(format!("is signed by key {fingerprint}, which is not in {}", self.file));
        }
        let mut why_not = Vec::new();
        for e in listed {
            if let Some(ns) = &e.namespaces
                && !ns.iter().any(|p| glob_match(p, namespace))
            {
                why_not.push(format!("{}:{}: not allowed for namespace {namespace:?}", self.file, e.line));
                continue;
            }
            if let (Some(after), Some(t)) = (e.valid_after, time)
                && t < after
            {
                why_not.push(format!("{}:{}: the key is valid only after the {what}'s time", self.file, e.line));
                continue;
            }
            if let (Some(before), Some(t)) = (e.valid_before, time)
                && t >= before
            {
                why_not.push(format!("{}:{}: the key expired before the {what}'s time", self.file, e.line));
                continue;
            }
            return match e.key.verify(namespace, payload, &sig) {
                Ok(()) => Ok(e.principals.clone()),
                Err(_) => Err(format!(
                    "has a signature by {fingerprint} that does not verify: the {what} was altered after signing"
                )),
            };
        }
        Err(format!("is signed by {fingerprint}, but {}", why_not.join("; ")))
    }
}

fn parse_line(line: &str, _n: usize) -> Result<Entry, String> {
    let tokens = tokenize(line)?;
    let mut it = tokens.into_iter();
    let principals = it.next().ok_or("empty line")?;
    let mut next = it.next().ok_or("no key after the principals")?;
    let mut entry_opts = (None, None, None);
    if !is_key_type(&next) {
        entry_opts = parse_options(&next)?;
        next = it.next().ok_or("no key after the options")?;
    }
    if !is_key_type(&next) {
        return Err(format!("{next:?} is not an SSH key type"));
    }
    let b64 = it.next().ok_or("no key data after the key type")?;
    let key = PublicKey::from_openssh(&format!("{next} {b64}")).map_err(|e| format!("invalid {next} key: {e}"))?;
    let (namespaces, valid_after, valid_before) = entry_opts;
    Ok(Entry { principals, namespaces, valid_after, valid_before, key, line: _n })
}

type Options = (Option<Vec<String>>, Option<i64>, Option<i64>);

fn parse_options(opts: &str) -> Result<Options, String> {
    let (mut ns, mut after, mut before) = (None, None, None);
    for opt in split_unquoted(opts, ',') {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n.to_ascii_lowercase(), Some(v.trim_matches('"').to_owned())),
            None => (opt.to_ascii_lowercase(), None),
        };
        match (name.as_str(), value) {
            ("namespaces", Some(v)) => ns = Some(v.split(',').map(|s| s.trim().to_owned()).collect()),
            ("valid-after", Some(v)) => after = Some(parse_time(&v)?),
            ("valid-before", Some(v)) => before = Some(parse_time(&v)?),
            ("cert-authority", None) => {
                return Err("cert-authority entries are not supported: list the signing keys themselves".into());
            }
            (other, _) => return Err(format!("unknown or malformed option {other:?}")),
        }
    }
    Ok((ns, after, before))
}

fn is_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-sha2-") || s.starts_with("sk-")
}

/// Split on whitespace, keeping double-quoted runs (with their quotes) whole.
fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn split_unquoted(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if c == sep && !quoted {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// `YYYYMMDD` or `YYYYMMDDHHMM[SS]`, with an optional `Z`; taken as UTC.
fn parse_time(s: &str) -> Result<i64, String> {
    let digits = s.strip_suffix('Z').unwrap_or(s);
    let bad = || format!("time {s:?} is not YYYYMMDD[HHMM[SS]][Z]");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let n = |a: usize, b: usize| digits.get(a..b).map_or(Ok(0), |x| x.parse::<i64>());
    let (y, m, d) = (n(0, 4).map_err(|_| bad())?, n(4, 6).map_err(|_| bad())?, n(6, 8).map_err(|_| bad())?);
    let (hh, mm, ss) = (n(8, 10).map_err(|_| bad())?, n(10, 12).map_err(|_| bad())?, n(12, 14).map_err(|_| bad())?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    Ok(days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `*` and `?` wildcards, as in ssh's pattern lists.
pub(crate) fn glob_match(pattern: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), s.as_bytes())
}

/// Split a raw commit object into what was signed and the armored signature.
///
/// Git signs the commit with every `gpgsig*` header removed (continuation
/// lines and all), so all of them are removed here: keeping one would let
/// anyone add a header to a validly signed commit and change the payload.
/// `None` when the commit has no `gpgsig` header.
pub fn split_signed(raw: &[u8]) -> Option<(Vec<u8>, String)> {
    let header_end = raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 1).unwrap_or(raw.len());
    let (headers, body) = raw.split_at(header_end);
    let mut payload = Vec::with_capacity(raw.len());
    let mut signature: Option<Vec<u8>> = None;
    let mut in_sig = false;
    let mut skipping = false;
    for line in headers.split_inclusive(|b| *b == b'\n') {
        if let Some(cont) = line.strip_prefix(b" ") {
            if skipping {
                if in_sig && let Some(s) = signature.as_mut() {
                    s.extend_from_slice(cont);
                }
                continue;
            }
            payload.extend_from_slice(line);
            continue;
        }
        in_sig = false;
        skipping = false;
        let name_end = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
        let name = &line[..name_end];
        if name.starts_with(b"gpgsig") {
            skipping = true;
            if name == b"gpgsig" && signature.is_none() {
                in_sig = true;
                signature = Some(line.get(name_end + 1..).unwrap_or_default().to_vec());
            }
            continue;
        }
        payload.extend_from_slice(line);
    }
    payload.extend_from_slice(body);
    let sig = String::from_utf8(signature?).ok()?;
    Some((payload, sig))
}

/// The committer time of a commit payload (seconds since the epoch).
fn committer_time(payload: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(payload).ok()?;
    let line = text.lines().take_while(|l| !l.is_empty()).find_map(|l| l.strip_prefix("committer "))?;
    let mut parts = line.rsplitn(3, ' ');
    let _tz = parts.next()?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &[u8] = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author A <a@example.com> 1700000000 +0000\n\
committer A <a@example.com> 1700000000 +0000\n\
gpgsig -----BEGIN SSH SIGNATURE-----\n line1\n line2\n -----END SSH SIGNATURE-----\n\
gpgsig-sha256 other\n more\n\
\n\
message\n";

    #[test]
    fn split_removes_every_gpgsig_header() {
        let (payload, sig) = split_signed(RAW).unwrap();
        assert_eq!(sig, "-----BEGIN SSH SIGNATURE-----\nline1\nline2\n-----END SSH SIGNATURE-----\n");
        let payload = String::from_utf8(payload).unwrap();
        assert!(!payload.contains("gpgsig") && !payload.contains("more"), "{payload}");
        assert!(payload.ends_with("committer A <a@example.com> 1700000000 +0000\n\nmessage\n"), "{payload}");
        assert_eq!(committer_time(payload.as_bytes()), Some(1_700_000_000));
    }

    #[test]
    fn unsigned_commit_has_no_signature() {
        assert!(split_signed(b"tree x\nauthor a\n\nmsg gpgsig in the body\n").is_none());
    }

    #[test]
    fn times_and_globs() {
        assert_eq!(parse_time("19700101"), Ok(0));
        assert_eq!(parse_time("20231114221320Z"), Ok(1_700_000_000));
        assert!(parse_time("2023-11-14").is_err());
        assert!(parse_time("20231301").is_err());
        assert!(glob_match("g*", "git") && glob_match("?it", "git") && !glob_match("file", "git"));
    }

    #[test]
    fn bad_lines_are_named() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        assert!(AllowedSigners::parse(&format!("a@b {key}"), "f").is_ok());
        let e = AllowedSigners::parse(&format!("a@b cert-authority {key}"), "f").unwrap_err();
        assert!(e.starts_with("f:1: cert-authority"), "{e}");
        let e = AllowedSigners::parse("# nothing\n\n", "f").unwrap_err();
        assert!(e.contains("lists no keys"), "{e}");
        let e = AllowedSigners::parse("a@b ssh-ed25519 AAAAnotbase64", "f").unwrap_err();
        assert!(e.starts_with("f:1: invalid ssh-ed25519 key"), "{e}");
        let e = AllowedSigners::parse(&format!("a@b valid-after=\"2023\" {key}"), "f").unwrap_err();
        assert!(e.contains("YYYYMMDD"), "{e}");
        let s = AllowedSigners::parse(&format!("a@b namespaces=\"file,git\",valid-before=\"20300101\" {key} c"), "f")
            .unwrap();
        assert_eq!(s.entries[0].namespaces.as_deref(), Some(&["file".to_string(), "git".to_string()][..]));
    }
}
