//! Shared by the report tests: the independent FHIR validator.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Runs the independent validator (see [`external_tool`] for when it is missing).
pub fn validate_fhir(bundle: &Path, status: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("LEUKOSCOPE_FHIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("tools/.venv-fhir/bin/python"));
    let install = "python3 -m venv tools/.venv-fhir && tools/.venv-fhir/bin/pip install -r \
                   tools/requirements-fhir.txt (or set LEUKOSCOPE_FHIR_PYTHON)";
    if !external_tool(&python, install) {
        return;
    }
    let out = Command::new(&python)
        .arg(root.join("tools/check_fhir.py"))
        .arg(bundle)
        .args(["--status", status])
        .output()
        .expect("run tools/check_fhir.py");
    assert!(
        out.status.success(),
        "{} does not validate:\n{}{}",
        bundle.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
