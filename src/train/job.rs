//! The retraining job: labels in PostgreSQL → LoRA fine-tuning → evaluation on a frozen holdout →
//! adapter in S3 + registry row → promotion when it is better → running consumers switch.
//!
//! One run ([`run_once`]):
//! 1. takes a PostgreSQL advisory lock (two jobs never train at once) and records a `training_runs` row;
//! 2. reads the labels new since the last successful run (and, by config, the earlier ones), assigns a
//!    split to labels that have none (`holdout` ones are frozen forever, so runs stay comparable);
//! 3. fetches their images from S3 and decodes them;
//! 4. loads the base model unmerged with the promoted adapter (or a fresh PEFT-initialised LoRA) and
//!    scores it on the holdout (the baseline);
//! 5. fine-tunes (AdamW, early stopping on holdout loss) and scores the candidate on the holdout;
//! 6. uploads the candidate adapter to S3 in PEFT format and registers it in `model_versions`;
//! 7. promotes it (and `NOTIFY blip2idc_model_promoted`) only if CIDEr-D improves by
//!    `promotion_min_cider_gain` and no category loses more than `max_category_regression`.
//!
//! A failure at any step marks the run failed and leaves the promoted adapter untouched.
//!
//! This file is the orchestrator; the data (splits, images, examples) is [`super::data`], the
//! holdout evaluation and the promotion rule [`super::promotion`], the SQL `crate::store::training`.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::data::{choose_splits, examples, load_pairs};
use super::lora::LoraParams;
pub use super::promotion::EvalSummary;
use super::promotion::{decide, evaluate};
use super::trainer::TrainReport;
use crate::adapters::{version_dir, AdapterStore};
use crate::config::Config;
pub use crate::config::RetrainConfig;
use crate::fetch::Fetcher;
use crate::model::lora::{Adapter, AdapterConfig};
use crate::model::{Blip2Idc, LoadOptions};
use crate::s3uri::S3Prefix;
use crate::store::training::RunResult;
use crate::store::{ModelVersion, Store};

/// How a run that did not fail ended (a failed run is an `Err`, recorded as `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Another job held the lock, or too few new labels arrived.
    Skipped,
    /// A candidate was trained, scored and registered (promoted or not).
    Succeeded,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::Skipped => "skipped",
            RunStatus::Succeeded => "succeeded",
        })
    }
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub run_id: i64,
    pub status: RunStatus,
    pub candidate_version: Option<String>,
    pub promoted: bool,
    pub decision: String,
    pub baseline: Option<EvalSummary>,
    pub candidate: Option<EvalSummary>,
}

impl RunOutcome {
    fn skipped(run_id: i64, decision: String) -> RunOutcome {
        RunOutcome {
            run_id,
            status: RunStatus::Skipped,
            candidate_version: None,
            promoted: false,
            decision,
            baseline: None,
            candidate: None,
        }
    }
}

/// Runs the job once. Returns `Ok` with status `skipped` when another job holds the lock or too few
/// new labels arrived.
pub async fn run_once(cfg: &Config) -> anyhow::Result<RunOutcome> {
    let rc = &cfg.retrain;
    let store = Store::connect_lazy(&cfg.database)?;
    store.migrate().await?;
    let Some(lock) = store.try_lock_training().await? else {
        tracing::warn!("another retraining job is running (advisory lock held): skipping");
        return Ok(RunOutcome::skipped(0, "another job holds the lock".into()));
    };
    let run_id = store.start_run(rc.train.seed as i64, &cfg.model.checkpoint, serde_json::to_value(rc)?).await?;
    tracing::info!(run_id, "retraining run started");
    let result = run_inner(cfg, &store, run_id).await;
    lock.release().await;
    if let Err(e) = &result {
        tracing::error!(run_id, "retraining run failed (the promoted adapter is untouched): {e:#}");
        store.fail_run(run_id, &format!("{e:#}")).await?;
    }
    result
}

