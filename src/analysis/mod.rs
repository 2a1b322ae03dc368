//! Change analysis beside the caption (issue 14): whether a republished copy changed anything
//! locally, where, and how it was republished. [`analyze`] aligns the copy to the original
//! ([`align`]: orientation, crop, scale), compares them after a global photometric fit ([`diff`]),
//! reports the changed regions in the original's pixels and names the edits with C2PA actions
//! ([`actions`]). The pipeline runs it while a pair is decoded (`crate::decode`) and stores unchanged
//! pairs without the model. `cargo bench --bench analysis -- --bench` measures it on
//! `blip2idc-dev edit-set`'s evaluation set (figures in README "Change analysis").

pub mod actions;
pub mod align;
pub mod diff;
pub mod plane;

use blip2idc_resample::Rgb;
use plane::{Plane, Thumbnail};

/// The comparison's resolution (longer side of the republished image's thumbnail).
pub const DIFF_SIDE: usize = 256;

/// The original's thumbnail is kept at twice that: a crop of the original is compared at the
/// copy's resolution.
pub const ORIGINAL_SIDE: usize = 2 * DIFF_SIDE;

/// Images with a shorter side below this are not analysed (too few pixels to tell a re-encode from an
/// edit): they are captioned.
pub const MIN_SIDE: usize = 64;

/// A pair is changed when a block's normalised residual exceeds this (on the evaluation set the
/// unedited copies reach at most 0.86, p99 0.66; `benches/analysis.rs`).
pub const CHANGED_THRESHOLD: f32 = 1.0;

/// A block lost texture beyond the copy's other blocks of its texture level when
/// [`diff::Residual::lost`] exceeds this; neighbouring such blocks form a group.
pub const LOST_BLOCK: f32 = 0.25;

/// A pair is also changed when a group of blocks lost this much texture beyond their levels, in
/// total (in blocks: [`diff::Residual::texture_losses`]; a blur or an inpainted fill of a dark or
/// faintly textured area, too faint in any one block). On the evaluation set the unedited copies'
/// largest group measures 2.6 (`benches/analysis.rs`).
pub const LOST_CHANGED: f32 = 3.2;

/// A pair is also changed when this share of the compared pixels changed colour
/// ([`diff::Residual::recoloured`]; on the evaluation set the unedited copies reach at most 0.014 %,
/// 0.005 % and 0.008 % on the held-out variants; the Hubble field's recoloured galaxies 0.07–0.35 %).
pub const RECOLOURED: f32 = 0.0004;

/// A group of blocks whose pixels changed colour is a region when one of its blocks holds this many
/// of them.
const RECOLOUR_SEED: usize = 2;

/// A framing whose residual exceeds this is not [`polish`]ed: no fraction of a pixel explains it
/// (before the polish, the held-out unedited crops scored up to 5.9, `benches/analysis.rs --variant
/// 1`), and each polish that moves the framing costs a second comparison.
const POLISH_BELOW: f32 = 8.0;

/// A best alignment whose median block score is below this is taken without searching the other
/// orientations, even with up to half of the blocks changed.
const SETTLED_MEDIAN: f32 = 0.1;

/// The global tone map's mean shift (levels) above which a copy counts as colour-adjusted.
const TONE_SHIFT: f32 = 3.0;

/// What the analysis found.
#[derive(Clone, Debug)]
pub struct Analysis {
    pub changed: bool,
    pub alignment: align::Alignment,
    /// The largest block residual (compare with [`CHANGED_THRESHOLD`]).
    pub max_residual: f32,
    /// The largest group's texture loss beyond its level (compare with [`LOST_CHANGED`]).
    pub lost_texture: f32,
    /// The share of the compared pixels whose colour changed ([`diff::Residual::recoloured`];
    /// compare with [`RECOLOURED`]).
    pub recoloured: f32,
    /// Changed regions in the original's pixels, `[x0, y0, x1, y1)`, largest first.
    pub regions: Vec<[u32; 4]>,
    /// The C2PA actions the evidence supports ([`actions`]), in [`actions::ORDER`].
    pub actions: Vec<&'static str>,
    /// What the changed areas look like (when changed): the evidence the local actions are named from.
    pub local: Option<actions::Local>,
}

