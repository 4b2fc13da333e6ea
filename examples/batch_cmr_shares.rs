//! Batch analysis across runs: the share of CMR-like heads per layer of every model, in one chart.
//!
//! Reads every `heads.parquet` under the given run directories (written by `engram heads`,
//! `engram cmr-fit` and `engram toy`, e.g. by `engram batch probes/smoke.toml --out runs/smoke`)
//! with polars, computes per layer the share of heads with CMR distance < 0.5 (and < 0.1), and
//! writes `cmr_share_by_depth.png/.svg` (x = relative depth, so models of different depths line
//! up), `cmr_share_by_layer.parquet` and a printed table into `--out`.
//!
//!     cargo run --release --example batch_cmr_shares -- runs/smoke [runs/other ...] --out runs/analysis

use std::path::{Path, PathBuf};

use engram::report::chart::{LineChart, Series};
use engram::report::table::{write_parquet, Table};
use polars::prelude::*;

/// Every `heads.parquet` below `dir`, sorted.
fn find_tables(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if p.is_dir() && !hidden {
            find_tables(&p, out)?;
        } else if p.file_name().is_some_and(|n| n == "heads.parquet") {
            out.push(p);
        }
    }
    out.sort();
    Ok(())
}

/// One layer's row: (layer, heads, share < 0.5, share < 0.1).
type LayerShare = (u32, usize, f64, f64);

/// Per layer shares of CMR-like heads from one heads table.
fn shares(path: &Path) -> Result<Vec<LayerShare>, Box<dyn std::error::Error>> {
    let file = std::fs::File::open(path)?;
    let df = ParquetReader::new(file).finish()?;
    let layer = df.column("layer")?.cast(&DataType::UInt32)?;
    let dist = df.column("cmr_distance")?.cast(&DataType::Float64)?;
    let (layer, dist) = (layer.u32()?, dist.f64()?);
    let n_layers = layer.max().map_or(0, |m| m + 1) as usize;
    let mut acc = vec![(0usize, 0usize, 0usize); n_layers];
    for (l, d) in layer.iter().zip(dist.iter()) {
        let (Some(l), Some(d)) = (l, d) else { continue };
        if !d.is_finite() {
            continue;
        }
        let a = &mut acc[l as usize];
        a.0 += 1;
        a.1 += (d < 0.5) as usize;
        a.2 += (d < 0.1) as usize;
    }
    Ok(acc
        .into_iter()
        .enumerate()
        .map(|(l, (n, like, strict))| {
            let s = |k: usize| {
                if n == 0 {
                    f64::NAN
                } else {
                    k as f64 / n as f64
                }
            };
            (l as u32, n, s(like), s(strict))
        })
        .collect())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut runs = vec![];
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--out" || a == "-o" {
            out = args.next().map(PathBuf::from);
        } else {
            runs.push(PathBuf::from(a));
        }
    }
    let Some(out) = out else {
        return Err("usage: batch_cmr_shares RUN_DIR... --out DIR".into());
    };
    if runs.is_empty() {
        return Err("give at least one run directory".into());
    }
    let mut model_col = vec![];
    let (mut layer_col, mut n_col, mut like_col, mut strict_col) = (vec![], vec![], vec![], vec![]);
    let mut series = vec![];
    for run in &runs {
        let mut tables = vec![];
        find_tables(run, &mut tables).map_err(|e| format!("{}: {e}", run.display()))?;
        for t in tables {
            // RUN/<model>/heads/heads.parquet → "<model>/heads"; with several runs, prefix the run.
            let rel = t.parent().unwrap_or(run).strip_prefix(run).unwrap_or(&t);
            let mut label = rel.display().to_string();
            if runs.len() > 1 {
                let name = run
                    .file_name()
                    .map_or("run".into(), |n| n.to_string_lossy());
                label = format!("{name}:{label}");
            }
            let rows = shares(&t).map_err(|e| format!("{}: {e}", t.display()))?;
            let depth = (rows.len().max(2) - 1) as f64;
            let total: usize = rows.iter().map(|r| r.1).sum();
            let like: f64 = rows
                .iter()
                .filter(|r| r.1 > 0)
                .map(|r| r.2 * r.1 as f64)
                .sum::<f64>()
                / total.max(1) as f64;
            println!(
                "{label:<40} {:>3} layers  CMR-like {:5.1}%  per layer: {}",
                rows.len(),
                100.0 * like,
                rows.iter()
                    .map(|r| format!("{:.0}", 100.0 * r.2))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            series.push(Series::new(
                label.clone(),
                rows.iter()
                    .map(|r| (r.0 as f64 / depth, 100.0 * r.2))
                    .collect(),
            ));
            for r in rows {
                model_col.push(label.clone());
                layer_col.push(r.0);
                n_col.push(r.1 as u32);
                like_col.push(r.2);
                strict_col.push(r.3);
            }
        }
    }
    if series.is_empty() {
        return Err("no heads.parquet found under the given run directories".into());
    }
    std::fs::create_dir_all(&out)?;
    let mut df = Table::new()
        .col("model", model_col)
        .col("layer", layer_col)
        .col("heads", n_col)
        .col("cmr_like_share", like_col)
        .col("cmr_strict_share", strict_col)
        .build()?;
    write_parquet(&mut df, &out.join("cmr_share_by_layer.parquet"))?;
    let chart = LineChart {
        title: "CMR-like heads (distance < 0.5) per layer".into(),
        x_label: "relative depth (layer / (layers − 1))".into(),
        y_label: "% of the layer's heads".into(),
        series,
    };
    for p in chart.save(&out, "cmr_share_by_depth")? {
        println!("wrote {}", p.display());
    }
    println!("wrote {}", out.join("cmr_share_by_layer.parquet").display());
    Ok(())
}
