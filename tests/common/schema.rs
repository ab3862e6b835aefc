//! The official OCPP 2.0.1 JSON schemas (OCA, as the PyPI `ocpp` 2.1.0 package ships them
//! in `ocpp/v201/schemas`, copied unchanged to `tests/schemas/ocpp201/`) and a checker for
//! the part of JSON Schema they use: `type`, `properties`, `required`,
//! `additionalProperties: false`, `enum`, `maxLength`, `minItems`/`maxItems`, `minimum`,
//! `items` and `$ref` into `definitions`. Formats (`date-time`) are not checked.
//!
//! Shared by the unit tests of `src/ocpp/commands.rs` (through `#[path]`) and the
//! integration tests, so both judge payloads by the same text.

#![allow(dead_code)]

use serde_json::Value;

/// The request (`Request`) or response (`Response`) schema of `action`.
pub fn schema(action: &str, kind: &str) -> Value {
    let path = format!(
        "{}/tests/schemas/ocpp201/{action}{kind}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every way `payload` breaks the official 2.0.1 schema of `action`'s request.
pub fn request_violations(action: &str, payload: &Value) -> Vec<String> {
    violations(&schema(action, "Request"), payload)
}

/// Every way `payload` breaks the official 2.0.1 schema of `action`'s response.
pub fn response_violations(action: &str, payload: &Value) -> Vec<String> {
    violations(&schema(action, "Response"), payload)
}

/// Every way `value` breaks `root` (empty when it conforms).
pub fn violations(root: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(root, root, value, "$", &mut out);
    out
}

fn check(root: &Value, schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/definitions/")
            .unwrap_or_else(|| panic!("unsupported $ref {r}"));
        let target = &root["definitions"][name];
        assert!(!target.is_null(), "no definition {name}");
        return check(root, target, value, path, out);
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "number" => value.is_number(),
            "integer" => {
                value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            other => panic!("unsupported type {other}"),
        };
        if !ok {
            out.push(format!("{path}: not of type {t}: {value}"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            out.push(format!("{path}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(max), Some(s)) = (
        schema.get("maxLength").and_then(Value::as_u64),
        value.as_str(),
    ) {
        if s.chars().count() as u64 > max {
            out.push(format!("{path}: longer than {max} characters"));
        }
    }
    if let (Some(min), Some(n)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) {
        if n < min {
            out.push(format!("{path}: {n} below the minimum {min}"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if (items.len() as u64) < min {
                out.push(format!("{path}: fewer than {min} items"));
            }
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if items.len() as u64 > max {
                out.push(format!("{path}: more than {max} items"));
            }
        }
        if let Some(item) = schema.get("items") {
            for (i, v) in items.iter().enumerate() {
                check(root, item, v, &format!("{path}[{i}]"), out);
            }
        }
    }
    if let Some(obj) = value.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    out.push(format!("{path}: `{r}` is required"));
                }
            }
        }
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(root, s, v, &format!("{path}.{k}"), out),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    out.push(format!("{path}: `{k}` is not allowed"));
                }
                None => {}
            }
        }
    }
}
