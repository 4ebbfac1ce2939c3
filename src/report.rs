//! Results as documents: the JSON of `analyze --json`, the CSV of cells, and the
//! report folder with every cell's crop grouped for review (blasts and
//! unidentified cells first, so a person checks those before anything else).
//!
//! [`FieldRecord`] is the one serialisable form of an analysed field: `analyze`
//! prints it, the appliance journals it, and reports are built from it.

use crate::count::{Call, Differential, Summary};
use crate::detect::{FieldScale, Rejected, ScaleSource};
use crate::model::ModelCard;
use crate::pipeline::{report_crop, CellResult, FieldResult};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;

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
    /// Why the cell is not counted (`cut_by_border`, `not_a_leukocyte`); absent when counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The crop in the report folder, relative to it, once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<String>,
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
        CellRecord {
            bbox: [b.x0, b.y0, b.x1, b.y1],
            class: code.to_string(),
            label: label.to_string(),
            confidence,
            blast,
            best_class: best.code.clone(),
            call: cell.call.clone(),
            nucleus_area_um2: cell.nucleus_um.map(|n| (n.0 * 10.0).round() / 10.0),
            nucleus_diameter_um: cell.nucleus_um.map(|n| (n.1 * 100.0).round() / 100.0),
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
    pub fn write_crops(&mut self, dir: &Path, stem: &str, img: &RgbImage) -> std::io::Result<()> {
        for (k, cell) in self.cells.iter_mut().chain(self.not_counted.iter_mut()).enumerate() {
            let group = cell.group();
            let folder = dir.join("crops").join(&group);
            std::fs::create_dir_all(&folder)?;
            let name = format!("{stem}_c{k}_{}_{:03}.png", cell.class, (cell.confidence * 100.0).round() as u32);
            let [x0, y0, x1, y1] = cell.bbox;
            let b = crate::mask::BBox { x0, y0, x1, y1 };
            let mut png = std::io::Cursor::new(Vec::new());
            report_crop(img, b).write_to(&mut png, image::ImageFormat::Png).map_err(std::io::Error::other)?;
            write_atomic(&folder.join(&name), png.get_ref())?;
            cell.crop = Some(format!("crops/{group}/{name}"));
        }
        Ok(())
    }
}

/// The JSON object of one cell, as in the CLI contract.
pub fn cell_json(card: &ModelCard, cell: &CellResult) -> Value {
    serde_json::to_value(CellRecord::new(card, cell)).unwrap_or(Value::Null)
}

/// Where the fields' scales came from: a count on the fallback scale (the
/// red cells could not tell, nothing configured) or disagreeing with the
/// configured one means the counts rest on a guessed scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ScaleSummary {
    pub fields: u64,
    pub configured: u64,
    pub calibrated: u64,
    pub red_cells: u64,
    pub fallback: u64,
    /// Fields whose red cells disagree with the configured/calibrated scale.
    pub disagrees: u64,
}

