//! An in-memory framebuffer and the PNG back end: the screen without a panel, for development,
//! remote viewing and the golden-image tests.

use super::{draw_compact, draw_large, Display, DisplayError, Layout, View, COMPACT_SIZE, LARGE_SIZE};
use embedded_graphics::{
    pixelcolor::{BinaryColor, Rgb565, Rgb888},
    prelude::*,
    primitives::Rectangle,
};
use image::{codecs::png::PngEncoder, ExtendedColorType, ImageEncoder, RgbImage};
use std::convert::Infallible;
use std::path::{Path, PathBuf};

/// A framebuffer in any embedded-graphics colour: the layouts draw into it, then it goes out as a
/// PNG or in one burst to a panel (no half-drawn screen on the TFT).
#[derive(Debug, Clone, PartialEq)]
pub struct ScreenFrame<C> {
    size: Size,
    pixels: Vec<C>,
}

impl<C: PixelColor> ScreenFrame<C> {
    /// A `size` frame filled with `color`.
    pub fn new(size: Size, color: C) -> ScreenFrame<C> {
        ScreenFrame { size, pixels: vec![color; (size.width * size.height) as usize] }
    }

    /// Pixels row by row, top left first.
    pub fn pixels(&self) -> &[C] {
        &self.pixels
    }

    /// The frame as 8-bit RGB (BinaryColor: on = white).
    pub fn to_rgb(&self) -> RgbImage
    where
        C: Into<Rgb888>,
    {
        let mut img = RgbImage::new(self.size.width, self.size.height);
        for (out, &c) in img.pixels_mut().zip(&self.pixels) {
            let c: Rgb888 = c.into();
            *out = image::Rgb([c.r(), c.g(), c.b()]);
        }
        img
    }
}

impl<C: PixelColor> OriginDimensions for ScreenFrame<C> {
    fn size(&self) -> Size {
        self.size
    }
}

impl<C: PixelColor> DrawTarget for ScreenFrame<C> {
    type Color = C;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Infallible>
    where
        I: IntoIterator<Item = Pixel<C>>,
    {
        let (w, h) = (self.size.width as i32, self.size.height as i32);
        for Pixel(p, c) in pixels {
            // Clipped like a panel clips; the layouts are tested not to rely on it.
            if (0..w).contains(&p.x) && (0..h).contains(&p.y) {
                self.pixels[(p.y * w + p.x) as usize] = c;
            }
        }
        Ok(())
    }

    fn fill_solid(&mut self, area: &Rectangle, color: C) -> Result<(), Infallible> {
        let area = area.intersection(&self.bounding_box());
        let w = self.size.width as usize;
        for y in area.rows() {
            let start = y as usize * w + area.top_left.x as usize;
            self.pixels[start..start + area.size.width as usize].fill(color);
        }
        Ok(())
    }
}

/// The screen for `view` in `layout`, as an RGB image (240x320 or 128x64).
pub fn render_rgb(layout: Layout, view: &View) -> RgbImage {
    match layout {
        Layout::Large => {
            let mut frame = ScreenFrame::new(LARGE_SIZE, Rgb565::BLACK);
            let Ok(()) = draw_large(view, &mut frame);
            frame.to_rgb()
        }
        Layout::Compact => {
            let mut frame = ScreenFrame::new(COMPACT_SIZE, BinaryColor::Off);
            let Ok(()) = draw_compact(view, &mut frame);
            frame.to_rgb()
        }
    }
}

/// `img` as PNG file bytes.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, DisplayError> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8)
        .map_err(|e| DisplayError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// Writes the screen to a PNG file whenever it changes.
#[derive(Debug, Clone)]
pub struct PngDisplay {
    path: PathBuf,
    layout: Layout,
    last_view: Option<View>,
    last_png: Option<Vec<u8>>,
}

impl PngDisplay {
    /// Writes `layout` screens to `path`. Nothing is written before the first [`Display::show`].
    pub fn new(path: impl AsRef<Path>, layout: Layout) -> PngDisplay {
        PngDisplay { path: path.as_ref().to_path_buf(), layout, last_view: None, last_png: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The screen for `view` in this display's layout, without writing anything.
    pub fn render_rgb(&self, view: &View) -> RgbImage {
        render_rgb(self.layout, view)
    }

    /// The PNG bytes last written, if any.
    pub fn last_png(&self) -> Option<&[u8]> {
        self.last_png.as_deref()
    }
}

impl Display for PngDisplay {
    fn show(&mut self, view: &View) -> Result<(), DisplayError> {
        // Called every camera frame: rewrite the file (SD card wear) only when the screen changes.
        if self.last_view.as_ref() == Some(view) {
            return Ok(());
        }
        let png = encode_png(&self.render_rgb(view))?;
        write_atomic(&self.path, &png)?;
        self.last_png = Some(png);
        self.last_view = Some(view.clone());
        Ok(())
    }
}

/// Writes to a temporary file beside `path`, then renames it over `path`, so a viewer polling the
/// file never reads half a PNG. No fsync: a lost screen after a power cut does not matter.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DisplayError> {
    let Some(name) = path.file_name() else {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name");
        return Err(DisplayError::Write { path: path.into(), source });
    };
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, bytes).map_err(|source| DisplayError::Write { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        DisplayError::Write { path: path.into(), source }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::display::Phase;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("leukoscope-display-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn frame_clips_and_fills() {
        let mut f = ScreenFrame::new(Size::new(4, 3), BinaryColor::Off);
        let Ok(()) = f.fill_solid(&Rectangle::new(Point::new(2, 1), Size::new(10, 10)), BinaryColor::On);
        let Ok(()) = f.draw_iter([Pixel(Point::new(-1, 0), BinaryColor::On), Pixel(Point::new(0, 0), BinaryColor::On)]);
        let on: Vec<usize> = f.pixels().iter().enumerate().filter(|(_, c)| c.is_on()).map(|(i, _)| i).collect();
        assert_eq!(on, [0, 6, 7, 10, 11]);
        let rgb = f.to_rgb();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 0, 0]);
    }

    #[test]
    fn show_writes_a_png_atomically_and_only_on_change() {
        let dir = temp_dir("png");
        let path = dir.join("screen.png");
        let mut display = PngDisplay::new(&path, Layout::Large);
        assert!(display.last_png().is_none());
        let mut view = View { phase: Phase::Counting, counted: 12, ..View::default() };
        display.show(&view).expect("writes");
        let written = std::fs::read(&path).expect("file");
        assert_eq!(Some(written.as_slice()), display.last_png());
        let decoded = image::load_from_memory(&written).expect("a PNG").to_rgb8();
        assert_eq!(decoded, display.render_rgb(&view));
        // Unchanged view: the file is left alone.
        std::fs::remove_file(&path).expect("remove");
        display.show(&view).expect("no-op");
        assert!(!path.exists());
        view.counted = 13;
        display.show(&view).expect("writes");
        assert!(path.exists());
        let leftovers: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("screen.png")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn write_error_names_the_path() {
        let mut display = PngDisplay::new("/nonexistent-dir/screen.png", Layout::Compact);
        let err = crate::error_text(&display.show(&View::default()).expect_err("no such directory"));
        assert!(err.starts_with("cannot write /nonexistent-dir/.screen.png.tmp: "), "{err}");
        assert_eq!(err.matches("No such file").count(), 1, "the cause, once: {err}");
    }
}
