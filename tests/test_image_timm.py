"""ImageEncoder features as timm users expect them: pooling="model" equals timm's num_classes=0 output,
hf-hub: ids from the local Hugging Face cache, one suggestion per misspelt name."""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest
import torch
from image_fixtures import TINY_TV, rgb_array

from skdeep.image import ImageEncoder
from skdeep.sources import ImageModelSpec, ModelNotFoundError, resolve_image_model

timm = pytest.importorskip("timm")

IMAGES = [rgb_array(i, (40 + 4 * i, 48)) for i in range(4)]


def _checkpoint(tmp_path, name: str, seed: int = 1, **kwargs) -> tuple[str, torch.nn.Module]:
    """A random timm model with its classifier, saved as a state dict (as a trained checkpoint would be)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return str(path), model


def _headless(name: str, state: dict, **kwargs) -> torch.nn.Module:
    """timm's own feature extractor: the same weights in ``create_model(name, num_classes=0)``."""
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    keys = set(model.state_dict())
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k in keys}, strict=False)
    assert not missing  # only the classifier is left out
    return model


def _model_input(enc: ImageEncoder) -> torch.Tensor:
    """The normalised batch the encoder feeds its model (its own resize, crop and normalisation)."""
    backend = enc._backend(enc._source())
    return backend._normalize(torch.stack([backend.prepare(item) for item in enc._validate_input(IMAGES)]))


@pytest.mark.parametrize("name", ["test_vit", "test_convnext"])
def test_default_features_equal_timm_num_classes_0(name, tmp_path):
    path, model = _checkpoint(tmp_path, name)
    enc = ImageEncoder(f"timm:{name}", weights=path, cache=None, num_workers=0)
    out = enc.fit_transform(IMAGES)
    with torch.inference_mode():
        expected = _headless(name, model.state_dict())(_model_input(enc)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert enc.n_features_out_ == model.num_features
    names = enc.get_feature_names_out()
    assert names[0] == "pre_logits_0" and names[-1] == f"pre_logits_{model.num_features - 1}"
    explicit = ImageEncoder(f"timm:{name}", weights=path, pooling="model", cache=None, num_workers=0)
    np.testing.assert_array_equal(explicit.fit_transform(IMAGES), out)


def test_pooling_the_feature_map_is_not_what_timm_gives_for_a_vit(tmp_path):
    # The issue: averaging the patch tokens of forward_features is not timm's class token after the norm.
    path, _ = _checkpoint(tmp_path, "test_vit")
    own = ImageEncoder("timm:test_vit", weights=path, cache=None, num_workers=0).fit_transform(IMAGES)
    avg = ImageEncoder("timm:test_vit", weights=path, pooling="avg", cache=None, num_workers=0).fit_transform(IMAGES)
    cosine = (own * avg).sum(1) / np.linalg.norm(own, axis=1) / np.linalg.norm(avg, axis=1)
    assert cosine.max() < 0.9
    cls = ImageEncoder("timm:test_vit", weights=path, pooling="cls", cache=None, num_workers=0).fit_transform(IMAGES)
    np.testing.assert_allclose(own, cls, rtol=1e-5, atol=1e-6)  # a classic ViT's head: its (normed) class token


def test_auto_and_model_share_cache_entries_and_avg_does_not(tmp_path):
    from skdeep.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "cache")
    common = dict(model="timm:test_resnet", weights=None, image_size=32, cache=cache, num_workers=0)
    ImageEncoder(**common).fit_transform(IMAGES)
    assert len(cache) == len(IMAGES)
    ImageEncoder(**common, pooling="model").fit_transform(IMAGES)
    assert cache.stats.hits == len(IMAGES) and len(cache) == len(IMAGES)  # "auto" resolved to "model"
    ImageEncoder(**common, pooling="avg").fit_transform(IMAGES)
    assert len(cache) == 2 * len(IMAGES)  # another setting, another key


