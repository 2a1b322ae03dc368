//! Caption metrics exactly as pycocoevalcap 1.2 (the coco-caption code used
//! by every image-difference-captioning paper) computes them: BLEU-1..4,
//! METEOR, ROUGE-L and CIDEr-D, after PTB tokenization.
//!
//! * [`evaluate`] scores a set of [`EvalItem`]s (candidate, references,
//!   optional category) and returns a [`Report`] with corpus, per-item and
//!   optionally per-category [`Scores`].
//! * [`score_captions`] is the same for plain candidate / reference lists
//!   (what the retraining job calls).
//! * [`Scores::to_json`] uses pycocoevalcap's key names (`Bleu_1` … `Bleu_4`,
//!   `METEOR`, `ROUGE_L`, `CIDEr`) and raw values (not × 100).
//! * `blip2idc eval` ([`cli`]) is the command-line front end.
//!
//! BLEU, ROUGE-L, CIDEr-D and the tokenizer are native reimplementations,
//! bit-for-bit with pycocoevalcap up to `numpy.log` rounding (see
//! [`pycompat`]); METEOR runs pycocoevalcap's Java jar ([`meteor`]) and is
//! `None` with a reason when Java or the jar is missing.
//!
//! Like pycocoevalcap, CIDEr-D takes its IDF from the references of the
//! evaluated set, so scores depend on which items are evaluated together;
//! the corpus-mode CIDEr-D of a single item is always 0. For monitoring
//! single items use [`cider::FixedIdf`].
//!
//! Per-category scores (`by_category`) are computed as if pycocoevalcap were
//! run on each category's items alone (CIDEr-D IDF from that category's
//! references, BLEU from its summed counts, METEOR's aggregate over its
//! items), reusing the tokenization of the whole set.

pub mod bleu;
pub mod cider;
pub mod cli;
pub mod meteor;
pub mod ngrams;
pub mod ptb;
pub mod pycompat;
pub mod rouge;

use std::collections::HashSet;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub use meteor::MeteorConfig;

/// pycocoevalcap's metric names, in its order.
pub const METRIC_NAMES: [&str; 7] = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"];

/// One item to score: a candidate caption and its reference captions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalItem {
    /// Unique id (pycocoevalcap's image id).
    pub id: String,
    /// The generated caption.
    pub candidate: String,
    /// Reference captions (at least one).
    pub references: Vec<String>,
    /// Optional category (e.g. Emu Edit's `add`, `remove`, …).
    #[serde(default)]
    pub category: Option<String>,
}

/// Options for [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EvalOptions {
    /// Captions are already tokenized (space-separated tokens): skip the PTB
    /// tokenizer.
    pub pretokenized: bool,
    /// Also compute per-category scores.
    pub by_category: bool,
    /// How to run METEOR.
    pub meteor: MeteorConfig,
}

impl EvalOptions {
    /// BLEU, ROUGE-L and CIDEr-D only (no Java process), raw captions.
    pub fn native() -> Self {
        EvalOptions { meteor: MeteorConfig::disabled(), ..EvalOptions::default() }
    }
}

/// The seven pycocoevalcap metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    /// BLEU-1..4.
    pub bleu: [f64; 4],
    /// METEOR, `None` when not computed.
    pub meteor: Option<f64>,
    /// ROUGE-L.
    pub rouge_l: f64,
    /// CIDEr-D.
    pub cider: f64,
}

impl Scores {
    /// `{"Bleu_1": …, "Bleu_2": …, "Bleu_3": …, "Bleu_4": …, "METEOR": … or
    /// null, "ROUGE_L": …, "CIDEr": …}` in that key order.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (name, value) in METRIC_NAMES.iter().zip(self.values()) {
            map.insert((*name).to_string(), value.map_or(serde_json::Value::Null, serde_json::Value::from));
        }
        serde_json::Value::Object(map)
    }

    /// The values in [`METRIC_NAMES`] order.
    pub fn values(&self) -> [Option<f64>; 7] {
        [
            Some(self.bleu[0]),
            Some(self.bleu[1]),
            Some(self.bleu[2]),
            Some(self.bleu[3]),
            self.meteor,
            Some(self.rouge_l),
            Some(self.cider),
        ]
    }
}

/// Scores of one item (pycocoevalcap's `imgToEval` entry).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemScores {
    /// The item id.
    pub id: String,
    /// The item category, if any.
    pub category: Option<String>,
    /// The scores.
    pub scores: Scores,
}

