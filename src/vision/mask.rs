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
        self.chamfer(0)
    }

    /// [`Mask::distance_transform`] to the nearest background pixel *seen*:
    /// outside the image is not background, so an object cut by the border
    /// keeps, where it is visible, the distances it has whole (a round cell
    /// whose centre is in the image has its full inscribed radius there).
    pub fn distance_transform_to_seen_background(&self) -> Vec<u16> {
        self.chamfer(CHAMFER_INF)
    }

    /// The two-pass chamfer transform with the pixels outside the image set to
    /// `outside` (0: background; [`CHAMFER_INF`]: as far from background as can be).
    fn chamfer(&self, outside: u16) -> Vec<u16> {
        let (w, h) = (self.width as usize, self.height as usize);
        const INF: u16 = CHAMFER_INF;
        // A one-pixel frame around the image spares the inner loops any
        // bounds checks; the passes never write it.
        let pw = w + 2;
        let mut d = vec![outside; pw * (h + 2)];
        for (y, row) in self.data.chunks_exact(w.max(1)).enumerate().take(h) {
            let start = (y + 1) * pw + 1;
            for (o, &b) in d[start..start + w].iter_mut().zip(row) {
                *o = if b { INF } else { 0 };
            }
        }
        // Each pass takes the three neighbours in the row already done for a
        // whole row first (independent: vectorised), leaving only the
        // neighbour along the row to the serial loop.
        let mut across = vec![0u16; w];
        for y in 1..=h {
            let (done, rest) = d.split_at_mut(y * pw);
            row_min(&mut across, &done[(y - 1) * pw..]);
            let row = &mut rest[..pw];
            let mut left = row[0];
            for (c, &a) in row[1..=w].iter_mut().zip(&across) {
                // A select, not a branch: object edges are everywhere.
                *c = if *c != 0 { (*c).min(a).min(left + 3) } else { 0 };
                left = *c;
            }
        }
        for y in (1..=h).rev() {
            let (rest, done) = d.split_at_mut((y + 1) * pw);
            row_min(&mut across, &done[..pw]);
            let row = &mut rest[y * pw..];
            let mut right = row[w + 1];
            for (c, &a) in row[1..=w].iter_mut().zip(&across).rev() {
                *c = if *c != 0 { (*c).min(a).min(right + 3) } else { 0 };
                right = *c;
            }
        }
        let mut out = Vec::with_capacity(w * h);
        for y in 1..=h {
            out.extend_from_slice(&d[y * pw + 1..y * pw + 1 + w]);
        }
        out
    }
}

/// Distance of a pixel that no background is near; small enough that adding a
/// step (3 or 4) cannot overflow.
const CHAMFER_INF: u16 = u16::MAX - 8;

