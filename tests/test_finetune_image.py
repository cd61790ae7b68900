"""FineTunedImageClassifier on tiny random CNNs and ViTs: what trains when, frozen BN, weights in pickles."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import INPUT_AGNOSTIC_CHECKS, run_fresh_process
from sklearn.base import clone

from skdeep import ImageEncoder
from skdeep import backends as backend_registry
from skdeep.finetune import FineTunedImageClassifier, _training
from skdeep.sources import clear_registered

FAST = dict(weights=None, image_size=32, batch_size=8, cache=None, num_workers=0, random_state=0, dtype="float32")


def make_data(n_per_class=12, seed=0, size=32):
    """Two classes of random images; class 1 has a bright left half."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 200, size=(2 * n_per_class, size, size, 3), dtype=np.uint8)
    y = np.repeat([0, 1], n_per_class)
    X[y == 1, :, : size // 2] = 250
    return X, y


X, Y = make_data()


def base_state(model):
    from skdeep.backends.image import build_model
    from skdeep.sources import resolve_image_model

    return {k: v.contiguous() for k, v in build_model(resolve_image_model(model, None, 0), 32).state_dict().items()}


def tuned_state(clf, tmp_path):
    from safetensors.torch import load_file

    return load_file(str(clf.save_checkpoint(tmp_path / f"tuned-{clf.tuned_fingerprint_}.safetensors")))


def group_of(key, groups):
    """Index of the layer group a state-dict key belongs to (loose parameters: the first group)."""
    for i, names in enumerate(groups):
        if any(key == n or key.startswith(n + ".") for n in names):
            return i
    return 0 if "." not in key else None


def changed_groups(clf, tmp_path, model):
    import torch

    base, tuned = base_state(model), tuned_state(clf, tmp_path)
    assert set(base) == set(tuned)
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    return changed, {group_of(k, clf.layer_groups_) for k in changed}


@pytest.fixture
def recorder(monkeypatch):
    """Records, at every call of set_trainable, which parameters train and which BN layers are in train mode."""
    import torch

    calls = []
    original = _training.set_trainable

    def spy(model, groups, n_unfrozen, **kwargs):
        original(model, groups, n_unfrozen, **kwargs)
        calls.append(
            {
                "n": n_unfrozen,
                "grad": {n for n, p in model.named_parameters() if p.requires_grad},
                "bn_train": {
                    n
                    for n, m in model.named_modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
                },
                "bn": {n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)},
            }
        )

    monkeypatch.setattr(_training, "set_trainable", spy)
    return calls


@pytest.mark.parametrize("model", ["timm:test_resnet", "timm:test_efficientnet", "timm:test_vit"])
def test_gradual_unfreezing_trains_exactly_the_top_stages(model, tmp_path, recorder):
    params = dict(unfreeze="gradual", head_epochs=1, stage_epochs=1, early_stopping=False, train_bn_stats=True, **FAST)
    clf = FineTunedImageClassifier(model, max_epochs=3, **params).fit(X, Y)
    groups = clf.layer_groups_
    assert len(groups) >= 4
    assert [h["unfrozen"] for h in clf.history_] == [0, 1, 2]
    # requires_grad at each stage: nothing, then the top stage, then the top two.
    stage_calls = [c for c in recorder if c["n"] in (1, 2)]
    assert [c["n"] for c in recorder][-3:] == [0, 1, 2]
    for call in stage_calls:
        trained = {group_of(n, groups) for n in call["grad"]}
        assert trained == set(range(len(groups) - call["n"], len(groups)))
        # Frozen batch-norm layers are in eval mode; those of the trained stages in train mode.
        for name in call["bn"]:
            in_trained = group_of(name + ".weight", groups) in trained
            assert (name in call["bn_train"]) == in_trained, name
    # After training: the top two stages changed, every other tensor (BN statistics included) is bit-identical.
    _, touched = changed_groups(clf, tmp_path, model.removeprefix("timm:"))
    assert touched == {len(groups) - 2, len(groups) - 1}


def test_by_default_batch_norm_statistics_never_move(tmp_path, recorder):
    clf = FineTunedImageClassifier("timm:test_resnet", max_epochs=3, early_stopping=False, **FAST).fit(X, Y)
    assert recorder and all(not call["bn_train"] for call in recorder)  # every BN in eval mode, always
    changed, touched = changed_groups(clf, tmp_path, "test_resnet")
    n = len(clf.layer_groups_)
    assert touched == {n - 2, n - 1}
    assert not any("running_" in k or "num_batches_tracked" in k for k in changed)
    assert any(k.endswith("bn1.weight") or k.endswith("bn2.weight") for k in changed)  # BN scale still learns


