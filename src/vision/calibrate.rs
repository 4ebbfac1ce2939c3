//! The camera's scale (µm per pixel) from many fields or a stage micrometer,
//! and writing it into the configuration.
//!
//! One field's red cells give a noisy scale (a clump, a pale field, a field
//! filled by one leukocyte); the median over many fields of the same camera
//! and objective is what a clinic calibrates once and configures. `run`
//! does the same over a session's first fields when nothing is configured
//! ([`SessionScale`]).

use crate::vision::detect::{pooled_scale, DetectParams, FieldScale, RedCellMeasure, RedCellScale, ScaleSource};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("no field gave a red-cell scale ({fields} fields): name fields with red cells, or use a stage micrometer")]
    NoEstimates { fields: usize },
    #[error("stage micrometer: {0}")]
    Micrometer(&'static str),
    #[error("cannot read config {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write config {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
}

/// A calibrated scale and how much the fields behind it agree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// µm per pixel: the median of the per-field estimates (or the micrometer's).
    pub um_per_px: f32,
    /// `red_cells` (median over fields), `red_cells_pooled` (the typical red
    /// cell of all fields together: high magnification) or `micrometer`.
    pub method: &'static str,
    /// Interquartile range of the per-field estimates (pooled: of the scale
    /// each red cell alone gives), µm per pixel.
    pub q1: f32,
    pub q3: f32,
    /// Median absolute deviation of the same, µm per pixel.
    pub mad: f32,
    /// Fields whose red cells gave an estimate (pooled: held a whole red
    /// cell), and fields looked at.
    pub fields_used: usize,
    pub fields_total: usize,
    /// Red cells behind the estimates, all fields together.
    pub cells: usize,
}

impl Calibration {
    /// The robust median of per-field red-cell estimates (`None`: the field
    /// could not tell).
    pub fn from_fields(estimates: &[Option<RedCellScale>]) -> Result<Calibration, CalibrationError> {
        let mut v: Vec<f32> = estimates.iter().flatten().map(|e| e.um_per_px).collect();
        if v.is_empty() {
            return Err(CalibrationError::NoEstimates { fields: estimates.len() });
        }
        v.sort_by(f32::total_cmp);
        let median = quantile(&v, 0.5);
        let mut dev: Vec<f32> = v.iter().map(|x| (x - median).abs()).collect();
        dev.sort_by(f32::total_cmp);
        Ok(Calibration {
            um_per_px: median,
            method: "red_cells",
            q1: quantile(&v, 0.25),
            q3: quantile(&v, 0.75),
            mad: quantile(&dev, 0.5),
            fields_used: v.len(),
            fields_total: estimates.len(),
            cells: estimates.iter().flatten().map(|e| e.cells).sum(),
        })
    }

    /// The median over fields when at least half of them give their own
    /// estimate; otherwise (each field holds only a few whole red cells: high
    /// magnification) the red cells of all fields pooled, at least
    /// [`crate::vision::detect::POOLED_MIN_CELLS`] of them.
    pub fn from_measures(measures: &[RedCellMeasure], params: &DetectParams) -> Result<Calibration, CalibrationError> {
        let estimates: Vec<Option<RedCellScale>> = measures.iter().map(|m| m.estimate).collect();
        let own = estimates.iter().flatten().count();
        if own > 0 && 2 * own >= measures.len() {
            return Calibration::from_fields(&estimates);
        }
        let radii: Vec<f32> = measures.iter().flat_map(|m| m.radii_px.iter().copied()).collect();
        let Some((scale, mut per_cell)) = pooled_scale(radii, params) else {
            return Calibration::from_fields(&estimates);
        };
        per_cell.sort_by(f32::total_cmp);
        let mut dev: Vec<f32> = per_cell.iter().map(|x| (x - scale.um_per_px).abs()).collect();
        dev.sort_by(f32::total_cmp);
        Ok(Calibration {
            um_per_px: scale.um_per_px,
            method: "red_cells_pooled",
            q1: quantile(&per_cell, 0.25),
            q3: quantile(&per_cell, 0.75),
            mad: quantile(&dev, 0.5),
            fields_used: measures.iter().filter(|m| !m.radii_px.is_empty()).count(),
            fields_total: measures.len(),
            cells: scale.cells,
        })
    }

