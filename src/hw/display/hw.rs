//! The real panels, through Linux's userspace device interfaces (no kernel framebuffer driver to
//! install): spidev + the GPIO character device for the TFTs, i2c-dev for the OLED.
//!
//! - [`SpiTft`]: ST7789 or ILI9341, 240x320, mipidsi over `SpidevDevice`, DC / reset / backlight
//!   as `CdevPin`s; shows [`draw_large`].
//! - [`I2cOled`]: SSD1306, 128x64, buffered graphics mode over `I2cdev`; shows [`draw_compact`].
//!
//! Both redraw only when the view changed, and a failed transfer is retried on the next frame.

use super::{draw_compact, draw_large, Display, DisplayConfig, DisplayError, ScreenFrame, View, LARGE_SIZE};
use embedded_graphics::{pixelcolor::Rgb565, prelude::*, primitives::Rectangle};
use embedded_hal::digital::OutputPin;
use linux_embedded_hal::{
    gpio_cdev::{Chip, LineRequestFlags},
    spidev::{SpiModeFlags, SpidevOptions},
    CdevPin, Delay, I2cdev, SpidevDevice,
};
use mipidsi::{
    interface::SpiInterface,
    models::{ILI9341Rgb565, Model, ST7789},
    options::{ColorInversion, ColorOrder, Orientation, Rotation},
    Builder,
};
use ssd1306::{
    mode::{BufferedGraphicsMode, DisplayConfig as _},
    prelude::{DisplayRotation, DisplaySize128x64, I2CInterface},
    I2CDisplayInterface, Ssd1306,
};
use std::path::Path;

/// Consumer name shown by `gpioinfo` for the lines the display holds.
const GPIO_CONSUMER: &str = "leukoscope-display";

/// Largest SPI write: spidev refuses transfers over its `bufsiz` module parameter, 4096 by
/// default, and mipidsi sends pixels in chunks of its buffer.
const SPI_CHUNK: usize = 4096;

/// The TFT controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TftModel {
    St7789,
    Ili9341,
}

type TftInterface = SpiInterface<'static, SpidevDevice, CdevPin>;

/// A mipidsi display of any model and reset pin, so that one `SpiTft` type serves all four.
/// `Send` so the appliance may drive the display from its own thread.
trait Panel: Send {
    fn push(&mut self, frame: &ScreenFrame<Rgb565>) -> Result<(), String>;
}

impl<M, RST> Panel for mipidsi::Display<TftInterface, M, RST>
where
    M: Model<ColorFormat = Rgb565> + Send,
    RST: OutputPin + Send,
{
    fn push(&mut self, frame: &ScreenFrame<Rgb565>) -> Result<(), String> {
        // One window, one pixel stream: far faster than pixel by pixel, and no visible redraw.
        let area = Rectangle::new(Point::zero(), frame.size());
        self.fill_contiguous(&area, frame.pixels().iter().copied()).map_err(|e| format!("SPI write failed: {e:?}"))
    }
}

/// A 240x320 SPI TFT (ST7789 or ILI9341) showing [`draw_large`].
pub struct SpiTft {
    panel: Box<dyn Panel>,
    /// Switched on once the panel shows black; held so the line stays requested (lit) while the
    /// display lives.
    backlight: Option<CdevPin>,
    frame: ScreenFrame<Rgb565>,
    last: Option<View>,
    device: String,
}

impl SpiTft {
    /// Opens and initialises the panel from `cfg`'s `spi`, `spi_hz`, `gpio_chip`, `dc_line`,
    /// `reset_line`, `backlight_line`, `rotation_degrees`, `invert_colors` and `bgr`.
    pub fn open(model: TftModel, cfg: &DisplayConfig) -> Result<SpiTft, DisplayError> {
        let device = cfg.spi.display().to_string();
        let open_error = |reason: String| DisplayError::Open { device: device.clone(), reason };
        let rotation = match cfg.rotation_degrees {
            0 => Rotation::Deg0,
            180 => Rotation::Deg180,
            r => {
                let why = "the 240x320 layout does not fit the panel sideways: use 0 or 180";
                return Err(crate::config::InvalidValue::new("display.rotation_degrees", r, why).into());
            }
        };
        // Open the SPI device before the GPIO lines so that a wrong path names the SPI device.
        let mut spi = SpidevDevice::open(&cfg.spi).map_err(|e| open_error(e.to_string()))?;
        let mut chip = Chip::new(&cfg.gpio_chip)
            .map_err(|e| DisplayError::Open { device: cfg.gpio_chip.display().to_string(), reason: e.to_string() })?;
        let dc = output_line(&mut chip, &cfg.gpio_chip, cfg.dc_line, "DC", 0)?;
        let reset = cfg.reset_line.map(|line| output_line(&mut chip, &cfg.gpio_chip, line, "reset", 1)).transpose()?;
        // Backlight off until the panel shows black, so power-up noise is never seen.
        let backlight =
            cfg.backlight_line.map(|line| output_line(&mut chip, &cfg.gpio_chip, line, "backlight", 0)).transpose()?;
        let options =
            SpidevOptions::new().bits_per_word(8).max_speed_hz(cfg.spi_hz).mode(SpiModeFlags::SPI_MODE_0).build();
        spi.configure(&options).map_err(|e| open_error(format!("cannot configure SPI: {e}")))?;

        // mipidsi borrows its chunk buffer for the display's whole life; the display lives as long
        // as the appliance, so the 4 KiB is leaked once per open rather than made self-referential.
        let buffer: &'static mut [u8] = Box::leak(vec![0u8; SPI_CHUNK].into_boxed_slice());
        let interface = SpiInterface::new(spi, dc, buffer);
        let settings = Settings {
            orientation: Orientation::new().rotate(rotation),
            inversion: if cfg.invert_colors { ColorInversion::Inverted } else { ColorInversion::Normal },
            order: if cfg.bgr { ColorOrder::Bgr } else { ColorOrder::Rgb },
        };
        let panel = match model {
            TftModel::St7789 => init_panel(ST7789, interface, reset, settings),
            TftModel::Ili9341 => init_panel(ILI9341Rgb565, interface, reset, settings),
        }
        .map_err(|e| open_error(format!("panel did not initialise: {e}")))?;
        let mut tft = SpiTft {
            panel,
            backlight,
            frame: ScreenFrame::new(LARGE_SIZE, Rgb565::BLACK),
            last: None,
            device: device.clone(),
        };
        tft.panel.push(&tft.frame).map_err(open_error)?;
        if let Some(pin) = tft.backlight.as_mut() {
            pin.set_high().map_err(|e| open_error(format!("cannot switch the backlight on: {e}")))?;
        }
        Ok(tft)
    }
}

