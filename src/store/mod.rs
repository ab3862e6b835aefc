//! The store: one thread owns the SQLite connection; everyone else holds a cloneable
//! [`Store`] handle over a bounded channel and awaits the reply.
//!
//! Writes are grouped: the thread takes every job waiting at that moment (up to
//! `max_batch`), runs them in one `BEGIN IMMEDIATE … COMMIT`, each inside its own savepoint
//! so one failing job cannot undo the others, and only after COMMIT returns does it send
//! the replies. A caller that got `Ok` therefore holds a durable fact (WAL,
//! `synchronous=FULL`), and only then does a charger get its CALLRESULT. One commit costs
//! an fsync; grouping is what lets a gateway keep up with a thousand chargers.

mod ops;
mod orders;
mod outbox;
pub mod schema;

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, watch};

pub use ops::{AuthDecision, MeterIn, Op, Reply, StartTx, StopOutcome, StopTx, SAMPLES_PER_EVENT};
pub use orders::NewAuthorization;
pub use outbox::{ConnectorRow, EventRow, Intake, OutboxStatus, SessionRef};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer chargesite.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// The store thread has stopped (shutdown or a fatal error).
    #[error("store is closed")]
    Closed,
    /// A stored JSON value could not be encoded or decoded.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// An op returned a reply its caller did not expect (a bug, reported not panicked).
    #[error("unexpected store reply: {0}")]
    Unexpected(String),
    /// The database directory could not be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Settings the store thread needs to run the ops.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `[site] id`: prefixes session ids.
    pub site_id: String,
    /// Most jobs grouped into one commit.
    pub max_batch: usize,
    /// Bounds a plausible register step (see `ocpp::meter`).
    pub max_charger_power_w: i64,
    /// How far ahead a charger clock may run before it is flagged.
    pub clock_tolerance_secs: i64,
    /// OTP lockout policy.
    pub lockout: crate::auth::Lockout,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// A cloneable handle to the store thread.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
    last_seq: watch::Receiver<i64>,
}

/// The store thread; join it after every [`Store`] handle is dropped to flush and close.
pub struct StoreThread {
    handle: JoinHandle<()>,
}

impl StoreThread {
    /// Waits for the thread to write its last batch and close the database.
    pub fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("store thread panicked");
        }
    }
}

/// Opens (creating if needed) the database and starts the store thread.
///
/// # Errors
/// [`StoreError`] when the file cannot be opened or migrated.
pub fn open(path: &Path, settings: StoreSettings) -> Result<(Store, StoreThread), StoreError> {
    let mut conn = connect(path)?;
    schema::migrate(&mut conn)?;
    let instance = ops::instance_id(&conn)?;
    let interrupted = outbox::close_interrupted_commands(&conn, crate::time::now())?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "commands interrupted by a restart were closed, not re-run"
        );
    }
    let (seq_tx, seq_rx) = watch::channel(outbox::last_seq(&conn)?);
    let (tx, rx) = mpsc::channel::<Job>(settings.max_batch.max(64) * 2);
    let spawn_error = |source| StoreError::Dir {
        path: path.to_path_buf(),
        source,
    };
    // Checkpoints run beside the writer, not inside its commits (see `checkpointer`).
    conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_CHECKPOINT_PAGES)?;
    let ckpt_conn = connect(path)?;
    let (ckpt_tx, ckpt_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let checkpointer = std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || checkpointer(ckpt_conn, ckpt_rx))
        .map_err(spawn_error)?;
    let handle = std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            run(conn, rx, settings, instance, seq_tx, ckpt_tx, checkpointer);
        })
        .map_err(spawn_error)?;
    Ok((
        Store {
            tx,
            last_seq: seq_rx,
        },
        StoreThread { handle },
    ))
}

