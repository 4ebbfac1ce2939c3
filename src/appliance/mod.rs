//! The appliance: frames from the camera, buttons from the operator, a running
//! count on the display. It uses the same analysis as `analyze` and the same
//! report folder, with the session journaled so that nothing counted is lost.
//!
//! [`Appliance`] is the state machine and knows no devices; [`run_loop`] feeds
//! it from any [`crate::hw::source::FrameSource`] and [`crate::hw::buttons::ButtonSource`] and
//! shows it on any [`crate::hw::display::Display`].

pub mod export;
mod run_loop;
pub mod session;
pub mod systemd;

pub use run_loop::{run_loop, LoopOptions};

use crate::appliance::session::{Journal, Phase, Session, SessionError, Store};
use crate::classify::pipeline::Analyzer;
use crate::config::InvalidValue;
use crate::hw::buttons::{Button, ButtonError};
use crate::hw::display::{self, View};
use crate::hw::source::{Frame, SourceError};
use crate::report::FieldRecord;
use crate::storage::Storage;
use crate::vision::gating::{Decision, FieldGate, GateParams, Skip};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Input(#[from] ButtonError),
    #[error("analysing a field")]
    Model(#[from] crate::classify::model::ModelError),
}

/// `[session]` in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Leukocytes to count per sample: 100, 200 or 400. Default 100.
    pub target: u64,
    /// Sample identifier for a sample started without one scanned (or typed as
    /// `id CODE` on the keyboard stand-in). Empty (default): numbered
    /// automatically, S0001, S0002, ... Must stay empty with `require_sample_id`.
    pub sample_id: String,
    /// START needs a sample ID entered for this sample: scanned (`[scanner]`) or
    /// typed (`id CODE` on the keyboard stand-in, `<poll> id CODE` in a `--script`).
    /// Until then the screen says "scan sample ID" and START is refused. false
    /// (default, so that the demo runs without a scanner): a sample started
    /// without an entered ID gets `sample_id`, or the next number. Set it true
    /// with a scanner (the board configurations show how).
    pub require_sample_id: bool,
    /// A code starting with this prefix is an operator ID (the rest of the code),
    /// not a sample ID: it goes into the reports of the samples started after it,
    /// until another operator code. Empty: every code is a sample ID. Default "OP:".
    pub operator_prefix: String,
    /// Folder for sessions and their reports. Unset: $STATE_DIRECTORY (set by
    /// systemd, /var/lib/leukoscope on a board), else ./leukoscope-sessions.
    pub state_dir: Option<PathBuf>,
    /// Finish the count by itself when the target is reached, instead of
    /// waiting for FINISH. Default false.
    pub finish_at_target: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            target: 100,
            sample_id: String::new(),
            require_sample_id: false,
            operator_prefix: "OP:".into(),
            state_dir: None,
            finish_at_target: false,
        }
    }
}

impl SessionConfig {
    pub fn validate(&self) -> Result<(), InvalidValue> {
        if ![100, 200, 400].contains(&self.target) {
            return Err(InvalidValue::new("session.target", self.target, "must be 100, 200 or 400"));
        }
        if self.require_sample_id && !self.sample_id.trim().is_empty() {
            return Err(InvalidValue::new(
                "session.sample_id",
                format!("{:?}", self.sample_id),
                "a fixed ID would stand for every sample: leave it empty with require_sample_id = true",
            ));
        }
        if let Err(why) = check_id(&self.sample_id) {
            if !self.sample_id.is_empty() {
                return Err(InvalidValue::new("session.sample_id", format!("{:?}", self.sample_id), why));
            }
        }
        Ok(())
    }

    /// The operator ID in `code`, if it is an operator code.
    fn operator_in<'a>(&self, code: &'a str) -> Option<&'a str> {
        if self.operator_prefix.is_empty() {
            return None;
        }
        code.strip_prefix(self.operator_prefix.as_str()).map(str::trim)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("leukoscope-sessions"))
    }
}

/// Longest sample or operator ID, in characters.
pub const MAX_ID: usize = 64;

