//! The nucleus that centres the window: the stained component nearest the
//! crop's centre, with its lobes, at a threshold set per image.

use super::Nucleus;
use crate::vision::color::{od_lut, Background};
use crate::vision::imageops::otsu;
use crate::vision::mask::Mask;
use image::RgbImage;

/// Nuclear stain signal: red minus blue optical density. Nuclei (azure,
/// purple) absorb red far more than blue; red cells (eosin, pink) absorb blue
/// at least as much as red; dark debris, dust and scanner borders absorb all
/// channels alike. So the signal is high on nuclei alone, and stays so when a
/// lab's stain is paler or bluer.
pub fn nucleus_signal(img: &RgbImage, bg: &Background) -> Vec<f32> {
    let (red, blue) = (od_lut(bg.0[0]), od_lut(bg.0[2]));
    img.pixels().map(|p| (red[p.0[0] as usize] - blue[p.0[2] as usize]).max(0.0)).collect()
}

/// The nucleus of the cell nearest the image centre: the biggest stained
/// component weighted by closeness to the centre, plus nearby components that
/// are lobes of the same nucleus (segmented neutrophils, eosinophils).
pub fn find_central_nucleus(img: &RgbImage, bg: &Background, min_od: f32) -> Option<Nucleus> {
    let od = nucleus_signal(img, bg);
    let threshold = nucleus_threshold(&od, min_od);
    // Opening with the 3x3 square (= open(1)), separable: a third of the time.
    let mask = Mask { width: img.width(), height: img.height(), data: od.iter().map(|&v| v > threshold).collect() }
        .erode3x3()
        .dilate3x3();
    let comps = &mask.component_stats();
    let (w, h) = (img.width() as f32, img.height() as f32);
    let radius = w.min(h) / 2.0;
    let score = |c: &crate::vision::components::Component| {
        let (x, y) = c.centroid();
        let d = ((x - w / 2.0).powi(2) + (y - h / 2.0).powi(2)).sqrt() / radius;
        c.area as f32 * (1.0 - d).max(0.0).powi(2)
    };
    let seed = comps.iter().max_by(|a, b| score(a).total_cmp(&score(b)))?;
    if score(seed) <= 0.0 {
        return None;
    }
    let extent = seed.bbox.width().max(seed.bbox.height()) as f32;
    let (mut bbox, mut area_px) = (seed.bbox, 0);
    for c in comps {
        if c.area as f32 >= 0.05 * seed.area as f32 && (seed.bbox.gap(&c.bbox) as f32) < 0.35 * extent {
            bbox = bbox.union(&c.bbox);
            area_px += c.area;
        }
    }
    Some(Nucleus { bbox, area_px, threshold })
}

/// The nuclear signal above which a pixel is nucleus, for one image's signal.
fn nucleus_threshold(od: &[f32], min_od: f32) -> f32 {
    // Otsu alone is pulled up by a heavy tail (dark granules, JPEG colour
    // fringes) and then keeps only specks of a large nucleus; half the 99th
    // percentile alone clips pale nuclei. The lower of the two held up across
    // recoloured and rescaled crops (docs/preprocessing.md).
    let otsu_t = otsu(od.iter().copied().filter(|&v| v > 0.05)).unwrap_or(min_od);
    let k = (od.len() * 99 / 100).min(od.len().saturating_sub(1));
    let p99 = kth_smallest(od, k);
    otsu_t.min(0.5 * p99).max(min_od)
}

/// The `k`-th smallest (0-based) of non-negative values, exactly as a full
/// selection would give it, in linear time without copying all of them: a
/// histogram finds the bin that holds it (bins are monotone in the value), and
/// only that bin's values are selected among.
pub(super) fn kth_smallest(values: &[f32], k: usize) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    const BINS: usize = 1024;
    let max = values.iter().copied().fold(0f32, f32::max);
    if max <= 0.0 {
        return *values.iter().min_by(|a, b| a.total_cmp(b)).unwrap_or(&0.0);
    }
    let scale = BINS as f32 / max;
    let bin = |v: f32| ((v * scale) as usize).min(BINS - 1);
    let mut hist = [0usize; BINS];
    for &v in values {
        hist[bin(v)] += 1;
    }
    let (mut b, mut below) = (0, 0);
    while below + hist[b] <= k {
        below += hist[b];
        b += 1;
    }
    let mut in_bin: Vec<f32> = values.iter().copied().filter(|&v| bin(v) == b).collect();
    *in_bin.select_nth_unstable_by(k - below, f32::total_cmp).1
}
