//! The retraining job's data: splits for new labels, the labeled pairs' images fetched from S3 and
//! decoded, and the training examples made from them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::trainer::{Example, Input};
use crate::config::RetrainConfig;
use crate::event::S3Uri;
use crate::fetch::Fetcher;
use crate::model::Blip2Idc;
use crate::store::training::Label;

/// A decoded holdout/train pair with its references.
pub struct Pair {
    pub original: Arc<image::RgbImage>,
    pub modified: Arc<image::RgbImage>,
    pub references: Vec<String>,
    pub category: Option<String>,
}

/// Splits for pairs that have none (oldest first): holdout by a stable hash under
/// `holdout_fraction`, topped up to `min_holdout` pairs from the first ones.
pub fn choose_splits(pairs: &[(String, String)], holdout_pairs: i64, rc: &RetrainConfig) -> Vec<&'static str> {
    let mut need = (rc.min_holdout as i64 - holdout_pairs).max(0);
    pairs
        .iter()
        .map(|(a, b)| {
            // Hash the object keys, not the buckets: the same pairs split the same way in every environment.
            let key = |u: &str| S3Uri::parse(u).map_or(u.to_owned(), |uri| uri.key);
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
pub async fn load_pairs(
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
pub fn examples(model: &Blip2Idc, pairs: &[Pair], rc: &RetrainConfig) -> anyhow::Result<Vec<Example>> {
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
