#!/usr/bin/env python3
"""Real-model references from the project's GGUF files, computed with Hugging Face transformers.

Run by hand (NOT by CI), from the repository root:

    /root/.venvs/ref/bin/python scripts/reference/gguf_reference.py [model-stem ...]

(needs `pip install torch transformers gguf accelerate safetensors numpy sentencepiece protobuf`).
Reads ~/.cache/engram/models/<stem>.gguf (override the folder with ENGRAM_MODELS) for the stems
smollm2-135m-instruct, gemma-3-270m, qwen2.5-coder-0.5b-instruct, and writes

  tests/fixtures/real/<stem>.safetensors
      input_ids   int64 [1,T]  "The Eiffel Tower is located in the city of", with the special
                               tokens the GGUF tokenizer adds (add_special_tokens=True)
      last_logits f32   [V]    logits at the last position (float32 forward, eager attention,
                               weights dequantized by transformers' GGUF loader)
      greedy_ids  int64 [8]    greedy continuation (the 8 new token ids only; argmax each step,
                               full recompute, does not stop at EOS)
  tests/fixtures/real/<stem>_tokens.json
      {"strings": [...], "ids": [[...], ...]}  tokenizer output, add_special_tokens=False

The committed files were produced with torch 2.15.0+cu132 (CPU) and transformers 5.23.0
(gguf python package from PyPI). Loading takes ~20 s per model (dequantizing in Python).
"""
import json
import os
import random
import sys
import time

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "real")
MODELS = os.environ.get("ENGRAM_MODELS", os.path.expanduser("~/.cache/engram/models"))
STEMS = ["smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct"]
PROMPT = "The Eiffel Tower is located in the city of"
N_GREEDY = 8
# tokenizer.json folders placed next to the GGUFs, used only if the GGUF tokenizer fails to load
SIDE_TOKENIZERS = {"gemma-3-270m": "gemma3-tokenizer"}


def tokenizer_strings():
    """~200 deterministic strings that stress pre-tokenization and byte fallback."""
    fixed = [
        "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\tindent",
        "hello", " hello", "  hello", "hello ", "hello  ", "Hello World", "HELLO WORLD", "hello\nworld",
        "hello\n\nworld", "hello\n \nworld", "a  b   c    d", "trailing spaces   ", "   leading spaces",
        "The quick brown fox jumps over the lazy dog.",
        "The Eiffel Tower is located in the city of",
        "I'm", "I've", "you're", "they'll", "we'd", "it's", "DON'T", "Don't you", "'quoted'",
        "\"double quoted\"", "rock'n'roll", "O'Neill's",
        "0", "1", "12", "123", "1234", "12345", "123456789", "3.14159", "1,000,000", "-42", "+7",
        "2024-11-22", "10:45 PM", "0x1F", "1e-6", "v1.2.3", "$19.99", "50%", "#1", "№5",
        "def f(x):\n    return x * 2\n",
        "fn main() {\n    println!(\"Hello, world!\");\n}",
        "for (int i = 0; i < n; ++i) { sum += a[i]; }",
        "import numpy as np\nnp.zeros((3, 4))",
        "<div class=\"x\">text</div>", "SELECT * FROM users WHERE id = 1;", "x = {'a': [1, 2, 3]}",
        "    if (a && b || !c) {", "// comment", "/* block */", "#include <stdio.h>", "a->b", "a=>b",
        "a::b::c", "foo_bar_baz", "fooBarBaz", "FooBarBaz", "__init__", "...", "!!!", "???", "?!",
        "---", "===", "***", "~~~", "```python", "@user", "https://example.com/path?q=1&r=2",
        "user@example.com", "C:\\Users\\name", "/usr/local/bin",
        "café", "naïve", "résumé", "Ångström", "straße", "Ελληνικά", "Русский язык", "Українська",
        "עברית", "العربية", "हिन्दी", "বাংলা", "ไทย", "日本語のテキスト", "中文文本", "한국어 텍스트",
        "Tiếng Việt", "Türkçe", "Polski ąęłńóśźż", "ﬁ ligature", "Ｆｕｌｌｗｉｄｔｈ", "½ ¼ ¾", "™ © ®",
        "😀", "😀😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "🚀 launch", "emoji😀inside", "∑ ∫ √ ∞",
        "α β γ", "→ ← ↑ ↓", "•", "…", "—", "–", "“smart quotes”", "‘single’", "«guillemets»",
        "\u00a0nbsp", "zero\u200bwidth", "\u3000ideographic space", "tab\tseparated\tvalues",
        "\x00", "\x7f", "\ufeffbom",
        "<s>", "</s>", "<|endoftext|>", "<|im_start|>", "<bos>", "<eos>", "<pad>", "<unk>",
        "<start_of_turn>user", "[INST]",
    ]
    pieces = [
        "the", " the", "The", "cat", " sat", " on", " mat", "123", " 456", "7", "\n", "  ", "\t",
        "é", "日本", "😀", "!", "?", ",", ".", "'s", "'ll", "x", "_", "-", "(", ")", "{", "}",
        "Paris", " Berlin", "naïve", "ß", "Σ", "ñ", "0.5", "%", "#", "$", "@", " ", "ab", "ABC",
    ]
    rng = random.Random(0)
    out = list(fixed)
    while len(out) < 200:
        out.append("".join(rng.choice(pieces) for _ in range(rng.randint(2, 8))))
    return out


