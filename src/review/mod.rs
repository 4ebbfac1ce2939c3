//! A person's review of a report folder: reclassify cells, mark cells that are
//! not leukocytes, sign off. Every change is one line appended to
//! `review.jsonl` beside `results.json` and fsync'd before it is acknowledged
//! (the journal's discipline: a crash loses nothing acknowledged); the
//! reviewed count is rebuilt from `results.json` and that log, never stored
//! alone. A change after a sign-off voids it until someone signs again.
//!
//! The log's first line binds it to the analysis it reviews (a hash of the
//! field records): a folder analysed again refuses an old log instead of
//! applying its changes to other cells.

pub mod server;

use crate::classify::count::Call;
use crate::report::files::{self as report_files, ReportFacts, SignOff};
use crate::report::FieldRecord;
use crate::storage::{self, Os, Storage, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const SCHEMA: &str = "leukoscope-review/1";
/// The class code a reviewer's "not a leukocyte" gives a cell.
pub const NOT_LEUKOCYTE: &str = "NOTWBC";

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("cannot read or write {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {why}")]
    Bad { path: PathBuf, why: String },
    #[error("no cell {0} in this report")]
    NoCell(String),
    #[error("cell {0} was cut by the field border: it is never counted")]
    CutByBorder(String),
    #[error("a reviewer name or ID is needed")]
    NoReviewer,
    #[error("rewriting the report files")]
    Rewrite(#[source] StorageError),
}

/// The files a review rewrites, as one set ([`storage::write_files_atomic`]):
/// `results.json` last, so while its temporary file is there the set is
/// being replaced.
pub const REWRITTEN: [&str; 4] = ["report.html", "report.fhir.json", report_files::HL7_FILE, "results.json"];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReviewError + '_ {
    move |source| ReviewError::Io { path: path.to_path_buf(), source }
}

/// One line of `review.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ReviewEntry {
    /// First line: which analysis this log reviews.
    Open {
        schema: String,
        software: String,
        fields_sha256: String,
        unix_time: u64,
    },
    /// The reviewer's class for a cell, with what it counts as.
    Reclassify {
        cell: String,
        class: String,
        label: String,
        call: Call,
        by: String,
        unix_time: u64,
    },
    NotLeukocyte {
        cell: String,
        by: String,
        unix_time: u64,
    },
    SignOff {
        by: String,
        unix_time: u64,
    },
}

/// A report folder under review.
#[derive(Debug, Clone)]
pub struct ReportDir {
    pub dir: PathBuf,
    pub document: Value,
    /// The field records as classified; a cell's id is `<field>-<k>`, k its
    /// index in `cells` followed by `not_counted`.
    pub fields: Vec<FieldRecord>,
    pub log: Vec<ReviewEntry>,
}

/// Who changed a cell, and to what.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub class: String,
    pub label: String,
    pub call: Call,
    pub by: String,
    pub unix_time: u64,
}

pub fn cell_id(field: usize, k: usize) -> String {
    format!("{field}-{k}")
}

