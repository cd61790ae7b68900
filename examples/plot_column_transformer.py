"""
Text and numeric columns in a ColumnTransformer
===============================================

Real tables mix free text with numbers. A :class:`~skdeep.TextEncoder` takes one text column of
a :class:`~sklearn.compose.ColumnTransformer`, next to the scalers and encoders of the other
columns, and names its output features, so ``set_output(transform="pandas")`` gives a labelled
DataFrame.

The table here is built from Rotten Tomatoes snippets: the review text, two numbers computed
from it, and the film's title as a categorical column.
"""

# %%
# A mixed table
# -------------
from skdeep.datasets import fetch_rotten_tomatoes

data = fetch_rotten_tomatoes().sample(500, random_state=1).reset_index(drop=True)
table = data[["text", "movie"]].assign(
    n_words=data["text"].str.split().str.len(),
    n_exclamations=data["text"].str.count("!"),
)
y = data["label"]
print(table.head())

# %%
# One transformer per column
# --------------------------
# The encoder receives the ``"text"`` column as a one-column DataFrame (the
# :class:`~sklearn.compose.ColumnTransformer` convention) and embeds it; the numbers are
# scaled; the titles are one-hot encoded, rare ones grouped.
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from skdeep import TextEncoder

columns = ColumnTransformer(
    [
        ("review", TextEncoder("all-MiniLM-L6-v2"), ["text"]),
        ("counts", StandardScaler(), ["n_words", "n_exclamations"]),
        ("movie", OneHotEncoder(min_frequency=3, handle_unknown="infrequent_if_exist", sparse_output=False), ["movie"]),
    ]
)
model = make_pipeline(columns, LogisticRegression(max_iter=2000))
model

# %%
# Cross-validation embeds each review once (the folds share the cache) and scores the pipeline:
scores = cross_val_score(model, table, y, cv=5)
print(f"text + numbers + titles: accuracy {scores.mean():.3f} ± {scores.std():.3f}")

numbers_only = make_pipeline(
    ColumnTransformer([("counts", StandardScaler(), ["n_words", "n_exclamations"])]), LogisticRegression()
)
scores = cross_val_score(numbers_only, table, y, cv=5)
print(f"numbers only:            accuracy {scores.mean():.3f} ± {scores.std():.3f}")

# %%
# Named output features
# ---------------------
# Every step names its outputs, so the transformed table is a DataFrame whose columns say where
# they came from: ``review__textencoder0`` ... ``review__textencoder383`` for the embedding.
columns.set_output(transform="pandas")
features = columns.fit_transform(table, y)
print(features.shape)
features.iloc[:3, [0, 1, 2, 384, 385, 386]]
