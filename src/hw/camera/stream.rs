//! The V4L2 device: opening and format negotiation, the mmap stream, and
//! [`V4l2Source`], the camera as a [`FrameSource`] with its reopen logic.
//! Linux-only.

use super::{fourcc_str, CameraConfig, CameraError, DeviceInfo, Wire};
use crate::hw::source::{Frame, FrameSource, SourceError};
use image::RgbImage;
use log::{debug, info, warn};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use v4l::buffer::{Flags as BufFlags, Type};
use v4l::capability::{Capabilities, Flags as CapFlags};
use v4l::device::Handle;
use v4l::format::Description;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, Format, FourCC};

/// `POLLIN` from poll.h (same value on every Linux architecture); avoids a libc dependency.
const POLLIN: i16 = 0x0001;

/// An open, configured device with its mmap stream.
struct Open {
    // Declaration order is drop order: the stream (buffers, STREAMOFF) must go
    // before the device handle is closed.
    stream: Stream<'static>,
    handle: Arc<Handle>,
    _device: Device,
    info: DeviceInfo,
    buffers: u32,
    /// A dequeue timed out inside `Stream::next`, which had already re-queued
    /// the buffer it held: calling `next` again would queue that buffer twice
    /// (EINVAL). One plain dequeue first restores the invariant.
    resync: bool,
}

enum Fail {
    Timeout,
    Bad(String),
    Device(io::Error),
}

/// A V4L2 camera as a [`FrameSource`]. See the module documentation.
pub struct V4l2Source {
    config: CameraConfig,
    origin: String,
    open: Option<Open>,
    /// Last known device description, kept while disconnected for `describe`.
    info: Option<DeviceInfo>,
    last_attempt: Option<Instant>,
    last_error: String,
    seq: u64,
}

impl V4l2Source {
    /// Opens and configures the camera now; fails if it cannot (wrong path,
    /// no permission, unsupported format), naming the device.
    pub fn open(config: &CameraConfig) -> Result<V4l2Source, CameraError> {
        let mut source = V4l2Source::new(config);
        source.last_attempt = Some(Instant::now());
        let open = open_device(config)?;
        source.info = Some(open.info.clone());
        source.open = Some(open);
        Ok(source)
    }

    /// A source that opens the camera on the first `next_frame` (returning
    /// `Disconnected` until it is there): for an appliance that boots before
    /// the camera is plugged in.
    pub fn new(config: &CameraConfig) -> V4l2Source {
        V4l2Source {
            config: config.clone(),
            origin: config.device.display().to_string(),
            open: None,
            info: None,
            last_attempt: None,
            last_error: "not opened yet".into(),
            seq: 0,
        }
    }

