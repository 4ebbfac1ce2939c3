//! The review pages as HTML: the list of reports, a report's gallery and each
//! cell's figure with its reclassify form. Styles inline; no inline script:
//! the gallery loads `/review.js` for its keys, and works without it.

use super::{page, Reply, Review};
use crate::classify::count::Call;
use crate::report::html::{esc, human_time, STYLE};
use crate::review::cell_id;
use std::path::Path;

/// A whole page: `body` under the shared style.
pub(super) fn html(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title>\
         <style>{STYLE}form{{display:inline}}.cells figure{{width:11rem}}.cells img{{width:11rem;height:11rem}}\
         select,button,input{{font-size:1rem;margin:.1rem 0}}.changed{{color:#8a4b00;font-weight:bold}}\
         .cells select{{max-width:100%}}figure[data-cell]:focus{{outline:4px solid #1565c0;outline-offset:2px}}kbd{{border:1px solid #888;\
         border-radius:3px;padding:0 .25rem;font-size:.9em}}</style>\
         </head><body>{body}</body></html>",
        esc(title)
    )
}

impl Review {
    pub(super) fn signin_form(&self, reviewer: Option<&str>, back: &str) -> String {
        match reviewer {
            Some(r) => format!("<p>Signed in as <b>{}</b>.</p>", esc(r)),
            None => format!(
                "<form method=\"post\" action=\"/signin\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <input type=\"hidden\" name=\"back\" value=\"{}\"><label>Reviewer name or ID \
                 <input name=\"reviewer\" required autocomplete=\"username\"></label> <button>Sign in</button></form>\
                 <p>Read-only until you sign in.</p>",
                self.csrf,
                esc(back)
            ),
        }
    }

    pub(super) fn index(&self, reviewer: Option<&str>) -> Reply {
        let mut b = String::from("<h1>leukoscope review</h1>");
        b += &self.signin_form(reviewer, "/");
        b += "<table><tr><th>Report</th><th>Sample</th><th class=\"n\">Cells</th><th class=\"n\">Blasts</th><th>Status</th></tr>";
        for (i, r) in self.reports.iter().enumerate() {
            let s = &r.document["summary"];
            let status = match r.sign_off() {
                Some(s) => format!("signed by {}", esc(&s.reviewer)),
                None if r.changes().is_empty() => "preliminary".into(),
                None => "in review (not signed)".into(),
            };
            b += &format!(
                "<tr><td><a href=\"/r/{i}\">{}</a></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}%</td><td>{status}</td></tr>",
                esc(&r.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
                esc(&r.sample_id().unwrap_or_default()),
                s["cells"],
                s["blast_percent"].as_f64().unwrap_or(0.0),
            );
        }
        b += "</table>";
        b += &format!("<p class=\"disclaimer\">{}</p>", esc(crate::DISCLAIMER));
        page(200, html("leukoscope review", &b))
    }

    pub(super) fn gallery(&self, i: usize, reviewer: Option<&str>) -> Reply {
        let r = &self.reports[i];
        let threshold = r.document["summary"]["threshold_percent"].as_f64().unwrap_or(20.0);
        let classified = crate::report::files::summary_of(&r.fields, threshold);
        let reviewed = crate::report::files::summary_of(&r.reviewed(), threshold);
        let changes = r.changes();
        let sample = r.sample_id().unwrap_or_else(|| "(no sample ID)".into());
        let mut b =
            format!("<p><a href=\"/\">all reports</a> &middot; <a href=\"/r/{i}/report.html\">report.html</a></p>");
        b += &format!("<h1>Review: sample {}</h1>", esc(&sample));
        b += &match r.sign_off() {
            Some(s) => format!(
                "<p><span class=\"status final\">SIGNED</span> by {} at {}</p>",
                esc(&s.reviewer),
                human_time(s.unix_time)
            ),
            None => "<p><span class=\"status prelim\">PRELIMINARY</span> not signed</p>".into(),
        };
        let line = |s: &crate::classify::count::Summary| {
            format!(
                "{} leukocytes; blasts {} = {:.1}% (95% CI {:.1}&ndash;{:.1}%){}",
                s.cells,
                s.blasts,
                s.blast_percent,
                s.ci95[0],
                s.ci95[1],
                if s.flag { " <b class=\"blast\">AT OR ABOVE THRESHOLD</b>" } else { "" }
            )
        };
        b += &format!(
            "<table><tr><th>As classified</th><td>{}</td></tr><tr><th>As reviewed</th><td>{} ({} changed)</td></tr></table>",
            line(&classified),
            line(&reviewed),
            changes.len()
        );
        b += &self.signin_form(reviewer, &format!("/r/{i}"));
        if reviewer.is_some() {
            b += &format!(
                "<form method=\"post\" action=\"/r/{i}/signoff\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button>Sign off the reviewed count</button></form>",
                self.csrf
            );
            let keys: Vec<String> = self
                .classes
                .iter()
                .zip(&self.keys)
                .filter(|(_, k)| **k != ' ')
                .map(|((code, name), k)| format!("<kbd>{k}</kbd> {} <small>{}</small>", esc(code), esc(name)))
                .collect();
            b += &format!(
                "<p class=\"keys\">Keyboard: focus a cell (<kbd>Tab</kbd>, or click beside its picture) and press \
                 its new class's key: {}; <kbd>{}</kbd> not a leukocyte.</p>",
                keys.join(", "),
                super::NOT_LEUKOCYTE_KEY
            );
        }
        // Groups as the cells now count: blasts, unidentified, each class, not counted.
        let mut groups: std::collections::BTreeMap<(u8, String), Vec<String>> = Default::default();
        for (f, rec) in r.fields.iter().enumerate() {
            for (k, c) in rec.cells.iter().chain(&rec.not_counted).enumerate() {
                let id = cell_id(f, k);
                let call = changes.get(&id).map_or(&c.call, |ch| &ch.call);
                let key = match (call, c.reason.as_deref()) {
                    (_, Some("cut_by_border")) => (4, "Not counted: cut by the border".to_string()),
                    (Call::Cell { blast: true, code, .. }, _) => (1, format!("Blasts: {code}")),
                    (Call::Unidentified { .. }, _) => (2, "Unidentified".to_string()),
                    (Call::Cell { code, .. }, _) => (3, code.clone()),
                    (Call::NotLeukocyte { .. }, _) => (4, "Not leukocytes".to_string()),
                };
                groups.entry(key).or_default().push(id);
            }
        }
        for ((_, title), ids) in &groups {
            b += &format!("<h2>{} ({})</h2><div class=\"cells\">", esc(title), ids.len());
            for id in ids {
                b += &self.cell_figure(i, id, reviewer.is_some());
            }
            b += "</div>";
        }
        b += &format!("<p class=\"disclaimer\">{}</p>", esc(crate::DISCLAIMER));
        if reviewer.is_some() {
            b += "<script src=\"/review.js\"></script>";
        }
        page(200, html(&format!("Review {sample}"), &b))
    }

    pub(super) fn cell_figure(&self, i: usize, id: &str, can_edit: bool) -> String {
        let r = &self.reports[i];
        let Some(c) = r.cell(id) else { return String::new() };
        let changes = r.changes();
        let (f, _) = id.split_once('-').unwrap_or(("0", "0"));
        let field = f.parse::<usize>().ok().and_then(|f| r.fields.get(f)).map(|f| f.path.clone()).unwrap_or_default();
        let field = Path::new(&field).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let editable = can_edit && c.reason.as_deref() != Some("cut_by_border");
        // Focusable when it can be changed: the keys act on the focused cell.
        let focus = if editable { format!(" tabindex=\"0\" data-cell=\"{id}\"") } else { String::new() };
        let mut t = format!(
            "<figure id=\"c{id}\"{focus}><a href=\"/r/{i}/field/{id}\" title=\"the field, this cell's box in red\"><img alt=\"cell {id}\" \
             loading=\"lazy\" src=\"/r/{i}/crop/{id}\"></a><figcaption><b>{}</b> {} {:.0}%",
            esc(&c.class),
            esc(&c.label),
            c.confidence * 100.0
        );
        if let Some(ch) = changes.get(id) {
            t += &format!("<br><span class=\"changed\">&rarr; {} by {}</span>", esc(&ch.class), esc(&ch.by));
        }
        if let (Some(a), Some(d)) = (c.nucleus_area_um2, c.nucleus_diameter_um) {
            t += &format!("<br>nucleus {a:.0} µm², {d:.1} µm");
        }
        if let (Some(a), Some(d), Some(nc)) = (c.cell_area_um2, c.cell_diameter_um, c.nc_ratio) {
            t += &format!("<br>cell {a:.0} µm², {d:.1} µm; N:C {nc:.2}");
        }
        t += &format!("<br><small>{} &middot; cell {id}</small>", esc(&field));
        if editable {
            // Preselected: the reviewer's class, else the model's most likely one.
            let current = changes.get(id).map_or(c.best_class.as_str(), |ch| ch.class.as_str());
            let options: String = self
                .classes
                .iter()
                .zip(&self.keys)
                .map(|((code, name), k)| {
                    let sel = if code == current { " selected" } else { "" };
                    let (key, shown) = match k {
                        ' ' => (String::new(), String::new()),
                        k => (format!(" data-key=\"{k}\""), format!("[{k}] ")),
                    };
                    format!("<option value=\"{}\"{key}{sel}>{shown}{} {}</option>", esc(code), esc(code), esc(name))
                })
                .collect();
            t += &format!(
                "<form method=\"post\" action=\"/r/{i}/cell/{id}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <select name=\"class\" aria-label=\"class of cell {id}\">{options}</select>\
                 <button name=\"action\" value=\"reclassify\">Set class</button>\
                 <button name=\"action\" value=\"not_leukocyte\">Not a leukocyte [{}]</button></form>",
                self.csrf,
                super::NOT_LEUKOCYTE_KEY
            );
        }
        t + "</figcaption></figure>"
    }
}
