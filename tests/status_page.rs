//! The status page (docs/status.md "The page") in a real browser: Debian's headless
//! chromium loads `/` from the real agent with a 1.6 charger charging and a 2.0.1 charger
//! connected and renders both and the running session; a page left open (watched over the
//! DevTools protocol) shows the energy grow, the 2.0.1 charger go offline and, once the
//! agent is killed, the banner; a fresh load shows the same. It also takes the screenshot
//! the docs show, shows a charger's markup as text, and opens the page with no agent
//! behind it to see the banner.
//!
//! Without chromium the test is skipped with a message, unless `CI` is set: there it fails.
//! `CHARGESITE_SCREENSHOT_TO=docs/status-page.png` copies the screenshot into the docs.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{status_addr, Agent, Charger};
use serde_json::{json, Value};

/// A tag that must never appear on the page.
const TAG: &str = "SECRET-TAG-PAGE";
/// Kill the browser after this long.
const BROWSER_LIMIT: Duration = Duration::from_secs(30);

/// Every run: headless, a fresh profile (given apart), nothing fetched but the page.
const BROWSER_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

/// Kills a browser started with `process_group(0)` and all its children (renderers, GPU
/// process), then reaps it.
fn kill_group(child: &mut std::process::Child) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain syscall; the group is the one this test made for the browser.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    let _ = child.wait();
}

fn chromium() -> Option<PathBuf> {
    let p = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    p.exists().then_some(p)
}

