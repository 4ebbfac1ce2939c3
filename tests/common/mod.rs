//! Shared by the integration tests: the real data, scratch folders, the `run`
//! configuration, and the analyzer built as the binary builds it.
// Each test file uses its own part of this module.
#![allow(dead_code)]

pub mod bccd;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The data folder, checked: a missing data folder is a loud failure, never a skip.
pub fn data() -> PathBuf {
    let d = leukoscope::input::data_dir();
    assert!(d.join("bccd/JPEGImages").is_dir(), "data folder {} missing: set LEUKOSCOPE_DATA", d.display());
    d
}

/// A BCCD field image by id (`BloodImage_00001`).
pub fn field(id: &str) -> PathBuf {
    data().join("bccd/JPEGImages").join(format!("{id}.jpg"))
}

/// The first `n` `.jpg` images of a folder of the data folder, sorted by name.
pub fn images(folder: &str, n: usize) -> Vec<PathBuf> {
    let root = data().join(folder);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{} missing ({e}): set LEUKOSCOPE_DATA", root.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    paths.sort();
    paths.truncate(n);
    paths
}

/// Every BCCD field image, sorted by name.
pub fn bccd_field_paths() -> Vec<PathBuf> {
    images("bccd/JPEGImages", usize::MAX)
}

/// The BCCD annotations (VOC), checked to be there.
pub fn bccd() -> bccd::Bccd {
    bccd::Bccd::new(&data())
}

/// A field with exactly one annotated leukocyte lying wholly inside it (8 px
/// from every border): the fields where "one whole cell" is the right answer.
pub fn one_whole_wbc(a: &bccd::Annotation) -> bool {
    let wbc = a.boxes(bccd::Class::Wbc);
    wbc.len() == 1 && wbc.iter().all(|b| b.x0 > 8 && b.y0 > 8 && b.x1 + 8 < a.width && b.y1 + 8 < a.height)
}

/// An empty scratch folder of its own for this test process: `<tmp>/leukoscope-<suite>-<pid>-<name>`.
pub fn scratch(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("leukoscope-{suite}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Every file under `dir`, recursively, sorted; none when `dir` is missing.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(files_under(&p));
            } else {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// The `leukoscope` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leukoscope"))
}

/// A `run` configuration in `dir`: state in `dir/state`, frames replayed as
/// fast as analysed, the screen written to `dir/screen.png`, no export to a USB
/// stick (whatever this machine has mounted); `session` is added to `[session]`.
pub fn write_run_config(dir: &Path, session: &str) -> PathBuf {
    let p = dir.join("leukoscope.toml");
    let text = format!(
        "[session]\nstate_dir = {:?}\n{session}\n\n[source]\nkind = \"replay\"\nreplay_fps = 0.0\n\n[display]\nkind = \"png\"\npng_path = {:?}\n\n[export]\ndirs = []\n",
        dir.join("state"),
        dir.join("screen.png")
    );
    std::fs::write(&p, text).expect("write run config");
    p
}

/// `leukoscope run` on `config`, its buttons scripted by `script` (written to
/// `dir/buttons.txt`, one `<poll> <button>` a line) and its frames the first
/// `fields` BCCD fields replayed; the caller adds what else it needs.
pub fn scripted_run(dir: &Path, config: &Path, script: &str, fields: usize) -> Command {
    let path = dir.join("buttons.txt");
    std::fs::write(&path, script).expect("write the button script");
    let mut cmd = bin();
    cmd.args(["run", "--config"])
        .arg(config)
        .arg("--script")
        .arg(path)
        .arg("--replay")
        .args(images("bccd/JPEGImages", fields));
    cmd
}

/// The analyzer `analyze` and `run` build from a configuration: the same
/// library call the binary makes, so the config's overrides apply.
pub fn analyzer_for(config: &leukoscope::config::Config) -> leukoscope::classify::pipeline::Analyzer {
    leukoscope::classify::pipeline::Analyzer::from_config(config, None, None, None)
        .unwrap_or_else(|e| panic!("analyzer: {e}"))
}

/// The analyzer of the default configuration, as `analyze` without `--config` builds it.
pub fn analyzer() -> leukoscope::classify::pipeline::Analyzer {
    analyzer_for(&leukoscope::config::Config::default())
}

/// Whether an external tool (the FHIR validator, a browser) is there. These are
/// not part of the README's "a Rust toolchain and the data folder": CI installs
/// them and sets `LEUKOSCOPE_REQUIRE_EXTERNAL=1` (.ci/run), and then a missing
/// one fails the test; elsewhere the check that needs it is left out, saying
/// so loudly on stderr.
pub fn external_tool(path: &Path, install: &str) -> bool {
    if path.exists() {
        return true;
    }
    let required = std::env::var_os("LEUKOSCOPE_REQUIRE_EXTERNAL").is_some_and(|v| v != "0");
    assert!(!required, "{} is missing: {install}", path.display());
    // Straight to the process's stderr, past the test harness's capture: shown
    // by a plain `cargo test`, not only with --nocapture.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "NOT CHECKED: {} is missing ({install}); CI (.ci/run) runs this check",
        path.display()
    );
    false
}

/// The Python of tools/.venv-fhir (FHIR validator, HL7 parser), if there
/// (see [`external_tool`] for when it is missing).
fn fhir_python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("LEUKOSCOPE_FHIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("tools/.venv-fhir/bin/python"));
    let install = "python3 -m venv tools/.venv-fhir && tools/.venv-fhir/bin/pip install -r \
                   tools/requirements-fhir.txt (or set LEUKOSCOPE_FHIR_PYTHON)";
    external_tool(&python, install).then_some(python)
}

/// Runs the independent validator (see [`external_tool`] for when it is missing).
pub fn validate_fhir(bundle: &Path, status: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(python) = fhir_python() else { return };
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("tools/check_fhir.py")).arg(bundle).args(["--status", status]);
    assert_checker_passes(&mut cmd, bundle, "does not validate");
}

/// Runs one of the tools/ checkers and fails the test with its output unless it passes.
fn assert_checker_passes(cmd: &mut Command, subject: &Path, failure: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{} {failure}:\n{}{}",
        subject.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses `report.hl7` with the independent HL7 v2 parser (tools/check_hl7.py,
/// PyPI hl7) and checks it against the `report.fhir.json` beside it: status
/// `P` or `F`, the sample ID when given.
pub fn validate_hl7(message: &Path, status: &str, sample: Option<&str>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(python) = fhir_python() else { return };
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("tools/check_hl7.py")).arg(message).args(["--status", status]);
    cmd.arg("--fhir").arg(message.with_file_name("report.fhir.json"));
    if let Some(s) = sample {
        cmd.args(["--sample", s]);
    }
    assert_checker_passes(&mut cmd, message, "does not parse or check");
}
