//! Content hashes: SHA-256, shown as lowercase hex. The store keeps file contents
//! under their hash, so an unchanged file is stored once across revisions.

use std::fmt;

use sha2::{Digest, Sha256};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn of(data: &[u8]) -> ContentHash {
        let digest = Sha256::digest(data);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_slice());
        ContentHash(out)
    }

    /// Hash a file's content as it is on disk now.
    pub fn of_file(path: &std::path::Path) -> std::io::Result<ContentHash> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(h.finalize().as_slice());
        Ok(ContentHash(out))
    }

    pub fn short(&self) -> String {
        self.to_string()[..12].to_owned()
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.short())
    }
}

impl From<ContentHash> for String {
    fn from(h: ContentHash) -> String {
        h.to_string()
    }
}

impl TryFrom<String> for ContentHash {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() != 64 {
            return Err(format!("content hash {s:?} is not 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| format!("content hash {s:?}: {e}"))?;
        }
        Ok(ContentHash(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn known_vector_and_round_trip() {
        let h = ContentHash::of(b"abc");
        assert_eq!(h.to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(ContentHash::try_from(h.to_string()).unwrap(), h);
    }
}
