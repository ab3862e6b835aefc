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
//!
//! `--ocpp 2.0.1`: the same workload as the 2.0.1 phase of `benches/ocpp_load.rs` sends it:
//! subprotocol `ocpp2.0.1`, BootNotification and TransactionEvent(Started) per charger, then
//! TransactionEvent(Updated) (`MeterValuePeriodic`, seqNo counting up) with the three-phase
//! meterValue of 11 numeric sampledValues, deterministic as above; the payloads are checked
//! against the official 2.0.1 schema before anything is sent.

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
    v201: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: callgrind_client --addr HOST:PORT --pid AGENT_PID [--chargers N] [--meter-values N] [--ocpp 1.6|2.0.1]\n\
         (run by benches/callgrind.sh)"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut addr = None;
    let mut pid = None;
    let mut chargers = 20;
    let mut meter_values = 50;
    let mut v201 = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--addr" => addr = val().parse().ok(),
            "--pid" => pid = val().parse().ok(),
            "--chargers" => chargers = val().parse().unwrap_or_else(|_| usage()),
            "--meter-values" => meter_values = val().parse().unwrap_or_else(|_| usage()),
            "--ocpp" => {
                v201 = match val().as_str() {
                    "1.6" => false,
                    "2.0.1" => true,
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    match (addr, pid) {
        (Some(addr), Some(pid)) if chargers > 0 && meter_values > 0 => Args {
            addr,
            pid,
            chargers,
            meter_values,
            v201,
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
    if args.v201 {
        validate_v201()?;
    }
    let mut chargers = Vec::with_capacity(args.chargers);
    for i in 0..args.chargers {
        let mut c = Charger::connect(args.addr, i, args.v201).await?;
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
        "callgrind_client: {} chargers x {} {} = {measured} acknowledged in the measured window ({:.1} s)",
        args.chargers,
        args.meter_values,
        if args.v201 {
            "TransactionEvent(Updated)"
        } else {
            "MeterValues"
        },
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
    v201: bool,
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
    transaction_id: i64,
    /// 2.0.1: the charger's transactionId.
    tx_uuid: String,
    /// 2.0.1: the next seqNo.
    seq_no: u64,
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
    async fn connect(addr: SocketAddr, i: usize, v201: bool) -> Result<Charger, String> {
        let cp_id = format!("BENCH-{i:04}");
        let proto = if v201 { "ocpp2.0.1" } else { "ocpp1.6" };
        let mut req = format!("ws://{addr}/ocpp/{cp_id}")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(proto));
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
            != Some(proto)
        {
            return Err(format!("{cp_id}: subprotocol {proto} not negotiated"));
        }
        // Fixed per charger (no RNG): 7.4 to 22 kW AC, 10 to 60 % SoC, 7-digit registers.
        let f = (i % 20) as f64 / 20.0;
        Ok(Charger {
            cp_id,
            v201,
            ws,
            next_id: 0,
            transaction_id: 0,
            tx_uuid: format!("7f3c1a2e-0000-4000-8000-{i:012x}"),
            seq_no: 0,
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
        if self.v201 {
            return self.boot_and_start_201().await;
        }
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

    async fn boot_and_start_201(&mut self) -> Result<(), String> {
        let boot = self
            .call_value("BootNotification", v201_boot(&self.cp_id))
            .await?;
        if boot["status"] != "Accepted" {
            return Err(format!("{}: boot answered {boot}", self.cp_id));
        }
        let started = v201_started(&self.tx_uuid, self.meter_start_wh, &rfc3339_now());
        let start = self.call_value("TransactionEvent", started).await?;
        if start["idTokenInfo"]["status"] != "Accepted" {
            return Err(format!("{}: Started answered {start}", self.cp_id));
        }
        self.seq_no = 1;
        Ok(())
    }

    async fn meter_values(&mut self) -> Result<(), String> {
        let id = self.id();
        let (action, frame) = if self.v201 {
            self.readings += 1;
            let wh = self.meter_start_wh + 5 * self.readings;
            let soc = self.soc_start + 0.1 * (self.readings % 100) as f64;
            let seq = self.seq_no;
            self.seq_no += 1;
            let frame = v201_updated(
                &id,
                &self.tx_uuid,
                seq,
                &rfc3339_now(),
                wh,
                self.power_w,
                soc,
            );
            ("TransactionEvent", frame)
        } else {
            ("MeterValues", self.meter_values_frame(&id))
        };
        let answer = self.call(action, frame, &id).await?;
        if answer.as_object().is_some_and(|o| o.is_empty()) {
            Ok(())
        } else {
            Err(format!("{}: {action} answered {answer}", self.cp_id))
        }
    }
}

fn v201_boot(cp_id: &str) -> Value {
    serde_json::json!({
        "reason": "PowerUp",
        "chargingStation": {
            "model": "AC22-3P",
            "vendorName": "BenchVendor",
            "serialNumber": format!("SN-{cp_id}"),
            "firmwareVersion": "4.2.1",
            "modem": {"iccid": "8949020000000000001", "imsi": "262010000000001"},
        },
    })
}

fn v201_started(tx: &str, wh: i64, ts: &str) -> Value {
    serde_json::json!({
        "eventType": "Started",
        "timestamp": ts,
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": tx, "chargingState": "Charging"},
        "evse": {"id": 1, "connectorId": 1},
        "idToken": {"idToken": "04A1B2C3D4E5F6", "type": "ISO14443"},
        "meterValue": [{"timestamp": ts, "sampledValue": [{
            "value": wh, "context": "Transaction.Begin",
            "measurand": "Energy.Active.Import.Register", "location": "Outlet",
            "unitOfMeasure": {"unit": "Wh"},
        }]}],
    })
}

/// The TransactionEvent(Updated) of `benches/ocpp_load.rs` (`v201_updated` there): register,
/// power, current and voltage per phase, SoC, numeric values.
fn v201_updated(id: &str, tx: &str, seq_no: u64, ts: &str, wh: i64, w: f64, soc: f64) -> String {
    let amps = w / 3.0 / 230.0;
    let (a1, a2, a3) = (amps * 1.01, amps, amps * 0.99);
    let (v1, v2, v3) = (230.4, 229.8, 231.1);
    let (p1, p2, p3) = (a1 * v1, a2 * v2, a3 * v3);
    format!(
        concat!(
            r#"[2,"{id}","TransactionEvent",{{"eventType":"Updated","timestamp":"{ts}","triggerReason":"MeterValuePeriodic","seqNo":{seq},"#,
            r#""transactionInfo":{{"transactionId":"{tx}","chargingState":"Charging"}},"meterValue":[{{"timestamp":"{ts}","sampledValue":["#,
            r#"{{"value":{wh},"context":"Sample.Periodic","measurand":"Energy.Active.Import.Register","location":"Outlet","unitOfMeasure":{{"unit":"Wh"}}}},"#,
            r#"{{"value":{p1:.0},"context":"Sample.Periodic","measurand":"Power.Active.Import","phase":"L1","location":"Outlet","unitOfMeasure":{{"unit":"W"}}}},"#,
            r#"{{"value":{p2:.0},"context":"Sample.Periodic","measurand":"Power.Active.Import","phase":"L2","location":"Outlet","unitOfMeasure":{{"unit":"W"}}}},"#,
            r#"{{"value":{p3:.0},"context":"Sample.Periodic","measurand":"Power.Active.Import","phase":"L3","location":"Outlet","unitOfMeasure":{{"unit":"W"}}}},"#,
            r#"{{"value":{a1:.2},"context":"Sample.Periodic","measurand":"Current.Import","phase":"L1","location":"Outlet","unitOfMeasure":{{"unit":"A"}}}},"#,
            r#"{{"value":{a2:.2},"context":"Sample.Periodic","measurand":"Current.Import","phase":"L2","location":"Outlet","unitOfMeasure":{{"unit":"A"}}}},"#,
            r#"{{"value":{a3:.2},"context":"Sample.Periodic","measurand":"Current.Import","phase":"L3","location":"Outlet","unitOfMeasure":{{"unit":"A"}}}},"#,
            r#"{{"value":{v1:.1},"context":"Sample.Periodic","measurand":"Voltage","phase":"L1-N","location":"Outlet","unitOfMeasure":{{"unit":"V"}}}},"#,
            r#"{{"value":{v2:.1},"context":"Sample.Periodic","measurand":"Voltage","phase":"L2-N","location":"Outlet","unitOfMeasure":{{"unit":"V"}}}},"#,
            r#"{{"value":{v3:.1},"context":"Sample.Periodic","measurand":"Voltage","phase":"L3-N","location":"Outlet","unitOfMeasure":{{"unit":"V"}}}},"#,
            r#"{{"value":{soc:.1},"context":"Sample.Periodic","measurand":"SoC","location":"EV","unitOfMeasure":{{"unit":"Percent"}}}}"#,
            r#"]}}]}}]"#
        ),
        id = id,
        tx = tx,
        seq = seq_no,
        ts = ts,
        wh = wh,
        p1 = p1,
        p2 = p2,
        p3 = p3,
        a1 = a1,
        a2 = a2,
        a3 = a3,
        v1 = v1,
        v2 = v2,
        v3 = v3,
        soc = soc,
    )
}

/// The 2.0.1 payloads this client sends, against the official 2.0.1 schemas.
fn validate_v201() -> Result<(), String> {
    use chargesite::ocpp::v201::schema::validate;
    let ts = rfc3339_now();
    let tx = "7f3c1a2e-0000-4000-8000-000000000000";
    let check =
        |name: &str, v: &Value| validate(name, v).map_err(|e| format!("{name}: {e:?} in {v}"));
    check("BootNotificationRequest", &v201_boot("BENCH-0000"))?;
    check("TransactionEventRequest", &v201_started(tx, 1_000_000, &ts))?;
    let frame: Value =
        serde_json::from_str(&v201_updated("1", tx, 1, &ts, 1_000_005, 7_400.0, 10.1))
            .map_err(|e| format!("Updated frame is not JSON: {e}"))?;
    check("TransactionEventRequest", &frame[3])
}
