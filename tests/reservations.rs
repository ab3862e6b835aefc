//! Reservations with a grace period over the real agent, a real MQTT broker and chargers
//! on the wire (1.6 and 2.0.1) that answer ReserveNow as the case needs: used by the
//! order's driver, a no-show after the grace (billed by the order's tariff), cancelled,
//! refused by an occupied charger, a remote start on the reserved connector, and a
//! reservation that survives an agent restart with the uplink down.

mod common;

use common::mqtt::{Bpp, Broker};
use common::{eventually, ts, Agent, Cp};
use serde_json::{json, Value};

const ROOT: &str = "chargesite/v1/site-001";

#[test]
fn broker_process() {
    common::mqtt::broker_process();
}

fn agent(broker: &Broker) -> Agent {
    Agent::start("allow_unknown_chargers = true", &broker.uplink_toml(""))
}

async fn site() -> (Broker, Bpp, Agent) {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = agent(&broker);
    bpp.wait_agent_online().await;
    (broker, bpp, agent)
}

fn at(secs: i64) -> String {
    (chargesite::time::now() + chrono::Duration::seconds(secs)).to_rfc3339()
}

const TARIFF: &str = r#"{"currency":"INR","energy_minor_per_kwh":1800,
    "tax":{"name":"GST","rate_bp":1800},
    "reservation":{"no_show_fee_minor":5000,"cancel_fee_minor":1000}}"#;

/// The order's OTP at charger `cp`, with the tariff that names reservation fees.
async fn order(bpp: &Bpp, order: &str, otp: &str, cp: &str) {
    let id = format!("auth-{order}");
    bpp.command(
        json!({"id": id, "type": "authorization.upsert", "order_id": order,
        "otp": otp, "valid_until": at(3600), "cp_id": cp, "connector_id": 1,
        "tariff": serde_json::from_str::<Value>(TARIFF).unwrap()}),
    )
    .await;
    assert_eq!(bpp.wait_result(&id, 10).await["ok"], true);
}

async fn reserve(bpp: &Bpp, order: &str, cp: &str, start_secs: i64, grace_minutes: i64) -> Value {
    let id = format!("rsv-{order}");
    bpp.command(
        json!({"id": id, "type": "reservation.upsert", "order_id": order, "cp_id": cp,
        "connector_id": 1, "start": at(start_secs), "end": at(start_secs + 3600),
        "grace_minutes": grace_minutes}),
    )
    .await;
    bpp.wait_result(&id, 10).await
}

fn released(agent: &Agent, order: &str) -> Option<Value> {
    agent
        .events_of("reservation.released")
        .into_iter()
        .find(|e| e["order_id"] == order)
}

