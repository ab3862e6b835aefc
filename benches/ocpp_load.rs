//! `cargo bench --bench ocpp_load`: the real release `chargesite` binary under 1,000
//! OCPP 1.6J chargers over loopback, then under 1,000 OCPP 2.0.1 chargers.
//!
//! The agent runs in its own process (the `chargesite` binary cargo builds for this bench
//! with the bench profile, which inherits `[profile.release]`: it is `target/release/
//! chargesite`) on a temp config and a temp SQLite file on disk (under `target/tmp`, never
//! tmpfs). The load generator runs here, on a multi-thread tokio runtime that shares the
//! box's cores with the agent; that sharing is part of the measured setup.
//!
//! Figures:
//! 1. saturation: 1,000 chargers each send MeterValues back to back (one outstanding CALL
//!    per charger, as OCPP-J allows); CALLRESULTs received in a fixed window after a
//!    warm-up, per second. Every CALLRESULT stands for a committed, fsynced row.
//! 2. paced: each charger sends one MeterValues every 100 ms on its own schedule with a
//!    random phase (10,000/s offered in total); p50/p99 of CALL→CALLRESULT per CALL.
//! 3. agent RSS: VmRSS idle with 1,000 chargers connected, VmHWM after both phases.
//!
//! Afterwards the agent is SIGKILLed (no graceful flush) and the SQLite file is opened:
//! every charger must have at least as many `meter_values` rows as MeterValues it had
//! acknowledged.
//!
//! 4. 2.0.1 saturation (issue 9): a fresh agent on a fresh database; 1,000 chargers
//!    connect with subprotocol `ocpp2.0.1`, BootNotification, TransactionEvent(Started)
//!    (seqNo 0, EVSE 1, an ISO14443 card, free vend, the `Transaction.Begin` register),
//!    then the same saturation code as 1. with TransactionEvent(Updated)
//!    (`MeterValuePeriodic`, seqNo counting up, a three-phase meterValue of 11 numeric
//!    sampledValues) for the same warm-up and window; durable events/s beside the 1.6
//!    MeterValues/s of the same run, and their ratio (target: at least 0.90). Then SIGKILL
//!    again: per charger, `meter_values` rows with `source = 'TransactionEvent'` and
//!    `tx_events` rows must each be at least the events it had acknowledged (Started
//!    included). One payload of each 2.0.1 kind is checked against the official 2.0.1
//!    schema at start (also in a test run, which otherwise skips the load).
//!
//! The bench exits non-zero only if a durability check fails or the run breaks; missed
//! performance targets are reported, not failed.
//!
//! Bounded: fixed charger count and windows, whole run about a minute, a watchdog kills
//! the agent and exits if it ever runs past RUN_LIMIT; only 127.0.0.1.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const CHARGERS: usize = 1000;
/// Handshakes + Boot + Start in flight at once during setup.
const SETUP_CONCURRENCY: usize = 100;
/// Idle time with everyone connected before VmRSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);
const SAT_WARMUP: Duration = Duration::from_secs(3);
const SAT_WINDOW: Duration = Duration::from_secs(10);
/// Each charger's MeterValues period in the paced phase (1,000 x 10/s = 10,000/s).
const PACED_PERIOD: Duration = Duration::from_millis(100);
const PACED_WARMUP: Duration = Duration::from_secs(2);
const PACED_WINDOW: Duration = Duration::from_secs(10);
/// A CALL not answered in this long counts as an error (the agent's WRITE_TIMEOUT is 10 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Hard bound on the whole run; past it the agent is killed and the bench exits.
const RUN_LIMIT: Duration = Duration::from_secs(170);

const TARGET_SATURATION_PER_S: f64 = 20_000.0;
const TARGET_P99_MS: f64 = 10.0;
const TARGET_RSS_MB: f64 = 30.0;
/// Issue 9: 2.0.1 durable events/s at saturation within 10 % of 1.6 MeterValues/s.
const TARGET_V201_RATIO: f64 = 0.90;

fn main() {
    // Cheap, so also in a test run: the 2.0.1 frames the bench sends are valid 2.0.1.
    if let Err(e) = validate_v201_payloads() {
        eprintln!("ocpp_load: a generated 2.0.1 payload breaks the official schema: {e}");
        std::process::exit(2);
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets too,
    // without it: do not put a one-minute load run into a test run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ocpp_load: 2.0.1 payloads valid (BootNotification, TransactionEvent Started and Updated); load run skipped (run it with `cargo bench --bench ocpp_load`)");
        return;
    }
    println!("ocpp_load: generated 2.0.1 payloads valid against the official schemas (BootNotificationRequest, TransactionEventRequest Started and Updated)");
    raise_nofile_limit((CHARGERS as u64) * 2 + 512);
    // OCPP_LOAD_AGENT_BIN runs another build of the agent (e.g. one with symbols, for perf).
    let bin = std::env::var_os("OCPP_LOAD_AGENT_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_chargesite")),
        PathBuf::from,
    );
    if !bin.is_file() {
        eprintln!(
            "ocpp_load: agent binary {} is missing; build it with `cargo build --release`",
            bin.display()
        );
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loadgen")
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(bin));
    std::process::exit(code);
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
        // CARGO_TARGET_TMPDIR is target/tmp: the project's disk, not a tmpfs /tmp.
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&base).expect("create target/tmp");
        let dir = tempfile::Builder::new()
            .prefix("ocpp_load-")
            .tempdir_in(&base)
            .expect("temp dir");
        let db = dir.path().join("cs.db");
        // For experiments only (printed with the results): TOML appended to the config.
        let extra = std::env::var("OCPP_LOAD_CONFIG_EXTRA")
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
        // Keep both pipes drained so the agent never blocks on a full pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
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
            std::thread::sleep(Duration::from_millis(200));
            let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
            panic!("agent did not report its address (first line {line:?}); log:\n{log}");
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

    /// `VmRSS` / `VmHWM` / `RssAnon` ... in kB.
    fn status_kb(&self, key: &str) -> u64 {
        status_kb(self.pid, key)
    }

    /// "anon 15.2 MB, file 5.1 MB, shmem 0.1 MB": what the RSS is made of now.
    fn rss_parts(&self) -> String {
        format!(
            "anon {:.1} MB, file {:.1} MB, shmem {:.1} MB",
            mb(self.status_kb("RssAnon")),
            mb(self.status_kb("RssFile")),
            mb(self.status_kb("RssShmem"))
        )
    }

    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Samples the agent's VmRSS every 20 ms and keeps the highest value per phase, to show
