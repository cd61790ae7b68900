"""torchvision / timm backend for :class:`skdeep.ImageEncoder`.

Four parts, in the order an image meets them:

* :class:`Preprocessing`: the resize / crop / normalisation that belongs to the weights, read from
  their own transforms (torchvision's ``weights.transforms()``, timm's ``create_transform``). It is
  split in two: the geometric part (PIL, 8-bit) runs in decode threads; scaling to float and
  normalising run on the model's device, on whole batches.
* :func:`build_model`: the architecture with its weights (strict loading; random init seeded).
* :class:`PooledFeatures`: the chosen layers (torchvision / timm FX feature extraction, or the
  backbone's last feature map), each pooled and concatenated.
* :class:`ImageBackend`: decodes cache misses in a thread pool while the model runs on earlier
  batches, with pinned memory and non-blocking copies on CUDA, ``channels_last``, autocast and
  out-of-memory back-off.
"""

from __future__ import annotations

import math
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..devices import autocast, run_in_batches
from ..image_io import DEFAULT_MAX_PIXELS, ImageInput, UnreadableImageError
from ..sources import ModelSource

POOLING_MODES = ("avg", "max", "gem", "cls")
GEM_P = 3.0
# Trailing top-level children that are not the backbone: heads, pooling, and auxiliary classifiers.
_HEAD_NAMES = {"fc", "classifier", "heads", "head", "dropout", "flatten", "aux1", "aux2", "AuxLogits"}
_POOL_TYPES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Linear)


