//! Tariffs, running cost, budgets and settlement; pure, integer money (CONTRACT §4).
//!
//! Energy is priced by the Wh delivered inside each rate window, in the tariff's local
//! time; the energy between two readings is split across windows in proportion to time.
//! Amounts accumulate in nano-minor units (exact enough that no realistic session can
//! drift by a minor unit) and each component is rounded half-up to a whole minor unit
//! once, at the end. Idle fees run from the end of energy transfer, after the grace
//! period, until the session stops.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Nano-minor units per minor unit.
const NANO: i128 = 1_000_000_000;

/// A tariff as `authorization.upsert` carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tariff {
    /// ISO 4217 code.
    pub currency: String,
    /// Base energy price, minor units per kWh.
    pub energy_minor_per_kwh: i64,
    /// Flat fee per session, minor units.
    pub service_fee_minor: i64,
    /// Local time of the rate windows.
    pub timezone: Tz,
    /// Per-kWh surcharges inside daily windows.
    pub surcharges: Vec<Surcharge>,
    /// Idle fee after energy transfer ends.
    pub idle: Option<Idle>,
    /// Tax on the other components.
    pub tax: Option<Tax>,
    /// Reservation fees (no-show, cancellation), billed on `reservation.released`.
    pub reservation: Option<ReservationFees>,
}

/// A tax: `rate_bp` basis points of the sum of the other components, rounded once.
#[derive(Debug, Clone, PartialEq)]
pub struct Tax {
    /// Shown on the bill, e.g. "GST".
    pub name: String,
    /// Basis points (1800 = 18 %).
    pub rate_bp: i64,
}

/// The fees a reservation's end may cost (CONTRACT §4, tariff `reservation`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReservationFees {
    /// The driver did not arrive within the grace period.
    pub no_show_fee_minor: i64,
    /// The reservation was cancelled.
    pub cancel_fee_minor: i64,
}

/// A per-kWh surcharge in a daily window `[from, to)` of local time (may wrap midnight).
#[derive(Debug, Clone, PartialEq)]
pub struct Surcharge {
    /// Shown on the bill, e.g. "Congestion fee".
    pub name: String,
    /// Window start, local time.
    pub from: NaiveTime,
    /// Window end (exclusive), local time.
    pub to: NaiveTime,
    /// Minor units per kWh.
    pub minor_per_kwh: i64,
}

/// Idle fee.
#[derive(Debug, Clone, PartialEq)]
pub struct Idle {
    /// Minutes after energy transfer ends before the fee starts.
    pub grace_minutes: i64,
    /// Minor units per minute.
    pub minor_per_minute: i64,
}

