//! Site power: how the site's limit is shared among the running sessions, and in what
//! numbers each share reaches a charger. Pure: the limit, the sessions and `now` in;
//! shares and schedules out. The smart-charging driver (`ocpp::smart`) gathers the
//! inputs, asks these rules and sends what they decide as charging profiles.
//!
//! # The fairness rule
//! 1. A charger that refused its profile (or cannot be reached) is counted at what it
//!    may draw (its maximum, or the last share it accepted when larger) before anyone
//!    else is served: the site total holds whatever it does.
//! 2. Every other session is admitted in the order it started (earliest first), each
//!    needing at least the IEC 61851 minimum of 6 A per phase. The first one whose
//!    minimum no longer fits is paused (limit 0), and so is every later one: a paused
//!    session is always the first to resume when room appears, and a newcomer never
//!    takes the place of one that waits.
//! 3. The admitted sessions share the rest equally ("water filling"): each gets the same
//!    power `L`, raised to its own minimum and capped by what it can take; `L` is the
//!    largest level the room allows. What a session cannot take goes to the others.
//! 4. What a session can take: the charger's maximum, unless the car was measured taking
//!    clearly less than it was granted (below 90 %), in which case it is capped at what it
//!    draws plus 10 % (never below its minimum): a tapering car leaves its power to the
//!    others, and gets it back once it draws near its cap again. A reading counts only
//!    once the car has had [`RAMP_SECS`] to follow its grant's last rise: a car still
//!    ramping up is not a car that wants less.
//!
//! Power is handled in whole watts; a charger that takes its limits in amperes gets
//! `W / (230 V × phases)`, rounded down to 0.1 A, so a share in amperes never exceeds the
//! share in watts.

use chrono::{DateTime, Duration, Utc};

/// The nominal line-to-neutral voltage a limit in amperes is reckoned with.
pub const NOMINAL_VOLTAGE_V: u32 = 230;
/// The least current an EV may be offered (IEC 61851-1): below it, the session pauses.
pub const MIN_CURRENT_A: u32 = 6;
/// How long a TxProfile's schedule lasts after it was sent: a charger that loses the
/// gateway falls back to its fail-safe share within this time (CONTRACT §6).
pub const TX_PROFILE_SECS: i64 = 300;
/// How long before a TxProfile runs out it is renewed.
pub const RENEW_AFTER_SECS: i64 = 120;
/// How far before `now` a TxProfile's schedule starts, so that a charger whose clock runs
/// a little behind the gateway's already finds it in force.
pub const SCHEDULE_LEAD_SECS: i64 = 60;

/// How long a car is given to follow a raised limit before its reading says what it
/// wants (IEC 61851-1 gives an EV 5 s to follow a changed duty cycle).
pub const RAMP_SECS: i64 = 6;

/// The least power a session of `phases` phases may be offered, W.
pub fn min_power_w(phases: u8) -> u32 {
    MIN_CURRENT_A * NOMINAL_VOLTAGE_V * u32::from(phases.clamp(1, 3))
}

/// The unit a charger takes its charging limits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    /// Amperes per phase (1.6 `Current`, 2.0.1 `A`).
    Amps,
    /// Watts (1.6 `Power`, 2.0.1 `W`).
    Watts,
}

impl RateUnit {
    /// The unit a charger advertises: 1.6 `ChargingScheduleAllowedChargingRateUnit`
    /// (`Current`, `Power`, or both comma-separated), 2.0.1 `SmartChargingCtrlr.RateUnit`
    /// (`A`, `W`, or both). Watts are preferred when offered (no voltage guess); amperes
    /// when nothing readable is advertised, as every AC charger takes them.
    pub fn from_advertised(value: Option<&str>) -> RateUnit {
        let watts = value.is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|u| u.eq_ignore_ascii_case("Power") || u.eq_ignore_ascii_case("W"))
        });
        if watts {
            RateUnit::Watts
        } else {
            RateUnit::Amps
        }
    }
}

