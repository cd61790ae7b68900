"""``backend="auto"``: the fastest backend and dtype on this machine whose vectors match torch float32.

For a model (weights fingerprint and output settings) on a machine (CPU model, flags, cores, and
the versions of torch, ONNX Runtime and OpenVINO), every candidate path (:func:`cpu_candidates`)
embeds a fixed calibration batch, interleaved, median of :data:`REPEATS` rounds. A candidate
qualifies when the cosine similarity of each of its vectors to torch float32's is at least
:data:`COSINE_TOLERANCE`; the fastest qualifying one is chosen. int8 paths are never candidates:
they move vectors further than that (cosine about 0.98) and stay an explicit choice.

The measurement runs once: the choice and every measurement are written to
``$SKDEEP_HOME/backend-choice/<family>-<settings>-<machine>.json`` and read back by later fits and
processes. Delete the file (or the folder) to measure again.

Since a chosen path agrees with torch float32 to within the tolerance, it shares torch float32's
cache entries: speed never changes what the cache holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import devices
from .._config import skdeep_home

#: Every vector of a chosen path has at least this cosine similarity to torch float32's.
COSINE_TOLERANCE = 0.9999
#: Interleaved timing rounds per candidate (the median counts).
REPEATS = 3
#: The path every other is measured against, and the fallback.
REFERENCE = ("torch", "float32")
CHOICE_FORMAT = 1

# Sentences of several registers and lengths; joined into paragraphs for long inputs.
_SENTENCES = (
    "A quietly devastating film that stays with you long after the credits roll.",
    "The plot is thin, the jokes are stale, and the running time feels twice as long as it is.",
    "Great acting.",
    "Shares of the chip maker rose 4% after it raised its forecast for the second half of the year.",
    "The committee will meet on Tuesday to vote on the revised budget proposal.",
    "How do I reset my password if I no longer have access to the email address on my account?",
    "Mix the flour and the butter until the dough is smooth, then chill it for an hour.",
    "Patients in the treatment group reported fewer side effects than those given the placebo.",
    "Gradient descent converges slowly when the loss surface is badly conditioned.",
    "The museum's new wing houses more than two hundred paintings from the early Renaissance.",
    "ok",
    "Worst customer service I have ever experienced; I will not be ordering again!",
    "Heavy rain is expected across the north-west tonight, with flooding possible in low-lying areas.",
    "The defendant's lawyer argued that the evidence had been obtained without a valid warrant.",
    "Le film est trop long mais les acteurs sont excellents.",
    "Install the package, restart the kernel, and run the first cell again.",
)


def calibration_texts() -> list[str]:
    """The fixed calibration batch: short sentences, pairs of them, and long paragraphs (48 texts)."""
    n = len(_SENTENCES)
    pairs = [f"{_SENTENCES[i]} {_SENTENCES[(i + 5) % n]}" for i in range(n)]
    paragraphs = [" ".join(_SENTENCES[(i + k) % n] for k in range(12)) * 2 for i in range(n)]
    return [*_SENTENCES, *pairs, *paragraphs]


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - not installed
        return "none"


def machine_id() -> str:
    """A digest of what decides which path is fastest: CPU model, flags, cores, library versions."""
    model, flags = platform.processor(), ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    parts = [
        platform.machine(),
        model,
        flags,
        str(os.cpu_count()),
        *(f"{m}={_version(m)}" for m in ("torch", "onnxruntime", "openvino", "sentence-transformers")),
    ]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=8).hexdigest()


def cpu_candidates() -> list[tuple[str, str]]:
    """The ``(backend, dtype)`` paths worth measuring on this CPU, the reference first. Never int8."""
    import importlib.util

    bf16 = devices.cpu_supports_bf16()
    out = [REFERENCE]
    if bf16:
        out.append(("torch", "bfloat16"))
    exporter = importlib.util.find_spec("onnx") is not None  # both run the exported ONNX graph
    if exporter and importlib.util.find_spec("onnxruntime") is not None:
        out.append(("onnx", "float32"))
    if exporter and importlib.util.find_spec("openvino") is not None:
        out.append(("openvino", "float32"))
        if bf16:
            out.append(("openvino", "bfloat16"))
    return out


def choice_path(family: str, settings_digest: str) -> Path:
    """Where the choice for a model's settings (a hex digest) on this machine is remembered."""
    if not all(c in "0123456789abcdef" for c in settings_digest) or not settings_digest:
        raise ValueError(f"settings_digest must be hex digits, got {settings_digest!r}.")
    return skdeep_home() / "backend-choice" / f"{family}-{settings_digest[:32]}-{machine_id()}.json"


