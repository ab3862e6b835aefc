//! OCPP 2.0.1 transactions as stored: a TransactionEvent is a session's start, readings
//! or stop, decided by the same session core as 1.6 ([`crate::session`]) and written in
//! one transaction with its upstream events. Runs on the store thread only.
//!
//! The lessons from other central systems' trackers, as rules here:
//! - idempotent on (charger, `transactionId`, `seqNo`): a replayed event finds its row in
//!   `tx_events`, is answered as before, and changes nothing;
//! - `Ended` is final: a later event is recorded (`tx_events.applied = 0`, its readings
//!   flagged `after_ended`) and never applied;
//! - a skipped `seqNo` flags the session `seq_gap`; it is never refused;
//! - `offline: true` events are billed on the registers they carry, in timestamp order
//!   ([`session::meter`] with `replayed`), and never make a live snapshot;
//! - the EVSE is the first event's (later events need not carry it);
//! - a `Transaction.Begin` register of 0 where the EVSE's register was known higher is
//!   flagged `meter_start_zero`, and the jump that follows is never billed (the register
//!   core's rule, as on 1.6);
//! - a transaction that begins without an idToken (cable first) is authorized by the
//!   first event that carries one; its `session.started` waits for that (or for `Ended`),
//!   so the BPP never sees a session without its order.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::chargers::note_clock;
use super::orders;
use super::sessions::{
    load_charger_tx, load_session, meter_events, save_session, stop_details, store_readings,
    Loaded, Readings,
};
use super::{insert_event, ms, Ctx, StoreError};
use crate::auth::{AuthDecision, AuthResult, Presented};
use crate::billing::Cost;
use crate::events::{Event, SessionStarted, SessionStopped, TxId};
use crate::ocpp::v201::messages::{TxEvent, TxEventType};
use crate::session::{self, Flag, Flags, RunningCost, State};
use crate::time::fmt_ts;

/// A TransactionEvent to record.
#[derive(Debug, Clone)]
pub struct TxEventIn {
    /// Charger.
    pub cp_id: String,
    /// The event as decoded.
    pub event: Box<TxEvent>,
    /// Its idToken, prepared (keyed hash for a KeyCode OTP), if it carried one.
    pub presented: Option<Presented>,
    /// `[auth] free_vend`.
    pub free_vend: bool,
    /// Where the charger's connection comes from (the OTP guessing limits).
    pub origin: crate::auth::Origin,
    /// The contract's `reason` for an `Ended` (mapped from `stoppedReason`).
    pub reason: String,
    /// Whether the uplink was connected at receipt.
    pub uplink_online: bool,
    /// Site clock at receipt.
    pub received: DateTime<Utc>,
}

/// What a TransactionEvent did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TxEventOutcome {
    /// The session it belongs to.
    pub session_id: Option<String>,
    /// The EVSE of the transaction.
    pub evse_id: u32,
    /// How its idToken was judged, when it carried one (the response's `idTokenInfo`).
    pub id_token_status: Option<AuthResult>,
    /// The running (or, after `Ended`, final) cost when a tariff applies.
    pub cost: Option<RunningCost>,
    /// The session's energy so far, Wh.
    pub energy_wh: Option<i64>,
    /// This event ended the session.
    pub ended: bool,
    /// A replay of an event already recorded: nothing changed.
    pub replayed: bool,
    /// The event came after `Ended`: recorded, not applied.
    pub after_ended: bool,
    /// Set once, when the running cost first reaches the budget: stop the transaction.
    pub budget_stop: bool,
}

fn load(c: &Connection, cp_id: &str, key: i64) -> Result<Option<Loaded>, StoreError> {
    let key = i32::try_from(key)
        .map_err(|_| StoreError::Corrupt(format!("session key {key} out of range")))?;
    load_session(c, cp_id, None, Some(key))
}

