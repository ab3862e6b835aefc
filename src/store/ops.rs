//! The store's operations: each one writes a fact and, in the same transaction, the
//! outbox events (CONTRACT §4) that describe it. Runs on the store thread only.

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Map, Value};

use super::orders::{self, NewAuthorization};
use super::outbox::{self, ConnectorRow, EventRow, Intake, OutboxStatus, SessionRef};
use super::StoreError;
use crate::auth::{Lockout, OtpHash, Presented};
use crate::billing::{self, Accrual, Budget, Tariff};
use crate::ocpp::messages::ChargerTime;
use crate::ocpp::meter::{Register, Sample};
use crate::time::{clock_flag, fmt_ts};

/// What the store thread knows beyond each op.
pub(super) struct Ctx {
    pub site_id: String,
    pub instance: String,
    pub max_charger_power_w: i64,
    pub clock_tolerance_secs: i64,
    pub lockout: Lockout,
}

/// How an id tag was judged, for `auth.checked` and the session record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthDecision {
    /// `otp`, `rfid` or `remote`.
    pub method: &'static str,
    /// `accepted`, `invalid`, `expired`, `used` or `blocked`.
    pub result: &'static str,
    /// The order it belongs to, when known.
    pub order_id: Option<String>,
    /// What may be stored for the tag (an OTP is never stored in clear).
    pub tag_key: String,
}

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

/// One unit of work for the store thread.
#[derive(Debug, Clone)]
pub enum Op {
    /// Does nothing; a liveness probe (the watchdog asks the store to commit one).
    Noop,
    /// Commits the current batch, then stops the store thread.
    Close,
    /// A charger's WebSocket was accepted.
    ChargerConnected {
        /// Charger.
        cp_id: String,
        /// Negotiated subprotocol.
        ocpp_version: String,
        /// It replaced an older socket of the same charger.
        replaced: bool,
        /// Site clock.
        at: DateTime<Utc>,
    },
    /// A charger's WebSocket ended.
    ChargerDisconnected {
        /// Charger.
        cp_id: String,
        /// Why: `closed`, `dead`, `error`, `shutdown`, `protocol`.
        reason: String,
        /// Site clock.
        at: DateTime<Utc>,
    },
    /// BootNotification.
    Booted {
        /// Charger.
        cp_id: String,
        /// Vendor.
        vendor: String,
        /// Model.
        model: String,
        /// Serial number.
        serial: Option<String>,
        /// Firmware version.
        firmware: Option<String>,
        /// Site clock.
        at: DateTime<Utc>,
    },
    /// StatusNotification.
    Status {
        /// Charger.
        cp_id: String,
        /// Connector (0 = charger).
        connector_id: u32,
        /// Status.
        status: String,
        /// Error code.
        error_code: String,
        /// Info and vendor error code.
        info: Option<String>,
        /// Charger timestamp.
        charger_ts: Option<ChargerTime>,
        /// Site clock.
        at: DateTime<Utc>,
    },
    /// Authorize: decide on a presented tag (nothing is used up), recorded as `auth.checked`.
    Authorize {
        /// Charger.
        cp_id: String,
        /// The presented tag.
        presented: Presented,
        /// `[auth] free_vend`.
        free_vend: bool,
        /// Site clock.
        at: DateTime<Utc>,
    },
    /// `authorization.upsert`.
    AuthorizationUpsert {
        /// The authorization.
        new: NewAuthorization,
        /// Site clock.
        at: DateTime<Utc>,
    },
    /// `authorization.revoke`.
    AuthorizationRevoke {
        /// Order.
        order_id: String,
    },
    /// `session.start`: validate the OTP, spend a use, register the remote tag.
    RemoteStart {
        /// Order.
        order_id: String,
        /// Keyed hash of the OTP.
        otp_hash: OtpHash,
        /// Charger.
        cp_id: String,
        /// Connector.
        connector_id: u32,
        /// The agent-controlled id tag the charger will present.
        tag: String,
        /// Site clock.
        at: DateTime<Utc>,
    },
    /// The charger did not accept a remote start: give the use back.
    RemoteStartFailed {
        /// The tag registered for it.
        tag: String,
    },
    /// StartTransaction.
    StartTransaction(StartTx),
    /// MeterValues.
    MeterValues(MeterIn),
    /// StopTransaction.
    StopTransaction(StopTx),
    /// Events after `after`, in seq order (only unsent ones when `unsent_only`).
    FetchEvents {
        /// Exclusive lower bound.
        after: i64,
        /// Most rows.
        limit: usize,
        /// Skip events already PUBACKed.
        unsent_only: bool,
    },
    /// Batches got their PUBACKs: inclusive seq ranges.
    MarkSent {
        /// `(first, last)` of each batch.
        ranges: Vec<(i64, i64)>,
        /// Site clock.
        at: DateTime<Utc>,
    },
    /// The BPP acked everything up to `seq`.
    Ack {
        /// Highest seq the BPP has stored.
        seq: i64,
    },
    /// Oldest unsent, last seq, backlog.
    OutboxStatus,
    /// Retention and the storage quota.
    Prune {
        /// Site clock.
        now: DateTime<Utc>,
        /// Sent events are kept this long.
        retain_secs: i64,
        /// Database size limit, if any.
        quota_bytes: Option<u64>,
    },
    /// A command from the BPP, to store before acknowledging it.
    CommandReceived {
        /// Its `id`, if readable.
        id: Option<String>,
        /// Its `type`, if readable.
        kind: Option<String>,
        /// The command as stored (secrets already replaced by their keyed hash).
        body: String,
        /// Site clock.
        at: DateTime<Utc>,
    },
    /// A command's result, to store before publishing it.
    CommandDone {
        /// Stored key.
        key: String,
        /// The `cmd/result` payload.
        result: String,
        /// Site clock.
        at: DateTime<Utc>,
    },
    /// A result got its PUBACK.
    ResultPublished {
        /// Stored key.
        key: String,
        /// Site clock.
        at: DateTime<Utc>,
    },
    /// Results stored but not yet PUBACKed.
    UnpublishedResults,
    /// Connector states, of one charger or all.
    Connectors {
        /// Charger, or all when `None`.
        cp_id: Option<String>,
    },
    /// The session a command names.
    FindSession {
        /// By session id.
        session_id: Option<String>,
        /// Else by order id.
        order_id: Option<String>,
    },
    /// Firmware / diagnostics status notifications.
    ChargerNote {
        /// Charger.
        cp_id: String,
        /// Firmware status, if that was the notification.
        firmware_status: Option<String>,
        /// Diagnostics status, if that was the notification.
        diagnostics_status: Option<String>,
    },
}