    /// A stage micrometer: a ruling `len_um` long measures `len_px` pixels.
    pub fn from_micrometer(len_px: f32, len_um: f32) -> Result<Calibration, CalibrationError> {
        if !(len_px.is_finite() && len_px > 0.0) {
            return Err(CalibrationError::Micrometer("the length in pixels must be a positive number"));
        }
        if !(len_um.is_finite() && len_um > 0.0) {
            return Err(CalibrationError::Micrometer("the length in µm must be a positive number"));
        }
        let s = len_um / len_px;
        Ok(Calibration {
            um_per_px: s,
            method: "micrometer",
            q1: s,
            q3: s,
            mad: 0.0,
            fields_used: 0,
            fields_total: 0,
            cells: 0,
        })
    }

    /// Interquartile range relative to the median: how much fields disagree.
    pub fn relative_iqr(&self) -> f32 {
        (self.q3 - self.q1) / self.um_per_px
    }
}

/// `analyze` of many fields with no scale configured: the batch calibrates
/// itself as `calibrate` would on the same fields
/// ([`Calibration::from_measures`]), and a field whose own red cells cannot
/// tell takes that scale instead of the fixed fallback. Under the pooled rule
/// (high magnification: most fields cannot tell, and the few that can
/// mislead) every field takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchScale {
    pub calibration: Calibration,
}

impl BatchScale {
    /// Fewest fields a batch calibrates itself from.
    pub const MIN_FIELDS: usize = 5;

    /// The batch's calibration, or `None` when it has too few fields, or its
    /// red cells cannot tell (the median of a minority of fields is not
    /// trusted: at high magnification those are the misleading ones).
    pub fn of(measures: &[RedCellMeasure], params: &DetectParams) -> Option<BatchScale> {
        if measures.len() < Self::MIN_FIELDS {
            return None;
        }
        trusted_calibration(measures, params).map(|calibration| BatchScale { calibration })
    }

    /// The scale to give the detector for a field whose red cells measured
    /// `m`: `None` (its own estimate) when it has one and the batch is not
    /// pooled; else the batch's, as a calibrated scale.
    pub fn given(&self, m: Option<&RedCellMeasure>) -> Option<FieldScale> {
        let own = m.is_some_and(|m| m.estimate.is_some()) && self.calibration.method != "red_cells_pooled";
        (!own).then(|| FieldScale::new(self.calibration.um_per_px, ScaleSource::Calibrated))
    }
}

/// [`Calibration::from_measures`] when it can be trusted: pooled red cells,
/// or the median of at least half the fields (the median of a minority is
/// not: at high magnification those are the misleading ones).
fn trusted_calibration(measures: &[RedCellMeasure], params: &DetectParams) -> Option<Calibration> {
    let c = Calibration::from_measures(measures, params).ok()?;
    (c.method == "red_cells_pooled" || 2 * c.fields_used >= measures.len()).then_some(c)
}

/// Linear-interpolated quantile of sorted, non-empty values.
fn quantile(sorted: &[f32], p: f32) -> f32 {
    let pos = p.clamp(0.0, 1.0) * (sorted.len() - 1) as f32;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f32)
}

/// A value with 4 significant digits, as written into the config: the
/// estimate is good to a few percent, more digits would only look precise.
pub fn rounded(um_per_px: f32) -> f64 {
    let v = um_per_px as f64;
    if !(v.is_finite() && v > 0.0) {
        return v;
    }
    let scale = 10f64.powi(3 - v.log10().floor() as i32);
    (v * scale).round() / scale
}

