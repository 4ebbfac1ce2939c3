//! Power cuts in the SQLite manner: the session's journal and report go through
//! a simulated disk that records every write, fsync and rename and, at a chosen
//! operation, loses power. What was not fsync'd is dropped (a new name or a
//! rename needs its folder fsync'd), or the last unsynced write is torn at a
//! 512-byte boundary. After each cut the state folder is opened again as `run`
//! does at boot, and:
//! - the recovered session equals the uninterrupted one before or after the
//!   step in flight (nothing acknowledged is lost, nothing half-done counts),
//!   and holds no crop that is not counted;
//! - resumed (the lost step done again) to the end, its report is byte for byte
//!   the uninterrupted run's, and every crop it names exists with its bytes.
//!
//! Also: a full disk (ENOSPC at the Nth write) leaves a report whole or absent,
//! never a `*.tmp`, and the error names the file.
//!
//! LEUKOSCOPE_CUTS sets how many cuts at least (default 2,000).

use image::RgbImage;
use leukoscope::appliance::session::{self, Journal, Session, Store};
use leukoscope::classify::model::ModelCard;
use leukoscope::report::{FieldRecord, OutFolder};
use leukoscope::storage::{Kind, Storage, StorageFile};
use leukoscope::vision::gating::PackedThumb;
use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

mod common;

// ---------------------------------------------------------------- the disk

enum Node {
    File { data: Vec<u8>, durable: Vec<u8> },
    Dir { entries: BTreeMap<String, usize>, durable: BTreeMap<String, usize> },
}

/// How the next power cut treats unsynced data.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    /// Everything not fsync'd is lost.
    Drop,
    /// As Drop, but the last unsynced write reaches the disk up to a 512-byte
    /// boundary chosen by this number.
    Tear(u64),
}

#[derive(Default)]
struct State {
    nodes: Vec<Option<Node>>,
    /// Mutating operations so far.
    ops: u64,
    /// Power fails at this operation (it does not happen, nor anything after).
    cut_at: Option<u64>,
    dead: bool,
    /// Writes not yet fsync'd, oldest first: (node, offset, bytes).
    unsynced: Vec<(usize, usize, Vec<u8>)>,
    /// The disk is full from this write on (1-based count of writes).
    full_at: Option<u64>,
    writes: u64,
}

const ROOT: &str = "/sim";

/// A disk in memory that forgets what was not made durable.
#[derive(Clone)]
struct SimFs(Arc<Mutex<State>>);

fn err(kind: io::ErrorKind, what: &str) -> io::Error {
    io::Error::new(kind, what.to_string())
}

fn lost() -> io::Error {
    err(io::ErrorKind::Other, "power lost")
}

impl State {
    fn new() -> State {
        let mut s = State::default();
        s.nodes.push(Some(Node::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() }));
        s
    }

    /// Counts a mutating operation; fails from the cut on.
    fn tick(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(lost());
        }
        self.ops += 1;
        if self.cut_at == Some(self.ops) {
            self.dead = true;
            return Err(lost());
        }
        Ok(())
    }

    fn names(path: &Path) -> io::Result<Vec<String>> {
        let rest = path.strip_prefix(ROOT).map_err(|_| err(io::ErrorKind::NotFound, "outside the simulated disk"))?;
        rest.components()
            .map(|c| match c {
                Component::Normal(n) => Ok(n.to_string_lossy().into_owned()),
                _ => Err(err(io::ErrorKind::InvalidInput, "unexpected path component")),
            })
            .collect()
    }

    fn dir_entries(&self, n: usize) -> Option<&BTreeMap<String, usize>> {
        match self.nodes[n].as_ref()? {
            Node::Dir { entries, .. } => Some(entries),
            Node::File { .. } => None,
        }
    }

    fn lookup(&self, path: &Path) -> io::Result<usize> {
        let mut n = 0;
        for name in State::names(path)? {
            n = *self
                .dir_entries(n)
                .ok_or_else(|| err(io::ErrorKind::NotADirectory, "not a folder"))?
                .get(&name)
                .ok_or_else(|| err(io::ErrorKind::NotFound, "no such file"))?;
        }
        Ok(n)
    }

    /// The parent folder's node and the last name.
    fn parent_of(&self, path: &Path) -> io::Result<(usize, String)> {
        let mut names = State::names(path)?;
        let last = names.pop().ok_or_else(|| err(io::ErrorKind::InvalidInput, "the root"))?;
        let mut p = PathBuf::from(ROOT);
        p.extend(&names);
        let d = self.lookup(&p)?;
        self.dir_entries(d).ok_or_else(|| err(io::ErrorKind::NotADirectory, "not a folder"))?;
        Ok((d, last))
    }

    fn entries_mut(&mut self, d: usize) -> &mut BTreeMap<String, usize> {
        match self.nodes[d].as_mut() {
            Some(Node::Dir { entries, .. }) => entries,
            _ => unreachable!("checked to be a folder"),
        }
    }

    fn add(&mut self, node: Node) -> usize {
        self.nodes.push(Some(node));
        self.nodes.len() - 1
    }

    /// The power cut: the tree the disk holds is the durable one.
    fn crash(&mut self, how: Cut) {
        let torn = match how {
            Cut::Tear(r) => self.unsynced.last().cloned().map(|w| (w, r)),
            Cut::Drop => None,
        };
        for node in self.nodes.iter_mut().flatten() {
            match node {
                Node::File { data, durable } => *data = durable.clone(),
                Node::Dir { entries, durable } => *entries = durable.clone(),
            }
        }
        if let Some(((n, off, bytes), r)) = torn {
            // The boundaries strictly inside the write: some of it lands, not all.
            let first = off / 512 + 1;
            let last = (off + bytes.len()).div_ceil(512) - 1;
            if first <= last {
                let b = (first + (r as usize) % (last - first + 1)) * 512;
                if let Some(Node::File { data, durable }) = self.nodes[n].as_mut() {
                    if data.len() < off {
                        data.resize(off, 0);
                    }
                    let end = b.min(off + bytes.len());
                    let keep = &bytes[..end - off];
                    if data.len() < end {
                        data.resize(end, 0);
                    }
                    data[off..end].copy_from_slice(keep);
                    *durable = data.clone();
                }
            }
        }
        self.unsynced.clear();
        self.dead = false;
        self.cut_at = None;
    }
}

