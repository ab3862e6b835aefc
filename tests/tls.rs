//! Security profiles 2 and 3 end to end: the real agent with a `wss://` listener, a
//! throwaway site CA (made with the agent's own `chargesite::pki`, as `tls init` makes
//! it), and real TLS chargers (tokio-rustls + tokio-tungstenite) presenting the right,
//! another charger's, an expired, a foreign or no certificate. Plus what openssl's
//! s_client sees of the suites, rotation under SIGHUP with chargers connected, the
//! handshake guessing limit and SignCertificate.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use common::{eventually, signal, Agent};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use chargesite::pki;

/// Files of a throwaway site: its CA, the gateway's server certificate, and client
/// certificates for CP1 (serial SN-1) and CP2, an expired one for CP1 and one for CP1
/// from a foreign CA.
struct Site {
    dir: PathBuf,
    ca: pki::Issued,
}

fn now() -> DateTime<Utc> {
    chargesite::time::now()
}

impl Site {
    fn new(dir: &Path) -> Site {
        let ca = pki::new_ca("site-001", Some("ACME"), now()).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
        let server = pki::issue_server(
            &ca.cert_pem,
            &ca.key_pem,
            &["localhost".into(), "127.0.0.1".into()],
            now(),
        )
        .unwrap();
        let site = Site {
            dir: dir.to_path_buf(),
            ca,
        };
        site.write_server(&server);
        site.client("CP1", Some("SN-1"), now(), "cp1");
        site.client("CP2", None, now(), "cp2");
        // Valid 2015..2020: long expired.
        site.client(
            "CP1",
            Some("SN-1"),
            "2015-06-01T00:00:00Z".parse().unwrap(),
            "expired",
        );
        let foreign = pki::new_ca("elsewhere", Some("ACME"), now()).unwrap();
        let f = pki::issue_client(
            &foreign.cert_pem,
            &foreign.key_pem,
            "CP1",
            Some("ACME"),
            None,
            now(),
        )
        .unwrap();
        std::fs::write(dir.join("foreign.pem"), f.cert_pem).unwrap();
        write_key(&dir.join("foreign.key"), &f.key_pem);
        site
    }

    fn write_server(&self, server: &pki::Issued) {
        std::fs::write(
            self.dir.join("server.pem"),
            format!("{}{}", server.cert_pem, self.ca.cert_pem),
        )
        .unwrap();
        write_key(&self.dir.join("server.key"), &server.key_pem);
    }

    fn client(&self, cn: &str, serial: Option<&str>, at: DateTime<Utc>, name: &str) {
        let c = pki::issue_client(
            &self.ca.cert_pem,
            &self.ca.key_pem,
            cn,
            Some("ACME"),
            serial,
            at,
        )
        .unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), c.cert_pem).unwrap();
        write_key(&self.dir.join(format!("{name}.key")), &c.key_pem);
    }

    fn ocpp_toml(&self) -> String {
        format!(
            "tls_listen = \"127.0.0.1:0\"\ntls_cert_file = \"{d}/server.pem\"\ntls_key_file = \"{d}/server.key\"\nclient_ca_file = \"{d}/ca.pem\"\ncpo_name = \"ACME\"\n",
            d = self.dir.display()
        )
    }
}

