//! `leukoscope run` as a systemd service, tested without systemd: a fake
//! `$NOTIFY_SOCKET` that must receive READY=1 and watchdog pings, log lines
//! with syslog priorities when stderr is the journal's stream, and exit 78
//! (EX_CONFIG) on a bad configuration.

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

mod common;

/// Everything the service manager would receive while `run` replays `n` fields.
fn notifications(name: &str, watchdog_pid: Option<u32>) -> Vec<String> {
    let dir = common::scratch("service", name);
    let config = common::write_run_config(&dir, "");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the fake notify socket");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let script = dir.join("buttons.txt");
    std::fs::write(&script, "1 start\n").expect("script");
    let fields = common::bccd_field_paths();
    let mut cmd = common::bin();
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--script")
        .arg(&script)
        .arg("--replay")
        .args(&fields[..3])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "40000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(pid) = watchdog_pid {
        cmd.env("WATCHDOG_PID", pid.to_string());
    }
    let mut child = cmd.spawn().expect("spawn run");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) if child.try_wait().expect("wait").is_some() => break,
            Err(_) => {}
        }
    }
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("stderr");
    assert!(child.wait().expect("wait").success(), "{err}");
    got
}

#[test]
fn run_notifies_ready_and_pings_the_watchdog() {
    let got = notifications("notify", None);
    assert_eq!(got.first().map(String::as_str), Some("READY=1"), "{got:?}");
    let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
    // Three fields analysed take far longer than the 20 ms ping interval.
    assert!(pings >= 2, "{got:?}");
    assert_eq!(pings + 1, got.len(), "only READY=1 and WATCHDOG=1: {got:?}");
    // A watchdog meant for another process (WATCHDOG_PID) is not pinged.
    let got = notifications("notify-other", Some(1));
    assert_eq!(got, ["READY=1"]);
}

/// stderr of `analyze` on a good and a missing file, with `JOURNAL_STREAM`
/// naming stderr itself or (`other`) some other stream.
fn stderr_lines(journal: bool) -> Vec<String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", writer.as_raw_fd())).expect("pipe metadata");
    let stream =
        if journal { format!("{}:{}", meta.dev(), meta.ino()) } else { format!("{}:{}", meta.dev(), meta.ino() + 1) };
    let mut cmd = common::bin();
    cmd.arg("analyze")
        .arg(common::field("BloodImage_00001"))
        .arg("/no/such/field.jpg")
        .env("JOURNAL_STREAM", stream)
        .env("RUST_LOG", "leukoscope=debug")
        .stdout(Stdio::null())
        .stderr(writer);
    let mut child = cmd.spawn().expect("run analyze");
    // The command holds the pipe's write end: dropped, the read ends with the child.
    drop(cmd);
    let mut text = String::new();
    reader.read_to_string(&mut text).expect("read stderr");
    assert_eq!(child.wait().expect("wait").code(), Some(1), "{text}");
    text.lines().map(str::to_string).collect()
}

#[test]
fn log_lines_carry_their_priority_for_the_journal() {
    let lines = stderr_lines(true);
    assert!(!lines.is_empty());
    for l in &lines {
        let p = l.strip_prefix('<').and_then(|r| r.split_once('>')).and_then(|(p, _)| p.parse::<u8>().ok());
        assert!(p.is_some_and(|p| p <= 7), "no syslog priority: {l:?} in {lines:#?}");
    }
    // The missing file is an error (`journalctl -p err` shows it), the debug line
    // naming the model is not.
    let missing: Vec<&String> = lines.iter().filter(|l| l.contains("/no/such/field.jpg")).collect();
    assert!(!missing.is_empty() && missing.iter().all(|l| l.starts_with("<3>")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("<7>") && l.contains("model")), "{lines:#?}");
    // stderr that is not the journal's stream (a redirect inheriting JOURNAL_STREAM): plain lines.
    let lines = stderr_lines(false);
    assert!(lines.iter().any(|l| l.contains("/no/such/field.jpg")), "{lines:#?}");
    assert!(lines.iter().all(|l| !l.starts_with('<')), "{lines:#?}");
}

/// A bad configuration exits with 78 (EX_CONFIG), which the unit names in
/// `RestartPreventExitStatus`: systemd stops restarting it every 5 s.
#[test]
fn a_bad_config_exits_with_ex_config_and_the_unit_does_not_restart_it() {
    let dir = common::scratch("service", "config");
    let config = common::write_run_config(&dir, "target = 150");
    let out = common::bin().arg("run").arg("--config").arg(&config).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("session.target") && err.contains("leukoscope.toml"), "{err}");
    // The shipped unit: no restart on 78, notify with a watchdog.
    let unit =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("board/leukoscope.service"))
            .expect("unit");
    let keys: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in ["RestartPreventExitStatus=78", "Type=notify", "NotifyAccess=main"] {
        assert!(keys.contains(&want), "{want} missing from board/leukoscope.service");
    }
    assert!(keys.iter().any(|k| k.strip_prefix("WatchdogSec=").is_some_and(|v| v.parse::<u32>().is_ok_and(|s| s > 0))));
}
