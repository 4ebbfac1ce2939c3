//! Connected components of a [`Mask`]: labels, and per component its area,
//! box and centroid. Run-based (a blob costs per run of pixels, not per
//! pixel), because every camera frame is labelled on a Raspberry Pi.

use crate::vision::imageops::find_root;
use crate::vision::mask::{BBox, Mask};

impl Mask {
    /// 8-connected components, in raster order of their first pixel.
    pub fn components(&self) -> Labels {
        let (w, h) = (self.width as usize, self.height as usize);
        let (runs, mut parent) = self.joined_runs();
        let mut labels = vec![0u32; w * h];
        let comps = runs_to_components(&runs, &mut parent, |id, y, x0, x1| {
            let start = y as usize * w;
            labels[start + x0 as usize..start + x1 as usize].fill(id);
        });
        Labels { width: self.width, height: self.height, labels, components: comps }
    }

    /// The components of [`Mask::components`] without the label image, for
    /// callers that need only their statistics.
    pub fn component_stats(&self) -> Vec<Component> {
        let (runs, mut parent) = self.joined_runs();
        runs_to_components(&runs, &mut parent, |_, _, _, _| {})
    }

    /// Runs of foreground `(y, x0, x1 exclusive)` in raster order, and their
    /// union-find forest (8-connected runs joined).
    fn joined_runs(&self) -> (Vec<(u32, u32, u32)>, Vec<u32>) {
        self.joined_runs_of(true, true)
    }

    /// Fills holes: background regions not connected (4-connected) to the
    /// image border become foreground, e.g. the pale centre of a red cell.
    /// By runs of background and union-find, not a pixel-by-pixel flood.
    pub fn fill_holes(&self) -> Mask {
        let (w, h) = (self.width, self.height);
        let mut filled = self.clone();
        let (runs, mut parent) = self.joined_runs_of(false, false);
        let mut reaches_border = vec![false; runs.len()];
        for (i, &(y, x0, x1)) in runs.iter().enumerate() {
            if y == 0 || y + 1 == h || x0 == 0 || x1 == w {
                reaches_border[find_root(&mut parent, i as u32) as usize] = true;
            }
        }
        for (i, &(y, x0, x1)) in runs.iter().enumerate() {
            if !reaches_border[find_root(&mut parent, i as u32) as usize] {
                let start = (y * w) as usize;
                filled.data[start + x0 as usize..start + x1 as usize].fill(true);
            }
        }
        filled
    }

    /// Runs of pixels equal to `value` and their union-find forest: runs
    /// joined when they overlap, and also when they touch at a corner if
    /// `diagonal` (8-connected; else 4-connected).
    fn joined_runs_of(&self, value: bool, diagonal: bool) -> (Vec<(u32, u32, u32)>, Vec<u32>) {
        let d = u32::from(diagonal);
        // Run-based labelling: each row's runs are joined with the runs of
        // the row above that touch them (overlapping, or diagonal too when
        // 8-connected), by union-find over runs. A blob costs per run, not per
        // pixel. Ids are dense, in raster order of each component's first pixel.
        let (w, h) = (self.width as usize, self.height as usize);
        let mut runs: Vec<(u32, u32, u32)> = Vec::new(); // (y, x0, x1 exclusive)
        let mut row_start = Vec::with_capacity(h + 1);
        for (y, row) in self.data.chunks_exact(w.max(1)).take(h).enumerate() {
            row_start.push(runs.len());
            let mut x = 0;
            while x < w {
                if row[x] != value {
                    x += 1;
                    continue;
                }
                let x0 = x;
                while x < w && row[x] == value {
                    x += 1;
                }
                runs.push((y as u32, x0 as u32, x as u32));
            }
        }
        row_start.push(runs.len());
        let mut parent: Vec<u32> = (0..runs.len() as u32).collect();
        for y in 1..h {
            let (above, here) = (row_start[y - 1]..row_start[y], row_start[y]..row_start[y + 1]);
            let mut a = above.start;
            for r in here {
                let (_, x0, x1) = runs[r];
                // Runs above ending before x0 (x0 - 1 with diagonals) cannot
                // touch this or later runs.
                while a < above.end && runs[a].2 + d <= x0 {
                    a += 1;
                }
                let mut b = a;
                while b < above.end && runs[b].1 < x1 + d {
                    let (ra, rb) = (find_root(&mut parent, r as u32), find_root(&mut parent, b as u32));
                    if ra != rb {
                        parent[ra.max(rb) as usize] = ra.min(rb);
                    }
                    b += 1;
                }
            }
        }
        (runs, parent)
    }
}