struct SimFile {
    fs: SimFs,
    node: usize,
    pos: usize,
    append: bool,
}

impl StorageFile for SimFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.fs.0.lock().expect("disk");
        if s.dead {
            return Err(lost());
        }
        s.writes += 1;
        if s.full_at.is_some_and(|n| s.writes >= n) {
            return Err(io::Error::from_raw_os_error(28));
        }
        let node = self.node;
        let Some(Node::File { data, .. }) = s.nodes[node].as_mut() else {
            return Err(err(io::ErrorKind::NotFound, "gone"));
        };
        let off = if self.append { data.len() } else { self.pos };
        if data.len() < off + bytes.len() {
            data.resize(off + bytes.len(), 0);
        }
        data[off..off + bytes.len()].copy_from_slice(bytes);
        self.pos = off + bytes.len();
        s.unsynced.push((node, off, bytes.to_vec()));
        // A cut at a write lands after it began: that write can be torn.
        s.tick()
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.fs.0.lock().expect("disk");
        s.tick()?;
        let node = self.node;
        if let Some(Node::File { data, durable }) = s.nodes[node].as_mut() {
            *durable = data.clone();
        }
        s.unsynced.retain(|w| w.0 != node);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.fs.0.lock().expect("disk");
        s.tick()?;
        if let Some(Node::File { data, .. }) = s.nodes[self.node].as_mut() {
            data.resize(len as usize, 0);
        }
        Ok(())
    }
}

impl SimFs {
    fn new() -> SimFs {
        SimFs(Arc::new(Mutex::new(State::new())))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("disk")
    }

    fn open(&self, path: &Path, truncate: bool) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.state();
        s.tick()?;
        let node = match s.lookup(path) {
            Ok(n) => {
                if !matches!(s.nodes[n], Some(Node::File { .. })) {
                    return Err(err(io::ErrorKind::IsADirectory, "a folder"));
                }
                if truncate {
                    if let Some(Node::File { data, .. }) = s.nodes[n].as_mut() {
                        data.clear();
                    }
                }
                n
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && truncate => {
                let (d, name) = s.parent_of(path)?;
                let n = s.add(Node::File { data: Vec::new(), durable: Vec::new() });
                s.entries_mut(d).insert(name, n);
                n
            }
            Err(e) => return Err(e),
        };
        Ok(Box::new(SimFile { fs: self.clone(), node, pos: 0, append: !truncate }))
    }

    /// Every file under `dir` with its bytes, by path relative to it.
    fn files(&self, dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let s = self.state();
        let Ok(n) = s.lookup(dir) else { return out };
        let mut todo = vec![(n, String::new())];
        while let Some((n, prefix)) = todo.pop() {
            match s.nodes[n].as_ref() {
                Some(Node::Dir { entries, .. }) => {
                    for (name, &c) in entries {
                        todo.push((c, if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") }));
                    }
                }
                Some(Node::File { data, .. }) => {
                    out.insert(prefix, data.clone());
                }
                None => {}
            }
        }
        out
    }
}

impl Storage for SimFs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.state();
        if s.dead {
            return Err(lost());
        }
        match s.nodes[s.lookup(path)?].as_ref() {
            Some(Node::File { data, .. }) => Ok(data.clone()),
            _ => Err(err(io::ErrorKind::IsADirectory, "a folder")),
        }
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.open(path, true)
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.open(path, false)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.tick()?;
        let n = s.lookup(from)?;
        let (fd, fname) = s.parent_of(from)?;
        let (td, tname) = s.parent_of(to)?;
        if let Ok(old) = s.lookup(to) {
            match (s.nodes[old].as_ref(), s.nodes[n].as_ref()) {
                (Some(Node::Dir { entries, .. }), Some(Node::Dir { .. })) if entries.is_empty() => {}
                (Some(Node::File { .. }), Some(Node::File { .. })) => {}
                _ => return Err(err(io::ErrorKind::DirectoryNotEmpty, "target in the way")),
            }
        }
        s.entries_mut(fd).remove(&fname);
        s.entries_mut(td).insert(tname, n);
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.tick()?;
        let n = s.lookup(path)?;
        if !matches!(s.nodes[n], Some(Node::File { .. })) {
            return Err(err(io::ErrorKind::IsADirectory, "a folder"));
        }
        let (d, name) = s.parent_of(path)?;
        s.entries_mut(d).remove(&name);
        Ok(())
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.tick()?;
        if s.lookup(path).is_ok() {
            return Err(err(io::ErrorKind::AlreadyExists, "exists"));
        }
        let (d, name) = s.parent_of(path)?;
        let n = s.add(Node::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() });
        s.entries_mut(d).insert(name, n);
        Ok(())
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.tick()?;
        s.lookup(path)?;
        let (d, name) = s.parent_of(path)?;
        s.entries_mut(d).remove(&name);
        Ok(())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.tick()?;
        let n = s.lookup(path)?;
        match s.nodes[n].as_mut() {
            Some(Node::Dir { entries, durable }) => *durable = entries.clone(),
            _ => return Err(err(io::ErrorKind::NotADirectory, "not a folder")),
        }
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, Kind)>> {
        let s = self.state();
        if s.dead {
            return Err(lost());
        }
        let n = s.lookup(dir)?;
        let entries = s.dir_entries(n).ok_or_else(|| err(io::ErrorKind::NotADirectory, "not a folder"))?;
        Ok(entries
            .iter()
            .map(|(name, &c)| {
                (name.clone(), if matches!(s.nodes[c], Some(Node::Dir { .. })) { Kind::Dir } else { Kind::File })
            })
            .collect())
    }
    fn kind(&self, path: &Path) -> Option<Kind> {
        let s = self.state();
        let n = s.lookup(path).ok()?;
        Some(if matches!(s.nodes[n], Some(Node::Dir { .. })) { Kind::Dir } else { Kind::File })
    }
}

