//! Where events end: stored, or dead-lettered. Both release the event's permit and let its offset be
//! committed; the dead-letter path first asks the breaker and waits for the broker's acknowledgement.
//!
//! Dead letters are delivered by tasks of their own, retried with backoff while the dead-letter topic
//! is unavailable (missing topic, produce errors): the steps that rejected the events go on with good
//! ones, whose offsets commit up to the first event still waiting for its dead letter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::summary::Fatal;
use crate::dlq::breaker::{Breaker, Verdict};
use crate::dlq::DeadLetterQueue;
use crate::error::Rejection;
use crate::retry::{Backoff, Retry};
use crate::source::{Committer, Job};
use rdkafka::message::Message;

/// Shared end-of-life accounting for jobs.
pub struct Outcomes {
    committer: Arc<Committer>,
    dlq: DeadLetterQueue,
    breaker: Mutex<Breaker>,
    backoff: Backoff,
    /// Fires at the hard deadline: retries give up, unfinished jobs stay uncommitted.
    pub hard_stop: CancellationToken,
    fatal_tx: tokio::sync::mpsc::UnboundedSender<Fatal>,
    /// When an event was last stored or dead-lettered (stall detection).
    last_progress: Mutex<std::time::Instant>,
    /// Dead letters not yet acknowledged by the broker, and a wake-up when that reaches zero.
    pending_dead_letters: AtomicUsize,
    dead_letters_idle: tokio::sync::Notify,
}

impl Outcomes {
    pub fn new(
        committer: Arc<Committer>,
        dlq: DeadLetterQueue,
        breaker: Breaker,
        backoff: Backoff,
        hard_stop: CancellationToken,
        fatal_tx: tokio::sync::mpsc::UnboundedSender<Fatal>,
    ) -> Self {
        Outcomes {
            committer,
            dlq,
            breaker: Mutex::new(breaker),
            backoff,
            hard_stop,
            fatal_tx,
            last_progress: Mutex::new(std::time::Instant::now()),
            pending_dead_letters: AtomicUsize::new(0),
            dead_letters_idle: tokio::sync::Notify::new(),
        }
    }

    /// Reports a condition that stops the pipeline.
    pub fn fatal(&self, f: Fatal) {
        let _ = self.fatal_tx.send(f);
    }

    /// The job's caption is durably stored.
    pub fn stored(&self, job: Job) {
        self.breaker.lock().expect("breaker lock").record_ok();
        let e2e = job.received_at.elapsed().as_secs_f64();
        metrics::histogram!(crate::metrics::END_TO_END_SECONDS).record(e2e);
        self.finish(job);
    }

    /// Dead-letters a job (unless the breaker trips) on a task of its own, which completes the job
    /// once the broker acknowledged the dead letter. Returns at once.
    pub fn dead_letter(self: &Arc<Self>, job: Job, why: Rejection) {
        let verdict = self.breaker.lock().expect("breaker lock").record_dead_letter();
        if let Verdict::Trip { ratio, events } = verdict {
            // The job is dropped uncompleted: its offset is never committed past.
            self.fatal(Fatal::BreakerTripped { ratio, events, last: why });
            return;
        }
        let m = &job.message;
        tracing::info!(
            topic = m.topic(), partition = m.partition(), offset = m.offset(), kind = %why.kind,
            "dead-lettering: {}", why.message
        );
        let pending = self.pending_dead_letters.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::gauge!(crate::metrics::DEAD_LETTERS_PENDING).set(pending as f64);
        let me = self.clone();
        tokio::spawn(async move {
            me.deliver(job, why).await;
            let pending = me.pending_dead_letters.fetch_sub(1, Ordering::AcqRel) - 1;
            metrics::gauge!(crate::metrics::DEAD_LETTERS_PENDING).set(pending as f64);
            if pending == 0 {
                me.dead_letters_idle.notify_waiters();
            }
        });
    }

    /// Produces the dead letter until the broker acknowledges it (or the hard deadline), then
    /// completes the job.
    async fn deliver(&self, job: Job, why: Rejection) {
        let m = &job.message;
        let origin = job.origin();
        // Good events go on meanwhile; offsets wait at this one.
        let sent = Retry::new("dead_letter", self.backoff)
            .cancelled_by(&self.hard_stop)
            .about(&origin)
            .run(|| self.dlq.send(m.payload(), m.key(), &origin, &why), |_| true)
            .await;
        if sent.is_err() {
            return; // the hard deadline: the job stays unfinished, so its offset is never committed
        }
        metrics::counter!(crate::metrics::DEAD_LETTERED, "kind" => why.kind.as_str()).increment(1);
        self.finish(job);
        // Committed at once, not at the next interval: a crash in between would make it a duplicate.
        self.committer.commit_soon();
    }

    /// Waits until no dead letter is pending (the drain at shutdown).
    pub async fn dead_letters_delivered(&self) {
        loop {
            let idle = self.dead_letters_idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.pending_dead_letters.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    fn finish(&self, job: Job) {
        self.committer.complete(&job.ticket);
        self.progressed();
        drop(job.permit);
    }

    /// Restarts the stall clock (an event finished, or nothing is waiting).
    pub fn progressed(&self) {
        *self.last_progress.lock().expect("progress lock") = std::time::Instant::now();
    }

    /// Time since an event last finished.
    pub fn since_progress(&self) -> std::time::Duration {
        self.last_progress.lock().expect("progress lock").elapsed()
    }

    /// Flushes the dead-letter producer (shutdown).
    pub fn dlq_flush(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        self.dlq.flush(timeout)
    }
}
