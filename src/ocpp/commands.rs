//! Typed outbound commands to a charger, in the OCPP version its connection speaks:
//! 1.6 (RemoteStart/StopTransaction, Get/ChangeConfiguration, …) or 2.0.1
//! (RequestStart/StopTransaction, Get/SetVariables, GetBaseReport, GetTransactionStatus, …).
//!
//! [`request`] turns a [`Command`] into the CALL for a version and [`check_answer`] judges
//! the charger's CALLRESULT; both are pure, and [`send`] only puts them around the
//! registry's CALL. 1.6 requests are built from `ocpp_rs`'s 1.6 types. 2.0.1 ones come
//! from its `v21` types, which serve 2.0.1 through 2.1 with wider bounds and more enum
//! values: the 2.0.1 limits that differ (an idToken of at most 36 characters, not 255;
//! a SetVariables value of at most 1,000, not 2,500; no `ImmediateAndResume` reset, no
//! `CustomTrigger`) are guarded here with a message that says which, and then every 2.0.1
//! payload is held to the official 2.0.1 schema ([`super::v201::schema`]), so what goes
//! on the wire is valid **2.0.1**. An answer is believed only once it has the action's
//! response shape (for 2.0.1: its official response schema too).

use std::fmt;
use std::time::Duration;

use ocpp_rs::v16::{call, call_result, enums};
use ocpp_rs::v21::datatypes::{ComponentType, EVSEType, IdTokenType, VariableType};
use ocpp_rs::v21::messages as m201;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::frame::Version;
use super::registry::{CallFailure, Registry};
use super::v201::schema;

/// A transaction at a charger, named as that charger's OCPP version names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransactionRef {
    /// 1.6: the integer id the central system gave in its StartTransaction answer.
    V16(i32),
    /// 2.0.1: the charger's own `transactionId` (at most 36 characters).
    V201(String),
}

impl TransactionRef {
    /// A stored session's transaction as its charger names it: the charger's own id on
    /// 2.0.1 (`charger_tx_id`), else the store's integer one (1.6).
    pub fn of(charger_tx_id: Option<String>, transaction_id: i32) -> TransactionRef {
        match charger_tx_id {
            Some(id) => TransactionRef::V201(id),
            None => TransactionRef::V16(transaction_id),
        }
    }
}

impl fmt::Display for TransactionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransactionRef::V16(id) => write!(f, "{id}"),
            TransactionRef::V201(id) => f.write_str(id),
        }
    }
}

/// One variable of a 2.0.1 charger's device model: a component (of one EVSE, or of the
/// whole station) and one of its variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableRef {
    /// Component name, e.g. `OCPPCommCtrlr` (at most 50 characters).
    pub component: String,
    /// Component instance, if the component has several.
    pub component_instance: Option<String>,
    /// The EVSE the component belongs to; `None` for the station's own components.
    pub evse_id: Option<u32>,
    /// Variable name, e.g. `HeartbeatInterval` (at most 50 characters).
    pub variable: String,
    /// Variable instance, if the variable has several.
    pub variable_instance: Option<String>,
}

impl VariableRef {
    /// A station-wide component's variable, without instances.
    pub fn new(component: impl Into<String>, variable: impl Into<String>) -> Self {
        Self {
            component: component.into(),
            component_instance: None,
            evse_id: None,
            variable: variable.into(),
            variable_instance: None,
        }
    }
}

/// Which report a 2.0.1 GetBaseReport asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportBase {
    /// The variables that can be configured.
    ConfigurationInventory,
    /// The whole device model.
    FullInventory,
    /// Components and variables that matter for monitoring (availability, problems).
    SummaryInventory,
}

/// A command for one charger. Where both versions have the operation, one variant serves
/// both and says how it maps; a variant of one version only is a
/// [`CommandError::BadRequest`] for a charger of the other.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// 1.6 RemoteStartTransaction; 2.0.1 RequestStartTransaction.
    RemoteStart {
        /// The id tag the charger will present for the transaction (1.6 `idTag`, at most
        /// 20 characters; 2.0.1 `idToken` of type `Central`, at most 36).
        id_tag: String,
        /// Connector, if one is chosen (2.0.1: the EVSE id, `evseId`).
        connector_id: Option<u32>,
        /// 2.0.1 `remoteStartId` (positive), which the charger's TransactionEvent carries
        /// back; 1.6 has no such field and ignores it.
        remote_start_id: i32,
    },
    /// 1.6 RemoteStopTransaction; 2.0.1 RequestStopTransaction.
    RemoteStop {
        /// The transaction to stop, as the charger's version names it.
        transaction: TransactionRef,
    },
    /// GetConfiguration (1.6 only; 2.0.1 has [`Command::GetVariables`]).
    GetConfiguration {
        /// Keys wanted (all when empty).
        keys: Vec<String>,
    },
    /// ChangeConfiguration (1.6 only; 2.0.1 has [`Command::SetVariables`]).
    ChangeConfiguration {
        /// Key.
        key: String,
        /// New value.
        value: String,
    },
    /// GetVariables (2.0.1 only).
    GetVariables {
        /// The variables wanted (at least one), each read as its `Actual` value.
        variables: Vec<VariableRef>,
    },
    /// SetVariables (2.0.1 only).
    SetVariables {
        /// The variables and their new `Actual` values (at least one; a value is at most
        /// 1,000 characters).
        values: Vec<(VariableRef, String)>,
    },
    /// GetBaseReport (2.0.1 only): the charger answers at once, then sends the report in
    /// NotifyReport parts that carry `request_id`.
    GetBaseReport {
        /// `requestId`, echoed by the NotifyReport parts.
        request_id: i32,
        /// Which report.
        report: ReportBase,
    },
    /// Reset. 1.6: Hard or Soft; 2.0.1: a hard reset is `Immediate` (transactions are
    /// stopped), a soft one `OnIdle` (once no transaction runs).
    Reset {
        /// Hard (power cycle, or at once) rather than soft.
        hard: bool,
        /// 2.0.1 only: reset this EVSE rather than the whole station.
        evse_id: Option<u32>,
    },
    /// TriggerMessage.
    TriggerMessage {
        /// The message wanted, as the charger's version spells it (`StatusNotification`;
        /// 2.0.1 also e.g. `TransactionEvent`).
        message: String,
        /// Connector, if any (2.0.1: the EVSE id).
        connector_id: Option<u32>,
    },
    /// ChangeAvailability.
    ChangeAvailability {
        /// Connector (0 = the whole charger; 2.0.1: the EVSE id, 0 = the whole station).
        connector_id: u32,
        /// Operative (true) or inoperative.
        operative: bool,
        /// 2.0.1 only: one connector of that EVSE (`evse.connectorId`).
        evse_connector: Option<u32>,
    },
    /// UnlockConnector.
    UnlockConnector {
        /// Connector (2.0.1: the EVSE id).
        connector_id: u32,
        /// 2.0.1 only: the connector of that EVSE (`connectorId`, default 1).
        evse_connector: Option<u32>,
    },
    /// GetTransactionStatus (2.0.1 only).
    GetTransactionStatus {
        /// The transaction asked about; `None` asks whether any messages are queued.
        transaction_id: Option<String>,
    },
    /// ClearCache (both versions): the charger forgets its authorization cache.
    ClearCache,
    /// CertificateSigned (2.0.1; 1.6 with the security whitepaper's extensions): installs
    /// the chain signed for the charger's CSR (`charger.certificate`).
    CertificateSigned {
        /// PEM chain, leaf first (at most 10,000 characters).
        certificate_chain: String,
    },
    /// GetLocalListVersion: which version of the local authorization list the charger
    /// holds.
    GetLocalListVersion,
    /// SendLocalList: the fleet cards a charger keeps accepting when it loses the gateway.
    SendLocalList {
        /// The list version (1.6 `listVersion`, 2.0.1 `versionNumber`; at least 1).
        version: i32,
        /// The whole list (`Full`: it replaces what the charger has), or more of it
        /// (`Differential`: these entries are added or updated).
        full: bool,
        /// The cards, every one accepted (until its expiry).
        entries: Vec<LocalEntry>,
    },
    /// SetChargingProfile (both versions): one limit for a connector, the site's share.
    SetChargingProfile {
        /// Connector (2.0.1: EVSE); 0 is every connector of the charger (a default).
        connector_id: u32,
        /// The profile.
        profile: Profile,
    },
    /// ClearChargingProfile (both versions) of a profile the agent set, by its id.
    ClearChargingProfile {
        /// The profile's id.
        id: i32,
    },
    /// ReserveNow (both versions): holds a connector (2.0.1: an EVSE) for a reservation,
    /// under tokens the agent controls, never the driver's OTP (CONTRACT §6).
    ReserveNow {
        /// `reservationId` (2.0.1 `id`).
        reservation_id: i32,
        /// Connector (2.0.1: EVSE).
        connector_id: u32,
        /// When the charger drops it (start + grace).
        expires_at: chrono::DateTime<chrono::Utc>,
        /// The reservation's own token (1.6 `idTag`; 2.0.1 `idToken`, type `Central`).
        tag: String,
        /// The group its driver's authorization names (1.6 `parentIdTag`; 2.0.1
        /// `groupIdToken`, type `Central`): the agent answers the order's OTP with it.
        parent: String,
    },
    /// CancelReservation (both versions).
    CancelReservation {
        /// `reservationId`.
        reservation_id: i32,
    },
}

