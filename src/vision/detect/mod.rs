//! Leukocyte detection in a whole smear field.
//!
//! Nuclei are the one thing that tells a white cell from everything else on
//! the slide: after white balance, nuclear stain absorbs red light strongly
//! and blue light weakly, while red cells (haemoglobin + eosin) absorb blue
//! more than red and eosinophil granules absorb little red. The stain signal
//! `OD_red - blue_weight * OD_blue` is therefore high on nuclei (and
//! platelets) and near zero or negative on everything else. Where a stain or
//! camera renders nuclei magenta, that signal barely moves; a second one
//! catches them: a colour unlike the field's red cells (in any direction)
//! and darker than them.
//!
//! The steps, on box-filtered copies (usually one pass over the full image):
//! 1. background colour and, unless given, the field scale from the red cells
//!    (their median size, from discs packed into the red-cell mask, is 7.5 µm;
//!    a field that cannot tell falls back to a configured scale);
//! 2. nucleus mask at ~2 px/µm: stain signal above a threshold, or colour
//!    unlike the red cells' and darker, opened;
//! 3. components merged into nuclei when closer than a lobe gap (segmented
//!    neutrophils, bilobed eosinophils) unless the union would be larger than
//!    one nucleus can be (two touching leukocytes stay two);
//! 4. nuclei smaller than a physical area are platelets or debris;
//! 5. the cell box is the nucleus box grown by a margin in µm.
//!
//! All thresholds are physical (µm, µm²) or optical densities, so the same
//! parameters serve any camera and magnification once the scale is known.

use crate::vision::color::{od_lut, Background};
use crate::vision::imageops::downsample;
use crate::vision::mask::BBox;
use image::RgbImage;
use serde::{Deserialize, Serialize};

mod nuclei;
mod params;
mod scale;

use nuclei::{find_leukocytes, nucleus_threshold, RedCellStain, UnlikeRedCells};
pub use params::DetectParams;
use scale::{estimate_scale, level0};
pub use scale::{measure_red_cells, pooled_scale, red_cell_scale, RedCellMeasure, POOLED_MIN_CELLS};

/// A field in which no leukocyte can be found, whatever the detector's
/// settings: leukocytes are found by their nuclei's stain colour. Said with a
/// result of 0 cells, so that a camera left in greyscale mode or a covered
/// lens is not read as a sample without leukocytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlankField {
    /// (Almost) one value everywhere: no objects at all.
    Uniform,
    /// No colour: a greyscale camera mode or image shows no stain.
    Greyscale,
}

impl BlankField {
    /// Whether `img` is blank. Percentiles, not extremes, so that a few hot
    /// pixels or JPEG ringing do not make a blank field look like a smear.
    pub fn of(img: &RgbImage) -> Option<BlankField> {
        let n = img.width() as usize * img.height() as usize;
        if n == 0 {
            return Some(BlankField::Uniform);
        }
        let (mut luma, mut chroma) = ([0u32; 256], [0u32; 256]);
        for p in img.pixels() {
            let [r, g, b] = p.0;
            luma[((u32::from(r) * 77 + u32::from(g) * 150 + u32::from(b) * 29) >> 8) as usize] += 1;
            chroma[(r.max(g).max(b) - r.min(g).min(b)) as usize] += 1;
        }
        let at = |hist: &[u32; 256], q: f64| {
            let want = (q * n as f64).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            hist.iter()
                .position(|&c| {
                    seen += u64::from(c);
                    seen >= want
                })
                .unwrap_or(255)
        };
        // A stained smear spans far more than 8 grey levels and 12 levels of colour.
        if at(&luma, 0.99) - at(&luma, 0.01) < 8 {
            Some(BlankField::Uniform)
        } else if at(&chroma, 0.99) < 12 {
            Some(BlankField::Greyscale)
        } else {
            None
        }
    }

    /// Why such a field yields no cells, for people.
    pub fn reason(self) -> &'static str {
        match self {
            BlankField::Uniform => {
                "the image is uniform (no objects at all: lens covered, light off, or an empty area)"
            }
            BlankField::Greyscale => {
                "the image has no colour (greyscale camera mode or file): leukocytes are found by their \
                 nuclei's stain colour, so none can be found"
            }
        }
    }
}

