//! Getting reports off the appliance: at FINISH, the session's report folder is
//! copied to a USB stick that carries a `leukoscope/` folder.
//!
//! The report in the state folder is written first and is the truth; the copy
//! is a convenience whose failure is a message on the screen, never an error
//! that stops the count or touches the original. The copy is all or nothing:
//! it is written into a hidden sibling `.<name>.partial`, every file fsync'd,
//! the folders fsync'd, then renamed to `<name>` and the stick's `leukoscope/`
//! folder fsync'd. A name that is taken is never overwritten: when the folder
//! there holds this very report (same `results.json`) nothing is copied, else
//! the copy is named `<name>-2`, `<name>-3`, ... (two appliances, or one reset,
//! may number sessions alike; a later reviewed report differs from the first).
//!
//! Every write goes through [`Storage`], so `tests/power_loss.rs` cuts the power
//! and fills the disk during an export as it does during a FINISH.

use crate::config::InvalidValue;
use crate::storage::{Kind, Storage};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Component, Path, PathBuf};

/// `[export]` in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Where a USB stick's `leukoscope/` folder may be, as absolute paths in which
    /// `*` and `?` match within one path component (desktop automounts put a
    /// stick at /media/USER/LABEL or /run/media/USER/LABEL, usbmount and fstab
    /// entries at /media/usb0 or /mnt/NAME). At FINISH the report folder is
    /// copied into the first existing one, and the screen says so or why not.
    /// Empty: no export. The service may write only below /media, /run/media
    /// and /mnt (ReadWritePaths= in leukoscope.service).
    pub dirs: Vec<String>,
    /// Also export into a folder on the same filesystem as the state folder.
    /// Default false: a `leukoscope/` folder under an unmounted mount point is
    /// on the appliance's own card, not on a stick.
    pub allow_same_disk: bool,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            dirs: ["/media/*/leukoscope", "/media/*/*/leukoscope", "/run/media/*/*/leukoscope", "/mnt/*/leukoscope"]
                .map(String::from)
                .to_vec(),
            allow_same_disk: false,
        }
    }
}

impl ExportConfig {
    pub fn validate(&self) -> Result<(), InvalidValue> {
        for d in &self.dirs {
            let p = Path::new(d);
            if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                return Err(InvalidValue::new(
                    "export.dirs",
                    format!("{d:?}"),
                    "must be an absolute path without '..'",
                ));
            }
        }
        Ok(())
    }
}

/// What became of one export; [`Outcome::status`] is what the screen says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The report was copied whole to this folder.
    Exported(PathBuf),
    /// This folder on the stick already holds the same report: nothing copied.
    AlreadyThere(PathBuf),
    /// No configured `leukoscope/` folder exists.
    NoStick,
    /// None found, and this folder on the way could not be looked into
    /// (a desktop automount readable by its user only).
    NoAccess(PathBuf),
    /// The only folder found is on the state folder's own disk.
    OwnDisk(PathBuf),
    /// The copy into `dir` failed; nothing is left under the report's name.
    Failed { dir: PathBuf, kind: io::ErrorKind, error: String },
}

impl Outcome {
    /// Whether the report is on the stick now.
    pub fn on_stick(&self) -> bool {
        matches!(self, Outcome::Exported(_) | Outcome::AlreadyThere(_))
    }

    /// The few words the screen shows after "USB stick:" (24 characters at most
    /// but for the stick's name).
    pub fn status(&self) -> String {
        match self {
            Outcome::Exported(to) => format!("exported to {}", stick_name(to)),
            Outcome::AlreadyThere(to) => format!("already on {}", stick_name(to)),
            Outcome::NoStick => "none with leukoscope/".into(),
            Outcome::NoAccess(_) => "no access (permissions)".into(),
            Outcome::OwnDisk(_) => "not a separate disk".into(),
            Outcome::Failed { kind, .. } => match kind {
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge => {
                    "full, not exported".into()
                }
                io::ErrorKind::ReadOnlyFilesystem => "read-only, not exported".into(),
                io::ErrorKind::PermissionDenied => "no write access".into(),
                io::ErrorKind::NotFound => "removed? not exported".into(),
                _ => "I/O error, not exported".into(),
            },
        }
    }

    /// The whole story, for the log and the command line.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Exported(to) => format!("exported to {}", to.display()),
            Outcome::AlreadyThere(to) => format!("already exported: {} holds the same report", to.display()),
            Outcome::NoStick => "not exported: no USB stick with a leukoscope/ folder (export.dirs)".into(),
            Outcome::NoAccess(d) => {
                format!("not exported: no leukoscope/ folder found; {} cannot be read", d.display())
            }
            Outcome::OwnDisk(d) => format!(
                "not exported: {} is on the appliance's own disk, not a stick (export.allow_same_disk)",
                d.display()
            ),
            Outcome::Failed { error, .. } => format!("not exported: {error}"),
        }
    }
}