fn fields_sha256(fields: &[FieldRecord]) -> String {
    let bytes = serde_json::to_vec(fields).unwrap_or_default();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl ReportDir {
    /// Reads `results.json` and, if any, `review.jsonl`. A torn last line of
    /// the log (a crash mid-append, never acknowledged) is cut off.
    pub fn open(dir: &Path) -> Result<ReportDir, ReviewError> {
        Self::open_from(&Os, dir)
    }

    /// [`ReportDir::open`] through any storage.
    pub fn open_from(fs: &dyn Storage, dir: &Path) -> Result<ReportDir, ReviewError> {
        let rp = dir.join("results.json");
        let text = String::from_utf8(fs.read(&rp).map_err(io(&rp))?)
            .map_err(|e| ReviewError::Bad { path: rp.clone(), why: e.to_string() })?;
        let document: Value =
            serde_json::from_str(&text).map_err(|e| ReviewError::Bad { path: rp.clone(), why: e.to_string() })?;
        // Images that failed to analyse carry only an error: nothing to review.
        let fields: Vec<FieldRecord> = document["images"]
            .as_array()
            .ok_or_else(|| ReviewError::Bad { path: rp.clone(), why: "no images".into() })?
            .iter()
            .filter_map(|i| serde_json::from_value(i.clone()).ok())
            .collect();
        let lp = dir.join("review.jsonl");
        let mut log = Vec::new();
        if let Ok(bytes) = fs.read(&lp) {
            let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let text = std::str::from_utf8(&bytes[..complete])
                .map_err(|e| ReviewError::Bad { path: lp.clone(), why: e.to_string() })?;
            for (i, line) in text.lines().enumerate() {
                let e: ReviewEntry = serde_json::from_str(line)
                    .map_err(|e| ReviewError::Bad { path: lp.clone(), why: format!("line {}: {e}", i + 1) })?;
                log.push(e);
            }
            if complete < bytes.len() {
                log::warn!("{}: discarding a torn last line", lp.display());
                let mut f = fs.open_append(&lp).map_err(io(&lp))?;
                f.set_len(complete as u64).map_err(io(&lp))?;
                f.sync().map_err(io(&lp))?;
            }
            match log.first() {
                Some(ReviewEntry::Open { fields_sha256: h, .. }) if *h == fields_sha256(&fields) => {}
                Some(ReviewEntry::Open { .. }) => {
                    return Err(ReviewError::Bad {
                        path: lp,
                        why: "reviews an earlier analysis of this folder (its cells have changed since)".into(),
                    })
                }
                Some(_) => return Err(ReviewError::Bad { path: lp, why: "first line is not an open record".into() }),
                None => {}
            }
        }
        let shown = document["review"]["log_lines"].as_u64().unwrap_or(0) as usize;
        let r = ReportDir { dir: dir.to_path_buf(), document, fields, log };
        // A rewrite cut short (the process killed between its renames) can leave
        // a mix of old and new files, and a crash between an append and its rewrite
        // leaves files behind the log: the log is the truth, so write them again.
        let interrupted = REWRITTEN.iter().any(|n| fs.kind(&storage::tmp_path(&dir.join(n))).is_some());
        if !r.log.is_empty() && (interrupted || shown != r.log.len()) {
            log::warn!("{}: the report files are behind the review log: writing them again", dir.display());
            r.write_reports_to(fs)?;
        }
        Ok(r)
    }

    pub fn sample_id(&self) -> Option<String> {
        ReportFacts::new(&self.document, &[], None).sample_id
    }

    /// The cell of an id, as classified.
    pub fn cell(&self, id: &str) -> Option<&crate::report::CellRecord> {
        let (f, k) = id.split_once('-')?;
        let f = self.fields.get(f.parse::<usize>().ok()?)?;
        f.cells.iter().chain(&f.not_counted).nth(k.parse().ok()?)
    }

    /// The latest change of every changed cell.
    pub fn changes(&self) -> BTreeMap<String, Change> {
        let mut m = BTreeMap::new();
        for e in &self.log {
            match e {
                ReviewEntry::Reclassify { cell, class, label, call, by, unix_time } => {
                    m.insert(
                        cell.clone(),
                        Change {
                            class: class.clone(),
                            label: label.clone(),
                            call: call.clone(),
                            by: by.clone(),
                            unix_time: *unix_time,
                        },
                    );
                }
                ReviewEntry::NotLeukocyte { cell, by, unix_time } => {
                    m.insert(
                        cell.clone(),
                        Change {
                            class: NOT_LEUKOCYTE.into(),
                            label: "Not a leukocyte (reviewer)".into(),
                            call: Call::NotLeukocyte { code: NOT_LEUKOCYTE.into() },
                            by: by.clone(),
                            unix_time: *unix_time,
                        },
                    );
                }
                _ => {}
            }
        }
        // A change back to the model's own call is no change.
        m.retain(|id, c| self.cell(id).is_some_and(|cell| cell.call != c.call));
        m
    }

    /// The valid sign-off: the last one, unless a cell changed after it.
    pub fn sign_off(&self) -> Option<SignOff> {
        let i = self.log.iter().rposition(|e| matches!(e, ReviewEntry::SignOff { .. }))?;
        if self.log[i + 1..].iter().any(|e| !matches!(e, ReviewEntry::SignOff { .. })) {
            return None;
        }
        match &self.log[i] {
            ReviewEntry::SignOff { by, unix_time } => {
                Some(SignOff { reviewer: by.clone(), unix_time: *unix_time, changed: self.changes().len() })
            }
            _ => None,
        }
    }

    /// The field records with the reviewer's calls.
    pub fn reviewed(&self) -> Vec<FieldRecord> {
        let changes = self.changes();
        self.fields
            .iter()
            .enumerate()
            .map(|(f, rec)| {
                let mut out = FieldRecord { cells: Vec::new(), not_counted: Vec::new(), ..rec.clone() };
                for (k, cell) in rec.cells.iter().chain(&rec.not_counted).enumerate() {
                    let mut c = cell.clone();
                    if let Some(ch) = changes.get(&cell_id(f, k)) {
                        c.class = ch.class.clone();
                        c.label = ch.label.clone();
                        c.call = ch.call.clone();
                        c.blast = matches!(ch.call, Call::Cell { blast: true, .. });
                        c.reason = match ch.call {
                            Call::NotLeukocyte { .. } => Some("not_a_leukocyte".into()),
                            _ => None,
                        };
                    }
                    if c.reason.is_none() {
                        out.cells.push(c);
                    } else {
                        out.not_counted.push(c);
                    }
                }
                out
            })
            .collect()
    }

    /// Appends one change and makes it durable; then rewrites the reports.
    pub fn append(&mut self, e: ReviewEntry) -> Result<(), ReviewError> {
        self.append_to(&Os, e)
    }

    /// [`ReportDir::append`] through any storage.
    pub fn append_to(&mut self, fs: &dyn Storage, e: ReviewEntry) -> Result<(), ReviewError> {
        match &e {
            ReviewEntry::Reclassify { cell, by, .. } | ReviewEntry::NotLeukocyte { cell, by, .. } => {
                let c = self.cell(cell).ok_or_else(|| ReviewError::NoCell(cell.clone()))?;
                if c.reason.as_deref() == Some("cut_by_border") {
                    return Err(ReviewError::CutByBorder(cell.clone()));
                }
                if by.trim().is_empty() {
                    return Err(ReviewError::NoReviewer);
                }
            }
            ReviewEntry::SignOff { by, .. } if by.trim().is_empty() => return Err(ReviewError::NoReviewer),
            _ => {}
        }
        let path = self.dir.join("review.jsonl");
        let mut lines = Vec::new();
        if self.log.is_empty() {
            lines.push(ReviewEntry::Open {
                schema: SCHEMA.into(),
                software: report_files::software(),
                fields_sha256: fields_sha256(&self.fields),
                unix_time: report_files::unix_time(),
            });
        }
        lines.push(e);
        let mut bytes = Vec::new();
        for l in &lines {
            bytes.extend(
                serde_json::to_vec(l).map_err(|e| ReviewError::Bad { path: path.clone(), why: e.to_string() })?,
            );
            bytes.push(b'\n');
        }
        let new = fs.kind(&path).is_none();
        let mut f = if new { fs.create(&path) } else { fs.open_append(&path) }.map_err(io(&path))?;
        // One write: a crash leaves whole lines or a torn tail, which opening cuts off.
        f.write_all(&bytes).map_err(io(&path))?;
        f.sync().map_err(io(&path))?;
        if new {
            // The new file's entry in its folder is durable only once the folder is.
            fs.sync_dir(storage::parent(&path)).map_err(io(&path))?;
        }
        self.log.extend(lines);
        self.write_reports_to(fs)
    }

    /// `results.json` with its `review` section, `report.html`,
    /// `report.fhir.json` and `report.hl7` as the log now stands (final once signed), as one
    /// set: a crash leaves the old files or the new ones ([`REWRITTEN`]).
    pub fn write_reports(&self) -> Result<(), ReviewError> {
        self.write_reports_to(&Os)
    }

    /// [`ReportDir::write_reports`] through any storage.
    pub fn write_reports_to(&self, fs: &dyn Storage) -> Result<(), ReviewError> {
        let threshold = self.document["summary"]["threshold_percent"].as_f64().unwrap_or(20.0);
        let reviewed = self.reviewed();
        let sign_off = self.sign_off();
        let changes: Vec<Value> = self
            .changes()
            .iter()
            .map(|(id, c)| {
                serde_json::json!({
                    "cell": id,
                    "from": self.cell(id).map(|x| x.class.clone()),
                    "to": c.class,
                    "by": c.by,
                    "time": report_files::rfc3339(c.unix_time),
                })
            })
            .collect();
        let mut doc = self.document.clone();
        doc["review"] = serde_json::json!({
            "schema": SCHEMA,
            "status": if sign_off.is_some() { "signed" } else { "in_review" },
            "reviewer": sign_off.as_ref().map(|s| s.reviewer.clone()),
            "signed_at": sign_off.as_ref().map(|s| report_files::rfc3339(s.unix_time)),
            "changes": changes,
            "summary": report_files::summary_of(&reviewed, threshold),
            // How much of review.jsonl these files show: opening compares it with the log.
            "log_lines": self.log.len(),
        });
        let rp = self.dir.join("results.json");
        let json = serde_json::to_string_pretty(&doc)
            .map_err(|e| ReviewError::Bad { path: rp.clone(), why: e.to_string() })?;
        let facts = ReportFacts::new(&self.document, &self.fields, sign_off.map(|s| (reviewed.as_slice(), s)));
        let [html, fhir, hl7] = report_files::render_facts(&self.dir, &facts).map_err(io(&self.dir))?;
        let files: [(&str, &[u8]); 4] =
            [(REWRITTEN[0], &html), (REWRITTEN[1], &fhir), (REWRITTEN[2], &hl7), (REWRITTEN[3], json.as_bytes())];
        storage::write_files_atomic(fs, &self.dir, &files).map_err(ReviewError::Rewrite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::CellRecord;

    fn cell(code: &str, blast: bool) -> CellRecord {
        CellRecord::counted_for_test(code, blast)
    }

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("leukoscope-review-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let field = FieldRecord {
            path: "a.jpg".into(),
            width: 64,
            height: 64,
            cells: vec![cell("MYO", true), cell("NGS", false)],
            not_counted: vec![],
            scale: crate::vision::detect::FieldScale::new(0.1, crate::vision::detect::ScaleSource::Configured),
            rejected: Default::default(),
            red_cells_px: vec![],
        };
        let doc = serde_json::json!({"images": [field], "summary": {"threshold_percent": 20.0}, "model": {"name": "m", "sha256": "ab"}});
        std::fs::write(dir.join("results.json"), doc.to_string()).unwrap();
        dir
    }

    #[test]
    fn changes_recount_and_a_later_change_voids_the_sign_off() {
        let dir = folder("recount");
        let mut r = ReportDir::open(&dir).unwrap();
        assert_eq!(r.fields.len(), 1);
        r.append(ReviewEntry::NotLeukocyte { cell: "0-0".into(), by: "dr a".into(), unix_time: 1 }).unwrap();
        let s = report_files::summary_of(&r.reviewed(), 20.0);
        assert_eq!((s.cells, s.blasts, s.not_counted.not_leukocytes), (1, 0, 1));
        r.append(ReviewEntry::SignOff { by: "dr a".into(), unix_time: 2 }).unwrap();
        assert_eq!(r.sign_off().map(|s| (s.reviewer, s.changed)), Some(("dr a".into(), 1)));
        let call = Call::Cell { code: "MYO".into(), blast: true, abnormal: true };
        r.append(ReviewEntry::Reclassify {
            cell: "0-1".into(),
            class: "MYO".into(),
            label: "Myeloblast".into(),
            call,
            by: "dr b".into(),
            unix_time: 3,
        })
        .unwrap();
        assert_eq!(r.sign_off(), None, "changed after signing");
        // Reopened from disk: the same state.
        let again = ReportDir::open(&dir).unwrap();
        assert_eq!(again.log, r.log);
        assert_eq!(again.changes().len(), 2);
        assert!(matches!(
            r.append(ReviewEntry::NotLeukocyte { cell: "0-9".into(), by: "x".into(), unix_time: 4 }),
            Err(ReviewError::NoCell(_))
        ));
        assert!(matches!(
            r.append(ReviewEntry::SignOff { by: " ".into(), unix_time: 4 }),
            Err(ReviewError::NoReviewer)
        ));
        // A torn tail is cut off; an analysis whose cells changed refuses the log.
        let lp = dir.join("review.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).open(&lp).unwrap();
        std::io::Write::write_all(&mut f, b"{\"t\":\"sign_o").unwrap();
        assert_eq!(ReportDir::open(&dir).unwrap().log.len(), 4);
        let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
        doc["images"][0]["cells"][0]["confidence"] = serde_json::json!(0.5);
        std::fs::write(dir.join("results.json"), doc.to_string()).unwrap();
        assert!(matches!(ReportDir::open(&dir), Err(ReviewError::Bad { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Killed between the renames of a rewrite: the next open writes the set again.
    #[test]
    fn an_interrupted_rewrite_is_redone_on_open() {
        let dir = folder("redo");
        let mut r = ReportDir::open(&dir).unwrap();
        r.append(ReviewEntry::SignOff { by: "dr a".into(), unix_time: 2 }).unwrap();
        let signed = std::fs::read_to_string(dir.join("report.html")).unwrap();
        assert!(signed.contains("dr a"));
        // As if the process died after renaming report.html, before results.json.
        std::fs::write(dir.join("report.html"), "stale").unwrap();
        std::fs::write(dir.join("results.json.tmp"), "{").unwrap();
        let again = ReportDir::open(&dir).unwrap();
        assert_eq!(again.log, r.log);
        assert!(std::fs::read_to_string(dir.join("report.html")).unwrap().contains("dr a"));
        assert!(!dir.join("results.json.tmp").exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
