//! Physical buttons and the buzzer/LED on GPIO, through the Linux GPIO character
//! device (`/dev/gpiochipN`, uAPI v2, kernel 5.10 or later) with `gpiocdev`.
//!
//! Wiring (the defaults, Raspberry Pi header, BCM numbers = line offsets on the
//! header's chip): each button between its GPIO and ground, no resistor (the
//! internal pull-up is enabled): Start GPIO5 (pin 29), Capture GPIO6 (pin 31),
//! Finish GPIO13 (pin 33), Undo GPIO19 (pin 35); ground at pins 30, 34 or 39.
//! A buzzer or LED (through a transistor or a resistor) can go on a free line,
//! e.g. GPIO26 (pin 37), set as `signal_line`.
//!
//! Which chip: Pi 1-4: `/dev/gpiochip0`. Pi 5: the header is the RP1 chip
//! (label `pinctrl-rp1`), `/dev/gpiochip4` on older kernels and `/dev/gpiochip0`
//! on newer ones: `gpiodetect` (package gpiod) shows it. Jetson: line offsets are
//! not header pin numbers; find them with `gpioinfo`.
//!
//! Debouncing: the kernel's debounce period is requested (in hardware where the
//! chip has it, emulated by the kernel otherwise); a software filter is applied on
//! top, because not every kernel/driver honours it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::InvalidValue;
use serde::{Deserialize, Serialize};

use crate::hw::buttons::{Button, ButtonError, ButtonSource, Signal};

/// Where button presses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ButtonsKind {
    /// Push buttons on GPIO lines.
    Gpio,
    /// Lines typed on standard input (development).
    #[default]
    Keyboard,
    /// No buttons: the appliance runs from other inputs only.
    #[serde(rename = "none")]
    Off,
}

/// The `[buttons]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ButtonsConfig {
    /// Button input: "gpio" (push buttons), "keyboard" (stdin lines: s=start,
    /// c or Enter=capture, f=finish, u=undo, "id CODE" = a scanned code; for
    /// development) or "none".
    /// Default "keyboard".
    pub kind: ButtonsKind,
    /// GPIO character device of the buttons' lines. Pi 1-4: /dev/gpiochip0; Pi 5:
    /// /dev/gpiochip4 on older kernels, /dev/gpiochip0 on newer (`gpiodetect`:
    /// the chip labelled pinctrl-rp1). Default "/dev/gpiochip0".
    pub chip: PathBuf,
    /// Line offset of the Start button (on a Pi: the BCM GPIO number).
    /// Default 5 (header pin 29).
    pub start_line: u32,
    /// Line offset of the Capture button. Default 6 (header pin 31).
    pub capture_line: u32,
    /// Line offset of the Finish button. Default 13 (header pin 33).
    pub finish_line: u32,
    /// Line offset of the Undo button. Default 19 (header pin 35).
    pub undo_line: u32,
    /// Presses of the same button closer together than this (milliseconds) count
    /// once: switch contacts bounce. 0 to 1000. Default 30.
    pub debounce_ms: u64,
    /// Buttons connect the line to ground (true: internal pull-up enabled) or to
    /// 3.3 V (false: pull-down enabled). Default true.
    pub active_low: bool,
    /// Line offset of a buzzer or LED output (driven high = on), on the same chip.
    /// Unset: no signal. Default unset (e.g. 26, header pin 37).
    pub signal_line: Option<u32>,
}

impl Default for ButtonsConfig {
    fn default() -> Self {
        ButtonsConfig {
            kind: ButtonsKind::Keyboard,
            chip: PathBuf::from("/dev/gpiochip0"),
            start_line: 5,
            capture_line: 6,
            finish_line: 13,
            undo_line: 19,
            debounce_ms: 30,
            active_low: true,
            signal_line: None,
        }
    }
}

impl ButtonsConfig {
    /// The four button lines with their buttons.
    pub fn lines(&self) -> [(u32, Button); 4] {
        [
            (self.start_line, Button::Start),
            (self.capture_line, Button::Capture),
            (self.finish_line, Button::Finish),
            (self.undo_line, Button::Undo),
        ]
    }

