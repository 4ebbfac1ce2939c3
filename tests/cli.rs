//! The `leukoscope` binary as a user runs it: the JSON contract, report files,
//! and clear errors for bad input, on real smear images.

use common::{bin, data, field, files_under as walk};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

fn card() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/leukoscope.card.json")
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("cli", name)
}

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("run leukoscope");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn a_field_with_one_neutrophil_is_one_cell_not_a_blast() {
    // BloodImage_00001: one segmented neutrophil among red cells (see BCCD annotations: one WBC box).
    let (out, err) = run(bin().args(["analyze", "--json"]).arg(field("BloodImage_00001")));
    assert!(out.status.success(), "{err}");
    let doc = json(&out);
    let cells = doc["images"][0]["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 1, "{cells:?}");
    // BCCD is a lab the model never saw (webcam, high magnification, soft focus).
    // A call it commits to must be a neutrophil. It may instead leave the cell
    // unidentified (the product's rule: never force a doubtful cell into a
    // class): that is a safe answer, never a silent one. The cell is then
    // counted as unidentified, not as any class, for a reason that holds, and
    // the text a person reads says so.
    let cell = &cells[0];
    let class = cell["class"].as_str().unwrap_or("");
    let s = &doc["summary"];
    assert_eq!(s["cells"], 1);
    assert_eq!(s["blasts"], 0);
    assert_eq!(cell["blast"], false);
    let card: Value = serde_json::from_slice(&std::fs::read(card()).expect("card")).expect("card json");
    match class {
        "NGS" | "NGB" => {
            assert_eq!(s["by_class"][class], 1, "{s}");
            assert_eq!(s["unidentified"], 0, "{s}");
        }
        "UNID" => {
            eprintln!("the neutrophil of BloodImage_00001 is left unidentified: {cell}");
            assert_eq!(s["unidentified"], 1, "counted as unidentified: {s}");
            assert_eq!(s["by_class"].as_object().map(|m| m.len()), Some(0), "and as no class: {s}");
            let best = cell["best_class"].as_str().expect("best_class");
            assert!(!card["blast_classes"].as_array().expect("blast classes").iter().any(|b| b == best), "{cell}");
            let conf = cell["confidence"].as_f64().expect("confidence");
            match cell["call"]["why"].as_str() {
                Some("low_confidence") => {
                    assert!(conf < card["min_confidence"].as_f64().expect("min_confidence"), "{cell}")
                }
                Some("unfamiliar" | "no_nucleus") => assert_eq!(s["unfamiliar"], 1, "{s}"),
                other => panic!("unidentified without a reason ({other:?}): {cell}"),
            }
            let (out, err) = run(bin().arg("analyze").arg(field("BloodImage_00001")));
            assert!(out.status.success(), "{err}");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("Unidentified: 1"), "the text says so: {text}");
        }
        other => panic!("a neutrophil called {other}: {cell}"),
    }
    assert_eq!(doc["model"]["sha256"].as_str().map(str::len), Some(64));
    // The report names the file that made the calls, and its hash is that file's.
    let file = doc["model"]["file"].as_str().expect("model file");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let sha = leukoscope::classify::model::sha256_file(&models.join(file)).expect("model file readable");
    assert_eq!(doc["model"]["sha256"].as_str(), Some(sha.as_str()));
}

