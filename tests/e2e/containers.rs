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

/// When the runtime says the container's current run started.
fn started_at(p: &Podman, name: &str) -> String {
    p.inspect(name).unwrap()["State"]["StartedAt"].as_str().unwrap().to_owned()
}

/// Seconds between two of Podman's RFC 3339 times (with a zone offset).
fn seconds_between(earlier: &str, later: &str) -> f64 {
    let t = |s: &str| -> f64 {
        let out = std::process::Command::new("date").args(["-d", s, "+%s.%N"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
    };
    t(later) - t(earlier)
}

fn operations(r: &serde_json::Value) -> Vec<String> {
    r["operations"].as_array().unwrap().iter().map(|o| o.as_str().unwrap().to_owned()).collect()
}

#[test]
fn dependencies_start_first_stop_last_and_the_order_holds_after_the_runtime_restarts_them() {
    let (_tmp, podman, fleet, gw) = setup("");
    // db turns healthy 3 s after each start (a restart too).
    let db = |env: &str| {
        fleet.write(
            "devices/gw-1/containers/db.toml",
            format!(
                "image = \"{TEST_IMAGE}\"\ncommand = [\"sh\", \"-c\", \"rm -f /ready; sleep 3; : > /ready; exec sleep 3600\"]\nnetwork = \"host\"\nenv = {{ V = \"{env}\" }}\n[health]\ncommand = [\"test\", \"-f\", \"/ready\"]\ninterval = \"1s\"\n"
            ),
        )
    };
    db("1");
    container(&fleet, "api", "depends_on = [\"db\"]\nrecreate_with_dependencies = true\n");
    container(&fleet, "web", "depends_on = [\"api\"]\n");
    fleet.commit("web -> api -> db");
    let r = gw.sync_ok();
    let ops = operations(&r);
    assert_eq!(ops, ["create  container db", "create  container api", "create  container web"], "{r}");
    // In the runtime's own times: api started once db was healthy, web after api.
    let waited = seconds_between(&started_at(&podman, "db"), &started_at(&podman, "api"));
    assert!(waited >= 3.0, "api started {waited:.1} s after db, before db was healthy");
    assert!(seconds_between(&started_at(&podman, "api"), &started_at(&podman, "web")) > 0.0);
    assert_eq!(label(&podman, "web", "io.tend.depends_on").as_deref(), Some("api"));

    // A cycle is rejected naming its chain and the file, and nothing changes.
    let ids: Vec<Option<String>> = ["db", "api", "web"].iter().map(|n| id(&podman, n)).collect();
    fleet.write(
        "devices/gw-1/containers/db.toml",
        format!(
            "image = \"{TEST_IMAGE}\"\ncommand = [\"sleep\", \"3600\"]\nnetwork = \"host\"\ndepends_on = [\"web\"]\n"
        ),
    );
    fleet.commit("a cycle");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("containers/") && r.stderr.contains("depends_on cycle: "), "{}", r.stderr);
    let chain = r.stderr.split("depends_on cycle: ").nth(1).unwrap();
    assert!(
        ["api -> db -> web -> api", "db -> web -> api -> db", "web -> api -> db -> web"]
            .iter()
            .any(|c| chain.starts_with(c)),
        "{}",
        r.stderr
    );
    let v = gw.tend(&["validate", &fleet.dir.join("devices/gw-1").to_string_lossy()]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stderr.contains("depends_on cycle"), "{}", v.stderr);
    assert_eq!(["db", "api", "web"].iter().map(|n| id(&podman, n)).collect::<Vec<_>>(), ids);

    // A dependency that is not in the bundle is named too.
    container(&fleet, "db", "depends_on = [\"cache\"]\n");
    fleet.commit("a missing dependency");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("containers/db.toml")
            && r.stderr.contains("depends_on: \"cache\" is not a container of this bundle"),
        "{}",
        r.stderr
    );

    // The runtime restarts everything in its own order (as a reboot
    // does): db last. The next enforcement restarts api after db is
    // healthy, then web after api.
    db("1");
    fleet.commit("db as before");
    let r = gw.sync_ok();
    assert!(operations(&r).is_empty(), "{r}");
    tend_e2e::run(podman.podman().args(["restart", "-t", "0", "web"]));
    tend_e2e::run(podman.podman().args(["restart", "-t", "0", "api"]));
    tend_e2e::run(podman.podman().args(["restart", "-t", "0", "db"]));
    let r = gw.sync_ok();
    assert_eq!(
        operations(&r),
        [
            "restart container api (it started before its dependency db)",
            "restart container web (it started before its dependency api)"
        ],
        "{r}"
    );
    let waited = seconds_between(&started_at(&podman, "db"), &started_at(&podman, "api"));
    assert!(waited >= 3.0, "api restarted {waited:.1} s after db, before db was healthy");
    assert!(seconds_between(&started_at(&podman, "api"), &started_at(&podman, "web")) > 0.0);
    // And then the order stands: nothing to do.
    assert!(operations(&gw.sync_ok()).is_empty());

    // db replaced: api, which asks for it, is recreated; web only restarted.
    let (api_id, web_id) = (id(&podman, "api"), id(&podman, "web"));
    db("2");
    fleet.commit("db 2");
    let r = gw.sync_ok();
    assert_eq!(
        operations(&r),
        [
            "replace container db (its spec changed)",
            "replace container api (its dependency db was replaced)",
            "restart container web (it started before its dependency api)"
        ],
        "{r}"
    );
    assert_ne!(id(&podman, "api"), api_id);
    assert_eq!(id(&podman, "web"), web_id);
    assert!(seconds_between(&started_at(&podman, "db"), &started_at(&podman, "api")) >= 3.0);

    // Pruned: dependents removed first.
    for n in ["db", "api", "web"] {
        fleet.remove(&format!("devices/gw-1/containers/{n}.toml"));
    }
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "x\n");
    fleet.commit("none");
    let r = gw.sync_ok();
    assert_eq!(
        operations(&r).into_iter().filter(|o| o.contains("container")).collect::<Vec<_>>(),
        ["remove  container web", "remove  container api", "remove  container db"],
        "{r}"
    );
}

