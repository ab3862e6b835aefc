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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn text(chars: &'static str, len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
            let chars: Vec<char> = chars.chars().collect();
            proptest::collection::vec(proptest::sample::select(chars), len)
                .prop_map(String::from_iter)
        }

        /// Rows with consecutive seqs from `first`, bodies from empty to a few KB (some
        /// with quotes and non-ASCII, escaped as the store writes them).
        fn rows() -> impl Strategy<Value = Vec<EventRow>> {
            (
                1i64..1_000_000_000,
                proptest::collection::vec(
                    (
                        proptest::sample::select(vec![
                            "session.meter",
                            "session.started",
                            "charger.status",
                        ]),
                        text("ab\"\u{e9}\u{1F50C}x ", 0..3000),
                    ),
                    0..80,
                ),
            )
                .prop_map(|(first, bodies)| {
                    bodies
                        .into_iter()
                        .enumerate()
                        .map(|(i, (kind, pad))| EventRow {
                            seq: first + i as i64,
                            kind: kind.into(),
                            at: "2026-11-21T10:00:00.000Z".into(),
                            body: serde_json::json!({ "pad": pad }).to_string(),
                        })
                        .collect()
                })
        }

        proptest! {
            /// Batches are contiguous, in seq order, cover every event exactly once, parse as
            /// the contract's `{"site":…,"events":[…]}`, and stay within `max_bytes` unless
            /// one event alone is larger (then it goes alone).
            #[test]
            fn batches_are_contiguous_ordered_complete_and_within_the_limit(
                site in text("site-01\"\u{e9}", 1..16),
                rows in rows(),
                max_bytes in 0usize..20_000,
            ) {
                let encoded: Vec<Encoded> = rows.iter().map(encode).collect();
                let mut queue: VecDeque<Encoded> = encoded.iter().cloned().collect();
                let mut seen: Vec<i64> = Vec::new();
                let mut previous_last: Option<i64> = None;
                while let Some(b) = take(&site, &mut queue, max_bytes) {
                    let v: serde_json::Value = serde_json::from_str(&b.payload).unwrap();
                    prop_assert_eq!(v["site"].as_str(), Some(site.as_str()));
                    let events = v["events"].as_array().unwrap();
                    prop_assert!(!events.is_empty());
                    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
                    prop_assert_eq!(seqs.first().copied(), Some(b.first));
                    prop_assert_eq!(seqs.last().copied(), Some(b.last));
                    prop_assert_eq!(&seqs, &(b.first..=b.last).collect::<Vec<_>>());
                    if let Some(last) = previous_last {
                        prop_assert_eq!(b.first, last + 1);
                    }
                    if b.payload.len() > max_bytes {
                        prop_assert_eq!(events.len(), 1, "an oversized batch holds one event");
                    }
                    // Greedy: the next event would not have fitted.
                    if let Some(next) = queue.front() {
                        prop_assert!(b.payload.len() + 1 + next.json.len() > max_bytes);
                    }
                    previous_last = Some(b.last);
                    seen.extend(seqs);
                }
                prop_assert!(queue.is_empty());
                prop_assert_eq!(seen, encoded.iter().map(|e| e.seq).collect::<Vec<_>>());
            }
        }
    }
}
