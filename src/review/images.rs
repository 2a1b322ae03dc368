//! The pair's images, streamed from S3 through the app (S3 URLs are never exposed): only the two
//! objects a stored pair names, only from `s3.allowed_buckets`, at most `review.max_image_bytes`, and
//! only bytes that are a JPEG, PNG or WebP. Thumbnails (`review.thumbnail_px`, JPEG) are made once
//! and kept in a memory-bounded LRU cache; both answer with an `ETag` and `Cache-Control: private`
//! (conditional requests get 304).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::auth::Authed;
use super::{AppError, AppState};
use crate::error::{RejectKind, StepError};
use crate::s3uri::S3Uri;
use crate::store::review::Side;

/// The image's MIME type from its first bytes (None: not an image the app serves).
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

fn etag(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    format!("\"{}\"", d[..12].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The object a stored pair names (`which`: original or republished).
async fn uri_of(s: &AppState, event_id: &str, which: &str) -> Result<S3Uri, AppError> {
    let side = match which {
        "original" => Side::Original,
        "republished" => Side::Republished,
        other => return Err(AppError::NotFound(format!("no image {other:?}: original or republished"))),
    };
    let uri = s.store.pair_uri(event_id, side).await?;
    let uri = uri.ok_or_else(|| AppError::NotFound(format!("no pair {event_id:?}")))?;
    S3Uri::parse(&uri).map_err(|e| AppError::BadGateway(format!("the pair's {which} URI is not valid: {e}")))
}

async fn fetch(s: &AppState, uri: &S3Uri) -> Result<Bytes, AppError> {
    match s.fetcher.fetch(uri, &CancellationToken::new()).await {
        Ok(b) => Ok(b),
        Err(StepError::Reject(r)) => Err(match r.kind {
            RejectKind::BucketNotAllowed | RejectKind::ObjectForbidden => AppError::Forbidden(r.message),
            RejectKind::ObjectMissing => AppError::NotFound(r.message),
            RejectKind::ObjectTooLarge => AppError::TooLarge(r.message),
            _ => AppError::BadGateway(r.message),
        }),
        Err(StepError::Transient(e)) => Err(AppError::BadGateway(format!("{e:#}"))),
    }
}

fn cached(etag: &str, headers: &HeaderMap) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
}

fn image_response(bytes: Bytes, mime: &'static str, etag: String, max_age: u32, headers: &HeaderMap) -> Response {
    let mut r = if cached(&etag, headers) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Body::from(bytes).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
        r
    };
    let h = r.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_str(&format!("private, max-age={max_age}")).expect("ascii"));
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("inline"));
    r
}

/// `GET /img/{event_id}/{original|republished}`: the image as stored.
pub async fn full(
    State(s): State<AppState>,
    _who: Authed,
    Path((event_id, which)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let uri = uri_of(&s, &event_id, &which).await?;
    let bytes = fetch(&s, &uri).await?;
    let mime = sniff(&bytes).ok_or_else(|| AppError::Unsupported(format!("{uri} is not a JPEG, PNG or WebP image")))?;
    let tag = etag(&bytes);
    Ok(image_response(bytes, mime, tag, 3600, &headers))
}

/// `GET /thumb/{event_id}/{original|republished}`: a JPEG at most `review.thumbnail_px` on a side.
pub async fn thumbnail(
    State(s): State<AppState>,
    _who: Authed,
    Path((event_id, which)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let uri = uri_of(&s, &event_id, &which).await?;
    let key = format!("{uri}@{}", s.cfg.review.thumbnail_px);
    let (bytes, tag) = match s.thumbs.get(&key) {
        Some(hit) => hit,
        None => {
            let original = fetch(&s, &uri).await?;
            let (limits, px) = (s.cfg.decode.clone(), s.cfg.review.thumbnail_px);
            let thumb = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, AppError> {
                let img =
                    crate::decode::decode(&original, &limits, "image").map_err(|r| AppError::Unsupported(r.message))?;
                Ok(crate::train::augment::jpeg_bytes(&img.thumbnail(px, px).to_rgb8(), 85))
            })
            .await
            .map_err(|e| AppError::Internal(e.into()))??;
            let thumb = Bytes::from(thumb);
            let tag = etag(&thumb);
            s.thumbs.put(key, thumb.clone(), tag.clone());
            (thumb, tag)
        }
    };
    Ok(image_response(bytes, "image/jpeg", tag, 86_400, &headers))
}

/// Thumbnails by key, least recently used evicted first once over the byte budget.
pub struct ThumbCache {
    budget: u64,
    inner: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<String, (Bytes, String, u64)>,
    bytes: u64,
    tick: u64,
}

impl ThumbCache {
    pub fn new(budget: u64) -> Self {
        ThumbCache { budget, inner: Mutex::new(Lru::default()) }
    }

    pub fn get(&self, key: &str) -> Option<(Bytes, String)> {
        let mut l = self.inner.lock().unwrap();
        l.tick += 1;
        let tick = l.tick;
        l.entries.get_mut(key).map(|e| {
            e.2 = tick;
            (e.0.clone(), e.1.clone())
        })
    }

    pub fn put(&self, key: String, bytes: Bytes, etag: String) {
        if bytes.len() as u64 > self.budget {
            return;
        }
        let mut l = self.inner.lock().unwrap();
        l.tick += 1;
        let tick = l.tick;
        l.bytes += bytes.len() as u64;
        if let Some(old) = l.entries.insert(key, (bytes, etag, tick)) {
            l.bytes -= old.0.len() as u64;
        }
        while l.bytes > self.budget {
            let oldest =
                l.entries.iter().min_by_key(|(_, e)| e.2).map(|(k, _)| k.clone()).expect("over budget: not empty");
            let e = l.entries.remove(&oldest).expect("present");
            l.bytes -= e.0.len() as u64;
        }
    }

    /// Bytes cached.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().unwrap().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_images_are_served() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"<svg onload=alert(1)>"), None);
        assert_eq!(sniff(b"<html>"), None);
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_within_its_budget() {
        let c = ThumbCache::new(10);
        let b = |n: usize| Bytes::from(vec![0u8; n]);
        c.put("a".into(), b(4), "ta".into());
        c.put("b".into(), b(4), "tb".into());
        assert!(c.get("a").is_some()); // a is now more recent than b
        c.put("c".into(), b(4), "tc".into());
        assert!(c.get("b").is_none(), "b was least recently used");
        assert!(c.get("a").is_some() && c.get("c").is_some());
        assert!(c.bytes() <= 10);
        c.put("huge".into(), b(11), "th".into());
        assert!(c.get("huge").is_none(), "larger than the whole budget: not cached");
    }

    #[test]
    fn conditional_requests_get_304() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\", \"abc\""));
        let r = image_response(Bytes::from_static(b"img"), "image/jpeg", "\"abc\"".into(), 60, &h);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = image_response(Bytes::from_static(b"img"), "image/jpeg", "\"def\"".into(), 60, &h);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "private, max-age=60");
    }
}
