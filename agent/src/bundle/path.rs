//! Paths inside a repository, checked once so that nothing below can escape.
//!
//! A [`RelPath`] is a normalised, relative path of UTF-8 segments with no `.`,
//! `..`, empty segment, NUL or control character. It can only be built by
//! [`RelPath::parse`] or by joining checked segments, so holding one is proof
//! that it stays inside the repository.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelPath(Vec<String>);

impl RelPath {
    /// The repository root.
    pub fn root() -> RelPath {
        RelPath(Vec::new())
    }

    /// Parse a relative path; `.` segments are dropped; `..`, absolute paths,
    /// NUL and control characters are refused.
    pub fn parse(s: &str) -> Result<RelPath, String> {
        if s.starts_with('/') {
            return Err("absolute paths are not allowed here".into());
        }
        let mut out = RelPath::root();
        for seg in s.split('/') {
            match seg {
                "" | "." => continue,
                ".." => return Err("'..' is not allowed in paths".into()),
                _ => out = out.join(seg)?,
            }
        }
        Ok(out)
    }

    /// Append one segment, checked.
    pub fn join(&self, segment: &str) -> Result<RelPath, String> {
        check_segment(segment)?;
        let mut v = self.0.clone();
        v.push(segment.to_owned());
        Ok(RelPath(v))
    }

    /// Join a relative path that may contain `..` (an include or a symlink target)
    /// onto `self`; the result must stay inside the repository.
    pub fn resolve(&self, rel: &str) -> Result<RelPath, String> {
        if rel.starts_with('/') {
            return Err(format!("{rel:?} is absolute; only paths relative to the bundle are allowed"));
        }
        let mut v = self.0.clone();
        for seg in rel.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    if v.pop().is_none() {
                        return Err(format!("{rel:?} leaves the repository"));
                    }
                }
                s => {
                    check_segment(s).map_err(|e| format!("{rel:?}: {e}"))?;
                    v.push(s.to_owned());
                }
            }
        }
        Ok(RelPath(v))
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parent(&self) -> Option<RelPath> {
        let mut v = self.0.clone();
        v.pop().map(|_| RelPath(v))
    }

    pub fn starts_with(&self, prefix: &RelPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The part of `self` below `prefix`, if `self` is under it.
    pub fn strip_prefix(&self, prefix: &RelPath) -> Option<RelPath> {
        self.0.strip_prefix(prefix.0.as_slice()).map(|s| RelPath(s.to_vec()))
    }

    /// Display form with a leading `/`, for destinations under `[files].root`.
    pub fn to_absolute_string(&self) -> String {
        format!("/{}", self.0.join("/"))
    }
}

fn check_segment(seg: &str) -> Result<(), String> {
    if seg.is_empty() || seg == "." || seg == ".." {
        return Err(format!("invalid path segment {seg:?}"));
    }
    if seg.contains('/') {
        return Err(format!("path segment {seg:?} contains '/'"));
    }
    if seg.chars().any(char::is_control) {
        return Err(format!("path segment {seg:?} contains a control character"));
    }
    if seg.len() > 255 {
        return Err(format!("path segment of {} bytes is longer than 255", seg.len()));
    }
    Ok(())
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str(".") } else { f.write_str(&self.0.join("/")) }
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> String {
        p.0.join("/")
    }
}

impl TryFrom<String> for RelPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        RelPath::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalises_and_refuses_escapes() {
        assert_eq!(RelPath::parse("a/./b//c/").unwrap().to_string(), "a/b/c");
        assert_eq!(RelPath::parse("").unwrap(), RelPath::root());
        assert!(RelPath::parse("a/../b").is_err());
        assert!(RelPath::parse("/etc").is_err());
        assert!(RelPath::parse("a/\u{7}b").is_err());
        assert!(RelPath::parse("a\0b").is_err());
    }

    #[test]
    fn resolve_stays_inside() {
        let b = RelPath::parse("devices/gw-1").unwrap();
        assert_eq!(b.resolve("../../base").unwrap().to_string(), "base");
        assert_eq!(b.resolve("../x/./y").unwrap().to_string(), "devices/x/y");
        assert!(b.resolve("../../../etc").is_err());
        assert!(b.resolve("/abs").is_err());
    }
}
