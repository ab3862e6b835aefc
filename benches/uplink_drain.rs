//! Benchmark (not a test): how long 1,000,000 buffered meter samples take to drain to
//! Debian's mosquitto on loopback, in events/s, and the delay of live snapshots during the
//! drain. Run: `cargo bench --bench uplink_drain` (needs `mosquitto` on PATH or in /usr/sbin,
//! and runs the optimized binary cargo builds for benches).
//!
//! The backlog is written straight into a real chargesite database (1,000,000
//! `session.meter` events of one sample each, unsent), the release agent is started on it
//! with its uplink pointed at mosquitto, and a BPP-side subscriber counts every event until
//! seq 1..N are all in. Meanwhile a charger sends MeterValues every 100 ms and the live
//! snapshots' delay (arrival minus the reading's timestamp) is recorded.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::{json, Value};

const EVENTS: i64 = 1_000_000;

/// What the BPP has: distinct seqs, deliveries, live snapshot delays (ms).
type Seen = (HashSet<i64>, u64, Vec<f64>);

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mosquitto = ["mosquitto", "/usr/sbin/mosquitto"].into_iter().find(|m| {
        Command::new(m)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    let Some(mosquitto) = mosquitto else {
        eprintln!(
            "uplink_drain: mosquitto not found (apt-get install mosquitto); nothing measured"
        );
        std::process::exit(1);
    };
    // the agent binary cargo built for this bench (bench profile: optimized like release)
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_chargesite"));
    // on disk (not tmpfs), like a gateway's flash
    let dir = tempfile::Builder::new()
        .prefix("drain-")
        .tempdir_in(root.join("target"))
        .unwrap();
    let db = dir.path().join("cs.db");

    // 1. the backlog: a migrated database with a million unsent meter events
    let t = Instant::now();
    let mut conn = chargesite::store::connect(&db).unwrap();
    chargesite::store::schema::migrate(&mut conn).unwrap();
    {
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare("INSERT INTO events (type, at, body, billable) VALUES ('session.meter', ?1, ?2, 1)")
                .unwrap();
            for i in 0..EVENTS {
                let body = json!({"session_id": format!("site-001-bench-{}", i % 1000),
                    "samples": [{"at": "2026-11-21T10:00:00.000Z", "energy_wh": 1_000_000 + i,
                                 "power_w": 22000, "current_a": 31.9, "voltage_v": 230.0, "soc_pct": 55.0}]});
                st.execute(rusqlite::params![
                    "2026-11-21T10:00:00.000Z",
                    body.to_string()
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    drop(conn);
    println!(
        "uplink_drain: wrote {EVENTS} buffered meter events in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // 2. mosquitto on a free loopback port
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 100\nmax_queued_messages 1000000\nmessage_size_limit 0\n"),
    )
    .unwrap();
    let mut broker = Command::new(mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // 3. the BPP subscriber, connected before the agent
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let mut o = MqttOptions::new("bench-bpp", "127.0.0.1", port);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(o, 1000);
        client.subscribe("chargesite/v1/site-001/events", QoS::AtLeastOnce).await.unwrap();
        client.subscribe("chargesite/v1/site-001/live/#", QoS::AtMostOnce).await.unwrap();
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(Event::Incoming(Incoming::Publish(p))) = eventloop.poll().await {
                    let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    let mut g = s.lock().unwrap();
                    if p.topic.ends_with("/events") {
                        for e in v["events"].as_array().into_iter().flatten() {
                            g.1 += 1;
                            g.0.insert(e["seq"].as_i64().unwrap_or(0));
                        }
                    } else if let Some(at) = v["at"].as_str() {
                        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(at) {
                            let delay = chargesite::time::now().signed_duration_since(t).num_microseconds().unwrap_or(0);
                            g.2.push(delay as f64 / 1000.0);
                        }
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;

        // 4. the agent on the backlog
        let config = dir.path().join("chargesite.toml");
        std::fs::write(
            &config,
            format!(
                "[site]\nid = \"site-001\"\n[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\n[auth]\nfree_vend = true\n[store]\npath = \"{}\"\nquota_mb = 0\n[uplink]\nurl = \"mqtt://127.0.0.1:{port}\"\nlive_interval_secs = 1\n",
                db.display()
            ),
        )
        .unwrap();
        let started = Instant::now();
        let mut agent = Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(agent.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap().to_string();

        // 5. a charging session during the drain: MeterValues every 100 ms
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let charger = tokio::spawn(async move {
            let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/ocpp/LIVE1")).unwrap();
            req.headers_mut().insert("Sec-WebSocket-Protocol", "ocpp1.6".parse().unwrap());
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
            let mut n = 0u64;
            let mut call = |action: &str, payload: Value| {
                n += 1;
                json!([2, n.to_string(), action, payload]).to_string()
            };
            let now = || chargesite::time::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            ws.send(call("StartTransaction", json!({"connectorId":1,"idTag":"LIVE","meterStart":0,"timestamp": now()})).into()).await.unwrap();
            let start = ws.next().await.unwrap().unwrap();
            let start: Value = serde_json::from_str(start.to_text().unwrap()).unwrap();
            let tx = start[2]["transactionId"].as_i64().unwrap();
            let mut wh = 0;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                wh += 1;
                let mv = json!({"connectorId":1,"transactionId":tx,"meterValue":[{"timestamp": now(),
                    "sampledValue":[{"value": wh.to_string()},{"value":"7200","measurand":"Power.Active.Import","unit":"W"}]}]});
                ws.send(call("MeterValues", mv).into()).await.unwrap();
                let _ = ws.next().await;
            }
        });

        // 6. wait for every seq
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut last_print = Instant::now();
        loop {
            let (have, deliveries) = {
                let g = seen.lock().unwrap();
                (g.0.len() as i64, g.1)
            };
            if have >= EVENTS {
                break;
            }
            if Instant::now() > deadline {
                println!("uplink_drain: gave up after 300 s with {have} of {EVENTS} events ({deliveries} deliveries)");
                break;
            }
            if last_print.elapsed() > Duration::from_secs(2) {
                println!("  ... {have} events received after {:.1} s", started.elapsed().as_secs_f64());
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = charger.await;
        let g = seen.lock().unwrap();
        let have = g.0.iter().filter(|s| **s <= EVENTS).count();
        let mut live = g.2.clone();
        live.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |p: f64| if live.is_empty() { f64::NAN } else { live[((live.len() - 1) as f64 * p).round() as usize] };
        println!("uplink_drain: backlog={EVENTS} buffered meter samples (one session.meter event each)");
        println!("drain: {have} events delivered in {elapsed:.2} s (agent start to last event), {:.0} events/s, {} duplicates", have as f64 / elapsed, g.1 as i64 - g.0.len() as i64);
        println!("live snapshots during the drain: {} received, delay p50 {:.0} ms, p99 {:.0} ms (published every live_interval_secs = 1)", live.len(), pct(0.5), pct(0.99));
        println!("target: drained in <= 10 s: {}", if elapsed <= 10.0 && have as i64 == EVENTS { "met" } else { "MISSED" });
        let _ = Command::new("kill").arg("-TERM").arg(agent.id().to_string()).status();
        let _ = agent.wait();
    });
    let _ = broker.kill();
    let _ = broker.wait();
}
