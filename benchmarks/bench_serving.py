"""Serving benchmark (issue 5): micro-batching on vs off under 32 concurrent clients.

A TextEncoder("all-MiniLM-L6-v2") + LogisticRegression pipeline is saved as ``.skops`` and served
with ``skdeep serve`` in its own process on 127.0.0.1. 32 asyncio clients (httpx, one connection
each) send ``POST /predict`` with ONE text per request, each text distinct (Rotten Tomatoes
snippets, or generated sentences with ``--texts synthetic``), and the encoder runs with
``cache=None``: every request costs a real forward pass, nothing is answered from a cache.

For each mode the run is bounded both in requests (``--requests``) and in time (``--seconds``:
no new request starts after it). A warm-up of 64 requests per run is not counted. With
``--repeats N`` the modes alternate N times and the best run of each is reported. Throughput is
completed requests per second of wall time; latency is per request, as the client sees it.

* batching off: ``--no-batching`` (one model call per request, calls serialised in one worker thread);
* batching on: ``--max-batch-size 32 --max-wait-ms 5``;

and, as a reference without HTTP, ``pipe.predict`` in the benchmark's own process on 1 and on 32
texts per call.

The client runs on the same (2-core) machine as the server and the machine is shared with other
work: read the numbers as a ratio more than as absolutes; the load average is reported.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/bench_serving.py [--requests 2000 --seconds 60 --model all-MiniLM-L6-v2]
      (``--requests 200 --seconds 10`` for a quick check.)
Writes benchmarks/results/serving.md, serving.json and serving.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CLIENTS = 32
WARMUP_REQUESTS = 64
MODES = {
    "batching off": ["--no-batching"],
    "batching on": ["--max-batch-size", "32", "--max-wait-ms", "{wait_ms}"],
}


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    words = (
        "the a film movie plot actor actress great dull boring brilliant story scene music score ending twist "
        "character dialogue pacing direction camera funny sad moving clever slow fast script cast performance "
        "visual stunning weak strong charming awkward tense quiet loud long short"
    ).split()
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(8, 24))) for i in range(n)]


def load_texts(kind: str, n: int) -> list[str]:
    if kind == "rt":
        try:
            from skdeep.datasets import fetch_rotten_tomatoes as load_rotten_tomatoes

            texts = list(dict.fromkeys(load_rotten_tomatoes()["text"]))  # distinct, in order
            random.Random(0).shuffle(texts)
            if len(texts) >= n:
                return texts[:n]
            print(f"only {len(texts)} distinct snippets; adding synthetic texts", file=sys.stderr)
            return texts + synthetic_texts(n - len(texts))
        except Exception as exc:  # noqa: BLE001 - no network, no wheel: fall back, and say so
            print(f"Rotten Tomatoes unavailable ({exc}); using synthetic texts", file=sys.stderr)
    return synthetic_texts(n)


def build_model(model: str, path: Path, train_texts: list[str]):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from skdeep.persistence import save
    from skdeep.text import TextEncoder

    labels = [i % 2 for i in range(len(train_texts))]
    pipe = make_pipeline(TextEncoder(model, cache=None), LogisticRegression()).fit(train_texts, labels)
    save(pipe, path)
    return pipe


def in_process(pipe, texts: list[str], per_call: int, n_texts: int, seconds: float) -> dict:
    """The model alone, no HTTP: ``pipe.predict`` on ``per_call`` distinct texts at a time."""
    pipe.predict(texts[:per_call])  # warm-up
    texts = texts[per_call:]
    load = os.getloadavg()[0]
    done = 0
    start = time.perf_counter()
    while done < n_texts and time.perf_counter() - start < seconds:
        done += len(pipe.predict(texts[done : done + per_call]))
    wall = time.perf_counter() - start
    return {
        "mode": f"in-process predict, {per_call} text(s) per call",
        "completed": done,
        "wall_s": wall,
        "throughput_rps": done / wall,
        "load_avg_1m": load,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_file: Path, extra: list[str]):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [
        sys.executable,
        "-m",
        "skdeep.cli",
        "serve",
        str(model_file),
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra,
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not start within 300 s")
        time.sleep(0.2)


async def load_test(url: str, texts: list[str], n_requests: int, seconds: float) -> dict:
    """32 clients, one text per request, until ``n_requests`` are done or ``seconds`` have passed."""
    import httpx

    latencies: list[float] = []
    errors = 0
    next_index = 0
    stop_at = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient):
        nonlocal next_index, errors
        while next_index < n_requests and time.perf_counter() < stop_at:
            text = texts[next_index]
            next_index += 1
            t0 = time.perf_counter()
            r = await c.post("/predict", json={"inputs": [text]})
            dt = time.perf_counter() - t0
            if r.status_code == 200 and len(r.json()["predictions"]) == 1:
                latencies.append(dt)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(CLIENTS)))
        wall = time.perf_counter() - start
    lat_ms = np.array(latencies) * 1000
    return {
        "completed": len(latencies),
        "errors": errors,
        "wall_s": wall,
        "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "mean_ms": float(lat_ms.mean()),
    }


def run_mode(name: str, model_file: Path, texts: list[str], n_requests: int, seconds: float, wait_ms: float) -> dict:
    import httpx

    server_args = [a.format(wait_ms=f"{wait_ms:g}") for a in MODES[name]]
    proc, url = start_server(model_file, server_args)
    try:
        asyncio.run(load_test(url, texts[:WARMUP_REQUESTS], WARMUP_REQUESTS, seconds))
        before = httpx.get(f"{url}/metadata").json()["stats"]["predict"]
        load = os.getloadavg()[0]
        result = asyncio.run(load_test(url, texts[WARMUP_REQUESTS:], n_requests, seconds))
        after = httpx.get(f"{url}/metadata").json()["stats"]["predict"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    calls = after["model_calls"] - before["model_calls"]
    result.update(
        mode=name,
        server_args=" ".join(server_args),
        model_calls=calls,
        mean_batch=(after["items"] - before["items"]) / max(calls, 1),
        load_avg_1m=load,
    )
    return result


def markdown(results: list[dict], references: list[dict], args, n_cpu: int) -> str:
    base = next((r for r in results if r["mode"] == "batching off"), results[0])["throughput_rps"]
    lines = [
        f"## Serving: {CLIENTS} concurrent clients, one distinct text per request, {args.model} "
        f"(cache off, {n_cpu} CPU cores, client and server on the same machine)",
        "",
        "| mode | server options | requests | throughput (req/s) | speed-up | p50 latency (ms) | p99 latency (ms) "
        "| mean batch | errors | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | `{r['server_args']}` | {r['completed']} | {r['throughput_rps']:.1f} | "
            f"{r['throughput_rps'] / base:.1f}x | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_batch']:.1f} | "
            f"{r['errors']} | {r['load_avg_1m']:.1f} |"
        )
    ref_base = references[0]["throughput_rps"]
    lines += [
        "",
        "The model alone, without HTTP (same pipeline and kind of texts, in the benchmark's process):",
        "",
        "| in-process call | texts | texts/s | speed-up | load avg |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in references:
        lines.append(
            f"| {r['mode']} | {r['completed']} | {r['throughput_rps']:.1f} | {r['throughput_rps'] / ref_base:.1f}x | "
            f"{r['load_avg_1m']:.1f} |"
        )
    lines += [
        "",
        f"Command: `.venv/bin/python benchmarks/bench_serving.py --model {args.model} "
        f"--requests {args.requests} --seconds {args.seconds:g} --texts {args.texts} --wait-ms {args.wait_ms:g} "
        f"--repeats {args.repeats}`"
        + (" (best of the runs per mode; all runs in serving.json)" if args.repeats > 1 else ""),
    ]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], references: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [r["mode"] for r in results] + [
        r["mode"].replace("in-process predict, ", "model alone,\n") for r in references
    ]
    values = [r["throughput_rps"] for r in results + references]
    colors = ["#999999", "#3b7dd8"][: len(results)] + ["#dddddd"] * len(references)
    bars = ax1.bar(range(len(values)), values, color=colors, edgecolor="#555555")
    for bar in bars[len(results) :]:
        bar.set_hatch("//")
    ax1.set_xticks(range(len(values)), labels, fontsize=8)
    ax1.set_ylabel("texts / s")
    ax1.set_title(f"Throughput: server with {CLIENTS} clients; model alone (hatched)", fontsize=9)
    x = np.arange(len(results))
    ax2.bar(x - 0.2, [r["p50_ms"] for r in results], 0.4, label="p50")
    ax2.bar(x + 0.2, [r["p99_ms"] for r in results], 0.4, label="p99")
    ax2.set_xticks(x, [r["mode"] for r in results])
    ax2.set_ylabel("latency (ms)")
    ax2.set_title("Latency per request", fontsize=9)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def best_runs(saved: dict) -> tuple[list[dict], list[dict]]:
    results = []
    for runs in saved["server"].values():
        best = dict(max(runs, key=lambda r: r["throughput_rps"]))
        best["runs_rps"] = [round(r["throughput_rps"], 2) for r in runs]
        results.append(best)
    references = [max(r, key=lambda x: x["throughput_rps"]) for r in saved["in_process"].values()]
    return results, references


def write_report(saved: dict, out: Path) -> None:
    results, references = best_runs(saved)
    table = markdown(results, references, argparse.Namespace(**saved["args"]), saved["cpu_count"])
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table)
    plot(results, references, out.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--requests", type=int, default=2000, help="most timed requests per mode")
    parser.add_argument("--seconds", type=float, default=60.0, help="most seconds per mode")
    parser.add_argument("--texts", choices=("rt", "synthetic"), default="rt")
    parser.add_argument("--wait-ms", type=float, default=5.0, help="--max-wait-ms of the batching server")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode (alternating); the best is reported")
    parser.add_argument("--out", default=str(RESULTS / "serving"))
    parser.add_argument("--replot", action="store_true", help="rewrite the table and plot from OUT.json, run nothing")
    args = parser.parse_args()
    if args.replot:
        write_report(json.loads(Path(args.out).with_suffix(".json").read_text()), Path(args.out))
        return

    n_texts = 200 + args.repeats * (len(args.modes) + 2) * (WARMUP_REQUESTS + args.requests)
    texts = load_texts(args.texts, n_texts)
    train, texts = texts[:200], texts[200:]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        model_file = Path(tmp) / "model.skops"
        pipe = build_model(model, model_file, train)
        runs: dict[str, list[dict]] = {name: [] for name in args.modes}
        reference: dict[int, list[dict]] = {1: [], 32: []}
        per_run = WARMUP_REQUESTS + args.requests
        slot = 0
        for _ in range(args.repeats):
            # Modes alternate, so that both see similar load from whatever else runs on the machine.
            for name in args.modes:
                # Each run gets its own distinct texts: no text is ever sent twice.
                chunk = texts[slot * per_run : (slot + 1) * per_run]
                slot += 1
                runs[name].append(run_mode(name, model_file, chunk, args.requests, args.seconds, args.wait_ms))
                print(json.dumps(runs[name][-1]), file=sys.stderr)
            for per_call in reference:
                chunk = texts[slot * per_run : (slot + 1) * per_run]
                slot += 1
                reference[per_call].append(in_process(pipe, chunk, per_call, args.requests, args.seconds))
                print(json.dumps(reference[per_call][-1]), file=sys.stderr)
    saved = {
        "args": {k: v for k, v in vars(args).items() if k != "replot"},
        "cpu_count": os.cpu_count(),
        "server": runs,
        "in_process": {str(k): v for k, v in reference.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(saved, indent=2))
    write_report(saved, out)


if __name__ == "__main__":
    main()
