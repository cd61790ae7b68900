"""int8 embeddings against float32 for a downstream classifier: paired, repeated cross-validation.

``bench_cpu_backends.py`` scores each path with one 5-fold split, whose fold-to-fold spread (about a
point on 2,000 snippets) is larger than the differences the int8 goal cares about (0.5 point). Here
every path is scored on the *same* folds of a 10 x 5-fold split, and the difference to torch float32
is taken fold by fold (paired), which cancels the spread the paths share.

Run:  .venv/bin/python benchmarks/bench_int8_probe.py [--n 2000 --threads 2]
Writes benchmarks/results/int8_probe.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BACKENDS = ("torch", "onnx", "onnx-int8", "onnx-int8-all")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="Rotten Tomatoes snippets")
    parser.add_argument("--repeats", type=int, default=10, help="repeats of the 5-fold split")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "int8_probe.md"))
    args = parser.parse_args(argv)
    os.environ.setdefault("SKDEEP_HOME", tempfile.mkdtemp(prefix="skdeep-bench-int8-"))
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import RepeatedStratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skdeep import TextEncoder
    from skdeep.datasets import fetch_rotten_tomatoes

    rt = fetch_rotten_tomatoes().sample(frac=1.0, random_state=0).iloc[: args.n]
    texts, y = rt["text"].tolist(), rt["label"].to_numpy()
    X = {}
    for backend in BACKENDS:
        encoder = TextEncoder("all-MiniLM-L6-v2", backend=backend, cache=None, num_threads=args.threads)
        X[backend] = encoder.fit_transform(texts)
        print(f"embedded with {backend}", flush=True)
    cv = RepeatedStratifiedKFold(n_splits=5, n_repeats=args.repeats, random_state=0)
    acc = {b: [] for b in BACKENDS}
    for train, test in cv.split(X["torch"], y):
        for backend, features in X.items():
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))
            acc[backend].append(model.fit(features[train], y[train]).score(features[test], y[test]))
    reference = np.asarray(acc["torch"])
    folds = len(reference)
    lines = [
        f"Linear probe (StandardScaler + LogisticRegression(C=0.5)) on {len(texts)} Rotten Tomatoes snippets, "
        f"all-MiniLM-L6-v2; the same {args.repeats} x 5-fold splits for every path; {args.threads} threads.",
        "",
        "| path | accuracy (%) | difference to torch float32, paired (points) | sd of the fold differences |",
        "|---|---:|---:|---:|",
    ]
    for backend in BACKENDS:
        diff = 100 * (np.asarray(acc[backend]) - reference)
        lines.append(f"| {backend} | {100 * np.mean(acc[backend]):.2f} | {diff.mean():+.2f} | {diff.std(ddof=1):.2f} |")
    lines += [
        "",
        f"Each difference is the mean over {folds} folds of (path - torch float32) on the same fold; the folds share "
        "training data, so the spread of that mean is larger than sd / sqrt(folds).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
