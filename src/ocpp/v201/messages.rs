//! OCPP 2.0.1 requests from a charger, decoded and validated; pure.
//!
//! Every payload is first checked against its official 2.0.1 schema ([`super::schema`]),
//! which gives the OCPP-J 2.0.1 CALLERROR code for anything it breaks; only then is it read
//! into the typed [`Request`]. So the serde structs below hold only the fields the agent
//! uses, and never decide what is valid.
//!
//! What is answered how:
//! - an action a charger sends in 2.0.1 is decoded, or (certificates, ISO 15118) answered
//!   `NotSupported` until its issue lands;
//! - an action only a CSMS sends is `NotSupported` (known, not in this direction);
//! - an action 2.1 added, or any unknown name, is `NotImplemented` (2.0.1 does not know
//!   it). `ocpp_rs`'s list of 2.1-only actions misses `GetCertificateChainStatus`; this
//!   module's lists come from the 2.0.1 schemas themselves.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::schema;
use crate::ocpp::frame::ErrorCode;
use crate::ocpp::messages::DecodeError;
use crate::ocpp::meter::Readings;
use crate::reading::Sample;
use crate::time::ChargerTime;

/// An idToken as presented.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IdToken {
    /// `idToken`: the code, the card's UID, or the agent's own remote-start token.
    #[serde(rename = "idToken")]
    pub id: String,
    /// `type`: `KeyCode`, `ISO14443`, `Central`, …
    #[serde(rename = "type")]
    pub kind: String,
}

/// The `eventType` of a TransactionEvent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TxEventType {
    /// The first event of a transaction.
    Started,
    /// Any event between.
    Updated,
    /// The last event: the transaction is over.
    Ended,
}

impl TxEventType {
    /// As on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TxEventType::Started => "Started",
            TxEventType::Updated => "Updated",
            TxEventType::Ended => "Ended",
        }
    }
}

/// One TransactionEvent, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct TxEvent {
    /// `eventType`.
    pub event_type: TxEventType,
    /// `timestamp`.
    pub timestamp: ChargerTime,
    /// `triggerReason`.
    pub trigger_reason: String,
    /// `seqNo`.
    pub seq_no: i64,
    /// `offline`: the event happened while the charger was offline.
    pub offline: bool,
    /// `transactionInfo.transactionId`.
    pub transaction_id: String,
    /// `transactionInfo.chargingState`.
    pub charging_state: Option<String>,
    /// `transactionInfo.stoppedReason`.
    pub stopped_reason: Option<String>,
    /// `transactionInfo.remoteStartId`.
    pub remote_start_id: Option<i32>,
    /// `evse.id` (only the first event of a transaction must carry it).
    pub evse_id: Option<u32>,
    /// `evse.connectorId`.
    pub connector_id: Option<u32>,
    /// `idToken`.
    pub id_token: Option<IdToken>,
    /// `reservationId`.
    pub reservation_id: Option<i32>,
    /// One sample per `meterValue` element.
    pub samples: Vec<Sample>,
    /// The register of a sampled value with context `Transaction.Begin`, Wh.
    pub begin_wh: Option<i64>,
    /// The register of a sampled value with context `Transaction.End`, Wh.
    pub end_wh: Option<i64>,
}

/// An EVSE connector's availability, from a StatusNotification or a NotifyEvent.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorState {
    /// EVSE.
    pub evse_id: u32,
    /// Connector on the EVSE.
    pub connector_id: u32,
    /// `Available`, `Occupied`, `Reserved`, `Unavailable` or `Faulted`.
    pub status: String,
    /// When it changed, by the charger's clock.
    pub timestamp: ChargerTime,
}

