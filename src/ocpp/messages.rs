//! OCPP 1.6 requests from a charger, decoded and validated; pure.
//!
//! Payload shapes and schema bounds come from `ocpp_rs` (its 1.6 types and its generated
//! `validate_gen` bounds). Two things are fixed around it here, because a central system
//! must be stricter than a charger library:
//! - its enums are lenient (an unknown `status` decodes as `Unknown(..)`): the official
//!   schemas enumerate every value, so an unknown one is a `PropertyConstraintViolation`;
//! - its errors are serde messages: they are mapped to the OCPP-J 1.6 CALLERROR codes.
//!
//! - the 1.6 schemas omit `minItems` where the specification's cardinality is `1..*`
//!   (`meterValue`, `sampledValue`): an empty one is an `OccurenceConstraintViolation`.
//!
//! Charger timestamps are kept both raw (as the charger sent them) and parsed.

use chrono::{DateTime, Utc};
use ocpp_rs::v16::{call, data_types, enums, validate_gen};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::frame::ErrorCode;
use super::meter;
use crate::reading::Sample;
use crate::time::ChargerTime;

/// A request a charger may send to its central system, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// The charger (re)started.
    BootNotification {
        /// `chargePointVendor`.
        vendor: String,
        /// `chargePointModel`.
        model: String,
        /// `chargePointSerialNumber`, else `chargeBoxSerialNumber`.
        serial: Option<String>,
        /// `firmwareVersion`.
        firmware: Option<String>,
    },
    /// Keep-alive and clock sync.
    Heartbeat,
    /// A connector (0 = the whole charger) changed status.
    StatusNotification {
        /// Connector number.
        connector_id: u32,
        /// `status` as spelled on the wire.
        status: String,
        /// `errorCode` as spelled on the wire.
        error_code: String,
        /// When the status changed, by the charger's clock.
        timestamp: Option<ChargerTime>,
        /// `info` and `vendorErrorCode`, for the log.
        info: Option<String>,
    },
    /// Is this id tag allowed?
    Authorize {
        /// The presented id tag.
        id_tag: String,
    },
    /// A transaction started.
    StartTransaction {
        /// Connector number.
        connector_id: u32,
        /// The presented id tag.
        id_tag: String,
        /// The energy register at start, Wh.
        meter_start_wh: i64,
        /// When it started, by the charger's clock.
        timestamp: ChargerTime,
        /// `reservationId`, if any.
        reservation_id: Option<i32>,
    },
    /// A transaction stopped.
    StopTransaction {
        /// The id the agent issued at start.
        transaction_id: i32,
        /// The energy register at stop, Wh.
        meter_stop_wh: i64,
        /// When it stopped, by the charger's clock.
        timestamp: ChargerTime,
        /// `reason` as spelled on the wire (absent means `Local`).
        reason: Option<String>,
        /// The id tag that stopped it, if any.
        id_tag: Option<String>,
        /// `transactionData`: readings the charger kept for this transaction.
        transaction_data: Vec<Sample>,
    },
    /// Periodic or clock-aligned readings.
    MeterValues {
        /// Connector number.
        connector_id: u32,
        /// The transaction they belong to, if the charger said.
        transaction_id: Option<i32>,
        /// One sample per `meterValue` element.
        samples: Vec<Sample>,
    },
    /// Vendor-specific data.
    DataTransfer {
        /// `vendorId`.
        vendor_id: String,
        /// `messageId`.
        message_id: Option<String>,
    },
    /// Firmware update progress.
    FirmwareStatusNotification {
        /// `status` as on the wire.
        status: String,
    },
    /// Diagnostics upload progress.
    DiagnosticsStatusNotification {
        /// `status` as on the wire.
        status: String,
    },
    /// The charger asks for a certificate (security whitepaper extension).
    SignCertificate {
        /// The PKCS#10 CSR, PEM.
        csr: String,
    },
    /// Security-extension notifications a central system just acknowledges.
    Acknowledge {
        /// Which action it was.
        action: &'static str,
    },
}

