//! `meterValue` elements (OCPP 1.6 here, 2.0.1 in [`super::v201::messages`]) -> [`Sample`]s (energy register, power, current,
//! voltage, state of charge, in the units the contract uses); pure.

use ocpp_rs::v16::data_types::MeterValue;
use ocpp_rs::v16::enums::{UnitOfMeasure, ValueFormat};

use crate::reading::Sample;
use crate::time::ChargerTime;

/// Accumulates per-measurand values: a phase-less value wins over per-phase ones.
#[derive(Default)]
struct Acc {
    total: Option<f64>,
    phases: Vec<f64>,
}

impl Acc {
    fn add(&mut self, phase: Option<&str>, v: f64) {
        match phase {
            None => self.total = Some(v),
            Some("N") => {}
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

/// One `meterValue` element's sampled values, whichever OCPP version sent them: the rule
/// that turns measurands and phases into a [`Sample`], written once.
#[derive(Default)]
pub struct Readings {
    energy: Acc,
    power: Acc,
    current: Acc,
    voltage: Acc,
    soc: Acc,
}

impl Readings {
    /// Adds one sampled value, already in Wh, W, A, V or percent. `measurand` as spelled on
    /// the wire (absent means `Energy.Active.Import.Register` in both versions); `phase`
    /// as spelled on the wire (`N` is ignored; per-phase values are summed for energy and
    /// power and averaged for current and voltage, unless a phase-less value is given).
    pub fn add(&mut self, measurand: Option<&str>, phase: Option<&str>, v: f64) {
        if !v.is_finite() {
            return;
        }
        match measurand.unwrap_or("Energy.Active.Import.Register") {
            "Energy.Active.Import.Register" => self.energy.add(phase, v),
            "Power.Active.Import" => self.power.add(phase, v),
            "Current.Import" => self.current.add(phase, v),
            "Voltage" => self.voltage.add(phase, v),
            "SoC" => self.soc.add(None, v),
            _ => {}
        }
    }

    /// The sample these values make, measured `at`.
    pub fn sample(self, at: ChargerTime, context: Option<String>, raw: String) -> Sample {
        let mut sample = Sample {
            at,
            energy_wh: self.energy.sum().map(|v| v.round() as i64),
            power_w: self.power.sum().map(|v| v.round() as i64),
            current_a: self.current.mean(),
            voltage_v: self.voltage.mean(),
            soc_pct: self.soc.mean(),
            context,
            raw,
            event: String::new(),
        };
        sample.event = sample.event_body();
        sample
    }
}

/// Builds a [`Sample`] from one OCPP 1.6 `meterValue` element.
pub fn sample_from(mv: &MeterValue, at: ChargerTime, raw: String) -> Sample {
    let mut readings = Readings::default();
    for sv in &mv.sampled_value {
        if matches!(sv.format, Some(ValueFormat::SignedData)) {
            continue; // kept in `raw`; not a number we can read
        }
        let Ok(v) = sv.value.trim().parse::<f64>() else {
            continue;
        };
        let kilo = matches!(sv.unit, Some(UnitOfMeasure::KWh) | Some(UnitOfMeasure::Kw));
        let measurand = sv.measurand.as_ref().map(|m| m.as_ref());
        let scaled = match measurand {
            None | Some("Energy.Active.Import.Register" | "Power.Active.Import") if kilo => {
                v * 1000.0
            }
            _ => v,
        };
        readings.add(measurand, sv.phase.as_ref().map(|p| p.as_ref()), scaled);
    }
    let context = mv
        .sampled_value
        .first()
        .and_then(|s| s.context.as_ref())
        .map(|c| c.as_ref().to_string());
    readings.sample(at, context, raw)
}
