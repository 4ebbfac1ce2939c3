//! A USB barcode scanner for sample and operator IDs. Such a scanner is a USB
//! keyboard: each code arrives as key presses followed by Enter. It is read from
//! its evdev node (`/dev/input/eventN`, better the stable
//! `/dev/input/by-id/usb-...-event-kbd`), grabbed exclusively (EVIOCGRAB) so that
//! the codes do not also type into a console or another program.
//!
//! Two halves: [`Decoder`] turns input events into lines of text, a pure function
//! of the events (US keyboard layout, Shift; Enter ends a code; key releases,
//! autorepeat, EV_MSC scan codes and EV_SYN reports carry no text); [`Scanner`]
//! reads the device in a thread, decodes, and hands the codes over a channel.
//!
//! The kernel's `struct input_event` is read directly rather than through the
//! `evdev` crate: it is a timestamp and three integers, and only the timestamp's
//! width differs between targets (two `long`s: 24 bytes on aarch64 and x86_64,
//! 16 on armv7), see [`Layout`]. `evdev` would bring `nix` with other features,
//! `bitvec` and four more crates, and switch on `libc`'s `extra_traits`, which
//! rebuilds everything that uses `libc`, for a read and one ioctl.

use crate::config::InvalidValue;
use crate::hw::buttons::{Button, ButtonError, ButtonSource};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// `[scanner]` in the configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScannerConfig {
    /// USB barcode scanner (a keyboard device): its evdev node, best the stable
    /// name under /dev/input/by-id/ ending in "-event-kbd". Read exclusively
    /// (other programs see none of its keys); US keyboard layout; each code must
    /// end with Enter (most scanners' factory setting). Unplugged, it is opened
    /// again when it returns. Unset (default): no scanner.
    pub device: Option<PathBuf>,
}

impl ScannerConfig {
    pub fn validate(&self) -> Result<(), InvalidValue> {
        match &self.device {
            Some(p) if p.file_name().is_none() => {
                Err(InvalidValue::new("scanner.device", p.display(), "must name a device file"))
            }
            _ => Ok(()),
        }
    }
}

/// Event types and codes from linux/input-event-codes.h.
pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_MSC: u16 = 0x04;
pub const SYN_REPORT: u16 = 0;
pub const SYN_DROPPED: u16 = 3;
pub const MSC_SCAN: u16 = 4;
pub const KEY_ENTER: u16 = 28;
pub const KEY_KPENTER: u16 = 96;
pub const KEY_BACKSPACE: u16 = 14;
pub const KEY_LEFTSHIFT: u16 = 42;
pub const KEY_RIGHTSHIFT: u16 = 54;
pub const KEY_LEFTCTRL: u16 = 29;
pub const KEY_RIGHTCTRL: u16 = 97;
pub const KEY_LEFTALT: u16 = 56;
pub const KEY_RIGHTALT: u16 = 100;

/// One input event, without its timestamp (the decoding needs none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

/// The byte layout of `struct input_event { struct timeval time; __u16 type;
/// __u16 code; __s32 value; }`: the timeval is two C `long`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 64-bit `long` (aarch64, x86_64): 24 bytes.
    Long64,
    /// 32-bit `long` (armv7): 16 bytes.
    Long32,
}

impl Layout {
    /// The layout of the machine this runs on.
    pub fn native() -> Layout {
        if std::mem::size_of::<std::ffi::c_long>() == 8 {
            Layout::Long64
        } else {
            Layout::Long32
        }
    }

    /// Bytes per event.
    pub fn size(self) -> usize {
        match self {
            Layout::Long64 => 24,
            Layout::Long32 => 16,
        }
    }

    /// The event in one record of `self.size()` bytes (little-endian, as on every
    /// supported board).
    pub fn event(self, record: &[u8]) -> InputEvent {
        let at = self.size() - 8;
        let u16_at = |i: usize| u16::from_le_bytes([record[i], record[i + 1]]);
        InputEvent {
            kind: u16_at(at),
            code: u16_at(at + 2),
            value: i32::from_le_bytes([record[at + 4], record[at + 5], record[at + 6], record[at + 7]]),
        }
    }
}

/// The events in a byte stream of whole records (a recording, or what `read`
/// returned); a trailing partial record is ignored.
pub fn parse_events(bytes: &[u8], layout: Layout) -> Vec<InputEvent> {
    bytes.chunks_exact(layout.size()).map(|r| layout.event(r)).collect()
}

