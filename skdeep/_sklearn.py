"""The scikit-learn internals skdeep builds on, imported in one place.

``_fit_context`` and ``validate_data`` come through ``sklearn-compat``, which keeps them working
across scikit-learn releases. Parameter constraints, the output configuration and the feature-name
helper have no public or compat home yet, so they are imported from scikit-learn's private modules
here, and the dependency on scikit-learn carries an upper bound (see ``pyproject.toml``) that is
raised once a new release has been tested.
"""

from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils._set_output import _get_output_config
from sklearn.utils.validation import _get_feature_names
from sklearn_compat.base import _fit_context
from sklearn_compat.utils.validation import validate_data

__all__ = [
    "HasMethods",
    "Interval",
    "StrOptions",
    "_fit_context",
    "_get_feature_names",
    "_get_output_config",
    "validate_data",
]
