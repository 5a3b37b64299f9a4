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