async fn run_inner(cfg: &Config, store: &Store, run_id: i64) -> anyhow::Result<RunOutcome> {
    let rc = &cfg.retrain;
    let t0 = Instant::now();
    let mut durations = serde_json::Map::new();

    // 2. Labels and splits.
    let last = store.last_trained_label().await?;
    let (max_id, n_new) = store.label_counts(last).await?;
    if (n_new as usize) < rc.min_new_labels.max(1) {
        let decision =
            format!("{n_new} new label(s) since the last run; retrain.min_new_labels is {}", rc.min_new_labels);
        store.skip_run(run_id, &decision, n_new as i32).await?;
        tracing::info!(run_id, "{decision}: skipping");
        return Ok(RunOutcome::skipped(run_id, decision));
    }
    store.assign_splits(|pairs, holdout_pairs| choose_splits(pairs, holdout_pairs, rc)).await?;
    let labels = store.labels_for_run(last, rc.include_previous, max_id).await?;

    // 3. Images.
    let t = Instant::now();
    let s3 = crate::fetch::s3_client(&cfg.s3).await;
    let fetcher = Fetcher::new(s3.clone(), &cfg.s3);
    let (train_labels, holdout) = load_pairs(&fetcher, &labels, &cfg.decode, cfg.s3.max_concurrency).await?;
    anyhow::ensure!(!train_labels.is_empty(), "no usable training labels (all failed to load?)");
    anyhow::ensure!(!holdout.is_empty(), "the holdout is empty: label more pairs");
    durations.insert("load_data_s".into(), t.elapsed().as_secs_f64().into());
    tracing::info!(run_id, train = train_labels.len(), holdout = holdout.len(), "data loaded");

    // 4. Base + promoted adapter, baseline.
    let t = Instant::now();
    let adapters = AdapterStore::new(s3.clone(), &cfg.s3);
    let promoted = store.promoted_version(&cfg.model.checkpoint).await?;
    let start_adapter: Option<PathBuf> = match &promoted {
        Some((version, Some(uri))) => Some(adapters.download(uri, &version_dir(&rc.work_dir, version)).await?),
        _ => cfg.model.adapter.as_ref().map(PathBuf::from),
    };
    let (model, params) = load_model(cfg, start_adapter.as_deref())?;
    let baseline_version = promoted.as_ref().map(|p| p.0.clone()).unwrap_or_else(|| "base".into());
    let baseline = evaluate(&model, &holdout, &baseline_version, rc, cfg.model.max_new_tokens)?;
    durations.insert("baseline_eval_s".into(), t.elapsed().as_secs_f64().into());
    tracing::info!(run_id, cider = baseline.cider, version = %baseline_version, "baseline scored");

    // 5. Fine-tune.
    let t = Instant::now();
    let train_examples = examples(&model, &train_labels, rc)?;
    let holdout_examples = examples(&model, &holdout, rc)?;
    let report: TrainReport = super::trainer::train(
        &model.model,
        params.vars(),
        &train_examples,
        &holdout_examples,
        &model.processor,
        &rc.train,
    )?;
    durations.insert("train_s".into(), t.elapsed().as_secs_f64().into());
    let version = candidate_version(&cfg.model.checkpoint, run_id, chrono::Utc::now());
    let t = Instant::now();
    let candidate = evaluate(&model, &holdout, &version, rc, cfg.model.max_new_tokens)?;
    durations.insert("candidate_eval_s".into(), t.elapsed().as_secs_f64().into());
    tracing::info!(run_id, cider = candidate.cider, baseline = baseline.cider, "candidate scored");

    // 6. Save, upload, register.
    let adapter = params.to_adapter()?;
    let dir = version_dir(&rc.work_dir, &version);
    adapter.save(&dir)?;
    let uri =
        S3Prefix { bucket: rc.adapter_bucket.clone(), prefix: format!("{}{version}/", rc.adapter_prefix) }.to_string();
    adapters.upload(&dir, &uri).await?;
    let metrics = serde_json::json!({"holdout": candidate, "baseline": baseline, "run_id": run_id});
    let registered =
        ModelVersion { version: version.clone(), base_model: cfg.model.checkpoint.clone(), adapter_uri: Some(uri) };
    store.register_candidate(&registered, &metrics).await?;

    // 7. Decide.
    let (promote, decision) = decide(&baseline, &candidate, rc);
    if promote {
        let by = format!("retrain run {run_id}");
        let how =
            crate::store::Promotion { action: crate::store::PromotionAction::Promote, by: &by, reason: &decision };
        store.promote(&version, &how).await?;
        tracing::info!(run_id, %version, "promoted: {decision}");
    } else {
        tracing::info!(run_id, %version, "not promoted: {decision}");
    }
    durations.insert("total_s".into(), t0.elapsed().as_secs_f64().into());
    store
        .succeed_run(
            run_id,
            &RunResult {
                parent_version: promoted.as_ref().map(|p| p.0.as_str()),
                candidate_version: &version,
                promoted: promote,
                decision: &decision,
                last_label_id: max_id,
                n_new_labels: n_new as i32,
                n_train: train_labels.len() as i32,
                n_holdout: holdout.len() as i32,
                losses: serde_json::to_value(&report)?,
                metrics: serde_json::json!({"candidate": candidate, "baseline": baseline}),
                durations: serde_json::Value::Object(durations),
            },
        )
        .await?;
    Ok(RunOutcome {
        run_id,
        status: RunStatus::Succeeded,
        candidate_version: Some(version),
        promoted: promote,
        decision,
        baseline: Some(baseline),
        candidate: Some(candidate),
    })
}

