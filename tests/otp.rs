//! Offline OTP authorization, tariffs, budgets and settlement, end to end over OCPP and
//! MQTT: an OTP provisioned by the BPP, the uplink cut, the driver charges with it, the
//! agent stops at the budget, and the BPP receives the whole story when the link returns.

mod common;

use std::time::Duration;

use common::mqtt::{Bpp, Broker};
use common::{eventually, ts, Agent, Charger};
use serde_json::{json, Value};

const ROOT: &str = "chargesite/v1/site-001";
// digits unlikely to occur by chance anywhere in the database
const OTP: &str = "73198246";

#[test]
fn broker_process() {
    common::mqtt::broker_process();
}

fn agent(broker: &Broker) -> Agent {
    Agent::start("allow_unknown_chargers = true", &broker.uplink_toml(""))
}

fn in_an_hour() -> String {
    (chargesite::time::now() + chrono::Duration::hours(1)).to_rfc3339()
}

fn upsert(id: &str, order: &str, otp: &str, extra: Value) -> Value {
    let mut cmd = json!({"id": id, "type": "authorization.upsert", "order_id": order, "otp": otp,
        "valid_until": in_an_hour(), "cp_id": "CP001", "connector_id": 1});
    for (k, v) in extra.as_object().unwrap() {
        cmd[k] = v.clone();
    }
    cmd
}

async fn online(bpp: &Bpp) {
    assert!(
        eventually(15, || bpp
            .topic("state")
            .is_some_and(|s| s["online"] == true))
        .await
    );
}

