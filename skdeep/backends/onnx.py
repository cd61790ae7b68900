"""ONNX Runtime backend for :class:`skdeep.TextEncoder` (``backend="onnx"``, ``"onnx-int8"``, ``"onnx-int8-all"``).

The transformer of a sentence-transformers model is exported to ONNX once per weight fingerprint,
into ``$SKDEEP_HOME/onnx/<fingerprint>.v2/model.onnx`` (default ``~/.cache/skdeep``), and reused by every
later process (the OpenVINO backend compiles the same file). ``"onnx-int8"`` additionally stores a
dynamically quantised copy (int8 weights, per output channel, matrix multiplications after the
first layer) in ``.../onnx/<fingerprint>-int8.v2/model.onnx``; ``"onnx-int8-all"`` quantises the
first layer too (faster, a little further from float32), in ``.../onnx/<fingerprint>-int8-all.v2/``.

Only the transformer runs in ONNX Runtime; tokenisation uses the model's own tokenizer, and the
model's pooling, dense layers and normalisation are applied afterwards exactly as
sentence-transformers applies them, so the embeddings match the torch backend's.

Files are written into a temporary folder beside the target and renamed into place: a reader never
sees a half-written model, and two processes exporting at once leave one complete copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .._config import skdeep_home
from ..sources import ModelSource
from . import quiet_loading

MODEL_FILE = "model.onnx"
META_FILE = "skdeep-onnx.json"
# Bump when the export procedure changes in a way that changes the file (it names the folders).
# 2: attention exported in its "eager" form, which ONNX Runtime and OpenVINO fuse better (measured on
# all-MiniLM-L6-v2, 8 x 256 tokens, one thread: ONNX Runtime 12 % faster in float32, 20 % in int8).
EXPORT_FORMAT = 2
ONNX_OPSET = 17

_SUPPORTED_AFTER_TRANSFORMER = {"Pooling", "Dense", "Normalize"}


#: Quantised variants: ``"int8"`` keeps the first transformer layer in float32, ``"int8-all"`` does not.
QUANTIZATIONS = ("int8", "int8-all")


def _variant(quantize) -> str | None:
    """``None`` (float32), ``"int8"`` or ``"int8-all"`` from a ``quantize`` argument (True means ``"int8"``)."""
    if quantize is True:
        return "int8"
    if not quantize:
        return None
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be False, True or one of {QUANTIZATIONS}, got {quantize!r}.")
    return quantize


def onnx_dir(fingerprint: str, quantize=False) -> Path:
    """Folder holding the exported model of weights ``fingerprint``: float32, ``"int8"`` (or True) or ``"int8-all"``.

    ``$SKDEEP_HOME/onnx/<fingerprint>[-int8|-int8-all].v<EXPORT_FORMAT>``: a new export procedure
    writes new files instead of reusing those of an older one.
    """
    variant = _variant(quantize)
    name = f"{fingerprint}-{variant}" if variant else fingerprint
    return skdeep_home() / "onnx" / f"{name}.v{EXPORT_FORMAT}"


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished temporary folder to ``target``; if another process got there first, keep theirs."""
    try:
        os.rename(tmp, target)
    except OSError:
        if (target / MODEL_FILE).exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        # A damaged target (no model file): move it aside, then publish ours.
        trash = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".trash-{target.name}-"))
        os.rename(target, trash / "old")
        os.rename(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)


def _write_meta(folder: Path, **meta) -> None:
    (folder / META_FILE).write_text(json.dumps({"format": EXPORT_FORMAT, **meta}, indent=2, sort_keys=True))


def _input_names(transformer) -> list[str]:
    """Tokenizer outputs that the transformer's ``forward`` accepts, in the tokenizer's order."""
    import inspect

    accepted = set(inspect.signature(transformer.auto_model.forward).parameters)
    names = [n for n in transformer.tokenizer.model_input_names if n in accepted]
    if "input_ids" not in names or "attention_mask" not in names:
        raise ValueError(
            f"Cannot export {type(transformer.auto_model).__name__} to ONNX: its tokenizer produces "
            f"{transformer.tokenizer.model_input_names}, without input_ids and attention_mask. Use backend='torch'."
        )
    return names