/// Dense component ids in raster order of each component's first pixel, and
/// their statistics; `each_run(id, y, x0, x1)` sees every run with its id.
fn runs_to_components(
    runs: &[(u32, u32, u32)],
    parent: &mut [u32],
    mut each_run: impl FnMut(u32, u32, u32, u32),
) -> Vec<Component> {
    let mut dense = vec![0u32; runs.len()];
    let mut comps: Vec<Component> = Vec::new();
    for (i, &(y, x0, x1)) in runs.iter().enumerate() {
        let root = find_root(parent, i as u32) as usize;
        if dense[root] == 0 {
            comps.push(Component { area: 0, bbox: BBox { x0, y0: y, x1, y1: y + 1 }, sum_x: 0, sum_y: 0 });
            dense[root] = comps.len() as u32;
        }
        let id = dense[root];
        each_run(id, y, x0, x1);
        let c = &mut comps[id as usize - 1];
        let len = (x1 - x0) as u64;
        c.area += len;
        c.sum_x += (x0 as u64 + x1 as u64 - 1) * len / 2;
        c.sum_y += y as u64 * len;
        c.bbox.x0 = c.bbox.x0.min(x0);
        c.bbox.x1 = c.bbox.x1.max(x1);
        c.bbox.y1 = y + 1;
    }
    comps
}

/// Result of labelling: `labels[i]` is 0 for background, else component id (1-based).
#[derive(Debug, Clone)]
pub struct Labels {
    pub width: u32,
    pub height: u32,
    pub labels: Vec<u32>,
    pub components: Vec<Component>,
}

/// Statistics of one connected component.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Component {
    pub area: u64,
    pub bbox: BBox,
    sum_x: u64,
    sum_y: u64,
}

