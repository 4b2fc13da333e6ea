//! The binary: one-line errors with a non-zero exit for bad input, and the `cache` command.

use crate::common::*;

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
    std::fs::write(gpt2.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    assert_one_line_error(
        &["info", "--model", gpt2.to_str().unwrap()],
        "unsupported architecture `gpt2`",
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
    let (code, stdout, _) = engram(&["info", "--model", "smollm2"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("layers       30"));
}
