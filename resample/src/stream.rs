//! Resizing as a stream of output rows: the horizontal pass feeds a small ring of rows that the
//! vertical pass reads, so a resize holds a few rows, never a full-resolution intermediate. Pillow ≤ 12's
//! pass order (horizontal first, on the input rows the vertical pass reads); identical bytes.

use std::ops::Range;

use crate::coeffs::Coeffs;
use crate::horizontal::HorizontalPlan;
use crate::{vertical, Rgb};

/// Output rows handed to the consumer at once (the horizontal kernel's batch).
pub const BLOCK: usize = 4;

/// Ring rows: the most input rows one block of output rows reads (at least one block).
fn ring_rows(v: &Coeffs) -> usize {
    let oh = v.len();
    (0..oh)
        .map(|y| {
            let last = (y + BLOCK).min(oh) - 1;
            let end = (y..=last).map(|i| v.bounds[i].0 + v.bounds[i].1).max().unwrap_or(0);
            end - v.bounds[y].0
        })
        .max()
        .unwrap_or(0)
        .max(BLOCK)
}

/// A Pillow-exact bicubic resize of `w` × `h` RGB images to `ow` × `oh`, row by row.
pub struct Resizer {
    w: usize,
    h: usize,
    ow: usize,
    oh: usize,
    horizontal: Option<HorizontalPlan>,
    vertical: Option<Coeffs>,
    /// Rows of the horizontal pass kept for the vertical one (both passes only).
    ring: usize,
}

impl Resizer {
    pub fn new((w, h): (usize, usize), (ow, oh): (usize, usize)) -> Self {
        let horizontal = (w != ow).then(|| HorizontalPlan::new(Coeffs::bicubic(w, ow), w));
        let vertical = (h != oh).then(|| Coeffs::bicubic(h, oh));
        let ring = match (&horizontal, &vertical) {
            (Some(_), Some(v)) => ring_rows(v),
            _ => 0,
        };
        Resizer { w, h, ow, oh, horizontal, vertical, ring }
    }

    /// An upper bound of [`Resizer::working_bytes`], in closed form: no coefficient is computed, so a
    /// header claiming any size costs nothing to estimate.
    pub fn estimate_bytes((w, h): (usize, usize), (ow, oh): (usize, usize)) -> usize {
        if (w, h) == (ow, oh) {
            return 0;
        }
        let scale = |i: usize, o: usize| (i as f64 / o.max(1) as f64).max(1.0);
        let ksize = |i: usize, o: usize| (2.0 * scale(i, o)).ceil() as usize * 2 + 1;
        // A block of output rows reads at most (BLOCK - 1) · scale + ksize input rows.
        let ring =
            if w != ow && h != oh { ((BLOCK - 1) as f64 * scale(h, oh)).ceil() as usize + ksize(h, oh) + 1 } else { 0 };
        let plans =
            if w != ow { ow * ksize(w, ow) * 64 } else { 0 } + if h != oh { oh * (ksize(h, oh) * 4 + 16) } else { 0 };
        (ring.max(BLOCK) + BLOCK) * 3 * ow + plans
    }

    /// The output size.
    pub fn out_size(&self) -> (usize, usize) {
        (self.ow, self.oh)
    }

    /// Bytes the stream allocates besides its output: the ring, one block, the plans.
    pub fn working_bytes(&self) -> usize {
        let row = 3 * self.ow;
        let plans = self.horizontal.as_ref().map_or(0, |p| p.bytes())
            + self.vertical.as_ref().map_or(0, |v| v.weights.len() * 4 + v.bounds.len() * 16);
        (self.ring + BLOCK) * row + plans
    }

    /// Calls `sink` with the output rows `rows`, in order, in blocks of at most [`BLOCK`] rows.
    pub fn stream(&self, src: Rgb<'_>, rows: Range<usize>, sink: &mut dyn FnMut(&[&[u8]])) {
        assert_eq!((src.width, src.height), (self.w, self.h), "image size differs from the resizer's");
        assert!(rows.end <= self.oh, "rows beyond the output");
        let row_out = 3 * self.ow;
        let mut block = vec![0u8; BLOCK * row_out];
        let starts = rows.clone().step_by(BLOCK);
        match (&self.horizontal, &self.vertical) {
            (None, None) => {
                for y in starts {
                    let n = BLOCK.min(rows.end - y);
                    let refs: Vec<&[u8]> = (y..y + n).map(|i| src.row(i)).collect();
                    sink(&refs);
                }
            }
            (Some(hp), None) => {
                for y in starts {
                    let n = BLOCK.min(rows.end - y);
                    let input: Vec<&[u8]> = (y..y + n).map(|i| src.row(i)).collect();
                    let mut out: Vec<&mut [u8]> = block.chunks_exact_mut(row_out).take(n).collect();
                    hp.rows(&input, &mut out);
                    sink(&block.chunks_exact(row_out).take(n).collect::<Vec<_>>());
                }
            }
            (None, Some(vc)) => {
                for y in starts {
                    let n = BLOCK.min(rows.end - y);
                    for (i, out) in block.chunks_exact_mut(row_out).take(n).enumerate() {
                        let (ymin, k) = vc.taps(y + i);
                        let input: Vec<&[u8]> = (ymin..ymin + k.len()).map(|r| src.row(r)).collect();
                        vertical::row(&input, k, out);
                    }
                    sink(&block.chunks_exact(row_out).take(n).collect::<Vec<_>>());
                }
            }
            (Some(hp), Some(vc)) => {
                let cap = self.ring;
                let mut ring = vec![0u8; cap * row_out];
                // The next input row the horizontal pass produces (row r lives in ring slot r % cap).
                let mut produced = if rows.is_empty() { 0 } else { vc.bounds[rows.start].0 };
                for y in starts {
                    let n = BLOCK.min(rows.end - y);
                    let need = (y..y + n).map(|i| vc.bounds[i].0 + vc.bounds[i].1).max().unwrap_or(0);
                    debug_assert!(need - vc.bounds[y].0 <= cap, "ring too small");
                    while produced < need {
                        let slot = produced % cap;
                        let k = BLOCK.min(need - produced).min(cap - slot);
                        let input: Vec<&[u8]> = (produced..produced + k).map(|r| src.row(r)).collect();
                        let mut out: Vec<&mut [u8]> =
                            ring[slot * row_out..(slot + k) * row_out].chunks_exact_mut(row_out).collect();
                        hp.rows(&input, &mut out);
                        produced += k;
                    }
                    for (i, out) in block.chunks_exact_mut(row_out).take(n).enumerate() {
                        let (ymin, k) = vc.taps(y + i);
                        let input: Vec<&[u8]> = (ymin..ymin + k.len())
                            .map(|r| &ring[(r % cap) * row_out..(r % cap + 1) * row_out])
                            .collect();
                        vertical::row(&input, k, out);
                    }
                    sink(&block.chunks_exact(row_out).take(n).collect::<Vec<_>>());
                }
            }
        }
    }
}
