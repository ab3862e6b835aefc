//! The OCPP-J WebSocket server: accepts chargers and drives one task per connection.
//!
//! The handshake's decision (path, Basic auth, subprotocol) is [`super::handshake`]'s;
//! this module feeds it the request and runs the cached argon2 check it asks for. Each
//! connection is then one `select!` over its socket, the CALLs the agent wants sent to
//! the charger, the pending CALL's deadline (kept by [`super::rpc`]), a ping timer and
//! the shutdown token; the loop only moves frames between them. Pings run on a seconds
//! scale, so a charger whose socket died shows offline within
//! `ping_interval + pong_timeout`, not after TCP's quarter of an hour.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::binding::{self, BoundSerial, Identity};
use super::frame::{self, ErrorCode, Frame, Version};
use super::guard::Guard;
use super::handler::{self, Context, Decoded};
use super::handshake::{
    self, Chargers, Decision, Refusal, Subprotocol, Transport, Upgrade, Verified,
};
use super::registry::{CallFailure, OutboundCall, Registry};
use super::rpc::{Busy, Outbound};
use super::tls;
use crate::config::{ChargerEntry, OcppConfig};
use crate::notice::Notice;
use crate::time::now;

/// Time a client has to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a single write may take before the peer is considered dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a socket we close on a misbehaving peer is drained first, and how much of it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;
/// argon2 runs at once (19 MiB each): a storm of handshakes with passwords not yet
/// verified gets 429 beyond it instead of the gateway's memory.
const MAX_ARGON2: usize = 2;

/// Everything the server's tasks share.
pub struct Server {
    ctx: Arc<Context>,
    registry: Registry,
    /// Passwords that already verified against a charger's argon2 hash, so that a
    /// reconnect storm does not cost an argon2 run (19 MiB, tens of ms) per socket.
    verified: Mutex<HashMap<String, String>>,
    connections: Arc<Semaphore>,
    /// Who may connect and how; swapped by [`Server::reload`].
    access: RwLock<Arc<Access>>,
    /// Failed handshakes and the `security.event` rate limit.
    guard: Mutex<Guard>,
    /// The `wss://` listener's TLS config, when `[ocpp] tls_listen` is set.
    tls: Option<tls::Slot>,
    argon2_running: AtomicUsize,
}

/// The part of `[ocpp]` that SIGHUP may change without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Access {
    allow_unknown: bool,
    chargers: HashMap<String, ChargerEntry>,
    cpo_name: Option<String>,
}

impl Access {
    fn of(c: &OcppConfig) -> Self {
        Self {
            allow_unknown: c.allow_unknown_chargers,
            chargers: c.chargers.clone(),
            cpo_name: c.cpo_name.clone(),
        }
    }
}

/// What one text frame from the charger calls for.
enum Reply {
    Nothing,
    Send(String),
    /// Close the socket: the charger broke its binding (the text says how).
    Refuse(String),
}

/// Why a connection ended; recorded as `charger.disconnected`'s `reason`.
#[derive(Debug, Clone, Copy)]
enum EndReason {
    Closed,
    Dead,
    Error,
    Shutdown,
    Replaced,
    Protocol,
    /// Its `[[ocpp.chargers]]` entry changed or went (SIGHUP).
    Reconfigured,
    /// Its BootNotification reported a serial number other than the bound one.
    Binding,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::Dead => "dead",
            EndReason::Error => "error",
            EndReason::Shutdown => "shutdown",
            EndReason::Replaced => "replaced",
            EndReason::Protocol => "protocol",
            EndReason::Reconfigured => "config_changed",
            EndReason::Binding => "serial_mismatch",
        }
    }
}

impl Server {
    /// A server over the given handler context and registry; `tls` serves `wss://`.
    pub fn new(ctx: Arc<Context>, registry: Registry, tls: Option<tls::Slot>) -> Arc<Self> {
        let max = ctx.ocpp.max_connections;
        let access = Access::of(&ctx.ocpp);
        let limit = ctx.ocpp.handshake_failures_per_minute;
        Arc::new(Self {
            ctx,
            registry,
            verified: Mutex::new(HashMap::new()),
            connections: Arc::new(Semaphore::new(max)),
            access: RwLock::new(Arc::new(access)),
            guard: Mutex::new(Guard::new(limit)),
            tls,
            argon2_running: AtomicUsize::new(0),
        })
    }

