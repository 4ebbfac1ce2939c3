//! V4L2 camera adapter: [`V4l2Source`] streams frames from a USB (UVC) camera on
//! the microscope's camera port, or any other V4L2 capture device.
//!
//! - Format: the configured preference (MJPEG or YUYV) is asked for, but the
//!   driver has the last word; whatever it grants among YUYV, MJPG and RGB3 is
//!   used (and the granted size too). Jetson CSI sensors deliver raw Bayer
//!   through V4L2 (no ISP): they are refused with the granted fourcc named; use a
//!   USB camera there.
//! - Latency: the newest ready frame is returned and older queued ones are
//!   dropped, so the analysed field is the one under the objective now.
//! - Robustness: `next_frame` never waits longer than `timeout_ms`. On a device
//!   error (cable pulled, camera reset) the stream and device are dropped,
//!   `Disconnected` is returned, and later calls try to reopen the device at most
//!   once per `reopen_interval_ms` until frames flow again.
//!
//! The pixel conversions ([`yuyv_to_rgb`], [`mjpeg_to_rgb`], [`rgb3_to_rgb`]) are
//! pure and build everywhere; the device code is Linux-only.

use std::path::PathBuf;
use std::time::Duration;

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Pixel format to ask the camera for first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// Motion JPEG: compressed; most USB 2.0 webcams reach full frame rate at
    /// 1280x960 only this way.
    #[default]
    Mjpeg,
    /// Uncompressed YUV 4:2:2: no compression artefacts, lower frame rate over USB 2.0.
    Yuyv,
}

impl PixelFormat {
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Mjpeg => *b"MJPG",
            PixelFormat::Yuyv => *b"YUYV",
        }
    }
}

/// The `[camera]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CameraConfig {
    /// V4L2 device node of the camera. A USB camera also creates a metadata node
    /// (usually the next number) that cannot capture. Default "/dev/video0".
    pub device: PathBuf,
    /// Requested frame width in pixels; if the driver grants another size, that
    /// size is used. Default 1280.
    pub width: u32,
    /// Requested frame height in pixels (see `width`). Default 960.
    pub height: u32,
    /// Pixel format to ask for first: "mjpeg" or "yuyv". Whatever the driver
    /// grants among MJPEG, YUYV and RGB3 is accepted. Default "mjpeg".
    pub format: PixelFormat,
    /// Memory-mapped capture buffers, 2 to 32. The newest frame is always the one
    /// analysed, so more buffers add no latency. Default 4.
    pub buffers: u32,
    /// Longest wait for one frame, in milliseconds (1 to 60000); after it the
    /// appliance loop gets a timeout and goes back to the buttons. Default 1000.
    pub timeout_ms: u64,
    /// After a camera error or unplug, try to reopen the device at most this often,
    /// in milliseconds (100 to 600000). Default 1000.
    pub reopen_interval_ms: u64,
}

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig {
            device: PathBuf::from("/dev/video0"),
            width: 1280,
            height: 960,
            format: PixelFormat::Mjpeg,
            buffers: 4,
            timeout_ms: 1000,
            reopen_interval_ms: 1000,
        }
    }
}

impl CameraConfig {
    /// Checks the values: `Err((key, value, why))` names the first bad key
    /// (keys as in the `[camera]` section, e.g. "camera.width").
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        let bad = |key, value: u64, why| Err((key, value.to_string(), why));
        if !(16..=8192).contains(&self.width) {
            return bad("camera.width", self.width.into(), "must be between 16 and 8192");
        }
        if !(16..=8192).contains(&self.height) {
            return bad("camera.height", self.height.into(), "must be between 16 and 8192");
        }
        if !(2..=32).contains(&self.buffers) {
            return bad("camera.buffers", self.buffers.into(), "must be between 2 and 32");
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return bad("camera.timeout_ms", self.timeout_ms, "must be between 1 and 60000");
        }
        if !(100..=600_000).contains(&self.reopen_interval_ms) {
            return bad("camera.reopen_interval_ms", self.reopen_interval_ms, "must be between 100 and 600000");
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }

    pub fn reopen_interval(&self) -> Duration {
        Duration::from_millis(self.reopen_interval_ms)
    }
}

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

