//! The horizontal pass (Pillow's `ImagingResampleHorizontal_8bpc`) on interleaved RGB rows.
//!
//! With AVX-512 VBMI each output group of `G` pixels (4, 2 or 1, the most whose taps fit one 64-byte
//! window) is computed in one 512-bit register: the register holds four 128-bit slots, each the sum of
//! two taps of one pixel's three channels as 16-bit lanes `[R₀ R₁ G₀ G₁ B₀ B₁ 0 0]`. A plan made once
//! per (input width, output width) gives, per group and step, the window's start, the byte
//! permutation (`vpermb`) that gathers the slots from the window, and the slots' weights. Pillow's
//! weights are 22-bit fixed point, too wide for 16-bit multiply-adds, so each is split into
//! `hi · 2¹¹ + lo` (both fit 16 bits) and the two partial sums are recombined before the shift: exact
//! integer arithmetic, so the bytes are Pillow's. One plan step serves four rows at once.
//! With AVX2 alone, two pixels share a 256-bit register, one per 128-bit lane: each step loads the
//! 8 bytes of one tap pair per pixel and `pshufb` lays them out as the same 16-bit slot.
//! Without either, the plain loop of [`crate::reference`] runs.

use crate::coeffs::Coeffs;
#[cfg(target_arch = "x86_64")]
use crate::coeffs::{HALF, PRECISION_BITS};
use crate::simd::{active, Simd};

/// How to resample rows of `in_width` pixels to `out_width` pixels.
pub struct HorizontalPlan {
    coeffs: Coeffs,
    in_width: usize,
    #[cfg(target_arch = "x86_64")]
    vbmi: Option<VbmiPlan>,
    #[cfg(target_arch = "x86_64")]
    avx2: Option<Avx2Plan>,
}

