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
        let mut hist = [0u32; 766];
        for p in img.pixels() {
            hist[p.0[0] as usize + p.0[1] as usize + p.0[2] as usize] += 1;
        }
        let n = img.width() as u64 * img.height() as u64;
        if n == 0 {
            return Background([255.0; 3]);
        }
        let lo = percentile_bin(&hist, n, 0.85);
        let hi = percentile_bin(&hist, n, 0.99).max(lo);
        let mut sum = [0u64; 3];
        let mut count = 0u64;
        for p in img.pixels() {
            let l = p.0[0] as usize + p.0[1] as usize + p.0[2] as usize;
            if l >= lo && l <= hi {
                for (s, &v) in sum.iter_mut().zip(&p.0) {
                    *s += v as u64;
                }
                count += 1;
            }
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
fn percentile_bin(hist: &[u32], n: u64, q: f64) -> usize {
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
    fn lin(c: f32) -> f32 {
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    }
    let (r, g, b) = (lin(rgb[0]), lin(rgb[1]), lin(rgb[2]));
    let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
    let z = (0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b) / 1.088_83;
    fn f(t: f32) -> f32 {
        const D: f32 = 6.0 / 29.0;
        if t > D * D * D {
            t.cbrt()
        } else {
            t / (3.0 * D * D) + 4.0 / 29.0
        }
    }
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
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
    fn background_is_the_bright_glass_not_the_cells() {
        // 80% glass (230, 220, 200), 20% dark "cells".
        let img = RgbImage::from_fn(100, 100, |x, _| if x < 20 { Rgb([80, 40, 120]) } else { Rgb([230, 220, 200]) });
        let bg = Background::estimate(&img);
        assert_eq!(bg.0, [230.0, 220.0, 200.0]);
        let t = bg.transmittance([115, 220, 250]);
        assert_eq!(t, [0.5, 1.0, 1.0]);
    }
}
