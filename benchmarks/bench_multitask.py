"""Multi-task benchmark on Fashion-MNIST: the class and a coarse grouping of it, as two label columns.

Task 1 is the 10-class label; task 2 groups it into tops and dresses (T-shirt/top, Pullover, Dress,
Coat, Shirt), trousers, footwear (Sandal, Sneaker, Ankle boot) and bags. Compared, on the same
training draws and test images:

* ``joint``: one ``FineTunedImageClassifier`` on the 2-column ``y`` (one backbone, two heads,
  summed loss);
* ``separate``: one ``FineTunedImageClassifier`` per task (twice the training, less what early
  stopping saves: the table counts the epochs trained, summed over the models);
* ``frozen + MultiOutputClassifier``: ``ImageEncoder`` features, standardised, one logistic
  regression per task (the cheap baseline: the features are computed once, and with the embedding
  cache a second fit costs almost nothing).

Prints a markdown table (accuracy of each task and of both at once, fit time) and writes
``benchmarks/results/multitask.{md,csv}``. Same data and weight flags as
``bench_finetune_images.py``, whose loaders it reuses::

    python benchmarks/bench_multitask.py --per-class 50 --seeds 0 --epochs 6 --image-size 64   # CPU reduced
    python benchmarks/bench_multitask.py --device cuda --image-size 224 --per-class 100,500 --seeds 0,1,2 \\
        --n-test 10000 --data-dir DIR --lite0-weights FILE                                    # full run (GPU)
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: Fashion-MNIST class -> coarse group.
COARSE = np.array(["top", "trousers", "top", "top", "top", "footwear", "top", "footwear", "bag", "footwear"])
METHODS = ("joint", "separate", "frozen-multioutput")
LABELS = {
    "joint": "fine-tuned joint (2 heads)",
    "separate": "fine-tuned separate (2 models)",
    "frozen-multioutput": "frozen Lite0 + MultiOutputClassifier",
}


def _images_bench():
    spec = importlib.util.spec_from_file_location("bench_finetune_images", HERE / "bench_finetune_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fit_predict(method: str, args, weights, seed: int, X, Y, X_test):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multioutput import MultiOutputClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skdeep import ImageEncoder
    from skdeep.finetune import FineTunedImageClassifier

    common = dict(image_size=args.image_size, batch_size=args.batch_size, device=args.device, cache=None)
    tuned = dict(max_epochs=args.epochs, augment=args.augment, random_state=seed, **common)
    if method == "joint":
        clf = FineTunedImageClassifier("efficientnet_lite0", weights, **tuned).fit(X, Y)
        return clf.predict(X_test), clf.n_epochs_
    if method == "separate":
        models = [FineTunedImageClassifier("efficientnet_lite0", weights, **tuned).fit(X, Y[:, t]) for t in range(2)]
        return np.column_stack([m.predict(X_test) for m in models]), sum(m.n_epochs_ for m in models)
    pipe = make_pipeline(
        ImageEncoder("efficientnet_lite0", weights, **common),
        StandardScaler(),
        MultiOutputClassifier(LogisticRegression(C=0.1, max_iter=2000)),
    )
    return pipe.fit(X, Y).predict(X_test), 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--lite0-weights", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--per-class", default="100")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--augment", default=None, help="augmentation preset of the fine-tuned models")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=str(RESULTS / "multitask"))
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    images = _images_bench()
    X_train, y_train, X_test, y_test = images.load_fashion_mnist(args.data_dir)
    X_test, y_test = X_test[: args.n_test], y_test[: args.n_test]
    Y_test = np.column_stack([y_test.astype(str), COARSE[y_test]])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = images.lite0_weights(args.lite0_weights, Path(tmp))
        for k in [int(v) for v in args.per_class.split(",")]:
            for seed in [int(v) for v in args.seeds.split(",")]:
                idx = images.draw(y_train, k, seed)
                Y = np.column_stack([y_train[idx].astype(str), COARSE[y_train[idx]]])
                for method in args.methods.split(","):
                    wall, cpu = time.perf_counter(), time.process_time()
                    pred, epochs = fit_predict(method, args, weights, seed, X_train[idx], Y, X_test)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    row = dict(
                        method=method,
                        per_class=k,
                        seed=seed,
                        class_acc=float((pred[:, 0] == Y_test[:, 0]).mean()),
                        group_acc=float((pred[:, 1] == Y_test[:, 1]).mean()),
                        both_acc=float(np.all(pred == Y_test, axis=1).mean()),
                        epochs_trained=epochs,
                        fit_predict_s=wall,
                        cpu_s=cpu,
                    )
                    print(row, flush=True)
                    rows.append(row)
    df = pd.DataFrame(rows)
    summary = df.groupby(["method", "per_class"], sort=False).agg(["mean", "std"]).reset_index()
    label = f" ({args.label})" if args.label else ""
    title = (
        f"Fashion-MNIST multi-task{label}: class (10) and coarse group (4); {len(X_test)} test images, "
        f"image_size={args.image_size}, {args.epochs} epochs, augment={args.augment!r}, device {args.device}, "
        f"{torch.get_num_threads()} torch threads; seeds {args.seeds}."
    )
    lines = [
        title,
        "",
        "| method | per class | class accuracy | group accuracy | both right | epochs trained | fit + predict (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(r, name, digits=3):
        mean, sd = r[(name, "mean")], r[(name, "std")]
        return f"{mean:.{digits}f}" + ("" if np.isnan(sd) else f" ± {sd:.{digits}f}")

    for _, r in summary.iterrows():
        lines.append(
            f"| {LABELS[r[('method', '')]]} | {r[('per_class', '')]} | {cell(r, 'class_acc')} | "
            f"{cell(r, 'group_acc')} | {cell(r, 'both_acc')} | {r[('epochs_trained', 'mean')]:.1f} "
            f"| {r[('fit_predict_s', 'mean')]:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n")
    df.to_csv(out.with_suffix(".csv"), index=False)
    print(f"saved {out.with_suffix('.md')} and .csv")


if __name__ == "__main__":
    main()
