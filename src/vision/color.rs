//! Colour arithmetic shared by detection and crop preprocessing.
//!
//! Everything starts from a *white-balanced* image: each channel divided by the
//! slide background's colour, so that the glass is (1, 1, 1) whatever the lamp,
//! camera or lab. Optical density (`-ln t`) then measures stain per channel
//! (Beer-Lambert), and CIELAB gives a perceptual space for stain normalisation.

use image::RgbImage;

/// Background (bare glass) colour of a field or crop, per RGB channel, 1..=255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Background(pub [f32; 3]);

impl Background {
    /// Estimate from the brightest pixels: the mean colour of pixels whose
    /// luminance lies between the 85th and 99th percentile. The top 1% is
    /// dropped because it holds specular glints and saturated pixels.
    pub fn estimate(img: &RgbImage) -> Background {
        // One pass: per luminance bin, its count and its colour sums; the
        // mean over the chosen bins is then a sum over bins, not pixels.
        let mut hist = [0u32; 766];
        let mut bin_sums = [[0u64; 3]; 766];
        for p in img.pixels() {
            let l = p.0[0] as usize + p.0[1] as usize + p.0[2] as usize;
            hist[l] += 1;
            for (s, &v) in bin_sums[l].iter_mut().zip(&p.0) {
                *s += u64::from(v);
            }
        }
        let n = img.width() as u64 * img.height() as u64;
        if n == 0 {
            return Background([255.0; 3]);
        }
        let lo = percentile_bin(&hist, n, 0.85);
        let hi = percentile_bin(&hist, n, 0.99).max(lo);
        let mut sum = [0u64; 3];
        let mut count = 0u64;
        for (c, bs) in hist[lo..=hi].iter().zip(&bin_sums[lo..=hi]) {
            for (s, &v) in sum.iter_mut().zip(bs) {
                *s += v;
            }
            count += u64::from(*c);
        }
        let count = count.max(1) as f32;
        Background([
            (sum[0] as f32 / count).max(1.0),
            (sum[1] as f32 / count).max(1.0),
            (sum[2] as f32 / count).max(1.0),
        ])
    }

    /// Transmittance of one pixel: channel / background, clamped to [1/255, 1].
    #[inline]
    pub fn transmittance(&self, p: [u8; 3]) -> [f32; 3] {
        let mut t = [0f32; 3];
        for c in 0..3 {
            t[c] = (p[c] as f32 / self.0[c]).clamp(MIN_T, 1.0);
        }
        t
    }
}

/// Lowest transmittance: keeps optical density finite (ln 255 = 5.5).
pub const MIN_T: f32 = 1.0 / 255.0;

/// Smallest luminance bin at or above the `q` quantile.
pub(crate) fn percentile_bin(hist: &[u32], n: u64, q: f64) -> usize {
    let target = (q * n as f64).ceil() as u64;
    let mut acc = 0u64;
    for (i, &h) in hist.iter().enumerate() {
        acc += h as u64;
        if acc >= target.max(1) {
            return i;
        }
    }
    hist.len() - 1
}

/// Optical density of a transmittance value.
#[inline]
pub fn optical_density(t: f32) -> f32 {
    -t.max(MIN_T).ln()
}

/// Optical density lookup per byte value for one background level: avoids a
/// `ln` per pixel on whole fields.
pub fn od_lut(background: f32) -> [f32; 256] {
    let mut lut = [0f32; 256];
    for (v, o) in lut.iter_mut().enumerate() {
        *o = optical_density((v as f32 / background).min(1.0));
    }
    lut
}

/// sRGB (transmittance in [0, 1]) to CIELAB under D65.
pub fn srgb_to_lab(rgb: [f32; 3]) -> [f32; 3] {
    xyz_to_lab([srgb_decode(rgb[0]), srgb_decode(rgb[1]), srgb_decode(rgb[2])], f32::cbrt)
}

