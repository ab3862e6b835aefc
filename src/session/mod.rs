//! The session core: the life of one charging session as pure functions, the same for
//! every OCPP version.
//!
//! The store loads a [`Session`] inside its transaction, calls a rule here with the
//! decoded facts and the site clock, and writes what the rule decided (the session's new
//! state, the flags on each stored reading, the upstream event bodies of
//! [`crate::events`]); the OCPP driver only learns whether to stop the charger. Nothing
//! here touches SQL, sockets or the clock, so every rule is a unit test away:
//!
//! - [`start_flags`]: what is suspicious about a start (a charger clock that cannot be
//!   right, a `meterStart` of 0 where the register was higher, a session still open).
//! - [`meter`]: readings advance the energy [`Register`] (never backwards, never a jump
//!   a charger could not deliver), accrue cost by the tariff, and decide the budget stop
//!   two readings ahead of the budget, once.
//! - [`stop`]: the last readings and `meterStop`, the final cost and the settlement.
//! - [`match_stop`]: a stop for a session that already ended is a duplicate, one for a
//!   transaction never seen is unknown; both are recorded and answered, never refused.
//! - [`link`]: which link broke a session (the charger's or the agent's), and what a
//!   crash of the agent left open to close at the next start ([`link::after_restart`]).

pub mod link;
pub mod register;

use chrono::{DateTime, Utc};

pub use link::Link;
pub use register::{Anomaly, Register};

use crate::billing::{self, Accrual, Budget, Cost, Settlement, Tariff};
use crate::reading::Sample;
use crate::time::{clock_flag, ChargerTime};

/// Something noted on a session or a stored reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// The register went down.
    MeterBackwards,
    /// The register rose faster than the charger could deliver.
    MeterJump,
    /// `meterStart` 0 where this connector's register was higher (a rebooted meter).
    MeterStartZero,
    /// A session on the same connector was still open at this start.
    PreviousSessionOpen,
    /// The charger's clock reads before 2015: never set.
    ClockUnset,
    /// The charger's clock runs ahead of the site's.
    ClockAhead,
    /// The running cost reached the budget; the agent stopped the charger.
    BudgetReached,
    /// A reading that belongs to no running session.
    NoSession,
    /// The session's stored tariff or accrual could not be read: it is metered, not priced.
    BillingUnreadable,
    /// OCPP 2.0.1: a TransactionEvent `seqNo` was skipped (an event may be missing).
    SeqGap,
    /// OCPP 2.0.1: the reading came in an event after the transaction's `Ended`: recorded,
    /// never applied.
    AfterEnded,
    /// The reading was taken while the charger was offline and delivered later.
    Offline,
    /// Started by an id tag the site does not know, accepted because the uplink was down
    /// and `[auth] unknown_tags = "accept_offline"`: to be settled later.
    UnknownTag,
}

const ALL_FLAGS: [Flag; 13] = [
    Flag::MeterBackwards,
    Flag::MeterJump,
    Flag::MeterStartZero,
    Flag::PreviousSessionOpen,
    Flag::ClockUnset,
    Flag::ClockAhead,
    Flag::BudgetReached,
    Flag::NoSession,
    Flag::BillingUnreadable,
    Flag::SeqGap,
    Flag::AfterEnded,
    Flag::Offline,
    Flag::UnknownTag,
];

impl Flag {
    /// The name stored and sent upstream.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::MeterBackwards => "meter_backwards",
            Flag::MeterJump => "meter_jump",
            Flag::MeterStartZero => "meter_start_zero",
            Flag::PreviousSessionOpen => "previous_session_open",
            Flag::ClockUnset => "clock_unset",
            Flag::ClockAhead => "clock_ahead",
            Flag::BudgetReached => "budget_reached",
            Flag::NoSession => "no_session",
            Flag::BillingUnreadable => "billing_unreadable",
            Flag::SeqGap => "seq_gap",
            Flag::AfterEnded => "after_ended",
            Flag::Offline => "offline",
            Flag::UnknownTag => "unknown_tag",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of [`Flag`]s, stored as their names joined by commas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// Adds a flag (once).
    pub fn insert(&mut self, f: Flag) {
        self.0 |= f.bit();
    }

