"""Domain shift: train a sentiment classifier on Rotten Tomatoes critics, test on other review sources.

Source domain: Rotten Tomatoes critic snippets (fresh / rotten), with labels.
Target domains: the UCI "Sentiment Labelled Sentences" (Kotzias et al., 2015), 1,000 sentences each
from Amazon product reviews, Yelp restaurant reviews and IMDb user reviews; their labels are used
only to score (and for the in-domain reference row).

All rows use frozen all-MiniLM-L6-v2 features and a logistic regression; they differ in what is
done to the source features before training:

* source only: nothing;
* ``CORAL``: re-colour the source features with the target covariance (ridge ``reg`` = the mean
  per-feature variance of the source features: the paper's ``reg=1`` for standardised features);
* ``SubspaceAlignment`` with d principal axes (d fixed in advance: no target labels to tune it);
* in-domain reference: 5-fold cross-validation on the labelled target data itself (an upper bound
  that adaptation cannot reach without target labels).

    python benchmarks/bench_domain_shift.py            # ~4,000 texts to embed once (cached on disk)

Writes ``benchmarks/results/domain_shift.{md,png}``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from skdeep import TextEncoder  # noqa: E402
from skdeep.datasets import fetch_rotten_tomatoes as load_rotten_tomatoes  # noqa: E402
from skdeep.datasets import fetch_uci_sentiment as load_uci_sentiment  # noqa: E402
from skdeep.domain import CORAL, SubspaceAlignment  # noqa: E402

TARGETS = ("amazon", "yelp", "imdb")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-source", type=int, default=2000, help="Rotten Tomatoes snippets to train on (balanced)")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--sa-components", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--backend", default="onnx", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "skdeep" / "bench-embeddings"))
    parser.add_argument("--out", default=str(HERE / "results" / "domain_shift"))
    args = parser.parse_args(argv)

    rt = load_rotten_tomatoes().groupby("label").sample(args.n_source // 2, random_state=0)
    # The fp32 ONNX backend gives the torch embeddings (cosine 1.0000, see bench_cpu_backends.py), 4x faster here.
    encoder = TextEncoder("all-MiniLM-L6-v2", backend=args.backend, cache=args.cache, max_length=64)
    t = time.perf_counter()
    Xs = encoder.fit_transform(rt["text"].tolist())
    ys = rt["label"].to_numpy()
    print(f"source: {len(ys)} snippets embedded in {time.perf_counter() - t:.1f} s", flush=True)
    reg = float(Xs.var(axis=0).mean())

    results = {}  # (row, target) -> accuracy
    rows = ["TF-IDF, source only", "source only", "CORAL"] + [f"SubspaceAlignment d={d}" for d in args.sa_components]
    rows.append("in-domain reference (5-fold CV on target labels)")
    tfidf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=1000))
    tfidf.fit(rt["text"].tolist(), ys)
    for name in args.targets:
        target = load_uci_sentiment(name)
        t = time.perf_counter()
        Xt = encoder.transform(target["text"].tolist())
        yt = target["label"].to_numpy()
        print(f"{name}: {len(yt)} sentences embedded in {time.perf_counter() - t:.1f} s", flush=True)

        results[("TF-IDF, source only", name)] = tfidf.score(target["text"].tolist(), yt)
        lr = LogisticRegression(max_iter=1000)
        results[("source only", name)] = lr.fit(Xs, ys).score(Xt, yt)
        # The adapters see the target features without labels: target=Xt.
        coral = make_pipeline(CORAL(target=Xt, reg=reg), LogisticRegression(max_iter=1000))
        results[("CORAL", name)] = coral.fit(Xs, ys).score(Xt, yt)
        for d in args.sa_components:
            sa = make_pipeline(SubspaceAlignment(target=Xt, n_components=d), LogisticRegression(max_iter=1000))
            results[(f"SubspaceAlignment d={d}", name)] = sa.fit(Xs, ys).score(Xt, yt)
        cv = StratifiedKFold(5, shuffle=True, random_state=0)
        results[(rows[-1], name)] = cross_val_score(LogisticRegression(max_iter=1000), Xt, yt, cv=cv).mean()
        print({k[0]: round(v, 3) for k, v in results.items() if k[1] == name}, flush=True)

    lines = [
        f"Train: {len(ys)} Rotten Tomatoes critic snippets (balanced). Test: UCI Sentiment Labelled Sentences "
        f"(balanced, ~1,000 per domain). Frozen all-MiniLM-L6-v2 features + logistic regression; accuracy. "
        f"CORAL reg = {reg:.2e} (mean per-feature variance of the source features).",
        "",
        "| features / adaptation | " + " | ".join(args.targets) + " | mean |",
        "|---|" + "---|" * (len(args.targets) + 1),
    ]
    for row in rows:
        values = [results[(row, name)] for name in args.targets]
        lines.append(f"| {row} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")
    text = "\n".join(lines)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    plot(results, rows, args.targets, out.with_suffix(".png"))


def plot(results, rows, targets, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(rows)
    x = np.arange(len(targets))
    for i, row in enumerate(rows):
        ax.bar(x + i * width, [results[(row, t)] for t in targets], width, label=row)
    ax.set_xticks(x + width * (len(rows) - 1) / 2)
    ax.set_xticklabels(targets)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title("Rotten Tomatoes -> other review sources")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
