//! Morphometry of one cell in physical units: nucleus and cell area (µm²),
//! their equivalent diameters (µm) and the nucleus:cytoplasm ratio. A reviewer
//! reads them beside the crop: a blast is large with a high N:C ratio, a
//! lymphocyte small with a high one, a neutrophil mid-sized with a low one.
//!
//! The nucleus is the one the model's window is centred on ([`Prepared`]). The
//! cell outline is star-shaped around it: from the nucleus centre, 64 rays
//! start at the nucleus edge and follow stained pixels (any channel absorbing
//! more than [`STAINED_OD`]) until the slide shows through. A red cell touching
//! the leukocyte would extend a few rays, so each radius is the median of its
//! five neighbours and at most [`MAX_RADIUS_OF_MEDIAN`] times the median radius.
//! It is an estimate for review, not a measurement to diagnose on: pale
//! cytoplasm against a packed smear can be under- or over-drawn, and the
//! nucleus is the one segmented to centre the model's window, which leaves out
//! pale fine chromatin: blasts measure an N:C of about 0.5 where textbooks give
//! ~0.7 (median on 40 LMU myeloblasts; lymphocytes 0.84, neutrophils 0.35,
//! monocytes 0.58 on PBC: `tests/morphometry.rs`).

use crate::vision::color::{od_lut, Background};
use crate::vision::preprocess::{Nucleus, Prepared};
use image::RgbImage;
use serde::Serialize;

/// Optical density (natural log, against the slide background) above which a
/// pixel belongs to a cell: 13% absorption in its most absorbed channel,
/// above JPEG noise on the background, below the palest neutrophil cytoplasm.
pub const STAINED_OD: f32 = 0.14;
/// Cells larger than this (µm across) are not measured further.
pub const MAX_CELL_DIAMETER_UM: f32 = 26.0;
/// A ray longer than this many times the median radius was led off by a
/// touching cell.
pub const MAX_RADIUS_OF_MEDIAN: f32 = 1.2;
const RAYS: usize = 64;

/// What is measured of one cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Morphometry {
    pub nucleus_area_um2: f32,
    pub nucleus_diameter_um: f32,
    /// `None` when the cell runs out of the image on more than a quarter of its outline.
    pub cell_area_um2: Option<f32>,
    pub cell_diameter_um: Option<f32>,
    /// Nucleus area over cell area.
    pub nc_ratio: Option<f32>,
}

/// Measures the cell whose nucleus `prepared` found in `img` (the image it was
/// prepared from, at `prepared.um_per_px`, against `prepared.background`);
/// `None` when it found none.
pub fn measure(img: &RgbImage, prepared: &Prepared) -> Option<Morphometry> {
    let nucleus = prepared.nucleus?;
    let um = prepared.um_per_px;
    if !(um.is_finite() && um > 0.0) {
        return None;
    }
    let nucleus_area_um2 = nucleus.area_px as f32 * um * um;
    let cell_area_um2 = cell_area_px(img, &prepared.background, &nucleus, MAX_CELL_DIAMETER_UM / 2.0 / um)
        .map(|px| (px * um * um).max(nucleus_area_um2));
    Some(Morphometry {
        nucleus_area_um2,
        nucleus_diameter_um: diameter(nucleus_area_um2),
        cell_area_um2,
        cell_diameter_um: cell_area_um2.map(diameter),
        nc_ratio: cell_area_um2.filter(|&a| a > 0.0).map(|a| nucleus_area_um2 / a),
    })
}

fn diameter(area: f32) -> f32 {
    2.0 * (area / std::f32::consts::PI).sqrt()
}