/// What an op returns once committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Recorded.
    Done,
    /// A session exists for this StartTransaction.
    Started {
        /// The OCPP transaction id.
        transaction_id: i32,
        /// The site-issued session id.
        session_id: String,
        /// True when this was a replay of an already recorded start.
        replayed: bool,
        /// The OCPP `idTagInfo.status` result for the tag.
        result: &'static str,
    },
    /// An authorization decision.
    Auth(AuthDecision),
    /// `Err(other order)` when the OTP clashes with another live order.
    Upsert(Result<(), String>),
    /// MeterValues recorded; the session they were linked to.
    Metered {
        /// Linked session, if any.
        session_id: Option<String>,
        /// The session's energy so far, Wh (running sessions only).
        energy_wh: Option<i64>,
        /// Running cost (currency, total minor units) when a tariff applies.
        cost: Option<(String, i64)>,
        /// Set once, when the running cost first reaches the budget: the transaction the
        /// agent must now stop.
        budget_stop: Option<i32>,
    },
    /// StopTransaction recorded.
    Stopped(StopOutcome),
    /// Events read.
    Events(Vec<EventRow>),
    /// Rows affected.
    Count(usize),
    /// Outbox status.
    Outbox(OutboxStatus),
    /// What to do with a received command.
    Intake(Intake),
    /// Unpublished command results: (key, result JSON).
    Results(Vec<(String, String)>),
    /// Connector states.
    Connectors(Vec<ConnectorRow>),
    /// A session, if found.
    Session(Option<SessionRef>),
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

/// The id of this database's life, part of every session id so that ids stay unique
/// upstream even if a gateway's database is ever recreated.
pub(super) fn instance_id(conn: &Connection) -> Result<String, StoreError> {
    if let Some(v) = conn
        .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
    {
        return Ok(v);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 40);
    let id = radix36(mixed % 36u64.pow(6));
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('instance', ?1)",
        params![id],
    )?;
    Ok(id)
}

fn radix36(mut v: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v % 36) as usize];
        v /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Most samples in one `session.meter` event, so that no event approaches the payload
/// limit even when a StopTransaction carries hours of transactionData.
pub const SAMPLES_PER_EVENT: usize = 20;

/// Writes one outbox event.
pub(super) fn insert_event(
    c: &Connection,
    kind: &str,
    at: DateTime<Utc>,
    body: Value,
) -> Result<(), StoreError> {
    insert_event_text(c, kind, at, &body.to_string())
}

