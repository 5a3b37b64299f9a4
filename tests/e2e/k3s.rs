//! Issues 6 and 12: K3s manifests in a real auto-deploy directory. No API server
//! can run here: `kubectl` is a FAKE and the K3s deploy controller's rules on
//! the directory are checked by a FAKE of it (both in `tests/support/k3s.rs`),
//! after every sync.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tend_e2e::k3s::{FakeKubectl, k3s_files, k3s_refusals, prev_release_bin};
use tend_e2e::{Fleet, Gateway};

fn setup_with(extra: &str) -> (tempfile::TempDir, Fleet, Gateway, FakeKubectl, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let manifests = tmp.path().join("k3s-manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let kubectl = FakeKubectl::new(tmp.path(), &manifests);
    let gw = Gateway::new(
        tmp.path(),
        &fleet.url(),
        &format!(
            "[apply]\nhealth_timeout = \"4s\"\n[k3s]\nmanifests_dir = \"{}\"\nkubectl = [\"{}\"]\n{extra}",
            manifests.display(),
            kubectl.script.display()
        ),
    );
    (tmp, fleet, gw, kubectl, manifests)
}

fn setup() -> (tempfile::TempDir, Fleet, Gateway, FakeKubectl, PathBuf) {
    setup_with("")
}

const WEB: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: demo\nspec: {}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: shared\n";
const CONFIG: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n";

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

/// The one file in `dir` whose name starts with `prefix`; K3s must take
/// everything in `dir`.
fn file(dir: &Path, prefix: &str) -> PathBuf {
    assert_eq!(k3s_refusals(dir), Vec::<String>::new(), "K3s would refuse files in {}", dir.display());
    let found: Vec<PathBuf> =
        k3s_files(dir).into_iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix)).collect();
    assert_eq!(found.len(), 1, "{prefix}*: {found:?}");
    found.into_iter().next().unwrap()
}

#[test]
fn manifests_appear_under_addon_names_k3s_accepts_keep_their_mtime_and_drift_is_repaired() {
    let (_tmp, fleet, gw, kubectl, dir) = setup();
    std::fs::write(dir.join("someone-elses.yaml"), "kind: keep\n").unwrap();
    fleet.write("devices/gw-1/k3s/apps/web.yaml", WEB).write("devices/gw-1/k3s/config.yaml", CONFIG);
    fleet.commit("k3s");
    let r = gw.sync_ok();
    let web = file(&dir, "tend-apps-web-");
    let config = file(&dir, "tend-config-");
    assert_eq!(std::fs::read_to_string(&web).unwrap(), WEB);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), CONFIG);
    assert_eq!(r["checks"]["rollout demo/deployment/web"], "pass", "{r}");
    // The summary counts manifests.
    assert_eq!((r["manifests"].as_u64(), r["created"].as_u64()), (Some(2), Some(2)), "{r}");
    let log = kubectl.log_text();
    assert!(log.contains("ARGS: rollout status deployment.apps/web --timeout=5s -n demo"), "{log}");

    // Unchanged manifests keep their mtime across syncs and new commits.
    let before = mtime(&config);
    std::thread::sleep(std::time::Duration::from_millis(20));
    gw.sync_ok();
    fleet.write("devices/gw-1/k3s/apps/web.yaml", WEB.replace("spec: {}", "spec: {replicas: 2}"));
    fleet.commit("web 2");
    let r = gw.sync_ok();
    assert_eq!((r["created"].as_u64(), r["updated"].as_u64()), (Some(0), Some(1)), "{r}");
    assert_eq!(mtime(&config), before, "an unchanged manifest was rewritten");
    assert!(std::fs::read_to_string(&web).unwrap().contains("replicas: 2"));
    // The human summary says so too.
    let text = gw.tend(&["sync"]);
    assert!(text.stdout.contains("2 manifests"), "{}", text.stdout);

    // Edited and deleted behind tend's back: repaired.
    std::fs::write(&config, "tampered\n").unwrap();
    std::fs::remove_file(&web).unwrap();
    gw.sync_ok();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), CONFIG);
    assert!(web.exists());
    assert_eq!(std::fs::read_to_string(dir.join("someone-elses.yaml")).unwrap(), "kind: keep\n");
}

