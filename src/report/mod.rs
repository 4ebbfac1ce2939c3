//! Results as documents: the JSON of `analyze --json`, the CSV of cells, and the
//! report folder with every cell's crop grouped for review (blasts and
//! unidentified cells first, so a person checks those before anything else).
//!
//! [`FieldRecord`] is the one serialisable form of an analysed field: `analyze`
//! prints it, the appliance journals it, and reports are built from it.

pub mod fhir;
pub mod files;
pub mod hl7;
pub mod html;
pub mod json;
pub mod npy;

pub use json::{analysis_json, cell_json, summary_text, ScaleSummary};

use crate::classify::count::{Call, Differential};
use crate::classify::model::ModelCard;
use crate::classify::pipeline::{report_crop, CellResult, FieldResult};
use crate::storage::{self, Kind, Os, Storage, StorageError};
use crate::vision::detect::{FieldScale, Rejected};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One cell as reported (the CLI's JSON contract: bbox, class, label,
/// confidence, blast) plus what the count needs to be rebuilt from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRecord {
    pub bbox: [u32; 4],
    /// The class code counted, or `UNID` for an unidentified cell.
    pub class: String,
    pub label: String,
    pub confidence: f32,
    pub blast: bool,
    /// The model's most likely class, whatever the cell counts as.
    pub best_class: String,
    pub call: Call,
    /// Nucleus area in µm² and its equivalent diameter in µm (the field's scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nucleus_area_um2: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nucleus_diameter_um: Option<f32>,
    /// Cell area in µm², its equivalent diameter in µm, and nucleus area over
    /// cell area (an estimate for review: `morphometry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_area_um2: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_diameter_um: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nc_ratio: Option<f32>,
    /// Why the cell is not counted (`cut_by_border`, `not_a_leukocyte`); absent when counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The crop in the report folder, relative to it, once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<String>,
}

#[cfg(test)]
impl CellRecord {
    /// A counted cell of class `code` with a fixed box, for unit tests.
    pub(crate) fn counted_for_test(code: &str, blast: bool) -> CellRecord {
        CellRecord {
            bbox: [10, 10, 40, 40],
            class: code.into(),
            label: code.into(),
            confidence: 0.9,
            blast,
            best_class: code.into(),
            call: Call::Cell { code: code.into(), blast, abnormal: blast },
            nucleus_area_um2: None,
            nucleus_diameter_um: None,
            cell_area_um2: None,
            cell_diameter_um: None,
            nc_ratio: None,
            reason: None,
            crop: None,
        }
    }
}

impl CellRecord {
    pub fn new(card: &ModelCard, cell: &CellResult) -> CellRecord {
        let (i, confidence) = cell.prediction.top();
        let best = &card.classes[i];
        let (code, label, blast) = match &cell.call {
            Call::Cell { code, blast, .. } => (code.as_str(), best.name.as_str(), *blast),
            Call::Unidentified { why, .. } => ("UNID", why.label(), false),
            Call::NotLeukocyte { code } => (code.as_str(), best.name.as_str(), false),
        };
        let reason = if cell.cut_by_border {
            Some("cut_by_border")
        } else if matches!(cell.call, Call::NotLeukocyte { .. }) {
            Some("not_a_leukocyte")
        } else {
            None
        };
        let b = cell.bbox;
        let m = cell.morphometry;
        CellRecord {
            bbox: [b.x0, b.y0, b.x1, b.y1],
            class: code.to_string(),
            label: label.to_string(),
            confidence,
            blast,
            best_class: best.code.clone(),
            call: cell.call.clone(),
            nucleus_area_um2: m.map(|m| round_to(m.nucleus_area_um2, 1)),
            nucleus_diameter_um: m.map(|m| round_to(m.nucleus_diameter_um, 2)),
            cell_area_um2: m.and_then(|m| m.cell_area_um2).map(|v| round_to(v, 1)),
            cell_diameter_um: m.and_then(|m| m.cell_diameter_um).map(|v| round_to(v, 2)),
            nc_ratio: m.and_then(|m| m.nc_ratio).map(|v| round_to(v, 3)),
            reason: reason.map(str::to_string),
            crop: None,
        }
    }

