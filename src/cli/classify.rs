//! `leukoscope classify`: single-cell crops in, one call each out (table or JSON).

use super::{batch_inputs, progress, read_input, um_per_px_arg, CardArg, Precision};
use anyhow::{Context, Result};
use leukoscope::classify::count::CallRules;
use leukoscope::classify::model::{Classifier, ModelCard};
use leukoscope::report::json::{classification_json, CropOutcome};
use leukoscope::vision::detect::ScaleSource;
use leukoscope::vision::preprocess::prepare;
use std::io::Write;
use std::path::PathBuf;

/// Classify single-cell crops (one centred leukocyte per image, no detection).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: CardArg,
    /// Which model file to run: auto (the card's fastest on this CPU), int8 or f32.
    #[arg(long, value_enum, default_value = "auto")]
    precision: Precision,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Scale of the crops (µm per pixel), as `calibrate` or the scanner's
    /// specification gives it. Default: estimated from the red cells in each
    /// crop (the JSON says which), else the detector's fallback.
    #[arg(long)]
    um_per_px: Option<f32>,
    /// Image files or directories of images.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<i32> {
    let clf = load_classifier(a.model, a.precision)?;
    let paths = batch_inputs(&a.inputs)?;
    let um_per_px = um_per_px_arg(a.um_per_px)?;
    let spec = clf.card.input.preprocessing.clone();
    let detect = leukoscope::vision::detect::DetectParams::default();
    let pb = progress(paths.len(), "classifying");
    let mut results: Vec<(PathBuf, CropOutcome)> = Vec::new();
    let mut failed = 0;
    for (path, bad) in &paths {
        pb.inc(1);
        let outcome = read_input(path, bad.as_deref()).and_then(|img| {
            let scale = leukoscope::classify::pipeline::crop_scale(&img, um_per_px, &detect);
            let prepared = prepare(&img, &spec, None, scale.um_per_px);
            let morphometry = leukoscope::vision::morphometry::measure(&img, &prepared);
            Ok((clf.predict(&prepared)?, scale, morphometry))
        });
        match outcome {
            Ok(pred) => results.push((path.clone(), Ok(pred))),
            Err(e) => {
                failed += 1;
                pb.suspend(|| error!("{e:#}"));
                results.push((path.clone(), Err(format!("{e:#}"))));
            }
        }
    }
    pb.finish_and_clear();
    let card = &clf.card;
    let rules = CallRules::from_card(card);
    // A crop seldom shows enough red cells to measure its scale; with the
    // physical window a wrong scale changes the call, so say it once, loudly.
    let guessed =
        results.iter().filter(|(_, r)| matches!(r, Ok((_, s, _)) if s.source == ScaleSource::Fallback)).count();
    if guessed > 0 && card.input.preprocessing.is_physical() {
        warn!(
            "{guessed} of {} crops show too few red cells to measure their scale and were prepared at the \
             fallback {} um/px: calls on them are unreliable; give the scanner's scale with --um-per-px",
            paths.len(),
            detect.fallback_um_per_px
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&classification_json(card, &rules, &results))?);
    } else {
        print_table(card, &rules, &results)?;
    }
    if failed > 0 {
        error!("{failed} of {} images failed", paths.len());
        return Ok(1);
    }
    Ok(0)
}

fn load_classifier(model: CardArg, precision: Precision) -> Result<Classifier> {
    let card = model.path();
    let clf = Classifier::load_precision(&card, precision.into())
        .with_context(|| format!("loading model card {}", card.display()))?;
    debug!("model {} ({}, {})", clf.card.name, clf.variant, clf.model_path.display());
    Ok(clf)
}

/// The table of a classification, then the disclaimer, on stdout.
fn print_table(card: &ModelCard, rules: &CallRules, results: &[(PathBuf, CropOutcome)]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<50} {:<5} {:>6}  {:<5} label", "image", "class", "conf", "blast")?;
    for (path, r) in results {
        match r {
            Ok((pred, _, _)) => {
                let (i, conf) = pred.top();
                let c = &card.classes[i];
                let flag = if card.blast_classes.contains(&c.code) { "BLAST" } else { "" };
                let low = rules
                    .call(card, pred)
                    .doubt()
                    .map_or(String::new(), |d| format!(" (unidentified: {})", d.reason()));
                writeln!(out, "{:<50} {:<5} {:>6.3}  {:<5} {}{low}", path.display(), c.code, conf, flag, c.name)?;
            }
            Err(e) => writeln!(out, "{:<50} ERROR  {e}", path.display())?,
        }
    }
    writeln!(out, "\n{}", leukoscope::DISCLAIMER)?;
    Ok(())
}
