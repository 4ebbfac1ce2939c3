//! Property tests on the real paths: BCCD smear fields cropped, rescaled,
//! rotated, re-encoded and cut short, read as the binary reads files and
//! analysed by the analyzer the binary builds; config text made of the real
//! keys; damaged session journals through the loader; camera buffers through
//! the converters. Errors are fine; a panic, a box outside its field, cells
//! counted on a truncated file or a silently changed journal count are not.
//! Each property runs a fixed number of cases (set in its `proptest_config`):
//! a fixed budget of about 10 s in `cargo test --release`.

use image::{ImageFormat, RgbImage};
use leukoscope::classify::pipeline::Analyzer;
use leukoscope::config::Config;
use leukoscope::hw::camera::{mjpeg_to_rgb, yuyv_to_rgb, ConvertError, Wire};
use leukoscope::input::load_rgb;
use leukoscope::vision::preprocess::{prepare, PreprocessSpec};
use proptest::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod common;

fn analyzer() -> &'static Analyzer {
    static A: OnceLock<Analyzer> = OnceLock::new();
    A.get_or_init(common::analyzer)
}

fn fields() -> &'static [PathBuf] {
    static F: OnceLock<Vec<PathBuf>> = OnceLock::new();
    F.get_or_init(common::bccd_field_paths)
}

fn tmp_file(name: &str, bytes: &[u8]) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let p = DIR.get_or_init(|| common::scratch("prop", "files")).join(name);
    std::fs::write(&p, bytes).expect("write temp file");
    p
}

fn encode(img: &RgbImage, format: ImageFormat, quality: u8) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    if format == ImageFormat::Jpeg {
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(img).expect("encode jpeg");
    } else {
        img.write_to(&mut out, format).expect("encode");
    }
    out.into_inner()
}