/// What the 2.0.1 columns say about a session.
struct Extra {
    /// The store's key of the session.
    key: i64,
    /// Every `seqNo` from 0 to this one has been applied (`None`: not even 0).
    seq_high: Option<i64>,
    /// Whether the journal may hold events of this transaction out of order (see
    /// [`may_hold_out_of_order`]): only then is it searched.
    search_journal: bool,
    announced: bool,
    auth_result: String,
    tag_key: String,
}

/// Whether the journal's partial index may hold an event of this transaction: one came
/// out of order (then the session is flagged `seq_gap`: an event not yet seen is out of
/// order only when its `seqNo` is past the next one), or after `Ended`. A transaction in
/// order is answered from its `last_seq_no` alone, without a search.
fn may_hold_out_of_order(s: &session::Session) -> bool {
    s.state == State::Stopped || s.flags.contains(Flag::SeqGap)
}

/// The session holding a charger's 2.0.1 transaction, if any, with what its 2.0.1
/// columns say: one indexed read.
fn find(c: &Connection, cp_id: &str, tx: &str) -> Result<Option<(Loaded, Extra)>, StoreError> {
    Ok(load_charger_tx(c, cp_id, tx)?.map(|(loaded, cols)| {
        let x = Extra {
            key: loaded.session.transaction_id,
            seq_high: cols.seq_high,
            search_journal: may_hold_out_of_order(&loaded.session),
            announced: cols.announced,
            auth_result: cols.auth_result,
            tag_key: cols.tag_key,
        };
        (loaded, x)
    }))
}

/// Whether `seq` of this transaction was recorded already. Events in order only move the
/// session's contiguous high mark (no journal lookup, no index entry: the journal is an
/// append-only table, so a reading costs no page in the middle of a B-tree); an event out
/// of order, or after `Ended`, is recorded in the journal's small partial index, and found
/// there (searched only when the session says it may hold one, or for a negative `seqNo`,
/// which is never in order).
fn seen(c: &Connection, e: &TxEventIn, x: &Extra) -> Result<bool, StoreError> {
    let seq = e.event.seq_no;
    if seq >= 0 && x.seq_high.is_some_and(|h| seq <= h) {
        return Ok(true);
    }
    if seq >= 0 && !x.search_journal {
        return Ok(false);
    }
    Ok(c.prepare_cached(
        "SELECT 1 FROM tx_events WHERE cp_id = ?1 AND charger_tx_id = ?2 AND seq_no = ?3
             AND out_of_order = 1",
    )?
    .query_row(params![e.cp_id, e.event.transaction_id, seq], |_| Ok(()))
    .optional()?
    .is_some())
}

/// The contiguous high mark after applying `seq`: it moves only when `seq` is the next
/// one, and then over any later ones that had come out of order.
fn advance_high(c: &Connection, e: &TxEventIn, x: &Extra) -> Result<Option<i64>, StoreError> {
    let seq_high = x.seq_high;
    let next = seq_high.map_or(0, |h| h + 1);
    if e.event.seq_no != next {
        return Ok(seq_high);
    }
    let mut high = next;
    if !x.search_journal {
        return Ok(Some(high)); // nothing later came out of order
    }
    let mut probe = c.prepare_cached(
        "SELECT 1 FROM tx_events WHERE cp_id = ?1 AND charger_tx_id = ?2 AND seq_no = ?3
         AND out_of_order = 1 AND applied = 1",
    )?;
    while probe
        .query_row(params![e.cp_id, e.event.transaction_id, high + 1], |_| {
            Ok(())
        })
        .optional()?
        .is_some()
    {
        high += 1;
    }
    Ok(Some(high))
}

/// The auth result stored on a session; `None` while no idToken has come.
fn stored_result(x: &Extra, key: i64) -> Result<Option<AuthResult>, StoreError> {
    if x.auth_result == PENDING {
        return Ok(None);
    }
    AuthResult::parse(&x.auth_result).map(Some).ok_or_else(|| {
        StoreError::Corrupt(format!("session {key}: auth_result {:?}", x.auth_result))
    })
}