# ---------------------------------------------------------------------------------------------
# preprocessing


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
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def with_image_size(self, image_size: int | None) -> Preprocessing:
        """Square crop of ``image_size``, resizing in the same proportion as the weights' own."""
        if image_size is None:
            return self
        scale = image_size / self.crop[0]
        resize = tuple(max(image_size, int(math.floor(v * scale + 0.5))) for v in self.resize)
        return Preprocessing(resize, (image_size, image_size), self.interpolation, self.mean, self.std)

    def geometric(self, img) -> torch.Tensor:
        """Resize and crop an RGB PIL image; returns a contiguous uint8 tensor (h, w, 3).

        Pixels stay in PIL's interleaved layout: a batch of them stacks with plain copies, and its
        channels-first view is already in ``channels_last`` memory order.
        """
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        size = list(self.resize)
        img = F.resize(img, size, interpolation=InterpolationMode(self.interpolation), antialias=True)
        img = F.center_crop(img, list(self.crop))
        return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))

    def normalizer(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 (N, h, w, 3) on ``device`` -> normalised float32 (N, 3, h, w) in ``channels_last`` memory,
        as ``ToTensor`` + ``Normalize`` would compute it."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

        def normalize(x: torch.Tensor) -> torch.Tensor:
            return x.permute(0, 3, 1, 2).to(torch.float32).div_(255).sub_(mean).div_(std)

        return normalize


# ---------------------------------------------------------------------------------------------
# building models


def _load_state_dict(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints often nest the weights.
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and not any(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} does not hold a state dict (found {type(state).__name__}).")
    return {k.removeprefix("module."): v for k, v in state.items()}


def remap_efficientnet_pytorch(state: dict) -> dict:
    """Rename an ``efficientnet_pytorch`` EfficientNet-Lite0 state dict to timm's ``tf_efficientnet_lite0``."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    stage_sizes = [1, 2, 2, 3, 3, 4, 1]
    flat_to_stage = [(s, i) for s, n in enumerate(stage_sizes) for i in range(n)]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index = flat_to_stage[int(parts[1])]
            names = first if int(parts[1]) == 0 else other
            out[".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


def _load_strict(model: nn.Module, state: dict, source: ModelSource, convert=None) -> None:
    try:
        model.load_state_dict(state, strict=True)
        return
    except RuntimeError as exc:
        first = exc
    if convert is not None:  # original-format checkpoints: the model's own converter
        try:
            model.load_state_dict(convert(state, model), strict=True)
            return
        except Exception:  # noqa: BLE001 - report the plain mismatch below
            pass
    detail = str(first).split("\n\t")
    raise ValueError(
        f"The weights in {source.path!r} do not fit {source.extra['library']}'s {source.extra['arch']!r}: "
        f"{' '.join(detail[:3])[:600]}"
    ) from first


def _torchvision_builder_kwargs(arch: str, member) -> dict:
    """Arguments torchvision's builders set from the weights' metadata (mirrors their ``_ovewrite_named_param``)."""
    kwargs = {"num_classes": len(member.meta["categories"])}
    if arch.startswith("vit_"):
        kwargs["image_size"] = member.meta["min_size"][0]
    elif arch == "maxvit_t":
        kwargs["input_size"] = member.meta["min_size"]
    elif arch in ("googlenet", "inception_v3"):
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    return kwargs


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear] | tuple[None, None]:
    found = (None, None)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    return found


def _build_torchvision(source: ModelSource) -> nn.Module:
    import torchvision

    from ..image_sources import torchvision_weights

    arch, kind = source.extra["arch"], source.extra["weights_kind"]
    if kind is None:  # random init: the architecture's own defaults
        return torchvision.models.get_model(arch, weights=None)
    member = torchvision_weights(arch, source.extra["weights"] if kind == "named" else "DEFAULT")
    kwargs = _torchvision_builder_kwargs(arch, member)
    state = _load_state_dict(source.path)
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    head_name, head = _last_linear(model)
    head_weight = state.get(f"{head_name}.weight") if head_name else None
    if kind == "file" and head_weight is not None and head_weight.shape[0] != head.out_features:
        # A fine-tuned checkpoint: rebuild with its number of classes.
        model = torchvision.models.get_model(arch, weights=None, **{**kwargs, "num_classes": int(head_weight.shape[0])})
    _load_strict(model, state, source)
    if arch in ("googlenet", "inception_v3"):
        # As torchvision's builders do after loading: auxiliary classifiers only matter in training.
        model.aux_logits = False
        if arch == "googlenet":
            model.aux1 = model.aux2 = None
        else:
            model.AuxLogits = None
    return model


def _build_timm(source: ModelSource, image_size: int | None) -> nn.Module:
    import timm

    arch, extra = source.extra["arch"], source.extra
    cfg = timm.models.get_pretrained_cfg(extra["cfg_name"])
    kwargs = {}
    if image_size is not None and cfg is not None and cfg.fixed_input_size and cfg.input_size[-1] != image_size:
        kwargs["dynamic_img_size"] = True  # ViT-style models interpolate their position embeddings
    state = None
    if source.path is not None:
        state = _load_state_dict(source.path)
        if extra["format"] == "efficientnet_pytorch":
            state = remap_efficientnet_pytorch(state)
        head = getattr(cfg, "classifier", None) or "classifier"
        head = head[0] if isinstance(head, (list, tuple)) else head
        if f"{head}.weight" in state:
            kwargs["num_classes"] = int(state[f"{head}.weight"].shape[0])
    try:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    except TypeError as exc:
        if "dynamic_img_size" not in kwargs:
            raise
        raise ValueError(
            f"{arch!r} takes only {cfg.input_size[-1]}x{cfg.input_size[-1]} inputs; leave image_size=None."
        ) from exc
    if state is not None:
        _load_strict(model, state, source, getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None))
    return model


def build_model(source: ModelSource, image_size: int | None = None) -> nn.Module:
    """The architecture with its weights, on the CPU, in eval mode, classifier head still attached.

    Random initialisation (``source.path is None``) is seeded with ``extra["random_state"]`` without
    touching the global torch RNG.
    """
    library = source.extra["library"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(source.extra.get("random_state") or 0)
        if library == "torchvision":
            model = _build_torchvision(source)
        else:
            model = _build_timm(source, image_size)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# layers and pooling


def torchvision_default_node(model: nn.Module) -> str:
    """The backbone's last feature map: the last top-level child before global pooling and the head."""
    children = list(model.named_children())
    while children and (children[-1][0] in _HEAD_NAMES or isinstance(children[-1][1], _POOL_TYPES)):
        children.pop()
    return children[-1][0]


def graph_node_names(model: nn.Module, library: str) -> list[str]:
    if library == "timm":
        from timm.models import get_graph_node_names
    else:
        from torchvision.models.feature_extraction import get_graph_node_names
    return list(get_graph_node_names(model)[1])


def _check_layers(model: nn.Module, library: str, layers: list[str], arch: str) -> None:
    nodes = graph_node_names(model, library)
    missing = [q for q in layers if not any(re.match(rf"^{re.escape(q)}(\.|$)", n) for n in nodes)]
    if missing:
        modules = [n for n, _ in model.named_modules() if n and n.count(".") <= 1]
        raise ValueError(
            f"Unknown layer(s) {missing} for {arch!r}. Layers are graph nodes or module names; valid names include "
            f"{modules[:40]}{' ...' if len(modules) > 40 else ''} (all names: skdeep.image.list_layers({arch!r}))."
        )


def _feature_body(model: nn.Module, library: str, layers: list[str] | None, arch: str):
    """A module returning ``{layer name: tensor}`` and the names used in feature names."""
    if layers is None:
        if library == "timm":
            return _TimmFeatures(model), ["features"]
        node = torchvision_default_node(model)
        layers = [node]
    _check_layers(model, library, layers, arch)
    if library == "timm":
        from timm.models import create_feature_extractor
    else:
        from torchvision.models.feature_extraction import create_feature_extractor
    return create_feature_extractor(model, return_nodes={q: q for q in layers}), list(layers)


class _TimmFeatures(nn.Module):
    """timm's ``forward_features``: the unpooled last feature map (channels first) or token sequence."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.channels_last_output = getattr(model, "output_fmt", "NCHW") == "NHWC"

    def forward(self, x):
        out = self.model.forward_features(x)
        if self.channels_last_output and out.ndim == 4:
            out = out.permute(0, 3, 1, 2)
        return {"features": out}


def _pool(t: torch.Tensor, mode: str, prefix_tokens: int) -> torch.Tensor:
    t = t.float()  # pool in fp32: GeM's cube overflows in fp16
    if t.ndim == 2:
        return t
    if t.ndim == 3:  # (N, tokens, dim)
        if mode == "cls":
            return t[:, 0]
        patches = t[:, prefix_tokens:] if t.shape[1] > prefix_tokens else t
        return patches.mean(1) if mode == "avg" else patches.amax(1)
    if mode == "avg":
        return t.mean((2, 3))
    if mode == "max":
        return t.amax((2, 3))
    return t.clamp(min=1e-6).pow(GEM_P).mean((2, 3)).pow(1.0 / GEM_P)


class PooledFeatures(nn.Module):
    """Chosen layers of a model, each pooled to a vector, concatenated in the order given."""

    def __init__(self, body: nn.Module, names: list[str], pooling: str, prefix_tokens: int):
        super().__init__()
        self.body = body
        self.names = names
        self.pooling = pooling
        self.prefix_tokens = prefix_tokens

    def forward(self, x):
        outs = self.body(x)
        return torch.cat([_pool(outs[n], self.pooling, self.prefix_tokens) for n in self.names], dim=1)


def _prefix_tokens(model: nn.Module, library: str) -> int:
    if library == "timm":
        return int(getattr(model, "num_prefix_tokens", 0) or 0)
    from torchvision.models import VisionTransformer

    return 1 if isinstance(model, VisionTransformer) else 0


def _check_output_ranks(shapes: dict, pooling: str, arch: str) -> None:
    for name, shape in shapes.items():
        rank = len(shape)
        if rank not in (2, 3, 4):
            raise ValueError(
                f"Layer {name!r} of {arch!r} outputs shape {tuple(shape)}; only 2-D to 4-D outputs can be pooled."
            )
        if pooling == "cls" and rank == 4:
            raise ValueError(
                f"pooling='cls' takes the class token of a transformer's token sequence, but layer {name!r} of "
                f"{arch!r} outputs a feature map of shape {tuple(shape[1:])}; use 'avg', 'max' or 'gem'."
            )
        if pooling == "gem" and rank == 3:
            raise ValueError(
                f"pooling='gem' needs a non-negative feature map, but layer {name!r} of {arch!r} outputs a token "
                "sequence; use 'avg', 'max' or 'cls'."
            )


# ---------------------------------------------------------------------------------------------
# the decode pipeline


def decode_stream(items: list, decode: Callable, num_workers: int, lookahead: int) -> Iterator:
    """``decode(item)`` for each item, in order, computed up to ``lookahead`` items ahead by a thread pool.

    PIL releases the GIL while decoding and resizing, so threads overlap with each other and with the
    model, without process start-up, pickling, or the limits of daemonic worker processes.
    """
    if num_workers <= 0:
        for item in items:
            yield decode(item)
        return
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="skdeep-decode") as pool:
        pending = deque()
        source = iter(items)
        for item in source:
            pending.append(pool.submit(decode, item))
            if len(pending) >= lookahead:
                break
        try:
            while pending:
                result = pending.popleft().result()
                nxt = next(source, None)
                if nxt is not None:
                    pending.append(pool.submit(decode, nxt))
                yield result
        finally:
            for fut in pending:
                fut.cancel()


class ImageBackend:
    """Embed batches of :class:`~skdeep.image_io.ImageInput` with a torchvision or timm model.

    Parameters
    ----------
    source : ModelSource
        From :func:`skdeep.image_sources.resolve_image_model`.
    device : torch.device
    precision : {"fp32", "fp16", "bf16"}
    layers : list of str or None
        Graph nodes / module names; None: the backbone's last feature map.
    pooling : {"avg", "max", "gem", "cls"}
    image_size : int or None
        Side of the square crop; None keeps the weights' own.
    """

    def __init__(self, source: ModelSource, device: torch.device, precision: str, layers=None, pooling="avg",
                 image_size=None):
        self.source = source
        self.device = device
        self.precision = precision
        library, arch = source.extra["library"], source.extra["arch"]
        native = Preprocessing.from_dict(source.extra["preprocess"])
        self.preprocess = native.with_image_size(image_size)
        if library == "torchvision" and arch.startswith(("vit_", "maxvit_")) and self.preprocess.crop != native.crop:
            # Checked before building: these models assert their input size in forward.
            size = native.crop[0]
            raise ValueError(f"torchvision's {arch!r} takes only {size}x{size} inputs; leave image_size=None.")
        model = build_model(source, image_size)
        body, names = _feature_body(model, library, list(layers) if layers is not None else None, arch)
        self.module = PooledFeatures(body, names, pooling, _prefix_tokens(model, library)).eval()
        self.module.to(device=device, memory_format=torch.channels_last)
        self._normalize = self.preprocess.normalizer(device)
        self._max_batch = 1 << 30
        self._lock = threading.Lock()
        self.layer_shapes = self._probe(names, pooling, arch)
        self.feature_names = []
        for name, shape in self.layer_shapes.items():
            tag = f"{name}_{pooling}" if len(shape) > 2 else f"{name}_"
            width = shape[2] if len(shape) == 3 else shape[1]
            self.feature_names.extend(f"{tag}{i}" for i in range(width))
        self.dim = len(self.feature_names)

    def _probe(self, names, pooling, arch) -> dict:
        """Run one blank image through the layers: output shapes, and early errors for bad settings."""
        h, w = self.preprocess.crop
        x = torch.zeros(1, 3, h, w, device=self.device).contiguous(memory_format=torch.channels_last)
        try:
            with torch.inference_mode():
                outs = self.module.body(x)
        except RuntimeError as exc:
            raise ValueError(f"{arch!r} cannot embed {h}x{w} images ({exc}); use a larger image_size.") from exc
        shapes = {n: tuple(outs[n].shape) for n in names}
        _check_output_ranks(shapes, pooling, arch)
        return shapes

    # ----------------------------------------------------------------- model only
    def forward_uint8(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a uint8 batch (N, h, w, 3) already resized and cropped; OOM halves the batch."""
        if batch.device != self.device:
            if self.device.type == "cuda":
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=True)
        parts = run_in_batches(self._forward, batch, min(len(batch), self._max_batch))
        largest = max(len(p) for p in parts)
        if largest < len(batch):
            self._max_batch = min(self._max_batch, largest)  # memory pressure persists: keep the smaller size
        return np.concatenate(parts, axis=0)

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), autocast(self.device, self.precision):
            x = self._normalize(x).contiguous(memory_format=torch.channels_last)
            return self.module(x).float().cpu().numpy()

    # ----------------------------------------------------------------- end to end
    def encode(
        self,
        items: list[ImageInput],
        *,
        batch_size: int,
        num_workers: int,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        skip_unreadable: bool = False,
        on_batch_done: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, list[tuple[int, UnreadableImageError]]]:
        """Decode, preprocess and embed ``items``.

        Returns
        -------
        vectors : ndarray (len(items), dim), float32
            Rows of unreadable images are zero (only when ``skip_unreadable``).
        failures : list of (index into items, error)
        """
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        failures: list[tuple[int, UnreadableImageError]] = []
        preprocess = self.preprocess

        def decode(indexed):
            index, item = indexed
            try:
                return index, preprocess.geometric(item.load(max_pixels)), None
            except UnreadableImageError as exc:
                if not skip_unreadable:
                    raise
                return index, None, exc

        def flush(indices, tensors):
            out[indices] = self.forward_uint8(torch.stack(tensors))
            if on_batch_done is not None:
                on_batch_done(len(indices))

        indices, tensors = [], []
        stream = decode_stream(list(enumerate(items)), decode, num_workers, lookahead=2 * batch_size)
        for index, tensor, error in stream:
            if error is not None:
                failures.append((index, error))
                if on_batch_done is not None:
                    on_batch_done(1)
                continue
            indices.append(index)
            tensors.append(tensor)
            if len(tensors) == batch_size:
                flush(indices, tensors)
                indices, tensors = [], []
        if tensors:
            flush(indices, tensors)
        return out, failures