    /// Driver, card, listed formats and the granted format of the last open.
    pub fn info(&self) -> Option<&DeviceInfo> {
        self.info.as_ref()
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    fn disconnected(&self) -> SourceError {
        SourceError::Disconnected { device: self.origin.clone(), reason: self.last_error.clone() }
    }

    fn drop_device(&mut self, reason: String) {
        warn!("camera {}: {reason}; closing it, will try to reopen", self.origin);
        self.last_error = reason;
        self.last_attempt = Some(Instant::now());
        if let Some(open) = self.open.take() {
            close(open, &self.origin);
        }
    }

    /// Reopens the device if the reopen interval allows, sleeping (never past
    /// `deadline`) until it does.
    fn try_reopen(&mut self, deadline: Instant) -> Result<(), SourceError> {
        if let Some(last) = self.last_attempt {
            let next = last + self.config.reopen_interval();
            let now = Instant::now();
            if now < next {
                // Sleep instead of returning at once so a caller looping on
                // `next_frame` does not spin while the camera is away.
                std::thread::sleep(next.min(deadline).saturating_duration_since(now));
                if Instant::now() < next {
                    return Err(self.disconnected());
                }
            }
        }
        self.last_attempt = Some(Instant::now());
        match open_device(&self.config) {
            Ok(open) => {
                info!("camera {} (re)opened: {}", self.origin, describe_info(&open.info));
                self.info = Some(open.info.clone());
                self.open = Some(open);
                Ok(())
            }
            Err(e) => {
                debug!("camera {}: reopen failed: {}", self.origin, crate::error_text(&e));
                self.last_error = crate::error_text(&e);
                Err(self.disconnected())
            }
        }
    }

    /// Testing aid (used with the vivid driver): sets the control called `name`
    /// (case-insensitive) through a second file handle, as `v4l2-ctl` would.
    /// Button controls are pressed (value ignored). For example vivid's
    /// "Disconnect" makes the device act unplugged, "Percentage of Dropped
    /// Buffers" = 100 stops frames.
    pub fn set_control_by_name(&self, name: &str, value: i64) -> Result<(), CameraError> {
        use v4l::control::{Control, Type as CtrlType, Value};
        let io = |what, source| CameraError::Io { device: self.origin.clone(), what, source };
        let dev = Device::with_path(&self.config.device).map_err(|e| io("open for a control", e))?;
        let controls = dev.query_controls().map_err(|e| io("VIDIOC_QUERYCTRL", e))?;
        let Some(ctrl) = controls.iter().find(|c| c.name.eq_ignore_ascii_case(name)) else {
            let names: Vec<&str> = controls.iter().map(|c| c.name.as_str()).collect();
            let msg = format!("no control {name:?}; the driver has: {}", names.join(", "));
            return Err(io("find control", io::Error::new(io::ErrorKind::NotFound, msg)));
        };
        let value = match ctrl.typ {
            CtrlType::Button => Value::None,
            CtrlType::Boolean => Value::Boolean(value != 0),
            _ => Value::Integer(value),
        };
        dev.set_control(Control { id: ctrl.id, value }).map_err(|e| io("VIDIOC_S_CTRL", e))
    }
}

impl Drop for V4l2Source {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            close(open, &self.origin);
        }
    }
}

/// Drops stream and device. v4l 0.14 panics in `Drop` when STREAMOFF or
/// REQBUFS fail with anything but ENODEV; a camera glitch must not take the
/// appliance down, so contain it.
fn close(open: Open, origin: &str) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(open)));
    if result.is_err() {
        warn!("camera {origin}: releasing the stream failed (ignored)");
    }
}

pub(super) fn describe_info(info: &DeviceInfo) -> String {
    format!("{}x{} {} ({}, {})", info.width, info.height, info.wire.name(), info.driver, info.card)
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        let timeout = self.config.timeout();
        let deadline = Instant::now() + timeout;
        if self.open.is_none() {
            self.try_reopen(deadline)?;
        }
        let Some(open) = self.open.as_mut() else {
            return Err(self.disconnected());
        };
        match capture(open, deadline) {
            Ok(image) => {
                let frame = Frame { image, seq: self.seq, origin: self.origin.clone() };
                self.seq += 1;
                Ok(frame)
            }
            Err(Fail::Timeout) => Err(SourceError::Timeout(timeout)),
            Err(Fail::Bad(reason)) => Err(SourceError::BadFrame { origin: self.origin.clone(), reason }),
            Err(Fail::Device(e)) => {
                self.drop_device(format!("capture failed: {e}"));
                Err(self.disconnected())
            }
        }
    }

    fn describe(&self) -> String {
        match (&self.info, self.open.is_some()) {
            (Some(info), true) => format!("{} {}", self.origin, describe_info(info)),
            (Some(info), false) => format!("{} {} (disconnected)", self.origin, describe_info(info)),
            (None, _) => format!("{} (not open)", self.origin),
        }
    }
}

fn remaining(deadline: Instant) -> Duration {
    // At least 1 ms: the stream's timeout is whole milliseconds and 0 would
    // make poll return at once.
    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
}

