//! A real MQTT broker for tests, in a process of its own so it can be killed and
//! restarted mid-stream: the embedded `rumqttd` by default, or Debian's `mosquitto` when
//! `CHARGESITE_TEST_BROKER=mosquitto` (CI runs the uplink tests both ways, and over TLS
//! with a throwaway CA when `CHARGESITE_TEST_TLS=1`). And the BPP side: a subscriber that
//! collects events, acks, sends commands, and asks for replays when it sees a gap.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::{json, Value};

const BROKER_ENV: &str = "CHARGESITE_TEST_BROKER_PORT";

/// A free port below the kernel's ephemeral range (32768-60999 by default), unique within
/// this test process. A broker that is killed and restarted re-binds its port; an
/// ephemeral port could meanwhile be taken by another test's socket (a listener on port 0,
/// even an outgoing connection), and the agent would then reconnect to someone else's
/// broker. No kernel-chosen port comes from below the range.
fn broker_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 600) as u16 * 20;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (base - 20_000 + n) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Runs an embedded rumqttd on the port in `CHARGESITE_TEST_BROKER_PORT`, forever, when
/// this test binary was re-executed for that; otherwise returns at once. Each test file
/// that uses [`Broker`] has a `#[test]` calling this.
pub fn broker_process() {
    let Ok(port) = std::env::var(BROKER_ENV) else {
        return;
    };
    let listen = format!("127.0.0.1:{port}").parse().unwrap();
    chargesite::broker::run(listen).unwrap();
}

/// Paths of a throwaway CA and certificates.
#[derive(Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, made
    /// with the openssl command line.
    pub fn generate(dir: &Path) -> Pki {
        let run = |args: &[&str]| {
            let ok = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl")
                .success();
            assert!(ok, "openssl {args:?}");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=chargesite-test-ca",
        ]);
        std::fs::write(
            dir.join("san.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=site-001",
        ]);
        // an X.509 v3 client certificate: webpki refuses v1 ones
        std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "2",
            "-extfile",
            "client.cnf",
        ]);
        Pki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// A broker process on a loopback port that survives its restarts.
pub struct Broker {
    pub port: u16,
    child: Option<Child>,
    pub tls: Option<Pki>,
    dir: tempfile::TempDir,
}

pub fn use_mosquitto() -> bool {
    std::env::var("CHARGESITE_TEST_BROKER").as_deref() == Ok("mosquitto")
}

pub fn use_tls() -> bool {
    std::env::var("CHARGESITE_TEST_TLS").as_deref() == Ok("1")
}

impl Broker {
    pub fn start() -> Broker {
        let port = broker_port();
        let dir = tempfile::tempdir().unwrap();
        let tls = (use_mosquitto() && use_tls()).then(|| Pki::generate(dir.path()));
        let mut b = Broker {
            port,
            child: None,
            tls,
            dir,
        };
        b.restart();
        b
    }

    /// The agent's `[uplink]` lines for this broker.
    pub fn uplink_toml(&self, extra: &str) -> String {
        match &self.tls {
            None => format!("[uplink]\nurl = \"mqtt://127.0.0.1:{}\"\nkeepalive_secs = 2\n{extra}\n", self.port),
            Some(p) => format!(
                "[uplink]\nurl = \"mqtts://localhost:{}\"\nkeepalive_secs = 2\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}\n",
                self.port,
                p.ca.display(),
                p.client_cert.display(),
                p.client_key.display()
            ),
        }
    }

