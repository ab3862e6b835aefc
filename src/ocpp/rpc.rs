//! One connection's outbound RPC state, pure: the agent's CALL to the charger, at most one
//! outstanding at a time as OCPP-J requires, with its message id (`cs-1`, `cs-2`, …) and
//! the deadline by which its CALLRESULT or CALLERROR must come.
//!
//! Time is passed in; nothing here reads a clock or touches a socket. The waiter type is
//! a parameter, so the connection stores a oneshot sender while tests store plain values.
//!
//! The other direction needs no state of its own: the connection awaits the handler's
//! answer to a charger's CALL before it reads the next frame, so the charger's CALLs are
//! served one at a time and in order without any bookkeeping.

use std::time::Duration;

use tokio::time::Instant;

/// Our CALL on the wire.
#[derive(Debug)]
struct Pending<W> {
    id: String,
    action: String,
    deadline: Instant,
    waiter: W,
}

/// A CALL whose deadline passed without an answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Expired<W> {
    /// Its message id.
    pub id: String,
    /// Its action, for the log.
    pub action: String,
    /// Who waits for the answer (to be told it timed out).
    pub waiter: W,
}

/// [`Outbound::start`] while a CALL is outstanding; hands the waiter back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a CALL is already outstanding on this connection")]
pub struct Busy<W>(pub W);

/// The outbound CALL state of one connection.
#[derive(Debug)]
pub struct Outbound<W> {
    /// The number of the last id handed out.
    last_id: u64,
    pending: Option<Pending<W>>,
}

impl<W> Default for Outbound<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> Outbound<W> {
    /// No CALL sent yet; the first gets id `cs-1`.
    pub fn new() -> Self {
        Self {
            last_id: 0,
            pending: None,
        }
    }

    /// Whether a new CALL may go out now (none is outstanding).
    pub fn can_send(&self) -> bool {
        self.pending.is_none()
    }

    /// Records a CALL about to be sent at `now`, answered within `timeout`; returns the
    /// message id to put on the wire.
    ///
    /// # Errors
    /// [`Busy`] with the waiter when a CALL is still outstanding.
    pub fn start(
        &mut self,
        action: &str,
        waiter: W,
        now: Instant,
        timeout: Duration,
    ) -> Result<String, Busy<W>> {
        if self.pending.is_some() {
            return Err(Busy(waiter));
        }
        self.last_id += 1;
        let id = format!("cs-{}", self.last_id);
        self.pending = Some(Pending {
            id: id.clone(),
            action: action.to_string(),
            // A timeout too large to add means "wait as long as we can"; a year will do.
            deadline: now
                .checked_add(timeout)
                .or_else(|| now.checked_add(FAR))
                .unwrap_or(now),
            waiter,
        });
        Ok(id)
    }

    /// An answer with message id `id` came: the waiter of the CALL it answers, which is
    /// then settled. `None` when no CALL with that id is outstanding (a late answer, or
    /// one to a CALL we never sent); the outstanding CALL, if any, keeps waiting.
    pub fn settle(&mut self, id: &str) -> Option<W> {
        if self.pending.as_ref().is_some_and(|p| p.id == id) {
            self.pending.take().map(|p| p.waiter)
        } else {
            None
        }
    }

    /// When the outstanding CALL times out, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    /// The outstanding CALL if its deadline has passed at `now`; it is then given up on,
    /// so it expires once.
    pub fn expire(&mut self, now: Instant) -> Option<Expired<W>> {
        if self.pending.as_ref().is_some_and(|p| now >= p.deadline) {
            self.pending.take().map(|p| Expired {
                id: p.id,
                action: p.action,
                waiter: p.waiter,
            })
        } else {
            None
        }
    }

    /// Gives up on the outstanding CALL (the connection ends): its waiter, if any.
    pub fn abandon(&mut self) -> Option<W> {
        self.pending.take().map(|p| p.waiter)
    }
}

