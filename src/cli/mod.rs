//! The subcommands of the `leukoscope` binary, one module each (its clap
//! arguments beside its code), and what they share: the options several of
//! them take, the clap mirrors of library types, loading and batch helpers.

// The binary's log lines keep the one target `leukoscope` (the binary's name,
// which the log shows and RUST_LOG filters on), whichever module writes them.
// Defined before the modules, so that they can use them.
macro_rules! error { ($($t:tt)+) => { log::error!(target: "leukoscope", $($t)+) } }
macro_rules! warn { ($($t:tt)+) => { log::warn!(target: "leukoscope", $($t)+) } }
macro_rules! info { ($($t:tt)+) => { log::info!(target: "leukoscope", $($t)+) } }
macro_rules! debug { ($($t:tt)+) => { log::debug!(target: "leukoscope", $($t)+) } }

pub mod analyze;
pub mod bench;
pub mod calibrate;
pub mod camera_check;
pub mod classify;
pub mod config;
pub mod preprocess;
pub mod review;
pub mod run;
pub mod session;

use anyhow::{bail, Result};
use leukoscope::classify::pipeline::{Analyzer, BuildError};
use leukoscope::config::Config;
use std::path::{Path, PathBuf};

/// `--config` of the subcommands that analyse by the configuration (analyze, run).
#[derive(clap::Args)]
pub struct ConfigArg {
    /// TOML configuration (see board/leukoscope.toml for every key).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The configuration file, or the defaults without one.
    pub fn load(&self) -> Result<Config> {
        load_config(self.config.as_deref())
    }
}

/// `--model` and `--precision` of the subcommands that analyse by the
/// configuration (analyze, run): each overrides the config's.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// Model card (JSON); default: the config's, else the shipped model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Which model file to run: auto (the card's fastest on this CPU), int8 or f32;
    /// default: the config's (auto).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
}

impl ModelArgs {
    /// The analyzer `config` (read from `config_path`) describes, with these overrides.
    pub fn analyzer(self, config: &Config, config_path: Option<&Path>) -> Result<Analyzer, BuildError> {
        Analyzer::from_config(config, config_path, self.model, self.precision.map(Into::into))
    }
}

/// `--model` of the subcommands that use no configuration (classify, bench).
#[derive(clap::Args)]
pub struct CardArg {
    /// Model card (JSON); default: the shipped model.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

impl CardArg {
    /// The model card to load: the one named, else the shipped one.
    pub fn path(self) -> PathBuf {
        self.model.unwrap_or_else(leukoscope::classify::model::default_card_path)
    }
}

/// [`leukoscope::classify::model::Precision`] as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// The card's `precision_by_arch` entry for this CPU architecture (int8 if none).
    Auto,
    Int8,
    F32,
}

impl From<Precision> for leukoscope::classify::model::Precision {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Auto => Self::Auto,
            Precision::Int8 => Self::Int8,
            Precision::F32 => Self::F32,
        }
    }
}

/// The configuration file at `path`, or the defaults without one.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

/// A `--um-per-px` value, refused (before any work) when `[scale]` would refuse it.
pub fn um_per_px_arg(s: Option<f32>) -> Result<Option<f32>> {
    match s {
        Some(s) if !leukoscope::config::ScaleConfig::usable(s) => {
            bail!("--um-per-px {s}: must be a positive number below 10")
        }
        s => Ok(s),
    }
}

pub fn progress(n: usize, what: &str) -> indicatif::ProgressBar {
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

/// A batch's inputs in order, each an image path, or an input that gave none
/// (missing, empty directory) with its error: the batch goes on with the
/// others and reports it. With no image at all, the error stops everything.
pub fn batch_inputs(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, Option<String>)>> {
    let items = leukoscope::input::collect_batch(inputs);
    if items.iter().all(Result::is_err) {
        let mut errors = items.into_iter().filter_map(Result::err);
        let Some(first) = errors.next() else { bail!("no images given") };
        for e in errors {
            error!("{}", leukoscope::error_text(&e));
        }
        return Err(first.into());
    }
    Ok(items
        .into_iter()
        .map(|i| match i {
            Ok(p) => (p, None),
            Err(e) => (e.path().to_path_buf(), Some(leukoscope::error_text(&e))),
        })
        .collect())
}

/// One input of a batch read: its image, or why there is none.
pub fn read_input(path: &Path, bad: Option<&str>) -> Result<image::RgbImage> {
    match bad {
        Some(e) => Err(anyhow::anyhow!("{e}")),
        None => Ok(leukoscope::input::load_rgb(path)?),
    }
}

/// The built-in demonstration input: the BCCD test fields of the data folder.
pub fn demo_inputs() -> Result<Vec<PathBuf>> {
    use anyhow::Context;
    let root = leukoscope::input::data_dir().join("bccd");
    let list = root.join("ImageSets/Main/test.txt");
    let text = std::fs::read_to_string(&list).with_context(|| {
        format!(
            "no inputs given and the demonstration data is missing ({}); set LEUKOSCOPE_DATA or name images",
            list.display()
        )
    })?;
    info!("no inputs given: analysing the BCCD test fields in {}", root.display());
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|id| root.join("JPEGImages").join(format!("{id}.jpg")))
        .collect())
}
