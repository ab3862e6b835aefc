//! OTP authorizations, remote starts and lockouts as stored, and the tag decision that
//! uses them (the rules themselves are pure, in `crate::auth`). Runs on the store thread
//! only, so a decision and the use it consumes are one transaction.

use chrono::{DateTime, Duration, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{from_ms, insert_event, ms, Ctx, StoreError};
use crate::auth::{
    self, AuthDecision, AuthMethod, AuthResult, Lock, Lockout, Origin, OtpHash, OtpOutcome,
    OtpRecord, Presented, Recent, Source,
};
use crate::billing::Budget;
use crate::events::Event;
use crate::time::fmt_ts;

/// How long an agent-issued remote-start tag waits for the charger's StartTransaction.
const REMOTE_TAG_TTL_MINUTES: i64 = 10;

/// What an order brings to its session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Terms {
    /// Tariff JSON, if any.
    pub tariff: Option<String>,
    /// Budget, if any.
    pub budget: Option<Budget>,
}

/// An authorization to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuthorization {
    /// The OTP record (hash only).
    pub record: OtpRecord,
    /// Budget.
    pub budget: Option<Budget>,
    /// Tariff, validated JSON.
    pub tariff: Option<String>,
}

/// Records that may still matter for a decision (recently valid or valid now). A record
/// this build cannot read (a hash of the wrong length, a timestamp out of range) can never
/// match: it is left out and reported, never read as zeros.
fn candidates(c: &Connection, now: DateTime<Utc>) -> Result<Vec<OtpRecord>, StoreError> {
    let horizon = ms(now - Duration::days(30));
    type Raw = (
        String,
        Vec<u8>,
        Option<i64>,
        i64,
        Option<String>,
        Option<u32>,
        u32,
        u32,
        bool,
    );
    let rows: Vec<Raw> = c
        .prepare_cached(
            "SELECT order_id, otp_hash, valid_from_ms, valid_until_ms, cp_id, connector_id, max_uses,
                    uses, revoked
             FROM authorizations WHERE valid_until_ms >= ?1",
        )?
        .query_map(params![horizon], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get::<_, i64>(8)? != 0,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (order_id, hash, from, until, cp_id, connector_id, max_uses, uses, revoked) in rows {
        let what = format!("authorization {order_id}");
        let record = (|| {
            let otp_hash: OtpHash = hash.as_slice().try_into().map_err(|_| {
                StoreError::Corrupt(format!("{what}: otp_hash of {} bytes", hash.len()))
            })?;
            Ok::<_, StoreError>(OtpRecord {
                order_id: order_id.clone(),
                otp_hash,
                valid_from: from.map(|f| from_ms(f, || what.clone())).transpose()?,
                valid_until: from_ms(until, || what.clone())?,
                cp_id,
                connector_id,
                max_uses,
                uses,
                revoked,
            })
        })();
        match record {
            Ok(r) => out.push(r),
            Err(e) => tracing::error!("left out of OTP checks: {e}"),
        }
    }
    Ok(out)
}

/// Stores (or replaces, for the same order) an authorization; `Err(order)` when its
/// digits clash with another live order's.
pub(super) fn upsert(
    c: &Connection,
    a: &NewAuthorization,
    now: DateTime<Utc>,
) -> Result<Result<(), String>, StoreError> {
    let existing = candidates(c, now)?;
    if let Some(other) = auth::conflict(&a.record, &existing, now) {
        return Ok(Err(other.to_string()));
    }
    let r = &a.record;
    c.execute(
        "INSERT INTO authorizations (order_id, otp_hash, valid_from_ms, valid_until_ms, cp_id, connector_id,
             max_uses, uses, revoked, budget_currency, budget_minor, prepaid, tariff, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (order_id) DO UPDATE SET otp_hash = ?2, valid_from_ms = ?3, valid_until_ms = ?4,
             cp_id = ?5, connector_id = ?6, max_uses = ?7, revoked = 0, budget_currency = ?8,
             budget_minor = ?9, prepaid = ?10, tariff = ?11, updated_at = ?12",
        params![
            r.order_id,
            r.otp_hash.to_vec(),
            r.valid_from.map(ms),
            ms(r.valid_until),
            r.cp_id,
            r.connector_id,
            r.max_uses,
            a.budget.as_ref().map(|b| b.currency.clone()),
            a.budget.as_ref().map(|b| b.amount_minor),
            a.budget.as_ref().map(|b| b.prepaid),
            a.tariff,
            fmt_ts(now)
        ],
    )?;
    Ok(Ok(()))
}

pub(super) fn revoke(c: &Connection, order_id: &str) -> Result<usize, StoreError> {
    Ok(c.execute(
        "UPDATE authorizations SET revoked = 1 WHERE order_id = ?1",
        params![order_id],
    )?)
}

pub(super) fn terms(c: &Connection, order_id: &str) -> Result<Terms, StoreError> {
    terms_row(
        c,
        "SELECT budget_currency, budget_minor, prepaid, tariff FROM authorizations WHERE order_id = ?1",
        params![order_id],
    )
}

/// The wrong codes that bear on an attempt from `source` (see [`Lockout::lock`]).
fn recent(
    c: &Connection,
    source: &Source<'_>,
    lockout: &Lockout,
    now: DateTime<Utc>,
) -> Result<Recent, StoreError> {
    let charger: Vec<DateTime<Utc>> = c
        .prepare_cached("SELECT at_ms FROM otp_failures WHERE cp_id = ?1 AND at_ms >= ?2")?
        .query_map(params![source.cp_id, ms(now - lockout.horizon())], |r| {
            r.get::<_, i64>(0)
        })?
        .map(|r| from_ms(r?, || "otp_failures.at_ms".into()))
        .collect::<Result<_, _>>()?;
    let since = ms(now - lockout.budget_window);
    let site: i64 = c
        .prepare_cached("SELECT count(*) FROM otp_failures WHERE at_ms > ?1 AND at_ms <= ?2")?
        .query_row(params![since, ms(now)], |r| r.get(0))?;
    let address: i64 = match source.remote {
        Some(remote) => c
            .prepare_cached(
                "SELECT count(*) FROM otp_failures WHERE remote = ?1 AND at_ms > ?2 AND at_ms <= ?3",
            )?
            .query_row(params![remote, since, ms(now)], |r| r.get(0))?,
        None => 0,
    };
    Ok(Recent {
        charger,
        address: usize::try_from(address).unwrap_or(usize::MAX),
        site: usize::try_from(site).unwrap_or(usize::MAX),
    })
}

fn locked(
    c: &Connection,
    source: &Source<'_>,
    lockout: &Lockout,
    now: DateTime<Utc>,
) -> Result<Option<Lock>, StoreError> {
    Ok(lockout.lock(source, &recent(c, source, lockout, now)?, now))
}

/// A tag presented at a charger.
pub(super) struct Attempt<'a> {
    pub cp_id: &'a str,
    /// Where the charger's connection comes from.
    pub origin: &'a Origin,
    /// Known at StartTransaction, not at Authorize.
    pub connector_id: Option<u32>,
    pub presented: &'a Presented,
    pub free_vend: bool,
    /// Whether the uplink is up (`[auth] unknown_tags = "accept_offline"`).
    pub uplink_online: bool,
    /// StartTransaction (uses are spent) rather than Authorize.
    pub consume: bool,
    pub now: DateTime<Utc>,
}

