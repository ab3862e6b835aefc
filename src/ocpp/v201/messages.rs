//! OCPP 2.0.1 requests from a charger, decoded and validated; pure.

use serde_json::Value;

use crate::ocpp::frame::ErrorCode;
use crate::ocpp::messages::DecodeError;

/// A request a 2.0.1 charger may send to its central system, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Keep-alive and clock sync.
    Heartbeat,
}

/// Decodes and validates the payload of a CALL from a 2.0.1 charger.
///
/// # Errors
/// A [`DecodeError`] with the CALLERROR code OCPP-J 2.0.1 prescribes.
pub fn decode(action: &str, _payload: &Value) -> Result<Request, DecodeError> {
    match action {
        "Heartbeat" => Ok(Request::Heartbeat),
        other => Err(DecodeError {
            code: ErrorCode::NotImplemented,
            description: format!("unknown action {other}"),
        }),
    }
}
