//! Issue 7 (part): the systemd unit passes `systemd-analyze verify`, and its
//! exposure under `systemd-analyze security --offline=true` is printed and
//! kept low. (The sd_notify protocol is tested in daemon.rs.)
//! Issue 25 (part): the same for the stick import's template unit
//! `tend-import@.service`, which must be as hardened as tend.service, and
//! the udev rule that starts it, evaluated against the properties udev gives
//! a USB stick and the devices it must leave alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tend_e2e::repo_root;

/// The unit as shipped, with its programs pointed at the ones under test
/// (verify checks that they exist).
fn unit_for_test(dir: &Path, name: &str, as_name: &str) -> PathBuf {
    let unit = std::fs::read_to_string(repo_root().join("systemd").join(name)).unwrap();
    let path = dir.join(as_name);
    let stick = repo_root().join("packaging/stick/tend-stick");
    let unit = unit
        .replace("/usr/bin/tend", tend_e2e::tend_bin().to_str().unwrap())
        .replace("/usr/lib/tend/tend-stick", stick.to_str().unwrap());
    std::fs::write(&path, unit).unwrap();
    path
}

fn verify(unit: &Path) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze (tests/run installs systemd)");
    assert!(
        out.status.success(),
        "verify {}: {}{}",
        unit.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).expect(&text).to_owned();
    eprintln!("{line}");
    line.split(':').nth(1).and_then(|r| r.split_whitespace().next()).and_then(|x| x.parse().ok()).expect(&line)
}

#[test]
fn the_unit_verifies_and_its_exposure_is_low() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_for_test(tmp.path(), "tend.service", "tend.service");
    verify(&unit);
    let level = exposure(&unit);
    assert!(level <= 2.5, "exposure {level} is higher than 2.5 (the README says 2.3)");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "StateDirectory=tend",
        "RuntimeDirectory=tend",
        "ConfigurationDirectory=tend",
        "PrivateMounts=yes",
    ] {
        assert!(unit_text.contains(needed), "the unit lacks {needed}");
    }
}

