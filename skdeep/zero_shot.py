"""ZeroShotClassifier: classify texts by their similarity to embedded label descriptions."""

from __future__ import annotations

from numbers import Real

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError

from ._sklearn import DocLinkMixin, HasMethods, Interval, _fit_context
from .engine import l2_normalize
from .text import validate_texts

DEFAULT_TEMPLATE = "This text is about {}."


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(axis=1, keepdims=True)


def _dense_rows(x) -> np.ndarray:
    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"The encoder returned an array of shape {x.shape}; expected (n_texts, n_features).")
    return l2_normalize(x.astype(np.float32, copy=False))


class ZeroShotClassifier(DocLinkMixin, ClassifierMixin, BaseEstimator):
    """Classify texts with no training examples, by similarity to embedded label descriptions.

    Each label is described in words (its name, or one or more descriptions). Every description
    is put into each prompt template, embedded, and the embeddings of a label are averaged into one
    unit vector. A text's class probabilities are the softmax of its cosine similarities to those
    vectors divided by ``temperature``.

    Parameters
    ----------
    encoder : transformer, default=None
        Embeds lists of strings (``transform`` returns one row per text), e.g. a
        :class:`~skdeep.TextEncoder`. It is cloned and fitted on the label prompts in ``fit``; wrap an
        already fitted encoder (such as a fine-tuned one) in ``sklearn.frozen.FrozenEstimator`` to use
        it as it is. None uses ``TextEncoder("all-MiniLM-L6-v2", normalize=True)``, created when
        first needed.

    labels : list or dict, default=None
        The classes and the words that describe them. A list of names (``["sports", "politics"]``;
        each name is also its description), or a dict mapping each class label (any sortable value,
        e.g. ``0``/``1``) to a description or a list of descriptions. None takes the classes from
        ``y`` in ``fit`` and describes each by ``str(label)``.

    template : str, default="This text is about {}."
        Prompt in which ``{}`` is replaced by a label's description. Ignored if ``templates`` is given.

    templates : list of str, default=None
        Several prompts; the label embeddings are averaged over all of them (prompt ensembling).

    temperature : float, default=0.05
        Divides the cosine similarities before the softmax: lower is more confident. It changes
        ``predict_proba``, never ``predict``.

    calibrate : bool, default=False
        If True, ``fit(X, y)`` replaces ``temperature`` by the value minimising the log-loss on
        ``(X, y)`` (this embeds ``X``). The label embeddings themselves are never trained.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.

    label_embeddings_ : ndarray of shape (n_classes, n_features)
        Unit-norm embedding of each class, in the order of ``classes_``.

    temperature_ : float
        Temperature in use (``temperature``, or the calibrated value).

    encoder_ : transformer
        The fitted encoder.

    See Also
    --------
    TextEncoder : The default encoder.
    FineTunedTextClassifier : Learns from labelled examples instead.

    Notes
    -----
    ``fit`` is needed when ``labels`` is None (the classes come from ``y``). When ``labels`` is
    given, ``predict``, ``predict_proba`` and ``decision_function`` also work on an unfitted
    classifier: they embed the label prompts on the fly (with a :class:`~skdeep.TextEncoder` the
    embedding cache makes repeated calls cheap). ``fit(X, y)`` with labels given only checks that every
    value of ``y`` is a known label; it works inside ``cross_val_score`` and ``GridSearchCV`` (for
    instance to choose ``templates`` or ``temperature``).

    Examples
    --------
    >>> from skdeep import ZeroShotClassifier
    >>> clf = ZeroShotClassifier(labels={"pos": "a positive review", "neg": "a negative review"})  # doctest: +SKIP
    >>> clf.predict(["I loved every minute of it"])  # doctest: +SKIP
    array(['pos'], dtype='<U3')
    """

    _parameter_constraints: dict = {
        "encoder": [HasMethods(["transform"]), None],
        "labels": [list, tuple, dict, np.ndarray, None],
        "template": [str],
        "templates": [list, tuple, None],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "calibrate": ["boolean"],
    }

    def __init__(
        self,
        encoder=None,
        labels=None,
        *,
        template=DEFAULT_TEMPLATE,
        templates=None,
        temperature=0.05,
        calibrate=False,
    ):
        self.encoder = encoder
        self.labels = labels
        self.template = template
        self.templates = templates
        self.temperature = temperature
        self.calibrate = calibrate

    # ------------------------------------------------------------------ label prompts
    def _templates(self) -> list[str]:
        templates = list(self.templates) if self.templates is not None else [self.template]
        if not templates:
            raise ValueError("templates is empty; give at least one prompt template containing '{}'.")
        for t in templates:
            if not isinstance(t, str) or "{}" not in t:
                raise ValueError(f"Prompt template {t!r} must be a string containing '{{}}' where the label goes.")
        return templates

    def _label_descriptions(self, y=None) -> tuple[np.ndarray, list[list[str]]]:
        """Sorted classes and, for each, its descriptions."""
        if self.labels is None:
            if y is None:
                raise ValueError(
                    "ZeroShotClassifier needs the label set: give labels=[...] (or a dict label -> description), "
                    "or call fit(X, y) to take the classes from y."
                )
            classes = np.unique(np.asarray(y))
            return classes, [[str(c)] for c in classes]
        if isinstance(self.labels, dict):
            mapping = {}
            for label, desc in self.labels.items():
                descs = [desc] if isinstance(desc, str) else list(desc) if isinstance(desc, (list, tuple)) else None
                if not descs or not all(isinstance(d, str) and d.strip() for d in descs):
                    raise ValueError(
                        f"The description of label {label!r} must be a non-empty string or a list of them, "
                        f"got {desc!r}."
                    )
                mapping[label] = descs
        else:
            if len(set(map(repr, self.labels))) != len(self.labels):
                raise ValueError(f"labels contains duplicates: {list(self.labels)!r}.")
            mapping = {}
            for label in self.labels:
                if not isinstance(label, str) or not label.strip():
                    raise ValueError(
                        f"Label {label!r} in labels=[...] must be a non-empty string (it is embedded as text); "
                        "use a dict {label: description} for other label values."
                    )
                mapping[label] = [label]
        if len(mapping) < 2:
            raise ValueError(f"ZeroShotClassifier needs at least 2 labels, got {list(mapping)!r}.")
        try:
            ordered = sorted(mapping)
        except TypeError as exc:
            raise TypeError(f"Labels must be mutually sortable values, got {list(mapping)!r}.") from exc
        return np.array(ordered), [mapping[label] for label in ordered]

    def _new_encoder(self):
        if self.encoder is None:
            from .text import TextEncoder

            return TextEncoder("all-MiniLM-L6-v2", normalize=True)
        return clone(self.encoder)

    def _embed_labels(self, encoder, descriptions: list[list[str]]) -> np.ndarray:
        templates = self._templates()
        prompts = [t.format(d) for descs in descriptions for d in descs for t in templates]
        vectors = _dense_rows(encoder.transform(prompts))
        out, start = [], 0
        for descs in descriptions:
            n = len(descs) * len(templates)
            out.append(vectors[start : start + n].mean(axis=0))
            start += n
        return l2_normalize(np.stack(out))

    def _state(self):
        """(encoder, classes, label embeddings, temperature) from fit, or built now from ``labels``."""
        if hasattr(self, "label_embeddings_"):
            return self.encoder_, self.classes_, self.label_embeddings_, self.temperature_
        if self.labels is None:
            raise NotFittedError(
                "This ZeroShotClassifier has no labels: call fit(X, y) first, or give labels=[...] to predict "
                "without fit."
            )
        self._validate_params()
        classes, descriptions = self._label_descriptions()
        encoder = self._new_encoder()
        _fit_encoder(encoder, descriptions)
        return encoder, classes, self._embed_labels(encoder, descriptions), float(self.temperature)

    # ------------------------------------------------------------------ sklearn API
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Embed the label descriptions; ``y`` only supplies or checks the label set.

        Parameters
        ----------
        X : list, array or Series of str
            Texts. Only validated, unless ``calibrate=True``.
        y : array-like of shape (n_samples,), default=None
            Labels of ``X``. Required when ``labels`` is None or ``calibrate`` is True.

        Returns
        -------
        self : object
            The fitted classifier.
        """
        texts = validate_texts(X)
        if y is not None:
            y = np.asarray(y)
            if y.ndim != 1 or len(y) != len(texts):
                raise ValueError(f"y must be 1-D with one label per text: got shape {y.shape} for {len(texts)} texts.")
        classes, descriptions = self._label_descriptions(y)
        if y is not None and self.labels is not None:
            unknown = sorted(set(y.tolist()) - set(classes.tolist()), key=repr)
            if unknown:
                raise ValueError(
                    f"y contains labels that are not in labels: {unknown[:5]!r}; known labels: {classes.tolist()!r}."
                )
        if self.calibrate and y is None:
            raise ValueError("calibrate=True needs y: the temperature is fitted to labelled examples.")
        encoder = self._new_encoder()
        _fit_encoder(encoder, descriptions)
        self.encoder_ = encoder
        self.classes_ = classes
        self.label_embeddings_ = self._embed_labels(encoder, descriptions)
        self.temperature_ = float(self.temperature)
        if self.calibrate:
            self.temperature_ = self._fit_temperature(texts, y)
        return self

    def _fit_temperature(self, texts, y) -> float:
        from scipy.optimize import minimize_scalar

        sims = self._similarities(self.encoder_, self.label_embeddings_, texts)
        position = {label: i for i, label in enumerate(self.classes_.tolist())}
        target = np.array([position[v] for v in y.tolist()])

        def log_loss(log_t):
            logits = sims / np.exp(log_t)
            logits -= logits.max(axis=1, keepdims=True)
            log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            return -log_p[np.arange(len(target)), target].mean()

        result = minimize_scalar(log_loss, bounds=(np.log(1e-4), np.log(10.0)), method="bounded")
        return float(np.exp(result.x))

    @staticmethod
    def _similarities(encoder, label_embeddings, texts) -> np.ndarray:
        return _dense_rows(encoder.transform(texts)) @ label_embeddings.T

    def decision_function(self, X):
        """Cosine similarity of each text to each class (binary: positive minus negative class).

        Parameters
        ----------
        X : list, array or Series of str
            Texts.

        Returns
        -------
        scores : ndarray of shape (n_samples, n_classes), or (n_samples,) for two classes
            Cosine similarities; for two classes, that of the second class minus that of the first.
        """
        encoder, classes, label_embeddings, _ = self._state()
        sims = self._similarities(encoder, label_embeddings, validate_texts(X))
        return sims[:, 1] - sims[:, 0] if len(classes) == 2 else sims

    def predict_proba(self, X):
        """Class probabilities: softmax of the cosine similarities divided by the temperature.

        Parameters
        ----------
        X : list, array or Series of str
            Texts.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probability of each class (columns in the order of ``classes_``).
        """
        encoder, _, label_embeddings, temperature = self._state()
        sims = self._similarities(encoder, label_embeddings, validate_texts(X))
        return _softmax(sims / temperature)

    def predict_log_proba(self, X):
        """Logarithm of the class probabilities of :meth:`predict_proba`.

        Parameters
        ----------
        X : list, array or Series of str
            Texts.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log-probability of each class (columns in the order of ``classes_``).
        """
        return np.log(self.predict_proba(X))

    def predict(self, X):
        """Predict the class whose description is most similar to each text.

        Parameters
        ----------
        X : list, array or Series of str
            Texts.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            The predicted class of each text.
        """
        encoder, classes, label_embeddings, _ = self._state()
        sims = self._similarities(encoder, label_embeddings, validate_texts(X))
        return classes[sims.argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.requires_fit = self.labels is None
        tags.non_deterministic = False
        return tags


def _fit_encoder(encoder, descriptions) -> None:
    """Fit a cloned encoder (a TextEncoder's fit only checks the model) on the label descriptions."""
    if hasattr(encoder, "fit"):
        encoder.fit([d for descs in descriptions for d in descs], None)