    fn access(&self) -> Arc<Access> {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a new `[ocpp]` (SIGHUP): the charger list, `cpo_name` and the TLS files.
    /// Chargers whose entry changed or went are disconnected, so they come back under the
    /// new one; the rest stay connected. Returns what the log should say. Settings that
    /// only a restart applies (listen addresses, timeouts) are named, not applied.
    ///
    /// # Errors
    /// The reason, when the new TLS files cannot be used: then nothing changes.
    pub fn reload(&self, new: &OcppConfig) -> Result<Vec<String>, String> {
        let mut notes = Vec::new();
        match (&self.tls, &new.tls) {
            (Some(slot), Some(t)) => {
                if t.listen != slot.config().listen {
                    notes.push("ocpp.tls_listen changed: a restart applies it".to_string());
                }
                slot.reload(t).map_err(|e| e.to_string())?;
                notes.push("TLS certificates and keys re-read".to_string());
            }
            (None, Some(_)) => notes.push("ocpp.tls_listen added: a restart applies it".into()),
            (Some(_), None) => notes.push("ocpp.tls_listen removed: a restart applies it".into()),
            (None, None) => {}
        }
        let old = self.access();
        let next = Access::of(new);
        for (id, _, _) in self.registry.connected_versions() {
            let before = old.chargers.get(&id);
            let after = next.chargers.get(&id);
            let allowed = after.is_some() || next.allow_unknown;
            let profile3 = after.is_some_and(|e| e.security_profile == 3);
            let changed = before != after || (profile3 && old.cpo_name != next.cpo_name);
            if (!allowed || changed) && self.registry.disconnect(&id) {
                notes.push(format!(
                    "charger {id}: its entry changed; disconnected to reconnect under the new one"
                ));
            }
        }
        {
            let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            verified.retain(|id, _| {
                old.chargers.get(id).map(|e| &e.password_hash)
                    == next.chargers.get(id).map(|e| &e.password_hash)
            });
        }
        let added = next
            .chargers
            .keys()
            .filter(|k| !old.chargers.contains_key(*k))
            .count();
        let removed = old
            .chargers
            .keys()
            .filter(|k| !next.chargers.contains_key(*k))
            .count();
        notes.push(format!(
            "{} chargers listed ({added} added, {removed} removed)",
            next.chargers.len()
        ));
        *self.access.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(notes)
    }

    /// Accepts `ws://` connections until `shutdown` is cancelled, then waits (bounded)
    /// for the connection tasks to close their sockets and record their disconnects.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        self.serve_on(listener, false, shutdown).await;
    }

    /// The same for `wss://` (the server must have been given its TLS config).
    pub async fn serve_tls(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        self.serve_on(listener, true, shutdown).await;
    }

