//! Steps 2-5 of detection: the nucleus mask, its fragments merged into
//! nuclei (lobes of one cell, never two touching cells), platelets and debris
//! rejected by area, and each nucleus grown into its cell's box.

use super::{milli, DetectParams, Detection, Luts, Rejected};
use crate::vision::color::percentile_bin;
use crate::vision::components::Labels;
use crate::vision::imageops::find_root;
use crate::vision::mask::{BBox, Mask};
use image::RgbImage;

/// The field's nucleus threshold (milli-OD): `nucleus_od`, lowered in faint
/// fields to a fraction of their strongest stain (see
/// [`DetectParams::nucleus_od_fraction`]). Measured on the level-0 copy.
pub(super) fn nucleus_threshold(level0: &RgbImage, luts: &Luts, params: &DetectParams) -> i32 {
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

/// What the field's stained pixels (green optical density above
/// `rbc_min_od`: red cells, mostly) say about the nucleus signal.
pub(super) struct RedCellStain {
    /// The lowest nucleus threshold the red cells allow (milli-OD): their
    /// median stain signal plus `nucleus_over_cells_od`.
    pub floor: i32,
    /// The red cells' colour, a unit direction in optical density: the mean
    /// of the pinker half of the stained pixels (stain signal at or below
    /// the median), so that nuclei do not pull it.
    colour: [f32; 3],
    /// Median green optical density of that half (milli-OD).
    green: i32,
}

impl RedCellStain {
    /// `None` when too few pixels are stained to tell (under 1%).
    pub(super) fn of(level0: &RgbImage, luts: &Luts, params: &DetectParams) -> Option<RedCellStain> {
        // Stain signals are clamped into +-RANGE milli-OD for the histogram.
        const RANGE: i32 = 2000;
        let green_min = milli(params.rbc_min_od);
        let mut hist = vec![0u32; (2 * RANGE + 1) as usize];
        let mut n = 0u64;
        // Every third pixel is plenty for a median (and a third of the cost).
        for p in level0.pixels().step_by(3) {
            if luts.green[p.0[1] as usize] > green_min {
                hist[(luts.stain(p.0).clamp(-RANGE, RANGE) + RANGE) as usize] += 1;
                n += 1;
            }
        }
        if n == 0 || n * 300 < u64::from(level0.width()) * u64::from(level0.height()) {
            return None;
        }
        let median = percentile_bin(&hist, n, 0.5) as i32 - RANGE;
        let mut sum = [0f64; 3];
        let mut greens = vec![0u32; (RANGE + 1) as usize];
        let mut m = 0u64;
        for p in level0.pixels().step_by(3) {
            if luts.green[p.0[1] as usize] > green_min && luts.stain(p.0) <= median {
                let v = od(luts, p.0);
                for (s, v) in sum.iter_mut().zip(v) {
                    *s += f64::from(v);
                }
                greens[luts.green[p.0[1] as usize].clamp(0, RANGE) as usize] += 1;
                m += 1;
            }
        }
        let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
        Some(RedCellStain {
            floor: median + milli(params.nucleus_over_cells_od),
            colour: if norm > 0.0 { sum.map(|v| (v / norm) as f32) } else { [0.0; 3] },
            green: if m > 0 { percentile_bin(&greens, m, 0.5) as i32 } else { 0 },
        })
    }
}

/// A pixel's optical densities (milli-OD): red, green, blue.
#[inline]
fn od(luts: &Luts, p: [u8; 3]) -> [f32; 3] {
    [luts.red[p[0] as usize] as f32, luts.green[p[1] as usize] as f32, luts.blue_od[p[2] as usize] as f32]
}

/// How far a pixel's colour lies from the red cells', squared (milli-OD²):
/// the part of its optical density orthogonal to the red-cell direction. Red
/// cells, their overlaps and glass give about 0 however dark they are; a
/// nucleus of any stain does not.
#[inline]
fn unlike_squared(v: [f32; 3], dir: &[f32; 3]) -> f32 {
    let along = v[0] * dir[0] + v[1] * dir[1] + v[2] * dir[2];
    v[0] * v[0] + v[1] * v[1] + v[2] * v[2] - along * along
}

/// The second nucleus signal (see [`DetectParams::nucleus_unlike_cells_od`]):
/// pixels darker than the red cells in green and unlike them in colour.
pub(super) struct UnlikeRedCells {
    colour: [f32; 3],
    green_min: i32,
    /// The threshold squared, so that no pixel needs a square root.
    threshold_squared: f32,
}

impl UnlikeRedCells {
    /// `None` when the signal is switched off (threshold 0).
    pub(super) fn new(cells: &RedCellStain, params: &DetectParams) -> Option<UnlikeRedCells> {
        (params.nucleus_unlike_cells_od > 0.0).then(|| UnlikeRedCells {
            colour: cells.colour,
            green_min: (cells.green as f32 * params.nucleus_unlike_darker) as i32,
            threshold_squared: (params.nucleus_unlike_cells_od * 1000.0).powi(2),
        })
    }

    #[inline]
    fn is_nucleus(&self, luts: &Luts, p: [u8; 3]) -> bool {
        luts.green[p[1] as usize] > self.green_min && unlike_squared(od(luts, p), &self.colour) > self.threshold_squared
    }
}

/// Nucleus stain mask of an image.
pub(super) fn nucleus_mask(img: &RgbImage, luts: &Luts, threshold: i32) -> Mask {
    Mask { width: img.width(), height: img.height(), data: img.pixels().map(|p| luts.stain(p.0) > threshold).collect() }
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
pub(super) fn find_leukocytes(
    work: &RgbImage,
    k: u32,
    px_per_um: f32,
    luts: &Luts,
    threshold: i32,
    unlike: Option<&UnlikeRedCells>,
    params: &DetectParams,
    full_w: u32,
    full_h: u32,
) -> (Vec<Detection>, Rejected) {
    // Pixels per µm of the working copy.
    let ppu = px_per_um / k as f32;
    let mut rejected = Rejected::default();
    // Step 2: the nucleus mask, opened, in fragments.
    let mut mask = nucleus_mask(work, luts, threshold);
    if let Some(u) = unlike {
        for (m, p) in mask.data.iter_mut().zip(work.pixels()) {
            *m = *m || u.is_nucleus(luts, p.0);
        }
    }
    let mask = open(mask, (params.open_um * ppu).round() as u32);
    let labels = mask.components();
    let frags = fragments(&labels, ppu, params, &mut rejected);
    // Step 3: fragments merged into nuclei.
    let nuclei = merge_lobes(&frags, ppu, params);
    // Steps 4 and 5: small nuclei rejected, the rest grown into cells.
    let placement = Placement { k, px_per_um, work_w: labels.width, work_h: labels.height, full_w, full_h };
    let cells = cell_boxes(&nuclei, ppu, params, &placement, &mut rejected);
    (cells, rejected)
}

/// The fragments of the nucleus mask large enough to be part of a nucleus
/// (the rest counted as specks), each with its boundary pixels.
fn fragments(labels: &Labels, ppu: f32, params: &DetectParams, rejected: &mut Rejected) -> Vec<Fragment> {
    let um2 = |a: u64| a as f32 / (ppu * ppu);
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
    frags
}

/// A nucleus: one fragment or several merged lobes (working-copy pixels).
struct Nucleus {
    bbox: BBox,
    area: u64,
}

/// Fragments closer than a lobe gap merged, closest pairs first, unless the
/// union would be larger than one nucleus can be (two touching leukocytes
/// stay two). Nuclei come back in the order of their first fragment.
fn merge_lobes(frags: &[Fragment], ppu: f32, params: &DetectParams) -> Vec<Nucleus> {
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
    let mut group: Vec<u32> = (0..frags.len() as u32).collect();
    let mut gbox: Vec<BBox> = frags.iter().map(|f| f.bbox).collect();
    let mut garea: Vec<u64> = frags.iter().map(|f| f.area).collect();
    let max_px = params.max_nucleus_um * ppu;
    for (_, i, j) in pairs {
        let (a, b) = (find_root(&mut group, i as u32) as usize, find_root(&mut group, j as u32) as usize);
        if a == b {
            continue;
        }
        let u = gbox[a].union(&gbox[b]);
        if u.width().max(u.height()) as f32 > max_px {
            continue;
        }
        group[b] = a as u32;
        gbox[a] = u;
        garea[a] += garea[b];
    }
    (0..frags.len())
        .filter(|&i| find_root(&mut group, i as u32) as usize == i)
        .map(|i| Nucleus { bbox: gbox[i], area: garea[i] })
        .collect()
}

/// Where the working copy sits in the input image.
struct Placement {
    /// Input pixels per working pixel.
    k: u32,
    /// Input pixels per µm.
    px_per_um: f32,
    work_w: u32,
    work_h: u32,
    full_w: u32,
    full_h: u32,
}

/// Steps 4 and 5: nuclei below the minimum area are platelets or debris; the
/// others become cells, the nucleus box grown by a margin in µm, in input pixels.
fn cell_boxes(
    nuclei: &[Nucleus],
    ppu: f32,
    params: &DetectParams,
    at: &Placement,
    rejected: &mut Rejected,
) -> Vec<Detection> {
    let um2 = |a: u64| a as f32 / (ppu * ppu);
    let Placement { k, full_w, full_h, .. } = *at;
    let (w, h) = (at.work_w as usize, at.work_h as usize);
    // Never inside the nucleus, whatever the configuration says.
    let margin = (params.box_margin_um * at.px_per_um).max(0.0);
    let mut cells = Vec::new();
    for n in nuclei {
        if um2(n.area) < params.min_nucleus_area_um2 {
            rejected.small_stained += 1;
            continue;
        }
        let b = n.bbox;
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
    cells
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