/// which phase sets the peak.
struct RssSampler {
    phase: Arc<AtomicU64>,
    peaks: Arc<[AtomicU64; 4]>,
}

const PHASES: [&str; 4] = ["setup+idle", "saturation", "paced", "end"];

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let phase = Arc::new(AtomicU64::new(0));
        let peaks: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let (p, k) = (phase.clone(), peaks.clone());
        std::thread::spawn(move || loop {
            let i = p.load(Ordering::Relaxed) as usize;
            if i >= 3 {
                break;
            }
            k[i].fetch_max(status_kb(pid, "VmRSS"), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        });
        RssSampler { phase, peaks }
    }
    fn enter(&self, i: u64) {
        self.phase.store(i, Ordering::Relaxed);
    }
    fn line(&self) -> String {
        (0..3)
            .map(|i| {
                format!(
                    "{} {:.1} MB",
                    PHASES[i],
                    mb(self.peaks[i].load(Ordering::Relaxed))
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.sigkill();
    }
}

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc, for the diagnostics lines

fn clk_tck() -> f64 {
    extern "C" {
        fn sysconf(name: i32) -> i64;
    }
    const SC_CLK_TCK: i32 = 2;
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { sysconf(SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime in clock ticks from a `/proc/.../stat` file.
fn stat_ticks(path: &str) -> u64 {
    let (user, system) = stat_user_system(path);
    user + system
}

/// (utime, stime) in clock ticks from a `/proc/.../stat` file.
fn stat_user_system(path: &str) -> (u64, u64) {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    // The comm field may contain spaces; fields after the closing paren are fixed.
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return (0, 0);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (get(11), get(12))
}

#[derive(Clone, Copy, Default)]
struct Cpu {
    agent: u64,
    store: u64,
    /// The store thread's time in the kernel (its writes and fsyncs), part of `store`.
    store_sys: u64,
    loadgen: u64,
    /// Busy ticks of the whole box (all cores, all processes), from /proc/stat.
    busy: u64,
    /// Ticks stolen by the hypervisor, all cores.
    steal: u64,
    /// The agent's `write_bytes` from /proc/PID/io: what it sent to the storage layer (the
    /// WAL and the checkpoints into the database file).
    disk_written: u64,
    at: Option<Instant>,
}

/// `write_bytes` of `/proc/PID/io`; 0 where it cannot be read.
fn disk_written(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// (busy, steal) ticks summed over all cores from /proc/stat: busy is user nice system
/// irq softirq; steal is time the hypervisor gave our vCPUs to someone else.
fn box_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0usize, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum();
    (busy, f.get(7).copied().unwrap_or(0))
}

fn cpu_now(pid: u32) -> Cpu {
    let (mut store, mut store_sys) = (0, 0);
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let p = t.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if comm.trim() == "store" {
                let (user, system) = stat_user_system(&p.join("stat").to_string_lossy());
                store += user + system;
                store_sys += system;
            }
        }
    }
    Cpu {
        agent: stat_ticks(&format!("/proc/{pid}/stat")),
        store,
        store_sys,
        loadgen: stat_ticks("/proc/self/stat"),
        busy: box_ticks().0,
        steal: box_ticks().1,
        disk_written: disk_written(pid),
        at: Some(Instant::now()),
    }
}

/// "cpu: agent 120% (store thread 41%), load generator 60%, other processes 3%, hypervisor
/// steal 0% of one core; 2 cores" between two samples: the last two show a noisy box.
fn cpu_line(a: Cpu, b: Cpu) -> String {
    cpu_line_per(a, b, 0, "")
}

/// [`cpu_line`] plus CPU time per acknowledged `what` (MeterValues, ...) when `acked` > 0:
/// less sensitive to a busy box than the rates are, though heavy hypervisor steal still
/// inflates it.
fn cpu_line_per(a: Cpu, b: Cpu, acked: u64, what: &str) -> String {
    let mut line = cpu_line_total(a, b);
    if acked > 0 {
        let us = |x: u64, y: u64| y.saturating_sub(x) as f64 / clk_tck() * 1e6 / acked as f64;
        line.push_str(&format!(
            "; per acknowledged {what}: agent {:.0} us (store thread {:.0} us, {:.0} us of it in the kernel), load generator {:.0} us, written to disk {:.1} KB",
            us(a.agent, b.agent),
            us(a.store, b.store),
            us(a.store_sys, b.store_sys),
            us(a.loadgen, b.loadgen),
            b.disk_written.saturating_sub(a.disk_written) as f64 / 1e3 / acked as f64
        ));
    }
    line
}

fn cpu_line_total(a: Cpu, b: Cpu) -> String {
    let secs = match (a.at, b.at) {
        (Some(x), Some(y)) => (y - x).as_secs_f64(),
        _ => return String::new(),
    };
    let tck = clk_tck();
    let pct = |x: u64, y: u64| (y.saturating_sub(x)) as f64 / tck / secs * 100.0;
    let others = pct(a.busy, b.busy) - pct(a.agent, b.agent) - pct(a.loadgen, b.loadgen);
    format!(
        "cpu: agent {:.0}% (store thread {:.0}%), load generator {:.0}%, other processes {:.0}%, hypervisor steal {:.0}% of one core; {} cores",
        pct(a.agent, b.agent),
        pct(a.store, b.store),
        pct(a.loadgen, b.loadgen),
        others.max(0.0),
        pct(a.steal, b.steal),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

// ---------------------------------------------------------------------------------------
// A charger

/// Which OCPP version a charger speaks; the phases differ only in the frames.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ocpp {
    V16,
    V201,
}

impl Ocpp {
    fn subprotocol(self) -> &'static str {
        match self {
            Ocpp::V16 => "ocpp1.6",
            Ocpp::V201 => "ocpp2.0.1",
        }
    }
    /// What the periodic CALL is called in the figures.
    fn periodic(self) -> &'static str {
        match self {
            Ocpp::V16 => "MeterValues",
            Ocpp::V201 => "TransactionEvent(Updated)",
        }
    }
    /// `meter_values.source` of the periodic readings.
    fn source(self) -> &'static str {
        match self {
            Ocpp::V16 => "MeterValues",
            Ocpp::V201 => "TransactionEvent",
        }
    }
}

struct Charger {
    cp_id: String,
    ocpp: Ocpp,
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
    /// 1.6: the agent's transactionId.
    transaction_id: i64,
    /// 2.0.1: the charger's own transactionId (a UUID, as stations make them).
    tx_uuid: String,
    /// 2.0.1: the next TransactionEvent's seqNo (0 is the Started).
    seq_no: u64,
    meter_start_wh: i64,
    power_w: f64,
    soc_start: f64,
    started: Instant,
    /// Periodic readings (1.6 MeterValues, 2.0.1 TransactionEvent(Updated)) answered with
    /// a CALLRESULT, over the whole run; a 2.0.1 charger's Started is not counted here.
    acked_mv: u64,
    /// CALLERRORs, timeouts, unexpected answers.
    errors: u64,
}

enum Answer {
    Result,
    Error(String),
}

/// SplitMix64: the bench needs random phases and powers, not a crypto RNG.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed(i: usize) -> Rng {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Rng(t ^ ((i as u64 + 1) << 32))
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8192)
}