#[test]
fn summary_adds_up_over_a_batch_and_report_files_are_written() {
    let out_dir = scratch("report");
    // Test fields whose annotated leukocyte lies wholly inside the image.
    let bccd = common::bccd::Bccd::new(&data());
    let ids: Vec<String> = bccd
        .split("test")
        .expect("BCCD test split")
        .into_iter()
        .filter(|id| common::one_whole_wbc(&bccd.annotation(id).expect("annotation")))
        .take(6)
        .collect();
    assert!(ids.len() >= 5, "{ids:?}");
    let mut cmd = bin();
    cmd.args(["analyze", "--json", "--out"]).arg(&out_dir);
    for id in &ids {
        cmd.arg(field(id));
    }
    let (out, err) = run(&mut cmd);
    assert!(out.status.success(), "{err}");
    let doc = json(&out);
    let images = doc["images"].as_array().expect("images");
    assert_eq!(images.len(), ids.len());
    let counted: usize = images.iter().map(|i| i["cells"].as_array().map_or(0, Vec::len)).sum();
    let s = &doc["summary"];
    assert_eq!(s["cells"].as_u64(), Some(counted as u64));
    let by_class: u64 = s["by_class"].as_object().expect("by_class").values().filter_map(Value::as_u64).sum();
    assert_eq!(by_class + s["unidentified"].as_u64().unwrap_or(0), counted as u64);
    assert!(counted >= ids.len(), "each of these fields holds a whole leukocyte: {counted} counted in {ids:?}");
    let ci = s["ci95"].as_array().expect("ci95");
    let p = s["blast_percent"].as_f64().expect("blast_percent");
    assert!(ci[0].as_f64().unwrap() <= p && p <= ci[1].as_f64().unwrap());
    // Report: the same JSON, a CSV row per cell, a crop per cell.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).expect("results.json")).expect("json");
    assert_eq!(saved["summary"], doc["summary"]);
    let csv = std::fs::read_to_string(out_dir.join("cells.csv")).expect("cells.csv");
    let rows = csv.lines().count() - 1;
    let all: usize = images
        .iter()
        .map(|i| i["cells"].as_array().map_or(0, Vec::len) + i["not_counted"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(rows, all);
    let crops = walk(&out_dir.join("crops"));
    assert_eq!(crops.len(), all);
    assert!(crops.iter().all(|p| image::open(p).is_ok()));
}

#[test]
fn corrupt_image_in_a_batch_is_named_and_the_rest_is_processed() {
    let dir = scratch("corrupt");
    std::fs::copy(field("BloodImage_00001"), dir.join("a_good.jpg")).expect("copy");
    let mut bytes = std::fs::read(field("BloodImage_00007")).expect("read");
    bytes.truncate(300);
    std::fs::write(dir.join("b_truncated.jpg"), &bytes).expect("write");
    std::fs::write(dir.join("c_not_an_image.png"), b"hello").expect("write");
    let (out, err) = run(bin().args(["analyze", "--json"]).arg(&dir));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("b_truncated.jpg") && err.contains("c_not_an_image.png"), "{err}");
    let doc = json(&out);
    let images = doc["images"].as_array().expect("images");
    assert_eq!(images.len(), 3);
    assert_eq!(images[0]["cells"].as_array().map(Vec::len), Some(1));
    assert!(images[1]["error"].as_str().is_some_and(|e| e.contains("b_truncated.jpg")));
    // classify reports the same way.
    let (out, err) =
        run(bin().args(["classify", "--json"]).arg(dir.join("c_not_an_image.png")).arg(dir.join("a_good.jpg")));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(json(&out)["results"].as_array().map(Vec::len), Some(2));
}

#[test]
fn empty_dir_and_missing_file_are_clear_errors() {
    let dir = scratch("empty");
    let (out, err) = run(bin().arg("analyze").arg(&dir));
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("holds no images"), "{err}");
    let (out, err) = run(bin().args(["classify", "/no/such/cell.jpg"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("/no/such/cell.jpg"), "{err}");
}

/// Copies the shipped card and model into a scratch dir, lets `edit` damage them.
fn tampered(name: &str, edit: impl FnOnce(&Path, &mut Value)) -> PathBuf {
    let dir = scratch(name);
    let mut c: Value = serde_json::from_slice(&std::fs::read(card()).expect("shipped card")).expect("card json");
    let model = card().parent().expect("models dir").join(c["file"].as_str().expect("file"));
    std::fs::copy(&model, dir.join("m.onnx")).expect("copy model");
    c["file"] = "m.onnx".into();
    edit(&dir, &mut c);
    let p = dir.join("card.json");
    std::fs::write(&p, serde_json::to_vec(&c).expect("json")).expect("write card");
    p
}

#[test]
fn wrong_or_damaged_models_are_refused_with_the_reason() {
    let cell = data().join("lmu/NGS").read_dir().expect("lmu/NGS").flatten().next().expect("a crop").path();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            tampered("hash", |dir, _| {
                let p = dir.join("m.onnx");
                let mut b = std::fs::read(&p).expect("read");
                let n = b.len() / 2;
                b[n] ^= 0x55;
                std::fs::write(&p, b).expect("write");
            }),
            "sha256",
        ),
        (tampered("shape", |_, c| c["input"]["shape"] = serde_json::json!([1, 3, 64, 64])), "input shape"),
        (
            tampered("classes", |_, c| {
                c["classes"].as_array_mut().expect("classes").pop();
            }),
            "classes",
        ),
        (tampered("method", |_, c| c["input"]["preprocessing"]["method"] = "other".into()), "not implemented"),
        (PathBuf::from("/no/such/card.json"), "/no/such/card.json"),
    ];
    for (card, want) in cases {
        // The damaged file is the int8 one (the card's `file`).
        let (out, err) = run(bin().args(["classify", "--precision", "int8", "--model"]).arg(&card).arg(&cell));
        assert_eq!(out.status.code(), Some(2), "{card:?}: {err}");
        assert!(err.contains(want), "{card:?}: expected '{want}' in: {err}");
    }
    // A card whose f32 file is missing: refused when f32 is asked for, naming the file.
    let card = tampered("nof32", |_, _| {});
    let (out, err) = run(bin().args(["classify", "--precision", "f32", "--model"]).arg(&card).arg(&cell));
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("leukoscope-f32.onnx") && err.matches("No such file").count() == 1, "{err}");
}

#[test]
fn bad_config_names_the_key() {
    let dir = scratch("config");
    let p = dir.join("bad.toml");
    std::fs::write(&p, "[count]\nblast_threshold_percent = 150\n").expect("write");
    let (out, err) = run(bin().args(["analyze", "--config"]).arg(&p).arg(field("BloodImage_00001")));
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG: {err}");
    assert!(err.contains("count.blast_threshold_percent") && err.contains("bad.toml"), "{err}");
    std::fs::write(&p, "[detect]\nnucleus_odd = 0.3\n").expect("write");
    let (_, err) = run(bin().args(["analyze", "--config"]).arg(&p).arg(field("BloodImage_00001")));
    assert!(err.contains("nucleus_odd"), "{err}");
}