    async fn serve_on(
        self: Arc<Self>,
        listener: TcpListener,
        secure: bool,
        shutdown: CancellationToken,
    ) {
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let server = self.clone();
                        let token = shutdown.clone();
                        tracker.spawn(async move { server.accept(stream, peer, secure, token).await });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        drop(listener);
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some charger connections did not close within 10 s");
        }
    }

    fn ws_config(&self) -> WebSocketConfig {
        let max = self.ctx.ocpp.max_message_bytes;
        // tungstenite's 128 KiB default buffers cost ~135 KiB per charger; 4 KiB buffers
        // keep a thousand chargers inside a gateway's memory.
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_write_buffer_size(max + 4096)
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }

    /// One accepted TCP connection: the TLS handshake first on `wss://`, then the
    /// WebSocket one.
    async fn accept(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        secure: bool,
        shutdown: CancellationToken,
    ) {
        // Taken before the TLS handshake, so a storm of them is bounded too.
        let Ok(_permit) = self.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing");
            return;
        };
        if !secure {
            return self.connection(stream, peer, None, shutdown).await;
        }
        let Some(slot) = &self.tls else { return };
        let acceptor = tokio_rustls::TlsAcceptor::from(slot.current());
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let detail = format!("TLS handshake refused: {e}");
                tracing::warn!(%peer, "{detail}");
                self.refused(None, peer, "tls_refused", detail).await;
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        let identity = match leaf.map(|der| binding::identity_of_cert(der)) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                let detail = format!("unreadable client certificate: {e}");
                tracing::warn!(%peer, "{detail}");
                self.refused(None, peer, "tls_refused", detail).await;
                return;
            }
        };
        self.connection(stream, peer, Some(identity), shutdown)
            .await;
    }

    /// The WebSocket handshake and the connection's life; `tls` is `Some` on `wss://`,
    /// with the verified client certificate's subject if there was one.
    async fn connection<S>(
        self: Arc<Self>,
        mut stream: S,
        peer: SocketAddr,
        tls: Option<Option<Identity>>,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let transport = match &tls {
            None => Transport::Plain,
            Some(client) => Transport::Tls {
                client: client.as_ref(),
            },
        };
        let mut decided: Option<Decision> = None;
        let mut refused: Option<(Option<String>, Refusal, String)> = None;
        let server = self.clone();
        // tungstenite's callback returns its `ErrorResponse` by value; not ours to shrink.
        #[allow(clippy::result_large_err)]
        let callback = |req: &Request, resp: Response| {
            server.handshake(req, resp, peer, transport, &mut decided, &mut refused)
        };
        // Over `&mut stream`, so the socket is still ours when tungstenite gives up on a
        // request without answering it (see `unanswered`).
        let handshake = tokio_tungstenite::accept_hdr_async_with_config(
            &mut stream,
            callback,
            Some(self.ws_config()),
        );
        let mut ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                // A refusal was logged by the callback, with the charger id: one line each.
                match refused {
                    Some((cp_id, refusal, detail)) => {
                        self.record_refusal(cp_id, peer, refusal, detail).await
                    }
                    None => tracing::info!(%peer, "handshake failed: {e}"),
                }
                if let Some(status) = unanswered(&e) {
                    answer_and_close(&mut stream, status).await;
                }
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "handshake timed out");
                return;
            }
        };
        match decided {
            Some(Decision::Accept {
                cp_id,
                subprotocol,
                serial,
                profile,
            }) => {
                // `name()` is one of `handshake::SUPPORTED`, each a known version.
                let version = Version::from_subprotocol(subprotocol.name()).unwrap_or(Version::V16);
                let link = Link {
                    cp_id,
                    version,
                    peer,
                    serial,
                    profile,
                };
                self.run(ws, link, shutdown).await;
            }
            Some(Decision::NoSubprotocol { cp_id }) => {
                tracing::warn!(cp_id, "no supported subprotocol offered; closing");
                let frame = CloseFrame {
                    code: CloseCode::Protocol,
                    reason: format!("supported subprotocol: {}", handshake::SUPPORTED.join(", "))
                        .into(),
                };
                close_and_linger(&mut ws, frame).await;
            }
            // A refusal never completes the handshake.
            Some(Decision::Refuse(_)) | None => {}
        }
    }

    /// The handshake callback: [`handshake::decide`] over the request, with the server's
    /// cached argon2 check as the password verifier.
    #[allow(clippy::result_large_err)]
    fn handshake(
        &self,
        req: &Request,
        mut resp: Response,
        peer: SocketAddr,
        transport: Transport<'_>,
        decided: &mut Option<Decision>,
        refused: &mut Option<(Option<String>, Refusal, String)>,
    ) -> Result<Response, ErrorResponse> {
        let headers = req.headers();
        let upgrade = Upgrade {
            path: req.uri().path(),
            authorization: headers
                .get_all(AUTHORIZATION)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect(),
            protocols: headers
                .get_all(SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect(),
            transport,
        };
        let access = self.access();
        let chargers = Chargers {
            allow_unknown: access.allow_unknown,
            listed: &access.chargers,
            assume: self.ctx.ocpp.assume_subprotocol,
            cpo_name: access.cpo_name.as_deref(),
        };
        let decision = handshake::decide(&upgrade, chargers, |c| {
            self.verify(c.cp_id, c.password, c.hash, peer)
        });
        match &decision {
            Decision::Refuse(refusal) => {
                let cp_id = handshake::cp_id_from_path(upgrade.path);
                let expected_cn = cp_id
                    .and_then(|id| access.chargers.get(id))
                    .and_then(|e| e.cert_cn.as_deref())
                    .or(cp_id)
                    .unwrap_or("");
                let detail = refusal_detail(refusal, expected_cn);
                match refusal {
                    Refusal::BadPath => tracing::info!(%peer, "refused: {detail}"),
                    _ => tracing::warn!(cp_id, %peer, "refused: {detail}"),
                }
                // Counted before the answer is written: a client that sends its next guess
                // the moment it reads this one's 401 must find it counted.
                if *refusal != Refusal::Throttled {
                    let listed = cp_id.filter(|id| access.chargers.contains_key(*id));
                    self.guard()
                        .failed(listed, peer.ip(), std::time::Instant::now());
                }
                let response = reject(refusal);
                *refused = Some((cp_id.map(str::to_string), refusal.clone(), detail));
                *decided = Some(decision);
                return Err(response);
            }
            Decision::Accept {
                cp_id,
                subprotocol: Subprotocol::Assumed(p),
                ..
            } => {
                tracing::warn!(cp_id, "no subprotocol offered; assuming {p}");
            }
            Decision::Accept {
                subprotocol: Subprotocol::Agreed(p),
                ..
            } => {
                // `p` is one of `handshake::SUPPORTED`: constant, visible ASCII, so
                // `from_static` cannot panic.
                resp.headers_mut()
                    .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
            }
            // OCPP-J: complete the handshake without the header, then close (in
            // `connection`).
            Decision::NoSubprotocol { .. } => {}
        }
        *decided = Some(decision);
        Ok(resp)
    }

    /// A refused WebSocket handshake (already counted against its source, and the charger
    /// id its path named, by the handshake callback), for `/metrics`, the status page and
    /// upstream.
    async fn record_refusal(
        &self,
        cp_id: Option<String>,
        peer: SocketAddr,
        refusal: Refusal,
        detail: String,
    ) {
        // (already counted against its source by the handshake callback)
        let reason = refusal.kind().unwrap_or("bad_path");
        self.ctx.metrics.refused(crate::metrics::Refusal {
            at: now(),
            cp_id: cp_id.clone(),
            peer: peer.to_string(),
            reason,
        });
        if let Some(kind) = refusal.kind() {
            self.alert(cp_id, peer, kind, detail).await;
        }
    }

    /// A refused TLS handshake or a charger that broke its binding: counted against its
    /// source and reported like a refused WebSocket handshake.
    async fn refused(
        &self,
        cp_id: Option<String>,
        peer: SocketAddr,
        kind: &'static str,
        detail: String,
    ) {
        self.guard()
            .failed(cp_id.as_deref(), peer.ip(), std::time::Instant::now());
        self.ctx.metrics.refused(crate::metrics::Refusal {
            at: now(),
            cp_id: cp_id.clone(),
            peer: peer.to_string(),
            reason: kind,
        });
        self.alert(cp_id, peer, kind, detail).await;
    }

    /// A `security.event` upstream, rate-limited per remote address ([`Guard::report`]):
    /// the ones held back are counted into the next that goes.
    async fn alert(
        &self,
        cp_id: Option<String>,
        peer: SocketAddr,
        kind: &'static str,
        detail: String,
    ) {
        self.ctx.metrics.security_event(kind);
        let Some(suppressed) = self.guard().report(peer.ip(), std::time::Instant::now()) else {
            return;
        };
        let alert = crate::store::SecurityAlert {
            cp_id,
            kind,
            detail,
            remote: Some(peer.ip().to_string()),
            suppressed,
            at: now(),
        };
        if let Err(e) = self.ctx.store.security_alert(alert).await {
            tracing::error!(%peer, "cannot record the security event: {e}");
        }
    }

    /// Checks a charger's password: the cached one that verified before, else argon2,
    /// unless its source or id has failed too often lately or enough argon2 runs are
    /// going already (then 429, unchecked).
    fn verify(&self, cp_id: &str, password: &str, hash: &str, peer: SocketAddr) -> Verified {
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cp_id)
            .cloned();
        if let Some(c) = cached {
            if constant_time_eq(c.as_bytes(), password.as_bytes()) {
                return Verified::Yes;
            }
        }
        if !self
            .guard()
            .admits(Some(cp_id), peer.ip(), std::time::Instant::now())
        {
            return Verified::Throttled;
        }
        if self.argon2_running.fetch_add(1, Ordering::AcqRel) >= MAX_ARGON2 {
            self.argon2_running.fetch_sub(1, Ordering::AcqRel);
            return Verified::Throttled;
        }
        // argon2 is CPU- and memory-heavy: keep it off the async workers' hot path.
        let ok = tokio::task::block_in_place(|| crate::password::verify(password, hash));
        self.argon2_running.fetch_sub(1, Ordering::AcqRel);
        if ok {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(cp_id.to_string(), password.to_string());
        }
        ok.into()
    }

    async fn run<S>(&self, mut ws: WebSocketStream<S>, link: Link, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Link {
            cp_id,
            version,
            peer,
            serial,
            profile,
        } = link;
        let origin = crate::auth::Origin {
            remote: Some(peer.ip().to_string()),
            known: self.access().chargers.contains_key(&cp_id),
        };
        let reg = self
            .registry
            .register(&cp_id, version, profile, origin, &shutdown);
        let cancel = reg.cancel.clone();
        let mut calls = reg.calls;
        if let Err(e) = self
            .ctx
            .store
            .charger_connected(
                cp_id.clone(),
                version.as_str().to_string(),
                reg.replaced,
                now(),
            )
            .await
        {
            tracing::error!(cp_id, "cannot record connection: {e}");
        }
        self.ctx.notices.send(Notice::Connectors {
            cp_id: cp_id.clone(),
        });
        tracing::info!(cp_id, %peer, version = version.as_str(), profile, replaced = reg.replaced, "charger connected");
        self.ctx
            .power
            .changed(super::smart::Reason::ChargerReconnected, Some(&cp_id));
        self.ctx.reservations.connected(&cp_id);
        if version == Version::V201 {
            // A reconnect may follow transactions that ended while it was away. Listed
            // before the charger's first message is read, so only the transactions open
            // from before this connection are asked about.
            match self.ctx.store.open_v201_transactions(cp_id.clone()).await {
                Ok(open) if !open.is_empty() => {
                    handler::ask_open_transactions(&self.ctx, &cp_id, open)
                }
                Ok(_) => {}
                Err(e) => tracing::error!(cp_id, "cannot list its open transactions: {e}"),
            }
        }

        // A reconnect: is the charger's local list still the site's?
        handler::sync_local_list(
            self.ctx.store.clone(),
            self.registry.clone(),
            cp_id.clone(),
            self.ctx.ocpp.call_timeout,
            true,
        );

        let cfg = &self.ctx.ocpp;
        let mut ping =
            tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut rpc: Outbound<Waiter> = Outbound::new();
        // A stand-in deadline for the disabled timer branch (select! still builds it).
        let far = Instant::now() + Duration::from_secs(86400 * 365);

        let reason = loop {
            let deadline = rpc.deadline();
            tokio::select! {
                _ = cancel.cancelled() => {
                    break if shutdown.is_cancelled() {
                        EndReason::Shutdown
                    } else if self.registry.is_current(&cp_id, reg.conn_id) {
                        EndReason::Reconfigured
                    } else {
                        EndReason::Replaced
                    };
                }
                msg = ws.next() => {
                    let msg = match msg {
                        None => break EndReason::Closed,
                        Some(Err(e)) => {
                            let Some((code, why)) = violation(&e) else {
                                tracing::info!(cp_id, "socket error: {e}");
                                break EndReason::Error;
                            };
                            tracing::warn!(cp_id, "protocol violation: {e}");
                            close_and_linger(&mut ws, CloseFrame { code, reason: why.into() }).await;
                            break EndReason::Protocol;
                        }
                        Some(Ok(m)) => m,
                    };
                    last_heard = Instant::now();
                    let text = match msg {
                        Message::Text(t) => t,
                        Message::Close(_) => {
                            // tungstenite queued the echo of the charger's Close but only
                            // writes it on the next read or flush; without this flush the
                            // charger never sees its closing handshake answered.
                            let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.flush()).await;
                            break EndReason::Closed;
                        }
                        Message::Binary(_) => {
                            tracing::warn!(cp_id, "binary frame; OCPP-J is text only");
                            close_and_linger(&mut ws, CloseFrame { code: CloseCode::Unsupported, reason: "OCPP-J uses text frames".into() }).await;
                            break EndReason::Protocol;
                        }
                        _ => continue, // ping (answered by tungstenite), pong
                    };
                    match self.on_text(&cp_id, version, &serial, &mut rpc, text).await {
                        Reply::Nothing => {}
                        Reply::Send(reply) => if !send(&mut ws, reply).await {
                            break EndReason::Error;
                        },
                        Reply::Refuse(detail) => {
                            tracing::warn!(cp_id, %peer, "closing: {detail}");
                            self.refused(Some(cp_id.clone()), peer, "serial_mismatch", detail).await;
                            let frame = CloseFrame {
                                code: CloseCode::Policy,
                                reason: "serial number does not match this charger's binding".into(),
                            };
                            close_and_linger(&mut ws, frame).await;
                            break EndReason::Binding;
                        }
                    }
                }
                call = calls.recv(), if rpc.can_send() => {
                    let Some(OutboundCall { action, payload, timeout, reply }) = call else { continue };
                    match rpc.start(&action, reply, Instant::now(), timeout) {
                        // A failed send leaves the CALL outstanding; it is abandoned with
                        // `Disconnected` below.
                        Ok(id) => if !send(&mut ws, frame::call(&id, &action, &payload)).await {
                            break EndReason::Error;
                        },
                        // Not reached: the branch only runs when nothing is outstanding.
                        Err(Busy(reply)) => { let _ = reply.send(Err(CallFailure::Busy)); }
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    if let Some(expired) = rpc.expire(Instant::now()) {
                        tracing::warn!(cp_id, id = expired.id, action = expired.action, "charger did not answer our CALL in time");
                        let _ = expired.waiter.send(Err(CallFailure::Timeout));
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > cfg.ping_interval + cfg.pong_timeout {
                        tracing::warn!(cp_id, "no pong within the timeout; charger is offline");
                        break EndReason::Dead;
                    }
                    if !send_msg(&mut ws, Message::Ping(Default::default())).await {
                        break EndReason::Error;
                    }
                }
            }
        };
        if let Some(waiter) = rpc.abandon() {
            let _ = waiter.send(Err(CallFailure::Disconnected));
        }
        if matches!(
            reason,
            EndReason::Shutdown | EndReason::Replaced | EndReason::Reconfigured
        ) {
            let code = match reason {
                EndReason::Reconfigured => CloseCode::Policy,
                _ => CloseCode::Away,
            };
            let frame = CloseFrame {
                code,
                reason: reason.as_str().into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
        }
        if self.registry.unregister(&cp_id, reg.conn_id) {
            if let Err(e) = self
                .ctx
                .store
                .charger_disconnected(cp_id.clone(), reason.as_str().into(), now())
                .await
            {
                tracing::error!(cp_id, "cannot record disconnection: {e}");
            }
            self.ctx.notices.send(Notice::Connectors {
                cp_id: cp_id.clone(),
            });
            // its sessions are now counted at what it may still draw
            self.ctx.power.changed(super::smart::Reason::Renewal, None);
        }
        tracing::info!(cp_id, reason = reason.as_str(), "charger disconnected");
    }
}

/// Who waits for the answer to one of our CALLs.
type Waiter = oneshot::Sender<Result<Value, CallFailure>>;

/// An accepted charger connection: who, how, and what it is bound to.
struct Link {
    cp_id: String,
    version: Version,
    peer: SocketAddr,
    serial: BoundSerial,
    profile: u8,
}

/// The serial number a BootNotification reports (`Some(None)`: it reports none); `None`
/// for every other request.
fn boot_serial(request: &Decoded) -> Option<Option<&str>> {
    match request {
        Decoded::V16(super::messages::Request::BootNotification { serial, .. })
        | Decoded::V201(super::v201::messages::Request::BootNotification { serial, .. }) => {
            Some(serial.as_deref())
        }
        _ => None,
    }
}

/// The log line and `security.event` detail of a refused handshake: what was wrong,
/// never a presented secret.
fn refusal_detail(refusal: &Refusal, expected_cn: &str) -> String {
    match refusal {
        Refusal::BadPath => "the path is not /ocpp/<chargePointId>".into(),
        Refusal::UnknownCharger => "unknown charger id".into(),
        Refusal::MissingCredentials => "no Basic auth credentials".into(),
        Refusal::WrongCredentials => "wrong Basic auth credentials".into(),
        Refusal::Downgrade => {
            "plain ws:// for a charger whose security profile needs wss://".into()
        }
        Refusal::CertificateMissing => "no client certificate (security profile 3)".into(),
        Refusal::CertificateMismatch(m) => {
            format!("client certificate refused: {}", m.describe(expected_cn))
        }
        Refusal::Throttled => "too many failed handshakes lately; answered 429 unchecked".into(),
    }
}

impl Server {
    /// One text frame from the charger: its CALL answered (after the store commits), or
    /// its answer to our CALL settled. Returns the frame to send back, if any.
    async fn on_text(
        &self,
        cp_id: &str,
        version: Version,
        serial: &BoundSerial,
        rpc: &mut Outbound<Waiter>,
        text: Utf8Bytes,
    ) -> Reply {
        let parsed = frame::parse(text.as_str());
        drop(text);
        match parsed {
            Ok(Frame::Call {
                id,
                action,
                payload,
            }) => {
                let began = Instant::now();
                let decoded = handler::decode_call(cp_id, version, &id, &action, &payload);
                drop(payload); // not held while the store commits

                // Only an action that decoded names its counter: the set of labels stays
                // bounded whatever a charger sends.
                let label = if decoded.is_ok() {
                    action.as_str()
                } else {
                    "invalid"
                };
                if let Some(reported) = decoded.as_ref().ok().and_then(boot_serial) {
                    if !serial.accepts(reported) {
                        let bound: Vec<&str> = [&serial.configured, &serial.certificate]
                            .into_iter()
                            .flatten()
                            .map(String::as_str)
                            .collect();
                        return Reply::Refuse(format!(
                            "its BootNotification reports serial number {}, not the bound {}",
                            reported.unwrap_or("(none)"),
                            bound.join(" / ")
                        ));
                    }
                }
                let answer = match decoded {
                    Ok(request) => {
                        handler::handle_request(&self.ctx, cp_id, version, &id, &action, request)
                            .await
                    }
                    Err(call_error) => call_error,
                };
                // A CALLRESULT is `[3,…`, a CALLERROR `[4,…` (frame::call_result/call_error).
                self.ctx
                    .metrics
                    .call_answered(label, answer.starts_with("[3"), began.elapsed());
                Reply::Send(answer)
            }
            Ok(Frame::CallResult { id, payload }) => {
                settle(cp_id, rpc, &id, Ok(payload));
                Reply::Nothing
            }
            Ok(Frame::CallError {
                id,
                code,
                description,
            }) => {
                settle(
                    cp_id,
                    rpc,
                    &id,
                    Err(CallFailure::Rejected { code, description }),
                );
                Reply::Nothing
            }
            Err(e) => {
                tracing::info!(
                    cp_id,
                    code = e.code.as_str(),
                    "bad frame: {}",
                    e.description
                );
                match (&e.id, e.was_call) {
                    (Some(id), true) => {
                        Reply::Send(frame::call_error_in(version, id, e.code, &e.description))
                    }
                    (Some(id), false) => {
                        let failure = CallFailure::Rejected {
                            code: ErrorCode::FormationViolation.as_str().into(),
                            description: e.description.clone(),
                        };
                        settle(cp_id, rpc, id, Err(failure));
                        Reply::Nothing
                    }
                    (None, _) => Reply::Nothing,
                }
            }
        }
    }
}

/// Hands an answer to the waiter of our outstanding CALL if the ids match.
fn settle(cp_id: &str, rpc: &mut Outbound<Waiter>, id: &str, result: Result<Value, CallFailure>) {
    match rpc.settle(id) {
        Some(waiter) => {
            let _ = waiter.send(result);
        }
        None => tracing::warn!(
            cp_id,
            id,
            "answer to a CALL we are not waiting for; ignored"
        ),
    }
}

/// The close code and reason for a read error that is the charger breaking RFC 6455 (the
/// socket is still up, so it is told why); `None` for a socket that is already gone. The
/// reasons are fixed texts: a close reason has to fit in 123 bytes.
fn violation(e: &WsError) -> Option<(CloseCode, &'static str)> {
    match e {
        WsError::Capacity(_) => Some((CloseCode::Size, "message too big")),
        WsError::Utf8(_) => Some((CloseCode::Invalid, "text frames must be UTF-8")),
        WsError::Protocol(
            ProtocolError::NonZeroReservedBits
            | ProtocolError::UnmaskedFrameFromClient
            | ProtocolError::FragmentedControlFrame
            | ProtocolError::ControlFrameTooBig
            | ProtocolError::UnknownControlFrameType(_)
            | ProtocolError::UnknownDataFrameType(_)
            | ProtocolError::UnexpectedContinueFrame
            | ProtocolError::ExpectedFragment(_)
            | ProtocolError::InvalidOpcode(_)
            | ProtocolError::InvalidCloseSequence,
        ) => Some((CloseCode::Protocol, "WebSocket protocol violation")),
        _ => None,
    }
}

/// Sends our Close frame and a FIN, then reads and discards what the charger still sends
/// until it closes too: closing a socket with unread bytes makes the kernel send a reset,
/// which can destroy the Close frame before the charger reads it.
async fn close_and_linger<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    frame: CloseFrame,
) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.close(Some(frame))).await;
    // The FIN tells the charger we are done, so it closes at once rather than waiting out
    // the linger.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.get_mut().shutdown()).await;
    linger(ws.get_mut()).await;
}