impl Charger {
    async fn connect(addr: SocketAddr, i: usize, ocpp: Ocpp) -> Result<Charger, String> {
        let cp_id = match ocpp {
            Ocpp::V16 => format!("BENCH-{i:04}"),
            Ocpp::V201 => format!("BENCH201-{i:04}"),
        };
        let mut req = format!("ws://{addr}/ocpp/{cp_id}")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(ocpp.subprotocol()),
        );
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{cp_id}: tcp connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (ws, resp) = tokio_tungstenite::client_async_with_config(req, tcp, Some(ws_config()))
            .await
            .map_err(|e| format!("{cp_id}: handshake: {e}"))?;
        if resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|h| h.to_str().ok())
            != Some(ocpp.subprotocol())
        {
            return Err(format!(
                "{cp_id}: subprotocol {} not negotiated",
                ocpp.subprotocol()
            ));
        }
        let mut rng = seed(i);
        let tx_uuid = uuid_like(&mut rng);
        Ok(Charger {
            cp_id,
            ocpp,
            ws,
            next_id: 0,
            transaction_id: 0,
            tx_uuid,
            seq_no: 0,
            // A register that has seen some use; 7.4 to 22 kW AC, 10 to 60 % SoC.
            meter_start_wh: 1_000_000 + (rng.unit() * 9_000_000.0) as i64,
            power_w: 7_400.0 + rng.unit() * 14_600.0,
            soc_start: 10.0 + rng.unit() * 50.0,
            started: Instant::now(),
            acked_mv: 0,
            errors: 0,
        })
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{}", self.next_id)
    }

    /// Sends one CALL frame and waits for the answer with its id.
    async fn call(&mut self, id: &str, frame: String) -> Answer {
        if let Err(e) = self.ws.send(Message::text(frame)).await {
            return Answer::Error(format!("send: {e}"));
        }
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Answer::Error("no answer within the call timeout".into()),
                Ok(None) => return Answer::Error("socket closed".into()),
                Ok(Some(Err(e))) => return Answer::Error(format!("socket: {e}")),
                Ok(Some(Ok(m))) => m,
            };
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(_) => return Answer::Error("closed by the agent".into()),
                _ => continue, // pings are answered by tungstenite
            };
            let v: Value = match serde_json::from_str(text.as_str()) {
                Ok(v) => v,
                Err(e) => return Answer::Error(format!("bad JSON from agent: {e}")),
            };
            if v[1].as_str() != Some(id) {
                // Not the answer to our CALL (the agent sends us no CALLs in this run).
                return Answer::Error(format!("unexpected frame {text}"));
            }
            return match v[0].as_u64() {
                Some(3) => Answer::Result,
                _ => Answer::Error(format!("CALLERROR {text}")),
            };
        }
    }

    /// A CALL whose CALLRESULT payload we need.
    async fn call_value(&mut self, action: &str, payload: Value) -> Result<Value, String> {
        let id = self.id();
        let frame = serde_json::json!([2, id, action, payload]).to_string();
        if let Err(e) = self.ws.send(Message::text(frame)).await {
            return Err(format!("{}: {action}: send: {e}", self.cp_id));
        }
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
                Some(Ok(_)) => continue,
            };
            let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
            if v[0] == 3 && v[1] == id.as_str() {
                return Ok(v[2].clone());
            }
            return Err(format!("{}: {action}: answer {t}", self.cp_id));
        }
    }

    async fn boot_and_start(&mut self) -> Result<(), String> {
        match self.ocpp {
            Ocpp::V16 => self.boot_and_start_16().await,
            Ocpp::V201 => self.boot_and_start_201().await,
        }
    }

    async fn boot_and_start_16(&mut self) -> Result<(), String> {
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
        self.started = Instant::now();
        Ok(())
    }

    /// 2.0.1: BootNotification, then TransactionEvent(Started) with seqNo 0, the EVSE, an
    /// RFID card (free vend) and the `Transaction.Begin` register.
    async fn boot_and_start_201(&mut self) -> Result<(), String> {
        let boot = self
            .call_value("BootNotification", v201_boot(&self.cp_id))
            .await?;
        if boot["status"] != "Accepted" {
            return Err(format!("{}: boot answered {boot}", self.cp_id));
        }
        let card = card_uid(&self.cp_id);
        let start = self
            .call_value(
                "TransactionEvent",
                v201_started(&self.tx_uuid, &card, self.meter_start_wh, &rfc3339_now()),
            )
            .await?;
        if start["idTokenInfo"]["status"] != "Accepted" {
            return Err(format!("{}: Started answered {start}", self.cp_id));
        }
        self.seq_no = 1;
        self.started = Instant::now();
        Ok(())
    }

    /// What the meter shows now: the register increases with the power actually
    /// delivered since the transaction started.
    fn reading(&self) -> Reading {
        let secs = self.started.elapsed().as_secs_f64();
        Reading {
            wh: self.meter_start_wh + (self.power_w * secs / 3600.0) as i64,
            w: self.power_w,
            soc: (self.soc_start + self.power_w * secs / 3600.0 / 77_000.0 * 100.0).min(100.0),
        }
    }

    /// The periodic CALL of this charger's version, with message id `id`.
    fn meter_values_frame(&mut self, id: &str) -> String {
        let r = self.reading();
        let ts = rfc3339_now();
        match self.ocpp {
            Ocpp::V16 => v16_meter_values(id, self.transaction_id, &ts, &r),
            Ocpp::V201 => {
                let seq = self.seq_no;
                self.seq_no += 1;
                v201_updated(id, &self.tx_uuid, seq, &ts, &r)
            }
        }
    }

    /// One periodic CALL (1.6 MeterValues or 2.0.1 TransactionEvent(Updated)).
    async fn meter_values(&mut self) -> Answer {
        let id = self.id();
        let frame = self.meter_values_frame(&id);
        let a = self.call(&id, frame).await;
        match &a {
            Answer::Result => self.acked_mv += 1,
            Answer::Error(_) => self.errors += 1,
        }
        a
    }

    /// Rows this charger's acknowledged CALLs must have left in `meter_values` (and, for
    /// 2.0.1, in `tx_events`): the periodic readings, plus the Started's `Transaction.Begin`.
    fn durable_expected(&self) -> u64 {
        self.acked_mv + u64::from(self.ocpp == Ocpp::V201)
    }
}