/// Position of the first `FF <code>` at or after `from`.
fn find_marker(buf: &[u8], from: usize, code: u8) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w[0] == 0xFF && w[1] == code).map(|p| p + from)
}

/// True when no DHT segment precedes the first scan. Walks the header segments
/// (each `FF xx` + 16-bit length) rather than searching bytes, so table data that
/// happens to contain `FF C4` cannot fool it.
fn lacks_huffman_tables(buf: &[u8], sos: usize) -> bool {
    let mut i = 2;
    while i + 4 <= sos {
        if buf[i] != 0xFF {
            return false; // malformed header: let the decoder report it
        }
        match buf[i + 1] {
            0xC4 => return false,
            0xFF => i += 1, // fill byte
            _ => i += 2 + usize::from(u16::from_be_bytes([buf[i + 2], buf[i + 3]])),
        }
    }
    true
}

/// The frame with the standard DHT segment right after SOI.
fn insert_standard_dht(buf: &[u8]) -> Vec<u8> {
    let dht = standard_dht();
    let mut out = Vec::with_capacity(buf.len() + dht.len());
    out.extend_from_slice(&buf[..2]);
    out.extend_from_slice(&dht);
    out.extend_from_slice(&buf[2..]);
    out
}

/// The 420-byte DHT segment with the four tables of ITU T.81 Annex K.3
/// (the ones the OpenDML MJPEG convention implies).
fn standard_dht() -> Vec<u8> {
    const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
    const DC_VALS: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
    const AC_LUMA_VALS: [u8; 162] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71,
        0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72,
        0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37,
        0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59,
        0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3,
        0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
        0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
        0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
    const AC_CHROMA_VALS: [u8; 162] = [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22,
        0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1,
        0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36,
        0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,
        0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a,
        0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
        0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
        0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &DC_LUMA_BITS, &DC_VALS),
        (0x01, &DC_CHROMA_BITS, &DC_VALS),
        (0x10, &AC_LUMA_BITS, &AC_LUMA_VALS),
        (0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALS),
    ];
    // FF C4, 16-bit length (itself included), then per table: class<<4|id, 16 code counts, values.
    let len: usize = 2 + tables.iter().map(|(_, bits, vals)| 1 + bits.len() + vals.len()).sum::<usize>();
    let mut seg = Vec::with_capacity(2 + len);
    seg.extend_from_slice(&[0xFF, 0xC4]);
    seg.extend_from_slice(&(len as u16).to_be_bytes());
    for (class_id, bits, vals) in tables {
        seg.push(class_id);
        seg.extend_from_slice(bits);
        seg.extend_from_slice(vals);
    }
    seg
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

/// What the device is and what it granted; refreshed on every (re)open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub driver: String,
    pub card: String,
    pub bus: String,
    /// Formats the driver lists: fourcc and the driver's description, e.g. ("YUYV", "YUYV 4:2:2").
    pub formats: Vec<(String, String)>,
    pub wire: Wire,
    pub width: u32,
    pub height: u32,
    /// Bytes per line of the granted format (0 for compressed formats).
    pub stride: u32,
}

/// Errors opening and configuring a camera. Each names the device.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error("cannot open camera {device}")]
    Open { device: String, source: std::io::Error },
    #[error(
        "{device} ({card}) is not a streaming video capture device (a UVC metadata node? try another /dev/videoN)"
    )]
    NotCapture { device: String, card: String },
    #[error(
        "camera {device} granted format {granted} {width}x{height}, which leukoscope cannot decode \
         (supported: YUYV, MJPG, RGB3; the driver lists: {listed})"
    )]
    UnsupportedFormat { device: String, granted: String, width: u32, height: u32, listed: String },
    #[error("camera {device}: {what} failed")]
    Io { device: String, what: &'static str, source: std::io::Error },
}

#[cfg(target_os = "linux")]
pub use linux::V4l2Source;

