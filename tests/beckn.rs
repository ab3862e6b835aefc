//! The Beckn mapping of docs/beckn.md, checked against real runs: the site events a BPP
//! acts on, mapped to the Beckn 2.0 EV-charging messages it sends, compared with the
//! golden files in `docs/beckn/` (the document's worked examples).
//!
//! Two real runs feed it. `chargesite demo` (the real binary, with
//! `CHARGESITE_DEMO_RECORD`) gives the start, the live snapshot, the site's MQTT Will and
//! the final bills of prepaid orders. The demo's chargers never drop their socket, and its
//! bills depend on the time of day (a surcharge window) and on timing, so a short run of
//! its own (the real agent, a real broker, one hand-driven 1.6 charger whose clock the
//! test sets) gives the charger's connection interrupted mid-session and a bill with
//! every component the agent bills (energy, surcharge, idle, service) and a top-up.
//!
//! The mapping below is the reference BPP mapping: pure functions, event(s) -> Beckn
//! JSON. Site money is integer minor units and energy integer Wh; Beckn prices are
//! decimal strings in major units, converted here with integer arithmetic only.
//!
//! `BECKN_GOLDEN_UPDATE=1 cargo test --test beckn` rewrites the golden files.

#![cfg(feature = "embedded-broker")]

mod common;

use std::path::{Path, PathBuf};

use common::mqtt::{Bpp, Broker};
use common::{eventually, ts, Agent, Charger};
use serde_json::{json, Map, Value};

#[test]
fn broker_process() {
    common::mqtt::broker_process();
}

// ---------------------------------------------------------------------------------------
// The reference mapping (what docs/beckn.md documents)
// ---------------------------------------------------------------------------------------

/// The BPP's own values for a message's context: they come from its order record, never
/// from the site.
const BAP_ID: &str = "<bap_id>";
const BPP_ID: &str = "<bpp_id>";
const BECKN_TRANSACTION: &str = "<beckn_transaction_id>";
const MESSAGE_ID: &str = "<message_id>";

/// Minor units as a decimal string in major units (2-decimal currencies such as INR).
fn major(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    format!("{sign}{}.{:02}", m / 100, m % 100)
}

/// Wh as a decimal string of kWh.
fn kwh(wh: i64) -> String {
    let sign = if wh < 0 { "-" } else { "" };
    let w = wh.unsigned_abs();
    format!("{sign}{}.{:03}", w / 1000, w % 1000)
}

/// W as a decimal string of kW.
fn kw(w: f64) -> String {
    format!("{:.1}", w / 1000.0)
}

/// The site's cost component type as a Beckn 2.0 DEG price component type.
fn component_type(site: &str) -> &'static str {
    match site {
        "energy" => "UNIT",
        "surcharge" => "SURCHARGE",
        "tax" => "TAX",
        // idle, service, reservation
        _ => "FEE",
    }
}

/// The BPP's catalog item for a connector (its own convention; here `cp_id:connector`).
fn item_id(started: &Value) -> String {
    format!("{}:{}", s(&started["cp_id"]), started["connector_id"])
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or_default()
}

fn context(action: &str, timestamp: &str) -> Value {
    json!({
        "domain": "deg:ev-charging",
        "action": action,
        "version": "2.0.0",
        "bap_id": BAP_ID,
        "bpp_id": BPP_ID,
        "transaction_id": BECKN_TRANSACTION,
        "message_id": MESSAGE_ID,
        "timestamp": timestamp,
    })
}

fn start_stop(started: &Value) -> Value {
    json!({"type": "START", "time": {"timestamp": s(&started["started_at"])}})
}

fn fulfillment(started: &Value, code: &str, updated_at: &str, stops: Vec<Value>) -> Value {
    json!({
        "beckn:id": s(&started["session_id"]),
        "beckn:status": code,
        "state": {"code": code, "updated-at": updated_at, "updated-by": BPP_ID},
        "stops": stops,
    })
}

/// `session.started` -> on_update (start charging).
fn on_update_start(started: &Value) -> Value {
    json!({
        "context": context("on_update", s(&started["at"])),
        "message": {"order": {
            "@type": "beckn:Order",
            "beckn:id": s(&started["order_id"]),
            "beckn:state": "ACTIVE",
            "beckn:orderItems": [{"beckn:orderedItem": item_id(started), "beckn:quantity": 1}],
            "beckn:orderAttributes": {
                "fulfillment-details": fulfillment(started, "ACTIVE", s(&started["at"]),
                    vec![start_stop(started)]),
                "fulfillment-type": "CHARGING",
            },
        }},
    })
}