/// The threshold alone decides the flag: on a batch whose blast share is
/// known (measured with the same config), a threshold just below that share
/// flags and one just above it does not, with the same cells and blasts. The
/// share is made neither 0 nor 100% by declaring the batch's commonest call a
/// blast class in both configs (BCCD holds no blasts); the two thresholds lie
/// on the same side of the default 20%, so a threshold that is ignored fails.
#[test]
fn config_threshold_changes_the_flag() {
    let dir = scratch("threshold");
    let bccd = common::bccd::Bccd::new(&data());
    let ids: Vec<String> = bccd.split("test").expect("BCCD test split").into_iter().take(12).collect();
    let analyze = |config: &Path| {
        let (out, err) =
            run(bin().args(["analyze", "--json", "--config"]).arg(config).args(ids.iter().map(|i| field(i))));
        assert!(out.status.success(), "{err}");
        json(&out)["summary"].clone()
    };
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write config");
        p
    };
    let plain = analyze(&write("plain.toml", String::new()));
    let (common, _) = plain["by_class"]
        .as_object()
        .expect("by_class")
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .max_by_key(|(_, n)| *n)
        .expect("the batch has identified cells");
    let blasts = format!("[count]\nblast_classes = [\"{common}\"]\n");
    let known = analyze(&write("known.toml", blasts.clone()));
    let share = known["blast_percent"].as_f64().expect("blast_percent");
    assert!(share > 0.0 && share < 100.0, "the batch needs a blast share strictly inside 0-100%: {known}");
    // Both thresholds on one side of 20%, one either side of the share.
    let (below, above) =
        if share >= 20.0 { ((share + 20.0) / 2.0, (share + 100.0) / 2.0) } else { (share / 2.0, (share + 20.0) / 2.0) };
    let runs: Vec<(f64, bool, Value)> = [("below.toml", below, true), ("above.toml", above, false)]
        .into_iter()
        .map(|(name, t, flag)| (t, flag, analyze(&write(name, format!("{blasts}blast_threshold_percent = {t}\n")))))
        .collect();
    for (threshold, flag, s) in &runs {
        assert_eq!(s["flag"], *flag, "share {share}%, threshold {threshold}%: {s}");
    }
    for (threshold, _, s) in &runs {
        assert_eq!(s["threshold_percent"].as_f64(), Some(*threshold), "{s}");
        assert_eq!(
            (&s["cells"], &s["blasts"], &s["blast_percent"]),
            (&known["cells"], &known["blasts"], &known["blast_percent"])
        );
    }
}

/// `bench --fields` times the fields it is given at the size asked, and refuses
/// a size that is not WIDTHxHEIGHT.
#[test]
fn bench_over_many_fields_reports_their_mean() {
    let fields = [field("BloodImage_00001"), field("BloodImage_00065")];
    let (out, err) =
        run(bin().args(["bench", "--json", "--seconds", "0.2", "--size", "320x240", "--fields"]).args(&fields));
    assert!(out.status.success(), "{err}");
    let doc = json(&out);
    let figs = doc["figures"].as_array().expect("a list of figures");
    assert_eq!(figs.len(), 4, "{figs:?}");
    for f in figs {
        let what = f["what"].as_str().unwrap_or_default();
        assert!(what.contains("mean of 2 fields") && what.ends_with("320x240"), "{what}");
        assert!(f["median_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{f}");
    }
    // The stages add up to the whole (the third is the whole minus the first two).
    let ms = |i: usize| figs[i]["median_ms"].as_f64().unwrap_or(f64::NAN);
    assert!((ms(0) + ms(1) + ms(2) - ms(3)).abs() < 1e-6 || ms(0) + ms(1) > ms(3), "{figs:?}");
    // Peak memory for one field of that size: a 320x240 field is 0.22 MB of pixels.
    let m = &doc["memory"];
    let mb = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    assert!((mb("field_mb") - 320.0 * 240.0 * 3.0 / 1048576.0).abs() < 1e-9, "{m}");
    assert!(mb("base_mb") > 5.0 && mb("one_field_mb") < 200.0, "{m}");
    assert!((mb("base_mb") + mb("field_mb") + mb("work_mb") - mb("one_field_mb")).abs() < 1e-9, "{m}");
    let (out, err) = run(bin().args(["bench", "--size", "0x240", "--fields"]).args(&fields));
    assert!(!out.status.success() && err.contains("WIDTHxHEIGHT"), "{err}");
}

/// A crop's scale decides its call (the model sees micrometres): given, a
/// myeloblast of the training lab is a blast and the JSON says the scale was
/// configured; not given and not measurable (too few red cells in the crop),
/// the user is told to give it instead of silently getting another call.
#[test]
fn classify_uses_the_given_scale_and_warns_when_it_must_guess() {
    let crop = data().join("lmu/MYO/MYO_0001.jpg");
    let (out, err) = run(bin().args(["classify", "--json", "--um-per-px", "0.138"]).arg(&crop));
    assert!(out.status.success(), "{err}");
    let r = &json(&out)["results"][0];
    assert_eq!(r["scale"]["source"], "configured", "{r}");
    assert_eq!(r["blast"], true, "{r}");
    assert!(r["nucleus_diameter_um"].as_f64().is_some_and(|d| (3.0..20.0).contains(&d)), "{r}");
    assert!(!err.contains("--um-per-px"), "{err}");
    let (out, err) = run(bin().args(["classify", "--json"]).arg(&crop));
    assert!(out.status.success(), "{err}");
    assert_eq!(json(&out)["results"][0]["scale"]["source"], "fallback");
    assert!(err.contains("give the scanner's scale with --um-per-px"), "{err}");
    let (out, err) = run(bin().args(["classify", "--um-per-px=-1"]).arg(&crop));
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--um-per-px"), "{err}");
}

/// Issue 14: every class the config calls a blast must be one the model knows
/// (or one the card itself lists as a blast class), and the list cannot be
/// empty (MYO would then never be a blast and the flag would never fire).
#[test]
fn config_blast_classes_must_be_known_to_the_model() {
    let dir = scratch("blastclasses");
    let cases = [("unknown.toml", "[\"MYO\", \"XYZ\"]", "XYZ"), ("empty.toml", "[]", "[]")];
    for (name, list, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, format!("[count]\nblast_classes = {list}\n")).expect("write");
        let (out, err) = run(bin().args(["analyze", "--json", "--config"]).arg(&p).arg(field("BloodImage_00001")));
        assert_eq!(out.status.code(), Some(78), "{name}: {err}");
        assert!(err.contains("count.blast_classes") && err.contains(want) && err.contains(name), "{name}: {err}");
        assert!(out.stdout.is_empty(), "{name}: nothing analysed");
        let (out, err) = run(bin()
            .args(["run", "--until-finished", "--config"])
            .arg(&p)
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--screen-png")
            .arg(dir.join("screen.png"))
            .arg("--script")
            .arg(dir.join("no-such-script"))
            .arg("--replay")
            .arg(field("BloodImage_00001")));
        assert_eq!(out.status.code(), Some(78), "run {name}: {err}");
        assert!(err.contains("count.blast_classes") && err.contains(want), "run {name}: {err}");
    }
    // The card's own blast classes (and any class of the model) are accepted.
    let p = dir.join("ok.toml");
    std::fs::write(&p, "[count]\nblast_classes = [\"MYO\", \"MOB\", \"PMO\"]\n").expect("write");
    let (out, err) = run(bin().args(["analyze", "--json", "--config"]).arg(&p).arg(field("BloodImage_00001")));
    assert!(out.status.success(), "{err}");
}

