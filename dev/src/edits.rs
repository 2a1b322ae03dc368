//! The change-analysis evaluation set (issue 14): republished copies of real photographs
//! ([`crate::photos`]) and of the synthetic world, each with its ground truth.
//!
//! - **Unedited** copies, which the analysis must recognise as the same picture: re-encodes (JPEG at
//!   several qualities and with 4:2:0 chroma, PNG, WebP), resizes from 0.25× to 2×, crops removing 2
//!   to 30 % of the area, 90° rotations and flips, small global brightness / contrast / gamma changes.
//! - **Edited** copies, with the edit's box in the original's pixel coordinates and areas from 0.2 %
//!   to 30 % of the image: an object added (a patch of another photograph) or removed (filled from
//!   its surroundings), text drawn, a logo pasted, a watermark removed (the original carries it), a
//!   region recoloured, an inpainting-like blur, a clone patch (a region copied from elsewhere in the
//!   same image); every third one also resized.
//!
//! Each case lists the C2PA actions its ground truth supports (`c2pa.transcoded` for any re-encode,
//! `c2pa.resized`, `c2pa.cropped`, `c2pa.orientation`, `c2pa.color_adjustments`, `c2pa.filtered`,
//! `c2pa.edited` for any local edit, `c2pa.placed`, `c2pa.removed`, `c2pa.drawing`).
//! `blip2idc-dev edit-set --out DIR` writes the images and a `manifest.json`.

use image::imageops::{self, FilterType};
use image::{ImageEncoder, Rgb, RgbImage};

use crate::SplitMix;

/// One original / republished pair and what was done to it.
pub struct Case {
    /// `source/kind` plus a number where a source has several of a kind.
    pub id: String,
    /// The photograph's file name, or `synthetic-N`.
    pub source: String,
    /// The variant kind (`jpeg-q70`, `crop`, `object-added`, ...).
    pub kind: String,
    pub edited: bool,
    /// The original as decoded pixels (the analysis's input), and its encoded file (JPEG q95).
    pub original: RgbImage,
    pub original_file: Vec<u8>,
    /// The republished file as it would be fetched, and its extension.
    pub republished_file: Vec<u8>,
    pub republished_ext: &'static str,
    /// The box of the pixels the edit changed, in the original's pixels, `[x0, y0, x1, y1)`; `None`
    /// when unedited.
    pub edit_box: Option<[u32; 4]>,
    /// The edit's size as made: its box's share of the original's area (0 when unedited; a logo's
    /// ring or a text's glyphs change less than their box, `edit_box` holds what they changed).
    pub edit_area: f64,
    /// The share of the original's area the edit visibly changed: pixels whose value moved by at
    /// least [`VISIBLE_LEVELS`] on some channel, before the copy was encoded (0 when unedited). A blur
    /// of a clear sky or a recolour of a black one has a box but changes few pixels visibly.
    pub visible_area: f64,
    /// The C2PA actions the ground truth supports, sorted.
    pub actions: Vec<&'static str>,
}

/// The unedited variant kinds.
pub const UNEDITED: [&str; 22] = [
    "jpeg-q50",
    "jpeg-q70",
    "jpeg-q85",
    "jpeg-q95",
    "jpeg-420",
    "png",
    "webp",
    "resize-0.25",
    "resize-0.5",
    "resize-0.8",
    "resize-1.5",
    "resize-2",
    "crop-2",
    "crop-10",
    "crop-30",
    "rotate-90",
    "rotate-180",
    "rotate-270",
    "flip-horizontal",
    "flip-vertical",
    "brightness",
    "contrast-gamma",
];

/// A pixel counts as visibly changed by an edit when some channel moved by at least this (out of
/// 255; JPEG at quality 90 moves few pixels by more than 6).
pub const VISIBLE_LEVELS: u8 = 16;

/// The share of `a`'s pixels that differ visibly from `b`'s (same size).
fn visible_share(a: &RgbImage, b: &RgbImage) -> f64 {
    let changed =
        a.pixels().zip(b.pixels()).filter(|(p, q)| (0..3).any(|c| p.0[c].abs_diff(q.0[c]) >= VISIBLE_LEVELS)).count();
    changed as f64 / (a.width() as f64 * a.height() as f64).max(1.0)
}

