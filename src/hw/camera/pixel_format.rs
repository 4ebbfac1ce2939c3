//! The wire formats a V4L2 camera delivers ([`Wire`]: YUYV, MJPG, RGB3) and their
//! conversions to an RGB image: pure functions that build everywhere.

use image::RgbImage;

use super::mjpeg::{find_marker, insert_standard_dht, lacks_huffman_tables};

/// Why a buffer could not be turned into an RGB image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("YUYV width {0} is odd (YUYV pairs pixels)")]
    OddWidth(u32),
    #[error("empty frame size {0}x{1}")]
    EmptySize(u32, u32),
    #[error("stride {stride} is less than {min} bytes for a {width}-pixel row")]
    StrideTooSmall { stride: usize, min: usize, width: u32 },
    #[error("buffer holds {got} bytes, a {width}x{height} frame needs {need}")]
    ShortBuffer { got: usize, need: usize, width: u32, height: u32 },
    #[error("not a JPEG (no start-of-image marker)")]
    NotJpeg,
    #[error("truncated JPEG (no end-of-image marker after the scan data)")]
    TruncatedJpeg,
    #[error("JPEG decode failed: {0}")]
    Jpeg(String),
}

/// Bytes a `height`-row frame with `row` meaningful bytes per row at `stride` needs.
fn needed(row: usize, stride: usize, height: u32, width: u32) -> Result<usize, ConvertError> {
    if stride < row {
        return Err(ConvertError::StrideTooSmall { stride, min: row, width });
    }
    Ok(stride * (height as usize - 1) + row)
}

/// YUYV (YUV 4:2:2, `Y0 U Y1 V` per pixel pair) to RGB, BT.601 limited range
/// (Y 16-235, Cb/Cr 16-240: what UVC cameras send), integer arithmetic.
/// `stride` is the driver's bytes per line (at least `2 * width`).
pub fn yuyv_to_rgb(buf: &[u8], width: u32, height: u32, stride: usize) -> Result<RgbImage, ConvertError> {
    if width == 0 || height == 0 {
        return Err(ConvertError::EmptySize(width, height));
    }
    if !width.is_multiple_of(2) {
        return Err(ConvertError::OddWidth(width));
    }
    let row = width as usize * 2;
    let need = needed(row, stride, height, width)?;
    if buf.len() < need {
        return Err(ConvertError::ShortBuffer { got: buf.len(), need, width, height });
    }
    let mut out = vec![0u8; width as usize * height as usize * 3];
    for (y, dst_row) in out.chunks_exact_mut(width as usize * 3).enumerate() {
        let src_row = &buf[y * stride..y * stride + row];
        for (src, dst) in src_row.chunks_exact(4).zip(dst_row.chunks_exact_mut(6)) {
            let (u, v) = (src[1], src[3]);
            dst[..3].copy_from_slice(&ycbcr_to_rgb(src[0], u, v));
            dst[3..].copy_from_slice(&ycbcr_to_rgb(src[2], u, v));
        }
    }
    // The length is exact by construction; the error branch cannot be taken.
    RgbImage::from_raw(width, height, out).ok_or(ConvertError::EmptySize(width, height))
}

/// One BT.601 limited-range pixel, fixed point with 8 fractional bits
/// (the classic 298/409/100/208/516 coefficients).
#[inline]
pub fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16);
    let d = i32::from(cb) - 128;
    let e = i32::from(cr) - 128;
    let clip = |v: i32| ((v + 128) >> 8).clamp(0, 255) as u8;
    [clip(c + 409 * e), clip(c - 100 * d - 208 * e), clip(c + 516 * d)]
}

/// Packed 24-bit RGB (V4L2 `RGB3`) with a row stride to an image.
pub fn rgb3_to_rgb(buf: &[u8], width: u32, height: u32, stride: usize) -> Result<RgbImage, ConvertError> {
    if width == 0 || height == 0 {
        return Err(ConvertError::EmptySize(width, height));
    }
    let row = width as usize * 3;
    let need = needed(row, stride, height, width)?;
    if buf.len() < need {
        return Err(ConvertError::ShortBuffer { got: buf.len(), need, width, height });
    }
    let mut out = Vec::with_capacity(row * height as usize);
    for y in 0..height as usize {
        out.extend_from_slice(&buf[y * stride..y * stride + row]);
    }
    RgbImage::from_raw(width, height, out).ok_or(ConvertError::EmptySize(width, height))
}

