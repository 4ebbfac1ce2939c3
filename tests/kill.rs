//! Power cuts: `leukoscope run` is killed (SIGKILL) at random instants, over and
//! over, and restarted each time, until its replay of real smear fields is
//! counted and the session finished. The report must equal that of a run never
//! interrupted: no counted cell lost, none counted twice, no stray crop.
//!
//! LEUKOSCOPE_KILLS sets how many kills at least (default 100).

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

fn fields() -> Vec<String> {
    common::bccd_field_paths().into_iter().skip(100).take(20).map(|p| p.display().to_string()).collect()
}

struct Rig {
    dir: PathBuf,
    config: PathBuf,
    fields: Vec<String>,
}

impl Rig {
    fn new(name: &str, fields: &[String]) -> Rig {
        let dir = common::scratch("kill", name);
        let config = common::write_run_config(&dir, "");
        for (name, text) in [("start.txt", "1 start\n"), ("finish.txt", "1 finish\n")] {
            std::fs::write(dir.join(name), text).expect("script");
        }
        Rig { dir, config, fields: fields.to_vec() }
    }

    fn spawn(&self, script: &str) -> std::process::Child {
        // Finishing needs no frames: one field keeps that run short.
        let replay = if script == "finish.txt" { &self.fields[..1] } else { &self.fields[..] };
        Command::new(env!("CARGO_BIN_EXE_leukoscope"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--script")
            .arg(self.dir.join(script))
            .arg("--replay")
            .args(replay)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn leukoscope run")
    }

    /// Runs `script` until the process ends by itself, killing it after
    /// `delay()` each time it has not. Returns the number of kills.
    fn run_with_kills(&self, script: &str, mut delay: impl FnMut() -> Duration) -> u32 {
        let mut kills = 0;
        loop {
            let mut child = self.spawn(script);
            let until = Instant::now() + delay();
            let ended = loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    assert!(status.success(), "run failed by itself with {status}");
                    break true;
                }
                if Instant::now() >= until {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            if ended {
                return kills;
            }
            child.kill().expect("kill");
            child.wait().expect("reap");
            kills += 1;
            assert!(kills < 2000, "no progress after {kills} restarts");
        }
    }

    fn report(&self) -> (Value, usize) {
        let sessions: Vec<PathBuf> = std::fs::read_dir(self.dir.join("state/sessions"))
            .expect("sessions")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("journal.jsonl").exists())
            .collect();
        assert_eq!(sessions.len(), 1, "exactly one session: {sessions:?}");
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(sessions[0].join("results.json")).expect("results.json"))
                .expect("json");
        (doc, common::files_under(&sessions[0].join("crops")).len())
    }
}

/// One field's counted cells: (bbox, class) each.
type FieldCells = (String, Vec<(Vec<u64>, String)>);

/// The cells of a report, field by field: what must survive any crash.
fn cells(doc: &Value) -> Vec<FieldCells> {
    doc["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|f| {
            let c = f["cells"]
                .as_array()
                .expect("cells")
                .iter()
                .map(|c| {
                    let b = c["bbox"].as_array().expect("bbox").iter().filter_map(Value::as_u64).collect();
                    (b, c["class"].as_str().unwrap_or("").to_string())
                })
                .collect();
            (f["path"].as_str().unwrap_or("").to_string(), c)
        })
        .collect()
}

#[test]
fn random_kills_lose_and_double_nothing() {
    let want: u32 = std::env::var("LEUKOSCOPE_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let fields = fields();

    // The reference: the same replay, never interrupted.
    let reference = Rig::new("ref", &fields);
    let t0 = Instant::now();
    assert_eq!(reference.run_with_kills("start.txt", || Duration::from_secs(600)), 0);
    let span = t0.elapsed();
    assert_eq!(reference.run_with_kills("finish.txt", || Duration::from_secs(600)), 0);
    let (ref_doc, ref_crops) = reference.report();
    let ref_cells = cells(&ref_doc);
    let n_ref = ref_doc["summary"]["cells"].as_u64().expect("cells");
    assert!(n_ref >= 8, "the reference run should count the fields' leukocytes, got {n_ref}");

    // xorshift: reproducible kill instants.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let span_ms = span.as_millis().max(50) as u64;
    let (mut kills, mut rounds) = (0, 0);
    while kills < want {
        rounds += 1;
        let rig = Rig::new(&format!("r{rounds}"), &fields);
        kills += rig.run_with_kills("start.txt", || Duration::from_millis(rand() % (span_ms / 3).max(20)));
        kills += rig.run_with_kills("finish.txt", || Duration::from_millis(rand() % (span_ms / 8).max(20)));
        let (doc, crops) = rig.report();
        assert_eq!(cells(&doc), ref_cells, "round {rounds}: the report differs from the uninterrupted run");
        assert_eq!(doc["summary"], ref_doc["summary"], "round {rounds}");
        assert_eq!(crops, ref_crops, "round {rounds}: stray or missing crops");
        std::fs::remove_dir_all(&rig.dir).ok();
    }
    eprintln!(
        "{kills} kills in {rounds} rounds: every report equal to the uninterrupted run ({n_ref} cells, {} fields)",
        ref_cells.len()
    );
    std::fs::remove_dir_all(&reference.dir).ok();
}
