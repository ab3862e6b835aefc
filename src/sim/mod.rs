//! Simulated OCPP chargers (`chargesite simulate`), 1.6 or 2.0.1 or a mixed fleet, for
//! test rigs and field checks against any central system.
//!
//! Each charger boots, reports status, has a car plugged in, authorizes, starts, reports
//! its meter on a charging curve ([`model`]), stops, and answers the central system's
//! CALLs (remote start/stop, Reset, TriggerMessage, …) meanwhile. Faults on request: a
//! charger that drops its connection mid-session and comes back later with the messages
//! it queued meanwhile, one whose clock is unset, one that reboots mid-session. Everything
//! is bounded by count and time; any protocol error makes the run fail.
//!
//! The session, the charging curve and the fault schedule are written once, here, for
//! both versions; only the words on the wire differ: [`v16`] and [`v201`] build each
//! version's payloads and answers, pure.

pub mod model;
pub mod v16;
pub mod v201;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::time::fmt_ts;
use model::{Car, ChargingLimits, HeldProfile, Reading};

/// The OCPP version one simulated charger speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// OCPP 1.6J.
    V16,
    /// OCPP 2.0.1.
    V201,
}

impl Version {
    /// The WebSocket subprotocol the charger offers.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Version::V16 => "ocpp1.6",
            Version::V201 => v201::SUBPROTOCOL,
        }
    }
}

/// The versions a simulated fleet speaks (`--ocpp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fleet {
    /// Every charger 1.6 (the default).
    #[default]
    V16,
    /// Every charger 2.0.1.
    V201,
    /// Alternating: charger 0 speaks 1.6, charger 1 2.0.1, and so on.
    Mixed,
}

impl Fleet {
    /// The version of charger `index` (0-based).
    pub fn version_of(self, index: usize) -> Version {
        match self {
            Fleet::V16 => Version::V16,
            Fleet::V201 => Version::V201,
            Fleet::Mixed if index % 2 == 1 => Version::V201,
            Fleet::Mixed => Version::V16,
        }
    }
}

impl std::str::FromStr for Fleet {
    type Err = String;
    /// `1.6`, `2.0.1` or `mixed`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "1.6" => Ok(Fleet::V16),
            "2.0.1" => Ok(Fleet::V201),
            "mixed" => Ok(Fleet::Mixed),
            other => Err(format!(
                "unknown OCPP version `{other}` (1.6, 2.0.1, mixed)"
            )),
        }
    }
}

/// Where the connector is in a session, as both versions report it in their own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plug {
    /// No car.
    Available,
    /// A car is plugged in, not yet charging.
    Preparing,
    /// Charging.
    Charging,
    /// The transaction is over, the car still plugged in.
    Finishing,
}

/// Why a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The driver unplugged (the session ran its course).
    EvDisconnected,
    /// The central system stopped it.
    Remote,
    /// The charger rebooted on its own (the `reboot` fault).
    PowerLoss,
    /// The central system reset the charger mid-transaction.
    Reset {
        /// 1.6's Hard (else Soft) reset.
        hard: bool,
    },
}

/// What a charger's answer to a CALL may depend on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Seconds between periodic readings.
    pub meter_interval_secs: u64,
    /// The running transaction's id, if any.
    pub transaction_id: Option<String>,
    /// Transaction messages waiting in the offline queue.
    pub queued: usize,
}

/// What an answered CALL makes the charger do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start the next transaction with this token (2.0.1: and this `remoteStartId`).
    RemoteStart {
        /// The token to start with.
        id_token: String,
        /// 2.0.1's `remoteStartId`, echoed in the Started event.
        remote_start_id: Option<i64>,
    },
    /// Stop the running transaction.
    RemoteStop,
    /// Reboot (ending a running transaction with a reset reason).
    Reset {
        /// 1.6's Hard (else Soft) reset.
        hard: bool,
    },
    /// Send the device model in NotifyReport parts, after the answer (2.0.1).
    Report {
        /// The GetBaseReport's `requestId`.
        request_id: i64,
    },
    /// Send this message, after the answer (2.0.1 TriggerMessage).
    Trigger(String),
    /// Hold a charging profile (SetChargingProfile): the running transaction's (`tx`) or
    /// the default for every transaction.
    Profile {
        /// TxProfile rather than TxDefaultProfile.
        tx: bool,
        /// Its id.
        id: i64,
        /// Its limit, W.
        limit_w: f64,
        /// How long its schedule lasts from now, s; `None`: without end.
        secs: Option<f64>,
    },
    /// Forget a charging profile (ClearChargingProfile).
    ClearProfile {
        /// Its id.
        id: i64,
    },
}

