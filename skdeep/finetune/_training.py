"""Training machinery shared by the fine-tuners: layer groups, unfreezing, optimiser, early stopping, history.

Transfer learning's recipe (Howard & Ruder, 2018; Yosinski et al., 2014) in small pieces:

* :func:`layer_groups` splits a backbone into stages, bottom (stem) to top, the unit of unfreezing.
* :func:`unfrozen_groups` says how many stages from the top train in a given epoch (``unfreeze``).
* :func:`set_trainable` freezes the rest *and keeps it in eval mode*: a frozen batch-norm layer must
  not update its running statistics from the fine-tuning batches, nor a frozen dropout drop.
* :func:`make_optimizer`: AdamW with discriminative learning rates (each stage lower than the one
  above it) and no weight decay on biases and normalisation weights; :func:`lr_factor` is the
  warm-up + cosine schedule.
* :class:`EarlyStopping` and :class:`History` keep the best epoch's weights and a per-epoch record.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

UNFREEZE_MODES = ("gradual", "all", "none")
TRAIN_DTYPES = ("auto", "float32", "bfloat16", "float16")

#: A backbone split into fewer stages than this is split further (its largest stage into its children).
MIN_GROUPS = 4


# ---------------------------------------------------------------------------------------------
# layer groups


@dataclass
class LayerGroup:
    """One stage of a backbone: modules trained (or frozen) together, plus loose parameters.

    Attributes
    ----------
    names : list of str
        Qualified module names, for messages and tests.
    modules : list of torch.nn.Module
    extra : list of (str, torch.nn.Parameter)
        Parameters that belong to no child module (a ViT's class token and position embedding).
    """

    names: list = field(default_factory=list)
    modules: list = field(default_factory=list)
    extra: list = field(default_factory=list)

    def named_parameters(self):
        for name, module in zip(self.names, self.modules):
            for sub, p in module.named_parameters():
                yield f"{name}.{sub}", p
        yield from self.extra


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_leaf(module) -> bool:
    return not any(_n_params(c) for c in module.children())


def _children(prefix: str, module, exclude=()) -> list[tuple[str, object]]:
    return [
        (f"{prefix}{name}", child)
        for name, child in module.named_children()
        if name not in exclude and _n_params(child) > 0
    ]


def _merge_leaves(groups: list[LayerGroup]) -> list[LayerGroup]:
    """Adjacent single-layer groups (a stem's conv and norm) become one stage."""
    out: list[LayerGroup] = []
    for g in groups:
        single_leaf = len(g.modules) >= 1 and all(_is_leaf(m) for m in g.modules)
        if out and single_leaf and all(_is_leaf(m) for m in out[-1].modules):
            out[-1].names += g.names
            out[-1].modules += g.modules
            out[-1].extra += g.extra
        else:
            out.append(g)
    return out


def layer_groups(model, exclude=(), min_groups: int = MIN_GROUPS) -> list[LayerGroup]:
    """Split ``model`` into stages, bottom to top, for gradual unfreezing and per-stage learning rates.

    The model's top-level children that hold weights, less ``exclude`` (its classifier head), are
    the first cut; adjacent single layers (a stem's convolution and norm) merge into one stage;
    while there are fewer than ``min_groups`` stages, the largest one that has several children is
    replaced by its children (``blocks`` of a timm EfficientNet or ViT become its stages or
    transformer blocks, torchvision's ``features`` its stages). Loose parameters (class token,
    position embedding) join the stage before them, or the first.

    Parameters
    ----------
    model : torch.nn.Module
    exclude : collection of str
        Names of top-level children to leave out (never trained: the classifier head).
    min_groups : int, default=4

    Returns
    -------
    list of LayerGroup
        Bottom (input side) first.
    """
    groups = [LayerGroup([n], [m]) for n, m in _children("", model, set(exclude))]
    loose = list(model.named_parameters(recurse=False))
    groups = _merge_leaves(groups)
    while len(groups) < min_groups:
        expandable = [
            (i, _n_params(g.modules[0]))
            for i, g in enumerate(groups)
            if len(g.modules) == 1 and len(_children("", g.modules[0])) >= 2
        ]
        if not expandable:
            break
        i = max(expandable, key=lambda pair: pair[1])[0]
        g = groups[i]
        parent_name, parent = g.names[0], g.modules[0]
        new = [LayerGroup([n], [m]) for n, m in _children(f"{parent_name}.", parent)]
        direct = [(f"{parent_name}.{n}", p) for n, p in parent.named_parameters(recurse=False)]
        if direct:
            (groups[i - 1] if i > 0 else new[0]).extra.extend(direct)
        new[0].extra = g.extra + new[0].extra
        groups[i : i + 1] = new
        groups = _merge_leaves(groups)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable layers outside its head.")
    if loose:
        groups[0].extra = [(n, p) for n, p in loose] + groups[0].extra
    return groups


# ---------------------------------------------------------------------------------------------
# unfreezing


def unfrozen_groups(unfreeze: str, epoch: int, n_groups: int, head_epochs: int, stage_epochs: int) -> int:
    """Stages trained in ``epoch`` (0-based), counted from the top.

    ``"none"``: 0 (the head alone). ``"all"``: every stage from the first epoch. ``"gradual"``: the
    head alone for ``head_epochs`` epochs, then one more stage every ``stage_epochs`` epochs.
    """
    if unfreeze == "none":
        return 0
    if unfreeze == "all":
        return n_groups
    if epoch < head_epochs:
        return 0
    return min(n_groups, 1 + (epoch - head_epochs) // stage_epochs)


def set_trainable(model, groups: list[LayerGroup], n_unfrozen: int, *, only=None, bn_stats: bool = True) -> None:
    """Let the top ``n_unfrozen`` stages train; freeze everything else and keep it in eval mode.

    Frozen stages are put in eval mode so that their batch-norm layers keep their running
    statistics (and their dropout is off): a frozen layer computes exactly what it computed
    before fine-tuning. ``only`` (a predicate on parameter names) restricts training within the
    unfrozen stages (LoRA: the adapter weights only). ``bn_stats=False`` keeps every batch-norm
    layer in eval mode, trained stages included: their scale and shift learn, their running
    statistics stay the pretrained ones.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for g in groups[len(groups) - n_unfrozen :] if n_unfrozen else []:
        for module in g.modules:
            module.train()
        for name, p in g.named_parameters():
            if only is None or only(name):
                p.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.training:
            params = list(module.parameters(recurse=False))
            # Inside trained stages too, a batch norm whose weights stay frozen (LoRA trains adapters
            # only) keeps its statistics.
            if not bn_stats or (params and not any(p.requires_grad for p in params)):
                module.eval()


# ---------------------------------------------------------------------------------------------
# optimiser and schedule


def make_optimizer(groups: list[LayerGroup], head_params: list, *, learning_rate, lr_decay, weight_decay, only=None):
    """AdamW with discriminative learning rates: the head at ``learning_rate``, stage k from the top
    (k = 1 for the top stage) at ``learning_rate * lr_decay**k``. Biases and normalisation weights
    (1-D tensors) get no weight decay. Frozen parameters may be included: AdamW skips parameters
    without gradients, so one optimiser serves every stage of a gradual schedule."""
    import torch

    param_groups = []

    def add(params, lr):
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for ps, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if ps:
                param_groups.append({"params": ps, "lr": lr, "weight_decay": wd, "base_lr": lr})

    add(list(head_params), learning_rate)
    for k, g in enumerate(reversed(groups), start=1):
        add([p for n, p in g.named_parameters() if only is None or only(n)], learning_rate * lr_decay**k)
    return torch.optim.AdamW(param_groups)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


# ---------------------------------------------------------------------------------------------
# precision


def resolve_train_precision(dtype: str, device) -> str:
    """The autocast precision to train in (``"fp32"``, ``"bf16"``, ``"fp16"``) for the ``dtype`` parameter.

    ``"auto"`` is bf16 on CUDA (fp16 where bf16 is missing), fp32 elsewhere. On CPUs bf16
    autocast is used only when asked for (``dtype="bfloat16"``) and supported
    (:func:`skdeep.devices.cpu_supports_bf16`): measured on an AVX-512 (bf16) CPU, training
    EfficientNet-Lite0 was about 15% slower under bf16 autocast than in fp32 (depthwise
    convolutions gain nothing), so it is not the default there.
    """
    import torch

    from ..devices import DTYPE_SHORT_NAMES, cpu_supports_bf16

    if dtype == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    precision = DTYPE_SHORT_NAMES[dtype]
    if device.type == "cpu" and precision == "fp16":
        raise ValueError("dtype='float16' needs a GPU; on the CPU use 'bfloat16' (where supported) or 'float32'.")
    if device.type == "cpu" and precision == "bf16" and not cpu_supports_bf16():
        warnings.warn(
            "dtype='bfloat16': this CPU has no native bfloat16 support; training in float32.",
            RuntimeWarning,
            stacklevel=3,
        )
        return "fp32"
    return precision


def train_autocast(device, precision: str):
    """Autocast context for training in ``precision`` (from :func:`resolve_train_precision`)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# validation split, early stopping, history


def validation_split(codes: np.ndarray, fraction: float, rng, *, enabled: bool, what: str, min_per_class: int = 3):
    """Training and held-out indices, stratified on ``codes`` (the first task's labels).

    Returns all indices for training and none held out when ``enabled`` is False, or (with a
    warning) when the smallest class has fewer than ``min_per_class`` samples.
    """
    from sklearn.model_selection import StratifiedShuffleSplit

    everything = np.arange(len(codes))
    if not enabled:
        return everything, everything[:0]
    n_classes = int(codes.max()) + 1
    n_val = max(n_classes, int(round(fraction * len(codes))))
    counts = np.bincount(codes)
    if counts.min() < min_per_class or len(codes) - n_val < 2 * n_classes:
        warnings.warn(
            f"early_stopping needs at least {min_per_class} {what} per class (the smallest class has "
            f"{counts.min()}); training on all {what} without early stopping.",
            UserWarning,
            stacklevel=3,
        )
        return everything, everything[:0]
    split = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=rng.randint(2**31 - 1))
    return next(split.split(everything, codes))


class EarlyStopping:
    """Track the best epoch (highest validation score, then lowest validation loss) and patience.

    ``patience`` epochs without improvement stop training; unfreezing a new stage starts the count
    again (:meth:`reset_patience`), since new trainable layers can lift a plateau.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best = (-math.inf, math.inf)
        self.best_epoch = None
        self.since_best = 0

    def update(self, epoch: int, score: float, loss: float) -> bool:
        """Record an epoch; True when it is the best so far."""
        better = score > self.best[0] + 1e-9 or (abs(score - self.best[0]) <= 1e-9 and loss < self.best[1] - 1e-6)
        if better:
            self.best, self.best_epoch, self.since_best = (score, loss), epoch, 0
        else:
            self.since_best += 1
        return better

    def reset_patience(self) -> None:
        self.since_best = 0

    @property
    def should_stop(self) -> bool:
        return self.since_best >= self.patience


class Progress:
    """A tqdm bar over epochs showing the training loss and the validation score, or nothing."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="epoch")

    def update(self, record: dict) -> None:
        if self.bar is None:
            return
        shown = {"loss": f"{record['train_loss']:.4f}"}
        if record.get("val_score") is not None:
            shown["val_score"] = f"{record['val_score']:.4f}"
        self.bar.set_postfix(shown)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
