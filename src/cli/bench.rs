//! `leukoscope bench`: where the time goes, measured side by side in one run on
//! the same inputs (median of repeated runs, one thread). Figures are recorded
//! in docs/performance.md; nothing here is asserted by tests.

use super::{demo_inputs, progress, CardArg};
use anyhow::{Context, Result};
use image::RgbImage;
use leukoscope::classify::model::{Classifier, Precision};
use leukoscope::classify::pipeline::{cell_region, Analyzer, RegionGeometry};
use leukoscope::vision::detect::{detect, FieldDetections};
use leukoscope::vision::illumination::evened;
use leukoscope::vision::preprocess::{prepare, PreprocessSpec};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Measure speed side by side: per-crop preprocessing and inference (int8 and
/// f32), detection and whole fields at 640x480, 1280x960 and 1920x1080, and
/// start-up to the first result. Single thread, median of repeated runs.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: CardArg,
    /// Seconds to spend on each figure.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Single-cell crop to time; default: lmu/MYO/MYO_0001.jpg in the data folder.
    #[arg(long)]
    crop: Option<PathBuf>,
    /// Field to time (resized to each size); default: bccd/JPEGImages/BloodImage_00001.jpg
    /// in the data folder. On a board without the data folder, copy these two images.
    #[arg(long)]
    field: Option<PathBuf>,
    /// Instead of the figures above: the whole field averaged over many fields
    /// (images or folders; none named: the 72 BCCD test fields), each resized
    /// to --size, with the file the card runs on this CPU. --seconds is then the
    /// budget per figure for all fields together.
    #[arg(long, num_args = 0.., conflicts_with_all = ["crop", "field"])]
    fields: Option<Vec<PathBuf>>,
    /// Size the --fields images are resized to, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x960", value_parser = parse_size)]
    size: (u32, u32),
}

pub fn run(a: Args) -> Result<i32> {
    match &a.fields {
        Some(fields) => bench_fields(a.model.path(), a.seconds, a.json, fields, a.size),
        None => bench(a.model.path(), a.seconds, a.json, a.crop, a.field),
    }
}

/// `WIDTHxHEIGHT`, both positive.
fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let parsed = s.split_once(['x', 'X']).and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(format!("{s:?} is not WIDTHxHEIGHT (e.g. 1280x960)")),
    }
}

/// `bench --fields`: the whole field averaged over many fields.
fn bench_fields(card: PathBuf, seconds: f64, json: bool, inputs: &[PathBuf], size: (u32, u32)) -> Result<i32> {
    let classifier = Classifier::load(&card).with_context(|| format!("loading {}", card.display()))?;
    let name = classifier.variant.to_string();
    let paths = if inputs.is_empty() { demo_inputs()? } else { leukoscope::input::collect_images(inputs)? };
    let bar = progress(paths.len(), "loading fields");
    let mut fields = Vec::with_capacity(paths.len());
    for p in &paths {
        let img = leukoscope::input::load_rgb(p)?;
        fields.push(if img.dimensions() == size { img } else { resized(&img, size.0, size.1) });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let analyzer = bench_analyzer(classifier);
    let budget = Duration::from_secs_f64(seconds.max(0.1));
    // The fields held for the benchmark are not what a board needs: measure the
    // peak of the analyses alone, over what was resident once they were loaded.
    let loaded = memory::reset_peak();
    let figs = many_fields_figures(&fields, &name, &analyzer, budget);
    let memory = loaded.and_then(|loaded| memory::Peak::since(loaded, &fields));
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "figures": figs, "memory": memory }))?);
        return Ok(0);
    }
    print_figures(&figs, false)?;
    match memory {
        Some(m) => println!(
            "\npeak RSS analysing one {}x{} field: {:.1} MB ({:.1} MB resident without the benchmark's {} fields, \
             + {:.1} MB for one field's pixels, + {:.1} MB at the peak of an analysis)",
            size.0,
            size.1,
            m.one_field_mb,
            m.base_mb,
            fields.len(),
            m.field_mb,
            m.work_mb
        ),
        None => println!("\npeak RSS: not measured (needs Linux /proc/self/status and clear_refs)"),
    }
    Ok(0)
}

/// Peak resident memory from /proc (Linux): `VmHWM` can be reset to the
/// current RSS by writing 5 to /proc/self/clear_refs (Linux 4.0 and later).
mod memory {
    use image::RgbImage;
    use serde::Serialize;

    /// kB of a `/proc/self/status` line such as `VmRSS:   35120 kB`.
    fn status_kb(key: &str) -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    }

    /// Resets the peak to the current RSS; returns that RSS (kB).
    pub fn reset_peak() -> Option<f64> {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
        status_kb("VmRSS:")
    }

    /// What analysing one field of the benchmark's size takes, in MB.
    #[derive(Debug, Clone, Copy, Serialize)]
    pub struct Peak {
        /// Resident before any field was loaded would have been: the binary,
        /// the model and the allocator's pools.
        pub base_mb: f64,
        /// One field's pixels (as the camera or a file delivers it).
        pub field_mb: f64,
        /// Above what was resident, at the peak of the analyses.
        pub work_mb: f64,
        /// base + one field + work: the peak a board sees at this size.
        pub one_field_mb: f64,
    }

    impl Peak {
        pub fn since(loaded_kb: f64, fields: &[RgbImage]) -> Option<Peak> {
            let peak_kb = status_kb("VmHWM:")?;
            let mb = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
            let held = fields.iter().map(|f| f.as_raw().len()).sum::<usize>();
            let field_mb = fields.first().map_or(0.0, |f| mb(f.as_raw().len()));
            let base_mb = (loaded_kb / 1024.0 - mb(held)).max(0.0);
            let work_mb = ((peak_kb - loaded_kb) / 1024.0).max(0.0);
            Some(Peak { base_mb, field_mb, work_mb, one_field_mb: base_mb + field_mb + work_mb })
        }
    }
}

