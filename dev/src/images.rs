//! Hostile images for tests of the decode limits: decompression and scan bombs.

use image::ImageEncoder;

/// A valid PNG header claiming `w`×`h` pixels with almost no data: a decompression bomb, for tests of
/// the decode limits.
pub fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut p = Vec::new();
    image::codecs::png::PngEncoder::new(&mut p)
        .write_image(&[0, 0, 0], 1, 1, image::ExtendedColorType::Rgb8)
        .expect("encoding to memory cannot fail");
    p[16..20].copy_from_slice(&w.to_be_bytes());
    p[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}

/// A 16×16 progressive JPEG whose first scan (DC, first pass) is repeated until the file holds
/// `scans` scans: each one is another pass of the decoder over the image, so a few kilobytes can
/// keep a decoder busy for minutes (libjpeg-turbo's TJFLAG_LIMITSCANS stops at 500).
pub fn progressive_scan_bomb(scans: usize) -> Vec<u8> {
    use turbojpeg::raw;
    let (w, h) = (16usize, 16usize);
    let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
    // SAFETY: libjpeg-turbo's compressor with a buffer it allocates (freed with tjFree).
    let jpeg = unsafe {
        let handle = raw::tjInitCompress();
        assert!(!handle.is_null());
        let mut buf: *mut u8 = std::ptr::null_mut();
        let mut size: std::os::raw::c_ulong = 0;
        let flags = raw::TJFLAG_PROGRESSIVE as i32;
        let res = raw::tjCompress2(
            handle,
            pixels.as_ptr(),
            w as i32,
            (w * 3) as i32,
            h as i32,
            raw::TJPF_TJPF_RGB,
            &mut buf,
            &mut size,
            raw::TJSAMP_TJSAMP_444 as i32,
            90,
            flags,
        );
        assert_eq!(res, 0, "tjCompress2");
        let out = std::slice::from_raw_parts(buf, size as usize).to_vec();
        raw::tjFree(buf);
        raw::tjDestroy(handle);
        out
    };
    // Segments up to the first SOS (0xFFDA), then that scan's header and entropy-coded data up to
    // the next marker (0xFF followed by neither 0x00 nor a restart marker).
    let sos = (2..jpeg.len() - 1).find(|&i| jpeg[i] == 0xFF && jpeg[i + 1] == 0xDA).expect("a scan");
    let header_len = u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]) as usize;
    let mut end = sos + 2 + header_len;
    while !(jpeg[end] == 0xFF && jpeg[end + 1] != 0x00 && !(0xD0..=0xD7).contains(&jpeg[end + 1])) {
        end += 1;
    }
    let mut out = jpeg[..sos].to_vec();
    for _ in 0..scans {
        out.extend_from_slice(&jpeg[sos..end]);
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

/// PNG's chunk CRC (ISO 3309).
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}
