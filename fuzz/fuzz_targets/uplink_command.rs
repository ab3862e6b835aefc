//! `uplink::commands::parse` on arbitrary bytes. Beyond "no panic": the stored form never
//! holds an OTP or a shared key in clear. When the input is a JSON object, its `otp` is stored only as
//! `hmac-sha256:<hex>` (or `<invalid>`); when it is anything else, an `"otp":"<4+ digits>"`
//! written in it is not found again, verbatim, in what is stored.
#![no_main]

use chargesite::auth::Secret;
use chargesite::uplink::commands::parse;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Every `"otp":"<digits>"` (4 or more digits, any blanks around the colon) written
/// verbatim in `text`, as written.
fn clear_otps(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("\"otp\"") {
        let start = from + i;
        from = start + 5;
        let rest = &text[from..];
        let after_key = rest.trim_start();
        let Some(after) = after_key.strip_prefix(':') else {
            continue;
        };
        let after = after.trim_start();
        let Some(value) = after.strip_prefix('"') else {
            continue;
        };
        let Some(close) = value.find('"') else {
            continue;
        };
        let digits = &value[..close];
        if digits.len() >= 4 && digits.bytes().all(|b| b.is_ascii_digit()) {
            let end = text.len() - value.len() + close + 1;
            out.push(&text[start..end]);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let secret = Secret::from_bytes([7; 32]);
    let parsed = parse(data, &secret);
    if let Some(id) = &parsed.id {
        assert!(!id.is_empty() && id.len() <= 128);
    }
    if let Ok(Value::Object(input)) = serde_json::from_slice::<Value>(data) {
        // A command: its own `otp` field is replaced (a nested one is not an OTP field).
        let stored: Value = serde_json::from_str(&parsed.stored).expect("stored form is JSON");
        match (input.get("otp"), stored.get("otp")) {
            (None, None) => {}
            (Some(_), Some(Value::String(s))) => {
                assert!(s.starts_with("hmac-sha256:") || s == "<invalid>", "{s}")
            }
            other => panic!("otp not redacted: {other:?}"),
        }
        // Nor a shared key (`offline_orders.configure`).
        match (input.get("key"), stored.get("key")) {
            (None, None) => {}
            (Some(_), Some(Value::String(s))) => assert_eq!(s, "<redacted>"),
            other => panic!("key not redacted: {other:?}"),
        }
        return;
    }
    // Not a command object (not JSON, an array, a string…): nothing in it may come back
    // in clear either.
    let input = String::from_utf8_lossy(data);
    for written in clear_otps(&input) {
        assert!(
            !parsed.stored.contains(written),
            "OTP stored in clear ({written}): {}",
            parsed.stored
        );
    }
});
