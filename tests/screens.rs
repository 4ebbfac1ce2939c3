//! Golden images of every screen, and the promise that no input draws outside the panel.
//!
//! Each screen is rendered and compared pixel for pixel with tests/golden/screens/NAME.png.
//! After an intended change, look at the new images, then rewrite them with
//! `LEUKOSCOPE_BLESS=1 cargo test --test screens`.

use embedded_graphics::{
    pixelcolor::{BinaryColor, Rgb565},
    prelude::*,
};
use leukoscope::hw::display::{
    draw_compact, draw_large, render_rgb, Layout, Phase, Skip, View, COMPACT_SIZE, LARGE_SIZE,
};
use std::path::{Path, PathBuf};

/// 87 cells into a 200-cell count, 9 blasts: below the threshold.
fn counting() -> View {
    View {
        phase: Phase::Counting,
        sample_id: "S-2024-0117".into(),
        needs_id: false,
        operator_id: String::new(),
        counted: 87,
        target: 200,
        fields: 12,
        blasts: 9,
        blast_percent: Some(100.0 * 9.0 / 87.0),
        ci95: Some((4.83, 18.76)),
        threshold_percent: 20.0,
        flagged: false,
        unidentified: 3,
        top_classes: vec![("NGS".into(), 41), ("LYT".into(), 20), ("MON".into(), 8)],
        skip: None,
        camera_ok: true,
        message: None,
    }
}

/// 23 blasts in 87 cells: over the threshold.
fn flagged() -> View {
    View {
        blasts: 23,
        blast_percent: Some(100.0 * 23.0 / 87.0),
        ci95: Some((17.55, 37.00)),
        flagged: true,
        top_classes: vec![("NGS".into(), 30), ("MYO".into(), 19), ("LYT".into(), 14)],
        ..counting()
    }
}

fn idle() -> View {
    View { phase: Phase::Idle, sample_id: "S-2024-0118".into(), ..View::default() }
}

fn skipped(skip: Skip) -> View {
    View { skip: Some(skip), ..counting() }
}

fn reached() -> View {
    View {
        phase: Phase::TargetReached,
        counted: 203,
        fields: 27,
        blasts: 14,
        blast_percent: Some(100.0 * 14.0 / 203.0),
        ci95: Some((3.83, 11.27)),
        unidentified: 5,
        top_classes: vec![("NGS".into(), 98), ("LYT".into(), 51), ("MON".into(), 17)],
        ..counting()
    }
}

fn finished() -> View {
    View { phase: Phase::Finished, message: Some("report saved".into()), ..reached() }
}

fn done_flagged() -> View {
    View {
        blasts: 52,
        blast_percent: Some(100.0 * 52.0 / 203.0),
        ci95: Some((19.7, 32.3)),
        flagged: true,
        top_classes: vec![("NGS".into(), 70), ("MYO".into(), 41), ("LYT".into(), 33)],
        ..finished()
    }
}

fn camera_lost() -> View {
    View { camera_ok: false, message: Some("camera lost".into()), skip: Some(Skip::Blurred), ..counting() }
}

