//! The barcode path without hardware: a recorded evdev event stream (a USB HID
//! scanner's events for three scans, synthesized by tools/synth-scanner-fixture.py
//! in the kernel's `struct input_event` format: see that script) decoded as
//! the device would be read.

use leukoscope::hw::scanner::{decode, parse_events, Layout, Scanner, ScannerConfig, EV_KEY, EV_MSC, EV_SYN};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn fixture(layout: Layout) -> PathBuf {
    let name = match layout {
        Layout::Long64 => "scanner-hid.long64.evdev",
        Layout::Long32 => "scanner-hid.long32.evdev",
    };
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The codes the recording holds: the third scan has no Enter (cut off) and gives nothing.
const CODES: [&str; 2] = ["OP:Jane.Doe", "HX-2024/0117a"];

#[test]
fn recorded_scans_decode_to_their_codes_in_both_layouts() {
    for layout in [Layout::Long64, Layout::Long32] {
        let bytes = std::fs::read(fixture(layout)).expect("fixture");
        assert_eq!(bytes.len() % layout.size(), 0, "{layout:?}: whole records");
        let events = parse_events(&bytes, layout);
        // What a HID keyboard sends: key downs and ups each after its MSC_SCAN, in SYN reports.
        assert_eq!(events.len(), 222, "{layout:?}");
        assert!(events.iter().all(|e| [EV_SYN, EV_KEY, EV_MSC].contains(&e.kind)));
        let downs = events.iter().filter(|e| e.kind == EV_KEY && e.value == 1).count();
        let ups = events.iter().filter(|e| e.kind == EV_KEY && e.value == 0).count();
        assert_eq!(downs, ups);
        assert_eq!(decode(events), CODES, "{layout:?}");
    }
}

/// The same recording read through the device path (`[scanner] device`): a
/// regular file is read once, as a device would be, in the reader thread.
#[test]
fn scanner_reads_a_recording_like_a_device() {
    let config = ScannerConfig { device: Some(fixture(Layout::native())) };
    let mut scanner = Scanner::open(&config).expect("scanner");
    let mut got = Vec::new();
    let t = Instant::now();
    while got.len() < CODES.len() && t.elapsed() < Duration::from_secs(10) {
        got.extend(scanner.codes());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    got.extend(scanner.codes());
    assert_eq!(got, CODES);
}
