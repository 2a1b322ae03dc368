//! The input event: one original/republished image pair, as JSON on the input topic.
//!
//! ```json
//! {"event_id": "e-42", "original": "s3://images/a.jpg", "republished": "s3://images/b.jpg",
//!  "source_url": "https://news.example/story", "observed_at": "2026-11-26T10:00:00Z",
//!  "attributes": {"campaign": "x"}}
//! ```
//! `event_id`, `original` and `republished` are required; `source_url`, `observed_at` and `attributes`
//! are optional; any other top-level field is kept, verbatim, inside `attributes`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::error::{RejectKind, Rejection};
pub use crate::s3uri::S3Uri;

/// Longest accepted `event_id`, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 512;

/// A parsed, validated image-pair event.
#[derive(Clone, Debug, PartialEq)]
pub struct ImagePairEvent {
    pub event_id: String,
    pub original: S3Uri,
    pub republished: S3Uri,
    pub source_url: Option<String>,
    pub observed_at: Option<DateTime<Utc>>,
    /// The `attributes` object merged with every unknown top-level field.
    pub attributes: Map<String, Value>,
}

impl ImagePairEvent {
    /// Parses and validates a payload. Every failure is a [`Rejection`] naming the offending field.
    pub fn parse(payload: &[u8]) -> Result<ImagePairEvent, Rejection> {
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| Rejection::new(RejectKind::MalformedJson, format!("payload is not valid JSON: {e}")))?;
        let Value::Object(mut obj) = value else {
            return Err(Rejection::new(RejectKind::MalformedJson, "payload is JSON but not an object"));
        };
        if let Some(path) = find_nul(&Value::Object(obj.clone()), String::new()) {
            return Err(Rejection::new(
                RejectKind::InvalidField,
                format!("{path} contains a NUL character, which PostgreSQL cannot store"),
            ));
        }

        let event_id = required_string(&mut obj, "event_id")?;
        if event_id.trim().is_empty() {
            return Err(Rejection::new(RejectKind::InvalidField, "event_id is empty"));
        }
        if event_id.len() > MAX_EVENT_ID_LEN {
            return Err(Rejection::new(
                RejectKind::InvalidField,
                format!("event_id is {} bytes long; the limit is {MAX_EVENT_ID_LEN}", event_id.len()),
            ));
        }
        let original = S3Uri::parse(&required_string(&mut obj, "original")?)?;
        let republished = S3Uri::parse(&required_string(&mut obj, "republished")?)?;
        let source_url = optional_string(&mut obj, "source_url")?;
        let observed_at = match optional_string(&mut obj, "observed_at")? {
            None => None,
            Some(s) => Some(
                DateTime::parse_from_rfc3339(&s)
                    .map_err(|e| {
                        Rejection::new(RejectKind::InvalidField, format!("observed_at {s:?} is not RFC 3339: {e}"))
                    })?
                    .with_timezone(&Utc),
            ),
        };
        let mut attributes = match obj.remove("attributes") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(Rejection::new(
                    RejectKind::InvalidField,
                    format!("attributes must be a JSON object, got {}", type_name(&other)),
                ))
            }
        };
        // Unknown top-level fields are kept; an explicit attribute of the same name wins.
        for (k, v) in obj {
            attributes.entry(k).or_insert(v);
        }
        Ok(ImagePairEvent { event_id, original, republished, source_url, observed_at, attributes })
    }
}

fn required_string(obj: &mut Map<String, Value>, field: &str) -> Result<String, Rejection> {
    match obj.remove(field) {
        None | Some(Value::Null) => {
            Err(Rejection::new(RejectKind::MissingField, format!("required field {field:?} is missing")))
        }
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(Rejection::new(
            RejectKind::InvalidField,
            format!("{field} must be a string, got {}", type_name(&other)),
        )),
    }
}

fn optional_string(obj: &mut Map<String, Value>, field: &str) -> Result<Option<String>, Rejection> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Rejection::new(
            RejectKind::InvalidField,
            format!("{field} must be a string, got {}", type_name(&other)),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Finds the first string (key or value) containing NUL, returning a JSON-path-like location.
fn find_nul(v: &Value, path: String) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(if path.is_empty() { "a value".into() } else { path }),
        Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| find_nul(x, format!("{path}[{i}]"))),
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            if k.contains('\0') {
                Some(p)
            } else {
                find_nul(x, p)
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(payload: &str) -> RejectKind {
        ImagePairEvent::parse(payload.as_bytes()).unwrap_err().kind
    }

    #[test]
    fn parses_full_event_and_keeps_unknown_fields() {
        let e = ImagePairEvent::parse(
            br#"{"event_id":"e1","original":"s3://imgs/a/b.jpg","republished":"s3://imgs/c.png",
                "source_url":"https://x.example/p","observed_at":"2026-11-26T10:00:00+01:00",
                "attributes":{"k":1},"extra":"kept","k":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(e.event_id, "e1");
        assert_eq!(e.original, S3Uri { bucket: "imgs".into(), key: "a/b.jpg".into() });
        assert_eq!(e.republished.to_string(), "s3://imgs/c.png");
        assert_eq!(e.observed_at.unwrap().to_rfc3339(), "2026-11-26T09:00:00+00:00");
        assert_eq!(e.attributes["extra"], "kept");
        assert_eq!(e.attributes["k"], 1);
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let e = ImagePairEvent::parse(br#"{"event_id":"e","original":"s3://b/k","republished":"s3://b/k2"}"#).unwrap();
        assert!(e.source_url.is_none() && e.observed_at.is_none() && e.attributes.is_empty());
    }

    #[test]
    fn classifies_bad_payloads() {
        assert_eq!(kind("not json"), RejectKind::MalformedJson);
        assert_eq!(kind("[1,2]"), RejectKind::MalformedJson);
        assert_eq!(kind(r#"{"original":"s3://b/k","republished":"s3://b/k"}"#), RejectKind::MissingField);
        assert_eq!(kind(r#"{"event_id":"e","republished":"s3://b/k"}"#), RejectKind::MissingField);
        assert_eq!(kind(r#"{"event_id":7,"original":"s3://b/k","republished":"s3://b/k"}"#), RejectKind::InvalidField);
        assert_eq!(kind(r#"{"event_id":"","original":"s3://b/k","republished":"s3://b/k"}"#), RejectKind::InvalidField);
        assert_eq!(kind(r#"{"event_id":"e","original":"http://b/k","republished":"s3://b/k"}"#), RejectKind::BadUri);
        assert_eq!(kind(r#"{"event_id":"e","original":"s3://b/","republished":"s3://b/k"}"#), RejectKind::BadUri);
        assert_eq!(kind(r#"{"event_id":"e","original":"s3://B_x/k","republished":"s3://b/k"}"#), RejectKind::BadUri);
        assert_eq!(
            kind(r#"{"event_id":"e","original":"s3://b/k","republished":"s3://b/k","observed_at":"yesterday"}"#),
            RejectKind::InvalidField
        );
        assert_eq!(
            kind(r#"{"event_id":"e","original":"s3://b/k","republished":"s3://b/k","attributes":[1]}"#),
            RejectKind::InvalidField
        );
        assert_eq!(
            kind(r#"{"event_id":"e","original":"s3://b/k","republished":"s3://b/k","attributes":{"a":"x\u0000"}}"#),
            RejectKind::InvalidField
        );
    }

    #[test]
    fn rejection_messages_name_the_field() {
        let r = ImagePairEvent::parse(br#"{"event_id":"e","original":"s3://b/k"}"#).unwrap_err();
        assert!(r.message.contains("republished"), "{}", r.message);
    }
}
