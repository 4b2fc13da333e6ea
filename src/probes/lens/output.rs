//! `engram lens`'s tables and charts (columns: docs/outputs.md).

use std::path::Path;

use super::{ComponentKind, LensReport, PromptLens};
use crate::report::chart::{BarChart, Colormap, Heatmap, LineChart, Series};
use crate::report::table::{write_parquet, Table};
use crate::Result;

pub(super) fn write(r: &LensReport, dir: &Path) -> Result<Vec<String>> {
    let mut files = vec![];
    let mut table = |name: &str, t: Table| -> Result<()> {
        write_parquet(&mut t.build()?, &dir.join(name))?;
        files.push(name.to_string());
        Ok(())
    };
    table("lens.parquet", lens_table(r))?;
    table("lens_top.parquet", top_table(r))?;
    table("dla.parquet", dla_table(r))?;
    table("prompts.parquet", prompts_table(r))?;
    for path in charts(r, dir)? {
        files.push(path);
    }
    Ok(files)
}

fn lens_table(r: &LensReport) -> Table {
    let (mut prompt, mut layer, mut hook, mut pos) = (vec![], vec![], vec![], vec![]);
    let (mut tok_id, mut tok, mut next_id, mut next, mut is_target) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut rank, mut prob, mut logprob, mut top_id, mut top, mut top_prob) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (i, p) in r.prompts.iter().enumerate() {
        for c in &p.cells {
            prompt.push(i as u32);
            layer.push(c.layer as u32);
            hook.push(super::compute::lens_hook(c.layer, r.n_layers));
            pos.push(c.position as u32);
            tok_id.push(p.ids[c.position]);
            tok.push(p.tokens[c.position].clone());
            next_id.push(c.next_id);
            next.push(r.string(c.next_id));
            is_target.push(c.position + 1 == p.ids.len());
            rank.push(c.rank);
            prob.push(c.logprob.exp());
            logprob.push(c.logprob);
            top_id.push(c.top[0].0);
            top.push(r.string(c.top[0].0));
            top_prob.push(c.top[0].1);
        }
    }
    Table::new()
        .col("prompt", prompt)
        .col("layer", layer)
        .col("hook", hook)
        .col("position", pos)
        .col("token_id", tok_id)
        .col("token", tok)
        .col("next_id", next_id)
        .col("next_token", next)
        .col("is_target", is_target)
        .col("rank", rank)
        .col("prob", prob)
        .col("logprob", logprob)
        .col("top1_id", top_id)
        .col("top1_token", top)
        .col("top1_prob", top_prob)
}

fn top_table(r: &LensReport) -> Table {
    let (mut prompt, mut layer, mut pos, mut k, mut id, mut tok, mut prob) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (i, p) in r.prompts.iter().enumerate() {
        for c in &p.cells {
            for (j, &(t, pr)) in c.top.iter().enumerate() {
                prompt.push(i as u32);
                layer.push(c.layer as u32);
                pos.push(c.position as u32);
                k.push(j as u32 + 1);
                id.push(t);
                tok.push(r.string(t));
                prob.push(pr);
            }
        }
    }
    Table::new()
        .col("prompt", prompt)
        .col("layer", layer)
        .col("position", pos)
        .col("k", k)
        .col("token_id", id)
        .col("token", tok)
        .col("prob", prob)
}

fn dla_table(r: &LensReport) -> Table {
    let (mut prompt, mut comp, mut kind, mut layer, mut head, mut dla) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (i, p) in r.prompts.iter().enumerate() {
        for c in &p.dla.components {
            prompt.push(i as u32);
            comp.push(c.label());
            kind.push(c.kind.as_str());
            layer.push(c.layer.map(|l| l as u32));
            head.push(c.head.map(|h| h as u32));
            dla.push(c.dla);
        }
    }
    Table::new()
        .col("prompt", prompt)
        .col("component", comp)
        .col("kind", kind)
        .col("layer", layer)
        .col("head", head)
        .col("dla", dla)
}

