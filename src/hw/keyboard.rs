//! Development stand-in for the buttons: one command per line on stdin.
//! `s` = Start, `c` or an empty line (just Enter) = Capture, `f` = Finish,
//! `u` = Undo, `id CODE` = the code CODE, as if scanned (a sample ID, or an
//! operator ID with `[session] operator_prefix`). Unknown input is logged and
//! ignored; end of input (Ctrl-D, or a closed pipe) simply means no more presses.

use std::io::BufRead;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::hw::buttons::{Button, ButtonError, ButtonSource};

/// The button a typed line stands for; `None` for anything unknown. Case and
/// surrounding blanks are ignored; whole words ("start", "capture"...) work too.
pub fn parse_key(line: &str) -> Option<Button> {
    match line.trim().to_ascii_lowercase().as_str() {
        "s" | "start" => Some(Button::Start),
        "" | "c" | "capture" => Some(Button::Capture),
        "f" | "finish" => Some(Button::Finish),
        "u" | "undo" => Some(Button::Undo),
        _ => None,
    }
}

/// The code a typed line enters: "id CODE" (the word case-insensitive); the
/// code is the rest of the line without surrounding blanks.
pub fn parse_code(line: &str) -> Option<String> {
    let line = line.trim();
    let (word, rest) = line.split_once(char::is_whitespace)?;
    let code = rest.trim();
    (word.eq_ignore_ascii_case("id") && !code.is_empty()).then(|| code.to_string())
}

/// What a line stands for.
enum Typed {
    Press(Button),
    Code(String),
}

/// Reads lines in a background thread (stdin blocks and cannot be polled
/// portably) and hands presses and codes over a channel.
pub struct KeyboardButtons {
    rx: Receiver<Typed>,
    ended: bool,
    codes: Vec<String>,
}

impl KeyboardButtons {
    /// Reads standard input.
    pub fn stdin() -> KeyboardButtons {
        KeyboardButtons::from_reader(std::io::BufReader::new(std::io::stdin()))
    }

    /// Reads any line source (tests use a byte slice).
    pub fn from_reader<R: BufRead + Send + 'static>(reader: R) -> KeyboardButtons {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new().name("keyboard".into()).spawn(move || {
            for line in reader.lines() {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        warn!("keyboard input: {e}; no more key presses");
                        return;
                    }
                };
                let typed = match (parse_key(&line), parse_code(&line)) {
                    (Some(button), _) => Typed::Press(button),
                    (None, Some(code)) => Typed::Code(code),
                    (None, None) => {
                        warn!("unknown key {line:?} ignored (s=start, c or Enter=capture, f=finish, u=undo, id CODE)");
                        continue;
                    }
                };
                debug!("key {line:?}");
                if tx.send(typed).is_err() {
                    return; // the receiver is gone
                }
            }
            debug!("keyboard input ended");
        });
        if let Err(e) = spawned {
            warn!("cannot start the keyboard thread: {e}; no key presses");
        }
        KeyboardButtons { rx, ended: false, codes: Vec::new() }
    }

    /// Presses in arrival order; codes are set aside for [`ButtonSource::codes`].
    fn take(&mut self, t: Typed, presses: &mut Vec<Button>) {
        match t {
            Typed::Press(b) => presses.push(b),
            Typed::Code(c) => self.codes.push(c),
        }
    }
}

impl ButtonSource for KeyboardButtons {
    fn poll(&mut self, timeout: Duration) -> Result<Vec<Button>, ButtonError> {
        if self.ended {
            // Keep the caller's pacing: return after the timeout, like an idle button.
            std::thread::sleep(timeout);
            return Ok(Vec::new());
        }
        let start = Instant::now();
        let first = match self.rx.recv_timeout(timeout) {
            Ok(t) => t,
            Err(RecvTimeoutError::Timeout) => return Ok(Vec::new()),
            Err(RecvTimeoutError::Disconnected) => {
                self.ended = true;
                std::thread::sleep(timeout.saturating_sub(start.elapsed()));
                return Ok(Vec::new());
            }
        };
        let mut presses = Vec::new();
        self.take(first, &mut presses);
        loop {
            match self.rx.try_recv() {
                Ok(t) => self.take(t, &mut presses),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.ended = true;
                    break;
                }
            }
        }
        Ok(presses)
    }

    fn codes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.codes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_buttons() {
        assert_eq!(parse_key("s"), Some(Button::Start));
        assert_eq!(parse_key(""), Some(Button::Capture));
        assert_eq!(parse_key("  C \r"), Some(Button::Capture));
        assert_eq!(parse_key("f"), Some(Button::Finish));
        assert_eq!(parse_key("Undo"), Some(Button::Undo));
        assert_eq!(parse_key("x"), None);
        assert_eq!(parse_key("sf"), None);
        assert_eq!(parse_key("id A1"), None);
    }

    #[test]
    fn id_lines_are_codes() {
        assert_eq!(parse_code("id ABC123").as_deref(), Some("ABC123"));
        assert_eq!(parse_code("  ID   OP:ann lee \r").as_deref(), Some("OP:ann lee"));
        assert_eq!(parse_code("id"), None);
        assert_eq!(parse_code("id   "), None);
        assert_eq!(parse_code("idx A"), None);
        let mut kb = KeyboardButtons::from_reader(&b"id S-1\ns\n"[..]);
        let mut got = Vec::new();
        let t = Instant::now();
        while got.is_empty() && t.elapsed() < Duration::from_secs(5) {
            got.extend(kb.poll(Duration::from_millis(100)).expect("poll"));
        }
        assert_eq!(got, [Button::Start]);
        assert_eq!(kb.codes(), ["S-1"]);
        assert!(kb.codes().is_empty());
    }

    #[test]
    fn lines_become_presses_in_order_and_eof_is_quiet() {
        let mut kb = KeyboardButtons::from_reader(&b"s\n\nbogus\nu\nf\n"[..]);
        let mut got = Vec::new();
        let t = Instant::now();
        while got.len() < 4 && t.elapsed() < Duration::from_secs(5) {
            got.extend(kb.poll(Duration::from_millis(100)).expect("poll"));
        }
        assert_eq!(got, [Button::Start, Button::Capture, Button::Undo, Button::Finish]);
        // After end of input: no error, no presses, and the timeout is still honoured.
        for _ in 0..2 {
            let t = Instant::now();
            assert!(kb.poll(Duration::from_millis(30)).expect("poll after EOF").is_empty());
            assert!(t.elapsed() >= Duration::from_millis(25));
        }
    }
}
