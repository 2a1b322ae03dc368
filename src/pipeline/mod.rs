//! The pipeline: source → prepare (parse, fetch, decode) → batch → caption → store → commit.
//!
//! This file wires the steps and runs the shutdown; each step is a file of its own, read in this
//! order, with the type an event has between them:
//!
//! | step | file | in → out |
//! |---|---|---|
//! | consume | [`crate::source`] | Kafka message → [`Job`] (the message, its offset ticket, its permit) |
//! | prepare | [`prepare`] (→ [`crate::event`], [`crate::fetch`], [`crate::budget`], [`crate::decode`], [`crate::model::preprocess`], [`crate::analysis`]) | [`Job`] → [`crate::event::ImagePairEvent`] → [`Prepared`] (pixels, change analysis); an unchanged pair, without its pixels, past the captioner (`unchanged_to_store`) to the store |
//! | batch + caption | [`caption`] (→ [`crate::batch`], [`crate::caption`]) | [`Prepared`]s → [`store::Captioned`] |
//! | store | [`store`] (→ [`crate::store`]) | [`store::Captioned`] → [`crate::store::CaptionRecord`] rows |
//! | finish | [`outcomes`] (→ [`crate::dlq`]) | stored or dead-lettered: the job's ticket completes |
//! | commit | [`crate::source::commit`] | completed tickets → committed offsets |
//!
//! Steps are tasks joined by bounded channels; every event in flight holds a permit, so memory is
//! bounded and a slow step pauses consumption (see [`crate::source`]). `supervise.rs` watches progress
//! and the dead-letter breaker. Shutdown drains: consumption stops, in-flight events finish within
//! `shutdown.drain_timeout`, stored offsets are committed, and the consumer leaves its group within
//! `shutdown.consumer_close_timeout`; [`RunSummary`] says how it ended.

pub mod caption;
pub mod outcomes;
pub mod prepare;
pub mod store;
pub mod summary;
mod supervise;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::caption::{CaptionWorker, CaptionerFactory};
use crate::config::Config;
use crate::dlq::breaker::Breaker;
use crate::dlq::DeadLetterQueue;
use crate::fetch::Fetcher;
use crate::health::Health;
use crate::retry::Backoff;
use crate::source::{Job, Source};
use crate::store::Store;
use outcomes::Outcomes;
use prepare::{Prepare, Prepared};
use store::Captioned;
pub use summary::{Fatal, RunSummary};

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
    if !supervise::hold_while_tripped(cfg, &store, &health, &shutdown).await {
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
    let budget = Arc::new(crate::budget::ByteBudget::new(p.max_in_flight_bytes));
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
        preprocess: cfg.preprocess.clone(),
        analysis: cfg.analysis.clone(),
        processor: worker.processor().clone(),
        decode_slots: Arc::new(Semaphore::new(p.decode_concurrency)),
        outcomes: outcomes.clone(),
        budget: budget.clone(),
        max_event_bytes: cfg.kafka.max_event_bytes,
    });
    // Pairs found unchanged skip the captioner: stored with the fixed caption.
    let (skip_tx, skip_rx) = mpsc::channel::<Prepared>(p.max_batch_size * 2);
    let skip_task = tokio::spawn(unchanged_to_store(
        skip_rx,
        cap_tx.clone(),
        worker.clone(),
        cfg.analysis.unchanged_caption.clone(),
    ));
    let prepare_task = tokio::spawn(prepare::step(prepare, job_rx, prep_tx, skip_tx, cfg.s3.max_concurrency));
    // Enough batches with the captioner that a continuous-batching decoder's rows stay full.
    let in_flight = 1 + cfg.model.max_running.div_ceil(p.max_batch_size).max(1);
    let caption_task = tokio::spawn(caption::step(
        worker.clone(),
        outcomes.clone(),
        prep_rx,
        cap_tx,
        p.max_batch_size,
        p.max_batch_wait,
        in_flight,
    ));
    let store_task = tokio::spawn(store::step(store.clone(), outcomes.clone(), cap_rx));
    let commit_task = {
        let (committer, every, stop) = (committer.clone(), cfg.kafka.commit_interval, hard_stop.clone());
        tokio::spawn(async move { committer.run(every, stop).await })
    };
    let gauge_task = tokio::spawn(supervise::watch_progress(
        permits.clone(),
        p.max_in_flight,
        budget.clone(),
        outcomes.clone(),
        health.clone(),
        p.stall_timeout,
        hard_stop.clone(),
    ));
    // Another replica's trip stops this one too.
    let breaker_watch = tokio::spawn(supervise::watch_breaker(
        store.clone(),
        cfg.kafka.group_id.clone(),
        outcomes.clone(),
        hard_stop.clone(),
    ));

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
        supervise::record_trip(cfg, &store, &format!("{:.0}% dead-lettered, last: {last}", ratio * 100.0)).await;
    }

    // Drain: stop consuming; the steps finish what they hold and end as their inputs close.
    stop_consuming.cancel();
    let _ = source_task.await;
    let aborts =
        [prepare_task.abort_handle(), skip_task.abort_handle(), caption_task.abort_handle(), store_task.abort_handle()];
    let draining = outcomes.clone();
    let drain = async move {
        let _ = prepare_task.await;
        let _ = skip_task.await;
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
    if let Some(mut t) = reload_task {
        // It removes this consumer's report from the registry on its way out; a download in
        // progress is cut off.
        if tokio::time::timeout(Duration::from_secs(2), &mut t).await.is_err() {
            t.abort();
        }
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

/// Passes the pairs the change analysis found unchanged to the store, captioned `caption` under the
/// captioner's current model version, without running the model.
async fn unchanged_to_store(
    mut skipped: mpsc::Receiver<Prepared>,
    out: mpsc::Sender<Captioned>,
    worker: Arc<CaptionWorker>,
    caption: String,
) {
    while let Some(p) = skipped.recv().await {
        if out.send(Captioned::skipped(p, caption.clone(), worker.model_version())).await.is_err() {
            return;
        }
    }
}
