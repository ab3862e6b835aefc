//! The local status server (CONTRACT §5, docs/status.md): `/api/v1/status`, `/metrics`
//! and the status page, over HTTP on `[status] listen` and over the local API's
//! Unix socket.
//!
//! The chargers come first: a status address that cannot be bound is logged and skipped,
//! never a reason to stop. Each request gathers what it shows without touching the OCPP
//! path: the store's rows through one read op on the store thread, the connected chargers
//! from the registry, the uplink's figures from atomics. On a non-loopback address every
//! HTTP request needs Basic auth ([`gate`]); the socket is guarded by its file mode
//! (0600: the service's user and root).
//!
//! - [`page`]: the status page (HTML compiled in) and its Content-Security-Policy (pure).
//! - [`routes`]: which handler a request goes to, and what its access allows (pure).
//! - [`gate`]: Basic auth with a verified-password cache and a failure rate limit (pure).
//! - [`view`]: the status body from the gathered state (pure).
//! - [`summary`]: the status body as text, for `chargesite status` (pure).
//! - [`client`]: `chargesite status`'s side: finds the agent, asks it.

pub mod client;
pub mod gate;
pub mod page;
pub mod routes;
pub mod summary;
pub mod test_session;
pub mod verbs;
pub mod view;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::StatusConfig;
use crate::metrics::Metrics;
use crate::ocpp::registry::Registry;
use crate::store::Store;
use crate::time::now;
use gate::{Check, Gate};
use routes::{Access, Route};
use view::{Gathered, Live, RefusedRow, StoreRows};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The socket's name in `$RUNTIME_DIRECTORY` (CONTRACT §6).
pub const SOCKET_NAME: &str = "api.sock";

/// What the status server reads.
pub struct Parts {
    /// `[status]`.
    pub config: StatusConfig,
    /// `[site] id`.
    pub site_id: String,
    /// The store (one read op per request).
    pub store: Store,
    /// The database file: its WAL's size and its file system's free space.
    pub store_path: PathBuf,
    /// `[store] quota_mb` in bytes.
    pub quota_bytes: Option<u64>,
    /// Connected chargers.
    pub registry: Registry,
    /// Metrics, the last seq PUBACKed, refused connections.
    pub metrics: Arc<Metrics>,
    /// Whether an uplink is configured, and whether it is connected.
    pub uplink: Option<Arc<AtomicBool>>,
}

/// The socket path: `[status] socket`, else `$RUNTIME_DIRECTORY/api.sock` (systemd's
/// `RuntimeDirectory=`; the first entry when it lists several), else none.
pub fn socket_path(config: &StatusConfig, runtime_dir: Option<&str>) -> Option<PathBuf> {
    config.socket.clone().or_else(|| {
        runtime_dir
            .and_then(|d| d.split(':').next())
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(SOCKET_NAME))
    })
}

struct Server {
    parts: Parts,
    started_at: chrono::DateTime<chrono::Utc>,
    gate: Mutex<Gate>,
    /// One argon2 run at a time (~7 MiB each): a burst of guesses on every connection
    /// must not cost the gateway 32 of them at once.
    verifying: Semaphore,
    /// The last store read and when it was taken: requests within [`ROWS_FRESH`] of it
    /// share it, and one read at a time is made (the lock is held across it), so pages
    /// and scrapers polling at once cost the store thread one read per second at most.
    rows: tokio::sync::Mutex<Option<(std::time::Instant, StoreRows)>>,
}

/// How long a store read serves later requests.
const ROWS_FRESH: Duration = Duration::from_secs(1);

