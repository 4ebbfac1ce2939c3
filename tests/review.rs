//! `leukoscope review` as a reviewer's browser meets it, over real HTTP on a
//! report folder made from real cells: the token guards every request,
//! nothing listens on a network address by default, and a scripted review
//! (reclassify, not a leukocyte, sign off) lands in review.jsonl, the
//! recomputed results.json, report.html and a final FHIR bundle.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;

fn bin() -> Command {
    let mut c = common::bin();
    c.env("RUST_LOG", "warn");
    c
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("review", name)
}

/// A report folder of LMU myeloblasts and neutrophils (at the LMU scale) and
/// BCCD fields, as `analyze --out` writes it.
fn report(dir: &Path) -> PathBuf {
    let config = dir.join("lmu.toml");
    std::fs::write(&config, "[scale]\num_per_px = 0.138\n").expect("config");
    let out = dir.join("report");
    let mut inputs = common::images("lmu/MYO", 4);
    inputs.extend(common::images("lmu/NGS", 2));
    inputs.extend(common::images("bccd/JPEGImages", 2));
    let o = bin()
        .args(["analyze", "--sample-id", "S-9", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .args(&inputs)
        .output()
        .expect("analyze");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// A running `leukoscope review`, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(state: &Path, args: &[&str], dirs: &[&Path]) -> Server {
    let mut child = bin()
        .arg("review")
        .arg("--state")
        .arg(state)
        .args(args)
        .args(dirs)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start review");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("first line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    Server { child, addr }
}

fn token(state: &Path) -> String {
    let o = bin().arg("review").arg("--state").arg(state).arg("--print-token").output().expect("print token");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request on its own connection.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    if method == "POST" {
        req += &format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n", body.len());
    }
    req += "\r\n";
    req += body;
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply { status, head: head.to_string(), body: body.to_string() }
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The `name=value` of a Set-Cookie header.
fn set_cookie(r: &Reply) -> String {
    header(r, "Set-Cookie").and_then(|c| c.split(';').next()).expect("Set-Cookie").to_string()
}

fn csrf(page: &str) -> String {
    let i = page.find("name=\"csrf\" value=\"").expect("a form with the csrf token") + 19;
    page[i..].split('"').next().expect("value").to_string()
}

/// An address of this machine other than loopback, if it has one: the local
/// end of a UDP socket "connected" outwards (nothing is sent).
fn network_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn nothing_listens_on_the_network_by_default_and_no_token_no_access() {
    let dir = scratch("access");
    let rep = report(&dir);
    let state = dir.join("state");
    // The default configuration, only the port left to the system.
    let server = start(&state, &["--port", "0"], &[&rep]);
    assert!(server.addr.ip().is_loopback(), "default address {}", server.addr);
    if let Some(ip) = network_ip() {
        let there = SocketAddr::new(ip, server.addr.port());
        assert!(
            TcpStream::connect_timeout(&there, std::time::Duration::from_secs(2)).is_err(),
            "the review page answers on the network address {there}"
        );
    }
    let tok = token(&state);
    assert_eq!(tok.len(), 32);
    let a = server.addr;
    // Without the token, or with a wrong one: refused, and nothing written.
    assert_eq!(http(a, "GET", "/", &[], "").status, 401);
    assert_eq!(http(a, "GET", "/r/0", &[], "").status, 401);
    assert_eq!(http(a, "GET", "/r/0/crop/0-0", &[], "").status, 401);
    assert_eq!(http(a, "GET", "/?token=0123456789abcdef0123456789abcdef", &[], "").status, 401);
    let wrong = [("Cookie", "lk_token=0123456789abcdef0123456789abcdef; lk_reviewer=x")];
    assert_eq!(http(a, "GET", "/r/0", &wrong, "").status, 401);
    assert_eq!(http(a, "POST", "/r/0/signoff", &wrong, "csrf=x").status, 401);
    assert!(!rep.join("review.jsonl").exists(), "a refused request changed the report");
    // With the token: a cookie, then the page under a strict policy.
    let first = http(a, "GET", &format!("/?token={tok}"), &[], "");
    assert_eq!(first.status, 303);
    let cookie = set_cookie(&first);
    assert!(header(&first, "Set-Cookie").is_some_and(|c| c.contains("HttpOnly") && c.contains("SameSite=Strict")));
    let page = http(a, "GET", "/r/0", &[("Cookie", &cookie)], "");
    assert_eq!(page.status, 200);
    let csp = header(&page, "Content-Security-Policy").expect("CSP");
    // Scripts from the appliance only (its keyboard script), never inline or from elsewhere.
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self';"), "{csp}");
    assert!(!csp.split(';').any(|d| d.contains("script-src") && d.contains("unsafe")), "{csp}");
    assert!(!page.body.contains("<script"), "no script while read-only");
    let js = http(a, "GET", "/review.js", &[("Cookie", &cookie)], "");
    assert_eq!((js.status, header(&js, "Content-Type")), (200, Some("text/javascript; charset=utf-8")));
    assert!(js.body.contains("requestSubmit") && !js.body.contains("http"), "the keyboard script, nothing external");
    assert_eq!(http(a, "GET", "/review.js", &[], "").status, 401);
    let signed_in = format!("{cookie}; lk_reviewer=dr-x");
    let editable = http(a, "GET", "/r/0", &[("Cookie", &signed_in)], "");
    assert!(editable.body.contains("<script src=\"/review.js\"></script>"), "the script by address only");
    assert_eq!(editable.body.matches("<script").count(), 1, "no inline script");
    assert!(editable.body.contains("tabindex=\"0\" data-cell=") && editable.body.contains("data-key="));
    let crop = http(a, "GET", "/r/0/crop/0-0", &[("Cookie", &cookie)], "");
    assert_eq!((crop.status, header(&crop, "Content-Type")), (200, Some("image/png")));
    // Token but no reviewer signed in: read-only. Signed in but no form token,
    // or from another origin: refused (CSRF).
    let csrf = csrf(&page.body);
    assert_eq!(http(a, "POST", "/r/0/signoff", &[("Cookie", &cookie)], &format!("csrf={csrf}")).status, 403);
    let both = format!("{cookie}; lk_reviewer=dr-x");
    assert_eq!(http(a, "POST", "/r/0/signoff", &[("Cookie", &both)], "").status, 403);
    assert_eq!(http(a, "POST", "/r/0/signoff", &[("Cookie", &both)], "csrf=00").status, 403);
    let evil = [("Cookie", both.as_str()), ("Origin", "http://evil.example")];
    assert_eq!(http(a, "POST", "/r/0/signoff", &evil, &format!("csrf={csrf}")).status, 403);
    assert!(!rep.join("review.jsonl").exists(), "a refused post changed the report");
    assert_eq!(http(a, "POST", "/r/0/signoff", &[("Cookie", &both)], &format!("csrf={csrf}")).status, 303);
    assert!(rep.join("review.jsonl").exists());
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json")
}

#[test]
fn a_scripted_review_is_logged_recounted_and_signed() {
    let dir = scratch("scripted");
    let rep = report(&dir);
    let state = dir.join("state");
    let before = read_json(&rep.join("results.json"));
    let s0 = &before["summary"];
    let (cells0, blasts0) = (s0["cells"].as_u64().unwrap(), s0["blasts"].as_u64().unwrap());
    assert!(blasts0 >= 2, "{s0}");
    // The first blast and the first non-blast counted cell, by their ids.
    let mut blast = None;
    let mut other = None;
    for (f, img) in before["images"].as_array().expect("images").iter().enumerate() {
        for (k, c) in img["cells"].as_array().expect("cells").iter().enumerate() {
            let id = format!("{f}-{k}");
            if c["blast"] == true && blast.is_none() {
                blast = Some(id);
            } else if c["blast"] == false && other.is_none() {
                other = Some(id);
            }
        }
    }
    let (blast, other) = (blast.expect("a blast"), other.expect("a non-blast"));

    let server = start(&state, &["--listen", "127.0.0.1:0"], &[&rep]);
    let a = server.addr;
    let cookie = set_cookie(&http(a, "GET", &format!("/?token={}", token(&state)), &[], ""));
    let page = http(a, "GET", "/r/0", &[("Cookie", &cookie)], "");
    // The gallery: blasts first.
    let blasts_at = page.body.find("<h2>Blasts").expect("blast group");
    let others_at = page.body.find("<h2>NGS").or_else(|| page.body.find("<h2>Unidentified")).expect("other groups");
    assert!(blasts_at < others_at);
    assert!(page.body.contains("nucleus "), "morphometry shown");
    // The field the blast came from, its box drawn in red.
    assert!(page.body.contains(&format!("href=\"/r/0/field/{blast}\"")));
    // HTTP/1.0: the answer comes whole, not in chunks.
    let mut s = TcpStream::connect(a).expect("connect");
    write!(s, "GET /r/0/field/{blast} HTTP/1.0\r\nHost: {a}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    assert!(
        raw.starts_with(b"HTTP/1.0 200") || raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw[..raw.len().min(200)])
    );
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    let img = image::load_from_memory(&raw[at..]).expect("a PNG").to_rgb8();
    let (f, k) = blast.split_once('-').expect("id");
    let b = &before["images"][f.parse::<usize>().expect("f")]["cells"][k.parse::<usize>().expect("k")]["bbox"];
    let (x0, y0) = (b[0].as_u64().expect("x0") as u32, b[1].as_u64().expect("y0") as u32);
    assert_eq!(img.get_pixel(x0 + 1, y0 + 1).0, [220, 0, 30], "the cell's box in red");
    let csrf = csrf(&page.body);
    let signin =
        http(a, "POST", "/signin", &[("Cookie", &cookie)], &format!("csrf={csrf}&reviewer=Dr+J%C3%B6+Doe&back=/r/0"));
    assert_eq!(signin.status, 303);
    let c = format!("{cookie}; {}", set_cookie(&signin));
    let post =
        |path: &str, body: &str| http(a, "POST", path, &[("Cookie", &c), ("Origin", &format!("http://{a}"))], body);
    assert_eq!(post(&format!("/r/0/cell/{blast}"), &format!("csrf={csrf}&action=reclassify&class=NGS")).status, 303);
    assert_eq!(post(&format!("/r/0/cell/{other}"), &format!("csrf={csrf}&action=not_leukocyte")).status, 303);
    assert_eq!(post("/r/0/cell/99-0", &format!("csrf={csrf}&action=not_leukocyte")).status, 400);
    assert_eq!(post(&format!("/r/0/cell/{other}"), &format!("csrf={csrf}&action=reclassify&class=PLT")).status, 400);
    assert_eq!(post("/r/0/signoff", &format!("csrf={csrf}")).status, 303);

    // review.jsonl: what was done, by whom, in order.
    let log: Vec<Value> = std::fs::read_to_string(rep.join("review.jsonl"))
        .expect("review.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let kinds: Vec<&str> = log.iter().map(|l| l["t"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, ["open", "reclassify", "not_leukocyte", "sign_off"]);
    assert_eq!((log[1]["cell"].as_str(), log[1]["class"].as_str()), (Some(blast.as_str()), Some("NGS")));
    assert_eq!(log[1]["call"]["blast"], false);
    assert_eq!(log[2]["cell"].as_str(), Some(other.as_str()));
    assert!(log[1..].iter().all(|l| l["by"] == "Dr Jö Doe"));

    // results.json: the classified summary unchanged, the reviewed one recounted.
    let after = read_json(&rep.join("results.json"));
    assert_eq!(after["summary"], before["summary"]);
    let r = &after["review"];
    assert_eq!((r["status"].as_str(), r["reviewer"].as_str()), (Some("signed"), Some("Dr Jö Doe")));
    let rs = &r["summary"];
    assert_eq!(rs["cells"].as_u64(), Some(cells0 - 1), "one cell is not a leukocyte");
    assert_eq!(rs["blasts"].as_u64(), Some(blasts0 - 1), "one blast is a neutrophil");
    assert_eq!(
        rs["not_counted"]["not_leukocytes"].as_u64(),
        Some(s0["not_counted"]["not_leukocytes"].as_u64().unwrap() + 1)
    );
    let pct = 100.0 * (blasts0 - 1) as f64 / (cells0 - 1) as f64;
    assert!((rs["blast_percent"].as_f64().unwrap() - pct).abs() < 1e-9);
    assert_eq!(r["changes"].as_array().map(Vec::len), Some(2));

    // report.html: verified, both counts, the reviewer and the time.
    let html = std::fs::read_to_string(rep.join("report.html")).expect("report.html");
    assert!(html.contains("VERIFIED") && !html.contains("PRELIMINARY"));
    assert!(html.contains("as classified") && html.contains("as reviewed"));
    assert!(html.contains("Dr Jö Doe"));
    assert!(html.contains(&format!("Blasts: {} of {} leukocytes", blasts0 - 1, cells0 - 1)));
    assert!(html.contains(&r["signed_at"].as_str().expect("signed_at").replace('T', " ").replace('Z', " UTC")));
    common::validate_fhir(&rep.join("report.fhir.json"), "final");
    common::validate_hl7(&rep.join("report.hl7"), "F", None);

    // Killed and started again: everything acknowledged is there.
    drop(server);
    let again = start(&state, &["--listen", "127.0.0.1:0"], &[&rep]);
    let page = http(again.addr, "GET", "/r/0", &[("Cookie", &cookie)], "");
    assert!(page.body.contains("SIGNED") && page.body.contains("Dr Jö Doe"));
    // A change after the sign-off makes the report preliminary again.
    let p = http(
        again.addr,
        "POST",
        &format!("/r/0/cell/{other}"),
        &[("Cookie", &c)],
        &format!("csrf={csrf}&action=reclassify&class=LYT"),
    );
    assert_eq!(p.status, 303);
    let html = std::fs::read_to_string(rep.join("report.html")).expect("report.html");
    assert!(html.contains("PRELIMINARY"));
    common::validate_fhir(&rep.join("report.fhir.json"), "preliminary");
    common::validate_hl7(&rep.join("report.hl7"), "P", None);
    drop(again);
    std::fs::remove_dir_all(&dir).ok();
}

/// SIGKILL at random instants while a reviewer changes cells and signs off:
/// every change and sign-off the page acknowledged is in review.jsonl after a
/// restart, in order, and results.json and report.html are always whole.
#[test]
fn sigkill_during_review_loses_nothing_acknowledged() {
    let dir = scratch("kill");
    let rep = report(&dir);
    let state = dir.join("state");
    let tok = token(&state);
    let ids: Vec<String> = {
        let r = leukoscope::review::ReportDir::open(&rep).expect("report");
        (0..r.fields.len())
            .flat_map(|f| {
                let n = r.fields[f].cells.len();
                (0..n).map(move |k| format!("{f}-{k}"))
            })
            .collect()
    };
    assert!(ids.len() >= 4);
    let classes = ["NGS", "LYT", "MON", "MYO", "EOS"];
    // A small LCG: random enough to spread the kills, reproducible from the seed printed.
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    println!("seed {seed}");
    let mut rnd = move |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut acknowledged: Vec<(String, String)> = Vec::new(); // (kind, detail)
    let mut post_no = 0u64;
    for round in 0..12 {
        let server = start(&state, &["--listen", "127.0.0.1:0"], &[&rep]);
        let a = server.addr;
        let cookie = set_cookie(&http(a, "GET", &format!("/?token={tok}"), &[], ""));
        let csrf = csrf(&http(a, "GET", "/", &[("Cookie", &cookie)], "").body);
        // Each change takes some milliseconds (fsync, then the reports rewritten).
        let delay = std::time::Duration::from_millis(10 + rnd(300));
        let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
        let plan: Vec<(String, String)> = (0..40)
            .map(|i| {
                post_no += 1;
                if i % 3 == 2 {
                    ("sign_off".to_string(), format!("k{post_no}"))
                } else {
                    let id = &ids[rnd(ids.len() as u64) as usize];
                    ("reclassify".to_string(), format!("{id}={}", classes[rnd(classes.len() as u64) as usize]))
                }
            })
            .collect();
        let worker = std::thread::spawn(move || {
            for (kind, detail) in plan {
                let (path, body, reviewer) = if kind == "sign_off" {
                    ("/r/0/signoff".to_string(), format!("csrf={csrf}"), detail.clone())
                } else {
                    let (id, class) = detail.split_once('=').expect("id=class");
                    (format!("/r/0/cell/{id}"), format!("csrf={csrf}&action=reclassify&class={class}"), "dr-k".into())
                };
                let c = format!("{cookie}; lk_reviewer={reviewer}");
                let Ok(mut s) = TcpStream::connect(a) else { return };
                let req = format!(
                    "POST {path} HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\nCookie: {c}\r\n\
                     Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(req.as_bytes()).is_err() {
                    return;
                }
                let mut raw = String::new();
                let _ = s.read_to_string(&mut raw);
                if raw.starts_with("HTTP/1.1 303") {
                    let _ = tx.send((kind, detail));
                } else {
                    return;
                }
            }
        });
        std::thread::sleep(delay);
        drop(server); // SIGKILL
        worker.join().expect("client thread");
        acknowledged.extend(rx.try_iter());
        // Everything acknowledged so far is in the log, in order.
        let r = leukoscope::review::ReportDir::open(&rep).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let logged: Vec<(String, String)> = r
            .log
            .iter()
            .filter_map(|e| match e {
                leukoscope::review::ReviewEntry::SignOff { by, .. } => Some(("sign_off".into(), by.clone())),
                leukoscope::review::ReviewEntry::Reclassify { cell, class, .. } => {
                    Some(("reclassify".into(), format!("{cell}={class}")))
                }
                _ => None,
            })
            .collect();
        let mut it = logged.iter();
        for ack in &acknowledged {
            assert!(it.any(|l| l == ack), "round {round}: acknowledged {ack:?} missing from review.jsonl");
        }
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(rep.join("results.json")).expect("results"))
            .unwrap_or_else(|e| panic!("round {round}: results.json is not whole: {e}"));
        assert!(doc["summary"]["cells"].as_u64().is_some());
        let html = std::fs::read_to_string(rep.join("report.html")).expect("report.html");
        assert!(html.trim_end().ends_with("</html>"), "round {round}: report.html is not whole");
    }
    assert!(acknowledged.iter().any(|(k, _)| k == "sign_off"), "no sign-off was acknowledged: kills too early");
    println!("{} acknowledged changes and sign-offs survived 12 kills", acknowledged.len());
    std::fs::remove_dir_all(&dir).ok();
}

/// A `run` configuration serving the review page beside the count
/// (`[review] with_run`), frames replayed in a loop as fast as analysed.
fn run_config(dir: &Path, listen: &str) -> PathBuf {
    let p = dir.join("run.toml");
    let text = format!(
        "[session]\nstate_dir = {:?}\n\n[source]\nkind = \"replay\"\nreplay_fps = 0.0\nreplay_loop = true\n\n\
         [display]\nkind = \"png\"\npng_path = {:?}\n\n[review]\nwith_run = true\nlisten = {listen:?}\n",
        dir.join("state"),
        dir.join("screen.png")
    );
    std::fs::write(&p, text).expect("config");
    p
}

/// The report rows of the review page's list.
fn listed(page: &str) -> usize {
    page.matches("<tr><td><a href=\"/r/").count()
}

/// `run` with `[review] with_run`: the page of the state folder's sessions is
/// served while the appliance counts. Without the token a request is refused;
/// with it the list shows each session once finished. A client that never
/// finishes its request, and requests all along, do not stop the count: the
/// scripted buttons after the page started (a second START and FINISH) all
/// happen.
#[test]
fn run_serves_the_review_page_beside_the_count() {
    let dir = scratch("with-run");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = run_config(&dir, &addr.to_string());
    let log = dir.join("run.log");
    let child = common::scripted_run(&dir, &config, "1 start\n40 finish\n50 start\n90 finish\n", 20)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("run");
    let mut run = Server { child, addr };
    let t0 = std::time::Instant::now();
    let wait = std::time::Duration::from_secs(120);
    while TcpStream::connect(addr).is_err() {
        assert!(run.child.try_wait().expect("wait").is_none(), "run ended: {}", std::fs::read_to_string(&log).unwrap());
        assert!(t0.elapsed() < wait, "no review page");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A client that sends half a request and waits, all through the test.
    let mut stalled = TcpStream::connect(addr).expect("connect");
    stalled.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").expect("half a request");
    assert_eq!(http(addr, "GET", "/", &[], "").status, 401, "no token, no page");
    assert_eq!(http(addr, "GET", "/r/0", &[], "").status, 401);
    assert_eq!(http(addr, "POST", "/r/0/signoff", &[("Cookie", "lk_reviewer=x")], "csrf=x").status, 401);
    let state = dir.join("state");
    let tok = token(&state);
    let cookie = set_cookie(&http(addr, "GET", &format!("/?token={tok}"), &[], ""));
    // The list grows as sessions finish, while requests come all along.
    let page = loop {
        assert_eq!(http(addr, "GET", "/", &[], "").status, 401);
        let page = http(addr, "GET", "/", &[("Cookie", &cookie)], "");
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(header(&page, "Content-Security-Policy").is_some_and(|c| c.contains("default-src 'none'")));
        if listed(&page.body) == 2 {
            break page;
        }
        assert!(run.child.try_wait().expect("wait").is_none(), "run ended: {}", std::fs::read_to_string(&log).unwrap());
        assert!(
            t0.elapsed() < wait,
            "sessions listed: {}\n{}",
            listed(&page.body),
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(page.body.contains("S0001") && page.body.contains("S0002"), "{}", page.body);
    let gallery = http(addr, "GET", "/r/0", &[("Cookie", &cookie)], "");
    assert!(gallery.status == 200 && gallery.body.contains("Review: sample S0001"), "{}", gallery.body);
    // Both sessions' reports, and the count still going (the loop replays on).
    for s in std::fs::read_dir(state.join("sessions")).expect("sessions").flatten() {
        assert!(s.path().join("results.json").is_file() && s.path().join("report.hl7").is_file());
    }
    assert!(run.child.try_wait().expect("wait").is_none(), "the count goes on");
    drop(stalled);
    drop(run);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains(&format!("review page at http://{addr}/")), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A review page that cannot start (its port taken) is logged, and the count
/// goes on to its report.
#[test]
fn run_counts_on_when_the_review_page_cannot_start() {
    let dir = scratch("with-run-busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let config = run_config(&dir, &taken.local_addr().expect("addr").to_string());
    let o =
        common::scripted_run(&dir, &config, "1 start\n40 finish\n", 20).arg("--until-finished").output().expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("review page not started") && err.contains("the count goes on"), "{err}");
    let sessions: Vec<PathBuf> =
        std::fs::read_dir(dir.join("state/sessions")).expect("sessions").flatten().map(|e| e.path()).collect();
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].join("results.json").is_file(), "the session's report");
    drop(taken);
    std::fs::remove_dir_all(&dir).ok();
}
