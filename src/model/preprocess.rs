//! BLIP2IDC pair preprocessing, pixel-exact with PIL + transformers' `BlipImageProcessor`.
//!
//! The authors stack the pair vertically: the original, first resized to the modified image's size
//! (bicubic), on top; the modified image below (W × 2H). The processor then converts to RGB, squeezes
//! the stack to the vision tower's `image_size` square (bicubic), rescales by 1/255 and normalizes
//! with the CLIP mean/std.
//!
//! Resizing re-implements Pillow's `ImagingResample` (separable, antialiased bicubic with a = -0.5,
//! coefficients quantised to 22-bit fixed point, horizontal pass then vertical pass through a `u8`
//! intermediate), so our 8-bit result equals PIL's exactly, not approximately.

use std::path::Path;

use image::{DynamicImage, RgbImage};
use serde::Deserialize;

/// The subset of `preprocessor_config.json` (BlipImageProcessor) that matters.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessorConfig {
    pub height: u32,
    pub width: u32,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
}

/// CLIP's normalisation constants, BLIP-2's defaults.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

#[derive(Deserialize)]
struct RawProcessorConfig {
    size: Option<serde_json::Value>,
    do_resize: Option<bool>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f64>>,
    image_std: Option<Vec<f64>>,
    resample: Option<u32>,
}

impl ImageProcessorConfig {
    /// BLIP-2's defaults for a vision tower of `image_size`.
    pub fn for_image_size(image_size: u32) -> Self {
        ImageProcessorConfig {
            height: image_size,
            width: image_size,
            do_resize: true,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }

    /// Reads `preprocessor_config.json`; absent keys take BLIP-2's defaults for `image_size`.
    pub fn from_file(path: &Path, image_size: u32) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let raw: RawProcessorConfig = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a valid preprocessor config: {e}", path.display()))?;
        let mut c = Self::for_image_size(image_size);
        if let Some(size) = raw.size {
            let get = |k: &str| size.get(k).and_then(|v| v.as_u64());
            match (get("height"), get("width"), get("shortest_edge"), size.as_u64()) {
                (Some(h), Some(w), _, _) => (c.height, c.width) = (h as u32, w as u32),
                (_, _, Some(s), _) | (_, _, _, Some(s)) => (c.height, c.width) = (s as u32, s as u32),
                _ => anyhow::bail!("{}: unsupported `size` {size}", path.display()),
            }
        }
        if let Some(r) = raw.resample {
            anyhow::ensure!(r == 3, "{}: resample {r} is not bicubic (3), the only one supported", path.display());
        }
        c.do_resize = raw.do_resize.unwrap_or(c.do_resize);
        c.do_rescale = raw.do_rescale.unwrap_or(c.do_rescale);
        c.rescale_factor = raw.rescale_factor.unwrap_or(c.rescale_factor);
        c.do_normalize = raw.do_normalize.unwrap_or(c.do_normalize);
        if let Some(m) = raw.image_mean {
            c.image_mean = three(&m, "image_mean", path)?;
        }
        if let Some(s) = raw.image_std {
            c.image_std = three(&s, "image_std", path)?;
        }
        Ok(c)
    }

    /// Stacks a pair and turns it into `pixel_values` (CHW, f32, `3 × height × width`).
    pub fn preprocess_pair(&self, original: &DynamicImage, modified: &DynamicImage) -> Vec<f32> {
        let stacked = stack_pair(&to_rgb(original), &to_rgb(modified));
        self.pixel_values(&stacked)
    }

    /// The processor's resize step alone (PIL bicubic to `width × height`).
    pub fn resize(&self, img: &RgbImage) -> RgbImage {
        if self.do_resize {
            resize_bicubic(img, self.width, self.height)
        } else {
            img.clone()
        }
    }

