//! Bit-exact stand-ins for the Python and numpy operations the pycocoevalcap
//! scorers rely on: `str.split()`, `numpy.mean` (pairwise summation) and
//! `float.__pow__` (the C library `pow`, never rewritten into `sqrt` or a
//! multiplication).

use std::hint::black_box;

/// Python's `str.isspace()` for one character (the set `str.split()` with no
/// argument splits on). Unlike Rust's `char::is_whitespace` it includes the
/// information separators U+001C..U+001F.
pub fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\u{1C}'..='\u{20}'
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// Python's `s.split()`: split on runs of whitespace, no empty strings.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// Python's `x ** y` for floats: the C library `pow`. The exponent goes
/// through [`black_box`] so the compiler cannot turn `pow(x, 0.5)` into
/// `sqrt(x)` or `pow(x, 2.0)` into `x * x` (they can differ in the last bit).
#[inline]
pub fn py_pow(x: f64, y: f64) -> f64 {
    x.powf(black_box(y))
}

/// numpy's pairwise summation (`pairwise_sum_DOUBLE`): plain loop below 8
/// elements, 8 accumulators up to 128, recursive halving (rounded down to a
/// multiple of 8) above.
pub fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `numpy.mean` of a contiguous float64 array: `(0.0 + pairwise_sum) / n`.
/// The mean of an empty array is NaN, as in numpy.
pub fn np_mean(a: &[f64]) -> f64 {
    (0.0 + pairwise_sum(a)) / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_python() {
        let v: Vec<&str> = py_split("  a\u{A0}b\u{1C}c  d\te ").collect();
        assert_eq!(v, vec!["a", "b", "c", "d", "e"]);
        assert_eq!(py_split("").count(), 0);
        assert!(!is_py_space('\u{200B}'));
    }

    #[test]
    fn pairwise_sum_differs_from_naive_sum() {
        // 1e16 + 1 + 1 ... : naive summation loses every 1.0, pairwise
        // summation of the ones does not.
        let mut a = vec![1.0f64; 200];
        a[0] = 1e16;
        let naive: f64 = a.iter().fold(0.0, |s, x| s + x);
        assert_eq!(naive, 1e16);
        assert!(pairwise_sum(&a) > 1e16);
        assert_eq!(np_mean(&[1.0, 2.0, 3.0]), 2.0);
        assert!(np_mean(&[]).is_nan());
    }

    /// Values from `numpy.mean` (numpy 2.4) on the fixture's per-image
    /// ROUGE-L and CIDEr lists are checked in the scorer tests; here a
    /// self-consistency check of the block structure.
    #[test]
    fn pairwise_blocks() {
        let a: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin() * 1e3).collect();
        let n2 = 496; // 500 rounded down to a multiple of 8
        assert_eq!(pairwise_sum(&a), pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..]));
    }
}
