"""
Images: a linear probe on pretrained features
=============================================

A *linear probe* fits a linear classifier on the features of a frozen, pretrained network. It is
the quickest way to find out whether a pretrained model helps on your images.

:class:`~skdeep.ImageEncoder` turns an ImageNet backbone into a scikit-learn transformer. Here it
embeds scikit-learn's handwritten digits (8x8 greyscale images) with the packaged
EfficientNet-Lite0, and the same logistic regression is fitted on the raw pixels, on the
pretrained features, and on the features of the same network with random weights.

Measure before you choose: raw pixels are a strong baseline on these tiny, centred digits.
"""

# %%
# The digits, as a table of pixels
# --------------------------------
# ``load_digits`` gives one row of 64 pixel values (0 to 16) per image. ``image_shape=(8, 8)``
# tells the encoder to read each row as an 8x8 image, and ``pixel_range=(0, 16)`` which values
# are black and white. The encoder converts each image to RGB and resizes it to the network's
# input; ``image_size=64`` (instead of the weights' 224) keeps this fast on a CPU.
import matplotlib.pyplot as plt
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, train_size=200, test_size=400, stratify=y, random_state=0)
print(f"{len(X_train)} training and {len(X_test)} test images of {X.shape[1]} pixels")

# %%
# Three feature sets, one classifier
# ----------------------------------
import time

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdeep import ImageEncoder

digits = dict(image_shape=(8, 8), pixel_range=(0, 16), image_size=64)
candidates = {
    "raw pixels": make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)),
    "random-weight EfficientNet-Lite0": make_pipeline(
        ImageEncoder("efficientnet_lite0", weights=None, random_state=0, **digits),
        StandardScaler(),
        LogisticRegression(C=0.1, max_iter=2000),
    ),
    "pretrained EfficientNet-Lite0": make_pipeline(
        ImageEncoder("efficientnet_lite0", **digits), StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)
    ),
}
accuracy = {}
for name, pipe in candidates.items():
    start = time.perf_counter()
    accuracy[name] = pipe.fit(X_train, y_train).score(X_test, y_test)
    print(f"{name:34s} test accuracy {accuracy[name]:.3f}  ({time.perf_counter() - start:.1f} s)")

# %%
# The pretrained features are far better than those of the same network with random weights: what
# the network learned on ImageNet photos carries over to handwritten digits. Raw pixels remain a
# strong baseline on 8x8 digits, which a linear model separates well as they are; on the larger
# clothing images of Fashion-MNIST the pretrained features beat raw pixels (0.844 against 0.818,
# see the benchmarks page).
# Either way, a linear probe answers the question in a few lines.
fig, ax = plt.subplots(figsize=(6, 2.5))
ax.barh(list(accuracy), list(accuracy.values()), color=["grey", "tab:orange", "tab:blue"])
ax.set_xlim(0.5, 1.0)
ax.set_xlabel(f"test accuracy ({len(X_test)} digits, trained on {len(X_train)})")
for i, value in enumerate(accuracy.values()):
    ax.text(value + 0.005, i, f"{value:.3f}", va="center")
fig.tight_layout()

# %%
# What the encoder produces
# -------------------------
# One 1280-dimensional vector per image: the last feature map of EfficientNet-Lite0, averaged over
# its spatial positions. Each feature is named after its layer and pooling.
encoder = candidates["pretrained EfficientNet-Lite0"][0]
print(encoder.transform(X_test[:2]).shape)
print(encoder.get_feature_names_out()[:3])