def test_each_extra_epoch_unfreezes_one_more_stage(tmp_path):
    touched = []
    for epochs in (1, 2, 3, 4):
        clf = FineTunedImageClassifier("timm:test_resnet", max_epochs=epochs, early_stopping=False, **FAST).fit(X, Y)
        touched.append(changed_groups(clf, tmp_path, "test_resnet")[1])
    n = len(clf.layer_groups_)
    assert touched == [set(), {n - 1}, {n - 2, n - 1}, {n - 3, n - 2, n - 1}]


def test_unfreeze_none_leaves_the_backbone_bit_identical_and_all_changes_every_stage(tmp_path):
    head_only = FineTunedImageClassifier("timm:test_resnet", unfreeze="none", max_epochs=2, **FAST).fit(X, Y)
    changed, _ = changed_groups(head_only, tmp_path, "test_resnet")
    assert changed == set()
    base = ImageEncoder("timm:test_resnet", weights=None, image_size=32, cache=None, num_workers=0).fit_transform(X)
    np.testing.assert_allclose(head_only.transform(X), base, atol=1e-5)  # same weights; batch sizes differ
    everything = FineTunedImageClassifier("timm:test_resnet", unfreeze="all", max_epochs=2, **FAST).fit(X, Y)
    _, touched = changed_groups(everything, tmp_path, "test_resnet")
    assert touched == set(range(len(everything.layer_groups_)))


