//! The report page's embedded data ([`PageData`]), gathered from a run's files:
//! - `patterns`: attention patterns from `patterns.safetensors` (`engram heads`) or the
//!   `blocks.{l}.attn.hook_pattern` tensors of an `activations.safetensors` (`engram cache`),
//!   quantized to one byte per value (`round(p · 255)`), base64; at most
//!   [`EMBED_PATTERN_BYTES`] bytes (whole sequences while they fit, else the first positions of
//!   the first sequence), with a note saying what was embedded;
//! - `top`: the top induction heads and the most CMR-like heads (`heads.parquet`);
//! - `lag`: every head's lag-CRP score and fitted CMR curve (`lag_crp.parquet`);
//! - `tables`: every Parquet table, at most [`TABLE_ROWS`] rows each (strings cut to
//!   [`CELL_CHARS`] characters), with its total row count.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use polars::prelude::*;
use serde_json::{json, Value};

use super::esc;
use crate::report::table::read_parquet;
use crate::{Error, Result};

/// The most bytes of quantized attention patterns one page embeds.
pub const EMBED_PATTERN_BYTES: usize = 1_500_000;
/// The most rows of one table a page embeds.
pub const TABLE_ROWS: usize = 1000;
/// String cells are cut to this many characters.
pub const CELL_CHARS: usize = 160;
/// Top heads offered as buttons, per kind.
const TOP_HEADS: usize = 5;

/// What a run page embeds, and the sections that show it.
pub struct PageData {
    pub json: Value,
    has_patterns: bool,
    has_lag: bool,
    has_tables: bool,
    pattern_note: String,
}

fn base_name(f: &str) -> &str {
    f.rsplit('/').next().unwrap_or(f)
}

