//! `leukoscope calibrate`: the camera's scale from many fields or a stage
//! micrometer, optionally written into the config file.

use super::{load_config, progress};
use anyhow::{Context, Result};
use leukoscope::vision::calibrate::Calibration;
use std::path::PathBuf;

/// Measure the camera's scale (µm per pixel): the median of the red-cell
/// estimates of many fields (with their spread), or, at high magnification
/// where most fields hold too few red cells for their own estimate, the
/// typical red cell of all fields pooled; or a stage micrometer. With
/// --write, store it in the config's [scale] table (per objective with
/// --objective), keeping the file's comments.
#[derive(clap::Args)]
pub struct Args {
    /// TOML configuration to write into (--write); created if missing.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Objective the scale belongs to (e.g. 100x): written to
    /// [scale.objectives] and made the one in use.
    #[arg(long)]
    objective: Option<String>,
    /// Store the result in the config file.
    #[arg(long, requires = "config")]
    write: bool,
    /// Stage micrometer: the length of a ruling in pixels...
    #[arg(long, requires = "micrometer_um", conflicts_with = "fields")]
    micrometer_px: Option<f32>,
    /// ...and its length in µm.
    #[arg(long, requires = "micrometer_px")]
    micrometer_um: Option<f32>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Field images (or folders) from this camera and objective; 20 or more
    /// fields with red cells make a steady median.
    #[arg(required_unless_present = "micrometer_px")]
    fields: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<i32> {
    // The detector parameters (assumed red-cell size) come from the config,
    // if it exists yet.
    let cfg = load_config(a.config.as_deref().filter(|p| p.exists()))?;
    let mut failed = 0;
    let c = match a.micrometer_px.zip(a.micrometer_um) {
        Some((px, um)) => Calibration::from_micrometer(px, um)?,
        None => {
            let paths = leukoscope::input::collect_images(&a.fields)?;
            let pb = progress(paths.len(), "measuring red cells");
            let mut estimates = Vec::with_capacity(paths.len());
            for p in &paths {
                pb.inc(1);
                match leukoscope::input::load_rgb(p) {
                    Ok(img) => {
                        let m = leukoscope::vision::detect::measure_red_cells(&img, &cfg.detect);
                        debug!("{}: {:?}, {} red cells measured", p.display(), m.estimate, m.radii_px.len());
                        estimates.push(m);
                    }
                    Err(e) => {
                        failed += 1;
                        pb.suspend(|| error!("{}", leukoscope::error_text(&e)));
                    }
                }
            }
            pb.finish_and_clear();
            Calibration::from_measures(&estimates, &cfg.detect)?
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        println!("scale: {:.4} um/px ({:.1} px/um)", c.um_per_px, 1.0 / c.um_per_px);
        if c.method == "red_cells" {
            println!(
                "median of {} fields with red-cell estimates (of {} read; {} red cells), IQR {:.4}-{:.4} ({:.1}% of the median), MAD {:.4}",
                c.fields_used,
                c.fields_total,
                c.cells,
                c.q1,
                c.q3,
                100.0 * c.relative_iqr(),
                c.mad
            );
            if c.fields_used < 10 {
                println!("few fields: name 20 or more for a steady figure");
            }
        } else if c.method == "red_cells_pooled" {
            println!(
                "most fields hold too few red cells for their own estimate (high magnification): the typical \
                 red cell of {} fields pooled ({} red cells, of {} fields read), spread of single cells {:.4}-{:.4}",
                c.fields_used, c.cells, c.fields_total, c.q1, c.q3
            );
        } else {
            println!("from a stage micrometer");
        }
    }
    if a.write {
        let path = a.config.context("--write needs --config FILE")?;
        leukoscope::vision::calibrate::write_scale(&path, a.objective.as_deref(), c.um_per_px)?;
        let which = match leukoscope::config::Config::load(&path)?.scale.objective {
            Some(o) => format!("[scale.objectives] \"{o}\" (objective in use)"),
            None => "[scale] um_per_px".into(),
        };
        println!("written to {} as {which}", path.display());
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
