//! Leukocyte detection in a whole smear field.
//!
//! Nuclei are the one thing that tells a white cell from everything else on
//! the slide: after white balance, nuclear stain absorbs red light strongly
//! and blue light weakly, while red cells (haemoglobin + eosin) absorb blue
//! more than red and eosinophil granules absorb little red. The stain signal
//! `OD_red - blue_weight * OD_blue` is therefore high on nuclei (and
//! platelets) and near zero or negative on everything else.
//!
//! The steps, on box-filtered copies (usually one pass over the full image):
//! 1. background colour and, unless given, the field scale from the red cells
//!    (their median size, from discs packed into the red-cell mask, is 7.5 µm;
//!    a field that cannot tell falls back to a configured scale);
//! 2. nucleus mask at ~2 px/µm: stain signal above a threshold, opened;
//! 3. components merged into nuclei when closer than a lobe gap (segmented
//!    neutrophils, bilobed eosinophils) unless the union would be larger than
//!    one nucleus can be (two touching leukocytes stay two);
//! 4. nuclei smaller than a physical area are platelets or debris;
//! 5. the cell box is the nucleus box grown by a margin in µm.
//!
//! All thresholds are physical (µm, µm²) or optical densities, so the same
//! parameters serve any camera and magnification once the scale is known.

