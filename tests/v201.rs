//! OCPP 2.0.1 chargers against the real agent binary over real WebSockets: every answer is
//! checked against the official 2.0.1 schema, and every fact against the store.

mod common;

use std::time::Duration;

use chargesite::ocpp::v201::schema;
use common::{eventually, ts, Agent, Charger, Connect};
use serde_json::{json, Value};

const FREE: &str = "[auth]\nfree_vend = true\n";
const OPEN: &str = "allow_unknown_chargers = true";

/// Sends a 2.0.1 CALL and returns its CALLRESULT payload, checked against the action's
/// official response schema.
async fn ok(c: &mut Charger, action: &str, payload: Value) -> Value {
    assert_eq!(
        schema::validate(&format!("{action}Request"), &payload),
        Ok(()),
        "the test sent an invalid {action}"
    );
    let a = c.call(action, payload).await;
    assert_eq!(a[0], 3, "expected CALLRESULT to {action}, got {a}");
    let answer = a[2].clone();
    assert_eq!(
        schema::validate(&format!("{action}Response"), &answer),
        Ok(()),
        "{action} answered {answer}"
    );
    answer
}

async fn boot(c: &mut Charger) -> Value {
    ok(
        c,
        "BootNotification",
        json!({"reason": "PowerUp", "chargingStation": {"model": "T2", "vendorName": "TestVendor",
               "serialNumber": "SN-2", "firmwareVersion": "2.0"}}),
    )
    .await
}