/// The template, as the instance udev starts for a stick on sdb1: verifies,
/// and its exposure is no higher than tend.service's.
#[test]
fn the_stick_import_unit_verifies_and_is_as_hardened_as_tend_service() {
    let tmp = tempfile::tempdir().unwrap();
    let tend = exposure(&unit_for_test(tmp.path(), "tend.service", "tend.service"));
    unit_for_test(tmp.path(), "tend-import@.service", "tend-import@.service");
    // Verified both as the template and as an instance loaded from it.
    verify(&tmp.path().join("tend-import@.service"));
    let instance = unit_for_test(tmp.path(), "tend-import@.service", "tend-import@sdb1.service");
    verify(&instance);
    let import = exposure(&instance);
    assert!(import <= tend, "tend-import@.service exposure {import} is higher than tend.service's {tend}");

    let text = std::fs::read_to_string(repo_root().join("systemd/tend-import@.service")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for needed in [
        // A pulled stick stops the import.
        "BindsTo=dev-%i.device",
        "After=dev-%i.device",
        "Type=oneshot",
        "ExecStartPre=+/usr/lib/tend/tend-stick mount %I",
        "ExecStart=/usr/bin/tend import /run/tend/media/%I",
        // Unmounted whatever the import did.
        "ExecStopPost=+/usr/lib/tend/tend-stick umount %I",
        "ProtectSystem=strict",
        "ReadWritePaths=-/run/tend/media/%I/tend-reports",
        "ReadOnlyPaths=/run",
        "StateDirectory=tend",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_UNIX",
        "PrivateNetwork=yes",
        "PrivateMounts=yes",
    ] {
        assert!(lines.contains(&needed), "tend-import@.service lacks {needed}");
    }
    assert!(lines.iter().any(|l| l.starts_with("TimeoutStartSec=")), "no bound on the import");
    // Only the mount helper is privileged (+); the import runs in the sandbox.
    for l in lines.iter().filter(|l| l.starts_with("Exec") && l.contains("=+")) {
        assert!(l.contains("=+/usr/lib/tend/tend-stick "), "a privileged step other than tend-stick: {l}");
    }
    // Not RuntimeDirectory=: stopping this unit must not remove tend.service's
    // /run/tend, nor systemd remove a directory a stick is mounted on.
    assert!(!lines.iter().any(|l| l.starts_with("RuntimeDirectory")), "the import unit owns no runtime directory");
}

// ---- the udev rule -----------------------------------------------------------

/// One rule line: its match keys and its assignments, as (key, op, value).
type Rule = Vec<(String, String, String)>;

/// The rules file parsed the way udev reads it (one rule a line, `KEY op
/// "value"` pairs separated by commas). Panics on anything else, so a typo
/// in a key or an operator fails the test.
fn parse_rules(text: &str) -> Vec<Rule> {
    let mut rules = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut rule = Rule::new();
        let mut rest = line;
        while !rest.is_empty() {
            let op_at = rest.find(['=', '!', '+']).unwrap_or_else(|| panic!("no operator in {rest:?}"));
            let key = rest[..op_at].trim().to_owned();
            let op_len = if rest[op_at..].starts_with("==")
                || rest[op_at..].starts_with("!=")
                || rest[op_at..].starts_with("+=")
            {
                2
            } else {
                1
            };
            let op = rest[op_at..op_at + op_len].to_owned();
            let after = rest[op_at + op_len..].trim_start();
            assert!(after.starts_with('"'), "unquoted value in {line:?}");
            let end = after[1..].find('"').unwrap_or_else(|| panic!("unterminated value in {line:?}")) + 1;
            let value = after[1..end].to_owned();
            let known = ["ACTION", "SUBSYSTEM", "KERNEL", "TAG", "GOTO", "LABEL"].contains(&key.as_str())
                || (key.starts_with("ENV{") && key.ends_with('}'));
            assert!(known, "unknown key {key:?} in {line:?}");
            assert!(["==", "!=", "=", "+="].contains(&op.as_str()), "operator {op:?} in {line:?}");
            rule.push((key, op, value));
            rest = after[end + 1..].trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        }
        rules.push(rule);
    }
    rules
}

/// udev's match: `|` separates alternatives; `*` is the only glob used here.
fn matches(pattern: &str, value: &str) -> bool {
    pattern.split('|').any(|p| match p.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => p == value,
    })
}

/// The SYSTEMD_WANTS (and TAG) the rules give a device with these properties.
fn evaluate(rules: &[Rule], device: &[(&str, &str)]) -> (String, Vec<String>) {
    let mut env: HashMap<String, String> = device.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut tags = Vec::new();
    let mut goto: Option<String> = None;
    for rule in rules {
        if let Some(label) = &goto {
            if rule.iter().any(|(k, _, v)| k == "LABEL" && v == label) {
                goto = None;
            }
            continue;
        }
        let value_of = |env: &HashMap<String, String>, key: &str| -> String {
            let name = key.strip_prefix("ENV{").and_then(|k| k.strip_suffix('}')).unwrap_or(key);
            env.get(name).cloned().unwrap_or_default()
        };
        let all_match = rule.iter().filter(|(_, op, _)| op == "==" || op == "!=").all(|(k, op, v)| {
            let m = matches(v, &value_of(&env, k));
            if op == "==" { m } else { !m }
        });
        if !all_match {
            continue;
        }
        for (k, op, v) in rule.iter().filter(|(_, op, _)| op == "=" || op == "+=") {
            let v = v.replace("%k", &value_of(&env, "KERNEL"));
            match (k.as_str(), op.as_str()) {
                ("GOTO", _) => goto = Some(v),
                ("LABEL", _) => {}
                ("TAG", _) => tags.push(v),
                (k, op) => {
                    let name = k.strip_prefix("ENV{").and_then(|k| k.strip_suffix('}')).unwrap().to_owned();
                    let e = env.entry(name).or_default();
                    if op == "+=" && !e.is_empty() {
                        e.push(' ');
                    } else if op == "=" {
                        e.clear();
                    }
                    e.push_str(&v);
                }
            }
        }
    }
    (env.get("SYSTEMD_WANTS").cloned().unwrap_or_default(), tags)
}

