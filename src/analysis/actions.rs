//! Naming a pair's edits with the C2PA action vocabulary
//! (<https://c2pa.org/specifications/specifications/2.1/specs/C2PA_Specification.html#_actions>):
//! from the alignment (`c2pa.orientation`, `c2pa.cropped`, `c2pa.resized`), the files
//! (`c2pa.transcoded`), the global tone map (`c2pa.color_adjustments`), the local differences
//! (`c2pa.edited`, and by their texture `c2pa.filtered`, `c2pa.removed`, `c2pa.placed`, by their
//! colours over edges that stayed `c2pa.color_adjustments`) and the
//! caption's words ([`from_caption`]). `benches/analysis.rs` reports each one's precision and recall
//! on the evaluation set.

/// Every action this module names, in the order they are listed.
pub const ORDER: [&str; 10] = [
    "c2pa.transcoded",
    "c2pa.resized",
    "c2pa.cropped",
    "c2pa.orientation",
    "c2pa.color_adjustments",
    "c2pa.filtered",
    "c2pa.edited",
    "c2pa.placed",
    "c2pa.removed",
    "c2pa.drawing",
];

/// What the changed blocks of a pair look like, averaged over them.
#[derive(Clone, Copy, Debug)]
pub struct Local {
    /// Pixel residual beyond the re-encoding tolerance (normalised).
    pub pixel: f32,
    /// Relative texture change, copy against original (−1 flattened, > 0 texture added).
    pub texture: f32,
    /// The edges kept: correlation of the two luminance gradients (1: the same edges).
    pub structure: f32,
    /// The share of the changed blocks' pixels whose colour changed.
    pub colour: f32,
}

/// What the analysis measured, before naming.
#[derive(Clone, Copy, Debug)]
pub struct Evidence {
    pub orientation: bool,
    pub cropped: bool,
    pub resized: bool,
    /// The global tone map's mean shift, levels.
    pub tone_shift: f32,
    /// The changed blocks, when there are any.
    pub local: Option<Local>,
}

/// A flattened area whose pixels stay within the tolerated range was blurred; one that also differs
/// lost its content (removed, inpainted); added texture is something placed.
const FLATTENED: f32 = -0.3;
const BLURRED_PIXEL: f32 = 0.5;
const ADDED: f32 = 0.3;

/// A changed area whose edges stayed (structure above `KEPT`) while a share of its pixels above
/// `RECOLOURED_SHARE` changed colour was recoloured: `c2pa.color_adjustments`, locally.
const KEPT: f32 = 0.8;
const RECOLOURED_SHARE: f32 = 0.2;

impl Evidence {
    pub fn actions(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut add = |on: bool, a: &'static str| {
            if on {
                out.push(a);
            }
        };
        add(self.resized, "c2pa.resized");
        add(self.cropped, "c2pa.cropped");
        add(self.orientation, "c2pa.orientation");
        add(self.tone_shift > super::TONE_SHIFT, "c2pa.color_adjustments");
        if let Some(l) = self.local {
            let kept = l.structure > KEPT && l.texture >= FLATTENED && l.texture <= ADDED;
            add(kept && l.colour > RECOLOURED_SHARE, "c2pa.color_adjustments");
            add(l.texture < FLATTENED && l.pixel < BLURRED_PIXEL, "c2pa.filtered");
            add(true, "c2pa.edited");
            add(l.texture > ADDED, "c2pa.placed");
            add(l.texture < FLATTENED && l.pixel >= BLURRED_PIXEL, "c2pa.removed");
        }
        let mut sorted = Vec::new();
        merge(&mut sorted, &out);
        sorted
    }
}

/// Adds `more` to `actions`, keeping [`ORDER`] and no duplicates.
pub fn merge(actions: &mut Vec<&'static str>, more: &[&'static str]) {
    for a in more {
        if !actions.contains(a) {
            actions.push(a);
        }
    }
    actions.sort_by_key(|a| ORDER.iter().position(|o| o == a).unwrap_or(ORDER.len()));
}

/// Actions a caption's words name (the model describes what was done: "the man was removed",
/// "text has been added", "the car is now red"). Whole words only, case-insensitive.
pub fn from_caption(caption: &str) -> Vec<&'static str> {
    let lower = caption.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let any = |set: &[&str]| words.iter().any(|w| set.contains(w));
    let mut out = Vec::new();
    if any(&["removed", "remove", "removes", "erased", "deleted", "gone", "missing", "disappeared", "disappears"]) {
        out.push("c2pa.removed");
    }
    if any(&["added", "add", "adds", "appears", "appeared", "inserted", "pasted", "placed"]) {
        out.push("c2pa.placed");
    }
    if any(&["text", "writing", "written", "words", "letters", "drawn", "drawing", "scribble"]) {
        out.push("c2pa.drawing");
    }
    if any(&["color", "colour", "colors", "colours", "recolored", "recoloured", "brighter", "darker", "tint"]) {
        out.push("c2pa.color_adjustments");
    }
    if any(&["blurred", "blurry", "blur", "sharpened", "filter", "filtered"]) {
        out.push("c2pa.filtered");
    }
    if !out.is_empty() {
        out.push("c2pa.edited");
    }
    let mut sorted = Vec::new();
    merge(&mut sorted, &out);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_words_name_actions_in_order() {
        assert_eq!(from_caption("The man on the left was removed."), ["c2pa.edited", "c2pa.removed"]);
        assert_eq!(from_caption("red text has been added to the top"), ["c2pa.edited", "c2pa.placed", "c2pa.drawing"]);
        assert_eq!(from_caption("the car's colour changed"), ["c2pa.color_adjustments", "c2pa.edited"]);
        // Whole words: "address" is not "add", "context" is not "text".
        assert!(from_caption("no visible change in the address context").is_empty());
    }

    #[test]
    fn evidence_names_geometry_tone_and_local_edits() {
        let e = Evidence { orientation: true, cropped: false, resized: true, tone_shift: 8.0, local: None };
        assert_eq!(e.actions(), ["c2pa.resized", "c2pa.orientation", "c2pa.color_adjustments"]);
        let blur = Local { pixel: 0.2, texture: -0.6, structure: 0.7, colour: 0.0 };
        let e = Evidence { orientation: false, cropped: false, resized: false, tone_shift: 0.5, local: Some(blur) };
        assert_eq!(e.actions(), ["c2pa.filtered", "c2pa.edited"]);
        // Colours changed over edges that stayed: recoloured; over new edges: something placed.
        let recolour = Local { pixel: 3.0, texture: 0.05, structure: 0.95, colour: 0.6 };
        let e = Evidence { local: Some(recolour), ..e };
        assert_eq!(e.actions(), ["c2pa.color_adjustments", "c2pa.edited"]);
        let pasted = Local { pixel: 3.0, texture: 0.5, structure: 0.3, colour: 0.6 };
        assert_eq!(Evidence { local: Some(pasted), ..e }.actions(), ["c2pa.edited", "c2pa.placed"]);
        let e = Evidence { local: Some(blur), ..e };
        let mut merged = e.actions();
        merge(&mut merged, &["c2pa.transcoded", "c2pa.edited"]);
        assert_eq!(merged, ["c2pa.transcoded", "c2pa.filtered", "c2pa.edited"]);
    }
}
