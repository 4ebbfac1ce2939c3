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

use super::{Phase, View};
use eg_seven_segment::{SevenSegmentStyle, SevenSegmentStyleBuilder};
use embedded_graphics::{
    mono_font::{
        iso_8859_1::{
            FONT_10X20, FONT_5X8, FONT_6X10, FONT_6X13_BOLD, FONT_7X13, FONT_9X15, FONT_9X15_BOLD, FONT_9X18_BOLD,
        },
        MonoFont, MonoTextStyle,
    },
    pixelcolor::{BinaryColor, Rgb565},
    prelude::*,
    primitives::{Circle, PrimitiveStyle, PrimitiveStyleBuilder, Rectangle, StrokeAlignment},
    text::{renderer::TextRenderer, Baseline, Text},
};

/// Shown on every screen: the product is a screening aid, a person verifies.
pub const SCREENING_AID: &str = "SCREENING AID";
/// Size of the [`draw_large`] layout (portrait TFT).
pub const LARGE_SIZE: Size = Size::new(240, 320);
/// Size of the [`draw_compact`] layout (OLED).
pub const COMPACT_SIZE: Size = Size::new(128, 64);

// TFT palette. White and the banner colours on black: the panel sits beside a bright microscope.
const BG: Rgb565 = Rgb565::BLACK;
const FG: Rgb565 = Rgb565::WHITE;
const DIM: Rgb565 = Rgb565::new(21, 42, 21); // ~170 grey: labels
const FAINT: Rgb565 = Rgb565::new(9, 18, 9); // ~75 grey: outlines
const HEADER: Rgb565 = Rgb565::new(3, 10, 13); // dark slate blue
const AMBER: Rgb565 = Rgb565::new(31, 46, 0);
const RED: Rgb565 = Rgb565::new(27, 0, 0);
const GREEN: Rgb565 = Rgb565::new(0, 52, 6);
const CYAN: Rgb565 = Rgb565::new(0, 44, 31);

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

/// TFT digit sizes, largest first: the smaller ones only serve numbers too long for the first.
const LARGE_DIGITS: [Digits; 3] = [Digits::new(30, 54, 6, 7), Digits::new(22, 40, 5, 5), Digits::new(14, 26, 3, 3)];
const COMPACT_DIGITS: [Digits; 2] = [Digits::new(10, 20, 2, 3), Digits::new(7, 14, 2, 2)];

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

fn phase_word(phase: Phase) -> &'static str {
    match phase {
        Phase::Idle => "READY",
        Phase::Counting => "COUNTING",
        Phase::TargetReached => "TARGET",
        Phase::Finished => "FINISHED",
    }
}

/// The 240x320 colour layout of the TFT.
pub fn draw_large<D: DrawTarget<Color = Rgb565>>(view: &View, d: &mut D) -> Result<(), D::Error> {
    d.clear(BG)?;
    d.fill_solid(&Rectangle::new(Point::zero(), Size::new(240, 21)), HEADER)?;
    label(d, SCREENING_AID, &FONT_9X15_BOLD, AMBER, 5, 160, 3, Align::Left)?;
    let phase_color = match view.phase {
        Phase::TargetReached => GREEN,
        Phase::Finished => CYAN,
        _ => FG,
    };
    label(d, phase_word(view.phase), &FONT_9X15_BOLD, phase_color, 130, 235, 3, Align::Right)?;
    match view.phase {
        Phase::Idle => idle_large(view, d),
        _ => count_large(view, d),
    }
}

fn idle_large<D: DrawTarget<Color = Rgb565>>(view: &View, d: &mut D) -> Result<(), D::Error> {
    label(d, "SAMPLE", &FONT_6X10, DIM, 5, 235, 36, Align::Left)?;
    if view.sample_id.trim().is_empty() {
        label(d, "(no id)", &FONT_10X20, DIM, 5, 235, 50, Align::Left)?;
    } else {
        let id = fit_middle(&view.sample_id, chars_in(&FONT_10X20, 230));
        label(d, &id, &FONT_10X20, FG, 5, 235, 50, Align::Left)?;
    }

    // The START prompt as a big green key.
    let key = Rectangle::new(Point::new(20, 96), Size::new(200, 96));
    d.fill_solid(&key, GREEN)?;
    label(d, "press", &FONT_10X20, BG, 20, 220, 106, Align::Center)?;
    big_word(d, "START", &FONT_10X20, BG, (20, 220), 134)?;

    if view.camera_ok {
        Circle::new(Point::new(62, 220), 13).into_styled(PrimitiveStyle::with_fill(GREEN)).draw(d)?;
        label(d, "camera OK", &FONT_10X20, FG, 82, 235, 216, Align::Left)?;
    } else {
        d.fill_solid(&Rectangle::new(Point::new(5, 206), Size::new(230, 50)), RED)?;
        big_word(d, "CAMERA LOST", &FONT_10X20, FG, (5, 235), 211)?;
    }
    if let Some(m) = extra_message(view) {
        message_box(d, m)?;
    }
    Ok(())
}

