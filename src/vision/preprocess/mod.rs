//! Single-cell crop -> model input tensor. The one place where the classifier's
//! view of a cell is defined: `classify` on dataset crops, `analyze` on cells
//! found in a field and the Python training pipeline (through
//! `leukoscope preprocess`) all go through [`prepare`], so training and serving
//! cannot drift apart.
//!
//! Two normalisations make the model see "which cell" rather than "which lab":
//! - **scale**: the window is centred on the nucleus nearest the centre and
//!   covers a fixed physical size (`window_um` micrometres, method
//!   [`METHOD_PHYSICAL`]), so every camera is resampled to the same µm per input
//!   pixel and a cell's size stays visible to the model (a lymphocyte is small,
//!   a blast is not). The first models ([`METHOD_NUCLEUS`]) sized the window to
//!   `window_factor` times the nucleus extent instead, which threw the size away
//!   and left texture at each camera's pixel pitch;
//! - **stain**: the window is white-balanced against the slide background,
//!   converted to CIELAB and standardised per channel (zero mean, unit
//!   variance), which removes any per-channel affine stain difference in Lab
//!   (Reinhard-style normalisation with the target folded into the model).

use crate::vision::color::Background;
use crate::vision::mask::BBox;
use image::RgbImage;
use serde::{Deserialize, Serialize};

mod nucleus;
mod sample;

pub use nucleus::{find_central_nucleus, nucleus_signal};
use sample::sample_standardised;

/// Parameters of the preprocessing, stored in the model card: a model is only
/// valid with the parameters it was trained with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    /// Name of the algorithm; the Rust side refuses names it does not implement.
    pub method: String,
    /// Output side in pixels (the model input is 3 x size x size, CHW).
    pub size: u32,
    /// [`METHOD_NUCLEUS`]: output window side = `window_factor` x nucleus
    /// extent (longer bbox side).
    pub window_factor: f32,
    /// [`METHOD_PHYSICAL`]: output window side in micrometres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_um: Option<f32>,
    /// Lowest nuclear stain signal (red minus blue optical density) that can count as nucleus.
    pub min_nucleus_od: f32,
    /// Per-channel standard deviation floor (Lab units) for the standardisation.
    pub std_floor: f32,
}

/// Window sized to the nucleus (models up to leukoscope-cnn-v5).
pub const METHOD_NUCLEUS: &str = "nucleus-window-lab-standardised-v1";
/// Window of a fixed physical size: a fixed µm per input pixel.
pub const METHOD_PHYSICAL: &str = "physical-window-lab-standardised-v2";

impl Default for PreprocessSpec {
    /// The physical method: 96 input pixels over 24 µm (0.25 µm per input
    /// pixel), room for the largest blasts and monocytes (~20 µm).
    fn default() -> Self {
        PreprocessSpec {
            method: METHOD_PHYSICAL.to_string(),
            size: 96,
            window_factor: 1.7,
            window_um: Some(24.0),
            min_nucleus_od: 0.1,
            std_floor: 2.0,
        }
    }
}

impl PreprocessSpec {
    /// The spec of the first models (window = 1.7 x nucleus extent).
    pub fn nucleus_window() -> PreprocessSpec {
        PreprocessSpec { method: METHOD_NUCLEUS.to_string(), window_um: None, ..PreprocessSpec::default() }
    }

    /// Why this build cannot use the spec, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        match (self.method.as_str(), self.window_um) {
            (METHOD_NUCLEUS, _) => Ok(()),
            (METHOD_PHYSICAL, Some(um)) if um.is_finite() && um > 0.0 => Ok(()),
            (METHOD_PHYSICAL, _) => Err(format!("method '{METHOD_PHYSICAL}' needs a positive window_um")),
            (m, _) => Err(format!(
                "preprocessing method '{m}' is not implemented (this build knows '{METHOD_PHYSICAL}' and '{METHOD_NUCLEUS}')"
            )),
        }
    }

    /// Whether the window has a fixed physical size (the image's scale matters).
    pub fn is_physical(&self) -> bool {
        self.method == METHOD_PHYSICAL
    }

    /// Window side in pixels of an image at `um_per_px` whose nucleus extent
    /// (longer side, px) is `nucleus_extent`.
    pub fn window_px(&self, nucleus_extent: f32, um_per_px: f32) -> f32 {
        match self.window_um.filter(|_| self.is_physical()) {
            Some(um) if um_per_px.is_finite() && um_per_px > 0.0 => um / um_per_px,
            _ => self.window_factor * nucleus_extent.max(4.0),
        }
    }
}

/// A crop ready for the model, and where it came from.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// 3 x size x size, channel-major (L, a, b standardised).
    pub tensor: Vec<f32>,
    /// Nucleus found in the input, `None` if no stained object was found (the
    /// window then sits at the centre: nothing there to classify).
    pub nucleus: Option<Nucleus>,
    /// Window centre and side in input pixels.
    pub window: (f32, f32, f32),
    /// Scale of the input the window was sized with (µm per input pixel).
    pub um_per_px: f32,
    /// The slide colour the input was white-balanced against.
    pub background: Background,
}

/// The nucleus of the central cell: its box (all lobes) and stained area.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nucleus {
    pub bbox: BBox,
    /// Stained pixels of the lobes in `bbox`.
    pub area_px: u64,
    /// The nuclear signal ([`nucleus_signal`]) above which a pixel counted as
    /// nucleus in this image.
    pub threshold: f32,
}

impl Prepared {
    /// Nucleus area in µm², equivalent diameter in µm.
    pub fn nucleus_um(&self) -> Option<(f32, f32)> {
        self.nucleus.map(|n| {
            let area = n.area_px as f32 * self.um_per_px * self.um_per_px;
            (area, 2.0 * (area / std::f32::consts::PI).sqrt())
        })
    }
}