def read_choice(path: Path, candidates: list[tuple[str, str]]) -> dict | None:
    """The remembered choice at ``path``, or None when missing, unreadable or not among ``candidates``."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != CHOICE_FORMAT:
        return None
    chosen = (record.get("backend"), record.get("dtype"))
    return record if chosen in [tuple(c) for c in candidates] else None


def _write_choice(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` to the same row of ``b`` (zero rows count as 1 if both are zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-300)
    return np.where(both_zero, 1.0, cos)


def _embed_all(backend, batches) -> np.ndarray:
    return np.concatenate([np.asarray(backend.forward(batch), dtype=np.float32) for batch in batches])


def measure(
    candidates: list[tuple[str, str]],
    load: Callable[[str, str], object],
    items: list,
    *,
    batch_size: int = 32,
    repeats: int = REPEATS,
    tolerance: float = COSINE_TOLERANCE,
    size: Callable | None = len,
) -> tuple[dict, dict]:
    """Time every candidate on ``items`` and compare its vectors with the reference's.

    Parameters
    ----------
    candidates : list of (backend, dtype)
        The first is the reference (torch float32).
    load : callable
        ``load(backend, dtype)`` returns a loaded backend (``forward(batch)``); it may raise to say the
        candidate is unavailable here.
    items : list
        The calibration batch, as ``forward`` takes items (token id sequences for text).
    batch_size : int
    repeats : int
    tolerance : float
    size : callable or None
        Items are sorted by it, largest first, as the engine batches them.

    Returns
    -------
    record : dict
        ``backend`` and ``dtype`` chosen, and ``measurements``: one entry per candidate with
        ``seconds`` (median), ``items_per_second``, ``speedup``, ``cosine_min``, ``cosine_mean``,
        ``qualifies`` or an ``error``.
    backends : dict
        ``{(backend, dtype): loaded backend}`` of the candidates that loaded.
    """
    order = sorted(items, key=size, reverse=True) if size is not None else list(items)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    loaded, errors = {}, {}
    for cand in candidates:
        try:
            loaded[cand] = load(*cand)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot run here is just not chosen
            if cand == candidates[0]:
                raise
            errors[cand] = f"{type(exc).__name__}: {exc}"[:300]
    reference = _embed_all(loaded[candidates[0]], batches)
    cosines = {}
    for cand, backend in list(loaded.items()):
        try:
            out = _embed_all(backend, batches)  # also the warm-up
            if out.shape != reference.shape:
                raise ValueError(f"vectors of shape {out.shape}, expected {reference.shape}")
            cosines[cand] = cosine_rows(out, reference)
        except Exception as exc:  # noqa: BLE001
            if cand == candidates[0]:
                raise
            errors[cand] = f"{type(exc).__name__}: {exc}"[:300]
            del loaded[cand]
    times = {cand: [] for cand in loaded}
    for _ in range(max(1, repeats)):
        for cand, backend in loaded.items():
            start = time.perf_counter()
            _embed_all(backend, batches)
            times[cand].append(time.perf_counter() - start)
    ref_seconds = statistics.median(times[candidates[0]])
    measurements = []
    for cand in candidates:
        entry = {"backend": cand[0], "dtype": cand[1]}
        if cand in errors:
            entry["error"] = errors[cand]
        else:
            seconds = statistics.median(times[cand])
            cos = cosines[cand]
            entry.update(
                seconds=seconds,
                items_per_second=len(items) / seconds,
                speedup=ref_seconds / seconds,
                cosine_min=float(cos.min()),
                cosine_mean=float(cos.mean()),
                qualifies=bool(cos.min() >= tolerance),
                # The backend's own report (e.g. OpenVINO's precision): what really ran.
                ran_as=str(getattr(loaded[cand], "dtype", cand[1])),
            )
        measurements.append(entry)
    qualified = [m for m in measurements if m.get("qualifies")]
    best = min(qualified, key=lambda m: m["seconds"])  # the reference always qualifies
    record = {
        "format": CHOICE_FORMAT,
        "backend": best["backend"],
        "dtype": best["dtype"],
        "tolerance": tolerance,
        "items": len(items),
        "batch_size": batch_size,
        "repeats": repeats,
        "torch_threads": _torch_threads(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "measurements": measurements,
    }
    return record, loaded


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def choose(
    path: Path,
    candidates: list[tuple[str, str]],
    load: Callable[[str, str], object],
    items: Callable[[object], list],
    **options,
) -> tuple[dict, object]:
    """The remembered choice at ``path`` with its backend loaded, measuring (and remembering) it if needed.

    Parameters
    ----------
    path : Path
        From :func:`choice_path`.
    candidates, load
        As for :func:`measure`.
    items : callable
        ``items(reference_backend)`` returns the calibration batch (called only to measure).
    **options
        Passed to :func:`measure`.

    Returns
    -------
    record : dict
        What :func:`measure` returned (read back from disk when remembered), with ``remembered``
        True when nothing was measured.
    backend : object
        The chosen backend, loaded.
    """
    record = read_choice(path, candidates)
    if record is not None:
        try:
            return {**record, "remembered": True}, load(record["backend"], record["dtype"])
        except Exception:  # noqa: BLE001 - the remembered path no longer loads here: measure again
            pass
    reference = load(*candidates[0])

    def load_sharing_reference(backend, dtype):
        return reference if (backend, dtype) == tuple(candidates[0]) else load(backend, dtype)

    record, loaded = measure(candidates, load_sharing_reference, items(reference), **options)
    _write_choice(path, record)
    chosen = loaded[(record["backend"], record["dtype"])]
    loaded.clear()  # the other candidates' models are freed
    return {**record, "remembered": False}, chosen
