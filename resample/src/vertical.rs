//! The vertical pass, one output row at a time: `dst[i] = clip8(½ + Σₜ rows[t][i] · k[t])` over whole
//! rows, register-blocked (a strip of the row is accumulated over all taps in registers, then stored)
//! so that the accumulators never travel through memory. Integer sums: every path gives Pillow's bytes.

#[cfg(target_arch = "x86_64")]
use crate::coeffs::PRECISION_BITS;
use crate::coeffs::{clip8, HALF};
use crate::simd::{active, Simd};

/// One output row from the input rows its taps read (`rows[t]` weighted by `k[t]`).
pub fn row(rows: &[&[u8]], k: &[i32], dst: &mut [u8]) {
    assert_eq!(rows.len(), k.len(), "one weight per row");
    assert!(rows.iter().all(|r| r.len() >= dst.len()), "input rows shorter than the output row");
    #[cfg(target_arch = "x86_64")]
    match active() {
        // SAFETY: the CPU supports the features (`active` never exceeds `detected`).
        Simd::Avx512Vbmi => return unsafe { row_avx512(rows, k, dst) },
        Simd::Avx2 => return unsafe { row_avx2(rows, k, dst) },
        Simd::Portable => {}
    }
    strips::<32>(rows, k, dst)
}

/// 64 bytes per strip in four 16-lane accumulators, kept in registers by construction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn row_avx512(rows: &[&[u8]], k: &[i32], dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    let half = _mm512_set1_epi32(HALF);
    let zero = _mm512_setzero_si512();
    let widen = |p: *const u8| _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i));
    let narrow =
        |a: __m512i| _mm512_cvtusepi32_epi8(_mm512_max_epi32(_mm512_srai_epi32::<{ PRECISION_BITS }>(a), zero));
    let mut x = 0;
    while x + 64 <= n {
        let (mut a0, mut a1, mut a2, mut a3) = (half, half, half, half);
        for (r, &w) in rows.iter().zip(k) {
            // In bounds: every row holds at least `n` bytes (asserted by `row`).
            let p = r.as_ptr().add(x);
            let w = _mm512_set1_epi32(w);
            a0 = _mm512_add_epi32(a0, _mm512_mullo_epi32(widen(p), w));
            a1 = _mm512_add_epi32(a1, _mm512_mullo_epi32(widen(p.add(16)), w));
            a2 = _mm512_add_epi32(a2, _mm512_mullo_epi32(widen(p.add(32)), w));
            a3 = _mm512_add_epi32(a3, _mm512_mullo_epi32(widen(p.add(48)), w));
        }
        let d = dst.as_mut_ptr().add(x) as *mut __m128i;
        _mm_storeu_si128(d, narrow(a0));
        _mm_storeu_si128(d.add(1), narrow(a1));
        _mm_storeu_si128(d.add(2), narrow(a2));
        _mm_storeu_si128(d.add(3), narrow(a3));
        x += 64;
    }
    tail(rows, k, dst, x)
}

/// 32 bytes per strip in four 8-lane accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(rows: &[&[u8]], k: &[i32], dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    let half = _mm256_set1_epi32(HALF);
    let widen = |p: *const u8| _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
    let mut x = 0;
    while x + 32 <= n {
        let (mut a0, mut a1, mut a2, mut a3) = (half, half, half, half);
        for (r, &w) in rows.iter().zip(k) {
            // In bounds: every row holds at least `n` bytes (asserted by `row`).
            let p = r.as_ptr().add(x);
            let w = _mm256_set1_epi32(w);
            a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(widen(p), w));
            a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(widen(p.add(8)), w));
            a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(widen(p.add(16)), w));
            a3 = _mm256_add_epi32(a3, _mm256_mullo_epi32(widen(p.add(24)), w));
        }
        // Shift, then saturate to 0..=255 through 16 bits (packs keep lane order within 128-bit
        // halves; the permute puts the halves back in order).
        let s = |a: __m256i| _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(a);
        let lo = _mm256_packs_epi32(s(a0), s(a1));
        let hi = _mm256_packs_epi32(s(a2), s(a3));
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(lo, hi), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(dst.as_mut_ptr().add(x) as *mut __m256i, bytes);
        x += 32;
    }
    tail(rows, k, dst, x)
}

/// The bytes from `from` on, one at a time.
fn tail(rows: &[&[u8]], k: &[i32], dst: &mut [u8], from: usize) {
    for (i, d) in dst.iter_mut().enumerate().skip(from) {
        let mut acc = HALF;
        for (r, &w) in rows.iter().zip(k) {
            acc += r[i] as i32 * w;
        }
        *d = clip8(acc);
    }
}

/// Strips of `N` bytes: `N` accumulators stay in registers across the taps.
#[inline(always)]
fn strips<const N: usize>(rows: &[&[u8]], k: &[i32], dst: &mut [u8]) {
    let n = dst.len();
    let mut x = 0;
    while x + N <= n {
        let mut acc = [HALF; N];
        for (r, &w) in rows.iter().zip(k) {
            let s: &[u8; N] = r[x..x + N].try_into().expect("strip");
            for i in 0..N {
                acc[i] += s[i] as i32 * w;
            }
        }
        let d: &mut [u8; N] = (&mut dst[x..x + N]).try_into().expect("strip");
        for i in 0..N {
            d[i] = clip8(acc[i]);
        }
        x += N;
    }
    tail(rows, k, dst, x)
}
