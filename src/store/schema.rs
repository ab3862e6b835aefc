//! Versioned migrations, applied in order inside one transaction each and tracked by
//! SQLite's `user_version`. A migration is never edited once released: add a new one.

use rusqlite::Connection;

use super::StoreError;

/// Every migration, oldest first; `user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: chargers, connectors, sessions, meter values, unmatched stops, the outbox.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;

    CREATE TABLE chargers (
        cp_id                TEXT PRIMARY KEY,
        vendor               TEXT,
        model                TEXT,
        serial               TEXT,
        firmware             TEXT,
        booted_at            TEXT,
        online               INTEGER NOT NULL DEFAULT 0,
        ocpp_version         TEXT,
        connected_at         TEXT,
        disconnected_at      TEXT,
        disconnect_reason    TEXT,
        firmware_status      TEXT,
        diagnostics_status   TEXT,
        clock_flag           TEXT,
        clock_flagged_at     TEXT
    ) STRICT;

    CREATE TABLE connectors (
        cp_id         TEXT NOT NULL,
        connector_id  INTEGER NOT NULL,
        status        TEXT NOT NULL,
        error_code    TEXT NOT NULL,
        info          TEXT,
        charger_ts    TEXT,
        received_at   TEXT NOT NULL,
        PRIMARY KEY (cp_id, connector_id)
    ) STRICT;

    -- transaction_id is the id OCPP chargers see: AUTOINCREMENT never reuses one,
    -- even after rows are deleted, and it starts at 1 (never 0 or -1).
    CREATE TABLE sessions (
        transaction_id     INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id         TEXT NOT NULL UNIQUE,
        cp_id              TEXT NOT NULL,
        connector_id       INTEGER NOT NULL,
        id_tag             TEXT NOT NULL,
        auth_method        TEXT NOT NULL,
        auth_result        TEXT NOT NULL,
        order_id           TEXT,
        reservation_id     INTEGER,
        meter_start_wh     INTEGER NOT NULL,
        started_raw        TEXT NOT NULL,
        started_at         TEXT NOT NULL,
        start_received_at  TEXT NOT NULL,
        uplink_online      INTEGER NOT NULL,
        state              TEXT NOT NULL CHECK (state IN ('active', 'stopped')),
        interrupted        INTEGER NOT NULL DEFAULT 0,
        last_register_wh   INTEGER NOT NULL,
        last_reading_ms    INTEGER NOT NULL,
        last_received_ms   INTEGER NOT NULL,
        energy_wh          INTEGER NOT NULL DEFAULT 0,
        meter_stop_wh      INTEGER,
        stopped_raw        TEXT,
        stopped_at         TEXT,
        stop_received_at   TEXT,
        stop_reason        TEXT,
        stop_id_tag        TEXT,
        flags              TEXT NOT NULL DEFAULT '',
        clock_skew_secs    INTEGER
    ) STRICT;
    -- A replayed StartTransaction (same charger, connector, tag, timestamp, meterStart)
    -- finds its session here and gets the same transaction id.
    CREATE UNIQUE INDEX sessions_replay
        ON sessions (cp_id, connector_id, id_tag, started_raw, meter_start_wh);
    CREATE INDEX sessions_by_charger ON sessions (cp_id, state, connector_id);

    CREATE TABLE meter_values (
        id               INTEGER PRIMARY KEY,
        cp_id            TEXT NOT NULL,
        connector_id     INTEGER NOT NULL,
        transaction_id   INTEGER,
        source           TEXT NOT NULL,
        charger_ts_raw   TEXT NOT NULL,
        charger_ts       TEXT NOT NULL,
        received_at      TEXT NOT NULL,
        context          TEXT,
        energy_wh        INTEGER,
        power_w          INTEGER,
        current_a        REAL,
        voltage_v        REAL,
        soc_pct          REAL,
        flags            TEXT NOT NULL DEFAULT '',
        raw              TEXT NOT NULL
    ) STRICT;
    CREATE INDEX meter_values_by_tx ON meter_values (transaction_id);

    -- StopTransactions that matched no running session: recorded, answered normally.
    CREATE TABLE unmatched_stops (
        id               INTEGER PRIMARY KEY,
        cp_id            TEXT NOT NULL,
        transaction_id   INTEGER NOT NULL,
        kind             TEXT NOT NULL CHECK (kind IN ('unknown', 'duplicate')),
        meter_stop_wh    INTEGER NOT NULL,
        stopped_raw      TEXT NOT NULL,
        received_at      TEXT NOT NULL,
        reason           TEXT
    ) STRICT;

    -- The upstream outbox. seq is the contract's event seq: AUTOINCREMENT makes it
    -- strictly increasing and never reused. body holds the fields beyond seq/type/at.
    CREATE TABLE events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        type       TEXT NOT NULL,
        at         TEXT NOT NULL,
        body       TEXT NOT NULL,
        billable   INTEGER NOT NULL,
        sent_at    TEXT,
        acked      INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX events_unsent ON events (seq) WHERE sent_at IS NULL;
    "#,
    // 2: commands from the BPP, stored before they are acknowledged; their results.
    r#"
    CREATE TABLE commands (
        id            TEXT PRIMARY KEY,
        type          TEXT,
        body          TEXT NOT NULL,
        received_at   TEXT NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('received', 'done')),
        result        TEXT,
        done_at       TEXT,
        published_at  TEXT
    ) STRICT;
    CREATE INDEX commands_unpublished ON commands (state) WHERE published_at IS NULL;
    CREATE INDEX sessions_by_order ON sessions (order_id) WHERE order_id IS NOT NULL;
    "#,
    // 3: OTP authorizations (keyed hashes only), lockouts, remote starts; session billing.
    r#"
    CREATE TABLE authorizations (
        order_id         TEXT PRIMARY KEY,
        otp_hash         BLOB NOT NULL,
        valid_from_ms    INTEGER,
        valid_until_ms   INTEGER NOT NULL,
        cp_id            TEXT,
        connector_id     INTEGER,
        max_uses         INTEGER NOT NULL,
        uses             INTEGER NOT NULL DEFAULT 0,
        revoked          INTEGER NOT NULL DEFAULT 0,
        budget_currency  TEXT,
        budget_minor     INTEGER,
        prepaid          INTEGER,
        tariff           TEXT,
        updated_at       TEXT NOT NULL
    ) STRICT;
    CREATE INDEX authorizations_by_until ON authorizations (valid_until_ms);
    CREATE TABLE otp_failures (
        cp_id   TEXT NOT NULL,
        at_ms   INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX otp_failures_by_cp ON otp_failures (cp_id, at_ms);
    CREATE TABLE remote_starts (
        tag           TEXT PRIMARY KEY,
        order_id      TEXT NOT NULL,
        cp_id         TEXT NOT NULL,
        connector_id  INTEGER NOT NULL,
        created_ms    INTEGER NOT NULL,
        used          INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    ALTER TABLE sessions ADD COLUMN tariff TEXT;
    ALTER TABLE sessions ADD COLUMN budget_currency TEXT;
    ALTER TABLE sessions ADD COLUMN budget_minor INTEGER;
    ALTER TABLE sessions ADD COLUMN prepaid INTEGER;
    ALTER TABLE sessions ADD COLUMN accrual TEXT;
    ALTER TABLE sessions ADD COLUMN budget_stop INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN cost TEXT;
    "#,
    // 4: when each charger was last seen, for the `charger.disconnected` an agent restart
    // writes on its behalf. Written with its connect, boot and heartbeats only; statuses
    // and readings already leave their time in `connectors` and `sessions` (see
    // `chargers::close_after_restart`). From this version on `sessions.interrupted` also
    // says which link broke the session: 0 none, 1 the charger's, 2 the agent's (builds
    // before it wrote 0/1 only, and refuse this version).
    r#"
    ALTER TABLE chargers ADD COLUMN last_seen TEXT;
    UPDATE chargers SET last_seen = connected_at;
    "#,
    // 5: OCPP 2.0.1. A 2.0.1 transaction is a session like a 1.6 one (its integer
    // `transaction_id` stays the store's key; the charger's own string id is
    // `charger_tx_id`, its EVSE the session's `connector_id`). `tx_events` journals every
    // TransactionEvent, appended (a rowid table: no B-tree page in the middle per
    // reading); events are idempotent on (charger, transactionId, seqNo) through the
    // session's `last_seq_no` (every seqNo up to it applied) and, for the few that came
    // out of order or after `Ended` (recorded, never applied), the partial index
    // `tx_events_out_of_order`. `announced` is 0 while a transaction
    // that began without an idToken has not yet had its `session.started` published.
    r#"
    ALTER TABLE sessions ADD COLUMN charger_tx_id TEXT;
    ALTER TABLE sessions ADD COLUMN last_seq_no INTEGER;
    ALTER TABLE sessions ADD COLUMN remote_start_id INTEGER;
    ALTER TABLE sessions ADD COLUMN announced INTEGER NOT NULL DEFAULT 1;
    CREATE UNIQUE INDEX sessions_by_charger_tx ON sessions (cp_id, charger_tx_id)
        WHERE charger_tx_id IS NOT NULL;
    ALTER TABLE remote_starts ADD COLUMN remote_start_id INTEGER;
    CREATE TABLE tx_events (
        id              INTEGER PRIMARY KEY,
        cp_id           TEXT NOT NULL,
        charger_tx_id   TEXT NOT NULL,
        seq_no          INTEGER NOT NULL,
        event_type      TEXT NOT NULL,
        trigger_reason  TEXT NOT NULL,
        offline         INTEGER NOT NULL,
        charger_ts_raw  TEXT NOT NULL,
        received_at     TEXT NOT NULL,
        applied         INTEGER NOT NULL,
        out_of_order    INTEGER NOT NULL
    ) STRICT;
    CREATE UNIQUE INDEX tx_events_out_of_order ON tx_events (cp_id, charger_tx_id, seq_no)
        WHERE out_of_order = 1;
    CREATE TABLE evse_connectors (
        cp_id         TEXT NOT NULL,
        evse_id       INTEGER NOT NULL,
        connector_id  INTEGER NOT NULL,
        status        TEXT NOT NULL,
        charger_ts    TEXT,
        received_at   TEXT NOT NULL,
        PRIMARY KEY (cp_id, evse_id, connector_id)
    ) STRICT;
    CREATE TABLE security_events (
        id              INTEGER PRIMARY KEY,
        cp_id           TEXT NOT NULL,
        type            TEXT NOT NULL,
        charger_ts_raw  TEXT NOT NULL,
        tech_info       TEXT,
        received_at     TEXT NOT NULL
    ) STRICT;
    CREATE TABLE report_parts (
        cp_id        TEXT NOT NULL,
        request_id   INTEGER NOT NULL,
        seq_no       INTEGER NOT NULL,
        tbc          INTEGER NOT NULL,
        body         TEXT NOT NULL,
        received_at  TEXT NOT NULL,
        PRIMARY KEY (cp_id, request_id, seq_no)
    ) STRICT;
    CREATE TABLE device_model (
        cp_id      TEXT NOT NULL,
        key        TEXT NOT NULL,
        component  TEXT NOT NULL,
        variable   TEXT NOT NULL,
        attribute  TEXT NOT NULL,
        value      TEXT,
        mutability TEXT,
        detail     TEXT NOT NULL,
        report_id  INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (cp_id, key)
    ) STRICT;
    "#,
    // 6: site-wide OTP guessing limits. A wrong code remembers the remote address it came
    // from; the site and per-address budgets count by time, the per-charger lockout by
    // charger. Rows older than every limit's look-back are deleted by housekeeping.
    r#"
    ALTER TABLE otp_failures ADD COLUMN remote TEXT;
    CREATE INDEX otp_failures_by_at ON otp_failures (at_ms);
    CREATE INDEX otp_failures_by_remote ON otp_failures (remote, at_ms) WHERE remote IS NOT NULL;
    "#,
    // 7: orders confirmed while the site is offline (`offline_orders.configure`, RFC 4226
    // HOTP). One configuration row; its key only sealed under the site secret. A counter
    // is a row once it is used (`used_ms`) or skipped by a later one (`skipped_ms`: it
    // stays usable for `valid_minutes`). A session started by one names its counter.
    r#"
    CREATE TABLE offline_orders (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        sealed_key      BLOB NOT NULL,
        digits          INTEGER NOT NULL,
        lookahead       INTEGER NOT NULL,
        valid_minutes   INTEGER NOT NULL,
        tariff          TEXT,
        budget_currency TEXT,
        budget_minor    INTEGER,
        prepaid         INTEGER,
        highest         INTEGER,
        configured_at   TEXT NOT NULL
    ) STRICT;
    CREATE TABLE offline_counters (
        counter     INTEGER PRIMARY KEY,
        used_ms     INTEGER,
        skipped_ms  INTEGER
    ) STRICT;
    ALTER TABLE sessions ADD COLUMN offline_counter INTEGER;
    "#,
    // 8: fleet RFID cards (`tags.upsert`). Found by the keyed hash of the upper-cased UID;
    // the UID itself only sealed under the site secret (chargers' local lists need it in
    // clear over OCPP, nothing else does).
    r#"
    CREATE TABLE fleet_tags (
        tag_hash        BLOB PRIMARY KEY,
        sealed          BLOB NOT NULL,
        id_type         TEXT NOT NULL,
        fleet           TEXT,
        valid_until_ms  INTEGER,
        updated_at      TEXT NOT NULL
    ) STRICT;
    "#,
    // 9: the local authorization list version each charger last accepted (SendLocalList);
    // the site's own version is `meta.local_list_version`, raised with every card change.
    r#"
    ALTER TABLE chargers ADD COLUMN local_list_version INTEGER;
    "#,
    // 10: reservations with a grace period (`reservation.upsert`): the connector is the
    // order's from `start_ms` until `expires_ms` (start + grace); `stage` scheduled until
    // the charger accepts ReserveNow, held, then released for `reason`.
    r#"
    CREATE TABLE reservations (
        reservation_id  INTEGER PRIMARY KEY,
        order_id        TEXT NOT NULL UNIQUE,
        cp_id           TEXT NOT NULL,
        connector_id    INTEGER NOT NULL,
        start_ms        INTEGER NOT NULL,
        end_ms          INTEGER,
        expires_ms      INTEGER NOT NULL,
        stage           TEXT NOT NULL CHECK (stage IN ('scheduled', 'held', 'released')),
        reason          TEXT,
        updated_at      TEXT NOT NULL
    ) STRICT;
    CREATE INDEX reservations_live ON reservations (cp_id, connector_id)
        WHERE stage != 'released';
    "#,
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`VERSION`].
///
/// # Errors
/// [`StoreError::Sqlite`] on a failed migration (nothing of it is applied), or
/// [`StoreError::TooNew`] when the file was written by a newer build.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