#[cfg(target_os = "linux")]
mod linux {
    use super::{fourcc_str, CameraConfig, CameraError, DeviceInfo, Wire};
    use crate::hw::source::{Frame, FrameSource, SourceError};
    use image::RgbImage;
    use log::{debug, info, warn};
    use std::io;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use v4l::buffer::{Flags as BufFlags, Type};
    use v4l::capability::Flags as CapFlags;
    use v4l::device::Handle;
    use v4l::io::mmap::Stream;
    use v4l::io::traits::CaptureStream;
    use v4l::video::Capture;
    use v4l::{Device, Format, FourCC};

    /// `POLLIN` from poll.h (same value on every Linux architecture); avoids a libc dependency.
    const POLLIN: i16 = 0x0001;

    /// An open, configured device with its mmap stream.
    struct Open {
        // Declaration order is drop order: the stream (buffers, STREAMOFF) must go
        // before the device handle is closed.
        stream: Stream<'static>,
        handle: Arc<Handle>,
        _device: Device,
        info: DeviceInfo,
        buffers: u32,
        /// A dequeue timed out inside `Stream::next`, which had already re-queued
        /// the buffer it held: calling `next` again would queue that buffer twice
        /// (EINVAL). One plain dequeue first restores the invariant.
        resync: bool,
    }

    enum Fail {
        Timeout,
        Bad(String),
        Device(io::Error),
    }

    /// A V4L2 camera as a [`FrameSource`]. See the module documentation.
    pub struct V4l2Source {
        config: CameraConfig,
        origin: String,
        open: Option<Open>,
        /// Last known device description, kept while disconnected for `describe`.
        info: Option<DeviceInfo>,
        last_attempt: Option<Instant>,
        last_error: String,
        seq: u64,
    }

    impl V4l2Source {
        /// Opens and configures the camera now; fails if it cannot (wrong path,
        /// no permission, unsupported format), naming the device.
        pub fn open(config: &CameraConfig) -> Result<V4l2Source, CameraError> {
            let mut source = V4l2Source::new(config);
            source.last_attempt = Some(Instant::now());
            let open = open_device(config)?;
            source.info = Some(open.info.clone());
            source.open = Some(open);
            Ok(source)
        }

        /// A source that opens the camera on the first `next_frame` (returning
        /// `Disconnected` until it is there): for an appliance that boots before
        /// the camera is plugged in.
        pub fn new(config: &CameraConfig) -> V4l2Source {
            V4l2Source {
                config: config.clone(),
                origin: config.device.display().to_string(),
                open: None,
                info: None,
                last_attempt: None,
                last_error: "not opened yet".into(),
                seq: 0,
            }
        }

        /// Driver, card, listed formats and the granted format of the last open.
        pub fn info(&self) -> Option<&DeviceInfo> {
            self.info.as_ref()
        }

        pub fn is_open(&self) -> bool {
            self.open.is_some()
        }

        fn disconnected(&self) -> SourceError {
            SourceError::Disconnected { device: self.origin.clone(), reason: self.last_error.clone() }
        }

        fn drop_device(&mut self, reason: String) {
            warn!("camera {}: {reason}; closing it, will try to reopen", self.origin);
            self.last_error = reason;
            self.last_attempt = Some(Instant::now());
            if let Some(open) = self.open.take() {
                close(open, &self.origin);
            }
        }

        /// Reopens the device if the reopen interval allows, sleeping (never past
        /// `deadline`) until it does.
        fn try_reopen(&mut self, deadline: Instant) -> Result<(), SourceError> {
            if let Some(last) = self.last_attempt {
                let next = last + self.config.reopen_interval();
                let now = Instant::now();
                if now < next {
                    // Sleep instead of returning at once so a caller looping on
                    // `next_frame` does not spin while the camera is away.
                    std::thread::sleep(next.min(deadline).saturating_duration_since(now));
                    if Instant::now() < next {
                        return Err(self.disconnected());
                    }
                }
            }
            self.last_attempt = Some(Instant::now());
            match open_device(&self.config) {
                Ok(open) => {
                    info!("camera {} (re)opened: {}", self.origin, describe_info(&open.info));
                    self.info = Some(open.info.clone());
                    self.open = Some(open);
                    Ok(())
                }
                Err(e) => {
                    debug!("camera {}: reopen failed: {}", self.origin, crate::error_text(&e));
                    self.last_error = crate::error_text(&e);
                    Err(self.disconnected())
                }
            }
        }

