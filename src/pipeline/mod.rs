//! The pipeline: source → prepare (parse, fetch, decode) → batch → caption → store → commit.
//!
//! Steps are tasks joined by bounded channels; every event in flight holds a permit, so memory is
//! bounded and a slow step pauses consumption (see [`crate::source`]). Shutdown drains: consumption
//! stops, in-flight events finish within `shutdown.drain_timeout`, stored offsets are committed, and the
//! consumer leaves its group within `shutdown.consumer_close_timeout`.

pub mod budget;
pub mod outcomes;
pub mod prepare;
pub mod summary;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::caption::{CaptionWorker, CaptionerFactory};
use crate::config::Config;
use crate::dlq::breaker::Breaker;
use crate::dlq::DeadLetterQueue;
use crate::fetch::Fetcher;
use crate::retry::{Backoff, Retry};
use crate::source::{Job, Source};
use crate::store::{CaptionRecord, Store};
use outcomes::Outcomes;
use prepare::{Prepare, Prepared};
pub use summary::{Fatal, RunSummary};

/// A captioned batch on its way to the store.
struct Captioned {
    items: Vec<(Prepared, String)>,
    model_version: String,
    inference_seconds: f64,
    batch_size: usize,
}

/// Runs the service until `shutdown` fires (or a fatal condition), then drains and commits.
pub async fn run(
    cfg: &Config,
    factory: CaptionerFactory,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunSummary> {
    run_with(cfg, Store::connect_lazy(&cfg.database)?, factory, health, shutdown).await
}

/// [`run`] on a given database pool (the one `serve` shares with its admin server).
pub async fn run_with(
    cfg: &Config,
    store: Store,
    factory: CaptionerFactory,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunSummary> {
    if cfg.database.migrate_on_start {
        store.migrate_retrying(&shutdown).await?;
    }

    tracing::info!(checkpoint = %cfg.model.checkpoint, adapter = ?cfg.model.adapter, "loading the captioner");
    let worker = Arc::new(tokio::task::spawn_blocking(move || CaptionWorker::spawn(factory)).await??);
    health.model_loaded.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(model_version = %worker.model_version(), "captioner ready");

    // A breaker tripped before (by this group, here or on another replica) holds consumption.
    if !hold_while_tripped(cfg, &store, &health, &shutdown).await {
        return Ok(RunSummary { committed: Vec::new(), fatal: None, drain_timed_out: false });
    }

    let s3 = crate::fetch::s3_client(&cfg.s3).await;
    let source = Arc::new(Source::new(&cfg.kafka, health.clone())?);
    let dlq = DeadLetterQueue::new(&cfg.kafka, cfg.dlq.brokers.as_deref())?;
    let hard_stop = CancellationToken::new();
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();
    let committer = source.committer();
    let outcomes = Arc::new(Outcomes::new(
        committer.clone(),
        dlq,
        Breaker::new(cfg.dlq.breaker_window, cfg.dlq.breaker_max_ratio, cfg.dlq.breaker_min_events),
        Backoff::new(cfg.dlq.retry_initial_backoff, cfg.dlq.retry_max_backoff),
        hard_stop.clone(),
        fatal_tx,
    ));
    // Follow the adapter registry: start on the promoted adapter, then watch for promotions.
    let reload_task = if cfg.model.reload_poll_interval.is_zero() {
        None
    } else {
        if let Err(e) = crate::caption::reload::check_once(cfg, &store, &worker).await {
            tracing::warn!("could not switch to the promoted adapter at start-up: {e:#}");
        }
        Some(tokio::spawn(crate::caption::reload::watch(cfg.clone(), store.clone(), worker.clone(), hard_stop.clone())))
    };

    let p = &cfg.pipeline;
    let permits = Arc::new(Semaphore::new(p.max_in_flight));
    let budget = Arc::new(budget::ByteBudget::new(p.max_in_flight_bytes));
    let fetching = budget.half_bytes() / (2 * cfg.s3.max_object_bytes).max(1);
    if (fetching as usize) < cfg.s3.max_concurrency {
        tracing::info!(
            pairs = fetching,
            s3.max_concurrency = cfg.s3.max_concurrency,
            "the memory budget admits fewer pairs fetching at once than s3.max_concurrency (each reserves \
             2 × s3.max_object_bytes while fetching): raise pipeline.max_in_flight_bytes or lower \
             s3.max_object_bytes for more"
        );
    }
    let (job_tx, job_rx) = mpsc::channel::<Job>(p.max_in_flight);
    let (prep_tx, prep_rx) = mpsc::channel::<Prepared>(p.max_batch_size * 2);
    let (cap_tx, cap_rx) = mpsc::channel::<Captioned>(16);

    let stop_consuming = CancellationToken::new();
    let source_task = {
        let (source, permits, stop) = (source.clone(), permits.clone(), stop_consuming.clone());
        tokio::spawn(async move { source.run(job_tx, permits, stop).await })
    };
    let prepare = Arc::new(Prepare {
        fetcher: Fetcher::new(s3, &cfg.s3),
        limits: cfg.decode.clone(),
        processor: worker.processor().clone(),
        decode_slots: Arc::new(Semaphore::new(p.decode_concurrency)),
        outcomes: outcomes.clone(),
        budget: budget.clone(),
        max_event_bytes: cfg.kafka.max_event_bytes,
    });
    let prepare_task = tokio::spawn(prepare_step(prepare, job_rx, prep_tx, cfg.s3.max_concurrency));
    let caption_task = tokio::spawn(caption_step(
        worker.clone(),
        outcomes.clone(),
        prep_rx,
        cap_tx,
        p.max_batch_size,
        p.max_batch_wait,
    ));
    let store_task = tokio::spawn(store_step(store.clone(), outcomes.clone(), cap_rx));
    let commit_task = {
        let (committer, every, stop) = (committer.clone(), cfg.kafka.commit_interval, hard_stop.clone());
        tokio::spawn(async move { committer.run(every, stop).await })
    };
    let gauge_task = {
        let (permits, stop, total) = (permits.clone(), hard_stop.clone(), p.max_in_flight);
        let (outcomes, health, stall_timeout) = (outcomes.clone(), health.clone(), p.stall_timeout);
        let budget = budget.clone();
        tokio::spawn(async move {
            loop {
                let in_flight = total - permits.available_permits();
                metrics::gauge!(crate::metrics::IN_FLIGHT).set(in_flight as f64);
                metrics::gauge!(crate::metrics::IN_FLIGHT_BYTES).set(budget.in_use() as f64);
                // Idle is not stalled: only time with events waiting counts.
                if in_flight == 0 {
                    outcomes.progressed();
                }
                let waiting = outcomes.since_progress();
                let stalled = waiting >= stall_timeout;
                metrics::gauge!(crate::metrics::SECONDS_SINCE_PROGRESS).set(waiting.as_secs_f64());
                metrics::gauge!(crate::metrics::STALLED).set(if stalled { 1.0 } else { 0.0 });
                if health.stalled.swap(stalled, std::sync::atomic::Ordering::Relaxed) != stalled {
                    if stalled {
                        tracing::warn!(in_flight, ?waiting, "no event finished for pipeline.stall_timeout: unready");
                    } else {
                        tracing::info!("events are finishing again: ready");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    };

    // Another replica's trip stops this one too.
    let breaker_watch = {
        let (store, group, outcomes, stop) =
            (store.clone(), cfg.kafka.group_id.clone(), outcomes.clone(), hard_stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(BREAKER_POLL) => {}
                    _ = stop.cancelled() => return,
                }
                if let Ok(Some(trip)) = store.trip_of(&group).await {
                    outcomes.fatal(Fatal::BreakerHeld { reason: trip.reason, tripped_by: trip.tripped_by });
                    return;
                }
            }
        })
    };

    // Run until asked to stop or something fatal happens.
    let mut store_task = store_task;
    let fatal = tokio::select! {
        _ = shutdown.cancelled() => None,
        f = fatal_rx.recv() => f,
        r = &mut store_task => Some(Fatal::StoreStepEnded(format!("{r:?}"))),
    };
    match &fatal {
        Some(f) => tracing::error!("{f}"),
        None => tracing::info!("shutdown requested: draining in-flight events"),
    }
    breaker_watch.abort();
    if let Some(Fatal::BreakerTripped { last, ratio, .. }) = &fatal {
        // Recorded so that restarts and the other replicas hold too (see hold_while_tripped).
        health.breaker_tripped.store(true, std::sync::atomic::Ordering::Relaxed);
        let reason = format!("{:.0}% dead-lettered, last: {last}", ratio * 100.0);
        let by = crate::store::breaker::this_consumer(&cfg.kafka.client_id);
        let retry =
            Retry::new("record_trip", Backoff::new(Duration::from_millis(500), Duration::from_secs(4))).at_most(5);
        if let Err(e) = retry.run(|| store.record_trip(&cfg.kafka.group_id, &reason, &by), |_| true).await {
            tracing::error!("could not record the breaker trip: {:#}", e.into_last());
        }
    }

    // Drain: stop consuming; the steps finish what they hold and end as their inputs close.
    stop_consuming.cancel();
    let _ = source_task.await;
    let aborts = [prepare_task.abort_handle(), caption_task.abort_handle(), store_task.abort_handle()];
    let draining = outcomes.clone();
    let drain = async move {
        let _ = prepare_task.await;
        let _ = caption_task.await;
        if !store_task.is_finished() {
            let _ = store_task.await;
        }
        draining.dead_letters_delivered().await;
    };
    let drain_timed_out = if matches!(fatal, Some(Fatal::CaptionerFailed(_) | Fatal::StoreStepEnded(_))) {
        true
    } else {
        tokio::time::timeout(cfg.shutdown.drain_timeout, drain).await.is_err()
    };
    if drain_timed_out {
        tracing::warn!(timeout = ?cfg.shutdown.drain_timeout, "drain timed out: unfinished events stay uncommitted");
    }
    // Stop whatever still runs before the final commit: retries give up, the steps end. Their events
    // were never completed, so the commit cannot pass them; they will be redelivered.
    hard_stop.cancel();
    for a in &aborts {
        a.abort();
    }
    let _ = commit_task.await;
    gauge_task.abort();
    if let Some(t) = reload_task {
        t.abort();
    }

    let committed = committer.commit_final(cfg.shutdown.commit_timeout).await;
    if let Err(e) = outcomes.dlq_flush(Duration::from_secs(5)) {
        tracing::warn!("dead-letter producer flush: {e}");
    }
    drop(outcomes);
    drop(source);
    committer.close(cfg.shutdown.consumer_close_timeout).await;
    Ok(RunSummary { committed, fatal, drain_timed_out })
}

/// How often a running consumer looks for a trip recorded by another replica, and a held one for a reset.
const BREAKER_POLL: Duration = Duration::from_secs(2);

/// Waits while the group's breaker is tripped (recorded in PostgreSQL), unready and consuming nothing,
/// until `blip2idc breaker reset` removes the record or `dlq.breaker_cooldown` has passed. Returns
/// false when shutdown was asked meanwhile. While the database cannot answer, it waits too: the
/// breaker must not be skipped.
async fn hold_while_tripped(cfg: &Config, store: &Store, health: &Health, shutdown: &CancellationToken) -> bool {
    use std::sync::atomic::Ordering;
    let group = &cfg.kafka.group_id;
    let cooldown = cfg.dlq.breaker_cooldown;
    let mut announced = false;
    loop {
        match store.trip_of(group).await {
            Ok(None) => {
                if announced {
                    tracing::info!(group, "the dead-letter breaker was reset: consuming");
                }
                health.breaker_tripped.store(false, Ordering::Relaxed);
                metrics::gauge!(crate::metrics::BREAKER_TRIPPED).set(0.0);
                return true;
            }
            Ok(Some(trip)) => {
                let age = (chrono::Utc::now() - trip.tripped_at).to_std().unwrap_or_default();
                if !cooldown.is_zero() && age >= cooldown {
                    tracing::warn!(
                        group,
                        ?cooldown,
                        "dlq.breaker_cooldown passed since the trip: resetting the breaker"
                    );
                    if let Err(e) = store.reset_trip(group).await {
                        tracing::warn!("resetting the breaker after its cooldown: {e:#}");
                    }
                    continue;
                }
                health.breaker_tripped.store(true, Ordering::Relaxed);
                metrics::gauge!(crate::metrics::BREAKER_TRIPPED).set(1.0);
                if !announced {
                    announced = true;
                    tracing::error!(
                        group, tripped_at = %trip.tripped_at, tripped_by = %trip.tripped_by,
                        "the dead-letter breaker of this group is tripped ({}): not consuming; fix the cause, then \
                         run `blip2idc breaker reset`{}",
                        trip.reason,
                        if cooldown.is_zero() { String::new() } else { format!(" (or wait for dlq.breaker_cooldown = {cooldown:?})") }
                    );
                }
            }
            Err(e) => tracing::warn!("cannot read the breaker state (waiting for the database): {e:#}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(BREAKER_POLL) => {}
        }
    }
}

async fn prepare_step(
    prepare: Arc<Prepare>,
    jobs: mpsc::Receiver<Job>,
    out: mpsc::Sender<Prepared>,
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
        if let Some(p) = item {
            if out.send(p).await.is_err() {
                return;
            }
        }
    }
}

fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn caption_step(
    worker: Arc<CaptionWorker>,
    outcomes: Arc<Outcomes>,
    mut input: mpsc::Receiver<Prepared>,
    out: mpsc::Sender<Captioned>,
    max_batch: usize,
    max_wait: Duration,
) {
    while let Some(mut batch) = crate::batch::next_batch(&mut input, max_batch, max_wait).await {
        let pixels: Vec<Vec<f32>> = batch.iter_mut().map(|p| std::mem::take(&mut p.pixel_values)).collect();
        let batch_size = batch.len();
        metrics::histogram!(crate::metrics::BATCH_SIZE).record(batch_size as f64);
        let result = worker.caption(pixels).await;
        for p in &mut batch {
            p.memory = None; // the pixels are consumed
        }
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                outcomes.fatal(Fatal::CaptionerFailed(format!("{e:#}")));
                return;
            }
        };
        metrics::histogram!(crate::metrics::INFERENCE_SECONDS).record(result.inference.as_secs_f64());
        let mut items = Vec::with_capacity(batch_size);
        for (prepared, caption) in batch.into_iter().zip(result.captions) {
            match caption {
                Ok(c) => items.push((prepared, c)),
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
        };
        if out.send(captioned).await.is_err() {
            return;
        }
    }
}

/// Most caption rows written in one transaction (group commit).
const STORE_MAX_ROWS: usize = 1024;

/// Stores captioned batches. Whatever is queued when a transaction starts goes into it (group commit:
/// one WAL flush for many batches), so the store keeps up with the captioner however short its batches.
async fn store_step(store: Store, outcomes: Arc<Outcomes>, mut input: mpsc::Receiver<Captioned>) {
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
                batch.items.iter().map(|(p, caption)| CaptionRecord {
                    event: p.event.clone(),
                    origin: p.job.origin(),
                    model_version: batch.model_version.clone(),
                    caption: caption.clone(),
                    inference_seconds: batch.inference_seconds,
                    end_to_end_seconds: p.job.received_at.elapsed().as_secs_f64(),
                    batch_size: batch.batch_size as i32,
                })
            })
            .collect();
        let started = std::time::Instant::now();
        match store.store_batch_retrying(&records, &outcomes.hard_stop).await {
            Ok(()) => {
                metrics::histogram!(crate::metrics::STORE_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::counter!(crate::metrics::CAPTIONED).increment(records.len() as u64);
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
