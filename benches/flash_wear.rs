//! `cargo bench --bench flash_wear`: bytes the real release `chargesite` binary writes to
//! disk per acknowledged MeterValues, the figure that decides how long a gateway's flash
//! lasts.
//!
//! The agent runs in its own process on a temp config and a temp SQLite file under
//! `target/tmp` (the project's disk, never tmpfs), as in `ocpp_load`. 20 OCPP 1.6J
//! chargers connect, boot and start one transaction each; then each sends a realistic
//! three-phase MeterValues (register, power, 3 currents, 3 voltages, SoC) every second on
//! its own random phase for [`FAST_WINDOW`], and, on a fresh agent, every 10 s for
//! [`SLOW_WINDOW`]. The figure is `/proc/<agent>/io` `write_bytes` (what the kernel sent
//! to the block device on the agent's behalf: WAL appends, checkpoints, fsyncs' data)
//! over the window, divided by the MeterValues answered with a CALLRESULT in it. Every
//! such answer stands for a committed, fsynced row, so this is the cost of keeping
//! "durable before acknowledged". Byte counts do not swing with a busy box; timings do.
//!
//! `FLASH_WEAR_STRACE=1` also counts the agent's fsync/fdatasync calls (strace -c on the
//! running agent; it slows the agent, the byte counts stay comparable).
//! `FLASH_WEAR_CONFIG_EXTRA` appends TOML to the agent's config, for experiments.
//!
//! Bounded: 20 chargers, two fixed windows, a few minutes in all; only 127.0.0.1. Exits
//! non-zero only if the run breaks (a charger cannot connect, or a CALL is refused).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const CHARGERS: usize = 20;
/// The 1 s phase: the issue's load (20 chargers, 1 reading per second each).
const FAST_WINDOW: Duration = Duration::from_secs(60);
/// The 10 s phase: fewer readings, so each one is more likely to be a commit of its own.
const SLOW_WINDOW: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// The issue's target at 20 chargers × 1 s.
const TARGET_BYTES_PER_READING: f64 = 8_000.0;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("flash_wear: skipped (run it with `cargo bench --bench flash_wear`)");
        return;
    }
    let bin = std::env::var_os("FLASH_WEAR_AGENT_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_chargesite")),
        PathBuf::from,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        let strace = std::env::var("FLASH_WEAR_STRACE").is_ok_and(|v| v == "1");
        let extra = std::env::var("FLASH_WEAR_CONFIG_EXTRA").unwrap_or_default();
        println!(
            "flash_wear: {CHARGERS} chargers, OCPP 1.6J MeterValues (9 sampled values), real \
             agent {}, store on {}{}",
            bin.display(),
            fs_of(Path::new(env!("CARGO_TARGET_TMPDIR"))),
            if extra.is_empty() {
                String::new()
            } else {
                format!(", config extra {extra:?}")
            }
        );
        let mut per_reading = Vec::new();
        for (period, window) in [
            (Duration::from_secs(1), FAST_WINDOW),
            (Duration::from_secs(10), SLOW_WINDOW),
        ] {
            match phase(&bin, period, window, strace).await {
                Ok(b) => per_reading.push((period, b)),
                Err(e) => {
                    eprintln!("flash_wear: {e}");
                    return 1;
                }
            }
        }
        let fast = per_reading[0].1;
        let slow = per_reading[1].1;
        println!("daily write volume, {CHARGERS} chargers:");
        for (secs, b, how) in [
            (1.0, fast, "measured at 1 s"),
            (10.0, slow, "measured at 10 s"),
            (60.0, slow, "per-reading cost of the 10 s run"),
        ] {
            let readings = CHARGERS as f64 * 86_400.0 / secs;
            println!(
                "  every {secs:>2} s: {:>8.0} readings/day x {:>6.1} KB = {:>7.2} GB/day ({how})",
                readings,
                b / 1e3,
                readings * b / 1e9
            );
        }
        if fast > TARGET_BYTES_PER_READING {
            println!(
                "  MISSED target: {:.1} KB per reading at 1 s (target <= {:.1} KB)",
                fast / 1e3,
                TARGET_BYTES_PER_READING / 1e3
            );
        }
        0
    });
    std::process::exit(code);
}