/// ISO 8601 duration between two RFC 3339 instants, whole seconds.
fn duration(from: &str, to: &str) -> String {
    let (Ok(a), Ok(b)) = (
        chrono::DateTime::parse_from_rfc3339(from),
        chrono::DateTime::parse_from_rfc3339(to),
    ) else {
        return String::new();
    };
    let secs = (b - a).num_seconds().max(0);
    format!("PT{}M{}S", secs / 60, secs % 60)
}

/// `<root>/live/<session_id>` (with its `session.started`) -> on_track.
fn on_track(started: &Value, live: &Value) -> Value {
    let mut metrics = json!({
        "energy-delivered": kwh(i(&live["energy_wh"])),
        "energy-unit": "kWh",
        "session-duration": duration(s(&started["started_at"]), s(&live["at"])),
    });
    if let Some(p) = live["power_w"].as_f64() {
        metrics["current-power"] = json!(kw(p));
        metrics["power-unit"] = json!("kW");
    }
    let mut order = json!({
        "@type": "beckn:Order",
        "beckn:id": s(&started["order_id"]),
        "beckn:state": "ACTIVE",
        "beckn:orderItems": [{"beckn:orderedItem": item_id(started), "beckn:quantity": 1,
            "beckn:orderItemAttributes": {"real-time-metrics": metrics}}],
        "beckn:orderAttributes": {
            "tracking-details": {"beckn:id": s(&started["session_id"]), "beckn:status": "ACTIVE"},
            "fulfillment-details": fulfillment(started, "CHARGING-IN-PROGRESS", s(&live["at"]),
                vec![start_stop(started)]),
            "fulfillment-type": "CHARGING",
        },
    });
    if let Some(soc) = live["soc_pct"].as_f64() {
        order["beckn:orderAttributes"]["fulfillment-details"]["real-time-data"] =
            json!({"battery-level": format!("{soc:.0}%")});
    }
    if live["cost"].is_object() {
        let c = &live["cost"];
        order["beckn:totals"] = json!({
            "@type": "schema:PriceSpecification",
            "schema:priceCurrency": s(&c["currency"]),
            "schema:price": major(i(&c["total_minor"])),
        });
    }
    json!({"context": context("on_track", s(&live["at"])), "message": {"order": order}})
}

/// `session.interrupted` (with its `session.started`) -> unsolicited on_status; `at` is
/// the event's, or, for the site's Will (which carries no time), when the BPP received it.
fn on_status_interrupted(started: &Value, at: &str) -> Value {
    on_status(started, "CONNECTION-INTERRUPTED", at)
}

/// `session.resumed` -> unsolicited on_status: charging again.
fn on_status_resumed(started: &Value, at: &str) -> Value {
    on_status(started, "CHARGING-IN-PROGRESS", at)
}

fn on_status(started: &Value, code: &str, at: &str) -> Value {
    json!({
        "context": context("on_status", at),
        "message": {"order": {
            "@type": "beckn:Order",
            "beckn:id": s(&started["order_id"]),
            "beckn:state": "ACTIVE",
            "beckn:orderAttributes": {
                "fulfillment-details": fulfillment(started, code, at,
                    vec![start_stop(started)]),
                "fulfillment-type": "CHARGING",
            },
        }},
    })
}

