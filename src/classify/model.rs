//! The shipped classifier: a model card (JSON) and an ONNX file run by tract.
//!
//! The card is the contract between the training pipeline and this runtime. A
//! model whose file hash, input shape, class count or preprocessing does not
//! match its card is refused with a message naming what differs.

use crate::vision::preprocess::{Prepared, PreprocessSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("model card {path} is not valid")]
    Card { path: PathBuf, source: serde_json::Error },
    #[error("model file {path} has sha256 {actual}, but its card says {expected}: wrong or damaged model file")]
    Hash { path: PathBuf, expected: String, actual: String },
    #[error("model card {path}: {what}")]
    Mismatch { path: PathBuf, what: String },
    #[error("tract cannot load {path}")]
    Tract { path: PathBuf, source: anyhow::Error },
    #[error("inference failed: {0}")]
    Run(anyhow::Error),
}

/// One output class of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// Short code (the LMU abbreviations, plus PLT for platelets).
    pub code: String,
    /// Human-readable name.
    pub name: String,
    /// Whether this is a leukocyte (counted) or something a detector may pick
    /// up that is not (platelets): those are reported but never counted.
    pub leukocyte: bool,
}

/// Input contract of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputInfo {
    /// NCHW, batch 1.
    pub shape: [usize; 4],
    /// Meaning of the three channels.
    pub channels: String,
    pub preprocessing: PreprocessSpec,
}

/// The model card (`models/*.card.json`). Fields not needed at run time
/// (training data, metrics, licences) are kept as free JSON for the reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    pub name: String,
    /// Model file, relative to the card.
    pub file: String,
    pub sha256: String,
    pub input: InputInfo,
    /// In the order of the model's output.
    pub classes: Vec<ClassInfo>,
    /// Codes that count as blasts or blast equivalents (may name classes the
    /// model lacks: a retrained model with them will count them).
    pub blast_classes: Vec<String>,
    /// Codes of cell types normally present in peripheral blood; every other
    /// leukocyte class counts as abnormal (the seed paper's second question).
    pub normal_classes: Vec<String>,
    /// Below this top-class probability a cell goes to the "unidentified" bucket.
    pub min_confidence: f32,
    /// Which of the card's two files runs fastest on each CPU architecture
    /// (`std::env::consts::ARCH`: "x86_64", "aarch64", "arm"), as measured by
    /// `leukoscope bench`; an architecture not listed runs the int8 `file`.
    /// Both files give the same classes on the validation split (model card
    /// metrics); tract's int8 kernels are not faster than its f32 ones everywhere.
    #[serde(default)]
    pub precision_by_arch: BTreeMap<String, Variant>,
    /// How to tell a cell unlike the training images; absent in older cards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ood: Option<OodSpec>,
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Out-of-distribution rule of a card: the energy score of a crop,
/// `-logsumexp(logits)` (Liu et al., NeurIPS 2020), is low for inputs like the
/// training images and rises for inputs unlike them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OodSpec {
    /// A crop whose energy exceeds this is "unfamiliar" (set from the training
    /// labs' validation crops: their 99th percentile).
    pub max_energy: f32,
    /// A count whose unfamiliar share reaches this many percent warns that
    /// the images are unlike the validated labs.
    pub warn_percent: f64,
}

/// One of a card's model files: `file` (int8) or `extra.f32_model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Int8,
    F32,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Variant::Int8 => "int8",
            Variant::F32 => "f32",
        })
    }
}

/// Which model file to run: the card's choice for this CPU, or one forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The card's `precision_by_arch` entry for this CPU architecture (int8 if none).
    #[default]
    Auto,
    Int8,
    F32,
}

impl Precision {
    /// The file variant this precision means for `card` on this machine.
    pub fn resolve(self, card: &ModelCard) -> Variant {
        match self {
            Precision::Auto => card.precision_by_arch.get(std::env::consts::ARCH).copied().unwrap_or(Variant::Int8),
            Precision::Int8 => Variant::Int8,
            Precision::F32 => Variant::F32,
        }
    }
}

