"""LoRA adapters stay adapters: only they train, only they are pickled, and a fresh process rebuilds the model."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import run_fresh_process
from test_finetune import FAST as TEXT_FAST
from test_finetune import HELD_OUT
from test_finetune import X as TEXTS
from test_finetune import Y as TEXT_Y
from test_finetune_image import FAST, X, Y, base_state, tuned_state

from skdeep import backends as backend_registry
from skdeep.finetune import FineTunedImageClassifier, FineTunedTextClassifier, _lora
from skdeep.sources import FingerprintMismatchError, clear_registered

pytest.importorskip("peft")


def fresh_predict_proba(blob: bytes, X, tmp_path) -> np.ndarray:
    (tmp_path / "model.pkl").write_bytes(blob)
    np.save(tmp_path / "X.npy", np.asarray(X, dtype=object if isinstance(X, list) else None), allow_pickle=True)
    run_fresh_process(
        f"""
        import pickle, numpy as np
        model = pickle.loads(open({str(tmp_path / "model.pkl")!r}, "rb").read())
        X = np.load({str(tmp_path / "X.npy")!r}, allow_pickle=True)
        X = list(X) if X.dtype == object else X
        np.save({str(tmp_path / "proba.npy")!r}, model.predict_proba(X))
        """,
        tmp_path,
    )
    return np.load(tmp_path / "proba.npy")


@pytest.mark.parametrize("model", ["timm:test_resnet", "timm:test_vit"])
def test_image_lora_trains_adapters_only_and_pickles_at_adapter_size(model, tmp_path):
    import torch

    clf = FineTunedImageClassifier(
        model, unfreeze="all", lora=True, lora_rank=2, max_epochs=3, early_stopping=False, **FAST
    ).fit(X, Y)
    adapter = clf._payload["adapter"]
    assert clf._payload["kind"] == "lora"
    assert adapter["config"]["r"] == 2 and adapter["config"]["target_modules"]
    # The served weights are the base weights plus the merged adapters: every tensor that changed is
    # a linear or convolution weight that had an adapter; BN statistics are untouched.
    base, tuned = base_state(model.removeprefix("timm:")), tuned_state(clf, tmp_path)
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    targets = set(adapter["config"]["target_modules"])
    assert changed and all(k.endswith(".weight") and k.rsplit(".", 1)[0] in targets for k in changed)
    assert not any("running_" in k for k in changed)

    blob = pickle.dumps(clf)
    full_bytes = sum(v.numel() * v.element_size() for v in tuned.values())
    assert len(blob) < _lora.adapter_nbytes(adapter) + 30_000  # the adapter, the heads and a few numbers
    assert len(blob) < 0.5 * full_bytes
    expected = clf.predict_proba(X)
    # The weights are the same bits (their fingerprint is checked on load); the probabilities may
    # differ in the last bits when a convolution's vectors came from a batch of another size.
    np.testing.assert_allclose(fresh_predict_proba(blob, X, tmp_path), expected, rtol=1e-5, atol=1e-6)


def test_image_lora_keeps_frozen_batch_norm_in_eval_mode(monkeypatch):
    import torch

    from skdeep.finetune import _training

    modes = []
    original = _training.set_trainable

    def spy(model, groups, n, **kwargs):
        original(model, groups, n, **kwargs)
        modes.append([m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
        assert all(_lora.is_lora_param(name) for name, p in model.named_parameters() if p.requires_grad)

    monkeypatch.setattr(_training, "set_trainable", spy)
    FineTunedImageClassifier("timm:test_resnet", unfreeze="all", lora=True, lora_rank=2, max_epochs=2, **FAST).fit(X, Y)
    assert modes and not any(any(m) for m in modes)


def test_image_lora_pickle_refuses_another_base_model():
    clf = FineTunedImageClassifier("timm:test_resnet", unfreeze="all", lora=True, lora_rank=2, max_epochs=1, **FAST)
    clf.fit(X, Y)
    clf.tuned_fingerprint_ = "0" * 32  # as if the base weights had changed since fitting
    with pytest.raises(FingerprintMismatchError, match="base weights differ"):
        pickle.loads(pickle.dumps(clf))


@pytest.fixture(scope="module")
def text_lora(tiny_text_model, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKDEEP_HOME", str(tmp_path_factory.mktemp("lora_home")))
        return FineTunedTextClassifier(tiny_text_model, lora=True, lora_rank=2, max_steps=6, **TEXT_FAST).fit(
            TEXTS, TEXT_Y
        )


def test_text_lora_pickles_the_adapter_not_the_weights(text_lora, tiny_text_model, tmp_path):
    full = FineTunedTextClassifier(tiny_text_model, max_steps=2, **TEXT_FAST).fit(TEXTS, TEXT_Y)
    lora_blob, full_blob = pickle.dumps(text_lora), pickle.dumps(full)
    assert text_lora.adapter_["config"]["target_modules"] == "all-linear"
    assert len(lora_blob) < _lora.adapter_nbytes(text_lora.adapter_) + 30_000
    assert len(lora_blob) < 0.5 * len(full_blob)
    assert not text_lora.encoder_.bundle_weights
    expected = text_lora.predict_proba(HELD_OUT)
    np.testing.assert_array_equal(fresh_predict_proba(lora_blob, HELD_OUT, tmp_path), expected)
    # In this process too, after forgetting the merged weights.
    clear_registered()
    backend_registry.clear_backends()
    np.testing.assert_array_equal(pickle.loads(lora_blob).predict_proba(HELD_OUT), expected)


def test_text_lora_skops_round_trip_and_adapter_folder(text_lora, tmp_path):
    from skdeep import load, save

    path = save(text_lora, tmp_path / "lora.skops")
    clear_registered()
    backend_registry.clear_backends()
    restored = load(path)
    np.testing.assert_array_equal(restored.predict_proba(HELD_OUT), text_lora.predict_proba(HELD_OUT))
    folder = text_lora.save_adapter(tmp_path / "adapter")
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    with pytest.raises(FileExistsError):
        text_lora.save_adapter(folder)


def test_text_lora_adapter_loads_with_peft_onto_the_base_model(text_lora, tiny_text_model, tmp_path):
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    from skdeep import TextEncoder

    folder = text_lora.save_adapter(tmp_path / "adapter")
    st = SentenceTransformer(tiny_text_model, device="cpu")
    st[0].auto_model = PeftModel.from_pretrained(st[0].auto_model, str(folder)).merge_and_unload()
    st.save(str(tmp_path / "merged"))
    merged = TextEncoder(str(tmp_path / "merged"), cache=None).fit_transform(HELD_OUT)
    np.testing.assert_allclose(merged, text_lora.transform(HELD_OUT), atol=1e-5)


@pytest.mark.parametrize("layer_kind", ["linear", "conv3x3", "conv1x1"])
def test_merge_is_peft_merge_and_the_same_bits_at_any_thread_count(layer_kind):
    # The merged weights are fingerprinted at fit and checked at load, perhaps on another machine
    # with other threads: the merge must not depend on the BLAS kernel or the thread count.
    import copy

    import torch

    torch.manual_seed(0)
    layer = {
        "linear": torch.nn.Linear(96, 80),
        "conv3x3": torch.nn.Conv2d(16, 24, 3, padding=1),
        "conv1x1": torch.nn.Conv2d(16, 24, 1),
    }[layer_kind]
    model = torch.nn.Sequential(layer)
    model = _lora.inject(model, {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["0"]})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)  # peft starts B at zero: give the adapter something to merge

    by_peft = copy.deepcopy(model)
    by_peft[0].merge()
    saved = torch.get_num_threads()
    merged = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            merged.append(_lora.merge_and_unwrap(copy.deepcopy(model))[0].weight.detach())
    finally:
        torch.set_num_threads(saved)
    assert isinstance(_lora.merge_and_unwrap(copy.deepcopy(model))[0], type(layer))  # unwrapped
    assert torch.equal(merged[0], merged[1])
    reference = by_peft[0].get_base_layer().weight.detach()
    torch.testing.assert_close(merged[0], reference, rtol=1e-5, atol=1e-6)
    assert (merged[0] - model[0].get_base_layer().weight.detach()).abs().max() > 1e-3  # the adapter was added
