//! Durability against a crash: the real binary SIGKILLed while chargers stream
//! MeterValues. Every value a charger got a CALLRESULT for must be in the store after a
//! restart, and the outbox seqs must run without a gap.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{ts, Agent, Charger};
use serde_json::json;

const CHARGERS: usize = 16;
const PER_CHARGER: i64 = 400;
const KILL_AFTER: usize = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_meter_value_survives_sigkill_and_seqs_have_no_gap() {
    let mut agent = Agent::start(
        "allow_unknown_chargers = true",
        "[auth]\nfree_vend = true\n",
    );
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CHARGERS {
        let url = agent.url(&format!("CP{c:03}"));
        let acked = acked.clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            let cp_id = format!("CP{c:03}");
            let mut cp = Charger::connect(&url).await;
            let tx = cp.start(1, "TAG", 0, &ts(0)).await;
            for i in 1..=PER_CHARGER {
                // a value unique to this charger and message identifies it in the store
                let wh = i * 10;
                let id = format!("mv{i}");
                let frame = json!([2, id, "MeterValues", {"connectorId": 1, "transactionId": tx,
                    "meterValue": [{"timestamp": ts(i), "sampledValue": [{"value": wh.to_string()}]}]}]);
                cp.send_text(&frame.to_string()).await;
                match cp.try_recv(std::time::Duration::from_secs(5)).await {
                    Some(a) if a[0] == 3 && a[1] == json!(id) => {
                        acked.lock().unwrap().push((cp_id.clone(), wh));
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => return, // the agent died
                }
            }
        }));
    }
    assert!(
        common::eventually(60, || count.load(Ordering::SeqCst) >= KILL_AFTER).await,
        "only {} acknowledged",
        count.load(Ordering::SeqCst)
    );
    agent.sigkill();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= KILL_AFTER);
    assert!(
        acked.len() < CHARGERS * PER_CHARGER as usize,
        "the kill must land mid-stream"
    );

    let agent = agent.restart();
    let stored: HashSet<(String, i64)> = agent
        .db()
        .prepare("SELECT cp_id, energy_wh FROM meter_values WHERE source = 'MeterValues'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let lost: Vec<_> = acked.iter().filter(|a| !stored.contains(a)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged values lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );

    let events = agent.events();
    let seqs: Vec<i64> = events.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "seq gap");
    // each MeterValues and its outbox event were committed together
    let meter_events = events.iter().filter(|e| e.1 == "session.meter").count();
    assert_eq!(meter_events, stored.len());

    // the agent carries on after the restart and seqs continue from where they were
    let mut cp = Charger::connect(&agent.url("CP000")).await;
    cp.ok("Heartbeat", json!({})).await;
    let tx = agent
        .db()
        .query_row(
            "SELECT transaction_id FROM sessions WHERE cp_id = 'CP000'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
    cp.stop(tx, PER_CHARGER * 10, &ts(PER_CHARGER + 1)).await;
    let after = agent.events();
    let seqs: Vec<i64> = after.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    assert!(seqs.len() > events.len());
}