    /// Adds every flag of `other`.
    pub fn insert_all(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    /// Whether `f` is set.
    pub fn contains(self, f: Flag) -> bool {
        self.0 & f.bit() != 0
    }

    /// The flags set, in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = Flag> {
        ALL_FLAGS.into_iter().filter(move |f| self.contains(*f))
    }

    /// The names, for an event body.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Flag::as_str).collect()
    }

    /// The stored form: names joined by commas, empty for none.
    pub fn to_stored(self) -> String {
        // Every stored reading carries its flags, nearly always none: no allocation then.
        let mut out = String::new();
        for f in self.iter() {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(f.as_str());
        }
        out
    }

    /// Reads the stored form back.
    ///
    /// # Errors
    /// The name that is no flag this build knows.
    pub fn from_stored(s: &str) -> Result<Flags, String> {
        let mut flags = Flags::default();
        for name in s.split(',').filter(|n| !n.is_empty()) {
            let f = ALL_FLAGS
                .into_iter()
                .find(|f| f.as_str() == name)
                .ok_or_else(|| name.to_string())?;
            flags.insert(f);
        }
        Ok(flags)
    }

    /// The set holding only `f`.
    pub fn single(f: Flag) -> Flags {
        let mut s = Flags::default();
        s.insert(f);
        s
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Charging or about to: readings count.
    Active,
    /// Ended: nothing changes it any more.
    Stopped,
}

impl State {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Stopped => "stopped",
        }
    }

    /// Reads the stored spelling back.
    pub fn parse(s: &str) -> Option<State> {
        match s {
            "active" => Some(State::Active),
            "stopped" => Some(State::Stopped),
            _ => None,
        }
    }
}

/// The bounds the rules take from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// No charger delivers more than this: a faster register step is a jump.
    pub max_charger_power_w: i64,
    /// How far ahead of the site a charger clock may run before it is flagged.
    pub clock_tolerance_secs: i64,
}

/// A session priced by an order's tariff.
#[derive(Debug, Clone, PartialEq)]
pub struct Billing {
    /// The order's tariff.
    pub tariff: Tariff,
    /// What has been accrued so far.
    pub accrual: Accrual,
    /// The order's budget.
    pub budget: Option<Budget>,
    /// The agent has already decided to stop the charger for the budget.
    pub budget_stop: bool,
}

/// A session as the rules see it: loaded by the store, changed here, saved back.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The OCPP transaction id (the agent's own, for 1.6).
    pub transaction_id: i64,
    /// The site-issued id.
    pub session_id: String,
    /// Where it is in its life.
    pub state: State,
    /// The energy register.
    pub register: Register,
    /// Everything noted so far.
    pub flags: Flags,
    /// The pricing, when an order's tariff applies.
    pub billing: Option<Billing>,
}

/// The flag for a charger timestamp that cannot be right.
pub fn clock(ts: &ChargerTime, received: DateTime<Utc>, limits: &Limits) -> Option<Flag> {
    clock_flag(ts.at, received, limits.clock_tolerance_secs).map(|f| match f {
        "clock_unset" => Flag::ClockUnset,
        _ => Flag::ClockAhead,
    })
}

/// What is known when a start arrives.
#[derive(Debug, Clone, Copy)]
pub struct StartFacts<'a> {
    /// `meterStart`, Wh.
    pub meter_start_wh: i64,
    /// The charger's start time.
    pub timestamp: &'a ChargerTime,
    /// Site clock at receipt.
    pub received: DateTime<Utc>,
    /// The register this connector's previous session ended on, if any.
    pub previous_register_wh: Option<i64>,
    /// A session on this connector is still active.
    pub open_before: bool,
}

