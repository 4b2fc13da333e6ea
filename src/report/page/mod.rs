//! The report page: `index.html` of every run (a probe run, an `engram cache` capture, each step
//! of a batch) and the HTML pieces the batch's own `index.html` shares with it (escaping,
//! relative URLs, chart figures, key numbers, the file list).
//!
//! [`write_run_page`] writes `DIR/index.html` from the run's manifest and the files it lists:
//! - the run (command, model, timings) and its key numbers (the probe's summary lines);
//! - with a `patterns.safetensors` (`engram heads`, `engram toy`) or an `activations.safetensors`
//!   holding `hook_pattern`s (`engram cache`): the attention viewer (tokens as text, a layer/head
//!   picker, hover a token to see its attention over earlier tokens, a layer × head grid of small
//!   patterns, the top induction / CMR-like heads as buttons);
//! - with a `lag_crp.parquet`: the lag-CRP of any head beside its fitted CMR curve;
//! - every Parquet table of the run as a sortable, filterable table (bounded rows);
//! - every chart (PNG, linked to its SVG), and the files, parameters and notes.
//!
//! The page is self-contained: its script and style are inline ([`PAGE_JS`], [`PAGE_CSS`]), its
//! data is one inline JSON block (bounded: [`data::EMBED_PATTERN_BYTES`] bytes of patterns,
//! [`data::TABLE_ROWS`] rows per table; the page says what was left out), and it links only
//! files of the run by relative URL, so it works from `file://` without a network.

pub mod data;

use std::fmt::Write as _;
use std::path::Path;

use crate::report::manifest::{Manifest, MANIFEST_FILE};
use crate::report::write_atomic;
use crate::Result;

/// The page's file name.
pub const INDEX_FILE: &str = "index.html";
/// The page's style (also the batch page's).
pub const PAGE_CSS: &str = include_str!("page.css");
/// The page's script: the attention viewer, the lag-CRP view and the tables.
pub const PAGE_JS: &str = include_str!("page.js");

/// HTML-escape text (element content and attribute values).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A relative URL from path components (percent-encoding what is not URL-safe).
pub fn rel_url(path: &str) -> String {
    let mut o = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'~') {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// `prefix/file` (or `file` for an empty prefix) as a relative URL.
fn url_in(prefix: &str, file: &str) -> String {
    if prefix.is_empty() {
        rel_url(file)
    } else {
        rel_url(&format!("{prefix}/{file}"))
    }
}

/// A JSON value as the text of an inline `<script type="application/json">`: `<` is escaped so
/// that no `</script>` or `<!--` can end the block early.
pub fn script_json(v: &serde_json::Value) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
}

/// The probe's summary lines (its manifest's `summary: ` notes) as the run's key numbers.
pub fn key_numbers(m: &Manifest) -> String {
    let lines: Vec<&str> = m
        .notes
        .iter()
        .filter_map(|n| n.strip_prefix("summary: "))
        .filter(|l| !l.starts_with('{'))
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let mut html = String::from("<pre class=\"key\">");
    for l in lines {
        html.push_str(&esc(l));
        html.push('\n');
    }
    html.push_str("</pre>");
    html
}

/// The command, times and model of a run (`wall`: its seconds in a batch).
pub fn run_info(m: &Manifest, wall: Option<f64>) -> String {
    let total: f64 = m.timings.iter().map(|t| t.seconds).sum();
    let timings: Vec<String> = m
        .timings
        .iter()
        .map(|t| format!("{} {:.2}s", t.step, t.seconds))
        .collect();
    let mut html = format!(
        "<p>command <b>{}</b>; started {}{}; timings: {} (Σ {:.1}s){}</p>",
        esc(&m.command),
        esc(&m.started),
        // A run's own page is written just before its manifest is finished.
        m.finished
            .as_deref()
            .map_or(String::new(), |f| format!("; finished {}", esc(f))),
        esc(&timings.join(", ")),
        total,
        wall.map_or(String::new(), |s| format!("; wall {s:.1}s in this batch"))
    );
    if let Some(model) = &m.model {
        let _ = write!(
            html,
            "<p>model <code>{}</code> ({}, {}), sha256 <code>{}</code></p>",
            esc(&model.source),
            esc(&model.arch),
            esc(&model.dtype),
            esc(model.sha256.as_deref().unwrap_or("–"))
        );
    }
    html
}

