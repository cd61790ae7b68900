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
    "DOCS_URL",
    "DocLinkMixin",
    "HasMethods",
    "Interval",
    "StrOptions",
    "_fit_context",
    "_get_feature_names",
    "_get_output_config",
    "validate_data",
]


#: Where the documentation site lives; the HTML repr's "?" icon links to the class's API page there.
DOCS_URL = "https://scikit-deep.readthedocs.io/en/{version}/"


class DocLinkMixin:
    """Make the "?" icon of scikit-learn's HTML repr (scikit-learn >= 1.6) open skdeep's API page.

    scikit-learn only links estimators whose module starts with ``_doc_link_module``. A class is
    documented under the shortest public module that exports it (``skdeep.TextEncoder``,
    ``skdeep.dask.embed``), which is also the name of its page in ``docs/api/generated/``.
    """

    _doc_link_module = "skdeep"
    _doc_link_template = DOCS_URL + "api/generated/{estimator_module}.{estimator_name}.html"

    def _doc_link_url_param_generator(self):
        import itertools
        import sys

        from . import __version__

        cls = type(self)
        public = list(itertools.takewhile(lambda part: not part.startswith("_"), cls.__module__.split(".")))
        module = ".".join(public)
        for i in range(1, len(public) + 1):  # the shortest public module that exports the class
            exported = getattr(sys.modules.get(".".join(public[:i])), "__all__", ())
            if cls.__name__ in exported:
                module = ".".join(public[:i])
                break
        version = "latest" if "dev" in __version__ else "stable"
        return {"estimator_module": module, "estimator_name": cls.__name__, "version": version}