/// The analyzer `bench` times: default detection, scale estimated per field.
fn bench_analyzer(classifier: Classifier) -> Analyzer {
    Analyzer {
        rules: leukoscope::classify::count::CallRules::from_card(&classifier.card),
        classifier,
        detect: Default::default(),
        um_per_px: None,
    }
}

fn print_figures(figs: &[Figure], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(figs)?);
    } else {
        println!("{:<80} {:>10} {:>7}", "figure", "median ms", "runs");
        for f in figs {
            println!("{:<80} {:>10.3} {:>7}", f.what, f.median_ms, f.runs);
        }
    }
    Ok(())
}

/// `bench`: the figures side by side.
fn bench(card: PathBuf, seconds: f64, json: bool, crop: Option<PathBuf>, field: Option<PathBuf>) -> Result<i32> {
    let t0 = Instant::now();
    let int8 =
        Classifier::load_precision(&card, Precision::Int8).with_context(|| format!("loading {}", card.display()))?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let data = leukoscope::input::data_dir();
    let crop_path = crop.unwrap_or_else(|| data.join("lmu/MYO/MYO_0001.jpg"));
    let crop = leukoscope::input::load_rgb(&crop_path)?;
    let crop_um =
        leukoscope::classify::pipeline::crop_scale(&crop, None, &leukoscope::vision::detect::DetectParams::default())
            .um_per_px;
    let first = int8.predict(&prepare(&crop, &int8.card.input.preprocessing, None, crop_um))?;
    let startup_ms = t0.elapsed().as_secs_f64() * 1e3;
    let f32_ref = Classifier::load_precision(&card, Precision::F32).ok();
    let budget = Duration::from_secs_f64(seconds.max(0.1));
    let mut models: Vec<(&str, &Classifier)> = vec![("int8", &int8)];
    if let Some(f) = &f32_ref {
        models.push(("f32", f));
    }
    let mut figs = vec![
        Figure { what: "load model card + model (hash, optimise)".into(), median_ms: load_ms, runs: 1 },
        Figure {
            what: format!("start-up to first result (load + one crop, top p {:.2})", first.top().1),
            median_ms: startup_ms,
            runs: 1,
        },
    ];
    figs.extend(crop_figures(&crop, crop_um, &models, budget));
    let field =
        leukoscope::input::load_rgb(&field.unwrap_or_else(|| data.join("bccd/JPEGImages/BloodImage_00001.jpg")))?;
    let mut analyzers = vec![("int8", bench_analyzer(int8))];
    if let Some(f) = f32_ref {
        analyzers.push(("f32", bench_analyzer(f)));
    }
    let analyzers: Vec<(&str, &Analyzer)> = analyzers.iter().map(|(n, a)| (*n, a)).collect();
    for (w, h) in [(640, 480), (1280, 960), (1920, 1080)] {
        let f = if (w, h) == (field.width(), field.height()) { field.clone() } else { resized(&field, w, h) };
        figs.extend(field_figures(&f, &analyzers, budget));
    }
    print_figures(&figs, json)?;
    if !json {
        // Which file the card runs here, next to what was just measured: the
        // figures a board's `precision_by_arch` entry (or [model] precision) needs.
        let per_crop = |v: &str| figs.iter().find(|f| f.what.starts_with(&format!("inference per crop, {v}")));
        if let (Some(i), Some(f), Some((_, a))) = (per_crop("int8"), per_crop("f32"), analyzers.first()) {
            println!(
                "\n{} here: the card runs {} (precision_by_arch); int8 {:.2} ms vs f32 {:.2} ms per crop: {} is faster",
                std::env::consts::ARCH,
                Precision::Auto.resolve(&a.classifier.card),
                i.median_ms,
                f.median_ms,
                if i.median_ms <= f.median_ms { "int8" } else { "f32" }
            );
        }
    }
    Ok(0)
}

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
    // Detection as `analyze` runs it: the light evened out first (when uneven).
    let (ms, runs) = median_ms(budget, 1000, || {
        std::hint::black_box(detect(&evened(field), &first.detect, first.um_per_px));
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
            std::hint::black_box(detect(&evened(field), &analyzer.detect, analyzer.um_per_px));
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
    // What the whole field spends beyond the two stages timed alone: inference,
    // morphometry and the calls (a difference of medians, so an estimate).
    let rest_ms = (whole_ms - detect_ms - prepare_ms).max(0.0) / n;
    vec![
        Figure { what: what("detect"), median_ms: detect_ms / n, runs },
        Figure { what: what("cut + prepare"), median_ms: prepare_ms / n, runs },
        Figure { what: what("inference + calls (by difference)"), median_ms: rest_ms, runs },
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
