//! The two layouts, drawn with embedded-graphics onto any `DrawTarget`.
//!
//! Read at arm's length by someone at a microscope: few words, big numbers, high contrast, and a
//! blast flag that cannot be missed (a red banner on the TFT, inverted blocks on the OLED).
//! Every element has a fixed place and every string is cut to its box, so nothing ever draws
//! outside the panel (tests/screens.rs checks it with absurd inputs).
//!
//! Big digits: `eg-seven-segment` (embedded-graphics' own organisation, MIT/Apache, no
//! dependency beyond embedded-graphics 0.8 and bitflags, ~180 kB of source). Its digits scale to
//! any size, so one crate serves the 54 px TFT digits and the 20 px OLED ones, and seven-segment
//! figures read like a lab instrument. The alternatives were weaker: `profont` stops at 24 pt
//! (~16x29 px), `u8g2-fonts` is 19 MB of fonts under mixed licences. Words stay in the built-in
//! mono fonts (Latin-1 sets, so "µ" or "é" in a sample id still draws).
//!
//! Here: the widgets both layouts share (labels cut to their box, seven-segment numbers,
//! the progress bar, the text of the numbers); `large` is the TFT layout, `compact` the OLED one.

mod compact;
mod large;

use super::View;
use eg_seven_segment::{SevenSegmentStyle, SevenSegmentStyleBuilder};
use embedded_graphics::{
    mono_font::{MonoFont, MonoTextStyle},
    prelude::*,
    primitives::{PrimitiveStyle, Rectangle},
    text::{renderer::TextRenderer, Baseline, Text},
};

pub use compact::{draw_compact, COMPACT_SIZE};
pub use large::{draw_large, LARGE_SIZE};

/// Shown on every screen: the product is a screening aid, a person verifies.
pub const SCREENING_AID: &str = "SCREENING AID";

/// A seven-segment digit size.
#[derive(Clone, Copy)]
struct Digits {
    size: Size,
    spacing: u32,
    stroke: u32,
}

impl Digits {
    const fn new(w: u32, h: u32, spacing: u32, stroke: u32) -> Digits {
        Digits { size: Size::new(w, h), spacing, stroke }
    }

    fn style<C: PixelColor>(self, color: C) -> SevenSegmentStyle<C> {
        SevenSegmentStyleBuilder::new()
            .digit_size(self.size)
            .digit_spacing(self.spacing)
            .segment_width(self.stroke)
            .segment_color(color)
            .build()
    }
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Center,
    Right,
}

fn char_width(font: &MonoFont) -> u32 {
    font.character_size.width + font.character_spacing
}

/// How many characters of `font` fit in `px`.
fn chars_in(font: &MonoFont, px: i32) -> usize {
    (px.max(0) as u32 / char_width(font)) as usize
}

fn align_x(left: i32, right: i32, width: u32, align: Align) -> i32 {
    let width = width as i32;
    match align {
        Align::Left => left,
        Align::Center => left + (right - left - width) / 2,
        Align::Right => right - width,
    }
}

/// Control characters become spaces: a newline would start a second line outside the box.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// `s` cut to `max` characters, ending in "..." when cut.
fn fit_end(s: &str, max: usize) -> String {
    let s = clean(s);
    if s.chars().count() <= max {
        return s;
    }
    if max < 4 {
        return s.chars().take(max).collect();
    }
    let mut out: String = s.chars().take(max - 3).collect();
    out.push_str("...");
    out
}

/// `s` cut to `max` characters by dropping its middle: sample ids share prefixes and differ at
/// the end, so both ends stay.
fn fit_middle(s: &str, max: usize) -> String {
    let s = clean(s);
    let n = s.chars().count();
    if n <= max || max < 7 {
        return fit_end(&s, max);
    }
    let head = (max - 3) / 3;
    let tail = max - 3 - head;
    let mut out: String = s.chars().take(head).collect();
    out.push_str("...");
    out.extend(s.chars().skip(n - tail));
    out
}

