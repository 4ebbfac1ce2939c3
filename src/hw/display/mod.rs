//! The appliance's screen. The counting loop fills a plain [`View`] every frame and hands it to a
//! [`Display`]; the display knows nothing about sessions, models or files beyond its own.
//!
//! Two layouts, both drawn with embedded-graphics onto any `DrawTarget`:
//! - [`draw_large`]: 240x320 portrait colour TFT (ST7789 / ILI9341, or a PNG of it),
//! - [`draw_compact`]: 128x64 monochrome OLED (SSD1306, or a PNG of it).
//!
//! Every screen says "SCREENING AID": the product never diagnoses, a person verifies.
//!
//! Back ends: [`PngDisplay`] (writes the screen to a file, for development and tests), the real
//! drivers in [`hw`] (Linux only) and a display that draws nothing. [`open`] picks one from a
//! [`DisplayConfig`].

mod draw;
mod png;

#[cfg(target_os = "linux")]
pub mod hw;

use crate::config::InvalidValue;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use draw::{draw_compact, draw_large, COMPACT_SIZE, LARGE_SIZE, SCREENING_AID};
pub use png::{encode_png, render_rgb, PngDisplay, ScreenFrame};

/// Where the count stands; decides which screen is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No sample running: waiting for START.
    Idle,
    /// Counting fields towards the target.
    Counting,
    /// Target count reached: waiting for FINISH.
    TargetReached,
    /// Sample finished; final numbers shown.
    Finished,
}

/// Why the latest camera frame was not analysed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Out of focus.
    Blurred,
    /// The slide was still moving.
    Moving,
    /// Same field as the one already counted.
    SameField,
    /// No leukocytes found in the field.
    NoCells,
}

impl Skip {
    /// The words shown on screen.
    pub fn label(self) -> &'static str {
        match self {
            Skip::Blurred => "blurred",
            Skip::Moving => "moving",
            Skip::SameField => "same field",
            Skip::NoCells => "no cells",
        }
    }
}

/// Everything a screen shows; filled by the appliance loop every frame. Plain data, so that the
/// display needs nothing else from the crate and tests can build any screen by hand.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Which screen to draw.
    pub phase: Phase,
    /// Sample identifier as entered (shown shortened in the middle when too long); on the idle
    /// screen the one the next START takes, empty for an automatic number.
    pub sample_id: String,
    /// Idle: START waits for a sample ID to be scanned (the screen asks for one).
    pub needs_id: bool,
    /// Operator ID, empty when none was scanned (shown on the large idle screen).
    pub operator_id: String,
    /// Leukocytes counted so far, unidentified cells included.
    pub counted: u64,
    /// Cells to count: 100, 200 or 400.
    pub target: u64,
    /// Fields counted.
    pub fields: u64,
    /// Cells called blasts.
    pub blasts: u64,
    /// Blast percentage of `counted`; `None` while nothing is counted.
    pub blast_percent: Option<f64>,
    /// Exact (Clopper-Pearson) 95% confidence interval of the blast percentage, in percent.
    pub ci95: Option<(f64, f64)>,
    /// Blast percentage at or over which the sample is flagged (default 20).
    pub threshold_percent: f64,
    /// Blast percentage at or over the threshold.
    pub flagged: bool,
    /// Cells the classifier could not call.
    pub unidentified: u64,
    /// Most frequent class codes with their counts, most frequent first, e.g. `("NGS", 41)`.
    pub top_classes: Vec<(String, u64)>,
    /// Why the latest frame was not analysed; `None` when it was.
    pub skip: Option<Skip>,
    /// The camera delivers frames.
    pub camera_ok: bool,
    /// Short notice or error: "camera lost", "report saved", "undone: field 7".
    pub message: Option<String>,
}