/// Loads the base model unmerged, with the trainable LoRA variables: those of `start_adapter` (the
/// promoted adapter, or `model.adapter`) or a fresh PEFT-initialised LoRA of `retrain.lora_*`.
fn load_model(cfg: &Config, start_adapter: Option<&std::path::Path>) -> anyhow::Result<(Blip2Idc, LoraParams)> {
    let rc = &cfg.retrain;
    let device = crate::model::loader::open_device(cfg.model.device)?;
    let dtype = crate::model::loader::dtype(cfg.model.dtype);
    let blas = crate::model::blas::configure(&cfg.model.blas)?;
    tracing::info!(%blas, "CPU matrix products");
    let mut model = Blip2Idc::load(&LoadOptions {
        checkpoint: cfg.model.checkpoint.clone(),
        adapter: None,
        dtype,
        device: device.clone(),
        merge_adapter: false,
    })?;
    model.check_max_new_tokens(cfg.model.max_new_tokens, "model.max_new_tokens")?;
    let params = match start_adapter {
        Some(dir) => {
            let shapes = model.model.linear_shapes();
            LoraParams::from_adapter(&mut model.model, &Adapter::load(dir, &device, &shapes)?)?
        }
        None => {
            let mut ac = AdapterConfig::blip2idc_default(&cfg.model.checkpoint);
            ac.r = rc.lora_r;
            ac.lora_alpha = rc.lora_alpha;
            ac.lora_dropout = rc.lora_dropout;
            LoraParams::init(&mut model.model, ac, rc.train.seed)?
        }
    };
    Ok((model, params))
}

/// The version of a retrained adapter: the base named as the consumers name it
/// ([`crate::model::short_name`]), with a hub id's `/` as `--` (the version is a directory and an S3
/// key component), the run and the time.
/// The name of a retrained version: `<base>--retrain-<run>-<UTC time>`, made only of `[a-z0-9._-]` so
/// that it survives every system it passes through unchanged (S3 keys, where `+` is listed back as a
/// space by some servers; URLs; metric labels). Versions named before (`<base>+retrain-...`) are
/// still read: they are only looked up, never parsed.
fn candidate_version(checkpoint: &str, run_id: i64, at: chrono::DateTime<chrono::Utc>) -> String {
    let base: String = crate::model::short_name(checkpoint)
        .replace('/', "--")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '_' | '-') => c,
            _ => '-',
        })
        .collect();
    format!("{}--retrain-{run_id}-{}", base.trim_start_matches('.'), at.format("%Y%m%d%H%M%S"))
}

/// Scheduled mode: a run every `retrain.interval` until `stop` fires.
pub async fn run_scheduled(cfg: &Config, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    loop {
        match run_once(cfg).await {
            Ok(o) => tracing::info!(run_id = o.run_id, status = %o.status, promoted = o.promoted, "{}", o.decision),
            Err(e) => tracing::error!("retraining run failed: {e:#}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.retrain.interval) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_versions_name_the_base_like_the_consumers_do() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-26T20:00:00Z").unwrap().to_utc();
        assert_eq!(
            candidate_version("Salesforce/blip2-opt-2.7b", 7, at),
            "salesforce--blip2-opt-2.7b--retrain-7-20261126200000"
        );
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("my-base");
        std::fs::create_dir(&base).unwrap();
        assert_eq!(candidate_version(&format!("{}/", base.display()), 1, at), "my-base--retrain-1-20261126200000");
        for odd in ["My Base+v2 (ü)", "..hidden", "a@b:c"] {
            let odd_dir = dir.path().join(odd);
            std::fs::create_dir(&odd_dir).unwrap();
            let v = candidate_version(&odd_dir.to_string_lossy(), 3, at);
            assert!(v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)), "{v}");
            assert!(!v.starts_with('.'), "{v}");
        }
    }
}