#[test]
fn the_stick_rule_starts_the_import_for_a_usb_stick_only() {
    let path = repo_root().join("packaging/udev/90-tend-import.rules");
    // udevadm verify (systemd 254+) where this machine has it.
    if Command::new("udevadm").args(["verify", "--help"]).output().is_ok_and(|o| o.status.success()) {
        let out = Command::new("udevadm").arg("verify").arg(&path).output().unwrap();
        assert!(out.status.success(), "udevadm verify: {}", String::from_utf8_lossy(&out.stderr));
    } else {
        eprintln!("no `udevadm verify` here (systemd < 254): the rule is checked by the evaluation below only");
    }
    let rules = parse_rules(&std::fs::read_to_string(&path).unwrap());
    let stick = [
        ("ACTION", "add"),
        ("SUBSYSTEM", "block"),
        ("KERNEL", "sdb1"),
        ("DEVTYPE", "partition"),
        ("ID_BUS", "usb"),
        ("ID_FS_USAGE", "filesystem"),
        ("ID_FS_TYPE", "vfat"),
    ];
    let with = |changes: &[(&'static str, &'static str)]| {
        let mut d: Vec<(&str, &str)> =
            stick.iter().copied().filter(|(k, _)| !changes.iter().any(|(c, _)| c == k)).collect();
        d.extend(changes.iter().copied().filter(|(_, v)| !v.is_empty()));
        d
    };
    let started = "tend-import@sdb1.service";
    let (wants, tags) = evaluate(&rules, &stick);
    assert_eq!(wants, started);
    assert!(tags.iter().any(|t| t == "systemd"), "SYSTEMD_WANTS is read only for devices tagged systemd");
    // exFAT, and a whole disk without a partition table (a "superfloppy").
    assert_eq!(evaluate(&rules, &with(&[("ID_FS_TYPE", "exfat")])).0, started);
    let superfloppy = with(&[("KERNEL", "sdc"), ("DEVTYPE", "disk")]);
    assert_eq!(evaluate(&rules, &superfloppy).0, "tend-import@sdc.service");
    // Left alone: another event, bus or file system, a disk holding a
    // partition table, a device that is not a block device.
    for (why, device) in [
        ("a change event", with(&[("ACTION", "change")])),
        ("a remove event", with(&[("ACTION", "remove")])),
        ("an internal SATA disk", with(&[("ID_BUS", "ata")])),
        ("an SD card slot", with(&[("ID_BUS", "")])),
        ("ext4 (not by default)", with(&[("ID_FS_TYPE", "ext4")])),
        ("an NTFS stick", with(&[("ID_FS_TYPE", "ntfs")])),
        ("swap", with(&[("ID_FS_USAGE", "other"), ("ID_FS_TYPE", "swap")])),
        ("a LUKS partition", with(&[("ID_FS_USAGE", "crypto"), ("ID_FS_TYPE", "crypto_LUKS")])),
        (
            "a partitioned disk",
            with(&[("KERNEL", "sdb"), ("DEVTYPE", "disk"), ("ID_FS_USAGE", ""), ("ID_FS_TYPE", "")]),
        ),
        ("not a block device", with(&[("SUBSYSTEM", "usb")])),
    ] {
        assert_eq!(evaluate(&rules, &device).0, "", "the rule starts the import for {why}");
    }
    // The ext4 line the rule's comment offers for a local rule works as said.
    let text = std::fs::read_to_string(&path).unwrap();
    let offered = text.lines().find_map(|l| l.strip_prefix("#   ACTION==")).expect("the ext4 rule in the comment");
    let ext4 = parse_rules(&format!("ACTION=={offered}"));
    assert_eq!(evaluate(&ext4, &with(&[("ID_FS_TYPE", "ext4")])).0, started);
    assert_eq!(evaluate(&ext4, &with(&[("ID_BUS", "ata"), ("ID_FS_TYPE", "ext4")])).0, "");
}
