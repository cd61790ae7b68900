"""Unsupervised domain adaptation as scikit-learn transformers.

Both transformers learn, at ``fit`` time, a map from the *source* domain
(the labelled training features ``X``) towards a *target* domain known only
through unlabelled features, so that a model trained downstream on mapped
source features works on target data:

- :class:`CORAL` re-colours source features so that their mean and
  covariance match the target's (Sun, Feng & Saenko, 2016).
- :class:`SubspaceAlignment` projects both domains on ``n_components``
  principal axes and rotates the source basis onto the target basis
  (Fernando et al., 2013).

The target features are given either as the constructor parameter
``target`` or as ``fit(X, X_target=...)`` (the latter wins, and can be
routed through a :class:`~sklearn.pipeline.Pipeline` with metadata routing).

Inside a pipeline, ``fit_transform`` sees the source (training) data, while
``transform`` later sees new data which, by default, is taken to come from
the target domain (``transform_domain="target"``): it is then *not* mapped
as if it were source data again.
"""

import os
from numbers import Integral, Real

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    OneToOneFeatureMixin,
    TransformerMixin,
)
from sklearn.utils import check_array
from sklearn.utils.validation import FLOAT_DTYPES, check_is_fitted

from ._sklearn import DocLinkMixin, Interval, StrOptions, _fit_context, _get_feature_names, validate_data

__all__ = ["CORAL", "SubspaceAlignment"]


