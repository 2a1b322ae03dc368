//! Pillow's resampling coefficients: `precompute_coeffs` + `normalize_coeffs_8bpc` of
//! `libImaging/Resample.c`, for the bicubic filter (a = -0.5), quantised to 22-bit fixed point.

/// Fixed-point precision of the weights (Pillow's `PRECISION_BITS`).
pub const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Added before the final shift: round half up.
pub const HALF: i32 = 1 << (PRECISION_BITS - 1);

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output index: the first input index and the number of taps (`bounds`), and the taps'
/// fixed-point weights (`ksize` per output index, zero-padded).
#[derive(Clone, Debug)]
pub struct Coeffs {
    pub bounds: Vec<(usize, usize)>,
    pub ksize: usize,
    pub weights: Vec<i32>,
}

impl Coeffs {
    /// Bicubic coefficients resampling `in_size` samples to `out_size`, exactly as Pillow computes them.
    pub fn bicubic(in_size: usize, out_size: usize) -> Coeffs {
        const SUPPORT: f64 = 2.0;
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates toward zero; negatives are clamped to 0 right after.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize).saturating_sub(xmin);
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(xmax) {
                let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            for x in 0..xmax {
                let w = if ww != 0.0 { k[x] / ww } else { k[x] };
                let f = w * (1u32 << PRECISION_BITS) as f64;
                weights[xx * ksize + x] = if w < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
            }
            bounds.push((xmin, xmax));
        }
        Coeffs { bounds, ksize, weights }
    }

    /// The output size.
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    /// Whether there is no output sample.
    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// Output index `i`'s first input index and weights.
    #[inline]
    pub fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (min, n) = self.bounds[i];
        (min, &self.weights[i * self.ksize..i * self.ksize + n])
    }

    /// The input range the outputs read: `[first, last)`.
    pub fn input_range(&self) -> std::ops::Range<usize> {
        match (self.bounds.first(), self.bounds.last()) {
            (Some(&(first, _)), Some(&(min, n))) => first..min + n,
            _ => 0..0,
        }
    }
}

/// Pillow's `clip8`: the fixed-point sum back to a byte.
#[inline(always)]
pub fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(4000, 3000), (3000, 224), (100, 300), (7, 1), (1, 5)] {
            let c = Coeffs::bicubic(i, o);
            for x in 0..o {
                let s: i32 = c.taps(x).1.iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= c.ksize as i32, "{i}->{o} at {x}: {s}");
            }
        }
    }
}
