//! The TOML configuration. Every key is optional and documented in
//! `board/leukoscope.toml` (the defaults below); an unknown key or a bad value
//! is an error that names it.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}")]
    Value { path: PathBuf, source: InvalidValue },
    /// A class the config names that the model does not know.
    #[error("config {path}: count.blast_classes = {class:?}: not a class of model {model} (classes: {classes})")]
    UnknownClass { path: PathBuf, class: String, model: String, classes: String },
}

/// A configuration value that cannot be used: its key (`section.key`), the
/// value as written, and why. Every section's `validate` says this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {why}")]
pub struct InvalidValue {
    pub key: &'static str,
    pub value: String,
    pub why: String,
}

impl InvalidValue {
    pub fn new(key: &'static str, value: impl ToString, why: impl Into<String>) -> InvalidValue {
        InvalidValue { key, value: value.to_string(), why: why.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub count: CountConfig,
    pub scale: ScaleConfig,
    pub detect: crate::vision::detect::DetectParams,
    pub session: crate::appliance::SessionConfig,
    pub gate: crate::vision::gating::GateParams,
    pub source: crate::hw::source::SourceConfig,
    pub camera: crate::hw::camera::CameraConfig,
    pub display: crate::hw::display::DisplayConfig,
    pub buttons: crate::hw::gpio::ButtonsConfig,
    pub scanner: crate::hw::scanner::ScannerConfig,
    pub review: crate::review::server::ReviewConfig,
    pub export: crate::appliance::export::ExportConfig,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Model card to use; unset = the shipped model.
    pub card: Option<PathBuf>,
    /// Which of the card's files to run: "auto" (the one the card measured
    /// fastest on this CPU: f32 on x86_64, int8 on ARM), "int8" or "f32".
    pub precision: crate::classify::model::Precision,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CountConfig {
    /// Flag the sample when the blast percentage reaches this value (percent).
    pub blast_threshold_percent: f64,
    /// Classes counted as blasts; unset = the model card's list (MYO, MOB). Each must be
    /// a class of the model (or in the card's own list); an empty list is refused.
    pub blast_classes: Option<Vec<String>>,
    /// Cells below this top-class probability are "unidentified"; unset = the card's value.
    pub min_confidence: Option<f32>,
}

impl Default for CountConfig {
    fn default() -> Self {
        CountConfig { blast_threshold_percent: 20.0, blast_classes: None, min_confidence: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScaleConfig {
    /// Micrometres per pixel of the camera image, as `leukoscope calibrate
    /// --write` measures it; unset (and no objective) = `analyze` estimates it
    /// per field from the red cells (median diameter ~7.5 µm), `run` over the
    /// session's first fields.
    pub um_per_px: Option<f32>,
    /// The objective in use, a key of `objectives`; when set, its scale
    /// replaces `um_per_px`.
    pub objective: Option<String>,
    /// Micrometres per pixel per objective, e.g. { "100x" = 0.071, "50x" = 0.142 }.
    pub objectives: std::collections::BTreeMap<String, f32>,
    /// `run` without a configured scale: fields with a red-cell estimate whose
    /// median becomes the session's scale (earlier fields use their own). When
    /// most fields hold too few whole red cells for an estimate (high
    /// magnification), the red cells of at least this many fields are pooled
    /// instead, once there are 20 or more.
    pub calibrate_fields: usize,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        ScaleConfig { um_per_px: None, objective: None, objectives: Default::default(), calibrate_fields: 5 }
    }
}

impl ScaleConfig {
    /// Whether `s` can be a camera's scale in µm per pixel: a positive number below 10.
    pub fn usable(s: f32) -> bool {
        s.is_finite() && s > 0.0 && s < 10.0
    }

    /// The configured scale (the objective's, else `um_per_px`), if any.
    pub fn configured(&self) -> Option<f32> {
        match &self.objective {
            Some(o) => self.objectives.get(o).copied(),
            None => self.um_per_px,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key, value: String, why: &str| {
            Err(ConfigError::Value { path: path.into(), source: InvalidValue::new(key, value, why) })
        };
        let t = self.count.blast_threshold_percent;
        if !(0.0..=100.0).contains(&t) {
            return bad("count.blast_threshold_percent", t.to_string(), "must be between 0 and 100");
        }
        if self.count.blast_classes.as_ref().is_some_and(Vec::is_empty) {
            return bad(
                "count.blast_classes",
                "[]".into(),
                "must name at least one class (else no cell is ever a blast)",
            );
        }
        if let Some(c) = self.count.min_confidence {
            if !(0.0..=1.0).contains(&c) {
                return bad("count.min_confidence", c.to_string(), "must be between 0 and 1");
            }
        }
        if let Some(s) = self.scale.um_per_px {
            if !ScaleConfig::usable(s) {
                return bad("scale.um_per_px", s.to_string(), "must be a positive number below 10");
            }
        }
        if let Some((name, s)) = self.scale.objectives.iter().find(|(_, s)| !ScaleConfig::usable(**s)) {
            return bad("scale.objectives", format!("{name} = {s}"), "must be a positive number below 10");
        }
        if let Some(o) = &self.scale.objective {
            if !self.scale.objectives.contains_key(o) {
                return bad("scale.objective", o.clone(), "is not a key of [scale.objectives]");
            }
        }
        if self.scale.calibrate_fields == 0 {
            return bad("scale.calibrate_fields", "0".into(), "must be at least 1");
        }
        let sections = [
            self.session.validate(),
            self.gate.validate(),
            self.detect.validate(),
            self.camera.validate(),
            self.buttons.validate(),
            self.scanner.validate(),
            self.review.validate(),
            self.display.validate(),
            self.export.validate(),
        ];
        if let Some(Err(source)) = sections.into_iter().find(Result::is_err) {
            return Err(ConfigError::Value { path: path.into(), source });
        }
        let fps = self.source.replay_fps;
        if !(fps.is_finite() && (0.0..=1000.0).contains(&fps)) {
            return bad("source.replay_fps", fps.to_string(), "must be between 0 and 1000");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults() {
        let c = Config::parse("", Path::new("x.toml")).expect("empty config");
        assert_eq!(c, Config::default());
        assert_eq!(c.count.blast_threshold_percent, 20.0);
    }

    /// The documented file lists every key with its default: docs match code.
    #[test]
    fn board_config_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("board/leukoscope.toml");
        let c = Config::load(&path).expect("board/leukoscope.toml");
        assert_eq!(c, Config::default(), "board/leukoscope.toml disagrees with Config::default()");
        let text = std::fs::read_to_string(&path).expect("read");
        for key in toml::to_string(&Config::default()).expect("toml").lines().filter_map(|l| l.split(" = ").next()) {
            if !key.starts_with('[') && !key.is_empty() {
                assert!(text.contains(&format!("{key} =")), "board/leukoscope.toml does not document '{key}'");
            }
        }
    }

    #[test]
    fn the_objective_picks_the_scale() {
        let text =
            "[scale]\num_per_px = 0.2\nobjective = \"100x\"\n[scale.objectives]\n\"100x\" = 0.07\n\"50x\" = 0.14\n";
        let c = Config::parse(text, Path::new("x.toml")).expect("valid");
        assert_eq!(c.scale.configured(), Some(0.07));
        let c = Config::parse("[scale]\num_per_px = 0.2\n", Path::new("x.toml")).expect("valid");
        assert_eq!(c.scale.configured(), Some(0.2));
        assert_eq!(Config::default().scale.configured(), None);
    }

    #[test]
    fn unknown_key_and_bad_value_are_named() {
        let e = Config::parse("[count]\nblast_treshold_percent = 10\n", Path::new("x.toml")).unwrap_err();
        assert!(crate::error_text(&e).contains("blast_treshold_percent"), "{e}");
        let e = Config::parse("[count]\nblast_threshold_percent = 120\n", Path::new("x.toml")).unwrap_err();
        assert!(crate::error_text(&e).contains("count.blast_threshold_percent"), "{e}");
        let e = Config::parse("[scale]\num_per_px = -1.0\n", Path::new("x.toml")).unwrap_err();
        assert!(crate::error_text(&e).contains("scale.um_per_px"), "{e}");
        let e =
            Config::parse("[scale]\nobjective = \"40x\"\n[scale.objectives]\n\"100x\" = 0.07\n", Path::new("x.toml"))
                .unwrap_err();
        assert!(crate::error_text(&e).contains("scale.objective") && crate::error_text(&e).contains("40x"), "{e}");
        let e = Config::parse("[scale.objectives]\n\"100x\" = 0.0\n", Path::new("x.toml")).unwrap_err();
        assert!(crate::error_text(&e).contains("100x"), "{e}");
        let e = Config::parse("[detect]\nblue_weight = nan\n", Path::new("x.toml")).unwrap_err();
        assert!(crate::error_text(&e).contains("detect.blue_weight"), "{e}");
        let e = Config::parse("[detect]\nwork_px_per_um = 0.0\n", Path::new("x.toml")).unwrap_err();
        assert!(crate::error_text(&e).contains("detect.work_px_per_um"), "{e}");
        let e = Config::parse("[count\n", Path::new("x.toml")).unwrap_err();
        assert!(crate::error_text(&e).contains("x.toml"), "{e}");
    }
}