impl ModelCard {
    pub fn load(path: &Path) -> Result<ModelCard, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
        let card: ModelCard =
            serde_json::from_str(&text).map_err(|source| ModelError::Card { path: path.into(), source })?;
        card.validate(path)?;
        Ok(card)
    }

    fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::Mismatch { path: path.into(), what });
        let p = &self.input.preprocessing;
        if let Err(why) = p.check() {
            return bad(why);
        }
        let s = p.size as usize;
        if self.input.shape != [1, 3, s, s] {
            return bad(format!(
                "input shape {:?} does not match preprocessing size {s} (expected [1, 3, {s}, {s}])",
                self.input.shape
            ));
        }
        if self.classes.is_empty() {
            return bad("no classes".into());
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return bad(format!("min_confidence {} outside 0..1", self.min_confidence));
        }
        Ok(())
    }

    /// The prediction is unlike the training images (per the card's `ood` rule).
    pub fn is_unfamiliar(&self, pred: &Prediction) -> bool {
        self.ood.is_some_and(|o| pred.energy > o.max_energy)
    }

    /// The warning a report carries when too many cells were unfamiliar.
    pub fn unfamiliar_warning(&self, unfamiliar_percent: f64) -> Option<String> {
        let o = self.ood?;
        (unfamiliar_percent >= o.warn_percent).then(|| {
            format!(
                "{unfamiliar_percent:.0}% of the cells are unlike the images this model was validated on \
                 (limit {:.0}%): the calls are unreliable, review every cell",
                o.warn_percent
            )
        })
    }

    pub fn class_index(&self, code: &str) -> Option<usize> {
        self.classes.iter().position(|c| c.code == code)
    }
}

/// Probabilities for one crop, in the card's class order.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub probs: Vec<f32>,
    /// The crop held a stained nucleus. Without one there is no cell to
    /// classify (blank, uniform or tiny input), whatever the probabilities say.
    pub stained: bool,
    /// Energy score `-logsumexp(logits)`: higher = less like the training images.
    pub energy: f32,
}

impl Prediction {
    /// Index and probability of the most likely class.
    pub fn top(&self) -> (usize, f32) {
        self.probs.iter().copied().enumerate().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or((0, 0.0))
    }
}

/// A loaded, verified, optimised model.
pub struct Classifier {
    pub card: ModelCard,
    pub model_path: PathBuf,
    /// Which of the card's files this is.
    pub variant: Variant,
    plan: Arc<TypedSimplePlan>,
}

impl Classifier {
    /// Loads the card, checks the model file's hash, loads it into tract with the
    /// card's fixed input shape and checks the output width. Runs the file the
    /// card names as fastest on this CPU ([`Precision::Auto`]).
    pub fn load(card_path: &Path) -> Result<Classifier, ModelError> {
        Classifier::load_precision(card_path, Precision::Auto)
    }

    /// [`Classifier::load`] with the int8 or f32 file chosen. The returned
    /// card's `file` and `sha256` are those of the file that runs, so reports
    /// name the model that made the calls.
    pub fn load_precision(card_path: &Path, precision: Precision) -> Result<Classifier, ModelError> {
        let mut card = ModelCard::load(card_path)?;
        let variant = precision.resolve(&card);
        if variant == Variant::F32 {
            let f32_model = card.extra.get("f32_model").cloned().unwrap_or_default();
            let (Some(file), Some(sha)) = (f32_model["file"].as_str(), f32_model["sha256"].as_str()) else {
                return Err(ModelError::Mismatch {
                    path: card_path.into(),
                    what: "f32 asked for, but the card has no extra.f32_model {file, sha256}".into(),
                });
            };
            card.file = file.to_string();
            card.sha256 = sha.to_string();
        }
        Classifier::from_card(card, card_path, variant)
    }

