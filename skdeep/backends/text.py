"""sentence-transformers backend for :class:`skdeep.TextEncoder`.

Models whose first module is a text ``Transformer`` with a tokenizer (nearly all sentence-transformers
models) are fed token ids: the encoder tokenises (prompt, truncation, windows of long documents,
see :mod:`skdeep.backends._tokens`), keys its cache on the ids and sends the misses here. Other models
(static embeddings, CLIP, custom modules) get strings and run through ``SentenceTransformer.encode``.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch

from .. import devices
from ..devices import DTYPE_SHORT_NAMES, autocast
from ..sources import ModelSource
from . import quiet_loading
from ._tokens import TextTokenizer

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
#: Values of ``TextEncoder(dtype=...)``: torch's spellings, and "auto".
COMPUTE_DTYPES = devices.COMPUTE_DTYPES
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def effective_dtype(dtype: str, device: torch.device, *, warn: bool = False) -> str:
    """The compute dtype a text model really runs in on ``device`` with the torch backend.

    See :func:`skdeep.devices.effective_dtype`; the result salts the cache keys, so a request that
    falls back to float32 shares the float32 vectors.
    """
    return devices.effective_dtype(dtype, device, warn=warn, stacklevel=5)


def casts_weights(device: torch.device) -> bool:
    """Whether a reduced compute dtype casts the weights (CUDA) rather than running autocast (CPU, MPS).

    Measured on an H200 with all-MiniLM-L6-v2: float16 / bfloat16 autocast was slower than float32
    (2,950 vs 3,423 texts/s at batch 256), casting the weights once (as sentence-transformers'
    ``model.half()``) matched float32 at about 4,100. On the CPU autocast keeps layer norms and
    softmax in float32, which keeps bfloat16 within cosine 0.9999 of float32.
    """
    return device.type == "cuda"


def _uses_token_ids(model) -> bool:
    """Whether the model starts with a plain-text ``Transformer`` module whose tokenizer skdeep can drive."""
    try:
        from sentence_transformers.base.modules import Transformer
    except ImportError:  # pragma: no cover - older sentence-transformers layouts
        from sentence_transformers.models import Transformer
    first = model[0] if len(model) else None
    if not isinstance(first, Transformer) or getattr(first, "tokenizer", None) is None:
        return False
    if getattr(first, "processor", first.tokenizer) is not first.tokenizer:
        return False  # a multimodal processor (images, chat templates): leave it to encode()
    modalities = getattr(first, "modality_config", {"text": None})
    return "text" in modalities and "message" not in modalities


def _replace_pooling(model, pooling: str, device, name: str) -> None:
    from sentence_transformers.sentence_transformer import modules as models

    for idx, module in enumerate(model):
        if isinstance(module, models.Pooling):
            dim = (
                module.get_embedding_dimension()
                if hasattr(module, "get_embedding_dimension")
                else module.get_sentence_embedding_dimension()
            )
            model._modules[str(idx)] = models.Pooling(
                dim, pooling_mode=pooling, include_prompt=getattr(module, "include_prompt", True)
            ).to(device)
            return
    raise ValueError(f"pooling={pooling!r} was given but the model {name!r} has no pooling module.")


class SentenceTransformerBackend:
    """Embed batches of token id sequences (or strings) with a sentence-transformers model.

    Parameters
    ----------
    source : ModelSource
        Where the model's files are.
    device : torch.device
    dtype : {"auto", "float32", "float16", "bfloat16"}, default="float32"
        Compute dtype (see :func:`effective_dtype`): the weights are cast on CUDA, autocast runs
        elsewhere (bfloat16 on CPUs that support it).
    pooling : str or None
        Replaces the model's pooling module; None keeps the model's own.
    trust_remote_code : bool, default=False
        Passed to ``SentenceTransformer``.
    model_kwargs : dict or None
        Passed to ``SentenceTransformer`` (and on to ``AutoModel.from_pretrained``).

    Attributes
    ----------
    name : str
        ``"torch"``.
    dtype : str
        The compute dtype that runs.
    dim : int
        Output dimension.
    tokens : TextTokenizer or None
        The tokenizer driving token-id input; None for models fed strings.
    prompts : dict of str to str
        The prompts the model's configuration declares.
    default_prompt_name : str or None
        The prompt the model applies when none is given.
    max_length : int
        The model's own maximum sequence length.
    """

    name = "torch"

    def __init__(
        self,
        source: ModelSource,
        device: torch.device,
        dtype: str = "float32",
        pooling=None,
        *,
        trust_remote_code: bool = False,
        model_kwargs: dict | None = None,
    ):
        from sentence_transformers import SentenceTransformer

        self.source = source
        self.device = device
        self.dtype = effective_dtype(dtype, device)
        with quiet_loading():
            self.model = SentenceTransformer(
                source.path,
                device=str(device),
                local_files_only=True,
                trust_remote_code=trust_remote_code,
                model_kwargs=dict(model_kwargs) if model_kwargs else None,
            )
        if pooling is not None:
            _replace_pooling(self.model, pooling, device, source.name)
        self.model.eval()
        self._cast = self.dtype != "float32" and casts_weights(device)
        if self._cast:
            self.model.to(TORCH_DTYPES[self.dtype])
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.prompts = dict(getattr(self.model, "prompts", None) or {})
        self.default_prompt_name = getattr(self.model, "default_prompt_name", None)
        self.tokens = None
        if _uses_token_ids(self.model):
            config = self.model[0].auto_model.config
            positions = getattr(config, "max_position_embeddings", None)
            self.tokens = TextTokenizer(self.model[0].tokenizer, self.model.max_seq_length, positions)

    @property
    def max_length(self) -> int | None:
        return self.tokens.model_limit if self.tokens is not None else self.model.max_seq_length

    @staticmethod
    def size(item) -> int:
        """Batches group items of similar length (less padding)."""
        return len(item)

    def forward(self, items: list, prompt_length: int | None = None) -> np.ndarray:
        """Embed one batch of token id sequences (or strings); returns float32 (len(items), dim)."""
        precision = "fp32" if self._cast else DTYPE_SHORT_NAMES[self.dtype]
        with torch.inference_mode(), autocast(self.device, precision):
            if self.tokens is None:
                out = self.model.encode(
                    list(items),
                    batch_size=max(1, len(items)),
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    normalize_embeddings=False,
                )
                return np.asarray(out, dtype=np.float32)
            features = {k: torch.from_numpy(v).to(self.device) for k, v in self.tokens.pad(items).items()}
            features["modality"] = "text"
            if prompt_length:
                features["prompt_length"] = prompt_length
            out = self.model(features)["sentence_embedding"]
        return out.float().cpu().numpy()

    def with_dtype(self, dtype: str):
        """The same model computing in another dtype through autocast, sharing the weights (not on CUDA)."""
        if casts_weights(self.device):
            raise ValueError("on CUDA a dtype casts the weights: load the model again for another dtype.")
        twin = copy.copy(self)
        twin.dtype = effective_dtype(dtype, self.device)
        twin._cast = False
        return twin


# ---------------------------------------------------------------------------------------------
# every text backend by name

#: Backends run on the CPU whatever the encoder's device.
CPU_ONLY_BACKENDS = ("onnx", "onnx-int8", "onnx-int8-all", "openvino")


def backend_dtype(name: str, dtype: str, device: torch.device, *, warn: bool = False) -> str:
    """The compute dtype backend ``name`` runs in for the ``dtype`` parameter, without loading anything."""
    if name == "openvino":
        from .openvino import effective_dtype as openvino_dtype

        return openvino_dtype(dtype, warn=warn)
    if name in CPU_ONLY_BACKENDS:
        if warn and dtype in ("float16", "bfloat16"):
            warnings.warn(
                f"backend={name!r} computes in float32 (int8 weights for the -int8 variants); dtype={dtype!r} is "
                "ignored. backend='openvino' or 'torch' run bfloat16 on CPUs that support it.",
                UserWarning,
                stacklevel=4,
            )
        return "float32"
    return effective_dtype(dtype, device, warn=warn)


def _load_torch(source, device, dtype, *, num_threads=None, **options):
    return SentenceTransformerBackend(source, device, dtype, **options)


def _load_onnx(variant):
    def load(source, device, dtype, *, num_threads=None, **options):
        from .onnx import OnnxTextBackend

        return OnnxTextBackend(source, quantize=variant or False, num_threads=num_threads, **options)

    return load


def _load_openvino(source, device, dtype, *, num_threads=None, **options):
    from .openvino import OpenVinoTextBackend

    return OpenVinoTextBackend(source, dtype=dtype, num_threads=num_threads, **options)


#: name -> ``load(source, device, dtype, *, pooling, trust_remote_code, model_kwargs, num_threads)``.
TEXT_BACKEND_LOADERS = {
    "torch": _load_torch,
    "onnx": _load_onnx(None),
    "onnx-int8": _load_onnx("int8"),
    "onnx-int8-all": _load_onnx("int8-all"),
    "openvino": _load_openvino,
}


def load_text_backend(name: str, source: ModelSource, device: torch.device, dtype: str = "float32", **options):
    """Load text backend ``name`` (a key of :data:`TEXT_BACKEND_LOADERS`) for ``source``.

    ``options``: ``pooling``, ``trust_remote_code``, ``model_kwargs``, ``num_threads``.
    """
    try:
        loader = TEXT_BACKEND_LOADERS[name]
    except KeyError:
        raise ValueError(f"Unknown text backend {name!r}; known: {sorted(TEXT_BACKEND_LOADERS)}.") from None
    return loader(source, device, dtype, **options)