/// What a charging profile is for.
#[derive(Debug, Clone, PartialEq)]
pub enum ProfilePurpose {
    /// TxDefaultProfile: what every transaction gets when nothing else is in force (the
    /// charger's fail-safe share).
    TxDefault,
    /// TxProfile: the running transaction's share.
    Tx(TransactionRef),
}

/// A charging profile of one period: a limit, in the charger's unit, from a start.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// `chargingProfileId` (2.0.1 `id`; its schedule gets the same id).
    pub id: i32,
    /// `stackLevel`.
    pub stack_level: u32,
    /// Purpose.
    pub purpose: ProfilePurpose,
    /// The unit of `limit`.
    pub unit: crate::power::RateUnit,
    /// The limit (amperes per phase to 0.1 A, or watts).
    pub limit: f64,
    /// `numberPhases`.
    pub phases: u8,
    /// An absolute schedule's start and its duration in seconds; `None`: relative to each
    /// transaction's start, without end.
    pub schedule: Option<(chrono::DateTime<chrono::Utc>, i64)>,
}

impl Profile {
    /// The profile as both versions spell it, but for the names that differ: (the 1.6
    /// `chargingSchedule` object, the purpose, the kind).
    fn parts(&self) -> (Value, &'static str, &'static str) {
        let unit = match self.unit {
            crate::power::RateUnit::Amps => "A",
            crate::power::RateUnit::Watts => "W",
        };
        let mut schedule = serde_json::json!({
            "chargingRateUnit": unit,
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": self.limit,
                                        "numberPhases": self.phases}],
        });
        let kind = match self.schedule {
            Some((start, secs)) => {
                schedule["startSchedule"] = Value::from(crate::time::fmt_ts(start));
                schedule["duration"] = Value::from(secs);
                "Absolute"
            }
            None => "Relative",
        };
        let purpose = match self.purpose {
            ProfilePurpose::TxDefault => "TxDefaultProfile",
            ProfilePurpose::Tx(_) => "TxProfile",
        };
        (schedule, purpose, kind)
    }
}

/// A card on a charger's local authorization list: it crosses OCPP in clear (the charger
/// must match it), never a log line (its `Debug` hides it).
#[derive(Clone, PartialEq)]
pub struct LocalEntry {
    /// The card's UID (hex, upper case).
    pub id_tag: String,
    /// The 2.0.1 idToken type: `ISO14443` or `ISO15693`.
    pub id_type: String,
    /// Not valid after (1.6 `expiryDate`, 2.0.1 `cacheExpiryDateTime`).
    pub expiry: Option<chrono::DateTime<chrono::Utc>>,
}

impl fmt::Debug for LocalEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEntry")
            .field("id_tag", &"(hidden)")
            .field("id_type", &self.id_type)
            .field("expiry", &self.expiry)
            .finish()
    }
}

/// Why a command did not get a valid answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// The command's arguments do not fit the OCPP schema of the charger's version (or
    /// the operation does not exist in that version).
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
    /// The OCPP action name in `version`; `None` when that version has no such operation.
    pub fn action(&self, version: Version) -> Option<&'static str> {
        let v16 = version == Version::V16;
        Some(match self {
            Command::RemoteStart { .. } if v16 => "RemoteStartTransaction",
            Command::RemoteStart { .. } => "RequestStartTransaction",
            Command::RemoteStop { .. } if v16 => "RemoteStopTransaction",
            Command::RemoteStop { .. } => "RequestStopTransaction",
            Command::GetConfiguration { .. } if v16 => "GetConfiguration",
            Command::ChangeConfiguration { .. } if v16 => "ChangeConfiguration",
            Command::GetVariables { .. } if !v16 => "GetVariables",
            Command::SetVariables { .. } if !v16 => "SetVariables",
            Command::GetBaseReport { .. } if !v16 => "GetBaseReport",
            Command::GetTransactionStatus { .. } if !v16 => "GetTransactionStatus",
            Command::Reset { .. } => "Reset",
            Command::TriggerMessage { .. } => "TriggerMessage",
            Command::ChangeAvailability { .. } => "ChangeAvailability",
            Command::UnlockConnector { .. } => "UnlockConnector",
            Command::ClearCache => "ClearCache",
            Command::CertificateSigned { .. } => "CertificateSigned",
            Command::GetLocalListVersion => "GetLocalListVersion",
            Command::SendLocalList { .. } => "SendLocalList",
            Command::SetChargingProfile { .. } => "SetChargingProfile",
            Command::ClearChargingProfile { .. } => "ClearChargingProfile",
            Command::ReserveNow { .. } => "ReserveNow",
            Command::CancelReservation { .. } => "CancelReservation",
            Command::GetConfiguration { .. }
            | Command::ChangeConfiguration { .. }
            | Command::GetVariables { .. }
            | Command::SetVariables { .. }
            | Command::GetBaseReport { .. }
            | Command::GetTransactionStatus { .. } => return None,
        })
    }
}

/// A CALL ready for the wire: valid for the version it was built for.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The action name.
    pub action: &'static str,
    /// The payload object.
    pub payload: Value,
}

/// Sends `command` to charger `cp_id`, in the version its connection speaks, and returns
/// its validated answer.
///
/// # Errors
/// [`CommandError`]. A command that no version could carry is a `BadRequest` even when
/// the charger is not connected.
pub async fn send(
    registry: &Registry,
    cp_id: &str,
    command: Command,
    timeout: Duration,
) -> Result<Value, CommandError> {
    let Some(version) = registry.version(cp_id) else {
        return Err(
            match (
                request(&command, Version::V16),
                request(&command, Version::V201),
            ) {
                (Err(e @ CommandError::BadRequest(_)), Err(CommandError::BadRequest(_))) => e,
                _ => CommandError::Call(CallFailure::NotConnected),
            },
        );
    };
    let Request { action, payload } = request(&command, version)?;
    let answer = registry
        .call_speaking(cp_id, version, action, payload, timeout)
        .await?;
    check_answer(action, version, &answer)?;
    Ok(answer)
}

