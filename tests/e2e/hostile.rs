//! Acceptance 3: every hostile bundle is rejected whole. For each case: a good
//! revision is applied first, the hostile commit is pushed on top, `tend sync`
//! exits 1 with one error naming the offending file and the reason, and the
//! gateway's files are byte-identical to before (nothing half-applied).

use std::path::Path;

use tend_e2e::{Fleet, Gateway, good_bundle};

/// Apply a good revision, let `make_hostile` change the repository, commit, and
/// check the sync is refused with an error containing every `expect` string.
fn rejected(make_hostile: impl FnOnce(&Fleet, &Gateway), expect: &[&str]) {
    rejected_with(make_hostile, expect, "")
}

fn rejected_with(make_hostile: impl FnOnce(&Fleet, &Gateway), expect: &[&str], extra_config: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::new(tmp.path(), &fleet.url(), extra_config);
    good_bundle(&fleet);
    fleet.commit("good");
    gw.sync_ok();
    let outside_before = tend_e2e::snapshot(tmp.path().join("outside").as_path().exists_or_create());

    // The hostile change may also put something in the way on the gateway; the
    // state to preserve is the one right before the sync.
    make_hostile(&fleet, &gw);
    let before = gw.snapshot();
    let bad = fleet.commit("hostile");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "hostile bundle was not refused: {r:?}");
    let line = r.stderr.trim();
    assert_eq!(line.lines().count(), 1, "expected one error line, got: {line}");
    for e in expect {
        assert!(line.contains(e), "error does not contain {e:?}: {line}");
    }
    assert_eq!(gw.snapshot(), before, "files changed although the bundle was rejected");
    assert_eq!(tend_e2e::snapshot(&tmp.path().join("outside")), outside_before, "a file outside the root changed");

    let status = gw.tend(&["status", "--json"]).json();
    assert_eq!(status["phase"], "failed");
    assert_eq!(status["target_revision"], bad);
    assert_ne!(status["revision"], bad);
    assert!(status["error"].as_str().unwrap().contains(expect[0]), "{status}");
    // A rejected revision is in the history as failed, once however often polled.
    gw.tend(&["sync"]);
    let h = gw.tend(&["history", "--json"]).json();
    let h = h.as_array().unwrap();
    assert_eq!(h[0]["revision"], bad);
    assert_eq!(h[0]["outcome"], "failed");
    assert_eq!(h.iter().filter(|r| r["revision"] == bad).count(), 1);
}

trait ExistsOrCreate {
    fn exists_or_create(&self) -> &Path;
}
impl ExistsOrCreate for Path {
    fn exists_or_create(&self) -> &Path {
        std::fs::create_dir_all(self).unwrap();
        std::fs::write(self.join("precious"), "do not touch\n").unwrap();
        self
    }
}

const B: &str = "devices/gw-1";

#[test]
fn destination_outside_the_allow_list() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/files/etc/shadow"), "root::0:0\n");
        },
        &["devices/gw-1/files/etc/shadow", "outside [files].allow"],
    );
}

#[test]
fn dotdot_in_file_metadata_path() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "[[file]]\npath = \"/etc/myapp/../shadow\"\nmode = \"0600\"\n");
        },
        &["devices/gw-1/tend.toml", "'..' is not allowed"],
    );
}

#[test]
fn include_leaving_the_repository() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "include = [\"../../../outside\"]\n");
        },
        &["devices/gw-1/tend.toml", "leaves the repository"],
    );
}

#[test]
fn absolute_include() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "include = [\"/etc\"]\n");
        },
        &["devices/gw-1/tend.toml", "absolute"],
    );
}

#[test]
fn include_cycle() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "include = [\"../../groups/a\"]\n")
                .write("groups/a/tend.toml", "include = [\"../b\"]\n")
                .write("groups/b/tend.toml", "include = [\"../../devices/gw-1\"]\n");
        },
        &["groups/b/tend.toml", "include cycle: devices/gw-1 -> groups/a -> groups/b -> devices/gw-1"],
    );
}