        /// Testing aid (used with the vivid driver): sets the control called `name`
        /// (case-insensitive) through a second file handle, as `v4l2-ctl` would.
        /// Button controls are pressed (value ignored). For example vivid's
        /// "Disconnect" makes the device act unplugged, "Percentage of Dropped
        /// Buffers" = 100 stops frames.
        pub fn set_control_by_name(&self, name: &str, value: i64) -> Result<(), CameraError> {
            use v4l::control::{Control, Type as CtrlType, Value};
            let io = |what, source| CameraError::Io { device: self.origin.clone(), what, source };
            let dev = Device::with_path(&self.config.device).map_err(|e| io("open for a control", e))?;
            let controls = dev.query_controls().map_err(|e| io("VIDIOC_QUERYCTRL", e))?;
            let Some(ctrl) = controls.iter().find(|c| c.name.eq_ignore_ascii_case(name)) else {
                let names: Vec<&str> = controls.iter().map(|c| c.name.as_str()).collect();
                let msg = format!("no control {name:?}; the driver has: {}", names.join(", "));
                return Err(io("find control", io::Error::new(io::ErrorKind::NotFound, msg)));
            };
            let value = match ctrl.typ {
                CtrlType::Button => Value::None,
                CtrlType::Boolean => Value::Boolean(value != 0),
                _ => Value::Integer(value),
            };
            dev.set_control(Control { id: ctrl.id, value }).map_err(|e| io("VIDIOC_S_CTRL", e))
        }
    }

    impl Drop for V4l2Source {
        fn drop(&mut self) {
            if let Some(open) = self.open.take() {
                close(open, &self.origin);
            }
        }
    }

