//! Property tests: corrupt images, odd image sizes and random configs give
//! errors or results, never a panic.

use image::RgbImage;
use leukoscope::config::Config;
use leukoscope::detect::{detect, DetectParams};
use leukoscope::input::load_rgb;
use leukoscope::preprocess::{prepare, PreprocessSpec};
use proptest::prelude::*;
use std::path::Path;

fn real_jpeg() -> Vec<u8> {
    let p = leukoscope::input::data_dir().join("bccd/JPEGImages/BloodImage_00000.jpg");
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("data folder missing or incomplete ({}): {e}; set LEUKOSCOPE_DATA", p.display()))
}

fn tmp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("leukoscope-prop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write temp file");
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A real JPEG truncated and with bytes flipped: decoding fails cleanly or
    /// yields an image that the whole front end digests.
    #[test]
    fn corrupt_jpeg_never_panics(cut in 0usize..60_000, flips in proptest::collection::vec((0usize..60_000, any::<u8>()), 0..20)) {
        let mut bytes = real_jpeg();
        for (i, b) in flips {
            let n = bytes.len();
            bytes[i % n] ^= b;
        }
        bytes.truncate(cut.min(bytes.len()));
        let p = tmp_file(&format!("c{cut}.jpg"), &bytes);
        if let Ok(img) = load_rgb(&p) {
            let found = detect(&img, &DetectParams::default(), None);
            let bg = Some(found.background);
            let p = prepare(&img, &PreprocessSpec::default(), bg, found.scale.um_per_px);
            prop_assert!(p.tensor.iter().all(|v| v.is_finite()));
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
        let found = detect(&img, &DetectParams::default(), None);
        for c in &found.cells {
            prop_assert!(c.bbox.x1 <= w && c.bbox.y1 <= h && c.bbox.x0 < c.bbox.x1 && c.bbox.y0 < c.bbox.y1);
        }
        let p = prepare(&img, &PreprocessSpec::default(), None, found.scale.um_per_px);
        prop_assert!(p.tensor.iter().all(|v| v.is_finite()));
    }

    /// Random TOML-ish text: parsed or rejected with the file's name, never a panic.
    #[test]
    fn random_config_text(text in "(\\[(count|scale|detect|model|x)\\]\n)?([a-z_]{1,24} = (-?[0-9]{1,4}(\\.[0-9]{1,3})?|\"[a-z]{0,5}\"|true|\\[\\])\n){0,4}") {
        match Config::parse(&text, Path::new("random.toml")) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.to_string().contains("random.toml")),
        }
    }
}
