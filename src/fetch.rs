//! The fetcher: both images of a pair from S3, concurrently, bounded, with retries.
//!
//! Guarantees: an event can only read buckets on the allow-list; an object larger than
//! `s3.max_object_bytes` is refused before (Content-Length) and while (streamed count) it is read;
//! errors that belong to the object are rejections at once (404 missing, 403 AccessDenied,
//! InvalidObjectState, other 4xx such as SSE-C, 3xx redirects); everything that can heal (5xx,
//! throttling, timeouts, connection errors, expired or rotating credentials) is retried with capped
//! exponential backoff and jitter, for at most `s3.retry_timeout` per event (then `fetch_failed`), or
//! until the service's hard deadline cancels it. When one image of a pair is rejected the other's
//! fetch is dropped at once.

use std::collections::HashSet;
use std::time::Instant;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;

use crate::config::S3Config;
use crate::error::{RejectKind, Rejection, StepError};
use crate::retry::{Backoff, GaveUp, Retry};
use crate::s3uri::S3Uri;

/// S3 client plus the policy around it.
#[derive(Clone)]
pub struct Fetcher {
    client: Client,
    allowed: HashSet<String>,
    max_bytes: u64,
    backoff: Backoff,
    retry_timeout: std::time::Duration,
}

/// Builds an S3 client for `cfg` (custom endpoint, path style, timeouts; SDK retries off: the fetcher
/// owns the retry policy). Credentials come from the AWS default chain (env, profile, web identity).
pub async fn s3_client(cfg: &S3Config) -> Client {
    client_for(&sdk_config(cfg).await, cfg)
}

/// The AWS settings of [`s3_client`] (credentials chain, timeouts, HTTPS connector).
async fn sdk_config(cfg: &S3Config) -> aws_config::SdkConfig {
    // HTTPS through rustls + ring (see Cargo.toml); the SDK's default would be aws-lc.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(cfg.region.clone()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(cfg.connect_timeout)
                .operation_attempt_timeout(cfg.request_timeout)
                .build(),
        )
        .retry_config(RetryConfig::disabled())
        .load()
        .await
}

fn client_for(sdk: &aws_config::SdkConfig, cfg: &S3Config) -> Client {
    let mut b = aws_sdk_s3::config::Builder::from(sdk).force_path_style(cfg.force_path_style);
    if let Some(ep) = &cfg.endpoint {
        b = b.endpoint_url(ep);
    }
    Client::from_conf(b.build())
}

/// Reads objects outside the pipeline (`blip2idc caption s3://...`): the service's [`Fetcher`] (same
/// allow-list, size cap and retries) with a deadline of three request timeouts per object, and errors
/// that say what to set when the credentials or the endpoint are missing. Connect once, read many.
pub struct ObjectReader {
    fetcher: Fetcher,
    endpoint: String,
    deadline: std::time::Duration,
}

impl ObjectReader {
    /// Builds the client and resolves the credentials once (an error names what to set).
    pub async fn connect(cfg: &S3Config) -> anyhow::Result<ObjectReader> {
        let sdk = sdk_config(cfg).await;
        let found = match sdk.credentials_provider() {
            Some(p) => {
                use aws_sdk_s3::config::ProvideCredentials;
                p.provide_credentials().await.map(|_| ()).map_err(|e| e.to_string())
            }
            None => Err("no credentials provider".into()),
        };
        if let Err(e) = found {
            anyhow::bail!(
                "no AWS credentials for S3 ({e}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
                 AWS_PROFILE, or a web identity (the AWS default chain)"
            );
        }
        let endpoint = match &cfg.endpoint {
            Some(e) => format!("the S3 endpoint {e}"),
            None => format!(
                "AWS S3 in {} (no s3.endpoint / BLIP2IDC_S3__ENDPOINT is set: set it for another S3 server)",
                cfg.region
            ),
        };
        Ok(ObjectReader {
            fetcher: Fetcher::new(client_for(&sdk, cfg), cfg),
            endpoint,
            deadline: cfg.request_timeout * 3,
        })
    }

    /// The bytes of `uri`.
    pub async fn read(&self, uri: &S3Uri) -> anyhow::Result<Bytes> {
        let cancel = CancellationToken::new();
        match tokio::time::timeout(self.deadline, self.fetcher.fetch(uri, &cancel)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => anyhow::bail!("reading {uri} from {}: {e}", self.endpoint),
            Err(_) => {
                cancel.cancel();
                anyhow::bail!("reading {uri}: no answer from {} within {:?}", self.endpoint, self.deadline)
            }
        }
    }
}

