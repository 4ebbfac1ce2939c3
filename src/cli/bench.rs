//! `leukoscope bench`: where the time goes, measured side by side in one run on
//! the same inputs (median of repeated runs, one thread). Figures are recorded
//! in docs/performance.md; nothing here is asserted by tests.

use image::RgbImage;
use leukoscope::classify::model::Classifier;
use leukoscope::classify::pipeline::{cell_region, Analyzer, RegionGeometry};
use leukoscope::vision::detect::{detect, FieldDetections};
use leukoscope::vision::preprocess::{prepare, PreprocessSpec};
use serde::Serialize;
use std::time::{Duration, Instant};

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub what: String,
    pub median_ms: f64,
    pub runs: usize,
}

/// Runs `f` until `budget` is spent (at least 3 times, at most `max_runs`) and
/// returns the median wall time in milliseconds.
pub fn median_ms(budget: Duration, max_runs: usize, mut f: impl FnMut()) -> (f64, usize) {
    f(); // warm-up: caches, lazy allocations
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 3 || (start.elapsed() < budget && times.len() < max_runs) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times.len())
}

/// Per-crop figures: preprocessing and inference with each model given.
/// `um_per_px` is the crop's scale.
pub fn crop_figures(crop: &RgbImage, um_per_px: f32, models: &[(&str, &Classifier)], budget: Duration) -> Vec<Figure> {
    let mut out = Vec::new();
    let spec = &models[0].1.card.input.preprocessing;
    let (ms, runs) = median_ms(budget, 10_000, || {
        std::hint::black_box(prepare(crop, spec, None, um_per_px));
    });
    out.push(Figure { what: format!("preprocess one {}x{} crop", crop.width(), crop.height()), median_ms: ms, runs });
    let prepared = prepare(crop, spec, None, um_per_px);
    for (name, clf) in models {
        let (ms, runs) = median_ms(budget, 10_000, || {
            std::hint::black_box(clf.predict(&prepared).ok());
        });
        out.push(Figure { what: format!("inference per crop, {name} (tract, batch 1)"), median_ms: ms, runs });
    }
    out
}

/// Per-field figures at the field's size: detection alone, then the whole
/// field (detect + classify) with each analyzer given (int8, f32).
pub fn field_figures(field: &RgbImage, analyzers: &[(&str, &Analyzer)], budget: Duration) -> Vec<Figure> {
    let (w, h) = (field.width(), field.height());
    let Some((_, first)) = analyzers.first() else { return Vec::new() };
    let (ms, runs) = median_ms(budget, 1000, || {
        std::hint::black_box(detect(field, &first.detect, first.um_per_px));
    });
    let mut out = vec![Figure { what: format!("detect, {w}x{h} field"), median_ms: ms, runs }];
    // Between detection and inference: cutting each cell's region from the
    // field and preparing the model input from it (nucleus search, sampling).
    let found = detect(field, &first.detect, first.um_per_px);
    let spec = &first.classifier.card.input.preprocessing;
    let (ms, runs) = median_ms(budget, 1000, || {
        cut_and_prepare(field, &found, spec);
    });
    out.push(Figure {
        what: format!("cut + prepare {} cells (no inference), {w}x{h}", found.cells.len()),
        median_ms: ms,
        runs,
    });
    for (name, analyzer) in analyzers {
        let cells = analyzer.analyze(field).map(|r| r.cells.len()).unwrap_or(0);
        let (ms, runs) = median_ms(budget, 1000, || {
            std::hint::black_box(analyzer.analyze(field).ok());
        });
        out.push(Figure {
            what: format!("whole field {name} (detect + classify {cells} cells), {w}x{h}"),
            median_ms: ms,
            runs,
        });
    }
    out
}

/// Many fields, each resized to the same size: the mean over fields of each
/// field's median detection, cut + prepare and whole-field time. One field's
/// cell count (one cell or four) moves the single-field figures by 2x; the mean
/// over a set of fields is the figure to compare pipelines by.
pub fn many_fields_figures(fields: &[RgbImage], name: &str, analyzer: &Analyzer, budget: Duration) -> Vec<Figure> {
    let Some(first) = fields.first() else { return Vec::new() };
    let (w, h) = (first.width(), first.height());
    let per_field = budget / fields.len().max(1) as u32;
    let spec = &analyzer.classifier.card.input.preprocessing;
    let (mut detect_ms, mut prepare_ms, mut whole_ms, mut cells, mut runs) = (0.0, 0.0, 0.0, 0, 0);
    for field in fields {
        let (ms, n) = median_ms(per_field, 100, || {
            std::hint::black_box(detect(field, &analyzer.detect, analyzer.um_per_px));
        });
        detect_ms += ms;
        runs += n;
        let found = detect(field, &analyzer.detect, analyzer.um_per_px);
        cells += found.cells.len();
        let (ms, _) = median_ms(per_field, 100, || {
            cut_and_prepare(field, &found, spec);
        });
        prepare_ms += ms;
        let (ms, _) = median_ms(per_field, 100, || {
            std::hint::black_box(analyzer.analyze(field).ok());
        });
        whole_ms += ms;
    }
    let n = fields.len() as f64;
    let what = |fig: &str| format!("{fig}, mean of {} fields ({cells} cells), {w}x{h}", fields.len());
    vec![
        Figure { what: what("detect"), median_ms: detect_ms / n, runs },
        Figure { what: what("cut + prepare"), median_ms: prepare_ms / n, runs },
        Figure { what: what(&format!("whole field {name}")), median_ms: whole_ms / n, runs },
    ]
}

/// What `Analyzer::analyze` does between detection and inference: cut each
/// cell's region from the field and prepare the model input from it.
fn cut_and_prepare(field: &RgbImage, found: &FieldDetections, spec: &PreprocessSpec) {
    for d in &found.cells {
        let geometry = RegionGeometry::of(d.bbox, d.nucleus, spec, found.scale.um_per_px);
        let region = cell_region(field, geometry);
        std::hint::black_box(prepare(&region, spec, Some(found.background), geometry.um_per_px(found.scale.um_per_px)));
    }
}

/// The field resized to `w` x `h` (to benchmark camera resolutions from one image).
pub fn resized(field: &RgbImage, w: u32, h: u32) -> RgbImage {
    image::imageops::resize(field, w, h, image::imageops::FilterType::Triangle)
}
