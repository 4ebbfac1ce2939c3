//! `leukoscope review`: the review page, served by the appliance itself.
//!
//! Security, for a box on a clinic's network: it listens on 127.0.0.1 unless
//! the configuration names another address (`[review] listen`); every request
//! needs the access token (kept in the state folder, shown by
//! `leukoscope review --print-token`; no default password), given once as
//! `?token=` and then held in an HttpOnly, SameSite=Strict cookie; changes need
//! a signed-in reviewer name and a form token (CSRF) and a same-origin Origin
//! header when the browser sends one; every page carries a strict
//! Content-Security-Policy: no inline script, nothing from elsewhere; the one
//! script is the appliance's own `/review.js` (keyboard reclassification; the
//! page works without it). Routine log lines name report numbers and cell
//! ids, never sample IDs or reviewers.

use crate::classify::count::{Call, CallRules};
use crate::classify::model::ModelCard;
use crate::config::InvalidValue;
use crate::report::html::esc;
use crate::review::{ReportDir, ReviewEntry, ReviewError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tiny_http::{Header, Method, Request, Response};

mod http;
mod page;

use http::{cookie, form, get, header, same};
pub use http::{url_decode, url_encode};
use page::html;

/// `[review]` in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// Address the review page listens on. Default "127.0.0.1:8080": this
    /// machine only. Another address (e.g. "0.0.0.0:8080") opens it to the
    /// network; every request needs the token either way.
    pub listen: String,
    /// `leukoscope run` serves the review page too, of the state folder's
    /// finished sessions (each listed once its report is written), from a
    /// thread of its own: the count never waits for it, and a page that
    /// cannot start or fails is logged while the count goes on. Same address,
    /// token and rules as `leukoscope review`. Default false.
    pub with_run: bool,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        ReviewConfig { listen: "127.0.0.1:8080".into(), with_run: false }
    }
}