/// A BCCD field as a camera or a scanner might give it: a crop (fractions of
/// the field), a rescale, a quarter-turn rotation.
fn variant(field: usize, crop: (f32, f32, f32, f32), scale: f32, turns: u8) -> RgbImage {
    let img = load_rgb(&fields()[field % fields().len()]).expect("BCCD field");
    let (w, h) = (img.width() as f32, img.height() as f32);
    let (x0, y0) = ((crop.0 * w) as u32, (crop.1 * h) as u32);
    let cw = ((crop.2 * w) as u32).clamp(1, img.width() - x0);
    let ch = ((crop.3 * h) as u32).clamp(1, img.height() - y0);
    let img = image::imageops::crop_imm(&img, x0, y0, cw, ch).to_image();
    let (sw, sh) = (((cw as f32 * scale) as u32).max(1), ((ch as f32 * scale) as u32).max(1));
    let img = image::imageops::resize(&img, sw, sh, image::imageops::FilterType::Triangle);
    match turns % 4 {
        1 => image::imageops::rotate90(&img),
        2 => image::imageops::rotate180(&img),
        3 => image::imageops::rotate270(&img),
        _ => img,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Real fields, transformed and re-encoded, through the binary's reader
    /// and analyzer: every box lies inside its field, every prediction is a
    /// distribution. The same file cut short at any point is a bad image
    /// (the reader's error), never a field with cells.
    #[test]
    fn transformed_fields_are_analysed_in_bounds_and_cut_files_are_bad(
        field in 0usize..10_000,
        crop in (0.0f32..0.5, 0.0f32..0.5, 0.3f32..1.0, 0.3f32..1.0),
        scale in 0.4f32..1.6,
        turns in 0u8..4,
        format in prop_oneof![Just(ImageFormat::Jpeg), Just(ImageFormat::Png), Just(ImageFormat::Tiff), Just(ImageFormat::Bmp)],
        quality in 5u8..=100,
        cut in 0.0f64..1.0,
    ) {
        let img = variant(field, crop, scale, turns);
        let bytes = encode(&img, format, quality);
        let ext = format.extensions_str()[0];
        let read = load_rgb(&tmp_file(&format!("whole.{ext}"), &bytes)).expect("a whole file reads");
        prop_assert_eq!(read.dimensions(), img.dimensions());
        let r = analyzer().analyze(&read).expect("analysis");
        prop_assert_eq!((r.width, r.height), img.dimensions());
        for c in &r.cells {
            for b in [c.bbox, c.nucleus] {
                prop_assert!(b.x0 < b.x1 && b.y0 < b.y1 && b.x1 <= r.width && b.y1 <= r.height, "{:?} in {}x{}", b, r.width, r.height);
            }
            let sum: f32 = c.prediction.probs.iter().sum();
            prop_assert!(c.prediction.probs.iter().all(|p| (0.0..=1.0).contains(p)) && (sum - 1.0).abs() < 1e-3, "{:?}", c.prediction.probs);
        }
        // Cut short: JPEG and PNG say so (TIFF and BMP may not: their decoders
        // read what the header points at, so a cut file can be just an error or none).
        if matches!(format, ImageFormat::Jpeg | ImageFormat::Png) {
            let at = ((bytes.len() as f64 * cut) as usize).min(bytes.len() - 1);
            let cut_file = tmp_file(&format!("cut.{ext}"), &bytes[..at]);
            match load_rgb(&cut_file) {
                Err(e) => prop_assert!(e.to_string().contains("cut."), "{}", e),
                Ok(img) => prop_assert!(false, "{} of {} bytes read as a {:?} image", at, bytes.len(), img.dimensions()),
            }
        }
    }

    /// A real JPEG with bytes flipped: decoding fails cleanly or yields an
    /// image that the whole front end digests.
    #[test]
    fn corrupt_jpeg_never_panics(flips in proptest::collection::vec((0usize..60_000, 1u8..=255), 1..20)) {
        let mut bytes = std::fs::read(&fields()[0]).expect("BCCD field");
        for (i, b) in flips {
            let n = bytes.len();
            bytes[i % n] ^= b;
        }
        if let Ok(img) = load_rgb(&tmp_file("flipped.jpg", &bytes)) {
            let r = analyzer().analyze(&img).expect("analysis");
            for c in &r.cells {
                prop_assert!(c.bbox.x1 <= r.width && c.bbox.y1 <= r.height);
            }
        }
    }

    /// Random bytes are never an image, and the error names the file.
    #[test]
    fn random_bytes_are_a_named_error(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let p = tmp_file("random.png", &bytes);
        if let Err(e) = load_rgb(&p) {
            prop_assert!(e.to_string().contains("random.png"));
        }
    }

    /// Any image size and content: detection and preprocessing are total.
    #[test]
    fn any_image_is_digested(w in 1u32..300, h in 1u32..300, seed in any::<u64>(), flat in any::<bool>()) {
        let mut s = seed | 1;
        let img = RgbImage::from_fn(w, h, |_, _| {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            if flat { image::Rgb([200, 180, 190]) } else { image::Rgb([s as u8, (s >> 8) as u8, (s >> 16) as u8]) }
        });
        let r = analyzer().analyze(&img).expect("analysis");
        for c in &r.cells {
            prop_assert!(c.bbox.x1 <= w && c.bbox.y1 <= h && c.bbox.x0 < c.bbox.x1 && c.bbox.y0 < c.bbox.y1);
        }
        let p = prepare(&img, &PreprocessSpec::default(), None, r.scale.um_per_px);
        prop_assert!(p.tensor.iter().all(|v| v.is_finite()));
    }
}

/// Every key `board/leukoscope.toml` documents (set or commented out), with
/// its section and documented value: the real keys, from the file the tests
/// already hold to `Config::default()`.
fn documented_keys() -> &'static [(String, String, String)] {
    static K: OnceLock<Vec<(String, String, String)>> = OnceLock::new();
    K.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("board/leukoscope.toml");
        let text = std::fs::read_to_string(&path).expect("board/leukoscope.toml");
        let mut section = String::new();
        let mut keys = Vec::new();
        for line in text.lines() {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
                continue;
            }
            let Some((key, value)) = line.trim_start_matches("# ").split_once(" = ") else { continue };
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                continue;
            }
            // The documented example must be a real key with a valid value.
            let one = format!("[{section}]\n{key} = {value}\n");
            if Config::parse(&one, Path::new("doc.toml")).is_ok() {
                keys.push((section.clone(), key.to_string(), value.to_string()));
            }
        }
        keys.sort();
        keys.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        keys
    })
}

