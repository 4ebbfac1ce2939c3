//! The journal: appending records durably, and reading them back.

use super::{Entry, Session, SessionError, JOURNAL};
use crate::storage::{Storage, StorageError, StorageFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The append side of an open session.
pub struct Journal {
    path: PathBuf,
    file: Box<dyn StorageFile>,
    pub(super) fs: Arc<dyn Storage>,
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
    pub(super) fn refused(&self, why: String) -> SessionError {
        SessionError::Corrupt { path: self.path.clone(), line: self.lines, why }
    }
}

/// One journal line read back: the entry, or why it is damaged.
pub(super) fn parse_line(raw: &[u8]) -> Result<Entry, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8 text ({e})"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// The journal's lines (1-based numbers), and a torn last line without its
/// newline (the crash hit mid-append) apart.
pub(super) fn split_lines(bytes: &[u8]) -> (Vec<(usize, &[u8])>, &[u8]) {
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
