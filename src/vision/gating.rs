//! Which camera frames to analyse. A field is counted once: only a sharp frame
//! of a still stage is analysed, and not again until the stage has moved to a
//! field that does not mostly overlap the last one counted.
//!
//! All measures work on small grey thumbnails, so gating costs about a
//! millisecond per frame whatever the camera's resolution.

use crate::config::InvalidValue;
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Thresholds of the field gate (`[gate]` in the configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateParams {
    /// Minimum sharpness (high-frequency contrast relative to the field's
    /// overall contrast, see `leukoscope run`'s log) for a frame to be analysed.
    /// Default 0.15; raise it if slightly blurred fields are counted.
    pub min_focus: f32,
    /// Largest change between consecutive frames (mean absolute difference of
    /// contrast-normalised thumbnails) for the stage to count as still. Default 0.2.
    pub max_motion: f32,
    /// Consecutive still frames required before a field is analysed. Default 2.
    pub still_frames: u32,
    /// A frame overlapping the last counted field by at least this share of its
    /// area (under the best shift) is the same field. Default 0.5.
    pub same_field_overlap: f32,
    /// The best-shift difference below which two frames show the same place. Default 0.5.
    pub same_field_max_diff: f32,
}

impl Default for GateParams {
    fn default() -> Self {
        GateParams {
            min_focus: 0.15,
            max_motion: 0.2,
            still_frames: 2,
            same_field_overlap: 0.5,
            same_field_max_diff: 0.5,
        }
    }
}

impl GateParams {
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let finite = [
            ("gate.min_focus", self.min_focus),
            ("gate.max_motion", self.max_motion),
            ("gate.same_field_overlap", self.same_field_overlap),
            ("gate.same_field_max_diff", self.same_field_max_diff),
        ];
        if let Some((key, v)) = finite.iter().find(|(_, v)| !v.is_finite() || *v < 0.0) {
            return Err(InvalidValue::new(key, v, "must be a number, 0 or more"));
        }
        if !(0.05..=1.0).contains(&self.same_field_overlap) {
            return Err(InvalidValue::new(
                "gate.same_field_overlap",
                self.same_field_overlap,
                "must be between 0.05 and 1",
            ));
        }
        Ok(())
    }
}

/// Why a frame was not analysed (shown on the display).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    Blurred,
    Moving,
    SameField,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Analyse,
    Skip(Skip),
}

/// The measures behind a decision, for logs and calibration.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measures {
    pub focus: f32,
    /// Change since the previous frame; `None` for the first frame.
    pub motion: Option<f32>,
    /// Best-shift difference to the most similar recently counted field, with that shift's overlap.
    pub to_last_field: Option<(f32, f32)>,
}

const THUMB_W: u32 = 48;

/// A contrast-normalised grey thumbnail (zero mean, unit deviation).
#[derive(Debug, Clone)]
pub struct Thumb {
    w: usize,
    h: usize,
    px: Vec<f32>,
}

impl Thumb {
    pub fn of(img: &RgbImage) -> Thumb {
        let w = THUMB_W.min(img.width()).max(1);
        let h = ((img.height() as u64 * w as u64) / img.width().max(1) as u64).clamp(1, 4096) as u32;
        let px = box_downscale_grey(img, w, h);
        Thumb { w: w as usize, h: h as usize, px: normalise(px) }
    }

    /// Mean absolute difference at zero shift (stage motion between frames).
    pub fn diff(&self, other: &Thumb) -> f32 {
        if self.w != other.w || self.h != other.h {
            return f32::INFINITY;
        }
        self.px.iter().zip(&other.px).map(|(a, b)| (a - b).abs()).sum::<f32>() / self.px.len() as f32
    }