/// What is suspicious about a start. A `meterStart` of 0 where the register was known to
/// be higher is the classic rebooted-meter start: it is flagged here, and the register
/// then refuses the jump that follows.
pub fn start_flags(f: &StartFacts<'_>, limits: &Limits) -> Flags {
    let mut flags = Flags::default();
    if let Some(c) = clock(f.timestamp, f.received, limits) {
        flags.insert(c);
    }
    if f.meter_start_wh == 0 && f.previous_register_wh.is_some_and(|p| p > 0) {
        flags.insert(Flag::MeterStartZero);
    }
    if f.open_before {
        flags.insert(Flag::PreviousSessionOpen);
    }
    flags
}

/// A session's running cost (the live snapshot's `cost`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunningCost {
    /// ISO 4217.
    pub currency: String,
    /// Minor units so far.
    pub total_minor: i64,
}

/// What readings did to a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Metered {
    /// The flags to store on each reading, in order.
    pub row_flags: Vec<Flags>,
    /// The running cost, when a tariff applies and the session is running.
    pub running: Option<RunningCost>,
    /// True exactly once: the running cost (or the cost two readings ahead) reached the
    /// budget, and the agent must now stop the charger.
    pub stop_for_budget: bool,
}

/// A counted register step, for the budget's look-ahead.
#[derive(Debug, Clone, Copy)]
struct Step {
    wh: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// Advances the register (and the accrual) over `samples`; returns the flags for each
/// stored reading and the last counted step. With `only_newer`, readings not newer than
/// the register's last are stored but not counted (a StopTransaction's transactionData
/// repeats readings the charger already sent as MeterValues).
fn advance(
    s: &mut Session,
    samples: &[Sample],
    received: DateTime<Utc>,
    only_newer: bool,
    limits: &Limits,
) -> (Vec<Flags>, Option<Step>) {
    let mut row_flags = Vec::with_capacity(samples.len());
    let mut last_step = None;
    for sample in samples {
        let mut row = Flags::default();
        if let (Some(wh), State::Active) = (sample.energy_wh, s.state) {
            if !only_newer || sample.at.at > s.register.last_at {
                let before = s.register;
                let (reg, anomaly) =
                    before.advance(wh, sample.at.at, received, limits.max_charger_power_w);
                s.register = reg;
                let delta = reg.energy_wh - before.energy_wh;
                if delta > 0 {
                    last_step = Some(Step {
                        wh: delta,
                        from: before.last_at,
                        to: reg.last_at,
                    });
                }
                if let Some(b) = s.billing.as_mut() {
                    b.accrual.add(&b.tariff, delta, before.last_at, reg.last_at);
                }
                if let Some(a) = anomaly {
                    s.flags.insert(a.flag());
                    row.insert(a.flag());
                }
            }
        }
        row_flags.push(row);
    }
    (row_flags, last_step)
}

/// The flags of readings that belong to no running session.
pub fn orphan_flags(samples: &[Sample]) -> Vec<Flags> {
    vec![Flags::single(Flag::NoSession); samples.len()]
}

/// MeterValues for a session: the register and accrual advance, and the budget is
/// checked two readings ahead at the current pace (the charger keeps delivering for
/// about one more interval after it is told to stop, so the stop must go out before the
/// budget is crossed, not one interval after). A stopped session only stores them.
///
/// Readings a charger took offline and delivers later (`replayed`) are billed on the
/// register they carry, in timestamp order: one older than the register already counted
/// adds nothing (the register is cumulative, so the newer reading already holds its
/// energy) instead of being taken for a register that stepped back.
pub fn meter(
    s: &mut Session,
    samples: &[Sample],
    received: DateTime<Utc>,
    replayed: bool,
    limits: &Limits,
) -> Metered {
    let (row_flags, last_step) = advance(s, samples, received, replayed, limits);
    let mut running = None;
    let mut stop_for_budget = false;
    if let (Some(b), State::Active) = (s.billing.as_mut(), s.state) {
        let now_cost = billing::cost(&b.tariff, &b.accrual, s.register.last_at);
        let mut ahead = b.accrual.clone();
        if let Some(step) = last_step {
            let pace = step.to - step.from;
            ahead.add(&b.tariff, 2 * step.wh, step.to, step.to + pace * 2);
        }
        let next = billing::cost(&b.tariff, &ahead, s.register.last_at);
        if let Some(budget) = &b.budget {
            let reached = billing::budget_reached(budget, &now_cost)
                || billing::budget_reached(budget, &next);
            if reached && !b.budget_stop {
                b.budget_stop = true;
                stop_for_budget = true;
                s.flags.insert(Flag::BudgetReached);
            }
        }
        running = Some(RunningCost {
            currency: now_cost.currency,
            total_minor: now_cost.total_minor,
        });
    }
    Metered {
        row_flags,
        running,
        stop_for_budget,
    }
}

/// How a stop matched the sessions of its charger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMatch {
    /// It ends a running session.
    Ends,
    /// That session had already ended: recorded, changes no bill.
    Duplicate,
    /// No session has that transaction id: recorded and reported upstream.
    Unknown,
}