fn count_large<D: DrawTarget<Color = Rgb565>>(view: &View, d: &mut D) -> Result<(), D::Error> {
    label(d, "ID", &FONT_7X13, DIM, 5, 26, 24, Align::Left)?;
    let id = if view.sample_id.trim().is_empty() {
        "-".into()
    } else {
        fit_middle(&view.sample_id, chars_in(&FONT_7X13, 235 - 26))
    };
    label(d, &id, &FONT_7X13, FG, 26, 235, 24, Align::Left)?;

    // Cells: big count over the target, then progress to the target.
    label(d, "CELLS", &FONT_6X10, DIM, 5, 45, 42, Align::Left)?;
    let fields = format!("{} fields  {} unid.", view.fields, view.unidentified);
    label(d, &fields, &FONT_6X10, DIM, 45, 235, 42, Align::Right)?;
    let count = view.counted.to_string();
    let target = format!("/{}", view.target);
    big_number(d, &count, &target, &FONT_10X20, &LARGE_DIGITS, FG, (5, 235), 107, Align::Left)?;
    let reached = view.target > 0 && view.counted >= view.target;
    let bar = Rectangle::new(Point::new(5, 113), Size::new(230, 12));
    progress(d, bar, view.counted, view.target, DIM, if reached { GREEN } else { CYAN })?;

    // Blasts: big percentage, its interval, the flag.
    label(d, "BLAST %", &FONT_6X10, DIM, 5, 55, 132, Align::Left)?;
    let blasts = format!("{} blast{}", view.blasts, if view.blasts == 1 { "" } else { "s" });
    label(d, &blasts, &FONT_6X10, DIM, 55, 235, 132, Align::Right)?;
    big_number(d, &blast_digits(view), "%", &FONT_10X20, &LARGE_DIGITS, FG, (5, 235), 197, Align::Left)?;
    label(d, &ci_text(view), &FONT_10X20, FG, 5, 235, 201, Align::Left)?;
    let banner = Rectangle::new(Point::new(5, 225), Size::new(230, 30));
    if view.flagged {
        // Red frame round the whole blast section as well as the banner: seen from the side too.
        let frame = PrimitiveStyleBuilder::new()
            .stroke_color(RED)
            .stroke_width(3)
            .stroke_alignment(StrokeAlignment::Inside)
            .build();
        Rectangle::new(Point::new(1, 128), Size::new(238, 130)).into_styled(frame).draw(d)?;
        d.fill_solid(&banner, RED)?;
        bold_label(d, &flag_text(view), &FONT_10X20, FG, 5, 235, 230)?;
    } else {
        banner.into_styled(PrimitiveStyle::with_stroke(FAINT, 1)).draw(d)?;
        let below = format!("flag at >= {}%", threshold(view.threshold_percent));
        label(d, &below, &FONT_7X13, DIM, 5, 235, 234, Align::Center)?;
    }

    // Bottom zone, most urgent first: camera lost, target reached, the message, the skip reason.
    // The classes row above it gives way to the message when the zone is taken.
    let zone = Rectangle::new(Point::new(5, 280), Size::new(230, 38));
    let mut message_shown = false;
    if !view.camera_ok {
        d.fill_solid(&zone, RED)?;
        label(d, "CAMERA LOST", &FONT_9X18_BOLD, FG, 5, 235, 282, Align::Center)?;
        let detail = extra_message(view).unwrap_or("check the camera");
        label(d, detail, &FONT_7X13, FG, 9, 231, 302, Align::Center)?;
        message_shown = true;
    } else if view.phase == Phase::TargetReached {
        d.fill_solid(&zone, GREEN)?;
        label(d, "TARGET REACHED", &FONT_9X18_BOLD, BG, 5, 235, 282, Align::Center)?;
        label(d, "press FINISH", &FONT_9X15_BOLD, BG, 5, 235, 301, Align::Center)?;
    } else if let Some(m) = extra_message(view) {
        message_box(d, m)?;
        message_shown = true;
    } else if let Some(skip) = view.skip.filter(|_| view.phase == Phase::Counting) {
        label(d, &format!("skipped: {}", skip.label()), &FONT_10X20, AMBER, 5, 235, 289, Align::Center)?;
    }
    match extra_message(view) {
        Some(m) if !message_shown => label(d, m, &FONT_9X15, AMBER, 5, 235, 259, Align::Left),
        _ => label(d, &classes_line(view, chars_in(&FONT_9X15, 230)), &FONT_9X15, FG, 5, 235, 259, Align::Left),
    }
}