/// Reads and discards until EOF, [`LINGER`] or [`LINGER_BYTES`], whichever comes first.
async fn linger<S: AsyncRead + Unpin>(stream: &mut S) {
    let drain = async {
        // On the heap, allocated only here: an array would sit in every connection's
        // future for its whole life (this future is part of it), 4 KiB x 1,000 chargers.
        let mut buf = vec![0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The HTTP status for a handshake tungstenite gave up on without writing a response;
/// `None` when a response went out (our refusal) or the peer is gone.
fn unanswered(e: &WsError) -> Option<StatusCode> {
    match e {
        // More than 64 KiB of request head, or more than 124 header lines (tungstenite's
        // fixed limits).
        WsError::AttackAttempt | WsError::Capacity(CapacityError::TooManyHeaders) => {
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        WsError::Protocol(ProtocolError::HandshakeIncomplete) => None,
        WsError::Protocol(_) | WsError::HttpFormat(_) | WsError::Utf8(_) => {
            Some(StatusCode::BAD_REQUEST)
        }
        _ => None,
    }
}

/// Answers a request tungstenite could not parse, then closes without a reset.
async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, status: StatusCode) {
    let head = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.shutdown().await
    };
    if matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(()))) {
        linger(stream).await;
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    text: String,
) -> bool {
    send_msg(ws, Message::Text(text.into())).await
}

async fn send_msg<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    msg: Message,
) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, ws.send(msg)).await,
        Ok(Ok(()))
    )
}

fn reject(refusal: &Refusal) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(refusal.body().to_string()));
    // `status()` is 404, 401 or 429, all valid codes.
    *r.status_mut() = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::NOT_FOUND);
    if r.status() == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=\"chargesite\""),
        );
    }
    r
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
