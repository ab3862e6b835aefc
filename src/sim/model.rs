//! A charging session as a car and a charger would produce it, pure: power tapering as the
//! battery fills, the energy register, per-phase current, voltage, state of charge.

use serde_json::{json, Value};

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

/// Phase voltage of the simulated grid, V.
const VOLTAGE: f64 = 230.0;

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

    /// Charges for `secs` seconds; returns the energy delivered, Wh.
    pub fn charge(&mut self, secs: f64) -> f64 {
        let wh = self.power_w() * secs / 3600.0;
        let room = (100.0 - self.soc_pct) / 100.0 * self.capacity_wh;
        let wh = wh.min(room).max(0.0);
        self.soc_pct = (self.soc_pct + wh / self.capacity_wh * 100.0).min(100.0);
        wh
    }
}

/// The OCPP `sampledValue` list for one reading.
pub fn sampled_values(register_wh: i64, power_w: f64, soc_pct: f64, context: &str) -> Value {
    let amps = power_w / (3.0 * VOLTAGE);
    let mut v = vec![
        json!({"value": register_wh.to_string(), "context": context, "measurand": "Energy.Active.Import.Register", "unit": "Wh", "location": "Outlet"}),
        json!({"value": format!("{:.0}", power_w), "context": context, "measurand": "Power.Active.Import", "unit": "W"}),
    ];
    for phase in ["L1", "L2", "L3"] {
        v.push(json!({"value": format!("{amps:.1}"), "context": context, "measurand": "Current.Import", "phase": phase, "unit": "A"}));
    }
    v.push(json!({"value": format!("{VOLTAGE:.1}"), "context": context, "measurand": "Voltage", "phase": "L1-N", "unit": "V"}));
    v.push(json!({"value": format!("{soc_pct:.0}"), "context": context, "measurand": "SoC", "unit": "Percent", "location": "EV"}));
    Value::Array(v)
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
    fn a_reading_has_register_power_current_voltage_and_soc() {
        let v = sampled_values(1234, 6900.0, 55.0, "Sample.Periodic");
        let measurands: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["measurand"].as_str().unwrap())
            .collect();
        assert_eq!(measurands[0], "Energy.Active.Import.Register");
        assert!(measurands.contains(&"SoC"));
        assert_eq!(v[2]["value"], "10.0");
    }
}
