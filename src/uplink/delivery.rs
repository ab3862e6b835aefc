//! The uplink's delivery state as a pure state machine: the events window, the packet-id
//! FIFO, what is in flight, PUBACKed ranges waiting to be marked sent, the replay cursor
//! and the command-result window.
//!
//! No I/O, no clock reads, no store calls: the driver feeds it what happened (a ConnAck,
//! rumqttc's `Outgoing::Publish(pkid)`, a PUBACK at `now`, rows it read from the store)
//! and asks [`Delivery::next_action`] what to do, which is either a publish to make or rows to
//! read first. So every flow-control rule here is unit-tested with explicit times, and the
//! driver in `mod.rs` only moves bytes (the shape of rumqttc's own `state.rs` and
//! `eventloop.rs`).
//!
//! Rules it keeps:
//! - events go out in `seq` order, at most [`WINDOW`] batches awaiting PUBACK; a batch is
//!   reported for marking only once its PUBACK came, in groups (every [`MARK_INTERVAL`] or
//!   [`MARK_EVERY`] batches), never before;
//! - command results are flow-controlled like events: at most [`RESULT_WINDOW`] awaiting
//!   PUBACK, at most [`RESULT_QUEUE`] waiting in memory, and beyond that they wait in the
//!   store (they are stored before they reach this machine) and are read back as the
//!   queue drains. Nothing is dropped from memory that the store does not also hold;
//! - a publish rumqttc refused (its request channel was full) is kept and offered first
//!   next time;
//! - after a link loss everything in flight is forgotten: the store is the queue, and the
//!   next ConnAck resumes from the oldest unsent `seq` and republishes unpublished results.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::batch::{self, Batch, Encoded};

/// Event batches in flight (published, not yet PUBACKed) at most, replays included.
pub const WINDOW: usize = 8;
/// Command results in flight at most. Results are small; this bounds how much of
/// rumqttc's request channel (and the broker's inflight quota) a burst of commands can take,
/// so events, state and acks keep moving beside them.
pub const RESULT_WINDOW: usize = 16;
/// Results held in memory waiting for the window; the rest wait in the store.
pub const RESULT_QUEUE: usize = 256;
/// Rows read from the store per fetch.
pub const FETCH: usize = 4096;
/// PUBACKed batches are marked sent in one commit this long after the first of them was
/// acked (or every [`MARK_EVERY`] batches), not one commit per batch: on a gateway's flash
/// a commit is dear, and a million-event backlog is thousands of batches.
pub const MARK_INTERVAL: Duration = Duration::from_millis(100);
/// See [`MARK_INTERVAL`].
pub const MARK_EVERY: usize = 64;

/// What one of our publishes was, so that its PUBACK can be acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    /// An events batch: mark `first..=last` sent on PUBACK.
    Events {
        /// First seq.
        first: i64,
        /// Last seq.
        last: i64,
    },
    /// A replayed batch (already sent once; only the window slot is freed).
    Replay,
    /// A command result: record it published on PUBACK.
    Result {
        /// The command's stored key.
        key: String,
    },
    /// The `{"online":false}` state published on shutdown.
    Farewell,
    /// Anything else (state, connectors, live snapshots): nothing to do on PUBACK.
    Other,
}

/// A publish the driver should make now.
#[derive(Debug, Clone, PartialEq)]
pub enum Publish {
    /// An events batch, on `<root>/events` (QoS 1).
    Events(Batch),
    /// A replayed batch, on `<root>/events` (QoS 1).
    Replay(Batch),
    /// A command result, on `<root>/cmd/result` (QoS 1).
    Result {
        /// The command's stored key.
        key: String,
        /// The `cmd/result` payload.
        payload: String,
    },
}

impl Publish {
    fn tag(&self) -> Tag {
        match self {
            Publish::Events(b) => Tag::Events {
                first: b.first,
                last: b.last,
            },
            Publish::Replay(_) => Tag::Replay,
            Publish::Result { key, .. } => Tag::Result { key: key.clone() },
        }
    }
}

