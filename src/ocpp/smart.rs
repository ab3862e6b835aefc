//! The site power limit's driver: keeps every charger under its share of `[site]
//! max_power_kw` (or the lower `site.power_limit`) with charging profiles, 1.6 and 2.0.1
//! alike, online and offline.
//!
//! The rules are [`crate::power`]'s; this task only gathers their inputs (the running
//! sessions from the store, the power each connector draws from its meter values, what
//! each charger advertises), asks them, and sends what they decide:
//! - at connect, every charger gets its **fail-safe** TxDefaultProfile: the site limit
//!   over every connector of the site, so that a charger that loses the gateway can never
//!   take more than its part (CONTRACT §6);
//! - every running session gets its share as a **TxProfile** whose schedule runs out
//!   [`power::TX_PROFILE_SECS`] after it was sent, and is renewed well before;
//! - the shares are recomputed within a fraction of a second of a session starting or
//!   stopping, a limit change or a charger (re)connecting; reductions are sent (and
//!   answered) before increases, so the site total does not overshoot for longer than
//!   the new session's first reading;
//! - a charger that refuses a profile is assumed to draw its maximum from then on (until
//!   it reconnects), the others are reduced to keep the total, and that is logged once and
//!   reported in `site.power`;
//! - `site.power` goes upstream whenever the limit or the shares change.
//!
//! The task owns its state; everyone else holds a [`Power`] handle and never waits on it,
//! except `site.power_limit`, which is answered once the new limit is committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::commands::{self as cmd, Command, Profile, ProfilePurpose, TransactionRef, VariableRef};
use super::frame::Version;
use super::registry::{CallFailure, Registry};
use crate::config::{ChargerEntry, DEFAULT_CONNECTOR_POWER_W};
use crate::events::{Event, PowerAllocation};
use crate::power::{self, Demand, Grant, Lowered, Measured, RateUnit, Sent};
use crate::store::{RunningSession, Store};
use crate::time::{fmt_ts, now};

/// The id of the fail-safe TxDefaultProfile the agent installs on every charger.
pub const DEFAULT_PROFILE_ID: i32 = 9_100;
/// A connector's TxProfile id is this plus its connector (EVSE) id.
pub const TX_PROFILE_BASE_ID: i32 = 9_200;
/// How long inputs are gathered before the shares are recomputed: a burst of starts is
/// one rebalance.
const SETTLE: Duration = Duration::from_millis(100);
/// How often profiles are checked for renewal.
const RENEW_TICK: Duration = Duration::from_secs(15);
/// The longest a rebalance waits for one charger's answer: a silent charger must not
/// hold up the others' shares.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// How long after a connect a charger is left to send its BootNotification before it is
/// asked anything (2.0.1 wants the boot accepted first; a reconnect without one is then
/// asked all the same).
const BOOT_FIRST: Duration = Duration::from_secs(1);

/// Why the shares were recomputed (`site.power`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A session started.
    SessionStarted,
    /// A session stopped.
    SessionStopped,
    /// The site limit changed (`site.power_limit`, or a lowered limit ran out).
    LimitChanged,
    /// A charger connected or booted: its profiles are sent again.
    ChargerReconnected,
    /// A charger refused its profile.
    ChargerRefused,
    /// Renewal or a changed reading: reported only when the shares change.
    Renewal,
}

impl Reason {
    /// Which of two causes names a report that follows both: a limit change over a
    /// refusal over a start over a stop over a reconnect over a renewal.
    fn weight(self) -> u8 {
        match self {
            Reason::Renewal => 0,
            Reason::ChargerReconnected => 1,
            Reason::SessionStopped => 2,
            Reason::SessionStarted => 3,
            Reason::ChargerRefused => 4,
            Reason::LimitChanged => 5,
        }
    }

    /// As `site.power` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SessionStarted => "session_started",
            Reason::SessionStopped => "session_stopped",
            Reason::LimitChanged => "limit_changed",
            Reason::ChargerReconnected => "charger_reconnected",
            Reason::ChargerRefused => "charger_refused",
            Reason::Renewal => "renewal",
        }
    }
}

/// Why `site.power_limit` was not applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SetLimitError {
    /// Out of bounds (above the cap, `until` past).
    #[error(transparent)]
    Bad(#[from] power::LimitError),
    /// The store did not keep it.
    #[error("cannot store the limit: {0}")]
    Store(String),
    /// The driver has stopped.
    #[error("the power driver has stopped")]
    Stopped,
}