/// The [`Effect::Profile`] of a SetChargingProfile that a simulated charger accepts: its
/// purpose (`TxProfile` only for the running transaction), unit, id and first period. The
/// schedule's start is not read: the simulator's clock is compressed, so a profile is held
/// for its duration from when it arrived.
pub fn profile_effect(
    purpose: Option<&str>,
    transaction_id: Option<String>,
    running: Option<&str>,
    id: Option<i64>,
    unit: crate::power::RateUnit,
    schedule: &Value,
) -> Option<Effect> {
    let tx = match purpose {
        Some("TxDefaultProfile") => false,
        Some("TxProfile") if running.is_some() && transaction_id.as_deref() == running => true,
        _ => return None,
    };
    let period = schedule["chargingSchedulePeriod"].get(0)?;
    let limit = period["limit"]
        .as_f64()
        .filter(|l| l.is_finite() && *l >= 0.0)?;
    let phases = period["numberPhases"]
        .as_u64()
        .map_or(3, |p| p.clamp(1, 3) as u8);
    Some(Effect::Profile {
        tx,
        id: id?,
        limit_w: crate::power::watts(limit, phases, unit),
        secs: schedule["duration"].as_f64(),
    })
}

/// A charger's answer to a CALL: the CALLRESULT payload or a CALLERROR (code,
/// description), and what it makes the charger do.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The CALLRESULT payload, or the CALLERROR's code and description.
    pub reply: Result<Value, (&'static str, String)>,
    /// What the charger does once it has answered.
    pub effects: Vec<Effect>,
}

impl Answer {
    /// An answer that changes nothing.
    pub fn reply(reply: Result<Value, (&'static str, String)>) -> Answer {
        Answer {
            reply,
            effects: Vec::new(),
        }
    }
}

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Drops the connection mid-session, queues its messages, reconnects later.
    Drop,
    /// Its clock is unset (timestamps from 1970).
    Clock,
    /// Reboots mid-session: the transaction ends with `Reboot` (2.0.1: `PowerLoss`), the
    /// next one starts from a register of 0 (the classic bad firmware: 1.6 `meterStart`,
    /// 2.0.1 `Transaction.Begin`) while the register keeps counting.
    Reboot,
}

/// A fault on one charger (by index, 0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// Which charger.
    pub charger: usize,
}

impl std::str::FromStr for Fault {
    type Err = String;
    /// `drop`, `clock`, `reboot`, optionally `=INDEX` (default charger 0).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, index) = s.split_once('=').unwrap_or((s, "0"));
        let kind = match kind {
            "drop" => FaultKind::Drop,
            "clock" => FaultKind::Clock,
            "reboot" => FaultKind::Reboot,
            other => return Err(format!("unknown fault `{other}` (drop, clock, reboot)")),
        };
        let charger = index
            .parse()
            .map_err(|_| format!("fault index `{index}` is not a number"))?;
        Ok(Fault { kind, charger })
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Central system URL; the charger id is appended as a path segment.
    pub url: String,
    /// Number of chargers.
    pub chargers: usize,
    /// Charger ids are `<prefix>0001`, `<prefix>0002`, …
    pub id_prefix: String,
    /// Which OCPP version each charger speaks.
    pub ocpp: Fleet,
    /// Sessions per charger.
    pub sessions: u32,
    /// Wall-clock length of a session's charging phase.
    pub session: Duration,
    /// Wall-clock interval between MeterValues.
    pub meter_interval: Duration,
    /// Charger clock speed: 60 makes each real second a minute of charging.
    pub time_scale: f64,
    /// Id tags (or OTPs), used round-robin by charger.
    pub tags: Vec<String>,
    /// HTTP Basic auth password (user = charger id).
    pub password: Option<String>,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// How long a dropped charger stays away (wall clock).
    pub offline: Duration,
    /// Maximum charger power, W.
    pub max_power_w: f64,
    /// Hard bound on the whole run.
    pub deadline: Duration,
    /// Each session begins only when the central system asks for it (RemoteStart /
    /// RequestStartTransaction), as a charger waiting for a driver does; for commissioning
    /// rigs (`chargesite charger … test-session`).
    pub wait_remote_start: bool,
}