    /// Drops stream and device. v4l 0.14 panics in `Drop` when STREAMOFF or
    /// REQBUFS fail with anything but ENODEV; a camera glitch must not take the
    /// appliance down, so contain it.
    fn close(open: Open, origin: &str) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(open)));
        if result.is_err() {
            warn!("camera {origin}: releasing the stream failed (ignored)");
        }
    }

    pub(super) fn describe_info(info: &DeviceInfo) -> String {
        format!("{}x{} {} ({}, {})", info.width, info.height, info.wire.name(), info.driver, info.card)
    }

    impl FrameSource for V4l2Source {
        fn next_frame(&mut self) -> Result<Frame, SourceError> {
            let timeout = self.config.timeout();
            let deadline = Instant::now() + timeout;
            if self.open.is_none() {
                self.try_reopen(deadline)?;
            }
            let Some(open) = self.open.as_mut() else {
                return Err(self.disconnected());
            };
            match capture(open, deadline) {
                Ok(image) => {
                    let frame = Frame { image, seq: self.seq, origin: self.origin.clone() };
                    self.seq += 1;
                    Ok(frame)
                }
                Err(Fail::Timeout) => Err(SourceError::Timeout(timeout)),
                Err(Fail::Bad(reason)) => Err(SourceError::BadFrame { origin: self.origin.clone(), reason }),
                Err(Fail::Device(e)) => {
                    self.drop_device(format!("capture failed: {e}"));
                    Err(self.disconnected())
                }
            }
        }

        fn describe(&self) -> String {
            match (&self.info, self.open.is_some()) {
                (Some(info), true) => format!("{} {}", self.origin, describe_info(info)),
                (Some(info), false) => format!("{} {} (disconnected)", self.origin, describe_info(info)),
                (None, _) => format!("{} (not open)", self.origin),
            }
        }
    }

    fn remaining(deadline: Instant) -> Duration {
        // At least 1 ms: the stream's timeout is whole milliseconds and 0 would
        // make poll return at once.
        deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
    }

    /// One frame: the newest ready one, converted.
    fn capture(open: &mut Open, deadline: Instant) -> Result<RgbImage, Fail> {
        let classify = |e: io::Error| if e.kind() == io::ErrorKind::TimedOut { Fail::Timeout } else { Fail::Device(e) };
        if open.resync {
            open.stream.set_timeout(remaining(deadline));
            CaptureStream::dequeue(&mut open.stream).map_err(classify)?;
            open.resync = false;
        }
        let mut drained = 0;
        loop {
            open.stream.set_timeout(remaining(deadline));
            let (buf, meta) = match CaptureStream::next(&mut open.stream) {
                Ok(x) => x,
                Err(e) => {
                    let fail = classify(e);
                    if matches!(fail, Fail::Timeout) {
                        open.resync = true;
                    }
                    return Err(fail);
                }
            };
            // Drop stale frames: if a newer one is already done, take that instead.
            // (Bounded, so a camera faster than the conversion cannot keep us here.)
            if drained < open.buffers && matches!(open.handle.poll(POLLIN, 0), Ok(n) if n > 0) {
                drained += 1;
                continue;
            }
            if meta.flags.contains(BufFlags::ERROR) {
                return Err(Fail::Bad("driver marked the buffer as corrupt".into()));
            }
            let used = match meta.bytesused as usize {
                0 => buf.len(),
                n => n.min(buf.len()),
            };
            let info = &open.info;
            return info
                .wire
                .convert(&buf[..used], info.width, info.height, info.stride as usize)
                .map_err(|e| Fail::Bad(e.to_string()));
        }
    }

    /// Opens the device, negotiates the format and sets up mmap streaming.
    fn open_device(config: &CameraConfig) -> Result<Open, CameraError> {
        let device = config.device.display().to_string();
        let io = |what, source| CameraError::Io { device: device.clone(), what, source };
        let dev =
            Device::with_path(&config.device).map_err(|source| CameraError::Open { device: device.clone(), source })?;
        let caps = dev.query_caps().map_err(|e| io("VIDIOC_QUERYCAP", e))?;
        if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE | CapFlags::STREAMING) {
            return Err(CameraError::NotCapture { device, card: caps.card });
        }
        let listed = match dev.enum_formats() {
            Ok(list) => list,
            Err(e) => {
                warn!("camera {device}: cannot list formats ({e}); trying anyway");
                Vec::new()
            }
        };
        let formats: Vec<(String, String)> =
            listed.iter().map(|d| (fourcc_str(&d.fourcc.repr), d.description.clone())).collect();
        let listed_fourccs: Vec<[u8; 4]> = listed.iter().map(|d| d.fourcc.repr).collect();

        // Preference first, then the other supported formats; skip those the
        // driver does not list (when it lists any).
        let preferred = Wire::from_fourcc(&config.format.fourcc()).unwrap_or(Wire::Yuyv);
        let mut candidates = vec![preferred];
        candidates.extend([Wire::Mjpg, Wire::Yuyv, Wire::Rgb3].into_iter().filter(|w| *w != preferred));
        let listed_ok: Vec<Wire> =
            candidates.iter().copied().filter(|w| listed_fourccs.contains(&w.fourcc())).collect();
        let to_try = if listed_ok.is_empty() { candidates } else { listed_ok };

        let mut granted = None;
        let mut last_err = None;
        for wire in to_try {
            match dev.set_format(&Format::new(config.width, config.height, FourCC::new(&wire.fourcc()))) {
                Ok(fmt) => {
                    if let Some(w) = Wire::from_fourcc(&fmt.fourcc.repr) {
                        granted = Some((w, fmt));
                        break;
                    }
                    debug!("camera {device}: asked {} got {}", wire.name(), fourcc_str(&fmt.fourcc.repr));
                    last_err = Some(Err(fmt));
                }
                // Some drivers refuse a format with EINVAL instead of substituting one.
                Err(e) => last_err = Some(Ok(e)),
            }
        }
        let (wire, fmt) = match (granted, last_err) {
            (Some(g), _) => g,
            (None, Some(Err(fmt))) => {
                return Err(CameraError::UnsupportedFormat {
                    device,
                    granted: fourcc_str(&fmt.fourcc.repr),
                    width: fmt.width,
                    height: fmt.height,
                    listed: if formats.is_empty() {
                        "nothing".into()
                    } else {
                        formats.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>().join(" ")
                    },
                })
            }
            (None, Some(Ok(e))) => return Err(io("VIDIOC_S_FMT", e)),
            (None, None) => return Err(io("VIDIOC_S_FMT", io::Error::other("no format to try"))),
        };
        if wire != preferred {
            let why = if listed_fourccs.contains(&preferred.fourcc()) { "not granted" } else { "not offered" };
            info!("camera {device}: preferred {} {why} by the driver, using {}", preferred.name(), wire.name());
        }
        if (fmt.width, fmt.height) != (config.width, config.height) {
            info!(
                "camera {device}: asked for {}x{}, driver granted {}x{}",
                config.width, config.height, fmt.width, fmt.height
            );
        }
        let min_stride = match wire {
            Wire::Yuyv => fmt.width * 2,
            Wire::Rgb3 => fmt.width * 3,
            Wire::Mjpg => 0,
        };
        let info = DeviceInfo {
            driver: caps.driver,
            card: caps.card,
            bus: caps.bus,
            formats,
            wire,
            width: fmt.width,
            height: fmt.height,
            stride: fmt.stride.max(min_stride),
        };
        let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, config.buffers)
            .map_err(|e| io("mmap streaming setup (VIDIOC_REQBUFS)", e))?;
        stream.set_timeout(config.timeout());
        let handle = dev.handle();
        Ok(Open { stream, handle, _device: dev, info, buffers: config.buffers, resync: false })
    }
}

