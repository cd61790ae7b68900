"""Plain sentence-transformers, for bench_cpu_backends.py's anchor rows; runs in its own interpreter.

sentence-transformers' ``backend="onnx"`` / ``"openvino"`` need ``optimum`` / ``optimum-intel``, whose
pins want ``transformers<5``, so the anchors run in a separate environment (see the benchmark's
``--st-python``). One JSON command per line on stdin, one JSON answer per line on stdout:

    {"load": "onnx", "model": "/path/to/model", "threads": 1}        -> {"seconds": ...}
    {"encode": "onnx", "texts": "/path/texts.json", "batch_size": 32, "out": "/path/out.npy"}
                                                                     -> {"seconds": ...}

Names: ``torch`` (float32), ``onnx``, ``onnx-qint8`` (sentence-transformers' own dynamic int8 export for
AVX-512 VNNI), ``openvino`` (OpenVINO's default precision for the CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np


def _load(name: str, model: str, threads: int):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    if name == "torch":
        return SentenceTransformer(model, device="cpu")
    if name in ("onnx", "onnx-qint8"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        kwargs = {"provider": "CPUExecutionProvider", "session_options": options}
        if name == "onnx":
            return SentenceTransformer(model, device="cpu", backend="onnx", model_kwargs=kwargs)
        from sentence_transformers import export_dynamic_quantized_onnx_model

        folder = tempfile.mkdtemp(prefix="st-anchor-")
        shutil.copytree(model, folder, dirs_exist_ok=True)
        base = SentenceTransformer(folder, device="cpu", backend="onnx")
        base.save_pretrained(folder)
        export_dynamic_quantized_onnx_model(base, "avx512_vnni", folder)
        kwargs["file_name"] = "onnx/model_qint8_avx512_vnni.onnx"
        return SentenceTransformer(folder, device="cpu", backend="onnx", model_kwargs=kwargs)
    if name == "openvino":
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        return SentenceTransformer(model, device="cpu", backend="openvino", model_kwargs={"ov_config": config})
    raise ValueError(f"unknown anchor {name!r}")


def main() -> int:
    models = {}
    texts_cache = {}
    for line in sys.stdin:
        command = json.loads(line)
        try:
            start = time.perf_counter()
            if "load" in command:
                models[command["load"]] = _load(command["load"], command["model"], int(command["threads"]))
                answer = {"seconds": time.perf_counter() - start}
            else:
                path = command["texts"]
                if path not in texts_cache:
                    with open(path) as fh:
                        texts_cache[path] = json.load(fh)
                texts = texts_cache[path]
                start = time.perf_counter()
                out = models[command["encode"]].encode(
                    texts, batch_size=int(command.get("batch_size", 32)), convert_to_numpy=True
                )
                answer = {"seconds": time.perf_counter() - start}
                if command.get("out"):
                    np.save(command["out"], np.asarray(out, dtype=np.float32))
        except Exception as exc:  # noqa: BLE001 - reported to the benchmark, which shows the row as failed
            answer = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
