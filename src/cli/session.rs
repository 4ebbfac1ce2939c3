//! `leukoscope session`: looking after the appliance's state folder.

use super::load_config;
use anyhow::Result;
use leukoscope::appliance::session::{lock_state, Repair, Store, JOURNAL};
use std::path::PathBuf;

/// Look after the appliance's state folder.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Repair damaged session journals: keep every record that reads and fits,
    /// set the others aside in journal.damaged.jsonl beside the journal, so that
    /// `run` resumes. Takes the state folder's lock: stop `run` first.
    Repair {
        /// TOML configuration whose state folder to repair.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The state folder; default: the config's, as `run` finds it.
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Copy a finished session's report folder to a USB stick, as FINISH does:
    /// into the first `leukoscope/` folder of the config's export.dirs (or
    /// --to), all or nothing, never over another folder. Exit status 1 when
    /// nothing was copied.
    Export {
        /// TOML configuration (state folder, export.dirs).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The state folder; default: the config's, as `run` finds it.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Copy into this folder instead of looking for a stick.
        #[arg(long)]
        to: Option<PathBuf>,
        /// The session: its folder, or its name under <state>/sessions
        /// (e.g. 00012-S0012); default: the newest finished one.
        session: Option<PathBuf>,
    },
}

pub fn run(a: Args) -> Result<i32> {
    match a.action {
        Action::Repair { config, state } => repair(config, state),
        Action::Export { config, state, to, session } => export(config, state, to, session),
    }
}

/// `session export`: no lock needed, a finished session is not written to by `run`.
fn export(
    config: Option<PathBuf>,
    state: Option<PathBuf>,
    to: Option<PathBuf>,
    session: Option<PathBuf>,
) -> Result<i32> {
    use leukoscope::appliance::export::{self, Copied, Outcome};
    let mut cfg = load_config(config.as_deref())?;
    if let Some(dir) = state {
        cfg.session.state_dir = Some(dir);
    }
    let sessions = cfg.session.state_dir().join("sessions");
    let finished = |d: &PathBuf| d.join("results.json").is_file();
    let report = match session {
        Some(s) if s.is_dir() => s,
        Some(s) => sessions.join(s),
        None => {
            let mut all: Vec<PathBuf> = std::fs::read_dir(&sessions)
                .map(|d| d.flatten().map(|e| e.path()).filter(finished).collect())
                .unwrap_or_default();
            all.sort();
            all.pop().ok_or_else(|| anyhow::anyhow!("no finished session in {}", sessions.display()))?
        }
    };
    anyhow::ensure!(finished(&report), "{} is not a finished session's report folder", report.display());
    let fs = leukoscope::storage::Os;
    let outcome = match to {
        Some(dest) => match export::copy_report(&fs, &report, &dest) {
            Ok(Copied::New(p)) => Outcome::Exported(p),
            Ok(Copied::Same(p)) => Outcome::AlreadyThere(p),
            Err(e) => Outcome::Failed { dir: dest, kind: e.source.kind(), error: leukoscope::error_text(&e) },
        },
        None => export::export(&fs, &cfg.export, &report),
    };
    println!("{}: {}", report.display(), outcome.describe());
    Ok(if outcome.on_stick() { 0 } else { 1 })
}

/// `session repair`: the state folder `run` would use, under its lock.
fn repair(config: Option<PathBuf>, state: Option<PathBuf>) -> Result<i32> {
    let mut cfg = load_config(config.as_deref())?;
    if let Some(dir) = state {
        cfg.session.state_dir = Some(dir);
    }
    let root = cfg.session.state_dir();
    let _lock = lock_state(&root)?;
    let repairs = Store::open(&root)?.repair()?;
    if repairs.is_empty() {
        println!("{}: every session journal reads whole: nothing to repair", root.display());
    }
    for r in &repairs {
        keep_owner(r);
        let lines: Vec<String> = r.set_aside.iter().map(usize::to_string).collect();
        println!(
            "{}: line(s) {} set aside in {}{}; {}",
            r.dir.join(JOURNAL).display(),
            lines.join(", "),
            r.aside_file.display(),
            if r.torn { " (the last one torn)" } else { "" },
            if r.kept == 0 {
                "its start record was damaged: the folder is no longer a session".to_string()
            } else {
                format!("{} records kept; `run` resumes it", r.kept)
            }
        );
    }
    Ok(0)
}

/// Files `session repair` wrote (as root, say) get the session folder's owner,
/// else the service's user could no longer append to its journal.
fn keep_owner(r: &Repair) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(owner) = std::fs::metadata(&r.dir) else { return };
        for f in [r.dir.join(JOURNAL), r.aside_file.clone()] {
            let differs = std::fs::metadata(&f).is_ok_and(|m| (m.uid(), m.gid()) != (owner.uid(), owner.gid()));
            if differs {
                if let Err(e) = std::os::unix::fs::chown(&f, Some(owner.uid()), Some(owner.gid())) {
                    warn!(
                        "{}: could not give it the folder's owner ({e}): `run` may not be able to use it",
                        f.display()
                    );
                }
            }
        }
    }
}
