//! Chargers and connectors as stored: connections, boots, status notifications, and the
//! interruptions they mean for running sessions, and what a crash left open, closed at
//! the next start. Runs on the store thread only (and once in [`super::open`], before it).

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::{from_ms, insert_event, Ctx, StoreError};
use crate::events::Event;
use crate::session::link::{self, Found, FoundSession, Link};
use crate::session::{self, Flag};
use crate::time::{fmt_ts, ChargerTime};

/// A BootNotification to record.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Charger.
    pub cp_id: String,
    /// Vendor.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// Serial number.
    pub serial: Option<String>,
    /// Firmware version.
    pub firmware: Option<String>,
    /// Site clock.
    pub at: DateTime<Utc>,
}

/// A StatusNotification to record.
#[derive(Debug, Clone)]
pub struct StatusIn {
    /// Charger.
    pub cp_id: String,
    /// Connector (0 = charger).
    pub connector_id: u32,
    /// Status.
    pub status: String,
    /// Error code.
    pub error_code: String,
    /// Info and vendor error code.
    pub info: Option<String>,
    /// Charger timestamp.
    pub charger_ts: Option<ChargerTime>,
    /// Site clock.
    pub at: DateTime<Utc>,
}

/// Marks the charger's running sessions that are not yet interrupted as interrupted by
/// `link`, with one `session.interrupted` each.
fn interrupt_sessions(
    c: &Connection,
    cp_id: &str,
    link: Link,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let affected: Vec<String> = c
        .prepare_cached(
            "SELECT session_id FROM sessions WHERE cp_id = ?1 AND state = 'active' AND interrupted = 0",
        )?
        .query_map(params![cp_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for session_id in affected {
        interrupt(c, cp_id, session_id, link, at)?;
    }
    Ok(())
}

/// Records one session as interrupted by `link`, with its `session.interrupted`.
fn interrupt(
    c: &Connection,
    cp_id: &str,
    session_id: String,
    link: Link,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    c.prepare_cached("UPDATE sessions SET interrupted = ?2 WHERE session_id = ?1")?
        .execute(params![session_id, link.to_stored()])?;
    let e = Event::SessionLink {
        session_id,
        cp_id: cp_id.to_string(),
        link,
        resumed: false,
    };
    insert_event(c, at, &e)
}

/// Marks the charger's interrupted sessions resumed, each with a `session.resumed` that
/// names the link that broke it: the BPP pairs it with its `session.interrupted`.
fn resume_sessions(c: &Connection, cp_id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
    let affected: Vec<(String, i64)> = c
        .prepare_cached(
            "SELECT session_id, interrupted FROM sessions
             WHERE cp_id = ?1 AND state = 'active' AND interrupted <> 0",
        )?
        .query_map(params![cp_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (session_id, stored) in affected {
        // `None` cannot come back: the query only selects interrupted sessions.
        let link = stored_link(&session_id, stored)?.unwrap_or(Link::Charger);
        c.prepare_cached("UPDATE sessions SET interrupted = 0 WHERE session_id = ?1")?
            .execute(params![session_id])?;
        let e = Event::SessionLink {
            session_id,
            cp_id: cp_id.to_string(),
            link,
            resumed: true,
        };
        insert_event(c, at, &e)?;
    }
    Ok(())
}

/// A stored `sessions.interrupted`, read back; a value this build never wrote is an
/// error, not a guess.
fn stored_link(session_id: &str, stored: i64) -> Result<Option<Link>, StoreError> {
    Link::from_stored(stored)
        .map_err(|v| StoreError::Corrupt(format!("session {session_id}: interrupted {v}")))
}

pub(super) fn connected(
    c: &Connection,
    cp_id: &str,
    ocpp_version: &str,
    replaced: bool,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    if replaced {
        let e = Event::ChargerDisconnected {
            cp_id: cp_id.to_string(),
            reason: "replaced".into(),
            last_seen: None,
        };
        insert_event(c, at, &e)?;
    }
    c.prepare_cached(
        "INSERT INTO chargers (cp_id, online, ocpp_version, connected_at, last_seen)
         VALUES (?1, 1, ?2, ?3, ?3)
         ON CONFLICT (cp_id) DO UPDATE SET online = 1, ocpp_version = ?2, connected_at = ?3,
             last_seen = ?3",
    )?
    .execute(params![cp_id, ocpp_version, fmt_ts(at)])?;
    let e = Event::ChargerConnected {
        cp_id: cp_id.to_string(),
        ocpp_version: ocpp_version.to_string(),
    };
    insert_event(c, at, &e)?;
    resume_sessions(c, cp_id, at)
}

pub(super) fn disconnected(
    c: &Connection,
    cp_id: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE chargers SET online = 0, disconnected_at = ?2, disconnect_reason = ?3 WHERE cp_id = ?1",
    )?
    .execute(params![cp_id, fmt_ts(at), reason])?;
    let e = Event::ChargerDisconnected {
        cp_id: cp_id.to_string(),
        reason: reason.to_string(),
        last_seen: None,
    };
    insert_event(c, at, &e)?;
    interrupt_sessions(c, cp_id, Link::of_disconnect(reason), at)
}

/// A Heartbeat: the one message that leaves no other trace of the charger, so the one
/// write done only to know when it was last seen (once per heartbeat interval, 5 minutes
/// by default; never per MeterValues, whose time the session already stores).
pub(super) fn seen(c: &Connection, cp_id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
    c.prepare_cached("UPDATE chargers SET last_seen = ?2 WHERE cp_id = ?1")?
        .execute(params![cp_id, fmt_ts(at)])?;
    Ok(())
}

/// Closes what a crash left open, once at open, before any charger can connect: loads
/// every charger with its traces and running sessions, lets
/// [`session::link::after_restart`] decide, and writes what it decided. Returns how many
/// chargers it closed.
///
/// "Last seen" is the latest of: `chargers.last_seen` (connect, boot, heartbeat),
/// `connectors.received_at` (statuses) and `sessions.last_received_ms` of its running
/// sessions (every reading and start). Each is already written with the message it
/// describes, so only the heartbeat costs a write of its own, and MeterValues none; it is
/// a lower bound (the socket's pings and readings outside a session leave no time), never
/// a time the charger was not there.
pub(super) fn close_after_restart(c: &Connection, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let chargers: Vec<(String, bool, Option<String>)> = c
        .prepare("SELECT cp_id, online, last_seen FROM chargers ORDER BY cp_id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut found = Vec::with_capacity(chargers.len());
    for (cp_id, online, last_seen) in chargers {
        let mut seen = Vec::new();
        if let Some(t) = last_seen {
            seen.push(parse_stored(&t, || format!("charger {cp_id} last_seen"))?);
        }
        let status: Option<String> = c
            .prepare_cached("SELECT max(received_at) FROM connectors WHERE cp_id = ?1")?
            .query_row(params![cp_id], |r| r.get(0))?;
        if let Some(t) = status {
            seen.push(parse_stored(&t, || format!("charger {cp_id} status time"))?);
        }
        let running: Vec<(String, i64, i64)> = c
            .prepare_cached(
                "SELECT session_id, interrupted, last_received_ms FROM sessions
                 WHERE cp_id = ?1 AND state = 'active' ORDER BY transaction_id",
            )?
            .query_map(params![cp_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let mut sessions = Vec::with_capacity(running.len());
        for (session_id, interrupted, received_ms) in running {
            seen.push(from_ms(received_ms, || {
                format!("session {session_id} last_received_ms")
            })?);
            sessions.push(FoundSession {
                interrupted: stored_link(&session_id, interrupted)?,
                session_id,
            });
        }
        found.push(Found {
            cp_id,
            online,
            seen,
            sessions,
        });
    }
    let closed = link::after_restart(found);
    for ch in &closed {
        c.prepare_cached(
            "UPDATE chargers SET online = 0, disconnected_at = ?2, disconnect_reason = ?3
             WHERE cp_id = ?1",
        )?
        .execute(params![ch.cp_id, fmt_ts(now), link::AGENT_RESTART])?;
        let e = Event::ChargerDisconnected {
            cp_id: ch.cp_id.clone(),
            reason: link::AGENT_RESTART.into(),
            last_seen: ch.last_seen.map(fmt_ts),
        };
        insert_event(c, now, &e)?;
        for session_id in &ch.interrupt {
            interrupt(c, &ch.cp_id, session_id.clone(), Link::Agent, now)?;
        }
    }
    Ok(closed.len())
}

/// A timestamp this store wrote with [`fmt_ts`], read back.
fn parse_stored(v: &str, what: impl FnOnce() -> String) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("{}: {v:?}: {e}", what())))
}

pub(super) fn booted(c: &Connection, b: &Boot) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO chargers (cp_id, vendor, model, serial, firmware, booted_at, online, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?6)
         ON CONFLICT (cp_id) DO UPDATE SET vendor = ?2, model = ?3, serial = ?4,
             firmware = ?5, booted_at = ?6, last_seen = ?6",
    )?
    .execute(params![
        b.cp_id,
        b.vendor,
        b.model,
        b.serial,
        b.firmware,
        fmt_ts(b.at)
    ])?;
    let e = Event::ChargerBooted {
        cp_id: b.cp_id.clone(),
        vendor: b.vendor.clone(),
        model: b.model.clone(),
        serial: b.serial.clone(),
        firmware: b.firmware.clone(),
    };
    insert_event(c, b.at, &e)
}

pub(super) fn status(c: &Connection, ctx: &Ctx, s: &StatusIn) -> Result<(), StoreError> {
    if let Some(ts) = &s.charger_ts {
        note_clock(c, &s.cp_id, session::clock(ts, s.at, &ctx.limits), s.at)?;
    }
    c.prepare_cached(
        "INSERT INTO connectors (cp_id, connector_id, status, error_code, info, charger_ts, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (cp_id, connector_id) DO UPDATE SET status = ?3, error_code = ?4,
             info = ?5, charger_ts = ?6, received_at = ?7",
    )?
    .execute(params![
        s.cp_id,
        s.connector_id,
        s.status,
        s.error_code,
        s.info,
        s.charger_ts.as_ref().map(|t| t.raw.as_str()),
        fmt_ts(s.at)
    ])?;
    let e = Event::ConnectorStatus {
        cp_id: s.cp_id.clone(),
        connector_id: s.connector_id,
        status: s.status.clone(),
        error_code: s.error_code.clone(),
        charger_ts: s.charger_ts.as_ref().map(|t| fmt_ts(t.at)),
        evse_id: None,
        connectors: None,
    };
    insert_event(c, s.at, &e)
}

pub(super) fn note(
    c: &Connection,
    cp_id: &str,
    firmware_status: Option<String>,
    diagnostics_status: Option<String>,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO chargers (cp_id, firmware_status, diagnostics_status) VALUES (?1, ?2, ?3)
         ON CONFLICT (cp_id) DO UPDATE SET
             firmware_status = coalesce(?2, firmware_status),
             diagnostics_status = coalesce(?3, diagnostics_status)",
        params![cp_id, firmware_status, diagnostics_status],
    )?;
    Ok(())
}

/// Records on the charger a clock that cannot be right (the session core decided it).
pub(super) fn note_clock(
    c: &Connection,
    cp_id: &str,
    flag: Option<Flag>,
    received: DateTime<Utc>,
) -> Result<(), StoreError> {
    if let Some(f) = flag {
        c.prepare_cached(
            "INSERT INTO chargers (cp_id, clock_flag, clock_flagged_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (cp_id) DO UPDATE SET clock_flag = ?2, clock_flagged_at = ?3",
        )?
        .execute(params![cp_id, f.as_str(), fmt_ts(received)])?;
    }
    Ok(())
}
