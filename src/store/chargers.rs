//! Chargers and connectors as stored: connections, boots, status notifications, and the
//! interruptions they mean for running sessions. Runs on the store thread only.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::{insert_event, Ctx, StoreError};
use crate::events::{Event, Link};
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

/// Marks the charger's running sessions interrupted (`resumed` false) or resumed, with
/// one `session.interrupted` / `session.resumed` each.
fn link_sessions(
    c: &Connection,
    cp_id: &str,
    resumed: bool,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let affected: Vec<String> = c
        .prepare_cached(
            "SELECT session_id FROM sessions WHERE cp_id = ?1 AND state = 'active' AND interrupted = ?2",
        )?
        .query_map(params![cp_id, resumed], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for session_id in affected {
        c.prepare_cached("UPDATE sessions SET interrupted = ?2 WHERE session_id = ?1")?
            .execute(params![session_id, !resumed])?;
        let e = Event::SessionLink {
            session_id,
            cp_id: cp_id.to_string(),
            link: Link::Charger,
            resumed,
        };
        insert_event(c, at, &e)?;
    }
    Ok(())
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
        "INSERT INTO chargers (cp_id, online, ocpp_version, connected_at) VALUES (?1, 1, ?2, ?3)
         ON CONFLICT (cp_id) DO UPDATE SET online = 1, ocpp_version = ?2, connected_at = ?3",
    )?
    .execute(params![cp_id, ocpp_version, fmt_ts(at)])?;
    let e = Event::ChargerConnected {
        cp_id: cp_id.to_string(),
        ocpp_version: ocpp_version.to_string(),
    };
    insert_event(c, at, &e)?;
    link_sessions(c, cp_id, true, at)
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
    link_sessions(c, cp_id, false, at)
}

pub(super) fn booted(c: &Connection, b: &Boot) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO chargers (cp_id, vendor, model, serial, firmware, booted_at, online)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)
         ON CONFLICT (cp_id) DO UPDATE SET vendor = ?2, model = ?3, serial = ?4,
             firmware = ?5, booted_at = ?6",
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
