//! `leukoscope analyze`: smear fields in, a differential out (table, JSON or
//! a report folder).

use super::{batch_inputs, demo_inputs, progress, read_input, um_per_px_arg, ConfigArg, ModelArgs};
use anyhow::{Context, Result};
use leukoscope::classify::count::Differential;
use leukoscope::classify::pipeline::Analyzer;
use leukoscope::report::FieldRecord;
use leukoscope::vision::calibrate::{BatchScale, Calibration};
use leukoscope::vision::detect::{measure_red_cells, RedCellMeasure};
use std::io::Write;
use std::path::PathBuf;

/// Find, classify and count every leukocyte in smear-field images.
///
/// Without inputs, analyses the BCCD test fields in the data folder
/// ($LEUKOSCOPE_DATA, default ../shared/data) as a demonstration.
///
/// The scale: --um-per-px, else the config's [scale]; else, for 5 fields or
/// more, the batch calibrates itself first as `calibrate` would (fields whose
/// red cells cannot tell their own scale take the batch's; at high
/// magnification every field does), else each field's own red cells.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    config: ConfigArg,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Write a report folder: results.json, cells.csv and every cell's crop,
    /// grouped by class with blasts and unidentified cells first.
    #[arg(long)]
    out: Option<PathBuf>,
    /// With --out: replace an existing report folder (only a report folder,
    /// and only once the new report is complete).
    #[arg(long, requires = "out")]
    force: bool,
    /// Sample identifier, written into the JSON and the report files.
    #[arg(long)]
    sample_id: Option<String>,
    /// Operator identifier, written into the JSON and the report files.
    #[arg(long)]
    operator_id: Option<String>,
    /// The camera's scale (µm per pixel) for this run, in place of the
    /// config's `[scale]`: to try a camera before `calibrate --write` stores it.
    #[arg(long)]
    um_per_px: Option<f32>,
    /// Field images or directories of them.
    inputs: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<i32> {
    let mut config = a.config.load()?;
    if let Some(s) = um_per_px_arg(a.um_per_px)? {
        config.scale.um_per_px = Some(s);
        config.scale.objective = None;
    }
    let inputs = if a.inputs.is_empty() { demo_inputs()? } else { a.inputs };
    let paths = batch_inputs(&inputs)?;
    let analyzer = a.model.analyzer(&config, a.config.config.as_deref())?;
    let card = &analyzer.classifier.card;
    // Refused before any work if the folder is taken; written beside it and
    // renamed into place at the end.
    let out = match &a.out {
        Some(dir) => Some(leukoscope::report::OutFolder::begin(&leukoscope::storage::Os, dir, a.force)?),
        None => None,
    };
    let mut diff = Differential::default();
    let mut images = Vec::new();
    let mut records = Vec::new();
    let mut rows = Vec::new();
    let mut failed = 0;
    let (batch, measures) = batch_scale(&analyzer, &paths);
    let pb = progress(paths.len(), "analysing");
    for (n, (path, bad)) in paths.iter().enumerate() {
        pb.inc(1);
        let outcome = read_input(path, bad.as_deref()).and_then(|img| {
            let field = match &batch {
                Some(b) => analyzer.analyze_at(&img, b.given(measures.get(n).and_then(Option::as_ref)))?,
                None => analyzer.analyze(&img)?,
            };
            Ok((field, img))
        });
        match outcome {
            Ok((field, img)) => {
                let mut record = FieldRecord::new(card, &path.display().to_string(), &field);
                record.count_into(&mut diff);
                if let Some(dir) = &out {
                    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
                    record
                        .write_crops(&leukoscope::storage::Os, dir.path(), &format!("{n:04}_{stem}"), &img)
                        .with_context(|| format!("writing crops of {}", path.display()))?;
                }
                let classes: Vec<&str> = record.cells.iter().map(|c| c.class.as_str()).collect();
                let mut value = serde_json::to_value(&record)?;
                // Nothing seen at all: say whether the image could show anything.
                let blank = (record.cells.is_empty() && record.not_counted.is_empty())
                    .then(|| leukoscope::vision::detect::BlankField::of(&img))
                    .flatten();
                let note = match blank {
                    Some(b) => {
                        value["no_cells"] = serde_json::json!({"why": b, "reason": b.reason()});
                        warn!("{}: no cells: {}", path.display(), b.reason());
                        format!("(no cells: {})", b.reason())
                    }
                    None => classes.join(" "),
                };
                rows.push(format!("{:<50} {:>5}  {note}", path.display(), classes.len()));
                images.push(value);
                records.push(record);
            }
            Err(e) => {
                failed += 1;
                pb.suspend(|| error!("{e:#}"));
                rows.push(format!("{:<50} ERROR {e:#}", path.display()));
                images.push(serde_json::json!({"path": path, "error": format!("{e:#}")}));
            }
        }
    }
    pb.finish_and_clear();
    let summary = diff.summary(config.count.blast_threshold_percent);
    // A batch's own calibration is given only to the fields whose red cells
    // could not tell their scale: those alone cannot check it.
    let scale = match &batch {
        None => leukoscope::report::ScaleSummary::checked(&records, &analyzer.detect),
        Some(_) => leukoscope::report::ScaleSummary::of(&records),
    };
    let mut doc = leukoscope::report::analysis_json(card, images, &summary, &scale);
    if let Some(b) = &batch {
        doc["batch_calibration"] = serde_json::to_value(&b.calibration)?;
    }
    if a.sample_id.is_some() || a.operator_id.is_some() {
        doc["sample"] = serde_json::json!({"id": a.sample_id, "operator_id": a.operator_id});
    }
    if let (Some(folder), Some(dir)) = (out, &a.out) {
        folder.commit(&doc, &records)?;
        info!("report written to {}", dir.display());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let mut o = std::io::stdout().lock();
        writeln!(o, "{:<50} {:>5}  classes", "image", "cells")?;
        for r in &rows {
            writeln!(o, "{r}")?;
        }
        writeln!(o, "\n{}", leukoscope::report::summary_text(&summary))?;
        writeln!(o, "{}", scale.text())?;
        if let Some(w) = scale.warning() {
            writeln!(o, "{w}")?;
        }
        if let Some(b) = &batch {
            writeln!(o, "{}", batch_text(&b.calibration))?;
        }
        if let Some(w) = analyzer.classifier.card.unfamiliar_warning(summary.unfamiliar_percent) {
            writeln!(o, "WARNING: {w}")?;
        }
        writeln!(o, "{}", leukoscope::DISCLAIMER)?;
    }
    if failed > 0 {
        error!("{failed} of {} images failed", paths.len());
        return Ok(1);
    }
    Ok(0)
}

