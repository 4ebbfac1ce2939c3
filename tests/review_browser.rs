//! End to end in a real browser: Debian's headless Chromium, driven by
//! chromedriver over WebDriver's HTTP protocol (no client library), through
//! the review page of a session counted by `leukoscope run` from BCCD fields:
//! sign in, reclassify a cell, mark one as not a leukocyte, reclassify a third
//! by keyboard (the appliance's /review.js: focus the cell, press the class's
//! key), sign off; then
//! review.jsonl, the recounted results.json and report.html are checked, and
//! screenshots of the page and the signed report are saved under the test's
//! output folder (`target/tmp/review-browser/`) for a person to look at.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them); without
//! them the test fails, it does not skip.

mod common;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> Command {
    let mut c = common::bin();
    c.env("RUST_LOG", "warn");
    c
}

/// One HTTP/1.1 exchange; returns the status and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    // chromedriver keeps the connection open: read the head, then Content-Length bytes.
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).expect("read") == 0 || l == "\r\n" {
            break;
        }
        head += &l;
    }
    let len = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).expect("read body");
        }
        None => {
            r.read_to_end(&mut body).expect("read body");
        }
    }
    (head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), String::from_utf8_lossy(&body).into_owned())
}

/// A WebDriver session.
struct Driver {
    addr: SocketAddr,
    session: String,
}

