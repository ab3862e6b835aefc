//! `cargo bench --bench tls_storm`: the real release `chargesite` binary in a reconnect
//! storm of 1,000 OCPP 1.6J chargers over ws:// and over its wss:// endpoint (security
//! profiles 2 and 3), and the agent's memory with 1,000 chargers held over each.
//!
//! Setup: one site PKI for the whole run (`chargesite::pki`: a CA, a server certificate
//! for 127.0.0.1, one client certificate per profile-3 charger with `CN=<id>, O=ACME`),
//! one argon2 hash (`chargesite::password::hash`) shared by every profile-2 charger (the
//! agent caches verified passwords per charger id, so each charger's first connect still
//! pays one argon2 verify; the cost does not depend on the password). Every agent run
//! gets the same config (3 x N listed chargers: `WS-nnnn` profile 1, `P2-nnnn` profile 2,
//! `P3-nnnn` profile 3; `tls_listen`, `client_ca_file`, `cpo_name = "ACME"`), a fresh
//! database under `target/tmp` and `CHARGESITE_LOG=info`, so the runs differ only in the
//! transport the chargers use.
//!
//! Three agent runs, one after the other:
//! 1. ws:// (baseline): N chargers connect (TCP + WebSocket upgrade, subprotocol
//!    `ocpp1.6`); then each sends BootNotification and Heartbeat; after a settle the
//!    agent's VmRSS / VmHWM (`/proc/<pid>/status`) are read.
//! 2. wss:// profile 2 (TLS + Basic auth): the cold round (first connect of every charger:
//!    one argon2 verify each; the agent runs at most 2 at once and answers 429 beyond
//!    that, and a charger that gets 429 waits `TLS_STORM_RETRY_MS` (+ up to as much
//!    again, random) and tries again, holding its in-flight slot meanwhile), Boot +
//!    Heartbeat, RSS; then all close, and the warm round: the same N reconnect (cached
//!    password, no argon2), Boot + Heartbeat again.
//! 3. wss:// profile 3 (mutual TLS, one certificate per charger): storm, Boot + Heartbeat,
//!    RSS.
//!
//! A storm round: N chargers, at most `TLS_STORM_CONCURRENCY` (default 64) in their
//! connect procedure at once (TCP connect, TLS handshake, WebSocket upgrade, retries after
//! a 429); a charger that is through stays connected and keeps answering the agent's
//! pings. handshakes/s = N / wall time of the round. TLS is full handshakes only: client
//! session resumption is off (after an agent restart, the usual cause of a storm, the
//! server has no sessions to resume anyway). The client is rustls (ring) with its
//! defaults, so TLS 1.3 with X25519 and the agent's ECDSA P-256 certificate.
//!
//! The load generator runs here on a 2-thread tokio runtime and shares the box's cores
//! with the agent; every round prints the CPU both used per handshake and what other
//! processes took meanwhile (a busy box shows up there).
//!
//! Env: `TLS_STORM_CHARGERS` (default 1000; e.g. 100 for a quick check),
//! `TLS_STORM_CONCURRENCY` (64), `TLS_STORM_RETRY_MS` (200), `TLS_STORM_AGENT_BIN`
//! (another build of the agent); diagnostic only: `TLS_STORM_HASH_M_KIB` (the profile-2
//! hash with another argon2 memory cost instead of `chargesite::password::hash`'s).
//!
//! Exits non-zero only if the run breaks (a charger that cannot connect or boot); the RSS
//! target (wss <= 1.5 x ws) is reported, not failed. Bounded: a watchdog kills the agent
//! and exits past RUN_LIMIT; only 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

const DEFAULT_CHARGERS: usize = 1000;
const DEFAULT_CONCURRENCY: usize = 64;
const DEFAULT_RETRY_MS: u64 = 200;
/// Attempts per charger per round before it counts as failed.
const MAX_ATTEMPTS: u32 = 400;
/// One connect attempt (TCP + TLS + upgrade); the agent's own handshake timeout is 10 s.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Idle time with everyone connected and booted before the RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);
/// Hard bound on the whole run; past it the agent is killed and the bench exits.
const RUN_LIMIT: Duration = Duration::from_secs(360);
const TARGET_RSS_RATIO: f64 = 1.5;
const SUBPROTOCOL: &str = "ocpp1.6";
const CPO: &str = "ACME";
const PASSWORD: &str = "bench-storm-s3cret";

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: skip the load.
    if !std::env::args().any(|a| a == "--bench") {
        println!("tls_storm: load run skipped (run it with `cargo bench --bench tls_storm`)");
        return;
    }
    let p = Params::from_env();
    raise_nofile_limit((p.chargers as u64) * 2 + 512);
    let bin = std::env::var_os("TLS_STORM_AGENT_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_chargesite")),
        PathBuf::from,
    );
    if !bin.is_file() {
        eprintln!(
            "tls_storm: agent binary {} is missing; build it with `cargo build --release`",
            bin.display()
        );
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("loadgen")
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(bin, p));
    std::process::exit(code);
}