use crate::vision::color::{od_lut, Background};
use crate::vision::mask::{BBox, Mask, CHAMFER_UNIT};
use crate::vision::preprocess::otsu;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Every tunable of the detector. Defaults were tuned on BCCD `trainval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectParams {
    /// Scale (µm per input pixel) used when none is given and the field's red
    /// cells cannot tell. Default: BCCD's camera (red cells ~103 px).
    pub fallback_um_per_px: f32,
    /// Median red-cell diameter (µm) that the scale estimate assumes.
    pub rbc_diameter_um: f32,
    /// Ratio of the red cells' size as annotated (bounding box) to twice their
    /// inscribed radius: touching and non-round cells have smaller inscribed
    /// circles than their extent.
    pub rbc_extent_per_inscribed: f32,
    /// The scale is estimated on a copy whose longer side is about this many
    /// pixels (refined at a finer level when red cells come out too small).
    pub scale_side_px: u32,
    /// Fewest red cells (packed discs) that make a scale estimate.
    pub scale_min_cells: usize,
    /// Lowest green optical density that counts as a red cell when the Otsu
    /// threshold is lower (pale fields).
    pub rbc_min_od: f32,
    /// Red-cell threshold as a fraction of the Otsu threshold (glass vs cells):
    /// below 1 keeps more of the pale cell centres.
    pub rbc_otsu_fraction: f32,
    /// Largest red-cell pallor (hole in the red-cell mask) to fill, as a
    /// fraction of the image area.
    pub rbc_max_hole_fraction: f32,
    /// Packed discs keep their centres at least this fraction of the sum of
    /// their radii apart: near 1 a disc never overlaps another, so one
    /// elongated cell yields one disc, not a row of them.
    pub rbc_disc_spacing: f32,
    /// Discs smaller than this fraction of the area-weighted median disc are
    /// gap fillers, not cells, and left out of the median.
    pub rbc_min_disc_fraction: f32,
    /// Resolution of the working copy: at least this many pixels per µm.
    pub work_px_per_um: f32,
    /// Weight of blue optical density subtracted from red optical density in
    /// the nucleus stain signal.
    pub blue_weight: f32,
    /// Stain signal (optical density) above which a pixel is nucleus.
    pub nucleus_od: f32,
    /// Faint fields (soft focus, nuclei stained magenta rather than blue):
    /// the nucleus threshold drops to this fraction of the field's strongest
    /// stain (99.7th percentile of the stain signal), never above
    /// `nucleus_od` nor below `nucleus_od_floor`. Only with a given scale
    /// (configured or calibrated): on soft fields a single field's red cells
    /// can be off several-fold, and a low threshold at a wrong scale finds
    /// leukocytes in red-cell clumps (txl/bcd tune half).
    pub nucleus_od_fraction: f32,
    /// Lowest nucleus threshold a faint field gets.
    pub nucleus_od_floor: f32,
    /// Radius (µm) of the opening that removes specks from the nucleus mask.
    pub open_um: f32,
    /// Fragments of the nucleus mask smaller than this (µm²) are ignored.
    pub min_fragment_um2: f32,
    /// Nucleus fragments closer than this (µm, pixel to pixel) are lobes of
    /// one nucleus.
    pub lobe_merge_um: f32,
    /// A merged nucleus is never longer than this (µm): beyond it, nearby
    /// fragments belong to different (touching) leukocytes.
    pub max_nucleus_um: f32,
    /// Nuclei smaller than this (µm²) are platelets or debris (BCCD platelets
    /// measure up to ~12 µm², small lymphocyte nuclei from ~24 µm²).
    pub min_nucleus_area_um2: f32,
    /// Cell box = nucleus box grown by this much (µm) on every side.
    pub box_margin_um: f32,
    /// A detection whose nucleus is shorter than this (µm, longest side) and
    /// which the classifier takes for a non-leukocyte (a platelet) is not
    /// counted; a larger one is counted as unidentified. Two signals must agree:
    /// a large platelet on a field whose scale came out too coarse passes the
    /// area floor, but not both. Small lymphocyte nuclei measure from ~6.5 µm.
    pub platelet_veto_um: f32,
    /// A field whose own red-cell scale differs from the configured or
    /// calibrated one by more than this fraction is flagged (`scale.disagrees`):
    /// a wrong objective, or a field whose red cells mislead.
    pub scale_disagree_fraction: f32,
}

impl Default for DetectParams {
    fn default() -> Self {
        DetectParams {
            fallback_um_per_px: 0.073,
            rbc_diameter_um: 7.5,
            rbc_extent_per_inscribed: 1.2,
            scale_side_px: 320,
            scale_min_cells: 4,
            rbc_min_od: 0.08,
            rbc_otsu_fraction: 0.7,
            rbc_max_hole_fraction: 0.02,
            rbc_disc_spacing: 1.0,
            rbc_min_disc_fraction: 0.6,
            work_px_per_um: 1.7,
            blue_weight: 1.0,
            nucleus_od: 0.12,
            nucleus_od_fraction: 0.35,
            nucleus_od_floor: 0.04,
            open_um: 0.3,
            min_fragment_um2: 1.0,
            lobe_merge_um: 2.5,
            max_nucleus_um: 18.0,
            min_nucleus_area_um2: 15.0,
            box_margin_um: 1.3,
            platelet_veto_um: 6.0,
            scale_disagree_fraction: 0.25,
        }
    }
}

impl DetectParams {
    /// Every setting a number the detector can work with: finite and not
    /// negative, sizes and scales above zero, the working resolution and
    /// the scale copy bounded (they set how much memory a field takes).
    /// The error names the `[detect]` key.
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        let p = self;
        let positive = [
            ("detect.fallback_um_per_px", p.fallback_um_per_px),
            ("detect.rbc_diameter_um", p.rbc_diameter_um),
            ("detect.rbc_extent_per_inscribed", p.rbc_extent_per_inscribed),
            ("detect.rbc_disc_spacing", p.rbc_disc_spacing),
            ("detect.work_px_per_um", p.work_px_per_um),
            ("detect.max_nucleus_um", p.max_nucleus_um),
        ];
        let not_negative = [
            ("detect.rbc_min_od", p.rbc_min_od),
            ("detect.rbc_otsu_fraction", p.rbc_otsu_fraction),
            ("detect.rbc_max_hole_fraction", p.rbc_max_hole_fraction),
            ("detect.rbc_min_disc_fraction", p.rbc_min_disc_fraction),
            ("detect.blue_weight", p.blue_weight),
            ("detect.nucleus_od", p.nucleus_od),
            ("detect.nucleus_od_fraction", p.nucleus_od_fraction),
            ("detect.nucleus_od_floor", p.nucleus_od_floor),
            ("detect.open_um", p.open_um),
            ("detect.min_fragment_um2", p.min_fragment_um2),
            ("detect.lobe_merge_um", p.lobe_merge_um),
            ("detect.min_nucleus_area_um2", p.min_nucleus_area_um2),
            ("detect.box_margin_um", p.box_margin_um),
            ("detect.platelet_veto_um", p.platelet_veto_um),
            ("detect.scale_disagree_fraction", p.scale_disagree_fraction),
        ];
        if let Some((k, v)) = positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return Err((k, v.to_string(), "must be a positive number"));
        }
        if let Some((k, v)) = not_negative.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Err((k, v.to_string(), "must be a number, 0 or more"));
        }
        if p.fallback_um_per_px >= 10.0 {
            return Err(("detect.fallback_um_per_px", p.fallback_um_per_px.to_string(), "must be below 10"));
        }
        if p.work_px_per_um > 20.0 {
            return Err(("detect.work_px_per_um", p.work_px_per_um.to_string(), "must be at most 20"));
        }
        if !(16..=8192).contains(&p.scale_side_px) {
            return Err(("detect.scale_side_px", p.scale_side_px.to_string(), "must be between 16 and 8192"));
        }
        if p.scale_min_cells == 0 {
            return Err(("detect.scale_min_cells", "0".into(), "must be at least 1"));
        }
        Ok(())
    }
}

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
    if img.width() == 0 || img.height() == 0 {
        let scale = configured.unwrap_or(fallback);
        return FieldDetections {
            cells: Vec::new(),
            scale,
            background: Background([255.0; 3]),
            rejected: Rejected::default(),
        };
    }
    let side = img.width().max(img.height());
    let target = params.scale_side_px.max(1);
    let k0 = ((side + target / 2) / target).max(1);
    let level0 = downsample(img, k0);
    let background = Background::estimate(&level0);
    let luts = Luts::new(&background, params.blue_weight);

    let own = estimate_scale(img, &level0, k0, &luts, params);
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
    let threshold = match scale.source {
        ScaleSource::Configured | ScaleSource::Calibrated => nucleus_threshold(&level0, &luts, params),
        ScaleSource::RedCells | ScaleSource::Fallback => milli(params.nucleus_od),
    };
    let (cells, rejected) = find_leukocytes(&work, k, px_per_um, &luts, threshold, params, img.width(), img.height());
    FieldDetections { cells, scale, background, rejected }
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
}

impl Luts {
    fn new(bg: &Background, blue_weight: f32) -> Luts {
        let milli = |lut: [f32; 256], w: f32| lut.map(|v| (v * w * 1000.0).round() as i32);
        Luts {
            red: milli(od_lut(bg.0[0]), 1.0),
            blue: milli(od_lut(bg.0[2]), blue_weight),
            green: milli(od_lut(bg.0[1]), 1.0),
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

/// Box-filter downsampling by an integer factor (partial blocks at the right
/// and bottom edges average what they have). This is the one pass over the
/// full image, so rows are first summed vertically (a loop the compiler
/// vectorises), then each summed row horizontally.
fn downsample(img: &RgbImage, k: u32) -> Cow<'_, RgbImage> {
    if k <= 1 {
        return Cow::Borrowed(img);
    }
    // Column sums of up to 257 rows of bytes fit in u16: twice the lanes per
    // vector instruction of u32.
    if k <= 257 {
        Cow::Owned(downsample_with::<u16>(img, k as usize))
    } else {
        Cow::Owned(downsample_with::<u32>(img, k as usize))
    }
}

fn downsample_with<T>(img: &RgbImage, k: usize) -> RgbImage
where
    T: Copy + Default + From<u8> + std::ops::AddAssign + Into<u32>,
{
    downsample_rect_with::<T>(img, Rect { x: 0, y: 0, w: img.width() as usize, h: img.height() as usize }, k)
}

/// A rectangle of an image, in pixels.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

/// [`downsample`] of a rectangle inside `img` (clipped to it), read in place
/// rather than copied out first.
fn downsample_rect(img: &RgbImage, rect: Rect, k: u32) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let x = rect.x.min(iw);
    let y = rect.y.min(ih);
    let rect = Rect { x, y, w: rect.w.min(iw - x), h: rect.h.min(ih - y) };
    if k <= 257 {
        downsample_rect_with::<u16>(img, rect, k.max(1) as usize)
    } else {
        downsample_rect_with::<u32>(img, rect, k as usize)
    }
}

fn downsample_rect_with<T>(img: &RgbImage, rect: Rect, k: usize) -> RgbImage
where
    T: Copy + Default + From<u8> + std::ops::AddAssign + Into<u32>,
{
    let Rect { x: rx, y: ry, w, h } = rect;
    let stride = img.width() as usize * 3;
    let (ow, oh) = (w.div_ceil(k), h.div_ceil(k));
    let mut out = vec![0u8; ow * oh * 3];
    let mut column_sums = vec![T::default(); w * 3];
    let src = img.as_raw();
    for (oy, dst) in out.chunks_exact_mut(ow * 3).enumerate() {
        column_sums.fill(T::default());
        let rows = oy * k..((oy + 1) * k).min(h);
        let n_rows = rows.len() as u32;
        // Rounded means by a fixed-point reciprocal: a division per channel
        // would cost more than all the adds.
        let full = reciprocal(n_rows as u64 * k as u64);
        for r in rows {
            let start = (ry + r) * stride + rx * 3;
            for (a, &v) in column_sums.iter_mut().zip(&src[start..start + w * 3]) {
                *a += T::from(v);
            }
        }
        for (ox, d) in dst.chunks_exact_mut(3).enumerate() {
            let (x0, x1) = (ox * k, ((ox + 1) * k).min(w));
            let mut sum = [0u32; 3];
            for px in column_sums[x0 * 3..x1 * 3].chunks_exact(3) {
                sum[0] += px[0].into();
                sum[1] += px[1].into();
                sum[2] += px[2].into();
            }
            let (n, recip) = if x1 - x0 == k { full } else { reciprocal(n_rows as u64 * (x1 - x0) as u64) };
            for c in 0..3 {
                d[c] = (((sum[c] as u64 + n / 2) * recip) >> 32).min(255) as u8;
            }
        }
    }
    // The buffer holds exactly ow * oh * 3 bytes, so this cannot fail.
    RgbImage::from_raw(ow as u32, oh as u32, out).unwrap_or_default()
}

/// `(n, ceil(2^32 / n))` for rounded division of byte sums by n: exact while
/// n < 4096 (blocks up to 64x64), off by at most one beyond.
pub(crate) fn reciprocal(n: u64) -> (u64, u64) {
    let n = n.max(1);
    (n, (1u64 << 32).div_ceil(n))
}

/// The field's nucleus threshold (milli-OD): `nucleus_od`, lowered in faint
/// fields to a fraction of their strongest stain (see
/// [`DetectParams::nucleus_od_fraction`]). Measured on the level-0 copy.
fn nucleus_threshold(level0: &RgbImage, luts: &Luts, params: &DetectParams) -> i32 {
    let hi = milli(params.nucleus_od);
    let lo = milli(params.nucleus_od_floor).min(hi);
    if lo >= hi || level0.width() == 0 {
        return hi;
    }
    // The 99.7th percentile by a histogram over the range that matters.
    let n = (level0.width() * level0.height()) as usize;
    let skip = n - n * 997 / 1000;
    let top_range = (hi * 4).max(1) as usize;
    let mut hist = vec![0u32; top_range + 1];
    for p in level0.pixels() {
        hist[luts.stain(p.0).clamp(0, top_range as i32) as usize] += 1;
    }
    let mut seen = 0usize;
    let mut top = 0i32;
    for (v, &c) in hist.iter().enumerate().rev() {
        seen += c as usize;
        if seen > skip {
            top = v as i32;
            break;
        }
    }
    ((top as f32 * params.nucleus_od_fraction) as i32).clamp(lo, hi)
}

/// Nucleus stain mask of an image.
fn nucleus_mask(img: &RgbImage, luts: &Luts, threshold: i32) -> Mask {
    Mask { width: img.width(), height: img.height(), data: img.pixels().map(|p| luts.stain(p.0) > threshold).collect() }
}

/// µm per input pixel from the red cells, or `None` when there are too few.
///
/// The level-0 copy (longer side ~`scale_side_px`) serves when its red cells
/// are at least `MIN_DIAMETER` px across. Smaller ones (low magnification,
/// large sensor) are measured again at a finer level chosen to make them
/// ~`AIM_DIAMETER` px, on a central crop of the level-0 size: a few dozen
/// cells are enough, and the cost stays that of level 0.
fn estimate_scale(
    img: &RgbImage,
    level0: &RgbImage,
    k0: u32,
    luts: &Luts,
    params: &DetectParams,
) -> Option<RedCellScale> {
    // Below ~24 px the 3x3 morphology and the distance quantisation bias the
    // inscribed radius by several percent.
    const MIN_DIAMETER: f32 = 24.0;
    const AIM_DIAMETER: f32 = 40.0;
    let d0 = rbc_diameter(level0, luts, params);
    let refine_k = match d0 {
        Some((d, _)) if d < MIN_DIAMETER && k0 > 1 => {
            Some(((k0 as f32 * d / AIM_DIAMETER).round() as u32).clamp(1, k0 - 1))
        }
        // Nothing measurable: red cells may be too small at this level.
        None if k0 > 1 => Some(1),
        _ => None,
    };
    let refined = refine_k.and_then(|k| {
        let (cw, ch) = (level0.width() * k, level0.height() * k);
        let (x, y) = ((img.width().saturating_sub(cw)) / 2, (img.height().saturating_sub(ch)) / 2);
        let rect = Rect { x: x as usize, y: y as usize, w: cw as usize, h: ch as usize };
        rbc_diameter(&downsample_rect(img, rect, k), luts, params).map(|(d, n)| (d * k as f32, n))
    });
    let (diameter_px, cells) = refined.or(d0.map(|(d, n)| (d * k0 as f32, n)))?;
    let um_per_px = params.rbc_diameter_um / diameter_px;
    (um_per_px.is_finite() && um_per_px > 0.0).then_some(RedCellScale { um_per_px, cells })
}

/// The field's scale from its red cells alone (what [`detect`] estimates
/// when no scale is given), or `None` when they cannot tell.
pub fn red_cell_scale(img: &RgbImage, params: &DetectParams) -> Option<RedCellScale> {
    if img.width() == 0 || img.height() == 0 {
        return None;
    }
    let side = img.width().max(img.height());
    let target = params.scale_side_px.max(1);
    let k0 = ((side + target / 2) / target).max(1);
    let level0 = downsample(img, k0);
    let luts = Luts::new(&Background::estimate(&level0), params.blue_weight);
    estimate_scale(img, &level0, k0, &luts, params)
}

/// Median red-cell diameter in pixels of `img`, as BCCD annotates it (box
/// size), and the number of cells it is the median of, or `None` when the
/// field cannot tell.
///
/// Red cells are the green-absorbing objects; their pale centres are filled
/// and nuclei removed. Touching cells form one blob, so instead of components
/// the blob is packed with discs: distance-transform maxima, largest first,
/// each kept only where it overlaps no disc already kept. Discs cut by the
/// border or lying in a leukocyte's cytoplasm are dropped; the typical
/// inscribed diameter, times `rbc_extent_per_inscribed`, is the cell size.
fn rbc_diameter(img: &RgbImage, luts: &Luts, params: &DetectParams) -> Option<(f32, usize)> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let green: Vec<i32> = img.pixels().map(|p| luts.green[p.0[1] as usize]).collect();
    let nuclei = nucleus_mask(img, luts, milli(params.nucleus_od)).dilate3x3();
    // Nuclei are the darkest objects: left in, Otsu would split them from
    // everything else instead of red cells from glass in pale fields.
    // Every third pixel is plenty for a threshold.
    let glass_or_rbc = green.iter().zip(&nuclei.data).step_by(3).filter(|(_, &n)| !n).map(|(&g, _)| g as f32 / 1000.0);
    let t_otsu = otsu(glass_or_rbc).unwrap_or(0.0);
    let t = milli((t_otsu * params.rbc_otsu_fraction).max(params.rbc_min_od));
    let cells = Mask { width: img.width(), height: img.height(), data: green.iter().map(|&g| g > t).collect() };
    let filled = fill_pallor(&cells.dilate3x3().erode3x3(), params.rbc_max_hole_fraction);
    let rbc = Mask {
        width: filled.width,
        height: filled.height,
        data: filled.data.iter().zip(&nuclei.data).map(|(&c, &n)| c && !n).collect(),
    }
    .erode3x3()
    .dilate3x3();
    let dt = rbc.distance_transform();
    // Local maxima of the distance transform, at least 2 px deep.
    let mut peaks: Vec<(u16, u32, u32)> = Vec::new();
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let v = dt[y * w + x];
            if v < 2 * CHAMFER_UNIT {
                continue;
            }
            let is_max = [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)]
                .iter()
                .all(|&(dx, dy)| dt[(y as isize + dy) as usize * w + (x as isize + dx) as usize] <= v);
            if is_max {
                peaks.push((v, x as u32, y as u32));
            }
        }
    }
    peaks.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)).then(a.1.cmp(&b.1)));
    let mut discs: Vec<(f32, f32, f32)> = Vec::new();
    for &(v, x, y) in &peaks {
        let r = v as f32 / CHAMFER_UNIT as f32;
        let (fx, fy) = (x as f32, y as f32);
        let apart = |&(dx, dy, dr): &(f32, f32, f32)| {
            let min = params.rbc_disc_spacing * (dr + r);
            (fx - dx).powi(2) + (fy - dy).powi(2) >= min * min
        };
        if discs.iter().all(apart) {
            discs.push((fx, fy, r));
        }
    }
    // Cells touching the border are cut: their inscribed circle says nothing.
    discs.retain(|&(x, y, r)| x >= r && y >= r && x + r < w as f32 && y + r < h as f32);
    let (r_all, _) = cell_radius(discs.iter().map(|d| d.2).collect(), params)?;
    // A leukocyte's cytoplasm and granules stay in the mask around its
    // removed nucleus: discs centred within a quarter nucleus extent of a
    // nucleus at least a third of a red cell's area are not red cells
    // (platelets, smaller, are left alone).
    let min_area = 0.33 * std::f32::consts::PI * r_all * r_all;
    let nucleus_boxes: Vec<BBox> =
        nuclei.component_stats().iter().filter(|c| c.area as f32 >= min_area).map(|c| c.bbox).collect();
    let zones: Vec<(f32, f32, f32, f32)> = nucleus_boxes
        .iter()
        .map(|b| {
            let m = 0.25 * b.width().max(b.height()) as f32;
            (b.x0 as f32 - m, b.y0 as f32 - m, b.x1 as f32 + m, b.y1 as f32 + m)
        })
        .collect();
    let in_zone = |x: f32, y: f32| zones.iter().any(|&(x0, y0, x1, y1)| x >= x0 && x < x1 && y >= y0 && y < y1);
    let radii: Vec<f32> = discs.iter().filter(|&&(x, y, _)| !in_zone(x, y)).map(|d| d.2).collect();
    let (r, n) = cell_radius(radii, params)?;
    let diameter = 2.0 * r * params.rbc_extent_per_inscribed;
    // Self-check: no nucleus is much longer than the longest possible one in
    // red-cell diameters. A field filled by a leukocyte, with only fragments
    // of red cells left, fails here rather than giving a wrong scale.
    let longest = nucleus_boxes.iter().map(|b| b.width().max(b.height())).max().unwrap_or(0) as f32;
    let limit = 1.25 * params.max_nucleus_um / params.rbc_diameter_um * diameter;
    (longest <= limit).then_some((diameter, n))
}

/// Typical radius of the cells among packed discs and how many cell-sized
/// discs it is the median of, `None` if fewer than `scale_min_cells`.
///
/// The small discs that fill the gaps between packed cells are many but
/// cover little: the area-weighted median finds the cell size, then the
/// plain median of the discs near it measures it (a few big discs from
/// clumps of overlapping cells would pull an area-weighted figure up).
fn cell_radius(mut radii: Vec<f32>, params: &DetectParams) -> Option<(f32, usize)> {
    radii.sort_by(f32::total_cmp);
    let total: f32 = radii.iter().map(|r| r * r).sum();
    let mut acc = 0.0;
    let weighted = *radii.iter().find(|&&r| {
        acc += r * r;
        acc >= total / 2.0
    })?;
    let cells: Vec<f32> = radii.into_iter().filter(|&r| r >= params.rbc_min_disc_fraction * weighted).collect();
    if cells.len() < params.scale_min_cells {
        return None;
    }
    cells.get(cells.len() / 2).map(|&r| (r, cells.len()))
}

/// Fills the pale centres of red cells: holes of the cell mask that are round
/// enough (area at least 55% of their box; the glass between touching round
/// cells is a concave triangle) and small (at most `max_fraction` of the image,
/// so that glass enclosed by a ring of cells stays glass).
fn fill_pallor(cells: &Mask, max_fraction: f32) -> Mask {
    let filled = cells.fill_holes();
    let holes = Mask {
        width: cells.width,
        height: cells.height,
        data: filled.data.iter().zip(&cells.data).map(|(&f, &c)| f && !c).collect(),
    };
    let labels = holes.components();
    let max_area = max_fraction as f64 * cells.data.len() as f64;
    let round_and_small: Vec<bool> = labels
        .components
        .iter()
        .map(|c| (c.area as f64) <= max_area && c.area as f64 >= 0.55 * c.bbox.area() as f64)
        .collect();
    let data =
        cells.data.iter().zip(&labels.labels).map(|(&c, &l)| c || (l > 0 && round_and_small[l as usize - 1])).collect();
    Mask { width: cells.width, height: cells.height, data }
}

/// One nucleus fragment of the working mask.
struct Fragment {
    area: u64,
    bbox: BBox,
    /// Boundary pixels, for pixel-to-pixel gaps between fragments.
    edge: Vec<(i32, i32)>,
}

/// Steps 2-5 on the working copy (`k` input pixels per working pixel);
/// boxes come back in input pixels, clipped to `full_w` x `full_h`.
#[allow(clippy::too_many_arguments)]
fn find_leukocytes(
    work: &RgbImage,
    k: u32,
    px_per_um: f32,
    luts: &Luts,
    threshold: i32,
    params: &DetectParams,
    full_w: u32,
    full_h: u32,
) -> (Vec<Detection>, Rejected) {
    // Pixels per µm of the working copy.
    let ppu = px_per_um / k as f32;
    let um2 = |a: u64| a as f32 / (ppu * ppu);
    let mask = open(nucleus_mask(work, luts, threshold), (params.open_um * ppu).round() as u32);
    let labels = mask.components();
    let mut rejected = Rejected::default();
    let (w, h) = (labels.width as usize, labels.height as usize);
    let mut frags: Vec<Fragment> = Vec::new();
    let mut id_of = vec![usize::MAX; labels.components.len()];
    for (i, c) in labels.components.iter().enumerate() {
        if um2(c.area) < params.min_fragment_um2 {
            rejected.specks += 1;
        } else {
            id_of[i] = frags.len();
            frags.push(Fragment { area: c.area, bbox: c.bbox, edge: Vec::new() });
        }
    }
    for y in 0..h {
        for x in 0..w {
            let l = labels.labels[y * w + x];
            if l == 0 || id_of[l as usize - 1] == usize::MAX {
                continue;
            }
            let same = |xx: usize, yy: usize| labels.labels[yy * w + xx] == l;
            let edge = x == 0
                || y == 0
                || x + 1 == w
                || y + 1 == h
                || !(same(x - 1, y) && same(x + 1, y) && same(x, y - 1) && same(x, y + 1));
            if edge {
                frags[id_of[l as usize - 1]].edge.push((x as i32, y as i32));
            }
        }
    }

    // Candidate lobe pairs, closest first.
    let merge_px = params.lobe_merge_um * ppu;
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for i in 0..frags.len() {
        for j in i + 1..frags.len() {
            if frags[i].bbox.gap(&frags[j].bbox) as f32 > merge_px + 1.0 {
                continue;
            }
            let g = edge_gap(&frags[i].edge, &frags[j].edge);
            if g <= merge_px {
                pairs.push((g, i, j));
            }
        }
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut group: Vec<usize> = (0..frags.len()).collect();
    let mut gbox: Vec<BBox> = frags.iter().map(|f| f.bbox).collect();
    let mut garea: Vec<u64> = frags.iter().map(|f| f.area).collect();
    fn root(group: &mut [usize], mut a: usize) -> usize {
        while group[a] != a {
            group[a] = group[group[a]];
            a = group[a];
        }
        a
    }
    let max_px = params.max_nucleus_um * ppu;
    for (_, i, j) in pairs {
        let (a, b) = (root(&mut group, i), root(&mut group, j));
        if a == b {
            continue;
        }
        let u = gbox[a].union(&gbox[b]);
        if u.width().max(u.height()) as f32 > max_px {
            continue;
        }
        group[b] = a;
        gbox[a] = u;
        garea[a] += garea[b];
    }

    // Never inside the nucleus, whatever the configuration says.
    let margin = (params.box_margin_um * px_per_um).max(0.0);
    let mut cells = Vec::new();
    for i in 0..frags.len() {
        if root(&mut group, i) != i {
            continue;
        }
        if um2(garea[i]) < params.min_nucleus_area_um2 {
            rejected.small_stained += 1;
            continue;
        }
        let b = gbox[i];
        let cut_by_border = b.x0 == 0 || b.y0 == 0 || b.x1 as usize >= w || b.y1 as usize >= h;
        let nucleus = BBox { x0: b.x0 * k, y0: b.y0 * k, x1: (b.x1 * k).min(full_w), y1: (b.y1 * k).min(full_h) };
        let grow = |v: u32, d: f32, hi: u32| (v as f32 + d).round().clamp(0.0, hi as f32) as u32;
        let bbox = BBox {
            x0: grow(nucleus.x0, -margin, full_w),
            y0: grow(nucleus.y0, -margin, full_h),
            x1: grow(nucleus.x1, margin, full_w),
            y1: grow(nucleus.y1, margin, full_h),
        };
        cells.push(Detection { bbox, nucleus, cut_by_border });
    }
    (cells, rejected)
}

/// Opening by a (2r+1)-square: by repeated 3x3 steps for the usual radius of
/// one or two pixels, by the general running-window version beyond.
fn open(mask: Mask, r: u32) -> Mask {
    if r > 2 {
        return mask.open(r.min(mask.width.max(mask.height)));
    }
    let mut m = mask;
    for _ in 0..r {
        m = m.erode3x3();
    }
    for _ in 0..r {
        m = m.dilate3x3();
    }
    m
}

/// Smallest Euclidean distance between two pixel sets, minus one: the number
/// of background pixels between them (0 when they touch).
fn edge_gap(a: &[(i32, i32)], b: &[(i32, i32)]) -> f32 {
    let mut best = i32::MAX;
    for &(ax, ay) in a {
        for &(bx, by) in b {
            best = best.min((ax - bx).pow(2) + (ay - by).pow(2));
        }
    }
    ((best as f32).sqrt() - 1.0).max(0.0)
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
            self.disc(cx, cy, 37.5, RBC);
            self.disc(cx, cy, 12.0, PALLOR);
        }
        /// Red cells on a grid, except where `keep_out` (centre, radius) says.
        fn red_cells(&mut self, keep_out: &[(f32, f32, f32)]) {
            let (w, h) = (self.img.width() as f32, self.img.height() as f32);
            let mut y = 40.0;
            while y < h {
                let mut x = 40.0;
                while x < w {
                    if keep_out.iter().all(|&(kx, ky, kr)| (x - kx).powi(2) + (y - ky).powi(2) > (kr + 40.0).powi(2)) {
                        self.red_cell(x, y);
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
    fn downsampling_averages_blocks_including_partial_ones() {
        let img = RgbImage::from_fn(5, 3, |x, y| Rgb([(10 * x + y) as u8, 100, 255]));
        let d = downsample(&img, 2);
        assert_eq!((d.width(), d.height()), (3, 2));
        // Block (0,0): x 0..2, y 0..2 -> (0 + 1 + 10 + 11) / 4 = 5.5 -> 6.
        assert_eq!(d.get_pixel(0, 0).0, [6, 100, 255]);
        // Right column is one pixel wide: (40 + 41) / 2 = 40.5 -> 41.
        assert_eq!(d.get_pixel(2, 0).0, [41, 100, 255]);
        // Bottom-right corner is a single pixel.
        assert_eq!(d.get_pixel(2, 1).0, [42, 100, 255]);
        assert!(matches!(downsample(&img, 1), Cow::Borrowed(_)));
        // Worst case for the u16 sums: 257 rows of 255.
        let white = RgbImage::from_pixel(300, 260, Rgb([255, 255, 255]));
        assert!(downsample(&white, 257).pixels().all(|p| p.0 == [255; 3]));
    }

    #[test]
    fn blank_fields_are_told_from_smears() {
        let dir = crate::input::data_dir().join("bccd/JPEGImages");
        let mut n = 0;
        for i in (0..400).step_by(10) {
            let Ok(field) = crate::input::load_rgb(&dir.join(format!("BloodImage_{i:05}.jpg"))) else { continue };
            n += 1;
            assert_eq!(BlankField::of(&field), None, "BloodImage_{i:05} is a smear");
            let grey = image::DynamicImage::ImageRgb8(field.clone()).grayscale().to_rgb8();
            assert_eq!(BlankField::of(&grey), Some(BlankField::Greyscale), "BloodImage_{i:05} in grey");
            // The field's mean colour, with sensor noise of a few levels.
            let mean =
                [0, 1, 2].map(|c| (field.pixels().map(|p| p[c] as u64).sum::<u64>() * 3 / field.len() as u64) as u8);
            let flat = RgbImage::from_fn(field.width(), field.height(), |x, y| {
                Rgb(mean.map(|v| v.saturating_add(((x * 7 + y * 13) % 4) as u8)))
            });
            assert_eq!(BlankField::of(&flat), Some(BlankField::Uniform), "{mean:?}");
        }
        assert!(n >= 30, "BCCD fields missing: set LEUKOSCOPE_DATA");
    }

    #[test]
    fn narrow_and_wide_sums_downsample_a_real_field_alike() {
        let path = crate::input::data_dir().join("bccd/JPEGImages/BloodImage_00001.jpg");
        let field = crate::input::load_rgb(&path).unwrap_or_else(|e| panic!("{e}: set LEUKOSCOPE_DATA"));
        for k in [2, 3, 4, 7, 16] {
            assert!(downsample_with::<u16>(&field, k) == downsample_with::<u32>(&field, k), "k = {k}");
        }
    }

    /// Downsampling a rectangle in place gives the pixels of downsampling a
    /// copy of it (what scale estimation did before), clipped at the border.
    #[test]
    fn a_rectangle_downsamples_as_its_copy_does() {
        let path = crate::input::data_dir().join("bccd/JPEGImages/BloodImage_00001.jpg");
        let field = crate::input::load_rgb(&path).unwrap_or_else(|e| panic!("{e}: set LEUKOSCOPE_DATA"));
        for (x, y, w, h) in [(0, 0, 640, 480), (160, 120, 320, 240), (17, 33, 101, 57), (600, 400, 100, 100)] {
            let copy = image::imageops::crop_imm(&field, x, y, w, h).to_image();
            for k in [1, 2, 3, 5] {
                let rect = Rect { x: x as usize, y: y as usize, w: w as usize, h: h as usize };
                let expected = downsample(&copy, k).into_owned();
                assert!(downsample_rect(&field, rect, k) == expected, "rect {x},{y} {w}x{h}, k = {k}");
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