    /// The review folder it belongs in: blasts first, then unidentified, then the rest.
    fn group(&self) -> String {
        match (&self.reason, &self.call) {
            (Some(_), _) => "4_not_counted".into(),
            (None, Call::Cell { blast: true, .. }) => format!("1_blast_{}", self.class),
            (None, Call::Unidentified { .. }) => "2_unidentified".into(),
            (None, _) => format!("3_{}", self.class),
        }
    }
}

/// One analysed field: `analyze --json`'s entry per image, and the appliance's
/// journal record per counted field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldRecord {
    /// The image file, or the camera and frame it came from.
    pub path: String,
    pub width: u32,
    pub height: u32,
    /// Counted cells.
    pub cells: Vec<CellRecord>,
    /// Seen but not counted (cut by the border, not leukocytes), with the reason.
    pub not_counted: Vec<CellRecord>,
    pub scale: FieldScale,
    pub rejected: Rejected,
    /// Inscribed radii (px, to 0.1) of the field's whole red cells (or of
    /// those cut by the border, when too few are whole): what a session
    /// calibrates on (pooled at high magnification), so that a resumed
    /// session calibrates alike, and what checks a given scale over all
    /// fields ([`crate::vision::calibrate::ScaleCheck`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub red_cells_px: Vec<f32>,
}

impl FieldRecord {
    pub fn new(card: &ModelCard, path: &str, field: &FieldResult) -> FieldRecord {
        let (cells, not_counted) =
            field.cells.iter().map(|c| CellRecord::new(card, c)).partition(|c: &CellRecord| c.reason.is_none());
        FieldRecord {
            path: path.to_string(),
            width: field.width,
            height: field.height,
            cells,
            not_counted,
            scale: field.scale,
            rejected: field.rejected,
            red_cells_px: field.red_cells_px.iter().map(|r| (r * 10.0).round() / 10.0).collect(),
        }
    }

    /// Adds this field to a running count.
    pub fn count_into(&self, diff: &mut Differential) {
        for c in &self.cells {
            diff.add(&c.call);
        }
        for c in &self.not_counted {
            if c.reason.as_deref() == Some("cut_by_border") {
                diff.cut_by_border += 1;
            } else {
                diff.add(&c.call);
            }
        }
    }

    /// Takes this field back out of a running count (undo).
    pub fn uncount_from(&self, diff: &mut Differential) {
        for c in &self.cells {
            diff.remove(&c.call);
        }
        for c in &self.not_counted {
            if c.reason.as_deref() == Some("cut_by_border") {
                diff.cut_by_border = diff.cut_by_border.saturating_sub(1);
            } else {
                diff.remove(&c.call);
            }
        }
    }

