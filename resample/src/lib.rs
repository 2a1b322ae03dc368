//! Pillow-exact bicubic resampling of 8-bit RGB images, fast and streaming.
//!
//! BLIP2IDC's input is made with PIL: the original resized to the modified image's size, stacked on
//! top of it, the stack squeezed to the model's square, all with `Image.BICUBIC`. Pillow resamples
//! separably with 22-bit fixed-point weights and a byte between the passes, so matching it exactly
//! means reproducing that arithmetic, not approximating the filter. This crate does, in three layers:
//!
//! - [`coeffs`]: Pillow's coefficients; [`reference`]: Pillow's loops, line for line (the yardstick);
//! - kernels: the vertical pass register-blocked over whole rows ([`vertical`]), the horizontal pass
//!   as byte permutations feeding 16-bit multiply-adds with split weights ([`horizontal`]; AVX-512
//!   VBMI, else the plain loop), selected at run time ([`simd`]);
//! - streaming: a resize as a stream of rows through a small ring ([`stream::Resizer`]), and the
//!   pair's stack-and-squeeze without the stack ([`pair::StackSqueeze`]).
//!
//! Every path gives the same bytes as [`reference`] (tested on random sizes and pixels, every kernel
//! family), and `reference` gives Pillow's (tested by the service against Pillow's own output).

pub mod coeffs;
pub mod horizontal;
pub mod pair;
pub mod reference;
pub mod simd;
pub mod stream;
pub mod vertical;

pub use pair::StackSqueeze;

/// An RGB image borrowed as bytes: `height` rows of `3 · width` bytes.
#[derive(Clone, Copy, Debug)]
pub struct Rgb<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
}

impl<'a> Rgb<'a> {
    /// Panics unless `data` holds exactly `width × height` RGB pixels.
    pub fn new(data: &'a [u8], width: usize, height: usize) -> Self {
        assert_eq!(data.len(), 3 * width * height, "{width}x{height} RGB needs {} bytes", 3 * width * height);
        Rgb { data, width, height }
    }

    /// Row `y`.
    #[inline]
    pub fn row(&self, y: usize) -> &'a [u8] {
        &self.data[3 * self.width * y..3 * self.width * (y + 1)]
    }
}

/// Which separable pass Pillow runs first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassOrder {
    /// Pillow ≤ 12 (the authors' and transformers 4.35's): always horizontal, then vertical.
    Legacy,
    /// Pillow ≥ 13 (python-pillow/Pillow#9549): vertical first when the height shrinks by more than
    /// twice as many pixels as the width.
    Pillow13,
}

impl PassOrder {
    /// Whether this order runs the vertical pass first for a `w × h` → `ow × oh` resize.
    pub fn vertical_first(self, w: usize, h: usize, ow: usize, oh: usize) -> bool {
        self == PassOrder::Pillow13 && w != ow && h > oh && (h - oh) as i64 > 2 * (w as i64 - ow as i64)
    }
}

/// Pillow's `Image.resize((ow, oh), Image.BICUBIC)` of an RGB image, in `order`.
pub fn resize(src: Rgb<'_>, ow: usize, oh: usize, order: PassOrder) -> Vec<u8> {
    let (w, h) = (src.width, src.height);
    let row = 3 * ow;
    let mut out = vec![0u8; row * oh];
    if order.vertical_first(w, h, ow, oh) {
        let tall = resize(src, w, oh, order);
        let plan = horizontal::HorizontalPlan::new(coeffs::Coeffs::bicubic(w, ow), w);
        let input: Vec<&[u8]> = tall.chunks_exact(3 * w).collect();
        plan.rows(&input, &mut out.chunks_exact_mut(row).collect::<Vec<_>>());
        return out;
    }
    let mut done = 0;
    stream::Resizer::new((w, h), (ow, oh)).stream(src, 0..oh, &mut |block: &[&[u8]]| {
        for (d, s) in out[done * row..].chunks_exact_mut(row).zip(block) {
            d.copy_from_slice(&s[..row]);
        }
        done += block.len();
    });
    out
}

/// BLIP2IDC's stacking and squeeze of a pair, on one thread: the model input (`out.0 × out.1` RGB).
pub fn stack_and_squeeze(original: Rgb<'_>, modified: Rgb<'_>, out: (usize, usize)) -> Vec<u8> {
    let s = StackSqueeze::new((modified.width, modified.height), out);
    let top = s.top(original);
    let bottom = s.bottom(modified);
    s.finish(&top, &bottom)
}

#[cfg(test)]
mod tests;
