//! The BCCD blood-smear field dataset (Pascal VOC layout) and the detection
//! evaluation used to tune and check [`crate::detect`].
//!
//! Annotation quirks handled here: some boxes run outside the image (clipped to
//! it) and a few are degenerate (empty or a few pixels wide after clipping).
//! Degenerate boxes are kept but flagged, and [`evaluate`] ignores degenerate
//! ground truth: a box with no extent cannot be matched at IoU >= 0.5 by any
//! detector, so counting it would only measure the annotation error.

use crate::mask::BBox;
use std::path::{Path, PathBuf};

/// Ground-truth boxes narrower or shorter than this (after clipping, in
/// pixels) are degenerate: BCCD's smallest real objects (platelets) are ~20 px.
pub const DEGENERATE_SIDE: u32 = 4;

/// IoU at which a detection matches a ground-truth box.
pub const MATCH_IOU: f32 = 0.5;

#[derive(Debug, thiserror::Error)]
pub enum BccdError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: malformed annotation: {msg}")]
    Malformed { path: PathBuf, msg: String },
}

/// Object classes annotated in BCCD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Wbc,
    Rbc,
    Platelet,
}

impl Class {
    fn from_name(name: &str) -> Option<Class> {
        match name.trim() {
            "WBC" => Some(Class::Wbc),
            "RBC" => Some(Class::Rbc),
            "Platelets" | "Platelet" => Some(Class::Platelet),
            _ => None,
        }
    }
}

/// One annotated object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub class: Class,
    /// Box clipped to the image.
    pub bbox: BBox,
    /// The box ran outside the image and was clipped.
    pub clipped: bool,
    /// Smaller than [`DEGENERATE_SIDE`] on a side after clipping.
    pub degenerate: bool,
}

/// One field's annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub id: String,
    pub width: u32,
    pub height: u32,
    pub objects: Vec<Object>,
}

impl Annotation {
    /// Non-degenerate boxes of one class.
    pub fn boxes(&self, class: Class) -> Vec<BBox> {
        self.objects.iter().filter(|o| o.class == class && !o.degenerate).map(|o| o.bbox).collect()
    }
}

/// The dataset root (the folder holding `JPEGImages`, `Annotations`, `ImageSets`).
#[derive(Debug, Clone)]
pub struct Bccd {
    pub root: PathBuf,
}

impl Bccd {
    /// BCCD under the shared data folder (`<data_dir>/bccd`).
    pub fn new(data_dir: &Path) -> Bccd {
        Bccd { root: data_dir.join("bccd") }
    }

    pub fn image_path(&self, id: &str) -> PathBuf {
        self.root.join("JPEGImages").join(format!("{id}.jpg"))
    }

    pub fn annotation_path(&self, id: &str) -> PathBuf {
        self.root.join("Annotations").join(format!("{id}.xml"))
    }

    /// Image ids of a split (`train`, `val`, `trainval`, `test`).
    pub fn split(&self, name: &str) -> Result<Vec<String>, BccdError> {
        let path = self.root.join("ImageSets").join("Main").join(format!("{name}.txt"));
        let text = std::fs::read_to_string(&path).map_err(|source| BccdError::Io { path: path.clone(), source })?;
        Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
    }

    pub fn annotation(&self, id: &str) -> Result<Annotation, BccdError> {
        let path = self.annotation_path(id);
        let text = std::fs::read_to_string(&path).map_err(|source| BccdError::Io { path: path.clone(), source })?;
        parse_voc(id, &text).map_err(|msg| BccdError::Malformed { path, msg })
    }
}

/// Text of the first `<tag>...</tag>` in `s`.
fn tag<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = s.find(&open)? + open.len();
    let len = s[start..].find(&close)?;
    Some(&s[start..start + len])
}

fn number(s: &str, name: &str) -> Result<f64, String> {
    let t = tag(s, name).ok_or_else(|| format!("missing <{name}>"))?;
    t.trim().parse::<f64>().map_err(|_| format!("<{name}> is not a number: {t:?}"))
}

