//! `leukoscope camera-check`: opens a camera the way the appliance does and
//! reports what the driver offers and grants, then captures a few frames.
//! For installing a new camera, and for the vivid check (tools/vivid-check.sh).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::hw::camera::{CameraConfig, PixelFormat};

/// What `camera-check` is asked to do: the camera settings that override the
/// config's, how many frames to capture and how to treat a disconnect.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// V4L2 device node; default: the config's (/dev/video0).
    pub device: Option<PathBuf>,
    /// Frames to capture.
    pub frames: u32,
    /// Pixel format to ask for first (the driver may grant another); default: the config's.
    pub format: Option<PixelFormat>,
    /// Requested width; default: the config's (1280).
    pub width: Option<u32>,
    /// Requested height; default: the config's (960).
    pub height: Option<u32>,
    /// Keep trying this many seconds after the camera disconnects (tests reconnection);
    /// 0 = a disconnect fails the check.
    pub reconnect_wait: f64,
    /// Testing with the vivid driver: press its "Disconnect" control after this many frames.
    pub vivid_disconnect_after: Option<u32>,
    /// Testing with the vivid driver: after this many frames make it drop every
    /// buffer (so captures time out), and undo that after two timeouts.
    pub vivid_stall_after: Option<u32>,
}

impl CheckOptions {
    /// The camera settings to use: `base` (the config file's) with the options applied.
    pub fn config(&self, base: &CameraConfig) -> CameraConfig {
        let mut c = base.clone();
        if let Some(d) = &self.device {
            c.device = d.clone();
        }
        if let Some(f) = self.format {
            c.format = f;
        }
        c.width = self.width.unwrap_or(c.width);
        c.height = self.height.unwrap_or(c.height);
        c
    }
}

/// Mean R, G, B of an image.
pub fn mean_rgb(img: &image::RgbImage) -> [f64; 3] {
    let mut sum = [0u64; 3];
    for p in img.pixels() {
        for (s, &v) in sum.iter_mut().zip(&p.0) {
            *s += u64::from(v);
        }
    }
    let n = (u64::from(img.width()) * u64::from(img.height())).max(1) as f64;
    sum.map(|s| s as f64 / n)
}

