//! Issue 6: K3s manifests in a real auto-deploy directory. No API server can
//! run here, so `kubectl` is a FAKE: a script that records its arguments and
//! stdin, and fails while a flag file exists. It stands in for `k3s kubectl`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tend_e2e::{Fleet, Gateway};

struct FakeKubectl {
    script: PathBuf,
    log: PathBuf,
    fail_flag: PathBuf,
}

/// The fake kubectl: appends "ARGS: ..." and the stdin it got to `log`;
/// `rollout status` fails while `fail_flag` exists.
fn fake_kubectl(dir: &Path) -> FakeKubectl {
    let script = dir.join("fake-kubectl");
    let log = dir.join("kubectl.log");
    let fail_flag = dir.join("kubectl-fails");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# FAKE kubectl for tests: records its arguments and stdin.\necho \"ARGS: $*\" >> {log}\n\
             if [ \"$1\" = delete ]; then cat >> {log}; echo '--- end' >> {log}; fi\n\
             if [ \"$1\" = rollout ] && [ -e {flag} ]; then echo 'deployment not ready' >&2; exit 1; fi\nexit 0\n",
            log = log.display(),
            flag = fail_flag.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    FakeKubectl { script, log, fail_flag }
}

fn setup() -> (tempfile::TempDir, Fleet, Gateway, FakeKubectl, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let kubectl = fake_kubectl(tmp.path());
    let manifests = tmp.path().join("k3s-manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let gw = Gateway::new(
        tmp.path(),
        &fleet.url(),
        &format!(
            "[apply]\nhealth_timeout = \"4s\"\n[k3s]\nmanifests_dir = \"{}\"\nkubectl = [\"{}\"]\n",
            manifests.display(),
            kubectl.script.display()
        ),
    );
    (tmp, fleet, gw, kubectl, manifests)
}

const WEB: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: demo\nspec: {}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: shared\n";
const CONFIG: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n";

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn manifests_appear_keep_their_mtime_and_drift_is_repaired() {
    let (_tmp, fleet, gw, kubectl, dir) = setup();
    std::fs::write(dir.join("someone-elses.yaml"), "kind: keep\n").unwrap();
    fleet.write("devices/gw-1/k3s/apps/web.yaml", WEB).write("devices/gw-1/k3s/config.yaml", CONFIG);
    fleet.commit("k3s");
    let r = gw.sync_ok();
    assert_eq!(std::fs::read_to_string(dir.join("tend_apps__web.yaml")).unwrap(), WEB);
    assert_eq!(std::fs::read_to_string(dir.join("tend_config.yaml")).unwrap(), CONFIG);
    assert_eq!(r["checks"]["rollout deployment/web"], "pass", "{r}");
    let log = std::fs::read_to_string(&kubectl.log).unwrap();
    assert!(log.contains("ARGS: rollout status deployment/web --timeout=5s -n demo"), "{log}");

    // Unchanged manifests keep their mtime across syncs and new commits.
    let before = mtime(&dir.join("tend_config.yaml"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    gw.sync_ok();
    fleet.write("devices/gw-1/k3s/apps/web.yaml", WEB.replace("spec: {}", "spec: {replicas: 2}"));
    fleet.commit("web 2");
    gw.sync_ok();
    assert_eq!(mtime(&dir.join("tend_config.yaml")), before, "an unchanged manifest was rewritten");
    assert!(std::fs::read_to_string(dir.join("tend_apps__web.yaml")).unwrap().contains("replicas: 2"));

    // Edited and deleted behind tend's back: repaired.
    std::fs::write(dir.join("tend_config.yaml"), "tampered\n").unwrap();
    std::fs::remove_file(dir.join("tend_apps__web.yaml")).unwrap();
    gw.sync_ok();
    assert_eq!(std::fs::read_to_string(dir.join("tend_config.yaml")).unwrap(), CONFIG);
    assert!(dir.join("tend_apps__web.yaml").exists());
    assert_eq!(std::fs::read_to_string(dir.join("someone-elses.yaml")).unwrap(), "kind: keep\n");
}

#[test]
fn prune_deletes_exactly_the_objects_no_longer_declared() {
    let (_tmp, fleet, gw, kubectl, dir) = setup();
    fleet.write("devices/gw-1/k3s/apps/web.yaml", WEB).write(
        "devices/gw-1/k3s/config.yaml",
        format!("{CONFIG}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: shared\n"),
    );
    fleet.commit("both");
    gw.sync_ok();
    std::fs::write(&kubectl.log, "").unwrap();

    // web.yaml leaves the bundle: its file goes, its Deployment is deleted; the
    // Service "shared" is still declared by config.yaml, so it is not.
    fleet.remove("devices/gw-1/k3s/apps");
    fleet.commit("no web");
    gw.sync_ok();
    assert!(!dir.join("tend_apps__web.yaml").exists());
    let log = std::fs::read_to_string(&kubectl.log).unwrap();
    assert!(log.contains("ARGS: delete --ignore-not-found -f -"), "{log}");
    let stdin = log.split("ARGS: delete --ignore-not-found -f -").nth(1).unwrap();
    assert!(
        stdin.contains("kind: \"Deployment\"")
            && stdin.contains("name: \"web\"")
            && stdin.contains("namespace: \"demo\""),
        "{stdin}"
    );
    assert!(!stdin.contains("shared"), "an object still declared was deleted: {stdin}");
    assert_eq!(log.matches("ARGS: delete").count(), 1);
}

#[test]
fn invalid_manifests_are_rejected_naming_file_and_document() {
    for (content, needle) in [
        ("apiVersion: v1\nkind: [\n", "invalid YAML"),
        ("apiVersion: v1\nmetadata:\n  name: x\n", "document 1: missing kind"),
        (
            &format!("{CONFIG}---\napiVersion: v1\nkind: Secret\nmetadata: {{}}\n") as &str,
            "document 2 (Secret): missing metadata.name",
        ),
    ] {
        let (_tmp, fleet, gw, _kubectl, dir) = setup();
        fleet.write("devices/gw-1/files/etc/myapp/a", "a\n");
        fleet.commit("good");
        gw.sync_ok();
        let before = (gw.snapshot(), tend_e2e::snapshot(&dir));
        fleet.write("devices/gw-1/files/etc/myapp/a", "b\n").write("devices/gw-1/k3s/bad.yaml", content);
        fleet.commit("bad");
        let r = gw.tend(&["sync"]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("devices/gw-1/k3s/bad.yaml") && r.stderr.contains(needle), "{}", r.stderr);
        assert_eq!((gw.snapshot(), tend_e2e::snapshot(&dir)), before, "something was written");
    }
}

#[test]
fn a_rollout_that_never_becomes_ready_rolls_back() {
    let (_tmp, fleet, gw, kubectl, dir) = setup();
    fleet.write("devices/gw-1/k3s/config.yaml", CONFIG);
    let good = fleet.commit("good");
    gw.sync_ok();
    let before = tend_e2e::snapshot(&dir);
    std::fs::write(&kubectl.fail_flag, "").unwrap();
    fleet.write("devices/gw-1/k3s/apps/web.yaml", WEB);
    fleet.commit("web never ready");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("rollout deployment/web: not rolled out"), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("rolled back to {}", &good[..12])), "{}", r.stderr);
    assert_eq!(tend_e2e::snapshot(&dir), before, "the manifest directory is not back to last-known-good");
    // The rollback deleted the objects the bad revision's manifest declared.
    let log = std::fs::read_to_string(&kubectl.log).unwrap();
    assert!(log.contains("ARGS: delete --ignore-not-found -f -"), "{log}");
}

#[test]
fn kubectl_that_cannot_run_is_not_a_silent_pass() {
    let (_tmp, fleet, gw, _kubectl, _dir) = setup();
    let text = std::fs::read_to_string(&gw.config).unwrap();
    let text = text
        .lines()
        .map(|l| if l.starts_with("kubectl") { "kubectl = [\"/nonexistent/kubectl\"]" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&gw.config, text).unwrap();
    fleet.write("devices/gw-1/k3s/apps/web.yaml", WEB);
    fleet.commit("web");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot be run"), "{}", r.stderr);
    let s = gw.tend(&["status", "--json"]).json();
    assert!(s["error"].as_str().unwrap().contains("cannot be run"), "{s}");
}

#[test]
fn validate_and_dry_run_cover_manifests() {
    let (_tmp, fleet, gw, _kubectl, dir) = setup();
    fleet.write("devices/gw-1/k3s/config.yaml", CONFIG);
    fleet.commit("c");
    let dry = gw.tend(&["sync", "--dry-run"]);
    assert!(dry.stdout.contains("create  manifest tend_config.yaml"), "{}", dry.stdout);
    assert!(!dir.join("tend_config.yaml").exists());
    let bundle = fleet.dir.join("devices/gw-1");
    assert_eq!(gw.tend(&["validate", bundle.to_str().unwrap()]).code, 0);
    fleet.write("devices/gw-1/k3s/x.yaml", "a: &x 1\nb: *x\n");
    let v = gw.tend(&["validate", bundle.to_str().unwrap()]);
    assert_eq!(v.code, 1);
    assert!(v.stderr.contains("anchors and aliases"), "{}", v.stderr);
}
