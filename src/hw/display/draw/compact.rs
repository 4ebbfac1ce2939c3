//! The condensed 128x64 monochrome layout of the OLED.

use super::{
    big_number, blast_digits, ci_text, classes_line, extra_message, fit_middle, flag_text, label, progress, Align,
    Digits, SCREENING_AID,
};
use crate::hw::display::{Phase, View};
use embedded_graphics::{
    mono_font::iso_8859_1::{FONT_5X8, FONT_6X10, FONT_6X13_BOLD},
    pixelcolor::BinaryColor,
    prelude::*,
    primitives::Rectangle,
};

/// Size of the [`draw_compact`] layout (OLED).
pub const COMPACT_SIZE: Size = Size::new(128, 64);

const COMPACT_DIGITS: [Digits; 2] = [Digits::new(10, 20, 2, 3), Digits::new(7, 14, 2, 2)];

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
        let id = match view.sample_id.trim() {
            _ if view.needs_id => "(no sample ID)".into(),
            "" => "(auto number)".into(),
            _ => fit_middle(&view.sample_id, 21),
        };
        label(d, &id, &FONT_6X10, On, 0, 128, 13, Align::Center)?;
        d.fill_solid(&Rectangle::new(Point::new(14, 27), Size::new(100, 19)), On)?;
        let key = if view.needs_id { "scan sample ID" } else { "press START" };
        label(d, key, &FONT_6X13_BOLD, Off, 14, 114, 30, Align::Center)?;
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