/// What happened.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Chargers that connected.
    pub connected: usize,
    /// Of those, chargers speaking 2.0.1.
    pub connected_v201: usize,
    /// Sessions started (transaction ids received).
    pub sessions_started: u64,
    /// Sessions stopped.
    pub sessions_stopped: u64,
    /// Energy delivered, Wh.
    pub energy_wh: i64,
    /// CALLs sent.
    pub calls: u64,
    /// CALLs received from the central system.
    pub calls_received: u64,
    /// Protocol errors (any makes the run fail).
    pub errors: Vec<String>,
    /// CALL→CALLRESULT latencies, µs.
    pub latencies_us: Vec<u64>,
}

impl Summary {
    /// The p-th percentile latency, ms.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * p).round() as usize;
        v[i] as f64 / 1000.0
    }

    /// Human summary.
    pub fn render(&self) -> String {
        format!(
            "chargers connected: {} (OCPP 2.0.1: {})\nsessions: {} started, {} stopped\nenergy delivered: {:.3} kWh\nCALLs sent: {} (received: {})\nlatency: p50 {:.2} ms, p99 {:.2} ms\nprotocol errors: {}{}",
            self.connected,
            self.connected_v201,
            self.sessions_started,
            self.sessions_stopped,
            self.energy_wh as f64 / 1000.0,
            self.calls,
            self.calls_received,
            self.percentile_ms(0.5),
            self.percentile_ms(0.99),
            self.errors.len(),
            self.errors
                .iter()
                .take(20)
                .map(|e| format!("\n  - {e}"))
                .collect::<String>()
        )
    }
}

/// Runs the simulation to completion (or the deadline).
pub async fn run(cfg: SimConfig) -> Summary {
    let summary = Arc::new(Mutex::new(Summary::default()));
    let cfg = Arc::new(cfg);
    let mut tasks = Vec::new();
    for i in 0..cfg.chargers {
        let cfg = cfg.clone();
        let summary = summary.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("{}{:04}", cfg.id_prefix, i + 1);
            let mut sim = SimCharger::new(i, id.clone(), cfg.clone(), summary.clone());
            // small stagger so a thousand chargers do not handshake in the same millisecond
            tokio::time::sleep(Duration::from_millis((i as u64 * 7) % 1000)).await;
            if let Err(e) = tokio::time::timeout(cfg.deadline, sim.life())
                .await
                .unwrap_or_else(|_| Err("deadline reached".into()))
            {
                lock(&summary).errors.push(format!("{id}: {e}"));
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            lock(&summary)
                .errors
                .push(format!("charger task failed: {e}"));
        }
    }
    let s = lock(&summary).clone();
    s
}

fn lock(s: &Mutex<Summary>) -> std::sync::MutexGuard<'_, Summary> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

type Ws = WebSocketStream<TcpStream>;

/// What the central system asked for, acted on at the session's next step.
#[derive(Debug, Default)]
struct Requests {
    remote_stop: bool,
    /// The token (and, 2.0.1, the `remoteStartId`) of a remote start.
    remote_start: Option<(String, Option<i64>)>,
    /// A reset during a transaction: the charger reboots (`hard` for 1.6's reason).
    reset: Option<bool>,
}

/// The charger's own name for a transaction: 1.6's is the central system's integer,
/// 2.0.1's the station's string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TxId {
    Int(i64),
    Str(String),
}

/// The running transaction.
#[derive(Debug, Clone)]
struct Tx {
    id: TxId,
    tag: String,
    /// The next TransactionEvent's `seqNo` (2.0.1).
    next_seq: u32,
}

impl Tx {
    fn text_id(&self) -> String {
        match &self.id {
            TxId::Int(i) => i.to_string(),
            TxId::Str(s) => s.clone(),
        }
    }
}