/// The bounding box of the pixels that differ between `a` and `b` (same size).
fn changed_box(a: &RgbImage, b: &RgbImage) -> Option<[u32; 4]> {
    let mut out: Option<[u32; 4]> = None;
    for (x, y, p) in a.enumerate_pixels() {
        if p != b.get_pixel(x, y) {
            out = Some(
                out.map_or([x, y, x + 1, y + 1], |m| [m[0].min(x), m[1].min(y), m[2].max(x + 1), m[3].max(y + 1)]),
            );
        }
    }
    out
}

/// The edit kinds, and the edit areas each is made at.
pub const EDITED: [&str; 8] =
    ["object-added", "object-removed", "text-added", "logo-pasted", "watermark-removed", "recolour", "blur", "clone"];
pub const AREAS: [f64; 5] = [0.002, 0.01, 0.05, 0.15, 0.30];

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .expect("encoding to memory cannot fail");
    out
}

fn webp(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .expect("encoding to memory cannot fail");
    out
}

/// libjpeg-turbo with 4:2:0 chroma subsampling (the image crate's encoder keeps full chroma).
fn jpeg_420(img: &RgbImage, quality: i32) -> Vec<u8> {
    let view = turbojpeg::Image {
        pixels: img.as_raw().as_slice(),
        width: img.width() as usize,
        pitch: 3 * img.width() as usize,
        height: img.height() as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(view, quality, turbojpeg::Subsamp::Sub2x2).expect("encoding to memory cannot fail").to_vec()
}

/// A box of about `area` of a `w × h` image (aspect between 1:2 and 2:1), at a random position.
fn random_box(rng: &mut SplitMix, w: u32, h: u32, area: f64) -> [u32; 4] {
    let aspect = 0.5 + rng.below(1000) as f64 / 666.0;
    let target = area * (w * h) as f64;
    let bw = ((target * aspect).sqrt().round() as u32).clamp(2, w);
    let bh = ((target / bw as f64).round() as u32).clamp(2, h);
    let x = rng.below(w - bw + 1);
    let y = rng.below(h - bh + 1);
    [x, y, x + bw, y + bh]
}

fn area_of(b: [u32; 4], w: u32, h: u32) -> f64 {
    ((b[2] - b[0]) * (b[3] - b[1])) as f64 / (w * h) as f64
}

/// Pixels `f` maps, inside `b` only.
fn map_box(img: &mut RgbImage, b: [u32; 4], mut f: impl FnMut(u32, u32, [u8; 3]) -> [u8; 3]) {
    for y in b[1]..b[3] {
        for x in b[0]..b[2] {
            let p = img.get_pixel(x, y).0;
            img.put_pixel(x, y, Rgb(f(x, y, p)));
        }
    }
}

/// Fills `b` from its border, as an inpainting tool does: each pixel interpolates the four border
/// pixels straight across, weighted by closeness.
fn fill_from_border(img: &mut RgbImage, b: [u32; 4]) {
    let src = img.clone();
    let (x0, y0) = (b[0].saturating_sub(1), b[1].saturating_sub(1));
    let (x1, y1) = (b[2].min(img.width() - 1), b[3].min(img.height() - 1));
    map_box(img, b, |x, y, _| {
        let (l, r) = (src.get_pixel(x0, y).0, src.get_pixel(x1, y).0);
        let (t, bo) = (src.get_pixel(x, y0).0, src.get_pixel(x, y1).0);
        let (dl, dr, dt, db) = ((x - x0) as f64, (x1 - x) as f64 + 1e-9, (y - y0) as f64, (y1 - y) as f64 + 1e-9);
        let ws = [1.0 / dl, 1.0 / dr, 1.0 / dt, 1.0 / db];
        let total: f64 = ws.iter().sum();
        std::array::from_fn(|c| {
            ((l[c] as f64 * ws[0] + r[c] as f64 * ws[1] + t[c] as f64 * ws[2] + bo[c] as f64 * ws[3]) / total).round()
                as u8
        })
    });
}

/// Block letters: each character a 3 × 5 grid of cells, drawn in `colour` inside `b`.
fn draw_text(img: &mut RgbImage, b: [u32; 4], colour: [u8; 3], rng: &mut SplitMix) {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let ch = (h / 5).max(1);
    // As many characters as fit with square cells, then the cells widened to fill the box's width.
    let chars = ((w + ch) / (4 * ch)).max(1);
    let cw = (w / (4 * chars - 1)).max(1);
    for c in 0..chars {
        // Never blank; the first and last rows and columns always inked, so the text spans its box.
        let glyph = rng.next_u64() | 0b111_000_000_000_111 | 0b001_001_001_001_001 | 0b100_100_100_100_100;
        for i in 0..15u32 {
            if glyph >> i & 1 == 1 {
                let (cx, cy) = (b[0] + c * 4 * cw + (i % 3) * cw, b[1] + (i / 3) * ch);
                map_box(img, [cx, cy, (cx + cw).min(b[2]), (cy + ch).min(b[3])], |_, _, _| colour);
            }
        }
    }
}

/// A logo: a ring and a bar in two saturated colours.
fn draw_logo(img: &mut RgbImage, b: [u32; 4]) {
    let (cx, cy) = ((b[0] + b[2]) as f64 / 2.0, (b[1] + b[3]) as f64 / 2.0);
    let r = ((b[2] - b[0]).min(b[3] - b[1])) as f64 / 2.0;
    map_box(img, b, |x, y, p| {
        let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
        if d > 0.6 * r && d < 0.95 * r {
            [230, 30, 40]
        } else if (y as f64 - cy).abs() < 0.12 * r && (x as f64 - cx).abs() < 0.5 * r {
            [20, 40, 200]
        } else {
            p
        }
    });
}

/// A semi-transparent white watermark (a frame and block letters), blended at 45 %.
fn draw_watermark(img: &mut RgbImage, b: [u32; 4], rng: &mut SplitMix) {
    let mut mark = img.clone();
    draw_text(
        &mut mark,
        [b[0] + 1, b[1] + 1, b[2].saturating_sub(1).max(b[0] + 2), b[3].saturating_sub(1).max(b[1] + 2)],
        [255, 255, 255],
        rng,
    );
    map_box(
        &mut mark,
        b,
        |x, y, p| if x == b[0] || y == b[1] || x + 1 == b[2] || y + 1 == b[3] { [255, 255, 255] } else { p },
    );
    map_box(img, b, |x, y, p| {
        let m = mark.get_pixel(x, y).0;
        std::array::from_fn(|c| (p[c] as f64 * 0.55 + m[c] as f64 * 0.45).round() as u8)
    });
}

/// Applies one edit kind at about `area`; returns the edited image, the original (changed only for a
/// removed watermark: the original carries it) and the edit's box.
fn apply_edit(
    kind: &str,
    original: &RgbImage,
    donor: &RgbImage,
    area: f64,
    rng: &mut SplitMix,
) -> (RgbImage, RgbImage, [u32; 4]) {
    let (w, h) = original.dimensions();
    let b = random_box(rng, w, h, area);
    let (bw, bh) = (b[2] - b[0], b[3] - b[1]);
    let mut edited = original.clone();
    let mut orig = original.clone();
    match kind {
        "object-added" => {
            let patch = imageops::resize(donor, bw, bh, FilterType::Triangle);
            imageops::replace(&mut edited, &patch, b[0] as i64, b[1] as i64);
        }
        "object-removed" => fill_from_border(&mut edited, b),
        "text-added" => draw_text(&mut edited, b, [250, 250, 40], rng),
        "logo-pasted" => draw_logo(&mut edited, b),
        "watermark-removed" => draw_watermark(&mut orig, b, rng),
        "recolour" => map_box(&mut edited, b, |_, _, p| [p[1], p[2], p[0]]),
        "blur" => {
            let blurred = imageops::blur(&imageops::crop_imm(original, b[0], b[1], bw, bh).to_image(), 6.0);
            imageops::replace(&mut edited, &blurred, b[0] as i64, b[1] as i64);
        }
        "clone" => {
            // Another region of the same size, as far from the box as the image allows.
            let (sx, sy) = (if b[0] > w - b[2] { 0 } else { w - bw }, if b[1] > h - b[3] { 0 } else { h - bh });
            let patch = imageops::crop_imm(original, sx, sy, bw, bh).to_image();
            imageops::replace(&mut edited, &patch, b[0] as i64, b[1] as i64);
        }
        other => panic!("unknown edit kind {other}"),
    }
    (edited, orig, b)
}

fn actions_of_edit(kind: &str) -> Vec<&'static str> {
    let specific: &[&'static str] = match kind {
        "object-added" | "logo-pasted" => &["c2pa.placed"],
        "object-removed" | "watermark-removed" => &["c2pa.removed"],
        "text-added" => &["c2pa.drawing"],
        "recolour" => &["c2pa.color_adjustments"],
        "blur" => &["c2pa.filtered"],
        _ => &[],
    };
    let mut a = vec!["c2pa.edited"];
    a.extend_from_slice(specific);
    a
}

