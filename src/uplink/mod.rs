//! The uplink: store-and-forward to the operator's BPP over MQTT (CONTRACT §4).
//!
//! SQLite is the only source of truth. The driver reads unsent events in `seq` order,
//! publishes them in batches no larger than the payload limit with a bounded window in
//! flight, and marks a batch sent only when its PUBACK arrives; after any reconnect it
//! resumes from the oldest unsent `seq`. Commands are stored before they are
//! acknowledged, run at most once per `id`, and their results are stored before they are
//! published (and republished after a restart until PUBACKed).
//!
//! - [`batch`]: events -> payloads (pure).
//! - [`delivery`]: the delivery state machine (pure), not yet driven by this driver.
//! - [`commands`]: command parsing (pure) and execution.
//! - [`throttle`]: log rate limits (pure).
//! - [`link`]: rumqttc options, TLS, and the event-loop task.

pub mod batch;
pub mod commands;
pub mod delivery;
pub mod link;
pub mod throttle;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, Outgoing, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, UplinkConfig};
use crate::ocpp::registry::Registry;
use crate::store::{Intake, Op, Reply, Store};
use crate::time::{fmt_ts, now};
use batch::Encoded;
use commands::{Executor, Replay};
use link::LinkEvent;

/// Event batches in flight (published, not yet PUBACKed) at most.
const WINDOW: usize = 8;
/// Rows read from the store per fetch.
const FETCH: usize = 4096;
/// PUBACKed batches are marked sent in one commit every this often (or every
/// `MARK_EVERY` batches), not one commit per batch: on a gateway's flash a commit is
/// dear, and a million-event backlog is thousands of batches.
const MARK_INTERVAL: Duration = Duration::from_millis(100);
const MARK_EVERY: usize = 64;

/// Something the OCPP side tells the uplink; best effort (a snapshot, not a fact: the facts
/// are in the outbox).
#[derive(Debug, Clone)]
pub enum Notice {
    /// A charger's connectors or its online state changed: republish its retained topics.
    Connectors {
        /// Charger.
        cp_id: String,
    },
    /// A running session's latest readings, for `<root>/live/<session_id>`.
    Live {
        /// Session.
        session_id: String,
        /// The snapshot payload.
        snapshot: Value,
    },
    /// A session ended: stop publishing its live topic.
    SessionEnded {
        /// Session.
        session_id: String,
    },
}

/// The sending side of the notice channel; never blocks (a full channel drops the notice:
/// retained topics are refreshed on the next change and on every reconnect).
#[derive(Clone)]
pub struct Notices(mpsc::Sender<Notice>);

impl Notices {
    /// A channel for notices.
    pub fn channel() -> (Notices, mpsc::Receiver<Notice>) {
        let (tx, rx) = mpsc::channel(4096);
        (Notices(tx), rx)
    }

    /// Sends without waiting.
    pub fn send(&self, n: Notice) {
        let _ = self.0.try_send(n);
    }
}

/// Uplink failures that stop it from starting.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// TLS material could not be loaded.
    #[error(transparent)]
    Link(#[from] link::LinkError),
}

/// What an MQTT publish was, so its PUBACK can be acted on.
#[derive(Debug, Clone, PartialEq)]
enum Tag {
    Events {
        first: i64,
        last: i64,
    },
    Replay,
    Result {
        key: String,
    },
    /// The `{"online":false}` state published on shutdown.
    Farewell,
    Other,
}

/// Topics under `<prefix>/<site>`.
struct Topics {
    root: String,
}

impl Topics {
    fn state(&self) -> String {
        format!("{}/state", self.root)
    }
    fn events(&self) -> String {
        format!("{}/events", self.root)
    }
    fn cmd(&self) -> String {
        format!("{}/cmd", self.root)
    }
    fn result(&self) -> String {
        format!("{}/cmd/result", self.root)
    }
    fn ack(&self) -> String {
        format!("{}/ack", self.root)
    }
    fn connector(&self, cp: &str, connector: i64) -> String {
        format!("{}/connectors/{cp}/{connector}", self.root)
    }
    fn live(&self, session: &str) -> String {
        format!("{}/live/{session}", self.root)
    }
}

