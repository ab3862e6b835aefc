//! Simulated OCPP 1.6 chargers (`chargesite simulate`), for test rigs and field checks
//! against any central system.
//!
//! Each charger boots, reports status, has a car plugged in, authorizes, starts, sends
//! MeterValues on a charging curve ([`model`]), stops, and answers the central system's
//! CALLs (RemoteStart/Stop, Reset, TriggerMessage, …) meanwhile. Faults on request: a
//! charger that drops its connection mid-session and comes back later with the messages
//! it queued meanwhile, one whose clock is unset, one that reboots mid-session. Everything
//! is bounded by count and time; any protocol error makes the run fail.

pub mod model;

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
use model::Car;

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Drops the connection mid-session, queues its messages, reconnects later.
    Drop,
    /// Its clock is unset (timestamps from 1970).
    Clock,
    /// Reboots mid-session: the transaction ends with `Reboot`, the next one starts with a
    /// `meterStart` of 0 (the classic bad firmware) while the register keeps its value.
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
}

/// What happened.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Chargers that connected.
    pub connected: usize,
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
            "chargers connected: {}\nsessions: {} started, {} stopped\nenergy delivered: {:.3} kWh\nCALLs sent: {} (received: {})\nlatency: p50 {:.2} ms, p99 {:.2} ms\nprotocol errors: {}{}",
            self.connected,
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

/// What the central system asked for.
#[derive(Debug, Default)]
struct Requests {
    remote_stop: bool,
    remote_start: Option<String>,
}

struct SimCharger {
    index: usize,
    id: String,
    cfg: Arc<SimConfig>,
    summary: Arc<Mutex<Summary>>,
    ws: Option<Ws>,
    next_id: u64,
    register_wh: i64,
    started: Instant,
    epoch: DateTime<Utc>,
    requests: Requests,
    /// Messages queued while offline (as a real charger keeps transaction messages).
    queue: VecDeque<(String, Value)>,
}

type Res<T> = Result<T, String>;

