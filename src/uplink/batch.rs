//! Events batches, pure: stored rows in, `{"site":…,"events":[…]}` payloads out, each no
//! larger than the configured limit and in `seq` order.

use crate::events::EventRow;

/// One event encoded for the wire, with its seq.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The event's seq.
    pub seq: i64,
    /// `{"seq":…,"type":…,"at":…,…}`.
    pub json: String,
}

/// Encodes a stored row: seq, type and at first, then the stored fields.
pub fn encode(row: &EventRow) -> Encoded {
    let mut json = String::with_capacity(row.body.len() + row.kind.len() + 64);
    json.push_str("{\"seq\":");
    json.push_str(&row.seq.to_string());
    json.push_str(",\"type\":");
    json.push_str(&serde_json::Value::from(row.kind.as_str()).to_string());
    json.push_str(",\"at\":\"");
    json.push_str(&row.at);
    json.push('"');
    let inner = row.body.trim();
    let inner = inner
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or("")
        .trim();
    if !inner.is_empty() {
        json.push(',');
        json.push_str(inner);
    }
    json.push('}');
    Encoded { seq: row.seq, json }
}

/// A payload ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// First seq in it.
    pub first: i64,
    /// Last seq in it.
    pub last: i64,
    /// The JSON payload.
    pub payload: String,
}

/// Takes events from the front of `queue` into one batch of at most `max_bytes`. An event
/// too large to share a batch goes alone (the store keeps events far smaller than the
/// smallest allowed limit, so this is a guard, not a path).
pub fn take(
    site: &str,
    queue: &mut std::collections::VecDeque<Encoded>,
    max_bytes: usize,
) -> Option<Batch> {
    let head = format!("{{\"site\":{},\"events\":[", serde_json::Value::from(site));
    let tail = "]}";
    let first = queue.front()?.seq;
    let mut payload = String::with_capacity(max_bytes.min(1 << 20));
    payload.push_str(&head);
    let mut last = first;
    let mut count = 0;
    while let Some(next) = queue.front() {
        let extra = next.json.len() + usize::from(count > 0);
        if count > 0 && payload.len() + extra + tail.len() > max_bytes {
            break;
        }
        if count > 0 {
            payload.push(',');
        }
        payload.push_str(&next.json);
        last = next.seq;
        count += 1;
        queue.pop_front();
    }
    payload.push_str(tail);
    Some(Batch {
        first,
        last,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn row(seq: i64, body: &str) -> EventRow {
        EventRow {
            seq,
            kind: "session.meter".into(),
            at: "2026-11-21T10:00:00.000Z".into(),
            body: body.into(),
        }
    }

    #[test]
    fn an_event_is_seq_type_at_and_its_fields() {
        let e = encode(&row(7, r#"{"session_id":"s-1"}"#));
        let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["type"], "session.meter");
        assert_eq!(v["at"], "2026-11-21T10:00:00.000Z");
        assert_eq!(v["session_id"], "s-1");
        assert_eq!(
            encode(&row(1, "{}")).json,
            r#"{"seq":1,"type":"session.meter","at":"2026-11-21T10:00:00.000Z"}"#
        );
    }

    #[test]
    fn batches_never_exceed_the_limit_and_keep_seq_order() {
        let mut q: VecDeque<Encoded> = (1..=500)
            .map(|i| {
                encode(&row(
                    i,
                    &format!(
                        r#"{{"session_id":"s-{i}","pad":"{}"}}"#,
                        "x".repeat(i as usize % 90)
                    ),
                ))
            })
            .collect();
        let mut seen = Vec::new();
        while let Some(b) = take("site-001", &mut q, 4096) {
            assert!(b.payload.len() <= 4096, "{}", b.payload.len());
            let v: serde_json::Value = serde_json::from_str(&b.payload).unwrap();
            assert_eq!(v["site"], "site-001");
            for e in v["events"].as_array().unwrap() {
                seen.push(e["seq"].as_i64().unwrap());
            }
            assert_eq!(
                b.first,
                seen[seen.len() - v["events"].as_array().unwrap().len()]
            );
            assert_eq!(b.last, *seen.last().unwrap());
        }
        assert_eq!(seen, (1..=500).collect::<Vec<_>>());
    }
}
