//! Which link broke a running session, and what a crash of the agent left open; pure.
//!
//! A session is interrupted when its charger's socket ends and resumed, with the same
//! [`Link`], when the charger is back: [`Link::Charger`] when the charger's side went
//! away, [`Link::Agent`] when the agent itself stopped (a graceful shutdown) or died. A
//! SIGKILL leaves no chance to record anything, so at the next start the store loads
//! what it still holds as open ([`Found`]) and [`after_restart`] decides what to close:
//! every charger still recorded connected gets its disconnect (`agent_restart`, with the
//! last time it was seen), and every one of its running sessions not already interrupted
//! is interrupted by the agent. After any crash the BPP's picture of every charger and
//! session is then complete: each `charger.connected` has its `charger.disconnected`, and
//! each `session.interrupted` its `session.resumed` once the charger is back.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// `charger.disconnected`'s `reason` for a connection the agent's own crash ended.
pub const AGENT_RESTART: &str = "agent_restart";

/// `charger.disconnected`'s `reason` when the agent shut down gracefully.
pub const SHUTDOWN: &str = "shutdown";

/// Which side of a session lost or regained its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// The charger's socket to the agent.
    Charger,
    /// The agent itself restarted.
    Agent,
}

impl Link {
    /// The link a socket's end with `reason` broke: a graceful shutdown is the agent going
    /// away, as much as a crash is; every other end (closed, dead, error, replaced,
    /// protocol) is the charger's side.
    pub fn of_disconnect(reason: &str) -> Link {
        match reason {
            SHUTDOWN | AGENT_RESTART => Link::Agent,
            _ => Link::Charger,
        }
    }

    /// `sessions.interrupted` as stored (schema 4): 1 the charger's link, 2 the agent's;
    /// 0 is a session that is not interrupted.
    pub fn to_stored(self) -> i64 {
        match self {
            Link::Charger => 1,
            Link::Agent => 2,
        }
    }

    /// Reads `sessions.interrupted` back: `None` for a session that is not interrupted.
    ///
    /// # Errors
    /// The stored value, when it is none this build writes.
    pub fn from_stored(v: i64) -> Result<Option<Link>, i64> {
        match v {
            0 => Ok(None),
            1 => Ok(Some(Link::Charger)),
            2 => Ok(Some(Link::Agent)),
            other => Err(other),
        }
    }
}

/// A charger as the store found it when the agent started.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Charger.
    pub cp_id: String,
    /// Recorded as connected: only a crash leaves that behind at start.
    pub online: bool,
    /// Every stored trace of it with a site-clock time (its last connect, boot or
    /// heartbeat, status notification, reading of a running session): the latest is when
    /// it was last seen.
    pub seen: Vec<DateTime<Utc>>,
    /// Its running sessions.
    pub sessions: Vec<FoundSession>,
}

/// A running session as the store found it when the agent started.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundSession {
    /// Session.
    pub session_id: String,
    /// Whether, and by which link, it is already interrupted.
    pub interrupted: Option<Link>,
}

/// What the agent closes at start for one charger a crash left connected.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    /// Charger: recorded offline, with `charger.disconnected` reason [`AGENT_RESTART`].
    pub cp_id: String,
    /// When it was last seen; `None` when nothing of it carries a time.
    pub last_seen: Option<DateTime<Utc>>,
    /// Its running sessions that the agent's restart interrupts (link [`Link::Agent`]).
    pub interrupt: Vec<String>,
}

/// What a restart closes: the chargers still recorded connected, with the latest time
/// each was seen, and those of their running sessions not yet interrupted. A session
/// already interrupted keeps the link that broke it. A charger recorded offline is left
/// alone: after a graceful stop nothing is connected, so nothing is written.
pub fn after_restart(found: Vec<Found>) -> Vec<Closed> {
    found
        .into_iter()
        .filter(|f| f.online)
        .map(|f| Closed {
            last_seen: f.seen.iter().copied().max(),
            interrupt: f
                .sessions
                .into_iter()
                .filter(|s| s.interrupted.is_none())
                .map(|s| s.session_id)
                .collect(),
            cp_id: f.cp_id,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_795_000_000 + secs, 0).unwrap()
    }

    fn running(id: &str, interrupted: Option<Link>) -> FoundSession {
        FoundSession {
            session_id: id.into(),
            interrupted,
        }
    }

    fn charger(cp_id: &str, online: bool, seen: &[i64], sessions: Vec<FoundSession>) -> Found {
        Found {
            cp_id: cp_id.into(),
            online,
            seen: seen.iter().map(|s| t(*s)).collect(),
            sessions,
        }
    }

    #[test]
    fn a_charger_left_connected_by_a_crash_is_closed_as_last_seen_at_its_latest_trace() {
        let closed = after_restart(vec![charger("CP1", true, &[10, 300, 120], vec![])]);
        assert_eq!(
            closed,
            vec![Closed {
                cp_id: "CP1".into(),
                last_seen: Some(t(300)),
                interrupt: vec![],
            }]
        );
    }

    #[test]
    fn its_running_sessions_are_interrupted_unless_a_link_already_broke_them() {
        let closed = after_restart(vec![charger(
            "CP1",
            true,
            &[10],
            vec![
                running("s-1", None),
                running("s-2", Some(Link::Charger)),
                running("s-3", None),
            ],
        )]);
        assert_eq!(closed[0].interrupt, vec!["s-1", "s-3"]);
    }

    #[test]
    fn a_charger_recorded_offline_is_left_alone_even_with_a_running_session() {
        let found = vec![
            charger("CP1", false, &[10], vec![running("s-1", Some(Link::Agent))]),
            charger("CP2", false, &[10], vec![]),
        ];
        assert_eq!(after_restart(found), vec![]);
    }

    #[test]
    fn a_charger_with_no_stored_time_is_closed_without_a_last_seen() {
        let closed = after_restart(vec![charger("CP1", true, &[], vec![])]);
        assert_eq!(closed[0].last_seen, None);
    }

    #[test]
    fn a_graceful_shutdown_breaks_the_agent_link_and_every_other_end_the_chargers() {
        assert_eq!(Link::of_disconnect("shutdown"), Link::Agent);
        assert_eq!(Link::of_disconnect("agent_restart"), Link::Agent);
        for reason in ["closed", "dead", "error", "replaced", "protocol"] {
            assert_eq!(Link::of_disconnect(reason), Link::Charger, "{reason}");
        }
    }

    #[test]
    fn the_stored_link_reads_back_and_an_unknown_value_is_an_error() {
        for link in [Link::Charger, Link::Agent] {
            assert_eq!(Link::from_stored(link.to_stored()), Ok(Some(link)));
        }
        assert_eq!(Link::from_stored(0), Ok(None));
        assert_eq!(Link::from_stored(7), Err(7));
    }
}
