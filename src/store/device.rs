//! What an OCPP 2.0.1 charger tells about itself, as stored: its EVSEs' connectors, its
//! security events, and its device model (NotifyReport, reassembled from its parts).
//! Runs on the store thread only.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};
use serde_json::Value;

use super::chargers::note_clock;
use super::{insert_event, Ctx, StoreError};
use crate::events::{Event, EvseConnector};
use crate::session;
use crate::time::{fmt_ts, ChargerTime};

/// A connector's status on a 2.0.1 EVSE.
#[derive(Debug, Clone)]
pub struct EvseStatusIn {
    /// Charger.
    pub cp_id: String,
    /// EVSE.
    pub evse_id: u32,
    /// Connector on the EVSE.
    pub connector_id: u32,
    /// `Available`, `Occupied`, `Reserved`, `Unavailable`, `Faulted`.
    pub status: String,
    /// The charger's timestamp.
    pub charger_ts: ChargerTime,
    /// Site clock at receipt.
    pub at: DateTime<Utc>,
}

/// A security finding of the agent's own (`security.event` with the agent's `kind`).
#[derive(Debug, Clone)]
pub struct SecurityAlert {
    /// The charger, when the request named one.
    pub cp_id: Option<String>,
    /// `auth_failed`, `tls_refused`, `profile_downgrade`, … (CONTRACT §4).
    pub kind: &'static str,
    /// What happened, for a person; never a presented secret.
    pub detail: String,
    /// Remote address, for a finding about a connection.
    pub remote: Option<String>,
    /// Findings about the same address held back by the rate limit before this one.
    pub suppressed: u64,
    /// Site clock.
    pub at: DateTime<Utc>,
}

/// A charger's CSR (SignCertificate) that passed the binding checks.
#[derive(Debug, Clone)]
pub struct CsrIn {
    /// Charger.
    pub cp_id: String,
    /// Certificate type asked for.
    pub certificate_type: String,
    /// The CSR, PEM.
    pub csr: String,
    /// Site clock.
    pub at: DateTime<Utc>,
}

/// A charger's SecurityEventNotification.
#[derive(Debug, Clone)]
pub struct SecurityEventIn {
    /// Charger.
    pub cp_id: String,
    /// Its `type`.
    pub kind: String,
    /// Its `timestamp`, as sent.
    pub timestamp: String,
    /// Its `techInfo`.
    pub tech_info: Option<String>,
    /// Site clock at receipt.
    pub at: DateTime<Utc>,
}

/// One NotifyReport message.
#[derive(Debug, Clone)]
pub struct ReportPart {
    /// Charger.
    pub cp_id: String,
    /// `requestId`.
    pub request_id: i64,
    /// `seqNo`.
    pub seq_no: i64,
    /// `tbc`.
    pub tbc: bool,
    /// `reportData`, compact JSON.
    pub report_data: String,
    /// Site clock at receipt.
    pub at: DateTime<Utc>,
}

/// The status an EVSE shows as a whole: a connector in use or held makes the EVSE so;
/// otherwise it is as available as its best connector.
pub fn summary(connectors: &[EvseConnector]) -> &str {
    const ORDER: [&str; 5] = [
        "Occupied",
        "Reserved",
        "Available",
        "Unavailable",
        "Faulted",
    ];
    ORDER
        .into_iter()
        .find(|s| connectors.iter().any(|c| c.status == *s))
        .or_else(|| connectors.first().map(|c| c.status.as_str()))
        .unwrap_or("Unavailable")
}

pub(super) fn evse_status(c: &Connection, ctx: &Ctx, s: &EvseStatusIn) -> Result<(), StoreError> {
    note_clock(
        c,
        &s.cp_id,
        session::clock(&s.charger_ts, s.at, &ctx.limits),
        s.at,
    )?;
    let received = fmt_ts(s.at);
    c.prepare_cached(
        "INSERT INTO evse_connectors (cp_id, evse_id, connector_id, status, charger_ts, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (cp_id, evse_id, connector_id) DO UPDATE SET status = ?4, charger_ts = ?5,
             received_at = ?6",
    )?
    .execute(params![
        s.cp_id,
        s.evse_id,
        s.connector_id,
        s.status,
        s.charger_ts.raw,
        received
    ])?;
    let connectors = evse_connectors(c, &s.cp_id, s.evse_id)?;
    let status = summary(&connectors).to_string();
    // The EVSE is the contract's connector: its row carries the EVSE's status.
    c.prepare_cached(
        "INSERT INTO connectors (cp_id, connector_id, status, error_code, info, charger_ts, received_at)
         VALUES (?1, ?2, ?3, 'NoError', NULL, ?4, ?5)
         ON CONFLICT (cp_id, connector_id) DO UPDATE SET status = ?3, error_code = 'NoError',
             info = NULL, charger_ts = ?4, received_at = ?5",
    )?
    .execute(params![s.cp_id, s.evse_id, status, s.charger_ts.raw, received])?;
    let e = Event::ConnectorStatus {
        cp_id: s.cp_id.clone(),
        connector_id: s.evse_id,
        status,
        error_code: "NoError".into(),
        charger_ts: Some(fmt_ts(s.charger_ts.at)),
        evse_id: Some(s.evse_id),
        connectors: Some(connectors),
    };
    insert_event(c, s.at, &e)
}