/// Scores of the items of one category.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryScores {
    /// The category (`(none)` for items without one).
    pub category: String,
    /// Number of items.
    pub count: usize,
    /// The scores, computed as a separate evaluation of these items.
    pub scores: Scores,
}

/// Result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Corpus scores (pycocoevalcap's `eval`).
    pub corpus: Scores,
    /// Per-item scores, in input order.
    pub items: Vec<ItemScores>,
    /// Per-category scores in order of first appearance; empty unless
    /// [`EvalOptions::by_category`].
    pub by_category: Vec<CategoryScores>,
    /// Why METEOR is `None` (one line), when it was requested but could not
    /// be computed.
    pub meteor_unavailable_reason: Option<String>,
}

/// Name used for items without a category in per-category results.
pub const NO_CATEGORY: &str = "(none)";

fn validate(items: &[EvalItem]) -> anyhow::Result<()> {
    if items.is_empty() {
        bail!("nothing to evaluate: no items");
    }
    let mut seen = HashSet::new();
    for item in items {
        if !seen.insert(item.id.as_str()) {
            bail!("duplicate item id {:?}", item.id);
        }
        if item.references.is_empty() {
            bail!("item {:?} has no references", item.id);
        }
    }
    Ok(())
}

/// Native (BLEU, ROUGE-L, CIDEr-D) scores of tokenized captions.
struct Native {
    bleu_stats: Vec<bleu::BleuStats>,
    bleu: bleu::BleuScores,
    rouge: rouge::RougeScores,
    cider: cider::CiderScores,
}

fn native(cands: &[String], refs: &[Vec<String>]) -> Native {
    let corpus = ngrams::Corpus::new(cands, refs);
    std::thread::scope(|s| {
        let rouge = s.spawn(|| rouge::score(cands, refs));
        let cider = s.spawn(|| cider::score_corpus(&corpus));
        let bleu_stats = bleu::corpus_stats(&corpus);
        let bleu = bleu::from_stats(&bleu_stats);
        Native {
            bleu_stats,
            bleu,
            rouge: rouge.join().expect("ROUGE-L thread panicked"),
            cider: cider.join().expect("CIDEr-D thread panicked"),
        }
    })
}

/// METEOR on the whole set and on each group of item indices.
type MeteorResult = anyhow::Result<Result<(meteor::MeteorScores, Vec<f64>), String>>;

fn run_meteor(cands: &[String], refs: &[Vec<String>], groups: &[Vec<usize>], config: &MeteorConfig) -> MeteorResult {
    let mut m = match meteor::Meteor::start(config) {
        Ok(m) => m,
        Err(reason) => return Ok(Err(reason)),
    };
    let stats = m.statistics(cands, refs)?;
    let all = m.eval(&stats)?;
    let mut per_group = Vec::with_capacity(groups.len());
    for g in groups {
        let sub: Vec<String> = g.iter().map(|&i| stats[i].clone()).collect();
        per_group.push(m.eval(&sub)?.corpus);
    }
    Ok(Ok((all, per_group)))
}