/// `session.stopped` (with its `session.started`) -> on_update (stop charging): the quote
/// breakup from `cost`, and from `settlement` the refund or the top-up as a second payment.
fn on_update_final(started: &Value, stopped: &Value) -> Value {
    let cost = &stopped["cost"];
    let currency = s(&cost["currency"]);
    let breakup: Vec<Value> = cost["components"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let mut line = json!({
                "schema:name": s(&c["name"]),
                "beckn:componentType": component_type(s(&c["type"])),
                "schema:price": major(i(&c["amount_minor"])),
                "schema:priceCurrency": currency,
            });
            if c["type"] == "energy" {
                line["beckn:itemId"] = json!(item_id(started));
            }
            line
        })
        .collect();
    let mut order = json!({
        "@type": "beckn:Order",
        "beckn:id": s(&started["order_id"]),
        "beckn:state": "COMPLETED",
        "beckn:orderItems": [{"beckn:orderedItem": item_id(started), "beckn:quantity": 1}],
        "beckn:totals": {
            "@type": "schema:PriceSpecification",
            "schema:priceCurrency": currency,
            "schema:price": major(i(&cost["total_minor"])),
            "beckn:breakup": breakup,
        },
        "beckn:orderAttributes": {
            "fulfillment-details": {
                "beckn:id": s(&stopped["session_id"]),
                "beckn:status": "COMPLETED",
                "state": {"code": "COMPLETED", "updated-at": s(&stopped["at"]), "updated-by": BPP_ID},
                "stops": [start_stop(started),
                    {"type": "END", "time": {"timestamp": s(&stopped["stopped_at"])}}],
                "ev:energyDelivered": {"schema:value": kwh(i(&stopped["energy_wh"])),
                    "schema:unitCode": "KWH"},
                "end-reason": s(&stopped["reason"]),
            },
            "fulfillment-type": "CHARGING",
        },
    });
    let st = &stopped["settlement"];
    if st.is_object() {
        let money = |m: i64| json!({"currency": currency, "value": major(m)});
        let mut payments = vec![json!({
            "beckn:id": "<prepayment_id>",
            "beckn:status": "PAID",
            "beckn:amount": money(i(&st["prepaid_minor"])),
            "payment-type": "PRE-FULFILLMENT",
        })];
        if i(&st["refund_minor"]) > 0 {
            payments.push(json!({
                "beckn:id": format!("refund-{}", s(&started["order_id"])),
                "beckn:method": "REFUND",
                "beckn:status": "NOT_PAID",
                "beckn:amount": money(i(&st["refund_minor"])),
                "payment-type": "POST-FULFILLMENT",
                "beckn:paymentAttributes": {"refund-type": "OVERCHARGE_REFUND"},
            }));
        }
        if i(&st["topup_minor"]) > 0 {
            payments.push(json!({
                "beckn:id": format!("topup-{}", s(&started["order_id"])),
                "beckn:status": "NOT_PAID",
                "beckn:amount": money(i(&st["topup_minor"])),
                "payment-type": "POST-FULFILLMENT",
                "beckn:paymentAttributes": {"topup-type": "OVERAGE_TOPUP"},
            }));
        }
        order["beckn:orderAttributes"]["payment-details"] = Value::Array(payments);
    }
    json!({"context": context("on_update", s(&stopped["at"])), "message": {"order": order}})
}

// ---------------------------------------------------------------------------------------
// Normalizing, comparing, golden files
// ---------------------------------------------------------------------------------------

/// Replaces what changes from run to run by its kind: timestamps, and the site-issued
/// session ids (`ids`: each real id and its placeholder).
fn normalize(v: &mut Value, ids: &[(String, String)]) {
    match v {
        Value::String(x) => {
            if let Some((_, p)) = ids.iter().find(|(id, _)| id == x) {
                *x = p.clone();
            } else if chrono::DateTime::parse_from_rfc3339(x).is_ok() {
                *x = "<timestamp>".into();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| normalize(x, ids)),
        Value::Object(o) => o.values_mut().for_each(|x| normalize(x, ids)),
        _ => {}
    }
}

/// What must not change between two demo runs: every key and constant string; numbers,
/// decimal strings and durations by kind only; a breakup's lines by their keys only
/// (which lines a demo bill has depends on the time of day it runs).
fn shape(v: &Value, in_breakup: bool) -> Value {
    match v {
        Value::Number(_) => json!("<number>"),
        Value::String(x) if in_breakup => json!(format!("<string {}>", x.is_empty())),
        Value::String(x)
            if x.trim_end_matches('%').parse::<f64>().is_ok()
                || (x.starts_with("PT") && x.ends_with('S')) =>
        {
            json!("<measure>")
        }
        Value::Array(a) => {
            let mut items: Vec<Value> = a.iter().map(|x| shape(x, in_breakup)).collect();
            if in_breakup {
                items.dedup();
            }
            Value::Array(items)
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), shape(x, in_breakup || k == "beckn:breakup")))
                .collect::<Map<_, _>>(),
        ),
        other => other.clone(),
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/beckn")
}

fn updating() -> bool {
    std::env::var("BECKN_GOLDEN_UPDATE").as_deref() == Ok("1")
}

/// The secrets of both runs, none of which may reach a golden file.
const SECRETS: [&str; 4] = ["482913", "551207", "730468", OTP];

/// Compares `actual` with the golden file `name` (exactly, or by [`shape`] when `exact`
/// is false), or rewrites the file under `BECKN_GOLDEN_UPDATE=1`.
fn golden(name: &str, actual: &Value, exact: bool) {
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    for secret in SECRETS {
        assert!(!text.contains(secret), "{name} carries a secret");
    }
    let path = golden_dir().join(name);
    if updating() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (BECKN_GOLDEN_UPDATE=1 writes it)", path.display())
        }))
        .unwrap();
    if exact {
        assert_eq!(
            &stored, actual,
            "{name} drifted (BECKN_GOLDEN_UPDATE=1 rewrites it):\n{text}"
        );
    } else {
        assert_eq!(
            shape(&stored, false),
            shape(actual, false),
            "{name} changed shape (BECKN_GOLDEN_UPDATE=1 rewrites it):\n{text}"
        );
    }
}