impl Attempt<'_> {
    fn source(&self) -> Source<'_> {
        self.origin.source(self.cp_id)
    }
}

/// A `session.start` request.
pub(super) struct RemoteRequest<'a> {
    pub order_id: &'a str,
    pub otp_hash: &'a OtpHash,
    pub cp_id: &'a str,
    pub connector_id: u32,
    /// The agent-controlled tag the charger will present.
    pub tag: &'a str,
    pub now: DateTime<Utc>,
}

/// Counts a wrong code toward the lockouts, and spends a use of an accepted OTP when the
/// decision starts a session.
fn record(
    c: &Connection,
    source: &Source<'_>,
    outcome: &OtpOutcome,
    spend: bool,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if outcome.is_failure() {
        c.prepare_cached("INSERT INTO otp_failures (cp_id, at_ms, remote) VALUES (?1, ?2, ?3)")?
            .execute(params![source.cp_id, ms(now), source.remote])?;
    }
    if let (OtpOutcome::Accepted { order_id }, true) = (outcome, spend) {
        c.execute(
            "UPDATE authorizations SET uses = uses + 1 WHERE order_id = ?1",
            params![order_id],
        )?;
    }
    Ok(())
}

/// Records a decision upstream as `auth.checked`; attempts refused because OTP entry is
/// locked are counted and reported in aggregate (see [`auth::BlockedTally`]), so an
/// attack that keeps guessing writes one event per charger a minute, not one per guess.
pub(super) fn report(
    c: &Connection,
    ctx: &Ctx,
    a: &Attempt<'_>,
    d: &AuthDecision,
) -> Result<(), StoreError> {
    if d.result != AuthResult::Blocked {
        return insert_event(c, a.now, &auth_event(a.cp_id, a.connector_id, d, None));
    }
    let due = ctx.blocked.lock().unwrap_or_else(|p| p.into_inner()).note(
        &a.source(),
        a.connector_id,
        d.method,
        a.now,
    );
    match due {
        Some(r) => insert_event(c, a.now, &blocked_event(&r)),
        None => Ok(()),
    }
}

