//! Shared by the report tests: the independent FHIR validator.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the independent validator; a missing validator fails the test (CI
/// installs it, see .ci/run), it is never skipped.
pub fn validate_fhir(bundle: &Path, status: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("LEUKOSCOPE_FHIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("tools/.venv-fhir/bin/python"));
    assert!(
        python.exists(),
        "the FHIR validator's Python {} is missing: python3 -m venv tools/.venv-fhir && \
         tools/.venv-fhir/bin/pip install -r tools/requirements-fhir.txt (or set LEUKOSCOPE_FHIR_PYTHON)",
        python.display()
    );
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
