//! BLIP2IDC pair preprocessing, pixel-exact with PIL + transformers' `BlipImageProcessor`.
//!
//! The authors stack the pair vertically: the original, first resized to the modified image's size
//! (bicubic), on top; the modified image below (W × 2H). The processor then converts to RGB, squeezes
//! the stack to the vision tower's `image_size` square (bicubic), rescales by 1/255 and normalizes
//! with the CLIP mean/std.
//!
//! Resizing is Pillow's `ImagingResample` re-implemented bit for bit (separable, antialiased bicubic
//! with a = -0.5, coefficients quantised to 22-bit fixed point, horizontal pass then vertical pass
//! through a `u8` intermediate) by the `blip2idc-resample` crate (`resample/`): SIMD kernels, and the
//! pair's stack-and-squeeze streamed without building the stack ([`pair_rgb`]). Our 8-bit result
//! equals PIL's exactly, not approximately.

use std::path::Path;

use blip2idc_resample::{Rgb, StackSqueeze};
use image::{DynamicImage, RgbImage};

pub use blip2idc_resample::PassOrder;
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

    /// Stacks a pair and turns it into `pixel_values` (CHW, f32, `3 × height × width`). RGB images are
    /// read in place; others are converted as PIL's `convert("RGB")` does.
    pub fn preprocess_pair(&self, original: &DynamicImage, modified: &DynamicImage) -> Vec<f32> {
        let convert = |img: &DynamicImage| img.as_rgb8().is_none().then(|| img.to_rgb8());
        let (ca, cb) = (convert(original), convert(modified));
        let a = original.as_rgb8().or(ca.as_ref()).expect("converted to RGB above");
        let b = modified.as_rgb8().or(cb.as_ref()).expect("converted to RGB above");
        self.pair_values(a, b)
    }

    /// `pixel_values` of an RGB pair: stacked, squeezed, normalised.
    pub fn pair_values(&self, original: &RgbImage, modified: &RgbImage) -> Vec<f32> {
        if !self.do_resize {
            return self.pixel_values(&stack_pair(original, modified));
        }
        let rgb = pair_rgb(rgb_view(original), rgb_view(modified), (self.width as usize, self.height as usize));
        self.normalize(&rgb)
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
        self.normalize(self.resize(img).as_raw())
    }

    /// Rescale and normalise RGB bytes (already at the model's size) into CHW `f32`.
    pub fn normalize(&self, rgb: &[u8]) -> Vec<f32> {
        let plane = rgb.len() / 3;
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
            out.extend(rgb.chunks_exact(3).map(|px| table[px[c] as usize]));
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

/// An `RgbImage` as the resampler's borrowed view.
pub fn rgb_view(img: &RgbImage) -> Rgb<'_> {
    Rgb::new(img.as_raw(), img.width() as usize, img.height() as usize)
}

/// BLIP2IDC's pair input: `original` resized (bicubic) to `modified`'s size on top, `modified` below.
pub fn stack_pair(original: &RgbImage, modified: &RgbImage) -> RgbImage {
    let (w, h) = modified.dimensions();
    let mut out = if original.dimensions() == (w, h) {
        original.as_raw().clone()
    } else {
        blip2idc_resample::resize(rgb_view(original), w as usize, h as usize, PassOrder::Legacy)
    };
    out.extend_from_slice(modified.as_raw());
    RgbImage::from_raw(w, 2 * h, out).expect("buffer size matches")
}

/// The stacked pair squeezed to `out` (width, height): the same bytes as resizing [`stack_pair`]'s
/// result, without building it.
pub fn pair_rgb(original: Rgb<'_>, modified: Rgb<'_>, out: (usize, usize)) -> Vec<u8> {
    let squeeze = StackSqueeze::new((modified.width, modified.height), out);
    squeeze.finish(&squeeze.top(original), &squeeze.bottom(modified))
}

/// Pillow's `Image.resize((w, h), Image.BICUBIC)` on an RGB image, bit-exact with Pillow ≤ 12.
pub fn resize_bicubic(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    resize_bicubic_with(img, out_w, out_h, PassOrder::Legacy)
}

/// [`resize_bicubic`] with an explicit pass order.
pub fn resize_bicubic_with(img: &RgbImage, out_w: u32, out_h: u32, order: PassOrder) -> RgbImage {
    let out = blip2idc_resample::resize(rgb_view(img), out_w as usize, out_h as usize, order);
    RgbImage::from_raw(out_w, out_h, out).expect("buffer size matches")
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
    fn pair_values_equal_stacking_then_resizing() {
        let orig = RgbImage::from_fn(90, 70, |x, y| image::Rgb([(x * 3) as u8, (y * 7) as u8, (x ^ y) as u8]));
        let modi = RgbImage::from_fn(60, 40, |x, y| image::Rgb([(y * 5) as u8, (x * x) as u8, 200]));
        let p = ImageProcessorConfig::for_image_size(32);
        assert_eq!(p.pair_values(&orig, &modi), p.pixel_values(&stack_pair(&orig, &modi)));
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(20, 30, |x, _| image::Luma([x as u8 * 9])));
        let rgb = DynamicImage::ImageRgb8(modi.clone());
        assert_eq!(p.preprocess_pair(&grey, &rgb), p.pixel_values(&stack_pair(&to_rgb(&grey), &modi)));
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