fn file_contains(path: &std::path::Path, needle: &str) -> bool {
    std::fs::read(path)
        .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otp_works_offline_stops_at_the_budget_and_the_bpp_gets_the_settlement() {
    let mut broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let mut agent = agent(&broker);
    online(&bpp).await;
    let tariff = json!({"currency":"INR","energy_minor_per_kwh":1600,"service_fee_minor":0,
        "timezone":"Asia/Kolkata"});
    bpp.command(upsert(
        "u-1",
        "order-42",
        OTP,
        json!({"budget": {"currency":"INR","amount_minor":5000}, "tariff": tariff}),
    ))
    .await;
    assert_eq!(bpp.wait_result("u-1", 30).await["ok"], true);

    // the uplink goes down; the driver arrives once the agent has seen it go (it records
    // `uplink_online` at the start)
    broker.kill();
    assert!(eventually(20, || agent.log().contains("uplink down")).await);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let a = cp.ok("Authorize", json!({"idTag": OTP})).await;
    assert_eq!(a["idTagInfo"]["status"], "Accepted");
    let tx = cp.start(1, OTP, 10_000, &ts(0)).await;
    // 500 Wh a minute (30 kW): 1600/kWh reaches 50.00 at 3125 Wh; the agent stops two
    // readings ahead of crossing it (a charger needs about an interval to stop)
    let mut register = 10_000;
    let mut stop_call = None;
    for i in 1..=10 {
        register += 500;
        cp.send_text(&json!([2, format!("mv{i}"), "MeterValues", {"connectorId": 1, "transactionId": tx,
            "meterValue": [{"timestamp": ts(i), "sampledValue": [{"value": register.to_string()}]}]}]).to_string())
            .await;
        // the answer, and perhaps the agent's RemoteStopTransaction, in either order
        let mut answered = false;
        while !answered {
            let f = cp.recv().await;
            if f[0] == 2 && f[2] == "RemoteStopTransaction" {
                stop_call = Some(f);
            } else {
                assert_eq!(f[0], 3, "{f}");
                answered = true;
            }
        }
        if stop_call.is_none() {
            if let Some(f) = cp.try_recv(Duration::from_millis(300)).await {
                assert_eq!(f[2], "RemoteStopTransaction");
                stop_call = Some(f);
            }
        }
        if stop_call.is_some() {
            break;
        }
    }
    let stop_call = stop_call.expect("the agent stopped the charger at the budget");
    assert_eq!(stop_call[3]["transactionId"], tx);
    cp.send_text(&json!([3, stop_call[1], {"status": "Accepted"}]).to_string())
        .await;
    let charged_wh = register - 10_000;
    assert_eq!(
        charged_wh, 2500,
        "stopped before the budget would be crossed"
    );
    cp.ok(
        "StopTransaction",
        json!({"transactionId": tx, "meterStop": register, "timestamp": ts(11),
        "reason": "Remote", "idTag": OTP}),
    )
    .await;
    // the same OTP cannot start a second session
    let again = cp
        .ok(
            "StartTransaction",
            json!({"connectorId": 1, "idTag": OTP, "meterStart": register, "timestamp": ts(12)}),
        )
        .await;
    assert_eq!(again["idTagInfo"]["status"], "Invalid", "single use");

    // the link returns: the BPP receives the whole story
    broker.restart();
    let n = agent.events().last().unwrap().0;
    let bpp = Bpp::connect(&broker, ROOT).await;
    // The agent retries with a backoff capped at 30 s plus up to half of it in jitter. If
    // it reconnects and drains before this BPP's subscription is in place, the events went
    // to nobody: a BPP that sees a gap asks for a replay (CONTRACT §4), and so does this one.
    if !bpp.wait_complete(n, 60).await {
        bpp.command(json!({"id": "replay-1", "type": "events.replay", "from_seq": 1}))
            .await;
    }
    assert!(
        bpp.wait_complete(n, 60).await,
        "have {} of {n}",
        bpp.max_contiguous()
    );
    let started = &bpp.events_of("session.started")[0];
    assert_eq!(started["order_id"], "order-42");
    assert_eq!(started["auth_method"], "otp");
    assert_eq!(started["uplink_online"], false);
    let checks = bpp.events_of("auth.checked");
    assert!(checks
        .iter()
        .any(|c| c["result"] == "accepted" && c["order_id"] == "order-42" && c["method"] == "otp"));
    assert!(checks.iter().any(|c| c["result"] == "used"));
    let stopped = &bpp.events_of("session.stopped")[0];
    assert_eq!(stopped["reason"], "BudgetReached");
    assert_eq!(stopped["energy_wh"], 2500);
    assert_eq!(stopped["order_id"], "order-42");
    assert_eq!(stopped["cost"]["total_minor"], 4000);
    assert_eq!(stopped["cost"]["currency"], "INR");
    assert_eq!(
        stopped["cost"]["components"],
        json!([{"type":"energy","name":"Energy","amount_minor":4000}])
    );
    assert_eq!(
        stopped["settlement"],
        json!({"prepaid_minor":5000,"charged_minor":4000,"refund_minor":1000,"topup_minor":0})
    );
    for e in bpp.seen.lock().unwrap().arrivals.iter() {
        assert!(!e.to_string().contains(OTP), "never the OTP upstream: {e}");
    }

    // nowhere in the database, nor its WAL
    assert_eq!(agent.terminate(), Some(0));
    let dir = agent.dir.path().to_path_buf();
    for f in ["cs.db", "cs.db-wal", "agent.log"] {
        assert!(!file_contains(&dir.join(f), OTP), "{f} contains the OTP");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_codes_lock_otp_entry_on_that_charger() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = agent(&broker);
    online(&bpp).await;
    bpp.command(upsert("u-1", "order-1", OTP, json!({}))).await;
    assert_eq!(bpp.wait_result("u-1", 30).await["ok"], true);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    for wrong in ["11112222", "11112223", "11112224", "11112225", "11112226"] {
        let a = cp.ok("Authorize", json!({"idTag": wrong})).await;
        assert_eq!(a["idTagInfo"]["status"], "Invalid");
    }
    let a = cp.ok("Authorize", json!({"idTag": OTP})).await;
    assert_eq!(
        a["idTagInfo"]["status"], "Blocked",
        "locked even for the right code"
    );
    // another charger is not locked
    let mut other = Charger::connect(&agent.url("CP002")).await;
    let a = other.ok("Authorize", json!({"idTag": "11112227"})).await;
    assert_eq!(a["idTagInfo"]["status"], "Invalid");
    assert!(
        eventually(20, || agent
            .events_of("auth.checked")
            .iter()
            .any(|e| e["result"] == "blocked"))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_digits_with_overlapping_scope_are_an_otp_conflict_and_revoke_works() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = agent(&broker);
    online(&bpp).await;
    bpp.command(upsert("u-1", "order-1", OTP, json!({}))).await;
    assert_eq!(bpp.wait_result("u-1", 30).await["ok"], true);
    bpp.command(upsert("u-2", "order-2", OTP, json!({"connector_id": null})))
        .await;
    assert_eq!(
        bpp.wait_result("u-2", 30).await["error"]["code"],
        "otp_conflict"
    );
    bpp.command(upsert("u-3", "order-3", OTP, json!({"cp_id": "CP009"})))
        .await;
    assert_eq!(
        bpp.wait_result("u-3", 30).await["ok"],
        true,
        "another charger does not overlap"
    );
    bpp.command(json!({"id": "r-1", "type": "authorization.revoke", "order_id": "order-1"}))
        .await;
    assert_eq!(bpp.wait_result("r-1", 30).await["ok"], true);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let a = cp.ok("Authorize", json!({"idTag": OTP})).await;
    assert_eq!(a["idTagInfo"]["status"], "Invalid", "revoked");
    // the stored command holds the keyed hash, not the digits
    let bodies: Vec<String> = agent
        .db()
        .prepare("SELECT body FROM commands")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(bodies.iter().all(|b| !b.contains(OTP)));
    assert!(bodies.iter().any(|b| b.contains("hmac-sha256:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_start_validates_the_otp_then_starts_the_charger_and_binds_the_order() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = agent(&broker);
    online(&bpp).await;
    let tariff = json!({"currency":"INR","energy_minor_per_kwh":1800,"service_fee_minor":1000,"timezone":"Asia/Kolkata"});
    bpp.command(upsert(
        "u-1",
        "order-7",
        OTP,
        json!({"tariff": tariff, "budget": {"currency":"INR","amount_minor":100000}}),
    ))
    .await;
    assert_eq!(bpp.wait_result("u-1", 30).await["ok"], true);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    assert!(eventually(20, || agent.events_of("charger.connected").len() == 1).await);

    // a wrong OTP never reaches the charger
    bpp.command(json!({"id": "s-0", "type": "session.start", "order_id": "order-7", "otp": "10000001", "cp_id": "CP001", "connector_id": 1})).await;
    assert_eq!(
        bpp.wait_result("s-0", 30).await["error"]["code"],
        "otp_invalid"
    );

    bpp.command(json!({"id": "s-1", "type": "session.start", "order_id": "order-7", "otp": OTP, "cp_id": "CP001", "connector_id": 1})).await;
    let call = cp.recv().await;
    assert_eq!(call[2], "RemoteStartTransaction");
    let tag = call[3]["idTag"].as_str().unwrap().to_string();
    assert!(tag.len() <= 20 && !tag.contains(OTP));
    cp.send_text(&json!([3, call[1], {"status": "Accepted"}]).to_string())
        .await;
    assert_eq!(bpp.wait_result("s-1", 30).await["ok"], true);
    // the charger starts with the agent's tag
    assert_eq!(
        cp.ok("Authorize", json!({"idTag": tag})).await["idTagInfo"]["status"],
        "Accepted"
    );
    let tx = cp.start(1, &tag, 0, &ts(0)).await;
    cp.meter(1, tx, &ts(30), 2_000).await;
    cp.stop(tx, 5_200, &ts(60)).await;
    let started = &agent.events_of("session.started")[0];
    assert_eq!(started["order_id"], "order-7");
    assert_eq!(started["auth_method"], "remote");
    let stopped = &agent.events_of("session.stopped")[0];
    // 5.2 kWh at 18.00 + 10.00 service fee
    assert_eq!(stopped["cost"]["total_minor"], 9360 + 1000);
    assert_eq!(stopped["settlement"]["refund_minor"], 100000 - 10360);
    // single use: spent by session.start
    bpp.command(json!({"id": "s-2", "type": "session.start", "order_id": "order-7", "otp": OTP, "cp_id": "CP001", "connector_id": 1})).await;
    assert_eq!(
        bpp.wait_result("s-2", 30).await["error"]["code"],
        "otp_used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_remote_start_gives_the_use_back() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = agent(&broker);
    online(&bpp).await;
    bpp.command(upsert("u-1", "order-8", OTP, json!({}))).await;
    assert_eq!(bpp.wait_result("u-1", 30).await["ok"], true);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    assert!(eventually(20, || agent.events_of("charger.connected").len() == 1).await);
    bpp.command(json!({"id": "s-1", "type": "session.start", "order_id": "order-8", "otp": OTP, "cp_id": "CP001", "connector_id": 1})).await;
    let call = cp.recv().await;
    cp.send_text(&json!([3, call[1], {"status": "Rejected"}]).to_string())
        .await;
    assert_eq!(
        bpp.wait_result("s-1", 30).await["error"]["code"],
        "charger_rejected"
    );
    // the driver can still use the code at the charger
    let tx = cp.start(1, OTP, 0, &ts(0)).await;
    assert!(tx >= 1);
    assert_eq!(
        agent.events_of("session.started")[0]["auth_result"],
        "accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_0_1_keycode_otp_works_offline_shows_the_running_cost_and_stops_at_the_budget() {
    let mut broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let mut agent = agent(&broker);
    online(&bpp).await;
    let tariff = json!({"currency":"INR","energy_minor_per_kwh":1600,"service_fee_minor":0,
        "timezone":"Asia/Kolkata"});
    bpp.command(upsert(
        "u-201",
        "order-201",
        OTP,
        json!({"budget": {"currency":"INR","amount_minor":5000}, "tariff": tariff}),
    ))
    .await;
    assert_eq!(bpp.wait_result("u-201", 30).await["ok"], true);

    broker.kill();
    let mut cp = Charger::connect_v201(&agent.url("CP001")).await;
    let key_code = json!({"idToken": OTP, "type": "KeyCode"});
    let wrong = cp
        .ok(
            "Authorize",
            json!({"idToken": {"idToken": "11112222", "type": "KeyCode"}}),
        )
        .await;
    assert_eq!(wrong["idTokenInfo"]["status"], "Invalid");
    let a = cp.ok("Authorize", json!({"idToken": key_code})).await;
    assert_eq!(
        a["idTokenInfo"]["status"], "Accepted",
        "Authorize does not use it up"
    );
    let s = cp
        .ok(
            "TransactionEvent",
            json!({"eventType": "Started", "timestamp": ts(0), "triggerReason": "Authorized",
                "seqNo": 0, "transactionInfo": {"transactionId": "T-201", "chargingState": "Charging"},
                "evse": {"id": 1, "connectorId": 1}, "idToken": key_code,
                "meterValue": [{"timestamp": ts(0), "sampledValue": [
                    {"value": 10_000, "context": "Transaction.Begin"}]}]}),
        )
        .await;
    assert_eq!(s["idTokenInfo"]["status"], "Accepted");
    assert_eq!(s["totalCost"], 0.0);
    let mut register = 10_000;
    let mut stop_call = None;
    let mut last_cost = 0.0;
    for i in 1..=10 {
        register += 500;
        cp.send_text(
            &json!([2, format!("te{i}"), "TransactionEvent", {"eventType": "Updated",
            "timestamp": ts(i), "triggerReason": "MeterValuePeriodic", "seqNo": i,
            "transactionInfo": {"transactionId": "T-201"},
            "meterValue": [{"timestamp": ts(i), "sampledValue": [{"value": register}]}]}])
            .to_string(),
        )
        .await;
        let mut answered = false;
        while !answered {
            let f = cp.recv().await;
            if f[0] == 2 && f[2] == "RequestStopTransaction" {
                stop_call = Some(f);
            } else {
                assert_eq!(f[0], 3, "{f}");
                last_cost = f[2]["totalCost"].as_f64().expect("the running cost");
                answered = true;
            }
        }
        if stop_call.is_none() {
            if let Some(f) = cp.try_recv(Duration::from_millis(300)).await {
                assert_eq!(f[2], "RequestStopTransaction");
                stop_call = Some(f);
            }
        }
        if stop_call.is_some() {
            break;
        }
    }
    let stop_call = stop_call.expect("the agent stopped the charger at the budget");
    assert_eq!(stop_call[3], json!({"transactionId": "T-201"}));
    assert_eq!(last_cost, 40.0, "2.5 kWh at 16.00");
    cp.send_text(&json!([3, stop_call[1], {"status": "Accepted"}]).to_string())
        .await;
    let end = cp
        .ok(
            "TransactionEvent",
            json!({"eventType": "Ended", "timestamp": ts(11), "triggerReason": "RemoteStop",
                "seqNo": 11, "transactionInfo": {"transactionId": "T-201", "stoppedReason": "Remote"},
                "meterValue": [{"timestamp": ts(11), "sampledValue": [
                    {"value": register, "context": "Transaction.End"}]}]}),
        )
        .await;
    assert_eq!(end["totalCost"], 40.0);
    // single use: a second transaction with the same code is refused
    let again = cp
        .ok(
            "TransactionEvent",
            json!({"eventType": "Started", "timestamp": ts(12), "triggerReason": "Authorized",
                "seqNo": 0, "transactionInfo": {"transactionId": "T-202"},
                "evse": {"id": 1, "connectorId": 1}, "idToken": key_code}),
        )
        .await;
    assert_eq!(again["idTokenInfo"]["status"], "Invalid", "single use");

    broker.restart();
    let n = agent.events().last().unwrap().0;
    let bpp = Bpp::connect(&broker, ROOT).await;
    if !bpp.wait_complete(n, 60).await {
        bpp.command(json!({"id": "replay-201", "type": "events.replay", "from_seq": 1}))
            .await;
    }
    assert!(
        bpp.wait_complete(n, 60).await,
        "have {} of {n}",
        bpp.max_contiguous()
    );
    let started = &bpp.events_of("session.started")[0];
    assert_eq!(started["order_id"], "order-201");
    assert_eq!(started["auth_method"], "otp");
    assert_eq!(started["transaction_id"], "T-201");
    assert_eq!(started["evse_id"], 1);
    let stopped = &bpp.events_of("session.stopped")[0];
    assert_eq!(stopped["reason"], "BudgetReached");
    assert_eq!(stopped["energy_wh"], 2500);
    assert_eq!(stopped["cost"]["total_minor"], 4000);
    assert_eq!(
        stopped["settlement"],
        json!({"prepaid_minor":5000,"charged_minor":4000,"refund_minor":1000,"topup_minor":0})
    );
    for e in bpp.seen.lock().unwrap().arrivals.iter() {
        assert!(!e.to_string().contains(OTP), "never the OTP upstream: {e}");
    }
    assert_eq!(agent.terminate(), Some(0));
    let dir = agent.dir.path().to_path_buf();
    for f in ["cs.db", "cs.db-wal", "agent.log"] {
        assert!(!file_contains(&dir.join(f), OTP), "{f} contains the OTP");
    }
}
