//! S3 locations: [`S3Uri`] (one object, `s3://bucket/key`, checked so that it names exactly one object
//! of its bucket however a server normalises it) and [`S3Prefix`] (`s3://bucket/prefix/`, where an
//! adapter's files live). The one parser of `s3://` strings in the crate.

use std::fmt;

use crate::error::{RejectKind, Rejection};

/// An `s3://bucket/key` location.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct S3Uri {
    pub bucket: String,
    pub key: String,
}

/// Why a string is not an [`S3Uri`] (or an [`S3Prefix`]): the input and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an s3://bucket/{what} URI: {why}")]
pub struct S3UriError {
    pub input: String,
    /// `key` or `prefix`.
    what: &'static str,
    pub why: String,
}

/// A pipeline rejection (`bad_uri`): an event named an object this service will not read.
impl From<S3UriError> for Rejection {
    fn from(e: S3UriError) -> Rejection {
        Rejection::new(RejectKind::BadUri, e.to_string())
    }
}

/// S3's bucket naming rule as enforced here: 1-63 characters of `a-z`, `0-9`, `-` and `.`.
pub fn valid_bucket(bucket: &str) -> bool {
    (1..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// `s3://bucket/rest` → (bucket, rest), the bucket checked; `rest` is `None` without a `/`.
fn split<'a>(s: &'a str, what: &'static str) -> Result<(&'a str, Option<&'a str>), S3UriError> {
    let bad = |why: &str| S3UriError { input: s.to_owned(), what, why: why.to_owned() };
    let rest = s.strip_prefix("s3://").ok_or_else(|| bad("it must start with s3://"))?;
    let (bucket, tail) = match rest.split_once('/') {
        Some((b, t)) => (b, Some(t)),
        None => (rest, None),
    };
    if bucket.is_empty() {
        return Err(bad("empty bucket"));
    }
    if !valid_bucket(bucket) {
        return Err(bad("bucket names are 1-63 characters of a-z, 0-9, '-' and '.'"));
    }
    Ok((bucket, tail))
}

impl S3Uri {
    /// Parses `s3://bucket/key`; the key may contain further slashes but must not be empty, and must
    /// name exactly one object however it is normalised on the way (`check_key`).
    pub fn parse(s: &str) -> Result<S3Uri, S3UriError> {
        let bad = |why: &str| S3UriError { input: s.to_owned(), what: "key", why: why.to_owned() };
        let (bucket, key) = split(s, "key")?;
        let key = key.ok_or_else(|| bad("no key after the bucket"))?;
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        if key.len() > 1024 {
            return Err(bad("key longer than 1024 bytes"));
        }
        check_key(key).map_err(|why| bad(&why))?;
        Ok(S3Uri { bucket: bucket.to_owned(), key: key.to_owned() })
    }
}

/// An `s3://bucket/prefix/` location under which objects are named: where an adapter's files live.
/// The prefix is empty or ends in `/`; it comes from this service's own registry, so it is not held
/// to `check_key` (objects made under it are checked when they are used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Prefix {
    pub bucket: String,
    pub prefix: String,
}

impl S3Prefix {
    /// Parses `s3://bucket[/prefix[/]]`, adding the trailing `/` a non-empty prefix lacks.
    pub fn parse(s: &str) -> Result<S3Prefix, S3UriError> {
        let (bucket, prefix) = split(s, "prefix")?;
        let prefix = prefix.unwrap_or("");
        let prefix = if prefix.is_empty() || prefix.ends_with('/') { prefix.to_owned() } else { format!("{prefix}/") };
        Ok(S3Prefix { bucket: bucket.to_owned(), prefix })
    }

    /// The object `name` under this prefix.
    pub fn object(&self, name: &str) -> S3Uri {
        S3Uri { bucket: self.bucket.clone(), key: format!("{}{name}", self.prefix) }
    }
}

impl fmt::Display for S3Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
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

#[cfg(test)]
mod tests {
    use super::*;

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
            let r = Rejection::from(S3Uri::parse(&uri).expect_err(&uri));
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
            assert_eq!(S3Uri::parse(&uri).unwrap_or_else(|r| panic!("{uri}: {r}")).key, key);
        }
    }

    #[test]
    fn prefixes_end_in_a_slash_and_name_their_objects() {
        let p = S3Prefix::parse("s3://b/adapters/v1").unwrap();
        assert_eq!((p.bucket.as_str(), p.prefix.as_str()), ("b", "adapters/v1/"));
        assert_eq!(S3Prefix::parse("s3://b/adapters/v1/").unwrap(), p);
        assert_eq!(p.object("adapter_config.json").to_string(), "s3://b/adapters/v1/adapter_config.json");
        assert_eq!(p.to_string(), "s3://b/adapters/v1/");
        assert_eq!(S3Prefix::parse("s3://b").unwrap().prefix, "");
        for bad in ["http://b/x", "s3:///x", "s3://Bucket/x", "s3://b_b/x"] {
            let e = S3Prefix::parse(bad).expect_err(bad);
            assert!(e.to_string().starts_with(&format!("{bad:?} is not an s3://bucket/prefix URI: ")), "{e}");
        }
    }

    #[test]
    fn buckets_follow_the_naming_rule() {
        for ok in ["images", "a", "my-bucket.eu", &"x".repeat(63)] {
            assert!(valid_bucket(ok), "{ok}");
        }
        for bad in ["", "Images", "a_b", "a/b", &"x".repeat(64)] {
            assert!(!valid_bucket(bad), "{bad}");
        }
    }
}
