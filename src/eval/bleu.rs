//! BLEU-1..4 exactly as pycocoevalcap's `Bleu(4)` (`BleuScorer` with
//! `option='closest'`).
//!
//! * Captions are split with Python's `str.split()`.
//! * Candidate n-gram counts are clipped by the maximum count of that
//!   n-gram in any single reference.
//! * The effective reference length is the reference length closest to the
//!   candidate length, the shorter one on ties.
//! * Precisions are smoothed as `(correct + 1e-15) / (guess + 1e-9)`; the
//!   brevity penalty `exp(1 - 1/ratio)` applies when
//!   `ratio = (testlen + 1e-15) / (reflen + 1e-9)` is below 1.
//! * The corpus score is computed from the counts summed over all items (it
//!   is not the mean of the per-item scores); the per-item scores are the
//!   `bleu_list` pycocoevalcap returns.

use super::ngrams::{Corpus, LocalNgrams, MAX_N};
use super::pycompat::py_pow;

const TINY: f64 = 1e-15;
const SMALL: f64 = 1e-9;

/// The sufficient statistics of one item (pycocoevalcap's `comps`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BleuStats {
    /// Candidate length in words.
    pub testlen: u64,
    /// Effective ("closest") reference length.
    pub reflen: u64,
    /// Number of candidate n-grams, n = 1..4.
    pub guess: [u64; MAX_N],
    /// Number of clipped matching n-grams, n = 1..4.
    pub correct: [u64; MAX_N],
}

/// BLEU-1..4 for a corpus and for each of its items.
#[derive(Debug, Clone, PartialEq)]
pub struct BleuScores {
    /// Corpus BLEU-1..4 (from summed statistics).
    pub corpus: [f64; MAX_N],
    /// Per-item BLEU-1..4, in input order.
    pub per_item: Vec<[f64; MAX_N]>,
}

/// Reusable buffers for [`item_stats`].
#[derive(Default)]
pub struct Scratch {
    ngrams: LocalNgrams,
    cand_count: Vec<u32>,
    ref_count: Vec<u32>,
    ref_max: Vec<u32>,
    order: Vec<u8>,
    cand_ids: Vec<u32>,
    touched: Vec<u32>,
}

/// Computes the statistics of one item from interned words.
pub fn item_stats(candidate: &[u32], references: &[Vec<u32>], scratch: &mut Scratch) -> BleuStats {
    let testlen = candidate.len() as u64;
    let windows = MAX_N * (candidate.len() + references.iter().map(Vec::len).sum::<usize>());
    let sc = scratch;
    sc.ngrams.reset(windows);
    let grow = |v: &mut Vec<u32>, id: u32| {
        if v.len() <= id as usize {
            v.resize(id as usize + 1, 0);
        }
    };
    sc.cand_ids.clear();
    {
        let (cand_count, ref_max, order, cand_ids) =
            (&mut sc.cand_count, &mut sc.ref_max, &mut sc.order, &mut sc.cand_ids);
        sc.ngrams.windows(candidate, MAX_N, |id, n| {
            grow(cand_count, id);
            grow(ref_max, id);
            if order.len() <= id as usize {
                order.resize(id as usize + 1, 0);
            }
            if cand_count[id as usize] == 0 {
                cand_ids.push(id);
                ref_max[id as usize] = 0;
                order[id as usize] = n as u8;
            }
            cand_count[id as usize] += 1;
        });
    }
    let mut reflen: Option<u64> = None;
    for reference in references {
        let l = reference.len() as u64;
        // min((abs(l - testlen), l)) over references.
        reflen = Some(match reflen {
            Some(best) if (best.abs_diff(testlen), best) <= (l.abs_diff(testlen), l) => best,
            _ => l,
        });
        let (ref_count, touched) = (&mut sc.ref_count, &mut sc.touched);
        touched.clear();
        sc.ngrams.windows(reference, MAX_N, |id, _| {
            grow(ref_count, id);
            if ref_count[id as usize] == 0 {
                touched.push(id);
            }
            ref_count[id as usize] += 1;
        });
        for &id in &sc.touched {
            let i = id as usize;
            if i < sc.ref_max.len() {
                sc.ref_max[i] = sc.ref_max[i].max(sc.ref_count[i]);
            }
            sc.ref_count[i] = 0;
        }
    }
    let mut stats = BleuStats { testlen, reflen: reflen.unwrap_or(0), ..BleuStats::default() };
    for k in 0..MAX_N {
        stats.guess[k] = (testlen + 1).saturating_sub(k as u64 + 1);
    }
    for &id in &sc.cand_ids {
        let i = id as usize;
        stats.correct[usize::from(sc.order[i])] += u64::from(sc.cand_count[i].min(sc.ref_max[i]));
        sc.cand_count[i] = 0;
    }
    stats
}