struct SimCharger {
    index: usize,
    id: String,
    version: Version,
    cfg: Arc<SimConfig>,
    summary: Arc<Mutex<Summary>>,
    ws: Option<Ws>,
    next_id: u64,
    register_wh: i64,
    /// The meter's latest reading (what a triggered message reports).
    reading: Reading,
    started: Instant,
    epoch: DateTime<Utc>,
    /// Names this run in 2.0.1 transaction ids, so that ids differ between runs.
    run: u64,
    requests: Requests,
    tx: Option<Tx>,
    /// Transaction messages queued while offline (as a real charger keeps them), in order.
    queue: VecDeque<(&'static str, Value)>,
    /// What answered CALLs asked to be sent once the current exchange is over (one
    /// outstanding CALL per direction): a report, a triggered message.
    later: VecDeque<Effect>,
    /// The 2.0.1 device model (GetVariables, SetVariables, GetBaseReport).
    model: v201::DeviceModel,
    /// The charging profiles it holds: they cap its charging.
    limits: ChargingLimits,
}

type Res<T> = Result<T, String>;

impl SimCharger {
    fn new(index: usize, id: String, cfg: Arc<SimConfig>, summary: Arc<Mutex<Summary>>) -> Self {
        let epoch = crate::time::now() - scaled_run_length(&cfg);
        let register_wh = 1_000_000 + index as i64 * 1000;
        Self {
            index,
            id,
            version: cfg.ocpp.version_of(index),
            model: v201::DeviceModel::new(cfg.meter_interval.as_secs().max(1)),
            cfg,
            summary,
            ws: None,
            next_id: 0,
            register_wh,
            reading: Reading {
                register_wh,
                power_w: 0.0,
                soc_pct: 0.0,
            },
            started: Instant::now(),
            // A compressed clock starts in the past, so that it reaches the present about when
            // the run ends instead of running ahead of the central system's clock.
            epoch,
            run: crate::time::now().timestamp_millis().unsigned_abs(),
            requests: Requests::default(),
            tx: None,
            queue: VecDeque::new(),
            later: VecDeque::new(),
            limits: ChargingLimits::default(),
        }
    }

    fn has(&self, kind: FaultKind) -> bool {
        self.cfg
            .faults
            .iter()
            .any(|f| f.kind == kind && f.charger == self.index)
    }

    /// The charger's clock: compressed by the time scale, or from 1970 when unset.
    fn now(&self) -> DateTime<Utc> {
        let elapsed = self.started.elapsed().as_secs_f64() * self.cfg.time_scale;
        let base = if self.has(FaultKind::Clock) {
            DateTime::<Utc>::UNIX_EPOCH
        } else {
            self.epoch
        };
        base + chrono::Duration::milliseconds((elapsed * 1000.0) as i64)
    }

    fn ts(&self) -> String {
        fmt_ts(self.now())
    }

    fn tag(&self) -> String {
        self.cfg.tags[self.index % self.cfg.tags.len()].clone()
    }

    /// The register the `n`-th transaction (0-based) opens with: a rebooted charger with
    /// bad firmware reports 0 while its register keeps counting (the "910 kWh bill").
    fn begin_register(&self, n: u32) -> i64 {
        if n > 0 && self.has(FaultKind::Reboot) {
            0
        } else {
            self.register_wh
        }
    }

    fn view(&self) -> View {
        View {
            meter_interval_secs: self.cfg.meter_interval.as_secs(),
            transaction_id: self.tx.as_ref().map(Tx::text_id),
            queued: self.queue.len(),
        }
    }