/// Rows the state machine needs from the store before it can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Unsent events after `after`, in seq order; answer with [`Delivery::on_unsent`].
    Unsent {
        /// Exclusive lower bound.
        after: i64,
        /// Most rows.
        limit: usize,
    },
    /// Any retained events after `after` (sent or not); answer with
    /// [`Delivery::on_replay_rows`].
    Replay {
        /// Exclusive lower bound.
        after: i64,
        /// Most rows.
        limit: usize,
    },
    /// Stored results not yet PUBACKed; answer with [`Delivery::on_unpublished`].
    Results,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Read these rows and hand them back (or report [`Delivery::fetch_failed`]).
    Fetch(Fetch),
    /// Publish this, then report [`Delivery::refused`] if rumqttc had no room for it.
    Publish(Publish),
    /// Nothing until something happens.
    Idle,
}

/// What a PUBACK means for the driver.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Acked {
    /// Batches to mark sent now (a group reached [`MARK_EVERY`]).
    pub mark: Vec<(i64, i64)>,
    /// A result to record as published.
    pub result: Option<String>,
    /// The farewell state reached the broker.
    pub farewell: bool,
    /// The last seq of the events batch this PUBACK acknowledged, if it was one.
    pub events_last: Option<i64>,
}

/// An `events.replay` in progress.
#[derive(Debug)]
struct Replaying {
    /// Highest seq read so far.
    after: i64,
    /// Last seq to resend.
    to: i64,
    /// Read, not yet batched.
    queue: VecDeque<Encoded>,
    /// The last read failed: wait for [`Delivery::nudge`].
    stalled: bool,
}

/// The delivery state of one uplink.
#[derive(Debug)]
pub struct Delivery {
    site: String,
    max_payload: usize,
    connected: bool,
    /// Unsent events read, not yet batched.
    queue: VecDeque<Encoded>,
    /// Highest seq read into `queue`.
    cursor: i64,
    /// The store had no more unsent events at the last read (or the read failed).
    unsent_exhausted: bool,
    replay: Option<Replaying>,
    /// A publish rumqttc had no room for; offered first next time.
    refused: Option<Publish>,
    /// Our publishes since the ConnAck, awaiting rumqttc's `Outgoing::Publish(pkid)`.
    fifo: VecDeque<Tag>,
    /// Published and awaiting PUBACK, by pkid.
    inflight: HashMap<u16, Tag>,
    /// Event batches in flight (replays included).
    batches: usize,
    /// Results waiting for the window.
    results: VecDeque<(String, String)>,
    /// Results in flight.
    results_inflight: usize,
    /// Keys queued or in flight, so that a result read back from the store is not sent twice.
    result_keys: HashSet<String>,
    /// The store may hold unpublished results that are not in `results`.
    results_in_store: bool,
    /// The last read of results failed: wait for [`Delivery::nudge`].
    results_stalled: bool,
    /// PUBACKed batches not yet marked sent, and when the first of them was acked.
    acked: Vec<(i64, i64)>,
    acked_since: Option<Instant>,
}

impl Delivery {
    /// A disconnected uplink for `site` whose batches are at most `max_payload` bytes.
    pub fn new(site: &str, max_payload: usize) -> Self {
        Self {
            site: site.to_string(),
            max_payload,
            connected: false,
            queue: VecDeque::new(),
            cursor: 0,
            unsent_exhausted: false,
            replay: None,
            refused: None,
            fifo: VecDeque::new(),
            inflight: HashMap::new(),
            batches: 0,
            results: VecDeque::new(),
            results_inflight: 0,
            result_keys: HashSet::new(),
            results_in_store: false,
            results_stalled: false,
            acked: Vec::new(),
            acked_since: None,
        }
    }

    /// True between a ConnAck and the next link loss.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// A ConnAck: start over from `cursor` (the seq before the oldest unsent event), and
    /// republish whatever results the store has not seen PUBACKed.
    pub fn on_connack(&mut self, cursor: i64) {
        self.on_down();
        self.connected = true;
        self.cursor = cursor;
        self.results_in_store = true;
    }

    /// The link is down: nothing in flight will be PUBACKed. PUBACKed ranges not yet
    /// marked are kept (they did reach the broker).
    pub fn on_down(&mut self) {
        self.connected = false;
        self.queue.clear();
        self.unsent_exhausted = false;
        self.replay = None;
        self.refused = None;
        self.fifo.clear();
        self.inflight.clear();
        self.batches = 0;
        self.results.clear();
        self.results_inflight = 0;
        self.result_keys.clear();
        self.results_in_store = false;
        self.results_stalled = false;
    }