// ---------------------------------------------------------------- the session

/// A real field: its analysis, image (for the crops) and gate fingerprint.
struct Field {
    record: FieldRecord,
    image: RgbImage,
    thumb: PackedThumb,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// Starts the session of `SAMPLES[i]`.
    Start(usize),
    Field(usize),
    Undo,
    Finish,
}

const SAMPLES: [&str; 2] = ["P-1", "P-2"];

fn state_root() -> PathBuf {
    Path::new(ROOT).join("state")
}

struct Run<'a> {
    fs: SimFs,
    store: Option<Store>,
    open: Option<(Session, Journal)>,
    fields: &'a [Field],
    card: &'a ModelCard,
}

impl<'a> Run<'a> {
    fn new(fields: &'a [Field], card: &'a ModelCard) -> Run<'a> {
        Run { fs: SimFs::new(), store: None, open: None, fields, card }
    }

    /// Boot: open the state folder and resume what a cut left.
    fn boot(&mut self) -> Result<(), session::SessionError> {
        self.open = None;
        self.store = None;
        let store = Store::with_storage(Arc::new(self.fs.clone()), &state_root())?;
        self.open = store.recover(self.card, &leukoscope::vision::detect::DetectParams::default())?;
        self.store = Some(store);
        Ok(())
    }

    fn step(&mut self, step: Step) -> Result<(), session::SessionError> {
        let store = self.store.as_ref().expect("booted");
        match (step, self.open.as_mut()) {
            (Step::Start(i), None) => self.open = Some(store.start(SAMPLES[i], 100, 20.0, &self.card.sha256)?),
            (Step::Field(i), Some((s, j))) => {
                let f = &self.fields[i];
                session::record_field(s, j, f.record.clone(), &f.image, f.thumb.clone())?;
            }
            (Step::Undo, Some((s, j))) => {
                session::undo_last(s, j)?;
            }
            (Step::Finish, Some(_)) => {
                if let Some((mut s, mut j)) = self.open.take() {
                    session::finish(&mut s, &mut j, self.card, &leukoscope::vision::detect::DetectParams::default())?;
                }
            }
            (step, open) => panic!("step {step:?} with a session open: {}", open.is_some()),
        }
        Ok(())
    }

    /// The session folders by sample (their numbers may differ between runs:
    /// a start redone after the counter moved on).
    fn session_dirs(&self) -> BTreeMap<String, PathBuf> {
        let sessions = state_root().join("sessions");
        let mut out = BTreeMap::new();
        for (name, kind) in self.fs.list(&sessions).unwrap_or_default() {
            // A cut during a start can leave a session's folder without its journal: not a session.
            if kind != Kind::Dir || self.fs.kind(&sessions.join(&name).join("journal.jsonl")).is_none() {
                continue;
            }
            let sample = name.split_once('-').map_or(name.clone(), |(_, s)| s.to_string());
            assert!(out.insert(sample, sessions.join(&name)).is_none(), "two sessions of one sample: {name}");
        }
        out
    }

    fn session_dir(&self) -> Option<PathBuf> {
        self.session_dirs().into_values().last()
    }

    /// The reports and crops of the sessions, by sample.
    fn outcome(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for (sample, dir) in self.session_dirs() {
            for (name, bytes) in self.fs.files(&dir) {
                if name != "journal.jsonl" {
                    out.insert(format!("{sample}/{name}"), bytes);
                }
            }
        }
        out
    }
}

fn script() -> Vec<Step> {
    use Step::*;
    // A second session after the first: a cut then finds out whether the
    // first one's report really reached the disk.
    vec![
        Start(0),
        Field(0),
        Field(1),
        Field(2),
        Undo,
        Field(3),
        Field(4),
        Undo,
        Undo,
        Field(5),
        Finish,
        Start(1),
        Field(6),
        Finish,
    ]
}