/// `out[x]`: the chamfer distance through the framed row `neighbours` (one
/// pixel of frame each side) to pixel x of the next row: straight 3, diagonal 4.
fn row_min(out: &mut [u16], neighbours: &[u16]) {
    let n = &neighbours[..out.len() + 2];
    for (x, o) in out.iter_mut().enumerate() {
        *o = (n[x + 1] + 3).min(n[x] + 4).min(n[x + 2] + 4);
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
    fn a_disc_cut_by_the_border_keeps_its_radius_to_the_seen_background() {
        // Centre 5 px inside the left border, radius 12: 7 px of it are outside.
        let m = Mask::from_fn(41, 41, disc(41, 41, 5.0, 20.0, 12.0));
        let seen = m.distance_transform_to_seen_background();
        let whole = Mask::from_fn(41, 41, disc(41, 41, 20.0, 20.0, 12.0)).distance_transform();
        let peak = *whole.iter().max().unwrap();
        // At the cut disc's centre: its whole radius, as a disc in full view has.
        assert_eq!(seen[20 * 41 + 5], peak);
        // With the border as background, the border limits it to 6 px (18 units).
        assert_eq!(m.distance_transform()[20 * 41 + 5], 18);
        // Background stays 0; a full mask sees no background at all.
        assert_eq!(seen[20 * 41 + 40], 0);
        assert!(Mask::from_fn(4, 4, |_, _| true)
            .distance_transform_to_seen_background()
            .iter()
            .all(|&v| v == CHAMFER_INF));
        assert!(Mask::new(0, 0).distance_transform_to_seen_background().is_empty());
    }

    /// The textbook two-pass chamfer transform, kept to check the row-split one.
    fn distance_transform_reference(m: &Mask) -> Vec<u16> {
        let (w, h) = (m.width as i64, m.height as i64);
        let mut d: Vec<u32> = m.data.iter().map(|&b| if b { u32::MAX / 2 } else { 0 }).collect();
        let at =
            |d: &Vec<u32>, x: i64, y: i64| if x < 0 || y < 0 || x >= w || y >= h { 0 } else { d[(y * w + x) as usize] };
        for y in 0..h {
            for x in 0..w {
                let v = (at(&d, x - 1, y) + 3)
                    .min(at(&d, x, y - 1) + 3)
                    .min(at(&d, x - 1, y - 1) + 4)
                    .min(at(&d, x + 1, y - 1) + 4);
                let i = (y * w + x) as usize;
                d[i] = d[i].min(v);
            }
        }
        for y in (0..h).rev() {
            for x in (0..w).rev() {
                let v = (at(&d, x + 1, y) + 3)
                    .min(at(&d, x, y + 1) + 3)
                    .min(at(&d, x + 1, y + 1) + 4)
                    .min(at(&d, x - 1, y + 1) + 4);
                let i = (y * w + x) as usize;
                d[i] = d[i].min(v);
            }
        }
        d.into_iter().map(|v| v as u16).collect()
    }

    #[test]
    fn distance_transform_equals_the_textbook_one() {
        let mut state = 777u32;
        for (w, h) in [(1, 1), (1, 9), (9, 1), (3, 3), (40, 23), (97, 61)] {
            // Blobs of several sizes: random squares on an empty mask, and their complement.
            let mut m = Mask::new(w, h);
            for _ in 0..(w * h / 40).max(1) {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let (cx, cy, r) = ((state >> 8) % w, (state >> 16) % h, (state >> 24) % 9);
                for y in cy.saturating_sub(r)..(cy + r + 1).min(h) {
                    for x in cx.saturating_sub(r)..(cx + r + 1).min(w) {
                        m.data[(y * w + x) as usize] = true;
                    }
                }
            }
            let inverse = Mask { width: w, height: h, data: m.data.iter().map(|&b| !b).collect() };
            for mask in [&m, &inverse] {
                assert_eq!(mask.distance_transform(), distance_transform_reference(mask), "{w}x{h}");
            }
        }
    }

    /// Hole filling as a flood from the border through 4-connected background,
    /// pixel by pixel: kept to check the run-based one.
    fn fill_holes_reference(m: &Mask) -> Mask {
        let (w, h) = (m.width as i64, m.height as i64);
        let mut outside = vec![false; m.data.len()];
        let mut stack: Vec<(i64, i64)> = Vec::new();
        for y in 0..h {
            for x in 0..w {
                if x == 0 || y == 0 || x == w - 1 || y == h - 1 {
                    stack.push((x, y));
                }
            }
        }
        while let Some((x, y)) = stack.pop() {
            let i = (y * w + x) as usize;
            if x < 0 || y < 0 || x >= w || y >= h || m.data[i] || outside[i] {
                continue;
            }
            outside[i] = true;
            stack.extend([(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)]);
        }
        Mask { width: m.width, height: m.height, data: outside.iter().map(|&o| !o).collect() }
    }

    #[test]
    fn fill_holes_equals_the_flood_fill() {
        let mut state = 4242u32;
        for (w, h) in [(1, 1), (1, 6), (6, 1), (2, 3), (31, 17), (80, 57)] {
            for density in [30u32, 50, 70] {
                let data = (0..w * h)
                    .map(|_| {
                        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        (state >> 16) % 100 < density
                    })
                    .collect();
                let m = Mask { width: w, height: h, data };
                assert!(m.fill_holes() == fill_holes_reference(&m), "{w}x{h} at {density}%");
            }
        }
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
