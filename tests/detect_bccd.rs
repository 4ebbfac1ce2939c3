//! The leukocyte detector on real BCCD fields (parameters tuned on `trainval`,
//! figures taken on `test`). Needs the shared data folder: set
//! `LEUKOSCOPE_DATA` if it is not at `../shared/data`; without it these tests
//! fail, they never skip.

use common::bccd::{Annotation, Bccd, Class, Evaluation, MATCH_IOU};
use image::{Rgb, RgbImage};
use leukoscope::classify::count::Call;
use leukoscope::classify::pipeline::FieldResult;
use leukoscope::input::{data_dir, load_rgb};
use leukoscope::vision::detect::{detect, BlankField, DetectParams, FieldDetections, ScaleSource};
use leukoscope::vision::mask::BBox;
use std::sync::OnceLock;

mod common;

fn bccd() -> Bccd {
    let dir = data_dir();
    let b = Bccd::new(&dir);
    assert!(
        b.root.join("Annotations").is_dir() && b.root.join("JPEGImages").is_dir(),
        "BCCD not found under {} (resolved from the working directory {:?}): set LEUKOSCOPE_DATA to the shared data folder",
        b.root.display(),
        std::env::current_dir().ok()
    );
    b
}

struct Field {
    annotation: Annotation,
    found: FieldDetections,
    /// The whole pipeline's result (detection + classification): what is counted.
    analysed: FieldResult,
}

/// Detections on the test split, computed once for all tests.
fn test_split() -> &'static [Field] {
    static FIELDS: OnceLock<Vec<Field>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let b = bccd();
        let ids = b.split("test").expect("BCCD test split");
        assert_eq!(ids.len(), 72, "BCCD test split");
        let params = DetectParams::default();
        let analyzer = common::analyzer();
        ids.iter()
            .map(|id| {
                let img = load_rgb(&b.image_path(id)).unwrap_or_else(|e| panic!("{e}"));
                let annotation = b.annotation(id).unwrap_or_else(|e| panic!("{e}"));
                let analysed = analyzer.analyze(&img).unwrap_or_else(|e| panic!("{id}: {e}"));
                Field { found: detect(&img, &params, None), annotation, analysed }
            })
            .collect()
    })
}

fn boxes(found: &FieldDetections) -> Vec<BBox> {
    found.cells.iter().map(|c| c.bbox).collect()
}

#[test]
fn test_split_recall_and_precision() {
    let fields = test_split();
    // As counted: cells cut by the border are reported but not counted, and
    // BCCD annotates them only sometimes, so an unmatched cut cell is neither
    // a hit nor a false alarm. Strict: every detection counts.
    let (mut counted, mut strict) = (Evaluation::default(), Evaluation::default());
    for f in fields {
        let truth = f.annotation.boxes(Class::Wbc);
        let cut: Vec<bool> = f.found.cells.iter().map(|c| c.cut_by_border).collect();
        counted.add_ignoring(&f.annotation.id, &boxes(&f.found), &cut, &truth);
        strict.add(&f.annotation.id, &boxes(&f.found), &truth);
    }
    for e in counted.hard_images() {
        println!("  {}: {} hit, misses {:?}, false positives {:?}", e.id, e.tp, e.misses, e.false_positives);
    }
    let figures = |e: &Evaluation| {
        format!("tp {} fp {} fn {}: recall {:.4} precision {:.4}", e.tp, e.fp, e.fn_, e.recall(), e.precision())
    };
    println!("BCCD test, {} fields, IoU >= {MATCH_IOU}:", fields.len());
    println!("  counted (unmatched border-cut cells ignored): {}", figures(&counted));
    println!("  strict (every detection):                      {}", figures(&strict));
    assert!(counted.recall() >= 0.98, "recall {}", figures(&counted));
    assert!(counted.precision() >= 0.96, "precision {}", figures(&counted));
}

/// BCCD annotation errors, checked by eye: this "Platelet" box holds a whole
/// leukocyte (a ~10 µm lobed nucleus at the bottom border).
const MISLABELLED: &[(&str, u32, u32)] = &[("BloodImage_00135", 42, 345)];

/// The boxes the pipeline counts as leukocytes: whole cells the classifier
/// did not rule out as platelets.
fn counted_cells(r: &FieldResult) -> Vec<BBox> {
    r.cells.iter().filter(|c| c.counted() && !matches!(c.call, Call::NotLeukocyte { .. })).map(|c| c.bbox).collect()
}

