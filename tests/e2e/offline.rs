//! Issue 25: sites without network (SPEC §9). The operator exports a signed
//! `.tend` file from a real repository and a real Podman; the gateway, whose
//! git daemon is gone, imports it into its own Podman and applies it through
//! the cycle; refused files leave nothing behind; when the network returns,
//! an older tip is not applied.

use std::path::{Path, PathBuf};
use std::process::Command;

use tend_e2e::{Fleet, Gateway, GitDaemon, Podman, Run, TEST_IMAGE, commit_signed, pack_count, run, ssh_key, tend_bin};

/// The image the exported revision runs: in the operator's Podman only.
const SITE_IMAGE: &str = "localhost/tend-site:1";

struct Site {
    tmp: tempfile::TempDir,
    fleet: Fleet,
    key: PathBuf,
    gw: Gateway,
    /// The operator's Podman (has SITE_IMAGE) and the gateway's.
    operator: Podman,
    gateway: Podman,
    daemon: Option<GitDaemon>,
    port: u16,
    v1: String,
}

fn bundle(fleet: &Fleet, version: &str, check: &str, image: Option<&str>) {
    fleet
        .write(
            "devices/gw-1/tend.toml",
            format!("[[check]]\nname = \"app\"\ncommand = {check}\ninterval = \"200ms\"\n"),
        )
        .write("devices/gw-1/files/etc/myapp/app.conf", format!("version = {version}\n"));
    match image {
        Some(i) => fleet.write(
            "devices/gw-1/containers/app.toml",
            format!("image = \"{i}\"\ncommand = [\"sleep\", \"3600\"]\nnetwork = \"host\"\n"),
        ),
        None if fleet.dir.join("devices/gw-1/containers").exists() => fleet.remove("devices/gw-1/containers"),
        None => fleet,
    };
}

/// A gateway on v1 (signed, fetched from a git daemon), whose git daemon
/// is then gone.
fn site(extra: &str) -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(tmp.path(), "ops");
    let signers = tmp.path().join("allowed_signers");
    std::fs::write(&signers, format!("ops@example.com namespaces=\"git,tend-export\" {public}\n")).unwrap();
    let operator = Podman::start();
    run(operator.podman().args(["tag", TEST_IMAGE, SITE_IMAGE]));
    let gateway = Podman::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    std::fs::create_dir_all(fleet.dir.join("devices/gw-1")).unwrap();
    bundle(&fleet, "1", "[\"true\"]", None);
    let v1 = commit_signed(&fleet, &key, "v1");
    let daemon = GitDaemon::start(tmp.path());
    let port = daemon.port;
    let gw = Gateway::with_source_keys(
        tmp.path(),
        &daemon.url("fleet"),
        &format!("allowed_signers = \"{}\"", signers.display()),
        // The site's broker is out of reach too: events wait in the store
        // (a gateway without [mqtt] keeps none), and go out on the stick.
        &format!(
            "[apply]\nhealth_timeout = \"10s\"\n[containers]\nsocket = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n{extra}",
            gateway.url(),
            tend_e2e::free_port()
        ),
    );
    gw.sync_ok();
    assert_eq!(gw.read("/etc/myapp/app.conf"), "version = 1\n");
    drop(daemon);
    Site { tmp, fleet, key, gw, operator, gateway, daemon: None, port, v1 }
}

impl Site {
    /// `tend fleet export` into `dir` (created); the file written.
    fn export(&self, dir: &str, extra: &[&str]) -> PathBuf {
        let out = self.tmp.path().join(dir);
        std::fs::create_dir_all(&out).unwrap();
        let r: Run = Command::new(tend_bin())
            .args(["fleet", "export", "--fleet", "test", "--repo"])
            .arg(&self.fleet.dir)
            .arg("--key")
            .arg(&self.key)
            .arg("-o")
            .arg(&out)
            .args(["--socket", &self.operator.url()])
            .args(extra)
            .output()
            .unwrap()
            .into();
        assert_eq!(r.code, 0, "{r:?}");
        let files: Vec<PathBuf> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "tend"))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    }

    fn import(&self, path: &Path, extra: &[&str]) -> Run {
        self.gw.command().arg("import").args(extra).arg(path).output().unwrap().into()
    }

    fn history(&self) -> Vec<serde_json::Value> {
        self.gw.tend(&["history", "--json"]).json().as_array().unwrap().clone()
    }

    fn images(&self) -> Vec<String> {
        let out = run(self.gateway.podman().args(["images", "-q", "--no-trunc"]));
        let mut v: Vec<String> = out.lines().map(str::to_owned).collect();
        v.sort();
        v
    }

    fn network_back(&mut self) {
        self.daemon = Some(GitDaemon::start_on(self.tmp.path(), self.port));
    }
}

