//! What the agent sends to an OCPP 2.0.1 charger, over real WebSockets against the real
//! binary (and a real MQTT broker for the BPP's commands): `session.start` as a
//! RequestStartTransaction with the agent's own Central idToken and a remoteStartId the
//! charger's TransactionEvent carries back, `session.stop` as a RequestStopTransaction
//! naming the charger's own transactionId, and GetTransactionStatus for each transaction
//! still open when the charger reconnects. Every CALL the fake charger receives is held
//! to the official 2.0.1 request schema, every answer it sends to the response schema.

mod common;

use std::time::Duration;

use chargesite::ocpp::commands::{self, Command, CommandError, ReportBase, VariableRef};
use chargesite::ocpp::registry::Registry;
use chargesite::ocpp::v201::schema;
use common::mqtt::{Bpp, Broker};
use common::{eventually, ts, Agent, Charger};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const ROOT: &str = "chargesite/v1/site-001";
const OPEN: &str = "allow_unknown_chargers = true";
const OTP: &str = "58203917";

#[test]
fn broker_process() {
    common::mqtt::broker_process();
}

/// Sends a 2.0.1 CALL (schema-checked) and returns its CALLRESULT payload, itself checked
/// against the official response schema.
async fn ok(c: &mut Charger, action: &str, payload: Value) -> Value {
    assert_eq!(
        schema::validate(&format!("{action}Request"), &payload),
        Ok(()),
        "the test sent an invalid {action}"
    );
    let a = c.call(action, payload).await;
    assert_eq!(a[0], 3, "expected CALLRESULT to {action}, got {a}");
    assert_eq!(
        schema::validate(&format!("{action}Response"), &a[2]),
        Ok(()),
        "{action} answered {}",
        a[2]
    );
    a[2].clone()
}

/// The agent's next CALL: its action, checked against the official 2.0.1 request schema.
/// Returns (message id, payload).
async fn expect_call(c: &mut Charger, action: &str) -> (Value, Value) {
    let frame = c.recv().await;
    assert_eq!(frame[0], 2, "expected a CALL, got {frame}");
    assert_eq!(frame[2], action, "{frame}");
    assert_eq!(
        schema::validate(&format!("{action}Request"), &frame[3]),
        Ok(()),
        "the agent sent an invalid 2.0.1 {action}: {}",
        frame[3]
    );
    (frame[1].clone(), frame[3].clone())
}

/// Answers the agent's CALL `id` with `payload`, held to the response schema first.
async fn answer(c: &mut Charger, action: &str, id: &Value, payload: Value) {
    assert_eq!(
        schema::validate(&format!("{action}Response"), &payload),
        Ok(()),
        "the test answers an invalid {action}"
    );
    c.send_text(&json!([3, id, payload]).to_string()).await;
}

async fn boot(c: &mut Charger) {
    let b = ok(
        c,
        "BootNotification",
        json!({"reason": "PowerUp", "chargingStation": {"model": "T2", "vendorName": "TestVendor"}}),
    )
    .await;
    assert_eq!(b["status"], "Accepted");
}