/// Why a tariff is not usable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("tariff.{field}: {message}")]
pub struct TariffError {
    /// The offending field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn terr(field: impl Into<String>, message: impl Into<String>) -> TariffError {
    TariffError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTariff {
    currency: String,
    energy_minor_per_kwh: i64,
    #[serde(default)]
    service_fee_minor: i64,
    #[serde(default = "utc")]
    timezone: String,
    #[serde(default)]
    surcharges: Vec<RawSurcharge>,
    idle: Option<RawIdle>,
    tax: Option<RawTax>,
    reservation: Option<RawReservation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTax {
    name: String,
    rate_bp: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReservation {
    #[serde(default)]
    no_show_fee_minor: i64,
    #[serde(default)]
    cancel_fee_minor: i64,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSurcharge {
    name: String,
    from: String,
    to: String,
    minor_per_kwh: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdle {
    grace_minutes: i64,
    minor_per_minute: i64,
}

/// Checks an ISO 4217-shaped currency code.
pub fn valid_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

impl Tariff {
    /// Parses and validates the contract's tariff JSON.
    ///
    /// # Errors
    /// [`TariffError`] naming the field.
    pub fn from_json(v: &Value) -> Result<Tariff, TariffError> {
        let raw: RawTariff =
            serde_json::from_value(v.clone()).map_err(|e| terr("", e.to_string()))?;
        if !valid_currency(&raw.currency) {
            return Err(terr("currency", "must be an ISO 4217 code like INR"));
        }
        if raw.energy_minor_per_kwh < 0 || raw.service_fee_minor < 0 {
            return Err(terr("energy_minor_per_kwh", "prices must not be negative"));
        }
        let timezone: Tz = raw.timezone.parse().map_err(|_| {
            terr(
                "timezone",
                format!("unknown IANA time zone {}", raw.timezone),
            )
        })?;
        let mut surcharges = Vec::new();
        for (i, s) in raw.surcharges.into_iter().enumerate() {
            let t = |v: &str, f: &str| {
                NaiveTime::parse_from_str(v, "%H:%M")
                    .map_err(|_| terr(format!("surcharges[{i}].{f}"), "must be HH:MM"))
            };
            let (from, to) = (t(&s.from, "from")?, t(&s.to, "to")?);
            if from == to {
                return Err(terr(format!("surcharges[{i}]"), "an empty window"));
            }
            if s.minor_per_kwh < 0 {
                return Err(terr(
                    format!("surcharges[{i}].minor_per_kwh"),
                    "must not be negative",
                ));
            }
            surcharges.push(Surcharge {
                name: s.name,
                from,
                to,
                minor_per_kwh: s.minor_per_kwh,
            });
        }
        let idle = match raw.idle {
            Some(i) if i.grace_minutes < 0 || i.minor_per_minute < 0 => {
                return Err(terr("idle", "must not be negative"))
            }
            Some(i) => Some(Idle {
                grace_minutes: i.grace_minutes,
                minor_per_minute: i.minor_per_minute,
            }),
            None => None,
        };
        let tax = match raw.tax {
            // up to 100 %: a rate above that is a unit mistake (percent for basis points)
            Some(t) if !(0..=10_000).contains(&t.rate_bp) => {
                return Err(terr("tax.rate_bp", "must be 0 to 10000 basis points"))
            }
            Some(t) if t.name.is_empty() => return Err(terr("tax.name", "must not be empty")),
            Some(t) => Some(Tax {
                name: t.name,
                rate_bp: t.rate_bp,
            }),
            None => None,
        };
        let reservation = match raw.reservation {
            Some(r) if r.no_show_fee_minor < 0 || r.cancel_fee_minor < 0 => {
                return Err(terr("reservation", "fees must not be negative"))
            }
            Some(r) => Some(ReservationFees {
                no_show_fee_minor: r.no_show_fee_minor,
                cancel_fee_minor: r.cancel_fee_minor,
            }),
            None => None,
        };
        Ok(Tariff {
            currency: raw.currency,
            energy_minor_per_kwh: raw.energy_minor_per_kwh,
            service_fee_minor: raw.service_fee_minor,
            timezone,
            surcharges,
            idle,
            tax,
            reservation,
        })
    }
}

/// What a session has accumulated so far; stored with the session as JSON (a new
/// session starts as `{}`: every field absent is nothing accrued yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Accrual {
    /// Energy priced, Wh.
    pub energy_wh: i64,
    /// Per surcharge (tariff order), nano-minor units.
    pub surcharge_nano: Vec<i128>,
    /// When the register last rose: the end of energy transfer so far (ms since epoch).
    pub last_transfer_ms: Option<i64>,
}

impl Accrual {
    /// Adds `delta_wh` delivered evenly over `[from, to]`.
    pub fn add(&mut self, tariff: &Tariff, delta_wh: i64, from: DateTime<Utc>, to: DateTime<Utc>) {
        if delta_wh <= 0 {
            return;
        }
        self.energy_wh += delta_wh;
        self.last_transfer_ms = Some(to.timestamp_millis());
        self.surcharge_nano.resize(tariff.surcharges.len(), 0);
        let (from, to) = if to > from { (from, to) } else { (to, to) };
        let total_ms = i128::from((to - from).num_milliseconds());
        for (i, s) in tariff.surcharges.iter().enumerate() {
            let inside_wh_nano = if total_ms == 0 {
                // an instant: all of it falls where the instant falls
                if in_window(tariff, s, to) {
                    i128::from(delta_wh) * NANO
                } else {
                    0
                }
            } else {
                let overlap = i128::from(overlap_ms(tariff, s, from, to));
                i128::from(delta_wh) * NANO * overlap / total_ms
            };
            // (Wh * nano) * (minor/kWh) / 1000 = nano-minor
            self.surcharge_nano[i] += inside_wh_nano * i128::from(s.minor_per_kwh) / 1000;
        }
    }
}

fn in_window(tariff: &Tariff, s: &Surcharge, at: DateTime<Utc>) -> bool {
    let local = at.with_timezone(&tariff.timezone).time();
    if s.from < s.to {
        local >= s.from && local < s.to
    } else {
        local >= s.from || local < s.to
    }
}

/// Milliseconds of `[from, to)` that fall inside the surcharge's daily local window.
fn overlap_ms(tariff: &Tariff, s: &Surcharge, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    let tz = tariff.timezone;
    let mut total = 0;
    // walk local days from the day before `from` to the day after `to`
    let mut day = from.with_timezone(&tz).date_naive() - Duration::days(1);
    let last = to.with_timezone(&tz).date_naive() + Duration::days(1);
    while day <= last {
        let start_local = day.and_time(s.from);
        let end_day = if s.from < s.to {
            day
        } else {
            day + Duration::days(1)
        };
        let end_local = end_day.and_time(s.to);
        // resolve local times (a DST gap or fold takes the earliest valid instant)
        let resolve = |naive: chrono::NaiveDateTime| {
            tz.from_local_datetime(&naive)
                .earliest()
                .or_else(|| {
                    tz.from_local_datetime(&(naive + Duration::hours(1)))
                        .earliest()
                })
                .map(|t| t.with_timezone(&Utc))
        };
        if let (Some(ws), Some(we)) = (resolve(start_local), resolve(end_local)) {
            let a = ws.max(from);
            let b = we.min(to);
            if b > a {
                total += (b - a).num_milliseconds();
            }
        }
        day += Duration::days(1);
    }
    total
}

/// One line of a bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Component {
    /// `energy`, `surcharge`, `idle`, `service`, `tax` or `reservation`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Shown to the driver.
    pub name: String,
    /// Minor units, rounded half-up once.
    pub amount_minor: i64,
}

/// A bill: the contract's `cost` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cost {
    /// ISO 4217.
    pub currency: String,
    /// Sum of the components.
    pub total_minor: i64,
    /// Non-zero components.
    pub components: Vec<Component>,
}

/// Rounds nano-minor units half-up to minor units.
fn round_half_up(nano: i128) -> i64 {
    let r = (nano + NANO / 2).div_euclid(NANO);
    i64::try_from(r).unwrap_or(i64::MAX)
}

/// What a reservation's end costs under the order's tariff: its no-show fee (`no_show`)
/// or its cancellation fee (`cancelled`), and the tariff's tax on it; `None` when the
/// tariff names no such fee, or it is zero (a reservation used, or refused by the
/// charger, costs nothing: a used one is billed as its session).
pub fn reservation_cost(tariff: &Tariff, no_show: bool) -> Option<Cost> {
    let fees = tariff.reservation.as_ref()?;
    let (amount_minor, name) = if no_show {
        (fees.no_show_fee_minor, "No-show fee")
    } else {
        (fees.cancel_fee_minor, "Cancellation fee")
    };
    if amount_minor == 0 {
        return None;
    }
    let mut components = vec![Component {
        kind: "reservation",
        name: name.into(),
        amount_minor,
    }];
    if let Some(tax) = &tariff.tax {
        components.push(Component {
            kind: "tax",
            name: tax.name.clone(),
            amount_minor: round_half_up(
                i128::from(amount_minor) * NANO * i128::from(tax.rate_bp) / 10_000,
            ),
        });
    }
    components.retain(|c| c.amount_minor != 0);
    Some(Cost {
        currency: tariff.currency.clone(),
        total_minor: components
            .iter()
            .fold(0i64, |sum, c| sum.saturating_add(c.amount_minor)),
        components,
    })
}

/// The cost of a session so far: its accrual, and the idle time up to `until` (the stop,
/// or now for a running session).
pub fn cost(tariff: &Tariff, accrual: &Accrual, until: DateTime<Utc>) -> Cost {
    let mut components = Vec::new();
    let energy_nano =
        i128::from(accrual.energy_wh) * NANO * i128::from(tariff.energy_minor_per_kwh) / 1000;
    components.push(Component {
        kind: "energy",
        name: "Energy".into(),
        amount_minor: round_half_up(energy_nano),
    });
    for (i, s) in tariff.surcharges.iter().enumerate() {
        let nano = accrual.surcharge_nano.get(i).copied().unwrap_or(0);
        components.push(Component {
            kind: "surcharge",
            name: s.name.clone(),
            amount_minor: round_half_up(nano),
        });
    }
    if let (Some(idle), Some(last_ms)) = (&tariff.idle, accrual.last_transfer_ms) {
        let idle_from = last_ms + idle.grace_minutes * 60_000;
        let idle_ms = (until.timestamp_millis() - idle_from).max(0);
        let nano = i128::from(idle_ms) * NANO * i128::from(idle.minor_per_minute) / 60_000;
        components.push(Component {
            kind: "idle",
            name: "Idle fee".into(),
            amount_minor: round_half_up(nano),
        });
    }
    components.push(Component {
        kind: "service",
        name: "Service fee".into(),
        amount_minor: tariff.service_fee_minor,
    });
    if let Some(tax) = &tariff.tax {
        // of the other components as billed (each already rounded), rounded once itself
        let base = components
            .iter()
            .fold(0i64, |sum, c| sum.saturating_add(c.amount_minor));
        components.push(Component {
            kind: "tax",
            name: tax.name.clone(),
            amount_minor: round_half_up(i128::from(base) * NANO * i128::from(tax.rate_bp) / 10_000),
        });
    }
    components.retain(|c| c.amount_minor != 0);
    Cost {
        currency: tariff.currency.clone(),
        total_minor: components
            .iter()
            .fold(0i64, |sum, c| sum.saturating_add(c.amount_minor)),
        components,
    }
}

/// A budget from `authorization.upsert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// ISO 4217.
    pub currency: String,
    /// Amount, minor units.
    pub amount_minor: i64,
    /// Paid in advance (default) — the bill then carries a settlement.
    pub prepaid: bool,
}

/// The contract's `settlement` object: what a prepaid budget becomes at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settlement {
    /// The budget paid in advance.
    pub prepaid_minor: i64,
    /// The bill.
    pub charged_minor: i64,
    /// Paid back to the driver (undercharge).
    pub refund_minor: i64,
    /// Still owed by the driver (overcharge).
    pub topup_minor: i64,
}

