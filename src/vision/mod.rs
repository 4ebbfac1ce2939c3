//! Seeing cells: everything that works on pixels. A field's light is evened
//! out ([`illumination`]), its colours balanced ([`color`]), nuclei thresholded and grouped ([`mask`]), leukocytes
//! found and the field's scale estimated ([`detect`]), each cell cut out and made
//! into the model's input ([`preprocess`]) and measured ([`morphometry`]). For the
//! camera: which frames are worth analysing ([`gating`]) and its scale over many
//! fields ([`calibrate`]).

pub mod calibrate;
pub mod color;
pub mod components;
pub mod detect;
pub mod gating;
pub mod illumination;
pub mod imageops;
pub mod mask;
pub mod morphometry;
pub mod preprocess;
