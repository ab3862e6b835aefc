//! `chargesite demo`: the whole story on a fresh machine, with no configuration.
//!
//! An embedded MQTT broker stands in for the operator's; a BPP-side subscriber provisions
//! OTP orders and watches the events; the agent runs on a temporary database; simulated
//! chargers charge with the OTPs, one of them (`DEMO0002`) on OCPP 2.0.1, the others on
//! 1.6. Mid-session the uplink is cut (a relay between agent and broker drops its
//! connections and refuses new ones): chargers keep being answered, the backlog grows; the link is restored and every event arrives, ending with the bills. It
//! passes when every event arrived and each charger was seen with its OCPP version, its
//! session started and stopped.
//!
//! With `CHARGESITE_DEMO_RECORD=<path>` the demo also writes what its BPP received (every
//! event in seq order, the retained `state` payloads, the latest `live/<session_id>`
//! snapshot per session) to that file, for `tests/beckn.rs` to map to Beckn messages.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SITE: &str = "demo-site";
/// Where to write the recording of what the BPP received, when set.
const RECORD_ENV: &str = "CHARGESITE_DEMO_RECORD";
const ROOT: &str = "chargesite/v1/demo-site";

/// The demo's chargers and the OCPP version each speaks (`sim::Fleet::Mixed`).
const CHARGERS: [(&str, &str); 5] = [
    ("DEMO0001", "1.6"),
    ("DEMO0002", "2.0.1"),
    ("DEMO0003", "1.6"),
    // a fleet driver's RFID card
    ("DEMO0004", "2.0.1"),
    // a driver whose order the BPP confirmed while the site was offline
    ("LATE0001", "1.6"),
];

/// The fleet card the demo's BPP registers (`tags.upsert`).
const FLEET_CARD: &str = "04A1B2C3D4E5F6";
/// The key the demo's BPP shares for offline orders (`offline_orders.configure`); a real
/// one is 32 random bytes.
const OFFLINE_KEY: &[u8; 32] = b"demo-key-never-use-on-a-real-bpp";

/// What the demo needs from the outside: nothing. Returns whether every event arrived.
///
/// # Errors
/// A description of what failed to start.
/// The demo site's grid connection: less than its chargers could draw together.
const SITE_LIMIT_KW: u32 = 60;