/// sRGB value to linear light.
fn srgb_decode(c: f32) -> f32 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// Linear sRGB to CIELAB (D65), with the cube root given.
#[inline]
fn xyz_to_lab(lin: [f32; 3], cbrt: impl Fn(f32) -> f32) -> [f32; 3] {
    let [r, g, b] = lin;
    let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
    let z = (0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b) / 1.088_83;
    let f = |t: f32| {
        const D: f32 = 6.0 / 29.0;
        if t > D * D * D {
            cbrt(t)
        } else {
            t / (3.0 * D * D) + 4.0 / 29.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// [`srgb_to_lab`] for many pixels: sRGB decoding from a table (linear
/// interpolation between 4096 steps; within 3e-8 of `powf`) and the cube root
/// by Halley's method (within a float's rounding of `cbrt`). Crop preparation
/// converts every output pixel: this is a quarter of its time otherwise.
pub struct LabConverter {
    linear: Vec<f32>,
}

impl Default for LabConverter {
    fn default() -> Self {
        Self::new()
    }
}

impl LabConverter {
    const STEPS: usize = 4096;

    /// The one shared table (built on first use).
    pub fn shared() -> &'static LabConverter {
        static SHARED: std::sync::OnceLock<LabConverter> = std::sync::OnceLock::new();
        SHARED.get_or_init(LabConverter::new)
    }

    pub fn new() -> LabConverter {
        let linear = (0..=Self::STEPS + 1).map(|i| srgb_decode((i as f32 / Self::STEPS as f32).min(1.0))).collect();
        LabConverter { linear }
    }

    #[inline]
    fn decode(&self, c: f32) -> f32 {
        let x = c.clamp(0.0, 1.0) * Self::STEPS as f32;
        let i = x as usize; // x >= 0: truncation is the floor
        let f = x - i as f32;
        self.linear[i] + (self.linear[i + 1] - self.linear[i]) * f
    }

    /// sRGB (transmittance in [0, 1]) to CIELAB under D65.
    #[inline]
    pub fn lab(&self, rgb: [f32; 3]) -> [f32; 3] {
        xyz_to_lab([self.decode(rgb[0]), self.decode(rgb[1]), self.decode(rgb[2])], fast_cbrt)
    }

    /// [`LabConverter::lab`] of `rgb[c][i] / div` for every `i`, into the
    /// planes `lab[c]`: the same arithmetic, bit for bit, in two passes: the
    /// table lookups, then the matrix and cube roots as plain loops over
    /// arrays, which the compiler vectorises (a row at a time is a quarter of
    /// the scalar time).
    pub fn lab_planes(&self, rgb: [&[f32]; 3], div: f32, lab: [&mut [f32]; 3]) {
        let n = rgb.iter().map(|c| c.len()).chain(lab.iter().map(|c| c.len())).min().unwrap_or(0);
        const CHUNK: usize = 128;
        let mut lin = [[0f32; CHUNK]; 3];
        let [l_out, a_out, b_out] = lab;
        for start in (0..n).step_by(CHUNK) {
            let m = CHUNK.min(n - start);
            for (c, lin) in lin.iter_mut().enumerate() {
                for (o, &v) in lin[..m].iter_mut().zip(&rgb[c][start..start + m]) {
                    *o = self.decode(v / div);
                }
            }
            let [r, g, b] = &lin;
            for i in 0..m {
                let [l, a, bb] = xyz_to_lab([r[i], g[i], b[i]], fast_cbrt);
                l_out[start + i] = l;
                a_out[start + i] = a;
                b_out[start + i] = bb;
            }
        }
    }
}

/// Cube root of a positive value: an exponent-halving first guess (within
/// ~6%), then two steps of Halley's method (cubic convergence: 1e-4, then
/// beyond f32 precision).
#[inline]
fn fast_cbrt(t: f32) -> f32 {
    if t <= 0.0 {
        return 0.0;
    }
    let mut y = f32::from_bits(t.to_bits() / 3 + 709_921_077);
    for _ in 0..2 {
        let y3 = y * y * y;
        y *= (y3 + 2.0 * t) / (2.0 * y3 + t);
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn lab_of_white_and_black() {
        let w = srgb_to_lab([1.0, 1.0, 1.0]);
        assert!((w[0] - 100.0).abs() < 0.05 && w[1].abs() < 0.05 && w[2].abs() < 0.05, "{w:?}");
        let k = srgb_to_lab([0.0, 0.0, 0.0]);
        assert!(k[0].abs() < 0.05, "{k:?}");
        // Pure sRGB red: L 53.24, a 80.09, b 67.20 (standard reference values).
        let r = srgb_to_lab([1.0, 0.0, 0.0]);
        assert!((r[0] - 53.24).abs() < 0.1 && (r[1] - 80.09).abs() < 0.2 && (r[2] - 67.20).abs() < 0.2, "{r:?}");
    }

    #[test]
    fn fast_lab_matches_the_exact_formula() {
        let conv = LabConverter::new();
        let mut worst = 0f32;
        for i in 0..=20_000 {
            let v = i as f32 / 20_000.0;
            for rgb in [[v, v, v], [v, 1.0 - v, 0.5], [0.9, v, v * v], [v.sqrt(), 0.02, v]] {
                let (a, b) = (conv.lab(rgb), srgb_to_lab(rgb));
                for c in 0..3 {
                    worst = worst.max((a[c] - b[c]).abs());
                }
            }
        }
        // Lab channels span ~100 units: 1e-3 is far below anything a model sees.
        assert!(worst < 1e-3, "largest difference {worst}");
        eprintln!("largest Lab difference {worst}");
        for t in [1e-6f32, 0.008, 0.01, 0.3, 1.0, 1.06] {
            assert!((fast_cbrt(t) - t.cbrt()).abs() <= 2.0 * f32::EPSILON * t.cbrt(), "{t}");
        }
    }

    #[test]
    fn background_is_the_bright_glass_not_the_cells() {
        // 80% glass (230, 220, 200), 20% dark "cells".
        let img = RgbImage::from_fn(100, 100, |x, _| if x < 20 { Rgb([80, 40, 120]) } else { Rgb([230, 220, 200]) });
        let bg = Background::estimate(&img);
        assert_eq!(bg.0, [230.0, 220.0, 200.0]);
        let t = bg.transmittance([115, 220, 250]);
        assert_eq!(t, [0.5, 1.0, 1.0]);
    }
}
