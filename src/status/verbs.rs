//! The commissioning verbs of `chargesite charger CP_ID ...` (CONTRACT §1), pure: the
//! words on the command line as a [`Verb`], the [`Command`] that carries it to a charger
//! of either OCPP version, and the charger's answer read as a [`Verdict`] a field engineer
//! can act on.
//!
//! The verb travels to the agent as JSON (`POST /api/v1/chargers/{id}/command`, the
//! [`Verb`]'s serde form); the agent answers with the charger's validated answer and its
//! version, and the CLI reads the verdict from that. On a 2.0.1 charger a configuration
//! key is a device-model variable, written `Component.Variable` (e.g.
//! `OCPPCommCtrlr.HeartbeatInterval`); an EVSE-level component is not addressed here.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ocpp::commands::{Command, VariableRef};
use crate::ocpp::frame::Version;

/// One commissioning verb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case", deny_unknown_fields)]
pub enum Verb {
    /// `config get [KEY...]`: 1.6 GetConfiguration (every key when none is named);
    /// 2.0.1 GetVariables.
    ConfigGet {
        /// Keys (2.0.1: `Component.Variable`).
        #[serde(default)]
        keys: Vec<String>,
    },
    /// `config set KEY VALUE`: 1.6 ChangeConfiguration; 2.0.1 SetVariables.
    ConfigSet {
        /// Key (2.0.1: `Component.Variable`).
        key: String,
        /// New value.
        value: String,
    },
    /// `reset [--hard]`.
    Reset {
        /// Hard (1.6 Hard; 2.0.1 Immediate) rather than soft (Soft; OnIdle).
        #[serde(default)]
        hard: bool,
    },
    /// `trigger MESSAGE [CONNECTOR]`.
    Trigger {
        /// The message, as the charger's version spells it (e.g. `StatusNotification`).
        message: String,
        /// Connector (2.0.1: EVSE).
        #[serde(default)]
        connector: Option<u32>,
    },
    /// `unlock CONNECTOR`.
    Unlock {
        /// Connector (2.0.1: EVSE, its connector 1).
        connector: u32,
    },
    /// `availability CONNECTOR operative|inoperative`.
    Availability {
        /// Connector (0: the whole charger).
        connector: u32,
        /// Operative rather than inoperative.
        operative: bool,
    },
    /// `test-session`'s start ([`super::test_session`]): the agent accepts the tag on this
    /// charger with no order, then remote-starts it.
    TestStart {
        /// Connector (2.0.1: EVSE).
        connector: u32,
        /// The tag; the agent makes one up when absent.
        #[serde(default)]
        tag: Option<String>,
    },
    /// `test-session`'s stop: a remote stop of the session it started.
    TestStop {
        /// The session.
        session_id: String,
    },
}

/// The usage line of each verb, for errors.
pub const USAGE: &str = "config get [KEY...] | config set KEY VALUE | reset [--hard] | \
                         trigger MESSAGE [CONNECTOR] | unlock CONNECTOR | \
                         availability CONNECTOR operative|inoperative";

/// The verb the command-line words after `CP_ID` name.
///
/// # Errors
/// What is wrong with the words, naming the argument.
pub fn parse_args(words: &[String]) -> Result<Verb, String> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let connector = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("CONNECTOR must be a number, not {s:?}"))
    };
    match w.as_slice() {
        ["config", "get", keys @ ..] => Ok(Verb::ConfigGet {
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }),
        ["config", "set", key, value] => Ok(Verb::ConfigSet {
            key: key.to_string(),
            value: value.to_string(),
        }),
        ["config", "set", ..] => Err("config set needs KEY VALUE".into()),
        ["reset"] => Ok(Verb::Reset { hard: false }),
        ["reset", "--hard"] => Ok(Verb::Reset { hard: true }),
        ["trigger", message] => Ok(Verb::Trigger {
            message: message.to_string(),
            connector: None,
        }),
        ["trigger", message, c] => Ok(Verb::Trigger {
            message: message.to_string(),
            connector: Some(connector(c)?),
        }),
        ["unlock", c] => Ok(Verb::Unlock {
            connector: connector(c)?,
        }),
        ["availability", c, state] => Ok(Verb::Availability {
            connector: connector(c)?,
            operative: match *state {
                "operative" => true,
                "inoperative" => false,
                other => {
                    return Err(format!(
                        "availability must be operative or inoperative, not {other:?}"
                    ))
                }
            },
        }),
        [] => Err(format!("no ACTION given; one of: {USAGE}")),
        [verb, ..] => Err(format!(
            "unknown or incomplete ACTION {verb:?}; one of: {USAGE}"
        )),
    }
}