/// The CALL that carries `command` to a charger speaking `version`.
///
/// # Errors
/// [`CommandError::BadRequest`] when the arguments do not fit that version's schema or
/// the version has no such operation.
pub fn request(command: &Command, version: Version) -> Result<Request, CommandError> {
    let Some(action) = command.action(version) else {
        return Err(CommandError::BadRequest(match version {
            Version::V16 => format!("{} is not an OCPP 1.6 operation", name(command)),
            Version::V201 => format!("{} is not an OCPP 2.0.1 operation", name(command)),
        }));
    };
    let payload = match version {
        Version::V16 => v16_payload(command)?,
        Version::V201 => v201_payload(command)?,
    };
    let checked = match version {
        Version::V16 => ocpp_rs::v16::validate_gen::validate_action_payload(action, &payload)
            .map_err(|v| format!("{}: {:?}", v.path, v.kind)),
        Version::V201 => schema::validate(&format!("{action}Request"), &payload)
            .map_err(|v| format!("not valid OCPP 2.0.1: {}", v.description)),
    };
    checked.map_err(CommandError::BadRequest)?;
    Ok(Request { action, payload })
}

/// What a command is called when no version has it under that name (for messages).
fn name(command: &Command) -> &'static str {
    command
        .action(Version::V16)
        .or_else(|| command.action(Version::V201))
        .unwrap_or("this command")
}

fn to_value<T: Serialize>(req: &T) -> Result<Value, CommandError> {
    serde_json::to_value(req).map_err(|e| CommandError::BadRequest(e.to_string()))
}

fn v16_payload(command: &Command) -> Result<Value, CommandError> {
    let bad = |m: &str| Err(CommandError::BadRequest(m.to_string()));
    match command {
        Command::RemoteStart {
            id_tag,
            connector_id,
            remote_start_id: _,
        } => to_value(&call::RemoteStartTransaction {
            id_tag: id_tag.clone(),
            connector_id: *connector_id,
            charging_profile: None,
        }),
        Command::RemoteStop {
            transaction: TransactionRef::V16(transaction_id),
        } => to_value(&call::RemoteStopTransaction {
            transaction_id: *transaction_id,
        }),
        Command::RemoteStop {
            transaction: TransactionRef::V201(_),
        } => bad("a 1.6 charger's transactions have integer ids"),
        Command::GetConfiguration { keys } => to_value(&call::GetConfiguration {
            key: (!keys.is_empty()).then(|| keys.clone()),
        }),
        Command::ChangeConfiguration { key, value } => to_value(&call::ChangeConfiguration {
            key: key.clone(),
            value: value.clone(),
        }),
        Command::Reset {
            evse_id: Some(_), ..
        } => bad("a 1.6 charger resets as a whole"),
        Command::Reset {
            hard,
            evse_id: None,
        } => to_value(&call::Reset {
            reset_type: if *hard {
                enums::ResetType::Hard
            } else {
                enums::ResetType::Soft
            },
        }),
        Command::TriggerMessage {
            message,
            connector_id,
        } => {
            let requested_message: enums::MessageTrigger =
                serde_json::from_value(Value::String(message.clone()))
                    .map_err(|_| CommandError::BadRequest(format!("unknown message {message}")))?;
            to_value(&call::TriggerMessage {
                requested_message,
                connector_id: *connector_id,
            })
        }
        Command::ChangeAvailability {
            evse_connector: Some(_),
            ..
        }
        | Command::UnlockConnector {
            evse_connector: Some(_),
            ..
        } => bad("a 1.6 connector has no connectors of its own"),
        Command::ChangeAvailability {
            connector_id,
            operative,
            evse_connector: None,
        } => to_value(&call::ChangeAvailability {
            connector_id: *connector_id,
            availability_type: if *operative {
                enums::AvailabilityType::Operative
            } else {
                enums::AvailabilityType::Inoperative
            },
        }),
        Command::UnlockConnector {
            connector_id,
            evse_connector: None,
        } => to_value(&call::UnlockConnector {
            connector_id: *connector_id,
        }),
        Command::ClearCache => to_value(&call::ClearCache {}),
        Command::CertificateSigned { certificate_chain } => to_value(&call::CertificateSigned {
            certificate_chain: certificate_chain.clone(),
        }),
        Command::GetLocalListVersion => to_value(&call::GetLocalListVersion {}),
        Command::SendLocalList {
            version,
            full,
            entries,
        } => {
            if *version < 1 {
                return bad("a local list version is at least 1");
            }
            let list: Vec<Value> = entries
                .iter()
                .map(|e| {
                    let mut info = serde_json::json!({"status": "Accepted"});
                    if let Some(t) = e.expiry {
                        info["expiryDate"] = Value::from(crate::time::fmt_ts(t));
                    }
                    serde_json::json!({"idTag": e.id_tag, "idTagInfo": info})
                })
                .collect();
            let mut payload = serde_json::json!({"listVersion": version,
                "updateType": if *full { "Full" } else { "Differential" }});
            if !list.is_empty() {
                payload["localAuthorizationList"] = Value::Array(list);
            }
            Ok(payload)
        }
        Command::SetChargingProfile {
            connector_id,
            profile,
        } => {
            let (schedule, purpose, kind) = profile.parts();
            let mut p = serde_json::json!({
                "chargingProfileId": profile.id,
                "stackLevel": profile.stack_level,
                "chargingProfilePurpose": purpose,
                "chargingProfileKind": kind,
                "chargingSchedule": schedule,
            });
            match &profile.purpose {
                ProfilePurpose::Tx(TransactionRef::V16(id)) => {
                    p["transactionId"] = Value::from(*id)
                }
                ProfilePurpose::Tx(TransactionRef::V201(_)) => {
                    return bad("a 1.6 charger's transactions have integer ids")
                }
                ProfilePurpose::TxDefault => {}
            }
            Ok(serde_json::json!({"connectorId": connector_id, "csChargingProfiles": p}))
        }
        Command::ClearChargingProfile { id } => Ok(serde_json::json!({"id": id})),
        Command::ReserveNow {
            reservation_id,
            connector_id,
            expires_at,
            tag,
            parent,
        } => Ok(serde_json::json!({
            "connectorId": connector_id,
            "expiryDate": crate::time::fmt_ts(*expires_at),
            "idTag": tag,
            "parentIdTag": parent,
            "reservationId": reservation_id,
        })),
        Command::CancelReservation { reservation_id } => {
            Ok(serde_json::json!({"reservationId": reservation_id}))
        }
        // `request` only asks for a version's payload of an action that version has.
        Command::GetVariables { .. }
        | Command::SetVariables { .. }
        | Command::GetBaseReport { .. }
        | Command::GetTransactionStatus { .. } => bad("not an OCPP 1.6 operation"),
    }
}

/// OCPP 2.0.1 bounds that `ocpp_rs`'s 2.1 types do not enforce (2.1 allows more).
mod limits {
    /// `IdTokenType.idToken` (2.1: 255).
    pub const ID_TOKEN: usize = 36;
    /// A `transactionId`.
    pub const TRANSACTION_ID: usize = 36;
    /// `SetVariableDataType.attributeValue` (2.1: 2,500).
    pub const SET_VALUE: usize = 1000;
    /// `MessageTriggerEnumType` in 2.0.1 (2.1 adds `SignV2G20Certificate`, `CustomTrigger`).
    pub const TRIGGERS: &[&str] = &[
        "BootNotification",
        "LogStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "SignChargingStationCertificate",
        "SignV2GCertificate",
        "StatusNotification",
        "TransactionEvent",
        "SignCombinedCertificate",
        "PublishFirmwareStatusNotification",
    ];
}

