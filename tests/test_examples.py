"""The shipped notebook runs top to bottom (on a small sample) and shows what it claims."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import packaged_minilm_available

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.real_model
@pytest.mark.skipif(not packaged_minilm_available(), reason="pip install scikit-deep[models]")
def test_quickstart_notebook_executes(monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("SKDEEP_NOTEBOOK_N", "60")
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    ).execute()
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "MiniLM  accuracy" in text and "TF-IDF  accuracy" in text
    # The grid search after cross-validation found every embedding in the cache.
    assert "misses=0" in text and "hit_rate=100.0%" in text
    assert not (EXAMPLES / "quickstart_pipeline.joblib").exists()