/// An unedited variant of `img`: the republished file, its extension, the actions.
fn unedited(kind: &str, img: &RgbImage, rng: &mut SplitMix) -> (Vec<u8>, &'static str, Vec<&'static str>) {
    let jpeg = |i: &RgbImage| crate::jpeg(i, 90);
    let (w, h) = img.dimensions();
    let t = "c2pa.transcoded";
    if let Some(q) = kind.strip_prefix("jpeg-q") {
        return (crate::jpeg(img, q.parse().expect("quality")), "jpg", vec![t]);
    }
    if let Some(s) = kind.strip_prefix("resize-") {
        let s: f64 = s.parse().expect("scale");
        let r = imageops::resize(
            img,
            ((w as f64 * s).round() as u32).max(1),
            ((h as f64 * s).round() as u32).max(1),
            FilterType::CatmullRom,
        );
        return (jpeg(&r), "jpg", vec!["c2pa.resized", t]);
    }
    if let Some(p) = kind.strip_prefix("crop-") {
        // Keep (1 - p %) of the area, split between the two axes at random.
        let keep = 1.0 - p.parse::<f64>().expect("percent") / 100.0;
        let kx = keep.powf(0.3 + rng.below(400) as f64 / 1000.0);
        let ky = keep / kx;
        let (cw, ch) = (((w as f64 * kx).round() as u32).max(1), ((h as f64 * ky).round() as u32).clamp(1, h));
        let (x, y) = (rng.below(w - cw + 1), rng.below(h - ch + 1));
        return (jpeg(&imageops::crop_imm(img, x, y, cw, ch).to_image()), "jpg", vec!["c2pa.cropped", t]);
    }
    let o = "c2pa.orientation";
    match kind {
        "jpeg-420" => (jpeg_420(img, 85), "jpg", vec![t]),
        "png" => (png(img), "png", vec![t]),
        "webp" => (webp(img), "webp", vec![t]),
        "rotate-90" => (jpeg(&imageops::rotate90(img)), "jpg", vec![o, t]),
        "rotate-180" => (jpeg(&imageops::rotate180(img)), "jpg", vec![o, t]),
        "rotate-270" => (jpeg(&imageops::rotate270(img)), "jpg", vec![o, t]),
        "flip-horizontal" => (jpeg(&imageops::flip_horizontal(img)), "jpg", vec![o, t]),
        "flip-vertical" => (jpeg(&imageops::flip_vertical(img)), "jpg", vec![o, t]),
        "brightness" => {
            let d = 8 + rng.below(10) as i32;
            let mut r = img.clone();
            map_box(&mut r, [0, 0, w, h], |_, _, p| p.map(|v| (v as i32 + d).clamp(0, 255) as u8));
            (jpeg(&r), "jpg", vec!["c2pa.color_adjustments", t])
        }
        "contrast-gamma" => {
            let (gain, gamma) = (1.08 + rng.below(8) as f64 / 100.0, 0.9 + rng.below(20) as f64 / 100.0);
            let mut r = img.clone();
            map_box(&mut r, [0, 0, w, h], |_, _, p| {
                p.map(|v| (255.0 * ((v as f64 / 255.0 - 0.5) * gain + 0.5).clamp(0.0, 1.0).powf(gamma)).round() as u8)
            });
            (jpeg(&r), "jpg", vec!["c2pa.color_adjustments", t])
        }
        other => panic!("unknown unedited kind {other}"),
    }
}