impl SimCharger {
    fn new(index: usize, id: String, cfg: Arc<SimConfig>, summary: Arc<Mutex<Summary>>) -> Self {
        let epoch = crate::time::now() - scaled_run_length(&cfg);
        Self {
            index,
            id,
            cfg,
            summary,
            ws: None,
            next_id: 0,
            register_wh: 1_000_000 + index as i64 * 1000,
            started: Instant::now(),
            // A compressed clock starts in the past, so that it reaches the present about when
            // the run ends instead of running ahead of the central system's clock.
            epoch,
            requests: Requests::default(),
            queue: VecDeque::new(),
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

    fn tag(&self) -> String {
        self.cfg.tags[self.index % self.cfg.tags.len()].clone()
    }

    async fn connect(&mut self) -> Res<()> {
        let url = format!("{}/{}", self.cfg.url.trim_end_matches('/'), self.id);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("bad url {url}: {e}"))?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("ocpp1.6"),
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
            != Some("ocpp1.6")
        {
            return Err("central system did not agree to ocpp1.6".into());
        }
        self.ws = Some(ws);
        Ok(())
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

    /// Waits `d`, answering the central system's CALLs meanwhile.
    async fn idle(&mut self, d: Duration) -> Res<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
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
        Ok(())
    }

    /// Answers a CALL from the central system as a real charger would.
    async fn answer(&mut self, call: &Value) -> Res<()> {
        lock(&self.summary).calls_received += 1;
        let id = call[1].clone();
        let action = call[2].as_str().unwrap_or_default();
        let reply = match action {
            "RemoteStopTransaction" => {
                self.requests.remote_stop = true;
                json!([3, id, {"status": "Accepted"}])
            }
            "RemoteStartTransaction" => {
                self.requests.remote_start = call[3]["idTag"].as_str().map(str::to_string);
                json!([3, id, {"status": "Accepted"}])
            }
            "Reset" | "ChangeAvailability" | "ChangeConfiguration" => {
                json!([3, id, {"status": "Accepted"}])
            }
            "UnlockConnector" => json!([3, id, {"status": "Unlocked"}]),
            "TriggerMessage" => json!([3, id, {"status": "Accepted"}]),
            "GetConfiguration" => json!([3, id, {"configurationKey": [
                {"key": "MeterValueSampleInterval", "readonly": false, "value": self.cfg.meter_interval.as_secs().to_string()}]}]),
            _ => json!([
                4,
                id,
                "NotImplemented",
                format!("{action} is not simulated"),
                {}
            ]),
        };
        let ws = self.ws.as_mut().ok_or("not connected")?;
        ws.send(Message::Text(reply.to_string().into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends a transaction message now, or queues it while the connection is down.
    async fn send_or_queue(&mut self, action: &str, payload: Value) -> Res<Option<Value>> {
        if self.ws.is_none() {
            self.queue.push_back((action.to_string(), payload));
            return Ok(None);
        }
        self.call(action, payload).await.map(Some)
    }

    async fn status(&mut self, connector: u32, status: &str) -> Res<()> {
        let ts = fmt_ts(self.now());
        self.call("StatusNotification", json!({"connectorId": connector, "errorCode": "NoError", "status": status, "timestamp": ts}))
            .await
            .map(|_| ())
    }

    async fn boot(&mut self) -> Res<()> {
        let r = self
            .call(
                "BootNotification",
                json!({"chargePointVendor": "chargesite-sim", "chargePointModel": "SIM-22",
                       "chargePointSerialNumber": format!("SN-{}", self.id), "firmwareVersion": env!("CARGO_PKG_VERSION")}),
            )
            .await?;
        if r["status"] != "Accepted" {
            return Err(format!("BootNotification answered {}", r["status"]));
        }
        Ok(())
    }

    async fn life(&mut self) -> Res<()> {
        self.connect().await?;
        lock(&self.summary).connected += 1;
        self.boot().await?;
        self.status(0, "Available").await?;
        self.status(1, "Available").await?;
        for n in 0..self.cfg.sessions {
            let tag = self
                .requests
                .remote_start
                .take()
                .unwrap_or_else(|| self.tag());
            self.session(n, &tag).await?;
            self.idle(Duration::from_millis(200)).await?;
        }
        self.call("Heartbeat", json!({})).await?;
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
        Ok(())
    }

    async fn session(&mut self, n: u32, tag: &str) -> Res<()> {
        self.status(1, "Preparing").await?;
        let a = self.call("Authorize", json!({"idTag": tag})).await?;
        if a["idTagInfo"]["status"] != "Accepted" {
            return Err(format!("tag refused: {}", a["idTagInfo"]["status"]));
        }
        // A rebooted charger with bad firmware starts its next transaction from 0.
        let meter_start = if n > 0 && self.has(FaultKind::Reboot) {
            0
        } else {
            self.register_wh
        };
        let start = self
            .call("StartTransaction", json!({"connectorId": 1, "idTag": tag, "meterStart": meter_start, "timestamp": fmt_ts(self.now())}))
            .await?;
        let tx = start["transactionId"]
            .as_i64()
            .ok_or("StartTransaction without transactionId")?;
        if start["idTagInfo"]["status"] != "Accepted" {
            return Err(format!(
                "StartTransaction refused the tag: {}",
                start["idTagInfo"]["status"]
            ));
        }
        lock(&self.summary).sessions_started += 1;
        self.status(1, "Charging").await?;
        let mut car = Car {
            capacity_wh: 60_000.0,
            soc_pct: 20.0 + (self.index % 5) as f64 * 10.0,
            max_power_w: self.cfg.max_power_w,
        };
        let session_start = Instant::now();
        let start_register = self.register_wh;
        let midpoint = self.cfg.session / 2;
        let mut faulted = false;
        let mut reason = "EVDisconnected";
        while session_start.elapsed() < self.cfg.session && !self.requests.remote_stop {
            self.idle(self.cfg.meter_interval).await?;
            let secs = self.cfg.meter_interval.as_secs_f64() * self.cfg.time_scale;
            let wh = car.charge(secs);
            self.register_wh += wh.round() as i64;
            let mv = json!({"connectorId": 1, "transactionId": tx, "meterValue": [{
                "timestamp": fmt_ts(self.now()),
                "sampledValue": model::sampled_values(self.register_wh, car.power_w(), car.soc_pct, "Sample.Periodic")}]});
            self.send_or_queue("MeterValues", mv).await?;
            if !faulted && session_start.elapsed() >= midpoint {
                faulted = true;
                if self.has(FaultKind::Drop) {
                    self.drop_and_return(tx, &mut car).await?;
                } else if self.has(FaultKind::Reboot) && n + 1 < self.cfg.sessions {
                    reason = "Reboot";
                    break;
                }
            }
        }
        if self.requests.remote_stop {
            reason = "Remote";
            self.requests.remote_stop = false;
        }
        if reason == "Reboot" {
            // the charger goes away, comes back, boots, and reports the transaction it lost
            if let Some(mut ws) = self.ws.take() {
                let _ = ws.close(None).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.connect().await?;
            self.boot().await?;
            self.status(1, "Available").await?;
        }
        let stop = json!({"transactionId": tx, "meterStop": self.register_wh, "timestamp": fmt_ts(self.now()),
            "reason": reason, "idTag": tag,
            "transactionData": [{"timestamp": fmt_ts(self.now()),
                "sampledValue": model::sampled_values(self.register_wh, 0.0, car.soc_pct, "Transaction.End")}]});
        self.call("StopTransaction", stop).await?;
        {
            let mut s = lock(&self.summary);
            s.sessions_stopped += 1;
            s.energy_wh += self.register_wh - start_register;
        }
        if reason != "Reboot" {
            self.status(1, "Finishing").await?;
            self.status(1, "Available").await?;
        }
        Ok(())
    }

    /// Drops the connection, keeps charging and queueing MeterValues for the offline
    /// period, then reconnects (no BootNotification) and delivers the queue in order.
    async fn drop_and_return(&mut self, tx: i64, car: &mut Car) -> Res<()> {
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
        let away = Instant::now();
        while away.elapsed() < self.cfg.offline {
            tokio::time::sleep(self.cfg.meter_interval).await;
            let wh = car.charge(self.cfg.meter_interval.as_secs_f64() * self.cfg.time_scale);
            self.register_wh += wh.round() as i64;
            let mv = json!({"connectorId": 1, "transactionId": tx, "meterValue": [{
                "timestamp": fmt_ts(self.now()),
                "sampledValue": model::sampled_values(self.register_wh, car.power_w(), car.soc_pct, "Sample.Periodic")}]});
            self.send_or_queue("MeterValues", mv).await?;
        }
        self.connect().await?;
        while let Some((action, payload)) = self.queue.pop_front() {
            self.call(&action, payload).await?;
        }
        Ok(())
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