/// Both images' thumbnails, made where the pair is decoded ([`Thumbnail::new`] with
/// [`ORIGINAL_SIDE`] and [`DIFF_SIDE`]); `None` when either is under [`MIN_SIDE`].
pub fn thumbnails(original: Rgb<'_>, republished: Rgb<'_>) -> Option<(Thumbnail, Thumbnail)> {
    let small = |i: &Rgb<'_>| i.width.min(i.height) < MIN_SIDE;
    if small(&original) || small(&republished) {
        return None;
    }
    Some((
        Thumbnail::new(original, (original.width, original.height), ORIGINAL_SIDE),
        Thumbnail::new(republished, (republished.width, republished.height), DIFF_SIDE),
    ))
}

/// The most the analysis holds for a pair decoded at these sizes: the box-reduced copies its
/// thumbnails are made from (at most `(2·side)²`-ish each, far less than the decoded images) and the
/// float planes of the comparison.
pub fn working_bytes(original: (usize, usize), republished: (usize, usize)) -> u64 {
    let reduced = |(w, h): (usize, usize), side: usize| {
        let k = (w.max(h) / (2 * side)).max(1);
        ((w / k) * (h / k) * 3) as u64
    };
    let planes = (ORIGINAL_SIDE * ORIGINAL_SIDE * 3 * 4 * 2 + DIFF_SIDE * DIFF_SIDE * 3 * 4 * 12) as u64;
    reduced(original, ORIGINAL_SIDE).max(reduced(republished, DIFF_SIDE)) * 2 + planes
}

/// Compares a republished copy with its original (both decoded RGB, any sizes); `None` when either
/// is under [`MIN_SIDE`].
pub fn analyze(original: Rgb<'_>, republished: Rgb<'_>) -> Option<Analysis> {
    thumbnails(original, republished).map(|(o, r)| analyze_thumbnails(&o, &r))
}

/// The republished thumbnail in the original's orientation, and its residual against the original's
/// region at its size. The original's thumbnails (one per size a region needs) are kept in
/// `thumbnails` for the next candidate.
fn compare(
    original: &Thumbnail,
    thumbnails: &mut Vec<Plane>,
    rep_thumb: &Plane,
    alignment: &align::Alignment,
) -> (Plane, diff::Residual) {
    let rep = rep_thumb.orient(alignment.orientation);
    let orig = original_for(original, thumbnails, alignment.region);
    let orig_region = orig.crop_resized(pixels(orig, alignment.region), rep.w, rep.h);
    let residual = diff::residual(&orig_region, &rep, CHANGED_THRESHOLD);
    (rep, residual)
}

/// The original's thumbnail a region `(x0, y0, w, h)` (fractions) is compared at: large enough that
/// the region has [`DIFF_SIDE`] pixels (up to [`ORIGINAL_SIDE`]), made once and kept in `thumbnails`.
fn original_for<'t>(original: &Thumbnail, thumbnails: &'t mut Vec<Plane>, region: (f32, f32, f32, f32)) -> &'t Plane {
    let (_, _, fw, fh) = region;
    let side = ((DIFF_SIDE as f32 / fw.min(fh).max(0.1)).ceil() as usize).clamp(DIFF_SIDE, ORIGINAL_SIDE);
    let longer = |p: &Plane| p.w.max(p.h);
    let fits = |p: &Plane| longer(p) == side.min(original.width.max(original.height));
    match thumbnails.iter().position(fits) {
        Some(i) => &thumbnails[i],
        None => {
            thumbnails.push(Plane::thumbnail(original.view(), side));
            thumbnails.last().expect("just pushed")
        }
    }
}

/// A region in fractions as pixels of `p`.
fn pixels(p: &Plane, (fx, fy, fw, fh): (f32, f32, f32, f32)) -> (f32, f32, f32, f32) {
    (fx * p.w as f32, fy * p.h as f32, fw * p.w as f32, fh * p.h as f32)
}

/// Pixels between the samples of [`polish`]'s correlation.
const POLISH_GRID: usize = 4;

