//! The appliance loop: feeds [`Appliance`] from any frame source and button
//! source and shows it on any display, with the watchdog and signal output.

use super::{Appliance, ApplianceError};
use crate::hw::buttons::{ButtonSource, Signal};
use crate::hw::display::{self, Display, View};
use crate::hw::source::{FrameSource, SourceError};
use std::time::Duration;

/// When [`run_loop`] returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopOptions {
    /// Return when the frame source has no more frames (replays).
    pub exit_when_exhausted: bool,
    /// Return after the first session this process finishes.
    pub until_finished: bool,
}

/// The appliance loop: buttons first (they must never wait for the camera),
/// then one frame, then the screen if anything on it changed.
pub fn run_loop(
    app: &mut Appliance,
    source: &mut dyn FrameSource,
    buttons: &mut dyn ButtonSource,
    screen: &mut dyn Display,
    mut signal: Option<&mut dyn Signal>,
    opts: LoopOptions,
) -> Result<(), ApplianceError> {
    if let Some((s, _)) = app.open.as_ref() {
        if let Some((_, last)) = s.fields.last() {
            source.resume_after(&last.path);
        }
    }
    let mut shown: Option<View> = None;
    let mut signalled = false;
    let mut idle_wait = Duration::ZERO;
    // Under systemd (Type=notify): ready once the loop turns, and a watchdog
    // ping per turn, so a read that hangs (camera driver) gets the service restarted.
    let mut notifier = crate::appliance::systemd::Notifier::from_env();
    if let Some(n) = &notifier {
        n.ready();
    }
    loop {
        if let Some(n) = notifier.as_mut() {
            n.ping();
        }
        let presses = buttons.poll(idle_wait)?;
        for code in buttons.codes() {
            app.on_code(&code);
        }
        for b in presses {
            app.handle(b)?;
        }
        app.poll_export();
        if opts.until_finished && app.finished_count > 0 {
            break;
        }
        idle_wait = Duration::ZERO;
        match source.next_frame() {
            Ok(frame) => {
                app.on_frame(&frame)?;
            }
            Err(SourceError::Exhausted) if opts.exit_when_exhausted => {
                show(screen, &app.view(), &mut shown);
                break;
            }
            Err(e) => {
                app.on_source_error(&e);
                // No frame to work on: wait on the buttons instead of spinning.
                idle_wait = Duration::from_millis(100);
            }
        }
        if opts.until_finished && app.finished_count > 0 {
            show(screen, &app.view(), &mut shown);
            break;
        }
        let view = app.view();
        let want_signal = view.flagged || view.phase == display::Phase::TargetReached;
        if want_signal != signalled {
            if let Some(sig) = signal.as_deref_mut() {
                if let Err(e) = sig.set(want_signal) {
                    log::warn!("{e}");
                }
            }
            signalled = want_signal;
        }
        show(screen, &view, &mut shown);
    }
    // A copy to a USB stick in flight is finished, and said, before returning.
    app.wait_export();
    show(screen, &app.view(), &mut shown);
    Ok(())
}

/// Redraws only when the view changed; a broken display is logged, never fatal:
/// the count and its journal matter more than the screen.
fn show(screen: &mut dyn Display, view: &View, shown: &mut Option<View>) {
    if shown.as_ref() != Some(view) {
        if let Err(e) = screen.show(view) {
            log::error!("display: {}", crate::error_text(&e));
        }
        *shown = Some(view.clone());
    }
}