/// A string field of at least one and at most `max` characters.
fn bounded(what: &str, s: &str, max: usize) -> Result<String, CommandError> {
    let n = s.chars().count();
    if n == 0 || n > max {
        return Err(CommandError::BadRequest(format!(
            "{what} must be 1 to {max} characters in OCPP 2.0.1 (it is {n})"
        )));
    }
    Ok(s.to_string())
}

/// An EVSE (or connector) id as 2.0.1's integers carry it: at least 1.
fn evse(what: &str, id: u32) -> Result<i32, CommandError> {
    i32::try_from(id)
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| CommandError::BadRequest(format!("{what} must be from 1 to {}", i32::MAX)))
}

fn component(v: &VariableRef) -> Result<ComponentType, CommandError> {
    Ok(ComponentType {
        evse: v
            .evse_id
            .map(|id| {
                Ok::<_, CommandError>(EVSEType {
                    id: evse("evse_id", id)?,
                    connector_id: None,
                    custom_data: None,
                })
            })
            .transpose()?,
        name: v.component.clone(),
        instance: v.component_instance.clone(),
        custom_data: None,
    })
}

fn variable(v: &VariableRef) -> VariableType {
    VariableType {
        name: v.variable.clone(),
        instance: v.variable_instance.clone(),
        custom_data: None,
    }
}

fn v201_payload(command: &Command) -> Result<Value, CommandError> {
    let bad = |m: &str| Err(CommandError::BadRequest(m.to_string()));
    match command {
        Command::RemoteStart {
            id_tag,
            connector_id,
            remote_start_id,
        } => {
            if *remote_start_id < 1 {
                return bad("remoteStartId must be positive");
            }
            to_value(
                &m201::request_start_transaction::RequestStartTransactionRequest {
                    evse_id: connector_id.map(|id| evse("evseId", id)).transpose()?,
                    group_id_token: None,
                    id_token: IdTokenType {
                        additional_info: None,
                        id_token: bounded("idToken", id_tag, limits::ID_TOKEN)?,
                        // The agent's own token: it checked the driver's OTP itself.
                        type_: "Central".into(),
                        custom_data: None,
                    },
                    remote_start_id: *remote_start_id,
                    charging_profile: None,
                    custom_data: None,
                },
            )
        }
        Command::RemoteStop {
            transaction: TransactionRef::V201(id),
        } => to_value(
            &m201::request_stop_transaction::RequestStopTransactionRequest {
                transaction_id: bounded("transactionId", id, limits::TRANSACTION_ID)?,
                custom_data: None,
            },
        ),
        Command::RemoteStop {
            transaction: TransactionRef::V16(_),
        } => bad("a 2.0.1 charger's transactions have its own string ids"),
        Command::GetVariables { variables } => {
            if variables.is_empty() {
                return bad("GetVariables needs at least one variable");
            }
            let get_variable_data = variables
                .iter()
                .map(|v| {
                    Ok(m201::get_variables::GetVariableDataType {
                        attribute_type: None,
                        component: component(v)?,
                        variable: variable(v),
                        custom_data: None,
                    })
                })
                .collect::<Result<_, CommandError>>()?;
            to_value(&m201::get_variables::GetVariablesRequest {
                get_variable_data,
                custom_data: None,
            })
        }
        Command::SetVariables { values } => {
            if values.is_empty() {
                return bad("SetVariables needs at least one variable");
            }
            let set_variable_data = values
                .iter()
                .map(|(v, value)| {
                    let n = value.chars().count();
                    if n > limits::SET_VALUE {
                        return Err(CommandError::BadRequest(format!(
                            "a value is at most {} characters in OCPP 2.0.1 (it is {n})",
                            limits::SET_VALUE
                        )));
                    }
                    Ok(m201::set_variables::SetVariableDataType {
                        attribute_type: None,
                        attribute_value: value.clone(),
                        component: component(v)?,
                        variable: variable(v),
                        custom_data: None,
                    })
                })
                .collect::<Result<_, CommandError>>()?;
            to_value(&m201::set_variables::SetVariablesRequest {
                set_variable_data,
                custom_data: None,
            })
        }
        Command::GetBaseReport { request_id, report } => {
            use m201::get_base_report::ReportBaseEnumType as Base;
            to_value(&m201::get_base_report::GetBaseReportRequest {
                request_id: *request_id,
                report_base: match report {
                    ReportBase::ConfigurationInventory => Base::ConfigurationInventory,
                    ReportBase::FullInventory => Base::FullInventory,
                    ReportBase::SummaryInventory => Base::SummaryInventory,
                },
                custom_data: None,
            })
        }
        Command::Reset { hard, evse_id } => {
            use m201::reset::ResetEnumType as Kind;
            to_value(&m201::reset::ResetRequest {
                // never 2.1's ImmediateAndResume
                type_: if *hard { Kind::Immediate } else { Kind::OnIdle },
                evse_id: evse_id.map(|id| evse("evseId", id)).transpose()?,
                custom_data: None,
            })
        }
        Command::TriggerMessage {
            message,
            connector_id,
        } => {
            if !limits::TRIGGERS.contains(&message.as_str()) {
                return Err(CommandError::BadRequest(format!(
                    "unknown message {message}"
                )));
            }
            let requested_message = serde_json::from_value(Value::String(message.clone()))
                .map_err(|_| CommandError::BadRequest(format!("unknown message {message}")))?;
            to_value(&m201::trigger_message::TriggerMessageRequest {
                evse: connector_id
                    .map(|id| {
                        Ok::<_, CommandError>(EVSEType {
                            id: evse("evse.id", id)?,
                            connector_id: None,
                            custom_data: None,
                        })
                    })
                    .transpose()?,
                requested_message,
                custom_trigger: None,
                custom_data: None,
            })
        }
        Command::ChangeAvailability {
            connector_id,
            operative,
            evse_connector,
        } => {
            use m201::change_availability::OperationalStatusEnumType as Status;
            let evse = match (*connector_id, evse_connector) {
                (0, Some(_)) => return bad("a connector needs its EVSE id"),
                (0, None) => None,
                (id, connector) => Some(EVSEType {
                    id: evse("evse.id", id)?,
                    connector_id: connector.map(|c| evse("evse.connectorId", c)).transpose()?,
                    custom_data: None,
                }),
            };
            to_value(&m201::change_availability::ChangeAvailabilityRequest {
                evse,
                operational_status: if *operative {
                    Status::Operative
                } else {
                    Status::Inoperative
                },
                custom_data: None,
            })
        }
        Command::UnlockConnector {
            connector_id,
            evse_connector,
        } => to_value(&m201::unlock_connector::UnlockConnectorRequest {
            evse_id: evse("evseId", *connector_id)?,
            connector_id: evse("connectorId", evse_connector.unwrap_or(1))?,
            custom_data: None,
        }),
        Command::GetTransactionStatus { transaction_id } => {
            to_value(&m201::get_transaction_status::GetTransactionStatusRequest {
                transaction_id: transaction_id
                    .as_deref()
                    .map(|id| bounded("transactionId", id, limits::TRANSACTION_ID))
                    .transpose()?,
                custom_data: None,
            })
        }
        Command::ClearCache => {
            to_value(&m201::clear_cache::ClearCacheRequest { custom_data: None })
        }
        Command::CertificateSigned { certificate_chain } => Ok(serde_json::json!({
            "certificateChain": certificate_chain,
            "certificateType": "ChargingStationCertificate",
        })),
        Command::GetLocalListVersion => Ok(serde_json::json!({})),
        Command::SendLocalList {
            version,
            full,
            entries,
        } => {
            if *version < 1 {
                return bad("a local list version is at least 1");
            }
            let list = entries
                .iter()
                .map(|e| {
                    let mut info = serde_json::json!({"status": "Accepted"});
                    if let Some(t) = e.expiry {
                        info["cacheExpiryDateTime"] = Value::from(crate::time::fmt_ts(t));
                    }
                    Ok(serde_json::json!({
                        "idToken": {"idToken": bounded("idToken", &e.id_tag, limits::ID_TOKEN)?,
                                    "type": e.id_type},
                        "idTokenInfo": info}))
                })
                .collect::<Result<Vec<Value>, CommandError>>()?;
            let mut payload = serde_json::json!({"versionNumber": version,
                "updateType": if *full { "Full" } else { "Differential" }});
            if !list.is_empty() {
                payload["localAuthorizationList"] = Value::Array(list);
            }
            Ok(payload)
        }
        Command::SetChargingProfile {
            connector_id,
            profile,
        } => {
            let (mut schedule, purpose, kind) = profile.parts();
            schedule["id"] = Value::from(profile.id);
            let mut p = serde_json::json!({
                "id": profile.id,
                "stackLevel": profile.stack_level,
                "chargingProfilePurpose": purpose,
                "chargingProfileKind": kind,
                "chargingSchedule": [schedule],
            });
            match &profile.purpose {
                ProfilePurpose::Tx(TransactionRef::V201(id)) => {
                    p["transactionId"] =
                        Value::from(bounded("transactionId", id, limits::TRANSACTION_ID)?)
                }
                ProfilePurpose::Tx(TransactionRef::V16(_)) => {
                    return bad("a 2.0.1 station names its own transactions")
                }
                ProfilePurpose::TxDefault => {}
            }
            Ok(serde_json::json!({"evseId": connector_id, "chargingProfile": p}))
        }
        Command::ClearChargingProfile { id } => Ok(serde_json::json!({"chargingProfileId": id})),
        Command::ReserveNow {
            reservation_id,
            connector_id,
            expires_at,
            tag,
            parent,
        } => Ok(serde_json::json!({
            "id": reservation_id,
            "expiryDateTime": crate::time::fmt_ts(*expires_at),
            "idToken": {"idToken": bounded("idToken", tag, limits::ID_TOKEN)?, "type": "Central"},
            "groupIdToken": {"idToken": bounded("groupIdToken", parent, limits::ID_TOKEN)?,
                             "type": "Central"},
            "evseId": connector_id,
        })),
        Command::CancelReservation { reservation_id } => {
            Ok(serde_json::json!({"reservationId": reservation_id}))
        }
        // `request` only asks for a version's payload of an action that version has.
        Command::GetConfiguration { .. } | Command::ChangeConfiguration { .. } => {
            bad("not an OCPP 2.0.1 operation")
        }
    }
}