/// `auth_method` / `auth_result` of a transaction no idToken has authorized yet.
const PENDING: &str = "pending";

fn running(cost: Option<&Cost>) -> Option<RunningCost> {
    cost.map(|c| RunningCost {
        currency: c.currency.clone(),
        total_minor: c.total_minor,
    })
}

pub(super) fn event(c: &Connection, ctx: &Ctx, e: TxEventIn) -> Result<TxEventOutcome, StoreError> {
    let ev = &e.event;
    let found = find(c, &e.cp_id, &ev.transaction_id)?;
    // A replay: answered from what is stored, nothing written.
    if let Some((loaded, x)) = &found {
        if seen(c, &e, x)? {
            return replayed(c, &e, loaded, x);
        }
    }
    let (loaded, mut x) = match found {
        Some(found) => found,
        None => {
            let key = create(c, ctx, &e)?;
            let Some(loaded) = load(c, &e.cp_id, key)? else {
                return Err(StoreError::Corrupt(format!("session {key} vanished")));
            };
            let x = Extra {
                key,
                seq_high: None,
                search_journal: false,
                announced: false,
                auth_result: PENDING.to_string(),
                tag_key: String::new(),
            };
            (loaded, x)
        }
    };
    let key = x.key;
    let Loaded {
        mut session,
        connector_id: evse_id,
    } = loaded;
    let mut out = TxEventOutcome {
        session_id: Some(session.session_id.clone()),
        evse_id,
        ..TxEventOutcome::default()
    };
    if session.state == State::Stopped {
        // Ended is final: recorded, never applied. Logged once per transaction: a charger
        // that keeps sending must not flood the log.
        let earlier: i64 = c
            .prepare_cached(
                "SELECT count(*) FROM tx_events WHERE cp_id = ?1 AND charger_tx_id = ?2
                 AND out_of_order = 1 AND applied = 0",
            )?
            .query_row(params![e.cp_id, ev.transaction_id], |r| r.get(0))?;
        if earlier == 0 {
            tracing::warn!(
                cp_id = %e.cp_id, transaction_id = %ev.transaction_id, seq_no = ev.seq_no,
                "TransactionEvent after Ended: recorded, not applied (logged once per transaction)"
            );
        }
        record_event(c, &e, false, true)?;
        let flags = vec![Flags::single(Flag::AfterEnded); ev.samples.len()];
        store_readings(
            c,
            &Readings {
                cp_id: &e.cp_id,
                connector_id: evse_id,
                transaction_id: Some(key),
                samples: &ev.samples,
                flags: &flags,
                source: "TransactionEvent",
                received: e.received,
            },
        )?;
        out.after_ended = true;
        out.id_token_status = match &e.presented {
            Some(_) => stored_result(&x, key)?,
            None => None,
        };
        out.cost = stored_cost(c, key)?;
        return Ok(out);
    }
    let next = x.seq_high.map_or(0, |h| h + 1);
    let in_order = ev.seq_no == next;
    record_event(c, &e, true, !in_order)?;
    if ev.seq_no > next && !session.flags.contains(Flag::SeqGap) {
        tracing::warn!(
            cp_id = %e.cp_id, transaction_id = %ev.transaction_id, expected = next, got = ev.seq_no,
            "TransactionEvent seqNo skipped; flagged on the session"
        );
        session.flags.insert(Flag::SeqGap);
    }
    let seq = advance_high(c, &e, &x)?;
    // The idToken: the first one authorizes a transaction that began without one; a later
    // one (a stop by another card) is judged without using anything up.
    if let Some(presented) = &e.presented {
        let status = match stored_result(&x, key)? {
            None => {
                let d = authorize(c, ctx, &e, presented, evse_id, true)?;
                if d.unverified {
                    session.flags.insert(Flag::UnknownTag);
                }
                adopt(c, key, &d)?;
                if d.result == AuthResult::Accepted
                    && (d.order_id.is_some() || d.offline_counter.is_some())
                {
                    adopt_terms(c, key, &orders::terms_of(c, &d)?)?;
                    // the new terms are read back with the session below
                }
                x.auth_result = d.result.as_str().to_string();
                x.tag_key = d.tag_key.clone();
                d.result
            }
            Some(result) if presented.tag_key == x.tag_key => result,
            Some(_) => authorize(c, ctx, &e, presented, evse_id, false)?.result,
        };
        out.id_token_status = Some(status);
        if let Some(Loaded { session: fresh, .. }) = load(c, &e.cp_id, key)? {
            // pick up terms adopted above, keep what this event already changed
            let flags = session.flags;
            session = fresh;
            session.flags.insert_all(flags);
        }
    }
    let row_flags: Vec<Flags>;
    let mut closing = None;
    if ev.event_type == TxEventType::Ended {
        let meter_stop_wh = ev
            .end_wh
            .or_else(|| ev.samples.iter().rev().find_map(|s| s.energy_wh))
            .unwrap_or(session.register.last_wh);
        let facts = session::StopFacts {
            meter_stop_wh,
            timestamp: &ev.timestamp,
            reason: Some(&e.reason),
            transaction_data: &ev.samples,
            received: e.received,
        };
        let done = session::stop(&mut session, &facts, &ctx.limits);
        row_flags = done.row_flags.clone();
        closing = Some((done, meter_stop_wh));
    } else {
        let decided = session::meter(
            &mut session,
            &ev.samples,
            e.received,
            ev.offline,
            &ctx.limits,
        );
        row_flags = decided.row_flags;
        out.cost = decided.running;
        out.budget_stop = decided.stop_for_budget;
    }
    let row_flags: Vec<Flags> = row_flags
        .into_iter()
        .map(|mut f| {
            if ev.offline {
                f.insert(Flag::Offline);
            }
            f
        })
        .collect();
    store_readings(
        c,
        &Readings {
            cp_id: &e.cp_id,
            connector_id: evse_id,
            transaction_id: Some(key),
            samples: &ev.samples,
            flags: &row_flags,
            source: "TransactionEvent",
            received: e.received,
        },
    )?;
    note_clock(
        c,
        &e.cp_id,
        session::clock(&ev.timestamp, e.received, &ctx.limits),
        e.received,
    )?;
    save_session(c, &session, seq)?;
    // `session.started` goes out once the transaction is authorized (or ends without).
    let ending = closing.is_some();
    if !x.announced && (x.auth_result != PENDING || ending) {
        if x.auth_result == PENDING {
            // Ended without ever presenting an idToken: judged as a tagless start.
            let d = crate::auth::check_tag("", e.free_vend);
            insert_event(
                c,
                e.received,
                &orders::auth_event(&e.cp_id, Some(evse_id), &d, None),
            )?;
            adopt(c, key, &d)?;
        }
        announce(c, &e, key)?;
        x.announced = true;
    }
    if x.announced {
        meter_events(c, &session.session_id, e.received, &ev.samples)?;
    }
    out.energy_wh = Some(session.register.energy_wh);
    if let Some((done, meter_stop_wh)) = closing {
        let (meter_start_wh, started_at, order_id) = stop_details(c, key)?;
        let cost_json = done.cost.as_ref().map(serde_json::to_string).transpose()?;
        let stopped_at = fmt_ts(ev.timestamp.at);
        c.prepare_cached(
            "UPDATE sessions SET state = 'stopped', interrupted = 0, meter_stop_wh = ?2,
                stopped_raw = ?3, stopped_at = ?4, stop_received_at = ?5, stop_reason = ?6,
                cost = ?7 WHERE transaction_id = ?1",
        )?
        .execute(params![
            key,
            meter_stop_wh,
            ev.timestamp.raw,
            stopped_at,
            fmt_ts(e.received),
            done.reason,
            cost_json
        ])?;
        if session.flags.contains(Flag::MeterBackwards) || session.flags.contains(Flag::MeterJump) {
            tracing::warn!(session = %session.session_id, flags = ?session.flags.names(), "energy register anomaly at stop");
        }
        let body = SessionStopped {
            session_id: session.session_id.clone(),
            cp_id: e.cp_id.clone(),
            connector_id: evse_id,
            evse_id: Some(evse_id),
            transaction_id: TxId::V201(ev.transaction_id.clone()),
            started_at,
            stopped_at,
            meter_start_wh,
            meter_stop_wh,
            energy_wh: done.energy_wh,
            reason: done.reason,
            flags: session.flags.names(),
            order_id,
            cost: done.cost.clone(),
            settlement: done.settlement,
        };
        insert_event(c, e.received, &Event::SessionStopped(Box::new(body)))?;
        out.cost = running(done.cost.as_ref());
        out.ended = true;
    }
    Ok(out)
}

