//! Decoding with explicit limits, then the BLIP2IDC pair preprocessing.
//!
//! The format is sniffed from the bytes (never trusted from the key's extension). Dimensions are read
//! from the header and checked against `decode.max_width`/`max_height` before any pixel buffer exists,
//! and the decoder runs under an allocation cap, so a decompression bomb is rejected, not allocated.
//!
//! JPEGs are decoded by libjpeg-turbo (accurate integer IDCT, fancy upsampling), as PIL does, so the
//! pixels match PIL's exactly; pure-Rust decoders differ by up to 3 levels. JPEGs libjpeg-turbo cannot
//! turn into RGB (CMYK) fall back to the `image` crate.
//!
//! A pair is planned from its headers first ([`PairPlan`]: the sizes it is decoded at, the memory it
//! needs), then each image is decoded and immediately reduced to its half of the model input
//! ([`blip2idc_resample::StackSqueeze`]), so a full-resolution image lives only while its own resize
//! reads it. With `preprocess.mode = "fast"` JPEGs are decoded at libjpeg-turbo's smallest DCT scale
//! that keeps twice the model's resolution. A large pair's two images are decoded on two threads
//! when cores are idle (`preprocess.split_large_pairs`). While an image is decoded, the change
//! analysis' thumbnail is made from it too ([`crate::analysis`]), so the analysis never decodes again.

use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};

use blip2idc_resample::StackSqueeze;
use image::{DynamicImage, ImageError, ImageFormat, ImageReader, RgbImage};

use crate::analysis::{self, plane::Thumbnail, Analysis};
use crate::config::{DecodeConfig, PreprocessConfig, PreprocessMode};
use crate::error::{RejectKind, Rejection};
use crate::model::preprocess::{rgb_view, ImageProcessorConfig};

/// Formats the service accepts.
pub const ACCEPTED: [ImageFormat; 3] = [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP];

/// Decodes one image under `limits`. `what` names the image in error messages.
pub fn decode(bytes: &[u8], limits: &DecodeConfig, what: &str) -> Result<DynamicImage, Rejection> {
    let (format, reader) = sniff(bytes, what)?;
    if format == ImageFormat::Jpeg {
        if let Some(img) = decode_jpeg_turbo(bytes, limits, what, None)? {
            return Ok(DynamicImage::ImageRgb8(img));
        }
    }
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(limits.max_width);
    lim.max_image_height = Some(limits.max_height);
    lim.max_alloc = Some(limits.max_alloc_bytes);
    let mut reader = reader;
    reader.limits(lim);
    reader.decode().map_err(|e| match e {
        ImageError::Limits(l) => Rejection::new(
            RejectKind::ImageTooLarge,
            format!(
                "{what}: {format:?} exceeds the decode limits ({}x{} px, {} bytes): {l}",
                limits.max_width, limits.max_height, limits.max_alloc_bytes
            ),
        ),
        ImageError::Unsupported(u) => {
            Rejection::new(RejectKind::NotAnImage, format!("{what}: unsupported {format:?} variant: {u}"))
        }
        other => Rejection::new(RejectKind::CorruptImage, format!("{what}: corrupt {format:?}: {other}")),
    })
}

/// The image format, from the bytes; anything but [`ACCEPTED`] is rejected.
/// A reader over image bytes held in memory.
type BytesReader<'a> = ImageReader<Cursor<&'a [u8]>>;

fn sniff<'a>(bytes: &'a [u8], what: &str) -> Result<(ImageFormat, BytesReader<'a>), Rejection> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Rejection::new(RejectKind::NotAnImage, format!("{what}: {e}")))?;
    match reader.format() {
        Some(f) if ACCEPTED.contains(&f) => Ok((f, reader)),
        Some(f) => Err(Rejection::new(
            RejectKind::NotAnImage,
            format!("{what}: {f:?} images are not accepted (JPEG, PNG, WebP are)"),
        )),
        None => Err(Rejection::new(
            RejectKind::NotAnImage,
            format!("{what}: {} bytes in no recognised image format", bytes.len()),
        )),
    }
}

/// Rejects an image of `w × h` over the decode limits (`image_too_large`), before anything is allocated.
fn check_limits(kind: &str, (w, h): (u64, u64), limits: &DecodeConfig, what: &str) -> Result<(), Rejection> {
    if w > limits.max_width as u64 || h > limits.max_height as u64 || w * h * 3 > limits.max_alloc_bytes {
        return Err(Rejection::new(
            RejectKind::ImageTooLarge,
            format!(
                "{what}: {kind} of {w}x{h} exceeds the decode limits ({}x{} px, {} bytes)",
                limits.max_width, limits.max_height, limits.max_alloc_bytes
            ),
        ));
    }
    Ok(())
}

