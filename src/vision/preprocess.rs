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

use crate::vision::color::{od_lut, Background, LabConverter};
use crate::vision::imageops::{otsu, reflect};
use crate::vision::mask::{BBox, Mask};
use image::RgbImage;
use serde::{Deserialize, Serialize};

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
    let score = |c: &crate::vision::mask::Component| {
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
fn kth_smallest(values: &[f32], k: usize) -> f32 {
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

/// Samples the square window (antialiased by supersampling), white-balances,
/// converts to Lab and standardises each channel.
///
/// Every subsample is a bilinear read of the white-balanced image at
/// `x0 + (i + (si + 0.5) / n) * step - 0.5`: the same positions and weights for
/// every row, so they are computed once per column and once per row, and the
/// image is turned into transmittance once, not per read.
fn sample_standardised(img: &RgbImage, bg: &Background, window: (f32, f32, f32), spec: &PreprocessSpec) -> Vec<f32> {
    let s = spec.size as usize;
    let (cx, cy, side) = window;
    let step = side / s as f32;
    // Supersampling factor: enough subsamples to cover each output pixel's footprint.
    let n = (step.ceil() as usize).clamp(1, 4);
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut lab = vec![0f32; 3 * s * s];
    if w == 0 || h == 0 {
        return lab;
    }
    let xs = taps(cx - side / 2.0, step, s, n, w);
    let ys = taps(cy - side / 2.0, step, s, n, h);
    // White-balance only the rectangle the taps read (a small window reads a
    // fraction of the image), into a buffer indexed from its corner.
    let span =
        |t: &[Tap]| t.iter().fold((usize::MAX, 0), |(lo, hi), t| (lo.min(t.i0.min(t.i1)), hi.max(t.i0.max(t.i1))));
    let ((x_lo, x_hi), (y_lo, y_hi)) = (span(&xs), span(&ys));
    let lut = transmittance_lut(bg);
    let raw = img.as_raw();
    let wu = x_hi - x_lo + 1;
    // One plane per channel: the blends below are then plain loops over
    // contiguous floats, which the compiler vectorises.
    let mut t: [Vec<f32>; 3] = std::array::from_fn(|_| vec![0f32; wu * (y_hi - y_lo + 1)]);
    for (c, plane) in t.iter_mut().enumerate() {
        for (y, out) in (y_lo..=y_hi).zip(plane.chunks_exact_mut(wu)) {
            let row = &raw[(y * w as usize + x_lo) * 3..(y * w as usize + x_hi + 1) * 3];
            for (o, p) in out.iter_mut().zip(row.chunks_exact(3)) {
                *o = lut[c][p[c] as usize];
            }
        }
    }
    // Column taps reordered subsample-major (k = si * s + i), so that one
    // subsample of every output pixel is contiguous; indices from the corner.
    let cols: Vec<Tap> =
        (0..n).flat_map(|si| (0..s).map(move |i| (si, i))).map(|(si, i)| xs[i * n + si].shifted(x_lo)).collect();
    let ys: Vec<Tap> = ys.iter().map(|t| t.shifted(y_lo)).collect();
    let to_lab = LabConverter::shared();
    // Every subsample is bilinear: horizontal blends on two rows, then the
    // vertical blend. The horizontal blends of one image row at every column
    // tap are made in one pass and reused by the neighbouring row taps that
    // read the same row (two rows cached); the arithmetic, and the order in
    // which each output pixel sums its subsamples, is that of a plain
    // per-subsample loop (sj outer, si inner).
    let m = cols.len();
    let mut rows = RowBlends { row: [usize::MAX; 2], blend: [vec![0.0; 3 * m], vec![0.0; 3 * m]] };
    let mut acc = vec![0f32; 3 * s];
    for j in 0..s {
        acc.fill(0.0);
        for ty in &ys[j * n..(j + 1) * n] {
            let (k0, k1) = rows.pair(ty.i0, ty.i1, |r, out| {
                for (c, plane) in t.iter().enumerate() {
                    let row = &plane[r * wu..(r + 1) * wu];
                    for (h, tx) in out[c * m..(c + 1) * m].iter_mut().zip(&cols) {
                        *h = row[tx.i0] * (1.0 - tx.a) + row[tx.i1] * tx.a;
                    }
                }
            });
            let (top, bot) = (&rows.blend[k0], &rows.blend[k1]);
            let (wt, wb) = (1.0 - ty.a, ty.a);
            for c in 0..3 {
                let a = &mut acc[c * s..(c + 1) * s];
                for si in 0..n {
                    let o = c * m + si * s;
                    for ((a, &t0), &b0) in a.iter_mut().zip(&top[o..o + s]).zip(&bot[o..o + s]) {
                        *a += t0 * wt + b0 * wb;
                    }
                }
            }
        }
        let k = (n * n) as f32;
        let (l_plane, rest) = lab.split_at_mut(s * s);
        let (a_plane, b_plane) = rest.split_at_mut(s * s);
        let row = j * s..(j + 1) * s;
        to_lab.lab_planes(
            [&acc[..s], &acc[s..2 * s], &acc[2 * s..]],
            k,
            [&mut l_plane[row.clone()], &mut a_plane[row.clone()], &mut b_plane[row]],
        );
    }
    standardise(&mut lab, s * s, spec.std_floor);
    lab
}

/// Horizontal blends of two image rows at every column tap, kept while
/// consecutive row taps read the same rows.
struct RowBlends {
    row: [usize; 2],
    blend: [Vec<f32>; 2],
}

impl RowBlends {
    /// Slots holding rows `r0` and `r1`, blending a row into a free slot with
    /// `fill` when it is not held (never evicting `r0` for `r1`).
    fn pair(&mut self, r0: usize, r1: usize, mut fill: impl FnMut(usize, &mut [f32])) -> (usize, usize) {
        let k0 = match self.row.iter().position(|&r| r == r0) {
            Some(k) => k,
            None => {
                let k = if self.row[0] == r1 { 1 } else { 0 };
                fill(r0, &mut self.blend[k]);
                self.row[k] = r0;
                k
            }
        };
        let k1 = match self.row.iter().position(|&r| r == r1) {
            Some(k) => k,
            None => {
                let k = 1 - k0;
                fill(r1, &mut self.blend[k]);
                self.row[k] = r1;
                k
            }
        };
        (k0, k1)
    }
}

/// One bilinear tap along an axis: the two (mirrored) pixel indices and the
/// weight of the second.
#[derive(Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    a: f32,
}

impl Tap {
    /// The same tap with indices counted from `origin`.
    fn shifted(self, origin: usize) -> Tap {
        Tap { i0: self.i0 - origin, i1: self.i1 - origin, a: self.a }
    }
}

/// The `n` subsample taps of each of `s` output pixels along one axis.
/// Outside the image the picture is mirrored: a constant fill would mark
/// cells that sit close to a crop's edge, which differs between datasets and
/// never happens inside a camera field.
fn taps(origin: f32, step: f32, s: usize, n: usize, len: i64) -> Vec<Tap> {
    let at = |i: i64| if (0..len).contains(&i) { i as usize } else { reflect(i, len) as usize };
    let mut out = Vec::with_capacity(s * n);
    for i in 0..s {
        for si in 0..n {
            let u = origin + (i as f32 + (si as f32 + 0.5) / n as f32) * step - 0.5;
            let f = u.floor();
            out.push(Tap { i0: at(f as i64), i1: at(f as i64 + 1), a: u - f });
        }
    }
    out
}

/// Per-channel transmittance of every byte value: the same numbers as
/// Background::transmittance, computed 768 times instead of per pixel.
fn transmittance_lut(bg: &Background) -> [[f32; 256]; 3] {
    let mut lut = [[0f32; 256]; 3];
    for (v, row) in (0..256).map(|v| (v, bg.transmittance([v as u8; 3]))) {
        for c in 0..3 {
            lut[c][v] = row[c];
        }
    }
    lut
}

/// Zero mean, unit variance per channel (standard deviation floored).
fn standardise(lab: &mut [f32], plane: usize, std_floor: f32) {
    for ch in lab.chunks_exact_mut(plane) {
        let mean = ch.iter().sum::<f32>() / ch.len() as f32;
        let var = ch.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / ch.len() as f32;
        let sd = var.sqrt().max(std_floor);
        for v in ch.iter_mut() {
            *v = (*v - mean) / sd;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::color::srgb_to_lab;

    /// The straightforward version of [`sample_standardised`] (one bilinear read
    /// per subsample, exact Lab formula), kept to check the fast one against.
    fn sample_standardised_reference(
        img: &RgbImage,
        bg: &Background,
        window: (f32, f32, f32),
        spec: &PreprocessSpec,
    ) -> Vec<f32> {
        let s = spec.size as usize;
        let (cx, cy, side) = window;
        let step = side / s as f32;
        // Supersampling factor: enough subsamples to cover each output pixel's footprint.
        let n = (step.ceil() as usize).clamp(1, 4);
        let x0 = cx - side / 2.0;
        let y0 = cy - side / 2.0;
        let mut lab = vec![0f32; 3 * s * s];
        // Per-channel transmittance of every byte value: the same numbers as
        // Background::transmittance, computed 768 times instead of per sample.
        let mut lut = [[0f32; 256]; 3];
        for (v, row) in (0..256).map(|v| (v, bg.transmittance([v as u8; 3]))) {
            for c in 0..3 {
                lut[c][v] = row[c];
            }
        }
        for j in 0..s {
            for i in 0..s {
                let mut acc = [0f32; 3];
                for sj in 0..n {
                    for si in 0..n {
                        let u = x0 + (i as f32 + (si as f32 + 0.5) / n as f32) * step - 0.5;
                        let v = y0 + (j as f32 + (sj as f32 + 0.5) / n as f32) * step - 0.5;
                        let t = bilinear_transmittance(img, &lut, u, v);
                        for c in 0..3 {
                            acc[c] += t[c];
                        }
                    }
                }
                let k = (n * n) as f32;
                let l = srgb_to_lab([acc[0] / k, acc[1] / k, acc[2] / k]);
                for c in 0..3 {
                    lab[c * s * s + j * s + i] = l[c];
                }
            }
        }
        for c in 0..3 {
            let ch = &mut lab[c * s * s..(c + 1) * s * s];
            let mean = ch.iter().sum::<f32>() / ch.len() as f32;
            let var = ch.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / ch.len() as f32;
            let sd = var.sqrt().max(spec.std_floor);
            for v in ch.iter_mut() {
                *v = (*v - mean) / sd;
            }
        }
        lab
    }

    /// Bilinear sample of the white-balanced image. Outside the image the picture is
    /// mirrored: a constant fill would mark cells that sit close to a crop's edge,
    /// which differs between datasets and never happens inside a camera field.
    fn bilinear_transmittance(img: &RgbImage, lut: &[[f32; 256]; 3], u: f32, v: f32) -> [f32; 3] {
        let (w, h) = (img.width() as i64, img.height() as i64);
        let (fx, fy) = (u.floor(), v.floor());
        let (ax, ay) = (u - fx, v - fy);
        let (ix, iy) = (fx as i64, fy as i64);
        let at = |i: i64, n: i64| if (0..n).contains(&i) { i as u32 } else { reflect(i, n) };
        let px = |x: i64, y: i64| -> [f32; 3] {
            let p = img.get_pixel(at(x, w), at(y, h)).0;
            [lut[0][p[0] as usize], lut[1][p[1] as usize], lut[2][p[2] as usize]]
        };
        let (p00, p10, p01, p11) = (px(ix, iy), px(ix + 1, iy), px(ix, iy + 1), px(ix + 1, iy + 1));
        let mut out = [0f32; 3];
        for c in 0..3 {
            let top = p00[c] * (1.0 - ax) + p10[c] * ax;
            let bot = p01[c] * (1.0 - ax) + p11[c] * ax;
            out[c] = top * (1.0 - ay) + bot * ay;
        }
        out
    }

    use image::Rgb;

    /// Synthetic crop: glass, a pink "red cell" off-centre and a purple nucleus.
    fn synthetic(w: u32, h: u32, nx: f32, ny: f32, nr: f32) -> RgbImage {
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

    /// The fast sampler and nucleus threshold give the numbers of the
    /// straightforward ones, on real crops of both labs and on windows from
    /// much smaller than the crop (one subsample) to past its border (4x4).
    #[test]
    fn fast_sampling_is_bit_identical() {
        // Drawn cells (a nucleus, cytoplasm, red cells) and images of noise:
        // every byte value and every window position, so no rounding case is missed.
        let noisy = crate::vision::imageops::testing::noisy_field;
        let images = [
            synthetic(360, 360, 180.0, 180.0, 40.0),
            synthetic(363, 241, 90.0, 120.0, 25.0),
            noisy(360, 360),
            noisy(97, 301),
        ];
        let spec = PreprocessSpec::default();
        let mut worst = 0f32;
        for (n, img) in images.iter().enumerate() {
            let bg = Background::estimate(img);
            let (w, h) = (img.width() as f32, img.height() as f32);
            for window in [
                (w / 2.0, h / 2.0, 40.0),
                (w / 3.0, h / 2.5, 150.3),
                (w / 2.0, h / 2.0, 2.2 * w),
                (3.0, h - 2.0, 377.7),
            ] {
                let fast = sample_standardised(img, &bg, window, &spec);
                let slow = sample_standardised_reference(img, &bg, window, &spec);
                let d = fast.iter().zip(&slow).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                worst = worst.max(d);
            }
            let od = nucleus_signal(img, &bg);
            for q in [0, 50, 99, 100] {
                let k = (od.len() * q / 100).min(od.len() - 1);
                let mut sorted = od.clone();
                assert_eq!(kth_smallest(&od, k), *sorted.select_nth_unstable_by(k, f32::total_cmp).1, "image {n}");
            }
        }
        // Same sampling, bit for bit; the Lab conversion's table and cube root
        // differ from powf/cbrt by float rounding only.
        eprintln!("largest tensor difference {worst} (z units)");
        assert!(worst < 1e-4, "largest tensor difference {worst} (z units)");
        assert_eq!(kth_smallest(&[0.0; 7], 3), 0.0);
        assert_eq!(kth_smallest(&[], 0), 0.0);
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