fn sibling(f: &str, name: &str) -> String {
    match f.rsplit_once('/') {
        Some((d, _)) => format!("{d}/{name}"),
        None => name.to_string(),
    }
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

impl PageData {
    /// Gather the data from the run's `files` (relative to `dir`).
    pub fn gather(dir: &Path, files: &[String]) -> Result<Self> {
        let has = |f: &String| dir.join(f).is_file();
        let mut json = serde_json::Map::new();
        let mut pattern_note = String::new();
        let pattern_file = files.iter().filter(|f| has(f)).find(|f| {
            matches!(
                base_name(f),
                "patterns.safetensors" | "activations.safetensors"
            )
        });
        if let Some(f) = pattern_file {
            let tokens = sibling(f, "tokens.parquet");
            let tokens = files.iter().find(|t| **t == tokens && has(t));
            match patterns(dir, f, tokens.map(String::as_str))? {
                Ok(p) => {
                    pattern_note = p["note"].as_str().unwrap_or_default().to_string();
                    json.insert("patterns".into(), p);
                }
                Err(why) => pattern_note = why,
            }
        }
        if let Some(f) = files
            .iter()
            .find(|f| base_name(f) == "heads.parquet" && has(f))
        {
            json.insert("top".into(), top_heads(&read_parquet(&dir.join(f))?));
        }
        if let Some(f) = files
            .iter()
            .find(|f| base_name(f) == "lag_crp.parquet" && has(f))
        {
            json.insert("lag".into(), lag(&read_parquet(&dir.join(f))?, f)?);
        }
        let mut tables = vec![];
        for f in files.iter().filter(|f| f.ends_with(".parquet") && has(f)) {
            tables.push(table(&read_parquet(&dir.join(f))?, f)?);
        }
        let has_tables = !tables.is_empty();
        json.insert("tables".into(), Value::Array(tables));
        Ok(PageData {
            has_patterns: json.contains_key("patterns"),
            has_lag: json.contains_key("lag"),
            has_tables,
            json: Value::Object(json),
            pattern_note,
        })
    }

    /// The page's sections for this data (filled in by the page's script).
    pub fn sections(&self) -> String {
        let mut html = String::new();
        if self.has_patterns || !self.pattern_note.is_empty() {
            let _ = write!(
                html,
                "<section id=\"attention\"><h2>Attention patterns</h2><p class=\"note\" id=\"pv-note\">{}</p>{}</section>",
                esc(&self.pattern_note),
                if self.has_patterns { "<div id=\"pv\"></div>" } else { "" }
            );
        }
        if self.has_lag {
            html.push_str("<section id=\"lag-crp\"><h2>Lag-CRP and CMR fit</h2><div id=\"lag\"></div></section>");
        }
        if self.has_tables {
            html.push_str(
                "<section id=\"tables-section\"><h2>Tables</h2><div id=\"tables\"></div></section>",
            );
        }
        html
    }
}

/// The pattern data of `file`, or (as `Err`) why there is none to show.
fn patterns(
    dir: &Path,
    file: &str,
    tokens_file: Option<&str>,
) -> Result<std::result::Result<Value, String>> {
    let tensors = candle_core::safetensors::load(dir.join(file), &Device::Cpu)?;
    let mut layers: BTreeMap<usize, Tensor> = BTreeMap::new();
    for (name, t) in tensors.iter() {
        if let Some(l) = name
            .strip_prefix("blocks.")
            .and_then(|r| r.strip_suffix(".attn.hook_pattern"))
            .and_then(|l| l.parse::<usize>().ok())
        {
            layers.insert(l, t.clone());
        }
    }
    let Some(first) = layers.values().next() else {
        return Ok(Err(format!(
            "{file} holds no attention pattern (capture blocks.*.attn.hook_pattern to see one here)"
        )));
    };
    let (b, h, q, t) = first.dims4()?;
    if q != t {
        return Ok(Err(format!(
            "{file}: the patterns cover the last {q} of {t} positions (--last); the viewer needs every position"
        )));
    }
    if let Some((l, x)) = layers.iter().find(|(_, x)| x.dims() != first.dims()) {
        crate::bail!(
            "{file}: layer {l}'s pattern is {:?}, not {:?}",
            x.dims(),
            first.dims()
        );
    }
    // Each sequence's positions and token strings.
    let mut seqs: Vec<(Vec<usize>, Vec<String>)> = vec![];
    if let Some(tf) = tokens_file {
        let df = read_parquet(&dir.join(tf))?;
        let seq_col = if df.column("sequence").is_ok() {
            "sequence"
        } else {
            "prompt"
        };
        let s = u32_col(&df, seq_col, tf)?;
        let p = u32_col(&df, "position", tf)?;
        let strs: Vec<String> = match df.column("token_str") {
            Ok(c) => c
                .str()
                .map_err(|e| Error::msg(format!("{tf}: token_str: {e}")))?
                .iter()
                .map(|x| x.unwrap_or("").to_string())
                .collect(),
            Err(_) => u32_col(&df, "token", tf)?
                .iter()
                .map(|x| x.to_string())
                .collect(),
        };
        seqs = vec![(vec![], vec![]); b];
        for ((s, p), x) in s.iter().zip(&p).zip(strs) {
            if let Some(e) = seqs.get_mut(*s as usize) {
                if (*p as usize) < t {
                    e.0.push(*p as usize);
                    e.1.push(x);
                }
            }
        }
    } else if let Some(ids) = tensors.get("tokens") {
        for row in ids.to_dtype(DType::U32)?.to_vec2::<u32>()? {
            seqs.push((
                (0..t).collect(),
                row.iter().map(|x| x.to_string()).collect(),
            ));
        }
    } else {
        seqs = vec![((0..t).collect(), (0..t).map(|i| i.to_string()).collect()); b];
    }
    seqs.truncate(b);
    let nl = layers.len();
    // Whole sequences while they fit; else the first positions of the first.
    let per = |n: usize| nl * h * n * n;
    let mut chosen = vec![];
    let mut total = 0;
    for (i, (pos, _)) in seqs.iter().enumerate() {
        if pos.is_empty() || total + per(pos.len()) > EMBED_PATTERN_BYTES {
            break;
        }
        total += per(pos.len());
        chosen.push((i, pos.len()));
    }
    let mut cut = None;
    if chosen.is_empty() {
        let n = ((EMBED_PATTERN_BYTES / (nl * h).max(1)) as f64).sqrt() as usize;
        let n = n.min(seqs.first().map_or(0, |s| s.0.len()));
        if n < 2 {
            return Ok(Err(format!("{file}: too many heads to embed a pattern")));
        }
        cut = Some((seqs[0].0.len(), n));
        chosen.push((0, n));
    }
    let mut bytes = Vec::with_capacity(total.max(per(chosen[0].1)));
    let mut out_seqs = vec![];
    let vals: Vec<Vec<f32>> = layers
        .values()
        .map(|x| Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?))
        .collect::<Result<_>>()?;
    for &(s, n) in &chosen {
        let (pos, strs) = &seqs[s];
        out_seqs.push(json!({
            "index": s,
            "offset": bytes.len(),
            "positions": pos[..n],
            "tokens": strs[..n],
        }));
        for v in &vals {
            for head in 0..h {
                let base = (s * h + head) * t * t;
                for &i in &pos[..n] {
                    for &j in &pos[..n] {
                        bytes.push(quantize(v[base + i * t + j]));
                    }
                }
            }
        }
    }
    let mut note = format!(
        "{file}: {b} sequence{} × {} layer{} × {h} heads × {t} positions. Embedded here: ",
        if b == 1 { "" } else { "s" },
        nl,
        if nl == 1 { "" } else { "s" },
    );
    match cut {
        Some((of, n)) => {
            let _ = write!(note, "sequence 0, its first {n} of {of} positions");
        }
        None => {
            let _ = write!(
                note,
                "{} of the {b} sequence{} (all positions)",
                chosen.len(),
                if b == 1 { "" } else { "s" }
            );
        }
    }
    let _ = write!(
        note,
        "; values quantized to steps of 1/255 ({:.0} KB, the page's cap is {:.0} KB).",
        bytes.len() as f64 / 1e3,
        EMBED_PATTERN_BYTES as f64 / 1e3
    );
    Ok(Ok(json!({
        "source": file,
        "layers": layers.keys().collect::<Vec<_>>(),
        "heads": h,
        "scale": 255,
        "seqs": out_seqs,
        "data": base64(&bytes),
        "note": note,
    })))
}