def test_torchvision_model_pooling_drops_the_last_linear_layer():
    import torchvision

    enc = ImageEncoder(**{**TINY_TV, "pooling": "model"}).fit(IMAGES)
    default = ImageEncoder(**TINY_TV).fit(IMAGES)  # "auto" is "avg" for torchvision
    assert default.get_feature_names_out()[0] == "layer4_avg0"
    # A ResNet's head is global average pooling: both agree.
    np.testing.assert_allclose(enc.transform(IMAGES), default.transform(IMAGES), rtol=1e-5, atol=1e-5)

    mobile = ImageEncoder("mobilenet_v3_small", weights=None, image_size=32, pooling="model", cache=None, num_workers=0)
    out = mobile.fit_transform(IMAGES)
    torch.manual_seed(0)  # the encoder's random init is seeded with random_state=0
    reference = torchvision.models.mobilenet_v3_small(weights=None).eval()
    reference.classifier[3] = torch.nn.Identity()  # its pre-logits: the 1024-d hidden layer of its head
    with torch.inference_mode():
        expected = reference(_model_input(mobile)).numpy()
    assert out.shape == (len(IMAGES), 1024)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_model_pooling_takes_no_layers():
    with pytest.raises(ValueError, match=r"pooling='model'.*takes no layers.*'avg'"):
        ImageEncoder(**{**TINY_TV, "layers": "layer3", "pooling": "model"}).fit(IMAGES)
    # "auto" with layers pools them.
    assert ImageEncoder(**{**TINY_TV, "layers": "layer3"}).fit(IMAGES).get_feature_names_out()[0] == "layer3_avg0"


# ---------------------------------------------------------------------------------------------
# hf-hub: ids


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hugging Face cache holding one timm export, ``acme/tiny-vit`` (what the Hub download leaves)."""
    from huggingface_hub import constants
    from timm.models._hub import save_for_hf

    root = tmp_path / "hub"
    repo = root / "models--acme--tiny-vit"
    snapshot = repo / "snapshots" / "c0ffee"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    torch.manual_seed(3)
    model = timm.create_model("test_vit", num_classes=7).eval()
    save_for_hf(model, str(snapshot))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SKDEEP_ALLOW_DOWNLOAD", raising=False)
    return root


def test_hf_hub_ids_load_offline_from_the_cache(hub):
    enc = ImageEncoder("hf-hub:acme/tiny-vit", cache=None, num_workers=0)
    out = enc.fit_transform(IMAGES)
    assert enc.model_origin_ == "hf-cache"
    # timm's own loader, offline from the same cache, without its classifier.
    reference = timm.create_model("hf-hub:acme/tiny-vit", pretrained=True, num_classes=0, cache_dir=str(hub)).eval()
    with torch.inference_mode():
        expected = reference(_model_input(enc)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # The preprocessing comes from the export's config.json (160 px, crop_pct 0.95, bicubic).
    spec = resolve_image_model("hf-hub:acme/tiny-vit").spec
    assert spec.arch == "test_vit" and spec.preprocess.crop == (160, 160) and spec.preprocess.resize == (168,)
    assert spec.preprocess.interpolation == "bicubic"


def test_hf_hub_errors(hub):
    with pytest.raises(ModelNotFoundError, match=re.escape(str(hub))) as info:
        ImageEncoder("hf-hub:acme/absent", cache=None).fit(IMAGES)
    assert "HF_HUB_OFFLINE" in str(info.value) and "pretrained=True" in str(info.value)
    with pytest.raises(ValueError, match="not a Hugging Face Hub id"):
        resolve_image_model("hf-hub:../etc/passwd")
    with pytest.raises(ValueError, match="names its weights already"):
        resolve_image_model("hf-hub:acme/tiny-vit", weights="in1k")
    assert resolve_image_model("hf-hub:acme/tiny-vit", weights=None).origin == "random-init"


def test_model_args_travel_in_the_spec_and_old_specs_still_load(hub):
    spec = resolve_image_model("hf-hub:acme/tiny-vit").spec
    assert spec.model_args["global_pool"] == "token"
    assert ImageModelSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "model_args"}  # a bundle saved before model_args
    assert ImageModelSpec.from_dict(old).model_args == {}
    with pytest.raises(ValueError, match="Bad model arguments"):
        ImageModelSpec.from_dict({**spec.to_dict(), "model_args": {"__class__": 1}})


def test_misspelt_names_suggest_each_name_once():
    with pytest.raises(ValueError, match="Did you mean") as info:
        ImageEncoder("resnt18", cache=None).fit(IMAGES)
    suggested = re.search(r"Did you mean one of (\[.*\])", str(info.value)).group(1)
    names = ast.literal_eval(suggested)
    assert "resnet18" in names and len(names) == len(set(names))