/// libjpeg-turbo decoding to RGB, at `scaled` (from [`jpeg_scale`]) or in full; `Ok(None)` when it
/// cannot produce RGB (the caller falls back).
fn decode_jpeg_turbo(
    bytes: &[u8],
    limits: &DecodeConfig,
    what: &str,
    scaled: Option<JpegScale>,
) -> Result<Option<RgbImage>, Rejection> {
    let header = turbojpeg::read_header(bytes)
        .map_err(|e| Rejection::new(RejectKind::CorruptImage, format!("{what}: corrupt JPEG header: {e}")))?;
    check_limits("JPEG", (header.width as u64, header.height as u64), limits, what)?;
    if header.colorspace == turbojpeg::Colorspace::CMYK || header.colorspace == turbojpeg::Colorspace::YCCK {
        return Ok(None);
    }
    let full = (header.width, header.height);
    let JpegScale { factor: (num, denom), decoded: (width, height), kept } =
        scaled.unwrap_or(JpegScale { factor: (1, 1), decoded: full, kept: full });
    // The buffer below is filled by libjpeg-turbo without being cleared first, so the size asked for
    // must be exactly what it produces: its own header's size at this factor (TJSCALED). A plan made
    // from another reading of the header must not leave bytes unwritten.
    if (width, height) != ((full.0 * num).div_ceil(denom), (full.1 * num).div_ceil(denom)) {
        return Err(Rejection::new(
            RejectKind::CorruptImage,
            format!("{what}: JPEG headers disagree ({}x{} planned from {}x{})", width, height, full.0, full.1),
        ));
    }
    let rgb = turbo_rgb(bytes, width, height).map_err(|e| {
        if e.contains("scans") {
            Rejection::new(RejectKind::ImageTooLarge, format!("{what}: progressive JPEG refused: {e}"))
        } else {
            Rejection::new(RejectKind::CorruptImage, format!("{what}: corrupt JPEG: {e}"))
        }
    })?;
    let rgb = crop_rgb(rgb, (width, height), kept);
    Ok(Some(RgbImage::from_raw(kept.0 as u32, kept.1 as u32, rgb).expect("libjpeg-turbo filled a full RGB buffer")))
}

/// A JPEG decode at one of libjpeg-turbo's DCT scaling factors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JpegScale {
    /// The DCT scaling factor (numerator, denominator).
    pub factor: (usize, usize),
    /// What libjpeg-turbo produces (it rounds the scaled size up).
    pub decoded: (usize, usize),
    /// What is kept: the whole scaled pixels. A last column or row that the rounding added stands
    /// for less than a pixel of the image plus the encoder's block padding (edge copies, or anything:
    /// a full decode crops it), and is dropped.
    pub kept: (usize, usize),
}

/// The smallest of libjpeg-turbo's DCT scaling factors (n/8, at most 1) that keeps at least `min`
/// whole pixels each way of a `width × height` JPEG (the full size when none does).
pub fn jpeg_scale((width, height): (usize, usize), min: (usize, usize)) -> JpegScale {
    let mut n = 0;
    // SAFETY: returns a static table of `n` factors (or null).
    let table = unsafe { turbojpeg::raw::tjGetScalingFactors(&mut n) };
    let factors: Vec<(usize, usize)> = if table.is_null() || n <= 0 {
        Vec::new()
    } else {
        // SAFETY: `table` points at `n` initialised factors, valid for the process's life.
        unsafe { std::slice::from_raw_parts(table, n as usize) }
            .iter()
            .map(|f| (f.num as usize, f.denom as usize))
            .filter(|&(num, denom)| num > 0 && denom > 0 && num < denom)
            .collect()
    };
    let full = JpegScale { factor: (1, 1), decoded: (width, height), kept: (width, height) };
    factors
        .into_iter()
        .map(|(num, denom)| JpegScale {
            factor: (num, denom),
            // TJSCALED rounds up; the whole pixels round down.
            decoded: ((width * num).div_ceil(denom), (height * num).div_ceil(denom)),
            kept: ((width * num / denom).max(1), (height * num / denom).max(1)),
        })
        .filter(|s| s.kept.0 >= min.0.min(width) && s.kept.1 >= min.1.min(height))
        .min_by_key(|s| s.kept.0 * s.kept.1)
        .unwrap_or(full)
}

/// Crops a tight RGB buffer of `from` pixels to its top-left `to` pixels, in place.
fn crop_rgb(mut rgb: Vec<u8>, from: (usize, usize), to: (usize, usize)) -> Vec<u8> {
    if from != to {
        for y in 1..to.1 {
            rgb.copy_within(3 * y * from.0..3 * (y * from.0 + to.0), 3 * y * to.0);
        }
        rgb.truncate(3 * to.0 * to.1);
    }
    rgb
}

