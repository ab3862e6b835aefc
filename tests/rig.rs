//! The test rig: `chargesite simulate` (the real binary) against the agent over loopback,
//! with every fault it can inject.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, Charger};

/// Reads sd_notify datagrams until one satisfies `want`; returns everything read.
fn notified_until(sock: &UnixDatagram, want: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let Ok(n) = sock.recv(&mut buf) else { continue }; // read timeout: look again
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = want(&msg);
        seen.push(msg);
        if done {
            return seen;
        }
    }
    panic!("no sd_notify message as wanted within 15 s; got {seen:?}");
}

#[tokio::test]
async fn systemd_is_told_ready_the_status_with_chargers_and_store_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let config = dir.path().join("chargesite.toml");
    std::fs::write(
        &config,
        common::base_config(
            dir.path(),
            "[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\n",
        ),
    )
    .unwrap();
    let mut agent = Agent::start_with_env(
        dir,
        config,
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let seen = notified_until(&sock, |m| m.starts_with("STATUS="));
    assert!(seen.iter().any(|m| m == "READY=1"), "{seen:?}");
    assert_eq!(
        seen.last().unwrap(),
        "STATUS=0 chargers connected, uplink not configured, store ok"
    );

    let mut charger = Charger::connect(&agent.url("CP-STATUS")).await;
    charger.boot().await;
    notified_until(&sock, |m| {
        m == "STATUS=1 charger connected, uplink not configured, store ok"
    });
    drop(charger);
    notified_until(&sock, |m| m.starts_with("STATUS=0 chargers connected"));

    assert_eq!(agent.terminate(), Some(0));
    notified_until(&sock, |m| m == "STOPPING=1");
}

#[test]
fn simulated_chargers_with_faults_run_clean_sessions_against_the_agent() {
    let agent = Agent::start(
        "allow_unknown_chargers = true",
        "[auth]\nfree_vend = true\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_chargesite"))
        .args([
            "simulate",
            "--url",
            &format!("ws://{}/ocpp", agent.addr),
            "--chargers",
            "5",
            "--sessions",
            "2",
            "--session-secs",
            "4",
            "--meter-interval-ms",
            "400",
            "--time-scale",
            "60",
            "--fault",
            "drop=1",
            "--fault",
            "clock=2",
            "--fault",
            "reboot=3",
            "--offline-secs",
            "2",
            "--duration-secs",
            "120",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sessions: 10 started, 10 stopped"),
        "{stdout}"
    );
    assert!(stdout.contains("protocol errors: 0"), "{stdout}");

    let db = agent.db();
    let stopped: i64 = db
        .query_row(
            "SELECT count(*) FROM sessions WHERE state = 'stopped'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stopped, 10);
    let flags = |cp: &str| -> Vec<String> {
        db.prepare("SELECT flags FROM sessions WHERE cp_id = ?1 ORDER BY transaction_id")
            .unwrap()
            .query_map([cp], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    // no clean charger is flagged (the compressed clock does not run ahead)
    assert!(
        flags("SIM0001").iter().all(|f| f.is_empty()),
        "{:?}",
        flags("SIM0001")
    );
    // the unset clock is flagged
    assert!(flags("SIM0003").iter().all(|f| f.contains("clock_unset")));
    // the reboot: the lost transaction ends with Reboot, the next starts from 0 and is not
    // billed as a huge delta
    assert!(flags("SIM0004")[1].contains("meter_start_zero"));
    let big: i64 = db
        .query_row("SELECT max(energy_wh) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert!(
        big < 10_000,
        "no session bills more than it delivered: {big} Wh"
    );
    // the dropped charger was interrupted and resumed, its queued readings all linked
    let events = agent.events();
    let count = |k: &str| events.iter().filter(|e| e.1 == k).count();
    assert!(count("session.interrupted") >= 2);
    assert!(count("session.resumed") >= 2);
    let orphans: i64 = db
        .query_row(
            "SELECT count(*) FROM meter_values WHERE transaction_id IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0);
}

#[test]
fn simulate_fails_with_a_clear_error_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_chargesite"))
        .args([
            "simulate",
            "--url",
            &format!("ws://127.0.0.1:{port}/ocpp"),
            "--chargers",
            "2",
            "--duration-secs",
            "10",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("protocol errors: 2"));
}

#[test]
fn simulate_rejects_bad_arguments_with_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_chargesite"))
        .args(["simulate", "--url", "http://x", "--chargers", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_chargesite"))
        .args(["simulate", "--url", "ws://x", "--chargers", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
