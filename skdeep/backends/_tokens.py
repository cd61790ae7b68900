"""Tokenisation shared by the text backends: prompts, truncation, windows over long documents, padding.

Text encoders key their cache on what the model actually sees: the token ids after the prompt is
added and the text is truncated or cut into windows. Two settings that give the same ids (a
``max_length`` larger than a short text, ``long_text="chunk"`` for a text that fits) then share
their cached vectors, and a grid over ``max_length`` only re-embeds the texts it cuts differently.

The ids are those sentence-transformers computes for ``prompt + text`` (its ``Transformer`` module
calls the tokenizer with ``truncation="longest_first"`` and the model's maximum length), so the
vectors match ``SentenceTransformer.encode(texts, prompt=...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

LONG_TEXT_MODES = ("truncate", "chunk")
# Windows shorter than this leave too little room for the document after the prompt and the
# special tokens; such a setting is refused rather than embedding mostly prompt.
MIN_WINDOW_TOKENS = 8
# Token lengths past this are placeholders (transformers' "no limit" is 1e30), not a model's limit.
_NO_LIMIT = 1_000_000


def window_spans(n_tokens: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of overlapping windows that cover ``range(n_tokens)``.

    Consecutive windows start ``window - overlap`` tokens apart; the last one is aligned to the
    end of the document, so every window is full (the last overlaps its neighbour more) and every
    token is in at least one window.

    Examples
    --------
    >>> window_spans(10, 4, 1)
    [(0, 4), (3, 7), (6, 10)]
    >>> window_spans(3, 4, 1)
    [(0, 3)]
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}.")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got {overlap} for window={window}.")
    if n_tokens <= window:
        return [(0, n_tokens)]
    step = window - overlap
    spans = []
    start = 0
    while start + window < n_tokens:
        spans.append((start, start + window))
        start += step
    spans.append((n_tokens - window, n_tokens))
    return spans


@dataclasses.dataclass
class Tokenized:
    """Token id sequences for a list of texts, as the model will see them.

    Attributes
    ----------
    sequences : list of tuple of int
        One sequence per window, special tokens and prompt included; with ``long_text="truncate"``
        exactly one per text.
    owners : ndarray of int
        Index of the text each sequence belongs to (non-decreasing).
    lengths : ndarray of int
        Tokens of each text with its prompt and special tokens, before truncation.
    limit : int
        The maximum sequence length used.
    truncated : int
        Texts that were longer than ``limit`` and were cut (``"truncate"``) or split (``"chunk"``).
    """

    sequences: list[tuple[int, ...]]
    owners: np.ndarray
    lengths: np.ndarray
    limit: int
    truncated: int


class TextTokenizer:
    """A Hugging Face tokenizer seen the way sentence-transformers uses it, plus windows for long texts.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        The tokenizer of the model's first (``Transformer``) module.
    model_limit : int or None
        The model's own maximum sequence length (``SentenceTransformer.max_seq_length``).
    fallback_limit : int or None
        Used when ``model_limit`` is missing or a "no limit" placeholder (the model's number of
        position embeddings).
    """

    def __init__(self, tokenizer, model_limit=None, fallback_limit=None):
        self.tokenizer = tokenizer
        limit = model_limit if model_limit is not None and model_limit < _NO_LIMIT else fallback_limit
        self.model_limit = int(limit) if limit is not None else None
        self._specials = None
        self._specials_found = False
        self._prompt_cache: dict[str, tuple[tuple[int, ...], int]] = {}
        names = list(getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
        self.wants_token_type_ids = "token_type_ids" in names
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.left_padding = getattr(tokenizer, "padding_side", "right") == "left"

    # ----------------------------------------------------------------- pieces
    def _ids(self, texts: list[str], **kwargs) -> list[list[int]]:
        if not texts:
            return []
        return list(self.tokenizer(texts, verbose=False, **kwargs)["input_ids"])

    def specials(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The special tokens the tokenizer puts before and after a single text."""
        if self._specials is None:
            probe = "hello world"
            full = self._ids([probe], add_special_tokens=True)[0]
            bare = self._ids([probe], add_special_tokens=False)[0]
            for i in range(len(full) - len(bare) + 1):
                if full[i : i + len(bare)] == bare:
                    self._specials = (tuple(full[:i]), tuple(full[i + len(bare) :]))
                    self._specials_found = True
                    break
            else:  # a post-processor that rewrites the text's tokens: no windows with specials kept
                self._specials = ((), ())
        return self._specials

    def prompt(self, prompt: str | None) -> tuple[tuple[int, ...], int | None]:
        """``(prompt ids without special tokens, prompt_length as sentence-transformers counts it)``.

        ``prompt_length`` (the special tokens before the prompt plus the prompt's tokens) is what
        a ``Pooling(include_prompt=False)`` module leaves out of the pooled tokens.
        """
        if not prompt:
            return (), None
        cached = self._prompt_cache.get(prompt)
        if cached is None:
            ids = tuple(self._ids([prompt], add_special_tokens=False)[0])
            full = self._ids([prompt], add_special_tokens=True)[0]
            length = len(full)
            special = set(getattr(self.tokenizer, "all_special_ids", ()))
            if full and full[-1] in special:
                length -= 1
            cached = self._prompt_cache[prompt] = (ids, length)
        return cached

    # ----------------------------------------------------------------- the whole thing
    def __call__(
        self,
        texts: Sequence[str],
        *,
        prompt: str | None = None,
        max_length: int | None = None,
        long_text: str = "truncate",
        overlap: float = 0.0,
    ) -> Tokenized:
        """Token ids of ``texts`` with ``prompt``, truncated or split into windows of ``max_length`` tokens.

        A text that fits gets the ids sentence-transformers would compute for ``prompt + text``,
        whatever ``long_text`` says, so both settings share its cache entry. A longer one is either
        truncated like sentence-transformers truncates it, or (``"chunk"``) split into windows of
        ``special tokens + prompt + a slice of the text``, consecutive slices sharing ``overlap`` (a
        fraction of the slice) of their tokens, the last aligned to the end of the text.
        """
        if long_text not in LONG_TEXT_MODES:
            raise ValueError(f"long_text must be one of {LONG_TEXT_MODES}, got {long_text!r}.")
        limit = int(max_length) if max_length is not None else self.model_limit
        if limit is None:
            raise ValueError("The model declares no maximum sequence length; set max_length.")
        texts = list(texts)
        with_prompt = [prompt + t for t in texts] if prompt else texts
        full = self._ids(with_prompt, add_special_tokens=True, truncation=False)
        lengths = np.fromiter((len(ids) for ids in full), dtype=np.int64, count=len(full))
        long_idx = np.flatnonzero(lengths > limit)
        per_text: list[list[tuple[int, ...]]] = [[tuple(ids)] for ids in full]
        if len(long_idx):
            if long_text == "truncate":
                self._truncate(full, long_idx, with_prompt, limit, per_text)
            else:
                self._chunk(texts, long_idx, prompt, limit, overlap, per_text)
        sequences = [seq for seqs in per_text for seq in seqs]
        owners = np.repeat(np.arange(len(texts)), [len(seqs) for seqs in per_text])
        return Tokenized(sequences, owners, lengths, limit, int(len(long_idx)))

    def _truncate(self, full, long_idx, with_prompt, limit, per_text) -> None:
        """Cut long texts to ``limit`` tokens as the tokenizer's own truncation does.

        The ids are cut directly when the tokenizer wraps a text in fixed special tokens and
        truncates on the right (what ``truncation=True`` then computes, without tokenising long
        texts a second time); other tokenizers tokenise again with truncation.
        """
        prefix, suffix = self.specials()
        room = limit - len(prefix) - len(suffix)
        direct = self._specials_found and room > 0 and getattr(self.tokenizer, "truncation_side", "right") == "right"
        again = []
        for i in long_idx:
            ids = full[i]
            if direct and tuple(ids[: len(prefix)]) == prefix and tuple(ids[len(ids) - len(suffix) :]) == suffix:
                per_text[i] = [(*prefix, *ids[len(prefix) : len(prefix) + room], *suffix)]
            else:
                again.append(i)
        cut = self._ids([with_prompt[i] for i in again], add_special_tokens=True, truncation=True, max_length=limit)
        for i, ids in zip(again, cut):
            per_text[i] = [tuple(ids)]

    def _chunk(self, texts, long_idx, prompt, limit, overlap, per_text) -> None:
        prefix, suffix = self.specials()
        prompt_ids, _ = self.prompt(prompt)
        window = limit - len(prefix) - len(suffix) - len(prompt_ids)
        if window < MIN_WINDOW_TOKENS:
            raise ValueError(
                f"long_text='chunk' leaves {window} tokens per window for the text (max_length={limit}, "
                f"{len(prompt_ids)} prompt tokens, {len(prefix) + len(suffix)} special tokens); "
                f"it needs at least {MIN_WINDOW_TOKENS}: raise max_length or shorten the prompt."
            )
        step_overlap = min(int(round(overlap * window)), window - 1)
        bodies = self._ids([texts[i] for i in long_idx], add_special_tokens=False, truncation=False)
        for i, body in zip(long_idx, bodies):
            per_text[i] = [
                (*prefix, *prompt_ids, *body[a:b], *suffix) for a, b in window_spans(len(body), window, step_overlap)
            ]

    def pad(self, sequences: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """A padded batch: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if the model takes them)."""
        width = max(len(s) for s in sequences)
        ids = np.full((len(sequences), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, seq in enumerate(sequences):
            if self.left_padding:
                ids[row, width - len(seq) :] = seq
                mask[row, width - len(seq) :] = 1
            else:
                ids[row, : len(seq)] = seq
                mask[row, : len(seq)] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.wants_token_type_ids:
            batch["token_type_ids"] = np.zeros_like(ids)
        return batch