fn prompts_table(r: &LensReport) -> Table {
    let n = r.prompts.len();
    let last = |p: &PromptLens| {
        p.cells
            .iter()
            .find(|c| c.layer == r.n_layers && c.position + 1 == p.ids.len())
            .cloned()
    };
    let mut t = Table::new()
        .col("prompt", (0..n as u32).collect::<Vec<_>>())
        .col(
            "text",
            r.prompts.iter().map(|p| p.text.clone()).collect::<Vec<_>>(),
        )
        .col(
            "n_tokens",
            r.prompts
                .iter()
                .map(|p| p.ids.len() as u32)
                .collect::<Vec<_>>(),
        )
        .col(
            "target_id",
            r.prompts.iter().map(|p| p.target).collect::<Vec<_>>(),
        )
        .col(
            "target",
            r.prompts
                .iter()
                .map(|p| r.string(p.target))
                .collect::<Vec<_>>(),
        )
        .col(
            "baseline_id",
            r.prompts.iter().map(|p| p.baseline).collect::<Vec<_>>(),
        )
        .col(
            "baseline",
            r.prompts
                .iter()
                .map(|p| p.baseline.map(|b| r.string(b)))
                .collect::<Vec<_>>(),
        );
    t = t
        .col(
            "target_rank",
            r.prompts
                .iter()
                .map(|p| last(p).map(|c| c.rank))
                .collect::<Vec<_>>(),
        )
        .col(
            "target_prob",
            r.prompts
                .iter()
                .map(|p| last(p).map(|c| c.logprob.exp()))
                .collect::<Vec<_>>(),
        )
        .col(
            "logit_diff",
            r.prompts
                .iter()
                .map(|p| p.dla.logit_diff)
                .collect::<Vec<_>>(),
        )
        .col(
            "dla_sum",
            r.prompts.iter().map(|p| p.dla.sum()).collect::<Vec<_>>(),
        );
    t
}

/// Mean DLA over prompts of the components matching `f`.
/// The mean over prompts of the selected components' share of the prompt's logit difference
/// (what the components sum to): one −1…1 scale for every model; NaN when no prompt's logit
/// difference is away from 0.
fn mean_dla_share(r: &LensReport, f: impl Fn(&super::Component) -> bool) -> f64 {
    let shares: Vec<f64> = r
        .prompts
        .iter()
        .filter(|p| p.dla.logit_diff.abs() > 1e-9)
        .map(|p| {
            let s: f64 = p
                .dla
                .components
                .iter()
                .filter(|c| f(c))
                .map(|c| c.dla)
                .sum();
            s / p.dla.logit_diff
        })
        .collect();
    if shares.is_empty() {
        f64::NAN
    } else {
        shares.iter().sum::<f64>() / shares.len() as f64
    }
}

fn mean_dla(r: &LensReport, f: impl Fn(&super::Component) -> bool) -> f64 {
    let n = r.prompts.len().max(1) as f64;
    r.prompts
        .iter()
        .flat_map(|p| p.dla.components.iter().filter(|c| f(c)))
        .map(|c| c.dla)
        .sum::<f64>()
        / n
}

