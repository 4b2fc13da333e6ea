//! The report page (`index.html`) of single runs: a heads run's page embeds its patterns
//! (equal to `patterns.safetensors` within the quantization step), tokens, top heads, lag-CRPs
//! and fitted curves (equal to the Parquet tables); an `engram cache` capture of `hook_pattern`
//! gets the viewer over its real (unpadded) positions; every link resolves and nothing is
//! fetched from a network.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use engram::report::manifest::Manifest;
use engram::report::table::read_parquet;
use serde_json::Value;

use crate::common::*;

fn paper_table() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy")
        .display()
        .to_string()
}

/// The page's inline JSON block.
fn page_data(html: &str) -> Value {
    let start = r#"<script type="application/json" id="engram-data">"#;
    let a = html.find(start).expect("data block") + start.len();
    let b = a + html[a..].find("</script>").unwrap();
    serde_json::from_str(&html[a..b]).unwrap()
}

fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64 {c}"),
    } as u32;
    let mut out = vec![];
    for ch in s.as_bytes().chunks(4) {
        let n = ch.iter().filter(|&&c| c != b'=').count();
        let mut v = 0u32;
        for (k, &c) in ch.iter().enumerate() {
            v |= if c == b'=' { 0 } else { val(c) } << (18 - 6 * k);
        }
        for k in 0..n - 1 {
            out.push((v >> (16 - 8 * k)) as u8);
        }
    }
    out
}

/// Every `href="…"` / `src="…"` of the page: relative, resolving to an existing file of `dir`.
fn assert_links_resolve(dir: &Path, html: &str, min_links: usize) {
    let mut n = 0;
    for attr in ["href=\"", "src=\""] {
        for part in html.split(attr).skip(1) {
            let url = &part[..part.find('"').unwrap()];
            if url.starts_with('#') {
                continue;
            }
            assert!(!url.contains("://"), "absolute URL {url}");
            let path = url.replace("%20", " ");
            assert!(
                dir.join(&path).is_file(),
                "{url} does not resolve in {dir:?}"
            );
            n += 1;
        }
    }
    assert!(n >= min_links, "only {n} links");
    let without_ns = html.replace("\"http://www.w3.org/2000/svg\"", "");
    assert!(!without_ns.contains("http://") && !without_ns.contains("https://"));
}

