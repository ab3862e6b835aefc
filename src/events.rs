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

/// Which side of a session lost or regained its link: the session core decides it.
pub use crate::session::Link;

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
        /// `closed`, `dead`, `error`, `shutdown`, `replaced`, `protocol`, or
        /// `agent_restart` (closed at start, after a crash).
        reason: String,
        /// When the charger was last seen (RFC 3339, ms, UTC): only with `agent_restart`,
        /// where the disconnect's own `at` is the restart, not the moment it went away.
        #[serde(skip_serializing_if = "Option::is_none")]
        last_seen: Option<String>,
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
        /// 2.0.1: the EVSE (`connector_id` then names it too).
        #[serde(skip_serializing_if = "Option::is_none")]
        evse_id: Option<u32>,
        /// 2.0.1: the EVSE's connectors and their statuses.
        #[serde(skip_serializing_if = "Option::is_none")]
        connectors: Option<Vec<EvseConnector>>,
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
        /// `blocked` only: the attempts this event stands for (refused attempts while
        /// OTP entry is locked are reported in aggregate, one event per charger a minute).
        #[serde(skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
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
    /// `security.event`.
    SecurityEvent {
        /// Charger, if known.
        #[serde(skip_serializing_if = "Option::is_none")]
        cp_id: Option<String>,
        /// `charger_reported`, or the agent's own: `auth_failed`, `auth_missing`,
        /// `tls_refused`, `profile_downgrade`, `certificate_missing`,
        /// `certificate_mismatch`, `serial_mismatch`, `unknown_charger`, `throttled`,
        /// `csr_refused`.
        kind: &'static str,
        /// What happened; for `charger_reported` the charger's own `type` (e.g.
        /// `FirmwareUpdated`): `type` is the event's own.
        detail: String,
        /// `charger_reported`: the charger's `techInfo`.
        #[serde(skip_serializing_if = "Option::is_none")]
        tech_info: Option<String>,
        /// The remote address of a refused connection (the agent's own findings about
        /// a connection).
        #[serde(skip_serializing_if = "Option::is_none")]
        remote: Option<String>,
        /// Events about the same address held back by the rate limit since the last
        /// one that went (present when some were).
        #[serde(skip_serializing_if = "Option::is_none")]
        suppressed: Option<u64>,
    },
    /// `charger.csr`: a charger asks for a certificate (SignCertificate), its CSR
    /// already checked against the profile-3 binding.
    ChargerCsr {
        /// Charger.
        cp_id: String,
        /// `ChargingStationCertificate` (1.6: `ChargePointCertificate`) or `V2GCertificate`.
        certificate_type: String,
        /// The CSR, PEM.
        csr: String,
    },
    /// `reservation.held`: the charger holds the connector for the order.
    ReservationHeld {
        /// Order.
        order_id: String,
        /// Charger.
        cp_id: String,
        /// Connector (2.0.1: EVSE).
        connector_id: u32,
        /// The OCPP reservation id.
        reservation_id: i64,
        /// When it is released if nobody comes (start + grace).
        expires_at: String,
    },
    /// `reservation.released`.
    ReservationReleased {
        /// Order.
        order_id: String,
        /// Charger.
        cp_id: String,
        /// Connector (2.0.1: EVSE).
        connector_id: u32,
        /// The OCPP reservation id.
        reservation_id: i64,
        /// The expiry it had.
        expires_at: String,
        /// `used`, `no_show`, `cancelled`, `charger_refused`.
        reason: &'static str,
        /// A no-show or cancellation fee the order's tariff names.
        #[serde(skip_serializing_if = "Option::is_none")]
        cost: Option<Cost>,
        /// `charger_refused`: what the charger answered.
        #[serde(skip_serializing_if = "Option::is_none")]
        charger_status: Option<String>,
    },
    /// `site.power`: the site limit in force and how it is shared.
    SitePower {
        /// The site limit in force, W (null: none).
        max_power_w: Option<u32>,
        /// `site.power_limit`'s `until`, while a lowered limit is in force.
        #[serde(skip_serializing_if = "Option::is_none")]
        until: Option<String>,
        /// One per running session.
        allocations: Vec<PowerAllocation>,
        /// `session_started`, `session_stopped`, `limit_changed`, `charger_reconnected`,
        /// or `charger_refused` (a charger refused its profile: it is counted at its
        /// maximum and the others were reduced).
        reason: &'static str,
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

/// One session's share in `site.power`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PowerAllocation {
    /// Charger.
    pub cp_id: String,
    /// Connector (2.0.1: EVSE).
    pub connector_id: u32,
    /// The power it may draw, W (0: paused until room appears).
    pub limit_w: u32,
    /// Present (true) when the charger does not follow its profile (it refused it, or is
    /// not connected): the share is what it is assumed to draw.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub assumed: bool,
}

/// One connector of a 2.0.1 EVSE, as `connector.status` and the retained topic list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvseConnector {
    /// The connector on the EVSE.
    pub connector_id: u32,
    /// Its status.
    pub status: String,
}

/// An OCPP transaction id as its charger knows it: the agent's integer on 1.6, the
/// charger's own string on 2.0.1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TxId {
    /// OCPP 1.6: issued by the agent at StartTransaction.
    V16(i32),
    /// OCPP 2.0.1: `transactionInfo.transactionId`, chosen by the charger.
    V201(String),
}

