//! The reservation driver: sends ReserveNow when a reservation's start comes (and again to
//! a charger that reconnected), CancelReservation when one is cancelled or its grace runs
//! out, and records what the chargers answer. The rules are [`crate::reservation`]'s; the
//! reservations live in the store, so the driver keeps only what each connection has
//! accepted, and picks up where it was after a restart. It needs no uplink: a site offline
//! holds and releases its reservations exactly as online, and the events wait in the
//! outbox.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::commands::{self as cmd, Command};
use super::registry::{CallFailure, Registry};
use crate::auth::{reservation_tokens, Secret};
use crate::reservation::{self as rules, Action, Reservation, Stage};
use crate::store::Store;
use crate::time::now;

/// How long after a ReserveNow that got no answer it is tried again.
const RETRY: Duration = Duration::from_secs(10);
/// The longest the driver sleeps without looking (a clock step, a missed input).
const LOOK_AT_LEAST_EVERY: Duration = Duration::from_secs(60);

enum Input {
    /// The reservations changed; `resend` names one whose charger must get it again.
    Changed { resend: Option<i64> },
    /// A charger (re)connected: its reservations are sent again.
    Connected(String),
    /// Released here: cancel it at the charger.
    Cancel(Reservation),
}

/// The handle the OCPP side and the uplink tell the driver through; never blocks.
#[derive(Clone)]
pub struct Reservations(Option<mpsc::Sender<Input>>);

impl Reservations {
    /// A handle that goes nowhere.
    pub fn none() -> Reservations {
        Reservations(None)
    }

    fn send(&self, i: Input) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(i);
        }
    }

    /// A reservation was stored or changed (`reservation.upsert`): it is (re)sent when due.
    pub fn changed(&self, id: i64) {
        self.send(Input::Changed { resend: Some(id) });
    }

    /// A charger connected.
    pub fn connected(&self, cp_id: &str) {
        self.send(Input::Connected(cp_id.to_string()));
    }

    /// A session used a reservation, or anything else that may end one: look again.
    pub fn look(&self) {
        self.send(Input::Changed { resend: None });
    }

    /// A reservation released here (`reservation.cancel`): cancel it at its charger.
    pub fn cancelled(&self, r: Reservation) {
        self.send(Input::Cancel(r));
    }
}

/// What the driver needs.
pub struct Parts {
    /// The store.
    pub store: Store,
    /// Connected chargers.
    pub registry: Registry,
    /// The site secret the reservation tokens derive from.
    pub secret: Secret,
    /// How long a charger has to answer.
    pub call_timeout: Duration,
}

/// Starts the driver; it runs until `shutdown`.
pub fn spawn(
    parts: Parts,
    shutdown: CancellationToken,
) -> (Reservations, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let driver = Driver {
        parts,
        sent: HashSet::new(),
        retry_at: None,
    };
    (
        Reservations(Some(tx)),
        tokio::spawn(driver.run(rx, shutdown)),
    )
}

