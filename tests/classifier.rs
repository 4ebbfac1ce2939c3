//! The shipped model in the Rust runtime (tract, int8, Rust preprocessing) on real
//! validation crops that training never saw: the same calls as the Python
//! evaluation (onnxruntime on the same tensors), and blast calls that hold up.

use leukoscope::classify::model::{Classifier, Precision, Variant};
use leukoscope::vision::preprocess::prepare;
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct Golden {
    model_sha256: String,
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    path: String,
    labels: Vec<String>,
    class: String,
    p: f32,
    /// The crop's scale as training gave it (the source's scanner).
    #[serde(default)]
    um_per_px: Option<f32>,
}

impl Item {
    fn scale(&self, img: &image::RgbImage) -> f32 {
        leukoscope::classify::pipeline::crop_scale(img, self.um_per_px, &Default::default()).um_per_px
    }
}

/// In-domain blast sensitivity on the LMU validation myeloblasts. Models up to
/// v5 reached 100% (and the bound was 0.98) by recognising the LMU lab; the
/// cross-lab models v7 and v9 call 163 of 168 (97.0%: the others unidentified or
/// another immature class, routed to review), the price of blasts called blast on a
/// lab never trained on rising from 25% to about 50% (docs/classifier-levers.md).
const MIN_LMU_SENSITIVITY: f64 = 0.96;

fn models() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models"))
}

fn golden() -> Golden {
    serde_json::from_slice(&std::fs::read(models().join("golden.json")).expect("models/golden.json"))
        .expect("golden.json")
}

/// Class and top probability of every golden crop, by the Rust runtime.
fn calls(clf: &Classifier, golden: &Golden) -> Vec<(String, f32)> {
    let data = leukoscope::input::data_dir();
    assert!(data.join("lmu").is_dir(), "data folder {} missing: set LEUKOSCOPE_DATA", data.display());
    let spec = &clf.card.input.preprocessing;
    golden
        .items
        .iter()
        .map(|it| {
            let img = leukoscope::input::load_rgb(&data.join(&it.path)).expect("golden crop readable");
            let (k, p) = clf.predict(&prepare(&img, spec, None, it.scale(&img))).expect("inference").top();
            (clf.card.classes[k].code.clone(), p)
        })
        .collect()
}

/// (blast sensitivity on LMU myeloblasts, specificity on LMU neutrophils, counts).
fn blast_calls(clf: &Classifier, golden: &Golden, calls: &[(String, f32)]) -> (f64, f64, usize, usize) {
    let (mut myo, mut myo_hit, mut ngs, mut ngs_ok) = (0, 0, 0, 0);
    for (it, (code, _)) in golden.items.iter().zip(calls) {
        let blast = clf.card.blast_classes.contains(code);
        if it.path.starts_with("lmu/") {
            if it.labels == ["MYO"] {
                myo += 1;
                myo_hit += blast as usize;
            } else if it.labels == ["NGS"] {
                ngs += 1;
                ngs_ok += !blast as usize;
            }
        }
    }
    (myo_hit as f64 / myo as f64, ngs_ok as f64 / ngs as f64, myo, ngs)
}

/// The f32 file, which the card picks on x86_64 because tract runs it faster,
/// makes the int8 model's calls: the same class on nearly every crop and the
/// same blast calls.
#[test]
fn f32_variant_makes_the_int8_calls() {
    let golden = golden();
    let card = models().join("leukoscope.card.json");
    let f32m = Classifier::load_precision(&card, Precision::F32).expect("f32 model loads");
    assert_eq!(f32m.variant, Variant::F32);
    assert_ne!(f32m.card.sha256, golden.model_sha256, "the f32 file is another file");
    let calls = calls(&f32m, &golden);
    let same = golden.items.iter().zip(&calls).filter(|(it, (c, _))| *c == it.class).count();
    let agreement = same as f64 / golden.items.len() as f64;
    let (sens, spec, myo, ngs) = blast_calls(&f32m, &golden, &calls);
    println!("f32 vs int8 (onnxruntime) on {} crops: class agreement {agreement:.4}", golden.items.len());
    println!("f32 blast sensitivity {sens:.4} ({myo} MYO), specificity {spec:.4} ({ngs} NGS)");
    assert!(agreement >= 0.98, "class agreement {agreement}");
    assert!(sens >= MIN_LMU_SENSITIVITY && spec >= 0.98, "blast sensitivity {sens}, specificity {spec}");
}

#[test]
fn rust_runtime_matches_python_and_calls_blasts() {
    let golden = golden();
    // The golden probabilities are onnxruntime's on the int8 file: compare like with like.
    let clf = Classifier::load_precision(&models().join("leukoscope.card.json"), Precision::Int8)
        .expect("shipped model loads");
    assert_eq!(
        clf.card.sha256, golden.model_sha256,
        "golden.json was made with another model: rerun tools/pipeline.py golden"
    );
    let calls = calls(&clf, &golden);
    let (mut agree, mut max_dp) = (0usize, 0f32);
    for (it, (code, p)) in golden.items.iter().zip(&calls) {
        if *code == it.class {
            agree += 1;
            max_dp = max_dp.max((p - it.p).abs());
        }
    }
    let (sens, spec_, myo, ngs) = blast_calls(&clf, &golden, &calls);
    let n = golden.items.len();
    let agreement = agree as f64 / n as f64;
    println!("{n} crops: class agreement with onnxruntime {agreement:.4}, max |dp| {max_dp:.4}");
    println!("LMU validation: blast sensitivity {sens:.4} ({myo} MYO), specificity {spec_:.4} ({ngs} NGS)");
    assert!(n >= 200 && myo >= 100 && ngs >= 100, "golden set too small");
    // Skew: tract int8 vs onnxruntime int8 on the same tensors may differ by rounding
    // only; more than 0.5% disagreement means the runtime sees something else.
    assert!(agreement >= 0.995, "class agreement {agreement}");
    assert!(max_dp < 0.02, "probability difference {max_dp}");
    assert!(sens >= MIN_LMU_SENSITIVITY && spec_ >= 0.98, "blast sensitivity {sens}, specificity {spec_}");
}