pub async fn run() -> Result<bool, String> {
    let t0 = Instant::now();
    let say = move |who: &str, what: &str| {
        println!("{:>6.1}s  {who:<7} {what}", t0.elapsed().as_secs_f64())
    };
    println!("chargesite demo: a site agent, five simulated chargers, a BPP, and a link outage\n");

    let dir = tempfile_dir()?;
    let broker_addr = free_addr()?;
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(e) = crate::broker::run(broker_addr) {
                eprintln!("broker: {e}");
            }
        })
        .map_err(|e| e.to_string())?;
    wait_listening(broker_addr).await?;
    say(
        "broker",
        &format!("embedded MQTT broker on {broker_addr} (stands in for the operator's)"),
    );

    let relay = Relay::start(broker_addr).await?;
    say(
        "uplink",
        &format!(
            "the site's uplink: a relay on {} that the demo can cut",
            relay.addr
        ),
    );

    let bpp = Bpp::connect(broker_addr).await?;
    let config = crate::config::parse(&format!(
        "[site]\nid = \"{SITE}\"\nmax_power_kw = {SITE_LIMIT_KW}\n[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\n\
         [store]\npath = \"{}\"\n[uplink]\nurl = \"mqtt://{}\"\nkeepalive_secs = 2\nlive_interval_secs = 2\n",
        dir.join("chargesite.db").display(),
        relay.addr
    ))
    .map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let token = shutdown.clone();
    let agent_task = tokio::spawn(async move {
        crate::agent::run(config, token, move |a| {
            let _ = tx.send((a.local_addr, a.store.clone()));
        })
        .await
    });
    let (ocpp_addr, store) = rx
        .await
        .map_err(|_| "the agent did not start".to_string())?;
    say(
        "agent",
        &format!(
            "listening for chargers on ws://{ocpp_addr}/ocpp/<id>, database in {}",
            dir.display()
        ),
    );
    bpp.wait_online(Duration::from_secs(10)).await?;
    say("bpp", "sees the agent online (retained state)");
    say(
        "agent",
        &format!(
            "site limit {SITE_LIMIT_KW} kW: the running sessions share it (charging profiles)"
        ),
    );

    // three orders, as a BPP would provision them after Beckn confirm
    let tariff = json!({"currency": "INR", "energy_minor_per_kwh": 1800, "service_fee_minor": 1000,
        "timezone": "Asia/Kolkata",
        "surcharges": [{"name": "Congestion fee", "from": "18:00", "to": "21:00", "minor_per_kwh": 100}],
        "idle": {"grace_minutes": 10, "minor_per_minute": 200}});
    let orders = [
        ("order-A", "482913", 40_000),
        ("order-B", "551207", 12_000),
        ("order-C", "730468", 40_000),
    ];
    let valid_until = (crate::time::now() + chrono::Duration::hours(2)).to_rfc3339();
    for (i, (order, otp, budget)) in orders.iter().enumerate() {
        let id = format!("upsert-{order}");
        bpp.command(
            json!({"id": id, "type": "authorization.upsert", "order_id": order, "otp": otp,
            "valid_until": valid_until, "cp_id": format!("DEMO{:04}", i + 1),
            "budget": {"currency": "INR", "amount_minor": budget}, "tariff": tariff}),
        )
        .await;
        let r = bpp.result(&id, Duration::from_secs(10)).await?;
        say(
            "bpp",
            &format!(
                "authorization.upsert {order}: OTP **{}, budget INR {:.2} -> ok:{}",
                &otp[4..],
                *budget as f64 / 100.0,
                r["ok"]
            ),
        );
    }

    // a fleet card, and a key for orders confirmed while the site is offline
    bpp.command(json!({"id": "tags-1", "type": "tags.upsert",
        "tags": [{"id_tag": FLEET_CARD, "fleet": "acme-logistics"}]}))
        .await;
    let r = bpp.result("tags-1", Duration::from_secs(10)).await?;
    say(
        "bpp",
        &format!(
            "tags.upsert: fleet card **{} (acme-logistics) -> ok:{}",
            &FLEET_CARD[FLEET_CARD.len() - 2..],
            r["ok"]
        ),
    );
    let key = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(OFFLINE_KEY)
    };
    bpp.command(
        json!({"id": "offline-1", "type": "offline_orders.configure", "key": key,
        "digits": 6, "lookahead": 10,
        "terms": {"tariff": tariff, "budget": {"currency": "INR", "amount_minor": 40_000},
                  "valid_minutes": 60}}),
    )
    .await;
    let r = bpp.result("offline-1", Duration::from_secs(10)).await?;
    say(
        "bpp",
        &format!(
            "offline_orders.configure: a shared key, 6-digit codes, lookahead 10 -> ok:{}",
            r["ok"]
        ),
    );

    // order-C booked DEMO0003: the connector is held for it, with a 10-minute grace
    bpp.command(
        json!({"id": "reserve-C", "type": "reservation.upsert", "order_id": "order-C",
        "cp_id": "DEMO0003", "connector_id": 1, "start": crate::time::now().to_rfc3339(),
        "grace_minutes": 10}),
    )
    .await;
    let r = bpp.result("reserve-C", Duration::from_secs(10)).await?;
    say(
        "bpp",
        &format!(
            "reservation.upsert order-C at DEMO0003, grace 10 min -> ok:{}",
            r["ok"]
        ),
    );

    // the chargers: each driver types their OTP, the fleet driver taps a card
    let mut tags: Vec<String> = orders.iter().map(|o| o.1.to_string()).collect();
    tags.push(FLEET_CARD.to_string());
    let sim = crate::sim::SimConfig {
        url: format!("ws://{ocpp_addr}/ocpp"),
        chargers: 4,
        id_prefix: "DEMO".into(),
        // DEMO0002 speaks 2.0.1, the other two 1.6
        ocpp: crate::sim::Fleet::Mixed,
        sessions: 1,
        session: Duration::from_secs(16),
        meter_interval: Duration::from_millis(1000),
        time_scale: 120.0,
        tags,
        password: None,
        faults: vec![],
        offline: Duration::from_secs(1),
        max_power_w: 22_000.0,
        deadline: Duration::from_secs(90),
        wait_remote_start: false,
    };
    say(
        "chargers",
        "4 simulated chargers connect (DEMO0002 and DEMO0004 on OCPP 2.0.1, the others 1.6); drivers type their OTPs, the fleet driver taps a card (22 kW, 1 s = 2 min)",
    );
    let late = crate::sim::SimConfig {
        chargers: 1,
        id_prefix: "LATE".into(),
        ocpp: crate::sim::Fleet::V16,
        session: Duration::from_secs(6),
        // order-D, confirmed by the BPP while the site is offline: counter 0's code
        tags: vec![crate::auth::hotp(OFFLINE_KEY, 0, 6)],
        ..sim.clone()
    };
    let sim_task = tokio::spawn(crate::sim::run(sim));

    tokio::time::sleep(Duration::from_secs(5)).await;
    relay.cut();
    say(
        "uplink",
        "CUT: the agent loses its broker; chargers keep being answered locally",
    );
    let mut late_task = None;
    for k in 0..6 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if k == 0 {
            let code = crate::auth::hotp(OFFLINE_KEY, 0, 6);
            say(
                "bpp",
                &format!(
                    "confirms order-D while the site is offline: the driver gets code **{} (HOTP counter 0)",
                    &code[4..]
                ),
            );
            say(
                "chargers",
                "LATE0001 (OCPP 1.6) connects; its driver types the code",
            );
            late_task = Some(tokio::spawn(crate::sim::run(late.clone())));
        }
        if let Ok(s) = store.outbox_status().await {
            say(
                "agent",
                &format!(
                    "offline, {} events buffered in SQLite (last seq {})",
                    s.backlog, s.last_seq
                ),
            );
        }
    }
    relay.restore();
    say(
        "uplink",
        "RESTORED: the agent reconnects and drains its backlog in seq order",
    );

    let mut summary = sim_task.await.map_err(|e| e.to_string())?;
    if let Some(t) = late_task {
        let l = t.await.map_err(|e| e.to_string())?;
        summary.sessions_stopped += l.sessions_stopped;
        summary.energy_wh += l.energy_wh;
        summary.errors.extend(l.errors);
    }
    say(
        "chargers",
        &format!(
            "done: {} sessions, {:.2} kWh, {} protocol errors",
            summary.sessions_stopped,
            summary.energy_wh as f64 / 1000.0,
            summary.errors.len()
        ),
    );
    for e in &summary.errors {
        say("chargers", &format!("error: {e}"));
    }

    // every event must reach the BPP
    let last = match store.outbox_status().await {
        Ok(s) => s.last_seq,
        Err(e) => return Err(format!("cannot read the outbox: {e}")),
    };
    let complete = bpp.wait_complete(last, Duration::from_secs(30)).await;
    let (dupes, received) = bpp.counts();
    say(
        "bpp",
        &format!(
            "received seq 1..{} {} ({} deliveries, {} duplicates)",
            bpp.contiguous(),
            if complete { "with no gap" } else { "WITH GAPS" },
            received,
            dupes
        ),
    );

    println!("\nTimeline as the BPP received it:");
    for line in bpp.timeline() {
        println!("  {line}");
    }
    println!("\nFinal bills:");
    let started = bpp.events_of("session.started");
    for stopped in bpp.events_of("session.stopped") {
        let start = started
            .iter()
            .find(|s| s["session_id"] == stopped["session_id"]);
        println!("  {}", bill_line(&stopped, start));
    }
    shutdown.cancel();
    let _ = agent_task.await;
    let _ = std::fs::remove_dir_all(&dir);
    let failures = check_sessions(&bpp.all_events(), &CHARGERS);
    if let Some(path) = std::env::var_os(RECORD_ENV) {
        let recording = serde_json::to_string_pretty(&bpp.recording()).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, recording) {
            say("bpp", &format!("cannot write the recording: {e}"));
        }
    }
    for f in &failures {
        say("bpp", &format!("check failed: {f}"));
    }
    let ok = complete && summary.errors.is_empty() && failures.is_empty();
    println!(
        "\n{}",
        if ok {
            "demo: every event arrived; exit 0"
        } else {
            "demo: FAILED"
        }
    );
    Ok(ok)
}