/// Opens the file with the durability settings the contract relies on.
///
/// # Errors
/// [`StoreError`] when the file or its directory cannot be opened.
pub fn connect(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl Store {
    /// Runs one op in the next group commit and returns its result once committed.
    ///
    /// # Errors
    /// The op's own error, a failed COMMIT, or [`StoreError::Closed`].
    pub async fn exec(&self, op: Op) -> Result<Reply, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The newest committed event seq, updated after every commit: the uplink waits on it.
    pub fn last_seq(&self) -> watch::Receiver<i64> {
        self.last_seq.clone()
    }
}

/// The store connection checkpoints by itself only when the WAL passes this many pages
/// (~40 MB): a backstop should the checkpoint thread fall behind or fail.
const BACKSTOP_CHECKPOINT_PAGES: i64 = 10_000;

/// Least time between two checkpoints by the checkpoint thread.
const CHECKPOINT_PACE: std::time::Duration = std::time::Duration::from_millis(250);

/// Copies the WAL back into the database file from its own connection, on its own thread.
///
/// With SQLite's default auto-checkpoint, the commit that pushes the WAL past 1,000 pages
/// also writes them all into the database file and fsyncs it, inside the store thread:
/// every charger waiting on that commit waits for the checkpoint too. A PASSIVE checkpoint
/// from a second connection never blocks the writer; the store thread only nudges it after
/// a commit, and it runs at most every [`CHECKPOINT_PACE`]. It ends when the store thread
/// drops its end of the channel.
fn checkpointer(conn: Connection, nudges: std::sync::mpsc::Receiver<()>) {
    while nudges.recv().is_ok() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!("WAL checkpoint failed: {e}");
        }
        std::thread::sleep(CHECKPOINT_PACE);
    }
}

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    settings: StoreSettings,
    instance: String,
    seq_tx: watch::Sender<i64>,
    checkpoint: std::sync::mpsc::SyncSender<()>,
    checkpointer: JoinHandle<()>,
) {
    let ctx = ops::Ctx {
        site_id: settings.site_id.clone(),
        instance,
        max_charger_power_w: settings.max_charger_power_w,
        clock_tolerance_secs: settings.clock_tolerance_secs,
        lockout: settings.lockout,
    };
    let mut batch: Vec<Job> = Vec::with_capacity(settings.max_batch);
    let mut results: Vec<Result<Reply, StoreError>> = Vec::with_capacity(settings.max_batch);
    let mut closing = false;
    while let Some(first) = rx.blocking_recv() {
        closing |= matches!(first.op, Op::Close);
        batch.push(first);
        while batch.len() < settings.max_batch && !closing {
            match rx.try_recv() {
                Ok(job) => {
                    closing |= matches!(job.op, Op::Close);
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let committed = commit_batch(&mut conn, &ctx, &mut batch, &mut results);
        if committed.is_ok() {
            // full means a nudge is already pending: nothing is lost by dropping this one
            let _ = checkpoint.try_send(());
            match outbox::last_seq(&conn) {
                Ok(seq) => {
                    seq_tx.send_if_modified(|v| std::mem::replace(v, seq) != seq);
                }
                Err(e) => tracing::warn!("reading the last seq: {e}"),
            }
        }
        for (job, result) in batch.drain(..).zip(results.drain(..)) {
            let result = match (&committed, result) {
                (Ok(()), r) => r,
                (Err(e), _) => Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                    Some(format!("commit failed: {e}")),
                ))),
            };
            // The caller may have gone away (charger disconnected); the fact is stored.
            let _ = job.reply.send(result);
        }
        if closing {
            break;
        }
    }
    drop(checkpoint);
    if checkpointer.join().is_err() {
        tracing::error!("checkpoint thread panicked");
    }
    if let Err(e) = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
        tracing::warn!("final WAL checkpoint failed: {e}");
    }
    tracing::info!("store closed");
}