#[test]
fn a_dependency_that_never_turns_healthy_fails_the_revision_and_its_dependent_is_never_started() {
    let (_tmp, podman, fleet, gw) = setup("");
    container(&fleet, "db", "[health]\ncommand = [\"false\"]\ninterval = \"1s\"\n");
    container(&fleet, "api", "depends_on = [\"db\"]\n");
    fleet.commit("db never healthy");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(
            "container api not started: its dependency db is not healthy (its health command exited with 1) after 8s"
        ),
        "{}",
        r.stderr
    );
    assert!(podman.inspect("api").is_none(), "api was created");
    let s = gw.tend(&["status", "--json"]).json();
    // Rolled back to before the first revision: db is gone too.
    assert_eq!(s["phase"], "rolled_back", "{s}");
    assert!(podman.inspect("db").is_none(), "db was left behind");
}

/// SPEC §3, 9: an image the container storage cannot hold (with
/// `[apply].min_free` kept) is refused before its pull starts: the registry
/// is asked for the manifest, never for a layer. One that fits is pulled.
#[test]
fn an_image_larger_than_the_container_storage_can_hold_is_refused_before_its_pull() {
    let registry = tend_e2e::Registry::start();
    // Images are built and pushed from a Podman store of their own.
    let builder = tempfile::tempdir().unwrap();
    tend_e2e::podman_settings(builder.path());
    let rootfs = builder.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|b| std::path::Path::new(b).exists()).unwrap();
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let push = |name: &str| {
        let tar = builder.path().join("rootfs.tar");
        tend_e2e::run(std::process::Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg("."));
        let local = format!("localhost/{name}");
        tend_e2e::run(tend_e2e::podman_in(builder.path()).args(["import", "-q"]).arg(&tar).arg(&local));
        let remote = format!("{}/tend/{name}", registry.addr);
        tend_e2e::run(tend_e2e::podman_in(builder.path()).args(["push", "-q", "--tls-verify=false", &local, &remote]));
        remote
    };
    let small = push("small:1");
    // 20 MiB that do not compress.
    let mut noise = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), 20 << 20),
        &mut noise,
    )
    .unwrap();
    std::fs::write(rootfs.join("noise"), noise).unwrap();
    let big = push("big:1");

    let podman = Podman::start_with(Some("32m"), Some(&registry.addr));
    let fleet = Fleet::new(podman.dir.path(), "fleet");
    let gw = Gateway::new(
        podman.dir.path(),
        &fleet.url(),
        &format!(
            "[apply]\nhealth_timeout = \"8s\"\nmin_free = \"1MiB\"\n[containers]\nsocket = \"{}\"\n",
            podman.url()
        ),
    );
    let spec = |image: &str| format!("image = \"{image}\"\ncommand = [\"sleep\", \"3600\"]\nnetwork = \"host\"\n");
    fleet.write("devices/gw-1/containers/app.toml", spec(&big));
    fleet.commit("the big image");
    // What the registry is asked from here on (the pushes are logged too).
    let pushed = registry.log_text().len();
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    let storage = podman.dir.path().join("storage");
    assert!(
        r.stderr.contains(&format!(
            "not enough free space on the file system at {} (the container storage)",
            storage.display()
        )) && r.stderr.contains("[apply].min_free keeps 1MiB"),
        "{}",
        r.stderr
    );
    // 21 MiB to download (busybox and the noise): three times that, with
    // the layers unpacked.
    let writes = r.stderr.split("this revision writes ").nth(1).unwrap();
    assert!(writes.starts_with("63.") || writes.starts_with("62."), "{}", r.stderr);
    let log = registry.log_text()[pushed..].to_owned();
    assert!(log.contains("http.request.uri=/v2/tend/big/manifests/1"), "the registry was not asked: {log}");
    assert!(!log.contains("/v2/tend/big/blobs/"), "a layer of the big image was pulled: {log}");
    assert!(podman.inspect("app").is_none());

    // One that fits is pulled from the same registry, and runs.
    fleet.write("devices/gw-1/containers/app.toml", spec(&small));
    fleet.commit("the small image");
    gw.sync_ok();
    assert!(running(&podman, "app"));
    assert!(registry.log_text()[pushed..].contains("http.request.method=GET"));
    assert!(registry.log_text()[pushed..].contains("/v2/tend/small/blobs/"));
}