/// A headless chromium driven over the DevTools protocol (its WebSocket), to watch one
/// page update itself. Killed with its whole process group when dropped.
struct Live {
    child: std::process::Child,
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    session: String,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Live {
    async fn open(chromium: &Path, url: &str) -> Live {
        let profile = tempfile::tempdir().unwrap();
        let data = profile.path().join("p");
        let child = Command::new(chromium)
            .args(BROWSER_FLAGS)
            .arg(format!("--user-data-dir={}", data.display()))
            .args([
                "--remote-debugging-port=0",
                "--window-size=1200,900",
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn chromium");
        let port_file = data.join("DevToolsActivePort");
        let mut endpoint = None;
        let found = common::eventually(BROWSER_LIMIT.as_secs(), || {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            let mut lines = text.lines();
            // Written in two steps: the path is whole once it holds the browser's UUID.
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                if path.len() == "/devtools/browser/".len() + 36 {
                    endpoint = Some((port.to_string(), path.to_string()));
                }
            }
            endpoint.is_some()
        })
        .await;
        assert!(found, "chromium wrote no DevToolsActivePort");
        let (port, path) = endpoint.unwrap();
        let tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .unwrap();
        let (ws, _) = tokio::time::timeout(
            BROWSER_LIMIT,
            tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}{path}"), tcp),
        )
        .await
        .expect("no DevTools handshake within the limit")
        .expect("DevTools WebSocket");
        let mut live = Live {
            child,
            ws,
            session: String::new(),
            next: 0,
            _profile: profile,
        };
        let target = live
            .cdp(None, "Target.createTarget", json!({"url": url}))
            .await;
        let attached = live
            .cdp(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        live.session = attached["sessionId"].as_str().unwrap().to_string();
        live
    }

    /// One DevTools command; its result (events in between are skipped).
    async fn cdp(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        self.next += 1;
        let mut msg = json!({"id": self.next, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        let until = tokio::time::Instant::now() + BROWSER_LIMIT;
        loop {
            let m = tokio::time::timeout_at(until, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools closed")
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["id"] == json!(self.next) {
                    assert!(v["error"].is_null(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// What the page shows now: charger card titles, session figures, banner, header.
    async fn shown(&mut self) -> Value {
        let expression = "JSON.stringify({\
            chargers: [...document.querySelectorAll('#chargers h3')].map(h => h.textContent),\
            sessions: [...document.querySelectorAll('#sessions .big')].map(e => e.textContent),\
            banner: document.getElementById('banner').className + ' ' + document.getElementById('banner').textContent,\
            updated: document.getElementById('updated').textContent})";
        let session = self.session.clone();
        let r = self
            .cdp(
                Some(&session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        serde_json::from_str(r["result"]["value"].as_str().unwrap_or("null")).unwrap()
    }

    /// Waits up to `secs` for the page to show what `want` accepts; the last view.
    async fn until(&mut self, secs: u64, want: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.shown().await;
            if want(&v) || Instant::now() > end {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Runs headless chromium on `url` with `extra` flags, in a fresh profile, bounded by
/// [`BROWSER_LIMIT`]; returns its stdout (the DOM, with `--dump-dom`).
fn browse(chromium: &Path, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = profile.path().join("stdout");
    let mut child = Command::new(chromium)
        .args(BROWSER_FLAGS)
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("p").display()
        ))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        // Its own process group, so that a hung browser goes with all its children.
        .process_group(0)
        .spawn()
        .expect("spawn chromium");
    let until = Instant::now() + BROWSER_LIMIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > until {
            kill_group(&mut child);
            panic!("chromium did not finish within {BROWSER_LIMIT:?} on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(out).unwrap_or_default()
}

/// The DOM after the page has run for a few seconds of virtual time (two polls).
async fn dom(chromium: &Path, url: &str) -> String {
    let (c, u) = (chromium.to_path_buf(), url.to_string());
    tokio::task::spawn_blocking(move || {
        browse(&c, &u, &["--dump-dom", "--virtual-time-budget=3000"])
    })
    .await
    .unwrap()
}

/// One HTTP/1.1 GET: (the whole response's bytes, head, body).
fn get(addr: SocketAddr, path: &str) -> (usize, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the status server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw.clone()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    (raw.len(), head.to_ascii_lowercase(), body.to_string())
}

fn start_agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let text = common::base_config(
        dir.path(),
        "[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\n\n\
         [auth]\nfree_vend = true\n\n[status]\nlisten = \"127.0.0.1:0\"\n",
    );
    let config = dir.path().join("chargesite.toml");
    std::fs::write(&config, text).unwrap();
    Agent::start_with(dir, config)
}

/// An RFC 3339 timestamp `secs` seconds from now (a charger clock in sync).
fn at(secs: i64) -> String {
    (chargesite::time::now() + chrono::Duration::seconds(secs))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The card title and pill of charger `id` as the page writes them.
fn charger_pill(id: &str, state: &str) -> String {
    let class = if state == "online" { "ok" } else { "bad" };
    format!("<h3><span>{id}</span><span class=\"pill {class}\">{state}</span></h3>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_chargers_and_the_running_session_in_a_real_browser_and_updates() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and /usr/bin/chromium is missing (.ci/run installs it)"
        );
        eprintln!("skipped: no /usr/bin/chromium (apt-get install chromium)");
        return;
    };
    let began = Instant::now();
    let agent = start_agent();
    let addr = status_addr(&agent).await;
    let url = format!("http://{addr}/");

    // A 1.6 charger charging, a 2.0.1 one available, one refused connection.
    let mut cp16 = Charger::connect(&agent.url("CP-PAGE-16")).await;
    cp16.boot().await;
    cp16.ok(
        "StatusNotification",
        json!({"connectorId": 1, "status": "Charging", "errorCode": "NoError"}),
    )
    .await;
    let tx = cp16.start(1, TAG, 1000, &at(0)).await;
    cp16.meter(1, tx, &at(1), 1600).await;
    let mut cp201 = Charger::connect_v201(&agent.url("CP-PAGE-201")).await;
    cp201
        .ok(
            "BootNotification",
            json!({"reason": "PowerUp", "chargingStation": {"model": "AC22", "vendorName": "Vendor201",
                   "serialNumber": "SN-201", "firmwareVersion": "2.0.1-7"}}),
        )
        .await;
    cp201
        .ok(
            "StatusNotification",
            json!({"timestamp": at(0), "connectorStatus": "Available", "evseId": 1, "connectorId": 1}),
        )
        .await;
    let refused = Charger::try_connect(
        &format!("ws://{}/not-ocpp/X", agent.addr),
        Some("ocpp1.6"),
        None,
    )
    .await;
    assert!(matches!(refused, common::Connect::Refused(_)));

    // What goes over the wire for `/`.
    let (wire, head, body) = get(addr, "/");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'sha256-"),
        "{head}"
    );
    assert!(!head.contains("unsafe-inline"), "{head}");
    assert!(wire < 16 * 1024, "the page is {wire} bytes");
    eprintln!(
        "GET / is {wire} bytes over the wire ({} of them the page)",
        body.len()
    );

    // The first load: both chargers, the session, the refusal. The script ran under the
    // served CSP, or none of this would be in the DOM.
    let first = dom(&chromium, &url).await;
    for want in [
        "chargesite · site-001",
        &charger_pill("CP-PAGE-16", "online"),
        &charger_pill("CP-PAGE-201", "online"),
        "TestVendor / T1",
        "Vendor201 / AC22",
        "2.0.1-7",
        "CP-PAGE-16 · connector 1",
        "7.2 kW · 0.60 kWh",
        "Charging",
        "Available",
        "bad_path",
        "updated ",
    ] {
        assert!(
            first.contains(want),
            "{want:?} is not on the page:\n{first}"
        );
    }
    assert!(
        first.contains("<div id=\"banner\" role=\"alert\" class=\"\"></div>"),
        "the banner is up: {first}"
    );
    assert!(!first.contains(TAG));

    // One page left open: it must update itself as meter values flow on and the 2.0.1
    // charger goes away.
    let mut live = Live::open(&chromium, &url).await;
    let seen = live
        .until(15, |v| v["sessions"][0] == "7.2 kW · 0.60 kWh")
        .await;
    assert_eq!(seen["sessions"][0], "7.2 kW · 0.60 kWh", "{seen}");
    assert!(
        seen["updated"].as_str().unwrap().starts_with("updated "),
        "{seen}"
    );

    // Meter values flow on, and the 2.0.1 charger goes away.
    cp16.meter(1, tx, &at(2), 2200).await;
    cp16.meter(1, tx, &at(3), 2800).await;
    cp201.ws.close(None).await.unwrap();
    drop(cp201);
    let offline = common::eventually(10, || {
        let (_, _, b) = get(addr, "/api/v1/status");
        let v: Value = serde_json::from_str(&b).unwrap();
        v["chargers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "CP-PAGE-201" && c["online"] == false)
    })
    .await;
    assert!(offline, "the API never showed CP-PAGE-201 offline");

    let seen = live
        .until(15, |v| {
            v["sessions"][0] == "7.2 kW · 1.80 kWh"
                && v["chargers"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("CP-PAGE-201offline"))
        })
        .await;
    assert_eq!(
        seen["sessions"][0], "7.2 kW · 1.80 kWh",
        "the open page did not update: {seen}"
    );
    assert!(
        seen["chargers"]
            .as_array()
            .unwrap()
            .contains(&json!("CP-PAGE-201offline")),
        "the open page did not show CP-PAGE-201 offline: {seen}"
    );
    assert!(seen["chargers"]
        .as_array()
        .unwrap()
        .contains(&json!("CP-PAGE-16online")));

    // A fresh load shows the same.
    let second = dom(&chromium, &url).await;
    assert!(second.contains("7.2 kW · 1.80 kWh"), "{second}");
    assert!(!second.contains("0.60 kWh"), "{second}");
    assert!(
        second.contains(&charger_pill("CP-PAGE-201", "offline")),
        "{second}"
    );
    assert!(
        second.contains(&charger_pill("CP-PAGE-16", "online")),
        "{second}"
    );

    // The screenshot the docs show (a laptop's window), and a phone's for a look.
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for (name, size) in [
        ("status-page.png", "1200,900"),
        ("status-page-phone.png", "412,1800"),
    ] {
        let path = shots.join(name);
        let _ = std::fs::remove_file(&path);
        let (c, u, arg, size) = (
            chromium.clone(),
            url.clone(),
            format!("--screenshot={}", path.display()),
            format!("--window-size={size}"),
        );
        tokio::task::spawn_blocking(move || {
            browse(&c, &u, &[&arg, &size, "--virtual-time-budget=3000"])
        })
        .await
        .unwrap();
        let png = std::fs::read(&path).unwrap_or_default();
        assert!(
            png.starts_with(b"\x89PNG"),
            "no screenshot at {}",
            path.display()
        );
    }
    if let Some(to) = std::env::var_os("CHARGESITE_SCREENSHOT_TO") {
        std::fs::copy(shots.join("status-page.png"), &to).unwrap();
    }

    // Markup from a charger is shown as text, never run or parsed.
    let mut evil = Charger::connect(&agent.url("CP-PAGE-XSS")).await;
    evil.ok(
        "BootNotification",
        json!({"chargePointVendor": "<b id=\"xss\">V</b>", "chargePointModel": "<img src=x>"}),
    )
    .await;
    // The status server shares one store read a second between requests: wait until it
    // shows the new charger, so that the page's first poll does too.
    let shown =
        common::eventually(10, || get(addr, "/api/v1/status").2.contains("CP-PAGE-XSS")).await;
    assert!(shown, "the status API never showed CP-PAGE-XSS");
    let third = dom(&chromium, &url).await;
    assert!(
        third.contains("&lt;b id=\"xss\"&gt;V&lt;/b&gt; / &lt;img src=x&gt;"),
        "{third}"
    );
    assert!(
        !third.contains("<b id=\"xss\">") && !third.contains("<img"),
        "{third}"
    );
    drop(evil);

    // No agent behind the page: the banner says so.
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("page.html");
    std::fs::write(&lone, include_str!("../src/status/page.html")).unwrap();
    let alone = dom(&chromium, &format!("file://{}", lone.display())).await;
    assert!(
        alone.contains("The agent does not answer") && alone.contains("class=\"on\""),
        "{alone}"
    );

    // The agent goes away under the open page: the banner says so, and when the page
    // last heard from it.
    drop(cp16);
    let mut agent = agent;
    agent.sigkill();
    let seen = live
        .until(15, |v| v["banner"].as_str().unwrap().starts_with("on "))
        .await;
    let banner = seen["banner"].as_str().unwrap();
    assert!(
        banner.starts_with("on The agent does not answer") && banner.contains("the state at"),
        "{seen}"
    );
    drop(live);

    eprintln!("the browser test took {:?}", began.elapsed());
}