/// Where the field scale came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleSource {
    /// Given by the caller (configuration).
    Configured,
    /// Calibrated over earlier fields of the same session (median of their
    /// red-cell estimates).
    Calibrated,
    /// Estimated from the field's red cells.
    RedCells,
    /// Neither: [`DetectParams::fallback_um_per_px`].
    Fallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FieldScale {
    /// µm per input pixel.
    pub um_per_px: f32,
    pub source: ScaleSource,
    /// The field's own red-cell estimate when the scale was given
    /// (configured or calibrated) and the red cells could tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub red_cells: Option<f32>,
    /// The field's red cells disagree with the given scale by more than
    /// [`DetectParams::scale_disagree_fraction`]: wrong objective?
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disagrees: bool,
}

impl FieldScale {
    /// A scale from `source` with nothing to compare it with.
    pub fn new(um_per_px: f32, source: ScaleSource) -> FieldScale {
        FieldScale { um_per_px, source, red_cells: None, disagrees: false }
    }
}

/// A field's scale as its red cells tell it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RedCellScale {
    /// µm per input pixel.
    pub um_per_px: f32,
    /// Red cells (packed discs) the median was taken over.
    pub cells: usize,
}

/// One leukocyte, in input pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detection {
    /// Whole cell including cytoplasm (nucleus box + margin), clipped to the image.
    pub bbox: BBox,
    /// Nucleus (all lobes).
    pub nucleus: BBox,
    /// The nucleus touches the image border: the cell is incomplete and
    /// should be reported but not counted.
    pub cut_by_border: bool,
}

/// Stained objects that were not taken as leukocytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rejected {
    /// Nucleus-stained objects below the minimum nucleus area: platelets, debris.
    pub small_stained: u32,
    /// Fragments too small to be anything (noise, stain specks).
    pub specks: u32,
}

#[derive(Debug, Clone)]
pub struct FieldDetections {
    /// All leukocytes found, border-cut ones included (flagged).
    pub cells: Vec<Detection>,
    pub scale: FieldScale,
    pub background: Background,
    pub rejected: Rejected,
    /// Inscribed radii (px) of the field's whole red cells, measured with the
    /// scale ([`RedCellMeasure::radii_px`]): a session pools them while it calibrates.
    pub red_cells_px: Vec<f32>,
}

/// Finds the leukocytes of one field. `um_per_px` is the known scale, if any;
/// otherwise it is estimated from the red cells. Total: any image, any size.
pub fn detect(img: &RgbImage, params: &DetectParams, um_per_px: Option<f32>) -> FieldDetections {
    detect_at(img, params, um_per_px.map(|s| FieldScale::new(s, ScaleSource::Configured)))
}

