//! The store's part of `GET /api/v1/status`: one read on the store thread, cheap enough
//! to run beside 30,000 writes a second: the chargers table (one row per charger), the
//! connectors, the running sessions through the `(cp_id, state)` index, the outbox's
//! partial index, and the latest few security events and flagged sessions by rowid.
//! Never an id tag: no query here selects one.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension};

use super::StoreError;
use crate::billing::{Accrual, Tariff};
use crate::status::view::{
    ChargerRow, ConnectorState, FlaggedSession, RunningSession, SecurityRow, StoreRows,
};

/// How many of the latest security events and flagged sessions are listed.
const RECENT: i64 = 10;
/// How far back (in sessions) flagged sessions are looked for: bounds the scan.
const FLAGGED_WINDOW: i64 = 1000;

pub(super) fn rows(c: &Connection) -> Result<StoreRows, StoreError> {
    let chargers = c
        .prepare_cached(
            "SELECT cp_id, online, ocpp_version, vendor, model, serial, firmware, booted_at,
                    connected_at, disconnected_at, disconnect_reason, last_seen, clock_flag,
                    clock_flagged_at, firmware_status
             FROM chargers ORDER BY cp_id",
        )?
        .query_map([], |r| {
            Ok(ChargerRow {
                cp_id: r.get(0)?,
                online: r.get::<_, i64>(1)? != 0,
                ocpp_version: r.get(2)?,
                vendor: r.get(3)?,
                model: r.get(4)?,
                serial: r.get(5)?,
                firmware: r.get(6)?,
                booted_at: r.get(7)?,
                connected_at: r.get(8)?,
                disconnected_at: r.get(9)?,
                disconnect_reason: r.get(10)?,
                last_seen: r.get(11)?,
                clock_flag: r.get(12)?,
                clock_flagged_at: r.get(13)?,
                firmware_status: r.get(14)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let connectors = super::outbox::connectors(c, None)?
        .into_iter()
        .map(|k| ConnectorState {
            cp_id: k.cp_id,
            connector_id: k.connector_id,
            status: k.status,
            error_code: k.error_code,
            at: k.at,
        })
        .collect();
    let sessions = running(c)?;
    let status = super::outbox::status(c)?;
    let oldest_unsent_at = match status.oldest_unsent {
        None => None,
        Some(seq) => c
            .prepare_cached("SELECT at FROM events WHERE seq = ?1")?
            .query_row([seq], |r| r.get::<_, String>(0))
            .optional()?
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)),
    };
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let page_size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let security_events = c
        .prepare_cached(
            "SELECT cp_id, type, received_at FROM security_events ORDER BY id DESC LIMIT ?1",
        )?
        .query_map([RECENT], |r| {
            Ok(SecurityRow {
                cp_id: r.get(0)?,
                kind: r.get(1)?,
                at: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let flagged_sessions = c
        .prepare_cached(
            "SELECT session_id, cp_id, flags, start_received_at FROM sessions
             WHERE transaction_id > (SELECT coalesce(max(transaction_id), 0) FROM sessions) - ?1
               AND flags != ''
             ORDER BY transaction_id DESC LIMIT ?2",
        )?
        .query_map([FLAGGED_WINDOW, RECENT], |r| {
            Ok(FlaggedSession {
                session_id: r.get(0)?,
                cp_id: r.get(1)?,
                flags: r.get(2)?,
                at: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StoreRows {
        chargers,
        connectors,
        sessions,
        backlog: status.backlog,
        last_seq: status.last_seq,
        oldest_unsent_at,
        db_bytes: u64::try_from((pages - free).max(0) * page_size).unwrap_or(0),
        security_events,
        flagged_sessions,
    })
}

/// Running sessions, found charger by charger through `sessions_by_charger` (a site has
/// few chargers and many finished sessions), with the latest power reading and the
/// running cost priced as the session core prices it.
fn running(c: &Connection) -> Result<Vec<RunningSession>, StoreError> {
    type Raw = (RunningSession, Option<String>, Option<String>, i64);
    let raw = c
        .prepare_cached(
            "SELECT s.session_id, s.transaction_id, s.charger_tx_id, s.cp_id, s.connector_id,
                    s.energy_wh, s.order_id, s.started_raw, s.flags, s.clock_skew_secs,
                    (SELECT m.power_w FROM meter_values m
                      WHERE m.transaction_id = s.transaction_id AND m.power_w IS NOT NULL
                      ORDER BY m.id DESC LIMIT 1),
                    s.tariff, s.accrual, s.last_reading_ms
             FROM chargers ch JOIN sessions s ON s.cp_id = ch.cp_id AND s.state = 'active'
             ORDER BY s.cp_id, s.connector_id",
        )?
        .query_map([], |r| {
            Ok((
                RunningSession {
                    session_id: r.get(0)?,
                    transaction_id: r.get(1)?,
                    charger_tx_id: r.get(2)?,
                    cp_id: r.get(3)?,
                    connector_id: r.get(4)?,
                    energy_wh: r.get(5)?,
                    order_id: r.get(6)?,
                    started_at: r.get(7)?,
                    flags: r.get(8)?,
                    clock_skew_secs: r.get(9)?,
                    power_w: r.get(10)?,
                    cost: None,
                },
                r.get(11)?,
                r.get(12)?,
                r.get(13)?,
            ))
        })?
        .collect::<Result<Vec<Raw>, _>>()?;
    Ok(raw
        .into_iter()
        .map(|(mut s, tariff, accrual, last_ms)| {
            s.cost = running_cost(tariff.as_deref(), accrual.as_deref(), last_ms);
            s
        })
        .collect())
}

/// The cost so far; `None` without a tariff or when the stored pricing cannot be read
/// (the session is flagged for that elsewhere; the status page shows no price then).
fn running_cost(
    tariff: Option<&str>,
    accrual: Option<&str>,
    last_ms: i64,
) -> Option<(String, i64)> {
    let tariff = Tariff::from_json(&serde_json::from_str(tariff?).ok()?).ok()?;
    let accrual: Accrual = match accrual {
        None => Accrual::default(),
        Some(a) => serde_json::from_str(a).ok()?,
    };
    let until = super::from_ms(last_ms, String::new).ok()?;
    let cost = crate::billing::cost(&tariff, &accrual, until);
    Some((cost.currency, cost.total_minor))
}