/// Whether `id` can be a sample or operator ID: 1 to [`MAX_ID`] characters, no
/// control characters (`Err`: why not, for the screen).
pub fn check_id(id: &str) -> Result<(), &'static str> {
    if id.trim().is_empty() {
        Err("empty ID")
    } else if id.chars().count() > MAX_ID {
        Err("ID too long (over 64 characters)")
    } else if id.chars().any(char::is_control) {
        Err("not an ID (control characters)")
    } else {
        Ok(())
    }
}

/// The appliance's state: the open session (if any), the gate, and what the
/// screen should say.
pub struct Appliance {
    analyzer: Analyzer,
    /// The state folder's lock, held as long as the appliance lives.
    _lock: session::StateLock,
    store: Store,
    gate: FieldGate,
    config: SessionConfig,
    threshold_percent: f64,
    open: Option<(Session, Journal)>,
    /// The last finished session, shown until the next start.
    finished: Option<Session>,
    force_capture: bool,
    skip: Option<display::Skip>,
    camera_ok: bool,
    message: Option<String>,
    /// Sessions finished by this process (for `run --until-finished`).
    pub finished_count: u32,
    /// The sample ID entered for the next START.
    next_id: Option<String>,
    /// The operator ID scanned last: goes into every session started after it.
    operator: Option<String>,
    /// With no configured scale: fields the session calibrates over.
    calibrate_fields: Option<usize>,
    /// The open session's calibration, rebuilt from its journaled fields
    /// (on start, resume and undo) so that a restart changes nothing.
    scale: Option<crate::vision::calibrate::SessionScale>,
    /// The open session's red cells, all fields together, checking the scale
    /// they were analysed at (configured or calibrated): a wrong objective.
    scale_check: Option<crate::vision::calibrate::ScaleCheck>,
    /// Where finished reports are copied (a USB stick), and through what.
    export: Option<(export::ExportConfig, Arc<dyn Storage>)>,
    /// The export in flight: the report folder, and the thread copying it.
    export_job: Option<(PathBuf, std::thread::JoinHandle<export::Outcome>)>,
    last_export: Option<export::Outcome>,
}

/// What the screen says once FINISH has written the report.
const SAVED: &str = "report saved";

impl Appliance {
    /// Opens the state folder and resumes a session a crash left open.
    pub fn new(
        analyzer: Analyzer,
        config: SessionConfig,
        gate: GateParams,
        threshold_percent: f64,
    ) -> Result<Appliance, ApplianceError> {
        // Before anything is read: another process may be appending to it.
        let lock = session::lock_state(&config.state_dir())?;
        let store = Store::open(&config.state_dir())?;
        let open = store.recover(&analyzer.classifier.card, &analyzer.detect)?;
        let mut gate = FieldGate::new(gate);
        let mut message = None;
        if let Some((s, _)) = &open {
            log::info!(
                "resuming session {} ({} fields, {} cells) in {}",
                s.sample_id,
                s.fields.len(),
                s.diff.cells(),
                s.dir.display()
            );
            let keep = s.thumbs.len().saturating_sub(crate::vision::gating::REMEMBERED_FIELDS);
            for t in s.thumbs[keep..].iter().filter_map(|t| t.unpack()) {
                gate.counted(t);
            }
            message = Some(format!("resumed {}", s.sample_id));
        }
        Ok(Appliance {
            analyzer,
            _lock: lock,
            store,
            gate,
            config,
            threshold_percent,
            open,
            finished: None,
            force_capture: false,
            skip: None,
            camera_ok: true,
            message,
            finished_count: 0,
            next_id: None,
            operator: None,
            calibrate_fields: None,
            scale: None,
            scale_check: None,
            export: None,
            export_job: None,
            last_export: None,
        })
    }

    /// Without a configured scale, each session calibrates over its first
    /// `fields` counted fields whose red cells give an estimate, then uses
    /// their median for every later field.
    pub fn calibrate_over(mut self, fields: usize) -> Appliance {
        if self.analyzer.um_per_px.is_none() {
            self.calibrate_fields = Some(fields);
        }
        self.rebuild_scale();
        self
    }

    /// After each FINISH, copy the report folder to a USB stick as `config`
    /// says (no `dirs`: never), in a thread of its own: the count never waits
    /// for a slow stick. The screen says how it went.
    pub fn export_to(mut self, config: export::ExportConfig) -> Appliance {
        self.export = (!config.dirs.is_empty()).then(|| (config, Arc::new(crate::storage::Os) as Arc<dyn Storage>));
        self
    }