/// Where a box's centre lies.
fn centre(b: &BBox) -> (u32, u32) {
    ((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2)
}

fn contains(b: &BBox, (x, y): (u32, u32)) -> bool {
    b.x0 <= x && x < b.x1 && b.y0 <= y && y < b.y1
}

/// Counted cells that are a platelet or a red cell: the counted box holds the
/// centre of an annotated platelet (red cell) and no annotated leukocyte's.
/// By centre, not IoU: a counted box is at least ~89 px wide and a platelet
/// box ~40 px, so their IoU never reaches 0.5 even when the box is the platelet.
fn platelets_or_red_cells_taken() -> (usize, Vec<(String, Class, BBox, BBox)>) {
    let mut offenders = Vec::new();
    let mut checked = 0;
    for f in test_split() {
        let wbc: Vec<(u32, u32)> = f.annotation.boxes(Class::Wbc).iter().map(centre).collect();
        let others: Vec<(Class, BBox)> = [Class::Platelet, Class::Rbc]
            .into_iter()
            .flat_map(|c| f.annotation.boxes(c).into_iter().map(move |b| (c, b)))
            .filter(|(_, b)| !MISLABELLED.contains(&(f.annotation.id.as_str(), b.x0, b.y0)))
            .collect();
        for d in counted_cells(&f.analysed) {
            checked += 1;
            if wbc.iter().any(|&c| contains(&d, c)) {
                continue;
            }
            for (class, b) in &others {
                if contains(&d, centre(b)) {
                    offenders.push((f.annotation.id.clone(), *class, d, *b));
                }
            }
        }
    }
    println!("{checked} counted cells checked against annotated platelets and red cells: {offenders:?}");
    (checked, offenders)
}

/// The acceptance criterion: on real smear fields no platelet or red cell is
/// counted as a leukocyte.
#[test]
fn no_platelet_or_red_cell_is_counted_as_a_leukocyte() {
    let (checked, offenders) = platelets_or_red_cells_taken();
    assert!(checked > 50);
    assert!(offenders.is_empty(), "counted as leukocytes: {offenders:#?}");
}

/// What the classifier's platelet veto takes out must not cost leukocytes:
/// the counted cells still find the annotated ones.
#[test]
fn counted_cells_keep_recall_and_precision() {
    let mut e = Evaluation::default();
    for f in test_split() {
        let cells: Vec<_> = f.analysed.cells.iter().filter(|c| !matches!(c.call, Call::NotLeukocyte { .. })).collect();
        let boxes: Vec<BBox> = cells.iter().map(|c| c.bbox).collect();
        let cut: Vec<bool> = cells.iter().map(|c| c.cut_by_border).collect();
        e.add_ignoring(&f.annotation.id, &boxes, &cut, &f.annotation.boxes(Class::Wbc));
    }
    println!("counted by the pipeline: recall {:.4} precision {:.4}", e.recall(), e.precision());
    assert!(e.recall() >= 0.98 && e.precision() >= 0.96, "recall {} precision {}", e.recall(), e.precision());
}

#[test]
fn a_single_leukocyte_field_yields_one_cell() {
    let b = bccd();
    // A segmented neutrophil in the middle of the field, red cells around it.
    let id = "BloodImage_00000";
    let img = load_rgb(&b.image_path(id)).unwrap_or_else(|e| panic!("{e}"));
    let truth = b.annotation(id).unwrap_or_else(|e| panic!("{e}")).boxes(Class::Wbc);
    assert_eq!(truth.len(), 1);
    let found = detect(&img, &DetectParams::default(), None);
    assert_eq!(found.cells.len(), 1, "{:?}", found.cells);
    let cell = found.cells[0];
    assert!(!cell.cut_by_border);
    let iou = cell.bbox.intersection_over_union(&truth[0]);
    assert!(iou >= MATCH_IOU, "IoU {iou}: {cell:?} vs {:?}", truth[0]);

    // Across the test split: fields with one annotated leukocyte well inside.
    let (mut n, mut one) = (0, 0);
    for f in test_split() {
        if common::one_whole_wbc(&f.annotation) {
            n += 1;
            one += (f.found.cells.iter().filter(|c| !c.cut_by_border).count() == 1) as u32;
        }
    }
    println!("{one} of {n} test fields with one whole annotated leukocyte yield exactly one whole cell");
    assert!(one as f64 >= 0.9 * n as f64, "{one} of {n}");
}

#[test]
fn scale_estimate_agrees_with_annotated_red_cells() {
    // Annotated size: median of the red-cell boxes lying wholly inside the
    // field (cut ones are smaller), (width + height) / 2, on fields with at
    // least 3 of them.
    let params = DetectParams::default();
    let (mut fields, mut fallback, mut estimated, mut within) = (0, 0, 0, 0);
    let mut ratios = Vec::new();
    for f in test_split() {
        let a = &f.annotation;
        let mut sizes: Vec<u32> = a
            .boxes(Class::Rbc)
            .iter()
            .filter(|b| b.x0 > 0 && b.y0 > 0 && b.x1 < a.width && b.y1 < a.height)
            .map(|b| (b.width() + b.height()) / 2)
            .collect();
        if sizes.len() < 3 {
            continue;
        }
        fields += 1;
        sizes.sort_unstable();
        let annotated = sizes[sizes.len() / 2] as f32;
        if f.found.scale.source == ScaleSource::Fallback {
            fallback += 1;
            continue;
        }
        estimated += 1;
        let ratio = params.rbc_diameter_um / f.found.scale.um_per_px / annotated;
        within += ((ratio - 1.0).abs() <= 0.15) as u32;
        ratios.push(ratio);
    }
    ratios.sort_by(f32::total_cmp);
    let q = |p: f32| ratios.get(((ratios.len().saturating_sub(1)) as f32 * p) as usize).copied().unwrap_or(f32::NAN);
    println!(
        "scale on {fields} test fields: {estimated} estimated, {fallback} fell back; {within} of {estimated} within 15% \
         of the annotated red-cell size (ratio estimated/annotated: p10 {:.3}, median {:.3}, p90 {:.3})",
        q(0.1),
        q(0.5),
        q(0.9)
    );
    assert!(fallback as f64 <= 0.1 * fields as f64, "{fallback} of {fields} fell back");
    assert!(within as f64 >= 0.8 * estimated as f64, "{within} of {estimated} within 15%");
}

/// Timing, not a check: `cargo test --release --test detect_bccd -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing() {
    let b = bccd();
    let img = load_rgb(&b.image_path("BloodImage_00001")).unwrap_or_else(|e| panic!("{e}"));
    let big = image::imageops::resize(&img, 1280, 960, image::imageops::FilterType::Triangle);
    let params = DetectParams::default();
    for (name, field, scale) in [
        ("640x480, scale estimated", &img, None),
        ("640x480, scale configured", &img, Some(0.073)),
        ("1280x960 (2x upscaled), scale estimated", &big, None),
        ("1280x960 (2x upscaled), scale configured", &big, Some(0.0365)),
    ] {
        let n = 200;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(detect(field, &params, scale));
        }
        println!("{name}: {:.2} ms per field", t.elapsed().as_secs_f64() * 1000.0 / n as f64);
    }
}

