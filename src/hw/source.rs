//! Where frames come from: a camera (see `camera` for V4L2) or a replay of
//! image files. The appliance loop only sees [`FrameSource`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// One captured frame, already converted to RGB.
#[derive(Debug, Clone)]
pub struct Frame {
    pub image: RgbImage,
    /// Increases by one per frame delivered by this source.
    pub seq: u64,
    /// What it came from, for logs and reports: a file path or a device path.
    pub origin: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Nothing arrived in time; the caller should simply try again.
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    /// The device is absent or failed; `next_frame` keeps trying to reopen it.
    #[error("camera {device} unavailable: {reason}")]
    Disconnected { device: String, reason: String },
    /// A replay has delivered its last frame.
    #[error("no more frames")]
    Exhausted,
    /// A frame arrived but could not be decoded (corrupt MJPEG, short buffer...).
    #[error("bad frame from {origin}: {reason}")]
    BadFrame { origin: String, reason: String },
}

/// A source of frames. Implementations must never block longer than their
/// configured timeout, so the loop stays responsive to buttons.
pub trait FrameSource {
    fn next_frame(&mut self) -> Result<Frame, SourceError>;
    /// Human-readable name, e.g. "/dev/video0 1280x960 YUYV" or "replay of 12 files".
    fn describe(&self) -> String;
    /// After a restart: continue after the frame that came from `origin`. A
    /// camera has nothing to skip; a replay skips what was already counted.
    fn resume_after(&mut self, _origin: &str) {}
}

/// Replays image files as frames, optionally paced to a frame rate. Used by
/// tests, demonstrations and the default configuration when no camera is present.
pub struct ReplaySource {
    paths: Vec<PathBuf>,
    next: usize,
    seq: u64,
    interval: Option<Duration>,
    due: Option<Instant>,
    repeat: bool,
}

impl ReplaySource {
    /// `fps` of `None` or 0 delivers frames as fast as they are asked for.
    pub fn new(paths: Vec<PathBuf>, fps: Option<f32>, repeat: bool) -> ReplaySource {
        let interval = fps.filter(|f| f.is_finite() && *f > 0.0).map(|f| Duration::from_secs_f32(1.0 / f));
        ReplaySource { paths, next: 0, seq: 0, interval, due: None, repeat }
    }

    /// Waits until the next frame is due, so a replay runs at camera speed.
    fn pace(&mut self) {
        if let Some(iv) = self.interval {
            let now = Instant::now();
            if let Some(due) = self.due {
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            self.due = Some(self.due.map_or(now, |d| d.max(now - iv)) + iv);
        }
    }
}

impl FrameSource for ReplaySource {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        if self.next >= self.paths.len() {
            if !self.repeat || self.paths.is_empty() {
                return Err(SourceError::Exhausted);
            }
            self.next = 0;
        }
        self.pace();
        let path = &self.paths[self.next];
        self.next += 1;
        let origin = path.display().to_string();
        let image = crate::input::load_rgb(path)
            .map_err(|e| SourceError::BadFrame { origin: origin.clone(), reason: e.to_string() })?;
        self.seq += 1;
        Ok(Frame { image, seq: self.seq, origin })
    }

    fn describe(&self) -> String {
        format!("replay of {} image files", self.paths.len())
    }

    fn resume_after(&mut self, origin: &str) {
        if let Some(i) = self.paths.iter().position(|p| p.display().to_string() == origin) {
            self.next = i + 1;
        }
    }
}

/// Wraps a source of field images and plays them as a camera on a microscope
/// would see them: while the stage moves to each new field, a few frames that
/// slide in from the side and are motion-blurred, then the still field for a
/// while. Demonstrations and the moving-stage tests use it.
pub struct StageSimulator<S: FrameSource> {
    fields: S,
    /// Frames of stage movement before each field.
    pub moving_frames: u32,
    /// Still frames of each field.
    pub still_frames: u32,
    queue: std::collections::VecDeque<RgbImage>,
    origin: String,
    seq: u64,
    prev: Option<RgbImage>,
}

impl<S: FrameSource> StageSimulator<S> {
    pub fn new(fields: S, moving_frames: u32, still_frames: u32) -> StageSimulator<S> {
        StageSimulator {
            fields,
            moving_frames,
            still_frames,
            queue: Default::default(),
            origin: String::new(),
            seq: 0,
            prev: None,
        }
    }

    fn enqueue(&mut self, field: RgbImage) {
        let n = self.moving_frames;
        for k in 0..n {
            // The new field slides in from the right: shifted by what is left of the way, blurred.
            let left = (n - k) as f32 / (n + 1) as f32;
            let shift = (left * field.width() as f32 * 0.6) as i64;
            let shifted = shift_image(&field, shift, (shift / 3).max(0));
            self.queue.push_back(image::imageops::fast_blur(&shifted, 2.0 + 4.0 * left));
        }
        for k in 0..self.still_frames {
            // Sensor noise: still frames are never bit-identical. Seeded by the
            // frame's place in its field only, so a replay is reproducible.
            self.queue.push_back(add_noise(&field, k as u64));
        }
        self.prev = Some(field);
    }
}

impl<S: FrameSource> FrameSource for StageSimulator<S> {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        if self.queue.is_empty() {
            let f = self.fields.next_frame()?;
            self.origin = f.origin;
            self.enqueue(f.image);
        }
        let image = self.queue.pop_front().ok_or(SourceError::Exhausted)?;
        self.seq += 1;
        Ok(Frame { image, seq: self.seq, origin: self.origin.clone() })
    }

    fn describe(&self) -> String {
        format!("{} with simulated stage movement", self.fields.describe())
    }

    fn resume_after(&mut self, origin: &str) {
        self.queue.clear();
        self.fields.resume_after(origin);
    }
}

/// The image moved left by `dx` and up by `dy` pixels, borders mirrored.
pub fn shift_image(img: &RgbImage, dx: i64, dy: i64) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        *img.get_pixel(
            crate::vision::imageops::reflect(x as i64 + dx, w),
            crate::vision::imageops::reflect(y as i64 + dy, h),
        )
    })
}

/// Deterministic +-2 grey-level noise.
fn add_noise(img: &RgbImage, seed: u64) -> RgbImage {
    let mut out = img.clone();
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    for p in out.pixels_mut() {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let n = ((s >> 33) % 5) as i16 - 2;
        p.0 = p.0.map(|c| (c as i16 + n).clamp(0, 255) as u8);
    }
    out
}

/// Which frame source `run` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The camera if its device exists, else the replay.
    #[default]
    Auto,
    Camera,
    Replay,
}

/// `[source]` in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// "auto" (default): the camera when its device exists, else the replay;
    /// "camera"; or "replay".
    pub kind: SourceKind,
    /// Images or folders of images to replay. Empty (default): the BCCD test
    /// fields of the data folder ($LEUKOSCOPE_DATA, default ../shared/data).
    pub replay: Vec<PathBuf>,
    /// Frames per second of the replay; 0 = as fast as they are analysed. Default 4.
    pub replay_fps: f32,
    /// Play replayed images as a moving stage shows them: sliding, blurred
    /// frames between still fields. Default true.
    pub simulate_stage: bool,
    /// Start the replay again after its last image. Default false: `run` ends.
    pub replay_loop: bool,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Auto,
            replay: Vec::new(),
            replay_fps: 4.0,
            simulate_stage: true,
            replay_loop: false,
        }
    }
}
