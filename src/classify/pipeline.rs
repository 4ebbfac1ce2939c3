//! One field, start to end: detect leukocytes, cut each one out, classify it and
//! decide what it counts as. The appliance loop and `analyze` both call this.

use crate::classify::count::{Call, CallRules};
use crate::classify::model::{Classifier, ModelError, Prediction};
use crate::vision::detect::{detect_at, red_cell_scale, sane_scale, DetectParams, FieldScale, Rejected, ScaleSource};
use crate::vision::imageops::{means_of_blocks, reciprocal, reflect, write_means};
use crate::vision::mask::BBox;
use crate::vision::morphometry::{self, Morphometry};
use crate::vision::preprocess::{prepare, PreprocessSpec};
use image::RgbImage;

/// Everything needed to analyse fields, built once.
pub struct Analyzer {
    pub classifier: Classifier,
    pub rules: CallRules,
    pub detect: DetectParams,
    /// Fixed scale of the camera (µm per pixel); `None` estimates it per field.
    pub um_per_px: Option<f32>,
}

/// Why the analyzer of a configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("loading model card {path}")]
    Model { path: std::path::PathBuf, source: ModelError },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl Analyzer {
    /// The analysis `analyze` and `run` share, as the binary builds it: the
    /// model (`model`, else the config's, else the shipped one) at `precision`
    /// (else the config's), the card's call rules overridden by `[count]`, the
    /// config's detector settings and scale. `config_path` names the config in
    /// errors (`None`: the defaults).
    pub fn from_config(
        config: &crate::config::Config,
        config_path: Option<&std::path::Path>,
        model: Option<std::path::PathBuf>,
        precision: Option<crate::classify::model::Precision>,
    ) -> Result<Analyzer, BuildError> {
        use crate::config::ConfigError;
        let card = model.or(config.model.card.clone()).unwrap_or_else(crate::classify::model::default_card_path);
        let classifier = Classifier::load_precision(&card, precision.unwrap_or(config.model.precision))
            .map_err(|source| BuildError::Model { path: card.clone(), source })?;
        log::debug!("model {} ({}, {})", classifier.card.name, classifier.variant, classifier.model_path.display());
        let path = || config_path.map_or_else(|| "(defaults)".into(), |p| p.to_path_buf());
        let mut rules = CallRules::from_card(&classifier.card);
        if let Some(b) = &config.count.blast_classes {
            if b.is_empty() {
                let why = "must name at least one class (else no cell is ever a blast)";
                let source = crate::config::InvalidValue::new("count.blast_classes", "[]", why);
                return Err(ConfigError::Value { path: path(), source }.into());
            }
            // Each must be a class of the model, or one the card itself calls a
            // blast (older cards list MOB, which their model lacks).
            let card = &classifier.card;
            let known = |c: &String| card.classes.iter().any(|k| &k.code == c) || card.blast_classes.contains(c);
            if let Some(c) = b.iter().find(|c| !known(c)) {
                let codes: Vec<&str> = card.classes.iter().map(|k| k.code.as_str()).collect();
                return Err(ConfigError::UnknownClass {
                    path: path(),
                    class: c.clone(),
                    model: card.name.clone(),
                    classes: codes.join(", "),
                }
                .into());
            }
            rules.blast_classes = b.clone();
        }
        if let Some(c) = config.count.min_confidence {
            rules.min_confidence = c;
        }
        Ok(Analyzer { classifier, rules, detect: config.detect.clone(), um_per_px: config.scale.configured() })
    }
}

/// One detected object and what the model made of it.
#[derive(Debug, Clone)]
pub struct CellResult {
    /// Whole cell, in field pixels.
    pub bbox: BBox,
    pub nucleus: BBox,
    /// Nucleus and cell size in µm (the nucleus as segmented for the model);
    /// `None` when no nucleus was found.
    pub morphometry: Option<Morphometry>,
    pub prediction: Prediction,
    pub call: Call,
    /// Cut by the image border: reported, never counted.
    pub cut_by_border: bool,
}

