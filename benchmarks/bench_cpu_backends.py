"""CPU backends side by side (issue #15): speed, fidelity to torch float32, linear-probe accuracy, physical limit.

One run, threads pinned (``--threads``, default 1: torch, ONNX Runtime, OpenVINO, BLAS and the
sentence-transformers anchors alike), every path timed in interleaved rounds, the median of
``--repeats`` (>= 3) reported:

1. Text, all-MiniLM-L6-v2: Rotten Tomatoes snippets (short) and the 2012 convention speeches
   (long, truncated at the model's 256 tokens). Paths: skdeep ``TextEncoder`` with
   backend torch (float32, bfloat16), onnx, openvino (float32, bfloat16), onnx-int8,
   onnx-int8-all and auto; plain sentence-transformers ``encode`` with its own backend="torch",
   "onnx", "openvino" and its dynamic int8 ONNX export, when ``--st-python`` names an interpreter
   that has ``optimum`` (they need ``transformers<5``; see ``_st_anchor_worker.py``). For each:
   texts/s, speed-up vs skdeep torch float32, cosine to it (min / mean), and the accuracy of a
   logistic-regression probe (5-fold CV) on ``--n-probe`` snippets / all the speeches.
2. Batch size: skdeep's padding (batches sorted by token count) against batches sorted by
   characters, and the speed of the main paths at batch 8 / 16 / 32 / 64 on the snippets.
3. Images, ImageEncoder("efficientnet_lite0"): torch float32, bfloat16 (channels-last, always),
   onnx, openvino (float32, bfloat16), from JPEG files (decode included) and model-only (decoded
   uint8 batches), plus a Fashion-MNIST linear probe.
4. The physical limit: FLOPs of the benchmark's real tokens (2 x the transformer layers' weights
   per token, plus attention; the embedding table is a lookup) and of the images (counted by
   torch's FlopCounterMode), against float32 and bfloat16 matmul throughput measured in the same
   run with the same threads.

Run:  .venv/bin/python benchmarks/bench_cpu_backends.py [--st-python /tmp/st-anchor-venv/bin/python]
      [--threads 1 --repeats 3 --n-short 500 --n-long 96 --n-images 64]   (about 20 minutes on 1 thread)
Writes benchmarks/results/cpu_backends.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "all-MiniLM-L6-v2"


def pin_threads(n: int) -> None:
    """Before numpy / torch load: every library's thread pool gets ``n`` threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SKDEEP_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


# ---------------------------------------------------------------------------------------------- helpers


def cosine(a, b):
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def probe_accuracy(X, y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))
    return float(cross_val_score(model, X, y, cv=cv).mean())


def interleaved(runs: dict, repeats: int) -> dict:
    """``{name: [seconds per round]}``: each round runs every path once, in a rotating order."""
    names = list(runs)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


