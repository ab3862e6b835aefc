//! Orders the BPP confirms while the site is offline (`offline_orders.configure`, issue 14):
//! the BPP gives the driver HOTP(key, counter) (RFC 4226) for a counter it allocates per
//! order; the site accepts each counter's code once, no further than `lookahead` past the
//! highest used one, across a restart, under the configured terms, and names the counter
//! on `session.started`. The key is never stored, logged or published in clear.

mod common;

use common::mqtt::{Bpp, Broker};
use common::{ts, Agent, Charger};
use serde_json::{json, Value};

const ROOT: &str = "chargesite/v1/site-001";
const KEY: &[u8; 32] = b"k3y-shared-with-the-bpp-32-bytes";

#[test]
fn broker_process() {
    common::mqtt::broker_process();
}

/// The code the BPP gives the driver of the order with `counter` (RFC 4226; the
/// implementation is checked against the RFC's own test values in `auth`'s unit tests).
fn code(counter: u64) -> String {
    chargesite::auth::hotp(KEY, counter, 6)
}

fn key_b64() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(KEY)
}

fn configure(id: &str) -> Value {
    json!({"id": id, "type": "offline_orders.configure", "key": key_b64(), "digits": 6,
        "lookahead": 5, "terms": {
            "tariff": {"currency": "INR", "energy_minor_per_kwh": 1800, "service_fee_minor": 0,
                       "timezone": "Asia/Kolkata"},
            "budget": {"currency": "INR", "amount_minor": 50000},
            "valid_minutes": 60}})
}

fn contains(path: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read(path)
        .map(|b| b.windows(needle.len()).any(|w| w == needle))
        .unwrap_or(false)
}

async fn start(cp: &mut Charger, connector: u32, code: &str, minute: i64) -> (i64, Value) {
    let a = cp
        .ok(
            "StartTransaction",
            json!({"connectorId": connector, "idTag": code, "meterStart": 1000,
                   "timestamp": ts(minute)}),
        )
        .await;
    (
        a["transactionId"].as_i64().unwrap(),
        a["idTagInfo"]["status"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_codes_are_accepted_once_within_the_lookahead_offline_and_across_a_restart() {
    let mut broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let mut agent = Agent::start("allow_unknown_chargers = true", &broker.uplink_toml(""));
    bpp.wait_agent_online().await;
    // malformed configurations change nothing
    let mut bad = configure("c-bad-digits");
    bad["digits"] = json!(5);
    bpp.command(bad).await;
    let r = bpp.wait_result("c-bad-digits", 30).await;
    assert_eq!(
        (r["ok"].clone(), r["error"]["code"].clone()),
        (json!(false), json!("bad_request"))
    );
    let mut bad = configure("c-bad-key");
    bad["key"] = json!("c2hvcnQ=");
    bpp.command(bad).await;
    assert_eq!(
        bpp.wait_result("c-bad-key", 30).await["error"]["code"],
        "bad_request"
    );
    bpp.command(configure("c-1")).await;
    let r = bpp.wait_result("c-1", 30).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["rotated"], false);
    // counter 0 is used while online; the same key sent again (a retry after the BPP's
    // own restart) keeps it used
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let (_, status) = start(&mut cp, 5, &code(0), -10).await;
    assert_eq!(status, "Accepted");
    bpp.command(configure("c-1-again")).await;
    let r = bpp.wait_result("c-1-again", 30).await;
    assert_eq!(
        (r["ok"].clone(), r["rotated"].clone()),
        (json!(true), json!(false))
    );
    let (_, status) = start(&mut cp, 6, &code(0), -9).await;
    assert_eq!(status, "Invalid", "a used code never works twice");

    // the site goes offline; drivers of orders confirmed meanwhile arrive
    broker.kill();
    let a = cp.ok("Authorize", json!({"idTag": code(2)})).await;
    assert_eq!(
        a["idTagInfo"]["status"], "Accepted",
        "Authorize uses nothing up"
    );
    let (_, status) = start(&mut cp, 1, &code(2), 0).await;
    assert_eq!(status, "Accepted");
    let (_, status) = start(&mut cp, 2, &code(2), 1).await;
    assert_eq!(status, "Invalid", "each counter once");
    let (_, status) = start(&mut cp, 2, &code(8), 2).await;
    assert_eq!(status, "Invalid", "8 is beyond 2 + 5");
    let (_, status) = start(&mut cp, 2, &code(7), 3).await;
    assert_eq!(status, "Accepted", "7 is within the lookahead");

    let started: Vec<Value> = agent
        .events_of("session.started")
        .into_iter()
        .filter(|e| e["auth_result"] == "accepted")
        .collect();
    let counters: Vec<Value> = started
        .iter()
        .map(|e| e["offline_counter"].clone())
        .collect();
    assert_eq!(counters, vec![json!(0), json!(2), json!(7)]);
    assert!(started
        .iter()
        .all(|e| e["auth_method"] == "otp" && e.get("order_id").is_none()));
    let results: Vec<Value> = agent
        .events_of("auth.checked")
        .iter()
        .map(|e| e["result"].clone())
        .collect();
    assert_eq!(
        results,
        ["accepted", "used", "accepted", "accepted", "used", "invalid", "accepted"]
            .map(Value::from)
    );
    // the session is priced by the configured terms
    let (tariff, budget): (Option<String>, Option<i64>) = agent
        .db()
        .query_row(
            "SELECT tariff, budget_minor FROM sessions WHERE offline_counter = 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(tariff.is_some_and(|t| t.contains("1800")));
    assert_eq!(budget, Some(50_000));

    // across a restart: a skipped counter still works, a used one does not
    drop(cp);
    assert_eq!(agent.terminate(), Some(0));
    let mut agent = agent.restart();
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let (_, status) = start(&mut cp, 3, &code(1), 4).await;
    assert_eq!(
        status, "Accepted",
        "1 was skipped by 2 and 7, and is still valid"
    );
    let (_, status) = start(&mut cp, 4, &code(7), 5).await;
    assert_eq!(status, "Invalid");
    // wrong codes count toward the lock-out like any other: code(8) was the first of five
    // (a reused code is not a guess, so code(2) and code(7) again were not)
    for k in 0..4 {
        let a = cp
            .ok("Authorize", json!({"idTag": format!("9{k}0000")}))
            .await;
        assert_eq!(a["idTagInfo"]["status"], "Invalid");
    }
    let a = cp.ok("Authorize", json!({"idTag": code(3)})).await;
    assert_eq!(
        a["idTagInfo"]["status"], "Blocked",
        "locked even for a good derived code"
    );

    // the key is never at rest, in the log or upstream in clear
    assert_eq!(agent.terminate(), Some(0));
    let dir = agent.dir.path().to_path_buf();
    let b64 = key_b64();
    for f in ["cs.db", "cs.db-wal", "agent.log"] {
        assert!(!contains(&dir.join(f), KEY), "{f} holds the key");
        assert!(
            !contains(&dir.join(f), b64.as_bytes()),
            "{f} holds the key in base64"
        );
    }
    let stored: String = rusqlite::Connection::open(dir.join("cs.db"))
        .unwrap()
        .query_row("SELECT body FROM commands WHERE id = 'c-1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(stored.contains("<redacted>"), "{stored}");
}
