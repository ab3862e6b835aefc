//! The uplink: store-and-forward to the operator's BPP over MQTT (CONTRACT §4).
//!
//! SQLite is the only source of truth. The driver reads unsent events in `seq` order,
//! publishes them in batches no larger than the payload limit with a bounded window in
//! flight, and marks a batch sent only when its PUBACK arrives; after any reconnect it
//! resumes from the oldest unsent `seq`. Commands are stored before they are
//! acknowledged, run at most once per `id`, and their results are stored before they are
//! published, through a window of their own (and republished after a restart until
//! PUBACKed).
//!
//! - [`batch`]: events -> payloads (pure).
//! - [`delivery`]: the delivery state machine (pure): windows, packet ids, acked ranges,
//!   replay, results.
//! - [`commands`]: command parsing (pure) and execution.
//! - [`link`]: rumqttc options, TLS, and the event-loop task.
//! - [`throttle`]: log rate limits (pure).
//!
//! The driver here only moves bytes: rumqttc events in, [`delivery::Delivery`] decides,
//! publishes and store reads/writes out. Each store operation it makes has one small
//! method of its own, which logs its failure where it happens.

pub mod batch;
pub mod commands;
pub mod delivery;
pub mod link;
pub mod throttle;

pub use crate::notice::{Notice, Notices};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, Outgoing, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::UplinkConfig;
use crate::ocpp::registry::Registry;
use crate::store::{ConnectorRow, EventRow, Intake, OutboxStatus, Store};
use crate::time::{fmt_ts, now};
use commands::{Executor, Parsed, Replay};
use delivery::{Delivery, Fetch, Next, Publish};
use link::LinkEvent;
use throttle::Throttle;

/// Uplink failures that stop it from starting.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// TLS material could not be loaded.
    #[error(transparent)]
    Link(#[from] link::LinkError),
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
    /// `[uplink]`; `None`: no uplink, buffer only.
    pub uplink: Option<UplinkConfig>,
    /// `[site] id`.
    pub site_id: String,
    /// How long a command's CALL to a charger may take (`[ocpp] call_timeout_secs`).
    pub call_timeout: Duration,
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
    /// Reconnects, PUBACK latency, the last seq PUBACKed.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What a charger's certificate must name (`charger.certificate` checks the chain).
    pub binding: Binding,
    /// The site power limit's driver (`site.power_limit`).
    pub power: crate::ocpp::smart::Power,
    /// The reservation driver (`reservation.*`).
    pub reservations: crate::ocpp::reserve::Reservations,
}

/// Per charger, the CN its certificate carries (`cert_cn`, else its id), and the O
/// (`cpo_name`) every charger certificate carries.
#[derive(Debug, Clone, Default)]
pub struct Binding {
    /// `cert_cn` of the chargers that set one.
    pub cert_cn: std::collections::HashMap<String, String>,
    /// `[ocpp] cpo_name`.
    pub cpo_name: Option<String>,
}

/// Runs the uplink until `shutdown`; on shutdown publishes `{"online":false}` as retained
/// state and disconnects cleanly.
///
/// # Errors
/// [`UplinkError`] when the link cannot be configured (TLS files).
pub async fn run(parts: Parts, shutdown: CancellationToken) -> Result<(), UplinkError> {
    let Some(cfg) = parts.uplink else {
        return Ok(());
    };
    let site = parts.site_id;
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
        delivery: Delivery::new(&site, cfg.max_payload_bytes),
        cfg,
        store: parts.store.clone(),
        online: parts.online,
        acks: VecDeque::new(),
        live: HashMap::new(),
        started_at: fmt_ts(now()),
        published_state: None,
        clear_retained: false,
        link_log: LinkLog::new(),
        store_log: HashMap::new(),
        executor: Arc::new(Executor {
            store: parts.store,
            secret: parts.secret,
            registry: parts.registry,
            call_timeout: parts.call_timeout,
            binding: parts.binding,
            power: parts.power,
            reservations: parts.reservations,
        }),
        results_tx,
        replay_tx,
        metrics: parts.metrics,
        connects: 0,
        published_at: HashMap::new(),
    };
    driver
        .run(link_rx, parts.notices, results_rx, replay_rx, shutdown)
        .await;
    link_token.cancel();
    Ok(())
}