/// The `auth.checked` event for a decision (`count`: attempts it stands for, when
/// aggregated).
pub(super) fn auth_event(
    cp_id: &str,
    connector_id: Option<u32>,
    d: &AuthDecision,
    count: Option<u64>,
) -> Event {
    Event::AuthChecked {
        cp_id: cp_id.to_string(),
        connector_id,
        method: d.method.as_str(),
        result: d.result.as_str(),
        order_id: d.order_id.clone(),
        count,
    }
}

fn blocked_event(r: &auth::BlockedReport) -> Event {
    Event::AuthChecked {
        cp_id: r.cp_id.clone(),
        connector_id: r.connector_id,
        method: r.method.as_str(),
        result: AuthResult::Blocked.as_str(),
        order_id: None,
        count: Some(r.count),
    }
}

/// Housekeeping: reports the blocked attempts whose interval has passed, and forgets
/// wrong codes older than any limit looks back (an attack must not grow the table).
pub(super) fn housekeep(c: &Connection, ctx: &Ctx, now: DateTime<Utc>) -> Result<(), StoreError> {
    let due = ctx
        .blocked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .flush(now);
    for r in &due {
        insert_event(c, now, &blocked_event(r))?;
    }
    c.prepare_cached("DELETE FROM otp_failures WHERE at_ms < ?1")?
        .execute(params![ms(now - ctx.lockout.horizon())])?;
    // skipped offline-order counters whose time has run out a day ago
    c.prepare_cached(
        "DELETE FROM offline_counters WHERE used_ms IS NULL AND skipped_ms <
             ?1 - 60000 * (SELECT valid_minutes FROM offline_orders) - 86400000",
    )?
    .execute(params![ms(now)])?;
    Ok(())
}

