//! The BCCD blood-smear field dataset (Pascal VOC layout), the TXL-PBC field
//! sets (YOLO labels beside each image) and the detection evaluation used to
//! tune and check [`leukoscope::vision::detect`].
//!
//! Annotation quirks handled here: some boxes run outside the image (clipped to
//! it) and a few are degenerate (empty or a few pixels wide after clipping).
//! Degenerate boxes are kept but flagged, and [`evaluate`] ignores degenerate
//! ground truth: a box with no extent cannot be matched at IoU >= 0.5 by any
//! detector, so counting it would only measure the annotation error.

use leukoscope::vision::mask::BBox;
use std::path::{Path, PathBuf};

/// Ground-truth boxes narrower or shorter than this (after clipping, in
/// pixels) are degenerate: BCCD's smallest real objects (platelets) are ~20 px.
pub const DEGENERATE_SIDE: u32 = 4;

/// IoU at which a detection matches a ground-truth box.
pub const MATCH_IOU: f32 = 0.5;

#[derive(Debug, thiserror::Error)]
pub enum BccdError {
    #[error("{path}: cannot read")]
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

    /// The scale (µm per pixel) the red-cell boxes of the fields `ids` imply:
    /// `rbc_diameter_um` over the median diameter ((w + h) / 2) of the boxes
    /// not touching the border.
    pub fn annotated_scale(&self, ids: &[String], rbc_diameter_um: f32) -> f32 {
        let mut d: Vec<f32> = Vec::new();
        for id in ids {
            let a = self.annotation(id).unwrap_or_else(|e| panic!("{e}"));
            d.extend(
                a.boxes(Class::Rbc)
                    .iter()
                    .filter(|r| r.x0 > 0 && r.y0 > 0 && r.x1 < a.width && r.y1 < a.height)
                    .map(|r| (r.width() + r.height()) as f32 / 2.0),
            );
        }
        assert!(d.len() > 500, "{} red-cell boxes", d.len());
        d.sort_by(f32::total_cmp);
        rbc_diameter_um / d[d.len() / 2]
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

/// Parses a YOLO label file (`class cx cy w h` per line, normalised to the
/// image size) as TXL-PBC writes it: class 0 = WBC, 1 = RBC, 2 = platelet.
/// Boxes are clipped and flagged like VOC ones; blank lines are skipped, an
/// unknown class or a malformed line is an error.
pub fn parse_yolo(id: &str, text: &str, width: u32, height: u32) -> Result<Annotation, String> {
    if width == 0 || height == 0 {
        return Err(format!("bad image size {width}x{height}"));
    }
    let mut objects = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("line {}: expected `class cx cy w h`, got {line:?}", n + 1);
        if parts.len() != 5 {
            return Err(bad());
        }
        let class = match parts[0] {
            "0" => Class::Wbc,
            "1" => Class::Rbc,
            "2" => Class::Platelet,
            c => return Err(format!("line {}: unknown class {c:?}", n + 1)),
        };
        let v: Vec<f64> = parts[1..].iter().map(|p| p.parse::<f64>()).collect::<Result<_, _>>().map_err(|_| bad())?;
        if v.iter().any(|x| !x.is_finite()) {
            return Err(bad());
        }
        let (w, h) = (width as f64, height as f64);
        let raw = [(v[0] - v[2] / 2.0) * w, (v[1] - v[3] / 2.0) * h, (v[0] + v[2] / 2.0) * w, (v[1] + v[3] / 2.0) * h];
        let clip = |x: f64, hi: u32| x.round().clamp(0.0, hi as f64) as u32;
        let bbox = BBox {
            x0: clip(raw[0], width),
            y0: clip(raw[1], height),
            x1: clip(raw[2], width),
            y1: clip(raw[3], height),
        };
        // Normalised coordinates round to a pixel or so beyond the edge.
        let clipped = raw[0] < -1.0 || raw[1] < -1.0 || raw[2] > w + 1.0 || raw[3] > h + 1.0;
        let degenerate = bbox.width() < DEGENERATE_SIDE || bbox.height() < DEGENERATE_SIDE;
        objects.push(Object { class, bbox, clipped, degenerate });
    }
    Ok(Annotation { id: id.to_string(), width, height, objects })
}

/// A folder of fields with YOLO labels beside them (`x.jpg` + `x.txt`), as
/// in TXL-PBC's `bcd/` and `pbc/`.
#[derive(Debug, Clone)]
pub struct YoloSet {
    pub root: PathBuf,
}

impl YoloSet {
    /// Image files that have a label file beside them, sorted.
    pub fn images(&self) -> Result<Vec<PathBuf>, BccdError> {
        let err = |source| BccdError::Io { path: self.root.clone(), source };
        let mut out: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .map_err(err)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?
            .into_iter()
            .filter(|p| {
                p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")) && p.with_extension("txt").is_file()
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The annotation of one image, given its size (YOLO labels are normalised).
    pub fn annotation(&self, image: &Path, width: u32, height: u32) -> Result<Annotation, BccdError> {
        let path = image.with_extension("txt");
        let text = std::fs::read_to_string(&path).map_err(|source| BccdError::Io { path: path.clone(), source })?;
        let id = image.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        parse_yolo(id, &text, width, height).map_err(|msg| BccdError::Malformed { path, msg })
    }
}

/// A box within `margin` px of the image border: the object is (probably)
/// cut by it. Used to leave border-cut ground truth out of recall, as
/// border-cut detections are left out of the count.
pub fn touches_border(b: &BBox, width: u32, height: u32, margin: u32) -> bool {
    b.x0 <= margin || b.y0 <= margin || b.x1 + margin >= width || b.y1 + margin >= height
}

/// Boxes without duplicates: a box overlapping an earlier one at IoU >=
/// [`MATCH_IOU`] is the same object annotated twice (TXL-PBC holds such
/// duplicates, up to five boxes on one cell), and one detection can match
/// only one of them.
pub fn without_duplicates(boxes: &[BBox]) -> Vec<BBox> {
    let mut out: Vec<BBox> = Vec::with_capacity(boxes.len());
    for b in boxes {
        if out.iter().all(|o| o.intersection_over_union(b) < MATCH_IOU) {
            out.push(*b);
        }
    }
    out
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
        self.add_ignoring_both(id, detections, ignorable, truth, &[]);
    }

    /// [`Evaluation::add_ignoring`] with ignorable ground truth too: a truth box
    /// flagged in `truth_ignorable` (cut by the border) is a hit when matched and
    /// no miss when not.
    pub fn add_ignoring_both(
        &mut self,
        id: &str,
        detections: &[BBox],
        ignorable: &[bool],
        truth: &[BBox],
        truth_ignorable: &[bool],
    ) {
        let m = match_boxes(detections, truth);
        let false_positives: Vec<BBox> = m
            .unmatched_detections
            .iter()
            .filter(|&&i| !ignorable.get(i).copied().unwrap_or(false))
            .map(|&i| detections[i])
            .collect();
        let misses: Vec<BBox> = m
            .unmatched_truth
            .iter()
            .filter(|&&i| !truth_ignorable.get(i).copied().unwrap_or(false))
            .map(|&i| truth[i])
            .collect();
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
    fn parses_yolo_labels() {
        let a = parse_yolo("y", "0 0.5 0.5 0.25 0.5\n\n1 0.01 0.5 0.1 0.1\n2 0.9 0.9 0.001 0.1\n", 400, 200)
            .expect("parses");
        assert_eq!(a.objects.len(), 3);
        assert_eq!(a.boxes(Class::Wbc), vec![b(150, 50, 250, 150)]);
        assert_eq!(a.objects[1].bbox, b(0, 90, 24, 110));
        assert!(a.objects[1].clipped && !a.objects[0].clipped);
        assert!(a.objects[2].degenerate);
        assert!(touches_border(&a.objects[1].bbox, 400, 200, 1) && !touches_border(&a.objects[0].bbox, 400, 200, 1));
        assert!(parse_yolo("y", "3 0.5 0.5 0.1 0.1", 10, 10).unwrap_err().contains("unknown class"));
        assert!(parse_yolo("y", "0 0.5 0.5 0.1", 10, 10).is_err());
        assert!(parse_yolo("y", "0 0.5 x 0.1 0.1", 10, 10).is_err());
        assert!(parse_yolo("y", "0 0.5 0.5 0.1 0.1", 0, 10).is_err());
    }

    #[test]
    fn duplicates_are_dropped() {
        let boxes = [b(0, 0, 10, 10), b(1, 0, 11, 10), b(20, 20, 30, 30), b(0, 0, 10, 10)];
        assert_eq!(without_duplicates(&boxes), vec![b(0, 0, 10, 10), b(20, 20, 30, 30)]);
    }

    #[test]
    fn ignorable_truth_is_no_miss() {
        let truth = [b(0, 0, 10, 10), b(100, 100, 120, 120)];
        let mut e = Evaluation::default();
        e.add_ignoring_both("a", &[b(0, 0, 10, 10)], &[], &truth, &[true, true]);
        assert_eq!((e.tp, e.fp, e.fn_), (1, 0, 0));
        e.add_ignoring_both("b", &[], &[], &truth, &[false, true]);
        assert_eq!((e.tp, e.fp, e.fn_), (1, 0, 1));
    }

    #[test]
    fn empty_sets_score_one() {
        let e = Evaluation::default();
        assert_eq!((e.recall(), e.precision()), (1.0, 1.0));
    }
}