impl Component {
    pub fn centroid(&self) -> (f32, f32) {
        let a = self.area.max(1) as f32;
        (self.sum_x as f32 / a, self.sum_y as f32 / a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::imageops::testing::disc;

    /// Pixel-by-pixel union-find labelling, kept to check the run-based one.
    fn components_reference(m: &Mask) -> Labels {
        let (w, h) = (m.width as usize, m.height as usize);
        let mut labels = vec![0u32; w * h];
        let mut parent: Vec<u32> = vec![0];
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if !m.data[i] {
                    continue;
                }
                let mut best = 0u32;
                let mut neigh = [0u32; 4];
                let mut k = 0;
                if x > 0 && labels[i - 1] != 0 {
                    neigh[k] = labels[i - 1];
                    k += 1;
                }
                if y > 0 {
                    let up = i - w;
                    if labels[up] != 0 {
                        neigh[k] = labels[up];
                        k += 1;
                    }
                    if x > 0 && labels[up - 1] != 0 {
                        neigh[k] = labels[up - 1];
                        k += 1;
                    }
                    if x + 1 < w && labels[up + 1] != 0 {
                        neigh[k] = labels[up + 1];
                        k += 1;
                    }
                }
                for &n in &neigh[..k] {
                    let rn = find_root(&mut parent, n);
                    if best == 0 || rn < best {
                        best = rn;
                    }
                }
                if best == 0 {
                    best = parent.len() as u32;
                    parent.push(best);
                } else {
                    for &n in &neigh[..k] {
                        let rn = find_root(&mut parent, n);
                        parent[rn as usize] = best;
                    }
                }
                labels[i] = best;
            }
        }
        // Resolve to dense ids 1..=n and gather statistics.
        let mut dense = vec![0u32; parent.len()];
        let mut comps: Vec<Component> = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if labels[i] == 0 {
                    continue;
                }
                let root = find_root(&mut parent, labels[i]) as usize;
                if dense[root] == 0 {
                    comps.push(Component {
                        area: 0,
                        bbox: BBox { x0: x as u32, y0: y as u32, x1: x as u32 + 1, y1: y as u32 + 1 },
                        sum_x: 0,
                        sum_y: 0,
                    });
                    dense[root] = comps.len() as u32;
                }
                let id = dense[root];
                labels[i] = id;
                let c = &mut comps[id as usize - 1];
                c.area += 1;
                c.sum_x += x as u64;
                c.sum_y += y as u64;
                c.bbox.x0 = c.bbox.x0.min(x as u32);
                c.bbox.y0 = c.bbox.y0.min(y as u32);
                c.bbox.x1 = c.bbox.x1.max(x as u32 + 1);
                c.bbox.y1 = c.bbox.y1.max(y as u32 + 1);
            }
        }
        Labels { width: m.width, height: m.height, labels, components: comps }
    }

    /// Run-based labelling equals the per-pixel one (labels, ids, statistics)
    /// on random masks of every density and on thresholded noise.
    #[test]
    fn run_labelling_equals_pixel_labelling() {
        let mut seed = 12345u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let mut masks = Vec::new();
        for (w, h) in [(1, 1), (1, 9), (9, 1), (37, 23), (64, 64)] {
            for density in [0, 10, 45, 70, 100] {
                let data = (0..w * h).map(|_| rnd() % 100 < density).collect();
                masks.push(Mask { width: w, height: h, data });
            }
        }
        // Field-sized masks with blobs of every shape: a smooth gradient plus noise, thresholded.
        let field = crate::vision::imageops::testing::noisy_field(640, 480);
        for t in [60u8, 120, 170, 200] {
            masks.push(Mask::from_fn(field.width(), field.height(), |x, y| field.get_pixel(x, y).0[1] < t));
        }
        for m in &masks {
            let (fast, slow) = (m.components(), components_reference(m));
            assert_eq!(fast.labels, slow.labels, "{}x{}", m.width, m.height);
            assert_eq!(fast.components, slow.components, "{}x{}", m.width, m.height);
            assert_eq!(m.component_stats(), slow.components, "{}x{}", m.width, m.height);
        }
        assert!(masks.last().is_some_and(|m| m.components().components.len() > 10));
    }

    #[test]
    fn components_count_separate_blobs_and_join_diagonals() {
        let a = disc(60, 40, 10.0, 10.0, 5.0);
        let b = disc(60, 40, 40.0, 20.0, 8.0);
        let m = Mask::from_fn(60, 40, |x, y| a(x, y) || b(x, y) || (x == 55 && y == 2) || (x == 56 && y == 3));
        let l = m.components();
        assert_eq!(l.components.len(), 3, "diagonal pair is one 8-connected component");
        let total: u64 = l.components.iter().map(|c| c.area).sum();
        assert_eq!(total as usize, m.count());
        let big = l.components.iter().max_by_key(|c| c.area).unwrap();
        let (cx, cy) = big.centroid();
        assert!((cx - 40.0).abs() < 0.5 && (cy - 20.0).abs() < 0.5);
        assert_eq!(big.bbox, BBox { x0: 32, y0: 12, x1: 49, y1: 29 });
    }

    #[test]
    fn u_shape_merges_into_one_label() {
        // A U: two arms joined only at the bottom, a classic union-find case.
        let m = Mask::from_fn(10, 10, |x, y| (x == 1 || x == 8) && y < 9 || y == 8 && (1..=8).contains(&x));
        let l = m.components();
        assert_eq!(l.components.len(), 1);
        assert_eq!(l.components[0].area as usize, m.count());
    }
}
