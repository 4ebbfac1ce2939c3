//! leukoscope: finds leukocytes in blood-smear images, classifies them with an
//! int8 ONNX model run by tract and keeps a differential count with the blast
//! percentage. A screening aid: a person verifies every result.
//!
//! Data flows one way:
//! `image` -> [`detect`] (cells in a field) -> [`preprocess`] (crop -> tensor)
//! -> [`model`] (classes) -> [`count`] (differential, statistics) -> [`report`].

pub mod color;
pub mod input;
pub mod mask;
pub mod model;
pub mod morphometry;
pub mod npy;
pub mod preprocess;

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
pub mod appliance;
pub mod bccd;
pub mod bench;
pub mod buttons;
pub mod calibrate;
pub mod camera;
pub mod camera_check;
pub mod config;
pub mod count;
pub mod detect;
pub mod display;
pub mod fhir;
pub mod gating;
pub mod gpio;
pub mod keyboard;
pub mod pipeline;
pub mod report;
pub mod report_files;
pub mod report_html;
pub mod review;
pub mod review_server;
pub mod session;
pub mod source;
pub mod stats;
pub mod storage;
pub mod systemd;
