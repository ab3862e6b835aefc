//! Meter readings and the energy register, pure.
//!
//! Two jobs: turn an OCPP `meterValue` element into one [`Sample`] (energy register, power,
//! current, voltage, state of charge, in the units the contract uses), and advance a
//! session's [`Register`] so that a bad meter can never bill a huge delta. The bugs this
//! guards against are the ones other central systems ship: a register that goes backwards
//! after a charger reboot, and a `meterStart` of 0 followed by the real register value
//! (the "910 kWh bill"). Energy is counted only from plausible forward steps; every other
//! step re-baselines the register and is reported as an [`Anomaly`].

use chrono::{DateTime, Utc};
use ocpp_rs::v16::data_types::MeterValue;
use ocpp_rs::v16::enums::{Measurand, Phase, UnitOfMeasure, ValueFormat};
use serde_json::{Map, Value};

use super::messages::ChargerTime;
use crate::time::fmt_ts;

/// One instant's readings from one `meterValue` element.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When it was measured, by the charger's clock.
    pub at: ChargerTime,
    /// `Energy.Active.Import.Register`, Wh.
    pub energy_wh: Option<i64>,
    /// `Power.Active.Import`, W (sum of phases when only per-phase values are given).
    pub power_w: Option<i64>,
    /// `Current.Import`, A (mean of phases when only per-phase values are given).
    pub current_a: Option<f64>,
    /// `Voltage`, V (mean of phases when only per-phase values are given).
    pub voltage_v: Option<f64>,
    /// `SoC`, percent.
    pub soc_pct: Option<f64>,
    /// `context` of the first sampled value, e.g. `Sample.Periodic`.
    pub context: Option<String>,
    /// The element as received (re-serialized compactly), kept for audit.
    pub raw: String,
    /// [`Sample::to_event_json`], serialized where the frame is decoded: the store thread,
    /// which every charger shares, only splices it into the `session.meter` event.
    pub event: String,
}

impl Sample {
    /// The contract's `session.meter` sample object (absent fields omitted).
    pub fn to_event_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("at".into(), Value::from(fmt_ts(self.at.at)));
        if let Some(v) = self.energy_wh {
            m.insert("energy_wh".into(), Value::from(v));
        }
        if let Some(v) = self.power_w {
            m.insert("power_w".into(), Value::from(v));
        }
        if let Some(v) = self.current_a {
            m.insert("current_a".into(), Value::from(round2(v)));
        }
        if let Some(v) = self.voltage_v {
            m.insert("voltage_v".into(), Value::from(round2(v)));
        }
        if let Some(v) = self.soc_pct {
            m.insert("soc_pct".into(), Value::from(round2(v)));
        }
        Value::Object(m)
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Accumulates per-measurand values: a phase-less value wins over per-phase ones.
#[derive(Default)]
struct Acc {
    total: Option<f64>,
    phases: Vec<f64>,
}

impl Acc {
    fn add(&mut self, phase: Option<&Phase>, v: f64) {
        match phase {
            None => self.total = Some(v),
            Some(Phase::N) => {}
            Some(_) => self.phases.push(v),
        }
    }
    fn sum(&self) -> Option<f64> {
        self.total
            .or_else(|| (!self.phases.is_empty()).then(|| self.phases.iter().sum()))
    }
    fn mean(&self) -> Option<f64> {
        self.total.or_else(|| {
            (!self.phases.is_empty())
                .then(|| self.phases.iter().sum::<f64>() / self.phases.len() as f64)
        })
    }
}

/// Builds a [`Sample`] from one `meterValue` element.
pub fn sample_from(mv: &MeterValue, at: ChargerTime, raw: String) -> Sample {
    let (mut energy, mut power, mut current, mut voltage, mut soc) = (
        Acc::default(),
        Acc::default(),
        Acc::default(),
        Acc::default(),
        Acc::default(),
    );
    for sv in &mv.sampled_value {
        if matches!(sv.format, Some(ValueFormat::SignedData)) {
            continue; // kept in `raw`; not a number we can read
        }
        let Ok(v) = sv.value.trim().parse::<f64>() else {
            continue;
        };
        if !v.is_finite() {
            continue;
        }
        let kilo = matches!(sv.unit, Some(UnitOfMeasure::KWh) | Some(UnitOfMeasure::Kw));
        let scaled = if kilo { v * 1000.0 } else { v };
        match sv
            .measurand
            .as_ref()
            .unwrap_or(&Measurand::EnergyActiveImportRegister)
        {
            Measurand::EnergyActiveImportRegister => energy.add(sv.phase.as_ref(), scaled),
            Measurand::PowerActiveImport => power.add(sv.phase.as_ref(), scaled),
            Measurand::CurrentImport => current.add(sv.phase.as_ref(), v),
            Measurand::Voltage => voltage.add(sv.phase.as_ref(), v),
            Measurand::SoC => soc.add(None, v),
            _ => {}
        }
    }
    let mut sample = Sample {
        at,
        energy_wh: energy.sum().map(|v| v.round() as i64),
        power_w: power.sum().map(|v| v.round() as i64),
        current_a: current.mean(),
        voltage_v: voltage.mean(),
        soc_pct: soc.mean(),
        context: mv
            .sampled_value
            .first()
            .and_then(|s| s.context.as_ref())
            .map(|c| c.as_ref().to_string()),
        raw,
        event: String::new(),
    };
    sample.event = sample.to_event_json().to_string();
    sample
}

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
    pub fn flag(&self) -> &'static str {
        match self {
            Anomaly::Backwards { .. } => "meter_backwards",
            Anomaly::Jump { .. } => "meter_jump",
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
        let delta = reading_wh - self.last_wh;
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
            (next(self.energy_wh + delta), None)
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
    fn event_json_omits_absent_fields() {
        let s = Sample {
            at: ChargerTime {
                raw: "x".into(),
                at: t(0),
            },
            energy_wh: Some(12),
            power_w: None,
            current_a: Some(15.456),
            voltage_v: None,
            soc_pct: None,
            context: None,
            raw: "null".into(),
            event: String::new(),
        };
        let v = s.to_event_json();
        assert_eq!(v["energy_wh"], 12);
        assert_eq!(v["current_a"], 15.46);
        assert!(v.get("power_w").is_none());
    }
}