/// One MJPEG frame to RGB. A truncated frame (USB packet loss) is an error, not a
/// half-grey image: the decoder would otherwise pad it silently. Frames without
/// Huffman tables (many UVC webcams omit them, relying on the AVI1 convention)
/// get the standard tables inserted (image 0.25's decoder, zune-jpeg, does that
/// itself only when the frame carries an `AVI1` APP0 segment).
pub fn mjpeg_to_rgb(buf: &[u8]) -> Result<RgbImage, ConvertError> {
    if buf.len() < 4 || buf[0] != 0xFF || buf[1] != 0xD8 {
        return Err(ConvertError::NotJpeg);
    }
    // FF D9 cannot occur inside entropy-coded data (0xFF is stuffed there), so an
    // end-of-image marker after the first start-of-scan means the frame is whole;
    // padding after it (some cameras send some) is harmless.
    let sos = find_marker(buf, 2, 0xDA).ok_or(ConvertError::TruncatedJpeg)?;
    find_marker(buf, sos + 2, 0xD9).ok_or(ConvertError::TruncatedJpeg)?;
    let with_tables;
    let data = if lacks_huffman_tables(buf, sos) {
        with_tables = insert_standard_dht(buf);
        &with_tables[..]
    } else {
        buf
    };
    let img = image::load_from_memory_with_format(data, image::ImageFormat::Jpeg)
        .map_err(|e| ConvertError::Jpeg(e.to_string()))?;
    Ok(img.to_rgb8())
}

/// The V4L2 formats this adapter decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Yuyv,
    Mjpg,
    Rgb3,
}

impl Wire {
    pub fn from_fourcc(fourcc: &[u8; 4]) -> Option<Wire> {
        match fourcc {
            b"YUYV" => Some(Wire::Yuyv),
            b"MJPG" => Some(Wire::Mjpg),
            b"RGB3" => Some(Wire::Rgb3),
            _ => None,
        }
    }

    pub fn fourcc(self) -> [u8; 4] {
        match self {
            Wire::Yuyv => *b"YUYV",
            Wire::Mjpg => *b"MJPG",
            Wire::Rgb3 => *b"RGB3",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Wire::Yuyv => "YUYV",
            Wire::Mjpg => "MJPG",
            Wire::Rgb3 => "RGB3",
        }
    }

    /// Decodes one captured buffer (`bytesused` bytes) of this format.
    pub fn convert(self, buf: &[u8], width: u32, height: u32, stride: usize) -> Result<RgbImage, ConvertError> {
        match self {
            Wire::Yuyv => yuyv_to_rgb(buf, width, height, stride),
            Wire::Rgb3 => rgb3_to_rgb(buf, width, height, stride),
            Wire::Mjpg => mjpeg_to_rgb(buf),
        }
    }
}

