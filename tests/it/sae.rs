//! SAEs: recovery of a known sparse dictionary, SAELens round trip, metrics on hand cases,
//! store resumption.

use crate::common::{max_abs_diff, write_char_tokenizer};

use candle_core::{Device, Tensor};
use engram::probes::sae::store::{ActivationStore, StoreMeta};
use engram::probes::sae::train::{train, TrainParams};
use engram::probes::sae::{randn, Sae, SaeKind};
use engram::progress::Progress;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A synthetic store: `n` samples in R^d, each a sum of the atoms that fire (each with
/// probability `p`, magnitude uniform in [1, 2]) plus Gaussian noise of std `noise`.
pub(crate) fn synthetic_store(
    dir: &std::path::Path,
    d: usize,
    n_atoms: usize,
    n: usize,
    p: f64,
    noise: f32,
    seed: u64,
) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let atoms: Vec<Vec<f32>> = (0..n_atoms)
        .map(|_| {
            let v = randn(&mut rng, d);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / norm).collect()
        })
        .collect();
    let mut meta = StoreMeta::new("synthetic", "blocks.0.hook_resid_post", d);
    meta.shard_size = 8192;
    meta.shards_per_round = 4;
    meta.seed = seed;
    let mut store = ActivationStore::create_or_resume(dir, meta).unwrap();
    let per_round = 8192 * 4;
    let mut done = 0;
    while done < n {
        let m = per_round.min(n - done);
        let mut acts = vec![0f32; m * d];
        for i in 0..m {
            let row = &mut acts[i * d..(i + 1) * d];
            for a in &atoms {
                if rng.random::<f64>() < p {
                    let c: f32 = rng.random_range(1.0..2.0);
                    for j in 0..d {
                        row[j] += c * a[j];
                    }
                }
            }
            let e = randn(&mut rng, d);
            for j in 0..d {
                row[j] += noise * e[j];
            }
        }
        done += m;
        store.write_round(acts, vec![0; m], done).unwrap();
    }
    store.finish().unwrap();
    atoms
}

/// For each true atom, the best cosine with a decoder row of `sae`.
pub(crate) fn best_cosines(sae: &Sae, atoms: &[Vec<f32>]) -> Vec<f32> {
    let w: Vec<Vec<f32>> = sae.w_dec.to_vec2().unwrap();
    atoms
        .iter()
        .map(|a| {
            w.iter()
                .map(|r| {
                    let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    r.iter().zip(a).map(|(x, y)| x * y).sum::<f32>() / n
                })
                .fold(f32::MIN, f32::max)
        })
        .collect()
}

#[test]
fn threshold_sae_recovers_a_known_dictionary() {
    let dir = tempfile::tempdir().unwrap();
    // 48 atoms in d = 64, three active per sample on average.
    let (d, n_atoms) = (64, 48);
    let atoms = synthetic_store(dir.path(), d, n_atoms, 65536, 3.0 / 48.0, 0.01, 7);
    let store = ActivationStore::open(dir.path()).unwrap();
    let params = TrainParams {
        kind: SaeKind::Threshold,
        dict_size: Some(128),
        steps: 3000,
        batch_size: 256,
        lr: 1e-3,
        l0_coeff: 3.0,
        // Latents align with atoms before the L0 penalty reaches full strength (with 0.1, one
        // seed in four merged two atoms into one latent).
        sparsity_warmup: 0.3,
        seed: 1,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let (sae, rep) = train(&store, &params, None, &Device::Cpu, &Progress::quiet()).unwrap();
    let cos = best_cosines(&sae, &atoms);
    let mut sorted = cos.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "{:.1}s, {:.0} steps/s, last {:?}, worst cosines {:?}",
        t0.elapsed().as_secs_f64(),
        rep.steps_per_sec,
        rep.log.last(),
        &sorted[..6]
    );
    assert!(sorted[0] > 0.99, "worst atom cosine {}", sorted[0]);

    // An undersized dictionary cannot match every atom.
    let small = TrainParams {
        dict_size: Some(24),
        ..params
    };
    let (sae, _) = train(&store, &small, None, &Device::Cpu, &Progress::quiet()).unwrap();
    let cos = best_cosines(&sae, &atoms);
    let matched = cos.iter().filter(|&&c| c > 0.99).count();
    assert!(matched <= 24, "{matched} atoms matched by 24 latents");
    assert!(matched < n_atoms);
}

