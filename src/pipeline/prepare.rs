//! Step 1: parse the event, fetch both images, decode and preprocess them, and analyse the change
//! ([`crate::analysis`]). A pair found unchanged (with `analysis.skip_unchanged`) goes straight to the
//! store step with the fixed caption; the others go on to the captioner.
//!
//! Runs up to `s3.max_concurrency` jobs at once; decoding (CPU-bound) runs on blocking threads, at most
//! `pipeline.decode_concurrency` at a time. Rejections are dead-lettered here; a transient failure that
//! outlives the hard deadline drops the job uncompleted (it will be redelivered).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use rdkafka::message::Message;
use tokio::sync::{mpsc, Semaphore};

use super::outcomes::Outcomes;
use crate::analysis::Analysis;
use crate::budget::{ByteBudget, Reservation};
use crate::config::{AnalysisConfig, DecodeConfig, PreprocessConfig};
use crate::error::{RejectKind, Rejection, StepError};
use crate::event::ImagePairEvent;
use crate::fetch::Fetcher;
use crate::model::preprocess::ImageProcessorConfig;
use crate::source::Job;

/// A job ready for the captioner.
pub struct Prepared {
    pub job: Job,
    pub event: Arc<ImagePairEvent>,
    pub pixel_values: Vec<f32>,
    /// The budget its `pixel_values` hold until captioned.
    pub memory: Option<Reservation>,
    /// What the change analysis found (`None`: not analysed).
    pub analysis: Option<Analysis>,
}

/// Everything the step needs, shared by its concurrent jobs.
pub struct Prepare {
    pub fetcher: Fetcher,
    pub limits: DecodeConfig,
    pub preprocess: PreprocessConfig,
    pub analysis: AnalysisConfig,
    pub processor: ImageProcessorConfig,
    pub decode_slots: Arc<Semaphore>,
    pub outcomes: Arc<Outcomes>,
    pub budget: Arc<ByteBudget>,
    pub max_event_bytes: usize,
}

impl Prepare {
    /// Runs the step for one job; `None` when the job ended here (dead-lettered or abandoned).
    pub async fn run(&self, job: Job) -> Option<Prepared> {
        use futures::FutureExt;
        // A panic here (a decoder or parser bug tripped by this input) rejects this event only.
        let outcome = match std::panic::AssertUnwindSafe(self.try_run(&job)).catch_unwind().await {
            Ok(r) => r,
            Err(panic) => Err(StepError::Reject(Rejection::new(
                RejectKind::InternalError,
                format!("preparing the event panicked: {}", crate::error::panic_message(&*panic)),
            ))),
        };
        match outcome {
            Ok((event, pair, memory)) => Some(Prepared {
                job,
                event: Arc::new(event),
                pixel_values: pair.pixel_values,
                memory: Some(memory),
                analysis: pair.analysis,
            }),
            Err(StepError::Reject(why)) => {
                self.outcomes.dead_letter(job, why);
                None
            }
            Err(StepError::Transient(e)) => {
                tracing::warn!(offset = job.message.offset(), "abandoning an event at shutdown: {e:#}");
                None
            }
        }
    }

    async fn try_run(&self, job: &Job) -> Result<(ImagePairEvent, crate::decode::DecodedPair, Reservation), StepError> {
        let payload = job
            .message
            .payload()
            .ok_or_else(|| Rejection::new(RejectKind::MalformedJson, "message has no payload (tombstone)"))?;
        if payload.len() > self.max_event_bytes {
            return Err(Rejection::new(
                RejectKind::EventTooLarge,
                format!("the payload is {} bytes; kafka.max_event_bytes is {}", payload.len(), self.max_event_bytes),
            )
            .into());
        }
        let event = ImagePairEvent::parse(payload)?;
        let cancel = &self.outcomes.hard_stop;
        let ((a, b), fetched) =
            self.fetcher.fetch_pair_within(&event.original, &event.republished, cancel, &self.budget).await?;
        // The slot first, then the memory: a pair holding memory never waits for a slot.
        let _slot = self.decode_slots.acquire().await.expect("decode semaphore is never closed");
        // From the headers alone: an unreadable header, or an image over the decode limits, is
        // rejected here, before anything is allocated for it.
        let out = (self.processor.width as usize, self.processor.height as usize);
        let plan = crate::decode::PairPlan::new(&a, &b, &self.limits, self.preprocess.mode, out)?;
        let (mw, mh) = plan.modified.decoded;
        // Without the processor's resize, the whole stack and its f32 values exist too.
        let unresized = if self.processor.do_resize { 0 } else { 2 * (mw * mh) as u64 * (3 + 3 * 4) };
        let analyse = self.analysis.enabled;
        let cost = plan.bytes() + unresized + if analyse { plan.analysis_bytes() } else { 0 };
        if cost > self.budget.half_bytes() {
            return Err(Rejection::new(
                RejectKind::ImageTooLarge,
                format!(
                    "decoding this pair needs about {cost} bytes, more than half of pipeline.max_in_flight_bytes ({})",
                    self.budget.half_bytes()
                ),
            )
            .into());
        }
        let mut memory = tokio::select! {
            r = self.budget.decode(cost) => r,
            _ = cancel.cancelled() => return Err(StepError::Transient(anyhow::anyhow!("cancelled waiting for memory"))),
        };
        let (limits, preprocess, processor) = (self.limits.clone(), self.preprocess.clone(), self.processor.clone());
        let started = Instant::now();
        let decode =
            move || crate::decode::decode_planned_pair(&a, &b, &plan, &limits, &preprocess, &processor, analyse);
        let pair = match tokio::task::spawn_blocking(decode).await {
            Ok(r) => r?,
            Err(e) if e.is_panic() => {
                let why = crate::error::panic_message(&*e.into_panic());
                return Err(Rejection::new(RejectKind::InternalError, format!("decoding panicked: {why}")).into());
            }
            Err(e) => return Err(StepError::Transient(anyhow::anyhow!("decode task failed: {e}"))),
        };
        metrics::histogram!(crate::metrics::DECODE_SECONDS).record(started.elapsed().as_secs_f64());
        drop(fetched);
        memory.shrink_to((pair.pixel_values.len() * std::mem::size_of::<f32>()) as u64);
        Ok((event, pair, memory))
    }
}

/// The step: runs [`Prepare::run`] on up to `concurrency` jobs at once and passes on the prepared ones:
/// to the captioner (`out`), or, found unchanged and without their pixels, past it (`skipped`).
pub async fn step(
    prepare: Arc<Prepare>,
    jobs: mpsc::Receiver<Job>,
    out: mpsc::Sender<Prepared>,
    skipped: mpsc::Sender<Prepared>,
    concurrency: usize,
) {
    let stream = tokio_stream_from(jobs);
    let mut prepared = stream
        .map(|job| {
            let prepare = prepare.clone();
            async move { prepare.run(job).await }
        })
        .buffer_unordered(concurrency);
    while let Some(item) = prepared.next().await {
        let Some(mut p) = item else { continue };
        let sent = if prepare.analysis.skips(p.analysis.as_ref()) {
            metrics::counter!(crate::metrics::MODEL_SKIPPED).increment(1);
            p.pixel_values = Vec::new();
            p.memory = None;
            skipped.send(p).await.is_ok()
        } else {
            out.send(p).await.is_ok()
        };
        if !sent {
            return;
        }
    }
}

fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
