//! `leukoscope camera-check`: the command line of
//! [`leukoscope::hw::camera_check`].

use super::load_config;
use anyhow::Result;
use leukoscope::hw::camera_check::{camera_check, CheckOptions};
use std::path::PathBuf;

/// Open a V4L2 camera as `run` would, list its formats and capture frames.
#[derive(clap::Args)]
pub struct Args {
    /// TOML configuration whose [camera] section to start from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// V4L2 device node; default: the config's (/dev/video0).
    #[arg(long)]
    device: Option<PathBuf>,
    /// Frames to capture.
    #[arg(long, default_value_t = 10)]
    frames: u32,
    /// Pixel format to ask for first (the driver may grant another); default: the config's.
    #[arg(long, value_enum)]
    format: Option<PixelFormat>,
    /// Requested width; default: the config's (1280).
    #[arg(long)]
    width: Option<u32>,
    /// Requested height; default: the config's (960).
    #[arg(long)]
    height: Option<u32>,
    /// Keep trying this many seconds after the camera disconnects (tests reconnection);
    /// 0 = a disconnect fails the check.
    #[arg(long, default_value_t = 0.0)]
    reconnect_wait: f64,
    /// Testing with the vivid driver: press its "Disconnect" control after this many frames.
    #[arg(long, hide = true)]
    vivid_disconnect_after: Option<u32>,
    /// Testing with the vivid driver: after this many frames make it drop every
    /// buffer (so captures time out), and undo that after two timeouts.
    #[arg(long, hide = true)]
    vivid_stall_after: Option<u32>,
}

/// [`leukoscope::hw::camera::PixelFormat`] as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PixelFormat {
    /// Motion JPEG: compressed; most USB 2.0 webcams reach full frame rate at
    /// 1280x960 only this way.
    Mjpeg,
    /// Uncompressed YUV 4:2:2: no compression artefacts, lower frame rate over USB 2.0.
    Yuyv,
}

impl From<PixelFormat> for leukoscope::hw::camera::PixelFormat {
    fn from(f: PixelFormat) -> Self {
        match f {
            PixelFormat::Mjpeg => Self::Mjpeg,
            PixelFormat::Yuyv => Self::Yuyv,
        }
    }
}

impl Args {
    /// What the library's check is asked to do.
    fn options(&self) -> CheckOptions {
        CheckOptions {
            device: self.device.clone(),
            frames: self.frames,
            format: self.format.map(Into::into),
            width: self.width,
            height: self.height,
            reconnect_wait: self.reconnect_wait,
            vivid_disconnect_after: self.vivid_disconnect_after,
            vivid_stall_after: self.vivid_stall_after,
        }
    }
}

pub fn run(a: Args) -> Result<i32> {
    camera_check(&a.options(), &load_config(a.config.as_deref())?.camera)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use leukoscope::hw::camera::{CameraConfig, PixelFormat};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn arguments_override_the_config() {
        let cli =
            Cli::try_parse_from(["x", "--device", "/dev/video2", "--format", "yuyv", "--width", "640"]).expect("parse");
        let options = cli.args.options();
        let c = options.config(&CameraConfig::default());
        assert_eq!(c.device, PathBuf::from("/dev/video2"));
        assert_eq!((c.format, c.width, c.height), (PixelFormat::Yuyv, 640, 960));
        assert_eq!(options.frames, 10);
    }
}
