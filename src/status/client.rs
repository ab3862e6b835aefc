//! The client side of the local API, for `chargesite status` and `chargesite charger`: finds the running agent from the config, over the Unix socket when it is
//! there and can be opened, else over HTTP to `[status] listen`, and makes one request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::StatusConfig;

/// Where systemd creates the unit's `RuntimeDirectory=chargesite`.
pub const SERVICE_RUNTIME_DIRECTORY: &str = "/run/chargesite";

/// How long one attempt may take, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the agent may answer, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The local API's Unix socket.
    Socket(PathBuf),
    /// HTTP on `[status] listen` (an unspecified address is asked on loopback).
    Http(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "unix:{}", p.display()),
            Target::Http(a) => write!(f, "http://{a}"),
        }
    }
}

/// A connection to the agent, over either transport.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Why no agent answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing to ask: no socket and the HTTP server is off.
    #[error("no local API configured ([status] listen is \"\" and there is no socket)")]
    NothingToAsk,
    /// Every target failed; each with its reason.
    #[error("no chargesite agent answered: {}", .0.iter().map(|(t, e)| format!("{t}: {e}")).collect::<Vec<_>>().join("; "))]
    NoAnswer(Vec<(Target, String)>),
}

/// An answer: HTTP status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Where it came from.
    pub from: Target,
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub body: String,
}

/// The targets for `config`, socket first when its file exists (`runtime_dir`:
/// `$RUNTIME_DIRECTORY`).
pub fn targets(config: &StatusConfig, runtime_dir: Option<&str>) -> Vec<Target> {
    let mut out = Vec::new();
    // A shell on the gateway has no `$RUNTIME_DIRECTORY` (only the service gets it): the
    // unit's `RuntimeDirectory=chargesite` is then looked for where systemd puts it.
    let runtime_dir = runtime_dir.or(Some(SERVICE_RUNTIME_DIRECTORY));
    if let Some(p) = super::socket_path(config, runtime_dir) {
        if p.exists() {
            out.push(Target::Socket(p));
        }
    }
    if let Some(mut a) = config.listen {
        if a.ip().is_unspecified() {
            a.set_ip(match a.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        out.push(Target::Http(a));
    }
    out
}

/// GETs `path` from the first target that answers; `password` goes as Basic auth over
/// HTTP (never over the socket, which needs none).
///
/// # Errors
/// [`ClientError`] when no target answered at all (an HTTP error status is an answer).
pub async fn get(
    targets: &[Target],
    path: &str,
    password: Option<&str>,
) -> Result<Answer, ClientError> {
    ask(targets, path, None, password, TIMEOUT).await
}

/// POSTs the JSON `body` to `path` of the first target that answers (a charger verb);
/// `timeout` bounds each attempt (the charger's own answer is inside it).
///
/// # Errors
/// [`ClientError`] when no target answered at all.
pub async fn post(
    targets: &[Target],
    path: &str,
    body: String,
    password: Option<&str>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    ask(targets, path, Some(body), password, timeout).await
}

async fn ask(
    targets: &[Target],
    path: &str,
    body: Option<String>,
    password: Option<&str>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    if targets.is_empty() {
        return Err(ClientError::NothingToAsk);
    }
    let mut failures = Vec::new();
    for t in targets {
        // Only a target that could not be reached is passed over: once a request has gone
        // out (a verb may have reached the charger), its failure is the answer, so a verb
        // is never sent twice.
        let connected = async {
            match t {
                Target::Socket(p) => tokio::net::UnixStream::connect(p)
                    .await
                    .map(|s| Box::new(s) as Box<dyn Stream>),
                Target::Http(a) => tokio::net::TcpStream::connect(a)
                    .await
                    .map(|s| Box::new(s) as Box<dyn Stream>),
            }
        };
        let stream = match tokio::time::timeout(TIMEOUT, connected).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                failures.push((t.clone(), e.to_string()));
                continue;
            }
            Err(_) => {
                failures.push((t.clone(), "no connection in time".into()));
                continue;
            }
        };
        let password = match t {
            Target::Socket(_) => None,
            Target::Http(_) => password,
        };
        let attempt = request(stream, path, body.clone(), password);
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok((status, body))) => {
                return Ok(Answer {
                    from: t.clone(),
                    status,
                    body,
                })
            }
            Ok(Err(e)) => return Err(ClientError::NoAnswer(vec![(t.clone(), e.to_string())])),
            Err(_) => {
                return Err(ClientError::NoAnswer(vec![(
                    t.clone(),
                    "no answer in time".into(),
                )]))
            }
        }
    }
    Err(ClientError::NoAnswer(failures))
}

async fn request<S>(
    stream: S,
    path: &str,
    body: Option<String>,
    password: Option<&str>,
) -> std::io::Result<(u16, String)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io_err = |e: hyper::Error| std::io::Error::other(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io_err)?;
    let driver = tokio::spawn(conn);
    let mut req = match body {
        Some(_) => Request::post(path).header(CONTENT_TYPE, "application/json"),
        None => Request::get(path),
    }
    .header(HOST, "localhost");
    if let Some(p) = password {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("chargesite:{p}"));
        req = req.header(AUTHORIZATION, format!("Basic {token}"));
    }
    let req = req
        .body(Full::new(body.map_or_else(Bytes::new, Bytes::from)))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(io_err)?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(io_err)?.to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_asked_on_loopback_and_an_absent_socket_is_skipped() {
        let hash = crate::password::hash("pw").unwrap();
        let c = crate::config::parse(&format!(
            "[site]\nid='s'\n[status]\nlisten='0.0.0.0:9001'\npassword_hash='{hash}'\nsocket='/nonexistent/api.sock'\n"
        ))
        .unwrap()
        .status;
        assert_eq!(
            targets(&c, None),
            vec![Target::Http("127.0.0.1:9001".parse().unwrap())]
        );
        let off = crate::config::parse("[site]\nid='s'\n[status]\nlisten=''\n")
            .unwrap()
            .status;
        assert!(targets(&off, None).is_empty());
    }
}