/// A cell seen by a finer camera (the crop upscaled 2x and 3x), cut from the
/// field and averaged down as `analyze` does (`RegionGeometry::of`: the largest
/// factor that keeps 1.5 region pixels per input pixel across the nucleus
/// window), gets the calls of the crop itself: the averaging that makes
/// preparation cost the same at every camera resolution does not move them.
#[test]
fn averaged_down_regions_of_finer_cameras_keep_the_calls() {
    use leukoscope::classify::pipeline::{cell_region, RegionGeometry};
    use leukoscope::vision::color::Background;
    use leukoscope::vision::mask::BBox;
    use leukoscope::vision::preprocess::find_central_nucleus;
    let clf = Classifier::load(&models().join("leukoscope.card.json")).expect("shipped model loads");
    let golden = golden();
    let direct = calls(&clf, &golden);
    let (sens, spec_, _, _) = blast_calls(&clf, &golden, &direct);
    let data = leukoscope::input::data_dir();
    let spec = &clf.card.input.preprocessing;
    for up in [2u32, 3] {
        let (mut factors, mut same) = (0i64, 0usize);
        let mut region_calls = Vec::new();
        for (it, (code, _)) in golden.items.iter().zip(&direct) {
            let crop = leukoscope::input::load_rgb(&data.join(&it.path)).expect("golden crop readable");
            let field_um = it.scale(&crop) / up as f32;
            let (w, h) = (crop.width() * up, crop.height() * up);
            let field = image::imageops::resize(&crop, w, h, image::imageops::FilterType::Triangle);
            // As a detector would report it: the nucleus, and a cell box half
            // the crop's side (the region, twice the cell, is then the crop).
            let bg = Background::estimate(&field);
            let nucleus = find_central_nucleus(&field, &bg, spec.min_nucleus_od).map(|n| n.bbox).unwrap_or(BBox {
                x0: w / 2 - 1,
                y0: h / 2 - 1,
                x1: w / 2 + 1,
                y1: h / 2 + 1,
            });
            let cell = BBox { x0: w / 4, y0: h / 4, x1: w / 4 + w.max(h) / 2, y1: h / 4 + w.max(h) / 2 };
            let geometry = RegionGeometry::of(cell, nucleus, spec, field_um);
            factors += geometry.f;
            let region = cell_region(&field, geometry);
            let p = clf.predict(&prepare(&region, spec, Some(bg), geometry.um_per_px(field_um))).expect("inference");
            let (k, top) = p.top();
            let got = clf.card.classes[k].code.clone();
            same += (&got == code) as usize;
            region_calls.push((got, top));
        }
        let n = golden.items.len();
        let mean_f = factors as f64 / n as f64;
        let (s, sp, myo, ngs) = blast_calls(&clf, &golden, &region_calls);
        eprintln!(
            "x{up}: mean averaging factor {mean_f:.2}; same class as the crop {same}/{n}; \
             blast sensitivity {:.1}% ({myo} MYO), specificity {:.1}% ({ngs} NGS)",
            100.0 * s,
            100.0 * sp
        );
        // The test means something only if regions were averaged down.
        assert!(mean_f > up as f64 * 0.5, "x{up}: mean factor {mean_f:.2}: regions were not averaged down");
        // 16 classes (v7, v9) put more crops near a boundary than v5's 12: v9 keeps
        // 468/474 at x2 (v7: 464/474, v5: 432/433); the blast calls do not move (below).
        assert!(same as f64 >= 0.97 * n as f64, "x{up}: only {same}/{n} crops keep their class");
        assert!(s >= sens - 1.0 / myo as f64 && sp >= spec_ - 1.0 / ngs as f64, "x{up}: blast calls moved: {s} {sp}");
    }
}

/// A crop's scale is what the detector would find in it: the red cells when
/// they tell (PBC/LMU crops show some), else the fallback.
#[test]
fn crop_scale_is_the_detectors_scale() {
    use leukoscope::classify::pipeline::crop_scale;
    use leukoscope::vision::detect::{DetectParams, FieldScale, ScaleSource};
    let data = leukoscope::input::data_dir();
    let params = DetectParams::default();
    let (mut red, mut fallback) = (0, 0);
    for dir in ["pbc/lymphocyte", "pbc/neutrophil", "lmu/MYO", "lmu/NGS"] {
        let mut files: Vec<_> = std::fs::read_dir(data.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}: set LEUKOSCOPE_DATA"))
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        for p in files.iter().step_by(53).take(8) {
            let img = leukoscope::input::load_rgb(p).expect("crop");
            let scale = crop_scale(&img, None, &params);
            assert_eq!(scale, leukoscope::vision::detect::detect(&img, &params, None).scale, "{}", p.display());
            red += (scale.source == ScaleSource::RedCells) as usize;
            fallback += (scale.source == ScaleSource::Fallback) as usize;
        }
    }
    assert!(red > 0 && fallback > 0, "both paths seen: {red} red cells, {fallback} fallback");
    assert_eq!(
        crop_scale(&image::RgbImage::new(5, 5), Some(0.2), &params),
        FieldScale::new(0.2, ScaleSource::Configured)
    );
}
