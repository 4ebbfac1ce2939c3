//! The JSON documents of the command line's contract: `analyze --json` (and
//! results.json), `classify --json`, and the summary lines for people.

use super::{CellRecord, FieldRecord};
use crate::classify::count::{CallRules, Summary};
use crate::classify::model::{ModelCard, Prediction};
use crate::classify::pipeline::CellResult;
use crate::vision::calibrate::ScaleCheck;
use crate::vision::detect::{DetectParams, FieldScale, ScaleSource};
use crate::vision::morphometry::Morphometry;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;

/// What `classify` made of one crop: its prediction, the scale it was
/// prepared at and its morphometry; or why it could not be read.
pub type CropOutcome = Result<(Prediction, FieldScale, Option<Morphometry>), String>;

/// The JSON object of one cell, as in the CLI contract.
pub fn cell_json(card: &ModelCard, cell: &CellResult) -> Value {
    serde_json::to_value(CellRecord::new(card, cell)).unwrap_or(Value::Null)
}

/// Where the fields' scales came from: a count on the fallback scale (the
/// red cells could not tell, nothing configured) or disagreeing with the
/// configured one means the counts rest on a guessed scale.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ScaleSummary {
    pub fields: u64,
    pub configured: u64,
    pub calibrated: u64,
    pub red_cells: u64,
    pub fallback: u64,
    /// Fields whose own red cells disagree with the configured/calibrated scale.
    pub disagrees: u64,
    /// What the red cells of all fields at a given scale say of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<ScaleCheck>,
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

    /// [`ScaleSummary::of`] with the fields' red cells checking the given scale.
    pub fn checked<'a>(
        fields: impl IntoIterator<Item = &'a FieldRecord> + Clone,
        params: &DetectParams,
    ) -> ScaleSummary {
        ScaleSummary {
            check: ScaleCheck::of(fields.clone().into_iter().map(|f| (&f.scale, f.red_cells_px.as_slice())), params),
            ..ScaleSummary::of(fields)
        }
    }

    /// One line for people, e.g. "Scale: 70 fields from their red cells, 2 on the fallback scale".
    pub fn text(&self) -> String {
        let parts: Vec<String> = [
            (self.configured, "configured"),
            (self.calibrated, "calibrated over the session's or batch's fields"),
            (self.red_cells, "from their own red cells"),
            (self.fallback, "on the FALLBACK scale (red cells could not tell)"),
            (self.disagrees, "whose own red cells disagree with it"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        let mut t = format!("Scale of {} fields: {}", self.fields, parts.join(", "));
        match &self.check {
            Some(c) if c.agrees => t += &format!("; {}", c.text()),
            Some(_) => t += "; the fields' red cells DISAGREE with the scale (see the warning)",
            None => {}
        }
        t
    }

    /// The warning that the fields' red cells disagree with the scale given
    /// (a wrong objective?), when they do.
    pub fn warning(&self) -> Option<String> {
        self.check.as_ref().filter(|c| !c.agrees).map(ScaleCheck::text)
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

/// The JSON document of a classification: the model, each crop's call (or
/// error) in input order, and the disclaimer. Builds the document only;
/// belongs in `report/` beside `analysis_json`.
pub fn classification_json(card: &ModelCard, rules: &CallRules, results: &[(PathBuf, CropOutcome)]) -> Value {
    let items: Vec<Value> = results
        .iter()
        .map(|(path, r)| match r {
            Ok((pred, scale, morphometry)) => {
                let (i, conf) = pred.top();
                let c = &card.classes[i];
                let probs: serde_json::Map<String, Value> =
                    card.classes.iter().zip(&pred.probs).map(|(c, p)| (c.code.clone(), json!(p))).collect();
                let doubt = rules.call(card, pred).doubt();
                json!({
                    "path": path, "class": c.code, "label": c.name, "confidence": conf,
                    "identified": doubt.is_none(),
                    "why_unidentified": doubt,
                    "stained": pred.stained,
                    "unfamiliar": card.is_unfamiliar(pred),
                    "energy": pred.energy,
                    "blast": card.blast_classes.contains(&c.code), "probs": probs,
                    "scale": scale,
                    "nucleus_area_um2": morphometry.map(|m| m.nucleus_area_um2),
                    "nucleus_diameter_um": morphometry.map(|m| m.nucleus_diameter_um),
                    "cell_area_um2": morphometry.and_then(|m| m.cell_area_um2),
                    "cell_diameter_um": morphometry.and_then(|m| m.cell_diameter_um),
                    "nc_ratio": morphometry.and_then(|m| m.nc_ratio),
                })
            }
            Err(e) => json!({"path": path, "error": e}),
        })
        .collect();
    json!({
        "model": {"name": card.name, "file": card.file, "sha256": card.sha256},
        "results": items,
        "disclaimer": crate::DISCLAIMER,
    })
}