#[test]
fn prune_deletes_exactly_the_objects_no_longer_declared_in_one_call() {
    let (_tmp, fleet, gw, kubectl, dir) = setup();
    fleet
        .write("devices/gw-1/k3s/apps/web.yaml", WEB)
        .write(
            "devices/gw-1/k3s/apps/worker.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: worker, namespace: demo}\n",
        )
        .write(
            "devices/gw-1/k3s/config.yaml",
            format!("{CONFIG}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: shared\n"),
        );
    fleet.commit("both");
    gw.sync_ok();
    kubectl.clear_log();

    // Both apps leave the bundle: their files go, their Deployments are
    // deleted in one call; the Service "shared" is still declared by
    // config.yaml, so it is not. Their Addons are deleted with them.
    fleet.remove("devices/gw-1/k3s/apps");
    fleet.commit("no apps");
    let r = gw.sync_ok();
    assert!(k3s_files(&dir).iter().all(|p| !p.to_string_lossy().contains("tend-apps")));
    assert_eq!(kubectl.delete_calls(), 1, "{}", kubectl.log_text());
    assert!(kubectl.log_text().contains("ARGS: delete --ignore-not-found --wait=false -f -"));
    let (addons, mut objects): (Vec<String>, Vec<String>) =
        kubectl.deleted().into_iter().partition(|d| d.starts_with("Addon.k3s.cattle.io "));
    objects.sort();
    assert_eq!(objects, ["Deployment.apps demo/web", "Deployment.apps demo/worker"]);
    assert_eq!(addons.len(), 2, "{addons:?}");
    assert!(addons.iter().all(|a| a.starts_with("Addon.k3s.cattle.io kube-system/tend-apps-w")), "{addons:?}");
    assert_eq!((r["deleted"].as_u64(), r["pruned"].as_u64()), (Some(2), Some(2)), "{r}");
}

#[test]
fn identity_is_group_kind_namespace_and_name_not_the_version() {
    // ClusterRole system:coredns moves from rbac/v1beta1 to rbac/v1 and into
    // another file; a Deployment "controller" exists in two namespaces.
    let (_tmp, fleet, gw, kubectl, _dir) = setup();
    let role = |v: &str| {
        format!("apiVersion: rbac.authorization.k8s.io/{v}\nkind: ClusterRole\nmetadata:\n  name: system:coredns\n")
    };
    let controller =
        |ns: &str| format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: controller\n  namespace: {ns}\n");
    fleet.write("devices/gw-1/k3s/coredns.yaml", role("v1beta1")).write(
        "devices/gw-1/k3s/metallb.yaml",
        format!("{}---\n{}", controller("metallb-system"), controller("other")),
    );
    fleet.commit("v1beta1");
    gw.sync_ok();
    kubectl.clear_log();
    fleet.remove("devices/gw-1/k3s/coredns.yaml").write("devices/gw-1/k3s/rbac/coredns.yaml", role("v1"));
    fleet.write("devices/gw-1/k3s/metallb.yaml", controller("metallb-system"));
    fleet.commit("v1, renamed; controller in other gone");
    gw.sync_ok();
    let deleted = kubectl.deleted();
    assert!(!deleted.iter().any(|d| d.contains("coredns") && d.starts_with("ClusterRole")), "{deleted:?}");
    // metallb.yaml stays: K3s itself prunes what leaves a file it still
    // watches, so tend deletes nothing of it.
    assert!(!deleted.iter().any(|d| d.contains("controller")), "{deleted:?}");
}