/// What the BPP must have seen of each charger: connected with its OCPP version, one
/// session started (a 2.0.1 charger's `transaction_id` is its own string, a 1.6 one's the
/// agent's integer) and stopped. Returns what is wrong, in words.
fn check_sessions(events: &[Value], chargers: &[(&str, &str)]) -> Vec<String> {
    let of = |kind: &str, cp: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["type"] == kind && e["cp_id"] == cp)
            .collect()
    };
    let mut failures = Vec::new();
    for &(cp, version) in chargers {
        let connected = of("charger.connected", cp);
        if connected.is_empty() || connected.iter().any(|e| e["ocpp_version"] != version) {
            failures.push(format!(
                "{cp}: no charger.connected with ocpp_version {version}"
            ));
        }
        let started = of("session.started", cp);
        let id_ok = |e: &&Value| match version {
            "2.0.1" => e["transaction_id"].as_str().is_some_and(|s| !s.is_empty()),
            _ => e["transaction_id"].is_i64(),
        };
        if started.len() != 1 || !started.iter().all(id_ok) {
            failures.push(format!(
                "{cp}: expected one session.started with a {} transaction_id, got {started:?}",
                if version == "2.0.1" {
                    "string"
                } else {
                    "integer"
                }
            ));
        }
        let stopped = of("session.stopped", cp);
        let same_session = |e: &&Value| {
            started
                .first()
                .is_some_and(|s| s["session_id"] == e["session_id"])
        };
        if stopped.len() != 1 || !stopped.iter().all(same_session) {
            failures.push(format!(
                "{cp}: expected its session stopped once, got {stopped:?}"
            ));
        }
    }
    failures
}