/// The arithmetic a BPP relies on: the breakup sums to the total, and the settlement's
/// refund or top-up closes the gap to the prepayment, all in the decimal strings sent.
fn assert_final_adds_up(msg: &Value) {
    let cents = |v: &Value| -> i64 {
        let (a, b) = s(v).split_once('.').expect("a decimal string");
        a.parse::<i64>().unwrap() * 100 + b.parse::<i64>().unwrap()
    };
    let totals = &msg["message"]["order"]["beckn:totals"];
    let sum: i64 = totals["beckn:breakup"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| cents(&l["schema:price"]))
        .sum();
    assert_eq!(
        sum,
        cents(&totals["schema:price"]),
        "breakup must sum to the total"
    );
    let payments = msg["message"]["order"]["beckn:orderAttributes"]["payment-details"]
        .as_array()
        .expect("a prepaid order has payments");
    let amount = |kind: &str| -> i64 {
        payments
            .iter()
            .filter(|p| s(&p["beckn:id"]).starts_with(kind))
            .map(|p| cents(&p["beckn:amount"]["value"]))
            .sum()
    };
    assert_eq!(
        amount("<prepayment") - amount("refund-") + amount("topup-"),
        cents(&totals["schema:price"]),
        "prepaid - refund + top-up must be the total"
    );
}

fn started_of<'a>(events: &'a [Value], session: &Value) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == "session.started" && &e["session_id"] == session)
        .expect("its session.started")
}