impl ScaleSummary {
    pub fn of<'a>(fields: impl IntoIterator<Item = &'a FieldRecord>) -> ScaleSummary {
        let mut s = ScaleSummary::default();
        for f in fields {
            s.fields += 1;
            match f.scale.source {
                ScaleSource::Configured => s.configured += 1,
                ScaleSource::Calibrated => s.calibrated += 1,
                ScaleSource::RedCells => s.red_cells += 1,
                ScaleSource::Fallback => s.fallback += 1,
            }
            s.disagrees += f.scale.disagrees as u64;
        }
        s
    }

    /// One line for people, e.g. "Scale: 70 fields from their red cells, 2 on the fallback scale".
    pub fn text(&self) -> String {
        let parts: Vec<String> = [
            (self.configured, "configured"),
            (self.calibrated, "calibrated over the first fields"),
            (self.red_cells, "from their own red cells"),
            (self.fallback, "on the FALLBACK scale (red cells could not tell)"),
            (self.disagrees, "whose red cells DISAGREE with the scale (wrong objective?)"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        format!("Scale of {} fields: {}", self.fields, parts.join(", "))
    }
}

/// The whole `analyze --json` document; `summary.scale` counts the fields by
/// scale source.
pub fn analysis_json(card: &ModelCard, images: Vec<Value>, summary: &Summary, scale: &ScaleSummary) -> Value {
    let warning = card.unfamiliar_warning(summary.unfamiliar_percent);
    let mut summary = serde_json::to_value(summary).unwrap_or(Value::Null);
    if let Some(o) = summary.as_object_mut() {
        o.insert("scale".into(), json!(scale));
    }
    let mut doc = json!({
        "model": {"name": card.name, "file": card.file, "sha256": card.sha256},
        "images": images,
        "summary": summary,
        "disclaimer": crate::DISCLAIMER,
    });
    if let Some(w) = warning {
        doc["warning"] = json!(w);
    }
    doc
}

/// A few lines for people: the differential and the blast figure with its interval.
pub fn summary_text(s: &Summary) -> String {
    let mut t = format!("Leukocytes counted: {}", s.cells);
    let classes: Vec<String> = s.by_class.iter().map(|(k, v)| format!("{k} {v}")).collect();
    if !classes.is_empty() {
        t += &format!("\nBy class: {}", classes.join(", "));
    }
    if s.unidentified > 0 {
        t += &format!("\nUnidentified: {}", s.unidentified);
        if s.unfamiliar > 0 {
            t += &format!(" ({} unlike the training images or without a nucleus)", s.unfamiliar);
        }
    }
    t += &format!(
        "\nBlasts: {} = {:.1}% (95% CI {:.1}-{:.1}%){}",
        s.blasts,
        s.blast_percent,
        s.ci95[0],
        s.ci95[1],
        if s.flag {
            format!("  ** AT OR ABOVE {:.0}% THRESHOLD: REVIEW **", s.threshold_percent)
        } else {
            String::new()
        }
    );
    t += &format!(
        "\nCells not normally in peripheral blood: {} = {:.1}% (95% CI {:.1}-{:.1}%)",
        s.abnormal, s.abnormal_percent, s.abnormal_ci95[0], s.abnormal_ci95[1]
    );
    let nc = &s.not_counted;
    if nc.cut_by_border + nc.not_leukocytes > 0 {
        t += &format!("\nNot counted: {} cut by the border, {} not leukocytes", nc.cut_by_border, nc.not_leukocytes);
    }
    t
}

/// The report folder: crops are written as fields are analysed (nothing is held
/// back, so an interrupted batch keeps what it did); `results.json` and
/// `cells.csv` are written atomically at the end, from the field records, and
/// with them `report.html` and `report.fhir.json` ([`crate::report_files`]).
pub fn write_report(dir: &Path, document: &Value, fields: &[FieldRecord]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(document).map_err(std::io::Error::other)?;
    write_atomic(&dir.join("results.json"), json.as_bytes())?;
    write_atomic(&dir.join("cells.csv"), cells_csv(fields).as_bytes())?;
    crate::report_files::write_folder(dir, document, fields)
}

/// One row per cell seen, counted or not.
pub fn cells_csv(fields: &[FieldRecord]) -> String {
    let mut out = String::from(
        "image,cell,x0,y0,x1,y1,class,label,confidence,blast,counted,reason,crop,nucleus_area_um2,nucleus_diameter_um\n",
    );
    for f in fields {
        for (k, c) in f.cells.iter().chain(&f.not_counted).enumerate() {
            let [x0, y0, x1, y1] = c.bbox;
            out += &format!(
                "{},{k},{x0},{y0},{x1},{y1},{},{},{:.4},{},{},{},{},{},{}\n",
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
            );
        }
    }
    out
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

/// Write to a temporary file, fsync, then rename: a reader (or a power cut)
/// sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Makes a rename or a new file in `path`'s folder durable (the entry itself
/// lives in the folder, which has to reach the disk too).
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
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
        assert!(!dir.join("x.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
