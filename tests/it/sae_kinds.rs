//! The SAE kinds beyond the first three: BatchTopK and Matryoshka BatchTopK recover a known
//! dictionary and keep their sparsity through the inference threshold; transcoders and skip
//! transcoders on a store of two hooks (the MLP's input and output) reconstruct the MLP and
//! round-trip through SAELens's layout; several SAEs train from one pass.

use crate::common::max_abs_diff;
use crate::sae::{best_cosines, fixture_model, synthetic_store, token_docs};

use candle_core::{Device, Tensor};
use engram::probes::sae::eval::reconstruction_metrics_to;
use engram::probes::sae::store::{collect, ActivationStore, CollectParams, Docs};
use engram::probes::sae::train::{train, train_many, TrainParams};
use engram::probes::sae::{Sae, SaeKind};
use engram::progress::Progress;

#[test]
fn batchtopk_and_matryoshka_recover_a_known_dictionary_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (d, n_atoms) = (64, 48);
    let atoms = synthetic_store(dir.path(), d, n_atoms, 65536, 3.0 / 48.0, 0.01, 7);
    let store = ActivationStore::open(dir.path()).unwrap();
    let base = TrainParams {
        dict_size: Some(128),
        steps: 3000,
        batch_size: 256,
        lr: 1e-3,
        k: 3,
        seed: 1,
        ..Default::default()
    };
    let kinds = [SaeKind::BatchTopK, SaeKind::Matryoshka];
    let params: Vec<TrainParams> = kinds
        .iter()
        .map(|&kind| TrainParams {
            kind,
            ..base.clone()
        })
        .collect();
    let out = tempfile::tempdir().unwrap();
    let dirs: Vec<std::path::PathBuf> = kinds.iter().map(|k| out.path().join(k.name())).collect();
    let outs: Vec<Option<&std::path::Path>> = dirs.iter().map(|d| Some(d.as_path())).collect();
    let t0 = std::time::Instant::now();
    let done = train_many(&store, &params, &outs, &Device::Cpu, &Progress::quiet()).unwrap();
    let (sample, toks) = store.sample(&[0], 8192).unwrap();
    for ((sae, rep), dir) in done.iter().zip(&dirs) {
        let cos = best_cosines(sae, &atoms);
        let worst = cos.iter().copied().fold(f32::MAX, f32::min);
        eprintln!(
            "{}: {:.1}s, θ {:?}, worst cosine {worst}, last {:?}",
            rep.kind,
            t0.elapsed().as_secs_f64(),
            rep.threshold,
            rep.log.last()
        );
        // (Matryoshka's nested losses cost a little alignment: worst 0.991 at this seed.)
        let want = if rep.kind == SaeKind::Matryoshka {
            0.98
        } else {
            0.99
        };
        assert!(worst > want, "{}: worst atom cosine {worst}", rep.kind);
        // Inference is a JumpReLU with one global threshold that keeps about k active.
        let th = rep.threshold.expect("a BatchTopK threshold");
        assert!(th > 0.0);
        let t: Vec<f32> = sae.threshold.as_ref().unwrap().to_vec1().unwrap();
        assert!(t.iter().all(|&v| (v - th as f32).abs() < 1e-6));
        let e = reconstruction_metrics_to(sae, "x", &sample, None, &toks, 0).unwrap();
        assert!(
            (2.0..4.5).contains(&e.l0) && e.r2 > 0.95,
            "{}: L0 {} R² {} at inference",
            rep.kind,
            e.l0,
            e.r2
        );
        // Saved as SAELens saves BatchTopK: a JumpReLU SAE; engram's metadata keeps the kind.
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("cfg.json")).unwrap()).unwrap();
        assert_eq!(cfg["architecture"], "jumprelu");
        let back = Sae::load(dir, &Device::Cpu).unwrap();
        assert_eq!(back.kind, rep.kind);
        let x = Tensor::from_slice(&sample[..64 * d], (64, d), &Device::Cpu).unwrap();
        let diff = max_abs_diff(&back.forward(&x).unwrap(), &sae.forward(&x).unwrap());
        assert!(diff < 1e-5, "{}: reloaded SAE differs by {diff}", rep.kind);
    }
    // The Matryoshka dictionary's first prefix (n/16 = 8 latents) alone reconstructs more than
    // the same number of BatchTopK latents: the nested losses put the common atoms first.
    let prefix_fvu = |sae: &Sae| -> f64 {
        let mut s = sae.clone();
        let n = s.d_sae();
        let keep: Vec<f32> = (0..n).map(|j| if j < 8 { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(keep, (n, 1), &Device::Cpu).unwrap();
        s.w_dec = s.w_dec.broadcast_mul(&mask).unwrap();
        1.0 - reconstruction_metrics_to(&s, "p", &sample, None, &toks, 0)
            .unwrap()
            .r2
    };
    let (b, m) = (prefix_fvu(&done[0].0), prefix_fvu(&done[1].0));
    eprintln!("FVU of the first 8 latents: batchtopk {b:.3}, matryoshka {m:.3}");
    assert!(m < b, "matryoshka prefix FVU {m} not below batchtopk's {b}");
}

#[test]
fn transcoders_reconstruct_the_mlp_from_a_two_hook_store() {
    let model = fixture_model();
    let docs = token_docs(200, 4);
    let dir = tempfile::tempdir().unwrap();
    let params = CollectParams {
        hook: "blocks.1.ln2.hook_normalized".into(),
        extra_hooks: vec!["blocks.1.hook_mlp_out".into()],
        tokens: 3000,
        shard_size: 500,
        shards_per_round: 2,
        context: 32,
        batch: 8,
        ..Default::default()
    };
    let q = Progress::quiet();
    let store = collect(&model, Docs::Tokens(&docs), &params, dir.path(), &q).unwrap();
    let parts = store.parts();
    assert_eq!(parts.len(), 2);
    assert_eq!((parts[1].offset, parts[1].d), (64, 64));
    assert_eq!(store.d(), 128);
    let (rows, _) = store.read_shard(0).unwrap();
    assert!(parts[1].columns(&rows, 128).iter().any(|v| v.abs() > 1e-3));

    let base = TrainParams {
        kind: SaeKind::TopK,
        dict_size: Some(256),
        k: 32,
        steps: 2000,
        batch_size: 128,
        target: Some("blocks.1.hook_mlp_out".into()),
        eval_shards: 1,
        ..Default::default()
    };
    let skip = TrainParams {
        skip: true,
        ..base.clone()
    };
    let relu = TrainParams {
        kind: SaeKind::Relu,
        l1_coeff: 0.1,
        ..base.clone()
    };
    let out = tempfile::tempdir().unwrap();
    let names = ["topk", "topk_skip", "relu"];
    let dirs: Vec<std::path::PathBuf> = names.iter().map(|n| out.path().join(n)).collect();
    let outs: Vec<Option<&std::path::Path>> = dirs.iter().map(|d| Some(d.as_path())).collect();
    let done = train_many(&store, &[base.clone(), skip, relu], &outs, &Device::Cpu, &q).unwrap();
    let (_, eval_shards) = store.split(1);
    let (rows, toks) = store.sample(&eval_shards, 10_000).unwrap();
    let (x, y) = (parts[0].columns(&rows, 128), parts[1].columns(&rows, 128));
    let mut fvus = vec![];
    for (((sae, rep), dir), name) in done.iter().zip(&dirs).zip(names) {
        assert_eq!(rep.target.as_deref(), Some("blocks.1.hook_mlp_out"));
        assert_eq!(
            sae.hook_name_out().as_deref(),
            Some("blocks.1.hook_mlp_out")
        );
        let e = reconstruction_metrics_to(sae, name, &x, Some(&y), &toks, 0).unwrap();
        // Reconstructing the input instead of the MLP's output would be far worse.
        let wrong = reconstruction_metrics_to(sae, name, &x, Some(&x), &toks, 0).unwrap();
        eprintln!(
            "{name}: held-out FVU {:.3} (of the input instead: {:.3}), L0 {:.1}",
            1.0 - e.r2,
            1.0 - wrong.r2,
            e.l0
        );
        assert!(e.r2 > 0.5, "{name}: held-out FVU {}", 1.0 - e.r2);
        assert!(wrong.r2 < e.r2);
        fvus.push(1.0 - e.r2);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("cfg.json")).unwrap()).unwrap();
        let arch = match name {
            "topk" => "topk_transcoder",
            "topk_skip" => "topk_skip_transcoder",
            _ => "transcoder",
        };
        assert_eq!(cfg["architecture"], arch);
        assert_eq!(cfg["d_out"], 64);
        assert_eq!(cfg["metadata"]["hook_name"], "blocks.1.ln2.hook_normalized");
        let back = Sae::load(dir, &Device::Cpu).unwrap();
        assert_eq!(back.w_skip.is_some(), name == "topk_skip");
        let xt = Tensor::from_slice(&x[..32 * 64], (32, 64), &Device::Cpu).unwrap();
        let diff = max_abs_diff(&back.forward(&xt).unwrap(), &sae.forward(&xt).unwrap());
        assert!(diff < 1e-5, "{name}: reloaded transcoder differs by {diff}");
    }
    // The skip connection can only help (it starts at zero and is learned with the rest).
    assert!(
        fvus[1] < fvus[0] + 0.02,
        "skip transcoder FVU {} vs {}",
        fvus[1],
        fvus[0]
    );
    // A target the store does not hold is named.
    let bad = TrainParams {
        target: Some("blocks.2.hook_mlp_out".into()),
        ..base
    };
    let err = train(&store, &bad, None, &Device::Cpu, &q)
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocks.2.hook_mlp_out") && err.contains("blocks.1.hook_mlp_out"));
}

#[test]
fn saelens_trained_batchtopk_loads_and_matches() {
    let dev = Device::Cpu;
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saelens_batchtopk");
    let sae = Sae::load(&dir, &dev).unwrap();
    // SAELens saved it as a JumpReLU SAE with one global threshold; its metadata says BatchTopK.
    assert_eq!(sae.kind, SaeKind::BatchTopK);
    let th: Vec<f32> = sae.threshold.as_ref().unwrap().to_vec1().unwrap();
    assert!(th.iter().all(|&t| t == th[0] && t > 0.0));
    let e = candle_core::safetensors::load(dir.join("expected.safetensors"), &dev).unwrap();
    let z = sae.encode(&e["x"]).unwrap();
    let fired: f32 = crate::common::count_positive(&z);
    assert!(fired / 32.0 > 2.0, "L0 {}", fired / 32.0);
    let dz = max_abs_diff(&z, &e["feature_acts"]);
    let dy = max_abs_diff(&sae.reconstruct(&e["x"]).unwrap(), &e["sae_out"]);
    eprintln!("SAELens BatchTopK: max |Δz| {dz:e}, max |Δx̂| {dy:e}");
    assert!(dz < 1e-5 && dy < 1e-5, "{dz} {dy}");
}