// ---------------------------------------------------------------------------------------
// The frames

/// One three-phase AC reading.
struct Reading {
    /// Energy register, Wh.
    wh: i64,
    /// Power, W (all phases).
    w: f64,
    /// The EV's state of charge, %.
    soc: f64,
}

/// Per-phase current, A, and line-to-neutral voltage, V, for a reading; the phases a
/// little unbalanced, as they are.
fn phases(r: &Reading) -> ([f64; 3], [f64; 3]) {
    let amps = r.w / 3.0 / 230.0;
    ([amps * 1.01, amps, amps * 0.99], [230.4, 229.8, 231.1])
}

/// A realistic three-phase AC MeterValues CALL (1.6): register, power, current per phase,
/// voltage per phase, SoC: 9 sampledValues, string values as 1.6 has them.
fn v16_meter_values(id: &str, tx: i64, ts: &str, r: &Reading) -> String {
    let ([a1, a2, a3], [v1, v2, v3]) = phases(r);
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
        wh = r.wh,
        w = r.w,
        a1 = a1,
        a2 = a2,
        a3 = a3,
        v1 = v1,
        v2 = v2,
        v3 = v3,
        soc = r.soc,
    )
}

/// A realistic three-phase AC TransactionEvent(Updated) CALL (2.0.1), trigger
/// `MeterValuePeriodic`: register, power per phase, current per phase, voltage per phase,
/// SoC: 11 sampledValues, numeric values and `unitOfMeasure` as 2.0.1 has them.
fn v201_updated(id: &str, tx: &str, seq_no: u64, ts: &str, r: &Reading) -> String {
    let ([a1, a2, a3], [v1, v2, v3]) = phases(r);
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
        wh = r.wh,
        p1 = p1,
        p2 = p2,
        p3 = p3,
        a1 = a1,
        a2 = a2,
        a3 = a3,
        v1 = v1,
        v2 = v2,
        v3 = v3,
        soc = r.soc,
    )
}

/// A 2.0.1 BootNotification payload.
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

/// A 2.0.1 TransactionEvent(Started) payload: seqNo 0, EVSE 1 connector 1, an RFID card,
/// the `Transaction.Begin` register.
fn v201_started(tx: &str, card: &str, wh: i64, ts: &str) -> Value {
    serde_json::json!({
        "eventType": "Started",
        "timestamp": ts,
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": tx, "chargingState": "Charging"},
        "evse": {"id": 1, "connectorId": 1},
        "idToken": {"idToken": card, "type": "ISO14443"},
        "meterValue": [{"timestamp": ts, "sampledValue": [{
            "value": wh, "context": "Transaction.Begin",
            "measurand": "Energy.Active.Import.Register", "location": "Outlet",
            "unitOfMeasure": {"unit": "Wh"},
        }]}],
    })
}

/// A 7-byte ISO 14443 card UID, in hex as stations report it, one per charger.
fn card_uid(cp_id: &str) -> String {
    let n: u64 = cp_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("04{:012X}", n & 0xffff_ffff_ffff)
}

