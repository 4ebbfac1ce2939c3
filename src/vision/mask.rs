//! Binary masks: thresholding results and square morphology (components: [`crate::vision::components`]).
//!
//! Small and allocation-light on purpose: segmentation runs on every camera frame
//! on a Raspberry Pi, and these few operations are all it needs.

/// Axis-aligned box in pixel coordinates, `x1`/`y1` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BBox {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl BBox {
    pub fn width(&self) -> u32 {
        self.x1.saturating_sub(self.x0)
    }
    pub fn height(&self) -> u32 {
        self.y1.saturating_sub(self.y0)
    }
    pub fn area(&self) -> u64 {
        self.width() as u64 * self.height() as u64
    }
    pub fn center(&self) -> (f32, f32) {
        ((self.x0 + self.x1) as f32 / 2.0, (self.y0 + self.y1) as f32 / 2.0)
    }
    pub fn union(&self, o: &BBox) -> BBox {
        BBox { x0: self.x0.min(o.x0), y0: self.y0.min(o.y0), x1: self.x1.max(o.x1), y1: self.y1.max(o.y1) }
    }
    /// Chebyshev gap between two boxes (0 when they touch or overlap).
    pub fn gap(&self, o: &BBox) -> u32 {
        let gx = self.x0.max(o.x0).saturating_sub(self.x1.min(o.x1));
        let gy = self.y0.max(o.y0).saturating_sub(self.y1.min(o.y1));
        gx.max(gy)
    }
    pub fn intersection_over_union(&self, o: &BBox) -> f32 {
        let ix = self.x1.min(o.x1).saturating_sub(self.x0.max(o.x0)) as u64;
        let iy = self.y1.min(o.y1).saturating_sub(self.y0.max(o.y0)) as u64;
        let inter = ix * iy;
        let uni = self.area() + o.area() - inter;
        if uni == 0 {
            0.0
        } else {
            inter as f32 / uni as f32
        }
    }
}

/// A binary image, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    pub data: Vec<bool>,
}

impl Mask {
    pub fn new(width: u32, height: u32) -> Mask {
        Mask { width, height, data: vec![false; width as usize * height as usize] }
    }

    pub fn from_fn(width: u32, height: u32, f: impl Fn(u32, u32) -> bool) -> Mask {
        let mut data = Vec::with_capacity(width as usize * height as usize);
        for y in 0..height {
            for x in 0..width {
                data.push(f(x, y));
            }
        }
        Mask { width, height, data }
    }

    #[inline]
    pub fn get(&self, x: u32, y: u32) -> bool {
        self.data[(y * self.width + x) as usize]
    }

    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&b| b).count()
    }

    /// Dilation (`grow = true`) or erosion by a (2r+1)x(2r+1) square, separable.
    /// Outside the image counts as background for dilation and foreground for
    /// erosion, so objects touching the border are not eaten from outside.
    fn morph(&self, r: u32, grow: bool) -> Mask {
        if r == 0 {
            return self.clone();
        }
        let (w, h) = (self.width as usize, self.height as usize);
        let r = r as usize;
        let pass = |src: &[bool], len: usize, stride: usize, lines: usize, line_stride: usize| {
            let mut out = vec![false; src.len()];
            for l in 0..lines {
                let base = l * line_stride;
                // Running count of set pixels in the window [i-r, i+r].
                let mut cnt = 0usize;
                for i in 0..r.min(len) {
                    cnt += src[base + i * stride] as usize;
                }
                for i in 0..len {
                    if i + r < len {
                        cnt += src[base + (i + r) * stride] as usize;
                    }
                    if i > r {
                        cnt -= src[base + (i - r - 1) * stride] as usize;
                    }
                    let lo = i.saturating_sub(r);
                    let hi = (i + r).min(len - 1);
                    let inside = hi - lo + 1;
                    out[base + i * stride] = if grow { cnt > 0 } else { cnt == inside };
                }
            }
            out
        };
        let rows = pass(&self.data, w, 1, h, w);
        let cols = pass(&rows, h, w, w, 1);
        Mask { width: self.width, height: self.height, data: cols }
    }

    pub fn dilate(&self, r: u32) -> Mask {
        self.morph(r, true)
    }
    pub fn erode(&self, r: u32) -> Mask {
        self.morph(r, false)
    }
    /// Removes specks and thin bridges smaller than the square.
    pub fn open(&self, r: u32) -> Mask {
        self.erode(r).dilate(r)
    }
    /// Closes gaps and small holes smaller than the square.
    pub fn close(&self, r: u32) -> Mask {
        self.dilate(r).erode(r)
    }
}

