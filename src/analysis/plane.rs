//! Small float images for the analysis: thumbnails (Pillow-exact bicubic down to a working size, then
//! floats), the eight orientations of the dihedral group, bilinear resampling, crops.

use blip2idc_resample::{PassOrder, Rgb};

/// What the analysis keeps of one decoded image: a thumbnail (RGB bytes) and the image's full size
/// (its header's, which a DCT-scaled decode does not have).
#[derive(Clone, Debug)]
pub struct Thumbnail {
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
    pub full: (usize, usize),
}

impl Thumbnail {
    /// `img` (decoded at any scale of an image of `full` pixels) reduced so that its longer side is
    /// at most `side`: first by an integer box average while that keeps at least twice `side` (cheap:
    /// one pass over the pixels, as Pillow's `thumbnail` does with `reduce`), then Pillow-exact
    /// bicubic.
    pub fn new(img: Rgb<'_>, full: (usize, usize), side: usize) -> Self {
        let k = (img.width.max(img.height) / (2 * side)).max(1);
        let reduced;
        let src = if k > 1 {
            reduced = box_reduce(img, k);
            Rgb::new(&reduced, img.width / k, img.height / k)
        } else {
            img
        };
        let scale = (side as f64 / src.width.max(src.height) as f64).min(1.0);
        let (w, h) = (
            ((src.width as f64 * scale).round() as usize).max(1),
            ((src.height as f64 * scale).round() as usize).max(1),
        );
        let rgb = if (w, h) == (src.width, src.height) {
            (0..h).flat_map(|y| src.row(y).iter().copied()).collect()
        } else {
            blip2idc_resample::resize(src, w, h, PassOrder::Legacy)
        };
        Thumbnail { rgb, width: w, height: h, full }
    }

    pub fn view(&self) -> Rgb<'_> {
        Rgb::new(&self.rgb, self.width, self.height)
    }
}

/// The mean of each `k × k` block of `img` (the last partial row and column of blocks dropped).
fn box_reduce(img: Rgb<'_>, k: usize) -> Vec<u8> {
    let (w, h) = (img.width / k, img.height / k);
    let mut out = Vec::with_capacity(w * h * 3);
    let mut acc = vec![0u32; img.width * 3];
    let area = (k * k) as u32;
    for by in 0..h {
        acc.fill(0);
        for y in by * k..(by + 1) * k {
            for (a, &v) in acc.iter_mut().zip(img.row(y)) {
                *a += v as u32;
            }
        }
        for bx in 0..w {
            for ch in 0..3 {
                let s: u32 = (0..k).map(|i| acc[(bx * k + i) * 3 + ch]).sum();
                out.push(((s + area / 2) / area) as u8);
            }
        }
    }
    out
}

/// A `w × h` image of `c` interleaved float channels.
#[derive(Clone, Debug)]
pub struct Plane {
    pub w: usize,
    pub h: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

impl Plane {
    pub fn new(w: usize, h: usize, c: usize) -> Self {
        Plane { w, h, c, data: vec![0.0; w * h * c] }
    }

    /// `img` reduced so that its longer side is at most `side` (never enlarged), as floats 0..255.
    pub fn thumbnail(img: Rgb<'_>, side: usize) -> Self {
        let scale = (side as f64 / img.width.max(img.height) as f64).min(1.0);
        let (w, h) = (
            ((img.width as f64 * scale).round() as usize).max(1),
            ((img.height as f64 * scale).round() as usize).max(1),
        );
        if (w, h) == (img.width, img.height) {
            return Plane { w, h, c: 3, data: img.data.iter().map(|&b| b as f32).collect() };
        }
        let bytes = blip2idc_resample::resize(img, w, h, PassOrder::Legacy);
        Plane { w, h, c: 3, data: bytes.iter().map(|&b| b as f32).collect() }
    }

    /// Bilinearly resized so that the longer side is `side` (never enlarged).
    pub fn resized_to_side(&self, side: usize) -> Plane {
        let scale = (side as f32 / self.w.max(self.h) as f32).min(1.0);
        self.resized(
            ((self.w as f32 * scale).round() as usize).max(1),
            ((self.h as f32 * scale).round() as usize).max(1),
        )
    }

