//! The command line (CONTRACT §1): exit statuses and messages that name the problem.

use std::io::Write;
use std::process::{Command, Stdio};

fn chargesite() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chargesite"));
    c.env_remove("CHARGESITE_CONFIG");
    c
}

fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text).unwrap();
    let out = chargesite()
        .arg("check-config")
        .arg("--config")
        .arg(&p)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn a_valid_config_checks_ok() {
    let (code, out) =
        check("[site]\nid = \"site-001\"\n[uplink]\nurl = \"mqtts://broker.example:8883\"\n");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("site-001"));
}

#[test]
fn an_unknown_key_exits_2_and_names_it() {
    let (code, out) = check("[site]\nid = \"s\"\n[store]\npth = \"/x\"\n");
    assert_eq!(code, 2);
    assert!(out.contains("pth"), "{out}");
}

#[test]
fn an_invalid_value_exits_2_and_names_the_key() {
    let (code, out) =
        check("[site]\nid = \"s\"\n[uplink]\nurl = \"mqtt://h:1\"\nkeepalive_secs = 0\n");
    assert_eq!(code, 2);
    assert!(out.contains("uplink.keepalive_secs"), "{out}");
    let (code, out) = check("[site]\nid = \"s\"\n[ocpp]\nlisten = \"nowhere\"\n");
    assert_eq!(code, 2);
    assert!(out.contains("ocpp.listen"), "{out}");
}

#[test]
fn a_missing_config_file_exits_2_and_names_it() {
    let out = chargesite()
        .args(["run", "--config", "/nonexistent/chargesite.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/chargesite.toml"));
}

#[test]
fn the_config_path_comes_from_the_environment_when_not_given() {
    let out = chargesite()
        .arg("check-config")
        .env("CHARGESITE_CONFIG", "/nonexistent/from-env.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("from-env.toml"));
}

#[test]
fn bad_usage_exits_2() {
    let out = chargesite().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn hash_password_prints_a_hash_the_config_accepts() {
    let mut child = chargesite()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        chargesite::password::verify("s3cret", &hash),
        "one trailing newline is stripped"
    );
    assert!(!chargesite::password::verify("s3cret\n", &hash));
    let (code, out) = check(&format!(
        "[site]\nid = \"s\"\n[[ocpp.chargers]]\nid = \"CP1\"\npassword_hash = \"{hash}\"\n"
    ));
    assert_eq!(code, 0, "{out}");
}
