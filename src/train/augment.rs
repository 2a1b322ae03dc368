//! Non-disruptive augmentation, as the BLIP2IDC paper: a light Gaussian blur and a JPEG re-compression.
//! Never crops, flips or colour changes, which would change what the true caption says.

use image::RgbImage;
use rand::Rng;

pub use crate::config::AugmentConfig;

/// Augments one image.
pub fn augment(img: &RgbImage, cfg: &AugmentConfig, rng: &mut impl Rng) -> RgbImage {
    let mut out = img.clone();
    if rng.random_bool(cfg.blur_probability.clamp(0.0, 1.0)) {
        out = gaussian_blur3(&out, rng.random_range(0.1..=0.5));
    }
    if rng.random_bool(cfg.jpeg_probability.clamp(0.0, 1.0)) {
        let q = rng.random_range(cfg.jpeg_quality.0..=cfg.jpeg_quality.1.max(cfg.jpeg_quality.0));
        let bytes = jpeg_bytes(&out, q);
        if let Ok(img) = image::load_from_memory(&bytes) {
            out = crate::model::preprocess::to_rgb(&img);
        }
    }
    out
}

/// JPEG bytes of `img` at `quality` (the `image` crate's encoder).
pub fn jpeg_bytes(img: &RgbImage, quality: u8) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .expect("encoding to memory cannot fail");
    out
}

/// torchvision's `gaussian_blur` with kernel 3 on a `u8` image: separable kernel
/// `exp(-x²/2σ²)` for x in {-1, 0, 1}, normalised, reflect padding, rounded back to `u8`.
pub fn gaussian_blur3(img: &RgbImage, sigma: f64) -> RgbImage {
    let k: Vec<f64> = [-1.0f64, 0.0, 1.0].iter().map(|x| (-(x * x) / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = k.iter().sum();
    let k = [k[0] / s, k[1] / s, k[2] / s];
    let (w, h) = (img.width() as i64, img.height() as i64);
    let reflect = |i: i64, n: i64| -> i64 {
        if n == 1 {
            0
        } else if i < 0 {
            -i
        } else if i >= n {
            2 * n - 2 - i
        } else {
            i
        }
    };
    let src = img.as_raw();
    let mut tmp = vec![0f64; src.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v: f64 = (-1..=1)
                    .map(|d| k[(d + 1) as usize] * src[((y * w + reflect(x + d, w)) * 3 + c) as usize] as f64)
                    .sum();
                tmp[((y * w + x) * 3 + c) as usize] = v;
            }
        }
    }
    let mut out = RgbImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v: f64 =
                    (-1..=1).map(|d| k[(d + 1) as usize] * tmp[((reflect(y + d, h) * w + x) * 3 + c) as usize]).sum();
                out.get_pixel_mut(x as u32, y as u32).0[c as usize] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_flat_images_and_softens_edges() {
        let flat = RgbImage::from_pixel(5, 4, image::Rgb([10, 200, 77]));
        assert_eq!(gaussian_blur3(&flat, 0.4), flat);
        let mut edge = RgbImage::from_pixel(6, 1, image::Rgb([0, 0, 0]));
        for x in 3..6 {
            edge.put_pixel(x, 0, image::Rgb([255, 255, 255]));
        }
        let b = gaussian_blur3(&edge, 0.5);
        assert!(b.get_pixel(2, 0).0[0] > 0 && b.get_pixel(3, 0).0[0] < 255);
        assert_eq!(b.get_pixel(0, 0).0[0], 0);
    }
}
