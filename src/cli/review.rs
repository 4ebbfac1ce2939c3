//! `leukoscope review`: the local review page over report folders.

use super::load_config;
use anyhow::{bail, Context, Result};
use leukoscope::review::server::{self as review_server, Review, ReviewConfig};
use leukoscope::review::ReportDir;
use std::io::Write;
use std::path::PathBuf;

/// Review reports in a browser: a local web page with each report's cells
/// (blasts first, then unidentified, then the other classes) to reclassify,
/// mark as not leukocytes and sign off. Every change is appended to the
/// report folder's review.jsonl; sign-off makes report.html and
/// report.fhir.json final.
///
/// Listens on 127.0.0.1:8080 unless [review] listen (or --listen) says
/// otherwise. Every request needs the token that --print-token prints:
/// open http://ADDRESS/?token=TOKEN once.
#[derive(clap::Args)]
pub struct Args {
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
}

pub fn run(a: Args) -> Result<i32> {
    let config = load_config(a.config.as_deref())?;
    let state = a.state.unwrap_or_else(|| config.session.state_dir());
    let token = review_server::token(&state)?;
    if a.print_token {
        println!("{token}");
        return Ok(0);
    }
    let card_path =
        a.model.or(config.model.card.clone()).unwrap_or_else(leukoscope::classify::model::default_card_path);
    let card = leukoscope::classify::model::ModelCard::load(&card_path)
        .with_context(|| format!("loading model card {}", card_path.display()))?;
    let mut rules = leukoscope::classify::count::CallRules::from_card(&card);
    if let Some(b) = &config.count.blast_classes {
        rules.blast_classes = b.clone();
    }
    let dirs = if a.dirs.is_empty() {
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
        a.dirs
    };
    if dirs.is_empty() {
        bail!("no finished session in {}: name report folders", state.display());
    }
    let reports = dirs
        .iter()
        .map(|d| ReportDir::open(d).with_context(|| format!("opening report folder {}", d.display())))
        .collect::<Result<Vec<_>>>()?;
    let listen = a.listen.unwrap_or(config.review.listen.clone());
    ReviewConfig { listen: listen.clone(), ..Default::default() }.validate()?;
    let listen = match (a.port, listen.parse::<std::net::SocketAddr>()) {
        (Some(p), Ok(mut a)) => {
            a.set_port(p);
            a.to_string()
        }
        _ => listen,
    };
    let (server, addr) = review_server::listen(&listen)?;
    if !addr.ip().is_loopback() {
        warn!("the review page is open to the network on {addr}: every request needs the token");
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