#[derive(Clone, Copy)]
struct Params {
    chargers: usize,
    concurrency: usize,
    retry: Duration,
}

impl Params {
    fn from_env() -> Params {
        let num = |k: &str, d: u64| -> u64 {
            match std::env::var(k) {
                Ok(v) => v.trim().parse().unwrap_or_else(|_| {
                    eprintln!("tls_storm: {k}={v:?} is not a number");
                    std::process::exit(2)
                }),
                Err(_) => d,
            }
        };
        Params {
            chargers: num("TLS_STORM_CHARGERS", DEFAULT_CHARGERS as u64).clamp(1, 9999) as usize,
            concurrency: num("TLS_STORM_CONCURRENCY", DEFAULT_CONCURRENCY as u64).max(1) as usize,
            retry: Duration::from_millis(num("TLS_STORM_RETRY_MS", DEFAULT_RETRY_MS)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Certificates, passwords, the config

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Ws,
    P2,
    P3,
}

impl Mode {
    fn prefix(self) -> &'static str {
        match self {
            Mode::Ws => "WS",
            Mode::P2 => "P2",
            Mode::P3 => "P3",
        }
    }
    fn cp_id(self, i: usize) -> String {
        format!("{}-{i:04}", self.prefix())
    }
}

struct Pki {
    dir: tempfile::TempDir,
    roots: Arc<rustls::RootCertStore>,
    /// Profile 3: one (chain, key) per charger.
    clients: Vec<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    password_hash: String,
}

fn write_file(path: &Path, text: &str, mode: u32) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("write");
}

impl Pki {
    fn make(base: &Path, n: usize) -> Pki {
        let now = chargesite::time::now();
        let dir = tempfile::Builder::new()
            .prefix("tls_storm-pki-")
            .tempdir_in(base)
            .expect("temp dir");
        let ca = chargesite::pki::new_ca("bench-site", Some(CPO), now).expect("CA");
        let server = chargesite::pki::issue_server(
            &ca.cert_pem,
            &ca.key_pem,
            &["127.0.0.1".to_string(), "localhost".to_string()],
            now,
        )
        .expect("server certificate");
        write_file(&dir.path().join("ca.pem"), &ca.cert_pem, 0o644);
        write_file(&dir.path().join("server.pem"), &server.cert_pem, 0o644);
        write_file(&dir.path().join("server.key"), &server.key_pem, 0o600);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.der.clone()))
            .expect("CA into the root store");
        let clients = (0..n)
            .map(|i| {
                let c = chargesite::pki::issue_client(
                    &ca.cert_pem,
                    &ca.key_pem,
                    &Mode::P3.cp_id(i),
                    Some(CPO),
                    None,
                    now,
                )
                .expect("client certificate");
                let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("client key");
                (vec![CertificateDer::from(c.der)], key)
            })
            .collect();
        let password_hash = match std::env::var("TLS_STORM_HASH_M_KIB") {
            Err(_) => chargesite::password::hash(PASSWORD).expect("argon2 hash"),
            // Diagnostic only (printed as such): another argon2 memory cost, to tell what
            // of profile 2's memory is argon2's.
            Ok(m) => {
                use argon2::password_hash::PasswordHasher;
                let m: u32 = m.trim().parse().expect("TLS_STORM_HASH_M_KIB");
                println!("tls_storm: NOT the standard setup: argon2 hash with m = {m} KiB, t = 5");
                let params = argon2::Params::new(m, 5, 1, None).expect("argon2 params");
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                    .hash_password(PASSWORD.as_bytes())
                    .expect("argon2 hash")
                    .to_string()
            }
        };
        Pki {
            dir,
            roots: Arc::new(roots),
            clients,
            password_hash,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The agent config, the same for every run.
    fn config(&self, db: &Path, n: usize) -> String {
        let mut s = format!(
            "[site]\nid = \"bench-site\"\n\n\
             [ocpp]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
             tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nclient_ca_file = \"{}\"\n\
             cpo_name = \"{CPO}\"\nallow_unknown_chargers = false\n\n\
             [auth]\nfree_vend = true\n\n\
             [store]\npath = \"{}\"\n",
            self.file("server.pem").display(),
            self.file("server.key").display(),
            self.file("ca.pem").display(),
            db.display()
        );
        for i in 0..n {
            s.push_str(&format!(
                "\n[[ocpp.chargers]]\nid = \"{}\"\n\n[[ocpp.chargers]]\nid = \"{}\"\nsecurity_profile = 2\npassword_hash = \"{}\"\n\n[[ocpp.chargers]]\nid = \"{}\"\nsecurity_profile = 3\n",
                Mode::Ws.cp_id(i),
                Mode::P2.cp_id(i),
                self.password_hash,
                Mode::P3.cp_id(i)
            ));
        }
        s
    }

    fn client_config(
        &self,
        cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots.clone());
        let mut c = match cert {
            None => b.with_no_client_auth(),
            Some((chain, key)) => b.with_client_auth_cert(chain, key).expect("client cert"),
        };
        // Full handshakes only (see the module doc).
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    }