    /// SIGKILL: the broker vanishes with everything it held in memory.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        let child = if use_mosquitto() {
            let conf = self.dir.path().join("mosquitto.conf");
            let mut text = format!(
                "user root\nlistener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 100\nmax_queued_messages 100000\n",
                self.port
            );
            if let Some(p) = &self.tls {
                text.push_str(&format!(
                    "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                    p.ca.display(),
                    p.server_cert.display(),
                    p.server_key.display()
                ));
            }
            std::fs::write(&conf, text).unwrap();
            Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto (apt-get install mosquitto)")
        } else {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "broker_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(BROKER_ENV, self.port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        self.child = Some(child);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < until, "broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the BPP has seen.
#[derive(Default)]
pub struct Seen {
    /// Every event received, in arrival order (duplicates included).
    pub arrivals: Vec<Value>,
    /// Latest event per seq.
    pub by_seq: BTreeMap<i64, Value>,
    /// Command results by id (null id as "null").
    pub results: Vec<Value>,
    /// Retained/other messages by topic: the latest payload.
    pub topics: HashMap<String, Value>,
    /// Batch payload sizes.
    pub batch_sizes: Vec<usize>,
}

/// Options for a test client of `broker` (over TLS when the broker is), taking messages
/// up to 16 MiB both ways: the tests publish (and see) oversized commands on purpose.
pub fn client_options(broker: &Broker, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", broker.port);
    if let Some(p) = &broker.tls {
        let cfg = chargesite::config::parse(&format!(
            "[site]\nid='bpp'\n[uplink]\nurl='mqtts://localhost:{}'\nca_file='{}'\ncert_file='{}'\nkey_file='{}'\n",
            broker.port,
            p.ca.display(),
            p.client_cert.display(),
            p.client_key.display()
        ))
        .unwrap();
        o = chargesite::uplink::link::options(cfg.uplink.as_ref().unwrap(), client_id, "bpp/will")
            .unwrap();
        o.set_manual_acks(false);
    }
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(16 << 20, 16 << 20);
    o
}

/// The BPP side of the link.
pub struct Bpp {
    pub client: AsyncClient,
    pub seen: Arc<Mutex<Seen>>,
    pub root: String,
}

impl Bpp {
    pub async fn connect(broker: &Broker, root: &str) -> Bpp {
        // One client id per BPP: a test that connects a second BPP (after a broker restart,
        // say) while the first still runs must not have the two take the session over from
        // each other on every reconnect (MQTT's rule for a reused client id), which left
        // the second one missing the events (a CI flake of tests/otp.rs).
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let o = client_options(broker, &format!("bpp-{}-{n}", std::process::id()));
        let (client, mut eventloop) = AsyncClient::new(o, 1000);
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let s = seen.clone();
        let c = client.clone();
        let filter = format!("{root}/#");
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = c.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                            continue;
                        };
                        let mut seen = s.lock().unwrap();
                        if p.topic.ends_with("/events") {
                            seen.batch_sizes.push(p.payload.len());
                            for e in v["events"].as_array().cloned().unwrap_or_default() {
                                let seq = e["seq"].as_i64().unwrap();
                                seen.arrivals.push(e.clone());
                                seen.by_seq.insert(seq, e);
                            }
                        } else if p.topic.ends_with("/cmd/result") {
                            seen.results.push(v);
                        } else {
                            seen.topics.insert(p.topic.clone(), v);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let bpp = Bpp {
            client,
            seen,
            root: root.to_string(),
        };
        // wait until subscribed (a retained state or anything) - give the subscription time
        tokio::time::sleep(Duration::from_millis(300)).await;
        bpp
    }

    pub fn max_contiguous(&self) -> i64 {
        let seen = self.seen.lock().unwrap();
        let mut n = 0;
        while seen.by_seq.contains_key(&(n + 1)) {
            n += 1;
        }
        n
    }

    pub fn seqs(&self) -> Vec<i64> {
        self.seen.lock().unwrap().by_seq.keys().copied().collect()
    }

    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .by_seq
            .values()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect()
    }

    /// Waits (15 s at most) for the agent's retained `state` to say online.
    pub async fn wait_agent_online(&self) {
        assert!(
            super::eventually(15, || self
                .topic("state")
                .is_some_and(|s| s["online"] == true))
            .await,
            "the agent never came online"
        );
    }

    pub fn topic(&self, suffix: &str) -> Option<Value> {
        self.seen
            .lock()
            .unwrap()
            .topics
            .get(&format!("{}/{suffix}", self.root))
            .cloned()
    }

    pub async fn command(&self, cmd: Value) {
        self.client
            .publish(
                format!("{}/cmd", self.root),
                QoS::AtLeastOnce,
                false,
                cmd.to_string(),
            )
            .await
            .unwrap();
    }

    pub async fn raw_command(&self, payload: &str) {
        self.client
            .publish(
                format!("{}/cmd", self.root),
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await
            .unwrap();
    }

    /// Publishes a command as a retained message: the broker hands it to the agent again
    /// on every subscribe.
    pub async fn retained_command(&self, payload: Vec<u8>) {
        self.client
            .publish(
                format!("{}/cmd", self.root),
                QoS::AtLeastOnce,
                true,
                payload,
            )
            .await
            .unwrap();
    }

    pub async fn ack(&self, seq: i64) {
        self.client
            .publish(
                format!("{}/ack", self.root),
                QoS::AtLeastOnce,
                false,
                json!({"seq": seq}).to_string(),
            )
            .await
            .unwrap();
    }

    pub fn results_for(&self, id: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .results
            .iter()
            .filter(|r| r["id"] == id)
            .cloned()
            .collect()
    }

    pub async fn wait_result(&self, id: &str, secs: u64) -> Value {
        assert!(
            super::eventually(secs, || !self.results_for(id).is_empty()).await,
            "no result for {id}"
        );
        self.results_for(id)[0].clone()
    }

    /// Waits until seqs 1..=n are all present, asking for a replay of the first gap every
    /// few seconds (what a BPP does when it sees one).
    pub async fn wait_complete(&self, n: i64, secs: u64) -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(secs);
        let mut last_replay = std::time::Instant::now();
        let mut k = 0;
        while std::time::Instant::now() < until {
            let have = self.max_contiguous();
            if have >= n {
                return true;
            }
            let highest = self.seqs().last().copied().unwrap_or(0);
            if highest > have && last_replay.elapsed() > Duration::from_secs(3) {
                k += 1;
                self.command(json!({"id": format!("replay-{k}"), "type": "events.replay", "from_seq": have + 1}))
                    .await;
                last_replay = std::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.max_contiguous() >= n
    }
}
