//! `leukoscope calibrate` as a user runs it, checked against the red-cell
//! size BCCD's annotators drew, and a configured scale used by `analyze`.

use common::bccd::Bccd;
use leukoscope::vision::detect::DetectParams;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::bin;

mod common;

fn scratch(name: &str) -> PathBuf {
    common::scratch("calibrate", name)
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run leukoscope");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn bccd_test() -> (Bccd, Vec<String>) {
    let b = Bccd::new(&leukoscope::input::data_dir());
    let ids = b.split("test").unwrap_or_else(|e| panic!("{e}: set LEUKOSCOPE_DATA"));
    assert_eq!(ids.len(), 72);
    (b, ids)
}

#[test]
fn calibrate_on_bccd_matches_the_annotated_red_cells() {
    let (b, ids) = bccd_test();
    let expected = b.annotated_scale(&ids, DetectParams::default().rbc_diameter_um);
    let out = ok(bin().args(["calibrate", "--json"]).args(ids.iter().map(|id| b.image_path(id))));
    let c = json(&out);
    let got = c["um_per_px"].as_f64().expect("um_per_px") as f32;
    let used = c["fields_used"].as_u64().expect("fields_used");
    println!("calibrate on the 72 BCCD test fields: {got:.4} um/px ({used} fields, {} cells, IQR {}-{}); red-cell boxes imply {expected:.4}",
        c["cells"], c["q1"], c["q3"]);
    assert!((got / expected - 1.0).abs() <= 0.05, "calibrated {got} vs annotated {expected}");
    assert!(used >= 60, "{c}");
    assert!(c["q1"].as_f64() <= c["um_per_px"].as_f64() && c["um_per_px"].as_f64() <= c["q3"].as_f64());
}

#[test]
fn calibrate_writes_the_config_and_analyze_uses_it() {
    let dir = scratch("write");
    let config = dir.join("leukoscope.toml");
    std::fs::write(&config, "# bench microscope\n[count]\nblast_threshold_percent = 15.0\n").expect("write");
    // A stage micrometer: 100 µm over 1370 px.
    let out = ok(bin()
        .args([
            "calibrate",
            "--micrometer-px",
            "1370",
            "--micrometer-um",
            "100",
            "--objective",
            "100x",
            "--write",
            "--config",
        ])
        .arg(&config));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0.0730") && text.contains("100x"), "{text}");
    let file = std::fs::read_to_string(&config).expect("read");
    assert!(file.contains("# bench microscope") && file.contains("objective = \"100x\""), "{file}");

    // A field whose own red cells cannot tell the scale (a CellaVision crop
    // filled by a leukocyte falls back when estimated alone) uses the
    // configured one, never the fallback; a field far off it is flagged.
    let (b, ids) = bccd_test();
    let mut fields: Vec<PathBuf> = ids.iter().take(4).map(|id| b.image_path(id)).collect();
    let pbc = leukoscope::input::data_dir().join("txl/pbc");
    let mut crops: Vec<PathBuf> = std::fs::read_dir(&pbc)
        .unwrap_or_else(|e| panic!("{}: {e}", pbc.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    crops.sort();
    fields.extend(crops.into_iter().take(8));
    // Unconfigured, the batch calibrates on itself and such a field takes the
    // batch's scale instead of the fallback.
    let folder = dir.join("batch-report");
    let unconfigured = json(&ok(bin().args(["analyze", "--json", "--out"]).arg(&folder).args(&fields)));
    let html = std::fs::read_to_string(folder.join("report.html")).expect("report.html");
    assert!(html.contains("calibrated on this batch: 0.07"), "the report names the batch's scale");
    let s = &unconfigured["summary"]["scale"];
    assert_eq!(s["fallback"], 0, "{s}");
    assert!(s["calibrated"].as_u64().expect("summary.scale.calibrated") > 0, "some fields cannot tell: {s}");
    assert_eq!(unconfigured["batch_calibration"]["method"], "red_cells", "{}", unconfigured["batch_calibration"]);
    // One such field alone (no batch) still falls back.
    let alone = fields
        .iter()
        .zip(unconfigured["images"].as_array().expect("images"))
        .find_map(|(p, img)| (img["scale"]["source"] == "calibrated").then_some(p));
    let alone = json(&ok(bin().args(["analyze", "--json"]).arg(alone.expect("a field that cannot tell"))));
    assert_eq!(alone["images"][0]["scale"]["source"], "fallback", "{}", alone["images"][0]["scale"]);
    let doc = json(&ok(bin().args(["analyze", "--json", "--config"]).arg(&config).args(&fields)));
    for img in doc["images"].as_array().expect("images") {
        assert_eq!(img["scale"]["source"], "configured", "{}", img["scale"]);
        assert!((img["scale"]["um_per_px"].as_f64().unwrap_or(0.0) - 0.073).abs() < 1e-4);
    }
    assert_eq!(doc["summary"]["scale"]["fallback"], 0);
    assert_eq!(doc["summary"]["scale"]["configured"], fields.len() as u64);
    // BCCD's own fields agree with BCCD's scale...
    for img in &doc["images"].as_array().expect("images")[..4] {
        assert!(img["scale"]["disagrees"].is_null(), "{}", img["scale"]);
    }
    // ...and disagree with the scale of an objective twice as strong (the
    // operator switched objective and not the config).
    ok(bin()
        .args([
            "calibrate",
            "--micrometer-px",
            "685",
            "--micrometer-um",
            "100",
            "--objective",
            "50x",
            "--write",
            "--config",
        ])
        .arg(&config));
    let doc = json(&ok(bin().args(["analyze", "--json", "--config"]).arg(&config).args(&fields[..4])));
    assert_eq!(doc["summary"]["scale"]["disagrees"], 4, "{}", doc["summary"]["scale"]);
    for img in doc["images"].as_array().expect("images") {
        let own = img["scale"]["red_cells"].as_f64().expect("the field's own estimate");
        assert!((own / 0.073 - 1.0).abs() < 0.15, "{}", img["scale"]);
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn calibrate_errors_are_clear() {
    let out = bin().args(["calibrate", "--micrometer-px", "0", "--micrometer-um", "100"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("micrometer"));
    let out = bin().args(["calibrate"]).output().expect("run");
    assert!(!out.status.success());
}