/// A version-4 UUID's shape from the bench's RNG: a station's transactionId.
fn uuid_like(rng: &mut Rng) -> String {
    let (a, b) = (rng.next(), rng.next());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// Checks one generated payload of each 2.0.1 kind against the official 2.0.1 schema
/// (the agent would answer an invalid one with a CALLERROR, and the bench would measure
/// the wrong path).
fn validate_v201_payloads() -> Result<(), String> {
    let check = |name: &str, v: &Value| {
        chargesite::ocpp::v201::schema::validate(name, v)
            .map_err(|e| format!("{name}: {e:?} in {v}"))
    };
    let mut rng = Rng(42);
    let tx = uuid_like(&mut rng);
    let ts = rfc3339_now();
    check("BootNotificationRequest", &v201_boot("BENCH201-0000"))?;
    check(
        "TransactionEventRequest",
        &v201_started(&tx, &card_uid("BENCH201-0000"), 1_234_567, &ts),
    )?;
    let r = Reading {
        wh: 1_234_600,
        w: 11_000.0,
        soc: 42.5,
    };
    let frame: Value = serde_json::from_str(&v201_updated("17", &tx, 1, &ts, &r))
        .map_err(|e| format!("Updated frame is not JSON: {e}"))?;
    if frame[2] != "TransactionEvent"
        || frame[3]["meterValue"][0]["sampledValue"]
            .as_array()
            .map(Vec::len)
            != Some(11)
    {
        return Err(format!("Updated frame has the wrong shape: {frame}"));
    }
    check("TransactionEventRequest", &frame[3])?;
    // And the 1.6 frame is still the JSON it should be.
    let v16: Value = serde_json::from_str(&v16_meter_values("18", 7, &ts, &r))
        .map_err(|e| format!("1.6 MeterValues frame is not JSON: {e}"))?;
    if v16[3]["meterValue"][0]["sampledValue"]
        .as_array()
        .map(Vec::len)
        != Some(9)
    {
        return Err(format!("1.6 frame has the wrong shape: {v16}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Phases

async fn setup(addr: SocketAddr, ocpp: Ocpp) -> Result<Vec<Charger>, String> {
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut tasks = Vec::with_capacity(CHARGERS);
    for i in 0..CHARGERS {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            let mut c = Charger::connect(addr, i, ocpp).await?;
            c.boot_and_start().await?;
            Ok::<_, String>(c)
        }));
    }
    let mut out = Vec::with_capacity(CHARGERS);
    for t in tasks {
        out.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(out)
}

struct Saturation {
    acked_in_window: u64,
    window: Duration,
    errors: u64,
    first_error: Option<String>,
    cpu: String,
}

/// Every charger sends its periodic CALL back to back (one outstanding CALL per charger);
/// the same code for 1.6 and 2.0.1, which differ only in the frames.
async fn saturation(chargers: Vec<Charger>, pid: u32) -> (Vec<Charger>, Saturation) {
    let ocpp = chargers.first().map_or(Ocpp::V16, |c| c.ocpp);
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(chargers.len());
    for mut c in chargers {
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut first_error = None;
            while !stop.load(Ordering::Relaxed) {
                match c.meter_values().await {
                    Answer::Result => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Answer::Error(e) => {
                        first_error.get_or_insert(format!("{}: {e}", c.cp_id));
                        break;
                    }
                }
            }
            (c, first_error)
        }));
    }
    tokio::time::sleep(SAT_WARMUP).await;
    let (c0, cpu0, t0) = (acked.load(Ordering::Relaxed), cpu_now(pid), Instant::now());
    tokio::time::sleep(SAT_WINDOW).await;
    let (c1, cpu1, t1) = (acked.load(Ordering::Relaxed), cpu_now(pid), Instant::now());
    stop.store(true, Ordering::Relaxed);
    let mut back = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for t in tasks {
        let (c, e) = t.await.expect("charger task");
        if first_error.is_none() {
            first_error = e;
        }
        back.push(c);
    }
    let errors = back.iter().map(|c| c.errors).sum();
    (
        back,
        Saturation {
            acked_in_window: c1 - c0,
            window: t1 - t0,
            errors,
            first_error,
            cpu: cpu_line_per(cpu0, cpu1, c1 - c0, ocpp.periodic()),
        },
    )
}

/// One paced CALL: microseconds after the phase's start when it was due and when it was
/// sent, and its CALL→CALLRESULT latency.
#[derive(Clone, Copy)]
struct PacedCall {
    due_us: u64,
    sent_us: u64,
    answered_us: u64,
}

struct Paced {
    sent_in_window: usize,
    answered_in_window: usize,
    /// CALL→CALLRESULT, per CALL sent in the window, microseconds, sorted.
    latencies: Vec<u64>,
    /// Due time→CALLRESULT (counts the wait when a charger fell behind its schedule).
    from_schedule: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    cpu: String,
}

