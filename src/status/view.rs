//! `GET /api/v1/status` (docs/status.md): what the agent sees now, as one JSON body built
//! by a pure function of the state the driver gathered (store rows, the registry, the
//! uplink's figures, the disk) and `now`.
//!
//! Nothing here carries an id tag, an OTP or a secret: the row types have no field for
//! one, so the body cannot leak what it was never given.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::time::fmt_ts;

/// A charger as the store records it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChargerRow {
    /// Charger id.
    pub cp_id: String,
    /// Whether the store records it connected.
    pub online: bool,
    /// `ocpp1.6` / `ocpp2.0.1`, as last connected.
    pub ocpp_version: Option<String>,
    /// As the charger reported at boot.
    pub vendor: Option<String>,
    /// As reported.
    pub model: Option<String>,
    /// As reported.
    pub serial: Option<String>,
    /// As reported.
    pub firmware: Option<String>,
    /// Last BootNotification.
    pub booted_at: Option<String>,
    /// Last connect.
    pub connected_at: Option<String>,
    /// Last disconnect.
    pub disconnected_at: Option<String>,
    /// Why it last disconnected.
    pub disconnect_reason: Option<String>,
    /// Last connect, boot or heartbeat.
    pub last_seen: Option<String>,
    /// The charger clock's flag (e.g. `clock_ahead`), when raised.
    pub clock_flag: Option<String>,
    /// When it was raised.
    pub clock_flagged_at: Option<String>,
    /// Last FirmwareStatusNotification.
    pub firmware_status: Option<String>,
}

/// A connector's (2.0.1: an EVSE's) last status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectorState {
    /// Charger.
    pub cp_id: String,
    /// Connector (2.0.1: EVSE) id.
    pub connector_id: i64,
    /// Status.
    pub status: String,
    /// Error code.
    pub error_code: String,
    /// When received.
    pub at: String,
}

/// A running session (never its id tag).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunningSession {
    /// Site-issued session id.
    pub session_id: String,
    /// The store's transaction id (1.6: the charger's).
    pub transaction_id: i64,
    /// A 2.0.1 charger's own transaction id.
    pub charger_tx_id: Option<String>,
    /// Charger.
    pub cp_id: String,
    /// Connector (2.0.1: EVSE).
    pub connector_id: i64,
    /// Energy so far, Wh.
    pub energy_wh: i64,
    /// Latest power reading, W.
    pub power_w: Option<i64>,
    /// Running cost when a tariff applies: (currency, minor units).
    pub cost: Option<(String, i64)>,
    /// Order, if any.
    pub order_id: Option<String>,
    /// Start, charger clock.
    pub started_at: String,
    /// The session's flags (meter and clock anomalies), comma-separated.
    pub flags: String,
    /// How far the charger clock was off at the start, seconds (charger minus site).
    pub clock_skew_secs: Option<i64>,
}

/// A SecurityEventNotification (its type; never its tech info).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecurityRow {
    /// Charger.
    pub cp_id: String,
    /// The charger's event type.
    pub kind: String,
    /// When received.
    pub at: String,
}

/// A recent session with flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlaggedSession {
    /// Session.
    pub session_id: String,
    /// Charger.
    pub cp_id: String,
    /// Flags, comma-separated.
    pub flags: String,
    /// Start, site clock.
    pub at: String,
}

/// What the store read for the status body, in one cheap read on its thread.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreRows {
    /// Every charger the store knows.
    pub chargers: Vec<ChargerRow>,
    /// Every connector's last status.
    pub connectors: Vec<ConnectorState>,
    /// Running sessions.
    pub sessions: Vec<RunningSession>,
    /// Events not yet PUBACKed.
    pub backlog: i64,
    /// Newest seq issued.
    pub last_seq: i64,
    /// When the oldest unsent event was recorded.
    pub oldest_unsent_at: Option<DateTime<Utc>>,
    /// Database size (pages in use), bytes.
    pub db_bytes: u64,
    /// Latest security events reported by chargers, newest first.
    pub security_events: Vec<SecurityRow>,
    /// Latest sessions with flags, newest first.
    pub flagged_sessions: Vec<FlaggedSession>,
}

/// A refused charger connection.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedRow {
    /// When.
    pub at: DateTime<Utc>,
    /// The id in the request path, if readable.
    pub cp_id: Option<String>,
    /// Remote address.
    pub peer: String,
    /// Why.
    pub reason: String,
}

/// The live connection of a charger, from the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    /// Charger.
    pub cp_id: String,
    /// `ocpp1.6` / `ocpp2.0.1`.
    pub ocpp_version: String,
    /// The security profile the connection came with (1 ws, 2 wss + Basic, 3 mutual TLS).
    pub security_profile: u8,
}