/// With no scale configured, a batch of fields from one camera calibrates
/// itself first ([`BatchScale`]): each field's red cells are measured, and the
/// fields that cannot tell their own scale (at high magnification, all of
/// them) are analysed at the batch's instead of the fixed fallback. Returns
/// the batch scale (`None`: a scale is configured, too few fields, or their
/// red cells cannot tell) and each input's measure, in input order.
fn batch_scale(
    analyzer: &Analyzer,
    paths: &[(PathBuf, Option<String>)],
) -> (Option<BatchScale>, Vec<Option<RedCellMeasure>>) {
    if analyzer.um_per_px.is_some() || paths.len() < BatchScale::MIN_FIELDS {
        return (None, Vec::new());
    }
    let pb = progress(paths.len(), "measuring the scale");
    let measures: Vec<Option<RedCellMeasure>> = paths
        .iter()
        .map(|(path, bad)| {
            pb.inc(1);
            read_input(path, bad.as_deref()).ok().map(|img| measure_red_cells(&img, &analyzer.detect))
        })
        .collect();
    pb.finish_and_clear();
    let read: Vec<RedCellMeasure> = measures.iter().flatten().cloned().collect();
    let batch = BatchScale::of(&read, &analyzer.detect);
    match &batch {
        Some(b) => info!("no scale configured: {}", batch_text(&b.calibration)),
        None => {
            info!("no scale configured, and these fields' red cells cannot calibrate it: each field estimates its own")
        }
    }
    (batch, measures)
}

fn batch_text(c: &Calibration) -> String {
    let how = if c.method == "red_cells_pooled" {
        format!("the red cells of {} fields pooled ({} red cells); every field uses it", c.fields_used, c.cells)
    } else {
        format!("the median of {} fields' own estimates; the fields that cannot tell their own use it", c.fields_used)
    };
    format!(
        "batch calibration (no scale configured): {:.4} um/px from {how}. For counting, calibrate the camera once: leukoscope calibrate --write",
        c.um_per_px
    )
}