    #[inline]
    pub fn at(&self, x: usize, y: usize, ch: usize) -> f32 {
        self.data[(y * self.w + x) * self.c + ch]
    }

    /// Luminance (Rec. 601 weights), one channel.
    pub fn luma(&self) -> Plane {
        assert_eq!(self.c, 3);
        let data = self.data.chunks_exact(3).map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]).collect();
        Plane { w: self.w, h: self.h, c: 1, data }
    }

    /// Orientation `d` of the dihedral group: bit 0 transposes, bit 1 flips left-right, bit 2 flips
    /// top-bottom (applied in that order). `orient(orient(p, d), inverse(d)) == p`.
    pub fn orient(&self, d: u8) -> Plane {
        let (w, h) = if d & 1 == 1 { (self.h, self.w) } else { (self.w, self.h) };
        let mut out = Plane::new(w, h, self.c);
        for y in 0..h {
            for x in 0..w {
                let (mut sx, mut sy) = (x, y);
                if d & 2 == 2 {
                    sx = w - 1 - sx;
                }
                if d & 4 == 4 {
                    sy = h - 1 - sy;
                }
                if d & 1 == 1 {
                    (sx, sy) = (sy, sx);
                }
                let (src, dst) = ((sy * self.w + sx) * self.c, (y * w + x) * self.c);
                out.data[dst..dst + self.c].copy_from_slice(&self.data[src..src + self.c]);
            }
        }
        out
    }

    /// Bilinear resampling to `w × h` (pixel centres aligned), for the small planes of the search.
    pub fn resized(&self, w: usize, h: usize) -> Plane {
        self.crop_resized((0.0, 0.0, self.w as f32, self.h as f32), w, h)
    }

    /// The part `[x0, x0 + w) × [y0, y0 + h)`, sampled bilinearly at fractional positions (`x0`, `y0`,
    /// `w`, `h` in this plane's pixels) onto `ow × oh` pixels.
    pub fn crop_resized(&self, (x0, y0, w, h): (f32, f32, f32, f32), ow: usize, oh: usize) -> Plane {
        let mut out = Plane::new(ow, oh, self.c);
        let (sx, sy) = (w / ow as f32, h / oh as f32);
        // Each output column's two source columns (as data offsets) and weight, computed once.
        let cols: Vec<(usize, usize, f32)> = (0..ow)
            .map(|x| {
                let fx = (x0 + (x as f32 + 0.5) * sx - 0.5).clamp(0.0, (self.w - 1) as f32);
                let xa = fx as usize;
                (xa * self.c, (xa + 1).min(self.w - 1) * self.c, fx - xa as f32)
            })
            .collect();
        let c = self.c;
        for (y, row) in out.data.chunks_exact_mut(ow * c).enumerate() {
            let fy = (y0 + (y as f32 + 0.5) * sy - 0.5).clamp(0.0, (self.h - 1) as f32);
            let ya = fy as usize;
            let ty = fy - ya as f32;
            let top = &self.data[ya * self.w * c..(ya + 1) * self.w * c];
            let yb = (ya + 1).min(self.h - 1);
            let bottom = &self.data[yb * self.w * c..(yb + 1) * self.w * c];
            for (px, &(xa, xb, tx)) in row.chunks_exact_mut(c).zip(&cols) {
                for ch in 0..c {
                    let t = top[xa + ch] + (top[xb + ch] - top[xa + ch]) * tx;
                    let b = bottom[xa + ch] + (bottom[xb + ch] - bottom[xa + ch]) * tx;
                    px[ch] = t + (b - t) * ty;
                }
            }
        }
        out
    }
}

/// The orientation that undoes `d`.
pub fn inverse(d: u8) -> u8 {
    // Transposition then flips: undoing it flips first, then transposes, which for a transposing
    // `d` swaps the two flip bits.
    if d & 1 == 1 {
        1 | ((d & 2) << 1) | ((d & 4) >> 1)
    } else {
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientations_invert() {
        let p = Plane { w: 3, h: 2, c: 1, data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] };
        for d in 0..8 {
            let back = p.orient(d).orient(inverse(d));
            assert_eq!((back.w, back.h, &back.data), (3, 2, &p.data), "orientation {d}");
        }
        // Bit 0 alone is the transpose.
        assert_eq!(p.orient(1).data, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