async fn paced(chargers: Vec<Charger>, pid: u32) -> (Vec<Charger>, Paced) {
    let base = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = base + PACED_WARMUP + PACED_WINDOW;
    let errors_before: u64 = chargers.iter().map(|c| c.errors).sum();
    let mut tasks = Vec::with_capacity(chargers.len());
    for (i, mut c) in chargers.into_iter().enumerate() {
        let phase = PACED_PERIOD.mul_f64(seed(i + 7919).unit());
        tasks.push(tokio::spawn(async move {
            let mut calls = Vec::with_capacity(
                ((PACED_WARMUP + PACED_WINDOW).as_millis() / PACED_PERIOD.as_millis()) as usize + 2,
            );
            let mut first_error = None;
            let mut due = base + phase;
            while due < end {
                // A fixed schedule: a charger that fell behind sends at once (it still has
                // only one CALL outstanding), so the offered rate stays the schedule's as
                // long as the agent keeps up. The phase ends at `end` by the wall clock,
                // whatever is still due.
                tokio::time::sleep_until(due).await;
                let sent = tokio::time::Instant::now();
                if sent >= end {
                    break;
                }
                match c.meter_values().await {
                    Answer::Result => {
                        let answered = tokio::time::Instant::now();
                        calls.push(PacedCall {
                            due_us: (due - base).as_micros() as u64,
                            sent_us: (sent - base).as_micros() as u64,
                            answered_us: (answered - base).as_micros() as u64,
                        });
                    }
                    Answer::Error(e) => {
                        first_error.get_or_insert(format!("{}: {e}", c.cp_id));
                        break;
                    }
                }
                due += PACED_PERIOD;
            }
            (c, calls, first_error)
        }));
    }
    tokio::time::sleep_until(base + PACED_WARMUP).await;
    let cpu0 = cpu_now(pid);
    tokio::time::sleep_until(end).await;
    let cpu1 = cpu_now(pid);
    let w0 = PACED_WARMUP.as_micros() as u64;
    let w1 = (PACED_WARMUP + PACED_WINDOW).as_micros() as u64;
    let in_window = |t: u64| t >= w0 && t < w1;
    let mut back = Vec::with_capacity(tasks.len());
    let mut all = Vec::new();
    let mut first_error = None;
    for t in tasks {
        let (c, calls, e) = t.await.expect("charger task");
        if first_error.is_none() {
            first_error = e;
        }
        all.extend(calls);
        back.push(c);
    }
    let errors = back.iter().map(|c| c.errors).sum::<u64>() - errors_before;
    let sent_in_window = all.iter().filter(|c| in_window(c.sent_us)).count();
    let answered_in_window = all.iter().filter(|c| in_window(c.answered_us)).count();
    let mut latencies: Vec<u64> = all
        .iter()
        .filter(|c| in_window(c.sent_us))
        .map(|c| c.answered_us - c.sent_us)
        .collect();
    let mut from_schedule: Vec<u64> = all
        .iter()
        .filter(|c| in_window(c.due_us))
        .map(|c| c.answered_us - c.due_us)
        .collect();
    latencies.sort_unstable();
    from_schedule.sort_unstable();
    (
        back,
        Paced {
            sent_in_window,
            answered_in_window,
            latencies,
            from_schedule,
            errors,
            first_error,
            cpu: cpu_line_per(cpu0, cpu1, answered_in_window as u64, "MeterValues"),
        },
    )
}

fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