/// Printable fourcc ("YUYV"; odd bytes as `?`).
pub fn fourcc_str(fourcc: &[u8; 4]) -> String {
    fourcc.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' }).collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb};

    #[test]
    fn bt601_limited_range_reference_values() {
        assert_eq!(ycbcr_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(ycbcr_to_rgb(235, 128, 128), [255, 255, 255]);
        assert_eq!(ycbcr_to_rgb(126, 128, 128), [128, 128, 128]);
        // The BT.601 limited-range codes of the 100% colour bars.
        assert_eq!(ycbcr_to_rgb(81, 90, 240), [255, 0, 0]);
        assert_eq!(ycbcr_to_rgb(145, 54, 34), [0, 255, 1]); // 8-bit codes round: exact B is 0.9
        assert_eq!(ycbcr_to_rgb(41, 240, 110), [0, 0, 255]);
        // Out-of-range codes clip instead of wrapping.
        assert_eq!(ycbcr_to_rgb(0, 128, 128), [0, 0, 0]);
        assert_eq!(ycbcr_to_rgb(255, 128, 128), [255, 255, 255]);
    }

    #[test]
    fn yuyv_pairs_share_chroma_and_honour_stride() {
        // 2x2 frame, stride 6 (2 padding bytes per row). Row 0: red pair; row 1: black, white.
        let buf = [81, 90, 81, 240, 0xAA, 0xAA, 16, 128, 235, 128, 0xAA, 0xAA];
        let img = yuyv_to_rgb(&buf, 2, 2, 6).expect("convert");
        assert_eq!(img.get_pixel(0, 0), &Rgb([255, 0, 0]));
        assert_eq!(img.get_pixel(1, 0), &Rgb([255, 0, 0]));
        assert_eq!(img.get_pixel(0, 1), &Rgb([0, 0, 0]));
        assert_eq!(img.get_pixel(1, 1), &Rgb([255, 255, 255]));
        // The last row needs no padding.
        assert!(yuyv_to_rgb(&buf[..10], 2, 2, 6).is_ok());
    }

    #[test]
    fn yuyv_rejects_bad_geometry() {
        assert_eq!(yuyv_to_rgb(&[0; 64], 3, 2, 6).unwrap_err(), ConvertError::OddWidth(3));
        assert_eq!(
            yuyv_to_rgb(&[0; 15], 4, 2, 8).unwrap_err(),
            ConvertError::ShortBuffer { got: 15, need: 16, width: 4, height: 2 }
        );
        assert!(matches!(yuyv_to_rgb(&[0; 64], 4, 2, 6), Err(ConvertError::StrideTooSmall { .. })));
        assert_eq!(yuyv_to_rgb(&[], 0, 2, 0).unwrap_err(), ConvertError::EmptySize(0, 2));
    }

    #[test]
    fn rgb3_copies_rows_without_padding() {
        let buf = [1, 2, 3, 4, 5, 6, 0, 7, 8, 9, 10, 11, 12];
        let img = rgb3_to_rgb(&buf, 2, 2, 7).expect("convert");
        assert_eq!(img.into_raw(), vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert!(matches!(rgb3_to_rgb(&buf[..12], 2, 2, 7), Err(ConvertError::ShortBuffer { need: 13, .. })));
    }

    /// A 64x48 test card: left half red, right half blue, encoded as baseline JPEG.
    pub(in crate::hw::camera) fn test_jpeg() -> Vec<u8> {
        let img = RgbImage::from_fn(64, 48, |x, _| if x < 32 { Rgb([200, 30, 30]) } else { Rgb([20, 40, 210]) });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(img.as_raw(), 64, 48, image::ExtendedColorType::Rgb8)
            .expect("encode");
        out
    }

    fn near(a: &Rgb<u8>, b: [u8; 3]) -> bool {
        a.0.iter().zip(b).all(|(&x, y)| x.abs_diff(y) <= 12)
    }

    #[test]
    fn mjpeg_roundtrip() {
        let img = mjpeg_to_rgb(&test_jpeg()).expect("decode");
        assert_eq!(img.dimensions(), (64, 48));
        assert!(near(img.get_pixel(8, 20), [200, 30, 30]), "{:?}", img.get_pixel(8, 20));
        assert!(near(img.get_pixel(56, 20), [20, 40, 210]), "{:?}", img.get_pixel(56, 20));
        // Zero padding after EOI (seen from real cameras) is accepted.
        let mut padded = test_jpeg();
        padded.extend_from_slice(&[0; 100]);
        assert_eq!(mjpeg_to_rgb(&padded).expect("padded"), img);
    }

    #[test]
    fn mjpeg_truncated_or_garbage_is_an_error() {
        let jpeg = test_jpeg();
        assert_eq!(mjpeg_to_rgb(&jpeg[..jpeg.len() * 2 / 3]).unwrap_err(), ConvertError::TruncatedJpeg);
        assert_eq!(mjpeg_to_rgb(&jpeg[..jpeg.len() - 2]).unwrap_err(), ConvertError::TruncatedJpeg);
        assert_eq!(mjpeg_to_rgb(&[0u8; 500]).unwrap_err(), ConvertError::NotJpeg);
        // Intact markers but a corrupt frame header (zero width): the decoder's error is reported.
        let mut broken = jpeg.clone();
        let sof = find_marker(&broken, 2, 0xC0).expect("baseline SOF0");
        broken[sof + 7..sof + 9].copy_from_slice(&[0, 0]);
        assert!(matches!(mjpeg_to_rgb(&broken), Err(ConvertError::Jpeg(_))), "{:?}", mjpeg_to_rgb(&broken));
        // Not caught: entropy data cut short with an EOI still appended decodes
        // (grey-filled) because image's decoder is lenient. UVC marks such frames
        // with V4L2_BUF_FLAG_ERROR, which `V4l2Source` turns into BadFrame.
    }

    #[test]
    fn wire_formats() {
        assert_eq!(Wire::from_fourcc(b"MJPG"), Some(Wire::Mjpg));
        assert_eq!(Wire::from_fourcc(b"RG10"), None);
        assert_eq!(fourcc_str(&[b'Y', b'U', 0, b'V']), "YU?V");
    }
}
