//! Image operations shared by detection, preprocessing and the pipeline:
//! integer box downsampling, Otsu's threshold, mirror indexing at image
//! borders and the union-find root used to group components. Each is written
//! once here; the callers differ only in what they feed them.

use image::RgbImage;
use std::borrow::Cow;

/// Box-filter downsampling by an integer factor (partial blocks at the right
/// and bottom edges average what they have). This is the one pass over the
/// full image, so rows are first summed vertically (a loop the compiler
/// vectorises), then each summed row horizontally.
pub fn downsample(img: &RgbImage, k: u32) -> Cow<'_, RgbImage> {
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
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// [`downsample`] of a rectangle inside `img` (clipped to it), read in place
/// rather than copied out first.
pub fn downsample_rect(img: &RgbImage, rect: Rect, k: u32) -> RgbImage {
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
        // Whole blocks of k columns, then the partial one at the right edge
        // (if any): no per-pixel test for which kind a block is.
        let whole = w / k;
        let (blocks, tail) = column_sums.split_at(whole * k * 3);
        let (dst_whole, dst_tail) = dst.split_at_mut(whole * 3);
        means_of_blocks(dst_whole, blocks, k, full);
        if !tail.is_empty() {
            mean_of_block(dst_tail, tail, reciprocal(n_rows as u64 * (tail.len() / 3) as u64));
        }
    }
    // The buffer holds exactly ow * oh * 3 bytes, so this cannot fail.
    RgbImage::from_raw(ow as u32, oh as u32, out).unwrap_or_default()
}

/// The rounded means of consecutive blocks of `k` summed RGB columns, one
/// output pixel each, all by the same `(n, reciprocal)`. The usual factors
/// get a loop of known length, which the compiler unrolls.
pub fn means_of_blocks<T: Copy + Into<u32>>(dst: &mut [u8], sums: &[T], k: usize, full: (u64, u64)) {
    fn fixed<T: Copy + Into<u32>, const K: usize>(dst: &mut [u8], sums: &[T], full: (u64, u64)) {
        for (d, block) in dst.chunks_exact_mut(3).zip(sums.chunks_exact(K * 3)) {
            let mut sum = [0u32; 3];
            for j in 0..K {
                sum[0] += block[3 * j].into();
                sum[1] += block[3 * j + 1].into();
                sum[2] += block[3 * j + 2].into();
            }
            write_means(d, sum, full);
        }
    }
    match k {
        2 => fixed::<T, 2>(dst, sums, full),
        3 => fixed::<T, 3>(dst, sums, full),
        4 => fixed::<T, 4>(dst, sums, full),
        _ => {
            for (d, block) in dst.chunks_exact_mut(3).zip(sums.chunks_exact(k * 3)) {
                mean_of_block(d, block, full);
            }
        }
    }
}

/// One output pixel from its three channel sums: each rounded to the mean by
/// the block's `(n, reciprocal)` ([`reciprocal`]).
#[inline(always)]
pub fn write_means(d: &mut [u8], sum: [u32; 3], (n, recip): (u64, u64)) {
    for c in 0..3 {
        d[c] = (((sum[c] as u64 + n / 2) * recip) >> 32).min(255) as u8;
    }
}

/// One output pixel: the rounded mean of a block of summed RGB columns, by
/// the block's `(n, reciprocal)`.
#[inline(always)]
fn mean_of_block<T: Copy + Into<u32>>(d: &mut [u8], block: &[T], (n, recip): (u64, u64)) {
    let mut sum = [0u32; 3];
    for px in block.chunks_exact(3) {
        sum[0] += px[0].into();
        sum[1] += px[1].into();
        sum[2] += px[2].into();
    }
    write_means(d, sum, (n, recip));
}

/// `(n, ceil(2^32 / n))` for rounded division of byte sums by n: exact while
/// n < 4096 (blocks up to 64x64), off by at most one beyond.
pub fn reciprocal(n: u64) -> (u64, u64) {
    let n = n.max(1);
    (n, (1u64 << 32).div_ceil(n))
}

