//! Secrets in the bundle (SPEC §1 `[files].age_identity`): `files/**.age` are
//! age-encrypted in the repository, decrypted on the gateway with its own key,
//! and written without the `.age` suffix.
//!
//! The plaintext is held only in memory on its way to the destination file:
//! the store keeps the ciphertext (and the SHA-256 of the plaintext, to see
//! drift), and messages, logs, `--dry-run` and `validate` show the hash of the
//! ciphertext, never a hash of the plaintext (a short secret's hash could be
//! brute-forced). Keys and plaintext are never formatted into any message.

use std::io::{BufRead, Read};
use std::path::Path;
use std::str::FromStr;

/// The header line of a binary age file.
const BINARY_HEADER: &[u8] = b"age-encryption.org/v1\n";
/// The first line of an ASCII-armored age file.
const ARMOR_HEADER: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";

/// The gateway's age identities (X25519 keys, as `age-keygen` writes them).
pub struct AgeKeys {
    file: String,
    keys: Vec<age::x25519::Identity>,
}

impl std::fmt::Debug for AgeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgeKeys({}, {} keys)", self.file, self.keys.len())
    }
}

impl AgeKeys {
    /// Read `[files].age_identity`. Errors name the file and line, never what
    /// is on it.
    pub fn load(path: &Path) -> Result<AgeKeys, String> {
        let file = path.display().to_string();
        let f = std::fs::File::open(path).map_err(|e| format!("[files].age_identity {file}: cannot read: {e}"))?;
        let mut keys = Vec::new();
        for (i, line) in std::io::BufReader::new(f.take(1 << 20)).lines().enumerate() {
            let line = line.map_err(|e| format!("[files].age_identity {file}: cannot read: {e}"))?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = age::x25519::Identity::from_str(line).map_err(|_| {
                format!("[files].age_identity {file}:{}: not an age X25519 identity (AGE-SECRET-KEY-1...)", i + 1)
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(format!("[files].age_identity {file}: holds no identity"));
        }
        Ok(AgeKeys { file, keys })
    }

    /// Decrypt an age file (binary or armored); at most `limit` bytes of
    /// plaintext. The error says why without quoting any of it.
    pub fn decrypt(&self, ciphertext: &[u8], limit: u64) -> Result<Vec<u8>, String> {
        let reader = age::armor::ArmoredReader::new(ciphertext);
        let decryptor = age::Decryptor::new_buffered(reader)
            .map_err(|e| format!("is not a valid age file: {}", short_error(&e)))?;
        let mut stream = decryptor.decrypt(self.keys.iter().map(|k| k as &dyn age::Identity)).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => {
                format!("is not encrypted to this gateway's key ({})", self.file)
            }
            other => format!("cannot be decrypted: {}", short_error(&other)),
        })?;
        let mut plain = Vec::new();
        (&mut stream)
            .take(limit + 1)
            .read_to_end(&mut plain)
            .map_err(|e| format!("cannot be decrypted: {e} (corrupt or truncated)"))?;
        if plain.len() as u64 > limit {
            return Err(format!("decrypts to more than the limit of {limit} bytes"));
        }
        Ok(plain)
    }
}

/// Whether `bytes` start like an age file.
pub fn looks_like_age(bytes: &[u8]) -> bool {
    bytes.starts_with(BINARY_HEADER) || bytes.trim_ascii_start().starts_with(ARMOR_HEADER)
}

fn short_error(e: &age::DecryptError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

/// The name a secret is written under: `app.key.age` → `app.key`.
pub fn plain_name(name: &str) -> Option<&str> {
    name.strip_suffix(".age").filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn keys(dir: &Path) -> (AgeKeys, age::x25519::Identity) {
        let id = age::x25519::Identity::generate();
        let path = dir.join("age.key");
        std::fs::write(&path, format!("# created: now\n{}\n", id.to_string().expose_secret())).unwrap();
        (AgeKeys::load(&path).unwrap(), id)
    }

    #[test]
    fn decrypts_binary_and_armored_files_for_this_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let (k, id) = keys(dir.path());
        let ct = age::encrypt(&id.to_public(), b"s3cret").unwrap();
        assert!(looks_like_age(&ct));
        assert_eq!(k.decrypt(&ct, 100).unwrap(), b"s3cret");
        let armored = age::encrypt_and_armor(&id.to_public(), b"s3cret").unwrap();
        assert!(looks_like_age(armored.as_bytes()));
        assert_eq!(k.decrypt(armored.as_bytes(), 100).unwrap(), b"s3cret");
        let other = age::x25519::Identity::generate();
        let e = k.decrypt(&age::encrypt(&other.to_public(), b"s3cret").unwrap(), 100).unwrap_err();
        assert!(e.contains("not encrypted to this gateway's key"), "{e}");
        assert!(k.decrypt(&ct, 3).unwrap_err().contains("limit"));
        let mut bad = ct.clone();
        let n = bad.len() - 3;
        bad[n] ^= 1;
        let e = k.decrypt(&bad, 100).unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn a_bad_identity_file_is_named_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("age.key");
        std::fs::write(&path, "AGE-SECRET-KEY-1NOTAKEYATALLBUTSECRETISH\n").unwrap();
        let e = AgeKeys::load(&path).unwrap_err();
        assert!(e.contains("age.key:1") && !e.contains("SECRETISH"), "{e}");
        let (k, _) = keys(dir.path());
        assert!(!format!("{k:?}").contains("AGE-SECRET"));
    }
}