fn sorted(mut a: Vec<&'static str>) -> Vec<&'static str> {
    a.sort_unstable();
    a.dedup();
    a
}

/// Every unedited and edited variant of `original` (a source named `source`), edits drawn from
/// `seed`; `donor` supplies pasted objects.
pub fn cases_of(source: &str, original: &RgbImage, donor: &RgbImage, seed: u64) -> Vec<Case> {
    let mut rng = SplitMix(seed);
    let original_file = crate::jpeg(original, 95);
    // What the service decodes: the original's own JPEG pixels.
    let decoded = image::load_from_memory(&original_file).expect("own JPEG").to_rgb8();
    let (w, h) = decoded.dimensions();
    let mut out = Vec::new();
    for kind in UNEDITED {
        let (file, ext, actions) = unedited(kind, &decoded, &mut rng);
        out.push(Case {
            id: format!("{source}/{kind}"),
            source: source.to_owned(),
            kind: kind.to_owned(),
            edited: false,
            original: decoded.clone(),
            original_file: original_file.clone(),
            republished_file: file,
            republished_ext: ext,
            edit_box: None,
            edit_area: 0.0,
            visible_area: 0.0,
            actions: sorted(actions),
        });
    }
    for (i, kind) in EDITED.iter().enumerate() {
        for (j, &area) in AREAS.iter().enumerate() {
            let (edited, orig, b) = apply_edit(kind, &decoded, donor, area, &mut rng);
            let mut actions = actions_of_edit(kind);
            actions.push("c2pa.transcoded");
            let visible_area = visible_share(&edited, &orig);
            // The truth is where pixels changed (text leaves the box's last columns blank).
            let truth = changed_box(&edited, &orig).unwrap_or(b);
            let republished = if (i + j) % 3 == 0 {
                actions.push("c2pa.resized");
                imageops::resize(&edited, (w * 3 / 4).max(1), (h * 3 / 4).max(1), FilterType::CatmullRom)
            } else {
                edited
            };
            let (original, original_file) = if *kind == "watermark-removed" {
                let file = crate::jpeg(&orig, 95);
                (image::load_from_memory(&file).expect("own JPEG").to_rgb8(), file)
            } else {
                (decoded.clone(), original_file.clone())
            };
            out.push(Case {
                id: format!("{source}/{kind}-{}", (area * 1000.0).round() as u32),
                source: source.to_owned(),
                kind: kind.to_string(),
                edited: true,
                original,
                original_file,
                republished_file: crate::jpeg(&republished, 90),
                republished_ext: "jpg",
                edit_box: Some(truth),
                edit_area: area_of(b, w, h),
                visible_area,
                actions: sorted(actions),
            });
        }
    }
    out
}

/// The whole set: every photograph's variants, and `synthetic` pairs of the synthetic world
/// ([`crate::synthetic_pair`] at 512², half re-encoded unedited copies, half its own edits with their
/// boxes from the pixels that differ).
///
/// `variant` 0 is the set the thresholds were chosen on; any other draws every edit's place, every
/// crop, donor and synthetic world anew from the same photographs (a held-out check of the
/// thresholds, `benches/analysis.rs --variant N`).
pub fn evaluation_set(photos: &[(String, RgbImage)], synthetic: usize, variant: u64) -> Vec<Case> {
    let mut out = Vec::new();
    for (i, (name, img)) in photos.iter().enumerate() {
        let donor = &photos[(i + 1 + variant as usize) % photos.len()].1;
        out.extend(cases_of(name, img, donor, 1000 + i as u64 + variant * 7919));
    }
    for n in 0..synthetic {
        let (a, b, caption) = crate::synthetic_pair(n as u64 + variant * 100_000, 512);
        let source = format!("synthetic-{n}");
        let original_file = crate::jpeg(&a, 95);
        let original = image::load_from_memory(&original_file).expect("own JPEG").to_rgb8();
        let (edited, republished, edit_box, kind) = if n % 2 == 0 {
            (false, crate::jpeg(&original, 80), None, "jpeg-q80")
        } else {
            let bbox = changed_box(&a, &b);
            (bbox.is_some(), crate::jpeg(&b, 90), bbox, "synthetic-edit")
        };
        let actions = if edited { synthetic_actions(&caption) } else { vec!["c2pa.transcoded"] };
        out.push(Case {
            id: format!("{source}/{kind}"),
            source,
            kind: kind.to_owned(),
            edited,
            original,
            original_file,
            republished_file: republished,
            republished_ext: "jpg",
            edit_box,
            edit_area: edit_box.map_or(0.0, |bx| area_of(bx, 512, 512)),
            visible_area: visible_share(&a, &b),
            actions,
        });
    }
    out
}

/// The actions a synthetic edit supports, from its caption ("a red square was added", "the red
/// square was removed", "the red square turned blue", "the red square moved"), sorted.
fn synthetic_actions(caption: &str) -> Vec<&'static str> {
    let specific: &[&'static str] = if caption.ends_with("was added") {
        &["c2pa.placed"]
    } else if caption.ends_with("was removed") {
        &["c2pa.removed"]
    } else if caption.contains(" turned ") {
        &["c2pa.color_adjustments"]
    } else {
        &[]
    };
    let mut out = vec!["c2pa.edited", "c2pa.transcoded"];
    out.extend_from_slice(specific);
    sorted(out)
}