#[test]
fn include_depth_bomb() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "include = [\"../../chain/0\"]\n");
            for i in 0..12 {
                f.write(&format!("chain/{i}/tend.toml"), format!("include = [\"../{}\"]\n", i + 1));
            }
            f.write("chain/12/files/etc/myapp/x", "x\n");
        },
        &["tend.toml", "include depth limit of 8"],
    );
}

#[test]
fn include_of_a_missing_bundle() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "include = [\"../../nope\"]\n");
        },
        &["nope", "bundle directory not found"],
    );
}

#[test]
fn symlink_leaving_the_repository() {
    rejected(
        |f, _| {
            f.symlink(&format!("{B}/files/etc/myapp/passwd"), "../../../../../../../../etc/passwd");
        },
        &["devices/gw-1/files/etc/myapp/passwd", "symlink points outside"],
    );
}

#[test]
fn absolute_symlink() {
    rejected(
        |f, _| {
            f.symlink(&format!("{B}/files/etc/myapp/passwd"), "/etc/passwd");
        },
        &["devices/gw-1/files/etc/myapp/passwd", "symlink points outside"],
    );
}

#[test]
fn symlink_into_another_bundle() {
    rejected(
        |f, _| {
            f.write("secrets/files/key", "secret\n")
                .symlink(&format!("{B}/files/etc/myapp/key"), "../../../../../secrets/files/key");
        },
        &["devices/gw-1/files/etc/myapp/key", "outside the bundle's files/"],
    );
}

#[test]
fn symlink_loop() {
    rejected(
        |f, _| {
            f.symlink(&format!("{B}/files/etc/myapp/a"), "b").symlink(&format!("{B}/files/etc/myapp/b"), "a");
        },
        &["devices/gw-1/files/etc/myapp/a", "symlink loop"],
    );
}

#[test]
fn symlinked_files_directory() {
    rejected(
        |f, _| {
            f.remove(&format!("{B}/files"))
                .write("elsewhere/etc/myapp/x", "x\n")
                .symlink(&format!("{B}/files"), "../../elsewhere");
        },
        &["devices/gw-1/files", "symlinks are not allowed at the top of a bundle"],
    );
}

#[test]
fn manifest_that_does_not_parse() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "[[file]\npath = 1\n");
        },
        &["devices/gw-1/tend.toml", "invalid"],
    );
}

#[test]
fn manifest_with_an_unknown_key() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "inclde = [\"../../base\"]\n");
        },
        &["devices/gw-1/tend.toml", "unknown field `inclde`"],
    );
}

#[test]
fn unknown_template_variable() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "[[file]]\npath = \"/etc/myapp/app.conf\"\ntemplate = true\n")
                .write(&format!("{B}/files/etc/myapp/app.conf"), "site = {{ labels.region }}\n");
        },
        &["devices/gw-1/files/etc/myapp/app.conf", "unknown variable {{ labels.region }}"],
    );
}

#[test]
fn metadata_for_a_file_that_does_not_exist() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "[[file]]\npath = \"/etc/myapp/typo.conf\"\nmode = \"0600\"\n");
        },
        &["devices/gw-1/tend.toml", "/etc/myapp/typo.conf names no file"],
    );
}

#[test]
fn invalid_mode() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "[[file]]\npath = \"/etc/myapp/app.conf\"\nmode = \"999\"\n");
        },
        &["devices/gw-1/tend.toml", "mode \"999\""],
    );
}

#[test]
fn unknown_owner() {
    rejected(
        |f, _| {
            f.write(
                &format!("{B}/tend.toml"),
                "[[file]]\npath = \"/etc/myapp/app.conf\"\nowner = \"no-such-user-xyz\"\n",
            );
        },
        &["devices/gw-1/files/etc/myapp/app.conf", "user \"no-such-user-xyz\" does not exist"],
    );
}

#[test]
fn too_many_files() {
    rejected(
        |f, _| {
            for i in 0..10_001 {
                f.write(&format!("{B}/files/etc/myapp/many/{}/{i}", i % 100), "x");
            }
        },
        &["more than 10000 files"],
    );
}

#[test]
fn file_too_large() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/files/etc/myapp/huge.bin"), vec![0u8; (16 << 20) + 1]);
        },
        &["devices/gw-1/files/etc/myapp/huge.bin", "larger than the limit"],
    );
}