/// A notice or error in the bottom zone: one big line when short, else two small ones.
fn message_box<D: DrawTarget<Color = Rgb565>>(d: &mut D, m: &str) -> Result<(), D::Error> {
    let zone = Rectangle::new(Point::new(5, 280), Size::new(230, 38));
    let frame = PrimitiveStyleBuilder::new()
        .stroke_color(AMBER)
        .stroke_width(2)
        .stroke_alignment(StrokeAlignment::Inside)
        .build();
    zone.into_styled(frame).draw(d)?;
    if m.chars().count() <= chars_in(&FONT_10X20, 222) {
        label(d, m, &FONT_10X20, FG, 9, 231, 289, Align::Center)
    } else {
        let (first, second) = two_lines(m, chars_in(&FONT_9X15, 222));
        label(d, &first, &FONT_9X15, FG, 9, 231, 284, Align::Center)?;
        label(d, &second, &FONT_9X15, FG, 9, 231, 300, Align::Center)
    }
}

fn phase_word_compact(phase: Phase) -> &'static str {
    match phase {
        Phase::Idle => "READY",
        Phase::Counting => "COUNT",
        Phase::TargetReached => "TARGET",
        Phase::Finished => "DONE",
    }
}

/// The condensed 128x64 monochrome layout of the OLED.
pub fn draw_compact<D: DrawTarget<Color = BinaryColor>>(view: &View, d: &mut D) -> Result<(), D::Error> {
    use BinaryColor::{Off, On};
    d.clear(Off)?;
    label(d, SCREENING_AID, &FONT_5X8, On, 0, 80, 0, Align::Left)?;
    label(d, phase_word_compact(view.phase), &FONT_5X8, On, 80, 128, 0, Align::Right)?;
    d.fill_solid(&Rectangle::new(Point::new(0, 9), Size::new(128, 1)), On)?;

    // Bottom line, one thing at a time (inverted = needs attention).
    let bottom = Rectangle::new(Point::new(0, 51), Size::new(128, 13));
    let inverted = |d: &mut D, s: &str| -> Result<(), D::Error> {
        d.fill_solid(&bottom, On)?;
        label(d, s, &FONT_6X13_BOLD, Off, 0, 128, 51, Align::Center)
    };

    if view.phase == Phase::Idle {
        let id = if view.sample_id.trim().is_empty() { "(no id)".into() } else { fit_middle(&view.sample_id, 21) };
        label(d, &id, &FONT_6X10, On, 0, 128, 13, Align::Center)?;
        d.fill_solid(&Rectangle::new(Point::new(14, 27), Size::new(100, 19)), On)?;
        label(d, "press START", &FONT_6X13_BOLD, Off, 14, 114, 30, Align::Center)?;
        return match extra_message(view) {
            _ if !view.camera_ok => inverted(d, "CAMERA LOST"),
            Some(m) => label(d, m, &FONT_6X10, On, 0, 128, 53, Align::Center),
            None => label(d, "camera OK", &FONT_6X10, On, 0, 128, 53, Align::Center),
        };
    }

    // Count on the left, blast % on the right; the blast % turns into a white block when flagged.
    let count = view.counted.to_string();
    let target = format!("/{}", view.target);
    big_number(d, &count, &target, &FONT_6X10, &COMPACT_DIGITS, On, (0, 64), 30, Align::Left)?;
    let ink = if view.flagged {
        d.fill_solid(&Rectangle::new(Point::new(65, 10), Size::new(63, 22)), On)?;
        Off
    } else {
        On
    };
    big_number(d, &blast_digits(view), "%", &FONT_6X10, &COMPACT_DIGITS, ink, (67, 126), 30, Align::Right)?;
    progress(d, Rectangle::new(Point::new(0, 33), Size::new(128, 6)), view.counted, view.target, On, On)?;
    label(d, &ci_text(view), &FONT_6X10, On, 0, 128, 40, Align::Left)?;

    match extra_message(view) {
        _ if !view.camera_ok => inverted(d, "CAMERA LOST"),
        _ if view.phase == Phase::TargetReached => inverted(d, "TARGET: press FINISH"),
        _ if view.flagged => inverted(d, &flag_text(view)),
        Some(m) => label(d, m, &FONT_6X10, On, 0, 128, 53, Align::Left),
        None => match view.skip.filter(|_| view.phase == Phase::Counting) {
            Some(skip) => label(d, &format!("skipped: {}", skip.label()), &FONT_6X10, On, 0, 128, 53, Align::Left),
            None => label(d, &classes_line(view, 21), &FONT_6X10, On, 0, 128, 53, Align::Left),
        },
    }
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
