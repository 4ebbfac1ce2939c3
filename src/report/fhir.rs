//! `report.fhir.json`: the count for a laboratory information system, as a FHIR
//! R4 (4.0.1) Bundle of type `collection`: a DiagnosticReport, one Observation
//! per LOINC-coded cell class with its percentage (UCUM `%`), the number of
//! leukocytes counted, the Specimen (the sample ID) and the Device (software
//! and model versions). Status `preliminary` until a person signs the review,
//! then `final`. CI validates it with an independent FHIR library
//! (`tools/check_fhir.py`, PyPI `fhir.resources` 6.1.0, FHIR 4.0.1).

use crate::classify::count::Summary;
use crate::report::files::{rfc3339, ReportFacts, SCHEMA};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";
/// The system of codes this program defines itself (classes without a LOINC term,
/// the count of cells), and of its schema tag.
pub const LOCAL: &str = "urn:leukoscope:code";

/// The report's code: LOINC 69738-3 "Differential panel, method unspecified -
/// Blood", the panel whose members the class codes below are.
pub const PANEL: (&str, &str) = ("69738-3", "Differential panel, method unspecified - Blood");

/// Blasts/100 leukocytes in Blood (the anchor code), for the count of
/// all blast classes together.
pub const BLASTS: (&str, &str) = ("26446-5", "Blasts/100 leukocytes in Blood");

/// The model's class codes as LOINC "`<cells>/100 leukocytes in Blood`" terms,
/// method unspecified like 26446-5 (a digital image count is neither the
/// manual nor the analyser method). Source: the members of LOINC panel
/// 69738-3, which lists the same terms as the manual panel 24318-8
/// (<https://loinc.org/24318-8>), as listed in the CIBMTR FHIR reporting IG
/// (github.com/nmdp-ig/cibmtr-reporting-ig,
/// build/input/fsh/terminology/observations/differential-unspecified-blood-valuset.fsh).
/// Classes sharing a term are summed into one Observation: PMB (bilobed
/// promyelocyte) is a promyelocyte; EBO (erythroblasts, counted among the
/// leukocytes by this model) and the unidentified cells are "Leukocytes other".
pub const CLASS_CODES: &[(&str, &str, &str)] = &[
    ("BAS", "30180-4", "Basophils/100 leukocytes in Blood"),
    ("EBO", "26471-3", "Leukocytes other/100 leukocytes in Blood"),
    ("EOS", "26450-7", "Eosinophils/100 leukocytes in Blood"),
    ("KSC", "34992-8", "Smudge cells/100 leukocytes in Blood"),
    ("LYA", "13046-8", "Variant lymphocytes/100 leukocytes in Blood"),
    ("LYT", "26478-8", "Lymphocytes/100 leukocytes in Blood"),
    ("MMZ", "28541-1", "Metamyelocytes/100 leukocytes in Blood"),
    ("MOB", "34923-3", "Monoblasts/100 leukocytes in Blood"),
    ("MON", "26485-3", "Monocytes/100 leukocytes in Blood"),
    ("MYB", "26498-6", "Myelocytes/100 leukocytes in Blood"),
    ("MYO", "30445-1", "Myeloblasts/100 leukocytes in Blood"),
    ("NGB", "26508-2", "Band form neutrophils/100 leukocytes in Blood"),
    ("NGS", "26505-8", "Segmented neutrophils/100 leukocytes in Blood"),
    ("PMB", "26524-9", "Promyelocytes/100 leukocytes in Blood"),
    ("PMO", "26524-9", "Promyelocytes/100 leukocytes in Blood"),
    ("UNID", "26471-3", "Leukocytes other/100 leukocytes in Blood"),
];

/// The LOINC term of a class code, if it has one.
pub fn loinc_of(code: &str) -> Option<(&'static str, &'static str)> {
    CLASS_CODES.iter().find(|(c, _, _)| *c == code).map(|(_, l, d)| (*l, *d))
}

/// One reported result of the differential: a class's term, with the classes
/// sharing it summed (see [`CLASS_CODES`]); `report.fhir.json` and `report.hl7`
/// report the same list.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// [`LOINC`], or [`LOCAL`] for a class without a LOINC term.
    pub system: &'static str,
    pub code: String,
    pub display: String,
    /// The classes summed, "Name (CODE) + ...".
    pub text: String,
    pub count: u64,
}