    async fn connect(&mut self) -> Res<()> {
        let url = format!("{}/{}", self.cfg.url.trim_end_matches('/'), self.id);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("bad url {url}: {e}"))?;
        let subprotocol = self.version.subprotocol();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(subprotocol),
        );
        if let Some(p) = &self.cfg.password {
            let token = base64(&format!("{}:{p}", self.id));
            let v = HeaderValue::from_str(&format!("Basic {token}")).map_err(|e| e.to_string())?;
            req.headers_mut().insert("Authorization", v);
        }
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| format!("no host in {url}"))?;
        let tcp = TcpStream::connect(&host)
            .await
            .map_err(|e| format!("connect {host}: {e}"))?;
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        if resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|h| h.to_str().ok())
            != Some(subprotocol)
        {
            return Err(format!("central system did not agree to {subprotocol}"));
        }
        self.ws = Some(ws);
        Ok(())
    }

    async fn disconnect(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
    }

    /// Sends a CALL and waits for its answer, answering the central system's CALLs meanwhile.
    async fn call(&mut self, action: &str, payload: Value) -> Res<Value> {
        self.next_id += 1;
        let id = format!("{}-{}", self.index, self.next_id);
        let frame = json!([2, id, action, payload]).to_string();
        let sent = Instant::now();
        let ws = self.ws.as_mut().ok_or("not connected")?;
        ws.send(Message::Text(frame.into()))
            .await
            .map_err(|e| format!("send {action}: {e}"))?;
        lock(&self.summary).calls += 1;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self
                .next_frame(until)
                .await
                .map_err(|e| format!("{action}: {e}"))?;
            match v.get(0).and_then(Value::as_u64) {
                Some(3) if v[1] == json!(id) => {
                    lock(&self.summary)
                        .latencies_us
                        .push(sent.elapsed().as_micros() as u64);
                    return Ok(v.get(2).cloned().unwrap_or(Value::Null));
                }
                Some(4) if v[1] == json!(id) => {
                    return Err(format!(
                        "{action} answered with CALLERROR {} {}",
                        v[2], v[3]
                    ));
                }
                Some(2) => self.answer(&v).await?,
                _ => return Err(format!("{action}: unexpected frame {v}")),
            }
        }
    }

    /// Reads the next text frame until `until`.
    async fn next_frame(&mut self, until: Instant) -> Res<Value> {
        let ws = self.ws.as_mut().ok_or("not connected")?;
        loop {
            let m = tokio::time::timeout_at(until, ws.next())
                .await
                .map_err(|_| "no answer within 30 s".to_string())?
                .ok_or("connection closed")?
                .map_err(|e| e.to_string())?;
            match m {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str())
                        .map_err(|e| format!("bad JSON from the central system: {e}"))
                }
                Message::Close(_) => return Err("connection closed by the central system".into()),
                _ => continue,
            }
        }
    }

    /// Waits `d`, answering the central system's CALLs meanwhile and sending what they
    /// asked for.
    async fn idle(&mut self, d: Duration) -> Res<()> {
        let until = Instant::now() + d;
        loop {
            self.send_later().await?;
            if Instant::now() >= until {
                return Ok(());
            }
            let Some(ws) = self.ws.as_mut() else {
                tokio::time::sleep_until(until).await;
                return Ok(());
            };
            match tokio::time::timeout_at(until, ws.next()).await {
                Err(_) => return Ok(()),
                Ok(None) => return Err("connection closed".into()),
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                    if v.get(0).and_then(Value::as_u64) == Some(2) {
                        self.answer(&v).await?;
                    } else {
                        return Err(format!("unexpected frame while idle: {v}"));
                    }
                }
                Ok(Some(Ok(Message::Close(_)))) => {
                    return Err("connection closed by the central system".into())
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Answers a CALL from the central system as a real charger would, and keeps what it
    /// asked for.
    async fn answer(&mut self, call: &Value) -> Res<()> {
        lock(&self.summary).calls_received += 1;
        let id = call[1].clone();
        let action = call[2].as_str().unwrap_or_default();
        let view = self.view();
        let answer = match self.version {
            Version::V16 => v16::answer(action, &call[3], &view),
            Version::V201 => v201::answer(action, &call[3], &view, &mut self.model),
        };
        for effect in answer.effects {
            match effect {
                Effect::RemoteStop => self.requests.remote_stop = true,
                Effect::RemoteStart {
                    id_token,
                    remote_start_id,
                } => self.requests.remote_start = Some((id_token, remote_start_id)),
                // a reset between transactions is answered, not simulated
                Effect::Reset { hard } if self.tx.is_some() => self.requests.reset = Some(hard),
                Effect::Reset { .. } => {}
                later @ (Effect::Report { .. } | Effect::Trigger(_)) => self.later.push_back(later),
                Effect::Profile {
                    tx,
                    id,
                    limit_w,
                    secs,
                } => {
                    let held = HeldProfile {
                        id,
                        limit_w,
                        until_secs: secs.map(|s| self.started.elapsed().as_secs_f64() + s),
                    };
                    if tx {
                        self.limits.tx = Some(held);
                    } else {
                        self.limits.default = Some(held);
                    }
                }
                Effect::ClearProfile { id } => {
                    self.limits.clear(id);
                }
            }
        }
        let reply = match answer.reply {
            Ok(payload) => json!([3, id, payload]),
            Err((code, description)) => json!([4, id, code, description, {}]),
        };
        let ws = self.ws.as_mut().ok_or("not connected")?;
        ws.send(Message::Text(reply.to_string().into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends what answered CALLs asked for (a report's parts, a triggered message).
    async fn send_later(&mut self) -> Res<()> {
        while self.ws.is_some() {
            let Some(effect) = self.later.pop_front() else {
                return Ok(());
            };
            match effect {
                Effect::Report { request_id } => {
                    for part in self.model.report(request_id, &self.ts()) {
                        self.call("NotifyReport", part).await?;
                    }
                }
                Effect::Trigger(message) => self.triggered(&message).await?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Sends the message a TriggerMessage asked for (2.0.1).
    async fn triggered(&mut self, message: &str) -> Res<()> {
        let ts = self.ts();
        match message {
            "BootNotification" => self.boot("Triggered").await,
            "Heartbeat" => self.call("Heartbeat", json!({})).await.map(|_| ()),
            "StatusNotification" => {
                let plug = if self.tx.is_some() {
                    Plug::Preparing
                } else {
                    Plug::Available
                };
                match v201::status(plug, &ts) {
                    Some(p) => self.call("StatusNotification", p).await.map(|_| ()),
                    None => Ok(()),
                }
            }
            "MeterValues" => {
                let p = v201::meter_values(&self.reading, &ts);
                self.call("MeterValues", p).await.map(|_| ())
            }
            "TransactionEvent" => self.meter("Trigger").await,
            _ => Ok(()),
        }
    }

    /// Sends a transaction message now, or queues it while the connection is down.
    async fn send_or_queue(&mut self, action: &'static str, payload: Value) -> Res<Option<Value>> {
        if self.ws.is_none() {
            self.queue.push_back((action, payload));
            return Ok(None);
        }
        self.call(action, payload).await.map(Some)
    }

    /// Delivers the queue in order (a reconnected charger's first job).
    async fn send_queue(&mut self) -> Res<()> {
        while let Some((action, payload)) = self.queue.pop_front() {
            self.call(action, payload).await?;
        }
        Ok(())
    }

    async fn status(&mut self, plug: Plug) -> Res<()> {
        let ts = self.ts();
        let payload = match self.version {
            Version::V16 => Some(v16::status(1, plug, &ts)),
            Version::V201 => v201::status(plug, &ts),
        };
        match payload {
            Some(p) => self.call("StatusNotification", p).await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// BootNotification; `reason` is 2.0.1's BootReason (1.6 has none).
    async fn boot(&mut self, reason: &str) -> Res<()> {
        let payload = match self.version {
            Version::V16 => v16::boot(&self.id),
            Version::V201 => v201::boot(&self.id, reason),
        };
        let r = self.call("BootNotification", payload).await?;
        if r["status"] != "Accepted" {
            return Err(format!("BootNotification answered {}", r["status"]));
        }
        Ok(())
    }

    async fn authorize(&mut self, tag: &str) -> Res<()> {
        let (payload, info) = match self.version {
            Version::V16 => (v16::authorize(tag), "idTagInfo"),
            Version::V201 => (v201::authorize(tag), "idTokenInfo"),
        };
        let a = self.call("Authorize", payload).await?;
        if a[info]["status"] != "Accepted" {
            return Err(format!("tag refused: {}", a[info]["status"]));
        }
        Ok(())
    }

    /// Starts the `n`-th transaction: StartTransaction (1.6) or TransactionEvent Started
    /// (2.0.1).
    async fn start(
        &mut self,
        n: u32,
        tag: &str,
        remote_start_id: Option<i64>,
        begin: &Reading,
    ) -> Res<()> {
        let ts = self.ts();
        let (id, info) = match self.version {
            Version::V16 => {
                let r = self
                    .call("StartTransaction", v16::start(tag, begin.register_wh, &ts))
                    .await?;
                let id = r["transactionId"]
                    .as_i64()
                    .ok_or("StartTransaction without transactionId")?;
                (TxId::Int(id), r["idTagInfo"]["status"].clone())
            }
            Version::V201 => {
                let id = v201::transaction_id(self.run, n);
                let e = v201::Event {
                    tx_id: &id,
                    seq_no: 0,
                    ts: &ts,
                    offline: false,
                };
                let p = v201::started(&e, tag, remote_start_id, begin);
                let r = self.call("TransactionEvent", p).await?;
                // idTokenInfo is optional in the answer: no news is acceptance
                let status = r
                    .get("idTokenInfo")
                    .map_or(json!("Accepted"), |i| i["status"].clone());
                (TxId::Str(id), status)
            }
        };
        if info != "Accepted" {
            return Err(format!("the transaction's start refused the tag: {info}"));
        }
        self.tx = Some(Tx {
            id,
            tag: tag.to_string(),
            next_seq: 1,
        });
        Ok(())
    }

    /// Reports the meter's latest reading for the running transaction: MeterValues (1.6)
    /// or TransactionEvent Updated (2.0.1), queued while disconnected.
    async fn meter(&mut self, trigger: &str) -> Res<()> {
        let ts = self.ts();
        let offline = self.ws.is_none();
        let Some(tx) = self.tx.as_mut() else {
            return Ok(());
        };
        let (action, payload) = match &tx.id {
            TxId::Int(id) => ("MeterValues", v16::meter(*id, &self.reading, &ts)),
            TxId::Str(id) => {
                let e = v201::Event {
                    tx_id: id,
                    seq_no: tx.next_seq,
                    ts: &ts,
                    offline,
                };
                tx.next_seq += 1;
                (
                    "TransactionEvent",
                    v201::updated(&e, trigger, &self.reading),
                )
            }
        };
        self.send_or_queue(action, payload).await.map(|_| ())
    }

    /// Ends the running transaction: StopTransaction (1.6) or TransactionEvent Ended
    /// (2.0.1), queued while disconnected.
    async fn stop(&mut self, cause: StopCause) -> Res<()> {
        let ts = self.ts();
        let offline = self.ws.is_none();
        // a TxProfile ends with its transaction
        self.limits.tx = None;
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        let end = Reading {
            power_w: 0.0,
            ..self.reading
        };
        let payload = match &tx.id {
            TxId::Int(id) => ("StopTransaction", v16::stop(*id, &tx.tag, &end, cause, &ts)),
            TxId::Str(id) => {
                let e = v201::Event {
                    tx_id: id,
                    seq_no: tx.next_seq,
                    ts: &ts,
                    offline,
                };
                ("TransactionEvent", v201::ended(&e, cause, &end))
            }
        };
        self.send_or_queue(payload.0, payload.1).await.map(|_| ())
    }

    async fn life(&mut self) -> Res<()> {
        self.connect().await?;
        {
            let mut s = lock(&self.summary);
            s.connected += 1;
            s.connected_v201 += usize::from(self.version == Version::V201);
        }
        self.boot("PowerUp").await?;
        if self.version == Version::V16 {
            // 1.6 reports the charger as a whole (connector 0) too
            let ts = self.ts();
            self.call("StatusNotification", v16::status(0, Plug::Available, &ts))
                .await?;
        }
        self.status(Plug::Available).await?;
        for n in 0..self.cfg.sessions {
            while self.cfg.wait_remote_start && self.requests.remote_start.is_none() {
                self.idle(Duration::from_millis(200)).await?;
            }
            self.session(n).await?;
            self.idle(Duration::from_millis(200)).await?;
        }
        self.call("Heartbeat", json!({})).await?;
        self.disconnect().await;
        Ok(())
    }

    /// One session, the same for both versions: plug in, authorize, start, charge on the
    /// curve (with the charger's faults at mid-session), stop, unplug.
    async fn session(&mut self, n: u32) -> Res<()> {
        let remote = self.requests.remote_start.take();
        let tag = remote
            .as_ref()
            .map_or_else(|| self.tag(), |(t, _)| t.clone());
        self.status(Plug::Preparing).await?;
        // A 2.0.1 station does not authorize a remote start again (its AuthorizeRemoteStart
        // is false); the 1.6 simulator always has.
        if remote.is_none() || self.version == Version::V16 {
            self.authorize(&tag).await?;
        }
        let mut car = Car {
            capacity_wh: 60_000.0,
            soc_pct: 20.0 + (self.index % 5) as f64 * 10.0,
            max_power_w: self.cfg.max_power_w,
        };
        let begin = Reading {
            register_wh: self.begin_register(n),
            power_w: 0.0,
            soc_pct: car.soc_pct,
        };
        self.reading = Reading {
            register_wh: self.register_wh,
            ..begin
        };
        self.start(n, &tag, remote.and_then(|(_, id)| id), &begin)
            .await?;
        lock(&self.summary).sessions_started += 1;
        self.status(Plug::Charging).await?;
        let session_start = Instant::now();
        let start_register = self.register_wh;
        let midpoint = self.cfg.session / 2;
        let mut faulted = false;
        let mut cause = StopCause::EvDisconnected;
        while session_start.elapsed() < self.cfg.session {
            self.idle(self.cfg.meter_interval).await?;
            if self.requests.remote_stop {
                self.requests.remote_stop = false;
                cause = StopCause::Remote;
                break;
            }
            if let Some(hard) = self.requests.reset.take() {
                cause = StopCause::Reset { hard };
                break;
            }
            self.charge(&mut car, self.cfg.meter_interval);
            self.meter("MeterValuePeriodic").await?;
            if !faulted && session_start.elapsed() >= midpoint {
                faulted = true;
                if self.has(FaultKind::Drop) {
                    self.drop_and_return(&mut car).await?;
                } else if self.has(FaultKind::Reboot) && n + 1 < self.cfg.sessions {
                    cause = StopCause::PowerLoss;
                    break;
                }
            }
        }
        let reboots = matches!(cause, StopCause::PowerLoss | StopCause::Reset { .. });
        if reboots {
            // the charger goes away, comes back, boots, and reports the transaction it lost
            self.disconnect().await;
        }
        self.stop(cause).await?;
        {
            let mut s = lock(&self.summary);
            s.sessions_stopped += 1;
            s.energy_wh += self.register_wh - start_register;
        }
        if reboots {
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.connect().await?;
            let reason = match cause {
                StopCause::Reset { .. } => "RemoteReset",
                _ => "PowerUp",
            };
            self.boot(reason).await?;
            self.send_queue().await?;
        } else {
            self.status(Plug::Finishing).await?;
        }
        self.status(Plug::Available).await
    }

    /// Charges the car for `d` of wall-clock time (scaled) and reads the meter.
    /// The limit the profiles it holds put on its charging now, W.
    fn limit_w(&self) -> f64 {
        self.limits.limit_w(self.started.elapsed().as_secs_f64())
    }

    fn charge(&mut self, car: &mut Car, d: Duration) {
        let cap = self.limit_w();
        let wh = car.charge_capped(d.as_secs_f64() * self.cfg.time_scale, cap);
        self.register_wh += wh.round() as i64;
        self.reading = Reading {
            register_wh: self.register_wh,
            power_w: car.power_capped(cap),
            soc_pct: car.soc_pct,
        };
    }

    /// Drops the connection, keeps charging and queueing readings for the offline period,
    /// then reconnects (no BootNotification) and delivers the queue in order.
    async fn drop_and_return(&mut self, car: &mut Car) -> Res<()> {
        self.disconnect().await;
        let away = Instant::now();
        while away.elapsed() < self.cfg.offline {
            tokio::time::sleep(self.cfg.meter_interval).await;
            self.charge(car, self.cfg.meter_interval);
            self.meter("MeterValuePeriodic").await?;
        }
        self.connect().await?;
        self.send_queue().await
    }
}

/// The charger-clock span a run covers at most: sessions, outages and pauses, scaled.
fn scaled_run_length(cfg: &SimConfig) -> chrono::Duration {
    let per_session = cfg.session.as_secs_f64() + cfg.offline.as_secs_f64() + 2.0;
    let secs = f64::from(cfg.sessions) * per_session * (cfg.time_scale - 1.0).max(0.0);
    chrono::Duration::milliseconds((secs * 1000.0) as i64)
}

fn base64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_with_an_optional_charger_index() {
        assert_eq!(
            "drop".parse::<Fault>(),
            Ok(Fault {
                kind: FaultKind::Drop,
                charger: 0
            })
        );
        assert_eq!(
            "reboot=3".parse::<Fault>(),
            Ok(Fault {
                kind: FaultKind::Reboot,
                charger: 3
            })
        );
        assert!("melt".parse::<Fault>().is_err());
    }

    #[test]
    fn basic_auth_is_base64() {
        assert_eq!(base64("CP001:s3cret"), "Q1AwMDE6czNjcmV0");
        assert_eq!(base64("a"), "YQ==");
    }

    #[test]
    fn percentiles_come_from_the_sorted_latencies() {
        let s = Summary {
            latencies_us: (1..=100).map(|v| v * 1000).collect(),
            ..Summary::default()
        };
        assert_eq!(s.percentile_ms(0.5), 51.0);
        assert_eq!(s.percentile_ms(0.99), 99.0);
    }
}