/// The character a key types on a US keyboard, unshifted and shifted.
fn us_key(code: u16) -> Option<(char, char)> {
    const ROW1: &[(char, char)] = &[
        ('1', '!'),
        ('2', '@'),
        ('3', '#'),
        ('4', '$'),
        ('5', '%'),
        ('6', '^'),
        ('7', '&'),
        ('8', '*'),
        ('9', '('),
        ('0', ')'),
        ('-', '_'),
        ('=', '+'),
    ];
    let letter = |c: char| Some((c, c.to_ascii_uppercase()));
    match code {
        2..=13 => Some(ROW1[usize::from(code - 2)]),
        16..=25 => letter(b"qwertyuiop"[usize::from(code - 16)] as char),
        26 => Some(('[', '{')),
        27 => Some((']', '}')),
        30..=38 => letter(b"asdfghjkl"[usize::from(code - 30)] as char),
        39 => Some((';', ':')),
        40 => Some(('\'', '"')),
        41 => Some(('`', '~')),
        43 => Some(('\\', '|')),
        44..=50 => letter(b"zxcvbnm"[usize::from(code - 44)] as char),
        51 => Some((',', '<')),
        52 => Some(('.', '>')),
        53 => Some(('/', '?')),
        57 => Some((' ', ' ')),
        // Keypad (a scanner set to send keypad digits; taken as NumLock on).
        55 => Some(('*', '*')),
        71..=73 => Some((char::from(b'7' + (code - 71) as u8), char::from(b'7' + (code - 71) as u8))),
        74 => Some(('-', '-')),
        75..=77 => Some((char::from(b'4' + (code - 75) as u8), char::from(b'4' + (code - 75) as u8))),
        78 => Some(('+', '+')),
        79..=81 => Some((char::from(b'1' + (code - 79) as u8), char::from(b'1' + (code - 79) as u8))),
        82 => Some(('0', '0')),
        83 => Some(('.', '.')),
        98 => Some(('/', '/')),
        _ => None,
    }
}

/// Longest code kept; anything longer is not an ID (a scanner gone wrong, or a
/// keyboard held down) and is dropped.
pub const MAX_CODE: usize = 128;

/// Key events to lines of text. Feed it every event in order.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    shift: [bool; 2],
    ctrl_alt: [bool; 4],
    line: String,
    /// Events were lost (SYN_DROPPED) or the code grew too long: the code under
    /// way is dropped up to its Enter.
    damaged: bool,
    /// Inside a SYN_DROPPED gap: everything up to the next SYN_REPORT is ignored.
    dropping: bool,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// The code this event completes, if any: the text typed since the last
    /// Enter, without surrounding blanks, when not empty.
    pub fn feed(&mut self, e: InputEvent) -> Option<String> {
        if self.dropping {
            // The kernel's buffer overflowed: the events up to the next report are unreliable.
            if e.kind == EV_SYN && e.code == SYN_REPORT {
                self.dropping = false;
                // Key state may have changed unseen: a held modifier would garble later codes.
                self.shift = [false; 2];
                self.ctrl_alt = [false; 4];
            }
            return None;
        }
        match (e.kind, e.code) {
            (EV_SYN, SYN_DROPPED) => {
                self.dropping = true;
                self.damaged = true;
                return None;
            }
            (EV_KEY, _) => {}
            // SYN_REPORT closes a HID report, MSC_SCAN carries its usage code: no text.
            _ => return None,
        }
        let down = match e.value {
            1 => true,
            0 => false,
            // 2 = autorepeat: a scanner's keys are never held that long, and a held
            // key must not type its character twice.
            _ => return None,
        };
        match e.code {
            KEY_LEFTSHIFT => self.shift[0] = down,
            KEY_RIGHTSHIFT => self.shift[1] = down,
            KEY_LEFTCTRL => self.ctrl_alt[0] = down,
            KEY_RIGHTCTRL => self.ctrl_alt[1] = down,
            KEY_LEFTALT => self.ctrl_alt[2] = down,
            KEY_RIGHTALT => self.ctrl_alt[3] = down,
            _ if !down => {}
            KEY_ENTER | KEY_KPENTER => {
                let line = std::mem::take(&mut self.line);
                let damaged = std::mem::take(&mut self.damaged);
                let code = line.trim();
                if damaged {
                    log::warn!("scanner: a code was garbled (input events lost or too long): scan it again");
                    return None;
                }
                return (!code.is_empty()).then(|| code.to_string());
            }
            KEY_BACKSPACE => {
                self.line.pop();
            }
            // A Ctrl or Alt combination (a scanner's control character) types nothing.
            _ if self.ctrl_alt.iter().any(|&m| m) => {}
            code => {
                if let Some((plain, shifted)) = us_key(code) {
                    if self.line.chars().count() >= MAX_CODE {
                        self.damaged = true;
                    } else {
                        self.line.push(if self.shift.iter().any(|&s| s) { shifted } else { plain });
                    }
                }
            }
        }
        None
    }
}