/// A framing refined at the comparison's own size, to fractions of its pixels: the search places a
/// crop to a pixel of the 128-pixel thumbnails and its scale to half a percent, and the untouched
/// framing is refined by ±0.5 % only — up to two pixels off at the comparison's size (a 2 % crop of
/// one side taken for the untouched framing), more than the residual's 3 × 3 tolerance, so held-out
/// crops lit up along every strong edge. Offsets of ±2 pixels, then scales of ±2 % about the
/// centre, offsets again, then half-pixel offsets, by the luminance's normalised correlation.
fn polish(
    original: &Thumbnail,
    thumbnails: &mut Vec<Plane>,
    rep_thumb: &Plane,
    alignment: &align::Alignment,
) -> align::Alignment {
    let rep = rep_thumb.orient(alignment.orientation).luma();
    // On every fourth pixel (a sixteenth of the work): the samples still sit at fractional places
    // of the original, so the correlation still tells a fraction of a pixel.
    let (gw, gh) = ((rep.w / POLISH_GRID).max(1), (rep.h / POLISH_GRID).max(1));
    let target = align::normalised(&rep.resized(gw, gh));
    let orig = original_for(original, thumbnails, alignment.region).luma();
    let (x0, y0, w0, h0) = pixels(&orig, alignment.region);
    let ncc = |(x, y, s): (f32, f32, f32)| {
        let (w, h) = (w0 * s, h0 * s);
        // The scale keeps the region's centre; the region stays inside the original.
        let (x, y) = (x + (w0 - w) / 2.0, y + (h0 - h) / 2.0);
        if x < -0.5 || y < -0.5 || x + w > orig.w as f32 + 0.5 || y + h > orig.h as f32 + 0.5 {
            return f32::MIN;
        }
        let sample = orig.crop_resized((x, y, w, h), gw, gh);
        align::normalised(&sample).iter().zip(&target).map(|(a, b)| a * b).sum::<f32>()
    };
    let mut best = ((x0, y0, 1.0f32), ncc((x0, y0, 1.0)));
    let try_all = |candidates: Vec<(f32, f32, f32)>, best: &mut ((f32, f32, f32), f32)| {
        for c in candidates {
            let score = ncc(c);
            if score > best.1 {
                *best = (c, score);
            }
        }
    };
    let offsets = |(x, y, s): (f32, f32, f32), step: f32, n: i32| {
        let mut out = Vec::new();
        for dy in -n..=n {
            for dx in -n..=n {
                out.push((x + dx as f32 * step, y + dy as f32 * step, s));
            }
        }
        out
    };
    try_all(offsets(best.0, 1.0, 2), &mut best);
    let (x, y, _) = best.0;
    try_all((-8..=8).map(|k| (x, y, 1.0 + 0.0025 * k as f32)).collect(), &mut best);
    try_all(offsets(best.0, 1.0, 2), &mut best);
    try_all(offsets(best.0, 0.5, 1), &mut best);
    let ((x, y, s), score) = best;
    let (w, h) = (w0 * s, h0 * s);
    let (x, y) = (x + (w0 - w) / 2.0, y + (h0 - h) / 2.0);
    let (ow, oh) = (orig.w as f32, orig.h as f32);
    align::Alignment { orientation: alignment.orientation, region: (x / ow, y / oh, w / ow, h / oh), score }
}

