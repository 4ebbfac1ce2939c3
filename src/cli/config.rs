//! `leukoscope config`: the configuration in effect, as TOML.

use super::load_config;
use anyhow::Result;
use std::path::PathBuf;

/// Print the configuration in effect (the defaults, or FILE checked and
/// completed with them) as TOML.
#[derive(clap::Args)]
pub struct Args {
    /// TOML configuration to check.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<i32> {
    print!("{}", toml::to_string(&load_config(a.config.as_deref())?)?);
    Ok(0)
}
