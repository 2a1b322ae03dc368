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
use std::fmt;

use crate::error::{RejectKind, Rejection};

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

/// An `s3://bucket/key` location.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct S3Uri {
    pub bucket: String,
    pub key: String,
}

impl S3Uri {
    /// Parses `s3://bucket/key`; the key may contain further slashes but must not be empty.
    pub fn parse(s: &str) -> Result<S3Uri, Rejection> {
        let bad = |why: &str| Rejection::new(RejectKind::BadUri, format!("{s:?} is not an s3://bucket/key URI: {why}"));
        let rest = s.strip_prefix("s3://").ok_or_else(|| bad("it must start with s3://"))?;
        let (bucket, key) = rest.split_once('/').ok_or_else(|| bad("no key after the bucket"))?;
        if bucket.is_empty() {
            return Err(bad("empty bucket"));
        }
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        let bucket_ok = bucket.len() <= 63
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(bad("bucket names are 1-63 characters of a-z, 0-9, '-' and '.'"));
        }
        if key.len() > 1024 {
            return Err(bad("key longer than 1024 bytes"));
        }
        check_key(key).map_err(|why| bad(&why))?;
        Ok(S3Uri { bucket: bucket.to_owned(), key: key.to_owned() })
    }
}

/// A key must name exactly one object of its bucket, however a server or a proxy in between
/// normalises or decodes the path: no `.` or `..` segment (S3-compatible servers resolve them, so
/// `s3://images/../private/k` would read another bucket), no empty segment and no leading `/`, no
/// backslash (a separator on some servers), no control character — neither literally nor
/// percent-encoded (`%2e%2e`, `%2F`, `%5C`, `%00`, also encoded twice).
fn check_key(key: &str) -> Result<(), String> {
    let mut form = key.to_owned();
    for round in 0..=MAX_DECODE_ROUNDS {
        let what = if round == 0 { String::new() } else { format!(" once percent-decoded {round}x") };
        if form.starts_with('/') {
            return Err(format!("the key starts with '/'{what}"));
        }
        if form.contains('\\') {
            return Err(format!("the key contains a backslash{what}"));
        }
        if let Some(c) = form.chars().find(|c| c.is_control()) {
            return Err(format!("the key contains the control character {c:?}{what}"));
        }
        if round > 0 && form.matches('/').count() != key.matches('/').count() {
            return Err("the key contains a percent-encoded '/'".into());
        }
        for segment in form.split('/') {
            match segment {
                "" => return Err(format!("the key has an empty path segment ('//' or a trailing '/'){what}")),
                "." | ".." => return Err(format!("the key has a {segment:?} path segment{what}")),
                _ => {}
            }
        }
        match percent_decode(&form) {
            Some(decoded) if decoded != form => form = decoded,
            Some(_) => return Ok(()),
            None => return Err("the key's percent-encoding does not decode to UTF-8".into()),
        }
    }
    Err(format!("the key is percent-encoded more than {MAX_DECODE_ROUNDS} times over"))
}

/// How many layers of percent-encoding [`check_key`] looks through.
const MAX_DECODE_ROUNDS: usize = 3;

/// `%XX` sequences decoded (others kept as they are); `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
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
    fn keys_that_could_leave_their_bucket_are_bad_uris() {
        for key in [
            "../private/k",
            "a/../../private/k",
            "a/./k",
            "a/..",
            ".",
            "/k",
            "a//k",
            "a/",
            "a\\..\\k",
            "a\u{0}k",
            "a\nk",
            "a\u{7f}k",
            "a\u{85}k",
            "%2e%2e/private/k",
            "%2E%2E/private/k",
            "a/%2e/k",
            "..%2Fprivate%2Fk",
            "a%2Fk",
            "a%2fk",
            "a%5Ck",
            "a%00k",
            "a%0ak",
            "%2Fk",
            "%252e%252e/private/k",
            "%25252e%25252e/k",
            "a%ff",
        ] {
            let uri = format!("s3://images/{key}");
            let r = S3Uri::parse(&uri).expect_err(&uri);
            assert_eq!(r.kind, RejectKind::BadUri, "{uri}");
            assert!(r.message.contains("the key"), "{uri}: {}", r.message);
        }
    }

    #[test]
    fn ordinary_keys_are_kept_verbatim() {
        for key in [
            "a.jpg",
            "originals/2026/11/42.jpg",
            "dir.with.dots/..hidden/x..y/...",
            "with space+plus&amp=eq?q#frag.jpg",
            "100% real.jpg",
            "%zz/%2",
            "caf\u{e9}/\u{1f600}.png",
            "a%20b.jpg",
        ] {
            let uri = format!("s3://images/{key}");
            assert_eq!(S3Uri::parse(&uri).unwrap_or_else(|r| panic!("{uri}: {}", r.message)).key, key);
        }
    }

    #[test]
    fn rejection_messages_name_the_field() {
        let r = ImagePairEvent::parse(br#"{"event_id":"e","original":"s3://b/k"}"#).unwrap_err();
        assert!(r.message.contains("republished"), "{}", r.message);
    }
}