impl CellResult {
    /// Counted in the differential: every whole cell the detector found.
    pub fn counted(&self) -> bool {
        !self.cut_by_border
    }
}

/// The analysis of one field.
#[derive(Debug, Clone)]
pub struct FieldResult {
    pub width: u32,
    pub height: u32,
    pub cells: Vec<CellResult>,
    pub scale: FieldScale,
    pub rejected: Rejected,
    /// The field's whole red cells ([`crate::vision::detect::FieldDetections::red_cells_px`]).
    pub red_cells_px: Vec<f32>,
}

impl Analyzer {
    /// One field at the configured scale (or its own, when none is configured).
    pub fn analyze(&self, img: &RgbImage) -> Result<FieldResult, ModelError> {
        self.analyze_at(img, self.um_per_px.map(|s| FieldScale::new(s, ScaleSource::Configured)))
    }

    /// One field at a given scale (`None`: the field's own red cells tell).
    pub fn analyze_at(&self, img: &RgbImage, scale: Option<FieldScale>) -> Result<FieldResult, ModelError> {
        // Uneven light first: detection and the cells' crops read optical
        // densities against one glass colour.
        let evened = crate::vision::illumination::evened(img);
        let img = evened.as_ref();
        let found = detect_at(img, &self.detect, scale);
        let spec = &self.classifier.card.input.preprocessing;
        let mut cells = Vec::with_capacity(found.cells.len());
        for d in &found.cells {
            let geometry = RegionGeometry::of(d.bbox, d.nucleus, spec, found.scale.um_per_px);
            let region = cell_region(img, geometry);
            let prepared = prepare(&region, spec, Some(found.background), geometry.um_per_px(found.scale.um_per_px));
            let prediction = self.classifier.predict(&prepared)?;
            // In a field the detector, which measures the nucleus in µm, decides what
            // is a leukocyte: a detected cell the model takes for a platelet is
            // counted as unidentified for review, unless its nucleus is also
            // platelet-sized (then it is listed as not counted, its crop kept
            // for review). No confidence floor: near it, sensor noise flipped
            // a real platelet between the two.
            let nucleus_um = d.nucleus.width().max(d.nucleus.height()) as f32 * found.scale.um_per_px;
            let call = match self.rules.call(&self.classifier.card, &prediction) {
                Call::NotLeukocyte { code } if nucleus_um >= self.detect.platelet_veto_um => {
                    Call::Unidentified { best: code, why: crate::classify::count::Doubt::LowConfidence }
                }
                call => call,
            };
            cells.push(CellResult {
                bbox: d.bbox,
                nucleus: d.nucleus,
                morphometry: morphometry::measure(&region, &prepared),
                prediction,
                call,
                cut_by_border: d.cut_by_border,
            });
        }
        Ok(FieldResult {
            width: img.width(),
            height: img.height(),
            cells,
            scale: found.scale,
            rejected: found.rejected,
            red_cells_px: found.red_cells_px,
        })
    }
}

/// Scale of a single-cell crop (µm per pixel): `given` (configured, or the
/// scanner's), else estimated from the red cells around the cell, else the
/// detector's fallback, with where it came from.
pub fn crop_scale(img: &RgbImage, given: Option<f32>, params: &DetectParams) -> FieldScale {
    match given.filter(|s| s.is_finite() && *s > 0.0) {
        Some(um_per_px) => FieldScale::new(um_per_px, ScaleSource::Configured),
        // The red-cell estimate alone: a crop needs no leukocyte detection.
        None => red_cell_scale(img, params).map_or_else(
            || FieldScale::new(sane_scale(params.fallback_um_per_px), ScaleSource::Fallback),
            |e| FieldScale::new(e.um_per_px, ScaleSource::RedCells),
        ),
    }
}

