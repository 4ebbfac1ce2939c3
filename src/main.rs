//! `leukoscope`: command-line front end. Parsing, logging, dispatch and exit
//! codes here; each subcommand (its arguments, progress and printing) in its
//! module of `cli/`; everything else is in the library.

mod cli;

use clap::{Parser, Subcommand};
use std::io::Write;

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

/// The subcommands; each one's help is its arguments' doc comment.
#[derive(Subcommand)]
enum Command {
    Analyze(cli::analyze::Args),
    Classify(cli::classify::Args),
    Bench(cli::bench::Args),
    Run(cli::run::Args),
    Calibrate(cli::calibrate::Args),
    Review(cli::review::Args),
    CameraCheck(cli::camera_check::Args),
    Session(cli::session::Args),
    Config(cli::config::Args),
    Preprocess(cli::preprocess::Args),
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

/// The subcommand's exit status: 0, or 1 when some inputs of a batch failed.
fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Analyze(a) => cli::analyze::run(a),
        Command::Classify(a) => cli::classify::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Run(a) => cli::run::run(a),
        Command::Calibrate(a) => cli::calibrate::run(a),
        Command::Review(a) => cli::review::run(a),
        Command::CameraCheck(a) => cli::camera_check::run(a),
        Command::Session(a) => cli::session::run(a),
        Command::Config(a) => cli::config::run(a),
        Command::Preprocess(a) => cli::preprocess::run(a),
    }
}