    /// New events were committed.
    pub fn on_new_events(&mut self) {
        self.unsent_exhausted = false;
    }

    /// Retry reads that failed (the driver calls this every few seconds).
    pub fn nudge(&mut self) {
        self.unsent_exhausted = false;
        self.results_stalled = false;
        if let Some(r) = &mut self.replay {
            r.stalled = false;
        }
    }

    /// `events.replay`: resend `from..=to` behind the regular flow (replacing a replay in
    /// progress).
    pub fn on_replay(&mut self, from: i64, to: i64) {
        if !self.connected {
            return;
        }
        self.replay = Some(Replaying {
            after: from - 1,
            to,
            queue: VecDeque::new(),
            stalled: false,
        });
    }

    /// A result was stored; publish it when the window has room. Beyond [`RESULT_QUEUE`]
    /// it is left to the store and read back later.
    pub fn on_result(&mut self, key: String, payload: String) {
        if !self.connected || self.result_keys.contains(&key) {
            return; // stored: the next ConnAck (or the copy queued already) covers it
        }
        if self.results.len() >= RESULT_QUEUE {
            self.results_in_store = true;
            return;
        }
        self.result_keys.insert(key.clone());
        self.results.push_back((key, payload));
    }

    /// A repeated command's first result, to publish again. The store does not list it
    /// (it may have been PUBACKed long ago), so it is queued whatever the queue's length;
    /// each one stands for a message the broker delivered to us, which its own inflight
    /// quota bounds.
    pub fn on_repeat_result(&mut self, key: String, payload: String) {
        if !self.connected || self.result_keys.contains(&key) {
            return;
        }
        self.result_keys.insert(key.clone());
        self.results.push_back((key, payload));
    }

    /// What to do next: a read, a publish, or nothing.
    pub fn next_action(&mut self) -> Next {
        if !self.connected {
            return Next::Idle;
        }
        if let Some(p) = self.refused.take() {
            return self.start(p);
        }
        if self.results_inflight < RESULT_WINDOW {
            if let Some((key, payload)) = self.results.pop_front() {
                return self.start(Publish::Result { key, payload });
            }
            if self.results_in_store && !self.results_stalled {
                return Next::Fetch(Fetch::Results);
            }
        }
        if self.batches >= WINDOW {
            return Next::Idle;
        }
        if self.queue.is_empty() && !self.unsent_exhausted {
            return Next::Fetch(Fetch::Unsent {
                after: self.cursor,
                limit: FETCH,
            });
        }
        if let Some(b) = batch::take(&self.site, &mut self.queue, self.max_payload) {
            return self.start(Publish::Events(b));
        }
        let Some(r) = &mut self.replay else {
            return Next::Idle;
        };
        if let Some(b) = batch::take(&self.site, &mut r.queue, self.max_payload) {
            return self.start(Publish::Replay(b));
        }
        if r.after >= r.to {
            self.replay = None;
            return Next::Idle;
        }
        if r.stalled {
            return Next::Idle;
        }
        let span = usize::try_from(r.to - r.after).unwrap_or(FETCH);
        Next::Fetch(Fetch::Replay {
            after: r.after,
            limit: FETCH.min(span),
        })
    }

    /// Counts a publish as made (the driver reports a refusal right after, if any).
    fn start(&mut self, p: Publish) -> Next {
        match &p {
            Publish::Events(_) | Publish::Replay(_) => self.batches += 1,
            Publish::Result { .. } => self.results_inflight += 1,
        }
        self.fifo.push_back(p.tag());
        Next::Publish(p)
    }

    /// rumqttc had no room for the publish [`Delivery::next_action`] just returned: keep it and
    /// offer it first next time.
    pub fn refused(&mut self, p: Publish) {
        self.fifo.pop_back();
        match &p {
            Publish::Events(_) | Publish::Replay(_) => {
                self.batches = self.batches.saturating_sub(1);
            }
            Publish::Result { .. } => {
                self.results_inflight = self.results_inflight.saturating_sub(1);
            }
        }
        self.refused = Some(p);
    }

    /// The driver queued a publish of its own (state, connectors, a live snapshot).
    pub fn queued_other(&mut self) {
        self.fifo.push_back(Tag::Other);
    }

    /// The driver queued the farewell state.
    pub fn queued_farewell(&mut self) {
        self.fifo.push_back(Tag::Farewell);
    }

