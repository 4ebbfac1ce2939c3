//! Shared by the integration tests: the real BCCD smear fields in the data folder.

use std::path::PathBuf;

/// Every BCCD field image, sorted by name. A missing data folder is a loud failure.
pub fn bccd_field_paths() -> Vec<PathBuf> {
    let root = leukoscope::input::data_dir().join("bccd/JPEGImages");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("BCCD fields missing at {} ({e}): set LEUKOSCOPE_DATA", root.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    paths.sort();
    paths
}
