//! Readiness facts the running service publishes (the consumer, the pipeline, the captioner) and
//! the admin port reads (`/readyz`, `/startedz`, see [`crate::admin`]).

use std::sync::atomic::AtomicBool;

/// Readiness facts the pipeline publishes.
#[derive(Debug, Default)]
pub struct Health {
    pub group_joined: AtomicBool,
    pub model_loaded: AtomicBool,
    /// Events wait and none finished for `pipeline.stall_timeout`.
    pub stalled: AtomicBool,
    /// The group's dead-letter breaker is tripped: the consumer holds (see `dlq::breaker`).
    pub breaker_tripped: AtomicBool,
}
