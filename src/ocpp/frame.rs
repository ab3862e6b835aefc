//! OCPP-J RPC framing, pure: text in, a typed [`Frame`] or a [`FrameError`] out.
//!
//! The framing rules follow the OCPP-J 1.6 specification (section 4): a frame is a JSON
//! array `[2, id, action, payload]` (CALL), `[3, id, payload]` (CALLRESULT) or
//! `[4, id, code, description, details]` (CALLERROR); message ids are strings of at most
//! 36 characters. Every frame whose id can be read gets an answer, so the error type keeps
//! the id whenever it could be recovered, even from text that is not valid JSON.

use serde_json::{Map, Value};

/// The OCPP version spoken on a connection, fixed by the WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// OCPP 1.6J (`ocpp1.6`).
    V16,
    /// OCPP 2.0.1 (`ocpp2.0.1`).
    V201,
}

impl Version {
    /// The WebSocket subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Version::V16 => "ocpp1.6",
            Version::V201 => "ocpp2.0.1",
        }
    }

    /// The version as the contract writes it (`charger.connected.ocpp_version`).
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V16 => "1.6",
            Version::V201 => "2.0.1",
        }
    }

    /// The version of a subprotocol name (lowercase, as negotiated).
    pub fn from_subprotocol(p: &str) -> Option<Self> {
        match p {
            "ocpp1.6" => Some(Version::V16),
            "ocpp2.0.1" => Some(Version::V201),
            _ => None,
        }
    }
}

/// Longest message id OCPP-J allows.
pub const MAX_MESSAGE_ID_LEN: usize = 36;

/// CALLERROR codes. [`ErrorCode::as_str`] spells them as OCPP-J 1.6 does (including its
/// own `FormationViolation` and `OccurenceConstraintViolation`); [`ErrorCode::spelled`]
/// as the connection's version does (2.0.1: `FormatViolation`,
/// `OccurrenceConstraintViolation`, and two codes 1.6 lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The requested action is not known by the receiver.
    NotImplemented,
    /// The requested action is recognized but not supported by the receiver.
    NotSupported,
    /// An internal error occurred and the receiver could not process the action.
    InternalError,
    /// The payload for the action is incomplete.
    ProtocolError,
    /// A security issue occurred during processing.
    SecurityError,
    /// The payload is syntactically incorrect or does not conform to the PDU structure.
    FormationViolation,
    /// A field contains an invalid value.
    PropertyConstraintViolation,
    /// A field violates occurrence constraints (missing required field, array bounds).
    OccurenceConstraintViolation,
    /// A field violates data type constraints (`"somestring": 12`, too long a string).
    TypeConstraintViolation,
    /// Any other error.
    GenericError,
    /// 2.0.1: a message type number the receiver does not know (1.6 says
    /// `FormationViolation`).
    MessageTypeNotSupported,
    /// 2.0.1: the frame is not a valid OCPP-J RPC frame at all (1.6 says
    /// `FormationViolation`).
    RpcFrameworkError,
}

impl ErrorCode {
    /// The wire spelling of this code in OCPP-J 1.6.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotImplemented => "NotImplemented",
            Self::NotSupported => "NotSupported",
            Self::InternalError => "InternalError",
            Self::ProtocolError => "ProtocolError",
            Self::SecurityError => "SecurityError",
            Self::FormationViolation => "FormationViolation",
            Self::PropertyConstraintViolation => "PropertyConstraintViolation",
            Self::OccurenceConstraintViolation => "OccurenceConstraintViolation",
            Self::TypeConstraintViolation => "TypeConstraintViolation",
            Self::GenericError => "GenericError",
            Self::MessageTypeNotSupported | Self::RpcFrameworkError => "FormationViolation",
        }
    }

    /// The wire spelling of this code in `version`'s OCPP-J specification.
    pub fn spelled(self, version: Version) -> &'static str {
        match (version, self) {
            (Version::V16, c) => c.as_str(),
            (Version::V201, Self::FormationViolation) => "FormatViolation",
            (Version::V201, Self::OccurenceConstraintViolation) => "OccurrenceConstraintViolation",
            (Version::V201, Self::MessageTypeNotSupported) => "MessageTypeNotSupported",
            (Version::V201, Self::RpcFrameworkError) => "RpcFrameworkError",
            (Version::V201, c) => c.as_str(),
        }
    }
}

/// One parsed OCPP-J frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A request.
    Call {
        /// The message id, echoed in the answer.
        id: String,
        /// The action name, e.g. `BootNotification`.
        action: String,
        /// The payload object, not yet validated against the action's schema.
        payload: Value,
    },
    /// A successful answer to one of our CALLs.
    CallResult {
        /// The id of the CALL it answers.
        id: String,
        /// The payload object.
        payload: Value,
    },
    /// An error answer to one of our CALLs.
    CallError {
        /// The id of the CALL it answers.
        id: String,
        /// The error code as the peer spelled it.
        code: String,
        /// Free text.
        description: String,
    },
}

