//! `leukoscope`: command-line front end. Parsing, progress and printing live
//! here; everything else is in the library.

mod cli;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use leukoscope::classify::model::{Classifier, Precision};
use leukoscope::vision::preprocess::{prepare, PreprocessSpec};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "leukoscope",
    version,
    about = "Automated white-blood-cell differential with blast flagging, offline.",
    long_about = "leukoscope finds leukocytes in blood-smear images, classifies each one with an \
int8 ONNX model (run by tract, on this machine, no network) and counts them: per-class \
differential, blast percentage with its exact 95% confidence interval, and a threshold flag.\n\n\
SCREENING AID ONLY: every result must be verified by a qualified person."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Find, classify and count every leukocyte in smear-field images.
    ///
    /// Without inputs, analyses the BCCD test fields in the data folder
    /// ($LEUKOSCOPE_DATA, default ../shared/data) as a demonstration.
    Analyze {
        /// Model card (JSON); default: the config's, else the shipped model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Which model file to run: auto (the card's fastest on this CPU), int8 or f32;
        /// default: the config's (auto).
        #[arg(long, value_enum)]
        precision: Option<Precision>,
        /// TOML configuration (see board/leukoscope.toml for every key).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Write a report folder: results.json, cells.csv and every cell's crop,
        /// grouped by class with blasts and unidentified cells first.
        #[arg(long)]
        out: Option<PathBuf>,
        /// With --out: replace an existing report folder (only a report folder,
        /// and only once the new report is complete).
        #[arg(long, requires = "out")]
        force: bool,
        /// Sample identifier, written into the JSON and the report files.
        #[arg(long)]
        sample_id: Option<String>,
        /// Operator identifier, written into the JSON and the report files.
        #[arg(long)]
        operator_id: Option<String>,
        /// Field images or directories of them.
        inputs: Vec<PathBuf>,
    },
    /// Classify single-cell crops (one centred leukocyte per image, no detection).
    Classify {
        /// Model card (JSON); default: the shipped model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Which model file to run: auto (the card's fastest on this CPU), int8 or f32.
        #[arg(long, value_enum, default_value = "auto")]
        precision: Precision,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Scale of the crops (µm per pixel), as `calibrate` or the scanner's
        /// specification gives it. Default: estimated from the red cells in each
        /// crop (the JSON says which), else the detector's fallback.
        #[arg(long)]
        um_per_px: Option<f32>,
        /// Image files or directories of images.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Measure speed side by side: per-crop preprocessing and inference (int8 and
    /// f32), detection and whole fields at 640x480, 1280x960 and 1920x1080, and
    /// start-up to the first result. Single thread, median of repeated runs.
    Bench {
        /// Model card (JSON); default: the shipped model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Seconds to spend on each figure.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Single-cell crop to time; default: lmu/MYO/MYO_0001.jpg in the data folder.
        #[arg(long)]
        crop: Option<PathBuf>,
        /// Field to time (resized to each size); default: bccd/JPEGImages/BloodImage_00001.jpg
        /// in the data folder. On a board without the data folder, copy these two images.
        #[arg(long)]
        field: Option<PathBuf>,
        /// Instead of the figures above: the whole field averaged over many fields
        /// (images or folders; none named: the 72 BCCD test fields), each resized
        /// to --size, with the file the card runs on this CPU. --seconds is then the
        /// budget per figure for all fields together.
        #[arg(long, num_args = 0.., conflicts_with_all = ["crop", "field"])]
        fields: Option<Vec<PathBuf>>,
        /// Size the --fields images are resized to, WIDTHxHEIGHT.
        #[arg(long, default_value = "1280x960", value_parser = parse_size)]
        size: (u32, u32),
    },
    /// The appliance: count leukocytes live from the camera, field by field,
    /// with the running count on a small display and buttons to start, capture,
    /// undo the last field and finish.
    ///
    /// Frames come from the V4L2 camera, or (no camera, or --replay) from image
    /// files played as a moving stage would show them. Only sharp frames of a
    /// still stage showing a new field are analysed. The session is journaled in
    /// the state folder: after a power cut, `run` resumes it. FINISH writes the
    /// same report folder as `analyze --out`. Keyboard stand-in for the buttons:
    /// s = start, c (or Enter) = capture, u = undo, f = finish, each + Enter.
    Run {
        /// TOML configuration (see board/leukoscope.toml for every key).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Model card (JSON); default: the config's, else the shipped model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Which model file to run: auto (the card's fastest on this CPU), int8 or f32;
        /// default: the config's (auto).
        #[arg(long, value_enum)]
        precision: Option<Precision>,
        /// Replay these images (or folders) instead of the camera.
        #[arg(long, num_args = 1..)]
        replay: Vec<PathBuf>,
        /// Replay frame rate (0 = as fast as analysed); default: the config's.
        #[arg(long)]
        replay_fps: Option<f32>,
        /// Press buttons from a script instead of the configured buttons: lines
        /// "<poll> <start|capture|undo|finish>"; the loop polls once per frame.
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
    },
    /// Measure the camera's scale (µm per pixel): the median of the red-cell
    /// estimates of many fields (with their spread), or a stage micrometer.
    /// With --write, store it in the config's [scale] table (per objective with
    /// --objective), keeping the file's comments.
    Calibrate {
        /// TOML configuration to write into (--write); created if missing.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Objective the scale belongs to (e.g. 100x): written to
        /// [scale.objectives] and made the one in use.
        #[arg(long)]
        objective: Option<String>,
        /// Store the result in the config file.
        #[arg(long, requires = "config")]
        write: bool,
        /// Stage micrometer: the length of a ruling in pixels...
        #[arg(long, requires = "micrometer_um", conflicts_with = "fields")]
        micrometer_px: Option<f32>,
        /// ...and its length in µm.
        #[arg(long, requires = "micrometer_px")]
        micrometer_um: Option<f32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Field images (or folders) from this camera and objective; 20 or more
        /// fields with red cells make a steady median.
        #[arg(required_unless_present = "micrometer_px")]
        fields: Vec<PathBuf>,
    },
    /// Review reports in a browser: a local web page with each report's cells
    /// (blasts first, then unidentified, then the other classes) to reclassify,
    /// mark as not leukocytes and sign off. Every change is appended to the
    /// report folder's review.jsonl; sign-off makes report.html and
    /// report.fhir.json final.
    ///
    /// Listens on 127.0.0.1:8080 unless [review] listen (or --listen) says
    /// otherwise. Every request needs the token that --print-token prints:
    /// open http://ADDRESS/?token=TOKEN once.
    Review {
        /// TOML configuration (its [review], [session] and [count] tables).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Model card whose classes a reviewer may choose; default: the config's, else the shipped model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Folder of the sessions and of the token; default: the config's.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Address to listen on, IP:PORT; default: the config's [review] listen.
        #[arg(long)]
        listen: Option<String>,
        /// Port to listen on, on the configured address (0: any free port).
        #[arg(long, conflicts_with = "listen")]
        port: Option<u16>,
        /// Print the access token and exit.
        #[arg(long)]
        print_token: bool,
        /// Session or report folders (holding results.json); default: every
        /// finished session in the state folder.
        dirs: Vec<PathBuf>,
    },
    /// Open a V4L2 camera as `run` would, list its formats and capture frames.
    CameraCheck {
        /// TOML configuration whose [camera] section to start from.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: leukoscope::hw::camera_check::CameraCheckArgs,
    },
    /// Look after the appliance's state folder.
    Session {
        #[command(subcommand)]
        action: SessionAction,
    },
    /// Print the configuration in effect (the defaults, or FILE checked and
    /// completed with them) as TOML.
    Config {
        /// TOML configuration to check.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Turn images into model input tensors (used by the Python training pipeline,
    /// so that training sees exactly what the appliance sees).
    Preprocess {
        /// Text file with one image path per line, optionally followed by a tab
        /// and the image's scale in µm per pixel (else estimated as `classify` does).
        #[arg(long)]
        list: PathBuf,
        /// Output .npy file: float32 [N, 3, S, S]. A JSON sidecar (same name,
        /// .json) records per image whether a nucleus was found or why it failed.
        #[arg(long)]
        out: PathBuf,
        /// Model card whose preprocessing to use; default: the built-in defaults.
        #[arg(long)]
        card: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SessionAction {
    /// Repair damaged session journals: keep every record that reads and fits,
    /// set the others aside in journal.damaged.jsonl beside the journal, so that
    /// `run` resumes. Takes the state folder's lock: stop `run` first.
    Repair {
        /// TOML configuration whose state folder to repair.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The state folder; default: the config's, as `run` finds it.
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

/// Exit status of a bad configuration: sysexits.h's EX_CONFIG, which the
/// systemd unit's `RestartPreventExitStatus=78` keeps from restarting forever.
const EX_CONFIG: i32 = 78;

fn main() {
    let journal = leukoscope::appliance::systemd::stderr_is_journal();
    let mut logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if journal {
        // The journal adds the time; the `<N>` prefix is the line's syslog priority.
        logger.format(|buf, record| {
            let p = leukoscope::appliance::systemd::syslog_priority(record.level());
            writeln!(buf, "<{p}>{}: {}", record.level().as_str().to_lowercase(), record.args())
        });
    }
    logger.init();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}error: {e:#}", if journal { "<3>" } else { "" });
            // A config error, also where building the analyzer found it (`transparent`
            // hands on the inner error's source, not the error itself).
            let bad_config = e.chain().any(|c| {
                c.is::<leukoscope::config::ConfigError>()
                    || matches!(c.downcast_ref(), Some(leukoscope::classify::pipeline::BuildError::Config(_)))
            });
            if damaged_journal(&e) {
                eprintln!(
                    "{}`leukoscope session repair` (with the same --config or --state) keeps every intact record, \
                     sets the damaged ones aside beside the journal, and lets `run` resume",
                    if journal { "<6>" } else { "" }
                );
            }
            if bad_config {
                EX_CONFIG
            } else {
                2
            }
        }
    };
    std::process::exit(code);
}

/// Whether the error is a damaged journal (`session repair` is the way out).
fn damaged_journal(e: &anyhow::Error) -> bool {
    use leukoscope::appliance::session::SessionError;
    use leukoscope::appliance::ApplianceError;
    e.chain().any(|c| {
        matches!(c.downcast_ref(), Some(SessionError::Corrupt { .. }))
            || matches!(c.downcast_ref(), Some(ApplianceError::Session(SessionError::Corrupt { .. })))
    })
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Analyze { model, precision, config, json, out, force, sample_id, operator_id, inputs } => {
            analyze(model, precision, config, json, out.map(|o| (o, force)), (sample_id, operator_id), inputs)
        }
        Command::Session { action: SessionAction::Repair { config, state } } => session_repair(config, state),
        Command::Bench { model, seconds, json, fields: Some(fields), size, .. } => {
            bench_fields(model, seconds, json, &fields, size)
        }
        Command::Bench { model, seconds, json, crop, field, fields: None, size: _ } => {
            bench(model, seconds, json, crop, field)
        }
        Command::Classify { model, precision, json, um_per_px, inputs } => {
            classify(model, precision, json, um_per_px, &inputs)
        }
        Command::Preprocess { list, out, card } => preprocess(&list, &out, card),
        Command::Run { config, model, precision, replay, replay_fps, script, state, screen_png, until_finished } => {
            run_appliance(RunArgs {
                config,
                model,
                precision,
                replay,
                replay_fps,
                script,
                state,
                screen_png,
                until_finished,
            })
        }
        Command::Calibrate { config, objective, write, micrometer_px, micrometer_um, json, fields } => {
            calibrate(config, objective, write, micrometer_px.zip(micrometer_um), json, &fields)
        }
        Command::CameraCheck { config, args } => {
            leukoscope::hw::camera_check::camera_check(&args, &load_config(config.as_deref())?.camera)?;
            Ok(0)
        }
        Command::Review { config, model, state, listen, port, print_token, dirs } => {
            review(config, model, state, (listen, port), print_token, dirs)
        }
        Command::Config { config } => {
            print!("{}", toml::to_string(&load_config(config.as_deref())?)?);
            Ok(0)
        }
    }
}

fn progress(n: usize, what: &str) -> indicatif::ProgressBar {
    // Only worth drawing for batches, and never into a pipe.
    if n < 20 {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(n as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn load_classifier(model: Option<PathBuf>, precision: Precision) -> Result<Classifier> {
    let card = model.unwrap_or_else(leukoscope::classify::model::default_card_path);
    let clf = Classifier::load_precision(&card, precision)
        .with_context(|| format!("loading model card {}", card.display()))?;
    log::debug!("model {} ({}, {})", clf.card.name, clf.variant, clf.model_path.display());
    Ok(clf)
}

fn load_config(path: Option<&Path>) -> Result<leukoscope::config::Config> {
    Ok(match path {
        Some(p) => leukoscope::config::Config::load(p)?,
        None => leukoscope::config::Config::default(),
    })
}

/// A batch's inputs in order, each an image path, or an input that gave none
/// (missing, empty directory) with its error: the batch goes on with the
/// others and reports it. With no image at all, the error stops everything.
fn batch_inputs(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, Option<String>)>> {
    let items = leukoscope::input::collect_batch(inputs);
    if items.iter().all(Result::is_err) {
        let mut errors = items.into_iter().filter_map(Result::err);
        let Some(first) = errors.next() else { bail!("no images given") };
        for e in errors {
            log::error!("{}", leukoscope::error_text(&e));
        }
        return Err(first.into());
    }
    Ok(items
        .into_iter()
        .map(|i| match i {
            Ok(p) => (p, None),
            Err(e) => (e.path().to_path_buf(), Some(leukoscope::error_text(&e))),
        })
        .collect())
}

/// One input of a batch read: its image, or why there is none.
fn read_input(path: &Path, bad: Option<&str>) -> Result<image::RgbImage> {
    match bad {
        Some(e) => Err(anyhow::anyhow!("{e}")),
        None => Ok(leukoscope::input::load_rgb(path)?),
    }
}

fn classify(
    model: Option<PathBuf>,
    precision: Precision,
    json: bool,
    um_per_px: Option<f32>,
    inputs: &[PathBuf],
) -> Result<i32> {
    let clf = load_classifier(model, precision)?;
    let paths = batch_inputs(inputs)?;
    if let Some(s) = um_per_px.filter(|s| !(s.is_finite() && *s > 0.0 && *s < 10.0)) {
        bail!("--um-per-px {s}: must be a positive number below 10");
    }
    let spec = clf.card.input.preprocessing.clone();
    let detect = leukoscope::vision::detect::DetectParams::default();
    let pb = progress(paths.len(), "classifying");
    let mut results = Vec::new();
    let mut failed = 0;
    for (path, bad) in &paths {
        pb.inc(1);
        let outcome = read_input(path, bad.as_deref()).and_then(|img| {
            let scale = leukoscope::classify::pipeline::crop_scale(&img, um_per_px, &detect);
            let prepared = prepare(&img, &spec, None, scale.um_per_px);
            let morphometry = leukoscope::vision::morphometry::measure(&img, &prepared);
            Ok((clf.predict(&prepared)?, scale, morphometry))
        });
        match outcome {
            Ok(pred) => results.push((path.clone(), Ok(pred))),
            Err(e) => {
                failed += 1;
                pb.suspend(|| log::error!("{e:#}"));
                results.push((path.clone(), Err(format!("{e:#}"))));
            }
        }
    }
    pb.finish_and_clear();
    let card = &clf.card;
    let rules = leukoscope::classify::count::CallRules::from_card(card);
    // A crop seldom shows enough red cells to measure its scale; with the
    // physical window a wrong scale changes the call, so say it once, loudly.
    let guessed = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok((_, s, _)) if s.source == leukoscope::vision::detect::ScaleSource::Fallback))
        .count();
    if guessed > 0 && card.input.preprocessing.is_physical() {
        log::warn!(
            "{guessed} of {} crops show too few red cells to measure their scale and were prepared at the \
             fallback {} um/px: calls on them are unreliable; give the scanner's scale with --um-per-px",
            paths.len(),
            detect.fallback_um_per_px
        );
    }
    if json {
        let items: Vec<serde_json::Value> = results
            .iter()
            .map(|(path, r)| match r {
                Ok((pred, scale, morphometry)) => {
                    let (i, conf) = pred.top();
                    let c = &card.classes[i];
                    let probs: serde_json::Map<String, serde_json::Value> = card
                        .classes
                        .iter()
                        .zip(&pred.probs)
                        .map(|(c, p)| (c.code.clone(), serde_json::json!(p)))
                        .collect();
                    let doubt = doubt_of(&rules.call(card, pred));
                    serde_json::json!({
                        "path": path, "class": c.code, "label": c.name, "confidence": conf,
                        "identified": doubt.is_none(),
                        "why_unidentified": doubt,
                        "stained": pred.stained,
                        "unfamiliar": card.is_unfamiliar(pred),
                        "energy": pred.energy,
                        "blast": card.blast_classes.contains(&c.code), "probs": probs,
                        "scale": scale,
                        "nucleus_area_um2": morphometry.map(|m| m.nucleus_area_um2),
                        "nucleus_diameter_um": morphometry.map(|m| m.nucleus_diameter_um),
                        "cell_area_um2": morphometry.and_then(|m| m.cell_area_um2),
                        "cell_diameter_um": morphometry.and_then(|m| m.cell_diameter_um),
                        "nc_ratio": morphometry.and_then(|m| m.nc_ratio),
                    })
                }
                Err(e) => serde_json::json!({"path": path, "error": e}),
            })
            .collect();
        let doc = serde_json::json!({
            "model": {"name": card.name, "file": card.file, "sha256": card.sha256},
            "results": items,
            "disclaimer": leukoscope::DISCLAIMER,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{:<50} {:<5} {:>6}  {:<5} label", "image", "class", "conf", "blast")?;
        for (path, r) in &results {
            match r {
                Ok((pred, _, _)) => {
                    let (i, conf) = pred.top();
                    let c = &card.classes[i];
                    let flag = if card.blast_classes.contains(&c.code) { "BLAST" } else { "" };
                    let low = doubt_of(&rules.call(card, pred))
                        .map_or(String::new(), |d| format!(" (unidentified: {})", d.reason()));
                    writeln!(out, "{:<50} {:<5} {:>6.3}  {:<5} {}{low}", path.display(), c.code, conf, flag, c.name)?;
                }
                Err(e) => writeln!(out, "{:<50} ERROR  {e}", path.display())?,
            }
        }
        writeln!(out, "\n{}", leukoscope::DISCLAIMER)?;
    }
    if failed > 0 {
        log::error!("{failed} of {} images failed", paths.len());
        return Ok(1);
    }
    Ok(0)
}

/// Why a call leaves the cell unidentified, if it does.
fn doubt_of(call: &leukoscope::classify::count::Call) -> Option<leukoscope::classify::count::Doubt> {
    match call {
        leukoscope::classify::count::Call::Unidentified { why, .. } => Some(*why),
        _ => None,
    }
}

fn preprocess(list: &Path, out: &Path, card: Option<PathBuf>) -> Result<i32> {
    let spec = match card {
        Some(c) => leukoscope::classify::model::ModelCard::load(&c)?.input.preprocessing,
        None => PreprocessSpec::default(),
    };
    let text = std::fs::read_to_string(list).with_context(|| format!("reading list {}", list.display()))?;
    let mut items: Vec<(PathBuf, Option<f32>)> = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let (path, scale) = match line.split_once('\t') {
            Some((p, s)) => match s.trim().parse::<f32>() {
                Ok(v) if v.is_finite() && v > 0.0 => (p, Some(v)),
                _ => bail!("{} line {}: scale '{s}' is not a positive number", list.display(), n + 1),
            },
            None => (line, None),
        };
        items.push((PathBuf::from(path.trim()), scale));
    }
    if items.is_empty() {
        bail!("{}: list is empty", list.display());
    }
    let detect = leukoscope::vision::detect::DetectParams::default();
    let s = spec.size as usize;
    let mut writer = leukoscope::report::npy::NpyWriter::create(out, &[items.len(), 3, s, s])?;
    let pb = progress(items.len(), "preprocessing");
    let mut meta = Vec::with_capacity(items.len());
    let mut failed = 0;
    for (path, given) in &items {
        pb.inc(1);
        match leukoscope::input::load_rgb(path) {
            Ok(img) => {
                let scale = leukoscope::classify::pipeline::crop_scale(&img, *given, &detect);
                let p = prepare(&img, &spec, None, scale.um_per_px);
                writer.write(&p.tensor)?;
                meta.push(serde_json::json!({
                    "path": path,
                    "nucleus": p.nucleus.map(|n| [n.bbox.x0, n.bbox.y0, n.bbox.x1, n.bbox.y1]),
                    "nucleus_area_um2": p.nucleus_um().map(|n| n.0),
                    "window": [p.window.0, p.window.1, p.window.2],
                    "scale": scale,
                }));
            }
            Err(e) => {
                failed += 1;
                let e = leukoscope::error_text(&e);
                pb.suspend(|| log::warn!("{e}"));
                writer.write(&vec![0f32; 3 * s * s])?;
                meta.push(serde_json::json!({"path": path, "error": e}));
            }
        }
    }
    writer.finish()?;
    pb.finish_and_clear();
    let sidecar = out.with_extension("json");
    std::fs::write(&sidecar, serde_json::to_string(&serde_json::json!({"preprocessing": spec, "items": meta}))?)
        .with_context(|| format!("writing {}", sidecar.display()))?;
    log::info!("wrote {} tensors to {} ({failed} failed)", items.len(), out.display());
    Ok(if failed > 0 { 1 } else { 0 })
}

fn analyze(
    model: Option<PathBuf>,
    precision: Option<Precision>,
    config: Option<PathBuf>,
    json: bool,
    out: Option<(PathBuf, bool)>,
    (sample_id, operator_id): (Option<String>, Option<String>),
    inputs: Vec<PathBuf>,
) -> Result<i32> {
    use leukoscope::classify::count::Differential;
    use leukoscope::report::FieldRecord;
    let config_path = config;
    let config = match &config_path {
        Some(p) => leukoscope::config::Config::load(p)?,
        None => leukoscope::config::Config::default(),
    };
    let inputs = if inputs.is_empty() { demo_inputs()? } else { inputs };
    let paths = batch_inputs(&inputs)?;
    let analyzer =
        leukoscope::classify::pipeline::Analyzer::from_config(&config, config_path.as_deref(), model, precision)?;
    let card = &analyzer.classifier.card;
    // Refused before any work if the folder is taken; written beside it and
    // renamed into place at the end.
    let inputs_out_dir = out.as_ref().map(|(d, _)| d.clone()).unwrap_or_default();
    let out = match &out {
        Some((dir, force)) => Some(leukoscope::report::OutFolder::begin(&leukoscope::storage::Os, dir, *force)?),
        None => None,
    };
    let mut diff = Differential::default();
    let mut images = Vec::new();
    let mut records = Vec::new();
    let mut rows = Vec::new();
    let mut failed = 0;
    let pb = progress(paths.len(), "analysing");
    for (n, (path, bad)) in paths.iter().enumerate() {
        pb.inc(1);
        let outcome = read_input(path, bad.as_deref()).and_then(|img| Ok((analyzer.analyze(&img)?, img)));
        match outcome {
            Ok((field, img)) => {
                let mut record = FieldRecord::new(card, &path.display().to_string(), &field);
                record.count_into(&mut diff);
                if let Some(dir) = &out {
                    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
                    record
                        .write_crops(&leukoscope::storage::Os, dir.path(), &format!("{n:04}_{stem}"), &img)
                        .with_context(|| format!("writing crops of {}", path.display()))?;
                }
                let classes: Vec<&str> = record.cells.iter().map(|c| c.class.as_str()).collect();
                let mut value = serde_json::to_value(&record)?;
                // Nothing seen at all: say whether the image could show anything.
                let blank = (record.cells.is_empty() && record.not_counted.is_empty())
                    .then(|| leukoscope::vision::detect::BlankField::of(&img))
                    .flatten();
                let note = match blank {
                    Some(b) => {
                        value["no_cells"] = serde_json::json!({"why": b, "reason": b.reason()});
                        log::warn!("{}: no cells: {}", path.display(), b.reason());
                        format!("(no cells: {})", b.reason())
                    }
                    None => classes.join(" "),
                };
                rows.push(format!("{:<50} {:>5}  {note}", path.display(), classes.len()));
                images.push(value);
                records.push(record);
            }
            Err(e) => {
                failed += 1;
                pb.suspend(|| log::error!("{e:#}"));
                rows.push(format!("{:<50} ERROR {e:#}", path.display()));
                images.push(serde_json::json!({"path": path, "error": format!("{e:#}")}));
            }
        }
    }
    pb.finish_and_clear();
    let summary = diff.summary(config.count.blast_threshold_percent);
    let scale = leukoscope::report::ScaleSummary::of(&records);
    let mut doc = leukoscope::report::analysis_json(card, images, &summary, &scale);
    if sample_id.is_some() || operator_id.is_some() {
        doc["sample"] = serde_json::json!({"id": sample_id, "operator_id": operator_id});
    }
    if let Some(folder) = out {
        folder.commit(&doc, &records)?;
        log::info!("report written to {}", inputs_out_dir.display());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let mut o = std::io::stdout().lock();
        writeln!(o, "{:<50} {:>5}  classes", "image", "cells")?;
        for r in &rows {
            writeln!(o, "{r}")?;
        }
        writeln!(o, "\n{}", leukoscope::report::summary_text(&summary))?;
        writeln!(o, "{}", scale.text())?;
        if let Some(w) = analyzer.classifier.card.unfamiliar_warning(summary.unfamiliar_percent) {
            writeln!(o, "WARNING: {w}")?;
        }
        writeln!(o, "{}", leukoscope::DISCLAIMER)?;
    }
    if failed > 0 {
        log::error!("{failed} of {} images failed", paths.len());
        return Ok(1);
    }
    Ok(0)
}

fn calibrate(
    config: Option<PathBuf>,
    objective: Option<String>,
    write: bool,
    micrometer: Option<(f32, f32)>,
    json: bool,
    inputs: &[PathBuf],
) -> Result<i32> {
    use leukoscope::vision::calibrate::Calibration;
    // The detector parameters (assumed red-cell size) come from the config.
    let cfg = match &config {
        Some(p) if p.exists() => leukoscope::config::Config::load(p)?,
        _ => leukoscope::config::Config::default(),
    };
    let mut failed = 0;
    let c = match micrometer {
        Some((px, um)) => Calibration::from_micrometer(px, um)?,
        None => {
            let paths = leukoscope::input::collect_images(inputs)?;
            let pb = progress(paths.len(), "measuring red cells");
            let mut estimates = Vec::with_capacity(paths.len());
            for p in &paths {
                pb.inc(1);
                match leukoscope::input::load_rgb(p) {
                    Ok(img) => {
                        let e = leukoscope::vision::detect::red_cell_scale(&img, &cfg.detect);
                        log::debug!("{}: {e:?}", p.display());
                        estimates.push(e);
                    }
                    Err(e) => {
                        failed += 1;
                        pb.suspend(|| log::error!("{}", leukoscope::error_text(&e)));
                    }
                }
            }
            pb.finish_and_clear();
            Calibration::from_fields(&estimates)?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        println!("scale: {:.4} um/px ({:.1} px/um)", c.um_per_px, 1.0 / c.um_per_px);
        if c.method == "red_cells" {
            println!(
                "median of {} fields with red-cell estimates (of {} read; {} red cells), IQR {:.4}-{:.4} ({:.1}% of the median), MAD {:.4}",
                c.fields_used,
                c.fields_total,
                c.cells,
                c.q1,
                c.q3,
                100.0 * c.relative_iqr(),
                c.mad
            );
            if c.fields_used < 10 {
                println!("few fields: name 20 or more for a steady figure");
            }
        } else {
            println!("from a stage micrometer");
        }
    }
    if write {
        let path = config.context("--write needs --config FILE")?;
        leukoscope::vision::calibrate::write_scale(&path, objective.as_deref(), c.um_per_px)?;
        let which = match leukoscope::config::Config::load(&path)?.scale.objective {
            Some(o) => format!("[scale.objectives] \"{o}\" (objective in use)"),
            None => "[scale] um_per_px".into(),
        };
        println!("written to {} as {which}", path.display());
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// The built-in demonstration input: the BCCD test fields of the data folder.
fn demo_inputs() -> Result<Vec<PathBuf>> {
    let root = leukoscope::input::data_dir().join("bccd");
    let list = root.join("ImageSets/Main/test.txt");
    let text = std::fs::read_to_string(&list).with_context(|| {
        format!(
            "no inputs given and the demonstration data is missing ({}); set LEUKOSCOPE_DATA or name images",
            list.display()
        )
    })?;
    log::info!("no inputs given: analysing the BCCD test fields in {}", root.display());
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|id| root.join("JPEGImages").join(format!("{id}.jpg")))
        .collect())
}

/// `WIDTHxHEIGHT`, both positive.
fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let parsed = s.split_once(['x', 'X']).and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(format!("{s:?} is not WIDTHxHEIGHT (e.g. 1280x960)")),
    }
}

/// `bench --fields`: the whole field averaged over many fields.
fn bench_fields(model: Option<PathBuf>, seconds: f64, json: bool, inputs: &[PathBuf], size: (u32, u32)) -> Result<i32> {
    use cli::bench::{many_fields_figures, resized};
    let card = model.unwrap_or_else(leukoscope::classify::model::default_card_path);
    let classifier = Classifier::load(&card).with_context(|| format!("loading {}", card.display()))?;
    let name = classifier.variant.to_string();
    let paths = if inputs.is_empty() { demo_inputs()? } else { leukoscope::input::collect_images(inputs)? };
    let bar = progress(paths.len(), "loading fields");
    let mut fields = Vec::with_capacity(paths.len());
    for p in &paths {
        let img = leukoscope::input::load_rgb(p)?;
        fields.push(if img.dimensions() == size { img } else { resized(&img, size.0, size.1) });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let analyzer = bench_analyzer(classifier);
    let budget = std::time::Duration::from_secs_f64(seconds.max(0.1));
    let figs = many_fields_figures(&fields, &name, &analyzer, budget);
    print_figures(&figs, json)?;
    Ok(0)
}

/// The analyzer `bench` times: default detection, scale estimated per field.
fn bench_analyzer(classifier: Classifier) -> leukoscope::classify::pipeline::Analyzer {
    leukoscope::classify::pipeline::Analyzer {
        rules: leukoscope::classify::count::CallRules::from_card(&classifier.card),
        classifier,
        detect: Default::default(),
        um_per_px: None,
    }
}

fn print_figures(figs: &[cli::bench::Figure], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(figs)?);
    } else {
        println!("{:<66} {:>10} {:>7}", "figure", "median ms", "runs");
        for f in figs {
            println!("{:<66} {:>10.3} {:>7}", f.what, f.median_ms, f.runs);
        }
    }
    Ok(())
}

fn bench(
    model: Option<PathBuf>,
    seconds: f64,
    json: bool,
    crop: Option<PathBuf>,
    field: Option<PathBuf>,
) -> Result<i32> {
    use cli::bench::{crop_figures, field_figures, resized, Figure};
    use std::time::{Duration, Instant};
    let card = model.unwrap_or_else(leukoscope::classify::model::default_card_path);
    let t0 = Instant::now();
    let int8 =
        Classifier::load_precision(&card, Precision::Int8).with_context(|| format!("loading {}", card.display()))?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let data = leukoscope::input::data_dir();
    let crop_path = crop.unwrap_or_else(|| data.join("lmu/MYO/MYO_0001.jpg"));
    let crop = leukoscope::input::load_rgb(&crop_path)?;
    let crop_um =
        leukoscope::classify::pipeline::crop_scale(&crop, None, &leukoscope::vision::detect::DetectParams::default())
            .um_per_px;
    let first = int8.predict(&prepare(&crop, &int8.card.input.preprocessing, None, crop_um))?;
    let startup_ms = t0.elapsed().as_secs_f64() * 1e3;
    let f32_ref = Classifier::load_precision(&card, Precision::F32).ok();
    let budget = Duration::from_secs_f64(seconds.max(0.1));
    let mut models: Vec<(&str, &Classifier)> = vec![("int8", &int8)];
    if let Some(f) = &f32_ref {
        models.push(("f32", f));
    }
    let mut figs = vec![
        Figure { what: "load model card + model (hash, optimise)".into(), median_ms: load_ms, runs: 1 },
        Figure {
            what: format!("start-up to first result (load + one crop, top p {:.2})", first.top().1),
            median_ms: startup_ms,
            runs: 1,
        },
    ];
    figs.extend(crop_figures(&crop, crop_um, &models, budget));
    let field =
        leukoscope::input::load_rgb(&field.unwrap_or_else(|| data.join("bccd/JPEGImages/BloodImage_00001.jpg")))?;
    let mut analyzers = vec![("int8", bench_analyzer(int8))];
    if let Some(f) = f32_ref {
        analyzers.push(("f32", bench_analyzer(f)));
    }
    let analyzers: Vec<(&str, &leukoscope::classify::pipeline::Analyzer)> =
        analyzers.iter().map(|(n, a)| (*n, a)).collect();
    for (w, h) in [(640, 480), (1280, 960), (1920, 1080)] {
        let f = if (w, h) == (field.width(), field.height()) { field.clone() } else { resized(&field, w, h) };
        figs.extend(field_figures(&f, &analyzers, budget));
    }
    print_figures(&figs, json)?;
    if !json {
        // Which file the card runs here, next to what was just measured: the
        // figures a board's `precision_by_arch` entry (or [model] precision) needs.
        let per_crop = |v: &str| figs.iter().find(|f| f.what.starts_with(&format!("inference per crop, {v}")));
        if let (Some(i), Some(f), Some((_, a))) = (per_crop("int8"), per_crop("f32"), analyzers.first()) {
            println!(
                "\n{} here: the card runs {} (precision_by_arch); int8 {:.2} ms vs f32 {:.2} ms per crop: {} is faster",
                std::env::consts::ARCH,
                Precision::Auto.resolve(&a.classifier.card),
                i.median_ms,
                f.median_ms,
                if i.median_ms <= f.median_ms { "int8" } else { "f32" }
            );
        }
    }
    Ok(0)
}

/// `session repair`: the state folder `run` would use, under its lock.
fn session_repair(config: Option<PathBuf>, state: Option<PathBuf>) -> Result<i32> {
    let mut cfg = load_config(config.as_deref())?;
    if let Some(dir) = state {
        cfg.session.state_dir = Some(dir);
    }
    let root = cfg.session.state_dir();
    let _lock = leukoscope::appliance::session::lock_state(&root)?;
    let repairs = leukoscope::appliance::session::Store::open(&root)?.repair()?;
    if repairs.is_empty() {
        println!("{}: every session journal reads whole: nothing to repair", root.display());
    }
    for r in &repairs {
        keep_owner(r);
        let lines: Vec<String> = r.set_aside.iter().map(usize::to_string).collect();
        println!(
            "{}: line(s) {} set aside in {}{}; {}",
            r.dir.join(leukoscope::appliance::session::JOURNAL).display(),
            lines.join(", "),
            r.aside_file.display(),
            if r.torn { " (the last one torn)" } else { "" },
            if r.kept == 0 {
                "its start record was damaged: the folder is no longer a session".to_string()
            } else {
                format!("{} records kept; `run` resumes it", r.kept)
            }
        );
    }
    Ok(0)
}

/// Files `session repair` wrote (as root, say) get the session folder's owner,
/// else the service's user could no longer append to its journal.
fn keep_owner(r: &leukoscope::appliance::session::Repair) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(owner) = std::fs::metadata(&r.dir) else { return };
        for f in [r.dir.join(leukoscope::appliance::session::JOURNAL), r.aside_file.clone()] {
            let differs = std::fs::metadata(&f).is_ok_and(|m| (m.uid(), m.gid()) != (owner.uid(), owner.gid()));
            if differs {
                if let Err(e) = std::os::unix::fs::chown(&f, Some(owner.uid()), Some(owner.gid())) {
                    log::warn!(
                        "{}: could not give it the folder's owner ({e}): `run` may not be able to use it",
                        f.display()
                    );
                }
            }
        }
    }
}