/// One frame: the newest ready one, converted.
fn capture(open: &mut Open, deadline: Instant) -> Result<RgbImage, Fail> {
    let classify = |e: io::Error| if e.kind() == io::ErrorKind::TimedOut { Fail::Timeout } else { Fail::Device(e) };
    if open.resync {
        open.stream.set_timeout(remaining(deadline));
        CaptureStream::dequeue(&mut open.stream).map_err(classify)?;
        open.resync = false;
    }
    let mut drained = 0;
    loop {
        open.stream.set_timeout(remaining(deadline));
        let (buf, meta) = match CaptureStream::next(&mut open.stream) {
            Ok(x) => x,
            Err(e) => {
                let fail = classify(e);
                if matches!(fail, Fail::Timeout) {
                    open.resync = true;
                }
                return Err(fail);
            }
        };
        // Drop stale frames: if a newer one is already done, take that instead.
        // (Bounded, so a camera faster than the conversion cannot keep us here.)
        if drained < open.buffers && matches!(open.handle.poll(POLLIN, 0), Ok(n) if n > 0) {
            drained += 1;
            continue;
        }
        if meta.flags.contains(BufFlags::ERROR) {
            return Err(Fail::Bad("driver marked the buffer as corrupt".into()));
        }
        let used = match meta.bytesused as usize {
            0 => buf.len(),
            n => n.min(buf.len()),
        };
        let info = &open.info;
        return info
            .wire
            .convert(&buf[..used], info.width, info.height, info.stride as usize)
            .map_err(|e| Fail::Bad(e.to_string()));
    }
}

/// Opens the device, negotiates the format and sets up mmap streaming.
fn open_device(config: &CameraConfig) -> Result<Open, CameraError> {
    let device = config.device.display().to_string();
    let (dev, caps) = open_capture_device(config, &device)?;
    let listed = list_formats(&dev, &device);
    let (wire, fmt) = negotiate_format(&dev, config, &device, &listed)?;
    let info = device_info(caps, &listed, wire, &fmt);
    start_streaming(dev, info, config, &device)
}

/// `CameraError::Io` for `what` on `device`.
fn io_error<'a>(device: &'a str, what: &'static str) -> impl FnOnce(io::Error) -> CameraError + 'a {
    move |source| CameraError::Io { device: device.to_string(), what, source }
}

/// Opens the device node and checks that it is a streaming video capture device.
fn open_capture_device(config: &CameraConfig, device: &str) -> Result<(Device, Capabilities), CameraError> {
    let dev =
        Device::with_path(&config.device).map_err(|source| CameraError::Open { device: device.to_string(), source })?;
    let caps = dev.query_caps().map_err(io_error(device, "VIDIOC_QUERYCAP"))?;
    if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE | CapFlags::STREAMING) {
        return Err(CameraError::NotCapture { device: device.to_string(), card: caps.card });
    }
    Ok((dev, caps))
}

/// The formats the driver lists; none (with a warning) when it cannot list them.
fn list_formats(dev: &Device, device: &str) -> Vec<Description> {
    match dev.enum_formats() {
        Ok(list) => list,
        Err(e) => {
            warn!("camera {device}: cannot list formats ({e}); trying anyway");
            Vec::new()
        }
    }
}

/// Asks for the configured format first, then the others this adapter decodes,
/// and takes the first the driver grants; logs where the result differs from
/// what was asked.
fn negotiate_format(
    dev: &Device,
    config: &CameraConfig,
    device: &str,
    listed: &[Description],
) -> Result<(Wire, Format), CameraError> {
    let listed_fourccs: Vec<[u8; 4]> = listed.iter().map(|d| d.fourcc.repr).collect();
    let preferred = Wire::from_fourcc(&config.format.fourcc()).unwrap_or(Wire::Yuyv);
    let (wire, fmt) = first_granted(dev, config, device, formats_to_try(preferred, &listed_fourccs), listed)?;
    if wire != preferred {
        let why = if listed_fourccs.contains(&preferred.fourcc()) { "not granted" } else { "not offered" };
        info!("camera {device}: preferred {} {why} by the driver, using {}", preferred.name(), wire.name());
    }
    if (fmt.width, fmt.height) != (config.width, config.height) {
        info!(
            "camera {device}: asked for {}x{}, driver granted {}x{}",
            config.width, config.height, fmt.width, fmt.height
        );
    }
    Ok((wire, fmt))
}