impl HorizontalPlan {
    /// The plan for `coeffs` (from `in_width` pixels), for the kernels [`active`] now allows.
    pub fn new(coeffs: Coeffs, in_width: usize) -> Self {
        // The kernels read each output's taps from rows of `in_width` pixels: every tap must be one.
        assert!(
            coeffs.bounds.iter().all(|&(min, n)| min + n <= in_width && n <= coeffs.ksize),
            "coefficients read beyond {in_width} input pixels"
        );
        #[cfg(target_arch = "x86_64")]
        let (vbmi, avx2) = match active() {
            Simd::Avx512Vbmi => (Some(VbmiPlan::new(&coeffs, in_width)), None),
            Simd::Avx2 => (None, Some(Avx2Plan::new(&coeffs))),
            Simd::Portable => (None, None),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = active();
        HorizontalPlan {
            coeffs,
            in_width,
            #[cfg(target_arch = "x86_64")]
            vbmi,
            #[cfg(target_arch = "x86_64")]
            avx2,
        }
    }

    /// Output pixels per row.
    pub fn out_width(&self) -> usize {
        self.coeffs.len()
    }

    /// Input pixels per row.
    pub fn in_width(&self) -> usize {
        self.in_width
    }

    /// The plan's size in bytes (memory accounting).
    pub fn bytes(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        let plan = self.vbmi.as_ref().map_or(0, |p| p.steps.len() * std::mem::size_of::<Step>())
            + self.avx2.as_ref().map_or(0, |p| p.steps.len() * std::mem::size_of::<Avx2Step>());
        #[cfg(not(target_arch = "x86_64"))]
        let plan = 0;
        self.coeffs.weights.len() * 4 + self.coeffs.bounds.len() * 16 + plan
    }

    /// Resamples `src[i]` into `dst[i]` for every `i` (rows of `3 · in_width` and `3 · out_width` bytes).
    pub fn rows(&self, src: &[&[u8]], dst: &mut [&mut [u8]]) {
        assert_eq!(src.len(), dst.len(), "one output row per input row");
        assert!(src.iter().all(|r| r.len() >= 3 * self.in_width), "input row too short");
        assert!(dst.iter().all(|r| r.len() == 3 * self.out_width()), "output row of the wrong length");
        // SAFETY (both kernels): a plan exists only when the CPU has its features, and the rows were
        // checked above to hold the widths the plan was made for.
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = &self.vbmi {
            return by_fours(src, dst, |s, d| unsafe { rows_vbmi(p, s, d) }, |s, d| unsafe { rows_vbmi(p, s, d) });
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = &self.avx2 {
            return by_fours(src, dst, |s, d| unsafe { rows_avx2(p, s, d) }, |s, d| unsafe { rows_avx2(p, s, d) });
        }
        for (s, d) in src.iter().zip(dst.iter_mut()) {
            crate::reference::horizontal_row(s, &self.coeffs, d);
        }
    }
}

/// A 22-bit Pillow weight as `hi · 2¹¹ + lo`, both halves within 16 bits (`lo` in 0..2048), so the
/// 16-bit multiply-adds stay exact; the kernels recombine the two sums before the shift.
#[cfg(target_arch = "x86_64")]
fn split_weight(w: i32) -> (i16, i16) {
    ((w >> 11) as i16, (w & 0x7ff) as i16)
}

/// Calls `four` on the rows four at a time (a plan's step is loaded once for four rows), then `one` on
/// each row left.
#[cfg(target_arch = "x86_64")]
fn by_fours(
    src: &[&[u8]],
    dst: &mut [&mut [u8]],
    mut four: impl FnMut([&[u8]; 4], [&mut [u8]; 4]),
    mut one: impl FnMut([&[u8]; 1], [&mut [u8]; 1]),
) {
    let mut dst = dst.iter_mut();
    for s in src.chunks(4) {
        match s {
            [a, b, c, d] => {
                let mut next = || &mut **dst.next().expect("as many output rows as input rows");
                four([a, b, c, d], [next(), next(), next(), next()]);
            }
            rest => {
                for r in rest {
                    one([r], [&mut **dst.next().expect("as many output rows as input rows")]);
                }
            }
        }
    }
}

/// One step of one group: a 64-byte window of the input row and what to take from it.
#[cfg(target_arch = "x86_64")]
#[derive(Clone)]
#[repr(C)]
struct Step {
    /// `vpermb` indices into the window: slot `s`, 16-bit lane `2c + e` ← byte of channel `c` of the
    /// slot's tap `e`.
    index: [u8; 64],
    /// The taps' weights, high and low parts, per 16-bit lane.
    hi: [i16; 32],
    lo: [i16; 32],
    /// The window's first byte in the row, and which of its 64 bytes lie inside the row.
    base: u32,
    load: u64,
}

#[cfg(target_arch = "x86_64")]
struct VbmiPlan {
    /// Pixels per group (4, 2 or 1) and slots per pixel (4 / `group`).
    group: usize,
    slots: usize,
    steps_per_group: usize,
    steps: Vec<Step>,
    out_width: usize,
    /// `pshufb` indices from the 16 result bytes (slot-major, 4 per slot) to `3 · group` RGB bytes.
    store: [u8; 16],
}

#[cfg(target_arch = "x86_64")]
const LOW_BYTES: u64 = 0x0555_0555_0555_0555;

#[cfg(target_arch = "x86_64")]
impl VbmiPlan {
    fn new(c: &Coeffs, in_width: usize) -> Self {
        let row_bytes = 3 * in_width;
        let pairs = c.bounds.iter().map(|&(_, n)| n.div_ceil(2)).max().unwrap_or(0).max(1);
        for group in [4usize, 2, 1] {
            if let Some(plan) = Self::with_group(c, row_bytes, pairs, group) {
                return plan;
            }
        }
        unreachable!("one pixel's 8 taps always fit a 64-byte window")
    }

    fn with_group(c: &Coeffs, row_bytes: usize, pairs: usize, group: usize) -> Option<Self> {
        let out_width = c.len();
        let slots = 4 / group;
        let steps_per_group = pairs.div_ceil(slots);
        let groups = out_width.div_ceil(group);
        let mut steps = Vec::with_capacity(groups * steps_per_group);
        for g in 0..groups {
            for s in 0..steps_per_group {
                // (slot, pixel, first tap) of every slot with at least one tap.
                let live: Vec<(usize, usize, usize)> = (0..4)
                    .filter_map(|slot| {
                        let x = g * group + slot / slots;
                        let tap = 2 * (s * slots + slot % slots);
                        (x < out_width && tap < c.bounds[x].1).then_some((slot, x, tap))
                    })
                    .collect();
                let base = live.iter().map(|&(_, x, t)| 3 * (c.bounds[x].0 + t)).min().unwrap_or(0);
                let mut step = Step { index: [0; 64], hi: [0; 32], lo: [0; 32], base: base as u32, load: 0 };
                if !live.is_empty() {
                    let avail = row_bytes - base;
                    step.load = if avail >= 64 { u64::MAX } else { (1u64 << avail) - 1 };
                }
                for &(slot, x, tap) in &live {
                    let (xmin, k) = c.taps(x);
                    for e in 0..2 {
                        let Some(&w) = k.get(tap + e) else { continue };
                        for ch in 0..3 {
                            let byte = 3 * (xmin + tap + e) + ch - base;
                            if byte >= 64 {
                                return None;
                            }
                            let lane = 8 * slot + 2 * ch + e;
                            step.index[2 * lane] = byte as u8;
                            (step.hi[lane], step.lo[lane]) = split_weight(w);
                        }
                    }
                }
                steps.push(step);
            }
        }
        let mut store = [0x80u8; 16];
        for j in 0..group {
            for ch in 0..3 {
                store[3 * j + ch] = (4 * j * slots + ch) as u8;
            }
        }
        Some(VbmiPlan { group, slots, steps_per_group, steps, out_width, store })
    }
}

/// Runs `plan` over `R` rows at once (each step's permutation and weights are loaded once for all).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
unsafe fn rows_vbmi<const R: usize>(plan: &VbmiPlan, src: [&[u8]; R], dst: [&mut [u8]; R]) {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_si512();
    let half = _mm512_set1_epi32(HALF);
    let store = _mm_loadu_si128(plan.store.as_ptr() as *const __m128i);
    for (g, steps) in plan.steps.chunks_exact(plan.steps_per_group).enumerate() {
        let mut hi = [zero; R];
        let mut lo = [zero; R];
        for st in steps {
            let index = _mm512_loadu_si512(st.index.as_ptr() as *const _);
            let whi = _mm512_loadu_si512(st.hi.as_ptr() as *const _);
            let wlo = _mm512_loadu_si512(st.lo.as_ptr() as *const _);
            for r in 0..R {
                // Bytes outside the row are masked off (never read) and count as zero.
                let at = src[r].as_ptr().add(st.base as usize);
                let window = if st.load == u64::MAX {
                    _mm512_loadu_si512(at as *const _)
                } else {
                    _mm512_maskz_loadu_epi8(st.load, at as *const i8)
                };
                let v = _mm512_maskz_permutexvar_epi8(LOW_BYTES, index, window);
                hi[r] = _mm512_add_epi32(hi[r], _mm512_madd_epi16(v, whi));
                lo[r] = _mm512_add_epi32(lo[r], _mm512_madd_epi16(v, wlo));
            }
        }
        let first = g * plan.group;
        let pixels = plan.group.min(plan.out_width - first);
        let mask: __mmask16 = (1u16 << (3 * pixels)) - 1;
        for r in 0..R {
            let mut acc = _mm512_add_epi32(_mm512_slli_epi32::<11>(hi[r]), lo[r]);
            if plan.slots >= 2 {
                acc = _mm512_add_epi32(acc, _mm512_shuffle_i32x4::<0b10_11_00_01>(acc, acc));
            }
            if plan.slots == 4 {
                acc = _mm512_add_epi32(acc, _mm512_shuffle_i32x4::<0b01_00_11_10>(acc, acc));
            }
            let shifted = _mm512_srai_epi32::<{ PRECISION_BITS }>(_mm512_add_epi32(acc, half));
            let bytes = _mm512_cvtusepi32_epi8(_mm512_max_epi32(shifted, zero));
            let rgb = _mm_shuffle_epi8(bytes, store);
            _mm_mask_storeu_epi8(dst[r].as_mut_ptr().add(3 * first) as *mut i8, mask, rgb);
        }
    }
}

/// One step of a two-pixel group: where each pixel's tap pair starts, and its weights (high and low
/// parts of the pair `(w₀, w₁)` as one 32-bit word per 16-bit lane pair, repeated over the lane).
#[cfg(target_arch = "x86_64")]
#[derive(Clone)]
#[repr(C)]
struct Avx2Step {
    hi: [i32; 8],
    lo: [i32; 8],
    base: [u32; 2],
}

#[cfg(target_arch = "x86_64")]
struct Avx2Plan {
    pairs: usize,
    steps: Vec<Avx2Step>,
    out_width: usize,
}

#[cfg(target_arch = "x86_64")]
impl Avx2Plan {
    fn new(c: &Coeffs) -> Self {
        let out_width = c.len();
        let pairs = c.bounds.iter().map(|&(_, n)| n.div_ceil(2)).max().unwrap_or(0).max(1);
        let word = |a: i16, b: i16| (a as u16 as u32 | (b as u16 as u32) << 16) as i32;
        let mut steps = Vec::with_capacity(out_width.div_ceil(2) * pairs);
        for g in 0..out_width.div_ceil(2) {
            for p in 0..pairs {
                let mut step = Avx2Step { hi: [0; 8], lo: [0; 8], base: [0; 2] };
                for j in 0..2 {
                    let x = (2 * g + j).min(out_width - 1);
                    let (xmin, k) = c.taps(x);
                    // A pixel with fewer pairs reads its own first pair again, with zero weights.
                    let tap = if 2 * p < k.len() { 2 * p } else { 0 };
                    step.base[j] = (3 * (xmin + tap)) as u32;
                    if 2 * p < k.len() && 2 * g + j < out_width {
                        let (h0, l0) = split_weight(k[2 * p]);
                        let (h1, l1) = k.get(2 * p + 1).map_or((0, 0), |&w| split_weight(w));
                        step.hi[4 * j..4 * j + 4].fill(word(h0, h1));
                        step.lo[4 * j..4 * j + 4].fill(word(l0, l1));
                    }
                }
                steps.push(step);
            }
        }
        Avx2Plan { pairs, steps, out_width }
    }
}

/// 8 bytes of `row` from `at` (zero past its end).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load8(row: &[u8], at: usize) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    if at + 8 <= row.len() {
        _mm_loadl_epi64(row.as_ptr().add(at) as *const __m128i)
    } else {
        let mut b = [0u8; 8];
        let n = row.len().saturating_sub(at);
        b[..n].copy_from_slice(&row[at..at + n]);
        _mm_loadl_epi64(b.as_ptr() as *const __m128i)
    }
}