/// [`analyze`] on the thumbnails.
pub fn analyze_thumbnails(original: &Thumbnail, republished: &Thumbnail) -> Analysis {
    let rep_thumb = Plane::thumbnail(republished.view(), DIFF_SIDE);
    // Both sides reach the search sizes the same way (bicubic to DIFF_SIDE, then bilinear): an
    // untouched copy then correlates above `align::IDENTICAL` at the coarse size and the search stops
    // at once (made differently, the two resamplings alone kept a 224² re-encode below it, and every
    // crop was searched).
    let orig_diff = Plane::thumbnail(original.view(), DIFF_SIDE);
    let orig_coarse = orig_diff.resized_to_side(align::COARSE).luma();
    let orig_fine = orig_diff.resized_to_side(align::FINE).luma();
    let rep_coarse = rep_thumb.resized_to_side(align::COARSE).luma();
    let rep_fine = rep_thumb.resized_to_side(align::FINE).luma();
    // The best alignment first; the others (another orientation: symmetric pictures fool the
    // correlation) only while the residual says the pair differs.
    let mut best: Option<(align::Alignment, Plane, diff::Residual)> = None;
    let mut thumbnails: Vec<Plane> = vec![orig_diff];
    // Unchanged, or changed locally (a fifth of the blocks at most): the alignment is right.
    // Or changed over up to half of it while the typical block still matches (a large object added
    // or removed on an unchanged background): a wrong orientation or framing moves the median too.
    let settled = |b: &diff::Residual| {
        let share = b.share_above(CHANGED_THRESHOLD * 0.6);
        b.max() <= CHANGED_THRESHOLD || share < 0.2 || (share < 0.5 && b.median() < SETTLED_MEDIAN)
    };
    // Most edited copies keep the original's framing: when the untouched framing already leaves the
    // change local, no search is needed (the search over orientations and crops costs 20 ms when an
    // edit lowers the correlation).
    if let Some(a) = align::untouched(&orig_fine, &rep_fine) {
        let (rep, residual) = compare(original, &mut thumbnails, &rep_thumb, &a);
        if settled(&residual) {
            let (a, rep, residual) = polished(original, &mut thumbnails, &rep_thumb, (a, rep, residual));
            return conclude(original, republished, a, rep, residual);
        }
    }
    let quick = align::align(&orig_coarse, &rep_coarse, &orig_fine, &rep_fine, false);
    let candidates = quick.clone().into_iter().chain(std::iter::from_fn({
        // When the unrotated candidates leave most of the picture changed, every orientation.
        let mut thorough = None;
        move || {
            let all = thorough.get_or_insert_with(|| {
                let mut all = align::align(&orig_coarse, &rep_coarse, &orig_fine, &rep_fine, true);
                all.retain(|a| !quick.contains(a));
                all.into_iter()
            });
            all.next()
        }
    }));
    for alignment in candidates {
        let (rep, residual) = compare(original, &mut thumbnails, &rep_thumb, &alignment);
        // The alignment that leaves the least changed: an edit raises the maximum of the right one,
        // a wrong one differs almost everywhere (flat backgrounds aside: then the typical block).
        let key = |r: &diff::Residual| (r.share_above(CHANGED_THRESHOLD * 0.6), r.median());
        let better = best.as_ref().is_none_or(|b| {
            let ((s, m), (bs, bm)) = (key(&residual), key(&b.2));
            s < bs - 0.005 || (s <= bs + 0.005 && (m < bm - 0.02 || (m <= bm + 0.02 && residual.max() < b.2.max())))
        });
        if better {
            best = Some((alignment, rep, residual));
        }
        if best.as_ref().is_some_and(|b| settled(&b.2)) {
            break;
        }
    }
    let (alignment, rep, residual) = best.expect("at least one alignment");
    let (alignment, rep, residual) = polished(original, &mut thumbnails, &rep_thumb, (alignment, rep, residual));
    conclude(original, republished, alignment, rep, residual)
}

/// The comparison at the [`polish`]ed framing when the one found leaves a change and the polished
/// one leaves less (a framing a pixel or a percent off lights up every strong edge).
fn polished(
    original: &Thumbnail,
    thumbnails: &mut Vec<Plane>,
    rep_thumb: &Plane,
    (mut alignment, mut rep, mut residual): (align::Alignment, Plane, diff::Residual),
) -> (align::Alignment, Plane, diff::Residual) {
    if residual.max() > CHANGED_THRESHOLD && residual.max() < POLISH_BELOW {
        let polished = polish(original, thumbnails, rep_thumb, &alignment);
        // Where the polish leaves the framing (within 0.3 pixels), the comparison would not change.
        let ((ax, ay, aw, ah), (px, py, pw, ph)) = (alignment.region, polished.region);
        let side = rep_thumb.w.max(rep_thumb.h) as f32;
        let moved = [(px - ax) / aw, (py - ay) / ah, (px + pw - ax - aw) / aw, (py + ph - ay - ah) / ah]
            .iter()
            .fold(0f32, |m, d| m.max(d.abs() * side));
        if moved < 0.3 {
            return (alignment, rep, residual);
        }
        let (p_rep, p_residual) = compare(original, thumbnails, rep_thumb, &polished);
        if p_residual.max() < residual.max() {
            (alignment, rep, residual) = (polished, p_rep, p_residual);
        }
    }
    (alignment, rep, residual)
}

