//! `leukoscope`: command-line front end. Parsing, progress and printing live
//! here; everything else is in the library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use leukoscope::model::Classifier;
use leukoscope::preprocess::{prepare, PreprocessSpec};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "leukoscope",
    version,
    about = "Automated white-blood-cell differential with blast flagging, offline.",
    long_about = "leukoscope finds leukocytes in blood-smear images, classifies each one with an \
int8 ONNX model (run by tract, on this machine, no network) and counts them: per-class \
differential, blast percentage with its exact 95% confidence interval, and a threshold flag.\n\n\
SCREENING AID ONLY: every result must be verified by a qualified person."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify single-cell crops (one centred leukocyte per image, no detection).
    Classify {
        /// Model card (JSON); default: the shipped model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Image files or directories of images.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Turn images into model input tensors (used by the Python training pipeline,
    /// so that training sees exactly what the appliance sees).
    Preprocess {
        /// Text file with one image path per line.
        #[arg(long)]
        list: PathBuf,
        /// Output .npy file: float32 [N, 3, S, S]. A JSON sidecar (same name,
        /// .json) records per image whether a nucleus was found or why it failed.
        #[arg(long)]
        out: PathBuf,
        /// Model card whose preprocessing to use; default: the built-in defaults.
        #[arg(long)]
        card: Option<PathBuf>,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Classify { model, json, inputs } => classify(model, json, &inputs),
        Command::Preprocess { list, out, card } => preprocess(&list, &out, card),
    }
}

fn progress(n: usize, what: &str) -> indicatif::ProgressBar {
    // Only worth drawing for batches, and never into a pipe.
    if n < 20 {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(n as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn load_classifier(model: Option<PathBuf>) -> Result<Classifier> {
    let card = model.unwrap_or_else(leukoscope::model::default_card_path);
    Classifier::load(&card).with_context(|| format!("loading model card {}", card.display()))
}

fn classify(model: Option<PathBuf>, json: bool, inputs: &[PathBuf]) -> Result<i32> {
    let clf = load_classifier(model)?;
    let paths = leukoscope::input::collect_images(inputs)?;
    let spec = clf.card.input.preprocessing.clone();
    let pb = progress(paths.len(), "classifying");
    let mut results = Vec::new();
    let mut failed = 0;
    for path in &paths {
        pb.inc(1);
        let outcome = leukoscope::input::load_rgb(path)
            .map_err(anyhow::Error::from)
            .and_then(|img| Ok(clf.predict(&prepare(&img, &spec, None))?));
        match outcome {
            Ok(pred) => results.push((path.clone(), Ok(pred))),
            Err(e) => {
                failed += 1;
                pb.suspend(|| log::error!("{e:#}"));
                results.push((path.clone(), Err(format!("{e:#}"))));
            }
        }
    }
    pb.finish_and_clear();
    let card = &clf.card;
    if json {
        let items: Vec<serde_json::Value> = results
            .iter()
            .map(|(path, r)| match r {
                Ok(pred) => {
                    let (i, conf) = pred.top();
                    let c = &card.classes[i];
                    let probs: serde_json::Map<String, serde_json::Value> =
                        card.classes.iter().zip(&pred.probs).map(|(c, p)| (c.code.clone(), serde_json::json!(p))).collect();
                    serde_json::json!({
                        "path": path, "class": c.code, "label": c.name, "confidence": conf,
                        "identified": conf >= card.min_confidence,
                        "blast": card.blast_classes.contains(&c.code), "probs": probs,
                    })
                }
                Err(e) => serde_json::json!({"path": path, "error": e}),
            })
            .collect();
        let doc = serde_json::json!({
            "model": {"name": card.name, "sha256": card.sha256},
            "results": items,
            "disclaimer": leukoscope::DISCLAIMER,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{:<50} {:<5} {:>6}  {:<5} label", "image", "class", "conf", "blast")?;
        for (path, r) in &results {
            match r {
                Ok(pred) => {
                    let (i, conf) = pred.top();
                    let c = &card.classes[i];
                    let flag = if card.blast_classes.contains(&c.code) { "BLAST" } else { "" };
                    let low = if conf < card.min_confidence { " (low confidence: unidentified)" } else { "" };
                    writeln!(out, "{:<50} {:<5} {:>6.3}  {:<5} {}{low}", path.display(), c.code, conf, flag, c.name)?;
                }
                Err(e) => writeln!(out, "{:<50} ERROR  {e}", path.display())?,
            }
        }
        writeln!(out, "\n{}", leukoscope::DISCLAIMER)?;
    }
    if failed > 0 {
        log::error!("{failed} of {} images failed", paths.len());
        return Ok(1);
    }
    Ok(0)
}

fn preprocess(list: &Path, out: &Path, card: Option<PathBuf>) -> Result<i32> {
    let spec = match card {
        Some(c) => leukoscope::model::ModelCard::load(&c)?.input.preprocessing,
        None => PreprocessSpec::default(),
    };
    let text = std::fs::read_to_string(list).with_context(|| format!("reading list {}", list.display()))?;
    let paths: Vec<PathBuf> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(PathBuf::from).collect();
    if paths.is_empty() {
        bail!("{}: list is empty", list.display());
    }
    let s = spec.size as usize;
    let mut writer = leukoscope::npy::NpyWriter::create(out, &[paths.len(), 3, s, s])?;
    let pb = progress(paths.len(), "preprocessing");
    let mut meta = Vec::with_capacity(paths.len());
    let mut failed = 0;
    for path in &paths {
        pb.inc(1);
        match leukoscope::input::load_rgb(path) {
            Ok(img) => {
                let p = prepare(&img, &spec, None);
                writer.write(&p.tensor)?;
                meta.push(serde_json::json!({"path": path, "nucleus": p.nucleus.map(|b| [b.x0, b.y0, b.x1, b.y1]), "window": [p.window.0, p.window.1, p.window.2]}));
            }
            Err(e) => {
                failed += 1;
                pb.suspend(|| log::warn!("{e}"));
                writer.write(&vec![0f32; 3 * s * s])?;
                meta.push(serde_json::json!({"path": path, "error": e.to_string()}));
            }
        }
    }
    writer.finish()?;
    pb.finish_and_clear();
    let sidecar = out.with_extension("json");
    std::fs::write(&sidecar, serde_json::to_string(&serde_json::json!({"preprocessing": spec, "items": meta}))?)
        .with_context(|| format!("writing {}", sidecar.display()))?;
    log::info!("wrote {} tensors to {} ({failed} failed)", paths.len(), out.display());
    Ok(if failed > 0 { 1 } else { 0 })
}