/// Chamfer distance unit: [`Mask::distance_transform`] returns 3 per pixel step
/// (and 4 per diagonal step), within 6% of the Euclidean distance.
pub const CHAMFER_UNIT: u16 = 3;

impl Mask {
    /// Fills holes: background regions not connected (4-connected) to the
    /// image border become foreground, e.g. the pale centre of a red cell.
    pub fn fill_holes(&self) -> Mask {
        let (w, h) = (self.width as usize, self.height as usize);
        if w == 0 || h == 0 {
            return self.clone();
        }
        let mut outside = vec![false; w * h];
        let mut stack: Vec<usize> = Vec::new();
        let seed = |i: usize, outside: &mut Vec<bool>, stack: &mut Vec<usize>| {
            if !self.data[i] && !outside[i] {
                outside[i] = true;
                stack.push(i);
            }
        };
        for x in 0..w {
            seed(x, &mut outside, &mut stack);
            seed((h - 1) * w + x, &mut outside, &mut stack);
        }
        for y in 0..h {
            seed(y * w, &mut outside, &mut stack);
            seed(y * w + w - 1, &mut outside, &mut stack);
        }
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            if x > 0 {
                seed(i - 1, &mut outside, &mut stack);
            }
            if x + 1 < w {
                seed(i + 1, &mut outside, &mut stack);
            }
            if y > 0 {
                seed(i - w, &mut outside, &mut stack);
            }
            if y + 1 < h {
                seed(i + w, &mut outside, &mut stack);
            }
        }
        Mask { width: self.width, height: self.height, data: outside.iter().map(|&o| !o).collect() }
    }

    /// Same result as `dilate(1)` (3x3 square), as whole-row ORs that the
    /// compiler vectorises: ~20x faster, for per-frame use on large masks.
    pub fn dilate3x3(&self) -> Mask {
        self.morph3x3(true)
    }

    /// Same result as `erode(1)` (3x3 square; outside counts as foreground).
    pub fn erode3x3(&self) -> Mask {
        self.morph3x3(false)
    }

    fn morph3x3(&self, grow: bool) -> Mask {
        let (w, h) = (self.width as usize, self.height as usize);
        if w == 0 || h == 0 {
            return self.clone();
        }
        let op = |a: bool, b: bool| if grow { a | b } else { a & b };
        // Horizontal pass: neighbours x-1 and x+1; the missing neighbour at
        // either end is the pixel itself (neutral for both OR and AND).
        let mut rows = self.data.clone();
        for (dst, src) in rows.chunks_exact_mut(w).zip(self.data.chunks_exact(w)) {
            for x in 1..w {
                dst[x] = op(dst[x], src[x - 1]);
            }
            for x in 0..w - 1 {
                dst[x] = op(dst[x], src[x + 1]);
            }
        }
        // Vertical pass, whole rows at a time.
        let mut out = rows.clone();
        for y in 0..h {
            let (lo, hi) = (y.saturating_sub(1), (y + 1).min(h - 1));
            let dst = &mut out[y * w..(y + 1) * w];
            for yy in [lo, hi] {
                for (d, &s) in dst.iter_mut().zip(&rows[yy * w..(yy + 1) * w]) {
                    *d = op(*d, s);
                }
            }
        }
        Mask { width: self.width, height: self.height, data: out }
    }

    /// Chamfer (3-4) distance of each foreground pixel to the nearest
    /// background pixel, in units of [`CHAMFER_UNIT`] per pixel; 0 on
    /// background. Outside the image counts as background, so objects cut by
    /// the border look no bigger than what is visible. Two raster passes.
    pub fn distance_transform(&self) -> Vec<u16> {
        let (w, h) = (self.width as usize, self.height as usize);
        const INF: u16 = u16::MAX - 8;
        // A one-pixel frame of background around the image spares the inner
        // loops any bounds checks.
        let pw = w + 2;
        let mut d = vec![0u16; pw * (h + 2)];
        for (y, row) in self.data.chunks_exact(w.max(1)).enumerate().take(h) {
            for (x, &b) in row.iter().enumerate() {
                if b {
                    d[(y + 1) * pw + x + 1] = INF;
                }
            }
        }
        for y in 1..=h {
            for i in y * pw + 1..y * pw + 1 + w {
                if d[i] != 0 {
                    let v = (d[i - 1] + 3).min(d[i - pw] + 3).min(d[i - pw - 1] + 4).min(d[i - pw + 1] + 4);
                    d[i] = d[i].min(v);
                }
            }
        }
        for y in (1..=h).rev() {
            for i in (y * pw + 1..y * pw + 1 + w).rev() {
                if d[i] != 0 {
                    let v = (d[i + 1] + 3).min(d[i + pw] + 3).min(d[i + pw + 1] + 4).min(d[i + pw - 1] + 4);
                    d[i] = d[i].min(v);
                }
            }
        }
        let mut out = Vec::with_capacity(w * h);
        for y in 1..=h {
            out.extend_from_slice(&d[y * pw + 1..y * pw + 1 + w]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::imageops::testing::disc;

    #[test]
    fn opening_removes_specks_keeps_blobs() {
        let a = disc(50, 50, 25.0, 25.0, 10.0);
        let m = Mask::from_fn(50, 50, |x, y| a(x, y) || (x == 3 && y == 3));
        let o = m.open(1);
        assert!(!o.get(3, 3));
        assert!(o.get(25, 25));
        assert!(o.count() > m.count() * 9 / 10);
        let e = m.erode(2);
        let d = m.dilate(2);
        assert!(e.count() < m.count() && d.count() > m.count());
        // Closing fills a one-pixel hole.
        let h = Mask::from_fn(20, 20, |x, y| !(x == 10 && y == 10) && (5..15).contains(&x) && (5..15).contains(&y));
        assert!(h.close(1).get(10, 10));
    }

    #[test]
    fn iou_and_gap() {
        let a = BBox { x0: 0, y0: 0, x1: 10, y1: 10 };
        let b = BBox { x0: 5, y0: 0, x1: 15, y1: 10 };
        assert!((a.intersection_over_union(&b) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(a.gap(&b), 0);
        let c = BBox { x0: 20, y0: 3, x1: 25, y1: 5 };
        assert_eq!(a.gap(&c), 10);
    }

    #[test]
    fn fill_holes_fills_enclosed_background_only() {
        // A ring (hole inside) and a C shape (open to the outside).
        let ring = |x: u32, y: u32| {
            let d2 = (x as f32 - 10.0).powi(2) + (y as f32 - 10.0).powi(2);
            (16.0..=64.0).contains(&d2)
        };
        let c = |x: u32, y: u32| {
            (30..40).contains(&x) && (5..15).contains(&y) && !((33..40).contains(&x) && (8..12).contains(&y))
        };
        let m = Mask::from_fn(45, 22, |x, y| ring(x, y) || c(x, y));
        let f = m.fill_holes();
        assert!(f.get(10, 10), "ring centre filled");
        assert!(!f.get(36, 10), "open C is not a hole");
        assert!(!f.get(0, 0) && !f.get(44, 21));
        assert_eq!(Mask::new(0, 0).fill_holes().count(), 0);
        assert_eq!(Mask::from_fn(3, 3, |_, _| true).fill_holes().count(), 9);
    }

    #[test]
    fn distance_transform_of_a_disc_peaks_at_its_radius() {
        let a = disc(41, 41, 20.0, 20.0, 12.0);
        let m = Mask::from_fn(41, 41, a);
        let d = m.distance_transform();
        let peak = *d.iter().max().unwrap();
        // Chamfer 3-4 is within ~6% of Euclidean: radius 12 -> about 36 units.
        assert!((34..=40).contains(&peak), "peak {peak}");
        assert_eq!(d[20 * 41 + 20], peak);
        assert_eq!(d[0], 0);
        // A full mask: the distance is to the image border.
        let full = Mask::from_fn(5, 5, |_, _| true).distance_transform();
        assert_eq!(&full[10..15], &[3, 6, 9, 6, 3]);
        assert_eq!(&full[0..5], &[3, 3, 3, 3, 3]);
        assert!(Mask::new(0, 0).distance_transform().is_empty());
    }

    #[test]
    fn fast_3x3_morphology_equals_the_general_one() {
        // Pseudo-random masks of several shapes, borders included.
        let mut state = 12345u32;
        for (w, h) in [(1, 1), (1, 7), (7, 1), (2, 2), (31, 17), (64, 40)] {
            let data = (0..w * h)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    !(state >> 16).is_multiple_of(3)
                })
                .collect();
            let m = Mask { width: w, height: h, data };
            assert_eq!(m.dilate3x3(), m.dilate(1), "{w}x{h}");
            assert_eq!(m.erode3x3(), m.erode(1), "{w}x{h}");
        }
        assert_eq!(Mask::new(0, 0).dilate3x3(), Mask::new(0, 0));
    }
}
