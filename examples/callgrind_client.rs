//! The load side of `benches/callgrind.sh`: a fixed, deterministic OCPP 1.6J workload
//! against an agent that runs under `valgrind --tool=callgrind`, with the MeterValues
//! phase bracketed by `callgrind_control --zero` and `--dump` on the agent's pid.
//!
//! Not a standalone benchmark: the script starts the agent and reads the dump. This binary
//! connects `--chargers` chargers one after the other (BootNotification, then
//! StartTransaction, as in `benches/ocpp_load.rs`), sends one warm-up MeterValues per
//! charger, zeroes the agent's counters, then sends `--meter-values` MeterValues per charger
//! round-robin with exactly one CALL outstanding in the whole run, so every group commit
//! holds one MeterValues and the batch structure does not depend on timing. After the last
//! CALLRESULT (and a short quiet period) it dumps the counters and prints the count.
//!
//! The payload is the three-phase, 9-sampledValue reading of `benches/ocpp_load.rs`, with
//! values that depend only on the charger's index and the reading's number (the register
//! steps 5 Wh per reading, always plausible); only the timestamp is the wall clock, in a
//! fixed-width format.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Generous: the agent runs ~50x slower under callgrind.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Before zeroing and before dumping: lets the agent finish what a reply started (the
/// checkpoint thread runs at most every 250 ms after a commit), so both ends of the
/// measured window see the agent idle.
const QUIET: Duration = Duration::from_millis(600);

struct Args {
    addr: SocketAddr,
    pid: u32,
    chargers: usize,
    meter_values: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: callgrind_client --addr HOST:PORT --pid AGENT_PID [--chargers N] [--meter-values N]\n\
         (run by benches/callgrind.sh)"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut addr = None;
    let mut pid = None;
    let mut chargers = 20;
    let mut meter_values = 50;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--addr" => addr = val().parse().ok(),
            "--pid" => pid = val().parse().ok(),
            "--chargers" => chargers = val().parse().unwrap_or_else(|_| usage()),
            "--meter-values" => meter_values = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    match (addr, pid) {
        (Some(addr), Some(pid)) if chargers > 0 && meter_values > 0 => Args {
            addr,
            pid,
            chargers,
            meter_values,
        },
        _ => usage(),
    }
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(&args)) {
        eprintln!("callgrind_client: {e}");
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let mut chargers = Vec::with_capacity(args.chargers);
    for i in 0..args.chargers {
        let mut c = Charger::connect(args.addr, i).await?;
        c.boot_and_start().await?;
        chargers.push(c);
    }
    // Warm-up: every charger's first reading (the session's first register step, the
    // statement cache) stays out of the figure.
    for c in &mut chargers {
        c.meter_values().await?;
    }
    tokio::time::sleep(QUIET).await;
    callgrind_control("--zero", args.pid)?;
    let window = std::time::Instant::now();
    for _ in 0..args.meter_values {
        for c in &mut chargers {
            c.meter_values().await?;
        }
    }
    tokio::time::sleep(QUIET).await;
    callgrind_control("--dump", args.pid)?;
    let measured = args.chargers * args.meter_values;
    println!(
        "callgrind_client: {} chargers x {} MeterValues = {measured} acknowledged in the measured window ({:.1} s)",
        args.chargers,
        args.meter_values,
        window.elapsed().as_secs_f64()
    );
    Ok(())
}