/// A limit in the unit a charger takes: amperes rounded down to 0.1 A, or whole watts.
pub fn rate(limit_w: u32, phases: u8, unit: RateUnit) -> f64 {
    match unit {
        RateUnit::Watts => f64::from(limit_w),
        RateUnit::Amps => {
            let per_phase = NOMINAL_VOLTAGE_V * u32::from(phases.clamp(1, 3));
            // tenths of an ampere, rounded down
            f64::from(limit_w * 10 / per_phase) / 10.0
        }
    }
}

/// The power a limit in `unit` allows (the simulator's and a rig's reading of a profile).
pub fn watts(limit: f64, phases: u8, unit: RateUnit) -> f64 {
    match unit {
        RateUnit::Watts => limit,
        RateUnit::Amps => limit * f64::from(NOMINAL_VOLTAGE_V) * f64::from(phases.clamp(1, 3)),
    }
}

/// One running session, as the allocator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// Charger.
    pub cp_id: String,
    /// Connector (2.0.1: EVSE).
    pub connector_id: u32,
    /// Phases the session charges on (1 or 3).
    pub phases: u8,
    /// The most the connector can deliver, W.
    pub max_w: u32,
    /// The power last measured, if any.
    pub drawn: Option<Measured>,
    /// The share it was last granted, if any.
    pub granted: Option<Grant>,
    /// Whether its charger follows the profiles it is sent; false: it refused one, or it
    /// is not connected, and is counted at `max_w`.
    pub obeys: bool,
    /// When the session started: the admission order.
    pub since: DateTime<Utc>,
}

/// A connector's measured power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// W.
    pub w: u32,
    /// When it was received.
    pub at: DateTime<Utc>,
}

/// A session's share as last granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// W.
    pub w: u32,
    /// When it last rose (or was first granted).
    pub since: DateTime<Utc>,
}

impl Grant {
    /// The grant that follows `self` when the share becomes `w` at `now`: `since` moves
    /// only when it rises.
    pub fn next(previous: Option<Grant>, w: u32, now: DateTime<Utc>) -> Grant {
        match previous {
            Some(g) if w <= g.w => Grant { w, since: g.since },
            _ => Grant { w, since: now },
        }
    }
}

/// The most a session can use now (rule 4), at least its minimum.
pub fn cap(phases: u8, max_w: u32, drawn: Option<Measured>, granted: Option<Grant>) -> u32 {
    let min = min_power_w(phases);
    let max = max_w.max(min);
    match (drawn, granted) {
        (Some(d), Some(g))
            if d.at >= g.since + Duration::seconds(RAMP_SECS)
                && u64::from(d.w) * 10 < u64::from(g.w) * 9 =>
        {
            d.w.saturating_add(d.w / 10).clamp(min, max)
        }
        _ => max,
    }
}

impl Demand {
    fn cap(&self) -> u32 {
        cap(self.phases, self.max_w, self.drawn, self.granted)
    }
}

/// One session's share of the site limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Charger.
    pub cp_id: String,
    /// Connector (2.0.1: EVSE).
    pub connector_id: u32,
    /// The power it may draw, W; 0 is paused.
    pub limit_w: u32,
    /// Its charger does not follow profiles: the share is what it is assumed to draw.
    pub assumed: bool,
}

