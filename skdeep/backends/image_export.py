"""ONNX Runtime and OpenVINO backends for :class:`skdeep.ImageEncoder` (``backend="onnx"`` / ``"openvino"``).

The encoder's torch module (the chosen layers, pooled and concatenated; see
:class:`~skdeep.backends.image.PooledFeatures`) is exported to ONNX once per weights and output
settings, into ``$SKDEEP_HOME/onnx/image-<digest>.v1/model.onnx``, with a dynamic batch axis. Decoding,
resizing and normalisation stay skdeep's (the same code as the torch backend), so every backend
sees the same pixels; only the network runs in ONNX Runtime or OpenVINO, on the CPU.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .._config import skdeep_home
from .image import ImageBackend
from .onnx import ONNX_OPSET, ort_session, publish_once

# Bump when the export procedure changes what the file computes.
IMAGE_EXPORT_FORMAT = 1


def export_image_module(module: torch.nn.Module, crop: tuple[int, int], path) -> None:
    """Export ``module`` (normalised float32 (N, 3, h, w) -> (N, dim)) to ONNX with a dynamic batch axis."""
    h, w = crop
    sample = torch.zeros(2, 3, h, w)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's own deprecation and tracing notes
        torch.onnx.export(
            module.eval(),
            (sample,),
            str(path),
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


class ExportedImageBackend(ImageBackend):
    """An image model whose network runs from its exported ONNX graph on the CPU.

    Parameters
    ----------
    source : ModelSource
    layers, pooling, image_size
        As for :class:`~skdeep.backends.image.ImageBackend`.
    graph_digest : str
        Hex digest of everything that defines the graph (weights fingerprint, layers, pooling,
        image size): names the exported file.
    dtype : str, default="float32"
        The compute dtype (OpenVINO's precision hint; ONNX Runtime runs float32).
    num_threads : int or None
        The engine's threads; None: its default.

    Attributes
    ----------
    path : Path
        The ONNX file in use.
    exported : bool
        Whether constructing this backend wrote the file.
    """

    name = "onnx"

    def __init__(self, source, layers=None, pooling="avg", image_size=None, *, graph_digest, dtype="float32", **kw):
        super().__init__(source, torch.device("cpu"), "fp32", layers, pooling, image_size)
        if not graph_digest or any(c not in "0123456789abcdef" for c in graph_digest):
            raise ValueError(f"graph_digest must be hex digits, got {graph_digest!r}.")
        target = skdeep_home() / "onnx" / f"image-{graph_digest[:32]}.v{IMAGE_EXPORT_FORMAT}"
        self.path, self.exported = publish_once(
            target,
            lambda path: export_image_module(self.module, self.preprocess.crop, path),
            fingerprint=source.fingerprint,
            model=source.name,
            format=IMAGE_EXPORT_FORMAT,
            opset=ONNX_OPSET,
            torch=torch.__version__,
        )
        self.module = None  # the exported graph is all that runs from here on
        self.requested_dtype = dtype
        self._compile(self.path, kw.get("num_threads"))

    def _compile(self, path, num_threads) -> None:
        self.session = ort_session(path, num_threads)
        self.dtype = "float32"

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {"pixels": pixels})
        return out

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            pixels = self._normalize(x).contiguous().numpy()
        return np.ascontiguousarray(self._run(pixels), dtype=np.float32)


class OpenVinoImageBackend(ExportedImageBackend):
    """An image model whose exported graph OpenVINO compiles for the CPU (``dtype`` is the precision hint)."""

    name = "openvino"

    def _compile(self, path, num_threads) -> None:
        from .openvino import compile_model

        self.compiled, self.dtype = compile_model(path, self.requested_dtype, num_threads)

    def _run(self, pixels):
        from .openvino import infer

        return infer(self.compiled, {self.compiled.input(0).get_any_name(): pixels})
