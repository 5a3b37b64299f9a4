//! Issue 5: containers through a real Podman service started by the test, with
//! a test image built from busybox-static (no registry).

use tend_e2e::{Fleet, Gateway, Podman, TEST_IMAGE};

fn setup(extra: &str) -> (tempfile::TempDir, Podman, Fleet, Gateway) {
    let tmp = tempfile::tempdir().unwrap();
    let podman = Podman::start();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::new(
        tmp.path(),
        &fleet.url(),
        &format!("[apply]\nhealth_timeout = \"8s\"\n[containers]\nsocket = \"{}\"\n{extra}", podman.url()),
    );
    (tmp, podman, fleet, gw)
}

fn container(fleet: &Fleet, name: &str, body: &str) {
    fleet.write(
        &format!("devices/gw-1/containers/{name}.toml"),
        format!("image = \"{TEST_IMAGE}\"\ncommand = [\"sleep\", \"3600\"]\nnetwork = \"host\"\n{body}"),
    );
}

fn id(p: &Podman, name: &str) -> Option<String> {
    p.inspect(name).map(|v| v["Id"].as_str().unwrap().to_owned())
}

fn label(p: &Podman, name: &str, key: &str) -> Option<String> {
    p.inspect(name).and_then(|v| v["Config"]["Labels"][key].as_str().map(str::to_owned))
}

fn running(p: &Podman, name: &str) -> bool {
    p.inspect(name).is_some_and(|v| v["State"]["Running"] == true)
}

#[test]
fn create_update_drift_and_prune() {
    let (_tmp, podman, fleet, gw) = setup("");
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "x\n");
    container(&fleet, "web", "env = { MODE = \"a\" }\n");
    let c1 = fleet.commit("web");
    let r = gw.sync_ok();
    assert!(r["operations"].as_array().unwrap().iter().any(|o| o == "create  container web"), "{r}");
    assert!(running(&podman, "web"));
    assert_eq!(label(&podman, "web", "io.tend.managed").as_deref(), Some("true"));
    assert_eq!(label(&podman, "web", "io.tend.revision").as_deref(), Some(c1.as_str()));
    let first_id = id(&podman, "web").unwrap();
    let first_hash = label(&podman, "web", "io.tend.spec").unwrap();

    // No change: nothing touched.
    let r = gw.sync_ok();
    assert_eq!(r["operations"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(id(&podman, "web").unwrap(), first_id);

    // A spec change replaces it, with a new hash label.
    container(&fleet, "web", "env = { MODE = \"b\" }\n");
    fleet.commit("web b");
    gw.sync_ok();
    let second_id = id(&podman, "web").unwrap();
    assert_ne!(second_id, first_id);
    assert_ne!(label(&podman, "web", "io.tend.spec").unwrap(), first_hash);
    let env = podman.inspect("web").unwrap()["Config"]["Env"].to_string();
    assert!(env.contains("MODE=b"), "{env}");

    // Drift: stopped by hand -> started; removed by hand -> recreated.
    tend_e2e::run(podman.podman().args(["stop", "-t", "0", "web"]));
    assert!(!running(&podman, "web"));
    gw.sync_ok();
    assert!(running(&podman, "web"));
    tend_e2e::run(podman.podman().args(["rm", "-f", "-t", "0", "web"]));
    gw.sync_ok();
    assert!(running(&podman, "web"));

    // Prune: no longer declared -> removed.
    fleet.remove("devices/gw-1/containers/web.toml");
    fleet.commit("no web");
    gw.sync_ok();
    assert!(podman.inspect("web").is_none());
}

#[test]
fn an_unlabelled_container_with_a_declared_name_is_left_alone() {
    let (_tmp, podman, fleet, gw) = setup("");
    tend_e2e::run(podman.podman().args([
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "host",
        TEST_IMAGE,
        "sleep",
        "3600",
    ]));
    let theirs = id(&podman, "web").unwrap();
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "x\n");
    container(&fleet, "web", "");
    fleet.commit("web");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("container web: a container of that name exists that tend did not create"),
        "{}",
        r.stderr
    );
    assert_eq!(id(&podman, "web").unwrap(), theirs, "tend touched a container it did not create");
    assert!(running(&podman, "web"));
    assert!(gw.snapshot().is_empty(), "files were written although the revision could not be applied whole");
}

