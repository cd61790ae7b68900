"""FineTunedImageClassifier: fine-tune a pretrained CNN or ViT on labelled images, with the scikit-learn API.

The transfer-learning recipe: a new linear head on the backbone's pooled features, trained first on
frozen features, then the backbone's stages unfrozen from the top one at a time (``unfreeze``),
each with a lower learning rate than the one above it; AdamW, label smoothing, data augmentation,
early stopping on a held-out split. The backbone and its preprocessing are
:class:`~skdeep.ImageEncoder`'s (same names, same weights, same image handling); after fitting, the
tuned backbone *is* an ImageEncoder (``encoder_``): its features are cached under the tuned
weights' fingerprint and feed the head, or any other estimator (``transform``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._sklearn import DocLinkMixin, Interval, StrOptions, _fit_context
from ..devices import DTYPE_NAMES
from ..image_io import DEFAULT_MAX_PIXELS
from ..sources import FingerprintMismatchError, ModelNotFoundError, restore_bundle
from . import _heads, _image_training, _lora, _training
from ._image_training import _backbone_root
from ._weights import (
    apply_delta,
    bytes_to_tensors,
    changed_tensors,
    cpu_state,
    publish_image_weights,
    tensors_to_bytes,
)
from .augment import IMAGE_AUGMENTATIONS, image_augmentation

__all__ = ["FineTunedImageClassifier"]


class FineTunedImageClassifier(
    DocLinkMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClassifierMixin, BaseEstimator
):
    """Fine-tune a pretrained torchvision or timm image model on labelled images.

    A new linear head (one per task for a 2-D ``y``) is trained on the backbone's pooled features;
    with ``unfreeze="gradual"`` the backbone's stages are then unfrozen from the top, one at a time,
    each at a lower learning rate than the stage above it. Frozen stages stay in eval mode (their
    batch-norm statistics do not move). A fitted model is also a transformer: ``transform(X)``
    returns the tuned penultimate features, and :meth:`as_encoder` the tuned backbone as an
    :class:`~skdeep.ImageEncoder`.

    Parameters
    ----------
    model : str, default="efficientnet_lite0"
        Architecture, as for :class:`~skdeep.ImageEncoder`: a torchvision model, a timm model
        (``"timm:convnext_tiny"``), or the packaged ``"efficientnet_lite0"``.

    weights : "DEFAULT", str, path-like or None, default="DEFAULT"
        Pretrained weights to start from, as for :class:`~skdeep.ImageEncoder` (a checkpoint path
        works too; None is a random initialisation, seeded by ``random_state`` when it is an int).

    unfreeze : {"gradual", "all", "none"}, default="gradual"
        ``"gradual"``: the head alone for ``head_epochs`` epochs, then one more backbone stage from
        the top every ``stage_epochs`` epochs. ``"all"``: every layer from the start. ``"none"``: the
        head alone (a linear probe trained by gradient descent, with augmentation if asked).

    max_epochs : int, default=20
        Passes over the training images. With ``unfreeze="gradual"``, a backbone of 9 stages
        (EfficientNet) is fully unfrozen after 10 epochs; the rest tune everything together.

    head_epochs : int, default=1
        ``unfreeze="gradual"``: epochs of head-only training before the first stage unfreezes.

    stage_epochs : int, default=1
        ``unfreeze="gradual"``: epochs between two unfreezing steps.

    batch_size : int, default=32
        Images per training step and per inference batch.

    learning_rate : float, default=1e-3
        AdamW learning rate of the head; warmed up over the first 5% of steps, then cosine-decayed.

    lr_decay : float, default=0.8
        Discriminative learning rates: stage k from the top trains at
        ``learning_rate * lr_decay**k`` (1 gives every layer the head's rate). Of 0.6, 0.7, 0.8, 0.9
        and 1.0, 0.8 did best on Fashion-MNIST at 100 images per class (``bench_finetune_images.py``):
        lower rates leave the bottom stages of a 9-stage backbone nearly frozen.

    weight_decay : float, default=0.05
        AdamW's decoupled weight decay (not applied to biases and normalisation weights).

    label_smoothing : float, default=0.1
        Of the cross-entropy.

    augment : {"light", "trivialaugment", "randaugment", "autoaugment"}, callable or None, default=None
        Data augmentation of training images (see :mod:`skdeep.finetune.augment`); never applied
        to validation images, ``transform`` or ``predict``.

    task_weights : array-like of shape (n_tasks,), default=None
        Weight of each task's loss for a 2-D ``y``; None weighs them equally.

    probe_init : bool, default=True
        First fit the head(s) to convergence on the frozen features (full-batch L-BFGS, with the
        L2 penalty that does best on the held-out images; LP-FT, Kumar et al., 2022), so that
        fine-tuning starts from a trained head instead of a random one, whose noisy gradients
        would distort the pretrained features. Costs one pass of the frozen backbone over the
        training images.

    train_bn_stats : bool, default=False
        Whether the batch-norm layers of unfrozen stages update their running statistics. False
        keeps every batch norm in inference mode (its scale and shift still train), as Keras'
        transfer-learning guide recommends for small data sets: the features do not jump when a
        stage unfreezes, and small or unusual batches do not corrupt the pretrained statistics.
        Frozen stages never update theirs.

    lora : bool, default=False
        Train LoRA adapters on the backbone's linear and convolution layers instead of its
        weights (``unfreeze`` then applies to the adapters). Only the adapters are pickled.

    lora_rank : int, default=8
        Rank of the LoRA adapters (``lora=True``).

    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the images (stratified on the first task), measure the
        accuracy after every epoch, keep the best epoch's weights, and stop after
        ``n_iter_no_change`` epochs without improvement (counted again when a stage unfreezes).

    validation_fraction : float, default=0.1
        Share of the training images held out for early stopping.

    n_iter_no_change : int, default=3
        Epochs without a better validation score before training stops.

    pooling : {"avg", "max", "gem", "cls"}, default="avg"
        How the last feature map becomes the features the head sees (as for ImageEncoder).

    image_size : int, default=None
        Side of the square crop the model sees; None keeps the weights' own (224 for most).

    image_shape : tuple of int, default=None
        Shape of flat pixel rows in ``X``, as for :class:`~skdeep.ImageEncoder`.

    pixel_range : {"auto", 1, 255}, default="auto"
        Scale of array pixels, as for :class:`~skdeep.ImageEncoder`.

    max_pixels : int, default=DEFAULT_MAX_PIXELS
        Largest image (width times height) read, as for :class:`~skdeep.ImageEncoder`.

    dtype : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Compute dtype of training and of the tuned encoder, as for the encoders (autocast; the
        weights stay float32). ``"auto"``: bfloat16 on CUDA (float16 with loss scaling where
        bfloat16 is missing), float32 on the CPU. ``"bfloat16"`` on a CPU uses bfloat16 autocast
        where the CPU supports it (:func:`skdeep.devices.cpu_supports_bf16`), else float32 with a
        warning; ``"float16"`` needs a GPU.

    device : str, default="auto"
        ``"auto"`` trains on CUDA, then MPS, then the CPU (as for the encoders).

    num_workers : int or "auto", default="auto"
        Threads decoding images.

    random_state : int, RandomState instance or None, default=None
        Seeds the validation split, shuffling, augmentation and the heads' initialisation: on the
        CPU, two fits with the same int seed give identical weights.

    show_progress : bool, default=False
        A progress bar over epochs with the training loss and the validation score.

    cache : "auto", str, path-like, EmbeddingCache, bool or None, default="auto"
        Feature cache of the tuned encoder (keyed by the tuned weights' fingerprint).

    Attributes
    ----------
    classes_ : ndarray, or list of ndarray for a 2-D ``y``
    n_outputs_ : int
        Number of tasks (columns of ``y``).
    encoder_ : ImageEncoder
        The tuned backbone; ``encoder_.weights`` is ``"finetuned:<fingerprint>"``.
    heads_ : list of (ndarray, ndarray)
        Weight (n_classes, n_features) and bias of each task's head.
    history_ : list of dict
        One entry per epoch: ``epoch``, ``unfrozen`` (stages trained), ``lr`` (the head's),
        ``train_loss``, ``val_loss`` and ``val_score`` (mean accuracy over tasks; None without
        early stopping), ``seconds``.
    best_epoch_ : int
        Epoch whose weights were kept.
    probe_l2_ : float or None
        L2 penalty of the head's first fit on frozen features (``probe_init``).
    layer_groups_ : list of list of str
        The backbone's stages, bottom first (what ``unfreeze`` counts).
    tuned_fingerprint_, base_fingerprint_ : str
    n_features_out_ : int

    See Also
    --------
    ImageEncoder : Frozen features.
    FineTunedTextClassifier : The same for texts.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeep.finetune import FineTunedImageClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8)
    >>> y = np.repeat([0, 1], 12)
    >>> clf = FineTunedImageClassifier("timm:test_resnet", weights=None, image_size=32, max_epochs=2,
    ...                                cache=None, random_state=0).fit(X, y)
    >>> clf.predict(X[:3]).shape
    (3,)
    """

    _parameter_constraints: dict = {
        "model": [str],
        "weights": [str, os.PathLike, None],
        "unfreeze": [StrOptions(set(_training.UNFREEZE_MODES))],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "head_epochs": [Interval(Integral, 0, None, closed="left")],
        "stage_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "lr_decay": [Interval(Real, 0, 1, closed="right")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "augment": [StrOptions(set(IMAGE_AUGMENTATIONS)), callable, None],
        "task_weights": ["array-like", None],
        "probe_init": ["boolean"],
        "train_bn_stats": ["boolean"],
        "lora": ["boolean"],
        "lora_rank": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "pooling": [StrOptions({"avg", "max", "gem", "cls"})],
        "image_size": [Interval(Integral, 1, None, closed="left"), None],
        "image_shape": [tuple, list, None],
        "pixel_range": [tuple, list, None],
        "max_pixels": [Interval(Integral, 1, None, closed="left"), None],
        "dtype": [StrOptions(set(_training.TRAIN_DTYPES))],
        "device": [str, None],
        "num_workers": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "random_state": ["random_state"],
        "show_progress": ["boolean"],
        "cache": "no_validation",
    }

    def __init__(
        self,
        model="efficientnet_lite0",
        weights="DEFAULT",
        *,
        unfreeze="gradual",
        max_epochs=20,
        head_epochs=1,
        stage_epochs=1,
        batch_size=32,
        learning_rate=1e-3,
        lr_decay=0.8,
        weight_decay=0.05,
        label_smoothing=0.1,
        augment=None,
        task_weights=None,
        probe_init=True,
        train_bn_stats=False,
        lora=False,
        lora_rank=8,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=3,
        pooling="avg",
        image_size=None,
        image_shape=None,
        pixel_range=None,
        max_pixels=DEFAULT_MAX_PIXELS,
        dtype="auto",
        device="auto",
        num_workers="auto",
        random_state=None,
        show_progress=False,
        cache="auto",
    ):
        self.model = model
        self.weights = weights
        self.unfreeze = unfreeze
        self.max_epochs = max_epochs
        self.head_epochs = head_epochs
        self.stage_epochs = stage_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.lr_decay = lr_decay
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing
        self.augment = augment
        self.task_weights = task_weights
        self.probe_init = probe_init
        self.train_bn_stats = train_bn_stats
        self.lora = lora
        self.lora_rank = lora_rank
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.pooling = pooling
        self.image_size = image_size
        self.image_shape = image_shape
        self.pixel_range = pixel_range
        self.max_pixels = max_pixels
        self.dtype = dtype
        self.device = device
        self.num_workers = num_workers
        self.random_state = random_state
        self.show_progress = show_progress
        self.cache = cache

    # ------------------------------------------------------------------ encoders
    def _init_seed(self) -> int:
        """Seed of a random-init base model (``weights=None``)."""
        return int(self.random_state) if isinstance(self.random_state, Integral) else 0

    def _encoder(self, weights, **kwargs):
        from ..image import ImageEncoder

        return ImageEncoder(
            self.model,
            weights,
            pooling=self.pooling,
            batch_size=self.batch_size,
            device=self.device,
            num_workers=self.num_workers,
            image_size=self.image_size,
            image_shape=self.image_shape,
            pixel_range=self.pixel_range,
            max_pixels=self.max_pixels,
            random_state=self._init_seed(),
            **kwargs,
        )

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fine-tune the backbone and train the head(s) on ``(X, y)``.

        Parameters
        ----------
        X : images
            Anything :class:`~skdeep.ImageEncoder` accepts (paths, bytes, PIL images, arrays, ...).
        y : array-like of shape (n_samples,) or (n_samples, n_tasks)
            Labels; one column per task for multi-task training.

        Returns
        -------
        self : FineTunedImageClassifier
            The fitted classifier.
        """
        import torch

        from ..backends.image import ImageBackend
        from ..devices import resolve_device

        base_encoder = self._encoder(self.weights, cache=None)
        items = base_encoder._validate_input(X, reset=True)
        if hasattr(base_encoder, "n_features_in_"):
            self.n_features_in_ = base_encoder.n_features_in_
        codes, classes, multi = _heads.encode_targets(y, len(items), "image")
        task_weights = _heads.check_task_weights(self.task_weights, codes.shape[1])
        rng = check_random_state(self.random_state)
        train_idx, val_idx = _training.validation_split(
            codes[:, 0], self.validation_fraction, rng, enabled=self.early_stopping, what="images"
        )
        source = base_encoder._source()
        device = resolve_device(self.device)
        precision = _training.resolve_train_precision(self.dtype, device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(rng.randint(2**31 - 1))
            backend = ImageBackend(source, device, "fp32", None, self.pooling, self.image_size)
            augment = image_augmentation(self.augment, backend.preprocess.crop)
            pixels = self._decode(items, backend.preprocess, base_encoder._num_workers(len(items)))
            heads, adapter = _image_training.train_image_model(
                self, backend, pixels, codes, classes, task_weights, train_idx, val_idx, rng, augment, device, precision
            )

        self.classes_ = classes if multi else classes[0]
        self.n_outputs_ = len(classes)
        self.multi_output_ = multi
        self.heads_ = _heads.head_arrays(heads)
        self.base_fingerprint_ = source.fingerprint
        self._publish(backend, source, adapter)
        inference_dtype = DTYPE_NAMES[precision] if device.type != "cpu" else "float32"
        self.encoder_ = self._encoder(self.tuned_weights_, cache=self.cache, dtype=inference_dtype).fit(X)
        self.n_features_out_ = self.encoder_.n_features_out_
        return self

    def _decode(self, items, preprocess, workers: int):
        """Every image decoded, resized and cropped once: uint8 (n, h, w, 3) on the CPU."""
        import torch

        def one(item):
            return preprocess.geometric(item.load(item.max_pixels))

        if workers > 0 and len(items) > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skdeep-decode") as pool:
                return torch.stack(list(pool.map(one, items)))
        return torch.stack([one(item) for item in items])

    # ------------------------------------------------------------------ tuned weights
    def _tuned_state(self, source, adapter, trained_root=None):
        """The tuned model's full state dict, built on the CPU from the base model (deterministic)."""
        from ..backends.image import build_model

        base = build_model(source, self.image_size)
        if adapter is not None:
            return cpu_state(_lora.merge_and_unwrap(_lora.load_into(base, adapter))), None
        base_state = cpu_state(base)
        return apply_delta(base_state, trained_root), base_state

    def _publish(self, backend, source, adapter) -> None:
        """Install the tuned weights (fingerprinted), and choose what a pickle carries."""
        root, _ = _backbone_root(backend.module.body)
        tuned, base_state = self._tuned_state(source, adapter, None if adapter is not None else cpu_state(root))
        data = tensors_to_bytes(tuned)
        if adapter is not None:
            self._payload = {"kind": "lora", "adapter": adapter}
        else:
            delta = tensors_to_bytes(changed_tensors(tuned, base_state))
            self._payload = {"kind": "delta", "tensors": delta} if len(delta) < len(data) else {"kind": "full"}
        weights, installed = publish_image_weights(data, source, self.model)
        self.tuned_weights_ = weights
        self.tuned_fingerprint_ = installed.fingerprint

    def _restore_weights(self, bundle) -> None:
        """Rebuild and install the tuned weights described by a loaded pickle (checked by fingerprint)."""
        from ..backends.image import build_model

        payload = self._payload
        kind = payload.get("kind") if isinstance(payload, dict) else None
        if kind == "full":
            if not isinstance(bundle, dict) or bundle.get("fingerprint") != self.tuned_fingerprint_:
                raise FingerprintMismatchError("The bundled tuned weights are not the ones this model was fitted with.")
            restore_bundle(bundle, ("ImageEncoder", self.model, self.tuned_weights_, None))
            return
        if kind not in ("delta", "lora"):
            raise ValueError(f"Unknown tuned-weights payload {str(kind)[:40]!r} in a pickled FineTunedImageClassifier.")
        try:
            source = self._encoder(self.weights, cache=None)._source()
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(
                f"This FineTunedImageClassifier stores its tuned weights as changes to the base model "
                f"{self.model!r}, which is not available here: {exc}"
            ) from exc
        if source.fingerprint != self.base_fingerprint_:
            raise FingerprintMismatchError(
                f"The base model {self.model!r} found here has fingerprint {source.fingerprint}, but fine-tuning "
                f"started from {self.base_fingerprint_}: restore the original base weights."
            )
        if kind == "lora":
            tuned, _ = self._tuned_state(source, _lora.check_adapter(payload["adapter"]))
        else:
            tuned = apply_delta(cpu_state(build_model(source, self.image_size)), bytes_to_tensors(payload["tensors"]))
        publish_image_weights(tensors_to_bytes(tuned), source, self.model, expected=self.tuned_fingerprint_)

    # ------------------------------------------------------------------ inference
    def transform(self, X):
        """Fine-tuned penultimate features of ``X`` (pooled backbone output), cached by content.

        Parameters
        ----------
        X : images
            Anything :class:`~skdeep.ImageEncoder` accepts (paths, bytes, PIL images, arrays, ...).

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out), float32
            One feature row per image.
        """
        check_is_fitted(self, "encoder_")
        return self.encoder_.transform(X)

    def fit_transform(self, X, y=None, **fit_params):
        """Fine-tune on ``(X, y)``, then return the tuned features of ``X``.

        Parameters
        ----------
        X : images
            Anything :class:`~skdeep.ImageEncoder` accepts (paths, bytes, PIL images, arrays, ...).
        y : array-like of shape (n_samples,) or (n_samples, n_tasks)
            Labels; one column per task for multi-task training.
        **fit_params : dict
            Not used; accepted for scikit-learn's API.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out), float32
            One feature row per image.
        """
        return self.fit(X, y).transform(X)

    def _logits(self, X):
        check_is_fitted(self, "heads_")
        return _heads.decision(self.transform(X), self.heads_)

    def _classes_list(self):
        return self.classes_ if self.multi_output_ else [self.classes_]

    def decision_function(self, X):
        """Raw scores (logits) of the head(s).

        Parameters
        ----------
        X : images
            Anything :class:`~skdeep.ImageEncoder` accepts (paths, bytes, PIL images, arrays, ...).

        Returns
        -------
        logits : ndarray of shape (n_samples, n_classes), or a list of them (one per task)
            One column per class, in the order of ``classes_``.
        """
        logits = self._logits(X)
        return logits if self.multi_output_ else logits[0]

    def predict(self, X):
        """Predict the class of each image.

        Parameters
        ----------
        X : images
            Anything :class:`~skdeep.ImageEncoder` accepts (paths, bytes, PIL images, arrays, ...).

        Returns
        -------
        y_pred : ndarray of shape (n_samples,), or (n_samples, n_tasks) for a 2-D ``y``
            The predicted labels.
        """
        return _heads.predictions(self._logits(X), self._classes_list(), self.multi_output_)

    def predict_proba(self, X):
        """Class probabilities from the head(s).

        Parameters
        ----------
        X : images
            Anything :class:`~skdeep.ImageEncoder` accepts (paths, bytes, PIL images, arrays, ...).

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes), or a list of them (one per task)
            Probability of each class (columns in the order of ``classes_``).
        """
        probas = [_heads.softmax(z) for z in self._logits(X)]
        return probas if self.multi_output_ else probas[0]

    def predict_log_proba(self, X):
        """Logarithm of the class probabilities of :meth:`predict_proba`.

        Parameters
        ----------
        X : images
            Anything :class:`~skdeep.ImageEncoder` accepts (paths, bytes, PIL images, arrays, ...).

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes), or a list of them (one per task)
            Log-probability of each class (columns in the order of ``classes_``).
        """
        proba = self.predict_proba(X)
        return [np.log(p) for p in proba] if self.multi_output_ else np.log(proba)

    def score(self, X, y, sample_weight=None):
        """Accuracy; for a 2-D ``y`` the share of images with every task right (as MultiOutputClassifier).

        Parameters
        ----------
        X : images
            Anything :class:`~skdeep.ImageEncoder` accepts (paths, bytes, PIL images, arrays, ...).
        y : array-like of shape (n_samples,) or (n_samples, n_tasks)
            True labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights (1-D ``y`` only).

        Returns
        -------
        score : float
            Mean accuracy.
        """
        check_is_fitted(self, "heads_")
        if not self.multi_output_:
            return super().score(X, y, sample_weight=sample_weight)
        return _heads.subset_accuracy(y, self.predict(X), True)

    @property
    def _n_features_out(self):
        check_is_fitted(self, "n_features_out_")
        return self.n_features_out_

    def as_encoder(self, *, bundle_weights=True):
        """The tuned backbone as a fitted :class:`~skdeep.ImageEncoder`.

        Parameters
        ----------
        bundle_weights : bool, default=True
            Whether the encoder pickles with the tuned weights inside (else by reference, which
            loads only in a process that has them).

        Returns
        -------
        encoder : ImageEncoder
            A fitted encoder whose features are this model's :meth:`transform`.
        """
        check_is_fitted(self, "encoder_")
        enc = clone(self.encoder_).set_params(bundle_weights=bundle_weights)
        for name in ("model_fingerprint_", "model_origin_", "n_features_out_", "feature_names_out_", "n_features_in_"):
            if hasattr(self.encoder_, name):
                setattr(enc, name, getattr(self.encoder_, name))
        return enc

    def save_checkpoint(self, path):
        """Write the tuned weights as one safetensors file that ``ImageEncoder(model, weights=path)`` loads.

        Parameters
        ----------
        path : str or path-like
            A file that does not exist yet.

        Returns
        -------
        path : pathlib.Path
            The file written.
        """
        import shutil
        from pathlib import Path

        check_is_fitted(self, "encoder_")
        target = Path(path)
        if target.exists():
            raise FileExistsError(f"{str(target)!r} already exists; give a new file for the tuned weights.")
        shutil.copyfile(self.encoder_._source().path, target)
        return target

    # ------------------------------------------------------------------ persistence
    def __getstate__(self):
        from ..sources import bundle_state

        state = dict(super().__getstate__())  # a copy: object.__getstate__ returns the instance's own dict
        encoder = state.pop("encoder_", None)
        if encoder is not None:
            # Stored as plain state and rebuilt after the tuned weights are installed (an encoder
            # checks its weights when unpickled); its cache is the classifier's.
            state["_encoder_state"] = {k: v for k, v in encoder.__getstate__().items() if k != "cache"}
            if self._payload["kind"] == "full":
                state["_tuned_bundle"] = bundle_state(encoder._source())
        return state

    def __setstate__(self, state):
        encoder_state = state.pop("_encoder_state", None)
        bundle = state.pop("_tuned_bundle", None)
        super().__setstate__(state)
        if encoder_state is None:
            return
        from ..image import ImageEncoder

        self._restore_weights(bundle)
        encoder = ImageEncoder.__new__(ImageEncoder)
        encoder.__setstate__({**encoder_state, "cache": self.cache})
        self.encoder_ = encoder

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = True
        tags.non_deterministic = True  # bitwise results depend on the device and thread count
        return tags