/// Issue 14: a missing file or an empty folder among the inputs is one bad
/// input of the batch (named, exit 1), not the end of it; with no image at all
/// it stops everything (exit 2).
#[test]
fn missing_file_or_empty_dir_in_a_batch_is_named_and_the_rest_is_processed() {
    let empty = scratch("batch-empty");
    let missing = Path::new("/no/such/field.jpg");
    let (out, err) = run(bin().args(["analyze", "--json"]).arg(field("BloodImage_00001")).arg(missing).arg(&empty));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/no/such/field.jpg") && err.contains(&*empty.to_string_lossy()), "{err}");
    let doc = json(&out);
    let images = doc["images"].as_array().expect("images");
    assert_eq!(images.len(), 3, "{images:?}");
    assert_eq!(images[0]["cells"].as_array().map(Vec::len), Some(1));
    assert!(images[1]["error"].as_str().is_some_and(|e| e.contains("/no/such/field.jpg")), "{images:?}");
    assert!(images[2]["error"].as_str().is_some_and(|e| e.contains("holds no images")), "{images:?}");
    assert_eq!(doc["summary"]["cells"], 1);
    let crop = data().join("lmu/NGS").read_dir().expect("lmu/NGS").flatten().next().expect("a crop").path();
    let (out, err) = run(bin().args(["classify", "--json"]).arg(missing).arg(&crop).arg(&empty));
    assert_eq!(out.status.code(), Some(1), "{err}");
    let results = json(&out)["results"].as_array().cloned().expect("results");
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(results[1]["class"].is_string() && results[0]["error"].is_string(), "{results:?}");
    // Nothing to analyse at all: an error that stops everything.
    for cmd in ["analyze", "classify"] {
        let (out, err) = run(bin().arg(cmd).arg(missing).arg(&empty));
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(err.contains("/no/such/field.jpg") && err.contains("holds no images"), "{cmd}: {err}");
    }
}

/// Issue 14: a symbolic link back up the tree (`ln -s . loop`) is not followed
/// again and again: every real file is analysed once.
#[cfg(unix)]
#[test]
fn a_symlink_loop_in_a_folder_counts_each_image_once() {
    let dir = scratch("symloop");
    std::fs::copy(field("BloodImage_00001"), dir.join("a.jpg")).expect("copy");
    std::fs::create_dir(dir.join("sub")).expect("mkdir");
    std::fs::copy(field("BloodImage_00007"), dir.join("sub/b.jpg")).expect("copy");
    std::os::unix::fs::symlink(".", dir.join("loop")).expect("symlink");
    std::os::unix::fs::symlink("..", dir.join("sub/up")).expect("symlink");
    std::os::unix::fs::symlink("a.jpg", dir.join("same.jpg")).expect("symlink");
    let (out, err) = run(bin().args(["classify", "--json"]).arg(&dir));
    assert!(out.status.success(), "{err}");
    let results = json(&out)["results"].as_array().cloned().expect("results");
    let paths: Vec<&str> = results.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths[0].ends_with("a.jpg") && paths[1].ends_with("b.jpg"), "{paths:?}");
}