/// Runs `plan` over `R` rows at once.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2<const R: usize>(plan: &Avx2Plan, src: [&[u8]; R], dst: [&mut [u8]; R]) {
    use std::arch::x86_64::*;
    let z = -128i8;
    // Bytes [R₀ G₀ B₀ R₁ G₁ B₁] of a tap pair → 16-bit lanes [R₀ R₁ G₀ G₁ B₀ B₁ 0 0].
    let layout = _mm256_setr_epi8(
        0, z, 3, z, 1, z, 4, z, 2, z, 5, z, z, z, z, z, 0, z, 3, z, 1, z, 4, z, 2, z, 5, z, z, z, z, z,
    );
    let half = _mm256_set1_epi32(HALF);
    let zero = _mm256_setzero_si256();
    for (g, steps) in plan.steps.chunks_exact(plan.pairs).enumerate() {
        let mut hi = [zero; R];
        let mut lo = [zero; R];
        for st in steps {
            let whi = _mm256_loadu_si256(st.hi.as_ptr() as *const __m256i);
            let wlo = _mm256_loadu_si256(st.lo.as_ptr() as *const __m256i);
            for r in 0..R {
                let two = _mm256_set_m128i(load8(src[r], st.base[1] as usize), load8(src[r], st.base[0] as usize));
                let v = _mm256_shuffle_epi8(two, layout);
                hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(v, whi));
                lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(v, wlo));
            }
        }
        let first = 2 * g;
        let pixels = 2.min(plan.out_width - first);
        for r in 0..R {
            let acc = _mm256_add_epi32(_mm256_slli_epi32::<11>(hi[r]), lo[r]);
            let shifted = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(_mm256_add_epi32(acc, half));
            let words = _mm256_packs_epi32(shifted, shifted);
            let bytes = _mm256_packus_epi16(words, words);
            for j in 0..pixels {
                let px = if j == 0 { _mm256_extract_epi32::<0>(bytes) } else { _mm256_extract_epi32::<4>(bytes) };
                dst[r][3 * (first + j)..3 * (first + j) + 3].copy_from_slice(&px.to_le_bytes()[..3]);
            }
        }
    }
}