/// The answer to an event already recorded, from the session as it stands.
fn replayed(
    c: &Connection,
    e: &TxEventIn,
    loaded: &Loaded,
    x: &Extra,
) -> Result<TxEventOutcome, StoreError> {
    let key = x.key;
    let Loaded {
        session,
        connector_id,
    } = loaded;
    let connector_id = *connector_id;
    let cost = match session.state {
        State::Stopped => stored_cost(c, key)?,
        State::Active => session.billing.as_ref().map(|b| {
            let c = crate::billing::cost(&b.tariff, &b.accrual, session.register.last_at);
            RunningCost {
                currency: c.currency,
                total_minor: c.total_minor,
            }
        }),
    };
    Ok(TxEventOutcome {
        session_id: Some(session.session_id.clone()),
        evse_id: connector_id,
        id_token_status: match &e.presented {
            Some(_) => stored_result(x, key)?,
            None => None,
        },
        cost,
        energy_wh: Some(session.register.energy_wh),
        ended: false,
        replayed: true,
        after_ended: false,
        budget_stop: false,
    })
}

/// The final cost stored on a stopped session: its currency and total.
fn stored_cost(c: &Connection, key: i64) -> Result<Option<RunningCost>, StoreError> {
    let raw: Option<String> = c
        .prepare_cached("SELECT cost FROM sessions WHERE transaction_id = ?1")?
        .query_row(params![key], |r| r.get(0))?;
    let Some(j) = raw else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(&j)?;
    match (v["currency"].as_str(), v["total_minor"].as_i64()) {
        (Some(currency), Some(total_minor)) => Ok(Some(RunningCost {
            currency: currency.to_string(),
            total_minor,
        })),
        _ => Err(StoreError::Corrupt(format!("session {key}: cost {j}"))),
    }
}

