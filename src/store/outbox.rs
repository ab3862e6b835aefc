//! The outbox and command log, as the uplink reads and updates them: unsent events in
//! `seq` order, PUBACKs and BPP acks, retention and the storage quota, and the commands
//! received from the BPP with their results. Runs on the store thread only.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use super::StoreError;
use crate::events::{Event, EventRow};
use crate::session::State;
use crate::time::fmt_ts;

/// Where the outbox stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Oldest event not yet PUBACKed, if any.
    pub oldest_unsent: Option<i64>,
    /// Newest seq ever issued (0 before the first event).
    pub last_seq: i64,
    /// Events not yet PUBACKed.
    pub backlog: i64,
}

/// What the store says about a command just received.
#[derive(Debug, Clone, PartialEq)]
pub enum Intake {
    /// First time this id is seen: stored, execute it.
    New {
        /// The key it is stored under (the id, or a synthetic key when the id is unreadable).
        key: String,
    },
    /// Seen before: do not execute again; here is its result if it has one.
    Repeat {
        /// The stored key.
        key: String,
        /// The first result, JSON.
        result: Option<String>,
    },
}

/// A connector's retained state.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorRow {
    /// Charger.
    pub cp_id: String,
    /// Connector.
    pub connector_id: i64,
    /// Status.
    pub status: String,
    /// Error code.
    pub error_code: String,
    /// Whether the charger is connected.
    pub charger_online: bool,
    /// When the status was received.
    pub at: String,
    /// 2.0.1: the EVSE's connectors (the row is the EVSE); empty for 1.6.
    pub evse_connectors: Vec<crate::events::EvseConnector>,
}

/// The session a command refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRef {
    /// Session id.
    pub session_id: String,
    /// Charger.
    pub cp_id: String,
    /// Connector.
    pub connector_id: u32,
    /// The store's integer transaction id (the OCPP one for a 1.6 charger).
    pub transaction_id: i32,
    /// A 2.0.1 charger's own `transactionId`; `None` for a 1.6 session.
    pub charger_tx_id: Option<String>,
    /// Running or ended.
    pub state: State,
    /// Order, if any.
    pub order_id: Option<String>,
}

/// A 2.0.1 transaction the store holds open (state `active`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTransaction {
    /// Session id.
    pub session_id: String,
    /// The charger's own `transactionId`.
    pub charger_tx_id: String,
}

