//! The plain scalar resampler: Pillow's `ImagingResampleHorizontal_8bpc` and
//! `ImagingResampleVertical_8bpc` loops, line for line. The SIMD and streaming paths are tested
//! against it (and it against Pillow, by the service's fixtures), and the benchmark reports their
//! speed relative to it. Also the horizontal pass on CPUs without AVX-512 VBMI.

use crate::coeffs::{clip8, Coeffs, HALF};
use crate::PassOrder;

/// Resamples `rows` rows of an RGB buffer `w` pixels wide horizontally to `c.len()` pixels.
pub fn horizontal(src: &[u8], w: usize, rows: std::ops::Range<usize>, c: &Coeffs) -> Vec<u8> {
    let ow = c.len();
    let mut out = vec![0u8; rows.len() * ow * 3];
    for (dst, y) in out.chunks_exact_mut(ow * 3).zip(rows) {
        horizontal_row(&src[y * w * 3..(y + 1) * w * 3], c, dst);
    }
    out
}

/// One row of [`horizontal`].
pub fn horizontal_row(row: &[u8], c: &Coeffs, dst: &mut [u8]) {
    for (xx, px) in dst.chunks_exact_mut(3).enumerate() {
        let (xmin, k) = c.taps(xx);
        let mut acc = [HALF; 3];
        for (x, &wt) in k.iter().enumerate() {
            let p = &row[(xmin + x) * 3..(xmin + x) * 3 + 3];
            acc[0] += p[0] as i32 * wt;
            acc[1] += p[1] as i32 * wt;
            acc[2] += p[2] as i32 * wt;
        }
        px.copy_from_slice(&acc.map(clip8));
    }
}

/// Resamples an RGB buffer `w` pixels wide vertically; `row_offset` is the input row of `src`'s first
/// row.
pub fn vertical(src: &[u8], w: usize, row_offset: usize, c: &Coeffs) -> Vec<u8> {
    let stride = w * 3;
    let mut out = vec![0u8; c.len() * stride];
    for (yy, dst) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, k) = c.taps(yy);
        for (i, d) in dst.iter_mut().enumerate() {
            let mut acc = HALF;
            for (y, &wt) in k.iter().enumerate() {
                acc += src[(ymin - row_offset + y) * stride + i] as i32 * wt;
            }
            *d = clip8(acc);
        }
    }
    out
}

/// Pillow's `Image.resize((ow, oh), Image.BICUBIC)` of an RGB buffer `w` × `h`.
pub fn resize(src: &[u8], w: usize, h: usize, ow: usize, oh: usize, order: PassOrder) -> Vec<u8> {
    let (need_h, need_v) = (w != ow, h != oh);
    match (need_h, need_v) {
        (false, false) => src.to_vec(),
        (true, false) => horizontal(src, w, 0..h, &Coeffs::bicubic(w, ow)),
        (false, true) => vertical(src, w, 0, &Coeffs::bicubic(h, oh)),
        (true, true) => {
            let (hc, vc) = (Coeffs::bicubic(w, ow), Coeffs::bicubic(h, oh));
            if order.vertical_first(w, h, ow, oh) {
                let tmp = vertical(src, w, 0, &vc);
                horizontal(&tmp, w, 0..oh, &hc)
            } else {
                // Only the rows the vertical pass reads are resampled horizontally.
                let rows = vc.input_range();
                let first = rows.start;
                let tmp = horizontal(src, w, rows, &hc);
                vertical(&tmp, ow, first, &vc)
            }
        }
    }
}

/// BLIP2IDC's stacking then the squeeze, the plain way: the original resized to the modified image's
/// size on top of the modified image, the `w` × `2h` result resized to `ow` × `oh`.
pub fn stack_and_squeeze(
    original: &[u8],
    (wa, ha): (usize, usize),
    modified: &[u8],
    (wb, hb): (usize, usize),
    (ow, oh): (usize, usize),
) -> Vec<u8> {
    let mut canvas = resize(original, wa, ha, wb, hb, PassOrder::Legacy);
    canvas.extend_from_slice(modified);
    resize(&canvas, wb, 2 * hb, ow, oh, PassOrder::Legacy)
}