/// Everything the driver needs.
pub struct Parts {
    /// Config.
    pub config: Arc<Config>,
    /// Store.
    pub store: Store,
    /// Connected chargers (for `session.*` commands).
    pub registry: Registry,
    /// Set while the broker connection is up.
    pub online: Arc<AtomicBool>,
    /// Notices from the OCPP side.
    pub notices: mpsc::Receiver<Notice>,
    /// The per-site OTP key.
    pub secret: crate::auth::Secret,
}

/// Runs the uplink until `shutdown`; on shutdown publishes `{"online":false}` as retained
/// state and disconnects cleanly.
///
/// # Errors
/// [`UplinkError`] when the link cannot be configured (TLS files).
pub async fn run(parts: Parts, shutdown: CancellationToken) -> Result<(), UplinkError> {
    let Some(cfg) = parts.config.uplink.clone() else {
        return Ok(());
    };
    let site = parts.config.site_id.clone();
    let topics = Topics {
        root: format!("{}/{}", cfg.topic_prefix, site),
    };
    let options = link::options(&cfg, &format!("chargesite-{site}"), &topics.state())?;
    let link_token = CancellationToken::new();
    let (client, link_rx) = link::start(options, cfg.keepalive, link_token.clone());
    let (results_tx, results_rx) = mpsc::channel(256);
    let (replay_tx, replay_rx) = mpsc::channel(16);
    let mut driver = Driver {
        client,
        topics,
        site,
        cfg,
        store: parts.store.clone(),
        online: parts.online,
        connected: false,
        queue: VecDeque::new(),
        cursor: 0,
        pending: None,
        fifo: VecDeque::new(),
        inflight: HashMap::new(),
        batches: 0,
        acked: Vec::new(),
        replay: None,
        live: HashMap::new(),
        started_at: fmt_ts(now()),
        published_state: None,
        executor: Arc::new(Executor {
            store: parts.store,
            secret: parts.secret,
            registry: parts.registry,
            call_timeout: parts.config.ocpp.call_timeout,
        }),
        results_tx,
        replay_tx,
    };
    driver
        .run(link_rx, parts.notices, results_rx, replay_rx, shutdown)
        .await;
    link_token.cancel();
    Ok(())
}

struct Driver {
    client: AsyncClient,
    topics: Topics,
    site: String,
    cfg: UplinkConfig,
    store: Store,
    online: Arc<AtomicBool>,
    connected: bool,
    /// Encoded events fetched, not yet batched.
    queue: VecDeque<Encoded>,
    /// Highest seq fetched into `queue`.
    cursor: i64,
    /// A batch the client's channel had no room for; sent first next time.
    pending: Option<batch::Batch>,
    /// Our publishes since the ConnAck, awaiting rumqttc's `Outgoing::Publish(pkid)`.
    fifo: VecDeque<Tag>,
    /// Published and awaiting PUBACK, by pkid.
    inflight: HashMap<u16, Tag>,
    /// Event batches in flight (including replays).
    batches: usize,
    /// PUBACKed batches not yet marked sent.
    acked: Vec<(i64, i64)>,
    /// An events.replay in progress: (last seq sent, last seq to send).
    replay: Option<(i64, i64)>,
    /// Latest live snapshots not yet published.
    live: HashMap<String, Value>,
    started_at: String,
    published_state: Option<(i64, i64)>,
    executor: Arc<Executor>,
    results_tx: mpsc::Sender<(String, String)>,
    replay_tx: mpsc::Sender<Replay>,
}

