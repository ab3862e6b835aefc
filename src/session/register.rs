//! A session's energy register, pure.
//!
//! A bad meter must never bill a huge delta. The bugs this guards against are the ones
//! other central systems ship: a register that goes backwards after a charger reboot, and
//! a `meterStart` of 0 followed by the real register value (the "910 kWh bill"). Energy is
//! counted only from plausible forward steps; every other step re-baselines the register
//! and is reported as an [`Anomaly`].

use chrono::{DateTime, Utc};

use super::Flag;

/// A session's energy register as the agent tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Register {
    /// The last register value seen, Wh.
    pub last_wh: i64,
    /// When it was measured (charger clock).
    pub last_at: DateTime<Utc>,
    /// When it was received (site clock).
    pub last_received: DateTime<Utc>,
    /// Energy counted so far, Wh: the sum of plausible forward steps.
    pub energy_wh: i64,
}

/// A register step that was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    /// The register went down (meter reset, charger reboot, swapped meter).
    Backwards {
        /// Register before, Wh.
        from_wh: i64,
        /// Register after, Wh.
        to_wh: i64,
    },
    /// The register rose faster than the charger could deliver.
    Jump {
        /// Register before, Wh.
        from_wh: i64,
        /// Register after, Wh.
        to_wh: i64,
    },
}

impl Anomaly {
    /// The flag recorded on the session.
    pub fn flag(&self) -> Flag {
        match self {
            Anomaly::Backwards { .. } => Flag::MeterBackwards,
            Anomaly::Jump { .. } => Flag::MeterJump,
        }
    }
}

/// Energy a step may add beyond what `max_power_w` allows, for rounding and short gaps.
const SLACK_WH: i64 = 1000;

impl Register {
    /// A register that starts at `meter_start_wh`.
    pub fn start(meter_start_wh: i64, at: DateTime<Utc>, received: DateTime<Utc>) -> Self {
        Self {
            last_wh: meter_start_wh,
            last_at: at,
            last_received: received,
            energy_wh: 0,
        }
    }

