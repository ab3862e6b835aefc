//! What the site power limit needs of the store: the running sessions it shares the limit
//! among, the lowered limit `site.power_limit` set (kept across restarts), and the
//! `site.power` event.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{insert_event, StoreError};
use crate::events::Event;
use crate::power::Lowered;

/// A session the charger still runs, as the allocator needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningSession {
    /// Session.
    pub session_id: String,
    /// Charger.
    pub cp_id: String,
    /// Connector (2.0.1: EVSE).
    pub connector_id: u32,
    /// The store's transaction id (what a 1.6 charger calls the transaction).
    pub transaction_id: i32,
    /// A 2.0.1 charger's own transaction id.
    pub charger_tx_id: Option<String>,
    /// When the site received its start (the admission order; the site's clock, not the
    /// charger's).
    pub since: DateTime<Utc>,
}

pub(super) fn running(c: &Connection) -> Result<Vec<RunningSession>, StoreError> {
    let rows = c
        .prepare_cached(
            "SELECT session_id, cp_id, connector_id, transaction_id, charger_tx_id,
                    start_received_at
             FROM sessions WHERE state = 'active' AND auth_result = 'accepted'
             ORDER BY transaction_id",
        )?
        .query_map([], |r| {
            let since: String = r.get(5)?;
            Ok(RunningSession {
                session_id: r.get(0)?,
                cp_id: r.get(1)?,
                connector_id: r.get(2)?,
                transaction_id: r.get(3)?,
                charger_tx_id: r.get(4)?,
                since: DateTime::parse_from_rfc3339(&since)
                    .map_or(DateTime::<Utc>::UNIX_EPOCH, |t| t.with_timezone(&Utc)),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

const LIMIT_KEY: &str = "site_power_limit";

pub(super) fn lowered(c: &Connection) -> Result<Option<Lowered>, StoreError> {
    let v: Option<String> = c
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            params![LIMIT_KEY],
            |r| r.get(0),
        )
        .optional()?;
    let Some(v) = v else { return Ok(None) };
    let (w, until) = v.split_once(' ').unwrap_or((&v, ""));
    let Ok(max_w) = w.parse::<u32>() else {
        return Ok(None);
    };
    let until = DateTime::parse_from_rfc3339(until)
        .ok()
        .map(|t| t.with_timezone(&Utc));
    Ok(Some(Lowered { max_w, until }))
}

/// Keeps (or with `None` forgets) the lowered limit, and writes the event that reports
/// the allocation it leads to, when given, in the same transaction.
pub(super) fn set_lowered(c: &Connection, l: Option<Lowered>) -> Result<(), StoreError> {
    match l {
        None => {
            c.execute("DELETE FROM meta WHERE key = ?1", params![LIMIT_KEY])?;
        }
        Some(l) => {
            let until = l.until.map(crate::time::fmt_ts).unwrap_or_default();
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = ?2",
                params![LIMIT_KEY, format!("{} {until}", l.max_w)],
            )?;
        }
    }
    Ok(())
}

pub(super) fn site_power(c: &Connection, at: DateTime<Utc>, e: &Event) -> Result<(), StoreError> {
    insert_event(c, at, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{connect, schema};

    #[test]
    fn a_lowered_limit_survives_in_meta_and_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = connect(&dir.path().join("db")).unwrap();
        schema::migrate(&mut c).unwrap();
        assert_eq!(lowered(&c).unwrap(), None);
        let until = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        for l in [
            Lowered {
                max_w: 30_000,
                until: Some(until),
            },
            Lowered {
                max_w: 20_000,
                until: None,
            },
        ] {
            set_lowered(&c, Some(l)).unwrap();
            assert_eq!(lowered(&c).unwrap(), Some(l));
        }
        set_lowered(&c, None).unwrap();
        assert_eq!(lowered(&c).unwrap(), None);
    }
}
