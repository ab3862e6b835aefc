//! `ocpp::v201::messages::decode` (the official 2.0.1 schemas, then the typed read),
//! driven two ways by each input, as `ocpp_messages` drives 1.6:
//! - as a frame: parse it, and decode a CALL's payload under its own action and under
//!   every listed action;
//! - with structure: the first byte picks an action, the rest is JSON text for the payload.
//!
//! Beyond "no panic": an `Err` carries one of the CALLERROR codes OCPP-J 2.0.1 defines, as
//! 2.0.1 spells them, and a description; an `Ok` passed the action's official schema, and
//! a TransactionEvent's transaction id is 1 to 36 characters.
#![no_main]

use chargesite::ocpp::frame::{self, Frame, Version};
use chargesite::ocpp::v201::messages::{decode, Request};
use chargesite::ocpp::v201::schema;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ACTIONS: &[&str] = &[
    "BootNotification",
    "Heartbeat",
    "StatusNotification",
    "NotifyEvent",
    "MeterValues",
    "Authorize",
    "TransactionEvent",
    "SecurityEventNotification",
    "NotifyReport",
    "FirmwareStatusNotification",
    "LogStatusNotification",
    "DataTransfer",
    "NotifyEVChargingNeeds",
    "ReservationStatusUpdate",
    "RequestStartTransaction",
    "SignCertificate",
    "GetCertificateChainStatus",
    "StartTransaction",
    "",
];

/// The CALLERROR codes of OCPP-J 2.0.1, with its spellings.
const CODES: &[&str] = &[
    "FormatViolation",
    "GenericError",
    "InternalError",
    "MessageTypeNotSupported",
    "NotImplemented",
    "NotSupported",
    "OccurrenceConstraintViolation",
    "PropertyConstraintViolation",
    "ProtocolError",
    "RpcFrameworkError",
    "SecurityError",
    "TypeConstraintViolation",
];

fn check(action: &str, payload: &Value) {
    match decode(action, payload) {
        Err(e) => {
            let code = e.code.spelled(Version::V201);
            assert!(CODES.contains(&code), "{code}");
            assert_ne!(code, "InternalError", "a missing schema for {action}");
            assert!(!e.description.is_empty());
        }
        Ok(r) => {
            assert_eq!(
                schema::validate(&format!("{action}Request"), payload),
                Ok(()),
                "{action} decoded without passing its schema"
            );
            if let Request::TransactionEvent(e) = r {
                assert!((1..=36).contains(&e.transaction_id.chars().count()));
                assert_eq!(action, "TransactionEvent");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match frame::parse(text) {
            Ok(Frame::Call {
                action, payload, ..
            }) => {
                check(&action, &payload);
                for known in ACTIONS {
                    check(known, &payload);
                }
            }
            Err(e) => assert!(CODES.contains(&e.code.spelled(Version::V201))),
            Ok(_) => {}
        }
    }
    if let Some((&pick, rest)) = data.split_first() {
        if let Ok(payload) = serde_json::from_slice::<Value>(rest) {
            check(ACTIONS[usize::from(pick) % ACTIONS.len()], &payload);
        }
    }
});