    /// Unsent events read after a [`Fetch::Unsent`].
    pub fn on_unsent(&mut self, rows: Vec<Encoded>) {
        // Fewer rows than asked for: the store has no more for now; a commit of new
        // events (`on_new_events`) says when to look again.
        self.unsent_exhausted = rows.len() < FETCH;
        if let Some(last) = rows.last() {
            self.cursor = last.seq;
        }
        self.queue.extend(rows);
    }

    /// Retained events read after a [`Fetch::Replay`].
    pub fn on_replay_rows(&mut self, rows: Vec<Encoded>) {
        let Some(r) = &mut self.replay else { return };
        match rows.last() {
            // Nothing left: released, or the range is done.
            None => self.replay = None,
            Some(last) => {
                r.after = last.seq.min(r.to);
                let to = r.to;
                r.queue.extend(rows.into_iter().filter(|e| e.seq <= to));
            }
        }
    }

    /// Stored unpublished results read after a [`Fetch::Results`], oldest first.
    pub fn on_unpublished(&mut self, rows: Vec<(String, String)>) {
        for (key, payload) in rows {
            if self.result_keys.contains(&key) {
                continue; // queued or in flight already
            }
            if self.results.len() >= RESULT_QUEUE {
                return; // the rest next time; `results_in_store` stays set
            }
            self.result_keys.insert(key.clone());
            self.results.push_back((key, payload));
        }
        self.results_in_store = false;
    }

    /// A read failed (the driver logged it): stop asking for it until [`Delivery::nudge`].
    pub fn fetch_failed(&mut self, f: Fetch) {
        match f {
            Fetch::Unsent { .. } => self.unsent_exhausted = true,
            Fetch::Replay { .. } => {
                if let Some(r) = &mut self.replay {
                    r.stalled = true;
                }
            }
            Fetch::Results => self.results_stalled = true,
        }
    }

    /// rumqttc sent one of our publishes with this packet id (0 for QoS 0). Its publishes
    /// come out in the order we made them, so the oldest unmatched one is this one.
    pub fn on_outgoing_publish(&mut self, pkid: u16) {
        let tag = self.fifo.pop_front().unwrap_or(Tag::Other);
        if pkid != 0 {
            self.inflight.insert(pkid, tag);
        }
    }

    /// A PUBACK arrived at `now`.
    pub fn on_puback(&mut self, pkid: u16, now: Instant) -> Acked {
        let mut out = Acked::default();
        match self.inflight.remove(&pkid) {
            Some(Tag::Events { first, last }) => {
                self.batches = self.batches.saturating_sub(1);
                self.acked.push((first, last));
                out.events_last = Some(last);
                self.acked_since.get_or_insert(now);
                if self.acked.len() >= MARK_EVERY {
                    out.mark = self.take_acked();
                }
            }
            Some(Tag::Replay) => self.batches = self.batches.saturating_sub(1),
            Some(Tag::Result { key }) => {
                self.results_inflight = self.results_inflight.saturating_sub(1);
                self.result_keys.remove(&key);
                out.result = Some(key);
            }
            Some(Tag::Farewell) => out.farewell = true,
            Some(Tag::Other) | None => {}
        }
        out
    }

    /// When the PUBACKed batches are due to be marked sent, if any are waiting.
    pub fn mark_deadline(&self) -> Option<Instant> {
        self.acked_since.map(|t| t + MARK_INTERVAL)
    }

    /// The batches to mark sent at `now`, if their group is due.
    pub fn mark_due(&mut self, now: Instant) -> Option<Vec<(i64, i64)>> {
        match self.mark_deadline() {
            Some(due) if now >= due => Some(self.take_acked()),
            _ => None,
        }
    }

