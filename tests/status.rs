//! The local status server (CONTRACT §5, docs/status.md) and `chargesite status`, over
//! real sockets against the real binary: the API's JSON with a connected charger and a
//! running session (and never its tag), `/metrics` through a Prometheus text parser, Basic
//! auth off loopback, a status address that cannot be bound, and the CLI.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::{status_addr, ts, Agent, Charger};
use serde_json::{json, Value};

/// A tag that must never appear in anything the status server says.
const TAG: &str = "SECRET-TAG-4242";

/// One HTTP/1.1 GET over a fresh connection: (status, headers, body).
fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the status server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n{auth}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

fn basic(password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("engineer:{password}"))
    )
}

fn chargesite() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chargesite"));
    c.env_remove("CHARGESITE_CONFIG")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("CHARGESITE_STATUS_PASSWORD");
    c
}

/// An agent whose status server listens on a free loopback port and whose API socket is
/// in its temp dir.
fn agent_with_status(status_extra: &str) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let text = common::base_config(
        dir.path(),
        &format!(
            "[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\n\n\
             [auth]\nfree_vend = true\n\n[status]\nsocket = \"{}\"\n{status_extra}\n",
            sock.display()
        ),
    );
    let config = dir.path().join("chargesite.toml");
    std::fs::write(&config, text).unwrap();
    Agent::start_with(dir, config)
}

