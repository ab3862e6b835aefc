//! The OCPP 1.6 central system end to end: the real binary, a real SQLite file, real
//! WebSockets over loopback.

mod common;

use std::time::Duration;

use common::{eventually, ts, Agent, Charger, Connect};
use serde_json::{json, Value};

const FREE: &str = "[auth]\nfree_vend = true\n";
const OPEN: &str = "allow_unknown_chargers = true";

fn seqs_are_contiguous(agent: &Agent) {
    let seqs: Vec<i64> = agent.events().iter().map(|e| e.0).collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "outbox seqs must run 1..N without a gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_1_6_flow_is_answered_and_recorded() {
    let agent = Agent::start(OPEN, FREE);
    let mut cp = Charger::connect(&agent.url("CP001")).await;

    let boot = cp.boot().await;
    assert_eq!(boot["status"], "Accepted");
    assert_eq!(boot["interval"], 300);
    let now = boot["currentTime"].as_str().unwrap();
    assert!(
        now.ends_with('Z') && now.len() == 24,
        "UTC with millis: {now}"
    );

    let hb = cp.ok("Heartbeat", json!({})).await;
    assert!(hb["currentTime"].as_str().unwrap().ends_with('Z'));

    let st = cp
        .ok(
            "StatusNotification",
            json!({"connectorId": 1, "errorCode": "NoError", "status": "Preparing", "timestamp": ts(0)}),
        )
        .await;
    assert_eq!(st, json!({}));

    let auth = cp.ok("Authorize", json!({"idTag": "RFID-1"})).await;
    assert_eq!(auth["idTagInfo"]["status"], "Accepted");

    let tx = cp.start(1, "RFID-1", 10_000, &ts(1)).await;
    assert!(tx >= 1, "transaction ids start at 1, never 0 or -1");
    cp.meter(1, tx, &ts(11), 11_500).await;
    cp.meter(1, tx, &ts(21), 13_000).await;
    let stop = cp
        .ok(
            "StopTransaction",
            json!({"transactionId": tx, "meterStop": 14_200, "timestamp": ts(30), "reason": "EVDisconnected",
                   "idTag": "RFID-1",
                   "transactionData": [{"timestamp": ts(25), "sampledValue": [{"value": "13.6", "unit": "kWh"}]}]}),
        )
        .await;
    assert_eq!(stop["idTagInfo"]["status"], "Accepted");

    let dt = cp
        .ok(
            "DataTransfer",
            json!({"vendorId": "com.example", "messageId": "x", "data": "y"}),
        )
        .await;
    assert_eq!(dt["status"], "UnknownVendorId");
    assert_eq!(
        cp.ok("FirmwareStatusNotification", json!({"status": "Idle"}))
            .await,
        json!({})
    );
    assert_eq!(
        cp.ok("DiagnosticsStatusNotification", json!({"status": "Idle"}))
            .await,
        json!({})
    );

    let kinds: Vec<String> = agent.events().into_iter().map(|e| e.1).collect();
    for k in [
        "charger.connected",
        "charger.booted",
        "connector.status",
        "auth.checked",
        "session.started",
        "session.meter",
        "session.stopped",
    ] {
        assert!(kinds.iter().any(|x| x == k), "missing {k} in {kinds:?}");
    }
    let started = &agent.events_of("session.started")[0];
    assert_eq!(started["transaction_id"], tx);
    assert_eq!(started["meter_start_wh"], 10_000);
    assert_eq!(started["auth_method"], "rfid");
    assert!(
        started.get("id_tag").is_none(),
        "the tag itself never goes upstream"
    );
    let stopped = &agent.events_of("session.stopped")[0];
    assert_eq!(stopped["energy_wh"], 4_200);
    assert_eq!(stopped["meter_stop_wh"], 14_200);
    assert_eq!(stopped["reason"], "EVDisconnected");
    assert_eq!(stopped["session_id"], started["session_id"]);
    let meter = &agent.events_of("session.meter")[0];
    assert_eq!(meter["samples"][0]["energy_wh"], 11_500);
    assert_eq!(meter["samples"][0]["power_w"], 7200);
    let auth_ev = &agent.events_of("auth.checked")[0];
    assert!(
        !auth_ev.to_string().contains("RFID-1"),
        "never the tag: {auth_ev}"
    );

    // every meter value is linked to its session, including transactionData
    let linked: i64 = agent
        .db()
        .query_row(
            "SELECT count(*) FROM meter_values WHERE transaction_id = ?1",
            [tx],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(linked, 3);
    seqs_are_contiguous(&agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_charger_is_refused_with_404() {
    let agent = Agent::start("", "[[ocpp.chargers]]\nid = \"CP001\"\n");
    match Charger::try_connect(&agent.url("NOPE"), Some("ocpp1.6"), None).await {
        Connect::Refused(s) => assert_eq!(s, 404),
        Connect::Ok(_) => panic!("unknown charger accepted"),
    }
    match Charger::try_connect(
        &format!("ws://{}/other/CP001", agent.addr),
        Some("ocpp1.6"),
        None,
    )
    .await
    {
        Connect::Refused(s) => assert_eq!(s, 404),
        Connect::Ok(_) => panic!("wrong path accepted"),
    }
    assert!(matches!(
        Charger::try_connect(&agent.url("CP001"), Some("ocpp1.6"), None).await,
        Connect::Ok(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_checked_against_the_argon2_hash() {
    let hash = chargesite::password::hash("s3cret").unwrap();
    let agent = Agent::start(
        "",
        &format!("[[ocpp.chargers]]\nid = \"CP001\"\npassword_hash = \"{hash}\"\n"),
    );
    let url = agent.url("CP001");
    let basic = |u: &str, p: &str| format!("Basic {}", b64(&format!("{u}:{p}")));
    for (auth, expect) in [
        (None, 401),
        (Some(basic("CP001", "wrong")), 401),
        (Some(basic("CP002", "s3cret")), 401),
    ] {
        match Charger::try_connect(&url, Some("ocpp1.6"), auth.as_deref()).await {
            Connect::Refused(s) => assert_eq!(s, expect),
            Connect::Ok(_) => panic!("accepted with {auth:?}"),
        }
    }
    for _ in 0..2 {
        match Charger::try_connect(&url, Some("ocpp1.6"), Some(&basic("CP001", "s3cret"))).await {
            Connect::Ok(mut c) => {
                c.boot().await;
            }
            Connect::Refused(s) => panic!("refused {s}"),
        }
    }
}

fn b64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subprotocol_is_negotiated_per_ocpp_j() {
    let agent = Agent::start(OPEN, FREE);
    // offered among others: ocpp1.6 is chosen and echoed; offered with ocpp2.0.1, in
    // either order, ocpp2.0.1 wins
    for (offer, chosen) in [
        ("ocpp9.9, ocpp1.6", "ocpp1.6"),
        ("ocpp1.6, ocpp2.0.1", "ocpp2.0.1"),
        ("ocpp2.0.1, ocpp1.6", "ocpp2.0.1"),
    ] {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                agent.url("CP1"),
            )
            .unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", offer.parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
        let (_ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        assert_eq!(resp.headers()["sec-websocket-protocol"], chosen, "{offer}");
    }

    // only an unsupported one offered: handshake completes without the header, then close
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        agent.url("CP2"),
    )
    .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "ocpp9.9".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    // tungstenite (as a client) refuses a response without the protocol it asked for;
    // either way the charger is not served.
    if let Ok((ws, resp)) = tokio_tungstenite::client_async(req, tcp).await {
        assert!(resp.headers().get("sec-websocket-protocol").is_none());
        let mut c = Charger::from_ws(ws);
        assert!(
            c.try_recv(Duration::from_secs(3)).await.is_none(),
            "must be closed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_frame_gets_the_ocpp_j_1_6_callerror_and_the_socket_stays_up() {
    let agent = Agent::start(OPEN, FREE);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let cases: Vec<(String, &str)> = vec![
        (r#"[2,"a1","Heartbeat",{"#.into(), "FormationViolation"),
        (r#"[2,"a2","Heartbeat",[]]"#.into(), "FormationViolation"),
        (r#"[2,"a3","Heartbeat",{},{}]"#.into(), "FormationViolation"),
        (r#"[2,"a4","FlyToTheMoon",{}]"#.into(), "NotImplemented"),
        (r#"[2,"a5","RemoteStartTransaction",{"idTag":"x"}]"#.into(), "NotSupported"),
        (r#"[2,"a6","BootNotification",{"chargePointVendor":"v"}]"#.into(), "OccurenceConstraintViolation"),
        (r#"[2,"a7","Authorize",{"idTag":12}]"#.into(), "TypeConstraintViolation"),
        (format!(r#"[2,"a8","Authorize",{{"idTag":"{}"}}]"#, "x".repeat(21)), "TypeConstraintViolation"),
        (r#"[2,"a9","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Dancing"}]"#.into(), "PropertyConstraintViolation"),
        (r#"[2,"a10","Heartbeat",{"extra":1}]"#.into(), "FormationViolation"),
        (r#"[9,"a11",{}]"#.into(), "FormationViolation"),
        (r#"[2,"a12","StartTransaction",{"connectorId":1,"idTag":"t","meterStart":0,"timestamp":"soon"}]"#.into(), "TypeConstraintViolation"),
        (r#"[2,"a13","MeterValues",{"connectorId":1,"meterValue":[]}]"#.into(), "OccurenceConstraintViolation"),
    ];
    for (frame, code) in cases {
        cp.send_text(&frame).await;
        let a = cp.recv().await;
        assert_eq!(a[0], 4, "{frame} -> {a}");
        assert_eq!(a[2], code, "{frame} -> {a}");
        assert!(a[4].is_object());
        let id = frame.split('"').nth(1).unwrap();
        assert_eq!(a[1], id);
    }
    // frames whose id cannot be read get no answer, and nothing breaks
    for frame in [
        r#"{"not":"an array"}"#,
        "garbage",
        r#"[2, 5, "Heartbeat", {}]"#,
    ] {
        cp.send_text(frame).await;
    }
    assert!(cp.try_recv(Duration::from_millis(500)).await.is_none());
    assert!(cp.ok("Heartbeat", json!({})).await["currentTime"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_charger_does_not_disturb_a_good_one() {
    let agent = Agent::start(&format!("{OPEN}\nmax_message_bytes = 8192"), FREE);
    let mut good = Charger::connect(&agent.url("GOOD")).await;
    good.boot().await;
    let tx = good.start(1, "T", 0, &ts(0)).await;
    let mut bad = Charger::connect(&agent.url("BAD")).await;
    // garbage, a binary frame, an oversized frame: the bad charger is cut off...
    bad.send_text("garbage").await;
    bad.send_text(&format!(
        r#"[2,"x","DataTransfer",{{"vendorId":"{}"}}]"#,
        "v".repeat(20_000)
    ))
    .await;
    assert!(bad.try_recv(Duration::from_secs(3)).await.is_none());
    // ...while the good one carries on, its session intact.
    for i in 1..=5 {
        good.meter(1, tx, &ts(i), i * 100).await;
    }
    good.stop(tx, 600, &ts(6)).await;
    let stopped = agent.events_of("session.stopped");
    assert_eq!(stopped[0]["energy_wh"], 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_start_gets_the_same_transaction_id() {
    let agent = Agent::start(OPEN, FREE);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let t = ts(0);
    let a = cp.start(1, "TAG", 500, &t).await;
    let b = cp.start(1, "TAG", 500, &t).await;
    assert_eq!(a, b);
    let c = cp.start(2, "TAG", 500, &t).await;
    assert_ne!(a, c, "another connector is another session");
    assert_eq!(agent.events_of("session.started").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_ids_are_never_reused_across_restarts() {
    let mut agent = Agent::start(OPEN, FREE);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let first = cp.start(1, "TAG", 0, &ts(0)).await;
    drop(cp);
    assert_eq!(agent.terminate(), Some(0));
    let agent = agent.restart();
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let second = cp.start(1, "TAG", 0, &ts(1)).await;
    assert!(second > first, "{second} after {first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_or_unknown_stop_is_still_accepted_and_recorded() {
    let agent = Agent::start(OPEN, FREE);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 1000, &ts(0)).await;
    cp.stop(tx, 2000, &ts(10)).await;
    // the same stop again (the charger missed our answer): answered normally, billed once
    let again = cp
        .call(
            "StopTransaction",
            json!({"transactionId": tx, "meterStop": 2000, "timestamp": ts(10)}),
        )
        .await;
    assert_eq!(again[0], 3);
    // a stop for a transaction this agent never issued
    let unknown = cp
        .call(
            "StopTransaction",
            json!({"transactionId": 987654, "meterStop": 5, "timestamp": ts(11)}),
        )
        .await;
    assert_eq!(unknown[0], 3);
    assert_eq!(agent.events_of("session.stopped").len(), 1);
    let unmatched = agent.events_of("session.stop_unmatched");
    assert_eq!(unmatched.len(), 1);
    assert_eq!(unmatched[0]["transaction_id"], 987654);
    let kinds: Vec<String> = agent
        .db()
        .prepare("SELECT kind FROM unmatched_stops ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kinds, ["duplicate", "unknown"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backwards_meter_is_flagged_and_never_billed_as_a_huge_delta() {
    let agent = Agent::start(OPEN, FREE);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 50_000, &ts(0)).await;
    cp.meter(1, tx, &ts(10), 52_000).await;
    cp.meter(1, tx, &ts(20), 100).await; // the meter reset (charger rebooted)
    cp.meter(1, tx, &ts(30), 1_100).await;
    cp.stop(tx, 1_600, &ts(40)).await;
    let stopped = &agent.events_of("session.stopped")[0];
    assert_eq!(stopped["energy_wh"], 2_000 + 1_000 + 500);
    let flags = stopped["flags"].as_array().unwrap();
    assert!(flags.contains(&json!("meter_backwards")), "{stopped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_start_of_zero_after_a_reboot_is_not_a_910_kwh_bill() {
    let agent = Agent::start(OPEN, FREE);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 900_000, &ts(0)).await;
    cp.stop(tx, 905_000, &ts(60)).await;
    // the charger rebooted and reports meterStart 0, then the real register
    let tx = cp.start(1, "TAG", 0, &ts(70)).await;
    cp.meter(1, tx, &ts(71), 905_100).await;
    cp.stop(tx, 910_000, &ts(120)).await;
    let stopped = agent.events_of("session.stopped");
    assert_eq!(stopped[0]["energy_wh"], 5_000);
    assert_eq!(stopped[1]["energy_wh"], 4_900, "{}", stopped[1]);
    let flags = stopped[1]["flags"].as_array().unwrap();
    assert!(flags.contains(&json!("meter_start_zero")), "{}", stopped[1]);
    assert!(flags.contains(&json!("meter_jump")), "{}", stopped[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_charger_clock_is_flagged_and_both_times_are_kept() {
    let agent = Agent::start(OPEN, FREE);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    cp.start(1, "TAG", 0, "1970-01-01T00:05:00+00:00").await;
    let started = &agent.events_of("session.started")[0];
    assert!(started["flags"]
        .as_array()
        .unwrap()
        .contains(&json!("clock_unset")));
    let (raw, received): (String, String) = agent
        .db()
        .query_row(
            "SELECT started_raw, start_received_at FROM sessions",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(raw, "1970-01-01T00:05:00+00:00");
    assert!(received.starts_with("20"));
    let flag: String = agent
        .db()
        .query_row(
            "SELECT clock_flag FROM chargers WHERE cp_id = 'CP001'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(flag, "clock_unset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_charger_replaces_its_old_socket_and_keeps_its_transaction() {
    let agent = Agent::start(OPEN, FREE);
    let mut old = Charger::connect(&agent.url("CP001")).await;
    old.boot().await;
    let tx = old.start(1, "TAG", 0, &ts(0)).await;
    let mut new = Charger::connect(&agent.url("CP001")).await;
    assert!(
        old.try_recv(Duration::from_secs(3)).await.is_none(),
        "old socket closed"
    );
    // no new BootNotification: it simply carries on
    new.meter(1, tx, &ts(5), 1000).await;
    new.stop(tx, 2000, &ts(10)).await;
    assert_eq!(agent.events_of("session.stopped")[0]["energy_wh"], 2000);
    let reasons: Vec<Value> = agent
        .events_of("charger.disconnected")
        .into_iter()
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(reasons, vec![json!("replaced")]);
    let online: i64 = agent
        .db()
        .query_row(
            "SELECT online FROM chargers WHERE cp_id = 'CP001'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        online, 1,
        "the replaced socket must not mark the charger offline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_socket_shows_offline_within_seconds_and_interrupts_its_session() {
    let agent = Agent::start(
        &format!("{OPEN}\nping_interval_secs = 1\npong_timeout_secs = 1"),
        FREE,
    );
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 0, &ts(0)).await;
    // The charger goes silent: we stop reading, so pings are never answered.
    let started = std::time::Instant::now();
    let offline = eventually(10, || {
        agent
            .db()
            .query_row(
                "SELECT online FROM chargers WHERE cp_id = 'CP001'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v == 0)
            .unwrap_or(false)
    })
    .await;
    assert!(offline, "a silent charger must be marked offline");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let gone = agent.events_of("charger.disconnected");
    assert_eq!(gone[0]["reason"], "dead");
    let interrupted = agent.events_of("session.interrupted");
    assert_eq!(interrupted.len(), 1);
    // it comes back and carries on: resumed, and the queued stop is billed
    drop(cp);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    cp.stop(tx, 3000, &ts(30)).await;
    assert_eq!(agent.events_of("session.resumed").len(), 1);
    assert_eq!(agent.events_of("session.stopped")[0]["energy_wh"], 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_chargers_flushes_and_exits_zero() {
    let mut agent = Agent::start(OPEN, FREE);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    let tx = cp.start(1, "TAG", 0, &ts(0)).await;
    cp.meter(1, tx, &ts(1), 100).await;
    assert_eq!(agent.terminate(), Some(0));
    assert!(
        cp.try_recv(Duration::from_secs(2)).await.is_none(),
        "socket closed"
    );
    let gone = agent.events_of("charger.disconnected");
    assert_eq!(gone[0]["reason"], "shutdown");
    seqs_are_contiguous(&agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_of_only_dots_is_refused_with_404() {
    // With unknown chargers allowed, `..` would otherwise become a charger (and the MQTT
    // topic level `connectors/../1`).
    let agent = Agent::start(OPEN, FREE);
    for cp in ["..", ".", "..."] {
        match Charger::try_connect(&agent.url(cp), Some("ocpp1.6"), None).await {
            Connect::Refused(s) => assert_eq!(s, 404, "/ocpp/{cp}"),
            Connect::Ok(_) => panic!("/ocpp/{cp} accepted"),
        }
    }
    assert!(agent.events_of("charger.connected").is_empty());
}

/// The Close frame the agent sends next (skipping pings), or `None` if the socket just
/// ends.
async fn close_frame(cp: &mut Charger) -> Option<(u16, String)> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), cp.ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return Some((f.code.into(), f.reason.to_string()))
            }
            Ok(Some(Ok(Message::Close(None)))) => return Some((1005, String::new())),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_violation_gets_a_close_frame_before_the_socket_drops() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let agent = Agent::start(&format!("{OPEN}\nmax_message_bytes = 8192"), FREE);

    let mut cp = Charger::connect(&agent.url("BIN")).await;
    cp.ws
        .send(Message::Binary(vec![2, 0].into()))
        .await
        .unwrap();
    let (code, _) = close_frame(&mut cp).await.expect("a Close frame");
    assert_eq!(code, 1003, "unsupported data");

    let mut cp = Charger::connect(&agent.url("BIG")).await;
    cp.send_text(&format!(
        r#"[2,"x","DataTransfer",{{"vendorId":"{}"}}]"#,
        "v".repeat(20_000)
    ))
    .await;
    let (code, _) = close_frame(&mut cp).await.expect("a Close frame");
    assert_eq!(code, 1009, "message too big");

    assert!(
        eventually(5, || agent.events_of("charger.disconnected").len() == 2).await,
        "both recorded"
    );
    let reasons: Vec<Value> = agent
        .events_of("charger.disconnected")
        .into_iter()
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(reasons, vec![json!("protocol"), json!("protocol")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charger_closing_gets_its_close_frame_echoed() {
    let agent = Agent::start(OPEN, FREE);
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    cp.ws.close(None).await.unwrap();
    assert!(
        close_frame(&mut cp).await.is_some(),
        "the agent answers the closing handshake"
    );
}

/// Sends `head` raw over TCP and returns the status line of the answer.
async fn raw_status_line(agent: &Agent, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    // The agent may answer before it has read everything; a failed write is fine.
    let _ = tcp.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_string()
}

fn upgrade_request(path: &str, extra_header: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: ocpp1.6\r\n{extra_header}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_or_broken_request_gets_an_http_error_not_a_reset() {
    let agent = Agent::start(OPEN, FREE);
    let huge = "x".repeat(100 * 1024);
    let header = format!("X-Padding: {huge}\r\n");
    assert!(
        raw_status_line(&agent, &upgrade_request("/ocpp/CP001", &header))
            .await
            .starts_with("HTTP/1.1 431"),
        "a 100 KB header"
    );
    let path = format!("/ocpp/{huge}");
    assert!(
        raw_status_line(&agent, &upgrade_request(&path, ""))
            .await
            .starts_with("HTTP/1.1 431"),
        "a 100 KB path"
    );
    assert!(
        raw_status_line(&agent, "GET /ocpp/CP001 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400"),
        "not an upgrade"
    );
    assert!(
        raw_status_line(&agent, "\x16\x03\x01 not http\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400"),
        "not HTTP"
    );
    // and the server is fine
    let mut cp = Charger::connect(&agent.url("CP001")).await;
    cp.boot().await;
}