    /// Checks the values: `Err((key, value, why))` names the first bad key
    /// (keys as in the `[buttons]` section, e.g. "buttons.undo_line").
    pub fn validate(&self) -> Result<(), InvalidValue> {
        if self.debounce_ms > 1000 {
            return Err(InvalidValue::new("buttons.debounce_ms", self.debounce_ms, "must be between 0 and 1000"));
        }
        let keys = ["buttons.start_line", "buttons.capture_line", "buttons.finish_line", "buttons.undo_line"];
        let lines = self.lines();
        for i in 1..4 {
            if lines[..i].iter().any(|(l, _)| *l == lines[i].0) {
                return Err(InvalidValue::new(keys[i], lines[i].0, "is already used by another button"));
            }
        }
        if let Some(s) = self.signal_line {
            if lines.iter().any(|(l, _)| *l == s) {
                return Err(InvalidValue::new("buttons.signal_line", s, "is already used by a button"));
            }
        }
        Ok(())
    }
}

/// Opens the configured button source.
pub fn open_buttons(config: &ButtonsConfig) -> Result<Box<dyn ButtonSource>, ButtonError> {
    match config.kind {
        ButtonsKind::Keyboard => Ok(Box::new(crate::hw::keyboard::KeyboardButtons::stdin())),
        ButtonsKind::Off => Ok(Box::new(NoButtons)),
        #[cfg(target_os = "linux")]
        ButtonsKind::Gpio => Ok(Box::new(GpioButtons::open(config)?)),
        #[cfg(not(target_os = "linux"))]
        ButtonsKind::Gpio => Err(ButtonError::Device { what: "GPIO buttons".into(), reason: "need Linux".into() }),
    }
}

/// Opens the configured buzzer/LED output, if any.
pub fn open_signal(config: &ButtonsConfig) -> Result<Option<Box<dyn Signal>>, ButtonError> {
    match config.signal_line {
        None => Ok(None),
        #[cfg(target_os = "linux")]
        Some(line) => Ok(Some(Box::new(GpioSignal::open(&config.chip, line)?))),
        #[cfg(not(target_os = "linux"))]
        Some(line) => {
            Err(ButtonError::Device { what: format!("GPIO signal line {line}"), reason: "need Linux".into() })
        }
    }
}

/// No buttons at all: `poll` just waits out its timeout.
pub struct NoButtons;

impl ButtonSource for NoButtons {
    fn poll(&mut self, timeout: Duration) -> Result<Vec<Button>, ButtonError> {
        std::thread::sleep(timeout);
        Ok(Vec::new())
    }
}

/// Software debounce over edge events of both directions. A press (line becoming
/// active) counts only if the line had no edge at all during the window before
/// it: this drops the bounces after a press and also the bounces of a release,
/// which a falling-edge-only filter would take for new presses.
#[derive(Debug, Clone)]
pub struct Debouncer {
    window_ns: u64,
    last_edge_ns: HashMap<u32, u64>,
}

impl Debouncer {
    pub fn new(window: Duration) -> Debouncer {
        Debouncer { window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX), last_edge_ns: HashMap::new() }
    }

    /// Feeds one edge (`pressed`: the line became active) at `timestamp_ns`
    /// (monotonic); true when it is a press to report.
    pub fn accept(&mut self, line: u32, pressed: bool, timestamp_ns: u64) -> bool {
        let quiet = match self.last_edge_ns.insert(line, timestamp_ns) {
            None => true,
            Some(prev) => timestamp_ns.saturating_sub(prev) >= self.window_ns,
        };
        pressed && quiet
    }
}

#[cfg(target_os = "linux")]
pub use linux::{GpioButtons, GpioSignal};

#[cfg(target_os = "linux")]
mod linux {
    use super::{ButtonsConfig, Debouncer};
    use crate::hw::buttons::{Button, ButtonError, ButtonSource, Signal};
    use gpiocdev::line::{Bias, EdgeDetection, EdgeKind, Value};
    use gpiocdev::Request;
    use log::{debug, info, warn};
    use std::path::Path;
    use std::time::Duration;