/// Otsu threshold over values in [0, 3] (64 bins).
pub fn otsu(values: impl Iterator<Item = f32>) -> Option<f32> {
    const BINS: usize = 64;
    const HI: f32 = 3.0;
    let mut hist = [0u64; BINS];
    let mut n = 0u64;
    for v in values {
        let b = ((v / HI) * BINS as f32).clamp(0.0, BINS as f32 - 1.0) as usize;
        hist[b] += 1;
        n += 1;
    }
    if n == 0 {
        return None;
    }
    let centre = |i: usize| (i as f64 + 0.5) * HI as f64 / BINS as f64;
    let total: f64 = hist.iter().enumerate().map(|(i, &c)| c as f64 * centre(i)).sum();
    let (mut w0, mut m0) = (0f64, 0f64);
    let mut best = (0f64, None);
    for (i, &c) in hist.iter().enumerate() {
        w0 += c as f64;
        m0 += c as f64 * centre(i);
        let w1 = n as f64 - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let between = (total * w0 / n as f64 - m0).powi(2) / (w0 * w1);
        if between > best.0 {
            best = (between, Some(centre(i) as f32));
        }
    }
    best.1
}

/// Mirror index into 0..n (edge pixel not repeated), for any distance outside.
pub fn reflect(i: i64, n: i64) -> u32 {
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as u32
}

/// Root of `a` in a union-find forest (with path halving).
pub fn find_root(parent: &mut [u32], mut a: u32) -> u32 {
    while parent[a as usize] != a {
        parent[a as usize] = parent[parent[a as usize] as usize];
        a = parent[a as usize];
    }
    a
}

#[cfg(test)]
mod tests {
    use super::testing::noisy_field;
    use super::*;
    use image::Rgb;

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
    fn narrow_and_wide_sums_downsample_alike() {
        let field = noisy_field(641, 479);
        for k in [2, 3, 4, 7, 16] {
            assert!(downsample_with::<u16>(&field, k) == downsample_with::<u32>(&field, k), "k = {k}");
        }
    }

    /// Every block's rounded mean, partial blocks at the right and bottom
    /// included, as the plain per-pixel loop computes it.
    #[test]
    fn downsampling_equals_the_plain_block_mean() {
        let field = noisy_field(643, 481);
        for k in [2, 3, 4, 5, 7, 16] {
            let d = downsample(&field, k);
            let (w, h) = (field.width(), field.height());
            let plain = RgbImage::from_fn(w.div_ceil(k), h.div_ceil(k), |ox, oy| {
                let (mut acc, mut n) = ([0u32; 3], 0u32);
                for y in oy * k..((oy + 1) * k).min(h) {
                    for x in ox * k..((ox + 1) * k).min(w) {
                        for (a, &v) in acc.iter_mut().zip(&field.get_pixel(x, y).0) {
                            *a += v as u32;
                        }
                        n += 1;
                    }
                }
                Rgb(acc.map(|a| ((a + n / 2) / n) as u8))
            });
            assert!(*d == plain, "k = {k}");
        }
    }

    /// Downsampling a rectangle in place gives the pixels of downsampling a
    /// copy of it (what scale estimation did before), clipped at the border.
    #[test]
    fn a_rectangle_downsamples_as_its_copy_does() {
        let field = noisy_field(700, 500);
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
    fn reflection_stays_inside() {
        let idx: Vec<u32> = (-4..8).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, vec![2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]);
        assert_eq!(reflect(-1000, 1), 0);
        assert!((-500..500).all(|i| reflect(i, 7) < 7));
    }
}

/// Test images for the unit tests of every module (no data folder needed).
#[cfg(test)]
pub(crate) mod testing {
    use image::{Rgb, RgbImage};

    /// A field-sized image of every byte value: a smooth gradient (like
    /// glass and cells) plus pseudo-random noise (like a sensor), so that
    /// sums reach their extremes and no rounding case is left out.
    pub fn noisy_field(w: u32, h: u32) -> RgbImage {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        RgbImage::from_fn(w, h, |x, y| {
            let mut c = [0u8; 3];
            for (i, v) in c.iter_mut().enumerate() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let smooth = (x * (i as u32 + 1) + y * 2) % 256;
                *v = ((smooth + (seed % 96) as u32) % 256) as u8;
            }
            Rgb(c)
        })
    }

    /// A filled disc, as a predicate for `Mask::from_fn`.
    pub fn disc(w: u32, h: u32, cx: f32, cy: f32, r: f32) -> impl Fn(u32, u32) -> bool {
        let _ = (w, h);
        move |x, y| (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) <= r * r
    }
}
