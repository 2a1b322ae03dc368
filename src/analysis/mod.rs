//! Change analysis beside the caption (issue 14, first step: not yet called by the pipeline): whether
//! a republished copy changed anything locally, where, and how it was republished (orientation,
//! crop, resize). [`analyze`] aligns the copy to the original ([`align`]), compares them after a
//! global photometric fit ([`diff`]) and reports the blocks that still differ.
//! `cargo bench --bench analysis -- --bench` measures it on `blip2idc-dev edit-set`'s evaluation set
//! (596 cases, 2026-12-02): 99.1 % of the unedited copies skipped (goal ≥ 99 %), but 9.2 % of the
//! edits of ≥ 0.5 % area wrongly skipped (goal ≤ 0.5 %: mostly blurs and inpainting-like removals of
//! smooth areas), mean IoU 0.40–0.52 by edit size (goal ≥ 0.7), 33–36 ms
//! per pair: the next steps are a colour term for recolours, tighter regions, speed, then the pipeline.

pub mod align;
pub mod diff;
pub mod plane;

use blip2idc_resample::Rgb;
use plane::Plane;

/// The comparison's resolution (longer side of the republished image's thumbnail).
pub const DIFF_SIDE: usize = 256;

/// A pair is changed when a block's normalised residual exceeds this (on the evaluation set the
/// unedited copies' p99 is 0.84; `benches/analysis.rs`).
pub const CHANGED_THRESHOLD: f32 = 1.0;

/// What the analysis found.
#[derive(Clone, Debug)]
pub struct Analysis {
    pub changed: bool,
    pub alignment: align::Alignment,
    /// The largest block residual (compare with [`CHANGED_THRESHOLD`]).
    pub max_residual: f32,
    /// Changed regions in the original's pixels, `[x0, y0, x1, y1)`.
    pub regions: Vec<[u32; 4]>,
    /// The geometric C2PA actions the alignment supports (`c2pa.orientation`, `c2pa.cropped`,
    /// `c2pa.resized`).
    pub actions: Vec<&'static str>,
}

/// The republished thumbnail in the original's orientation, and its residual against the original's
/// region at its size. The original's thumbnails (one per size a region needs) are kept in
/// `thumbnails` for the next candidate.
fn compare(
    original: Rgb<'_>,
    thumbnails: &mut Vec<Plane>,
    rep_thumb: &Plane,
    alignment: &align::Alignment,
) -> (Plane, diff::Residual) {
    let (fx, fy, fw, fh) = alignment.region;
    let rep = rep_thumb.orient(alignment.orientation);
    let side = ((DIFF_SIDE as f32 / fw.min(fh).max(0.1)).ceil() as usize).clamp(DIFF_SIDE, 2 * DIFF_SIDE);
    let longer = |p: &Plane| p.w.max(p.h);
    let fits = |p: &Plane| longer(p) == side.min(original.width.max(original.height));
    let orig = match thumbnails.iter().position(fits) {
        Some(i) => &thumbnails[i],
        None => {
            thumbnails.push(Plane::thumbnail(original, side));
            thumbnails.last().expect("just pushed")
        }
    };
    let region = (fx * orig.w as f32, fy * orig.h as f32, fw * orig.w as f32, fh * orig.h as f32);
    let orig_region = orig.crop_resized(region, rep.w, rep.h);
    let residual = diff::residual(&orig_region, &rep);
    (rep, residual)
}