    /// Resize, rescale and normalise one RGB image into CHW `f32`.
    pub fn pixel_values(&self, img: &RgbImage) -> Vec<f32> {
        let resized = self.resize(img);
        let (w, h) = resized.dimensions();
        let plane = (w * h) as usize;
        // Inputs are 8-bit: one lookup table per channel does rescale + normalise.
        let scale = if self.do_rescale { self.rescale_factor } else { 1.0 };
        let lut: Vec<[f32; 256]> = (0..3)
            .map(|c| {
                std::array::from_fn(|v| {
                    let x = v as f64 * scale;
                    (if self.do_normalize { (x - self.image_mean[c]) / self.image_std[c] } else { x }) as f32
                })
            })
            .collect();
        let mut out = Vec::with_capacity(3 * plane);
        for (c, table) in lut.iter().enumerate() {
            out.extend(resized.as_raw().chunks_exact(3).map(|px| table[px[c] as usize]));
        }
        out
    }
}

fn three(v: &[f64], key: &str, path: &Path) -> anyhow::Result<[f64; 3]> {
    match v {
        [a, b, c] => Ok([*a, *b, *c]),
        _ => anyhow::bail!("{}: {key} must have 3 values, got {}", path.display(), v.len()),
    }
}

/// PIL's `convert("RGB")`: grey is replicated, alpha is dropped (not composited), palettes expanded.
pub fn to_rgb(img: &DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb.clone(),
        other => other.to_rgb8(),
    }
}

/// BLIP2IDC's pair input: `original` resized (bicubic) to `modified`'s size on top, `modified` below.
pub fn stack_pair(original: &RgbImage, modified: &RgbImage) -> RgbImage {
    let (w, h) = modified.dimensions();
    let top = if original.dimensions() == (w, h) { original.clone() } else { resize_bicubic(original, w, h) };
    let mut out = RgbImage::new(w, 2 * h);
    let row = 3 * w as usize;
    let n = row * h as usize;
    out.as_mut()[..n].copy_from_slice(top.as_raw());
    out.as_mut()[n..].copy_from_slice(modified.as_raw());
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

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

/// Per output index: first input index, and the fixed-point weights (Pillow's `precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
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

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Which separable pass Pillow runs first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassOrder {
    /// Pillow ≤ 12 (the authors' and transformers 4.35's): always horizontal, then vertical.
    Legacy,
    /// Pillow ≥ 13 (python-pillow/Pillow#9549): vertical first when the height shrinks by more
    /// than twice as many pixels as the width.
    Pillow13,
}

/// Pillow's `Image.resize((w, h), Image.BICUBIC)` on an RGB image, bit-exact with Pillow ≤ 12.
pub fn resize_bicubic(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    resize_bicubic_with(img, out_w, out_h, PassOrder::Legacy)
}

/// [`resize_bicubic`] with an explicit pass order.
pub fn resize_bicubic_with(img: &RgbImage, out_w: u32, out_h: u32, order: PassOrder) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    let need_h = in_w != ow;
    let need_v = in_h != oh;
    let src = img.as_raw();
    let out = match (need_h, need_v) {
        (false, false) => return img.clone(),
        (true, false) => horizontal_pass(src, in_w, 0..in_h, &precompute_coeffs(in_w, ow)),
        (false, true) => vertical_pass(src, in_w, 0, &precompute_coeffs(in_h, oh)),
        (true, true) => {
            let horiz = precompute_coeffs(in_w, ow);
            let vert = precompute_coeffs(in_h, oh);
            let vertical_first =
                order == PassOrder::Pillow13 && in_h > oh && (in_h - oh) as i64 > 2 * (in_w as i64 - ow as i64);
            if vertical_first {
                let tmp = vertical_pass(src, in_w, 0, &vert);
                horizontal_pass(&tmp, in_w, 0..oh, &horiz)
            } else {
                // Only the rows the vertical pass reads are resampled horizontally.
                let first = vert.bounds[0].0;
                let last = vert.bounds[oh - 1].0 + vert.bounds[oh - 1].1;
                let tmp = horizontal_pass(src, in_w, first..last, &horiz);
                vertical_pass(&tmp, ow, first, &vert)
            }
        }
    };
    RgbImage::from_raw(out_w, out_h, out).expect("buffer size matches")
}