#[test]
fn a_rollout_in_another_namespace_is_its_own_check_and_duplicates_do_not_hold_the_window() {
    let (_tmp, fleet, gw, kubectl, _dir) = setup_with("");
    let controller =
        |ns: &str| format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: controller\n  namespace: {ns}\n");
    // One workload declared in two files: checked once, and the window ends
    // as soon as it passes: one `rollout status` call in all (a rollout probe
    // runs every 2 s; a window held to its end, health_timeout 4 s, asks again).
    fleet
        .write("devices/gw-1/k3s/a.yaml", controller("metallb-system"))
        .write("devices/gw-1/k3s/b.yaml", controller("metallb-system"));
    fleet.commit("duplicate");
    kubectl.clear_log();
    let r = gw.sync_ok();
    assert_eq!(r["checks"].as_object().unwrap().len(), 1, "{r}");
    assert_eq!(r["checks"]["rollout metallb-system/deployment/controller"], "pass", "{r}");
    let log = kubectl.log_text();
    let asked: Vec<&str> = log.lines().filter(|l| l.starts_with("ARGS: rollout status")).collect();
    assert_eq!(
        asked,
        ["ARGS: rollout status deployment.apps/controller --timeout=5s -n metallb-system"],
        "the health window went on after the check passed:\n{log}"
    );
    let v = gw.tend(&["validate", gw_bundle(&fleet).to_str().unwrap()]);
    assert!(v.stderr.contains("warning: Deployment.apps metallb-system/controller is declared by"), "{}", v.stderr);

    // The same name in another namespace that never rolls out fails the
    // revision, although the one in metallb-system rolled out.
    let wrapper = kubectl.script.with_file_name("kubectl-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$*\" in *'-n other'*) echo 'Waiting for deployment \"controller\" rollout to finish' >&2; exit 1;; esac\nexec {} \"$@\"\n",
            kubectl.script.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&gw.config).unwrap().replace(
        &format!("kubectl = [\"{}\"]", kubectl.script.display()),
        &format!("kubectl = [\"{}\"]", wrapper.display()),
    );
    std::fs::write(&gw.config, text).unwrap();
    fleet.write("devices/gw-1/k3s/b.yaml", controller("other"));
    fleet.commit("other");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("rollout other/deployment/controller: not rolled out"), "{}", r.stderr);
}

fn gw_bundle(fleet: &Fleet) -> PathBuf {
    fleet.dir.join("devices/gw-1")
}