#[test]
fn a_failing_container_healthcheck_rolls_back_containers_and_files() {
    let (_tmp, podman, fleet, gw) = setup("");
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "v1\n");
    container(&fleet, "web", "env = { V = \"1\" }\n[health]\ncommand = [\"true\"]\ninterval = \"1s\"\n");
    fleet.commit("v1");
    let r = gw.sync_ok();
    assert_eq!(r["checks"]["container web"], "pass", "{r}");
    let good_hash = label(&podman, "web", "io.tend.spec").unwrap();
    let before = gw.snapshot();

    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "v2\n");
    container(&fleet, "web", "env = { V = \"2\" }\n[health]\ncommand = [\"false\"]\ninterval = \"1s\"\nretries = 1\n");
    fleet.commit("v2");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("container web") && r.stderr.contains("rolled back"), "{}", r.stderr);
    assert!(running(&podman, "web"));
    assert_eq!(
        label(&podman, "web", "io.tend.spec").unwrap(),
        good_hash,
        "the previous container spec is not running again"
    );
    assert_eq!(gw.snapshot(), before);
    assert_eq!(gw.tend(&["status", "--json"]).json()["phase"], "rolled_back");
}

#[test]
fn a_privileged_container_without_local_permission_is_rejected_whole() {
    let (_tmp, podman, fleet, gw) = setup("");
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "v1\n");
    fleet.commit("v1");
    gw.sync_ok();
    let before = gw.snapshot();
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "v2\n");
    container(&fleet, "root", "privileged = true\n");
    fleet.commit("privileged");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("devices/gw-1/containers/root.toml") && r.stderr.contains("allow_privileged"),
        "{}",
        r.stderr
    );
    assert!(podman.inspect("root").is_none());
    assert_eq!(gw.snapshot(), before);
}

#[test]
fn the_runtime_stopped_is_a_transient_error_and_nothing_is_half_applied() {
    let (_tmp, mut podman, fleet, gw) = setup("");
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "v1\n");
    fleet.commit("v1");
    gw.sync_ok();
    let before = gw.snapshot();
    podman.stop_service();
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "v2\n");
    container(&fleet, "web", "");
    let c2 = fleet.commit("web");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("container runtime at") && r.stderr.contains("podman.sock"), "{}", r.stderr);
    assert_eq!(gw.snapshot(), before, "files changed although the containers could not be");
    let runtime = || gw.tend(&["status", "--json"]).json()["inventory"]["runtime"].clone();
    assert_eq!(runtime(), serde_json::Value::Null, "no runtime answered yet");
    // Transient: not quarantined; once the service is back the next sync converges.
    podman.start_service();
    let r = gw.sync_ok();
    assert_eq!(r["commit"], c2);
    assert!(running(&podman, "web"));
    assert_eq!(gw.read("/etc/myapp/app.conf"), "v2\n");
    // The status's inventory has the runtime tend talked to (issue 26).
    let out = podman.podman().args(["version", "--format", "{{.Server.Version}}"]).output().unwrap();
    let version = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(!version.is_empty());
    assert_eq!(runtime(), format!("podman {version}"));
}

#[test]
fn validate_and_dry_run_cover_containers() {
    let (_tmp, podman, fleet, gw) = setup("");
    container(&fleet, "web", "");
    fleet.commit("web");
    let dir = fleet.dir.join("devices/gw-1");
    let v = gw.tend(&["validate", dir.to_str().unwrap(), "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    let dry = gw.tend(&["sync", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("create  container web"), "{}", dry.stdout);
    assert!(podman.inspect("web").is_none(), "dry run created a container");
    fleet.write("devices/gw-1/containers/bad name.toml", "image = \"x\"\n");
    fleet.commit("bad");
    let v = gw.tend(&["validate", dir.to_str().unwrap()]);
    assert_eq!(v.code, 1);
    assert!(v.stderr.contains("not a valid container name"), "{}", v.stderr);
}
