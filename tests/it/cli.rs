//! The binary: one-line errors with a non-zero exit for bad input; `cache`, `info`, `tokenize`
//! and `generate` on a real model; help on every option; built-in data from any directory.

use crate::common::*;

/// A copy of the llama fixture (config.json + model.safetensors) in `d/name` with `edit`
/// applied to its config; returns the folder as a `--model` value.
fn llama_copy(
    d: &std::path::Path,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> String {
    let dir = d.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("llama").join("config.json")).unwrap(),
    )
    .unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        fixture_dir("llama").join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    dir.to_str().unwrap().to_string()
}

/// Configs and checkpoints that panicked, aborted or ran silently wrong (issue 25, the fuzzer):
/// each is a one-line error.
#[test]
fn bad_configs_and_checkpoints_give_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 4] = [
        (
            "zero-heads",
            |c| c["num_attention_heads"] = 0.into(),
            "0 attention heads",
        ),
        // Found by examples/fuzz.rs: a 1e11-element allocation, an abort.
        (
            "huge-layers",
            |c| c["num_hidden_layers"] = 99_999_999_999u64.into(),
            "beyond any real model",
        ),
        // Silently gave NaN logits.
        (
            "neg-theta",
            |c| {
                c["rope_theta"] = (-10000.0).into();
                if let Some(p) = c.get_mut("rope_parameters") {
                    p["rope_theta"] = (-10000.0).into();
                }
            },
            "rope theta must be a positive number",
        ),
        // Fewer layers than the checkpoint: was silently truncated.
        (
            "few-layers",
            |c| c["num_hidden_layers"] = 1.into(),
            "layers but the config describes 1",
        ),
    ];
    for (name, edit, needle) in cases {
        assert_one_line_error(&["info", "--model", &llama_copy(d, name, edit)], needle);
    }
    // Found by the fuzzer: a tokenizer.json whose decoder makes the tokenizers crate panic.
    let badtok = llama_copy(d, "badtok", |_| {});
    std::fs::copy(
        fixture_dir("fuzz").join("tokenizer_decoder_panic.json"),
        std::path::Path::new(&badtok).join("tokenizer.json"),
    )
    .unwrap();
    assert_one_line_error(&["info", "--model", &badtok], "malformed tokenizer");
    // A GGUF whose last tensor starts inside the file but ends past it.
    let gguf = std::fs::read(fixture_dir("qwen3").join("model.gguf")).unwrap();
    let cut = d.join("cut.gguf");
    std::fs::write(&cut, &gguf[..gguf.len() - 100]).unwrap();
    assert_one_line_error(
        &["info", "--model", cut.to_str().unwrap()],
        "runs past the end",
    );
    // Weights that cannot fit in memory are refused from the headers, before any allocation:
    // a (sparse) 1 TB safetensors file whose header declares one 2^38-element f32 tensor.
    let big = std::path::PathBuf::from(llama_copy(d, "terabyte", |_| {}));
    let bytes: u64 = 1 << 40;
    let header = format!(
        r#"{{"model.embed_tokens.weight":{{"dtype":"F32","shape":[262144,1048576],"data_offsets":[0,{bytes}]}}}}"#
    );
    let mut h = header.into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut f = std::fs::File::create(big.join("model.safetensors")).unwrap();
    std::io::Write::write_all(&mut f, &(h.len() as u64).to_le_bytes()).unwrap();
    std::io::Write::write_all(&mut f, &h).unwrap();
    if f.set_len(8 + h.len() as u64 + bytes).is_ok() {
        drop(f);
        assert_one_line_error(&["info", "--model", big.to_str().unwrap()], "more than the");
    }
    // NaN weights gave NaN logits and activations with exit code 0: refused, naming the tensor.
    let nan = std::path::PathBuf::from(llama_copy(d, "nan", |_| {}));
    let st = nan.join("model.safetensors");
    let cpu = candle_core::Device::Cpu;
    let mut ts = candle_core::safetensors::load(&st, &cpu).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let w = &ts[name];
    let mut v = w
        .flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    v = v
        .to_vec1::<f32>()
        .map(|mut x| {
            x[3] = f32::NAN;
            x[5] = f32::INFINITY;
            candle_core::Tensor::from_vec(x, w.dims(), &cpu).unwrap()
        })
        .unwrap();
    let v = v.to_dtype(w.dtype()).unwrap();
    ts.insert(name.to_string(), v);
    candle_core::safetensors::save(&ts, &st).unwrap();
    assert_one_line_error(
        &["info", "--model", nan.to_str().unwrap()],
        "model.layers.1.mlp.up_proj.weight holds 2 NaN or infinite values",
    );
}