/// Shares `limit_w` among `demands` by the fairness rule (module docs); one share per
/// demand, in the order given.
pub fn allocate(limit_w: u32, demands: &[Demand]) -> Vec<Share> {
    let mut out: Vec<Share> = demands
        .iter()
        .map(|d| Share {
            cp_id: d.cp_id.clone(),
            connector_id: d.connector_id,
            limit_w: 0,
            assumed: !d.obeys,
        })
        .collect();
    // rule 1
    let mut room = u64::from(limit_w);
    for (i, d) in demands.iter().enumerate().filter(|(_, d)| !d.obeys) {
        out[i].limit_w = d.max_w;
        room = room.saturating_sub(u64::from(d.max_w));
    }
    // rule 2
    let mut order: Vec<usize> = (0..demands.len()).filter(|&i| demands[i].obeys).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&demands[a], &demands[b]);
        (x.since, &x.cp_id, x.connector_id).cmp(&(y.since, &y.cp_id, y.connector_id))
    });
    let mut admitted = Vec::new();
    let mut mins = 0u64;
    for i in order {
        let min = u64::from(min_power_w(demands[i].phases));
        if mins + min > room {
            break;
        }
        mins += min;
        admitted.push(i);
    }
    // rule 3: the largest level L with sum(clamp(L, min, cap)) <= room
    let bounds: Vec<(u64, u64)> = admitted
        .iter()
        .map(|&i| {
            let d = &demands[i];
            (u64::from(min_power_w(d.phases)), u64::from(d.cap()))
        })
        .collect();
    let used = |level: u64| -> u64 {
        bounds
            .iter()
            .map(|&(min, cap)| level.clamp(min, cap.max(min)))
            .sum()
    };
    let (mut lo, mut hi) = (0u64, room);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if used(mid) <= room {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    for (&i, &(min, cap)) in admitted.iter().zip(&bounds) {
        // clamp(lo, min, cap) <= cap <= max_w fits a u32
        out[i].limit_w = u32::try_from(lo.clamp(min, cap.max(min))).unwrap_or(u32::MAX);
    }
    out
}

/// The fail-safe share of one connector: what every connector of the site may draw at
/// once, with all of them charging and none hearing from the gateway, `limit / connectors`;
/// 0 (paused) when that is below the 6 A minimum of `phases`.
pub fn safe_share_w(limit_w: u32, connectors: usize, phases: u8) -> u32 {
    let share = u64::from(limit_w) / (connectors.max(1) as u64);
    let share = u32::try_from(share).unwrap_or(u32::MAX);
    if share < min_power_w(phases) {
        0
    } else {
        share
    }
}

/// The site limit lowered for a while (`site.power_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lowered {
    /// The lower limit, W.
    pub max_w: u32,
    /// Until when; `None` until the next change.
    pub until: Option<DateTime<Utc>>,
}

/// Why `site.power_limit` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The value is above the grid connection's cap (CONTRACT §6: it may only lower it).
    #[error(
        "{asked_w} W is above the site's cap of {cap_w} W; site.power_limit may only lower it"
    )]
    AboveCap {
        /// Asked.
        asked_w: u32,
        /// `[site] max_power_kw`.
        cap_w: u32,
    },
    /// `until` is already past.
    #[error("`until` is in the past")]
    Past,
}

/// Judges `site.power_limit`: `max_w` 0 returns to the cap (`Ok(None)`); any other value
/// must not exceed the cap (when there is one) and `until` must lie ahead.
///
/// # Errors
/// [`LimitError`].
pub fn lower(
    cap_w: Option<u32>,
    max_w: u32,
    until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<Lowered>, LimitError> {
    if max_w == 0 {
        return Ok(None);
    }
    if let Some(cap_w) = cap_w.filter(|&c| max_w > c) {
        return Err(LimitError::AboveCap {
            asked_w: max_w,
            cap_w,
        });
    }
    if until.is_some_and(|u| u <= now) {
        return Err(LimitError::Past);
    }
    Ok(Some(Lowered { max_w, until }))
}

/// The limit in force at `now`: the lowered one while it lasts, else the cap; `None` is
/// no limit at all.
pub fn limit_in_force(
    cap_w: Option<u32>,
    lowered: Option<Lowered>,
    now: DateTime<Utc>,
) -> Option<u32> {
    match lowered {
        Some(l) if l.until.is_none_or(|u| now < u) => {
            Some(cap_w.map_or(l.max_w, |c| c.min(l.max_w)))
        }
        _ => cap_w,
    }
}

/// A TxProfile sent to a connector: what, and when.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sent {
    /// The limit as sent, in the charger's unit.
    pub rate: f64,
    /// When.
    pub at: DateTime<Utc>,
}