/// The connectors of one EVSE, by connector id.
pub(super) fn evse_connectors(
    c: &Connection,
    cp_id: &str,
    evse_id: u32,
) -> Result<Vec<EvseConnector>, StoreError> {
    let rows = c
        .prepare_cached(
            "SELECT connector_id, status FROM evse_connectors WHERE cp_id = ?1 AND evse_id = ?2
             ORDER BY connector_id",
        )?
        .query_map(params![cp_id, evse_id], |r| {
            Ok(EvseConnector {
                connector_id: r.get(0)?,
                status: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn security_event(c: &Connection, s: &SecurityEventIn) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO security_events (cp_id, type, charger_ts_raw, tech_info, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        s.cp_id,
        s.kind,
        s.timestamp,
        s.tech_info,
        fmt_ts(s.at)
    ])?;
    let e = Event::SecurityEvent {
        cp_id: Some(s.cp_id.clone()),
        kind: "charger_reported",
        detail: s.kind.clone(),
        tech_info: s.tech_info.clone(),
        remote: None,
        suppressed: None,
    };
    insert_event(c, s.at, &e)
}

/// A CSR goes upstream as `charger.csr`, for the operator's CA to sign.
pub(super) fn charger_csr(c: &Connection, r: &CsrIn) -> Result<(), StoreError> {
    let e = Event::ChargerCsr {
        cp_id: r.cp_id.clone(),
        certificate_type: r.certificate_type.clone(),
        csr: r.csr.clone(),
    };
    insert_event(c, r.at, &e)
}

/// What the agent itself found: a refused handshake, a certificate or CSR that does not
/// name its charger, a broken serial binding. Upstream only (the table above holds what
/// chargers report).
pub(super) fn security_alert(c: &Connection, a: &SecurityAlert) -> Result<(), StoreError> {
    let e = Event::SecurityEvent {
        cp_id: a.cp_id.clone(),
        kind: a.kind,
        detail: a.detail.clone(),
        tech_info: None,
        remote: a.remote.clone(),
        suppressed: (a.suppressed > 0).then_some(a.suppressed),
    };
    insert_event(c, a.at, &e)
}

/// Stores one part; when every part `0..=last` of the request is there and the last says
/// no more follow, the report replaces the charger's device model and its parts go.
pub(super) fn report_part(c: &Connection, p: &ReportPart) -> Result<Option<usize>, StoreError> {
    c.prepare_cached(
        "INSERT INTO report_parts (cp_id, request_id, seq_no, tbc, body, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (cp_id, request_id, seq_no) DO UPDATE SET tbc = ?4, body = ?5, received_at = ?6",
    )?
    .execute(params![
        p.cp_id,
        p.request_id,
        p.seq_no,
        p.tbc,
        p.report_data,
        fmt_ts(p.at)
    ])?;
    let parts: Vec<(i64, bool, String)> = c
        .prepare_cached(
            "SELECT seq_no, tbc, body FROM report_parts WHERE cp_id = ?1 AND request_id = ?2
             ORDER BY seq_no",
        )?
        .query_map(params![p.cp_id, p.request_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let complete = parts
        .iter()
        .enumerate()
        .all(|(i, (seq, _, _))| *seq == i as i64)
        && parts.last().is_some_and(|(_, tbc, _)| !tbc);
    if !complete {
        return Ok(None);
    }
    c.prepare_cached("DELETE FROM device_model WHERE cp_id = ?1")?
        .execute(params![p.cp_id])?;
    let mut insert = c.prepare_cached(
        "INSERT INTO device_model (cp_id, key, component, variable, attribute, value, mutability,
            detail, report_id, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (cp_id, key) DO UPDATE SET value = ?6, mutability = ?7, detail = ?8",
    )?;
    let at = fmt_ts(p.at);
    for (_, _, body) in &parts {
        let data: Value = serde_json::from_str(body)?;
        for item in data.as_array().map(Vec::as_slice).unwrap_or_default() {
            let component = &item["component"];
            let variable = &item["variable"];
            let name =
                |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_string();
            let evse = component.get("evse");
            let evse_part = match evse {
                Some(e) => format!(
                    "{}.{}",
                    e.get("id").and_then(Value::as_i64).unwrap_or(0),
                    e.get("connectorId")
                        .and_then(Value::as_i64)
                        .map_or(String::new(), |c| c.to_string())
                ),
                None => String::new(),
            };
            let component_key = format!(
                "{}[{}]@{}",
                name(component, "name"),
                name(component, "instance"),
                evse_part
            );
            let variable_key =
                format!("{}[{}]", name(variable, "name"), name(variable, "instance"));
            for attr in item["variableAttribute"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let kind = attr.get("type").and_then(Value::as_str).unwrap_or("Actual");
                let key = format!("{component_key}/{variable_key}/{kind}");
                insert.execute(params![
                    p.cp_id,
                    key,
                    component_key,
                    variable_key,
                    kind,
                    attr.get("value").and_then(Value::as_str),
                    attr.get("mutability").and_then(Value::as_str),
                    item.to_string(),
                    p.request_id,
                    at
                ])?;
            }
        }
    }
    c.prepare_cached("DELETE FROM report_parts WHERE cp_id = ?1 AND request_id = ?2")?
        .execute(params![p.cp_id, p.request_id])?;
    let n: i64 = c
        .prepare_cached("SELECT count(*) FROM device_model WHERE cp_id = ?1")?
        .query_row(params![p.cp_id], |r| r.get(0))?;
    Ok(Some(n as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(status: &str) -> EvseConnector {
        EvseConnector {
            connector_id: 1,
            status: status.into(),
        }
    }

    #[test]
    fn an_evse_with_one_connector_in_use_is_occupied() {
        assert_eq!(summary(&[conn("Available"), conn("Occupied")]), "Occupied");
    }

    #[test]
    fn an_evse_is_as_available_as_its_best_connector() {
        assert_eq!(summary(&[conn("Faulted"), conn("Available")]), "Available");
        assert_eq!(
            summary(&[conn("Faulted"), conn("Unavailable")]),
            "Unavailable"
        );
        assert_eq!(summary(&[conn("Faulted")]), "Faulted");
    }
}