impl ReviewConfig {
    pub fn validate(&self) -> Result<(), InvalidValue> {
        match self.listen.parse::<SocketAddr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(InvalidValue::new("review.listen", &self.listen, "must be IP:PORT, e.g. \"127.0.0.1:8080\"")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("review token {path}")]
    Token { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {addr}: {why}")]
    Listen { addr: String, why: String },
    #[error(transparent)]
    Review(#[from] ReviewError),
}

/// The access token of this appliance: made once (16 random bytes, hex) and
/// kept in `<state>/review-token`, readable by its owner only.
pub fn token(state_dir: &Path) -> Result<String, ServerError> {
    let path = state_dir.join("review-token");
    let err = |source| ServerError::Token { path: path.clone(), source };
    if let Ok(t) = std::fs::read_to_string(&path) {
        if t.trim().len() >= 32 {
            return Ok(t.trim().to_string());
        }
    }
    std::fs::create_dir_all(state_dir).map_err(err)?;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(err)?;
    let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&path).map_err(err)?;
    std::io::Write::write_all(&mut f, format!("{t}\n").as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(t)
}

/// The review application: the report folders and what a change may set.
pub struct Review {
    pub reports: Vec<ReportDir>,
    token: String,
    csrf: String,
    /// Leukocyte classes a reviewer may pick: (code, name).
    classes: Vec<(String, String)>,
    /// The key that picks each class on the keyboard ([`class_keys`]).
    keys: Vec<char>,
    rules: CallRules,
    /// Beside `run`: the sessions folder, looked at again on every request
    /// for sessions finished since.
    sessions: Option<PathBuf>,
}

const CSP: &str = "default-src 'none'; script-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The keyboard script, `GET /review.js` (static; no inline script anywhere).
const SCRIPT: &str = include_str!("review.js");

/// The key that marks a focused cell as not a leukocyte.
pub const NOT_LEUKOCYTE_KEY: char = 'x';

/// One key per class, unique, for keyboard reclassification: the first letter
/// of the class's code not taken by an earlier class, else of its name, else
/// the first free letter, else a digit (classes in the card's order;
/// [`NOT_LEUKOCYTE_KEY`] is never given to a class). For the shipped model: BAS b,
/// EBO e, EOS o, KSC k, LYA l, LYT y, MMZ m, MOB n, MON c, MYB t, MYO a, NGB g,
/// NGS s, PMB p, PMO r.
pub fn class_keys(classes: &[(String, String)]) -> Vec<char> {
    let mut taken = vec![NOT_LEUKOCYTE_KEY];
    let mut keys = Vec::new();
    for (code, name) in classes {
        let pick = code
            .chars()
            .chain(name.chars())
            .chain('a'..='z')
            .chain('1'..='9')
            .map(|c| c.to_ascii_lowercase())
            .find(|c| c.is_ascii_alphanumeric() && !taken.contains(c));
        // More than 34 classes: the rest have no key (their forms still work).
        let k = pick.unwrap_or(' ');
        taken.push(k);
        keys.push(k);
    }
    keys
}

/// A response and its status, before the common headers.
type Reply = (u16, &'static str, Vec<u8>, Vec<(String, String)>);

fn page(status: u16, body: String) -> Reply {
    (status, "text/html; charset=utf-8", body.into_bytes(), vec![])
}

fn redirect(to: &str, extra: Vec<(String, String)>) -> Reply {
    let mut h = vec![("Location".to_string(), to.to_string())];
    h.extend(extra);
    (303, "text/plain", b"see other".to_vec(), h)
}

impl Review {
    pub fn new(reports: Vec<ReportDir>, token: String, card: &ModelCard, rules: CallRules) -> Review {
        let csrf =
            Sha256::digest(format!("leukoscope-csrf/{token}").as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        let classes: Vec<(String, String)> =
            card.classes.iter().filter(|c| c.leukocyte).map(|c| (c.code.clone(), c.name.clone())).collect();
        let keys = class_keys(&classes);
        Review { reports, token, csrf, classes, keys, rules, sessions: None }
    }

    /// Serves until the process ends. A request whose handling panics is
    /// answered by nobody and logged; the next one is served.
    pub fn serve(&mut self, server: &tiny_http::Server) -> Result<(), ServerError> {
        loop {
            let req = match server.recv() {
                Ok(r) => r,
                Err(e) => {
                    log::warn!("review: {e}");
                    // Never a busy loop beside the appliance's count.
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    continue;
                }
            };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle(req))).is_err() {
                log::error!("review: a request failed; the page goes on");
            }
        }
    }

    /// Adds the sessions finished since (a folder with its results.json,
    /// which the report's writing renames into place last).
    fn refresh(&mut self, sessions: &Path) {
        let Ok(entries) = std::fs::read_dir(sessions) else { return };
        let mut dirs: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.join("results.json").is_file()).collect();
        dirs.sort();
        for d in dirs {
            if self.reports.iter().any(|r| r.dir == d) {
                continue;
            }
            match ReportDir::open(&d) {
                Ok(r) => {
                    self.reports.push(r);
                    // The report number only: folder names carry sample IDs.
                    log::info!("review: report {} added", self.reports.len() - 1);
                }
                Err(e) => log::warn!("review: a finished session cannot be opened: {}", crate::error_text(&e)),
            }
        }
    }

    /// Answers one request.
    pub fn handle(&mut self, mut req: Request) {
        if let Some(sessions) = self.sessions.clone() {
            self.refresh(&sessions);
        }
        let reply = self.route(&mut req);
        let (status, ctype, body, extra) = reply;
        let mut resp = Response::from_data(body).with_status_code(status);
        let headers = [
            ("Content-Type", ctype.to_string()),
            ("Content-Security-Policy", CSP.to_string()),
            ("X-Content-Type-Options", "nosniff".into()),
            ("X-Frame-Options", "DENY".into()),
            // Not no-referrer: with it Chromium sends `Origin: null` on form posts, which the origin check refuses.
            ("Referrer-Policy", "same-origin".into()),
            ("Cache-Control", "no-store".into()),
        ];
        for (k, v) in headers.iter().map(|(k, v)| (k.to_string(), v.clone())).chain(extra) {
            if let Ok(h) = Header::from_bytes(k.as_bytes(), v.as_bytes()) {
                resp.add_header(h);
            }
        }
        if let Err(e) = req.respond(resp) {
            log::warn!("review: answering: {e}");
        }
    }

    fn route(&mut self, req: &mut Request) -> Reply {
        let url = req.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let path = path.to_string();
        let query = form(query);
        // The token: from the cookie, or once from the address (then kept in the cookie).
        let with_cookie = cookie(req, "lk_token").is_some_and(|t| same(&t, &self.token));
        if !with_cookie {
            if *req.method() == Method::Get && get(&query, "token").is_some_and(|t| same(t, &self.token)) {
                let c = format!("lk_token={}; Path=/; HttpOnly; SameSite=Strict", self.token);
                return redirect(&path, vec![("Set-Cookie".into(), c)]);
            }
            log::warn!("review: refused {} {path}: no valid token", req.method());
            return page(
                401,
                html(
                    "Token required",
                    "<h1>Token required</h1><p>Open the address with <code>?token=</code> and the token that \
                     <code>leukoscope review --print-token</code> prints on the appliance.</p>",
                ),
            );
        }
        let reviewer = cookie(req, "lk_reviewer").filter(|r| !r.trim().is_empty());
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        if *req.method() == Method::Post {
            let body = match self.post_body(req) {
                Ok(b) => b,
                Err(r) => return r,
            };
            return self.post(&parts, &body, reviewer);
        }
        if *req.method() != Method::Get {
            return page(405, html("Method not allowed", "<h1>Method not allowed</h1>"));
        }
        match parts.as_slice() {
            [""] => self.index(reviewer.as_deref()),
            ["review.js"] => (200, "text/javascript; charset=utf-8", SCRIPT.as_bytes().to_vec(), vec![]),
            ["r", n] => self.with_report(n, |s, i| s.gallery(i, reviewer.as_deref())),
            ["r", n, "report.html"] => {
                self.with_report(n, |s, i| match std::fs::read(s.reports[i].dir.join("report.html")) {
                    Ok(b) => (200, "text/html; charset=utf-8", b, vec![]),
                    Err(_) => page(404, html("No report", "<h1>No report.html yet</h1>")),
                })
            }
            ["r", n, "crop", id] => self.with_report(n, |s, i| {
                let r = &s.reports[i];
                // Only crops the report names: the path never comes from the request.
                match r.cell(id).and_then(|c| c.crop.clone()).and_then(|p| std::fs::read(r.dir.join(p)).ok()) {
                    Some(png) => (200, "image/png", png, vec![]),
                    None => page(404, html("No crop", "<h1>No such crop</h1>")),
                }
            }),
            ["r", n, "field", id] => self.with_report(n, |s, i| match s.field_png(i, id) {
                Some(png) => (200, "image/png", png, vec![]),
                None => page(404, html("No field", "<h1>The field image is not on this machine</h1>")),
            }),
            _ => page(404, html("Not found", "<h1>Not found</h1>")),
        }
    }

    /// The field a cell came from, with every cell's box (the cell's in red),
    /// when the field's image is still where it was analysed (camera frames
    /// are not kept).
    fn field_png(&self, i: usize, id: &str) -> Option<Vec<u8>> {
        let r = &self.reports[i];
        let (f, k) = id.split_once('-')?;
        let (f, k): (usize, usize) = (f.parse().ok()?, k.parse().ok()?);
        let rec = r.fields.get(f)?;
        let mut img = crate::input::load_rgb(Path::new(&rec.path)).ok()?;
        if img.dimensions() != (rec.width, rec.height) {
            return None;
        }
        for (j, c) in rec.cells.iter().chain(&rec.not_counted).enumerate() {
            let colour = if j == k { image::Rgb([220, 0, 30]) } else { image::Rgb([40, 40, 40]) };
            let [x0, y0, x1, y1] = c.bbox;
            for t in 0..3u32 {
                for x in x0..x1.min(rec.width) {
                    for y in [y0 + t, y1.saturating_sub(1 + t)] {
                        if y < rec.height {
                            img.put_pixel(x, y, colour);
                        }
                    }
                }
                for y in y0..y1.min(rec.height) {
                    for x in [x0 + t, x1.saturating_sub(1 + t)] {
                        if x < rec.width {
                            img.put_pixel(x, y, colour);
                        }
                    }
                }
            }
        }
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).ok()?;
        Some(png.into_inner())
    }

    /// The form body of a POST, after the cross-site checks.
    fn post_body(&self, req: &mut Request) -> Result<Vec<(String, String)>, Reply> {
        let forbidden = |why: &str| page(403, html("Refused", &format!("<h1>Refused</h1><p>{}</p>", esc(why))));
        if let (Some(origin), Some(host)) = (header(req, "Origin"), header(req, "Host")) {
            if origin != format!("http://{host}") {
                log::warn!("review: refused a cross-origin post");
                return Err(forbidden("cross-origin request"));
            }
        }
        let mut body = String::new();
        if req.as_reader().take(16 * 1024).read_to_string(&mut body).is_err() {
            return Err(page(400, html("Bad request", "<h1>Bad request</h1>")));
        }
        let f = form(&body);
        if !get(&f, "csrf").is_some_and(|c| same(c, &self.csrf)) {
            log::warn!("review: refused a post without the form token");
            return Err(forbidden("the form token is missing or wrong: reload the page"));
        }
        Ok(f)
    }

    fn with_report(&self, n: &str, f: impl FnOnce(&Self, usize) -> Reply) -> Reply {
        match n.parse::<usize>() {
            Ok(i) if i < self.reports.len() => f(self, i),
            _ => page(404, html("Not found", "<h1>No such report</h1>")),
        }
    }

    fn post(&mut self, parts: &[&str], f: &[(String, String)], reviewer: Option<String>) -> Reply {
        if parts == ["signin"] {
            let name = get(f, "reviewer").unwrap_or("").trim().to_string();
            if name.is_empty() {
                return page(400, html("Name needed", "<h1>A reviewer name or ID is needed</h1>"));
            }
            let c = format!("lk_reviewer={}; Path=/; HttpOnly; SameSite=Strict", url_encode(&name));
            return redirect(
                get(f, "back").filter(|b| b.starts_with("/r/")).unwrap_or("/"),
                vec![("Set-Cookie".into(), c)],
            );
        }
        let Some(by) = reviewer else {
            return page(
                403,
                html("Sign in", "<h1>Sign in with your name or ID first</h1><p><a href=\"/\">back</a></p>"),
            );
        };
        let (i, entry, back) = match parts {
            ["r", n, "signoff"] => {
                let Some(i) = n.parse::<usize>().ok().filter(|i| *i < self.reports.len()) else {
                    return page(404, html("Not found", "<h1>No such report</h1>"));
                };
                (i, ReviewEntry::SignOff { by, unix_time: crate::report::files::unix_time() }, format!("/r/{i}"))
            }
            ["r", n, "cell", id] => {
                let Some(i) = n.parse::<usize>().ok().filter(|i| *i < self.reports.len()) else {
                    return page(404, html("Not found", "<h1>No such report</h1>"));
                };
                let unix_time = crate::report::files::unix_time();
                let entry = match get(f, "action") {
                    Some("not_leukocyte") => ReviewEntry::NotLeukocyte { cell: id.to_string(), by, unix_time },
                    Some("reclassify") => {
                        let class = get(f, "class").unwrap_or("");
                        let Some((code, name)) = self.classes.iter().find(|(c, _)| c == class) else {
                            return page(400, html("Bad class", "<h1>Not a class of this model</h1>"));
                        };
                        let call = Call::Cell {
                            code: code.clone(),
                            blast: self.rules.blast_classes.contains(code),
                            abnormal: !self.rules.normal_classes.contains(code),
                        };
                        ReviewEntry::Reclassify {
                            cell: id.to_string(),
                            class: code.clone(),
                            label: name.clone(),
                            call,
                            by,
                            unix_time,
                        }
                    }
                    _ => return page(400, html("Bad request", "<h1>Unknown action</h1>")),
                };
                (i, entry, format!("/r/{i}#c{id}"))
            }
            _ => return page(404, html("Not found", "<h1>Not found</h1>")),
        };
        let report = &mut self.reports[i];
        match report.append(entry) {
            Ok(()) => {
                // The report number only: folder names carry sample IDs.
                log::info!("review: report {i} changed");
                redirect(&back, vec![])
            }
            Err(e @ (ReviewError::NoCell(_) | ReviewError::CutByBorder(_) | ReviewError::NoReviewer)) => {
                page(400, html("Refused", &format!("<h1>Refused</h1><p>{}</p>", esc(&crate::error_text(&e)))))
            }
            Err(e) => {
                log::error!("review: {}", crate::error_text(&e));
                page(500, html("Not saved", &format!("<h1>NOT SAVED</h1><p>{}</p>", esc(&crate::error_text(&e)))))
            }
        }
    }
}

/// The review page beside `leukoscope run` (`[review] with_run`): the finished
/// sessions of `state_dir`, served from a thread of its own, so that the count
/// never waits for a browser. A page that cannot start is logged and `None`
/// returned: the count goes on without it. Returns the address listened on.
pub fn spawn_beside_run(
    config: &ReviewConfig,
    state_dir: &Path,
    card: &ModelCard,
    rules: CallRules,
) -> Option<SocketAddr> {
    let started = token(state_dir).and_then(|t| listen(&config.listen).map(|(server, addr)| (t, server, addr)));
    let (token, server, addr) = match started {
        Ok(s) => s,
        Err(e) => {
            log::error!("review page not started: {}; the count goes on without it", crate::error_text(&e));
            return None;
        }
    };
    let mut review = Review::new(Vec::new(), token, card, rules);
    review.sessions = Some(state_dir.join("sessions"));
    let spawned = std::thread::Builder::new().name("review".into()).spawn(move || {
        let _ = review.serve(&server);
    });
    match spawned {
        Ok(_) => Some(addr),
        Err(e) => {
            log::error!("review page not started: {e}; the count goes on without it");
            None
        }
    }
}

/// Opens the server on `listen`; returns it and the address it got (a port 0 is chosen by the system).
pub fn listen(listen: &str) -> Result<(tiny_http::Server, SocketAddr), ServerError> {
    let server =
        tiny_http::Server::http(listen).map_err(|e| ServerError::Listen { addr: listen.into(), why: e.to_string() })?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| ServerError::Listen { addr: listen.into(), why: "not an IP address".into() })?;
    Ok((server, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(url_decode("a%20b+c%2Fd%"), "a b c/d%");
        assert_eq!(url_decode(&url_encode("Dr. Müller; x=1")), "Dr. Müller; x=1");
        let f = form("csrf=abc&reviewer=J%C3%B6+D&empty=");
        assert_eq!(get(&f, "reviewer"), Some("Jö D"));
        assert_eq!(get(&f, "empty"), Some(""));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn one_key_per_class() {
        let card = ModelCard::load(&crate::classify::model::default_card_path()).expect("shipped card");
        let classes: Vec<(String, String)> =
            card.classes.iter().filter(|c| c.leukocyte).map(|c| (c.code.clone(), c.name.clone())).collect();
        let keys = class_keys(&classes);
        let mut unique = keys.clone();
        unique.push(NOT_LEUKOCYTE_KEY);
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len() + 1, "{keys:?}");
        assert!(keys.iter().all(char::is_ascii_lowercase), "{keys:?}");
        // As documented on class_keys.
        let doc: Vec<String> = classes.iter().zip(&keys).map(|((c, _), k)| format!("{c} {k}")).collect();
        assert_eq!(
            doc.join(", "),
            "BAS b, EBO e, EOS o, KSC k, LYA l, LYT y, MMZ m, MOB n, MON c, MYB t, MYO a, NGB g, NGS s, PMB p, PMO r"
        );
    }

    #[test]
    fn listens_on_this_machine_only_by_default() {
        let c = ReviewConfig::default();
        let addr: SocketAddr = c.listen.parse().expect("address");
        assert!(addr.ip().is_loopback());
        assert!(ReviewConfig { listen: "0.0.0.0".into(), with_run: false }.validate().is_err());
        assert!(!c.with_run, "run serves no page unless configured");
    }
}