/// RFC 4180 records: fields separated by commas, records by CR, LF or CRLF
/// outside quotes (as spreadsheets read them), `""` an escaped quote.
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(ch) = chars.next() {
        match (quoted, ch) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r' | '\n') => {
                if ch == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

/// Issue 14: `cells.csv` quotes a file name holding a carriage return (else
/// the row splits), and a cell that a spreadsheet would run as a formula is
/// neutralised with a leading `'` (OWASP CSV injection).
#[cfg(unix)]
#[test]
fn cells_csv_quotes_line_breaks_and_defuses_formulas() {
    let dir = scratch("csv");
    let names = ["a\rb.jpg", "=1+2.jpg"];
    for n in names {
        std::fs::copy(field("BloodImage_00001"), dir.join(n)).expect("copy");
    }
    let (out, err) = run(bin().current_dir(&dir).args(["analyze", "--json", "--out", "report"]).args(names));
    assert!(out.status.success(), "{err}");
    let doc = json(&out);
    let rows: usize = doc["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| i["cells"].as_array().map_or(0, Vec::len) + i["not_counted"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(rows >= 2, "{doc}");
    let csv = std::fs::read_to_string(dir.join("report/cells.csv")).expect("cells.csv");
    let records = csv_records(&csv);
    assert_eq!(records.len(), rows + 1, "{csv:?}");
    assert!(records.iter().all(|r| r.len() == records[0].len()), "{records:?}");
    let images: Vec<&str> = records[1..].iter().map(|r| r[0].as_str()).collect();
    assert!(images.contains(&"a\rb.jpg") && images.contains(&"'=1+2.jpg"), "{images:?}");
    for r in &records[1..] {
        assert!(r.iter().all(|f| !f.starts_with(['=', '+', '-', '@', '\t', '\r'])), "{r:?}");
    }
}

/// A 24-bit uncompressed BMP, written by hand (the test must not depend on the
/// `image` features under test).
fn bmp_bytes(img: &image::RgbImage) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let row = (3 * w as usize).div_ceil(4) * 4;
    let size = 54 + row * h as usize;
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&(size as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&54u32.to_le_bytes());
    for v in [40u32, w, h] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    for v in [0u32, (row * h as usize) as u32, 2835, 2835, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for y in (0..h).rev() {
        let start = b.len();
        for x in 0..w {
            let [r, g, bl] = img.get_pixel(x, y).0;
            b.extend_from_slice(&[bl, g, r]);
        }
        b.resize(start + row, 0);
    }
    b
}

/// Issue 14: `.bmp` is an input type, so it must decode; an image type that is
/// not read (`.webp`) is skipped with a warning naming it, never silently.
#[test]
fn bmp_is_read_and_an_unsupported_image_in_a_folder_is_named() {
    let dir = scratch("types");
    let crop = data().join("lmu/NGS").read_dir().expect("lmu/NGS").flatten().next().expect("a crop").path();
    let img = image::open(&crop).expect("crop").to_rgb8();
    std::fs::write(dir.join("a.bmp"), bmp_bytes(&img)).expect("write bmp");
    std::fs::copy(&crop, dir.join("b.webp")).expect("copy");
    let (out, err) = run(bin().args(["classify", "--json"]).arg(&dir));
    assert!(out.status.success(), "{err}");
    let results = json(&out)["results"].as_array().cloned().expect("results");
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(results[0]["class"].is_string(), "{results:?}");
    assert!(err.contains("b.webp"), "{err}");
}

/// Issue 14: a JPEG cut short (a copy interrupted, a card pulled) used to
/// decode silently with the missing part grey, and its cells were counted. Cut
/// at 3,000 bytes or at half, it is now a bad file named in the batch (exit 1),
/// while the whole field beside it is analysed.
#[test]
fn a_truncated_jpeg_is_a_bad_file_not_half_a_count() {
    let dir = scratch("truncated");
    let whole = field("BloodImage_00001");
    let bytes = std::fs::read(&whole).expect("field");
    for (name, cut) in [("cut3000.jpg", 3000), ("cuthalf.jpg", bytes.len() / 2)] {
        std::fs::write(dir.join(name), &bytes[..cut]).expect("write");
        let (out, err) = run(bin().args(["analyze", "--json"]).arg(dir.join(name)).arg(&whole));
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(name) && err.contains("truncated"), "{name}: {err}");
        let doc = json(&out);
        let images = doc["images"].as_array().expect("images");
        let analysed: Vec<&Value> = images.iter().filter(|i| i["cells"].is_array()).collect();
        assert_eq!(analysed.len(), 1, "{name}: only the whole field is analysed: {images:?}");
        assert_eq!(doc["summary"]["cells"], 1, "{name}");
    }
}

/// `leukoscope run` on `fields` with scripted buttons (`script`: "<poll> <button>" lines),
/// frames as fast as analysed.
fn appliance(dir: &Path, state: &Path, script: &str, fields: &[PathBuf]) -> Command {
    appliance_at(dir, state, script, fields, 0.0)
}

fn appliance_at(dir: &Path, state: &Path, script: &str, fields: &[PathBuf], fps: f32) -> Command {
    let script_path = dir.join(format!("script-{}.txt", script.replace([' ', '\n'], "_")));
    std::fs::write(&script_path, script).expect("script");
    let mut cmd = bin();
    cmd.arg("run")
        .arg("--state")
        .arg(state)
        .arg("--screen-png")
        .arg(dir.join("screen.png"))
        .arg("--script")
        .arg(&script_path)
        .arg("--replay-fps")
        .arg(fps.to_string())
        .arg("--replay")
        .args(fields)
        .env("RUST_LOG", "warn");
    cmd
}

/// The session folders in a state folder, sorted.
fn sessions(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(state.join("sessions"))
        .expect("sessions")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("journal.jsonl").is_file())
        .collect();
    v.sort();
    v
}

fn bccd_fields(skip: usize, n: usize) -> Vec<PathBuf> {
    common::bccd_field_paths().into_iter().skip(skip).take(n).collect()
}

fn results(session: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(session.join("results.json")).expect("results.json")).expect("json")
}