/// Issue-25 defects that panicked or wrote nonsense with rc 0: an `.npy` whose shape overflows
/// or outgrows its file, NaN lag-CRPs, zero or degenerate sizes, generation past the context.
#[test]
fn absurd_sizes_give_one_line_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let npy = |name: &str, shape: &str, data: usize| {
        let header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({shape}), }}");
        let mut h = header.into_bytes();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(b' ');
        }
        h.push(b'\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((h.len() as u16).to_le_bytes());
        bytes.extend(h);
        bytes.extend(vec![0u8; data]);
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let out = d.join("out");
    let o = out.to_str().unwrap();
    let huge = npy("huge.npy", "4294967296, 4294967296, 16", 64);
    assert_one_line_error(
        &["cmr-fit", "--crp", huge.to_str().unwrap(), "-o", o],
        "overflows",
    );
    // NaN lag-CRPs give no CMR-like share (were reported as "0.0% CMR-like").
    let nan = npy("nan.npy", "1, 2, 16", 256);
    let mut bytes = std::fs::read(&nan).unwrap();
    let n = bytes.len();
    for (i, b) in bytes[n - 256..].iter_mut().enumerate() {
        *b = f64::NAN.to_le_bytes()[i % 8];
    }
    std::fs::write(&nan, bytes).unwrap();
    let nan_out = d.join("nan-out");
    let (code, stdout, err) = super::common::engram(&[
        "cmr-fit",
        "--crp",
        nan.to_str().unwrap(),
        "--table",
        fixture_dir("../../notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy")
            .to_str()
            .unwrap(),
        "-o",
        nan_out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("no CMR-like share"), "{stdout}");
    assert!(!stdout.contains("0.0% CMR-like"), "{stdout}");
    let short = npy("short.npy", "12, 16, 16", 64);
    assert_one_line_error(
        &["cmr-fit", "--crp", short.to_str().unwrap(), "-o", o],
        "needs 24576 bytes",
    );
    assert_one_line_error(
        &[
            "sae",
            "train",
            "--store",
            d.to_str().unwrap(),
            "--batch-size",
            "0",
            "-o",
            o,
        ],
        "--batch-size must be at least 1",
    );
    assert_one_line_error(
        &[
            "sae",
            "train",
            "--store",
            d.to_str().unwrap(),
            "--lr",
            "NaN",
            "-o",
            o,
        ],
        "--lr must be a positive number",
    );
    // Toy sizes that would be OOM-killed are refused up front.
    assert_one_line_error(&["toy", "--seq-len", "5000", "-o", o], "needs about");
    assert_one_line_error(&["toy", "--vocab", "100000000", "-o", o], "needs about");
    // Sizes that gave empty or degenerate outputs with rc 0.
    let m = fixture_dir("llama2");
    let m = m.to_str().unwrap();
    let (_tok_dir, _, tok, _) = super::common::cli_fixture("llama2");
    let tok = tok.as_str();
    let collect = [
        "sae",
        "collect",
        "-m",
        m,
        "--hook",
        "blocks.0.hook_resid_post",
    ];
    let cache = ["cache", "-m", m, "--tokenizer", tok, "-p", "ab", "--hooks"];
    for (command, extra, needle) in [
        (
            &collect[..],
            &["--tokens", "0"][..],
            "--tokens must be at least 1",
        ),
        (
            &collect,
            &["--shard-size", "0"],
            "--shard-size must be at least 1",
        ),
        (
            &collect,
            &["--tokens", "100000", "--shard-size", "2"],
            "would write 50000 shards",
        ),
        (
            &["neurons", "-m", m],
            &["--eval-per-relation", "0"],
            "--eval-per-relation must be at least 1",
        ),
        (
            &cache,
            &["blocks.0.hook_resid_post", "--last", "0"],
            "--last 0 keeps no positions",
        ),
        (&cache, &[""], "--hooks is empty"),
        (
            &cache,
            &["blocks.99.hook_resid_post"],
            "layer 99 is out of range",
        ),
    ] {
        let a = [command, extra, &["-o", o]].concat();
        assert_one_line_error(&a, needle);
    }
    assert!(!out.exists(), "a refused command wrote {}", out.display());
    // Generation past the context is an error, not a silent truncation (fixture context 64).
    let long = "x".repeat(60);
    assert_one_line_error(
        &[
            "generate",
            "-m",
            m,
            "--tokenizer",
            tok,
            "-p",
            &long,
            "-n",
            "20",
        ],
        "exceeds the model's context (64)",
    );
}

#[test]
fn bad_input_gives_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert_one_line_error(&["info", "--model", "/nonexistent/model.gguf"], "not found");
    assert_one_line_error(&["info", "--model", "nonexistent-model"], "not found");
    // Truncated GGUF.
    let trunc = d.join("trunc.gguf");
    std::fs::write(&trunc, b"GGUF\x03\x00\x00\x00").unwrap();
    assert_one_line_error(&["info", "--model", trunc.to_str().unwrap()], "trunc.gguf");
    // Unsupported architecture.
    let gpt2 = d.join("gpt2");
    std::fs::create_dir_all(&gpt2).unwrap();
    std::fs::write(gpt2.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    assert_one_line_error(
        &["info", "--model", gpt2.to_str().unwrap()],
        "unsupported architecture `bert`",
    );
    // Missing weights.
    let noweights = d.join("noweights");
    std::fs::create_dir_all(&noweights).unwrap();
    std::fs::copy(
        fixture_dir("llama").join("config.json"),
        noweights.join("config.json"),
    )
    .unwrap();
    assert_one_line_error(
        &["info", "--model", noweights.to_str().unwrap()],
        "no model.safetensors",
    );
    // Truncated safetensors.
    let trunc_st = d.join("trunc_st");
    std::fs::create_dir_all(&trunc_st).unwrap();
    std::fs::copy(
        fixture_dir("llama").join("config.json"),
        trunc_st.join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(fixture_dir("llama").join("model.safetensors")).unwrap();
    std::fs::write(
        trunc_st.join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    assert_one_line_error(
        &["info", "--model", trunc_st.to_str().unwrap()],
        "model.safetensors",
    );
    let llama = fixture_dir("llama");
    let llama = llama.to_str().unwrap();
    let out = d.join("out");
    let out = out.to_str().unwrap();
    // The fixture has no tokenizer: prompts cannot be encoded.
    assert_one_line_error(
        &[
            "cache",
            "--model",
            llama,
            "-p",
            "hi",
            "--hooks",
            "hook_embed",
            "--out",
            out,
        ],
        "tokenizer",
    );
    // bf16 products need f32 weights on the CPU; an unknown precision is refused by the parser.
    assert_one_line_error(
        &[
            "info", "--model", llama, "--dtype", "bf16", "--matmul", "bf16",
        ],
        "bf16 matmul needs an f32 model",
    );
    let (code, _, err) = engram(&["info", "--model", llama, "--matmul", "f16"]);
    assert!(code != 0 && err.contains("f16"), "{err}");
    let (code, stdout, err) = engram(&["info", "--model", llama, "--matmul", "bf16"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("matmul       bf16"), "{stdout}");
}

#[test]
fn hook_errors_and_cache_output_on_a_real_model() {
    if real_model("smollm2").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("acts");
    let out_s = out.to_str().unwrap();
    assert_one_line_error(
        &[
            "cache",
            "--model",
            "smollm2",
            "-p",
            "hello",
            "--hooks",
            "blocks.0.attn.hook_nothing",
            "--out",
            out_s,
        ],
        "unknown hook point",
    );
    assert_one_line_error(
        &[
            "cache",
            "--model",
            "smollm2",
            "-p",
            "hello",
            "--hooks",
            "blocks.99.hook_resid_post",
            "--out",
            out_s,
        ],
        "layer 99 is out of range",
    );
    let long = "word ".repeat(9000);
    assert_one_line_error(
        &[
            "cache",
            "--model",
            "smollm2",
            "-p",
            &long,
            "--hooks",
            "hook_embed",
            "--out",
            out_s,
        ],
        "longer than the model's context",
    );
    assert!(
        !out.join("activations.safetensors").exists(),
        "half-written output after an error"
    );
    let (code, stdout, err) = engram(&[
        "cache",
        "--model",
        "smollm2",
        "-p",
        "The Eiffel Tower",
        "-p",
        "x",
        "--hooks",
        "blocks.*.hook_resid_post,blocks.3.attn.hook_pattern",
        "--last",
        "2",
        "--out",
        out_s,
    ]);
    // Two -p flags are a usage error (exit 2), not a panic.
    assert_eq!(code, 2, "{stdout}{err}");
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "The Eiffel Tower\nHello there, how are you\n").unwrap();
    let (code, stdout, err) = engram(&[
        "cache",
        "--model",
        "smollm2",
        "--prompts",
        prompts.to_str().unwrap(),
        "--hooks",
        "blocks.*.hook_resid_post,blocks.3.attn.hook_pattern",
        "--last",
        "2",
        "--out",
        out_s,
    ]);
    assert_eq!(code, 0, "{stdout}{err}");
    let t = candle_core::safetensors::load(
        out.join("activations.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(t["blocks.0.hook_resid_post"].dims(), [2, 2, 576]);
    assert_eq!(t["blocks.3.attn.hook_pattern"].dims()[..3], [2, 9, 2]);
    assert_eq!(t.len(), 30 + 1 + 2);
    assert!(out.join("manifest.json").is_file());
    // tokens.parquet: one row per real token, with the token strings.
    let df = engram::report::table::read_parquet(&out.join("tokens.parquet")).unwrap();
    let strs: Vec<String> = df
        .column("token_str")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|x| x.unwrap_or_default().to_string())
        .collect();
    assert!(strs.concat().starts_with("The Eiffel Tower"), "{strs:?}");
    let (code, stdout, _) = engram(&["info", "--model", "smollm2", "--hooks"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("layers       30"));
    for debug in ["Some(", "None", "F32", "Llama3 {"] {
        assert!(
            !stdout.contains(debug),
            "info prints a debug form {debug}: {stdout}"
        );
    }
    assert!(stdout.contains("blocks.0.hook_resid_post") && stdout.contains("[B, T, 576]"));
    assert!(stdout.contains("blocks.3.attn.hook_pattern") && stdout.contains("[B, 9, T, S]"));
    // tokenize: ids and token strings.
    let (code, stdout, err) = engram(&["tokenize", "--model", "smollm2", "-p", "Hello world"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("\"Hello\"") && stdout.contains("\" world\""),
        "{stdout}"
    );
    // generate: seeded sampling repeats, greedy is the default, --logprobs prints the top tokens.
    let gen = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            "smollm2",
            "-p",
            "Once upon a time",
            "-n",
            "6",
        ];
        a.extend_from_slice(extra);
        let (code, stdout, err) = engram(&a);
        assert_eq!(code, 0, "{err}");
        stdout
    };
    let hot = ["--temperature", "1.5", "--seed", "3"];
    assert_eq!(gen(&hot), gen(&hot));
    assert_eq!(gen(&[]), gen(&["--temperature", "0"]));
    let lp = gen(&["--logprobs", "3"]);
    assert_eq!(lp.lines().count(), 1 + 6, "{lp}");
    assert_one_line_error(
        &[
            "generate",
            "--model",
            "smollm2",
            "-p",
            "x",
            "--temperature=-1",
        ],
        "--temperature",
    );
}

/// Every option of every subcommand explains itself, and a probe's flags are its parameters'
/// keys (so a suite's `args` and the command line use the same names).
#[test]
fn every_option_has_help_and_probe_flags_are_parameters() {
    use clap::CommandFactory;
    fn walk(c: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
        for sub in c.get_subcommands() {
            let p = format!("{path} {}", sub.get_name()).trim().to_string();
            out.push((p.clone(), sub.clone()));
            walk(sub, &p, out);
        }
    }
    let root = engram::cli::Cli::command();
    let mut cmds = vec![];
    walk(&root, "", &mut cmds);
    let mut missing = vec![];
    for (name, c) in &cmds {
        if c.get_about().is_none() && c.get_name() != "help" {
            missing.push(format!("{name}: no about"));
        }
        for a in c.get_arguments() {
            let id = a.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{name} --{id}"));
            }
        }
        // A probe: every flag but the model's, --out and the global ones is a parameter key.
        let Some(keys) = engram::probes::param_keys(name) else {
            continue;
        };
        for a in c.get_arguments() {
            let id = a.get_id().as_str();
            let skip = [
                "help",
                "version",
                "quiet",
                "json_progress",
                "out",
                "force",
                "model",
            ];
            if skip.contains(&id) || engram::model::ModelSpec::KEYS.contains(&id) {
                continue;
            }
            // `--no-chat` sets `chat = false`.
            let key = if id == "no_chat" { "chat" } else { id };
            assert!(
                keys.iter().any(|k| k == key),
                "{name} --{id}: not a parameter (keys: {keys:?})"
            );
        }
    }
    assert!(missing.is_empty(), "options without help: {missing:?}");
    // Every probe has a subcommand.
    for p in engram::probes::NAMES {
        assert!(cmds.iter().any(|(n, _)| n == p), "probe {p} has no command");
    }
}

/// Built-in data (relations, statements, corpus, CMR tables) is found from any working
/// directory: a dry run from a temporary directory checks every default input.
#[test]
fn builtin_data_is_found_from_any_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = tmp.path().join("s.toml");
    std::fs::write(
        &suite,
        format!(
            r#"name = "defaults"
models = [{{ name = "tiny", model = '{}' }}]
[[step]]
probe = "heads"
args = {{ ablate = true, cmr-table = "notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy" }}
[[step]]
probe = "neurons"
[[step]]
probe = "directions"
[[step]]
probe = "sae run"
[[step]]
probe = "cmr-fit"
per_model = false
args = {{ crp = "notebooks-data/icl-cmr/gpt2-small.CRP_scores.npy" }}
"#,
            fixture_dir("llama").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .current_dir(tmp.path())
        .args(["--quiet", "batch", "s.toml", "--dry-run"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("run ")).count(),
        5,
        "{stdout}"
    );
    // A missing non-default input still names itself.
    std::fs::write(
        &suite,
        "name = \"x\"\nmodels = [\"smollm2\"]\n[[step]]\nprobe = \"neurons\"\nargs = { relations = \"no/such/dir\" }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .current_dir(tmp.path())
        .args(["--quiet", "batch", "s.toml", "--dry-run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--relations no/such/dir: not a directory"),
        "{stderr}"
    );
}

/// Issue-25 inputs that were accepted as nonsense or reported only after the work: an empty
/// corpus, more tokens than the corpus holds, a layer band or hook beyond the model (checked
/// from its config before the load), activations that overflow (NaN/inf never stored).
#[test]
fn corpus_and_layer_mistakes_are_refused_before_the_work() {
    let (tmp, m, tok, out) = super::common::cli_fixture("llama2");
    let d = tmp.path();
    let o = out.to_str().unwrap();
    let empty = d.join("empty.txt");
    std::fs::write(&empty, "\n\n  \n").unwrap();
    let small = d.join("small.txt");
    std::fs::write(&small, "hello there\n\nsecond doc\n").unwrap();
    let collect = |corpus: &std::path::Path, tokens: &str| {
        [
            "sae",
            "collect",
            "-m",
            &m,
            "--tokenizer",
            &tok,
            "--hook",
            "blocks.0.hook_resid_post",
            "--corpus",
            corpus.to_str().unwrap(),
            "--tokens",
            tokens,
            "-o",
            o,
        ]
        .map(String::from)
    };
    let args = collect(&empty, "10");
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    assert_one_line_error(&args, "empty corpus");
    assert!(!out.exists(), "an empty store was left behind");
    // "hello there" + "second doc": 11 + 10 characters, each after the window's BOS (not stored).
    let args = collect(&small, "1000");
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    assert_one_line_error(
        &args,
        "holds 21 activations to collect (2 documents, context 256), fewer than the 1000 asked for",
    );
    assert!(!out.exists(), "an empty store was left behind");
    // Exactly what the corpus holds is fine, and marks the store complete.
    let args = collect(&small, "21");
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (code, _, err) = super::common::engram(&args);
    assert_eq!(code, 0, "{err}");
    let store: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("store.json")).unwrap()).unwrap();
    assert_eq!(store["n_tokens"], 21);
    assert_eq!(store["complete"], true);
    // Layers beyond the model are refused from its config, before the weights load.
    let o2 = d.join("o2");
    let o2 = o2.to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "sae",
                "collect",
                "-m",
                &m,
                "--tokenizer",
                &tok,
                "--hook",
                "blocks.9.hook_resid_post",
                "--corpus",
                small.to_str().unwrap(),
                "-o",
                o2,
            ],
            "hook blocks.9.hook_resid_post: layer 9 is out of range",
        ),
        (
            vec![
                "sae",
                "run",
                "-m",
                &m,
                "--tokenizer",
                &tok,
                "--layer",
                "7",
                "--corpus",
                small.to_str().unwrap(),
                "-o",
                o2,
            ],
            "layer 7 is out of range",
        ),
    ] {
        assert_one_line_error(&args, needle);
    }
    assert!(!std::path::Path::new(o2).exists());
}

