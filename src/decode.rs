//! Decoding with explicit limits, then the BLIP2IDC pair preprocessing.
//!
//! The format is sniffed from the bytes (never trusted from the key's extension). Dimensions are read
//! from the header and checked against `decode.max_width`/`max_height` before any pixel buffer exists,
//! and the decoder runs under an allocation cap, so a decompression bomb is rejected, not allocated.
//!
//! JPEGs are decoded by libjpeg-turbo (accurate integer IDCT, fancy upsampling), as PIL does, so the
//! pixels match PIL's exactly; pure-Rust decoders differ by up to 3 levels. JPEGs libjpeg-turbo cannot
//! turn into RGB (CMYK) fall back to the `image` crate.

use std::io::Cursor;

use image::{DynamicImage, ImageError, ImageFormat, ImageReader};

use crate::config::DecodeConfig;
use crate::error::{RejectKind, Rejection};
use crate::model::preprocess::ImageProcessorConfig;

/// Formats the service accepts.
pub const ACCEPTED: [ImageFormat; 3] = [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP];

/// Decodes one image under `limits`. `what` names the image in error messages.
pub fn decode(bytes: &[u8], limits: &DecodeConfig, what: &str) -> Result<DynamicImage, Rejection> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Rejection::new(RejectKind::NotAnImage, format!("{what}: {e}")))?;
    let format = match reader.format() {
        Some(f) if ACCEPTED.contains(&f) => f,
        Some(f) => {
            return Err(Rejection::new(
                RejectKind::NotAnImage,
                format!("{what}: {f:?} images are not accepted (JPEG, PNG, WebP are)"),
            ))
        }
        None => {
            return Err(Rejection::new(
                RejectKind::NotAnImage,
                format!("{what}: {} bytes in no recognised image format", bytes.len()),
            ))
        }
    };
    if format == ImageFormat::Jpeg {
        if let Some(img) = decode_jpeg_turbo(bytes, limits, what)? {
            return Ok(img);
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

/// libjpeg-turbo decoding to RGB; `Ok(None)` when it cannot produce RGB (the caller falls back).
fn decode_jpeg_turbo(bytes: &[u8], limits: &DecodeConfig, what: &str) -> Result<Option<DynamicImage>, Rejection> {
    let header = turbojpeg::read_header(bytes)
        .map_err(|e| Rejection::new(RejectKind::CorruptImage, format!("{what}: corrupt JPEG header: {e}")))?;
    let (w, h) = (header.width as u64, header.height as u64);
    if w > limits.max_width as u64 || h > limits.max_height as u64 || w * h * 3 > limits.max_alloc_bytes {
        return Err(Rejection::new(
            RejectKind::ImageTooLarge,
            format!(
                "{what}: JPEG of {w}x{h} exceeds the decode limits ({}x{} px, {} bytes)",
                limits.max_width, limits.max_height, limits.max_alloc_bytes
            ),
        ));
    }
    if header.colorspace == turbojpeg::Colorspace::CMYK || header.colorspace == turbojpeg::Colorspace::YCCK {
        return Ok(None);
    }
    let rgb = turbo_rgb(bytes, header.width, header.height).map_err(|e| {
        if e.contains("scans") {
            Rejection::new(RejectKind::ImageTooLarge, format!("{what}: progressive JPEG refused: {e}"))
        } else {
            Rejection::new(RejectKind::CorruptImage, format!("{what}: corrupt JPEG: {e}"))
        }
    })?;
    let buf = image::RgbImage::from_raw(header.width as u32, header.height as u32, rgb)
        .expect("libjpeg-turbo filled a full RGB buffer");
    Ok(Some(DynamicImage::ImageRgb8(buf)))
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
    let mut out = vec![0u8; width * height * 3];
    // SAFETY: `out` holds exactly pitch × height bytes; the JPEG buffer is read-only and sized.
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
    Ok(out)
}

/// Decodes both images of a pair and produces the model's `pixel_values`.
pub fn decode_pair(
    original: &[u8],
    republished: &[u8],
    limits: &DecodeConfig,
    processor: &ImageProcessorConfig,
) -> Result<Vec<f32>, Rejection> {
    let a = decode(original, limits, "original")?;
    let b = decode(republished, limits, "republished")?;
    Ok(processor.preprocess_pair(&a, &b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, RgbImage};

    fn limits() -> DecodeConfig {
        DecodeConfig { max_width: 4096, max_height: 4096, max_alloc_bytes: 64 << 20 }
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
}
