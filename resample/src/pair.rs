//! BLIP2IDC's pair input, streamed: the original resized (bicubic) to the modified image's size on
//! top of the modified image, the `W × 2H` stack squeezed to the model's square — without ever
//! building the stack. The squeeze's horizontal pass works row by row, so each half's rows go through
//! it as they are produced (the original's straight out of its own resize), and only the narrow
//! squeezed rows are kept for the final vertical pass. The two halves are independent: they can be
//! computed on two threads, each right after its image is decoded, and each image can be dropped as
//! soon as its half is done. Identical bytes to stacking then resizing with Pillow ≤ 12.

use std::ops::Range;

use crate::coeffs::Coeffs;
use crate::horizontal::HorizontalPlan;
use crate::stream::{Resizer, BLOCK};
use crate::{vertical, Rgb};

/// The squeeze of a stack whose halves are `width × height` to `out` pixels.
pub struct StackSqueeze {
    width: usize,
    height: usize,
    out: (usize, usize),
    horizontal: Option<HorizontalPlan>,
    vertical: Option<Coeffs>,
    /// The stack's rows the vertical pass reads.
    rows: Range<usize>,
}

/// One half's rows after the squeeze's horizontal pass.
pub struct Half(Vec<u8>);

impl StackSqueeze {
    /// For a modified image of `width × height` and a model input of `out` (width, height).
    pub fn new((width, height): (usize, usize), out: (usize, usize)) -> Self {
        let (sw, sh) = (width, 2 * height);
        let horizontal = (sw != out.0).then(|| HorizontalPlan::new(Coeffs::bicubic(sw, out.0), sw));
        let vertical = (sh != out.1).then(|| Coeffs::bicubic(sh, out.1));
        let rows = vertical.as_ref().map_or(0..sh, |v| v.input_range());
        StackSqueeze { width, height, out, horizontal, vertical, rows }
    }

    fn row_bytes(&self) -> usize {
        3 * self.horizontal.as_ref().map_or(self.width, |h| h.out_width())
    }

    fn top_rows(&self) -> Range<usize> {
        self.rows.start.min(self.height)..self.rows.end.min(self.height)
    }

    fn bottom_rows(&self) -> Range<usize> {
        self.rows.start.max(self.height) - self.height..self.rows.end.max(self.height) - self.height
    }

    /// Bytes allocated besides the two images and the output, for an `original` over a `modified`
    /// image squeezed to `out`: the original's resize (ring, block, plans), the squeezed rows of
    /// both halves, the squeeze's plans. Computed without making the plans.
    pub fn estimate_bytes(original: (usize, usize), modified: (usize, usize), out: (usize, usize)) -> usize {
        // Closed form (a header claiming any size costs nothing to estimate); the vertical pass reads
        // every row of the stack.
        let (sw, sh) = (modified.0, 2 * modified.1);
        let ksize = |i: usize, o: usize| (2.0 * (i as f64 / o.max(1) as f64).max(1.0)).ceil() as usize * 2 + 1;
        let row_bytes = 3 * if sw != out.0 { out.0 } else { sw };
        let plans = if sw != out.0 { out.0 * ksize(sw, out.0) * 64 } else { 0 } + out.1 * (ksize(sh, out.1) * 4 + 16);
        Resizer::estimate_bytes(original, modified) + (sh + 2 * BLOCK) * row_bytes + plans + 16 * sh
    }

    /// The top half: `original` (any size) resized to the modified image's size, squeezed horizontally.
    pub fn top(&self, original: Rgb<'_>) -> Half {
        let resize = Resizer::new((original.width, original.height), (self.width, self.height));
        self.half(&resize, original, self.top_rows())
    }

    /// The bottom half: the modified image, squeezed horizontally.
    pub fn bottom(&self, modified: Rgb<'_>) -> Half {
        assert_eq!((modified.width, modified.height), (self.width, self.height), "not the modified image's size");
        let same = Resizer::new((self.width, self.height), (self.width, self.height));
        self.half(&same, modified, self.bottom_rows())
    }

    fn half(&self, resize: &Resizer, image: Rgb<'_>, rows: Range<usize>) -> Half {
        let row = self.row_bytes();
        let mut out = vec![0u8; rows.len() * row];
        let mut done = 0;
        resize.stream(image, rows, &mut |block: &[&[u8]]| {
            let dst = &mut out[done * row..(done + block.len()) * row];
            match &self.horizontal {
                Some(h) => h.rows(block, &mut dst.chunks_exact_mut(row).collect::<Vec<_>>()),
                None => {
                    for (d, s) in dst.chunks_exact_mut(row).zip(block) {
                        d.copy_from_slice(&s[..row]);
                    }
                }
            }
            done += block.len();
        });
        Half(out)
    }

    /// The squeeze's vertical pass over both halves: the model input, `out.0 × out.1` RGB bytes.
    pub fn finish(&self, top: &Half, bottom: &Half) -> Vec<u8> {
        let row = self.row_bytes();
        let rows: Vec<&[u8]> = top.0.chunks_exact(row).chain(bottom.0.chunks_exact(row)).collect();
        assert_eq!(rows.len(), self.rows.len(), "halves from another squeeze");
        let Some(v) = &self.vertical else { return rows.concat() };
        let mut out = vec![0u8; self.out.1 * row];
        for (y, dst) in out.chunks_exact_mut(row).enumerate() {
            let (ymin, k) = v.taps(y);
            let first = ymin - self.rows.start;
            vertical::row(&rows[first..first + k.len()], k, dst);
        }
        out
    }
}