/// The limit in force after `site.power_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSet {
    /// The limit in force now, W (`None`: none).
    pub max_power_w: Option<u32>,
    /// Until when, if lowered for a while.
    pub until: Option<DateTime<Utc>>,
}

enum Input {
    Changed {
        reason: Reason,
        cp_id: Option<String>,
    },
    Drawn {
        cp_id: String,
        connector_id: u32,
        power_w: u32,
    },
    Caps {
        cp_id: String,
        caps: Caps,
    },
    Limit {
        max_w: u32,
        until: Option<DateTime<Utc>>,
        reply: oneshot::Sender<Result<LimitSet, SetLimitError>>,
    },
}

/// The handle the OCPP handlers and the uplink tell the driver through; never blocks.
#[derive(Clone)]
pub struct Power(Option<mpsc::Sender<Input>>);

impl Power {
    /// A handle that goes nowhere (no driver runs).
    pub fn none() -> Power {
        Power(None)
    }

    fn send(&self, i: Input) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(i);
        }
    }

    /// Something the shares depend on changed; `cp_id` names a charger that (re)connected
    /// or booted, whose profiles must be sent again.
    pub fn changed(&self, reason: Reason, cp_id: Option<&str>) {
        self.send(Input::Changed {
            reason,
            cp_id: cp_id.map(str::to_string),
        });
    }

    /// A connector's latest measured power.
    pub fn drawn(&self, cp_id: &str, connector_id: u32, power_w: f64) {
        if power_w.is_finite() && power_w >= 0.0 {
            self.send(Input::Drawn {
                cp_id: cp_id.to_string(),
                connector_id,
                power_w: power_w.min(f64::from(u32::MAX)) as u32,
            });
        }
    }

    /// `site.power_limit`: lowers the site limit to `max_w` (0: back to the cap) until
    /// `until`; answered once committed.
    ///
    /// # Errors
    /// [`SetLimitError`].
    pub async fn set_limit(
        &self,
        max_w: u32,
        until: Option<DateTime<Utc>>,
    ) -> Result<LimitSet, SetLimitError> {
        let tx = self.0.as_ref().ok_or(SetLimitError::Stopped)?;
        let (reply, rx) = oneshot::channel();
        tx.send(Input::Limit {
            max_w,
            until,
            reply,
        })
        .await
        .map_err(|_| SetLimitError::Stopped)?;
        rx.await.map_err(|_| SetLimitError::Stopped)?
    }
}

/// What the driver needs.
pub struct Parts {
    /// `[site] max_power_kw`, W.
    pub cap_w: Option<u32>,
    /// `[[ocpp.chargers]]`: each one's power and phases.
    pub chargers: HashMap<String, ChargerEntry>,
    /// The store.
    pub store: Store,
    /// Connected chargers.
    pub registry: Registry,
    /// How long a charger has to answer a CALL.
    pub call_timeout: Duration,
}

/// What a charger advertises about smart charging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Caps {
    unit: RateUnit,
    stack_level: u32,
}

/// Starts the driver; it runs until `shutdown`.
pub fn spawn(parts: Parts, shutdown: CancellationToken) -> (Power, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let power = Power(Some(tx.clone()));
    let driver = Driver {
        parts: Arc::new(parts),
        inputs: tx,
        lowered: None,
        caps: HashMap::new(),
        asking: HashSet::new(),
        refused: HashMap::new(),
        refused_tx: HashSet::new(),
        defaults: HashMap::new(),
        sent: HashMap::new(),
        drawn: HashMap::new(),
        granted: HashMap::new(),
        caps_used: HashMap::new(),
        published: None,
        active: false,
        unreported: Reason::Renewal,
    };
    (power, tokio::spawn(driver.run(rx, shutdown)))
}

type Key = (String, u32);

/// A TxProfile in force at a connector, for the transaction it names.
#[derive(Debug, Clone)]
struct TxSent {
    transaction: TransactionRef,
    sent: Sent,
}