/// [`insert_event`] with the body already serialized.
fn insert_event_text(
    c: &Connection,
    kind: &str,
    at: DateTime<Utc>,
    body: &str,
) -> Result<(), StoreError> {
    let billable = kind.starts_with("session.");
    c.prepare_cached("INSERT INTO events (type, at, body, billable) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![kind, fmt_ts(at), body, billable])?;
    Ok(())
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

fn add_flag(flags: &mut String, flag: &str) {
    if !flags.split(',').any(|f| f == flag) {
        if !flags.is_empty() {
            flags.push(',');
        }
        flags.push_str(flag);
    }
}

fn flags_json(flags: &str) -> Value {
    Value::Array(
        flags
            .split(',')
            .filter(|f| !f.is_empty())
            .map(Value::from)
            .collect(),
    )
}

/// Runs one op.
pub(super) fn apply(c: &Connection, ctx: &Ctx, op: Op) -> Result<Reply, StoreError> {
    match op {
        Op::Noop | Op::Close => Ok(Reply::Done),
        Op::ChargerConnected {
            cp_id,
            ocpp_version,
            replaced,
            at,
        } => {
            if replaced {
                insert_event(
                    c,
                    "charger.disconnected",
                    at,
                    json!({"cp_id": cp_id, "reason": "replaced"}),
                )?;
            }
            c.prepare_cached(
                "INSERT INTO chargers (cp_id, online, ocpp_version, connected_at) VALUES (?1, 1, ?2, ?3)
                 ON CONFLICT (cp_id) DO UPDATE SET online = 1, ocpp_version = ?2, connected_at = ?3",
            )?
            .execute(params![cp_id, ocpp_version, fmt_ts(at)])?;
            insert_event(
                c,
                "charger.connected",
                at,
                json!({"cp_id": cp_id, "ocpp_version": ocpp_version}),
            )?;
            let interrupted: Vec<String> = c
                .prepare_cached(
                    "SELECT session_id FROM sessions WHERE cp_id = ?1 AND state = 'active' AND interrupted = 1",
                )?
                .query_map(params![cp_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for sid in interrupted {
                c.execute(
                    "UPDATE sessions SET interrupted = 0 WHERE session_id = ?1",
                    params![sid],
                )?;
                insert_event(
                    c,
                    "session.resumed",
                    at,
                    json!({"session_id": sid, "cp_id": cp_id, "link": "charger"}),
                )?;
            }
            Ok(Reply::Done)
        }
        Op::ChargerDisconnected { cp_id, reason, at } => {
            c.prepare_cached(
                "UPDATE chargers SET online = 0, disconnected_at = ?2, disconnect_reason = ?3 WHERE cp_id = ?1",
            )?
            .execute(params![cp_id, fmt_ts(at), reason])?;
            insert_event(
                c,
                "charger.disconnected",
                at,
                json!({"cp_id": cp_id, "reason": reason}),
            )?;
            let active: Vec<String> = c
                .prepare_cached(
                    "SELECT session_id FROM sessions WHERE cp_id = ?1 AND state = 'active' AND interrupted = 0",
                )?
                .query_map(params![cp_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for sid in active {
                c.execute(
                    "UPDATE sessions SET interrupted = 1 WHERE session_id = ?1",
                    params![sid],
                )?;
                insert_event(
                    c,
                    "session.interrupted",
                    at,
                    json!({"session_id": sid, "cp_id": cp_id, "link": "charger"}),
                )?;
            }
            Ok(Reply::Done)
        }
        Op::Booted {
            cp_id,
            vendor,
            model,
            serial,
            firmware,
            at,
        } => {
            c.prepare_cached(
                "INSERT INTO chargers (cp_id, vendor, model, serial, firmware, booted_at, online)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)
                 ON CONFLICT (cp_id) DO UPDATE SET vendor = ?2, model = ?3, serial = ?4,
                     firmware = ?5, booted_at = ?6",
            )?
            .execute(params![cp_id, vendor, model, serial, firmware, fmt_ts(at)])?;
            insert_event(
                c,
                "charger.booted",
                at,
                json!({"cp_id": cp_id, "vendor": vendor, "model": model,
                       "serial": serial, "firmware": firmware}),
            )?;
            Ok(Reply::Done)
        }
        Op::Status {
            cp_id,
            connector_id,
            status,
            error_code,
            info,
            charger_ts,
            at,
        } => {
            if let Some(ts) = &charger_ts {
                note_clock(c, ctx, &cp_id, ts, at)?;
            }
            c.prepare_cached(
                "INSERT INTO connectors (cp_id, connector_id, status, error_code, info, charger_ts, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (cp_id, connector_id) DO UPDATE SET status = ?3, error_code = ?4,
                     info = ?5, charger_ts = ?6, received_at = ?7",
            )?
            .execute(params![
                cp_id,
                connector_id,
                status,
                error_code,
                info,
                charger_ts.as_ref().map(|t| t.raw.clone()),
                fmt_ts(at)
            ])?;
            insert_event(
                c,
                "connector.status",
                at,
                json!({"cp_id": cp_id, "connector_id": connector_id, "status": status,
                       "error_code": error_code,
                       "charger_ts": charger_ts.map(|t| fmt_ts(t.at))}),
            )?;
            Ok(Reply::Done)
        }
        Op::Authorize {
            cp_id,
            presented,
            free_vend,
            at,
        } => {
            let attempt = orders::Attempt {
                cp_id: &cp_id,
                connector_id: None,
                presented: &presented,
                free_vend,
                consume: false,
                now: at,
            };
            let d = orders::decide(c, &ctx.lockout, attempt)?;
            auth_event(c, &cp_id, None, &d, at)?;
            Ok(Reply::Auth(d))
        }
        Op::AuthorizationUpsert { new, at } => Ok(Reply::Upsert(orders::upsert(c, &new, at)?)),
        Op::AuthorizationRevoke { order_id } => Ok(Reply::Count(orders::revoke(c, &order_id)?)),
        Op::RemoteStart {
            order_id,
            otp_hash,
            cp_id,
            connector_id,
            tag,
            at,
        } => {
            let request = orders::RemoteRequest {
                order_id: &order_id,
                otp_hash: &otp_hash,
                cp_id: &cp_id,
                connector_id,
                tag: &tag,
                now: at,
            };
            let d = orders::remote_start(c, &ctx.lockout, request)?;
            auth_event(c, &cp_id, Some(connector_id), &d, at)?;
            Ok(Reply::Auth(d))
        }
        Op::RemoteStartFailed { tag } => {
            orders::remote_start_failed(c, &tag)?;
            Ok(Reply::Done)
        }
        Op::FetchEvents {
            after,
            limit,
            unsent_only,
        } => Ok(Reply::Events(outbox::fetch(c, after, limit, unsent_only)?)),
        Op::MarkSent { ranges, at } => {
            for (first, last) in merge_ranges(ranges) {
                outbox::mark_sent(c, first, last, at)?;
            }
            Ok(Reply::Done)
        }
        Op::Ack { seq } => Ok(Reply::Count(outbox::ack(c, seq)?)),
        Op::OutboxStatus => Ok(Reply::Outbox(outbox::status(c)?)),
        Op::Prune {
            now,
            retain_secs,
            quota_bytes,
        } => Ok(Reply::Count(outbox::prune(
            c,
            now,
            retain_secs,
            quota_bytes,
        )?)),
        Op::CommandReceived { id, kind, body, at } => Ok(Reply::Intake(outbox::command_received(
            c,
            id.as_deref(),
            kind.as_deref(),
            &body,
            at,
        )?)),
        Op::CommandDone { key, result, at } => {
            outbox::command_done(c, &key, &result, at)?;
            Ok(Reply::Done)
        }
        Op::ResultPublished { key, at } => {
            outbox::result_published(c, &key, at)?;
            Ok(Reply::Done)
        }
        Op::UnpublishedResults => Ok(Reply::Results(outbox::unpublished_results(c)?)),
        Op::Connectors { cp_id } => Ok(Reply::Connectors(outbox::connectors(c, cp_id.as_deref())?)),
        Op::FindSession {
            session_id,
            order_id,
        } => Ok(Reply::Session(outbox::find_session(
            c,
            session_id.as_deref(),
            order_id.as_deref(),
        )?)),
        Op::StartTransaction(s) => start(c, ctx, s),
        Op::MeterValues(m) => meter(c, ctx, m),
        Op::StopTransaction(s) => stop(c, ctx, s),
        Op::ChargerNote {
            cp_id,
            firmware_status,
            diagnostics_status,
        } => {
            c.execute(
                "INSERT INTO chargers (cp_id, firmware_status, diagnostics_status) VALUES (?1, ?2, ?3)
                 ON CONFLICT (cp_id) DO UPDATE SET
                     firmware_status = coalesce(?2, firmware_status),
                     diagnostics_status = coalesce(?3, diagnostics_status)",
                params![cp_id, firmware_status, diagnostics_status],
            )?;
            Ok(Reply::Done)
        }
    }
}

fn auth_event(
    c: &Connection,
    cp_id: &str,
    connector_id: Option<u32>,
    auth: &AuthDecision,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut body = Map::new();
    body.insert("cp_id".into(), Value::from(cp_id));
    if let Some(cid) = connector_id {
        body.insert("connector_id".into(), Value::from(cid));
    }
    body.insert("method".into(), Value::from(auth.method));
    body.insert("result".into(), Value::from(auth.result));
    if let Some(o) = &auth.order_id {
        body.insert("order_id".into(), Value::from(o.as_str()));
    }
    insert_event(c, "auth.checked", at, Value::Object(body))
}

/// Records a charger clock that cannot be right, on the charger; returns the flag.
fn note_clock(
    c: &Connection,
    ctx: &Ctx,
    cp_id: &str,
    ts: &ChargerTime,
    received: DateTime<Utc>,
) -> Result<Option<&'static str>, StoreError> {
    let flag = clock_flag(ts.at, received, ctx.clock_tolerance_secs);
    if let Some(f) = flag {
        c.prepare_cached(
            "INSERT INTO chargers (cp_id, clock_flag, clock_flagged_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (cp_id) DO UPDATE SET clock_flag = ?2, clock_flagged_at = ?3",
        )?
        .execute(params![cp_id, f, fmt_ts(received)])?;
    }
    Ok(flag)
}

fn start(c: &Connection, ctx: &Ctx, s: StartTx) -> Result<Reply, StoreError> {
    // A replay (the charger did not get our answer and sent the same start again) gets
    // the same transaction id, and nothing new is written.
    if let Some(replay) = c
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
        let (tx_id, sid, result) = replay;
        return Ok(Reply::Started {
            transaction_id: tx_id,
            session_id: sid,
            replayed: true,
            result: static_result(&result),
        });
    }
    let attempt = orders::Attempt {
        cp_id: &s.cp_id,
        connector_id: Some(s.connector_id),
        presented: &s.presented,
        free_vend: s.free_vend,
        consume: true,
        now: s.received,
    };
    let auth = orders::decide(c, &ctx.lockout, attempt)?;
    auth_event(c, &s.cp_id, Some(s.connector_id), &auth, s.received)?;
    let terms = match (&auth.order_id, auth.result) {
        (Some(order), "accepted") => orders::terms(c, order)?,
        _ => orders::Terms::default(),
    };
    let mut flags = String::new();
    if let Some(f) = note_clock(c, ctx, &s.cp_id, &s.timestamp, s.received)? {
        add_flag(&mut flags, f);
    }
    // A meterStart of 0 where this connector's register was known to be higher is the
    // classic rebooted-meter start; the register logic then refuses the jump that follows.
    let previous: Option<i64> = c
        .prepare_cached(
            "SELECT last_register_wh FROM sessions WHERE cp_id = ?1 AND connector_id = ?2
             ORDER BY transaction_id DESC LIMIT 1",
        )?
        .query_row(params![s.cp_id, s.connector_id], |r| r.get(0))
        .optional()?;
    if s.meter_start_wh == 0 && previous.is_some_and(|p| p > 0) {
        add_flag(&mut flags, "meter_start_zero");
    }
    let open_before: i64 = c
        .prepare_cached(
            "SELECT count(*) FROM sessions WHERE cp_id = ?1 AND connector_id = ?2 AND state = 'active'",
        )?
        .query_row(params![s.cp_id, s.connector_id], |r| r.get(0))?;
    if open_before > 0 {
        add_flag(&mut flags, "previous_session_open");
    }
    let skew = (s.received - s.timestamp.at).num_seconds();
    let started_at = fmt_ts(s.timestamp.at);
    // The session id embeds the transaction id, which only the INSERT assigns: insert
    // with a placeholder and fix it up in the same transaction.
    c.prepare_cached(
        "INSERT INTO sessions (session_id, cp_id, connector_id, id_tag, auth_method, auth_result,
            order_id, reservation_id, meter_start_wh, started_raw, started_at, start_received_at,
            uplink_online, state, last_register_wh, last_reading_ms, last_received_ms, flags,
            clock_skew_secs, tariff, budget_currency, budget_minor, prepaid, accrual)
         VALUES ('pending-' || ?9 || '-' || ?10, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,
            'active', ?8, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
    )?
    .execute(params![
        s.cp_id,
        s.connector_id,
        auth.tag_key,
        auth.method,
        auth.result,
        auth.order_id,
        s.reservation_id,
        s.meter_start_wh,
        s.timestamp.raw,
        started_at,
        fmt_ts(s.received),
        s.uplink_online,
        ms(s.timestamp.at),
        ms(s.received),
        flags,
        skew,
        terms.tariff,
        terms.budget.as_ref().map(|b| b.currency.clone()),
        terms.budget.as_ref().map(|b| b.amount_minor),
        terms.budget.as_ref().map(|b| b.prepaid),
        terms.tariff.as_ref().map(|_| "{}")
    ])?;
    let tx_id = c.last_insert_rowid();
    let transaction_id = i32::try_from(tx_id)
        .map_err(|_| StoreError::Sqlite(rusqlite::Error::IntegralValueOutOfRange(0, tx_id)))?;
    let session_id = format!("{}-{}-{}", ctx.site_id, ctx.instance, transaction_id);
    c.prepare_cached("UPDATE sessions SET session_id = ?1 WHERE transaction_id = ?2")?
        .execute(params![session_id, tx_id])?;
    let mut body = Map::new();
    body.insert("session_id".into(), Value::from(session_id.as_str()));
    body.insert("cp_id".into(), Value::from(s.cp_id.as_str()));
    body.insert("connector_id".into(), Value::from(s.connector_id));
    body.insert("transaction_id".into(), Value::from(transaction_id));
    if let Some(o) = &auth.order_id {
        body.insert("order_id".into(), Value::from(o.as_str()));
    }
    body.insert("auth_method".into(), Value::from(auth.method));
    body.insert("auth_result".into(), Value::from(auth.result));
    body.insert("meter_start_wh".into(), Value::from(s.meter_start_wh));
    body.insert("started_at".into(), Value::from(started_at));
    body.insert("uplink_online".into(), Value::from(s.uplink_online));
    body.insert("flags".into(), flags_json(&flags));
    insert_event(c, "session.started", s.received, Value::Object(body))?;
    Ok(Reply::Started {
        transaction_id,
        session_id,
        replayed: false,
        result: auth.result,
    })
}

/// Sorts and merges adjacent or overlapping inclusive ranges.
fn merge_ranges(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
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

fn static_result(r: &str) -> &'static str {
    match r {
        "accepted" => "accepted",
        "expired" => "expired",
        "used" => "used",
        "blocked" => "blocked",
        _ => "invalid",
    }
}

/// A session row as the meter and stop paths need it.
struct SessionRow {
    transaction_id: i64,
    session_id: String,
    state: String,
    register: Register,
    flags: String,
    billing: Option<SessionBilling>,
    /// The last counted register step in this op: (Wh, from, to), for the budget's look-ahead.
    last_step: Option<(i64, DateTime<Utc>, DateTime<Utc>)>,
}

/// A session priced by an order's tariff.
struct SessionBilling {
    tariff: Tariff,
    accrual: Accrual,
    budget: Option<Budget>,
    budget_stop: bool,
}

impl SessionBilling {
    fn load(
        tariff: Option<String>,
        accrual: Option<String>,
        budget: Option<Budget>,
        budget_stop: bool,
    ) -> Option<SessionBilling> {
        let tariff: Value = serde_json::from_str(&tariff?).ok()?;
        let tariff = match Tariff::from_json(&tariff) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("stored tariff unusable: {e}");
                return None;
            }
        };
        let accrual = accrual
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default();
        Some(SessionBilling {
            tariff,
            accrual,
            budget,
            budget_stop,
        })
    }
}

fn load_session(
    c: &Connection,
    cp_id: &str,
    connector_id: Option<u32>,
    transaction_id: Option<i32>,
) -> Result<Option<SessionRow>, StoreError> {
    let map = |r: &rusqlite::Row<'_>| {
        Ok(SessionRow {
            transaction_id: r.get(0)?,
            session_id: r.get(1)?,
            state: r.get(2)?,
            register: Register {
                last_wh: r.get(3)?,
                last_at: from_ms(r.get(4)?),
                last_received: from_ms(r.get(5)?),
                energy_wh: r.get(6)?,
            },
            flags: r.get(7)?,
            billing: SessionBilling::load(
                r.get(8)?,
                r.get(9)?,
                match (
                    r.get::<_, Option<String>>(10)?,
                    r.get::<_, Option<i64>>(11)?,
                ) {
                    (Some(currency), Some(amount_minor)) => Some(Budget {
                        currency,
                        amount_minor,
                        prepaid: r.get::<_, Option<bool>>(12)?.unwrap_or(true),
                    }),
                    _ => None,
                },
                r.get::<_, i64>(13)? != 0,
            ),
            last_step: None,
        })
    };
    const COLS: &str = "transaction_id, session_id, state, last_register_wh, last_reading_ms,
                        last_received_ms, energy_wh, flags, tariff, accrual, budget_currency,
                        budget_minor, prepaid, budget_stop";
    let row = match (transaction_id, connector_id) {
        (Some(tx), _) => c
            .prepare_cached(&format!(
                "SELECT {COLS} FROM sessions WHERE transaction_id = ?1 AND cp_id = ?2"
            ))?
            .query_row(params![tx, cp_id], map)
            .optional()?,
        (None, Some(conn)) => c
            .prepare_cached(&format!(
                "SELECT {COLS} FROM sessions WHERE cp_id = ?1 AND connector_id = ?2
                 AND state = 'active' ORDER BY transaction_id DESC LIMIT 1"
            ))?
            .query_row(params![cp_id, conn], map)
            .optional()?,
        (None, None) => None,
    };
    Ok(row)
}

/// Readings to store, from one message.
struct Readings<'a> {
    cp_id: &'a str,
    connector_id: u32,
    samples: &'a [Sample],
    /// `MeterValues` or `StopTransaction`.
    source: &'static str,
    received: DateTime<Utc>,
    /// Only readings newer than the register's last one count (transactionData repeats
    /// readings the charger already sent as MeterValues).
    only_newer: bool,
}

