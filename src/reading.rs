//! One instant's meter readings, in the contract's units, whichever OCPP version sent
//! them: what the OCPP decoders produce and the session core consumes.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::time::{fmt_ts, ChargerTime};

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
    /// [`Sample::event_body`], serialized where the frame is decoded: the store thread,
    /// which every charger shares, only splices it into the `session.meter` event.
    pub event: String,
}

/// The contract's `session.meter` sample object: what a reading says, absent fields
/// omitted. Small and `Copy`, so the live snapshot can keep it while the sample itself
/// goes to the store.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Values {
    /// When it was measured (charger clock), as the contract writes it.
    #[serde(serialize_with = "ser_ts")]
    pub at: DateTime<Utc>,
    /// The energy register, Wh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_wh: Option<i64>,
    /// Power, W.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_w: Option<i64>,
    /// Current, A (two decimals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_a: Option<f64>,
    /// Voltage, V (two decimals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voltage_v: Option<f64>,
    /// State of charge, percent (two decimals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soc_pct: Option<f64>,
}

fn ser_ts<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_ts(*t))
}

impl Sample {
    /// What the reading says, in the contract's units and precision.
    pub fn values(&self) -> Values {
        Values {
            at: self.at.at,
            energy_wh: self.energy_wh,
            power_w: self.power_w,
            current_a: self.current_a.map(round2),
            voltage_v: self.voltage_v.map(round2),
            soc_pct: self.soc_pct.map(round2),
        }
    }

    /// The `session.meter` sample object, serialized (see [`Sample::event`]).
    pub fn event_body(&self) -> String {
        // A derived Serialize of numbers and a string cannot fail.
        serde_json::to_string(&self.values()).unwrap_or_else(|_| String::from("{}"))
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::Value;

    #[test]
    fn event_json_omits_absent_fields() {
        let s = Sample {
            at: ChargerTime {
                raw: "x".into(),
                at: Utc.timestamp_opt(1_790_000_000, 0).unwrap(),
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
        let v: Value = serde_json::from_str(&s.event_body()).unwrap();
        assert_eq!(v["energy_wh"], 12);
        assert_eq!(v["current_a"], 15.46);
        assert!(v.get("power_w").is_none());
    }
}
