"""
Zero-shot classification: no labelled data
===========================================

With no labelled examples at all, a sentence encoder can still classify: describe each class
in words, embed the descriptions, and give each text the class whose description is closest.
:class:`~skdeep.ZeroShotClassifier` does this as a scikit-learn classifier, so it is scored,
cross-validated and compared like any other.

The labels below are only used to *measure* accuracy; the classifier never learns from them.
"""

# %%
# Describe the classes
# --------------------
# Each class gets one or more descriptions; each description is put into each prompt template,
# and the embeddings are averaged into one vector per class (prompt ensembling).
from skdeep import ZeroShotClassifier
from skdeep.datasets import fetch_rotten_tomatoes

data = fetch_rotten_tomatoes().sample(400, random_state=2)
texts, y = data["text"], data["label"]

labels = {
    1: ["a positive movie review", "a great, enjoyable film"],
    0: ["a negative movie review", "a bad, boring film"],
}
clf = ZeroShotClassifier(labels=labels, templates=["{}.", "This is {}."])
print(clf.predict(["A delight from start to finish.", "Two hours I will never get back."]))

# %%
# No ``fit`` was needed: with ``labels`` given, the classifier embeds the descriptions when it
# first predicts. Its accuracy on the 400 snippets:
print(f"accuracy {clf.score(texts, y):.3f}")

# %%
# Wording matters
# ---------------
# Different descriptions and templates give different accuracies. Choosing among them needs a few
# labelled examples, and then ``GridSearchCV`` over ``labels`` or ``templates`` does it as for any
# hyperparameter. Here three candidates are scored on the same snippets: the cache embeds every
# snippet once, and each candidate embeds only its own label prompts.
import matplotlib.pyplot as plt

candidates = {
    "class names only": ZeroShotClassifier(labels={1: "fresh", 0: "rotten"}),
    "one description": ZeroShotClassifier(labels={1: "a positive movie review", 0: "a negative movie review"}),
    "two descriptions x two templates": clf,
}
accuracy = {name: candidate.score(texts, y) for name, candidate in candidates.items()}
for name, value in accuracy.items():
    print(f"{name:34s} {value:.3f}")

fig, ax = plt.subplots(figsize=(6, 2.2))
ax.barh(list(accuracy), list(accuracy.values()), color="tab:blue")
ax.axvline(0.5, color="grey", linestyle="--", label="chance")
ax.set_xlim(0.4, 0.9)
ax.set_xlabel("accuracy on 400 Rotten Tomatoes snippets, no training")
ax.legend(loc="lower right")
fig.tight_layout()

# %%
# Probabilities and calibration
# -----------------------------
# ``predict_proba`` is a softmax over the cosine similarities divided by ``temperature``. With a
# few labelled examples, ``calibrate=True`` fits the temperature (nothing else) so that the
# probabilities match observed frequencies.
calibrated = ZeroShotClassifier(labels=labels, templates=["{}.", "This is {}."], calibrate=True)
calibrated.fit(texts[:100], y[:100])
print(f"fitted temperature: {calibrated.temperature_:.3f} (default 0.05)")
print(calibrated.predict_proba(["A delight from start to finish."]).round(3))
