"""Tuned weights: deterministic bytes, differences from the base model, and registration as a model.

Tuned image weights are written as one safetensors file (its bytes depend only on the tensors, so
the same training gives the same fingerprint) and installed like any weight bundle
(:func:`skdeep.sources.bundle_state` / :func:`skdeep.sources.restore_bundle`: checked, unpacked
once per fingerprint under ``$SKDEEP_HOME/bundles``), where an :class:`~skdeep.ImageEncoder` whose
``weights`` is ``"finetuned:<fingerprint>"`` finds them.

A pickle carries them as one of:

* ``{"kind": "delta", "tensors": <safetensors bytes>}``: only the tensors that changed from the
  base model, when that is smaller than the whole file (gradual unfreezing leaves most of a
  backbone untouched); the base model is found as usual (by name, fingerprint checked);
* ``{"kind": "full"}``: the whole file, in a standard bundle;
* ``{"kind": "lora", "adapter": {...}}``: a LoRA adapter (:mod:`skdeep.finetune._lora`).

Whatever the kind, the rebuilt file must have the fingerprint recorded at fit, or loading fails.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from ..sources import FingerprintMismatchError, ModelSource, bundle_state, fingerprint_path, restore_bundle

TUNED_PREFIX = "finetuned:"
TUNED_FILE = "tuned.safetensors"
PAYLOAD_KINDS = ("delta", "full", "lora")


def tensors_to_bytes(state: dict) -> bytes:
    """A state dict as safetensors bytes (CPU, contiguous, unshared copies; deterministic)."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()})


def bytes_to_tensors(data) -> dict:
    """Tensors from safetensors bytes (no pickle involved)."""
    from safetensors.torch import load

    if not isinstance(data, (bytes, bytearray)):
        raise ValueError("Tuned weights must be safetensors bytes.")
    return load(bytes(data))


def changed_tensors(tuned: dict, base: dict) -> dict:
    """The tensors of ``tuned`` that differ from ``base`` (keys and shapes must match)."""
    import torch

    if set(tuned) != set(base):
        raise ValueError("The tuned and base state dicts have different keys.")
    return {k: v for k, v in tuned.items() if v.shape != base[k].shape or not torch.equal(v.cpu(), base[k].cpu())}


def apply_delta(base: dict, delta: dict) -> dict:
    """``base`` with the tensors of ``delta`` in place of its own (same names, shapes and dtypes)."""
    unknown = [k for k in delta if k not in base]
    if unknown:
        raise ValueError(f"The tuned weights name tensors the base model lacks: {unknown[:5]}.")
    bad = [k for k, v in delta.items() if v.shape != base[k].shape or v.dtype != base[k].dtype]
    if bad:
        raise ValueError(f"The tuned weights do not fit the base model (shape or dtype of {bad[:5]}).")
    return {**base, **delta}


def cpu_state(model) -> dict:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def publish_image_weights(data: bytes, base: ModelSource, model_name: str, expected: str | None = None):
    """Install tuned image weights (safetensors bytes) and register them for ``ImageEncoder``.

    Parameters
    ----------
    data : bytes
        The tuned model's state dict, from :func:`tensors_to_bytes`.
    base : ModelSource
        The model training started from (its spec says how to build and preprocess).
    model_name : str
        The ``model`` of the encoders that will use the weights.
    expected : str, optional
        The fingerprint the weights must have (when rebuilt from a pickle).

    Returns
    -------
    (weights name, ModelSource)
        ``weights`` is ``"finetuned:<fingerprint>"``; ``ImageEncoder(model_name, weights=...)``
        finds the installed file in this process (and clones of it too).
    """
    tmp = Path(tempfile.mkdtemp(prefix="skdeep-finetuned-"))
    try:
        path = tmp / TUNED_FILE
        path.write_bytes(data)
        fingerprint = fingerprint_path(path)
        if expected is not None and fingerprint != expected:
            raise FingerprintMismatchError(
                f"The tuned weights rebuilt from the base model {model_name!r} have fingerprint {fingerprint}, "
                f"but the fitted model had {expected}: the base weights differ from the ones training started "
                "from. Restore them, or re-fit."
            )
        weights = f"{TUNED_PREFIX}{fingerprint}"
        spec = dataclasses.replace(base.spec, weights=weights, weights_kind="file", format=base.spec.library)
        source = ModelSource(weights, "finetuned", str(path), fingerprint, spec)
        identity = ("ImageEncoder", model_name, weights, None)
        installed = restore_bundle(bundle_state(source), identity)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return weights, installed