/// The body of `session.started`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionStarted {
    /// Site-issued id.
    pub session_id: String,
    /// Charger.
    pub cp_id: String,
    /// Connector (2.0.1: the EVSE).
    pub connector_id: u32,
    /// 2.0.1: the EVSE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evse_id: Option<u32>,
    /// The OCPP transaction id.
    pub transaction_id: TxId,
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
    /// An order the BPP confirmed while the site was offline: the HOTP counter of the
    /// code that started it (the BPP binds the session to its order by it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline_counter: Option<u64>,
}

/// The body of `session.stopped`: the final bill.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionStopped {
    /// Session.
    pub session_id: String,
    /// Charger.
    pub cp_id: String,
    /// Connector (2.0.1: the EVSE).
    pub connector_id: u32,
    /// 2.0.1: the EVSE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evse_id: Option<u32>,
    /// The OCPP transaction id.
    pub transaction_id: TxId,
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
            Event::SecurityEvent { .. } => "security.event",
            Event::ChargerCsr { .. } => "charger.csr",
            Event::SitePower { .. } => "site.power",
            Event::ReservationHeld { .. } => "reservation.held",
            Event::ReservationReleased { .. } => "reservation.released",
        }
    }

    /// Billing events (`session.*`, `reservation.released`) are never dropped to make room.
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
    // a released reservation may carry a no-show or cancellation fee
    kind.starts_with("session.") || kind == "reservation.released"
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

/// The `<root>/live/<session_id>` snapshot: the latest reading (its register as
/// `meter_wh`), the session's delivered energy and running cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveSnapshot<'a> {
    /// Session.
    pub session_id: &'a str,
    /// Charger.
    pub cp_id: &'a str,
    /// Connector (2.0.1: EVSE).
    pub connector_id: u32,
    /// The latest reading; its `energy_wh` (the register) is `meter_wh` here.
    #[serde(flatten, serialize_with = "ser_reading")]
    pub reading: crate::reading::Values,
    /// Energy the session delivered so far, Wh.
    pub energy_wh: i64,
    /// The running cost, when a tariff applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<&'a crate::session::RunningCost>,
}

/// The reading without its register, which the snapshot names `meter_wh` (null when the
/// charger did not report it).
fn ser_reading<S: serde::Serializer>(v: &crate::reading::Values, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(None)?;
    m.serialize_entry("at", &crate::time::fmt_ts(v.at))?;
    m.serialize_entry("meter_wh", &v.energy_wh)?;
    for (k, x) in [
        ("current_a", v.current_a),
        ("voltage_v", v.voltage_v),
        ("soc_pct", v.soc_pct),
    ] {
        if let Some(x) = x {
            m.serialize_entry(k, &x)?;
        }
    }
    if let Some(p) = v.power_w {
        m.serialize_entry("power_w", &p)?;
    }
    m.end()
}

impl LiveSnapshot<'_> {
    /// The payload.
    pub fn body(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
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
            count: None,
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
    fn a_disconnect_names_last_seen_only_when_it_is_known() {
        let mk = |reason: &str, last_seen: Option<&str>| Event::ChargerDisconnected {
            cp_id: "CP1".into(),
            reason: reason.into(),
            last_seen: last_seen.map(String::from),
        };
        assert_eq!(
            parsed(&mk("closed", None)),
            json!({"cp_id": "CP1", "reason": "closed"})
        );
        assert_eq!(
            parsed(&mk("agent_restart", Some("2026-11-21T10:00:00.000Z"))),
            json!({"cp_id": "CP1", "reason": "agent_restart",
                   "last_seen": "2026-11-21T10:00:00.000Z"})
        );
    }

    #[test]
    fn an_interruption_by_the_agent_says_so() {
        let e = Event::SessionLink {
            session_id: "s-1".into(),
            cp_id: "CP1".into(),
            link: Link::Agent,
            resumed: false,
        };
        assert_eq!(parsed(&e)["link"], "agent");
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

    #[test]
    fn a_live_snapshot_names_the_register_meter_wh_and_the_delivered_energy_energy_wh() {
        use chrono::TimeZone;
        let reading = crate::reading::Values {
            at: chrono::Utc.timestamp_millis_opt(1_795_000_000_000).unwrap(),
            energy_wh: Some(1_002_000),
            power_w: Some(7_400),
            current_a: Some(32.0),
            voltage_v: None,
            soc_pct: None,
        };
        let cost = crate::session::RunningCost {
            currency: "INR".into(),
            total_minor: 3600,
        };
        let live = LiveSnapshot {
            session_id: "s-1",
            cp_id: "CP1",
            connector_id: 1,
            reading,
            energy_wh: 2000,
            cost: Some(&cost),
        };
        let v: Value = serde_json::from_str(&live.body()).unwrap();
        assert_eq!(
            v,
            json!({"session_id": "s-1", "cp_id": "CP1", "connector_id": 1,
                   "at": "2026-11-18T11:06:40.000Z", "meter_wh": 1_002_000, "power_w": 7400,
                   "current_a": 32.0, "energy_wh": 2000,
                   "cost": {"currency": "INR", "total_minor": 3600}})
        );
        let bare = LiveSnapshot {
            reading: crate::reading::Values {
                energy_wh: None,
                ..reading
            },
            cost: None,
            ..live
        };
        let v: Value = serde_json::from_str(&bare.body()).unwrap();
        assert_eq!(v["meter_wh"], Value::Null);
        assert!(v.get("cost").is_none());
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
