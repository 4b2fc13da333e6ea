//! Attribution-patching benchmark on a real model (default SmolLM2-135M-Instruct, f32): AtP of
//! every resid_pre (layer × position), every head's z and every MLP neuron for IOI pairs — one
//! clean forward + backward and one corrupt forward per pair, no exact patching. Prints one JSON
//! object with the best-of-REPEATS seconds per pair, the pairs' token ids and pair 0's resid
//! AtP grid ([layers][positions]), which scripts/bench/atp_reference.py recomputes with torch
//! autograd on the same ids (scripts/bench/atp.sh compares both).
//!
//!     cargo run --release --example bench_atp -- [MODEL] [PAIRS.jsonl] [N_PAIRS] [REPEATS]

use std::time::Instant;

use engram::model::{LoadOptions, Model};
use engram::probes::attribute::compute::{attribute_pair, Kinds, Options, PairIds};
use engram::probes::attribute::AttributeParams;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> engram::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let spec = args.get(1).map_or("smollm2", String::as_str);
    let pairs = args
        .get(2)
        .map_or("notebooks-data/ioi/pairs.jsonl", String::as_str);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4);
    let reps: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(3);
    let model = Model::load(spec, &LoadOptions::default())?;
    let params = AttributeParams {
        pairs: Some(pairs.into()),
        max_pairs: n,
        ..Default::default()
    };
    // KINDS=resid,heads (default all three) for profiling one kind at a time.
    let kinds = std::env::var("KINDS").unwrap_or_else(|_| "resid,heads,neurons".into());
    let opts = Options {
        kinds: Kinds {
            resid: kinds.contains("resid"),
            heads: kinds.contains("heads"),
            neurons: kinds.contains("neurons"),
        },
        ig_steps: 0,
        patch: false,
        batch: 16,
    };
    let mut ids = vec![];
    for q in params.all_pairs()? {
        ids.push(PairIds {
            clean: model.encode(&q.clean)?,
            corrupt: model.encode(&q.corrupt)?,
            answer: model.single_token(&q.answer, "answer")?,
            wrong: model.single_token(&q.wrong, "wrong")?,
        });
    }
    attribute_pair(&model, &ids[0], &opts)?; // warm-up
    let mut secs = vec![];
    let mut grid = vec![];
    let mut metrics = vec![];
    for (i, p) in ids.iter().enumerate() {
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t0 = Instant::now();
            let a = attribute_pair(&model, p, &opts)?;
            best = best.min(t0.elapsed().as_secs_f64());
            if i == 0 && grid.is_empty() {
                let n_layers = model.cfg().n_layers;
                grid = (0..n_layers)
                    .map(|l| {
                        a.resid
                            .iter()
                            .filter(|c| c.layer == l)
                            .map(|c| c.atp)
                            .collect::<Vec<f64>>()
                    })
                    .collect();
            }
            if metrics.len() == i {
                metrics.push((a.clean_metric, a.corrupt_metric));
            }
        }
        secs.push(best);
    }
    let pairs_json: Vec<_> = ids
        .iter()
        .map(|p| {
            serde_json::json!({"clean": p.clean, "corrupt": p.corrupt, "answer": p.answer, "wrong": p.wrong})
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "model": spec,
            "threads": rayon::current_num_threads(),
            "seconds_per_pair": secs,
            "total_s": secs.iter().sum::<f64>(),
            "metrics": metrics,
            "pairs": pairs_json,
            "resid_atp_pair0": grid,
        })
    );
    Ok(())
}