/// Why a CALL payload was not accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// The CALLERROR code.
    pub code: ErrorCode,
    /// What was wrong.
    pub description: String,
}

impl DecodeError {
    /// An error with this code and description.
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }
}

/// Actions a central system sends, not receives: a charger sending one is answered
/// `NotSupported` (known, but not supported in this direction).
const CENTRAL_SYSTEM_ACTIONS: &[&str] = &[
    "CancelReservation",
    "ChangeAvailability",
    "ChangeConfiguration",
    "ClearCache",
    "ClearChargingProfile",
    "GetCompositeSchedule",
    "GetConfiguration",
    "GetDiagnostics",
    "GetLocalListVersion",
    "RemoteStartTransaction",
    "RemoteStopTransaction",
    "ReserveNow",
    "Reset",
    "SendLocalList",
    "SetChargingProfile",
    "TriggerMessage",
    "UnlockConnector",
    "UpdateFirmware",
    "CertificateSigned",
    "DeleteCertificate",
    "ExtendedTriggerMessage",
    "GetInstalledCertificateIds",
    "GetLog",
    "InstallCertificate",
    "SignedUpdateFirmware",
];

/// Decodes and validates the payload of a CALL from a charger.
///
/// # Errors
/// A [`DecodeError`] with the CALLERROR code OCPP-J 1.6 prescribes: `NotImplemented` for
/// an unknown action, `NotSupported` for a central-system action, and the constraint
/// violations for a payload that breaks the action's schema.
pub fn decode(action: &str, payload: &Value) -> Result<Request, DecodeError> {
    match action {
        "BootNotification" => {
            let p: call::BootNotification = typed(action, payload)?;
            Ok(Request::BootNotification {
                vendor: p.charge_point_vendor,
                model: p.charge_point_model,
                serial: p.charge_point_serial_number.or(p.charge_box_serial_number),
                firmware: p.firmware_version,
            })
        }
        "Heartbeat" => {
            let _: call::Heartbeat = typed(action, payload)?;
            Ok(Request::Heartbeat)
        }
        "StatusNotification" => {
            let p: call::StatusNotification = typed(action, payload)?;
            strict(&p.status, "status", |s| {
                matches!(s, enums::ChargePointStatus::Unknown(_))
            })?;
            strict(&p.error_code, "errorCode", |e| {
                matches!(e, enums::ChargePointErrorCode::Unknown(_))
            })?;
            Ok(Request::StatusNotification {
                connector_id: p.connector_id,
                status: p.status.as_ref().to_string(),
                error_code: p.error_code.as_ref().to_string(),
                timestamp: p
                    .timestamp
                    .map(|t| charger_time(payload.get("timestamp"), t.inner())),
                info: match (p.info, p.vendor_error_code) {
                    (None, None) => None,
                    (a, b) => Some(format!(
                        "{} {}",
                        a.unwrap_or_default(),
                        b.unwrap_or_default()
                    )),
                },
            })
        }
        "Authorize" => {
            let p: call::Authorize = typed(action, payload)?;
            Ok(Request::Authorize { id_tag: p.id_tag })
        }
        "StartTransaction" => {
            let p: call::StartTransaction = typed(action, payload)?;
            Ok(Request::StartTransaction {
                connector_id: p.connector_id,
                id_tag: p.id_tag,
                meter_start_wh: register(p.meter_start, "meterStart")?,
                timestamp: charger_time(payload.get("timestamp"), p.timestamp.inner()),
                reservation_id: p.reservation_id,
            })
        }
        "StopTransaction" => {
            let p: call::StopTransaction = typed(action, payload)?;
            if let Some(r) = &p.reason {
                strict(r, "reason", |r| matches!(r, enums::Reason::Unknown(_)))?;
            }
            let raw = payload.get("transactionData");
            let transaction_data = samples(
                p.transaction_data.as_deref().unwrap_or(&[]),
                raw,
                "transactionData",
            )?;
            Ok(Request::StopTransaction {
                transaction_id: p.transaction_id,
                meter_stop_wh: register(p.meter_stop, "meterStop")?,
                timestamp: charger_time(payload.get("timestamp"), p.timestamp.inner()),
                reason: p.reason.map(|r| r.as_ref().to_string()),
                id_tag: p.id_tag,
                transaction_data,
            })
        }
        "MeterValues" => {
            let p: call::MeterValues = typed(action, payload)?;
            Ok(Request::MeterValues {
                connector_id: p.connector_id,
                transaction_id: p.transaction_id,
                samples: samples(&p.meter_value, payload.get("meterValue"), "meterValue")?,
            })
        }
        "DataTransfer" => {
            let p: call::DataTransfer = typed(action, payload)?;
            Ok(Request::DataTransfer {
                vendor_id: p.vendor_id,
                message_id: p.message_id,
            })
        }
        "FirmwareStatusNotification" => {
            let p: call::FirmwareStatusNotification = typed(action, payload)?;
            strict(&p.status, "status", |s| {
                matches!(s, enums::FirmwareStatus::Unknown(_))
            })?;
            Ok(Request::FirmwareStatusNotification {
                status: p.status.as_ref().to_string(),
            })
        }
        "DiagnosticsStatusNotification" => {
            let p: call::DiagnosticsStatusNotification = typed(action, payload)?;
            strict(&p.status, "status", |s| {
                matches!(s, enums::DiagnosticsStatus::Unknown(_))
            })?;
            Ok(Request::DiagnosticsStatusNotification {
                status: p.status.as_ref().to_string(),
            })
        }
        "SignCertificate" => {
            let p: call::SignCertificate = typed(action, payload)?;
            Ok(Request::SignCertificate { csr: p.csr })
        }
        "SecurityEventNotification" => {
            let _: call::SecurityEventNotification = typed(action, payload)?;
            Ok(Request::Acknowledge {
                action: "SecurityEventNotification",
            })
        }
        "LogStatusNotification" => {
            let _: call::LogStatusNotification = typed(action, payload)?;
            Ok(Request::Acknowledge {
                action: "LogStatusNotification",
            })
        }
        "SignedFirmwareStatusNotification" => {
            let _: call::SignedFirmwareStatusNotification = typed(action, payload)?;
            Ok(Request::Acknowledge {
                action: "SignedFirmwareStatusNotification",
            })
        }
        other if CENTRAL_SYSTEM_ACTIONS.contains(&other) => Err(DecodeError::new(
            ErrorCode::NotSupported,
            format!("{other} is sent by a central system, not to it"),
        )),
        other => Err(DecodeError::new(
            ErrorCode::NotImplemented,
            format!("unknown action {other}"),
        )),
    }
}

