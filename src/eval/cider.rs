//! CIDEr-D exactly as pycocoevalcap's `Cider()` (`CiderScorer`, n = 4,
//! σ = 6), plus a fixed-IDF mode for scoring single items.
//!
//! # Corpus mode (the standard number)
//!
//! * Captions are split with Python's `str.split()`; 1..4-gram counts are
//!   kept in dict insertion order (unigrams first, each order in order of
//!   first occurrence), and every floating-point sum runs in that order.
//! * The document frequency `df` of an n-gram is the number of items whose
//!   references contain it, over the **whole evaluated set**; the weight of
//!   an n-gram with term frequency `tf` is `tf · (log(N) − log(max(1, df)))`
//!   where `N` is the number of items.
//! * For each reference and each n: the clipped cosine
//!   `Σ min(w_cand, w_ref) · w_ref / (‖cand‖ · ‖ref‖)` (the division skipped
//!   when a norm is 0), times the length penalty
//!   `e ** (−δ² / (2σ²))` computed as `pow(e, x)` like Python's
//!   `np.e ** x` (not `exp(x)`), where δ is the difference of the **bigram**
//!   counts of candidate and reference (pycocoevalcap's `length` counts
//!   bigrams, so an empty caption has length 0 and a one-word caption too).
//! * Per item: the four n-gram scores summed over references, `numpy.mean`
//!   over n, divided by the number of references, times 10.
//! * The corpus score is `numpy.mean` of the per-item scores.
//!
//! Because the IDF comes from the evaluated set itself, CIDEr-D depends on
//! which items are scored together. In particular **the corpus-mode CIDEr-D
//! of a single item is always 0**: with `N = 1` every reference n-gram has
//! `log(1) − log(1) = 0` weight.
//!
//! # Fixed-IDF mode (monitoring)
//!
//! [`FixedIdf`] freezes the document frequencies and `N` of a reference
//! corpus (built with [`FixedIdf::from_references`], saved and loaded as
//! JSON) and scores any item against them with [`FixedIdf::score_item`].
//! An item of that corpus gets exactly its corpus-mode score; other items
//! get a comparable, stable number. It is **not** the standard CIDEr-D of a
//! test set and must not be reported as such.

use std::collections::HashMap;

use anyhow::{bail, Context};

use super::ngrams::{ngram_key, ngram_words, Corpus, Entry, FxHashMap, NgramInterner, NgramKey, Vocab, MAX_N};
use super::pycompat::{np_mean, py_pow, py_split};

/// pycocoevalcap's σ for the length penalty.
pub const SIGMA: f64 = 6.0;

/// CIDEr-D for a corpus and for each of its items.
#[derive(Debug, Clone, PartialEq)]
pub struct CiderScores {
    /// `numpy.mean` of the per-item scores.
    pub corpus: f64,
    /// Per-item scores, in input order.
    pub per_item: Vec<f64>,
}

/// Python's `min(a, b)`: `b` only if strictly smaller.
#[inline]
fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// A caption's tf-idf vector (`counts2vec`): one weight per entry (same
/// order), per-order norms and the bigram count.
struct Vector {
    weights: Vec<f64>,
    norm: [f64; MAX_N],
    length: u64,
}

/// Per n-gram IDF data: `ref_len - log(max(1, df))` and its square as
/// `pow(x, 2)` (what a term frequency of 1 contributes to the norm).
#[derive(Clone, Copy)]
struct Idf {
    weight: f64,
    weight_sq: f64,
}

fn idf_table(log_df: impl Iterator<Item = f64>, ref_len: f64) -> Vec<Idf> {
    log_df
        .map(|l| {
            let weight = ref_len - l;
            Idf { weight, weight_sq: py_pow(weight, 2.0) }
        })
        .collect()
}

