//! `index.html`: the run's status, a model × step overview, and per step its charts, key
//! numbers (the probe's summary lines), parameters, notes and timings.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::record::{complete_manifest, BatchRecord, StepRecord, StepStatus};
use super::suite::{Step, Suite};
use super::{safe_name, BATCH_FILE, INDEX_FILE, SUITE_COPY};
use crate::report::manifest::{Manifest, MANIFEST_FILE};
use crate::report::write_atomic;
use crate::Result;

fn esc(s: &str) -> String {
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
fn rel_url(path: &str) -> String {
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

fn anchor(id: &str) -> String {
    format!("step-{}", safe_name(&id.replace('/', "--")))
}

/// The probe's summary lines (its manifest's `summary: ` notes) as the step's key numbers.
fn key_numbers(m: &Manifest) -> String {
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

fn json_compact(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn step_section(root: &Path, rec: &StepRecord, html: &mut String) {
    let dir = root.join(&rec.dir);
    let manifest = complete_manifest(&dir);
    let _ = write!(
        html,
        "<section id=\"{}\"><h3>{} <span class=\"st {}\">{}</span></h3>",
        anchor(&rec.id),
        esc(&rec.id),
        rec.status.as_str(),
        rec.status.as_str()
    );
    let _ = write!(
        html,
        "<p class=\"cmd\"><code>engram {}</code>{}</p>",
        esc(&rec.command.join(" ")),
        rec.shard
            .as_ref()
            .map_or(String::new(), |s| format!(" (shard {})", esc(s)))
    );
    if let Some(e) = &rec.error {
        let _ = write!(html, "<p class=\"err\">error: {}</p>", esc(e));
    }
    let Some(m) = manifest else {
        html.push_str("<p>No complete outputs.</p></section>");
        return;
    };
    let total: f64 = m.timings.iter().map(|t| t.seconds).sum();
    let timings: Vec<String> = m
        .timings
        .iter()
        .map(|t| format!("{} {:.2}s", t.step, t.seconds))
        .collect();
    let _ = write!(
        html,
        "<p>command <b>{}</b>; started {}; finished {}; timings: {} (Σ {:.1}s){}</p>",
        esc(&m.command),
        esc(&m.started),
        esc(m.finished.as_deref().unwrap_or("")),
        esc(&timings.join(", ")),
        total,
        rec.seconds
            .map_or(String::new(), |s| format!("; wall {s:.1}s in this batch"))
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
    html.push_str(&key_numbers(&m));
    let files: Vec<&String> = m.files.iter().filter(|f| dir.join(f).is_file()).collect();
    let url = |f: &str| rel_url(&format!("{}/{}", rec.dir, f));
    // Charts: every PNG, linked to its SVG when there is one.
    let pngs: Vec<&&String> = files.iter().filter(|f| f.ends_with(".png")).collect();
    if !pngs.is_empty() {
        html.push_str("<div class=\"charts\">");
        for f in pngs {
            let svg = format!("{}.svg", f.trim_end_matches(".png"));
            let target = if dir.join(&svg).is_file() {
                url(&svg)
            } else {
                url(f)
            };
            let _ = write!(
                html,
                "<figure><a href=\"{target}\"><img src=\"{}\" alt=\"{}\" loading=\"lazy\"></a><figcaption>{}</figcaption></figure>",
                url(f),
                esc(f),
                esc(f)
            );
        }
        html.push_str("</div>");
    }
    html.push_str("<details><summary>files, parameters and notes</summary><ul class=\"files\">");
    let _ = write!(
        html,
        "<li><a href=\"{}\">{MANIFEST_FILE}</a></li>",
        url(MANIFEST_FILE)
    );
    for f in &files {
        let _ = write!(html, "<li><a href=\"{}\">{}</a></li>", url(f), esc(f));
    }
    html.push_str("</ul>");
    let _ = write!(
        html,
        "<p>params: <code>{}</code>{}</p>",
        esc(&json_compact(&m.params)),
        m.seed.map_or(String::new(), |s| format!("; seed {s}"))
    );
    if !m.notes.is_empty() {
        html.push_str("<ul class=\"notes\">");
        for n in &m.notes {
            let _ = write!(html, "<li>{}</li>", esc(n));
        }
        html.push_str("</ul>");
    }
    html.push_str("</details></section>");
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}\
h1{margin-bottom:.2em}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
.st{font-size:.75em;padding:.1em .5em;border-radius:.3em;color:#fff;background:#888}\
.st.ok,.st.skipped{background:#2a7}.st.failed{background:#c33}.st.pending,.st.deselected{background:#999}\
.err{color:#c33;font-family:monospace}.cmd code{font-size:.85em;word-break:break-all}\
.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;width:380px}\
figure img{width:100%;border:1px solid #ddd}figcaption{font-size:.8em;color:#555}\
section{border-top:1px solid #ddd;margin-top:1.5em}.key{font-size:.95em;background:#f6f6f6;padding:.5em}";

/// Write `RUN/index.html`: the suite's status, a model × step overview, and per step its charts,
/// key numbers, parameters, notes and timings. All links are relative and point at existing files.
pub fn write_index(root: &Path, suite: &Suite, record: &BatchRecord) -> Result<PathBuf> {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>engram batch: {}</title><style>{CSS}</style></head><body>\n",
        esc(&suite.name)
    );
    let _ = write!(html, "<h1>engram batch: {}</h1>", esc(&suite.name));
    if let Some(d) = &suite.description {
        let _ = write!(html, "<p>{}</p>", esc(d));
    }
    let _ = writeln!(
        html,
        "<p>{} ok, {} skipped (complete from an earlier run), {} failed, {} pending, {} not selected; {:.1}s; started {}, finished {}; engram {} ({}). <a href=\"{}\">{SUITE_COPY}</a> · <a href=\"{}\">{BATCH_FILE}</a>{}</p>",
        record.count(StepStatus::Ok),
        record.count(StepStatus::Skipped),
        record.count(StepStatus::Failed),
        record.count(StepStatus::Pending),
        record.count(StepStatus::Deselected),
        record.seconds,
        esc(&record.started),
        esc(record.finished.as_deref().unwrap_or("–")),
        esc(&record.engram_version),
        esc(&record.git_commit),
        rel_url(SUITE_COPY),
        rel_url(BATCH_FILE),
        if root.join(MANIFEST_FILE).is_file() {
            format!(" · <a href=\"{}\">{MANIFEST_FILE}</a>", rel_url(MANIFEST_FILE))
        } else {
            String::new()
        }
    );
    if !record.shards.is_empty() {
        html.push_str("<table><tr><th>shard</th><th>host</th><th>Slurm job</th><th>started</th><th>finished</th><th>seconds</th><th>peak RSS</th><th>record</th></tr>");
        for sh in &record.shards {
            let rec_file = sh.record_file().filter(|f| root.join(f).is_file());
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                esc(&sh.shard),
                esc(&sh.host),
                esc(sh.slurm.get("SLURM_JOB_ID").map_or("–", String::as_str)),
                esc(&sh.started),
                esc(sh.finished.as_deref().unwrap_or("–")),
                sh.seconds,
                sh.peak_rss_mb.map_or("–".to_string(), |m| format!("{m:.0} MB")),
                rec_file.map_or("–".to_string(), |f| format!("<a href=\"{}\">json</a>", rel_url(&f)))
            );
        }
        html.push_str("</table>\n");
    }
    // Overview: rows = models (+ model-free), columns = steps.
    let cell = |id: &str| -> String {
        match record.steps.iter().find(|s| s.id == id) {
            Some(s) => format!(
                "<td><a href=\"#{}\"><span class=\"st {}\">{}</span></a>{}</td>",
                anchor(id),
                s.status.as_str(),
                s.status.as_str(),
                s.seconds.map_or(String::new(), |x| format!(" {x:.1}s"))
            ),
            None => "<td>–</td>".to_string(),
        }
    };
    let per_model: Vec<&Step> = suite.steps.iter().filter(|s| s.per_model).collect();
    if !per_model.is_empty() {
        html.push_str("<table><tr><th>model</th>");
        for s in &per_model {
            let _ = write!(html, "<th>{}</th>", esc(&s.name));
        }
        html.push_str("</tr>");
        for m in &suite.models {
            let _ = write!(
                html,
                "<tr><th>{} <small><code>{}</code></small></th>",
                esc(&m.name),
                esc(&m.spec)
            );
            for s in &per_model {
                html.push_str(&cell(&format!("{}/{}", m.name, s.name)));
            }
            html.push_str("</tr>");
        }
        html.push_str("</table>\n");
    }
    let free: Vec<&Step> = suite.steps.iter().filter(|s| !s.per_model).collect();
    if !free.is_empty() {
        html.push_str("<table><tr><th>model-free step</th><th>status</th></tr>");
        for s in &free {
            let _ = write!(html, "<tr><th>{}</th>{}</tr>", esc(&s.name), cell(&s.name));
        }
        html.push_str("</table>\n");
    }
    for m in &suite.models {
        let recs: Vec<&StepRecord> = record
            .steps
            .iter()
            .filter(|s| s.model.as_deref() == Some(m.name.as_str()))
            .collect();
        if recs.is_empty() {
            continue;
        }
        let _ = write!(html, "<h2>{}</h2>", esc(&m.name));
        for r in recs {
            step_section(root, r, &mut html);
        }
    }
    let free: Vec<&StepRecord> = record.steps.iter().filter(|s| s.model.is_none()).collect();
    if !free.is_empty() {
        html.push_str("<h2>Model-free steps</h2>");
        for r in free {
            step_section(root, r, &mut html);
        }
    }
    html.push_str("\n</body></html>\n");
    let path = root.join(INDEX_FILE);
    write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_escapes() {
        assert_eq!(rel_url("a b/c.png"), "a%20b/c.png");
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
        assert_eq!(anchor("m/sae-run"), "step-m--sae-run");
    }
}