#[cfg(test)]
mod tests {
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
    fn test_jpeg() -> Vec<u8> {
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

    /// Removes every DHT segment, as webcams following the AVI1 MJPEG convention do.
    fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut i = 2;
        while jpeg[i + 1] != 0xDA {
            let len = 2 + usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
            if jpeg[i + 1] != 0xC4 {
                out.extend_from_slice(&jpeg[i..i + len]);
            }
            i += len;
        }
        out.extend_from_slice(&jpeg[i..]);
        out
    }

    #[test]
    fn mjpeg_without_huffman_tables_gets_the_standard_ones() {
        let jpeg = test_jpeg();
        let stripped = strip_dht(&jpeg);
        assert!(stripped.len() + 400 < jpeg.len(), "the encoder wrote DHT segments and they were removed");
        // Without the insertion the decoder fails ("No DC table for component Y").
        assert!(image::load_from_memory(&stripped).is_err());
        assert!(lacks_huffman_tables(&stripped, find_marker(&stripped, 2, 0xDA).expect("sos")));
        assert!(!lacks_huffman_tables(&jpeg, find_marker(&jpeg, 2, 0xDA).expect("sos")));
        assert_eq!(standard_dht().len(), 420);
        // The image crate's encoder uses the Annex K tables, so a decoder that
        // falls back to them must give back exactly the original decode.
        assert_eq!(mjpeg_to_rgb(&stripped).expect("decode stripped"), mjpeg_to_rgb(&jpeg).expect("decode"));
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: CameraConfig = toml::from_str("").expect("empty");
        assert_eq!(c, CameraConfig::default());
        assert_eq!(c.device, PathBuf::from("/dev/video0"));
        assert_eq!((c.width, c.height, c.format, c.buffers), (1280, 960, PixelFormat::Mjpeg, 4));
        assert!(c.validate().is_ok());
        let c: CameraConfig = toml::from_str("format = \"yuyv\"\nbuffers = 1").expect("parse");
        assert_eq!(c.format, PixelFormat::Yuyv);
        assert_eq!(c.validate().unwrap_err().0, "camera.buffers");
        assert!(toml::from_str::<CameraConfig>("fromat = \"yuyv\"").unwrap_err().to_string().contains("fromat"));
        assert!(toml::from_str::<CameraConfig>("format = \"h264\"").is_err());
        let text = toml::to_string(&CameraConfig::default()).expect("serialize");
        assert_eq!(toml::from_str::<CameraConfig>(&text).expect("roundtrip"), CameraConfig::default());
    }

    #[test]
    fn wire_formats() {
        assert_eq!(Wire::from_fourcc(b"MJPG"), Some(Wire::Mjpg));
        assert_eq!(Wire::from_fourcc(b"RG10"), None);
        assert_eq!(fourcc_str(&[b'Y', b'U', 0, b'V']), "YU?V");
    }
}