struct RunArgs {
    config: Option<PathBuf>,
    model: Option<PathBuf>,
    precision: Option<Precision>,
    replay: Vec<PathBuf>,
    replay_fps: Option<f32>,
    script: Option<PathBuf>,
    state: Option<PathBuf>,
    screen_png: Option<PathBuf>,
    until_finished: bool,
}

fn run_appliance(a: RunArgs) -> Result<i32> {
    use leukoscope::appliance::{run_loop, Appliance, LoopOptions};
    use leukoscope::hw::source::{FrameSource, ReplaySource, SourceKind, StageSimulator};
    let mut config = match &a.config {
        Some(p) => leukoscope::config::Config::load(p)?,
        None => leukoscope::config::Config::default(),
    };
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
    let analyzer =
        leukoscope::classify::pipeline::Analyzer::from_config(&config, a.config.as_deref(), a.model, a.precision)?;
    // The display first, so that every later failure can be shown on it.
    let mut screen = leukoscope::hw::display::open(&config.display).context("opening the display")?;
    let use_camera = match config.source.kind {
        SourceKind::Camera => true,
        SourceKind::Replay => false,
        SourceKind::Auto => config.camera.device.exists(),
    };
    let mut source: Box<dyn FrameSource> = if use_camera {
        log::info!("camera {}", config.camera.device.display());
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
    log::info!("frames from {}", source.describe());
    let mut buttons: Box<dyn leukoscope::hw::buttons::ButtonSource> = match &a.script {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading script {}", p.display()))?;
            Box::new(leukoscope::hw::buttons::ScriptedButtons::parse(&text)?)
        }
        None => leukoscope::hw::gpio::open_buttons(&config.buttons)?,
    };
    let mut signal = leukoscope::hw::gpio::open_signal(&config.buttons)?;
    let mut app =
        Appliance::new(analyzer, config.session.clone(), config.gate.clone(), config.count.blast_threshold_percent)?
            .calibrate_over(config.scale.calibrate_fields);
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
        log::info!("session {} left open ({} cells): `run` resumes it", s.sample_id, s.diff.cells());
    }
    Ok(0)
}

