//! What a simulated OCPP 2.0.1 charging station says on the wire, pure: each builder
//! returns the payload of one CALL, [`answer`] turns the CSMS's CALL into the station's
//! answer and what it makes the station do, [`DeviceModel`] is the little device model
//! GetVariables, SetVariables and GetBaseReport read. The session itself (when to plug in,
//! charge, fault, stop) is the driver's ([`super`]), the same for both versions; only the
//! words differ from [`super::v16`].
//!
//! Every payload follows the official 2.0.1 JSON schemas (not 2.1's, whose bounds are
//! wider): the tests check the shapes that matter to a CSMS, and every payload against the
//! schemas the agent validates with (`ocpp::v201::schema`).

use serde_json::{json, Value};

use super::model::Reading;
use super::{Answer, Effect, Plug, StopCause, View};

/// The WebSocket subprotocol a 2.0.1 station offers.
pub const SUBPROTOCOL: &str = "ocpp2.0.1";

/// The one EVSE of a simulated station, and its one connector.
const EVSE_ID: u32 = 1;
const CONNECTOR_ID: u32 = 1;

/// A driver's token as a station presents it: an OTP (4 to 8 digits) is typed on the
/// keypad (`KeyCode`, as CONTRACT §3 says), anything else is an RFID card.
pub fn id_token(tag: &str) -> Value {
    let is_otp = (4..=8).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_digit());
    json!({"idToken": tag, "type": if is_otp { "KeyCode" } else { "ISO14443" }})
}

/// BootNotification; `reason` is a BootReasonEnumType (`PowerUp`, `RemoteReset`, …).
pub fn boot(cp_id: &str, reason: &str) -> Value {
    // serialNumber is at most 25 characters
    let serial: String = format!("SN-{cp_id}").chars().take(25).collect();
    json!({"reason": reason, "chargingStation": {"model": "SIM-22", "vendorName": "chargesite-sim",
        "serialNumber": serial, "firmwareVersion": env!("CARGO_PKG_VERSION")}})
}

/// StatusNotification of the connector, or `None` when 2.0.1 has no new status to report:
/// a connector is `Occupied` from plug-in to unplug, charging or not (the charging state
/// travels in TransactionEvent).
pub fn status(plug: Plug, ts: &str) -> Option<Value> {
    let status = match plug {
        Plug::Available => "Available",
        Plug::Preparing => "Occupied",
        Plug::Charging | Plug::Finishing => return None,
    };
    Some(
        json!({"timestamp": ts, "connectorStatus": status, "evseId": EVSE_ID, "connectorId": CONNECTOR_ID}),
    )
}

/// Authorize.
pub fn authorize(tag: &str) -> Value {
    json!({"idToken": id_token(tag)})
}

/// The station's own id for its `n`-th transaction (0-based) in a run identified by
/// `run`: unique per station across runs, at most 36 characters.
pub fn transaction_id(run: u64, n: u32) -> String {
    format!("{run:x}-{n}")
}

/// What every TransactionEvent of one transaction carries.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// `transactionInfo.transactionId`.
    pub tx_id: &'a str,
    /// 0 for the first event of the transaction, then one more per event.
    pub seq_no: u32,
    /// When it happened (the station's clock), kept when the event is queued.
    pub ts: &'a str,
    /// Built while the station was disconnected (and so sent later, from its queue).
    pub offline: bool,
}

impl Event<'_> {
    fn body(&self, event_type: &str, trigger: &str, tx_info: Value) -> Value {
        let mut v = json!({"eventType": event_type, "timestamp": self.ts, "triggerReason": trigger,
            "seqNo": self.seq_no, "transactionInfo": tx_info});
        if self.offline {
            v["offline"] = json!(true);
        }
        v
    }
}

/// TransactionEvent Started: the EVSE (only the first event names it), the driver's
/// token, the opening register. A remote start names its `remoteStartId` and is
/// triggered by it; a local one by the authorization.
pub fn started(e: &Event, tag: &str, remote_start_id: Option<i64>, begin: &Reading) -> Value {
    let mut info = json!({"transactionId": e.tx_id, "chargingState": "Charging"});
    let trigger = match remote_start_id {
        Some(id) => {
            info["remoteStartId"] = json!(id);
            "RemoteStart"
        }
        None => "Authorized",
    };
    let mut v = e.body("Started", trigger, info);
    v["evse"] = json!({"id": EVSE_ID, "connectorId": CONNECTOR_ID});
    v["idToken"] = id_token(tag);
    v["meterValue"] = meter_value(begin, e.ts, "Transaction.Begin");
    v
}

