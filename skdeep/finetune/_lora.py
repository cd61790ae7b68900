"""LoRA adapters (``peft``) that stay adapters: trained, pickled and shipped apart from the base weights.

An adapter is a small dict: ``{"format": 1, "config": {...}, "weights": <safetensors bytes>}``; the
config holds plain values only (rank, alpha, dropout, target module names), so it survives pickle,
skops and JSON. The fine-tuners pickle the adapter and a reference to the base model, never the
merged weights; served weights are rebuilt by :func:`merge_and_unwrap` (base + adapter, merged
bit for bit the same at fit and at load time, on any CPU) and checked against the fingerprint recorded at fit.

Vision models get adapters on every ``nn.Linear`` and non-grouped ``nn.Conv2d`` of the backbone
(peft supports both); sentence-transformers models on every linear layer (``"all-linear"``).
"""

from __future__ import annotations

import json

from ._weights import bytes_to_tensors, tensors_to_bytes

ADAPTER_FORMAT = 1
ADAPTER_NAME = "default"
_CONFIG_KEYS = {"r", "lora_alpha", "lora_dropout", "target_modules"}


def is_lora_param(name: str) -> bool:
    """Whether a parameter name belongs to a LoRA adapter (``...lora_A.default.weight``)."""
    return ".lora_" in name or name.startswith("lora_")


def text_config(rank: int) -> dict:
    return {"r": int(rank), "lora_alpha": 2 * int(rank), "lora_dropout": 0.1, "target_modules": "all-linear"}


def vision_config(model, rank: int, exclude=()) -> dict:
    """Adapters on every linear and non-grouped 2-D convolution outside ``exclude`` (the head)."""
    import torch

    names = [
        name
        for name, module in model.named_modules()
        if name
        and name.split(".")[0] not in exclude
        and (isinstance(module, torch.nn.Linear) or (isinstance(module, torch.nn.Conv2d) and module.groups == 1))
    ]
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear or convolution layer to put LoRA adapters on.")
    return {"r": int(rank), "lora_alpha": 2 * int(rank), "lora_dropout": 0.0, "target_modules": names}


def inject(model, config: dict):
    """Insert LoRA layers into ``model`` in place; only the adapter weights will need gradients."""
    from peft import LoraConfig, inject_adapter_in_model

    return inject_adapter_in_model(LoraConfig(**config), model, adapter_name=ADAPTER_NAME)


def extract(model, config: dict) -> dict:
    """The trained adapter of ``model`` (after :func:`inject`) as a plain dict."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    return {"format": ADAPTER_FORMAT, "config": dict(config), "weights": tensors_to_bytes(state)}


def check_adapter(adapter) -> dict:
    """``adapter`` if well formed (it may come from a loaded file), else ``ValueError``."""
    ok = (
        isinstance(adapter, dict)
        and adapter.get("format") == ADAPTER_FORMAT
        and isinstance(adapter.get("weights"), (bytes, bytearray))
        and isinstance(adapter.get("config"), dict)
        and set(adapter["config"]) == _CONFIG_KEYS
    )
    if ok:
        config = adapter["config"]
        targets = config["target_modules"]
        ok = (
            type(config["r"]) is int
            and 0 < config["r"] <= 4096
            and isinstance(config["lora_alpha"], (int, float))
            and isinstance(config["lora_dropout"], (int, float))
            and (targets == "all-linear" or (isinstance(targets, list) and all(isinstance(t, str) for t in targets)))
        )
    if not ok:
        raise ValueError(f"Not a skdeep LoRA adapter: {str(adapter)[:200]}")
    return adapter


def load_into(model, adapter: dict):
    """Insert the adapter's layers into ``model`` and load its weights (every key must fit)."""
    from peft import set_peft_model_state_dict

    check_adapter(adapter)
    model = inject(model, adapter["config"])
    result = set_peft_model_state_dict(model, bytes_to_tensors(adapter["weights"]), adapter_name=ADAPTER_NAME)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"The LoRA adapter does not fit this model: unexpected weights {unexpected[:5]}.")
    return model


def _merge_exactly(layer) -> None:
    """Add ``scaling * B @ A`` to the base weight, the same bits on any CPU and thread count.

    peft's ``merge`` runs a matrix product, whose last bits depend on the BLAS kernel and the
    threads; the merged weights are fingerprinted at fit and checked at load, possibly on another
    machine. Here the rank-r product is a sum of r outer products in float64 (elementwise
    operations, correctly rounded, summed in a fixed order), rounded once to the weight's dtype.
    """
    import torch

    base = layer.get_base_layer()
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if getattr(layer, "use_dora", {}).get(adapter, False) or getattr(layer, "fan_in_fan_out", False):
            raise ValueError("skdeep's LoRA adapters are plain LoRA on nn.Linear / nn.Conv2d weights.")
        a = layer.lora_A[adapter].weight.detach().to("cpu", torch.float64)  # (r, in, *kernel)
        b = layer.lora_B[adapter].weight.detach().to("cpu", torch.float64)  # (out, r, *ones)
        weight = base.weight.detach()
        b = b.reshape(b.shape[0], b.shape[1])
        delta = torch.zeros(weight.shape, dtype=torch.float64)
        ones = (1,) * (weight.dim() - 1)
        for k in range(a.shape[0]):
            delta += b[:, k].reshape(-1, *ones) * a[k].unsqueeze(0)
        merged = weight.to("cpu", torch.float64) + float(layer.scaling[adapter]) * delta
        with torch.no_grad():
            base.weight.copy_(merged.to(weight.dtype))


def merge_and_unwrap(model):
    """Write every LoRA layer's adapter into its base layer and put the base layer back, in place."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            _merge_exactly(module)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def write_peft_folder(adapter: dict, target, base: str) -> None:
    """Write ``adapter`` as a peft adapter folder (``adapter_config.json``, ``adapter_model.safetensors``)."""
    from pathlib import Path

    from peft import LoraConfig

    check_adapter(adapter)
    target = Path(target)
    target.mkdir(parents=True)
    config = LoraConfig(**adapter["config"])
    config.base_model_name_or_path = base
    config.save_pretrained(str(target))
    # peft names adapter weights from its PeftModel wrapper: ``base_model.model.<module>.lora_A.weight``.
    weights = {f"base_model.model.{k}": v for k, v in bytes_to_tensors(adapter["weights"]).items()}
    (target / "adapter_model.safetensors").write_bytes(tensors_to_bytes(weights))


def adapter_nbytes(adapter: dict) -> int:
    """Bytes an adapter takes in a pickle (weights and config)."""
    return len(adapter["weights"]) + len(json.dumps(adapter["config"]))
