//! `chargesite status` without `--json`: the status body (docs/status.md) as a few lines a
//! field engineer reads on a terminal (pure: JSON in, text out). A field the agent did not
//! send shows as `-`, so an older or newer agent still prints.

use serde_json::Value;

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn bytes(v: &Value) -> String {
    match v.as_u64() {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        Some(b) if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        Some(b) if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) => format!("{b} B"),
    }
}

/// The human-readable summary of a status body.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "site {}  (chargesite {}, at {})",
        text(&v["site"]),
        text(&v["version"]),
        text(&v["at"])
    ));
    let chargers = v["chargers"].as_array().cloned().unwrap_or_default();
    let online = chargers.iter().filter(|c| c["online"] == true).count();
    line(format!("chargers: {online} of {} online", chargers.len()));
    for c in &chargers {
        line(format!(
            "  {:<16} {:<8} since {}  OCPP {}  profile {}  {} {} fw {}  serial {}  last seen {}{}",
            text(&c["id"]),
            if c["online"] == true {
                "online"
            } else {
                "OFFLINE"
            },
            text(&c["since"]),
            text(&c["ocpp_version"]),
            text(&c["security_profile"]),
            text(&c["vendor"]),
            text(&c["model"]),
            text(&c["firmware"]),
            text(&c["serial"]),
            text(&c["last_seen"]),
            c["clock_flag"]
                .as_str()
                .map(|f| format!("  CLOCK {f}"))
                .unwrap_or_default(),
        ));
        for k in c["connectors"].as_array().into_iter().flatten() {
            line(format!(
                "    connector {}: {} ({})",
                text(&k["connector_id"]),
                text(&k["status"]),
                text(&k["error_code"])
            ));
        }
    }
    let sessions = v["sessions"].as_array().cloned().unwrap_or_default();
    line(format!("sessions running: {}", sessions.len()));
    for s in &sessions {
        let cost = match (&s["cost"]["total_minor"], &s["cost"]["currency"]) {
            (Value::Number(n), Value::String(c)) => format!("{n} {c} (minor units)"),
            _ => "-".into(),
        };
        line(format!(
            "  {} on {}/{}  tx {}  {} Wh  {} W  cost {}  order {}",
            text(&s["session_id"]),
            text(&s["cp_id"]),
            text(&s["connector_id"]),
            text(&s["transaction_id"]),
            text(&s["energy_wh"]),
            text(&s["power_w"]),
            cost,
            text(&s["order_id"]),
        ));
    }
    let u = &v["uplink"];
    line(if u["configured"] == false {
        format!(
            "uplink: not configured (buffering), backlog {}",
            text(&u["backlog"])
        )
    } else {
        format!(
            "uplink: {}, backlog {} (oldest {} s), last seq {}, last PUBACKed {}",
            if u["online"] == true {
                "online"
            } else {
                "OFFLINE"
            },
            text(&u["backlog"]),
            text(&u["oldest_unsent_age_secs"]),
            text(&u["last_seq"]),
            text(&u["last_puback_seq"]),
        )
    });
    let st = &v["store"];
    line(format!(
        "store: {} (WAL {}), quota {}, disk free {}",
        bytes(&st["db_bytes"]),
        bytes(&st["wal_bytes"]),
        bytes(&st["quota_bytes"]),
        bytes(&st["disk_free_bytes"]),
    ));
    let a = &v["anomalies"];
    for (key, what) in [
        ("refused_connections", "refused connections"),
        ("clock_flags", "clock flags"),
        ("session_flags", "flagged sessions"),
        ("security_events", "security events"),
    ] {
        let n = a[key].as_array().map_or(0, Vec::len);
        if n > 0 {
            line(format!("{what}: {n} recent (see --json)"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_summary_names_each_charger_its_connectors_sessions_uplink_and_store() {
        let v = json!({
            "site": "site-001", "version": "0.1.0", "at": "2026-11-21T10:00:00.000Z",
            "chargers": [{"id": "CP1", "online": true, "since": "2026-11-21T09:00:00.000Z",
                "ocpp_version": "1.6", "security_profile": 1, "vendor": "V", "model": "M",
                "firmware": "1.0", "serial": "SN", "last_seen": null,
                "connectors": [{"connector_id": 1, "status": "Charging", "error_code": "NoError"}]}],
            "sessions": [{"session_id": "s-1", "cp_id": "CP1", "connector_id": 1,
                "transaction_id": 7, "energy_wh": 1500, "power_w": 7200,
                "cost": {"currency": "INR", "total_minor": 2700}, "order_id": "o-1"}],
            "uplink": {"configured": true, "online": false, "backlog": 3,
                "oldest_unsent_age_secs": 12, "last_seq": 9, "last_puback_seq": 6},
            "store": {"db_bytes": 2097152, "wal_bytes": 0, "quota_bytes": 536870912,
                "disk_free_bytes": 10737418240u64},
            "anomalies": {"refused_connections": [{}]},
        });
        let s = render(&v);
        assert!(s.contains("chargers: 1 of 1 online"), "{s}");
        assert!(s.contains("CP1") && s.contains("OCPP 1.6"), "{s}");
        assert!(s.contains("connector 1: Charging (NoError)"), "{s}");
        assert!(s.contains("1500 Wh  7200 W  cost 2700 INR"), "{s}");
        assert!(
            s.contains("uplink: OFFLINE, backlog 3 (oldest 12 s)"),
            "{s}"
        );
        assert!(s.contains("store: 2.0 MiB"), "{s}");
        assert!(s.contains("refused connections: 1 recent"), "{s}");
    }

    #[test]
    fn a_body_missing_fields_still_renders() {
        let s = render(&json!({}));
        assert!(s.contains("chargers: 0 of 0 online"), "{s}");
    }
}