/// Writes the scale into the config file's `[scale]` table, keeping the
/// rest of the file (comments included) as it is. With an objective (given,
/// or the file's `[scale] objective`), the value goes to
/// `[scale.objectives]` under its name and the objective becomes the one in
/// use; without, to `[scale] um_per_px`. A missing file is created. The
/// result is checked by loading it as the program would.
pub fn write_scale(path: &Path, objective: Option<&str>, um_per_px: f32) -> Result<String, CalibrationError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(CalibrationError::Read { path: path.into(), source }),
    };
    let config_err = |message: String| CalibrationError::Config { path: path.into(), message };
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| config_err(e.to_string()))?;
    let scale = doc.entry("scale").or_insert(toml_edit::table());
    let scale = scale.as_table_like_mut().ok_or_else(|| config_err("[scale] is not a table".into()))?;
    let in_file = scale.get("objective").and_then(|o| o.as_str()).map(str::to_string);
    let value = toml_edit::value(rounded(um_per_px));
    match objective.map(str::to_string).or(in_file) {
        Some(name) => {
            set(scale, "objective", toml_edit::value(name.clone()));
            let objectives = scale.entry("objectives").or_insert(toml_edit::table());
            let objectives =
                objectives.as_table_like_mut().ok_or_else(|| config_err("[scale.objectives] is not a table".into()))?;
            set(objectives, &name, value);
        }
        None => {
            set(scale, "um_per_px", value);
        }
    }
    let out = doc.to_string();
    crate::config::Config::parse(&out, path).map_err(|e| config_err(crate::error_text(&e)))?;
    crate::report::write_atomic(path, out.as_bytes())
        .map_err(|source| CalibrationError::Write { path: path.into(), source })?;
    Ok(out)
}

/// Sets a key, keeping the comment above it when it exists (`insert` would drop it).
fn set(table: &mut dyn toml_edit::TableLike, key: &str, item: toml_edit::Item) {
    match table.get_mut(key) {
        Some(old) => *old = item,
        None => {
            table.insert(key, item);
        }
    }
}

/// The appliance's own calibration when no scale is configured: fields use
/// their own red cells until `fields` of them have given an estimate, then
/// the batch's rule ([`Calibration::from_measures`], trusted as by
/// [`BatchScale::of`]) over the fields seen so far: their
/// median, or at high magnification, where most fields hold too few red cells
/// for an estimate (and the few that give one mislead), their red cells pooled.
#[derive(Debug, Clone)]
pub struct SessionScale {
    need: usize,
    params: DetectParams,
    seen: Vec<RedCellMeasure>,
    calibrated: Option<f32>,
}

impl SessionScale {
    pub fn new(fields: usize, params: &DetectParams) -> SessionScale {
        SessionScale { need: fields.max(1), params: params.clone(), seen: Vec::new(), calibrated: None }
    }

    /// The scale to give the detector for the next field; `None` while estimating.
    pub fn given(&self) -> Option<FieldScale> {
        self.calibrated.map(|s| FieldScale::new(s, ScaleSource::Calibrated))
    }

    /// Learns from an analysed field's scale and the radii of its red
    /// cells ([`crate::vision::detect::RedCellMeasure::radii_px`]); returns the
    /// calibrated value when this field completed the calibration.
    pub fn observe(&mut self, scale: &FieldScale, red_cells_px: &[f32]) -> Option<f32> {
        if self.calibrated.is_some() || !matches!(scale.source, ScaleSource::RedCells | ScaleSource::Fallback) {
            return None;
        }
        self.seen.push(own_measure(scale, red_cells_px));
        if self.seen.len() < self.need {
            return None;
        }
        let c = trusted_calibration(&self.seen, &self.params)?;
        // The median needs `need` fields that gave an estimate; pooled cells, `need` fields.
        if c.method == "red_cells_pooled" || c.fields_used >= self.need {
            self.calibrated = Some(c.um_per_px);
        }
        self.calibrated
    }