/// Issue 14: damage in line 13 of a journal is reported as line 13 (it was
/// "line 0" for bytes that are not UTF-8), `run` says how to get out, and
/// `session repair` keeps every intact record, sets line 13 aside in a named
/// file, and lets a later `run` resume the session to its report.
#[test]
fn a_damaged_journal_names_its_line_and_repair_lets_run_resume() {
    let dir = scratch("repair");
    let state = dir.join("state");
    let (out, err) = run(&mut appliance(&dir, &state, "1 start\n", &bccd_fields(100, 18)));
    assert!(out.status.success(), "{err}");
    let session = sessions(&state).pop().expect("a session");
    let journal = session.join("journal.jsonl");
    let good = std::fs::read(&journal).expect("journal");
    let lines: Vec<&[u8]> = good.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 15, "the replay should count 14+ fields: {} journal lines", lines.len());
    let fields_before = lines.len() - 1;
    for (what, byte) in [("not UTF-8", 0xff), ("not JSON", b'#')] {
        let mut bad: Vec<u8> = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let mut l = l.to_vec();
            if i + 1 == 13 {
                let mid = l.len() / 2;
                l[mid] = byte;
            }
            bad.extend_from_slice(&l);
            bad.push(b'\n');
        }
        std::fs::write(&journal, &bad).expect("damage");
        let (out, err) = run(&mut appliance(&dir, &state, "1 finish\n", &bccd_fields(100, 1)));
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains("line 13 is damaged") && err.contains("session repair"), "{what}: {err}");
    }
    let (out, err) = run(bin().args(["session", "repair", "--state"]).arg(&state));
    assert!(out.status.success(), "{err}");
    let said = String::from_utf8_lossy(&out.stdout);
    let aside = session.join("journal.damaged.jsonl");
    assert!(said.contains("line(s) 13 ") && said.contains(&*aside.to_string_lossy()), "{said}");
    // Line 13 is set aside as it was; every other line is kept as it was.
    let mut damaged_13 = lines[12].to_vec();
    let mid = damaged_13.len() / 2;
    damaged_13[mid] = b'#';
    damaged_13.push(b'\n');
    assert_eq!(std::fs::read(&aside).expect("set-aside file"), damaged_13);
    let kept: Vec<u8> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 12)
        .flat_map(|(_, l)| l.iter().copied().chain([b'\n']))
        .collect();
    assert_eq!(std::fs::read(&journal).expect("journal"), kept);
    // A later run resumes the same session and finishes it.
    let (out, err) = run(appliance(&dir, &state, "1 finish\n", &bccd_fields(100, 1)).arg("--until-finished"));
    assert!(out.status.success(), "{err}");
    assert_eq!(sessions(&state), vec![session.clone()], "the repaired session resumed, no new one");
    let doc = results(&session);
    assert_eq!(doc["session"]["fields"].as_u64(), Some(fields_before as u64 - 1), "{}", doc["session"]);
    let warnings = doc["session"]["warnings"].to_string();
    assert!(warnings.contains("journal.damaged.jsonl"), "{warnings}");
    // Nothing else to repair now.
    let (out, err) = run(bin().args(["session", "repair", "--state"]).arg(&state));
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to repair"));
}

