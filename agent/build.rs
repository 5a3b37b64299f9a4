//! The commit tend is built from, for `tend --version`: `TEND_COMMIT` when set
//! (a build from a source archive), else `git rev-parse` of the checkout, else
//! "unknown". Rebuilt when the checkout's HEAD moves.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=TEND_COMMIT");
    let commit = std::env::var("TEND_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        // What moves when a commit is made or checked out: HEAD, the branch's
        // ref (loose or packed).
        for dir in [git(&["rev-parse", "--git-dir"]), git(&["rev-parse", "--git-common-dir"])].into_iter().flatten() {
            println!("cargo:rerun-if-changed={dir}/HEAD");
            println!("cargo:rerun-if-changed={dir}/packed-refs");
        }
        if let (Some(common), Some(head)) =
            (git(&["rev-parse", "--git-common-dir"]), git(&["symbolic-ref", "-q", "HEAD"]))
        {
            println!("cargo:rerun-if-changed={common}/{head}");
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!("cargo:rustc-env=TEND_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