/// Stores samples and advances the register of an active session; returns the rows'
/// JSON for the `session.meter` event.
fn record_samples<'a>(
    c: &Connection,
    ctx: &Ctx,
    session: Option<&mut SessionRow>,
    r: Readings<'a>,
) -> Result<Vec<&'a str>, StoreError> {
    let Readings {
        cp_id,
        connector_id,
        samples,
        source,
        received,
        only_newer,
    } = r;
    let mut out = Vec::with_capacity(samples.len());
    let mut session = session;
    for sample in samples {
        let mut row_flags = String::new();
        if let Some(s) = session.as_deref_mut() {
            if let (Some(wh), true) = (sample.energy_wh, s.state == "active") {
                let fresh = !only_newer || sample.at.at > s.register.last_at;
                if fresh {
                    let before = s.register;
                    let (reg, anomaly) =
                        s.register
                            .advance(wh, sample.at.at, received, ctx.max_charger_power_w);
                    s.register = reg;
                    let delta = reg.energy_wh - before.energy_wh;
                    if delta > 0 {
                        s.last_step = Some((delta, before.last_at, reg.last_at));
                    }
                    if let Some(b) = s.billing.as_mut() {
                        b.accrual.add(&b.tariff, delta, before.last_at, reg.last_at);
                    }
                    if let Some(a) = anomaly {
                        add_flag(&mut s.flags, a.flag());
                        add_flag(&mut row_flags, a.flag());
                        tracing::warn!(session = %s.session_id, ?a, "energy register anomaly");
                    }
                }
            }
        } else {
            add_flag(&mut row_flags, "no_session");
        }
        c.prepare_cached(
            "INSERT INTO meter_values (cp_id, connector_id, transaction_id, source, charger_ts_raw,
                charger_ts, received_at, context, energy_wh, power_w, current_a, voltage_v, soc_pct,
                flags, raw)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?
        .execute(params![
            cp_id,
            connector_id,
            session.as_deref().map(|s| s.transaction_id),
            source,
            sample.at.raw,
            fmt_ts(sample.at.at),
            fmt_ts(received),
            sample.context,
            sample.energy_wh,
            sample.power_w,
            sample.current_a,
            sample.voltage_v,
            sample.soc_pct,
            row_flags,
            sample.raw
        ])?;
        out.push(sample.event.as_str());
    }
    Ok(out)
}