/// Runs the check; prints a report on stdout. Errors (the device cannot be opened,
/// too many timeouts or bad frames, a disconnect that does not recover) fail it.
#[cfg(target_os = "linux")]
pub fn camera_check(args: &CheckOptions, base: &CameraConfig) -> anyhow::Result<()> {
    use crate::hw::camera::V4l2Source;
    use crate::hw::source::{FrameSource, SourceError};
    use anyhow::{bail, Context};

    let config = args.config(base);
    config.validate()?;
    println!("device:    {}", config.device.display());
    println!(
        "requested: {}x{} {:?} ({} buffers, timeout {} ms)",
        config.width, config.height, config.format, config.buffers, config.timeout_ms
    );
    let mut source = V4l2Source::open(&config).context("camera-check")?;
    print_info(&source);

    let (mut good, mut bad, mut timeouts) = (0u32, 0u32, 0u32);
    let mut disconnected_since: Option<Instant> = None;
    let mut disconnects = 0u32;
    // Test aids for vivid (hidden options): the stall lasts two timeouts.
    let mut disconnect_pressed = false;
    let mut stall_since: Option<u32> = None; // timeouts counted when the stall began
    let mut stall_done = false;
    const DROPPED: &str = "Percentage of Dropped Buffers";
    let started = Instant::now();
    while good < args.frames {
        if args.vivid_disconnect_after.is_some_and(|n| !disconnect_pressed && good >= n) {
            disconnect_pressed = true;
            println!("test: pressing vivid's Disconnect control after {good} frames");
            source.set_control_by_name("Disconnect", 1).context("vivid disconnect")?;
        }
        if args.vivid_stall_after.is_some_and(|n| stall_since.is_none() && good >= n) {
            stall_since = Some(timeouts);
            println!("test: vivid drops every buffer from now on");
            source.set_control_by_name(DROPPED, 100).context("vivid stall")?;
        }
        if !stall_done && stall_since.is_some_and(|t0| timeouts >= t0 + 2) {
            stall_done = true;
            println!("test: vivid delivers buffers again");
            source.set_control_by_name(DROPPED, 0).context("vivid unstall")?;
        }
        let t = Instant::now();
        match source.next_frame() {
            Ok(frame) => {
                if let Some(since) = disconnected_since.take() {
                    println!("reconnected after {:.1} s: {}", since.elapsed().as_secs_f64(), source.describe());
                }
                good += 1;
                let [r, g, b] = mean_rgb(&frame.image);
                println!(
                    "frame {:>3}: seq {:>3} {}x{} mean RGB ({r:.1}, {g:.1}, {b:.1}) in {:.1} ms",
                    good,
                    frame.seq,
                    frame.image.width(),
                    frame.image.height(),
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
            Err(SourceError::Timeout(d)) => {
                timeouts += 1;
                println!("timeout: no frame within {d:?}");
                if timeouts > 3 + args.frames / 2 && disconnected_since.is_none() {
                    bail!("{}: {timeouts} timeouts, {good} frames", config.device.display());
                }
            }
            Err(SourceError::BadFrame { reason, .. }) => {
                bad += 1;
                println!("bad frame: {reason}");
                if bad > 3 + args.frames / 2 {
                    bail!("{}: {bad} bad frames, {good} good", config.device.display());
                }
            }
            Err(e @ SourceError::Disconnected { .. }) => {
                let since = *disconnected_since.get_or_insert_with(|| {
                    disconnects += 1;
                    Instant::now()
                });
                println!("disconnected: {e}");
                if since.elapsed() > Duration::from_secs_f64(args.reconnect_wait.max(0.0)) {
                    bail!("{e} (waited {:.1} s)", since.elapsed().as_secs_f64());
                }
            }
            Err(e @ SourceError::Exhausted) => bail!("{e}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ok: {good} frames in {secs:.2} s ({:.1} fps), {bad} bad, {timeouts} timeouts, {disconnects} disconnects",
        f64::from(good) / secs.max(1e-9)
    );
    Ok(())
}

#[cfg(target_os = "linux")]
fn print_info(source: &crate::hw::camera::V4l2Source) {
    use crate::hw::camera::fourcc_str;
    let Some(info) = source.info() else { return };
    println!("driver:    {} / card: {} / bus: {}", info.driver, info.card, info.bus);
    if info.formats.is_empty() {
        println!("formats:   (none listed)");
    } else {
        let fourccs: Vec<&str> = info.formats.iter().map(|(f, _)| f.trim_end()).collect();
        println!("formats:   {} listed: {}", fourccs.len(), fourccs.join(" "));
        for (fourcc, description) in &info.formats {
            if matches!(fourcc.as_str(), "YUYV" | "MJPG" | "RGB3") {
                println!("           {fourcc} = {description} (supported)");
            }
        }
    }
    println!("granted:   {} {}x{} stride {}", fourcc_str(&info.wire.fourcc()), info.width, info.height, info.stride);
}

#[cfg(not(target_os = "linux"))]
pub fn camera_check(_args: &CheckOptions, _base: &CameraConfig) -> anyhow::Result<()> {
    anyhow::bail!("camera-check needs Linux (V4L2)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_override_the_config() {
        let options = CheckOptions {
            device: Some(PathBuf::from("/dev/video2")),
            frames: 10,
            format: Some(PixelFormat::Yuyv),
            width: Some(640),
            height: None,
            reconnect_wait: 0.0,
            vivid_disconnect_after: None,
            vivid_stall_after: None,
        };
        let c = options.config(&CameraConfig::default());
        assert_eq!(c.device, PathBuf::from("/dev/video2"));
        assert_eq!((c.format, c.width, c.height), (PixelFormat::Yuyv, 640, 960));
    }

    #[test]
    fn mean_of_a_two_pixel_image() {
        let img = image::RgbImage::from_raw(2, 1, vec![0, 10, 255, 100, 20, 255]).expect("image");
        assert_eq!(mean_rgb(&img), [50.0, 15.0, 255.0]);
    }
}