/// A 2.0.1 variable from `Component.Variable`.
fn variable(key: &str) -> Result<VariableRef, String> {
    match key.split_once('.') {
        Some((c, v)) if !c.is_empty() && !v.is_empty() => Ok(VariableRef::new(c, v)),
        _ => Err(format!(
            "a 2.0.1 charger's key is Component.Variable (e.g. OCPPCommCtrlr.HeartbeatInterval), not {key:?}"
        )),
    }
}

/// The command that carries `verb` to a charger speaking `version`.
///
/// # Errors
/// Why the verb cannot be carried (a 2.0.1 key that is not `Component.Variable`, a
/// `config get` of everything on 2.0.1).
pub fn command(verb: &Verb, version: Version) -> Result<Command, String> {
    let v16 = version == Version::V16;
    Ok(match verb {
        Verb::ConfigGet { keys } if v16 => Command::GetConfiguration { keys: keys.clone() },
        Verb::ConfigGet { keys } if keys.is_empty() => {
            return Err(
                "on a 2.0.1 charger name the variables (Component.Variable); \
                 its whole device model is in the store after a GetBaseReport"
                    .into(),
            )
        }
        Verb::ConfigGet { keys } => Command::GetVariables {
            variables: keys.iter().map(|k| variable(k)).collect::<Result<_, _>>()?,
        },
        Verb::ConfigSet { key, value } if v16 => Command::ChangeConfiguration {
            key: key.clone(),
            value: value.clone(),
        },
        Verb::ConfigSet { key, value } => Command::SetVariables {
            values: vec![(variable(key)?, value.clone())],
        },
        Verb::Reset { hard } => Command::Reset {
            hard: *hard,
            evse_id: None,
        },
        Verb::Trigger { message, connector } => Command::TriggerMessage {
            message: message.clone(),
            connector_id: *connector,
        },
        Verb::Unlock { connector } => Command::UnlockConnector {
            connector_id: *connector,
            evse_connector: None,
        },
        Verb::Availability {
            connector,
            operative,
        } => Command::ChangeAvailability {
            connector_id: *connector,
            operative: *operative,
            evse_connector: None,
        },
        Verb::TestStart { .. } | Verb::TestStop { .. } => {
            return Err("a test session is carried by the agent itself".into())
        }
    })
}

/// Whether a configuration key or variable names a secret (a password, a key, a PSK):
/// its value is never served or printed, whatever the charger answers.
pub fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "authorizationkey",
        "psk",
        "privatekey",
        "passphrase",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Hides the values of secret keys in a charger's answer to `config get`, before the agent
/// serves it: firmware that answers `AuthorizationKey` or a modem's password anyway must
/// not put it on the local API.
pub fn redact(answer: &mut Value) {
    const HIDDEN: &str = "(hidden)";
    if let Some(keys) = answer
        .get_mut("configurationKey")
        .and_then(Value::as_array_mut)
    {
        for k in keys {
            let secret = k.get("key").and_then(Value::as_str).is_some_and(is_secret);
            if secret && k.get("value").is_some() {
                k["value"] = Value::from(HIDDEN);
            }
        }
    }
    if let Some(results) = answer
        .get_mut("getVariableResult")
        .and_then(Value::as_array_mut)
    {
        for r in results {
            let secret = r
                .pointer("/variable/name")
                .and_then(Value::as_str)
                .is_some_and(is_secret);
            if secret && r.get("attributeValue").is_some() {
                r["attributeValue"] = Value::from(HIDDEN);
            }
        }
    }
}

/// Every control character of a charger's string made visible, so what it sends cannot
/// move a terminal's cursor or retitle its window when printed.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// What the charger's answer means for the engineer: whether it did what was asked, and
/// lines to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The charger did it (exit 0); otherwise it refused (exit 1).
    pub ok: bool,
    /// What to print, one line each.
    pub lines: Vec<String>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "(none)".into(),
        other => other.to_string(),
    }
}

/// The status word of an answer, with its `statusInfo.reasonCode` (2.0.1) when there is one.
fn status_of(answer: &Value) -> (String, Option<String>) {
    let status = answer
        .get("status")
        .map_or_else(|| "(no status)".into(), text);
    let reason = answer.pointer("/statusInfo/reasonCode").map(text).map(|r| {
        match answer.pointer("/statusInfo/additionalInfo") {
            Some(info) => format!("{r}: {}", text(info)),
            None => r,
        }
    });
    (status, reason)
}