struct Driver {
    parts: Arc<Parts>,
    inputs: mpsc::Sender<Input>,
    lowered: Option<Lowered>,
    caps: HashMap<String, Caps>,
    /// Chargers whose capabilities are being read.
    asking: HashSet<String>,
    /// Chargers that refused their fail-safe profile, and what they said.
    refused: HashMap<String, String>,
    /// Sessions whose charger refused their TxProfile (one refusal, say for a
    /// transaction that just ended, condemns that session only).
    refused_tx: HashSet<(Key, TransactionRef)>,
    /// The fail-safe rate each charger accepted.
    defaults: HashMap<String, f64>,
    sent: HashMap<Key, TxSent>,
    drawn: HashMap<Key, Measured>,
    granted: HashMap<Key, Grant>,
    /// Each session's cap (power rule 4) in the last allocation.
    caps_used: HashMap<Key, u32>,
    published: Option<(Option<u32>, Vec<PowerAllocation>)>,
    /// Whether profiles were ever installed (so that a limit lifted clears them).
    active: bool,
    /// The weightiest cause since the last `site.power`: what the next one is reported for.
    unreported: Reason,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>, shutdown: CancellationToken) {
        match self.parts.store.lowered_power_limit().await {
            Ok(l) => self.lowered = l,
            Err(e) => tracing::error!("cannot read the lowered site power limit: {e}"),
        }
        if let Some(w) = power::limit_in_force(self.parts.cap_w, self.lowered, now()) {
            tracing::info!(
                limit_w = w,
                "site power limit in force: {w} W shared among the running sessions"
            );
        }
        let mut pending: Option<(Reason, Instant)> = None;
        let mut renew = tokio::time::interval(RENEW_TICK);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let settle_at = pending.map(|(_, at)| at);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    if let Some(reason) = self.take(input).await {
                        self.note(reason);
                        // the first reason names the rebalance; a later one only
                        // replaces a renewal
                        pending = match pending {
                            Some((r, at)) if r != Reason::Renewal || reason == Reason::Renewal => Some((r, at)),
                            _ => Some((reason, Instant::now() + SETTLE)),
                        };
                    }
                }
                _ = sleep_until(settle_at), if settle_at.is_some() => {
                    if let Some((reason, _)) = pending.take() {
                        self.rebalance(reason).await;
                    }
                }
                _ = renew.tick() => self.rebalance(Reason::Renewal).await,
            }
        }
    }

    fn note(&mut self, reason: Reason) {
        if reason.weight() > self.unreported.weight() {
            self.unreported = reason;
        }
    }

    /// Takes one input; returns the reason to rebalance, if it calls for one.
    async fn take(&mut self, input: Input) -> Option<Reason> {
        match input {
            Input::Changed { reason, cp_id } => {
                if let Some(cp) = cp_id {
                    self.forget(&cp);
                }
                Some(reason)
            }
            Input::Drawn {
                cp_id,
                connector_id,
                power_w,
            } => {
                let key = (cp_id, connector_id);
                let m = Measured {
                    w: power_w,
                    at: now(),
                };
                self.drawn.insert(key.clone(), m);
                // worth a rebalance only when it moves the car's cap (power rule 4) by
                // more than 5 % (and 500 W) from the cap the shares were computed with
                let used = self.caps_used.get(&key).copied()?;
                let (max_w, phases) = self.entry(&key.0);
                let cap = power::cap(phases, max_w, Some(m), self.granted.get(&key).copied());
                let moved = cap.abs_diff(used);
                (moved > 500 && u64::from(moved) * 20 > u64::from(used)).then_some(Reason::Renewal)
            }
            Input::Caps { cp_id, caps } => {
                self.asking.remove(&cp_id);
                self.caps.insert(cp_id, caps);
                Some(Reason::ChargerReconnected)
            }
            Input::Limit {
                max_w,
                until,
                reply,
            } => {
                let at = now();
                let outcome = match power::lower(self.parts.cap_w, max_w, until, at) {
                    Err(e) => Err(SetLimitError::Bad(e)),
                    Ok(lowered) => match self.parts.store.set_lowered_power_limit(lowered).await {
                        Err(e) => Err(SetLimitError::Store(e.to_string())),
                        Ok(()) => {
                            self.lowered = lowered;
                            let in_force = power::limit_in_force(self.parts.cap_w, lowered, at);
                            tracing::info!(
                                limit_w = in_force,
                                until = until.map(fmt_ts),
                                "site power limit changed"
                            );
                            Ok(LimitSet {
                                max_power_w: in_force,
                                until: lowered.and_then(|l| l.until),
                            })
                        }
                    },
                };
                let ok = outcome.is_ok();
                let _ = reply.send(outcome);
                ok.then_some(Reason::LimitChanged)
            }
        }
    }

    /// A charger (re)connected: whatever it was sent is sent again, it is asked what it
    /// supports, and a refusal before is forgiven.
    fn forget(&mut self, cp_id: &str) {
        self.caps.remove(cp_id);
        self.refused.remove(cp_id);
        self.refused_tx.retain(|((cp, _), _)| cp != cp_id);
        self.defaults.remove(cp_id);
        self.sent.retain(|(cp, _), _| cp != cp_id);
    }

    /// Reads what a charger supports, from a task of its own (its answers come through
    /// the very connection the handlers use).
    fn ask_caps(&mut self, cp_id: &str, version: Version) {
        if !self.asking.insert(cp_id.to_string()) {
            return;
        }
        let (registry, inputs, cp) = (
            self.parts.registry.clone(),
            self.inputs.clone(),
            cp_id.to_string(),
        );
        let timeout = self.parts.call_timeout.min(ANSWER_WITHIN);
        tokio::spawn(async move {
            tokio::time::sleep(BOOT_FIRST).await;
            let caps = read_caps(&registry, &cp, version, timeout).await;
            tracing::info!(cp_id = %cp, unit = ?caps.unit, stack_level = caps.stack_level, "smart charging: what the charger takes");
            let _ = inputs.send(Input::Caps { cp_id: cp, caps }).await;
        });
    }

    async fn rebalance(&mut self, reason: Reason) {
        let at = now();
        if self
            .lowered
            .is_some_and(|l| l.until.is_some_and(|u| u <= at))
        {
            tracing::info!("the lowered site power limit ran out; back to the cap");
            self.lowered = None;
            if let Err(e) = self.parts.store.set_lowered_power_limit(None).await {
                tracing::error!("cannot forget the lowered site power limit: {e}");
            }
            return Box::pin(self.rebalance(Reason::LimitChanged)).await;
        }
        let Some(limit_w) = power::limit_in_force(self.parts.cap_w, self.lowered, at) else {
            self.lift(reason).await;
            return;
        };
        let running = match self.parts.store.running_sessions().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("site power: cannot list the running sessions: {e}");
                return;
            }
        };
        let connected: HashMap<String, Version> = self
            .parts
            .registry
            .connected_versions()
            .into_iter()
            .map(|(id, v, _)| (id, v))
            .collect();
        for (cp, v) in &connected {
            if !self.caps.contains_key(cp) {
                self.ask_caps(cp, *v);
            }
        }
        let connectors = self.site_connectors(&connected, &running).await;
        let runs = |k: &Key| {
            running
                .iter()
                .any(|r| (r.cp_id.as_str(), r.connector_id) == (k.0.as_str(), k.1))
        };
        self.sent.retain(|k, _| runs(k));
        self.refused_tx.retain(|(k, _)| runs(k));
        self.granted.retain(|k, _| runs(k));
        self.drawn.retain(|k, _| runs(k));
        self.caps_used.retain(|k, _| runs(k));
        let mut reason = reason;
        // a refusal changes the demands: at most one more round
        for _ in 0..2 {
            let (demands, shares) = self.shares(limit_w, &running, &connected, connectors);
            let refused_before = self.refused.len() + self.refused_tx.len();
            self.send_defaults(limit_w, connectors, &connected).await;
            let safe = |phases| power::safe_share_w(limit_w, connectors, phases);
            self.send_shares(&running, &demands, &shares, &connected, &safe, at)
                .await;
            for (d, s) in demands.iter().zip(&shares) {
                let key = (s.cp_id.clone(), s.connector_id);
                let g = Grant::next(self.granted.get(&key).copied(), s.limit_w, at);
                self.granted.insert(key.clone(), g);
                self.caps_used
                    .insert(key, power::cap(d.phases, d.max_w, d.drawn, d.granted));
            }
            if self.refused.len() + self.refused_tx.len() == refused_before {
                self.publish(Some(limit_w), &shares, reason, at).await;
                return;
            }
            reason = Reason::ChargerRefused;
        }
        let (_, shares) = self.shares(limit_w, &running, &connected, connectors);
        self.publish(Some(limit_w), &shares, reason, at).await;
    }

    /// Every connector the site has to keep under its limit at once: those of the
    /// configured and the connected chargers (at least one each), as their status
    /// notifications reported them.
    async fn site_connectors(
        &self,
        connected: &HashMap<String, Version>,
        running: &[RunningSession],
    ) -> usize {
        let mut per: HashMap<String, usize> = HashMap::new();
        for cp in self
            .parts
            .chargers
            .keys()
            .chain(connected.keys())
            .chain(running.iter().map(|r| &r.cp_id))
        {
            per.entry(cp.clone()).or_insert(1);
        }
        if let Ok(rows) = self.parts.store.connectors(None).await {
            let mut seen: HashMap<&str, HashSet<i64>> = HashMap::new();
            for r in rows.iter().filter(|r| r.connector_id > 0) {
                seen.entry(&r.cp_id).or_default().insert(r.connector_id);
            }
            for (cp, ids) in seen {
                if let Some(n) = per.get_mut(cp) {
                    *n = (*n).max(ids.len());
                }
            }
        }
        per.values().sum()
    }

    fn entry(&self, cp_id: &str) -> (u32, u8) {
        self.parts
            .chargers
            .get(cp_id)
            .map_or((DEFAULT_CONNECTOR_POWER_W, 3), |e| {
                (e.max_power_w, e.phases)
            })
    }

    fn obeys(&self, r: &RunningSession, connected: &HashMap<String, Version>) -> bool {
        let Some(version) = connected.get(&r.cp_id) else {
            return false;
        };
        let key = (r.cp_id.clone(), r.connector_id);
        self.caps.contains_key(&r.cp_id)
            && !self.refused.contains_key(&r.cp_id)
            && tx_of(r, *version).is_some_and(|t| !self.refused_tx.contains(&(key, t)))
    }

    /// Whether the session's share is not followed because its TxProfile was refused.
    fn session_refused(&self, r: &RunningSession, connected: &HashMap<String, Version>) -> bool {
        connected
            .get(&r.cp_id)
            .and_then(|v| tx_of(r, *v))
            .is_some_and(|t| {
                self.refused_tx
                    .contains(&((r.cp_id.clone(), r.connector_id), t))
            })
    }

    fn shares(
        &self,
        limit_w: u32,
        running: &[RunningSession],
        connected: &HashMap<String, Version>,
        connectors: usize,
    ) -> (Vec<Demand>, Vec<power::Share>) {
        let demands: Vec<Demand> = running
            .iter()
            .map(|r| {
                let key = (r.cp_id.clone(), r.connector_id);
                let (max_w, phases) = self.entry(&r.cp_id);
                let obeys = self.obeys(r, connected);
                let granted = self.granted.get(&key).copied();
                // A charger out of reach may still draw its last share (its TxProfile
                // lasts minutes) and then its fail-safe; one that refused, or that has
                // not yet said what it takes, may draw its all.
                let out_of_reach = !connected.contains_key(&r.cp_id);
                let max_w = match granted {
                    Some(g)
                        if out_of_reach
                            && !self.refused.contains_key(&r.cp_id)
                            && !self.session_refused(r, connected) =>
                    {
                        g.w.max(power::safe_share_w(limit_w, connectors, phases))
                            .min(max_w)
                    }
                    _ => max_w,
                };
                Demand {
                    cp_id: r.cp_id.clone(),
                    connector_id: r.connector_id,
                    phases,
                    max_w,
                    drawn: self.drawn.get(&key).copied(),
                    granted,
                    obeys,
                    since: r.since,
                }
            })
            .collect();
        let shares = power::allocate(limit_w, &demands);
        (demands, shares)
    }

    /// Installs the fail-safe TxDefaultProfile where it is missing or out of date.
    async fn send_defaults(
        &mut self,
        limit_w: u32,
        connectors: usize,
        connected: &HashMap<String, Version>,
    ) {
        let mut jobs = tokio::task::JoinSet::new();
        for cp in connected.keys() {
            let Some(caps) = self.caps.get(cp).copied() else {
                continue;
            };
            if self.refused.contains_key(cp) {
                continue;
            }
            let (_, phases) = self.entry(cp);
            let safe = power::safe_share_w(limit_w, connectors, phases);
            let rate = power::rate(safe, phases, caps.unit);
            if self.defaults.get(cp) == Some(&rate) {
                continue;
            }
            let command = Command::SetChargingProfile {
                connector_id: 0,
                profile: Profile {
                    id: DEFAULT_PROFILE_ID,
                    stack_level: caps.stack_level,
                    purpose: ProfilePurpose::TxDefault,
                    unit: caps.unit,
                    limit: rate,
                    phases,
                    schedule: None,
                },
            };
            let (registry, cp, timeout) = (
                self.parts.registry.clone(),
                cp.clone(),
                self.parts.call_timeout.min(ANSWER_WITHIN),
            );
            jobs.spawn(async move {
                let outcome = profile_answer(cmd::send(&registry, &cp, command, timeout).await);
                (cp, rate, outcome)
            });
        }
        while let Some(done) = jobs.join_next().await {
            let Ok((cp, rate, outcome)) = done else {
                continue;
            };
            match outcome {
                Answered::Accepted => {
                    self.active = true;
                    if self.defaults.insert(cp.clone(), rate).is_none() {
                        tracing::info!(cp_id = %cp, rate, "fail-safe charging profile installed");
                    }
                }
                Answered::Refused(why) => self.refuse(&cp, "its fail-safe TxDefaultProfile", why),
                Answered::NoAnswer(why) => {
                    tracing::debug!(cp_id = %cp, "fail-safe profile not delivered: {why}")
                }
            }
        }
    }

    /// Sends each obeying session's share where it is due: reductions first (and
    /// answered), then the rest.
    async fn send_shares(
        &mut self,
        running: &[RunningSession],
        demands: &[Demand],
        shares: &[power::Share],
        connected: &HashMap<String, Version>,
        safe: &(dyn Fn(u8) -> u32 + Sync),
        at: DateTime<Utc>,
    ) {
        let mut lower = Vec::new();
        let mut raise = Vec::new();
        for ((r, d), s) in running.iter().zip(demands).zip(shares) {
            if !d.obeys {
                continue;
            }
            let (Some(caps), Some(version)) =
                (self.caps.get(&r.cp_id).copied(), connected.get(&r.cp_id))
            else {
                continue;
            };
            let key = (r.cp_id.clone(), r.connector_id);
            let Some(transaction) = tx_of(r, *version) else {
                continue;
            };
            let rate = power::rate(s.limit_w, d.phases, caps.unit);
            let previous = self.sent.get(&key).filter(|t| t.transaction == transaction);
            if !power::due(previous.map(|t| t.sent), rate, at) {
                continue;
            }
            let (start, secs) = power::tx_schedule(at);
            let command = Command::SetChargingProfile {
                connector_id: r.connector_id,
                profile: Profile {
                    id: TX_PROFILE_BASE_ID
                        .saturating_add(i32::try_from(r.connector_id).unwrap_or(0)),
                    stack_level: caps.stack_level,
                    purpose: ProfilePurpose::Tx(transaction.clone()),
                    unit: caps.unit,
                    limit: rate,
                    phases: d.phases,
                    schedule: Some((start, secs)),
                },
            };
            // what it may draw now: its last share, or a new session's fail-safe
            let was = self
                .granted
                .get(&key)
                .map_or_else(|| safe(d.phases), |g| g.w);
            let job = (key, transaction, rate, command);
            if s.limit_w < was {
                lower.push(job);
            } else {
                raise.push(job);
            }
        }
        for batch in [lower, raise] {
            let mut jobs = tokio::task::JoinSet::new();
            for (key, transaction, rate, command) in batch {
                let (registry, timeout) = (
                    self.parts.registry.clone(),
                    self.parts.call_timeout.min(ANSWER_WITHIN),
                );
                jobs.spawn(async move {
                    let outcome =
                        profile_answer(cmd::send(&registry, &key.0, command, timeout).await);
                    (key, transaction, rate, outcome)
                });
            }
            while let Some(done) = jobs.join_next().await {
                let Ok((key, transaction, rate, outcome)) = done else {
                    continue;
                };
                match outcome {
                    Answered::Accepted => {
                        self.active = true;
                        self.sent.insert(
                            key,
                            TxSent {
                                transaction,
                                sent: Sent { rate, at },
                            },
                        );
                    }
                    Answered::Refused(why) => {
                        tracing::warn!(cp_id = %key.0, connector_id = key.1, %transaction,
                            "charger refused the session's TxProfile ({why}): the session is counted at its maximum power and the others are reduced to keep the site limit");
                        self.refused_tx.insert((key, transaction));
                    }
                    Answered::NoAnswer(why) => {
                        tracing::debug!(cp_id = %key.0, connector_id = key.1, "share not delivered: {why}")
                    }
                }
            }
        }
    }

    fn refuse(&mut self, cp_id: &str, what: &str, why: String) {
        if self
            .refused
            .insert(cp_id.to_string(), why.clone())
            .is_none()
        {
            tracing::warn!(
                cp_id,
                "charger refused {what} ({why}): it is counted at its maximum power and the other sessions are reduced to keep the site limit"
            );
        }
    }

    /// No limit is in force (any more): profiles the agent installed are cleared once.
    async fn lift(&mut self, reason: Reason) {
        if !self.active {
            return;
        }
        self.active = false;
        tracing::info!("no site power limit in force: clearing the agent's charging profiles");
        let chargers: Vec<String> = self.parts.registry.connected();
        let mut ids: HashMap<String, Vec<i32>> = HashMap::new();
        for cp in &chargers {
            ids.entry(cp.clone()).or_default().push(DEFAULT_PROFILE_ID);
        }
        for (cp, connector) in self.sent.keys() {
            ids.entry(cp.clone())
                .or_default()
                .push(TX_PROFILE_BASE_ID.saturating_add(i32::try_from(*connector).unwrap_or(0)));
        }
        let timeout = self.parts.call_timeout.min(ANSWER_WITHIN);
        for (cp, ids) in ids {
            for id in ids {
                if let Err(e) = cmd::send(
                    &self.parts.registry,
                    &cp,
                    Command::ClearChargingProfile { id },
                    timeout,
                )
                .await
                {
                    tracing::debug!(cp_id = %cp, id, "ClearChargingProfile: {e}");
                }
            }
        }
        self.defaults.clear();
        self.sent.clear();
        self.granted.clear();
        self.publish(None, &[], reason, now()).await;
    }

    /// `site.power`, when the limit or the shares differ from the last one sent.
    async fn publish(
        &mut self,
        limit_w: Option<u32>,
        shares: &[power::Share],
        reason: Reason,
        at: DateTime<Utc>,
    ) {
        let allocations: Vec<PowerAllocation> = shares
            .iter()
            .map(|s| PowerAllocation {
                cp_id: s.cp_id.clone(),
                connector_id: s.connector_id,
                limit_w: s.limit_w,
                assumed: s.assumed,
            })
            .collect();
        let now_published = (limit_w, allocations);
        self.note(reason);
        if self.published.as_ref() == Some(&now_published) {
            self.unreported = Reason::Renewal;
            return;
        }
        // a charger still saying what it takes is counted at its maximum for a moment;
        // the shares worth reporting follow once it has answered
        if !self.asking.is_empty() && limit_w.is_some() {
            return;
        }
        let reason = match (self.unreported, &self.published) {
            // a change nobody asked for (a reading moved a cap, a session nobody told us
            // about yet) is reported under the nearest cause
            (Reason::Renewal, Some((l, _))) if *l != limit_w => Reason::LimitChanged,
            // the agent's first report: the limit comes into force
            (_, None) => Reason::LimitChanged,
            (Reason::Renewal, _) => Reason::SessionStarted,
            (r, _) => r,
        };
        let event = Event::SitePower {
            max_power_w: now_published.0,
            until: self.lowered.and_then(|l| l.until).map(fmt_ts),
            allocations: now_published.1.clone(),
            reason: reason.as_str(),
        };
        match self.parts.store.site_power(event, at).await {
            Ok(()) => {
                self.published = Some(now_published);
                self.unreported = Reason::Renewal;
            }
            Err(e) => tracing::error!("cannot record site.power: {e}"),
        }
    }
}