/// Compares a republished copy with its original (both decoded RGB, any sizes).
pub fn analyze(original: Rgb<'_>, republished: Rgb<'_>) -> Analysis {
    let rep_thumb = Plane::thumbnail(republished, DIFF_SIDE);
    let orig_coarse = Plane::thumbnail(original, align::COARSE).luma();
    let orig_fine = Plane::thumbnail(original, align::FINE).luma();
    let rep_coarse = rep_thumb.resized_to_side(align::COARSE).luma();
    let rep_fine = rep_thumb.resized_to_side(align::FINE).luma();
    // The best alignment first; the others (another orientation: symmetric pictures fool the
    // correlation) only while the residual says the pair differs.
    let mut best: Option<(align::Alignment, Plane, diff::Residual)> = None;
    let mut thumbnails: Vec<Plane> = Vec::new();
    for alignment in align::align(&orig_coarse, &rep_coarse, &orig_fine, &rep_fine) {
        let (rep, residual) = compare(original, &mut thumbnails, &rep_thumb, &alignment);
        let better = best.as_ref().is_none_or(|b| residual.max() < b.2.max());
        if better {
            best = Some((alignment, rep, residual));
        }
        if best.as_ref().is_some_and(|b| b.2.max() <= CHANGED_THRESHOLD) {
            break;
        }
    }
    let (alignment, rep, residual) = best.expect("at least one alignment");
    let (fx, fy, fw, fh) = alignment.region;
    let max_residual = residual.max();
    let changed = max_residual > CHANGED_THRESHOLD;
    let (ow, oh) = (original.width as f32, original.height as f32);
    let regions = if changed {
        residual
            .regions(CHANGED_THRESHOLD * 0.6)
            .into_iter()
            .map(|b| {
                let to = |v: usize, n: usize, f0: f32, f: f32, full: f32| {
                    (((f0 + f * (v * diff::BLOCK).min(n) as f32 / n as f32) * full).round() as u32).min(full as u32)
                };
                [
                    to(b[0], rep.w, fx, fw, ow),
                    to(b[1], rep.h, fy, fh, oh),
                    to(b[2], rep.w, fx, fw, ow),
                    to(b[3], rep.h, fy, fh, oh),
                ]
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut actions = Vec::new();
    if alignment.orientation != 0 {
        actions.push("c2pa.orientation");
    }
    if fw < 0.985 || fh < 0.985 {
        actions.push("c2pa.cropped");
    }
    let shown = (fw * ow, fh * oh);
    let (rw, rh) = if alignment.orientation & 1 == 1 {
        (republished.height as f32, republished.width as f32)
    } else {
        (republished.width as f32, republished.height as f32)
    };
    if (rw / shown.0 - 1.0).abs() > 0.02 || (rh / shown.1 - 1.0).abs() > 0.02 {
        actions.push("c2pa.resized");
    }
    Analysis { changed, alignment, max_residual, regions, actions }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn scene() -> RgbImage {
        RgbImage::from_fn(240, 180, |x, y| {
            let (fx, fy) = (x as f32 / 240.0, y as f32 / 180.0);
            image::Rgb([
                (120.0 + 90.0 * (fx * 9.0).sin() * (fy * 4.0).cos()) as u8,
                (100.0 + 80.0 * (fy * 7.0 + fx * 2.0).sin()) as u8,
                ((fx + fy) * 110.0) as u8,
            ])
        })
    }

    fn view(img: &RgbImage) -> Rgb<'_> {
        crate::model::preprocess::rgb_view(img)
    }

    #[test]
    fn a_resized_rotated_copy_is_unchanged_and_a_pasted_block_is_found() {
        let original = scene();
        let copy = image::imageops::rotate90(&image::imageops::resize(
            &original,
            180,
            135,
            image::imageops::FilterType::CatmullRom,
        ));
        let a = analyze(view(&original), view(&copy));
        assert!(!a.changed, "residual {}", a.max_residual);
        assert!(a.actions.contains(&"c2pa.orientation") && a.actions.contains(&"c2pa.resized"), "{:?}", a.actions);
        let mut edited = original.clone();
        for y in 60..100 {
            for x in 150..200 {
                edited.put_pixel(x, y, image::Rgb([250, 250, 20]));
            }
        }
        let a = analyze(view(&original), view(&edited));
        assert!(a.changed, "residual {}", a.max_residual);
        let hit = a.regions.iter().any(|r| r[0] < 200 && r[2] > 150 && r[1] < 100 && r[3] > 60);
        assert!(hit, "no region over the pasted block: {:?}", a.regions);
    }
}
