"""FineTunedTextClassifier: adapt a pretrained sentence encoder to labels, with the scikit-learn API.

Training follows SetFit (Tunstall et al., 2022): the encoder is tuned contrastively on pairs of
training texts (same class -> cosine similarity 1, different classes -> 0), then a logistic
regression head is fitted on the tuned embeddings. Alternatives: batch-all triplet loss, or plain
cross-entropy through a linear layer (each objective lives in :mod:`skdeep.finetune.objectives`);
partial unfreezing of the top layers; LoRA adapters (``peft``).

The tuned weights are saved as an ordinary sentence-transformers folder, identified by the
fingerprint of their bytes, and served through a :class:`~skdeep.TextEncoder`: embeddings of the
tuned model are cached under that fingerprint, never confused with the base model's.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    clone,
)
from sklearn.linear_model import LogisticRegression
from sklearn.multioutput import MultiOutputClassifier
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._sklearn import DocLinkMixin, HasMethods, Interval, StrOptions, _fit_context
from ..backends import quiet_loading
from ..devices import resolve_device
from ..sources import FingerprintMismatchError, ModelSource, fingerprint_path, register_model, resolve_text_model
from ..text import TextEncoder, validate_texts
from . import _heads, _lora, _training
from ._weights import TUNED_PREFIX
from .augment import TEXT_AUGMENTATIONS, TextAugmenter, text_augmentation
from .objectives import LOSSES, make_objective


def _encoder_layers(auto_model):
    """The transformer's list of layers: the longest ``ModuleList`` in the model."""
    import torch

    lists = [m for m in auto_model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError(
            f"Cannot find the layers of {type(auto_model).__name__} to unfreeze; use unfreeze_layers=None."
        )
    return max(lists, key=len)


class FineTunedTextClassifier(
    DocLinkMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClassifierMixin, BaseEstimator
):
    """Fine-tune a pretrained sentence encoder on labelled texts, then classify with a linear head.

    With the default ``loss="cosine"`` this is SetFit: the encoder learns from pairs of training
    texts to put texts of the same class close together, and a logistic regression is fitted on
    the tuned embeddings. Works with a handful of examples per class. A fitted model also acts
    as a transformer: ``transform(X)`` returns the tuned embeddings, to feed any estimator.

    Parameters
    ----------
    model : str or path-like, default="all-MiniLM-L6-v2"
        The pretrained sentence-transformers model to start from (as for :class:`~skdeep.TextEncoder`).

    loss : {"cosine", "pairwise", "triplet", "softmax"}, default="cosine"
        Training objective. ``"cosine"``: SetFit's pairs, squared error between the cosine
        similarity and 1 (same class) or 0. ``"pairwise"``: the same squared error over every pair
        within a batch of ``batch_size`` texts (each forward pass serves ``batch_size**2 / 2`` pairs
        instead of ``batch_size / 2``: much cheaper per pair on a CPU). ``"triplet"``: batch-all triplet loss on
        batches of
        labelled texts. ``"softmax"``: cross-entropy of a linear layer on the embedding (classic
        fine-tuning; the layer is discarded, ``head`` is fitted afterwards).

    head : classifier, default=None
        Fitted on the tuned embeddings of all of ``X``. None uses ``LogisticRegression(max_iter=1000)``.

    pairs_per_sample : int, default=20
        ``loss="cosine"``: pairs drawn per training text and epoch (one positive and one negative
        per round; SetFit's ``num_iterations``).

    max_epochs : int, default=1
        Passes over the training pairs (or texts).

    max_steps : int, default=None
        Stop after this many optimiser steps, whatever ``max_epochs`` says.

    batch_size : int, default=16
        Pairs (``"cosine"``) or texts per optimiser step.

    learning_rate : float, default=None
        AdamW learning rate, warmed up over the first 10% of steps and decayed linearly.
        None means 2e-5, or 2e-4 with ``lora=True``.

    unfreeze_layers : int, default=None
        Train only the top ``unfreeze_layers`` transformer layers (embeddings and lower layers stay
        frozen). None trains all weights. Ignored with ``lora=True``.

    lora : bool, default=False
        Train low-rank adapters (``peft``) on every linear layer instead of the weights. The
        adapters stay adapters: a pickle holds them (a few hundred kilobytes), the peft config and
        a reference to the base model, never the merged weights. Inference runs on the weights
        with the adapters merged in (no extra cost per text), rebuilt from the base model and the
        adapters after fitting and again when a pickle is loaded, and checked against the
        fingerprint recorded at fit. :meth:`save_adapter` writes them as a peft adapter folder.

    lora_rank : int, default=8
        Rank of the LoRA adapters.

    augment : {"delete", "swap", "eda"}, TextAugmenter, callable or None, default=None
        Random label-preserving edits of the training texts each time they are embedded for
        training (see :mod:`skdeep.finetune.augment`); never applied to validation, ``transform``
        or ``predict``. Presets draw from ``random_state``.

    task_weights : array-like of shape (n_tasks,), default=None
        For a 2-D ``y``: weight of each task's loss (None: equal).

    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the texts (stratified on the first task); every ``eval_every`` steps
        measure the loss on them and keep the best weights; stop after ``n_iter_no_change``
        evaluations without improvement. Needs at least 2 texts per class in the training part;
        otherwise a warning is given and all texts are used for training.

    validation_fraction : float, default=0.15
        Share of the texts held out for early stopping (at least one per class). They are
        still used to fit ``head``.

    n_iter_no_change : int, default=3
        Evaluations without improvement before training stops.

    eval_every : int, default=None
        Steps between evaluations; None evaluates 8 times over the planned training.

    max_length : int, default=None
        Tokens kept per text, in training and inference. None keeps the model's own limit.

    device : str, default="auto"
        Where to train and embed: ``"auto"`` uses CUDA, then MPS, then the CPU.

    random_state : int, RandomState instance or None, default=None
        Seeds the validation split, pair sampling, shuffling, dropout and the head (for
        reproducible fits on one machine and device).

    show_progress : bool, default=False
        Show a progress bar over training steps with the running loss.

    cache : "auto", str, path-like, EmbeddingCache, bool or None, default="auto"
        Embedding cache of the tuned encoder (see :class:`~skdeep.TextEncoder`); its entries are
        keyed by the tuned weights' fingerprint.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,), or list of ndarray for a 2-D ``y``
    n_outputs_ : int
        Number of tasks (columns of ``y``); with several, ``head_`` is a
        :class:`~sklearn.multioutput.MultiOutputClassifier` and ``predict`` returns one column per task.
    adapter_ : dict or None
        With ``lora=True``: the trained LoRA adapter (``config`` and safetensors ``weights``).
    encoder_ : TextEncoder
        Encoder of the tuned weights; its ``model`` is ``"finetuned:<fingerprint>"``.
    head_ : classifier
        The fitted head.
    tuned_fingerprint_ : str
        Fingerprint of the tuned weights.
    base_fingerprint_ : str
        Fingerprint of the model training started from.
    n_features_out_ : int
        Embedding dimension.
    history_ : list of dict
        One entry per evaluation: ``step``, ``train_loss`` (mean since the last evaluation) and
        ``val_loss`` (None without early stopping).
    n_steps_ : int
        Optimiser steps taken.
    best_step_ : int
        Step whose weights were kept.

    See Also
    --------
    TextEncoder : Frozen features.
    ZeroShotClassifier : No training examples at all.

    Notes
    -----
    The tuned weights travel with the estimator: pickling it stores the model's files (tens of
    megabytes for MiniLM, through ``TextEncoder(bundle_weights=True)``), and loading it unpacks them once
    under ``$SKDEEP_HOME/bundles``. :meth:`save_encoder` writes them as a folder that
    ``TextEncoder(path)`` loads.

    Training on a CPU is slow (a few steps per second for MiniLM); keep ``max_steps`` modest
    there, or use a GPU.

    Examples
    --------
    >>> from skdeep import FineTunedTextClassifier
    >>> clf = FineTunedTextClassifier(max_steps=50, random_state=0)  # doctest: +SKIP
    >>> clf.fit(texts, y).predict(["what a film"])  # doctest: +SKIP
    """

    _parameter_constraints: dict = {
        "model": [str, os.PathLike],
        "loss": [StrOptions(set(LOSSES))],
        "head": [HasMethods(["fit", "predict"]), None],
        "pairs_per_sample": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "max_steps": [Interval(Integral, 1, None, closed="left"), None],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither"), None],
        "unfreeze_layers": [Interval(Integral, 1, None, closed="left"), None],
        "lora": ["boolean"],
        "lora_rank": [Interval(Integral, 1, None, closed="left")],
        "augment": [StrOptions(set(TEXT_AUGMENTATIONS)), TextAugmenter, callable, None],
        "task_weights": ["array-like", None],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "eval_every": [Interval(Integral, 1, None, closed="left"), None],
        "max_length": [Interval(Integral, 1, None, closed="left"), None],
        "device": [str, None],
        "random_state": ["random_state"],
        "show_progress": ["boolean"],
        "cache": "no_validation",
    }

    def __init__(
        self,
        model="all-MiniLM-L6-v2",
        *,
        loss="cosine",
        head=None,
        pairs_per_sample=20,
        max_epochs=1,
        max_steps=None,
        batch_size=16,
        learning_rate=None,
        unfreeze_layers=None,
        lora=False,
        lora_rank=8,
        augment=None,
        task_weights=None,
        early_stopping=True,
        validation_fraction=0.15,
        n_iter_no_change=3,
        eval_every=None,
        max_length=None,
        device="auto",
        random_state=None,
        show_progress=False,
        cache="auto",
    ):
        self.model = model
        self.loss = loss
        self.head = head
        self.pairs_per_sample = pairs_per_sample
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.unfreeze_layers = unfreeze_layers
        self.lora = lora
        self.lora_rank = lora_rank
        self.augment = augment
        self.task_weights = task_weights
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.eval_every = eval_every
        self.max_length = max_length
        self.device = device
        self.random_state = random_state
        self.show_progress = show_progress
        self.cache = cache

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y):
        """Tune the encoder on ``(X, y)``, then fit the head on the tuned embeddings.

        Parameters
        ----------
        X : list, array or Series of str
            Training texts.
        y : array-like of shape (n_samples,) or (n_samples, n_tasks)
            Labels; one column per task for multi-task training (one shared encoder, one
            objective and one head per task).

        Returns
        -------
        self : object
            The fitted classifier.
        """
        import torch

        texts = validate_texts(X)
        y = np.asarray(y)
        codes, _, multi = _heads.encode_targets(y, len(texts), "text")
        task_weights = _heads.check_task_weights(self.task_weights, codes.shape[1])
        if not multi:
            codes = codes[:, 0]
        rng = check_random_state(self.random_state)
        train_idx, val_idx = _training.validation_split(
            codes if not multi else codes[:, 0],
            self.validation_fraction,
            rng,
            enabled=self.early_stopping,
            what="texts",
        )
        augment = text_augmentation(self.augment, rng)

        source = resolve_text_model(self.model)
        device = resolve_device(self.device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(rng.randint(2**31 - 1))
            st_model, lora_config = self._load_trainable(source, device)
            state = self._train(st_model, texts, codes, task_weights, train_idx, val_idx, rng, device, augment)
            self.adapter_ = _lora.extract(st_model[0].auto_model, lora_config) if self.lora else None
        self.history_, self.n_steps_, self.best_step_ = state

        self.base_fingerprint_ = source.fingerprint
        if self.adapter_ is not None:
            # Served weights are rebuilt from the base model and the adapter, as a loaded pickle does.
            del st_model
            st_model = self._merged_model(source)
        self._publish(st_model)
        del st_model
        self.n_features_out_ = self.encoder_.n_features_out_
        embeddings = self.encoder_.transform(texts)
        head = clone(self.head) if self.head is not None else LogisticRegression(max_iter=1000)
        if "random_state" in head.get_params():
            head.set_params(random_state=rng.randint(2**31 - 1))
        if multi:
            head = MultiOutputClassifier(head)
        self.head_ = head.fit(embeddings, y)
        self.classes_ = self.head_.classes_
        self.n_outputs_ = codes.shape[1] if multi else 1
        self.multi_output_ = multi
        return self

    def _merged_model(self, source: ModelSource):
        """The base sentence-transformers model with this estimator's LoRA adapter merged in (on the CPU)."""
        from sentence_transformers import SentenceTransformer

        with quiet_loading():
            model = SentenceTransformer(source.path, device="cpu", local_files_only=True)
        if self.max_length is not None:
            model.max_seq_length = int(self.max_length)
        _lora.merge_and_unwrap(_lora.load_into(model[0].auto_model, self.adapter_))
        return model

    def _load_trainable(self, source: ModelSource, device):
        from sentence_transformers import SentenceTransformer

        with quiet_loading():
            model = SentenceTransformer(source.path, device=str(device), local_files_only=True)
        if self.max_length is not None:
            model.max_seq_length = int(self.max_length)
        auto_model = model[0].auto_model
        lora_config = None
        if self.lora:
            lora_config = _lora.text_config(self.lora_rank)
            # Replaces linear layers inside ``auto_model`` in place, so the sentence-transformers
            # module keeps working; only adapter weights require gradients.
            _lora.inject(auto_model, lora_config)
            for name, p in model.named_parameters():
                p.requires_grad_(_lora.is_lora_param(name))
        elif self.unfreeze_layers is not None:
            layers = _encoder_layers(auto_model)
            if self.unfreeze_layers > len(layers):
                raise ValueError(
                    f"unfreeze_layers={self.unfreeze_layers} but the model {self.model!r} has {len(layers)} layers."
                )
            for p in model.parameters():
                p.requires_grad_(False)
            for layer in layers[len(layers) - self.unfreeze_layers :]:
                for p in layer.parameters():
                    p.requires_grad_(True)
        return model, lora_config

    def _train(self, model, texts, codes, task_weights, train_idx, val_idx, rng, device, augment=None):
        import torch

        def embed(batch_texts):
            features = model.preprocess(batch_texts) if hasattr(model, "preprocess") else model.tokenize(batch_texts)
            features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
            return model(features)["sentence_embedding"]

        def train_embed(batch_texts):
            return embed([augment(t) for t in batch_texts] if augment is not None else batch_texts)

        train_codes = codes[train_idx]
        objective = make_objective(
            self.loss,
            model,
            codes,
            task_weights=task_weights,
            batch_size=self.batch_size,
            pairs_per_sample=self.pairs_per_sample,
            device=device,
        )
        train_texts = [texts[i] for i in train_idx]
        first_epoch = objective.epoch_batches(train_codes, rng)
        planned = len(first_epoch) * self.max_epochs
        total = min(planned, self.max_steps) if self.max_steps is not None else planned
        eval_every = self.eval_every or max(1, math.ceil(total / 8))
        val_loss_fn = self._validation_loss(model, objective, embed, texts, codes, train_idx, val_idx, device)

        params = [p for p in model.parameters() if p.requires_grad] + objective.parameters()
        if not params:
            raise ValueError("Nothing to train: every weight of the model is frozen.")
        lr = self.learning_rate or (2e-4 if self.lora else 2e-5)
        optimizer = torch.optim.AdamW(params, lr=lr)
        warmup = max(1, int(0.1 * total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
        )

        progress = None
        if self.show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=total, desc="Fine-tuning", unit="step")
        history, best, best_step, since_best, running = [], math.inf, 0, 0, []
        best_state = None
        step = 0
        model.train()
        try:
            for epoch in range(self.max_epochs):
                batches = first_epoch if epoch == 0 else objective.epoch_batches(train_codes, rng)
                for batch in batches:
                    loss = objective.batch_loss(train_embed, batch, train_texts, train_codes)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    running.append(float(loss.detach()))
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix(loss=f"{running[-1]:.4f}")
                    if step % eval_every == 0 or step == total:
                        val = val_loss_fn()
                        history.append({"step": step, "train_loss": float(np.mean(running)), "val_loss": val})
                        running = []
                        if val is not None:
                            if val < best - 1e-4:
                                best, best_step, since_best = val, step, 0
                                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                            else:
                                since_best += 1
                            if since_best >= self.n_iter_no_change:
                                break
                    if step >= total:
                        break
                else:
                    continue
                break
        finally:
            if progress is not None:
                progress.close()
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            best_step = step
        model.eval()
        return history, step, best_step

    def _validation_loss(self, model, objective, embed, texts, codes, train_idx, val_idx, device):
        """A function measuring the objective on held-out texts (returning None without early stopping)."""
        import torch

        if len(val_idx) == 0:
            return lambda: None
        val_texts = [texts[i] for i in val_idx]
        val_codes = torch.as_tensor(codes[val_idx], device=device)
        # A fixed sample of training texts, for objectives that place held-out texts relative to them.
        ref_idx = train_idx[: min(len(train_idx), 64)]
        ref_texts = [texts[i] for i in ref_idx]
        ref_codes = torch.as_tensor(codes[ref_idx], device=device)

        def in_batches(items):
            return torch.cat([embed(items[s : s + 64]) for s in range(0, len(items), 64)])

        def measure():
            model.eval()
            try:
                with torch.no_grad():
                    return objective.validation_loss(in_batches, val_texts, val_codes, ref_texts, ref_codes)
            finally:
                model.train()

        return measure

    def _publish(self, st_model, expected: str | None = None) -> str:
        """Save the tuned weights under their fingerprint and serve them through a TextEncoder.

        ``expected``: the fingerprint the weights must have (rebuilding a pickled LoRA model).
        """
        tmp = Path(tempfile.mkdtemp(prefix="skdeep-finetuned-"))
        try:
            st_model.save(str(tmp))
            fingerprint = fingerprint_path(tmp)
            if expected is not None and fingerprint != expected:
                raise FingerprintMismatchError(
                    f"The tuned weights rebuilt from the base model {self.model!r} and the LoRA adapter have "
                    f"fingerprint {fingerprint}, but the fitted model had {expected}: the base model differs from "
                    "the one training started from. Restore it, or re-fit."
                )
            name = f"{TUNED_PREFIX}{fingerprint}"
            register_model(tmp, ("TextEncoder", name), name=name, origin="finetuned")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if expected is not None:
            return name
        self.tuned_fingerprint_ = fingerprint
        self.encoder_ = TextEncoder(
            name,
            batch_size=32,
            device=self.device,
            max_length=self.max_length,
            cache=self.cache,
            show_progress=self.show_progress,
            # LoRA: only the adapter travels (see __getstate__); otherwise the tuned weights do.
            bundle_weights=not self.lora,
        ).fit([""])
        return name

    # ------------------------------------------------------------------ inference
    def transform(self, X):
        """Embed ``X`` with the tuned encoder.

        Parameters
        ----------
        X : list, array or Series of str
            Texts.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out), float32
            One tuned embedding per text.
        """
        check_is_fitted(self, "encoder_")
        return self.encoder_.transform(X)

    def fit_transform(self, X, y=None, **fit_params):
        """Fit to ``(X, y)``, then embed ``X`` with the tuned encoder.

        Parameters
        ----------
        X : list, array or Series of str
            Training texts.
        y : array-like of shape (n_samples,)
            Their labels.
        **fit_params : dict
            Ignored.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out), float32
            One tuned embedding per text.
        """
        return self.fit(X, y).transform(X)

    def predict(self, X):
        """Predict the class of each text with the head, on the tuned embeddings.

        Parameters
        ----------
        X : list, array or Series of str
            Texts.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            The predicted class of each text.
        """
        check_is_fitted(self, "head_")
        return self.head_.predict(self.transform(X))

    def predict_proba(self, X):
        """Class probabilities from the head, on the tuned embeddings.

        Parameters
        ----------
        X : list, array or Series of str
            Texts.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probability of each class (columns in the order of ``classes_``).
        """
        check_is_fitted(self, "head_")
        return self.head_.predict_proba(self.transform(X))

    def predict_log_proba(self, X):
        """Logarithm of the class probabilities of :meth:`predict_proba`.

        Parameters
        ----------
        X : list, array or Series of str
            Texts.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes), or a list of them (one per task)
            Log-probability of each class (columns in the order of ``classes_``).
        """
        proba = self.predict_proba(X)
        return [np.log(p) for p in proba] if isinstance(proba, list) else np.log(proba)

    def score(self, X, y, sample_weight=None):
        """Accuracy; for a 2-D ``y`` the share of texts with every task right (as MultiOutputClassifier).

        Parameters
        ----------
        X : list, array or Series of str
            Texts.
        y : array-like of shape (n_samples,) or (n_samples, n_tasks)
            True labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights.

        Returns
        -------
        score : float
            Mean accuracy (subset accuracy for several tasks).
        """
        check_is_fitted(self, "head_")
        if not getattr(self, "multi_output_", False):
            return super().score(X, y, sample_weight=sample_weight)
        return _heads.subset_accuracy(y, self.predict(X), True)

    def decision_function(self, X):
        """Confidence scores from the head's ``decision_function``, on the tuned embeddings.

        Parameters
        ----------
        X : list, array or Series of str
            Texts.

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
            The head's scores (one column per class, or one for two classes).
        """
        check_is_fitted(self, "head_")
        return self.head_.decision_function(self.transform(X))

    @property
    def _n_features_out(self):
        check_is_fitted(self, "n_features_out_")
        return self.n_features_out_

    def save_encoder(self, path) -> Path:
        """Write the tuned encoder as a sentence-transformers folder that ``TextEncoder(path)`` loads.

        Parameters
        ----------
        path : str or path-like
            A folder that does not exist yet.

        Returns
        -------
        path : pathlib.Path
            The folder written.
        """
        check_is_fitted(self, "encoder_")
        target = Path(path)
        if target.exists():
            raise FileExistsError(f"{str(target)!r} already exists; give a new folder for the tuned encoder.")
        shutil.copytree(self.encoder_._source().path, target)
        return target

    def save_adapter(self, path) -> Path:
        """Write the LoRA adapter as a peft adapter folder (``adapter_config.json``, ``adapter_model.safetensors``).

        ``peft.PeftModel.from_pretrained(base_auto_model, path)`` loads it onto the base model's
        transformer. Only for ``lora=True``.

        Parameters
        ----------
        path : str or path-like
            A folder that does not exist yet.

        Returns
        -------
        path : pathlib.Path
            The adapter folder written.
        """
        check_is_fitted(self, "encoder_")
        if getattr(self, "adapter_", None) is None:
            raise ValueError("save_adapter needs a model fitted with lora=True.")
        target = Path(path)
        if target.exists():
            raise FileExistsError(f"{str(target)!r} already exists; give a new folder for the adapter.")
        _lora.write_peft_folder(self.adapter_, target, base=str(self.model))
        return target

    # ------------------------------------------------------------------ persistence
    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: object.__getstate__ returns the instance's own dict
        if getattr(self, "adapter_", None) is not None and "encoder_" in state:
            # LoRA: the adapter travels, not the merged weights; the encoder is rebuilt after they are.
            encoder = state.pop("encoder_")
            state["_encoder_state"] = {k: v for k, v in encoder.__getstate__().items() if k != "cache"}
        return state

    def __setstate__(self, state):
        encoder_state = state.pop("_encoder_state", None)
        super().__setstate__(state)
        if encoder_state is None:
            return
        source = resolve_text_model(self.model)
        if source.fingerprint != self.base_fingerprint_:
            raise FingerprintMismatchError(
                f"The base model {self.model!r} found here has fingerprint {source.fingerprint}, but LoRA training "
                f"started from {self.base_fingerprint_}: restore the original base model."
            )
        _lora.check_adapter(self.adapter_)
        self._publish(self._merged_model(source), expected=self.tuned_fingerprint_)
        encoder = TextEncoder.__new__(TextEncoder)
        encoder.__setstate__({**encoder_state, "cache": self.cache})
        self.encoder_ = encoder

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.non_deterministic = True  # bitwise results depend on the device and thread count
        return tags
