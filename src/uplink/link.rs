//! The MQTT link: rumqttc options (TLS with rustls/ring, credentials, Will, packet size)
//! and the task that polls rumqttc's event loop.
//!
//! The event loop runs in a task of its own, polled and never cancelled mid-poll (rumqttc
//! does not promise cancel safety). Two rumqttc behaviours are designed around:
//! - on a clean-session reconnect its in-memory queue is dropped, and anything still in
//!   its request channel would be sent on the *next* connection. So after a link error this
//!   task tells the driver first, waits until the driver has stopped publishing, then
//!   empties rumqttc's channel and pending queue before reconnecting. Every publish after a
//!   ConnAck is then one the driver made after that ConnAck, in order.
//! - `publish()` returns no packet id. The driver therefore matches rumqttc's
//!   `Outgoing::Publish(pkid)` events, in order, against its own publishes since the
//!   ConnAck, and PUBACKs by pkid. SQLite, not rumqttc, remembers what is unsent.
//!
//! A link that stays silent for 1.5 × keepalive (no PINGRESP, nothing) is declared dead
//! and dropped here, sooner than rumqttc's own second missed ping would.
//!
//! Incoming packets have a limit of their own, [`read_limit`], larger than any command the
//! agent accepts, so that an oversized command can still be read and answered `too_large`.
//! rumqttc checks the limit against the fixed header, before it reads the body, and fails
//! the whole connection (`PayloadSizeLimitExceeded`); that case is reported as
//! [`LinkEvent::Down`] with `oversized`, so the driver can make sure a retained one costs
//! one reconnect and not a loop.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    mqttbytes, AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, QoS,
    StateError, TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::UplinkConfig;

/// Where the system's CA bundle lives on Debian-family gateways; used for `mqtts://` when
/// no `ca_file` is configured.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Setting up the link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A TLS file could not be read or parsed.
    #[error("{key} {path}: {message}")]
    Tls {
        /// Config key.
        key: &'static str,
        /// File.
        path: String,
        /// Why.
        message: String,
    },
}

/// What the event loop task tells the driver.
#[derive(Debug)]
pub enum LinkEvent {
    /// A rumqttc event.
    Mqtt(Event),
    /// The link is down. The driver stops publishing, then answers on `resume`.
    Down {
        /// Why.
        reason: String,
        /// The broker sent a packet of this many bytes, beyond [`read_limit`]; rumqttc
        /// dropped the connection without reading it.
        oversized: Option<usize>,
        /// Answer once no more publishes will be made until the next ConnAck.
        resume: oneshot::Sender<()>,
    },
}

/// The `<root>/state` payload the broker publishes for us when we vanish.
pub fn will_payload() -> &'static str {
    r#"{"online":false}"#
}

/// Headroom over a payload for the topic and MQTT headers.
const HEADER_ROOM: usize = 8192;

/// The least the link reads: commands stay answerable as `too_large` up to here.
const MIN_READ_LIMIT: usize = 2 << 20;

/// The largest incoming packet rumqttc will read: twice `max_command_bytes`, at least 2 MiB,
/// plus headroom.
///
/// Why not more: rumqttc reads into one `BytesMut` per connection that grows to hold a
/// whole packet (tokio-util's `Framed` reserves the packet's full length) and never
/// shrinks; it is freed only when the connection is. So this is also the memory one
/// message can pin on the gateway until the next reconnect, and 2 MiB is affordable
/// there where 16 MiB is not. Anything larger is not read at all (rumqttc refuses it from
/// its fixed header): it costs one reconnect, and the driver clears a retained one.
pub fn read_limit(cfg: &UplinkConfig) -> usize {
    cfg.max_command_bytes.saturating_mul(2).max(MIN_READ_LIMIT) + HEADER_ROOM
}

/// rumqttc options for this site.
///
/// # Errors
/// [`LinkError`] when TLS material cannot be loaded.
pub fn options(
    cfg: &UplinkConfig,
    client_id: &str,
    state_topic: &str,
) -> Result<MqttOptions, LinkError> {
    let mut o = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keepalive);
    o.set_clean_session(true);
    o.set_manual_acks(true);
    // Outgoing: batches are up to max_payload_bytes (results and state are far smaller).
    o.set_max_packet_size(read_limit(cfg), cfg.max_payload_bytes + HEADER_ROOM);
    o.set_inflight(100);
    o.set_last_will(LastWill::new(
        state_topic,
        will_payload(),
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(u) = &cfg.username {
        o.set_credentials(u.clone(), cfg.password.clone().unwrap_or_default());
    }
    if cfg.tls {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            tls_config(cfg)?,
        ))));
    }
    Ok(o)
}