def export_transformer(transformer, input_names: list[str], path: Path) -> None:
    """Export the token-embedding part of a sentence-transformers ``Transformer`` module to ``path``.

    Uses torch's TorchScript-based exporter: it needs no extra package and handles BERT-like encoders
    with dynamic batch and sequence axes.
    """
    import torch

    class _TokenEmbeddings(torch.nn.Module):
        def __init__(self, model, names):
            super().__init__()
            self.model = model
            self.names = names

        def forward(self, *tensors):
            return self.model(**dict(zip(self.names, tensors)), return_dict=True)[0]

    model = transformer.auto_model.to("cpu").eval()
    # The eager attention graph (explicit matrix products and mask) is what ONNX Runtime's and
    # OpenVINO's fusions recognise; SDPA's traced form runs slower in both.
    attention = getattr(model.config, "_attn_implementation", None)
    if attention not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
        except (ValueError, ImportError):  # a model without an eager implementation: export as it is
            attention = None
    # Padding in the sample keeps the traced graph general: the attention mask must matter.
    sample = transformer.tokenizer(
        ["a sample text to trace the model with", "short"], padding=True, return_tensors="pt"
    )
    args = tuple(sample[name] for name in input_names)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in [*input_names, "token_embeddings"]}
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns about its own deprecation and tracing details that do not apply here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _TokenEmbeddings(model, input_names),
            args,
            str(path),
            input_names=input_names,
            output_names=["token_embeddings"],
            dynamic_axes=dynamic,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    if attention not in (None, "eager"):
        model.set_attn_implementation(attention)


def quantize_int8(fp32_path: Path, int8_path: Path, *, all_layers: bool = False) -> None:
    """Dynamic int8 quantisation of the matrix multiplications, one scale per output channel.

    Measured on all-MiniLM-L6-v2 and 512 Rotten Tomatoes snippets (cosine to fp32, min / mean):
    onnxruntime's defaults (per-tensor scales) 0.95 / 0.97; per-channel scales on MatMul 0.975 /
    0.992 (``all_layers=True``); the same with the first transformer layer kept in fp32 (its inputs,
    the raw token embeddings, have the widest range) 0.983 / 0.994, at a small cost in speed (the
    default).
    """
    import re

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    first_layer = re.compile(r"/layers?\.0/")
    keep_fp32 = [n.name for n in graph.node if n.op_type == "MatMul" and first_layer.search(n.name)]
    if all_layers:
        keep_fp32 = []
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint through the root logger
    try:
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=keep_fp32,
        )
    finally:
        root.setLevel(level)


def ensure_onnx_model(source: ModelSource, quantize, load_transformer) -> tuple[Path, bool]:
    """Return the path of the exported (and, if asked, quantised) model, exporting it if missing.

    Parameters
    ----------
    source : ModelSource
    quantize : bool or {"int8", "int8-all"}
        False: float32; True means "int8".
    load_transformer : callable
        Returns ``(transformer_module, input_names)``; called only when an export is needed.

    Returns
    -------
    path : Path
    exported : bool
        Whether this call wrote a file (False: an earlier export was reused).
    """
    variant = _variant(quantize)
    target = onnx_dir(source.fingerprint, variant)
    if (target / MODEL_FILE).exists():
        return target / MODEL_FILE, False
    target.parent.mkdir(parents=True, exist_ok=True)
    if variant:
        fp32_path, _ = ensure_onnx_model(source, False, load_transformer)
        return publish_once(
            target,
            lambda path: quantize_int8(fp32_path, path, all_layers=variant == "int8-all"),
            fingerprint=source.fingerprint,
            model=source.name,
            quantized=variant,
        )
    transformer, input_names = load_transformer()
    import torch

    return publish_once(
        target,
        lambda path: export_transformer(transformer, input_names, path),
        fingerprint=source.fingerprint,
        model=source.name,
        quantized=False,
        inputs=input_names,
        opset=ONNX_OPSET,
        torch=torch.__version__,
    )


def publish_once(target: Path, write, **meta) -> tuple[Path, bool]:
    """``target/model.onnx``, written by ``write(path)`` into a temporary folder and renamed into place if missing.

    Returns ``(path, whether this call wrote it)``; ``meta`` goes to the folder's JSON description.
    """
    if (target / MODEL_FILE).exists():
        return target / MODEL_FILE, False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        write(tmp / MODEL_FILE)
        _write_meta(tmp, **meta)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / MODEL_FILE, True


# ---------------------------------------------------------------------------------------------
# pooling, as sentence-transformers' Pooling module computes it (padded batches)


