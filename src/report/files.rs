//! The report files for people and for a laboratory system, written beside
//! `results.json` in every report folder (`analyze --out`, the appliance's
//! FINISH, a review's sign-off): `report.html` (printable, self-contained),
//! `report.fhir.json` (a FHIR R4 Bundle) and `report.hl7` (an HL7 v2.5.1
//! ORU^R01 message with the same results).
//!
//! All are built from the same [`ReportFacts`]: the count rebuilt from the
//! field records (so they can never disagree with `results.json`), the sample,
//! the model and software, and, once a person has reviewed the cells, the
//! reviewed count and who signed it.

use crate::classify::count::{Call, Differential, Summary};
use crate::report::FieldRecord;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// The HL7 v2 message's file name ([`crate::report::hl7`]).
pub const HL7_FILE: &str = "report.hl7";

/// Version of the layout of `report.html`, `report.fhir.json` and `report.hl7`; raised when
/// a field changes meaning.
pub const SCHEMA: &str = "leukoscope-report/1";

/// This program and its version, as the reports name it.
pub fn software() -> String {
    format!("leukoscope {}", env!("CARGO_PKG_VERSION"))
}

/// A person's sign-off of a reviewed count.
#[derive(Debug, Clone, PartialEq)]
pub struct SignOff {
    pub reviewer: String,
    pub unix_time: u64,
    /// Cells whose call the reviewer changed.
    pub changed: usize,
}

/// The reviewed count, once signed.
#[derive(Debug, Clone, PartialEq)]
pub struct Reviewed {
    pub summary: Summary,
    pub sign_off: SignOff,
}

/// One cell shown in the report with its crop (the blasts).
#[derive(Debug, Clone, PartialEq)]
pub struct ShownCell {
    pub class: String,
    pub confidence: f32,
    pub nucleus_diameter_um: Option<f32>,
    pub cell_diameter_um: Option<f32>,
    pub nc_ratio: Option<f32>,
    /// The crop's path relative to the report folder.
    pub crop: Option<String>,
}

/// Everything the two report files say.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFacts {
    pub sample_id: Option<String>,
    pub operator_id: Option<String>,
    pub model_name: String,
    pub model_sha256: String,
    pub software: String,
    /// When the files were written (seconds since 1970, UTC).
    pub written_unix: u64,
    /// The count as the classifier made it.
    pub classified: Summary,
    /// The count after review, when a person has signed it: the report is then final.
    pub reviewed: Option<Reviewed>,
    /// Class code -> name, for the classes in the counts.
    pub class_names: BTreeMap<String, String>,
    /// The blasts of the count the report stands on (reviewed if signed), with their crops.
    pub blasts: Vec<ShownCell>,
    /// The model's warning that the images are unlike its training images.
    pub warning: Option<String>,
    /// Where the fields' scale came from ([`ScaleSummary::text`]), and the
    /// batch's own calibration when `analyze` made one.
    pub scale: String,
    /// The fields' red cells disagree with the scale given ([`ScaleSummary::warning`]).
    pub scale_warning: Option<String>,
}

impl ReportFacts {
    /// The facts of a report folder's document (`results.json`'s content) and
    /// its field records as classified; `reviewed` is the same fields with the
    /// reviewer's calls, and the sign-off.
    pub fn new(document: &Value, fields: &[FieldRecord], reviewed: Option<(&[FieldRecord], SignOff)>) -> ReportFacts {
        let threshold = document["summary"]["threshold_percent"].as_f64().unwrap_or(20.0);
        let scale = scale_summary(document, fields);
        let text = |v: &Value| v.as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        let sample = &document["sample"];
        let sample_id = Self::sample_id_of(document);
        let sample_id = (!sample_id.is_empty()).then_some(sample_id);
        let mut class_names = BTreeMap::new();
        for f in fields.iter().chain(reviewed.iter().flat_map(|(r, _)| r.iter())) {
            for c in f.cells.iter().chain(&f.not_counted) {
                // A counted cell's label is its class's name (the reviewer's class for a reclassified one).
                if let Call::Cell { code, .. } = &c.call {
                    class_names.entry(code.clone()).or_insert_with(|| c.label.clone());
                }
            }
        }
        let stands_on = reviewed.as_ref().map_or(fields, |(r, _)| *r);
        let blasts = stands_on
            .iter()
            .flat_map(|f| &f.cells)
            .filter(|c| matches!(c.call, Call::Cell { blast: true, .. }))
            .map(|c| ShownCell {
                class: c.class.clone(),
                confidence: c.confidence,
                nucleus_diameter_um: c.nucleus_diameter_um,
                cell_diameter_um: c.cell_diameter_um,
                nc_ratio: c.nc_ratio,
                crop: c.crop.clone(),
            })
            .collect();
        ReportFacts {
            sample_id,
            operator_id: text(&sample["operator_id"]),
            model_name: text(&document["model"]["name"]).unwrap_or_else(|| "unknown".into()),
            model_sha256: text(&document["model"]["sha256"]).unwrap_or_default(),
            software: software(),
            written_unix: unix_time(),
            classified: summary_of(fields, threshold),
            reviewed: reviewed.map(|(r, sign_off)| Reviewed { summary: summary_of(r, threshold), sign_off }),
            class_names,
            blasts,
            warning: text(&document["warning"]),
            scale: scale_text(document, &scale),
            scale_warning: scale.warning(),
        }
    }