    /// Writes every cell's crop under `dir/crops/<group>/` with names starting
    /// with `stem`, and records each crop's relative path.
    pub fn write_crops(
        &mut self,
        fs: &dyn Storage,
        dir: &Path,
        stem: &str,
        img: &RgbImage,
    ) -> Result<(), StorageError> {
        for (k, cell) in self.cells.iter_mut().chain(self.not_counted.iter_mut()).enumerate() {
            let group = cell.group();
            let folder = dir.join("crops").join(&group);
            storage::create_dir_durable(fs, &folder)?;
            let name = format!("{stem}_c{k}_{}_{:03}.png", cell.class, (cell.confidence * 100.0).round() as u32);
            let path = folder.join(&name);
            let [x0, y0, x1, y1] = cell.bbox;
            let b = crate::vision::mask::BBox { x0, y0, x1, y1 };
            let mut png = std::io::Cursor::new(Vec::new());
            report_crop(img, b).write_to(&mut png, image::ImageFormat::Png).map_err(|e| StorageError {
                op: "encoding",
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
            storage::write_atomic(fs, &path, png.get_ref())?;
            cell.crop = Some(format!("crops/{group}/{name}"));
        }
        Ok(())
    }
}

/// Writes `results.json`, `cells.csv`, `report.html`, `report.fhir.json` and
/// `report.hl7` ([`crate::report::files`]) into `dir`, all or none
/// ([`storage::write_files_atomic`], `results.json` last). The error names the file.
pub fn write_report(
    fs: &dyn Storage,
    dir: &Path,
    document: &Value,
    fields: &[FieldRecord],
) -> Result<(), StorageError> {
    storage::create_dir_durable(fs, dir)?;
    let json = serde_json::to_string_pretty(document).map_err(|e| StorageError {
        op: "encoding",
        path: dir.join("results.json"),
        source: std::io::Error::other(e),
    })?;
    let [html, fhir, hl7] = crate::report::files::render(dir, document, fields).map_err(|e| StorageError {
        op: "encoding",
        path: dir.join("report.fhir.json"),
        source: e,
    })?;
    let csv = cells_csv(&crate::report::files::ReportFacts::sample_id_of(document), fields);
    let files: [(&str, &[u8]); 5] = [
        ("cells.csv", csv.as_bytes()),
        ("report.html", &html),
        ("report.fhir.json", &fhir),
        (crate::report::files::HL7_FILE, &hl7),
        ("results.json", json.as_bytes()),
    ];
    storage::write_files_atomic(fs, dir, &files)
}

/// Why `analyze --out` cannot write its report folder.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("--out {}: the folder is not empty (it holds {example}); --force replaces it", dir.display())]
    NotEmpty { dir: PathBuf, example: String },
    #[error("--out {}: it holds {example}, which is not part of a leukoscope report: not replaced, even with --force", dir.display())]
    NotAReport { dir: PathBuf, example: String },
    #[error("--out {}: not a folder", dir.display())]
    NotAFolder { dir: PathBuf },
    #[error("report {}", dir.display())]
    Storage { dir: PathBuf, source: StorageError },
}

/// What a report folder holds; `--force` replaces only a folder holding nothing else.
/// (A reviewed report also holds `review.jsonl`: never replaced.)
const REPORT_ENTRIES: [&str; 6] =
    ["results.json", "cells.csv", "report.html", "report.fhir.json", files::HL7_FILE, "crops"];

/// A report folder being written, all or nothing: everything goes into a
/// hidden folder beside it (`.<name>.tmp`), which [`OutFolder::commit`]
/// renames into place. Dropped without a commit, the temporary folder is
/// removed and the old report, if any, is untouched.
pub struct OutFolder<'a> {
    fs: &'a dyn Storage,
    dir: PathBuf,
    tmp: PathBuf,
    replace: bool,
    done: bool,
}

impl<'a> OutFolder<'a> {
    /// Refuses a non-empty `dir` unless `force` (and then only one holding
    /// nothing but a report: never an arbitrary folder).
    pub fn begin(fs: &'a dyn Storage, dir: &Path, force: bool) -> Result<OutFolder<'a>, ReportError> {
        let storage_err = |source| ReportError::Storage { dir: dir.to_path_buf(), source };
        let mut replace = false;
        match fs.kind(dir) {
            None => {}
            Some(Kind::File) => return Err(ReportError::NotAFolder { dir: dir.to_path_buf() }),
            Some(Kind::Dir) => {
                let entries = fs.list(dir).map_err(|e| storage_err(StorageError::new("listing", dir)(e)))?;
                if let Some((first, _)) = entries.first() {
                    if !force {
                        return Err(ReportError::NotEmpty { dir: dir.to_path_buf(), example: first.clone() });
                    }
                    if let Some((other, _)) = entries.iter().find(|(n, _)| !REPORT_ENTRIES.contains(&n.as_str())) {
                        return Err(ReportError::NotAReport { dir: dir.to_path_buf(), example: other.clone() });
                    }
                    replace = true;
                }
            }
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "report".into());
        let tmp = storage::parent(dir).join(format!(".{name}.tmp"));
        if fs.kind(&tmp).is_some() {
            // Left by an interrupted run.
            fs.remove_dir_all(&tmp).map_err(|e| storage_err(StorageError::new("removing", &tmp)(e)))?;
        }
        storage::create_dir_durable(fs, &tmp).map_err(storage_err)?;
        Ok(OutFolder { fs, dir: dir.to_path_buf(), tmp, replace, done: false })
    }

    /// Where the report is being written (crops go here).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Writes `results.json` and `cells.csv`, then puts the folder in place of
    /// `dir`: one rename, or with `--force` two (the old report aside, the new
    /// one in), after which the old one is deleted.
    pub fn commit(mut self, document: &Value, fields: &[FieldRecord]) -> Result<(), ReportError> {
        let fs = self.fs;
        let storage_err = |source| ReportError::Storage { dir: self.dir.clone(), source };
        write_report(fs, &self.tmp, document, fields).map_err(storage_err)?;
        let up = storage::parent(&self.dir).to_path_buf();
        let old = up.join(format!(".{}.old", self.dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
        if self.replace {
            if fs.kind(&old).is_some() {
                fs.remove_dir_all(&old).map_err(|e| storage_err(StorageError::new("removing", &old)(e)))?;
            }
            fs.rename(&self.dir, &old).map_err(|e| storage_err(StorageError::new("moving aside", &self.dir)(e)))?;
        }
        if let Err(e) = fs.rename(&self.tmp, &self.dir) {
            if self.replace {
                let _ = fs.rename(&old, &self.dir);
            }
            return Err(storage_err(StorageError::new("renaming into place", &self.dir)(e)));
        }
        self.done = true;
        fs.sync_dir(&up).map_err(|e| storage_err(StorageError::new("syncing folder", &up)(e)))?;
        if self.replace {
            fs.remove_dir_all(&old).map_err(|e| storage_err(StorageError::new("removing the old report", &old)(e)))?;
        }
        Ok(())
    }
}

impl Drop for OutFolder<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.fs.remove_dir_all(&self.tmp) {
                log::warn!("removing {}: {e}", self.tmp.display());
            }
        }
    }
}

