//! What the OCPP side tells the uplink about chargers and running sessions: snapshots for
//! the retained connector topics and the live topic, best effort over a bounded channel
//! (the facts themselves are in the outbox). Its own small module so that the OCPP driver
//! and the uplink driver both depend on it, not on each other.

use tokio::sync::mpsc;

/// Something the OCPP side tells the uplink; best effort (a snapshot, not a fact: the facts
/// are in the outbox).
#[derive(Debug, Clone)]
pub enum Notice {
    /// A charger's connectors or its online state changed: republish its retained topics.
    Connectors {
        /// Charger.
        cp_id: String,
    },
    /// A running session's latest readings, for `<root>/live/<session_id>`.
    Live {
        /// Session.
        session_id: String,
        /// The snapshot payload, serialized.
        snapshot: String,
    },
    /// A session ended: stop publishing its live topic.
    SessionEnded {
        /// Session.
        session_id: String,
    },
}

/// The sending side of the notice channel; never blocks (a full channel drops the notice:
/// retained topics are refreshed on the next change and on every reconnect).
#[derive(Clone)]
pub struct Notices(mpsc::Sender<Notice>);

impl Notices {
    /// A channel for notices.
    pub fn channel() -> (Notices, mpsc::Receiver<Notice>) {
        let (tx, rx) = mpsc::channel(4096);
        (Notices(tx), rx)
    }

    /// Whether anyone listens: without an uplink (or while it is offline) a live snapshot
    /// is not worth building.
    pub fn is_open(&self) -> bool {
        !self.0.is_closed()
    }

    /// Sends without waiting.
    pub fn send(&self, n: Notice) {
        let _ = self.0.try_send(n);
    }
}