/// Preference first, then the other supported formats; skip those the driver
/// does not list (when it lists any).
fn formats_to_try(preferred: Wire, listed_fourccs: &[[u8; 4]]) -> Vec<Wire> {
    let mut candidates = vec![preferred];
    candidates.extend([Wire::Mjpg, Wire::Yuyv, Wire::Rgb3].into_iter().filter(|w| *w != preferred));
    let listed_ok: Vec<Wire> = candidates.iter().copied().filter(|w| listed_fourccs.contains(&w.fourcc())).collect();
    if listed_ok.is_empty() {
        candidates
    } else {
        listed_ok
    }
}

/// Sets each format of `to_try` in turn until the driver grants one this adapter
/// decodes; otherwise the error names what the driver granted (or refused).
fn first_granted(
    dev: &Device,
    config: &CameraConfig,
    device: &str,
    to_try: Vec<Wire>,
    listed: &[Description],
) -> Result<(Wire, Format), CameraError> {
    let mut last_err = None;
    for wire in to_try {
        match dev.set_format(&Format::new(config.width, config.height, FourCC::new(&wire.fourcc()))) {
            Ok(fmt) => {
                if let Some(w) = Wire::from_fourcc(&fmt.fourcc.repr) {
                    return Ok((w, fmt));
                }
                debug!("camera {device}: asked {} got {}", wire.name(), fourcc_str(&fmt.fourcc.repr));
                last_err = Some(Err(fmt));
            }
            // Some drivers refuse a format with EINVAL instead of substituting one.
            Err(e) => last_err = Some(Ok(e)),
        }
    }
    match last_err {
        Some(Err(fmt)) => Err(CameraError::UnsupportedFormat {
            device: device.to_string(),
            granted: fourcc_str(&fmt.fourcc.repr),
            width: fmt.width,
            height: fmt.height,
            listed: if listed.is_empty() {
                "nothing".into()
            } else {
                listed.iter().map(|d| fourcc_str(&d.fourcc.repr)).collect::<Vec<_>>().join(" ")
            },
        }),
        Some(Ok(e)) => Err(io_error(device, "VIDIOC_S_FMT")(e)),
        None => Err(io_error(device, "VIDIOC_S_FMT")(io::Error::other("no format to try"))),
    }
}

/// What the device is and what it granted.
fn device_info(caps: Capabilities, listed: &[Description], wire: Wire, fmt: &Format) -> DeviceInfo {
    let min_stride = match wire {
        Wire::Yuyv => fmt.width * 2,
        Wire::Rgb3 => fmt.width * 3,
        Wire::Mjpg => 0,
    };
    DeviceInfo {
        driver: caps.driver,
        card: caps.card,
        bus: caps.bus,
        formats: listed.iter().map(|d| (fourcc_str(&d.fourcc.repr), d.description.clone())).collect(),
        wire,
        width: fmt.width,
        height: fmt.height,
        stride: fmt.stride.max(min_stride),
    }
}

/// Sets up mmap streaming with the configured buffers and timeout.
fn start_streaming(dev: Device, info: DeviceInfo, config: &CameraConfig, device: &str) -> Result<Open, CameraError> {
    let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, config.buffers)
        .map_err(io_error(device, "mmap streaming setup (VIDIOC_REQBUFS)"))?;
    stream.set_timeout(config.timeout());
    let handle = dev.handle();
    Ok(Open { stream, handle, _device: dev, info, buffers: config.buffers, resync: false })
}