/// One fresh agent, [`CHARGERS`] chargers each sending a MeterValues every `period` for
/// `window`; returns write_bytes per acknowledged reading.
async fn phase(
    bin: &Path,
    period: Duration,
    window: Duration,
    strace: bool,
) -> Result<f64, String> {
    let mut agent = Agent::start(bin);
    let mut chargers = Vec::with_capacity(CHARGERS);
    for i in 0..CHARGERS {
        let mut c = Charger::connect(agent.addr, i).await?;
        c.boot_and_start().await?;
        chargers.push(c);
    }
    // Let the setup's commits and their checkpoint settle before the window opens.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tracer = strace.then(|| start_strace(agent.pid));
    tokio::time::sleep(Duration::from_millis(if strace { 500 } else { 0 })).await;
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let before = io_field(agent.pid, "write_bytes");
    let syscw_before = io_field(agent.pid, "syscw");
    let start = tokio::time::Instant::now();
    let end = start + window;
    let mut tasks = Vec::new();
    for (i, mut c) in chargers.into_iter().enumerate() {
        let acked = acked.clone();
        let errors = errors.clone();
        // Spread the chargers' phases over the period, as real chargers are.
        let offset = period.mul_f64(i as f64 / CHARGERS as f64);
        tasks.push(tokio::spawn(async move {
            let mut next = start + offset;
            while next < end {
                tokio::time::sleep_until(next).await;
                match c.meter_values().await {
                    Ok(()) => acked.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("flash_wear: {}: {e}", c.cp_id);
                        }
                        0
                    }
                };
                next += period;
            }
            c
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let after = io_field(agent.pid, "write_bytes");
    let syscw = io_field(agent.pid, "syscw") - syscw_before;
    let fsyncs = tracer.map(stop_strace);
    let acked = acked.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    let db = agent.db_path();
    let sizes = ["", "-wal"]
        .iter()
        .map(|s| {
            let p = PathBuf::from(format!("{}{s}", db.display()));
            std::fs::metadata(&p).map_or(0, |m| m.len())
        })
        .collect::<Vec<_>>();
    agent.sigkill();
    if errors > 0 || acked == 0 {
        return Err(format!(
            "{errors} MeterValues not acknowledged ({acked} acknowledged); agent log:\n{}",
            agent.log_tail()
        ));
    }
    let bytes = after.saturating_sub(before);
    let per = bytes as f64 / acked as f64;
    println!(
        "every {:>2} s for {} s: {acked} readings acknowledged, write_bytes {:.2} MB, \
         {:.1} KB per reading ({:.1} 4 KiB blocks), {:.1} write syscalls per reading{}; \
         db {:.2} MB, wal {:.2} MB",
        period.as_secs(),
        window.as_secs(),
        bytes as f64 / 1e6,
        per / 1e3,
        per / 4096.0,
        syscw as f64 / acked as f64,
        fsyncs.map_or(String::new(), |n| format!(
            ", {:.2} fsync+fdatasync per reading",
            n as f64 / acked as f64
        )),
        sizes[0] as f64 / 1e6,
        sizes[1] as f64 / 1e6,
    );
    Ok(per)
}

/// A numeric field of `/proc/<pid>/io`.
fn io_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().parse().ok())
        .unwrap_or(0)
}

fn start_strace(pid: u32) -> Child {
    Command::new("strace")
        .args(["-c", "-f", "-e", "trace=fsync,fdatasync", "-p"])
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strace")
}

/// Stops strace with SIGINT (it prints its summary then) and sums its call counts.
fn stop_strace(mut child: Child) -> u64 {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let mut out = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut out);
    }
    let _ = child.wait();
    out.lines()
        .filter(|l| l.ends_with("fsync") || l.ends_with("fdatasync"))
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .sum()
}

/// "ext4 on /dev/vda" for the mount holding `p`.
fn fs_of(p: &Path) -> String {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            p.starts_with(mnt)
                .then(|| (mnt.len(), format!("{ty} on {dev}")))
        })
        .max_by_key(|(n, _)| *n)
        .map_or_else(|| "unknown fs".into(), |(_, s)| s)
}

// ---------------------------------------------------------------------------------------
// The agent process