async fn wait_released(agent: &Agent, order: &str, secs: u64) -> Value {
    assert!(
        eventually(secs, || released(agent, order).is_some()).await,
        "no reservation.released for {order}: {:?}",
        agent.events_of("reservation.released")
    );
    released(agent, order).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_connector_takes_only_its_orders_driver_who_then_uses_it() {
    let (_broker, bpp, agent) = site().await;
    let mut cp = Cp::connect(&agent, "RSV1", false).await;
    order(&bpp, "o-mine", "482913", "RSV1").await;
    order(&bpp, "o-other", "771204", "RSV1").await;
    let r = reserve(&bpp, "o-mine", "RSV1", 0, 15).await;
    assert_eq!(r["ok"], true, "{r}");
    let rn = cp.wait_for("ReserveNow", 10).await;
    assert_eq!(rn["connectorId"], 1);
    assert_eq!(rn["reservationId"], r["reservation_id"]);
    // agent tokens, never the driver's OTP
    let (tag, parent) = (
        rn["idTag"].as_str().unwrap(),
        rn["parentIdTag"].as_str().unwrap(),
    );
    assert!(tag.starts_with("RV") && parent.starts_with("RG") && tag.len() <= 20);
    assert!(eventually(5, || !agent.events_of("reservation.held").is_empty()).await);
    let held = &agent.events_of("reservation.held")[0];
    assert_eq!(held["order_id"], "o-mine");

    // another order's driver is refused on the reserved connector, and keeps their OTP
    let other = cp
        .ok(
            "StartTransaction",
            json!({"connectorId": 1, "idTag": "771204", "meterStart": 1000, "timestamp": ts(0)}),
        )
        .await;
    assert_eq!(other["idTagInfo"]["status"], "Invalid");
    let uses: i64 = agent
        .db()
        .query_row(
            "SELECT uses FROM authorizations WHERE order_id = 'o-other'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        uses, 0,
        "a refusal at a reserved connector consumes nothing"
    );
    cp.ok(
        "StopTransaction",
        json!({"transactionId": other["transactionId"], "meterStop": 1000, "timestamp": ts(1)}),
    )
    .await;

    // the order's own driver: Authorize names the reservation's group, the start uses it
    let a = cp.ok("Authorize", json!({"idTag": "482913"})).await;
    assert_eq!(a["idTagInfo"]["status"], "Accepted");
    assert_eq!(a["idTagInfo"]["parentIdTag"], parent);
    let mine = cp
        .ok(
            "StartTransaction",
            json!({"connectorId": 1, "idTag": "482913", "meterStart": 1000, "timestamp": ts(2),
                   "reservationId": rn["reservationId"]}),
        )
        .await;
    assert_eq!(mine["idTagInfo"]["status"], "Accepted");
    let rel = wait_released(&agent, "o-mine", 5).await;
    assert_eq!(rel["reason"], "used");
    assert!(
        rel.get("cost").is_none(),
        "a used reservation costs nothing: {rel}"
    );
    // and the BPP hears it
    assert!(eventually(10, || bpp.events_of("reservation.released").len() == 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_coming_within_the_grace_is_a_no_show_billed_by_the_tariff_and_cancelled_at_the_charger(
) {
    let (_broker, _bpp, agent) = site().await;
    let mut cp = Cp::connect(&agent, "RSV2", false).await;
    order(&_bpp, "o-late", "482913", "RSV2").await;
    // started 58 s ago with a 1-minute grace: the grace ends in 2 s
    let r = reserve(&_bpp, "o-late", "RSV2", -58, 1).await;
    assert_eq!(r["ok"], true, "{r}");
    cp.wait_for("ReserveNow", 5).await;
    let cancel = cp.wait_for("CancelReservation", 10).await;
    assert_eq!(cancel["reservationId"], r["reservation_id"]);
    let rel = wait_released(&agent, "o-late", 5).await;
    assert_eq!(rel["reason"], "no_show");
    assert_eq!(rel["cost"]["total_minor"], 5900, "{rel}");
    assert_eq!(rel["cost"]["components"][0]["type"], "reservation");
    // the connector is free again: anyone may start
    let s = cp
        .ok(
            "StartTransaction",
            json!({"connectorId": 1, "idTag": "482913", "meterStart": 0, "timestamp": ts(0)}),
        )
        .await;
    assert_eq!(s["idTagInfo"]["status"], "Accepted");
    // a reservation whose grace is over cannot be made
    let late = reserve(&_bpp, "o-too-late", "RSV2", -120, 1).await;
    assert_eq!(late["ok"], false);
    assert_eq!(late["error"]["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_2_0_1_reservation_is_released_with_its_fee_and_cancelled_at_the_charger() {
    let (_broker, bpp, agent) = site().await;
    let mut cp = Cp::connect(&agent, "RSV3", true).await;
    order(&bpp, "o-cancel", "482913", "RSV3").await;
    let r = reserve(&bpp, "o-cancel", "RSV3", 0, 30).await;
    let rn = cp.wait_for("ReserveNow", 10).await;
    assert_eq!(rn["id"], r["reservation_id"]);
    assert_eq!(rn["evseId"], 1);
    assert_eq!(rn["idToken"]["type"], "Central");
    assert_eq!(rn["groupIdToken"]["type"], "Central");
    // the order's OTP is answered with the reservation's group
    let a = cp
        .ok(
            "Authorize",
            json!({"idToken": {"idToken": "482913", "type": "KeyCode"}}),
        )
        .await;
    assert_eq!(a["idTokenInfo"]["groupIdToken"], rn["groupIdToken"]);
    // overlapping another order on the same connector is a conflict
    order(&bpp, "o-second", "771204", "RSV3").await;
    let clash = reserve(&bpp, "o-second", "RSV3", 60, 30).await;
    assert_eq!(clash["error"]["code"], "conflict", "{clash}");
    bpp.command(json!({"id": "cancel", "type": "reservation.cancel", "order_id": "o-cancel"}))
        .await;
    assert_eq!(bpp.wait_result("cancel", 10).await["ok"], true);
    let c = cp.wait_for("CancelReservation", 10).await;
    assert_eq!(c["reservationId"], r["reservation_id"]);
    let rel = wait_released(&agent, "o-cancel", 5).await;
    assert_eq!(rel["reason"], "cancelled");
    assert_eq!(rel["cost"]["total_minor"], 1180, "{rel}");
    bpp.command(json!({"id": "again", "type": "reservation.cancel", "order_id": "o-cancel"}))
        .await;
    assert_eq!(
        bpp.wait_result("again", 10).await["error"]["code"],
        "not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_occupied_charger_refuses_the_reservation_and_the_bpp_hears_at_once() {
    let (_broker, bpp, agent) = site().await;
    let mut cp = Cp::connect(&agent, "RSV4", false).await;
    cp.answers
        .insert("ReserveNow", json!({"status": "Occupied"}));
    order(&bpp, "o-busy", "482913", "RSV4").await;
    reserve(&bpp, "o-busy", "RSV4", 0, 15).await;
    cp.wait_for("ReserveNow", 10).await;
    let rel = wait_released(&agent, "o-busy", 5).await;
    assert_eq!(rel["reason"], "charger_refused");
    assert_eq!(rel["charger_status"], "Occupied");
    assert!(eventually(10, || bpp.events_of("reservation.released").len() == 1).await);
    assert!(agent.events_of("reservation.held").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_start_on_the_reserved_connector_presents_the_reservations_own_token() {
    let (_broker, bpp, agent) = site().await;
    let mut cp = Cp::connect(&agent, "RSV5", false).await;
    order(&bpp, "o-app", "482913", "RSV5").await;
    reserve(&bpp, "o-app", "RSV5", 0, 15).await;
    let rn = cp.wait_for("ReserveNow", 10).await;
    bpp.command(
        json!({"id": "go", "type": "session.start", "order_id": "o-app", "otp": "482913",
        "cp_id": "RSV5", "connector_id": 1}),
    )
    .await;
    let rs = cp.wait_for("RemoteStartTransaction", 10).await;
    assert_eq!(rs["idTag"], rn["idTag"]);
    assert_eq!(bpp.wait_result("go", 10).await["ok"], true);
    let s = cp
        .ok(
            "StartTransaction",
            json!({"connectorId": 1, "idTag": rs["idTag"], "meterStart": 0, "timestamp": ts(0),
                   "reservationId": rn["reservationId"]}),
        )
        .await;
    assert_eq!(s["idTagInfo"]["status"], "Accepted");
    assert_eq!(wait_released(&agent, "o-app", 5).await["reason"], "used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_survives_an_agent_restart_with_the_uplink_down_and_is_used_offline() {
    let (mut broker, bpp, mut agent) = site().await;
    order(&bpp, "o-offline", "482913", "RSV6").await;
    // held from 4 s from now; the agent restarts before that, with the broker gone
    let r = reserve(&bpp, "o-offline", "RSV6", 4, 15).await;
    assert_eq!(r["ok"], true);
    broker.kill();
    assert_eq!(agent.terminate(), Some(0));
    let agent = agent.restart();
    let mut cp = Cp::connect(&agent, "RSV6", true).await;
    let rn = cp.wait_for("ReserveNow", 15).await;
    assert_eq!(rn["id"], r["reservation_id"]);
    cp.idle(1).await;
    assert_eq!(agent.events_of("reservation.held").len(), 1);
    // the driver arrives: a 2.0.1 transaction started with the order's OTP on the EVSE
    let started = json!({"eventType": "Started", "timestamp": ts(0), "triggerReason": "Authorized",
        "seqNo": 0, "transactionInfo": {"transactionId": "tx-rsv", "chargingState": "Charging"},
        "evse": {"id": 1, "connectorId": 1}, "reservationId": rn["id"],
        "idToken": {"idToken": "482913", "type": "KeyCode"},
        "meterValue": [{"timestamp": ts(0), "sampledValue": [{"value": 1000,
            "measurand": "Energy.Active.Import.Register", "context": "Transaction.Begin"}]}]});
    let a = cp.ok("TransactionEvent", started).await;
    assert_eq!(a["idTokenInfo"]["status"], "Accepted");
    assert_eq!(
        wait_released(&agent, "o-offline", 5).await["reason"],
        "used"
    );
    // the BPP hears all of it once the uplink is back
    broker.restart();
    assert!(
        eventually(30, || bpp.events_of("reservation.released").len() == 1
            && bpp.events_of("reservation.held").len() == 1)
        .await
    );
}