    /// Smallest mean absolute difference over all shifts that keep at least
    /// `min_overlap` of the area in common; returns it with that shift's overlap.
    pub fn best_shift_diff(&self, other: &Thumb, min_overlap: f32) -> (f32, f32) {
        if self.w != other.w || self.h != other.h {
            return (f32::INFINITY, 0.0);
        }
        let (w, h) = (self.w as i64, self.h as i64);
        let area = (w * h) as f32;
        let mut best = (f32::INFINITY, 0.0);
        for dy in -(h - 1)..h {
            for dx in -(w - 1)..w {
                let (ow, oh) = (w - dx.abs(), h - dy.abs());
                let overlap = (ow * oh) as f32 / area;
                if overlap < min_overlap {
                    continue;
                }
                let mut s = 0.0f32;
                for y in 0..oh {
                    let (ya, yb) = if dy >= 0 { (y + dy, y) } else { (y, y - dy) };
                    let ra = &self.px[(ya * w) as usize..][..w as usize];
                    let rb = &other.px[(yb * w) as usize..][..w as usize];
                    let (xa, xb) = if dx >= 0 { (dx, 0) } else { (0, -dx) };
                    s += ra[xa as usize..][..ow as usize]
                        .iter()
                        .zip(&rb[xb as usize..][..ow as usize])
                        .map(|(a, b)| (a - b).abs())
                        .sum::<f32>();
                }
                let d = s / (ow * oh) as f32;
                if d < best.0 {
                    best = (d, overlap);
                }
            }
        }
        best
    }
}

/// A thumbnail as stored in the session journal (1/32 steps, a couple of KB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedThumb {
    pub w: u16,
    pub h: u16,
    pub q: Vec<i8>,
}

impl Thumb {
    pub fn pack(&self) -> PackedThumb {
        let q = self.px.iter().map(|v| (v * 32.0).round().clamp(-127.0, 127.0) as i8).collect();
        PackedThumb { w: self.w as u16, h: self.h as u16, q }
    }
}

impl PackedThumb {
    /// `None` if the stored sizes do not match the data (a damaged record).
    pub fn unpack(&self) -> Option<Thumb> {
        let (w, h) = (self.w as usize, self.h as usize);
        (w * h == self.q.len() && w > 0).then(|| Thumb { w, h, px: self.q.iter().map(|&v| v as f32 / 32.0).collect() })
    }
}

fn box_downscale_grey(img: &RgbImage, w: u32, h: u32) -> Vec<f32> {
    let (iw, ih) = img.dimensions();
    let mut out = vec![0.0f32; (w * h) as usize];
    let mut n = vec![0u32; (w * h) as usize];
    for (x, y, p) in img.enumerate_pixels() {
        let tx = (x as u64 * w as u64 / iw as u64) as usize;
        let ty = (y as u64 * h as u64 / ih as u64) as usize;
        let i = ty * w as usize + tx;
        out[i] += p.0.iter().map(|&c| c as f32).sum::<f32>() / 3.0;
        n[i] += 1;
    }
    for (o, k) in out.iter_mut().zip(n) {
        *o /= k.max(1) as f32;
    }
    out
}

fn normalise(mut px: Vec<f32>) -> Vec<f32> {
    let n = px.len().max(1) as f32;
    let mean = px.iter().sum::<f32>() / n;
    let sd = (px.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n).sqrt().max(1.0);
    for v in &mut px {
        *v = (*v - mean) / sd;
    }
    px
}

/// Sharpness: the deviation of the Laplacian relative to the deviation of the
/// grey image, at a working width of 320-640 px (an integer downscale, so the
/// measure means the same for a webcam frame and a 1080p camera). Blur removes
/// the Laplacian's energy while leaving the coarse contrast, so the ratio falls;
/// dividing by contrast makes it independent of exposure and stain intensity.
pub fn focus(img: &RgbImage) -> f32 {
    let f = (img.width() / 320).max(1);
    let (w, h) = ((img.width() / f) as usize, (img.height() / f) as usize);
    if w < 3 || h < 3 {
        return 0.0;
    }
    let grey = box_downscale_grey(img, w as u32, h as u32);
    let (mut s, mut s2, mut l, mut l2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut n = 0.0f64;
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let c = grey[y * w + x];
            let lap =
                grey[y * w + x - 1] + grey[y * w + x + 1] + grey[(y - 1) * w + x] + grey[(y + 1) * w + x] - 4.0 * c;
            s += c as f64;
            s2 += (c * c) as f64;
            l += lap as f64;
            l2 += (lap * lap) as f64;
            n += 1.0;
        }
    }
    let sd = ((s2 / n - (s / n).powi(2)).max(0.0)).sqrt();
    let lsd = ((l2 / n - (l / n).powi(2)).max(0.0)).sqrt();
    if sd < 1.0 {
        return 0.0; // a blank frame has nothing to focus on
    }
    (lsd / sd) as f32
}