/// `counts2vec`: the weight of an n-gram is `tf * (ref_len - log_df)`; for
/// `tf = 1` that product is exact, so the cached square is the same
/// `pow(w, 2)` pycocoevalcap computes.
fn counts2vec(entries: &[Entry], idf: &[Idf]) -> Vector {
    let mut weights = Vec::with_capacity(entries.len());
    let mut norm = [0.0f64; MAX_N];
    let mut length = 0u64;
    for e in entries {
        let n = usize::from(e.order);
        let d = idf[e.id as usize];
        let (w, sq) = if e.count == 1 {
            (d.weight, d.weight_sq)
        } else {
            let w = f64::from(e.count) * d.weight;
            (w, py_pow(w, 2.0))
        };
        weights.push(w);
        norm[n] += sq;
        if n == 1 {
            length += u64::from(e.count);
        }
    }
    for v in &mut norm {
        *v = v.sqrt();
    }
    Vector { weights, norm, length }
}

/// The CIDEr-D of one item. `index` is scratch space.
fn item_score(candidate: &[Entry], references: &[Vec<Entry>], idf: &[Idf], index: &mut FxHashMap<u32, usize>) -> f64 {
    let hyp = counts2vec(candidate, idf);
    // Position of each candidate n-gram, to look up reference weights.
    index.clear();
    index.extend(candidate.iter().enumerate().map(|(j, e)| (e.id, j)));
    let mut ref_w = vec![0.0f64; candidate.len()];
    let penalty_denominator = 2.0 * py_pow(SIGMA, 2.0);
    let mut score = [0.0f64; MAX_N];
    for reference in references {
        let r = counts2vec(reference, idf);
        // A candidate n-gram missing from the reference weighs 0.0, like
        // pycocoevalcap's defaultdict.
        ref_w.iter_mut().for_each(|w| *w = 0.0);
        for (e, &w) in reference.iter().zip(&r.weights) {
            if let Some(&j) = index.get(&e.id) {
                ref_w[j] = w;
            }
        }
        let mut val = [0.0f64; MAX_N];
        for ((e, &wh), &wr) in candidate.iter().zip(&hyp.weights).zip(&ref_w) {
            val[usize::from(e.order)] += py_min(wh, wr) * wr;
        }
        let delta = hyp.length as f64 - r.length as f64;
        let penalty = py_pow(std::f64::consts::E, -py_pow(delta, 2.0) / penalty_denominator);
        for n in 0..MAX_N {
            if hyp.norm[n] != 0.0 && r.norm[n] != 0.0 {
                val[n] /= hyp.norm[n] * r.norm[n];
            }
            val[n] *= penalty;
            score[n] += val[n];
        }
    }
    let mut avg = np_mean(&score);
    avg /= references.len() as f64;
    avg *= 10.0;
    avg
}

/// Document frequencies by n-gram id: the number of items whose references
/// contain the n-gram.
fn document_frequency(references: &[Vec<Vec<Entry>>], num_ids: usize) -> Vec<f64> {
    let mut df = vec![0.0f64; num_ids];
    let mut seen = vec![usize::MAX; num_ids];
    for (item, refs) in references.iter().enumerate() {
        for r in refs {
            for e in r {
                let i = e.id as usize;
                if seen[i] != item {
                    seen[i] = item;
                    df[i] += 1.0;
                }
            }
        }
    }
    df
}

/// `log(max(1, df))`.
fn log_df(df: f64) -> f64 {
    df.max(1.0).ln()
}

/// CIDEr-D of tokenized captions in corpus mode, as
/// `Cider().compute_score(gts, res)`. Every item needs at least one
/// reference.
pub fn score<C: AsRef<str>, R: AsRef<str>>(candidates: &[C], references: &[Vec<R>]) -> CiderScores {
    score_corpus(&Corpus::new(candidates, references))
}