/// Activations that overflow (finite f16 weights whose MLP output exceeds f16's range) are
/// never written into an activation store: the collection fails naming the hook and dtype.
#[test]
fn overflowing_activations_are_not_stored() {
    let (tmp, _, tok, out) = super::common::cli_fixture("llama2");
    let dir = tmp.path().join("loud");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture_dir("llama2").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let cpu = candle_core::Device::Cpu;
    let mut ts =
        candle_core::safetensors::load(fixture_dir("llama2").join("model.safetensors"), &cpu)
            .unwrap();
    for w in ["up_proj", "down_proj"] {
        let name = format!("model.layers.0.mlp.{w}.weight");
        let t = (&ts[&name] * 3000.0).unwrap();
        ts.insert(name, t);
    }
    candle_core::safetensors::save(&ts, dir.join("model.safetensors")).unwrap();
    let corpus = tmp.path().join("c.txt");
    std::fs::write(&corpus, "some words to run through the model\n").unwrap();
    let (m, c, o) = (
        dir.to_str().unwrap(),
        corpus.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let args = [
        "sae",
        "collect",
        "-m",
        m,
        "--tokenizer",
        &tok,
        "--hook",
        "blocks.0.hook_resid_post",
        "--corpus",
        c,
        "--tokens",
        "8",
        "-o",
        o,
    ];
    // In f32 the same model is finite and collects.
    let f32_out = tmp.path().join("f32");
    let mut a32 = args.to_vec();
    let last = a32.len() - 1;
    a32[last] = f32_out.to_str().unwrap();
    let (code, _, err) = super::common::engram(&a32);
    assert_eq!(code, 0, "{err}");
    let mut a16 = args.to_vec();
    a16.extend(["--dtype", "f16"]);
    assert_one_line_error(&a16, "blocks.0.hook_resid_post is inf");
    assert!(!out.join("shard_00000.safetensors").exists());
}