/// Journals the event; `out_of_order` puts it in the partial index replays are found by.
fn record_event(
    c: &Connection,
    e: &TxEventIn,
    applied: bool,
    out_of_order: bool,
) -> Result<(), StoreError> {
    let ev = &e.event;
    c.prepare_cached(
        "INSERT INTO tx_events (cp_id, charger_tx_id, seq_no, event_type, trigger_reason, offline,
            charger_ts_raw, received_at, applied, out_of_order)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        e.cp_id,
        ev.transaction_id,
        ev.seq_no,
        ev.event_type.as_str(),
        ev.trigger_reason,
        ev.offline,
        ev.timestamp.raw,
        fmt_ts(e.received),
        applied,
        out_of_order
    ])?;
    Ok(())
}

fn authorize(
    c: &Connection,
    ctx: &Ctx,
    e: &TxEventIn,
    presented: &Presented,
    evse_id: u32,
    consume: bool,
) -> Result<AuthDecision, StoreError> {
    let attempt = orders::Attempt {
        cp_id: &e.cp_id,
        origin: &e.origin,
        connector_id: Some(evse_id),
        presented,
        free_vend: e.free_vend,
        uplink_online: e.uplink_online,
        consume,
        now: e.received,
    };
    let reserved =
        super::reservations::admission(c, ctx, &e.cp_id, evse_id, presented, e.received)?;
    let d = match &reserved {
        Some((_, false)) => super::reservations::refused_decision(presented),
        _ => orders::decide(c, ctx, &attempt)?,
    };
    orders::report(c, ctx, &attempt, &d)?;
    if let (Some((r, true)), true, AuthResult::Accepted) = (&reserved, consume, d.result) {
        super::reservations::release(c, r, crate::reservation::Release::Used, None, e.received)?;
    }
    Ok(d)
}

