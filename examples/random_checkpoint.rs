//! Write a random checkpoint of a real model's shape (bf16 safetensors shards, config.json,
//! a byte-level tokenizer.json), streamed to disk: `engram::model::random_checkpoint`.
//!
//! ```text
//! cargo run --release --example random_checkpoint -- --shape llama-3.2-1b --out /tmp/rand-1b \
//!     [--seed 0] [--layers N] [--shard-gb 5]
//! ```
//! Shapes: llama-3.2-1b, llama-3.2-3b, llama-3-8b, gemma-2-2b. `--layers` keeps the widths
//! and cuts the depth (small files for tests).

use engram::model::random_checkpoint::{shape, write, SHAPES};

fn main() -> engram::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let (Some(name), Some(out)) = (get("--shape"), get("--out")) else {
        eprintln!(
            "usage: random_checkpoint --shape {} --out DIR [--seed N] [--layers N] \
             [--shard-gb G]",
            SHAPES.join("|")
        );
        std::process::exit(2);
    };
    let num = |flag: &str| -> engram::Result<Option<f64>> {
        get(flag)
            .map(|v| {
                v.parse::<f64>()
                    .map_err(|_| engram::Error::msg(format!("{flag}: not a number: {v}")))
            })
            .transpose()
    };
    let mut s = shape(&name)?;
    if let Some(l) = num("--layers")? {
        s.layers = l as usize;
    }
    let seed = num("--seed")?.unwrap_or(0.0) as u64;
    let shard = (num("--shard-gb")?.unwrap_or(5.0) * 1e9) as u64;
    let t0 = std::time::Instant::now();
    let w = write(&s, std::path::Path::new(&out), seed, shard)?;
    println!(
        "{out}: {name}, {} layers, {:.3} B parameters, {:.2} GB in {} file(s), {:.1} s",
        s.layers,
        w.parameters as f64 / 1e9,
        w.bytes as f64 / 1e9,
        w.files.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