struct Driver {
    parts: Parts,
    /// Reservations the charger accepted on its current connection.
    sent: HashSet<(i64, String)>,
    /// A ReserveNow went unanswered: look again then.
    retry_at: Option<tokio::time::Instant>,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>, shutdown: CancellationToken) {
        loop {
            let wake = self.look().await;
            let sleep = wake
                .and_then(|w| (w - now()).to_std().ok())
                .unwrap_or(LOOK_AT_LEAST_EVERY)
                .min(LOOK_AT_LEAST_EVERY);
            let mut at = tokio::time::Instant::now() + sleep;
            if let Some(r) = self.retry_at.take() {
                at = at.min(r);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(at) => {}
                input = rx.recv() => match input {
                    None => return,
                    Some(Input::Changed { resend }) => {
                        if let Some(id) = resend {
                            self.sent.retain(|(r, _)| *r != id);
                        }
                    }
                    Some(Input::Connected(cp)) => self.sent.retain(|(_, c)| *c != cp),
                    Some(Input::Cancel(r)) => self.cancel_at_charger(&r).await,
                },
            }
        }
    }

    /// Does what is due; returns when to look next.
    async fn look(&mut self) -> Option<DateTime<Utc>> {
        let live = match self.parts.store.live_reservations().await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("reservations: cannot read them: {e}");
                self.retry_at = Some(tokio::time::Instant::now() + RETRY);
                return None;
            }
        };
        let at = now();
        for r in &live {
            let connected = self.parts.registry.is_connected(&r.cp_id);
            let sent = self.sent.contains(&(r.id, r.cp_id.clone()));
            match rules::due(r, connected, sent, at) {
                Some(Action::Reserve) => self.reserve(r).await,
                Some(Action::Expire) => {
                    match self.parts.store.reservation_expired(r.id, at).await {
                        Ok(Some(r)) => {
                            tracing::info!(order_id = %r.order_id, cp_id = %r.cp_id, connector_id = r.connector_id,
                            "reservation released: nobody came within the grace period (no_show)");
                            self.cancel_at_charger(&r).await;
                        }
                        Ok(None) => {}
                        Err(e) => tracing::error!("reservations: cannot release a no-show: {e}"),
                    }
                }
                None => {}
            }
        }
        rules::next_wake(&live, at)
    }

    async fn reserve(&mut self, r: &Reservation) {
        let (tag, parent) = reservation_tokens(&self.parts.secret, r.id);
        let Ok(reservation_id) = i32::try_from(r.id) else {
            tracing::error!(id = r.id, "reservation id out of OCPP's range");
            return;
        };
        let command = Command::ReserveNow {
            reservation_id,
            connector_id: r.connector_id,
            expires_at: r.expires_at,
            tag,
            parent,
        };
        let answer = cmd::send(
            &self.parts.registry,
            &r.cp_id,
            command,
            self.parts.call_timeout,
        )
        .await;
        let at = now();
        let status = match answer {
            Ok(a) => a
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            // a charger that cannot reserve at all refuses every reservation
            Err(cmd::CommandError::Call(CallFailure::Rejected { code, .. }))
                if code == "NotImplemented" || code == "NotSupported" =>
            {
                code
            }
            Err(e) => {
                tracing::info!(cp_id = %r.cp_id, order_id = %r.order_id, "ReserveNow not delivered ({e}); trying again");
                self.retry_at = Some(tokio::time::Instant::now() + RETRY);
                return;
            }
        };
        if status == "Accepted" {
            self.sent.insert((r.id, r.cp_id.clone()));
            match self.parts.store.reservation_held(r.id, at).await {
                Ok(true) => {
                    tracing::info!(order_id = %r.order_id, cp_id = %r.cp_id, connector_id = r.connector_id,
                    "reservation held until {}", crate::time::fmt_ts(r.expires_at))
                }
                Ok(false) => {}
                Err(e) => tracing::error!("reservations: cannot record it held: {e}"),
            }
            return;
        }
        match self
            .parts
            .store
            .reservation_refused(r.id, status.clone(), at)
            .await
        {
            Ok(_) => {
                tracing::warn!(order_id = %r.order_id, cp_id = %r.cp_id, connector_id = r.connector_id,
                "reservation released: the charger answered ReserveNow with {status} (charger_refused)")
            }
            Err(e) => tracing::error!("reservations: cannot record a refusal: {e}"),
        }
    }

    /// CancelReservation for one released here; the charger's "Rejected" (it no longer
    /// has it: it expired there too) is as good as "Accepted".
    async fn cancel_at_charger(&mut self, r: &Reservation) {
        self.sent.retain(|(id, _)| *id != r.id);
        if r.stage == Stage::Scheduled && !self.parts.registry.is_connected(&r.cp_id) {
            return;
        }
        let Ok(reservation_id) = i32::try_from(r.id) else {
            return;
        };
        match cmd::send(
            &self.parts.registry,
            &r.cp_id,
            Command::CancelReservation { reservation_id },
            self.parts.call_timeout,
        )
        .await
        {
            Ok(a) => {
                tracing::info!(cp_id = %r.cp_id, order_id = %r.order_id, status = %a["status"], "CancelReservation answered")
            }
            Err(e) => {
                tracing::info!(cp_id = %r.cp_id, order_id = %r.order_id, "CancelReservation not delivered: {e}")
            }
        }
    }
}