/// Deserializes into an `ocpp_rs` type, then checks the schema's bounds.
fn typed<T: DeserializeOwned>(action: &str, payload: &Value) -> Result<T, DecodeError> {
    // Deserialize from the borrowed tree: no clone of the payload per frame.
    let value = T::deserialize(payload).map_err(|e| classify(&e))?;
    validate_gen::validate_action_payload(action, payload).map_err(|v| {
        use ocpp_rs::validate::ConstraintKind as K;
        let code = match v.kind {
            K::MinItems { .. } | K::MaxItems { .. } => ErrorCode::OccurenceConstraintViolation,
            K::MaxLength { .. } => ErrorCode::TypeConstraintViolation,
            _ => ErrorCode::PropertyConstraintViolation,
        };
        DecodeError::new(code, format!("{}: {:?}", v.path, v.kind))
    })?;
    Ok(value)
}

/// Maps a serde error to the OCPP-J 1.6 code that describes it.
fn classify(e: &serde_json::Error) -> DecodeError {
    let msg = e.to_string();
    let code = if msg.starts_with("missing field") {
        ErrorCode::OccurenceConstraintViolation
    } else if msg.starts_with("unknown field") {
        ErrorCode::FormationViolation
    } else if msg.starts_with("invalid type") {
        ErrorCode::TypeConstraintViolation
    } else if msg.starts_with("unknown variant")
        || msg.starts_with("invalid value")
        || msg.starts_with("invalid length")
    {
        ErrorCode::PropertyConstraintViolation
    } else {
        // Custom messages come from field parsers, e.g. a dateTime that is not RFC 3339.
        ErrorCode::TypeConstraintViolation
    };
    DecodeError::new(code, msg)
}