impl Display for SpiTft {
    fn show(&mut self, view: &View) -> Result<(), DisplayError> {
        if self.last.as_ref() == Some(view) {
            return Ok(());
        }
        let Ok(()) = draw_large(view, &mut self.frame);
        // Forget the last view first: after a failed push the next frame must redraw.
        self.last = None;
        self.panel.push(&self.frame).map_err(|reason| DisplayError::Device { device: self.device.clone(), reason })?;
        self.last = Some(view.clone());
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Settings {
    orientation: Orientation,
    inversion: ColorInversion,
    order: ColorOrder,
}

fn init_panel<M>(
    model: M,
    interface: TftInterface,
    reset: Option<CdevPin>,
    s: Settings,
) -> Result<Box<dyn Panel>, String>
where
    M: Model<ColorFormat = Rgb565> + Send + 'static,
{
    let builder = Builder::new(model, interface)
        .display_size(LARGE_SIZE.width as u16, LARGE_SIZE.height as u16)
        .orientation(s.orientation)
        .invert_colors(s.inversion)
        .color_order(s.order);
    let mut delay = Delay;
    // Without a reset line mipidsi sends a software reset instead.
    match reset {
        Some(pin) => Ok(Box::new(builder.reset_pin(pin).init(&mut delay).map_err(|e| format!("{e:?}"))?)),
        None => Ok(Box::new(builder.init(&mut delay).map_err(|e| format!("{e:?}"))?)),
    }
}

/// Requests `line` of `chip` as an output starting at `value`; errors name chip, line and role.
fn output_line(chip: &mut Chip, chip_path: &Path, line: u32, role: &str, value: u8) -> Result<CdevPin, DisplayError> {
    let open_error =
        |e: String| DisplayError::Open { device: format!("{} line {line} ({role})", chip_path.display()), reason: e };
    let handle = chip
        .get_line(line)
        .and_then(|l| l.request(LineRequestFlags::OUTPUT, value, GPIO_CONSUMER))
        .map_err(|e| open_error(e.to_string()))?;
    CdevPin::new(handle).map_err(|e| open_error(e.to_string()))
}

type Oled = Ssd1306<I2CInterface<I2cdev>, DisplaySize128x64, BufferedGraphicsMode<DisplaySize128x64>>;

/// A 128x64 SSD1306 OLED on I2C showing [`draw_compact`].
pub struct I2cOled {
    oled: Oled,
    last: Option<View>,
    device: String,
}

impl I2cOled {
    /// Opens and initialises the OLED from `cfg`'s `i2c`, `i2c_address` and `rotation_degrees`.
    pub fn open(cfg: &DisplayConfig) -> Result<I2cOled, DisplayError> {
        let rotation = match cfg.rotation_degrees {
            0 => DisplayRotation::Rotate0,
            180 => DisplayRotation::Rotate180,
            r => {
                let why = "the 128x64 layout does not fit the panel sideways: use 0 or 180";
                return Err(crate::config::InvalidValue::new("display.rotation_degrees", r, why).into());
            }
        };
        let i2c = I2cdev::new(&cfg.i2c)
            .map_err(|e| DisplayError::Open { device: cfg.i2c.display().to_string(), reason: e.to_string() })?;
        let device = format!("{} address {:#04x}", cfg.i2c.display(), cfg.i2c_address);
        let interface = I2CDisplayInterface::new_custom_address(i2c, cfg.i2c_address);
        let mut oled = Ssd1306::new(interface, DisplaySize128x64, rotation).into_buffered_graphics_mode();
        // The first bus transfer: a wrong address or a missing display shows here.
        oled.init().map_err(|e| DisplayError::Open { device: device.clone(), reason: format!("no answer: {e:?}") })?;
        Ok(I2cOled { oled, last: None, device })
    }
}

impl Display for I2cOled {
    fn show(&mut self, view: &View) -> Result<(), DisplayError> {
        if self.last.as_ref() == Some(view) {
            return Ok(());
        }
        self.last = None;
        let device = &self.device;
        let failed = |e| DisplayError::Device { device: device.clone(), reason: format!("I2C write failed: {e:?}") };
        // Draws into the driver's own buffer; flush sends the changed part.
        draw_compact(view, &mut self.oled).map_err(failed)?;
        self.oled.flush().map_err(failed)?;
        self.last = Some(view.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<SpiTft>();
        send::<I2cOled>();
        send::<super::super::PngDisplay>();
    }
}
