//! The service side of systemd, with std alone: log lines carry their syslog
//! priority when stderr is the journal (so `journalctl -p err` finds errors),
//! and `sd_notify` messages (READY=1, WATCHDOG=1) go to `$NOTIFY_SOCKET` for
//! `Type=notify` with `WatchdogSec`: a loop that stops turning (a camera read
//! hung in the driver) is restarted by systemd.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// The syslog priority of a log level (`<3>` err ... `<7>` debug).
pub fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// True when stderr is the journal's stream: `$JOURNAL_STREAM` names its
/// device and inode. The variable alone is not enough: a child whose stderr
/// was redirected inherits it.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    // The /proc link resolves to the open stream itself (pipe or socket), as fstat(2) would.
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Messages to the service manager, if it listens (`$NOTIFY_SOCKET`).
pub struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
    /// Ping interval: half of `$WATCHDOG_USEC`, when the watchdog is on for this process.
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
}

impl Notifier {
    /// The notifier systemd asks for through the environment; `None` when
    /// not run as a `Type=notify` service (or the socket cannot be used: the
    /// service then times out starting, which the journal shows).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let addr = match socket_addr(&path) {
            Ok(a) => a,
            Err(e) => {
                log::warn!("NOTIFY_SOCKET {}: {e}", path.to_string_lossy());
                return None;
            }
        };
        let socket = match UnixDatagram::unbound() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("NOTIFY_SOCKET: cannot create a socket: {e}");
                return None;
            }
        };
        // WATCHDOG_PID, when set, names the process the watchdog is meant for.
        let for_us = std::env::var("WATCHDOG_PID").map_or(true, |p| p.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&us| us > 0 && for_us)
            .map(|us| Duration::from_micros(us / 2));
        Some(Notifier { socket, addr, watchdog, last_ping: None })
    }

    /// Sends one message (`KEY=VALUE` lines).
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr).map(|_| ())
    }

    /// READY=1: start-up is over (model loaded, display open).
    pub fn ready(&self) {
        if let Err(e) = self.notify("READY=1") {
            log::warn!("sd_notify READY=1: {e}");
        }
    }

    /// WATCHDOG=1, at most once per half watchdog interval; nothing when the
    /// watchdog is off.
    pub fn ping(&mut self) {
        let Some(every) = self.watchdog else { return };
        if self.last_ping.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_ping = Some(Instant::now());
        if let Err(e) = self.notify("WATCHDOG=1") {
            log::warn!("sd_notify WATCHDOG=1: {e}");
        }
    }

    /// Whether systemd asked for watchdog pings.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }
}

/// A filesystem path, or `@name` for Linux's abstract namespace.
fn socket_addr(path: &std::ffi::OsStr) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            return std::os::unix::net::SocketAddr::from_abstract_name(name);
        }
        #[cfg(not(target_os = "linux"))]
        return Err(std::io::Error::other(format!("abstract socket {name:?} needs Linux")));
    }
    std::os::unix::net::SocketAddr::from_pathname(path)
}