/// A square around the cell, centred on its nucleus and about twice the cell's
/// size, as the single-cell crops the model was trained on are. Beyond the
/// field border the picture is mirrored, so the nucleus stays centred.
///
/// The region is averaged down by the integer factor in `geometry` (see
/// [`RegionGeometry::of`]).
pub fn cell_region(img: &RgbImage, geometry: RegionGeometry) -> RgbImage {
    let RegionGeometry { x0, y0, f, out } = geometry;
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (out, f) = (out as usize, f as usize);
    // Mirrored source columns, computed once, not per pixel. Rows are summed
    // over the span of columns they cover first (a loop the compiler
    // vectorises), then each block of f columns.
    let cols: Vec<usize> = (0..(out * f) as i64).map(|k| reflect(x0 + k, w) as usize).collect();
    let lo = cols.iter().copied().min().unwrap_or(0);
    let hi = cols.iter().copied().max().unwrap_or(0);
    let raw = img.as_raw();
    let stride = w as usize * 3;
    // Rounded means by a fixed-point reciprocal, as in detection's downsampling.
    let (n, recip) = reciprocal((f * f) as u64);
    let mut buf = vec![0u8; out * out * 3];
    // f <= MAX_REGION_FACTOR rows of bytes: the sums fit u16,
    // twice the lanes per vector instruction of u32.
    let mut sums = vec![0u16; (hi - lo + 1) * 3];
    let contiguous = x0 >= 0 && x0 + (out * f) as i64 <= w;
    for (y, dst) in buf.chunks_exact_mut(out * 3).enumerate() {
        sums.fill(0);
        for dy in 0..f {
            let row = reflect(y0 + (y * f + dy) as i64, h) as usize * stride;
            for (a, &v) in sums.iter_mut().zip(&raw[row + lo * 3..row + (hi + 1) * 3]) {
                *a += v as u16;
            }
        }
        if contiguous {
            // Inside the field left to right: the summed columns are the
            // region's own, f at a time.
            means_of_blocks(dst, &sums, f, (n, recip));
            continue;
        }
        for (d, block) in dst.chunks_exact_mut(3).zip(cols.chunks_exact(f)) {
            let mut acc = [0u32; 3];
            for &sx in block {
                let p = &sums[(sx - lo) * 3..(sx - lo) * 3 + 3];
                acc[0] += p[0] as u32;
                acc[1] += p[1] as u32;
                acc[2] += p[2] as u32;
            }
            write_means(d, acc, (n, recip));
        }
    }
    RgbImage::from_raw(out as u32, out as u32, buf).expect("buffer sized for the region")
}

/// Where [`cell_region`] cuts: the region's top-left corner in the field
/// (may lie outside it), the averaging factor and the output side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionGeometry {
    pub x0: i64,
    pub y0: i64,
    pub f: i64,
    pub out: u32,
}

impl RegionGeometry {
    /// The region of a detected cell in a field at `um_per_px`, averaged down
    /// by the largest factor that leaves the model's window at least
    /// [`MIN_WINDOW_PX_PER_INPUT_PX`] region pixels per input pixel. Every
    /// region pixel is then an area average over field pixels, and preparing
    /// the crop (nucleus search over the region, supersampling of the window)
    /// costs the same at any camera resolution.
    pub fn of(cell: BBox, nucleus: BBox, spec: &PreprocessSpec, um_per_px: f32) -> RegionGeometry {
        let window = spec.window_px(nucleus.width().max(nucleus.height()) as f32, um_per_px);
        let f = (window / (spec.size.max(1) as f32 * MIN_WINDOW_PX_PER_INPUT_PX)).floor();
        // A physical window can be larger than twice a small cell: the region
        // then grows to hold it with a margin, so that the window shows the
        // field around the cell rather than a mirror image.
        let min_side = if spec.is_physical() { (window * 1.25).ceil() as i64 } else { 0 };
        RegionGeometry::with_factor_and_side(cell, nucleus, f as i64, min_side)
    }

    /// The square twice the cell's size around its nucleus, averaged by `f`
    /// (1: field resolution; at most `MAX_REGION_FACTOR`, and never below
    /// 8 region pixels a side).
    pub fn with_factor(cell: BBox, nucleus: BBox, f: i64) -> RegionGeometry {
        RegionGeometry::with_factor_and_side(cell, nucleus, f, 0)
    }

