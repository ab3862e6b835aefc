//! One instant's meter readings, in the contract's units, whichever OCPP version sent
//! them: what the OCPP decoders produce and the session core consumes.

use serde_json::{Map, Value};

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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

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
        let v = s.to_event_json();
        assert_eq!(v["energy_wh"], 12);
        assert_eq!(v["current_a"], 15.46);
        assert!(v.get("power_w").is_none());
    }
}
