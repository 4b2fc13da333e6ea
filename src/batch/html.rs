//! `index.html`: the run's status, a model × step overview, and per step its charts, key
//! numbers (the probe's summary lines), parameters, notes and timings, and a link to the step's
//! own report page (`STEP/index.html`, [`crate::report::page`]: attention viewer, tables). The
//! HTML pieces (escaping, URLs, figures) are the report page's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::record::{complete_manifest, BatchRecord, StepRecord, StepStatus};
use super::suite::{Step, Suite};
use super::{safe_name, BATCH_FILE, INDEX_FILE, SUITE_COPY};
use crate::report::manifest::MANIFEST_FILE;
use crate::report::page::{
    chart_figures, esc, files_details, key_numbers, rel_url, run_info, shell,
};
use crate::report::write_atomic;
use crate::Result;

fn anchor(id: &str) -> String {
    format!("step-{}", safe_name(&id.replace('/', "--")))
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
    html.push_str(&run_info(&m, rec.seconds));
    html.push_str(&key_numbers(&m));
    if m.files.iter().any(|f| f == INDEX_FILE) && dir.join(INDEX_FILE).is_file() {
        let _ = write!(
            html,
            "<p><a class=\"page\" href=\"{}\">open this step's report page</a> (attention viewer, lag-CRPs, sortable tables)</p>",
            rel_url(&format!("{}/{INDEX_FILE}", rec.dir))
        );
    }
    html.push_str(&chart_figures(&dir, &m.files, &rec.dir));
    html.push_str(&files_details(&dir, &m, &rec.dir));
    html.push_str("</section>");
}

/// Write `RUN/index.html`: the suite's status, a model × step overview, and per step its charts,
/// key numbers, parameters, notes and timings. All links are relative and point at existing files.
pub fn write_index(root: &Path, suite: &Suite, record: &BatchRecord) -> Result<PathBuf> {
    let mut html = String::new();
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
    let html = shell(&format!("engram batch: {}", suite.name), &html, false);
    let path = root.join(INDEX_FILE);
    write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors() {
        assert_eq!(anchor("m/sae-run"), "step-m--sae-run");
    }
}
