//! The subcommands of the `leukoscope` binary, one module each.

pub mod bench;
