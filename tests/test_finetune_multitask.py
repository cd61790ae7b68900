"""Multi-task fine-tuning: a 2-D y trains one backbone with one head per task and predicts one column per task."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from test_finetune import FAST as TEXT_FAST
from test_finetune import X as TEXTS
from test_finetune import Y as TEXT_Y
from test_finetune_image import FAST

from skdeep.finetune import FineTunedImageClassifier, FineTunedTextClassifier
from skdeep.finetune._heads import encode_targets
from skdeep.finetune.objectives import OBJECTIVES, _MultiTask, make_objective


def two_task_images(n_per_class=8, seed=0):
    """Task 0: bright left half (2 classes). Task 1: bright top half, as words (3 labels: none/top/strong-top)."""
    rng = np.random.default_rng(seed)
    n = 4 * n_per_class
    X = rng.integers(0, 150, size=(n, 32, 32, 3), dtype=np.uint8)
    left = np.tile([0, 1], n // 2)
    top = np.repeat([0, 1, 2, 0], n_per_class)
    X[left == 1, :, :16] = 250
    X[top == 1, :16] = 200
    X[top == 2, :16] = 255
    y = np.column_stack([left, np.array(["none", "top", "strong"])[top]])
    return X, y


def test_encode_targets_checks_each_column():
    codes, classes, multi = encode_targets(np.array([["a", "x"], ["b", "y"], ["a", "y"]]), 3)
    assert (
        multi
        and codes.tolist() == [[0, 0], [1, 1], [0, 1]]
        and [c.tolist() for c in classes] == [["a", "b"], ["x", "y"]]
    )
    with pytest.raises(ValueError, match="single class 'x' in task \\(column\\) 1"):
        encode_targets(np.array([["a", "x"], ["b", "x"]]), 2)
    with pytest.raises(ValueError, match="with 3 rows"):
        encode_targets(np.zeros((2, 2)), 3)


def test_image_multitask_predicts_one_column_per_task(tmp_path):
    X, y = two_task_images()
    clf = FineTunedImageClassifier("timm:test_resnet", max_epochs=3, **FAST).fit(X, y)
    assert clf.n_outputs_ == 2 and [c.tolist() for c in clf.classes_] == [["0", "1"], ["none", "strong", "top"]]
    assert [w.shape for w, _ in clf.heads_] == [(2, clf.n_features_out_), (3, clf.n_features_out_)]
    pred = clf.predict(X)
    assert pred.shape == (len(X), 2)
    assert set(pred[:, 1]) <= {"none", "strong", "top"}
    proba = clf.predict_proba(X)
    assert isinstance(proba, list) and [p.shape for p in proba] == [(len(X), 2), (len(X), 3)]
    for p, c, column in zip(proba, clf.classes_, pred.T):
        np.testing.assert_allclose(p.sum(1), 1.0)
        assert (c[p.argmax(1)] == column).all()
    assert clf.score(X, y) == np.mean(np.all(pred == y, axis=1))
    assert clf.score(X, y) > 0.5  # both tasks learnt on most training images
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict(X), pred)


def test_image_task_weights_zero_leaves_a_task_untrained():
    X, y = two_task_images()
    params = dict(max_epochs=2, unfreeze="none", probe_init=False, **FAST)
    a = FineTunedImageClassifier("timm:test_resnet", task_weights=[1.0, 0.0], **params).fit(X, y)
    b = FineTunedImageClassifier("timm:test_resnet", task_weights=[1.0, 1.0], **params).fit(X, y)
    # With weight 0 the second head keeps its initialisation up to weight decay: it moved far less.
    init = FineTunedImageClassifier("timm:test_resnet", task_weights=[1.0, 0.0], **{**params, "max_epochs": 1})
    init.set_params(learning_rate=1e-12).fit(X, y)
    moved_a = np.abs(a.heads_[1][0] - init.heads_[1][0]).max()
    moved_b = np.abs(b.heads_[1][0] - init.heads_[1][0]).max()
    assert moved_a < 1e-3 < moved_b


def test_text_multitask_objectives_sum_the_tasks(tiny_text_model):
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(tiny_text_model, device="cpu")
    codes = np.column_stack([np.repeat([0, 1], 6), np.tile([0, 1, 2], 4)])
    table = torch.randn(12, 32)
    texts = [str(i) for i in range(12)]

    def embed(batch):
        return table[[int(t) for t in batch]]

    for loss in ("pairwise", "softmax"):
        multi = make_objective(
            loss, st, codes, task_weights=[1.0, 0.5], batch_size=12, pairs_per_sample=1, device=torch.device("cpu")
        )
        assert isinstance(multi, _MultiTask)
        (batch,) = multi.epoch_batches(codes, np.random.RandomState(0))
        got = multi.batch_loss(embed, batch, texts, codes)
        labels = torch.as_tensor(codes[batch[0]])
        expected = multi.objectives[0].loss_from_embeddings(embed(np.array(texts)[batch[0]]), labels[:, 0])
        expected = expected + 0.5 * multi.objectives[1].loss_from_embeddings(
            embed(np.array(texts)[batch[0]]), labels[:, 1]
        )
        torch.testing.assert_close(got, expected)
    pairs = make_objective("cosine", st, codes, task_weights=[1, 1], batch_size=4, pairs_per_sample=1, device="cpu")
    tasks = {b[0] for b in pairs.epoch_batches(codes, np.random.RandomState(0))}
    assert tasks == {0, 1} and isinstance(pairs.objectives[0], OBJECTIVES["cosine"])


@pytest.mark.parametrize("loss", ["cosine", "softmax"])
def test_text_multitask_fit_predicts_one_column_per_task(tiny_text_model, loss):
    length = np.array(["short" if len(t) < 8 else "long" for t in TEXTS])
    y = np.column_stack([TEXT_Y, length])
    clf = FineTunedTextClassifier(tiny_text_model, loss=loss, max_steps=6, **TEXT_FAST).fit(TEXTS, y)
    assert clf.n_outputs_ == 2 and [c.tolist() for c in clf.classes_] == [["0", "1"], ["long", "short"]]
    pred = clf.predict(TEXTS)
    assert pred.shape == (len(TEXTS), 2)
    proba = clf.predict_proba(TEXTS)
    assert [p.shape for p in proba] == [(len(TEXTS), 2), (len(TEXTS), 2)]
    assert clf.score(TEXTS, y) == np.mean(np.all(pred == y, axis=1))
    one_task = FineTunedTextClassifier(tiny_text_model, loss=loss, max_steps=6, **TEXT_FAST).fit(TEXTS, TEXT_Y)
    assert one_task.predict(TEXTS).shape == (len(TEXTS),) and one_task.n_outputs_ == 1