/// Ends the browser session even when the test fails: killing chromedriver
/// alone would leave Chromium running.
impl Drop for Driver {
    fn drop(&mut self) {
        let _ = TcpStream::connect(self.addr).and_then(|mut s| {
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                self.session, self.addr
            );
            s.write_all(req.as_bytes())?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut buf = [0u8; 256];
            s.read(&mut buf).map(|_| ())
        });
    }
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, text) = http(self.addr, method, &format!("/session/{}{path}", self.session), body.as_ref());
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("webdriver {path}: {e}: {text}"));
        assert_eq!(status, 200, "webdriver {method} {path}: {v}");
        v["value"].clone()
    }
    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }
    fn find(&self, css: &str) -> String {
        let v = self.call("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}")).to_string()
    }
    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }
    /// Keys typed to an element (WebDriver focuses it first): to a focused
    /// cell, what a reviewer's keyboard sends.
    fn keys_to(&self, css: &str, text: &str) {
        self.type_into(css, text);
    }
    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })));
    }
    /// The page once `ready` holds: a click that submits a form returns before
    /// the next page has replaced the old one.
    fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let src = self.source();
            if ready(&src) {
                return src;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "page never showed {what}:\n{src}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fn source(&self) -> String {
        self.call("GET", "/source", None).as_str().unwrap_or_default().to_string()
    }
    fn screenshot(&self, to: &Path) {
        let b64 = self.call("GET", "/screenshot", None);
        let png = decode_base64(b64.as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(to, png).expect("write screenshot");
        println!("screenshot: {}", to.display());
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s.bytes().filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| acc | (val(*c) as u32) << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

#[test]
fn a_reviewer_signs_a_bccd_session_in_a_real_browser() {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !common::external_tool(Path::new(tool), "apt-get install chromium chromium-driver") {
            return;
        }
    }
    let dir = std::env::temp_dir().join(format!("leukoscope-browser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("review-browser");
    std::fs::create_dir_all(&shots).expect("screenshot folder");

    // A session counted by the appliance from BCCD fields.
    let config = common::write_run_config(&dir, "");
    let o =
        common::scripted_run(&dir, &config, "1 start\n40 finish\n", 30).arg("--until-finished").output().expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let session =
        std::fs::read_dir(dir.join("state/sessions")).expect("sessions").flatten().next().expect("a session").path();
    let before: Value =
        serde_json::from_str(&std::fs::read_to_string(session.join("results.json")).expect("results")).expect("json");
    let cells0 = before["summary"]["cells"].as_u64().expect("cells");
    assert!(cells0 >= 3, "{}", before["summary"]);

    // The review page, and a browser.
    let mut review = bin()
        .args(["review", "--config"])
        .arg(&config)
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("review");
    let mut line = String::new();
    BufReader::new(review.stdout.take().expect("stdout")).read_line(&mut line).expect("address line");
    let _review = Killed(review);
    let page_addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).expect("address").to_string();
    let tok = bin().args(["review", "--config"]).arg(&config).arg("--print-token").output().expect("token");
    let tok = String::from_utf8_lossy(&tok.stdout).trim().to_string();

    let port = free_port();
    let driver = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver");
    let _driver = Killed(driver);
    let daddr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let t0 = Instant::now();
    while TcpStream::connect(daddr).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1500"]}}}});
    let (status, text) = http(daddr, "POST", "/session", Some(&caps));
    let v: Value = serde_json::from_str(&text).expect("session json");
    assert_eq!(status, 200, "new session: {v}");
    let d = Driver { addr: daddr, session: v["value"]["sessionId"].as_str().expect("sessionId").to_string() };

    // Without the token the page refuses; with it, the gallery.
    d.go(&format!("http://{page_addr}/r/0"));
    assert!(d.source().contains("Token required"));
    d.go(&format!("http://{page_addr}/?token={tok}"));
    d.go(&format!("http://{page_addr}/r/0"));
    let src = d.source();
    assert!(src.contains("Read-only until you sign in"));
    assert!(!src.contains("Set class"), "no changes before signing in");
    d.type_into("input[name=reviewer]", "Dr Web");
    d.click("form[action='/signin'] button");
    let src = d.wait_for("the signed-in reviewer", |s| s.contains("Signed in as <b>Dr Web</b>"));
    // The first three cells of the gallery that can be changed, as shown.
    let ids: Vec<String> = src
        .split("<figure id=\"c")
        .skip(1)
        .filter(|s| s.split('>').next().is_some_and(|tag| tag.contains("data-cell")))
        .filter_map(|s| s.split('"').next().map(str::to_string))
        .take(3)
        .collect();
    assert_eq!(ids.len(), 3, "three cells on the page");
    let cell = |id: &str| -> Value {
        let (f, k) = id.split_once('-').expect("id");
        let (f, k): (usize, usize) = (f.parse().expect("f"), k.parse().expect("k"));
        let img = &before["images"][f];
        let n = img["cells"].as_array().map_or(0, Vec::len);
        if k < n {
            img["cells"][k].clone()
        } else {
            img["not_counted"][k - n].clone()
        }
    };
    // Reclassify the first to a class it is not; mark the second as not a leukocyte.
    let to = if cell(&ids[0])["class"] == "LYT" { "MON" } else { "LYT" };
    d.click(&format!("#c{} option[value={to}]", ids[0]));
    d.click(&format!("#c{} button[value=reclassify]", ids[0]));
    d.wait_for("the change", |s| s.contains(&format!("→ {to} by Dr Web")));
    d.click(&format!("#c{} button[value=not_leukocyte]", ids[1]));
    let src = d.wait_for("two changes", |s| s.contains("(2 changed)"));
    // The third by keyboard: the key shown beside its new class, pressed on the focused cell.
    let kb_to = ["EOS", "MON", "LYT"].into_iter().find(|c| cell(&ids[2])["class"] != *c && *c != to).expect("a class");
    let key = src
        .split(&format!("<option value=\"{kb_to}\" data-key=\""))
        .nth(1)
        .and_then(|r| r.chars().next())
        .expect("the class's key");
    assert!(src.contains(&format!("[{key}] {kb_to} ")), "the key beside the class's name");
    assert!(src.contains(&format!("<kbd>{key}</kbd> {kb_to}")), "the key in the page's legend");
    d.keys_to(&format!("figure[data-cell='{}']", ids[2]), &key.to_string());
    let src = d.wait_for("the keyboard change", |s| s.contains("(3 changed)"));
    assert!(src.contains(&format!("→ {kb_to} by Dr Web")));
    d.screenshot(&shots.join("review-keyboard.png"));
    d.click("form[action='/r/0/signoff'] button");
    d.wait_for("the sign-off", |s| s.contains("SIGNED</span> by Dr Web"));
    d.screenshot(&shots.join("review-page.png"));
    d.go(&format!("http://{page_addr}/r/0/report.html"));
    d.wait_for("the verified report", |s| s.contains("VERIFIED"));
    d.screenshot(&shots.join("signed-report.png"));

    // What the browser did, on disk.
    let log: Vec<Value> = std::fs::read_to_string(session.join("review.jsonl"))
        .expect("review.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    let kinds: Vec<&str> = log.iter().map(|l| l["t"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, ["open", "reclassify", "not_leukocyte", "reclassify", "sign_off"]);
    assert_eq!((log[1]["cell"].as_str(), log[1]["class"].as_str()), (Some(ids[0].as_str()), Some(to)));
    assert_eq!(log[2]["cell"].as_str(), Some(ids[1].as_str()));
    assert_eq!((log[3]["cell"].as_str(), log[3]["class"].as_str()), (Some(ids[2].as_str()), Some(kb_to)));
    assert_eq!(log[3]["by"], "Dr Web");
    let after: Value =
        serde_json::from_str(&std::fs::read_to_string(session.join("results.json")).expect("results")).expect("json");
    let r = &after["review"];
    assert_eq!((r["status"].as_str(), r["reviewer"].as_str()), (Some("signed"), Some("Dr Web")));
    // The second cell no longer counts (if it counted before); the first counts as `to`.
    // The third counts as `kb_to` (counted now if it was not).
    let second_counted = cell(&ids[1])["reason"].is_null();
    let third_counted = cell(&ids[2])["reason"].is_null();
    let expect_cells = cells0 - second_counted as u64 + (!third_counted) as u64;
    assert_eq!(r["summary"]["cells"].as_u64(), Some(expect_cells));
    let n_of = |s: &Value, c: &str| s["by_class"][c].as_u64().unwrap_or(0);
    let first_was_to = cell(&ids[0])["class"] == to;
    let third_was_to = cell(&ids[2])["class"] == to;
    assert!(n_of(&r["summary"], to) + third_was_to as u64 >= n_of(&before["summary"], to) + (!first_was_to) as u64);
    let was_kb = |id: &str| (cell(id)["class"] == kb_to && cell(id)["reason"].is_null()) as u64;
    assert_eq!(
        n_of(&r["summary"], kb_to) + was_kb(&ids[0]) + was_kb(&ids[1]),
        n_of(&before["summary"], kb_to) + 1,
        "the keyboard's class counts one more"
    );
    let html = std::fs::read_to_string(session.join("report.html")).expect("report.html");
    assert!(html.contains("VERIFIED") && html.contains("Dr Web") && html.contains("as reviewed"));
    assert!(html.contains(&format!("of {expect_cells} leukocytes")));
    // The reviewer's class under its name in the table.
    let card =
        leukoscope::classify::model::ModelCard::load(&leukoscope::classify::model::default_card_path()).expect("card");
    let name = &card.classes[card.class_index(to).expect("class")].name;
    assert!(html.contains(&format!("<td>{to}</td><td>{name}</td>")), "{to} {name}");
    common::validate_fhir(&session.join("report.fhir.json"), "final");
    common::validate_hl7(&session.join("report.hl7"), "F", None);
    std::fs::remove_dir_all(&dir).ok();
}