/// Issue 14: two `run`s on one state folder appended the same field numbers
/// to one journal. The second now stops at once with a clear message naming
/// the first; once that one is gone (killed: the lock dies with it), a run
/// resumes the session.
#[test]
fn a_second_run_on_the_same_state_folder_is_refused() {
    let dir = scratch("lock");
    let state = dir.join("state");
    let mut first = appliance_at(&dir, &state, "1 start\n", &bccd_fields(100, 30), 2.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the first run");
    let pid = first.id().to_string();
    let t0 = std::time::Instant::now();
    // Wait until the first run holds the folder and has started its session
    // (killed between the two, it would leave nothing for the last step to resume).
    let holds = || std::fs::read_to_string(state.join("lock")).unwrap_or_default().trim() == pid;
    while !holds() || sessions(&state).is_empty() {
        assert!(first.try_wait().expect("wait").is_none(), "the first run ended early");
        assert!(t0.elapsed().as_secs() < 60, "the first run never took the state folder");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (out, err) = run(&mut appliance(&dir, &state, "1 start\n", &bccd_fields(100, 2)));
    let still_running = first.try_wait().expect("wait").is_none();
    first.kill().expect("kill the first run");
    first.wait().expect("reap");
    assert!(still_running, "the first run must hold the folder while the second tries");
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("in use by another leukoscope run") && err.contains(&pid), "{err}");
    assert!(err.contains(&*state.to_string_lossy()), "{err}");
    // The session the first run left open is resumed and finished by the next.
    let (out, err) = run(appliance(&dir, &state, "1 finish\n", &bccd_fields(100, 1)).arg("--until-finished"));
    assert!(out.status.success(), "{err}");
    assert_eq!(sessions(&state).len(), 1);
}

/// Issue 14: FINISH after the crops folder was deleted by hand wrote a report
/// pointing to crops that do not exist. Now the report names only crops that
/// exist, says how many are missing (in results.json and on stderr), and keeps
/// the count and the crops that are still there.
#[test]
fn finish_without_the_crops_folder_says_so_and_keeps_the_rest() {
    for whole_folder in [true, false] {
        let dir = scratch(if whole_folder { "nocrops" } else { "onecrop" });
        let state = dir.join("state");
        let (out, err) = run(&mut appliance(&dir, &state, "1 start\n", &bccd_fields(100, 6)));
        assert!(out.status.success(), "{err}");
        let session = sessions(&state).pop().expect("session");
        let crops = walk(&session.join("crops"));
        assert!(crops.len() >= 3, "{crops:?}");
        if whole_folder {
            std::fs::remove_dir_all(session.join("crops")).expect("rm -rf crops");
        } else {
            std::fs::remove_file(&crops[0]).expect("rm one crop");
        }
        let gone = if whole_folder { crops.len() } else { 1 };
        let (out, err) = run(appliance(&dir, &state, "1 finish\n", &bccd_fields(100, 1)).arg("--until-finished"));
        assert!(out.status.success(), "{err}");
        let want = format!("{gone} of {} cell crops are missing", crops.len());
        assert!(err.contains(&want), "{want}: {err}");
        let doc = results(&session);
        assert!(doc["session"]["warnings"].to_string().contains(&want), "{}", doc["session"]);
        let named: Vec<PathBuf> = doc["images"]
            .as_array()
            .expect("images")
            .iter()
            .flat_map(|i| {
                i["cells"].as_array().into_iter().flatten().chain(i["not_counted"].as_array().into_iter().flatten())
            })
            .filter_map(|c| c["crop"].as_str().map(|p| session.join(p)))
            .collect();
        assert_eq!(named.len(), crops.len() - gone, "crops still there are kept: {named:?}");
        assert!(named.iter().all(|p| p.is_file()), "{named:?}");
        let cells: usize =
            doc["images"].as_array().expect("images").iter().map(|i| i["cells"].as_array().map_or(0, Vec::len)).sum();
        assert_eq!(doc["summary"]["cells"].as_u64(), Some(cells as u64));
        assert!(cells >= 3, "the count is kept: {cells}");
    }
}

/// Issue 14: `--out` into a folder that holds a report is refused (old crops
/// would sit beside new results); `--force` replaces it whole, only once the
/// new report is complete, and never replaces a folder that is not a report.
#[test]
fn out_into_a_non_empty_folder_needs_force_which_replaces_it_whole() {
    let dir = scratch("force");
    let out_dir = dir.join("report");
    let (out, err) = run(bin().args(["analyze", "--json", "--out"]).arg(&out_dir).arg(field("BloodImage_00001")));
    assert!(out.status.success(), "{err}");
    let first = std::fs::read(out_dir.join("results.json")).expect("results.json");
    // An old blast crop, as the issue found beside a new "blasts: 0".
    std::fs::create_dir_all(out_dir.join("crops/1_blast_MYO")).expect("mkdir");
    std::fs::write(out_dir.join("crops/1_blast_MYO/old.png"), b"old").expect("old crop");
    let again = || {
        let mut c = bin();
        c.args(["analyze", "--json", "--out"]).arg(&out_dir).arg(field("BloodImage_00007"));
        c
    };
    let (out, err) = run(&mut again());
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&*out_dir.to_string_lossy()) && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(out_dir.join("results.json")).expect("results.json"), first, "untouched");
    let (out, err) = run(again().arg("--force"));
    assert!(out.status.success(), "{err}");
    let doc = json(&out);
    assert_eq!(results(&out_dir)["summary"], doc["summary"]);
    let crops = walk(&out_dir.join("crops"));
    assert!(!crops.is_empty() && crops.iter().all(|p| p.to_string_lossy().contains("BloodImage_00007")), "{crops:?}");
    let beside: Vec<String> =
        std::fs::read_dir(&dir).expect("dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(beside, vec!["report".to_string()], "nothing left beside the report");
    // A folder holding anything but a report is never replaced, --force or not.
    std::fs::write(out_dir.join("notes.txt"), b"mine").expect("notes");
    let (out, err) = run(again().arg("--force"));
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("notes.txt"), "{err}");
    assert!(out_dir.join("notes.txt").is_file() && out_dir.join("results.json").is_file());
    // An empty folder is fine without --force.
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let (out, err) = run(bin().args(["analyze", "--out"]).arg(&empty).arg(field("BloodImage_00001")));
    assert!(out.status.success(), "{err}");
    assert!(empty.join("cells.csv").is_file());
}

/// Issue 14: a field in which nothing at all is seen says why when the image
/// cannot show leukocytes (a camera left in greyscale mode, a covered lens),
/// in the JSON and the text, instead of a silent 0; a smear says nothing.
#[test]
fn greyscale_and_uniform_fields_say_why_they_yield_no_cells() {
    let dir = scratch("blank");
    let colour = image::open(field("BloodImage_00001")).expect("field").to_rgb8();
    image::DynamicImage::ImageRgb8(colour.clone()).grayscale().save(dir.join("grey.png")).expect("grey");
    image::RgbImage::from_pixel(640, 480, image::Rgb([205, 190, 196])).save(dir.join("uniform.png")).expect("uniform");
    let (out, err) = run(bin()
        .args(["analyze", "--json"])
        .arg(dir.join("grey.png"))
        .arg(dir.join("uniform.png"))
        .arg(field("BloodImage_00001")));
    assert!(out.status.success(), "{err}");
    let doc = json(&out);
    let images = doc["images"].as_array().expect("images");
    for (i, why) in [(0, "greyscale"), (1, "uniform")] {
        assert_eq!(images[i]["cells"].as_array().map(Vec::len), Some(0), "{}", images[i]);
        assert_eq!(images[i]["no_cells"]["why"], why, "{}", images[i]);
    }
    assert!(images[2].get("no_cells").is_none() && images[2]["cells"].as_array().is_some_and(|c| !c.is_empty()));
    assert!(err.contains("grey.png") && err.contains("no colour"), "{err}");
    let (out, err) = run(bin().arg("analyze").arg(dir.join("grey.png")));
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.contains("grey.png") && l.contains("no cells: the image has no colour")), "{text}");
}

