//! Store-and-forward to the BPP over a real MQTT broker (embedded rumqttd, or mosquitto
//! in CI): ordering, broker restarts, agent crashes, a link down for a whole session,
//! the Will, and every command path.

mod common;

use std::time::Duration;

use common::mqtt::{Bpp, Broker};
use common::{eventually, ts, Agent, Charger};
use serde_json::json;

const ROOT: &str = "chargesite/v1/site-001";
const OPEN: &str = "allow_unknown_chargers = true";

#[test]
fn broker_process() {
    common::mqtt::broker_process();
}

fn agent(broker: &Broker, extra: &str) -> Agent {
    Agent::start(
        OPEN,
        &format!("[auth]\nfree_vend = true\n{}", broker.uplink_toml(extra)),
    )
}

/// A broker, a BPP subscribed to it, and an agent the BPP has seen come online.
async fn online_site() -> (Broker, Bpp, Agent) {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = agent(&broker, "");
    assert!(
        eventually(30, || bpp
            .topic("state")
            .is_some_and(|s| s["online"] == true))
        .await
    );
    (broker, bpp, agent)
}

fn last_seq(agent: &Agent) -> i64 {
    agent.events().last().map_or(0, |e| e.0)
}

/// Seqs in first-arrival order must increase (duplicates aside).
fn first_arrivals_in_order(bpp: &Bpp) {
    let seen = bpp.seen.lock().unwrap();
    let mut first = std::collections::HashSet::new();
    let mut prev = 0;
    for e in &seen.arrivals {
        let seq = e["seq"].as_i64().unwrap();
        if first.insert(seq) {
            assert!(seq > prev, "seq {seq} arrived after {prev}");
            prev = seq;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_state_and_connectors_reach_the_bpp_in_order() {
    let (_broker, bpp, agent) = online_site().await;
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    cp.boot().await;
    cp.ok(
        "StatusNotification",
        json!({"connectorId": 1, "errorCode": "NoError", "status": "Charging"}),
    )
    .await;
    let tx = cp.start(1, "TAG", 0, &ts(0)).await;
    for i in 1..=30 {
        cp.meter(1, tx, &ts(i), i * 100).await;
    }
    cp.stop(tx, 3100, &ts(31)).await;
    let n = last_seq(&agent);
    assert!(
        bpp.wait_complete(n, 60).await,
        "have {} of {n}",
        bpp.max_contiguous()
    );
    first_arrivals_in_order(&bpp);
    let stopped = bpp.events_of("session.stopped");
    assert_eq!(stopped[0]["energy_wh"], 3100);
    assert_eq!(bpp.events_of("session.started")[0]["uplink_online"], true);
    for size in &bpp.seen.lock().unwrap().batch_sizes {
        assert!(*size <= 65536);
    }
    assert!(
        eventually(30, || bpp
            .topic("state")
            .is_some_and(|s| s["online"] == true && s["last_seq"] == n))
        .await
    );
    let conn = bpp.topic("connectors/CP001/1").expect("retained connector");
    assert_eq!(conn["status"], "Charging");
    assert_eq!(conn["charger_online"], true);
    // PUBACKed events are marked sent
    assert!(
        eventually(20, || {
            agent
                .db()
                .query_row(
                    "SELECT count(*) FROM events WHERE sent_at IS NULL",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
                == 0
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_payload_limit_splits_batches_and_none_exceeds_it() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = agent(&broker, "max_payload_bytes = 4096");
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 0, &ts(0)).await;
    for i in 1..=100 {
        cp.meter(1, tx, &ts(i), i * 10).await;
    }
    let n = last_seq(&agent);
    assert!(bpp.wait_complete(n, 60).await);
    let sizes = bpp.seen.lock().unwrap().batch_sizes.clone();
    assert!(sizes.iter().all(|s| *s <= 4096), "{sizes:?}");
    assert!(sizes.len() > 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing_and_chargers_are_answered_throughout() {
    let mut broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = agent(&broker, "");
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 0, &ts(0)).await;
    for i in 1..=200 {
        cp.meter(1, tx, &ts(i), i * 10).await;
        if i == 60 {
            broker.kill();
        }
        if i == 140 {
            broker.restart();
        }
    }
    cp.stop(tx, 2010, &ts(201)).await;
    let n = last_seq(&agent);
    assert!(
        bpp.wait_complete(n, 60).await,
        "have {} of {n}",
        bpp.max_contiguous()
    );
    assert_eq!(bpp.events_of("session.stopped")[0]["energy_wh"], 2010);
    let log = agent.log();
    assert!(log.contains("uplink down"), "the link loss was noticed");
    assert!(
        log.matches("uplink connected").count() >= 2,
        "and the agent reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_down_for_a_whole_session_is_delivered_when_it_returns() {
    let mut broker = Broker::start();
    let agent = agent(&broker, "");
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.kill();
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 0, &ts(0)).await;
    for i in 1..=20 {
        cp.meter(1, tx, &ts(i), i * 10).await;
    }
    cp.stop(tx, 300, &ts(30)).await;
    let started = &agent.events_of("session.started")[0];
    assert_eq!(
        started["uplink_online"], false,
        "the start happened offline"
    );
    let n = last_seq(&agent);
    let backlog: i64 = agent
        .db()
        .query_row(
            "SELECT count(*) FROM events WHERE sent_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(backlog >= 23, "{backlog}");
    broker.restart();
    let bpp = Bpp::connect(&broker, ROOT).await;
    assert!(
        bpp.wait_complete(n, 60).await,
        "have {} of {n}",
        bpp.max_contiguous()
    );
    first_arrivals_in_order(&bpp);
    assert_eq!(bpp.events_of("session.stopped")[0]["energy_wh"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_while_publishing_resumes_from_the_oldest_unsent_seq() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let mut agent = agent(&broker, "");
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 0, &ts(0)).await;
    for i in 1..=300 {
        cp.meter(1, tx, &ts(i), i * 10).await;
    }
    agent.sigkill();
    // the Will: the broker says we are gone
    assert!(
        eventually(30, || bpp
            .topic("state")
            .is_some_and(|s| s["online"] == false))
        .await
    );
    let agent = agent.restart();
    let n = last_seq(&agent);
    assert!(
        bpp.wait_complete(n, 60).await,
        "have {} of {n}",
        bpp.max_contiguous()
    );
    let dupes = {
        let seen = bpp.seen.lock().unwrap();
        seen.arrivals.len() - seen.by_seq.len()
    };
    // duplicates only within what was in flight: at most a window of batches
    assert!(dupes <= 8 * 600, "{dupes} duplicates");
    assert!(
        eventually(30, || bpp
            .topic("state")
            .is_some_and(|s| s["online"] == true))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_the_retained_state_offline() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let mut agent = agent(&broker, "");
    assert!(
        eventually(30, || bpp
            .topic("state")
            .is_some_and(|s| s["online"] == true))
        .await
    );
    assert_eq!(agent.terminate(), Some(0));
    assert!(
        eventually(30, || bpp
            .topic("state")
            .is_some_and(|s| s["online"] == false))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_once_per_id_and_bad_ones_get_bad_request() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = agent(&broker, "");
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 0, &ts(0)).await;
    let session_id = agent.events_of("session.started")[0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(eventually(30, || bpp.topic("state").is_some()).await);

    // session.stop reaches the charger as RemoteStopTransaction
    bpp.command(json!({"id": "c-1", "type": "session.stop", "session_id": session_id}))
        .await;
    let call = cp.recv().await;
    assert_eq!(call[2], "RemoteStopTransaction");
    assert_eq!(call[3]["transactionId"], tx);
    cp.send_text(&json!([3, call[1], {"status": "Accepted"}]).to_string())
        .await;
    let r = bpp.wait_result("c-1", 30).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["session_id"], json!(session_id));

    // the same id again: the first result again, and the charger is not asked twice
    bpp.command(json!({"id": "c-1", "type": "session.stop", "order_id": "whatever"}))
        .await;
    assert!(eventually(30, || bpp.results_for("c-1").len() >= 2).await);
    assert_eq!(bpp.results_for("c-1")[1], r);
    assert!(cp.try_recv(Duration::from_millis(500)).await.is_none());

    // malformed JSON: id null
    bpp.raw_command("{not json").await;
    assert!(
        eventually(30, || bpp
            .seen
            .lock()
            .unwrap()
            .results
            .iter()
            .any(|r| r["id"].is_null()))
        .await
    );
    let null = bpp
        .seen
        .lock()
        .unwrap()
        .results
        .iter()
        .find(|r| r["id"].is_null())
        .cloned()
        .unwrap();
    assert_eq!(null["ok"], false);
    assert_eq!(null["error"]["code"], "bad_request");

    // malformed fields: bad_request with the id
    bpp.command(json!({"id": "c-2", "type": "events.replay", "from_seq": "one"}))
        .await;
    assert_eq!(
        bpp.wait_result("c-2", 30).await["error"]["code"],
        "bad_request"
    );
    bpp.command(json!({"id": "c-3", "type": "teleport"})).await;
    assert_eq!(
        bpp.wait_result("c-3", 30).await["error"]["code"],
        "bad_request"
    );

    // an unknown session, and a charger that is gone
    bpp.command(json!({"id": "c-4", "type": "session.stop", "session_id": "nope"}))
        .await;
    assert_eq!(
        bpp.wait_result("c-4", 30).await["error"]["code"],
        "not_found"
    );
    let tx2 = cp.start(2, "TAG", 0, &ts(5)).await;
    let sid2 = agent.events_of("session.started")[1]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    drop(cp);
    assert!(eventually(20, || agent.events_of("charger.disconnected").len() == 1).await);
    bpp.command(json!({"id": "c-5", "type": "session.stop", "session_id": sid2}))
        .await;
    assert_eq!(
        bpp.wait_result("c-5", 30).await["error"]["code"],
        "charger_offline"
    );
    let _ = tx2;

    // commands are stored, results too
    let stored: i64 = agent
        .db()
        .query_row(
            "SELECT count(*) FROM commands WHERE state = 'done'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stored >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_resends_with_the_same_seqs_and_ack_releases_events() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = agent(&broker, "");
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 0, &ts(0)).await;
    for i in 1..=10 {
        cp.meter(1, tx, &ts(i), i * 10).await;
    }
    let n = last_seq(&agent);
    assert!(bpp.wait_complete(n, 60).await);
    let before = bpp.seen.lock().unwrap().arrivals.len();
    bpp.command(json!({"id": "r-1", "type": "events.replay", "from_seq": 3}))
        .await;
    let r = bpp.wait_result("r-1", 30).await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        eventually(30, || bpp.seen.lock().unwrap().arrivals.len()
            >= before + (n as usize - 2))
        .await
    );
    let replayed: Vec<i64> = bpp.seen.lock().unwrap().arrivals[before..]
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(replayed, (3..=n).collect::<Vec<_>>());

    bpp.ack(5).await;
    assert!(
        eventually(30, || {
            agent
                .db()
                .query_row("SELECT count(*) FROM events WHERE acked = 1", [], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap()
                == 5
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_snapshots_are_published_while_online() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = agent(&broker, "live_interval_secs = 1");
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 1000, &ts(0)).await;
    assert!(eventually(30, || bpp.topic("state").is_some()).await);
    cp.meter(1, tx, &ts(1), 1500).await;
    let sid = agent.events_of("session.started")[0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(eventually(30, || bpp.topic(&format!("live/{sid}")).is_some()).await);
    let live = bpp.topic(&format!("live/{sid}")).unwrap();
    assert_eq!(live["energy_wh"], 500);
    assert_eq!(live["power_w"], 7200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_unknown_order_is_not_found() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let _agent = agent(&broker, "");
    assert!(eventually(30, || bpp.topic("state").is_some()).await);
    bpp.command(json!({"id": "a-1", "type": "authorization.revoke", "order_id": "o-1"}))
        .await;
    let r = bpp.wait_result("a-1", 30).await;
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"]["code"], "not_found");
}

/// How many times the agent has connected to the broker so far.
fn connects(agent: &Agent) -> usize {
    agent.log().matches("uplink connected").count()
}

/// A command of `bytes` bytes (padded), cheap and valid but for its size.
fn padded_command(id: &str, bytes: usize) -> Vec<u8> {
    let head = json!({"id": id, "type": "authorization.revoke", "order_id": "o-big"}).to_string();
    let pad = bytes.saturating_sub(head.len() + 10);
    let mut s = head[..head.len() - 1].to_string();
    s.push_str(",\"pad\":\"");
    s.push_str(&"x".repeat(pad));
    s.push_str("\"}");
    s.into_bytes()
}

/// The retained message on `<root>/cmd`, if any, as a fresh subscriber sees it.
async fn retained_command(broker: &Broker) -> Option<usize> {
    use rumqttc::{AsyncClient, Event, Incoming, QoS};
    let o = common::mqtt::client_options(broker, "retained-probe");
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    client
        .subscribe(format!("{ROOT}/cmd"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Ok(ev)) = tokio::time::timeout_at(until, eventloop.poll()).await {
        if let Event::Incoming(Incoming::Publish(p)) = ev {
            if p.retain && !p.payload.is_empty() {
                return Some(p.payload.len());
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_retained_commands_are_answered_too_large_without_a_reconnect_loop() {
    let (broker, bpp, agent) = online_site().await;
    for (i, bytes) in [100_000usize, 1_000_000, 8_000_000].into_iter().enumerate() {
        let before = connects(&agent);
        let id = format!("big-{bytes}");
        let nulls_before = bpp
            .seen
            .lock()
            .unwrap()
            .results
            .iter()
            .filter(|r| r["id"].is_null())
            .count();
        bpp.retained_command(padded_command(&id, bytes)).await;
        // Answered too_large: by id when the agent could read it, else with a null id
        // (above the link's read limit the agent sees only the size).
        assert!(
            eventually(30, || {
                let seen = bpp.seen.lock().unwrap();
                let by_id = seen.results.iter().any(|r| r["id"] == json!(id));
                let by_null =
                    seen.results.iter().filter(|r| r["id"].is_null()).count() > nulls_before;
                by_id || by_null
            })
            .await,
            "no result for the {bytes}-byte command"
        );
        let r = bpp.results_for(&id).first().cloned().unwrap_or_else(|| {
            bpp.seen
                .lock()
                .unwrap()
                .results
                .iter()
                .rev()
                .find(|r| r["id"].is_null())
                .cloned()
                .unwrap()
        });
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"]["code"], "too_large", "{r}");
        // A valid command right after is answered promptly.
        let ok_id = format!("after-{i}");
        bpp.command(json!({"id": ok_id, "type": "authorization.revoke", "order_id": "o-1"}))
            .await;
        let r = bpp.wait_result(&ok_id, 10).await;
        assert_eq!(r["error"]["code"], "not_found", "{r}");
        // At most one reconnect for it, and no loop: none more a while later.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = connects(&agent);
        eprintln!("{bytes} bytes: {} reconnects", after - before);
        assert!(
            after <= before + 1,
            "{bytes} bytes: {} reconnects",
            after - before
        );
        if i == 0 {
            // (the probe sees a retained command when there is one)
            assert!(retained_command(&broker).await.is_some());
        }
        if after > before {
            // The reconnect was for a message too large to read: the retained one is gone.
            assert!(retained_command(&broker).await.is_none(), "still retained");
        }
    }
    // Nothing is stored whole: the largest stored command body is small.
    let longest: i64 = agent
        .db()
        .query_row("SELECT max(length(body)) FROM commands", [], |r| r.get(0))
        .unwrap();
    assert!(
        longest < 4096,
        "a command body of {longest} bytes was stored"
    );
    let stored: i64 = agent
        .db()
        .query_row(
            "SELECT count(*) FROM commands WHERE result LIKE '%too_large%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stored >= 3, "{stored} too_large commands stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_commands_gets_a_thousand_results() {
    let (_broker, bpp, agent) = online_site().await;
    let started = std::time::Instant::now();
    for i in 0..1000 {
        bpp.command(
            json!({"id": format!("b-{i}"), "type": "authorization.revoke",
            "order_id": format!("o-{i}")}),
        )
        .await;
    }
    let all = || {
        let seen = bpp.seen.lock().unwrap();
        let ids: std::collections::HashSet<&str> = seen
            .results
            .iter()
            .filter_map(|r| r["id"].as_str())
            .filter(|id| id.starts_with("b-"))
            .collect();
        ids.len()
    };
    let done = eventually(60, || all() == 1000).await;
    let took = started.elapsed();
    let stored: i64 = agent
        .db()
        .query_row("SELECT count(*) FROM commands", [], |r| r.get(0))
        .unwrap();
    assert!(done, "{} of 1000 results ({stored} commands stored)", all());
    eprintln!("1000 command results in {took:?}");
    assert_eq!(connects(&agent), 1, "the burst cost a reconnect");
}