/// One row per cell seen, counted or not; each row ends with the sample ID
/// (empty when there is none), so that rows keep it when copied elsewhere.
pub fn cells_csv(sample_id: &str, fields: &[FieldRecord]) -> String {
    let mut out = String::from(
        "image,cell,x0,y0,x1,y1,class,label,confidence,blast,counted,reason,crop,nucleus_area_um2,nucleus_diameter_um,\
         cell_area_um2,cell_diameter_um,nc_ratio,sample_id\n",
    );
    let sample_id = csv_field(sample_id);
    for f in fields {
        for (k, c) in f.cells.iter().chain(&f.not_counted).enumerate() {
            let [x0, y0, x1, y1] = c.bbox;
            out += &format!(
                "{},{k},{x0},{y0},{x1},{y1},{},{},{:.4},{},{},{},{},{},{},{},{},{},{sample_id}\n",
                csv_field(&f.path),
                csv_field(&c.class),
                csv_field(&c.label),
                c.confidence,
                c.blast,
                c.reason.is_none(),
                csv_field(c.reason.as_deref().unwrap_or("")),
                csv_field(c.crop.as_deref().unwrap_or("")),
                c.nucleus_area_um2.map_or(String::new(), |v| format!("{v:.1}")),
                c.nucleus_diameter_um.map_or(String::new(), |v| format!("{v:.2}")),
                c.cell_area_um2.map_or(String::new(), |v| format!("{v:.1}")),
                c.cell_diameter_um.map_or(String::new(), |v| format!("{v:.2}")),
                c.nc_ratio.map_or(String::new(), |v| format!("{v:.3}")),
            );
        }
    }
    out
}

fn round_to(v: f32, decimals: i32) -> f32 {
    let k = 10f32.powi(decimals);
    (v * k).round() / k
}

/// One CSV field: quoted when it holds a comma, quote, LF or CR (RFC 4180);
/// text a spreadsheet would run as a formula (starting with `=`, `+`, `-`,
/// `@`, tab or CR) gets a leading `'` inside quotes (OWASP CSV injection).
fn csv_field(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("\"'{}\"", s.replace('"', "\"\""))
    } else if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// [`storage::write_atomic`] on the real filesystem.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    storage::write_atomic(&Os, path, bytes).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_field("a.jpg"), "a.jpg");
        assert_eq!(csv_field("a,b \"c\""), "\"a,b \"\"c\"\"\"");
        assert_eq!(csv_field("a\rb.jpg"), "\"a\rb.jpg\"");
        assert_eq!(csv_field("=1+2"), "\"'=1+2\"");
        assert_eq!(csv_field("@x,\"y\""), "\"'@x,\"\"y\"\"\"");
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = std::env::temp_dir().join(format!("leukoscope-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!dir.join("x.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