/// How often a failing store operation may log, per operation.
const STORE_LOG_WINDOW: Duration = Duration::from_secs(10);

/// The driver's reading of the clock, as the pure parts take it (tokio's clock, so that a
/// paused test clock applies).
fn instant() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Says when the link goes down, stays unreachable and comes back: once per change of
/// state, never once per retry, and a flapping link is rate-limited on top.
struct LinkLog {
    /// When the link went down (or the agent started without one) and how many connect
    /// attempts have failed since; `None` while it is up.
    down_since: Option<(Instant, u32)>,
    /// Whether "unreachable" was said for this outage.
    told_unreachable: bool,
    throttle: Throttle,
}

impl LinkLog {
    fn new() -> Self {
        Self {
            down_since: Some((instant(), 0)),
            told_unreachable: false,
            throttle: Throttle::new(10, Duration::from_secs(60)),
        }
    }

    fn connected(&mut self, host: &str, port: u16, now: Instant) {
        let outage = self.down_since.take();
        self.told_unreachable = false;
        let Some(suppressed) = self.throttle.allow(now) else {
            tracing::debug!(host, port, "uplink connected");
            return;
        };
        match outage {
            Some((since, failed)) if failed > 0 => tracing::info!(
                host,
                port,
                suppressed,
                "uplink connected (back after {:.0?} and {failed} failed attempts)",
                now.saturating_duration_since(since)
            ),
            _ => tracing::info!(host, port, suppressed, "uplink connected"),
        }
    }

    fn down(&mut self, was_connected: bool, reason: &str, now: Instant) {
        if was_connected {
            self.down_since = Some((now, 0));
            self.told_unreachable = false;
            match self.throttle.allow(now) {
                Some(suppressed) => tracing::warn!(suppressed, "uplink down: {reason}"),
                None => tracing::debug!("uplink down: {reason}"),
            }
            return;
        }
        let (_, failed) = self.down_since.get_or_insert((now, 0));
        *failed += 1;
        if self.told_unreachable {
            tracing::debug!("uplink connect failed: {reason}");
            return;
        }
        self.told_unreachable = true;
        match self.throttle.allow(now) {
            Some(suppressed) => tracing::warn!(
                suppressed,
                "uplink unreachable: {reason}; retrying with backoff (told again when it is back)"
            ),
            None => tracing::debug!("uplink connect failed: {reason}"),
        }
    }
}

