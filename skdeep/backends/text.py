"""sentence-transformers backend for :class:`skdeep.TextEncoder`."""

from __future__ import annotations

import numpy as np
import torch

from ..devices import autocast
from ..sources import ModelSource
from . import quiet_loading

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


class SentenceTransformerBackend:
    """Embed batches of strings with a sentence-transformers model.

    Parameters
    ----------
    source : ModelSource
        Where the model's files are.
    device : torch.device
    precision : {"fp32", "fp16", "bf16"}
    max_length : int or None
        Tokens kept per text; None keeps the model's own limit.
    pooling : str or None
        Replaces the model's pooling module; None keeps the model's own.
    """

    def __init__(self, source: ModelSource, device: torch.device, precision: str, max_length=None, pooling=None):
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer import modules as models

        self.source = source
        self.device = device
        self.precision = precision
        with quiet_loading():
            self.model = SentenceTransformer(source.path, device=str(device), local_files_only=True)
        if max_length is not None:
            self.model.max_seq_length = int(max_length)
        if pooling is not None:
            for idx, module in enumerate(self.model):
                if isinstance(module, models.Pooling):
                    self.model._modules[str(idx)] = models.Pooling(
                        module.get_embedding_dimension()
                        if hasattr(module, "get_embedding_dimension")
                        else module.get_sentence_embedding_dimension(),
                        pooling_mode=pooling,
                    ).to(device)
                    break
            else:
                raise ValueError(f"pooling={pooling!r} was given but the model {source.name!r} has no pooling module.")
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    @property
    def max_length(self) -> int:
        return int(self.model.max_seq_length)

    @staticmethod
    def size(text: str) -> int:
        """Batches group texts of similar length (less padding)."""
        return len(text)

    def forward(self, texts: list[str]) -> np.ndarray:
        """Embed one batch; returns float32 (len(texts), dim)."""
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self.model.encode(
                list(texts),
                batch_size=max(1, len(texts)),
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=False,
            )
        return np.asarray(out, dtype=np.float32)
