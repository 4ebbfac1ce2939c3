//! Step 1 of detection: the field's scale from its red cells (their median
//! size, from discs packed into the red-cell mask, is 7.5 µm).

use super::nuclei::nucleus_mask;
use super::{milli, DetectParams, Luts, RedCellScale};
use crate::vision::color::Background;
use crate::vision::imageops::{downsample, downsample_rect, otsu, Rect};
use crate::vision::mask::{BBox, Mask, CHAMFER_UNIT};
use image::RgbImage;

/// µm per input pixel from the red cells (`None` when there are too few), and
/// the red cells of the level-0 copy however few (for a scale pooled over
/// fields): the whole ones, or when they are too few, with those cut by the
/// border whose centre is in view.
///
/// The level-0 copy (longer side ~`scale_side_px`) serves when its red cells
/// are at least `MIN_DIAMETER` px across. Smaller ones (low magnification,
/// large sensor) are measured again at a finer level chosen to make them
/// ~`AIM_DIAMETER` px, on a central crop of the level-0 size: a few dozen
/// cells are enough, and the cost stays that of level 0.
pub(super) fn estimate_scale(
    img: &RgbImage,
    level0: &RgbImage,
    k0: u32,
    luts: &Luts,
    params: &DetectParams,
) -> RedCellMeasure {
    // Below ~24 px the 3x3 morphology and the distance quantisation bias the
    // inscribed radius by several percent.
    const MIN_DIAMETER: f32 = 24.0;
    const AIM_DIAMETER: f32 = 40.0;
    // The red-cell mask of level 0 serves both measures below.
    let cells0 = RedCells::of(level0, luts, params);
    let (radii0, nuclei0) = cells0.discs(params, CutCells::Dropped);
    let mut radii_px: Vec<f32> = radii0.iter().map(|r| r * k0 as f32).collect();
    let d0 = diameter_of(radii0, &nuclei0, params);
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
    let mut diameter = refined.or(d0.map(|(d, n)| (d * k0 as f32, n)));
    if diameter.is_none() {
        // Too few whole red cells (high magnification: most are cut by the
        // border). Those cut whose centre is in view still show their size;
        // taken only here, so that fields with enough whole cells keep the
        // estimate the detector was tuned with.
        let (radii, nuclei) = cells0.discs(params, CutCells::Kept);
        radii_px = radii.iter().map(|r| r * k0 as f32).collect();
        diameter = diameter_of(radii, &nuclei, params).map(|(d, n)| (d * k0 as f32, n));
    }
    let estimate = diameter.and_then(|(diameter_px, cells)| {
        let um_per_px = params.rbc_diameter_um / diameter_px;
        (um_per_px.is_finite() && um_per_px > 0.0).then_some(RedCellScale { um_per_px, cells })
    });
    RedCellMeasure { estimate, radii_px }
}

/// The field's scale from its red cells alone (what [`super::detect`] estimates
/// when no scale is given), or `None` when they cannot tell.
pub fn red_cell_scale(img: &RgbImage, params: &DetectParams) -> Option<RedCellScale> {
    measure_red_cells(img, params).estimate
}

/// The copy the red cells (and then the nuclei) are first looked for on: the
/// image averaged down by `k0` to a longer side of about `scale_side_px`.
/// `None` for an empty image.
pub(super) fn level0<'a>(img: &'a RgbImage, params: &DetectParams) -> Option<(std::borrow::Cow<'a, RgbImage>, u32)> {
    if img.width() == 0 || img.height() == 0 {
        return None;
    }
    let side = img.width().max(img.height());
    let target = params.scale_side_px.max(1);
    let k0 = ((side + target / 2) / target).max(1);
    Some((downsample(img, k0), k0))
}

/// What one field's red cells say, for a scale pooled over many fields: the
/// field's own estimate ([`red_cell_scale`]) and the inscribed radius, in
/// pixels of `img`, of every red cell measured at level 0 (however few; see
/// [`estimate_scale`] for which).
#[derive(Debug, Clone, PartialEq)]
pub struct RedCellMeasure {
    pub estimate: Option<RedCellScale>,
    pub radii_px: Vec<f32>,
}

/// At high magnification a field holds two or three whole red cells, too few
/// for its own estimate (`scale_min_cells`), and the few fields that pass are
/// the misleading ones (fragments); pooled over many fields they are plenty.
pub fn measure_red_cells(img: &RgbImage, params: &DetectParams) -> RedCellMeasure {
    // As the field is analysed: its light evened out first.
    let evened = crate::vision::illumination::evened(img);
    let img = evened.as_ref();
    let Some((level0, k0)) = level0(img, params) else {
        return RedCellMeasure { estimate: None, radii_px: Vec::new() };
    };
    let luts = Luts::new(&Background::estimate(&level0), params.blue_weight);
    estimate_scale(img, &level0, k0, &luts, params)
}

/// Fewest whole red cells, all fields together, that a pooled scale is taken from.
pub const POOLED_MIN_CELLS: usize = 20;