struct Driver {
    client: AsyncClient,
    topics: Topics,
    cfg: UplinkConfig,
    store: Store,
    online: Arc<AtomicBool>,
    /// Windows, packet ids, acked ranges, replay, results: the pure part.
    delivery: Delivery,
    /// Packet ids of received QoS 1 messages whose PUBACK rumqttc had no room for; sent
    /// before anything else on the next pass (an unacked message holds one of the broker's
    /// inflight slots for us, and enough of them stall its deliveries).
    acks: VecDeque<u16>,
    /// Latest live snapshots not yet published.
    live: HashMap<String, String>,
    started_at: String,
    published_state: Option<(i64, i64)>,
    /// The link was dropped for a message too large to read: on the next ConnAck, clear a
    /// retained command before subscribing, so that it is not handed to us again.
    clear_retained: bool,
    link_log: LinkLog,
    /// Rate limits for store failures, per operation.
    store_log: HashMap<&'static str, Throttle>,
    executor: Arc<Executor>,
    results_tx: mpsc::Sender<(String, String)>,
    replay_tx: mpsc::Sender<Replay>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Broker connections so far (each after the first is a reconnect).
    connects: u64,
    /// When each QoS 1 publish in flight went out, by packet id: its PUBACK latency.
    published_at: HashMap<u16, Instant>,
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
        loop {
            let mark_at = self.delivery.mark_deadline();
            let mark_sleep = tokio::time::sleep_until(
                mark_at.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std),
            );
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = link_rx.recv() => match ev {
                    Some(LinkEvent::Mqtt(e)) => self.on_mqtt(e).await,
                    Some(LinkEvent::Down { reason, oversized, resume }) => {
                        self.on_link_down(&reason, oversized).await;
                        // The link task waits for this; it is gone only on shutdown.
                        let _ = resume.send(());
                    }
                    None => break,
                },
                changed = seq_rx.changed() => {
                    if changed.is_err() { break; }
                    self.delivery.on_new_events();
                }
                Some(n) = notices.recv() => self.on_notice(n).await,
                Some((key, result)) = results_rx.recv() => self.delivery.on_result(key, result),
                Some(r) = replay_rx.recv() => self.delivery.on_replay(r.from, r.to),
                _ = live_tick.tick() => self.publish_live(),
                _ = mark_sleep, if mark_at.is_some() => {
                    if let Some(ranges) = self.delivery.mark_due(instant()) {
                        self.mark_sent(ranges).await;
                    }
                }
                _ = state_tick.tick() => {
                    // Reads that failed are retried from here, not in a tight loop.
                    self.delivery.nudge();
                    self.publish_state(false).await;
                }
            }
            self.pump().await;
        }
        let ranges = self.delivery.take_acked();
        self.mark_sent(ranges).await;
        self.shutdown(&mut link_rx).await;
    }

    /// Does what the delivery state asks until it has nothing more to do now: pending
    /// acks first, then reads and publishes. Stops at the first publish rumqttc has no
    /// room for; its next event brings the next pass.
    async fn pump(&mut self) {
        while let Some(&pkid) = self.acks.front() {
            if self.client.try_ack(&ack_stub(pkid)).is_err() {
                return;
            }
            self.acks.pop_front();
        }
        loop {
            match self.delivery.next_action() {
                Next::Idle => return,
                Next::Fetch(f) => self.fetch(f).await,
                Next::Publish(p) => {
                    if !self.send(p) {
                        return;
                    }
                }
            }
        }
    }

    /// Answers a read the delivery state asked for.
    async fn fetch(&mut self, f: Fetch) {
        match f {
            Fetch::Unsent { after, limit } => match self.fetch_events(after, limit, true).await {
                Some(rows) => self
                    .delivery
                    .on_unsent(rows.iter().map(batch::encode).collect()),
                None => self.delivery.fetch_failed(f),
            },
            Fetch::Replay { after, limit } => match self.fetch_events(after, limit, false).await {
                Some(rows) => self
                    .delivery
                    .on_replay_rows(rows.iter().map(batch::encode).collect()),
                None => self.delivery.fetch_failed(f),
            },
            Fetch::Results => match self.unpublished_results().await {
                Some(rows) => self.delivery.on_unpublished(rows),
                None => self.delivery.fetch_failed(f),
            },
        }
    }

    /// Hands a publish of the delivery state to rumqttc; false (and the publish kept by
    /// the delivery state) when its request channel is full.
    fn send(&mut self, p: Publish) -> bool {
        let (topic, payload) = match &p {
            Publish::Events(b) | Publish::Replay(b) => (self.topics.events(), b.payload.clone()),
            Publish::Result { payload, .. } => (self.topics.result(), payload.clone()),
        };
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("rumqttc busy, publishing later: {e}");
                self.delivery.refused(p);
                false
            }
        }
    }

    /// Publishes something of the driver's own (state, connectors, live, the retained-cmd
    /// clear); false when rumqttc's channel is full (nothing was queued). Each of these is
    /// a snapshot that the next change or reconnect publishes again.
    fn publish_other(&mut self, topic: String, qos: QoS, retain: bool, payload: Vec<u8>) -> bool {
        match self.client.try_publish(topic, qos, retain, payload) {
            Ok(()) => {
                self.delivery.queued_other();
                true
            }
            Err(_) => false,
        }
    }

    async fn shutdown(&mut self, link_rx: &mut mpsc::Receiver<LinkEvent>) {
        if !self.delivery.connected() {
            return;
        }
        let payload = json!({"online": false, "version": env!("CARGO_PKG_VERSION"),
            "started_at": self.started_at, "stopped_at": fmt_ts(now())});
        let topic = self.topics.state();
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, payload.to_string())
        {
            Ok(()) => self.delivery.queued_farewell(),
            Err(_) => tracing::warn!("could not queue the offline state; the Will covers it"),
        }
        // Wait (bounded) for that PUBACK, then disconnect cleanly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, link_rx.recv()).await {
            match ev {
                LinkEvent::Mqtt(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    self.delivery.on_outgoing_publish(pkid);
                }
                LinkEvent::Mqtt(Event::Incoming(Incoming::PubAck(ack))) => {
                    let acked = self.delivery.on_puback(ack.pkid, instant());
                    let mut ranges = acked.mark;
                    ranges.extend(self.delivery.take_acked());
                    self.mark_sent(ranges).await;
                    if let Some(key) = acked.result {
                        self.result_published(key).await;
                    }
                    if acked.farewell {
                        break;
                    }
                }
                LinkEvent::Down { resume, .. } => {
                    let _ = resume.send(());
                    return;
                }
                _ => {}
            }
        }
        if let Err(e) = self.client.try_disconnect() {
            tracing::debug!("disconnect: {e}");
        }
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

    async fn on_link_down(&mut self, reason: &str, oversized: Option<usize>) {
        let ranges = self.delivery.take_acked();
        self.mark_sent(ranges).await;
        let was_connected = self.delivery.connected();
        self.delivery.on_down();
        self.published_at.clear();
        self.online.store(false, Ordering::Relaxed);
        self.acks.clear();
        self.live.clear();
        self.published_state = None;
        self.link_log.down(was_connected, reason, instant());
        if let Some(bytes) = oversized {
            let limit = link::read_limit(&self.cfg);
            tracing::warn!(
                bytes,
                limit,
                "a message beyond the uplink's read limit cost one reconnect; a retained \
                 command is cleared on reconnect and the BPP is answered too_large"
            );
            self.clear_retained = true;
            // Answered like any command, with the only thing known about it: its size.
            self.answer(commands::unreadable(bytes, limit)).await;
        }
    }

    async fn on_mqtt(&mut self, e: Event) {
        match e {
            Event::Incoming(Incoming::ConnAck(_)) => self.on_connack().await,
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                // pkid 0: a QoS 0 publish, which gets no PUBACK.
                if pkid != 0 {
                    self.published_at.insert(pkid, instant());
                }
                self.delivery.on_outgoing_publish(pkid);
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                let now = instant();
                if let Some(sent) = self.published_at.remove(&ack.pkid) {
                    self.metrics
                        .puback_latency
                        .observe(now.saturating_duration_since(sent).as_secs_f64());
                }
                let acked = self.delivery.on_puback(ack.pkid, now);
                if let Some(seq) = acked.events_last {
                    self.metrics.pubacked(seq);
                }
                if !acked.mark.is_empty() {
                    self.mark_sent(acked.mark).await;
                }
                if let Some(key) = acked.result {
                    self.result_published(key).await;
                }
            }
            Event::Incoming(Incoming::Publish(p)) => self.on_incoming(p).await,
            _ => {}
        }
    }

    async fn on_connack(&mut self) {
        self.link_log
            .connected(&self.cfg.host, self.cfg.port, instant());
        self.connects += 1;
        if self.connects > 1 {
            self.metrics.uplink_reconnects.inc();
        }
        // Resume from the oldest unsent seq; without the status, from the start of the
        // unsent ones (the read skips sent events), never past one.
        let cursor = self
            .outbox_status()
            .await
            .map_or(0, |s| s.oldest_unsent.map_or(s.last_seq, |o| o - 1));
        self.delivery.on_connack(cursor);
        self.acks.clear();
        self.live.clear();
        self.published_state = None;
        self.online.store(true, Ordering::Relaxed);
        if std::mem::take(&mut self.clear_retained) {
            // An empty retained message deletes the retained one at the broker. Queued
            // before the SUBSCRIBE, so the broker handles it first and has nothing to hand
            // us again.
            let topic = self.topics.cmd();
            if self.publish_other(topic, QoS::AtLeastOnce, true, Vec::new()) {
                tracing::info!("cleared the retained command on {}", self.topics.cmd());
            } else {
                tracing::warn!("could not queue the clear of the retained command");
            }
        }
        for topic in [self.topics.cmd(), self.topics.ack()] {
            if let Err(e) = self.client.try_subscribe(topic, QoS::AtLeastOnce) {
                tracing::warn!("subscribe: {e}");
            }
        }
        self.publish_state(true).await;
        self.publish_connectors(None).await;
    }

    /// Acknowledges a received message to the broker, now or on the next pass.
    fn ack(&mut self, p: &rumqttc::Publish) {
        if self.client.try_ack(p).is_err() {
            self.acks.push_back(p.pkid);
        }
    }

    async fn on_incoming(&mut self, p: rumqttc::Publish) {
        if p.topic == self.topics.ack() {
            match serde_json::from_slice::<Value>(&p.payload)
                .ok()
                .and_then(|v| v.get("seq").and_then(Value::as_i64))
            {
                Some(seq) => {
                    if !self.store_ack(seq).await {
                        return; // not acknowledged to the broker: it will redeliver
                    }
                    tracing::debug!(seq, "BPP acked");
                }
                None => tracing::warn!("malformed ack ignored"),
            }
            self.ack(&p);
            return;
        }
        if p.topic != self.topics.cmd() || p.payload.is_empty() {
            // An empty message on cmd is a retained command being cleared (by us after an
            // oversized one, or by the BPP): nothing to answer.
            self.ack(&p);
            return;
        }
        let parsed = if p.payload.len() > self.cfg.max_command_bytes {
            commands::too_large(&p.payload, self.cfg.max_command_bytes)
        } else {
            commands::parse(&p.payload, &self.executor.secret)
        };
        let Some(intake) = self.command_received(&parsed).await else {
            return; // not acknowledged: the broker redelivers it after a reconnect
        };
        // Stored (or known): only now is it acknowledged to the broker.
        self.ack(&p);
        // The payload (up to the read limit) is not kept while the command runs.
        drop(p);
        let key = match intake {
            Intake::New { key } => key,
            Intake::Repeat { key, result } => {
                if let Some(r) = result {
                    self.delivery.on_repeat_result(key, r);
                }
                return;
            }
        };
        let executor = self.executor.clone();
        let results = self.results_tx.clone();
        let replay = self.replay_tx.clone();
        tokio::spawn(async move {
            let outcome = match parsed.cmd {
                Ok(cmd) => executor.execute(cmd, &replay).await,
                Err(e) => Err(e),
            };
            let result = commands::result_json(parsed.id.as_deref(), outcome).to_string();
            if store_result(&executor.store, key.clone(), result.clone()).await
                && results.send((key, result)).await.is_err()
            {
                tracing::debug!("uplink stopped; the stored result goes out after a restart");
            }
        });
    }

    /// Stores a command that is answered without running (nothing to execute) and queues
    /// its result.
    async fn answer(&mut self, parsed: Parsed) {
        let Some(Intake::New { key }) = self.command_received(&parsed).await else {
            return;
        };
        let result =
            commands::result_json(parsed.id.as_deref(), parsed.cmd.map(|_| json!({}))).to_string();
        if store_result(&self.store, key.clone(), result.clone()).await {
            self.delivery.on_result(key, result);
        }
    }

    async fn publish_state(&mut self, force: bool) {
        if !self.delivery.connected() {
            return;
        }
        let Some(s) = self.outbox_status().await else {
            return;
        };
        if !force && self.published_state == Some((s.last_seq, s.backlog)) {
            return;
        }
        let payload = json!({"online": true, "version": env!("CARGO_PKG_VERSION"),
            "started_at": self.started_at, "last_seq": s.last_seq, "backlog": s.backlog});
        let topic = self.topics.state();
        if self.publish_other(topic, QoS::AtLeastOnce, true, payload.to_string().into()) {
            self.published_state = Some((s.last_seq, s.backlog));
        }
    }

    async fn publish_connectors(&mut self, cp_id: Option<String>) {
        if !self.delivery.connected() {
            return;
        }
        let Some(rows) = self.connectors(cp_id).await else {
            return;
        };
        for r in rows {
            let mut payload = json!({"status": r.status, "error_code": r.error_code,
                "charger_online": r.charger_online, "at": r.at});
            if !r.evse_connectors.is_empty() {
                payload["connectors"] = json!(r.evse_connectors);
            }
            // A snapshot: the next change or reconnect republishes it if this one is dropped.
            let topic = self.topics.connector(&r.cp_id, r.connector_id);
            self.publish_other(topic, QoS::AtLeastOnce, true, payload.to_string().into());
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
                if self.delivery.connected() {
                    self.live.insert(session_id, snapshot);
                }
            }
            Notice::SessionEnded { session_id } => {
                self.live.remove(&session_id);
            }
        }
    }

    fn publish_live(&mut self) {
        if !self.delivery.connected() {
            self.live.clear();
            return;
        }
        for (session, snapshot) in std::mem::take(&mut self.live) {
            // QoS 0 and never buffered: a snapshot that finds the channel full is dropped
            let topic = self.topics.live(&session);
            self.publish_other(topic, QoS::AtMostOnce, false, snapshot.into());
        }
    }

    // The store, one small method per operation; each logs its own failure.

    fn store_failed(&mut self, op: &'static str, e: impl std::fmt::Display) {
        let throttle = self
            .store_log
            .entry(op)
            .or_insert_with(|| Throttle::new(1, STORE_LOG_WINDOW));
        match throttle.allow(instant()) {
            Some(suppressed) => tracing::error!(suppressed, "store: {op}: {e}"),
            None => tracing::debug!("store: {op}: {e}"),
        }
    }

    async fn outbox_status(&mut self) -> Option<OutboxStatus> {
        match self.store.outbox_status().await {
            Ok(s) => Some(s),
            Err(e) => {
                self.store_failed("reading the outbox status", e);
                None
            }
        }
    }

    async fn fetch_events(
        &mut self,
        after: i64,
        limit: usize,
        unsent_only: bool,
    ) -> Option<Vec<EventRow>> {
        match self.store.fetch_events(after, limit, unsent_only).await {
            Ok(rows) => Some(rows),
            Err(e) => {
                let what = if unsent_only {
                    "reading the outbox"
                } else {
                    "reading events to replay"
                };
                self.store_failed(what, e);
                None
            }
        }
    }

    /// Records PUBACKed batches as sent, in one commit. Marking lags a PUBACK by at most
    /// `MARK_INTERVAL`: a crash in that window re-sends those batches (the BPP
    /// de-duplicates by seq); never the reverse, nothing is marked sent before its PUBACK.
    async fn mark_sent(&mut self, ranges: Vec<(i64, i64)>) {
        if ranges.is_empty() {
            return;
        }
        if let Err(e) = self.store.mark_sent(ranges, now()).await {
            // Not lost: unmarked events are sent again (at least once).
            self.store_failed("marking batches sent", e);
        }
    }

    async fn store_ack(&mut self, seq: i64) -> bool {
        match self.store.ack(seq).await {
            Ok(_) => true,
            Err(e) => {
                self.store_failed("storing an ack", e);
                false
            }
        }
    }

    async fn command_received(&mut self, parsed: &Parsed) -> Option<Intake> {
        let received = self
            .store
            .command_received(
                parsed.id.clone(),
                parsed.kind.clone(),
                parsed.stored.clone(),
                now(),
            )
            .await;
        match received {
            Ok(i) => Some(i),
            Err(e) => {
                self.store_failed("storing a command (not acknowledged to the broker)", e);
                None
            }
        }
    }

    async fn result_published(&mut self, key: String) {
        if let Err(e) = self.store.result_published(key, now()).await {
            // Not lost: the result is published again after the next ConnAck.
            self.store_failed("marking a result published", e);
        }
    }

    async fn unpublished_results(&mut self) -> Option<Vec<(String, String)>> {
        // Only results queued or in flight are skipped when these come back, so this many
        // always fill the queue when the store holds more: the rest are read next time.
        let limit = delivery::RESULT_QUEUE + delivery::RESULT_WINDOW;
        match self.store.unpublished_results(limit).await {
            Ok(rows) => Some(rows),
            Err(e) => {
                self.store_failed("reading unpublished results", e);
                None
            }
        }
    }

    async fn connectors(&mut self, cp_id: Option<String>) -> Option<Vec<ConnectorRow>> {
        match self.store.connectors(cp_id).await {
            Ok(rows) => Some(rows),
            Err(e) => {
                self.store_failed("reading connector states", e);
                None
            }
        }
    }
}

/// Stores a command's result (before it is published); false when that failed (logged).
/// A free function: the executor's tasks call it too.
async fn store_result(store: &Store, key: String, result: String) -> bool {
    match store.command_done(key, result, now()).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!("store: storing a command result: {e}");
            false
        }
    }
}

/// A stand-in for a received QoS 1 publish, enough for rumqttc to build its PUBACK.
fn ack_stub(pkid: u16) -> rumqttc::Publish {
    let mut p = rumqttc::Publish::new("", QoS::AtLeastOnce, Vec::new());
    p.pkid = pkid;
    p
}
