//! `session repair`: what a damaged journal keeps and what it sets aside.

use super::journal::{parse_line, split_lines};
use super::{Session, SessionError, DAMAGED_PREFIX, JOURNAL};
use crate::storage::{self, Storage, StorageError};
use std::path::{Path, PathBuf};

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

pub(super) fn repair_journal(fs: &dyn Storage, dir: &Path) -> Result<Option<Repair>, SessionError> {
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