/// The analysis of the chosen alignment: changed or not, the regions in the original's pixels, the
/// actions.
fn conclude(
    original: &Thumbnail,
    republished: &Thumbnail,
    alignment: align::Alignment,
    rep: Plane,
    residual: diff::Residual,
) -> Analysis {
    let (fx, fy, fw, fh) = alignment.region;
    let max_residual = residual.max();
    let losses = residual.texture_losses(LOST_BLOCK);
    let lost_texture = losses.iter().map(|l| l.1).fold(0.0, f32::max);
    let recoloured = residual.recoloured();
    let changed = max_residual > CHANGED_THRESHOLD || lost_texture > LOST_CHANGED || recoloured > RECOLOURED;
    let (ow, oh) = (original.full.0 as f32, original.full.1 as f32);
    let mut found = if max_residual > CHANGED_THRESHOLD {
        residual.regions(CHANGED_THRESHOLD, CHANGED_THRESHOLD * 0.6)
    } else {
        Vec::new()
    };
    // A group that lost texture where no pixel changed (a blur inside the tolerated range) is a region
    // of its own; one that overlaps a region is the same edit, already located to the pixel.
    let overlaps = |a: &[usize; 4], b: &[usize; 4]| a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
    for (b, _) in losses.into_iter().filter(|l| l.1 > LOST_CHANGED) {
        if !found.iter().any(|f| overlaps(f, &b)) {
            found.push(b);
        }
    }
    // Likewise a group of pixels that changed colour inside the tolerated range (a recoloured galaxy).
    if recoloured > RECOLOURED {
        for b in residual.recolour_regions(RECOLOUR_SEED) {
            if !found.iter().any(|f| overlaps(f, &b)) {
                found.push(b);
            }
        }
    }
    found.sort_by_key(|b| std::cmp::Reverse((b[2] - b[0]) * (b[3] - b[1])));
    let to = |v: usize, n: usize, f0: f32, f: f32, full: f32| {
        (((f0 + f * v.min(n) as f32 / n as f32) * full).round() as u32).min(full as u32)
    };
    let regions = found
        .iter()
        .map(|b| {
            [
                to(b[0], rep.w, fx, fw, ow),
                to(b[1], rep.h, fy, fh, oh),
                to(b[2], rep.w, fx, fw, ow),
                to(b[3], rep.h, fy, fh, oh),
            ]
        })
        .collect();
    let mut evidence = actions::Evidence {
        orientation: alignment.orientation != 0,
        cropped: fw < 0.985 || fh < 0.985,
        resized: false,
        tone_shift: residual.tone_shift,
        local: if changed { Some(residual.local_evidence(&found, CHANGED_THRESHOLD * 0.6, LOST_BLOCK)) } else { None },
    };
    let shown = (fw * ow, fh * oh);
    let (rw, rh) = if alignment.orientation & 1 == 1 {
        (republished.full.1 as f32, republished.full.0 as f32)
    } else {
        (republished.full.0 as f32, republished.full.1 as f32)
    };
    evidence.resized = (rw / shown.0 - 1.0).abs() > 0.02 || (rh / shown.1 - 1.0).abs() > 0.02;
    let actions = evidence.actions();
    let local = evidence.local;
    Analysis { changed, alignment, max_residual, lost_texture, recoloured, regions, actions, local }
}

/// The actions stored with a caption: the analysis' (when the pair was analysed) and, for a caption
/// the model made (`model_caption`) of a pair not found unchanged, those its words name.
pub fn stored_actions(analysis: Option<&Analysis>, model_caption: Option<&str>) -> Vec<&'static str> {
    let mut out = analysis.map(|a| a.actions.clone()).unwrap_or_default();
    if let Some(caption) = model_caption.filter(|_| analysis.is_none_or(|a| a.changed)) {
        actions::merge(&mut out, &actions::from_caption(caption));
    }
    out
}

/// The keys `caption --json` and `caption --batch` report beside the caption: `changed`, `regions`
/// (null when not analysed), `actions` ([`stored_actions`]) and `model_skipped`.
pub fn report(analysis: Option<&Analysis>, model_caption: Option<&str>) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("changed".into(), analysis.map(|a| a.changed).into());
    m.insert("regions".into(), serde_json::json!(analysis.map(|a| &a.regions)));
    m.insert("actions".into(), serde_json::json!(stored_actions(analysis, model_caption)));
    m.insert("model_skipped".into(), model_caption.is_none().into());
    m
}