    /// Fields observed so far (on their own red cells), and how many the
    /// calibration needs at least.
    pub fn progress(&self) -> (usize, usize) {
        (self.seen.len(), self.need)
    }
}

/// A field's red-cell measure as its record keeps it: the field's own
/// estimate (its scale when it came from its red cells, else the estimate
/// checked against the given scale) and its red cells' radii.
fn own_measure(scale: &FieldScale, red_cells_px: &[f32]) -> RedCellMeasure {
    let own = match scale.source {
        ScaleSource::RedCells => Some(scale.um_per_px),
        ScaleSource::Configured | ScaleSource::Calibrated => scale.red_cells,
        ScaleSource::Fallback => None,
    };
    RedCellMeasure {
        // The cell count is not kept in the record; the rule does not use it.
        estimate: own.map(|um_per_px| RedCellScale { um_per_px, cells: 0 }),
        radii_px: red_cells_px.to_vec(),
    }
}

/// What the red cells of the fields analysed at a given scale (configured or
/// calibrated) say of it, all fields together: a wrong objective, or a
/// calibration from another camera, makes every field disagree alike, where
/// a single field's red cells can mislead (a clump, a pale field, few cells
/// at high magnification).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleCheck {
    /// The scale the fields were analysed at (µm per pixel; their median,
    /// should it have changed).
    pub given_um_per_px: f32,
    /// What their red cells say, by the calibration rule ([`BatchScale::of`]).
    pub fields_say_um_per_px: f32,
    /// `red_cells` or `red_cells_pooled`, as in a calibration.
    pub method: String,
    /// Fields at the given scale, and those whose red cells told.
    pub fields: usize,
    pub fields_used: usize,
    /// Within [`DetectParams::scale_disagree_fraction`] of each other.
    pub agrees: bool,
}

