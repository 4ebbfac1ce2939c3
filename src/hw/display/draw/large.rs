//! The 240x320 colour layout of the TFT.

use super::{
    big_number, big_word, blast_digits, bold_label, chars_in, ci_text, classes_line, extra_message, fit_middle,
    flag_text, label, progress, threshold, two_lines, Align, Digits, SCREENING_AID,
};
use crate::hw::display::{Phase, View};
use embedded_graphics::{
    mono_font::iso_8859_1::{FONT_10X20, FONT_6X10, FONT_7X13, FONT_9X15, FONT_9X15_BOLD, FONT_9X18_BOLD},
    pixelcolor::Rgb565,
    prelude::*,
    primitives::{Circle, PrimitiveStyle, PrimitiveStyleBuilder, Rectangle, StrokeAlignment},
};

/// Size of the [`draw_large`] layout (portrait TFT).
pub const LARGE_SIZE: Size = Size::new(240, 320);

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

/// TFT digit sizes, largest first: the smaller ones only serve numbers too long for the first.
const LARGE_DIGITS: [Digits; 3] = [Digits::new(30, 54, 6, 7), Digits::new(22, 40, 5, 5), Digits::new(14, 26, 3, 3)];

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
    if view.needs_id {
        label(d, "(not scanned)", &FONT_10X20, AMBER, 5, 235, 50, Align::Left)?;
    } else if view.sample_id.trim().is_empty() {
        label(d, "(auto number)", &FONT_10X20, DIM, 5, 235, 50, Align::Left)?;
    } else {
        let id = fit_middle(&view.sample_id, chars_in(&FONT_10X20, 230));
        label(d, &id, &FONT_10X20, FG, 5, 235, 50, Align::Left)?;
    }
    if !view.operator_id.trim().is_empty() {
        label(d, "OPERATOR", &FONT_6X10, DIM, 5, 60, 77, Align::Left)?;
        let op = fit_middle(&view.operator_id, chars_in(&FONT_7X13, 235 - 62));
        label(d, &op, &FONT_7X13, FG, 62, 235, 75, Align::Left)?;
    }

    // The START prompt as a big green key; without the sample ID it needs, an amber "scan" key.
    let key = Rectangle::new(Point::new(20, 96), Size::new(200, 96));
    if view.needs_id {
        d.fill_solid(&key, AMBER)?;
        label(d, "scan the", &FONT_10X20, BG, 20, 220, 106, Align::Center)?;
        big_word(d, "SAMPLE ID", &FONT_10X20, BG, (20, 220), 134)?;
    } else {
        d.fill_solid(&key, GREEN)?;
        label(d, "press", &FONT_10X20, BG, 20, 220, 106, Align::Center)?;
        big_word(d, "START", &FONT_10X20, BG, (20, 220), 134)?;
    }

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
