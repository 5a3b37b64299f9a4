//! `tend fleet export` on the operator's machine (SPEC §9): the branch tip
//! as a Git bundle (git's own `git bundle create`), the container images
//! the exported devices' bundles name (from the local Podman or Docker,
//! pulled first when missing), a manifest and its SSH signature
//! (`ssh-keygen -Y sign -n tend-export`), in one `.tend` file.
//!
//! The operator's machine has git and ssh-keygen (it signs commits with
//! them); the gateway needs neither to read the file.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{FORMAT, Hashing, IMAGES, Image, MANIFEST, Manifest, NAMESPACE, Part, REPO, SIGNATURE};
use crate::bundle::{self, DirTree, Limits, Policy, RelPath};
use crate::config::Identity;
use crate::reconcile::containers::{DockerRuntime, Runtime};
use crate::sync::short;

/// What to export.
#[derive(Debug, Clone)]
pub struct Request {
    /// A Git URL, or the path of a local repository.
    pub repo: String,
    pub branch: String,
    pub since: Option<String>,
    /// Device directories to export (`*` and `?` wildcards).
    pub devices: String,
    /// Where a device's bundle is: `DIR/{device_id}` (`[source].path`).
    pub path: String,
    pub fleet: String,
    /// The SSH private key that signs the manifest.
    pub key: PathBuf,
    /// The file to write, or a directory to write `FLEET-SHORTREV.tend` in.
    pub out: PathBuf,
    /// The container runtime's API socket (default: Podman's or Docker's).
    pub socket: Option<String>,
}

/// What was written.
#[derive(Debug)]
pub struct Written {
    pub file: PathBuf,
    pub manifest: Manifest,
    pub size: u64,
    pub seconds: f64,
}