#[test]
fn empty_bundle_is_refused() {
    rejected(
        |f, _| {
            f.remove(&format!("{B}/files"))
                .remove(&format!("{B}/tend.toml"))
                .write(&format!("{B}/README.md"), "empty\n");
        },
        &["devices/gw-1", "declares nothing"],
    );
}

#[test]
fn missing_bundle_directory() {
    rejected(
        |f, _| {
            f.remove(B).write("devices/other/files/etc/myapp/x", "x\n");
        },
        &["devices/gw-1", "bundle directory not found"],
    );
}

#[test]
fn unknown_directory_in_a_bundle() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/flies/etc/myapp/x"), "x\n");
        },
        &["devices/gw-1/flies", "unknown directory"],
    );
}

#[test]
fn a_directory_in_the_way_blocks_every_file() {
    rejected(
        |f, gw| {
            f.write(&format!("{B}/files/etc/myapp/new.conf"), "new\n")
                .write(&format!("{B}/files/etc/myapp/app.conf"), "changed\n");
            std::fs::create_dir_all(gw.path("/etc/myapp/new.conf")).unwrap();
        },
        &["/etc/myapp/new.conf", "a directory is in the way"],
    );
}

#[test]
fn a_symlinked_destination_directory_is_not_written_through() {
    rejected(
        |f, gw| {
            f.write(&format!("{B}/files/opt/myapp/data/x.conf"), "x\n");
            let outside = gw.dir.parent().unwrap().join("outside");
            std::os::unix::fs::symlink(&outside, gw.path("/opt/myapp/data")).unwrap();
        },
        &["/opt/myapp/data/x.conf", "symlink in its parent directories"],
    );
}

#[test]
fn a_symlink_at_the_destination_is_not_followed() {
    rejected(
        |f, gw| {
            f.write(&format!("{B}/files/etc/myapp/link.conf"), "x\n");
            let outside = gw.dir.parent().unwrap().join("outside/precious");
            std::os::unix::fs::symlink(&outside, gw.path("/etc/myapp/link.conf")).unwrap();
        },
        &["/etc/myapp/link.conf", "a symlink is in the way"],
    );
}

// ---- Issue 8: the rest of the hostile corpus. Each case's doc names its threat.

/// Threat: whoever can push runs commands on every gateway through `on_change`.
#[test]
fn on_change_hook_when_hooks_are_off() {
    rejected_with(
        |f, _| {
            f.write(
                &format!("{B}/tend.toml"),
                "[[file]]\npath = \"/etc/myapp/app.conf\"\non_change = [\"sh\", \"-c\", \"id > /tmp/pwned\"]\n",
            );
        },
        &["devices/gw-1/tend.toml", "hooks are off"],
        "allow_hooks = false",
    );
}

/// Threat: the same, through a health check's `command`.
#[test]
fn command_check_when_hooks_are_off() {
    rejected_with(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "[[check]]\nname = \"x\"\ncommand = [\"sh\", \"-c\", \"id\"]\n");
        },
        &["devices/gw-1/tend.toml", "hooks are off"],
        "allow_hooks = false",
    );
}

/// Threat: the same, through a lifecycle hook (`[hooks]`).
#[test]
fn lifecycle_hook_when_hooks_are_off() {
    rejected_with(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "[hooks]\nbefore_apply = [\"sh\", \"-c\", \"id > /tmp/pwned\"]\n");
        },
        &["devices/gw-1/tend.toml", "[hooks] before_apply runs a command", "hooks are off"],
        "allow_hooks = false",
    );
}

/// Threat: a hook that runs for ever holds every apply; an empty one is a
/// mistake that would fail at the worst moment.
#[test]
fn lifecycle_hook_timeout_out_of_range_and_empty_hooks() {
    rejected(
        |f, _| {
            f.write(
                &format!("{B}/tend.toml"),
                "[hooks]\nafter_apply = [\"true\"]\ntimeout = \"18446744073709551615s\"\n",
            );
        },
        &["devices/gw-1/tend.toml", "[hooks] timeout", "18446744073709551615s"],
    );
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "[hooks]\nafter_apply = []\n");
        },
        &["devices/gw-1/tend.toml", "[hooks] after_apply must be a non-empty command"],
    );
}