fn image_id(p: &Podman, image: &str) -> String {
    run(p.podman().args(["image", "inspect", "--format", "{{.Id}}", image])).trim().to_owned()
}

/// Acceptance 1 and 4: applied from the stick with its image, health-gated,
/// in the history naming the file, the report written back; then the
/// network returns: the same tip is not applied again, an older one is not
/// applied (the source is behind), a newer one is.
#[test]
fn an_export_is_applied_offline_reported_and_reconciled_when_the_network_returns() {
    let mut s = site("");
    bundle(&s.fleet, "2", "[\"true\"]", Some(SITE_IMAGE));
    let v2 = commit_signed(&s.fleet, &s.key, "v2");
    let file = s.export("stick", &[]);
    assert!(file.file_name().unwrap().to_string_lossy().starts_with("test-"), "{file:?}");
    // The gateway cannot reach its source: only the stick brings v2.
    let offline = s.gw.tend(&["sync"]);
    assert_eq!(offline.code, 1, "{offline:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 1\n");

    let stick = file.parent().unwrap();
    let r = s.import(stick, &["--report"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("applied"), "{r:?}");
    assert!(r.stdout.contains("signed by ops@example.com"), "{r:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 2\n");
    assert_eq!(image_id(&s.gateway, SITE_IMAGE), image_id(&s.operator, SITE_IMAGE));
    let app = s.gateway.inspect("app").expect("the container from the stick");
    assert_eq!(app["State"]["Running"], true);
    let status = s.gw.tend(&["status", "--json"]).json();
    assert_eq!(status["revision"], v2.as_str());
    assert_eq!(status["last_good_revision"], v2.as_str(), "health-gated and promoted: {status}");
    let h = s.history();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(h[0]["revision"], v2.as_str());
    assert_eq!(h[0]["from"], format!("import {name}"), "{h:?}");
    // The report, back on the stick.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stick.join("tend-reports/gw-1.json")).unwrap()).unwrap();
    assert_eq!(report["format"], "tend-report/1");
    assert_eq!(report["device_id"], "gw-1");
    assert_eq!(report["status"]["revision"], v2.as_str());
    assert_eq!(report["history"][0]["from"], format!("import {name}"));
    assert!(
        report["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "applied" && e["from"] == format!("import {name}")),
        "{report}"
    );

    // The report, published for the fleet (acceptance 4 of the issue):
    // `fleet status` shows the site, via the stick, with the report's time.
    let broker = tend_e2e::Mosquitto::start();
    let fleet_cmd = |args: &[&str]| -> Run {
        Command::new(tend_bin()).arg("fleet").args(args).args(["--mqtt", &broker.url()]).output().unwrap().into()
    };
    let ingest = |dir: &Path| fleet_cmd(&["ingest", "--fleet", "test", &dir.display().to_string()]);
    let r = ingest(stick);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("published 1 report") && r.stdout.contains("test/gw-1"), "{r:?}");
    let seen = fleet_cmd(&["status", "--json"]);
    assert_eq!(seen.code, 0, "{seen:?}");
    let v = seen.json();
    let d = &v["devices"][0];
    assert_eq!((d["device_id"].as_str(), d["via"].as_str()), (Some("gw-1"), Some("import")), "{v}");
    assert_eq!(d["reported_at"], report["written_at"]);
    assert_eq!(d["revision"], v2.as_str());
    assert_eq!(d["availability"], "import");
    assert_eq!(d["attention"], false, "a site known by its report is not a broken one: {d}");
    assert_eq!(v["counts"]["via_import"], 1);
    assert_eq!(v["counts"]["missing_availability"], 0, "{v}");
    let text = fleet_cmd(&["status"]);
    assert!(text.stdout.contains("1 known by a stick's report"), "{text:?}");
    // Ingested twice: the broker holds it already.
    let again = ingest(stick);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("published 0 reports") && again.stderr.contains("holds"), "{again:?}");
    // The gateway came online since and sent a newer status itself: a late
    // ingest of the old report does not overwrite it.
    let mut own = d.clone();
    own["via"] = serde_json::Value::Null;
    own["last_sync"] = "2099-01-01T00:00:00Z".into();
    own["phase"] = "synced".into();
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1", "-r"])
        .args(["-t", "tend/v1/test/gw-1/status", "-m", &own.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let late = ingest(stick);
    assert!(late.stdout.contains("published 0 reports") && late.stderr.contains("its own newer status"), "{late:?}");
    let v = fleet_cmd(&["status", "--json"]).json();
    assert_eq!(v["devices"][0]["last_sync"], "2099-01-01T00:00:00Z", "{v}");
    drop(broker);

    // The same file again: nothing to do.
    let again = s.import(&file, &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("unchanged"), "{again:?}");
    assert_eq!(s.history().len(), h.len());

    // The network returns, its branch older than the import (a mirror
    // behind, a push not made yet): not applied, the source is behind.
    s.fleet.reset_hard(&s.v1);
    s.network_back();
    let older = s.gw.sync_ok();
    assert_eq!(older["action"], "behind", "{older}");
    assert_eq!(older["commit"], v2.as_str(), "{older}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 2\n", "{older:?}");
    let status = s.gw.tend(&["status", "--json"]).json();
    assert_eq!(status["source"], "behind", "{status}");
    assert_eq!(status["revision"], v2.as_str());
    assert!(status["error"].as_str().unwrap().contains("behind"), "{status}");
    assert_eq!(s.history().len(), h.len());
    // The branch moves on from the import, two commits (so a depth-1 fetch
    // does not reach back to it): applied.
    s.fleet.reset_hard(&v2);
    bundle(&s.fleet, "3", "[\"true\"]", Some(SITE_IMAGE));
    commit_signed(&s.fleet, &s.key, "v3");
    bundle(&s.fleet, "4", "[\"true\"]", Some(SITE_IMAGE));
    let v4 = commit_signed(&s.fleet, &s.key, "v4");
    let newer = s.gw.sync_ok();
    assert_eq!(newer["action"], "applied", "{newer}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 4\n");
    let status = s.gw.tend(&["status", "--json"]).json();
    assert_eq!(status["revision"], v4.as_str());
    assert_eq!(status["source"], "ok", "{status}");
}

/// Acceptance 1: a revision from a stick that fails its health gate is
/// rolled back and quarantined like a fetched one.
#[test]
fn a_failing_revision_from_a_stick_is_rolled_back_and_quarantined() {
    let s = site("");
    bundle(&s.fleet, "2", "[\"false\"]", None);
    let v2 = commit_signed(&s.fleet, &s.key, "v2 fails its check");
    let file = s.export("stick", &[]);
    let r = s.import(&file, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("unhealthy"), "{r:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 1\n", "rolled back");
    let status = s.gw.tend(&["status", "--json"]).json();
    assert_eq!(status["phase"], "rolled_back", "{status}");
    assert_eq!(status["revision"], s.v1.as_str());
    let h = s.history();
    assert_eq!(h[0]["revision"], v2.as_str());
    assert_eq!(h[0]["bad"], true, "{h:?}");
    // Quarantined: the same file again is refused at once.
    let again = s.import(&file, &[]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("quarantined"), "{again:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 1\n");
}

/// The offsets of a tar member's data: (offset, size).
fn member(file: &Path, name: &str) -> (u64, u64) {
    let mut a = tar::Archive::new(std::fs::File::open(file).unwrap());
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            return (e.raw_file_position(), e.size());
        }
    }
    panic!("{name} not in {file:?}");
}