impl Default for View {
    /// The idle screen before anything happened.
    fn default() -> Self {
        View {
            phase: Phase::Idle,
            sample_id: String::new(),
            needs_id: false,
            operator_id: String::new(),
            counted: 0,
            target: 200,
            fields: 0,
            blasts: 0,
            blast_percent: None,
            ci95: None,
            threshold_percent: 20.0,
            flagged: false,
            unidentified: 0,
            top_classes: Vec::new(),
            skip: None,
            camera_ok: true,
            message: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("display configuration")]
    Config(#[from] InvalidValue),
    /// Opening or initialising a device; `device` names its path (and line or address).
    #[error("cannot open {device}: {reason}")]
    Open { device: String, reason: String },
    /// A transfer to an opened device failed.
    #[error("display {device}: {reason}")]
    Device { device: String, reason: String },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot encode the screen as PNG: {0}")]
    Encode(String),
    #[error("display kind \"{0}\" needs Linux (spidev, i2c-dev, GPIO character device)")]
    Unsupported(&'static str),
}

/// A screen the appliance loop shows its [`View`] on.
pub trait Display {
    /// Shows `view`. Called every frame: implementations skip the work when nothing changed.
    fn show(&mut self, view: &View) -> Result<(), DisplayError>;
}

/// The display for `kind = "none"`: shows nothing (headless runs, benchmarks).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDisplay;

impl Display for NoDisplay {
    fn show(&mut self, _view: &View) -> Result<(), DisplayError> {
        Ok(())
    }
}

/// Which display to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DisplayKind {
    /// Write the screen to a PNG file.
    #[default]
    Png,
    /// 240x320 ST7789 TFT on SPI.
    St7789,
    /// 240x320 ILI9341 TFT on SPI.
    Ili9341,
    /// 128x64 SSD1306 OLED on I2C.
    Ssd1306,
    /// No display.
    None,
}

impl DisplayKind {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            DisplayKind::Png => "png",
            DisplayKind::St7789 => "st7789",
            DisplayKind::Ili9341 => "ili9341",
            DisplayKind::Ssd1306 => "ssd1306",
            DisplayKind::None => "none",
        }
    }
}

/// Which layout a PNG shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// 240x320 colour, as on the TFT.
    #[default]
    Large,
    /// 128x64 monochrome, as on the OLED.
    Compact,
}

/// The `[display]` settings, chosen at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DisplayConfig {
    /// Display to drive: "png" (write the screen to `png_path`), "st7789" or "ili9341" (240x320
    /// SPI TFT), "ssd1306" (128x64 I2C OLED) or "none". Default "png".
    pub kind: DisplayKind,
    /// kind = "png": file rewritten (atomically) whenever the screen changes; relative to the
    /// working directory. Default "leukoscope-screen.png".
    pub png_path: PathBuf,
    /// kind = "png": "large" (240x320 colour, as on the TFT) or "compact" (128x64 mono, as on the
    /// OLED). Default "large".
    pub layout: Layout,
    /// TFT: SPI device. Default "/dev/spidev0.0".
    pub spi: PathBuf,
    /// TFT: SPI clock in Hz (the kernel rounds it down to what the SPI block can do). Default
    /// 24000000.
    pub spi_hz: u32,
    /// TFT: GPIO character device holding the DC, reset and backlight lines. Default
    /// "/dev/gpiochip0".
    pub gpio_chip: PathBuf,
    /// TFT: line offset of the data/command pin on `gpio_chip` (on a Raspberry Pi, the BCM
    /// GPIO number). Default 25.
    pub dc_line: u32,
    /// TFT: line offset of the reset pin; unset = no reset wire, a software reset is sent.
    /// Default unset.
    pub reset_line: Option<u32>,
    /// TFT: line offset of the backlight enable, driven high while the display is open; unset =
    /// backlight wired on. Default unset.
    pub backlight_line: Option<u32>,
    /// TFT and OLED: rotation of the picture in degrees, 0 or 180 (panel mounted upside down).
    /// 90 and 270 are refused there since the layouts do not fit sideways; the PNG ignores the
    /// key. Default 0.
    pub rotation_degrees: u16,
    /// TFT: invert the colours (set it if black shows as white; many ST7789 modules need it).
    /// Default false.
    pub invert_colors: bool,
    /// TFT: the panel takes blue-green-red order (set it if the red flag shows blue; common on
    /// ILI9341 modules). Default false.
    pub bgr: bool,
    /// OLED: I2C bus device. Default "/dev/i2c-1".
    pub i2c: PathBuf,
    /// OLED: 7-bit I2C address, usually 0x3C (60) or 0x3D (61). Default 0x3C.
    pub i2c_address: u8,
}