/// Judges a presented tag at a charger. With `consume`, an accepted OTP uses one of its
/// uses and an agent-issued remote tag is spent (StartTransaction); without, nothing is
/// used (Authorize). Wrong OTP-shaped codes are counted for the lockout.
pub(super) fn decide(
    c: &Connection,
    ctx: &Ctx,
    a: &Attempt<'_>,
) -> Result<AuthDecision, StoreError> {
    let lockout = &ctx.lockout;
    let source = a.source();
    let &Attempt {
        cp_id,
        connector_id,
        presented,
        free_vend,
        consume,
        now,
        ..
    } = a;
    // an agent-issued tag from session.start
    let remote: Option<(String, i64)> = c
        .prepare_cached(
            "SELECT order_id, connector_id FROM remote_starts
             WHERE tag = ?1 AND cp_id = ?2 AND created_ms >= ?3 AND used = 0",
        )?
        .query_row(
            params![
                presented.tag_key,
                cp_id,
                ms(now - Duration::minutes(REMOTE_TAG_TTL_MINUTES))
            ],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((order_id, _)) = remote {
        // A commissioning test session (`chargesite charger … test-session`) has no order.
        let order_id = (!order_id.is_empty()).then_some(order_id);
        if consume {
            c.execute(
                "UPDATE remote_starts SET used = 1 WHERE tag = ?1",
                params![presented.tag_key],
            )?;
        }
        return Ok(AuthDecision {
            method: AuthMethod::Remote,
            result: AuthResult::Accepted,
            order_id,
            tag_key: presented.tag_key.clone(),
            offline_counter: None,
            unverified: false,
        });
    }
    let Some(hash) = presented.otp_hash else {
        // A card UID can be guessed as well as a code can: an unknown tag counts toward
        // the same lock-outs, and while they hold every tag is refused, cards included.
        if !free_vend && locked(c, &source, lockout, now)?.is_some() {
            return Ok(AuthDecision {
                method: AuthMethod::Rfid,
                result: AuthResult::Blocked,
                order_id: None,
                tag_key: presented.tag_key.clone(),
                offline_counter: None,
                unverified: false,
            });
        }
        let card = fleet_card(c, &presented.tag_hash)?;
        let d = auth::check_tag_policy(
            &presented.tag_key,
            card.as_ref(),
            free_vend,
            ctx.unknown_tags,
            a.uplink_online,
            now,
        );
        // An empty token (2.0.1 `NoAuthorization`, a tagless start) guesses nothing.
        let guess = presented.tag_hash != auth::tag_hash(&ctx.secret, "");
        if d.result == AuthResult::Invalid && guess {
            record(c, &source, &OtpOutcome::Invalid, false, now)?;
        }
        return Ok(d);
    };
    let is_locked = locked(c, &source, lockout, now)?.is_some();
    let outcome = auth::check_otp(
        &hash,
        &candidates(c, now)?,
        cp_id,
        connector_id,
        now,
        is_locked,
    );
    if outcome == OtpOutcome::Invalid {
        // not a provisioned OTP: perhaps an order the BPP confirmed while we were offline
        if let Some(d) = offline_order(c, ctx, a, &hash)? {
            return Ok(d);
        }
        // ... or a fleet card whose UID is all digits: a card, not a guess
        if let Some(card) = fleet_card(c, &presented.tag_hash)? {
            return Ok(auth::check_tag_policy(
                &presented.tag_key,
                Some(&card),
                free_vend,
                ctx.unknown_tags,
                a.uplink_online,
                now,
            ));
        }
    }
    if outcome == OtpOutcome::Invalid && free_vend {
        // digits that are no OTP: on a free-vend site every tag is accepted
        return Ok(auth::check_tag(&presented.tag_key, true));
    }
    record(c, &source, &outcome, consume, now)?;
    Ok(AuthDecision {
        method: AuthMethod::Otp,
        result: outcome.result(),
        order_id: outcome.order_id().map(str::to_string),
        tag_key: presented.tag_key.clone(),
        offline_counter: None,
        unverified: false,
    })
}

/// Builds before schema 8 stored a session's id tag and an agent's remote-start tag in
/// clear: replaces each by its keyed hash ([`auth::tag_key`]), once, at open (the secret
/// the hash needs is not available to a SQL migration; `meta.tags_hashed` records that it
/// ran, so later starts skip the scan). OTPs were always hashed.
pub(super) fn hash_clear_tags(
    c: &mut Connection,
    secret: &auth::Secret,
) -> Result<usize, StoreError> {
    let tx = c.transaction()?;
    let done: bool = tx.query_row(
        "SELECT count(*) > 0 FROM meta WHERE key = 'tags_hashed'",
        [],
        |r| r.get(0),
    )?;
    if done {
        return Ok(0);
    }
    let mut n = 0;
    for (table, key, column) in [
        ("sessions", "transaction_id", "id_tag"),
        ("remote_starts", "rowid", "tag"),
    ] {
        let rows: Vec<(i64, String)> = tx
            .prepare(&format!(
                "SELECT {key}, {column} FROM {table}
                 WHERE {column} != '' AND {column} NOT LIKE 'otp:%' AND {column} NOT LIKE 'tag:%'"
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (k, tag) in rows {
            n += tx.execute(
                &format!("UPDATE {table} SET {column} = ?1 WHERE {key} = ?2"),
                params![auth::tag_key(secret, &tag), k],
            )?;
        }
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('tags_hashed', '1')",
        [],
    )?;
    tx.commit()?;
    Ok(n)
}

/// A fleet card from `tags.upsert` (the UID in memory only until it is sealed).
#[derive(Clone, PartialEq)]
pub struct NewTag {
    /// The card's UID (hex), as presented.
    pub id_tag: String,
    /// `ISO14443` (default) or `ISO15693`.
    pub id_type: String,
    /// Not valid after, if set.
    pub valid_until: Option<DateTime<Utc>>,
    /// The fleet it belongs to.
    pub fleet: Option<String>,
}

impl std::fmt::Debug for NewTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewTag")
            .field("id_tag", &"(hidden)")
            .field("id_type", &self.id_type)
            .field("valid_until", &self.valid_until)
            .field("fleet", &self.fleet)
            .finish()
    }
}

/// What a fleet card's UID is sealed for.
const FLEET_TAG: &str = "fleet-tag";

/// Stores (or updates) fleet cards; how many.
pub(super) fn upsert_tags(
    c: &Connection,
    ctx: &Ctx,
    tags: &[NewTag],
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    for t in tags {
        let uid = t.id_tag.to_ascii_uppercase();
        let sealed = ctx
            .sealer
            .seal(FLEET_TAG, uid.as_bytes())
            .map_err(|e| StoreError::Random(e.to_string()))?;
        c.prepare_cached(
            "INSERT INTO fleet_tags (tag_hash, sealed, id_type, fleet, valid_until_ms, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (tag_hash) DO UPDATE SET sealed = ?2, id_type = ?3, fleet = ?4,
                 valid_until_ms = ?5, updated_at = ?6",
        )?
        .execute(params![
            auth::tag_hash(&ctx.secret, &t.id_tag).to_vec(),
            sealed,
            t.id_type,
            t.fleet,
            t.valid_until.map(ms),
            fmt_ts(now)
        ])?;
    }
    if !tags.is_empty() {
        bump_list_version(c)?;
    }
    Ok(tags.len())
}

/// Raises the site's local list version (the cards changed): every charger's list is
/// stale until it is sent again.
fn bump_list_version(c: &Connection) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('local_list_version', '1')
         ON CONFLICT (key) DO UPDATE
             SET value = CAST(CAST(value AS INTEGER) % 2147483647 + 1 AS TEXT)",
    )?
    .execute([])?;
    Ok(())
}