    /// The storage the export reads and writes through (tests: a stick that fails).
    pub fn export_through(mut self, fs: Arc<dyn Storage>) -> Appliance {
        if let Some((_, f)) = self.export.as_mut() {
            *f = fs;
        }
        self
    }

    /// How the last export ended, once it has.
    pub fn last_export(&self) -> Option<&export::Outcome> {
        self.last_export.as_ref()
    }

    /// Takes in the export's outcome if it has ended.
    pub fn poll_export(&mut self) {
        if self.export_job.as_ref().is_some_and(|(_, h)| h.is_finished()) {
            self.collect_export();
        }
    }

    /// Waits for the export in flight, if any, and takes in its outcome.
    pub fn wait_export(&mut self) {
        self.collect_export();
    }

    fn start_export(&mut self, report: &Path) {
        let Some((config, fs)) = self.export.clone() else { return };
        // One at a time (a FINISH right after another).
        self.wait_export();
        let dir = report.to_path_buf();
        let job =
            std::thread::Builder::new().name("export".into()).spawn(move || export::export(fs.as_ref(), &config, &dir));
        match job {
            Ok(h) => {
                self.export_job = Some((report.to_path_buf(), h));
                self.message = Some(format!("{SAVED}; USB stick: exporting..."));
            }
            Err(e) => log::error!("export of {}: cannot start a thread: {e}", report.display()),
        }
    }

    fn collect_export(&mut self) {
        let Some((report, job)) = self.export_job.take() else { return };
        let outcome = job.join().unwrap_or_else(|_| export::Outcome::Failed {
            dir: report.clone(),
            kind: std::io::ErrorKind::Other,
            error: "the export thread panicked".into(),
        });
        if outcome.on_stick() {
            log::info!("{}: {}", report.display(), outcome.describe());
        } else {
            log::warn!("{}: {}", report.display(), outcome.describe());
        }
        // Said on the screen while that session's result is shown.
        if self.open.is_none() && self.finished.as_ref().is_some_and(|s| s.dir == report) {
            self.message = Some(format!("{SAVED}; USB stick: {}", outcome.status()));
        }
        self.last_export = Some(outcome);
    }

    /// The session's calibration from its journaled fields.
    fn rebuild_scale(&mut self) {
        self.scale = match (self.calibrate_fields, &self.open) {
            (Some(n), Some((s, _))) => {
                let mut sc = crate::vision::calibrate::SessionScale::new(n, &self.analyzer.detect);
                for (_, r) in &s.fields {
                    sc.observe(&r.scale, &r.red_cells_px);
                }
                Some(sc)
            }
            _ => None,
        };
        self.recheck_scale();
    }

    /// The scale check over the open session's fields; says so in the log
    /// when it starts to disagree.
    fn recheck_scale(&mut self) {
        let doubted = self.scale_check.as_ref().is_some_and(|c| !c.agrees);
        self.scale_check = self.open.as_ref().and_then(|(s, _)| {
            let fields = s.fields.iter().map(|(_, r)| (&r.scale, r.red_cells_px.as_slice()));
            crate::vision::calibrate::ScaleCheck::of(fields, &self.analyzer.detect)
        });
        if let Some(c) = self.scale_check.as_ref().filter(|c| !c.agrees && !doubted) {
            log::warn!("scale check: {}", c.text());
        }
    }

    pub fn phase(&self) -> Phase {
        match (&self.open, &self.finished) {
            (Some((s, _)), _) => s.phase(),
            (None, Some(_)) => Phase::Finished,
            (None, None) => Phase::Idle,
        }
    }

    /// The open session, if any.
    pub fn session(&self) -> Option<&Session> {
        self.open.as_ref().map(|(s, _)| s)
    }