/// Parses the subset of Pascal VOC that BCCD uses. Unknown class names are
/// an error so that a relabelled copy of the data is not silently misread.
pub fn parse_voc(id: &str, xml: &str) -> Result<Annotation, String> {
    let size = tag(xml, "size").ok_or("missing <size>")?;
    let (w, h) = (number(size, "width")?, number(size, "height")?);
    if !(w >= 1.0 && h >= 1.0 && w < 1e6 && h < 1e6) {
        return Err(format!("bad image size {w}x{h}"));
    }
    let (width, height) = (w as u32, h as u32);
    let mut objects = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<object>") {
        let body = &rest[start..];
        let end = body.find("</object>").ok_or("unterminated <object>")?;
        let obj = &body[..end];
        rest = &body[end..];
        let name = tag(obj, "name").ok_or("object without <name>")?;
        let class = Class::from_name(name).ok_or_else(|| format!("unknown class {name:?}"))?;
        let bb = tag(obj, "bndbox").ok_or("object without <bndbox>")?;
        let raw = [number(bb, "xmin")?, number(bb, "ymin")?, number(bb, "xmax")?, number(bb, "ymax")?];
        // VOC coordinates are 1-based inclusive in theory, but BCCD uses both 0
        // and the image size as edges: treat them as [min, max) pixel edges.
        let clip = |v: f64, hi: u32| v.round().clamp(0.0, hi as f64) as u32;
        let (x0, x1) = (clip(raw[0].min(raw[2]), width), clip(raw[0].max(raw[2]), width));
        let (y0, y1) = (clip(raw[1].min(raw[3]), height), clip(raw[1].max(raw[3]), height));
        let bbox = BBox { x0, y0, x1, y1 };
        let clipped = raw.iter().any(|&v| v < 0.0) || raw[0].max(raw[2]) > w || raw[1].max(raw[3]) > h;
        let degenerate = bbox.width() < DEGENERATE_SIDE || bbox.height() < DEGENERATE_SIDE;
        objects.push(Object { class, bbox, clipped, degenerate });
    }
    Ok(Annotation { id: id.to_string(), width, height, objects })
}

/// Matching result of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEval {
    pub id: String,
    pub tp: u32,
    /// Detections matching no ground truth.
    pub false_positives: Vec<BBox>,
    /// Ground truth matched by no detection.
    pub misses: Vec<BBox>,
}

/// Detection figures over a set of images.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Evaluation {
    pub tp: u32,
    pub fp: u32,
    pub fn_: u32,
    pub images: Vec<ImageEval>,
}

impl Evaluation {
    /// tp / (tp + fn); 1 when there is nothing to find.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    /// tp / (tp + fp); 1 when nothing was detected.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    /// Images with at least one miss or false positive.
    pub fn hard_images(&self) -> impl Iterator<Item = &ImageEval> {
        self.images.iter().filter(|i| !i.misses.is_empty() || !i.false_positives.is_empty())
    }
    /// Adds one image's matching.
    pub fn add(&mut self, id: &str, detections: &[BBox], truth: &[BBox]) {
        self.add_ignoring(id, detections, &[], truth);
    }

    /// Adds one image's matching where the detections flagged in `ignorable`
    /// (e.g. cells cut by the image border, which BCCD annotates only
    /// sometimes and a differential does not count) are true positives when
    /// they match and neither true nor false positives when they do not.
    pub fn add_ignoring(&mut self, id: &str, detections: &[BBox], ignorable: &[bool], truth: &[BBox]) {
        let m = match_boxes(detections, truth);
        let false_positives: Vec<BBox> = m
            .unmatched_detections
            .iter()
            .filter(|&&i| !ignorable.get(i).copied().unwrap_or(false))
            .map(|&i| detections[i])
            .collect();
        let misses: Vec<BBox> = m.unmatched_truth.iter().map(|&i| truth[i]).collect();
        self.tp += m.pairs.len() as u32;
        self.fp += false_positives.len() as u32;
        self.fn_ += misses.len() as u32;
        self.images.push(ImageEval { id: id.to_string(), tp: m.pairs.len() as u32, false_positives, misses });
    }
}

fn ratio(a: u32, b: u32) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

/// One-to-one matching of detections to ground truth.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Matching {
    /// (detection index, truth index, IoU).
    pub pairs: Vec<(usize, usize, f32)>,
    pub unmatched_detections: Vec<usize>,
    pub unmatched_truth: Vec<usize>,
}