impl Analysis {
    /// Adds `c2pa.transcoded` when the republished file is not the original's bytes.
    pub fn with_files(mut self, original: &[u8], republished: &[u8]) -> Self {
        if original != republished {
            actions::merge(&mut self.actions, &["c2pa.transcoded"]);
        }
        self
    }
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
        let a = analyze(view(&original), view(&copy)).expect("analysed");
        assert!(!a.changed, "residual {}", a.max_residual);
        assert!(a.actions.contains(&"c2pa.orientation") && a.actions.contains(&"c2pa.resized"), "{:?}", a.actions);
        let mut edited = original.clone();
        for y in 60..100 {
            for x in 150..200 {
                edited.put_pixel(x, y, image::Rgb([250, 250, 20]));
            }
        }
        let a = analyze(view(&original), view(&edited)).expect("analysed");
        assert!(a.changed, "residual {}", a.max_residual);
        let hit = a.regions.iter().any(|r| r[0] < 200 && r[2] > 150 && r[1] < 100 && r[3] > 60);
        assert!(hit, "no region over the pasted block: {:?}", a.regions);
    }

    /// A dark, faintly textured field (a night sky, a deep-field photograph): noise of a few levels.
    fn faint_field() -> RgbImage {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        RgbImage::from_fn(320, 320, |_, _| {
            let v = 12 + next(14) as u8;
            image::Rgb([v, v, v + 4])
        })
    }

    /// A deterministic draw below `n` (xorshift64).
    fn xorshift(mut state: u64) -> impl FnMut(u64) -> u32 {
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n) as u32
        }
    }

    fn jpeg(img: &RgbImage, quality: u8) -> RgbImage {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(img).expect("encoded");
        image::load_from_memory(&out).expect("decoded").to_rgb8()
    }

    /// Tiles of random grey levels, 13 pixels apart (sharp edges everywhere), over a gradient.
    fn tiles(w: u32, h: u32) -> RgbImage {
        let level = |tx: u32, ty: u32| ((tx.wrapping_mul(2_654_435_761) ^ ty.wrapping_mul(40_503)) >> 7) % 160;
        RgbImage::from_fn(w, h, |x, y| {
            let v = (40 + level(x / 13, y / 13) + x / 8) as u8;
            image::Rgb([v, v.saturating_add(10), v / 2 + 60])
        })
    }

    #[test]
    fn crops_are_placed_to_a_fraction_of_a_pixel() {
        let original = tiles(600, 400);
        for (x, y, w, h) in [(9, 0, 591, 400), (0, 5, 600, 390), (40, 27, 520, 350), (83, 61, 431, 290)] {
            let crop = image::imageops::crop_imm(&original, x, y, w, h).to_image();
            let a = analyze(view(&original), view(&jpeg(&crop, 90))).expect("analysed");
            assert!(!a.changed, "crop {:?}: residual {} at {:?}", (x, y, w, h), a.max_residual, a.alignment.region);
        }
    }

    /// A dark field with small coloured spots (a deep-field photograph's galaxies), some 3 pixels
    /// wide: under a pixel or two at the comparison's size.
    fn spot_field() -> RgbImage {
        let mut img = RgbImage::from_pixel(400, 400, image::Rgb([8, 8, 12]));
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..260 {
            let (x, y, r) = (next(394), next(394), 1 + next(2));
            let colour = [[230, 150, 70], [90, 140, 235], [220, 200, 120]][next(3) as usize];
            for dy in 0..=2 * r {
                for dx in 0..=2 * r {
                    let (px, py) = (x + dx, y + dy);
                    if px < 400
                        && py < 400
                        && (dx as i32 - r as i32).pow(2) + (dy as i32 - r as i32).pow(2) <= (r * r) as i32
                    {
                        img.put_pixel(px, py, image::Rgb(colour));
                    }
                }
            }
        }
        img
    }

    #[test]
    fn recoloured_spots_on_a_dark_ground_are_found_by_their_colours() {
        let original = spot_field();
        for copy in [jpeg(&original, 75), image::imageops::crop_imm(&original, 12, 0, 380, 400).to_image()] {
            let a = analyze(view(&original), view(&jpeg(&copy, 90))).expect("analysed");
            assert!(!a.changed, "residual {}, recoloured {}", a.max_residual, a.recoloured);
        }
        // A third of the field's colours rotated: each spot keeps its shape and its brightness
        // within its neighbourhood's range, and its steep edge tolerates much of the pixel residual.
        let mut edited = original.clone();
        for y in 100..300 {
            for x in 160..360 {
                let p = edited.get_pixel(x, y).0;
                edited.put_pixel(x, y, image::Rgb([p[1], p[2], p[0]]));
            }
        }
        let a = analyze(view(&original), view(&jpeg(&edited, 90))).expect("analysed");
        assert!(a.max_residual <= CHANGED_THRESHOLD, "the residual alone finds it ({})", a.max_residual);
        assert!(a.changed && a.recoloured > RECOLOURED, "recoloured {}", a.recoloured);
        let inside = |r: &[u32; 4]| r[0] + 4 >= 160 && r[2] <= 364 && r[1] + 4 >= 100 && r[3] <= 304;
        assert!(!a.regions.is_empty() && a.regions.iter().all(inside), "{:?}", a.regions);
    }

    #[test]
    fn a_square_that_owns_its_level_is_not_recoloured_by_the_tone_map() {
        // Flat colours: the square is the only dark green of the picture, so the green tone map's
        // lowest knot is the square's alone.
        let mut original = RgbImage::from_pixel(300, 240, image::Rgb([250, 250, 250]));
        let fill = |img: &mut RgbImage, (x0, y0, x1, y1): (u32, u32, u32, u32), c: [u8; 3]| {
            for y in y0..y1 {
                for x in x0..x1 {
                    img.put_pixel(x, y, image::Rgb(c));
                }
            }
        };
        fill(&mut original, (20, 20, 120, 100), [240, 200, 40]);
        fill(&mut original, (160, 130, 280, 220), [40, 170, 60]);
        fill(&mut original, (150, 30, 210, 90), [220, 30, 30]);
        let brighter =
            RgbImage::from_fn(300, 240, |x, y| image::Rgb(original.get_pixel(x, y).0.map(|v| v.saturating_add(15))));
        let a = analyze(view(&original), view(&jpeg(&brighter, 90))).expect("analysed");
        assert!(!a.changed, "residual {}", a.max_residual);
        assert!(a.actions.contains(&"c2pa.color_adjustments"), "{:?}", a.actions);
        let mut edited = original.clone();
        fill(&mut edited, (150, 30, 210, 90), [240, 140, 30]);
        let a = analyze(view(&original), view(&jpeg(&edited, 90))).expect("analysed");
        assert!(a.changed, "residual {}", a.max_residual);
        let hit = a.regions.iter().any(|r| r[0] < 210 && r[2] > 150 && r[1] < 90 && r[3] > 30);
        assert!(hit, "no region over the recoloured square: {:?}", a.regions);
    }

    #[test]
    fn a_blur_of_a_faint_texture_is_found_by_the_texture_it_lost() {
        let original = faint_field();
        // Re-encoded, even at a low quality that flattens much of the noise: unchanged.
        let a = analyze(view(&original), view(&jpeg(&original, 50))).expect("analysed");
        assert!(!a.changed, "residual {}, texture lost {}", a.max_residual, a.lost_texture);
        // A blurred square (4 % of the picture): every pixel stays within a few levels of its
        // neighbours (no block's residual says so), but the square lost its texture.
        let mut edited = original.clone();
        let blurred = image::imageops::blur(&image::imageops::crop_imm(&original, 100, 140, 64, 64).to_image(), 3.0);
        image::imageops::replace(&mut edited, &blurred, 100, 140);
        let a = analyze(view(&original), view(&jpeg(&edited, 90))).expect("analysed");
        assert!(a.max_residual <= CHANGED_THRESHOLD, "the residual alone finds it ({})", a.max_residual);
        assert!(a.changed && a.lost_texture > LOST_CHANGED, "texture lost {}", a.lost_texture);
        let hit = a.regions.iter().any(|r| r[0] < 164 && r[2] > 100 && r[1] < 204 && r[3] > 140);
        assert!(hit, "no region over the blurred square: {:?}", a.regions);
        assert!(a.actions.contains(&"c2pa.filtered"), "{:?}", a.actions);
    }
}