    fn device_error(what: &str, e: gpiocdev::Error) -> ButtonError {
        let mut reason = e.to_string();
        if reason.contains("ermission denied") {
            reason.push_str(" (is the user in the gpio group?)");
        } else if reason.contains("evice or resource busy") {
            reason.push_str(" (a line is used by another program or driver: see `gpioinfo`)");
        }
        ButtonError::Device { what: what.to_string(), reason }
    }

    /// Four push buttons on one GPIO chip, reported on press.
    pub struct GpioButtons {
        request: Request,
        lines: [(u32, Button); 4],
        debouncer: Debouncer,
        what: String,
    }

    impl GpioButtons {
        /// Requests the four lines as inputs with bias, edge detection and
        /// debounce. Errors name the chip and the lines.
        pub fn open(config: &ButtonsConfig) -> Result<GpioButtons, ButtonError> {
            let lines = config.lines();
            let what = format!(
                "GPIO {} lines start={} capture={} finish={} undo={}",
                config.chip.display(),
                lines[0].0,
                lines[1].0,
                lines[2].0,
                lines[3].0
            );
            if let Err(e) = config.validate() {
                return Err(ButtonError::Device { what, reason: e.to_string() });
            }
            let offsets: Vec<u32> = lines.iter().map(|(l, _)| *l).collect();
            let debounce = Duration::from_millis(config.debounce_ms);
            let request = |kernel_debounce: bool| {
                let mut b = Request::builder();
                b.on_chip(&config.chip).with_consumer("leukoscope-buttons").with_lines(&offsets).as_input();
                if config.active_low {
                    // Logical "active" = pressed = line pulled to ground.
                    b.as_active_low().with_bias(Bias::PullUp);
                } else {
                    b.with_bias(Bias::PullDown);
                }
                // Both edges: the release is watched too, so that its bounce is
                // not mistaken for a press (see Debouncer).
                b.with_edge_detection(EdgeDetection::BothEdges);
                if kernel_debounce && !debounce.is_zero() {
                    b.with_debounce_period(debounce);
                }
                b.request()
            };
            let req = match request(true) {
                Ok(r) => r,
                Err(e) if !debounce.is_zero() => {
                    warn!("{what}: request with kernel debounce failed ({e}); retrying with software debounce only");
                    request(false).map_err(|e| device_error(&what, e))?
                }
                Err(e) => return Err(device_error(&what, e)),
            };
            info!("{what}: ready (active_low={}, debounce {} ms)", config.active_low, config.debounce_ms);
            Ok(GpioButtons { request: req, lines, debouncer: Debouncer::new(debounce), what })
        }

        fn button(&self, offset: u32) -> Option<Button> {
            self.lines.iter().find(|(l, _)| *l == offset).map(|(_, b)| *b)
        }
    }

    impl ButtonSource for GpioButtons {
        fn poll(&mut self, timeout: Duration) -> Result<Vec<Button>, ButtonError> {
            let mut presses = Vec::new();
            if !self.request.wait_edge_event(timeout).map_err(|e| device_error(&self.what, e))? {
                return Ok(presses);
            }
            loop {
                let ev = self.request.read_edge_event().map_err(|e| device_error(&self.what, e))?;
                let pressed = ev.kind == EdgeKind::Rising; // rising = became active (see active_low)
                if self.debouncer.accept(ev.offset, pressed, ev.timestamp_ns) {
                    if let Some(b) = self.button(ev.offset) {
                        debug!("{}: line {} -> {b:?}", self.what, ev.offset);
                        presses.push(b);
                    }
                }
                if !self.request.has_edge_event().map_err(|e| device_error(&self.what, e))? {
                    return Ok(presses);
                }
            }
        }
    }

    /// A buzzer or LED on one output line (high = on).
    pub struct GpioSignal {
        request: Request,
        line: u32,
        what: String,
    }