fn callgrind_control(what: &str, pid: u32) -> Result<(), String> {
    let out = Command::new("callgrind_control")
        .arg(what)
        .arg(pid.to_string())
        .output()
        .map_err(|e| format!("callgrind_control {what}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("OK") {
        return Err(format!(
            "callgrind_control {what} {pid} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

struct Charger {
    cp_id: String,
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
    transaction_id: i64,
    meter_start_wh: i64,
    power_w: f64,
    soc_start: f64,
    readings: i64,
}

/// The charger's clock: now, RFC 3339 UTC with milliseconds (always 24 characters).
fn rfc3339_now() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Charger {
    async fn connect(addr: SocketAddr, i: usize) -> Result<Charger, String> {
        let cp_id = format!("BENCH-{i:04}");
        let mut req = format!("ws://{addr}/ocpp/{cp_id}")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("ocpp1.6"),
        );
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{cp_id}: tcp connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| format!("{cp_id}: handshake: {e}"))?;
        if resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|h| h.to_str().ok())
            != Some("ocpp1.6")
        {
            return Err(format!("{cp_id}: subprotocol ocpp1.6 not negotiated"));
        }
        // Fixed per charger (no RNG): 7.4 to 22 kW AC, 10 to 60 % SoC, 7-digit registers.
        let f = (i % 20) as f64 / 20.0;
        Ok(Charger {
            cp_id,
            ws,
            next_id: 0,
            transaction_id: 0,
            meter_start_wh: 1_000_000 + (i as i64 % 20) * 400_000,
            power_w: (7_400.0 + f * 14_600.0f64).round(),
            soc_start: 10.0 + f * 50.0,
            readings: 0,
        })
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{}", self.next_id)
    }

    /// Sends one CALL and returns its CALLRESULT payload; anything else is an error.
    async fn call(&mut self, action: &str, frame: String, id: &str) -> Result<Value, String> {
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|e| format!("{}: {action}: send: {e}", self.cp_id))?;
        loop {
            let m = tokio::time::timeout(CALL_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| format!("{}: {action}: no answer", self.cp_id))?;
            let t = match m {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => {
                    return Err(format!("{}: {action}: closed", self.cp_id))
                }
                Some(Err(e)) => return Err(format!("{}: {action}: {e}", self.cp_id)),
                Some(Ok(_)) => continue, // pings are answered by tungstenite
            };
            let mut v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
            if v[0] == 3 && v[1] == id {
                return Ok(v[2].take());
            }
            return Err(format!("{}: {action}: answer {t}", self.cp_id));
        }
    }

    async fn call_value(&mut self, action: &str, payload: Value) -> Result<Value, String> {
        let id = self.id();
        let frame = serde_json::json!([2, id, action, payload]).to_string();
        self.call(action, frame, &id).await
    }

    async fn boot_and_start(&mut self) -> Result<(), String> {
        let boot = self
            .call_value(
                "BootNotification",
                serde_json::json!({
                    "chargePointVendor": "BenchVendor",
                    "chargePointModel": "AC22-3P",
                    "chargePointSerialNumber": format!("SN-{}", self.cp_id),
                    "firmwareVersion": "4.2.1",
                    "meterType": "MID-3P",
                }),
            )
            .await?;
        if boot["status"] != "Accepted" {
            return Err(format!("{}: boot answered {boot}", self.cp_id));
        }
        let start = self
            .call_value(
                "StartTransaction",
                serde_json::json!({
                    "connectorId": 1,
                    "idTag": format!("TAG{}", &self.cp_id[6..]),
                    "meterStart": self.meter_start_wh,
                    "timestamp": rfc3339_now(),
                }),
            )
            .await?;
        if start["idTagInfo"]["status"] != "Accepted" {
            return Err(format!("{}: start answered {start}", self.cp_id));
        }
        self.transaction_id = start["transactionId"]
            .as_i64()
            .ok_or_else(|| format!("{}: start answered {start}", self.cp_id))?;
        Ok(())
    }

    /// The three-phase AC MeterValues CALL of `benches/ocpp_load.rs` (register, power,
    /// current and voltage per phase, SoC), with deterministic values.
    fn meter_values_frame(&mut self, id: &str) -> String {
        self.readings += 1;
        let wh = self.meter_start_wh + 5 * self.readings;
        let soc = self.soc_start + 0.1 * (self.readings % 100) as f64;
        let amps = self.power_w / 3.0 / 230.0;
        let ts = rfc3339_now();
        format!(
            concat!(
                r#"[2,"{id}","MeterValues",{{"connectorId":1,"transactionId":{tx},"meterValue":[{{"timestamp":"{ts}","sampledValue":["#,
                r#"{{"value":"{wh}","context":"Sample.Periodic","format":"Raw","measurand":"Energy.Active.Import.Register","location":"Outlet","unit":"Wh"}},"#,
                r#"{{"value":"{w:.0}","context":"Sample.Periodic","measurand":"Power.Active.Import","location":"Outlet","unit":"W"}},"#,
                r#"{{"value":"{a1:.2}","context":"Sample.Periodic","measurand":"Current.Import","phase":"L1","location":"Outlet","unit":"A"}},"#,
                r#"{{"value":"{a2:.2}","context":"Sample.Periodic","measurand":"Current.Import","phase":"L2","location":"Outlet","unit":"A"}},"#,
                r#"{{"value":"{a3:.2}","context":"Sample.Periodic","measurand":"Current.Import","phase":"L3","location":"Outlet","unit":"A"}},"#,
                r#"{{"value":"{v1:.1}","context":"Sample.Periodic","measurand":"Voltage","phase":"L1-N","location":"Outlet","unit":"V"}},"#,
                r#"{{"value":"{v2:.1}","context":"Sample.Periodic","measurand":"Voltage","phase":"L2-N","location":"Outlet","unit":"V"}},"#,
                r#"{{"value":"{v3:.1}","context":"Sample.Periodic","measurand":"Voltage","phase":"L3-N","location":"Outlet","unit":"V"}},"#,
                r#"{{"value":"{soc:.1}","context":"Sample.Periodic","measurand":"SoC","location":"EV","unit":"Percent"}}"#,
                r#"]}}]}}]"#
            ),
            id = id,
            tx = self.transaction_id,
            ts = ts,
            wh = wh,
            w = self.power_w,
            a1 = amps,
            a2 = amps * 1.01,
            a3 = amps * 0.99,
            v1 = 230.4,
            v2 = 229.8,
            v3 = 231.1,
            soc = soc,
        )
    }

    async fn meter_values(&mut self) -> Result<(), String> {
        let id = self.id();
        let frame = self.meter_values_frame(&id);
        let answer = self.call("MeterValues", frame, &id).await?;
        if answer.as_object().is_some_and(|o| o.is_empty()) {
            Ok(())
        } else {
            Err(format!("{}: MeterValues answered {answer}", self.cp_id))
        }
    }
}
