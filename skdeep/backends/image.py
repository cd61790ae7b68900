"""torchvision / timm backend for :class:`skdeep.ImageEncoder`.

Three parts, in the order an image meets them:

* :func:`build_model`: the architecture with its weights (strict loading; random init seeded), as
  the source's :class:`~skdeep.sources.ImageModelSpec` describes it.
* :class:`PooledFeatures`: the chosen layers (torchvision / timm FX feature extraction, or the
  backbone's last feature map), each pooled and concatenated.
* :class:`ImageBackend`: the engine's backend. ``prepare`` decodes and resizes one image (the
  engine runs it in threads ahead of the model); ``forward`` normalises a batch on the model's
  device and embeds it, with pinned memory and non-blocking copies on CUDA, ``channels_last`` and
  autocast. The preprocessing belongs to the weights (:class:`~skdeep.sources.Preprocessing`).
"""

from __future__ import annotations

import re
import sys

import numpy as np
import torch
from torch import nn

from ..devices import DTYPE_NAMES, autocast
from ..image_io import ImageInput, UnreadableImageError
from ..sources import ModelSource

#: "model": the model's own head up to its classifier (timm's ``forward_head(pre_logits=True)``, what
#: ``timm.create_model(name, num_classes=0)`` returns; torchvision: the model with its last Linear layer
#: removed). The others pool the chosen layers' feature maps or token sequences.
POOLING_MODES = ("model", "avg", "max", "gem", "cls")
#: Layer name of the model's own pre-logits features, in feature names ("pre_logits_0", ...).
PRE_LOGITS = "pre_logits"
GEM_P = 3.0
# Trailing top-level children that are not the backbone: heads, pooling, and auxiliary classifiers.
_HEAD_NAMES = {"fc", "classifier", "heads", "head", "dropout", "flatten", "aux1", "aux2", "AuxLogits"}
_POOL_TYPES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Linear)


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
        if (
            isinstance(state, dict)
            and isinstance(state.get(key), dict)
            and not any(isinstance(v, torch.Tensor) for v in state.values())
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
        f"The weights in {source.path!r} do not fit {source.spec.library}'s {source.spec.arch!r}: "
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

    from ..sources.image import torchvision_weights

    arch, kind = source.spec.arch, source.spec.weights_kind
    if kind is None:  # random init: the architecture's own defaults
        return torchvision.models.get_model(arch, weights=None)
    member = torchvision_weights(arch, source.spec.weights if kind == "named" else "DEFAULT")
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

    spec = source.spec
    arch = spec.arch
    cfg = timm.models.get_pretrained_cfg(spec.cfg_name)
    kwargs = {}
    if image_size is not None and cfg is not None and cfg.fixed_input_size and cfg.input_size[-1] != image_size:
        kwargs["dynamic_img_size"] = True  # ViT-style models interpolate their position embeddings
    state = None
    if source.path is not None:
        state = _load_state_dict(source.path)
        if spec.format == "efficientnet_pytorch":
            state = remap_efficientnet_pytorch(state)
        head = getattr(cfg, "classifier", None) or "classifier"
        head = head[0] if isinstance(head, (list, tuple)) else head
        if f"{head}.weight" in state:
            kwargs["num_classes"] = int(state[f"{head}.weight"].shape[0])
    try:
        model = timm.create_model(arch, pretrained=False, **{**spec.model_args, **kwargs})
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

    Random initialisation (``source.path is None``) is seeded with ``spec.random_state`` without
    touching the global torch RNG.
    """
    library = source.spec.library
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(source.spec.random_state or 0)
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


def _feature_body(model: nn.Module, library: str, layers: list[str] | None, arch: str, pooling: str = "avg"):
    """A module returning ``{layer name: tensor}`` and the names used in feature names."""
    if pooling == "model":
        if layers is not None:
            raise ValueError(
                f"pooling='model' runs {arch!r}'s own head on its last feature map, so it takes no layers "
                f"(got layers={layers!r}); to embed from chosen layers use pooling='avg', 'max', 'gem' or 'cls'."
            )
        return _PreLogits(model, library, arch), [PRE_LOGITS]
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


class _PreLogits(nn.Module):
    """The model's own pooling and head up to the classifier: what it would feed its last Linear layer."""

    def __init__(self, model: nn.Module, library: str, arch: str):
        super().__init__()
        self.timm = library == "timm"
        if not self.timm:
            name, _ = _last_linear(model)
            if name is None:
                raise ValueError(
                    f"pooling='model' removes the model's last Linear layer, but torchvision's {arch!r} has none; "
                    "use pooling='avg', 'max' or 'gem'."
                )
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
        self.model = model

    def forward(self, x):
        if self.timm:
            out = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        else:
            out = self.model(x)
        return {PRE_LOGITS: out.flatten(1)}


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
# the backend


class ImageBackend:
    """Embed images (:class:`~skdeep.image_io.ImageInput`) with a torchvision or timm model.

    Parameters
    ----------
    source : ModelSource
        From :func:`skdeep.sources.resolve_image_model`.
    device : torch.device
    precision : {"fp32", "fp16", "bf16"}
        Autocast precision, already resolved for the device (bf16 on CPUs that support it).
    layers : list of str or None
        Graph nodes / module names; None: the backbone's last feature map.
    pooling : {"model", "avg", "max", "gem", "cls"}
        Resolved (never "auto").
    image_size : int or None
        Side of the square crop; None keeps the weights' own.
    """

    #: Errors of one image that make that image fail alone (the engine reports it by position).
    item_errors = (UnreadableImageError,)
    name = "torch"

    def __init__(
        self, source: ModelSource, device: torch.device, precision: str, layers=None, pooling="avg", image_size=None
    ):
        self.source = source
        self.device = device
        self.precision = precision
        self.dtype = DTYPE_NAMES[precision]
        library, arch = source.spec.library, source.spec.arch
        native = source.spec.preprocess
        self.preprocess = native.with_image_size(image_size)
        if library == "torchvision" and arch.startswith(("vit_", "maxvit_")) and self.preprocess.crop != native.crop:
            # Checked before building: these models assert their input size in forward.
            size = native.crop[0]
            raise ValueError(f"torchvision's {arch!r} takes only {size}x{size} inputs; leave image_size=None.")
        model = build_model(source, image_size)
        body, names = _feature_body(model, library, list(layers) if layers is not None else None, arch, pooling)
        self.module = PooledFeatures(body, names, pooling, _prefix_tokens(model, library)).eval()
        self.module.to(device=device, memory_format=torch.channels_last)
        self._normalize = self.preprocess.normalizer(device)
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

    # ----------------------------------------------------------------- the engine's protocol
    def prepare(self, item: ImageInput) -> torch.Tensor:
        """Decode, resize and crop one image: uint8 (h, w, 3). Thread-safe (runs in the engine's threads)."""
        return self.preprocess.geometric(item.load(item.max_pixels))

    def forward(self, batch: list) -> np.ndarray:
        """Embed prepared images (a list of uint8 (h, w, 3) tensors of one size)."""
        return self.forward_uint8(torch.stack(batch))

    # ----------------------------------------------------------------- model only
    def forward_uint8(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a uint8 batch (N, h, w, 3) already resized and cropped."""
        if batch.device != self.device:
            if self.device.type == "cuda":
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=True)
        return self._forward(batch)

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), autocast(self.device, self.precision):
            x = self._normalize(x).contiguous(memory_format=torch.channels_last)
            return self.module(x).float().cpu().numpy()
