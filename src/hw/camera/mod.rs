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
//! The pixel conversions ([`yuyv_to_rgb`], [`mjpeg_to_rgb`], [`rgb3_to_rgb`], in
//! `pixel_format`, with the JPEG Huffman-table patch in `mjpeg`) are pure and
//! build everywhere; the device code (`stream`) is Linux-only. Here: the
//! `[camera]` configuration and what the device reports.

mod mjpeg;
mod pixel_format;
#[cfg(target_os = "linux")]
mod stream;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::InvalidValue;
use serde::{Deserialize, Serialize};

pub use pixel_format::{fourcc_str, mjpeg_to_rgb, rgb3_to_rgb, ycbcr_to_rgb, yuyv_to_rgb, ConvertError, Wire};
#[cfg(target_os = "linux")]
pub use stream::V4l2Source;

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
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let bad = |key, value: u64, why: &str| Err(InvalidValue::new(key, value, why));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let c: CameraConfig = toml::from_str("").expect("empty");
        assert_eq!(c, CameraConfig::default());
        assert_eq!(c.device, PathBuf::from("/dev/video0"));
        assert_eq!((c.width, c.height, c.format, c.buffers), (1280, 960, PixelFormat::Mjpeg, 4));
        assert!(c.validate().is_ok());
        let c: CameraConfig = toml::from_str("format = \"yuyv\"\nbuffers = 1").expect("parse");
        assert_eq!(c.format, PixelFormat::Yuyv);
        assert_eq!(c.validate().unwrap_err().key, "camera.buffers");
        assert!(toml::from_str::<CameraConfig>("fromat = \"yuyv\"").unwrap_err().to_string().contains("fromat"));
        assert!(toml::from_str::<CameraConfig>("format = \"h264\"").is_err());
        let text = toml::to_string(&CameraConfig::default()).expect("serialize");
        assert_eq!(toml::from_str::<CameraConfig>(&text).expect("roundtrip"), CameraConfig::default());
    }
}