/// Whether `answer` has the response shape of `action` in `version`: the schema's fields
/// and enums (unknown fields refused, as the schemas' `additionalProperties: false`),
/// and its bounds.
///
/// # Errors
/// [`CommandError::BadResponse`], saying what does not fit.
pub fn check_answer(action: &str, version: Version, answer: &Value) -> Result<(), CommandError> {
    match version {
        Version::V16 => check_v16(action, answer),
        Version::V201 => check_v201(action, answer),
    }
}

fn shape<T: DeserializeOwned>(answer: &Value) -> Result<(), CommandError> {
    T::deserialize(answer)
        .map(drop)
        .map_err(|e| CommandError::BadResponse(e.to_string()))
}

fn check_v16(action: &str, answer: &Value) -> Result<(), CommandError> {
    match action {
        "RemoteStartTransaction" => shape::<call_result::RemoteStartTransaction>(answer),
        "RemoteStopTransaction" => shape::<call_result::RemoteStopTransaction>(answer),
        "GetConfiguration" => shape::<call_result::GetConfiguration>(answer),
        "ChangeConfiguration" => shape::<call_result::ChangeConfiguration>(answer),
        "Reset" => shape::<call_result::Reset>(answer),
        "TriggerMessage" => shape::<call_result::TriggerMessage>(answer),
        "ChangeAvailability" => shape::<call_result::ChangeAvailability>(answer),
        "UnlockConnector" => shape::<call_result::UnlockConnector>(answer),
        "ClearCache" => shape::<call_result::ClearCache>(answer),
        "CertificateSigned" => shape::<call_result::CertificateSigned>(answer),
        "GetLocalListVersion" => shape::<call_result::GetLocalListVersion>(answer),
        "SendLocalList" => shape::<call_result::SendLocalList>(answer),
        "SetChargingProfile" => shape::<call_result::SetChargingProfile>(answer),
        "ClearChargingProfile" => shape::<call_result::ClearChargingProfile>(answer),
        "ReserveNow" => shape::<call_result::ReserveNow>(answer),
        "CancelReservation" => shape::<call_result::CancelReservation>(answer),
        other => Err(CommandError::BadResponse(format!(
            "no 1.6 response shape for {other}"
        ))),
    }
}

fn check_v201(action: &str, answer: &Value) -> Result<(), CommandError> {
    use m201::*;
    match action {
        "RequestStartTransaction" => {
            shape::<request_start_transaction::RequestStartTransactionResponse>(answer)
        }
        "RequestStopTransaction" => {
            shape::<request_stop_transaction::RequestStopTransactionResponse>(answer)
        }
        "GetVariables" => shape::<get_variables::GetVariablesResponse>(answer),
        "SetVariables" => shape::<set_variables::SetVariablesResponse>(answer),
        "GetBaseReport" => shape::<get_base_report::GetBaseReportResponse>(answer),
        "Reset" => shape::<reset::ResetResponse>(answer),
        "TriggerMessage" => shape::<trigger_message::TriggerMessageResponse>(answer),
        "ChangeAvailability" => shape::<change_availability::ChangeAvailabilityResponse>(answer),
        "UnlockConnector" => shape::<unlock_connector::UnlockConnectorResponse>(answer),
        "GetTransactionStatus" => {
            shape::<get_transaction_status::GetTransactionStatusResponse>(answer)
        }
        "ClearCache" => shape::<clear_cache::ClearCacheResponse>(answer),
        "CertificateSigned" => shape::<certificate_signed::CertificateSignedResponse>(answer),
        "GetLocalListVersion" => {
            shape::<get_local_list_version::GetLocalListVersionResponse>(answer)
        }
        "SendLocalList" => shape::<send_local_list::SendLocalListResponse>(answer),
        "SetChargingProfile" => shape::<set_charging_profile::SetChargingProfileResponse>(answer),
        "ClearChargingProfile" => {
            shape::<clear_charging_profile::ClearChargingProfileResponse>(answer)
        }
        "ReserveNow" => shape::<reserve_now::ReserveNowResponse>(answer),
        "CancelReservation" => shape::<cancel_reservation::CancelReservationResponse>(answer),
        other => Err(CommandError::BadResponse(format!(
            "no 2.0.1 response shape for {other}"
        ))),
    }?;
    schema::validate(&format!("{action}Response"), answer)
        .map_err(|v| CommandError::BadResponse(format!("not valid OCPP 2.0.1: {}", v.description)))
}

