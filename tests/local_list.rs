//! Fleet cards on the chargers' own local authorization lists (issue 14): at a
//! BootNotification, after every `tags.*` change, and on a reconnect the agent checks
//! GetLocalListVersion and, when the charger holds another version, sends the list in
//! SendLocalList CALLs within the charger's per-message limit (1.6 and 2.0.1).

mod common;

use std::time::Duration;

use common::mqtt::{Bpp, Broker};
use common::{eventually, Agent, Charger};
use serde_json::{json, Value};

const ROOT: &str = "chargesite/v1/site-001";

#[test]
fn broker_process() {
    common::mqtt::broker_process();
}

/// Reads frames until the agent's CALL `action` arrives (answers to our own CALLs are
/// skipped); returns its id and payload.
async fn expect_call(cp: &mut Charger, action: &str) -> (Value, Value) {
    loop {
        let f = cp.recv().await;
        if f[0] == 2 {
            assert_eq!(f[2], action, "the agent's next CALL: {f}");
            return (f[1].clone(), f[3].clone());
        }
    }
}

async fn answer(cp: &mut Charger, id: &Value, payload: Value) {
    cp.send_text(&json!([3, id, payload]).to_string()).await;
}

async fn boot(cp: &mut Charger, v201: bool) {
    let payload = if v201 {
        json!({"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"})
    } else {
        json!({"chargePointVendor": "V", "chargePointModel": "M"})
    };
    cp.send_text(&json!([2, "boot", "BootNotification", payload]).to_string())
        .await;
}