/// TransactionEvent Updated with a periodic (or, `trigger` = `Trigger`, a requested)
/// reading.
pub fn updated(e: &Event, trigger: &str, reading: &Reading) -> Value {
    let state = if reading.power_w > 0.0 {
        "Charging"
    } else {
        "SuspendedEV"
    };
    let context = if trigger == "Trigger" {
        "Trigger"
    } else {
        "Sample.Periodic"
    };
    let mut v = e.body(
        "Updated",
        trigger,
        json!({"transactionId": e.tx_id, "chargingState": state}),
    );
    v["meterValue"] = meter_value(reading, e.ts, context);
    v
}

/// TransactionEvent Ended: why, and the closing register.
pub fn ended(e: &Event, cause: StopCause, end: &Reading) -> Value {
    let (trigger, reason) = match cause {
        StopCause::EvDisconnected => ("EVDeparted", "EVDisconnected"),
        StopCause::Remote => ("RemoteStop", "Remote"),
        StopCause::PowerLoss => ("AbnormalCondition", "PowerLoss"),
        StopCause::Reset { .. } => ("ResetCommand", "ImmediateReset"),
    };
    let mut v = e.body(
        "Ended",
        trigger,
        json!({"transactionId": e.tx_id, "chargingState": "Idle", "stoppedReason": reason}),
    );
    v["meterValue"] = meter_value(end, e.ts, "Transaction.End");
    v
}

/// MeterValues outside a transaction's events (sent when the CSMS triggers it).
pub fn meter_values(reading: &Reading, ts: &str) -> Value {
    json!({"evseId": EVSE_ID, "meterValue": meter_value(reading, ts, "Trigger")})
}

fn meter_value(r: &Reading, ts: &str, context: &str) -> Value {
    json!([{"timestamp": ts, "sampledValue": sampled_values(r, context)}])
}

/// Rounds to one decimal, as a meter display would.
fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The 2.0.1 `sampledValue` set of a three-phase meter: the register (numeric Wh), total
/// and per-phase active power, per-phase current and line-to-neutral voltage, and the
/// car's state of charge.
pub fn sampled_values(r: &Reading, context: &str) -> Value {
    let unit = |u: &str| json!({"unit": u});
    let phases = r.phases();
    let mut v = vec![
        json!({"value": r.register_wh, "context": context, "measurand": "Energy.Active.Import.Register",
            "location": "Outlet", "unitOfMeasure": unit("Wh")}),
        json!({"value": r.power_w.round(), "context": context, "measurand": "Power.Active.Import",
            "location": "Outlet", "unitOfMeasure": unit("W")}),
    ];
    for p in &phases {
        v.push(json!({"value": p.power_w.round(), "context": context, "measurand": "Power.Active.Import",
            "phase": p.phase, "location": "Outlet", "unitOfMeasure": unit("W")}));
    }
    for p in &phases {
        v.push(
            json!({"value": tenth(p.current_a), "context": context, "measurand": "Current.Import",
            "phase": p.phase, "location": "Outlet", "unitOfMeasure": unit("A")}),
        );
    }
    for p in &phases {
        v.push(
            json!({"value": tenth(p.voltage_v), "context": context, "measurand": "Voltage",
            "phase": format!("{}-N", p.phase), "location": "Outlet", "unitOfMeasure": unit("V")}),
        );
    }
    v.push(
        json!({"value": r.soc_pct.round(), "context": context, "measurand": "SoC",
        "location": "EV", "unitOfMeasure": unit("Percent")}),
    );
    Value::Array(v)
}

/// One variable of the station's device model.
#[derive(Debug, Clone, PartialEq)]
struct Variable {
    component: &'static str,
    name: &'static str,
    value: String,
    writable: bool,
    /// `integer`, `boolean`, `string` or `MemberList` (the DataEnumType).
    data_type: &'static str,
}

/// The station's device model: the few variables a CSMS commonly reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceModel {
    vars: Vec<Variable>,
}

