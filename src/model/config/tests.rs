//! Unit tests of `ModelConfig`: rope scaling, config.json variants, size checks.

use super::*;

#[test]
fn llama3_scaling_changes_only_low_frequencies() {
    let r = Rope {
        theta: 500000.0,
        scaling: RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        },
    };
    let plain = Rope {
        theta: 500000.0,
        scaling: RopeScaling::None,
    };
    let (a, b) = (r.inv_freq(128), plain.inv_freq(128));
    assert_eq!(a[0], b[0]);
    assert!((a[63] - b[63] / 8.0).abs() < 1e-12);
}

#[test]
fn absurd_sizes_are_one_line_errors_not_panics() {
    let base: Value = serde_json::json!({
        "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
        "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100
    });
    assert!(ModelConfig::from_hf_json(&base).is_ok());
    let cases: [(&str, Value, &str); 6] = [
        ("num_attention_heads", 0.into(), "0 attention heads"),
        ("num_hidden_layers", 0.into(), "0 layers"),
        ("hidden_size", 0.into(), "zero width"),
        (
            "hidden_size",
            66.into(),
            "not a multiple of 4 attention heads",
        ),
        ("vocab_size", 0.into(), "must be positive"),
        ("intermediate_size", 0.into(), "must be positive"),
    ];
    for (k, v, needle) in cases {
        let mut c = base.clone();
        c[k] = v;
        let e = ModelConfig::from_hf_json(&c).unwrap_err().to_string();
        assert!(e.contains(needle), "{k}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // Zero heads even with head_dim given.
    let mut c = base.clone();
    c["num_attention_heads"] = 0.into();
    c["head_dim"] = 16.into();
    assert!(ModelConfig::from_hf_json(&c).is_err());
}

#[test]
fn parses_legacy_and_v5_rope() {
    let legacy: Value = serde_json::json!({
        "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
        "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    });
    let c = ModelConfig::from_hf_json(&legacy).unwrap();
    assert_eq!(c.ropes[0].theta, 500000.0);
    assert!(matches!(c.ropes[0].scaling, RopeScaling::Llama3 { .. }));
    let mut v5 = legacy.clone();
    v5.as_object_mut().unwrap().remove("rope_theta");
    v5.as_object_mut().unwrap().remove("rope_scaling");
    v5["rope_parameters"] =
        serde_json::json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6});
    let c = ModelConfig::from_hf_json(&v5).unwrap();
    assert_eq!(c.ropes[0].theta, 1e6);
    assert_eq!(c.ropes[0].scaling, RopeScaling::Linear { factor: 2.0 });
    let mut bad = legacy.clone();
    bad["model_type"] = "bert".into();
    assert!(matches!(
        ModelConfig::from_hf_json(&bad),
        Err(Error::UnsupportedArch(_))
    ));
}