/// [`detect`] with the given scale's source kept (configured or calibrated).
/// A given scale is still checked against the field's red cells (`disagrees`).
pub fn detect_at(img: &RgbImage, params: &DetectParams, given: Option<FieldScale>) -> FieldDetections {
    let configured = given.filter(|s| s.um_per_px.is_finite() && s.um_per_px > 0.0);
    let fallback = FieldScale::new(sane_scale(params.fallback_um_per_px), ScaleSource::Fallback);
    let Some((level0, k0)) = level0(img, params) else {
        // An empty image.
        return FieldDetections {
            cells: Vec::new(),
            scale: configured.unwrap_or(fallback),
            background: Background([255.0; 3]),
            rejected: Rejected::default(),
            red_cells_px: Vec::new(),
        };
    };
    let side = img.width().max(img.height());
    let background = Background::estimate(&level0);
    let luts = Luts::new(&background, params.blue_weight);

    let RedCellMeasure { estimate: own, radii_px: red_cells_px } = estimate_scale(img, &level0, k0, &luts, params);
    let scale = match configured {
        Some(s) => {
            let red_cells = own.map(|e| e.um_per_px);
            let disagrees =
                red_cells.is_some_and(|e| (e / s.um_per_px - 1.0).abs() > params.scale_disagree_fraction.max(0.0));
            FieldScale { red_cells, disagrees, ..s }
        }
        None => own.map_or(fallback, |e| FieldScale::new(e.um_per_px, ScaleSource::RedCells)),
    };

    // Largest integer factor that keeps at least `work_px_per_um`, rounded
    // down to a multiple of k0 when possible so that the full image is read once.
    let px_per_um = 1.0 / scale.um_per_px;
    let ideal = ((px_per_um / params.work_px_per_um.max(0.1)).floor() as u32).clamp(1, side);
    let (k, work) = if ideal >= k0 {
        let m = ideal / k0;
        (k0 * m, downsample(&level0, m))
    } else {
        (ideal, downsample(img, ideal))
    };
    let red_cell_stain = RedCellStain::of(&level0, &luts, params);
    let threshold = match scale.source {
        ScaleSource::Configured | ScaleSource::Calibrated => nucleus_threshold(&level0, &luts, params),
        ScaleSource::RedCells | ScaleSource::Fallback => milli(params.nucleus_od),
    }
    .max(red_cell_stain.as_ref().map_or(i32::MIN, |c| c.floor));
    let unlike = red_cell_stain.as_ref().and_then(|c| UnlikeRedCells::new(c, params));
    let (cells, rejected) =
        find_leukocytes(&work, k, px_per_um, &luts, threshold, unlike.as_ref(), params, img.width(), img.height());
    FieldDetections { cells, scale, background, rejected, red_cells_px }
}

/// A usable µm-per-pixel value (guards against a nonsense configuration).
pub(crate) fn sane_scale(s: f32) -> f32 {
    if s.is_finite() && s > 0.0 {
        s
    } else {
        0.1
    }
}

/// Optical densities as integers (milli-OD), one lookup per channel value.
struct Luts {
    /// Nucleus stain contribution of the red channel: `OD_red`.
    red: [i32; 256],
    /// Subtracted blue contribution: `blue_weight * OD_blue`.
    blue: [i32; 256],
    /// Green optical density, the red-cell signal.
    green: [i32; 256],
    /// Blue optical density, unweighted.
    blue_od: [i32; 256],
}

impl Luts {
    fn new(bg: &Background, blue_weight: f32) -> Luts {
        let milli = |lut: [f32; 256], w: f32| lut.map(|v| (v * w * 1000.0).round() as i32);
        Luts {
            red: milli(od_lut(bg.0[0]), 1.0),
            blue: milli(od_lut(bg.0[2]), blue_weight),
            green: milli(od_lut(bg.0[1]), 1.0),
            blue_od: milli(od_lut(bg.0[2]), 1.0),
        }
    }

    #[inline]
    fn stain(&self, p: [u8; 3]) -> i32 {
        self.red[p[0] as usize] - self.blue[p[2] as usize]
    }
}