/// Threat: a setuid-root program planted through a file's mode.
#[test]
fn setuid_mode() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "[[file]]\npath = \"/opt/myapp/run.sh\"\nmode = \"4755\"\n");
        },
        &["devices/gw-1/tend.toml", "setuid"],
    );
}

/// Threat: a name that is not UTF-8 confuses every tool that prints or compares it.
#[test]
fn invalid_utf8_in_a_file_name() {
    use std::os::unix::ffi::OsStrExt;
    rejected(
        |f, _| {
            let dir = f.dir.join(B).join("files/etc/myapp");
            std::fs::write(dir.join(std::ffi::OsStr::from_bytes(b"bad-\xff.conf")), "x\n").unwrap();
        },
        &["devices/gw-1/files/etc/myapp", "UTF-8"],
    );
}

/// Threat: terminal escape sequences in a name rewrite an operator's screen.
#[test]
fn escape_sequence_in_a_file_name() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/files/etc/myapp/evil\u{1b}[2J.conf"), "x\n");
        },
        &["control character"],
    );
}

/// Threat: a newline in a name forges extra lines in logs and plans.
#[test]
fn newline_in_a_file_name() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/files/etc/myapp/a\nforged.conf"), "x\n");
        },
        &["control character"],
    );
}

/// Threat: a NUL in a metadata path, cutting it short where the OS reads it.
#[test]
fn nul_in_a_metadata_path() {
    rejected(
        |f, _| {
            f.write(
                &format!("{B}/tend.toml"),
                "[[file]]\npath = \"/etc/myapp/app.conf\\u0000/../../x\"\nmode = \"0600\"\n",
            );
        },
        &["devices/gw-1/tend.toml", "control character"],
    );
}

/// Threat: directories nested thousands deep exhaust the stack or the path length.
#[test]
fn directory_depth_bomb() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/files/etc/myapp/{}x", "d/".repeat(60)), "x\n");
        },
        &["nested deeper than"],
    );
}

/// Threat: YAML aliases expanding to billions of nodes ("billion laughs").
#[test]
fn yaml_alias_bomb() {
    rejected(
        |f, _| {
            let mut y = String::from(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\ndata:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
            );
            for i in 1..9u8 {
                let (me, prev) = ((b'a' + i) as char, (b'a' + i - 1) as char);
                y.push_str(&format!("  {me}: &{me} [{}]\n", vec![format!("*{prev}"); 9].join(", ")));
            }
            f.write(&format!("{B}/k3s/lol.yaml"), y);
        },
        &["devices/gw-1/k3s/lol.yaml", "excessive aliasing"],
    );
}

/// Threat: YAML nested deeper than the parser's stack.
#[test]
fn yaml_nesting_bomb() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/k3s/deep.yaml"), format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)));
        },
        &["devices/gw-1/k3s/deep.yaml", "recursion limit"],
    );
}

/// Threat: TOML nested deeper than the parser's stack, in tend.toml.
#[test]
fn toml_nesting_bomb_in_tend_toml() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), format!("x = {}{}\n", "[".repeat(100_000), "]".repeat(100_000)));
        },
        &["devices/gw-1/tend.toml", "recursion"],
    );
}

/// Threat: the same, in a container file.
#[test]
fn toml_nesting_bomb_in_a_container_file() {
    rejected(
        |f, _| {
            f.write(
                &format!("{B}/containers/web.toml"),
                // 40 KB: under the 64 KiB file limit, so the parser meets it.
                format!("image = \"x\"\nenv = {}1{}\n", "{a=".repeat(10_000), "}".repeat(10_000)),
            );
        },
        &["devices/gw-1/containers/web.toml", "cannot recurse further; max recursion depth met"],
    );
}

/// Threat: a container file too large to read whole (memory on the gateway).
#[test]
fn container_file_over_the_size_limit() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/containers/web.toml"), format!("image = \"x\"\n#{}\n", "x".repeat(70_000)));
        },
        &["devices/gw-1/containers/web.toml", "bytes, larger than the limit of 65536 bytes"],
    );
}

