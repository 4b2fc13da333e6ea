#!/usr/bin/env python3
"""Reference values of sklearn's average_precision_score for tests/neurons.rs.

Run by hand (not by CI) from the repository root:

    python3 -m venv /tmp/skl && /tmp/skl/bin/pip install scikit-learn
    /tmp/skl/bin/python scripts/reference/average_precision_reference.py

Writes tests/fixtures/neurons/average_precision.json: a few (scores, labels, ap) cases, with
ties between positives and negatives, ties within a class, negative scores, a single positive,
all positives, and a seeded random case with many ties (scores quantised to 0.25). Scores are
float32-representable so the Rust side (f32 scores) sees exactly the same numbers.
"""
import json
import sys

import numpy as np
import sklearn
from sklearn.metrics import average_precision_score


def case(name, scores, labels):
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels, dtype=bool)
    ap = float(average_precision_score(labels, scores.astype(np.float64)))
    return {"name": name, "scores": [float(s) for s in scores], "labels": labels.tolist(), "ap": ap}


def main():
    rng = np.random.default_rng(1234)
    cases = [
        case("separable", [0.9, 0.8, 0.7, 0.1, 0.05], [1, 1, 1, 0, 0]),
        case("reversed", [0.1, 0.2, 0.3, 0.8, 0.9], [1, 1, 0, 0, 0]),
        case("tie_across_classes", [0.5, 0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1, 0]),
        case("tie_within_class", [1.0, 1.0, 0.5, 0.5, 0.0, 0.0], [1, 1, 0, 0, 1, 0]),
        case("all_tied", [0.3] * 6, [1, 0, 0, 1, 0, 0]),
        case("negative_scores", [-1.5, -0.25, -3.0, -0.25, 2.0, -0.75], [0, 1, 0, 0, 1, 1]),
        case("single_positive", [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 0]),
        case("all_positive", [0.3, 0.1, 0.2], [1, 1, 1]),
    ]
    n = 60
    labels = np.zeros(n, dtype=bool)
    labels[:12] = True  # 1 positive : 4 negatives, as in the probe
    scores = np.round(rng.normal(size=n) * 4 + labels * 2.0) / 4  # many ties
    perm = rng.permutation(n)
    cases.append(case("random_ties_1to4", scores[perm], labels[perm]))
    scores = rng.normal(size=n).astype(np.float32) + labels * 0.5
    cases.append(case("random_continuous_1to4", scores[perm], labels[perm]))
    out = {
        "generator": "scripts/reference/average_precision_reference.py",
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "cases": cases,
    }
    path = "tests/fixtures/neurons/average_precision.json"
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {path} ({len(cases)} cases)", file=sys.stderr)


if __name__ == "__main__":
    main()
