//! Finding and decoding input images, with errors that name the file.

use image::RgbImage;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: no such file or directory")]
    Missing { path: PathBuf },
    #[error("{path}: directory holds no images (looked for {exts})", exts = IMAGE_EXTENSIONS.join(", "))]
    EmptyDir { path: PathBuf },
    #[error("{path}: cannot read directory: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot decode image: {source}")]
    Decode { path: PathBuf, source: image::ImageError },
    #[error("{path}: image is empty ({width}x{height})")]
    Empty { path: PathBuf, width: u32, height: u32 },
}

/// File extensions treated as images when walking directories.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "tif", "tiff", "bmp"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Expands files and directories (recursively, sorted) into image paths. Files
/// named explicitly are kept whatever their extension, so that a corrupt or
/// mislabelled file is reported rather than skipped.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, InputError> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let before = out.len();
            walk(input, &mut out)?;
            if out.len() == before {
                return Err(InputError::EmptyDir { path: input.clone() });
            }
        } else if input.exists() {
            out.push(input.clone());
        } else {
            return Err(InputError::Missing { path: input.clone() });
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), InputError> {
    let err = |source| InputError::Dir { path: dir.to_path_buf(), source };
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(err)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(err)?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Decodes an image file to 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage, InputError> {
    let img = image::ImageReader::open(path)
        .map_err(|e| InputError::Decode { path: path.into(), source: image::ImageError::IoError(e) })?
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