/// Write the export; `Err` says what stopped it, in one line.
pub fn export(req: &Request) -> Result<Written, String> {
    let started = Instant::now();
    // `DIR/{device_id}`: a bundle per device; a path without placeholders:
    // one bundle every gateway of the fleet shares.
    let per_device = match req.path.rsplit_once('/') {
        Some((dir, "{device_id}")) if !dir.contains('{') => Some(dir.to_owned()),
        _ if !req.path.contains('{') => None,
        _ => {
            return Err(format!(
                "--path {:?}: must be DIR/{{device_id}} or a path without placeholders (the gateways' [source].path)",
                req.path
            ));
        }
    };
    if !std::fs::metadata(&req.key).is_ok_and(|m| m.is_file()) {
        return Err(format!("--key {}: no such file", req.key.display()));
    }
    let out_dir = if req.out.is_dir() {
        req.out.clone()
    } else {
        req.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
    };
    let work = Scratch::new(&out_dir)?;

    // The repository: a local one as it is, a URL cloned (bare) first.
    let repo = if Path::new(&req.repo).is_dir() {
        PathBuf::from(&req.repo)
    } else {
        let dest = work.0.join("repo.git");
        git(None, &["clone", "--bare", "--quiet", &req.repo, &dest.to_string_lossy()])
            .map_err(|e| format!("--repo {}: cannot clone: {e}", req.repo))?;
        dest
    };
    let commit = git(Some(&repo), &["rev-parse", "--verify", &format!("refs/heads/{}^{{commit}}", req.branch)])
        .map_err(|_| format!("--branch {:?}: no such branch in {}", req.branch, req.repo))?;
    let since = match &req.since {
        None => None,
        Some(s) => {
            let id = git(Some(&repo), &["rev-parse", "--verify", &format!("{s}^{{commit}}")])
                .map_err(|_| format!("--since {s:?}: no such commit in {}", req.repo))?;
            if id == commit {
                return Err(format!("--since {s:?}: that is the branch's tip; there is nothing to export"));
            }
            git(Some(&repo), &["merge-base", "--is-ancestor", &id, &commit]).map_err(|_| {
                format!(
                    "--since {s:?}: not an ancestor of the tip of {}; a gateway on it could not take the export",
                    req.branch
                )
            })?;
            Some(id)
        }
    };

    // The devices, and the images their bundles name.
    let tree = work.0.join("tree");
    std::fs::create_dir_all(&tree).map_err(|e| format!("cannot create {}: {e}", tree.display()))?;
    unpack_tree(&repo, &commit, &tree)?;
    let mut refs = BTreeSet::new();
    let limits = Limits::default();
    let policy = Policy::default();
    let mut images_of = |device: &str, at: &str| -> Result<(), String> {
        let identity = Identity { device_id: device.to_owned(), fleet: req.fleet.clone(), labels: BTreeMap::new() };
        let ctx =
            bundle::Context { identity: &identity, policy: &policy, limits: &limits, secrets: bundle::Secrets::Opaque };
        let at = RelPath::parse(at).map_err(|e| format!("{at:?}: {e}"))?;
        let r = bundle::render(&DirTree::new(&tree), &at, &ctx)
            .map_err(|e| format!("{at}: the bundle is rejected ({e}); fix it before exporting"))?;
        refs.extend(r.desired.containers.values().map(|c| c.image.clone()));
        Ok(())
    };
    let devices: Vec<String> = match &per_device {
        Some(dir) => {
            let listed = std::fs::read_dir(tree.join(dir))
                .map_err(|_| format!("--path {:?}: there is no {dir}/ at {}", req.path, short(&commit)))?;
            let mut all = BTreeSet::new();
            for d in listed.filter_map(Result::ok) {
                if d.file_type().is_ok_and(|t| t.is_dir()) {
                    all.insert(d.file_name().to_string_lossy().into_owned());
                }
            }
            let devices: Vec<String> =
                all.iter().filter(|d| crate::trust::glob_match(&req.devices, d)).cloned().collect();
            if devices.is_empty() {
                return Err(format!(
                    "--devices {:?} matches none of the {} device directories under {dir}/ at {}",
                    req.devices,
                    all.len(),
                    short(&commit)
                ));
            }
            for d in &devices {
                images_of(d, &format!("{dir}/{d}"))?;
            }
            devices
        }
        None => {
            // One shared bundle: the devices are the glob itself, matched
            // by each gateway against its own id.
            images_of("export", &req.path)?;
            vec![req.devices.clone()]
        }
    };

    // The Git bundle.
    let bundle_path = work.0.join(REPO);
    let mut args = vec!["bundle".to_owned(), "create".into(), "--quiet".into()];
    args.push(bundle_path.to_string_lossy().into_owned());
    args.push(format!("refs/heads/{}", req.branch));
    if let Some(s) = &since {
        args.push(format!("^{s}"));
    }
    git(Some(&repo), &args.iter().map(String::as_str).collect::<Vec<_>>())
        .map_err(|e| format!("git bundle create: {e}"))?;

    // The images.
    let mut images = Vec::new();
    let images_path = work.0.join(IMAGES);
    if !refs.is_empty() {
        let socket = req
            .socket
            .clone()
            .or_else(crate::reconcile::containers::default_socket)
            .ok_or("the bundles name container images, and no Podman or Docker socket was found; give --socket")?;
        let rt = DockerRuntime::new(&socket);
        for r in &refs {
            let id = match rt.image_id(r).map_err(|e| e.to_string())? {
                Some(id) => id,
                None => {
                    eprintln!("pulling {r}");
                    rt.pull(r).map_err(|e| format!("image {r}: not here, and {e}"))?;
                    rt.image_id(r)
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("image {r}: pulled, yet not found"))?
                }
            };
            images.push(Image { reference: r.clone(), id });
        }
        let mut f = std::fs::File::create(&images_path).map_err(|e| format!("{}: {e}", images_path.display()))?;
        let tty = std::io::stderr().is_terminal();
        let mut last = Instant::now();
        let mut progress = |n: u64| {
            if tty && last.elapsed().as_millis() >= 500 {
                last = Instant::now();
                eprint!("\rimages: {}   ", super::import::human(n));
            }
        };
        let names: Vec<&str> = refs.iter().map(String::as_str).collect();
        rt.save_images(&names, &mut f, &mut progress)?;
        if tty {
            eprintln!();
        }
        f.sync_all().map_err(|e| format!("{}: {e}", images_path.display()))?;
    }

    // The manifest, signed.
    let mut parts = BTreeMap::new();
    parts.insert(REPO.to_owned(), part_of(&bundle_path)?);
    if !images.is_empty() {
        parts.insert(IMAGES.to_owned(), part_of(&images_path)?);
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        fleet: req.fleet.clone(),
        branch: req.branch.clone(),
        commit: commit.clone(),
        since,
        devices,
        images,
        created: jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_else(|_| jiff::Timestamp::now())
            .to_string(),
        parts,
    };
    let manifest_path = work.0.join(MANIFEST);
    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    std::fs::write(&manifest_path, &text).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", NAMESPACE, "-f"])
        .arg(&req.key)
        .arg(&manifest_path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh-keygen to sign: {e}"))?;
    if !signed.status.success() {
        return Err(format!(
            "--key {}: ssh-keygen could not sign with it: {}",
            req.key.display(),
            String::from_utf8_lossy(&signed.stderr).trim()
        ));
    }

    // The file: written beside, then renamed into place.
    let name =
        if req.out.is_dir() { req.out.join(format!("{}-{}.tend", req.fleet, short(&commit))) } else { req.out.clone() };
    let partial = work.0.join("export.tend");
    {
        let f = std::fs::File::create(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(f));
        b.mode(tar::HeaderMode::Deterministic);
        let mut names = vec![MANIFEST, SIGNATURE, REPO];
        if !manifest.images.is_empty() {
            names.push(IMAGES);
        }
        for n in names {
            let p = work.0.join(n);
            b.append_path_with_name(&p, n).map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        }
        let w = b.into_inner().map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        let f = w.into_inner().map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        f.sync_all().map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    }
    std::fs::rename(&partial, &name).map_err(|e| format!("cannot write {}: {e}", name.display()))?;
    let size = std::fs::metadata(&name).map(|m| m.len()).unwrap_or(0);
    Ok(Written { file: name, manifest, size, seconds: started.elapsed().as_secs_f64() })
}

/// The hash and size of a part.
fn part_of(path: &Path) -> Result<Part, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Hashing::new(std::io::BufReader::new(f));
    std::io::copy(&mut h, &mut std::io::sink()).map_err(|e| format!("{}: {e}", path.display()))?;
    let size = h.read;
    Ok(Part { sha256: h.finish(), size })
}

/// The files of `commit`, unpacked under `dest` (`git archive`).
fn unpack_tree(repo: &Path, commit: &str, dest: &Path) -> Result<(), String> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["archive", "--format=tar", commit])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    let out = child.stdout.take().expect("piped");
    let unpacked = tar::Archive::new(out).unpack(dest);
    let status = child.wait_with_output().map_err(|e| format!("git archive: {e}"))?;
    if !status.status.success() {
        return Err(format!("git archive: {}", String::from_utf8_lossy(&status.stderr).trim()));
    }
    unpacked.map_err(|e| format!("git archive: {e}"))
}

/// Run git (in `repo`, when given); its trimmed stdout, or its stderr.
fn git(repo: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut c = Command::new("git");
    if let Some(r) = repo {
        c.arg("-C").arg(r);
    }
    let out = c
        .args(args)
        .stdin(Stdio::null())
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A scratch directory beside the output, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(beside: &Path) -> Result<Scratch, String> {
        let p = beside.join(format!(".tend-export-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
