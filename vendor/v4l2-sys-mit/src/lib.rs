//! Raw V4L2 bindings: v4l2-sys-mit 0.3.0, vendored by leukoscope with bindings
//! generated ahead of time (upstream's build.rs runs bindgen, which needs libclang,
//! on `wrapper.h`, i.e. `<linux/videodev2.h>`). One file per target architecture,
//! produced by that same build.rs: `tools/gen-v4l2-bindings.sh` regenerates them.
//! See README.md.

#![allow(clippy::all)]
#![allow(deref_nullptr)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(non_upper_case_globals)]

// x86_64-unknown-linux-gnu (the development machines, CI).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
include!("bindings/x86_64.rs");

// aarch64-unknown-linux-gnu (Raspberry Pi 4/5 with a 64-bit OS, Jetson Orin).
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
include!("bindings/aarch64.rs");

// armv7-unknown-linux-gnueabihf (32-bit Raspberry Pi OS). glibc only: 32-bit musl
// has a 64-bit time_t, so struct timeval, v4l2_buffer and the VIDIOC_*BUF ioctl
// numbers differ from these bindings.
#[cfg(all(target_os = "linux", target_arch = "arm", target_env = "gnu"))]
include!("bindings/arm.rs");

#[cfg(not(any(
    all(target_os = "linux", target_arch = "x86_64"),
    all(target_os = "linux", target_arch = "aarch64"),
    all(target_os = "linux", target_arch = "arm", target_env = "gnu"),
)))]
compile_error!(
    "v4l2-sys-mit (vendored by leukoscope, vendor/v4l2-sys-mit) has pregenerated V4L2 \
     bindings for Linux on x86_64, aarch64 and 32-bit ARM with glibc only. For another \
     target, add it to tools/gen-v4l2-bindings.sh, run that script (it needs libclang and \
     the target's kernel headers) and select the new file in vendor/v4l2-sys-mit/src/lib.rs."
);