fn fields() -> (Vec<Field>, ModelCard) {
    let config = leukoscope::config::Config::default();
    let classifier = leukoscope::classify::model::Classifier::load(&leukoscope::classify::model::default_card_path())
        .expect("model");
    let rules = leukoscope::classify::count::CallRules::from_card(&classifier.card);
    let analyzer =
        leukoscope::classify::pipeline::Analyzer { classifier, rules, detect: config.detect, um_per_px: None };
    let card = analyzer.classifier.card.clone();
    let fields = common::bccd_field_paths()
        .into_iter()
        .skip(60)
        .take(7)
        .map(|p| {
            let image = leukoscope::input::load_rgb(&p).expect("field");
            let r = analyzer.analyze(&image).expect("analyze");
            let record = FieldRecord::new(&card, &p.display().to_string(), &r);
            let thumb = leukoscope::vision::gating::Thumb::of(&image).pack();
            Field { record, image, thumb }
        })
        .collect();
    (fields, card)
}

/// The state after each prefix of the script, uninterrupted; the final files;
/// the number of operations the whole run takes.
struct Reference {
    after: Vec<Option<Session>>,
    files: BTreeMap<String, Vec<u8>>,
    ops: u64,
}

fn reference(fields: &[Field], card: &ModelCard) -> Reference {
    let mut run = Run::new(fields, card);
    run.boot().expect("boot");
    let mut after = vec![None];
    for step in script() {
        run.step(step).expect("uninterrupted step");
        after.push(run.open.as_ref().map(|(s, _)| s.clone()));
    }
    let ops = run.fs.state().ops;
    Reference { after, files: run.outcome(), ops }
}

/// The session as a reboot finds it: its state and its crop files.
fn recovered(run: &Run) -> Option<Session> {
    run.open.as_ref().map(|(s, _)| s.clone())
}

fn crops_named(s: &Session) -> Vec<String> {
    let mut v: Vec<String> = s
        .fields
        .iter()
        .flat_map(|(_, r)| r.cells.iter().chain(&r.not_counted))
        .filter_map(|c| c.crop.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn power_cuts_lose_at_most_the_step_in_flight() {
    let want: u64 = std::env::var("LEUKOSCOPE_CUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let (fields, card) = fields();
    let cells: usize = fields.iter().map(|f| f.record.cells.len()).sum();
    assert!(cells >= fields.len() - 1, "the fields should hold leukocytes to crop: {cells}");
    let reference = reference(&fields, &card);
    let steps = script();
    let t0 = std::time::Instant::now();

    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut cuts, mut runs, mut torn_cuts) = (0u64, 0u64, 0u64);
    let mut in_flight_lost = 0u64;
    while cuts < want {
        runs += 1;
        let mut run = Run::new(&fields, &card);
        // 1 to 3 cuts in this run, at random operations ahead.
        let mut cuts_left = 1 + rand() % 3;
        let arm = |run: &Run, r: u64| {
            let mut s = run.fs.state();
            s.cut_at = Some(s.ops + 1 + r % reference.ops);
        };
        run.boot().expect("first boot");
        arm(&run, rand());
        // Steps acknowledged so far (the prefix of the script done).
        let mut done = 0;
        while done < steps.len() {
            match run.step(steps[done]) {
                Ok(()) => done += 1,
                Err(e) => {
                    assert!(
                        leukoscope::error_text(&e).contains("power lost"),
                        "run {runs}: a failure that is not the cut: {e}"
                    );
                    cuts += 1;
                    let how = if rand() % 2 == 0 { Cut::Drop } else { Cut::Tear(rand()) };
                    torn_cuts += matches!(how, Cut::Tear(_)) as u64;
                    run.fs.state().crash(how);
                    // A FINISH acknowledged means its report is on the disk, as
                    // it is, before any recovery could write it again.
                    let mut sample = None;
                    for step in &steps[..done] {
                        match step {
                            Step::Start(i) => sample = Some(SAMPLES[*i]),
                            Step::Finish => {
                                let sample = sample.expect("started");
                                let dir = run.session_dirs().remove(sample).expect("finished session");
                                let files = run.fs.files(&dir);
                                for f in ["results.json", "cells.csv"] {
                                    assert!(
                                        files.get(f) == reference.files.get(&format!("{sample}/{f}")),
                                        "run {runs}: {sample}'s {f}, acknowledged, is not on the disk after a cut"
                                    );
                                }
                            }
                            _ => {}
                        }
                    }
                    cuts_left -= 1;
                    if cuts_left > 0 {
                        arm(&run, rand());
                    }
                    // Boot, possibly cut again while recovering.
                    while let Err(e) = run.boot() {
                        assert!(leukoscope::error_text(&e).contains("power lost"), "run {runs}: recovery failed: {e}");
                        cuts += 1;
                        run.fs.state().crash(Cut::Drop);
                    }
                    let got = recovered(&run);
                    let before = &reference.after[done];
                    let after = reference.after.get(done + 1).cloned().flatten();
                    // Finished sessions are not reopened: compare what the disk says.
                    // A finished session is not reopened (None after Finish);
                    // the report is checked at the end. The folder's number may
                    // differ (a start redone after the counter moved on).
                    let matches = |want: &Option<Session>| match (want, &got) {
                        (Some(w), Some(g)) => Session { dir: g.dir.clone(), ..w.clone() } == *g,
                        (None, None) => true,
                        _ => false,
                    };
                    if matches(&after) {
                        done += 1;
                    } else if matches(before) {
                        in_flight_lost += 1;
                    } else {
                        panic!(
                            "run {runs}, cut during step {done} ({:?}): the recovered session is neither the one \
                             before nor after it: {:?} fields (before: {:?}, after: {:?})",
                            steps[done],
                            got.as_ref().map(|s| s.fields.iter().map(|f| f.0).collect::<Vec<_>>()),
                            before.as_ref().map(|s| s.fields.iter().map(|f| f.0).collect::<Vec<_>>()),
                            after.as_ref().map(|s| s.fields.iter().map(|f| f.0).collect::<Vec<_>>()),
                        );
                    }
                    // No crop that is not counted, and every counted one there.
                    if let Some(s) = &got {
                        let mut on_disk: Vec<String> =
                            run.fs.files(&s.dir.join("crops")).into_keys().map(|k| format!("crops/{k}")).collect();
                        on_disk.sort();
                        assert_eq!(on_disk, crops_named(s), "run {runs}: crops after the cut in step {done}");
                    }
                }
            }
        }
        let files = run.outcome();
        let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&files), names(&reference.files), "run {runs}: the report folder differs");
        for (name, bytes) in &reference.files {
            assert!(same_file(name, &files[name], bytes), "run {runs}: {name} differs from the uninterrupted run's");
        }
    }
    eprintln!(
        "{cuts} power cuts ({torn_cuts} with a torn write) in {runs} runs of {} operations, {:.1} s: every recovered \
         session was the one before or after the step in flight ({in_flight_lost} times before), and every report \
         equal to the uninterrupted run's ({} files)",
        reference.ops,
        t0.elapsed().as_secs_f64(),
        reference.files.len()
    );
}