#[test]
fn invalid_manifests_are_rejected_naming_file_and_document() {
    for (content, needle) in [
        ("apiVersion: v1\nkind: [\n", "invalid YAML"),
        ("apiVersion: v1\nmetadata:\n  name: x\n", "document 1 (line 1): missing kind"),
        (
            &format!("{CONFIG}---\napiVersion: v1\nkind: Secret\nmetadata: {{}}\n") as &str,
            "document 2 (line 6): Secret: missing metadata.name",
        ),
        ("--- {apiVersion: v1, kind: ConfigMap, metadata: {name: x}}\n", "K3s splits documents"),
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
fn validate_reports_every_problem_of_a_bundle_at_once() {
    let (_tmp, fleet, gw, _kubectl, _dir) = setup();
    fleet
        .write("devices/gw-1/k3s/good.yaml", CONFIG)
        .write("devices/gw-1/k3s/a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n---\nkind: Secret\n")
        .write("devices/gw-1/k3s/sub/b.yaml", "apiVersion: v1\nkind: [\n")
        .write("devices/gw-1/k3s/c.txt", "not a manifest\n")
        .write("devices/gw-1/containers/bad.toml", "image = 5\n");
    let bundle = gw_bundle(&fleet);
    let v = gw.tend(&["validate", bundle.to_str().unwrap()]);
    assert_eq!(v.code, 1);
    for needle in [
        "devices/gw-1/k3s/a.yaml: document 1 (line 1): ConfigMap: missing metadata.name",
        "devices/gw-1/k3s/a.yaml: document 2 (line 5): Secret: missing apiVersion",
        "devices/gw-1/k3s/sub/b.yaml: document 1 (line 1): invalid YAML",
        "devices/gw-1/k3s/c.txt: only .yaml and .yml files belong in k3s/",
        "devices/gw-1/containers/bad.toml: ",
        "bundle rejected: 5 problems",
    ] {
        assert!(v.stderr.contains(needle), "{needle:?} not in:\n{}", v.stderr);
    }
    let j = gw.tend(&["validate", "--json", bundle.to_str().unwrap()]).json();
    assert_eq!(j["problems"].as_array().unwrap().len(), 5, "{j}");
    // A sync names them too, on one line.
    fleet.commit("bad");
    let r = gw.tend(&["sync"]);
    assert!(r.stderr.contains("(and 4 more: "), "{}", r.stderr);
}

#[test]
fn the_dry_run_lists_each_pruned_object_and_warns_on_namespaces_and_crds() {
    let (_tmp, fleet, gw, kubectl, dir) = setup();
    fleet.write(
        "devices/gw-1/k3s/monitoring.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: monitoring}\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: servicemonitors.monitoring.coreos.com}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: grafana, namespace: monitoring}\n",
    );
    fleet.write("devices/gw-1/k3s/config.yaml", CONFIG);
    fleet.commit("monitoring");
    gw.sync_ok();
    kubectl.clear_log();
    fleet.remove("devices/gw-1/k3s/monitoring.yaml");
    fleet.commit("no monitoring");
    let before = tend_e2e::snapshot(&dir);
    let dry = gw.tend(&["sync", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    for line in [
        "  prune   Namespace monitoring (warning: deletes every object in the namespace)",
        "  prune   CustomResourceDefinition.apiextensions.k8s.io servicemonitors.monitoring.coreos.com (warning: deletes every custom resource of this definition)",
        "  prune   Deployment.apps monitoring/grafana",
    ] {
        assert!(dry.stdout.lines().any(|l| l == line), "{line:?} not in:\n{}", dry.stdout);
    }
    assert!(dry.stdout.contains("remove  manifest tend-monitoring-"), "{}", dry.stdout);
    assert_eq!(tend_e2e::snapshot(&dir), before, "the dry run changed the directory");
    assert_eq!(kubectl.delete_calls(), 0);
}

#[test]
fn kubectl_errors_are_its_own_not_broken_pipe_and_a_hanging_kubectl_times_out() {
    let (_tmp, fleet, gw, kubectl, _dir) = setup_with("timeout = \"2s\"\n");
    // Enough objects that the input is more than a pipe holds.
    let many: String = (0..2000)
        .map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{i}\n  namespace: demo\n---\n"))
        .collect();
    fleet.write("devices/gw-1/k3s/many.yaml", &many).write("devices/gw-1/k3s/config.yaml", CONFIG);
    fleet.commit("many");
    gw.sync_ok();
    fleet.remove("devices/gw-1/k3s/many.yaml");
    fleet.commit("none");
    std::fs::write(&kubectl.refuse_flag, "").unwrap();
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("the server has asked for the client to provide credentials"), "{}", r.stderr);
    assert!(!r.stderr.contains("Broken pipe"), "{}", r.stderr);
    std::fs::remove_file(&kubectl.refuse_flag).unwrap();
    std::fs::write(&kubectl.hang_flag, "").unwrap();
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("timed out after 2s"), "{}", r.stderr);
}

#[test]
fn an_object_moving_between_kept_files_is_taken_over_before_it_is_given_up() {
    // K3s applies files in name order; if the file giving up a Namespace were
    // applied before the one taking it over, its Addon would prune the
    // Namespace and everything in it. tend writes the taker first and waits
    // for K3s (the fake answers for it) before it writes the giver.
    let (_tmp, fleet, gw, kubectl, dir) = setup();
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: data}\n";
    fleet.write("devices/gw-1/k3s/a.yaml", format!("{ns}---\n{CONFIG}")).write("devices/gw-1/k3s/z.yaml", CONFIG);
    fleet.commit("ns in a");
    gw.sync_ok();
    let a = file(&dir, "tend-a-");
    let old_a = tend_e2e::snapshot(&dir);
    kubectl.clear_log();
    fleet.write("devices/gw-1/k3s/a.yaml", CONFIG).write("devices/gw-1/k3s/z.yaml", format!("{CONFIG}---\n{ns}"));
    fleet.commit("ns moves to z");
    let r = gw.sync_ok();
    let z = file(&dir, "tend-z-");
    let log = kubectl.log_text();
    let z_name = z.file_name().unwrap().to_string_lossy().trim_end_matches(".yaml").to_owned();
    assert!(log.contains(&format!("ARGS: get addons.k3s.cattle.io -n kube-system {z_name}")), "{log}");
    // When tend asked, a still held the Namespace (its old bytes).
    let a_name = a.file_name().unwrap().to_string_lossy().into_owned();
    let old_hash = sha256_hex(&old_a[&a_name].1);
    assert!(log.contains(&format!("{a_name}={old_hash}")), "a was rewritten before z was applied:\n{log}");
    assert_eq!(std::fs::read_to_string(&a).unwrap(), CONFIG);
    assert_eq!(kubectl.delete_calls(), 0, "{log}");
    assert!(r["operations"].to_string().contains("after K3s applied tend-z-"), "{r}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

#[test]
fn a_file_of_another_that_k3s_would_track_as_the_same_addon_blocks_the_revision() {
    let (_tmp, fleet, gw, _kubectl, dir) = setup();
    fleet.write("devices/gw-1/k3s/web.yaml", WEB);
    fleet.commit("web");
    let v = gw.tend(&["validate", "--json", gw_bundle(&fleet).to_str().unwrap()]).json();
    let ours = v["manifests"][0]["file"].as_str().unwrap().to_owned();
    let stem = ours.trim_end_matches(".yaml");
    // Someone else's file, in a subdirectory (K3s walks them), same Addon.
    std::fs::create_dir_all(dir.join("other")).unwrap();
    std::fs::write(dir.join(format!("other/{stem}.json")), "{}").unwrap();
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&format!("K3s tracks it as Addon {stem}")), "{}", r.stderr);
    assert!(!dir.join(&ours).exists());
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
    assert!(r.stderr.contains("rollout demo/deployment/web: not rolled out"), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("rolled back to {}", &good[..12])), "{}", r.stderr);
    assert_eq!(tend_e2e::snapshot(&dir), before, "the manifest directory is not back to last-known-good");
    // The rollback deleted the objects the bad revision's manifest declared.
    assert!(kubectl.deleted().contains(&"Deployment.apps demo/web".to_string()), "{}", kubectl.log_text());
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
    assert!(dry.stdout.contains("create  manifest tend-config-"), "{}", dry.stdout);
    assert!(k3s_files(&dir).is_empty());
    let bundle = gw_bundle(&fleet);
    let v = gw.tend(&["validate", bundle.to_str().unwrap()]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(v.stdout.contains("manifest k3s/config.yaml -> tend-config-"), "{}", v.stdout);
    // Anchors and aliases are expanded; an alias bomb is refused.
    fleet.write(
        "devices/gw-1/k3s/x.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: &m {name: x}\ndata: {a: &v one, b: *v}\n",
    );
    assert_eq!(gw.tend(&["validate", bundle.to_str().unwrap()]).code, 0);
    let mut bomb = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..9 {
        bomb.push_str(&format!("l{i}: &l{i} [{}]\n", vec![format!("*l{}", i - 1); 9].join(", ")));
    }
    fleet.write("devices/gw-1/k3s/x.yaml", bomb);
    let v = gw.tend(&["validate", bundle.to_str().unwrap()]);
    assert_eq!(v.code, 1);
    assert!(v.stderr.contains("excessive aliasing"), "{}", v.stderr);
}

/// Issue 12, acceptance 1: real manifests others wrote (tests/corpus/k3s,
/// sources in SOURCES.md). What tend reads of each file is held to an
/// independent oracle (oracle.py, PyYAML, K3s's rules: objects.json); every
/// file the oracle accepts is written byte for byte under an Addon name K3s
/// accepts; prune deletes exactly what no remaining manifest declares.
#[test]
fn a_corpus_of_real_manifests() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/k3s");
    let oracle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(corpus.join("objects.json")).unwrap()).unwrap();
    let oracle = oracle.as_object().unwrap();
    assert!(oracle.len() >= 30, "the corpus has {} files", oracle.len());
    let projects: std::collections::BTreeSet<&str> = oracle.keys().map(|k| k.split('/').next().unwrap()).collect();
    assert!(projects.len() >= 6, "{projects:?}");

    let (_tmp, fleet, gw, kubectl, dir) = setup();
    let (good, refused): (Vec<_>, Vec<_>) = oracle.iter().partition(|(_, v)| v.get("objects").is_some());
    for (rel, _) in &good {
        fleet.write(&format!("devices/gw-1/k3s/{rel}"), std::fs::read(corpus.join(rel)).unwrap());
    }
    // What tend reads of each file is what the oracle says K3s applies.
    let v = gw.tend(&["validate", "--json", gw_bundle(&fleet).to_str().unwrap()]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    let v = v.json();
    let mut file_of = std::collections::BTreeMap::new();
    for m in v["manifests"].as_array().unwrap() {
        let rel = m["path"].as_str().unwrap();
        assert_eq!(m["objects"], oracle[rel]["objects"], "{rel}: tend and the oracle disagree");
        file_of.insert(rel.to_owned(), m["file"].as_str().unwrap().to_owned());
    }
    assert_eq!(file_of.len(), good.len());

    fleet.commit("corpus");
    let r = gw.sync_ok();
    assert_eq!(r["manifests"].as_u64(), Some(good.len() as u64), "{r}");
    assert_eq!(k3s_refusals(&dir), Vec::<String>::new());
    assert_eq!(k3s_files(&dir).len(), good.len());
    for (rel, _) in &good {
        let written = std::fs::read(dir.join(&file_of[*rel])).unwrap();
        assert!(written == std::fs::read(corpus.join(rel)).unwrap(), "{rel} not written byte for byte");
    }

    // Prune: two projects leave. Deleted: exactly the objects they declared
    // that no remaining file declares.
    kubectl.clear_log();
    let leaving = ["longhorn", "kube-prometheus"];
    for p in leaving {
        fleet.remove(&format!("devices/gw-1/k3s/{p}"));
    }
    fleet.commit("two projects leave");
    gw.sync_ok();
    let objects = |keep: bool| -> std::collections::BTreeSet<String> {
        good.iter()
            .filter(|(rel, _)| leaving.iter().any(|p| rel.starts_with(&format!("{p}/"))) != keep)
            .flat_map(|(_, v)| v["objects"].as_array().unwrap().iter().map(|o| o.as_str().unwrap().to_owned()))
            .collect()
    };
    let expected: std::collections::BTreeSet<String> = objects(false).difference(&objects(true)).cloned().collect();
    let deleted: Vec<String> =
        kubectl.deleted().into_iter().filter(|d| !d.starts_with("Addon.k3s.cattle.io ")).collect();
    let deleted_set: std::collections::BTreeSet<String> = deleted.iter().cloned().collect();
    assert_eq!(deleted.len(), deleted_set.len(), "an object was deleted twice");
    assert_eq!(deleted_set, expected);
    assert_eq!(kubectl.delete_calls(), 1);
    assert_eq!(k3s_refusals(&dir), Vec::<String>::new());

    // The files the oracle says K3s refuses, tend refuses, naming them.
    for (rel, why) in &refused {
        let (_tmp, fleet, gw, _kubectl, _dir) = setup();
        fleet.write(&format!("devices/gw-1/k3s/{rel}"), std::fs::read(corpus.join(rel)).unwrap());
        let v = gw.tend(&["validate", gw_bundle(&fleet).to_str().unwrap()]);
        assert_eq!(v.code, 1, "{rel} ({why}) was accepted");
        assert!(v.stderr.contains(&format!("k3s/{rel}")), "{}", v.stderr);
    }
}