impl Default for DisplayConfig {
    fn default() -> Self {
        DisplayConfig {
            kind: DisplayKind::Png,
            png_path: PathBuf::from("leukoscope-screen.png"),
            layout: Layout::Large,
            spi: PathBuf::from("/dev/spidev0.0"),
            spi_hz: 24_000_000,
            gpio_chip: PathBuf::from("/dev/gpiochip0"),
            dc_line: 25,
            reset_line: None,
            backlight_line: None,
            rotation_degrees: 0,
            invert_colors: false,
            bgr: false,
            i2c: PathBuf::from("/dev/i2c-1"),
            i2c_address: 0x3C,
        }
    }
}

impl DisplayConfig {
    /// Checks values that the types alone do not rule out; an error names the key.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let bad = |key, value: String, why: &str| Err(InvalidValue::new(key, value, why));
        let hardware = matches!(self.kind, DisplayKind::St7789 | DisplayKind::Ili9341 | DisplayKind::Ssd1306);
        match self.rotation_degrees {
            0 | 180 => {}
            90 | 270 if !hardware => {}
            90 | 270 => {
                return bad(
                    "display.rotation_degrees",
                    self.rotation_degrees.to_string(),
                    "the layouts do not fit the panel sideways: use 0 or 180",
                )
            }
            r => return bad("display.rotation_degrees", r.to_string(), "must be 0, 90, 180 or 270"),
        }
        match self.kind {
            DisplayKind::Png if self.png_path.file_name().is_none() => {
                bad("display.png_path", self.png_path.display().to_string(), "must name a file")
            }
            DisplayKind::St7789 | DisplayKind::Ili9341 => {
                if self.spi_hz == 0 {
                    return bad("display.spi_hz", "0".into(), "must be above 0");
                }
                let lines = [Some(self.dc_line), self.reset_line, self.backlight_line];
                let used: Vec<u32> = lines.iter().flatten().copied().collect();
                for (i, line) in used.iter().enumerate() {
                    if used[..i].contains(line) {
                        return bad(
                            "display.dc_line/reset_line/backlight_line",
                            line.to_string(),
                            "a line can serve one pin only",
                        );
                    }
                }
                Ok(())
            }
            // 0x00-0x07 and 0x78-0x7F are reserved I2C addresses.
            DisplayKind::Ssd1306 if !(0x08..=0x77).contains(&self.i2c_address) => {
                bad("display.i2c_address", format!("{:#04x}", self.i2c_address), "must be a 7-bit address 0x08-0x77")
            }
            _ => Ok(()),
        }
    }
}

