//! Git bundles (git's own format, `git bundle create`) taken into the local
//! repository, for commits that come on a stick instead of over the network
//! (SPEC §9), and the ancestry questions an import and the network's return
//! ask. gix reads packs but not bundles: the header is read here, the pack
//! that follows it is indexed by gix as a fetched pack is.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use gix::ObjectId;

use super::{GitSource, error_chain};

/// The most a bundle's header may hold (one line per prerequisite and ref).
const MAX_HEADER: usize = 1 << 20;
/// Commits walked at most to answer whether one descends from another.
const MAX_WALK: usize = 100_000;

/// A pack written into the repository by [`GitSource::take_bundle`]; removed
/// again by [`Taken::discard`] when the import is refused.
#[derive(Debug, Default)]
pub struct Taken {
    files: Vec<PathBuf>,
}

impl Taken {
    /// Remove the pack: nothing of a refused import stays behind.
    pub fn discard(self) {
        for f in self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The header of a bundle: what it needs and what it holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub prerequisites: Vec<ObjectId>,
    pub refs: Vec<(ObjectId, String)>,
}

/// Read the header (up to and including the blank line before the pack).
pub fn read_header<R: BufRead + ?Sized>(r: &mut R) -> Result<Header, String> {
    let mut header = Header::default();
    let mut total = 0usize;
    let mut line = Vec::new();
    let mut first = true;
    loop {
        line.clear();
        let n = <&mut R as std::io::Read>::take(&mut *r, 4097)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read: {e}"))?;
        total += n;
        if n == 0 || line.last() != Some(&b'\n') || total > MAX_HEADER {
            return Err("not a Git bundle, or its header is truncated".into());
        }
        let text = std::str::from_utf8(&line[..n - 1]).map_err(|_| "its header is not text".to_owned())?;
        if first {
            first = false;
            match text {
                "# v2 git bundle" | "# v3 git bundle" => continue,
                _ => {
                    return Err(format!(
                        "not a Git bundle (it starts {:?})",
                        text.chars().take(40).collect::<String>()
                    ));
                }
            }
        }
        if text.is_empty() {
            return Ok(header);
        }
        if let Some(cap) = text.strip_prefix('@') {
            if cap != "object-format=sha1" {
                return Err(format!("the bundle needs capability {cap:?}, which tend does not support"));
            }
            continue;
        }
        let (prereq, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (hex, name) = rest.split_once(' ').unwrap_or((rest, ""));
        let id = ObjectId::from_hex(hex.as_bytes()).map_err(|_| format!("bad object id {hex:?} in its header"))?;
        if prereq {
            header.prerequisites.push(id);
        } else {
            header.refs.push((id, name.to_owned()));
        }
    }
}

impl GitSource {
    /// Take the bundle read from `r` into the local repository: check its
    /// header names `commit` on `branch` and that this repository has what
    /// it needs, index its pack (completing a thin one from the
    /// repository), and check `commit` is there. On any error nothing of it
    /// stays in the repository.
    pub fn take_bundle(&self, r: &mut dyn BufRead, commit: &str, branch: &str) -> Result<Taken, String> {
        let repo = self.open().map_err(|e| e.to_string())?;
        let header = read_header(r)?;
        let want = ObjectId::from_hex(commit.as_bytes()).map_err(|e| format!("commit {commit}: {e}"))?;
        let full = format!("refs/heads/{branch}");
        if !header.refs.iter().any(|(id, name)| *id == want && (*name == full || *name == "HEAD")) {
            let named: Vec<String> =
                header.refs.iter().map(|(id, n)| format!("{n} at {}", crate::sync::short(&id.to_string()))).collect();
            return Err(format!(
                "it does not hold commit {} as {full} (it holds: {})",
                crate::sync::short(commit),
                if named.is_empty() { "nothing".into() } else { named.join(", ") }
            ));
        }
        for p in &header.prerequisites {
            if repo.find_object(*p).is_err() {
                return Err(format!(
                    "it was exported --since commit {}, which this gateway does not have: export without --since, or since the revision this gateway runs",
                    crate::sync::short(&p.to_string())
                ));
            }
        }
        let pack_dir = self.dir.join("objects/pack");
        std::fs::create_dir_all(&pack_dir).map_err(|e| format!("cannot create {}: {e}", pack_dir.display()))?;
        let outcome = gix::odb::pack::Bundle::write_to_directory(
            r,
            Some(&pack_dir),
            &mut gix::progress::Discard,
            &AtomicBool::new(false),
            Some(repo.objects.clone()),
            gix::hash::Kind::Sha1,
            Default::default(),
        )
        .map_err(|e| format!("its pack is corrupt: {}", error_chain(&e)))?;
        let taken = Taken {
            files: [outcome.data_path, outcome.index_path, outcome.keep_path.clone()].into_iter().flatten().collect(),
        };
        if let Some(keep) = outcome.keep_path {
            let _ = std::fs::remove_file(keep);
        }
        // A fresh handle sees the new pack.
        let found = self.open().map_err(|e| e.to_string()).and_then(|repo| {
            repo.find_commit(want).map(|_| ()).map_err(|e| format!("commit {commit} is not in it: {}", error_chain(&e)))
        });
        match found {
            Ok(()) => Ok(taken),
            Err(e) => {
                taken.discard();
                Err(e)
            }
        }
    }

    /// Whether `commit` descends from (or is) `ancestor`, walking the
    /// history the local repository has: `Some(true)`, `Some(false)` when
    /// the whole history of `commit` was walked without meeting it, `None`
    /// when the walk ran into history this repository does not have (a
    /// shallow fetch's boundary, a thin bundle's prerequisite: a parent
    /// that is not here).
    pub fn descends(&self, commit: &str, ancestor: &str) -> Result<Option<bool>, String> {
        let repo = self.open().map_err(|e| e.to_string())?;
        let parse = |c: &str| ObjectId::from_hex(c.as_bytes()).map_err(|e| format!("commit {c}: {e}"));
        let (start, goal) = (parse(commit)?, parse(ancestor)?);
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![start];
        let mut complete = true;
        while let Some(id) = todo.pop() {
            if id == goal {
                return Ok(Some(true));
            }
            if !seen.insert(id) {
                continue;
            }
            if seen.len() > MAX_WALK {
                return Ok(None);
            }
            let Ok(c) = repo.find_commit(id) else {
                complete = false;
                continue;
            };
            todo.extend(c.parent_ids().map(|p| p.detach()));
        }
        Ok(if complete { Some(false) } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let a = "1".repeat(40);
        let b = "2".repeat(40);
        let text = format!("# v2 git bundle\n-{a} base\n{b} refs/heads/main\n\nPACK");
        let mut r = std::io::Cursor::new(text.into_bytes());
        let h = read_header(&mut r).unwrap();
        assert_eq!(h.prerequisites, vec![ObjectId::from_hex(a.as_bytes()).unwrap()]);
        assert_eq!(h.refs, vec![(ObjectId::from_hex(b.as_bytes()).unwrap(), "refs/heads/main".to_owned())]);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut r, &mut rest).unwrap();
        assert_eq!(rest, "PACK");
        for bad in ["", "# v9 git bundle\n\n", "# v2 git bundle\nzz refs/heads/x\n\n", "# v2 git bundle\n"] {
            assert!(read_header(&mut std::io::Cursor::new(bad.as_bytes().to_vec())).is_err(), "{bad:?}");
        }
        let v3 = format!("# v3 git bundle\n@filter=blob:none\n{b} refs/heads/main\n\n");
        assert!(read_header(&mut std::io::Cursor::new(v3.into_bytes())).unwrap_err().contains("filter"));
        let long = format!("# v2 git bundle\n{}\n\n", "a".repeat(5000));
        assert!(read_header(&mut std::io::Cursor::new(long.into_bytes())).is_err());
    }
}
