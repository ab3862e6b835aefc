//! The upstream event bodies (CONTRACT §4) as typed values; pure.
//!
//! Every outbox event the store writes is one [`Event`] here, so the fields the BPP reads
//! are named in one place. An event's `seq`, `type` and `at` are the outbox row's; the
//! body is everything else. `session.meter` is the one hot body: its samples arrive
//! already serialized from where the frame was decoded (see [`crate::reading::Sample`])
//! and are only spliced here, so the store thread that every charger shares does no JSON
//! work for them.

use serde::Serialize;

use crate::billing::{Cost, Settlement};

/// Most samples in one `session.meter` event, so that no event approaches the payload
/// limit even when a StopTransaction carries hours of transactionData.
pub const SAMPLES_PER_EVENT: usize = 20;

/// One stored event, as the uplink publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// The contract's `seq`.
    pub seq: i64,
    /// `type`.
    pub kind: String,
    /// `at`, already formatted.
    pub at: String,
    /// The other fields, a JSON object.
    pub body: String,
}

/// Which side of a session lost or regained its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// The charger's socket to the agent.
    Charger,
    /// The agent itself restarted.
    Agent,
}

/// One upstream event body, by type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Event {
    /// `charger.connected`.
    ChargerConnected {
        /// Charger.
        cp_id: String,
        /// Negotiated version, e.g. `ocpp1.6`.
        ocpp_version: String,
    },
    /// `charger.disconnected`.
    ChargerDisconnected {
        /// Charger.
        cp_id: String,
        /// `closed`, `dead`, `error`, `shutdown`, `replaced`, `protocol`, …
        reason: String,
    },
    /// `charger.booted`, as the charger reports itself.
    ChargerBooted {
        /// Charger.
        cp_id: String,
        /// Vendor.
        vendor: String,
        /// Model.
        model: String,
        /// Serial number (null when not reported).
        serial: Option<String>,
        /// Firmware (null when not reported).
        firmware: Option<String>,
    },
    /// `connector.status`.
    ConnectorStatus {
        /// Charger.
        cp_id: String,
        /// Connector (0 = the charger).
        connector_id: u32,
        /// Status as the charger spelled it.
        status: String,
        /// Error code as the charger spelled it.
        error_code: String,
        /// The charger's timestamp, normalized (null when absent).
        charger_ts: Option<String>,
    },
    /// `auth.checked`: never the OTP or tag itself.
    AuthChecked {
        /// Charger.
        cp_id: String,
        /// Connector, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        connector_id: Option<u32>,
        /// `otp`, `rfid`, `remote`.
        method: &'static str,
        /// `accepted`, `invalid`, `expired`, `used`, `blocked`.
        result: &'static str,
        /// The order, when the code matched one.
        #[serde(skip_serializing_if = "Option::is_none")]
        order_id: Option<String>,
    },
    /// `session.started`.
    SessionStarted(Box<SessionStarted>),
    /// `session.interrupted` / `session.resumed`.
    SessionLink {
        /// Session.
        session_id: String,
        /// Charger.
        cp_id: String,
        /// Which link.
        link: Link,
        /// true: `session.resumed`; false: `session.interrupted`.
        #[serde(skip)]
        resumed: bool,
    },
    /// `session.stopped`.
    SessionStopped(Box<SessionStopped>),
    /// `session.stop_unmatched`: a stop for a transaction this site never started.
    StopUnmatched {
        /// Charger.
        cp_id: String,
        /// The charger's transaction id.
        transaction_id: i32,
        /// `meterStop`.
        meter_stop_wh: i64,
        /// Charger clock.
        stopped_at: String,
        /// As reported.
        reason: String,
    },
    /// `events.gap`: events dropped to keep the store inside its quota.
    Gap {
        /// Why: `storage_quota`.
        reason: &'static str,
        /// First seq dropped.
        from_seq: i64,
        /// Last seq dropped.
        to_seq: i64,
        /// How many were dropped.
        dropped: usize,
        /// Which types: `session.meter` (intermediate samples, never starts or stops).
        types: Vec<&'static str>,
    },
}