/// Prepares one roughly centred single-cell image at `um_per_px` µm per
/// pixel. `background` is the slide colour when known from a whole field;
/// `None` estimates it from this image.
pub fn prepare(img: &RgbImage, spec: &PreprocessSpec, background: Option<Background>, um_per_px: f32) -> Prepared {
    let bg = background.unwrap_or_else(|| Background::estimate(img));
    let nucleus = find_central_nucleus(img, &bg, spec.min_nucleus_od);
    let (w, h) = (img.width() as f32, img.height() as f32);
    let window = match nucleus {
        Some(n) => {
            let (cx, cy) = n.bbox.center();
            (cx, cy, spec.window_px(n.bbox.width().max(n.bbox.height()) as f32, um_per_px))
        }
        None if spec.is_physical() => (w / 2.0, h / 2.0, spec.window_px(w.min(h), um_per_px)),
        None => (w / 2.0, h / 2.0, w.min(h)),
    };
    let tensor = sample_standardised(img, &bg, window, spec);
    Prepared { tensor, nucleus, window, um_per_px, background: bg }
}

#[cfg(test)]
mod tests {
    use super::*;

    use image::Rgb;

    /// Synthetic crop: glass, a pink "red cell" off-centre and a purple nucleus.
    pub(super) fn synthetic(w: u32, h: u32, nx: f32, ny: f32, nr: f32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let d = ((x as f32 - nx).powi(2) + (y as f32 - ny).powi(2)).sqrt();
            let r = ((x as f32 - 10.0).powi(2) + (y as f32 - 10.0).powi(2)).sqrt();
            if d < nr {
                Rgb([90, 40, 140])
            } else if r < 8.0 {
                Rgb([220, 150, 160])
            } else {
                Rgb([240, 235, 230])
            }
        })
    }

    #[test]
    fn finds_the_central_nucleus_not_the_red_cell() {
        let img = synthetic(100, 100, 52.0, 48.0, 15.0);
        let bg = Background::estimate(&img);
        let n = find_central_nucleus(&img, &bg, 0.3).expect("nucleus");
        let b = n.bbox;
        let (cx, cy) = b.center();
        assert!((cx - 52.0).abs() <= 1.5 && (cy - 48.0).abs() <= 1.5, "{b:?}");
        assert!((b.width() as i32 - 29).abs() <= 2, "{b:?}");
    }

    #[test]
    fn output_is_standardised_and_scale_invariant() {
        // The nucleus window: twice the magnification, same input. The physical
        // window: twice the magnification at half the µm per pixel, same input.
        for (spec, um_big) in [(PreprocessSpec::nucleus_window(), 0.1), (PreprocessSpec::default(), 0.05)] {
            let small = prepare(&synthetic(100, 100, 50.0, 50.0, 15.0), &spec, None, 0.1);
            let big = prepare(&synthetic(200, 200, 100.0, 100.0, 30.0), &spec, None, um_big);
            assert_standardised_and_alike(&spec, &small, &big);
        }
    }

    /// The physical window keeps the cell's size: the same image at twice the
    /// µm per pixel is a different input (the nucleus window's is the same),
    /// and the nucleus is measured in µm.
    #[test]
    fn the_physical_window_keeps_the_size_of_the_cell() {
        let spec = PreprocessSpec::default();
        let img = synthetic(200, 200, 100.0, 100.0, 20.0);
        let at = |um| prepare(&img, &spec, None, um);
        let (a, b) = (at(0.12), at(0.24));
        let diff = a.tensor.iter().zip(&b.tensor).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.tensor.len() as f32;
        assert!(diff > 0.3, "mean abs difference {diff}");
        assert!((a.window.2 - 200.0).abs() < 1e-3, "{:?}", a.window);
        let (area, diameter) = a.nucleus_um().expect("nucleus");
        assert!((diameter / (40.0 * 0.12) - 1.0).abs() < 0.1, "{area} µm², {diameter} µm");
        let nucleus_window = PreprocessSpec::nucleus_window();
        assert_eq!(
            prepare(&img, &nucleus_window, None, 0.12).tensor,
            prepare(&img, &nucleus_window, None, 0.24).tensor
        );
    }

    fn assert_standardised_and_alike(spec: &PreprocessSpec, small: &Prepared, big: &Prepared) {
        let s2 = (spec.size * spec.size) as usize;
        assert_eq!(small.tensor.len(), 3 * s2);
        assert_eq!(big.tensor.len(), 3 * s2);
        let l = &small.tensor[..s2];
        let mean: f32 = l.iter().sum::<f32>() / s2 as f32;
        assert!(mean.abs() < 1e-3);
        // Same cell at twice the magnification gives nearly the same input.
        let diff: f32 =
            small.tensor.iter().zip(&big.tensor).map(|(a, b)| (a - b).abs()).sum::<f32>() / small.tensor.len() as f32;
        assert!(diff < 0.15, "mean abs difference {diff}");
    }

    #[test]
    fn blank_image_does_not_panic() {
        let img = RgbImage::from_pixel(50, 40, Rgb([200, 200, 200]));
        for spec in [PreprocessSpec::default(), PreprocessSpec::nucleus_window()] {
            let p = prepare(&img, &spec, None, 0.2);
            assert!(p.nucleus.is_none());
            assert!(p.tensor.iter().all(|v| v.is_finite()));
            let tiny = RgbImage::from_pixel(1, 1, Rgb([0, 0, 0]));
            let p = prepare(&tiny, &spec, None, 0.2);
            assert!(p.nucleus.is_none());
            assert!(p.tensor.iter().all(|v| v.is_finite()));
        }
    }
}