impl ScaleCheck {
    /// The check over the fields analysed at a given scale, each as its
    /// scale and its red cells' radii; `None` when fewer than
    /// [`BatchScale::MIN_FIELDS`] were, or their red cells cannot tell.
    pub fn of<'a>(
        fields: impl IntoIterator<Item = (&'a FieldScale, &'a [f32])>,
        params: &DetectParams,
    ) -> Option<ScaleCheck> {
        let (mut given, mut measures) = (Vec::new(), Vec::new());
        for (scale, radii) in fields {
            if matches!(scale.source, ScaleSource::Configured | ScaleSource::Calibrated) {
                given.push(scale.um_per_px);
                measures.push(own_measure(scale, radii));
            }
        }
        if measures.len() < BatchScale::MIN_FIELDS {
            return None;
        }
        let c = trusted_calibration(&measures, params)?;
        given.sort_by(f32::total_cmp);
        let given_um_per_px = quantile(&given, 0.5);
        let agrees = (c.um_per_px / given_um_per_px - 1.0).abs() <= params.scale_disagree_fraction.max(0.0);
        Some(ScaleCheck {
            given_um_per_px,
            fields_say_um_per_px: c.um_per_px,
            method: c.method.to_string(),
            fields: measures.len(),
            fields_used: c.fields_used,
            agrees,
        })
    }

    /// One line for people.
    pub fn text(&self) -> String {
        if self.agrees {
            format!(
                "the fields' red cells agree with it ({:.4} um/px from {} of {} fields)",
                self.fields_say_um_per_px, self.fields_used, self.fields
            )
        } else {
            format!(
                "WARNING: the red cells of {} of {} fields say {:.4} um/px, not the {:.4} used: wrong objective \
                 or calibration? Cell sizes, and so the count, are unreliable",
                self.fields_used, self.fields, self.fields_say_um_per_px, self.given_um_per_px
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(v: f32) -> Option<RedCellScale> {
        Some(RedCellScale { um_per_px: v, cells: 10 })
    }

    #[test]
    fn median_and_spread_ignore_fields_without_an_estimate() {
        let c = Calibration::from_fields(&[est(0.07), None, est(0.08), est(0.072), est(0.5), None]).expect("estimates");
        assert!((c.um_per_px - 0.076).abs() < 1e-6, "{c:?}");
        assert_eq!((c.fields_used, c.fields_total, c.cells), (4, 6, 40));
        assert!(c.q1 <= c.um_per_px && c.um_per_px <= c.q3);
        // One wild field moves the median and MAD little.
        assert!(c.mad < 0.01, "{c:?}");
        assert!(matches!(Calibration::from_fields(&[None, None]), Err(CalibrationError::NoEstimates { fields: 2 })));
    }

    #[test]
    fn few_cells_per_field_are_pooled() {
        let params = DetectParams::default();
        // Two whole red cells per field, 60 px inscribed radius: 7.5 / (120 x 1.2)
        // = 0.052 µm/px, and one field whose fragments gave it a wrong estimate.
        let mut measures: Vec<RedCellMeasure> =
            (0..15).map(|i| RedCellMeasure { estimate: None, radii_px: vec![59.0 + (i % 3) as f32, 60.0] }).collect();
        measures.push(RedCellMeasure { estimate: est(0.1), radii_px: vec![20.0, 22.0, 25.0, 21.0] });
        let c = Calibration::from_measures(&measures, &params).expect("pooled");
        assert_eq!(c.method, "red_cells_pooled");
        let want = params.rbc_diameter_um / (2.0 * 60.0 * params.rbc_extent_per_inscribed);
        assert!((c.um_per_px - want).abs() < 0.002 * want, "{c:?}");
        assert_eq!((c.fields_used, c.fields_total), (16, 16));
        assert!(c.q1 <= c.um_per_px && c.um_per_px <= c.q3, "{c:?}");
        // Too few cells even pooled: the fields' own estimates, if any.
        let c = Calibration::from_measures(&measures[13..], &params).expect("one estimate");
        assert_eq!((c.method, c.um_per_px), ("red_cells", 0.1));
        // Half the fields or more with their own estimate: their median, as before.
        for m in measures.iter_mut().take(8) {
            m.estimate = est(0.07);
        }
        let c = Calibration::from_measures(&measures, &params).expect("median");
        assert_eq!((c.method, c.um_per_px, c.fields_used), ("red_cells", 0.07, 9));
    }

    #[test]
    fn a_batch_fills_the_fields_that_cannot_tell_and_pools_at_high_magnification() {
        let params = DetectParams::default();
        let m = |e: Option<RedCellScale>, radii: Vec<f32>| RedCellMeasure { estimate: e, radii_px: radii };
        // Most fields tell: each keeps its own; one that cannot takes the median.
        let normal = [
            m(est(0.07), vec![]),
            m(est(0.072), vec![]),
            m(est(0.074), vec![]),
            m(est(0.071), vec![]),
            m(None, vec![]),
        ];
        let b = BatchScale::of(&normal, &params).expect("a batch scale");
        assert_eq!(b.given(Some(&normal[0])), None);
        let filled = b.given(Some(&normal[4])).expect("the batch's scale");
        assert_eq!(filled.source, ScaleSource::Calibrated);
        assert!((filled.um_per_px - 0.0715).abs() < 1e-6, "the median of the four: {filled:?}");
        assert_eq!(b.given(None), Some(filled), "an unreadable field's measure is missing");
        // High magnification: pooled, and every field takes it, own estimate or not.
        let mut high: Vec<RedCellMeasure> = (0..15).map(|_| m(None, vec![59.0, 60.0])).collect();
        high.push(m(est(0.1), vec![20.0, 22.0, 25.0, 21.0]));
        let b = BatchScale::of(&high, &params).expect("pooled");
        assert_eq!(b.calibration.method, "red_cells_pooled");
        assert_eq!(b.given(Some(&high[15])).map(|s| s.um_per_px), Some(b.calibration.um_per_px));
        // Too few fields, or a minority's median (too few red cells to pool): none.
        assert_eq!(BatchScale::of(&normal[..4], &params), None);
        let minority: Vec<RedCellMeasure> =
            (0..6).map(|i| if i == 0 { m(est(0.2), vec![10.0; 4]) } else { m(None, vec![]) }).collect();
        assert_eq!(BatchScale::of(&minority, &params), None);
    }

    #[test]
    fn micrometer() {
        let c = Calibration::from_micrometer(1000.0, 100.0).expect("valid");
        assert_eq!((c.um_per_px, c.method), (0.1, "micrometer"));
        assert!(Calibration::from_micrometer(0.0, 100.0).is_err());
        assert!(Calibration::from_micrometer(10.0, f32::NAN).is_err());
    }

    #[test]
    fn rounds_to_four_significant_digits() {
        assert_eq!(rounded(0.0712345), 0.07123);
        assert_eq!(rounded(1.23456), 1.235);
    }

    #[test]
    fn writes_the_scale_keeping_comments() {
        let dir = std::env::temp_dir().join(format!("leukoscope-calibrate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "# my microscope\n[count]\nblast_threshold_percent = 10.0\n\n[scale]\n# old\num_per_px = 0.2\n",
        )
        .expect("write");
        let text = write_scale(&path, None, 0.0712345).expect("writes");
        assert!(text.contains("# my microscope") && text.contains("# old"), "{text}");
        let c = crate::config::Config::load(&path).expect("loads");
        assert_eq!(c.scale.configured(), Some(0.07123));
        assert_eq!(c.count.blast_threshold_percent, 10.0);
        // Per objective: the objective in use is the one just calibrated.
        write_scale(&path, Some("100x"), 0.05).expect("writes");
        write_scale(&path, Some("40x"), 0.125).expect("writes");
        let c = crate::config::Config::load(&path).expect("loads");
        assert_eq!(c.scale.objective.as_deref(), Some("40x"));
        assert_eq!(c.scale.objectives.get("100x"), Some(&0.05));
        assert_eq!(c.scale.configured(), Some(0.125));
        // Without --objective, the file's objective is the one calibrated.
        write_scale(&path, None, 0.126).expect("writes");
        assert_eq!(crate::config::Config::load(&path).expect("loads").scale.configured(), Some(0.126));
        // A new file is created; a broken one is an error that names it.
        let fresh = dir.join("new.toml");
        let _ = std::fs::remove_file(&fresh);
        write_scale(&fresh, None, 0.1).expect("creates");
        assert_eq!(crate::config::Config::load(&fresh).expect("loads").scale.configured(), Some(0.1));
        std::fs::write(&path, "[scale\n").expect("write");
        assert!(write_scale(&path, None, 0.1).unwrap_err().to_string().contains("c.toml"));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_session_calibrates_on_its_first_estimated_fields() {
        let mut s = SessionScale::new(3, &DetectParams::default());
        assert_eq!(s.given(), None);
        assert_eq!(s.observe(&FieldScale::new(0.073, ScaleSource::Fallback), &[]), None);
        assert_eq!(s.observe(&FieldScale::new(0.07, ScaleSource::RedCells), &[]), None);
        assert_eq!(s.observe(&FieldScale::new(0.09, ScaleSource::RedCells), &[]), None);
        assert_eq!(s.progress(), (3, 3));
        assert_eq!(s.observe(&FieldScale::new(0.071, ScaleSource::RedCells), &[]), Some(0.071));
        assert_eq!(s.given(), Some(FieldScale::new(0.071, ScaleSource::Calibrated)));
        assert_eq!(s.observe(&FieldScale::new(0.2, ScaleSource::RedCells), &[]), None);
        assert_eq!(s.given().map(|g| g.um_per_px), Some(0.071));
    }

    #[test]
    fn a_session_at_high_magnification_pools_its_red_cells() {
        let params = DetectParams::default();
        let mut s = SessionScale::new(5, &params);
        let fallback = FieldScale::new(0.073, ScaleSource::Fallback);
        // A misleading field with its own estimate, then fields with two or
        // three whole red cells each and none: pooled once 20 cells are in.
        assert_eq!(s.observe(&FieldScale::new(0.1, ScaleSource::RedCells), &[20.0, 21.0]), None);
        let mut done = None;
        let mut fields = 1;
        while done.is_none() && fields < 20 {
            done = s.observe(&fallback, &[59.0, 60.0, 61.0]);
            fields += 1;
        }
        let want = params.rbc_diameter_um / (2.0 * 60.0 * params.rbc_extent_per_inscribed);
        let got = done.expect("calibrated");
        assert!((got - want).abs() < 0.01 * want, "{got} vs {want}");
        assert_eq!(fields, 8, "20 cells pooled after 7 fields of 3 (and 2 small discs)");
        assert_eq!(s.given().map(|g| g.source), Some(ScaleSource::Calibrated));
    }

    /// A field analysed at `given` whose red cells said `own` (or nothing).
    fn at(given: f32, own: Option<f32>) -> FieldScale {
        FieldScale { red_cells: own, ..FieldScale::new(given, ScaleSource::Configured) }
    }

    #[test]
    fn the_fields_together_check_a_given_scale() {
        let params = DetectParams::default();
        let check = |fields: &[FieldScale], radii: &[f32]| ScaleCheck::of(fields.iter().map(|f| (f, radii)), &params);
        // Fields scattered around 0.1 (two misleading ones among them), whatever
        // the single fields' own flags say.
        let own = [0.1, 0.11, 0.095, 0.2, 0.1, 0.09, 0.05, 0.1];
        let right: Vec<FieldScale> = own.iter().map(|&e| at(0.1, Some(e))).collect();
        let c = check(&right, &[]).expect("enough fields");
        assert!(c.agrees, "{c:?}");
        assert_eq!((c.fields, c.fields_used, c.method.as_str()), (8, 8, "red_cells"));
        // Another objective: twice the scale, or two thirds of it.
        for wrong in [0.2, 0.067] {
            let fields: Vec<FieldScale> = own.iter().map(|&e| at(wrong, Some(e))).collect();
            let c = check(&fields, &[]).expect("enough fields");
            assert!(!c.agrees && (c.fields_say_um_per_px - 0.1).abs() < 0.001, "{c:?}");
            assert!(c.text().starts_with("WARNING"), "{}", c.text());
        }
        // Fewer than five fields, or fields on their own red cells only: no check.
        assert_eq!(check(&right[..4], &[]), None);
        let own_scale: Vec<FieldScale> = own.iter().map(|&e| FieldScale::new(e, ScaleSource::RedCells)).collect();
        assert_eq!(check(&own_scale, &[]), None);
        // High magnification: most fields cannot tell alone, their red cells
        // pooled can (two whole cells of 60 px inscribed radius a field).
        let want = params.rbc_diameter_um / (2.0 * 60.0 * params.rbc_extent_per_inscribed);
        let few: Vec<FieldScale> = (0..12).map(|_| at(want, None)).collect();
        let c = check(&few, &[59.0, 61.0]).expect("pooled");
        assert!(c.agrees && c.method == "red_cells_pooled", "{c:?}");
        let few: Vec<FieldScale> = (0..12).map(|_| at(2.0 * want, None)).collect();
        assert!(!check(&few, &[59.0, 61.0]).expect("pooled").agrees);
        // Nor a minority of fields with an estimate, without enough cells to pool.
        let mut sparse: Vec<FieldScale> = (0..8).map(|_| at(0.1, None)).collect();
        sparse[0] = at(0.1, Some(0.3));
        assert_eq!(check(&sparse, &[]), None);
    }
}