    /// A code entered (scanned, or typed): an operator ID when it starts with
    /// the configured prefix, else the sample ID for the next START. While a
    /// session is open its sample ID stays: a sample code is refused, with a
    /// message (queueing it could put the wrong ID on the next slide).
    pub fn on_code(&mut self, code: &str) {
        let code = code.trim();
        if let Some(op) = self.config.operator_in(code) {
            if let Err(why) = check_id(op) {
                log::warn!("operator code refused: {why}");
                self.message = Some(format!("operator: {why}"));
                return;
            }
            log::info!("operator {op}");
            self.message = Some(match self.open {
                Some(_) => format!("operator {op}: next sample"),
                None => format!("operator {op}"),
            });
            self.operator = Some(op.to_string());
            return;
        }
        if let Err(why) = check_id(code) {
            log::warn!("sample code refused: {why}");
            self.message = Some(why.into());
            return;
        }
        if let Some((s, _)) = &self.open {
            log::warn!("sample ID {code} scanned while counting {}: ignored", s.sample_id);
            self.message = Some(format!("ignored {code}: finish {} first", s.sample_id));
            return;
        }
        log::info!("sample ID {code} entered");
        self.next_id = Some(code.to_string());
        // The last result gives way to the next sample.
        self.finished = None;
        self.message = None;
    }

    /// START must wait for a sample ID to be entered.
    fn needs_id(&self) -> bool {
        self.config.require_sample_id && self.next_id.is_none()
    }