/// Issue 14: a full disk while a session's report is written, at every
/// possible write: the error names the file, the session folder holds both
/// report files or neither and no temporary file, and the next boot writes it.
#[test]
fn a_full_disk_leaves_the_session_report_whole_or_absent() {
    let (fields, card) = fields();
    let mut n = 1;
    loop {
        let mut run = Run::new(&fields, &card);
        run.boot().expect("boot");
        for step in &script()[..script().len() - 1] {
            run.step(*step).expect("step");
        }
        let writes = run.fs.state().writes;
        run.fs.state().full_at = Some(writes + n);
        let result = run.step(Step::Finish);
        let dir = run.session_dir().expect("session");
        let files = run.fs.files(&dir);
        let Err(e) = result else {
            assert!(n > 2, "finishing writes a journal record and two report files");
            break;
        };
        let e = leukoscope::error_text(&e);
        assert!(e.contains("No space left on device"), "{e}");
        assert!(
            ["journal.jsonl", "results.json", "cells.csv", "report.html", "report.fhir.json", "report.hl7"]
                .iter()
                .any(|f| e.contains(&format!("{}/{f}", dir.display()))),
            "write {n}: the error names the file: {e}"
        );
        assert!(files.keys().all(|f| !f.ends_with(".tmp")), "write {n}: temporary files left: {:?}", files.keys());
        let report = ["results.json", "cells.csv"].map(|f| files.contains_key(f));
        assert!(report == [false, false], "write {n}: half a report: {report:?}");
        // Space freed, next boot: the session is finished (its record is durable)
        // or still open; either way a finish then gives the whole report.
        run.fs.state().full_at = None;
        run.boot().expect("boot after the disk filled");
        if run.open.is_some() {
            run.step(Step::Finish).expect("finish");
        }
        let files = run.fs.files(&dir);
        assert!(files.contains_key("results.json") && files.contains_key("cells.csv"), "write {n}");
        n += 1;
    }
}

/// Issue 14: `analyze --out` with a full disk at every possible write: the
/// error names the file, and the folder holds the old report, untouched, or the
/// whole new one; no temporary folder is left beside it.
#[test]
fn a_full_disk_leaves_an_out_folder_old_or_new() {
    let (fields, _card) = fields();
    let fs = SimFs::new();
    let out = out_dir();
    let write = write_out;
    write(&fs, &fields[..3], "old").expect("the old report");
    let old = fs.files(&out);
    let mut n = 1;
    loop {
        fs.state().writes = 0;
        fs.state().full_at = Some(n);
        let result = write(&fs, &fields[3..], "new");
        fs.state().full_at = None;
        let now = fs.files(&out);
        let beside: Vec<String> =
            fs.list(out.parent().expect("parent")).expect("list").into_iter().map(|e| e.0).collect();
        assert_eq!(beside, vec!["out".to_string()], "write {n}: nothing left beside the report");
        match result {
            Err(e) => {
                let named = [".png", "cells.csv", "results.json", "report.html", "report.fhir.json", "report.hl7"]
                    .iter()
                    .any(|f| e.contains(f));
                assert!(e.contains("No space left on device") && named, "write {n}: {e}");
                assert!(same_files(&now, &old), "write {n}: the old report must be untouched");
            }
            Ok(()) => {
                assert!(now.keys().all(|k| !k.contains("old")), "write {n}: old crops left: {:?}", now.keys());
                assert!(now.keys().any(|k| k.contains("new")) && now.contains_key("cells.csv"), "write {n}");
                break;
            }
        }
        n += 1;
    }
    assert!(n > 3, "the new report takes several writes");
}

fn out_dir() -> PathBuf {
    Path::new(ROOT).join("reports/out")
}

/// `analyze --out --force` of these fields, `tag` in the file names.
fn write_out(fs: &SimFs, fields: &[Field], tag: &str) -> Result<(), String> {
    let folder = OutFolder::begin(fs, &out_dir(), true).map_err(|e| leukoscope::error_text(&e))?;
    let mut records = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let mut r = f.record.clone();
        r.write_crops(fs, folder.path(), &format!("{tag}{i:04}"), &f.image).map_err(|e| leukoscope::error_text(&e))?;
        records.push(r);
    }
    folder.commit(&serde_json::json!({ "tag": tag }), &records).map_err(|e| leukoscope::error_text(&e))
}