struct Agent {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(bin: &Path) -> Agent {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&base).expect("create target/tmp");
        let dir = tempfile::Builder::new()
            .prefix("flash_wear-")
            .tempdir_in(&base)
            .expect("temp dir");
        let db = dir.path().join("cs.db");
        let extra = std::env::var("FLASH_WEAR_CONFIG_EXTRA")
            .map(|e| format!("\n{}\n", e.replace("\\n", "\n")))
            .unwrap_or_default();
        let config = dir.path().join("chargesite.toml");
        std::fs::write(
            &config,
            format!(
                "[site]\nid = \"bench-site\"\n\n\
                 [ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\n\n\
                 [auth]\nfree_vend = true\n\n\
                 [store]\npath = \"{}\"\n{extra}",
                db.display()
            ),
        )
        .expect("write config");
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("CHARGESITE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let pid = child.id();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read agent stdout");
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        // This process writes the log file, so the agent's write_bytes stays its store's.
        let stderr = child.stderr.take().expect("stderr");
        let log = dir.path().join("agent.log");
        std::thread::spawn(move || {
            if let Ok(mut f) = std::fs::File::create(log) {
                let _ = std::io::copy(&mut BufReader::new(stderr), &mut f);
            }
        });
        let Some(addr) = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent did not report its address (first line {line:?})");
        };
        Agent {
            child,
            pid,
            addr,
            dir,
        }
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("cs.db")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// A charger

struct Charger {
    cp_id: String,
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
    transaction_id: i64,
    meter_start_wh: i64,
    power_w: f64,
    soc_start: f64,
    started: Instant,
}

impl Charger {
    async fn connect(addr: SocketAddr, i: usize) -> Result<Charger, String> {
        let cp_id = format!("WEAR-{i:04}");
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
        let (ws, _) = tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| format!("{cp_id}: handshake: {e}"))?;
        // Fixed per charger, so two runs write the same values: 7.4 to 22 kW AC.
        let f = i as f64 / CHARGERS as f64;
        Ok(Charger {
            cp_id,
            ws,
            next_id: 0,
            transaction_id: 0,
            meter_start_wh: 1_000_000 + (f * 9_000_000.0) as i64,
            power_w: 7_400.0 + f * 14_600.0,
            soc_start: 10.0 + f * 50.0,
            started: Instant::now(),
        })
    }

    /// Sends one CALL and returns its CALLRESULT payload.
    async fn call(&mut self, frame_for: impl FnOnce(&str) -> String) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let frame = frame_for(&id);
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|e| format!("send: {e}"))?;
        loop {
            let m = tokio::time::timeout(CALL_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| "no answer within the call timeout".to_string())?;
            let t = match m {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => return Err("closed by the agent".into()),
                Some(Err(e)) => return Err(format!("socket: {e}")),
                Some(Ok(_)) => continue,
            };
            let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
            if v[0] == 3 && v[1] == id.as_str() {
                return Ok(v[2].clone());
            }
            return Err(format!("answer {t}"));
        }
    }

    async fn call_value(&mut self, action: &str, payload: Value) -> Result<Value, String> {
        let cp_id = self.cp_id.clone();
        self.call(|id| serde_json::json!([2, id, action, payload]).to_string())
            .await
            .map_err(|e| format!("{cp_id}: {action}: {e}"))
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
                    "idTag": format!("TAG{}", &self.cp_id[5..]),
                    "meterStart": self.meter_start_wh,
                    "timestamp": rfc3339_now(),
                }),
            )
            .await?;
        self.transaction_id = start["transactionId"]
            .as_i64()
            .ok_or_else(|| format!("{}: start answered {start}", self.cp_id))?;
        self.started = Instant::now();
        Ok(())
    }

    /// The same three-phase AC MeterValues as `ocpp_load` sends.
    async fn meter_values(&mut self) -> Result<(), String> {
        let secs = self.started.elapsed().as_secs_f64();
        let wh = self.meter_start_wh + (self.power_w * secs / 3600.0) as i64;
        let soc = (self.soc_start + self.power_w * secs / 3600.0 / 77_000.0 * 100.0).min(100.0);
        let amps = self.power_w / 3.0 / 230.0;
        let (tx, w, ts) = (self.transaction_id, self.power_w, rfc3339_now());
        self.call(|id| {
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
                tx = tx,
                ts = ts,
                wh = wh,
                w = w,
                a1 = amps,
                a2 = amps * 1.01,
                a3 = amps * 0.99,
                v1 = 230.4,
                v2 = 229.8,
                v3 = 231.1,
                soc = soc,
            )
        })
        .await
        .map(|_| ())
    }
}

fn rfc3339_now() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