fn charts(r: &LensReport, dir: &Path) -> Result<Vec<String>> {
    let mut paths = vec![];
    let p0 = &r.prompts[0];
    let t = p0.ids.len();
    let mut grid = vec![vec![f64::NAN; t]; r.n_layers + 1];
    for c in &p0.cells {
        grid[c.layer][c.position] = (c.rank as f64).log10();
    }
    // Layer 0 at the bottom: the heatmap puts row 0 at the top.
    grid.reverse();
    let y_labels = (0..=r.n_layers).rev().map(|l| l.to_string()).collect();
    paths.extend(
        Heatmap {
            title: "Logit lens: log10 rank of the next token (prompt 0; last column: the target)"
                .into(),
            x_label: "position (token)".into(),
            y_label: "layer (resid_pre; top: final)".into(),
            values: grid,
            x_labels: Some(p0.tokens.iter().map(|s| format!("{s:?}")).collect()),
            y_labels: Some(y_labels),
            // One scale for every model (ranks below 10⁶ cover any vocabulary).
            range: Some((0.0, 6.0)),
            colormap: Colormap::Viridis,
            value_label: "log10 rank of the next token (0: top-1)".into(),
        }
        .save(dir, "lens_rank_heatmap")?,
    );
    let series = r
        .prompts
        .iter()
        .enumerate()
        .take(8)
        .map(|(i, p)| {
            let pts = p
                .cells
                .iter()
                .filter(|c| c.position + 1 == p.ids.len())
                .map(|c| (c.layer as f64, c.logprob.exp()))
                .collect();
            Series::new(format!("{i}: {:?}", r.string(p.target)), pts)
        })
        .collect();
    paths.extend(
        LineChart {
            title: "Logit lens: probability of the target at the last position".into(),
            x_label: "layer".into(),
            y_label: "p(target)".into(),
            series,
        }
        .save(dir, "lens_target_prob")?,
    );
    let heads: Vec<Vec<f64>> = (0..r.n_layers)
        .map(|l| {
            (0..r.n_heads)
                .map(|h| {
                    mean_dla_share(r, |c| {
                        c.kind == ComponentKind::Head && c.layer == Some(l) && c.head == Some(h)
                    })
                })
                .collect()
        })
        .collect();
    paths.extend(
        Heatmap {
            title: "Direct logit attribution per head (share of the logit difference, mean over prompts)".into(),
            x_label: "head".into(),
            y_label: "layer".into(),
            values: heads,
            x_labels: None,
            y_labels: None,
            // One scale for every model; a single head rarely carries more than a quarter.
            range: Some((-0.25, 0.25)),
            colormap: Colormap::Diverging,
            value_label: "fraction of the logit difference (clamped at ±0.25)".into(),
        }
        .save(dir, "dla_heads_heatmap")?,
    );
    let attn = (0..r.n_layers)
        .map(|l| {
            mean_dla(r, |c| {
                matches!(c.kind, ComponentKind::Head | ComponentKind::AttnBias)
                    && c.layer == Some(l)
            })
        })
        .collect();
    let mlp = (0..r.n_layers)
        .map(|l| mean_dla(r, |c| c.kind == ComponentKind::Mlp && c.layer == Some(l)))
        .collect();
    paths.extend(
        BarChart {
            title: "Direct logit attribution per layer (mean over prompts)".into(),
            x_label: "layer".into(),
            y_label: "DLA (logits)".into(),
            categories: (0..r.n_layers).map(|l| l.to_string()).collect(),
            groups: vec![("attention".into(), attn), ("mlp".into(), mlp)],
        }
        .save(dir, "dla_layers")?,
    );
    Ok(paths
        .into_iter()
        .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .collect())
}

/// `prompt 0 " Paris": p = 0.43 (rank 1), top-1 from layer 21; DLA 5.12 (= u·ln_final 5.12): L20H3 +2.10, ...`
pub(super) fn summary_line(r: &LensReport, i: usize, p: &PromptLens) -> String {
    let last: Vec<_> = p
        .cells
        .iter()
        .filter(|c| c.position + 1 == p.ids.len())
        .collect();
    let fin = last.iter().find(|c| c.layer == r.n_layers);
    // The first layer from which the target stays the top token.
    let first_top =
        (0..=r.n_layers).find(|&l| last.iter().filter(|c| c.layer >= l).all(|c| c.rank == 1));
    let mut comps: Vec<_> = p.dla.components.iter().collect();
    comps.sort_by(|a, b| b.dla.abs().total_cmp(&a.dla.abs()));
    let top: Vec<String> = comps
        .iter()
        .take(4)
        .map(|c| format!("{} {:+.2}", c.label(), c.dla))
        .collect();
    let against = match p.baseline {
        Some(b) => format!(" − {:?}", r.string(b)),
        None => String::new(),
    };
    format!(
        "prompt {i} target {:?}{against}: p = {:.3} (rank {}), top-1 from layer {}; DLA sum {:.3} (u·ln_final {:.3}): {}",
        r.string(p.target),
        fin.map_or(f64::NAN, |c| c.logprob.exp()),
        fin.map_or(0, |c| c.rank),
        first_top.map_or("—".into(), |l| l.to_string()),
        p.dla.sum(),
        p.dla.logit_diff,
        top.join(", ")
    )
}
