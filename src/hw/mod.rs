//! The appliance's devices, each behind a small trait so that the rest runs
//! without them: frames ([`source`]: the [`source::FrameSource`] trait, file
//! replay; [`camera`]: V4L2), the operator's buttons ([`buttons`]: the trait;
//! [`gpio`] and [`keyboard`]: the adapters), the barcode scanner for sample
//! and operator IDs ([`scanner`]) and the screen ([`display`]).
//! [`camera_check`] is `leukoscope camera-check`.

pub mod buttons;
pub mod camera;
pub mod camera_check;
pub mod display;
pub mod gpio;
pub mod keyboard;
pub mod scanner;
pub mod source;
