//! The OCPP-J WebSocket server: accepts chargers and drives one task per connection.
//!
//! The handshake checks the path (`/ocpp/<chargePointId>`; unknown id: 404), HTTP Basic
//! auth against the charger's argon2 hash (401), and negotiates the subprotocol as OCPP-J
//! prescribes. Each connection is then one `select!` over its socket, the CALLs the agent
//! wants sent to the charger, the pending CALL's deadline, a ping timer and the shutdown
//! token. Pings run on a seconds scale, so a charger whose socket died shows offline
//! within `ping_interval + pong_timeout`, not after TCP's quarter of an hour.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::frame::{self, ErrorCode, Frame};
use super::handler::{self, Context};
use super::registry::{CallFailure, OutboundCall, Registry};
use crate::notice::Notice;
use crate::time::now;

/// The subprotocol this server speaks.
pub const OCPP16: &str = "ocpp1.6";

/// Time a client has to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a single write may take before the peer is considered dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What the handshake decided.
struct Accepted {
    cp_id: String,
    subprotocol: Option<&'static str>,
}

impl Server {
    /// A server over the given handler context and registry.
    pub fn new(ctx: Arc<Context>, registry: Registry) -> Arc<Self> {
        let max = ctx.config.ocpp.max_connections;
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
        let max = self.ctx.config.ocpp.max_message_bytes;
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
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) {
        let Ok(_permit) = self.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing");
            return;
        };
        let mut decided: Option<Accepted> = None;
        let server = self.clone();
        // tungstenite's callback returns its `ErrorResponse` by value; not ours to shrink.
        #[allow(clippy::result_large_err)]
        let callback = |req: &Request, resp: Response| server.handshake(req, resp, &mut decided);
        let handshake = tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            callback,
            Some(self.ws_config()),
        );
        let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                tracing::info!(%peer, "handshake refused or failed: {e}");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "handshake timed out");
                return;
            }
        };
        let Some(accepted) = decided else { return };
        self.run(ws, accepted, peer, shutdown).await;
    }

    /// The handshake callback: path, charger id, Basic auth, subprotocol.
    #[allow(clippy::result_large_err)]
    fn handshake(
        &self,
        req: &Request,
        mut resp: Response,
        decided: &mut Option<Accepted>,
    ) -> Result<Response, ErrorResponse> {
        let path = req.uri().path();
        let Some(cp_id) = path.strip_prefix("/ocpp/").filter(|id| valid_cp_id(id)) else {
            return Err(reject(StatusCode::NOT_FOUND, "use /ocpp/<chargePointId>"));
        };
        let ocpp = &self.ctx.config.ocpp;
        let listed = ocpp.chargers.get(cp_id);
        if listed.is_none() && !ocpp.allow_unknown_chargers {
            tracing::warn!(cp_id, "unknown charger refused");
            return Err(reject(StatusCode::NOT_FOUND, "unknown charger"));
        }
        if let Some(Some(hash)) = listed {
            let presented = req
                .headers()
                .get("authorization")
                .and_then(|h| h.to_str().ok())
                .and_then(basic_credentials);
            let ok = match presented {
                Some((user, pass)) if user == cp_id => self.verify(cp_id, &pass, hash),
                _ => false,
            };
            if !ok {
                tracing::warn!(cp_id, "bad or missing credentials");
                let mut r = reject(StatusCode::UNAUTHORIZED, "authentication required");
                r.headers_mut().insert(
                    "www-authenticate",
                    HeaderValue::from_static("Basic realm=\"chargesite\""),
                );
                return Err(r);
            }
        }
        // OCPP-J: pick a subprotocol the client offered; if it offered none we speak,
        // complete the handshake without the header and close at once (done in `run`).
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|h| h.to_str().ok())
            .flat_map(|h| h.split(','))
            .map(|p| p.trim().to_ascii_lowercase())
            .collect::<Vec<_>>();
        let subprotocol = if offered.is_empty() {
            // Not offering one breaks OCPP-J, but some chargers do it; 1.6 is the only
            // version they can mean.
            tracing::warn!(cp_id, "no subprotocol offered; assuming ocpp1.6");
            Some(OCPP16)
        } else if offered.iter().any(|p| p == OCPP16) {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(OCPP16));
            Some(OCPP16)
        } else {
            None
        };
        *decided = Some(Accepted {
            cp_id: cp_id.to_string(),
            subprotocol,
        });
        Ok(resp)
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
        accepted: Accepted,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let cp_id = accepted.cp_id;
        let Some(version) = accepted.subprotocol else {
            tracing::warn!(cp_id, "no supported subprotocol offered; closing");
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::Protocol,
                    reason: "supported subprotocol: ocpp1.6".into(),
                }))
                .await;
            return;
        };
        let reg = self.registry.register(&cp_id, &shutdown);
        let cancel = reg.cancel.clone();
        let mut calls = reg.calls;
        if let Err(e) = self
            .ctx
            .store
            .charger_connected(cp_id.clone(), version.to_string(), reg.replaced, now())
            .await
        {
            tracing::error!(cp_id, "cannot record connection: {e}");
        }
        self.ctx.notices.send(Notice::Connectors {
            cp_id: cp_id.clone(),
        });
        tracing::info!(cp_id, %peer, replaced = reg.replaced, "charger connected");

        let cfg = &self.ctx.config.ocpp;
        let mut ping =
            tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut pending: Option<PendingCall> = None;
        let mut next_call_id: u64 = 0;
        let far = Instant::now() + Duration::from_secs(86400 * 365);

        let reason = loop {
            let deadline = pending.as_ref().map_or(far, |p| p.2);
            tokio::select! {
                _ = cancel.cancelled() => {
                    break if shutdown.is_cancelled() { EndReason::Shutdown } else { EndReason::Replaced };
                }
                msg = ws.next() => {
                    let msg = match msg {
                        None => break EndReason::Closed,
                        Some(Err(e)) => {
                            tracing::info!(cp_id, "socket error: {e}");
                            break EndReason::Error;
                        }
                        Some(Ok(m)) => m,
                    };
                    last_heard = Instant::now();
                    let text = match msg {
                        Message::Text(t) => t,
                        Message::Close(_) => break EndReason::Closed,
                        Message::Binary(_) => {
                            tracing::warn!(cp_id, "binary frame; OCPP-J is text only");
                            let _ = ws.close(Some(CloseFrame { code: CloseCode::Unsupported, reason: "OCPP-J uses text frames".into() })).await;
                            break EndReason::Protocol;
                        }
                        _ => continue, // ping (answered by tungstenite), pong
                    };
                    let parsed = frame::parse(text.as_str());
                    drop(text);
                    let reply = match parsed {
                        Ok(Frame::Call { id, action, payload }) => {
                            let decoded = handler::decode_call(&cp_id, &id, &action, &payload);
                            drop(payload); // not held while the store commits
                            Some(match decoded {
                                Ok(request) => handler::handle_request(&self.ctx, &cp_id, &id, &action, request).await,
                                Err(call_error) => call_error,
                            })
                        }
                        Ok(Frame::CallResult { id, payload }) => {
                            settle(&cp_id, &mut pending, &id, Ok(payload));
                            None
                        }
                        Ok(Frame::CallError { id, code, description }) => {
                            settle(&cp_id, &mut pending, &id, Err(CallFailure::Rejected { code, description }));
                            None
                        }
                        Err(e) => {
                            tracing::info!(cp_id, code = e.code.as_str(), "bad frame: {}", e.description);
                            match (&e.id, e.was_call) {
                                (Some(id), true) => Some(frame::call_error(id, e.code, &e.description)),
                                (Some(id), false) => {
                                    let failure = CallFailure::Rejected { code: ErrorCode::FormationViolation.as_str().into(), description: e.description.clone() };
                                    settle(&cp_id, &mut pending, id, Err(failure));
                                    None
                                }
                                (None, _) => None,
                            }
                        }
                    };
                    if let Some(reply) = reply {
                        if !send(&mut ws, reply).await {
                            break EndReason::Error;
                        }
                    }
                }
                call = calls.recv(), if pending.is_none() => {
                    let Some(OutboundCall { action, payload, timeout, reply }) = call else { continue };
                    next_call_id += 1;
                    let id = format!("cs-{next_call_id}");
                    if !send(&mut ws, frame::call(&id, &action, &payload)).await {
                        let _ = reply.send(Err(CallFailure::Disconnected));
                        break EndReason::Error;
                    }
                    pending = Some((id, reply, Instant::now() + timeout));
                }
                _ = tokio::time::sleep_until(deadline), if pending.is_some() => {
                    if let Some((id, reply, _)) = pending.take() {
                        tracing::warn!(cp_id, id, "charger did not answer our CALL in time");
                        let _ = reply.send(Err(CallFailure::Timeout));
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
        if let Some((_, reply, _)) = pending.take() {
            let _ = reply.send(Err(CallFailure::Disconnected));
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

/// Our CALL on the wire: its id, where the answer goes, and when we give up on it.
type PendingCall = (String, oneshot::Sender<Result<Value, CallFailure>>, Instant);

/// Resolves our pending CALL if the answer's id matches it.
fn settle(
    cp_id: &str,
    pending: &mut Option<PendingCall>,
    id: &str,
    result: Result<Value, CallFailure>,
) {
    match pending.take() {
        Some((pid, reply, _)) if pid == id => {
            let _ = reply.send(result);
        }
        other => {
            tracing::warn!(
                cp_id,
                id,
                "answer to a CALL we are not waiting for; ignored"
            );
            *pending = other;
        }
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

fn reject(status: StatusCode, body: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(body.to_string()));
    *r.status_mut() = status;
    r
}

/// Charge point ids: 1–48 characters of `[A-Za-z0-9._:-]` (no slashes, no escapes).
fn valid_cp_id(id: &str) -> bool {
    (1..=48).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Basic <base64(user:password)>` -> (user, password).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, b64) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(b64.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode() {
        // "CP001:s3cret"
        assert_eq!(
            basic_credentials("Basic Q1AwMDE6czNjcmV0"),
            Some(("CP001".into(), "s3cret".into()))
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
    }

    #[test]
    fn charge_point_ids_are_checked() {
        assert!(valid_cp_id("CP001"));
        assert!(valid_cp_id("site.cp-1:a"));
        assert!(!valid_cp_id(""));
        assert!(!valid_cp_id("a/b"));
        assert!(!valid_cp_id("%2e%2e"));
        assert!(!valid_cp_id(&"x".repeat(49)));
    }
}
