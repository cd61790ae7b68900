"""
Fine-tuning with a few labelled examples
========================================

Frozen embeddings plus a linear model are where transfer learning starts. With a few dozen
labelled examples per class, tuning the encoder itself usually does better:
:class:`~skdeep.FineTunedTextClassifier` follows SetFit, training the sentence encoder so that
texts of the same class move closer together, then fitting a logistic regression on the tuned
embeddings.

Fine-tuning runs a real training loop, so this is the slowest example of the gallery: 16
optimiser steps on a CPU, well under a minute without other load.
"""

# %%
# 32 labelled snippets per class
# ------------------------------
from skdeep.datasets import fetch_rotten_tomatoes

data = fetch_rotten_tomatoes()
train = data.groupby("label", group_keys=False).sample(32, random_state=0)
test = data.drop(train.index).sample(300, random_state=0)
print(f"{len(train)} training snippets, {len(test)} test snippets")

# %%
# Frozen features first
# ---------------------
# The baseline: the pretrained encoder as it is, and a logistic regression on its embeddings.
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from skdeep import FineTunedTextClassifier, TextEncoder

frozen = make_pipeline(TextEncoder("all-MiniLM-L6-v2"), LogisticRegression(max_iter=1000))
frozen.fit(train["text"], train["label"])
frozen_accuracy = frozen.score(test["text"], test["label"])
print(f"frozen MiniLM + logistic regression: {frozen_accuracy:.3f}")

# %%
# Then fine-tuned
# ---------------
# ``loss="pairwise"`` compares every pair of texts inside a batch, which gives many pairs per
# forward pass: the practical choice on a CPU. ``max_steps`` bounds the training; on a GPU the
# defaults (a full epoch of SetFit pairs, with early stopping) are affordable.
import time

clf = FineTunedTextClassifier(
    "all-MiniLM-L6-v2",
    loss="pairwise",
    learning_rate=1e-4,
    max_steps=16,
    max_epochs=100,
    max_length=48,
    early_stopping=False,
    random_state=0,
)
start = time.perf_counter()
clf.fit(train["text"], train["label"])
print(f"fine-tuned in {time.perf_counter() - start:.0f} s ({clf.n_steps_} steps)")
tuned_accuracy = clf.score(test["text"], test["label"])
print(f"fine-tuned MiniLM + logistic regression: {tuned_accuracy:.3f}")

# %%
# The training loss, as recorded in ``history_``, and the two accuracies:
import matplotlib.pyplot as plt

fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
steps = [entry["step"] for entry in clf.history_]
left.plot(steps, [entry["train_loss"] for entry in clf.history_], marker="o")
left.set_xlabel("optimiser step")
left.set_ylabel("training loss")
right.bar(["frozen", "fine-tuned"], [frozen_accuracy, tuned_accuracy], color=["grey", "tab:blue"])
right.set_ylim(0.5, 0.85)
right.set_ylabel(f"accuracy on {len(test)} test snippets")
fig.tight_layout()

# %%
# The tuned model
# ---------------
# The classifier is also a transformer: ``transform`` returns the tuned embeddings, for any other
# estimator. The tuned weights are saved under their own fingerprint, so the embedding cache never
# mixes them with the base model's vectors, and pickling the classifier carries them along.
print(clf.transform(["A delight from start to finish."]).shape)
print(clf.encoder_)