fn review(
    config_path: Option<PathBuf>,
    model: Option<PathBuf>,
    state: Option<PathBuf>,
    (listen, port): (Option<String>, Option<u16>),
    print_token: bool,
    dirs: Vec<PathBuf>,
) -> Result<i32> {
    use leukoscope::review::server::{self as review_server, Review, ReviewConfig};
    use leukoscope::review::ReportDir;
    let config = load_config(config_path.as_deref())?;
    let state = state.unwrap_or_else(|| config.session.state_dir());
    let token = review_server::token(&state)?;
    if print_token {
        println!("{token}");
        return Ok(0);
    }
    let card_path = model.or(config.model.card.clone()).unwrap_or_else(leukoscope::classify::model::default_card_path);
    let card = leukoscope::classify::model::ModelCard::load(&card_path)
        .with_context(|| format!("loading model card {}", card_path.display()))?;
    let mut rules = leukoscope::classify::count::CallRules::from_card(&card);
    if let Some(b) = &config.count.blast_classes {
        rules.blast_classes = b.clone();
    }
    let dirs = if dirs.is_empty() {
        let sessions = state.join("sessions");
        let mut d: Vec<PathBuf> = std::fs::read_dir(&sessions)
            .with_context(|| format!("no report folders named and no sessions in {}", sessions.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("results.json").is_file())
            .collect();
        d.sort();
        d
    } else {
        dirs
    };
    if dirs.is_empty() {
        bail!("no finished session in {}: name report folders", state.display());
    }
    let reports = dirs
        .iter()
        .map(|d| ReportDir::open(d).with_context(|| format!("opening report folder {}", d.display())))
        .collect::<Result<Vec<_>>>()?;
    let listen = listen.unwrap_or(config.review.listen.clone());
    ReviewConfig { listen: listen.clone() }.validate().map_err(|(k, v, why)| anyhow::anyhow!("{k} {v}: {why}"))?;
    let listen = match (port, listen.parse::<std::net::SocketAddr>()) {
        (Some(p), Ok(mut a)) => {
            a.set_port(p);
            a.to_string()
        }
        _ => listen,
    };
    let (server, addr) = review_server::listen(&listen)?;
    if !addr.ip().is_loopback() {
        log::warn!("the review page is open to the network on {addr}: every request needs the token");
    }
    println!(
        "leukoscope review: {} report folders at http://{addr}/ ; open it once with ?token= and the token of \
         `leukoscope review --print-token`",
        reports.len()
    );
    std::io::stdout().flush()?;
    Review::new(reports, token, &card, rules).serve(&server)?;
    Ok(0)
}
