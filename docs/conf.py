"""Sphinx configuration of the skdeep documentation site.

Build it from the repository root with warnings as errors (what CI runs)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

``-D plot_gallery=0`` skips running the examples (a quick build of the text and the API pages).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

import skdeep

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "sphinxext"))  # the gallery's order (as scikit-learn's docs do)

# The examples load the packaged models with no network, and print what a user would see.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Progress bars (saving models, loading weights) would land in the examples' captured output.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Third-party deprecation notices raised while the examples run are not the examples' output.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*Matplotlib is currently using agg.*")

project = "skdeep"
author = "the scikit-deep developers"
copyright = "2026, the scikit-deep developers"
release = skdeep.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "_generated", "api/generated/backreferences", "**/README.txt", "**.ipynb"]
# The benchmark tables come from the benchmark scripts, whose headings start at various levels.
suppress_warnings = ["myst.header"]

# ----------------------------------------------------------------------------- MyST (user guide pages)
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# ----------------------------------------------------------------------------- API reference
autosummary_generate = True
autodoc_default_options = {"member-order": "groupwise"}
autodoc_typehints = "none"  # the numpydoc sections say the types
numpydoc_show_class_members = False  # the class template lists the members
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# numpydoc validates every docstring it renders; a failing one is a build warning, so an error in CI.
# Left out: GL01 (summary on the opening line is our style), SA01/EX01/ES01 (See Also, Examples and
# an extended summary are not required of every method), RT02 (named returns, scikit-learn's style).
numpydoc_validation_checks = {"all", "GL01", "SA01", "EX01", "ES01", "RT02"}
# Methods inherited from scikit-learn are documented (and checked) by scikit-learn.
numpydoc_validation_exclude = {
    r"\.get_params$",
    r"\.set_params$",
    r"\.set_output$",
    r"\.set_[a-z_]+_request$",
    r"\.get_metadata_routing$",
    r"\.score$",
    # Data documented by a ``#:`` comment has no quotes for GL02 to check.
    r"^skdeep\.dask\.WORKER_CONFIG$",
    r"^skdeep\.persistence\.(TRUSTED_TYPES|DISTRIBUTION)$",
}

# ----------------------------------------------------------------------------- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"skdeep {release}"
html_static_path = ["_static"]
html_css_files = ["skdeep.css"]
html_show_sourcelink = False
html_theme_options = {
    "logo": {"text": "skdeep"},
    "header_links_before_dropdown": 7,
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc", "sg_download_links", "sg_launcher_links"],
}
html_sidebars = {"index": [], "getting_started": [], "benchmarks": [], "comparison": [], "whats_new": []}

# ----------------------------------------------------------------------------- examples gallery
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    # Only examples/plot_*.py belong to the gallery; the other scripts there (the main job, the
    # notebook builder, the data loader) are neither run nor shown.
    "filename_pattern": re.escape(os.sep) + "plot_",
    "ignore_pattern": r"(^|[\\/])(?!plot_)[^\\/]+\.py$",
    "within_subsection_order": "gallery_order.ExampleOrder",
    "doc_module": ("skdeep",),
    "backreferences_dir": "api/generated/backreferences",
    "capture_repr": ("_repr_html_", "__repr__"),
    "abort_on_example_error": True,
    "min_reported_time": 0,
    "show_memory": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
}


# ----------------------------------------------------------------------------- generated pages
def _write_gpu_results(app):
    """List the GPU benchmark results (benchmarks/results/gpu*.md) for the benchmarks page."""
    results = sorted((ROOT / "benchmarks" / "results").glob("gpu*.md"))
    out = DOCS / "_generated"
    out.mkdir(exist_ok=True)
    if results:
        text = "\n\n".join(
            # Relative to docs/, where benchmarks.md (which includes this page) lives.
            f"```{{include}} ../benchmarks/results/{p.name}\n:heading-offset: 2\n```"
            for p in results
        )
    else:
        text = "No GPU measurements have been recorded yet; every figure on this page was measured on a CPU."
    target = out / "gpu_results.md"
    if not target.exists() or target.read_text() != text + "\n":
        target.write_text(text + "\n")


_ROLE = re.compile(r":(?:ref|term):`([^`<]+?)(?:\s*<[^>]*>)?`")


def _plain_roles_outside_skdeep(app, what, name, obj, options, lines):
    """Methods inherited from scikit-learn point at scikit-learn's own labels and glossary, which
    this site does not have (and the build has no network for intersphinx): keep their text."""
    module = getattr(obj, "__module__", None) or ""
    if module.split(".")[0] != "skdeep":
        lines[:] = [_ROLE.sub(lambda m: f"*{m.group(1).strip()}*", line) for line in lines]


def setup(app):
    app.connect("builder-inited", _write_gpu_results)
    # Before numpydoc (priority 500) parses the docstring.
    app.connect("autodoc-process-docstring", _plain_roles_outside_skdeep, priority=100)
