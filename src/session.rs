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

use crate::count::{Differential, Summary};
use crate::gating::PackedThumb;
use crate::report::{self, FieldRecord};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session storage {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("journal {path} line {line} is damaged: {why}")]
    Corrupt { path: PathBuf, line: usize, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SessionError + '_ {
    move |source| SessionError::Io { path: path.to_path_buf(), source }
}

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
    pub fn document(&self, card: &crate::model::ModelCard) -> serde_json::Value {
        let images = self.fields.iter().filter_map(|(_, r)| serde_json::to_value(r).ok()).collect();
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
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Appends one record and makes it durable before returning.
    pub fn append(&mut self, e: &Entry) -> Result<(), SessionError> {
        let mut line = serde_json::to_vec(e)
            .map_err(|e| SessionError::Io { path: self.path.clone(), source: std::io::Error::other(e) })?;
        line.push(b'\n');
        // One write call: a crash leaves a whole line or a torn tail, which loading discards.
        self.file.write_all(&line).map_err(io(&self.path))?;
        self.file.sync_data().map_err(io(&self.path))
    }
}

/// Reads a journal. A torn last line (no newline: the crash hit mid-append) is
/// cut off; any other damage is an error, never silently skipped.
pub fn load(dir: &Path) -> Result<(Session, Journal), SessionError> {
    let path = dir.join("journal.jsonl");
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&bytes[..complete]).map_err(|e| SessionError::Corrupt {
        path: path.clone(),
        line: 0,
        why: e.to_string(),
    })?;
    let corrupt = |line: usize, why: String| SessionError::Corrupt { path: path.clone(), line, why };
    let mut session: Option<Session> = None;
    for (i, l) in text.lines().enumerate() {
        let e: Entry = serde_json::from_str(l).map_err(|err| corrupt(i + 1, err.to_string()))?;
        match session.as_mut() {
            None => {
                session = Some(Session::from_start(dir, &e).ok_or_else(|| corrupt(i + 1, "no start record".into()))?)
            }
            Some(s) => s.apply(&e).map_err(|why| corrupt(i + 1, why))?,
        }
    }
    let file = OpenOptions::new().append(true).open(&path).map_err(io(&path))?;
    if complete < bytes.len() {
        log::warn!("{}: discarding a torn last record ({} bytes)", path.display(), bytes.len() - complete);
        file.set_len(complete as u64).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
    }
    let session = session.ok_or_else(|| corrupt(1, "empty journal".into()))?;
    Ok((session, Journal { path, file }))
}

/// The folder holding all sessions, and the sample counter.
pub struct Store {
    pub root: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, SessionError> {
        std::fs::create_dir_all(root.join("sessions")).map_err(io(root))?;
        Ok(Store { root: root.to_path_buf() })
    }