def test_torchvision_model_and_discriminative_learning_rates():
    clf = FineTunedImageClassifier("resnet18", max_epochs=2, early_stopping=False, **FAST)
    optimizer_lrs = []
    original = _training.make_optimizer

    def spy(groups, head_params, **kwargs):
        opt = original(groups, head_params, **kwargs)
        optimizer_lrs.extend(g["base_lr"] for g in opt.param_groups)
        return opt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_training, "make_optimizer", spy)
        clf.fit(X, Y)
    assert clf.layer_groups_ == [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    # head (weights, biases), then each stage from the top at lr_decay (0.8) times the one above it.
    distinct = sorted(set(optimizer_lrs), reverse=True)
    assert distinct == pytest.approx([1e-3 * 0.8**k for k in range(6)])
    assert clf.predict(X).shape == (len(X),)


def test_learns_reproducibly_and_reports_history():
    params = dict(max_epochs=4, **FAST)
    a = FineTunedImageClassifier("timm:test_resnet", **params).fit(X, Y)
    b = FineTunedImageClassifier("timm:test_resnet", **params).fit(X, Y)
    c = FineTunedImageClassifier("timm:test_resnet", **{**params, "random_state": 1}).fit(X, Y)
    assert a.tuned_fingerprint_ == b.tuned_fingerprint_ != c.tuned_fingerprint_
    np.testing.assert_array_equal(a.heads_[0][0], b.heads_[0][0])
    X_test, y_test = make_data(6, seed=5)
    assert a.score(X_test, y_test) >= 0.9
    assert a.classes_.tolist() == [0, 1] and a.n_outputs_ == 1
    proba = a.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert (a.classes_[proba.argmax(1)] == a.predict(X_test)).all()
    assert [h["epoch"] for h in a.history_] == list(range(1, a.n_epochs_ + 1))
    scored = [h for h in a.history_ if h["val_score"] is not None]
    assert len(scored) == a.n_epochs_
    best = max(scored, key=lambda h: (h["val_score"], -h["val_loss"]))
    assert a.best_epoch_ == best["epoch"]
    assert a.transform(X_test).shape == (12, a.n_features_out_)
    assert a.get_feature_names_out()[0] == "finetunedimageclassifier0"


def test_progress_bar_over_epochs_shows_the_validation_score(capsys):
    FineTunedImageClassifier("timm:test_resnet", max_epochs=2, show_progress=True, **FAST).fit(X, Y)
    err = capsys.readouterr().err
    assert "Fine-tuning" in err and "2/2" in err and "val_score=" in err


def test_early_stopping_stops_after_patience():
    clf = FineTunedImageClassifier(
        "timm:test_resnet", unfreeze="none", max_epochs=30, n_iter_no_change=2, **{**FAST, "learning_rate": 1e-6}
    ).fit(X, Y)
    assert clf.n_epochs_ < 30
    assert clf.n_epochs_ - clf.best_epoch_ == 2


def test_augmentation_runs_in_training_only():
    calls = []

    def flip(img):
        calls.append(tuple(img.shape))
        return img.flip(-1)

    clf = FineTunedImageClassifier("timm:test_resnet", augment=flip, max_epochs=2, early_stopping=False, **FAST)
    clf.fit(X, Y)
    assert calls and set(calls) == {(3, 32, 32)}
    assert len(calls) == 2 * len(X)  # every training image, every epoch
    n = len(calls)
    first = clf.predict_proba(X)
    np.testing.assert_array_equal(clf.predict_proba(X), first)  # deterministic: no augmentation at predict time
    clf.transform(X)
    assert len(calls) == n
    for preset in ("light", "trivialaugment"):
        clone(clf).set_params(augment=preset, max_epochs=1).fit(X, Y)
    with pytest.raises(ValueError, match="same shape"):
        clone(clf).set_params(augment=lambda img: img[:, :8]).fit(X, Y)


def test_pickle_carries_only_changed_tensors_and_reloads_in_a_fresh_process(tmp_path):
    clf = FineTunedImageClassifier("timm:test_resnet", max_epochs=2, early_stopping=False, **FAST).fit(X, Y)
    assert clf._payload["kind"] == "delta"
    full = tuned_state(clf, tmp_path)
    blob = pickle.dumps(clf)
    full_bytes = sum(v.numel() * v.element_size() for v in full.values())
    assert len(blob) < 0.7 * full_bytes  # the top stage only, not the whole model
    expected = clf.predict_proba(X)
    np.save(tmp_path / "X.npy", X)
    (tmp_path / "clf.pkl").write_bytes(blob)
    out = run_fresh_process(
        f"""
        import pickle, numpy as np
        clf = pickle.loads(open({str(tmp_path / "clf.pkl")!r}, "rb").read())
        np.save({str(tmp_path / "proba.npy")!r}, clf.predict_proba(np.load({str(tmp_path / "X.npy")!r})))
        print(clf.encoder_.weights)
        """,
        tmp_path,
    )
    assert out.strip() == clf.tuned_weights_
    # The weights are the same bits (their fingerprint is checked on load); the probabilities may
    # differ in the last bits when a convolution's vectors came from a batch of another size.
    np.testing.assert_allclose(np.load(tmp_path / "proba.npy"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("everything_changed", [False, True])
def test_skops_round_trip_with_a_delta_or_a_full_bundle(tmp_path, monkeypatch, everything_changed):
    from skdeep import load, save
    from skdeep.finetune import image as image_module

    if everything_changed:  # a delta of every tensor is no smaller than the whole file: a bundle travels
        monkeypatch.setattr(image_module, "changed_tensors", lambda tuned, base: tuned)
    clf = FineTunedImageClassifier("timm:test_vit", unfreeze="all", max_epochs=1, early_stopping=False, **FAST).fit(
        X, Y
    )
    assert clf._payload["kind"] == ("full" if everything_changed else "delta")
    expected = clf.predict_proba(X)
    path = save(clf, tmp_path / "clf.skops")
    clear_registered()
    backend_registry.clear_backends()
    restored = load(path)
    np.testing.assert_array_equal(restored.predict_proba(X), expected)
    assert restored.tuned_fingerprint_ == clf.tuned_fingerprint_


def test_delta_pickle_checks_the_base_model(tmp_path, monkeypatch):
    from skdeep.sources import FingerprintMismatchError

    clf = FineTunedImageClassifier("timm:test_resnet", max_epochs=2, early_stopping=False, **FAST).fit(X, Y)
    blob = pickle.dumps(clf)
    clf.base_fingerprint_ = "0" * 32
    with pytest.raises(FingerprintMismatchError, match="base model"):
        pickle.loads(pickle.dumps(clf))
    assert pickle.loads(blob).tuned_fingerprint_ == clf.tuned_fingerprint_


def test_as_encoder_and_checkpoint_give_the_tuned_features(tmp_path):
    clf = FineTunedImageClassifier("timm:test_resnet", max_epochs=2, early_stopping=False, **FAST).fit(X, Y)
    features = clf.transform(X)
    enc = clf.as_encoder()
    assert isinstance(enc, ImageEncoder) and enc.bundle_weights
    np.testing.assert_array_equal(enc.transform(X), features)
    blob = pickle.dumps(enc)
    clear_registered()
    backend_registry.clear_backends()
    np.testing.assert_array_equal(pickle.loads(blob).transform(X), features)
    path = clf.save_checkpoint(tmp_path / "tuned.safetensors")
    from_file = ImageEncoder("timm:test_resnet", weights=str(path), image_size=32, cache=None, num_workers=0)
    np.testing.assert_allclose(from_file.fit_transform(X), features, atol=1e-6)
    with pytest.raises(FileExistsError):
        clf.save_checkpoint(path)


def test_tuned_features_are_cached_under_the_tuned_fingerprint():
    from skdeep.cache import EmbeddingCache

    cache = EmbeddingCache()
    base = ImageEncoder("timm:test_resnet", weights=None, image_size=32, cache=cache, num_workers=0).fit_transform(X)
    clf = FineTunedImageClassifier("timm:test_resnet", max_epochs=2, early_stopping=False, **{**FAST, "cache": cache})
    tuned = clf.fit(X, Y).transform(X)
    assert not np.allclose(tuned, base, atol=1e-4)
    assert clf.encoder_.model_fingerprint_ == clf.tuned_fingerprint_ != clf.base_fingerprint_
    np.testing.assert_allclose(tuned, clf.as_encoder().set_params(cache=None).transform(X), atol=1e-6)


def test_bad_input():
    clf = FineTunedImageClassifier("timm:test_resnet", max_epochs=1, **FAST)
    with pytest.raises(ValueError, match="single class"):
        clf.fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="24 rows"):
        clf.fit(X, Y[:-1])
    with pytest.raises(ValueError, match="'augment' parameter"):
        clone(clf).set_params(augment="heavy").fit(X, Y)
    with pytest.raises(ValueError, match="task_weights must hold 1"):
        clone(clf).set_params(task_weights=[1.0, 2.0]).fit(X, Y)
    with pytest.raises(ValueError, match="'unfreeze' parameter"):
        clone(clf).set_params(unfreeze="some").fit(X, Y)
    with pytest.warns(UserWarning, match="early_stopping needs at least 3 images per class"):
        clf.fit(X[[0, 1, 12, 13]], Y[[0, 1, 12, 13]])
    with pytest.raises(ValueError, match="position 1"):
        clf.fit([X[0], "/no/such/image.png"], [0, 1])


def test_layer_groups_of_common_shapes():
    import timm
    import torchvision

    vit = timm.create_model("test_vit")
    groups = _training.layer_groups(vit, exclude={"head"})
    assert groups[0].names == ["patch_embed"] and {n for n, _ in groups[0].extra} == {"cls_token", "pos_embed"}
    assert [g.names for g in groups[1:]] == [[f"blocks.{i}"] for i in range(len(vit.blocks))] + [["norm"]]
    effnet = torchvision.models.efficientnet_b0()
    assert [g.names for g in _training.layer_groups(effnet, exclude={"classifier"})] == [
        [f"features.{i}"] for i in range(9)
    ]
    # Every trainable parameter outside the head is in exactly one group.
    names = [n for g in groups for n, _ in g.named_parameters()]
    assert len(names) == len(set(names)) == len([n for n, _ in vit.named_parameters() if not n.startswith("head")])


def test_schedule_and_precision_helpers():
    assert [_training.unfrozen_groups("gradual", e, 3, 2, 2) for e in range(9)] == [0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert _training.unfrozen_groups("all", 0, 5, 1, 1) == 5 and _training.unfrozen_groups("none", 9, 5, 1, 1) == 0
    import torch

    cpu = torch.device("cpu")
    assert _training.resolve_train_precision("auto", cpu) == "fp32"
    assert _training.resolve_train_precision("float32", cpu) == "fp32"
    with pytest.raises(ValueError, match="dtype='float16' needs a GPU"):
        _training.resolve_train_precision("float16", cpu)
    from skdeep import devices

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(devices, "cpu_supports_bf16", lambda: False)
        with pytest.warns(RuntimeWarning, match="no native bfloat16"):
            assert _training.resolve_train_precision("bfloat16", cpu) == "fp32"
        mp.setattr(devices, "cpu_supports_bf16", lambda: True)
        assert _training.resolve_train_precision("bfloat16", cpu) == "bf16"
    if devices.cpu_supports_bf16():
        # bf16 autocast on the CPU trains and stays deterministic.
        a, b = (
            FineTunedImageClassifier("timm:test_resnet", max_epochs=2, **{**FAST, "dtype": "bfloat16"}).fit(X, Y)
            for _ in range(2)
        )
        assert a.tuned_fingerprint_ == b.tuned_fingerprint_


def test_cpu_supports_bf16_reads_the_cpu_flags(monkeypatch):
    import builtins
    import io

    import torch

    from skdeep.devices import cpu_supports_bf16

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    real_open = builtins.open
    for flags, expected in (
        ("fpu avx2 avx512f", False),
        ("fpu avx512f avx512_bf16", True),
        ("amx_bf16 amx_tile", True),
    ):
        monkeypatch.setattr(
            builtins,
            "open",
            lambda path, *a, _f=flags, **k: io.StringIO(_f) if path == "/proc/cpuinfo" else real_open(path, *a, **k),
        )
        assert cpu_supports_bf16() is expected


@pytest.mark.parametrize("check_name", INPUT_AGNOSTIC_CHECKS)
def test_sklearn_input_agnostic_checks(check_name):
    import sklearn.utils.estimator_checks as checks

    getattr(checks, check_name)("FineTunedImageClassifier", FineTunedImageClassifier())