fn session_ids(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "session.started")
        .map(|e| {
            let order = s(&e["order_id"]);
            (
                s(&e["session_id"]).to_string(),
                format!("<session_id of {order}>"),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Run 1: the demo
// ---------------------------------------------------------------------------------------

#[test]
fn the_demos_events_map_to_the_documented_beckn_messages() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("demo.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chargesite"))
        .arg("demo")
        .env("CHARGESITE_DEMO_RECORD", &record)
        .output()
        .expect("run chargesite demo");
    assert!(
        out.status.success(),
        "the demo failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rec: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let events = rec["events"].as_array().unwrap().clone();
    let ids = session_ids(&events);
    let seqs: Vec<i64> = events.iter().map(|e| i(&e["seq"])).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "events in seq order");

    // order-A: started, tracked, billed with a refund of its prepayment
    let started = events
        .iter()
        .find(|e| e["type"] == "session.started" && e["order_id"] == "order-A")
        .expect("order-A started");
    let session = &started["session_id"];
    let mut start = on_update_start(started);
    normalize(&mut start, &ids);
    golden("on_update_start.json", &start, true);

    let live = &rec["live"][s(session)];
    assert!(
        live.is_object(),
        "a live snapshot of order-A's session: {}",
        rec["live"]
    );
    let mut track = on_track(started, live);
    normalize(&mut track, &ids);
    golden("on_track.json", &track, false);

    let stopped = events
        .iter()
        .find(|e| e["type"] == "session.stopped" && &e["session_id"] == session)
        .expect("order-A stopped");
    assert!(
        i(&stopped["settlement"]["refund_minor"]) > 0,
        "order-A is refunded"
    );
    let mut bill = on_update_final(started_of(&events, session), stopped);
    assert_final_adds_up(&bill);
    normalize(&mut bill, &ids);
    golden("on_update_final_refund.json", &bill, false);

    // the uplink cut: the broker published the site's Will; the BPP marks each session
    // it believes running as interrupted
    let states = rec["states"].as_array().unwrap();
    assert!(
        states.iter().any(|st| st == &json!({"online": false})),
        "the demo's uplink cut fires the site's Will: {states:?}"
    );
    let mut offline = on_status_interrupted(started, "<received_at>");
    normalize(&mut offline, &ids);
    golden("on_status_site_offline.json", &offline, true);
}

// ---------------------------------------------------------------------------------------
// Run 2: one charger that drops mid-session, with a bill of every billed component
// ---------------------------------------------------------------------------------------

const ROOT: &str = "chargesite/v1/site-001";
const OTP: &str = "246813";

/// Sends a CALL and waits for its answer, accepting any CALL the agent makes meanwhile
/// (its RemoteStopTransaction when the budget is reached).
async fn call_answering(cp: &mut Charger, id: &str, action: &str, payload: Value) -> Value {
    cp.send_text(&json!([2, id, action, payload]).to_string())
        .await;
    loop {
        let frame = cp.recv().await;
        if frame[0] == 2 {
            cp.send_text(&json!([3, frame[1], {"status": "Accepted"}]).to_string())
                .await;
        } else if frame[1] == id {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_session_and_a_topped_up_bill_map_to_the_documented_beckn_messages() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = Agent::start("allow_unknown_chargers = true", &broker.uplink_toml(""));
    assert!(
        eventually(30, || bpp
            .topic("state")
            .is_some_and(|s| s["online"] == true))
        .await
    );

    // A tariff with every component a session bills: a surcharge window around the whole
    // session (by the charger's clock, which this test sets), idle time, service fee, tax.
    let hhmm = |mins: i64| ts(mins)[11..16].to_string();
    let tariff = json!({"currency": "INR", "energy_minor_per_kwh": 1800, "service_fee_minor": 1000,
        "timezone": "UTC",
        "surcharges": [{"name": "Congestion fee", "from": hhmm(-60), "to": hhmm(120), "minor_per_kwh": 100}],
        "idle": {"grace_minutes": 10, "minor_per_minute": 200},
        "tax": {"name": "GST", "rate_bp": 1800}});
    let valid_until = (chargesite::time::now() + chrono::Duration::hours(4)).to_rfc3339();
    bpp.command(
        json!({"id": "upsert-T", "type": "authorization.upsert", "order_id": "order-T",
        "otp": OTP, "valid_until": valid_until, "cp_id": "BECKN01",
        "budget": {"currency": "INR", "amount_minor": 13_000}, "tariff": tariff}),
    )
    .await;
    let upserted = bpp.wait_result("upsert-T", 10).await;
    assert_eq!(upserted["ok"], true, "{upserted}");

    let mut cp = Charger::connect(&agent.url("BECKN01")).await;
    cp.boot().await;
    let tx = cp.start(1, OTP, 1000, &ts(0)).await;
    cp.meter(1, tx, &ts(10), 3000).await;
    // the charger's socket drops mid-session; it comes back and delivers what it queued:
    // more energy than the budget, and an idle tail before the driver unplugs
    drop(cp);
    assert!(eventually(10, || !agent.events_of("session.interrupted").is_empty()).await);
    let mut cp = Charger::connect(&agent.url("BECKN01")).await;
    cp.boot().await;
    let meter = json!({"connectorId": 1, "transactionId": tx, "meterValue": [
        {"timestamp": ts(30), "sampledValue": [
            {"value": "7000", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]});
    call_answering(&mut cp, "q1", "MeterValues", meter).await;
    let stop = json!({"transactionId": tx, "meterStop": 7000, "timestamp": ts(50),
        "reason": "EVDisconnected"});
    call_answering(&mut cp, "q2", "StopTransaction", stop).await;

    let last = agent.events().last().map_or(0, |e| e.0);
    assert!(
        bpp.wait_complete(last, 30).await,
        "every event reached the BPP"
    );
    let events: Vec<Value> = (1..=last)
        .map(|seq| bpp.seen.lock().unwrap().by_seq[&seq].clone())
        .collect();
    let ids = session_ids(&events);

    let interrupted = events
        .iter()
        .find(|e| e["type"] == "session.interrupted")
        .unwrap();
    assert_eq!(interrupted["link"], "charger");
    let started = started_of(&events, &interrupted["session_id"]);
    let mut status = on_status_interrupted(started, s(&interrupted["at"]));
    normalize(&mut status, &ids);
    golden("on_status_interrupted.json", &status, true);

    let resumed = events
        .iter()
        .find(|e| e["type"] == "session.resumed")
        .expect("the charger came back to its session");
    let mut status = on_status_resumed(started, s(&resumed["at"]));
    normalize(&mut status, &ids);
    golden("on_status_resumed.json", &status, true);

    let stopped = events
        .iter()
        .find(|e| e["type"] == "session.stopped")
        .unwrap();
    let kinds: Vec<&str> = stopped["cost"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| s(&c["type"]))
        .collect();
    assert_eq!(kinds, ["energy", "surcharge", "idle", "service", "tax"]);
    assert!(
        i(&stopped["settlement"]["topup_minor"]) > 0,
        "a top-up: {stopped}"
    );
    let mut bill = on_update_final(started, stopped);
    assert_final_adds_up(&bill);
    normalize(&mut bill, &ids);
    golden("on_update_final_topup.json", &bill, true);
}