/// A ReLU SAE with W_enc = [I, −I], W_dec = [I; −I]: relu(x) − relu(−x) = x, a perfect
/// reconstruction with L0 = the number of non-zero coordinates.
fn identity_sae(d: usize) -> Sae {
    let dev = Device::Cpu;
    let eye = Tensor::eye(d, candle_core::DType::F32, &dev).unwrap();
    let w_enc = Tensor::cat(&[&eye, &eye.neg().unwrap()], 1).unwrap();
    let w_dec = w_enc.t().unwrap().contiguous().unwrap();
    Sae {
        kind: SaeKind::Relu,
        w_enc,
        w_dec,
        b_enc: Tensor::zeros(2 * d, candle_core::DType::F32, &dev).unwrap(),
        b_dec: Tensor::zeros(d, candle_core::DType::F32, &dev).unwrap(),
        threshold: None,
        w_skip: None,
        k: None,
        apply_b_dec_to_input: false,
        meta: Default::default(),
    }
}

#[test]
fn r2_mse_l0_on_hand_cases() {
    use engram::probes::sae::eval::reconstruction_metrics;
    // Samples (1, 0), (0, -2), (3, 4): perfect reconstruction, L0 = (1 + 1 + 2) / 3.
    let x = [1f32, 0., 0., -2., 3., 4.];
    let e = reconstruction_metrics(&identity_sae(2), "id", &x, &[5, 6, 7], 2).unwrap();
    assert!((e.r2 - 1.0).abs() < 1e-9 && e.mse.abs() < 1e-12);
    assert!((e.l0 - 4.0 / 3.0).abs() < 1e-9);
    // Latents: +x0 fires on samples 1 and 3, +x1 on 3, −x0 never, −x1 on 2.
    assert_eq!(e.dead, 1);
    assert!((e.frequency[0] - 2.0 / 3.0).abs() < 1e-9);
    assert!((e.mean_activation[0] - 2.0).abs() < 1e-9);
    assert_eq!(e.top_tokens[0], vec![(7, 3.0), (5, 1.0)]);
    // Halving the decoder: m̂ = m/2, Σ‖m − m̂‖² = Σ‖m‖²/4 = (1 + 4 + 25)/4 = 7.5;
    // mean (4/3, 2/3), Σ‖m − m̄‖² = (1 + 16 + 25)/9 + (4 + 64 + 100)/9 = 210/9.
    let mut half = identity_sae(2);
    half.w_dec = (half.w_dec * 0.5).unwrap();
    let e = reconstruction_metrics(&half, "half", &x, &[0, 0, 0], 0).unwrap();
    assert!((e.r2 - (1.0 - 7.5 * 9.0 / 210.0)).abs() < 1e-6, "{}", e.r2);
    assert!((e.mse - 7.5 / 6.0).abs() < 1e-6);
}

