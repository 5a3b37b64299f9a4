//! Issue 8: a compromised Git host or a careless commit must not own the fleet.
//!
//! - Signed commits (acceptance 1): keys made by `ssh-keygen`, commits signed by
//!   git itself (`gpg.format = ssh`); tend verifies in Rust against an
//!   allowed-signers file. Unsigned, wrongly signed and tampered commits are
//!   refused, naming the commit, and nothing of them is applied.
//! - Secrets (acceptance 2): `files/**.age` made by the `age` tool, decrypted
//!   with the gateway's key; the plaintext is absent from the store's files,
//!   logs, `--dry-run`, `validate` and MQTT.
//! - No secret in logs: a token, an MQTT password, the age key and a secret's
//!   plaintext are planted, and a whole run's output is searched for them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tend_e2e::{Fleet, Gateway, HttpGit, Mosquitto, Run, commit_signed, good_bundle, run, ssh_key};

// ---- signatures ---------------------------------------------------------

struct Signed {
    tmp: tempfile::TempDir,
    fleet: Fleet,
    gw: Gateway,
    key: PathBuf,
    first: String,
}

/// A fleet whose first commit is signed by an allowed key, applied.
fn signed_gateway(signers_line: impl Fn(&str) -> String) -> Signed {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(tmp.path(), "release");
    let signers = tmp.path().join("allowed_signers");
    std::fs::write(&signers, format!("# who may change this fleet\n{}\n", signers_line(&public))).unwrap();
    let fleet = Fleet::new(tmp.path(), "fleet");
    let gw = Gateway::with_source_keys(
        tmp.path(),
        &fleet.url(),
        &format!("allowed_signers = \"{}\"", signers.display()),
        "",
    );
    good_bundle(&fleet);
    let first = commit_signed(&fleet, &key, "signed");
    Signed { tmp, fleet, gw, key, first }
}

/// The sync of the branch's new tip is refused: exit 1, one error naming the
/// commit and `why`, files byte-identical, status failed naming the commit.
fn refused(s: &Signed, bad: &str, why: &str) {
    let before = s.gw.snapshot();
    let r = s.gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    let line = r.stderr.trim();
    assert_eq!(line.lines().count(), 1, "one error line: {line}");
    assert!(line.contains(&format!("commit {bad}")) && line.contains(why), "{line}");
    assert_eq!(s.gw.snapshot(), before, "something was applied from a refused commit");
    let status = s.gw.tend(&["status", "--json"]).json();
    assert_eq!(status["phase"], "failed", "{status}");
    assert_eq!(status["target_revision"], bad);
    assert_eq!(status["revision"], s.first.as_str(), "the signed revision stays applied");
    assert!(status["error"].as_str().unwrap().contains(bad), "{status}");
}

#[test]
fn a_commit_signed_by_an_allowed_key_is_applied() {
    let s = signed_gateway(|public| format!("release@example.com namespaces=\"git\" {public}"));
    let r = s.gw.tend(&["-vv", "sync", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["commit"], s.first.as_str());
    assert!(r.stderr.contains("commit signature verified") && r.stderr.contains("release@example.com"), "{r:?}");
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "port = 502\n");
    // and the next signed commit too
    s.fleet.write("devices/gw-1/files/etc/myapp/app.conf", "port = 503\n");
    let second = commit_signed(&s.fleet, &s.key, "second");
    assert_eq!(s.gw.sync_ok()["commit"], second.as_str());
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "port = 503\n");
}

#[test]
fn an_unsigned_commit_is_refused() {
    let s = signed_gateway(|public| format!("release@example.com {public}"));
    s.gw.sync_ok();
    s.fleet.write("devices/gw-1/files/etc/myapp/app.conf", "port = 666\n");
    let bad = s.fleet.commit("unsigned");
    refused(&s, &bad, "is not signed");
    // polled again: still refused (quarantined), still nothing applied
    assert_eq!(s.gw.tend(&["sync"]).code, 1);
    assert_eq!(s.gw.read("/etc/myapp/app.conf"), "port = 502\n");
}

#[test]
fn a_commit_signed_by_an_unlisted_key_is_refused() {
    let s = signed_gateway(|public| format!("release@example.com {public}"));
    s.gw.sync_ok();
    let (intruder, _) = ssh_key(s.tmp.path(), "intruder");
    s.fleet.write("devices/gw-1/files/etc/myapp/app.conf", "port = 666\n");
    let bad = commit_signed(&s.fleet, &intruder, "signed by someone else");
    refused(&s, &bad, "which is not in");
}

