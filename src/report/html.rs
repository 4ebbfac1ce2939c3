//! `report.html`: the report for people. One file that opens and prints
//! anywhere, offline: styles inline, the chart in SVG, the blast crops as
//! data: URIs; no scripts, fonts or anything fetched (its Content-Security-Policy
//! forbids all of it, so a copied file cannot call out either).

use crate::classify::count::Summary;
use crate::classify::stats::clopper_pearson;
use crate::report::files::{rfc3339, ReportFacts};
use std::fmt::Write;
use std::path::Path;

/// Text made safe for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Standard base64 (RFC 4648) for data: URIs.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The style sheet shared with the review page: readable on a phone, prints on A4.
pub const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:1rem auto;max-width:60rem;padding:0 .8rem;color:#111;line-height:1.35}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.2rem 0 .4rem;border-bottom:1px solid #999}
table{border-collapse:collapse;margin:.3rem 0}td,th{padding:.15rem .6rem;text-align:left;border-bottom:1px solid #ddd}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:.2rem .6rem;font-weight:bold;border:2px solid}
.prelim{color:#8a4b00;border-color:#8a4b00}.final{color:#0a5a1f;border-color:#0a5a1f}
.flag{color:#fff;background:#b00020;padding:.3rem .6rem;font-weight:bold;display:inline-block}
.blast{color:#b00020;font-weight:bold}.warn{border:2px solid #b00020;padding:.4rem}
.disclaimer{border:2px solid #111;padding:.5rem;font-weight:bold;margin-top:1.2rem}
.cells{display:flex;flex-wrap:wrap;gap:.5rem}.cells figure{margin:0;width:8.5rem;font-size:.8rem}
.cells img{width:8.5rem;height:8.5rem;object-fit:contain;border:1px solid #999;background:#eee}
svg text{font-size:12px;font-family:system-ui,sans-serif}
@media print{body{max-width:none;margin:0}.noprint{display:none}h2{break-after:avoid}figure,tr{break-inside:avoid}}
";

/// The whole page. `dir` is the report folder the crops are read from.
pub fn render(facts: &ReportFacts, dir: &Path) -> String {
    let mut h = String::new();
    let title = match &facts.sample_id {
        Some(id) => format!("Leukocyte differential: sample {}", esc(id)),
        None => "Leukocyte differential".to_string(),
    };
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n\
         <meta name=\"generator\" content=\"{}\"><meta name=\"leukoscope-schema\" content=\"{}\">\n\
         <title>{title}</title><style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n",
        esc(&facts.software),
        crate::report::files::SCHEMA,
    );
    h += &status_line(facts);
    h += "\n<table>";
    let none = "<i>not recorded</i>".to_string();
    let row = |k: &str, v: String| format!("<tr><th>{k}</th><td>{v}</td></tr>");
    h += &row("Sample ID", facts.sample_id.as_deref().map_or(none.clone(), esc));
    h += &row("Operator ID", facts.operator_id.as_deref().map_or(none.clone(), esc));
    if let Some(r) = &facts.reviewed {
        h += &row(
            "Reviewed and signed by",
            format!("{} at {}", esc(&r.sign_off.reviewer), human_time(r.sign_off.unix_time)),
        );
    }
    h += &row("Report written", human_time(facts.written_unix));
    h += &row("Scale", esc(&facts.scale));
    h += &row(
        "Software, model",
        format!(
            "{}; model {} (sha256 {}); report schema {}",
            esc(&facts.software),
            esc(&facts.model_name),
            esc(facts.model_sha256.get(..12).unwrap_or(&facts.model_sha256)),
            crate::report::files::SCHEMA
        ),
    );
    h += "</table>\n";
    h += &blast_box(facts.summary());
    if let Some(w) = &facts.scale_warning {
        let _ = writeln!(h, "<p class=\"warn\">{}</p>", esc(w));
    }
    if let Some(w) = &facts.warning {
        let _ = writeln!(h, "<p class=\"warn\">WARNING: {}</p>", esc(w));
    }
    h += "<h2>Differential</h2>\n";
    h += &chart(facts, facts.summary());
    h += &table(facts);
    h += &blast_crops(facts, dir);
    let _ = write!(h, "<p class=\"disclaimer\">{}</p>\n</body></html>\n", esc(crate::DISCLAIMER));
    h
}

/// `2026-12-06 16:02:12 UTC`.
pub fn human_time(unix: u64) -> String {
    rfc3339(unix).replace('T', " ").replace('Z', " UTC")
}

fn status_line(facts: &ReportFacts) -> String {
    match &facts.reviewed {
        Some(r) => format!(
            "<p><span class=\"status final\">VERIFIED</span> reviewed and signed by {}; {} of the calls changed by the \
             reviewer. The figures below are the reviewed ones.</p>",
            esc(&r.sign_off.reviewer),
            r.sign_off.changed
        ),
        None => "<p><span class=\"status prelim\">PRELIMINARY</span> not yet reviewed and signed by a person: \
                 the machine's calls only.</p>"
            .into(),
    }
}

fn blast_box(s: &Summary) -> String {
    let line = format!(
        "Blasts: {} of {} leukocytes = {:.1}% (95% CI {:.1}&ndash;{:.1}%)",
        s.blasts, s.cells, s.blast_percent, s.ci95[0], s.ci95[1]
    );
    if s.flag {
        format!(
            "<p class=\"flag\">{line}: AT OR ABOVE THE {:.0}% THRESHOLD &mdash; REVIEW THE SMEAR</p>\n",
            s.threshold_percent
        )
    } else {
        format!("<p><b>{line}</b>; below the {:.0}% threshold.</p>\n", s.threshold_percent)
    }
}

/// The rows of a differential: each class, then unidentified; with (count, percent, CI).
fn rows(s: &Summary) -> Vec<(String, u64)> {
    let mut r: Vec<(String, u64)> = s.by_class.iter().map(|(k, v)| (k.clone(), *v)).collect();
    r.push(("UNID".into(), s.unidentified));
    r
}

fn pct_ci(k: u64, n: u64) -> (f64, f64, f64) {
    let (lo, hi) = clopper_pearson(k.min(n), n, 0.95);
    let p = if n == 0 { 0.0 } else { 100.0 * k as f64 / n as f64 };
    (p, 100.0 * lo, 100.0 * hi)
}

fn name(facts: &ReportFacts, code: &str) -> String {
    if code == "UNID" {
        "Unidentified (not confidently classified)".into()
    } else {
        facts.class_name(code).to_string()
    }
}

/// Horizontal bars, one per class, each with its 95% interval as a whisker.
fn chart(facts: &ReportFacts, s: &Summary) -> String {
    let rows = rows(s);
    let blast_codes: Vec<&str> = facts.blasts.iter().map(|c| c.class.as_str()).collect();
    let (label_w, bar_w, row_h) = (230.0, 420.0, 22.0);
    let height = row_h * rows.len() as f64 + 30.0;
    let mut g = format!(
        "<svg role=\"img\" aria-label=\"Differential bar chart\" viewBox=\"0 0 {} {height}\" width=\"100%\" \
         style=\"max-width:44rem\" xmlns=\"http://www.w3.org/2000/svg\">",
        label_w + bar_w + 60.0
    );
    for (i, (code, k)) in rows.iter().enumerate() {
        let (p, lo, hi) = pct_ci(*k, s.cells);
        let y = 6.0 + row_h * i as f64;
        let colour = if blast_codes.contains(&code.as_str()) {
            "#b00020"
        } else if code == "UNID" {
            "#888"
        } else {
            "#2b5d8a"
        };
        let x = |v: f64| label_w + bar_w * v / 100.0;
        let _ = write!(
            g,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} ({code})</text>\
             <rect x=\"{label_w}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{colour}\"/>\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#000\"/>\
             <text x=\"{:.1}\" y=\"{}\">{p:.1}%</text>",
            label_w - 6.0,
            y + 14.0,
            esc(if code == "UNID" { "Unidentified" } else { facts.class_name(code) }),
            bar_w * p / 100.0,
            row_h - 6.0,
            x(lo),
            x(hi),
            y + (row_h - 6.0) / 2.0,
            y + (row_h - 6.0) / 2.0,
            x(hi) + 4.0,
            y + 14.0,
        );
    }
    let base = 6.0 + row_h * rows.len() as f64;
    for t in [0, 25, 50, 75, 100] {
        let x = label_w + bar_w * t as f64 / 100.0;
        let _ = write!(
            g,
            "<line x1=\"{x}\" x2=\"{x}\" y1=\"4\" y2=\"{base}\" stroke=\"#ccc\"/><text x=\"{x}\" y=\"{}\" \
             text-anchor=\"middle\">{t}%</text>",
            base + 16.0
        );
    }
    g + "</svg>\n<p style=\"font-size:.85rem\">Bars: percent of leukocytes counted; whiskers: exact (Clopper-Pearson) 95% \
         confidence intervals.</p>\n"
}

fn table(facts: &ReportFacts) -> String {
    let reviewed = facts.reviewed.as_ref().map(|r| &r.summary);
    let c = &facts.classified;
    let mut codes: Vec<String> = rows(c).into_iter().map(|(k, _)| k).collect();
    if let Some(r) = reviewed {
        for (k, _) in rows(r) {
            if !codes.contains(&k) {
                codes.insert(codes.len() - 1, k);
            }
        }
    }
    let cols = |s: &Summary, k: u64| {
        let (p, lo, hi) = pct_ci(k, s.cells);
        format!("<td class=\"n\">{k}</td><td class=\"n\">{p:.1}%</td><td class=\"n\">{lo:.1}&ndash;{hi:.1}%</td>")
    };
    let count = |s: &Summary, code: &str| {
        if code == "UNID" {
            s.unidentified
        } else {
            s.by_class.get(code).copied().unwrap_or(0)
        }
    };
    let mut t = String::from("<table><tr><th>Class</th><th></th>");
    let heads = "<th class=\"n\">n</th><th class=\"n\">%</th><th class=\"n\">95% CI</th>";
    match reviewed {
        Some(_) => {
            t += &format!("<th colspan=\"3\">as classified</th><th colspan=\"3\">as reviewed</th></tr><tr><th></th><th></th>{heads}{heads}</tr>")
        }
        None => t += &format!("{heads}</tr>"),
    }
    let blast_codes: Vec<&str> = facts.blasts.iter().map(|c| c.class.as_str()).collect();
    for code in &codes {
        let cls = if blast_codes.contains(&code.as_str()) { " class=\"blast\"" } else { "" };
        let _ =
            write!(t, "<tr{cls}><td>{}</td><td>{}</td>{}", esc(code), esc(&name(facts, code)), cols(c, count(c, code)));
        if let Some(r) = reviewed {
            t += &cols(r, count(r, code));
        }
        t += "</tr>";
    }
    let line = |label: &str, f: &dyn Fn(&Summary) -> String| {
        let mut l = format!("<tr><th colspan=\"2\">{label}</th>{}", f(c));
        if let Some(r) = reviewed {
            l += &f(r);
        }
        l + "</tr>"
    };
    t += &line("Leukocytes counted", &|s: &Summary| {
        format!("<td class=\"n\">{}</td><td class=\"n\">100%</td><td></td>", s.cells)
    });
    t += &line("Blasts", &|s: &Summary| cols(s, s.blasts));
    t += &line("Not normally in peripheral blood", &|s: &Summary| cols(s, s.abnormal));
    t += &line("Not counted", &|s: &Summary| {
        format!(
            "<td colspan=\"3\">{} not leukocytes, {} cut by the border</td>",
            s.not_counted.not_leukocytes, s.not_counted.cut_by_border
        )
    });
    t + "</table>\n"
}

fn blast_crops(facts: &ReportFacts, dir: &Path) -> String {
    let mut h = format!("<h2>Blast cells ({})</h2>\n", facts.blasts.len());
    if facts.blasts.is_empty() {
        return h + "<p>No cell is counted as a blast.</p>\n";
    }
    h += "<div class=\"cells\">";
    for c in &facts.blasts {
        let img = c
            .crop
            .as_deref()
            .and_then(|p| std::fs::read(dir.join(p)).ok())
            .map(|png| format!("<img alt=\"{} cell\" src=\"data:image/png;base64,{}\">", esc(&c.class), base64(&png)))
            .unwrap_or_else(|| "<p><i>crop missing</i></p>".into());
        let mut d = c.nucleus_diameter_um.map_or(String::new(), |d| format!(", nucleus {d:.1} µm"));
        if let (Some(cd), Some(nc)) = (c.cell_diameter_um, c.nc_ratio) {
            d += &format!(", cell {cd:.1} µm, N:C {nc:.2}");
        }
        let _ = write!(
            h,
            "<figure>{img}<figcaption>{} {:.0}%{d}</figcaption></figure>",
            esc(&c.class),
            c.confidence * 100.0
        );
    }
    h + "</div>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