    fn session_dirs(&self) -> Result<Vec<PathBuf>, SessionError> {
        let d = self.root.join("sessions");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&d)
            .map_err(io(&d))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("journal.jsonl").is_file())
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Finds the session a crash left open, or a finished one whose report was
    /// not completely written (which is then written). Sessions are numbered,
    /// so the newest is last.
    pub fn recover(&self, card: &crate::model::ModelCard) -> Result<Option<(Session, Journal)>, SessionError> {
        for dir in self.session_dirs()? {
            let (s, j) = load(&dir)?;
            remove_orphan_crops(&s)?;
            if !s.finished {
                return Ok(Some((s, j)));
            }
            if !dir.join("cells.csv").is_file() {
                log::warn!("{}: finished but its report is incomplete: writing it", dir.display());
                write_report(&s, card)?;
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
        std::fs::create_dir_all(dir.join("crops")).map_err(io(&dir))?;
        let start = Entry::Start {
            sample_id,
            target,
            threshold_percent,
            model_sha256: model_sha256.to_string(),
            unix_time: unix_time(),
        };
        // The journal appears complete or not at all.
        let line = serde_json::to_string(&start).unwrap_or_default() + "\n";
        report::write_atomic(&dir.join("journal.jsonl"), line.as_bytes()).map_err(io(&dir))?;
        load(&dir)
    }

    /// Next sample number, persisted before it is used, so numbers never repeat.
    fn bump_counter(&self) -> Result<u64, SessionError> {
        let p = self.root.join("counter");
        let last: u64 = std::fs::read_to_string(&p).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
        // Also past any existing session folder, in case the counter file was lost.
        let seen = self
            .session_dirs()?
            .iter()
            .filter_map(|d| d.file_name()?.to_str()?.split('-').next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let n = last.max(seen) + 1;
        report::write_atomic(&p, format!("{n}\n").as_bytes()).map_err(io(&p))?;
        Ok(n)
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
    record.write_crops(&session.dir, &format!("f{field:04}"), img).map_err(io(&session.dir))?;
    let e = Entry::Field { field, unix_time: unix_time(), record, thumb };
    journal.append(&e)?;
    session.apply(&e).map_err(|why| SessionError::Corrupt { path: journal.path.clone(), line: 0, why })?;
    Ok(field)
}

/// Takes back the last counted field; returns its number.
pub fn undo_last(session: &mut Session, journal: &mut Journal) -> Result<Option<u64>, SessionError> {
    let Some(&(field, _)) = session.fields.last() else { return Ok(None) };
    let e = Entry::Undo { field };
    journal.append(&e)?;
    session.apply(&e).map_err(|why| SessionError::Corrupt { path: journal.path.clone(), line: 0, why })?;
    remove_orphan_crops(session)?;
    Ok(Some(field))
}

/// Ends the session and writes its report.
pub fn finish(
    session: &mut Session,
    journal: &mut Journal,
    card: &crate::model::ModelCard,
) -> Result<(), SessionError> {
    let e = Entry::Finish { unix_time: unix_time() };
    journal.append(&e)?;
    session.apply(&e).map_err(|why| SessionError::Corrupt { path: journal.path.clone(), line: 0, why })?;
    write_report(session, card)
}

fn write_report(session: &Session, card: &crate::model::ModelCard) -> Result<(), SessionError> {
    let records: Vec<FieldRecord> = session.fields.iter().map(|(_, r)| r.clone()).collect();
    report::write_report(&session.dir, &session.document(card), &records).map_err(io(&session.dir))
}

/// Deletes crops of fields that are not counted: undone fields, and the field
/// a crash interrupted between its crops and its record.
fn remove_orphan_crops(session: &Session) -> Result<(), SessionError> {
    let live: std::collections::HashSet<u64> = session.fields.iter().map(|(n, _)| *n).collect();
    let crops = session.dir.join("crops");
    let Ok(groups) = std::fs::read_dir(&crops) else { return Ok(()) };
    for g in groups.flatten() {
        let Ok(files) = std::fs::read_dir(g.path()) else { continue };
        for f in files.flatten() {
            let name = f.file_name();
            let name = name.to_string_lossy();
            let field = name.strip_prefix('f').and_then(|r| r.split('_').next()).and_then(|n| n.parse::<u64>().ok());
            let orphan = match field {
                Some(n) => !live.contains(&n),
                None => name.ends_with(".tmp"),
            };
            if orphan {
                std::fs::remove_file(f.path()).map_err(io(&f.path()))?;
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
    use crate::count::Call;
    use crate::detect::{FieldScale, Rejected, ScaleSource};
    use crate::report::CellRecord;

    fn card() -> crate::model::ModelCard {
        crate::model::ModelCard::load(&crate::model::default_card_path()).expect("shipped card")
    }

    fn cell(code: &str, blast: bool) -> CellRecord {
        CellRecord {
            bbox: [10, 10, 40, 40],
            class: code.into(),
            label: code.into(),
            confidence: 0.9,
            blast,
            best_class: code.into(),
            call: Call::Cell { code: code.into(), blast, abnormal: blast },
            nucleus_area_um2: None,
            nucleus_diameter_um: None,
            reason: None,
            crop: None,
        }
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
        crate::gating::Thumb::of(&image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 9])
        }))
        .pack()
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
        let (again, mut j) = load(&s.dir).unwrap();
        assert_eq!(again.diff.cells(), 1);
        assert_eq!(std::fs::read(&journal).unwrap(), good, "torn tail removed");
        let mut again = again;
        record_field(&mut again, &mut j, field(vec![cell("LYT", false)]), &img, thumb()).unwrap();
        assert_eq!(load(&s.dir).unwrap().0.diff.cells(), 2);
        // Damage before the end is never skipped silently.
        let mut bad = std::fs::read(&journal).unwrap();
        let at = bad.iter().position(|&b| b == b'\n').unwrap() + 3;
        bad[at] = b'#';
        std::fs::write(&journal, &bad).unwrap();
        let e = load(&s.dir).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
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