#[test]
fn a_tampered_signed_commit_is_refused() {
    let s = signed_gateway(|public| format!("release@example.com {public}"));
    s.gw.sync_ok();
    s.fleet.write("devices/gw-1/files/etc/myapp/app.conf", "port = 503\n");
    let signed = commit_signed(&s.fleet, &s.key, "release 503");
    // The host rewrites the commit (another tree: the previous one) and keeps
    // the signature: a new commit id, the old signature.
    let raw = run(Command::new("git").current_dir(&s.fleet.dir).args(["cat-file", "commit", &signed]));
    let first_tree =
        run(Command::new("git").current_dir(&s.fleet.dir).args(["rev-parse", &format!("{}^{{tree}}", s.first)]));
    let tampered_text = raw.replacen(&raw[5..45], first_tree.trim(), 1).replace("release 503", "release 503 (fixed)");
    let tmpfile = s.tmp.path().join("tampered");
    std::fs::write(&tmpfile, tampered_text).unwrap();
    let tampered =
        run(Command::new("git").current_dir(&s.fleet.dir).args(["hash-object", "-t", "commit", "-w"]).arg(&tmpfile))
            .trim()
            .to_owned();
    run(Command::new("git").current_dir(&s.fleet.dir).args(["update-ref", "refs/heads/main", &tampered]));
    refused(&s, &tampered, "does not verify");
}

#[test]
fn a_key_not_allowed_for_the_git_namespace_is_refused() {
    let s = signed_gateway(|public| format!("release@example.com namespaces=\"file\" {public}"));
    let r = s.gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("commit {}", s.first)) && r.stderr.contains("not allowed for namespace"),
        "{r:?}"
    );
    assert!(!s.gw.path("/etc/myapp/app.conf").exists());
}

#[test]
fn an_expired_key_is_refused() {
    let s = signed_gateway(|public| format!("release@example.com valid-before=\"20000101\" {public}"));
    let r = s.gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("expired before the commit's time"), "{r:?}");
}

#[test]
fn a_broken_allowed_signers_file_is_a_config_error() {
    let s = signed_gateway(|public| format!("release@example.com {public}"));
    let signers = s.tmp.path().join("allowed_signers");
    std::fs::write(&signers, "release@example.com ssh-ed25519 not-base64!\n").unwrap();
    let r = s.gw.tend(&["status"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("[source].allowed_signers") && r.stderr.contains("allowed_signers:1"), "{r:?}");
    std::fs::remove_file(&signers).unwrap();
    let r = s.gw.tend(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("[source].allowed_signers") && r.stderr.contains("cannot read"), "{r:?}");
}

// ---- secrets --------------------------------------------------------------

/// An age identity made by age-keygen: (identity file, recipient).
fn age_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("age-keygen").arg("-o").arg(&key).output().expect("age-keygen (tests/run installs age)");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&key).unwrap();
    let recipient = text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_owned();
    (key, recipient)
}

fn age_encrypt(recipient: &str, plaintext: &str, out: &Path) {
    let src = out.with_extension("plain-for-test");
    std::fs::write(&src, plaintext).unwrap();
    run(Command::new("age").args(["-r", recipient, "-o"]).arg(out).arg(&src));
    std::fs::remove_file(&src).unwrap();
}