/// Draws `s` (cut to fit) between `left` and `right` with its top at `y`.
#[allow(clippy::too_many_arguments)]
fn label<D, C>(
    d: &mut D,
    s: &str,
    font: &MonoFont,
    color: C,
    left: i32,
    right: i32,
    y: i32,
    align: Align,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = C>,
    C: PixelColor,
{
    let s = fit_end(s, chars_in(font, right - left));
    let width = s.chars().count() as u32 * char_width(font);
    let at = Point::new(align_x(left, right, width, align), y);
    Text::with_baseline(&s, at, MonoTextStyle::new(font, color), Baseline::Top).draw(d)?;
    Ok(())
}

/// Faux bold for fonts without a bold cut: the text twice, one pixel apart.
#[allow(clippy::too_many_arguments)]
fn bold_label<D, C>(
    d: &mut D,
    s: &str,
    font: &MonoFont,
    color: C,
    left: i32,
    right: i32,
    y: i32,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = C>,
    C: PixelColor,
{
    label(d, s, font, color, left, right - 1, y, Align::Center)?;
    label(d, s, font, color, left + 1, right, y, Align::Center)
}

/// Draws `number` in seven-segment digits followed by `suffix` in `small`, both standing on the
/// row `bottom`, aligned between `left` and `right`. Takes the largest digit size that fits;
/// numbers too long for all of them fall back to plain text, cut.
#[allow(clippy::too_many_arguments)]
fn big_number<D, C>(
    d: &mut D,
    number: &str,
    suffix: &str,
    small: &MonoFont,
    sizes: &[Digits],
    color: C,
    (left, right): (i32, i32),
    bottom: i32,
    align: Align,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = C>,
    C: PixelColor,
{
    let suffix_width = suffix.chars().count() as u32 * char_width(small);
    let small_style = MonoTextStyle::new(small, color);
    for digits in sizes {
        let style = digits.style(color);
        let number_width = style.measure_string(number, Point::zero(), Baseline::Top).bounding_box.size.width;
        let gap = if suffix.is_empty() { 0 } else { 3 };
        let width = number_width + gap + suffix_width;
        if width as i32 <= right - left {
            let x = align_x(left, right, width, align);
            let top = bottom + 1 - digits.size.height as i32;
            Text::with_baseline(number, Point::new(x, top), style, Baseline::Top).draw(d)?;
            let at = Point::new(x + (number_width + gap) as i32, bottom);
            Text::with_baseline(suffix, at, small_style, Baseline::Alphabetic).draw(d)?;
            return Ok(());
        }
    }
    let top = bottom + 1 - small.character_size.height as i32;
    label(d, &format!("{number}{suffix}"), small, color, left, right, top, align)
}

/// A bar filled in proportion `counted / target`, full at or past the target.
fn progress<D, C>(d: &mut D, area: Rectangle, counted: u64, target: u64, outline: C, fill: C) -> Result<(), D::Error>
where
    D: DrawTarget<Color = C>,
    C: PixelColor,
{
    area.into_styled(PrimitiveStyle::with_stroke(outline, 1)).draw(d)?;
    let inner = area.offset(-2);
    let done = if target == 0 { 0 } else { counted.min(target) };
    // u128: no overflow whatever the counts.
    let width = (u128::from(inner.size.width) * u128::from(done) / u128::from(target.max(1))) as u32;
    d.fill_solid(&Rectangle::new(inner.top_left, Size::new(width, inner.size.height)), fill)
}

fn percent(p: f64) -> String {
    if p.is_finite() {
        format!("{p:.1}")
    } else {
        "--".into()
    }
}

fn blast_digits(view: &View) -> String {
    view.blast_percent.map_or_else(|| "--".into(), percent)
}

fn ci_text(view: &View) -> String {
    match view.ci95 {
        Some((lo, hi)) => format!("CI {}-{}%", percent(lo), percent(hi)),
        None => "CI --".into(),
    }
}

/// The threshold without a useless ".0": "20", "12.5".
fn threshold(t: f64) -> String {
    let t = (t * 10.0).round() / 10.0;
    if !t.is_finite() {
        "?".into()
    } else if t.fract() == 0.0 {
        format!("{t:.0}")
    } else {
        format!("{t:.1}")
    }
}

fn flag_text(view: &View) -> String {
    format!("BLASTS >= {}%", threshold(view.threshold_percent))
}

/// The message, unless it only repeats what the camera-lost notice already says.
fn extra_message(view: &View) -> Option<&str> {
    let m = view.message.as_deref()?.trim();
    let repeats = !view.camera_ok && m.eq_ignore_ascii_case("camera lost");
    (!m.is_empty() && !repeats).then_some(m)
}

/// As many "CODE n" entries as fit in `max` characters.
fn classes_line(view: &View, max: usize) -> String {
    let mut line = String::new();
    for (code, n) in &view.top_classes {
        let entry = format!("{} {n}", clean(code));
        let sep = if line.is_empty() { "" } else { "  " };
        if line.chars().count() + sep.len() + entry.chars().count() > max {
            break;
        }
        line.push_str(sep);
        line.push_str(&entry);
    }
    line
}

/// Wraps `s` at spaces into at most two lines of `max` characters, cutting the rest.
fn two_lines(s: &str, max: usize) -> (String, String) {
    let s = clean(s);
    if s.chars().count() <= max {
        return (s, String::new());
    }
    let head: String = s.chars().take(max + 1).collect();
    let split = head
        .rfind(' ')
        .filter(|&i| i > 0)
        .unwrap_or_else(|| head.char_indices().nth(max).map_or(head.len(), |(i, _)| i));
    let first = s[..split].trim_end().to_string();
    let rest = s[split..].trim_start();
    (fit_end(&first, max), fit_end(rest, max))
}

/// Draws text `k` times larger: each font pixel becomes a `k`x`k` block. Only for the few words
/// that must be read from across the bench ("START", "CAMERA LOST"); the built-in fonts stop at
/// 10x20.
struct Scaled<'a, D> {
    inner: &'a mut D,
    origin: Point,
    k: u32,
}

impl<D: DrawTarget> Dimensions for Scaled<'_, D> {
    fn bounding_box(&self) -> Rectangle {
        let outer = self.inner.bounding_box();
        Rectangle::new(Point::zero(), outer.size / self.k)
    }
}

impl<D: DrawTarget> DrawTarget for Scaled<'_, D> {
    type Color = D::Color;
    type Error = D::Error;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(p, color) in pixels {
            let block = Rectangle::new(self.origin + p * self.k as i32, Size::new(self.k, self.k));
            self.inner.fill_solid(&block, color)?;
        }
        Ok(())
    }
}

