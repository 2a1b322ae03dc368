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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::lora::LoraParams;
use super::trainer::{Example, Input, TrainReport};
use crate::adapters::{version_dir, AdapterStore};
use crate::config::Config;
pub use crate::config::RetrainConfig;
use crate::eval::{EvalItem, EvalOptions, Scores};
use crate::event::S3Uri;
use crate::fetch::Fetcher;
use crate::model::lora::{Adapter, AdapterConfig};
use crate::model::{Blip2Idc, LoadOptions};
use crate::store::training::{Label, RunResult};
use crate::store::{ModelVersion, Store};

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub run_id: i64,
    pub status: &'static str,
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
            status: "skipped",
            candidate_version: None,
            promoted: false,
            decision,
            baseline: None,
            candidate: None,
        }
    }
}

/// Holdout scores of one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalSummary {
    pub version: String,
    pub cider: f64,
    pub bleu4: f64,
    pub rouge_l: f64,
    pub meteor: Option<f64>,
    pub by_category: BTreeMap<String, f64>,
    pub holdout_pairs: usize,
}

/// A decoded holdout/train pair with its references.
struct Pair {
    original: Arc<image::RgbImage>,
    modified: Arc<image::RgbImage>,
    references: Vec<String>,
    category: Option<String>,
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
    let device = crate::model::loader::parse_device(&cfg.model.device)?;
    let dtype = crate::model::loader::parse_dtype(&cfg.model.dtype)?;
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
    let params = match &start_adapter {
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
    let uri = format!("s3://{}/{}{}/", rc.adapter_bucket, rc.adapter_prefix, version);
    adapters.upload(&dir, &uri).await?;
    let metrics = serde_json::json!({"holdout": candidate, "baseline": baseline, "run_id": run_id});
    let registered =
        ModelVersion { version: version.clone(), base_model: cfg.model.checkpoint.clone(), adapter_uri: Some(uri) };
    store.register_candidate(&registered, &metrics).await?;

    // 7. Decide.
    let (promote, decision) = decide(&baseline, &candidate, rc);
    if promote {
        store.promote(&version).await?;
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
        status: "succeeded",
        candidate_version: Some(version),
        promoted: promote,
        decision,
        baseline: Some(baseline),
        candidate: Some(candidate),
    })
}

/// Splits for pairs that have none (oldest first): holdout by a stable hash under
/// `holdout_fraction`, topped up to `min_holdout` pairs from the first ones.
fn choose_splits(pairs: &[(String, String)], holdout_pairs: i64, rc: &RetrainConfig) -> Vec<&'static str> {
    let mut need = (rc.min_holdout as i64 - holdout_pairs).max(0);
    pairs
        .iter()
        .map(|(a, b)| {
            // Hash the object keys, not the buckets: the same pairs split the same way in every environment.
            let key = |u: &str| {
                u.strip_prefix("s3://").and_then(|r| r.split_once('/')).map_or(u.to_owned(), |(_, k)| k.to_owned())
            };
            let h = crate::model::loader::fnv1a(format!("{}\n{}", key(a), key(b)).as_bytes());
            let holdout = (h % 10_000) as f64 / 10_000.0 < rc.holdout_fraction || need > 0;
            if holdout {
                need -= 1;
            }
            if holdout {
                "holdout"
            } else {
                "train"
            }
        })
        .collect()
}

/// Fetches and decodes every label's images, `s3.max_concurrency` pairs at a time; groups labels of
/// the same pair (their captions become the pair's references). Labels whose images cannot be
/// loaded are skipped with a warning.
async fn load_pairs(
    fetcher: &Fetcher,
    labels: &[Label],
    limits: &crate::config::DecodeConfig,
    concurrency: usize,
) -> anyhow::Result<(Vec<Pair>, Vec<Pair>)> {
    use futures::StreamExt;
    let mut groups: BTreeMap<(String, String), Vec<&Label>> = BTreeMap::new();
    for l in labels {
        groups.entry((l.original.clone(), l.modified.clone())).or_default().push(l);
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let load = |a: String, b: String| {
        let cancel = cancel.clone();
        async move {
            let (ua, ub) = (S3Uri::parse(&a)?, S3Uri::parse(&b)?);
            let (ba, bb) = fetcher.fetch_pair(&ua, &ub, &cancel).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let limits = limits.clone();
            tokio::task::spawn_blocking(move || {
                let ia = crate::decode::decode(&ba, &limits, &a)?;
                let ib = crate::decode::decode(&bb, &limits, &b)?;
                let rgb = |img| Arc::new(crate::model::preprocess::to_rgb(img));
                anyhow::Ok((rgb(&ia), rgb(&ib)))
            })
            .await?
        }
    };
    // `buffered` keeps the groups' order, so runs over the same labels see the same data.
    let mut loaded = futures::stream::iter(groups)
        .map(|((a, b), ls)| {
            let fut = load(a, b);
            async move { (fut.await, ls) }
        })
        .buffered(concurrency.max(1));
    let (mut train, mut holdout) = (Vec::new(), Vec::new());
    while let Some((result, ls)) = loaded.next().await {
        let (original, modified) = match result {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(label_ids = ?ls.iter().map(|l| l.id).collect::<Vec<_>>(), "skipping labels: {e:#}");
                continue;
            }
        };
        let pair = Pair {
            original,
            modified,
            references: ls.iter().map(|l| l.caption.clone()).collect(),
            category: ls.iter().find_map(|l| l.category.clone()),
        };
        if ls[0].split.as_deref() == Some("holdout") {
            holdout.push(pair);
        } else {
            train.push(pair);
        }
    }
    Ok((train, holdout))
}