/// The codes in a sequence of events, in order.
pub fn decode(events: impl IntoIterator<Item = InputEvent>) -> Vec<String> {
    let mut d = Decoder::new();
    events.into_iter().filter_map(|e| d.feed(e)).collect()
}

/// Reads `reader` (an evdev node, or a recording) to its end or first error,
/// decoding every whole event and sending each code; false when the receiver is
/// gone. Reads may end in the middle of a record: the rest is kept for the next.
fn pump<R: Read>(reader: &mut R, layout: Layout, decoder: &mut Decoder, tx: &mpsc::Sender<String>) -> PumpEnd {
    let size = layout.size();
    let mut buf = vec![0u8; size * 64];
    let mut filled = 0;
    loop {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return PumpEnd::Eof,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return PumpEnd::Error(e),
        }
        let whole = filled - filled % size;
        for e in parse_events(&buf[..whole], layout) {
            if let Some(code) = decoder.feed(e) {
                log::info!("scanned a code of {} characters", code.chars().count());
                if tx.send(code).is_err() {
                    return PumpEnd::Closed;
                }
            }
        }
        buf.copy_within(whole..filled, 0);
        filled -= whole;
    }
}

enum PumpEnd {
    Eof,
    Error(std::io::Error),
    Closed,
}

/// Codes from a scanner, read in a background thread.
pub struct Scanner {
    rx: Receiver<String>,
}

impl Scanner {
    /// Reads the configured device, grabbed, in a thread. A device that is absent
    /// or goes away (unplugged) is opened again every two seconds; errors are
    /// logged once per kind, never fatal: the buttons keep working without it.
    /// A regular file (a recording) is read once to its end.
    pub fn open(config: &ScannerConfig) -> Result<Scanner, ButtonError> {
        let Some(path) = config.device.clone() else {
            return Err(ButtonError::Device { what: "scanner".into(), reason: "no scanner.device configured".into() });
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("scanner".into())
            .spawn(move || read_device(&path, &tx))
            .map_err(|e| ButtonError::Device { what: "scanner thread".into(), reason: e.to_string() })?;
        Ok(Scanner { rx })
    }

    /// Decodes `reader` (e.g. a recorded event stream) in a thread, as from a device.
    pub fn from_reader<R: Read + Send + 'static>(mut reader: R, layout: Layout) -> Scanner {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new().name("scanner".into()).spawn(move || {
            if let PumpEnd::Error(e) = pump(&mut reader, layout, &mut Decoder::new(), &tx) {
                log::warn!("scanner input: {e}");
            }
        });
        if let Err(e) = spawned {
            log::warn!("cannot start the scanner thread: {e}");
        }
        Scanner { rx }
    }

    /// The codes scanned since the last call, oldest first; never waits.
    pub fn codes(&mut self) -> Vec<String> {
        self.rx.try_iter().collect()
    }
}