/// Threat: a key given twice, where tools disagree on which one wins.
#[test]
fn duplicate_key_in_a_container_file() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/containers/web.toml"), "image = \"localhost/a:1\"\nimage = \"evil.example/b:1\"\n");
        },
        &["devices/gw-1/containers/web.toml", "duplicate key"],
    );
}

/// Threat: control characters in a container's name reach the runtime's API and logs.
#[test]
fn control_character_in_a_container_name() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/containers/we\u{7}b.toml"), "image = \"x\"\n");
        },
        &["control character"],
    );
}

/// Threat: a container name the runtime would read as an option or a path.
#[test]
fn invalid_container_name() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/containers/-rm.toml"), "image = \"x\"\n");
        },
        &["devices/gw-1/containers/-rm.toml", "not a valid container name"],
    );
}

/// Threat: a privileged container is root on the host.
#[test]
fn privileged_container_without_local_permission() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/containers/web.toml"), "image = \"x\"\nprivileged = true\n");
        },
        &["devices/gw-1/containers/web.toml", "allow_privileged"],
    );
}

/// Threat: mounting the host's root into a container is root on the host.
#[test]
fn container_mounting_the_host_root() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/containers/web.toml"), "image = \"x\"\nvolumes = [\"/:/host\"]\n");
        },
        &["devices/gw-1/containers/web.toml", "as good as privileged"],
    );
}

/// Threat: the container runtime's socket in a container is root on the host.
#[test]
fn container_mounting_the_runtime_socket() {
    rejected(
        |f, _| {
            f.write(
                &format!("{B}/containers/web.toml"),
                "image = \"x\"\nvolumes = [\"/run/podman/podman.sock:/sock\"]\n",
            );
        },
        &["devices/gw-1/containers/web.toml", "as good as privileged"],
    );
}

/// Threat: a manifest K3s would apply without a name tend can track and prune.
#[test]
fn manifest_object_without_a_valid_name() {
    rejected(
        |f, _| {
            f.write(
                &format!("{B}/k3s/x.yaml"),
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"../../kube-system\"\n",
            );
        },
        &["devices/gw-1/k3s/x.yaml", "is not valid"],
    );
}

/// Threat: something other than YAML handed to K3s's auto-deploy directory.
#[test]
fn non_yaml_file_in_k3s() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/k3s/payload.sh"), "#!/bin/sh\n");
        },
        &["devices/gw-1/k3s/payload.sh", "only .yaml"],
    );
}

/// Threat: a secret reaching a gateway that cannot decrypt it (half a config).
#[test]
fn secret_without_a_gateway_key() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/files/etc/myapp/db.conf.age"), "age-encryption.org/v1\n-> X25519 x\ny\n--- z\n");
        },
        &["devices/gw-1/files/etc/myapp/db.conf.age", "[files].age_identity is not set"],
    );
}

/// Threat: a secret and a plain file fighting over one destination.
#[test]
fn file_and_secret_on_one_destination() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/files/etc/myapp/app.conf.age"), "x\n");
        },
        &["both app.conf and app.conf.age"],
    );
}

/// Threat: a broad allow list lets the repository rewrite the gateway's own
/// trust settings (here its age key, placed under an allowed directory).
#[test]
fn bundle_writing_tends_own_key() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::new(tmp.path(), &fleet.url(), "");
    let key = gw.path("/etc/myapp/keys/age.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let out = std::process::Command::new("age-keygen").arg("-o").arg(&key).output().expect("age-keygen");
    assert!(out.status.success(), "{out:?}");
    gw.write_config(&fleet.url(), "", &format!("age_identity = \"{}\"", key.display()));
    good_bundle(&fleet);
    fleet.commit("good");
    gw.sync_ok();
    let key_before = std::fs::read(&key).unwrap();
    fleet.write(&format!("{B}/files/etc/myapp/keys/age.key"), "AGE-SECRET-KEY-1ATTACKERSKEY\n");
    fleet.commit("replace the gateway's key");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("/etc/myapp/keys/age.key") && r.stderr.contains("tend's own configuration, key or state"),
        "{r:?}"
    );
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
}

