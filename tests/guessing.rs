//! OTP guessing across the whole site (CONTRACT §6, issue 14): an attacker on the site LAN
//! who rotates charger ids, opens many sockets or comes from many addresses gets no more
//! wrong codes judged than the site and per-address budgets allow, a configured charger
//! that has not failed keeps working, and refused attempts are reported in aggregate, not
//! one event (and one row) each. The figures these tests print are the ones
//! `docs/billing.md` gives.

mod common;

use std::net::Ipv4Addr;
use std::time::Instant;

use common::{Agent, Charger};
use serde_json::json;

/// A wrong 6-digit code (never provisioned here).
fn code(i: usize) -> String {
    format!("{:06}", 100_000 + (i * 7_919) % 900_000)
}

fn agent() -> Agent {
    // commissioning mode, as the example config ships, plus one configured charger
    Agent::start(
        "allow_unknown_chargers = true\n\n[[ocpp.chargers]]\nid = \"CP-REAL\"",
        "",
    )
}

/// Counts the answers by status.
#[derive(Default, Debug)]
struct Tally {
    judged: usize,
    blocked: usize,
}

impl Tally {
    fn add(&mut self, status: &serde_json::Value) {
        match status.as_str() {
            Some("Invalid") => self.judged += 1,
            Some("Blocked") => self.blocked += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_ids_and_addresses_get_no_more_guesses_than_the_site_budget() {
    let agent = agent();
    let url = |id: &str| agent.url(id);
    let mut tally = Tally::default();
    let began = Instant::now();
    // 400 ids, never the same twice, from 200 addresses, 3 codes each
    for i in 0..400usize {
        let source = Ipv4Addr::new(127, 0, 1, u8::try_from(1 + i % 200).unwrap());
        let mut cp = Charger::connect_from(&url(&format!("ROT-{i}")), source).await;
        for k in 0..3 {
            let a = cp.ok("Authorize", json!({"idTag": code(i * 3 + k)})).await;
            tally.add(&a["idTagInfo"]["status"]);
        }
    }
    let secs = began.elapsed().as_secs_f64();
    let tried = tally.judged + tally.blocked;
    println!(
        "rotating ids: {tried} guesses in {secs:.1} s ({:.0}/min), {} judged, {} blocked",
        tried as f64 * 60.0 / secs,
        tally.judged,
        tally.blocked
    );
    assert_eq!(tally.judged, 30, "the site budget: 30 wrong codes an hour");
    // a configured charger that has not failed is still judged, not locked
    let mut real = Charger::connect(&url("CP-REAL")).await;
    let a = real.ok("Authorize", json!({"idTag": code(9_999)})).await;
    assert_eq!(a["idTagInfo"]["status"], "Invalid", "judged, not blocked");
    // ... and once it has given a wrong code while the site is over budget, it is a suspect
    let a = real.ok("Authorize", json!({"idTag": code(9_998)})).await;
    assert_eq!(a["idTagInfo"]["status"], "Blocked");

    // refused attempts are aggregated: the unknown ids share one report a minute
    let checked = agent.events_of("auth.checked");
    let blocked: Vec<_> = checked
        .iter()
        .filter(|e| e["result"] == "blocked")
        .collect();
    println!(
        "rotating ids: {} auth.checked events, {} of them blocked reports",
        checked.len(),
        blocked.len()
    );
    assert!(
        blocked.len() <= 3,
        "one report per key a minute, got {}",
        blocked.len()
    );
    assert!(blocked.iter().all(|e| e["count"].as_u64() >= Some(1)));
    assert_eq!(
        checked.len(),
        tally.judged + 1 + blocked.len(),
        "one event per judged code, none per blocked attempt"
    );
    let rows: i64 = agent
        .db()
        .query_row("SELECT count(*) FROM otp_failures", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 31, "blocked attempts write no failure rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sockets_from_one_address_share_its_budget() {
    let agent = agent();
    let mut sockets = Vec::new();
    for i in 0..20 {
        sockets.push(Charger::connect(&agent.url(&format!("FIXED-{i}"))).await);
    }
    let mut tally = Tally::default();
    let began = Instant::now();
    for round in 0..10 {
        for (i, cp) in sockets.iter_mut().enumerate() {
            let a = cp
                .ok("Authorize", json!({"idTag": code(round * 20 + i)}))
                .await;
            tally.add(&a["idTagInfo"]["status"]);
        }
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "20 sockets: {} guesses in {secs:.1} s, {} judged, {} blocked",
        tally.judged + tally.blocked,
        tally.judged,
        tally.blocked
    );
    assert_eq!(
        tally.judged, 10,
        "the address budget: 10 wrong codes an hour"
    );
    assert_eq!(tally.blocked, 190);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_uids_are_a_guessing_surface_too() {
    let agent = agent();
    let mut sockets = Vec::new();
    for i in 0..20 {
        sockets.push(Charger::connect(&agent.url(&format!("CARDS-{i}"))).await);
    }
    let mut tally = Tally::default();
    for round in 0..10usize {
        for (i, cp) in sockets.iter_mut().enumerate() {
            let uid = format!("04{:012X}", (round * 20 + i) * 0x9E37_79B9);
            let a = cp.ok("Authorize", json!({"idTag": uid})).await;
            tally.add(&a["idTagInfo"]["status"]);
        }
    }
    println!(
        "card UIDs, 20 sockets: {} judged, {} blocked",
        tally.judged, tally.blocked
    );
    assert_eq!(tally.judged, 10, "the address budget holds for cards too");
    let blocked: Vec<_> = agent
        .events_of("auth.checked")
        .into_iter()
        .filter(|e| e["result"] == "blocked")
        .collect();
    assert!(!blocked.is_empty() && blocked.iter().all(|e| e["method"] == "rfid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_2_0_1_no_authorization_token_is_refused_but_never_counted_as_a_guess() {
    let agent = agent();
    let mut cp = Charger::connect_v201(&agent.url("CP201-FREE")).await;
    for _ in 0..8 {
        let a = cp
            .ok(
                "Authorize",
                json!({"idToken": {"idToken": "", "type": "NoAuthorization"}}),
            )
            .await;
        assert_eq!(a["idTokenInfo"]["status"], "Invalid", "not locked: {a}");
    }
    let rows: i64 = agent
        .db()
        .query_row("SELECT count(*) FROM otp_failures", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}