/// A request a 2.0.1 charger may send to its central system, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// The charger (re)started.
    BootNotification {
        /// `chargingStation.vendorName`.
        vendor: String,
        /// `chargingStation.model`.
        model: String,
        /// `chargingStation.serialNumber`.
        serial: Option<String>,
        /// `chargingStation.firmwareVersion`.
        firmware: Option<String>,
        /// `reason`.
        reason: String,
    },
    /// Keep-alive and clock sync.
    Heartbeat,
    /// A connector's status (StatusNotification, or a NotifyEvent's `AvailabilityState`).
    Status(Vec<ConnectorState>),
    /// Readings outside (or beside) a transaction.
    MeterValues {
        /// `evseId` (0: the main meter).
        evse_id: u32,
        /// One sample per `meterValue` element.
        samples: Vec<Sample>,
    },
    /// Is this idToken allowed?
    Authorize {
        /// The token.
        id_token: IdToken,
    },
    /// A transaction's event.
    TransactionEvent(Box<TxEvent>),
    /// The charger asks for a certificate.
    SignCertificate {
        /// The PKCS#10 CSR, PEM.
        csr: String,
        /// `certificateType` (default `ChargingStationCertificate`).
        certificate_type: String,
    },
    /// The charger reports a security event.
    SecurityEvent {
        /// `type`, e.g. `FirmwareUpdated`, `TamperDetectionActivated`.
        kind: String,
        /// `timestamp` as sent.
        timestamp: String,
        /// `techInfo`.
        tech_info: Option<String>,
    },
    /// One part of a device model report.
    NotifyReport {
        /// `requestId`.
        request_id: i64,
        /// `seqNo`.
        seq_no: i64,
        /// `tbc`: more parts follow.
        tbc: bool,
        /// `reportData` as received (compact JSON), absent meaning none.
        report_data: String,
    },
    /// Firmware update progress.
    FirmwareStatusNotification {
        /// `status`.
        status: String,
    },
    /// Log upload progress.
    LogStatusNotification {
        /// `status`.
        status: String,
    },
    /// Vendor-specific data.
    DataTransfer {
        /// `vendorId`.
        vendor_id: String,
        /// `messageId`.
        message_id: Option<String>,
    },
    /// A notification this build records nothing of (smart charging, reservations,
    /// display messages, monitoring, customer information): answered with its minimal
    /// valid response until its feature lands.
    Acknowledge {
        /// Which action.
        action: &'static str,
        /// The response payload.
        answer: Value,
    },
}

/// The contract's `reason` for a transaction's end: its `stoppedReason` (absent means
/// `Local`, as 2.0.1 says), spelled as 1.6 spells the same reason where 1.6 has one
/// (`ImmediateReset` is 1.6's `HardReset`), so the BPP reads one vocabulary. An `Ended`
/// without a reason but with a telling trigger takes the trigger's.
pub fn contract_reason(e: &TxEvent) -> &str {
    match e.stopped_reason.as_deref() {
        Some("ImmediateReset") => "HardReset",
        Some(r) => r,
        None => match e.trigger_reason.as_str() {
            "RemoteStop" => "Remote",
            "EVDeparted" | "EVCommunicationLost" => "EVDisconnected",
            "Deauthorized" => "DeAuthorized",
            "UnlockCommand" => "UnlockCommand",
            "ResetCommand" => "SoftReset",
            "EnergyLimitReached" => "EnergyLimitReached",
            "TimeLimitReached" => "TimeLimitReached",
            _ => "Local",
        },
    }
}

