//! A charging session as a car and a charger would produce it, pure: power tapering as the
//! battery fills, the energy register, per-phase current, voltage, state of charge.

/// An EV being charged.
#[derive(Debug, Clone, PartialEq)]
pub struct Car {
    /// Usable battery capacity, Wh.
    pub capacity_wh: f64,
    /// State of charge, 0..=100.
    pub soc_pct: f64,
    /// The charger's (and car's) maximum power, W.
    pub max_power_w: f64,
}

impl Car {
    /// Power drawn at the current state of charge: full power up to 80 %, then tapering
    /// linearly to 10 % of it at 100 % (the constant-voltage phase of a real charge).
    pub fn power_w(&self) -> f64 {
        if self.soc_pct >= 100.0 {
            0.0
        } else if self.soc_pct < 80.0 {
            self.max_power_w
        } else {
            let f = 1.0 - 0.9 * (self.soc_pct - 80.0) / 20.0;
            self.max_power_w * f
        }
    }

    /// Power drawn under a charging limit of `cap_w` (none: `f64::INFINITY`).
    pub fn power_capped(&self, cap_w: f64) -> f64 {
        self.power_w().min(cap_w.max(0.0))
    }

    /// Charges for `secs` seconds; returns the energy delivered, Wh.
    pub fn charge(&mut self, secs: f64) -> f64 {
        self.charge_capped(secs, f64::INFINITY)
    }

    /// Charges for `secs` seconds under a limit of `cap_w`; returns the energy, Wh.
    pub fn charge_capped(&mut self, secs: f64, cap_w: f64) -> f64 {
        let wh = self.power_capped(cap_w) * secs / 3600.0;
        let room = (100.0 - self.soc_pct) / 100.0 * self.capacity_wh;
        let wh = wh.min(room).max(0.0);
        self.soc_pct = (self.soc_pct + wh / self.capacity_wh * 100.0).min(100.0);
        wh
    }
}

/// One meter reading as the charger's meter would take it: what both protocol versions
/// report, each in its own words (`v16::sampled_values`, `v201::sampled_values`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The energy register, Wh.
    pub register_wh: i64,
    /// Total active power, W.
    pub power_w: f64,
    /// The car's state of charge, %.
    pub soc_pct: f64,
}

/// One phase of a three-phase reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseReading {
    /// `L1`, `L2` or `L3`.
    pub phase: &'static str,
    /// Line-to-neutral voltage, V.
    pub voltage_v: f64,
    /// Current, A.
    pub current_a: f64,
    /// Active power on this phase, W.
    pub power_w: f64,
}

/// A charging profile as a simulated charger keeps it: one limit, in watts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldProfile {
    /// `chargingProfileId` (2.0.1 `id`).
    pub id: i64,
    /// The limit, W (amperes converted at 230 V per phase, as the agent reckons them).
    pub limit_w: f64,
    /// When its schedule ends, in seconds of the charger's run; `None`: never.
    pub until_secs: Option<f64>,
}

/// The profiles a simulated charger holds and the limit they put on its charging: a
/// TxProfile while its schedule lasts, else the TxDefaultProfile, else none (pure: the
/// time is passed in, in seconds since the charger started).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChargingLimits {
    /// The TxDefaultProfile.
    pub default: Option<HeldProfile>,
    /// The running transaction's TxProfile.
    pub tx: Option<HeldProfile>,
}

impl ChargingLimits {
    /// The power allowed at `at_secs`, W (`f64::INFINITY`: no limit).
    pub fn limit_w(&self, at_secs: f64) -> f64 {
        let live = |p: &Option<HeldProfile>| p.filter(|p| p.until_secs.is_none_or(|u| at_secs < u));
        live(&self.tx)
            .or_else(|| live(&self.default))
            .map_or(f64::INFINITY, |p| p.limit_w)
    }

    /// ClearChargingProfile by id; whether one was held.
    pub fn clear(&mut self, id: i64) -> bool {
        let mut found = false;
        for slot in [&mut self.default, &mut self.tx] {
            if slot.is_some_and(|p| p.id == id) {
                *slot = None;
                found = true;
            }
        }
        found
    }
}

/// Line-to-neutral voltages of the simulated grid, V: not quite balanced, as a real one.
const PHASE_VOLTAGES: [(&str, f64); 3] = [("L1", 230.4), ("L2", 229.1), ("L3", 231.0)];

impl Reading {
    /// The three phases: the power shared equally, each phase's current from its voltage.
    pub fn phases(&self) -> [PhaseReading; 3] {
        PHASE_VOLTAGES.map(|(phase, voltage_v)| {
            let power_w = self.power_w / 3.0;
            PhaseReading {
                phase,
                voltage_v,
                current_a: power_w / voltage_v,
                power_w,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_tapers_as_the_battery_fills() {
        let mut car = Car {
            capacity_wh: 60_000.0,
            soc_pct: 20.0,
            max_power_w: 22_000.0,
        };
        assert_eq!(car.power_w(), 22_000.0);
        car.soc_pct = 90.0;
        assert!(car.power_w() < 22_000.0 && car.power_w() > 2_200.0);
        car.soc_pct = 100.0;
        assert_eq!(car.power_w(), 0.0);
    }

    #[test]
    fn energy_never_overfills_the_battery() {
        let mut car = Car {
            capacity_wh: 10_000.0,
            soc_pct: 99.0,
            max_power_w: 50_000.0,
        };
        let wh = car.charge(3600.0);
        assert!(wh <= 100.0 + 1e-9);
        assert!(car.soc_pct <= 100.0);
    }

    #[test]
    fn a_tx_profile_caps_charging_until_it_runs_out_then_the_default_does() {
        let mut l = ChargingLimits::default();
        assert_eq!(l.limit_w(0.0), f64::INFINITY);
        l.default = Some(HeldProfile {
            id: 1,
            limit_w: 10_000.0,
            until_secs: None,
        });
        l.tx = Some(HeldProfile {
            id: 2,
            limit_w: 16_000.0,
            until_secs: Some(300.0),
        });
        assert_eq!(l.limit_w(299.0), 16_000.0);
        assert_eq!(l.limit_w(300.0), 10_000.0);
        let car = Car {
            capacity_wh: 60_000.0,
            soc_pct: 20.0,
            max_power_w: 22_000.0,
        };
        assert_eq!(car.power_capped(l.limit_w(0.0)), 16_000.0);
        assert!(l.clear(1) && l.clear(2) && !l.clear(2));
        assert_eq!(car.power_capped(l.limit_w(0.0)), 22_000.0);
    }

    #[test]
    fn three_phases_share_the_power_and_carry_what_their_voltage_implies() {
        let r = Reading {
            register_wh: 1234,
            power_w: 6900.0,
            soc_pct: 55.0,
        };
        let phases = r.phases();
        let total: f64 = phases.iter().map(|p| p.power_w).sum();
        assert!((total - 6900.0).abs() < 1e-9);
        for p in phases {
            assert!((p.current_a * p.voltage_v - 2300.0).abs() < 1e-9);
            assert!((9.9..10.1).contains(&p.current_a));
        }
        assert_eq!(phases.map(|p| p.phase), ["L1", "L2", "L3"]);
    }
}
