//! Every fast path against the reference loops, on random pixels and sizes, for each kernel family
//! this CPU has.

use super::*;
use simd::Simd;

/// A small deterministic generator (no dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Pixels with both smooth regions and hard edges (the clamp at 0 and 255 gets exercised).
    fn image(&mut self, w: usize, h: usize) -> Vec<u8> {
        let kind = self.below(3);
        (0..w * h * 3)
            .map(|i| match kind {
                0 => self.next() as u8,
                1 => {
                    if (i / 3 / 7 + i / 3 / w / 5).is_multiple_of(2) {
                        255
                    } else {
                        0
                    }
                }
                _ => ((i % (3 * w)) * 255 / (3 * w).max(1)) as u8 ^ (self.next() as u8 & 7),
            })
            .collect()
    }
}

fn levels() -> Vec<Simd> {
    [Simd::Portable, Simd::Avx2, Simd::Avx512Vbmi].into_iter().filter(|&l| l <= simd::detected()).collect()
}

/// Runs `f` once per kernel family (the limit is process-wide; results must not depend on it, so
/// tests running meanwhile are unaffected).
fn each_level(mut f: impl FnMut(Simd)) {
    for level in levels() {
        simd::limit(level);
        f(level);
    }
    simd::limit(Simd::Avx512Vbmi);
}

#[test]
fn resize_matches_the_reference_on_random_sizes() {
    let mut rng = Lcg(7);
    let mut cases: Vec<(usize, usize, usize, usize)> = vec![
        (1, 1, 5, 3),
        (5, 3, 1, 1),
        (400, 300, 300, 225),
        (300, 225, 400, 300),
        (1000, 40, 224, 224),
        (224, 224, 224, 224),
        (37, 500, 37, 20),
        (600, 7, 13, 7),
        (2000, 3, 37, 2),
    ];
    for _ in 0..40 {
        let (w, h) = (1 + rng.below(300), 1 + rng.below(120));
        let (ow, oh) = (1 + rng.below(300), 1 + rng.below(120));
        cases.push((w, h, ow, oh));
    }
    for &(w, h, ow, oh) in &cases {
        let img = rng.image(w, h);
        for order in [PassOrder::Legacy, PassOrder::Pillow13] {
            let want = reference::resize(&img, w, h, ow, oh, order);
            each_level(|level| {
                let got = resize(Rgb::new(&img, w, h), ow, oh, order);
                assert!(got == want, "{w}x{h} -> {ow}x{oh} ({order:?}, {level:?}) differs from the reference");
            });
        }
    }
}

#[test]
fn stack_and_squeeze_matches_stacking_then_resizing() {
    let mut rng = Lcg(11);
    type Size = (usize, usize);
    let mut cases: Vec<(Size, Size, Size)> = vec![
        ((400, 300), (300, 225), (224, 224)),
        ((300, 225), (400, 300), (224, 224)),
        ((64, 64), (64, 64), (224, 224)),
        ((224, 112), (224, 112), (224, 224)),
        ((50, 80), (224, 40), (224, 224)),
        ((9, 9), (3, 2), (8, 8)),
        ((1, 1), (1, 1), (4, 4)),
        ((640, 480), (700, 90), (16, 16)),
    ];
    for _ in 0..30 {
        let a = (1 + rng.below(260), 1 + rng.below(200));
        let b = (1 + rng.below(260), 1 + rng.below(200));
        let s = 1 + rng.below(64);
        cases.push((a, b, (s, s)));
    }
    for &(a, b, out) in &cases {
        let (ia, ib) = (rng.image(a.0, a.1), rng.image(b.0, b.1));
        let want = reference::stack_and_squeeze(&ia, a, &ib, b, out);
        each_level(|level| {
            let got = stack_and_squeeze(Rgb::new(&ia, a.0, a.1), Rgb::new(&ib, b.0, b.1), out);
            assert!(got == want, "{a:?} over {b:?} -> {out:?} ({level:?}) differs from the reference");
        });
    }
}

#[test]
fn working_bytes_are_small_next_to_the_images() {
    let extra = StackSqueeze::estimate_bytes((4000, 3000), (3000, 2250), (224, 224));
    assert!(extra < 12 << 20, "{extra} bytes");
    assert!(extra > 4500 * 224 * 3, "the squeezed rows are counted");
    let resize = stream::Resizer::new((4000, 3000), (3000, 2250));
    assert!(resize.working_bytes() <= stream::Resizer::estimate_bytes((4000, 3000), (3000, 2250)));
}