fn write_key(path: &Path, pem: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

const CHARGERS: &str = r#"
[[ocpp.chargers]]
id = "CP1"
security_profile = 3
serial = "SN-1"

[[ocpp.chargers]]
id = "CP2"
security_profile = 3

[[ocpp.chargers]]
id = "CP5"
security_profile = 2
password_hash = "HASH"
"#;

/// An agent with the site's TLS files and CP1, CP2 (profile 3) and CP5 (profile 2,
/// password "s3cret").
fn agent(site_dir: &tempfile::TempDir) -> (Agent, Site) {
    let site = Site::new(site_dir.path());
    let hash = chargesite::password::hash("s3cret").unwrap();
    let chargers = CHARGERS.replace("HASH", &hash);
    let agent = Agent::start(&format!("{}{chargers}", site.ocpp_toml()), "");
    (agent, site)
}

fn client_config(site: &Site, cert: Option<&str>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(site.ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match cert {
        None => b.with_no_client_auth(),
        Some(name) => {
            let chain = CertificateDer::pem_file_iter(site.dir.join(format!("{name}.pem")))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(site.dir.join(format!("{name}.key"))).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

/// What a TLS charger's connection attempt came to.
enum Outcome {
    Open(Box<WebSocketStream<TlsStream<TcpStream>>>),
    /// The WebSocket handshake was answered with this HTTP status.
    Http(u16),
    /// The TLS handshake failed (the agent refused the certificate).
    TlsFailed(String),
}

async fn connect(
    agent: &Agent,
    site: &Site,
    cp: &str,
    cert: Option<&str>,
    auth: Option<&str>,
) -> Outcome {
    let addr = agent.tls_addr.expect("tls addr");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(site, cert)));
    let name = ServerName::try_from("localhost").unwrap();
    let tls = match connector.connect(name, tcp).await {
        Ok(s) => s,
        Err(e) => return Outcome::TlsFailed(e.to_string()),
    };
    let mut req = format!("wss://localhost:{}/ocpp/{cp}", addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("ocpp1.6"),
    );
    if let Some(a) = auth {
        req.headers_mut()
            .insert("Authorization", HeaderValue::from_str(a).unwrap());
    }
    match tokio_tungstenite::client_async(req, tls).await {
        Ok((ws, _)) => Outcome::Open(Box::new(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Outcome::Http(r.status().as_u16()),
        // With TLS 1.3 the server's verdict on a client certificate arrives after the
        // client's handshake finished: it shows as a failed first read or write.
        Err(e) => Outcome::TlsFailed(e.to_string()),
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

async fn call<S>(
    ws: &mut WebSocketStream<S>,
    id: &str,
    action: &str,
    payload: Value,
) -> Option<Value>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::Text(
        json!([2, id, action, payload]).to_string().into(),
    ))
    .await
    .ok()?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??
        {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

fn boot(serial: &str) -> Value {
    json!({"chargePointVendor": "V", "chargePointModel": "M", "chargePointSerialNumber": serial})
}

fn open(o: Outcome, what: &str) -> WebSocketStream<TlsStream<TcpStream>> {
    match o {
        Outcome::Open(ws) => *ws,
        Outcome::Http(s) => panic!("{what}: refused with HTTP {s}"),
        Outcome::TlsFailed(e) => panic!("{what}: TLS failed: {e}"),
    }
}

fn security_kinds(agent: &Agent) -> Vec<String> {
    agent
        .events_of("security.event")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_3_accepts_a_charger_with_its_own_certificate_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, site) = agent(&dir);

    let mut ws = open(
        connect(&agent, &site, "CP1", Some("cp1"), None).await,
        "own cert",
    );
    let a = call(&mut ws, "b1", "BootNotification", boot("SN-1"))
        .await
        .unwrap();
    assert_eq!(a[2]["status"], "Accepted", "{a}");

    // The one a CSMS anchor shipped: any certificate from the site CA opened any id.
    match connect(&agent, &site, "CP2", Some("cp1"), None).await {
        Outcome::Http(401) => {}
        _ => panic!("CP1's certificate opened CP2"),
    }
    match connect(&agent, &site, "CP2", None, None).await {
        Outcome::Http(401) => {}
        _ => panic!("a profile-3 charger without a certificate was not refused with 401"),
    }
    for (name, what) in [
        ("expired", "an expired certificate"),
        ("foreign", "a foreign CA's certificate"),
    ] {
        match connect(&agent, &site, "CP1", Some(name), None).await {
            Outcome::TlsFailed(_) => {}
            Outcome::Open(_) => panic!("{what} was accepted"),
            Outcome::Http(s) => panic!("{what} got as far as HTTP {s}"),
        }
    }
    // Plain ws:// for a profile-3 charger is a downgrade.
    match common::Charger::try_connect(&agent.url("CP1"), Some("ocpp1.6"), None).await {
        common::Connect::Refused(401) => {}
        _ => panic!("plain ws:// accepted for a profile-3 charger"),
    }
    assert!(
        eventually(10, || {
            let k = security_kinds(&agent);
            [
                "certificate_mismatch",
                "certificate_missing",
                "tls_refused",
                "profile_downgrade",
            ]
            .iter()
            .all(|want| k.iter().any(|x| x == want))
        })
        .await,
        "security events: {:?}",
        security_kinds(&agent)
    );
    let mismatch = agent
        .events_of("security.event")
        .into_iter()
        .find(|e| e["kind"] == "certificate_mismatch")
        .unwrap();
    assert_eq!(mismatch["cp_id"], "CP2");
    assert!(
        mismatch["detail"].as_str().unwrap().contains("CN=CP1"),
        "{mismatch}"
    );
    assert_eq!(mismatch["remote"], "127.0.0.1");
    // CP1 is still served.
    let a = call(&mut ws, "h1", "Heartbeat", json!({})).await.unwrap();
    assert_eq!(a[0], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_reporting_another_serial_closes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, site) = agent(&dir);
    let mut ws = open(
        connect(&agent, &site, "CP1", Some("cp1"), None).await,
        "own cert",
    );
    assert!(
        call(&mut ws, "b1", "BootNotification", boot("SN-OTHER"))
            .await
            .is_none(),
        "a boot with another serial was answered"
    );
    assert!(
        eventually(10, || security_kinds(&agent)
            .iter()
            .any(|k| k == "serial_mismatch"))
        .await,
        "{:?}",
        security_kinds(&agent)
    );
    assert!(
        agent.events_of("charger.booted").is_empty(),
        "the refused boot was recorded"
    );
    assert!(
        eventually(10, || agent
            .events_of("charger.disconnected")
            .last()
            .is_some_and(|e| e["reason"] == "serial_mismatch"))
        .await,
        "{:?}",
        agent.events_of("charger.disconnected")
    );
    // With the bound serial it boots.
    let mut ws = open(
        connect(&agent, &site, "CP1", Some("cp1"), None).await,
        "again",
    );
    let a = call(&mut ws, "b2", "BootNotification", boot("SN-1"))
        .await
        .unwrap();
    assert_eq!(a[2]["status"], "Accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_2_needs_tls_and_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, site) = agent(&dir);
    let mut ws = open(
        connect(&agent, &site, "CP5", None, Some(&basic("CP5", "s3cret"))).await,
        "right password",
    );
    let a = call(&mut ws, "b", "BootNotification", boot("X"))
        .await
        .unwrap();
    assert_eq!(a[2]["status"], "Accepted");
    for auth in [
        Some(basic("CP5", "guess-7q")),
        None,
        Some(basic("CP1", "s3cret")),
    ] {
        match connect(&agent, &site, "CP5", None, auth.as_deref()).await {
            Outcome::Http(401) => {}
            _ => panic!("profile 2 with {auth:?} was not refused with 401"),
        }
    }
    match common::Charger::try_connect(
        &agent.url("CP5"),
        Some("ocpp1.6"),
        Some(&basic("CP5", "s3cret")),
    )
    .await
    {
        common::Connect::Refused(401) => {}
        _ => panic!("plain ws:// accepted for a profile-2 charger, with its right password"),
    }
    assert!(
        eventually(10, || {
            let k = security_kinds(&agent);
            k.iter().any(|x| x == "auth_failed") && k.iter().any(|x| x == "profile_downgrade")
        })
        .await
    );
    // The status API shows the profile the connection came with.
    let log = agent.log();
    assert!(log.contains("profile=2"), "{log}");
    assert!(
        !log.contains("s3cret") && !log.contains("guess-7q"),
        "a password reached the log"
    );
    let events = serde_json::to_string(&agent.events()).unwrap();
    assert!(
        !events.contains("s3cret") && !events.contains("guess-7q"),
        "a password went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_throttled_without_locking_out_the_charger_that_knows_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, site) = agent(&dir);
    // CP5 connects once: its password is now cached.
    let first = open(
        connect(&agent, &site, "CP5", None, Some(&basic("CP5", "s3cret"))).await,
        "right password",
    );
    drop(first);
    let mut statuses = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..25 {
        let auth = basic("CP5", &format!("guess{i}"));
        statuses.push(
            match connect(&agent, &site, "CP5", None, Some(&auth)).await {
                Outcome::Http(s) => s,
                _ => 0,
            },
        );
    }
    let elapsed = started.elapsed();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        &statuses[..10],
        &[401; 10],
        "the first ten are checked: {statuses:?}"
    );
    assert_eq!(limited, 15, "the rest answered 429: {statuses:?}");
    // 429s cost no argon2 run: 15 of them take far less than one argon2 each would.
    eprintln!("25 guesses in {elapsed:?}");
    // The charger with its own password still gets in (from the same address).
    let mut ws = open(
        connect(&agent, &site, "CP5", None, Some(&basic("CP5", "s3cret"))).await,
        "right password after a guessing storm",
    );
    assert_eq!(
        call(&mut ws, "h", "Heartbeat", json!({})).await.unwrap()[0],
        3
    );
    // Events are rate-limited per source, never silent: at most 5 a minute went, and the
    // count of the held-back ones rides on the next.
    let events = agent.events_of("security.event");
    assert!(
        events.len() <= 5,
        "{} security events for one address",
        events.len()
    );
    assert!(!events.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_server_certificate_with_chargers_connected_and_keeps_the_old_on_a_bad_file(
) {
    let dir = tempfile::tempdir().unwrap();
    let (agent, site) = agent(&dir);
    let mut ws = open(
        connect(&agent, &site, "CP1", Some("cp1"), None).await,
        "before",
    );
    call(&mut ws, "b", "BootNotification", boot("SN-1"))
        .await
        .unwrap();
    let before = server_leaf(&agent, &site).await;

    let renewed = pki::issue_server(
        &site.ca.cert_pem,
        &site.ca.key_pem,
        &["localhost".into(), "127.0.0.1".into()],
        now(),
    )
    .unwrap();
    site.write_server(&renewed);
    signal(agent.child.id(), "HUP");
    assert!(
        eventually(10, || agent.log().contains("config reloaded")).await,
        "{}",
        agent.log()
    );
    let after = server_leaf(&agent, &site).await;
    assert_ne!(
        before, after,
        "new connections still get the old certificate"
    );
    assert_eq!(after, renewed.der);
    // The charger connected before the reload is still served on its socket.
    assert_eq!(
        call(&mut ws, "h1", "Heartbeat", json!({})).await.unwrap()[0],
        3
    );

    // A broken key file: refused, and the renewed certificate stays in force.
    std::fs::write(site.dir.join("server.key"), "not a key").unwrap();
    signal(agent.child.id(), "HUP");
    assert!(
        eventually(10, || agent.log().contains("config reload refused")).await,
        "{}",
        agent.log()
    );
    assert_eq!(server_leaf(&agent, &site).await, renewed.der);
    assert_eq!(
        call(&mut ws, "h2", "Heartbeat", json!({})).await.unwrap()[0],
        3
    );
}

/// The leaf certificate a new TLS connection to the agent is served.
async fn server_leaf(agent: &Agent, site: &Site) -> Vec<u8> {
    let tcp = TcpStream::connect(agent.tls_addr.unwrap()).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(site, Some("cp1"))));
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_naming_the_charger_goes_upstream_and_another_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, site) = agent(&dir);
    let mut ws = open(
        connect(&agent, &site, "CP1", Some("cp1"), None).await,
        "own cert",
    );
    call(&mut ws, "b", "BootNotification", boot("SN-1"))
        .await
        .unwrap();
    let good = csr("CP1", "ACME");
    let a = call(&mut ws, "s1", "SignCertificate", json!({"csr": good}))
        .await
        .unwrap();
    assert_eq!(a[2]["status"], "Accepted", "{a}");
    let a = call(
        &mut ws,
        "s2",
        "SignCertificate",
        json!({"csr": csr("CP2", "ACME")}),
    )
    .await
    .unwrap();
    assert_eq!(a[2]["status"], "Rejected", "{a}");
    let a = call(
        &mut ws,
        "s3",
        "SignCertificate",
        json!({"csr": csr("CP1", "Other")}),
    )
    .await
    .unwrap();
    assert_eq!(a[2]["status"], "Rejected", "{a}");
    let csrs = agent.events_of("charger.csr");
    assert_eq!(csrs.len(), 1, "{csrs:?}");
    assert_eq!(csrs[0]["cp_id"], "CP1");
    assert_eq!(csrs[0]["certificate_type"], "ChargePointCertificate");
    assert_eq!(csrs[0]["csr"], good);
    let refused = agent
        .events_of("security.event")
        .into_iter()
        .filter(|e| e["kind"] == "csr_refused")
        .count();
    assert_eq!(refused, 2);
}

fn csr(cn: &str, o: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    dn.push(rcgen::DnType::OrganizationName, o);
    p.distinguished_name = dn;
    p.serialize_request(&key).unwrap().pem().unwrap()
}

/// What openssl's s_client negotiates with the agent for `args`; `None` when refused.
fn s_client(addr: std::net::SocketAddr, site: &Site, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(site.dir.join("ca.pem"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text.lines().find(|l| l.contains(", Cipher is "))?;
    let cipher = line.split(", Cipher is ").nth(1)?.trim().to_string();
    (cipher != "(NONE)").then_some(cipher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_sees_tls_1_3_and_1_2_with_ecdhe_suites_only_and_no_tls_1_1() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        panic!("openssl is not installed (.ci/run installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let (agent, site) = agent(&dir);
    let addr = agent.tls_addr.unwrap();
    let tls13 = s_client(addr, &site, &["-tls1_3"]);
    assert!(
        tls13.as_deref().is_some_and(|c| c.starts_with("TLS_")),
        "{tls13:?}"
    );
    assert_eq!(
        s_client(addr, &site, &["-tls1_1"]),
        None,
        "TLS 1.1 was accepted"
    );
    assert_eq!(
        s_client(addr, &site, &["-tls1"]),
        None,
        "TLS 1.0 was accepted"
    );
    let mut accepted = Vec::new();
    for suite in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256",
        // The whitepaper's two static-RSA suites: rustls never offers them.
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-SHA256",
        "AES128-SHA",
    ] {
        if let Some(c) = s_client(addr, &site, &["-tls1_2", "-cipher", suite]) {
            accepted.push(c);
        }
    }
    eprintln!("TLS 1.2 suites accepted: {accepted:?}");
    assert_eq!(
        accepted,
        [
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        ],
        "the server key is ECDSA P-256: only its ECDHE-ECDSA AEAD suites"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_chargers_and_keeps_the_others_connected() {
    let agent = Agent::start(
        "[[ocpp.chargers]]\nid = \"CPA\"\n[[ocpp.chargers]]\nid = \"CPB\"\n",
        "",
    );
    let mut a = common::Charger::connect(&agent.url("CPA")).await;
    let mut b = common::Charger::connect(&agent.url("CPB")).await;
    a.boot().await;
    b.boot().await;
    assert!(matches!(
        common::Charger::try_connect(&agent.url("CPC"), Some("ocpp1.6"), None).await,
        common::Connect::Refused(404)
    ));
    let text = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(&agent.config, text.replace("id = \"CPB\"", "id = \"CPC\"")).unwrap();
    signal(agent.child.id(), "HUP");
    assert!(
        eventually(10, || agent.log().contains("config reloaded")).await,
        "{}",
        agent.log()
    );
    // CPB's entry went: its socket is closed; CPA's did not change: it is still served.
    assert!(
        b.try_recv(Duration::from_secs(5)).await.is_none(),
        "CPB still connected"
    );
    assert_eq!(a.call("Heartbeat", json!({})).await[0], 3);
    let mut c = common::Charger::connect(&agent.url("CPC")).await;
    c.boot().await;
    assert!(
        eventually(10, || agent
            .events_of("charger.disconnected")
            .iter()
            .any(|e| e["cp_id"] == "CPB" && e["reason"] == "config_changed"))
        .await
    );
    // An invalid new config is refused with a log line; the running one stays.
    std::fs::write(&agent.config, "[site]\nid = 'bad id'\n").unwrap();
    signal(agent.child.id(), "HUP");
    assert!(
        eventually(10, || agent.log().contains("config reload refused")).await,
        "{}",
        agent.log()
    );
    assert!(agent.log().contains("site.id"), "the refusal names the key");
    assert_eq!(c.call("Heartbeat", json!({})).await[0], 3);
    assert!(matches!(
        common::Charger::try_connect(&agent.url("CPB"), Some("ocpp1.6"), None).await,
        common::Connect::Refused(404)
    ));
}
