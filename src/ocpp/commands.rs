//! Typed outbound commands to a charger (RemoteStart/StopTransaction, Get/Change-
//! Configuration, Reset, TriggerMessage, ChangeAvailability, UnlockConnector).
//!
//! Requests are built from `ocpp_rs`'s 1.6 types, so what goes on the wire matches the
//! schema; the charger's answer is checked against the response type before it is
//! believed. The registry's connection task does the sending, one CALL at a time.

use std::time::Duration;

use ocpp_rs::v16::{call, call_result, enums};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::registry::{CallFailure, Registry};

/// A command for one charger.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// RemoteStartTransaction.
    RemoteStart {
        /// The id tag the charger will present in its StartTransaction.
        id_tag: String,
        /// Connector, if one is chosen.
        connector_id: Option<u32>,
    },
    /// RemoteStopTransaction.
    RemoteStop {
        /// The transaction to stop.
        transaction_id: i32,
    },
    /// GetConfiguration.
    GetConfiguration {
        /// Keys wanted (all when empty).
        keys: Vec<String>,
    },
    /// ChangeConfiguration.
    ChangeConfiguration {
        /// Key.
        key: String,
        /// New value.
        value: String,
    },
    /// Reset.
    Reset {
        /// Hard (power cycle) rather than soft.
        hard: bool,
    },
    /// TriggerMessage.
    TriggerMessage {
        /// The message wanted, e.g. `StatusNotification`.
        message: String,
        /// Connector, if any.
        connector_id: Option<u32>,
    },
    /// ChangeAvailability.
    ChangeAvailability {
        /// Connector (0 = the whole charger).
        connector_id: u32,
        /// Operative (true) or inoperative.
        operative: bool,
    },
    /// UnlockConnector.
    UnlockConnector {
        /// Connector.
        connector_id: u32,
    },
}

/// Why a command did not get a valid answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// The command's arguments do not fit the OCPP schema.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The CALL failed (not connected, timeout, CALLERROR, disconnected, busy).
    #[error(transparent)]
    Call(#[from] CallFailure),
    /// The charger answered something that is not the action's response schema.
    #[error("charger answered a malformed response: {0}")]
    BadResponse(String),
}

impl Command {
    /// The OCPP action name.
    pub fn action(&self) -> &'static str {
        match self {
            Command::RemoteStart { .. } => "RemoteStartTransaction",
            Command::RemoteStop { .. } => "RemoteStopTransaction",
            Command::GetConfiguration { .. } => "GetConfiguration",
            Command::ChangeConfiguration { .. } => "ChangeConfiguration",
            Command::Reset { .. } => "Reset",
            Command::TriggerMessage { .. } => "TriggerMessage",
            Command::ChangeAvailability { .. } => "ChangeAvailability",
            Command::UnlockConnector { .. } => "UnlockConnector",
        }
    }
}

/// Sends `command` to charger `cp_id` and returns its validated answer.
///
/// # Errors
/// [`CommandError`].
pub async fn send(
    registry: &Registry,
    cp_id: &str,
    command: Command,
    timeout: Duration,
) -> Result<Value, CommandError> {
    let action = command.action();
    match command {
        Command::RemoteStart {
            id_tag,
            connector_id,
        } => {
            let req = call::RemoteStartTransaction {
                id_tag,
                connector_id,
                charging_profile: None,
            };
            exchange::<_, call_result::RemoteStartTransaction>(
                registry, cp_id, action, &req, timeout,
            )
            .await
        }
        Command::RemoteStop { transaction_id } => {
            let req = call::RemoteStopTransaction { transaction_id };
            exchange::<_, call_result::RemoteStopTransaction>(
                registry, cp_id, action, &req, timeout,
            )
            .await
        }
        Command::GetConfiguration { keys } => {
            let req = call::GetConfiguration {
                key: (!keys.is_empty()).then_some(keys),
            };
            exchange::<_, call_result::GetConfiguration>(registry, cp_id, action, &req, timeout)
                .await
        }
        Command::ChangeConfiguration { key, value } => {
            let req = call::ChangeConfiguration { key, value };
            exchange::<_, call_result::ChangeConfiguration>(registry, cp_id, action, &req, timeout)
                .await
        }
        Command::Reset { hard } => {
            let req = call::Reset {
                reset_type: if hard {
                    enums::ResetType::Hard
                } else {
                    enums::ResetType::Soft
                },
            };
            exchange::<_, call_result::Reset>(registry, cp_id, action, &req, timeout).await
        }
        Command::TriggerMessage {
            message,
            connector_id,
        } => {
            let requested_message: enums::MessageTrigger =
                serde_json::from_value(Value::String(message.clone()))
                    .map_err(|_| CommandError::BadRequest(format!("unknown message {message}")))?;
            let req = call::TriggerMessage {
                requested_message,
                connector_id,
            };
            exchange::<_, call_result::TriggerMessage>(registry, cp_id, action, &req, timeout).await
        }
        Command::ChangeAvailability {
            connector_id,
            operative,
        } => {
            let req = call::ChangeAvailability {
                connector_id,
                availability_type: if operative {
                    enums::AvailabilityType::Operative
                } else {
                    enums::AvailabilityType::Inoperative
                },
            };
            exchange::<_, call_result::ChangeAvailability>(registry, cp_id, action, &req, timeout)
                .await
        }
        Command::UnlockConnector { connector_id } => {
            let req = call::UnlockConnector { connector_id };
            exchange::<_, call_result::UnlockConnector>(registry, cp_id, action, &req, timeout)
                .await
        }
    }
}

async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
    registry: &Registry,
    cp_id: &str,
    action: &str,
    req: &Req,
    timeout: Duration,
) -> Result<Value, CommandError> {
    let payload = serde_json::to_value(req).map_err(|e| CommandError::BadRequest(e.to_string()))?;
    if let Err(v) = ocpp_rs::v16::validate_gen::validate_action_payload(action, &payload) {
        return Err(CommandError::BadRequest(format!(
            "{}: {:?}",
            v.path, v.kind
        )));
    }
    let answer = registry.call(cp_id, action, payload, timeout).await?;
    serde_json::from_value::<Resp>(answer.clone())
        .map_err(|e| CommandError::BadResponse(e.to_string()))?;
    Ok(answer)
}
