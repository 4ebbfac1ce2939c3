//! The appliance on real smear fields (BCCD, from the data folder): the field
//! gate on a simulated moving stage, and `leukoscope run` driven by scripted
//! buttons to the target, with its report and screens checked.

use image::RgbImage;
use leukoscope::appliance::export::{ExportConfig, Outcome};
use leukoscope::appliance::{run_loop, Appliance, LoopOptions, SessionConfig};
use leukoscope::hw::buttons::ScriptedButtons;
use leukoscope::hw::display::{render_rgb, Display, DisplayError, Layout, View};
use leukoscope::hw::source::{shift_image, Frame, FrameSource, SourceError};
use leukoscope::storage::{Kind, Os, Storage, StorageFile};
use leukoscope::vision::gating::GateParams;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod common;

fn bccd_fields(n: usize, skip: usize) -> Vec<PathBuf> {
    common::bccd_field_paths().into_iter().skip(skip).take(n).collect()
}

use common::analyzer;

fn temp(name: &str) -> PathBuf {
    common::scratch("appliance", name)
}

/// Frames given in advance, each tagged with the field it shows.
struct Frames(VecDeque<Frame>);

impl FrameSource for Frames {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        self.0.pop_front().ok_or(SourceError::Exhausted)
    }
    fn describe(&self) -> String {
        "test frames".into()
    }
}

/// Keeps every screen shown.
#[derive(Default)]
struct Screens(Vec<View>);

impl Display for Screens {
    fn show(&mut self, view: &View) -> Result<(), DisplayError> {
        self.0.push(view.clone());
        Ok(())
    }
}

fn cells_per_field(doc: &Value) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for img in doc["images"].as_array().expect("images") {
        *m.entry(img["path"].as_str().expect("path").to_string()).or_default() +=
            img["cells"].as_array().expect("cells").len();
    }
    m
}

/// A technologist's stage: fields slide in blurred, come to rest, sometimes the
/// focus is off first, and one field is revisited (shifted by a tenth). Every
/// field with leukocytes is counted exactly once; the revisit is recognised.
#[test]
fn moving_stage_counts_each_field_once() {
    let paths = bccd_fields(6, 40);
    let fields: Vec<RgbImage> = paths.iter().map(|p| leukoscope::input::load_rgb(p).expect("field")).collect();
    let mut frames = VecDeque::new();
    let mut seq = 0;
    let mut push = |img: RgbImage, origin: &str| {
        seq += 1;
        frames.push_back(Frame { image: img, seq, origin: origin.to_string() });
    };
    let mut order: Vec<(usize, i64)> = (0..fields.len()).map(|i| (i, 0)).collect();
    order.insert(3, (2, fields[2].width() as i64 / 10)); // back to field 2, slightly shifted
    for &(i, shift) in &order {
        let f = shift_image(&fields[i], shift, shift / 2);
        let origin = format!("{}#{shift}", paths[i].display());
        for k in 0..3 {
            let moving = shift_image(&f, (3 - k) * f.width() as i64 / 5, 0);
            push(image::imageops::fast_blur(&moving, 3.0), &origin);
        }
        // Focus still being adjusted on field 1: a still but blurred frame first.
        if i == 1 {
            for _ in 0..3 {
                push(image::imageops::blur(&f, 2.5), &origin);
            }
        }
        for _ in 0..4 {
            push(f.clone(), &origin);
        }
    }
    let state = temp("stage");
    let config = SessionConfig { state_dir: Some(state.clone()), ..Default::default() };
    let mut app = Appliance::new(analyzer(), config, GateParams::default(), 20.0).expect("appliance");
    let mut buttons = ScriptedButtons::parse("1 start").expect("script");
    let mut screens = Screens::default();
    let opts = LoopOptions { exit_when_exhausted: true, until_finished: false };
    run_loop(&mut app, &mut Frames(frames), &mut buttons, &mut screens, None, opts).expect("loop");

    let s = app.session().expect("session open");
    let counted: Vec<&str> = s.fields.iter().map(|(_, r)| r.path.as_str()).collect();
    // What `analyze` finds in each field on its own.
    let a = analyzer();
    let expected: Vec<String> = (0..fields.len())
        .filter(|&i| a.analyze(&fields[i]).expect("analyze").cells.iter().any(|c| c.counted()))
        .map(|i| format!("{}#0", paths[i].display()))
        .collect();
    assert!(expected.len() >= 4, "test needs fields with leukocytes: {expected:?}");
    assert_eq!(counted, expected, "each field with leukocytes counted once, the revisit skipped");
    // The screens said why frames were skipped.
    let skips: Vec<_> = screens.0.iter().filter_map(|v| v.skip).collect();
    use leukoscope::hw::display::Skip;
    for want in [Skip::Moving, Skip::Blurred, Skip::SameField] {
        assert!(skips.contains(&want), "no {want:?} screen among {skips:?}");
    }
    let last = screens.0.last().expect("a screen");
    assert_eq!(last.counted, s.diff.cells());
    std::fs::remove_dir_all(&state).ok();
}

fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_leukoscope")).args(args).env("RUST_LOG", "warn").output().expect("run")
}

fn session_dirs(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(state.join("sessions")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// `leukoscope run` on real fields with scripted buttons counts to the target
/// of 100 and finishes by itself; the report folder matches the journal and
/// the screen on file is the final count.
#[test]
fn run_reaches_the_target_and_writes_the_report() {
    let dir = temp("target");
    let config = common::write_run_config(&dir, "target = 100\nfinish_at_target = true");
    let list = bccd_fields(160, 0);
    let script = dir.join("buttons.txt");
    std::fs::write(&script, "1 start\n60 undo\n").expect("script");
    let mut args = vec!["run", "--config", config.to_str().unwrap(), "--script", script.to_str().unwrap()];
    args.push("--until-finished");
    args.push("--replay");
    let list_s: Vec<String> = list.iter().map(|p| p.display().to_string()).collect();
    args.extend(list_s.iter().map(String::as_str));
    let out = run_cli(&args);
    assert!(out.status.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
    let sessions = session_dirs(&dir.join("state"));
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(s.join("results.json")).expect("results.json")).expect("json");
    let n = doc["summary"]["cells"].as_u64().expect("cells");
    let last_field =
        doc["images"].as_array().expect("images").last().expect("a field")["cells"].as_array().expect("cells").len()
            as u64;
    assert!(n >= 100 && n - last_field < 100, "stopped at the field that reached 100: {n}, last field {last_field}");
    // Each field once, in replay order.
    let per_field = cells_per_field(&doc);
    assert_eq!(per_field.len(), doc["images"].as_array().expect("images").len(), "a field counted twice");
    // The report folder: one CSV row and one crop per cell seen.
    let csv = std::fs::read_to_string(s.join("cells.csv")).expect("cells.csv");
    let seen: usize = doc["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| i["cells"].as_array().map_or(0, Vec::len) + i["not_counted"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(csv.lines().count() - 1, seen);
    // ...and one crop file per cell seen, each the one its record names.
    let crops = common::files_under(&s.join("crops"));
    assert_eq!(crops.len(), seen, "one crop per cell seen");
    for c in doc["images"].as_array().expect("images").iter().flat_map(|i| {
        i["cells"].as_array().into_iter().flatten().chain(i["not_counted"].as_array().into_iter().flatten())
    }) {
        let crop = s.join(c["crop"].as_str().unwrap_or_else(|| panic!("cell without a crop: {c}")));
        assert!(crops.contains(&crop), "{} missing", crop.display());
    }
    assert!(crops.iter().all(|p| image::open(p).is_ok()), "every crop is an image");
    let journal = std::fs::read_to_string(s.join("journal.jsonl")).expect("journal");
    assert!(journal.contains(r#""t":"undo""#), "the scripted undo was journaled");
    assert!(journal.lines().last().is_some_and(|l| l.contains(r#""t":"finish""#)));
    // The screen on file shows the final count: compare with a rendering of
    // the expected view.
    let shown = image::open(dir.join("screen.png")).expect("screen.png").to_rgb8();
    let sum = &doc["summary"];
    let mut by_class: Vec<(String, u64)> = sum["by_class"]
        .as_object()
        .expect("by_class")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    by_class.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    by_class.truncate(4);
    let ci = sum["ci95"].as_array().expect("ci");
    let expected = View {
        phase: leukoscope::hw::display::Phase::Finished,
        sample_id: "S0001".into(),
        needs_id: false,
        operator_id: String::new(),
        counted: n,
        target: 100,
        fields: per_field.len() as u64,
        blasts: sum["blasts"].as_u64().unwrap_or(0),
        blast_percent: sum["blast_percent"].as_f64(),
        ci95: Some((ci[0].as_f64().unwrap_or(0.0), ci[1].as_f64().unwrap_or(0.0))),
        threshold_percent: 20.0,
        flagged: sum["flag"].as_bool().unwrap_or(false),
        unidentified: sum["unidentified"].as_u64().unwrap_or(0),
        top_classes: by_class,
        skip: None,
        camera_ok: true,
        message: Some("report saved".into()),
    };
    // The skip reason of the last frame is not in the report: try each.
    let matches = [None, Some(leukoscope::hw::display::Skip::SameField), Some(leukoscope::hw::display::Skip::Moving)]
        .into_iter()
        .any(|skip| render_rgb(Layout::Large, &View { skip, ..expected.clone() }) == shown);
    assert!(matches, "screen.png is not the final count's screen");
    std::fs::remove_dir_all(&dir).ok();
}

/// The codes of the recorded scanner stream (tests/fixtures, see tests/scanner.rs):
/// an operator badge and a sample tube.
fn scanned_codes() -> Vec<String> {
    use leukoscope::hw::scanner::{decode, parse_events, Layout};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scanner-hid.long64.evdev");
    let codes = decode(parse_events(&std::fs::read(path).expect("fixture"), Layout::Long64));
    assert_eq!(codes, ["OP:Jane.Doe", "HX-2024/0117a"]);
    codes
}

/// Each field still for four frames, so the gate analyses it.
fn still_frames(paths: &[PathBuf], each: usize) -> Frames {
    let mut frames = VecDeque::new();
    for (i, p) in paths.iter().enumerate() {
        let img = leukoscope::input::load_rgb(p).expect("field");
        for k in 0..each {
            frames.push_back(Frame { image: img.clone(), seq: (i * each + k) as u64, origin: p.display().to_string() });
        }
    }
    Frames(frames)
}

/// With `require_sample_id`, START waits for a scanned ID (the screen asks for
/// one); the scanned sample and operator IDs go into the journal and every
/// report file; a sample scanned while counting is refused, not taken.
#[test]
fn start_waits_for_a_scanned_id_which_reaches_every_report() {
    let state = temp("ids");
    let config = SessionConfig { state_dir: Some(state.clone()), require_sample_id: true, ..Default::default() };
    let mut app = Appliance::new(analyzer(), config, GateParams::default(), 20.0).expect("appliance");
    let codes = scanned_codes();
    let script = format!("1 start\n3 id {}\n3 id {}\n4 start\n9 id OTHER-1\n14 finish", codes[0], codes[1]);
    let mut buttons = ScriptedButtons::parse(&script).expect("script");
    let mut screens = Screens::default();
    let opts = LoopOptions { exit_when_exhausted: true, until_finished: true };
    let mut frames = still_frames(&bccd_fields(4, 10), 4);
    run_loop(&mut app, &mut frames, &mut buttons, &mut screens, None, opts).expect("loop");

    // The first START was refused, with the screen asking for a scan.
    let refused = screens.0.iter().position(|v| v.message.as_deref() == Some("scan sample ID first"));
    let refused = &screens.0[refused.expect("START refused without an ID")];
    assert!(refused.needs_id && refused.sample_id.is_empty(), "{refused:?}");
    // Then the scanned ID was shown, ready for START.
    assert!(screens.0.iter().any(|v| v.sample_id == "HX-2024/0117a" && !v.needs_id && v.operator_id == "Jane.Doe"));
    // A sample scanned while counting is refused with a message; the session keeps its ID.
    assert!(screens.0.iter().any(|v| v.message.as_deref() == Some("ignored OTHER-1: finish HX-2024/0117a first")));
    assert_eq!(app.finished_count, 1);

    let sessions = session_dirs(&state);
    assert_eq!(sessions.len(), 1, "only the START with an ID opened a session: {sessions:?}");
    let s = &sessions[0];
    assert!(s.ends_with("00001-HX-2024_0117a"), "{}", s.display());
    let journal = std::fs::read_to_string(s.join("journal.jsonl")).expect("journal");
    let start: Value = serde_json::from_str(journal.lines().next().expect("start")).expect("json");
    assert_eq!((start["sample_id"].as_str(), start["operator_id"].as_str()), (Some("HX-2024/0117a"), Some("Jane.Doe")));
    assert!(!journal.contains("OTHER-1"));
    let results: Value =
        serde_json::from_slice(&std::fs::read(s.join("results.json")).expect("results")).expect("json");
    assert_eq!(results["sample"]["id"], "HX-2024/0117a");
    assert_eq!(results["sample"]["operator_id"], "Jane.Doe");
    assert_eq!(results["session"]["sample_id"], "HX-2024/0117a");
    let html = std::fs::read_to_string(s.join("report.html")).expect("report.html");
    assert!(html.contains("HX-2024/0117a") && html.contains("Jane.Doe"), "report.html lacks the IDs");
    let fhir: Value = serde_json::from_slice(&std::fs::read(s.join("report.fhir.json")).expect("fhir")).expect("json");
    let text = fhir.to_string();
    assert!(text.contains("\"value\":\"HX-2024/0117a\"") && text.contains("\"value\":\"Jane.Doe\""), "{text}");
    let csv = std::fs::read_to_string(s.join("cells.csv")).expect("cells.csv");
    assert!(csv.lines().next().is_some_and(|h| h.ends_with(",sample_id")));
    assert!(csv.lines().count() > 1 && csv.lines().skip(1).all(|l| l.ends_with(",HX-2024/0117a")), "{csv}");
    std::fs::remove_dir_all(&state).ok();
}

/// Without `require_sample_id` (the default) START needs no ID: automatic
/// numbers, as before; a scanned ID still takes the place of the next number.
#[test]
fn auto_ids_when_allowed() {
    let state = temp("auto-ids");
    let config = SessionConfig { state_dir: Some(state.clone()), ..Default::default() };
    let mut app = Appliance::new(analyzer(), config, GateParams::default(), 20.0).expect("appliance");
    let mut buttons =
        ScriptedButtons::parse("1 start\n2 finish\n3 id HX-7\n4 start\n5 finish\n6 start").expect("script");
    let mut screens = Screens::default();
    let opts = LoopOptions { exit_when_exhausted: true, until_finished: false };
    let mut frames = still_frames(&bccd_fields(1, 10), 7);
    run_loop(&mut app, &mut frames, &mut buttons, &mut screens, None, opts).expect("loop");
    assert!(screens.0.iter().all(|v| !v.needs_id));
    let names: Vec<String> =
        session_dirs(&state).iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["00001-S0001", "00002-HX-7", "00003-S0003"]);
    std::fs::remove_dir_all(&state).ok();
}

/// `leukoscope run` with `[scanner] device`: the scanner's events are read from
/// the device path (here the recording, a regular file) and the scanned IDs
/// name the session and its report.
#[test]
fn run_takes_ids_from_the_configured_scanner() {
    let dir = temp("scanner-run");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(match std::mem::size_of::<std::ffi::c_long>() {
        8 => "tests/fixtures/scanner-hid.long64.evdev",
        _ => "tests/fixtures/scanner-hid.long32.evdev",
    });
    let session = format!("require_sample_id = true\n\n[scanner]\ndevice = {fixture:?}");
    let config = common::write_run_config(&dir, &session);
    let script = dir.join("buttons.txt");
    // START again later in case the first came before the scanner thread had read the codes.
    std::fs::write(&script, "3 start\n6 start\n9 start\n12 finish\n").expect("script");
    let fields: Vec<String> = bccd_fields(4, 20).iter().map(|p| p.display().to_string()).collect();
    let mut args = vec!["run", "--config", config.to_str().unwrap(), "--script", script.to_str().unwrap()];
    args.extend(["--until-finished", "--replay"]);
    args.extend(fields.iter().map(String::as_str));
    let out = run_cli(&args);
    assert!(out.status.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
    let sessions = session_dirs(&dir.join("state"));
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let results: Value =
        serde_json::from_slice(&std::fs::read(sessions[0].join("results.json")).expect("results")).expect("json");
    assert_eq!(results["sample"], serde_json::json!({"id": "HX-2024/0117a", "operator_id": "Jane.Doe"}));
    std::fs::remove_dir_all(&dir).ok();
}

// ------------------------------------------------- reports to a USB stick (issue 15)

/// Two real fields, each still long enough to be counted, then FINISH.
fn two_fields_then_finish() -> (Frames, ScriptedButtons) {
    let mut frames = VecDeque::new();
    for (i, p) in bccd_fields(2, 20).iter().enumerate() {
        let img = leukoscope::input::load_rgb(p).expect("field");
        for k in 0..4 {
            frames.push_back(Frame { image: img.clone(), seq: (i * 4 + k) as u64, origin: p.display().to_string() });
        }
    }
    let n = frames.len() + 1;
    (Frames(frames), ScriptedButtons::parse(&format!("1 start\n{n} finish\n")).expect("script"))
}

/// A session counted on two fields and finished, with export configured to
/// `export` (through `fs`); returns the appliance, the screens shown and the
/// session folder.
fn finish_with_export(state: &Path, export: ExportConfig, fs: Arc<dyn Storage>) -> (Appliance, Screens, PathBuf) {
    let config = SessionConfig { state_dir: Some(state.to_path_buf()), ..Default::default() };
    let mut app = Appliance::new(analyzer(), config, GateParams::default(), 20.0)
        .expect("appliance")
        .export_to(export)
        .export_through(fs);
    let (mut frames, mut buttons) = two_fields_then_finish();
    let mut screens = Screens::default();
    let opts = LoopOptions { exit_when_exhausted: true, until_finished: true };
    run_loop(&mut app, &mut frames, &mut buttons, &mut screens, None, opts).expect("loop");
    assert_eq!(app.finished_count, 1, "the session finished");
    let sessions = session_dirs(state);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = sessions[0].clone();
    (app, screens, s)
}

/// Every file under `dir` with its bytes, by path relative to `dir`.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    common::files_under(dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p.strip_prefix(dir).expect("under").display().to_string(), bytes)
        })
        .collect()
}

/// The session's own report folder is whole: results.json names every crop,
/// and each is there.
fn assert_report_whole(s: &Path) {
    let doc: Value =
        serde_json::from_slice(&std::fs::read(s.join("results.json")).expect("results.json")).expect("json");
    assert!(doc["summary"]["cells"].as_u64().is_some_and(|n| n > 0), "cells counted");
    for f in ["cells.csv", "report.html", "report.fhir.json", "journal.jsonl"] {
        assert!(s.join(f).is_file(), "{f} missing from the session's report");
    }
    let crops: Vec<&str> = doc["images"]
        .as_array()
        .expect("images")
        .iter()
        .flat_map(|i| {
            i["cells"].as_array().into_iter().flatten().chain(i["not_counted"].as_array().into_iter().flatten())
        })
        .filter_map(|c| c["crop"].as_str())
        .collect();
    assert!(!crops.is_empty() && crops.iter().all(|c| s.join(c).is_file()), "a crop the report names is missing");
}

fn stick_config(pattern: &Path) -> ExportConfig {
    ExportConfig { dirs: vec![pattern.display().to_string()], allow_same_disk: true }
}

/// FINISH copies the report folder to the stick's leukoscope/ folder, whole,
/// byte for byte, under the session's name, and the screen says where; the
/// same report again is not copied twice, a different one of the same name
/// gets a suffix, never overwriting.
#[test]
fn finish_exports_the_report_to_a_usb_stick() {
    let dir = temp("export");
    let stick = dir.join("media/pi/KINGSTON/leukoscope");
    std::fs::create_dir_all(&stick).expect("stick");
    std::fs::create_dir_all(dir.join("media/pi/CAMERA")).expect("another stick");
    let export = stick_config(&dir.join("media/*/*/leukoscope"));
    let (app, screens, s) = finish_with_export(&dir.join("state"), export.clone(), Arc::new(Os));
    let to = stick.join(s.file_name().expect("name"));
    assert_eq!(app.last_export(), Some(&Outcome::Exported(to.clone())));
    let original = tree(&s);
    assert!(original.len() > 5, "{:?}", original.keys());
    assert_eq!(tree(&to), original, "the copy on the stick is the report, byte for byte");
    let names: Vec<String> =
        std::fs::read_dir(&stick).expect("stick").flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    assert_eq!(names.len(), 1, "nothing else left on the stick: {names:?}");
    let messages: Vec<&str> = screens.0.iter().filter_map(|v| v.message.as_deref()).collect();
    assert_eq!(messages.last(), Some(&"report saved; USB stick: exported to KINGSTON"));
    assert_eq!(screens.0.last().map(|v| v.phase), Some(leukoscope::hw::display::Phase::Finished));

    // Again (`session export` by hand): the same report is there already.
    let again = leukoscope::appliance::export::export(&Os, &export, &s);
    assert_eq!(again, Outcome::AlreadyThere(to.clone()));
    // Another report of the same name (a second appliance): beside it, not over it.
    std::fs::write(to.join("results.json"), b"{}").expect("edit");
    let other = leukoscope::appliance::export::export(&Os, &export, &s);
    let second = stick.join(format!("{}-2", s.file_name().expect("name").to_string_lossy()));
    assert_eq!(other, Outcome::Exported(second.clone()));
    assert_eq!(tree(&second), original);
    assert_eq!(std::fs::read(to.join("results.json")).expect("kept"), b"{}", "the first copy is left alone");
    std::fs::remove_dir_all(&dir).ok();
}

/// No stick with a leukoscope/ folder: the report is saved all the same, and
/// the screen says why nothing was exported. A leukoscope/ folder on the
/// appliance's own disk (an empty mount point) is not a stick.
#[test]
fn finish_without_a_stick_says_so() {
    let dir = temp("nostick");
    std::fs::create_dir_all(dir.join("media/pi/CAMERA")).expect("a stick without the folder");
    let export = stick_config(&dir.join("media/*/*/leukoscope"));
    let (app, screens, s) = finish_with_export(&dir.join("state"), export, Arc::new(Os));
    assert_eq!(app.last_export(), Some(&Outcome::NoStick));
    assert_eq!(
        screens.0.last().and_then(|v| v.message.as_deref()),
        Some("report saved; USB stick: none with leukoscope/")
    );
    assert_report_whole(&s);

    std::fs::create_dir_all(dir.join("mnt/usb/leukoscope")).expect("folder on the same disk");
    let own = ExportConfig { dirs: vec![format!("{}/mnt/*/leukoscope", dir.display())], allow_same_disk: false };
    let o = leukoscope::appliance::export::export(&Os, &own, &s);
    assert_eq!(o, Outcome::OwnDisk(dir.join("mnt/usb/leukoscope")));
    assert_eq!(o.status(), "not a separate disk");
    assert!(common::files_under(&dir.join("mnt")).is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

/// A stick that fills up after a few files, or is pulled out then (tests run
/// as root, so a read-only folder would not stop them: the failure comes
/// through the storage seam).
struct FullStick {
    stick: PathBuf,
    files_left: AtomicUsize,
    /// Pulled out when the files run out: from then on everything on it fails
    /// (EIO), removing the partial copy too, until `files_left` is set again.
    pulled: bool,
}

impl FullStick {
    /// Fails an operation on the stick once it is full or gone.
    fn gone(&self, path: &Path) -> std::io::Result<()> {
        if self.pulled && path.starts_with(&self.stick) && self.files_left.load(Ordering::SeqCst) == 0 {
            return Err(std::io::Error::from_raw_os_error(5)); // EIO
        }
        Ok(())
    }
}

impl Storage for FullStick {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        Os.read(path)
    }
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>> {
        self.gone(path)?;
        if path.starts_with(&self.stick) && self.files_left.fetch_sub(1, Ordering::SeqCst) == 0 {
            self.files_left.store(0, Ordering::SeqCst);
            return Err(std::io::Error::from_raw_os_error(if self.pulled { 5 } else { 28 }));
            // EIO, ENOSPC
        }
        Os.create(path)
    }
    fn open_append(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>> {
        Os.open_append(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.gone(to)?;
        Os.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.gone(path)?;
        Os.remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        self.gone(path)?;
        Os.create_dir(path)
    }
    fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.gone(path)?;
        Os.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.gone(path)?;
        Os.sync_dir(path)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<(String, Kind)>> {
        Os.list(dir)
    }
    fn kind(&self, path: &Path) -> Option<Kind> {
        Os.kind(path)
    }
}

/// The stick fills up in the middle of the copy: nothing is left on it under
/// the report's name (nor half a copy beside it), the appliance's own report
/// is whole, and the screen says the stick is full.
#[test]
fn a_stick_that_fails_mid_copy_leaves_no_half_report() {
    let dir = temp("fullstick");
    let stick = dir.join("media/pi/SMALL/leukoscope");
    std::fs::create_dir_all(&stick).expect("stick");
    let export = stick_config(&dir.join("media/*/*/leukoscope"));
    let fs = Arc::new(FullStick { stick: stick.clone(), files_left: AtomicUsize::new(3), pulled: false });
    let (app, screens, s) = finish_with_export(&dir.join("state"), export, fs);
    match app.last_export() {
        Some(Outcome::Failed { dir: d, kind, error }) => {
            assert_eq!(d, &stick);
            assert_eq!(*kind, std::io::ErrorKind::StorageFull, "{error}");
            assert!(
                error.contains("No space left on device") && error.contains(&stick.display().to_string()),
                "{error}"
            );
        }
        other => panic!("expected a failed export, got {other:?}"),
    }
    assert_eq!(
        screens.0.last().and_then(|v| v.message.as_deref()),
        Some("report saved; USB stick: full, not exported")
    );
    let left: Vec<String> =
        std::fs::read_dir(&stick).expect("stick").flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    assert!(left.is_empty(), "left on the stick: {left:?}");
    assert_report_whole(&s);
    std::fs::remove_dir_all(&dir).ok();
}

/// `leukoscope run` as the service runs it: every folder of the session and
/// its copy on the stick is 0750 and every file 0640 (the group `leukoscope`
/// reads, nobody else), whatever the umask allows beyond that (here 022; the
/// unit's is 027). Modes are checked, not access: tests run as root.
#[cfg(unix)]
#[test]
fn reports_are_readable_by_the_group_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp("modes");
    let stick = dir.join("media/pi/STICK/leukoscope");
    std::fs::create_dir_all(&stick).expect("stick");
    let config = common::write_run_config(&dir, "");
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "[export]\ndirs = []\n",
        &format!(
            "[export]\ndirs = [{:?}]\nallow_same_disk = true\n",
            dir.join("media/*/*/leukoscope").display().to_string()
        ),
    );
    std::fs::write(&config, text).expect("config");
    let script = dir.join("buttons.txt");
    std::fs::write(&script, "1 start\n30 finish\n").expect("script");
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_leukoscope"))
        .args(["run", "--until-finished", "--config"])
        .arg(&config)
        .arg("--script")
        .arg(&script)
        .arg("--replay")
        .args(bccd_fields(8, 0))
        .env("RUST_LOG", "info")
        .output()
        .expect("run");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("exported to"), "{log}");
    let state = dir.join("state");
    let s = session_dirs(&state).pop().expect("a session");
    let copy = stick.join(s.file_name().expect("name"));
    assert_eq!(tree(&copy), tree(&s));
    let mut checked = 0;
    let mut todo = vec![state.clone(), copy];
    while let Some(d) = todo.pop() {
        let mode = std::fs::metadata(&d).expect("folder").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750, "{}: {mode:o}", d.display());
        for e in std::fs::read_dir(&d).expect("list").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let mode = std::fs::metadata(&p).expect("file").permissions().mode() & 0o7777;
                assert_eq!(mode, 0o640, "{}: {mode:o}", p.display());
                checked += 1;
            }
        }
    }
    assert!(checked > 10, "{checked} files");
    std::fs::remove_dir_all(&dir).ok();
}

/// The stick is pulled out in the middle of the copy, so that not even the
/// partial copy can be removed: what is left is the hidden `.NAME.partial`,
/// never a folder under the report's name; plugged in again, the next export
/// of the report removes it and copies the whole report.
#[test]
fn a_stick_pulled_mid_copy_leaves_only_a_hidden_partial_copy() {
    let dir = temp("pulled");
    let stick = dir.join("media/pi/PULLED/leukoscope");
    std::fs::create_dir_all(&stick).expect("stick");
    let export = stick_config(&dir.join("media/*/*/leukoscope"));
    let fs = Arc::new(FullStick { stick: stick.clone(), files_left: AtomicUsize::new(4), pulled: true });
    let (app, screens, s) = finish_with_export(&dir.join("state"), export.clone(), fs.clone());
    assert!(matches!(app.last_export(), Some(Outcome::Failed { .. })), "{:?}", app.last_export());
    assert_eq!(
        screens.0.last().and_then(|v| v.message.as_deref()),
        Some("report saved; USB stick: I/O error, not exported")
    );
    let name = s.file_name().expect("name").to_string_lossy().into_owned();
    let left = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(d).expect("stick").flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
        v.sort();
        v
    };
    assert_eq!(left(&stick), vec![format!(".{name}.partial")], "only the hidden partial copy is left");
    assert_report_whole(&s);
    // Plugged in again.
    fs.files_left.store(usize::MAX, Ordering::SeqCst);
    let again = leukoscope::appliance::export::export(fs.as_ref(), &export, &s);
    assert_eq!(again, Outcome::Exported(stick.join(&name)));
    assert_eq!(left(&stick), vec![name.clone()], "the partial copy is gone");
    assert_eq!(tree(&stick.join(&name)), tree(&s));
    std::fs::remove_dir_all(&dir).ok();
}

/// A wrong objective: BCCD's fields counted with a scale configured twice too
/// coarse (0.144 µm/px, as if calibrated at half the magnification). Once five
/// fields are counted, the screen says what their red cells say, and the
/// report warns; with the right scale (0.0721) neither says anything of it.
#[test]
fn a_wrong_objective_is_said_on_screen_and_in_the_report() {
    for (um_per_px, wrong) in [(0.144, true), (0.0721, false)] {
        let state = temp(&format!("objective-{wrong}"));
        let config = SessionConfig { state_dir: Some(state.clone()), ..Default::default() };
        let mut analyzer = analyzer();
        analyzer.um_per_px = Some(um_per_px);
        let mut app = Appliance::new(analyzer, config, GateParams::default(), 20.0).expect("appliance");
        let paths = bccd_fields(7, 60);
        let mut frames = still_frames(&paths, 4);
        let mut buttons = ScriptedButtons::parse(&format!("1 start\n{} finish\n", frames.0.len() + 1)).expect("script");
        let mut screens = Screens::default();
        let opts = LoopOptions { exit_when_exhausted: true, until_finished: true };
        run_loop(&mut app, &mut frames, &mut buttons, &mut screens, None, opts).expect("loop");
        assert_eq!(app.finished_count, 1);

        let doubts: Vec<&str> =
            screens.0.iter().filter_map(|v| v.message.as_deref()).filter(|m| m.starts_with("scale?")).collect();
        let s = &session_dirs(&state)[0];
        let results: Value =
            serde_json::from_slice(&std::fs::read(s.join("results.json")).expect("results")).expect("json");
        let check = &results["summary"]["scale"]["check"];
        let html = std::fs::read_to_string(s.join("report.html")).expect("report.html");
        assert!(results["images"].as_array().expect("images").len() >= 5, "five fields counted at least");
        if wrong {
            assert!(doubts.last().is_some_and(|m| m.starts_with("scale? RBC 0.07")), "{doubts:?}");
            assert_eq!(check["agrees"], false, "{check}");
            assert!(html.contains("wrong objective or calibration?"), "report.html says nothing of the scale");
        } else {
            assert!(doubts.is_empty(), "{doubts:?}");
            assert_eq!(check["agrees"], true, "{check}");
            assert!(!html.contains("wrong objective"));
        }
        std::fs::remove_dir_all(&state).ok();
    }
}
