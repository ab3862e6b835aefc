//! Sessions as stored: each op loads the session, asks the session core
//! ([`crate::session`]) what the facts mean, and writes what it decided together with the
//! upstream events, in one transaction. Runs on the store thread only.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::chargers::note_clock;
use super::orders;
use super::{from_ms, insert_event, insert_event_text, ms, Ctx, StoreError};
use crate::auth::{AuthResult, Origin, Presented};
use crate::billing::{Accrual, Budget, Tariff};
use crate::events::{self, Event, SessionStarted, SessionStopped, TxId};
use crate::reading::Sample;
use crate::session::{
    self, Billing, Flag, Flags, Register, RunningCost, Session, State, StopMatch,
};
use crate::time::{fmt_ts, ChargerTime};

/// A StartTransaction to record.
#[derive(Debug, Clone)]
pub struct StartTx {
    /// Charger.
    pub cp_id: String,
    /// Connector.
    pub connector_id: u32,
    /// The presented id tag.
    pub presented: Presented,
    /// `[auth] free_vend`.
    pub free_vend: bool,
    /// Where the charger's connection comes from (the OTP guessing limits).
    pub origin: Origin,
    /// `meterStart`, Wh.
    pub meter_start_wh: i64,
    /// `timestamp`.
    pub timestamp: ChargerTime,
    /// `reservationId`.
    pub reservation_id: Option<i32>,
    /// Whether the uplink was connected at start.
    pub uplink_online: bool,
    /// Site clock at receipt.
    pub received: DateTime<Utc>,
}

/// A session exists for this StartTransaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    /// The OCPP transaction id.
    pub transaction_id: i32,
    /// The site-issued session id.
    pub session_id: String,
    /// True when this was a replay of an already recorded start.
    pub replayed: bool,
    /// How the tag was judged (a refused start still gets its transaction id).
    pub result: AuthResult,
}

/// A StopTransaction to record.
#[derive(Debug, Clone)]
pub struct StopTx {
    /// Charger.
    pub cp_id: String,
    /// `transactionId`.
    pub transaction_id: i32,
    /// `meterStop`, Wh.
    pub meter_stop_wh: i64,
    /// `timestamp`.
    pub timestamp: ChargerTime,
    /// `reason`, absent meaning `Local`.
    pub reason: Option<String>,
    /// `transactionData`.
    pub transaction_data: Vec<Sample>,
    /// Site clock at receipt.
    pub received: DateTime<Utc>,
}

/// How a StopTransaction matched.
#[derive(Debug, Clone, PartialEq)]
pub enum StopOutcome {
    /// It ended a running session.
    Ended {
        /// Session id.
        session_id: String,
        /// Energy billed, Wh.
        energy_wh: i64,
    },
    /// The session had already stopped; recorded as a duplicate.
    Duplicate {
        /// Session id.
        session_id: String,
    },
    /// No session has this transaction id on this charger; recorded.
    Unknown,
}

/// MeterValues to record.
#[derive(Debug, Clone)]
pub struct MeterIn {
    /// Charger.
    pub cp_id: String,
    /// Connector.
    pub connector_id: u32,
    /// `transactionId`, if given.
    pub transaction_id: Option<i32>,
    /// The readings.
    pub samples: Vec<Sample>,
    /// Site clock at receipt.
    pub received: DateTime<Utc>,
}

/// MeterValues recorded; the session they were linked to.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterOutcome {
    /// Linked session, if any.
    pub session_id: Option<String>,
    /// The session's energy so far, Wh (running sessions only).
    pub energy_wh: Option<i64>,
    /// Running cost when a tariff applies.
    pub running: Option<RunningCost>,
    /// Set once, when the running cost first reaches the budget: the transaction the agent
    /// must now stop.
    pub budget_stop: Option<i32>,
}