/// CIDEr-D of an interned corpus in corpus mode.
pub fn score_corpus(corpus: &Corpus) -> CiderScores {
    let mut interner = NgramInterner::with_capacity(corpus.num_words());
    let mut cands = Vec::with_capacity(corpus.candidates.len());
    let mut refs = Vec::with_capacity(corpus.candidates.len());
    for (c, rs) in corpus.candidates.iter().zip(&corpus.references) {
        cands.push(interner.count(c, MAX_N));
        refs.push(rs.iter().map(|r| interner.count(r, MAX_N)).collect::<Vec<_>>());
    }
    let ref_len = (refs.len() as f64).ln();
    let idf = idf_table(document_frequency(&refs, interner.len()).into_iter().map(log_df), ref_len);
    let mut scratch = FxHashMap::default();
    let per_item: Vec<f64> = cands.iter().zip(&refs).map(|(c, rs)| item_score(c, rs, &idf, &mut scratch)).collect();
    CiderScores { corpus: np_mean(&per_item), per_item }
}

/// Frozen document frequencies of a reference corpus, for scoring single
/// items with a stable IDF (monitoring). See the module documentation: this
/// is not the corpus-mode CIDEr-D of a test set.
#[derive(Debug, Clone)]
pub struct FixedIdf {
    vocab: Vocab,
    num_images: usize,
    ref_len: f64,
    df: FxHashMap<NgramKey, f64>,
}

impl FixedIdf {
    /// Freezes the document frequencies of a corpus given as the (tokenized)
    /// reference lists of its images.
    pub fn from_references<R: AsRef<str>>(references: &[Vec<R>]) -> FixedIdf {
        let mut vocab = Vocab::default();
        let mut interner = NgramInterner::default();
        let refs: Vec<Vec<Vec<Entry>>> = references
            .iter()
            .map(|rs| rs.iter().map(|r| interner.count(&vocab.intern_caption(r.as_ref()), MAX_N)).collect())
            .collect();
        let df = document_frequency(&refs, interner.len())
            .into_iter()
            .enumerate()
            .map(|(id, v)| (interner.key(id as u32), v))
            .collect();
        FixedIdf::from_parts(vocab, references.len(), df)
    }

    fn from_parts(vocab: Vocab, num_images: usize, df: FxHashMap<NgramKey, f64>) -> FixedIdf {
        FixedIdf { vocab, num_images, ref_len: (num_images as f64).ln(), df }
    }

    /// Number of images of the frozen corpus (`N`).
    pub fn num_images(&self) -> usize {
        self.num_images
    }