fn milli(od: f32) -> i32 {
    (od * 1000.0).round() as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const GLASS: [u8; 3] = [235, 232, 228];
    const RBC: [u8; 3] = [212, 148, 158];
    const PALLOR: [u8; 3] = [222, 172, 180];
    const NUCLEUS: [u8; 3] = [92, 58, 165];
    const CYTOPLASM: [u8; 3] = [214, 196, 222];
    const PLATELET: [u8; 3] = [150, 105, 185];

    /// A synthetic field at 0.1 µm/px: red cells 75 px (7.5 µm) across with
    /// pale centres, painted in order so that later shapes cover earlier ones.
    struct Field {
        img: RgbImage,
    }

    impl Field {
        fn new(w: u32, h: u32) -> Field {
            Field { img: RgbImage::from_pixel(w, h, Rgb(GLASS)) }
        }
        fn disc(&mut self, cx: f32, cy: f32, r: f32, colour: [u8; 3]) {
            let (w, h) = (self.img.width() as f32, self.img.height() as f32);
            let (x0, x1) = ((cx - r).floor().max(0.0) as u32, (cx + r).ceil().min(w) as u32);
            let (y0, y1) = ((cy - r).floor().max(0.0) as u32, (cy + r).ceil().min(h) as u32);
            for y in y0..y1 {
                for x in x0..x1 {
                    if (x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2) <= r * r {
                        self.img.put_pixel(x, y, Rgb(colour));
                    }
                }
            }
        }
        fn red_cell(&mut self, cx: f32, cy: f32) {
            self.red_cell_in(cx, cy, RBC, PALLOR);
        }
        fn red_cell_in(&mut self, cx: f32, cy: f32, body: [u8; 3], pallor: [u8; 3]) {
            self.disc(cx, cy, 37.5, body);
            self.disc(cx, cy, 12.0, pallor);
        }
        /// Red cells on a grid, except where `keep_out` (centre, radius) says.
        fn red_cells(&mut self, keep_out: &[(f32, f32, f32)]) {
            self.red_cells_in(keep_out, RBC, PALLOR);
        }
        /// [`Field::red_cells`] in other colours.
        fn red_cells_in(&mut self, keep_out: &[(f32, f32, f32)], body: [u8; 3], pallor: [u8; 3]) {
            let (w, h) = (self.img.width() as f32, self.img.height() as f32);
            let mut y = 40.0;
            while y < h {
                let mut x = 40.0;
                while x < w {
                    if keep_out.iter().all(|&(kx, ky, kr)| (x - kx).powi(2) + (y - ky).powi(2) > (kr + 40.0).powi(2)) {
                        self.red_cell_in(x, y, body, pallor);
                    }
                    x += 82.0;
                }
                y += 82.0;
            }
        }
    }

    fn uncut(found: &FieldDetections) -> Vec<Detection> {
        found.cells.iter().copied().filter(|c| !c.cut_by_border).collect()
    }

    /// Synthetic round cells have no annotation halo: their extent is their
    /// inscribed diameter.
    fn synthetic_params() -> DetectParams {
        DetectParams { rbc_extent_per_inscribed: 1.0, ..DetectParams::default() }
    }

    #[test]
    fn estimates_the_scale_from_red_cells() {
        let mut f = Field::new(640, 480);
        f.red_cells(&[]);
        let found = detect(&f.img, &synthetic_params(), None);
        assert_eq!(found.scale.source, ScaleSource::RedCells);
        assert!((found.scale.um_per_px / 0.1 - 1.0).abs() < 0.1, "{:?}", found.scale);
        assert!(found.cells.is_empty(), "{:?}", found.cells);
        // The same field at twice the size: half the µm per pixel.
        let big = image::imageops::resize(&f.img, 1280, 960, image::imageops::FilterType::Triangle);
        let found = detect(&big, &synthetic_params(), None);
        assert!((found.scale.um_per_px / 0.05 - 1.0).abs() < 0.1, "{:?}", found.scale);
    }

    #[test]
    fn high_magnification_measures_the_red_cells_cut_by_the_border() {
        // 0.05 µm/px: red cells 150 px across; one whole, five cut by the
        // border with their centres in view. One whole cell is too few.
        let mut f = Field::new(400, 300);
        for (x, y) in [(30.0, 30.0), (200.0, 30.0), (370.0, 30.0), (30.0, 200.0), (200.0, 200.0), (370.0, 200.0)] {
            f.disc(x, y, 75.0, RBC);
            f.disc(x, y, 24.0, PALLOR);
        }
        let m = measure_red_cells(&f.img, &synthetic_params());
        let e = m.estimate.expect("the cut cells tell the scale");
        assert!((e.um_per_px / 0.05 - 1.0).abs() < 0.1, "{e:?}");
        assert!(e.cells >= 4, "{e:?}");
        // Pooled over fields, the cut cells count too, at their whole size.
        assert!(m.radii_px.len() >= 4, "{:?}", m.radii_px);
        assert!(m.radii_px.iter().all(|r| (r / 75.0 - 1.0).abs() < 0.1), "{:?}", m.radii_px);
        // Half a red cell's width in view, centre outside: nothing to measure.
        let mut g = Field::new(300, 300);
        for y in [60.0, 230.0] {
            g.disc(-10.0, y, 75.0, RBC);
        }
        assert_eq!(measure_red_cells(&g.img, &synthetic_params()).estimate, None);
    }

    #[test]
    fn merges_lobes_rejects_platelets_and_keeps_touching_cells_apart() {
        let mut f = Field::new(640, 480);
        // A bilobed nucleus (lobes 1.2 µm apart), two touching leukocytes with
        // round nuclei 3.6 µm apart, a platelet, and red cells around.
        let (a, b, c) = ((170.0, 250.0, 65.0), (420.0, 330.0, 60.0), (540.0, 330.0, 60.0));
        f.red_cells(&[a, b, c, (80.0, 60.0, 20.0)]);
        for (x, y, r) in [a, b, c] {
            f.disc(x, y, r, CYTOPLASM);
        }
        f.disc(140.0, 250.0, 24.0, NUCLEUS);
        f.disc(200.0, 250.0, 24.0, NUCLEUS);
        f.disc(432.0, 330.0, 30.0, NUCLEUS);
        f.disc(528.0, 330.0, 30.0, NUCLEUS);
        f.disc(80.0, 60.0, 12.0, PLATELET);
        let found = detect(&f.img, &synthetic_params(), None);
        let mut cells = uncut(&found);
        cells.sort_by_key(|c| c.nucleus.x0);
        assert_eq!(cells.len(), 3, "{cells:?}");
        // Lobes: one nucleus box spanning both, 10.8 µm = 108 px (the working
        // copy is ~2 px/µm, so boxes are good to a few pixels).
        let n = cells[0].nucleus;
        assert!(n.x0.abs_diff(116) <= 8 && n.x1.abs_diff(224) <= 8, "{n:?}");
        // Box = nucleus + 1.3 µm on each side.
        assert!(cells[0].bbox.x0.abs_diff(n.x0.saturating_sub(13)) <= 3, "{:?}", cells[0]);
        assert!(cells[1].nucleus.x1 < cells[2].nucleus.x0, "{cells:?}");
        assert!(found.rejected.small_stained >= 1, "{:?}", found.rejected);
    }

    /// A pale, magenta-stained nucleus (stain ~0.08, below `nucleus_od`)
    /// is found when the scale is given, not on a field's own estimate.
    #[test]
    fn faint_nuclei_are_found_at_a_given_scale() {
        const FAINT: [u8; 3] = [205, 120, 215];
        let mut f = Field::new(640, 480);
        f.red_cells(&[(320.0, 240.0, 60.0)]);
        f.disc(320.0, 240.0, 60.0, CYTOPLASM);
        f.disc(320.0, 240.0, 32.0, FAINT);
        let params = synthetic_params();
        let given = detect(&f.img, &params, Some(0.1));
        assert_eq!(uncut(&given).len(), 1, "{:?}", given.cells);
        assert!(!given.scale.disagrees, "{:?}", given.scale);
        let own = detect(&f.img, &params, None);
        assert_eq!(own.scale.source, ScaleSource::RedCells);
        assert!(uncut(&own).is_empty(), "{:?}", own.cells);
        // A field with strongly stained nuclei keeps the full threshold.
        let mut g = Field::new(640, 480);
        g.red_cells(&[(320.0, 240.0, 60.0)]);
        g.disc(320.0, 240.0, 30.0, NUCLEUS);
        let b = Background::estimate(&g.img);
        let luts = Luts::new(&b, params.blue_weight);
        assert_eq!(nucleus_threshold(&g.img, &luts, &params), milli(params.nucleus_od));
        let luts = Luts::new(&Background::estimate(&f.img), params.blue_weight);
        assert!(nucleus_threshold(&f.img, &luts, &params) < milli(params.nucleus_od));
    }

    /// One whole cell found, its nucleus the 64 px disc at x 288-352.
    fn assert_one_nucleus_at_the_centre(found: &FieldDetections, given: Option<f32>) {
        let cells = uncut(found);
        assert_eq!(cells.len(), 1, "{given:?}: {:?}", found.cells);
        let n = cells[0].nucleus;
        assert!(n.x0.abs_diff(288) <= 8 && n.x1.abs_diff(352) <= 8, "{given:?}: {n:?}");
    }

    /// Nuclei stained magenta (a soft camera of txl/bcd): the red-minus-blue
    /// signal barely moves, but their colour is unlike the pale pink red
    /// cells' and they are darker. Found with the field's own scale and a
    /// given one; with the second signal off, not at all.
    #[test]
    fn magenta_nuclei_are_found_by_their_colour() {
        const GLASS_TXL: [u8; 3] = [238, 238, 243];
        const PALE_RBC: [u8; 3] = [222, 207, 212];
        const PALE_PALLOR: [u8; 3] = [230, 224, 230];
        const MAGENTA: [u8; 3] = [235, 160, 245];
        let mut f = Field { img: RgbImage::from_pixel(640, 480, Rgb(GLASS_TXL)) };
        f.red_cells_in(&[(320.0, 240.0, 60.0)], PALE_RBC, PALE_PALLOR);
        f.disc(320.0, 240.0, 60.0, PALE_PALLOR);
        f.disc(320.0, 240.0, 32.0, MAGENTA);
        let params = synthetic_params();
        let luts = Luts::new(&Background::estimate(&f.img), params.blue_weight);
        assert!(luts.stain(MAGENTA) < milli(params.nucleus_od_floor), "the main signal must miss it");
        for given in [Some(0.1), None] {
            assert_one_nucleus_at_the_centre(&detect(&f.img, &params, given), given);
            let off = DetectParams { nucleus_unlike_cells_od: 0.0, ..params.clone() };
            assert!(uncut(&detect(&f.img, &off, given)).is_empty(), "{given:?}");
        }
    }

    /// Red cells that take up the nuclear stain (lavender, as in some
    /// CellaVision fields: stain signal above `nucleus_od`) are not nuclei,
    /// at a given scale or the field's own; the leukocyte among them is found
    /// with a box of its own nucleus, not grown over its neighbours.
    #[test]
    fn lavender_red_cells_are_not_nuclei() {
        const LAVENDER: [u8; 3] = [150, 140, 172];
        const LAVENDER_PALLOR: [u8; 3] = [185, 178, 200];
        let mut f = Field::new(640, 480);
        // Red cells 110 px or more from the leukocyte's centre.
        f.red_cells_in(&[(320.0, 240.0, 70.0)], LAVENDER, LAVENDER_PALLOR);
        f.disc(320.0, 240.0, 60.0, CYTOPLASM);
        f.disc(320.0, 240.0, 32.0, NUCLEUS);
        let params = synthetic_params();
        let luts = Luts::new(&Background::estimate(&f.img), params.blue_weight);
        assert!(luts.stain(LAVENDER) > milli(params.nucleus_od), "the red cells must pass the plain threshold");
        for given in [Some(0.1), None] {
            assert_one_nucleus_at_the_centre(&detect(&f.img, &params, given), given);
        }
    }

    #[test]
    fn flags_cells_cut_by_the_border() {
        let mut f = Field::new(640, 480);
        f.red_cells(&[(620.0, 240.0, 60.0)]);
        f.disc(620.0, 240.0, 60.0, CYTOPLASM);
        f.disc(630.0, 240.0, 30.0, NUCLEUS);
        let found = detect(&f.img, &synthetic_params(), Some(0.1));
        assert_eq!(found.scale.source, ScaleSource::Configured);
        assert_eq!(found.cells.len(), 1, "{:?}", found.cells);
        assert!(found.cells[0].cut_by_border);
        assert_eq!(found.cells[0].bbox.x1, 640);
    }

    #[test]
    fn a_field_without_red_cells_falls_back() {
        let mut f = Field::new(640, 480);
        f.disc(320.0, 240.0, 60.0, CYTOPLASM);
        f.disc(320.0, 240.0, 35.0, NUCLEUS);
        let params = DetectParams { fallback_um_per_px: 0.1, ..DetectParams::default() };
        let found = detect(&f.img, &params, None);
        assert_eq!(found.scale, FieldScale::new(0.1, ScaleSource::Fallback));
        assert_eq!(uncut(&found).len(), 1, "{:?}", found.cells);
        // A nonsense configured scale is ignored, not trusted.
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert_eq!(detect(&f.img, &params, Some(bad)).scale.source, ScaleSource::Fallback);
        }
    }

    #[test]
    fn a_leukocyte_filling_the_field_gives_no_wrong_scale() {
        // 24 x 18 µm: one 18 µm leukocyte and bits of red cells at the edges.
        let mut f = Field::new(240, 180);
        for (x, y) in [(10.0, 10.0), (230.0, 20.0), (20.0, 175.0), (235.0, 170.0)] {
            f.red_cell(x, y);
        }
        f.disc(120.0, 90.0, 88.0, CYTOPLASM);
        f.disc(105.0, 85.0, 45.0, NUCLEUS);
        f.disc(150.0, 100.0, 30.0, NUCLEUS);
        let found = detect(&f.img, &synthetic_params(), None);
        let s = found.scale;
        assert!(s.source == ScaleSource::Fallback || (s.um_per_px / 0.1 - 1.0).abs() < 0.15, "{s:?}");
    }

    #[test]
    fn is_total_on_degenerate_images() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut noise = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let noisy = RgbImage::from_fn(333, 251, |_, _| {
            let v = noise();
            Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        });
        let images = [
            RgbImage::new(0, 0),
            RgbImage::new(0, 7),
            RgbImage::from_pixel(1, 1, Rgb([0, 0, 0])),
            RgbImage::from_pixel(1, 1, Rgb([255, 255, 255])),
            RgbImage::from_pixel(1, 999, Rgb([90, 60, 160])),
            RgbImage::from_pixel(640, 480, Rgb([0, 0, 0])),
            RgbImage::from_pixel(640, 480, Rgb([255, 255, 255])),
            RgbImage::from_pixel(64, 48, Rgb([90, 60, 160])),
            noisy,
        ];
        for img in &images {
            for scale in [None, Some(0.1), Some(1e-6), Some(1e6)] {
                let found = detect(img, &DetectParams::default(), scale);
                assert!(found.scale.um_per_px.is_finite() && found.scale.um_per_px > 0.0);
                for c in &found.cells {
                    let b = c.bbox;
                    assert!(b.x0 < b.x1 && b.y0 < b.y1 && b.x1 <= img.width() && b.y1 <= img.height(), "{c:?}");
                }
            }
        }
        // Uniform fields hold nothing.
        for img in &images[5..7] {
            assert!(detect(img, &DetectParams::default(), None).cells.is_empty());
        }
    }

    #[test]
    fn odd_parameters_do_not_break_it() {
        let mut f = Field::new(320, 240);
        f.red_cells(&[(160.0, 120.0, 50.0)]);
        f.disc(160.0, 120.0, 30.0, NUCLEUS);
        let odd = [
            DetectParams { box_margin_um: -50.0, ..DetectParams::default() },
            DetectParams { open_um: 1e9, work_px_per_um: 0.0, scale_side_px: 0, ..DetectParams::default() },
            DetectParams {
                rbc_min_disc_fraction: 2.0,
                scale_min_cells: 0,
                lobe_merge_um: 1e6,
                ..DetectParams::default()
            },
            DetectParams { nucleus_od: f32::NAN, rbc_extent_per_inscribed: 0.0, ..DetectParams::default() },
        ];
        for p in &odd {
            for c in detect(&f.img, p, None).cells {
                assert!(c.bbox.x0 <= c.nucleus.x0 && c.nucleus.x1 <= c.bbox.x1, "{c:?}");
            }
        }
    }

    #[test]
    fn params_round_trip_and_reject_unknown_fields() {
        let p = DetectParams::default();
        let json = serde_json::to_string(&p).expect("serialise");
        assert_eq!(serde_json::from_str::<DetectParams>(&json).expect("parse"), p);
        let partial: DetectParams = serde_json::from_str(r#"{"box_margin_um": 2.0}"#).expect("partial");
        assert_eq!(partial, DetectParams { box_margin_um: 2.0, ..DetectParams::default() });
        assert!(serde_json::from_str::<DetectParams>(r#"{"box_margin": 2.0}"#).is_err());
        assert_eq!(serde_json::to_string(&ScaleSource::RedCells).expect("serialise"), r#""red_cells""#);
    }
}