pub(super) fn start(c: &Connection, ctx: &Ctx, s: StartTx) -> Result<Started, StoreError> {
    // A replay (the charger did not get our answer and sent the same start again) gets
    // the same transaction id, and nothing new is written.
    if let Some((transaction_id, session_id, result)) = c
        .prepare_cached(
            "SELECT transaction_id, session_id, auth_result FROM sessions
             WHERE cp_id = ?1 AND connector_id = ?2 AND id_tag = ?3 AND started_raw = ?4
               AND meter_start_wh = ?5",
        )?
        .query_row(
            params![
                s.cp_id,
                s.connector_id,
                s.presented.tag_key,
                s.timestamp.raw,
                s.meter_start_wh
            ],
            |r| {
                Ok((
                    r.get::<_, i32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?
    {
        let result = AuthResult::parse(&result).ok_or_else(|| {
            StoreError::Corrupt(format!("session {session_id}: auth_result {result:?}"))
        })?;
        return Ok(Started {
            transaction_id,
            session_id,
            replayed: true,
            result,
        });
    }
    let attempt = orders::Attempt {
        cp_id: &s.cp_id,
        origin: &s.origin,
        connector_id: Some(s.connector_id),
        presented: &s.presented,
        free_vend: s.free_vend,
        uplink_online: s.uplink_online,
        consume: true,
        now: s.received,
    };
    // A connector reserved for another order takes no one else.
    let reserved =
        super::reservations::admission(c, ctx, &s.cp_id, s.connector_id, &s.presented, s.received)?;
    let auth = match &reserved {
        Some((_, false)) => super::reservations::refused_decision(&s.presented),
        _ => orders::decide(c, ctx, &attempt)?,
    };
    orders::report(c, ctx, &attempt, &auth)?;
    if let (Some((r, true)), AuthResult::Accepted) = (&reserved, auth.result) {
        super::reservations::release(c, r, crate::reservation::Release::Used, None, s.received)?;
    }
    let terms = orders::terms_of(c, &auth)?;
    let previous_register_wh: Option<i64> = c
        .prepare_cached(
            "SELECT last_register_wh FROM sessions WHERE cp_id = ?1 AND connector_id = ?2
             ORDER BY transaction_id DESC LIMIT 1",
        )?
        .query_row(params![s.cp_id, s.connector_id], |r| r.get(0))
        .optional()?;
    let open_before: i64 = c
        .prepare_cached(
            "SELECT count(*) FROM sessions WHERE cp_id = ?1 AND connector_id = ?2 AND state = 'active'",
        )?
        .query_row(params![s.cp_id, s.connector_id], |r| r.get(0))?;
    let facts = session::StartFacts {
        meter_start_wh: s.meter_start_wh,
        timestamp: &s.timestamp,
        received: s.received,
        previous_register_wh,
        open_before: open_before > 0,
    };
    let mut flags = session::start_flags(&facts, &ctx.limits);
    if auth.unverified {
        flags.insert(crate::session::Flag::UnknownTag);
    }
    let clock = session::clock(&s.timestamp, s.received, &ctx.limits);
    note_clock(c, &s.cp_id, clock, s.received)?;
    let skew = (s.received - s.timestamp.at).num_seconds();
    let started_at = fmt_ts(s.timestamp.at);
    // The session id embeds the transaction id, which only the INSERT assigns: insert
    // with a placeholder and fix it up in the same transaction.
    c.prepare_cached(
        "INSERT INTO sessions (session_id, cp_id, connector_id, id_tag, auth_method, auth_result,
            order_id, reservation_id, meter_start_wh, started_raw, started_at, start_received_at,
            uplink_online, state, last_register_wh, last_reading_ms, last_received_ms, flags,
            clock_skew_secs, tariff, budget_currency, budget_minor, prepaid, accrual, offline_counter)
         VALUES ('pending-' || ?9 || '-' || ?10, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,
            'active', ?8, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
    )?
    .execute(params![
        s.cp_id,
        s.connector_id,
        auth.tag_key,
        auth.method.as_str(),
        auth.result.as_str(),
        auth.order_id,
        s.reservation_id,
        s.meter_start_wh,
        s.timestamp.raw,
        started_at,
        fmt_ts(s.received),
        s.uplink_online,
        ms(s.timestamp.at),
        ms(s.received),
        flags.to_stored(),
        skew,
        terms.tariff,
        terms.budget.as_ref().map(|b| b.currency.clone()),
        terms.budget.as_ref().map(|b| b.amount_minor),
        terms.budget.as_ref().map(|b| b.prepaid),
        terms.tariff.as_ref().map(|_| "{}"),
        auth.offline_counter.and_then(|n| i64::try_from(n).ok())
    ])?;
    let tx_id = c.last_insert_rowid();
    let transaction_id = i32::try_from(tx_id)
        .map_err(|_| StoreError::Sqlite(rusqlite::Error::IntegralValueOutOfRange(0, tx_id)))?;
    let session_id = format!("{}-{}-{}", ctx.site_id, ctx.instance, transaction_id);
    c.prepare_cached("UPDATE sessions SET session_id = ?1 WHERE transaction_id = ?2")?
        .execute(params![session_id, tx_id])?;
    let body = SessionStarted {
        session_id: session_id.clone(),
        cp_id: s.cp_id.clone(),
        connector_id: s.connector_id,
        evse_id: None,
        transaction_id: TxId::V16(transaction_id),
        order_id: auth.order_id.clone(),
        auth_method: auth.method.as_str(),
        auth_result: auth.result.as_str(),
        meter_start_wh: s.meter_start_wh,
        started_at,
        uplink_online: s.uplink_online,
        flags: flags.names(),
        offline_counter: auth.offline_counter,
    };
    insert_event(c, s.received, &Event::SessionStarted(Box::new(body)))?;
    Ok(Started {
        transaction_id,
        session_id,
        replayed: false,
        result: auth.result,
    })
}

/// The stored pricing of a session; a tariff or accrual this build cannot read is logged
/// and flagged on the session (it is then metered, not priced), never reset to zero.
fn load_billing(
    session_id: &str,
    tariff: Option<String>,
    accrual: Option<String>,
    budget: Option<Budget>,
    budget_stop: bool,
    flags: &mut Flags,
) -> Option<Billing> {
    let tariff = tariff?;
    let parsed = serde_json::from_str::<Value>(&tariff)
        .map_err(|e| e.to_string())
        .and_then(|v| Tariff::from_json(&v).map_err(|e| e.to_string()))
        .and_then(|t| {
            let accrual = match accrual.as_deref() {
                None => Accrual::default(),
                Some(a) => serde_json::from_str(a).map_err(|e| format!("accrual: {e}"))?,
            };
            Ok((t, accrual))
        });
    match parsed {
        Ok((tariff, accrual)) => Some(Billing {
            tariff,
            accrual,
            budget,
            budget_stop,
        }),
        Err(e) => {
            tracing::error!(
                session = session_id,
                "stored pricing unreadable, session is metered but not priced: {e}"
            );
            flags.insert(Flag::BillingUnreadable);
            None
        }
    }
}

/// A stored session and its connector.
pub(super) struct Loaded {
    pub(super) session: Session,
    pub(super) connector_id: u32,
}

/// What only the stop's bill needs: read then, not on every reading.
pub(super) fn stop_details(
    c: &Connection,
    transaction_id: i64,
) -> Result<(i64, String, Option<String>), StoreError> {
    Ok(c.prepare_cached(
        "SELECT meter_start_wh, started_at, order_id FROM sessions WHERE transaction_id = ?1",
    )?
    .query_row(params![transaction_id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?)
}

/// A session row as read, before it is checked.
type RawSession = (
    (i64, String, String, i64, i64, i64, i64, String),
    (Option<String>, Option<String>, Option<String>, Option<i64>),
    (Option<bool>, bool, u32),
);

/// The session columns every read of a session takes, in [`raw_session`]'s order.
macro_rules! session_cols {
    () => {
        "transaction_id, session_id, state, last_register_wh, last_reading_ms,
         last_received_ms, energy_wh, flags, tariff, accrual, budget_currency,
         budget_minor, prepaid, budget_stop, connector_id"
    };
}

/// Reads the [`session_cols`] at the start of a row.
fn raw_session(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawSession> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ),
        (r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?),
        (r.get(12)?, r.get(13)?, r.get(14)?),
    ))
}

/// A charger's session by its transaction id, else the active one on a connector.
pub(super) fn load_session(
    c: &Connection,
    cp_id: &str,
    connector_id: Option<u32>,
    transaction_id: Option<i32>,
) -> Result<Option<Loaded>, StoreError> {
    let raw = match (transaction_id, connector_id) {
        (Some(tx), _) => c
            .prepare_cached(concat!(
                "SELECT ",
                session_cols!(),
                " FROM sessions WHERE transaction_id = ?1 AND cp_id = ?2"
            ))?
            .query_row(params![tx, cp_id], raw_session)
            .optional()?,
        (None, Some(conn)) => c
            .prepare_cached(concat!(
                "SELECT ",
                session_cols!(),
                " FROM sessions WHERE cp_id = ?1 AND connector_id = ?2
                 AND state = 'active' ORDER BY transaction_id DESC LIMIT 1"
            ))?
            .query_row(params![cp_id, conn], raw_session)
            .optional()?,
        (None, None) => None,
    };
    raw.map(checked_session).transpose()
}

/// The 2.0.1 columns of a session.
pub(super) struct V201Cols {
    /// Every `seqNo` from 0 to this one has been applied (`None`: not even 0).
    pub(super) seq_high: Option<i64>,
    pub(super) announced: bool,
    pub(super) auth_result: String,
    pub(super) tag_key: String,
}

/// The session holding a charger's 2.0.1 transaction, with its 2.0.1 columns: one
/// indexed read.
pub(super) fn load_charger_tx(
    c: &Connection,
    cp_id: &str,
    charger_tx_id: &str,
) -> Result<Option<(Loaded, V201Cols)>, StoreError> {
    let row = c
        .prepare_cached(concat!(
            "SELECT ",
            session_cols!(),
            ", last_seq_no, announced, auth_result, id_tag
             FROM sessions WHERE cp_id = ?1 AND charger_tx_id = ?2"
        ))?
        .query_row(params![cp_id, charger_tx_id], |r| {
            Ok((
                raw_session(r)?,
                V201Cols {
                    seq_high: r.get(15)?,
                    announced: r.get(16)?,
                    auth_result: r.get(17)?,
                    tag_key: r.get(18)?,
                },
            ))
        })
        .optional()?;
    row.map(|(raw, cols)| Ok((checked_session(raw)?, cols)))
        .transpose()
}

/// A session row read back into a [`Session`], its stored values checked.
fn checked_session(raw: RawSession) -> Result<Loaded, StoreError> {
    let (
        (transaction_id, session_id, state, last_wh, last_ms, received_ms, energy_wh, flags),
        (tariff, accrual, budget_currency, budget_minor),
        (prepaid, budget_stop, connector_id),
    ) = raw;
    let corrupt = |what: &str| StoreError::Corrupt(format!("session {session_id}: {what}"));
    let state = State::parse(&state).ok_or_else(|| corrupt(&format!("state {state:?}")))?;
    let mut flags =
        Flags::from_stored(&flags).map_err(|name| corrupt(&format!("flag {name:?}")))?;
    let register = Register {
        last_wh,
        last_at: from_ms(last_ms, || format!("session {session_id} last_reading_ms"))?,
        last_received: from_ms(received_ms, || {
            format!("session {session_id} last_received_ms")
        })?,
        energy_wh,
    };
    let budget = match (budget_currency, budget_minor) {
        (Some(currency), Some(amount_minor)) => Some(Budget {
            currency,
            amount_minor,
            prepaid: prepaid.unwrap_or(true),
        }),
        _ => None,
    };
    let billing = load_billing(
        &session_id,
        tariff,
        accrual,
        budget,
        budget_stop,
        &mut flags,
    );
    Ok(Loaded {
        session: Session {
            transaction_id,
            session_id,
            state,
            register,
            flags,
            billing,
        },
        connector_id,
    })
}

/// Readings to store, from one message.
pub(super) struct Readings<'a> {
    pub(super) cp_id: &'a str,
    pub(super) connector_id: u32,
    pub(super) transaction_id: Option<i64>,
    pub(super) samples: &'a [Sample],
    /// The flags the session core put on each reading.
    pub(super) flags: &'a [Flags],
    /// `MeterValues`, `StopTransaction` or `TransactionEvent`.
    pub(super) source: &'static str,
    pub(super) received: DateTime<Utc>,
}

/// Stores the readings as received (raw and parsed, with their flags).
pub(super) fn store_readings(c: &Connection, r: &Readings<'_>) -> Result<(), StoreError> {
    let received = fmt_ts(r.received);
    let mut insert = c.prepare_cached(
        "INSERT INTO meter_values (cp_id, connector_id, transaction_id, source, charger_ts_raw,
            charger_ts, received_at, context, energy_wh, power_w, current_a, voltage_v, soc_pct,
            flags, raw)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    for (sample, flags) in r.samples.iter().zip(r.flags) {
        insert.execute(params![
            r.cp_id,
            r.connector_id,
            r.transaction_id,
            r.source,
            sample.at.raw,
            fmt_ts(sample.at.at),
            received,
            sample.context,
            sample.energy_wh,
            sample.power_w,
            sample.current_a,
            sample.voltage_v,
            sample.soc_pct,
            flags.to_stored(),
            sample.raw
        ])?;
    }
    Ok(())
}

/// `session.meter` events for the samples (each already serialized, see
/// [`Sample::event`]).
pub(super) fn meter_events(
    c: &Connection,
    session_id: &str,
    at: DateTime<Utc>,
    samples: &[Sample],
) -> Result<(), StoreError> {
    let bodies: Vec<&str> = samples.iter().map(|s| s.event.as_str()).collect();
    for body in events::meter_bodies(session_id, &bodies) {
        insert_event_text(c, events::SESSION_METER, at, &body)?;
    }
    Ok(())
}

/// Writes back what the session core changed on a running session (the register, flags,
/// accrual, budget stop; its state changes only at the stop, whose own UPDATE writes it:
/// `state` is indexed, and rewriting an index entry on every reading costs pages). A
/// pricing this build could not read is left as stored (`coalesce`), so a later build can
/// still bill it.
pub(super) fn save_session(
    c: &Connection,
    s: &Session,
    seq_high: Option<i64>,
) -> Result<(), StoreError> {
    let accrual = match &s.billing {
        Some(b) => Some(serde_json::to_string(&b.accrual)?),
        None => None,
    };
    // `last_seq_no` (2.0.1's contiguous seqNo mark) in the same statement: one UPDATE per
    // reading, not two. `None` keeps it: readings outside the events (2.0.1 MeterValues,
    // or any 1.6 message) never reset it.
    c.prepare_cached(
        "UPDATE sessions SET last_register_wh = ?2, last_reading_ms = ?3, last_received_ms = ?4,
            energy_wh = ?5, flags = ?6, accrual = coalesce(?7, accrual), budget_stop = ?8,
            last_seq_no = coalesce(?9, last_seq_no)
         WHERE transaction_id = ?1",
    )?
    .execute(params![
        s.transaction_id,
        s.register.last_wh,
        ms(s.register.last_at),
        ms(s.register.last_received),
        s.register.energy_wh,
        s.flags.to_stored(),
        accrual,
        s.billing.as_ref().is_some_and(|b| b.budget_stop),
        seq_high
    ])?;
    Ok(())
}

pub(super) fn meter(c: &Connection, ctx: &Ctx, m: MeterIn) -> Result<MeterOutcome, StoreError> {
    let loaded = load_session(c, &m.cp_id, Some(m.connector_id), m.transaction_id)?;
    let Some(Loaded { mut session, .. }) = loaded else {
        let flags = session::orphan_flags(&m.samples);
        store_readings(
            c,
            &Readings {
                cp_id: &m.cp_id,
                connector_id: m.connector_id,
                transaction_id: None,
                samples: &m.samples,
                flags: &flags,
                source: "MeterValues",
                received: m.received,
            },
        )?;
        return Ok(MeterOutcome {
            session_id: None,
            energy_wh: None,
            running: None,
            budget_stop: None,
        });
    };
    let decided = session::meter(&mut session, &m.samples, m.received, false, &ctx.limits);
    store_readings(
        c,
        &Readings {
            cp_id: &m.cp_id,
            connector_id: m.connector_id,
            transaction_id: Some(session.transaction_id),
            samples: &m.samples,
            flags: &decided.row_flags,
            source: "MeterValues",
            received: m.received,
        },
    )?;
    let active = session.state == State::Active;
    if active {
        save_session(c, &session, None)?;
    }
    if decided.row_flags.iter().any(|f| *f != Flags::default()) {
        tracing::warn!(session = %session.session_id, flags = ?session.flags.names(), "energy register anomaly");
    }
    meter_events(c, &session.session_id, m.received, &m.samples)?;
    Ok(MeterOutcome {
        energy_wh: active.then_some(session.register.energy_wh),
        running: decided.running,
        budget_stop: decided
            .stop_for_budget
            .then(|| i32::try_from(session.transaction_id).ok())
            .flatten(),
        session_id: Some(session.session_id),
    })
}

pub(super) fn stop(c: &Connection, ctx: &Ctx, s: StopTx) -> Result<StopOutcome, StoreError> {
    let loaded = load_session(c, &s.cp_id, None, Some(s.transaction_id))?;
    let stopped_at = fmt_ts(s.timestamp.at);
    let reason = s.reason.clone().unwrap_or_else(|| "Local".to_string());
    match session::match_stop(loaded.as_ref().map(|l| l.session.state)) {
        StopMatch::Ends => {}
        matched => {
            // Unknown or already stopped: record it, answer normally, never make the
            // charger retry forever. A duplicate changes no bill; an unknown one is
            // reported upstream.
            let kind = if matched == StopMatch::Duplicate {
                "duplicate"
            } else {
                "unknown"
            };
            c.prepare_cached(
                "INSERT INTO unmatched_stops (cp_id, transaction_id, kind, meter_stop_wh, stopped_raw,
                    received_at, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                s.cp_id,
                s.transaction_id,
                kind,
                s.meter_stop_wh,
                s.timestamp.raw,
                fmt_ts(s.received),
                reason
            ])?;
            let flags = session::orphan_flags(&s.transaction_data);
            store_readings(
                c,
                &Readings {
                    cp_id: &s.cp_id,
                    connector_id: loaded.as_ref().map_or(0, |l| l.connector_id),
                    transaction_id: None,
                    samples: &s.transaction_data,
                    flags: &flags,
                    source: "StopTransaction",
                    received: s.received,
                },
            )?;
            return Ok(match loaded {
                Some(l) => StopOutcome::Duplicate {
                    session_id: l.session.session_id,
                },
                None => {
                    let e = Event::StopUnmatched {
                        cp_id: s.cp_id.clone(),
                        transaction_id: s.transaction_id,
                        meter_stop_wh: s.meter_stop_wh,
                        stopped_at,
                        reason,
                    };
                    insert_event(c, s.received, &e)?;
                    StopOutcome::Unknown
                }
            });
        }
    }
    let Some(Loaded {
        mut session,
        connector_id,
    }) = loaded
    else {
        return Ok(StopOutcome::Unknown);
    };
    let (meter_start_wh, started_at, order_id) = stop_details(c, session.transaction_id)?;
    let facts = session::StopFacts {
        meter_stop_wh: s.meter_stop_wh,
        timestamp: &s.timestamp,
        reason: s.reason.as_deref(),
        transaction_data: &s.transaction_data,
        received: s.received,
    };
    let closing = session::stop(&mut session, &facts, &ctx.limits);
    store_readings(
        c,
        &Readings {
            cp_id: &s.cp_id,
            connector_id,
            transaction_id: Some(session.transaction_id),
            samples: &s.transaction_data,
            flags: &closing.row_flags,
            source: "StopTransaction",
            received: s.received,
        },
    )?;
    meter_events(c, &session.session_id, s.received, &s.transaction_data)?;
    let clock = session::clock(&s.timestamp, s.received, &ctx.limits);
    note_clock(c, &s.cp_id, clock, s.received)?;
    if session.flags.contains(Flag::MeterBackwards) || session.flags.contains(Flag::MeterJump) {
        tracing::warn!(session = %session.session_id, flags = ?session.flags.names(), "energy register anomaly at stop");
    }
    save_session(c, &session, None)?;
    let cost_json = closing
        .cost
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    c.prepare_cached(
        "UPDATE sessions SET state = ?8, interrupted = 0, meter_stop_wh = ?2, stopped_raw = ?3,
            stopped_at = ?4, stop_received_at = ?5, stop_reason = ?6, cost = ?7 WHERE transaction_id = ?1",
    )?
    .execute(params![
        session.transaction_id,
        s.meter_stop_wh,
        s.timestamp.raw,
        stopped_at,
        fmt_ts(s.received),
        closing.reason,
        cost_json,
        session.state.as_str()
    ])?;
    let body = SessionStopped {
        session_id: session.session_id.clone(),
        cp_id: s.cp_id.clone(),
        connector_id,
        evse_id: None,
        transaction_id: TxId::V16(s.transaction_id),
        started_at,
        stopped_at,
        meter_start_wh,
        meter_stop_wh: s.meter_stop_wh,
        energy_wh: closing.energy_wh,
        reason: closing.reason,
        flags: session.flags.names(),
        order_id,
        cost: closing.cost,
        settlement: closing.settlement,
    };
    insert_event(c, s.received, &Event::SessionStopped(Box::new(body)))?;
    Ok(StopOutcome::Ended {
        session_id: session.session_id,
        energy_wh: closing.energy_wh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;

    #[test]
    fn auth_events_name_the_method_and_result_never_the_tag() {
        let d = crate::auth::AuthDecision {
            method: AuthMethod::Otp,
            result: AuthResult::Used,
            order_id: Some("o-1".into()),
            tag_key: "otp:abcd".into(),
            offline_counter: None,
            unverified: false,
        };
        let body = orders::auth_event("CP1", Some(2), &d, None).body();
        assert_eq!(
            body,
            r#"{"cp_id":"CP1","connector_id":2,"method":"otp","result":"used","order_id":"o-1"}"#
        );
    }
}