    impl GpioSignal {
        pub fn open(chip: &Path, line: u32) -> Result<GpioSignal, ButtonError> {
            let what = format!("GPIO {} signal line {line}", chip.display());
            let request = Request::builder()
                .on_chip(chip)
                .with_consumer("leukoscope-signal")
                .with_line(line)
                .as_output(Value::Inactive)
                .request()
                .map_err(|e| device_error(&what, e))?;
            Ok(GpioSignal { request, line, what })
        }
    }

    impl Signal for GpioSignal {
        fn set(&mut self, on: bool) -> Result<(), ButtonError> {
            let value = if on { Value::Active } else { Value::Inactive };
            self.request.set_value(self.line, value).map_err(|e| device_error(&self.what, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn press_bounce_and_release_bounce_count_once() {
        let mut d = Debouncer::new(Duration::from_millis(30));
        // Press at 1000 ms with contact bounce, held, released at 1400 ms with bounce.
        let edges = [
            (1000, true),
            (1001, false),
            (1002, true),
            (1400, false),
            (1401, true),
            (1402, false),
            // A second real press later.
            (2000, true),
        ];
        let accepted: Vec<u64> = edges.iter().filter(|(t, p)| d.accept(5, *p, t * MS)).map(|(t, _)| *t).collect();
        assert_eq!(accepted, [1000, 2000]);
    }

    #[test]
    fn lines_are_debounced_separately() {
        let mut d = Debouncer::new(Duration::from_millis(30));
        assert!(d.accept(5, true, 100 * MS));
        assert!(d.accept(6, true, 101 * MS));
        assert!(!d.accept(5, true, 110 * MS));
        assert!(!d.accept(5, false, 120 * MS), "a release is never a press");
        assert!(d.accept(5, true, 200 * MS));
        let mut none = Debouncer::new(Duration::ZERO);
        assert!(none.accept(5, true, 1) && none.accept(5, true, 1));
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: ButtonsConfig = toml::from_str("").expect("empty");
        assert_eq!(c, ButtonsConfig::default());
        assert_eq!(c.kind, ButtonsKind::Keyboard);
        assert!(c.validate().is_ok());
        let c: ButtonsConfig = toml::from_str("kind = \"none\"\nundo_line = 5\nsignal_line = 26").expect("parse");
        assert_eq!(c.kind, ButtonsKind::Off);
        assert_eq!(c.validate().unwrap_err().key, "buttons.undo_line");
        let c: ButtonsConfig = toml::from_str("kind = \"gpio\"\nsignal_line = 6").expect("parse");
        assert_eq!(c.validate().unwrap_err().key, "buttons.signal_line");
        assert!(toml::from_str::<ButtonsConfig>("kind = \"usb\"").is_err());
        assert!(toml::from_str::<ButtonsConfig>("debounce = 3").unwrap_err().to_string().contains("debounce"));
        let text = toml::to_string(&ButtonsConfig::default()).expect("serialize");
        assert_eq!(toml::from_str::<ButtonsConfig>(&text).expect("roundtrip"), ButtonsConfig::default());
    }

    #[test]
    fn no_buttons_waits_out_the_timeout() {
        let t = std::time::Instant::now();
        assert!(NoButtons.poll(Duration::from_millis(20)).expect("poll").is_empty());
        assert!(t.elapsed() >= Duration::from_millis(20));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn missing_chip_error_names_chip_and_lines() {
        let c = ButtonsConfig { chip: PathBuf::from("/dev/gpiochip-nonexistent"), ..ButtonsConfig::default() };
        let e = GpioButtons::open(&c).err().expect("no such chip").to_string();
        assert!(e.contains("/dev/gpiochip-nonexistent") && e.contains("start=5") && e.contains("undo=19"), "{e}");
        let e = GpioSignal::open(&c.chip, 26).err().expect("no such chip").to_string();
        assert!(e.contains("/dev/gpiochip-nonexistent") && e.contains("26"), "{e}");
    }
}