/// A three-phase meterValue element with register `wh`.
fn mv(at: &str, context: &str, wh: i64) -> Value {
    let mut sv = vec![json!({"value": wh, "context": context,
        "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}})];
    for phase in ["L1", "L2", "L3"] {
        sv.push(json!({"value": 3680, "context": context, "measurand": "Power.Active.Import", "phase": phase}));
        sv.push(
            json!({"value": 16, "context": context, "measurand": "Current.Import", "phase": phase}),
        );
    }
    json!({"timestamp": at, "sampledValue": sv})
}

#[allow(clippy::too_many_arguments)]
fn tx_event(
    kind: &str,
    tx: &str,
    seq: i64,
    at: &str,
    trigger: &str,
    wh: Option<(&str, i64)>,
    extra: Value,
) -> Value {
    let mut p = json!({"eventType": kind, "timestamp": at, "triggerReason": trigger,
        "seqNo": seq, "transactionInfo": {"transactionId": tx}});
    if let Some((context, wh)) = wh {
        p["meterValue"] = json!([mv(at, context, wh)]);
    }
    if let Value::Object(m) = extra {
        for (k, v) in m {
            if k == "transactionInfo" {
                for (kk, vv) in v.as_object().unwrap() {
                    p["transactionInfo"][kk] = vv.clone();
                }
            } else {
                p[k] = v;
            }
        }
    }
    p
}

fn started(tx: &str, at: &str, wh: i64, token: &str, kind: &str) -> Value {
    tx_event(
        "Started",
        tx,
        0,
        at,
        "Authorized",
        Some(("Transaction.Begin", wh)),
        json!({"evse": {"id": 1, "connectorId": 1}, "idToken": {"idToken": token, "type": kind},
               "transactionInfo": {"chargingState": "Charging"}}),
    )
}

fn session_of(agent: &Agent, tx: &str) -> (String, i64, String, String) {
    agent
        .db()
        .query_row(
            "SELECT state, energy_wh, flags, session_id FROM sessions WHERE charger_tx_id = ?1",
            [tx],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .expect("session row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_2_0_1_session_is_answered_by_the_2_0_1_schemas_and_reported_like_1_6() {
    let agent = Agent::start(OPEN, FREE);
    let mut c = Charger::connect_v201(&agent.url("CP201")).await;
    let b = boot(&mut c).await;
    assert_eq!(b["status"], "Accepted");
    assert!(b["interval"].as_i64().unwrap() > 0);
    ok(&mut c, "Heartbeat", json!({})).await;
    ok(
        &mut c,
        "StatusNotification",
        json!({"timestamp": ts(0), "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}),
    )
    .await;
    let a = ok(
        &mut c,
        "Authorize",
        json!({"idToken": {"idToken": "04A1B2C3", "type": "ISO14443"}}),
    )
    .await;
    assert_eq!(a["idTokenInfo"]["status"], "Accepted");
    let s = ok(
        &mut c,
        "TransactionEvent",
        started("tx-A", &ts(0), 10_000, "04A1B2C3", "ISO14443"),
    )
    .await;
    assert_eq!(s["idTokenInfo"]["status"], "Accepted");
    // durable before acknowledged: the session is in SQLite when the answer arrives
    assert_eq!(agent.events_of("session.started").len(), 1);
    for (i, wh) in [(1, 12_000), (2, 14_500)] {
        ok(
            &mut c,
            "TransactionEvent",
            tx_event(
                "Updated",
                "tx-A",
                i,
                &ts(i * 10),
                "MeterValuePeriodic",
                Some(("Sample.Periodic", wh)),
                json!({}),
            ),
        )
        .await;
    }
    ok(
        &mut c,
        "TransactionEvent",
        tx_event(
            "Ended",
            "tx-A",
            3,
            &ts(30),
            "EVDeparted",
            Some(("Transaction.End", 15_000)),
            json!({"transactionInfo": {"stoppedReason": "EVDisconnected"}}),
        ),
    )
    .await;
    let connected = agent.events_of("charger.connected");
    assert_eq!(connected[0]["ocpp_version"], "2.0.1");
    let st = &agent.events_of("session.started")[0];
    assert_eq!(st["transaction_id"], "tx-A");
    assert_eq!(st["evse_id"], 1);
    assert_eq!(st["connector_id"], 1);
    assert_eq!(st["meter_start_wh"], 10_000);
    assert_eq!(st["auth_method"], "rfid");
    let stop = &agent.events_of("session.stopped")[0];
    assert_eq!(stop["transaction_id"], "tx-A");
    assert_eq!(stop["energy_wh"], 5_000);
    assert_eq!(stop["meter_stop_wh"], 15_000);
    assert_eq!(stop["reason"], "EVDisconnected");
    assert_eq!(stop["session_id"], st["session_id"]);
    let meter = agent.events_of("session.meter");
    let samples: Vec<&Value> = meter
        .iter()
        .flat_map(|m| m["samples"].as_array().unwrap())
        .collect();
    assert!(
        samples
            .iter()
            .any(|s| s["power_w"] == 11_040 && s["current_a"] == 16.0),
        "{samples:?}"
    );
    let status = agent.events_of("connector.status");
    assert_eq!(status[0]["evse_id"], 1);
    assert_eq!(
        status[0]["connectors"],
        json!([{"connector_id": 1, "status": "Occupied"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_seq_no_is_acknowledged_and_counted_once_and_offline_events_bill_their_registers(
) {
    let agent = Agent::start(OPEN, FREE);
    let mut c = Charger::connect_v201(&agent.url("CPOFF")).await;
    boot(&mut c).await;
    ok(
        &mut c,
        "TransactionEvent",
        started("tx-O", &ts(0), 1_000, "AABBCCDD", "ISO14443"),
    )
    .await;
    // the charger was offline: its queued events arrive later, flagged offline
    let queued: Vec<Value> = [(1, 3_000), (2, 5_000)]
        .into_iter()
        .map(|(i, wh)| {
            tx_event(
                "Updated",
                "tx-O",
                i,
                &ts(i * 10),
                "MeterValuePeriodic",
                Some(("Sample.Periodic", wh)),
                json!({"offline": true}),
            )
        })
        .collect();
    for e in &queued {
        ok(&mut c, "TransactionEvent", e.clone()).await;
    }
    // the same seqNo again (the charger never got our answer): acknowledged, changes nothing
    let before = agent.events().len();
    ok(&mut c, "TransactionEvent", queued[1].clone()).await;
    assert_eq!(agent.events().len(), before, "a replay wrote events");
    let (_, energy, flags, _) = session_of(&agent, "tx-O");
    assert_eq!(energy, 4_000);
    assert!(!flags.contains("seq_gap"), "{flags}");
    // an older offline reading after a newer one adds nothing and is no backwards step
    ok(
        &mut c,
        "TransactionEvent",
        tx_event(
            "Updated",
            "tx-O",
            3,
            &ts(15),
            "MeterValuePeriodic",
            Some(("Sample.Periodic", 4_000)),
            json!({"offline": true}),
        ),
    )
    .await;
    let (_, energy, flags, _) = session_of(&agent, "tx-O");
    assert_eq!(energy, 4_000);
    assert!(!flags.contains("meter_backwards"), "{flags}");
    let offline_rows: i64 = agent
        .db()
        .query_row(
            "SELECT count(*) FROM meter_values WHERE flags LIKE '%offline%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(offline_rows, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_is_final_a_late_event_is_acknowledged_and_recorded_never_applied() {
    let agent = Agent::start(OPEN, FREE);
    let mut c = Charger::connect_v201(&agent.url("CPLATE")).await;
    boot(&mut c).await;
    ok(
        &mut c,
        "TransactionEvent",
        started("tx-L", &ts(0), 0, "AABBCCDD", "ISO14443"),
    )
    .await;
    ok(
        &mut c,
        "TransactionEvent",
        tx_event(
            "Ended",
            "tx-L",
            1,
            &ts(10),
            "StopAuthorized",
            Some(("Transaction.End", 2_000)),
            json!({"transactionInfo": {"stoppedReason": "Local"}}),
        ),
    )
    .await;
    let (state, energy, _, _) = session_of(&agent, "tx-L");
    assert_eq!((state.as_str(), energy), ("stopped", 2_000));
    let late = ok(
        &mut c,
        "TransactionEvent",
        tx_event(
            "Updated",
            "tx-L",
            2,
            &ts(20),
            "MeterValuePeriodic",
            Some(("Sample.Periodic", 9_000)),
            json!({}),
        ),
    )
    .await;
    assert!(late.get("idTokenInfo").is_none());
    let (state, energy, _, _) = session_of(&agent, "tx-L");
    assert_eq!(
        (state.as_str(), energy),
        ("stopped", 2_000),
        "a late event reopened or rebilled"
    );
    assert_eq!(agent.events_of("session.stopped").len(), 1);
    let (applied, flagged): (i64, i64) = agent
        .db()
        .query_row(
            "SELECT (SELECT applied FROM tx_events WHERE charger_tx_id = 'tx-L' AND seq_no = 2),
                    (SELECT count(*) FROM meter_values WHERE flags LIKE '%after_ended%')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((applied, flagged), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_register_of_0_after_a_reboot_is_flagged_and_never_billed_as_910_kwh() {
    let agent = Agent::start(OPEN, FREE);
    let mut c = Charger::connect_v201(&agent.url("CP910")).await;
    boot(&mut c).await;
    ok(
        &mut c,
        "TransactionEvent",
        started("tx-1", &ts(0), 900_000, "AABBCCDD", "ISO14443"),
    )
    .await;
    ok(
        &mut c,
        "TransactionEvent",
        tx_event(
            "Ended",
            "tx-1",
            1,
            &ts(10),
            "ResetCommand",
            Some(("Transaction.End", 910_000)),
            json!({"transactionInfo": {"stoppedReason": "ImmediateReset"}}),
        ),
    )
    .await;
    // rebooted firmware: Transaction.Begin reads 0, the register then reads on
    ok(
        &mut c,
        "TransactionEvent",
        started("tx-2", &ts(20), 0, "AABBCCDD", "ISO14443"),
    )
    .await;
    ok(
        &mut c,
        "TransactionEvent",
        tx_event(
            "Updated",
            "tx-2",
            1,
            &ts(30),
            "MeterValuePeriodic",
            Some(("Sample.Periodic", 911_000)),
            json!({}),
        ),
    )
    .await;
    ok(
        &mut c,
        "TransactionEvent",
        tx_event(
            "Ended",
            "tx-2",
            2,
            &ts(40),
            "EVDeparted",
            Some(("Transaction.End", 912_000)),
            json!({}),
        ),
    )
    .await;
    let stops = agent.events_of("session.stopped");
    assert_eq!(stops[0]["reason"], "HardReset");
    assert_eq!(stops[1]["energy_wh"], 1_000, "{}", stops[1]);
    let flags = stops[1]["flags"].as_array().unwrap();
    assert!(flags.contains(&json!("meter_start_zero")), "{flags:?}");
    assert!(flags.contains(&json!("meter_jump")), "{flags:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_begins_cable_first_is_started_upstream_when_its_token_comes() {
    let agent = Agent::start(OPEN, FREE);
    let mut c = Charger::connect_v201(&agent.url("CPCABLE")).await;
    boot(&mut c).await;
    let s = ok(
        &mut c,
        "TransactionEvent",
        tx_event("Started", "tx-C", 0, &ts(0), "CablePluggedIn", Some(("Transaction.Begin", 500)),
            json!({"evse": {"id": 2, "connectorId": 1}, "transactionInfo": {"chargingState": "EVConnected"}})),
    )
    .await;
    assert!(s.get("idTokenInfo").is_none());
    assert!(
        agent.events_of("session.started").is_empty(),
        "started upstream before its order was known"
    );
    let a = ok(
        &mut c,
        "TransactionEvent",
        tx_event(
            "Updated",
            "tx-C",
            1,
            &ts(1),
            "Authorized",
            None,
            json!({"idToken": {"idToken": "DEADBEEF", "type": "ISO15693"}}),
        ),
    )
    .await;
    assert_eq!(a["idTokenInfo"]["status"], "Accepted");
    // the EVSE is the first event's: later events need not carry it
    let started = agent.events_of("session.started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["evse_id"], 2);
    assert_eq!(started[0]["meter_start_wh"], 500);
    // a skipped seqNo is flagged, never refused
    ok(
        &mut c,
        "TransactionEvent",
        tx_event(
            "Ended",
            "tx-C",
            5,
            &ts(20),
            "EVDeparted",
            Some(("Transaction.End", 2_500)),
            json!({}),
        ),
    )
    .await;
    let stop = &agent.events_of("session.stopped")[0];
    assert_eq!(stop["energy_wh"], 2_000);
    assert_eq!(stop["connector_id"], 2);
    assert!(
        stop["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("seq_gap")),
        "{stop}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_0_1_charger_gets_the_2_0_1_callerror_spellings() {
    let agent = Agent::start(OPEN, FREE);
    let mut c = Charger::connect_v201(&agent.url("CPERR")).await;
    let mut e = started("tx-E", &ts(0), 0, "AABBCCDD", "ISO14443");
    e.as_object_mut().unwrap().remove("seqNo");
    let a = c.call("TransactionEvent", e).await;
    assert_eq!(a[0], 4);
    assert_eq!(a[2], "OccurrenceConstraintViolation", "{a}");
    let a = c
        .call("Authorize", json!({"idToken": {"idToken": "1234"}}))
        .await;
    assert_eq!(a[2], "OccurrenceConstraintViolation", "{a}");
    let a = c
        .call(
            "Authorize",
            json!({"idToken": {"idToken": "1234", "type": "KeyCode"}, "extra": 1}),
        )
        .await;
    assert_eq!(a[2], "FormatViolation", "{a}");
    assert_eq!(
        c.call("StartTransaction", json!({})).await[2],
        "NotImplemented"
    );
    assert_eq!(
        c.call("GetCertificateChainStatus", json!({})).await[2],
        "NotImplemented"
    );
    assert_eq!(
        c.call("RequestStartTransaction", json!({})).await[2],
        "NotSupported"
    );
    c.send_text(r#"[2, "x1", "Heartbeat", {"#).await;
    let a = c.recv().await;
    assert_eq!(
        (a[1].as_str(), a[2].as_str()),
        (Some("x1"), Some("RpcFrameworkError"))
    );
    c.send_text(r#"[7, "x2", {}]"#).await;
    assert_eq!(c.recv().await[2], "MessageTypeNotSupported");
    // and the socket is still up
    ok(&mut c, "Heartbeat", json!({})).await;
    // 1.6 keeps its own spellings
    let mut old = Charger::connect(&agent.url("CP16")).await;
    let a = old.call("Authorize", json!({})).await;
    assert_eq!(a[2], "OccurenceConstraintViolation", "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charger_offering_no_subprotocol_is_closed_unless_old_firmware_is_assumed() {
    let agent = Agent::start(OPEN, FREE);
    match Charger::try_connect(&agent.url("CPNONE"), None, None).await {
        Connect::Ok(mut c) => assert!(
            c.try_recv(Duration::from_secs(3)).await.is_none(),
            "must be closed, not served"
        ),
        Connect::Refused(s) => panic!("refused with HTTP {s}; OCPP-J completes the handshake"),
    }
    assert!(
        eventually(5, || agent
            .log()
            .contains("no supported subprotocol offered"))
        .await
    );
    let old = Agent::start(&format!("{OPEN}\nassume_subprotocol = \"ocpp1.6\""), FREE);
    let Connect::Ok(mut c) = Charger::try_connect(&old.url("CPOLD"), None, None).await else {
        panic!("refused");
    };
    assert_eq!(c.boot().await["status"], "Accepted");
    assert_eq!(old.events_of("charger.connected")[0]["ocpp_version"], "1.6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charger_reports_security_events_and_its_device_model_in_parts() {
    let agent = Agent::start(OPEN, FREE);
    let mut c = Charger::connect_v201(&agent.url("CPDM")).await;
    boot(&mut c).await;
    ok(
        &mut c,
        "SecurityEventNotification",
        json!({"type": "TamperDetectionActivated", "timestamp": ts(0), "techInfo": "lid open"}),
    )
    .await;
    let sec = agent.events_of("security.event");
    assert_eq!(sec[0]["kind"], "charger_reported");
    assert_eq!(sec[0]["detail"], "TamperDetectionActivated");
    assert_eq!(sec[0]["tech_info"], "lid open");
    let item = |name: &str, value: &str| {
        json!({"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": name},
               "variableAttribute": [{"type": "Actual", "value": value, "mutability": "ReadWrite"}]})
    };
    // the second part first: reassembled by seqNo, complete when tbc is false
    ok(
        &mut c,
        "NotifyReport",
        json!({"requestId": 7, "generatedAt": ts(0), "seqNo": 1, "tbc": false,
        "reportData": [item("HeartbeatInterval", "300")]}),
    )
    .await;
    let count = |agent: &Agent| -> i64 {
        agent
            .db()
            .query_row(
                "SELECT count(*) FROM device_model WHERE cp_id = 'CPDM'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(count(&agent), 0);
    ok(
        &mut c,
        "NotifyReport",
        json!({"requestId": 7, "generatedAt": ts(0), "seqNo": 0, "tbc": true,
        "reportData": [item("OfflineThreshold", "60")]}),
    )
    .await;
    assert_eq!(count(&agent), 2);
    let a = ok(&mut c, "DataTransfer", json!({"vendorId": "com.example"})).await;
    assert_eq!(a["status"], "UnknownVendorId");
    let a = ok(
        &mut c,
        "NotifyEVChargingNeeds",
        json!({"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "AC_three_phase"}}),
    )
    .await;
    assert_eq!(a["status"], "Rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_out_of_order_are_each_applied_once_whatever_is_replayed_when() {
    let agent = Agent::start(OPEN, FREE);
    let mut c = Charger::connect_v201(&agent.url("CPOOO")).await;
    boot(&mut c).await;
    ok(
        &mut c,
        "TransactionEvent",
        started("tx-X", &ts(0), 1_000, "AABBCCDD", "ISO14443"),
    )
    .await;
    let upd = |seq: i64, wh: i64| {
        tx_event(
            "Updated",
            "tx-X",
            seq,
            &ts(seq * 10),
            "MeterValuePeriodic",
            Some(("Sample.Periodic", wh)),
            json!({"offline": true}),
        )
    };
    // 2 before 1, each sent twice, then 1 and 2 again after both are in
    for (seq, wh) in [
        (2, 3_000),
        (2, 3_000),
        (1, 2_000),
        (1, 2_000),
        (2, 3_000),
        (3, 4_000),
        (1, 2_000),
    ] {
        ok(&mut c, "TransactionEvent", upd(seq, wh)).await;
    }
    let (_, energy, flags, _) = session_of(&agent, "tx-X");
    assert_eq!(energy, 3_000);
    assert!(flags.contains("seq_gap"), "{flags}");
    let (journal, high): (i64, i64) = agent
        .db()
        .query_row(
            "SELECT (SELECT count(*) FROM tx_events WHERE charger_tx_id = 'tx-X'),
                    (SELECT last_seq_no FROM sessions WHERE charger_tx_id = 'tx-X')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (journal, high),
        (4, 3),
        "each seqNo journaled once, all of 0..=3 in"
    );
}