fn strict<T>(value: &T, field: &str, is_unknown: impl Fn(&T) -> bool) -> Result<(), DecodeError> {
    if is_unknown(value) {
        return Err(DecodeError::new(
            ErrorCode::PropertyConstraintViolation,
            format!("{field}: value is not in the OCPP 1.6 enumeration"),
        ));
    }
    Ok(())
}

fn register(wh: u64, field: &str) -> Result<i64, DecodeError> {
    i64::try_from(wh).map_err(|_| {
        DecodeError::new(
            ErrorCode::PropertyConstraintViolation,
            format!("{field}: out of range"),
        )
    })
}

fn charger_time(raw: Option<&Value>, at: DateTime<Utc>) -> ChargerTime {
    ChargerTime {
        raw: raw.and_then(Value::as_str).unwrap_or_default().to_string(),
        at,
    }
}

/// Turns `meterValue` elements into samples, rejecting enum values outside the schema.
///
/// `field` names the array in errors. For `meterValue` (MeterValues) the specification's
/// cardinality 1..* is enforced; `transactionData` (StopTransaction) is lenient: its schema
/// allows empty `sampledValue` lists, and refusing a StopTransaction would leave a session
/// that never stops, so such elements are skipped.
fn samples(
    values: &[data_types::MeterValue],
    raw: Option<&Value>,
    field: &str,
) -> Result<Vec<Sample>, DecodeError> {
    let strict = field == "meterValue";
    let raw = raw.and_then(Value::as_array);
    if values.is_empty() && strict {
        return Err(DecodeError::new(
            ErrorCode::OccurenceConstraintViolation,
            "meterValue: at least one element is required (cardinality 1..*)",
        ));
    }
    let mut out = Vec::with_capacity(values.len());
    for (i, mv) in values.iter().enumerate() {
        if mv.sampled_value.is_empty() {
            if !strict {
                continue;
            }
            return Err(DecodeError::new(
                ErrorCode::OccurenceConstraintViolation,
                format!("{field}[{i}].sampledValue: at least one element is required"),
            ));
        }
        for sv in &mv.sampled_value {
            let bad = matches!(sv.context, Some(enums::ReadingContext::Unknown(_)))
                || matches!(sv.format, Some(enums::ValueFormat::Unknown(_)))
                || matches!(sv.measurand, Some(enums::Measurand::Unknown(_)))
                || matches!(sv.phase, Some(enums::Phase::Unknown(_)))
                || matches!(sv.location, Some(enums::Location::Unknown(_)))
                || matches!(sv.unit, Some(enums::UnitOfMeasure::Unknown(_)));
            if bad {
                return Err(DecodeError::new(
                    ErrorCode::PropertyConstraintViolation,
                    format!("{field}[{i}].sampledValue: value is not in the OCPP 1.6 enumeration"),
                ));
            }
        }
        let raw_mv = raw.and_then(|a| a.get(i));
        let ts = charger_time(
            raw_mv.and_then(|m| m.get("timestamp")),
            mv.timestamp.inner(),
        );
        out.push(meter::sample_from(
            mv,
            ts,
            // Serialized straight from the borrowed tree: no clone of the element.
            raw_mv.map_or_else(|| "null".to_owned(), Value::to_string),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(action: &str, payload: Value) -> ErrorCode {
        decode(action, &payload).unwrap_err().code
    }

    #[test]
    fn unknown_action_is_not_implemented() {
        assert_eq!(code("FlyToTheMoon", json!({})), ErrorCode::NotImplemented);
    }

    #[test]
    fn central_system_action_from_a_charger_is_not_supported() {
        assert_eq!(
            code("RemoteStartTransaction", json!({"idTag":"x"})),
            ErrorCode::NotSupported
        );
    }

    #[test]
    fn missing_required_field_is_an_occurence_constraint_violation() {
        assert_eq!(
            code("BootNotification", json!({"chargePointVendor":"v"})),
            ErrorCode::OccurenceConstraintViolation
        );
    }

    #[test]
    fn wrong_json_type_is_a_type_constraint_violation() {
        assert_eq!(
            code("Authorize", json!({"idTag": 12})),
            ErrorCode::TypeConstraintViolation
        );
    }

    #[test]
    fn too_long_id_tag_is_a_type_constraint_violation() {
        assert_eq!(
            code("Authorize", json!({"idTag": "x".repeat(21)})),
            ErrorCode::TypeConstraintViolation
        );
    }

    #[test]
    fn unknown_status_value_is_a_property_constraint_violation() {
        assert_eq!(
            code(
                "StatusNotification",
                json!({"connectorId":1,"errorCode":"NoError","status":"Dancing"})
            ),
            ErrorCode::PropertyConstraintViolation
        );
    }

    #[test]
    fn additional_property_is_a_formation_violation() {
        assert_eq!(
            code("Heartbeat", json!({"extra": true})),
            ErrorCode::FormationViolation
        );
    }

    #[test]
    fn a_timestamp_that_is_not_a_date_time_is_a_type_constraint_violation() {
        assert_eq!(
            code(
                "StartTransaction",
                json!({"connectorId":1,"idTag":"t","meterStart":0,"timestamp":"yesterday"})
            ),
            ErrorCode::TypeConstraintViolation
        );
    }

    #[test]
    fn start_transaction_keeps_the_raw_timestamp() {
        let r = decode(
            "StartTransaction",
            &json!({"connectorId":1,"idTag":"t","meterStart":1200,"timestamp":"2026-11-21T10:00:00+05:30"}),
        )
        .unwrap();
        let Request::StartTransaction {
            timestamp,
            meter_start_wh,
            ..
        } = r
        else {
            panic!("wrong variant")
        };
        assert_eq!(timestamp.raw, "2026-11-21T10:00:00+05:30");
        assert_eq!(timestamp.at.to_rfc3339(), "2026-11-21T04:30:00+00:00");
        assert_eq!(meter_start_wh, 1200);
    }

    #[test]
    fn meter_values_decode_into_samples() {
        let r = decode(
            "MeterValues",
            &json!({"connectorId":1,"transactionId":5,"meterValue":[{"timestamp":"2026-11-21T10:00:00Z",
              "sampledValue":[{"value":"1.5","unit":"kWh","measurand":"Energy.Active.Import.Register"},
                              {"value":"7200","measurand":"Power.Active.Import","unit":"W"}]}]}),
        )
        .unwrap();
        let Request::MeterValues { samples, .. } = r else {
            panic!("wrong variant")
        };
        assert_eq!(samples[0].energy_wh, Some(1500));
        assert_eq!(samples[0].power_w, Some(7200));
    }

    #[test]
    fn an_empty_sampled_value_in_transaction_data_is_skipped_not_refused() {
        let r = decode(
            "StopTransaction",
            &json!({"transactionId":2,"meterStop":100,"timestamp":"2026-11-21T23:30:00Z",
                    "transactionData":[{"timestamp":"2026-11-21T23:30:00Z","sampledValue":[]}]}),
        )
        .unwrap();
        let Request::StopTransaction {
            transaction_data, ..
        } = r
        else {
            panic!("wrong variant")
        };
        assert!(transaction_data.is_empty());
        assert_eq!(
            code(
                "MeterValues",
                json!({"connectorId":1,"meterValue":[{"timestamp":"2026-11-21T10:00:00Z","sampledValue":[]}]})
            ),
            ErrorCode::OccurenceConstraintViolation
        );
    }

    #[test]
    fn unknown_measurand_is_a_property_constraint_violation() {
        assert_eq!(
            code(
                "MeterValues",
                json!({"connectorId":1,"meterValue":[{"timestamp":"2026-11-21T10:00:00Z",
                  "sampledValue":[{"value":"1","measurand":"Happiness"}]}]})
            ),
            ErrorCode::PropertyConstraintViolation
        );
    }
}