impl DeviceModel {
    /// The model of a fresh station whose periodic readings come every
    /// `meter_interval_secs`.
    pub fn new(meter_interval_secs: u64) -> DeviceModel {
        let var = |component, name, value: &str, writable, data_type| Variable {
            component,
            name,
            value: value.to_string(),
            writable,
            data_type,
        };
        DeviceModel {
            vars: vec![
                var("OCPPCommCtrlr", "HeartbeatInterval", "300", true, "integer"),
                var("OCPPCommCtrlr", "MessageTimeout", "30", true, "integer"),
                var(
                    "SampledDataCtrlr",
                    "TxUpdatedInterval",
                    &meter_interval_secs.to_string(),
                    true,
                    "integer",
                ),
                var(
                    "SampledDataCtrlr",
                    "TxUpdatedMeasurands",
                    "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,SoC",
                    true,
                    "MemberList",
                ),
                var(
                    "AuthCtrlr",
                    "AuthorizeRemoteStart",
                    "false",
                    true,
                    "boolean",
                ),
                var("TxCtrlr", "EVConnectionTimeOut", "60", true, "integer"),
                var("SmartChargingCtrlr", "Enabled", "true", false, "boolean"),
                var("SmartChargingCtrlr", "RateUnit", "A,W", false, "MemberList"),
                var(
                    "SmartChargingCtrlr",
                    "ProfileStackLevel",
                    "3",
                    false,
                    "integer",
                ),
                var("SecurityCtrlr", "SecurityProfile", "1", false, "integer"),
                var(
                    "ChargingStation",
                    "AvailabilityState",
                    "Available",
                    false,
                    "OptionList",
                ),
            ],
        }
    }

    fn find(&self, component: &Value, variable: &Value) -> Result<usize, &'static str> {
        let c = component["name"].as_str().unwrap_or_default();
        let v = variable["name"].as_str().unwrap_or_default();
        if !self
            .vars
            .iter()
            .any(|x| x.component.eq_ignore_ascii_case(c))
        {
            return Err("UnknownComponent");
        }
        self.vars
            .iter()
            .position(|x| x.component.eq_ignore_ascii_case(c) && x.name.eq_ignore_ascii_case(v))
            .ok_or("UnknownVariable")
    }

    /// The current value of a variable, if the model has it.
    pub fn value(&self, component: &str, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|x| x.component == component && x.name == name)
            .map(|x| x.value.as_str())
    }

    fn get(&self, data: &Value) -> Value {
        let mut r = json!({"component": data["component"], "variable": data["variable"]});
        let attribute = data["attributeType"].as_str().unwrap_or("Actual");
        if attribute != "Actual" {
            r["attributeType"] = json!(attribute);
            r["attributeStatus"] = json!("NotSupportedAttributeType");
            return r;
        }
        match self.find(&data["component"], &data["variable"]) {
            Ok(i) => {
                r["attributeStatus"] = json!("Accepted");
                r["attributeValue"] = json!(self.vars[i].value);
            }
            Err(status) => r["attributeStatus"] = json!(status),
        }
        r
    }

    fn set(&mut self, data: &Value) -> Value {
        let mut r = json!({"component": data["component"], "variable": data["variable"]});
        let attribute = data["attributeType"].as_str().unwrap_or("Actual");
        let value = data["attributeValue"].as_str().unwrap_or_default();
        let status = if attribute != "Actual" {
            r["attributeType"] = json!(attribute);
            "NotSupportedAttributeType"
        } else {
            match self.find(&data["component"], &data["variable"]) {
                Err(status) => status,
                Ok(i) if !self.vars[i].writable => "Rejected",
                Ok(i) if self.vars[i].data_type == "integer" && value.parse::<u32>().is_err() => {
                    "Rejected"
                }
                Ok(i)
                    if self.vars[i].data_type == "boolean"
                        && !matches!(value, "true" | "false") =>
                {
                    "Rejected"
                }
                Ok(i) => {
                    self.vars[i].value = value.to_string();
                    "Accepted"
                }
            }
        };
        r["attributeStatus"] = json!(status);
        r
    }

    /// The NotifyReport parts answering GetBaseReport `request_id`: the model in two
    /// parts, `seqNo` 0 and 1, the first with `tbc: true`.
    pub fn report(&self, request_id: i64, generated_at: &str) -> Vec<Value> {
        let data: Vec<Value> = self
            .vars
            .iter()
            .map(|x| {
                json!({"component": {"name": x.component}, "variable": {"name": x.name},
                "variableAttribute": [{"type": "Actual", "value": x.value,
                    "mutability": if x.writable { "ReadWrite" } else { "ReadOnly" }}],
                "variableCharacteristics": {"dataType": x.data_type, "supportsMonitoring": false}})
            })
            .collect();
        let (first, second) = data.split_at(data.len() / 2);
        [first, second]
            .iter()
            .enumerate()
            .map(|(seq, part)| {
                json!({"requestId": request_id, "generatedAt": generated_at, "seqNo": seq,
                    "tbc": seq == 0, "reportData": part})
            })
            .collect()
    }
}