/// The stick's name in `<stick>/leukoscope/<report>`.
fn stick_name(to: &Path) -> String {
    to.parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .map_or_else(|| to.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Exports the finished report folder `report` as configured: into the first
/// configured `leukoscope/` folder that exists on another disk.
pub fn export(fs: &dyn Storage, config: &ExportConfig, report: &Path) -> Outcome {
    let mut unreadable = None;
    let mut own_disk = None;
    for pattern in &config.dirs {
        for dir in glob_dirs(pattern, &mut unreadable) {
            if !config.allow_same_disk && same_disk(&dir, report) {
                own_disk.get_or_insert(dir);
                continue;
            }
            return match copy_report(fs, report, &dir) {
                Ok(Copied::New(to)) => Outcome::Exported(to),
                Ok(Copied::Same(to)) => Outcome::AlreadyThere(to),
                Err(e) => Outcome::Failed { dir, kind: e.source.kind(), error: crate::error_text(&e) },
            };
        }
    }
    match (own_disk, unreadable) {
        (Some(d), _) => Outcome::OwnDisk(d),
        (None, Some(d)) => Outcome::NoAccess(d),
        (None, None) => Outcome::NoStick,
    }
}

/// A copy that failed, with the file or folder it failed at.
#[derive(Debug, thiserror::Error)]
#[error("exporting to {}", path.display())]
pub struct ExportError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// What [`copy_report`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copied {
    /// Copied to this new folder.
    New(PathBuf),
    /// This folder already held the same report.
    Same(PathBuf),
}

/// Copies the report folder `report` into the folder `dest` (a stick's
/// `leukoscope/`), all or nothing: see the module's documentation. On failure
/// the partial copy is removed (best effort: a power cut or a pulled stick
/// leaves it hidden, and the next export of the same report removes it) and
/// nothing appears under the report's name.
pub fn copy_report(fs: &dyn Storage, report: &Path, dest: &Path) -> Result<Copied, ExportError> {
    let name = report.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "report".into());
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError { path, source }
    };
    let results = fs.read(&report.join("results.json")).map_err(err(&report.join("results.json")))?;
    let mut to = None;
    for k in 1..=99 {
        let candidate = if k == 1 { dest.join(&name) } else { dest.join(format!("{name}-{k}")) };
        match fs.kind(&candidate) {
            None => {
                to = Some(candidate);
                break;
            }
            Some(Kind::Dir) if fs.read(&candidate.join("results.json")).is_ok_and(|b| b == results) => {
                return Ok(Copied::Same(candidate));
            }
            Some(_) => {}
        }
    }
    let to = to.ok_or_else(|| {
        err(&dest.join(&name))(io::Error::new(io::ErrorKind::AlreadyExists, "99 reports of this name already"))
    })?;
    let partial = dest.join(format!(".{}.partial", to.file_name().unwrap_or_default().to_string_lossy()));
    if fs.kind(&partial).is_some() {
        fs.remove_dir_all(&partial).map_err(err(&partial))?;
    }
    let copied = copy_tree(fs, report, &partial)
        .and_then(|()| fs.rename(&partial, &to).map_err(err(&to)))
        .and_then(|()| fs.sync_dir(dest).map_err(err(dest)));
    if let Err(e) = copied {
        let _ = fs.remove_dir_all(&partial);
        return Err(e);
    }
    Ok(Copied::New(to))
}

/// Copies the folder `from` to the new folder `to`: every file written and
/// fsync'd, every folder fsync'd once its entries are in. Temporary files an
/// interrupted write left (`*.tmp`) are not copied.
fn copy_tree(fs: &dyn Storage, from: &Path, to: &Path) -> Result<(), ExportError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError { path, source }
    };
    fs.create_dir(to).map_err(err(to))?;
    for (name, kind) in fs.list(from).map_err(err(from))? {
        if name.ends_with(".tmp") {
            continue;
        }
        let (src, dst) = (from.join(&name), to.join(&name));
        match kind {
            Kind::Dir => copy_tree(fs, &src, &dst)?,
            Kind::File => {
                let bytes = fs.read(&src).map_err(err(&src))?;
                let mut f = fs.create(&dst).map_err(err(&dst))?;
                f.write_all(&bytes).and_then(|()| f.sync()).map_err(err(&dst))?;
            }
        }
    }
    fs.sync_dir(to).map_err(err(to))
}

