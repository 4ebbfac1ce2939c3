//! Cells, not labs: the shipped model on a lab it was never trained on
//! (`jhh/`, Johns Hopkins, CellaVision; evaluation only) and on the LMU cells
//! of the classes that are not blasts, from the very lab whose myeloblasts it
//! learned. A fixed sample of the figures of `docs/classifier-report.md`
//! (`python tools/crosslab.py`), so that a regression fails here; plus the
//! abstention on inputs that hold no cell at all.

use leukoscope::classify::count::{Call, CallRules, Doubt};
use leukoscope::classify::model::{Classifier, ModelCard};
use leukoscope::vision::preprocess::prepare;
use std::path::{Path, PathBuf};

fn card_path() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/leukoscope.card.json")).to_path_buf()
}

/// The scale (µm per pixel) of a training source's crops, as the card records it.
fn source_scale(card: &ModelCard, source: &str) -> f32 {
    card.extra["source_um_per_px"][source].as_f64().unwrap_or_else(|| panic!("card lacks source_um_per_px.{source}"))
        as f32
}

fn data() -> PathBuf {
    let d = leukoscope::input::data_dir();
    assert!(d.join("jhh/manifest.csv").is_file(), "data folder {} lacks jhh/: set LEUKOSCOPE_DATA", d.display());
    d
}

/// Every `step`-th file of a folder, sorted: a fixed sample.
fn sample(dir: &Path, step: usize) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files.into_iter().step_by(step).collect()
}

/// The calls of the runtime on crops at `um_per_px`.
fn calls(clf: &Classifier, paths: &[PathBuf], um_per_px: f32) -> Vec<Call> {
    let rules = CallRules::from_card(&clf.card);
    let spec = &clf.card.input.preprocessing;
    paths
        .iter()
        .map(|p| {
            let img = leukoscope::input::load_rgb(p).expect("crop readable");
            rules.call(&clf.card, &clf.predict(&prepare(&img, spec, None, um_per_px)).expect("inference"))
        })
        .collect()
}

fn share(calls: &[Call], pred: impl Fn(&Call) -> bool) -> f64 {
    calls.iter().filter(|c| pred(c)).count() as f64 / calls.len().max(1) as f64
}

fn is_blast(c: &Call) -> bool {
    matches!(c, Call::Cell { blast: true, .. })
}

fn is_code(c: &Call, codes: &[&str]) -> bool {
    matches!(c, Call::Cell { code, .. } if codes.contains(&code.as_str()))
}

const MATURE_NORMAL: [&str; 6] = ["LYT", "MON", "NGS", "NGB", "EOS", "BAS"];

/// A fixed quarter of jhh's blasts, lymphocytes, segmented neutrophils and
/// monocytes: the cross-lab figures hold (bounds a few points under the
/// whole-set figures of docs/classifier-report.md, for sampling noise).
#[test]
fn a_lab_never_trained_on_gets_the_calls() {
    let clf = Classifier::load(&card_path()).expect("shipped model loads");
    let um = source_scale(&clf.card, "pbc"); // the same scanner (CellaVision) as PBC
    let jhh = data().join("jhh");
    let blasts = calls(&clf, &sample(&jhh.join("BLAST"), 4), um);
    let mut normals = Vec::new();
    let mut correct = Vec::new();
    for code in ["LYT", "NGS", "MON"] {
        let c = calls(&clf, &sample(&jhh.join(code), 4), um);
        correct.push((code, share(&c, |x| is_code(x, &[code])), c.len()));
        normals.extend(c);
    }
    let sens = share(&blasts, is_blast);
    let blast_as_normal = share(&blasts, |c| is_code(c, &MATURE_NORMAL));
    let normal_as_blast = share(&normals, is_blast);
    println!(
        "jhh sample: {} blasts called blast {sens:.3}, called mature normal {blast_as_normal:.3}; \
         {} normal cells called blast {normal_as_blast:.3}; correct {correct:?}",
        blasts.len(),
        normals.len()
    );
    assert!(blasts.len() >= 150 && normals.len() >= 350, "sample too small");
    assert!(sens >= MIN_BLAST_SENSITIVITY, "blasts called blast {sens}");
    assert!(blast_as_normal <= MAX_BLAST_AS_NORMAL, "blasts called mature normal {blast_as_normal}");
    assert!(normal_as_blast <= MAX_NORMAL_AS_BLAST, "mature normal cells called blast {normal_as_blast}");
    for (code, s, _) in correct {
        assert!(s >= MIN_CORRECT, "{code} called {code}: {s}");
    }
}

/// The myeloblasts' own lab: its lymphocytes and monocytes are not blasts, its
/// monoblasts are.
#[test]
fn the_training_labs_other_cells_are_not_blasts() {
    let clf = Classifier::load(&card_path()).expect("shipped model loads");
    let um = source_scale(&clf.card, "lmu");
    let lmu = data().join("lmu");
    let mut report = Vec::new();
    for (code, max_blast) in [("LYT", MAX_LMU_LYT_BLAST), ("MON", MAX_LMU_MON_BLAST)] {
        let c = calls(&clf, &sample(&lmu.join(code), 1), um);
        let n = c.iter().filter(|x| is_blast(x)).count();
        report.push(format!("{code} {n}/{} called blast", c.len()));
        assert!(n <= max_blast, "LMU {code}: {n} of {} called blast", c.len());
    }
    let mob = calls(&clf, &sample(&lmu.join("MOB"), 1), um);
    let mob_blast = share(&mob, is_blast);
    println!("LMU: {}, MOB {mob_blast:.3} called blast", report.join(", "));
    assert!(mob_blast >= MIN_LMU_MOB_BLAST, "LMU monoblasts called blast {mob_blast}");
}

/// Nothing to classify is never a class: blank, uniform, black, 1x1.
#[test]
fn inputs_without_a_cell_are_unidentified() {
    let clf = Classifier::load(&card_path()).expect("shipped model loads");
    let rules = CallRules::from_card(&clf.card);
    let spec = &clf.card.input.preprocessing;
    for (w, h, rgb) in [(360, 360, [255u8; 3]), (360, 360, [128; 3]), (360, 360, [0; 3]), (1, 1, [90, 40, 140])] {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
        let call = rules.call(&clf.card, &clf.predict(&prepare(&img, spec, None, 0.2)).expect("inference"));
        assert!(matches!(call, Call::Unidentified { why: Doubt::NoNucleus, .. }), "{w}x{h} {rgb:?}: {call:?}");
    }
}

// Bounds a few points beyond the figures of the shipped model (leukoscope-cnn-v9, f32 on
// x86_64) on this sample: blasts called blast 0.482, blasts called mature normal 0.030,
// mature normal called blast 0.012, LYT / NGS / MON correct 0.380 / 0.528 / 0.344 (most
// of the rest unidentified: routed to review); LMU LYT 1/17 and MON 1/19 called blast,
// MOB 1.000. The targets (0.85 / 0.05 / 0.03 / 0.80) are not reached yet: see
// docs/classifier-report.md. LMU LYT/MON: 80% of these cells were in the training split.
const MIN_BLAST_SENSITIVITY: f64 = 0.45;
const MAX_BLAST_AS_NORMAL: f64 = 0.08;
const MAX_NORMAL_AS_BLAST: f64 = 0.03;
const MIN_CORRECT: f64 = 0.30;
const MAX_LMU_LYT_BLAST: usize = 2;
const MAX_LMU_MON_BLAST: usize = 2;
const MIN_LMU_MOB_BLAST: f64 = 0.8;