/// Writes how the transaction was authorized onto its session.
fn adopt(c: &Connection, key: i64, d: &AuthDecision) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE sessions SET id_tag = ?2, auth_method = ?3, auth_result = ?4, order_id = ?5,
             offline_counter = ?6
         WHERE transaction_id = ?1",
    )?
    .execute(params![
        key,
        d.tag_key,
        d.method.as_str(),
        d.result.as_str(),
        d.order_id,
        d.offline_counter.and_then(|n| i64::try_from(n).ok())
    ])?;
    Ok(())
}

fn adopt_terms(c: &Connection, key: i64, t: &orders::Terms) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE sessions SET tariff = ?2, budget_currency = ?3, budget_minor = ?4, prepaid = ?5,
            accrual = ?6 WHERE transaction_id = ?1",
    )?
    .execute(params![
        key,
        t.tariff,
        t.budget.as_ref().map(|b| b.currency.clone()),
        t.budget.as_ref().map(|b| b.amount_minor),
        t.budget.as_ref().map(|b| b.prepaid),
        t.tariff.as_ref().map(|_| "{}")
    ])?;
    Ok(())
}

/// A new session for the charger's first event of a transaction (normally `Started`).
fn create(c: &Connection, ctx: &Ctx, e: &TxEventIn) -> Result<i64, StoreError> {
    let ev = &e.event;
    let evse_id = ev.evse_id.unwrap_or(0);
    if ev.evse_id.is_none() {
        tracing::warn!(cp_id = %e.cp_id, transaction_id = %ev.transaction_id,
            "first TransactionEvent of a transaction names no EVSE; recorded on EVSE 0");
    }
    // The register the transaction starts from: its Transaction.Begin reading, else its
    // first register.
    let meter_start_wh = ev
        .begin_wh
        .or_else(|| ev.samples.iter().find_map(|s| s.energy_wh));
    let previous_register_wh: Option<i64> = c
        .prepare_cached(
            "SELECT last_register_wh FROM sessions WHERE cp_id = ?1 AND connector_id = ?2
             ORDER BY transaction_id DESC LIMIT 1",
        )?
        .query_row(params![e.cp_id, evse_id], |r| r.get(0))
        .optional()?;
    let open_before: i64 = c
        .prepare_cached(
            "SELECT count(*) FROM sessions WHERE cp_id = ?1 AND connector_id = ?2 AND state = 'active'",
        )?
        .query_row(params![e.cp_id, evse_id], |r| r.get(0))?;
    // Without any register yet, the session starts from the EVSE's last known one (or 0,
    // which the register core then treats like any implausible first step).
    let start_wh = meter_start_wh.or(previous_register_wh).unwrap_or(0);
    let facts = session::StartFacts {
        meter_start_wh: start_wh,
        timestamp: &ev.timestamp,
        received: e.received,
        previous_register_wh,
        open_before: open_before > 0,
    };
    let mut flags = session::start_flags(&facts, &ctx.limits);
    if ev.event_type != TxEventType::Started {
        tracing::warn!(cp_id = %e.cp_id, transaction_id = %ev.transaction_id, seq_no = ev.seq_no,
            "transaction first seen at a {} event", ev.event_type.as_str());
    }
    if ev.seq_no > 0 {
        flags.insert(Flag::SeqGap);
    }
    if flags.contains(Flag::MeterStartZero) {
        tracing::warn!(cp_id = %e.cp_id, transaction_id = %ev.transaction_id,
            "Transaction.Begin register of 0 where the EVSE's was higher: flagged, the jump will not be billed");
    }
    let pending_tag = format!("pending:{}", ev.transaction_id);
    c.prepare_cached(
        "INSERT INTO sessions (session_id, cp_id, connector_id, id_tag, auth_method, auth_result,
            reservation_id, meter_start_wh, started_raw, started_at, start_received_at,
            uplink_online, state, last_register_wh, last_reading_ms, last_received_ms, flags,
            clock_skew_secs, charger_tx_id, remote_start_id, announced)
         VALUES ('pending-' || ?10, ?1, ?2, ?3, 'pending', 'pending', ?4, ?5, ?6, ?7, ?8, ?9,
            'active', ?5, ?11, ?12, ?13, ?14, ?10, ?15, 0)",
    )?
    .execute(params![
        e.cp_id,
        evse_id,
        pending_tag,
        ev.reservation_id,
        start_wh,
        ev.timestamp.raw,
        fmt_ts(ev.timestamp.at),
        fmt_ts(e.received),
        e.uplink_online,
        ev.transaction_id,
        ms(ev.timestamp.at),
        ms(e.received),
        flags.to_stored(),
        (e.received - ev.timestamp.at).num_seconds(),
        ev.remote_start_id
    ])?;
    let key = c.last_insert_rowid();
    let session_id = format!("{}-{}-{}", ctx.site_id, ctx.instance, key);
    c.prepare_cached("UPDATE sessions SET session_id = ?1 WHERE transaction_id = ?2")?
        .execute(params![session_id, key])?;
    Ok(key)
}

