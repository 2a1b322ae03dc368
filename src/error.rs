//! Error classification for the pipeline.
//!
//! Every failure an event can meet is either a [`Rejection`] (the event itself is bad: it goes to the
//! dead-letter topic with its reason and counts as done) or a transient failure (the infrastructure is
//! unwell: the step is retried with backoff and the event's offset is never committed past).

use std::fmt;

/// Why an event was rejected. The `as_str` form is the `error.kind` header on the dead-letter topic and
/// the `kind` label of the `blip2idc_dead_lettered_total` metric, so these names are a contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// The payload is not valid JSON (or not a JSON object).
    MalformedJson,
    /// A required field (`event_id`, `original`, `republished`) is absent or null.
    MissingField,
    /// A field has the wrong type or an unacceptable value.
    InvalidField,
    /// `original`/`republished` is not an `s3://bucket/key` URI.
    BadUri,
    /// The URI names a bucket outside the configured allow-list.
    BucketNotAllowed,
    /// The object (or its bucket) does not exist.
    ObjectMissing,
    /// The object is larger than `s3.max_object_bytes`.
    ObjectTooLarge,
    /// S3 denies access to the object (403 AccessDenied: a bucket or key policy).
    ObjectForbidden,
    /// S3 cannot serve the object as asked: archived (InvalidObjectState), encrypted with a customer
    /// key (400), or its bucket answers elsewhere (301/307 redirect).
    ObjectUnavailable,
    /// Transient S3 failures outlasted `s3.retry_timeout` for this event.
    FetchFailed,
    /// The event payload is larger than `kafka.max_event_bytes`.
    EventTooLarge,
    /// The bytes are not in an image format we decode (JPEG, PNG, WebP).
    NotAnImage,
    /// The bytes claim an image format but do not decode.
    CorruptImage,
    /// The image's dimensions or decoded size exceed the decode limits (decompression bomb guard).
    ImageTooLarge,
    /// The captioner failed on this pair alone (its batch-mates succeeded).
    CaptionFailed,
    /// Decoding, preprocessing or captioning this event panicked (a bug, or an input that trips one).
    InternalError,
}

impl RejectKind {
    /// Every kind, for metric registration and documentation.
    pub const ALL: [RejectKind; 16] = [
        RejectKind::MalformedJson,
        RejectKind::MissingField,
        RejectKind::InvalidField,
        RejectKind::BadUri,
        RejectKind::BucketNotAllowed,
        RejectKind::ObjectMissing,
        RejectKind::ObjectTooLarge,
        RejectKind::ObjectForbidden,
        RejectKind::ObjectUnavailable,
        RejectKind::FetchFailed,
        RejectKind::EventTooLarge,
        RejectKind::NotAnImage,
        RejectKind::CorruptImage,
        RejectKind::ImageTooLarge,
        RejectKind::CaptionFailed,
        RejectKind::InternalError,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::MalformedJson => "malformed_json",
            RejectKind::MissingField => "missing_field",
            RejectKind::InvalidField => "invalid_field",
            RejectKind::BadUri => "bad_uri",
            RejectKind::BucketNotAllowed => "bucket_not_allowed",
            RejectKind::ObjectMissing => "object_missing",
            RejectKind::ObjectTooLarge => "object_too_large",
            RejectKind::ObjectForbidden => "object_forbidden",
            RejectKind::ObjectUnavailable => "object_unavailable",
            RejectKind::FetchFailed => "fetch_failed",
            RejectKind::EventTooLarge => "event_too_large",
            RejectKind::NotAnImage => "not_an_image",
            RejectKind::CorruptImage => "corrupt_image",
            RejectKind::ImageTooLarge => "image_too_large",
            RejectKind::CaptionFailed => "caption_failed",
            RejectKind::InternalError => "internal_error",
        }
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A permanent, per-event failure: the event goes to the dead-letter topic with this reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectKind,
    pub message: String,
}

impl Rejection {
    pub fn new(kind: RejectKind, message: impl Into<String>) -> Self {
        Rejection { kind, message: message.into() }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Rejection {}

/// The outcome of a step that can fail either way.
#[derive(Debug)]
pub enum StepError {
    /// The event is bad; dead-letter it.
    Reject(Rejection),
    /// The infrastructure is unwell; retry later, never commit past.
    Transient(anyhow::Error),
}

impl From<Rejection> for StepError {
    fn from(r: Rejection) -> Self {
        StepError::Reject(r)
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Reject(r) => write!(f, "rejected: {r}"),
            StepError::Transient(e) => write!(f, "transient: {e:#}"),
        }
    }
}

/// The text of a caught panic (`std::panic::catch_unwind`'s payload).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