/// The differential's terms, in the order of the summary's classes, unidentified last.
pub fn terms(facts: &ReportFacts) -> Vec<Term> {
    let s = facts.summary();
    let mut out: Vec<Term> = Vec::new();
    let counts = s.by_class.iter().map(|(k, v)| (k.as_str(), *v)).chain([("UNID", s.unidentified)]);
    for (code, k) in counts.filter(|(_, k)| *k > 0) {
        let name = if code == "UNID" { "Unidentified by the classifier" } else { facts.class_name(code) };
        let (system, term, display) = match loinc_of(code) {
            Some((l, d)) => (LOINC, l.to_string(), d.to_string()),
            None => (LOCAL, format!("class-{code}"), name.to_string()),
        };
        match out.iter_mut().find(|t| t.system == system && t.code == term && t.display == display) {
            Some(t) => {
                t.text += &format!(" + {name} ({code})");
                t.count += k;
            }
            None => out.push(Term { system, code: term, display, text: format!("{name} ({code})"), count: k }),
        }
    }
    out
}

/// `k` of the summary's leukocytes, in percent (0 of none).
pub fn percent_of(s: &Summary, k: u64) -> f64 {
    if s.cells == 0 {
        0.0
    } else {
        100.0 * k as f64 / s.cells as f64
    }
}

/// "k of n leukocytes counted; exact (Clopper-Pearson) 95% CI lo-hi%".
pub fn ci_note(s: &Summary, k: u64) -> String {
    let (lo, hi) = crate::classify::stats::clopper_pearson(k.min(s.cells), s.cells, 0.95);
    format!(
        "{k} of {} leukocytes counted; exact (Clopper-Pearson) 95% CI {:.1}-{:.1}%",
        s.cells,
        lo * 100.0,
        hi * 100.0
    )
}

/// A stable `urn:uuid:` for the n-th resource of a report (version-4 layout,
/// from a hash of the report's identity, so rewriting a report keeps its ids).
fn uuid(seed: &str, n: usize) -> String {
    let h = Sha256::digest(format!("{seed}/{n}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x: String = b.iter().map(|v| format!("{v:02x}")).collect();
    format!("urn:uuid:{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..])
}

fn percent(value: f64) -> Value {
    json!({"value": (value * 10.0).round() / 10.0, "unit": "%", "system": UCUM, "code": "%"})
}

/// The Bundle.
pub fn bundle(facts: &ReportFacts) -> Value {
    let s = facts.summary();
    let status = facts.status();
    let issued = rfc3339(facts.written_unix);
    let seed = format!("{}|{}|{}", facts.sample_id.as_deref().unwrap_or(""), facts.model_sha256, facts.written_unix);
    let tag = json!({"tag": [{"system": LOCAL, "code": SCHEMA}]});
    let device_url = uuid(&seed, 0);
    let specimen_url = uuid(&seed, 1);
    let mut entries = vec![json!({
        "fullUrl": device_url,
        "resource": {
            "resourceType": "Device",
            "meta": tag,
            "deviceName": [{"name": "leukoscope", "type": "user-friendly-name"}],
            "version": [
                {"type": {"text": "software"}, "value": facts.software},
                {"type": {"text": "classifier model"}, "value": format!("{} sha256:{}", facts.model_name, facts.model_sha256)},
                {"type": {"text": "report schema"}, "value": SCHEMA},
            ],
            "note": [{"text": crate::DISCLAIMER}],
        }
    })];
    let specimen_ref = facts.sample_id.as_ref().map(|id| {
        entries.push(json!({
            "fullUrl": specimen_url,
            "resource": {
                "resourceType": "Specimen",
                "meta": tag,
                "accessionIdentifier": {"value": id},
                "type": {"text": "Peripheral blood smear"},
            }
        }));
        json!({"reference": specimen_url, "display": format!("sample {id}")})
    });
    let mut observation = |n: usize, code: Value, value: Value, note: String, flag: bool| {
        let url = uuid(&seed, 10 + n);
        let mut o = json!({
            "resourceType": "Observation",
            "meta": tag,
            "status": status,
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "laboratory", "display": "Laboratory"}]}],
            "code": code,
            "issued": issued,
            "valueQuantity": value,
            "device": {"reference": device_url},
            "note": [{"text": note}],
        });
        if let Some(r) = &specimen_ref {
            o["specimen"] = r.clone();
        }
        if flag {
            o["interpretation"] = json!([{
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                            "code": "H", "display": "High"}],
                "text": format!("at or above the {:.0}% screening threshold: review the smear", s.threshold_percent)}]);
        }
        entries.push(json!({"fullUrl": url, "resource": o}));
        json!({"reference": url})
    };
    let ci_note = |k: u64| ci_note(s, k);
    let pct = |k: u64| percent_of(s, k);
    let mut results = Vec::new();
    results.push(observation(
        0,
        json!({"coding": [{"system": LOCAL, "code": "leukocytes-counted", "display": "Leukocytes counted"}],
               "text": "Leukocytes counted (the denominator of every percentage)"}),
        json!({"value": s.cells, "unit": "cells", "system": UCUM, "code": "{cells}"}),
        format!(
            "{} not counted: {} not leukocytes, {} cut by the field border",
            s.not_counted.not_leukocytes + s.not_counted.cut_by_border,
            s.not_counted.not_leukocytes,
            s.not_counted.cut_by_border
        ),
        false,
    ));
    results.push(observation(
        1,
        json!({"coding": [{"system": LOINC, "code": BLASTS.0, "display": BLASTS.1}], "text": "Blasts (all blast classes)"}),
        percent(s.blast_percent),
        ci_note(s.blasts),
        s.flag,
    ));
    for (i, t) in terms(facts).into_iter().enumerate() {
        let coding = json!({"system": t.system, "code": t.code, "display": t.display});
        results.push(observation(
            2 + i,
            json!({"coding": [coding], "text": t.text}),
            percent(pct(t.count)),
            ci_note(t.count),
            false,
        ));
    }
    let mut report = json!({
        "resourceType": "DiagnosticReport",
        "meta": tag,
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "HM", "display": "Hematology"}]}],
        "code": {"coding": [{"system": LOINC, "code": PANEL.0, "display": PANEL.1}],
                 "text": "Leukocyte differential by image classification (leukoscope)"},
        "issued": issued,
        "result": results,
        "conclusion": format!("{} {}", conclusion(facts), crate::DISCLAIMER),
    });
    if let Some(r) = &specimen_ref {
        report["specimen"] = json!([r]);
    }
    if let Some(op) = &facts.operator_id {
        report["performer"] = json!([{"identifier": {"value": op}, "display": format!("operator {op}")}]);
    }
    if let Some(r) = &facts.reviewed {
        report["resultsInterpreter"] = json!([{"identifier": {"value": r.sign_off.reviewer}, "display": format!("reviewer {}", r.sign_off.reviewer)}]);
        report["effectiveDateTime"] = json!(rfc3339(r.sign_off.unix_time));
    }
    let report_url = uuid(&seed, 2);
    entries.insert(0, json!({"fullUrl": report_url, "resource": report}));
    json!({
        "resourceType": "Bundle",
        "meta": tag,
        "identifier": {"system": "urn:ietf:rfc:3986", "value": uuid(&seed, 3)},
        "type": "collection",
        "timestamp": issued,
        "entry": entries,
    })
}

