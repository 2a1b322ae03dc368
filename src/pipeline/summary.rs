//! How a run of the pipeline ends: what was committed, and why it stopped when it stopped itself.

use crate::error::Rejection;

/// How a run ended.
#[derive(Debug)]
pub struct RunSummary {
    /// Positions committed at shutdown.
    pub committed: Vec<(crate::source::offsets::TopicPartition, i64)>,
    /// Set when the pipeline stopped itself (breaker, dead captioner).
    pub fatal: Option<Fatal>,
    /// True when in-flight work did not finish within the drain timeout.
    pub drain_timed_out: bool,
}

impl RunSummary {
    /// The process exit code for this ending: 0 after a clean drain, 3 when the dead-letter breaker
    /// tripped, 4 when the drain timed out (events were left unfinished, to be redelivered), 1 when
    /// the pipeline failed.
    pub fn exit_code(&self) -> u8 {
        match &self.fatal {
            Some(Fatal::BreakerTripped { .. } | Fatal::BreakerHeld { .. }) => 3,
            Some(Fatal::CaptionerFailed(_) | Fatal::StoreStepEnded(_)) => 1,
            None if self.drain_timed_out => 4,
            None => 0,
        }
    }
}

/// Why the pipeline stopped on its own.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Fatal {
    /// The dead-letter ratio went over `dlq.breaker_max_ratio`.
    #[error(
        "dead-letter breaker tripped: {:.0}% of the last {events} events were rejected (last: {last}); \
         consumption stopped so the input is not emptied into the dead-letter topic — fix the cause \
         (config, credentials, deploy) and restart; unhandled events will be redelivered",
        ratio * 100.0
    )]
    BreakerTripped { ratio: f64, events: usize, last: Rejection },
    /// The group's breaker was tripped (by this consumer before a restart, or by another replica).
    #[error(
        "the dead-letter breaker of this consumer group was tripped by {tripped_by} ({reason}); \
         consumption stopped — fix the cause, then `blip2idc breaker reset`"
    )]
    BreakerHeld { reason: String, tripped_by: String },
    /// The captioner cannot go on (its thread died, or its model failed to load or swap).
    #[error("pipeline failed: captioner: {0}")]
    CaptionerFailed(String),
    /// The store step's task ended while the pipeline ran (a panic).
    #[error("pipeline failed: the store step ended unexpectedly: {0}")]
    StoreStepEnded(String),
}
