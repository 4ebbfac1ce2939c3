//! `leukoscope run`: the appliance, wired from the configuration and the
//! command line's overrides.

use super::{demo_inputs, ConfigArg, ModelArgs};
use anyhow::{Context, Result};
use leukoscope::appliance::{run_loop, Appliance, LoopOptions};
use leukoscope::hw::source::{FrameSource, ReplaySource, SourceKind, StageSimulator};
use std::path::PathBuf;

/// The appliance: count leukocytes live from the camera, field by field,
/// with the running count on a small display and buttons to start, capture,
/// undo the last field and finish.
///
/// Frames come from the V4L2 camera, or (no camera, or --replay) from image
/// files played as a moving stage would show them. Only sharp frames of a
/// still stage showing a new field are analysed. The session is journaled in
/// the state folder: after a power cut, `run` resumes it. FINISH writes the
/// same report folder as `analyze --out`. Keyboard stand-in for the buttons:
/// s = start, c (or Enter) = capture, u = undo, f = finish, each + Enter;
/// "id CODE" + Enter enters a sample ID (or an operator ID: "id OP:name"), as
/// a barcode scanner (`[scanner] device`) does.
///
/// With [review] with_run = true it also serves the review page of the
/// finished sessions (as `leukoscope review` does), beside the count.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    model: ModelArgs,
    /// Replay these images (or folders) instead of the camera.
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
    /// Replay frame rate (0 = as fast as analysed); default: the config's.
    #[arg(long)]
    replay_fps: Option<f32>,
    /// Press buttons from a script instead of the configured buttons: lines
    /// "<poll> <start|capture|undo|finish>", or "<poll> id <CODE>" to enter a
    /// code as if scanned; the loop polls once per frame.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Folder for sessions and reports; default: the config's.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Write the screen to this PNG instead of the configured display.
    #[arg(long)]
    screen_png: Option<PathBuf>,
    /// Stop after the first session this run finishes.
    #[arg(long)]
    until_finished: bool,
}

pub fn run(a: Args) -> Result<i32> {
    let mut config = a.config.load()?;
    if let Some(dir) = a.state {
        config.session.state_dir = Some(dir);
    }
    if let Some(png) = a.screen_png {
        config.display.kind = leukoscope::hw::display::DisplayKind::Png;
        config.display.png_path = png;
    }
    if !a.replay.is_empty() {
        config.source.kind = SourceKind::Replay;
        config.source.replay = a.replay;
    }
    if let Some(fps) = a.replay_fps {
        config.source.replay_fps = fps;
    }
    let analyzer = a.model.analyzer(&config, a.config.config.as_deref())?;
    // The display first, so that every later failure can be shown on it.
    let mut screen = leukoscope::hw::display::open(&config.display).context("opening the display")?;
    let use_camera = match config.source.kind {
        SourceKind::Camera => true,
        SourceKind::Replay => false,
        SourceKind::Auto => config.camera.device.exists(),
    };
    let mut source: Box<dyn FrameSource> = if use_camera {
        info!("camera {}", config.camera.device.display());
        Box::new(leukoscope::hw::camera::V4l2Source::new(&config.camera))
    } else {
        let inputs = if config.source.replay.is_empty() { demo_inputs()? } else { config.source.replay.clone() };
        let paths = leukoscope::input::collect_images(&inputs)?;
        let fps = Some(config.source.replay_fps);
        let replay = ReplaySource::new(paths, fps, config.source.replay_loop);
        if config.source.simulate_stage {
            Box::new(StageSimulator::new(replay, 3, 4))
        } else {
            Box::new(replay)
        }
    };
    info!("frames from {}", source.describe());
    let mut buttons: Box<dyn leukoscope::hw::buttons::ButtonSource> = match &a.script {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading script {}", p.display()))?;
            Box::new(leukoscope::hw::buttons::ScriptedButtons::parse(&text)?)
        }
        None => leukoscope::hw::gpio::open_buttons(&config.buttons)?,
    };
    if config.scanner.device.is_some() {
        if !config.session.require_sample_id {
            warn!(
                "a scanner is configured but session.require_sample_id = false: a sample started without a scan \
                 gets an automatic number"
            );
        }
        let scanner = leukoscope::hw::scanner::Scanner::open(&config.scanner)?;
        buttons = Box::new(leukoscope::hw::scanner::WithScanner { buttons, scanner });
    }
    let mut signal = leukoscope::hw::gpio::open_signal(&config.buttons)?;
    let review = config.review.with_run.then(|| (analyzer.classifier.card.clone(), analyzer.rules.clone()));
    let mut app =
        Appliance::new(analyzer, config.session.clone(), config.gate.clone(), config.count.blast_threshold_percent)?
            .calibrate_over(config.scale.calibrate_fields)
            .export_to(config.export.clone());
    // The review page beside the count ([review] with_run), once this run holds the state folder.
    if let Some((card, rules)) = review {
        let state = config.session.state_dir();
        if let Some(addr) = leukoscope::review::server::spawn_beside_run(&config.review, &state, &card, rules) {
            if !addr.ip().is_loopback() {
                warn!("the review page is open to the network on {addr}: every request needs the token");
            }
            info!("review page at http://{addr}/ (token: `leukoscope review --print-token`)");
        }
    }
    let opts = LoopOptions { exit_when_exhausted: !use_camera, until_finished: a.until_finished };
    run_loop(
        &mut app,
        source.as_mut(),
        buttons.as_mut(),
        screen.as_mut(),
        signal.as_mut().map(|s| s.as_mut() as &mut dyn leukoscope::hw::buttons::Signal),
        opts,
    )?;
    if let Some(s) = app.session() {
        info!("session {} left open ({} cells): `run` resumes it", s.sample_id, s.diff.cells());
    }
    Ok(0)
}
