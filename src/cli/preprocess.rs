//! `leukoscope preprocess`: images to model input tensors for training.

use super::progress;
use anyhow::{bail, Context, Result};
use leukoscope::vision::preprocess::{prepare, PreprocessSpec};
use std::path::PathBuf;

/// Turn images into model input tensors (used by the Python training pipeline,
/// so that training sees exactly what the appliance sees).
#[derive(clap::Args)]
pub struct Args {
    /// Text file with one image path per line, optionally followed by a tab
    /// and the image's scale in µm per pixel (else estimated as `classify` does).
    #[arg(long)]
    list: PathBuf,
    /// Output .npy file: float32 [N, 3, S, S]. A JSON sidecar (same name,
    /// .json) records per image whether a nucleus was found or why it failed.
    #[arg(long)]
    out: PathBuf,
    /// Model card whose preprocessing to use; default: the built-in defaults.
    #[arg(long)]
    card: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<i32> {
    let (list, out) = (&a.list, &a.out);
    let spec = match a.card {
        Some(c) => leukoscope::classify::model::ModelCard::load(&c)?.input.preprocessing,
        None => PreprocessSpec::default(),
    };
    let text = std::fs::read_to_string(list).with_context(|| format!("reading list {}", list.display()))?;
    let mut items: Vec<(PathBuf, Option<f32>)> = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let (path, scale) = match line.split_once('\t') {
            Some((p, s)) => match s.trim().parse::<f32>() {
                Ok(v) if v.is_finite() && v > 0.0 => (p, Some(v)),
                _ => bail!("{} line {}: scale '{s}' is not a positive number", list.display(), n + 1),
            },
            None => (line, None),
        };
        items.push((PathBuf::from(path.trim()), scale));
    }
    if items.is_empty() {
        bail!("{}: list is empty", list.display());
    }
    let detect = leukoscope::vision::detect::DetectParams::default();
    let s = spec.size as usize;
    let mut writer = leukoscope::report::npy::NpyWriter::create(out, &[items.len(), 3, s, s])?;
    let pb = progress(items.len(), "preprocessing");
    let mut meta = Vec::with_capacity(items.len());
    let mut failed = 0;
    for (path, given) in &items {
        pb.inc(1);
        match leukoscope::input::load_rgb(path) {
            Ok(img) => {
                let scale = leukoscope::classify::pipeline::crop_scale(&img, *given, &detect);
                let p = prepare(&img, &spec, None, scale.um_per_px);
                writer.write(&p.tensor)?;
                meta.push(serde_json::json!({
                    "path": path,
                    "nucleus": p.nucleus.map(|n| [n.bbox.x0, n.bbox.y0, n.bbox.x1, n.bbox.y1]),
                    "nucleus_area_um2": p.nucleus_um().map(|n| n.0),
                    "window": [p.window.0, p.window.1, p.window.2],
                    "scale": scale,
                }));
            }
            Err(e) => {
                failed += 1;
                let e = leukoscope::error_text(&e);
                pb.suspend(|| warn!("{e}"));
                writer.write(&vec![0f32; 3 * s * s])?;
                meta.push(serde_json::json!({"path": path, "error": e}));
            }
        }
    }
    writer.finish()?;
    pb.finish_and_clear();
    let sidecar = out.with_extension("json");
    std::fs::write(&sidecar, serde_json::to_string(&serde_json::json!({"preprocessing": spec, "items": meta}))?)
        .with_context(|| format!("writing {}", sidecar.display()))?;
    info!("wrote {} tensors to {} ({failed} failed)", items.len(), out.display());
    Ok(if failed > 0 { 1 } else { 0 })
}