/// The body of `session.started`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionStarted {
    /// Site-issued id.
    pub session_id: String,
    /// Charger.
    pub cp_id: String,
    /// Connector.
    pub connector_id: u32,
    /// The OCPP transaction id.
    pub transaction_id: i32,
    /// The order, when an OTP started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// `otp`, `rfid`, `remote`.
    pub auth_method: &'static str,
    /// The authorization result.
    pub auth_result: &'static str,
    /// `meterStart`.
    pub meter_start_wh: i64,
    /// Charger clock.
    pub started_at: String,
    /// Whether the uplink was connected at start.
    pub uplink_online: bool,
    /// Anomalies seen at start.
    pub flags: Vec<&'static str>,
}

/// The body of `session.stopped`: the final bill.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionStopped {
    /// Session.
    pub session_id: String,
    /// Charger.
    pub cp_id: String,
    /// Connector.
    pub connector_id: u32,
    /// The OCPP transaction id.
    pub transaction_id: i32,
    /// Charger clock.
    pub started_at: String,
    /// Charger clock.
    pub stopped_at: String,
    /// `meterStart`.
    pub meter_start_wh: i64,
    /// `meterStop`.
    pub meter_stop_wh: i64,
    /// Energy billed: plausible forward steps only.
    pub energy_wh: i64,
    /// Why it ended.
    pub reason: String,
    /// Every anomaly seen in the session.
    pub flags: Vec<&'static str>,
    /// The order, when an OTP started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// When a tariff applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
    /// When the budget was prepaid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settlement: Option<Settlement>,
}

impl Event {
    /// The contract's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ChargerConnected { .. } => "charger.connected",
            Event::ChargerDisconnected { .. } => "charger.disconnected",
            Event::ChargerBooted { .. } => "charger.booted",
            Event::ConnectorStatus { .. } => "connector.status",
            Event::AuthChecked { .. } => "auth.checked",
            Event::SessionStarted(_) => "session.started",
            Event::SessionLink { resumed: true, .. } => "session.resumed",
            Event::SessionLink { resumed: false, .. } => "session.interrupted",
            Event::SessionStopped(_) => "session.stopped",
            Event::StopUnmatched { .. } => "session.stop_unmatched",
            Event::Gap { .. } => "events.gap",
        }
    }

    /// Billing events (`session.*`) are never dropped to make room.
    pub fn billable(&self) -> bool {
        is_billable(self.kind())
    }

    /// The body, serialized.
    pub fn body(&self) -> String {
        // A derived Serialize of strings, integers and options cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// Whether events of type `kind` are billing events.
pub fn is_billable(kind: &str) -> bool {
    kind.starts_with("session.")
}

/// `session.meter` bodies for already-serialized samples, at most [`SAMPLES_PER_EVENT`]
/// per body.
pub fn meter_bodies<'a>(
    session_id: &'a str,
    samples: &'a [&'a str],
) -> impl Iterator<Item = String> + 'a {
    let id = serde_json::Value::from(session_id).to_string();
    samples.chunks(SAMPLES_PER_EVENT).map(move |chunk| {
        let mut body =
            String::with_capacity(32 + id.len() + chunk.iter().map(|s| s.len() + 1).sum::<usize>());
        body.push_str(r#"{"session_id":"#);
        body.push_str(&id);
        body.push_str(r#","samples":["#);
        for (i, sample) in chunk.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(sample);
        }
        body.push_str("]}");
        body
    })
}

/// The `<root>/live/<session_id>` snapshot: the latest reading (the contract's sample
/// object, its register as `meter_wh`), the session's delivered energy and running cost.
pub fn live_snapshot(
    mut reading: serde_json::Map<String, serde_json::Value>,
    session_id: &str,
    cp_id: &str,
    connector_id: u32,
    energy_wh: i64,
    running: Option<&crate::session::RunningCost>,
) -> serde_json::Value {
    use serde_json::Value;
    if let Some(r) = running {
        reading.insert(
            "cost".into(),
            serde_json::json!({"currency": r.currency, "total_minor": r.total_minor}),
        );
    }
    reading.insert("session_id".into(), Value::from(session_id));
    reading.insert("cp_id".into(), Value::from(cp_id));
    reading.insert("connector_id".into(), Value::from(connector_id));
    // the register reading becomes `meter_wh`; `energy_wh` is what the session delivered
    let register = reading.remove("energy_wh").unwrap_or(Value::Null);
    reading.insert("meter_wh".into(), register);
    reading.insert("energy_wh".into(), Value::from(energy_wh));
    Value::Object(reading)
}

