//! Evaluation on the frozen holdout and the promotion rule: the candidate replaces the promoted
//! adapter only if holdout CIDEr-D improves by `retrain.promotion_min_cider_gain` and no category
//! loses more than `retrain.max_category_regression`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::data::Pair;
use crate::config::RetrainConfig;
use crate::eval::{EvalItem, EvalOptions, Scores};
use crate::model::Blip2Idc;

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

/// Captions the holdout with the model as it is and scores it.
pub fn evaluate(
    model: &Blip2Idc,
    holdout: &[Pair],
    version: &str,
    rc: &RetrainConfig,
    max_new_tokens: usize,
) -> anyhow::Result<EvalSummary> {
    let mut items = Vec::new();
    for (i, chunk) in holdout.chunks(8).enumerate() {
        let pvs: Vec<Vec<f32>> = chunk.iter().map(|p| model.processor.pair_values(&p.original, &p.modified)).collect();
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

#[cfg(test)]
impl EvalSummary {
    /// A summary with these CIDEr-D scores (overall and per category), for tests.
    pub(crate) fn scored(cider: f64, cats: &[(&str, f64)]) -> EvalSummary {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_needs_a_cider_gain_and_no_large_category_regression() {
        let rc = RetrainConfig { promotion_min_cider_gain: 0.05, max_category_regression: 0.1, ..Default::default() };
        let base = EvalSummary::scored(1.0, &[("add", 1.0), ("remove", 1.0)]);
        assert!(decide(&base, &EvalSummary::scored(1.2, &[("add", 1.3), ("remove", 0.95)]), &rc).0);
        let (ok, why) = decide(&base, &EvalSummary::scored(1.03, &[("add", 1.1), ("remove", 1.0)]), &rc);
        assert!(!ok && why.contains("gain"), "{why}");
        let (ok, why) = decide(&base, &EvalSummary::scored(1.5, &[("add", 2.0), ("remove", 0.8)]), &rc);
        assert!(!ok && why.contains("remove"), "{why}");
        let (ok, _) = decide(&base, &EvalSummary::scored(1.5, &[("add", 2.0)]), &rc);
        assert!(!ok, "a category missing from the candidate counts as a regression to 0");
    }
}
