//! Durability against a crash: the real binary SIGKILLed while chargers stream
//! MeterValues. Every value a charger got a CALLRESULT for must be in the store after a
//! restart, and the outbox seqs must run without a gap. And a crash is visible upstream:
//! at restart the agent closes what the crash left open (`charger.disconnected` reason
//! `agent_restart`, `session.interrupted` link `agent`), so every connect has its
//! disconnect and every interruption its resume.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{ts, Agent, Charger};
use serde_json::{json, Value};

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

const OPEN: &str = "allow_unknown_chargers = true";
const FREE: &str = "[auth]\nfree_vend = true\n";

/// The session id `session.started` gave transaction `tx`.
fn session_of(agent: &Agent, tx: i64) -> Value {
    agent
        .events_of("session.started")
        .into_iter()
        .find(|s| s["transaction_id"] == json!(tx))
        .map(|s| s["session_id"].clone())
        .expect("session.started for the transaction")
}

fn parse(t: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(t.as_str().expect("a string"))
        .expect("RFC 3339")
        .with_timezone(&chrono::Utc)
}

fn count(agent: &Agent, kind: &str) -> usize {
    agent.events_of(kind).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charger_left_connected_by_sigkill_is_closed_at_restart_and_its_session_resumes_as_agent()
{
    let mut agent = Agent::start(OPEN, FREE);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    cp.boot().await;
    let tx = cp.start(1, "TAG", 1000, &ts(0)).await;
    let before_reading = chargesite::time::now();
    cp.meter(1, tx, &ts(10), 1500).await;
    let session = session_of(&agent, tx);
    agent.sigkill();
    let killed = chargesite::time::now();
    drop(cp);

    let agent = agent.restart();
    let gone = agent.events_of("charger.disconnected");
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["cp_id"], "CP001");
    assert_eq!(gone[0]["reason"], "agent_restart");
    // the last trace of it is the reading it got a CALLRESULT for, in the contract's form
    let last_seen = &gone[0]["last_seen"];
    assert_eq!(last_seen.as_str().map(str::len), Some(24), "{last_seen}");
    let last_seen = parse(last_seen);
    assert!(
        last_seen >= before_reading - chrono::Duration::milliseconds(1) && last_seen <= killed,
        "last_seen {last_seen} outside [{before_reading}, {killed}]"
    );
    let interrupted = agent.events_of("session.interrupted");
    assert_eq!(interrupted.len(), 1, "{interrupted:?}");
    assert_eq!(interrupted[0]["session_id"], session);
    assert_eq!(interrupted[0]["link"], "agent");
    let online: i64 = agent
        .db()
        .query_row(
            "SELECT online FROM chargers WHERE cp_id = 'CP001'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(online, 0);

    // it comes back without a new boot and carries on with the same transaction
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    cp.meter(1, tx, &ts(20), 2500).await;
    let resumed = agent.events_of("session.resumed");
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0]["session_id"], session);
    assert_eq!(resumed[0]["link"], "agent");
    cp.stop(tx, 3000, &ts(30)).await;
    let stopped = agent.events_of("session.stopped");
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0]["session_id"], session);
    assert_eq!(stopped[0]["energy_wh"], 2000);
    assert_eq!(count(&agent, "charger.booted"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_repeated_sigkills_every_connect_has_its_disconnect_and_every_interruption_its_resume(
) {
    const CYCLES: usize = 3;
    const STATIONS: usize = 3;
    let mut agent = Agent::start(OPEN, FREE);
    let mut tx = None;
    for cycle in 0..CYCLES {
        let mut chargers = Vec::new();
        for c in 0..STATIONS {
            let mut cp = Charger::connect(&agent.url(&format!("CP{c:03}"))).await;
            // answered only after the connect is committed
            cp.ok("Heartbeat", json!({})).await;
            chargers.push(cp);
        }
        let cp0 = &mut chargers[0];
        let t = match tx {
            None => *tx.insert(cp0.start(1, "TAG", 0, &ts(0)).await),
            Some(t) => t,
        };
        let wh = (cycle as i64 + 1) * 100;
        cp0.meter(1, t, &ts(cycle as i64 + 1), wh).await;
        agent.sigkill();
        drop(chargers);
        agent = agent.restart();
        assert_eq!(
            count(&agent, "charger.connected"),
            count(&agent, "charger.disconnected"),
            "after crash {}",
            cycle + 1
        );
        assert_eq!(
            count(&agent, "session.interrupted"),
            count(&agent, "session.resumed") + 1,
            "after crash {}: the running session is interrupted once more",
            cycle + 1
        );
    }
    let closed = agent.events_of("charger.disconnected");
    assert!(closed.iter().all(|d| d["reason"] == "agent_restart"));
    assert!(closed.iter().all(|d| d.get("last_seen").is_some()));
    assert!(agent
        .events_of("session.interrupted")
        .iter()
        .all(|i| i["link"] == "agent"));

    let mut cp = Charger::connect(&agent.url("CP000")).await;
    cp.ok("Heartbeat", json!({})).await;
    assert_eq!(
        count(&agent, "charger.connected"),
        count(&agent, "charger.disconnected") + 1,
        "one charger is connected now"
    );
    assert_eq!(
        count(&agent, "session.interrupted"),
        count(&agent, "session.resumed")
    );
    let t = tx.expect("a session was started");
    cp.stop(t, 400, &ts(10)).await;
    assert_eq!(agent.events_of("session.stopped")[0]["energy_wh"], 400);
    let seqs: Vec<i64> = agent.events().iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "seq gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_graceful_stop_writes_nothing_and_the_session_resumes_as_agent() {
    let mut agent = Agent::start(OPEN, FREE);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 0, &ts(0)).await;
    cp.meter(1, tx, &ts(10), 500).await;
    assert_eq!(agent.terminate(), Some(0));
    drop(cp);
    let gone = agent.events_of("charger.disconnected");
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0]["reason"], "shutdown");
    assert!(gone[0].get("last_seen").is_none());
    let interrupted = agent.events_of("session.interrupted");
    assert_eq!(interrupted.len(), 1);
    assert_eq!(interrupted[0]["link"], "agent", "the agent went away");
    let before = agent.events().len();

    let agent = agent.restart();
    assert_eq!(
        agent.events().len(),
        before,
        "nothing was left open to close"
    );
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    cp.meter(1, tx, &ts(20), 1000).await;
    let resumed = agent.events_of("session.resumed");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["link"], "agent");
    cp.stop(tx, 1500, &ts(30)).await;
    assert_eq!(agent.events_of("session.stopped")[0]["energy_wh"], 1500);
}