/// What a 2.0.1 charger's GetTransactionStatus answer says about a transaction the store
/// still holds open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// It still runs at the charger.
    Ongoing {
        /// Messages about it wait in the charger's queue.
        messages_in_queue: bool,
    },
    /// It ended at the charger, and its messages (the `Ended` event among them) are still
    /// queued: they are on their way.
    EndedQueued,
    /// It ended at the charger and nothing about it is queued: the `Ended` event was
    /// sent but never reached the store (or never sent at all).
    EndedUnreported,
    /// The charger did not say whether it runs (it may omit `ongoingIndicator`).
    Unsaid {
        /// Messages about it wait in the charger's queue.
        messages_in_queue: bool,
    },
}

/// Reads a GetTransactionStatus answer (already checked with [`check_answer`]).
///
/// # Errors
/// [`CommandError::BadResponse`] when it is not that response's shape.
pub fn transaction_status(answer: &Value) -> Result<TransactionStatus, CommandError> {
    let r = m201::get_transaction_status::GetTransactionStatusResponse::deserialize(answer)
        .map_err(|e| CommandError::BadResponse(e.to_string()))?;
    let queued = r.messages_in_queue;
    Ok(match r.ongoing_indicator {
        Some(true) => TransactionStatus::Ongoing {
            messages_in_queue: queued,
        },
        Some(false) if queued => TransactionStatus::EndedQueued,
        Some(false) => TransactionStatus::EndedUnreported,
        None => TransactionStatus::Unsaid {
            messages_in_queue: queued,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every way `payload` breaks the official 2.0.1 schema `name` (empty: none).
    fn violations(name: &str, payload: &Value) -> Vec<String> {
        schema::validate(name, payload)
            .err()
            .map(|v| v.description)
            .into_iter()
            .collect()
    }

    fn v201(command: &Command) -> Request {
        request(command, Version::V201).unwrap_or_else(|e| panic!("{command:?}: {e}"))
    }

    fn share(purpose: ProfilePurpose, unit: crate::power::RateUnit, limit: f64) -> Command {
        let start = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let tx = matches!(purpose, ProfilePurpose::Tx(_));
        Command::SetChargingProfile {
            connector_id: u32::from(tx),
            profile: Profile {
                id: if tx { 101 } else { 1 },
                stack_level: 3,
                purpose,
                unit,
                limit,
                phases: 3,
                schedule: tx.then_some((start, 360)),
            },
        }
    }

    #[test]
    fn a_site_share_is_a_valid_set_charging_profile_in_both_versions() {
        use crate::power::RateUnit::{Amps, Watts};
        let v16 = request(
            &share(ProfilePurpose::Tx(TransactionRef::V16(7)), Amps, 14.4),
            Version::V16,
        )
        .unwrap();
        assert_eq!(v16.action, "SetChargingProfile");
        let p = &v16.payload["csChargingProfiles"];
        assert_eq!(p["transactionId"], 7);
        assert_eq!(p["chargingProfilePurpose"], "TxProfile");
        assert_eq!(p["chargingProfileKind"], "Absolute");
        assert_eq!(p["chargingSchedule"]["chargingRateUnit"], "A");
        assert_eq!(p["chargingSchedule"]["duration"], 360);
        assert_eq!(
            p["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"],
            14.4
        );
        let d = request(&share(ProfilePurpose::TxDefault, Amps, 14.4), Version::V16).unwrap();
        assert_eq!(d.payload["connectorId"], 0);
        assert_eq!(
            d.payload["csChargingProfiles"]["chargingProfileKind"],
            "Relative"
        );
        assert!(d.payload["csChargingProfiles"]["chargingSchedule"]["startSchedule"].is_null());

        let tx = share(
            ProfilePurpose::Tx(TransactionRef::V201("tx-1".into())),
            Watts,
            10_000.0,
        );
        let r = v201(&tx);
        assert!(violations("SetChargingProfileRequest", &r.payload).is_empty());
        assert_eq!(r.payload["evseId"], 1);
        assert_eq!(r.payload["chargingProfile"]["transactionId"], "tx-1");
        assert_eq!(
            r.payload["chargingProfile"]["chargingSchedule"][0]["chargingRateUnit"],
            "W"
        );
        let d = v201(&share(ProfilePurpose::TxDefault, Watts, 10_000.0));
        assert!(violations("SetChargingProfileRequest", &d.payload).is_empty());
        let c = v201(&Command::ClearChargingProfile { id: 101 });
        assert!(violations("ClearChargingProfileRequest", &c.payload).is_empty());
        assert!(request(&Command::ClearChargingProfile { id: 101 }, Version::V16).is_ok());
        // each version's transaction name only
        assert!(refused(
            &share(ProfilePurpose::Tx(TransactionRef::V16(7)), Watts, 1.0),
            Version::V201
        )
        .contains("names its own"));
        assert!(refused(&tx, Version::V16).contains("integer ids"));
        assert!(check_answer(
            "SetChargingProfile",
            Version::V16,
            &json!({"status": "Rejected"})
        )
        .is_ok());
        assert!(check_answer(
            "SetChargingProfile",
            Version::V201,
            &json!({"status": "Maybe"})
        )
        .is_err());
    }

    #[test]
    fn a_reservation_is_a_valid_reserve_now_in_both_versions_under_agent_tokens() {
        let r = Command::ReserveNow {
            reservation_id: 7,
            connector_id: 1,
            expires_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            tag: "RV0123456789ABCDEF".into(),
            parent: "RG0123456789ABCDEF".into(),
        };
        let v16 = request(&r, Version::V16).unwrap();
        assert_eq!(v16.action, "ReserveNow");
        assert_eq!(v16.payload["reservationId"], 7);
        assert_eq!(v16.payload["parentIdTag"], "RG0123456789ABCDEF");
        let two = v201(&r);
        assert!(violations("ReserveNowRequest", &two.payload).is_empty());
        assert_eq!(two.payload["idToken"]["type"], "Central");
        assert_eq!(two.payload["groupIdToken"]["idToken"], "RG0123456789ABCDEF");
        let c = Command::CancelReservation { reservation_id: 7 };
        assert!(request(&c, Version::V16).is_ok());
        assert!(violations("CancelReservationRequest", &v201(&c).payload).is_empty());
        assert!(check_answer("ReserveNow", Version::V16, &json!({"status": "Occupied"})).is_ok());
        assert!(check_answer("ReserveNow", Version::V201, &json!({"status": "Occupied"})).is_ok());
    }

    fn refused(command: &Command, version: Version) -> String {
        match request(command, version) {
            Err(CommandError::BadRequest(m)) => m,
            other => panic!("{command:?} for {version:?}: {other:?}"),
        }
    }

    /// Every 2.0.1 command with what must go on the wire for it.
    fn every_2_0_1_request() -> Vec<(Command, &'static str, Value)> {
        let hb = VariableRef::new("OCPPCommCtrlr", "HeartbeatInterval");
        let evse_var = VariableRef {
            component: "Connector".into(),
            component_instance: Some("A".into()),
            evse_id: Some(2),
            variable: "AvailabilityState".into(),
            variable_instance: Some("x".into()),
        };
        vec![
            (
                Command::RemoteStart {
                    id_tag: "CS0123456789ABCDEF".into(),
                    connector_id: Some(2),
                    remote_start_id: 7,
                },
                "RequestStartTransaction",
                json!({"idToken": {"idToken": "CS0123456789ABCDEF", "type": "Central"},
                       "remoteStartId": 7, "evseId": 2}),
            ),
            (
                Command::RemoteStart {
                    id_tag: "T".repeat(36),
                    connector_id: None,
                    remote_start_id: i32::MAX,
                },
                "RequestStartTransaction",
                json!({"idToken": {"idToken": "T".repeat(36), "type": "Central"},
                       "remoteStartId": i32::MAX}),
            ),
            (
                Command::RemoteStop {
                    transaction: TransactionRef::V201(
                        "f81d4fae-7dec-11d0-a765-00a0c91e6bf6".into(),
                    ),
                },
                "RequestStopTransaction",
                json!({"transactionId": "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"}),
            ),
            (
                Command::GetVariables {
                    variables: vec![hb.clone(), evse_var.clone()],
                },
                "GetVariables",
                json!({"getVariableData": [
                    {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
                    {"component": {"name": "Connector", "instance": "A", "evse": {"id": 2}},
                     "variable": {"name": "AvailabilityState", "instance": "x"}}]}),
            ),
            (
                Command::SetVariables {
                    values: vec![(hb, "300".into()), (evse_var, "v".repeat(1000))],
                },
                "SetVariables",
                json!({"setVariableData": [
                    {"attributeValue": "300", "component": {"name": "OCPPCommCtrlr"},
                     "variable": {"name": "HeartbeatInterval"}},
                    {"attributeValue": "v".repeat(1000),
                     "component": {"name": "Connector", "instance": "A", "evse": {"id": 2}},
                     "variable": {"name": "AvailabilityState", "instance": "x"}}]}),
            ),
            (
                Command::GetBaseReport {
                    request_id: 41,
                    report: ReportBase::FullInventory,
                },
                "GetBaseReport",
                json!({"requestId": 41, "reportBase": "FullInventory"}),
            ),
            (
                Command::GetBaseReport {
                    request_id: 42,
                    report: ReportBase::ConfigurationInventory,
                },
                "GetBaseReport",
                json!({"requestId": 42, "reportBase": "ConfigurationInventory"}),
            ),
            (
                Command::GetBaseReport {
                    request_id: 43,
                    report: ReportBase::SummaryInventory,
                },
                "GetBaseReport",
                json!({"requestId": 43, "reportBase": "SummaryInventory"}),
            ),
            (
                Command::Reset {
                    hard: true,
                    evse_id: None,
                },
                "Reset",
                json!({"type": "Immediate"}),
            ),
            (
                Command::Reset {
                    hard: false,
                    evse_id: Some(1),
                },
                "Reset",
                json!({"type": "OnIdle", "evseId": 1}),
            ),
            (
                Command::TriggerMessage {
                    message: "TransactionEvent".into(),
                    connector_id: Some(1),
                },
                "TriggerMessage",
                json!({"requestedMessage": "TransactionEvent", "evse": {"id": 1}}),
            ),
            (
                Command::TriggerMessage {
                    message: "BootNotification".into(),
                    connector_id: None,
                },
                "TriggerMessage",
                json!({"requestedMessage": "BootNotification"}),
            ),
            (
                Command::ChangeAvailability {
                    connector_id: 0,
                    operative: false,
                    evse_connector: None,
                },
                "ChangeAvailability",
                json!({"operationalStatus": "Inoperative"}),
            ),
            (
                Command::ChangeAvailability {
                    connector_id: 2,
                    operative: true,
                    evse_connector: Some(1),
                },
                "ChangeAvailability",
                json!({"operationalStatus": "Operative", "evse": {"id": 2, "connectorId": 1}}),
            ),
            (
                Command::UnlockConnector {
                    connector_id: 3,
                    evse_connector: None,
                },
                "UnlockConnector",
                json!({"evseId": 3, "connectorId": 1}),
            ),
            (
                Command::UnlockConnector {
                    connector_id: 1,
                    evse_connector: Some(2),
                },
                "UnlockConnector",
                json!({"evseId": 1, "connectorId": 2}),
            ),
            (
                Command::GetTransactionStatus {
                    transaction_id: Some("tx-1".into()),
                },
                "GetTransactionStatus",
                json!({"transactionId": "tx-1"}),
            ),
            (
                Command::GetTransactionStatus {
                    transaction_id: None,
                },
                "GetTransactionStatus",
                json!({}),
            ),
            (Command::ClearCache, "ClearCache", json!({})),
        ]
    }

    #[test]
    fn every_2_0_1_request_is_exactly_what_the_official_2_0_1_schema_demands() {
        for (command, action, wire) in every_2_0_1_request() {
            let built = v201(&command);
            assert_eq!(built.action, action, "{command:?}");
            assert_eq!(built.payload, wire, "{command:?}");
            let broken = violations(&format!("{action}Request"), &built.payload);
            assert!(broken.is_empty(), "{action}: {broken:?}");
        }
    }

    #[test]
    fn the_schema_checker_itself_catches_what_a_2_0_1_charger_would_refuse() {
        let cases = [
            (
                "RequestStartTransaction",
                json!({"idToken": {"idToken": "x", "type": "Central"}}),
            ),
            (
                "RequestStartTransaction",
                json!({"idToken": {"idToken": "x".repeat(37), "type": "Central"}, "remoteStartId": 1}),
            ),
            (
                "RequestStartTransaction",
                json!({"idToken": {"idToken": "x", "type": "Agent"}, "remoteStartId": 1}),
            ),
            ("RequestStopTransaction", json!({"transactionId": 5})),
            ("Reset", json!({"type": "ImmediateAndResume"})),
            (
                "TriggerMessage",
                json!({"requestedMessage": "CustomTrigger"}),
            ),
            ("ClearCache", json!({"extra": true})),
            ("GetVariables", json!({"getVariableData": []})),
        ];
        for (action, payload) in cases {
            assert!(
                !violations(&format!("{action}Request"), &payload).is_empty(),
                "{action} {payload}"
            );
        }
    }

    #[test]
    fn an_id_token_of_more_than_36_characters_is_refused_for_2_0_1_though_2_1_takes_255() {
        let command = Command::RemoteStart {
            id_tag: "T".repeat(37),
            connector_id: Some(1),
            remote_start_id: 1,
        };
        assert!(refused(&command, Version::V201).contains("idToken"));
        // the 2.1 validator alone would have let it through
        let wide =
            json!({"idToken": {"idToken": "T".repeat(37), "type": "Central"}, "remoteStartId": 1});
        assert!(ocpp_rs::v21::validate_gen::validate_action_payload(
            "RequestStartTransaction",
            &wide
        )
        .is_ok());
        for bad in [
            Command::RemoteStart {
                id_tag: String::new(),
                connector_id: None,
                remote_start_id: 1,
            },
            Command::RemoteStart {
                id_tag: "T".into(),
                connector_id: None,
                remote_start_id: 0,
            },
            Command::RemoteStart {
                id_tag: "T".into(),
                connector_id: Some(0),
                remote_start_id: 1,
            },
        ] {
            refused(&bad, Version::V201);
        }
    }

    #[test]
    fn a_set_variables_value_of_more_than_1000_characters_is_refused_for_2_0_1() {
        let command = Command::SetVariables {
            values: vec![(VariableRef::new("C", "V"), "v".repeat(1001))],
        };
        assert!(refused(&command, Version::V201).contains("1000"));
        refused(&Command::SetVariables { values: vec![] }, Version::V201);
        refused(&Command::GetVariables { variables: vec![] }, Version::V201);
        let long_name = Command::GetVariables {
            variables: vec![VariableRef::new("C".repeat(51), "V")],
        };
        refused(&long_name, Version::V201);
    }

    #[test]
    fn a_trigger_that_only_2_1_knows_is_refused_for_2_0_1() {
        for message in [
            "CustomTrigger",
            "SignV2G20Certificate",
            "DiagnosticsStatusNotification",
        ] {
            let command = Command::TriggerMessage {
                message: message.into(),
                connector_id: None,
            };
            assert!(refused(&command, Version::V201).contains("unknown message"));
        }
    }

    #[test]
    fn a_transaction_of_one_version_is_refused_for_a_charger_of_the_other() {
        let v16 = Command::RemoteStop {
            transaction: TransactionRef::V16(3),
        };
        let v201 = Command::RemoteStop {
            transaction: TransactionRef::V201("abc".into()),
        };
        refused(&v16, Version::V201);
        refused(&v201, Version::V16);
        let long = Command::RemoteStop {
            transaction: TransactionRef::V201("x".repeat(37)),
        };
        refused(&long, Version::V201);
        let long = Command::GetTransactionStatus {
            transaction_id: Some("x".repeat(37)),
        };
        refused(&long, Version::V201);
    }

    #[test]
    fn an_operation_of_one_version_is_a_bad_request_for_the_other() {
        for command in [
            Command::GetVariables {
                variables: vec![VariableRef::new("C", "V")],
            },
            Command::SetVariables {
                values: vec![(VariableRef::new("C", "V"), "1".into())],
            },
            Command::GetBaseReport {
                request_id: 1,
                report: ReportBase::FullInventory,
            },
            Command::GetTransactionStatus {
                transaction_id: None,
            },
            Command::Reset {
                hard: true,
                evse_id: Some(1),
            },
            Command::UnlockConnector {
                connector_id: 1,
                evse_connector: Some(1),
            },
        ] {
            refused(&command, Version::V16);
        }
        for command in [
            Command::GetConfiguration { keys: vec![] },
            Command::ChangeConfiguration {
                key: "K".into(),
                value: "V".into(),
            },
        ] {
            assert!(refused(&command, Version::V201).contains("not an OCPP 2.0.1 operation"));
        }
    }

    #[test]
    fn the_1_6_requests_are_what_they_always_were() {
        let cases = [
            (
                Command::RemoteStart {
                    id_tag: "ORDER-1".into(),
                    connector_id: Some(1),
                    remote_start_id: 9,
                },
                "RemoteStartTransaction",
                json!({"idTag": "ORDER-1", "connectorId": 1}),
            ),
            (
                Command::RemoteStop {
                    transaction: TransactionRef::V16(42),
                },
                "RemoteStopTransaction",
                json!({"transactionId": 42}),
            ),
            (
                Command::GetConfiguration { keys: vec![] },
                "GetConfiguration",
                json!({}),
            ),
            (
                Command::Reset {
                    hard: true,
                    evse_id: None,
                },
                "Reset",
                json!({"type": "Hard"}),
            ),
            (
                Command::ChangeAvailability {
                    connector_id: 0,
                    operative: false,
                    evse_connector: None,
                },
                "ChangeAvailability",
                json!({"connectorId": 0, "type": "Inoperative"}),
            ),
            (
                Command::UnlockConnector {
                    connector_id: 2,
                    evse_connector: None,
                },
                "UnlockConnector",
                json!({"connectorId": 2}),
            ),
            (Command::ClearCache, "ClearCache", json!({})),
        ];
        for (command, action, wire) in cases {
            let built = request(&command, Version::V16).unwrap();
            assert_eq!((built.action, built.payload), (action, wire));
        }
        let too_long = Command::RemoteStart {
            id_tag: "T".repeat(21),
            connector_id: None,
            remote_start_id: 1,
        };
        refused(&too_long, Version::V16);
    }

    #[test]
    fn a_2_0_1_answer_is_believed_only_in_its_response_shape() {
        let good = [
            ("RequestStartTransaction", json!({"status": "Accepted"})),
            (
                "RequestStartTransaction",
                json!({"status": "Accepted", "transactionId": "tx-9",
                       "statusInfo": {"reasonCode": "TxStarted"}}),
            ),
            ("RequestStopTransaction", json!({"status": "Rejected"})),
            (
                "GetVariables",
                json!({"getVariableResult": [{"attributeStatus": "Accepted", "attributeValue": "300",
                    "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}),
            ),
            (
                "SetVariables",
                json!({"setVariableResult": [{"attributeStatus": "RebootRequired",
                    "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}),
            ),
            ("GetBaseReport", json!({"status": "EmptyResultSet"})),
            ("Reset", json!({"status": "Scheduled"})),
            ("TriggerMessage", json!({"status": "NotImplemented"})),
            ("ChangeAvailability", json!({"status": "Scheduled"})),
            (
                "UnlockConnector",
                json!({"status": "OngoingAuthorizedTransaction"}),
            ),
            (
                "GetTransactionStatus",
                json!({"ongoingIndicator": false, "messagesInQueue": true}),
            ),
            (
                "ClearCache",
                json!({"status": "Accepted", "customData": {"vendorId": "X"}}),
            ),
        ];
        for (action, answer) in good {
            assert!(
                violations(&format!("{action}Response"), &answer).is_empty(),
                "the test's own answer must be valid: {action} {answer}"
            );
            check_answer(action, Version::V201, &answer)
                .unwrap_or_else(|e| panic!("{action} {answer}: {e}"));
        }
        let bad = [
            ("RequestStartTransaction", json!({"status": "Maybe"})),
            ("RequestStartTransaction", json!({})),
            (
                "RequestStartTransaction",
                json!({"status": "Accepted", "transactionId": "x".repeat(37)}),
            ),
            (
                "RequestStopTransaction",
                json!({"status": "Accepted", "extra": 1}),
            ),
            ("GetVariables", json!({"getVariableResult": []})),
            ("Reset", json!({"status": "Hard"})),
            ("GetTransactionStatus", json!({"ongoingIndicator": true})),
            (
                "UnlockConnector",
                json!({"status": "Unlocked", "statusInfo": {"reasonCode": "x".repeat(21)}}),
            ),
        ];
        for (action, answer) in bad {
            assert!(
                !violations(&format!("{action}Response"), &answer).is_empty(),
                "the test's own answer must be invalid: {action} {answer}"
            );
            assert!(
                matches!(
                    check_answer(action, Version::V201, &answer),
                    Err(CommandError::BadResponse(_))
                ),
                "{action} {answer}"
            );
        }
    }

    #[test]
    fn a_transaction_status_reads_as_ongoing_ended_and_queued_or_ended_unreported() {
        let read = |v: Value| transaction_status(&v).unwrap();
        assert_eq!(
            read(json!({"ongoingIndicator": true, "messagesInQueue": false})),
            TransactionStatus::Ongoing {
                messages_in_queue: false
            }
        );
        assert_eq!(
            read(json!({"ongoingIndicator": false, "messagesInQueue": true})),
            TransactionStatus::EndedQueued
        );
        assert_eq!(
            read(json!({"ongoingIndicator": false, "messagesInQueue": false})),
            TransactionStatus::EndedUnreported
        );
        assert_eq!(
            read(json!({"messagesInQueue": true})),
            TransactionStatus::Unsaid {
                messages_in_queue: true
            }
        );
        assert!(transaction_status(&json!({"ongoingIndicator": false})).is_err());
    }

    #[test]
    fn a_transaction_ref_prints_as_the_id_its_charger_knows() {
        assert_eq!(TransactionRef::V16(42).to_string(), "42");
        assert_eq!(TransactionRef::V201("tx-9".into()).to_string(), "tx-9");
    }
}
