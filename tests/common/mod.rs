//! Test harness: the real `chargesite` binary on a temp SQLite file, and a real
//! WebSocket charger client over loopback.

#![allow(dead_code)]

#[cfg(feature = "embedded-broker")]
pub mod mqtt;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A running agent process.
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
    /// The `wss://` address, when the config sets `tls_listen`.
    pub tls_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

pub fn base_config(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[site]\nid = \"site-001\"\n\n[store]\npath = \"{}\"\n\n{extra}\n",
        dir.join("cs.db").display()
    )
}

impl Agent {
    /// Starts the agent with `[ocpp] listen = 127.0.0.1:0` plus `ocpp_extra` lines in
    /// `[ocpp]` and `extra` sections after it.
    pub fn start(ocpp_extra: &str, extra: &str) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = base_config(
            dir.path(),
            &format!("[ocpp]\nlisten = \"127.0.0.1:0\"\n{ocpp_extra}\n{extra}"),
        );
        let config = dir.path().join("chargesite.toml");
        std::fs::write(&config, text).expect("write config");
        Self::start_with(dir, config)
    }

    pub fn start_with(dir: tempfile::TempDir, config: PathBuf) -> Agent {
        Self::start_with_env(dir, config, &[])
    }

    /// [`Agent::start_with`] with extra environment variables.
    pub fn start_with_env(dir: tempfile::TempDir, config: PathBuf, env: &[(&str, &str)]) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chargesite"))
            .args(["run", "--config"])
            .arg(&config)
            .env("CHARGESITE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chargesite");
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read stdout");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("addr");
        let text = std::fs::read_to_string(&config).unwrap_or_default();
        let tls_addr = text.contains("tls_listen").then(|| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read stdout");
            line.trim()
                .strip_prefix("tls listening on ")
                .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
                .parse()
                .expect("tls addr")
        });
        // Keep stderr drained so the agent never blocks on a full pipe.
        let stderr = child.stderr.take().expect("stderr");
        let log = dir.path().join("agent.log");
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("log");
            let _ = std::io::copy(&mut BufReader::new(stderr), &mut f);
        });
        Agent {
            child,
            addr,
            tls_addr,
            dir,
            config,
        }
    }

    /// Restarts the agent on the same database and config after it exited.
    pub fn restart(mut self) -> Agent {
        let _ = self.child.wait();
        // Move the temp dir out; the port was 0, so a new one is chosen.
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        let config = self.config.clone();
        Self::start_with(dir, config)
    }

    pub fn url(&self, cp: &str) -> String {
        format!("ws://{}/ocpp/{cp}", self.addr)
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("cs.db")).expect("open db")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        signal(self.child.id(), "TERM");
        wait_timeout(&mut self.child, Duration::from_secs(20))
    }

    /// Events in seq order: (seq, type, body).
    pub fn events(&self) -> Vec<(i64, String, Value)> {
        let db = self.db();
        let mut st = db
            .prepare("SELECT seq, type, body FROM events ORDER BY seq")
            .expect("prepare");
        st.query_map([], |r| {
            let body: String = r.get(2)?;
            Ok((
                r.get(0)?,
                r.get(1)?,
                serde_json::from_str(&body).expect("json"),
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|(_, k, _)| k == kind)
            .map(|(_, _, b)| b)
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub fn wait_timeout(child: &mut Child, d: Duration) -> Option<i32> {
    let until = std::time::Instant::now() + d;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s.code();
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns true or `secs` pass.
pub async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// A charger client.
pub struct Charger {
    pub ws: WebSocketStream<TcpStream>,
    next: u64,
}

pub enum Connect {
    Ok(Box<Charger>),
    Refused(u16),
}

impl Charger {
    pub fn from_ws(ws: WebSocketStream<TcpStream>) -> Charger {
        Charger { ws, next: 0 }
    }

    pub async fn connect(url: &str) -> Charger {
        match Self::try_connect(url, Some("ocpp1.6"), None).await {
            Connect::Ok(c) => *c,
            Connect::Refused(s) => panic!("refused with HTTP {s}"),
        }
    }

    /// Connects (1.6) from the loopback address `source` (any of 127.0.0.0/8), as
    /// another host on the site LAN would.
    pub async fn connect_from(url: &str, source: std::net::Ipv4Addr) -> Charger {
        let mut req = url.into_client_request().expect("request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("ocpp1.6"),
        );
        let host: SocketAddr = req
            .uri()
            .authority()
            .expect("authority")
            .as_str()
            .parse()
            .expect("an ip:port url");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("bind the source address");
        let tcp = socket.connect(host).await.expect("tcp connect");
        let (ws, _) = tokio_tungstenite::client_async(req, tcp)
            .await
            .expect("handshake");
        Charger { ws, next: 0 }
    }

    /// Connects offering only `ocpp2.0.1`.
    pub async fn connect_v201(url: &str) -> Charger {
        match Self::try_connect(url, Some("ocpp2.0.1"), None).await {
            Connect::Ok(c) => *c,
            Connect::Refused(s) => panic!("refused with HTTP {s}"),
        }
    }

    pub async fn try_connect(url: &str, protocol: Option<&str>, auth: Option<&str>) -> Connect {
        let mut req = url.into_client_request().expect("request");
        if let Some(p) = protocol {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(p).expect("hdr"),
            );
        }
        if let Some(a) = auth {
            req.headers_mut()
                .insert("Authorization", HeaderValue::from_str(a).expect("hdr"));
        }
        let host = req
            .uri()
            .authority()
            .expect("authority")
            .as_str()
            .to_string();
        let tcp = TcpStream::connect(host).await.expect("tcp connect");
        match tokio_tungstenite::client_async(req, tcp).await {
            Ok((ws, _resp)) => Connect::Ok(Box::new(Charger { ws, next: 0 })),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                Connect::Refused(resp.status().as_u16())
            }
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("send");
    }

    /// Next text frame as JSON (skipping pings/pongs), within 10 s.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(Duration::from_secs(10))
            .await
            .expect("no frame within 10 s")
    }

    pub async fn try_recv(&mut self, d: Duration) -> Option<Value> {
        let until = tokio::time::Instant::now() + d;
        loop {
            let m = tokio::time::timeout_at(until, self.ws.next())
                .await
                .ok()??;
            match m {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).expect("json"))
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Sends a CALL and returns the whole answer frame.
    pub async fn call(&mut self, action: &str, payload: Value) -> Value {
        self.next += 1;
        let id = format!("m{}", self.next);
        self.send_text(&json!([2, id, action, payload]).to_string())
            .await;
        let answer = self.recv().await;
        assert_eq!(answer[1], json!(id), "answer to another id: {answer}");
        answer
    }

    /// Sends a CALL and returns the CALLRESULT payload; panics on CALLERROR.
    pub async fn ok(&mut self, action: &str, payload: Value) -> Value {
        let a = self.call(action, payload).await;
        assert_eq!(a[0], 3, "expected CALLRESULT, got {a}");
        a[2].clone()
    }

    pub async fn boot(&mut self) -> Value {
        self.ok(
            "BootNotification",
            json!({"chargePointVendor": "TestVendor", "chargePointModel": "T1",
                   "chargePointSerialNumber": "SN-1", "firmwareVersion": "1.0"}),
        )
        .await
    }

    pub async fn start(&mut self, connector: u32, tag: &str, meter_start: i64, ts: &str) -> i64 {
        let r = self
            .ok(
                "StartTransaction",
                json!({"connectorId": connector, "idTag": tag, "meterStart": meter_start, "timestamp": ts}),
            )
            .await;
        r["transactionId"].as_i64().expect("transactionId")
    }

    pub async fn meter(&mut self, connector: u32, tx: i64, ts: &str, wh: i64) -> Value {
        self.ok(
            "MeterValues",
            json!({"connectorId": connector, "transactionId": tx, "meterValue": [
                {"timestamp": ts, "sampledValue": [
                    {"value": wh.to_string(), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                    {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"}]}]}),
        )
        .await
    }

    pub async fn stop(&mut self, tx: i64, meter_stop: i64, ts: &str) -> Value {
        self.ok(
            "StopTransaction",
            json!({"transactionId": tx, "meterStop": meter_stop, "timestamp": ts, "reason": "EVDisconnected"}),
        )
        .await
    }
}

/// An RFC 3339 timestamp `mins` minutes after a recent fixed instant (near the site clock,
/// so no clock flag is raised).
pub fn ts(mins: i64) -> String {
    static BASE: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| chargesite::time::now() - chrono::Duration::hours(2));
    let t = base + chrono::Duration::minutes(mins);
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The status server's address, from the agent's log line.
pub async fn status_addr(agent: &Agent) -> std::net::SocketAddr {
    let mut found = None;
    let seen = eventually(10, || {
        found = agent.log().lines().find_map(|l| {
            let rest = l.split("status page listening on http://").nth(1)?;
            rest.split('/').next()?.parse().ok()
        });
        found.is_some()
    })
    .await;
    assert!(
        seen,
        "no status listening line in the log:\n{}",
        agent.log()
    );
    found.unwrap()
}

/// A booted charger on the wire that answers the agent's CALLs as `answers` says (action
/// -> CALLRESULT payload; by default ReserveNow, CancelReservation, the remote starts and
/// SetChargingProfile Accepted, GetLocalListVersion without a list, the rest
/// NotImplemented), and keeps every CALL it got.
pub struct Cp {
    pub c: Charger,
    pub v201: bool,
    pub answers: std::collections::HashMap<&'static str, Value>,
    pub got: Vec<(String, Value)>,
    next: u64,
}

impl Cp {
    pub async fn connect(agent: &Agent, id: &str, v201: bool) -> Cp {
        let c = if v201 {
            Charger::connect_v201(&agent.url(id)).await
        } else {
            Charger::connect(&agent.url(id)).await
        };
        let accepted = json!({"status": "Accepted"});
        let mut answers = std::collections::HashMap::new();
        for a in [
            "ReserveNow",
            "CancelReservation",
            "RemoteStartTransaction",
            "RequestStartTransaction",
            "SetChargingProfile",
            "ClearChargingProfile",
        ] {
            answers.insert(a, accepted.clone());
        }
        answers.insert(
            "GetLocalListVersion",
            if v201 {
                json!({"versionNumber": 0})
            } else {
                json!({"listVersion": 0})
            },
        );
        let mut cp = Cp {
            c,
            v201,
            answers,
            got: Vec::new(),
            next: 0,
        };
        let boot = if v201 {
            json!({"reason": "PowerUp", "chargingStation": {"model": "T2", "vendorName": "TestVendor"}})
        } else {
            json!({"chargePointVendor": "TestVendor", "chargePointModel": "T1"})
        };
        cp.ok("BootNotification", boot).await;
        cp
    }

    async fn answer(&mut self, frame: &Value) {
        let action = frame[2].as_str().unwrap_or_default().to_string();
        self.got.push((action.clone(), frame[3].clone()));
        let reply = match self.answers.get(action.as_str()) {
            Some(p) => json!([3, frame[1], p]),
            None => json!([4, frame[1], "NotImplemented", "", {}]),
        };
        self.c.send_text(&reply.to_string()).await;
    }

    /// Sends a CALL, answering the agent's CALLs until its CALLRESULT comes.
    pub async fn ok(&mut self, action: &str, payload: Value) -> Value {
        self.next += 1;
        let id = format!("t{}", self.next);
        self.c
            .send_text(&json!([2, id, action, payload]).to_string())
            .await;
        loop {
            let f = self.c.recv().await;
            if f[0] == 2 {
                self.answer(&f).await;
                continue;
            }
            assert_eq!(f[1], json!(id), "{f}");
            assert_eq!(f[0], 3, "{action} got {f}");
            return f[2].clone();
        }
    }

    /// Waits (answering) for the agent's CALL `action`; its payload.
    pub async fn wait_for(&mut self, action: &str, secs: u64) -> Value {
        if let Some((_, p)) = self.got.iter().find(|(a, _)| a == action) {
            return p.clone();
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        while tokio::time::Instant::now() < until {
            let Some(f) = self.c.try_recv(Duration::from_millis(200)).await else {
                continue;
            };
            if f[0] == 2 {
                self.answer(&f).await;
                if f[2] == action {
                    return f[3].clone();
                }
            }
        }
        panic!("no {action} within {secs} s; got {:?}", self.got);
    }

    /// Lets the agent's CALLs be answered for `secs`.
    pub async fn idle(&mut self, secs: u64) {
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        while tokio::time::Instant::now() < until {
            if let Some(f) = self.c.try_recv(Duration::from_millis(100)).await {
                if f[0] == 2 {
                    self.answer(&f).await;
                }
            }
        }
    }
}
