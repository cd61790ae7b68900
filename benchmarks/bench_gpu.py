"""skdeep on a GPU: texts/s and images/s by dtype and batch size, cache overhead, end to end from files.

Measured on one CUDA device, every configuration in the same run, repeats interleaved, medians:

* text: all-MiniLM-L6-v2 through ``TextEncoder`` (cache off) in float32 / float16 / bfloat16 and two
  batch sizes, next to plain ``SentenceTransformer.encode`` (the anchor); cosine to float32;
* the cache: a grid search's second pass (every text cached) and a cold pass with the cache on;
* images: ResNet-50 and EfficientNet-Lite0, model only (uint8 batches already on the host, channels-last,
  autocast) and end to end from JPEG files (decode threads feeding the GPU).

Run::

    python benchmarks/bench_gpu.py --text-model PATH --texts rt.json --out DIR

``--texts`` is a JSON file ``{"text": [...], "label": [...]}`` (Rotten Tomatoes snippets by default, read
with :func:`skdeep.datasets.fetch_rotten_tomatoes` when omitted). Writes ``DIR/gpu.md`` and ``DIR/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from skdeep import EmbeddingCache, TextEncoder  # noqa: E402
from skdeep.image import ImageEncoder  # noqa: E402

DTYPES = ("float32", "float16", "bfloat16")
DEVICE = "cuda"  # --device cpu runs the same code on the CPU, to check the script before a GPU session
_OLD_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def sync_timed(fn, repeats: int = 3) -> tuple[float, object]:
    """Median seconds of ``fn()`` over ``repeats`` runs, each ended by a device synchronisation."""
    times, out = [], None
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def encoder_dtype(dtype: str, cls=TextEncoder) -> dict:
    """The compute-dtype parameter, whichever name this version of the encoder uses."""
    params = cls().get_params()
    return {"dtype": dtype} if "dtype" in params else {"precision": _OLD_NAMES[dtype]}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def bench_text(model: str, texts: list[str], labels: np.ndarray, batch_sizes, repeats: int) -> list[dict]:
    from sentence_transformers import SentenceTransformer

    rows = []
    reference = None
    TextEncoder(model, cache=None, device=DEVICE).fit(["warm up"])
    for dtype in DTYPES:
        for batch in batch_sizes:
            enc = TextEncoder(model, cache=None, device=DEVICE, batch_size=batch, **encoder_dtype(dtype))
            enc.transform(texts[:512])  # warm-up: kernels, autotuning
            seconds, out = sync_timed(lambda enc=enc: enc.transform(texts), repeats)
            if dtype == "float32" and reference is None:
                reference = out
            cos = cosine(out, reference)
            rows.append(
                {
                    "what": "skdeep TextEncoder",
                    "dtype": dtype,
                    "batch": batch,
                    "texts_per_s": len(texts) / seconds,
                    "cos_min": float(cos.min()),
                    "cos_mean": float(cos.mean()),
                }
            )
            print(rows[-1], flush=True)
    st = SentenceTransformer(model, device=DEVICE, local_files_only=True)
    for dtype in ("float32", "float16"):
        st_model = st.half() if dtype == "float16" else st.float()
        st_model.encode(texts[:512], batch_size=256)
        seconds, out = sync_timed(lambda m=st_model: m.encode(texts, batch_size=256, convert_to_numpy=True), repeats)
        cos = cosine(np.asarray(out, dtype=np.float32), reference)
        rows.append(
            {
                "what": "sentence-transformers encode (anchor)",
                "dtype": dtype + (" weights" if dtype == "float16" else ""),
                "batch": 256,
                "texts_per_s": len(texts) / seconds,
                "cos_min": float(cos.min()),
                "cos_mean": float(cos.mean()),
            }
        )
        print(rows[-1], flush=True)
    return rows


def bench_cache(model: str, texts: list[str], labels: np.ndarray, repeats: int) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    rows = []
    off, _ = sync_timed(lambda: TextEncoder(model, cache=None, device=DEVICE, batch_size=256).transform(texts), repeats)
    on, _ = sync_timed(
        lambda: TextEncoder(model, cache=EmbeddingCache(), device=DEVICE, batch_size=256).transform(texts), repeats
    )
    rows.append({"what": "cold transform, cache on vs off", "value": f"{100 * (on - off) / off:+.1f} %"})
    cache = EmbeddingCache(memory_bytes=2**30)
    warm_enc = TextEncoder(model, cache=cache, device=DEVICE, batch_size=256)
    warm_enc.transform(texts)
    warm, _ = sync_timed(lambda: warm_enc.transform(texts), repeats)
    rows.append(
        {"what": f"warm transform of {len(texts):,} cached texts", "value": f"{len(texts) / warm:,.0f} texts/s"}
    )
    n = min(len(texts), 2000)
    grid_texts, grid_y = texts[:n], labels[:n]
    c_values = [0.1, 0.3, 1.0, 3.0, 10.0]

    def ideal():
        X = TextEncoder(model, cache=None, device=DEVICE, batch_size=256).transform(grid_texts)
        GridSearchCV(LogisticRegression(max_iter=2000), {"C": c_values}, cv=5).fit(X, grid_y)

    def ours():
        enc = TextEncoder(model, cache=EmbeddingCache(), device=DEVICE, batch_size=256)
        pipe = make_pipeline(enc, LogisticRegression(max_iter=2000))
        GridSearchCV(pipe, {"logisticregression__C": c_values}, cv=5).fit(grid_texts, grid_y)

    t_ideal, _ = sync_timed(ideal, 1)
    t_ours, _ = sync_timed(ours, 1)
    rows.append(
        {
            "what": f"GridSearchCV(cv=5, 5 C) on {n} snippets: skdeep / embed once + grid",
            "value": f"{t_ours / t_ideal:.2f} ({t_ours:.1f} s vs {t_ideal:.1f} s)",
        }
    )
    for row in rows:
        print(row, flush=True)
    return rows


def _jpeg_files(folder: Path, n: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    files = []
    for i in range(n):
        base = np.stack([(x * (i % 7 + 1)) % 256, (y * 3 + i) % 256, (x + y + i) % 256], -1)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        files.append(str(path))
    return files


def bench_images(n_files: int, repeats: int) -> list[dict]:
    from skdeep.sources.packaged import packaged_image_weights

    rows = []
    models = [("resnet50", None, "random init, same speed as pretrained")]
    if packaged_image_weights("efficientnet_lite0") is not None:
        models.append(("efficientnet_lite0", "DEFAULT", "packaged weights"))
    else:
        models.append(("efficientnet_lite0", None, "random init, same speed as pretrained"))
    with tempfile.TemporaryDirectory() as tmp:
        files = _jpeg_files(Path(tmp), n_files)
        for name, weights, note in models:
            for dtype in DTYPES:
                kwargs = {} if weights == "DEFAULT" else {"weights": None}
                enc = ImageEncoder(
                    name, cache=None, device=DEVICE, batch_size=256, **encoder_dtype(dtype, ImageEncoder), **kwargs
                ).fit(files[:2])
                backend = enc._backend(enc._source())
                batch = torch.randint(0, 256, (256, *backend.preprocess.crop, 3), dtype=torch.uint8)
                backend.forward_uint8(batch)
                seconds, _ = sync_timed(lambda b=backend: b.forward_uint8(batch), repeats)
                rows.append(
                    {
                        "model": f"{name} ({note})",
                        "dtype": dtype,
                        "path": "model only, batch 256",
                        "images_per_s": 256 / seconds,
                    }
                )
                print(rows[-1], flush=True)
                if dtype == "float16":
                    enc.transform(files[:64])
                    seconds, _ = sync_timed(lambda e=enc: e.transform(files), repeats)
                    workers = enc._num_workers(len(files))
                    rows.append(
                        {
                            "model": f"{name} ({note})",
                            "dtype": dtype,
                            "path": f"end to end from {len(files)} 640x480 JPEGs, {workers} decode threads",
                            "images_per_s": len(files) / seconds,
                        }
                    )
                    print(rows[-1], flush=True)
    return rows


def markdown(device: str, text_rows, cache_rows, image_rows, n_texts: int) -> str:
    lines = [
        f"# skdeep on {device}",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads for torch, "
        f"{os.cpu_count()} CPU cores. Medians of interleaved repeats.",
        "",
        f"## Text: all-MiniLM-L6-v2, {n_texts:,} Rotten Tomatoes snippets",
        "",
        "| path | dtype | batch | texts/s | cosine to float32 (min / mean) |",
        "|---|---|---:|---:|---|",
    ]
    for r in text_rows:
        lines.append(
            f"| {r['what']} | {r['dtype']} | {r['batch']} | {r['texts_per_s']:,.0f} "
            f"| {r['cos_min']:.4f} / {r['cos_mean']:.5f} |"
        )
    lines += ["", "## The cache on the GPU", "", "| measurement | result |", "|---|---|"]
    lines += [f"| {r['what']} | {r['value']} |" for r in cache_rows]
    lines += ["", "## Images", "", "| model | dtype | path | images/s |", "|---|---|---|---:|"]
    lines += [f"| {r['model']} | {r['dtype']} | {r['path']} | {r['images_per_s']:,.0f} |" for r in image_rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-model", default="all-MiniLM-L6-v2")
    parser.add_argument("--texts", help="JSON file with text and label lists")
    parser.add_argument("--n-texts", type=int, default=10_000)
    parser.add_argument("--n-files", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default="text,cache,images")
    parser.add_argument("--device", default="cuda", help="cpu: a quick check of the script itself")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device: this benchmark measures the GPU paths.")
    if args.texts:
        data = json.loads(Path(args.texts).read_text())
        texts, labels = data["text"], np.asarray(data["label"])
    else:
        from skdeep.datasets import fetch_rotten_tomatoes

        frame = fetch_rotten_tomatoes()
        texts, labels = frame["text"].tolist(), frame["label"].to_numpy()
    texts, labels = texts[: args.n_texts], labels[: args.n_texts]
    sections = set(args.sections.split(","))
    text_rows = bench_text(args.text_model, texts, labels, (64, 256), args.repeats) if "text" in sections else []
    cache_rows = bench_cache(args.text_model, texts, labels, args.repeats) if "cache" in sections else []
    image_rows = bench_images(args.n_files, args.repeats) if "images" in sections else []
    device = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU (script check)"
    text = markdown(device, text_rows, cache_rows, image_rows, len(texts))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.md").write_text(text)
    (out / "gpu.json").write_text(json.dumps({"text": text_rows, "cache": cache_rows, "images": image_rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