/// `--out --force` over an old report, with the power cut at every operation
/// (and just after it returned): the folder holds the old report or the new one,
/// whole; between the two renames the old one whole in `.out.old`. Once the
/// replacement returned, the new one.
#[test]
fn power_cuts_while_replacing_an_out_folder_leave_the_old_or_the_new_report() {
    let (fields, _card) = fields();
    let (old_fields, new_fields) = fields.split_at(3);
    let fs = SimFs::new();
    write_out(&fs, old_fields, "old").expect("old report");
    let old = fs.files(&out_dir());
    let before = fs.state().ops;
    write_out(&fs, new_fields, "new").expect("new report");
    let new = fs.files(&out_dir());
    let ops = fs.state().ops - before;
    let aside = Path::new(ROOT).join("reports/.out.old");
    let mut cuts = 0;
    for k in 1..=ops + 1 {
        for how in [Cut::Drop, Cut::Tear(k * 7919)] {
            let fs = SimFs::new();
            write_out(&fs, old_fields, "old").expect("old report");
            let at = fs.state().ops + k;
            fs.state().cut_at = Some(at);
            let acknowledged = write_out(&fs, new_fields, "new").is_ok();
            if acknowledged {
                // The cut comes at the next thing the machine does.
                let _ = fs.create_dir(&Path::new(ROOT).join("next"));
            }
            fs.state().crash(how);
            cuts += 1;
            let now = fs.files(&out_dir());
            if acknowledged {
                assert!(
                    same_files(&now, &new),
                    "cut at operation {k} ({how:?}), after the replacement returned: not the new report"
                );
            } else if fs.kind(&out_dir()).is_none() {
                assert!(
                    same_files(&fs.files(&aside), &old),
                    "cut at operation {k} ({how:?}): no report, and not the old one aside"
                );
            } else {
                assert!(
                    same_files(&now, &old) || same_files(&now, &new),
                    "cut at operation {k} ({how:?}): a report that is neither old nor new"
                );
            }
        }
    }
    assert!(cuts > 20, "{cuts}");
}

/// A finished session to review: its folder on the simulated disk, the first
/// three fields' records, the report document FINISH writes for them, and the
/// id of a counted cell.
fn review_fixture(folder: &str) -> (PathBuf, Vec<FieldRecord>, serde_json::Value, String) {
    let (fields, _card) = fields();
    let records: Vec<FieldRecord> = fields.iter().take(3).map(|f| f.record.clone()).collect();
    let f = records.iter().position(|r| !r.cells.is_empty()).expect("a field with a counted cell");
    let sample = folder.split_once('-').map_or(folder, |(_, s)| s);
    let document = serde_json::json!({
        "images": records, "summary": {"threshold_percent": 20.0},
        "model": {"name": "m", "sha256": "ab"}, "sample": {"id": sample},
    });
    (Path::new(ROOT).join("state/sessions").join(folder), records, document, format!("{f}-0"))
}

/// The report of a finished session written as FINISH writes it.
fn finished_report(fs: &SimFs, dir: &Path, document: &serde_json::Value, records: &[FieldRecord]) {
    leukoscope::storage::create_dir_durable(fs, dir).expect("folder");
    leukoscope::report::write_report(fs, dir, document, records).expect("the report as FINISH writes it");
}

/// A reviewer's change of `cell` to a myeloblast.
fn to_myeloblast(cell: &str) -> leukoscope::review::ReviewEntry {
    leukoscope::review::ReviewEntry::Reclassify {
        cell: cell.to_string(),
        class: "MYO".into(),
        label: "Myeloblast".into(),
        call: leukoscope::classify::count::Call::Cell { code: "MYO".into(), blast: true, abnormal: true },
        by: "dr a".into(),
        unix_time: 2,
    }
}

/// A review's rewrite of a signed-off session report (results.json with its
/// review section, report.html, report.fhir.json) through the same disk, with
/// the power cut at every operation (and just after it returned): the folder
/// holds the old report or the new one, whole, never a mix; once the rewrite
/// returned, the new one.
#[test]
fn power_cuts_during_a_review_rewrite_leave_the_old_or_the_new_report() {
    use leukoscope::review::{ReportDir, ReviewEntry};
    let (dir, records, document, cell) = review_fixture("0001-P-1");
    let log = vec![
        ReviewEntry::Open {
            schema: leukoscope::review::SCHEMA.into(),
            software: "t".into(),
            fields_sha256: "x".into(),
            unix_time: 1,
        },
        to_myeloblast(&cell),
        ReviewEntry::SignOff { by: "dr a".into(), unix_time: 3 },
    ];
    let review = ReportDir { dir: dir.clone(), document: document.clone(), fields: records.clone(), log };
    let setup = || {
        let fs = SimFs::new();
        finished_report(&fs, &dir, &document, &records);
        fs
    };
    let fs = setup();
    let old = fs.files(&dir);
    let before = fs.state().ops;
    review.write_reports_to(&fs).expect("rewrite");
    let new = fs.files(&dir);
    assert!(!same_files(&old, &new), "the rewrite changes the report");
    assert!(String::from_utf8_lossy(&new["results.json"]).contains("\"signed\""));
    let ops = fs.state().ops - before;
    let mut cuts = 0;
    for k in 1..=ops + 1 {
        for how in [Cut::Drop, Cut::Tear(k * 7919)] {
            let fs = setup();
            let at = fs.state().ops + k;
            fs.state().cut_at = Some(at);
            let acknowledged = review.write_reports_to(&fs).is_ok();
            if acknowledged {
                let _ = fs.create_dir(&Path::new(ROOT).join("next"));
            }
            fs.state().crash(how);
            cuts += 1;
            let now: BTreeMap<String, Vec<u8>> =
                fs.files(&dir).into_iter().filter(|(name, _)| !name.ends_with(".tmp")).collect();
            if acknowledged {
                assert!(
                    same_files(&now, &new),
                    "cut at operation {k} ({how:?}) after the rewrite returned: not the new report"
                );
            } else {
                assert!(
                    same_files(&now, &old) || same_files(&now, &new),
                    "cut at operation {k} ({how:?}): a report that is neither old nor new: {:?}",
                    now.keys()
                );
            }
        }
    }
    assert!(cuts > 10, "{cuts}");
}