/// Every PNG of `files` (relative to `dir`, linked as `prefix/file`) as a figure linked to its
/// SVG when there is one.
pub fn chart_figures(dir: &Path, files: &[String], prefix: &str) -> String {
    let pngs: Vec<&String> = files
        .iter()
        .filter(|f| f.ends_with(".png") && dir.join(f).is_file())
        .collect();
    if pngs.is_empty() {
        return String::new();
    }
    let mut html = String::from("<div class=\"charts\">");
    for f in pngs {
        let svg = format!("{}.svg", f.trim_end_matches(".png"));
        let target = if dir.join(&svg).is_file() { &svg } else { f };
        let _ = write!(
            html,
            "<figure><a href=\"{}\"><img src=\"{}\" alt=\"{}\" loading=\"lazy\"></a><figcaption>{}{}</figcaption></figure>",
            url_in(prefix, target),
            url_in(prefix, f),
            esc(f),
            esc(f),
            if target == &svg { " (click: SVG)" } else { "" }
        );
    }
    html.push_str("</div>");
    html
}

/// The run's files (those that exist), parameters and notes, folded.
pub fn files_details(dir: &Path, m: &Manifest, prefix: &str) -> String {
    let mut html =
        String::from("<details><summary>files, parameters and notes</summary><ul class=\"files\">");
    let _ = write!(
        html,
        "<li><a href=\"{}\">{MANIFEST_FILE}</a></li>",
        url_in(prefix, MANIFEST_FILE)
    );
    for f in m.files.iter().filter(|f| dir.join(f).is_file()) {
        let _ = write!(
            html,
            "<li><a href=\"{}\">{}</a></li>",
            url_in(prefix, f),
            esc(f)
        );
    }
    html.push_str("</ul>");
    let _ = write!(
        html,
        "<p>params: <code>{}</code>{}</p>",
        esc(&serde_json::to_string(&m.params).unwrap_or_default()),
        m.seed.map_or(String::new(), |s| format!("; seed {s}"))
    );
    if !m.notes.is_empty() {
        html.push_str("<ul class=\"notes\">");
        for n in &m.notes {
            let _ = write!(html, "<li>{}</li>", esc(n));
        }
        html.push_str("</ul>");
    }
    html.push_str("</details>");
    html
}

/// A whole page: `<head>` with the style, `body`, and the script when `script` is set.
pub fn shell(title: &str, body: &str, script: bool) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{PAGE_CSS}</style></head><body>\n{body}\n{}</body></html>\n",
        esc(title),
        if script {
            format!("<script>{PAGE_JS}</script>\n")
        } else {
            String::new()
        }
    )
}

/// Write `dir/index.html` for the run whose manifest (before `index.html` and `manifest.json`
/// are added) is `m`; returns the file name for the manifest's list.
pub fn write_run_page(dir: &Path, m: &Manifest) -> Result<String> {
    let data = data::PageData::gather(dir, &m.files)?;
    let mut body = String::new();
    let title = format!(
        "engram {}{}",
        m.command,
        m.model
            .as_ref()
            .map_or(String::new(), |x| format!(" · {}", x.source))
    );
    let _ = write!(body, "<h1>{}</h1>", esc(&title));
    body.push_str(&run_info(m, None));
    body.push_str(&key_numbers(m));
    body.push_str(&data.sections());
    let charts = chart_figures(dir, &m.files, "");
    if !charts.is_empty() {
        let _ = write!(
            body,
            "<section id=\"charts\"><h2>Charts</h2>{charts}</section>"
        );
    }
    body.push_str(&files_details(dir, m, ""));
    let _ = write!(
        body,
        "<script type=\"application/json\" id=\"engram-data\">{}</script>",
        script_json(&data.json)
    );
    let html = shell(&title, &body, true);
    write_atomic(&dir.join(INDEX_FILE), html.as_bytes())?;
    Ok(INDEX_FILE.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_escapes() {
        assert_eq!(rel_url("a b/c.png"), "a%20b/c.png");
        assert_eq!(url_in("", "x y"), "x%20y");
        assert_eq!(url_in("m/heads", "a.png"), "m/heads/a.png");
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
        let j = script_json(&serde_json::json!({"t": "</script><!--"}));
        assert!(!j.contains('<'), "{j}");
        let back: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["t"], "</script><!--");
    }

    #[test]
    fn assets_have_no_network_resources() {
        for a in [PAGE_JS, PAGE_CSS] {
            // The SVG namespace is a name, not a resource.
            let a = a.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(!a.contains("http://") && !a.contains("https://"));
            assert!(!a.contains("XMLHttpRequest") && !a.contains("url("));
            assert!(!a.contains("@import") && !a.contains("fetch("));
        }
    }
}