/// libjpeg-turbo's `tjDecompress2` straight into a tight RGB buffer (no second copy), with
/// `TJFLAG_LIMITSCANS`: a progressive JPEG of more than 500 scans (each a full pass over the
/// coefficients: a CPU bomb in a few kilobytes) is an error. Otherwise the defaults, as PIL: accurate
/// integer IDCT, fancy upsampling.
fn turbo_rgb(bytes: &[u8], width: usize, height: usize) -> Result<Vec<u8>, String> {
    use turbojpeg::raw;
    struct Handle(raw::tjhandle);
    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: a handle from tjInitDecompress, destroyed once.
            unsafe { raw::tjDestroy(self.0) };
        }
    }
    let too_big = || format!("{width}x{height} does not fit libjpeg-turbo's integer sizes");
    let (w, h, pitch) = (
        i32::try_from(width).map_err(|_| too_big())?,
        i32::try_from(height).map_err(|_| too_big())?,
        i32::try_from(width * 3).map_err(|_| too_big())?,
    );
    // SAFETY: plain constructor; null on failure.
    let handle = Handle(unsafe { raw::tjInitDecompress() });
    if handle.0.is_null() {
        return Err("libjpeg-turbo could not create a decompressor".into());
    }
    // Not zeroed first (a 12 MP photo is 36 MB to clear): libjpeg-turbo writes every byte of the
    // pitch × height buffer, and the length is only set once it has succeeded.
    let mut out: Vec<u8> = Vec::with_capacity(width * height * 3);
    // SAFETY: `out` has room for exactly pitch × height bytes; the JPEG buffer is read-only and sized.
    // The width and height asked for are the image's or a size of its DCT scaling factors, which
    // libjpeg-turbo produces exactly.
    let res = unsafe {
        raw::tjDecompress2(
            handle.0,
            bytes.as_ptr(),
            bytes.len() as _,
            out.as_mut_ptr(),
            w,
            pitch,
            h,
            raw::TJPF_TJPF_RGB as _,
            raw::TJFLAG_LIMITSCANS as _,
        )
    };
    if res != 0 {
        // SAFETY: the handle's error string, valid until the next call on it.
        let msg = unsafe { std::ffi::CStr::from_ptr(raw::tjGetErrorStr2(handle.0)) };
        return Err(msg.to_string_lossy().into_owned());
    }
    // SAFETY: tjDecompress2 succeeded, so all pitch × height bytes are written.
    unsafe { out.set_len(width * height * 3) };
    Ok(out)
}

/// One image of a pair: its format, its size, and the size it is decoded at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImagePlan {
    pub format: ImageFormat,
    pub size: (usize, usize),
    /// The pixels preprocessing gets: `size`, or a JPEG's DCT-scaled size in fast mode.
    pub decoded: (usize, usize),
    /// The DCT scaling, when there is one.
    pub scale: Option<JpegScale>,
    /// What the decoder holds besides the RGB result: a progressive JPEG's coefficients (2 bytes per
    /// sample of every component at full size, whatever the scale), or a PNG/WebP decoder's own
    /// buffer before the conversion to RGB.
    pub decoder_bytes: u64,
}

/// How a pair will be decoded and preprocessed, from its headers alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairPlan {
    pub original: ImagePlan,
    pub modified: ImagePlan,
    /// The model input's (width, height).
    pub out: (usize, usize),
}

impl PairPlan {
    /// Reads both headers. `fast` mode plans DCT-scaled JPEG decodes: the modified image at the
    /// smallest scale keeping twice its share of the model input (`2·W × H` of a `W × H` input, whose
    /// top half is the original and bottom half the modified image) in every colour component, the
    /// original at the smallest keeping that and the modified image's decoded size, so that its resize
    /// still only shrinks.
    pub fn new(
        original: &[u8],
        modified: &[u8],
        limits: &DecodeConfig,
        mode: PreprocessMode,
        out: (usize, usize),
    ) -> Result<Self, Rejection> {
        let ha = header(original, limits, "original")?;
        let hb = header(modified, limits, "republished")?;
        // Twice the share in every component: subsampled chroma (4:2:0 is half the luma's size each
        // way) needs a scale that many times larger, or colour edges blur.
        let share = (2 * out.0, out.1);
        let plan = |h: &Header, at_least: (usize, usize)| {
            let full = ImagePlan {
                format: h.format,
                size: h.size,
                decoded: h.size,
                scale: None,
                decoder_bytes: h.decoder_bytes,
            };
            match (mode, &h.jpeg) {
                // CMYK and YCCK go to the fallback decoder, which has no DCT scaling.
                (PreprocessMode::Fast, Some(j))
                    if !matches!(j.colorspace, turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK) =>
                {
                    let (cx, cy) = ((j.subsamp.mcu_width() / 8).max(1), (j.subsamp.mcu_height() / 8).max(1));
                    let s = jpeg_scale(h.size, ((share.0 * cx).max(at_least.0), (share.1 * cy).max(at_least.1)));
                    ImagePlan { decoded: s.kept, scale: (s.kept != h.size).then_some(s), ..full }
                }
                _ => full,
            }
        };
        let modified = plan(&hb, (0, 0));
        let original = plan(&ha, modified.decoded);
        Ok(PairPlan { original, modified, out })
    }

