//! OCPP 1.6 `meterValue` elements -> [`Sample`]s (energy register, power, current,
//! voltage, state of charge, in the units the contract uses); pure.

use ocpp_rs::v16::data_types::MeterValue;
use ocpp_rs::v16::enums::{Measurand, Phase, UnitOfMeasure, ValueFormat};

use crate::reading::Sample;
use crate::time::ChargerTime;

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
    sample.event = sample.event_body();
    sample
}
