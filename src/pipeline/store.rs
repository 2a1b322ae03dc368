//! Step 4: store the captions in PostgreSQL (one transaction for whatever is queued, retried until
//! it commits), then finish each event ([`super::outcomes`]), which lets its offset be committed.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::outcomes::Outcomes;
use super::prepare::Prepared;
use crate::store::{CaptionRecord, Store};

/// Most caption rows written in one transaction (group commit).
const STORE_MAX_ROWS: usize = 1024;

/// A captioned batch on its way to the store.
pub struct Captioned {
    pub items: Vec<(Prepared, String)>,
    pub model_version: String,
    pub inference_seconds: f64,
    pub batch_size: usize,
    /// The change analysis found the pairs unchanged and the model did not run.
    pub model_skipped: bool,
}

impl Captioned {
    /// A pair stored without the model: `caption` is the fixed unchanged caption, `model_version`
    /// the captioner's at the time.
    pub fn skipped(pair: Prepared, caption: String, model_version: String) -> Self {
        Captioned {
            items: vec![(pair, caption)],
            model_version,
            inference_seconds: 0.0,
            batch_size: 0,
            model_skipped: true,
        }
    }
}

/// Stores captioned batches. Whatever is queued when a transaction starts goes into it (group commit:
/// one WAL flush for many batches), so the store keeps up with the captioner however short its batches.
pub async fn step(store: Store, outcomes: Arc<Outcomes>, mut input: mpsc::Receiver<Captioned>) {
    while let Some(first) = input.recv().await {
        let mut batches = vec![first];
        let mut rows = batches[0].items.len();
        while rows < STORE_MAX_ROWS {
            match input.try_recv() {
                Ok(b) => {
                    rows += b.items.len();
                    batches.push(b);
                }
                Err(_) => break,
            }
        }
        let records: Vec<CaptionRecord> = batches
            .iter()
            .flat_map(|batch| {
                batch.items.iter().map(|(p, caption)| {
                    let model_caption = (!batch.model_skipped).then_some(caption.as_str());
                    let actions = crate::analysis::stored_actions(p.analysis.as_ref(), model_caption);
                    CaptionRecord {
                        event: p.event.clone(),
                        origin: p.job.origin(),
                        model_version: batch.model_version.clone(),
                        caption: caption.clone(),
                        inference_seconds: batch.inference_seconds,
                        end_to_end_seconds: p.job.received_at.elapsed().as_secs_f64(),
                        batch_size: batch.batch_size as i32,
                        changed: p.analysis.as_ref().map(|a| a.changed),
                        regions: p.analysis.as_ref().map(|a| a.regions.clone()),
                        actions: actions.into_iter().map(String::from).collect(),
                        model_skipped: batch.model_skipped,
                    }
                })
            })
            .collect();
        let started = std::time::Instant::now();
        match store.store_batch_retrying(&records, &outcomes.hard_stop).await {
            Ok(()) => {
                metrics::histogram!(crate::metrics::STORE_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::counter!(crate::metrics::CAPTIONED).increment(records.len() as u64);
                for action in records.iter().flat_map(|r| &r.actions) {
                    metrics::counter!(crate::metrics::EDIT_ACTIONS, "action" => action.clone()).increment(1);
                }
                for batch in batches {
                    for (p, _) in batch.items {
                        outcomes.stored(p.job);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(events = records.len(), "batch not stored before the deadline: {e:#}");
                return;
            }
        }
    }
}
