//! Reservations (`reservation.upsert`, `reservation.cancel`, ReserveNow's answer, the
//! expiry) and the events that report them. Each op loads the rows, asks
//! [`crate::reservation`]'s rules and writes what they decided with its event, in one
//! transaction.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{from_ms, insert_event, ms, Ctx, StoreError};
use crate::auth::Presented;
use crate::billing::{reservation_cost, Tariff};
use crate::events::Event;
use crate::reservation::{self as rules, Release, Reservation, Stage, UpsertError};
use crate::time::fmt_ts;

/// `reservation.upsert`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReservation {
    /// Order.
    pub order_id: String,
    /// Charger.
    pub cp_id: String,
    /// Connector (2.0.1: EVSE).
    pub connector_id: u32,
    /// Held from.
    pub start: DateTime<Utc>,
    /// The slot's end.
    pub end: Option<DateTime<Utc>>,
    /// Grace period, minutes.
    pub grace_minutes: i64,
}

const COLUMNS: &str =
    "reservation_id, order_id, cp_id, connector_id, start_ms, end_ms, expires_ms, stage, reason";

fn row(r: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

type Raw = (
    i64,
    String,
    String,
    u32,
    i64,
    Option<i64>,
    i64,
    String,
    Option<String>,
);

fn build(raw: Raw) -> Result<Reservation, StoreError> {
    let (id, order_id, cp_id, connector_id, start, end, expires, stage, reason) = raw;
    let what = || format!("reservation {id}");
    let stage = match (stage.as_str(), reason.as_deref().and_then(Release::parse)) {
        ("scheduled", _) => Stage::Scheduled,
        ("held", _) => Stage::Held,
        ("released", Some(r)) => Stage::Released(r),
        _ => return Err(StoreError::Corrupt(format!("{}: stage {stage:?}", what()))),
    };
    Ok(Reservation {
        id,
        order_id,
        cp_id,
        connector_id,
        start: from_ms(start, what)?,
        end: end.map(|e| from_ms(e, what)).transpose()?,
        expires_at: from_ms(expires, what)?,
        stage,
    })
}

fn select(
    c: &Connection,
    filter: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<Reservation>, StoreError> {
    let raws: Vec<Raw> = c
        .prepare_cached(&format!("SELECT {COLUMNS} FROM reservations {filter}"))?
        .query_map(p, row)?
        .collect::<Result<_, _>>()?;
    raws.into_iter().map(build).collect()
}

/// Every reservation not yet released.
pub(super) fn live(c: &Connection) -> Result<Vec<Reservation>, StoreError> {
    select(c, "WHERE stage != 'released' ORDER BY reservation_id", [])
}

fn by_order(c: &Connection, order_id: &str) -> Result<Option<Reservation>, StoreError> {
    Ok(select(c, "WHERE order_id = ?1", params![order_id])?.pop())
}

fn by_id(c: &Connection, id: i64) -> Result<Option<Reservation>, StoreError> {
    Ok(select(c, "WHERE reservation_id = ?1", params![id])?.pop())
}

/// `reservation.upsert`: stores it (a new one, or the order's own with new times, which
/// the charger then gets again); refused when the rules say so.
pub(super) fn upsert(
    c: &Connection,
    n: &NewReservation,
    now: DateTime<Utc>,
) -> Result<Result<Reservation, UpsertError>, StoreError> {
    let expires_at = match rules::expiry(n.start, n.end, n.grace_minutes, now) {
        Ok(e) => e,
        Err(e) => return Ok(Err(e)),
    };
    let own = by_order(c, &n.order_id)?;
    let new = Reservation {
        id: own.as_ref().map_or(0, |o| o.id),
        order_id: n.order_id.clone(),
        cp_id: n.cp_id.clone(),
        connector_id: n.connector_id,
        start: n.start,
        end: n.end,
        expires_at,
        stage: Stage::Scheduled,
    };
    if let Err(e) = rules::check_upsert(&new, own.as_ref(), &live(c)?) {
        return Ok(Err(e));
    }
    c.prepare_cached(
        "INSERT INTO reservations (order_id, cp_id, connector_id, start_ms, end_ms, expires_ms,
            stage, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'scheduled', ?7)
         ON CONFLICT (order_id) DO UPDATE SET start_ms = ?4, end_ms = ?5, expires_ms = ?6,
            stage = 'scheduled', updated_at = ?7",
    )?
    .execute(params![
        n.order_id,
        n.cp_id,
        n.connector_id,
        ms(n.start),
        n.end.map(ms),
        ms(expires_at),
        fmt_ts(now)
    ])?;
    let stored = by_order(c, &n.order_id)?
        .ok_or_else(|| StoreError::Corrupt("a reservation just stored is not there".into()))?;
    Ok(Ok(stored))
}

/// The charger accepted ReserveNow: `reservation.held`, the first time.
pub(super) fn held(c: &Connection, id: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let Some(r) = by_id(c, id)? else {
        return Ok(false);
    };
    if r.stage != Stage::Scheduled {
        return Ok(false);
    }
    c.execute(
        "UPDATE reservations SET stage = 'held', updated_at = ?2 WHERE reservation_id = ?1",
        params![id, fmt_ts(now)],
    )?;
    insert_event(
        c,
        now,
        &Event::ReservationHeld {
            order_id: r.order_id,
            cp_id: r.cp_id,
            connector_id: r.connector_id,
            reservation_id: r.id,
            expires_at: fmt_ts(r.expires_at),
        },
    )?;
    Ok(true)
}

/// Ends a live reservation for `why` with its `reservation.released` (and the fee the
/// order's tariff names for a no-show or a cancellation); false when it was not live.
pub(super) fn release(
    c: &Connection,
    r: &Reservation,
    why: Release,
    charger_status: Option<String>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    if matches!(r.stage, Stage::Released(_)) {
        return Ok(false);
    }
    c.execute(
        "UPDATE reservations SET stage = 'released', reason = ?2, updated_at = ?3
         WHERE reservation_id = ?1",
        params![r.id, why.as_str(), fmt_ts(now)],
    )?;
    let cost = match why {
        Release::NoShow | Release::Cancelled => fee(c, &r.order_id, why == Release::NoShow)?,
        Release::Used | Release::ChargerRefused => None,
    };
    insert_event(
        c,
        now,
        &Event::ReservationReleased {
            order_id: r.order_id.clone(),
            cp_id: r.cp_id.clone(),
            connector_id: r.connector_id,
            reservation_id: r.id,
            expires_at: fmt_ts(r.expires_at),
            reason: why.as_str(),
            cost,
            charger_status,
        },
    )?;
    Ok(true)
}

/// The fee the order's tariff (`authorization.upsert`'s) names; none without a tariff.
fn fee(
    c: &Connection,
    order_id: &str,
    no_show: bool,
) -> Result<Option<crate::billing::Cost>, StoreError> {
    let tariff: Option<String> = c
        .query_row(
            "SELECT tariff FROM authorizations WHERE order_id = ?1",
            params![order_id],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let Some(text) = tariff else { return Ok(None) };
    let parsed = serde_json::from_str(&text)
        .map_err(|e| e.to_string())
        .and_then(|v| Tariff::from_json(&v).map_err(|e| e.to_string()));
    match parsed {
        Ok(t) => Ok(reservation_cost(&t, no_show)),
        Err(e) => {
            tracing::error!(
                order_id,
                "the order's tariff cannot be read ({e}); its reservation fee is not billed"
            );
            Ok(None)
        }
    }
}

/// `reservation.cancel`: the order's live reservation, released `cancelled`; `None` when
/// it has none.
pub(super) fn cancel(
    c: &Connection,
    order_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<Reservation>, StoreError> {
    match by_order(c, order_id)? {
        Some(r) if release(c, &r, Release::Cancelled, None, now)? => Ok(Some(r)),
        _ => Ok(None),
    }
}

/// ReserveNow refused by the charger (`status`): released `charger_refused`.
pub(super) fn refused(
    c: &Connection,
    id: i64,
    status: String,
    now: DateTime<Utc>,
) -> Result<Option<Reservation>, StoreError> {
    match by_id(c, id)? {
        Some(r) if release(c, &r, Release::ChargerRefused, Some(status), now)? => Ok(Some(r)),
        _ => Ok(None),
    }
}

/// The grace is over and nobody came: released `no_show` (the caller then cancels it at
/// the charger); `None` when it is not due or not live.
pub(super) fn expire(
    c: &Connection,
    id: i64,
    now: DateTime<Utc>,
) -> Result<Option<Reservation>, StoreError> {
    match by_id(c, id)? {
        Some(r) if now >= r.expires_at && release(c, &r, Release::NoShow, None, now)? => {
            Ok(Some(r))
        }
        _ => Ok(None),
    }
}

/// The reservation holding connector `connector_id` of `cp_id` at `now`, if any.
pub(super) fn holding(
    c: &Connection,
    cp_id: &str,
    connector_id: u32,
    now: DateTime<Utc>,
) -> Result<Option<Reservation>, StoreError> {
    Ok(select(
        c,
        "WHERE cp_id = ?1 AND connector_id = ?2 AND stage != 'released'",
        params![cp_id, connector_id],
    )?
    .into_iter()
    .find(|r| r.holds(now)))
}

/// The reservation of `order_id` holding its connector at `now`, if any.
pub(super) fn of_order(
    c: &Connection,
    order_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<Reservation>, StoreError> {
    Ok(by_order(c, order_id)?.filter(|r| r.holds(now)))
}

/// Whether `presented` is the reservation's own driver: the OTP of its order, or the tag
/// of a `session.start` for its order. Nothing is consumed or counted.
pub(super) fn is_own(
    c: &Connection,
    _ctx: &Ctx,
    r: &Reservation,
    presented: &Presented,
) -> Result<bool, StoreError> {
    if let Some(h) = presented.otp_hash {
        let stored: Option<Vec<u8>> = c
            .query_row(
                "SELECT otp_hash FROM authorizations WHERE order_id = ?1 AND revoked = 0",
                params![r.order_id],
                |row| row.get(0),
            )
            .optional()?;
        if stored.is_some_and(|s| crate::auth::ct_eq_bytes(&s, &h)) {
            return Ok(true);
        }
    }
    let remote: Option<String> = c
        .query_row(
            "SELECT order_id FROM remote_starts WHERE tag = ?1 AND cp_id = ?2",
            params![presented.tag_key, r.cp_id],
            |row| row.get(0),
        )
        .optional()?;
    Ok(remote.as_deref() == Some(r.order_id.as_str()))
}

/// A start on connector `connector_id` of `cp_id` judged against the reservation holding
/// it: `None` when none does; else the reservation and whether `presented` is its own
/// driver (no one else may start there).
pub(super) fn admission(
    c: &Connection,
    ctx: &Ctx,
    cp_id: &str,
    connector_id: u32,
    presented: &Presented,
    now: DateTime<Utc>,
) -> Result<Option<(Reservation, bool)>, StoreError> {
    let Some(r) = holding(c, cp_id, connector_id, now)? else {
        return Ok(None);
    };
    let own = is_own(c, ctx, &r, presented)?;
    let decided = rules::admit(Some(&r), own.then_some(r.order_id.as_str()), false);
    if let rules::Admission::Refused(id) = decided {
        tracing::info!(cp_id, connector_id, reservation_id = id, order_id = %r.order_id,
            "start refused: the connector is reserved for another order");
    }
    Ok(Some((r, own)))
}

/// The decision for a driver refused at a connector reserved for another order: the
/// credential is not checked at all (nothing is consumed, and no guess is counted).
pub(super) fn refused_decision(presented: &Presented) -> crate::auth::AuthDecision {
    crate::auth::AuthDecision {
        method: if presented.otp_hash.is_some() {
            crate::auth::AuthMethod::Otp
        } else {
            crate::auth::AuthMethod::Rfid
        },
        result: crate::auth::AuthResult::Invalid,
        order_id: None,
        tag_key: presented.tag_key.clone(),
        offline_counter: None,
        unverified: false,
    }
}