class _BaseDomainAdapter(DocLinkMixin, TransformerMixin, BaseEstimator):
    """Shared plumbing: where the target features come from, validation,
    and the source/target dispatch of ``fit_transform`` and ``transform``.

    Subclasses implement ``_fit_maps(X_source, X_target)``,
    ``_map_source(X)`` and ``_map_target(X)``.
    """

    _parameter_constraints: dict = {
        "target": ["array-like", None],
        "transform_domain": [StrOptions({"target", "source"})],
    }

    def _resolve_target(self, X, X_target):
        """Return the raw target features and the name to report them under.

        `fit`'s `X_target` wins over the `target` parameter. `X` is the
        validated source data, unused here; the tests' subclasses derive a
        target from it so that sklearn's checks can vary the feature count.
        """
        if X_target is not None:
            return X_target, "X_target"
        if self.target is not None:
            return self.target, "target"
        raise ValueError(
            f"{type(self).__name__} needs unlabelled target-domain features: "
            "pass them as the `target` parameter or as `fit(X, X_target=...)`; "
            "both are None."
        )

    def _validate_source_and_target(self, X, X_target):
        # Covariances and principal axes need at least two samples per domain.
        with _explain_raw_inputs(self, X, "X"):
            X = validate_data(self, X, dtype=FLOAT_DTYPES, ensure_min_samples=2)
        target, target_name = self._resolve_target(X, X_target)
        with _explain_raw_inputs(self, target, target_name):
            X_target = check_array(
                target,
                dtype=FLOAT_DTYPES,
                ensure_min_samples=2,
                input_name=target_name,
            )
        if X_target.shape[1] != X.shape[1]:
            raise ValueError(
                f"{target_name} has n_features={X_target.shape[1]} (shape "
                f"{X_target.shape}) but X has n_features={X.shape[1]} (shape "
                f"{X.shape}); source and target must be in the same feature "
                "space."
            )
        target_names = _get_feature_names(target)
        source_names = getattr(self, "feature_names_in_", None)
        if target_names is not None and source_names is not None and not np.array_equal(target_names, source_names):
            raise ValueError(
                f"The feature names of {target_name} differ from those of X: "
                f"{list(target_names)} vs {list(source_names)}."
            )
        return X, X_target

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, X_target=None):
        """Learn the map from the source domain (`X`) to the target domain.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Source-domain features (the labelled training data).

        y : None
            Ignored; present for API consistency.

        X_target : array-like of shape (n_target_samples, n_features), \
                default=None
            Unlabelled target-domain features. Takes precedence over the
            `target` parameter. Can be routed through a pipeline with
            ``set_fit_request(X_target=True)`` when metadata routing is
            enabled.

        Returns
        -------
        self : object
            Fitted transformer.
        """
        X, X_target = self._validate_source_and_target(X, X_target)
        self._fit_maps(X, X_target)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None, *, X_target=None):
        """Fit, then map `X` as **source**-domain data.

        Unlike ``fit(X).transform(X)`` with the default
        ``transform_domain="target"``, this always applies the source map:
        it is what a pipeline calls on its training data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Source-domain features (the labelled training data).

        y : None
            Ignored; present for API consistency.

        X_target : array-like of shape (n_target_samples, n_features), \
                default=None
            Unlabelled target-domain features; takes precedence over the
            `target` parameter.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out)
            Source features mapped towards the target domain.
        """
        X, X_target = self._validate_source_and_target(X, X_target)
        self._fit_maps(X, X_target)
        return self._map_source(X)

    def transform(self, X):
        """Map new data, taken from the domain named by `transform_domain`.

        With ``transform_domain="target"`` (default), `X` is target-domain
        data, e.g. what a pipeline predicts on. With
        ``transform_domain="source"``, `X` is mapped like the training data
        in :meth:`fit_transform`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data to transform.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out)
            Transformed data.
        """
        check_is_fitted(self)
        with _explain_raw_inputs(self, X, "X"):
            X = validate_data(self, X, dtype=FLOAT_DTYPES, reset=False)
        if self.transform_domain == "source":
            return self._map_source(X)
        return self._map_target(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _raw_example(data):
    """The first text, path or bytes object in ``data``, or None (numeric features hold none)."""
    try:
        values = np.asarray(getattr(data, "values", data), dtype=object).ravel()
    except (TypeError, ValueError):
        return None
    for value in values[:1000]:
        if isinstance(value, (str, bytes, os.PathLike)):
            return value
    return None


class _explain_raw_inputs:
    """Turn "could not convert string to float" on raw texts or image paths into the pipeline to use."""

    def __init__(self, adapter, data, name: str):
        self.adapter, self.data, self.name = adapter, data, name

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None or not issubclass(exc_type, (ValueError, TypeError)):
            return False
        example = _raw_example(self.data)
        if example is None:
            return False
        cls = type(self.adapter).__name__
        shown = repr(example[:40] if isinstance(example, (str, bytes)) else example)
        raise ValueError(
            f"{cls} works on numeric features, but {self.name} holds raw inputs (e.g. {shown}). Embed them "
            "first, and give the target domain as embeddings of the same encoder: "
            f"encoder = TextEncoder(...); make_pipeline(encoder, {cls}(target=encoder.fit_transform(target_texts)), "
            "LogisticRegression()) (ImageEncoder for images)."
        ) from exc


def _symmetric_power(matrix, power):
    """Power of a symmetric positive semi-definite matrix, via `eigh`.

    Negative eigenvalues (round-off) are clipped to zero. For a negative
    `power`, eigenvalues below a relative tolerance count as zero and are
    left out, as in a pseudo-inverse: directions in which a domain does not
    vary are not blown up into noise.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    # Same tolerance as numpy.linalg.matrix_rank.
    tolerance = eigenvalues.max() * matrix.shape[0] * np.finfo(matrix.dtype).eps
    kept = eigenvalues > tolerance
    powered = np.zeros_like(eigenvalues)
    powered[kept] = eigenvalues[kept] ** power
    return (eigenvectors * powered) @ eigenvectors.T


def _covariance(X, mean):
    centred = X - mean
    return centred.T @ centred / (X.shape[0] - 1)


class CORAL(OneToOneFeatureMixin, _BaseDomainAdapter):
    """Correlation alignment: re-colour source features with the target's covariance.

    CORAL (Sun, Feng & Saenko, 2016) whitens the source features with their
    own covariance and re-colours them with the target covariance. A model
    trained on the re-coloured source features then applies to target-domain
    features unchanged. With means ``mu_s``, ``mu_t`` and covariances
    ``C_s = cov(X) + reg * I`` and ``C_t = cov(X_target) + reg * I``, the
    source map is::

        X  ->  (X - mu_s) @ A + mu_t,   A = C_s^{-1/2} @ C_t^{1/2}

    so that the mapped source has covariance ``cov(X_target)`` (exactly when
    ``reg=0`` and the source covariance has full rank) and mean ``mu_t``.
    The paper aligns covariances only; re-centring on the target mean is
    included here because downstream models with an intercept (logistic
    regression, linear SVMs) are as sensitive to a mean shift between the
    domains as to a covariance shift, and it costs nothing.

    Read more in Sun, Feng & Saenko, "Return of Frustratingly Easy Domain
    Adaptation", AAAI 2016.

    Parameters
    ----------
    target : array-like of shape (n_target_samples, n_features), default=None
        Unlabelled target-domain features, in the same feature space as the
        `X` given to `fit` (e.g. ``encoder.transform(target_texts)`` for a
        frozen encoder placed before this step). Ignored when `fit` receives
        `X_target`. One of the two is required.

    reg : float, default=1.0
        Ridge added to the diagonal of both covariances before taking matrix
        square roots. The paper's value, 1, assumes features of unit
        variance (e.g. standardised); for features of small variance, such as
        normalised embeddings, use a proportionally smaller value, otherwise
        the ridge dominates and ``A`` stays close to the identity.

    transform_domain : {"target", "source"}, default="target"
        Domain of the data passed to :meth:`transform` after fitting.

        - ``"target"``: `transform` returns `X` unchanged (a copy). This is
          what a pipeline needs: it trains the downstream model on
          ``fit_transform(X_source)`` (re-coloured source) and predicts on
          target data, which already has the target statistics and must not
          be re-coloured again.
        - ``"source"``: `transform` applies the source map, like
          `fit_transform`; use it to re-colour more source data.

        :meth:`fit_transform` always applies the source map.

    Attributes
    ----------
    mean_source_ : ndarray of shape (n_features,)
        Per-feature mean of the source data.

    mean_target_ : ndarray of shape (n_features,)
        Per-feature mean of the target data.

    alignment_ : ndarray of shape (n_features, n_features)
        The matrix ``A = C_s^{-1/2} @ C_t^{1/2}``.

    n_features_in_ : int
        Number of features seen during ``fit``.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during ``fit``. Defined only when `X`
        has feature names that are all strings.

    See Also
    --------
    SubspaceAlignment : Align principal subspaces instead of covariances.

    Notes
    -----
    The target features must be in the feature space this step receives.
    Steps placed before it in a pipeline that *learn* from data (e.g.
    :class:`~sklearn.preprocessing.StandardScaler`) change that space at each
    fit, while `target` is fixed: put such steps after CORAL, or give the
    target through the same, already-fitted, preprocessing. Stateless steps
    such as a frozen pretrained encoder are fine before it.

    Eigenvalues are clipped at zero; in ``C_s^{-1/2}`` eigenvalues below a
    relative tolerance are treated as zero (pseudo-inverse), which matters
    only with ``reg=0``.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeep.domain import CORAL
    >>> rng = np.random.RandomState(0)
    >>> X_source = rng.normal(size=(200, 3))
    >>> X_target = rng.normal(size=(150, 3)) @ [[2, 0, 0], [1, 1, 0], [0, 0, 3]] + 5
    >>> coral = CORAL(target=X_target, reg=0.0)
    >>> X_recoloured = coral.fit_transform(X_source)
    >>> bool(np.allclose(X_recoloured.mean(axis=0), X_target.mean(axis=0)))
    True
    >>> bool(np.allclose(np.cov(X_recoloured.T), np.cov(X_target.T)))
    True
    >>> bool(np.array_equal(coral.transform(X_target), X_target))
    True
    """

    _parameter_constraints: dict = {
        **_BaseDomainAdapter._parameter_constraints,
        "reg": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, target=None, *, reg=1.0, transform_domain="target"):
        self.target = target
        self.reg = reg
        self.transform_domain = transform_domain

    def _fit_maps(self, X_source, X_target):
        n_features = X_source.shape[1]
        X_source = X_source.astype(np.float64, copy=False)
        X_target = X_target.astype(np.float64, copy=False)
        self.mean_source_ = X_source.mean(axis=0)
        self.mean_target_ = X_target.mean(axis=0)
        ridge = self.reg * np.eye(n_features)
        covariance_source = _covariance(X_source, self.mean_source_) + ridge
        covariance_target = _covariance(X_target, self.mean_target_) + ridge
        whiten = _symmetric_power(covariance_source, -0.5)
        recolour = _symmetric_power(covariance_target, 0.5)
        self.alignment_ = whiten @ recolour

    def _map_source(self, X):
        X_new = (X - self.mean_source_) @ self.alignment_ + self.mean_target_
        return X_new.astype(X.dtype, copy=False)

    def _map_target(self, X):
        # Copy so that in-place steps downstream cannot modify the caller's array.
        return X.copy()


class SubspaceAlignment(ClassNamePrefixFeaturesOutMixin, _BaseDomainAdapter):
    """Subspace alignment: rotate the source's principal axes onto the target's.

    Both domains are projected on their principal axes, and the source axes are
    rotated onto the target axes.

    Subspace Alignment (Fernando et al., 2013) computes the top
    `n_components` principal axes ``P_s`` of the source and ``P_t`` of the
    target (as columns, ``n_features x d``), and the alignment
    ``M = P_s^T @ P_t``. Source data is mapped to ``(X - mu_s) @ P_s @ M``
    and target data to ``(X - mu_t) @ P_t``; both are `n_components`-dim
    coordinates in the target's principal basis, so a model trained on
    mapped source data applies to mapped target data.

    Read more in Fernando, Habrard, Sebban & Tuytelaars, "Unsupervised
    Visual Domain Adaptation Using Subspace Alignment", ICCV 2013.

    Parameters
    ----------
    target : array-like of shape (n_target_samples, n_features), default=None
        Unlabelled target-domain features, in the same feature space as the
        `X` given to `fit`. Ignored when `fit` receives `X_target`. One of
        the two is required.

    n_components : int, default=None
        Dimension ``d`` of both subspaces. If None, all
        ``min(n_features, n_source_samples, n_target_samples)`` components
        are kept; note that when this equals `n_features` the source
        subspace is the whole space, ``P_s @ P_s^T`` is the identity and the
        method reduces to centring each domain on its own mean and rotating
        into the target basis. Choose ``d < n_features`` to align subspaces.

    transform_domain : {"target", "source"}, default="target"
        Domain of the data passed to :meth:`transform` after fitting.

        - ``"target"``: `transform` projects `X` onto the target subspace,
          ``(X - mu_t) @ P_t``. This is what a pipeline needs when it trains
          on source data (through `fit_transform`) and predicts on target
          data.
        - ``"source"``: `transform` applies the aligned source map, like
          `fit_transform`.

        :meth:`fit_transform` always applies the source map.

    Attributes
    ----------
    components_source_ : ndarray of shape (n_components, n_features)
        Principal axes of the source data (rows), by decreasing variance.

    components_target_ : ndarray of shape (n_components, n_features)
        Principal axes of the target data (rows), by decreasing variance.

    alignment_ : ndarray of shape (n_components, n_components)
        The alignment ``M = P_s^T @ P_t``.

    mean_source_ : ndarray of shape (n_features,)
        Per-feature mean of the source data.

    mean_target_ : ndarray of shape (n_features,)
        Per-feature mean of the target data.

    n_components_ : int
        Number of components kept.

    n_features_in_ : int
        Number of features seen during ``fit``.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during ``fit``. Defined only when `X`
        has feature names that are all strings.

    See Also
    --------
    CORAL : Align second-order statistics in the original feature space.
    sklearn.decomposition.PCA : Principal axes of one data set.

    Notes
    -----
    Each domain is centred on its own mean before projection, as PCA does.
    The paper also z-scores each domain; standardise the features before
    this step if their scales differ, with the same caveat as for
    :class:`CORAL`: the `target` must be in the feature space this step
    receives.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeep.domain import SubspaceAlignment
    >>> rng = np.random.RandomState(0)
    >>> X_source = rng.normal(size=(100, 5))
    >>> X_target = rng.normal(size=(80, 5)) + 3
    >>> aligner = SubspaceAlignment(target=X_target, n_components=2)
    >>> aligner.fit_transform(X_source).shape
    (100, 2)
    >>> aligner.transform(X_target).shape
    (80, 2)
    >>> aligner.get_feature_names_out()
    array(['subspacealignment0', 'subspacealignment1'], dtype=object)
    """

    _parameter_constraints: dict = {
        **_BaseDomainAdapter._parameter_constraints,
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, target=None, *, n_components=None, transform_domain="target"):
        self.target = target
        self.n_components = n_components
        self.transform_domain = transform_domain

    def _fit_maps(self, X_source, X_target):
        max_components = min(X_source.shape[1], X_source.shape[0], X_target.shape[0])
        if self.n_components is None:
            n_components = max_components
        elif self.n_components > max_components:
            raise ValueError(
                f"n_components={self.n_components} must be at most "
                f"min(n_features={X_source.shape[1]}, "
                f"n_source_samples={X_source.shape[0]}, "
                f"n_target_samples={X_target.shape[0]}) = {max_components}."
            )
        else:
            n_components = self.n_components
        X_source = X_source.astype(np.float64, copy=False)
        X_target = X_target.astype(np.float64, copy=False)
        self.mean_source_ = X_source.mean(axis=0)
        self.mean_target_ = X_target.mean(axis=0)
        self.components_source_ = _principal_axes(X_source - self.mean_source_, n_components)
        self.components_target_ = _principal_axes(X_target - self.mean_target_, n_components)
        self.alignment_ = self.components_source_ @ self.components_target_.T
        self.n_components_ = n_components

    @property
    def _n_features_out(self):
        # Used by ClassNamePrefixFeaturesOutMixin.get_feature_names_out.
        return self.n_components_

    def _map_source(self, X):
        X_new = (X - self.mean_source_) @ self.components_source_.T @ self.alignment_
        return X_new.astype(X.dtype, copy=False)

    def _map_target(self, X):
        X_new = (X - self.mean_target_) @ self.components_target_.T
        return X_new.astype(X.dtype, copy=False)


def _principal_axes(centred, n_components):
    """Top principal axes of centred data, as rows, with deterministic signs."""
    _, _, Vt = np.linalg.svd(centred, full_matrices=False)
    axes = Vt[:n_components]
    # Make each axis' largest entry positive, so the signs depend on the data,
    # not on the LAPACK build (the same convention as sklearn's svd_flip).
    largest = np.argmax(np.abs(axes), axis=1)
    signs = np.sign(axes[np.arange(axes.shape[0]), largest])
    return axes * signs[:, np.newaxis]
