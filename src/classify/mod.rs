//! Naming cells and counting them: the model card and the tract classifier
//! ([`model`]), one field from pixels to calls ([`pipeline`]), the differential
//! with its blast percentage ([`count`]) and the exact intervals it reports
//! ([`stats`]).

pub mod count;
pub mod model;
pub mod pipeline;
pub mod stats;