/// Matches a stop against the state of the session with its transaction id.
pub fn match_stop(found: Option<State>) -> StopMatch {
    match found {
        Some(State::Active) => StopMatch::Ends,
        Some(State::Stopped) => StopMatch::Duplicate,
        None => StopMatch::Unknown,
    }
}

/// What is known when a stop arrives.
#[derive(Debug, Clone, Copy)]
pub struct StopFacts<'a> {
    /// `meterStop`, Wh.
    pub meter_stop_wh: i64,
    /// The charger's stop time.
    pub timestamp: &'a ChargerTime,
    /// The charger's reason, absent meaning `Local`.
    pub reason: Option<&'a str>,
    /// The readings that came with the stop.
    pub transaction_data: &'a [Sample],
    /// Site clock at receipt.
    pub received: DateTime<Utc>,
}

/// The final bill of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Closing {
    /// The flags to store on each transactionData reading, in order.
    pub row_flags: Vec<Flags>,
    /// The reason upstream: `BudgetReached` when the agent stopped it for the budget.
    pub reason: String,
    /// Energy billed, Wh.
    pub energy_wh: i64,
    /// When a tariff applies.
    pub cost: Option<Cost>,
    /// When the budget was prepaid.
    pub settlement: Option<Settlement>,
}

/// Ends a running session: its transactionData and `meterStop` advance the register
/// like any reading, and the bill is priced until the later of the stop and the last
/// reading (idle fees run until the session stops).
pub fn stop(s: &mut Session, f: &StopFacts<'_>, limits: &Limits) -> Closing {
    let (row_flags, _) = advance(s, f.transaction_data, f.received, true, limits);
    let before = s.register;
    let (reg, anomaly) = before.advance(
        f.meter_stop_wh,
        f.timestamp.at,
        f.received,
        limits.max_charger_power_w,
    );
    s.register = reg;
    if let Some(b) = s.billing.as_mut() {
        b.accrual.add(
            &b.tariff,
            reg.energy_wh - before.energy_wh,
            before.last_at,
            reg.last_at,
        );
    }
    if let Some(a) = anomaly {
        s.flags.insert(a.flag());
    }
    if let Some(c) = clock(f.timestamp, f.received, limits) {
        s.flags.insert(c);
    }
    s.state = State::Stopped;
    let mut reason = f.reason.unwrap_or("Local").to_string();
    let mut cost = None;
    let mut settlement = None;
    if let Some(b) = &s.billing {
        if b.budget_stop {
            reason = "BudgetReached".to_string();
        }
        let bill = billing::cost(
            &b.tariff,
            &b.accrual,
            f.timestamp.at.max(s.register.last_at),
        );
        settlement = b
            .budget
            .as_ref()
            .filter(|b| b.prepaid)
            .map(|b| billing::settlement(b, &bill));
        cost = Some(bill);
    }
    Closing {
        row_flags,
        reason,
        energy_wh: s.register.energy_wh,
        cost,
        settlement,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_charger_power_w: 22_000,
        clock_tolerance_secs: 300,
    };

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_795_000_000 + secs, 0).unwrap()
    }

    fn at(secs: i64) -> ChargerTime {
        ChargerTime {
            raw: crate::time::fmt_ts(t(secs)),
            at: t(secs),
        }
    }

    fn reading(secs: i64, wh: i64) -> Sample {
        Sample {
            at: at(secs),
            energy_wh: Some(wh),
            power_w: None,
            current_a: None,
            voltage_v: None,
            soc_pct: None,
            context: None,
            raw: String::new(),
            event: String::new(),
        }
    }

    fn session(start_wh: i64, billing: Option<Billing>) -> Session {
        Session {
            transaction_id: 7,
            session_id: "site-x-7".into(),
            state: State::Active,
            register: Register::start(start_wh, t(0), t(0)),
            flags: Flags::default(),
            billing,
        }
    }

    fn priced(v: serde_json::Value, budget_minor: Option<i64>) -> Option<Billing> {
        Some(Billing {
            tariff: Tariff::from_json(&v).unwrap(),
            accrual: Accrual::default(),
            budget: budget_minor.map(|amount_minor| Budget {
                currency: "INR".into(),
                amount_minor,
                prepaid: true,
            }),
            budget_stop: false,
        })
    }

    fn inr_per_kwh(minor: i64) -> serde_json::Value {
        json!({"currency": "INR", "energy_minor_per_kwh": minor, "timezone": "UTC"})
    }

    fn stop_at(secs: i64, wh: i64) -> (ChargerTime, i64) {
        (at(secs), wh)
    }

    fn facts<'a>(ts: &'a ChargerTime, wh: i64, data: &'a [Sample]) -> StopFacts<'a> {
        StopFacts {
            meter_stop_wh: wh,
            timestamp: ts,
            reason: None,
            transaction_data: data,
            received: ts.at,
        }
    }

    #[test]
    fn flags_survive_their_stored_form_and_an_unknown_name_is_an_error() {
        let mut f = Flags::default();
        f.insert(Flag::MeterJump);
        f.insert(Flag::ClockAhead);
        f.insert(Flag::MeterJump);
        assert_eq!(f.to_stored(), "meter_jump,clock_ahead");
        assert_eq!(Flags::from_stored(&f.to_stored()), Ok(f));
        assert_eq!(Flags::from_stored(""), Ok(Flags::default()));
        assert_eq!(
            Flags::from_stored("meter_jump,gremlins"),
            Err("gremlins".into())
        );
    }

    #[test]
    fn a_meter_start_of_zero_after_a_reboot_is_flagged_and_never_billed_as_a_huge_delta() {
        let ts = at(0);
        let flags = start_flags(
            &StartFacts {
                meter_start_wh: 0,
                timestamp: &ts,
                received: t(0),
                previous_register_wh: Some(910_000),
                open_before: false,
            },
            &LIMITS,
        );
        assert!(flags.contains(Flag::MeterStartZero));
        let mut s = session(0, priced(inr_per_kwh(1600), None));
        let m = meter(&mut s, &[reading(60, 910_000)], t(60), false, &LIMITS);
        assert!(m.row_flags[0].contains(Flag::MeterJump));
        assert_eq!(s.register.energy_wh, 0);
        assert_eq!(m.running.unwrap().total_minor, 0);
        meter(&mut s, &[reading(660, 912_000)], t(660), false, &LIMITS);
        assert_eq!(s.register.energy_wh, 2000);
    }

    #[test]
    fn an_offline_reading_older_than_the_register_adds_nothing_and_is_no_step_back() {
        let mut s = session(0, priced(inr_per_kwh(1600), None));
        meter(&mut s, &[reading(600, 2000)], t(900), true, &LIMITS);
        assert_eq!(s.register.energy_wh, 2000);
        // delivered late and out of order: already counted by the newer register
        let m = meter(&mut s, &[reading(300, 1000)], t(901), true, &LIMITS);
        assert_eq!(m.row_flags[0], Flags::default());
        assert!(!s.flags.contains(Flag::MeterBackwards));
        assert_eq!(s.register.energy_wh, 2000);
        // a live reading that steps back is still a step back
        let m = meter(&mut s, &[reading(900, 1500)], t(902), false, &LIMITS);
        assert!(m.row_flags[0].contains(Flag::MeterBackwards));
    }

    #[test]
    fn a_first_start_at_zero_or_a_start_with_a_sane_clock_is_not_flagged() {
        let ts = at(0);
        let f = StartFacts {
            meter_start_wh: 0,
            timestamp: &ts,
            received: t(0),
            previous_register_wh: None,
            open_before: false,
        };
        assert_eq!(start_flags(&f, &LIMITS), Flags::default());
        let open = StartFacts {
            open_before: true,
            ..f
        };
        assert!(start_flags(&open, &LIMITS).contains(Flag::PreviousSessionOpen));
    }

    #[test]
    fn a_charger_clock_in_1970_is_flagged_at_start_and_at_stop() {
        let unset = ChargerTime {
            raw: "1970-01-01T00:00:00Z".into(),
            at: Utc.timestamp_opt(0, 0).unwrap(),
        };
        let f = StartFacts {
            meter_start_wh: 100,
            timestamp: &unset,
            received: t(0),
            previous_register_wh: None,
            open_before: false,
        };
        assert!(start_flags(&f, &LIMITS).contains(Flag::ClockUnset));
        let mut s = session(100, None);
        let ts = ChargerTime {
            raw: "x".into(),
            at: t(4000),
        };
        stop(
            &mut s,
            &StopFacts {
                received: t(3000),
                ..facts(&ts, 200, &[])
            },
            &LIMITS,
        );
        assert!(s.flags.contains(Flag::ClockAhead));
    }

    #[test]
    fn a_register_that_steps_back_is_flagged_and_counting_resumes_from_the_new_baseline() {
        let mut s = session(50_000, None);
        meter(&mut s, &[reading(900, 52_000)], t(900), false, &LIMITS);
        let m = meter(&mut s, &[reading(1000, 10)], t(1000), false, &LIMITS);
        assert!(m.row_flags[0].contains(Flag::MeterBackwards));
        assert!(s.flags.contains(Flag::MeterBackwards));
        meter(&mut s, &[reading(1300, 1010)], t(1300), false, &LIMITS);
        assert_eq!(s.register.energy_wh, 3000);
    }

    #[test]
    fn energy_across_a_window_that_wraps_midnight_pays_its_surcharge_by_time() {
        // 22:00-02:00 local (UTC here): a reading from 23:00 to 01:00 is all inside.
        let tariff = json!({"currency": "INR", "energy_minor_per_kwh": 1000, "timezone": "UTC",
            "surcharges": [{"name": "Night", "from": "22:00", "to": "02:00", "minor_per_kwh": 500}]});
        let day = Utc.with_ymd_and_hms(2026, 11, 21, 23, 0, 0).unwrap();
        let mut s = Session {
            register: Register::start(0, day, day),
            ..session(0, priced(tariff, None))
        };
        let later = day + chrono::Duration::hours(2);
        let mut r = reading(0, 10_000);
        r.at = ChargerTime {
            raw: String::new(),
            at: later,
        };
        let m = meter(
            &mut s,
            &[r],
            later,
            false,
            &Limits {
                max_charger_power_w: 22_000,
                ..LIMITS
            },
        );
        // 10 kWh * 10.00 + 10 kWh * 5.00 night surcharge
        assert_eq!(m.running.unwrap().total_minor, 15_000);
    }

    #[test]
    fn a_budget_reached_exactly_stops_the_charger_once() {
        // 1000 minor/kWh, budget 2000 = 2 kWh. Readings every 5 minutes of 0.5 kWh.
        let mut s = session(0, priced(inr_per_kwh(1000), Some(2000)));
        let mut stops = 0;
        for i in 1..=6 {
            let m = meter(
                &mut s,
                &[reading(i * 300, i * 500)],
                t(i * 300),
                false,
                &LIMITS,
            );
            stops += usize::from(m.stop_for_budget);
            if i == 4 {
                assert_eq!(m.running.as_ref().unwrap().total_minor, 2000);
            }
        }
        assert_eq!(stops, 1, "the stop is decided once");
        assert!(s.flags.contains(Flag::BudgetReached));
        let (ts, wh) = stop_at(1900, 3100);
        let c = stop(&mut s, &facts(&ts, wh, &[]), &LIMITS);
        assert_eq!(c.reason, "BudgetReached");
        let st = c.settlement.unwrap();
        assert_eq!((st.prepaid_minor, st.charged_minor), (2000, 3100));
        assert_eq!(st.topup_minor, 1100);
    }

    #[test]
    fn the_budget_stop_goes_out_two_readings_before_the_budget_is_crossed() {
        let mut s = session(0, priced(inr_per_kwh(1000), Some(2000)));
        let first_stop = (1..=6)
            .find(|i| {
                meter(
                    &mut s,
                    &[reading(i * 300, i * 500)],
                    t(i * 300),
                    false,
                    &LIMITS,
                )
                .stop_for_budget
            })
            .unwrap();
        // at 1.0 kWh (1000 minor), two more 0.5 kWh steps reach the 2000 budget
        assert_eq!(first_stop, 2);
    }

    #[test]
    fn a_stop_for_a_session_already_ended_is_a_duplicate_and_one_never_seen_is_unknown() {
        assert_eq!(match_stop(Some(State::Active)), StopMatch::Ends);
        assert_eq!(match_stop(Some(State::Stopped)), StopMatch::Duplicate);
        assert_eq!(match_stop(None), StopMatch::Unknown);
    }

    #[test]
    fn readings_after_the_stop_are_stored_but_change_nothing() {
        let mut s = session(1000, priced(inr_per_kwh(1000), None));
        let (ts, wh) = stop_at(600, 2000);
        stop(&mut s, &facts(&ts, wh, &[]), &LIMITS);
        let before = s.clone();
        let m = meter(&mut s, &[reading(700, 9000)], t(700), false, &LIMITS);
        assert_eq!(s, before);
        assert_eq!(m.running, None);
        assert!(!m.stop_for_budget);
    }

    #[test]
    fn a_stop_with_hours_of_transaction_data_counts_only_readings_newer_than_the_register() {
        let mut s = session(0, priced(inr_per_kwh(1000), Some(100_000)));
        // already sent live: 30 minutes
        for i in 1..=6 {
            meter(
                &mut s,
                &[reading(i * 300, i * 1000)],
                t(i * 300),
                false,
                &LIMITS,
            );
        }
        assert_eq!(s.register.energy_wh, 6000);
        // the stop repeats all of it, then three more hours at 7 kW, every 5 minutes
        let data: Vec<Sample> = (1..=42).map(|i| reading(i * 300, i * 1000)).collect();
        let (ts, wh) = stop_at(42 * 300 + 60, 42_000);
        let c = stop(&mut s, &facts(&ts, wh, &data), &LIMITS);
        assert_eq!(c.row_flags.len(), 42);
        assert!(c.row_flags.iter().all(|f| *f == Flags::default()));
        assert_eq!(c.energy_wh, 42_000);
        assert_eq!(c.cost.unwrap().total_minor, 42_000);
        assert_eq!(c.reason, "Local");
        assert_eq!(s.state, State::Stopped);
        assert_eq!(c.settlement.unwrap().refund_minor, 58_000);
    }

    #[test]
    fn readings_of_no_session_are_flagged_as_such() {
        let f = orphan_flags(&[reading(1, 1), reading(2, 2)]);
        assert_eq!(f.len(), 2);
        assert!(f.iter().all(|f| f.contains(Flag::NoSession)));
    }

    #[test]
    fn states_read_back_what_they_store() {
        for s in [State::Active, State::Stopped] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("paused"), None);
    }
}
