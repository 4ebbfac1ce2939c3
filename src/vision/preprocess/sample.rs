//! The window sampled into the model's input: supersampled bilinear reads of
//! the white-balanced image, converted to CIELAB and standardised per channel.

use super::PreprocessSpec;
use crate::vision::color::{Background, LabConverter};
use crate::vision::imageops::reflect;
use image::RgbImage;

/// Samples the square window (antialiased by supersampling), white-balances,
/// converts to Lab and standardises each channel.
///
/// Every subsample is a bilinear read of the white-balanced image at
/// `x0 + (i + (si + 0.5) / n) * step - 0.5`: the same positions and weights for
/// every row, so they are computed once per column and once per row, and the
/// image is turned into transmittance once, not per read.
pub(super) fn sample_standardised(
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
    use super::super::nucleus::{kth_smallest, nucleus_signal};
    use super::super::tests::synthetic;
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

    /// The fast sampler and nucleus threshold give the numbers of the
    /// straightforward ones, on drawn cells and noise and on windows from
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
}