/// The gate's memory: the previous frame and the last counted field.
#[derive(Debug, Clone, Default)]
pub struct FieldGate {
    pub params: GateParams,
    prev: Option<Thumb>,
    still: u32,
    /// The fields counted most recently, newest last: a field revisited soon
    /// after is recognised, not counted twice.
    recent: std::collections::VecDeque<Thumb>,
    /// The last field analysed and found empty (not counted, not analysed again).
    empty: Option<Thumb>,
}

/// How many counted fields the gate remembers.
pub const REMEMBERED_FIELDS: usize = 16;

impl FieldGate {
    pub fn new(params: GateParams) -> FieldGate {
        FieldGate { params, ..Default::default() }
    }

    /// Decides about one frame. `Analyse` means: analyse it and then call
    /// [`counted`](Self::counted) with the returned thumbnail if it was counted.
    pub fn assess(&mut self, img: &RgbImage) -> (Decision, Measures, Thumb) {
        let thumb = Thumb::of(img);
        let mut m = Measures { focus: focus(img), ..Default::default() };
        m.motion = self.prev.as_ref().map(|p| p.diff(&thumb));
        self.prev = Some(thumb.clone());
        let moving = m.motion.is_none_or(|d| d > self.params.max_motion);
        self.still = if moving { 0 } else { self.still + 1 };
        let decision = if self.still < self.params.still_frames {
            Decision::Skip(Skip::Moving)
        } else if m.focus < self.params.min_focus {
            Decision::Skip(Skip::Blurred)
        } else {
            // The shift search is the costly part: only for frames that could be analysed.
            let overlap = self.params.same_field_overlap;
            m.to_last_field = self
                .recent
                .iter()
                .chain(&self.empty)
                .map(|l| l.best_shift_diff(&thumb, overlap))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            if m.to_last_field.is_some_and(|(d, _)| d <= self.params.same_field_max_diff) {
                Decision::Skip(Skip::SameField)
            } else {
                Decision::Analyse
            }
        };
        (decision, m, thumb)
    }

    /// The field shown in `thumb` has been counted.
    pub fn counted(&mut self, thumb: Thumb) {
        if self.recent.len() == REMEMBERED_FIELDS {
            self.recent.pop_front();
        }
        self.recent.push_back(thumb);
    }

    /// The field shown in `thumb` was analysed and has nothing to count.
    pub fn seen_empty(&mut self, thumb: Thumb) {
        self.empty = Some(thumb);
    }

    /// The last counted field was taken back: it may be counted again.
    pub fn forget_last(&mut self) {
        self.recent.pop_back();
    }

    /// A new session: no field has been counted in it.
    pub fn forget_all(&mut self) {
        self.recent.clear();
        self.empty = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn checker(w: u32, h: u32, cell: u32, off: (u32, u32)) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = if ((x + off.0) / cell + (y + off.1) / cell).is_multiple_of(2) { 200 } else { 60 };
            Rgb([v, v, v])
        })
    }

    #[test]
    fn blank_frame_is_not_sharp() {
        assert_eq!(focus(&RgbImage::from_pixel(640, 480, Rgb([200, 200, 200]))), 0.0);
        assert_eq!(focus(&RgbImage::new(2, 2)), 0.0);
    }

    #[test]
    fn still_frames_are_required_before_analysis() {
        let mut g = FieldGate::new(GateParams { min_focus: 0.0, ..Default::default() });
        let img = checker(320, 240, 7, (0, 0));
        assert_eq!(g.assess(&img).0, Decision::Skip(Skip::Moving));
        assert_eq!(g.assess(&img).0, Decision::Skip(Skip::Moving));
        let (d, _, t) = g.assess(&img);
        assert_eq!(d, Decision::Analyse);
        g.counted(t);
        assert_eq!(g.assess(&img).0, Decision::Skip(Skip::SameField));
        g.forget_last();
        assert_eq!(g.assess(&img).0, Decision::Analyse);
    }

    #[test]
    fn thumbnails_ignore_exposure() {
        let a = checker(320, 240, 9, (0, 0));
        let darker = RgbImage::from_fn(320, 240, |x, y| Rgb(a.get_pixel(x, y).0.map(|c| c / 2)));
        assert!(Thumb::of(&a).diff(&Thumb::of(&darker)) < 0.01);
    }

    #[test]
    fn empty_and_tiny_images_do_not_panic() {
        let mut g = FieldGate::default();
        for (w, h) in [(1, 1), (1, 300), (300, 1), (3, 3)] {
            let _ = g.assess(&RgbImage::new(w, h));
        }
    }
}