/// The scale from red cells pooled over fields ([`RedCellMeasure::radii_px`]):
/// the typical cell among them as one field's are measured, and the scale each
/// of those cells alone gives (for the spread). `None` below [`POOLED_MIN_CELLS`].
pub fn pooled_scale(radii_px: Vec<f32>, params: &DetectParams) -> Option<(RedCellScale, Vec<f32>)> {
    let ((r, _), weighted) = typical_radius(radii_px.clone(), params)?;
    let per_cell: Vec<f32> = radii_px
        .into_iter()
        .filter(|&x| x >= params.rbc_min_disc_fraction * weighted)
        .map(|x| params.rbc_diameter_um / (2.0 * x * params.rbc_extent_per_inscribed))
        .collect();
    if per_cell.len() < POOLED_MIN_CELLS.max(params.scale_min_cells) {
        return None;
    }
    let um_per_px = params.rbc_diameter_um / (2.0 * r * params.rbc_extent_per_inscribed);
    (um_per_px.is_finite() && um_per_px > 0.0).then_some((RedCellScale { um_per_px, cells: per_cell.len() }, per_cell))
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
    let (radii, nucleus_boxes) = RedCells::of(img, luts, params).discs(params, CutCells::Dropped);
    diameter_of(radii, &nucleus_boxes, params)
}

/// [`rbc_diameter`] from the discs and nuclei [`RedCells::discs`] found.
fn diameter_of(radii: Vec<f32>, nucleus_boxes: &[BBox], params: &DetectParams) -> Option<(f32, usize)> {
    let (r, n) = cell_radius(radii, params)?;
    let diameter = 2.0 * r * params.rbc_extent_per_inscribed;
    // Self-check: no nucleus is much longer than the longest possible one in
    // red-cell diameters. A field filled by a leukocyte, with only fragments
    // of red cells left, fails here rather than giving a wrong scale.
    let longest = nucleus_boxes.iter().map(|b| b.width().max(b.height())).max().unwrap_or(0) as f32;
    let limit = 1.25 * params.max_nucleus_um / params.rbc_diameter_um * diameter;
    (longest <= limit).then_some((diameter, n))
}

/// Which red cells [`RedCells::discs`] measures besides the whole ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutCells {
    /// Whole cells only: outside the image is background, and a disc that
    /// touches the border is dropped.
    Dropped,
    /// Also cells cut by the border whose centre is in view: outside the
    /// image is not background, so such a cell keeps its whole inscribed
    /// radius. Keeping them removes a bias: when few cells fit in the field,
    /// the large ones are the likeliest to be cut, and the whole ones left
    /// are the small ones (a scale 30% too large at 0.024 µm/px).
    Kept,
}

/// An image's red cells as a mask (pale centres filled, nuclei taken out),
/// and its nuclei (dilated).
struct RedCells {
    rbc: Mask,
    nuclei: Mask,
}

impl RedCells {
    fn of(img: &RgbImage, luts: &Luts, params: &DetectParams) -> RedCells {
        let green: Vec<i32> = img.pixels().map(|p| luts.green[p.0[1] as usize]).collect();
        let nuclei = nucleus_mask(img, luts, milli(params.nucleus_od)).dilate3x3();
        // Nuclei are the darkest objects: left in, Otsu would split them from
        // everything else instead of red cells from glass in pale fields.
        // Every third pixel is plenty for a threshold.
        let glass_or_rbc =
            green.iter().zip(&nuclei.data).step_by(3).filter(|(_, &n)| !n).map(|(&g, _)| g as f32 / 1000.0);
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
        RedCells { rbc, nuclei }
    }

    /// The inscribed radii (px) of the red cells outside leukocytes, however
    /// few (whole ones, and with [`CutCells::Kept`] those cut by the border),
    /// and the boxes of the nuclei at least a third of a red cell's area.
    fn discs(&self, params: &DetectParams, cut: CutCells) -> (Vec<f32>, Vec<BBox>) {
        let RedCells { rbc, nuclei } = self;
        let (w, h) = (rbc.width as usize, rbc.height as usize);
        let dt = match cut {
            CutCells::Dropped => rbc.distance_transform(),
            CutCells::Kept => rbc.distance_transform_to_seen_background(),
        };
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
        if cut == CutCells::Dropped {
            // Touching the border, the inscribed circle was cut by it.
            discs.retain(|&(x, y, r)| x >= r && y >= r && x + r < w as f32 && y + r < h as f32);
        }
        let Some(((r_all, _), _)) = typical_radius(discs.iter().map(|d| d.2).collect(), params) else {
            return (Vec::new(), Vec::new());
        };
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
        (radii, nucleus_boxes)
    }
}

/// Typical radius of the cells among packed discs and how many cell-sized
/// discs it is the median of, `None` if fewer than `scale_min_cells`.
///
/// The small discs that fill the gaps between packed cells are many but
/// cover little: the area-weighted median finds the cell size, then the
/// plain median of the discs near it measures it (a few big discs from
/// clumps of overlapping cells would pull an area-weighted figure up).
fn cell_radius(radii: Vec<f32>, params: &DetectParams) -> Option<(f32, usize)> {
    let ((r, n), _) = typical_radius(radii, params)?;
    (n >= params.scale_min_cells).then_some((r, n))
}

/// [`cell_radius`] without the minimum count: ((the median radius of the
/// cell-sized discs, their number), the area-weighted median radius).
fn typical_radius(mut radii: Vec<f32>, params: &DetectParams) -> Option<((f32, usize), f32)> {
    radii.sort_by(f32::total_cmp);
    let total: f32 = radii.iter().map(|r| r * r).sum();
    let mut acc = 0.0;
    let weighted = *radii.iter().find(|&&r| {
        acc += r * r;
        acc >= total / 2.0
    })?;
    let cells: Vec<f32> = radii.into_iter().filter(|&r| r >= params.rbc_min_disc_fraction * weighted).collect();
    cells.get(cells.len() / 2).map(|&r| ((r, cells.len()), weighted))
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
