//! `ocpp::messages::decode`, driven two ways by each input:
//! - as a frame: parse it, and decode a CALL's payload under its own action and under
//!   every known action;
//! - with structure: the first byte picks a known action, the rest is JSON text for the
//!   payload (so the decoders see well-formed JSON far more often than via the frame).
//!
//! Beyond "no panic": an `Err` carries one of the CALLERROR codes OCPP-J 1.6 defines, as
//! it spells them, and a description; an `Ok` is the variant of the action decoded, with
//! the registers non-negative and MeterValues' samples non-empty.
#![no_main]

use chargesite::ocpp::frame::{self, Frame};
use chargesite::ocpp::messages::{decode, Request};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// What a charger sends, then what a central system sends (answered NotSupported), then
/// names that are not OCPP 1.6 actions at all.
const ACTIONS: &[&str] = &[
    "BootNotification",
    "Heartbeat",
    "StatusNotification",
    "Authorize",
    "StartTransaction",
    "StopTransaction",
    "MeterValues",
    "DataTransfer",
    "FirmwareStatusNotification",
    "DiagnosticsStatusNotification",
    "SecurityEventNotification",
    "LogStatusNotification",
    "SignedFirmwareStatusNotification",
    "RemoteStartTransaction",
    "Reset",
    "SignCertificate",
    "FlyToTheMoon",
    "",
];

/// The CALLERROR codes of OCPP-J 1.6, with its spellings.
const CODES: &[&str] = &[
    "NotImplemented",
    "NotSupported",
    "InternalError",
    "ProtocolError",
    "SecurityError",
    "FormationViolation",
    "PropertyConstraintViolation",
    "OccurenceConstraintViolation",
    "TypeConstraintViolation",
    "GenericError",
];

fn check(action: &str, payload: &Value) {
    match decode(action, payload) {
        Err(e) => {
            assert!(CODES.contains(&e.code.as_str()), "{:?}", e.code);
            assert!(!e.description.is_empty());
        }
        Ok(r) => {
            let variant = match &r {
                Request::BootNotification { .. } => "BootNotification",
                Request::Heartbeat => "Heartbeat",
                Request::StatusNotification { .. } => "StatusNotification",
                Request::Authorize { .. } => "Authorize",
                Request::StartTransaction { meter_start_wh, .. } => {
                    assert!(*meter_start_wh >= 0);
                    "StartTransaction"
                }
                Request::StopTransaction { meter_stop_wh, .. } => {
                    assert!(*meter_stop_wh >= 0);
                    "StopTransaction"
                }
                Request::MeterValues { samples, .. } => {
                    assert!(!samples.is_empty());
                    "MeterValues"
                }
                Request::DataTransfer { .. } => "DataTransfer",
                Request::FirmwareStatusNotification { .. } => "FirmwareStatusNotification",
                Request::DiagnosticsStatusNotification { .. } => "DiagnosticsStatusNotification",
                Request::SignCertificate { .. } => "SignCertificate",
                Request::Acknowledge { action } => action,
            };
            assert_eq!(variant, action);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(Frame::Call {
            action, payload, ..
        }) = frame::parse(text)
        {
            check(&action, &payload);
            for known in ACTIONS {
                check(known, &payload);
            }
        }
    }
    if let Some((&pick, rest)) = data.split_first() {
        if let Ok(payload) = serde_json::from_slice::<Value>(rest) {
            check(ACTIONS[usize::from(pick) % ACTIONS.len()], &payload);
        }
    }
});
