"""Two versions of skdeep side by side: the cache and image figures before and after a change.

Runs the same measurements against this checkout and an earlier commit (extracted with
``git archive``), alternating between them round after round so that a change in the machine's load
hits both, each in a fresh process with one torch thread:

* warm-cache transform of 100,000 rows from the memory layer (rows/s);
* cold transform of 300 snippets, cache on (memory) vs off, all-MiniLM-L6-v2 (overhead %);
* GridSearchCV(cv=5, 8 values of C) on 160 snippets vs embedding once + the same grid (ratio);
* EfficientNet-Lite0 on 64 JPEG files end to end vs model only on the decoded batch (ratio, img/s).

Run::

    python benchmarks/bench_refactor.py --old 8dd44cc --rounds 3

Writes benchmarks/results/refactor.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

HARNESS = textwrap.dedent(
    r"""
    import json, os, sys, time, io
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    torch.set_num_threads(1)
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    import skdeep
    from skdeep import EmbeddingCache, TextEncoder

    data = json.load(open(sys.argv[1]))
    texts, labels, images_dir = data["texts"], np.array(data["labels"]), data["images"]
    what = sys.argv[2]
    out = {"version_file": skdeep.__file__}

    def timed(fn):
        t = time.perf_counter(); r = fn(); return time.perf_counter() - t, r

    if what == "text":
        TextEncoder("all-MiniLM-L6-v2", cache=None).fit(["warm up"])
        cold = texts[:300]
        off, _ = timed(lambda: TextEncoder("all-MiniLM-L6-v2", cache=None).transform(cold))
        on, _ = timed(lambda: TextEncoder("all-MiniLM-L6-v2", cache=EmbeddingCache()).transform(cold))
        out["cold_overhead_pct"] = 100 * (on - off) / off
        grid_texts, grid_y = texts[300:460], labels[300:460]
        C = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
        def ideal():
            X = TextEncoder("all-MiniLM-L6-v2", cache=None).transform(grid_texts)
            GridSearchCV(LogisticRegression(max_iter=1000), {"C": C}, cv=5).fit(X, grid_y)
        def ours():
            encoder = TextEncoder("all-MiniLM-L6-v2", cache=EmbeddingCache())
            pipe = make_pipeline(encoder, LogisticRegression(max_iter=1000))
            GridSearchCV(pipe, {"logisticregression__C": C}, cv=5).fit(grid_texts, grid_y)
        t_ideal, _ = timed(ideal)
        t_ours, _ = timed(ours)
        out["grid_ratio"] = t_ours / t_ideal
        cache = EmbeddingCache(memory_bytes=2**30)
        many = [f"row {i}" for i in range(100_000)]
        enc = TextEncoder("all-MiniLM-L6-v2", cache=cache)
        enc.transform(many)
        warm, _ = timed(lambda: enc.transform(many))
        out["warm_rows_per_s"] = len(many) / warm
    else:
        from skdeep.image import ImageEncoder
        files = sorted(os.path.join(images_dir, f) for f in os.listdir(images_dir))
        enc = ImageEncoder("efficientnet_lite0", cache=None, num_workers=1, batch_size=32).fit(files[:2])
        enc.transform(files[:8])
        end, _ = timed(lambda: enc.transform(files))
        backend = enc._backend(enc._source())
        from PIL import Image
        pre = backend.preprocess
        batch = torch.stack([pre.geometric(Image.open(f).convert("RGB")) for f in files])
        backend.forward_uint8(batch[:8])
        model, _ = timed(lambda: [backend.forward_uint8(batch[i:i+32]) for i in range(0, len(batch), 32)])
        out["images_per_s"] = len(files) / end
        out["end_to_end_vs_model"] = model / end
    print(json.dumps(out))
    """
)


def extract(rev: str, dest: Path) -> Path:
    """The package at ``rev`` as a folder (``git archive``; no worktree, nothing left registered)."""
    archive = subprocess.run(["git", "archive", rev, "skdeep"], cwd=ROOT, check=True, capture_output=True).stdout
    import io

    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        tf.extractall(dest, filter="data")
    return dest


def make_inputs(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    from skdeep.datasets import fetch_rotten_tomatoes

    data = fetch_rotten_tomatoes().sample(460, random_state=0)
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(64):
        # Photo-like content: smooth gradients plus noise, 640x480 JPEG.
        y, x = np.mgrid[0:480, 0:640]
        base = np.stack([(x * (i + 1)) % 256, (y * 3 + i) % 256, (x + y) % 256], -1)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(images / f"img{i:02d}.jpg", quality=90)
    path = folder / "inputs.json"
    path.write_text(
        json.dumps({"texts": data["text"].tolist(), "labels": data["label"].tolist(), "images": str(images)})
    )
    return path


def run(tree: Path, inputs: Path, what: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SKDEEP_CACHE_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", HARNESS, str(inputs), what], capture_output=True, text=True, env=env, cwd=tree
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out.pop("version_file").startswith(str(tree)), "the wrong skdeep was imported"
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "refactor.md"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="skdeep-refactor-") as tmp:
        tmp = Path(tmp)
        trees = {"before": extract(args.old, tmp / "old"), "after": ROOT}
        inputs = make_inputs(tmp)
        results = {name: [] for name in trees}
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                row = {**run(trees[name], inputs, "text"), **run(trees[name], inputs, "image")}
                results[name].append(row)
                print(name, row, flush=True)
    metrics = [
        ("warm_rows_per_s", "warm-cache transform, 100k rows (rows/s)", "{:,.0f}"),
        ("cold_overhead_pct", "cold transform, cache on vs off (overhead %)", "{:+.1f}"),
        ("grid_ratio", "grid search / embed once + grid", "{:.2f}"),
        ("images_per_s", "Lite0 from 64 JPEG files (img/s)", "{:.1f}"),
        ("end_to_end_vs_model", "end to end / model only", "{:.2f}"),
    ]
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
    lines = [
        f"# Before ({args.old}) and after, side by side",
        "",
        f"{args.rounds} rounds, alternating; each figure the median over rounds; one torch thread; "
        f"{os.cpu_count()} CPU cores, no GPU; load average at the end {load}.",
        "",
        "| measurement | before | after |",
        "|---|---:|---:|",
    ]
    for key, label, fmt in metrics:
        before = statistics.median(r[key] for r in results["before"])
        after = statistics.median(r[key] for r in results["after"])
        lines.append(f"| {label} | {fmt.format(before)} | {fmt.format(after)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