fn commit_batch(
    conn: &mut Connection,
    ctx: &ops::Ctx,
    batch: &mut [Job],
    results: &mut Vec<Result<Reply, StoreError>>,
) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in batch.iter_mut() {
        let op = std::mem::replace(&mut job.op, Op::Noop);
        // Each op in its own savepoint, through cached statements: rusqlite's `savepoint()`
        // parses its SQL afresh every time, which cost ~8 % of the agent's CPU at load.
        tx.prepare_cached("SAVEPOINT op")?.execute([])?;
        // A bug in one op must not take the store thread (and every charger) down with it:
        // the op fails, its savepoint is rolled back, the others commit.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ops::apply(&tx, ctx, op)))
            .unwrap_or_else(|_| Err(StoreError::Unexpected("store op panicked".into())));
        if r.is_err() {
            tx.prepare_cached("ROLLBACK TO op")?.execute([])?;
        }
        tx.prepare_cached("RELEASE op")?.execute([])?;
        results.push(r);
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocpp::messages::{self, Request};

    /// A MeterValues op from charger `cp_id` with one reading per register value.
    fn meter_op(cp_id: &str, registers: &[i64]) -> Op {
        let meter_value: Vec<serde_json::Value> = registers
            .iter()
            .enumerate()
            .map(|(i, wh)| {
                serde_json::json!({
                    "timestamp": format!("2026-11-22T10:00:0{i}Z"),
                    "sampledValue": [{"value": wh.to_string()}],
                })
            })
            .collect();
        let payload = serde_json::json!({"connectorId": 1, "meterValue": meter_value});
        let Ok(Request::MeterValues { samples, .. }) = messages::decode("MeterValues", &payload)
        else {
            panic!("test payload does not decode");
        };
        Op::MeterValues(MeterIn {
            cp_id: cp_id.into(),
            connector_id: 1,
            transaction_id: None,
            samples,
            received: crate::time::now(),
        })
    }

    fn rows(conn: &Connection, cp_id: &str) -> i64 {
        conn.query_row(
            "SELECT count(*) FROM meter_values WHERE cp_id = ?1",
            [cp_id],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn a_failing_op_is_rolled_back_alone_and_the_rest_of_its_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("cs.db")).unwrap();
        schema::migrate(&mut conn).unwrap();
        // The second reading of charger BAD fails after its first was written.
        conn.execute_batch(
            "CREATE TRIGGER fail_bad BEFORE INSERT ON meter_values
             WHEN NEW.cp_id = 'BAD' AND NEW.energy_wh = 2
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
        let ctx = ops::Ctx {
            site_id: "site".into(),
            instance: "test".into(),
            max_charger_power_w: 350_000,
            clock_tolerance_secs: 300,
            lockout: crate::auth::Lockout::default(),
        };
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        for op in [
            meter_op("GOOD-1", &[10]),
            meter_op("BAD", &[1, 2]),
            meter_op("GOOD-2", &[20, 21]),
        ] {
            let (reply, rx) = oneshot::channel();
            batch.push(Job { op, reply });
            answers.push(rx);
        }
        let mut results = Vec::new();
        commit_batch(&mut conn, &ctx, &mut batch, &mut results).unwrap();

        assert!(results[0].is_ok());
        assert!(results[1].is_err(), "{:?}", results[1]);
        assert!(results[2].is_ok());
        assert_eq!(rows(&conn, "GOOD-1"), 1);
        assert_eq!(
            rows(&conn, "BAD"),
            0,
            "the failed op's first row was rolled back"
        );
        assert_eq!(rows(&conn, "GOOD-2"), 2);
        // and the batch after it still works: the savepoint statements are reusable
        let mut next = Vec::new();
        let (reply, _rx) = oneshot::channel();
        next.push(Job {
            op: meter_op("GOOD-3", &[30]),
            reply,
        });
        let mut results = Vec::new();
        commit_batch(&mut conn, &ctx, &mut next, &mut results).unwrap();
        assert!(results[0].is_ok());
        assert_eq!(rows(&conn, "GOOD-3"), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_wal_is_checkpointed_beside_the_writer_and_truncated_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("cs.db");
        let settings = StoreSettings {
            site_id: "site".into(),
            max_batch: 64,
            max_charger_power_w: 350_000,
            clock_tolerance_secs: 300,
            lockout: crate::auth::Lockout::default(),
        };
        let (store, thread) = open(&db, settings).unwrap();
        let size = || std::fs::metadata(&db).map_or(0, |m| m.len());
        let wal = dir.path().join("cs.db-wal");
        let before = size();
        // ~100 pages of readings: far below the store connection's own auto-checkpoint
        // (BACKSTOP_CHECKPOINT_PAGES), so only the checkpoint thread can move them.
        for i in 0..400 {
            store.exec(meter_op("CP-1", &[i])).await.unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while size() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "database file still {before} bytes: nothing was checkpointed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        store.exec(Op::Close).await.unwrap();
        drop(store);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
        assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
        let conn = connect(&db).unwrap();
        assert_eq!(rows(&conn, "CP-1"), 400);
    }
}
