//! The session's unit tests: a whole count, torn and damaged journals, repair.

use super::*;
use crate::report::CellRecord;
use crate::storage::{Os, Storage};
use crate::vision::detect::{DetectParams, FieldScale, Rejected, ScaleSource};
use std::sync::Arc;

fn card() -> crate::classify::model::ModelCard {
    crate::classify::model::ModelCard::load(&crate::classify::model::default_card_path()).expect("shipped card")
}

fn cell(code: &str, blast: bool) -> CellRecord {
    CellRecord::counted_for_test(code, blast)
}

fn field(cells: Vec<CellRecord>) -> FieldRecord {
    FieldRecord {
        path: "test".into(),
        width: 64,
        height: 64,
        cells,
        not_counted: vec![],
        scale: FieldScale::new(0.1, ScaleSource::Configured),
        rejected: Rejected::default(),
        red_cells_px: vec![],
    }
}

fn thumb() -> PackedThumb {
    crate::vision::gating::Thumb::of(&image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 9])
    }))
    .pack()
}

fn os() -> Arc<dyn Storage> {
    Arc::new(Os)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("leukoscope-session-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn fields_undo_finish_and_resume() {
    let root = tmp("cycle");
    let store = Store::open(&root).unwrap();
    let card = card();
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([200, 150, 180]));
    let (mut s, mut j) = store.start("", 100, 20.0, &card.sha256).unwrap();
    assert_eq!(s.sample_id, "S0001");
    record_field(&mut s, &mut j, field(vec![cell("MYO", true), cell("NGS", false)]), &img, thumb()).unwrap();
    record_field(&mut s, &mut j, field(vec![cell("LYT", false)]), &img, thumb()).unwrap();
    assert_eq!(undo_last(&mut s, &mut j).unwrap(), Some(2));
    record_field(&mut s, &mut j, field(vec![cell("NGS", false), cell("NGS", false)]), &img, thumb()).unwrap();
    assert_eq!((s.diff.cells(), s.diff.blasts), (4, 1));
    assert_eq!(s.fields.iter().map(|f| f.0).collect::<Vec<_>>(), vec![1, 3]);
    // The crops of the undone field are gone, the others stay.
    let crops: Vec<_> = walk(&s.dir.join("crops"));
    assert_eq!(crops.len(), 4, "{crops:?}");
    assert!(crops.iter().all(|p| !p.contains("f0002")));
    drop(j);
    // A restart rebuilds exactly the same state.
    let (again, mut j2) = store.recover(&card, &DetectParams::default()).unwrap().expect("open session");
    assert_eq!(again, s);
    let mut s = again;
    finish(&mut s, &mut j2, &card, &DetectParams::default()).unwrap();
    assert_eq!(s.phase(), Phase::Finished);
    let csv = std::fs::read_to_string(s.dir.join("cells.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert!(store.recover(&card, &DetectParams::default()).unwrap().is_none());
    let (next, _) = store.start("", 100, 20.0, &card.sha256).unwrap();
    assert_eq!(next.sample_id, "S0002");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn torn_last_record_is_cut_and_damage_is_refused() {
    let root = tmp("torn");
    let store = Store::open(&root).unwrap();
    let card = card();
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([200, 150, 180]));
    let (mut s, mut j) = store.start("A-1", 200, 20.0, &card.sha256).unwrap();
    record_field(&mut s, &mut j, field(vec![cell("NGS", false)]), &img, thumb()).unwrap();
    drop(j);
    let journal = s.dir.join("journal.jsonl");
    let good = std::fs::read(&journal).unwrap();
    // A crash in the middle of appending the next record.
    let mut torn = good.clone();
    torn.extend_from_slice(br#"{"t":"field","field":2,"unix_ti"#);
    std::fs::write(&journal, &torn).unwrap();
    let (again, mut j) = load(&os(), &s.dir).unwrap();
    assert_eq!(again.diff.cells(), 1);
    assert_eq!(std::fs::read(&journal).unwrap(), good, "torn tail removed");
    let mut again = again;
    record_field(&mut again, &mut j, field(vec![cell("LYT", false)]), &img, thumb()).unwrap();
    assert_eq!(load(&os(), &s.dir).unwrap().0.diff.cells(), 2);
    // Damage before the end is never skipped silently.
    let mut bad = std::fs::read(&journal).unwrap();
    let at = bad.iter().position(|&b| b == b'\n').unwrap() + 3;
    bad[at] = b'#';
    std::fs::write(&journal, &bad).unwrap();
    let e = load(&os(), &s.dir).unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// Issue 14: what two processes left (the same field numbers twice) and a
/// damaged start record: repair keeps what fits, sets the rest aside, and
/// the state folder opens again.
#[test]
fn repair_sets_aside_duplicates_and_a_damaged_start() {
    let root = tmp("repair");
    let store = Store::open(&root).unwrap();
    let card = card();
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([200, 150, 180]));
    let (mut s, mut j) = store.start("", 100, 20.0, &card.sha256).unwrap();
    for code in ["NGS", "LYT", "MYO", "NGS"] {
        record_field(&mut s, &mut j, field(vec![cell(code, code == "MYO")]), &img, thumb()).unwrap();
    }
    drop(j);
    let journal = s.dir.join(JOURNAL);
    let good = std::fs::read(&journal).unwrap();
    // A second process appended fields 4 and 5 again after them.
    let lines: Vec<&[u8]> = good.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let mut doubled = good.clone();
    for l in &lines[3..5] {
        doubled.extend_from_slice(l);
        doubled.push(b'\n');
    }
    std::fs::write(&journal, &doubled).unwrap();
    let e = load(&os(), &s.dir).unwrap_err().to_string();
    assert!(e.contains("line 6") && e.contains("field 3 recorded twice"), "{e}");
    let r = store.repair().unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].kept, r[0].set_aside.clone()), (5, vec![6, 7]));
    assert_eq!(std::fs::read(&journal).unwrap(), good);
    let (again, _) = load(&os(), &s.dir).unwrap();
    assert_eq!(again, s);
    assert!(store.repair().unwrap().is_empty(), "nothing left to repair");
    // A damaged start record: nothing fits, the journal goes aside whole
    // and the folder is no longer a session; the next start is a new one.
    let mut bad = good.clone();
    bad[2] = b'#';
    std::fs::write(&journal, &bad).unwrap();
    let r = store.repair().unwrap();
    assert_eq!((r[0].kept, r[0].set_aside.len()), (0, lines.len()));
    assert_eq!(std::fs::read(&r[0].aside_file).unwrap(), bad);
    assert!(r[0].aside_file.ends_with("journal.damaged.2.jsonl"), "{:?}", r[0].aside_file);
    assert!(store.recover(&card, &DetectParams::default()).unwrap().is_none());
    std::fs::remove_dir_all(&root).unwrap();
}

fn walk(d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}
