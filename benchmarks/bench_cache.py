"""Embedding cache benchmark (issue 3), all measured side by side in one run on this machine.

1. GridSearchCV(cv=5, 8 values of C) over TextEncoder -> LogisticRegression on real Rotten Tomatoes
   snippets, against embedding once + the same grid on precomputed features (the ideal), and against
   embetter's SentenceEncoder (the closest existing library; ``pip install embetter`` for this
   benchmark only). Goal: skdeep / ideal <= 1.2.
2. Warm-cache transform of 100k cached rows (memory layer, and disk layer from a cold process state).
   Goal: >= 200k rows/s.
3. Cold transform with the cache on vs off. Goal: overhead <= 3 %.

Run:  .venv/bin/python benchmarks/bench_cache.py [--n-grid 160 --n-cold 600 --n-warm 100000]
Writes benchmarks/results/cache.md and cache.png.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

HERE = Path(__file__).resolve().parent

from skdeep import EmbeddingCache, TextEncoder  # noqa: E402
from skdeep.datasets import fetch_rotten_tomatoes as load_rotten_tomatoes  # noqa: E402
from skdeep.sources import resolve_text_model  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
C_GRID = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def grid(pipe):
    return GridSearchCV(pipe, {pipe.steps[-1][0] + "__C": C_GRID}, cv=5, n_jobs=1)


def bench_grid(texts, labels, repeats=3, slow=True):
    rows = []
    # Load the model once up front so no variant pays (or skips) the load.
    TextEncoder(MODEL).fit(["warm up"])

    def ideal():
        X = TextEncoder(MODEL, cache=None).transform(texts)
        grid(make_pipeline(LogisticRegression(max_iter=2000))).fit(X, labels)

    def skdeep_memory():
        pipe = make_pipeline(TextEncoder(MODEL, cache=EmbeddingCache()), LogisticRegression(max_iter=2000))
        grid(pipe).fit(texts, labels)

    def skdeep_disk():
        with tempfile.TemporaryDirectory() as d:
            grid(make_pipeline(TextEncoder(MODEL, cache=d), LogisticRegression(max_iter=2000))).fit(texts, labels)

    # The fast variants are dominated by embedding the texts once, which swings with machine load:
    # run them interleaved, several times, and compare medians.
    variants = {
        "embed once + grid on precomputed features (ideal)": ideal,
        "skdeep TextEncoder in the grid (memory cache)": skdeep_memory,
        "skdeep TextEncoder in the grid (disk cache)": skdeep_disk,
    }
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn)[0])
    ideal_time = float(np.median(times["embed once + grid on precomputed features (ideal)"]))
    rows += [(name, float(np.median(t))) for name, t in times.items()]

    if not slow:
        return ideal_time, rows
    t_nocache, _ = timed(
        lambda: grid(make_pipeline(TextEncoder(MODEL, cache=None), LogisticRegression(max_iter=2000))).fit(
            texts, labels
        )
    )
    rows.append(("skdeep TextEncoder in the grid, cache=None", t_nocache))

    try:
        from embetter.text import SentenceEncoder

        path = resolve_text_model(MODEL).path
        enc = SentenceEncoder(path)  # loads in __init__; every clone in the grid reloads it
        t_emb, _ = timed(lambda: grid(make_pipeline(enc, LogisticRegression(max_iter=2000))).fit(list(texts), labels))
        rows.append(("embetter 0.9 SentenceEncoder in the grid", t_emb))
    except ImportError:
        rows.append(("embetter (not installed: pip install embetter model2vec diskcache)", float("nan")))
    return ideal_time, rows


def bench_warm(n_rows):
    enc = TextEncoder(MODEL)
    texts = [f"cached review number {i} with some words" for i in range(n_rows)]
    keys = enc._item_keys(texts)  # keyed by token ids (issue #14); memoised per process, like transform's
    vectors = np.random.default_rng(0).standard_normal((n_rows, 384)).astype(np.float32)
    results = []
    with tempfile.TemporaryDirectory() as d:
        filler = EmbeddingCache(d, memory_bytes=0)
        t_fill, _ = timed(lambda: filler.put_many(keys, vectors))
        mem = EmbeddingCache(memory_bytes=1 << 30)
        mem.put_many(keys, vectors)
        out = TextEncoder(MODEL, cache=mem).transform(texts)  # one untimed pass: imports, first touch
        assert np.array_equal(out, vectors)
        t_mem, _ = timed(lambda: TextEncoder(MODEL, cache=mem).transform(texts))
        disk_only = EmbeddingCache(d, memory_bytes=0)
        t_disk, out = timed(lambda: TextEncoder(MODEL, cache=disk_only).transform(texts))
        assert np.array_equal(out, vectors)
    results.append(("memory layer", n_rows / t_mem))
    results.append(("disk layer only (SQLite, memory layer off)", n_rows / t_disk))
    return results, n_rows / t_fill


def _disk_cold(texts):
    with tempfile.TemporaryDirectory() as d:
        return timed(lambda: TextEncoder(MODEL, cache=d).transform(texts))[0]


def bench_cold(texts, repeats=5):
    TextEncoder(MODEL).fit(["warm up"])
    variants = {
        "cache=None": lambda: timed(lambda: TextEncoder(MODEL, cache=None).transform(texts))[0],
        "memory cache (fresh)": lambda: timed(lambda: TextEncoder(MODEL, cache=EmbeddingCache()).transform(texts))[0],
        "disk cache (fresh dir)": lambda: _disk_cold(texts),
    }
    names = list(variants)
    times = {name: [] for name in names}
    for r in range(repeats):
        # Interleaved, and the order rotates every round, so a load change hits every variant alike.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(variants[name]())
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-grid", type=int, default=160)
    parser.add_argument("--n-cold", type=int, default=300)
    parser.add_argument("--n-warm", type=int, default=100_000)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--sections", default="123", help="which of the three measurements to run")
    parser.add_argument("--no-slow", action="store_true", help="leave out the cache=None and embetter grid rows")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    data = load_rotten_tomatoes().sample(frac=1.0, random_state=0)
    grid_data = data.iloc[: args.n_grid]
    cold_texts = data["text"].iloc[args.n_grid : args.n_grid + args.n_cold].tolist()

    lines = [f"Machine: {os.cpu_count()} CPU cores, no GPU; model {MODEL}; Rotten Tomatoes snippets.", ""]
    grid_rows = []
    if "1" in args.sections:
        _, grid_rows = bench_grid(grid_data["text"], grid_data["label"].to_numpy(), slow=not args.no_slow)
        ideal = grid_rows[0][1]
        lines += [
            f"### 1. GridSearchCV(cv=5, {len(C_GRID)} values of C) on {len(grid_data)} snippets",
            "",
            "Ideal and skdeep rows: median of 3 interleaved runs; the slow rows: one run.",
            "",
            "| variant | time (s) | ratio to ideal |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {t:.1f} | {t / ideal:.2f} |" for name, t in grid_rows]

    if "2" in args.sections:
        warm, fill_rate = bench_warm(args.n_warm)
        lines += [
            "",
            f"### 2. Warm-cache transform of {args.n_warm:,} cached rows (384-d)",
            "",
            "| layer | rows/s |",
            "|---|---|",
        ]
        lines += [f"| {name} | {rate:,.0f} |" for name, rate in warm]
        lines += [f"| (writing them: put_many) | {fill_rate:,.0f} |"]

    if "3" in args.sections:
        cold = bench_cold(cold_texts)
        base = cold["cache=None"]
        lines += [
            "",
            f"### 3. Cold transform of {len(cold_texts)} snippets (median of 5, interleaved, order rotated)",
            "",
            "| cache | time (s) | overhead vs cache=None |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {t:.2f} | {100 * (t / base - 1):+.1f} % |" for name, t in cold.items()]

    table = "\n".join(lines)
    print(table)
    suffix = "" if args.sections == "123" and not args.no_slow else f"-{args.sections}-n{args.n_grid}"
    (out_dir / f"cache{suffix}.md").write_text(table + "\n")
    if not grid_rows:
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = [n for n, t in grid_rows if np.isfinite(t)]
    values = [t for n, t in grid_rows if np.isfinite(t)]
    ax.barh(names, values, color=["#888"] + ["#2a7"] * 2 + ["#c84"] * (len(names) - 3))
    ax.set_xlabel("seconds (lower is better)")
    ax.set_title(f"GridSearchCV cv=5 x {len(C_GRID)} C on {len(grid_data)} snippets")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out_dir / f"cache{suffix}.png", dpi=120)
    print(f"\nSaved {out_dir / f'cache{suffix}.md'} and {out_dir / f'cache{suffix}.png'}")


if __name__ == "__main__":
    main()
