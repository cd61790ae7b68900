"""sentence-transformers backend for :class:`skdeep.TextEncoder`.

Models whose first module is a text ``Transformer`` with a tokenizer (nearly all sentence-transformers
models) are fed token ids: the encoder tokenises (prompt, truncation, windows of long documents,
see :mod:`skdeep.backends._tokens`), keys its cache on the ids and sends the misses here. Other models
(static embeddings, CLIP, custom modules) get strings and run through ``SentenceTransformer.encode``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..devices import autocast
from ..sources import ModelSource
from . import quiet_loading
from ._tokens import TextTokenizer

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
#: Values of ``TextEncoder(dtype=...)``: torch's spellings, and "auto".
COMPUTE_DTYPES = ("auto", "float32", "float16", "bfloat16")
_AUTOCAST_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def effective_dtype(dtype: str, device: torch.device, *, warn: bool = False) -> str:
    """The compute dtype a text model really runs in on ``device``.

    ``"auto"`` is bfloat16 on CUDA devices that support it, else float16 on CUDA and MPS, and
    float32 on the CPU. Reduced precision runs through autocast on accelerators; on the CPU the
    computation stays in float32 for now (with a warning when asked for explicitly). The result
    salts the cache keys, so ``dtype="bfloat16"`` on a CPU shares the float32 vectors.
    """
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}.")
    if device.type == "cpu":
        if warn and dtype in ("float16", "bfloat16"):
            warnings.warn(
                f"dtype={dtype!r} is not supported on the CPU yet; computing in float32.", UserWarning, stacklevel=4
            )
        return "float32"
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bfloat16"
        return "float16"
    return dtype


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
        Compute dtype (autocast on accelerators; float32 on the CPU).
    pooling : str or None
        Replaces the model's pooling module; None keeps the model's own.
    trust_remote_code : bool, default=False
        Passed to ``SentenceTransformer``.
    model_kwargs : dict or None
        Passed to ``SentenceTransformer`` (and on to ``AutoModel.from_pretrained``).

    Attributes
    ----------
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
        with torch.inference_mode(), autocast(self.device, _AUTOCAST_NAMES[self.dtype]):
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
