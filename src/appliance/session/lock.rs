//! The state folder's lock: one counting process at a time.

use super::SessionError;
use std::path::Path;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SessionError + '_ {
    move |source| SessionError::Io { path: path.to_path_buf(), source }
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
    // The modes the storage seam gives everything else (0750, 0640).
    let mut dirs = std::fs::DirBuilder::new();
    dirs.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dirs, crate::storage::DIR_MODE);
    dirs.create(root).map_err(io(root))?;
    let path = root.join("lock");
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, crate::storage::FILE_MODE);
    let mut file = opts.open(&path).map_err(io(&path))?;
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
