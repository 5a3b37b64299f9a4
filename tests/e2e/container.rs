//! Issue 18, item 4: tend's multi-arch container images
//! (`packaging/container/build.sh`): FROM scratch with the static musl
//! binaries and CA certificates, built with Podman without a registry, one OCI
//! archive per architecture and an image index of the three. Checked: each
//! archive loads with `podman load` and holds its architecture; the amd64 one
//! runs a real sync against a git daemon on loopback, writing into a mounted
//! root and keeping its store in a mounted state directory; the arm64 and
//! armv7 binaries inside their images run `--version` under qemu-user.
//!
//! Needs the three musl binaries (`cross/build.sh`), so it is ignored by a
//! plain `cargo test`.

use std::process::Command;

use tend_e2e::{Fleet, GitDaemon, repo_root, run};

#[test]
#[ignore = "needs the musl binaries of cross/build.sh and Podman"]
fn the_multi_arch_images_load_and_the_amd64_one_syncs() {
    let conf = tempfile::tempdir().unwrap();
    let env = tend_e2e::podman_settings(conf.path());
    let podman = || tend_e2e::podman_in(conf.path());
    let mut build = Command::new(repo_root().join("packaging/container/build.sh"));
    build.envs(env);
    let built = run(&mut build);
    eprintln!("{built}");
    let version = env!("CARGO_PKG_VERSION");
    let archive = |arch: &str| repo_root().join(format!("target/container/tend-{version}-{arch}.oci.tar"));
    let index = repo_root().join(format!("target/container/tend-{version}.oci.tar"));
    // The archive's index points at an image index of the three platforms.
    let blob = |name: &str| -> serde_json::Value {
        serde_json::from_str(&run(Command::new("tar").arg("-xOf").arg(&index).arg(name))).unwrap()
    };
    let top = blob("index.json");
    let digest = top["manifests"][0]["digest"].as_str().expect("an index").replace("sha256:", "");
    let list = blob(&format!("blobs/sha256/{digest}"));
    let mut platforms: Vec<String> = list["manifests"]
        .as_array()
        .expect("an image index")
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let variant = p["variant"].as_str().map(|v| format!("/{v}")).unwrap_or_default();
            format!("{}/{}{variant}", p["os"].as_str().unwrap(), p["architecture"].as_str().unwrap())
        })
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm/v7", "linux/arm64"], "{list}");

    for (arch, expect) in [("amd64", "amd64"), ("arm64", "arm64"), ("armv7", "arm")] {
        // A fresh store: the image must come from the archive.
        let _ = podman().args(["rmi", "-af"]).output();
        let loaded = run(podman().args(["load", "-q", "-i"]).arg(archive(arch)));
        let id = loaded.trim().rsplit(' ').next().unwrap().to_owned();
        let a = run(podman().args(["image", "inspect", "--format", "{{.Architecture}}", &id]));
        assert_eq!(a.trim(), expect, "{arch}: {loaded}");
        if arch != "amd64" {
            let ctr = run(podman().args(["create", &id])).trim().to_owned();
            let bin = conf.path().join(format!("tend-{arch}"));
            run(podman().args(["cp", &format!("{ctr}:/usr/bin/tend")]).arg(&bin));
            let qemu = if arch == "arm64" { "qemu-aarch64-static" } else { "qemu-arm-static" };
            let v = run(Command::new(qemu).arg(&bin).arg("--version"));
            assert!(v.contains(version), "{arch}: {v}");
            continue;
        }
        // amd64: a real sync, from the container, into mounted directories.
        let tmp = tempfile::tempdir().unwrap();
        let fleet = Fleet::new(tmp.path(), "fleet");
        fleet.write("devices/gw-ctr/files/etc/myapp/app.conf", "port = 502\n");
        let head = fleet.commit("v1");
        let git = GitDaemon::start(tmp.path());
        let (etc, root, state) = (tmp.path().join("etc"), tmp.path().join("root"), tmp.path().join("state"));
        for d in [&etc, &root, &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(
            etc.join("agent.toml"),
            format!(
                "device_id = \"gw-ctr\"\n[source]\nurl = \"{}\"\n[files]\nroot = \"/host\"\nallow = [\"/etc/myapp\"]\n",
                git.url("fleet")
            ),
        )
        .unwrap();
        let out = run(podman()
            .args(["run", "--rm", "--network=host"])
            .arg("-v")
            .arg(format!("{}:/etc/tend:ro", etc.display()))
            .arg("-v")
            .arg(format!("{}:/host", root.display()))
            .arg("-v")
            .arg(format!("{}:/var/lib/tend", state.display()))
            .args([&id, "sync", "--json"]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["commit"], head.as_str(), "{out}");
        assert_eq!(std::fs::read_to_string(root.join("etc/myapp/app.conf")).unwrap(), "port = 502\n");
        assert!(std::fs::read_dir(&state).unwrap().count() > 0, "no store in the mounted state directory");
        // The entrypoint is the binary at /usr/bin/tend.
        let v = run(podman().args(["run", "--rm", "--entrypoint", "/usr/bin/tend", &id, "--version"]));
        assert!(v.contains(version), "{v}");
    }
}