/// Every embedded weight equals the file's at the embedded positions, within the 1/255 step.
fn assert_patterns_match(p: &Value, file: &HashMap<String, Tensor>) -> usize {
    let bytes = unbase64(p["data"].as_str().unwrap());
    let heads = p["heads"].as_u64().unwrap() as usize;
    let layers: Vec<usize> = p["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let mut checked = 0;
    for s in p["seqs"].as_array().unwrap() {
        let index = s["index"].as_u64().unwrap() as usize;
        let offset = s["offset"].as_u64().unwrap() as usize;
        let pos: Vec<usize> = s["positions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let n = pos.len();
        for (li, l) in layers.iter().enumerate() {
            let t = &file[&format!("blocks.{l}.attn.hook_pattern")];
            let (_, h, _, tt) = t.dims4().unwrap();
            assert_eq!(h, heads);
            let v = f32s(t);
            for head in 0..h {
                for i in 0..n {
                    for j in 0..n {
                        let want = v[((index * h + head) * tt + pos[i]) * tt + pos[j]];
                        let got = bytes[offset + ((li * h + head) * n + i) * n + j] as f32 / 255.0;
                        assert!(
                            (got - want).abs() <= 0.5 / 255.0 + 1e-6,
                            "L{l}H{head} seq {index} ({i},{j}): page {got}, file {want}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    checked
}

fn col_f64(df: &polars::prelude::DataFrame, name: &str) -> Vec<f64> {
    use polars::prelude::*;
    df.column(name)
        .unwrap()
        .cast(&DataType::Float64)
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .map(|x| x.unwrap_or(f64::NAN))
        .collect()
}

#[test]
fn heads_run_page_embeds_its_patterns_tables_and_fits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (tmp, m, tok, _) = cli_fixture("llama");
    let _ = tmp;
    let (code, _, err) = engram(&[
        "heads",
        "--model",
        &m,
        "--tokenizer",
        &tok,
        "--seq-len",
        "6",
        "--batch",
        "3",
        "--cmr-table",
        &paper_table(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let manifest = Manifest::read(&out.join("manifest.json")).unwrap();
    for f in ["index.html", "patterns.safetensors"] {
        assert!(
            manifest.files.iter().any(|x| x == f),
            "{f} not in the manifest"
        );
    }
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_links_resolve(&out, &html, 20);
    for id in [
        "id=\"attention\"",
        "id=\"lag-crp\"",
        "id=\"tables\"",
        "id=\"charts\"",
    ] {
        assert!(html.contains(id), "no {id}");
    }
    let data = page_data(&html);

    // Patterns: the first 2 of 3 sequences are saved (F16), both embedded, all 13 positions.
    let file =
        candle_core::safetensors::load(out.join("patterns.safetensors"), &Device::Cpu).unwrap();
    let p0 = &file["blocks.0.attn.hook_pattern"];
    assert_eq!(p0.dims(), &[2, 4, 13, 13]);
    assert_eq!(p0.dtype(), DType::F16);
    let p = &data["patterns"];
    assert_eq!(p["seqs"].as_array().unwrap().len(), 2);
    assert_eq!(assert_patterns_match(p, &file), 2 * 4 * 4 * 13 * 13);
    // Each row of a pattern sums to 1 (it is a softmax), so the file holds real patterns.
    let v = f32s(p0);
    for row in v.chunks(13).take(13) {
        let s: f32 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-2, "row sum {s}");
    }
    // Tokens: the strings of tokens.parquet, sequence 0 and 1.
    let tokens = read_parquet(&out.join("tokens.parquet")).unwrap();
    let strs: Vec<String> = tokens
        .column("token_str")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|s| s.unwrap().to_string())
        .collect();
    let shown: Vec<String> = p["seqs"][1]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(shown, strs[13..26].to_vec());
    let ids = file["tokens"].to_vec2::<u32>().unwrap();
    assert_eq!(
        ids[0],
        col_f64(&tokens, "token")[..13]
            .iter()
            .map(|&x| x as u32)
            .collect::<Vec<_>>()
    );

    // Top heads: the best induction score and the lowest CMR distance of heads.parquet.
    let heads = read_parquet(&out.join("heads.parquet")).unwrap();
    let (ind, dist) = (
        col_f64(&heads, "induction_score"),
        col_f64(&heads, "cmr_distance"),
    );
    let (l, h) = (col_f64(&heads, "layer"), col_f64(&heads, "head"));
    let best = (0..ind.len())
        .max_by(|&a, &b| ind[a].total_cmp(&ind[b]))
        .unwrap();
    let top = &data["top"]["induction"][0];
    assert_eq!(
        (top[0].as_f64().unwrap(), top[1].as_f64().unwrap()),
        (l[best], h[best])
    );
    let closest = (0..dist.len())
        .filter(|&i| dist[i].is_finite())
        .min_by(|&a, &b| dist[a].total_cmp(&dist[b]))
        .unwrap();
    assert_eq!(data["top"]["cmr"][0][2].as_f64().unwrap(), dist[closest]);

    // Lag-CRPs and fitted curves: lag_crp.parquet's score and cmr_fit columns.
    let lag = read_parquet(&out.join("lag_crp.parquet")).unwrap();
    let (ll, lh, lg, sc, fit) = (
        col_f64(&lag, "layer"),
        col_f64(&lag, "head"),
        col_f64(&lag, "lag"),
        col_f64(&lag, "score"),
        col_f64(&lag, "cmr_fit"),
    );
    let lags: Vec<f64> = data["lag"]["lags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(lags, (-8..=7).map(f64::from).collect::<Vec<_>>());
    let rows = data["lag"]["heads"].as_array().unwrap();
    assert_eq!(rows.len(), 16);
    let mut fitted = 0;
    for i in 0..ll.len() {
        let r = rows
            .iter()
            .find(|r| r[0].as_f64() == Some(ll[i]) && r[1].as_f64() == Some(lh[i]))
            .unwrap();
        let k = lags.iter().position(|&x| x == lg[i]).unwrap();
        let cmp = |v: &Value, want: f64| match v.as_f64() {
            Some(x) => assert!((x - want).abs() < 1e-12, "{x} vs {want}"),
            None => assert!(!want.is_finite()),
        };
        cmp(&r[2][k], sc[i]);
        cmp(&r[3][k], fit[i]);
        // The fit covers lags −5..+5, for heads with a finite CMR distance.
        assert_eq!(
            fit[i].is_finite(),
            (-5.0..=5.0).contains(&lg[i]) && {
                let hd = (0..l.len())
                    .find(|&j| l[j] == ll[i] && h[j] == lh[i])
                    .unwrap();
                dist[hd].is_finite()
            }
        );
        fitted += fit[i].is_finite() as usize;
    }
    assert!(fitted > 0);

    // Tables: every Parquet file, with its row count.
    let tables = data["tables"].as_array().unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["heads.parquet", "lag_crp.parquet", "tokens.parquet"]
    );
    assert_eq!(tables[1]["total"], 256);
    assert_eq!(tables[0]["rows"].as_array().unwrap().len(), 16);
}

#[test]
fn cache_of_hook_pattern_gets_the_viewer_over_real_positions() {
    let (tmp, m, tok, out) = cli_fixture("llama");
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "hello world\nab\n").unwrap();
    let (code, _, err) = engram(&[
        "cache",
        "-m",
        &m,
        "--tokenizer",
        &tok,
        "--prompts",
        prompts.to_str().unwrap(),
        "--hooks",
        "blocks.*.attn.hook_pattern",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_links_resolve(&out, &html, 3);
    let data = page_data(&html);
    let file =
        candle_core::safetensors::load(out.join("activations.safetensors"), &Device::Cpu).unwrap();
    let p = &data["patterns"];
    let seqs = p["seqs"].as_array().unwrap();
    assert_eq!(seqs.len(), 2);
    // The short prompt is padded: only its real positions are shown.
    let mask = file["attention_mask"].to_vec2::<u32>().unwrap();
    for (s, row) in seqs.iter().zip(&mask) {
        let real: Vec<u64> = (0..row.len() as u64)
            .filter(|&j| row[j as usize] == 1)
            .collect();
        let pos: Vec<u64> = s["positions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(pos, real);
    }
    assert!(
        seqs[1]["positions"].as_array().unwrap().len()
            < seqs[0]["positions"].as_array().unwrap().len()
    );
    assert!(assert_patterns_match(p, &file) > 0);
    assert_eq!(seqs[0]["tokens"][1], "h");

    // A capture without patterns: the page says how to get the viewer.
    let out2 = tmp.path().join("out2");
    let (code, _, err) = engram(&[
        "cache",
        "-m",
        &m,
        "--tokenizer",
        &tok,
        "-p",
        "ab",
        "--hooks",
        "hook_embed",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(out2.join("index.html")).unwrap();
    assert!(html.contains("holds no attention pattern"));
    assert!(page_data(&html).get("patterns").is_none());
}