#[test]
fn saelens_layout_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(3);
    let (d, n) = (8, 20);
    let t = |v: Vec<f32>, s: &[usize]| Tensor::from_vec(v, s, &dev).unwrap();
    let sae = Sae {
        kind: SaeKind::Threshold,
        w_enc: t(randn(&mut rng, d * n), &[d, n]),
        w_dec: t(randn(&mut rng, n * d), &[n, d]),
        b_enc: t(randn(&mut rng, n), &[n]),
        b_dec: t(randn(&mut rng, d), &[d]),
        threshold: Some(t(vec![0.3; n], &[n])),
        w_skip: None,
        k: None,
        apply_b_dec_to_input: false,
        meta: Default::default(),
    };
    sae.save(dir.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("cfg.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architecture"], "jumprelu");
    assert_eq!(cfg["d_in"], d);
    assert_eq!(cfg["d_sae"], n);
    let w =
        candle_core::safetensors::load(dir.path().join("sae_weights.safetensors"), &dev).unwrap();
    assert_eq!(w["W_enc"].dims(), &[d, n]);
    assert_eq!(w["W_dec"].dims(), &[n, d]);
    assert_eq!(w["threshold"].dims(), &[n]);
    let back = Sae::load(dir.path(), &dev).unwrap();
    assert_eq!(back.kind, SaeKind::Threshold);
    let x = t(randn(&mut rng, 5 * d), &[5, d]);
    let a: Vec<f32> = sae
        .reconstruct(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = back
        .reconstruct(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a, b);

    // A cfg.json as SAELens writes it for a TopK SAE (older `activation_fn_kwargs` form, extra
    // keys, b_dec subtracted from the input).
    let topk = dir.path().join("topk");
    std::fs::create_dir_all(&topk).unwrap();
    std::fs::write(
        topk.join("cfg.json"),
        r#"{"architecture": "standard", "d_in": 8, "d_sae": 20, "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": 3}, "apply_b_dec_to_input": true,
            "hook_name": "blocks.1.hook_resid_post", "model_name": "x", "dtype": "float32",
            "normalize_activations": "none", "device": "cpu", "context_size": 128}"#,
    )
    .unwrap();
    let mut tensors = std::collections::HashMap::new();
    for k in ["W_enc", "W_dec", "b_enc", "b_dec"] {
        tensors.insert(k.to_string(), w[k].clone());
    }
    candle_core::safetensors::save(&tensors, topk.join("sae_weights.safetensors")).unwrap();
    let s = Sae::load(&topk, &dev).unwrap();
    assert_eq!(
        (s.kind, s.k, s.apply_b_dec_to_input),
        (SaeKind::TopK, Some(3), true)
    );
    let z = s.encode(&x).unwrap();
    let l0: Vec<f32> = z
        .gt(0f32)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(l0.iter().all(|&c| c <= 3.0));
    assert_eq!(s.hook_name().as_deref(), Some("blocks.1.hook_resid_post"));
    // Missing weights are an error, not a panic.
    assert!(Sae::load(&dir.path().join("nope"), &dev).is_err());
}

/// A JumpReLU SAE written by SAELens 6.54 itself (scripts/reference/make_saelens_fixture.py)
/// loads, and engram's encode / decode reproduce what SAELens computed.
#[test]
fn saelens_written_jumprelu_loads_and_matches() {
    let dev = Device::Cpu;
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saelens_jumprelu");
    let sae = Sae::load(&dir, &dev).unwrap();
    assert_eq!(sae.kind, SaeKind::Threshold);
    assert!(sae.apply_b_dec_to_input);
    assert_eq!((sae.d_in(), sae.d_sae()), (16, 48));
    assert_eq!(sae.hook_name().as_deref(), Some("blocks.1.hook_resid_post"));
    let e = candle_core::safetensors::load(dir.join("expected.safetensors"), &dev).unwrap();
    let z = sae.encode(&e["x"]).unwrap();
    // Same support (the thresholds are not within rounding of any pre-activation) ...
    let support = |t: &Tensor| -> Vec<f32> {
        t.gt(0f32)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(support(&z), support(&e["feature_acts"]));
    let l0: f32 = support(&z).iter().sum::<f32>() / 32.0;
    assert!(
        l0 > 4.0 && l0 < 44.0,
        "fixture should have partial support, L0 {l0}"
    );
    // ... and the same values.
    assert!(max_abs_diff(&z, &e["feature_acts"]) < 1e-5);
    let out = sae.reconstruct(&e["x"]).unwrap();
    assert!(max_abs_diff(&out, &e["sae_out"]) < 1e-5);
    // Saved again by engram, it is still the same SAE, in SAELens 6's layout.
    let tmp = tempfile::tempdir().unwrap();
    sae.save(tmp.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("cfg.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architecture"], "jumprelu");
    assert_eq!(cfg["apply_b_dec_to_input"], true);
    assert_eq!(cfg["metadata"]["hook_name"], "blocks.1.hook_resid_post");
    let again = Sae::load(tmp.path(), &dev).unwrap();
    assert_eq!(
        max_abs_diff(&again.reconstruct(&e["x"]).unwrap(), &out),
        0.0
    );
    // Run-time normalisations engram does not implement are refused with a message.
    let mut cfg = cfg;
    cfg["normalize_activations"] = "layer_norm".into();
    std::fs::write(tmp.path().join("cfg.json"), cfg.to_string()).unwrap();
    let err = Sae::load(tmp.path(), &dev).unwrap_err().to_string();
    assert!(err.contains("normalize_activations"), "{err}");
}

pub(crate) fn fixture_model() -> engram::model::Model {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
    engram::model::Model::load(p.to_str().unwrap(), &Default::default()).unwrap()
}

pub(crate) fn token_docs(n: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(5..40);
            (0..len).map(|_| rng.random_range(3..128u32)).collect()
        })
        .collect()
}

