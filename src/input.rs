//! Finding and decoding input images, with errors that name the file.

use image::RgbImage;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: no such file or directory")]
    Missing { path: PathBuf },
    #[error("{path}: directory holds no images (looked for {exts})", exts = IMAGE_EXTENSIONS.join(", "))]
    EmptyDir { path: PathBuf },
    #[error("{path}: cannot read directory")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot decode image")]
    Decode { path: PathBuf, source: image::ImageError },
    #[error("{path}: image is empty ({width}x{height})")]
    Empty { path: PathBuf, width: u32, height: u32 },
    #[error("{path}: JPEG is truncated (no end-of-image marker): the file was cut short")]
    Truncated { path: PathBuf },
}

/// File extensions treated as images when walking directories.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "tif", "tiff", "bmp"];

/// Image formats this build cannot read: skipped when walking a directory, with
/// a warning naming the file (other files, e.g. annotations, are skipped quietly).
const UNREADABLE_IMAGE_EXTENSIONS: &[&str] = &["webp", "gif", "avif", "heic", "heif", "jxl", "jp2", "ico"];

fn has_extension(path: &Path, list: &[&str]) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| list.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn is_image(path: &Path) -> bool {
    has_extension(path, IMAGE_EXTENSIONS)
}

impl InputError {
    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            InputError::Missing { path }
            | InputError::EmptyDir { path }
            | InputError::Dir { path, .. }
            | InputError::Decode { path, .. }
            | InputError::Empty { path, .. }
            | InputError::Truncated { path } => path,
        }
    }
}

/// Expands files and directories (recursively, sorted) into image paths; the
/// first bad input is the error. See [`collect_batch`].
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, InputError> {
    collect_batch(inputs).into_iter().collect()
}

/// Expands files and directories (recursively, sorted) into image paths, in
/// order, with an error in place of an input that gives none (missing, an
/// unreadable or empty directory), so that a batch can go on with the others.
/// Files named explicitly are kept whatever their extension, so that a corrupt
/// or mislabelled file is reported rather than skipped. Directories are walked
/// by their real (canonical) paths: a symbolic link back up the tree is not
/// followed again, and a file reached twice (through links) is listed once.
pub fn collect_batch(inputs: &[PathBuf]) -> Vec<Result<PathBuf, InputError>> {
    let mut seen = Seen::default();
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            match walk(input, &mut seen, &mut found) {
                Err(e) => out.push(Err(e)),
                Ok(()) if found.is_empty() => out.push(Err(InputError::EmptyDir { path: input.clone() })),
                Ok(()) => out.extend(found.into_iter().map(Ok)),
            }
        } else if input.exists() {
            if let Ok(real) = input.canonicalize() {
                seen.files.insert(real);
            }
            out.push(Ok(input.clone()));
        } else {
            out.push(Err(InputError::Missing { path: input.clone() }));
        }
    }
    out
}

/// Real paths already walked (directories) or listed (files).
#[derive(Default)]
struct Seen {
    dirs: std::collections::HashSet<PathBuf>,
    files: std::collections::HashSet<PathBuf>,
}

fn walk(dir: &Path, seen: &mut Seen, out: &mut Vec<PathBuf>) -> Result<(), InputError> {
    let err = |source| InputError::Dir { path: dir.to_path_buf(), source };
    if !seen.dirs.insert(dir.canonicalize().map_err(err)?) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(err)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(err)?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, seen, out)?;
        } else if is_image(&p) {
            // A dangling link keeps its own path: it is reported when read.
            if seen.files.insert(p.canonicalize().unwrap_or_else(|_| p.clone())) {
                out.push(p);
            }
        } else if has_extension(&p, UNREADABLE_IMAGE_EXTENSIONS) {
            log::warn!(
                "{}: skipped: not a supported image type (supported: {})",
                p.display(),
                IMAGE_EXTENSIONS.join(", ")
            );
        }
    }
    Ok(())
}

/// Decodes an image file to 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage, InputError> {
    let bytes = std::fs::read(path)
        .map_err(|e| InputError::Decode { path: path.into(), source: image::ImageError::IoError(e) })?;
    // The JPEG decoder fills a file cut short with grey and says nothing: a count
    // on half a field. A whole JPEG ends with the end-of-image marker (a few
    // writers pad zeros after it).
    let trimmed = bytes.iter().rposition(|&b| b != 0).map_or(&bytes[..0], |i| &bytes[..=i]);
    if bytes.starts_with(&[0xFF, 0xD8]) && !trimmed.ends_with(&[0xFF, 0xD9]) {
        return Err(InputError::Truncated { path: path.into() });
    }
    let img = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| InputError::Decode { path: path.into(), source: image::ImageError::IoError(e) })?
        .decode()
        .map_err(|source| InputError::Decode { path: path.into(), source })?
        .to_rgb8();
    if img.width() == 0 || img.height() == 0 {
        return Err(InputError::Empty { path: path.into(), width: img.width(), height: img.height() });
    }
    Ok(img)
}

/// Where the public datasets live: `$LEUKOSCOPE_DATA`, else `../shared/data`
/// relative to the working directory. Tests and tools use this one setting.
pub fn data_dir() -> PathBuf {
    std::env::var_os("LEUKOSCOPE_DATA").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("../shared/data"))
}