    /// Serializes as `{"num_images": N, "document_frequency": {"a b": 3, …}}`
    /// (n-grams joined with single spaces, sorted for stable output).
    pub fn to_json(&self) -> serde_json::Value {
        let mut entries: Vec<(String, f64)> = self
            .df
            .iter()
            .map(|(&k, &v)| {
                let words: Vec<&str> = ngram_words(k).into_iter().map(|w| self.vocab.word(w)).collect();
                (words.join(" "), v)
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut map = serde_json::Map::new();
        for (k, v) in entries {
            map.insert(k, serde_json::Value::from(v as u64));
        }
        serde_json::json!({ "num_images": self.num_images, "document_frequency": map })
    }

    /// Loads what [`FixedIdf::to_json`] wrote.
    pub fn from_json(value: &serde_json::Value) -> anyhow::Result<FixedIdf> {
        let num_images = value["num_images"].as_u64().context("fixed IDF: missing or invalid \"num_images\"")?;
        let map =
            value["document_frequency"].as_object().context("fixed IDF: missing or invalid \"document_frequency\"")?;
        let mut vocab = Vocab::default();
        let mut df = FxHashMap::default();
        for (ngram, count) in map {
            let words: Vec<u32> = py_split(ngram).map(|w| vocab.intern(w)).collect();
            if words.is_empty() || words.len() > MAX_N {
                bail!("fixed IDF: invalid n-gram {ngram:?}");
            }
            let count = count.as_f64().with_context(|| format!("fixed IDF: invalid count for {ngram:?}"))?;
            df.insert(ngram_key(&words), count);
        }
        let num_images = usize::try_from(num_images).context("fixed IDF: num_images too large")?;
        Ok(FixedIdf::from_parts(vocab, num_images, df))
    }

    /// Fixed-IDF CIDEr-D of one tokenized candidate against its tokenized
    /// references (at least one).
    pub fn score_item<R: AsRef<str>>(&self, candidate: &str, references: &[R]) -> f64 {
        assert!(!references.is_empty(), "CIDEr-D needs at least one reference");
        let mut extra = HashMap::new();
        let mut interner = NgramInterner::default();
        let cand = interner.count(&self.ids(candidate, &mut extra), MAX_N);
        let refs: Vec<Vec<Entry>> =
            references.iter().map(|r| interner.count(&self.ids(r.as_ref(), &mut extra), MAX_N)).collect();
        let idf = idf_table(
            (0..interner.len() as u32).map(|id| log_df(self.df.get(&interner.key(id)).copied().unwrap_or(0.0))),
            self.ref_len,
        );
        item_score(&cand, &refs, &idf, &mut FxHashMap::default())
    }

    /// Fixed-IDF CIDEr-D of many items; `corpus` is their mean.
    pub fn score<C: AsRef<str>, R: AsRef<str>>(&self, candidates: &[C], references: &[Vec<R>]) -> CiderScores {
        assert_eq!(candidates.len(), references.len(), "one reference list per candidate");
        let per_item: Vec<f64> =
            candidates.iter().zip(references).map(|(c, refs)| self.score_item(c.as_ref(), refs)).collect();
        CiderScores { corpus: np_mean(&per_item), per_item }
    }

    /// Word ids for a caption; words unknown to the frozen corpus get ids
    /// past its vocabulary (their n-grams have no document frequency).
    fn ids(&self, caption: &str, extra: &mut HashMap<String, u32>) -> Vec<u32> {
        let base = self.vocab.len() as u32;
        py_split(caption)
            .map(|w| match self.vocab.get(w) {
                Some(id) => id,
                None => {
                    let next = base + extra.len() as u32;
                    *extra.entry(w.to_string()).or_insert(next)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_item_corpus_mode_is_zero() {
        let s = score(&["a red car"], &[vec!["a red car", "the red car"]]);
        assert_eq!(s.per_item, vec![0.0]);
        assert_eq!(s.corpus, 0.0);
    }

    #[test]
    fn length_counts_bigrams() {
        let mut vocab = Vocab::default();
        let mut interner = NgramInterner::default();
        let one = interner.count(&vocab.intern_caption("a"), MAX_N);
        let none = interner.count(&vocab.intern_caption(""), MAX_N);
        let three = interner.count(&vocab.intern_caption("a b c a"), MAX_N);
        let idf = idf_table(std::iter::repeat_n(0.0, interner.len()), 1.0);
        assert_eq!(counts2vec(&one, &idf).length, 0);
        assert_eq!(counts2vec(&none, &idf).length, 0);
        assert_eq!(counts2vec(&three, &idf).length, 3);
    }

    #[test]
    fn fixed_idf_round_trips_and_matches_corpus_mode() {
        let cands = ["a red car", "the dog", "a blue car is parked"];
        let refs = vec![
            vec!["a red car", "the red car is here"],
            vec!["a dog", "the dog sits"],
            vec!["a blue car", "the blue car"],
        ];
        let corpus = score(&cands, &refs);
        let idf = FixedIdf::from_references(&refs);
        let idf2 = FixedIdf::from_json(&idf.to_json()).expect("round trip");
        assert_eq!(idf2.num_images(), 3);
        for i in 0..3 {
            assert_eq!(idf.score_item(cands[i], &refs[i]), corpus.per_item[i]);
            assert_eq!(idf2.score_item(cands[i], &refs[i]), corpus.per_item[i]);
        }
        assert_eq!(idf.score(&cands, &refs), corpus);
        // Unknown words are fine.
        assert!(idf.score_item("zebra", &["a zebra"]) >= 0.0);
        assert!(FixedIdf::from_json(&serde_json::json!({"num_images": 1})).is_err());
    }
}
