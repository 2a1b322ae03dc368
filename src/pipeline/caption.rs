//! Steps 2 and 3: batch the prepared pairs and caption each batch on the captioner's thread
//! ([`crate::caption`]); every caption carries the model version that made it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::outcomes::Outcomes;
use super::prepare::Prepared;
use super::store::Captioned;
use super::summary::Fatal;
use crate::caption::{BatchOutput, CaptionWorker};

/// The step: cuts batches ([`crate::batch::next_batch`]) and hands up to `in_flight` of them to the
/// captioner thread at once (so that a continuous-batching decoder always has pairs to admit);
/// as each batch comes back, in order, dead-letters the pairs that failed alone and passes the rest
/// on. A captioner that cannot go on is fatal.
pub async fn step(
    worker: Arc<CaptionWorker>,
    outcomes: Arc<Outcomes>,
    mut input: mpsc::Receiver<Prepared>,
    out: mpsc::Sender<Captioned>,
    max_batch: usize,
    max_wait: Duration,
    in_flight: usize,
) {
    type Submitted = (Vec<Prepared>, oneshot::Receiver<BatchOutput>);
    let (submitted_tx, mut submitted) = mpsc::channel::<Submitted>(in_flight.max(1));
    let submitter = {
        let (worker, outcomes) = (worker.clone(), outcomes.clone());
        tokio::spawn(async move {
            while let Some(mut batch) = crate::batch::next_batch(&mut input, max_batch, max_wait).await {
                let pixels: Vec<Vec<f32>> = batch.iter_mut().map(|p| std::mem::take(&mut p.pixel_values)).collect();
                metrics::histogram!(crate::metrics::BATCH_SIZE).record(batch.len() as f64);
                match worker.submit(pixels).await {
                    Ok(reply) => {
                        if submitted_tx.send((batch, reply)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        outcomes.fatal(Fatal::CaptionerFailed(format!("{e:#}")));
                        return;
                    }
                }
            }
        })
    };
    while let Some((mut batch, reply)) = submitted.recv().await {
        let batch_size = batch.len();
        let result = reply.await;
        for p in &mut batch {
            p.memory = None; // the pixels are consumed
        }
        let result = match result {
            Ok(r) => r,
            Err(_) => {
                outcomes.fatal(Fatal::CaptionerFailed("the captioner thread stopped".into()));
                break;
            }
        };
        metrics::histogram!(crate::metrics::INFERENCE_SECONDS).record(result.inference.as_secs_f64());
        let mut items = Vec::with_capacity(batch_size);
        for (prepared, caption) in batch.into_iter().zip(result.captions) {
            match caption {
                Ok(c) => items.push((prepared, c.text)),
                Err(why) => outcomes.dead_letter(prepared.job, why),
            }
        }
        if items.is_empty() {
            continue;
        }
        let captioned = Captioned {
            items,
            model_version: result.model_version,
            inference_seconds: result.inference.as_secs_f64(),
            batch_size,
            model_skipped: false,
        };
        if out.send(captioned).await.is_err() {
            break;
        }
    }
    submitter.abort();
}
