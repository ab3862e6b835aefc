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
fn simulated_2_0_1_chargers_with_faults_run_clean_sessions_against_the_agent() {
    let agent = Agent::start(
        "allow_unknown_chargers = true",
        "[auth]\nfree_vend = true\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_chargesite"))
        .args([
            "simulate",
            "--url",
            &format!("ws://{}/ocpp", agent.addr),
            "--ocpp",
            "mixed",
            "--chargers",
            "6",
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
            "clock=3",
            "--fault",
            "reboot=5",
            "--offline-secs",
            "2",
            "--duration-secs",
            "120",
            "--tag",
            "482913",
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
        stdout.contains("chargers connected: 6 (OCPP 2.0.1: 3)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sessions: 12 started, 12 stopped"),
        "{stdout}"
    );

    let db = agent.db();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    // the odd chargers spoke 2.0.1: their transactions are theirs, named by strings
    assert_eq!(
        count(
            "SELECT count(*) FROM sessions WHERE state = 'stopped' AND charger_tx_id IS NOT NULL"
        ),
        6
    );
    assert_eq!(
        count("SELECT count(*) FROM sessions WHERE state = 'stopped'"),
        12
    );
    // the dropped 2.0.1 charger replayed its queued events offline, in seqNo order
    let replayed: Vec<(i64, i64)> = db
        .prepare(
            "SELECT seq_no, offline FROM tx_events WHERE cp_id = 'SIM0002' \
             ORDER BY charger_tx_id, seq_no",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        replayed.iter().filter(|e| e.1 == 1).count() >= 4,
        "{replayed:?}"
    );
    assert_eq!(replayed.first(), Some(&(0, 0)));
    let flags = |cp: &str| -> Vec<String> {
        db.prepare("SELECT flags FROM sessions WHERE cp_id = ?1 ORDER BY started_at")
            .unwrap()
            .query_map([cp], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(
        flags("SIM0002").iter().all(|f| f.is_empty()),
        "{:?}",
        flags("SIM0002")
    );
    assert!(flags("SIM0004").iter().all(|f| f.contains("clock_unset")));
    // the rebooted 2.0.1 charger: PowerLoss, then a Transaction.Begin of 0 that is flagged
    // and not billed as a huge delta
    assert!(
        flags("SIM0006")[1].contains("meter_start_zero"),
        "{:?}",
        flags("SIM0006")
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM sessions WHERE cp_id = 'SIM0006' AND stop_reason = 'PowerLoss'"
        ),
        1
    );
    assert!(count("SELECT max(energy_wh) FROM sessions") < 10_000);
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