    /// Every PUBACKed batch not yet marked (on link loss and shutdown).
    pub fn take_acked(&mut self) -> Vec<(i64, i64)> {
        self.acked_since = None;
        std::mem::take(&mut self.acked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64) -> Encoded {
        Encoded {
            seq,
            json: format!(r#"{{"seq":{seq},"type":"t","at":"a"}}"#),
        }
    }

    fn rows(seqs: std::ops::RangeInclusive<i64>) -> Vec<Encoded> {
        seqs.map(ev).collect()
    }

    /// Connected, with `events` unsent after seq 0 and every read answered.
    fn connected() -> Delivery {
        let mut d = Delivery::new("site-001", 4096);
        d.on_connack(0);
        d
    }

    /// Runs `next` until a publish, answering reads from `store`; None when idle.
    fn next_publish(d: &mut Delivery, unsent: &[Encoded]) -> Option<Publish> {
        loop {
            match d.next_action() {
                Next::Publish(p) => return Some(p),
                Next::Idle => return None,
                Next::Fetch(Fetch::Unsent { after, limit }) => {
                    let take: Vec<Encoded> = unsent
                        .iter()
                        .filter(|e| e.seq > after)
                        .take(limit)
                        .cloned()
                        .collect();
                    d.on_unsent(take);
                }
                Next::Fetch(Fetch::Results) => d.on_unpublished(Vec::new()),
                Next::Fetch(Fetch::Replay { .. }) => d.on_replay_rows(Vec::new()),
            }
        }
    }

    fn batch_of(seq: i64) -> Batch {
        let mut q: VecDeque<Encoded> = [ev(seq)].into();
        batch::take("site-001", &mut q, 4096).unwrap()
    }

    #[test]
    fn nothing_is_published_before_the_connack() {
        let mut d = Delivery::new("site-001", 4096);
        d.on_result("k".into(), "{}".into());
        assert_eq!(d.next_action(), Next::Idle);
        d.on_connack(0);
        // the result was left to the store, which is read on ConnAck
        assert_eq!(d.next_action(), Next::Fetch(Fetch::Results));
    }

    #[test]
    fn the_connack_resumes_from_the_cursor_it_is_given() {
        let mut d = Delivery::new("site-001", 4096);
        d.on_connack(41);
        d.on_unpublished(Vec::new());
        assert_eq!(
            d.next_action(),
            Next::Fetch(Fetch::Unsent {
                after: 41,
                limit: FETCH
            })
        );
    }

    #[test]
    fn at_most_a_window_of_batches_is_in_flight_and_each_puback_frees_a_slot() {
        let mut d = connected();
        // a payload limit that fits one event per batch
        d.max_payload = 1;
        let store = rows(1..=20);
        let mut sent = Vec::new();
        while let Some(p) = next_publish(&mut d, &store) {
            sent.push(p);
        }
        assert_eq!(sent.len(), WINDOW);
        for (i, _) in sent.iter().enumerate() {
            d.on_outgoing_publish(u16::try_from(i + 1).unwrap());
        }
        let t0 = Instant::now();
        d.on_puback(1, t0);
        let more = next_publish(&mut d, &store);
        assert!(
            matches!(more, Some(Publish::Events(ref b)) if b.first == 9),
            "{more:?}"
        );
        assert_eq!(next_publish(&mut d, &store), None);
    }

    #[test]
    fn batches_go_out_in_seq_order() {
        let mut d = connected();
        d.max_payload = 100;
        let store = rows(1..=30);
        let mut last = 0;
        let mut pkid = 0;
        let t = Instant::now();
        while let Some(p) = next_publish(&mut d, &store) {
            let Publish::Events(b) = p else {
                panic!("{p:?}")
            };
            assert_eq!(b.first, last + 1);
            last = b.last;
            pkid += 1;
            d.on_outgoing_publish(pkid);
            d.on_puback(pkid, t);
        }
        assert_eq!(last, 30);
    }

    #[test]
    fn a_puback_for_an_unknown_pkid_changes_nothing() {
        let mut d = connected();
        let store = rows(1..=3);
        let p = next_publish(&mut d, &store).unwrap();
        assert!(matches!(p, Publish::Events(_)));
        d.on_outgoing_publish(7);
        let before = format!("{d:?}");
        assert_eq!(d.on_puback(8, Instant::now()), Acked::default());
        assert_eq!(format!("{d:?}"), before);
    }

    #[test]
    fn nothing_is_marked_sent_before_its_puback() {
        let mut d = connected();
        let store = rows(1..=3);
        let t0 = Instant::now();
        next_publish(&mut d, &store).unwrap();
        d.on_outgoing_publish(1);
        assert_eq!(d.mark_deadline(), None);
        assert_eq!(d.mark_due(t0 + Duration::from_secs(60)), None);
        d.on_puback(1, t0);
        assert_eq!(d.mark_due(t0 + Duration::from_secs(60)), Some(vec![(1, 3)]));
    }

    #[test]
    fn acked_batches_are_marked_after_the_interval_or_every_64() {
        let mut d = connected();
        let t0 = Instant::now();
        // the interval: the first ack starts the clock
        d.fifo.push_back(Tag::Events { first: 1, last: 1 });
        d.on_outgoing_publish(1);
        assert!(d.on_puback(1, t0).mark.is_empty());
        assert_eq!(d.mark_deadline(), Some(t0 + MARK_INTERVAL));
        assert_eq!(d.mark_due(t0 + MARK_INTERVAL / 2), None);
        assert_eq!(d.mark_due(t0 + MARK_INTERVAL), Some(vec![(1, 1)]));
        assert_eq!(d.mark_deadline(), None);
        // every 64: the 64th ack hands the group over at once
        for i in 1..=64u16 {
            let seq = i64::from(i) + 1;
            d.fifo.push_back(Tag::Events {
                first: seq,
                last: seq,
            });
            d.on_outgoing_publish(i);
            let acked = d.on_puback(i, t0 + MARK_INTERVAL);
            if i < 64 {
                assert!(acked.mark.is_empty());
            } else {
                assert_eq!(acked.mark.len(), 64);
                assert_eq!(acked.mark[0], (2, 2));
            }
        }
        assert_eq!(d.mark_deadline(), None);
    }

    #[test]
    fn acked_ranges_survive_a_link_loss_so_they_are_still_marked() {
        let mut d = connected();
        let store = rows(1..=2);
        next_publish(&mut d, &store).unwrap();
        d.on_outgoing_publish(1);
        d.on_puback(1, Instant::now());
        d.on_down();
        assert_eq!(d.take_acked(), vec![(1, 2)]);
    }

    #[test]
    fn results_beyond_the_window_wait_for_a_puback() {
        let mut d = connected();
        d.on_unpublished(Vec::new());
        d.unsent_exhausted = true;
        for i in 0..RESULT_WINDOW + 3 {
            d.on_result(format!("k{i}"), "{}".into());
        }
        let mut sent = 0;
        while let Next::Publish(_) = d.next_action() {
            sent += 1;
            d.on_outgoing_publish(u16::try_from(sent).unwrap());
        }
        assert_eq!(sent, RESULT_WINDOW);
        let acked = d.on_puback(1, Instant::now());
        assert_eq!(acked.result.as_deref(), Some("k0"));
        assert!(
            matches!(d.next_action(), Next::Publish(Publish::Result { ref key, .. }) if key == "k16")
        );
        assert_eq!(d.next_action(), Next::Idle);
    }

    #[test]
    fn results_beyond_the_queue_are_read_back_from_the_store() {
        let mut d = connected();
        d.on_unpublished(Vec::new());
        d.unsent_exhausted = true;
        let all: Vec<(String, String)> = (0..RESULT_QUEUE + 10)
            .map(|i| (format!("k{i}"), format!("{{\"n\":{i}}}")))
            .collect();
        for (k, p) in &all {
            d.on_result(k.clone(), p.clone());
        }
        // everything beyond the queue is left to the store, nothing lost
        let mut published = Vec::new();
        let mut pkid = 0u16;
        loop {
            match d.next_action() {
                Next::Publish(Publish::Result { key, .. }) => {
                    pkid += 1;
                    d.on_outgoing_publish(pkid);
                    published.push(key);
                }
                Next::Fetch(Fetch::Results) => {
                    // the store lists every result not yet PUBACKed, in flight ones too
                    let unacked: Vec<_> = all
                        .iter()
                        .filter(|(k, _)| d.result_keys.contains(k) || !published.contains(k))
                        .cloned()
                        .collect();
                    d.on_unpublished(unacked);
                }
                Next::Idle if d.results_inflight > 0 => {
                    // the broker PUBACKs the oldest in flight
                    let oldest = *d.inflight.keys().min().unwrap();
                    d.on_puback(oldest, Instant::now());
                }
                Next::Idle => break,
                other => panic!("{other:?}"),
            }
        }
        let mut want: Vec<String> = all.iter().map(|(k, _)| k.clone()).collect();
        let mut got = published.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "every result published exactly once");
    }

    #[test]
    fn a_refused_publish_is_offered_again_first() {
        let mut d = connected();
        d.on_unpublished(Vec::new());
        d.on_result("k".into(), "{}".into());
        let Next::Publish(p) = d.next_action() else {
            panic!()
        };
        d.refused(p.clone());
        assert!(d.fifo.is_empty());
        assert_eq!(d.next_action(), Next::Publish(p));
        assert_eq!(d.results_inflight, 1);
    }

    #[test]
    fn a_refused_batch_keeps_its_place_in_seq_order() {
        let mut d = connected();
        let mut store = rows(1..=1);
        let p = next_publish(&mut d, &store).unwrap();
        d.refused(p.clone());
        assert_eq!(d.batches, 0);
        store.push(ev(2));
        d.on_new_events();
        assert_eq!(next_publish(&mut d, &store), Some(p));
        assert_eq!(
            next_publish(&mut d, &store),
            Some(Publish::Events(batch_of(2)))
        );
    }

    #[test]
    fn an_empty_store_is_read_again_only_after_new_events() {
        let mut d = connected();
        d.on_unpublished(Vec::new());
        let store = Vec::new();
        assert_eq!(next_publish(&mut d, &store), None);
        assert_eq!(d.next_action(), Next::Idle, "no second read without news");
        d.on_new_events();
        assert!(matches!(d.next_action(), Next::Fetch(Fetch::Unsent { .. })));
    }

    #[test]
    fn a_failed_read_is_retried_after_a_nudge() {
        let mut d = connected();
        assert_eq!(d.next_action(), Next::Fetch(Fetch::Results));
        d.fetch_failed(Fetch::Results);
        let f = d.next_action();
        assert!(matches!(f, Next::Fetch(Fetch::Unsent { .. })));
        let Next::Fetch(f) = f else { panic!() };
        d.fetch_failed(f);
        assert_eq!(d.next_action(), Next::Idle);
        d.nudge();
        assert_eq!(d.next_action(), Next::Fetch(Fetch::Results));
    }

    #[test]
    fn a_replay_resends_its_range_behind_unsent_events_and_then_stops() {
        let mut d = connected();
        d.on_unpublished(Vec::new());
        let store = rows(10..=10);
        d.on_replay(3, 5);
        assert_eq!(
            next_publish(&mut d, &store),
            Some(Publish::Events(batch_of(10)))
        );
        assert_eq!(
            d.next_action(),
            Next::Fetch(Fetch::Replay { after: 2, limit: 3 })
        );
        // the store may return more than asked for: only up to `to` is sent
        d.on_replay_rows(rows(3..=7));
        let Next::Publish(Publish::Replay(b)) = d.next_action() else {
            panic!()
        };
        assert_eq!((b.first, b.last), (3, 5));
        assert_eq!(d.next_action(), Next::Idle);
        assert!(d.replay.is_none());
    }

    #[test]
    fn a_link_loss_forgets_everything_in_flight() {
        let mut d = connected();
        let store = rows(1..=1);
        next_publish(&mut d, &store).unwrap();
        d.on_outgoing_publish(1);
        d.on_result("k".into(), "{}".into());
        d.on_replay(1, 1);
        d.on_down();
        assert!(!d.connected());
        assert_eq!(d.next_action(), Next::Idle);
        assert_eq!(d.on_puback(1, Instant::now()), Acked::default());
        d.on_connack(0);
        assert_eq!((d.batches, d.results_inflight), (0, 0));
        assert!(d.replay.is_none());
        assert_eq!(d.next_action(), Next::Fetch(Fetch::Results));
    }

    #[test]
    fn publishes_of_the_driver_keep_the_pkid_fifo_aligned() {
        let mut d = connected();
        d.queued_other();
        d.on_unpublished(vec![("k".into(), "{}".into())]);
        let Next::Publish(_) = d.next_action() else {
            panic!()
        };
        d.queued_farewell();
        d.on_outgoing_publish(0); // the QoS 0 one: no PUBACK coming
        d.on_outgoing_publish(5);
        d.on_outgoing_publish(6);
        assert_eq!(d.on_puback(5, Instant::now()).result.as_deref(), Some("k"));
        assert!(d.on_puback(6, Instant::now()).farewell);
    }

    #[test]
    fn a_result_already_queued_is_not_queued_twice() {
        let mut d = connected();
        d.on_unpublished(vec![("k".into(), "{}".into())]);
        d.on_result("k".into(), "{}".into());
        d.on_repeat_result("k".into(), "{}".into());
        assert_eq!(d.results.len(), 1);
    }
}