    pub fn handle(&mut self, b: Button) -> Result<(), ApplianceError> {
        log::info!("button {b:?} in phase {:?}", self.phase());
        let needs_id = self.needs_id();
        match (b, self.open.as_mut()) {
            (Button::Start, None) if needs_id => {
                log::warn!("START without a sample ID: refused (session.require_sample_id)");
                self.message = Some("scan sample ID first".into());
            }
            (Button::Start, None) => {
                let id = self.next_id.take().unwrap_or_else(|| self.config.sample_id.clone());
                let (s, j) = self.store.start_by(
                    &id,
                    self.operator.as_deref(),
                    self.config.target,
                    self.threshold_percent,
                    &self.analyzer.classifier.card.sha256,
                )?;
                log::info!("session {} started in {}", s.sample_id, s.dir.display());
                self.message = Some(match self.calibrate_fields {
                    Some(_) => format!("started {}, scale: estimating", s.sample_id),
                    None => format!("started {}", s.sample_id),
                });
                self.open = Some((s, j));
                self.finished = None;
                self.gate.forget_all();
                self.rebuild_scale();
            }
            (Button::Start, Some(_)) => self.message = Some("already counting".into()),
            (Button::Capture, Some(_)) => self.force_capture = true,
            (Button::Undo, Some((s, j))) => {
                self.message = Some(match session::undo_last(s, j)? {
                    Some(n) => format!("undone: field {n}"),
                    None => "nothing to undo".into(),
                });
                self.gate.forget_last();
                self.rebuild_scale();
            }
            (Button::Finish, Some(_)) => self.finish()?,
            (_, None) => self.message = Some("press START".into()),
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ApplianceError> {
        if let Some((mut s, mut j)) = self.open.take() {
            session::finish(&mut s, &mut j, &self.analyzer.classifier.card, &self.analyzer.detect)?;
            log::info!("session {} finished: report in {}", s.sample_id, s.dir.display());
            self.message = Some(SAVED.into());
            let dir = s.dir.clone();
            self.finished = Some(s);
            self.finished_count += 1;
            self.start_export(&dir);
        }
        Ok(())
    }

    /// One frame: gate it, and if it shows a new field while counting, analyse
    /// and count it. Returns whether a field was counted.
    pub fn on_frame(&mut self, frame: &Frame) -> Result<bool, ApplianceError> {
        self.camera_ok = true;
        let (decision, m, thumb) = self.gate.assess(&frame.image);
        let counting = self.phase() == Phase::Counting;
        let forced = std::mem::take(&mut self.force_capture) && counting;
        log::debug!("frame {} {decision:?} {m:?}", frame.seq);
        if !forced {
            self.skip = match decision {
                Decision::Skip(Skip::Blurred) => Some(display::Skip::Blurred),
                Decision::Skip(Skip::Moving) => Some(display::Skip::Moving),
                Decision::Skip(Skip::SameField) => Some(display::Skip::SameField),
                Decision::Analyse => None,
            };
            if decision != Decision::Analyse || !counting {
                return Ok(false);
            }
        }
        let field = match &self.scale {
            Some(sc) => self.analyzer.analyze_at(&frame.image, sc.given())?,
            None => self.analyzer.analyze(&frame.image)?,
        };
        let record = FieldRecord::new(&self.analyzer.classifier.card, &frame.origin, &field);
        if record.cells.is_empty() && !forced {
            // Nothing to count here; the operator moves on. Remember it as seen
            // so the same empty field is not analysed over and over.
            self.skip = Some(display::Skip::NoCells);
            self.gate.seen_empty(thumb);
            return Ok(false);
        }
        let Some((s, j)) = self.open.as_mut() else { return Ok(false) };
        let (scale, red_cells_px) = (record.scale, record.red_cells_px.clone());
        let n = session::record_field(s, j, record, &frame.image, thumb.pack())?;
        // Only counted (journaled) fields calibrate: a resumed session rebuilds
        // the same calibration from its journal.
        let mut notice = None;
        if let Some(sc) = self.scale.as_mut() {
            if let Some(v) = sc.observe(&scale, &red_cells_px) {
                log::info!("scale calibrated over {} fields: {v:.4} um/px", sc.progress().0);
                notice = Some(format!("scale {v:.3} um/px"));
            }
        }
        self.recheck_scale();
        self.gate.counted(thumb);
        let Some((s, _)) = self.open.as_ref() else { return Ok(true) };
        log::info!("field {n} counted from {}: {} leukocytes so far", frame.origin, s.diff.cells());
        // A calibration just finished stays on screen until the next field.
        self.message = notice;
        if s.phase() == Phase::TargetReached && self.config.finish_at_target {
            self.finish()?;
        }
        Ok(true)
    }

    pub fn on_source_error(&mut self, e: &SourceError) {
        match e {
            SourceError::Disconnected { .. } => {
                if self.camera_ok {
                    log::error!("{e}");
                }
                self.camera_ok = false;
                self.message = Some("camera lost".into());
            }
            SourceError::BadFrame { .. } => log::warn!("{e}"),
            SourceError::Timeout(_) | SourceError::Exhausted => {}
        }
    }

    pub fn view(&self) -> View {
        let s = self.open.as_ref().map(|(s, _)| s).or(self.finished.as_ref());
        let phase = match self.phase() {
            Phase::Idle => display::Phase::Idle,
            Phase::Counting => display::Phase::Counting,
            Phase::TargetReached => display::Phase::TargetReached,
            Phase::Finished => display::Phase::Finished,
        };
        let idle = s.is_none();
        let mut v = View {
            phase,
            sample_id: match s {
                Some(s) => s.sample_id.clone(),
                None => self.next_id.clone().unwrap_or_else(|| self.config.sample_id.trim().to_string()),
            },
            needs_id: idle && self.needs_id(),
            operator_id: match s {
                Some(s) => s.operator_id.clone().unwrap_or_default(),
                None => self.operator.clone().unwrap_or_default(),
            },
            counted: 0,
            target: s.map_or(self.config.target, |s| s.target),
            fields: 0,
            blasts: 0,
            blast_percent: None,
            ci95: None,
            threshold_percent: self.threshold_percent,
            flagged: false,
            unidentified: 0,
            top_classes: Vec::new(),
            skip: self.skip,
            camera_ok: self.camera_ok,
            message: self.message.clone(),
        };
        if let Some(s) = s {
            let sum = s.summary();
            v.counted = sum.cells;
            v.fields = s.fields.len() as u64;
            v.blasts = sum.blasts;
            if sum.cells > 0 {
                v.blast_percent = Some(sum.blast_percent);
                v.ci95 = Some((sum.ci95[0], sum.ci95[1]));
            }
            v.flagged = sum.flag;
            v.unidentified = sum.unidentified;
            // The report carries the full sentence; the screen the short one,
            // unless something more urgent is being said.
            // A wrong scale first: it makes every size, and so every call, suspect.
            if let Some(c) = self.scale_check.as_ref().filter(|c| v.message.is_none() && !c.agrees) {
                v.message = Some(format!("scale? RBC {:.3}um/px", c.fields_say_um_per_px));
            }
            if v.message.is_none() && self.analyzer.classifier.card.unfamiliar_warning(sum.unfamiliar_percent).is_some()
            {
                v.message = Some("images unlike training: review every cell".into());
            }
            let mut top: Vec<(String, u64)> = sum.by_class.into_iter().collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            top.truncate(4);
            v.top_classes = top;
        }
        v
    }
}