/// `s` at twice the size of `font`, centred between `left` and `right`, top at `y`.
fn big_word<D, C>(
    d: &mut D,
    s: &str,
    font: &MonoFont,
    color: C,
    (left, right): (i32, i32),
    y: i32,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = C>,
    C: PixelColor,
{
    let s = fit_end(s, chars_in(font, (right - left) / 2));
    let width = s.chars().count() as u32 * char_width(font) * 2;
    let origin = Point::new(align_x(left, right, width, Align::Center), y);
    let mut scaled = Scaled { inner: d, origin, k: 2 };
    Text::with_baseline(&s, Point::zero(), MonoTextStyle::new(font, color), Baseline::Top).draw(&mut scaled)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_end_cuts_with_dots() {
        assert_eq!(fit_end("report saved", 20), "report saved");
        assert_eq!(fit_end("report saved to /media/usb", 12), "report sa...");
        assert_eq!(fit_end("abcdef", 3), "abc");
        assert_eq!(fit_end("line\nbreak", 20), "line break");
        assert_eq!(fit_end("µm é", 3), "µm ");
    }

    #[test]
    fn fit_middle_keeps_both_ends() {
        assert_eq!(fit_middle("S-2024-0117", 29), "S-2024-0117");
        let id = fit_middle("HOSPITAL-NORTH-HAEMATOLOGY-2024-11-26-0117", 22);
        assert_eq!(id.chars().count(), 22);
        assert!(id.starts_with("HOSPI") && id.ends_with("11-26-0117"), "{id}");
    }

    #[test]
    fn two_lines_wraps_at_a_space() {
        assert_eq!(two_lines("short", 10), ("short".into(), String::new()));
        assert_eq!(two_lines("report not saved: disk full", 18), ("report not saved:".into(), "disk full".into()));
        let (a, b) = two_lines(&"x".repeat(50), 20);
        assert_eq!((a.chars().count(), b.chars().count()), (20, 20));
    }

    #[test]
    fn numbers_format() {
        assert_eq!(threshold(20.0), "20");
        assert_eq!(threshold(12.5), "12.5");
        assert_eq!(threshold(f64::NAN), "?");
        assert_eq!(percent(4.123), "4.1");
        assert_eq!(percent(f64::INFINITY), "--");
    }

    #[test]
    fn classes_line_stops_before_overflow() {
        let view = View {
            top_classes: vec![("NGS".into(), 41), ("LYT".into(), 20), ("MON".into(), 8), ("EOS".into(), 3)],
            ..View::default()
        };
        assert_eq!(classes_line(&view, 21), "NGS 41  LYT 20  MON 8");
        assert_eq!(classes_line(&view, 10), "NGS 41");
        assert_eq!(classes_line(&view, 3), "");
    }
}
