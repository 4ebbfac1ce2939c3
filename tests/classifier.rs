//! The shipped model in the Rust runtime (tract, int8, Rust preprocessing) on real
//! validation crops that training never saw: the same calls as the Python
//! evaluation (onnxruntime on the same tensors), and blast calls that hold up.

use leukoscope::model::Classifier;
use leukoscope::preprocess::prepare;
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
}

fn models() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models"))
}

#[test]
fn rust_runtime_matches_python_and_calls_blasts() {
    let golden: Golden =
        serde_json::from_slice(&std::fs::read(models().join("golden.json")).expect("models/golden.json"))
            .expect("golden.json");
    let clf = Classifier::load(&models().join("leukoscope.card.json")).expect("shipped model loads");
    assert_eq!(
        clf.card.sha256, golden.model_sha256,
        "golden.json was made with another model: rerun tools/pipeline.py golden"
    );
    let data = leukoscope::input::data_dir();
    assert!(data.join("lmu").is_dir(), "data folder {} missing: set LEUKOSCOPE_DATA", data.display());
    let spec = &clf.card.input.preprocessing;
    let (mut agree, mut max_dp) = (0usize, 0f32);
    let (mut myo, mut myo_hit, mut ngs, mut ngs_ok) = (0, 0, 0, 0);
    for it in &golden.items {
        let img = leukoscope::input::load_rgb(&data.join(&it.path)).expect("golden crop readable");
        let pred = clf.predict(&prepare(&img, spec, None)).expect("inference");
        let (k, p) = pred.top();
        let code = &clf.card.classes[k].code;
        if *code == it.class {
            agree += 1;
            max_dp = max_dp.max((p - it.p).abs());
        }
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
    let n = golden.items.len();
    let agreement = agree as f64 / n as f64;
    let (sens, spec_) = (myo_hit as f64 / myo as f64, ngs_ok as f64 / ngs as f64);
    println!("{n} crops: class agreement with onnxruntime {agreement:.4}, max |dp| {max_dp:.4}");
    println!("LMU validation: blast sensitivity {sens:.4} ({myo_hit}/{myo}), specificity {spec_:.4} ({ngs_ok}/{ngs})");
    assert!(n >= 200 && myo >= 100 && ngs >= 100, "golden set too small");
    // Skew: tract int8 vs onnxruntime int8 on the same tensors may differ by rounding
    // only; more than 0.5% disagreement means the runtime sees something else.
    assert!(agreement >= 0.995, "class agreement {agreement}");
    assert!(max_dp < 0.02, "probability difference {max_dp}");
    // The acceptance level for in-domain blast calls.
    assert!(sens >= 0.98 && spec_ >= 0.98, "blast sensitivity {sens}, specificity {spec_}");
}
