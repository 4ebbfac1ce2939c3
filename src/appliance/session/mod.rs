//! A counting session and its journal. The journal is the truth: a field counts
//! once its record is appended and fsync'd, and everything else (the running
//! differential, the report) is rebuilt from it. A power cut therefore loses at
//! most the field being analysed, and the next start resumes the open session.
//!
//! On disk, one folder per session under the state folder:
//! `journal.jsonl` (append-only, one JSON record per line), `crops/` (written
//! before the field's record, so a record never points at a missing crop), and
//! at the end `results.json` and `cells.csv` (atomic renames): the same report
//! folder as `analyze --out`.
//!
//! Here: the journal's records and the state they rebuild, and the three
//! things a count does (record a field, undo, finish). `journal` appends and
//! reads back, `store` is the state folder (sessions, the sample counter, the
//! report), `repair` is `session repair`, `lock` keeps a second process out.

mod journal;
mod lock;
mod repair;
mod store;
#[cfg(test)]
mod tests;

use crate::classify::count::{Differential, Summary};
use crate::report::{self, FieldRecord};
use crate::storage::StorageError;
use crate::vision::gating::PackedThumb;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use journal::{load, Journal};
pub use lock::{lock_state, StateLock};
pub use repair::Repair;
pub use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session storage {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("session storage")]
    Storage(#[from] StorageError),
    #[error("journal {path} line {line} is damaged: {why}")]
    Corrupt { path: PathBuf, line: usize, why: String },
    #[error("state folder {path} is in use by another leukoscope run{holder}: only one may count in it at a time")]
    Busy { path: PathBuf, holder: String },
}

/// The journal's file name in a session folder.
pub const JOURNAL: &str = "journal.jsonl";
/// Lines `session repair` set aside are kept in `journal.damaged.jsonl`
/// (`journal.damaged.2.jsonl`, ... after further repairs).
pub const DAMAGED_PREFIX: &str = "journal.damaged";
/// Where a count stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Idle,
    Counting,
    TargetReached,
    Finished,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Entry {
    Start {
        sample_id: String,
        /// Who counts: the operator ID scanned before START, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operator_id: Option<String>,
        target: u64,
        threshold_percent: f64,
        model_sha256: String,
        unix_time: u64,
    },
    /// A counted field. `thumb` is the gate's fingerprint of it, so that after a
    /// restart the field under the objective is not counted again.
    Field {
        field: u64,
        unix_time: u64,
        record: FieldRecord,
        thumb: PackedThumb,
    },
    Undo {
        field: u64,
    },
    Finish {
        unix_time: u64,
    },
}

/// The state of one session, as rebuilt from its journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub dir: PathBuf,
    pub sample_id: String,
    pub operator_id: Option<String>,
    pub target: u64,
    pub threshold_percent: f64,
    pub model_sha256: String,
    /// Counted fields, in order, with their numbers.
    pub fields: Vec<(u64, FieldRecord)>,
    /// Fingerprints of the counted fields, newest last (see [`Entry::Field`]).
    pub thumbs: Vec<PackedThumb>,
    pub next_field: u64,
    pub finished: bool,
    pub diff: Differential,
}

impl Session {
    fn from_start(dir: &Path, start: &Entry) -> Option<Session> {
        match start {
            Entry::Start { sample_id, operator_id, target, threshold_percent, model_sha256, .. } => Some(Session {
                dir: dir.to_path_buf(),
                sample_id: sample_id.clone(),
                operator_id: operator_id.clone(),
                target: *target,
                threshold_percent: *threshold_percent,
                model_sha256: model_sha256.clone(),
                fields: Vec::new(),
                thumbs: Vec::new(),
                next_field: 1,
                finished: false,
                diff: Differential::default(),
            }),
            _ => None,
        }
    }