fn in_a_day() -> String {
    (chargesite::time::now() + chrono::Duration::days(1)).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_cards_reach_1_6_and_2_0_1_local_lists_within_their_limits_and_stay_current() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = Agent::start("allow_unknown_chargers = true", &broker.uplink_toml(""));
    bpp.wait_agent_online().await;
    bpp.command(json!({"id": "t-1", "type": "tags.upsert", "tags": [
        {"id_tag": "04a1b2c3d4e5f6", "valid_until": in_a_day()},
        {"id_tag": "04A1B2C3D4E5F7"},
        {"id_tag": "E004015012345678", "type": "ISO15693"}]}))
        .await;
    assert_eq!(bpp.wait_result("t-1", 30).await["ok"], true);

    // a 1.6 charger boots: it holds no list and takes 2 entries a message
    let mut cp = Charger::connect(&agent.url("CP16")).await;
    boot(&mut cp, false).await;
    let (id, _) = expect_call(&mut cp, "GetLocalListVersion").await;
    answer(&mut cp, &id, json!({"listVersion": 0})).await;
    let (id, get) = expect_call(&mut cp, "GetConfiguration").await;
    assert_eq!(get["key"], json!(["SendLocalListMaxLength"]));
    answer(
        &mut cp,
        &id,
        json!({"configurationKey": [{"key": "SendLocalListMaxLength", "readonly": true, "value": "2"}]}),
    )
    .await;
    let (id, first) = expect_call(&mut cp, "SendLocalList").await;
    answer(&mut cp, &id, json!({"status": "Accepted"})).await;
    let (id, second) = expect_call(&mut cp, "SendLocalList").await;
    answer(&mut cp, &id, json!({"status": "Accepted"})).await;
    assert_eq!(
        (first["updateType"].clone(), second["updateType"].clone()),
        (json!("Full"), json!("Differential"))
    );
    assert_eq!(first["listVersion"], 1);
    assert_eq!(second["listVersion"], 1);
    let mut uids: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|m| m["localAuthorizationList"].as_array().unwrap().clone())
        .map(|e| {
            assert_eq!(e["idTagInfo"]["status"], "Accepted");
            e["idTag"].as_str().unwrap().to_string()
        })
        .collect();
    uids.sort();
    assert_eq!(
        uids,
        ["04A1B2C3D4E5F6", "04A1B2C3D4E5F7", "E004015012345678"]
    );
    let with_expiry = [&first, &second]
        .iter()
        .flat_map(|m| m["localAuthorizationList"].as_array().unwrap().clone())
        .filter(|e| e["idTagInfo"].get("expiryDate").is_some())
        .count();
    assert_eq!(
        with_expiry, 1,
        "the card with a valid_until carries its expiry"
    );

    // a card is removed: the connected charger gets the new version
    bpp.command(json!({"id": "t-2", "type": "tags.remove", "id_tags": ["E004015012345678"]}))
        .await;
    assert_eq!(bpp.wait_result("t-2", 30).await["removed"], 1);
    let (id, _) = expect_call(&mut cp, "GetLocalListVersion").await;
    answer(&mut cp, &id, json!({"listVersion": 1})).await;
    let (id, _) = expect_call(&mut cp, "GetConfiguration").await;
    answer(
        &mut cp,
        &id,
        json!({"configurationKey": [], "unknownKey": ["SendLocalListMaxLength"]}),
    )
    .await;
    let (id, full) = expect_call(&mut cp, "SendLocalList").await;
    answer(&mut cp, &id, json!({"status": "Accepted"})).await;
    assert_eq!(
        (full["listVersion"].clone(), full["updateType"].clone()),
        (json!(2), json!("Full"))
    );
    assert_eq!(
        full["localAuthorizationList"].as_array().unwrap().len(),
        2,
        "the default limit holds both"
    );

    // a reconnect without a reboot: the version is checked, nothing else is sent
    drop(cp);
    let mut cp = Charger::connect(&agent.url("CP16")).await;
    let (id, _) = expect_call(&mut cp, "GetLocalListVersion").await;
    answer(&mut cp, &id, json!({"listVersion": 2})).await;
    assert!(
        cp.try_recv(Duration::from_millis(800)).await.is_none(),
        "already current"
    );

    // a 2.0.1 charger: versionNumber, idToken types, ItemsPerMessage
    let mut cp2 = Charger::connect_v201(&agent.url("CP201")).await;
    boot(&mut cp2, true).await;
    let (id, _) = expect_call(&mut cp2, "GetLocalListVersion").await;
    answer(&mut cp2, &id, json!({"versionNumber": 0})).await;
    let (id, get) = expect_call(&mut cp2, "GetVariables").await;
    assert_eq!(
        get["getVariableData"][0]["variable"]["name"],
        "ItemsPerMessage"
    );
    answer(
        &mut cp2,
        &id,
        json!({"getVariableResult": [{"attributeStatus": "Accepted",
        "attributeValue": "10", "component": {"name": "LocalAuthListCtrlr"},
        "variable": {"name": "ItemsPerMessage"}}]}),
    )
    .await;
    let (id, list) = expect_call(&mut cp2, "SendLocalList").await;
    answer(&mut cp2, &id, json!({"status": "Accepted"})).await;
    assert_eq!(
        (list["versionNumber"].clone(), list["updateType"].clone()),
        (json!(2), json!("Full"))
    );
    let entries = list["localAuthorizationList"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries
        .iter()
        .all(|e| e["idToken"]["type"] == "ISO14443" && e["idTokenInfo"]["status"] == "Accepted"));
    // recorded once the charger accepted it
    let versions = || -> Vec<(String, Option<i64>)> {
        agent
            .db()
            .prepare("SELECT cp_id, local_list_version FROM chargers ORDER BY cp_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let want = [
        ("CP16".to_string(), Some(2)),
        ("CP201".to_string(), Some(2)),
    ];
    assert!(
        eventually(10, || versions() == want).await,
        "{:?}",
        versions()
    );
    assert!(
        agent.log().contains("local authorization list sent"),
        "the field engineer sees it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_without_cards_never_sends_a_local_list() {
    let agent = Agent::start("allow_unknown_chargers = true", "");
    let mut cp = Charger::connect(&agent.url("CP16")).await;
    let a = cp.boot().await;
    assert_eq!(a["status"], "Accepted");
    assert!(cp.try_recv(Duration::from_millis(800)).await.is_none());
}