impl Fetcher {
    pub fn new(client: Client, cfg: &S3Config) -> Self {
        Fetcher {
            client,
            allowed: cfg.allowed_buckets.iter().cloned().collect(),
            max_bytes: cfg.max_object_bytes,
            backoff: Backoff::new(cfg.retry_initial_backoff, cfg.retry_max_backoff),
            retry_timeout: cfg.retry_timeout,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Fetches both objects concurrently. A rejection of either rejects the pair at once (the other
    /// fetch, perhaps waiting out retries, is dropped).
    pub async fn fetch_pair(
        &self,
        original: &S3Uri,
        republished: &S3Uri,
        cancel: &CancellationToken,
    ) -> Result<(Bytes, Bytes), StepError> {
        let started = Instant::now();
        let pair = futures::future::try_join(self.fetch(original, cancel), self.fetch(republished, cancel)).await;
        metrics::histogram!(crate::metrics::FETCH_SECONDS).record(started.elapsed().as_secs_f64());
        pair
    }

    /// [`fetch_pair`](Self::fetch_pair) within a byte budget: twice `s3.max_object_bytes` is reserved
    /// before the GETs start, then shrunk to the bytes received; the reservation comes back with them.
    pub async fn fetch_pair_within(
        &self,
        original: &S3Uri,
        republished: &S3Uri,
        cancel: &CancellationToken,
        budget: &crate::budget::ByteBudget,
    ) -> Result<((Bytes, Bytes), crate::budget::Reservation), StepError> {
        let mut reservation = tokio::select! {
            r = budget.fetch(2 * self.max_bytes) => r,
            _ = cancel.cancelled() => return Err(StepError::Transient(anyhow::anyhow!("cancelled waiting for memory"))),
        };
        let (a, b) = self.fetch_pair(original, republished, cancel).await?;
        reservation.shrink_to((a.len() + b.len()) as u64);
        Ok(((a, b), reservation))
    }

    /// [`fetch`](Self::fetch), with a missing object as `None` rather than a rejection.
    pub async fn fetch_if_exists(&self, uri: &S3Uri, cancel: &CancellationToken) -> Result<Option<Bytes>, StepError> {
        match self.fetch(uri, cancel).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StepError::Reject(r)) if r.kind == RejectKind::ObjectMissing => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Fetches one object, retrying transient failures until `cancel` fires.
    pub async fn fetch(&self, uri: &S3Uri, cancel: &CancellationToken) -> Result<Bytes, StepError> {
        if !self.allowed.contains(&uri.bucket) {
            return Err(Rejection::new(
                RejectKind::BucketNotAllowed,
                format!("bucket {:?} of {uri} is not in s3.allowed_buckets", uri.bucket),
            )
            .into());
        }
        let retry = Retry::new("fetch", self.backoff).cancelled_by(cancel).for_at_most(self.retry_timeout).about(uri);
        match retry.run(|| self.get_once(uri), |e| matches!(e, StepError::Transient(_))).await {
            Ok(bytes) => Ok(bytes),
            Err(GaveUp::Cancelled(StepError::Transient(e))) => {
                Err(StepError::Transient(e.context("cancelled while retrying")))
            }
            Err(GaveUp::Exhausted { retries, last, .. }) => {
                let e = match last {
                    StepError::Transient(e) => format!("{e:#}"),
                    other => other.to_string(),
                };
                Err(Rejection::new(
                    RejectKind::FetchFailed,
                    format!(
                        "still failing after {retries} retries over {:?} (s3.retry_timeout): {e}",
                        self.retry_timeout
                    ),
                )
                .into())
            }
            Err(gave_up) => Err(gave_up.into_last()),
        }
    }

    async fn get_once(&self, uri: &S3Uri) -> Result<Bytes, StepError> {
        let out = match self.client.get_object().bucket(&uri.bucket).key(&uri.key).send().await {
            Ok(out) => out,
            Err(e) => return Err(classify(uri, e)),
        };
        if let Some(len) = out.content_length() {
            if len as u64 > self.max_bytes {
                return Err(too_large(uri, len as u64, self.max_bytes));
            }
        }
        let capacity = out.content_length().unwrap_or(0).max(0) as usize;
        let mut body = out.body;
        let mut buf = BytesMut::with_capacity(capacity);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StepError::Transient(anyhow::anyhow!("reading body of {uri}: {e}")))?;
            if (buf.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(too_large(uri, (buf.len() + chunk.len()) as u64, self.max_bytes));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

fn too_large(uri: &S3Uri, len: u64, max: u64) -> StepError {
    Rejection::new(RejectKind::ObjectTooLarge, format!("{uri} is {len} bytes or more; s3.max_object_bytes is {max}"))
        .into()
}

fn classify<E, R>(uri: &S3Uri, err: SdkError<E, R>) -> StepError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static + HasStatus,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status_code();
            let code = ctx.err().code().unwrap_or("");
            let message = ctx.err().message().unwrap_or("");
            match classify_status(status, code) {
                Some(kind) => {
                    let what = match (kind, code) {
                        (RejectKind::ObjectMissing, "NoSuchBucket") => "the bucket does not exist".to_owned(),
                        (RejectKind::ObjectMissing, _) => "no such object".to_owned(),
                        _ => format!("HTTP {status} {code}: {message}"),
                    };
                    Rejection::new(kind, format!("{uri}: {what}")).into()
                }
                None => StepError::Transient(anyhow::anyhow!("GET {uri}: HTTP {status} {code}: {message}")),
            }
        }
        SdkError::TimeoutError(_) => StepError::Transient(anyhow::anyhow!("GET {uri}: timed out")),
        _ => StepError::Transient(anyhow::anyhow!("GET {uri}: {}", aws_sdk_s3::error::DisplayErrorContext(&err))),
    }
}

/// Which S3 answers condemn the object rather than the moment: `None` means retry.
///
/// Transient: 5xx, 408, 429 and S3's throttling codes, and the credential and clock errors that
/// concern every request alike and heal with a rotation or an NTP sync (ExpiredToken,
/// InvalidAccessKeyId, SignatureDoesNotMatch, RequestTimeTooSkewed, ...; a deploy with bad
/// credentials stalls and shows on `/readyz` instead of emptying the topic into the dead-letter queue).
/// Everything else in 3xx/4xx is about this object: 404 → `object_missing`, 403 AccessDenied →
/// `object_forbidden`, InvalidObjectState, other 4xx (e.g. SSE-C) and redirects → `object_unavailable`.
pub fn classify_status(status: u16, code: &str) -> Option<RejectKind> {
    const CREDENTIALS: [&str; 8] = [
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidToken",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "RequestTimeTooSkewed",
        "AuthorizationHeaderMalformed",
        "InvalidSecurity",
    ];
    const THROTTLING: [&str; 4] = ["SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"];
    if status >= 500 || status == 408 || status == 429 || THROTTLING.contains(&code) || CREDENTIALS.contains(&code) {
        return None;
    }
    if status == 404 || matches!(code, "NoSuchKey" | "NoSuchBucket" | "NotFound") {
        return Some(RejectKind::ObjectMissing);
    }
    if code == "InvalidObjectState" {
        return Some(RejectKind::ObjectUnavailable);
    }
    if status == 403 {
        return Some(RejectKind::ObjectForbidden);
    }
    if (300..500).contains(&status) {
        return Some(RejectKind::ObjectUnavailable);
    }
    None
}

/// The HTTP status of a raw response (a seam so `classify` stays generic over the SDK's response type).
pub trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_object_errors_are_rejections_and_the_rest_is_retried() {
        let cases = [
            (404, "NoSuchKey", Some(RejectKind::ObjectMissing)),
            (404, "NoSuchBucket", Some(RejectKind::ObjectMissing)),
            (403, "AccessDenied", Some(RejectKind::ObjectForbidden)),
            (403, "", Some(RejectKind::ObjectForbidden)),
            (403, "InvalidObjectState", Some(RejectKind::ObjectUnavailable)),
            (400, "InvalidRequest", Some(RejectKind::ObjectUnavailable)),
            (400, "InvalidArgument", Some(RejectKind::ObjectUnavailable)),
            (301, "PermanentRedirect", Some(RejectKind::ObjectUnavailable)),
            (307, "TemporaryRedirect", Some(RejectKind::ObjectUnavailable)),
            (500, "InternalError", None),
            (503, "SlowDown", None),
            (503, "ServiceUnavailable", None),
            (429, "", None),
            (408, "RequestTimeout", None),
            (400, "ExpiredToken", None),
            (403, "InvalidAccessKeyId", None),
            (403, "SignatureDoesNotMatch", None),
            (403, "RequestTimeTooSkewed", None),
        ];
        for (status, code, want) in cases {
            assert_eq!(classify_status(status, code), want, "HTTP {status} {code}");
        }
    }
}
