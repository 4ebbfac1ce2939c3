//! The report files for people and for a laboratory system (`report.html`,
//! `report.fhir.json`, `report.hl7`) as `analyze --out` and the appliance's
//! FINISH write them, on real cells; the FHIR Bundle is validated by an
//! independent library (tools/check_fhir.py, PyPI fhir.resources 6.1.0 = FHIR
//! R4 4.0.1), the HL7 v2 message parsed by another (tools/check_hl7.py, PyPI hl7).

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    let mut c = common::bin();
    c.env("RUST_LOG", "warn");
    c
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("reportfiles", name)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
}

/// The Observation of a LOINC code, if any.
fn observation<'a>(bundle: &'a Value, loinc: &str) -> Option<&'a Value> {
    bundle["entry"].as_array()?.iter().map(|e| &e["resource"]).find(|r| {
        r["resourceType"] == "Observation"
            && r["code"]["coding"].as_array().is_some_and(|c| c.iter().any(|c| c["code"] == loinc))
    })
}

/// Myeloblasts and neutrophils of the LMU lab at its scale, and two BCCD
/// fields: `analyze --out` writes a printable report with the sample and
/// operator, the counts of results.json, every blast's crop inline and nothing
/// fetched from elsewhere; and a FHIR bundle with the same percentages under
/// their LOINC codes, which the independent validator accepts.
#[test]
fn analyze_writes_a_printable_report_and_a_valid_fhir_bundle() {
    let out = scratch("analyze");
    let config = out.join("lmu.toml");
    // The LMU scanner's scale (the model card's source_um_per_px.lmu).
    std::fs::write(&config, "[scale]\num_per_px = 0.138\n").expect("config");
    let report = out.join("report");
    let mut inputs = common::images("lmu/MYO", 8);
    inputs.extend(common::images("lmu/NGS", 4));
    inputs.extend(common::images("bccd/JPEGImages", 2));
    let sample = "S-17 <b>&\"x\"";
    let o = bin()
        .args(["analyze", "--config"])
        .arg(&config)
        .args(["--sample-id", sample, "--operator-id", "tech-4", "--out"])
        .arg(&report)
        .args(&inputs)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc = read_json(&report.join("results.json"));
    let s = &doc["summary"];
    let cells = s["cells"].as_u64().expect("cells");
    let blasts = s["blasts"].as_u64().expect("blasts");
    assert!(blasts >= 4, "the LMU myeloblasts give blasts: {s}");
    assert_eq!(doc["sample"]["id"], sample);

    let html = std::fs::read_to_string(report.join("report.html")).expect("report.html");
    assert!(html.contains("S-17 &lt;b&gt;&amp;&quot;x&quot;"), "sample ID escaped");
    assert!(!html.contains(sample), "raw markup from the sample ID");
    assert!(html.contains("tech-4"));
    assert!(html.contains("PRELIMINARY") && !html.contains("VERIFIED"));
    assert!(html.contains(leukoscope::DISCLAIMER));
    assert!(html.contains(&format!("leukoscope {}", env!("CARGO_PKG_VERSION"))));
    assert!(html.contains(doc["model"]["name"].as_str().expect("model name")));
    assert!(html.contains("leukoscope-report/1"));
    assert!(html.contains("<svg"), "bar chart");
    // Where the scale came from: all 14 fields at the configured (LMU) one,
    // which the two BCCD fields' red cells disagree with.
    assert!(
        html.contains("<th>Scale</th><td>Scale of 14 fields: 14 configured, 2 whose own red cells disagree with it"),
        "scale row"
    );
    let ci = s["ci95"].as_array().expect("ci95");
    let blast_line = format!(
        "Blasts: {blasts} of {cells} leukocytes = {:.1}% (95% CI {:.1}&ndash;{:.1}%)",
        s["blast_percent"].as_f64().expect("pct"),
        ci[0].as_f64().expect("lo"),
        ci[1].as_f64().expect("hi")
    );
    assert!(html.contains(&blast_line), "{blast_line}");
    assert_eq!(s["flag"], true);
    assert!(html.contains("AT OR ABOVE THE 20% THRESHOLD"));
    // One inline image per blast, each the crop file's bytes.
    assert_eq!(html.matches("src=\"data:image/png;base64,").count() as u64, blasts);
    let first_blast = doc["images"]
        .as_array()
        .expect("images")
        .iter()
        .flat_map(|i| i["cells"].as_array().cloned().unwrap_or_default())
        .find(|c| c["blast"] == true)
        .expect("a blast");
    let png = std::fs::read(report.join(first_blast["crop"].as_str().expect("crop"))).expect("crop file");
    assert!(html.contains(&leukoscope::report::html::base64(&png)));
    // Self-contained: nothing loaded from anywhere, and a policy that forbids it.
    for bad in ["<script", "src=\"http", "href=", "@import", "url(", "<link"] {
        assert!(!html.contains(bad), "report.html contains {bad}");
    }
    assert!(html.contains("default-src 'none'"));

    let fhir_path = report.join("report.fhir.json");
    let bundle = read_json(&fhir_path);
    let pct = |o: &Value| o["valueQuantity"]["value"].as_f64().expect("value");
    let b = observation(&bundle, "26446-5").expect("blast observation");
    assert!((pct(b) - s["blast_percent"].as_f64().unwrap()).abs() < 0.051, "{b}");
    assert_eq!(b["valueQuantity"]["code"], "%");
    assert_eq!(b["interpretation"][0]["coding"][0]["code"], "H", "flagged");
    let myo = observation(&bundle, "30445-1").expect("myeloblasts");
    let n_myo = s["by_class"]["MYO"].as_u64().expect("MYO");
    assert!((pct(myo) - 100.0 * n_myo as f64 / cells as f64).abs() < 0.051);
    let ngs = s["by_class"]["NGS"].as_u64().unwrap_or(0);
    if ngs > 0 {
        let o = observation(&bundle, "26505-8").expect("segmented neutrophils");
        assert!((pct(o) - 100.0 * ngs as f64 / cells as f64).abs() < 0.051);
    }
    let report_res = &bundle["entry"][0]["resource"];
    assert_eq!(report_res["resourceType"], "DiagnosticReport");
    assert_eq!(report_res["status"], "preliminary");
    assert_eq!(report_res["performer"][0]["identifier"]["value"], "tech-4");
    let text = bundle.to_string();
    assert!(text.contains(sample.replace('"', "\\\"").as_str()), "the sample ID as the specimen's accession");
    assert!(text.contains(doc["model"]["sha256"].as_str().expect("sha")));
    common::validate_fhir(&fhir_path, "preliminary");

    // The same results as an HL7 v2 ORU^R01 message, parsed by an independent library.
    let hl7 = std::fs::read_to_string(report.join("report.hl7")).expect("report.hl7");
    assert!(hl7.starts_with("MSH|^~\\&|leukoscope|") && hl7.contains("|ORU^R01^ORU_R01|"), "{hl7}");
    assert!(hl7.contains(&format!("|leukoscope {}|", env!("CARGO_PKG_VERSION"))), "the software version");
    assert!(hl7.contains(doc["model"]["sha256"].as_str().expect("sha")), "the model version");
    assert!(hl7.contains("|26446-5^Blasts/100 leukocytes in Blood^LN|"));
    assert!(hl7.contains("S-17 <b>\\T\\\"x\""), "the sample ID, its & escaped");
    common::validate_hl7(&report.join("report.hl7"), "P", Some(sample));
    std::fs::remove_dir_all(&out).ok();
}

/// The appliance's FINISH writes the same two files into the session folder,
/// with the session's sample ID.
#[test]
fn finish_writes_the_report_files() {
    let dir = scratch("finish");
    let config = common::write_run_config(&dir, "");
    let o =
        common::scripted_run(&dir, &config, "1 start\n40 finish\n", 30).arg("--until-finished").output().expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sessions: Vec<PathBuf> =
        std::fs::read_dir(dir.join("state/sessions")).expect("sessions").flatten().map(|e| e.path()).collect();
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    let doc = read_json(&s.join("results.json"));
    assert!(doc["summary"]["cells"].as_u64().expect("cells") > 0);
    let html = std::fs::read_to_string(s.join("report.html")).expect("report.html");
    assert!(html.contains("<title>Leukocyte differential: sample S0001</title>"));
    let fhir = s.join("report.fhir.json");
    let bundle = read_json(&fhir);
    let cells = observation(&bundle, "leukocytes-counted").expect("cells counted");
    assert_eq!(cells["valueQuantity"]["value"], doc["summary"]["cells"]);
    common::validate_fhir(&fhir, "preliminary");
    common::validate_hl7(&s.join("report.hl7"), "P", Some("S0001"));
    std::fs::remove_dir_all(&dir).ok();
}