/// `session.meter`'s type.
pub const SESSION_METER: &str = "session.meter";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parsed(e: &Event) -> Value {
        serde_json::from_str(&e.body()).unwrap()
    }

    #[test]
    fn auth_checked_never_names_a_connector_or_order_it_does_not_know() {
        let e = Event::AuthChecked {
            cp_id: "CP1".into(),
            connector_id: None,
            method: "otp",
            result: "invalid",
            order_id: None,
        };
        assert_eq!(e.kind(), "auth.checked");
        assert_eq!(
            parsed(&e),
            json!({"cp_id": "CP1", "method": "otp", "result": "invalid"})
        );
        assert!(!e.billable());
    }

    #[test]
    fn a_boot_without_serial_or_firmware_says_null_for_them() {
        let e = Event::ChargerBooted {
            cp_id: "CP1".into(),
            vendor: "V".into(),
            model: "M".into(),
            serial: None,
            firmware: None,
        };
        assert_eq!(parsed(&e)["serial"], Value::Null);
        assert!(parsed(&e).as_object().unwrap().contains_key("firmware"));
    }

    #[test]
    fn interrupted_and_resumed_share_a_body_and_differ_in_type() {
        let mk = |resumed| Event::SessionLink {
            session_id: "s-1".into(),
            cp_id: "CP1".into(),
            link: Link::Charger,
            resumed,
        };
        assert_eq!(mk(false).kind(), "session.interrupted");
        assert_eq!(mk(true).kind(), "session.resumed");
        assert_eq!(
            parsed(&mk(true)),
            json!({"session_id": "s-1", "cp_id": "CP1", "link": "charger"})
        );
        assert!(mk(true).billable());
    }

    #[test]
    fn meter_bodies_hold_at_most_twenty_samples_each() {
        let samples: Vec<String> = (0..45).map(|i| format!(r#"{{"energy_wh":{i}}}"#)).collect();
        let refs: Vec<&str> = samples.iter().map(String::as_str).collect();
        let bodies: Vec<Value> = meter_bodies("s\"1", &refs)
            .map(|b| serde_json::from_str(&b).unwrap())
            .collect();
        assert_eq!(bodies.len(), 3);
        assert_eq!(bodies[0]["session_id"], "s\"1");
        assert_eq!(bodies[0]["samples"].as_array().unwrap().len(), 20);
        assert_eq!(bodies[2]["samples"][4]["energy_wh"], 44);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any number of samples: bodies of 1 to 20 samples, for this session, that
            /// concatenate to the input in order.
            #[test]
            fn meter_bodies_split_into_at_most_twenty_in_order(
                n in 0usize..200,
                session_id in proptest::collection::vec(
                    proptest::sample::select(vec!['s', '-', '1', '"', '\\', '\u{e9}']), 1..12
                ).prop_map(String::from_iter),
            ) {
                let samples: Vec<String> =
                    (0..n).map(|i| format!(r#"{{"energy_wh":{i}}}"#)).collect();
                let refs: Vec<&str> = samples.iter().map(String::as_str).collect();
                let mut all = Vec::new();
                let mut bodies = 0;
                for body in meter_bodies(&session_id, &refs) {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    prop_assert_eq!(v["session_id"].as_str(), Some(session_id.as_str()));
                    let chunk = v["samples"].as_array().unwrap();
                    prop_assert!((1..=SAMPLES_PER_EVENT).contains(&chunk.len()));
                    all.extend(chunk.iter().map(|s| s["energy_wh"].as_u64().unwrap() as usize));
                    bodies += 1;
                }
                prop_assert_eq!(bodies, n.div_ceil(SAMPLES_PER_EVENT));
                prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
            }
        }
    }
}
