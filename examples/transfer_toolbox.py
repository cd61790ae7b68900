"""Beyond frozen features, on Rotten Tomatoes snippets: zero-shot, fine-tuning, domain adaptation, ONNX.

Each step is the scikit-learn API; run the whole script on a CPU in a few minutes:

    python examples/transfer_toolbox.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from skdeep import TextEncoder  # noqa: E402
from skdeep.datasets import fetch_rotten_tomatoes as load_rotten_tomatoes  # noqa: E402
from skdeep.domain import CORAL  # noqa: E402
from skdeep.finetune import FineTunedTextClassifier  # noqa: E402
from skdeep.zero_shot import ZeroShotClassifier  # noqa: E402

df = load_rotten_tomatoes()
test = df.groupby("label").sample(100, random_state=1)
train = df.drop(test.index).groupby("label").sample(16, random_state=0)  # 16 labelled snippets per class
X, y = train["text"].tolist(), train["label"].to_numpy()
X_test, y_test = test["text"].tolist(), test["label"].to_numpy()

# 1. Zero-shot: no training data, only label descriptions (fit just records the label set).
zero_shot = ZeroShotClassifier(labels={1: "a positive movie review", 0: "a negative movie review"}, template="{}.")
print("zero-shot accuracy:", zero_shot.fit(X_test[:1]).score(X_test, y_test))

# 2. Frozen features + logistic regression.
frozen = make_pipeline(TextEncoder(), LogisticRegression(max_iter=1000)).fit(X, y)
print("frozen features accuracy:", frozen.score(X_test, y_test))

# 3. Fine-tuned encoder (SetFit-style), then a logistic regression head; also a transformer.
tuned = FineTunedTextClassifier(loss="pairwise", max_epochs=10, max_length=64, random_state=0).fit(X, y)
print("fine-tuned accuracy:", tuned.score(X_test, y_test), f"({tuned.n_steps_} steps)")
print("tuned embeddings:", tuned.transform(X_test[:2]).shape)

# 4. Domain adaptation: CORAL re-colours the training features with the test texts' covariance
#    (the test texts are unlabelled here: only their features are used).
encoder = TextEncoder()
F_test = encoder.fit_transform(X_test)
F_train = encoder.transform(X)
adapted = make_pipeline(CORAL(target=F_test, reg=float(F_train.var(axis=0).mean())), LogisticRegression(max_iter=1000))
print("CORAL-adapted accuracy:", adapted.fit(F_train, y).score(F_test, y_test))

# 5. A faster CPU backend: same embeddings (cosine >= 0.98), exported once to $SKDEEP_HOME/onnx.
fast = make_pipeline(TextEncoder(backend="onnx-int8"), LogisticRegression(max_iter=1000)).fit(X, y)
print("frozen features with the int8 ONNX backend:", fast.score(X_test, y_test))