/// Scores `items` as pycocoevalcap would (PTB tokenization unless
/// `pretokenized`, then BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), in input
/// order. Errors on an empty set, duplicate ids, an item without
/// references, and — only with [`MeteorConfig::required`] — when METEOR
/// cannot be computed.
pub fn evaluate(items: &[EvalItem], opts: &EvalOptions) -> anyhow::Result<Report> {
    validate(items)?;
    let (cands, refs): (Vec<String>, Vec<Vec<String>>) = if opts.pretokenized {
        (items.iter().map(|i| i.candidate.clone()).collect(), items.iter().map(|i| i.references.clone()).collect())
    } else {
        // pycocoevalcap tokenizes all references in one run and all
        // candidates in another.
        let flat: Vec<&str> = items.iter().flat_map(|i| i.references.iter().map(String::as_str)).collect();
        let mut tokenized = ptb::tokenize_captions(&flat).into_iter();
        let refs = items.iter().map(|i| tokenized.by_ref().take(i.references.len()).collect()).collect();
        let cands = ptb::tokenize_captions(&items.iter().map(|i| i.candidate.as_str()).collect::<Vec<_>>());
        (cands, refs)
    };

    // Category groups, in order of first appearance.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    if opts.by_category {
        for (i, item) in items.iter().enumerate() {
            let name = item.category.clone().unwrap_or_else(|| NO_CATEGORY.to_string());
            match groups.iter_mut().find(|(n, _)| *n == name) {
                Some((_, g)) => g.push(i),
                None => groups.push((name, vec![i])),
            }
        }
    }
    let index_groups: Vec<Vec<usize>> = groups.iter().map(|(_, g)| g.clone()).collect();

    let (nat, meteor) = std::thread::scope(|s| {
        let meteor = opts.meteor.enabled.then(|| s.spawn(|| run_meteor(&cands, &refs, &index_groups, &opts.meteor)));
        let nat = native(&cands, &refs);
        (nat, meteor.map(|h| h.join().expect("METEOR thread panicked")))
    });

    let (meteor, reason) = match meteor {
        None => (None, None),
        Some(Ok(Ok(m))) => (Some(m), None),
        Some(Ok(Err(reason))) => (None, Some(reason)),
        Some(Err(e)) => (None, Some(format!("METEOR failed: {}", format!("{e:#}").replace('\n', " ")))),
    };
    if let (Some(reason), true) = (&reason, opts.meteor.required) {
        bail!("METEOR is required but unavailable: {reason}");
    }

    let corpus = Scores {
        bleu: nat.bleu.corpus,
        meteor: meteor.as_ref().map(|(m, _)| m.corpus),
        rouge_l: nat.rouge.corpus,
        cider: nat.cider.corpus,
    };
    let item_scores = items
        .iter()
        .enumerate()
        .map(|(i, item)| ItemScores {
            id: item.id.clone(),
            category: item.category.clone(),
            scores: Scores {
                bleu: nat.bleu.per_item[i],
                meteor: meteor.as_ref().map(|(m, _)| m.per_item[i]),
                rouge_l: nat.rouge.per_item[i],
                cider: nat.cider.per_item[i],
            },
        })
        .collect();
    let by_category = groups
        .iter()
        .enumerate()
        .map(|(gi, (name, idx))| {
            let stats: Vec<bleu::BleuStats> = idx.iter().map(|&i| nat.bleu_stats[i]).collect();
            let rouge: Vec<f64> = idx.iter().map(|&i| nat.rouge.per_item[i]).collect();
            let sub_cands: Vec<&str> = idx.iter().map(|&i| cands[i].as_str()).collect();
            let sub_refs: Vec<&Vec<String>> = idx.iter().map(|&i| &refs[i]).collect();
            let sub_refs: Vec<Vec<&str>> = sub_refs.iter().map(|r| r.iter().map(String::as_str).collect()).collect();
            CategoryScores {
                category: name.clone(),
                count: idx.len(),
                scores: Scores {
                    bleu: bleu::from_stats(&stats).corpus,
                    meteor: meteor.as_ref().map(|(_, g)| g[gi]),
                    rouge_l: pycompat::np_mean(&rouge),
                    cider: cider::score(&sub_cands, &sub_refs).corpus,
                },
            }
        })
        .collect();
    Ok(Report { corpus, items: item_scores, by_category, meteor_unavailable_reason: reason })
}

/// Scores candidate captions against their references (`references[i]`
/// belongs to `candidates[i]`, at least one each) as pycocoevalcap would.
/// Items get ids `"0"`, `"1"`, …; use [`EvalOptions::native`] to skip
/// METEOR, set [`EvalOptions::pretokenized`] if the captions are already
/// PTB-tokenized.
///
/// ```no_run
/// use blip2idc::eval::{score_captions, EvalOptions};
/// let report = score_captions(
///     &["the red car is gone"],
///     &[vec!["the red car has been removed", "the red car is no longer there"]],
///     &EvalOptions::native(),
/// )?;
/// println!("CIDEr-D {}", report.corpus.cider);
/// # anyhow::Ok(())
/// ```
pub fn score_captions<C: AsRef<str>, R: AsRef<str>>(
    candidates: &[C],
    references: &[Vec<R>],
    opts: &EvalOptions,
) -> anyhow::Result<Report> {
    if candidates.len() != references.len() {
        bail!("{} candidates but {} reference lists", candidates.len(), references.len());
    }
    let items: Vec<EvalItem> = candidates
        .iter()
        .zip(references)
        .enumerate()
        .map(|(i, (c, r))| EvalItem {
            id: i.to_string(),
            candidate: c.as_ref().to_string(),
            references: r.iter().map(|s| s.as_ref().to_string()).collect(),
            category: None,
        })
        .collect();
    evaluate(&items, opts).context("scoring captions")
}

#[cfg(test)]
mod tests;