def ort_session(path, num_threads: int | None):
    """An ONNX Runtime CPU session on ``path``, all graph optimisations, ``num_threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if num_threads is not None:
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def pool_tokens(tokens: np.ndarray, mask: np.ndarray, modes) -> np.ndarray:
    """Pool token embeddings (batch, seq, dim) under an attention mask (batch, seq).

    Several modes are concatenated in the order given, like sentence-transformers does.
    """
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    tokens = tokens.astype(np.float32, copy=False)
    m = mask.astype(np.float32)[..., None]
    batch, seq, dim = tokens.shape
    out = []
    for mode in modes:
        if mode == "cls":
            first = mask.astype(np.int32).argmax(axis=1)
            out.append(tokens[np.arange(batch), first])
        elif mode == "max":
            out.append(np.where(m > 0, tokens, -np.inf).max(axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (tokens * m).sum(axis=1)
            count = np.clip(m.sum(axis=1), 1e-9, None)
            out.append(total / (count if mode == "mean" else np.sqrt(count)))
        elif mode == "weightedmean":
            weights = np.arange(1, seq + 1, dtype=np.float32)[None, :, None]
            weights = weights - mask.astype(np.int32).argmax(axis=1)[:, None, None]  # left padding
            wm = m * weights
            out.append((tokens * wm).sum(axis=1) / np.clip(wm.sum(axis=1), 1e-9, None))
        elif mode == "lasttoken":
            flipped = mask[:, ::-1]
            values = flipped.max(axis=1)
            idx = flipped.astype(np.int32).argmax(axis=1)
            idx = np.where(values == 0, seq - 1, idx)
            out.append((tokens * m)[np.arange(batch), seq - idx - 1])
        else:
            raise ValueError(f"Unknown pooling mode {mode!r}.")
    return np.concatenate(out, axis=-1)


class ExportedTextBackend:
    """Embed batches of token id sequences with a sentence-transformers model whose transformer was exported to ONNX.

    Tokenisation (prompts, truncation, windows of long documents) is the encoder's, through
    :attr:`tokens`, exactly as for the torch backend, so every backend sees the same ids. The
    exported graph gives token embeddings; the model's own pooling, dense layers and normalisation
    follow in numpy / torch. Subclasses compile the graph for an engine (:meth:`_compile`) and run
    it (:meth:`_run`).

    Parameters
    ----------
    source : ModelSource
        Where the model's files are; ``source.fingerprint`` names the exported file.
    quantize : bool or {"int8", "int8-all"}, default=False
        Use a dynamically quantised copy (True means ``"int8"``).
    pooling : str or None
        Replaces the model's pooling; None keeps the model's own.
    trust_remote_code : bool, default=False
        Passed to ``SentenceTransformer`` when loading the model to export it.
    model_kwargs : dict or None
        Passed to ``SentenceTransformer`` when loading the model to export it.
    num_threads : int or None
        Threads the engine uses for one batch; None: the engine's default (one per core).

    Attributes
    ----------
    name : str
        The backend's name (``"onnx"``, ``"onnx-int8"``, ``"onnx-int8-all"``, ``"openvino"``).
    dtype : str
        The compute dtype that runs.
    dim : int
        Output dimension.
    path : Path
        The ONNX file in use.
    exported : bool
        Whether constructing this backend exported or quantised the file (False: reused).
    tokens : TextTokenizer
        The model's tokenizer.
    prompts, default_prompt_name
        The prompts the model's configuration declares, as for the torch backend.
    """

    name = "onnx"
    dtype = "float32"

    def __init__(
        self,
        source: ModelSource,
        *,
        quantize=False,
        pooling=None,
        trust_remote_code=False,
        model_kwargs=None,
        num_threads=None,
    ):
        from sentence_transformers import SentenceTransformer

        from ._tokens import TextTokenizer

        self.source = source
        self.quantize = _variant(quantize)
        with quiet_loading():
            st_model = SentenceTransformer(
                source.path,
                device="cpu",
                local_files_only=True,
                trust_remote_code=trust_remote_code,
                model_kwargs=dict(model_kwargs) if model_kwargs else None,
            )
        modules = list(st_model)
        transformer = modules[0]
        label = f"backend={self.name!r}"
        if not hasattr(transformer, "auto_model") or getattr(transformer, "tokenizer", None) is None:
            raise ValueError(
                f"{label} supports sentence-transformers models that start with a Transformer module; "
                f"{source.name!r} starts with {type(transformer).__name__}. Use backend='torch'."
            )
        self.prompts = dict(getattr(st_model, "prompts", None) or {})
        self.default_prompt_name = getattr(st_model, "default_prompt_name", None)
        # ("pool", (modes, include_prompt)) / ("dense", torch module) / ("normalize", None), in model order
        self._post = []
        for module in modules[1:]:
            kind = type(module).__name__
            if kind not in _SUPPORTED_AFTER_TRANSFORMER:
                raise ValueError(
                    f"{label} cannot run the {kind} module of {source.name!r} (supported after the "
                    f"transformer: {sorted(_SUPPORTED_AFTER_TRANSFORMER)}). Use backend='torch'."
                )
            if kind == "Pooling":
                modes = pooling if pooling is not None else module.pooling_mode
                self._post.append(("pool", (modes, getattr(module, "include_prompt", True))))
            elif kind == "Dense":
                self._post.append(("dense", module.to("cpu").eval()))
            else:
                self._post.append(("normalize", None))
        if not any(step == "pool" for step, _ in self._post):
            if pooling is not None:
                raise ValueError(f"pooling={pooling!r} was given but the model {source.name!r} has no pooling module.")
            raise ValueError(f"{label} needs a model with a Pooling module; {source.name!r} has none.")

        to_export = (transformer, _input_names(transformer))
        self.path, self.exported = ensure_onnx_model(source, self.quantize, lambda: to_export)
        positions = getattr(transformer.auto_model.config, "max_position_embeddings", None)
        self.tokens = TextTokenizer(transformer.tokenizer, int(transformer.max_seq_length), positions)
        # The exported graph is all we need from here on: drop the torch weights.
        del st_model, transformer, modules
        to_export = None  # noqa: F841 - drops the last reference to the torch module

        self.num_threads = num_threads
        self._inputs = self._compile(self.path, num_threads)
        probe = self.tokens(["dimension probe"]).sequences
        self.dim = int(self.forward(probe).shape[1])

    def _compile(self, path: Path, num_threads: int | None) -> list[str]:
        """Load the graph at ``path`` into the engine; return the names of its inputs."""
        raise NotImplementedError

    def _run(self, feeds: dict) -> np.ndarray:
        """Token embeddings (batch, sequence, dim) for one padded batch."""
        raise NotImplementedError

    @property
    def max_length(self) -> int | None:
        return self.tokens.model_limit

    @staticmethod
    def size(item) -> int:
        """Batches group sequences of similar length (less padding)."""
        return len(item)

    def forward(self, sequences: list, prompt_length: int | None = None) -> np.ndarray:
        """Embed one batch of token id sequences; returns float32 (len(sequences), dim)."""
        batch = self.tokens.pad(sequences)
        feeds = {name: batch[name] if name in batch else np.zeros_like(batch["input_ids"]) for name in self._inputs}
        tokens = self._run(feeds)
        mask = batch["attention_mask"]
        x = None
        for step, arg in self._post:
            if step == "pool":
                modes, include_prompt = arg
                pool_mask = mask
                if prompt_length and not include_prompt:
                    pool_mask = _exclude_prompt(mask, prompt_length)
                x = pool_tokens(tokens, pool_mask, modes)
            elif step == "dense":
                import torch

                with torch.inference_mode():
                    x = arg({"sentence_embedding": torch.from_numpy(x)})["sentence_embedding"].numpy()
            else:
                x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(x, dtype=np.float32)


class OnnxTextBackend(ExportedTextBackend):
    """The exported transformer run by ONNX Runtime on the CPU, in float32 or dynamically quantised int8.

    Takes the parameters of :class:`ExportedTextBackend`; ``num_threads`` sets ONNX Runtime's
    intra-op threads.
    """

    def __init__(self, source: ModelSource, *, quantize=False, **options):
        self.name = "onnx" + (f"-{_variant(quantize)}" if _variant(quantize) else "")
        super().__init__(source, quantize=quantize, **options)

    def _compile(self, path, num_threads):
        self.session = ort_session(path, num_threads)
        return [i.name for i in self.session.get_inputs()]

    def _run(self, feeds):
        (tokens,) = self.session.run(None, feeds)
        return tokens


def _exclude_prompt(mask: np.ndarray, prompt_length: int) -> np.ndarray:
    """The attention mask without the first ``prompt_length`` real tokens of each row (left padding too)."""
    out = mask.copy()
    first = mask.argmax(axis=1)
    positions = np.arange(mask.shape[1])[None, :]
    out[(positions >= first[:, None]) & (positions < first[:, None] + prompt_length)] = 0
    return out
