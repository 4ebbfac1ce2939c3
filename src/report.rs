//! Results as documents: the JSON of `analyze --json`, the CSV of cells, and the
//! report folder with every cell's crop grouped for review (blasts and
//! unidentified cells first, so a person checks those before anything else).

use crate::count::{Call, Summary};
use crate::model::ModelCard;
use crate::pipeline::{report_crop, CellResult, FieldResult};
use image::RgbImage;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The JSON object of one cell, as in the CLI contract.
pub fn cell_json(card: &ModelCard, cell: &CellResult) -> Value {
    let (i, confidence) = cell.prediction.top();
    let best = &card.classes[i];
    let (code, label, blast) = match &cell.call {
        Call::Cell { code, blast, .. } => (code.as_str(), best.name.as_str(), *blast),
        Call::Unidentified { .. } => ("UNID", "Unidentified (low confidence)", false),
        Call::NotLeukocyte { code } => (code.as_str(), best.name.as_str(), false),
    };
    let b = cell.bbox;
    json!({
        "bbox": [b.x0, b.y0, b.x1, b.y1],
        "class": code,
        "label": label,
        "confidence": confidence,
        "blast": blast,
        "best_class": best.code,
    })
}

/// One image's entry: counted cells, and separately what was seen but not counted.
pub fn image_json(card: &ModelCard, path: &Path, field: &FieldResult) -> Value {
    let (counted, not_counted): (Vec<&CellResult>, Vec<&CellResult>) = field.cells.iter().partition(|c| c.counted());
    let not_counted: Vec<Value> = not_counted
        .iter()
        .map(|c| {
            let mut v = cell_json(card, c);
            v["reason"] = json!(if c.cut_by_border { "cut_by_border" } else { "not_a_leukocyte" });
            v
        })
        .collect();
    json!({
        "path": path,
        "width": field.width,
        "height": field.height,
        "cells": counted.iter().map(|c| cell_json(card, c)).collect::<Vec<_>>(),
        "not_counted": not_counted,
        "scale": {"um_per_px": field.scale.um_per_px, "source": field.scale.source},
        "rejected": field.rejected,
    })
}

/// The whole `analyze --json` document.
pub fn analysis_json(card: &ModelCard, images: Vec<Value>, summary: &Summary) -> Value {
    json!({
        "model": {"name": card.name, "sha256": card.sha256},
        "images": images,
        "summary": summary,
        "disclaimer": crate::DISCLAIMER,
    })
}

/// A few lines for people: the differential and the blast figure with its interval.
pub fn summary_text(s: &Summary) -> String {
    let mut t = format!("Leukocytes counted: {}", s.cells);
    let classes: Vec<String> = s.by_class.iter().map(|(k, v)| format!("{k} {v}")).collect();
    if !classes.is_empty() {
        t += &format!("\nBy class: {}", classes.join(", "));
    }
    if s.unidentified > 0 {
        t += &format!("\nUnidentified (low confidence): {}", s.unidentified);
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

/// Review folder of crops, written as fields are analysed (nothing is held back
/// until the end, so an interrupted batch keeps what it did), then the JSON and
/// CSV written atomically at the end.
pub struct ReportWriter {
    dir: PathBuf,
    csv: Vec<String>,
}

impl ReportWriter {
    pub fn create(dir: &Path) -> std::io::Result<ReportWriter> {
        std::fs::create_dir_all(dir.join("crops"))?;
        Ok(ReportWriter {
            dir: dir.to_path_buf(),
            csv: vec!["image,cell,x0,y0,x1,y1,class,label,confidence,blast,counted,reason,crop".into()],
        })
    }

    /// Writes the crops of one field and remembers its CSV rows.
    pub fn add_field(
        &mut self,
        card: &ModelCard,
        path: &Path,
        img: &RgbImage,
        field: &FieldResult,
    ) -> std::io::Result<()> {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
        for (k, cell) in field.cells.iter().enumerate() {
            let v = cell_json(card, cell);
            let code = v["class"].as_str().unwrap_or("UNID").to_string();
            let conf = v["confidence"].as_f64().unwrap_or(0.0);
            let (group, reason) = match (&cell.call, cell.cut_by_border) {
                (_, true) => ("4_not_counted".to_string(), "cut_by_border"),
                (Call::NotLeukocyte { .. }, _) => ("4_not_counted".to_string(), "not_a_leukocyte"),
                (Call::Cell { blast: true, .. }, _) => (format!("1_blast_{code}"), ""),
                (Call::Unidentified { .. }, _) => ("2_unidentified".to_string(), ""),
                (Call::Cell { .. }, _) => (format!("3_{code}"), ""),
            };
            let folder = self.dir.join("crops").join(&group);
            std::fs::create_dir_all(&folder)?;
            let name = format!("{stem}_c{k}_{code}_{:03}.png", (conf * 100.0).round() as u32);
            let crop_path = folder.join(&name);
            report_crop(img, cell.bbox).save(&crop_path).map_err(std::io::Error::other)?;
            let b = cell.bbox;
            self.csv.push(format!(
                "{},{k},{},{},{},{},{code},{},{conf:.4},{},{},{reason},{}",
                csv_field(&path.display().to_string()),
                b.x0,
                b.y0,
                b.x1,
                b.y1,
                csv_field(v["label"].as_str().unwrap_or("")),
                v["blast"].as_bool().unwrap_or(false),
                cell.counted(),
                csv_field(&format!("crops/{group}/{name}")),
            ));
        }
        Ok(())
    }

    /// Writes `results.json` and `cells.csv`.
    pub fn finish(self, document: &Value) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(document).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join("results.json"), json.as_bytes())?;
        write_atomic(&self.dir.join("cells.csv"), (self.csv.join("\n") + "\n").as_bytes())
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
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
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_field("a.jpg"), "a.jpg");
        assert_eq!(csv_field("a,b \"c\""), "\"a,b \"\"c\"\"\"");
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