/// A frame that could not be accepted, with what is needed to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// The message id, when it could be read; `None` means the frame cannot be answered.
    pub id: Option<String>,
    /// True when the frame was (or looked like) a CALL: only CALLs are answered with a
    /// CALLERROR; a broken CALLRESULT/CALLERROR fails our pending CALL instead.
    pub was_call: bool,
    /// The code to answer with.
    pub code: ErrorCode,
    /// What was wrong, for the CALLERROR description and the log.
    pub description: String,
}

impl FrameError {
    fn new(id: Option<String>, was_call: bool, code: ErrorCode, description: &str) -> Self {
        Self {
            id,
            was_call,
            code,
            description: description.to_string(),
        }
    }
}

/// Parses one text frame.
///
/// # Errors
/// A [`FrameError`] carrying the CALLERROR code to answer with and, when it could be read,
/// the message id.
pub fn parse(text: &str) -> Result<Frame, FrameError> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            let (id, was_call) = salvage_id(text);
            return Err(FrameError::new(
                id,
                was_call,
                ErrorCode::RpcFrameworkError,
                "frame is not valid JSON",
            ));
        }
    };
    let Value::Array(items) = value else {
        return Err(FrameError::new(
            None,
            false,
            ErrorCode::RpcFrameworkError,
            "frame is not a JSON array",
        ));
    };
    let id = match items.get(1) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let type_id = items.first().and_then(Value::as_u64);
    let was_call = type_id == Some(2) || type_id.is_none();
    let Some(id) = id else {
        return Err(FrameError::new(
            None,
            was_call,
            ErrorCode::RpcFrameworkError,
            "message id missing or not a string",
        ));
    };
    if id.is_empty() || id.chars().count() > MAX_MESSAGE_ID_LEN {
        return Err(FrameError::new(
            Some(id),
            was_call,
            ErrorCode::RpcFrameworkError,
            "message id must be 1 to 36 characters",
        ));
    }
    match type_id {
        Some(2) => parse_call(id, items),
        Some(3) => parse_call_result(id, items),
        Some(4) => parse_call_error(id, items),
        _ => Err(FrameError::new(
            Some(id),
            true,
            ErrorCode::MessageTypeNotSupported,
            "message type id must be 2 (CALL), 3 (CALLRESULT) or 4 (CALLERROR)",
        )),
    }
}

fn parse_call(id: String, items: Vec<Value>) -> Result<Frame, FrameError> {
    if items.len() != 4 {
        return Err(FrameError::new(
            Some(id),
            true,
            ErrorCode::RpcFrameworkError,
            "a CALL has exactly 4 elements",
        ));
    }
    let mut it = items.into_iter().skip(2);
    let action = match it.next() {
        Some(Value::String(a)) if !a.is_empty() => a,
        _ => {
            return Err(FrameError::new(
                Some(id),
                true,
                ErrorCode::RpcFrameworkError,
                "action must be a non-empty string",
            ))
        }
    };
    let payload = it.next().unwrap_or(Value::Null);
    if !payload.is_object() {
        return Err(FrameError::new(
            Some(id),
            true,
            ErrorCode::FormationViolation,
            "payload must be a JSON object",
        ));
    }
    Ok(Frame::Call {
        id,
        action,
        payload,
    })
}

fn parse_call_result(id: String, items: Vec<Value>) -> Result<Frame, FrameError> {
    if items.len() != 3 || !items[2].is_object() {
        return Err(FrameError::new(
            Some(id),
            false,
            ErrorCode::FormationViolation,
            "a CALLRESULT is [3, id, {payload}]",
        ));
    }
    let payload = items.into_iter().nth(2).unwrap_or(Value::Null);
    Ok(Frame::CallResult { id, payload })
}

fn parse_call_error(id: String, items: Vec<Value>) -> Result<Frame, FrameError> {
    match items.as_slice() {
        [_, _, Value::String(code), Value::String(description), Value::Object(_)] => {
            Ok(Frame::CallError {
                code: code.clone(),
                description: description.clone(),
                id,
            })
        }
        _ => Err(FrameError::new(
            Some(id),
            false,
            ErrorCode::FormationViolation,
            "a CALLERROR is [4, id, code, description, {details}]",
        )),
    }
}

/// Recovers the message id from text that is not valid JSON (a truncated or garbled
/// frame), so that it can still be answered: `[<digit>, "<id>"` at the start.
fn salvage_id(text: &str) -> (Option<String>, bool) {
    let rest = text.trim_start();
    let Some(rest) = rest.strip_prefix('[') else {
        return (None, false);
    };
    let rest = rest.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let was_call = digits == "2";
    let rest = rest[digits.len()..].trim_start();
    let Some(rest) = rest.strip_prefix(',') else {
        return (None, was_call);
    };
    let Some(rest) = rest.trim_start().strip_prefix('"') else {
        return (None, was_call);
    };
    let Some(end) = rest.find('"') else {
        return (None, was_call);
    };
    let id = &rest[..end];
    if id.is_empty() || id.contains('\\') || id.chars().count() > MAX_MESSAGE_ID_LEN {
        return (None, was_call);
    }
    (Some(id.to_string()), was_call)
}