/// Area in pixels of the star-shaped outline around `nucleus`.
fn cell_area_px(img: &RgbImage, bg: &Background, nucleus: &Nucleus, max_radius: f32) -> Option<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return None;
    }
    // Only the pixels the rays read are looked at: optical density per
    // channel, and the nuclear signal as the nucleus was segmented with
    // (`preprocess::nucleus_signal`, above the threshold it used).
    let luts: [[f32; 256]; 3] = std::array::from_fn(|c| od_lut(bg.0[c]));
    let raw = img.as_raw();
    let od = |x: usize, y: usize| -> [f32; 3] {
        let p = &raw[(y * w + x) * 3..(y * w + x) * 3 + 3];
        std::array::from_fn(|c| luts[c][p[c] as usize])
    };
    let stained = |x: usize, y: usize| od(x, y).iter().any(|&v| v > STAINED_OD);
    let b = nucleus.bbox;
    let in_nucleus = |x: usize, y: usize| {
        let [red, _, blue] = od(x, y);
        x as u32 >= b.x0
            && (x as u32) < b.x1
            && y as u32 >= b.y0
            && (y as u32) < b.y1
            && (red - blue).max(0.0) > nucleus.threshold
    };
    let (cx, cy) = b.center();
    let step = 0.5f32;
    let pixel = |r: f32, (dx, dy): (f32, f32)| {
        let (x, y) = ((cx + dx * r).round(), (cy + dy * r).round());
        (x >= 0.0 && y >= 0.0 && (x as usize) < w && (y as usize) < h).then_some((x as usize, y as usize))
    };
    let mut radii = [0f32; RAYS];
    let mut cut = 0;
    for (k, radius) in radii.iter_mut().enumerate() {
        let a = k as f32 * std::f32::consts::TAU / RAYS as f32;
        let dir = (a.cos(), a.sin());
        // Start at the outermost nucleus pixel on the ray: between the lobes of
        // a neutrophil the ray crosses pale cytoplasm before it leaves the cell.
        let mut start = 0.0;
        let mut r = 0.0;
        while r < max_radius {
            match pixel(r, dir) {
                Some((x, y)) if in_nucleus(x, y) => start = r,
                Some(_) => {}
                None => break,
            }
            r += step;
        }
        let (mut last, mut misses, mut r) = (start, 0, start);
        loop {
            r += step;
            if r >= max_radius {
                break;
            }
            match pixel(r, dir) {
                None => {
                    cut += 1;
                    break;
                }
                Some((x, y)) if stained(x, y) => (last, misses) = (r, 0),
                Some(_) => {
                    misses += 1;
                    // Two unstained samples in a row (1 px): the slide.
                    if misses >= 2 {
                        break;
                    }
                }
            }
        }
        *radius = last + 0.5;
    }
    if cut * 4 > RAYS {
        return None;
    }
    // Median of each ray and its four neighbours, then a cap at the median radius.
    let smooth: Vec<f32> = (0..RAYS)
        .map(|k| {
            let mut v: [f32; 5] = std::array::from_fn(|j| radii[(k + RAYS + j - 2) % RAYS]);
            v.sort_by(f32::total_cmp);
            v[2]
        })
        .collect();
    let mut sorted = smooth.clone();
    sorted.sort_by(f32::total_cmp);
    let cap = MAX_RADIUS_OF_MEDIAN * sorted[RAYS / 2];
    let d_theta = std::f32::consts::TAU / RAYS as f32;
    Some(smooth.iter().map(|r| 0.5 * r.min(cap).powi(2) * d_theta).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::preprocess::{prepare, PreprocessSpec};
    use image::Rgb;

    /// A round cell of radius `rc` px with a round nucleus of radius `rn` px on
    /// a white slide, and a red cell touching it on the right.
    fn cell(rc: f32, rn: f32) -> RgbImage {
        RgbImage::from_fn(200, 200, |x, y| {
            let (dx, dy) = (x as f32 - 100.0, y as f32 - 100.0);
            let d = (dx * dx + dy * dy).sqrt();
            let red = ((dx - rc - 18.0).powi(2) + dy * dy).sqrt() < 20.0;
            if d < rn {
                Rgb([90, 40, 140])
            } else if d < rc {
                Rgb([215, 205, 225])
            } else if red {
                Rgb([225, 160, 160])
            } else {
                Rgb([250, 248, 245])
            }
        })
    }

    #[test]
    fn measures_a_drawn_cell_beside_a_red_cell() {
        let um = 0.2;
        for (rc, rn) in [(40.0, 25.0), (30.0, 24.0), (50.0, 20.0)] {
            let img = cell(rc, rn);
            let spec = PreprocessSpec::default();
            let p = prepare(&img, &spec, None, um);
            let m = measure(&img, &p).expect("a nucleus");
            let true_cell = std::f32::consts::PI * rc * rc * um * um;
            let true_nucleus = std::f32::consts::PI * rn * rn * um * um;
            let cell_area = m.cell_area_um2.expect("cell area");
            assert!((cell_area / true_cell - 1.0).abs() < 0.08, "{rc}/{rn}: cell {cell_area} vs {true_cell}");
            assert!((m.nucleus_area_um2 / true_nucleus - 1.0).abs() < 0.08, "{rc}/{rn}: {m:?} vs {true_nucleus}");
            let nc = m.nc_ratio.expect("N:C");
            assert!((nc - (rn * rn) / (rc * rc)).abs() < 0.05, "{rc}/{rn}: N:C {nc}");
        }
    }

    #[test]
    fn nothing_to_measure_without_a_nucleus() {
        let img = RgbImage::from_pixel(64, 64, Rgb([240, 240, 240]));
        let spec = PreprocessSpec::default();
        let p = prepare(&img, &spec, None, 0.2);
        assert!(measure(&img, &p).is_none());
    }
}