    /// A report document's sample ID (`analyze --sample-id`, or the session's);
    /// empty when it has none.
    pub fn sample_id_of(document: &Value) -> String {
        let text = |v: &Value| v.as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        text(&document["sample"]["id"]).or_else(|| text(&document["session"]["sample_id"])).unwrap_or_default()
    }

    /// The count the report stands on: the reviewed one once signed.
    pub fn summary(&self) -> &Summary {
        self.reviewed.as_ref().map_or(&self.classified, |r| &r.summary)
    }

    /// "final" once a person signed the review, else "preliminary" (FHIR's words).
    pub fn status(&self) -> &'static str {
        if self.reviewed.is_some() {
            "final"
        } else {
            "preliminary"
        }
    }

    pub fn class_name<'a>(&'a self, code: &'a str) -> &'a str {
        self.class_names.get(code).map_or(code, String::as_str)
    }
}

/// The count of some field records.
pub fn summary_of(fields: &[FieldRecord], threshold_percent: f64) -> Summary {
    let mut diff = Differential::default();
    for f in fields {
        f.count_into(&mut diff);
    }
    diff.summary(threshold_percent)
}

/// The bytes of `report.html`, `report.fhir.json` and `report.hl7` for a report not yet
/// reviewed; `dir` is where its crops are (the blast crops go inline).
pub fn render(dir: &Path, document: &Value, fields: &[FieldRecord]) -> std::io::Result<[Vec<u8>; 3]> {
    render_facts(dir, &ReportFacts::new(document, fields, None))
}

/// The bytes of `report.html`, `report.fhir.json` and `report.hl7` of these
/// facts; `dir` is where the crops are.
pub fn render_facts(dir: &Path, facts: &ReportFacts) -> std::io::Result<[Vec<u8>; 3]> {
    let html = crate::report::html::render(facts, dir);
    let bundle = crate::report::fhir::bundle(facts);
    let json = serde_json::to_string_pretty(&bundle).map_err(std::io::Error::other)?;
    let hl7 = crate::report::hl7::message(facts);
    Ok([html.into_bytes(), json.into_bytes(), hl7.into_bytes()])
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2026-12-06T16:02:12Z` (RFC 3339, UTC; FHIR's instant).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The document's `summary.scale`; counted from the fields when it has none.
fn scale_summary(document: &Value, fields: &[FieldRecord]) -> crate::report::ScaleSummary {
    serde_json::from_value(document["summary"]["scale"].clone())
        .unwrap_or_else(|_| crate::report::ScaleSummary::of(fields))
}

/// The report's scale line: the fields per scale source and the check of a
/// given scale (`scale`, as the document has them), and the batch's
/// calibration (`analyze` with no scale configured) when there was one.
fn scale_text(document: &Value, scale: &crate::report::ScaleSummary) -> String {
    let mut t = scale.text();
    let b = &document["batch_calibration"];
    if let (Some(s), Some(m)) = (b["um_per_px"].as_f64(), b["method"].as_str()) {
        let _ = write!(t, "; calibrated on this batch: {s:.4} um/px ({m})");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // `date -u -d @951782400` and `@1796572932`.
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_572_932), "2026-12-06T16:02:12Z");
    }
}
