"""TextEncoder backends side by side on the CPU: torch vs ONNX Runtime fp32 vs ONNX Runtime int8.

Embeds the same Rotten Tomatoes snippets with ``TextEncoder("all-MiniLM-L6-v2", backend=...)``
(no cache), in interleaved rounds so that background load hits every backend alike, and reports
throughput (median round), speed-up over torch, and the cosine similarity of each backend's
embeddings to torch's. Also times the one-off ONNX export / quantisation and the reuse of the
exported files by a fresh backend (as a new process would).

    python benchmarks/bench_onnx.py                  # 512 snippets, 3 rounds
    python benchmarks/bench_onnx.py --n 128 --rounds 1

Writes ``benchmarks/results/onnx.{md,png}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from skdeep import TextEncoder  # noqa: E402
from skdeep.backends import clear_backends  # noqa: E402
from skdeep.datasets import fetch_rotten_tomatoes as load_rotten_tomatoes  # noqa: E402

BACKENDS = ("torch", "onnx", "onnx-int8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512, help="snippets to embed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=str(HERE / "results" / "onnx"))
    args = parser.parse_args(argv)

    texts = load_rotten_tomatoes()["text"].sample(args.n, random_state=0).tolist()
    # A fresh SKDEEP_HOME so the export is really timed (and the user's files stay untouched).
    os.environ["SKDEEP_HOME"] = tempfile.mkdtemp(prefix="skdeep-bench-onnx-")

    setup = {}
    encoders = {}
    for name in BACKENDS:
        t = time.perf_counter()
        enc = TextEncoder("all-MiniLM-L6-v2", backend=name, cache=None, batch_size=args.batch_size)
        enc.fit(texts[:1])
        enc.transform(texts[:8])  # warm-up
        setup[name] = time.perf_counter() - t
        encoders[name] = enc

    # Reuse: forget loaded backends (as a new process would) and build them again from the files.
    clear_backends()
    reuse = {}
    for name in BACKENDS[1:]:
        t = time.perf_counter()
        encoders[name].fit(texts[:1])
        reuse[name] = time.perf_counter() - t
    from skdeep.backends import onnx as onnx_backend

    # Each ONNX backend says whether building it wrote a file; after the reset none may have.
    exported_again = [name for name in BACKENDS[1:] if encoders[name]._backend(encoders[name]._source()).exported]

    times = {name: [] for name in BACKENDS}
    outputs = {}
    for _ in range(args.rounds):
        for name in BACKENDS:
            t = time.perf_counter()
            outputs[name] = encoders[name].transform(texts)
            times[name].append(time.perf_counter() - t)

    ref = outputs["torch"]
    ref_unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    rows = []
    for name in BACKENDS:
        med = statistics.median(times[name])
        out = outputs[name] / np.linalg.norm(outputs[name], axis=1, keepdims=True)
        cos = (out * ref_unit).sum(axis=1)
        rows.append(
            {
                "backend": name,
                "texts_per_s": args.n / med,
                "speedup": statistics.median(times["torch"]) / med,
                "cos_min": float(cos.min()),
                "cos_mean": float(cos.mean()),
                "setup_s": setup[name],
                "reuse_s": reuse.get(name),
            }
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"all-MiniLM-L6-v2, {args.n} Rotten Tomatoes snippets, batch {args.batch_size}, "
        f"median of {args.rounds} interleaved rounds; {os.cpu_count()} CPU cores, load average {load:.1f} at the end.",
        "",
        "| backend | texts/s | speed-up vs torch | cosine to torch (min / mean) | first use (s) "
        "| reuse in a new process (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        reuse_cell = "—" if r["reuse_s"] is None else f"{r['reuse_s']:.1f}"
        lines.append(
            f"| {r['backend']} | {r['texts_per_s']:.1f} | {r['speedup']:.2f}x "
            f"| {r['cos_min']:.4f} / {r['cos_mean']:.4f} "
            f"| {r['setup_s']:.1f} | {reuse_cell} |"
        )
    lines += [
        "",
        "First use of an ONNX backend includes the export (and for int8 the quantisation; the int8 file is made "
        "from the fp32 export, so the fp32 row pays the export). Reuse loads the saved files: "
        f"{'no re-export' if not exported_again else 'RE-EXPORTED: ' + str(exported_again)}; files in "
        f"{onnx_backend.onnx_dir('<fingerprint>', False).parent}.",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    plot(rows, out.with_suffix(".png"))


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = [r["backend"] for r in rows]
    values = [r["texts_per_s"] for r in rows]
    bars = ax.bar(names, values, color=["#888888", "#4c72b0", "#dd8452"])
    for bar, r in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{r['speedup']:.1f}x", ha="center", va="bottom")
    ax.set_ylabel("texts / s (CPU)")
    ax.set_title("TextEncoder backends, all-MiniLM-L6-v2")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