    /// The pure state transition of one journal entry.
    fn apply(&mut self, e: &Entry) -> Result<(), String> {
        if self.finished {
            return Err("entry after the session finished".into());
        }
        match e {
            Entry::Start { .. } => return Err("second start record".into()),
            Entry::Field { field, record, thumb, .. } => {
                if *field < self.next_field {
                    return Err(format!("field {field} recorded twice or out of order"));
                }
                record.count_into(&mut self.diff);
                self.fields.push((*field, record.clone()));
                self.thumbs.push(thumb.clone());
                self.next_field = field + 1;
            }
            Entry::Undo { field } => {
                let Some(i) = self.fields.iter().position(|(n, _)| n == field) else {
                    return Err(format!("undo of field {field}, which is not counted"));
                };
                let (_, record) = self.fields.remove(i);
                record.uncount_from(&mut self.diff);
                self.thumbs.remove(i);
            }
            Entry::Finish { .. } => self.finished = true,
        }
        Ok(())
    }

    pub fn phase(&self) -> Phase {
        if self.finished {
            Phase::Finished
        } else if self.diff.cells() >= self.target {
            Phase::TargetReached
        } else {
            Phase::Counting
        }
    }

    pub fn summary(&self) -> Summary {
        self.diff.summary(self.threshold_percent)
    }

    /// The report document: `analyze --json`'s shape plus the session's facts.
    pub fn document(
        &self,
        card: &crate::classify::model::ModelCard,
        detect: &crate::vision::detect::DetectParams,
    ) -> serde_json::Value {
        let images = self.fields.iter().filter_map(|(_, r)| serde_json::to_value(r).ok()).collect();
        self.document_of(card, detect, images)
    }

    fn document_of(
        &self,
        card: &crate::classify::model::ModelCard,
        detect: &crate::vision::detect::DetectParams,
        images: Vec<serde_json::Value>,
    ) -> serde_json::Value {
        let scale = report::ScaleSummary::checked(self.fields.iter().map(|(_, r)| r), detect);
        let mut doc = report::analysis_json(card, images, &self.summary(), &scale);
        // As `analyze --sample-id --operator-id` writes it: the report files read it there.
        doc["sample"] = serde_json::json!({"id": self.sample_id, "operator_id": self.operator_id});
        doc["session"] = serde_json::json!({
            "sample_id": self.sample_id,
            "target": self.target,
            "fields": self.fields.len(),
            "finished": self.finished,
        });
        doc
    }
}

/// Counts one analysed field: its crops first, then its journal record (the
/// commit point). Returns the field number.
pub fn record_field(
    session: &mut Session,
    journal: &mut Journal,
    mut record: FieldRecord,
    img: &image::RgbImage,
    thumb: PackedThumb,
) -> Result<u64, SessionError> {
    let field = session.next_field;
    record.write_crops(journal.fs.as_ref(), &session.dir, &format!("f{field:04}"), img)?;
    let e = Entry::Field { field, unix_time: unix_time(), record, thumb };
    journal.append(&e)?;
    session.apply(&e).map_err(|why| journal.refused(why))?;
    Ok(field)
}

/// Takes back the last counted field; returns its number.
pub fn undo_last(session: &mut Session, journal: &mut Journal) -> Result<Option<u64>, SessionError> {
    let Some(&(field, _)) = session.fields.last() else { return Ok(None) };
    let e = Entry::Undo { field };
    journal.append(&e)?;
    session.apply(&e).map_err(|why| journal.refused(why))?;
    store::remove_strays(journal.fs.as_ref(), session)?;
    Ok(Some(field))
}

/// Ends the session and writes its report.
pub fn finish(
    session: &mut Session,
    journal: &mut Journal,
    card: &crate::classify::model::ModelCard,
    detect: &crate::vision::detect::DetectParams,
) -> Result<(), SessionError> {
    let e = Entry::Finish { unix_time: unix_time() };
    journal.append(&e)?;
    session.apply(&e).map_err(|why| journal.refused(why))?;
    store::write_report(journal.fs.as_ref(), session, card, detect)
}

fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