/// Serializes a CALL.
pub fn call(id: &str, action: &str, payload: &Value) -> String {
    Value::Array(vec![
        Value::from(2),
        Value::from(id),
        Value::from(action),
        payload.clone(),
    ])
    .to_string()
}

/// Serializes a CALLRESULT.
pub fn call_result(id: &str, payload: Value) -> String {
    Value::Array(vec![Value::from(3), Value::from(id), payload]).to_string()
}

/// Serializes a CALLERROR.
pub fn call_error(id: &str, code: ErrorCode, description: &str) -> String {
    call_error_in(Version::V16, id, code, description)
}

/// A CALLERROR frame with the code spelled as `version` spells it.
pub fn call_error_in(version: Version, id: &str, code: ErrorCode, description: &str) -> String {
    // OCPP-J: the description is free text of at most 255 characters.
    let description: String = description.chars().take(255).collect();
    Value::Array(vec![
        Value::from(4),
        Value::from(id),
        Value::from(code.spelled(version)),
        Value::from(description),
        Value::Object(Map::new()),
    ])
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_parses_into_id_action_and_payload() {
        let f = parse(r#"[2,"42","Heartbeat",{}]"#).unwrap();
        assert_eq!(
            f,
            Frame::Call {
                id: "42".into(),
                action: "Heartbeat".into(),
                payload: serde_json::json!({})
            }
        );
    }

    #[test]
    fn a_truncated_call_is_still_answered_by_its_id() {
        let e = parse(r#"[2, "abc", "Heartbeat", {"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("abc"));
        assert!(e.was_call);
        assert_eq!(e.code.spelled(Version::V16), "FormationViolation");
        assert_eq!(e.code.spelled(Version::V201), "RpcFrameworkError");
    }

    #[test]
    fn a_call_with_a_non_object_payload_is_a_formation_violation() {
        let e = parse(r#"[2,"1","Heartbeat",[]]"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::FormationViolation);
        assert_eq!(e.id.as_deref(), Some("1"));
    }

    #[test]
    fn a_call_with_extra_elements_is_a_formation_violation() {
        let e = parse(r#"[2,"1","Heartbeat",{},{}]"#).unwrap_err();
        assert_eq!(e.code.as_str(), "FormationViolation");
        assert_eq!(e.code.spelled(Version::V201), "RpcFrameworkError");
    }

    #[test]
    fn an_unknown_message_type_with_a_readable_id_is_answered() {
        let e = parse(r#"[7,"9",{}]"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("9"));
        assert!(e.was_call);
        assert_eq!(e.code.spelled(Version::V16), "FormationViolation");
        assert_eq!(e.code.spelled(Version::V201), "MessageTypeNotSupported");
    }

    #[test]
    fn an_id_longer_than_36_characters_is_refused() {
        let id = "x".repeat(37);
        let e = parse(&format!(r#"[2,"{id}","Heartbeat",{{}}]"#)).unwrap_err();
        assert_eq!(e.code.as_str(), "FormationViolation");
        assert_eq!(e.id, Some(id));
    }

    #[test]
    fn a_frame_without_a_string_id_cannot_be_answered() {
        assert_eq!(parse(r#"[2,5,"Heartbeat",{}]"#).unwrap_err().id, None);
        assert_eq!(parse(r#"{"a":1}"#).unwrap_err().id, None);
        assert_eq!(parse("garbage").unwrap_err().id, None);
    }

    #[test]
    fn results_and_errors_parse() {
        assert!(matches!(
            parse(r#"[3,"1",{"status":"Accepted"}]"#),
            Ok(Frame::CallResult { .. })
        ));
        assert!(matches!(
            parse(r#"[4,"1","NotSupported","no",{}]"#),
            Ok(Frame::CallError { .. })
        ));
        let e = parse(r#"[4,"1","NotSupported"]"#).unwrap_err();
        assert!(!e.was_call);
    }

    #[test]
    fn callerror_spells_codes_as_ocpp_j_1_6_does() {
        let s = call_error("7", ErrorCode::OccurenceConstraintViolation, "missing");
        assert_eq!(s, r#"[4,"7","OccurenceConstraintViolation","missing",{}]"#);
        assert_eq!(ErrorCode::FormationViolation.as_str(), "FormationViolation");
    }

    #[test]
    fn callerror_spells_codes_as_ocpp_j_2_0_1_does() {
        let s = call_error_in(
            Version::V201,
            "7",
            ErrorCode::OccurenceConstraintViolation,
            "missing",
        );
        assert_eq!(s, r#"[4,"7","OccurrenceConstraintViolation","missing",{}]"#);
        assert_eq!(
            ErrorCode::FormationViolation.spelled(Version::V201),
            "FormatViolation"
        );
        assert_eq!(
            ErrorCode::NotSupported.spelled(Version::V201),
            "NotSupported"
        );
    }
}
