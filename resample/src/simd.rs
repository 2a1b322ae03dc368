//! Which instruction set the kernels use: detected once, and limitable (tests run every path on one
//! machine; the benchmark reports the portable figures beside the SIMD ones). Results are identical
//! on every path; only the speed differs.

use std::sync::atomic::{AtomicU8, Ordering};

/// The kernel families, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Plain Rust (the compiler's own vectorisation for the target).
    Portable,
    /// AVX2: the vertical pass 8 lanes wide, the horizontal pass one pixel per 128-bit lane.
    Avx2,
    /// AVX-512 F/BW/VL + VBMI (Intel Ice Lake and later, AMD Zen 4 and later): both passes 16 lanes
    /// wide, the horizontal one as byte permutations feeding 16-bit multiply-adds.
    Avx512Vbmi,
}

static LIMIT: AtomicU8 = AtomicU8::new(Simd::Avx512Vbmi as u8);

/// What this CPU supports.
pub fn detected() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vbmi") {
            return Simd::Avx512Vbmi;
        }
        if has!("avx2") {
            return Simd::Avx2;
        }
    }
    Simd::Portable
}

/// What the kernels use now: [`detected`], capped by [`limit`].
pub fn active() -> Simd {
    let cap = match LIMIT.load(Ordering::Relaxed) {
        0 => Simd::Portable,
        1 => Simd::Avx2,
        _ => Simd::Avx512Vbmi,
    };
    detected().min(cap)
}

/// Caps the kernels at `level` for the whole process (plans made before keep their kind).
pub fn limit(level: Simd) {
    LIMIT.store(level as u8, Ordering::Relaxed);
}