    fn from_card(card: ModelCard, card_path: &Path, variant: Variant) -> Result<Classifier, ModelError> {
        let model_path = card_path.parent().unwrap_or(Path::new(".")).join(&card.file);
        let bytes = std::fs::read(&model_path).map_err(|source| ModelError::Io { path: model_path.clone(), source })?;
        let actual = hex(&Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&card.sha256) {
            return Err(ModelError::Hash { path: model_path, expected: card.sha256.clone(), actual });
        }
        let tract_err = |source: anyhow::Error| ModelError::Tract { path: model_path.clone(), source };
        let mut proto = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_read(&mut std::io::Cursor::new(&bytes))
            .map_err(&tract_err)?;
        // The file's declared input must agree with the card (batch may be symbolic).
        let declared = proto.input_fact(0).map_err(&tract_err)?.shape.clone();
        let want = card.input.shape;
        for (axis, want_dim) in want.iter().enumerate().skip(1) {
            if let Some(Some(dim)) = declared.dims().nth(axis).map(|d| d.concretize()) {
                if let Ok(v) = dim.to_i64() {
                    if v as usize != *want_dim {
                        return Err(ModelError::Mismatch {
                            path: card_path.into(),
                            what: format!("model input axis {axis} is {v}, card says {want_dim}"),
                        });
                    }
                }
            }
        }
        proto = proto.with_input_fact(0, f32::fact(want).into()).map_err(&tract_err)?;
        let typed = proto.into_optimized().map_err(&tract_err)?;
        let out = typed.output_fact(0).map_err(&tract_err)?.shape.as_concrete().map(|s| s.to_vec());
        if out.as_deref() != Some(&[1, card.classes.len()][..]) {
            return Err(ModelError::Mismatch {
                path: card_path.into(),
                what: format!("model output shape {out:?}, card lists {} classes", card.classes.len()),
            });
        }
        let plan = typed.into_runnable().map_err(&tract_err)?;
        Ok(Classifier { card, model_path, variant, plan })
    }

    /// Class probabilities (softmax of the model's logits) for one prepared crop.
    pub fn predict(&self, prepared: &Prepared) -> Result<Prediction, ModelError> {
        let shape = self.card.input.shape;
        let input = tract_ndarray::Array4::from_shape_vec(shape, prepared.tensor.clone())
            .map_err(|e| ModelError::Run(anyhow::anyhow!("input tensor: {e}")))?;
        let out = self.plan.run(tvec!(Tensor::from(input).into())).map_err(ModelError::Run)?;
        let logits = out[0].to_plain_array_view::<f32>().map_err(ModelError::Run)?;
        let (probs, energy) = softmax_and_energy(logits.iter().copied());
        Ok(Prediction { probs, stained: prepared.nucleus.is_some(), energy })
    }
}

/// Softmax of the logits and their energy score `-logsumexp(logits)`, from one
/// pass of shifted exponentials.
fn softmax_and_energy(logits: impl Iterator<Item = f32>) -> (Vec<f32>, f32) {
    let v: Vec<f32> = logits.collect();
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    (e.into_iter().map(|x| x / s).collect(), -(m + s.ln()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}

/// File name of the shipped model card.
pub const DEFAULT_CARD: &str = "leukoscope.card.json";

/// The shipped model card: `$LEUKOSCOPE_MODEL`, else the first of
/// `./models/`, `/usr/share/leukoscope/models/` and the source tree's `models/`
/// that holds one.
pub fn default_card_path() -> PathBuf {
    if let Some(p) = std::env::var_os("LEUKOSCOPE_MODEL") {
        return PathBuf::from(p);
    }
    let candidates = [
        PathBuf::from("models").join(DEFAULT_CARD),
        PathBuf::from("/usr/share/leukoscope/models").join(DEFAULT_CARD),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(DEFAULT_CARD),
    ];
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| candidates[0].clone())
}