fn money(v: &Value) -> String {
    format!("{:.2}", v.as_i64().unwrap_or(0) as f64 / 100.0)
}

/// One bill, named by its order, or how the driver was authorized when there is none.
fn bill_line(e: &Value, started: Option<&Value>) -> String {
    let who = match (e["order_id"].as_str(), started) {
        (Some(order), _) => order.to_string(),
        (None, Some(s)) if s["offline_counter"].is_u64() => {
            format!("offline order (counter {})", s["offline_counter"])
        }
        (None, Some(s)) if s["auth_method"] == "rfid" => "fleet card".to_string(),
        _ => "-".to_string(),
    };
    let mut parts = vec![format!(
        "{} {} {:.2} kWh reason {}",
        who,
        e["cp_id"].as_str().unwrap_or("-"),
        e["energy_wh"].as_i64().unwrap_or(0) as f64 / 1000.0,
        e["reason"].as_str().unwrap_or("-")
    )];
    if let Some(c) = e["cost"]["components"].as_array() {
        for comp in c {
            parts.push(format!(
                "{} {}",
                comp["name"].as_str().unwrap_or("-"),
                money(&comp["amount_minor"])
            ));
        }
        parts.push(format!(
            "total {} {}",
            e["cost"]["currency"].as_str().unwrap_or(""),
            money(&e["cost"]["total_minor"])
        ));
    }
    if e["settlement"].is_object() {
        let s = &e["settlement"];
        parts.push(format!(
            "prepaid {} refund {} top-up {}",
            money(&s["prepaid_minor"]),
            money(&s["refund_minor"]),
            money(&s["topup_minor"])
        ));
    }
    parts.join(" | ")
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("chargesite-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

fn free_addr() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())
}

async fn wait_listening(addr: SocketAddr) -> Result<(), String> {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("nothing listens on {addr}"))
}

/// The site's uplink: relays TCP to the broker until cut.
struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Result<Relay, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (u, c) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: the link is down
                }
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = c.notified() => {}
                    }
                });
            }
        });
        Ok(Relay { addr, up, cut })
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The BPP side: subscribes to the site's topics, sends commands, keeps what arrived.
struct Bpp {
    client: AsyncClient,
    events: Arc<Mutex<(BTreeMap<i64, Value>, usize)>>,
    results: Arc<Mutex<Vec<Value>>>,
    online: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
}

