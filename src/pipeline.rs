//! One field, start to end: detect leukocytes, cut each one out, classify it and
//! decide what it counts as. The appliance loop and `analyze` both call this.

use crate::count::{Call, CallRules};
use crate::detect::{detect, DetectParams, FieldScale, Rejected};
use crate::mask::BBox;
use crate::model::{Classifier, ModelError, Prediction};
use crate::preprocess::{prepare, reflect};
use image::RgbImage;

/// Everything needed to analyse fields, built once.
pub struct Analyzer {
    pub classifier: Classifier,
    pub rules: CallRules,
    pub detect: DetectParams,
    /// Fixed scale of the camera (µm per pixel); `None` estimates it per field.
    pub um_per_px: Option<f32>,
}

/// One detected object and what the model made of it.
#[derive(Debug, Clone)]
pub struct CellResult {
    /// Whole cell, in field pixels.
    pub bbox: BBox,
    pub nucleus: BBox,
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
}

impl Analyzer {
    pub fn analyze(&self, img: &RgbImage) -> Result<FieldResult, ModelError> {
        let found = detect(img, &self.detect, self.um_per_px);
        let spec = &self.classifier.card.input.preprocessing;
        let mut cells = Vec::with_capacity(found.cells.len());
        for d in &found.cells {
            let region = cell_region(img, d.bbox, d.nucleus);
            let prediction = self.classifier.predict(&prepare(&region, spec, Some(found.background)))?;
            // In a field the detector, which measures the nucleus in µm, decides what
            // is a leukocyte: a detected cell the model takes for a platelet is
            // counted as unidentified for review, unless its nucleus is also
            // platelet-sized (then it is listed as not counted, its crop kept
            // for review). No confidence floor: near it, sensor noise flipped
            // a real platelet between the two.
            let nucleus_um = d.nucleus.width().max(d.nucleus.height()) as f32 * found.scale.um_per_px;
            let call = match self.rules.call(&self.classifier.card, &prediction) {
                Call::NotLeukocyte { code } if nucleus_um >= self.detect.platelet_veto_um => {
                    Call::Unidentified { best: code }
                }
                call => call,
            };
            cells.push(CellResult {
                bbox: d.bbox,
                nucleus: d.nucleus,
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
        })
    }
}

/// A square around the cell, centred on its nucleus and about twice the cell's
/// size, as the single-cell crops the model was trained on are. Beyond the
/// field border the picture is mirrored, so the nucleus stays centred.
///
/// Large regions (a high-resolution camera) are averaged down by an integer
/// factor to at most ~2x what the 96 px model input needs: the input is the
/// same up to resampling, and preparing the crop costs a fraction.
pub fn cell_region(img: &RgbImage, cell: BBox, nucleus: BBox) -> RgbImage {
    let (cx, cy) = nucleus.center();
    let side = (2 * cell.width().max(cell.height())).clamp(8, 4096) as i64;
    let f = (side / REGION_SIDE_PER_STEP).max(1);
    let x0 = cx as i64 - side / 2;
    let y0 = cy as i64 - side / 2;
    let (w, h) = (img.width() as i64, img.height() as i64);
    let out = (side / f) as u32;
    RgbImage::from_fn(out, out, |x, y| {
        let mut acc = [0u32; 3];
        for dy in 0..f {
            for dx in 0..f {
                let sx = x0 + x as i64 * f + dx;
                let sy = y0 + y as i64 * f + dy;
                let p = img.get_pixel(reflect(sx, w), reflect(sy, h)).0;
                for c in 0..3 {
                    acc[c] += p[c] as u32;
                }
            }
        }
        let n = (f * f) as u32;
        image::Rgb(acc.map(|a| ((a + n / 2) / n) as u8))
    })
}

/// Region side (px) per downscaling step: a 560 px region (a 1280x960 camera's
/// leukocyte) is halved to 280, where the nucleus window still spans about
/// twice the model's 96 px input; fields at BCCD's 640x480 are not resampled.
const REGION_SIDE_PER_STEP: i64 = 240;

/// Crop of a cell for the report, clipped to the field, with a margin.
pub fn report_crop(img: &RgbImage, cell: BBox) -> RgbImage {
    let m = (cell.width().max(cell.height()) / 5).max(2);
    let x0 = cell.x0.saturating_sub(m);
    let y0 = cell.y0.saturating_sub(m);
    let x1 = (cell.x1 + m).min(img.width());
    let y1 = (cell.y1 + m).min(img.height());
    image::imageops::crop_imm(img, x0, y0, x1.saturating_sub(x0).max(1), y1.saturating_sub(y0).max(1)).to_image()
}