/// Byte for byte, except where a report file carries the time it was written
/// (the recovered run writes it later than the uninterrupted one): the page
/// without its "Report written" row, the FHIR bundle by its observations
/// (code and value; its ids are seeded with the time), the HL7 message by its
/// results.
fn same_file(name: &str, got: &[u8], want: &[u8]) -> bool {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match name.rsplit('/').next() {
        Some("report.html") => {
            let strip = |s: String| match s.find("Report written") {
                Some(i) => s[..i].to_string() + s[i..].split_once("</tr>").map_or("", |(_, rest)| rest),
                None => s,
            };
            strip(text(got)) == strip(text(want))
        }
        Some("report.fhir.json") => {
            let observations = |b: &[u8]| -> Option<Vec<String>> {
                let v: serde_json::Value = serde_json::from_slice(b).ok()?;
                let mut o: Vec<String> = v["entry"]
                    .as_array()?
                    .iter()
                    .map(|e| &e["resource"])
                    .filter(|r| r["resourceType"] == "Observation")
                    .map(|r| {
                        format!("{} {} {}", r["code"]["coding"][0]["code"], r["valueQuantity"]["value"], r["status"])
                    })
                    .collect();
                o.sort();
                Some(o)
            };
            observations(got).is_some_and(|o| !o.is_empty() && Some(o) == observations(want))
        }
        Some("report.hl7") => {
            // The OBX segments up to their status (OBX-11): the time comes after.
            let results = |b: &[u8]| -> Vec<String> {
                text(b)
                    .split('\r')
                    .filter(|s| s.starts_with("OBX|"))
                    .map(|s| s.split('|').take(12).collect::<Vec<_>>().join("|"))
                    .collect()
            };
            let r = results(got);
            !r.is_empty() && r == results(want)
        }
        _ => got == want,
    }
}

/// Two folders' files: the same names, and each the same by [`same_file`].
fn same_files(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same_file(k, v, w)))
}

// ------------------------------------------------- export to a USB stick (issue 15)

/// A finished session on the simulated disk; returns the run and its folder.
fn finished_session<'a>(fields: &'a [Field], card: &'a ModelCard) -> (Run<'a>, PathBuf) {
    let mut run = Run::new(fields, card);
    run.boot().expect("boot");
    for step in script() {
        run.step(step).expect("step");
    }
    let dir = run.session_dir().expect("session");
    assert!(run.fs.files(&dir).contains_key("results.json"), "finished");
    (run, dir)
}

/// A new stick's `leukoscope/` folder on the simulated disk, made durable.
fn stick(fs: &SimFs, name: &str) -> PathBuf {
    let dest = Path::new(ROOT).join(name).join("leukoscope");
    leukoscope::storage::create_dir_durable(fs, &dest).expect("stick");
    dest
}

/// Issue 15: the power fails at every operation of an export to a USB stick
/// (dropping what was not fsync'd, or tearing the last write): afterwards the
/// stick holds nothing under the report's name (at most a hidden
/// `.NAME.partial`, which the next export of the report removes), and the
/// appliance's own report is untouched. The export done again, and the power
/// cut right after it said "exported", leaves the whole report, byte for byte.
#[test]
fn power_cuts_during_an_export_leave_the_whole_report_or_none_on_the_stick() {
    use leukoscope::appliance::export::{copy_report, Copied};
    let (fields, card) = fields();
    let (run, report) = finished_session(&fields, &card);
    let fs = &run.fs;
    let original = fs.files(&report);
    let name = report.file_name().expect("name").to_string_lossy().into_owned();
    let trial = stick(fs, "trial");
    let ops0 = fs.state().ops;
    copy_report(fs, &report, &trial).expect("an export without a cut");
    let ops = fs.state().ops - ops0;
    assert!(ops > original.len() as u64, "{ops} operations for {} files", original.len());
    // Acknowledged, then the power fails: all of it is on the stick.
    let exported_then_cut = |dest: &Path, why: &str| {
        fs.state().crash(Cut::Drop);
        let left: Vec<String> = fs.list(dest).expect("stick").into_iter().map(|(n, _)| n).collect();
        assert_eq!(left, vec![name.clone()], "{why}: the stick after a cut right after the export");
        assert_eq!(fs.files(&dest.join(&name)), original, "{why}: the report on the stick after a cut");
    };
    exported_then_cut(&trial, "first export");
    for n in 1..=ops {
        for cut in [Cut::Drop, Cut::Tear(n)] {
            let dest = stick(fs, &format!("stick-{n}-{}", matches!(cut, Cut::Tear(_))));
            let at = fs.state().ops + n;
            fs.state().cut_at = Some(at);
            let result = copy_report(fs, &report, &dest);
            assert!(result.is_err(), "cut at operation {n} of {ops}: the export did not notice");
            fs.state().crash(cut);
            assert_eq!(fs.files(&report), original, "cut at {n}: the appliance's report changed");
            let left: Vec<String> = fs.list(&dest).expect("stick").into_iter().map(|(n, _)| n).collect();
            let partial = format!(".{name}.partial");
            assert!(
                left.is_empty() || left == [partial],
                "cut at {n} of {ops} ({cut:?}): the stick holds {left:?}, not nothing of the report"
            );
            // Power back: exporting again gives the whole report, and drops the partial copy.
            let again = copy_report(fs, &report, &dest).expect("export after the cut");
            assert_eq!(again, Copied::New(dest.join(&name)));
            exported_then_cut(&dest, &format!("cut at {n}, exported again"));
        }
    }
    eprintln!(
        "{} power cuts during an export of {} files ({ops} operations): none left a report under its name, \
         each export done again and cut right after left it whole",
        2 * ops,
        original.len()
    );
}