    /// Whether both images are large enough for the change analysis ([`analysis::MIN_SIDE`]).
    pub fn analysable(&self) -> bool {
        let big = |p: &ImagePlan| p.size.0.min(p.size.1) >= analysis::MIN_SIDE;
        big(&self.original) && big(&self.modified)
    }

    /// The bytes the change analysis adds ([`analysis::working_bytes`]).
    pub fn analysis_bytes(&self) -> u64 {
        if self.analysable() {
            analysis::working_bytes(self.original.decoded, self.modified.decoded)
        } else {
            0
        }
    }

    /// The bytes decoding and preprocessing allocate at most: both decoded images (they can be alive
    /// at once when the pair is split across threads), the streaming buffers, the model input.
    pub fn bytes(&self) -> u64 {
        let dct = |p: &ImagePlan| p.scale.map_or(p.decoded, |s| s.decoded);
        crate::budget::pair_bytes(dct(&self.original), dct(&self.modified), self.out)
            + self.original.decoder_bytes
            + self.modified.decoder_bytes
    }
}

/// What a header says: the format (sniffed from the bytes), the size (libjpeg-turbo's reading for
/// JPEGs: the decoder that will run), and the decoder's working memory ([`ImagePlan::decoder_bytes`]);
/// the same rejections as [`decode`], limits included, before anything is allocated.
struct Header {
    format: ImageFormat,
    size: (usize, usize),
    jpeg: Option<turbojpeg::DecompressHeader>,
    decoder_bytes: u64,
}

fn header(bytes: &[u8], limits: &DecodeConfig, what: &str) -> Result<Header, Rejection> {
    let (format, reader) = sniff(bytes, what)?;
    let corrupt = |e: &dyn std::fmt::Display| {
        Rejection::new(RejectKind::CorruptImage, format!("{what}: corrupt {format:?} header: {e}"))
    };
    let (size, jpeg, decoder_bytes) = if format == ImageFormat::Jpeg {
        let h = turbojpeg::read_header(bytes).map_err(|e| corrupt(&e))?;
        let (w, hh) = (h.width as u64, h.height as u64);
        let samples = match h.colorspace {
            turbojpeg::Colorspace::Gray => w * hh,
            turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK => 4 * w * hh,
            _ => {
                let sub = ((h.subsamp.mcu_width() / 8).max(1) * (h.subsamp.mcu_height() / 8).max(1)) as u64;
                w * hh + 2 * (w * hh).div_ceil(sub)
            }
        };
        let cmyk = matches!(h.colorspace, turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK);
        // Progressive: 2 bytes per coefficient kept for the whole image; CMYK: the fallback
        // decoder's 4-channel buffer before the conversion.
        let extra = if jpeg_is_progressive(bytes) { 2 * samples } else { 0 } + if cmyk { 4 * w * hh } else { 0 };
        ((h.width, h.height), Some(h), extra)
    } else {
        let decoder = reader.into_decoder().map_err(|e| corrupt(&e))?;
        let (w, h) = image::ImageDecoder::dimensions(&decoder);
        let native = image::ImageDecoder::color_type(&decoder);
        let px = w as u64 * h as u64;
        // An RGB8 result is the decoder's own buffer, moved; anything else is converted into a new one.
        let extra = if native == image::ColorType::Rgb8 { 0 } else { px * native.bytes_per_pixel() as u64 };
        ((w as usize, h as usize), None, extra)
    };
    check_limits(&format!("{format:?}"), (size.0 as u64, size.1 as u64), limits, what)?;
    Ok(Header { format, size, jpeg, decoder_bytes })
}