fn meter(at: &str, context: &str, wh: i64) -> Value {
    json!([{"timestamp": at, "sampledValue": [{"value": wh, "context": context,
        "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}}]}])
}

fn started(tx: &str, at: &str, token: Value, extra: Value) -> Value {
    let mut e = json!({"eventType": "Started", "timestamp": at, "triggerReason": "Authorized",
        "seqNo": 0, "transactionInfo": {"transactionId": tx, "chargingState": "Charging"},
        "evse": {"id": 1, "connectorId": 1}, "idToken": token,
        "meterValue": meter(at, "Transaction.Begin", 1_000)});
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

fn ended(tx: &str, seq: i64, at: &str, trigger: &str, stopped: &str, wh: i64) -> Value {
    json!({"eventType": "Ended", "timestamp": at, "triggerReason": trigger, "seqNo": seq,
        "transactionInfo": {"transactionId": tx, "stoppedReason": stopped, "chargingState": "Idle"},
        "meterValue": meter(at, "Transaction.End", wh)})
}

/// (state, order_id, remote_start_id) of the session of charger transaction `tx`.
fn session_of(agent: &Agent, tx: &str) -> (String, Option<String>, Option<i64>) {
    agent
        .db()
        .query_row(
            "SELECT state, order_id, remote_start_id FROM sessions WHERE charger_tx_id = ?1",
            [tx],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("session row")
}

async fn online(bpp: &Bpp) {
    assert!(
        eventually(15, || bpp
            .topic("state")
            .is_some_and(|s| s["online"] == true))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_start_and_stop_reach_a_2_0_1_charger_as_request_start_and_stop_transaction() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = Agent::start(OPEN, &broker.uplink_toml(""));
    online(&bpp).await;
    let valid_until = (chargesite::time::now() + chrono::Duration::hours(1)).to_rfc3339();
    bpp.command(
        json!({"id": "u-1", "type": "authorization.upsert", "order_id": "order-201",
        "otp": OTP, "valid_until": valid_until, "cp_id": "CP201", "connector_id": 1}),
    )
    .await;
    assert_eq!(bpp.wait_result("u-1", 30).await["ok"], true);
    let mut c = Charger::connect_v201(&agent.url("CP201")).await;
    boot(&mut c).await;

    // session.start: the OTP is checked here, the charger gets the agent's own token
    bpp.command(
        json!({"id": "s-1", "type": "session.start", "order_id": "order-201",
        "otp": OTP, "cp_id": "CP201", "connector_id": 1}),
    )
    .await;
    let (id, start) = expect_call(&mut c, "RequestStartTransaction").await;
    assert_eq!(start["idToken"]["type"], "Central");
    assert_eq!(start["evseId"], 1);
    let token = start["idToken"]["idToken"].as_str().unwrap().to_string();
    assert!(
        token.chars().count() <= 36 && !token.contains(OTP),
        "{token}"
    );
    let remote_start_id = start["remoteStartId"].as_i64().unwrap();
    assert!(remote_start_id >= 1);
    let stored: i64 = agent
        .db()
        .query_row(
            "SELECT remote_start_id FROM remote_starts WHERE order_id = 'order-201'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        stored, remote_start_id,
        "the remoteStartId is stored to correlate"
    );
    answer(
        &mut c,
        "RequestStartTransaction",
        &id,
        json!({"status": "Accepted"}),
    )
    .await;
    let result = bpp.wait_result("s-1", 30).await;
    assert_eq!(result["ok"], true, "{result}");

    // the charger starts with that token and echoes the remoteStartId
    let s = ok(
        &mut c,
        "TransactionEvent",
        started(
            "tx-R1",
            &ts(0),
            json!({"idToken": token, "type": "Central"}),
            json!({"triggerReason": "RemoteStart", "transactionInfo": {"transactionId": "tx-R1",
                   "chargingState": "Charging", "remoteStartId": remote_start_id}}),
        ),
    )
    .await;
    assert_eq!(s["idTokenInfo"]["status"], "Accepted");
    let (state, order, correlated) = session_of(&agent, "tx-R1");
    assert_eq!(state, "active");
    assert_eq!(order.as_deref(), Some("order-201"));
    assert_eq!(correlated, Some(remote_start_id));

    // session.stop by order: RequestStopTransaction names the charger's own id
    bpp.command(json!({"id": "t-1", "type": "session.stop", "order_id": "order-201"}))
        .await;
    let (id, stop) = expect_call(&mut c, "RequestStopTransaction").await;
    assert_eq!(stop, json!({"transactionId": "tx-R1"}));
    answer(
        &mut c,
        "RequestStopTransaction",
        &id,
        json!({"status": "Accepted"}),
    )
    .await;
    let result = bpp.wait_result("t-1", 30).await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["cp_id"], "CP201");
    ok(
        &mut c,
        "TransactionEvent",
        ended("tx-R1", 1, &ts(20), "RemoteStop", "Remote", 4_000),
    )
    .await;
    assert_eq!(session_of(&agent, "tx-R1").0, "stopped");

    // a stopped session is not stopped again; a refused stop is reported as refused
    bpp.command(json!({"id": "t-2", "type": "session.stop", "order_id": "order-201"}))
        .await;
    assert_eq!(
        bpp.wait_result("t-2", 30).await["error"]["code"],
        "not_active"
    );
    assert!(c.try_recv(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_2_0_1_remote_start_gives_the_use_back_and_the_next_gets_a_new_remote_start_id() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = Agent::start(OPEN, &broker.uplink_toml(""));
    online(&bpp).await;
    let valid_until = (chargesite::time::now() + chrono::Duration::hours(1)).to_rfc3339();
    bpp.command(
        json!({"id": "u-1", "type": "authorization.upsert", "order_id": "order-9",
        "otp": OTP, "valid_until": valid_until}),
    )
    .await;
    assert_eq!(bpp.wait_result("u-1", 30).await["ok"], true);
    let mut c = Charger::connect_v201(&agent.url("CP201")).await;
    boot(&mut c).await;
    let mut ids = Vec::new();
    for (n, status) in [(1, "Rejected"), (2, "Accepted")] {
        let cmd = format!("s-{n}");
        bpp.command(
            json!({"id": cmd, "type": "session.start", "order_id": "order-9",
            "otp": OTP, "cp_id": "CP201", "connector_id": 2}),
        )
        .await;
        let (id, start) = expect_call(&mut c, "RequestStartTransaction").await;
        assert_eq!(start["evseId"], 2);
        ids.push(start["remoteStartId"].as_i64().unwrap());
        answer(
            &mut c,
            "RequestStartTransaction",
            &id,
            json!({"status": status, "statusInfo": {"reasonCode": "Test"}}),
        )
        .await;
        let result = bpp.wait_result(&cmd, 30).await;
        if status == "Rejected" {
            assert_eq!(result["error"]["code"], "charger_rejected", "{result}");
        } else {
            assert_eq!(result["ok"], true, "{result}");
        }
    }
    assert_ne!(ids[0], ids[1], "a remoteStartId is never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_0_1_charger_that_reconnects_is_asked_about_its_open_transaction_which_stays_open() {
    let agent = Agent::start(OPEN, "[auth]\nfree_vend = true\n");
    let mut c = Charger::connect_v201(&agent.url("CP201")).await;
    boot(&mut c).await;
    // a fresh connection without open transactions is asked nothing
    assert!(c.try_recv(Duration::from_millis(500)).await.is_none());
    let tag = json!({"idToken": "04A1B2C3", "type": "ISO14443"});
    ok(
        &mut c,
        "TransactionEvent",
        started("tx-G", &ts(0), tag, json!({})),
    )
    .await;
    drop(c);
    assert!(eventually(10, || agent.events_of("charger.disconnected").len() == 1).await);

    // reconnected (no new BootNotification): asked about tx-G, ended with nothing queued
    let mut c = Charger::connect_v201(&agent.url("CP201")).await;
    let (id, asked) = expect_call(&mut c, "GetTransactionStatus").await;
    assert_eq!(asked, json!({"transactionId": "tx-G"}));
    answer(
        &mut c,
        "GetTransactionStatus",
        &id,
        json!({"ongoingIndicator": false, "messagesInQueue": false}),
    )
    .await;
    assert!(
        eventually(10, || agent
            .log()
            .contains("ended at the charger but no Ended received"))
        .await,
        "{}",
        agent.log()
    );
    // logged, never acted on: the session stays open
    assert_eq!(session_of(&agent, "tx-G").0, "active");
    drop(c);
    assert!(eventually(10, || agent.events_of("charger.disconnected").len() == 2).await);

    // again: this time its Ended is queued, and it comes (offline) and closes the session
    let mut c = Charger::connect_v201(&agent.url("CP201")).await;
    let (id, asked) = expect_call(&mut c, "GetTransactionStatus").await;
    assert_eq!(asked, json!({"transactionId": "tx-G"}));
    answer(
        &mut c,
        "GetTransactionStatus",
        &id,
        json!({"ongoingIndicator": false, "messagesInQueue": true}),
    )
    .await;
    assert!(
        eventually(10, || agent.log().contains("EndedQueued")).await,
        "{}",
        agent.log()
    );
    assert_eq!(session_of(&agent, "tx-G").0, "active");
    let mut end = ended("tx-G", 1, &ts(30), "EVDeparted", "EVDisconnected", 9_000);
    end["offline"] = json!(true);
    ok(&mut c, "TransactionEvent", end).await;
    assert_eq!(session_of(&agent, "tx-G").0, "stopped");
    drop(c);
    assert!(eventually(10, || agent.events_of("charger.disconnected").len() == 3).await);

    // nothing open any more: a reconnect is asked nothing
    let mut c = Charger::connect_v201(&agent.url("CP201")).await;
    assert!(c.try_recv(Duration::from_millis(800)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_6_charger_that_reconnects_with_an_open_transaction_is_asked_nothing() {
    let agent = Agent::start(OPEN, "[auth]\nfree_vend = true\n");
    let mut c = Charger::connect(&agent.url("CP16")).await;
    c.boot().await;
    c.start(1, "TAG", 0, &ts(0)).await;
    drop(c);
    assert!(eventually(10, || agent.events_of("charger.disconnected").len() == 1).await);
    let mut c = Charger::connect(&agent.url("CP16")).await;
    assert!(c.try_recv(Duration::from_millis(800)).await.is_none());
}

/// The agent in-process, so the test holds its registry as the uplink does.
async fn agent_in_process() -> (Registry, String, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = common::base_config(
        dir.path(),
        "[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\n",
    );
    let config = chargesite::config::parse(&text).unwrap();
    let token = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let t = token.clone();
    tokio::spawn(async move {
        chargesite::agent::run(config, t, move |a| {
            let _ = tx.send((a.registry.clone(), a.local_addr));
        })
        .await
        .unwrap();
    });
    let (registry, addr) = rx.await.unwrap();
    (registry, format!("ws://{addr}/ocpp/CP201"), token, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_reaches_a_2_0_1_charger_as_valid_2_0_1_and_its_answer_comes_back() {
    let (registry, url, token, _dir) = agent_in_process().await;
    let mut c = Charger::connect_v201(&url).await;
    assert!(eventually(5, || registry.is_connected("CP201")).await);
    let hb = VariableRef::new("OCPPCommCtrlr", "HeartbeatInterval");
    let cases = vec![
        (
            Command::GetVariables {
                variables: vec![hb.clone()],
            },
            "GetVariables",
            json!({"getVariableResult": [{"attributeStatus": "Accepted", "attributeValue": "300",
                "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}),
        ),
        (
            Command::SetVariables {
                values: vec![(hb, "120".into())],
            },
            "SetVariables",
            json!({"setVariableResult": [{"attributeStatus": "Accepted",
                "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}),
        ),
        (
            Command::GetBaseReport {
                request_id: 7,
                report: ReportBase::FullInventory,
            },
            "GetBaseReport",
            json!({"status": "Accepted"}),
        ),
        (
            Command::Reset {
                hard: false,
                evse_id: None,
            },
            "Reset",
            json!({"status": "Scheduled"}),
        ),
        (
            Command::TriggerMessage {
                message: "StatusNotification".into(),
                connector_id: Some(1),
            },
            "TriggerMessage",
            json!({"status": "Accepted"}),
        ),
        (
            Command::ChangeAvailability {
                connector_id: 1,
                operative: false,
                evse_connector: None,
            },
            "ChangeAvailability",
            json!({"status": "Accepted"}),
        ),
        (
            Command::UnlockConnector {
                connector_id: 1,
                evse_connector: None,
            },
            "UnlockConnector",
            json!({"status": "Unlocked"}),
        ),
        (
            Command::GetTransactionStatus {
                transaction_id: None,
            },
            "GetTransactionStatus",
            json!({"messagesInQueue": false}),
        ),
        (
            Command::ClearCache,
            "ClearCache",
            json!({"status": "Accepted"}),
        ),
    ];
    for (command, action, reply) in cases {
        let r = registry.clone();
        let call = tokio::spawn(async move {
            commands::send(&r, "CP201", command, Duration::from_secs(5)).await
        });
        let (id, _) = expect_call(&mut c, action).await;
        answer(&mut c, action, &id, reply.clone()).await;
        assert_eq!(call.await.unwrap().unwrap(), reply, "{action}");
    }

    // a 1.6-only command never reaches a 2.0.1 charger
    let err = commands::send(
        &registry,
        "CP201",
        Command::GetConfiguration { keys: vec![] },
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CommandError::BadRequest(_)), "{err:?}");
    assert!(c.try_recv(Duration::from_millis(300)).await.is_none());

    // an answer outside the 2.0.1 response schema is not believed
    let r = registry.clone();
    let call = tokio::spawn(async move {
        commands::send(
            &r,
            "CP201",
            Command::Reset {
                hard: true,
                evse_id: Some(1),
            },
            Duration::from_secs(5),
        )
        .await
    });
    let (id, reset) = expect_call(&mut c, "Reset").await;
    assert_eq!(reset, json!({"type": "Immediate", "evseId": 1}));
    c.send_text(&json!([3, id, {"status": "Accepted", "when": "later"}]).to_string())
        .await;
    assert!(matches!(
        call.await.unwrap(),
        Err(CommandError::BadResponse(_))
    ));
    token.cancel();
}

/// A CSR with this subject, PEM.
fn csr(cn: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_0_1_csr_goes_upstream_and_charger_certificate_installs_the_signed_chain() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = Agent::start(OPEN, &broker.uplink_toml(""));
    online(&bpp).await;
    let mut c = Charger::connect_v201(&agent.url("CP201")).await;
    boot(&mut c).await;
    let request = csr("CP201");
    let a = ok(
        &mut c,
        "SignCertificate",
        json!({"csr": request, "certificateType": "ChargingStationCertificate"}),
    )
    .await;
    assert_eq!(a["status"], "Accepted");
    let a = ok(&mut c, "SignCertificate", json!({"csr": csr("CP999")})).await;
    assert_eq!(a["status"], "Rejected", "a CSR naming another charger");
    assert!(eventually(15, || !bpp.events_of("charger.csr").is_empty()).await);
    let up = &bpp.events_of("charger.csr")[0];
    assert_eq!(up["cp_id"], "CP201");
    assert_eq!(up["certificate_type"], "ChargingStationCertificate");
    assert_eq!(up["csr"], request.as_str());
    assert!(
        eventually(15, || bpp
            .events_of("security.event")
            .iter()
            .any(|e| e["kind"] == "csr_refused" && e["cp_id"] == "CP201"))
        .await
    );

    // The operator's CA signs it; a chain for another charger is refused before the CALL.
    let ca = chargesite::pki::new_ca("site-001", None, chargesite::time::now()).unwrap();
    let leaf = |cn: &str| {
        let l = chargesite::pki::issue_client(
            &ca.cert_pem,
            &ca.key_pem,
            cn,
            None,
            None,
            chargesite::time::now(),
        )
        .unwrap();
        format!("{}{}", l.cert_pem, ca.cert_pem)
    };
    bpp.command(
        json!({"id": "crt-bad", "type": "charger.certificate", "cp_id": "CP201",
        "certificate_chain": leaf("CP999")}),
    )
    .await;
    let r = bpp.wait_result("crt-bad", 15).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let chain = leaf("CP201");
    bpp.command(
        json!({"id": "crt-1", "type": "charger.certificate", "cp_id": "CP201",
        "certificate_chain": chain}),
    )
    .await;
    let (id, payload) = expect_call(&mut c, "CertificateSigned").await;
    assert_eq!(payload["certificateChain"], chain.as_str());
    assert_eq!(payload["certificateType"], "ChargingStationCertificate");
    answer(
        &mut c,
        "CertificateSigned",
        &id,
        json!({"status": "Accepted"}),
    )
    .await;
    let r = bpp.wait_result("crt-1", 15).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["status"], "Accepted");
}