/// Settles a prepaid budget against the bill.
pub fn settlement(budget: &Budget, cost: &Cost) -> Settlement {
    let charged = cost.total_minor;
    Settlement {
        prepaid_minor: budget.amount_minor,
        charged_minor: charged,
        refund_minor: (budget.amount_minor - charged).max(0),
        topup_minor: (charged - budget.amount_minor).max(0),
    }
}

/// Whether the running cost has reached the budget (the agent then stops the charger).
pub fn budget_reached(budget: &Budget, cost: &Cost) -> bool {
    cost.total_minor >= budget.amount_minor
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn kolkata(h: u32, m: u32) -> DateTime<Utc> {
        chrono_tz::Asia::Kolkata
            .with_ymd_and_hms(2026, 11, 21, h, m, 0)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn tariff(v: Value) -> Tariff {
        Tariff::from_json(&v).unwrap()
    }

    fn seed() -> Tariff {
        tariff(
            json!({"currency":"INR","energy_minor_per_kwh":1600,"timezone":"Asia/Kolkata",
            "surcharges":[{"name":"Congestion fee","from":"18:00","to":"21:00","minor_per_kwh":100}]}),
        )
    }

    #[test]
    fn a_no_show_pays_its_fee_and_its_tax_and_a_free_cancellation_costs_nothing() {
        let t = Tariff::from_json(&json!({"currency":"INR","energy_minor_per_kwh":1800,
            "tax":{"name":"GST","rate_bp":1800},
            "reservation":{"no_show_fee_minor":5000,"cancel_fee_minor":0}}))
        .unwrap();
        let c = reservation_cost(&t, true).unwrap();
        assert_eq!(c.total_minor, 5900);
        assert_eq!(
            c.components
                .iter()
                .map(|c| (c.kind, c.amount_minor))
                .collect::<Vec<_>>(),
            vec![("reservation", 5000), ("tax", 900)]
        );
        assert_eq!(reservation_cost(&t, false), None);
        let plain =
            Tariff::from_json(&json!({"currency":"INR","energy_minor_per_kwh":1800})).unwrap();
        assert_eq!(reservation_cost(&plain, true), None);
    }

    #[test]
    fn a_tax_is_its_rate_of_the_other_components_rounded_once() {
        let t = tariff(
            json!({"currency":"INR","energy_minor_per_kwh":1600,"timezone":"Asia/Kolkata",
            "surcharges":[{"name":"Congestion fee","from":"18:00","to":"21:00","minor_per_kwh":100}],
            "tax":{"name":"GST","rate_bp":1800},
            "reservation":{"no_show_fee_minor":5000,"cancel_fee_minor":0}}),
        );
        let mut a = Accrual::default();
        a.add(&t, 5200, kolkata(18, 30), kolkata(19, 30));
        let c = cost(&t, &a, kolkata(19, 30));
        // 88.40 + 18 % = 88.40 + 15.912 -> 15.91
        let tax = c.components.last().unwrap();
        assert_eq!(
            (tax.kind, tax.name.as_str(), tax.amount_minor),
            ("tax", "GST", 1591)
        );
        assert_eq!(c.total_minor, 8840 + 1591);
        assert_eq!(
            t.reservation,
            Some(ReservationFees {
                no_show_fee_minor: 5000,
                cancel_fee_minor: 0
            })
        );
        let half = tariff(json!({"currency":"INR","energy_minor_per_kwh":1000,
            "tax":{"name":"VAT","rate_bp":1250}}));
        let mut a = Accrual::default();
        a.add(&half, 1000, kolkata(10, 0), kolkata(11, 0));
        // 10.00 at 12.5 % = 1.25 exactly; 4 Wh more: 10.04 -> 1.255 -> 1.26 (half up)
        assert_eq!(
            cost(&half, &a, kolkata(11, 0)).components[1].amount_minor,
            125
        );
        a.add(&half, 4, kolkata(11, 0), kolkata(11, 1));
        assert_eq!(
            cost(&half, &a, kolkata(11, 1)).components[1].amount_minor,
            126
        );
        for bad in [
            json!({"name":"GST","rate_bp":18_001}),
            json!({"name":"","rate_bp":1}),
        ] {
            let e =
                Tariff::from_json(&json!({"currency":"INR","energy_minor_per_kwh":1,"tax":bad}))
                    .unwrap_err();
            assert!(e.field.starts_with("tax"), "{e}");
        }
    }

    #[test]
    fn the_seed_example_is_exactly_88_40() {
        let t = seed();
        let mut a = Accrual::default();
        a.add(&t, 5200, kolkata(18, 30), kolkata(19, 30));
        let c = cost(&t, &a, kolkata(19, 30));
        assert_eq!(c.total_minor, 8840);
        assert_eq!(c.components[0].amount_minor, 8320);
        assert_eq!(c.components[1].amount_minor, 520);
        assert_eq!(c.components[1].name, "Congestion fee");
    }

    #[test]
    fn energy_is_split_across_a_window_boundary_in_proportion_to_time() {
        let t = seed();
        let mut a = Accrual::default();
        // 17:30 -> 18:30: half the energy falls inside the congestion window
        a.add(&t, 4000, kolkata(17, 30), kolkata(18, 30));
        let c = cost(&t, &a, kolkata(18, 30));
        assert_eq!(c.components[1].amount_minor, 200); // 2 kWh * 1.00
        assert_eq!(c.components[0].amount_minor, 6400);
    }

    #[test]
    fn a_window_that_wraps_midnight_works() {
        let t = tariff(
            json!({"currency":"EUR","energy_minor_per_kwh":30,"timezone":"Europe/Berlin",
            "surcharges":[{"name":"Night","from":"22:00","to":"06:00","minor_per_kwh":10}]}),
        );
        let berlin = |d, h| {
            chrono_tz::Europe::Berlin
                .with_ymd_and_hms(2026, 11, d, h, 0, 0)
                .unwrap()
                .with_timezone(&Utc)
        };
        let mut a = Accrual::default();
        a.add(&t, 8000, berlin(21, 23), berlin(22, 7)); // 23:00 -> 07:00: 7 of 8 hours inside
        let c = cost(&t, &a, berlin(22, 7));
        assert_eq!(c.components[1].amount_minor, 70);
    }

    #[test]
    fn idle_fee_runs_after_the_grace_period_until_the_stop() {
        let t = tariff(
            json!({"currency":"INR","energy_minor_per_kwh":1800,"service_fee_minor":1000,
            "timezone":"Asia/Kolkata","idle":{"grace_minutes":10,"minor_per_minute":200}}),
        );
        let mut a = Accrual::default();
        a.add(&t, 1000, kolkata(10, 0), kolkata(11, 0));
        let at_grace = cost(&t, &a, kolkata(11, 10));
        assert!(at_grace.components.iter().all(|c| c.kind != "idle"));
        let c = cost(&t, &a, kolkata(11, 25));
        let idle = c.components.iter().find(|c| c.kind == "idle").unwrap();
        assert_eq!(idle.amount_minor, 15 * 200);
        assert_eq!(c.total_minor, 1800 + 3000 + 1000);
    }

    #[test]
    fn each_component_is_rounded_half_up_once() {
        let t = tariff(json!({"currency":"INR","energy_minor_per_kwh":1,"timezone":"UTC"}));
        let mut a = Accrual::default();
        for _ in 0..3 {
            a.add(
                &t,
                500,
                Utc.timestamp_opt(0, 0).unwrap(),
                Utc.timestamp_opt(60, 0).unwrap(),
            );
        }
        // 1.5 Wh-priced minor: 1500 Wh * 1/kWh = 1.5 -> 2 (rounded once, not 0.5+0.5+0.5 -> 3 or 0)
        assert_eq!(
            cost(&t, &a, Utc.timestamp_opt(60, 0).unwrap()).total_minor,
            2
        );
    }

    #[test]
    fn zero_components_are_omitted_and_bad_tariffs_name_the_field() {
        let t = tariff(json!({"currency":"INR","energy_minor_per_kwh":1600}));
        let c = cost(&t, &Accrual::default(), Utc.timestamp_opt(0, 0).unwrap());
        assert!(c.components.is_empty());
        assert_eq!(c.total_minor, 0);
        let e = Tariff::from_json(
            &json!({"currency":"INR","energy_minor_per_kwh":1,"timezone":"Mars/Base"}),
        )
        .unwrap_err();
        assert_eq!(e.field, "timezone");
        let e = Tariff::from_json(&json!({"currency":"INR","energy_minor_per_kwh":1,
            "surcharges":[{"name":"x","from":"25:00","to":"01:00","minor_per_kwh":1}]}))
        .unwrap_err();
        assert_eq!(e.field, "surcharges[0].from");
    }

    #[test]
    fn settlement_refunds_undercharge_and_asks_top_up_for_overcharge() {
        let budget = Budget {
            currency: "INR".into(),
            amount_minor: 10_000,
            prepaid: true,
        };
        let c = Cost {
            currency: "INR".into(),
            total_minor: 8840,
            components: vec![],
        };
        assert_eq!(
            serde_json::to_value(settlement(&budget, &c)).unwrap(),
            json!({"prepaid_minor":10000,"charged_minor":8840,"refund_minor":1160,"topup_minor":0})
        );
        let c = Cost {
            currency: "INR".into(),
            total_minor: 10_050,
            components: vec![],
        };
        assert_eq!(settlement(&budget, &c).topup_minor, 50);
        assert!(budget_reached(&budget, &c));
    }

    /// A small deterministic generator for the property tests (no extra dependency).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn random_tariff(r: &mut Lcg) -> Tariff {
        let hm = |r: &mut Lcg| format!("{:02}:{:02}", r.next(24), r.next(4) * 15);
        let mut surcharges = vec![];
        for i in 0..r.next(3) {
            let (from, to) = (hm(r), hm(r));
            if from != to {
                surcharges.push(json!({"name": format!("s{i}"), "from": from, "to": to, "minor_per_kwh": r.next(500)}));
            }
        }
        let zone = ["Asia/Kolkata", "Europe/Berlin", "America/New_York", "UTC"][r.next(4) as usize];
        tariff(
            json!({"currency":"INR","energy_minor_per_kwh": r.next(3000),"service_fee_minor": r.next(2000),
            "timezone": zone,
            "surcharges": surcharges,
            "idle": {"grace_minutes": r.next(30), "minor_per_minute": r.next(300)}}),
        )
    }

    #[test]
    fn property_cost_never_decreases_as_energy_grows_and_components_sum_to_the_total() {
        let mut r = Lcg(42);
        for _ in 0..300 {
            let t = random_tariff(&mut r);
            let mut a = Accrual::default();
            let mut at = Utc
                .timestamp_opt(1_795_000_000 + r.next(86_400) as i64, 0)
                .unwrap();
            let mut prev_total = 0;
            let mut prev_energy_parts = 0;
            for _ in 0..40 {
                let next = at + Duration::seconds(1 + r.next(3600) as i64);
                a.add(&t, 1 + r.next(5000) as i64, at, next);
                at = next;
                let c = cost(&t, &a, at);
                assert_eq!(
                    c.total_minor,
                    c.components.iter().map(|c| c.amount_minor).sum::<i64>()
                );
                assert!(c.components.iter().all(|c| c.amount_minor > 0));
                // energy and surcharge components never decrease as energy grows
                let energy_parts: i64 = c
                    .components
                    .iter()
                    .filter(|c| c.kind == "energy" || c.kind == "surcharge")
                    .map(|c| c.amount_minor)
                    .sum();
                assert!(energy_parts >= prev_energy_parts);
                assert!(
                    c.total_minor >= prev_total,
                    "cost fell from {prev_total} to {}",
                    c.total_minor
                );
                prev_total = c.total_minor;
                prev_energy_parts = energy_parts;
            }
            // after the last transfer, time only adds (idle fee)
            for _ in 0..10 {
                at += Duration::minutes(r.next(30) as i64);
                let c = cost(&t, &a, at);
                assert!(c.total_minor >= prev_total);
                prev_total = c.total_minor;
            }
        }
    }
}
