//! Real photographs for benchmarks and evaluation sets: the colour sample images that scikit-image's
//! wheel ships in `skimage/data/` (public-domain and CC0 photographs: an astronaut, a cat, coffee, a
//! motorcycle, a rocket, ...), fetched once from PyPI with pip into a cache folder, and photo-sized
//! image pairs made from them (upscaled, edited, re-encoded) as republished copies look.

use std::path::{Path, PathBuf};

use anyhow::Context;
use image::imageops::{self, FilterType};
use image::RgbImage;

/// The scikit-image release whose sample photographs are used (pinned: the images stay the same).
pub const SCIKIT_IMAGE: &str = "scikit-image==0.26.0";

/// The colour photographs of `skimage/data/` (name, file).
pub const PHOTOS: [&str; 8] = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
];

/// Where the photographs are kept: `$BLIP2IDC_PHOTOS`, else `$HOME/.cache/blip2idc/photos`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BLIP2IDC_PHOTOS") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(".cache/blip2idc/photos")
}

/// The photographs, downloading scikit-image's wheel with `python3 -m pip download` into `dir` the
/// first time (a package registry is the one network source allowed here).
pub fn sample_photos(dir: &Path) -> anyhow::Result<Vec<(String, RgbImage)>> {
    if PHOTOS.iter().any(|p| !dir.join(p).exists()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let wheels = dir.join("wheel");
        let out = std::process::Command::new("python3")
            .args(["-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", SCIKIT_IMAGE, "-d"])
            .arg(&wheels)
            .output()
            .context("running python3 -m pip download (needs Python with pip)")?;
        anyhow::ensure!(
            out.status.success(),
            "pip download {SCIKIT_IMAGE} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = "import glob, sys, zipfile\n\
            w = sorted(glob.glob(sys.argv[1] + '/scikit_image-*.whl'))[-1]\n\
            z = zipfile.ZipFile(w)\n\
            for name in sys.argv[3:]:\n    open(sys.argv[2] + '/' + name, 'wb').write(z.read('skimage/data/' + name))\n";
        let out = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&wheels)
            .arg(dir)
            .args(PHOTOS)
            .output()
            .context("extracting the photographs")?;
        anyhow::ensure!(out.status.success(), "extracting the photographs: {}", String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_dir_all(&wheels);
    }
    PHOTOS
        .iter()
        .map(|name| {
            let img = image::open(dir.join(name)).with_context(|| format!("reading {}", dir.join(name).display()))?;
            Ok((name.to_string(), img.to_rgb8()))
        })
        .collect()
}

/// A republished-copy pair at photo size: the `i`-th photograph upscaled (Lanczos) to `width` ×
/// `height` as the original, and the copy at `scale` of that size with an edit — a rectangle of about
/// 5 % of the area replaced by a patch of another photograph, at a position that depends on `i`.
pub fn photo_pair(
    photos: &[(String, RgbImage)],
    i: usize,
    width: u32,
    height: u32,
    scale: f32,
) -> (RgbImage, RgbImage) {
    let (_, photo) = &photos[i % photos.len()];
    let original = imageops::resize(photo, width, height, FilterType::Lanczos3);
    let (w, h) = (((width as f32 * scale).round() as u32).max(1), ((height as f32 * scale).round() as u32).max(1));
    let mut modified = imageops::resize(&original, w, h, FilterType::Triangle);
    let (pw, ph) = ((w as f32 * 0.22) as u32, (h as f32 * 0.22) as u32);
    let (_, donor) = &photos[(i + 1) % photos.len()];
    let patch = imageops::resize(donor, pw.max(1), ph.max(1), FilterType::Triangle);
    let x = (i as u32 * 7919) % w.saturating_sub(pw).max(1);
    let y = (i as u32 * 104_729) % h.saturating_sub(ph).max(1);
    imageops::replace(&mut modified, &patch, x as i64, y as i64);
    (original, modified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photo_pairs_have_the_requested_sizes_and_a_local_edit() {
        let photos: Vec<(String, RgbImage)> = (0..3u8)
            .map(|k| {
                (format!("p{k}"), RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, k * 80])))
            })
            .collect();
        let (a, b) = photo_pair(&photos, 1, 400, 300, 0.75);
        assert_eq!((a.width(), a.height(), b.width(), b.height()), (400, 300, 300, 225));
        // Away from the pasted patch the copy is the original scaled; inside it, the other photo.
        let scaled = imageops::resize(&a, 300, 225, FilterType::Triangle);
        let differs = |x: u32, y: u32| scaled.get_pixel(x, y) != b.get_pixel(x, y);
        let changed = (0..225).flat_map(|y| (0..300).map(move |x| (x, y))).filter(|&(x, y)| differs(x, y)).count();
        let area = changed as f64 / (300.0 * 225.0);
        assert!((0.03..0.06).contains(&area), "edited area {area}");
    }
}