/// Everything the status body is built from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gathered {
    /// `[site] id`.
    pub site_id: String,
    /// The agent's version.
    pub version: String,
    /// When this agent started.
    pub started_at: Option<DateTime<Utc>>,
    /// The store's rows.
    pub store: StoreRows,
    /// Chargers connected now (the registry: the truth for "online").
    pub connected: Vec<Live>,
    /// Whether an uplink is configured.
    pub uplink_configured: bool,
    /// Whether the broker connection is up.
    pub uplink_online: bool,
    /// Highest seq PUBACKed in this run (0: none).
    pub last_puback_seq: i64,
    /// `[store] quota_mb` in bytes.
    pub quota_bytes: Option<u64>,
    /// Free bytes on the store's file system, if it could be read.
    pub disk_free_bytes: Option<u64>,
    /// WAL file size, bytes.
    pub wal_bytes: Option<u64>,
    /// Recent refused connections, newest first.
    pub refused: Vec<RefusedRow>,
}

/// The `/api/v1/status` body.
pub fn status_json(g: &Gathered, now: DateTime<Utc>) -> Value {
    let chargers: Vec<Value> = g
        .store
        .chargers
        .iter()
        .map(|c| charger_json(g, c))
        .collect();
    let sessions: Vec<Value> = g.store.sessions.iter().map(session_json).collect();
    let oldest_unsent_age_secs = g
        .store
        .oldest_unsent_at
        .map(|at| (now - at).num_seconds().max(0));
    json!({
        "site": g.site_id,
        "version": g.version,
        "at": fmt_ts(now),
        "started_at": g.started_at.map(fmt_ts),
        "chargers": chargers,
        "sessions": sessions,
        "uplink": {
            "configured": g.uplink_configured,
            "online": g.uplink_online,
            "backlog": g.store.backlog,
            "oldest_unsent_age_secs": oldest_unsent_age_secs,
            "last_seq": g.store.last_seq,
            "last_puback_seq": (g.last_puback_seq > 0).then_some(g.last_puback_seq),
        },
        "store": {
            "db_bytes": g.store.db_bytes,
            "wal_bytes": g.wal_bytes,
            "quota_bytes": g.quota_bytes,
            "disk_free_bytes": g.disk_free_bytes,
        },
        "anomalies": {
            "refused_connections": g.refused.iter().map(|r| json!({
                "at": fmt_ts(r.at), "cp_id": r.cp_id, "peer": r.peer, "reason": r.reason,
            })).collect::<Vec<_>>(),
            "clock_flags": g.store.chargers.iter().filter_map(|c| c.clock_flag.as_ref().map(|f| json!({
                "cp_id": c.cp_id, "flag": f, "at": c.clock_flagged_at,
            }))).collect::<Vec<_>>(),
            "session_flags": g.store.flagged_sessions.iter().map(|s| json!({
                "session_id": s.session_id, "cp_id": s.cp_id,
                "flags": split_flags(&s.flags), "at": s.at,
            })).collect::<Vec<_>>(),
            "security_events": g.store.security_events.iter().map(|s| json!({
                "cp_id": s.cp_id, "type": s.kind, "at": s.at,
            })).collect::<Vec<_>>(),
        },
    })
}

fn split_flags(flags: &str) -> Vec<&str> {
    flags.split(',').filter(|f| !f.is_empty()).collect()
}

fn charger_json(g: &Gathered, c: &ChargerRow) -> Value {
    let live = g.connected.iter().find(|l| l.cp_id == c.cp_id);
    let online = live.is_some();
    let since = if online {
        c.connected_at.as_deref()
    } else {
        c.disconnected_at.as_deref().or(c.connected_at.as_deref())
    };
    let version = live
        .map(|l| l.ocpp_version.as_str())
        .or(c.ocpp_version.as_deref());
    let clock_offset = g
        .store
        .sessions
        .iter()
        .find(|s| s.cp_id == c.cp_id)
        .and_then(|s| s.clock_skew_secs);
    let connectors: Vec<Value> = g
        .store
        .connectors
        .iter()
        .filter(|k| k.cp_id == c.cp_id)
        .map(|k| {
            json!({"connector_id": k.connector_id, "status": k.status,
                   "error_code": k.error_code, "at": k.at})
        })
        .collect();
    json!({
        "id": c.cp_id,
        "online": online,
        "since": since,
        "disconnect_reason": if online { None } else { c.disconnect_reason.as_deref() },
        "ocpp_version": version.map(version_name),
        "security_profile": live.map(|l| l.security_profile),
        "vendor": c.vendor,
        "model": c.model,
        "serial": c.serial,
        "firmware": c.firmware,
        "firmware_status": c.firmware_status,
        "booted_at": c.booted_at,
        "last_seen": c.last_seen,
        "clock_offset_secs": clock_offset,
        "clock_flag": c.clock_flag,
        "connectors": connectors,
    })
}

/// `ocpp1.6` -> `1.6`, as the contract's events spell versions.
fn version_name(v: &str) -> &str {
    v.strip_prefix("ocpp").unwrap_or(v)
}