/// BLEU-1..4 from one set of statistics, as pycocoevalcap computes both the
/// per-item and the corpus scores.
pub fn bleu_from_stats(stats: &BleuStats) -> [f64; MAX_N] {
    let mut out = [0.0; MAX_N];
    let mut bleu = 1.0f64;
    for (k, v) in out.iter_mut().enumerate() {
        bleu *= (stats.correct[k] as f64 + TINY) / (stats.guess[k] as f64 + SMALL);
        *v = py_pow(bleu, 1.0 / (k + 1) as f64);
    }
    let ratio = (stats.testlen as f64 + TINY) / (stats.reflen as f64 + SMALL);
    if ratio < 1.0 {
        let bp = (1.0 - 1.0 / ratio).exp();
        for v in &mut out {
            *v *= bp;
        }
    }
    out
}

/// Corpus and per-item BLEU from per-item statistics.
pub fn from_stats(stats: &[BleuStats]) -> BleuScores {
    let mut total = BleuStats::default();
    let per_item = stats
        .iter()
        .map(|s| {
            total.testlen += s.testlen;
            total.reflen += s.reflen;
            for k in 0..MAX_N {
                total.guess[k] += s.guess[k];
                total.correct[k] += s.correct[k];
            }
            bleu_from_stats(s)
        })
        .collect();
    BleuScores { corpus: bleu_from_stats(&total), per_item }
}

/// Per-item statistics for tokenized captions (words separated by
/// whitespace). `references[i]` must not be empty.
pub fn stats<C: AsRef<str>, R: AsRef<str>>(candidates: &[C], references: &[Vec<R>]) -> Vec<BleuStats> {
    corpus_stats(&Corpus::new(candidates, references))
}

/// Per-item statistics of an interned corpus.
pub fn corpus_stats(corpus: &Corpus) -> Vec<BleuStats> {
    let mut scratch = Scratch::default();
    corpus.candidates.iter().zip(&corpus.references).map(|(cand, refs)| item_stats(cand, refs, &mut scratch)).collect()
}

/// BLEU-1..4 of tokenized captions, as `Bleu(4).compute_score(gts, res)`.
pub fn score<C: AsRef<str>, R: AsRef<str>>(candidates: &[C], references: &[Vec<R>]) -> BleuScores {
    from_stats(&stats(candidates, references))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_reference_length_prefers_shorter_on_ties() {
        let s = stats(&["a b c d"], &[vec!["a b c d e f", "a b", "x y z w v u"]]);
        // |6-4| == |2-4|: the shorter (2) wins.
        assert_eq!(s[0].reflen, 2);
        assert_eq!(s[0].guess, [4, 3, 2, 1]);
        assert_eq!(s[0].correct, [4, 3, 2, 1]);
        let s = stats(&["a b c d"], &[vec!["a b", "a b c d e f"]]);
        assert_eq!(s[0].reflen, 2);
    }

    #[test]
    fn clipping_is_per_reference_maximum() {
        let s = stats(&["the the the the"], &[vec!["the cat", "the the dog"]]);
        assert_eq!(s[0].correct[0], 2);
        assert_eq!(s[0].correct[1], 1);
    }

    #[test]
    fn empty_candidate() {
        let s = stats(&[""], &[vec!["a b"]]);
        assert_eq!(s[0], BleuStats { testlen: 0, reflen: 2, guess: [0; 4], correct: [0; 4] });
        let b = bleu_from_stats(&s[0]);
        // Precisions of (0 + 1e-15) / (0 + 1e-9), then a brevity penalty of
        // exp(1 - 1/ratio) with ratio = 1e-15 / (2 + 1e-9): exactly 0.
        assert_eq!(b, [0.0; 4]);
    }
}