/// One attention weight as a byte: `round(clamp(p, 0, 1) · 255)` (NaN → 0).
pub fn quantize(p: f32) -> u8 {
    if p.is_nan() {
        0
    } else {
        (p.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

fn u32_col(df: &DataFrame, name: &str, file: &str) -> Result<Vec<u32>> {
    let c = df
        .column(name)
        .and_then(|c| c.cast(&DataType::UInt32))
        .map_err(|e| Error::msg(format!("{file}: column {name}: {e}")))?;
    let c = c
        .u32()
        .map_err(|e| Error::msg(format!("{file}: column {name}: {e}")))?;
    Ok(c.iter().map(|x| x.unwrap_or(0)).collect())
}

fn f64_col(df: &DataFrame, name: &str) -> Option<Vec<f64>> {
    let c = df.column(name).ok()?.cast(&DataType::Float64).ok()?;
    let c = c.f64().ok()?;
    Some(c.iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

/// The top induction heads and the most CMR-like heads: `[layer, head, value]`.
fn top_heads(df: &DataFrame) -> Value {
    let (Some(l), Some(h)) = (f64_col(df, "layer"), f64_col(df, "head")) else {
        return Value::Null;
    };
    let top = |col: &str, desc: bool| -> Value {
        let Some(v) = f64_col(df, col) else {
            return Value::Array(vec![]);
        };
        let mut idx: Vec<usize> = (0..v.len()).filter(|&i| v[i].is_finite()).collect();
        idx.sort_by(|&a, &b| {
            let o = v[a].total_cmp(&v[b]);
            if desc {
                o.reverse()
            } else {
                o
            }
        });
        idx.iter()
            .take(TOP_HEADS)
            .map(|&i| json!([l[i] as u64, h[i] as u64, v[i]]))
            .collect()
    };
    json!({ "induction": top("induction_score", true), "cmr": top("cmr_distance", false) })
}

/// Every head's lag-CRP score (and fitted CMR curve) by lag.
fn lag(df: &DataFrame, file: &str) -> Result<Value> {
    let need = |c: &str| f64_col(df, c).ok_or_else(|| Error::msg(format!("{file}: no column {c}")));
    let (l, h, lag, score) = (need("layer")?, need("head")?, need("lag")?, need("score")?);
    let fit = f64_col(df, "cmr_fit");
    let mut lags: Vec<i64> = lag.iter().map(|&x| x as i64).collect();
    lags.sort();
    lags.dedup();
    let mut heads: BTreeMap<(u64, u64), (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for i in 0..l.len() {
        let e = heads
            .entry((l[i] as u64, h[i] as u64))
            .or_insert_with(|| (vec![Value::Null; lags.len()], vec![Value::Null; lags.len()]));
        let k = lags.binary_search(&(lag[i] as i64)).unwrap_or(0);
        e.0[k] = num(score[i]);
        if let Some(f) = &fit {
            e.1[k] = num(f[i]);
        }
    }
    let rows: Vec<Value> = heads
        .into_iter()
        .map(|((l, h), (s, f))| {
            json!([
                l,
                h,
                s,
                if fit.is_some() {
                    Value::Array(f)
                } else {
                    Value::Null
                }
            ])
        })
        .collect();
    Ok(json!({ "source": file, "lags": lags, "heads": rows }))
}

/// A table's first [`TABLE_ROWS`] rows as JSON (numbers, booleans, strings).
fn table(df: &DataFrame, file: &str) -> Result<Value> {
    let n = df.height().min(TABLE_ROWS);
    let mut cols = vec![];
    let mut data: Vec<Vec<Value>> = vec![];
    for c in df.columns() {
        let dt = c.dtype();
        let kind;
        let vals: Vec<Value> = if dt.is_bool() {
            kind = "bool";
            let b = c.bool().map_err(|e| Error::msg(format!("{file}: {e}")))?;
            (0..n)
                .map(|i| b.get(i).map_or(Value::Null, Value::Bool))
                .collect()
        } else if dt.is_primitive_numeric() {
            kind = "num";
            let v = c
                .cast(&DataType::Float64)
                .map_err(|e| Error::msg(format!("{file}: {e}")))?;
            let v = v.f64().map_err(|e| Error::msg(format!("{file}: {e}")))?;
            (0..n).map(|i| v.get(i).map_or(Value::Null, num)).collect()
        } else {
            kind = "str";
            (0..n)
                .map(|i| {
                    let s = match c.get(i) {
                        Ok(AnyValue::String(s)) => s.to_string(),
                        Ok(AnyValue::Null) => return Value::Null,
                        Ok(v) => v.to_string(),
                        Err(_) => return Value::Null,
                    };
                    Value::String(s.chars().take(CELL_CHARS).collect())
                })
                .collect()
        };
        cols.push(json!({ "name": c.name().as_str(), "kind": kind }));
        data.push(vals);
    }
    let rows: Vec<Value> = (0..n)
        .map(|i| Value::Array(data.iter().map(|c| c[i].clone()).collect()))
        .collect();
    Ok(json!({ "name": file, "columns": cols, "rows": rows, "total": df.height() }))
}

/// Standard base64 (with padding).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                o.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_quantize() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x10]), "//4AEA==");
        assert_eq!(quantize(0.0), 0);
        assert_eq!(quantize(1.0), 255);
        assert_eq!(quantize(0.5), 128);
        assert_eq!(quantize(f32::NAN), 0);
        assert_eq!(quantize(1.7), 255);
    }

    #[test]
    fn large_captures_are_cut_to_the_cap_and_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let (nl, h, t) = (30, 9, 100);
        let ts = (0..nl).map(|l| {
            let p = Tensor::full(0.25f32, (2, h, t, t), &Device::Cpu).unwrap();
            (format!("blocks.{l}.attn.hook_pattern"), p)
        });
        crate::report::write_safetensors(&dir.path().join("activations.safetensors"), ts).unwrap();
        let d = PageData::gather(dir.path(), &["activations.safetensors".into()]).unwrap();
        let p = &d.json["patterns"];
        assert_eq!(p["seqs"].as_array().unwrap().len(), 1);
        let n = p["seqs"][0]["positions"].as_array().unwrap().len();
        assert!(n < t);
        assert!(nl * h * n * n <= EMBED_PATTERN_BYTES);
        assert!(nl * h * (n + 1) * (n + 1) > EMBED_PATTERN_BYTES);
        let note = p["note"].as_str().unwrap();
        assert!(
            note.contains(&format!("first {n} of {t} positions")),
            "{note}"
        );
        assert_eq!(
            p["data"].as_str().unwrap().len(),
            (nl * h * n * n).div_ceil(3) * 4
        );
        assert!(d.sections().contains(&esc(note)));
        // No token table: positions and their numbers stand in for the tokens.
        assert_eq!(p["seqs"][0]["tokens"][3], "3");
    }
}