/// Threat: a template that is not text corrupts the rendered file.
#[test]
fn template_that_is_not_utf8() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/files/etc/myapp/app.conf"), b"\xff\xfe{{ device_id }}".as_slice())
                .write(&format!("{B}/tend.toml"), "[[file]]\npath = \"/etc/myapp/app.conf\"\ntemplate = true\n");
        },
        &["devices/gw-1/files/etc/myapp/app.conf", "not valid UTF-8"],
    );
}

/// Threat: an include that names a URL, to pull a bundle from elsewhere.
#[test]
fn include_of_a_url() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "include = [\"https://evil.example/bundle\"]\n");
        },
        &["devices/gw-1/https:/evil.example/bundle: bundle directory not found in this revision"],
    );
}

/// Threat: a NUL in a hook's argument truncates it where the OS reads it.
#[test]
fn nul_in_a_hook_argument() {
    rejected(
        |f, _| {
            f.write(
                &format!("{B}/tend.toml"),
                "[[file]]\npath = \"/etc/myapp/app.conf\"\non_change = [\"rm\", \"-rf\\u0000 /\"]\n",
            );
        },
        &["devices/gw-1/tend.toml", "on_change must be a non-empty command"],
    );
}

/// Threat: an owner string that chown would read as user:group.
#[test]
fn owner_with_a_colon() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "[[file]]\npath = \"/etc/myapp/app.conf\"\nowner = \"root:root\"\n");
        },
        &["devices/gw-1/tend.toml", "not a valid name"],
    );
}

/// Threat: a symlink to a block device copies the disk into a config file.
#[test]
fn symlink_to_a_device() {
    rejected(
        |f, _| {
            f.symlink(&format!("{B}/files/etc/myapp/disk"), "/dev/sda");
        },
        &["devices/gw-1/files/etc/myapp/disk", "outside"],
    );
}

/// Threat: tend.toml that is not text.
#[test]
fn tend_toml_that_is_not_utf8() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), b"include = [\"\xff\"]\n".as_slice());
        },
        &["devices/gw-1/tend.toml", "not valid UTF-8"],
    );
}

/// Threat: a health check that reads local files or other schemes.
#[test]
fn check_with_a_file_url() {
    rejected(
        |f, _| {
            f.write(&format!("{B}/tend.toml"), "[[check]]\nname = \"x\"\nhttp = \"file:///etc/shadow\"\n");
        },
        &["devices/gw-1/tend.toml", "[[check]] x: http \"file:///etc/shadow\" must be an http:// URL"],
    );
}

// ---- hostile configurations: exit 2 naming the file and field; nothing changes.

/// Apply a good revision, replace the config with `hostile(original)`, and
/// check `tend sync` exits 2 with one error naming the config file and every
/// `expect`, with the root and the state directory byte-identical.
fn config_rejected(hostile: impl FnOnce(&str, &Gateway) -> Vec<u8>, expect: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::new(tmp.path(), &fleet.url(), "");
    good_bundle(&fleet);
    fleet.commit("good");
    gw.sync_ok();
    fleet.write(&format!("{B}/files/etc/myapp/app.conf"), "port = 9\n");
    fleet.commit("next");
    let (root, state) = (gw.snapshot(), tend_e2e::snapshot(&gw.state));
    let original = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, hostile(&original, &gw)).unwrap();
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 2, "hostile config was not refused as a config error: {r:?}");
    let err = r.stderr.trim();
    assert!(err.contains(&gw.config.display().to_string()), "the error does not name the file: {err}");
    for e in expect {
        assert!(err.contains(e), "error does not contain {e:?}: {err}");
    }
    assert_eq!(gw.snapshot(), root, "files changed");
    assert_eq!(tend_e2e::snapshot(&gw.state), state, "the state directory changed");
}

fn replace(from: &'static str, to: &'static str) -> impl FnOnce(&str, &Gateway) -> Vec<u8> {
    move |c: &str, _: &Gateway| {
        assert!(c.contains(from), "{from:?} not in the config");
        c.replacen(from, to, 1).into_bytes()
    }
}

/// Threat: the bundle path climbs out of the repository.
#[test]
fn config_source_path_traversal() {
    config_rejected(
        replace("path = \"devices/{device_id}\"", "path = \"../../{device_id}\""),
        &["[source].path", "'..'"],
    );
}