def load_tokenizer(stem):
    try:
        return AutoTokenizer.from_pretrained(MODELS, gguf_file=f"{stem}.gguf"), "gguf"
    except Exception as e:  # noqa: BLE001
        print(f"  tokenizer from GGUF failed ({type(e).__name__}: {e}); trying a side folder")
        side = os.path.join(MODELS, SIDE_TOKENIZERS.get(stem, "-"))
        if os.path.isdir(side):
            return AutoTokenizer.from_pretrained(side), side
        raise


@torch.no_grad()
def run(stem):
    t0 = time.time()
    tok, tok_src = load_tokenizer(stem)
    model = AutoModelForCausalLM.from_pretrained(
        MODELS, gguf_file=f"{stem}.gguf", dtype=torch.float32, attn_implementation="eager"
    ).eval()
    print(f"{stem}: loaded {type(model).__name__} in {time.time() - t0:.1f}s (tokenizer: {tok_src})")

    enc = tok(PROMPT, return_tensors="pt", add_special_tokens=True)
    ids = enc["input_ids"].to(torch.int64)
    out = model(input_ids=ids, use_cache=False)
    last = out.logits[0, -1].float().contiguous()
    # plain greedy loop (full recompute, no KV cache), not stopping at EOS
    seq = ids
    for _ in range(N_GREEDY):
        nxt = model(input_ids=seq, use_cache=False).logits[0, -1].argmax().view(1, 1)
        seq = torch.cat([seq, nxt], dim=1)
    greedy = seq[0, ids.shape[1]:].to(torch.int64).contiguous()
    # the greedy continuation must start with the argmax of last_logits
    assert greedy[0].item() == last.argmax().item()

    os.makedirs(OUT, exist_ok=True)
    producer = (f"scripts/reference/gguf_reference.py; torch {torch.__version__}; "
                f"transformers {transformers.__version__}; tokenizer {os.path.basename(tok_src)}")
    save_file({"input_ids": ids.contiguous(), "last_logits": last, "greedy_ids": greedy},
              os.path.join(OUT, f"{stem}.safetensors"), metadata={"producer": producer})
    print(f"  input_ids {ids.tolist()}")
    print(f"  tokens {tok.convert_ids_to_tokens(ids[0])}")
    print(f"  last argmax {last.argmax().item()} {tok.decode([last.argmax().item()])!r}, "
          f"greedy {greedy.tolist()} {tok.decode(greedy)!r}")

    strings = tokenizer_strings()
    tok_ids = [tok(s, add_special_tokens=False)["input_ids"] for s in strings]
    with open(os.path.join(OUT, f"{stem}_tokens.json"), "w", encoding="utf-8") as f:
        json.dump({"producer": producer, "strings": strings, "ids": tok_ids}, f, ensure_ascii=False)
        f.write("\n")
    print(f"  {len(strings)} tokenizer strings, {sum(map(len, tok_ids))} ids; total {time.time() - t0:.1f}s")
    del model


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    stems = sys.argv[1:] or STEMS
    for stem in stems:
        if not os.path.exists(os.path.join(MODELS, f"{stem}.gguf")):
            print(f"{stem}: {MODELS}/{stem}.gguf missing, skipped")
            continue
        run(stem)


if __name__ == "__main__":
    main()