/// The existing folders that `pattern` names, sorted: `*` (any characters) and
/// `?` (one) match within one path component, never a name starting with '.';
/// other components are taken as they are. A folder on the way that cannot be
/// read for lack of permission is remembered in `unreadable`.
pub fn glob_dirs(pattern: &str, unreadable: &mut Option<PathBuf>) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for c in Path::new(pattern).components() {
        let part = c.as_os_str().to_string_lossy();
        let wild = matches!(c, Component::Normal(_)) && part.contains(['*', '?']);
        let mut next = Vec::new();
        for base in &found {
            if !wild {
                next.push(base.join(c));
                continue;
            }
            match std::fs::read_dir(base) {
                Ok(entries) => {
                    let pat: Vec<char> = part.chars().collect();
                    for e in entries.flatten() {
                        let name: Vec<char> = e.file_name().to_string_lossy().chars().collect();
                        if name.first() != Some(&'.') && matches(&pat, &name) {
                            next.push(base.join(e.file_name()));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    unreadable.get_or_insert_with(|| base.clone());
                }
                Err(_) => {}
            }
        }
        next.sort();
        found = next;
    }
    found.retain(|p| p.is_dir());
    found
}

/// Whether `name` matches the wildcard pattern `pat` (`*`, `?`).
fn matches(pat: &[char], name: &[char]) -> bool {
    match (pat.first(), name.first()) {
        (None, None) => true,
        (Some('*'), _) => matches(&pat[1..], name) || (!name.is_empty() && matches(pat, &name[1..])),
        (Some('?'), Some(_)) => matches(&pat[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => matches(&pat[1..], &name[1..]),
        _ => false,
    }
}

/// Whether two paths are on the same filesystem.
fn same_disk(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev();
        }
    }
    let _ = (a, b);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("leukoscope-export-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    #[test]
    fn wildcards_match_within_a_component() {
        let m = |p: &str, n: &str| matches(&p.chars().collect::<Vec<_>>(), &n.chars().collect::<Vec<_>>());
        assert!(m("*", "KINGSTON") && m("usb?", "usb0") && m("*STON", "KINGSTON") && m("K*G*N", "KINGSTON"));
        assert!(!m("usb?", "usb10") && !m("*STON", "KINGSTONE") && !m("a", "b"));
    }

    #[test]
    fn glob_finds_the_sticks_leukoscope_folders() {
        let root = scratch("glob");
        for d in
            ["media/pi/KINGSTON/leukoscope", "media/pi/CAMERA", "media/ann/.hidden/leukoscope", "media/usb0/leukoscope"]
        {
            std::fs::create_dir_all(root.join(d)).expect("dir");
        }
        let mut unreadable = None;
        let two = glob_dirs(&format!("{}/media/*/*/leukoscope", root.display()), &mut unreadable);
        assert_eq!(two, vec![root.join("media/pi/KINGSTON/leukoscope")]);
        let one = glob_dirs(&format!("{}/media/*/leukoscope", root.display()), &mut unreadable);
        assert_eq!(one, vec![root.join("media/usb0/leukoscope")]);
        assert!(glob_dirs(&format!("{}/mnt/*/leukoscope", root.display()), &mut unreadable).is_empty());
        assert_eq!(unreadable, None);
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn config_wants_absolute_paths() {
        assert!(ExportConfig::default().validate().is_ok());
        let bad = ExportConfig { dirs: vec!["media/*/leukoscope".into()], ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().starts_with("export.dirs = "));
        let bad = ExportConfig { dirs: vec!["/media/../etc".into()], ..Default::default() };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn screen_words_fit_the_message_line() {
        let failed = |kind| Outcome::Failed { dir: "/m".into(), kind, error: String::new() };
        for o in [
            Outcome::NoStick,
            Outcome::NoAccess("/media/pi".into()),
            Outcome::OwnDisk("/mnt/usb/leukoscope".into()),
            failed(io::ErrorKind::StorageFull),
            failed(io::ErrorKind::ReadOnlyFilesystem),
            failed(io::ErrorKind::PermissionDenied),
            failed(io::ErrorKind::NotFound),
            failed(io::ErrorKind::Other),
        ] {
            assert!(o.status().chars().count() <= 24, "{:?}: {}", o, o.status());
        }
        let to = PathBuf::from("/media/pi/KINGSTON/leukoscope/00012-S0012");
        assert_eq!(Outcome::Exported(to.clone()).status(), "exported to KINGSTON");
        assert_eq!(Outcome::AlreadyThere(to).status(), "already on KINGSTON");
    }
}