/// Resamples `rows` of an RGB buffer of width `w` horizontally (Pillow's `ImagingResampleHorizontal_8bpc`).
/// Done as a vertical pass over the transposed rows, whose whole-row accumulation vectorises; integer
/// sums make the result identical.
fn horizontal_pass(src: &[u8], w: usize, rows: std::ops::Range<usize>, c: &Coeffs) -> Vec<u8> {
    let h = rows.len();
    let mut t = vec![0u8; w * h * 3];
    for (r, y) in rows.enumerate() {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for (x, px) in row.chunks_exact(3).enumerate() {
            t[(x * h + r) * 3..(x * h + r) * 3 + 3].copy_from_slice(px);
        }
    }
    let v = vertical_pass(&t, h, 0, c); // [ow][h * 3]
    let ow = c.bounds.len();
    let mut out = vec![0u8; h * ow * 3];
    for (x, col) in v.chunks_exact(h * 3).enumerate() {
        for (r, px) in col.chunks_exact(3).enumerate() {
            out[(r * ow + x) * 3..(r * ow + x) * 3 + 3].copy_from_slice(px);
        }
    }
    out
}

/// Resamples an RGB buffer of width `w` vertically; `row_offset` is the source row of `src`'s first
/// row (Pillow's `ImagingResampleVertical_8bpc` with shifted bounds).
fn vertical_pass(src: &[u8], w: usize, row_offset: usize, c: &Coeffs) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let stride = w * 3;
    let mut out = Vec::with_capacity(c.bounds.len() * stride);
    // Whole rows are accumulated tap by tap (vectorises); integer sums make the order irrelevant.
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, ymax)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + ymax];
        let base = ymin - row_offset;
        acc.fill(half);
        for (y, &wt) in k.iter().enumerate() {
            accumulate_row(&mut acc, &src[(base + y) * stride..(base + y + 1) * stride], wt);
        }
        out.extend(acc.iter().map(|&a| clip8(a)));
    }
    out
}

/// `acc[i] += row[i] · w`, the resize's inner loop, with AVX2 when the CPU has it (the baseline
/// x86-64 target has no 32-bit vector multiply).
fn accumulate_row(acc: &mut [i32], row: &[u8], w: i32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { accumulate_row_avx2(acc, row, w) };
    }
    accumulate_row_generic(acc, row, w)
}

#[inline(always)]
fn accumulate_row_generic(acc: &mut [i32], row: &[u8], w: i32) {
    for (a, &p) in acc.iter_mut().zip(row) {
        *a += p as i32 * w;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_row_avx2(acc: &mut [i32], row: &[u8], w: i32) {
    accumulate_row_generic(acc, row, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_resize_is_a_copy() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]));
        assert_eq!(resize_bicubic(&img, 5, 4), img);
    }

    #[test]
    fn constant_images_stay_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 13, 99]));
        for (w, h) in [(224, 224), (8, 8), (37, 60), (100, 23)] {
            let r = resize_bicubic(&img, w, h);
            assert!(r.pixels().all(|p| p.0 == [200, 13, 99]), "{w}x{h}");
        }
    }

    #[test]
    fn stack_puts_original_on_top() {
        let orig = RgbImage::from_pixel(3, 2, image::Rgb([255, 0, 0]));
        let modi = RgbImage::from_pixel(6, 4, image::Rgb([0, 0, 255]));
        let s = stack_pair(&orig, &modi);
        assert_eq!(s.dimensions(), (6, 8));
        assert_eq!(s.get_pixel(2, 1).0, [255, 0, 0]);
        assert_eq!(s.get_pixel(2, 6).0, [0, 0, 255]);
    }

    #[test]
    fn normalisation_uses_clip_stats() {
        let p = ImageProcessorConfig::for_image_size(2);
        let v = p.pixel_values(&RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 128])));
        assert_eq!(v.len(), 12);
        assert!((v[0] - ((1.0 - CLIP_MEAN[0]) / CLIP_STD[0]) as f32).abs() < 1e-6);
        assert!((v[4] - ((0.0 - CLIP_MEAN[1]) / CLIP_STD[1]) as f32).abs() < 1e-6);
    }
}