class Anchors:
    """Plain sentence-transformers in another interpreter (``_st_anchor_worker.py``), one command at a time."""

    NAMES = ("torch", "onnx", "openvino", "onnx-qint8")

    def __init__(self, python: str, model_path: str, threads: int):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(
            [python, str(HERE / "_st_anchor_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.loaded, self.errors = [], {}
        for name in self.NAMES:
            answer = self.ask({"load": name, "model": model_path, "threads": threads})
            if "error" in answer:
                self.errors[name] = answer["error"]
            else:
                self.loaded.append(name)

    def ask(self, command: dict) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        return json.loads(line) if line else {"error": "the anchor worker exited"}

    def encode(self, name, texts_file, batch_size=32, out=None) -> float:
        answer = self.ask({"encode": name, "texts": texts_file, "batch_size": batch_size, "out": out})
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer["seconds"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# ---------------------------------------------------------------------------------------------- text

TEXT_PATHS = {  # label -> TextEncoder parameters
    "torch float32": dict(backend="torch"),
    "torch bfloat16": dict(backend="torch", dtype="bfloat16"),
    "onnx": dict(backend="onnx"),
    "openvino float32": dict(backend="openvino", dtype="float32"),
    "openvino bfloat16": dict(backend="openvino", dtype="bfloat16"),
    "onnx-int8": dict(backend="onnx-int8"),
    "onnx-int8-all": dict(backend="onnx-int8-all"),
    "auto": dict(backend="auto"),
}


def text_encoders(threads: int, batch_size: int) -> tuple[dict, dict]:
    from skdeep import TextEncoder

    encoders, setup = {}, {}
    for label, params in TEXT_PATHS.items():
        start = time.perf_counter()
        enc = TextEncoder(MODEL, cache=None, batch_size=batch_size, num_threads=threads, **params).fit(["warm up"])
        enc.transform(["warm up", "a second, longer text to warm the model up"])
        setup[label] = {"seconds": time.perf_counter() - start, "backend_": enc.backend_, "dtype_": enc.dtype_}
        encoders[label] = enc
    return encoders, setup


def bench_text(name, texts, encoders, anchors, args, workdir) -> dict:
    import numpy as np

    print(f"[text: {name}] {len(texts)} texts", flush=True)
    texts_file = str(workdir / f"{name}.json")
    Path(texts_file).write_text(json.dumps(texts))
    runs = {label: (lambda enc=enc: enc.transform(texts)) for label, enc in encoders.items()}
    for anchor in anchors.loaded if anchors else ():
        runs[f"sentence-transformers {anchor}"] = lambda a=anchor: anchors.encode(a, texts_file, args.batch_size)
    times = interleaved(runs, args.repeats)
    outputs = {label: enc.transform(texts) for label, enc in encoders.items()}
    for anchor in anchors.loaded if anchors else ():
        out = str(workdir / f"{name}-{anchor}.npy")
        anchors.encode(anchor, texts_file, args.batch_size, out=out)
        outputs[f"sentence-transformers {anchor}"] = np.load(out)
    return _text_rows(texts, times, outputs)


def _text_rows(texts, times, outputs) -> dict:
    ref = outputs["torch float32"]
    ref_time = statistics.median(times["torch float32"])
    rows = {}
    for label, ts in times.items():
        cos = cosine(outputs[label], ref)
        rows[label] = {
            "per_second": len(texts) / statistics.median(ts),
            "speedup": ref_time / statistics.median(ts),
            "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()),
            "rounds": ts,
        }
    return rows


def probe_text(texts, y, encoders, anchors, args, workdir, tag) -> dict:
    import numpy as np

    print(f"[probe: {tag}] {len(texts)} texts", flush=True)
    acc = {label: probe_accuracy(enc.transform(texts), y) for label, enc in encoders.items()}
    if anchors:
        texts_file = str(workdir / f"probe-{tag}.json")
        Path(texts_file).write_text(json.dumps(texts))
        for anchor in anchors.loaded:
            out = str(workdir / f"probe-{tag}-{anchor}.npy")
            anchors.encode(anchor, texts_file, args.batch_size, out=out)
            acc[f"sentence-transformers {anchor}"] = probe_accuracy(np.load(out), y)
    return acc


def padding_and_batch_sizes(texts, threads, args) -> dict:
    """Padded / real tokens with skdeep's token-sorted batches vs character-sorted ones, and speed per batch size."""
    import numpy as np

    from skdeep import TextEncoder
    from skdeep.engine import CHUNK_BATCHES

    enc = TextEncoder(MODEL, cache=None)
    backend = enc._backend(enc._source())
    lengths = np.array([len(s) for s in backend.tokens(texts).sequences])
    by_chars = np.argsort([-len(t) for t in texts], kind="stable")
    out = {"padding": {}, "speed": {}}
    for bs in args.batch_sizes:
        engine = 0  # the engine sorts each chunk of CHUNK_BATCHES batches of misses by token count
        for c in range(0, len(lengths), bs * CHUNK_BATCHES):
            part = np.sort(lengths[c : c + bs * CHUNK_BATCHES])[::-1]
            engine += sum(part[s : s + bs].max() * len(part[s : s + bs]) for s in range(0, len(part), bs))
        chars = lengths[by_chars]
        char_total = sum(chars[s : s + bs].max() * len(chars[s : s + bs]) for s in range(0, len(chars), bs))
        out["padding"][bs] = {"tokens": engine / lengths.sum(), "characters": char_total / lengths.sum()}
    print("[batch sizes]", flush=True)
    runs = {}
    for label in args.batch_paths:
        for bs in args.batch_sizes:
            e = TextEncoder(MODEL, cache=None, batch_size=bs, num_threads=threads, **TEXT_PATHS[label]).fit(["x"])
            runs[(label, bs)] = lambda e=e: e.transform(texts)
    times = interleaved(runs, args.repeats)
    for (label, bs), ts in times.items():
        out["speed"].setdefault(label, {})[bs] = len(texts) / statistics.median(ts)
    return out


# ---------------------------------------------------------------------------------------------- images

IMAGE_PATHS = {
    "torch float32": dict(backend="torch"),
    "torch bfloat16 (channels-last)": dict(backend="torch", dtype="bfloat16"),
    "onnx": dict(backend="onnx"),
    "openvino float32": dict(backend="openvino", dtype="float32"),
    "openvino bfloat16": dict(backend="openvino", dtype="bfloat16"),
}


def jpeg_files(n: int, folder: Path) -> list[str]:
    """``n`` JPEG photos (scikit-image's samples, cropped and scaled differently), about 500 x 375."""
    import numpy as np
    import skimage.data
    from PIL import Image

    photos = [getattr(skimage.data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket", "cat")]
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        img = Image.fromarray(photos[i % len(photos)]).convert("RGB")
        w, h = img.size
        left, top = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        img = img.crop((left, top, left + 3 * w // 4, top + 3 * h // 4)).resize((500, 375))
        path = folder / f"photo{i:03d}.jpg"
        img.save(path, quality=90)
        files.append(str(path))
    return files


def bench_images(args, threads, workdir) -> dict:
    import numpy as np
    import torch

    from skdeep import ImageEncoder
    from skdeep.datasets import load_fashion_mnist

    print("[images]", flush=True)
    folder = workdir / "jpeg"
    folder.mkdir()
    files = jpeg_files(args.n_images, folder)
    encoders = {}
    for label, params in IMAGE_PATHS.items():
        enc = ImageEncoder("efficientnet_lite0", cache=None, num_threads=threads, num_workers=1, **params)
        enc.fit(files[:2])
        encoders[label] = enc
    any_backend = encoders["torch float32"]._backend(encoders["torch float32"]._source())
    batch = torch.stack([any_backend.prepare(item) for item in encoders["torch float32"]._validate_input(files)])
    backends = {label: enc._backend(enc._source()) for label, enc in encoders.items()}

    def model_only(backend):
        return np.concatenate([backend.forward_uint8(batch[i : i + 32]) for i in range(0, len(batch), 32)])

    runs = {("files", label): (lambda e=enc: e.transform(files)) for label, enc in encoders.items()}
    runs.update({("model", label): (lambda b=b: model_only(b)) for label, b in backends.items()})
    times = interleaved(runs, args.repeats)
    outputs = {label: model_only(b) for label, b in backends.items()}
    X_tr, y_tr = load_fashion_mnist(n_train=args.n_probe_images, n_test=1)[:2]
    rows = {}
    for label in IMAGE_PATHS:
        cos = cosine(outputs[label], outputs["torch float32"])
        rows[label] = {
            mode: {
                "per_second": len(files) / statistics.median(times[(mode, label)]),
                "speedup": statistics.median(times[(mode, "torch float32")]) / statistics.median(times[(mode, label)]),
            }
            for mode in ("files", "model")
        }
        rows[label].update(cosine_min=float(cos.min()), cosine_mean=float(cos.mean()))
        print(f"[probe: fashion-mnist] {label}", flush=True)
        rows[label]["probe"] = probe_accuracy(encoders[label].transform(X_tr), y_tr)
    flops = image_flops(backends["torch float32"])
    return {"rows": rows, "n": len(files), "flops_per_image": flops}


def image_flops(backend) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    h, w = backend.preprocess.crop
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        backend.module(torch.zeros(1, 3, h, w))
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------- physical limit


def matmul_peak(dtype_name: str, threads: int, n: int = 1024, reps: int = 7) -> float:
    """Best of ``reps`` n x n matrix products, in GFLOP/s, with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = min(_timed_mm(a, b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed_mm(a, b) -> float:
    import torch

    start = time.perf_counter()
    torch.mm(a, b)
    return time.perf_counter() - start


def text_flops(texts) -> dict:
    """FLOPs of embedding ``texts`` with MiniLM, real tokens only (no padding)."""
    import numpy as np

    from skdeep import TextEncoder

    enc = TextEncoder(MODEL, cache=None)
    backend = enc._backend(enc._source())
    bert = backend.model[0].auto_model
    layer_weights = sum(p.numel() for n, p in bert.encoder.named_parameters() if p.ndim == 2)
    hidden, layers = bert.config.hidden_size, bert.config.num_hidden_layers
    lengths = np.array([len(s) for s in backend.tokens(texts).sequences], dtype=np.float64)
    # 2 FLOPs per weight per token; attention: Q K^T and A V, 2 * 2 * L * hidden per token per layer.
    total = 2 * layer_weights * lengths.sum() + layers * 4 * hidden * (lengths**2).sum()
    return {"flops": float(total), "tokens": int(lengths.sum()), "weights": int(layer_weights)}


# ---------------------------------------------------------------------------------------------- report


def fmt_row(label, row, probe=None):
    acc = "" if probe is None else f"{100 * probe:.1f}"
    return (
        f"| {label} | {row['per_second']:.1f} | {row['speedup']:.2f}x | "
        f"{row['cosine_min']:.5f} / {row['cosine_mean']:.5f} | {acc} |"
    )


def report(res: dict, args) -> str:
    t = res["threads"]
    lines = [
        f"Machine: {res['cpu']}, {os.cpu_count()} cores, bfloat16 native: {res['bf16']}; threads pinned to **{t}** "
        f"for torch, BLAS, ONNX Runtime, OpenVINO and the sentence-transformers anchors. Load average "
        f"{res['load_start']:.1f} at the start, {res['load_end']:.1f} at the end (a shared machine). Each time is "
        f"the median of {args.repeats} interleaved rounds; speed-ups are against skdeep torch float32 in the same "
        f"round set; cosine is per text to skdeep torch float32 (min / mean); probe: 5-fold CV accuracy (%) of a "
        "logistic regression on the embeddings.",
        "",
        f'`backend="auto"` chose **{res["auto"]["backend_"]} {res["auto"]["dtype_"]}** here (first fit, '
        f"measuring included: {res['auto']['seconds']:.1f} s; remembered afterwards).",
        "",
    ]
    for name, key, probe_key, unit in (
        (f"Short texts: {args.n_short} Rotten Tomatoes snippets", "short", "probe_short", "texts/s"),
        (
            f"Long documents: {res['n_long']} convention speeches, truncated at 256 tokens",
            "long",
            "probe_long",
            "docs/s",
        ),
    ):
        lines += [f"### {name}", "", f"| path | {unit} | speed-up | cosine min / mean | probe accuracy |"]
        lines.append("|---|---|---|---|---|")
        for label, row in res[key].items():
            lines.append(fmt_row(label, row, res[probe_key].get(label)))
        lines.append("")
    if res.get("anchor_errors"):
        lines += ["Anchors that failed to load: " + "; ".join(f"{k}: {v}" for k, v in res["anchor_errors"].items()), ""]
    pad = res["batches"]["padding"]
    lines += [
        "### Batches: padding and size (short snippets)",
        "",
        "| batch size | padded / real tokens, sorted by tokens (skdeep) | sorted by characters | "
        + " | ".join(f"{p} texts/s" for p in args.batch_paths)
        + " |",
        "|---" * (3 + len(args.batch_paths)) + "|",
    ]
    for bs in args.batch_sizes:
        speeds = " | ".join(f"{res['batches']['speed'][p][bs]:.1f}" for p in args.batch_paths)
        lines.append(f"| {bs} | {pad[bs]['tokens']:.3f} | {pad[bs]['characters']:.3f} | {speeds} |")
    lines.append("")
    if "images" in res:
        img = res["images"]
        lines += [
            f'### Images: ImageEncoder("efficientnet_lite0"), {img["n"]} JPEG photos (500 x 375)',
            "",
            "| path | from files, img/s | speed-up | model only, img/s | speed-up | cosine min / mean | "
            "Fashion-MNIST probe |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, row in img["rows"].items():
            f, m = row["files"], row["model"]
            lines.append(
                f"| {label} | {f['per_second']:.1f} | {f['speedup']:.2f}x | {m['per_second']:.1f} | "
                f"{m['speedup']:.2f}x | {row['cosine_min']:.5f} / {row['cosine_mean']:.5f} | "
                f"{100 * row['probe']:.1f} |"
            )
        lines.append("")
    lim = res["limit"]
    lines += [
        "### How far from the hardware",
        "",
        f"Matrix products measured in this run ({t} thread(s), 1024 x 1024): float32 **{lim['peak_float32']:.0f}** "
        f"GFLOP/s, bfloat16 **{lim['peak_bfloat16']:.0f}** GFLOP/s. MiniLM: {lim['weights'] / 1e6:.1f} M weights in "
        f"its transformer layers, so 2 x that per real token plus attention; the snippets hold {lim['tokens_short']:,} "
        f"real tokens ({lim['flops_short'] / 1e9:.0f} GFLOP), the documents {lim['tokens_long']:,} "
        f"({lim['flops_long'] / 1e9:.0f} GFLOP). Achieved GFLOP/s counts real tokens only (padding is waste).",
        "",
        "| path | snippets: GFLOP/s | % of fp32 peak | % of bf16 peak | documents: GFLOP/s | % of fp32 peak "
        "| % of bf16 peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in res["short"]:
        cells = []
        for key, flops in (("short", lim["flops_short"]), ("long", lim["flops_long"])):
            n = len(res[f"{key}_texts"]) if f"{key}_texts" in res else None
            seconds = (n or 1) / res[key][label]["per_second"]
            gflops = flops / seconds / 1e9
            cells += [
                f"{gflops:.0f}",
                f"{100 * gflops / lim['peak_float32']:.0f}",
                f"{100 * gflops / lim['peak_bfloat16']:.0f}",
            ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "images" in res:
        lines += [
            "",
            f"EfficientNet-Lite0: {res['images']['flops_per_image'] / 1e9:.2f} GFLOP per 224 x 224 image "
            "(torch's FlopCounterMode); model only: "
            + ", ".join(
                f"{label} {row['model']['per_second'] * res['images']['flops_per_image'] / 1e9:.0f} GFLOP/s"
                for label, row in res["images"]["rows"].items()
            )
            + ". Depthwise convolutions do little arithmetic per byte, so CNNs sit further from the matmul peak.",
        ]
    return "\n".join(lines) + "\n"


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("short", "short snippets"), ("long", "long documents")]
    fig, axes = plt.subplots(1, len(panels) + ("images" in res), figsize=(6 * (len(panels) + 1), 4.5))
    for ax, (key, title) in zip(axes, panels):
        labels = list(res[key])
        values = [res[key][label]["speedup"] for label in labels]
        colors = ["#4c72b0" if not label.startswith("sentence") else "#999999" for label in labels]
        ax.barh(labels[::-1], values[::-1], color=colors[::-1])
        ax.axvline(1, color="k", lw=0.8)
        ax.set_title(f"text, {title}: speed-up vs torch float32")
    if "images" in res:
        ax = axes[-1]
        labels = list(res["images"]["rows"])
        for offset, mode in ((-0.2, "files"), (0.2, "model")):
            values = [res["images"]["rows"][label][mode]["speedup"] for label in labels]
            ax.barh([i + offset for i in range(len(labels))], values, height=0.4, label=mode)
        ax.set_yticks(range(len(labels)), labels)
        ax.axvline(1, color="k", lw=0.8)
        ax.legend()
        ax.set_title("images: speed-up vs torch float32")
    fig.suptitle(f"CPU backends, {res['threads']} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-short", type=int, default=500)
    parser.add_argument("--n-long", type=int, default=96)
    parser.add_argument("--n-probe", type=int, default=2000, help="snippets in the text probe")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--n-probe-images", type=int, default=600, help="Fashion-MNIST images in the image probe")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument(
        "--batch-paths", nargs="+", default=["torch float32", "torch bfloat16", "openvino bfloat16", "onnx-int8-all"]
    )
    parser.add_argument("--st-python", help="an interpreter with sentence-transformers + optimum (anchor rows)")
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results" / "cpu_backends"))
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (medians of interleaved rounds)")
    pin_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    from bench_text_parity import load_speeches

    from skdeep import devices
    from skdeep.datasets import fetch_rotten_tomatoes
    from skdeep.sources import resolve_text_model

    workdir = Path(tempfile.mkdtemp(prefix="skdeep-bench-cpu-"))
    os.environ["SKDEEP_HOME"] = str(workdir / "home")  # exports and the auto choice measured afresh
    res = {"threads": args.threads, "load_start": os.getloadavg()[0], "bf16": devices.cpu_supports_bf16()}
    res["cpu"] = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
    )
    rt = fetch_rotten_tomatoes().sample(frac=1.0, random_state=0)
    short = rt["text"].tolist()[: args.n_short]
    probe_frame = rt.iloc[: args.n_probe]
    speeches = load_speeches().sample(frac=1.0, random_state=0).iloc[: args.n_long]
    long_texts, long_y = speeches["text"].tolist(), speeches["label"].to_numpy()
    res["n_long"] = len(long_texts)

    start = time.perf_counter()
    encoders, setup = text_encoders(args.threads, args.batch_size)
    res["setup"] = setup
    res["auto"] = setup["auto"]
    print(f"[setup] {time.perf_counter() - start:.0f} s; auto chose {setup['auto']}", flush=True)
    anchors = None
    if args.st_python:
        anchors = Anchors(args.st_python, resolve_text_model(MODEL).path, args.threads)
        res["anchor_errors"] = anchors.errors
    y_probe = probe_frame["label"].to_numpy()
    res["short"] = bench_text("short", short, encoders, anchors, args, workdir)
    res["long"] = bench_text("long", long_texts, encoders, anchors, args, workdir)
    probe_texts = probe_frame["text"].tolist()
    res["probe_short"] = probe_text(probe_texts, y_probe, encoders, anchors, args, workdir, "short")
    res["probe_long"] = probe_text(long_texts, long_y, encoders, anchors, args, workdir, "long")
    if anchors:
        anchors.close()
    res["short_texts"], res["long_texts"] = short, long_texts
    res["batches"] = padding_and_batch_sizes(short, args.threads, args)
    if not args.skip_images:
        res["images"] = bench_images(args, args.threads, workdir)
    fs, fl = text_flops(short), text_flops(long_texts)
    res["limit"] = {
        "peak_float32": matmul_peak("float32", args.threads),
        "peak_bfloat16": matmul_peak("bfloat16", args.threads),
        "weights": fs["weights"],
        "flops_short": fs["flops"],
        "tokens_short": fs["tokens"],
        "flops_long": fl["flops"],
        "tokens_long": fl["tokens"],
    }
    res["load_end"] = os.getloadavg()[0]
    text = report(res, args)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    saved = {k: v for k, v in res.items() if k not in ("short_texts", "long_texts")}
    out.with_suffix(".json").write_text(json.dumps(saved, indent=1, default=str))
    plot(res, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