/// A booted charger with connector 1 charging a session started with [`TAG`].
async fn charging(agent: &Agent, cp: &str) -> (Charger, i64) {
    let mut c = Charger::connect(&agent.url(cp)).await;
    c.boot().await;
    c.ok(
        "StatusNotification",
        json!({"connectorId": 1, "status": "Charging", "errorCode": "NoError"}),
    )
    .await;
    let tx = c.start(1, TAG, 1000, &ts(0)).await;
    c.meter(1, tx, &ts(1), 1600).await;
    (c, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_api_shows_a_connected_charger_and_its_running_session_but_never_its_tag() {
    let agent = agent_with_status("listen = \"127.0.0.1:0\"");
    let addr = status_addr(&agent).await;
    let (_charger, tx) = charging(&agent, "CP-STATUS-1").await;

    let (code, head, body) = get(addr, "/api/v1/status", None);
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    assert!(!body.contains(TAG), "the tag is in the status body: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["site"], "site-001");
    let cp = &v["chargers"][0];
    assert_eq!(cp["id"], "CP-STATUS-1");
    assert_eq!(cp["online"], true);
    assert!(cp["since"].is_string(), "{cp}");
    assert_eq!(cp["ocpp_version"], "1.6");
    assert_eq!(cp["security_profile"], 1);
    assert_eq!(cp["vendor"], "TestVendor");
    assert_eq!(cp["model"], "T1");
    assert_eq!(cp["serial"], "SN-1");
    assert_eq!(cp["firmware"], "1.0");
    assert!(cp["last_seen"].is_string(), "{cp}");
    assert_eq!(cp["connectors"][0]["connector_id"], 1);
    assert_eq!(cp["connectors"][0]["status"], "Charging");
    let s = &v["sessions"][0];
    assert_eq!(s["transaction_id"], tx);
    assert_eq!(s["cp_id"], "CP-STATUS-1");
    assert_eq!(s["connector_id"], 1);
    assert_eq!(s["energy_wh"], 600);
    assert_eq!(s["power_w"], 7200);
    assert_eq!(v["uplink"]["configured"], false);
    assert!(v["uplink"]["backlog"].as_i64().unwrap() > 0);
    assert!(v["store"]["db_bytes"].as_u64().unwrap() > 0);
    assert!(v["store"]["disk_free_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["store"]["quota_bytes"], 512u64 << 20);

    // The same routes over the Unix socket, which `chargesite status` prefers; it is
    // open to the service's user only.
    let sock = agent.dir.path().join("api.sock");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let out = chargesite()
        .args(["status", "--json", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(TAG));
    let over_socket: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(over_socket["sessions"][0]["transaction_id"], tx);

    let out = chargesite()
        .args(["status", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("chargers: 1 of 1 online"), "{summary}");
    assert!(summary.contains("CP-STATUS-1"), "{summary}");
    assert!(summary.contains("connector 1: Charging"), "{summary}");
    assert!(summary.contains("sessions running: 1"), "{summary}");
    assert!(summary.contains("600 Wh  7200 W"), "{summary}");
    assert!(!summary.contains(TAG));

    let (code, _, _) = get(addr, "/api/v1/nothing", None);
    assert_eq!(code, 404);
    assert_eq!(get(addr, "/", None).0, 200, "the page's route is there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_a_real_parser_reads() {
    let agent = agent_with_status("listen = \"127.0.0.1:0\"");
    let addr = status_addr(&agent).await;
    let (_charger, _tx) = charging(&agent, "CP-METRICS-1").await;
    let (code, _, body) = get(addr, "/metrics", None);
    assert_eq!(code, 200, "{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("a Prometheus text exposition");
    let value = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == *v))
            })
            .map(|s| s.value.clone())
    };
    let num = |v: Option<prometheus_parse::Value>| match v {
        Some(prometheus_parse::Value::Counter(n))
        | Some(prometheus_parse::Value::Gauge(n))
        | Some(prometheus_parse::Value::Untyped(n)) => n,
        other => panic!("not a number: {other:?}"),
    };
    assert!(
        scrape
            .samples
            .iter()
            .all(|s| s.metric.starts_with("chargesite_")),
        "every name is prefixed"
    );
    assert_eq!(num(value("chargesite_chargers_connected", &[])), 1.0);
    assert_eq!(num(value("chargesite_sessions_running", &[])), 1.0);
    assert_eq!(
        num(value(
            "chargesite_ocpp_calls_total",
            &[("action", "BootNotification"), ("result", "ok")]
        )),
        1.0
    );
    assert_eq!(
        num(value(
            "chargesite_ocpp_calls_total",
            &[("action", "MeterValues"), ("result", "ok")]
        )),
        1.0
    );
    assert!(num(value("chargesite_outbox_backlog", &[])) > 0.0);
    assert!(num(value("chargesite_disk_free_bytes", &[])) > 0.0);
    assert_eq!(num(value("chargesite_uplink_online", &[])), 0.0);
    assert_eq!(num(value("chargesite_uplink_reconnects_total", &[])), 0.0);
    for histogram in [
        "chargesite_ocpp_call_duration_seconds",
        "chargesite_store_commit_duration_seconds",
        "chargesite_store_batch_size",
        "chargesite_uplink_puback_duration_seconds",
    ] {
        match value(histogram, &[]) {
            Some(prometheus_parse::Value::Histogram(buckets)) => {
                assert!(!buckets.is_empty(), "{histogram}")
            }
            other => panic!("{histogram} is no histogram: {other:?}"),
        }
    }
    let commits = scrape
        .samples
        .iter()
        .find(|s| s.metric == "chargesite_store_commit_duration_seconds_count")
        .map(|s| s.value.clone());
    assert!(
        matches!(commits, Some(prometheus_parse::Value::Untyped(n)) | Some(prometheus_parse::Value::Counter(n)) if n >= 4.0),
        "{commits:?}"
    );
    assert!(!body.contains(TAG));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_every_request_needs_the_password_and_a_wrong_one_is_401() {
    let hash = chargesite::password::hash("field-pass").unwrap();
    let agent = agent_with_status(&format!(
        "listen = \"0.0.0.0:0\"\npassword_hash = \"{hash}\""
    ));
    let bound = status_addr(&agent).await;
    assert!(bound.ip().is_unspecified(), "{bound}");
    let addr: SocketAddr = format!("127.0.0.1:{}", bound.port()).parse().unwrap();

    for path in ["/api/v1/status", "/metrics", "/"] {
        let (code, head, _) = get(addr, path, None);
        assert_eq!(code, 401, "{path}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: basic"),
            "{head}"
        );
    }
    let (code, _, _) = get(addr, "/api/v1/status", Some(&basic("wrong")));
    assert_eq!(code, 401);
    let (code, _, body) = get(addr, "/api/v1/status", Some(&basic("field-pass")));
    assert_eq!(code, 200, "{body}");
    // cached: many refreshes, one argon2 run (not observable here beyond staying fast)
    for _ in 0..20 {
        assert_eq!(get(addr, "/metrics", Some(&basic("field-pass"))).0, 200);
    }

    // `chargesite status` over HTTP (no socket): the password from the environment. The
    // config names port 0, so the CLI gets one naming the bound port.
    std::fs::remove_file(agent.dir.path().join("api.sock")).unwrap();
    let text = std::fs::read_to_string(&agent.config)
        .unwrap()
        .replace("0.0.0.0:0", &format!("0.0.0.0:{}", bound.port()));
    let config = agent.dir.path().join("cli.toml");
    std::fs::write(&config, text).unwrap();
    let out = chargesite()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CHARGESITE_STATUS_PASSWORD"),
        "{out:?}"
    );
    let out = chargesite()
        .args(["status", "--config"])
        .arg(&config)
        .env("CHARGESITE_STATUS_PASSWORD", "field-pass")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("chargers: 0 of 0 online"));

    // Wrong passwords are rate-limited.
    let mut throttled = false;
    for _ in 0..10 {
        let (code, _, _) = get(addr, "/api/v1/status", Some(&basic("guess")));
        assert!(code == 401 || code == 429, "{code}");
        throttled |= code == 429;
    }
    assert!(throttled, "guessing was never throttled");
    assert_eq!(
        get(addr, "/api/v1/status", Some(&basic("field-pass"))).0,
        200,
        "the verified password still works while guessing is throttled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_address_that_cannot_be_bound_does_not_stop_the_agent() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let agent = agent_with_status(&format!("listen = \"127.0.0.1:{port}\""));
    let mut c = Charger::connect(&agent.url("CP-BIND-1")).await;
    let boot = c.boot().await;
    assert_eq!(boot["status"], "Accepted");
    let said = common::eventually(10, || agent.log().contains("status page not served")).await;
    assert!(said, "{}", agent.log());
    // the socket still serves the API
    let out = chargesite()
        .args(["status", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    drop(taken);
}

#[test]
fn chargesite_status_exits_1_when_no_agent_answers_and_2_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[site]\nid = \"s\"\n[status]\nlisten = \"127.0.0.1:{port}\"\nsocket = \"{}\"\n",
            dir.path().join("api.sock").display()
        ),
    )
    .unwrap();
    let out = chargesite()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no chargesite agent answered"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");

    let out = chargesite()
        .args(["status", "--config", "/nonexistent/chargesite.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    std::fs::write(
        &config,
        "[site]\nid = \"s\"\n[status]\nlisten = \"0.0.0.0:9001\"\n",
    )
    .unwrap();
    let out = chargesite()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("status.password_hash"));
}