#[test]
fn store_resume_matches_one_pass() {
    use engram::probes::sae::store::{collect, CollectParams, Docs};
    let model = fixture_model();
    let docs = token_docs(60, 11);
    let params = CollectParams {
        hook: "blocks.1.hook_resid_post".into(),
        tokens: 700,
        shard_size: 60,
        shards_per_round: 2,
        context: 16,
        batch: 4,
        seed: 5,
        ..Default::default()
    };
    let q = Progress::quiet();
    let one = tempfile::tempdir().unwrap();
    let a = collect(&model, Docs::Tokens(&docs), &params, one.path(), &q).unwrap();
    assert_eq!(a.len(), 700);
    assert!(a.meta.complete && a.n_shards() > 4);
    // Stop after two rounds, reopen, continue.
    let two = tempfile::tempdir().unwrap();
    let half = CollectParams {
        max_new_rounds: Some(2),
        ..params.clone()
    };
    let b = collect(&model, Docs::Tokens(&docs), &half, two.path(), &q).unwrap();
    assert_eq!((b.meta.rounds, b.len(), b.meta.complete), (2, 240, false));
    let b = collect(&model, Docs::Tokens(&docs), &params, two.path(), &q).unwrap();
    assert_eq!(a.meta, b.meta);
    for s in &a.meta.shards {
        let x = std::fs::read(one.path().join(&s.file)).unwrap();
        let y = std::fs::read(two.path().join(&s.file)).unwrap();
        assert_eq!(x, y, "{} differs", s.file);
    }
    // The stored rows are the model's activations at non-BOS positions: check one document.
    let (acts, toks) = a.read_shard(0).unwrap();
    assert!(toks.iter().all(|&t| t >= 3), "BOS or pad stored");
    assert!(acts.iter().all(|v| v.is_finite()));
    // A different setup in the same directory is refused.
    let other = CollectParams {
        seed: 6,
        ..params.clone()
    };
    assert!(collect(&model, Docs::Tokens(&docs), &other, one.path(), &q).is_err());
    // Reader: batches cover the data, shuffled.
    let mut r = a.reader((0..a.n_shards()).collect(), 100, 0);
    let batch = r.next_batch().unwrap();
    assert_eq!(batch.len(), 100 * a.d());
}

#[test]
fn perfect_sae_recovers_all_ce_and_zero_kl() {
    use engram::hooks::HookPoint;
    use engram::probes::sae::eval::{ce_recovered, windows};
    let model = fixture_model();
    let w = windows(&token_docs(4, 2), 16, Some(1), 8);
    let sae = identity_sae(64);
    let r = ce_recovered(
        &model,
        &[&sae],
        HookPoint::ResidPost(1),
        &w,
        true,
        4,
        &Progress::quiet(),
    )
    .unwrap();
    let r = &r[0];
    assert!(r.ce_zero > r.ce_clean, "{r:?}");
    assert!((r.ce_recovered - 1.0).abs() < 1e-4, "{r:?}");
    assert!(r.kl.abs() < 1e-4, "{r:?}");
}

/// `engram --quiet sae ARGS...` in this process.
fn sae_cli(args: &[&str]) -> engram::Result<()> {
    engram::cli::run(["engram", "--quiet", "sae"].iter().chain(args))
}

