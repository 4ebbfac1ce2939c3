//! The operator's inputs (buttons, or keys in development) and outputs
//! (buzzer / LED). Hardware adapters live in `gpio`.

use std::time::Duration;

/// What the operator can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Button {
    /// Start a new count (or resume after "finished").
    Start,
    /// Analyse the current field now, even if the gate would skip it.
    Capture,
    /// Finish the count and write the report.
    Finish,
    /// Take back the last counted field.
    Undo,
}

#[derive(Debug, thiserror::Error)]
pub enum ButtonError {
    #[error("button input {what}: {reason}")]
    Device { what: String, reason: String },
}

/// A source of debounced button presses, and of codes (sample or operator IDs)
/// where the source can enter text: a barcode scanner, the keyboard stand-in.
pub trait ButtonSource {
    /// Presses since the last call, oldest first; waits at most `timeout` for the first one.
    fn poll(&mut self, timeout: Duration) -> Result<Vec<Button>, ButtonError>;

    /// Codes entered since the last call, oldest first; never waits (`poll` does).
    /// The appliance takes them before the presses of the same poll, so that an
    /// ID scanned just before START belongs to that START.
    fn codes(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// An on/off output: buzzer or LED.
pub trait Signal {
    fn set(&mut self, on: bool) -> Result<(), ButtonError>;
}

/// Presses from a script, for tests and demonstrations: each entry is pressed
/// on the given poll (the appliance loop polls once per frame), e.g. the text
/// "1 start\n40 capture\n90 finish". "`<poll>` id `<code>`" enters a code (as if
/// scanned) on that poll: "1 id S-0117\n2 start".
#[derive(Debug, Clone, Default)]
pub struct ScriptedButtons {
    presses: Vec<(u64, Scripted)>,
    polls: u64,
    codes: Vec<String>,
}

#[derive(Debug, Clone)]
enum Scripted {
    Press(Button),
    Code(String),
}

impl ScriptedButtons {
    pub fn parse(text: &str) -> Result<ScriptedButtons, ButtonError> {
        let bad =
            |line: &str, why: &str| ButtonError::Device { what: format!("script line {line:?}"), reason: why.into() };
        let mut presses = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let mut it = line.split_whitespace();
            let at =
                it.next().and_then(|n| n.parse::<u64>().ok()).ok_or_else(|| bad(line, "expected a poll number"))?;
            let b = match it.next().map(str::to_ascii_lowercase).as_deref() {
                Some("start") => Button::Start,
                Some("capture") => Button::Capture,
                Some("finish") => Button::Finish,
                Some("undo") => Button::Undo,
                Some("id") => {
                    let code = it.collect::<Vec<_>>().join(" ");
                    if code.is_empty() {
                        return Err(bad(line, "expected a code after id"));
                    }
                    presses.push((at, Scripted::Code(code)));
                    continue;
                }
                _ => return Err(bad(line, "expected start, capture, finish, undo or id")),
            };
            presses.push((at, Scripted::Press(b)));
        }
        presses.sort_by_key(|p| p.0);
        Ok(ScriptedButtons { presses, polls: 0, codes: Vec::new() })
    }
}

impl ButtonSource for ScriptedButtons {
    fn poll(&mut self, timeout: Duration) -> Result<Vec<Button>, ButtonError> {
        self.polls += 1;
        let n = self.presses.partition_point(|p| p.0 <= self.polls);
        let mut due = Vec::new();
        for (_, p) in self.presses.drain(..n) {
            match p {
                Scripted::Press(b) => due.push(b),
                Scripted::Code(c) => self.codes.push(c),
            }
        }
        if due.is_empty() && self.codes.is_empty() && !timeout.is_zero() {
            std::thread::sleep(timeout.min(Duration::from_millis(20)));
        }
        Ok(due)
    }

    fn codes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.codes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_presses_on_its_polls() {
        let mut s = ScriptedButtons::parse("# demo\n2 start\n\n3 Capture\n3 undo\n").unwrap();
        assert!(s.poll(Duration::ZERO).unwrap().is_empty());
        assert_eq!(s.poll(Duration::ZERO).unwrap(), vec![Button::Start]);
        assert_eq!(s.poll(Duration::ZERO).unwrap(), vec![Button::Capture, Button::Undo]);
        assert!(s.poll(Duration::ZERO).unwrap().is_empty());
    }

    #[test]
    fn script_enters_codes_on_their_polls() {
        let mut s = ScriptedButtons::parse("2 id  S 0117 \n2 start\n1 id OP:ann").unwrap();
        assert!(s.poll(Duration::ZERO).unwrap().is_empty());
        assert_eq!(s.codes(), ["OP:ann"]);
        assert_eq!(s.poll(Duration::ZERO).unwrap(), vec![Button::Start]);
        assert_eq!(s.codes(), ["S 0117"]);
        assert!(s.codes().is_empty());
        assert!(ScriptedButtons::parse("3 id").is_err());
    }

    #[test]
    fn script_errors_name_the_line() {
        let e = ScriptedButtons::parse("1 start\nx finish").unwrap_err().to_string();
        assert!(e.contains("x finish"), "{e}");
        assert!(ScriptedButtons::parse("4 jump").is_err());
    }
}