/// Every byte under `dir` (files only), for "is this string anywhere in here".
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for (_, (mode, content)) in tend_e2e::snapshot(dir) {
        if mode & 0o170000 == 0o100000 {
            out.extend_from_slice(&content);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

struct Secret {
    tmp: tempfile::TempDir,
    fleet: Fleet,
    gw: Gateway,
    key: PathBuf,
    recipient: String,
}

const PLAIN: &str = "db_password = hunter2-7f3a9c\n";

fn secret_gateway(extra: &str) -> Secret {
    let tmp = tempfile::tempdir().unwrap();
    let (key, recipient) = age_key(tmp.path(), "age.key");
    let fleet = Fleet::new(tmp.path(), "fleet");
    good_bundle(&fleet);
    std::fs::create_dir_all(fleet.dir.join("devices/gw-1/files/etc/myapp")).unwrap();
    age_encrypt(&recipient, PLAIN, &fleet.dir.join("devices/gw-1/files/etc/myapp/db.conf.age"));
    fleet.commit("with a secret");
    let gw = Gateway::new(tmp.path(), &fleet.url(), &format!("age_identity = \"{}\"\n{extra}", key.display()));
    Secret { tmp, fleet, gw, key, recipient }
}

#[test]
fn age_secrets_are_decrypted_on_the_gateway_and_kept_out_of_store_logs_and_outputs() {
    let s = secret_gateway("");
    let hash_of_plain = {
        use std::io::Write;
        let mut c = Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(PLAIN.as_bytes()).unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()[..12].to_owned()
    };
    let leaks = |what: &str, out: &[u8]| {
        assert!(!contains(out, "hunter2"), "{what} holds the secret's plaintext");
        assert!(!contains(out, &hash_of_plain), "{what} holds a hash of the secret's plaintext");
    };

    let dry: Run = s.gw.tend(&["-vvv", "sync", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("/etc/myapp/db.conf (mode 0600, secret "), "{}", dry.stdout);
    leaks("--dry-run output", format!("{}{}", dry.stdout, dry.stderr).as_bytes());

    let r = s.gw.tend(&["-vvv", "sync", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    leaks("sync output and trace log", format!("{}{}", r.stdout, r.stderr).as_bytes());
    assert_eq!(s.gw.read("/etc/myapp/db.conf"), PLAIN);
    assert_eq!(s.gw.mode("/etc/myapp/db.conf"), 0o600);
    assert!(!s.gw.path("/etc/myapp/db.conf.age").exists());
    for cmd in [&["status", "--json"][..], &["history", "--json"]] {
        let out = s.gw.tend(cmd);
        leaks(&cmd.join(" "), format!("{}{}", out.stdout, out.stderr).as_bytes());
    }
    // The store holds the ciphertext only (sled writes values uncompressed).
    // It does keep the plaintext's hash, to see drift: it sits beside the key
    // that decrypts the secret, in a directory only tend reads.
    s.gw.tend(&["sync"]);
    assert!(!contains(&all_bytes(&s.gw.state), "hunter2"), "the state directory holds the plaintext");

    // validate shows the ciphertext's hash, with or without the key
    let bundle = s.fleet.dir.join("devices/gw-1");
    for with_key in [false, true] {
        let mut c = Command::new(tend_e2e::tend_bin());
        c.arg("validate").arg(&bundle).arg("--json");
        if with_key {
            c.arg("--age-identity").arg(&s.key);
        }
        let v: Run = c.output().unwrap().into();
        assert_eq!(v.code, 0, "{v:?}");
        leaks("validate", format!("{}{}", v.stdout, v.stderr).as_bytes());
        let files = v.json()["files"].as_array().unwrap().clone();
        let f = files.iter().find(|f| f["path"] == "/etc/myapp/db.conf").expect("secret listed under its plain name");
        assert_eq!(f["secret"], true);
        assert_eq!(f["mode"], "0600");
    }

    // Drift is repaired from the stored ciphertext, and a changed secret rolls
    // back to the previous plaintext (from the store, decrypted again).
    std::fs::write(s.gw.path("/etc/myapp/db.conf"), "tampered\n").unwrap();
    s.gw.sync_ok();
    assert_eq!(s.gw.read("/etc/myapp/db.conf"), PLAIN);
    let first = s.fleet.head();
    age_encrypt(
        &s.recipient,
        "db_password = second-b81e\n",
        &s.fleet.dir.join("devices/gw-1/files/etc/myapp/db.conf.age"),
    );
    s.fleet.commit("rotate");
    s.gw.sync_ok();
    assert_eq!(s.gw.read("/etc/myapp/db.conf"), "db_password = second-b81e\n");
    let r = s.gw.tend(&["rollback", &first]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.gw.read("/etc/myapp/db.conf"), PLAIN);
    let state = all_bytes(&s.gw.state);
    assert!(!contains(&state, "hunter2") && !contains(&state, "second-b81e"), "plaintext in the state directory");
}

#[test]
fn a_secret_without_a_gateway_key_is_refused_and_nothing_applied() {
    let s = secret_gateway("");
    // the same bundle on a gateway without age_identity
    let other = Gateway::new(&s.tmp.path().join("nokey"), &s.fleet.url(), "");
    let r = other.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("devices/gw-1/files/etc/myapp/db.conf.age")
            && r.stderr.contains("[files].age_identity is not set"),
        "{r:?}"
    );
    assert!(!other.path("/etc/myapp/app.conf").exists(), "the rest of the bundle was applied");

    // a key the secret is not encrypted to
    let (wrong, _) = age_key(s.tmp.path(), "wrong.key");
    std::fs::write(&s.key, std::fs::read(&wrong).unwrap()).unwrap();
    let r = s.gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("db.conf.age") && r.stderr.contains("not encrypted to this gateway's key"), "{r:?}");
    assert!(!s.gw.path("/etc/myapp/app.conf").exists());
}

// ---- no secret in logs -----------------------------------------------------

/// A whole daemon run with every kind of credential in play: git over HTTPS
/// with a token, MQTT with a password, an age key and a secret. Its log (at
/// trace level), its MQTT messages, status, history and events hold none of them.
#[test]
fn no_token_password_key_or_secret_appears_in_logs_status_events_or_mqtt() {
    let tmp = tempfile::tempdir().unwrap();
    let token = "tok-5ecret-0a1b2c";
    let password = "mqtt-5ecret-3d4e5f";

    let srv = tmp.path().join("srv");
    let fleet = Fleet::new(&srv, "fleet");
    good_bundle(&fleet);
    let (key, recipient) = age_key(tmp.path(), "age.key");
    let key_text = std::fs::read_to_string(&key).unwrap();
    let key_secret = key_text.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap().to_owned();
    std::fs::create_dir_all(fleet.dir.join("devices/gw-1/files/etc/myapp")).unwrap();
    age_encrypt(&recipient, PLAIN, &fleet.dir.join("devices/gw-1/files/etc/myapp/db.conf.age"));
    fleet.write("devices/gw-1/tend.toml", "[[check]]\nname = \"ok\"\ncommand = [\"true\"]\ninterval = \"1s\"\n");
    fleet.commit("one");

    let https = HttpGit::start_tls(&srv, Some(("x-access-token", token)));
    let broker = Mosquitto::start_with_password("gw-1", password);
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let pw_file = tmp.path().join("mqtt-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let gw = Gateway::with_source_keys(
        tmp.path(),
        &https.url("fleet"),
        &format!("ca_file = \"{}\"\ntoken_file = \"{}\"", https.ca_file().display(), token_file.display()),
        &format!(
            "age_identity = \"{}\"\n[apply]\nhealth_timeout = \"3s\"\n[mqtt]\nurl = \"{}\"\nusername = \"gw-1\"\npassword_file = \"{}\"\nhealth_interval = \"1s\"\n",
            key.display(),
            broker.url(),
            pw_file.display()
        ),
    );

    // An admin watching every topic (the broker needs a password for it too).
    let sub_user = ["-u", "gw-1", "-P", password];
    let sub = {
        let out = broker.dir.path().join("all.txt");
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new("mosquitto_sub")
            .args(broker.client_args())
            .args(sub_user)
            .args(["-i", "watch-all", "-v", "-t", "#"])
            .stdout(file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        (Killed(child), out)
    };
    broker.wait_subscribed("watch-all", "#");

    let daemon = gw.start_daemon_logging("trace");
    let log = daemon.log.clone();
    // Generous: a debug build logging at trace level, on a loaded CI machine.
    let start = std::time::Instant::now();
    loop {
        let r = gw.tend(&["status", "--json"]);
        if r.code == 0 && r.json()["phase"] == "synced" && r.json()["mqtt"] == "connected" {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "not synced and reporting after 120 s: {r:?}\nlog tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(gw.read("/etc/myapp/db.conf"), PLAIN);
    // a failing sync too: errors are where secrets leak
    std::fs::write(&token_file, "wrong-tok-99\n").unwrap();
    fleet.write("devices/gw-1/files/etc/myapp/app.conf", "port = 9\n");
    fleet.commit("two");
    let r = gw.tend(&["sync"]);
    assert_eq!(r.code, 1, "{r:?}");
    // Its event (source_unreachable, with the error) reaches the watcher;
    // what it says is checked below.
    let failed_event =
        |l: &str| l.starts_with("tend/v1/test/gw-1/events ") && l.contains("\"kind\":\"source_unreachable\"");
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&sub.1).unwrap_or_default().lines().any(failed_event) {
        assert!(start.elapsed() < Duration::from_secs(60), "the failing sync's event never reached the broker");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = gw.tend(&["status", "--json"]);
    let history = gw.tend(&["history", "--json"]);
    daemon.terminate(Duration::from_secs(10));
    let (sub_child, sub_out) = sub;
    drop(sub_child);

    let mqtt = std::fs::read_to_string(&sub_out).unwrap();
    assert!(mqtt.contains("tend/v1/test/gw-1/status"), "the watcher saw no status: {mqtt}");
    assert!(mqtt.contains("/events"), "the watcher saw no events: {mqtt}");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("TRACE"), "the log is not at trace level");
    let outputs = [
        ("daemon log (trace)", log_text),
        ("MQTT messages", mqtt),
        ("status", status.stdout + &status.stderr),
        ("history", history.stdout),
        ("failing sync", r.stdout + &r.stderr),
    ];
    for (what, text) in &outputs {
        for (secret, name) in [
            (token, "git token"),
            ("wrong-tok-99", "git token"),
            (password, "MQTT password"),
            (&key_secret, "age key"),
            ("hunter2", "secret plaintext"),
        ] {
            assert!(!text.contains(secret), "{what} holds the {name}");
        }
    }
    let store = all_bytes(&gw.state);
    for secret in [token, password, key_secret.as_str(), "hunter2"] {
        assert!(!contains(&store, secret), "the state directory holds a secret");
    }
}

/// A child process killed when dropped (also when the test fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