/// Notifications answered with a fixed response until their feature lands.
const ACKNOWLEDGED: &[(&str, &str)] = &[
    ("ClearedChargingLimit", "{}"),
    ("NotifyChargingLimit", "{}"),
    ("NotifyCustomerInformation", "{}"),
    ("NotifyDisplayMessages", "{}"),
    ("NotifyEVChargingNeeds", r#"{"status":"Rejected"}"#),
    ("NotifyEVChargingSchedule", r#"{"status":"Rejected"}"#),
    ("NotifyMonitoringReport", "{}"),
    ("PublishFirmwareStatusNotification", "{}"),
    ("ReportChargingProfiles", "{}"),
    ("ReservationStatusUpdate", "{}"),
];

/// Charger-to-CSMS actions whose feature is not built yet (certificates, ISO 15118).
const NOT_YET: &[&str] = &["Get15118EVCertificate", "GetCertificateStatus"];

/// Actions only a CSMS sends in 2.0.1.
const CSMS_ACTIONS: &[&str] = &[
    "CancelReservation",
    "CertificateSigned",
    "ChangeAvailability",
    "ClearCache",
    "ClearChargingProfile",
    "ClearDisplayMessage",
    "ClearVariableMonitoring",
    "CostUpdated",
    "CustomerInformation",
    "DeleteCertificate",
    "GetBaseReport",
    "GetChargingProfiles",
    "GetCompositeSchedule",
    "GetDisplayMessages",
    "GetInstalledCertificateIds",
    "GetLocalListVersion",
    "GetLog",
    "GetMonitoringReport",
    "GetReport",
    "GetTransactionStatus",
    "GetVariables",
    "InstallCertificate",
    "PublishFirmware",
    "RequestStartTransaction",
    "RequestStopTransaction",
    "ReserveNow",
    "Reset",
    "SendLocalList",
    "SetChargingProfile",
    "SetDisplayMessage",
    "SetMonitoringBase",
    "SetMonitoringLevel",
    "SetNetworkProfile",
    "SetVariableMonitoring",
    "SetVariables",
    "TriggerMessage",
    "UnlockConnector",
    "UnpublishFirmware",
    "UpdateFirmware",
];

/// Decodes and validates the payload of a CALL from a 2.0.1 charger.
///
/// # Errors
/// A [`DecodeError`] with the CALLERROR code OCPP-J 2.0.1 prescribes (spelled by the
/// caller for 2.0.1): `NotImplemented` for an action 2.0.1 does not know, `NotSupported`
/// for one it knows but the agent does not take, and the code of the schema violation.
pub fn decode(action: &str, payload: &Value) -> Result<Request, DecodeError> {
    if let Some((name, answer)) = ACKNOWLEDGED.iter().find(|(a, _)| *a == action) {
        valid(action, payload)?;
        return Ok(Request::Acknowledge {
            action: name,
            answer: serde_json::from_str(answer).unwrap_or_default(),
        });
    }
    match action {
        "BootNotification" => {
            let p: Boot = typed(action, payload)?;
            Ok(Request::BootNotification {
                vendor: p.charging_station.vendor_name,
                model: p.charging_station.model,
                serial: p.charging_station.serial_number,
                firmware: p.charging_station.firmware_version,
                reason: p.reason,
            })
        }
        "Heartbeat" => {
            valid(action, payload)?;
            Ok(Request::Heartbeat)
        }
        "StatusNotification" => {
            let p: Status = typed(action, payload)?;
            Ok(Request::Status(vec![ConnectorState {
                evse_id: p.evse_id,
                connector_id: p.connector_id,
                status: p.connector_status,
                timestamp: charger_time(&p.timestamp)?,
            }]))
        }
        "NotifyEvent" => {
            let p: NotifyEvent = typed(action, payload)?;
            let mut states = Vec::new();
            for e in p.event_data {
                // A connector's (or a one-connector EVSE's) AvailabilityState is its status.
                let Some(evse_id) = e.component.evse.as_ref().and_then(|v| v.id.u32()) else {
                    continue;
                };
                let connector = e.component.evse.and_then(|v| v.connector_id);
                if e.variable.name != "AvailabilityState" {
                    continue;
                }
                let known = [
                    "Available",
                    "Occupied",
                    "Reserved",
                    "Unavailable",
                    "Faulted",
                ];
                if !known.contains(&e.actual_value.as_str()) {
                    continue;
                }
                states.push(ConnectorState {
                    evse_id,
                    connector_id: connector.and_then(Int::u32).unwrap_or(1),
                    status: e.actual_value,
                    timestamp: charger_time(&e.timestamp)?,
                });
            }
            Ok(Request::Status(states))
        }
        "MeterValues" => {
            let p: MeterValues = typed(action, payload)?;
            let raw = payload.get("meterValue").and_then(Value::as_array);
            let (samples, _, _) = samples(&p.meter_value, raw)?;
            Ok(Request::MeterValues {
                evse_id: p.evse_id,
                samples,
            })
        }
        "Authorize" => {
            let p: Authorize = typed(action, payload)?;
            Ok(Request::Authorize {
                id_token: p.id_token,
            })
        }
        "TransactionEvent" => {
            let p: TransactionEvent = typed(action, payload)?;
            let raw = payload.get("meterValue").and_then(Value::as_array);
            let (samples, begin_wh, end_wh) =
                samples(p.meter_value.as_deref().unwrap_or(&[]), raw)?;
            Ok(Request::TransactionEvent(Box::new(TxEvent {
                event_type: p.event_type,
                timestamp: charger_time(&p.timestamp)?,
                trigger_reason: p.trigger_reason,
                seq_no: p.seq_no.0,
                offline: p.offline,
                transaction_id: p.transaction_info.transaction_id,
                charging_state: p.transaction_info.charging_state,
                stopped_reason: p.transaction_info.stopped_reason,
                remote_start_id: p.transaction_info.remote_start_id.and_then(Int::i32),
                evse_id: p.evse.as_ref().and_then(|e| e.id.u32()),
                connector_id: p.evse.and_then(|e| e.connector_id).and_then(Int::u32),
                id_token: p.id_token,
                reservation_id: p.reservation_id.and_then(Int::i32),
                samples,
                begin_wh,
                end_wh,
            })))
        }
        "SignCertificate" => {
            let p: SignCertificate = typed(action, payload)?;
            Ok(Request::SignCertificate {
                csr: p.csr,
                certificate_type: p
                    .certificate_type
                    .unwrap_or_else(|| "ChargingStationCertificate".into()),
            })
        }
        "SecurityEventNotification" => {
            let p: SecurityEvent = typed(action, payload)?;
            Ok(Request::SecurityEvent {
                kind: p.kind,
                timestamp: p.timestamp,
                tech_info: p.tech_info,
            })
        }
        "NotifyReport" => {
            let p: NotifyReport = typed(action, payload)?;
            Ok(Request::NotifyReport {
                request_id: p.request_id,
                seq_no: p.seq_no,
                tbc: p.tbc,
                report_data: payload
                    .get("reportData")
                    .map_or_else(|| "[]".to_string(), Value::to_string),
            })
        }
        "FirmwareStatusNotification" => {
            let p: StatusOnly = typed(action, payload)?;
            Ok(Request::FirmwareStatusNotification { status: p.status })
        }
        "LogStatusNotification" => {
            let p: StatusOnly = typed(action, payload)?;
            Ok(Request::LogStatusNotification { status: p.status })
        }
        "DataTransfer" => {
            let p: DataTransfer = typed(action, payload)?;
            Ok(Request::DataTransfer {
                vendor_id: p.vendor_id,
                message_id: p.message_id,
            })
        }
        other if NOT_YET.contains(&other) => Err(DecodeError::new(
            ErrorCode::NotSupported,
            format!("{other} is not supported by this central system yet"),
        )),
        other if CSMS_ACTIONS.contains(&other) => Err(DecodeError::new(
            ErrorCode::NotSupported,
            format!("{other} is sent by a CSMS, not to it"),
        )),
        other => Err(DecodeError::new(
            ErrorCode::NotImplemented,
            format!("{other} is not an OCPP 2.0.1 action"),
        )),
    }
}

/// Checks `payload` against the action's 2.0.1 request schema.
fn valid(action: &str, payload: &Value) -> Result<(), DecodeError> {
    schema::validate(&format!("{action}Request"), payload)
        .map_err(|v| DecodeError::new(v.code, v.description))
}

/// Validates, then reads the fields the agent uses.
fn typed<'a, T: Deserialize<'a>>(action: &str, payload: &'a Value) -> Result<T, DecodeError> {
    valid(action, payload)?;
    // Valid by the schema, so this fails only where the schema is looser than the type
    // (an integer too large for it): a value the agent cannot take.
    T::deserialize(payload)
        .map_err(|e| DecodeError::new(ErrorCode::PropertyConstraintViolation, e.to_string()))
}

fn charger_time(raw: &str) -> Result<ChargerTime, DecodeError> {
    // The schema checked the format already.
    let at = DateTime::parse_from_rfc3339(raw)
        .map_err(|e| DecodeError::new(ErrorCode::TypeConstraintViolation, e.to_string()))?
        .with_timezone(&Utc);
    Ok(ChargerTime {
        raw: raw.to_string(),
        at,
    })
}

/// Samples, and the `Transaction.Begin` and `Transaction.End` registers, Wh.
type Decoded = (Vec<Sample>, Option<i64>, Option<i64>);

/// Turns `meterValue` elements into samples, and finds the registers marked
/// `Transaction.Begin` and `Transaction.End`.
fn samples(values: &[MeterValue], raw: Option<&Vec<Value>>) -> Result<Decoded, DecodeError> {
    let mut out = Vec::with_capacity(values.len());
    let (mut begin, mut end) = (None, None);
    for (i, mv) in values.iter().enumerate() {
        let mut readings = Readings::default();
        for sv in &mv.sampled_value {
            // An EV-side reading is the car's (its SoC is the one wanted from there).
            if sv.location == Some("EV") && sv.measurand != Some("SoC") {
                continue;
            }
            let unit = sv.unit_of_measure.as_ref();
            let multiplier = unit
                .and_then(|u| u.multiplier)
                .map_or(0, |m| m.0.clamp(-30, 30) as i32);
            let kilo = matches!(
                unit.and_then(|u| u.unit),
                Some("kWh" | "kW" | "kvarh" | "kvar" | "kVA")
            );
            let mut v = sv.value * 10f64.powi(multiplier);
            if kilo {
                v *= 1000.0;
            }
            let measurand = sv.measurand;
            readings.add(measurand, sv.phase, v);
            let is_register = matches!(measurand, None | Some("Energy.Active.Import.Register"))
                && sv.phase.is_none();
            if is_register && v.is_finite() {
                match sv.context {
                    Some("Transaction.Begin") => begin = Some(v.round() as i64),
                    Some("Transaction.End") => end = Some(v.round() as i64),
                    _ => {}
                }
            }
        }
        let context = mv
            .sampled_value
            .first()
            .and_then(|s| s.context)
            .map(String::from);
        let raw = raw
            .and_then(|a| a.get(i))
            .map_or_else(String::new, Value::to_string);
        out.push(readings.sample(charger_time(mv.timestamp)?, context, raw));
    }
    Ok((out, begin, end))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Boot {
    reason: String,
    charging_station: Station,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Station {
    model: String,
    vendor_name: String,
    serial_number: Option<String>,
    firmware_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    timestamp: String,
    connector_status: String,
    evse_id: u32,
    connector_id: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NotifyEvent {
    event_data: Vec<EventData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventData {
    timestamp: String,
    actual_value: String,
    component: Component,
    variable: Variable,
}

#[derive(Deserialize)]
struct Component {
    evse: Option<Evse>,
}

#[derive(Deserialize)]
struct Variable {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Evse {
    id: Int,
    connector_id: Option<Int>,
}

/// A JSON Schema `integer`: any number with no fraction (`3.0` is one), read saturating to
/// i64. The schema already decided it is valid, so reading it never fails: a valid
/// TransactionEvent is never answered with a CALLERROR because a type is narrower than the
/// schema. Out-of-range values are dealt with where they are used.
#[derive(Debug, Clone, Copy)]
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        Ok(Int(match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i,
            (None, Some(_), _) => i64::MAX,
            // `as` saturates (and maps NaN to 0)
            (None, None, Some(f)) => f as i64,
            (None, None, None) => 0,
        }))
    }
}

impl Int {
    fn u32(self) -> Option<u32> {
        u32::try_from(self.0).ok()
    }
    fn i32(self) -> Option<i32> {
        i32::try_from(self.0).ok()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeterValues<'a> {
    evse_id: u32,
    #[serde(borrow)]
    meter_value: Vec<MeterValue<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeterValue<'a> {
    #[serde(borrow)]
    timestamp: &'a str,
    #[serde(borrow)]
    sampled_value: Vec<SampledValue<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SampledValue<'a> {
    value: f64,
    #[serde(borrow)]
    context: Option<&'a str>,
    #[serde(borrow)]
    measurand: Option<&'a str>,
    #[serde(borrow)]
    phase: Option<&'a str>,
    #[serde(borrow)]
    location: Option<&'a str>,
    #[serde(borrow)]
    unit_of_measure: Option<Unit<'a>>,
}

#[derive(Deserialize)]
struct Unit<'a> {
    #[serde(borrow)]
    unit: Option<&'a str>,
    multiplier: Option<Int>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Authorize {
    id_token: IdToken,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TransactionEvent<'a> {
    event_type: TxEventType,
    timestamp: String,
    trigger_reason: String,
    seq_no: Int,
    #[serde(default)]
    offline: bool,
    transaction_info: TransactionInfo,
    evse: Option<Evse>,
    id_token: Option<IdToken>,
    reservation_id: Option<Int>,
    #[serde(borrow)]
    meter_value: Option<Vec<MeterValue<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TransactionInfo {
    transaction_id: String,
    charging_state: Option<String>,
    stopped_reason: Option<String>,
    remote_start_id: Option<Int>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignCertificate {
    csr: String,
    certificate_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecurityEvent {
    #[serde(rename = "type")]
    kind: String,
    timestamp: String,
    tech_info: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NotifyReport {
    request_id: i64,
    seq_no: i64,
    #[serde(default)]
    tbc: bool,
}

#[derive(Deserialize)]
struct StatusOnly {
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataTransfer {
    vendor_id: String,
    message_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(action: &str, payload: Value) -> ErrorCode {
        decode(action, &payload).unwrap_err().code
    }

    fn three_phase(ts: &str, context: &str, wh: f64) -> Value {
        json!({"timestamp": ts, "sampledValue": [
            {"value": wh, "context": context, "measurand": "Energy.Active.Import.Register",
             "unitOfMeasure": {"unit": "Wh"}},
            {"value": 3680.0, "context": context, "measurand": "Power.Active.Import", "phase": "L1"},
            {"value": 3680.0, "context": context, "measurand": "Power.Active.Import", "phase": "L2"},
            {"value": 3680.0, "context": context, "measurand": "Power.Active.Import", "phase": "L3"},
            {"value": 16.0, "context": context, "measurand": "Current.Import", "phase": "L1"},
            {"value": 16.0, "context": context, "measurand": "Current.Import", "phase": "L2"},
            {"value": 15.0, "context": context, "measurand": "Current.Import", "phase": "L3"},
            {"value": 230.0, "context": context, "measurand": "Voltage", "phase": "L1-N"},
            {"value": 231.0, "context": context, "measurand": "Voltage", "phase": "L2-N"},
            {"value": 229.0, "context": context, "measurand": "Voltage", "phase": "L3-N"},
            {"value": 57.0, "context": context, "measurand": "SoC", "location": "EV"}
        ]})
    }

    fn started() -> Value {
        json!({"eventType": "Started", "timestamp": "2026-12-01T10:00:00Z",
               "triggerReason": "Authorized", "seqNo": 0,
               "transactionInfo": {"transactionId": "tx-1", "chargingState": "Charging"},
               "evse": {"id": 1, "connectorId": 1},
               "idToken": {"idToken": "123456", "type": "KeyCode"},
               "meterValue": [three_phase("2026-12-01T10:00:00Z", "Transaction.Begin", 1000.0)]})
    }

    #[test]
    fn a_started_event_carries_its_transaction_evse_token_and_begin_register() {
        let Request::TransactionEvent(e) = decode("TransactionEvent", &started()).unwrap() else {
            panic!("not a TransactionEvent");
        };
        assert_eq!(e.event_type, TxEventType::Started);
        assert_eq!(e.transaction_id, "tx-1");
        assert_eq!((e.evse_id, e.connector_id), (Some(1), Some(1)));
        assert_eq!(e.id_token.as_ref().unwrap().kind, "KeyCode");
        assert_eq!(e.begin_wh, Some(1000));
        assert_eq!(e.seq_no, 0);
        assert!(!e.offline);
    }

    #[test]
    fn a_three_phase_reading_sums_power_and_averages_current_and_voltage() {
        let Request::TransactionEvent(e) = decode("TransactionEvent", &started()).unwrap() else {
            panic!("not a TransactionEvent");
        };
        let s = &e.samples[0];
        assert_eq!(s.energy_wh, Some(1000));
        assert_eq!(s.power_w, Some(11_040));
        assert!((s.current_a.unwrap() - 15.666).abs() < 0.01);
        assert!((s.voltage_v.unwrap() - 230.0).abs() < 0.01);
        assert_eq!(s.soc_pct, Some(57.0));
    }

    #[test]
    fn a_unit_multiplier_and_kwh_scale_the_register_to_wh() {
        let p = json!({"evseId": 1, "meterValue": [{"timestamp": "2026-12-01T10:00:00Z",
            "sampledValue": [{"value": 12.5, "unitOfMeasure": {"unit": "kWh"}},
                             {"value": 7.4, "measurand": "Power.Active.Import",
                              "unitOfMeasure": {"unit": "W", "multiplier": 3}}]}]});
        let Request::MeterValues { evse_id, samples } = decode("MeterValues", &p).unwrap() else {
            panic!("not MeterValues");
        };
        assert_eq!(evse_id, 1);
        assert_eq!(samples[0].energy_wh, Some(12_500));
        assert_eq!(samples[0].power_w, Some(7_400));
    }

    #[test]
    fn a_schema_valid_event_with_odd_integers_is_still_taken_never_refused() {
        let mut p = started();
        p["seqNo"] = json!(3.0);
        p["evse"] = json!({"id": -1});
        p["transactionInfo"]["remoteStartId"] = json!(1e12);
        p["meterValue"][0]["sampledValue"][0]["unitOfMeasure"] =
            json!({"multiplier": 9_999_999_999i64});
        let Request::TransactionEvent(e) = decode("TransactionEvent", &p).unwrap() else {
            panic!("not a TransactionEvent");
        };
        assert_eq!(e.seq_no, 3);
        assert_eq!(e.evse_id, None);
        assert_eq!(e.remote_start_id, None);
    }

    #[test]
    fn a_transaction_event_missing_its_seq_no_is_an_occurrence_violation() {
        let mut p = started();
        p.as_object_mut().unwrap().remove("seqNo");
        assert_eq!(
            code("TransactionEvent", p),
            ErrorCode::OccurenceConstraintViolation
        );
    }

    #[test]
    fn a_transaction_id_longer_than_36_is_refused_as_2_0_1_demands() {
        let mut p = started();
        p["transactionInfo"]["transactionId"] = json!("t".repeat(37));
        assert_eq!(
            code("TransactionEvent", p),
            ErrorCode::TypeConstraintViolation
        );
    }

    #[test]
    fn a_stopped_reason_2_1_added_is_not_a_2_0_1_value() {
        let mut p = started();
        p["transactionInfo"]["stoppedReason"] = json!("ReqEnergyTransferRejected");
        assert_eq!(
            code("TransactionEvent", p),
            ErrorCode::PropertyConstraintViolation
        );
    }

    #[test]
    fn actions_are_answered_by_who_sends_them_and_which_version_knows_them() {
        assert_eq!(
            code("RequestStartTransaction", json!({})),
            ErrorCode::NotSupported
        );
        assert_eq!(
            code(
                "Get15118EVCertificate",
                json!({"iso15118SchemaVersion": "x", "action": "Install", "exiRequest": "x"})
            ),
            ErrorCode::NotSupported
        );
        assert_eq!(
            code("GetCertificateChainStatus", json!({})),
            ErrorCode::NotImplemented
        );
        assert_eq!(code("NotifyDERAlarm", json!({})), ErrorCode::NotImplemented);
        assert_eq!(
            code("StartTransaction", json!({})),
            ErrorCode::NotImplemented
        );
    }

    #[test]
    fn a_status_notification_names_evse_and_connector() {
        let p = json!({"timestamp": "2026-12-01T10:00:00Z", "connectorStatus": "Occupied",
                       "evseId": 2, "connectorId": 1});
        let Request::Status(s) = decode("StatusNotification", &p).unwrap() else {
            panic!("not a status");
        };
        assert_eq!(
            (s[0].evse_id, s[0].connector_id, s[0].status.as_str()),
            (2, 1, "Occupied")
        );
    }

    #[test]
    fn a_notify_event_availability_state_is_a_connector_status() {
        let p = json!({"generatedAt": "2026-12-01T10:00:00Z", "seqNo": 0, "eventData": [
            {"eventId": 1, "timestamp": "2026-12-01T10:00:00Z", "trigger": "Delta",
             "actualValue": "Faulted", "eventNotificationType": "HardWiredNotification",
             "component": {"name": "Connector", "evse": {"id": 1, "connectorId": 2}},
             "variable": {"name": "AvailabilityState"}},
            {"eventId": 2, "timestamp": "2026-12-01T10:00:00Z", "trigger": "Delta",
             "actualValue": "42", "eventNotificationType": "HardWiredNotification",
             "component": {"name": "EVSE", "evse": {"id": 1}}, "variable": {"name": "Power"}}]});
        let Request::Status(s) = decode("NotifyEvent", &p).unwrap() else {
            panic!("not a status");
        };
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].evse_id, s[0].connector_id, s[0].status.as_str()),
            (1, 2, "Faulted")
        );
    }

    #[test]
    fn smart_charging_notifications_get_their_minimal_valid_answer() {
        let p =
            json!({"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "AC_three_phase"}});
        let Request::Acknowledge { answer, .. } = decode("NotifyEVChargingNeeds", &p).unwrap()
        else {
            panic!("not acknowledged");
        };
        assert_eq!(
            schema::validate("NotifyEVChargingNeedsResponse", &answer),
            Ok(())
        );
        for (action, answer) in ACKNOWLEDGED {
            let answer: Value = serde_json::from_str(answer).unwrap();
            assert_eq!(
                schema::validate(&format!("{action}Response"), &answer),
                Ok(()),
                "{action}"
            );
            assert!(schema::known(&format!("{action}Request")), "{action}");
        }
        for action in CSMS_ACTIONS.iter().chain(NOT_YET) {
            assert!(schema::known(&format!("{action}Request")), "{action}");
        }
    }
}