fn long_texts() -> View {
    View {
        sample_id: "HOSPITAL-NORTH-HAEMATOLOGY-WARD-7-2024-11-26-0117".into(),
        message: Some("report not saved: /media/usb is full or read-only\nfree some space".into()),
        top_classes: vec![("NEUTROPHIL-SEGMENTED".into(), 123456), ("LYT".into(), 20)],
        ..counting()
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/screens")
}

/// Renders `view` and compares it with the golden `name`.png (or rewrites it when blessing).
fn check(name: &str, layout: Layout, view: &View) {
    let actual = render_rgb(layout, view);
    let golden = golden_dir().join(format!("{name}.png"));
    if std::env::var_os("LEUKOSCOPE_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(golden_dir()).expect("golden dir");
        actual.save(&golden).unwrap_or_else(|e| panic!("cannot write {}: {e}", golden.display()));
        return;
    }
    let expected = match image::open(&golden) {
        Ok(img) => img.to_rgb8(),
        Err(e) => panic!("cannot read {}: {e} (LEUKOSCOPE_BLESS=1 creates it)", golden.display()),
    };
    if expected == actual {
        return;
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screens");
    std::fs::create_dir_all(&out).expect("output dir");
    let path = out.join(format!("{name}.actual.png"));
    actual.save(&path).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    let differing = if expected.dimensions() == actual.dimensions() {
        let n = expected.pixels().zip(actual.pixels()).filter(|(a, b)| a != b).count();
        format!("{n} pixels differ")
    } else {
        format!("size {:?} instead of {:?}", actual.dimensions(), expected.dimensions())
    };
    panic!(
        "screen {name} does not match {}: {differing}; actual image written to {} \
         (if the change is intended, look at it, then rerun with LEUKOSCOPE_BLESS=1)",
        golden.display(),
        path.display()
    );
}

macro_rules! golden {
    ($($test:ident: $layout:ident, $view:expr;)*) => {
        $(
            #[test]
            fn $test() {
                check(stringify!($test), Layout::$layout, &$view);
            }
        )*
    };
}

golden! {
    idle_screen: Large, idle();
    idle_camera_lost: Large, View { camera_ok: false, ..idle() };
    idle_scan_id: Large, View { sample_id: String::new(), needs_id: true, ..idle() };
    idle_operator: Large, View { operator_id: "Jane.Doe".into(), ..idle() };
    idle_auto_number: Large, View { sample_id: String::new(), ..idle() };
    counting_start: Large, View { counted: 0, fields: 0, blasts: 0, blast_percent: None, ci95: None, unidentified: 0,
        top_classes: vec![], skip: Some(Skip::NoCells), ..counting() };
    counting_normal: Large, counting();
    counting_flagged: Large, flagged();
    counting_skip_blurred: Large, skipped(Skip::Blurred);
    counting_skip_moving: Large, skipped(Skip::Moving);
    counting_skip_same_field: Large, skipped(Skip::SameField);
    counting_skip_no_cells: Large, skipped(Skip::NoCells);
    counting_camera_lost: Large, camera_lost();
    counting_message: Large, View { message: Some("undone: field 7".into()), ..counting() };
    counting_long_texts: Large, long_texts();
    target_reached: Large, reached();
    target_reached_message: Large, View { message: Some("undone: field 27".into()), ..reached() };
    finished_screen: Large, finished();
    finished_flagged: Large, done_flagged();
    finished_error: Large, View { message: Some("report not saved: disk full".into()), ..finished() };
    finished_exported: Large, View { message: Some("report saved; USB stick: exported to KINGSTON".into()), ..finished() };
    finished_not_exported: Large,
        View { message: Some("report saved; USB stick: none with leukoscope/".into()), ..finished() };
    compact_idle: Compact, idle();
    compact_idle_scan_id: Compact, View { sample_id: String::new(), needs_id: true, ..idle() };
    compact_counting: Compact, counting();
    compact_counting_flagged: Compact, flagged();
    compact_target_reached: Compact, reached();
    compact_finished: Compact, finished();
    compact_camera_lost: Compact, camera_lost();
}

/// Records every pixel drawn, inside or not: the layouts must stay inside without help from a
/// clipping target (a real panel driver may wrap or misbehave instead of clipping).
struct Bounds<C> {
    size: Size,
    outside: Vec<Point>,
    drawn: usize,
    _color: std::marker::PhantomData<C>,
}

impl<C> Bounds<C> {
    fn new(size: Size) -> Self {
        Bounds { size, outside: Vec::new(), drawn: 0, _color: std::marker::PhantomData }
    }
}

impl<C> OriginDimensions for Bounds<C> {
    fn size(&self) -> Size {
        self.size
    }
}

impl<C: PixelColor> DrawTarget for Bounds<C> {
    type Color = C;
    type Error = std::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<C>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        for Pixel(p, _) in pixels {
            self.drawn += 1;
            let inside = (0..self.size.width as i32).contains(&p.x) && (0..self.size.height as i32).contains(&p.y);
            if !inside && self.outside.len() < 10 {
                self.outside.push(p);
            }
        }
        Ok(())
    }
}

/// Views with every phase and absurd values: huge counts, non-finite percentages, long texts
/// with line breaks and non-Latin characters.
fn extreme_views() -> Vec<View> {
    let long = "ÄÖÜ-µl-测试-".repeat(40) + "\nsecond line\r\tend";
    let mut views = Vec::new();
    for phase in [Phase::Idle, Phase::Counting, Phase::TargetReached, Phase::Finished] {
        for (i, skip) in [None, Some(Skip::Blurred), Some(Skip::SameField)].into_iter().enumerate() {
            let base = View { phase, skip, camera_ok: i != 1, flagged: i != 2, ..counting() };
            views.push(View {
                sample_id: long.clone(),
                counted: u64::MAX,
                target: u64::MAX,
                fields: u64::MAX,
                blasts: u64::MAX,
                unidentified: u64::MAX,
                blast_percent: Some(1e300),
                ci95: Some((-1e300, f64::NAN)),
                threshold_percent: 1e300,
                top_classes: vec![(long.clone(), u64::MAX); 5],
                message: Some(long.clone()),
                ..base.clone()
            });
            views.push(View { target: 0, counted: 5, blast_percent: Some(f64::NAN), ci95: None, ..base.clone() });
            views.push(View { target: 400, counted: 99_999, message: Some(String::new()), ..base.clone() });
            views.push(View {
                sample_id: String::new(),
                top_classes: vec![],
                message: Some("x".repeat(23)),
                ..base.clone()
            });
            views.push(View { needs_id: true, operator_id: long.clone(), sample_id: String::new(), ..base });
        }
    }
    views
}

#[test]
fn large_layout_stays_inside_240x320() {
    for view in extreme_views().iter().chain([counting(), flagged(), idle(), finished()].iter()) {
        let mut target = Bounds::<Rgb565>::new(LARGE_SIZE);
        let Ok(()) = draw_large(view, &mut target);
        assert!(target.outside.is_empty(), "drawn outside at {:?} for {view:?}", target.outside);
        assert!(target.drawn > 0);
    }
}

#[test]
fn compact_layout_stays_inside_128x64() {
    for view in extreme_views().iter().chain([counting(), flagged(), idle(), finished()].iter()) {
        let mut target = Bounds::<BinaryColor>::new(COMPACT_SIZE);
        let Ok(()) = draw_compact(view, &mut target);
        assert!(target.outside.is_empty(), "drawn outside at {:?} for {view:?}", target.outside);
        assert!(target.drawn > 0);
    }
}

/// A long sample id and message are cut inside their boxes: the right-hand margin stays black,
/// and the bottom zone keeps its frame.
#[test]
fn long_texts_are_cut_not_overflowing() {
    for phase in [Phase::Idle, Phase::Counting, Phase::Finished] {
        let img = render_rgb(Layout::Large, &View { phase, ..long_texts() });
        let black_column =
            |x: u32, ys: std::ops::Range<u32>| ys.into_iter().all(|y| img.get_pixel(x, y).0 == [0, 0, 0]);
        // The id line (idle: y 50-70, counting: 24-37) and the message zone (280-318) leave the
        // outer five columns alone.
        for x in 236..240 {
            assert!(black_column(x, 24..100), "{phase:?}: text reaches column {x}");
            assert!(black_column(x, 280..320), "{phase:?}: message reaches column {x}");
        }
    }
    let img = render_rgb(Layout::Compact, &View { phase: Phase::Finished, flagged: false, ..long_texts() });
    // The message line (y 51-63) ends before the last column.
    assert!((51..64).all(|y| img.get_pixel(127, y).0 == [0, 0, 0]));
}

/// The goldens cover the same screens as the tests above: no stray files.
#[test]
fn no_orphan_goldens() {
    let source = include_str!("screens.rs");
    for entry in std::fs::read_dir(golden_dir()).expect("golden dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = name.strip_suffix(".png").unwrap_or(&name);
        assert!(source.contains(&format!("    {stem}: ")), "{name} in tests/golden/screens has no test");
    }
}