/// Writes the set under `dir`: `original/ID.jpg`, `republished/ID.EXT` (`/` in ids becomes `__`) and
/// `manifest.json` (one object per case: id, source, kind, edited, files, box, area, actions).
pub fn write_set(cases: &[Case], dir: &std::path::Path) -> anyhow::Result<()> {
    for sub in ["original", "republished"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let mut manifest = Vec::new();
    for c in cases {
        let stem = c.id.replace('/', "__");
        let (o, r) = (format!("original/{stem}.jpg"), format!("republished/{stem}.{}", c.republished_ext));
        std::fs::write(dir.join(&o), &c.original_file)?;
        std::fs::write(dir.join(&r), &c.republished_file)?;
        manifest.push(serde_json::json!({
            "id": c.id, "source": c.source, "kind": c.kind, "edited": c.edited, "original": o, "republished": r,
            "box": c.edit_box, "area": c.edit_area, "visible_area": c.visible_area, "actions": c.actions,
        }));
    }
    std::fs::write(dir.join("manifest.json"), serde_json::to_string_pretty(&manifest)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo(seed: u8) -> RgbImage {
        RgbImage::from_fn(160, 120, |x, y| Rgb([(x * 3 / 2) as u8 ^ seed, (y * 2) as u8, ((x + y) / 2) as u8]))
    }

    #[test]
    fn every_kind_is_made_with_consistent_ground_truth() {
        let cases = cases_of("p", &photo(1), &photo(90), 7);
        assert_eq!(cases.len(), UNEDITED.len() + EDITED.len() * AREAS.len());
        for c in &cases {
            assert_eq!(c.edited, c.edit_box.is_some(), "{}", c.id);
            assert!(c.actions.contains(&"c2pa.transcoded"), "{}", c.id);
            assert_eq!(c.edited, c.actions.contains(&"c2pa.edited"), "{}", c.id);
            image::load_from_memory(&c.republished_file).unwrap_or_else(|e| panic!("{}: {e}", c.id));
            if let Some(b) = c.edit_box {
                assert!(b[0] < b[2] && b[1] < b[3] && b[2] <= 160 && b[3] <= 120, "{}: {b:?}", c.id);
            }
        }
        // Edit areas follow the targets (small boxes round to whole pixels).
        for c in cases.iter().filter(|c| c.edited) {
            let target: f64 = c.id.rsplit('-').next().unwrap().parse::<f64>().unwrap() / 1000.0;
            assert!((c.edit_area / target).ln().abs() < 0.7, "{}: area {}", c.id, c.edit_area);
        }
    }

    #[test]
    fn edits_change_only_their_box() {
        let (orig, donor) = (photo(3), photo(200));
        for kind in EDITED {
            let mut rng = SplitMix(11);
            let (edited, original, b) = apply_edit(kind, &orig, &donor, 0.05, &mut rng);
            let inside = |x: u32, y: u32| x >= b[0] && x < b[2] && y >= b[1] && y < b[3];
            let mut changed_inside = 0;
            for (x, y, p) in edited.enumerate_pixels() {
                let o = original.get_pixel(x, y);
                if inside(x, y) {
                    changed_inside += (p != o) as usize;
                } else {
                    assert_eq!(p, o, "{kind}: pixel ({x}, {y}) outside the box {b:?} changed");
                }
            }
            assert!(changed_inside > 0, "{kind}: nothing changed inside {b:?}");
        }
    }
}
