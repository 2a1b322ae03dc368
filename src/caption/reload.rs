//! Hot swap: running consumers follow the adapter registry.
//!
//! The retraining job promotes a version with `UPDATE model_versions SET promoted_at = now()` and
//! `NOTIFY blip2idc_model_promoted`. Each consumer LISTENs on that channel and also polls every
//! `model.reload_poll_interval` (notifications are lost while a connection is down). When the promoted
//! version differs from the one loaded, it downloads the adapter from S3 and swaps it in on the
//! captioner thread between two batches: no restart, no batch lost or split, and every caption row
//! names the version that produced it.
//!
//! After each check it reports the version it runs to the registry (`consumer_models`, which
//! `blip2idc models list` counts; removed when it stops) and sets `blip2idc_model_loaded_info{version}`
//! and `blip2idc_model_stale` (1 while it runs another version than the promoted one).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::CaptionWorker;
use crate::adapters::AdapterStore;
use crate::config::Config;
use crate::store::{Promoted, PromotionListener, Store};

/// Downloads the adapter of promoted `version` from `uri` into the scratch directory.
async fn download(cfg: &Config, version: &str, uri: &str) -> anyhow::Result<PathBuf> {
    let s3 = crate::fetch::s3_client(&cfg.s3).await;
    let dir = crate::adapters::version_dir(&cfg.retrain.work_dir.join("promoted"), version);
    AdapterStore::new(s3, &cfg.s3).download(uri, &dir).await?;
    Ok(dir)
}

/// Watches for promotions until `stop`; swaps the worker's adapter when the promoted version changes.
pub async fn watch(cfg: Config, store: Store, worker: Arc<CaptionWorker>, stop: CancellationToken) {
    let every = cfg.model.reload_poll_interval;
    if every.is_zero() {
        return;
    }
    let mut listener: Option<PromotionListener> = None;
    // Unique per consumer, also when several run in one process or host.
    let consumer =
        format!("{}/{:08x}", crate::store::breaker::this_consumer(&cfg.kafka.client_id), rand::random::<u32>());
    let mut shown: Option<String> = None;
    loop {
        if listener.is_none() {
            listener = match store.listen_promotions().await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::debug!("not listening for promotions (polling instead): {e:#}");
                    None
                }
            };
        }
        // Checked after LISTEN is up, so a promotion between this check and the wait is not missed
        // (when the start-up check already switched, this is one query).
        match store.promoted(&cfg.model.checkpoint).await {
            Ok(promoted) => {
                let version = promoted.as_ref().map(|p| p.version.clone());
                if let Err(e) = follow(&cfg, &store, &worker, promoted).await {
                    tracing::warn!("switching to the promoted adapter failed: {e:#}");
                }
                report(&cfg, &store, &worker, &consumer, &mut shown, version.as_deref()).await;
            }
            Err(e) => tracing::warn!("checking for a promoted adapter failed: {e:#}"),
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {
                if let Err(e) = store.forget_consumer(&consumer).await {
                    tracing::debug!("removing this consumer's model report: {e:#}");
                }
                return;
            }
            _ = tokio::time::sleep(every) => {}
            n = notified => match n {
                Ok(version) => tracing::info!(%version, "promotion notified"),
                Err(e) => {
                    tracing::debug!("LISTEN connection lost: {e:#}");
                    listener = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
}

/// Reports the version this consumer runs to the registry and sets the model gauges (`shown`: the
/// version the info gauge shows; `promoted`: the registry's promoted version, just read).
async fn report(
    cfg: &Config,
    store: &Store,
    worker: &CaptionWorker,
    consumer: &str,
    shown: &mut Option<String>,
    promoted: Option<&str>,
) {
    let loaded = worker.model_version();
    if shown.as_deref() != Some(loaded.as_str()) {
        // Registered under its base model (a version first seen in a caption row would be 'unknown').
        let own = crate::store::ModelVersion {
            version: loaded.clone(),
            base_model: cfg.model.checkpoint.clone(),
            adapter_uri: None,
        };
        if let Err(e) = store.register_model_version(&own).await {
            tracing::debug!("registering the loaded version: {e:#}");
        }
        if let Some(old) = shown.take() {
            metrics::gauge!(crate::metrics::MODEL_LOADED, "version" => old).set(0.0);
        }
        metrics::gauge!(crate::metrics::MODEL_LOADED, "version" => loaded.clone()).set(1.0);
        *shown = Some(loaded.clone());
    }
    let stale = promoted.is_some_and(|p| p != loaded);
    metrics::gauge!(crate::metrics::MODEL_STALE).set(if stale { 1.0 } else { 0.0 });
    if let Err(e) = store.report_loaded(consumer, &cfg.model.checkpoint, &loaded).await {
        tracing::debug!("{e:#}");
    }
}

/// One comparison of the promoted version with the loaded one. A version that fails to download or
/// load is marked in `model_versions` (`load_error`) and skipped from then on, until it is promoted
/// again; the running adapter stays (a failed swap changes no weight).
pub async fn check_once(cfg: &Config, store: &Store, worker: &CaptionWorker) -> anyhow::Result<bool> {
    follow(cfg, store, worker, store.promoted(&cfg.model.checkpoint).await?).await
}

/// [`check_once`] with the promoted version already read (`None`: none is promoted).
async fn follow(
    cfg: &Config,
    store: &Store,
    worker: &CaptionWorker,
    promoted: Option<Promoted>,
) -> anyhow::Result<bool> {
    let Some(p) = promoted else { return Ok(false) };
    let Some(uri) = p.adapter_uri else { return Ok(false) };
    if p.version == worker.model_version() {
        return Ok(false);
    }
    if let Some(why) = p.load_error {
        tracing::debug!(version = %p.version, "the promoted version failed to load before; not retrying: {why}");
        return Ok(false);
    }
    let version = p.version;
    // A download that fails may heal (S3 unreachable): retried on the next poll, not marked.
    let dir = download(cfg, &version, &uri).await.with_context(|| format!("downloading promoted version {version}"))?;
    match swap_to(cfg, worker, &version, dir).await {
        Ok(v) => {
            metrics::counter!(crate::metrics::MODEL_SWAPS).increment(1);
            tracing::info!(version = %v, "now captioning with the promoted adapter");
            Ok(true)
        }
        Err(e) => {
            let why = format!("{e:#}");
            metrics::counter!(crate::metrics::MODEL_SWAP_FAILURES).increment(1);
            tracing::error!(%version, running = %worker.model_version(), "the promoted adapter cannot be loaded; keeping the running one: {why}");
            store.mark_load_failed(&version, &why).await?;
            Err(e.context(format!("loading promoted version {version}")))
        }
    }
}

async fn swap_to(cfg: &Config, worker: &CaptionWorker, version: &str, dir: PathBuf) -> anyhow::Result<String> {
    tracing::info!(from = %worker.model_version(), to = %version, "swapping in the promoted adapter");
    if worker.swaps_adapters() {
        return worker.swap_adapter(Some(dir), version.to_owned()).await;
    }
    // A model that cannot swap in place is rebuilt whole: the configured BLIP2IDC model with the
    // promoted adapter merged (the only model `serve` runs).
    tracing::info!("in-place adapter swap unavailable; loading a new model");
    let mut model = cfg.model.clone();
    model.adapter = Some(dir.to_string_lossy().into_owned());
    model.version = Some(version.to_owned());
    worker.swap(super::blip2idc::factory(&model)?).await
}