fn session_json(s: &RunningSession) -> Value {
    json!({
        "session_id": s.session_id,
        "transaction_id": s.charger_tx_id.as_ref().map_or_else(|| json!(s.transaction_id), |t| json!(t)),
        "cp_id": s.cp_id,
        "connector_id": s.connector_id,
        "energy_wh": s.energy_wh,
        "power_w": s.power_w,
        "cost": s.cost.as_ref().map(|(currency, minor)| json!({"currency": currency, "total_minor": minor})),
        "order_id": s.order_id,
        "started_at": s.started_at,
        "flags": split_flags(&s.flags),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn gathered() -> Gathered {
        Gathered {
            site_id: "site-001".into(),
            version: "0.1.0".into(),
            store: StoreRows {
                chargers: vec![
                    ChargerRow {
                        cp_id: "CP1".into(),
                        online: true,
                        ocpp_version: Some("ocpp1.6".into()),
                        vendor: Some("V".into()),
                        connected_at: Some("2026-11-21T10:00:00.000Z".into()),
                        ..Default::default()
                    },
                    ChargerRow {
                        cp_id: "CP2".into(),
                        online: true, // the store says so; the registry does not
                        connected_at: Some("2026-11-21T09:00:00.000Z".into()),
                        disconnected_at: Some("2026-11-21T09:30:00.000Z".into()),
                        disconnect_reason: Some("dead".into()),
                        clock_flag: Some("clock_ahead".into()),
                        ..Default::default()
                    },
                ],
                connectors: vec![ConnectorState {
                    cp_id: "CP1".into(),
                    connector_id: 1,
                    status: "Charging".into(),
                    error_code: "NoError".into(),
                    at: "2026-11-21T10:00:01.000Z".into(),
                }],
                sessions: vec![RunningSession {
                    session_id: "site-001-x-1".into(),
                    transaction_id: 1,
                    cp_id: "CP1".into(),
                    connector_id: 1,
                    energy_wh: 1500,
                    power_w: Some(7200),
                    cost: Some(("INR".into(), 2700)),
                    order_id: Some("ord-1".into()),
                    clock_skew_secs: Some(3),
                    flags: "clock_ahead,register_step".into(),
                    ..Default::default()
                }],
                backlog: 4,
                last_seq: 10,
                oldest_unsent_at: Some(at("2026-11-21T10:00:00Z")),
                db_bytes: 1 << 20,
                ..Default::default()
            },
            connected: vec![Live {
                cp_id: "CP1".into(),
                ocpp_version: "ocpp1.6".into(),
                security_profile: 2,
            }],
            uplink_configured: true,
            last_puback_seq: 6,
            ..Default::default()
        }
    }

    #[test]
    fn a_connected_charger_is_online_since_its_connect_with_its_connectors_and_session() {
        let v = status_json(&gathered(), at("2026-11-21T10:01:00Z"));
        let cp1 = &v["chargers"][0];
        assert_eq!(cp1["online"], true);
        assert_eq!(cp1["since"], "2026-11-21T10:00:00.000Z");
        assert_eq!(cp1["ocpp_version"], "1.6");
        assert_eq!(cp1["security_profile"], 2, "the live connection's profile");
        assert_eq!(cp1["clock_offset_secs"], 3);
        assert_eq!(cp1["connectors"][0]["status"], "Charging");
        let s = &v["sessions"][0];
        assert_eq!(s["energy_wh"], 1500);
        assert_eq!(s["power_w"], 7200);
        assert_eq!(s["cost"], json!({"currency": "INR", "total_minor": 2700}));
        assert_eq!(s["order_id"], "ord-1");
        assert_eq!(s["flags"], json!(["clock_ahead", "register_step"]));
    }

    #[test]
    fn the_registry_not_the_store_says_whether_a_charger_is_online() {
        let v = status_json(&gathered(), at("2026-11-21T10:01:00Z"));
        let cp2 = &v["chargers"][1];
        assert_eq!(cp2["online"], false);
        assert_eq!(cp2["since"], "2026-11-21T09:30:00.000Z");
        assert_eq!(cp2["disconnect_reason"], "dead");
        assert_eq!(v["anomalies"]["clock_flags"][0]["cp_id"], "CP2");
    }

    #[test]
    fn the_uplink_shows_its_backlog_the_oldest_unsent_age_and_the_last_puback() {
        let v = status_json(&gathered(), at("2026-11-21T10:01:00Z"));
        assert_eq!(
            v["uplink"],
            json!({"configured": true, "online": false, "backlog": 4,
                   "oldest_unsent_age_secs": 60, "last_seq": 10, "last_puback_seq": 6})
        );
        let mut none = gathered();
        none.store.oldest_unsent_at = None;
        none.last_puback_seq = 0;
        let v = status_json(&none, at("2026-11-21T10:01:00Z"));
        assert_eq!(v["uplink"]["oldest_unsent_age_secs"], Value::Null);
        assert_eq!(v["uplink"]["last_puback_seq"], Value::Null);
    }

    #[test]
    fn a_2_0_1_session_shows_the_chargers_own_transaction_id() {
        let mut g = gathered();
        g.store.sessions[0].charger_tx_id = Some("tx-abc".into());
        let v = status_json(&g, at("2026-11-21T10:01:00Z"));
        assert_eq!(v["sessions"][0]["transaction_id"], "tx-abc");
    }
}