fn read_device(path: &std::path::Path, tx: &mpsc::Sender<String>) {
    let mut last_error = String::new();
    loop {
        let why = match std::fs::File::open(path) {
            Ok(mut f) => {
                let is_device = f.metadata().map(|m| !m.is_file()).unwrap_or(true);
                if is_device {
                    grab(&f, path);
                    log::info!("scanner {} opened", path.display());
                    last_error.clear();
                }
                // The decoder starts afresh: a code cut by an unplug is not completed by the next one.
                match pump(&mut f, Layout::native(), &mut Decoder::new(), tx) {
                    PumpEnd::Closed => return,
                    PumpEnd::Eof if !is_device => {
                        log::info!("scanner recording {} read to its end", path.display());
                        return;
                    }
                    PumpEnd::Eof => "end of input".to_string(),
                    PumpEnd::Error(e) => e.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        if why != last_error {
            log::warn!("scanner {}: {why}; trying again every 2 s", path.display());
            last_error = why;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// EVIOCGRAB: the scanner's keys reach this process only. Failing (another
/// process holds the grab, or not an evdev node) is logged: the codes may then
/// also type elsewhere.
#[cfg(target_os = "linux")]
fn grab(f: &std::fs::File, path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    // _IOW('E', 0x90, int) with the generic ioctl encoding (x86, ARM, AArch64).
    const EVIOCGRAB: u32 = (1 << 30) | ((std::mem::size_of::<libc::c_int>() as u32) << 16) | (0x45 << 8) | 0x90;
    // SAFETY: a valid open descriptor; EVIOCGRAB takes its argument by value.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), EVIOCGRAB as _, 1 as libc::c_int) };
    if r != 0 {
        log::warn!(
            "scanner {}: cannot grab it ({}): its codes may also type into a console",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn grab(_f: &std::fs::File, path: &std::path::Path) {
    log::warn!("scanner {}: cannot grab it outside Linux", path.display());
}

/// Buttons plus a scanner: presses from the buttons, codes from both.
pub struct WithScanner {
    pub buttons: Box<dyn ButtonSource>,
    pub scanner: Scanner,
}

impl ButtonSource for WithScanner {
    fn poll(&mut self, timeout: Duration) -> Result<Vec<Button>, ButtonError> {
        self.buttons.poll(timeout)
    }

    fn codes(&mut self) -> Vec<String> {
        let mut c = self.buttons.codes();
        c.extend(self.scanner.codes());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: u16, value: i32) -> InputEvent {
        InputEvent { kind: EV_KEY, code, value }
    }
    const SYN: InputEvent = InputEvent { kind: EV_SYN, code: SYN_REPORT, value: 0 };

    /// Key down and up as a HID keyboard reports them.
    fn tap(code: u16) -> Vec<InputEvent> {
        let scan = |c| InputEvent { kind: EV_MSC, code: MSC_SCAN, value: 0x70000 + c as i32 };
        vec![scan(code), key(code, 1), SYN, scan(code), key(code, 0), SYN]
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn layout_matches_the_kernel_struct() {
        assert_eq!(Layout::native().size(), std::mem::size_of::<libc::input_event>());
    }

    #[test]
    fn shift_enter_repeat_and_release() {
        let mut ev = vec![key(KEY_LEFTSHIFT, 1), key(30, 1), key(30, 2), key(30, 2), key(30, 0), key(KEY_LEFTSHIFT, 0)];
        ev.extend(tap(30)); // a
        ev.extend([key(KEY_RIGHTSHIFT, 1), key(2, 1), key(2, 0), key(KEY_RIGHTSHIFT, 0)]); // !
        ev.extend(tap(12)); // -
        ev.extend(tap(KEY_ENTER));
        ev.extend(tap(KEY_KPENTER)); // an empty code: nothing
        ev.extend(tap(11)); // 0, then keypad Enter
        ev.extend(tap(KEY_KPENTER));
        assert_eq!(decode(ev), ["Aa!-", "0"]);
    }

    #[test]
    fn dropped_events_garble_only_their_code() {
        let mut ev = tap(30);
        ev.push(InputEvent { kind: EV_SYN, code: SYN_DROPPED, value: 0 });
        ev.extend(tap(31)); // lost in the gap...
        ev.extend(tap(32)); // ...after the gap, but the code is incomplete
        ev.extend(tap(KEY_ENTER));
        ev.extend(tap(33));
        ev.extend(tap(KEY_ENTER));
        assert_eq!(decode(ev), ["f"]);
    }

    #[test]
    fn control_keys_type_nothing_and_long_codes_are_dropped() {
        let mut ev = vec![key(KEY_LEFTCTRL, 1)];
        ev.extend(tap(27)); // Ctrl-] (GS), no text
        ev.push(key(KEY_LEFTCTRL, 0));
        ev.extend(tap(2));
        ev.extend(tap(59)); // F1: no text
        ev.extend(tap(KEY_ENTER));
        for _ in 0..=MAX_CODE {
            ev.extend(tap(2));
        }
        ev.extend(tap(KEY_ENTER));
        assert_eq!(decode(ev), ["1"]);
    }

    #[test]
    fn reads_split_inside_records_still_decode() {
        /// Returns at most 5 bytes per read.
        struct Trickle(Vec<u8>, usize);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(5).min(self.0.len() - self.1);
                buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let mut bytes = Vec::new();
        for e in [tap(35), tap(23), tap(KEY_ENTER)].concat() {
            bytes.extend_from_slice(&[0u8; 16]);
            bytes.extend_from_slice(&e.kind.to_le_bytes());
            bytes.extend_from_slice(&e.code.to_le_bytes());
            bytes.extend_from_slice(&e.value.to_le_bytes());
        }
        let (tx, rx) = mpsc::channel();
        let end = pump(&mut Trickle(bytes, 0), Layout::Long64, &mut Decoder::new(), &tx);
        assert!(matches!(end, PumpEnd::Eof));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["hi"]);
    }

    #[test]
    fn config_device_must_name_a_file() {
        assert!(ScannerConfig::default().validate().is_ok());
        let bad = ScannerConfig { device: Some("/".into()) };
        assert!(bad.validate().unwrap_err().to_string().starts_with("scanner.device = /"));
    }
}
