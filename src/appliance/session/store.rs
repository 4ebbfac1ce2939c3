//! The state folder: its sessions and the sample counter, and what a session
//! folder holds besides its journal (the report, crops of counted fields).

use super::repair::repair_journal;
use super::{load, unix_time, Entry, Journal, Repair, Session, SessionError, DAMAGED_PREFIX, JOURNAL};
use crate::report::{self, FieldRecord};
use crate::storage::{self, Kind, Os, Storage, StorageError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The folder holding all sessions, and the sample counter.
pub struct Store {
    pub root: PathBuf,
    fs: Arc<dyn Storage>,
}

impl Store {
    /// The state folder on the real filesystem.
    pub fn open(root: &Path) -> Result<Store, SessionError> {
        Store::with_storage(Arc::new(Os), root)
    }

    /// The state folder on any storage (tests simulate power cuts with one).
    pub fn with_storage(fs: Arc<dyn Storage>, root: &Path) -> Result<Store, SessionError> {
        storage::create_dir_durable(fs.as_ref(), &root.join("sessions"))?;
        Ok(Store { root: root.to_path_buf(), fs })
    }

    fn session_dirs(&self) -> Result<Vec<PathBuf>, SessionError> {
        let d = self.root.join("sessions");
        let mut dirs: Vec<PathBuf> = self
            .fs
            .list(&d)
            .map_err(StorageError::new("listing", &d))?
            .into_iter()
            .filter(|(_, k)| *k == Kind::Dir)
            .map(|(name, _)| d.join(name))
            .filter(|p| self.fs.kind(&p.join(JOURNAL)) == Some(Kind::File))
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Finds the session a crash left open, or a finished one whose report was
    /// not completely written (which is then written). Sessions are numbered,
    /// so the newest is last.
    pub fn recover(
        &self,
        card: &crate::classify::model::ModelCard,
        detect: &crate::vision::detect::DetectParams,
    ) -> Result<Option<(Session, Journal)>, SessionError> {
        for dir in self.session_dirs()? {
            let (s, j) = load(&self.fs, &dir)?;
            remove_strays(self.fs.as_ref(), &s)?;
            if !s.finished {
                return Ok(Some((s, j)));
            }
            let complete = ["results.json", "cells.csv"].iter().all(|f| self.fs.kind(&dir.join(f)) == Some(Kind::File));
            if !complete {
                log::warn!("{}: finished but its report is incomplete: writing it", dir.display());
                write_report(self.fs.as_ref(), &s, card, detect)?;
            }
        }
        Ok(None)
    }

    /// Starts a session. An empty `sample_id` takes the next number of the counter.
    pub fn start(
        &self,
        sample_id: &str,
        target: u64,
        threshold_percent: f64,
        model_sha256: &str,
    ) -> Result<(Session, Journal), SessionError> {
        self.start_by(sample_id, None, target, threshold_percent, model_sha256)
    }

    /// [`Store::start`], with the operator who counts.
    pub fn start_by(
        &self,
        sample_id: &str,
        operator_id: Option<&str>,
        target: u64,
        threshold_percent: f64,
        model_sha256: &str,
    ) -> Result<(Session, Journal), SessionError> {
        let n = self.bump_counter()?;
        let sample_id = if sample_id.trim().is_empty() { format!("S{n:04}") } else { sample_id.trim().to_string() };
        let safe: String =
            sample_id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_".contains(c) { c } else { '_' }).collect();
        let dir = self.root.join("sessions").join(format!("{n:05}-{safe}"));
        storage::create_dir_durable(self.fs.as_ref(), &dir.join("crops"))?;
        let start = Entry::Start {
            sample_id,
            operator_id: operator_id.map(str::to_string),
            target,
            threshold_percent,
            model_sha256: model_sha256.to_string(),
            unix_time: unix_time(),
        };
        // The journal appears complete or not at all.
        let line = serde_json::to_string(&start).unwrap_or_default() + "\n";
        storage::write_atomic(self.fs.as_ref(), &dir.join(JOURNAL), line.as_bytes())?;
        load(&self.fs, &dir)
    }

    /// Next sample number, persisted before it is used, so numbers never repeat.
    fn bump_counter(&self) -> Result<u64, SessionError> {
        let p = self.root.join("counter");
        let last: u64 = self
            .fs
            .read(&p)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        // Also past any existing session folder, in case the counter file was lost.
        let seen = self
            .session_dirs()?
            .iter()
            .filter_map(|d| d.file_name()?.to_str()?.split('-').next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let n = last.max(seen) + 1;
        storage::write_atomic(self.fs.as_ref(), &p, format!("{n}\n").as_bytes())?;
        Ok(n)
    }

    /// `session repair`: in each session whose journal is damaged, keeps every
    /// record that reads and fits (in order) and sets the others aside in
    /// `journal.damaged.jsonl` beside it, so that `run` can resume. A damaged
    /// start record sets the whole journal aside (the folder is then no longer
    /// a session). A finished session's report is removed, to be written again
    /// from the repaired journal by the next `run`.
    pub fn repair(&self) -> Result<Vec<Repair>, SessionError> {
        let mut out = Vec::new();
        for dir in self.session_dirs()? {
            if let Some(r) = repair_journal(self.fs.as_ref(), &dir)? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// The report from the journal. A crop that is gone (the folder deleted by
/// hand) is not pointed to; the report says how many are missing, and so
/// does the log. A repaired journal is mentioned too.
pub(super) fn write_report(
    fs: &dyn Storage,
    session: &Session,
    card: &crate::classify::model::ModelCard,
    detect: &crate::vision::detect::DetectParams,
) -> Result<(), SessionError> {
    let mut records: Vec<FieldRecord> = session.fields.iter().map(|(_, r)| r.clone()).collect();
    let (mut crops, mut missing) = (0, 0);
    for c in records.iter_mut().flat_map(|r| r.cells.iter_mut().chain(r.not_counted.iter_mut())) {
        if let Some(p) = &c.crop {
            crops += 1;
            if fs.kind(&session.dir.join(p)) != Some(Kind::File) {
                missing += 1;
                c.crop = None;
            }
        }
    }
    let mut warnings = Vec::new();
    if missing > 0 {
        warnings.push(format!(
            "{missing} of {crops} cell crops are missing from {} (deleted?): those cells are counted, but the report \
             cannot show them for review",
            session.dir.join("crops").display()
        ));
    }
    let damaged: Vec<String> = fs
        .list(&session.dir)
        .unwrap_or_default()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with(DAMAGED_PREFIX))
        .collect();
    if !damaged.is_empty() {
        warnings.push(format!(
            "the journal was repaired: damaged records set aside in {} are not counted",
            damaged.join(", ")
        ));
    }
    for w in &warnings {
        log::warn!("session {}: {w}", session.sample_id);
    }
    let images = records.iter().filter_map(|r| serde_json::to_value(r).ok()).collect();
    let mut doc = session.document_of(card, detect, images);
    doc["session"]["warnings"] = serde_json::json!(warnings);
    report::write_report(fs, &session.dir, &doc, &records).map_err(SessionError::from)
}

/// Deletes crops of fields that are not counted (undone fields, and the field
/// a crash interrupted between its crops and its record) and temporary files
/// an interrupted write left.
pub(super) fn remove_strays(fs: &dyn Storage, session: &Session) -> Result<(), SessionError> {
    let live: std::collections::HashSet<u64> = session.fields.iter().map(|(n, _)| *n).collect();
    let remove = |p: PathBuf| fs.remove_file(&p).map_err(StorageError::new("removing", &p));
    for (name, kind) in fs.list(&session.dir).unwrap_or_default() {
        if kind == Kind::File && name.ends_with(".tmp") {
            remove(session.dir.join(name))?;
        }
    }
    let crops = session.dir.join("crops");
    for (group, kind) in fs.list(&crops).unwrap_or_default() {
        if kind != Kind::Dir {
            continue;
        }
        let g = crops.join(&group);
        for (name, _) in fs.list(&g).unwrap_or_default() {
            let field = name.strip_prefix('f').and_then(|r| r.split('_').next()).and_then(|n| n.parse::<u64>().ok());
            if name.ends_with(".tmp") || field.is_some_and(|n| !live.contains(&n)) {
                remove(g.join(&name))?;
            }
        }
    }
    Ok(())
}
