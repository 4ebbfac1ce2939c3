//! leukoscope: finds leukocytes in blood-smear images, classifies them with an
//! int8 ONNX model run by tract and keeps a differential count with the blast
//! percentage. A screening aid: a person verifies every result.
//!
//! # Layout
//!
//! Data flows one way, and the modules are named for its steps:
//!
//! `image` -> [`vision`] (colour balance, nuclei, leukocytes and scale in a field,
//! each cell cut out as the model's input) -> [`classify`] (the model, one field
//! from pixels to calls, the differential and its statistics) -> [`report`]
//! (results.json, cells.csv, crops, report.html, FHIR) -> [`review`] (a person
//! verifies and signs).
//!
//! Around it: [`appliance`] (the counting loop at the microscope and its
//! journaled session), [`hw`] (camera, buttons, screen: traits and their Linux
//! adapters), [`config`] (the TOML file), [`input`] (finding and decoding image
//! files) and [`storage`] (the one seam through which anything reaches the disk).
//! The `leukoscope` binary (`src/main.rs`, `src/cli/`) only parses and prints.

pub mod appliance;
pub mod classify;
pub mod config;
pub mod hw;
pub mod input;
pub mod report;
pub mod review;
pub mod storage;
pub mod vision;

/// An error and its causes, "what failed: why: why". Errors here say what
/// failed and leave the why to their source chain (never both, so nothing is
/// said twice): show them with this, or anyhow's `{:#}`.
pub fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Printed with every result: the product is a screening aid.
pub const DISCLAIMER: &str =
    "SCREENING AID ONLY - not a diagnosis. Every cell call, and blast calls above all, must be verified by a qualified person.";
