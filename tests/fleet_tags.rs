//! Fleet RFID cards (`tags.upsert` / `tags.remove`, issue 14): accepted at every charger of
//! the site, on 1.6 (idTag) and 2.0.1 (ISO14443/ISO15693 idTokens), offline as online,
//! matched case-insensitively, until their validity; unknown tags by `[auth] unknown_tags`.
//! No card UID is ever stored, logged or published in clear.

mod common;

use common::mqtt::{Bpp, Broker};
use common::{eventually, ts, Agent, Charger};
use serde_json::{json, Value};

const ROOT: &str = "chargesite/v1/site-001";
const CARD: &str = "04A1B2C3D4E5F6";
const VICINITY: &str = "E004015012345678";
const EXPIRED: &str = "0A0B0C0D";

#[test]
fn broker_process() {
    common::mqtt::broker_process();
}

fn at(mins: i64) -> String {
    (chargesite::time::now() + chrono::Duration::minutes(mins)).to_rfc3339()
}

fn contains(path: &std::path::Path, needle: &str) -> bool {
    std::fs::read(path)
        .map(|b| {
            b.windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        })
        .unwrap_or(false)
}

async fn authorize(cp: &mut Charger, tag: &str) -> Value {
    cp.ok("Authorize", json!({"idTag": tag})).await["idTagInfo"]["status"].clone()
}

async fn authorize_v201(cp: &mut Charger, tag: &str, kind: &str) -> Value {
    cp.ok(
        "Authorize",
        json!({"idToken": {"idToken": tag, "type": kind}}),
    )
    .await["idTokenInfo"]["status"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_cards_work_on_both_versions_offline_and_online_and_never_in_clear() {
    let mut broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let mut agent = Agent::start("allow_unknown_chargers = true", &broker.uplink_toml(""));
    bpp.wait_agent_online().await;
    bpp.command(json!({"id": "t-bad", "type": "tags.upsert",
        "tags": [{"id_tag": "not a uid"}]}))
        .await;
    let r = bpp.wait_result("t-bad", 30).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    bpp.command(json!({"id": "t-1", "type": "tags.upsert", "tags": [
        {"id_tag": CARD, "valid_until": at(60), "fleet": "acme-logistics"},
        {"id_tag": VICINITY, "type": "ISO15693", "fleet": "acme-logistics"},
        {"id_tag": EXPIRED, "valid_until": at(-1)}]}))
        .await;
    let r = bpp.wait_result("t-1", 30).await;
    assert_eq!(
        (r["ok"].clone(), r["upserted"].clone()),
        (json!(true), json!(3)),
        "{r}"
    );

    let mut cp = Charger::connect(&agent.url("CP001")).await;
    assert_eq!(
        authorize(&mut cp, &CARD.to_lowercase()).await,
        "Accepted",
        "any case"
    );
    assert_eq!(authorize(&mut cp, EXPIRED).await, "Expired");
    assert_eq!(
        authorize(&mut cp, "DEADBEEF").await,
        "Invalid",
        "unknown: refused"
    );
    let mut cp2 = Charger::connect_v201(&agent.url("CP201")).await;
    assert_eq!(
        authorize_v201(&mut cp2, VICINITY, "ISO15693").await,
        "Accepted"
    );
    bpp.command(json!({"id": "t-2", "type": "tags.remove", "id_tags": [VICINITY, "AABBCCDD"]}))
        .await;
    assert_eq!(bpp.wait_result("t-2", 30).await["removed"], 1);
    // the cards changed: the agent asks each connected charger for its local list version
    // (tests/local_list.rs follows that through); these two keep no list
    for c in [&mut cp, &mut cp2] {
        let f = c.recv().await;
        assert_eq!(f[2], "GetLocalListVersion", "{f}");
        c.send_text(&json!([4, f[1], "NotImplemented", "no local list", {}]).to_string())
            .await;
    }
    assert_eq!(
        authorize_v201(&mut cp2, VICINITY, "ISO15693").await,
        "Invalid"
    );

    // the uplink goes down: cards still work, and a session starts with one
    broker.kill();
    assert_eq!(authorize_v201(&mut cp2, CARD, "ISO14443").await, "Accepted");
    let a = cp
        .ok(
            "StartTransaction",
            json!({"connectorId": 1, "idTag": CARD, "meterStart": 0, "timestamp": ts(0)}),
        )
        .await;
    assert_eq!(a["idTagInfo"]["status"], "Accepted");
    let started = agent.events_of("session.started");
    assert_eq!(started.last().unwrap()["auth_method"], "rfid");
    let checked = agent.events_of("auth.checked");
    assert!(checked.iter().all(|e| e["method"] == "rfid"));
    assert_eq!(
        checked
            .iter()
            .map(|e| e["result"].clone())
            .collect::<Vec<_>>(),
        ["accepted", "expired", "invalid", "accepted", "invalid", "accepted", "accepted"]
            .map(Value::from)
    );

    // no UID in clear: not in the database, its WAL, the log, or the stored commands
    drop((cp, cp2));
    assert_eq!(agent.terminate(), Some(0));
    let dir = agent.dir.path().to_path_buf();
    for f in ["cs.db", "cs.db-wal", "agent.log"] {
        for tag in [CARD, VICINITY, EXPIRED] {
            assert!(!contains(&dir.join(f), tag), "{f} holds {tag}");
        }
    }
    let sealed: i64 = rusqlite::Connection::open(dir.join("cs.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM fleet_tags", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sealed, 2, "kept sealed, for the chargers' local lists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_offline_takes_unknown_tags_only_while_the_uplink_is_down_and_flags_them() {
    let mut broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = Agent::start(
        "allow_unknown_chargers = true",
        &format!(
            "[auth]\nunknown_tags = \"accept_offline\"\n\n{}",
            broker.uplink_toml("")
        ),
    );
    bpp.wait_agent_online().await;
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    assert_eq!(
        authorize(&mut cp, "DEADBEEF").await,
        "Invalid",
        "online: refused"
    );
    broker.kill();
    assert!(
        eventually(20, || agent.log().contains("uplink down")).await,
        "the agent saw the outage"
    );
    let a = cp
        .ok(
            "StartTransaction",
            json!({"connectorId": 1, "idTag": "DEADBEEF", "meterStart": 0, "timestamp": ts(0)}),
        )
        .await;
    assert_eq!(
        a["idTagInfo"]["status"], "Accepted",
        "offline: settled later"
    );
    let started = agent.events_of("session.started");
    let s = started.last().unwrap();
    assert_eq!(s["uplink_online"], false);
    assert!(
        s["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("unknown_tag")),
        "{s}"
    );
}
