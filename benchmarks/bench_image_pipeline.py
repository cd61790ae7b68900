"""End-to-end ImageEncoder throughput from image files on disk vs the model alone on preloaded tensors.

Issue 4's question: does decoding hide behind compute? Same model, same batch size, one run each:

* **model only**: images decoded, resized and cropped beforehand into uint8 tensors; timed is the
  forward pass (normalisation on the device, ``channels_last``, autocast on GPUs) batch after batch,
  once before and once after the end-to-end runs (the ratio uses their mean);
* **end to end**: ``ImageEncoder.transform(paths)`` with no cache: reading and hashing each file (the
  cache key), decoding, EXIF/mode handling, resize and crop in decode threads, and the forward pass.

The ratio end-to-end / model-only is the goal (>= 0.9). Images are photos from scikit-image cut to
random 500x375-ish crops (ImageNet's typical size), saved as JPEG (quality 90) and PNG.

    python benchmarks/bench_image_pipeline.py                      # packaged EfficientNet-Lite0, 224 px
    python benchmarks/bench_image_pipeline.py --model resnet50 --weights none --n-images 512 --device cuda

Prints a markdown table and saves ``benchmarks/results/image_pipeline.{png,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skdeep.image import ImageEncoder

RESULTS = Path(__file__).parent / "results"


def make_images(folder: Path, n: int, fmt: str, seed: int = 0) -> list[str]:
    """``n`` photo crops of about 500x375 pixels written as ``fmt`` files; returns their paths."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = rng.integers(h // 2, h + 1), rng.integers(w // 2, w + 1)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        size = (int(rng.integers(450, 551)), int(rng.integers(340, 411)))
        img = Image.fromarray(photo[top : top + ch, left : left + cw]).resize(size, Image.BILINEAR)
        path = folder / f"img{i:05d}.{fmt}"
        img.save(path, **({"quality": 90} if fmt == "jpg" else {}))
        paths.append(str(path))
    return paths


def model_only_rate(enc: ImageEncoder, paths: list[str], batch_size: int) -> float:
    """Images/s of the forward pass alone, on tensors decoded and preprocessed beforehand."""
    from skdeep.image_io import validate_images

    backend = enc._backend(enc._source())
    tensors = torch.stack([backend.preprocess.geometric(item.load()) for item in validate_images(paths)])
    backend.forward_uint8(tensors[:batch_size])  # warm-up
    if backend.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(tensors), batch_size):
        backend.forward_uint8(tensors[i : i + batch_size])  # returns numpy: synchronised
    return len(tensors) / (time.perf_counter() - start)


def end_to_end_rate(enc: ImageEncoder, paths: list[str]) -> float:
    start = time.perf_counter()
    out = enc.transform(paths)
    elapsed = time.perf_counter() - start
    assert out.shape[0] == len(paths)
    return len(paths) / elapsed


def run(model, weights, image_size, batch_size, n_images, device, workers, formats):
    enc = ImageEncoder(model, weights=weights, image_size=image_size, batch_size=batch_size, device=device, cache=None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {fmt: make_images(Path(tmp), n_images, fmt) for fmt in formats}
        enc.fit(files[formats[0]][:1])  # load the model outside the timings
        # Model-only is measured before and after the end-to-end runs, and the ratios use the mean:
        # on a shared machine the load drifts during a run.
        before = model_only_rate(enc, files[formats[0]], batch_size)
        for fmt in formats:
            for w in workers:
                enc.set_params(num_workers=w)
                resolved = enc._n_workers(n_images)
                rate = end_to_end_rate(enc, files[fmt])
                rows.append(
                    {
                        "pipeline": f"end to end from {fmt.upper()} files",
                        "workers": f"{w} ({resolved})",
                        "images_per_s": rate,
                    }
                )
        after = model_only_rate(enc, files[formats[0]], batch_size)
    model_rate = (before + after) / 2
    for row in rows:
        row["ratio"] = row["images_per_s"] / model_rate
    head = [
        {"pipeline": "model only, before", "workers": "-", "images_per_s": before, "ratio": before / model_rate},
        {"pipeline": "model only, after", "workers": "-", "images_per_s": after, "ratio": after / model_rate},
    ]
    return head + rows


def environment(device: str) -> str:
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    threads = torch.get_num_threads()
    return f"{dev.type} ({name}), {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads{load}"


def markdown(rows) -> str:
    lines = ["| pipeline | decode threads | images/s | vs model only (mean) |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['pipeline']} | {r['workers']} | {r['images_per_s']:.1f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def plot(rows, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['pipeline']}\nthreads {r['workers']}" if r["workers"] != "-" else r["pipeline"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    colors = ["C1" if r["workers"] == "-" else "C0" for r in rows]
    ax.barh(labels[::-1], [r["images_per_s"] for r in rows][::-1], color=colors[::-1])
    ax.set_xlabel("images/s")
    ax.set_title("\n".join(textwrap.wrap(title, 100)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default="DEFAULT", help="'none' for random init")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", default="0,auto", help="comma-separated num_workers values")
    parser.add_argument("--formats", default="jpg,png")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args(argv)
    weights = None if args.weights.lower() == "none" else args.weights
    workers = [w if w == "auto" else int(w) for w in args.workers.split(",")]
    rows = run(
        args.model,
        weights,
        args.image_size,
        args.batch_size,
        args.n_images,
        args.device,
        workers,
        args.formats.split(","),
    )
    title = (
        f"{args.model} ({args.weights}), batch {args.batch_size}, {args.n_images} images, "
        f"image_size={args.image_size or 'native'}; {environment(args.device)}"
    )
    print(title)
    print(markdown(rows))
    RESULTS.mkdir(exist_ok=True)
    stem = "image_pipeline" + (f"_{args.tag}" if args.tag else "")
    plot(rows, title, RESULTS / f"{stem}.png")
    (RESULTS / f"{stem}.json").write_text(json.dumps({"title": title, "rows": rows}, indent=2))
    print(f"saved {RESULTS / (stem + '.png')}")


if __name__ == "__main__":
    main()