/// Whether a connector's TxProfile must be sent: never sent, its limit changed, or it is
/// due for renewal.
pub fn due(sent: Option<Sent>, rate: f64, now: DateTime<Utc>) -> bool {
    match sent {
        None => true,
        Some(s) => {
            (s.rate - rate).abs() > f64::EPSILON
                || now - s.at >= Duration::seconds(RENEW_AFTER_SECS)
        }
    }
}

/// The schedule of a TxProfile sent at `now`: it starts [`SCHEDULE_LEAD_SECS`] earlier and
/// ends [`TX_PROFILE_SECS`] after `now`; returns (start, duration in seconds).
pub fn tx_schedule(now: DateTime<Utc>) -> (DateTime<Utc>, i64) {
    (
        now - Duration::seconds(SCHEDULE_LEAD_SECS),
        SCHEDULE_LEAD_SECS + TX_PROFILE_SECS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn car(cp: &str, since: i64) -> Demand {
        Demand {
            cp_id: cp.into(),
            connector_id: 1,
            phases: 3,
            max_w: 22_000,
            drawn: None,
            granted: None,
            obeys: true,
            since: t(since),
        }
    }

    fn limits(s: &[Share]) -> Vec<u32> {
        s.iter().map(|s| s.limit_w).collect()
    }

    #[test]
    fn one_car_alone_gets_its_charger_maximum() {
        assert_eq!(limits(&allocate(50_000, &[car("A", 0)])), vec![22_000]);
    }

    #[test]
    fn five_22_kw_cars_on_a_50_kw_site_get_10_kw_each() {
        let cars: Vec<_> = (0..5).map(|i| car(&format!("C{i}"), i)).collect();
        assert_eq!(limits(&allocate(50_000, &cars)), vec![10_000; 5]);
    }

    #[test]
    fn three_cars_share_50_kw_equally() {
        let cars: Vec<_> = (0..3).map(|i| car(&format!("C{i}"), i)).collect();
        let s = limits(&allocate(50_000, &cars));
        assert_eq!(s, vec![16_666; 3]);
    }

    #[test]
    fn a_tapering_car_leaves_its_power_to_the_others() {
        let mut full = car("A", 0);
        full.granted = Some(Grant {
            w: 16_666,
            since: t(0),
        });
        full.drawn = Some(Measured {
            w: 5_000,
            at: t(RAMP_SECS),
        });
        let s = limits(&allocate(50_000, &[full, car("B", 1), car("C", 2)]));
        // A: 5,000 + 10 % = 5,500; B and C: 22,000 each (their maximum), 49,500 in all
        assert_eq!(s, vec![5_500, 22_000, 22_000]);
    }

    #[test]
    fn a_car_taking_what_it_is_granted_is_not_capped_by_its_reading() {
        let mut a = car("A", 0);
        a.granted = Some(Grant {
            w: 10_000,
            since: t(0),
        });
        a.drawn = Some(Measured {
            w: 9_950,
            at: t(60),
        });
        assert_eq!(limits(&allocate(50_000, &[a])), vec![22_000]);
    }

    #[test]
    fn a_car_still_ramping_up_to_a_raised_share_is_not_capped() {
        let mut a = car("A", 0);
        // raised from 6 kW to 10 kW at 100 s; 2 s later it still draws 6 kW
        let g = Grant::next(
            Some(Grant {
                w: 6_000,
                since: t(0),
            }),
            10_000,
            t(100),
        );
        assert_eq!(g.since, t(100));
        a.granted = Some(g);
        a.drawn = Some(Measured {
            w: 6_000,
            at: t(102),
        });
        assert_eq!(limits(&allocate(50_000, &[a.clone()])), vec![22_000]);
        // once it had its time, a car that stays at 6 kW is taken at its word
        a.drawn = Some(Measured {
            w: 6_000,
            at: t(100 + RAMP_SECS),
        });
        assert_eq!(limits(&allocate(50_000, &[a])), vec![6_600]);
        // a lowered grant keeps the time of its last rise
        assert_eq!(Grant::next(Some(g), 8_000, t(200)).since, t(100));
    }

    #[test]
    fn a_session_that_cannot_get_6_a_is_paused_and_newer_ones_too() {
        // 10 kW: two three-phase sessions need 8,280 W; a third does not fit
        let s = limits(&allocate(10_000, &[car("A", 0), car("B", 1), car("C", 2)]));
        assert_eq!(s, vec![5_000, 5_000, 0]);
        // a single-phase newcomer (1,380 W) would fit in what is left, but it waits
        // behind the paused three-phase one
        let mut single = car("D", 3);
        single.phases = 1;
        let s = limits(&allocate(
            10_000,
            &[car("A", 0), car("B", 1), car("C", 2), single],
        ));
        assert_eq!(s[3], 0);
    }

    #[test]
    fn the_paused_session_resumes_first_when_a_car_leaves() {
        // B left: C (older than the newcomer D) gets in, D waits
        let s = limits(&allocate(10_000, &[car("A", 0), car("C", 2), car("D", 3)]));
        assert_eq!(s, vec![5_000, 5_000, 0]);
    }

    #[test]
    fn a_charger_that_refuses_profiles_is_counted_at_its_maximum() {
        let mut rogue = car("R", 5);
        rogue.obeys = false;
        let s = allocate(50_000, &[car("A", 0), rogue, car("B", 1)]);
        assert_eq!(limits(&s), vec![14_000, 22_000, 14_000]);
        assert!(s[1].assumed && !s[0].assumed);
    }

    #[test]
    fn amperes_are_rounded_down_so_they_never_exceed_the_watts() {
        assert_eq!(rate(10_000, 3, RateUnit::Amps), 14.4); // 14.49 A
        assert_eq!(rate(4_140, 3, RateUnit::Amps), 6.0);
        assert_eq!(rate(10_000, 3, RateUnit::Watts), 10_000.0);
        assert!(watts(rate(10_000, 3, RateUnit::Amps), 3, RateUnit::Amps) <= 10_000.0);
    }

    #[test]
    fn watts_are_preferred_when_a_charger_offers_them() {
        assert_eq!(
            RateUnit::from_advertised(Some("Current,Power")),
            RateUnit::Watts
        );
        assert_eq!(RateUnit::from_advertised(Some("A,W")), RateUnit::Watts);
        assert_eq!(RateUnit::from_advertised(Some("Current")), RateUnit::Amps);
        assert_eq!(RateUnit::from_advertised(Some("A")), RateUnit::Amps);
        assert_eq!(RateUnit::from_advertised(None), RateUnit::Amps);
    }

    #[test]
    fn the_fail_safe_share_is_the_limit_over_every_connector_or_a_pause() {
        assert_eq!(safe_share_w(50_000, 5, 3), 10_000);
        assert_eq!(safe_share_w(50_000, 0, 3), 50_000);
        assert_eq!(safe_share_w(10_000, 5, 3), 0); // 2 kW is below 6 A on three phases
    }

    #[test]
    fn a_power_limit_may_only_lower_the_cap_and_zero_returns_to_it() {
        let now = t(0);
        assert_eq!(
            lower(Some(50_000), 60_000, None, now),
            Err(LimitError::AboveCap {
                asked_w: 60_000,
                cap_w: 50_000
            })
        );
        assert_eq!(lower(Some(50_000), 0, None, now), Ok(None));
        assert_eq!(
            lower(Some(50_000), 30_000, Some(t(-1)), now),
            Err(LimitError::Past)
        );
        let l = lower(Some(50_000), 30_000, Some(t(600)), now).unwrap();
        assert_eq!(limit_in_force(Some(50_000), l, t(599)), Some(30_000));
        assert_eq!(limit_in_force(Some(50_000), l, t(600)), Some(50_000));
        // a site without a cap may still be limited for a while
        let l = lower(None, 30_000, None, now).unwrap();
        assert_eq!(limit_in_force(None, l, t(10_000)), Some(30_000));
        assert_eq!(limit_in_force(None, None, now), None);
    }

    #[test]
    fn a_profile_is_resent_when_it_changes_or_before_it_runs_out() {
        let s = Some(Sent {
            rate: 16.0,
            at: t(0),
        });
        assert!(due(None, 16.0, t(0)));
        assert!(!due(s, 16.0, t(RENEW_AFTER_SECS - 1)));
        assert!(due(s, 16.0, t(RENEW_AFTER_SECS)));
        assert!(due(s, 15.9, t(1)));
        let (start, secs) = tx_schedule(t(0));
        assert_eq!(start, t(-SCHEDULE_LEAD_SECS));
        assert!(RENEW_AFTER_SECS < TX_PROFILE_SECS && secs == SCHEDULE_LEAD_SECS + TX_PROFILE_SECS);
    }

    fn demand() -> impl Strategy<Value = Demand> {
        (
            prop_oneof![Just(1u8), Just(3u8)],
            0u32..=50_000,
            proptest::option::of((0u32..=50_000, 0i64..100)),
            proptest::option::of((0u32..=50_000, 0i64..100)),
            proptest::bool::weighted(0.9),
            0i64..100,
        )
            .prop_map(|(phases, max_w, drawn, granted, obeys, since)| Demand {
                cp_id: format!("C{since}"),
                connector_id: 1,
                phases,
                max_w,
                drawn: drawn.map(|(w, at)| Measured { w, at: t(at) }),
                granted: granted.map(|(w, at)| Grant { w, since: t(at) }),
                obeys,
                since: t(since),
            })
    }

    proptest! {
        #[test]
        fn shares_never_sum_above_the_limit_and_a_charging_session_gets_6_a(
            limit in 0u32..=200_000,
            demands in proptest::collection::vec(demand(), 0..12),
        ) {
            let shares = allocate(limit, &demands);
            prop_assert_eq!(shares.len(), demands.len());
            let assumed: u64 = demands.iter().filter(|d| !d.obeys).map(|d| u64::from(d.max_w)).sum();
            let total: u64 = shares.iter().map(|s| u64::from(s.limit_w)).sum();
            // what the site itself controls never takes it over its limit; chargers that
            // ignore profiles and already take more leave the others paused
            if assumed <= u64::from(limit) {
                prop_assert!(total <= u64::from(limit));
            } else {
                prop_assert_eq!(total, assumed);
            }
            for (d, s) in demands.iter().zip(&shares) {
                if d.obeys {
                    prop_assert!(s.limit_w == 0 || s.limit_w >= min_power_w(d.phases));
                    prop_assert!(s.limit_w <= d.max_w.max(min_power_w(d.phases)));
                    let a = rate(s.limit_w, d.phases, RateUnit::Amps);
                    prop_assert!(s.limit_w == 0 || a >= f64::from(MIN_CURRENT_A));
                    prop_assert!(watts(a, d.phases, RateUnit::Amps) <= f64::from(s.limit_w) + 1e-6);
                }
            }
            // nobody waits behind a newer session
            for (i, d) in demands.iter().enumerate().filter(|(_, d)| d.obeys) {
                if shares[i].limit_w == 0 {
                    for (j, e) in demands.iter().enumerate().filter(|(_, e)| e.obeys) {
                        if (e.since, &e.cp_id, e.connector_id) > (d.since, &d.cp_id, d.connector_id) {
                            prop_assert_eq!(shares[j].limit_w, 0);
                        }
                    }
                }
            }
        }

        #[test]
        fn equal_shares_only_differ_where_a_session_is_capped_or_raised_to_its_minimum(
            limit in 0u32..=200_000,
            demands in proptest::collection::vec(demand(), 0..12),
        ) {
            let shares = allocate(limit, &demands);
            let free: Vec<u32> = demands.iter().zip(&shares)
                .filter(|(d, s)| d.obeys && s.limit_w > min_power_w(d.phases) && s.limit_w < d.cap())
                .map(|(_, s)| s.limit_w)
                .collect();
            // every session neither capped nor at its minimum gets the same level
            prop_assert!(free.windows(2).all(|w| w[0] == w[1]));
        }
    }
}
