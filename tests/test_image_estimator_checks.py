"""scikit-learn's estimator checks on ImageEncoder, with images given as a table of pixels."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from skdeep.image import ImageEncoder

# The checks feed 2-D float tables with any number of columns and values far outside [0, 1]:
# image_shape=(1, -1) reads each row as a one-pixel-high greyscale image of any width, and a wide
# pixel_range accepts the checks' values (anything outside it raises, as it should).
CHECKED = ImageEncoder(
    "timm:test_resnet",
    weights=None,
    image_size=32,
    image_shape=(1, -1),
    pixel_range=(-1e4, 1e4),
    cache=None,
    num_workers=0,
)

# Every check passes; a check that starts failing must be fixed, or listed here with the reason.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@parametrize_with_checks([CHECKED], expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