fn tls_err(key: &'static str, path: &std::path::Path, message: impl ToString) -> LinkError {
    LinkError::Tls {
        key,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// rustls client config with the `ring` provider: the CA file (else the system bundle),
/// and a client certificate for mTLS when configured.
fn tls_config(cfg: &UplinkConfig) -> Result<rustls::ClientConfig, LinkError> {
    let (ca_key, ca_path) = match &cfg.ca_file {
        Some(p) => ("uplink.ca_file", p.clone()),
        None => (
            "uplink.ca_file (system bundle)",
            std::path::PathBuf::from(SYSTEM_CA_BUNDLE),
        ),
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(&ca_path).map_err(|e| tls_err(ca_key, &ca_path, e))?;
    for cert in certs {
        let cert = cert.map_err(|e| tls_err(ca_key, &ca_path, e))?;
        roots.add(cert).map_err(|e| tls_err(ca_key, &ca_path, e))?;
    }
    if roots.is_empty() {
        return Err(tls_err(ca_key, &ca_path, "no certificate in file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(ca_key, &ca_path, e))?
        .with_root_certificates(roots);
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| tls_err("uplink.cert_file", cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_err("uplink.cert_file", cert, e))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| tls_err("uplink.key_file", key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| tls_err("uplink.key_file", key, e))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Creates the client and spawns the event loop task.
pub fn start(
    options: MqttOptions,
    keepalive: Duration,
    shutdown: CancellationToken,
) -> (AsyncClient, mpsc::Receiver<LinkEvent>) {
    let (client, eventloop) = AsyncClient::new(options, 512);
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(eventloop, tx, keepalive, shutdown));
    (client, rx)
}

async fn run(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<LinkEvent>,
    keepalive: Duration,
    shutdown: CancellationToken,
) {
    let dead_after = keepalive + keepalive / 2;
    let mut backoff = Duration::from_millis(250);
    let mut last_heard = tokio::time::Instant::now();
    let mut connected = false;
    loop {
        let polled = if connected {
            match tokio::time::timeout_at(last_heard + dead_after, eventloop.poll()).await {
                Ok(r) => r.map_err(failure),
                Err(_) => Err((
                    format!("no traffic from the broker for {dead_after:?}"),
                    None,
                )),
            }
        } else {
            eventloop.poll().await.map_err(failure)
        };
        match polled {
            Ok(event) => {
                if let Event::Incoming(packet) = &event {
                    last_heard = tokio::time::Instant::now();
                    if matches!(packet, rumqttc::Packet::ConnAck(_)) {
                        connected = true;
                        backoff = Duration::from_millis(250);
                    }
                }
                let done = matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect));
                if tx.send(LinkEvent::Mqtt(event)).await.is_err() || done {
                    return;
                }
            }
            Err((reason, oversized)) => {
                connected = false;
                let (resume, resumed) = oneshot::channel();
                let down = LinkEvent::Down {
                    reason,
                    oversized,
                    resume,
                };
                if tx.send(down).await.is_err() {
                    return;
                }
                // Wait until the driver has stopped publishing; then nothing it sent for
                // the old connection can leak into the next one.
                let _ = resumed.await;
                eventloop.clean();
                eventloop.pending.clear();
                let jitter = Duration::from_millis(
                    u64::from(jitter_ms()) % (backoff.as_millis() as u64 / 2 + 1),
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff + jitter) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Why the link failed, and the size of the packet when it was one too large to read.
fn failure(e: ConnectionError) -> (String, Option<usize>) {
    match e {
        ConnectionError::ConnectionRefused(code) => (format!("broker refused: {code:?}"), None),
        ConnectionError::MqttState(StateError::Deserialization(
            mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => (
            format!("the broker sent a packet of {n} bytes, beyond the read limit"),
            Some(n),
        ),
        other => (other.to_string(), None),
    }
}

/// A little jitter so a fleet of gateways does not reconnect in lockstep after a broker
/// restart; no RNG crate needed for that.
fn jitter_ms() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or(0)
}