/// Whether a JPEG's first frame header is progressive (SOF2, SOF6, SOF10, SOF14); `true` when the
/// markers cannot be walked (the memory estimate then assumes the worst).
fn jpeg_is_progressive(bytes: &[u8]) -> bool {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xff {
            return true;
        }
        let marker = bytes[i + 1];
        match marker {
            0xff => i += 1,
            0xd0..=0xd7 | 0x01 => i += 2,
            0xc2 | 0xc6 | 0xca | 0xce => return true,
            0xc0 | 0xc1 | 0xc3 | 0xc5 | 0xc7 | 0xc9 | 0xcb | 0xcd | 0xcf => return false,
            _ => i += 2 + u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize,
        }
    }
    true
}

/// Decodes one planned image to RGB at its planned size (JPEGs through libjpeg-turbo, DCT-scaled
/// when planned so; other formats in full, converted as PIL's `convert("RGB")`).
pub fn decode_planned(
    bytes: &[u8],
    plan: &ImagePlan,
    limits: &DecodeConfig,
    what: &str,
) -> Result<RgbImage, Rejection> {
    let img = match plan.format {
        ImageFormat::Jpeg => match decode_jpeg_turbo(bytes, limits, what, plan.scale)? {
            Some(rgb) => rgb,
            None => decode(bytes, limits, what)?.into_rgb8(),
        },
        _ => decode(bytes, limits, what)?.into_rgb8(),
    };
    let got = (img.width() as usize, img.height() as usize);
    if got != plan.decoded {
        return Err(Rejection::new(
            RejectKind::CorruptImage,
            format!("{what}: decoded {}x{}, but its header says {}x{}", got.0, got.1, plan.decoded.0, plan.decoded.1),
        ));
    }
    Ok(img)
}

/// Pairs being decoded now, for [`decode_pair`]'s decision to split one across threads.
static DECODING: AtomicUsize = AtomicUsize::new(0);

struct Decoding;