/// Runs `chargesite charger --config CONFIG ARGS...` beside the test's chargers (which
/// must answer the agent meanwhile): the child's output, once it exits.
fn charger_cli(agent: &Agent, args: &[&str]) -> tokio::task::JoinHandle<std::process::Output> {
    let mut cmd = chargesite();
    cmd.arg("charger")
        .arg("--config")
        .arg(&agent.config)
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
}

/// The agent's next CALL to this charger: (unique id, action, payload).
async fn next_call(c: &mut Charger) -> (Value, String, Value) {
    let f = c.recv().await;
    assert_eq!(f[0], 2, "a CALL from the agent, got {f}");
    (
        f[1].clone(),
        f[2].as_str().unwrap().to_string(),
        f[3].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charger_verbs_reach_a_1_6_and_a_2_0_1_charger_and_a_refusal_exits_1_with_its_reason() {
    let agent = agent_with_status("listen = \"127.0.0.1:0\"");
    let addr = status_addr(&agent).await;
    let mut old = Charger::connect(&agent.url("CP-VERB-16")).await;
    old.boot().await;
    let mut new = Charger::connect_v201(&agent.url("CP-VERB-201")).await;
    new.ok(
        "BootNotification",
        json!({"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}),
    )
    .await;

    // 1.6: unlock, answered Unlocked: exit 0.
    let cli = charger_cli(&agent, &["CP-VERB-16", "unlock", "1"]);
    let (id, action, payload) = next_call(&mut old).await;
    assert_eq!(action, "UnlockConnector");
    assert_eq!(payload, json!({"connectorId": 1}));
    old.send_text(&json!([3, id, {"status": "Unlocked"}]).to_string())
        .await;
    let out = cli.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout.contains("unlock connector 1: Unlocked"), "{stdout}");

    // 1.6: config get, the keys as the charger reports them; an unknown key fails.
    let cli = charger_cli(
        &agent,
        &["CP-VERB-16", "config", "get", "HeartbeatInterval", "Nope"],
    );
    let (id, action, payload) = next_call(&mut old).await;
    assert_eq!(action, "GetConfiguration");
    assert_eq!(payload, json!({"key": ["HeartbeatInterval", "Nope"]}));
    old.send_text(
        &json!([3, id, {"configurationKey": [{"key": "HeartbeatInterval", "readonly": false, "value": "300"}],
                        "unknownKey": ["Nope"]}])
        .to_string(),
    )
    .await;
    let out = cli.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout.contains("HeartbeatInterval = 300"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown to the charger: Nope"),
        "{out:?}"
    );

    // 2.0.1: availability refused, with the charger's reason: exit 1.
    let cli = charger_cli(&agent, &["CP-VERB-201", "availability", "1", "inoperative"]);
    let (id, action, payload) = next_call(&mut new).await;
    assert_eq!(action, "ChangeAvailability");
    assert_eq!(payload["operationalStatus"], "Inoperative");
    new.send_text(
        &json!([3, id, {"status": "Rejected", "statusInfo": {"reasonCode": "TxInProgress"}}])
            .to_string(),
    )
    .await;
    let out = cli.await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Rejected (TxInProgress)"), "{stderr}");

    // 2.0.1: config set is SetVariables on Component.Variable.
    let cli = charger_cli(
        &agent,
        &[
            "CP-VERB-201",
            "config",
            "set",
            "OCPPCommCtrlr.HeartbeatInterval",
            "60",
        ],
    );
    let (id, action, payload) = next_call(&mut new).await;
    assert_eq!(action, "SetVariables");
    assert_eq!(
        payload["setVariableData"][0]["variable"]["name"],
        "HeartbeatInterval"
    );
    assert_eq!(payload["setVariableData"][0]["attributeValue"], "60");
    new.send_text(
        &json!([3, id, {"setVariableResult": [{"attributeStatus": "Accepted",
            "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}])
        .to_string(),
    )
    .await;
    let out = cli.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // A charger that does not answer in time, one not connected, a bad verb.
    let out = charger_cli(&agent, &["CP-NOT-HERE", "reset"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CP-NOT-HERE is not connected"),
        "{out:?}"
    );
    let out = charger_cli(&agent, &["CP-VERB-16", "explode"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = charger_cli(&agent, &["CP-VERB-201", "config", "get", "NoDot"])
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a key 2.0.1 cannot carry is bad usage"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Component.Variable"),
        "{out:?}"
    );

    // Over loopback HTTP without a password set, a verb is refused (only the socket may).
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = r#"{"verb":"reset","hard":true}"#;
    write!(
        s,
        "POST /api/v1/chargers/CP-VERB-16/command HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
    assert!(
        old.try_recv(Duration::from_millis(500)).await.is_none(),
        "the refused reset reached the charger"
    );
}

/// A 1.6 charger that does what a test session asks: starts a transaction on a remote
/// start (with the tag it was given), sends MeterValues every second at 7.2 kW, stops
/// on a remote stop; answers GetConfiguration's MeterValueSampleInterval with 1. Runs
/// until the stop is done.
async fn obliging_charger(mut c: Charger) -> (Charger, String) {
    let now = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut tx: Option<i64> = None;
    let mut tag = String::new();
    let mut register = 50_000i64;
    let mut next_id = 0u64;
    let mut stopping = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            f = c.try_recv(Duration::from_secs(30)) => {
                let f = f.expect("the agent went quiet");
                match f[0].as_i64() {
                    Some(2) => {
                        let (id, action) = (f[1].clone(), f[2].as_str().unwrap().to_string());
                        let reply = match action.as_str() {
                            "GetConfiguration" => json!({"configurationKey": [
                                {"key": "MeterValueSampleInterval", "readonly": false, "value": "1"}]}),
                            "RemoteStartTransaction" => {
                                tag = f[3]["idTag"].as_str().unwrap().to_string();
                                json!({"status": "Accepted"})
                            }
                            "RemoteStopTransaction" => {
                                stopping = true;
                                json!({"status": "Accepted"})
                            }
                            other => panic!("unexpected CALL {other}"),
                        };
                        c.send_text(&json!([3, id, reply]).to_string()).await;
                        if action == "RemoteStartTransaction" {
                            next_id += 1;
                            c.send_text(&json!([2, format!("s{next_id}"), "StartTransaction",
                                {"connectorId": 1, "idTag": tag, "meterStart": register, "timestamp": now()}]).to_string()).await;
                        }
                        if stopping {
                            let t = tx.expect("a stop before the start");
                            next_id += 1;
                            c.send_text(&json!([2, format!("s{next_id}"), "StopTransaction",
                                {"transactionId": t, "meterStop": register, "timestamp": now(), "reason": "Remote"}]).to_string()).await;
                            let answer = c.recv().await;
                            assert_eq!(answer[0], 3, "{answer}");
                            return (c, tag);
                        }
                    }
                    Some(3) => {
                        if let Some(t) = f[2]["transactionId"].as_i64() {
                            assert_eq!(f[2]["idTagInfo"]["status"], "Accepted", "{f}");
                            tx = Some(t);
                        }
                    }
                    _ => panic!("unexpected frame {f}"),
                }
            }
            _ = tick.tick() => {
                if let Some(t) = tx {
                    register += 2; // 7.2 kW for one second
                    next_id += 1;
                    c.send_text(&json!([2, format!("s{next_id}"), "MeterValues",
                        {"connectorId": 1, "transactionId": t, "meterValue": [{"timestamp": now(), "sampledValue": [
                            {"value": register.to_string(), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                            {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"}]}]}]).to_string()).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_session_starts_shows_progress_stops_and_gives_a_verdict() {
    // free vend off: the test session's own tag is what lets the charger start
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let text = common::base_config(
        dir.path(),
        &format!(
            "[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\n\n\
             [status]\nlisten = \"127.0.0.1:0\"\nsocket = \"{}\"\n",
            sock.display()
        ),
    );
    let config = dir.path().join("chargesite.toml");
    std::fs::write(&config, text).unwrap();
    let agent = Agent::start_with(dir, config);
    status_addr(&agent).await;
    let mut c = Charger::connect(&agent.url("CP-TEST-SESSION")).await;
    c.boot().await;
    let charger = tokio::spawn(obliging_charger(c));
    let out = charger_cli(&agent, &["CP-TEST-SESSION", "test-session", "--secs", "6"])
        .await
        .unwrap();
    let (_c, tag) = charger.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains("start a test session on connector 1: Accepted"),
        "{stdout}"
    );
    assert!(stdout.contains("kW"), "a progress line: {stdout}");
    assert!(stdout.contains("ok   meter increasing"), "{stdout}");
    assert!(stdout.contains("MeterValues about every"), "{stdout}");
    assert!(stdout.contains("test session passed"), "{stdout}");
    assert!(
        !stdout.contains(&tag),
        "the test tag is not printed: {stdout}"
    );
    // the session went upstream as a remote start without an order, and it is over
    let started = agent.events_of("session.started");
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(started[0]["order_id"].is_null(), "{started:?}");
    assert_eq!(agent.events_of("session.stopped").len(), 1);
    // its tag is accepted no more (stored, like every tag, only as its keyed hash)
    let secret = chargesite::auth::Secret::load_or_create(agent.dir.path()).unwrap();
    let tag_used: i64 = agent
        .db()
        .query_row(
            "SELECT used FROM remote_starts WHERE tag = ?1",
            [chargesite::auth::tag_key(&secret, &tag)],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tag_used, 1);
}