/// The charger's clock: now, RFC 3339 UTC with milliseconds, as chargers send it.
fn rfc3339_now() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn mb(kb: u64) -> f64 {
    (kb * 1024) as f64 / 1e6
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

// ---------------------------------------------------------------------------------------

async fn run(bin: PathBuf) -> i32 {
    let started = Instant::now();
    let mut agent = Agent::start(&bin);
    let pid = agent.pid;
    // The agent running now (the 2.0.1 phase starts a second one).
    let current = Arc::new(AtomicU64::new(u64::from(pid)));
    let watched = current.clone();
    // Watchdog: the bench stops by itself even if something hangs.
    std::thread::spawn(move || {
        std::thread::sleep(RUN_LIMIT);
        let pid = watched.load(Ordering::SeqCst);
        eprintln!("ocpp_load: run exceeded {RUN_LIMIT:?}; killing agent {pid} and exiting");
        // Only our agent: the pid is not reused while we have not reaped it.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "chargesite" {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        std::process::exit(3);
    });
    if let Ok(extra) = std::env::var("OCPP_LOAD_CONFIG_EXTRA") {
        println!("ocpp_load: NOT the standard setup: config extra {extra:?}");
    }
    println!(
        "ocpp_load: agent {} (pid {pid}) on {}, database {} ({})",
        bin.display(),
        agent.addr,
        agent.db_path().display(),
        fs_type(agent.dir.path())
    );

    let rss = RssSampler::start(pid);
    // Setup: 1,000 chargers connect, boot and start a transaction.
    let t = Instant::now();
    let chargers = match setup(agent.addr, Ocpp::V16).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "ocpp_load: setup failed: {e}\nagent log tail:\n{}",
                agent.log_tail()
            );
            return 1;
        }
    };
    println!(
        "setup: {CHARGERS} chargers connected, booted and started a transaction in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Idle RSS with everyone connected.
    let cpu0 = cpu_now(pid);
    tokio::time::sleep(IDLE_SETTLE).await;
    let idle_rss_kb = agent.status_kb("VmRSS");
    println!("idle diagnostics: {}", cpu_line(cpu0, cpu_now(pid)));
    println!("idle RSS: {}", agent.rss_parts());

    // 1. Saturation.
    rss.enter(1);
    let (chargers, sat) = saturation(chargers, pid).await;
    let sat_rate = sat.acked_in_window as f64 / sat.window.as_secs_f64();
    println!("saturation diagnostics: {}", sat.cpu);
    if let Some(e) = &sat.first_error {
        println!("saturation errors: {} (first: {e})", sat.errors);
    }

    // 2. Paced 10,000/s.
    rss.enter(2);
    let (chargers, pc) = paced(chargers, pid).await;
    let window = PACED_WINDOW.as_secs_f64();
    let offered = pc.sent_in_window as f64 / window;
    let achieved = pc.answered_in_window as f64 / window;
    let p50 = percentile_ms(&pc.latencies, 50.0);
    let p99 = percentile_ms(&pc.latencies, 99.0);
    let due = CHARGERS as f64 * window / PACED_PERIOD.as_secs_f64();
    println!("paced diagnostics: {}", pc.cpu);
    println!(
        "paced latency: p99.9 {:.2} ms, max {:.2} ms; {} of {due:.0} CALLs due in the window were sent in it; \
         due-time->CALLRESULT (includes waiting behind a late answer) p50 {:.2} ms, p99 {:.2} ms",
        percentile_ms(&pc.latencies, 99.9),
        percentile_ms(&pc.latencies, 100.0),
        pc.from_schedule.len(),
        percentile_ms(&pc.from_schedule, 50.0),
        percentile_ms(&pc.from_schedule, 99.0),
    );
    if let Some(e) = &pc.first_error {
        println!("paced errors: {} (first: {e})", pc.errors);
    }

    // 3. Peak RSS after both phases.
    let peak_rss_kb = agent.status_kb("VmHWM");
    rss.enter(3);
    println!(
        "RSS: peak VmRSS sampled per phase: {}; now {}",
        rss.line(),
        agent.rss_parts()
    );

    // Durability: kill the agent without any chance to flush, then count rows.
    agent.sigkill();
    let acked: u64 = chargers.iter().map(|c| c.acked_mv).sum();
    let per_charger: HashMap<String, u64> = chargers
        .iter()
        .map(|c| (c.cp_id.clone(), c.acked_mv))
        .collect();
    let durability = check_rows(&agent.db_path(), Ocpp::V16, &per_charger);
    drop(chargers);
    drop(agent);

    // 4. OCPP 2.0.1 saturation: a fresh agent and database, as the 1.6 phase had.
    let v201 = match v201_phase(&bin, &current).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ocpp_load: 2.0.1 phase failed: {e}");
            return 1;
        }
    };
    let v201_rate = v201.sat.acked_in_window as f64 / v201.sat.window.as_secs_f64();
    let ratio = v201_rate / sat_rate;

    println!();
    println!("ocpp_load: chargers={CHARGERS}");
    println!(
        "saturation: {:.0} durable MeterValues/s ({} acknowledged in {:.1} s)",
        sat_rate,
        sat.acked_in_window,
        sat.window.as_secs_f64()
    );
    println!(
        "paced 10000/s: offered {offered:.0}/s, achieved {achieved:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms"
    );
    println!(
        "agent RSS: idle with {CHARGERS} chargers {:.1} MB, peak {:.1} MB",
        mb(idle_rss_kb),
        mb(peak_rss_kb)
    );
    println!(
        "saturation 2.0.1: {v201_rate:.0} durable TransactionEvent(Updated)/s ({} acknowledged in {:.1} s) beside {sat_rate:.0} durable MeterValues/s (1.6): 2.0.1/1.6 = {ratio:.2}",
        v201.sat.acked_in_window,
        v201.sat.window.as_secs_f64()
    );
    let ok = match &durability {
        Ok(d) => {
            println!(
                "durability check: rows {} >= acknowledged {}: {}{}",
                d.rows,
                acked,
                if d.short_chargers == 0 && d.rows >= acked {
                    "ok"
                } else {
                    "FAILED"
                },
                if d.short_chargers > 0 {
                    format!(
                        " ({} chargers have fewer rows than acknowledged)",
                        d.short_chargers
                    )
                } else {
                    String::new()
                }
            );
            if d.flagged > 0 {
                println!(
                    "note: {} meter_values rows carry flags (payload not plausible?)",
                    d.flagged
                );
            }
            d.short_chargers == 0 && d.rows >= acked
        }
        Err(e) => {
            println!("durability check: cannot read the database: {e}: FAILED");
            false
        }
    };
    let ok_v201 = match &v201.durability {
        Ok(d) => {
            let tx = d.tx_events.unwrap_or(0);
            let good = d.short_chargers == 0 && d.rows >= v201.acked && tx >= v201.acked;
            println!(
                "durability check 2.0.1: meter_values rows (source TransactionEvent) {} >= acknowledged {}, tx_events rows {tx} >= {}: {}{}",
                d.rows,
                v201.acked,
                v201.acked,
                if good { "ok" } else { "FAILED" },
                if d.short_chargers > 0 {
                    format!(
                        " ({} chargers have fewer rows than acknowledged)",
                        d.short_chargers
                    )
                } else {
                    String::new()
                }
            );
            if d.flagged > 0 {
                println!(
                    "note: {} 2.0.1 meter_values rows carry flags (payload not plausible?)",
                    d.flagged
                );
            }
            good
        }
        Err(e) => {
            println!("durability check 2.0.1: cannot read the database: {e}: FAILED");
            false
        }
    };
    println!(
        "targets: saturation >= {TARGET_SATURATION_PER_S:.0}/s {}; paced p99 <= {TARGET_P99_MS} ms {}; peak RSS <= {TARGET_RSS_MB} MB {}; 2.0.1 saturation >= {TARGET_V201_RATIO:.2} x 1.6 {}",
        verdict(sat_rate >= TARGET_SATURATION_PER_S),
        verdict(p99 <= TARGET_P99_MS),
        verdict(mb(peak_rss_kb) <= TARGET_RSS_MB),
        verdict(ratio >= TARGET_V201_RATIO),
    );
    println!(
        "(errors: saturation {}, paced {}, 2.0.1 saturation {}; whole run {:.1} s)",
        sat.errors,
        pc.errors,
        v201.sat.errors,
        started.elapsed().as_secs_f64()
    );
    if ok && ok_v201 {
        0
    } else {
        1
    }
}

struct Rows {
    rows: u64,
    short_chargers: usize,
    flagged: u64,
    /// 2.0.1: rows in `tx_events`.
    tx_events: Option<u64>,
}