impl Decoding {
    fn enter() -> (Self, usize) {
        (Decoding, DECODING.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

impl Drop for Decoding {
    fn drop(&mut self) {
        DECODING.fetch_sub(1, Ordering::Relaxed);
    }
}

fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Decodes both images of a pair and produces the model's `pixel_values` ([`PairPlan::new`], then
/// [`decode_planned_pair`]).
pub fn decode_pair(
    original: &[u8],
    republished: &[u8],
    limits: &DecodeConfig,
    preprocess: &PreprocessConfig,
    processor: &ImageProcessorConfig,
) -> Result<Vec<f32>, Rejection> {
    Ok(decode_pair_analysed(original, republished, limits, preprocess, processor, false)?.pixel_values)
}

/// [`decode_pair`], with the change analysis ([`crate::analysis`]) when `analyse` is set.
pub fn decode_pair_analysed(
    original: &[u8],
    republished: &[u8],
    limits: &DecodeConfig,
    preprocess: &PreprocessConfig,
    processor: &ImageProcessorConfig,
    analyse: bool,
) -> Result<DecodedPair, Rejection> {
    let out = (processor.width as usize, processor.height as usize);
    let plan = PairPlan::new(original, republished, limits, preprocess.mode, out)?;
    decode_planned_pair(original, republished, &plan, limits, preprocess, processor, analyse)
}

/// A decoded pair: the model's input and, when asked for and both images are large enough, the
/// change analysis.
pub struct DecodedPair {
    pub pixel_values: Vec<f32>,
    pub analysis: Option<Analysis>,
}

/// [`decode_pair_analysed`] with the pair's plan already made (the pipeline makes it first, for the
/// budget): each image decoded, reduced to its half of the model input and to the analysis'
/// thumbnail, and dropped (on two threads for a large pair when cores are idle); then the thumbnails
/// compared.
pub fn decode_planned_pair(
    original: &[u8],
    republished: &[u8],
    plan: &PairPlan,
    limits: &DecodeConfig,
    preprocess: &PreprocessConfig,
    processor: &ImageProcessorConfig,
    analyse: bool,
) -> Result<DecodedPair, Rejection> {
    let with_files = |a: Analysis| a.with_files(original, republished);
    if !processor.do_resize {
        let a = decode(original, limits, "original")?;
        let b = decode(republished, limits, "republished")?;
        let analysis = if analyse {
            let (a, b) = (a.to_rgb8(), b.to_rgb8());
            crate::analysis::analyze(rgb_view(&a), rgb_view(&b)).map(with_files)
        } else {
            None
        };
        return Ok(DecodedPair { pixel_values: processor.preprocess_pair(&a, &b), analysis });
    }
    let analyse = analyse && plan.analysable();
    let out = plan.out;
    let squeeze = StackSqueeze::new(plan.modified.decoded, out);
    let top = || -> Result<_, Rejection> {
        let img = decode_planned(original, &plan.original, limits, "original")?;
        let thumb = analyse.then(|| Thumbnail::new(rgb_view(&img), plan.original.size, analysis::ORIGINAL_SIDE));
        Ok((squeeze.top(rgb_view(&img)), thumb))
    };
    let bottom = || -> Result<_, Rejection> {
        let img = decode_planned(republished, &plan.modified, limits, "republished")?;
        let thumb = analyse.then(|| Thumbnail::new(rgb_view(&img), plan.modified.size, analysis::DIFF_SIDE));
        Ok((squeeze.bottom(rgb_view(&img)), thumb))
    };
    let (_decoding, now) = Decoding::enter();
    let pixels = |p: &ImagePlan| p.decoded.0 * p.decoded.1;
    let large = pixels(&plan.original) + pixels(&plan.modified) >= 1 << 20;
    let (top, bottom) = if preprocess.split_large_pairs && large && now < cores() {
        std::thread::scope(|s| {
            let t = s.spawn(top);
            let b = bottom();
            (t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), b)
        })
    } else {
        (top(), bottom())
    };
    let ((top, orig_thumb), (bottom, rep_thumb)) = (top?, bottom?);
    let rgb = squeeze.finish(&top, &bottom);
    let analysis = match (orig_thumb, rep_thumb) {
        (Some(o), Some(r)) => {
            let started = std::time::Instant::now();
            let a = with_files(analysis::analyze_thumbnails(&o, &r));
            metrics::histogram!(crate::metrics::ANALYSIS_SECONDS).record(started.elapsed().as_secs_f64());
            let changed = if a.changed { "true" } else { "false" };
            metrics::counter!(crate::metrics::PAIRS_ANALYSED, "changed" => changed).increment(1);
            Some(a)
        }
        _ => None,
    };
    Ok(DecodedPair { pixel_values: processor.normalize(&rgb), analysis })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, RgbImage};

    fn limits() -> DecodeConfig {
        DecodeConfig { max_width: 4096, max_height: 4096, max_alloc_bytes: 64 << 20 }
    }

    fn unlimited() -> DecodeConfig {
        DecodeConfig { max_width: u32::MAX, max_height: u32::MAX, max_alloc_bytes: u64::MAX }
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn decodes_png() {
        let img = decode(&png(10, 7), &limits(), "x").unwrap();
        assert_eq!((img.width(), img.height()), (10, 7));
    }

    #[test]
    fn rejects_text_and_truncated_images() {
        assert_eq!(decode(b"hello world", &limits(), "x").unwrap_err().kind, RejectKind::NotAnImage);
        let mut p = png(50, 50);
        p.truncate(p.len() / 2);
        assert_eq!(decode(&p, &limits(), "x").unwrap_err().kind, RejectKind::CorruptImage);
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert_eq!(decode(gif, &limits(), "x").unwrap_err().kind, RejectKind::NotAnImage);
    }

    #[test]
    fn progressive_scan_bombs_are_refused() {
        let ok = blip2idc_dev::progressive_scan_bomb(1);
        let img = decode(&ok, &limits(), "x").expect("a progressive JPEG decodes");
        assert_eq!((img.width(), img.height()), (16, 16));
        // Before TJFLAG_LIMITSCANS, libjpeg-turbo walked all 5000 scans (then reported the repeated
        // scans' inconsistent progression, a corrupt_image); now it stops at scan 501.
        let bomb = blip2idc_dev::progressive_scan_bomb(5000);
        let err = decode(&bomb, &limits(), "bomb").unwrap_err();
        assert_eq!(err.kind, RejectKind::ImageTooLarge, "{err}");
        assert!(err.message.contains("scans"), "{err}");
    }

    #[test]
    fn bomb_is_rejected_before_allocation() {
        // A PNG header claiming 60000 x 60000 (10.8 GB of RGB) with almost no data.
        let bomb = blip2idc_dev::png_bomb(60_000, 60_000);
        let small = DecodeConfig { max_width: 8192, max_height: 8192, max_alloc_bytes: 64 << 20 };
        let err = decode(&bomb, &small, "bomb").unwrap_err();
        assert_eq!(err.kind, RejectKind::ImageTooLarge, "{err}");
        // Within the dimension limits but over the allocation cap.
        let tight = DecodeConfig { max_width: 100_000, max_height: 100_000, max_alloc_bytes: 1 << 20 };
        assert_eq!(decode(&bomb, &tight, "bomb").unwrap_err().kind, RejectKind::ImageTooLarge);
    }

    fn jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
        // Smooth shapes and a sharp-edged block: photo-like content that JPEG keeps.
        let img = RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let edge = (fx > 0.3 && fx < 0.45 && fy > 0.5 && fy < 0.8) as u8 * 120;
            let r = (128.0 + 100.0 * (fx * 7.0 + seed as f32).sin()) as u8;
            let g = (128.0 + 90.0 * (fy * 5.0 + fx * 3.0).cos()) as u8;
            image::Rgb([r.saturating_add(edge), g, ((fx + fy) * 120.0) as u8])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    fn preprocess(mode: PreprocessMode, split: bool) -> PreprocessConfig {
        PreprocessConfig { mode, split_large_pairs: split }
    }

    #[test]
    fn pair_plans_read_only_headers() {
        let bomb = blip2idc_dev::png_bomb(60_000, 60_000);
        let small = blip2idc_dev::png_bomb(10, 10);
        let plan = PairPlan::new(&small, &bomb, &unlimited(), PreprocessMode::Fast, (224, 224)).unwrap();
        assert_eq!(plan.original.decoded, (10, 10));
        assert_eq!(plan.modified.decoded, (60_000, 60_000), "PNGs are never scaled");
        assert!(plan.bytes() >= 3 * (100 + 3_600_000_000), "both images counted: {}", plan.bytes());
        // The streaming buffers (here mostly the 120 000 squeezed rows) are small beside the images.
        assert!(plan.bytes() < 3 * (100 + 3_600_000_000) / 100 * 102, "{}", plan.bytes());
        let err = PairPlan::new(b"not an image", &small, &limits(), PreprocessMode::Exact, (224, 224)).unwrap_err();
        assert_eq!(err.kind, RejectKind::NotAnImage);
        assert!(err.message.starts_with("original:"), "{err}");
    }

    #[test]
    fn fast_mode_decodes_jpegs_at_the_smallest_scale_keeping_twice_the_model_share() {
        let kept = |size, min| jpeg_scale(size, min).kept;
        assert_eq!(kept((4000, 3000), (448, 224)), (500, 375));
        assert_eq!(
            jpeg_scale((3000, 2250), (448, 224)),
            JpegScale { factor: (1, 4), decoded: (750, 563), kept: (750, 562) }
        );
        assert_eq!(kept((300, 200), (448, 224)), (300, 200), "never enlarged");
        let (a, b) = (jpeg(1600, 1200, 1), jpeg(1200, 900, 2));
        let plan = PairPlan::new(&a, &b, &limits(), PreprocessMode::Fast, (224, 224)).unwrap();
        assert_eq!(plan.modified.decoded, (450, 337), "3/8 keeps 448 × 224 (and a partial last row is dropped)");
        // The original keeps at least the modified image's decoded size: its resize only shrinks.
        assert_eq!(plan.original.decoded, (600, 450));
        let exact = PairPlan::new(&a, &b, &limits(), PreprocessMode::Exact, (224, 224)).unwrap();
        assert_eq!((exact.original.decoded, exact.modified.decoded), ((1600, 1200), (1200, 900)));
        assert!(plan.bytes() * 4 < exact.bytes());
    }

    #[test]
    fn pairs_decode_to_the_stacked_images_bytes_on_one_or_two_threads() {
        let (a, b) = (jpeg(1300, 900, 3), jpeg(900, 700, 4));
        let proc = ImageProcessorConfig::for_image_size(224);
        let rgb = |bytes: &[u8]| decode(bytes, &limits(), "x").unwrap().into_rgb8();
        let want = proc.pixel_values(&crate::model::preprocess::stack_pair(&rgb(&a), &rgb(&b)));
        for split in [false, true] {
            let got = decode_pair(&a, &b, &limits(), &preprocess(PreprocessMode::Exact, split), &proc).unwrap();
            assert!(got == want, "split {split}: differs from stacking then resizing");
        }
        // A corrupt image is reported as such, split or not, whichever half it is in.
        let mut bad = b.clone();
        bad.truncate(bad.len() / 3);
        bad.extend_from_slice(&[0xff, 0xd9]);
        for split in [false, true] {
            let cfg = preprocess(PreprocessMode::Exact, split);
            let err = decode_pair(&a, &bad, &limits(), &cfg, &proc).unwrap_err();
            assert!(err.message.starts_with("republished:"), "split {split}: {err}");
            let err = decode_pair(&bad, &a, &limits(), &cfg, &proc).unwrap_err();
            assert!(err.message.starts_with("original:"), "split {split}: {err}");
        }
    }

    #[test]
    fn headers_over_the_limits_are_rejected_before_any_estimate() {
        // A few hundred bytes claiming 1 × 4 000 000 000 pixels: planning must not size anything by it.
        let tall = blip2idc_dev::png_bomb(1, 4_000_000_000);
        let small = jpeg(64, 48, 1);
        for (a, b, who) in [(&tall, &small, "original"), (&small, &tall, "republished")] {
            let err = PairPlan::new(a, b, &limits(), PreprocessMode::Exact, (224, 224)).unwrap_err();
            assert_eq!(err.kind, RejectKind::ImageTooLarge, "{err}");
            assert!(err.message.starts_with(who), "{err}");
        }
    }

    #[test]
    fn decoder_memory_is_counted() {
        // A baseline JPEG decodes straight into the RGB buffer.
        let baseline = jpeg(640, 480, 2);
        assert!(!jpeg_is_progressive(&baseline));
        let plan = PairPlan::new(&baseline, &baseline, &limits(), PreprocessMode::Exact, (224, 224)).unwrap();
        assert_eq!(plan.original.decoder_bytes, 0);
        // A grey PNG is converted to RGB: its own buffer counts.
        let grey = {
            let g = image::GrayImage::from_pixel(100, 50, image::Luma([9]));
            let mut out = Vec::new();
            image::codecs::png::PngEncoder::new(&mut out)
                .write_image(g.as_raw(), 100, 50, image::ExtendedColorType::L8)
                .unwrap();
            out
        };
        let plan = PairPlan::new(&grey, &baseline, &limits(), PreprocessMode::Exact, (224, 224)).unwrap();
        assert_eq!(plan.original.decoder_bytes, 100 * 50);
    }

    #[test]
    fn progressive_jpegs_are_recognised() {
        let p = blip2idc_dev::progressive_scan_bomb(1);
        assert!(jpeg_is_progressive(&p));
        let plan = PairPlan::new(&p, &p, &limits(), PreprocessMode::Exact, (224, 224)).unwrap();
        // 16 × 16, whatever its sampling: at least the luma's coefficients, 2 bytes each.
        assert!(plan.original.decoder_bytes >= 2 * 16 * 16, "{}", plan.original.decoder_bytes);
        assert!(!jpeg_is_progressive(&jpeg(32, 32, 3)));
        assert!(jpeg_is_progressive(b"\xff\xd8garbage"), "unparseable: assume the worst");
    }

    #[test]
    fn cmyk_jpegs_decode_in_full_in_both_modes() {
        let (w, h) = (1200usize, 900usize);
        let cmyk: Vec<u8> = (0..w * h).flat_map(|i| [(i % 251) as u8, (i / w % 241) as u8, 40, 10]).collect();
        let img = turbojpeg::Image {
            pixels: cmyk.as_slice(),
            width: w,
            pitch: 4 * w,
            height: h,
            format: turbojpeg::PixelFormat::CMYK,
        };
        let bytes = turbojpeg::compress(img, 90, turbojpeg::Subsamp::None).unwrap().to_vec();
        let header = turbojpeg::read_header(&bytes).unwrap();
        assert!(matches!(header.colorspace, turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK));
        let plan = PairPlan::new(&bytes, &bytes, &limits(), PreprocessMode::Fast, (224, 224)).unwrap();
        assert_eq!((plan.original.scale, plan.modified.decoded), (None, (w, h)), "no DCT scaling for CMYK");
        let proc = ImageProcessorConfig::for_image_size(224);
        let run = |mode| decode_pair(&bytes, &bytes, &limits(), &preprocess(mode, false), &proc);
        let (exact, fast) = (run(PreprocessMode::Exact).unwrap(), run(PreprocessMode::Fast).unwrap());
        assert_eq!(exact, fast);
    }

    #[test]
    fn fast_mode_stays_close_to_exact() {
        let (a, b) = (jpeg(2400, 1800, 5), jpeg(1800, 1350, 6));
        let proc = ImageProcessorConfig { do_normalize: false, ..ImageProcessorConfig::for_image_size(224) };
        let run = |mode| decode_pair(&a, &b, &limits(), &preprocess(mode, false), &proc).unwrap();
        let (exact, fast) = (run(PreprocessMode::Exact), run(PreprocessMode::Fast));
        let mut diffs: Vec<f32> = exact.iter().zip(&fast).map(|(x, y)| (x - y).abs() * 255.0).collect();
        diffs.sort_by(f32::total_cmp);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let (p99, max) = (diffs[diffs.len() * 99 / 100], diffs[diffs.len() - 1]);
        assert!(mean > 0.0, "fast mode decoded in full?");
        // The scaled IDCT rings on hard edges (this image has one): rare large differences.
        assert!(
            mean <= 0.5 && p99 <= 6.0 && max <= 64.0,
            "fast vs exact: mean {mean:.3}, p99 {p99}, max {max} (of 255)"
        );
    }
}