/// Threat: a device id that is a path, walking into another device's bundle.
#[test]
fn config_device_id_traversal() {
    config_rejected(
        replace("device_id = \"gw-1\"", "device_id = \"../gw-2\""),
        &["`device_id`: \"../gw-2\" must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.'"],
    );
}

/// Threat: a NUL in the device id truncates paths and topics.
#[test]
fn config_nul_in_device_id() {
    config_rejected(
        replace("device_id = \"gw-1\"", "device_id = \"gw\\u0000-1\""),
        &["`device_id`: \"gw\\0-1\" must be 1-128 characters of [A-Za-z0-9_.-]"],
    );
}

/// Threat: a relative root writes wherever the service happens to start.
#[test]
fn config_relative_files_root() {
    config_rejected(
        |c, gw| c.replacen(&format!("root = \"{}\"", gw.root.display()), "root = \"relative/root\"", 1).into_bytes(),
        &["[files].root"],
    );
}

/// Threat: an allow entry that climbs out with '..'.
#[test]
fn config_allow_with_dotdot() {
    config_rejected(
        replace("allow = [\"/etc/myapp\", \"/opt/myapp\"]", "allow = [\"/etc/myapp/../../root\"]"),
        &["[files].allow", "'..'"],
    );
}

/// Threat: a relative state directory puts the store (and its history) anywhere.
#[test]
fn config_relative_state_dir() {
    config_rejected(
        |c, gw| c.replacen(&format!("state_dir = \"{}\"", gw.state.display()), "state_dir = \"state\"", 1).into_bytes(),
        &["state_dir"],
    );
}

/// Threat: TOML nested past the parser's stack.
#[test]
fn config_toml_nesting_bomb() {
    config_rejected(
        |c, _| format!("{c}\nbomb = {}{}\n", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        &["invalid TOML"],
    );
}

/// Threat: a config that is not text.
#[test]
fn config_not_utf8() {
    config_rejected(|c, _| [c.as_bytes(), b"\n# \xff\xfe\n"].concat(), &["UTF-8"]);
}

/// Threat: an MQTT prefix with wildcards reads or writes every gateway's topics.
#[test]
fn config_mqtt_topic_prefix_with_wildcards() {
    config_rejected(
        |c, _| format!("{c}\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\ntopic_prefix = \"tend/#\"\n").into_bytes(),
        &["[mqtt].topic_prefix"],
    );
}

/// Threat: an MQTT URL of another scheme sends reports somewhere unexpected.
#[test]
fn config_mqtt_url_with_another_scheme() {
    config_rejected(|c, _| format!("{c}\n[mqtt]\nurl = \"http://127.0.0.1:1\"\n").into_bytes(), &["[mqtt].url"]);
}

/// Threat: a typo silently turns a safety setting off.
#[test]
fn config_unknown_key() {
    config_rejected(
        |c, _| c.replacen("[files]\n", "[files]\nalow_privileged = true\n", 1).into_bytes(),
        &["unknown field `alow_privileged`"],
    );
}

/// Threat: an allowed-signers file that does not parse turns verification off.
#[test]
fn config_malformed_allowed_signers() {
    config_rejected(
        |c, gw| {
            let f = gw.dir.join("allowed_signers");
            std::fs::write(&f, "ops@example.com ssh-ed25519\n").unwrap();
            c.replacen("timeout = \"10s\"", &format!("timeout = \"10s\"\nallowed_signers = \"{}\"", f.display()), 1)
                .into_bytes()
        },
        &["[source].allowed_signers", "allowed_signers:1"],
    );
}

/// Threat: an age identity that does not parse (and must not be echoed).
#[test]
fn config_malformed_age_identity() {
    config_rejected(
        |c, gw| {
            let f = gw.dir.join("age.key");
            std::fs::write(&f, "AGE-SECRET-KEY-1SHOULDNOTBEECHOED\n").unwrap();
            c.replacen("[files]\n", &format!("[files]\nage_identity = \"{}\"\n", f.display()), 1).into_bytes()
        },
        &["[files].age_identity", "age.key:1"],
    );
}
