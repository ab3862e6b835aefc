//! What a simulated OCPP 1.6 charger says on the wire, pure: each builder returns the
//! action and payload of one CALL, [`answer`] turns the central system's CALL into the
//! charger's answer and what it makes the charger do. The session itself (when to plug
//! in, charge, fault, stop) is the driver's ([`super`]), the same for both versions.

use serde_json::{json, Value};

use super::model::Reading;
use super::{Answer, Effect, Plug, StopCause, View};

/// The 1.6 spelling of a connector state.
pub fn status_name(plug: Plug) -> &'static str {
    match plug {
        Plug::Available => "Available",
        Plug::Preparing => "Preparing",
        Plug::Charging => "Charging",
        Plug::Finishing => "Finishing",
    }
}

/// The 1.6 StopTransaction `reason` for why a transaction ended.
pub fn stop_reason(cause: StopCause) -> &'static str {
    match cause {
        StopCause::EvDisconnected => "EVDisconnected",
        StopCause::Remote => "Remote",
        StopCause::PowerLoss => "Reboot",
        StopCause::Reset { hard: true } => "HardReset",
        StopCause::Reset { hard: false } => "SoftReset",
    }
}

/// BootNotification.
pub fn boot(cp_id: &str) -> Value {
    json!({"chargePointVendor": "chargesite-sim", "chargePointModel": "SIM-22",
           "chargePointSerialNumber": format!("SN-{cp_id}"), "firmwareVersion": env!("CARGO_PKG_VERSION")})
}

/// StatusNotification for `connector` (0 is the whole charger).
pub fn status(connector: u32, plug: Plug, ts: &str) -> Value {
    json!({"connectorId": connector, "errorCode": "NoError", "status": status_name(plug), "timestamp": ts})
}

/// Authorize.
pub fn authorize(tag: &str) -> Value {
    json!({"idTag": tag})
}

/// StartTransaction on connector 1.
pub fn start(tag: &str, meter_start_wh: i64, ts: &str) -> Value {
    json!({"connectorId": 1, "idTag": tag, "meterStart": meter_start_wh, "timestamp": ts})
}

/// MeterValues for a running transaction.
pub fn meter(tx: i64, reading: &Reading, ts: &str) -> Value {
    json!({"connectorId": 1, "transactionId": tx, "meterValue": [{
        "timestamp": ts, "sampledValue": sampled_values(reading, "Sample.Periodic")}]})
}

/// StopTransaction, with the closing reading as `transactionData`.
pub fn stop(tx: i64, tag: &str, reading: &Reading, cause: StopCause, ts: &str) -> Value {
    json!({"transactionId": tx, "meterStop": reading.register_wh, "timestamp": ts,
        "reason": stop_reason(cause), "idTag": tag,
        "transactionData": [{"timestamp": ts, "sampledValue": sampled_values(reading, "Transaction.End")}]})
}

/// The 1.6 `sampledValue` list for one reading: values are strings, units flat.
pub fn sampled_values(r: &Reading, context: &str) -> Value {
    let phases = r.phases();
    let mut v = vec![
        json!({"value": r.register_wh.to_string(), "context": context, "measurand": "Energy.Active.Import.Register", "unit": "Wh", "location": "Outlet"}),
        json!({"value": format!("{:.0}", r.power_w), "context": context, "measurand": "Power.Active.Import", "unit": "W"}),
    ];
    for p in &phases {
        v.push(json!({"value": format!("{:.1}", p.current_a), "context": context, "measurand": "Current.Import", "phase": p.phase, "unit": "A"}));
    }
    v.push(json!({"value": format!("{:.1}", phases[0].voltage_v), "context": context, "measurand": "Voltage", "phase": "L1-N", "unit": "V"}));
    v.push(json!({"value": format!("{:.0}", r.soc_pct), "context": context, "measurand": "SoC", "unit": "Percent", "location": "EV"}));
    Value::Array(v)
}

