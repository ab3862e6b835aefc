//! The chargers connected right now, and outbound CALLs to them.
//!
//! Each connection task registers here and receives the CALLs other parts of the agent
//! (the uplink's commands) want sent to its charger. A charger that reconnects replaces
//! its old socket: the old connection is cancelled and no longer counts as the charger.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::frame::Version;

/// Why an outbound CALL got no CALLRESULT.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallFailure {
    /// The charger is not connected.
    #[error("charger is not connected")]
    NotConnected,
    /// No answer within the timeout.
    #[error("charger did not answer in time")]
    Timeout,
    /// The charger answered with a CALLERROR.
    #[error("charger answered {code}: {description}")]
    Rejected {
        /// The CALLERROR code.
        code: String,
        /// Its description.
        description: String,
    },
    /// The connection ended before the answer came.
    #[error("charger disconnected before answering")]
    Disconnected,
    /// Too many CALLs are already waiting for this charger.
    #[error("too many calls queued for this charger")]
    Busy,
}

/// A CALL waiting to be sent on a connection.
pub struct OutboundCall {
    /// Action name, e.g. `RemoteStartTransaction`.
    pub action: String,
    /// Payload object.
    pub payload: Value,
    /// How long to wait for the answer once sent.
    pub timeout: Duration,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Value, CallFailure>>,
}

struct Entry {
    conn_id: u64,
    version: Version,
    profile: u8,
    origin: crate::auth::Origin,
    calls: mpsc::Sender<OutboundCall>,
    cancel: CancellationToken,
}

/// What a new connection gets when it registers.
pub struct Registration {
    /// This connection's id.
    pub conn_id: u64,
    /// CALLs to send to the charger.
    pub calls: mpsc::Receiver<OutboundCall>,
    /// Cancelled when this connection is replaced or the agent shuts down.
    pub cancel: CancellationToken,
    /// An older socket of the same charger was replaced.
    pub replaced: bool,
}

/// The connected chargers.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    next_id: Arc<AtomicU64>,
}

/// Outbound CALLs queued per charger before `call` answers `Busy`.
const QUEUE: usize = 8;

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated (every
        // critical section is a single insert/remove/get), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection for `cp_id` speaking `version` at security `profile`, from
    /// `origin` (its address, and whether the id is configured), replacing (and
    /// cancelling) any older one.
    pub fn register(
        &self,
        cp_id: &str,
        version: Version,
        profile: u8,
        origin: crate::auth::Origin,
        parent: &CancellationToken,
    ) -> Registration {
        let conn_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(QUEUE);
        let cancel = parent.child_token();
        let old = self.map().insert(
            cp_id.to_string(),
            Entry {
                conn_id,
                version,
                profile,
                origin,
                calls: tx,
                cancel: cancel.clone(),
            },
        );
        let replaced = old.is_some();
        if let Some(old) = old {
            old.cancel.cancel();
        }
        Registration {
            conn_id,
            calls: rx,
            cancel,
            replaced,
        }
    }

    /// Where the charger's current connection comes from, for the OTP guessing limits;
    /// `None` when it is not connected (a configured charger's decisions then count it as
    /// known, without an address).
    pub fn origin(&self, cp_id: &str) -> Option<crate::auth::Origin> {
        self.map().get(cp_id).map(|e| e.origin.clone())
    }

    /// Removes the connection if it is still the charger's current one; returns whether
    /// it was (a replaced connection must not mark the charger offline).
    pub fn unregister(&self, cp_id: &str, conn_id: u64) -> bool {
        let mut map = self.map();
        if map.get(cp_id).is_some_and(|e| e.conn_id == conn_id) {
            map.remove(cp_id);
            true
        } else {
            false
        }
    }

    /// Whether `conn_id` is still the charger's current connection (after its token was
    /// cancelled: not replaced, so disconnected by [`Registry::disconnect`] or shutdown).
    pub fn is_current(&self, cp_id: &str, conn_id: u64) -> bool {
        self.map().get(cp_id).is_some_and(|e| e.conn_id == conn_id)
    }

    /// Closes the charger's connection, if it has one (its entry in the config changed or
    /// went); returns whether it had one.
    pub fn disconnect(&self, cp_id: &str) -> bool {
        match self.map().get(cp_id) {
            Some(e) => {
                e.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Whether the charger is connected now.
    pub fn is_connected(&self, cp_id: &str) -> bool {
        self.map().contains_key(cp_id)
    }

    /// The OCPP version the charger's current connection speaks, if it is connected.
    pub fn version(&self, cp_id: &str) -> Option<Version> {
        self.map().get(cp_id).map(|e| e.version)
    }

    /// How many chargers are connected now.
    pub fn connected_count(&self) -> usize {
        self.map().len()
    }

    /// Ids of the connected chargers.
    pub fn connected(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// The connected chargers, the version each connection speaks and the security
    /// profile it came with.
    pub fn connected_versions(&self) -> Vec<(String, Version, u8)> {
        self.map()
            .iter()
            .map(|(id, e)| (id.clone(), e.version, e.profile))
            .collect()
    }

    /// Sends a CALL to a charger and waits for its CALLRESULT payload.
    ///
    /// # Errors
    /// [`CallFailure`]: not connected, busy, timed out, rejected with a CALLERROR, or the
    /// connection ended first.
    pub async fn call(
        &self,
        cp_id: &str,
        action: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<Value, CallFailure> {
        self.call_on(cp_id, None, action, payload, timeout).await
    }

    /// [`Registry::call`], only if the charger's connection speaks `version`: a payload
    /// built for one version never reaches a charger that reconnected speaking the other.
    ///
    /// # Errors
    /// As [`Registry::call`]; `NotConnected` when the connection speaks another version.
    pub async fn call_speaking(
        &self,
        cp_id: &str,
        version: Version,
        action: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<Value, CallFailure> {
        self.call_on(cp_id, Some(version), action, payload, timeout)
            .await
    }

    async fn call_on(
        &self,
        cp_id: &str,
        version: Option<Version>,
        action: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<Value, CallFailure> {
        let sender = self
            .map()
            .get(cp_id)
            .filter(|e| version.is_none_or(|v| v == e.version))
            .map(|e| e.calls.clone())
            .ok_or(CallFailure::NotConnected)?;
        let (reply, rx) = oneshot::channel();
        sender
            .try_send(OutboundCall {
                action: action.to_string(),
                payload,
                timeout,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => CallFailure::Busy,
                mpsc::error::TrySendError::Closed(_) => CallFailure::NotConnected,
            })?;
        // The connection enforces the timeout once the CALL is on the wire; this outer
        // bound also covers time spent queued behind earlier CALLs.
        match tokio::time::timeout(timeout * (QUEUE as u32 + 1), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CallFailure::Disconnected),
            Err(_) => Err(CallFailure::Timeout),
        }
    }
}