/// Issue 15: the stick fills up at every write of an export: the error says so
/// (ENOSPC, naming the stick), the stick holds nothing of the report (the
/// partial copy is removed), and the appliance's report is untouched.
#[test]
fn a_full_stick_at_every_write_leaves_nothing_half_copied() {
    use leukoscope::appliance::export::copy_report;
    let (fields, card) = fields();
    let (run, report) = finished_session(&fields, &card);
    let fs = &run.fs;
    let original = fs.files(&report);
    let mut n = 1;
    loop {
        let dest = stick(fs, &format!("full-{n}"));
        let writes = fs.state().writes;
        fs.state().full_at = Some(writes + n);
        let result = copy_report(fs, &report, &dest);
        fs.state().full_at = None;
        assert_eq!(fs.files(&report), original, "write {n}: the appliance's report changed");
        let left = fs.list(&dest).expect("stick");
        match result {
            Err(e) => {
                assert_eq!(e.source.kind(), io::ErrorKind::StorageFull, "write {n}: {e:?}");
                let text = leukoscope::error_text(&e);
                assert!(text.contains(&dest.display().to_string()), "write {n}: the error names the stick: {text}");
                assert!(left.is_empty(), "write {n}: left on the full stick: {left:?}");
            }
            Ok(_) => {
                assert!(n > original.len() as u64, "write {n}: every file is written");
                assert_eq!(left.len(), 1);
                break;
            }
        }
        n += 1;
    }
}

/// A sign-off appended to review.jsonl and the report rewritten after it, through
/// the same disk, with the power cut at every operation (dropped or torn): the
/// folder always opens again; an acknowledged sign-off is in the log and the
/// report says signed; whatever the log holds, the report files (once opened)
/// say the same, never "signed" in one and "preliminary" in the other.
#[test]
fn power_cuts_during_a_sign_off_lose_nothing_acknowledged() {
    use leukoscope::review::{ReportDir, ReviewEntry};
    let (dir, records, document, cell) = review_fixture("0002-P-2");
    let setup = || {
        let fs = SimFs::new();
        finished_report(&fs, &dir, &document, &records);
        let mut r = ReportDir::open_from(&fs, &dir).expect("open");
        r.append_to(&fs, to_myeloblast(&cell)).expect("a change before the sign-off");
        (fs, r)
    };
    let sign_off = || ReviewEntry::SignOff { by: "dr a".into(), unix_time: 3 };
    let status = |fs: &SimFs| -> String {
        let doc: serde_json::Value =
            serde_json::from_slice(&fs.files(&dir)["results.json"]).expect("results.json parses");
        doc["review"]["status"].as_str().unwrap_or_default().to_string()
    };
    let (fs, mut r) = setup();
    let before = fs.state().ops;
    r.append_to(&fs, sign_off()).expect("sign-off");
    let ops = fs.state().ops - before;
    assert_eq!(status(&fs), "signed");
    let mut cuts = 0;
    for k in 1..=ops + 1 {
        for how in [Cut::Drop, Cut::Tear(k * 104_729)] {
            let (fs, mut r) = setup();
            let at = fs.state().ops + k;
            fs.state().cut_at = Some(at);
            let acknowledged = r.append_to(&fs, sign_off()).is_ok();
            if acknowledged {
                let _ = fs.create_dir(&Path::new(ROOT).join("next"));
            }
            fs.state().crash(how);
            cuts += 1;
            let reopened = ReportDir::open_from(&fs, &dir)
                .unwrap_or_else(|e| panic!("cut at operation {k} ({how:?}): {}", leukoscope::error_text(&e)));
            let signed = reopened.log.iter().any(|e| matches!(e, ReviewEntry::SignOff { .. }));
            assert_eq!(reopened.log.len(), if signed { 3 } else { 2 }, "cut at operation {k} ({how:?})");
            if acknowledged {
                assert!(signed, "cut at operation {k} ({how:?}) after the sign-off returned: lost");
            }
            let want = if signed { "signed" } else { "in_review" };
            assert_eq!(status(&fs), want, "cut at operation {k} ({how:?}): the report disagrees with the log");
        }
    }
    assert!(cuts > 10, "{cuts}");
}
