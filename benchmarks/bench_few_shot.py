"""Few-shot learning curve on Rotten Tomatoes snippets: zero-shot, frozen features, fine-tuned, TF-IDF.

For k labelled snippets per class (default 8, 16, 64) and a few random draws of them, compare

* TF-IDF (word 1-2 grams) + logistic regression: the classic baseline;
* zero-shot: ``ZeroShotClassifier`` with label descriptions only (no training data; same for every k);
* frozen MiniLM features (``TextEncoder``) + logistic regression (default ``C=1``, the head the
  fine-tuned model also uses), and the same with ``C`` chosen by cross-validation on the k
  training snippets (``LogisticRegressionCV``): unit-norm embeddings favour a larger ``C``;
* fine-tuned MiniLM (``FineTunedTextClassifier``, SetFit-style) with its default logistic
  regression head (``C=1``), and the same tuned encoder with the cross-validated head.

Every method is scored on the same held-out, class-balanced test snippets. Prints a markdown table
and writes ``benchmarks/results/few_shot.{md,csv,png}``.

    python benchmarks/bench_few_shot.py                      # full run (loaded 2-core CPU: about an hour)
    python benchmarks/bench_few_shot.py --ks 8 --seeds 0 --n-test 100   # smoke run
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from skdeep import TextEncoder  # noqa: E402
from skdeep.datasets import fetch_rotten_tomatoes as load_rotten_tomatoes  # noqa: E402
from skdeep.finetune import FineTunedTextClassifier  # noqa: E402
from skdeep.zero_shot import ZeroShotClassifier  # noqa: E402

RESULTS = HERE / "results"
LABELS = {
    1: ["a positive movie review", "a great, enjoyable film", "the critic liked the movie"],
    0: ["a negative movie review", "a bad, boring film", "the critic disliked the movie"],
}


def split(df: pd.DataFrame, n_test: int, seed: int = 12345):
    test = df.groupby("label").sample(n_test // 2, random_state=seed)
    return df.drop(test.index), test


def draw(pool: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    return pool.groupby("label").sample(k, random_state=seed).sample(frac=1.0, random_state=seed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ft-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds for fine-tuning (CPU time)")
    parser.add_argument("--n-test", type=int, default=400)
    parser.add_argument("--methods", nargs="+", default=["tfidf", "zero-shot", "frozen", "frozen-cv", "fine-tuned"])
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the rows of other methods already in the output CSV (re-run some methods only)",
    )
    parser.add_argument("--ft-loss", default="pairwise")
    parser.add_argument("--ft-epochs", type=int, default=None, help="default: 64 steps' worth, at least 10 epochs")
    parser.add_argument("--ft-unfreeze", type=int, default=None)
    parser.add_argument("--ft-lr", type=float, default=1e-4)
    parser.add_argument("--ft-no-early-stopping", action="store_true", help="train all planned steps")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "skdeep" / "bench-embeddings"))
    parser.add_argument("--out", default=str(RESULTS / "few_shot"))
    args = parser.parse_args(argv)
    ft_seeds = [s for s in args.ft_seeds if s in args.seeds]

    df = load_rotten_tomatoes()
    pool, test = split(df, args.n_test)
    X_test, y_test = test["text"].tolist(), test["label"].to_numpy()
    encoder = TextEncoder("all-MiniLM-L6-v2", cache=args.cache, max_length=64)
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.with_suffix(".csv").exists():
        previous = pd.read_csv(out.with_suffix(".csv"))
        rerun = [{"tfidf": "tf-idf"}.get(m, m) for m in args.methods]
        rows = previous[~previous["method"].isin(rerun)].to_dict("records")

    def record(method, k, seed, acc, seconds, **extra):
        rows.append({"method": method, "k": k, "seed": seed, "accuracy": acc, "fit_seconds": seconds, **extra})
        pd.DataFrame(rows).to_csv(out.with_suffix(".csv"), index=False)
        print(f"{method:>11} k={k:<3} seed={seed} accuracy={acc:.3f} ({seconds:.1f} s) {extra or ''}", flush=True)

    if {"frozen", "frozen-cv", "zero-shot"} & set(args.methods):
        t = time.perf_counter()
        test_features = encoder.fit_transform(X_test)
        print(f"embedded {len(X_test)} test snippets in {time.perf_counter() - t:.1f} s", flush=True)
    if "zero-shot" in args.methods:
        t = time.perf_counter()
        zs = ZeroShotClassifier(encoder, LABELS, templates=["{}.", "This is {}."]).fit(X_test[:1])
        acc = zs.score(X_test, y_test)
        for k in args.ks:
            record("zero-shot", k, -1, acc, time.perf_counter() - t)

    for k in args.ks:
        for seed in args.seeds:
            train = draw(pool, k, seed)
            X, y = train["text"].tolist(), train["label"].to_numpy()
            if "tfidf" in args.methods:
                t = time.perf_counter()
                tfidf = make_pipeline(
                    TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=1000)
                ).fit(X, y)
                record("tf-idf", k, seed, tfidf.score(X_test, y_test), time.perf_counter() - t)
            if "frozen" in args.methods:
                t = time.perf_counter()
                head = LogisticRegression(max_iter=1000).fit(encoder.transform(X), y)
                record("frozen", k, seed, head.score(test_features, y_test), time.perf_counter() - t)
            if "frozen-cv" in args.methods:
                t = time.perf_counter()
                cv = StratifiedKFold(min(5, k), shuffle=True, random_state=seed)
                head = LogisticRegressionCV(Cs=10, cv=cv, max_iter=1000).fit(encoder.transform(X), y)
                record("frozen-cv", k, seed, head.score(test_features, y_test), time.perf_counter() - t, C=head.C_[0])
            if "fine-tuned" in args.methods and seed in ft_seeds:
                # Enough passes for ~64 optimiser steps, at least 10 epochs: tiny sets need repeats.
                steps_per_epoch = max(1, int(np.ceil(0.85 * 2 * k / 16)))
                epochs = args.ft_epochs or max(10, int(np.ceil(64 / steps_per_epoch)))
                clf = FineTunedTextClassifier(
                    loss=args.ft_loss,
                    max_epochs=epochs,
                    unfreeze_layers=args.ft_unfreeze,
                    learning_rate=args.ft_lr,
                    early_stopping=not args.ft_no_early_stopping,
                    max_length=64,
                    batch_size=16,
                    cache=None,
                    random_state=seed,
                )
                t = time.perf_counter()
                clf.fit(X, y)
                seconds = time.perf_counter() - t
                record(
                    "fine-tuned",
                    k,
                    seed,
                    clf.score(X_test, y_test),
                    seconds,
                    steps=clf.n_steps_,
                    best_step=clf.best_step_,
                )
                # The same tuned encoder with the cross-validated head (no second fine-tuning).
                t = time.perf_counter()
                cv = StratifiedKFold(min(5, k), shuffle=True, random_state=seed)
                head = LogisticRegressionCV(Cs=10, cv=cv, max_iter=1000).fit(clf.transform(X), y)
                record(
                    "fine-tuned-cv",
                    k,
                    seed,
                    head.score(clf.transform(X_test), y_test),
                    seconds + time.perf_counter() - t,
                    C=head.C_[0],
                )

    frame = pd.DataFrame(rows)
    table = summarise(frame)
    header = (
        f"Rotten Tomatoes snippets, {len(X_test)} balanced test snippets; accuracy mean ± std over "
        f"{len(args.seeds)} draws of the training snippets (fine-tuned: {len(ft_seeds)}).\n\n"
    )
    text = header + table
    print("\n" + text)
    out.with_suffix(".md").write_text(text + "\n")
    plot(frame, out.with_suffix(".png"))


def summarise(frame: pd.DataFrame) -> str:
    order = ["zero-shot", "tf-idf", "frozen", "frozen-cv", "fine-tuned", "fine-tuned-cv"]
    names = {
        "zero-shot": "zero-shot (no labels)",
        "tf-idf": "TF-IDF + LR",
        "frozen": "frozen MiniLM + LR (C=1)",
        "frozen-cv": "frozen MiniLM + LR (C by CV)",
        "fine-tuned": "fine-tuned MiniLM + LR (C=1)",
        "fine-tuned-cv": "fine-tuned MiniLM + LR (C by CV)",
    }
    ks = sorted(frame["k"].unique())
    lines = [
        "| method | " + " | ".join(f"k={k} per class" for k in ks) + " | mean fit time (s) |",
        "|---|" + "---|" * (len(ks) + 1),
    ]
    for method in [m for m in order if m in set(frame["method"])]:
        sub = frame[frame["method"] == method]
        cells = []
        for k in ks:
            acc = sub[sub["k"] == k]["accuracy"]
            cells.append(
                "—"
                if acc.empty
                else f"{acc.mean():.3f} ± {acc.std(ddof=0):.3f}"
                if len(acc) > 1
                else f"{acc.mean():.3f}"
            )
        lines.append(f"| {names[method]} | " + " | ".join(cells) + f" | {sub['fit_seconds'].mean():.1f} |")
    return "\n".join(lines)


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, style in [
        ("tf-idf", "s--"),
        ("frozen", "o:"),
        ("frozen-cv", "o-"),
        ("fine-tuned", "^:"),
        ("fine-tuned-cv", "^-"),
    ]:
        sub = frame[frame["method"] == method]
        if sub.empty:
            continue
        stats = sub.groupby("k")["accuracy"].agg(["mean", "std"]).fillna(0.0)
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], fmt=style, capsize=3, label=method)
    zs = frame[frame["method"] == "zero-shot"]
    if not zs.empty:
        ax.axhline(zs["accuracy"].iloc[0], color="grey", linestyle=":", label="zero-shot")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(frame["k"].unique()))
    ax.set_xticklabels([str(k) for k in sorted(frame["k"].unique())])
    ax.set_xlabel("labelled snippets per class")
    ax.set_ylabel("test accuracy")
    ax.set_title("Rotten Tomatoes: few-shot learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