/// Reads the charger's (already schema-checked) answer to `verb`.
pub fn verdict(verb: &Verb, version: Version, answer: &Value) -> Verdict {
    match (verb, version) {
        (Verb::ConfigGet { .. }, Version::V16) => {
            let mut lines = Vec::new();
            let keys = answer.get("configurationKey").and_then(Value::as_array);
            for k in keys.into_iter().flatten() {
                let name = k.get("key").map_or_else(String::new, text);
                let value = k.get("value").map_or_else(|| "(no value)".into(), text);
                let ro = if k.get("readonly") == Some(&Value::Bool(true)) {
                    " (read-only)"
                } else {
                    ""
                };
                lines.push(format!("{name} = {value}{ro}"));
            }
            let unknown: Vec<String> = answer
                .get("unknownKey")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            if !unknown.is_empty() {
                lines.push(format!("unknown to the charger: {}", unknown.join(", ")));
            }
            Verdict {
                ok: unknown.is_empty(),
                lines,
            }
        }
        (Verb::ConfigGet { .. }, Version::V201) => {
            let mut ok = true;
            let mut lines = Vec::new();
            let results = answer.get("getVariableResult").and_then(Value::as_array);
            for r in results.into_iter().flatten() {
                let name = format!(
                    "{}.{}",
                    r.pointer("/component/name").map_or_else(String::new, text),
                    r.pointer("/variable/name").map_or_else(String::new, text)
                );
                let status = r.get("attributeStatus").map_or_else(String::new, text);
                if status == "Accepted" {
                    let value = r
                        .get("attributeValue")
                        .map_or_else(|| "(no value)".into(), text);
                    lines.push(format!("{name} = {value}"));
                } else {
                    ok = false;
                    lines.push(format!("{name}: {status}"));
                }
            }
            Verdict { ok, lines }
        }
        (Verb::ConfigSet { key, value }, version) => {
            let status = match version {
                Version::V16 => status_of(answer).0,
                Version::V201 => answer
                    .pointer("/setVariableResult/0/attributeStatus")
                    .map_or_else(|| "(no status)".into(), text),
            };
            let value = if is_secret(key) { "(hidden)" } else { value };
            let line = match status.as_str() {
                "Accepted" => format!("{key} set to {value}"),
                "RebootRequired" => {
                    format!("{key} set to {value}; the charger applies it after a reset")
                }
                other => format!("{key} not set: the charger answered {other}"),
            };
            Verdict {
                ok: matches!(status.as_str(), "Accepted" | "RebootRequired"),
                lines: vec![line],
            }
        }
        (verb, _) => {
            let (status, reason) = status_of(answer);
            let what = match verb {
                Verb::Reset { hard: true } => "hard reset".to_string(),
                Verb::Reset { hard: false } => "soft reset".to_string(),
                Verb::Trigger { message, .. } => format!("trigger {message}"),
                Verb::Unlock { connector } => format!("unlock connector {connector}"),
                Verb::Availability {
                    connector,
                    operative,
                } => format!(
                    "connector {connector} {}",
                    if *operative {
                        "operative"
                    } else {
                        "inoperative"
                    }
                ),
                Verb::TestStart { connector, .. } => {
                    format!("start a test session on connector {connector}")
                }
                Verb::TestStop { .. } => "stop the test session".to_string(),
                Verb::ConfigGet { .. } | Verb::ConfigSet { .. } => unreachable!("matched above"),
            };
            // Scheduled: the charger does it once its transactions end.
            let ok = matches!(status.as_str(), "Accepted" | "Scheduled" | "Unlocked");
            let mut line = format!("{what}: {status}");
            if let Some(r) = reason {
                line.push_str(&format!(" ({r})"));
            }
            Verdict {
                ok,
                lines: vec![line],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_command_line_names_each_verb_and_a_wrong_word_is_named_back() {
        assert_eq!(
            parse_args(&words(
                "config get HeartbeatInterval MeterValueSampleInterval"
            )),
            Ok(Verb::ConfigGet {
                keys: vec![
                    "HeartbeatInterval".into(),
                    "MeterValueSampleInterval".into()
                ]
            })
        );
        assert_eq!(
            parse_args(&words("reset --hard")),
            Ok(Verb::Reset { hard: true })
        );
        assert_eq!(
            parse_args(&words("availability 1 inoperative")),
            Ok(Verb::Availability {
                connector: 1,
                operative: false
            })
        );
        assert!(parse_args(&words("unlock one"))
            .unwrap_err()
            .contains("\"one\""));
        assert!(parse_args(&words("availability 1 broken"))
            .unwrap_err()
            .contains("\"broken\""));
        assert!(parse_args(&words("explode"))
            .unwrap_err()
            .contains("explode"));
        assert!(parse_args(&[]).unwrap_err().contains("config get"));
    }

    #[test]
    fn a_verb_travels_as_json_and_back_and_unknown_fields_are_refused() {
        let v = Verb::Trigger {
            message: "StatusNotification".into(),
            connector: Some(1),
        };
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["verb"], "trigger");
        assert_eq!(serde_json::from_value::<Verb>(j).unwrap(), v);
        assert!(serde_json::from_value::<Verb>(json!({"verb": "reset", "evil": 1})).is_err());
    }

    #[test]
    fn config_is_get_change_configuration_on_1_6_and_variables_on_2_0_1() {
        let set = Verb::ConfigSet {
            key: "OCPPCommCtrlr.HeartbeatInterval".into(),
            value: "60".into(),
        };
        assert!(matches!(
            command(&set, Version::V16),
            Ok(Command::ChangeConfiguration { .. })
        ));
        assert_eq!(
            command(&set, Version::V201),
            Ok(Command::SetVariables {
                values: vec![(
                    VariableRef::new("OCPPCommCtrlr", "HeartbeatInterval"),
                    "60".into()
                )]
            })
        );
        let bare = Verb::ConfigGet {
            keys: vec!["HeartbeatInterval".into()],
        };
        assert!(command(&bare, Version::V201)
            .unwrap_err()
            .contains("Component.Variable"));
        assert!(command(&Verb::ConfigGet { keys: vec![] }, Version::V201).is_err());
        assert!(command(&Verb::ConfigGet { keys: vec![] }, Version::V16).is_ok());
    }

    #[test]
    fn a_refusal_is_not_ok_and_says_the_chargers_words() {
        let v = Verb::Unlock { connector: 2 };
        let refused = verdict(
            &v,
            Version::V201,
            &json!({"status": "UnlockFailed", "statusInfo": {"reasonCode": "CableLocked"}}),
        );
        assert!(!refused.ok);
        assert_eq!(
            refused.lines,
            vec!["unlock connector 2: UnlockFailed (CableLocked)"]
        );
        assert!(verdict(&v, Version::V16, &json!({"status": "Unlocked"})).ok);
        let soft = verdict(
            &Verb::Availability {
                connector: 1,
                operative: false,
            },
            Version::V16,
            &json!({"status": "Scheduled"}),
        );
        assert!(soft.ok, "scheduled: done once the transaction ends");
    }

    #[test]
    fn a_secret_the_charger_answers_anyway_is_hidden_and_never_echoed() {
        let mut a = json!({"configurationKey": [
            {"key": "AuthorizationKey", "readonly": false, "value": "0123456789abcdef"},
            {"key": "HeartbeatInterval", "readonly": false, "value": "300"}]});
        redact(&mut a);
        assert_eq!(a["configurationKey"][0]["value"], "(hidden)");
        assert_eq!(a["configurationKey"][1]["value"], "300");
        let mut b = json!({"getVariableResult": [{"attributeStatus": "Accepted",
            "attributeValue": "hunter2", "component": {"name": "SecurityCtrlr"},
            "variable": {"name": "BasicAuthPassword"}}]});
        redact(&mut b);
        assert_eq!(b["getVariableResult"][0]["attributeValue"], "(hidden)");
        let set = verdict(
            &Verb::ConfigSet {
                key: "SecurityCtrlr.BasicAuthPassword".into(),
                value: "hunter2".into(),
            },
            Version::V201,
            &json!({"setVariableResult": [{"attributeStatus": "Accepted",
                "component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"}}]}),
        );
        assert!(set.ok);
        assert!(!set.lines.join(" ").contains("hunter2"), "{:?}", set.lines);
        assert_eq!(
            printable("AC\u{1b}]0;pwned\u{7}22"),
            "AC\u{fffd}]0;pwned\u{fffd}22"
        );
    }

    #[test]
    fn configuration_answers_list_values_and_unknown_keys_fail() {
        let got = verdict(
            &Verb::ConfigGet { keys: vec![] },
            Version::V16,
            &json!({"configurationKey": [
                {"key": "HeartbeatInterval", "readonly": false, "value": "300"},
                {"key": "NumberOfConnectors", "readonly": true, "value": "2"}
            ], "unknownKey": ["Nope"]}),
        );
        assert!(!got.ok);
        assert_eq!(
            got.lines,
            vec![
                "HeartbeatInterval = 300",
                "NumberOfConnectors = 2 (read-only)",
                "unknown to the charger: Nope"
            ]
        );
        let v201 = verdict(
            &Verb::ConfigGet {
                keys: vec!["OCPPCommCtrlr.HeartbeatInterval".into()],
            },
            Version::V201,
            &json!({"getVariableResult": [{"attributeStatus": "Accepted", "attributeValue": "60",
                "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}),
        );
        assert!(v201.ok);
        assert_eq!(v201.lines, vec!["OCPPCommCtrlr.HeartbeatInterval = 60"]);
        let rejected = verdict(
            &Verb::ConfigSet {
                key: "HeartbeatInterval".into(),
                value: "x".into(),
            },
            Version::V16,
            &json!({"status": "Rejected"}),
        );
        assert!(!rejected.ok);
    }
}