/// The site's local authorization list for charger `cp_id`: the version (0 before any
/// card), the version the charger last accepted, and the cards still valid, opened.
pub(super) fn local_list(
    c: &Connection,
    ctx: &Ctx,
    cp_id: &str,
    now: DateTime<Utc>,
) -> Result<LocalList, StoreError> {
    let site_version: i64 = c
        .query_row(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'local_list_version'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let charger_version: Option<i64> = c
        .query_row(
            "SELECT local_list_version FROM chargers WHERE cp_id = ?1",
            params![cp_id],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let rows: Vec<(Vec<u8>, String, Option<i64>)> = c
        .prepare_cached(
            "SELECT sealed, id_type, valid_until_ms FROM fleet_tags
             WHERE valid_until_ms IS NULL OR valid_until_ms >= ?1 ORDER BY tag_hash",
        )?
        .query_map(params![ms(now)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut entries = Vec::with_capacity(rows.len());
    for (sealed, id_type, until) in rows {
        let Some(uid) = ctx
            .sealer
            .open(FLEET_TAG, &sealed)
            .and_then(|b| String::from_utf8(b).ok())
        else {
            tracing::error!(
                "a fleet card does not open with this site's secret; left off the local lists"
            );
            continue;
        };
        entries.push(ListedCard {
            id_tag: uid,
            id_type,
            expiry: until
                .map(|u| from_ms(u, || "fleet_tags.valid_until_ms".into()))
                .transpose()?,
        });
    }
    let version = |v: i64| {
        i32::try_from(v).map_err(|_| StoreError::Corrupt(format!("local list version {v}")))
    };
    Ok(LocalList {
        site_version: version(site_version)?,
        charger_version: charger_version.map(version).transpose()?,
        entries,
    })
}

/// A card as a charger's local list needs it: the UID in clear (it crosses OCPP so), never
/// in a log line.
#[derive(Clone, PartialEq)]
pub struct ListedCard {
    /// The UID, upper case.
    pub id_tag: String,
    /// `ISO14443` or `ISO15693`.
    pub id_type: String,
    /// Not valid after.
    pub expiry: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for ListedCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListedCard")
            .field("id_tag", &"(hidden)")
            .field("id_type", &self.id_type)
            .field("expiry", &self.expiry)
            .finish()
    }
}

/// The site's local list as a charger should hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalList {
    /// The site's version (0: no card was ever registered: nothing to send).
    pub site_version: i32,
    /// The version the charger last accepted.
    pub charger_version: Option<i32>,
    /// The cards still valid.
    pub entries: Vec<ListedCard>,
}

/// Charger `cp_id` accepted the site's list at `version`.
pub(super) fn local_list_sent(c: &Connection, cp_id: &str, version: i32) -> Result<(), StoreError> {
    c.prepare_cached("UPDATE chargers SET local_list_version = ?2 WHERE cp_id = ?1")?
        .execute(params![cp_id, version])?;
    Ok(())
}

/// Removes fleet cards; how many were known.
pub(super) fn remove_tags(
    c: &Connection,
    ctx: &Ctx,
    id_tags: &[String],
) -> Result<usize, StoreError> {
    let mut removed = 0;
    for t in id_tags {
        removed += c
            .prepare_cached("DELETE FROM fleet_tags WHERE tag_hash = ?1")?
            .execute(params![auth::tag_hash(&ctx.secret, t).to_vec()])?;
    }
    if removed > 0 {
        bump_list_version(c)?;
    }
    Ok(removed)
}

/// The fleet card with this keyed hash, if the site knows one.
fn fleet_card(c: &Connection, tag_hash: &OtpHash) -> Result<Option<auth::FleetCard>, StoreError> {
    let row: Option<(Option<i64>, Option<String>)> = c
        .prepare_cached("SELECT valid_until_ms, fleet FROM fleet_tags WHERE tag_hash = ?1")?
        .query_row(params![tag_hash.to_vec()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(until, fleet)| {
        Ok(auth::FleetCard {
            valid_until: until
                .map(|u| from_ms(u, || "fleet_tags.valid_until_ms".into()))
                .transpose()?,
            fleet,
        })
    })
    .transpose()
}

/// `offline_orders.configure` as parsed: the key is in memory only until it is sealed.
#[derive(Clone, PartialEq)]
pub struct OfflineOrders {
    /// The key shared with the BPP (32 bytes).
    pub key: Vec<u8>,
    /// Code length, 6 to 8.
    pub digits: u32,
    /// How far past the highest used counter a code may be (1 to 100).
    pub lookahead: u32,
    /// What a session started with such a code is priced and capped by.
    pub terms: Terms,
    /// How long a counter skipped by a later one stays usable.
    pub valid_minutes: u32,
}

impl std::fmt::Debug for OfflineOrders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineOrders")
            .field("key", &"(hidden)")
            .field("digits", &self.digits)
            .field("lookahead", &self.lookahead)
            .field("terms", &self.terms)
            .field("valid_minutes", &self.valid_minutes)
            .finish()
    }
}

/// What the offline-orders key is sealed for (the AEAD's associated data).
const OFFLINE_KEY: &str = "offline-orders-key";
/// Used counters kept for telling a reused code from a guess, and skipped ones looked at.
const OFFLINE_RECENT: i64 = 1000;

/// Stores a configuration (the key sealed); a new key starts a new counter sequence, so
/// the counters used under the old one are forgotten, while the same key again keeps
/// them. True when another key was replaced (rotated).
pub(super) fn configure_offline(
    c: &Connection,
    ctx: &Ctx,
    o: &OfflineOrders,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let sealed = ctx
        .sealer
        .seal(OFFLINE_KEY, &o.key)
        .map_err(|e| StoreError::Random(e.to_string()))?;
    let old: Option<(Vec<u8>, Option<i64>)> = c
        .query_row("SELECT sealed_key, highest FROM offline_orders", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    // The same key again (a retry, or the BPP provisioning after its own restart) keeps
    // the counters used under it: a used code must never work twice.
    let same_key = old.as_ref().is_some_and(|(k, _)| {
        ctx.sealer
            .open(OFFLINE_KEY, k)
            .is_some_and(|k| k.len() == o.key.len() && auth::ct_eq_bytes(&k, &o.key))
    });
    let rotated = old.is_some() && !same_key;
    let highest = if same_key {
        old.and_then(|(_, h)| h)
    } else {
        None
    };
    let b = o.terms.budget.as_ref();
    c.execute(
        "INSERT OR REPLACE INTO offline_orders (id, sealed_key, digits, lookahead, valid_minutes,
             tariff, budget_currency, budget_minor, prepaid, highest, configured_at)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10, ?9)",
        params![
            sealed,
            o.digits,
            o.lookahead,
            o.valid_minutes,
            o.terms.tariff,
            b.map(|b| b.currency.clone()),
            b.map(|b| b.amount_minor),
            b.map(|b| b.prepaid),
            fmt_ts(now),
            highest
        ],
    )?;
    if !same_key {
        c.execute("DELETE FROM offline_counters", [])?;
    }
    Ok(rotated)
}