/// A running session's transaction as its charger's version names it.
fn tx_of(r: &RunningSession, version: Version) -> Option<TransactionRef> {
    match version {
        Version::V16 => Some(TransactionRef::V16(r.transaction_id)),
        Version::V201 => r.charger_tx_id.clone().map(TransactionRef::V201),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

enum Answered {
    Accepted,
    Refused(String),
    NoAnswer(String),
}

fn profile_answer(answer: Result<Value, cmd::CommandError>) -> Answered {
    match answer {
        // the agent's own profile does not fit the schema: a defect of this build, never
        // to pass silently
        Err(cmd::CommandError::BadRequest(why)) => {
            tracing::error!("a charging profile of the agent's own was not sent: {why}");
            Answered::NoAnswer(why)
        }
        Ok(a) => match a.get("status").and_then(Value::as_str) {
            Some("Accepted") => Answered::Accepted,
            other => Answered::Refused(format!("status {}", other.unwrap_or("?"))),
        },
        Err(cmd::CommandError::Call(CallFailure::Rejected { code, description })) => {
            Answered::Refused(format!("CALLERROR {code}: {description}"))
        }
        Err(cmd::CommandError::BadResponse(why)) => Answered::Refused(why),
        Err(e) => Answered::NoAnswer(e.to_string()),
    }
}

/// What a charger advertises (1.6 configuration keys, 2.0.1 `SmartChargingCtrlr`); amperes
/// and stack level 0 when it does not say.
async fn read_caps(registry: &Registry, cp_id: &str, version: Version, timeout: Duration) -> Caps {
    let (unit_key, stack_key) = match version {
        Version::V16 => (
            "ChargingScheduleAllowedChargingRateUnit",
            "ChargeProfileMaxStackLevel",
        ),
        Version::V201 => ("RateUnit", "ProfileStackLevel"),
    };
    let command = match version {
        Version::V16 => Command::GetConfiguration {
            keys: vec![unit_key.into(), stack_key.into()],
        },
        Version::V201 => Command::GetVariables {
            variables: vec![
                VariableRef::new("SmartChargingCtrlr", unit_key),
                VariableRef::new("SmartChargingCtrlr", stack_key),
            ],
        },
    };
    let values: HashMap<String, String> = match cmd::send(registry, cp_id, command, timeout).await {
        Ok(answer) => advertised(version, &answer),
        Err(e) => {
            tracing::info!(
                cp_id,
                "cannot read its smart charging settings ({e}); assuming amperes, stack level 0"
            );
            HashMap::new()
        }
    };
    Caps {
        unit: RateUnit::from_advertised(values.get(unit_key).map(String::as_str)),
        stack_level: values
            .get(stack_key)
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0)
            .min(100),
    }
}

/// The (name, value) pairs a GetConfiguration or GetVariables answer carries.
fn advertised(version: Version, answer: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    match version {
        Version::V16 => {
            for kv in answer["configurationKey"].as_array().into_iter().flatten() {
                if let (Some(k), Some(v)) = (kv["key"].as_str(), kv["value"].as_str()) {
                    out.insert(k.to_string(), v.to_string());
                }
            }
        }
        Version::V201 => {
            for r in answer["getVariableResult"].as_array().into_iter().flatten() {
                if r["attributeStatus"] != "Accepted" {
                    continue;
                }
                if let (Some(k), Some(v)) =
                    (r["variable"]["name"].as_str(), r["attributeValue"].as_str())
                {
                    out.insert(k.to_string(), v.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_a_charger_advertises_is_read_from_either_versions_answer() {
        let v16 = advertised(
            Version::V16,
            &json!({"configurationKey": [
                {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": true, "value": "Current,Power"},
                {"key": "ChargeProfileMaxStackLevel", "readonly": true, "value": "8"}],
                "unknownKey": []}),
        );
        assert_eq!(v16["ChargeProfileMaxStackLevel"], "8");
        let v201 = advertised(
            Version::V201,
            &json!({"getVariableResult": [
                {"attributeStatus": "Accepted", "attributeValue": "A,W",
                 "component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "RateUnit"}},
                {"attributeStatus": "UnknownVariable",
                 "component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "ProfileStackLevel"}}]}),
        );
        assert_eq!(v201.len(), 1);
        assert_eq!(
            RateUnit::from_advertised(v201.get("RateUnit").map(String::as_str)),
            RateUnit::Watts
        );
    }

    #[test]
    fn a_profile_answer_other_than_accepted_is_a_refusal_and_silence_is_not() {
        assert!(matches!(
            profile_answer(Ok(json!({"status": "Accepted"}))),
            Answered::Accepted
        ));
        assert!(matches!(
            profile_answer(Ok(json!({"status": "Rejected"}))),
            Answered::Refused(_)
        ));
        assert!(matches!(
            profile_answer(Err(cmd::CommandError::Call(CallFailure::Rejected {
                code: "NotSupported".into(),
                description: String::new()
            }))),
            Answered::Refused(_)
        ));
        assert!(matches!(
            profile_answer(Err(cmd::CommandError::Call(CallFailure::Timeout))),
            Answered::NoAnswer(_)
        ));
    }
}