pub(super) fn fetch(
    c: &Connection,
    after: i64,
    limit: usize,
    unsent_only: bool,
) -> Result<Vec<EventRow>, StoreError> {
    let sql = if unsent_only {
        "SELECT seq, type, at, body FROM events WHERE seq > ?1 AND sent_at IS NULL ORDER BY seq LIMIT ?2"
    } else {
        "SELECT seq, type, at, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    };
    let rows = c
        .prepare_cached(sql)?
        .query_map(params![after, limit as i64], |r| {
            Ok(EventRow {
                seq: r.get(0)?,
                kind: r.get(1)?,
                at: r.get(2)?,
                body: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Sorts and merges adjacent or overlapping inclusive ranges.
pub(super) fn merge_ranges(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    ranges.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

pub(super) fn mark_sent(
    c: &Connection,
    first: i64,
    last: i64,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE events SET sent_at = ?3 WHERE seq BETWEEN ?1 AND ?2 AND sent_at IS NULL",
    )?
    .execute(params![first, last, fmt_ts(at)])?;
    Ok(())
}

/// The BPP has stored everything up to `seq`: only events already PUBACKed can be
/// released (a BPP cannot have stored what it was never sent).
pub(super) fn ack(c: &Connection, seq: i64) -> Result<usize, StoreError> {
    Ok(c.prepare_cached(
        "UPDATE events SET acked = 1 WHERE seq <= ?1 AND sent_at IS NOT NULL AND acked = 0",
    )?
    .execute(params![seq])?)
}

pub(super) fn status(c: &Connection) -> Result<OutboxStatus, StoreError> {
    let oldest_unsent: Option<i64> = c
        .prepare_cached("SELECT min(seq) FROM events WHERE sent_at IS NULL")?
        .query_row([], |r| r.get(0))?;
    let backlog: i64 = c
        .prepare_cached("SELECT count(*) FROM events WHERE sent_at IS NULL")?
        .query_row([], |r| r.get(0))?;
    Ok(OutboxStatus {
        oldest_unsent,
        last_seq: last_seq(c)?,
        backlog,
    })
}

/// The newest seq ever issued (AUTOINCREMENT's high-water mark survives deletions).
pub(super) fn last_seq(c: &Connection) -> Result<i64, StoreError> {
    Ok(
        c.prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'events'")?
            .query_row([], |r| r.get(0))
            .optional()?
            .unwrap_or(0),
    )
}

/// Drops what may go, in the contract's order: events the BPP acked, sent events past
/// the retention window; then, while the file is over `quota_bytes`, the oldest sent
/// events and meter readings of finished sessions, and finally every other unsent
/// `session.meter` event of running sessions (recording the gap as an event). Never a
/// `session.started`/`session.stopped`, never an unsent billable event other than
/// intermediate meter samples.
pub(super) fn prune(
    c: &Connection,
    now: DateTime<Utc>,
    retain_secs: i64,
    quota_bytes: Option<u64>,
) -> Result<usize, StoreError> {
    let retain = chrono::Duration::try_seconds(retain_secs).unwrap_or(chrono::Duration::MAX);
    let cutoff = fmt_ts(
        now.checked_sub_signed(retain)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    );
    let mut dropped = c.execute(
        "DELETE FROM events WHERE acked = 1 OR (sent_at IS NOT NULL AND sent_at < ?1)",
        params![cutoff],
    )?;
    let Some(quota) = quota_bytes else {
        return Ok(dropped);
    };
    let over = |c: &Connection| -> Result<bool, StoreError> { Ok(used_bytes(c)? > quota) };
    // 1. sent events, oldest first
    while over(c)? {
        let n = c.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE sent_at IS NOT NULL ORDER BY seq LIMIT 1000)",
            [],
        )?;
        dropped += n;
        if n == 0 {
            break;
        }
    }
    // 2. raw readings of sessions that are stopped and fully reported
    while over(c)? {
        let n = c.execute(
            "DELETE FROM meter_values WHERE id IN (
                SELECT m.id FROM meter_values m JOIN sessions s ON s.transaction_id = m.transaction_id
                WHERE s.state = 'stopped' ORDER BY m.id LIMIT 1000)",
            [],
        )?;
        dropped += n;
        if n == 0 {
            break;
        }
    }
    // 3. thin unsent intermediate samples: every other session.meter event, oldest first
    while over(c)? {
        let victims: Vec<i64> = c
            .prepare(
                "SELECT seq FROM events WHERE sent_at IS NULL AND type = 'session.meter'
                 ORDER BY seq LIMIT 2000",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<i64>, _>>()?
            .into_iter()
            .step_by(2)
            .collect();
        if victims.is_empty() {
            tracing::error!("storage quota reached and nothing more may be dropped");
            break;
        }
        let (first, last) = (victims[0], victims[victims.len() - 1]);
        for seq in &victims {
            c.execute("DELETE FROM events WHERE seq = ?1", params![seq])?;
        }
        dropped += victims.len();
        let gap = Event::Gap {
            reason: "storage_quota",
            from_seq: first,
            to_seq: last,
            dropped: victims.len(),
            types: vec![crate::events::SESSION_METER],
        };
        super::insert_event(c, now, &gap)?;
    }
    Ok(dropped)
}

/// Bytes the database file uses (pages in use, not free pages).
pub(super) fn used_bytes(c: &Connection) -> Result<u64, StoreError> {
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(((pages - free).max(0) * size) as u64)
}

pub(super) fn command_received(
    c: &Connection,
    id: Option<&str>,
    kind: Option<&str>,
    body: &str,
    at: DateTime<Utc>,
) -> Result<Intake, StoreError> {
    if let Some(id) = id {
        if let Some(result) = c
            .prepare_cached("SELECT result FROM commands WHERE id = ?1")?
            .query_row(params![id], |r| r.get::<_, Option<String>>(0))
            .optional()?
        {
            return Ok(Intake::Repeat {
                key: id.to_string(),
                result,
            });
        }
    }
    c.prepare_cached(
        "INSERT INTO commands (id, type, body, received_at, state) VALUES (?1, ?2, ?3, ?4, 'received')",
    )?
    .execute(params![id.unwrap_or("~pending"), kind, body, fmt_ts(at)])?;
    let key = match id {
        Some(id) => id.to_string(),
        None => {
            // No readable id: a key of our own, so the answer is still stored and sent.
            let key = format!("~no-id-{}", c.last_insert_rowid());
            c.execute(
                "UPDATE commands SET id = ?1 WHERE rowid = ?2",
                params![key, c.last_insert_rowid()],
            )?;
            key
        }
    };
    Ok(Intake::New { key })
}

pub(super) fn command_done(
    c: &Connection,
    key: &str,
    result: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE commands SET state = 'done', result = ?2, done_at = ?3 WHERE id = ?1",
    )?
    .execute(params![key, result, fmt_ts(at)])?;
    Ok(())
}

pub(super) fn result_published(
    c: &Connection,
    key: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE commands SET published_at = ?2 WHERE id = ?1 AND published_at IS NULL",
    )?
    .execute(params![key, fmt_ts(at)])?;
    Ok(())
}

pub(super) fn unpublished_results(
    c: &Connection,
    limit: usize,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = c
        .prepare_cached(
            "SELECT id, result FROM commands WHERE state = 'done' AND published_at IS NULL
             ORDER BY rowid LIMIT ?1",
        )?
        .query_map(params![limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Commands whose execution a crash interrupted are never run twice: they are closed
/// with an `interrupted` error, which the BPP receives like any result.
pub(super) fn close_interrupted_commands(
    c: &Connection,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let ids: Vec<String> = c
        .prepare("SELECT id FROM commands WHERE state = 'received'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &ids {
        let wire_id = if id.starts_with('~') {
            Value::Null
        } else {
            Value::from(id.as_str())
        };
        let result = json!({"id": wire_id, "ok": false, "error": {"code": "interrupted",
            "message": "the agent restarted while executing this command; it was not retried"}});
        command_done(c, id, &result.to_string(), now)?;
    }
    Ok(ids.len())
}

pub(super) fn connectors(
    c: &Connection,
    cp_id: Option<&str>,
) -> Result<Vec<ConnectorRow>, StoreError> {
    let sql = "SELECT k.cp_id, k.connector_id, k.status, k.error_code, coalesce(ch.online, 0), k.received_at
               FROM connectors k LEFT JOIN chargers ch ON ch.cp_id = k.cp_id
               WHERE ?1 IS NULL OR k.cp_id = ?1 ORDER BY k.cp_id, k.connector_id";
    let rows = c
        .prepare_cached(sql)?
        .query_map(params![cp_id], |r| {
            Ok(ConnectorRow {
                cp_id: r.get(0)?,
                connector_id: r.get(1)?,
                status: r.get(2)?,
                error_code: r.get(3)?,
                charger_online: r.get::<_, i64>(4)? != 0,
                at: r.get(5)?,
                evse_connectors: Vec::new(),
            })
        })?
        .collect::<Result<Vec<ConnectorRow>, _>>()?;
    let mut rows = rows;
    for row in &mut rows {
        if let Ok(evse) = u32::try_from(row.connector_id) {
            row.evse_connectors = super::device::evse_connectors(c, &row.cp_id, evse)?;
        }
    }
    Ok(rows)
}

pub(super) fn find_session(
    c: &Connection,
    session_id: Option<&str>,
    order_id: Option<&str>,
) -> Result<Option<SessionRef>, StoreError> {
    type Raw = (
        String,
        String,
        u32,
        i32,
        Option<String>,
        String,
        Option<String>,
    );
    let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Raw> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    };
    let typed = |raw: Option<Raw>| -> Result<Option<SessionRef>, StoreError> {
        let Some((session_id, cp_id, connector_id, transaction_id, charger_tx_id, state, order_id)) =
            raw
        else {
            return Ok(None);
        };
        let state = State::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("session {session_id}: state {state:?}")))?;
        Ok(Some(SessionRef {
            session_id,
            cp_id,
            connector_id,
            transaction_id,
            charger_tx_id,
            state,
            order_id,
        }))
    };
    const COLS: &str =
        "session_id, cp_id, connector_id, transaction_id, charger_tx_id, state, order_id";
    if let Some(sid) = session_id {
        return typed(
            c.prepare_cached(&format!(
                "SELECT {COLS} FROM sessions WHERE session_id = ?1"
            ))?
            .query_row(params![sid], map)
            .optional()?,
        );
    }
    if let Some(oid) = order_id {
        // the running session of that order, else its latest
        return typed(
            c.prepare_cached(&format!(
                "SELECT {COLS} FROM sessions WHERE order_id = ?1
                 ORDER BY state = 'active' DESC, transaction_id DESC LIMIT 1"
            ))?
            .query_row(params![oid], map)
            .optional()?,
        );
    }
    Ok(None)
}

/// The 2.0.1 transactions of charger `cp_id` that the store holds open, oldest first.
pub(super) fn open_transactions(
    c: &Connection,
    cp_id: &str,
) -> Result<Vec<OpenTransaction>, StoreError> {
    let rows = c
        .prepare_cached(
            "SELECT session_id, charger_tx_id FROM sessions
             WHERE cp_id = ?1 AND state = 'active' AND charger_tx_id IS NOT NULL
             ORDER BY transaction_id",
        )?
        .query_map(params![cp_id], |r| {
            Ok(OpenTransaction {
                session_id: r.get(0)?,
                charger_tx_id: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{connect, schema};

    #[test]
    fn pubacked_ranges_merge_into_few_updates() {
        assert_eq!(
            merge_ranges(vec![(5, 9), (1, 4), (12, 20), (10, 11)]),
            vec![(1, 20)]
        );
        assert_eq!(merge_ranges(vec![(1, 3), (7, 8)]), vec![(1, 3), (7, 8)]);
        assert_eq!(merge_ranges(vec![]), vec![]);
    }

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = connect(&dir.path().join("t.db")).unwrap();
        schema::migrate(&mut c).unwrap();
        (dir, c)
    }

    fn add(c: &Connection, kind: &str, sent: bool, pad: usize) {
        c.execute(
            "INSERT INTO events (type, at, body, billable, sent_at) VALUES (?1, 'x', ?2, 1, ?3)",
            params![
                kind,
                json!({"pad": "p".repeat(pad)}).to_string(),
                sent.then_some("2026-01-01T00:00:00.000Z")
            ],
        )
        .unwrap();
    }

    fn count(c: &Connection, sql: &str) -> i64 {
        c.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn acked_and_expired_events_go_but_unsent_ones_stay() {
        let (_d, c) = db();
        for _ in 0..3 {
            add(&c, "session.meter", true, 10);
        }
        add(&c, "session.meter", false, 10);
        ack(&c, 1).unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        // retention of an hour: only the acked one goes
        assert_eq!(prune(&c, now, 3600, None).unwrap(), 1);
        // retention of a minute: the sent ones go, the unsent one stays
        assert_eq!(prune(&c, now, 60, None).unwrap(), 2);
        assert_eq!(count(&c, "SELECT count(*) FROM events"), 1);
        assert_eq!(last_seq(&c).unwrap(), 4, "seqs are never reused");
    }

    #[test]
    fn the_quota_drops_sent_first_then_thins_meter_samples_and_never_billing_events() {
        let (_d, c) = db();
        for _ in 0..200 {
            add(&c, "session.meter", true, 2000);
        }
        add(&c, "session.started", false, 2000);
        for _ in 0..400 {
            add(&c, "session.meter", false, 2000);
        }
        add(&c, "session.stopped", false, 2000);
        let now = crate::time::now();
        let before = used_bytes(&c).unwrap();
        let quota = before / 3;
        let dropped = prune(&c, now, i64::MAX / 4, Some(quota)).unwrap();
        assert!(dropped > 200, "{dropped}");
        assert_eq!(
            count(&c, "SELECT count(*) FROM events WHERE sent_at IS NOT NULL"),
            0,
            "sent ones went first"
        );
        assert_eq!(
            count(
                &c,
                "SELECT count(*) FROM events WHERE type IN ('session.started','session.stopped')"
            ),
            2
        );
        let left = count(
            &c,
            "SELECT count(*) FROM events WHERE type = 'session.meter'",
        );
        assert!(left > 0 && left < 400, "thinned, not emptied: {left}");
        let gaps = count(&c, "SELECT count(*) FROM events WHERE type = 'events.gap'");
        assert!(gaps >= 1, "the thinning is reported");
        let gap: String = c
            .query_row(
                "SELECT body FROM events WHERE type = 'events.gap' LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(gap.contains("storage_quota"));
    }
}
