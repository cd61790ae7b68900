"""Fashion-MNIST linear probe benchmark: accuracy and images/s of pretrained vs random vs raw pixels.

Runs ``examples/fashion_mnist_probe.py`` (same subset, same pipelines), prints the markdown table
and saves ``benchmarks/results/fashion_mnist_probe.{png,json}``::

    python benchmarks/bench_fashion_mnist_probe.py                     # 1000 train / 500 test, 128 px
    python benchmarks/bench_fashion_mnist_probe.py --n-train 5000 --image-size 224
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"


def load_example():
    spec = importlib.util.spec_from_file_location("fashion_mnist_probe", ROOT / "examples" / "fashion_mnist_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plot(rows, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    fig, (acc_ax, speed_ax) = plt.subplots(1, 2, figsize=(10, 3.2))
    acc_ax.barh(names, [r["accuracy"] for r in rows], color="C0")
    acc_ax.set_xlim(0, 1)
    acc_ax.set_xlabel("test accuracy")
    for i, r in enumerate(rows):
        acc_ax.text(r["accuracy"] + 0.01, i, f"{r['accuracy']:.3f}", va="center", fontsize=8)
    speed_ax.barh(names, [r["images_per_s"] for r in rows], color="C1")
    speed_ax.set_xscale("log")
    speed_ax.set_xlabel("predict images/s (log scale)")
    speed_ax.set_yticklabels([])
    fig.suptitle("\n".join(textwrap.wrap(title, 120)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    example = load_example()
    rows = example.run(args.n_train, args.n_test, args.image_size, args.batch_size)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    title = (
        f"Fashion-MNIST linear probe, {args.n_train} train / {args.n_test} test, image_size={args.image_size}, "
        f"CPU with {os.cpu_count()} cores{load}"
    )
    print(title)
    print(example.markdown_table(rows))
    RESULTS.mkdir(exist_ok=True)
    plot(rows, title, RESULTS / "fashion_mnist_probe.png")
    (RESULTS / "fashion_mnist_probe.json").write_text(json.dumps({"title": title, "rows": rows}, indent=2))
    print(f"saved {RESULTS / 'fashion_mnist_probe.png'}")


if __name__ == "__main__":
    main()