/// A copy of `file` with one byte changed at `at`.
fn flipped(file: &Path, at: u64, to: &Path) -> PathBuf {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(to, bytes).unwrap();
    to.to_path_buf()
}

/// A copy of `file` without the member `drop`, the others as they are.
fn without(file: &Path, drop: &str, to: &Path) -> PathBuf {
    rebuilt(file, to, |name, _| (name != drop).then(Vec::new))
}

/// A copy of `file` whose members `change` may replace (`Some(bytes)`,
/// empty: unchanged) or drop (`None`).
fn rebuilt(file: &Path, to: &Path, change: impl Fn(&str, &[u8]) -> Option<Vec<u8>>) -> PathBuf {
    let mut a = tar::Archive::new(std::fs::File::open(file).unwrap());
    let mut b = tar::Builder::new(std::fs::File::create(to).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut h = e.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        let Some(new) = change(&name, &data) else { continue };
        if !new.is_empty() {
            data = new;
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.finish().unwrap();
    to.to_path_buf()
}

/// Acceptance 2: each bad file is refused with one clear error, and
/// nothing of it stays: files, history, the repository's packs, the
/// runtime's images. `--allow-downgrade` takes a downgrade.
#[test]
fn bad_files_are_refused_whole_and_leave_nothing_behind() {
    let s = site("");
    bundle(&s.fleet, "2", "[\"true\"]", Some(SITE_IMAGE));
    let v2 = commit_signed(&s.fleet, &s.key, "v2");
    let good = s.export("stick", &[]);
    let bad = s.tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let git_dir = s.gw.state.join("git");
    let files = s.gw.snapshot();
    let history = s.history();
    let packs = pack_count(&git_dir);
    let images = s.images();
    let refused = |file: &Path, why: &str| {
        let r = s.import(file, &[]);
        assert_eq!(r.code, 1, "{file:?}: {r:?}");
        let errors: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(errors.len() == 1 && errors[0].contains(why), "{file:?}: expected {why:?}: {r:?}");
        assert_eq!(s.gw.snapshot(), files, "{file:?}: files changed");
        assert_eq!(s.history(), history, "{file:?}: history changed");
        assert_eq!(pack_count(&git_dir), packs, "{file:?}: a pack stayed");
        assert_eq!(s.images(), images, "{file:?}: an image stayed");
    };

    refused(&without(&good, "manifest.json.sig", &bad.join("unsigned.tend")), "unsigned");
    // Signed by a key the gateway does not list.
    let (other, _) = ssh_key(s.tmp.path(), "stranger");
    let sign = Command::new(tend_bin())
        .args(["fleet", "export", "--fleet", "test", "--repo"])
        .arg(&s.fleet.dir)
        .arg("--key")
        .arg(&other)
        .arg("-o")
        .arg(bad.join("stranger.tend"))
        .args(["--socket", &s.operator.url()])
        .output()
        .unwrap();
    assert!(sign.status.success(), "{sign:?}");
    refused(&bad.join("stranger.tend"), "which is not in");
    let size = std::fs::metadata(&good).unwrap().len();
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(bad.join("truncated.tend"), &bytes[..(size / 2) as usize]).unwrap();
    refused(&bad.join("truncated.tend"), "truncated");
    let (at, len) = member(&good, "repo.bundle");
    refused(&flipped(&good, at + len / 2, &bad.join("bundle-byte.tend")), "repo.bundle: does not match");
    let (at, len) = member(&good, "images.tar");
    refused(&flipped(&good, at + len / 2, &bad.join("image-byte.tend")), "images.tar: does not match");
    let (at, _) = member(&good, "manifest.json");
    refused(&flipped(&good, at + 30, &bad.join("manifest-byte.tend")), "does not verify");

    // Signed by the trusted key, every part intact, but an image id the
    // archive does not have: loaded, found wrong, removed again.
    let wrong = bad.join("wrong-id.tend");
    let (at, len) = member(&good, "manifest.json");
    let manifest = &std::fs::read(&good).unwrap()[at as usize..(at + len) as usize];
    let mut m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    m["images"][0]["id"] = format!("sha256:{}", "0".repeat(64)).into();
    let edited = bad.join("manifest.json");
    std::fs::write(&edited, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let _ = std::fs::remove_file(bad.join("manifest.json.sig"));
    run(Command::new("ssh-keygen").args(["-q", "-Y", "sign", "-n", "tend-export", "-f"]).arg(&s.key).arg(&edited));
    let sig = std::fs::read(bad.join("manifest.json.sig")).unwrap();
    let text = std::fs::read(&edited).unwrap();
    rebuilt(&good, &wrong, |name, _| match name {
        "manifest.json" => Some(text.clone()),
        "manifest.json.sig" => Some(sig.clone()),
        _ => Some(Vec::new()),
    });
    refused(&wrong, "but the manifest says sha256:000");
    // Again with the reference already here, naming another image: the
    // refused load moved it, and it is moved back.
    run(s.gateway.podman().args(["tag", TEST_IMAGE, SITE_IMAGE]));
    let own = image_id(&s.gateway, SITE_IMAGE);
    assert_ne!(own, image_id(&s.operator, SITE_IMAGE));
    let images = s.images();
    let r = s.import(&wrong, &[]);
    assert!(r.code == 1 && r.stderr.contains("but the manifest says"), "{r:?}");
    assert_eq!(image_id(&s.gateway, SITE_IMAGE), own, "the reference was not put back");
    assert_eq!(s.images(), images);

    // Not enough free space: [apply].min_free above what the disk has.
    let config = std::fs::read_to_string(&s.gw.config).unwrap();
    std::fs::write(&s.gw.config, config.replace("[apply]\n", "[apply]\nmin_free = \"1000TiB\"\n")).unwrap();
    refused(&good, "not enough free space");
    std::fs::write(&s.gw.config, &config).unwrap();

    // The good file is applied; an export of v1 is then a downgrade.
    let r = s.import(&good, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 2\n");
    s.fleet.reset_hard(&s.v1);
    let old = s.export("old", &[]);
    let files = s.gw.snapshot();
    let r = s.import(&old, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("does not descend from") && r.stderr.contains("--allow-downgrade"), "{r:?}");
    assert_eq!(s.gw.snapshot(), files);
    assert_eq!(s.gw.tend(&["status", "--json"]).json()["revision"], v2.as_str());
    let r = s.import(&old, &["--allow-downgrade"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 1\n");
}

/// An export for other devices or another fleet is skipped, not refused;
/// a thin export `--since` the gateway's revision is small and applies.
#[test]
fn thin_exports_and_files_for_other_gateways() {
    let s = site("");
    bundle(&s.fleet, "2", "[\"true\"]", None);
    commit_signed(&s.fleet, &s.key, "v2");
    s.fleet.write("devices/gw-2/files/etc/myapp/app.conf", "other\n");
    commit_signed(&s.fleet, &s.key, "gw-2");
    let other = s.export("other", &["--devices", "gw-2"]);
    let r = s.import(&other, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("skipped"), "{r:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 1\n");
    let full = s.export("full", &[]);
    let thin = s.export("thin", &["--since", &s.v1]);
    assert!(std::fs::metadata(&thin).unwrap().len() < std::fs::metadata(&full).unwrap().len());
    let r = s.import(&thin, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("applied"), "{r:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 2\n");
    // The network returns, the branch where the import is: nothing applied
    // again.
    let mut s = s;
    let records = s.history().len();
    s.network_back();
    let same = s.gw.sync_ok();
    assert_eq!(same["action"], "unchanged", "{same}");
    assert_eq!(s.history().len(), records);
    assert_eq!(s.gw.tend(&["status", "--json"]).json()["source"], "ok");
    // A glob that matches nothing is an error of the export.
    let r: Run = Command::new(tend_bin())
        .args(["fleet", "export", "--repo"])
        .arg(&s.fleet.dir)
        .args(["--devices", "nope-*", "--key"])
        .arg(&s.key)
        .arg("-o")
        .arg(s.tmp.path())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--devices \"nope-*\" matches none"), "{r:?}");
}

/// With the daemon running, `tend import` goes through it (the store is
/// the daemon's): applied, in the history, and a refusal answered as one
/// error; the daemon keeps running.
#[test]
fn an_import_goes_through_the_running_daemon() {
    let s = site("");
    bundle(&s.fleet, "2", "[\"true\"]", None);
    let v2 = commit_signed(&s.fleet, &s.key, "v2");
    let file = s.export("stick", &[]);
    let daemon = s.gw.start_daemon_logging("info");
    let bad = s.tmp.path().join("truncated.tend");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 700]).unwrap();
    let r = s.import(&bad, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("truncated"), "{r:?}");
    let r = s.import(&file, &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["files"][0]["outcome"], "applied", "{v}");
    assert_eq!(v["files"][0]["signer"], "ops@example.com", "{v}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 2\n");
    let status = s.gw.tend(&["status", "--json"]).json();
    assert_eq!(status["revision"], v2.as_str(), "{status}");
    assert!(daemon.log_text().contains("importing"), "{}", daemon.log_text());
    let (code, _) = daemon.terminate(std::time::Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

/// A bundle the fleet shares (a [source].path without {device_id}): the
/// manifest names the glob of the devices, each gateway matches its own id.
#[test]
fn an_export_of_a_shared_bundle_names_a_glob() {
    let s = site("");
    bundle(&s.fleet, "2", "[\"true\"]", None);
    commit_signed(&s.fleet, &s.key, "v2");
    let elsewhere = s.export("elsewhere", &["--path", "devices/gw-1", "--devices", "site-*"]);
    let r = s.import(&elsewhere, &[]);
    assert!(r.code == 0 && r.stdout.contains("skipped"), "{r:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 1\n");
    let shared = s.export("shared", &["--path", "devices/gw-1", "--devices", "gw-*"]);
    let r = s.import(&shared, &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["files"][0]["outcome"], "applied", "{r:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 2\n");
}

/// The rollout policy holds for an import as for a fetched commit: a
/// revision whose wave is not due waits (the status says the circuit
/// breaker cannot count without a broker), and once due it is applied by
/// the next sync although the source is still unreachable: the import is
/// the tip this gateway has.
#[test]
fn an_import_waits_for_its_wave_and_is_applied_offline_when_due() {
    let s = site("");
    bundle(&s.fleet, "2", "[\"true\"]", None);
    let toml = std::fs::read_to_string(s.fleet.dir.join("devices/gw-1/tend.toml")).unwrap();
    s.fleet.write(
        "devices/gw-1/tend.toml",
        format!("{toml}\n[rollout]\nmax_failed = 1\nwaves = [{{ name = \"all\", percent = 100, after = \"15s\" }}]\n"),
    );
    let v2 = commit_signed(&s.fleet, &s.key, "v2, its wave 15 s after the commit");
    let file = s.export("stick", &[]);
    let r = s.import(&file, &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["files"][0]["outcome"], "waiting", "{r:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 1\n");
    let status = s.gw.tend(&["status", "--json"]).json();
    assert_eq!((status["phase"].as_str(), status["waiting_for"].as_str()), (Some("waiting"), Some("wave")), "{status}");
    assert!(status["waiting_detail"].as_str().unwrap().contains("circuit breaker off"), "{status}");
    let due: jiff::Timestamp = status["due_at"].as_str().unwrap().parse().unwrap();
    // Until the wave is due (tend's own figure), and a second past it.
    while jiff::Timestamp::now() < due + jiff::SignedDuration::from_secs(1) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let r = s.gw.tend(&["sync", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["action"], "applied", "{r:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "version = 2\n");
    let status = s.gw.tend(&["status", "--json"]).json();
    assert_eq!(
        (status["revision"].as_str(), status["source"].as_str()),
        (Some(v2.as_str()), Some("unreachable")),
        "{status}"
    );
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(s.history()[0]["from"], format!("import {name}"));
}

/// The export's own errors, one line each and no file written: a key
/// ssh-keygen cannot sign with, an image that is neither here nor pullable.
#[test]
fn an_export_that_cannot_be_made_says_why_and_writes_nothing() {
    let s = site("");
    bundle(&s.fleet, "2", "[\"true\"]", Some("localhost/tend-missing:1"));
    commit_signed(&s.fleet, &s.key, "v2 names an image nobody has");
    let out = s.tmp.path().join("nothing");
    std::fs::create_dir_all(&out).unwrap();
    let export = |key: &Path| -> Run {
        Command::new(tend_bin())
            .args(["fleet", "export", "--fleet", "test", "--repo"])
            .arg(&s.fleet.dir)
            .arg("--key")
            .arg(key)
            .arg("-o")
            .arg(&out)
            .args(["--socket", &s.operator.url()])
            .output()
            .unwrap()
            .into()
    };
    let r = export(&s.key);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("image localhost/tend-missing:1: not here, and"), "{r:?}");
    bundle(&s.fleet, "2", "[\"true\"]", None);
    commit_signed(&s.fleet, &s.key, "v2 without it");
    let not_a_key = s.tmp.path().join("not-a-key");
    std::fs::write(&not_a_key, "hello\n").unwrap();
    let r = export(&not_a_key);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("ssh-keygen could not sign with it"), "{r:?}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "a file was written");
}