    fn with_factor_and_side(cell: BBox, nucleus: BBox, f: i64, min_side: i64) -> RegionGeometry {
        let (cx, cy) = nucleus.center();
        let side = (2 * cell.width().max(cell.height()) as i64).max(min_side).clamp(8, 4096);
        let f = f.clamp(1, MAX_REGION_FACTOR).min(side / 8);
        RegionGeometry { x0: cx as i64 - side / 2, y0: cy as i64 - side / 2, f, out: (side / f) as u32 }
    }

    /// Scale of the region (µm per region pixel) cut from a field at `field_um_per_px`.
    pub fn um_per_px(&self, field_um_per_px: f32) -> f32 {
        field_um_per_px * self.f as f32
    }
}

/// Region pixels per model input pixel that the nucleus window keeps at
/// least, after averaging the region down.
pub const MIN_WINDOW_PX_PER_INPUT_PX: f32 = 1.5;

/// Largest averaging factor: the row sums of [`cell_region`] (f rows of bytes)
/// stay within u16.
const MAX_REGION_FACTOR: i64 = 64;

/// Crop of a cell for the report, clipped to the field, with a margin.
pub fn report_crop(img: &RgbImage, cell: BBox) -> RgbImage {
    let m = (cell.width().max(cell.height()) / 5).max(2);
    let x0 = cell.x0.saturating_sub(m);
    let y0 = cell.y0.saturating_sub(m);
    let x1 = (cell.x1 + m).min(img.width());
    let y1 = (cell.y1 + m).min(img.height());
    image::imageops::crop_imm(img, x0, y0, x1.saturating_sub(x0).max(1), y1.saturating_sub(y0).max(1)).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward region cut (per-pixel mirroring), kept to check the fast one.
    fn cell_region_reference(img: &RgbImage, geometry: RegionGeometry) -> RgbImage {
        let RegionGeometry { x0, y0, f, out } = geometry;
        let (w, h) = (img.width() as i64, img.height() as i64);
        RgbImage::from_fn(out, out, |x, y| {
            let mut acc = [0u32; 3];
            for dy in 0..f {
                for dx in 0..f {
                    let p = img.get_pixel(reflect(x0 + x as i64 * f + dx, w), reflect(y0 + y as i64 * f + dy, h)).0;
                    for c in 0..3 {
                        acc[c] += p[c] as u32;
                    }
                }
            }
            let n = (f * f) as u32;
            image::Rgb(acc.map(|a| ((a + n / 2) / n) as u8))
        })
    }

    /// A crop's scale is the one `detect` would give the crop as a field (the
    /// red cells' estimate, else the fallback), without detecting leukocytes.
    /// Same pixels as the reference for regions inside the field, across its
    /// corners and edges, at several averaging factors, on a real field.
    #[test]
    fn fast_region_is_identical_on_a_field_of_noise() {
        let field = crate::vision::imageops::testing::noisy_field(640, 480);
        let big = image::imageops::resize(&field, 1280, 960, image::imageops::FilterType::Triangle);
        for img in [&field, &big] {
            let (w, h) = (img.width(), img.height());
            for (x0, y0, side) in
                [(100, 100, 90), (0, 0, 130), (w - 50, h - 70, 200), (w / 2, 3, 400), (10, h / 2, 700)]
            {
                let cell = BBox { x0, y0, x1: (x0 + side).min(w), y1: (y0 + side).min(h) };
                let nucleus = BBox { x0: x0 + 5, y0: y0 + 3, x1: cell.x1.saturating_sub(4).max(x0 + 6), y1: cell.y1 };
                let spec = PreprocessSpec::default();
                let by_rule = RegionGeometry::of(cell, nucleus, &spec, 0.1);
                for g in
                    [1, 2, 3, 7, 64].map(|f| RegionGeometry::with_factor(cell, nucleus, f)).into_iter().chain([by_rule])
                {
                    let fast = cell_region(img, g);
                    let slow = cell_region_reference(img, g);
                    assert_eq!(fast.dimensions(), slow.dimensions());
                    assert!(fast == slow, "{w}x{h}: region {cell:?} averaged by {} differs", g.f);
                }
            }
        }
    }
}