/// The report's conclusion: reviewed or preliminary, and the blasts.
pub fn conclusion(facts: &ReportFacts) -> String {
    let s = facts.summary();
    let verified = match &facts.reviewed {
        Some(r) => format!("Reviewed and signed by {}.", r.sign_off.reviewer),
        None => "PRELIMINARY: not yet reviewed by a person.".into(),
    };
    format!(
        "{verified} Blasts {:.1}% (95% CI {:.1}-{:.1}%) of {} leukocytes{}.",
        s.blast_percent,
        s.ci95[0],
        s.ci95[1],
        s.cells,
        if s.flag { format!(", AT OR ABOVE the {:.0}% threshold", s.threshold_percent) } else { String::new() }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_of_the_shipped_model_has_a_term() {
        let card = crate::classify::model::ModelCard::load(&crate::classify::model::default_card_path())
            .expect("shipped card");
        for c in card.classes.iter().filter(|c| c.leukocyte) {
            assert!(loinc_of(&c.code).is_some(), "class {} has no LOINC term", c.code);
        }
        for b in &card.blast_classes {
            assert!(loinc_of(b).is_some(), "blast class {b} has no LOINC term");
        }
    }

    /// LOINC's mod-10 check digit: catches a mistyped code in the table.
    #[test]
    fn loinc_codes_have_valid_check_digits() {
        let ok = |code: &str| {
            let (digits, check) = code.split_once('-').expect("NNNN-C");
            let sum: u32 = digits
                .chars()
                .rev()
                .enumerate()
                .map(|(i, c)| {
                    let d = c.to_digit(10).expect("digit");
                    if i % 2 == 0 {
                        let d2 = 2 * d;
                        d2 / 10 + d2 % 10
                    } else {
                        d
                    }
                })
                .sum();
            (10 - sum % 10) % 10 == check.parse::<u32>().expect("check digit")
        };
        assert!(!ok("26446-4"), "the check itself");
        for (_, code, _) in CLASS_CODES {
            assert!(ok(code), "{code}");
        }
        assert!(ok(PANEL.0) && ok(BLASTS.0));
    }

    #[test]
    fn uuids_are_stable_and_distinct() {
        assert_eq!(uuid("a", 1), uuid("a", 1));
        assert_ne!(uuid("a", 1), uuid("a", 2));
        let u = uuid("a", 1);
        assert_eq!(u.len(), "urn:uuid:".len() + 36);
        assert_eq!(&u[9 + 14..9 + 15], "4");
    }
}