/// Opens the display that `cfg` names. A hardware display is initialised here, so a wiring or
/// permission problem shows at start; the error names the device.
pub fn open(cfg: &DisplayConfig) -> Result<Box<dyn Display>, DisplayError> {
    cfg.validate()?;
    match cfg.kind {
        DisplayKind::None => Ok(Box::new(NoDisplay)),
        DisplayKind::Png => Ok(Box::new(PngDisplay::new(&cfg.png_path, cfg.layout))),
        #[cfg(target_os = "linux")]
        DisplayKind::St7789 => Ok(Box::new(hw::SpiTft::open(hw::TftModel::St7789, cfg)?)),
        #[cfg(target_os = "linux")]
        DisplayKind::Ili9341 => Ok(Box::new(hw::SpiTft::open(hw::TftModel::Ili9341, cfg)?)),
        #[cfg(target_os = "linux")]
        DisplayKind::Ssd1306 => Ok(Box::new(hw::I2cOled::open(cfg)?)),
        #[cfg(not(target_os = "linux"))]
        kind => Err(DisplayError::Unsupported(kind.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DisplayConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_config_is_the_default() {
        assert_eq!(parse(""), Ok(DisplayConfig::default()));
        assert!(DisplayConfig::default().validate().is_ok());
    }

    #[test]
    fn config_reads_every_key() {
        let cfg = parse(
            r#"
            kind = "st7789"
            png_path = "/tmp/s.png"
            layout = "compact"
            spi = "/dev/spidev1.0"
            spi_hz = 40000000
            gpio_chip = "/dev/gpiochip4"
            dc_line = 24
            reset_line = 23
            backlight_line = 18
            rotation_degrees = 180
            invert_colors = true
            bgr = true
            i2c = "/dev/i2c-3"
            i2c_address = 0x3D
            "#,
        )
        .expect("valid config");
        assert_eq!(cfg.kind, DisplayKind::St7789);
        assert_eq!(cfg.layout, Layout::Compact);
        assert_eq!((cfg.dc_line, cfg.reset_line, cfg.backlight_line), (24, Some(23), Some(18)));
        assert_eq!(cfg.i2c_address, 0x3D);
        assert!(cfg.validate().is_ok());
        // What Serialize writes reads back the same (the main crate writes the default file).
        for cfg in [cfg, DisplayConfig::default()] {
            let text = toml::to_string(&cfg).expect("serialises");
            assert_eq!(parse(&text), Ok(cfg));
        }
    }

    #[test]
    fn config_rejects_unknown_keys_and_kinds() {
        assert!(parse("colour = true").unwrap_err().contains("colour"));
        assert!(parse("kind = \"hdmi\"").unwrap_err().contains("hdmi"));
        assert!(parse("layout = \"huge\"").is_err());
        assert!(parse("i2c_address = 300").is_err());
    }

    #[test]
    fn validate_names_the_bad_key() {
        let check = |cfg: DisplayConfig, key: &str| {
            let err = cfg.validate().expect_err("must be refused").to_string();
            assert!(err.contains(key), "{err}");
        };
        check(DisplayConfig { rotation_degrees: 45, ..Default::default() }, "rotation_degrees = 45");
        check(DisplayConfig { kind: DisplayKind::St7789, rotation_degrees: 90, ..Default::default() }, "sideways");
        check(DisplayConfig { kind: DisplayKind::Ssd1306, rotation_degrees: 270, ..Default::default() }, "sideways");
        check(DisplayConfig { kind: DisplayKind::Ili9341, spi_hz: 0, ..Default::default() }, "spi_hz");
        check(DisplayConfig { kind: DisplayKind::St7789, reset_line: Some(25), ..Default::default() }, "25");
        check(DisplayConfig { kind: DisplayKind::Ssd1306, i2c_address: 0x7F, ..Default::default() }, "0x7f");
        check(DisplayConfig { png_path: PathBuf::from("/"), ..Default::default() }, "png_path");
        // The PNG has no panel to turn, so any right angle is accepted there.
        assert!(DisplayConfig { rotation_degrees: 90, ..Default::default() }.validate().is_ok());
    }

    #[test]
    fn open_none_and_png() {
        let mut none = open(&DisplayConfig { kind: DisplayKind::None, ..Default::default() }).expect("opens");
        assert!(none.show(&View::default()).is_ok());
        let dir = std::env::temp_dir().join(format!("leukoscope-display-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("screen.png");
        let mut png = open(&DisplayConfig { png_path: path.clone(), ..Default::default() }).expect("opens");
        png.show(&View::default()).expect("writes");
        assert!(std::fs::metadata(&path).expect("written").len() > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// No hardware here: opening a missing device must fail with its path, not panic.
    #[cfg(target_os = "linux")]
    #[test]
    fn open_missing_devices_names_them() {
        let tft = DisplayConfig {
            kind: DisplayKind::St7789,
            spi: PathBuf::from("/nonexistent/spidev9.9"),
            ..Default::default()
        };
        let err = open(&tft).err().expect("no such device").to_string();
        assert!(err.starts_with("cannot open /nonexistent/spidev9.9: "), "{err}");
        let chip = DisplayConfig {
            kind: DisplayKind::Ili9341,
            spi: PathBuf::from("/dev/null"),
            gpio_chip: PathBuf::from("/nonexistent/gpiochip9"),
            ..Default::default()
        };
        let err = open(&chip).err().expect("no such chip").to_string();
        assert!(err.contains("/nonexistent/gpiochip9"), "{err}");
        let oled = DisplayConfig {
            kind: DisplayKind::Ssd1306,
            i2c: PathBuf::from("/nonexistent/i2c-9"),
            ..Default::default()
        };
        let err = open(&oled).err().expect("no such bus").to_string();
        assert!(err.starts_with("cannot open /nonexistent/i2c-9"), "{err}");
    }
}