/// Greedy matching at IoU >= [`MATCH_IOU`]: candidate pairs are taken in
/// decreasing IoU (the detector gives no scores), each detection and each
/// ground-truth box at most once. Ties keep input order, so the result is
/// deterministic.
pub fn match_boxes(detections: &[BBox], truth: &[BBox]) -> Matching {
    let mut cand = Vec::new();
    for (i, d) in detections.iter().enumerate() {
        for (j, t) in truth.iter().enumerate() {
            let iou = d.intersection_over_union(t);
            if iou >= MATCH_IOU {
                cand.push((i, j, iou));
            }
        }
    }
    cand.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    let mut used_d = vec![false; detections.len()];
    let mut used_t = vec![false; truth.len()];
    let mut pairs = Vec::new();
    for (i, j, iou) in cand {
        if !used_d[i] && !used_t[j] {
            used_d[i] = true;
            used_t[j] = true;
            pairs.push((i, j, iou));
        }
    }
    Matching {
        pairs,
        unmatched_detections: (0..detections.len()).filter(|&i| !used_d[i]).collect(),
        unmatched_truth: (0..truth.len()).filter(|&j| !used_t[j]).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x0: u32, y0: u32, x1: u32, y1: u32) -> BBox {
        BBox { x0, y0, x1, y1 }
    }

    const XML: &str = "<annotation><size><width>640</width><height>480</height><depth>3</depth></size>
        <object><name>WBC</name><bndbox><xmin>260</xmin><ymin>177</ymin><xmax>491</xmax><ymax>376</ymax></bndbox></object>
        <object>\n<name>RBC</name><bndbox><xmin>600</xmin><ymin>-3</ymin><xmax>700.4</xmax><ymax>50</ymax></bndbox></object>
        <object><name>Platelets</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>11</xmax><ymax>30</ymax></bndbox></object>
        </annotation>";

    #[test]
    fn parses_clips_and_flags_degenerate_boxes() {
        let a = parse_voc("x", XML).expect("parses");
        assert_eq!((a.width, a.height, a.objects.len()), (640, 480, 3));
        assert_eq!(a.objects[0].bbox, b(260, 177, 491, 376));
        assert!(!a.objects[0].clipped && !a.objects[0].degenerate);
        assert_eq!(a.objects[1].bbox, b(600, 0, 640, 50));
        assert!(a.objects[1].clipped);
        assert!(a.objects[2].degenerate);
        assert_eq!(a.boxes(Class::Platelet), vec![]);
        assert_eq!(a.boxes(Class::Wbc), vec![b(260, 177, 491, 376)]);
    }

    #[test]
    fn malformed_annotations_are_errors() {
        assert!(parse_voc("x", "<annotation></annotation>").is_err());
        let bad = XML.replace("Platelets", "Neutrophil");
        assert!(parse_voc("x", &bad).unwrap_err().contains("Neutrophil"));
        let bad = XML.replace("<xmin>260</xmin>", "<xmin>abc</xmin>");
        assert!(parse_voc("x", &bad).is_err());
    }

    #[test]
    fn greedy_matching_is_one_to_one() {
        let truth = [b(0, 0, 10, 10), b(100, 100, 120, 120)];
        // Two detections on the first box: the better one matches, the other is a false positive.
        let det = [b(1, 0, 11, 10), b(0, 0, 10, 10), b(50, 50, 60, 60)];
        let m = match_boxes(&det, &truth);
        assert_eq!(m.pairs, vec![(1, 0, 1.0)]);
        assert_eq!(m.unmatched_detections, vec![0, 2]);
        assert_eq!(m.unmatched_truth, vec![1]);
        let mut e = Evaluation::default();
        e.add("a", &det, &truth);
        e.add("b", &[], &[]);
        assert_eq!((e.tp, e.fp, e.fn_), (1, 2, 1));
        assert!((e.recall() - 0.5).abs() < 1e-9 && (e.precision() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(e.hard_images().count(), 1);
        // Unmatched ignorable detections are no false positives; matched ones count.
        let mut e = Evaluation::default();
        e.add_ignoring("c", &det, &[true, true, true], &truth);
        assert_eq!((e.tp, e.fp, e.fn_), (1, 0, 1));
    }

    #[test]
    fn empty_sets_score_one() {
        let e = Evaluation::default();
        assert_eq!((e.recall(), e.precision()), (1.0, 1.0));
    }
}
