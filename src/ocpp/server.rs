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
use std::sync::{Arc, Mutex};
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

use super::frame::{self, ErrorCode, Frame, Version};
use super::handler::{self, Context};
use super::handshake::{self, Chargers, Decision, Refusal, Subprotocol, Upgrade};
use super::registry::{CallFailure, OutboundCall, Registry};
use super::rpc::{Busy, Outbound};
use crate::notice::Notice;
use crate::time::now;

/// Time a client has to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a single write may take before the peer is considered dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a socket we close on a misbehaving peer is drained first, and how much of it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// Everything the server's tasks share.
pub struct Server {
    ctx: Arc<Context>,
    registry: Registry,
    /// Passwords that already verified against a charger's argon2 hash, so that a
    /// reconnect storm does not cost an argon2 run (19 MiB, tens of ms) per socket.
    verified: Mutex<HashMap<String, String>>,
    connections: Arc<Semaphore>,
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
        }
    }
}

impl Server {
    /// A server over the given handler context and registry.
    pub fn new(ctx: Arc<Context>, registry: Registry) -> Arc<Self> {
        let max = ctx.ocpp.max_connections;
        Arc::new(Self {
            ctx,
            registry,
            verified: Mutex::new(HashMap::new()),
            connections: Arc::new(Semaphore::new(max)),
        })
    }

    /// Accepts connections until `shutdown` is cancelled, then waits (bounded) for the
    /// connection tasks to close their sockets and record their disconnects.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let server = self.clone();
                        let token = shutdown.clone();
                        tracker.spawn(async move { server.connection(stream, peer, token).await });
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

    async fn connection(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) {
        let Ok(_permit) = self.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing");
            return;
        };
        let mut decided: Option<Decision> = None;
        let mut refused: Option<(Option<String>, Refusal)> = None;
        let server = self.clone();
        // tungstenite's callback returns its `ErrorResponse` by value; not ours to shrink.
        #[allow(clippy::result_large_err)]
        let callback = |req: &Request, resp: Response| {
            server.handshake(req, resp, peer, &mut decided, &mut refused)
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
                    Some((cp_id, refusal)) => self.record_refusal(cp_id, peer, refusal),
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
            Some(Decision::Accept { cp_id, subprotocol }) => {
                // `name()` is one of `handshake::SUPPORTED`, each a known version.
                let version = Version::from_subprotocol(subprotocol.name()).unwrap_or(Version::V16);
                self.run(ws, cp_id, version, peer, shutdown).await;
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
        decided: &mut Option<Decision>,
        refused: &mut Option<(Option<String>, Refusal)>,
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
        };
        let ocpp = &self.ctx.ocpp;
        let chargers = Chargers {
            allow_unknown: ocpp.allow_unknown_chargers,
            listed: &ocpp.chargers,
            assume: ocpp.assume_subprotocol,
        };
        let decision = handshake::decide(&upgrade, chargers, |c| {
            self.verify(c.cp_id, c.password, c.hash)
        });
        match &decision {
            Decision::Refuse(refusal) => {
                let cp_id = handshake::cp_id_from_path(upgrade.path);
                let refusal = *refusal;
                match refusal {
                    Refusal::BadPath => {
                        tracing::info!(%peer, "refused: the path is not /ocpp/<chargePointId>")
                    }
                    Refusal::UnknownCharger => {
                        tracing::warn!(cp_id, %peer, "unknown charger refused")
                    }
                    Refusal::MissingCredentials | Refusal::WrongCredentials => {
                        tracing::warn!(cp_id, %peer, "bad or missing credentials")
                    }
                }
                *refused = Some((cp_id.map(str::to_string), refusal));
                *decided = Some(decision);
                return Err(reject(refusal));
            }
            Decision::Accept {
                cp_id,
                subprotocol: Subprotocol::Assumed(p),
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

    /// A refused handshake, for `/metrics` and the status page's recent refusals.
    fn record_refusal(&self, cp_id: Option<String>, peer: SocketAddr, refusal: Refusal) {
        let reason = match refusal {
            Refusal::BadPath => "bad_path",
            Refusal::UnknownCharger => "unknown_charger",
            Refusal::MissingCredentials => "auth_missing",
            Refusal::WrongCredentials => "auth_failed",
        };
        let metrics = &self.ctx.metrics;
        if refusal != Refusal::BadPath {
            metrics.security_event(reason);
        }
        metrics.refused(crate::metrics::Refusal {
            at: now(),
            cp_id,
            peer: peer.to_string(),
            reason,
        });
    }

    fn verify(&self, cp_id: &str, password: &str, hash: &str) -> bool {
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cp_id)
            .cloned();
        if let Some(c) = cached {
            if constant_time_eq(c.as_bytes(), password.as_bytes()) {
                return true;
            }
        }
        // argon2 is CPU- and memory-heavy: keep it off the async workers' hot path.
        let ok = tokio::task::block_in_place(|| crate::password::verify(password, hash));
        if ok {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(cp_id.to_string(), password.to_string());
        }
        ok
    }

    async fn run<S>(
        &self,
        mut ws: WebSocketStream<S>,
        cp_id: String,
        version: Version,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let reg = self.registry.register(&cp_id, version, &shutdown);
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
        tracing::info!(cp_id, %peer, version = version.as_str(), replaced = reg.replaced, "charger connected");
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
                    break if shutdown.is_cancelled() { EndReason::Shutdown } else { EndReason::Replaced };
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
                    if let Some(reply) = self.on_text(&cp_id, version, &mut rpc, text).await {
                        if !send(&mut ws, reply).await {
                            break EndReason::Error;
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
        if matches!(reason, EndReason::Shutdown | EndReason::Replaced) {
            let frame = CloseFrame {
                code: CloseCode::Away,
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
        }
        tracing::info!(cp_id, reason = reason.as_str(), "charger disconnected");
    }
}

/// Who waits for the answer to one of our CALLs.
type Waiter = oneshot::Sender<Result<Value, CallFailure>>;

impl Server {
    /// One text frame from the charger: its CALL answered (after the store commits), or
    /// its answer to our CALL settled. Returns the frame to send back, if any.
    async fn on_text(
        &self,
        cp_id: &str,
        version: Version,
        rpc: &mut Outbound<Waiter>,
        text: Utf8Bytes,
    ) -> Option<String> {
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
                Some(answer)
            }
            Ok(Frame::CallResult { id, payload }) => {
                settle(cp_id, rpc, &id, Ok(payload));
                None
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
                None
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
                        Some(frame::call_error_in(version, id, e.code, &e.description))
                    }
                    (Some(id), false) => {
                        let failure = CallFailure::Rejected {
                            code: ErrorCode::FormationViolation.as_str().into(),
                            description: e.description.clone(),
                        };
                        settle(cp_id, rpc, id, Err(failure));
                        None
                    }
                    (None, _) => None,
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
async fn answer_and_close(stream: &mut TcpStream, status: StatusCode) {
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

fn reject(refusal: Refusal) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(refusal.body().to_string()));
    // `status()` is 404 or 401, both valid codes.
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