/// Issue 12, acceptance 3: a gateway synced by the release before the new
/// names, then by this one, ends with only new names, K3s would take every
/// file, and nothing still declared is deleted.
#[test]
fn the_upgrade_from_old_file_names() {
    let (_tmp, fleet, gw, kubectl, dir) = setup();
    // The old release knows no [k3s].timeout: the config is the same for both.
    fleet.write("devices/gw-1/k3s/apps/web.yaml", WEB).write("devices/gw-1/k3s/config.yaml", CONFIG).write(
        "devices/gw-1/k3s/old.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: old, namespace: demo}\n",
    );
    fleet.commit("k3s");
    let prev = prev_release_bin();
    let out =
        std::process::Command::new(&prev).env("TEND_CONFIG", &gw.config).args(["sync", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let old: Vec<String> =
        k3s_files(&dir).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(old, ["tend_apps__web.yaml", "tend_config.yaml", "tend_old.yaml"]);
    // What the old release wrote, K3s refused: that is the bug.
    assert_eq!(k3s_refusals(&dir).len(), 3);

    // The new release, same commit; then a commit that drops old.yaml.
    kubectl.clear_log();
    let r = gw.sync_ok();
    assert_eq!(k3s_refusals(&dir), Vec::<String>::new());
    let now: Vec<String> =
        k3s_files(&dir).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.iter().all(|f| f.starts_with("tend-")), "{now:?}");
    assert_eq!(kubectl.delete_calls(), 0, "an object still declared was deleted: {}", kubectl.log_text());
    assert_eq!(r["action"], "repaired", "{r}");
    fleet.remove("devices/gw-1/k3s/old.yaml");
    fleet.commit("old goes");
    gw.sync_ok();
    let deleted = kubectl.deleted();
    assert_eq!(deleted.iter().filter(|d| !d.starts_with("Addon")).collect::<Vec<_>>(), ["Deployment.apps demo/old"]);
    assert_eq!(k3s_files(&dir).len(), 2);
}

/// The FAKE kubectl refuses what the real one refuses for the commands tend
/// sends, with its messages (tests/support/fake_kubectl.py): a test cannot
/// pass because the fake took an empty delete, a workload the cluster does
/// not have or a command kubectl does not know.
#[test]
fn the_fake_kubectl_refuses_what_kubectl_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let manifests = tmp.path().join("k3s-manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("tend-web-0123.yaml"), WEB).unwrap();
    let kubectl = FakeKubectl::new(tmp.path(), &manifests);
    let call = |args: &[&str], input: &str| {
        let mut child = std::process::Command::new(&kubectl.script)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let refused = |args: &[&str], input: &str, said: &str| {
        let (code, _, stderr) = call(args, input);
        assert_eq!(code, Some(1), "{args:?} was not refused");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    };
    let delete = ["delete", "--ignore-not-found", "--wait=false", "-f", "-"];
    // What tend sends, answered.
    assert_eq!(call(&delete, WEB).0, Some(0));
    let (code, out, _) = call(&["rollout", "status", "deployment.apps/web", "--timeout=5s", "-n", "demo"], "");
    assert_eq!((code, out.trim()), (Some(0), "deployment \"web\" successfully rolled out"));
    let get = |name: &str, ns: &str| {
        call(&["get", "addons.k3s.cattle.io", "-n", ns, name, "-o", "jsonpath={.spec.checksum}"], "")
    };
    let (code, out, _) = get("tend-web-0123", "kube-system");
    assert_eq!((code, out), (Some(0), sha256_hex(WEB.as_bytes())));
    // The arguments are parsed, not read by position.
    let (code, out, _) = call(
        &["get", "-o", "jsonpath={.spec.checksum}", "addons.k3s.cattle.io", "tend-web-0123", "--namespace=kube-system"],
        "",
    );
    assert_eq!((code, out), (Some(0), sha256_hex(WEB.as_bytes())));
    // What kubectl refuses.
    refused(&delete, "", "error: no objects passed to delete");
    refused(&delete, "---\n", "error: no objects passed to delete");
    refused(&delete, "apiVersion: v1\nmetadata:\n  name: x\n", "Object 'Kind' is missing");
    refused(&delete, "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "resource name may not be empty");
    refused(
        &["rollout", "status", "deployment.apps/web", "--timeout=5s", "-n", "other"],
        "",
        "Error from server (NotFound): deployments.apps \"web\" not found",
    );
    refused(&["rollout", "status", "deployment.apps/gone", "-n", "demo"], "", "deployments.apps \"gone\" not found");
    refused(&["rollout", "status", "service/shared"], "", "no status viewer has been implemented for service");
    refused(
        &["rollout", "stats", "deployment.apps/web"],
        "",
        "error: unknown command \"stats\" for \"kubectl rollout\"",
    );
    let (code, _, stderr) = get("tend-other", "kube-system");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("Error from server (NotFound): addons.k3s.cattle.io \"tend-other\" not found"), "{stderr}");
    assert_eq!(get("tend-web-0123", "default").0, Some(1), "Addons live in kube-system");
    refused(&["apply", "-f", "-"], WEB, "error: unknown command \"apply\" for \"kubectl\"");
    refused(&["delete", "--force", "-f", "-"], WEB, "error: unknown flag: --force");
    // What it does not model, it says so rather than answering.
    refused(&["get", "pods"], "", "FAKE kubectl");
    refused(&["get", "addons.k3s.cattle.io", "-n", "kube-system", "tend-web-0123", "-o", "yaml"], "", "FAKE kubectl");
}
