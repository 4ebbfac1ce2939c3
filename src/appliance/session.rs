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

use crate::classify::count::{Differential, Summary};
use crate::report::{self, FieldRecord};
use crate::storage::{self, Kind, Os, Storage, StorageError, StorageFile};
use crate::vision::gating::PackedThumb;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session storage {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("session storage: {0}")]
    Storage(#[from] StorageError),
    #[error("journal {path} line {line} is damaged: {why}")]
    Corrupt { path: PathBuf, line: usize, why: String },
    #[error("state folder {path} is in use by another leukoscope run{holder}: only one may count in it at a time")]
    Busy { path: PathBuf, holder: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SessionError + '_ {
    move |source| SessionError::Io { path: path.to_path_buf(), source }
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
            Entry::Start { sample_id, target, threshold_percent, model_sha256, .. } => Some(Session {
                dir: dir.to_path_buf(),
                sample_id: sample_id.clone(),
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
    pub fn document(&self, card: &crate::classify::model::ModelCard) -> serde_json::Value {
        let images = self.fields.iter().filter_map(|(_, r)| serde_json::to_value(r).ok()).collect();
        self.document_of(card, images)
    }

    fn document_of(
        &self,
        card: &crate::classify::model::ModelCard,
        images: Vec<serde_json::Value>,
    ) -> serde_json::Value {
        let scale = report::ScaleSummary::of(self.fields.iter().map(|(_, r)| r));
        let mut doc = report::analysis_json(card, images, &self.summary(), &scale);
        doc["session"] = serde_json::json!({
            "sample_id": self.sample_id,
            "target": self.target,
            "fields": self.fields.len(),
            "finished": self.finished,
        });
        doc
    }
}

/// The append side of an open session.
pub struct Journal {
    path: PathBuf,
    file: Box<dyn StorageFile>,
    fs: Arc<dyn Storage>,
    /// Lines in the journal, so that errors name the right one.
    lines: usize,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).field("lines", &self.lines).finish()
    }
}

impl Journal {
    /// Appends one record and makes it durable before returning.
    pub fn append(&mut self, e: &Entry) -> Result<(), SessionError> {
        let mut line = serde_json::to_vec(e)
            .map_err(|e| SessionError::Io { path: self.path.clone(), source: std::io::Error::other(e) })?;
        line.push(b'\n');
        // One write call: a crash leaves a whole line or a torn tail, which loading discards.
        self.file.write_all(&line).map_err(StorageError::new("appending to", &self.path))?;
        self.file.sync().map_err(StorageError::new("syncing", &self.path))?;
        self.lines += 1;
        Ok(())
    }

    /// A state transition refused for the record just appended (a bug, not damage on disk).
    fn refused(&self, why: String) -> SessionError {
        SessionError::Corrupt { path: self.path.clone(), line: self.lines, why }
    }
}

/// One journal line read back: the entry, or why it is damaged.
fn parse_line(raw: &[u8]) -> Result<Entry, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8 text ({e})"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// The journal's lines (1-based numbers), and a torn last line without its
/// newline (the crash hit mid-append) apart.
fn split_lines(bytes: &[u8]) -> (Vec<(usize, &[u8])>, &[u8]) {
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = if complete == 0 {
        Vec::new()
    } else {
        bytes[..complete - 1].split(|&b| b == b'\n').enumerate().map(|(i, l)| (i + 1, l)).collect()
    };
    (lines, &bytes[complete..])
}

/// Reads a journal. A torn last line (no newline: the crash hit mid-append) is
/// cut off; any other damage is an error naming its line, never silently skipped.
pub fn load(fs: &Arc<dyn Storage>, dir: &Path) -> Result<(Session, Journal), SessionError> {
    let path = dir.join(JOURNAL);
    let bytes = fs.read(&path).map_err(StorageError::new("reading", &path))?;
    let (lines, torn) = split_lines(&bytes);
    let corrupt = |line: usize, why: String| SessionError::Corrupt { path: path.clone(), line, why };
    let mut session: Option<Session> = None;
    for &(n, raw) in &lines {
        let e = parse_line(raw).map_err(|why| corrupt(n, why))?;
        match session.as_mut() {
            None => session = Some(Session::from_start(dir, &e).ok_or_else(|| corrupt(n, "no start record".into()))?),
            Some(s) => s.apply(&e).map_err(|why| corrupt(n, why))?,
        }
    }
    let mut file = fs.open_append(&path).map_err(StorageError::new("opening", &path))?;
    if !torn.is_empty() {
        log::warn!("{}: discarding a torn last record ({} bytes)", path.display(), torn.len());
        // No fsync needed: lost in a crash, the same tail is found and cut again,
        // and the next append's fsync makes the cut durable with it.
        file.set_len((bytes.len() - torn.len()) as u64).map_err(StorageError::new("truncating", &path))?;
    }
    let session = session.ok_or_else(|| corrupt(1, "empty journal".into()))?;
    Ok((session, Journal { path, file, fs: fs.clone(), lines: lines.len() }))
}

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
                write_report(self.fs.as_ref(), &s, card)?;
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
        let n = self.bump_counter()?;
        let sample_id = if sample_id.trim().is_empty() { format!("S{n:04}") } else { sample_id.trim().to_string() };
        let safe: String =
            sample_id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_".contains(c) { c } else { '_' }).collect();
        let dir = self.root.join("sessions").join(format!("{n:05}-{safe}"));
        storage::create_dir_durable(self.fs.as_ref(), &dir.join("crops"))?;
        let start = Entry::Start {
            sample_id,
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

/// What `session repair` did to one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Repair {
    pub dir: PathBuf,
    /// Records kept, start record included (0: the whole journal was set aside).
    pub kept: usize,
    /// Line numbers set aside, and the file they are now in.
    pub set_aside: Vec<usize>,
    pub aside_file: PathBuf,
    /// Whether a torn last line (no newline) was among them.
    pub torn: bool,
}

fn repair_journal(fs: &dyn Storage, dir: &Path) -> Result<Option<Repair>, SessionError> {
    let path = dir.join(JOURNAL);
    let bytes = fs.read(&path).map_err(StorageError::new("reading", &path))?;
    let (lines, torn) = split_lines(&bytes);
    let mut session: Option<Session> = None;
    let (mut kept, mut aside) = (Vec::new(), Vec::new());
    for &(n, raw) in &lines {
        let fits = parse_line(raw).ok().is_some_and(|e| match session.as_mut() {
            None => {
                session = Session::from_start(dir, &e);
                session.is_some()
            }
            Some(s) => s.apply(&e).is_ok(),
        });
        if fits {
            kept.push(raw);
        } else {
            aside.push((n, raw));
        }
        // Nothing fits without a start record: the rest goes aside with it.
        if session.is_none() {
            kept.clear();
        }
    }
    if aside.is_empty() && torn.is_empty() {
        return Ok(None);
    }
    let aside_file = (1..)
        .map(|k| {
            dir.join(if k == 1 { format!("{DAMAGED_PREFIX}.jsonl") } else { format!("{DAMAGED_PREFIX}.{k}.jsonl") })
        })
        .find(|p| fs.kind(p).is_none())
        .unwrap_or_else(|| dir.join(format!("{DAMAGED_PREFIX}.jsonl")));
    let mut set_aside: Vec<usize> = aside.iter().map(|(n, _)| *n).collect();
    if !torn.is_empty() {
        set_aside.push(lines.len() + 1);
    }
    if session.is_none() {
        // No start record: the journal as a whole, unchanged, becomes the set-aside file.
        fs.rename(&path, &aside_file).map_err(StorageError::new("renaming", &path))?;
        fs.sync_dir(dir).map_err(StorageError::new("syncing folder", dir))?;
        let set_aside = (1..=lines.len() + usize::from(!torn.is_empty())).collect();
        return Ok(Some(Repair { dir: dir.to_path_buf(), kept: 0, set_aside, aside_file, torn: !torn.is_empty() }));
    }
    // The damaged lines are safe in their own file before the journal loses them.
    let mut damaged = Vec::new();
    for (_, raw) in &aside {
        damaged.extend_from_slice(raw);
        damaged.push(b'\n');
    }
    damaged.extend_from_slice(torn);
    storage::write_atomic(fs, &aside_file, &damaged)?;
    let mut journal = Vec::new();
    for raw in &kept {
        journal.extend_from_slice(raw);
        journal.push(b'\n');
    }
    storage::write_atomic(fs, &path, &journal)?;
    if session.as_ref().is_some_and(|s| s.finished) {
        for f in ["results.json", "cells.csv"] {
            let p = dir.join(f);
            if fs.kind(&p).is_some() {
                fs.remove_file(&p).map_err(StorageError::new("removing", &p))?;
            }
        }
        fs.sync_dir(dir).map_err(StorageError::new("syncing folder", dir))?;
    }
    Ok(Some(Repair { dir: dir.to_path_buf(), kept: kept.len(), set_aside, aside_file, torn: !torn.is_empty() }))
}

/// Holds the state folder for one process: a second `run` on the same folder
/// would append the same field numbers to the same journal (issue 14).
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// Takes the state folder's advisory lock (flock on `<root>/lock`), held until
/// the returned value is dropped (the process ends, whatever way).
pub fn lock_state(root: &Path) -> Result<StateLock, SessionError> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let path = root.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {
            // The holder's pid, for the message another process shows.
            use std::io::{Seek, Write};
            let _ = file.set_len(0);
            let _ = file.seek(std::io::SeekFrom::Start(0));
            let _ = writeln!(file, "{}", std::process::id());
            Ok(StateLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = match pid.trim() {
                "" => String::new(),
                p => format!(" (process {p})"),
            };
            Err(SessionError::Busy { path: root.to_path_buf(), holder })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
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
    remove_strays(journal.fs.as_ref(), session)?;
    Ok(Some(field))
}

/// Ends the session and writes its report.
pub fn finish(
    session: &mut Session,
    journal: &mut Journal,
    card: &crate::classify::model::ModelCard,
) -> Result<(), SessionError> {
    let e = Entry::Finish { unix_time: unix_time() };
    journal.append(&e)?;
    session.apply(&e).map_err(|why| journal.refused(why))?;
    write_report(journal.fs.as_ref(), session, card)
}

/// The report from the journal. A crop that is gone (the folder deleted by
/// hand) is not pointed to; the report says how many are missing, and so
/// does the log. A repaired journal is mentioned too.
fn write_report(
    fs: &dyn Storage,
    session: &Session,
    card: &crate::classify::model::ModelCard,
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
    let mut doc = session.document_of(card, images);
    doc["session"]["warnings"] = serde_json::json!(warnings);
    report::write_report(fs, &session.dir, &doc, &records).map_err(SessionError::from)
}

/// Deletes crops of fields that are not counted (undone fields, and the field
/// a crash interrupted between its crops and its record) and temporary files
/// an interrupted write left.
fn remove_strays(fs: &dyn Storage, session: &Session) -> Result<(), SessionError> {
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

fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::CellRecord;
    use crate::vision::detect::{FieldScale, Rejected, ScaleSource};

    fn card() -> crate::classify::model::ModelCard {
        crate::classify::model::ModelCard::load(&crate::classify::model::default_card_path()).expect("shipped card")
    }

    fn cell(code: &str, blast: bool) -> CellRecord {
        CellRecord::counted_for_test(code, blast)
    }

    fn field(cells: Vec<CellRecord>) -> FieldRecord {
        FieldRecord {
            path: "test".into(),
            width: 64,
            height: 64,
            cells,
            not_counted: vec![],
            scale: FieldScale::new(0.1, ScaleSource::Configured),
            rejected: Rejected::default(),
        }
    }

    fn thumb() -> PackedThumb {
        crate::vision::gating::Thumb::of(&image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 9])
        }))
        .pack()
    }

    fn os() -> Arc<dyn Storage> {
        Arc::new(Os)
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("leukoscope-session-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn fields_undo_finish_and_resume() {
        let root = tmp("cycle");
        let store = Store::open(&root).unwrap();
        let card = card();
        let img = image::RgbImage::from_pixel(64, 64, image::Rgb([200, 150, 180]));
        let (mut s, mut j) = store.start("", 100, 20.0, &card.sha256).unwrap();
        assert_eq!(s.sample_id, "S0001");
        record_field(&mut s, &mut j, field(vec![cell("MYO", true), cell("NGS", false)]), &img, thumb()).unwrap();
        record_field(&mut s, &mut j, field(vec![cell("LYT", false)]), &img, thumb()).unwrap();
        assert_eq!(undo_last(&mut s, &mut j).unwrap(), Some(2));
        record_field(&mut s, &mut j, field(vec![cell("NGS", false), cell("NGS", false)]), &img, thumb()).unwrap();
        assert_eq!((s.diff.cells(), s.diff.blasts), (4, 1));
        assert_eq!(s.fields.iter().map(|f| f.0).collect::<Vec<_>>(), vec![1, 3]);
        // The crops of the undone field are gone, the others stay.
        let crops: Vec<_> = walk(&s.dir.join("crops"));
        assert_eq!(crops.len(), 4, "{crops:?}");
        assert!(crops.iter().all(|p| !p.contains("f0002")));
        drop(j);
        // A restart rebuilds exactly the same state.
        let (again, mut j2) = store.recover(&card).unwrap().expect("open session");
        assert_eq!(again, s);
        let mut s = again;
        finish(&mut s, &mut j2, &card).unwrap();
        assert_eq!(s.phase(), Phase::Finished);
        let csv = std::fs::read_to_string(s.dir.join("cells.csv")).unwrap();
        assert_eq!(csv.lines().count(), 5);
        assert!(store.recover(&card).unwrap().is_none());
        let (next, _) = store.start("", 100, 20.0, &card.sha256).unwrap();
        assert_eq!(next.sample_id, "S0002");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn torn_last_record_is_cut_and_damage_is_refused() {
        let root = tmp("torn");
        let store = Store::open(&root).unwrap();
        let card = card();
        let img = image::RgbImage::from_pixel(64, 64, image::Rgb([200, 150, 180]));
        let (mut s, mut j) = store.start("A-1", 200, 20.0, &card.sha256).unwrap();
        record_field(&mut s, &mut j, field(vec![cell("NGS", false)]), &img, thumb()).unwrap();
        drop(j);
        let journal = s.dir.join("journal.jsonl");
        let good = std::fs::read(&journal).unwrap();
        // A crash in the middle of appending the next record.
        let mut torn = good.clone();
        torn.extend_from_slice(br#"{"t":"field","field":2,"unix_ti"#);
        std::fs::write(&journal, &torn).unwrap();
        let (again, mut j) = load(&os(), &s.dir).unwrap();
        assert_eq!(again.diff.cells(), 1);
        assert_eq!(std::fs::read(&journal).unwrap(), good, "torn tail removed");
        let mut again = again;
        record_field(&mut again, &mut j, field(vec![cell("LYT", false)]), &img, thumb()).unwrap();
        assert_eq!(load(&os(), &s.dir).unwrap().0.diff.cells(), 2);
        // Damage before the end is never skipped silently.
        let mut bad = std::fs::read(&journal).unwrap();
        let at = bad.iter().position(|&b| b == b'\n').unwrap() + 3;
        bad[at] = b'#';
        std::fs::write(&journal, &bad).unwrap();
        let e = load(&os(), &s.dir).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Issue 14: what two processes left (the same field numbers twice) and a
    /// damaged start record: repair keeps what fits, sets the rest aside, and
    /// the state folder opens again.
    #[test]
    fn repair_sets_aside_duplicates_and_a_damaged_start() {
        let root = tmp("repair");
        let store = Store::open(&root).unwrap();
        let card = card();
        let img = image::RgbImage::from_pixel(64, 64, image::Rgb([200, 150, 180]));
        let (mut s, mut j) = store.start("", 100, 20.0, &card.sha256).unwrap();
        for code in ["NGS", "LYT", "MYO", "NGS"] {
            record_field(&mut s, &mut j, field(vec![cell(code, code == "MYO")]), &img, thumb()).unwrap();
        }
        drop(j);
        let journal = s.dir.join(JOURNAL);
        let good = std::fs::read(&journal).unwrap();
        // A second process appended fields 4 and 5 again after them.
        let lines: Vec<&[u8]> = good.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        let mut doubled = good.clone();
        for l in &lines[3..5] {
            doubled.extend_from_slice(l);
            doubled.push(b'\n');
        }
        std::fs::write(&journal, &doubled).unwrap();
        let e = load(&os(), &s.dir).unwrap_err().to_string();
        assert!(e.contains("line 6") && e.contains("field 3 recorded twice"), "{e}");
        let r = store.repair().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].kept, r[0].set_aside.clone()), (5, vec![6, 7]));
        assert_eq!(std::fs::read(&journal).unwrap(), good);
        let (again, _) = load(&os(), &s.dir).unwrap();
        assert_eq!(again, s);
        assert!(store.repair().unwrap().is_empty(), "nothing left to repair");
        // A damaged start record: nothing fits, the journal goes aside whole
        // and the folder is no longer a session; the next start is a new one.
        let mut bad = good.clone();
        bad[2] = b'#';
        std::fs::write(&journal, &bad).unwrap();
        let r = store.repair().unwrap();
        assert_eq!((r[0].kept, r[0].set_aside.len()), (0, lines.len()));
        assert_eq!(std::fs::read(&r[0].aside_file).unwrap(), bad);
        assert!(r[0].aside_file.ends_with("journal.damaged.2.jsonl"), "{:?}", r[0].aside_file);
        assert!(store.recover(&card).unwrap().is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn walk(d: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path().display().to_string());
            }
        }
        out
    }
}