#[test]
fn train_and_eval_commands_write_tables_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    synthetic_store(&store, 16, 24, 8192, 0.1, 0.01, 1);
    let mut sae_dirs = vec![];
    for (kind, extra) in [
        ("threshold", "--l0-coeff=10"),
        ("relu", "--l1-coeff=1"),
        ("topk", "--k=3"),
    ] {
        let out = dir.path().join(kind);
        sae_cli(&[
            "train",
            "--store",
            store.to_str().unwrap(),
            "--kind",
            kind,
            "--steps",
            "60",
            "--batch-size",
            "128",
            "--checkpoint-every",
            "30",
            extra,
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap();
        assert!(
            out.join("cfg.json").is_file()
                && out.join("checkpoints/step_000030/cfg.json").is_file()
        );
        sae_dirs.push(out);
    }
    // A diverging run is an error and saves nothing.
    let diverged = dir.path().join("diverged");
    let e = sae_cli(&[
        "train",
        "--store",
        store.to_str().unwrap(),
        "--kind",
        "relu",
        "--steps",
        "20",
        "--batch-size",
        "128",
        "--lr",
        "1e30",
        "--out",
        diverged.to_str().unwrap(),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("training diverged") && e.contains("nothing saved"),
        "{e}"
    );
    assert!(!diverged.exists());
    // Evaluating with a model whose hook width differs from the store's: one clear line.
    let e = sae_cli(&[
        "eval",
        "--sae",
        sae_dirs[0].to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--model",
        super::common::fixture_dir("llama2").to_str().unwrap(),
        "--out",
        dir.path().join("eval-wrong-model").to_str().unwrap(),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("evaluate with the model the store came from") && e.contains("width 64"),
        "{e}"
    );
    let eval = dir.path().join("eval");
    let mut args: Vec<String> = ["engram", "--quiet", "sae", "eval", "--store"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(store.to_str().unwrap().into());
    for d in &sae_dirs {
        args.push("--sae".into());
        args.push(d.to_str().unwrap().into());
    }
    args.extend(["--out".to_string(), eval.to_str().unwrap().to_string()]);
    engram::cli::run(args).unwrap();
    let df = engram::report::table::read_parquet(&eval.join("metrics.parquet")).unwrap();
    assert_eq!(df.height(), 4); // three SAEs + neurons
    for c in [
        "kind",
        "layer",
        "dict_size",
        "r2",
        "mse",
        "l0",
        "dead",
        "ce_recovered",
        "kl",
        "q_star",
        "coherence",
    ] {
        assert!(df.column(c).is_ok(), "{c} missing");
    }
    let atoms = engram::report::table::read_parquet(&eval.join("atoms.parquet")).unwrap();
    assert_eq!(atoms.height(), 3 * 64);
    // Top tokens as list columns (tokens and their activations), not packed strings.
    for c in ["top_tokens", "top_activations"] {
        let col = atoms.column(c).unwrap();
        assert!(
            matches!(col.dtype(), polars::prelude::DataType::List(_)),
            "{c}: {:?}",
            col.dtype()
        );
    }
    for f in [
        "r2_vs_l0.png",
        "q_star.png",
        "coherence_hist.png",
        "frequency_hist.png",
        "manifest.json",
    ] {
        assert!(eval.join(f).is_file(), "{f} missing");
    }
}

/// Every `engram sae` subcommand builds (clap's debug assertions run when a subcommand is
/// parsed) and the collection and training seeds stay distinct arguments.
#[test]
fn sae_subcommands_parse() {
    use clap::Parser;
    use engram::cli::{Cli, Command, SaeCommand};
    for sub in ["collect", "train", "eval", "run"] {
        let e = Cli::try_parse_from(["engram", "sae", sub, "--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "sae {sub}");
        let help = e.to_string();
        assert!(
            help.contains("--out") || help.contains("-o"),
            "sae {sub}: {help}"
        );
    }
    let cli = Cli::try_parse_from([
        "engram",
        "sae",
        "run",
        "--model",
        "x",
        "--seed",
        "3",
        "--train-seed",
        "5",
        "--kinds",
        "topk,relu",
        "--sweep",
        "1,2",
        "--tokens",
        "1000",
        "--threshold-lr-mult",
        "4",
        "-o",
        "o",
    ])
    .unwrap();
    let Command::Sae {
        cmd:
            SaeCommand::Run {
                collect,
                train,
                kinds,
                sweep,
                ..
            },
    } = cli.command
    else {
        panic!("not sae run");
    };
    assert_eq!((collect.seed, train.train_seed), (3, 5));
    assert_eq!(kinds, ["topk", "relu"]);
    assert_eq!(sweep, [1.0, 2.0]);
    assert_eq!(collect.tokens, 1000);
    assert_eq!(train.threshold_lr_mult, 4.0);
}

/// `engram sae run` end to end on the llama fixture with a text corpus: collect → train two
/// kinds at two sparsities → eval with CE recovered / KL.
#[test]
fn run_command_collects_trains_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let tok = write_char_tokenizer(dir.path());
    let mut rng = StdRng::seed_from_u64(3);
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far",
    ];
    let docs: Vec<String> = (0..200)
        .map(|_| {
            (0..rng.random_range(5..15))
                .map(|_| words[rng.random_range(0..words.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, docs.join("\n\n")).unwrap();
    let out = dir.path().join("run");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let args = |kinds: &str, sweep: &str| -> Vec<String> {
        [
            "engram",
            "--quiet",
            "sae",
            "run",
            "--model",
            &s(&fixture),
            "--tokenizer",
            &s(&tok),
            "--layer",
            "1",
            "--corpus",
            &s(&corpus),
            "--tokens",
            "3000",
            "--shard-size",
            "500",
            "--shards-per-round",
            "2",
            "--context",
            "32",
            "--steps",
            "40",
            "--batch-size",
            "64",
            "--expansion",
            "2",
            "--ce-docs",
            "2",
            "--ce-context",
            "32",
            "--atom-samples",
            "1000",
            "--eval-samples",
            "500",
            "--kinds",
            kinds,
            "--sweep",
            sweep,
            "-o",
            &s(&out),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    // Bad input is an error, not a panic.
    let err = engram::cli::run(args("threshold,bogus", "1")).unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
    assert!(engram::cli::run(args("relu", "0")).is_err());
    engram::cli::run(args("threshold,relu", "1,4")).unwrap();
    let store = engram::probes::sae::store::ActivationStore::open(&out.join("store")).unwrap();
    assert_eq!(store.len(), 3000);
    assert_eq!(store.meta.hook, "blocks.1.hook_resid_post");
    for k in ["threshold_x1", "threshold_x4", "relu_x1", "relu_x4"] {
        let sae = Sae::load(&out.join(k), &Device::Cpu).unwrap();
        assert_eq!((sae.d_in(), sae.d_sae()), (64, 128), "{k}");
    }
    let eval = out.join("eval");
    let df = engram::report::table::read_parquet(&eval.join("metrics.parquet")).unwrap();
    assert_eq!(df.height(), 5); // four SAEs + neurons
    let ce = df.column("ce_recovered").unwrap().f64().unwrap();
    let kl = df.column("kl").unwrap().f64().unwrap();
    for i in 0..4 {
        assert!(ce.get(i).unwrap().is_finite(), "row {i}");
        assert!(kl.get(i).unwrap() >= 0.0, "row {i}");
    }
    // A 4× larger L1 coefficient gives a sparser ReLU SAE.
    let l0 = df.column("l0").unwrap().f64().unwrap();
    let kind = df.column("kind").unwrap().str().unwrap();
    assert_eq!((kind.get(2), kind.get(3)), (Some("relu"), Some("relu")));
    assert!(l0.get(3).unwrap() < l0.get(2).unwrap(), "{df}");
    for f in [
        "r2_vs_l0.png",
        "q_star.png",
        "atoms.parquet",
        "manifest.json",
    ] {
        assert!(eval.join(f).is_file(), "{f} missing");
    }
}

/// A store whose `store.json` disagrees with its shards names both shapes (it said "expected
/// N rows").
#[test]
fn a_store_with_the_wrong_width_names_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    synthetic_store(&store, 16, 24, 1024, 0.1, 0.01, 1);
    let meta = store.join("store.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    v["d"] = 20.into();
    std::fs::write(&meta, v.to_string()).unwrap();
    let out = dir.path().join("sae");
    let e = sae_cli(&[
        "train",
        "--store",
        store.to_str().unwrap(),
        "--steps",
        "2",
        "-o",
        out.to_str().unwrap(),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("but store.json describes") && e.contains("d = 20"),
        "{e}"
    );
}
