//! What the drivers record as they work, for `/metrics` and the status page: Prometheus
//! metrics (the `prometheus-client` crate renders the text format) and the few live
//! figures no table holds (last seq PUBACKed, recent refused connections).
//!
//! One [`Metrics`] per agent, shared as an `Arc`; recording is an atomic add or a
//! histogram observe, never a store round trip. Gauges of state the store or the registry
//! already hold (chargers connected, backlog, disk free, sessions running) are set when
//! `/metrics` is read, not kept up to date on the hot path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a counter: `(name, value)` pairs, each value from a bounded set.
pub type Labels = Vec<(&'static str, String)>;

/// How many refused connections the status page keeps.
const RECENT_REFUSALS: usize = 20;

/// A refused charger connection, as the status page lists it (never a credential).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// When.
    pub at: DateTime<Utc>,
    /// The charger id in the request path, if one could be read.
    pub cp_id: Option<String>,
    /// The remote address.
    pub peer: String,
    /// Why, e.g. `unknown_charger`, `auth_failed`, `bad_path`.
    pub reason: &'static str,
}

/// The agent's metrics and live figures.
pub struct Metrics {
    registry: Registry,
    /// Chargers connected now (set at scrape).
    pub chargers_connected: Gauge,
    /// CALLs from chargers by `action` and `result` (`ok` / `error`).
    pub calls: Family<Labels, Counter>,
    /// Time from a charger's CALL read to its answer (store commit included), seconds.
    pub call_latency: Histogram,
    /// Time one group commit takes, seconds.
    pub commit_latency: Histogram,
    /// Jobs per group commit.
    pub batch_size: Histogram,
    /// Events not yet PUBACKed (set at scrape).
    pub outbox_backlog: Gauge,
    /// Age of the oldest unsent event, seconds (set at scrape; 0 when none).
    pub outbox_oldest_unsent_age: Gauge,
    /// 1 while the broker connection is up (set at scrape).
    pub uplink_online: Gauge,
    /// Broker connections after the first.
    pub uplink_reconnects: Counter,
    /// Publish to PUBACK, seconds.
    pub puback_latency: Histogram,
    /// Free bytes on the store's file system (set at scrape).
    pub disk_free: Gauge,
    /// Security events by `kind` (`auth_failed`, `unknown_charger`, `charger_reported`).
    pub security_events: Family<Labels, Counter>,
    /// Sessions running (set at scrape).
    pub sessions_running: Gauge,
    /// Highest event seq the broker PUBACKed in this run (0: none yet).
    pub last_puback_seq: AtomicI64,
    refusals: Mutex<VecDeque<Refusal>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered under the `chargesite_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("chargesite");
        // 1 ms .. ~16 s: a CALL answered from the store, or one stuck behind a slow fsync.
        let seconds = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let m = Self {
            chargers_connected: Gauge::default(),
            calls: Family::default(),
            call_latency: seconds(),
            commit_latency: seconds(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            outbox_backlog: Gauge::default(),
            outbox_oldest_unsent_age: Gauge::default(),
            uplink_online: Gauge::default(),
            uplink_reconnects: Counter::default(),
            puback_latency: seconds(),
            disk_free: Gauge::default(),
            security_events: Family::default(),
            sessions_running: Gauge::default(),
            last_puback_seq: AtomicI64::new(0),
            refusals: Mutex::new(VecDeque::new()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "chargers_connected",
            "Chargers connected now",
            m.chargers_connected.clone(),
        );
        r.register(
            "ocpp_calls",
            "CALLs from chargers by action and result",
            m.calls.clone(),
        );
        r.register(
            "ocpp_call_duration_seconds",
            "Time from a charger's CALL to its answer, store commit included",
            m.call_latency.clone(),
        );
        r.register(
            "store_commit_duration_seconds",
            "Time one group commit takes",
            m.commit_latency.clone(),
        );
        r.register(
            "store_batch_size",
            "Operations per group commit",
            m.batch_size.clone(),
        );
        r.register(
            "outbox_backlog",
            "Events not yet PUBACKed by the broker",
            m.outbox_backlog.clone(),
        );
        r.register(
            "outbox_oldest_unsent_age_seconds",
            "Age of the oldest event not yet PUBACKed (0 when none)",
            m.outbox_oldest_unsent_age.clone(),
        );
        r.register(
            "uplink_online",
            "1 while the MQTT broker connection is up",
            m.uplink_online.clone(),
        );
        r.register(
            "uplink_reconnects",
            "MQTT broker connections after the first",
            m.uplink_reconnects.clone(),
        );
        r.register(
            "uplink_puback_duration_seconds",
            "Time from a publish to its PUBACK",
            m.puback_latency.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Free bytes on the store's file system",
            m.disk_free.clone(),
        );
        r.register(
            "security_events",
            "Security events by kind",
            m.security_events.clone(),
        );
        r.register(
            "sessions_running",
            "Charging sessions running",
            m.sessions_running.clone(),
        );
        Self { registry, ..m }
    }

    /// A CALL from a charger was answered after `took`; `ok` false for a CALLERROR.
    /// `action` must come from a bounded set (the caller passes known actions only).
    pub fn call_answered(&self, action: &str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.calls
            .get_or_create(&vec![
                ("action", action.to_string()),
                ("result", result.into()),
            ])
            .inc();
        self.call_latency.observe(took.as_secs_f64());
    }

    /// A security event of `kind` (from a bounded set).
    pub fn security_event(&self, kind: &'static str) {
        self.security_events
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// A charger connection was refused: counted and kept for the status page.
    pub fn refused(&self, refusal: Refusal) {
        let mut recent = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_REFUSALS {
            recent.pop_front();
        }
        recent.push_back(refusal);
    }

    /// The recent refused connections, newest first.
    pub fn recent_refusals(&self) -> Vec<Refusal> {
        let recent = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }

    /// The broker PUBACKed events up to `seq`.
    pub fn pubacked(&self, seq: i64) {
        self.last_puback_seq.fetch_max(seq, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_prefixed_and_a_call_is_counted_by_action_and_result() {
        let m = Metrics::new();
        m.call_answered("Heartbeat", true, Duration::from_millis(3));
        m.call_answered("Heartbeat", false, Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains("chargesite_ocpp_calls_total{action=\"Heartbeat\",result=\"ok\"} 1"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("chargesite_"), "{line}");
        }
    }

    #[test]
    fn only_the_latest_refusals_are_kept_newest_first() {
        let m = Metrics::new();
        for i in 0..(RECENT_REFUSALS + 5) {
            m.refused(Refusal {
                at: crate::time::now(),
                cp_id: Some(format!("CP{i}")),
                peer: "127.0.0.1:1".into(),
                reason: "unknown_charger",
            });
        }
        let recent = m.recent_refusals();
        assert_eq!(recent.len(), RECENT_REFUSALS);
        assert_eq!(recent[0].cp_id.as_deref(), Some("CP24"));
    }
}