/// What the BPP saw beside the events, kept for the recording only.
#[derive(Default)]
struct Seen {
    /// Every retained `state` payload, in arrival order.
    states: Vec<Value>,
    /// The latest `live` snapshot per session.
    live: BTreeMap<String, Value>,
}

impl Bpp {
    async fn connect(broker: SocketAddr) -> Result<Bpp, String> {
        let mut o = MqttOptions::new("demo-bpp", broker.ip().to_string(), broker.port());
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        let events: Arc<Mutex<(BTreeMap<i64, Value>, usize)>> = Arc::default();
        let results: Arc<Mutex<Vec<Value>>> = Arc::default();
        let online = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (e, r, on, c, s) = (
            events.clone(),
            results.clone(),
            online.clone(),
            client.clone(),
            seen.clone(),
        );
        let live_prefix = format!("{ROOT}/live/");
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = c.subscribe(format!("{ROOT}/#"), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                            continue;
                        };
                        if p.topic.ends_with("/events") {
                            let mut g = e.lock().unwrap_or_else(|p| p.into_inner());
                            for ev in v["events"].as_array().cloned().unwrap_or_default() {
                                g.1 += 1;
                                if let Some(seq) = ev["seq"].as_i64() {
                                    g.0.insert(seq, ev);
                                }
                            }
                        } else if p.topic.ends_with("/cmd/result") {
                            r.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                        } else if p.topic.ends_with("/state") {
                            on.store(v["online"] == true, Ordering::SeqCst);
                            s.lock().unwrap_or_else(|p| p.into_inner()).states.push(v);
                        } else if let Some(session) = p.topic.strip_prefix(&live_prefix) {
                            let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
                            g.live.insert(session.to_string(), v);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Ok(Bpp {
            client,
            events,
            results,
            online,
            seen,
        })
    }

    /// What `CHARGESITE_DEMO_RECORD` gets: the events in seq order, the `state` payloads
    /// in arrival order, the latest `live` snapshot per session.
    fn recording(&self) -> Value {
        let g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        json!({"site": SITE, "root": ROOT, "events": self.all_events(),
            "states": g.states, "live": g.live})
    }

    async fn wait_online(&self, d: Duration) -> Result<(), String> {
        let until = Instant::now() + d;
        while !self.online.load(Ordering::SeqCst) {
            if Instant::now() > until {
                return Err("the agent never came online at the broker".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn command(&self, cmd: Value) {
        let _ = self
            .client
            .publish(
                format!("{ROOT}/cmd"),
                QoS::AtLeastOnce,
                false,
                cmd.to_string(),
            )
            .await;
    }

    async fn result(&self, id: &str, d: Duration) -> Result<Value, String> {
        let until = Instant::now() + d;
        loop {
            if let Some(r) = self
                .results
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|r| r["id"] == id)
            {
                return Ok(r.clone());
            }
            if Instant::now() > until {
                return Err(format!("no result for {id}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn contiguous(&self) -> i64 {
        let g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        while g.0.contains_key(&(n + 1)) {
            n += 1;
        }
        n
    }

    fn counts(&self) -> (usize, usize) {
        let g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        (g.1 - g.0.len(), g.1)
    }

    /// Waits for seqs 1..=last, asking for a replay of the first gap now and then.
    async fn wait_complete(&self, last: i64, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut asked = Instant::now();
        let mut k = 0;
        while Instant::now() < until {
            let have = self.contiguous();
            if have >= last {
                return true;
            }
            if asked.elapsed() > Duration::from_secs(3) {
                k += 1;
                self.command(json!({"id": format!("demo-replay-{k}"), "type": "events.replay", "from_seq": have + 1})).await;
                asked = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.contiguous() >= last
    }

    fn all_events(&self) -> Vec<Value> {
        let g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        g.0.values().cloned().collect()
    }

    fn events_of(&self, kind: &str) -> Vec<Value> {
        let g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        g.0.values()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect()
    }

    /// The story in a few lines: everything but meter samples and statuses, which are
    /// counted.
    fn timeline(&self) -> Vec<String> {
        let g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut meters = 0;
        for e in g.0.values() {
            let t = e["type"].as_str().unwrap_or("");
            let line = match t {
                "session.meter" | "connector.status" | "charger.booted" => {
                    meters += usize::from(t == "session.meter");
                    continue;
                }
                "auth.checked" => format!(
                    "{} {} {}{}",
                    e["cp_id"].as_str().unwrap_or(""),
                    e["method"].as_str().unwrap_or(""),
                    e["result"].as_str().unwrap_or(""),
                    e["order_id"]
                        .as_str()
                        .map(|o| format!(" {o}"))
                        .unwrap_or_default()
                ),
                "session.started" => format!(
                    "{} {} transaction {}, meter {} Wh, uplink {}",
                    e["cp_id"].as_str().unwrap_or(""),
                    match (e["order_id"].as_str(), e["offline_counter"].as_u64()) {
                        (Some(o), _) => o.to_string(),
                        (None, Some(n)) => format!("offline order (counter {n})"),
                        (None, None) => format!("{} tag", e["auth_method"].as_str().unwrap_or("-")),
                    },
                    e["transaction_id"],
                    e["meter_start_wh"],
                    if e["uplink_online"] == true {
                        "online"
                    } else {
                        "OFFLINE"
                    }
                ),
                "session.stopped" => format!(
                    "{} {} {} Wh, {}",
                    e["cp_id"].as_str().unwrap_or(""),
                    e["order_id"].as_str().unwrap_or("(no order)"),
                    e["energy_wh"],
                    e["reason"].as_str().unwrap_or("")
                ),
                "site.power" => {
                    let shares: Vec<String> = e["allocations"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            format!(
                                "{} {:.1} kW",
                                a["cp_id"].as_str().unwrap_or(""),
                                a["limit_w"].as_f64().unwrap_or(0.0) / 1000.0
                            )
                        })
                        .collect();
                    format!(
                        "{:.0} kW shared ({}): {}",
                        e["max_power_w"].as_f64().unwrap_or(0.0) / 1000.0,
                        e["reason"].as_str().unwrap_or(""),
                        if shares.is_empty() {
                            "no session".to_string()
                        } else {
                            shares.join(", ")
                        }
                    )
                }
                "reservation.held" | "reservation.released" => format!(
                    "{} {} {}",
                    e["cp_id"].as_str().unwrap_or(""),
                    e["order_id"].as_str().unwrap_or(""),
                    e["reason"].as_str().map_or_else(
                        || format!("until {}", e["expires_at"].as_str().unwrap_or("")),
                        str::to_string
                    )
                ),
                "charger.connected" => format!(
                    "{} OCPP {}",
                    e["cp_id"].as_str().unwrap_or(""),
                    e["ocpp_version"].as_str().unwrap_or("?")
                ),
                _ => e
                    .get("cp_id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            };
            out.push(format!(
                "seq {:>4}  {:<22} {line}",
                e["seq"].as_i64().unwrap_or(0),
                t
            ));
        }
        out.push(format!(
            "(and {meters} session.meter events, plus connector statuses and boots)"
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(cp: &str, version: &str, tx: Value) -> Vec<Value> {
        vec![
            json!({"type": "charger.connected", "cp_id": cp, "ocpp_version": version}),
            json!({"type": "session.started", "cp_id": cp, "session_id": format!("s-{cp}"), "transaction_id": tx}),
            json!({"type": "session.stopped", "cp_id": cp, "session_id": format!("s-{cp}")}),
        ]
    }

    #[test]
    fn a_mixed_fleet_with_every_session_started_and_stopped_passes() {
        let mut events = flow("A", "1.6", json!(1));
        events.extend(flow("B", "2.0.1", json!("18c2a3f-0")));
        assert!(check_sessions(&events, &[("A", "1.6"), ("B", "2.0.1")]).is_empty());
    }

    #[test]
    fn a_2_0_1_charger_seen_as_1_6_or_with_an_integer_transaction_id_fails() {
        let events = flow("B", "1.6", json!(7));
        let failures = check_sessions(&events, &[("B", "2.0.1")]);
        assert_eq!(failures.len(), 2, "{failures:?}");
    }

    #[test]
    fn a_session_never_stopped_fails() {
        let mut events = flow("A", "1.6", json!(1));
        events.pop();
        assert_eq!(check_sessions(&events, &[("A", "1.6")]).len(), 1);
    }
}