/// Per charger: `meter_values` rows of the version's periodic source (and, for 2.0.1,
/// `tx_events` rows) against what the charger had acknowledged.
fn check_rows(
    db: &Path,
    ocpp: Ocpp,
    acked: &HashMap<String, u64>,
) -> Result<Rows, rusqlite::Error> {
    let conn = rusqlite::Connection::open(db)?;
    let mut st = conn.prepare(
        "SELECT cp_id, count(*), sum(flags != '') FROM meter_values
         WHERE source = ?1 GROUP BY cp_id",
    )?;
    let counts: HashMap<String, (u64, u64)> = st
        .query_map([ocpp.source()], |r| {
            let n: i64 = r.get(1)?;
            let flagged: i64 = r.get(2)?;
            Ok((r.get::<_, String>(0)?, (n as u64, flagged as u64)))
        })?
        .collect::<Result<_, _>>()?;
    let rows = counts.values().map(|c| c.0).sum();
    let flagged = counts.values().map(|c| c.1).sum();
    let mut short_chargers = acked
        .iter()
        .filter(|(cp, n)| counts.get(*cp).map_or(0, |c| c.0) < **n)
        .count();
    let mut tx_events = None;
    if ocpp == Ocpp::V201 {
        let mut st = conn.prepare("SELECT cp_id, count(*) FROM tx_events GROUP BY cp_id")?;
        let events: HashMap<String, u64> = st
            .query_map([], |r| {
                let n: i64 = r.get(1)?;
                Ok((r.get::<_, String>(0)?, n as u64))
            })?
            .collect::<Result<_, _>>()?;
        tx_events = Some(events.values().sum());
        short_chargers += acked
            .iter()
            .filter(|(cp, n)| {
                counts.get(*cp).map_or(0, |c| c.0) >= **n
                    && events.get(*cp).copied().unwrap_or(0) < **n
            })
            .count();
    }
    Ok(Rows {
        rows,
        short_chargers,
        flagged,
        tx_events,
    })
}

/// What the 2.0.1 phase measured.
struct V201 {
    sat: Saturation,
    /// Rows the acknowledged CALLs must have left (Started + Updated), all chargers.
    acked: u64,
    durability: Result<Rows, rusqlite::Error>,
}

/// Phase 4: a fresh agent and database; 1,000 chargers connect with `ocpp2.0.1`, boot,
/// start a transaction (TransactionEvent Started), idle as the 1.6 ones did, then the same
/// saturation phase as 1.6 with TransactionEvent(Updated); then SIGKILL and the rows.
async fn v201_phase(bin: &Path, current: &AtomicU64) -> Result<V201, String> {
    let mut agent = Agent::start(bin);
    let pid = agent.pid;
    current.store(u64::from(pid), Ordering::SeqCst);
    println!(
        "2.0.1: agent (pid {pid}) on {}, database {}",
        agent.addr,
        agent.db_path().display()
    );
    let t = Instant::now();
    let chargers = setup(agent.addr, Ocpp::V201)
        .await
        .map_err(|e| format!("setup: {e}\nagent log tail:\n{}", agent.log_tail()))?;
    println!(
        "2.0.1 setup: {CHARGERS} chargers connected (ocpp2.0.1), booted and sent TransactionEvent(Started) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let cpu0 = cpu_now(pid);
    tokio::time::sleep(IDLE_SETTLE).await;
    println!("2.0.1 idle diagnostics: {}", cpu_line(cpu0, cpu_now(pid)));
    println!(
        "2.0.1 idle RSS: {:.1} MB ({})",
        mb(agent.status_kb("VmRSS")),
        agent.rss_parts()
    );
    let (chargers, sat) = saturation(chargers, pid).await;
    println!("2.0.1 saturation diagnostics: {}", sat.cpu);
    if let Some(e) = &sat.first_error {
        println!("2.0.1 saturation errors: {} (first: {e})", sat.errors);
    }
    println!(
        "2.0.1 agent RSS: peak {:.1} MB",
        mb(agent.status_kb("VmHWM"))
    );
    agent.sigkill();
    let per_charger: HashMap<String, u64> = chargers
        .iter()
        .map(|c| (c.cp_id.clone(), c.durable_expected()))
        .collect();
    let acked = per_charger.values().sum();
    let durability = check_rows(&agent.db_path(), Ocpp::V201, &per_charger);
    Ok(V201 {
        sat,
        acked,
        durability,
    })
}

/// The filesystem type under `path`, from /proc/mounts (longest matching mount point).
fn fs_type(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut mounts = String::new();
    if let Ok(mut f) = std::fs::File::open("/proc/mounts") {
        let _ = f.read_to_string(&mut mounts);
    }
    let best = mounts
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (dev, mnt, ty) = (it.next()?, it.next()?, it.next()?);
            path.starts_with(mnt)
                .then(|| (mnt.len(), format!("{ty} on {dev}")))
        })
        .max_by_key(|(n, _)| *n);
    let fs = best.map_or_else(|| "unknown fs".to_string(), |(_, s)| s);
    if fs.starts_with("tmpfs") || fs.starts_with("ramfs") {
        format!("{fs}: WARNING not a disk, fsync is free")
    } else {
        fs
    }
}

/// Lifts the soft RLIMIT_NOFILE to at least `want` (within the hard limit); the agent
/// inherits it.
fn raise_nofile_limit(want: u64) {
    #[repr(C)]
    struct RLimit {
        cur: u64,
        max: u64,
    }
    extern "C" {
        fn getrlimit(resource: i32, rlim: *mut RLimit) -> i32;
        fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
    }
    const RLIMIT_NOFILE: i32 = 7;
    let mut l = RLimit { cur: 0, max: 0 };
    // SAFETY: plain libc calls on a properly laid out rlimit struct (Linux, 64-bit).
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut l) != 0 || l.cur >= want {
            return;
        }
        let new = RLimit {
            cur: want.min(l.max),
            max: l.max,
        };
        if setrlimit(RLIMIT_NOFILE, &new) != 0 || new.cur < want {
            eprintln!(
                "ocpp_load: warning: RLIMIT_NOFILE is {} (hard {}); {want} wanted",
                new.cur, l.max
            );
        }
    }
}
