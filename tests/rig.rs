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

/// `chargesite charger SIMxxxx test-session` against `chargesite simulate
/// --wait-remote-start`, a 1.6 and a 2.0.1 charger: each session is started by the
/// engineer's command only, charges, is stopped, and passes every check.
#[test]
fn a_field_engineers_test_session_passes_on_simulated_1_6_and_2_0_1_chargers() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let config = dir.path().join("chargesite.toml");
    std::fs::write(
        &config,
        common::base_config(
            dir.path(),
            &format!(
                "[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\n\n\
                 [status]\nlisten = \"\"\nsocket = \"{}\"\n",
                sock.display()
            ),
        ),
    )
    .unwrap();
    let agent = Agent::start_with(dir, config);
    let mut sim = Command::new(env!("CARGO_BIN_EXE_chargesite"))
        .args([
            "simulate",
            "--url",
            &format!("ws://{}/ocpp", agent.addr),
            "--chargers",
            "2",
            "--ocpp",
            "mixed",
            "--wait-remote-start",
            "--sessions",
            "1",
            "--session-secs",
            "600",
            "--meter-interval-ms",
            "1000",
            "--duration-secs",
            "120",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let online = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let up: i64 = agent
                .db()
                .query_row(
                    "SELECT count(*) FROM chargers WHERE vendor IS NOT NULL",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(0);
            if up >= n as i64 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    };
    assert!(
        online(2),
        "the simulated chargers did not boot:\n{}",
        agent.log()
    );
    // nothing starts on its own
    std::thread::sleep(Duration::from_secs(2));
    let sessions = || -> i64 {
        agent
            .db()
            .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(sessions(), 0, "a session began without a remote start");
    for (cp, version) in [("SIM0001", "1.6"), ("SIM0002", "2.0.1")] {
        let out = Command::new(env!("CARGO_BIN_EXE_chargesite"))
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("CHARGESITE_STATUS_PASSWORD")
            .args(["charger", "--config"])
            .arg(&agent.config)
            .args([cp, "test-session", "--secs", "6"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{cp}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("(OCPP {version})")), "{stdout}");
        assert!(stdout.contains("ok   meter increasing"), "{stdout}");
        assert!(
            stdout.contains("ok   MeterValues about every 1 s (configured 1 s)"),
            "{stdout}"
        );
        assert!(stdout.contains("ok   energy"), "{stdout}");
        assert!(stdout.contains("test session passed"), "{stdout}");
    }
    let status = sim.wait().unwrap();
    let mut sim_out = String::new();
    std::io::Read::read_to_string(sim.stdout.as_mut().unwrap(), &mut sim_out).unwrap();
    assert!(status.success(), "{sim_out}");
    assert!(
        sim_out.contains("sessions: 2 started, 2 stopped"),
        "{sim_out}"
    );
    assert_eq!(sessions(), 2);
}
