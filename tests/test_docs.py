"""The documentation covers the public API, estimators link to their API pages, and the project is
installed and described under its distribution name. Reads sources only: no documentation build."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.base import BaseEstimator

import skdeep

ROOT = Path(__file__).resolve().parents[1]
API_INDEX = ROOT / "docs" / "api" / "index.rst"

# Public objects outside ``skdeep.__all__`` that the API reference must also document.
REQUIRED = {
    "skdeep.cache.CacheStats",
    "skdeep.cache.CacheWarning",
    "skdeep.serving.serve",
    "skdeep.dask.embed",
    "skdeep.dask.embed_frame",
    "skdeep.dask.embed_to_parquet",
    "skdeep.dask.warm_cache",
    "skdeep.dask.describe_workers",
    "skdeep.dask.WORKER_CONFIG",
    "skdeep.persistence.CorruptFileError",
    "skdeep.persistence.PickleNotAllowedError",
    "skdeep.image.UnreadableImageWarning",
    "skdeep.image.UnreadableImageError",
    "skdeep.image.ImageTooLargeError",
    "skdeep.image.list_layers",
    "skdeep.image_io.list_image_files",
}
# Modules whose ``__all__`` lists public objects (the rest export internals to other modules).
PUBLIC_MODULES = ["skdeep", "skdeep.dask", "skdeep.domain", "skdeep.image", "skdeep.finetune"]


def documented_names() -> set[str]:
    """Full names of the objects docs/api/index.rst documents (autosummary entries and autodata)."""
    names, module, in_autosummary = set(), "skdeep", False
    for line in API_INDEX.read_text().splitlines():
        stripped = line.strip()
        if m := re.match(r"\.\. currentmodule:: (\S+)", stripped):
            module, in_autosummary = m.group(1), False
        elif m := re.match(r"\.\. auto(?:data|function|class):: (\S+)", stripped):
            names.add(m.group(1))
            in_autosummary = False
        elif stripped.startswith(".. autosummary::"):
            in_autosummary = True
        elif in_autosummary and line.startswith("   ") and stripped and not stripped.startswith(":"):
            names.add(f"{module}.{stripped}")
        elif stripped and not line.startswith(" "):
            in_autosummary = False
    return names


def resolve(name: str):
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def test_api_reference_lists_every_public_name():
    documented = documented_names()
    missing = sorted({f"skdeep.{name}" for name in skdeep.__all__} - documented)
    assert not missing, f"docs/api/index.rst does not document {missing}"
    missing = sorted(REQUIRED - documented)
    assert not missing, f"docs/api/index.rst does not document {missing}"


def test_api_reference_names_exist():
    # A stale entry (a renamed class) would otherwise only fail the documentation build.
    for name in documented_names():
        resolve(name)


def public_estimators() -> dict[type, set[str]]:
    """Every estimator class exported by a public module, with the names it is exported under."""
    found: dict[type, set[str]] = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, BaseEstimator):
                found.setdefault(obj, set()).add(f"{module_name}.{name}")
    return found


def test_every_public_estimator_is_documented():
    documented = documented_names()
    for cls, names in public_estimators().items():
        assert names & documented, f"{cls.__name__} ({sorted(names)}) is not in docs/api/index.rst"


@pytest.mark.parametrize("cls", sorted(public_estimators(), key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_html_repr_links_to_the_api_page(cls):
    documented = documented_names()
    html = cls()._repr_html_()
    links = re.findall(r'href="([^"]*/api/generated/[^"]*)"', html)
    assert links, f"{cls.__name__}'s HTML repr has no link to its API page"
    page = links[0].rsplit("/", 1)[1]
    assert page.endswith(".html")
    # The page is generated from the API reference entry of the same name.
    assert page[: -len(".html")] in documented, f"{links[0]} names no entry of docs/api/index.rst"
    assert links[0].startswith("https://scikit-deep.readthedocs.io/en/")


def test_distribution_is_scikit_deep_with_one_version():
    # The [project] table, read without tomllib (Python 3.11+).
    project = (ROOT / "pyproject.toml").read_text().split("\n[project]\n", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^name = "scikit-deep"$', project, re.M)
    assert re.search(r'^dynamic = \["version"\]$', project, re.M) and not re.search(r"^version =", project, re.M)
    assert importlib.metadata.version("scikit-deep") == skdeep.__version__, (
        "the installed scikit-deep differs from this source tree: pip install -e ."
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from skdeep.cli import main; main(['--version']); "
            "assert 'torch' not in sys.modules, 'skdeep --version imported torch'",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"skdeep {skdeep.__version__}"


def test_install_lines_use_the_distribution_name():
    # `pip install skdeep` brings an unrelated PyPI project; it may only appear in warnings about that.
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted((ROOT / "skdeep").rglob("*.py")) + sorted((ROOT / "examples").glob("*.py"))
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            assert not re.search(r"(?<![\w-])skdeep\[", line), (
                f"{where}: an extra of 'skdeep' rather than 'scikit-deep'"
            )
            if re.search(r"pip install [\"']?skdeep(?![\w-])", line):
                assert "unrelated" in line, f"{where}: 'pip install skdeep' installs another project"


def test_committed_notebook_outputs_are_clean():
    nb = json.loads((ROOT / "examples" / "quickstart.ipynb").read_text())
    outputs = [o for cell in nb["cells"] if cell["cell_type"] == "code" for o in cell.get("outputs", [])]
    assert outputs, "the notebook is committed executed"
    assert not [o for o in outputs if o.get("name") == "stderr"], "warnings or progress bars in the outputs"
    text = json.dumps(outputs)
    for marker in ("/work/", "/root", "/home/", "site-packages", "Warning"):
        assert marker not in text, f"the notebook's outputs mention {marker!r}"


def _conf_numpydoc_settings():
    """numpydoc_validation_checks / _exclude as docs/conf.py sets them (read, not imported: conf.py
    needs the docs extras and runs setup code)."""
    import ast

    tree = ast.parse((ROOT / "docs" / "conf.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("numpydoc_validation_checks", "numpydoc_validation_exclude"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return found["numpydoc_validation_checks"], found["numpydoc_validation_exclude"]


def test_estimator_docstrings_pass_the_docs_builds_numpydoc_checks():
    # The docs build fails on any numpydoc warning; this finds the same failures in seconds.
    validate = pytest.importorskip("numpydoc.validate")
    checks, exclude = _conf_numpydoc_settings()
    dropped = checks - {"all"}
    names = []
    for name in skdeep.__all__:
        obj = getattr(skdeep, name)
        if not (inspect.isclass(obj) and issubclass(obj, BaseEstimator)):
            continue
        names.append(f"skdeep.{name}")
        for attr, member in inspect.getmembers(obj):
            if attr.startswith("_") or not callable(member):
                continue
            if not getattr(member, "__module__", "").startswith("skdeep"):
                continue  # inherited from scikit-learn, checked there
            names.append(f"skdeep.{name}.{attr}")
    names = [n for n in names if not any(re.search(pattern, n) for pattern in exclude)]
    problems = []
    for full_name in names:
        for code, message in validate.validate(full_name)["errors"]:
            if code not in dropped:
                problems.append(f"{full_name}: {code} {message}")
    assert not problems, "\n".join(problems)
