"""Dask scaling benchmark (issue 7): embedding throughput with 1 and 2 workers on this machine.

Embeds N real Rotten Tomatoes snippets with ``skdeep.dask.embed`` and reports texts/s for

* in-process ``TextEncoder.transform`` (the baseline: one process, torch's default thread count);
* a ``LocalCluster`` of 1 worker process and of 2 worker processes (one thread each: Dask sets
  ``OMP_NUM_THREADS=1`` in its workers, so each worker uses one core);
* the 2-worker cluster again with a warm shared disk cache (every row is a cache hit);

then a cross-validated grid search over a TextEncoder pipeline, in-process against
``joblib.parallel_backend("dask")`` on 2 workers with a shared disk cache (cold, and after
``skdeep.dask.warm_cache``).

Model loading and worker start-up are measured separately and excluded from throughput: each
cluster embeds a few texts before the timed run. The machine is shared with other work, so expect
noise; each timed run is repeated and the best kept.

Run:  .venv/bin/python benchmarks/bench_dask_scaling.py [--n 2000 --model all-MiniLM-L6-v2 --repeats 2]
      (``--model tiny`` uses a tiny random model for a quick check.)
Writes benchmarks/results/dask_scaling.md and dask_scaling.png.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORKER_ENV = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")}
C_GRID = [0.1, 1.0, 10.0, 100.0]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def torch_threads():
    import torch

    return torch.get_num_threads()


def warm_up(encoder):
    """On a worker: import everything and load the model."""
    encoder.transform(["warm up"])
    return True


def start_cluster(n_workers, tuned=True):
    """A LocalCluster; ``tuned`` applies skdeep.dask.WORKER_CONFIG, else Dask's defaults."""
    import dask
    import distributed

    from skdeep.dask import WORKER_CONFIG

    if tuned:
        # Starting Dask workers writes Dask's worker variables into this process's environment too,
        # where later workers would inherit them: clear what an earlier untuned cluster left.
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set(WORKER_CONFIG if tuned else {}):
        cluster = distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            env=WORKER_ENV,
        )
    return cluster, distributed.Client(cluster, set_as_default=False)


def bench_scaling(texts, model, repeats, partition_size):
    """Time each configuration ``repeats`` times, interleaved, so that changes in the machine's
    load during the run hit every configuration alike; keep the best and the median."""
    import statistics

    import numpy as np
    import torch

    from skdeep import TextEncoder
    from skdeep.dask import embed, warm_cache

    encoder = TextEncoder(model, cache=None)
    load_s, _ = timed(lambda: encoder.fit(texts[:1]))
    default_threads = torch.get_num_threads()
    reference = encoder.transform(texts)

    def in_process(threads):
        def run():
            torch.set_num_threads(threads)
            try:
                return encoder.transform(texts)
            finally:
                torch.set_num_threads(default_threads)

        return run

    # (name, processes, torch threads each, function, start-up + model load seconds)
    configs = [
        (f"in-process TextEncoder.transform, {t} torch thread(s)", 1, t, in_process(t), load_s)
        for t in sorted({1, default_threads})
    ]
    clusters = []
    cache_dir = tempfile.mkdtemp(prefix="skdeep-bench-cache-")
    try:
        for tuned in (False, True):
            for n_workers in (1, 2):
                start_s, (cluster, client) = timed(lambda: start_cluster(n_workers, tuned))
                clusters.append((cluster, client))
                # Worker start-up, imports and model loading, excluded from the timed runs.
                warm_s, _ = timed(lambda: client.run(warm_up, encoder))
                threads = sorted(set(client.run(torch_threads).values()))[0]
                trim = set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values())
                if trim != ({None} if tuned else {"65536"}):
                    raise AssertionError(f"workers have MALLOC_TRIM_THRESHOLD_={trim}, tuned={tuned}")
                X = embed(texts, encoder, partition_size=partition_size)
                settings = "WORKER_CONFIG" if tuned else "Dask's default worker env"
                configs.append(
                    (
                        f"dask.embed, {n_workers} worker(s) x 1 thread, {settings}",
                        n_workers,
                        threads,
                        lambda client=client, X=X: client.compute(X).result(),
                        start_s + warm_s,
                    )
                )
        client = clusters[-1][1]
        cached = TextEncoder(model, cache=cache_dir)
        with client.as_current():
            warm_cache(texts, cached, partition_size=partition_size)
            X_cached = embed(texts, cached, partition_size=partition_size)
        configs.append(
            (
                "dask.embed, 2 workers, warm shared disk cache",
                2,
                threads,
                lambda: client.compute(X_cached).result(),
                float("nan"),
            )
        )

        times = {c[0]: [] for c in configs}
        loads = {c[0]: [] for c in configs}
        for _ in range(repeats):
            for name, _, _, run, _ in configs:
                loads[name].append(os.getloadavg()[0])
                t, out = timed(run)
                if not np.allclose(out, reference, atol=1e-4):
                    raise AssertionError(f"{name}: embeddings differ from in-process")
                times[name].append(t)
    finally:
        for cluster, client in clusters:
            client.close()
            cluster.close()
        import shutil

        shutil.rmtree(cache_dir, ignore_errors=True)

    rows = []
    for name, processes, threads, _, setup in configs:
        best, median = min(times[name]), statistics.median(times[name])
        rows.append((name, processes, threads, len(texts) / best, best, median, setup, statistics.mean(loads[name])))
    return rows