/// The charger's answer to the central system's 1.6 CALL `action`.
pub fn answer(action: &str, payload: &Value, view: &View) -> Answer {
    let accepted = || Ok(json!({"status": "Accepted"}));
    match action {
        "RemoteStopTransaction" => Answer {
            reply: accepted(),
            effects: vec![Effect::RemoteStop],
        },
        "RemoteStartTransaction" => Answer {
            reply: accepted(),
            effects: payload["idTag"]
                .as_str()
                .map(|t| Effect::RemoteStart {
                    id_token: t.to_string(),
                    remote_start_id: None,
                })
                .into_iter()
                .collect(),
        },
        "Reset" => Answer {
            reply: accepted(),
            effects: vec![Effect::Reset {
                hard: payload["type"] == "Hard",
            }],
        },
        "ChangeAvailability" | "ChangeConfiguration" | "TriggerMessage" => {
            Answer::reply(accepted())
        }
        "UnlockConnector" => Answer::reply(Ok(json!({"status": "Unlocked"}))),
        "GetConfiguration" => Answer::reply(Ok(json!({"configurationKey": [
            {"key": "MeterValueSampleInterval", "readonly": false, "value": view.meter_interval_secs.to_string()},
            // the common AC charger: limits in amperes only
            {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": true, "value": "Current"},
            {"key": "ChargeProfileMaxStackLevel", "readonly": true, "value": "3"}]}))),
        "SetChargingProfile" => {
            let p = &payload["csChargingProfiles"];
            let schedule = &p["chargingSchedule"];
            let effect = (schedule["chargingRateUnit"] == "A")
                .then(|| {
                    super::profile_effect(
                        p["chargingProfilePurpose"].as_str(),
                        p["transactionId"].as_i64().map(|t| t.to_string()),
                        view.transaction_id.as_deref(),
                        p["chargingProfileId"].as_i64(),
                        crate::power::RateUnit::Amps,
                        schedule,
                    )
                })
                .flatten();
            match effect {
                Some(e) => Answer {
                    reply: accepted(),
                    effects: vec![e],
                },
                None => Answer::reply(Ok(json!({"status": "Rejected"}))),
            }
        }
        // a connector in use cannot be reserved
        "ReserveNow" => Answer::reply(Ok(json!({"status":
            if view.transaction_id.is_some() { "Occupied" } else { "Accepted" }}))),
        "CancelReservation" => Answer::reply(accepted()),
        "ClearChargingProfile" => match payload["id"].as_i64() {
            Some(id) => Answer {
                reply: accepted(),
                effects: vec![Effect::ClearProfile { id }],
            },
            None => Answer::reply(Ok(json!({"status": "Unknown"}))),
        },
        _ => Answer::reply(Err((
            "NotImplemented",
            format!("{action} is not simulated"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> Reading {
        Reading {
            register_wh: 1234,
            power_w: 6900.0,
            soc_pct: 55.0,
        }
    }

    #[test]
    fn a_reading_has_register_power_current_voltage_and_soc_as_strings() {
        let v = sampled_values(&reading(), "Sample.Periodic");
        let measurands: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["measurand"].as_str().unwrap())
            .collect();
        assert_eq!(measurands[0], "Energy.Active.Import.Register");
        assert!(measurands.contains(&"SoC"));
        assert_eq!(v[0]["value"], "1234");
        assert_eq!(v[2]["value"], "10.0");
    }

    #[test]
    fn a_stop_carries_the_register_and_the_reason_a_reboot_gives() {
        let s = stop(7, "TAG", &reading(), StopCause::PowerLoss, "t");
        assert_eq!(s["meterStop"], 1234);
        assert_eq!(s["reason"], "Reboot");
        assert_eq!(
            s["transactionData"][0]["sampledValue"][0]["context"],
            "Transaction.End"
        );
    }

    #[test]
    fn a_remote_start_is_accepted_and_remembers_the_tag() {
        let a = answer(
            "RemoteStartTransaction",
            &json!({"idTag": "T1"}),
            &View::default(),
        );
        assert_eq!(a.reply, Ok(json!({"status": "Accepted"})));
        assert_eq!(
            a.effects,
            vec![Effect::RemoteStart {
                id_token: "T1".into(),
                remote_start_id: None
            }]
        );
    }
}