/// The station's answer to the CSMS's 2.0.1 CALL `action`, and what it makes the station
/// do once answered.
pub fn answer(action: &str, payload: &Value, view: &View, model: &mut DeviceModel) -> Answer {
    let status = |s: &str| Ok(json!({"status": s}));
    let running = view.transaction_id.as_deref();
    match action {
        "RequestStartTransaction" => {
            let token = payload["idToken"]["idToken"].as_str();
            match (running, token) {
                (None, Some(t)) => Answer {
                    reply: status("Accepted"),
                    effects: vec![Effect::RemoteStart {
                        id_token: t.to_string(),
                        remote_start_id: payload["remoteStartId"].as_i64(),
                    }],
                },
                _ => Answer::reply(status("Rejected")),
            }
        }
        "RequestStopTransaction" => {
            if running.is_some() && running == payload["transactionId"].as_str() {
                Answer {
                    reply: status("Accepted"),
                    effects: vec![Effect::RemoteStop],
                }
            } else {
                Answer::reply(status("Rejected"))
            }
        }
        "SetChargingProfile" => {
            let p = &payload["chargingProfile"];
            let schedule = &p["chargingSchedule"][0];
            let unit = match schedule["chargingRateUnit"].as_str() {
                Some("W") => Some(crate::power::RateUnit::Watts),
                Some("A") => Some(crate::power::RateUnit::Amps),
                _ => None,
            };
            let effect = unit.and_then(|unit| {
                super::profile_effect(
                    p["chargingProfilePurpose"].as_str(),
                    p["transactionId"].as_str().map(str::to_string),
                    running,
                    p["id"].as_i64(),
                    unit,
                    schedule,
                )
            });
            match effect {
                Some(e) => Answer {
                    reply: status("Accepted"),
                    effects: vec![e],
                },
                None => Answer::reply(status("Rejected")),
            }
        }
        "ReserveNow" => Answer::reply(status(if running.is_some() {
            "Occupied"
        } else {
            "Accepted"
        })),
        "CancelReservation" => Answer::reply(status("Accepted")),
        "ClearChargingProfile" => match payload["chargingProfileId"].as_i64() {
            Some(id) => Answer {
                reply: status("Accepted"),
                effects: vec![Effect::ClearProfile { id }],
            },
            None => Answer::reply(status("Unknown")),
        },
        "GetVariables" => {
            let results: Vec<Value> = array(&payload["getVariableData"])
                .iter()
                .map(|d| model.get(d))
                .collect();
            Answer::reply(Ok(json!({"getVariableResult": results})))
        }
        "SetVariables" => {
            let results: Vec<Value> = array(&payload["setVariableData"])
                .iter()
                .map(|d| model.set(d))
                .collect();
            Answer::reply(Ok(json!({"setVariableResult": results})))
        }
        "GetBaseReport" => match payload["requestId"].as_i64() {
            Some(request_id) => Answer {
                reply: status("Accepted"),
                effects: vec![Effect::Report { request_id }],
            },
            None => Answer::reply(status("Rejected")),
        },
        "Reset" => match (payload["type"].as_str(), running) {
            // OnIdle waits for the transaction to end; the simulated station then simply
            // carries on (an idle station's reset is not simulated either)
            (Some("OnIdle"), Some(_)) => Answer::reply(status("Scheduled")),
            _ => Answer {
                reply: status("Accepted"),
                effects: vec![Effect::Reset { hard: true }],
            },
        },
        "TriggerMessage" => {
            let m = payload["requestedMessage"].as_str().unwrap_or_default();
            match m {
                "BootNotification" | "Heartbeat" | "StatusNotification" | "MeterValues" => Answer {
                    reply: status("Accepted"),
                    effects: vec![Effect::Trigger(m.to_string())],
                },
                "TransactionEvent" if running.is_some() => Answer {
                    reply: status("Accepted"),
                    effects: vec![Effect::Trigger(m.to_string())],
                },
                "TransactionEvent" => Answer::reply(status("Rejected")),
                _ => Answer::reply(status("NotImplemented")),
            }
        }
        "ChangeAvailability" => {
            let to_inoperative = payload["operationalStatus"] == "Inoperative";
            Answer::reply(status(if to_inoperative && running.is_some() {
                "Scheduled"
            } else {
                "Accepted"
            }))
        }
        "UnlockConnector" => {
            let ours = payload["evseId"] == EVSE_ID && payload["connectorId"] == CONNECTOR_ID;
            Answer::reply(status(match (ours, running) {
                (false, _) => "UnknownConnector",
                (true, Some(_)) => "OngoingAuthorizedTransaction",
                (true, None) => "Unlocked",
            }))
        }
        "GetTransactionStatus" => {
            let mut r = json!({"messagesInQueue": view.queued > 0});
            if let Some(asked) = payload["transactionId"].as_str() {
                r["ongoingIndicator"] = json!(running == Some(asked));
            }
            Answer::reply(Ok(r))
        }
        "ClearCache" => Answer::reply(status("Accepted")),
        _ => Answer::reply(Err((
            "NotImplemented",
            format!("{action} is not simulated"),
        ))),
    }
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(register_wh: i64, power_w: f64) -> Reading {
        Reading {
            register_wh,
            power_w,
            soc_pct: 42.4,
        }
    }

    fn event(seq_no: u32, offline: bool) -> Event<'static> {
        Event {
            tx_id: "18c2a3f-0",
            seq_no,
            ts: "2026-12-01T10:00:00.000Z",
            offline,
        }
    }

    fn running(tx: &str) -> View {
        View {
            transaction_id: Some(tx.to_string()),
            ..View::default()
        }
    }

    #[test]
    fn an_otp_of_four_to_eight_digits_is_a_key_code_and_anything_else_a_card() {
        assert_eq!(id_token("482913")["type"], "KeyCode");
        assert_eq!(id_token("1234")["type"], "KeyCode");
        assert_eq!(id_token("12345678")["type"], "KeyCode");
        assert_eq!(id_token("123")["type"], "ISO14443");
        assert_eq!(id_token("123456789")["type"], "ISO14443");
        assert_eq!(id_token("04A2B3C4")["type"], "ISO14443");
    }

    #[test]
    fn a_started_event_names_the_evse_the_token_and_the_opening_register() {
        let v = started(&event(0, false), "482913", None, &reading(1_000_000, 0.0));
        assert_eq!(v["eventType"], "Started");
        assert_eq!(v["seqNo"], 0);
        assert_eq!(v["triggerReason"], "Authorized");
        assert_eq!(v["evse"], json!({"id": 1, "connectorId": 1}));
        assert_eq!(
            v["idToken"],
            json!({"idToken": "482913", "type": "KeyCode"})
        );
        assert_eq!(v["transactionInfo"]["transactionId"], "18c2a3f-0");
        let begin = &v["meterValue"][0]["sampledValue"][0];
        assert_eq!(begin["context"], "Transaction.Begin");
        assert_eq!(begin["value"], 1_000_000);
        assert!(v.get("offline").is_none());
    }

    #[test]
    fn a_remote_start_carries_its_remote_start_id_and_is_triggered_by_it() {
        let v = started(&event(0, false), "TAG", Some(77), &reading(5, 0.0));
        assert_eq!(v["triggerReason"], "RemoteStart");
        assert_eq!(v["transactionInfo"]["remoteStartId"], 77);
    }

    #[test]
    fn later_events_name_neither_the_evse_nor_the_token() {
        let v = updated(
            &event(3, false),
            "MeterValuePeriodic",
            &reading(1_000_500, 11_000.0),
        );
        assert!(v.get("evse").is_none());
        assert!(v.get("idToken").is_none());
        assert_eq!(v["seqNo"], 3);
        assert_eq!(
            v["meterValue"][0]["sampledValue"][0]["context"],
            "Sample.Periodic"
        );
    }

    #[test]
    fn a_queued_event_says_it_was_offline() {
        let v = updated(&event(2, true), "MeterValuePeriodic", &reading(1, 1.0));
        assert_eq!(v["offline"], true);
    }

    #[test]
    fn an_ended_event_says_why_with_the_closing_register() {
        let v = ended(
            &event(9, false),
            StopCause::PowerLoss,
            &reading(1_004_000, 0.0),
        );
        assert_eq!(v["transactionInfo"]["stoppedReason"], "PowerLoss");
        assert_eq!(
            v["meterValue"][0]["sampledValue"][0]["context"],
            "Transaction.End"
        );
        assert_eq!(v["meterValue"][0]["sampledValue"][0]["value"], 1_004_000);
        let v = ended(
            &event(9, false),
            StopCause::Reset { hard: true },
            &reading(1, 0.0),
        );
        assert_eq!(v["transactionInfo"]["stoppedReason"], "ImmediateReset");
        assert_eq!(v["triggerReason"], "ResetCommand");
        let v = ended(&event(9, false), StopCause::Remote, &reading(1, 0.0));
        assert_eq!(v["transactionInfo"]["stoppedReason"], "Remote");
        assert_eq!(v["triggerReason"], "RemoteStop");
    }

    #[test]
    fn a_reading_is_a_numeric_three_phase_set() {
        let v = sampled_values(&reading(1234, 11_000.0), "Sample.Periodic");
        let items = v.as_array().unwrap();
        let of = |m: &str| items.iter().filter(|s| s["measurand"] == m).count();
        assert_eq!(of("Energy.Active.Import.Register"), 1);
        assert_eq!(of("Power.Active.Import"), 4);
        assert_eq!(of("Current.Import"), 3);
        assert_eq!(of("Voltage"), 3);
        assert_eq!(of("SoC"), 1);
        assert!(items.iter().all(|s| s["value"].is_number()));
        assert_eq!(items[0]["value"], 1234);
        assert_eq!(items[0]["unitOfMeasure"]["unit"], "Wh");
        let voltage_phases: Vec<&str> = items
            .iter()
            .filter(|s| s["measurand"] == "Voltage")
            .map(|s| s["phase"].as_str().unwrap())
            .collect();
        assert_eq!(voltage_phases, ["L1-N", "L2-N", "L3-N"]);
    }

    #[test]
    fn transaction_ids_fit_in_36_characters() {
        assert!(transaction_id(u64::MAX, u32::MAX).len() <= 36);
        assert_ne!(transaction_id(1, 0), transaction_id(1, 1));
    }

    #[test]
    fn a_remote_start_is_accepted_when_idle_and_refused_while_charging() {
        let mut m = DeviceModel::new(5);
        let req = json!({"idToken": {"idToken": "T", "type": "Central"}, "remoteStartId": 4});
        let a = answer("RequestStartTransaction", &req, &View::default(), &mut m);
        assert_eq!(a.reply, Ok(json!({"status": "Accepted"})));
        assert_eq!(
            a.effects,
            vec![Effect::RemoteStart {
                id_token: "T".into(),
                remote_start_id: Some(4)
            }]
        );
        let a = answer("RequestStartTransaction", &req, &running("x"), &mut m);
        assert_eq!(a.reply, Ok(json!({"status": "Rejected"})));
    }

    #[test]
    fn a_remote_stop_is_accepted_only_for_the_running_transaction() {
        let mut m = DeviceModel::new(5);
        let a = answer(
            "RequestStopTransaction",
            &json!({"transactionId": "x"}),
            &running("x"),
            &mut m,
        );
        assert_eq!(a.effects, vec![Effect::RemoteStop]);
        let a = answer(
            "RequestStopTransaction",
            &json!({"transactionId": "y"}),
            &running("x"),
            &mut m,
        );
        assert_eq!(a.reply, Ok(json!({"status": "Rejected"})));
    }

    #[test]
    fn variables_are_read_and_written_through_the_device_model() {
        let mut m = DeviceModel::new(5);
        let get = json!({"getVariableData": [
            {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedInterval"}},
            {"component": {"name": "Nowhere"}, "variable": {"name": "X"}},
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "Nothing"}}]});
        let r = answer("GetVariables", &get, &View::default(), &mut m)
            .reply
            .unwrap();
        let res = &r["getVariableResult"];
        assert_eq!(res[0]["attributeStatus"], "Accepted");
        assert_eq!(res[0]["attributeValue"], "5");
        assert_eq!(res[1]["attributeStatus"], "UnknownComponent");
        assert_eq!(res[2]["attributeStatus"], "UnknownVariable");
        let set = json!({"setVariableData": [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}, "attributeValue": "60"},
            {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "SecurityProfile"}, "attributeValue": "3"},
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}, "attributeValue": "soon"}]});
        let r = answer("SetVariables", &set, &View::default(), &mut m)
            .reply
            .unwrap();
        let res = &r["setVariableResult"];
        assert_eq!(res[0]["attributeStatus"], "Accepted");
        assert_eq!(res[1]["attributeStatus"], "Rejected");
        assert_eq!(res[2]["attributeStatus"], "Rejected");
        assert_eq!(m.value("OCPPCommCtrlr", "HeartbeatInterval"), Some("60"));
    }

    #[test]
    fn a_base_report_is_accepted_then_sent_in_two_parts() {
        let mut m = DeviceModel::new(5);
        let a = answer(
            "GetBaseReport",
            &json!({"requestId": 12, "reportBase": "FullInventory"}),
            &View::default(),
            &mut m,
        );
        assert_eq!(a.effects, vec![Effect::Report { request_id: 12 }]);
        let parts = m.report(12, "2026-12-01T10:00:00.000Z");
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0]["seqNo"].clone(), parts[0]["tbc"].clone()),
            (json!(0), json!(true))
        );
        assert_eq!(
            (parts[1]["seqNo"].clone(), parts[1]["tbc"].clone()),
            (json!(1), json!(false))
        );
        let total = parts
            .iter()
            .map(|p| p["reportData"].as_array().unwrap().len())
            .sum::<usize>();
        assert_eq!(total, DeviceModel::new(5).vars.len());
    }

    #[test]
    fn the_transaction_status_tells_whether_it_runs_and_whether_messages_wait() {
        let mut m = DeviceModel::new(5);
        let view = View {
            transaction_id: Some("x".into()),
            queued: 3,
            ..View::default()
        };
        let r = answer(
            "GetTransactionStatus",
            &json!({"transactionId": "x"}),
            &view,
            &mut m,
        );
        assert_eq!(
            r.reply,
            Ok(json!({"ongoingIndicator": true, "messagesInQueue": true}))
        );
        let r = answer(
            "GetTransactionStatus",
            &json!({"transactionId": "old"}),
            &View::default(),
            &mut m,
        );
        assert_eq!(
            r.reply,
            Ok(json!({"ongoingIndicator": false, "messagesInQueue": false}))
        );
    }

    #[test]
    fn an_unlock_during_a_transaction_is_refused_and_an_unknown_connector_named() {
        let mut m = DeviceModel::new(5);
        let req = json!({"evseId": 1, "connectorId": 1});
        let r = answer("UnlockConnector", &req, &running("x"), &mut m).reply;
        assert_eq!(r, Ok(json!({"status": "OngoingAuthorizedTransaction"})));
        let r = answer("UnlockConnector", &req, &View::default(), &mut m).reply;
        assert_eq!(r, Ok(json!({"status": "Unlocked"})));
        let r = answer(
            "UnlockConnector",
            &json!({"evseId": 2, "connectorId": 1}),
            &View::default(),
            &mut m,
        )
        .reply;
        assert_eq!(r, Ok(json!({"status": "UnknownConnector"})));
    }

    #[test]
    fn a_trigger_is_accepted_for_what_the_station_can_send() {
        let mut m = DeviceModel::new(5);
        let a = answer(
            "TriggerMessage",
            &json!({"requestedMessage": "Heartbeat"}),
            &View::default(),
            &mut m,
        );
        assert_eq!(a.effects, vec![Effect::Trigger("Heartbeat".into())]);
        let a = answer(
            "TriggerMessage",
            &json!({"requestedMessage": "TransactionEvent"}),
            &View::default(),
            &mut m,
        );
        assert_eq!(a.reply, Ok(json!({"status": "Rejected"})));
        let a = answer(
            "TriggerMessage",
            &json!({"requestedMessage": "SignV2GCertificate"}),
            &View::default(),
            &mut m,
        );
        assert_eq!(a.reply, Ok(json!({"status": "NotImplemented"})));
    }

    #[test]
    fn an_unknown_call_is_answered_not_implemented() {
        let mut m = DeviceModel::new(5);
        let a = answer("CostUpdated", &json!({}), &View::default(), &mut m);
        assert!(matches!(a.reply, Err(("NotImplemented", _))));
    }

    /// Every payload the station sends or answers with, as `(schema name, payload)`.
    fn every_payload() -> Vec<(String, Value)> {
        let r = reading(1_234_567, 11_000.0);
        let e = event(0, false);
        let mut out: Vec<(String, Value)> = vec![
            (
                "BootNotificationRequest".into(),
                boot("A-CHARGER-ID-LONGER-THAN-25-CHARS", "PowerUp"),
            ),
            (
                "StatusNotificationRequest".into(),
                status(Plug::Available, e.ts).unwrap(),
            ),
            (
                "StatusNotificationRequest".into(),
                status(Plug::Preparing, e.ts).unwrap(),
            ),
            ("AuthorizeRequest".into(), authorize("482913")),
            ("AuthorizeRequest".into(), authorize("04A2B3C4")),
            ("HeartbeatRequest".into(), json!({})),
            ("MeterValuesRequest".into(), meter_values(&r, e.ts)),
            (
                "TransactionEventRequest".into(),
                started(&e, "482913", None, &reading(0, 0.0)),
            ),
            (
                "TransactionEventRequest".into(),
                started(&e, "TAG", Some(3), &r),
            ),
            (
                "TransactionEventRequest".into(),
                updated(&event(1, true), "MeterValuePeriodic", &r),
            ),
            (
                "TransactionEventRequest".into(),
                updated(&event(2, false), "Trigger", &reading(5, 0.0)),
            ),
        ];
        for cause in [
            StopCause::EvDisconnected,
            StopCause::Remote,
            StopCause::PowerLoss,
            StopCause::Reset { hard: true },
        ] {
            out.push((
                "TransactionEventRequest".into(),
                ended(&event(3, true), cause, &r),
            ));
        }
        let mut m = DeviceModel::new(5);
        for part in m.report(1, e.ts) {
            out.push(("NotifyReportRequest".into(), part));
        }
        let calls = [
            (
                "RequestStartTransaction",
                json!({"idToken": {"idToken": "T", "type": "Central"}, "remoteStartId": 1}),
            ),
            ("RequestStopTransaction", json!({"transactionId": "x"})),
            (
                "GetVariables",
                json!({"getVariableData": [
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}, "attributeType": "Target"},
                {"component": {"name": "Nowhere"}, "variable": {"name": "X"}}]}),
            ),
            (
                "SetVariables",
                json!({"setVariableData": [
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}, "attributeValue": "60"},
                {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "SecurityProfile"}, "attributeValue": "3"},
                {"component": {"name": "Nowhere"}, "variable": {"name": "X"}, "attributeValue": "1", "attributeType": "MaxSet"}]}),
            ),
            (
                "GetBaseReport",
                json!({"requestId": 1, "reportBase": "FullInventory"}),
            ),
            ("Reset", json!({"type": "Immediate"})),
            ("Reset", json!({"type": "OnIdle"})),
            ("TriggerMessage", json!({"requestedMessage": "MeterValues"})),
            (
                "TriggerMessage",
                json!({"requestedMessage": "TransactionEvent"}),
            ),
            (
                "TriggerMessage",
                json!({"requestedMessage": "SignV2GCertificate"}),
            ),
            (
                "ChangeAvailability",
                json!({"operationalStatus": "Inoperative"}),
            ),
            ("UnlockConnector", json!({"evseId": 1, "connectorId": 1})),
            ("UnlockConnector", json!({"evseId": 3, "connectorId": 1})),
            ("GetTransactionStatus", json!({"transactionId": "x"})),
            ("GetTransactionStatus", json!({})),
            ("ClearCache", json!({})),
        ];
        for view in [View::default(), running("x")] {
            for (action, req) in &calls {
                out.push((format!("{action}Request"), req.clone()));
                let reply = answer(action, req, &view, &mut m).reply.unwrap();
                out.push((format!("{action}Response"), reply));
            }
        }
        out
    }

    #[test]
    fn every_payload_the_station_sends_or_answers_with_is_valid_2_0_1() {
        let payloads = every_payload();
        assert!(payloads.len() > 50);
        for (schema, payload) in payloads {
            if let Err(v) = crate::ocpp::v201::schema::validate(&schema, &payload) {
                panic!("{schema} {payload}: {v:?}");
            }
        }
    }
}
