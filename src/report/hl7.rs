//! `report.hl7`: the count as an HL7 v2.5.1 ORU^R01 message, for a laboratory
//! system that takes v2 rather than FHIR. Written beside `report.fhir.json`
//! from the same [`ReportFacts`] with the same results ([`fhir::terms`]: the
//! same LOINC codes, UCUM `%`, the same rounding):
//!
//! - `MSH` (sender `leukoscope`, the time written, a control ID, UTF-8),
//! - `SFT` (the software and its version, the model and its sha256, the schema),
//! - `PID` (no patient data is on the appliance: the sample ID as PID-3, an
//!   accession number, type `ACSN`),
//! - `OBR` (the panel LOINC 69738-3, the sample ID as filler order number,
//!   result status `P` preliminary or `F` final once a person signed the
//!   review, the reviewer as principal result interpreter, the operator as
//!   technician) and an `NTE` with the conclusion and the disclaimer,
//! - one `OBX` per result: leukocytes counted (local code, `{cells}`), blasts
//!   (26446-5, flag `H` at or above the threshold), then each class's term,
//!   each with its status and an `NTE` with the count and its 95% CI.
//!
//! Segments end in a carriage return (the standard's segment terminator).
//! CI parses it with an independent library (`tools/check_hl7.py`, PyPI `hl7`).

use crate::report::fhir::{self, BLASTS, LOINC, PANEL};
use crate::report::files::{rfc3339, ReportFacts, SCHEMA};
use sha2::{Digest, Sha256};

/// The HL7 version the message claims (SFT exists from 2.5 on).
pub const VERSION: &str = "2.5.1";

/// Text as an HL7 field: the delimiters and line breaks escaped.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out += "\\E\\",
            '|' => out += "\\F\\",
            '^' => out += "\\S\\",
            '&' => out += "\\T\\",
            '~' => out += "\\R\\",
            '\r' => out += "\\X0D\\",
            '\n' => out += "\\X0A\\",
            c => out.push(c),
        }
    }
    out
}

/// `20261206160212+0000` (HL7's DTM, UTC).
fn dtm(unix: u64) -> String {
    let digits: String = rfc3339(unix).chars().filter(char::is_ascii_digit).collect();
    digits + "+0000"
}

/// A segment from its numbered fields (1-based; the gaps empty).
fn segment(name: &str, fields: &[(usize, String)]) -> String {
    let n = fields.iter().map(|(i, _)| *i).max().unwrap_or(0);
    let mut v = vec![String::new(); n];
    for (i, f) in fields {
        v[i - 1] = f.clone();
    }
    let mut out = name.to_string();
    for f in v {
        out.push('|');
        out += &f;
    }
    out
}

/// The LOINC coding system's name in HL7 (table 0396).
fn system(s: &str) -> &'static str {
    if s == LOINC {
        "LN"
    } else {
        "L"
    }
}

/// The message, segments ended by `\r`.
pub fn message(facts: &ReportFacts) -> String {
    let s = facts.summary();
    let status = if facts.reviewed.is_some() { "F" } else { "P" };
    let now = dtm(facts.written_unix);
    let sample = facts.sample_id.as_deref().map(esc).unwrap_or_default();
    let seed = format!("{}|{}|{}", facts.sample_id.as_deref().unwrap_or(""), facts.model_sha256, facts.written_unix);
    let control: String = Sha256::digest(seed.as_bytes())[..10].iter().map(|b| format!("{b:02x}")).collect();
    let mut segs = vec![
        // MSH-1 is the field separator itself: the fields from MSH-2 on.
        format!("MSH|^~\\&|leukoscope||||{now}||ORU^R01^ORU_R01|{control}|P|{VERSION}||||||UNICODE UTF-8"),
        segment(
            "SFT",
            &[
                (1, "leukoscope".into()),
                (2, esc(env!("CARGO_PKG_VERSION"))),
                (3, esc(&facts.software)),
                (4, esc(&format!("{} sha256:{}", facts.model_name, facts.model_sha256))),
                (5, esc(&format!("classifier model; report schema {SCHEMA}"))),
            ],
        ),
        segment(
            "PID",
            &[
                (1, "1".into()),
                (3, if sample.is_empty() { sample.clone() } else { format!("{sample}^^^leukoscope^ACSN") }),
            ],
        ),
    ];
    let mut obr = vec![
        (1, "1".to_string()),
        (3, if sample.is_empty() { String::new() } else { format!("{sample}^leukoscope") }),
        (4, format!("{}^{}^LN", PANEL.0, esc(PANEL.1))),
        (7, now.clone()),
        (22, now.clone()),
        (24, "HM".into()),
        (25, status.into()),
    ];
    if let Some(r) = &facts.reviewed {
        // NDL's first component is a CNN: its subcomponents are escaped as text.
        obr.push((32, esc(&r.sign_off.reviewer)));
    }
    if let Some(op) = &facts.operator_id {
        obr.push((34, esc(op)));
    }
    segs.push(segment("OBR", &obr));
    segs.push(segment(
        "NTE",
        &[(1, "1".into()), (2, "L".into()), (3, esc(&format!("{} {}", fhir::conclusion(facts), crate::DISCLAIMER)))],
    ));
    let mut n = 0;
    let mut obx = |code: String, value: String, units: &str, flag: bool, note: String| {
        n += 1;
        segs.push(segment(
            "OBX",
            &[
                (1, n.to_string()),
                (2, "NM".into()),
                (3, code),
                (5, value),
                (6, units.into()),
                (8, if flag { "H".into() } else { String::new() }),
                (11, status.into()),
                (14, now.clone()),
            ],
        ));
        segs.push(segment("NTE", &[(1, "1".into()), (2, "L".into()), (3, esc(&note))]));
    };
    // Rounded as report.fhir.json rounds.
    let one_decimal = |v: f64| format!("{:.1}", (v * 10.0).round() / 10.0);
    let pct = |k: u64| one_decimal(fhir::percent_of(s, k));
    let percent = "%^percent^UCUM";
    obx(
        "leukocytes-counted^Leukocytes counted^L".into(),
        s.cells.to_string(),
        "{cells}^cells^UCUM",
        false,
        format!(
            "{} not counted: {} not leukocytes, {} cut by the field border",
            s.not_counted.not_leukocytes + s.not_counted.cut_by_border,
            s.not_counted.not_leukocytes,
            s.not_counted.cut_by_border
        ),
    );
    obx(
        format!("{}^{}^LN", BLASTS.0, esc(BLASTS.1)),
        one_decimal(s.blast_percent),
        percent,
        s.flag,
        format!("Blasts (all blast classes): {}", fhir::ci_note(s, s.blasts)),
    );
    for t in fhir::terms(facts) {
        obx(
            format!("{}^{}^{}", esc(&t.code), esc(&t.display), system(t.system)),
            pct(t.count),
            percent,
            false,
            format!("{}: {}", t.text, fhir::ci_note(s, t.count)),
        );
    }
    let mut out = segs.join("\r");
    out.push('\r');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_the_delimiters() {
        assert_eq!(esc("a|b^c&d~e\\f\r\ng"), "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X0D\\\\X0A\\g");
        assert_eq!(segment("PID", &[(1, "1".into()), (3, "x".into())]), "PID|1||x");
        assert_eq!(dtm(1_796_572_932), "20261206160212+0000");
    }
}