/// `session.meter` events for the samples (each already serialized, see
/// [`Sample::event`]), at most [`SAMPLES_PER_EVENT`] per event.
fn meter_events(
    c: &Connection,
    session_id: &str,
    at: DateTime<Utc>,
    samples: &[&str],
) -> Result<(), StoreError> {
    let id = Value::from(session_id).to_string();
    for chunk in samples.chunks(SAMPLES_PER_EVENT) {
        let mut body =
            String::with_capacity(32 + id.len() + chunk.iter().map(|s| s.len() + 1).sum::<usize>());
        body.push_str(r#"{"session_id":"#);
        body.push_str(&id);
        body.push_str(r#","samples":["#);
        for (i, sample) in chunk.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(sample);
        }
        body.push_str("]}");
        insert_event_text(c, "session.meter", at, &body)?;
    }
    Ok(())
}

fn save_register(c: &Connection, s: &SessionRow) -> Result<(), StoreError> {
    let accrual = match &s.billing {
        Some(b) => Some(serde_json::to_string(&b.accrual)?),
        None => None,
    };
    c.prepare_cached(
        "UPDATE sessions SET last_register_wh = ?2, last_reading_ms = ?3, last_received_ms = ?4,
            energy_wh = ?5, flags = ?6, accrual = ?7, budget_stop = ?8 WHERE transaction_id = ?1",
    )?
    .execute(params![
        s.transaction_id,
        s.register.last_wh,
        ms(s.register.last_at),
        ms(s.register.last_received),
        s.register.energy_wh,
        s.flags,
        accrual,
        s.billing.as_ref().is_some_and(|b| b.budget_stop)
    ])?;
    Ok(())
}

fn meter(c: &Connection, ctx: &Ctx, m: MeterIn) -> Result<Reply, StoreError> {
    let mut session = load_session(c, &m.cp_id, Some(m.connector_id), m.transaction_id)?;
    let samples = record_samples(
        c,
        ctx,
        session.as_mut(),
        Readings {
            cp_id: &m.cp_id,
            connector_id: m.connector_id,
            samples: &m.samples,
            source: "MeterValues",
            received: m.received,
            only_newer: false,
        },
    )?;
    let Some(mut s) = session else {
        return Ok(Reply::Metered {
            session_id: None,
            energy_wh: None,
            cost: None,
            budget_stop: None,
        });
    };
    let active = s.state == "active";
    let mut cost = None;
    let mut budget_stop = None;
    if let (Some(b), true) = (s.billing.as_mut(), active) {
        let running = billing::cost(&b.tariff, &b.accrual, s.register.last_at);
        // Look two readings ahead at the current pace: the charger keeps delivering for
        // about one more interval after it is told to stop, so the stop must go out before
        // the budget is crossed, not one interval after.
        let mut ahead = b.accrual.clone();
        if let Some((wh, from, to)) = s.last_step {
            ahead.add(&b.tariff, 2 * wh, to, to + (to - from) * 2);
        }
        let next = billing::cost(&b.tariff, &ahead, s.register.last_at);
        if let Some(budget) = &b.budget {
            let reached =
                billing::budget_reached(budget, &running) || billing::budget_reached(budget, &next);
            if !b.budget_stop && reached {
                // once: the agent stops the charger, online or not
                b.budget_stop = true;
                budget_stop = i32::try_from(s.transaction_id).ok();
                add_flag(&mut s.flags, "budget_reached");
            }
        }
        cost = Some((running.currency, running.total_minor));
    }
    if active {
        save_register(c, &s)?;
    }
    meter_events(c, &s.session_id, m.received, &samples)?;
    Ok(Reply::Metered {
        session_id: Some(s.session_id),
        energy_wh: active.then_some(s.register.energy_wh),
        cost,
        budget_stop,
    })
}

fn stop(c: &Connection, ctx: &Ctx, s: StopTx) -> Result<Reply, StoreError> {
    let session = load_session(c, &s.cp_id, None, Some(s.transaction_id))?;
    let stopped_at = fmt_ts(s.timestamp.at);
    let mut reason = s.reason.clone().unwrap_or_else(|| "Local".to_string());
    let Some(mut session) = session.filter(|x| x.state == "active") else {
        // Unknown or already stopped: record it, answer normally, never make the charger
        // retry forever. A duplicate changes no bill; an unknown one is reported upstream.
        let known = load_session(c, &s.cp_id, None, Some(s.transaction_id))?;
        let kind = if known.is_some() {
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
        let connector = c
            .query_row(
                "SELECT connector_id FROM sessions WHERE transaction_id = ?1",
                params![s.transaction_id],
                |r| r.get::<_, u32>(0),
            )
            .optional()?
            .unwrap_or(0);
        record_samples(
            c,
            ctx,
            None,
            Readings {
                cp_id: &s.cp_id,
                connector_id: connector,
                samples: &s.transaction_data,
                source: "StopTransaction",
                received: s.received,
                only_newer: true,
            },
        )?;
        return Ok(Reply::Stopped(match known {
            Some(k) => StopOutcome::Duplicate {
                session_id: k.session_id,
            },
            None => {
                insert_event(
                    c,
                    "session.stop_unmatched",
                    s.received,
                    json!({"cp_id": s.cp_id, "transaction_id": s.transaction_id,
                           "meter_stop_wh": s.meter_stop_wh, "stopped_at": stopped_at,
                           "reason": reason}),
                )?;
                StopOutcome::Unknown
            }
        }));
    };
    let (connector_id, meter_start_wh, started_at, order_id): (u32, i64, String, Option<String>) = c
        .prepare_cached(
            "SELECT connector_id, meter_start_wh, started_at, order_id FROM sessions WHERE transaction_id = ?1",
        )?
        .query_row(params![session.transaction_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    let samples = record_samples(
        c,
        ctx,
        Some(&mut session),
        Readings {
            cp_id: &s.cp_id,
            connector_id,
            samples: &s.transaction_data,
            source: "StopTransaction",
            received: s.received,
            only_newer: true,
        },
    )?;
    meter_events(c, &session.session_id, s.received, &samples)?;
    let before = session.register;
    let (reg, anomaly) = session.register.advance(
        s.meter_stop_wh,
        s.timestamp.at,
        s.received,
        ctx.max_charger_power_w,
    );
    session.register = reg;
    if let Some(b) = session.billing.as_mut() {
        b.accrual.add(
            &b.tariff,
            reg.energy_wh - before.energy_wh,
            before.last_at,
            reg.last_at,
        );
    }
    if let Some(a) = anomaly {
        add_flag(&mut session.flags, a.flag());
        tracing::warn!(session = %session.session_id, ?a, "energy register anomaly at stop");
    }
    if let Some(f) = note_clock(c, ctx, &s.cp_id, &s.timestamp, s.received)? {
        add_flag(&mut session.flags, f);
    }
    save_register(c, &session)?;
    let energy_wh = session.register.energy_wh;
    let mut cost_json = None;
    let mut settlement = None;
    if let Some(b) = &session.billing {
        // the stop the agent asked for because the budget was reached
        if b.budget_stop {
            reason = "BudgetReached".to_string();
        }
        let until = s.timestamp.at.max(session.register.last_at);
        let cost = billing::cost(&b.tariff, &b.accrual, until);
        if let Some(budget) = b.budget.as_ref().filter(|b| b.prepaid) {
            settlement = Some(billing::settlement(budget, &cost));
        }
        cost_json = Some(cost.to_json());
    }
    c.prepare_cached(
        "UPDATE sessions SET state = 'stopped', interrupted = 0, meter_stop_wh = ?2, stopped_raw = ?3,
            stopped_at = ?4, stop_received_at = ?5, stop_reason = ?6, cost = ?7 WHERE transaction_id = ?1",
    )?
    .execute(params![
        session.transaction_id,
        s.meter_stop_wh,
        s.timestamp.raw,
        stopped_at,
        fmt_ts(s.received),
        reason,
        cost_json.as_ref().map(Value::to_string)
    ])?;
    let mut body = json!({"session_id": session.session_id, "cp_id": s.cp_id, "connector_id": connector_id,
           "transaction_id": s.transaction_id, "started_at": started_at,
           "stopped_at": stopped_at, "meter_start_wh": meter_start_wh,
           "meter_stop_wh": s.meter_stop_wh, "energy_wh": energy_wh, "reason": reason,
           "flags": flags_json(&session.flags)});
    if let Some(order) = order_id {
        body["order_id"] = Value::from(order);
    }
    if let Some(cost) = cost_json {
        body["cost"] = cost;
    }
    if let Some(st) = settlement {
        body["settlement"] = st;
    }
    insert_event(c, "session.stopped", s.received, body)?;
    Ok(Reply::Stopped(StopOutcome::Ended {
        session_id: session.session_id,
        energy_wh,
    }))
}

#[cfg(test)]
mod tests {
    use super::merge_ranges;

    #[test]
    fn pubacked_ranges_merge_into_few_updates() {
        assert_eq!(
            merge_ranges(vec![(5, 9), (1, 4), (12, 20), (10, 11)]),
            vec![(1, 20)]
        );
        assert_eq!(merge_ranges(vec![(1, 3), (7, 8)]), vec![(1, 3), (7, 8)]);
        assert_eq!(merge_ranges(vec![]), vec![]);
    }
}