    /// One connector per charger of `mode` (`None` for ws://).
    fn connectors(&self, mode: Mode, n: usize) -> Vec<Option<TlsConnector>> {
        match mode {
            Mode::Ws => vec![None; n],
            Mode::P2 => {
                let c = TlsConnector::from(self.client_config(None));
                vec![Some(c); n]
            }
            Mode::P3 => self.clients[..n]
                .iter()
                .map(|(chain, key)| {
                    Some(TlsConnector::from(
                        self.client_config(Some((chain.clone(), key.clone_key()))),
                    ))
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The agent process

struct Agent {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    tls_addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(bin: &Path, base: &Path, pki: &Pki, n: usize, name: &str) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tls_storm-{name}-"))
            .tempdir_in(base)
            .expect("temp dir");
        let config = dir.path().join("chargesite.toml");
        std::fs::write(&config, pki.config(&dir.path().join("cs.db"), n)).expect("config");
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
        let stderr = child.stderr.take().expect("stderr");
        let log = dir.path().join("agent.log");
        std::thread::spawn(move || {
            if let Ok(mut f) = std::fs::File::create(log) {
                let _ = std::io::copy(&mut BufReader::new(stderr), &mut f);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut read_addr = |prefix: &str| -> Result<SocketAddr, String> {
            let mut line = String::new();
            stdout
                .read_line(&mut line)
                .map_err(|e| format!("read agent stdout: {e}"))?;
            line.trim()
                .strip_prefix(prefix)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("expected `{prefix}ADDR`, got {line:?}"))
        };
        let addrs =
            read_addr("listening on ").and_then(|a| read_addr("tls listening on ").map(|t| (a, t)));
        let (addr, tls_addr) = match addrs {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(200));
                let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
                panic!("agent did not report its addresses: {e}; log:\n{log}");
            }
        };
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        Agent {
            child,
            pid,
            addr,
            tls_addr,
            dir,
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn mem(&self) -> Mem {
        Mem {
            rss: status_kb(self.pid, "VmRSS"),
            hwm: status_kb(self.pid, "VmHWM"),
            anon: status_kb(self.pid, "RssAnon"),
            file: status_kb(self.pid, "RssFile"),
        }
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| d.count())
    }

    /// Waits (bounded) until the agent holds at most `target` fds: the closed chargers'
    /// sockets are gone.
    async fn settle_fds(&self, target: usize) -> usize {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let n = self.fds();
            if n <= target || Instant::now() > until {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Default)]
struct Mem {
    rss: u64,
    hwm: u64,
    anon: u64,
    file: u64,
}

impl Mem {
    fn line(&self) -> String {
        format!(
            "VmRSS {} kB (anon {} kB, file {} kB), VmHWM {} kB",
            self.rss, self.anon, self.file, self.hwm
        )
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

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Busy ticks of the whole box (user nice system irq softirq steal), all cores.
fn box_busy() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| f.get(i))
        .sum()
}

/// CPU time of a process in seconds, ns-precise: the sum of its threads' run time in
/// `/proc/<pid>/task/*/schedstat` (a thread that exits takes its share along; the agent's
/// blocking-pool threads, which run argon2, live on 10 s after their last job).
fn run_secs(pid: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum();
    ns as f64 / 1e9
}

#[derive(Clone, Copy)]
struct Cpu {
    agent: f64,
    loadgen: f64,
    busy: u64,
    at: Instant,
}

fn cpu_now(pid: u32) -> Cpu {
    Cpu {
        agent: run_secs(&pid.to_string()),
        loadgen: run_secs("self"),
        busy: box_busy(),
        at: Instant::now(),
    }
}

/// "agent 95% (410 us/handshake), load generator 60% (...), other processes 3%".
fn cpu_line(a: Cpu, b: Cpu, handshakes: usize) -> String {
    let secs = (b.at - a.at).as_secs_f64().max(1e-6);
    let tck = clk_tck();
    let (agent, loadgen) = (
        (b.agent - a.agent).max(0.0),
        (b.loadgen - a.loadgen).max(0.0),
    );
    let busy = b.busy.saturating_sub(a.busy) as f64 / tck;
    let per = |s: f64| s * 1e6 / handshakes.max(1) as f64;
    format!(
        "cpu: agent {:.0}% ({:.0} us/handshake), load generator {:.0}% ({:.0} us/handshake), other processes {:.0}% of one core; {} cores",
        agent / secs * 100.0,
        per(agent),
        loadgen / secs * 100.0,
        per(loadgen),
        ((busy - agent - loadgen) / secs * 100.0).max(0.0),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

// ---------------------------------------------------------------------------------------
// A charger

/// Client side of the socket: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

enum AttemptError {
    Throttled,
    Other(String),
}

/// What the first TLS connection of a round negotiated.
type TlsInfo = String;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// One connect attempt: TCP, TLS (when `tls` is set), WebSocket upgrade with `ocpp1.6`
/// and, for profile 2, Basic auth.
async fn attempt(
    addr: SocketAddr,
    cp_id: &str,
    tls: Option<&TlsConnector>,
    basic: Option<&str>,
) -> Result<(Ws, Option<TlsInfo>), AttemptError> {
    let other = |what: &str, e: &dyn std::fmt::Display| {
        AttemptError::Other(format!("{cp_id}: {what}: {e}"))
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let mut req = format!("{scheme}://{addr}/ocpp/{cp_id}")
        .into_client_request()
        .map_err(|e| other("request", &e))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    if let Some(b) = basic {
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(b).map_err(|e| other("header", &e))?,
        );
    }
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| other("tcp connect", &e))?;
    let _ = tcp.set_nodelay(true);
    let (io, info): (Box<dyn Io>, Option<TlsInfo>) = match tls {
        None => (Box::new(tcp), None),
        Some(c) => {
            let name = ServerName::IpAddress(addr.ip().into());
            let s = c
                .connect(name, tcp)
                .await
                .map_err(|e| other("TLS handshake", &e))?;
            let conn = s.get_ref().1;
            let info = format!(
                "{:?}, {:?}, key exchange {:?}",
                conn.protocol_version(),
                conn.negotiated_cipher_suite().map(|c| c.suite()),
                conn.negotiated_key_exchange_group().map(|g| g.name()),
            );
            (Box::new(s), Some(info))
        }
    };
    match tokio_tungstenite::client_async_with_config(req, io, Some(ws_config())).await {
        Ok((ws, resp)) => {
            if resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|h| h.to_str().ok())
                != Some(SUBPROTOCOL)
            {
                return Err(AttemptError::Other(format!(
                    "{cp_id}: subprotocol {SUBPROTOCOL} not negotiated"
                )));
            }
            Ok((ws, info))
        }
        Err(WsError::Http(r)) if r.status().as_u16() == 429 => Err(AttemptError::Throttled),
        Err(WsError::Http(r)) => Err(AttemptError::Other(format!(
            "{cp_id}: upgrade answered {}",
            r.status()
        ))),
        Err(e) => Err(other("upgrade", &e)),
    }
}

/// What one charger's connect procedure in a round came to.
struct Outcome {
    /// From its first attempt to the accepted upgrade.
    latency: Duration,
    attempts: u32,
    throttled: u32,
    info: Option<TlsInfo>,
    error: Option<String>,
}

enum Cmd {
    BootHeartbeat(oneshot::Sender<Result<(), String>>),
    Close(oneshot::Sender<()>),
}

/// SplitMix64 for the retry jitter.
fn jitter(seed: u64, max: Duration) -> Duration {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    max.mul_f64((z >> 11) as f64 / (1u64 << 53) as f64)
}

/// One charger in a round: connect (within the in-flight bound, retrying after 429s),
/// report, then hold the socket (answering pings) and obey commands until closed.
#[allow(clippy::too_many_arguments)]
async fn charger(
    addr: SocketAddr,
    cp_id: String,
    seq: u64,
    tls: Option<TlsConnector>,
    basic: Option<String>,
    gate: Arc<Semaphore>,
    retry: Duration,
    report: oneshot::Sender<Outcome>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let permit = gate.acquire_owned().await.expect("gate");
    let began = Instant::now();
    let (mut attempts, mut throttled) = (0u32, 0u32);
    let mut last_error = String::new();
    let mut ws = None;
    let mut info = None;
    while attempts < MAX_ATTEMPTS {
        attempts += 1;
        match tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            attempt(addr, &cp_id, tls.as_ref(), basic.as_deref()),
        )
        .await
        {
            Ok(Ok((w, i))) => {
                ws = Some(w);
                info = i;
                break;
            }
            Ok(Err(AttemptError::Throttled)) => {
                throttled += 1;
                tokio::time::sleep(retry + jitter(seq ^ u64::from(attempts) << 32, retry)).await;
            }
            Ok(Err(AttemptError::Other(e))) => {
                last_error = e;
                tokio::time::sleep(retry + jitter(seq ^ u64::from(attempts) << 32, retry)).await;
            }
            Err(_) => {
                last_error = format!("{cp_id}: attempt timed out");
            }
        }
    }
    drop(permit);
    let latency = began.elapsed();
    let Some(mut ws) = ws else {
        let _ = report.send(Outcome {
            latency,
            attempts,
            throttled,
            info: None,
            error: Some(format!("gave up after {attempts} attempts: {last_error}")),
        });
        return;
    };
    let _ = report.send(Outcome {
        latency,
        attempts,
        throttled,
        info,
        error: None,
    });
    let mut alive = true;
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(Cmd::BootHeartbeat(done)) => {
                    let r = if alive {
                        boot_heartbeat(&mut ws, &cp_id, &mut next_id).await
                    } else {
                        Err(format!("{cp_id}: the agent had closed the socket"))
                    };
                    if r.is_err() {
                        alive = false;
                    }
                    let _ = done.send(r);
                }
                Some(Cmd::Close(done)) => {
                    if alive {
                        let _ = ws.close(None).await;
                        let _ = tokio::time::timeout(Duration::from_secs(3), async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                    }
                    drop(ws);
                    let _ = done.send(());
                    return;
                }
            },
            msg = ws.next(), if alive => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => alive = false,
                // Pings are answered by tungstenite; the agent sends no CALLs unasked.
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn call(
    ws: &mut Ws,
    cp_id: &str,
    next_id: &mut u64,
    action: &str,
    payload: Value,
) -> Result<Value, String> {
    *next_id += 1;
    let id = next_id.to_string();
    let frame = serde_json::json!([2, id, action, payload]).to_string();
    ws.send(Message::text(frame))
        .await
        .map_err(|e| format!("{cp_id}: {action}: send: {e}"))?;
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("{cp_id}: {action}: no answer"))?;
        let t = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => return Err(format!("{cp_id}: {action}: closed")),
            Some(Err(e)) => return Err(format!("{cp_id}: {action}: {e}")),
            Some(Ok(_)) => continue,
        };
        let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
        if v[0] == 2 {
            // A CALL from the agent: not part of this bench; say so and go on waiting.
            let err = serde_json::json!([4, v[1], "NotImplemented", "", {}]).to_string();
            let _ = ws.send(Message::text(err)).await;
            continue;
        }
        if v[0] == 3 && v[1] == id.as_str() {
            return Ok(v[2].clone());
        }
        return Err(format!("{cp_id}: {action}: answer {t}"));
    }
}

async fn boot_heartbeat(ws: &mut Ws, cp_id: &str, next_id: &mut u64) -> Result<(), String> {
    let boot = call(
        ws,
        cp_id,
        next_id,
        "BootNotification",
        serde_json::json!({
            "chargePointVendor": "BenchVendor",
            "chargePointModel": "AC22-3P",
            "chargePointSerialNumber": format!("SN-{cp_id}"),
            "firmwareVersion": "4.2.1",
        }),
    )
    .await?;
    if boot["status"] != "Accepted" {
        return Err(format!("{cp_id}: boot answered {boot}"));
    }
    let hb = call(ws, cp_id, next_id, "Heartbeat", serde_json::json!({})).await?;
    if hb["currentTime"].as_str().is_none() {
        return Err(format!("{cp_id}: heartbeat answered {hb}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Rounds

struct Round {
    name: String,
    n: usize,
    ok: usize,
    wall: Duration,
    attempts: u64,
    throttled: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    first_error: Option<String>,
    failed: usize,
    info: Option<TlsInfo>,
    cpu: String,
}

impl Round {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    fn print(&self) {
        println!(
            "{}: {}/{} connected in {:.2} s: {:.0} handshakes/s; per charger (first attempt to upgrade) p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} attempts, {} answered 429",
            self.name,
            self.ok,
            self.n,
            self.wall.as_secs_f64(),
            self.rate(),
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.attempts,
            self.throttled
        );
        if let Some(i) = &self.info {
            println!("{}: TLS {i}", self.name);
        }
        println!("{}: {}", self.name, self.cpu);
        if let Some(e) = &self.first_error {
            println!(
                "{}: {} chargers FAILED (first: {e})",
                self.name, self.failed
            );
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

type Handles = Vec<mpsc::UnboundedSender<Cmd>>;

/// A storm round: every charger of `mode` connects as fast as the in-flight bound lets
/// it; returns the figures and the held chargers.
async fn storm(name: &str, agent: &Agent, mode: Mode, pki: &Pki, p: Params) -> (Round, Handles) {
    let addr = match mode {
        Mode::Ws => agent.addr,
        Mode::P2 | Mode::P3 => agent.tls_addr,
    };
    let connectors = pki.connectors(mode, p.chargers);
    let gate = Arc::new(Semaphore::new(p.concurrency));
    let mut reports = Vec::with_capacity(p.chargers);
    let mut handles = Vec::with_capacity(p.chargers);
    let cpu0 = cpu_now(agent.pid);
    let t0 = Instant::now();
    for (i, tls) in connectors.into_iter().enumerate() {
        let cp_id = mode.cp_id(i);
        let basic = (mode == Mode::P2).then(|| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{cp_id}:{PASSWORD}"))
            )
        });
        let (rtx, rrx) = oneshot::channel();
        let (ctx, crx) = mpsc::unbounded_channel();
        tokio::spawn(charger(
            addr,
            cp_id,
            i as u64 + 1,
            tls,
            basic,
            gate.clone(),
            p.retry,
            rtx,
            crx,
        ));
        reports.push(rrx);
        handles.push(ctx);
    }
    let mut latencies = Vec::with_capacity(p.chargers);
    let (mut attempts, mut throttled, mut failed) = (0u64, 0u64, 0usize);
    let mut first_error = None;
    let mut info = None;
    for r in reports {
        let Ok(o) = r.await else {
            failed += 1;
            first_error.get_or_insert_with(|| "charger task died".to_string());
            continue;
        };
        attempts += u64::from(o.attempts);
        throttled += u64::from(o.throttled);
        if info.is_none() {
            info = o.info.clone();
        }
        match o.error {
            Some(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            None => latencies.push(o.latency),
        }
    }
    let wall = t0.elapsed();
    let cpu1 = cpu_now(agent.pid);
    latencies.sort();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    let info = info.map(|i| {
        format!(
            "{i}, client certificate {}",
            if mode == Mode::P3 {
                "per charger (ECDSA P-256, CN=<id>, O=ACME)"
            } else {
                "none"
            }
        )
    });
    let round = Round {
        name: name.to_string(),
        n: p.chargers,
        ok: latencies.len(),
        wall,
        attempts,
        throttled,
        p50: pct(0.50),
        p99: pct(0.99),
        max: latencies.last().copied().unwrap_or_default(),
        first_error,
        failed,
        info,
        cpu: cpu_line(cpu0, cpu1, latencies.len()),
    };
    round.print();
    (round, handles)
}

/// Boot + Heartbeat from every held charger at once; the number that failed.
async fn boot_all(name: &str, handles: &Handles) -> usize {
    let t = Instant::now();
    let mut waits = Vec::with_capacity(handles.len());
    for h in handles {
        let (tx, rx) = oneshot::channel();
        if h.send(Cmd::BootHeartbeat(tx)).is_ok() {
            waits.push(rx);
        }
    }
    let mut failed = handles.len() - waits.len();
    let mut first = None;
    for w in waits {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed += 1;
                first.get_or_insert(e);
            }
            Err(_) => failed += 1,
        }
    }
    println!(
        "{name}: BootNotification + Heartbeat from {} chargers in {:.2} s{}",
        handles.len() - failed,
        t.elapsed().as_secs_f64(),
        first.map_or(String::new(), |e| format!("; {failed} FAILED (first: {e})"))
    );
    failed
}

async fn close_all(handles: Handles) {
    let mut waits = Vec::with_capacity(handles.len());
    for h in handles {
        let (tx, rx) = oneshot::channel();
        if h.send(Cmd::Close(tx)).is_ok() {
            waits.push(rx);
        }
    }
    for w in waits {
        let _ = w.await;
    }
}

/// Settles, reads the agent's memory and prints it.
async fn measure(name: &str, agent: &Agent, n: usize) -> Mem {
    tokio::time::sleep(IDLE_SETTLE).await;
    let m = agent.mem();
    println!(
        "{name}: agent memory with {n} chargers held: {}; {} fds",
        m.line(),
        agent.fds()
    );
    m
}

// ---------------------------------------------------------------------------------------
// The run

struct Results {
    ws: Round,
    p2_cold: Round,
    p2_warm: Round,
    p3: Round,
    mem_ws: Mem,
    mem_p2: Mem,
    mem_p2_warm: Mem,
    mem_p3: Mem,
    broken: usize,
}

async fn run(bin: PathBuf, p: Params) -> i32 {
    let started = Instant::now();
    let current = Arc::new(AtomicU64::new(0));
    let watched = current.clone();
    std::thread::spawn(move || {
        std::thread::sleep(RUN_LIMIT);
        let pid = watched.load(Ordering::SeqCst);
        eprintln!("tls_storm: run exceeded {RUN_LIMIT:?}; killing agent {pid} and exiting");
        // Only our agent: its pid is not reused while we have not reaped it.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if pid != 0 && comm.trim() == "chargesite" {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::process::exit(3);
    });
    // CARGO_TARGET_TMPDIR is target/tmp: the project's disk, not a tmpfs /tmp.
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("create target/tmp");
    println!(
        "tls_storm: {} chargers per round, {} in flight, retry after 429 {} ms (+ jitter), agent {}",
        p.chargers,
        p.concurrency,
        p.retry.as_millis(),
        bin.display()
    );
    let t = Instant::now();
    let pki = Pki::make(&base, p.chargers);
    println!(
        "setup: site CA, server certificate, {} client certificates and one argon2 hash in {:.1} s",
        p.chargers,
        t.elapsed().as_secs_f64()
    );
    let r = match phases(&bin, &base, &pki, p, &current).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tls_storm: {e}");
            return 1;
        }
    };
    summary(&r, p, started.elapsed());
    if r.broken > 0 {
        1
    } else {
        0
    }
}

async fn phases(
    bin: &Path,
    base: &Path,
    pki: &Pki,
    p: Params,
    current: &AtomicU64,
) -> Result<Results, String> {
    let n = p.chargers;
    let mut broken = 0;

    // 1. ws://
    let agent = Agent::start(bin, base, pki, n, "ws");
    current.store(u64::from(agent.pid), Ordering::SeqCst);
    println!(
        "\n[ws://] agent pid {} on {} (wss {})",
        agent.pid, agent.addr, agent.tls_addr
    );
    println!("ws: agent memory at start: {}", agent.mem().line());
    let (ws, handles) = storm("ws storm", &agent, Mode::Ws, pki, p).await;
    broken += ws.failed;
    broken += boot_all("ws", &handles).await;
    let mem_ws = measure("ws", &agent, n).await;
    close_all(handles).await;
    drop(agent);

    // 2. wss:// profile 2: cold, then warm.
    let agent = Agent::start(bin, base, pki, n, "p2");
    current.store(u64::from(agent.pid), Ordering::SeqCst);
    println!(
        "\n[wss:// profile 2] agent pid {} on {}",
        agent.pid, agent.tls_addr
    );
    let fds0 = agent.fds();
    let (p2_cold, handles) = storm("wss p2 cold storm", &agent, Mode::P2, pki, p).await;
    broken += p2_cold.failed;
    broken += boot_all("wss p2 cold", &handles).await;
    let mem_p2 = measure("wss p2 cold", &agent, n).await;
    close_all(handles).await;
    let left = agent.settle_fds(fds0 + 8).await;
    println!("wss p2: all closed; agent holds {left} fds (at start {fds0})");
    let (p2_warm, handles) = storm("wss p2 warm storm", &agent, Mode::P2, pki, p).await;
    broken += p2_warm.failed;
    broken += boot_all("wss p2 warm", &handles).await;
    let mem_p2_warm = measure("wss p2 warm", &agent, n).await;
    close_all(handles).await;
    if broken > 0 {
        println!("wss p2 agent log tail:\n{}", agent.log_tail());
    }
    drop(agent);

    // 3. wss:// profile 3.
    let agent = Agent::start(bin, base, pki, n, "p3");
    current.store(u64::from(agent.pid), Ordering::SeqCst);
    println!(
        "\n[wss:// profile 3] agent pid {} on {}",
        agent.pid, agent.tls_addr
    );
    let (p3, handles) = storm("wss p3 storm", &agent, Mode::P3, pki, p).await;
    broken += p3.failed;
    broken += boot_all("wss p3", &handles).await;
    let mem_p3 = measure("wss p3", &agent, n).await;
    close_all(handles).await;
    if p3.failed > 0 {
        println!("wss p3 agent log tail:\n{}", agent.log_tail());
    }
    drop(agent);
    current.store(0, Ordering::SeqCst);

    Ok(Results {
        ws,
        p2_cold,
        p2_warm,
        p3,
        mem_ws,
        mem_p2,
        mem_p2_warm,
        mem_p3,
        broken,
    })
}

fn summary(r: &Results, p: Params, elapsed: Duration) {
    let ratio = |a: u64, b: u64| a as f64 / (b.max(1)) as f64;
    let verdict = |x: f64| {
        if x <= TARGET_RSS_RATIO {
            "met"
        } else {
            "MISSED"
        }
    };
    let line = |label: &str, round: &Round| {
        println!(
            "{label:<19} handshakes/s: {:>6.0}   ({} of {} in {:.2} s, p50 {:.1} ms, p99 {:.1} ms, 429s {})",
            round.rate(),
            round.ok,
            round.n,
            round.wall.as_secs_f64(),
            ms(round.p50),
            ms(round.p99),
            round.throttled
        )
    };
    println!(
        "\n=== tls_storm summary: {} chargers, {} in flight, {} cores ===",
        p.chargers,
        p.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    line("ws", &r.ws);
    line("wss p2 cold", &r.p2_cold);
    line("wss p2 warm", &r.p2_warm);
    line("wss p3", &r.p3);
    let (ws, p2, p3) = (r.mem_ws, r.mem_p2, r.mem_p3);
    println!(
        "rss ws: {} kB  wss p2: {} kB  ratio: {:.2}  (target <= {TARGET_RSS_RATIO}: {})",
        ws.rss,
        p2.rss,
        ratio(p2.rss, ws.rss),
        verdict(ratio(p2.rss, ws.rss))
    );
    println!(
        "rss ws: {} kB  wss p3: {} kB  ratio: {:.2}  (target <= {TARGET_RSS_RATIO}: {})",
        ws.rss,
        p3.rss,
        ratio(p3.rss, ws.rss),
        verdict(ratio(p3.rss, ws.rss))
    );
    println!(
        "hwm ws: {} kB  wss p2: {} kB  ratio: {:.2}  wss p3: {} kB  ratio: {:.2}",
        ws.hwm,
        p2.hwm,
        ratio(p2.hwm, ws.hwm),
        p3.hwm,
        ratio(p3.hwm, ws.hwm)
    );
    println!(
        "rss wss p2 after the warm round: {} kB (hwm {} kB)",
        r.mem_p2_warm.rss, r.mem_p2_warm.hwm
    );
    println!(
        "run: {:.1} s{}",
        elapsed.as_secs_f64(),
        if r.broken > 0 {
            format!("; {} charger connects/boots FAILED", r.broken)
        } else {
            String::new()
        }
    );
}

/// Lifts the soft RLIMIT_NOFILE to at least `want` (within the hard limit); the agent
/// inherits it.
fn raise_nofile_limit(want: u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a libc rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 || l.rlim_cur >= want {
            return;
        }
        let new = libc::rlimit {
            rlim_cur: want.min(l.rlim_max),
            rlim_max: l.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &new) != 0 || new.rlim_cur < want {
            eprintln!(
                "tls_storm: warning: RLIMIT_NOFILE is {} (hard {}); {want} wanted",
                new.rlim_cur, l.rlim_max
            );
        }
    }
}
