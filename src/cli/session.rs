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
}

pub fn run(a: Args) -> Result<i32> {
    match a.action {
        Action::Repair { config, state } => repair(config, state),
    }
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
