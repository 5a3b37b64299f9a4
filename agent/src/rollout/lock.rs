//! Update locks (SPEC §7): an app that must not be disturbed holds
//! `flock(LOCK_SH)` on a file in `[apply].lock_dir`. While any is held, tend
//! applies nothing new. A lock dies with the process that holds it, so a
//! crashed app never blocks updates forever. tend tests a lock by trying to
//! take it exclusively without waiting, and lets go at once.

use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The locks held now in `dir`, by path (sorted). A missing directory holds
/// none; a file tend cannot open is reported, never assumed free.
pub fn held(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("lock directory {}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("lock directory {}: {e}", dir.display()))?;
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let file = std::fs::File::open(&path).map_err(|e| format!("lock {}: {e}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // Free: let go at once (dropping the guard unlocks).
            Ok(guard) => drop(guard),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => out.push(path),
            Err((_, e)) => return Err(format!("lock {}: {e}", path.display())),
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_lock_is_held_while_its_process_lives() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("modbus-job");
        std::fs::write(&lock, "").unwrap();
        std::fs::write(dir.path().join("free"), "").unwrap();
        assert_eq!(held(dir.path()).unwrap(), Vec::<PathBuf>::new());
        // A real process holds it shared, as an app would (flock(1)).
        let mut app = Command::new("flock")
            .args(["--shared", "--no-fork"])
            .arg(&lock)
            .args(["sleep", "30"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while held(dir.path()).unwrap().is_empty() {
            assert!(start.elapsed().as_secs() < 10, "flock never took the lock");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(held(dir.path()).unwrap(), vec![lock.clone()]);
        // Testing it did not take it: the app still has it.
        assert_eq!(held(dir.path()).unwrap(), vec![lock.clone()]);
        app.kill().unwrap();
        app.wait().unwrap();
        assert_eq!(held(dir.path()).unwrap(), Vec::<PathBuf>::new(), "a lock dies with its process");
        assert_eq!(held(&dir.path().join("missing")).unwrap(), Vec::<PathBuf>::new());
    }
}