/// Publishes `session.started` for a session, as it now stands.
fn announce(c: &Connection, e: &TxEventIn, key: i64) -> Result<(), StoreError> {
    type Row = (
        String,
        u32,
        String,
        String,
        Option<String>,
        i64,
        String,
        bool,
        String,
        Option<i64>,
    );
    let (
        session_id,
        evse_id,
        method,
        result,
        order_id,
        meter_start_wh,
        started_at,
        online,
        flags,
        offline_counter,
    ): Row = c
        .prepare_cached(
            "SELECT session_id, connector_id, auth_method, auth_result, order_id, meter_start_wh,
                started_at, uplink_online, flags, offline_counter
             FROM sessions WHERE transaction_id = ?1",
        )?
        .query_row(params![key], |r| {
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
                r.get(9)?,
            ))
        })?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("session {session_id}: {what}"));
    let method = crate::auth::AuthMethod::parse(&method).ok_or_else(|| corrupt("auth_method"))?;
    let result = AuthResult::parse(&result).ok_or_else(|| corrupt("auth_result"))?;
    let flags = Flags::from_stored(&flags).map_err(|f| corrupt(&format!("flag {f:?}")))?;
    let body = SessionStarted {
        session_id,
        cp_id: e.cp_id.clone(),
        connector_id: evse_id,
        evse_id: Some(evse_id),
        transaction_id: TxId::V201(e.event.transaction_id.clone()),
        order_id,
        auth_method: method.as_str(),
        auth_result: result.as_str(),
        meter_start_wh,
        started_at,
        uplink_online: online,
        flags: flags.names(),
        offline_counter: offline_counter.and_then(|n| u64::try_from(n).ok()),
    };
    c.prepare_cached("UPDATE sessions SET announced = 1 WHERE transaction_id = ?1")?
        .execute(params![key])?;
    insert_event(c, e.received, &Event::SessionStarted(Box::new(body)))
}