/// A real smear is never called blank; the same field in grey, or flattened
/// to its mean colour with sensor noise, always is.
#[test]
fn blank_fields_are_told_from_smears() {
    let dir = data_dir().join("bccd/JPEGImages");
    let mut n = 0;
    for i in (0..400).step_by(10) {
        let Ok(field) = load_rgb(&dir.join(format!("BloodImage_{i:05}.jpg"))) else { continue };
        n += 1;
        assert_eq!(BlankField::of(&field), None, "BloodImage_{i:05} is a smear");
        let grey = image::DynamicImage::ImageRgb8(field.clone()).grayscale().to_rgb8();
        assert_eq!(BlankField::of(&grey), Some(BlankField::Greyscale), "BloodImage_{i:05} in grey");
        // The field's mean colour, with sensor noise of a few levels.
        let mean = [0, 1, 2].map(|c| (field.pixels().map(|p| p[c] as u64).sum::<u64>() * 3 / field.len() as u64) as u8);
        let flat = RgbImage::from_fn(field.width(), field.height(), |x, y| {
            Rgb(mean.map(|v| v.saturating_add(((x * 7 + y * 13) % 4) as u8)))
        });
        assert_eq!(BlankField::of(&flat), Some(BlankField::Uniform), "{mean:?}");
    }
    assert!(n >= 30, "BCCD fields missing: set LEUKOSCOPE_DATA");
}