/// Serves until `shutdown`; returns at once (logged) when neither listener could be set
/// up, so that the agent runs on without it.
pub async fn run(parts: Parts, shutdown: CancellationToken) {
    let tcp = match parts.config.listen {
        None => None,
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => {
                let shown = l.local_addr().unwrap_or(addr);
                let auth = if parts.config.requires_auth() {
                    "Basic auth required"
                } else {
                    "loopback, no auth"
                };
                tracing::info!(%shown, "status page listening on http://{shown}/ ({auth})");
                Some(l)
            }
            Err(e) => {
                tracing::warn!(
                    %addr,
                    "status page not served: cannot listen on {addr}: {e}; the agent runs on without it"
                );
                None
            }
        },
    };
    let socket = socket_path(
        &parts.config,
        std::env::var("RUNTIME_DIRECTORY").ok().as_deref(),
    );
    let unix = socket.as_deref().and_then(|p| match bind_socket(p) {
        Ok(l) => {
            tracing::info!(path = %p.display(), "local API listening on unix:{}", p.display());
            Some(l)
        }
        Err(e) => {
            tracing::warn!(path = %p.display(), "local API socket not served: {e}");
            None
        }
    });
    if tcp.is_none() && unix.is_none() {
        return;
    }
    let server = Arc::new(Server {
        parts,
        started_at: now(),
        gate: Mutex::new(Gate::default()),
        verifying: Semaphore::new(1),
        rows: tokio::sync::Mutex::new(None),
    });
    // Separate pools: connections held open over TCP (before or after auth) can never
    // keep root's `chargesite charger` off the socket.
    let tcp_slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let unix_slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some((accepted, permit)) = accept_tcp(tcp.as_ref(), &tcp_slots) => match accepted {
                Ok((stream, peer)) => {
                    let (s, t) = (server.clone(), shutdown.clone());
                    tracker.spawn(async move {
                        s.connection(stream, false, Some(peer.ip()), t).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!("status accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some((accepted, permit)) = accept_unix(unix.as_ref(), &unix_slots) => match accepted {
                Ok(stream) => {
                    let (s, t) = (server.clone(), shutdown.clone());
                    tracker.spawn(async move {
                        s.connection(stream, true, None, t).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!("local API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    if let Some(p) = socket {
        if unix.is_some() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A slot of `slots`, then the next TCP connection; pending forever without a listener.
async fn accept_tcp(
    l: Option<&TcpListener>,
    slots: &Arc<Semaphore>,
) -> Option<(
    std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let l = match l {
        Some(l) => l,
        None => std::future::pending().await,
    };
    let permit = slots.clone().acquire_owned().await.ok()?;
    Some((l.accept().await, permit))
}

/// A slot of `slots`, then the next socket connection; pending forever without a listener.
async fn accept_unix(
    l: Option<&UnixListener>,
    slots: &Arc<Semaphore>,
) -> Option<(
    std::io::Result<tokio::net::UnixStream>,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let l = match l {
        Some(l) => l,
        None => std::future::pending().await,
    };
    let permit = slots.clone().acquire_owned().await.ok()?;
    Some((l.accept().await.map(|(s, _)| s), permit))
}

fn bind_socket(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

type Body = Full<Bytes>;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The local API's error body: `{"error": {"code", "message"}}`.
fn api_error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response<Body> {
    let body = serde_json::json!({"error": {"code": code, "message": message.to_string()}});
    respond(status, "application/json", body.to_string())
}

/// How long a charger has to answer a verb.
const VERB_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest verb body read.
const VERB_BODY_LIMIT: usize = 8 * 1024;

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", text)
}

impl Server {
    async fn connection<S>(
        self: Arc<Self>,
        stream: S,
        via_socket: bool,
        peer: Option<std::net::IpAddr>,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let server = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(req, via_socket, peer).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("status connection: {e}");
                }
            }
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
            }
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        via_socket: bool,
        peer: Option<std::net::IpAddr>,
    ) -> Response<Body> {
        let access = match self.authorize(&req, via_socket, peer).await {
            Ok(a) => a,
            Err(refusal) => return refusal,
        };
        match routes::route(req.method().as_str(), req.uri().path()) {
            Route::ChargerCommand(cp_id) if !access.may_change() => {
                tracing::warn!(
                    cp_id,
                    "charger verb refused: needs the password or the local socket"
                );
                if self.parts.config.password_hash.is_some() {
                    unauthorized()
                } else {
                    api_error(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "a charger verb needs [status] password_hash set and given, or the local API socket",
                    )
                }
            }
            Route::ChargerCommand(cp_id) => self.charger_command(&cp_id, req).await,
            Route::Status => match self.gather().await {
                Ok(g) => respond(
                    StatusCode::OK,
                    "application/json",
                    view::status_json(&g, now()).to_string(),
                ),
                Err(e) => {
                    tracing::warn!("status: the store did not answer: {e}");
                    plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the store did not answer\n",
                    )
                }
            },
            Route::Metrics => {
                // The gauges of state the store holds are set from the same read; without
                // it the counters and histograms still go out.
                match self.gather().await {
                    Ok(g) => self.set_gauges(&g),
                    Err(e) => tracing::warn!("metrics: the store did not answer: {e}"),
                }
                respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.parts.metrics.render(),
                )
            }
            Route::Page => page_response(),
            Route::MethodNotAllowed => {
                plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            Route::NotFound => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// A commissioning verb for `cp_id`: carried in the version its connection speaks
    /// ([`verbs::command`], [`crate::ocpp::commands::send`]); the charger's validated
    /// answer goes back with that version, for [`verbs::verdict`].
    async fn charger_command(&self, cp_id: &str, req: Request<Incoming>) -> Response<Body> {
        use crate::ocpp::commands::{self, CommandError};
        use crate::ocpp::registry::CallFailure;
        use http_body_util::BodyExt;
        let body = match http_body_util::Limited::new(req.into_body(), VERB_BODY_LIMIT)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return api_error(StatusCode::BAD_REQUEST, "bad_request", e),
        };
        let verb: verbs::Verb = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return api_error(StatusCode::BAD_REQUEST, "bad_request", e),
        };
        let Some(version) = self.parts.registry.version(cp_id) else {
            return api_error(
                StatusCode::NOT_FOUND,
                "not_connected",
                format!("charger {cp_id} is not connected"),
            );
        };
        let mut test_tag = None;
        let command = match &verb {
            verbs::Verb::TestStart { connector, tag } => {
                let tag = match tag.clone().map_or_else(
                    || crate::auth::agent_tag("CT").map_err(|e| e.to_string()),
                    Ok,
                ) {
                    Ok(t) => t,
                    Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
                };
                let id = match self
                    .parts
                    .store
                    .test_start(cp_id.to_string(), *connector, tag.clone(), now())
                    .await
                {
                    Ok(id) => id,
                    Err(e) => {
                        return api_error(StatusCode::SERVICE_UNAVAILABLE, "store", e);
                    }
                };
                test_tag = Some(tag.clone());
                Ok(crate::ocpp::commands::Command::RemoteStart {
                    id_tag: tag,
                    connector_id: Some(*connector),
                    remote_start_id: id,
                })
            }
            verbs::Verb::TestStop { session_id } => {
                match self
                    .parts
                    .store
                    .find_session(Some(session_id.clone()), None)
                    .await
                {
                    Ok(Some(s)) if s.cp_id == cp_id => {
                        Ok(crate::ocpp::commands::Command::RemoteStop {
                            transaction: crate::ocpp::commands::TransactionRef::of(
                                s.charger_tx_id,
                                s.transaction_id,
                            ),
                        })
                    }
                    Ok(_) => {
                        return api_error(
                            StatusCode::NOT_FOUND,
                            "not_found",
                            format!("no session {session_id} on {cp_id}"),
                        )
                    }
                    Err(e) => return api_error(StatusCode::SERVICE_UNAVAILABLE, "store", e),
                }
            }
            other => verbs::command(other, version),
        };
        let command = match command {
            Ok(c) => c,
            Err(e) => return api_error(StatusCode::BAD_REQUEST, "bad_request", e),
        };
        let action = command.action(version).unwrap_or("?");
        tracing::info!(cp_id, action, "charger verb from the local API");
        let sent = commands::send(&self.parts.registry, cp_id, command, VERB_TIMEOUT).await;
        if let Some(tag) = test_tag {
            let accepted = sent
                .as_ref()
                .is_ok_and(|a| a.get("status").and_then(|s| s.as_str()) == Some("Accepted"));
            if !accepted {
                // not started: the tag is withdrawn at once
                if let Err(e) = self.parts.store.remote_start_failed(tag).await {
                    tracing::warn!(cp_id, "withdrawing a test session's tag: {e}");
                }
            }
        }
        match sent {
            Ok(mut answer) => {
                verbs::redact(&mut answer);
                respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::json!({
                        "charger": cp_id,
                        "ocpp_version": version.as_str(),
                        "action": action,
                        "answer": answer,
                    })
                    .to_string(),
                )
            }
            Err(e) => {
                let (status, code) = match &e {
                    CommandError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
                    CommandError::BadResponse(_) => (StatusCode::BAD_GATEWAY, "bad_response"),
                    CommandError::Call(CallFailure::NotConnected | CallFailure::Disconnected) => {
                        (StatusCode::NOT_FOUND, "not_connected")
                    }
                    CommandError::Call(CallFailure::Timeout) => {
                        (StatusCode::GATEWAY_TIMEOUT, "timeout")
                    }
                    CommandError::Call(CallFailure::Rejected { .. }) => {
                        (StatusCode::BAD_GATEWAY, "call_error")
                    }
                    CommandError::Call(CallFailure::Busy) => {
                        (StatusCode::SERVICE_UNAVAILABLE, "busy")
                    }
                };
                tracing::info!(cp_id, action, "charger verb failed: {e}");
                api_error(status, code, e)
            }
        }
    }

    /// Basic auth where it is required; the refusal to send otherwise.
    async fn authorize(
        &self,
        req: &Request<Incoming>,
        via_socket: bool,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Access, Response<Body>> {
        let mut access = Access {
            via_socket,
            authenticated: false,
        };
        let Some(hash) = self.parts.config.password_hash.clone() else {
            return Ok(access);
        };
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let needed = !via_socket && self.parts.config.requires_auth();
        let mut check = self.gate().check(header, peer, std::time::Instant::now());
        // Waits behind the argon2 run in progress, then asks again: that run may have
        // verified this very password, or tipped the failures over the limit.
        let _turn = match check {
            Check::Verify(_) => {
                let turn = self.verifying.acquire().await.ok();
                check = self.gate().check(header, peer, std::time::Instant::now());
                turn
            }
            _ => None,
        };
        let password = match check {
            Check::Allowed => {
                access.authenticated = true;
                return Ok(access);
            }
            Check::Verify(p) => p,
            Check::Missing if !needed => return Ok(access),
            Check::Missing => return Err(unauthorized()),
            Check::Throttled if !needed => return Ok(access),
            Check::Throttled => {
                return Err(plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many wrong passwords; try again in a minute\n",
                ))
            }
        };
        // argon2 costs ~7 MiB and tens of ms: on the blocking pool, not a runtime worker.
        let p = password.clone();
        let ok = tokio::task::spawn_blocking(move || crate::password::verify(&p, &hash))
            .await
            .unwrap_or(false);
        self.gate()
            .verified(&password, ok, peer, std::time::Instant::now());
        if ok {
            access.authenticated = true;
            Ok(access)
        } else if needed {
            self.parts.metrics.security_event("status_auth_failed");
            tracing::warn!("status page: wrong password");
            Err(unauthorized())
        } else {
            Ok(access)
        }
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        // Every critical section is one call into the pure gate: a poisoned lock is usable.
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything the body is built from: one store read, the rest from memory.
    async fn gather(&self) -> Result<Gathered, crate::store::StoreError> {
        let p = &self.parts;
        let store = {
            let mut last = self.rows.lock().await;
            match &*last {
                Some((at, rows)) if at.elapsed() < ROWS_FRESH => rows.clone(),
                _ => {
                    let rows = p.store.status_rows().await?;
                    *last = Some((std::time::Instant::now(), rows.clone()));
                    rows
                }
            }
        };
        let dir = p
            .store_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut wal = p.store_path.as_os_str().to_owned();
        wal.push("-wal");
        Ok(Gathered {
            site_id: p.site_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: Some(self.started_at),
            store,
            connected: p
                .registry
                .connected_versions()
                .into_iter()
                .map(|(cp_id, v, profile)| Live {
                    cp_id,
                    ocpp_version: v.as_str().to_string(),
                    security_profile: profile,
                })
                .collect(),
            uplink_configured: p.uplink.is_some(),
            uplink_online: p.uplink.as_ref().is_some_and(|o| o.load(Ordering::Relaxed)),
            last_puback_seq: p.metrics.last_puback_seq.load(Ordering::Relaxed),
            quota_bytes: p.quota_bytes,
            disk_free_bytes: disk_free(dir),
            wal_bytes: std::fs::metadata(PathBuf::from(wal)).ok().map(|m| m.len()),
            refused: p
                .metrics
                .recent_refusals()
                .into_iter()
                .map(|r| RefusedRow {
                    at: r.at,
                    cp_id: r.cp_id,
                    peer: r.peer,
                    reason: r.reason.into(),
                })
                .collect(),
        })
    }

    fn set_gauges(&self, g: &Gathered) {
        let m = &self.parts.metrics;
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.chargers_connected.set(int(g.connected.len() as u64));
        m.sessions_running.set(int(g.store.sessions.len() as u64));
        m.outbox_backlog.set(g.store.backlog);
        m.outbox_oldest_unsent_age.set(
            g.store
                .oldest_unsent_at
                .map_or(0, |at| (now() - at).num_seconds().max(0)),
        );
        m.uplink_online.set(i64::from(g.uplink_online));
        m.disk_free.set(g.disk_free_bytes.map_or(0, int));
    }
}

/// The page with its policy (hashed once: the page is a constant), never cached so that
/// a new binary's page is what the next load gets.
fn page_response() -> Response<Body> {
    static CSP: OnceLock<Option<HeaderValue>> = OnceLock::new();
    let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", page::PAGE);
    let h = r.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The policy is ASCII (hashes in base64), so it is always a valid header value.
    if let Some(csp) = CSP.get_or_init(|| HeaderValue::from_str(&page::csp(page::PAGE)).ok()) {
        h.insert(CONTENT_SECURITY_POLICY, csp.clone());
    }
    r
}

fn unauthorized() -> Response<Body> {
    let mut r = plain(StatusCode::UNAUTHORIZED, "authentication required\n");
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"chargesite status\""),
    );
    r
}

/// Bytes available to the agent on the file system holding `dir`.
fn disk_free(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain C data; all-zero is a valid value of it.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `s` a valid, exclusively borrowed out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    // The field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_the_configured_one_else_in_the_runtime_directory() {
        let mut c = crate::config::parse("[site]\nid='s'\n").unwrap().status;
        assert_eq!(socket_path(&c, None), None);
        assert_eq!(
            socket_path(&c, Some("/run/chargesite")),
            Some(PathBuf::from("/run/chargesite/api.sock"))
        );
        c.socket = Some(PathBuf::from("/tmp/x.sock"));
        assert_eq!(
            socket_path(&c, Some("/run/chargesite")),
            Some(PathBuf::from("/tmp/x.sock"))
        );
    }

    #[test]
    fn the_free_space_of_a_real_directory_is_read() {
        assert!(disk_free(Path::new("/")).is_some());
        assert!(disk_free(Path::new("/nonexistent/dir")).is_none());
    }
}