/// One training example per reference caption.
fn examples(model: &Blip2Idc, pairs: &[Pair], rc: &RetrainConfig) -> anyhow::Result<Vec<Example>> {
    let mut out = Vec::new();
    for p in pairs {
        let refs: Vec<&str> = p.references.iter().map(|s| s.as_str()).collect();
        for labels in super::loss::encode_labels(&model.tokenizer, &refs, rc.train.max_length, rc.train.pad_id)? {
            out.push(Example {
                input: Input::Pair { original: p.original.clone(), modified: p.modified.clone() },
                labels,
            });
        }
    }
    Ok(out)
}

/// Captions the holdout with the model as it is and scores it.
fn evaluate(
    model: &Blip2Idc,
    holdout: &[Pair],
    version: &str,
    rc: &RetrainConfig,
    max_new_tokens: usize,
) -> anyhow::Result<EvalSummary> {
    let mut items = Vec::new();
    for (i, chunk) in holdout.chunks(8).enumerate() {
        let pvs: Vec<Vec<f32>> = chunk
            .iter()
            .map(|p| model.processor.pixel_values(&crate::model::preprocess::stack_pair(&p.original, &p.modified)))
            .collect();
        let refs: Vec<&[f32]> = pvs.iter().map(|v| v.as_slice()).collect();
        for (j, (g, p)) in model.caption_pixels(&refs, max_new_tokens)?.into_iter().zip(chunk).enumerate() {
            items.push(EvalItem {
                id: format!("{}", i * 8 + j),
                candidate: g.caption,
                references: p.references.clone(),
                category: p.category.clone(),
            });
        }
    }
    let mut opts = if rc.meteor { EvalOptions::default() } else { EvalOptions::native() };
    opts.by_category = true;
    let report = crate::eval::evaluate(&items, &opts)?;
    Ok(summary(version, &report.corpus, &report.by_category, holdout.len()))
}

fn summary(version: &str, s: &Scores, cats: &[crate::eval::CategoryScores], n: usize) -> EvalSummary {
    EvalSummary {
        version: version.to_owned(),
        cider: s.cider,
        bleu4: s.bleu[3],
        rouge_l: s.rouge_l,
        meteor: s.meteor,
        by_category: cats.iter().map(|c| (c.category.clone(), c.scores.cider)).collect(),
        holdout_pairs: n,
    }
}

/// The promotion rule.
pub fn decide(baseline: &EvalSummary, candidate: &EvalSummary, rc: &RetrainConfig) -> (bool, String) {
    let gain = candidate.cider - baseline.cider;
    if gain < rc.promotion_min_cider_gain {
        return (
            false,
            format!(
                "CIDEr-D {:.4} vs {:.4}: gain {gain:+.4} is below retrain.promotion_min_cider_gain {}",
                candidate.cider, baseline.cider, rc.promotion_min_cider_gain
            ),
        );
    }
    for (cat, b) in &baseline.by_category {
        let c = candidate.by_category.get(cat).copied().unwrap_or(0.0);
        if b - c > rc.max_category_regression {
            return (
                false,
                format!("category {cat:?} regresses from {b:.4} to {c:.4} (limit {})", rc.max_category_regression),
            );
        }
    }
    (true, format!("CIDEr-D {:.4} vs {:.4} ({gain:+.4}), no category regresses", candidate.cider, baseline.cider))
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
            Ok(o) => tracing::info!(run_id = o.run_id, status = o.status, promoted = o.promoted, "{}", o.decision),
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

    fn summary(cider: f64, cats: &[(&str, f64)]) -> EvalSummary {
        EvalSummary {
            version: "v".into(),
            cider,
            bleu4: 0.0,
            rouge_l: 0.0,
            meteor: None,
            by_category: cats.iter().map(|(c, v)| (c.to_string(), *v)).collect(),
            holdout_pairs: 10,
        }
    }

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

    #[test]
    fn promotion_needs_a_cider_gain_and_no_large_category_regression() {
        let rc = RetrainConfig { promotion_min_cider_gain: 0.05, max_category_regression: 0.1, ..Default::default() };
        let base = summary(1.0, &[("add", 1.0), ("remove", 1.0)]);
        assert!(decide(&base, &summary(1.2, &[("add", 1.3), ("remove", 0.95)]), &rc).0);
        let (ok, why) = decide(&base, &summary(1.03, &[("add", 1.1), ("remove", 1.0)]), &rc);
        assert!(!ok && why.contains("gain"), "{why}");
        let (ok, why) = decide(&base, &summary(1.5, &[("add", 2.0), ("remove", 0.8)]), &rc);
        assert!(!ok && why.contains("remove"), "{why}");
        let (ok, _) = decide(&base, &summary(1.5, &[("add", 2.0)]), &rc);
        assert!(!ok, "a category missing from the candidate counts as a regression to 0");
    }
}