impl Driver {
    async fn run(
        &mut self,
        mut link_rx: mpsc::Receiver<LinkEvent>,
        mut notices: mpsc::Receiver<Notice>,
        mut results_rx: mpsc::Receiver<(String, String)>,
        mut replay_rx: mpsc::Receiver<Replay>,
        shutdown: CancellationToken,
    ) {
        let mut seq_rx = self.store.last_seq();
        let mut live_tick = tokio::time::interval(self.cfg.live_interval);
        let mut state_tick = tokio::time::interval(Duration::from_secs(5));
        let mut mark_tick = tokio::time::interval(MARK_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = link_rx.recv() => match ev {
                    Some(LinkEvent::Mqtt(e)) => self.on_mqtt(e).await,
                    Some(LinkEvent::Down { reason, resume }) => {
                        self.mark_sent().await;
                        if self.connected {
                            tracing::warn!("uplink down: {reason}");
                        } else {
                            tracing::debug!("uplink connect failed: {reason}");
                        }
                        self.on_down();
                        let _ = resume.send(());
                    }
                    None => break,
                },
                changed = seq_rx.changed() => {
                    if changed.is_err() { break; }
                    self.fill().await;
                }
                Some(n) = notices.recv() => self.on_notice(n).await,
                Some((key, result)) = results_rx.recv() => self.publish_result(key, result),
                Some(r) = replay_rx.recv() => {
                    self.replay = Some((r.from - 1, r.to));
                    self.fill().await;
                }
                _ = live_tick.tick() => self.publish_live(),
                _ = mark_tick.tick() => self.mark_sent().await,
                _ = state_tick.tick() => self.publish_state(false).await,
            }
        }
        self.mark_sent().await;
        self.shutdown(&mut link_rx).await;
    }

    async fn shutdown(&mut self, link_rx: &mut mpsc::Receiver<LinkEvent>) {
        if !self.connected {
            return;
        }
        let payload = json!({"online": false, "version": env!("CARGO_PKG_VERSION"),
            "started_at": self.started_at, "stopped_at": fmt_ts(now())});
        let topic = self.topics.state();
        if !self.publish(
            topic,
            QoS::AtLeastOnce,
            true,
            payload.to_string(),
            Tag::Farewell,
        ) {
            tracing::warn!("could not queue the offline state; the Will covers it");
        }
        // Wait (bounded) for that PUBACK, then disconnect cleanly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, link_rx.recv()).await {
            match ev {
                LinkEvent::Mqtt(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(tag) = self.fifo.pop_front() {
                        self.inflight.insert(pkid, tag);
                    }
                }
                LinkEvent::Mqtt(Event::Incoming(Incoming::PubAck(ack)))
                    if self.inflight.remove(&ack.pkid) == Some(Tag::Farewell) =>
                {
                    break;
                }
                LinkEvent::Down { resume, .. } => {
                    let _ = resume.send(());
                    return;
                }
                _ => {}
            }
        }
        let _ = self.client.try_disconnect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, link_rx.recv()).await {
            if matches!(ev, LinkEvent::Mqtt(Event::Outgoing(Outgoing::Disconnect))) {
                break;
            }
            if let LinkEvent::Down { resume, .. } = ev {
                let _ = resume.send(());
                break;
            }
        }
        self.online.store(false, Ordering::Relaxed);
        tracing::info!("uplink closed; retained state is offline");
    }

    /// Publishes, remembering what it was so that its PUBACK can be acted on; false when
    /// rumqttc's request channel is full (nothing was queued).
    fn publish(
        &mut self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: String,
        tag: Tag,
    ) -> bool {
        match self.client.try_publish(topic, qos, retain, payload) {
            Ok(()) => {
                self.fifo.push_back(tag);
                true
            }
            Err(_) => false,
        }
    }

    /// Records PUBACKed batches as sent, in one commit. Marking lags a PUBACK by at most
    /// `MARK_INTERVAL`: a crash in that window re-sends those batches (the BPP de-duplicates
    /// by seq); never the reverse, nothing is marked sent before its PUBACK.
    async fn mark_sent(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        let ranges = std::mem::take(&mut self.acked);
        if let Err(e) = self.store.exec(Op::MarkSent { ranges, at: now() }).await {
            tracing::error!("marking batches sent: {e}");
        }
    }

    fn on_down(&mut self) {
        self.connected = false;
        self.online.store(false, Ordering::Relaxed);
        self.queue.clear();
        self.pending = None;
        self.fifo.clear();
        self.inflight.clear();
        self.batches = 0;
        self.replay = None;
        self.live.clear();
        self.published_state = None;
    }

    async fn on_mqtt(&mut self, e: Event) {
        match e {
            Event::Incoming(Incoming::ConnAck(_)) => self.on_connect().await,
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let tag = self.fifo.pop_front().unwrap_or(Tag::Other);
                if pkid != 0 {
                    self.inflight.insert(pkid, tag);
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(tag) = self.inflight.remove(&ack.pkid) {
                    self.on_puback(tag).await;
                }
            }
            Event::Incoming(Incoming::Publish(p)) => self.on_incoming(p).await,
            _ => {}
        }
    }

    async fn on_connect(&mut self) {
        tracing::info!(host = %self.cfg.host, port = self.cfg.port, "uplink connected");
        self.on_down();
        self.connected = true;
        self.online.store(true, Ordering::Relaxed);
        for topic in [self.topics.cmd(), self.topics.ack()] {
            if let Err(e) = self.client.try_subscribe(topic, QoS::AtLeastOnce) {
                tracing::warn!("subscribe: {e}");
            }
        }
        self.publish_state(true).await;
        self.publish_connectors(None).await;
        if let Ok(Reply::Results(results)) = self.store.exec(Op::UnpublishedResults).await {
            for (key, result) in results {
                self.publish_result(key, result);
            }
        }
        match self.store.exec(Op::OutboxStatus).await {
            Ok(Reply::Outbox(s)) => self.cursor = s.oldest_unsent.map_or(s.last_seq, |o| o - 1),
            other => tracing::error!("outbox status: {other:?}"),
        }
        self.fill().await;
    }

    async fn on_puback(&mut self, tag: Tag) {
        match tag {
            Tag::Events { first, last } => {
                self.batches = self.batches.saturating_sub(1);
                self.acked.push((first, last));
                if self.acked.len() >= MARK_EVERY {
                    self.mark_sent().await;
                }
                self.fill().await;
            }
            Tag::Replay => {
                self.batches = self.batches.saturating_sub(1);
                self.fill().await;
            }
            Tag::Result { key } => {
                if let Err(e) = self
                    .store
                    .exec(Op::ResultPublished { key, at: now() })
                    .await
                {
                    tracing::error!("marking a result published: {e}");
                }
            }
            _ => {}
        }
    }

    /// Publishes event batches while the window has room: unsent events first, then any
    /// replay in progress.
    async fn fill(&mut self) {
        while self.connected && self.batches < WINDOW {
            let batch = match self.pending.take() {
                Some(b) => Some((b, false)),
                None => self.next_batch().await,
            };
            let Some((batch, replay)) = batch else { break };
            let tag = if replay {
                Tag::Replay
            } else {
                Tag::Events {
                    first: batch.first,
                    last: batch.last,
                }
            };
            let topic = self.topics.events();
            if self.publish(topic, QoS::AtLeastOnce, false, batch.payload.clone(), tag) {
                self.batches += 1;
            } else {
                // rumqttc's channel is full: keep the batch and try again on the next
                // PUBACK (never for a replay: that can simply be asked for again).
                if !replay {
                    self.pending = Some(batch);
                }
                break;
            }
        }
    }

    async fn next_batch(&mut self) -> Option<(batch::Batch, bool)> {
        if self.queue.is_empty() {
            match self
                .store
                .exec(Op::FetchEvents {
                    after: self.cursor,
                    limit: FETCH,
                    unsent_only: true,
                })
                .await
            {
                Ok(Reply::Events(rows)) => {
                    if let Some(last) = rows.last() {
                        self.cursor = last.seq;
                    }
                    self.queue.extend(rows.iter().map(batch::encode));
                }
                other => {
                    tracing::error!("reading the outbox: {other:?}");
                    return None;
                }
            }
        }
        if let Some(b) = batch::take(&self.site, &mut self.queue, self.cfg.max_payload_bytes) {
            return Some((b, false));
        }
        let (after, to) = self.replay?;
        let rows = match self
            .store
            .exec(Op::FetchEvents {
                after,
                limit: FETCH.min(usize::try_from(to - after).unwrap_or(FETCH)),
                unsent_only: false,
            })
            .await
        {
            Ok(Reply::Events(rows)) => rows,
            _ => return None,
        };
        let mut q: VecDeque<Encoded> = rows
            .iter()
            .filter(|r| r.seq <= to)
            .map(batch::encode)
            .collect();
        let b = batch::take(&self.site, &mut q, self.cfg.max_payload_bytes);
        match &b {
            Some(b) if b.last < to => self.replay = Some((b.last, to)),
            _ => self.replay = None,
        }
        b.map(|b| (b, true))
    }

    async fn on_incoming(&mut self, p: rumqttc::Publish) {
        if p.topic == self.topics.ack() {
            match serde_json::from_slice::<Value>(&p.payload)
                .ok()
                .and_then(|v| v.get("seq").and_then(Value::as_i64))
            {
                Some(seq) => match self.store.exec(Op::Ack { seq }).await {
                    Ok(_) => tracing::debug!(seq, "BPP acked"),
                    Err(e) => {
                        // Not acknowledged to the broker: it will redeliver.
                        tracing::error!("storing an ack: {e}");
                        return;
                    }
                },
                None => tracing::warn!("malformed ack ignored"),
            }
            let _ = self.client.try_ack(&p);
            return;
        }
        if p.topic != self.topics.cmd() {
            let _ = self.client.try_ack(&p);
            return;
        }
        let parsed = commands::parse(&p.payload, &self.executor.secret);
        let intake = self
            .store
            .exec(Op::CommandReceived {
                id: parsed.id.clone(),
                kind: parsed.kind.clone(),
                body: parsed.stored.clone(),
                at: now(),
            })
            .await;
        // Stored (or known): only now is it acknowledged to the broker.
        let key = match intake {
            Ok(Reply::Intake(Intake::New { key })) => key,
            Ok(Reply::Intake(Intake::Repeat { key, result })) => {
                let _ = self.client.try_ack(&p);
                if let Some(r) = result {
                    self.publish_result(key, r);
                }
                return;
            }
            other => {
                tracing::error!("storing a command failed, not acknowledging it: {other:?}");
                return;
            }
        };
        let _ = self.client.try_ack(&p);
        let executor = self.executor.clone();
        let results = self.results_tx.clone();
        let replay = self.replay_tx.clone();
        tokio::spawn(async move {
            let outcome = match parsed.cmd {
                Ok(cmd) => executor.execute(cmd, &replay).await,
                Err(e) => Err(e),
            };
            let result = commands::result_json(parsed.id.as_deref(), outcome).to_string();
            match executor
                .store
                .exec(Op::CommandDone {
                    key: key.clone(),
                    result: result.clone(),
                    at: now(),
                })
                .await
            {
                Ok(_) => {
                    let _ = results.send((key, result)).await;
                }
                Err(e) => tracing::error!("storing a command result: {e}"),
            }
        });
    }

    fn publish_result(&mut self, key: String, result: String) {
        if !self.connected {
            return; // stored; published after the next ConnAck
        }
        // Stored already: if rumqttc's channel is full it goes out after the next ConnAck.
        let topic = self.topics.result();
        self.publish(topic, QoS::AtLeastOnce, false, result, Tag::Result { key });
    }

    async fn publish_state(&mut self, force: bool) {
        if !self.connected {
            return;
        }
        let Ok(Reply::Outbox(s)) = self.store.exec(Op::OutboxStatus).await else {
            return;
        };
        if !force && self.published_state == Some((s.last_seq, s.backlog)) {
            return;
        }
        let payload = json!({"online": true, "version": env!("CARGO_PKG_VERSION"),
            "started_at": self.started_at, "last_seq": s.last_seq, "backlog": s.backlog});
        let topic = self.topics.state();
        if self.publish(
            topic,
            QoS::AtLeastOnce,
            true,
            payload.to_string(),
            Tag::Other,
        ) {
            self.published_state = Some((s.last_seq, s.backlog));
        }
    }

    async fn publish_connectors(&mut self, cp_id: Option<String>) {
        if !self.connected {
            return;
        }
        let Ok(Reply::Connectors(rows)) = self.store.exec(Op::Connectors { cp_id }).await else {
            return;
        };
        for r in rows {
            let payload = json!({"status": r.status, "error_code": r.error_code,
                "charger_online": r.charger_online, "at": r.at});
            // A snapshot: the next change or reconnect republishes it if this one is dropped.
            let topic = self.topics.connector(&r.cp_id, r.connector_id);
            self.publish(
                topic,
                QoS::AtLeastOnce,
                true,
                payload.to_string(),
                Tag::Other,
            );
        }
    }

    async fn on_notice(&mut self, n: Notice) {
        match n {
            Notice::Connectors { cp_id } => self.publish_connectors(Some(cp_id)).await,
            Notice::Live {
                session_id,
                snapshot,
            } => {
                // Never buffered: while offline the snapshot is simply dropped.
                if self.connected {
                    self.live.insert(session_id, snapshot);
                }
            }
            Notice::SessionEnded { session_id } => {
                self.live.remove(&session_id);
            }
        }
    }

    fn publish_live(&mut self) {
        if !self.connected {
            self.live.clear();
            return;
        }
        for (session, snapshot) in std::mem::take(&mut self.live) {
            // QoS 0 and never buffered: a snapshot that finds the channel full is dropped
            let topic = self.topics.live(&session);
            self.publish(
                topic,
                QoS::AtMostOnce,
                false,
                snapshot.to_string(),
                Tag::Other,
            );
        }
    }
}