/// Issue 14: an error says what failed and its cause once ("Invalid PNG
/// signature.: ...: Invalid PNG signature." was printed): each library error
/// names what failed, its source chain says why, and the binary prints the
/// chain as it is, with no de-duplication that could hide a repeat.
#[test]
fn errors_say_each_cause_once() {
    let dir = scratch("causes");
    std::fs::write(dir.join("not_an_image.png"), b"hello").expect("write");
    let cases: Vec<(Vec<std::ffi::OsString>, i32, &str)> = vec![
        (vec!["analyze".into(), dir.join("not_an_image.png").into()], 1, "not_an_image.png"),
        (
            vec!["classify".into(), "--model".into(), "/no/such/card.json".into(), field("BloodImage_00001").into()],
            2,
            "/no/such/card.json",
        ),
        (
            vec!["analyze".into(), "--config".into(), "/no/such/config.toml".into(), field("BloodImage_00001").into()],
            78,
            "/no/such/config.toml",
        ),
        // A report folder that is not there: the review's open error, its file, the OS's why.
        (vec!["review".into(), "/no/such/report".into()], 2, "/no/such/report"),
    ];
    for (args, code, names) in cases {
        let (out, err) = run(bin().args(&args));
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        let line = err.lines().find(|l| l.contains(names)).unwrap_or_else(|| panic!("{args:?}: {err}"));
        // What failed, then at least one cause, each said once.
        let parts: Vec<&str> = line.split(": ").map(|p| p.trim_end_matches('.')).collect();
        assert!(parts.len() >= 3, "{line}");
        for (i, p) in parts.iter().enumerate() {
            assert!(!parts[i + 1..].contains(p), "{p:?} repeated in {line}");
        }
    }
}

/// Issue 14 item 13: a long batch on a terminal shows its progress (it showed
/// nothing for 23 s over 2,000 files). `script` (util-linux) gives the binary a
/// pseudo-terminal, as a person's shell would; piped, as here without it, the
/// bar stays off and the output stays clean.
#[test]
fn a_long_batch_shows_progress_on_a_terminal() {
    let script = Path::new("/usr/bin/script");
    if !common::external_tool(script, "apt-get install bsdutils") {
        return;
    }
    let dir = scratch("progress");
    for f in common::bccd_field_paths().iter().take(30) {
        std::fs::copy(f, dir.join(f.file_name().expect("name"))).expect("copy field");
    }
    let cmd = format!("{} analyze {}", env!("CARGO_BIN_EXE_leukoscope"), dir.display());
    let (out, err) = run(Command::new(script).args(["-qec", &cmd, "/dev/null"]));
    assert!(out.status.success(), "{err}");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("analysing") && shown.contains("/30"), "no progress on a terminal: {shown}");
    let (out, err) = run(bin().arg("analyze").arg(&dir));
    assert!(out.status.success(), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("analysing") && !err.contains("analysing"), "{err}");
}

/// `analyze --um-per-px` gives the scale for one run, over the config's: every
/// field says "configured" with that value (no fallback), and a value that is
/// not a scale is refused before any work.
#[test]
fn analyze_um_per_px_overrides_the_configured_scale() {
    let dir = scratch("um-per-px");
    let p = dir.join("scale.toml");
    std::fs::write(&p, "[scale]\num_per_px = 0.2\n").expect("write");
    let (out, err) = run(bin()
        .args(["analyze", "--json", "--um-per-px", "0.0725", "--config"])
        .arg(&p)
        .arg(field("BloodImage_00001")));
    assert!(out.status.success(), "{err}");
    let doc = json(&out);
    let scale = &doc["images"][0]["scale"];
    assert_eq!(scale["source"], "configured", "{scale}");
    assert!((scale["um_per_px"].as_f64().unwrap_or(0.0) - 0.0725).abs() < 1e-6, "{scale}");
    assert_eq!(doc["images"][0]["cells"].as_array().map(Vec::len), Some(1), "{doc}");
    for bad in ["0", "-0.1", "NaN", "12"] {
        let (out, err) =
            run(bin().args(["analyze", "--json"]).arg(format!("--um-per-px={bad}")).arg(field("BloodImage_00001")));
        assert!(!out.status.success(), "{bad}: accepted");
        assert!(err.contains("--um-per-px") && out.stdout.is_empty(), "{bad}: {err}");
    }
}

/// `analyze` checks a configured scale with all fields' red cells together: a
/// scale twice too coarse is a warning (JSON and the line under the table),
/// the camera's own is not; a batch that calibrates itself is not checked
/// (its scale goes only to the fields whose red cells could not tell).
#[test]
fn a_configured_scale_is_checked_by_all_fields_together() {
    let fields: Vec<PathBuf> = common::bccd_field_paths().into_iter().take(12).collect();
    for (scale, agrees) in [(Some("0.144"), Some(false)), (Some("0.0721"), Some(true))] {
        let mut cmd = bin();
        cmd.args(["analyze", "--json"]);
        if let Some(s) = scale {
            cmd.args(["--um-per-px", s]);
        }
        let (out, err) = run(cmd.args(&fields));
        assert!(out.status.success(), "{err}");
        let check = &json(&out)["summary"]["scale"]["check"];
        assert_eq!(check["agrees"].as_bool(), agrees, "{scale:?}: {check}");
    }
    let (out, err) = run(bin().args(["analyze", "--um-per-px", "0.144"]).args(&fields));
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("WARNING: the red cells of") && text.contains("wrong objective or calibration?"), "{text}");
    // txl/bcd calibrates on itself; its 74 fields that take the batch's scale
    // are the pale ones whose red cells could not tell (pooled, they say 0.144).
    let (out, err) = run(bin().args(["analyze", "--json"]).arg(data().join("txl/bcd")));
    assert!(out.status.success(), "{err}");
    let doc = json(&out);
    assert!(doc["summary"]["scale"]["calibrated"].as_u64() > Some(20), "{}", doc["summary"]["scale"]);
    assert!(doc["summary"]["scale"].get("check").is_none(), "{}", doc["summary"]["scale"]);
}