/// A TOML value of any type, often near a boundary.
fn any_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (-3i64..3).prop_map(|v| v.to_string()),
        any::<i32>().prop_map(|v| v.to_string()),
        prop_oneof![Just(0.0f64), Just(-0.5), Just(1.0), Just(100.0), Just(1e9), Just(f64::NAN), Just(f64::INFINITY)]
            .prop_map(|v| if v.is_nan() {
                "nan".into()
            } else if v.is_infinite() {
                "inf".into()
            } else {
                format!("{v:?}")
            }),
        (-1.0f64..2.0).prop_map(|v| format!("{v:?}")),
        "[a-zA-Z0-9_/.]{0,12}".prop_map(|s| format!("{s:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        proptest::collection::vec(prop_oneof![Just("MYO"), Just("NGS"), Just("XYZ"), Just("")], 0..3)
            .prop_map(|v| format!("{v:?}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Config text made of the real keys, each with its documented value or a
    /// random one: parsed, or refused naming the file and (for a bad value) a
    /// key that was set. What parses is the config it says: it survives a
    /// round trip through `config` unchanged (no NaN or other value that is
    /// not equal to itself slips through).
    #[test]
    fn config_text_from_the_real_keys(picks in proptest::collection::vec((0usize..1000, any::<bool>(), any_value()), 1..8)) {
        let keys = documented_keys();
        prop_assert!(keys.len() >= 60, "documented keys found: {}", keys.len());
        let mut chosen: Vec<(&str, &str, String)> = picks
            .iter()
            .map(|(i, documented, random)| {
                let (s, k, v) = &keys[i % keys.len()];
                (s.as_str(), k.as_str(), if *documented { v.clone() } else { random.clone() })
            })
            .collect();
        chosen.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        chosen.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        let mut text = String::new();
        let mut section = "";
        for (s, k, v) in &chosen {
            if *s != section {
                text += &format!("[{s}]\n");
                section = s;
            }
            text += &format!("{k} = {v}\n");
        }
        match Config::parse(&text, Path::new("random.toml")) {
            Ok(c) => {
                let again = toml::to_string(&c).expect("serialise");
                let back = Config::parse(&again, Path::new("again.toml"));
                prop_assert!(back.as_ref().is_ok_and(|b| *b == c), "{}\n->\n{}\n{:?}", text, again, back.err());
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("random.toml"), "{}", msg);
            }
        }
    }
}

/// A real session journal, written by `leukoscope run` over six fields with
/// an undo: its bytes, and the field numbers counted after each line.
fn journal() -> &'static (Vec<u8>, Vec<Vec<u64>>) {
    static J: OnceLock<(Vec<u8>, Vec<Vec<u64>>)> = OnceLock::new();
    J.get_or_init(|| {
        let dir = common::scratch("prop", "journal");
        let config = common::write_run_config(&dir, "");
        let script = dir.join("buttons.txt");
        std::fs::write(&script, "1 start\n25 undo\n").expect("script");
        let out = common::bin()
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--script")
            .arg(&script)
            .arg("--replay")
            .args(&fields()[40..46])
            .env("RUST_LOG", "error")
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let sessions = common::files_under(&dir.join("state/sessions"));
        let path = sessions.iter().find(|p| p.ends_with("journal.jsonl")).expect("a journal");
        let bytes = std::fs::read(path).expect("journal");
        // What each prefix of whole lines counts, replayed here independently of the loader.
        let mut counted: Vec<u64> = Vec::new();
        let mut after = Vec::new();
        for line in String::from_utf8_lossy(&bytes).lines() {
            let e: Value = serde_json::from_str(line).expect("journal line");
            match e["t"].as_str() {
                Some("field") => counted.push(e["field"].as_u64().expect("field number")),
                Some("undo") => counted.retain(|&f| Some(f) != e["field"].as_u64()),
                _ => {}
            }
            after.push(counted.clone());
        }
        assert!(after.iter().any(|c| c.len() >= 3), "the journal counts fields: {after:?}");
        assert!(String::from_utf8_lossy(&bytes).contains(r#""t":"undo""#), "the journal holds an undo");
        (bytes, after)
    })
}

/// The loader on `bytes` as a session's journal: its counted field numbers.
fn load_journal(bytes: &[u8]) -> Result<Vec<u64>, leukoscope::appliance::session::SessionError> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = common::scratch("prop", &format!("session{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::write(dir.join("journal.jsonl"), bytes).expect("write journal");
    let os: std::sync::Arc<dyn leukoscope::storage::Storage> = std::sync::Arc::new(leukoscope::storage::Os);
    let loaded =
        leukoscope::appliance::session::load(&os, &dir).map(|(s, _)| s.fields.iter().map(|(n, _)| *n).collect());
    std::fs::remove_dir_all(&dir).ok();
    loaded
}

#[derive(Debug, Clone)]
enum Damage {
    /// Cut at a byte offset (a crash mid-append, a short copy).
    Cut(usize),
    /// A line written twice.
    Duplicate(usize),
    /// Two lines exchanged.
    Swap(usize, usize),
    /// Bytes overwritten.
    Flip(Vec<(usize, u8)>),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Damaged journals through the loader: never a panic, and never a count
    /// other than the journal's. A cut keeps exactly the whole lines before
    /// it; a repeated line is refused; exchanged lines are refused unless the
    /// order did not matter (then the count is the same).
    #[test]
    fn damaged_journals_load_or_fail_never_miscount(damage in prop_oneof![
        (0usize..100_000).prop_map(Damage::Cut),
        (0usize..1000).prop_map(Damage::Duplicate),
        (0usize..1000, 0usize..1000).prop_map(|(a, b)| Damage::Swap(a, b)),
        proptest::collection::vec((0usize..100_000, 1u8..=255), 1..4).prop_map(Damage::Flip),
    ]) {
        let (bytes, after) = journal();
        let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
        let whole = after.last().expect("lines");
        match damage {
            Damage::Cut(at) => {
                let at = at % bytes.len();
                let complete = bytes[..at].iter().filter(|&&b| b == b'\n').count();
                match load_journal(&bytes[..at]) {
                    Ok(fields) => prop_assert_eq!(Some(&fields), complete.checked_sub(1).map(|k| &after[k])),
                    Err(e) => prop_assert!(complete == 0, "{} whole lines, refused: {}", complete, e),
                }
            }
            Damage::Duplicate(i) => {
                let i = i % lines.len();
                let mut v = lines.clone();
                v.insert(i, lines[i]);
                prop_assert!(load_journal(&v.concat()).is_err(), "line {} twice accepted", i + 1);
            }
            Damage::Swap(a, b) => {
                let (a, b) = (a % lines.len(), b % lines.len());
                let mut v = lines.clone();
                v.swap(a, b);
                if let Ok(fields) = load_journal(&v.concat()) {
                    prop_assert_eq!(&fields, whole, "lines {} and {} exchanged", a + 1, b + 1);
                }
            }
            Damage::Flip(flips) => {
                let mut v = bytes.clone();
                for (i, x) in flips {
                    let n = v.len();
                    v[i % n] ^= x;
                }
                // No checksum per line: a flip inside a value can still parse.
                // What is asked here: no panic, and never more fields than written.
                if let Ok(fields) = load_journal(&v) {
                    prop_assert!(fields.len() <= whole.len() + 1, "{:?}", fields);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// YUYV buffers of any geometry: converted exactly when the geometry is
    /// whole (even width, a stride that holds a row, a buffer that holds the
    /// frame), else an error; RGB3 and MJPG through the same entry point.
    #[test]
    fn camera_buffers_convert_or_fail_by_their_geometry(
        w in 0u32..64, h in 0u32..48, stride_delta in -2i64..16, short in 0usize..8,
        fill in any::<u8>(), wire in prop_oneof![Just(*b"YUYV"), Just(*b"RGB3"), Just(*b"MJPG")],
    ) {
        let wire = Wire::from_fourcc(&wire).expect("a supported wire format");
        let bpp = if wire.fourcc() == *b"RGB3" { 3 } else { 2 };
        let row = w as usize * bpp;
        let stride = (row as i64 + stride_delta).max(0) as usize;
        let need = if h == 0 { 0 } else { stride * (h as usize - 1) + row };
        let buf = vec![fill; need.saturating_sub(short)];
        let got = wire.convert(&buf, w, h, stride);
        if wire.fourcc() == *b"MJPG" {
            prop_assert!(got.is_err(), "a buffer of {:#04x} bytes is no JPEG", fill);
        } else {
            let whole = w > 0 && h > 0 && (bpp == 3 || w % 2 == 0) && stride >= row && short == 0;
            prop_assert_eq!(got.is_ok(), whole, "{}x{} stride {} len {}: {:?}", w, h, stride, buf.len(), got.as_ref().err());
            if let Ok(img) = got {
                prop_assert_eq!(img.dimensions(), (w, h));
            }
        }
    }

    /// MJPEG frames (a real field, re-encoded at the camera's sizes and
    /// qualities) cut short or damaged: a cut frame is always the truncation
    /// error, never a half-grey image; damage is an error or an image of the
    /// frame's size, never a panic.
    #[test]
    fn mjpeg_frames_cut_or_damaged(
        quality in 20u8..=95, turns in 0u8..4, cut in 0.0f64..1.0,
        flips in proptest::collection::vec((0usize..200_000, 1u8..=255), 0..6),
    ) {
        let img = variant(7, (0.0, 0.0, 1.0, 1.0), 0.5, turns);
        let frame = encode(&img, ImageFormat::Jpeg, quality);
        prop_assert_eq!(mjpeg_to_rgb(&frame).map(|i| i.dimensions()), Ok(img.dimensions()));
        let at = ((frame.len() as f64 * cut) as usize).min(frame.len() - 1);
        match mjpeg_to_rgb(&frame[..at]) {
            Err(ConvertError::TruncatedJpeg | ConvertError::NotJpeg) => {}
            other => prop_assert!(false, "{} of {} bytes: {:?}", at, frame.len(), other.map(|i| i.dimensions())),
        }
        let mut damaged = frame.clone();
        for (i, x) in flips {
            let n = damaged.len();
            damaged[i % n] ^= x;
        }
        if let Ok(i) = mjpeg_to_rgb(&damaged) {
            prop_assert!(i.width() > 0 && i.height() > 0);
        }
        let _ = yuyv_to_rgb(&damaged, img.width() & !1, 1, damaged.len());
    }
}