def bench_grid(texts, labels, model):
    from joblib import parallel_backend
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    from skdeep import EmbeddingCache, TextEncoder
    from skdeep.dask import warm_cache

    def search(cache):
        pipe = make_pipeline(TextEncoder(model, cache=cache), LogisticRegression(max_iter=2000))
        return GridSearchCV(pipe, {"logisticregression__C": C_GRID}, cv=3)

    import torch

    rows = []
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        t, ref = timed(lambda: search(EmbeddingCache()).fit(texts, labels))
        rows.append((f"in-process, n_jobs=1, memory cache, {threads} torch thread(s)", t, ref.best_score_))
    torch.set_num_threads(default_threads)

    cluster, client = start_cluster(2)
    try:
        client.run(warm_up, TextEncoder(model, cache=None))
        with tempfile.TemporaryDirectory() as cold_dir, tempfile.TemporaryDirectory() as warm_dir:
            # joblib's Dask backend and warm_cache both use the current client.
            with client.as_current(), parallel_backend("dask", client=client):
                t, res = timed(lambda: search(cold_dir).fit(texts, labels))
                rows.append(("dask 2 workers, shared disk cache, cold", t, res.best_score_))
                half = len(texts) // 2 + 1
                t_warm, _ = timed(lambda: warm_cache(texts, TextEncoder(model, cache=warm_dir), partition_size=half))
                t, res = timed(lambda: search(warm_dir).fit(texts, labels))
                rows.append(("dask 2 workers, warm_cache then search (both timed)", t_warm + t, res.best_score_))
    finally:
        client.close()
        cluster.close()
    return rows


def write_results(scaling, grid, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    one_worker = next(r[3] for r in scaling if r[1] == 1 and r[0].startswith("dask") and "WORKER_CONFIG" in r[0])
    lines = [
        f"## Dask scaling: embedding {args.n} Rotten Tomatoes snippets with {args.model} ({os.cpu_count()} CPU cores)",
        "",
        f"{args.repeats} runs of each configuration, interleaved; partitions of {args.partition_size} texts. "
        "The machine was shared with other work: the last column is the mean 1-minute load average "
        "before each run (2 would mean both cores busy).",
        "",
        "| configuration | processes | torch threads each | texts/s (best) | best (s) | median (s) "
        "| vs 1 tuned worker | start-up + model load (s) | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, workers, threads, rate, best, median, setup, load in scaling:
        setup_txt = "-" if setup != setup else f"{setup:.1f}"
        lines.append(
            f"| {name} | {workers} | {threads} | {rate:,.0f} | {best:.2f} | {median:.2f} | {rate / one_worker:.2f}x "
            f"| {setup_txt} | {load:.1f} |"
        )
    lines += [
        "",
        f"## Grid search: GridSearchCV(cv=3, {len(C_GRID)} values of C) on {args.n_grid} snippets",
        "",
        "| configuration | time (s) | best CV accuracy |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {t:.1f} | {score:.4f} |" for name, t, score in grid]
    table = "\n".join(lines) + "\n"
    (RESULTS / "dask_scaling.md").write_text(table)

    # Linear scale for the configurations that embed; the warm cache is orders of magnitude
    # faster and is given in the title instead.
    shown = [r for r in scaling if "warm" not in r[0]]
    warm = [r for r in scaling if "warm" in r[0]]
    labels = [r[0].replace("TextEncoder.transform, ", "").replace("dask.embed, ", "dask, ") for r in shown]
    rates = [r[3] for r in shown]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    colors = ["#4c72b0" if "WORKER_CONFIG" in name else "#8fa8cf" if "worker" in name else "#999999" for name in labels]
    bars = ax.barh(labels[::-1], rates[::-1], color=colors[::-1])
    ax.bar_label(bars, fmt="%.0f", padding=3)
    ax.set_xlabel("texts / s (best run; higher is better)")
    title = f"{args.model}, {args.n} texts, {os.cpu_count()} cores"
    if warm:
        title += f"\n(2 workers, warm shared disk cache: {warm[0][3]:,.0f} texts/s)"
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(rates) * 1.15)
    fig.tight_layout()
    fig.savefig(RESULTS / "dask_scaling.png", dpi=120)
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="texts embedded in the scaling runs")
    parser.add_argument("--n-grid", type=int, default=600, help="texts in the grid search")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="model name or path, or 'tiny'")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--partition-size", type=int, default=250)
    args = parser.parse_args()

    from skdeep.datasets import fetch_rotten_tomatoes as load_rotten_tomatoes

    if args.model == "tiny":
        sys.path.insert(0, str(HERE.parent / "tests"))
        from conftest import build_tiny_text_model

        model = build_tiny_text_model(tempfile.mkdtemp(prefix="skdeep-tiny-"))
    else:
        model = args.model

    data = load_rotten_tomatoes().sample(frac=1.0, random_state=0)
    texts = data["text"].tolist()[: args.n]
    grid_texts = data["text"].tolist()[: args.n_grid]
    grid_labels = data["label"].to_numpy()[: args.n_grid]

    scaling = bench_scaling(texts, model, args.repeats, args.partition_size)
    grid = bench_grid(grid_texts, grid_labels, model)
    print(write_results(scaling, grid, args))
    print(f"wrote {RESULTS / 'dask_scaling.md'} and {RESULTS / 'dask_scaling.png'}")


if __name__ == "__main__":
    main()