    /// Applies one reading. Energy is added only when the step is forward and no larger
    /// than `max_power_w` could deliver in the time that passed (by the charger's clock or
    /// the site's, whichever is longer, so a queued offline backlog is not mistaken for a
    /// jump); otherwise the register re-baselines and the step is reported.
    pub fn advance(
        &self,
        reading_wh: i64,
        at: DateTime<Utc>,
        received: DateTime<Utc>,
        max_power_w: i64,
    ) -> (Register, Option<Anomaly>) {
        // Saturating: a charger's `-1e30 Wh` decodes to `i64::MIN`, and the step from there
        // to any real reading does not fit an i64. Saturated, it is still a jump (or a
        // backwards step), never a count.
        let delta = reading_wh.saturating_sub(self.last_wh);
        let charger_secs = (at - self.last_at).num_seconds().max(0);
        let site_secs = (received - self.last_received).num_seconds().max(0);
        let secs = charger_secs.max(site_secs);
        let allowance = max_power_w.saturating_mul(secs) / 3600 + SLACK_WH;
        let next = |energy_wh| Register {
            last_wh: reading_wh,
            last_at: at.max(self.last_at),
            last_received: received.max(self.last_received),
            energy_wh,
        };
        if delta < 0 {
            let a = Anomaly::Backwards {
                from_wh: self.last_wh,
                to_wh: reading_wh,
            };
            (next(self.energy_wh), Some(a))
        } else if delta > allowance {
            let a = Anomaly::Jump {
                from_wh: self.last_wh,
                to_wh: reading_wh,
            };
            (next(self.energy_wh), Some(a))
        } else {
            (next(self.energy_wh.saturating_add(delta)), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_790_000_000 + secs, 0).unwrap()
    }

    const MAX: i64 = 22_000;

    #[test]
    fn forward_steps_add_energy() {
        let r = Register::start(1000, t(0), t(0));
        let (r, a) = r.advance(1500, t(600), t(600), MAX);
        assert_eq!((r.energy_wh, a), (500, None));
        let (r, a) = r.advance(4000, t(1200), t(1200), MAX);
        assert_eq!((r.energy_wh, a), (3000, None));
    }

    #[test]
    fn a_register_that_goes_backwards_is_flagged_and_never_billed_negative() {
        let r = Register::start(50_000, t(0), t(0));
        let (r, _) = r.advance(52_000, t(900), t(900), MAX);
        let (r, a) = r.advance(10, t(1000), t(1000), MAX);
        assert_eq!(
            a,
            Some(Anomaly::Backwards {
                from_wh: 52_000,
                to_wh: 10
            })
        );
        assert_eq!(r.energy_wh, 2000);
        // counting resumes from the new baseline
        let (r, a) = r.advance(1010, t(1300), t(1300), MAX);
        assert_eq!((r.energy_wh, a), (3000, None));
    }

    #[test]
    fn meter_start_zero_then_the_real_register_is_a_jump_not_a_910_kwh_bill() {
        let r = Register::start(0, t(0), t(0));
        let (r, a) = r.advance(910_000, t(60), t(60), MAX);
        assert!(matches!(a, Some(Anomaly::Jump { .. })));
        assert_eq!(r.energy_wh, 0);
        let (r, a) = r.advance(915_000, t(1000), t(1000), MAX);
        assert_eq!((r.energy_wh, a), (5000, None));
    }

    #[test]
    fn a_queued_backlog_is_judged_by_the_chargers_clock() {
        // 40 kWh over 3 hours of charger time, received in one burst after an outage.
        let r = Register::start(0, t(0), t(0));
        let (r, a) = r.advance(40_000, t(3 * 3600), t(3 * 3600 + 5), MAX);
        assert_eq!((r.energy_wh, a), (40_000, None));
    }

    #[test]
    fn a_register_at_the_end_of_the_i64_range_is_an_anomaly_not_an_overflow() {
        // Found by `energy_is_never_negative_and_never_decreases` (minimal input): the step
        // from i64::MIN to 0 overflowed `reading - last` (a panic with overflow checks).
        let r = Register::start(0, t(0), t(0));
        let (r, a) = r.advance(i64::MIN, t(0), t(0), 0);
        assert!(matches!(a, Some(Anomaly::Backwards { .. })));
        let (r, a) = r.advance(0, t(0), t(0), 0);
        assert_eq!(
            a,
            Some(Anomaly::Jump {
                from_wh: i64::MIN,
                to_wh: 0
            })
        );
        let (r, a) = r.advance(i64::MAX, t(1), t(1), MAX);
        assert!(matches!(a, Some(Anomaly::Jump { .. })));
        let (r, a) = r.advance(i64::MIN, t(2), t(2), MAX);
        assert!(matches!(a, Some(Anomaly::Backwards { .. })));
        assert_eq!(r.energy_wh, 0);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Seconds either side of the epoch that chrono can represent (±262 000 years,
        /// rounded down).
        const SPAN: i64 = 8_000_000_000_000;

        fn at(secs: i64) -> DateTime<Utc> {
            Utc.timestamp_opt(secs, 0).unwrap()
        }

        /// A reading: a register value from anywhere in i64 (a saturated `-1e30 Wh` decodes
        /// to `i64::MIN`), and charger and site times that jump either way.
        fn reading() -> impl Strategy<Value = (i64, i64, i64)> {
            (
                prop_oneof![
                    any::<i64>(),
                    -1_000_000i64..1_000_000_000,
                    Just(i64::MIN),
                    Just(i64::MAX),
                ],
                -SPAN..SPAN,
                -SPAN..SPAN,
            )
        }

        proptest! {
            #[test]
            fn energy_is_never_negative_and_never_decreases(
                start in any::<i64>(),
                t0 in -SPAN..SPAN,
                // The limit comes from the config (kW, as W): never negative.
                max_power_w in prop_oneof![0..=i64::MAX, 0i64..1_000_000_000],
                readings in proptest::collection::vec(reading(), 0..64),
            ) {
                let mut r = Register::start(start, at(t0), at(t0));
                for (wh, charger, site) in readings {
                    let (next, anomaly) = r.advance(wh, at(charger), at(site), max_power_w);
                    prop_assert!(next.energy_wh >= 0, "{next:?}");
                    prop_assert!(next.energy_wh >= r.energy_wh, "{r:?} -> {next:?}");
                    prop_assert_eq!(next.last_wh, wh);
                    prop_assert!(next.last_at >= r.last_at && next.last_received >= r.last_received);
                    match anomaly {
                        // Counted: exactly the forward step.
                        None => prop_assert_eq!(
                            i128::from(next.energy_wh) - i128::from(r.energy_wh),
                            i128::from(wh) - i128::from(r.last_wh)
                        ),
                        Some(Anomaly::Backwards { from_wh, to_wh }) => {
                            prop_assert!(to_wh < from_wh);
                            prop_assert_eq!(next.energy_wh, r.energy_wh);
                        }
                        Some(Anomaly::Jump { from_wh, to_wh }) => {
                            prop_assert!(to_wh > from_wh);
                            prop_assert_eq!(next.energy_wh, r.energy_wh);
                        }
                    }
                    r = next;
                }
            }
        }
    }
}
