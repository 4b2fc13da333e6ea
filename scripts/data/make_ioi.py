#!/usr/bin/env python3
"""IOI clean / corrupt prompt pairs for `engram attribute` (standard library only; fixed seed, so
re-running gives identical files):

    python3 scripts/data/make_ioi.py

Writes notebooks-data/ioi/pairs.jsonl: one JSON object per line with `clean`, `corrupt`,
`answer`, `wrong` (what engram reads) and `template`, `order`, `io`, `s`, `c` (provenance).

Task: indirect object identification (Wang et al. 2022, "Interpretability in the Wild", arXiv
2211.00593). The templates are the paper's first eight BABA templates (its appendix; the same
strings as its ioi_dataset.py), ending before the indirect object; ABBA pairs swap the first two
names. The corruption is the paper's "ABC" distribution: the second mention of the subject S
is replaced by a third name C, so the prompt no longer says who the indirect object is, with
the same number of tokens. answer = the indirect object, wrong = the subject:
metric = logit(IO) − logit(S).

Names, places and objects: the paper's place and object lists; names are common English first
names chosen to be one token (with their leading space) in the GPT-2, SmolLM2, Qwen2.5 and
Gemma-3 vocabularies (engram checks each pair and says which one is not).
"""
import json
import os
import random

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "notebooks-data", "ioi", "pairs.jsonl")

TEMPLATES = [
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to",
]
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]
NAMES = ["John", "Mary", "Tom", "James", "David", "Sarah", "Michael", "Paul", "Mark", "Peter",
         "Kate", "Anna", "Emma", "Jack", "Alice", "Robert", "Daniel", "Laura", "Chris", "Susan"]
N_PAIRS = 64
SEED = 0


def fill(template, a, b, s2, place, obj):
    # The first [B] is the subject's first mention, the second its second mention (S2).
    first, rest = template.split("[B]", 1)
    text = first + b + rest.replace("[B]", s2, 1)
    return text.replace("[A]", a).replace("[PLACE]", place).replace("[OBJECT]", obj)


def main():
    rng = random.Random(SEED)
    rows = []
    for i in range(N_PAIRS):
        t = i % len(TEMPLATES)
        io, s, c = rng.sample(NAMES, 3)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        order = "BABA" if i % 2 == 0 else "ABBA"
        template = TEMPLATES[t]
        if order == "ABBA":
            # Swap the first two names: "[A] and [B] ..., [B] ...".
            template = template.replace("[B] and [A]", "[A] and [B]", 1)
        clean = fill(template, io, s, s, place, obj)
        corrupt = fill(template, io, s, c, place, obj)
        rows.append({"clean": clean, "corrupt": corrupt, "answer": " " + io, "wrong": " " + s,
                     "template": t, "order": order, "io": io, "s": s, "c": c})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT + ".tmp", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(OUT + ".tmp", OUT)
    print(f"wrote {OUT} ({len(rows)} pairs)")


if __name__ == "__main__":
    main()
