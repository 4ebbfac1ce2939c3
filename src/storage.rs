//! The one seam through which the journal and the reports reach the disk.
//!
//! Everything that must survive a power cut is written with the few primitive
//! operations of [`Storage`]; the order of writes, fsyncs and renames (the
//! crash safety) lives in the helpers here and in `session`/`report`, never in
//! an implementation. [`Os`] is the real filesystem; `tests/power_loss.rs` has
//! one that loses power at a chosen operation, dropping whatever was not
//! fsync'd (SQLite's way of testing the same promise).

use std::io;
use std::path::{Path, PathBuf};

/// A file open for writing.
pub trait StorageFile: Send {
    /// Writes all of `bytes` at the end of what this handle wrote (or, opened
    /// for append, at the end of the file).
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes the written data durable (fsync).
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes (not durable until [`StorageFile::sync`]).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// What is at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
}

/// The filesystem operations the journal and the reports use. A new name,
/// rename or removal is durable only after [`Storage::sync_dir`] of its folder.
pub trait Storage: Send + Sync {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates (or truncates) a file for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for appending.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Renames a file, or a folder onto a missing or empty one.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates one folder (its parent must exist).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the folder's entries (new names, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// The names in a folder with their kinds, sorted by name.
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, Kind)>>;
    /// What is at `path`, if anything (symbolic links followed).
    fn kind(&self, path: &Path) -> Option<Kind>;
}

/// A storage operation that failed, with the file it was about.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}", path.display())]
pub struct StorageError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl StorageError {
    pub fn new<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
        move |source| StorageError { op, path: path.to_path_buf(), source }
    }
}

impl From<StorageError> for io::Error {
    fn from(e: StorageError) -> io::Error {
        io::Error::new(e.source.kind(), e)
    }
}

/// The real filesystem. Files are created 0640 and folders 0750 (less what
/// the umask takes away): the service's group (`leukoscope`, which staff join)
/// reads the reports, nobody else does, and only the owner writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Os;

/// Permissions of the files [`Os`] creates (before the umask).
pub const FILE_MODE: u32 = 0o640;
/// Permissions of the folders [`Os`] creates (before the umask).
pub const DIR_MODE: u32 = 0o750;

struct OsFile {
    file: std::fs::File,
    /// Appended journals need their data durable, not their timestamps: fdatasync.
    data_only: bool,
}

impl StorageFile for OsFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        io::Write::write_all(&mut self.file, bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.data_only {
            self.file.sync_data()
        } else {
            self.file.sync_all()
        }
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

impl Storage for Os {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, FILE_MODE);
        Ok(Box::new(OsFile { file: opts.open(path)?, data_only: false }))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Box::new(OsFile { file, data_only: true }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
        builder.create(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, Kind)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let kind = if e.path().is_dir() { Kind::Dir } else { Kind::File };
            out.push((e.file_name().to_string_lossy().into_owned(), kind));
        }
        out.sort();
        Ok(out)
    }
    fn kind(&self, path: &Path) -> Option<Kind> {
        let m = std::fs::metadata(path).ok()?;
        Some(if m.is_dir() { Kind::Dir } else { Kind::File })
    }
}

/// The folder an entry lives in ("." for a bare name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` and any missing parents, each new name made durable in its
/// parent (else a power cut can lose a folder whose files were fsync'd).
pub fn create_dir_durable(fs: &dyn Storage, dir: &Path) -> Result<(), StorageError> {
    match fs.kind(dir) {
        Some(Kind::Dir) => return Ok(()),
        Some(Kind::File) => {
            return Err(StorageError {
                op: "creating folder",
                path: dir.to_path_buf(),
                source: io::Error::new(io::ErrorKind::AlreadyExists, "a file of that name is in the way"),
            })
        }
        None => {}
    }
    let up = parent(dir);
    if up != dir {
        create_dir_durable(fs, up)?;
    }
    match fs.create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(StorageError::new("creating folder", dir)(e)),
    }
    fs.sync_dir(up).map_err(StorageError::new("syncing folder", up))
}

/// The temporary name `write_atomic` writes `path` under.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes a temporary file, fsyncs it, renames it over `path` and fsyncs the
/// folder: a reader, or a power cut, sees the old file or the new one, never
/// half of one. On failure the temporary file is removed; the error names `path`.
pub fn write_atomic(fs: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut f = fs.create(&tmp)?;
        f.write_all(bytes)?;
        f.sync()
    })();
    if let Err(e) = written.and_then(|()| fs.rename(&tmp, path)) {
        let _ = fs.remove_file(&tmp);
        return Err(StorageError::new("writing", path)(e));
    }
    let dir = parent(path);
    fs.sync_dir(dir).map_err(StorageError::new("syncing folder", dir))
}

/// Writes a set of files into the folder `dir` as one, all or none: each is
/// written and fsync'd under its temporary name ([`tmp_path`]) first (a full
/// disk fails there, and the temporary files are removed), then all are
/// renamed in the order given, and the folder is fsync'd once. A power cut
/// before that fsync leaves the old set, after it the new one (renames are
/// durable only with their folder). Put the file that marks the set as
/// complete last: while its temporary file is still there, the set is being
/// replaced. On failure the files already renamed are removed and the
/// temporary ones too; the error names the file.
pub fn write_files_atomic(fs: &dyn Storage, dir: &Path, files: &[(&str, &[u8])]) -> Result<(), StorageError> {
    let paths: Vec<PathBuf> = files.iter().map(|(name, _)| dir.join(name)).collect();
    let cleanup = |upto: usize| {
        for p in &paths[..upto] {
            let _ = fs.remove_file(&tmp_path(p));
        }
    };
    for (i, ((_, bytes), path)) in files.iter().zip(&paths).enumerate() {
        let written = (|| {
            let mut f = fs.create(&tmp_path(path))?;
            f.write_all(bytes)?;
            f.sync()
        })();
        if let Err(e) = written {
            cleanup(i + 1);
            return Err(StorageError::new("writing", path)(e));
        }
    }
    for (i, path) in paths.iter().enumerate() {
        if let Err(e) = fs.rename(&tmp_path(path), path) {
            // Take back what was already renamed: all or nothing.
            for done in &paths[..i] {
                let _ = fs.remove_file(done);
            }
            for p in &paths[i..] {
                let _ = fs.remove_file(&tmp_path(p));
            }
            return Err(StorageError::new("writing", path)(e));
        }
    }
    fs.sync_dir(dir).map_err(StorageError::new("syncing folder", dir))
}
