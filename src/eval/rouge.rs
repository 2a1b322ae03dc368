//! ROUGE-L exactly as pycocoevalcap's `Rouge()`.
//!
//! * Captions are split with `split(" ")`, not `split()`: an empty caption
//!   is one empty token, and doubled spaces make empty tokens too.
//! * For each reference the longest common subsequence (LCS) gives a
//!   precision `lcs / len(candidate)` and a recall `lcs / len(reference)`;
//!   the best precision and the best recall are taken separately over the
//!   references (they may come from different references).
//! * `score = (1 + β²)·P·R / (R + β²·P)` with β = 1.2, or 0 when P or R is 0.
//! * The corpus score is `numpy.mean` of the per-item scores (pairwise
//!   summation, see [`super::pycompat::np_mean`]).

use super::ngrams::FxHashMap;
use super::pycompat::{np_mean, py_pow};

/// pycocoevalcap's β.
pub const BETA: f64 = 1.2;

/// ROUGE-L for a corpus and for each of its items.
#[derive(Debug, Clone, PartialEq)]
pub struct RougeScores {
    /// `numpy.mean` of the per-item scores.
    pub corpus: f64,
    /// Per-item scores, in input order.
    pub per_item: Vec<f64>,
}

/// Length of the longest common subsequence of two token sequences.
pub fn lcs_len(a: &[u32], b: &[u32]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut row = vec![0usize; short.len() + 1];
    for &x in long {
        let mut diag = 0; // row[j - 1] of the previous row
        for (j, &y) in short.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    row[short.len()]
}

/// ROUGE-L of one candidate against its references (token ids from
/// `split(" ")`). `references` must not be empty.
pub fn item_score(candidate: &[u32], references: &[Vec<u32>]) -> f64 {
    let mut prec_max = f64::NEG_INFINITY;
    let mut rec_max = f64::NEG_INFINITY;
    for reference in references {
        let lcs = lcs_len(reference, candidate) as f64;
        prec_max = prec_max.max(lcs / candidate.len() as f64);
        rec_max = rec_max.max(lcs / reference.len() as f64);
    }
    if prec_max != 0.0 && rec_max != 0.0 {
        let beta2 = py_pow(BETA, 2.0);
        ((1.0 + beta2) * prec_max * rec_max) / (rec_max + beta2 * prec_max)
    } else {
        0.0
    }
}

/// ROUGE-L of tokenized captions, as `Rouge().compute_score(gts, res)`.
pub fn score<C: AsRef<str>, R: AsRef<str>>(candidates: &[C], references: &[Vec<R>]) -> RougeScores {
    assert_eq!(candidates.len(), references.len(), "one reference list per candidate");
    let mut ids: FxHashMap<&str, u32> = FxHashMap::default();
    let mut per_item = Vec::with_capacity(candidates.len());
    for (c, refs) in candidates.iter().zip(references) {
        let cand = intern_split_space(c.as_ref(), &mut ids);
        let refs: Vec<Vec<u32>> = refs.iter().map(|r| intern_split_space(r.as_ref(), &mut ids)).collect();
        per_item.push(item_score(&cand, &refs));
    }
    RougeScores { corpus: np_mean(&per_item), per_item }
}

/// `s.split(" ")` as token ids.
fn intern_split_space<'a>(s: &'a str, ids: &mut FxHashMap<&'a str, u32>) -> Vec<u32> {
    s.split(' ')
        .map(|t| {
            let next = ids.len() as u32;
            *ids.entry(t).or_insert(next)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs() {
        assert_eq!(lcs_len(&[1, 2, 3, 4], &[2, 4]), 2);
        assert_eq!(lcs_len(&[2, 4], &[1, 2, 3, 4]), 2);
        assert_eq!(lcs_len(&[1, 2, 3], &[3, 2, 1]), 1);
        assert_eq!(lcs_len(&[], &[1]), 0);
    }

    #[test]
    fn split_on_single_space_quirk() {
        // An empty candidate is one empty token, which matches an empty
        // reference exactly.
        assert_eq!(score(&[""], &[vec![""]]).per_item, vec![1.0]);
        assert_eq!(score(&[""], &[vec!["a b"]]).per_item, vec![0.0]);
        // "a  b" is ["a", "", "b"].
        let s = score(&["a  b"], &[vec!["a b"]]).per_item[0];
        let (p, r) = (2.0 / 3.0, 1.0);
        let b2 = 1.2f64 * 1.2;
        assert_eq!(s, ((1.0 + b2) * p * r) / (r + b2 * p));
    }

    #[test]
    fn best_precision_and_recall_come_from_different_references() {
        // Reference 1 gives P = 1, R = 1/2; reference 2 gives P = 1/2, R = 1.
        let s = score(&["a b"], &[vec!["a b c d", "a"]]).per_item[0];
        assert_eq!(s, 1.0);
    }
}
