"""Cache keys of texts from the token ids the model sees, tokenising each text once per process.

Keying on token ids (after the prompt is added and the text truncated or cut into windows) lets
settings that give the model the same input share their vectors. Tokenising costs far more than a
cache hit, though (tens of microseconds a text against one or two), so the keys of each text are
memoised per process under a digest of the text and of everything that decides its tokens; a warm
transform then hashes each text once and never tokenises it. The token ids themselves are needed
only for cache misses, and are computed lazily, in one batch, when the engine first asks for one.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from itertools import islice

import numpy as np

from .backends._tokens import TextTokenizer
from .engine import content_keys

#: Texts whose keys are remembered per process (about 150 bytes each, whatever the text's length).
MEMO_ENTRIES = 200_000
_memo: dict[bytes, tuple[tuple[bytes, ...], int]] = {}
_memo_lock = threading.Lock()


def _remember(entries: dict) -> None:
    with _memo_lock:
        _memo.update(entries)
        excess = len(_memo) - MEMO_ENTRIES
        if excess > 0:  # drop the oldest fifth (dicts keep insertion order): amortised O(1) per entry
            for key in list(islice(_memo, excess + MEMO_ENTRIES // 5)):
                del _memo[key]


def clear_memo() -> None:
    """Forget every memoised key (for tests and benchmarks)."""
    with _memo_lock:
        _memo.clear()


class KeyedTexts:
    """The sequences a list of texts becomes, with their cache keys, tokenising only what is needed.

    Parameters
    ----------
    texts : list of str
    tokens : TextTokenizer
        The backend's tokenizer.
    namespace : bytes
        Digest of every setting that changes the model's output (model fingerprint, prompt, ...).
    prompt, max_length, long_text, overlap
        As for :meth:`TextTokenizer.__call__`.

    Attributes
    ----------
    keys : list of bytes
        One per sequence, in text order.
    owners : ndarray of int
        The text each sequence belongs to.
    lengths : ndarray of int
        Tokens of each text (prompt and special tokens included) before truncation.
    limit : int
        The maximum sequence length used.
    items : sequence
        The token ids of each sequence, computed on first access.
    """

    def __init__(
        self, texts: list[str], tokens: TextTokenizer, namespace: bytes, *, prompt, max_length, long_text, overlap
    ):
        self.texts = texts
        self.tokens = tokens
        self.options = {"prompt": prompt, "max_length": max_length, "long_text": long_text, "overlap": overlap}
        self.limit = int(max_length) if max_length is not None else tokens.model_limit
        memo_key = hashlib.blake2b(
            namespace + repr((self.limit, long_text, float(overlap))).encode(), digest_size=32
        ).digest()
        self.namespace = namespace
        blake2b = hashlib.blake2b
        digests = [blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16, key=memo_key).digest() for t in texts]
        found = [_memo.get(d) for d in digests]
        self._sequences: list = [None] * len(texts)
        unknown = [i for i, hit in enumerate(found) if hit is None]
        if unknown:
            self._tokenize(unknown)
            learned = {}
            for i in unknown:
                seqs, length = self._sequences[i]
                found[i] = learned[digests[i]] = (tuple(self._keys(seqs)), length)
            _remember(learned)
        self.keys = [key for text_keys, _ in found for key in text_keys]
        counts = [len(text_keys) for text_keys, _ in found]
        self.owners = np.repeat(np.arange(len(texts)), counts)
        self._first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
        self.lengths = np.fromiter((length for _, length in found), dtype=np.int64, count=len(found))
        self.items = _LazySequences(self)

    @property
    def truncated(self) -> int:
        """Texts longer than :attr:`limit` (cut, or split into windows)."""
        return int((self.lengths > self.limit).sum())

    def _keys(self, sequences) -> list[bytes]:
        return content_keys(self.namespace, [np.asarray(s, dtype=np.int32).tobytes() for s in sequences])

    def _tokenize(self, indices: list[int]) -> None:
        tok = self.tokens([self.texts[i] for i in indices], **self.options)
        bounds = np.searchsorted(tok.owners, np.arange(len(indices) + 1))
        for j, i in enumerate(indices):
            self._sequences[i] = (tok.sequences[bounds[j] : bounds[j + 1]], int(tok.lengths[j]))

    def sequence(self, position: int) -> tuple[int, ...]:
        owner = int(self.owners[position])
        if self._sequences[owner] is None:
            # The first miss among memoised texts: tokenise all of them at once (one fast batch call).
            self._tokenize([i for i, s in enumerate(self._sequences) if s is None])
        return self._sequences[owner][0][position - self._first[owner]]


class _LazySequences(Sequence):
    def __init__(self, keyed: KeyedTexts):
        self.keyed = keyed

    def __len__(self):
        return len(self.keyed.keys)

    def __getitem__(self, position):
        return self.keyed.sequence(position)