/// Stands in for "never" where an `Instant` is needed: a year.
const FAR: Duration = Duration::from_secs(86400 * 365);

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn ids_count_up_from_cs_1() {
        let mut rpc = Outbound::new();
        let t0 = Instant::now();
        assert_eq!(rpc.start("Reset", 'a', t0, T), Ok("cs-1".to_string()));
        assert_eq!(rpc.settle("cs-1"), Some('a'));
        assert_eq!(rpc.start("Reset", 'b', t0, T), Ok("cs-2".to_string()));
        assert_eq!(rpc.settle("cs-2"), Some('b'));
    }

    #[test]
    fn a_second_call_waits_until_the_first_is_answered() {
        let mut rpc = Outbound::new();
        let t0 = Instant::now();
        assert!(rpc.can_send());
        let id = rpc.start("RemoteStartTransaction", 1, t0, T).unwrap();
        assert!(!rpc.can_send());
        assert_eq!(rpc.start("Reset", 2, t0, T), Err(Busy(2)));
        assert_eq!(rpc.settle(&id), Some(1));
        assert!(rpc.can_send());
        assert_eq!(rpc.start("Reset", 2, t0, T), Ok("cs-2".to_string()));
    }

    #[test]
    fn an_answer_with_another_id_leaves_the_pending_call_waiting() {
        let mut rpc = Outbound::new();
        let t0 = Instant::now();
        let id = rpc.start("Reset", "waiter", t0, T).unwrap();
        assert_eq!(rpc.settle("cs-99"), None);
        assert_eq!(rpc.settle("m1"), None);
        assert!(!rpc.can_send());
        assert_eq!(rpc.deadline(), Some(t0 + T));
        assert_eq!(rpc.settle(&id), Some("waiter"));
    }

    #[test]
    fn an_answer_when_nothing_is_outstanding_is_ignored() {
        let mut rpc: Outbound<()> = Outbound::new();
        assert_eq!(rpc.settle("cs-1"), None);
        assert!(rpc.can_send());
    }

    #[test]
    fn a_call_past_its_deadline_times_out_once() {
        let mut rpc = Outbound::new();
        let t0 = Instant::now();
        let id = rpc.start("Reset", 7, t0, T).unwrap();
        assert_eq!(rpc.expire(t0 + T - Duration::from_millis(1)), None);
        assert!(!rpc.can_send(), "not yet expired");
        assert_eq!(
            rpc.expire(t0 + T),
            Some(Expired {
                id: id.clone(),
                action: "Reset".into(),
                waiter: 7
            })
        );
        assert_eq!(rpc.expire(t0 + T * 2), None);
        assert_eq!(rpc.deadline(), None);
        assert!(rpc.can_send());
    }

    #[test]
    fn a_late_answer_after_the_timeout_settles_nothing() {
        let mut rpc = Outbound::new();
        let t0 = Instant::now();
        let id = rpc.start("Reset", 7, t0, T).unwrap();
        assert!(rpc.expire(t0 + T).is_some());
        assert_eq!(rpc.settle(&id), None);
    }

    #[test]
    fn the_deadline_is_the_start_time_plus_the_timeout() {
        let mut rpc = Outbound::new();
        let t0 = Instant::now();
        assert_eq!(rpc.deadline(), None);
        rpc.start("Reset", (), t0, T).unwrap();
        assert_eq!(rpc.deadline(), Some(t0 + T));
    }

    #[test]
    fn a_timeout_too_large_to_add_does_not_panic() {
        let mut rpc = Outbound::new();
        let t0 = Instant::now();
        rpc.start("Reset", (), t0, Duration::MAX).unwrap();
        assert!(rpc.deadline().is_some_and(|d| d > t0));
    }

    #[test]
    fn abandoning_the_connection_hands_back_the_waiter() {
        let mut rpc = Outbound::new();
        let t0 = Instant::now();
        assert_eq!(rpc.abandon(), None);
        rpc.start("Reset", 'w', t0, T).unwrap();
        assert_eq!(rpc.abandon(), Some('w'));
        assert!(rpc.can_send());
    }
}