/// The configured window with its counters, if offline orders are configured and the key
/// opens (a key sealed under another site secret is reported, and then matches nothing).
fn offline_window(c: &Connection, ctx: &Ctx) -> Result<Option<auth::OfflineWindow>, StoreError> {
    type Row = (Vec<u8>, u32, u32, i64, Option<i64>);
    let row: Option<Row> = c
        .prepare_cached(
            "SELECT sealed_key, digits, lookahead, valid_minutes, highest FROM offline_orders",
        )?
        .query_row([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let Some((sealed, digits, lookahead, valid_minutes, highest)) = row else {
        return Ok(None);
    };
    let Some(key) = ctx.sealer.open(OFFLINE_KEY, &sealed) else {
        tracing::error!(
            "the offline-orders key does not open with this site's secret; configure it again"
        );
        return Ok(None);
    };
    let counter =
        |v: i64| u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("offline counter {v}")));
    let skipped = c
        .prepare_cached(
            "SELECT counter, skipped_ms FROM offline_counters
             WHERE used_ms IS NULL AND skipped_ms IS NOT NULL ORDER BY counter DESC LIMIT ?1",
        )?
        .query_map(params![OFFLINE_RECENT], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?
        .map(|r| {
            let (n, at) = r?;
            Ok((
                counter(n)?,
                from_ms(at, || "offline_counters.skipped_ms".into())?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let used = c
        .prepare_cached(
            "SELECT counter FROM offline_counters WHERE used_ms IS NOT NULL
             ORDER BY counter DESC LIMIT ?1",
        )?
        .query_map(params![OFFLINE_RECENT.min(i64::from(lookahead) * 2)], |r| {
            r.get::<_, i64>(0)
        })?
        .map(|r| counter(r?))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(auth::OfflineWindow {
        key,
        digits,
        lookahead: u64::from(lookahead),
        highest: highest.map(counter).transpose()?,
        skipped,
        used,
        valid: Duration::minutes(valid_minutes),
    }))
}

/// Spends counter `n`: the counters it skips become usable for `valid_minutes`.
fn use_counter(
    c: &Connection,
    w: &auth::OfflineWindow,
    n: u64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let stored =
        |v: u64| i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("offline counter {v}")));
    if w.highest.is_none_or(|h| n > h) {
        let first = w.highest.map_or(0, |h| h + 1);
        for k in first..n {
            c.prepare_cached(
                "INSERT OR IGNORE INTO offline_counters (counter, skipped_ms) VALUES (?1, ?2)",
            )?
            .execute(params![stored(k)?, ms(now)])?;
        }
        c.prepare_cached("UPDATE offline_orders SET highest = ?1")?
            .execute(params![stored(n)?])?;
    }
    c.prepare_cached(
        "INSERT INTO offline_counters (counter, used_ms) VALUES (?1, ?2)
         ON CONFLICT (counter) DO UPDATE SET used_ms = ?2",
    )?
    .execute(params![stored(n)?, ms(now)])?;
    Ok(())
}

/// A code that is no provisioned OTP, judged as an offline-confirmed order's: `None` when
/// it matches no counter (it is then a wrong code like any other).
fn offline_order(
    c: &Connection,
    ctx: &Ctx,
    a: &Attempt<'_>,
    hash: &OtpHash,
) -> Result<Option<AuthDecision>, StoreError> {
    let Some(w) = offline_window(c, ctx)? else {
        return Ok(None);
    };
    let (result, counter) = match w.check(hash, &ctx.secret, a.now) {
        auth::OfflineMatch::None => return Ok(None),
        auth::OfflineMatch::Accepted(n) => {
            if a.consume {
                use_counter(c, &w, n, a.now)?;
            }
            (AuthResult::Accepted, n)
        }
        auth::OfflineMatch::Used(n) => (AuthResult::Used, n),
        auth::OfflineMatch::Expired(n) => (AuthResult::Expired, n),
    };
    Ok(Some(AuthDecision {
        method: AuthMethod::Otp,
        result,
        order_id: None,
        tag_key: a.presented.tag_key.clone(),
        offline_counter: Some(counter),
        unverified: false,
    }))
}

/// The terms a decision brings to its session: its order's, or the offline-orders
/// configuration's for a derived code; none unless it was accepted.
pub(super) fn terms_of(c: &Connection, d: &AuthDecision) -> Result<Terms, StoreError> {
    if d.result != AuthResult::Accepted {
        return Ok(Terms::default());
    }
    if let Some(order) = &d.order_id {
        return terms(c, order);
    }
    if d.offline_counter.is_none() {
        return Ok(Terms::default());
    }
    terms_row(
        c,
        "SELECT budget_currency, budget_minor, prepaid, tariff FROM offline_orders",
        [],
    )
}

/// The terms in the row `sql` selects (budget currency, amount, prepaid, tariff); none
/// when it selects no row.
fn terms_row(c: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Terms, StoreError> {
    let row = c
        .prepare_cached(sql)?
        .query_row(p, |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<bool>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?;
    Ok(
        row.map_or_else(Terms::default, |(currency, amount, prepaid, tariff)| {
            terms_from(currency, amount, prepaid, tariff)
        }),
    )
}

fn terms_from(
    currency: Option<String>,
    amount: Option<i64>,
    prepaid: Option<bool>,
    tariff: Option<String>,
) -> Terms {
    Terms {
        tariff,
        budget: match (currency, amount) {
            (Some(currency), Some(amount_minor)) => Some(Budget {
                currency,
                amount_minor,
                prepaid: prepaid.unwrap_or(true),
            }),
            _ => None,
        },
    }
}

/// What `session.start` decided.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteStarted {
    /// The OTP check.
    pub decision: AuthDecision,
    /// When accepted: the `remoteStartId` for a 2.0.1 RequestStartTransaction, unique
    /// in this database (1.6 has no use for it).
    pub remote_start_id: Option<i32>,
}

/// The next `remoteStartId`: a counter in `meta`, so that an id is never reused even when
/// a refused start's row is deleted (a charger that timed out may still start, and its
/// TransactionEvent must not be matched to a later order). Wraps to 1 after `i32::MAX`.
fn next_remote_start_id(c: &Connection) -> Result<i32, StoreError> {
    let id: i64 = c
        .prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('last_remote_start_id', '1')
             ON CONFLICT (key) DO UPDATE
                 SET value = CAST(CAST(value AS INTEGER) % 2147483647 + 1 AS TEXT)
             RETURNING CAST(value AS INTEGER)",
        )?
        .query_row([], |r| r.get(0))?;
    i32::try_from(id)
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| StoreError::Corrupt(format!("meta last_remote_start_id: {id}")))
}

/// `session.start`: validates the OTP for the charger and connector, spends a use, and
/// registers the agent-controlled tag the charger will present, with a fresh
/// `remoteStartId`.
pub(super) fn remote_start(
    c: &Connection,
    ctx: &Ctx,
    r: RemoteRequest<'_>,
) -> Result<RemoteStarted, StoreError> {
    let lockout = &ctx.lockout;
    let RemoteRequest {
        order_id,
        otp_hash,
        cp_id,
        connector_id,
        tag,
        now,
    } = r;
    // The BPP asks, not a guessing source on site: only the charger's own lockout applies
    // (its wrong codes still count toward it).
    let origin = Origin {
        remote: None,
        known: true,
    };
    let source = origin.source(cp_id);
    let is_locked = locked(c, &source, lockout, now)?.is_some();
    let records: Vec<OtpRecord> = candidates(c, now)?
        .into_iter()
        .filter(|r| r.order_id == order_id)
        .collect();
    let outcome = auth::check_otp(
        otp_hash,
        &records,
        cp_id,
        Some(connector_id),
        now,
        is_locked,
    );
    record(c, &source, &outcome, true, now)?;
    // the charger will present the agent's tag: stored, like every tag, only as its hash
    let tag = auth::tag_key(&ctx.secret, tag);
    let mut remote_start_id = None;
    if let OtpOutcome::Accepted { order_id } = &outcome {
        let id = next_remote_start_id(c)?;
        c.execute(
            "INSERT INTO remote_starts
                 (tag, order_id, cp_id, connector_id, created_ms, used, remote_start_id)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
            params![tag, order_id, cp_id, connector_id, ms(now), id],
        )?;
        remote_start_id = Some(id);
    }
    Ok(RemoteStarted {
        decision: AuthDecision {
            method: AuthMethod::Remote,
            result: outcome.result(),
            order_id: Some(order_id.to_string()),
            tag_key: tag.to_string(),
            offline_counter: None,
            unverified: false,
        },
        remote_start_id,
    })
}

/// A commissioning test session's remote start (`chargesite charger … test-session`, by
/// an engineer with the local API's socket or password): `tag` is accepted on this
/// charger, as a `session.start` tag is, for [`REMOTE_TAG_TTL_MINUTES`], with no order
/// (stored as `''`) and no OTP; returns the 2.0.1 `remoteStartId` allocated for it.
/// `tag` is the tag's stored form ([`auth::tag_key`]).
pub(super) fn test_start(
    c: &Connection,
    tag: &str,
    cp_id: &str,
    connector_id: u32,
    now: DateTime<Utc>,
) -> Result<i32, StoreError> {
    let id = next_remote_start_id(c)?;
    c.execute(
        "INSERT INTO remote_starts
             (tag, order_id, cp_id, connector_id, created_ms, used, remote_start_id)
         VALUES (?1, '', ?2, ?3, ?4, 0, ?5)
         ON CONFLICT (tag) DO UPDATE SET cp_id = ?2, connector_id = ?3, created_ms = ?4,
             used = 0, remote_start_id = ?5",
        params![tag, cp_id, connector_id, ms(now), id],
    )?;
    Ok(id)
}

/// The charger refused the remote start: the use is given back and the tag (its stored
/// form, [`auth::tag_key`]) withdrawn.
pub(super) fn remote_start_failed(c: &Connection, tag: &str) -> Result<(), StoreError> {
    let order: Option<String> = c
        .query_row(
            "SELECT order_id FROM remote_starts WHERE tag = ?1 AND used = 0",
            params![tag],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(order_id) = order {
        c.execute(
            "UPDATE authorizations SET uses = max(uses - 1, 0) WHERE order_id = ?1",
            params![order_id],
        )?;
        c.execute("DELETE FROM remote_starts WHERE tag = ?1", params![tag])?;
    }
    Ok(())
}
