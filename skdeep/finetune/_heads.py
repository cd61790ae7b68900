"""Targets and classification heads of the fine-tuners: one task (1-D ``y``) or several (2-D ``y``).

A 2-D ``y`` has one column per task, as for scikit-learn's multi-output estimators
(:class:`~sklearn.multioutput.MultiOutputClassifier`): the backbone is shared, each task gets its
own linear head, and the training loss is the weighted sum of the tasks' losses. Predictions then
have one column per task and ``predict_proba`` returns one array per task.

Fitted heads are kept as plain arrays (``(weight, bias)`` per task), so predicting needs only the
features and a matrix product, and the estimator pickles (or goes through skops) as numbers.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.multiclass import check_classification_targets


def encode_targets(y, n_samples: int, what: str = "sample"):
    """Check ``y`` and turn it into integer codes.

    Returns
    -------
    codes : ndarray of shape (n_samples, n_tasks), int64
    classes : list of ndarray
        The sorted labels of each task.
    multi : bool
        Whether ``y`` was 2-D (predictions then have one column per task).
    """
    y = np.asarray(y)
    if y.ndim not in (1, 2) or len(y) != n_samples or (y.ndim == 2 and y.shape[1] == 0):
        raise ValueError(
            f"y must be 1-D (one label per {what}) or 2-D (one column per task), with {n_samples} rows: "
            f"got shape {y.shape}."
        )
    multi = y.ndim == 2
    columns = y.T if multi else y[None, :]
    codes, classes = [], []
    for t, column in enumerate(columns):
        check_classification_targets(column)
        labels, inverse = np.unique(column, return_inverse=True)
        if len(labels) < 2:
            where = f" in task (column) {t}" if multi else ""
            raise ValueError(f"y has a single class {labels[0].item()!r}{where}; fine-tuning needs at least 2 classes.")
        codes.append(inverse.reshape(-1))
        classes.append(labels)
    return np.stack(codes, axis=1).astype(np.int64), classes, multi


def check_task_weights(task_weights, n_tasks: int) -> np.ndarray:
    """Loss weight of each task: ones by default, else ``task_weights`` checked against the tasks."""
    if task_weights is None:
        return np.ones(n_tasks)
    w = np.asarray(task_weights, dtype=float).reshape(-1)
    if len(w) != n_tasks or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(
            f"task_weights must hold {n_tasks} non-negative finite numbers (one per column of y), not all zero; "
            f"got {task_weights!r}."
        )
    return w


def make_heads(dim: int, classes: list, device):
    """One linear layer per task, in a ``ModuleList``."""
    import torch

    return torch.nn.ModuleList([torch.nn.Linear(dim, len(c)) for c in classes]).to(device)


def heads_loss(heads, features, codes, task_weights, label_smoothing: float):
    """Weighted sum over tasks of the cross-entropy (with label smoothing); also each task's logits."""
    import torch.nn.functional as F

    features = features.float()
    logits = [head(features) for head in heads]
    loss = sum(
        float(w) * F.cross_entropy(out, codes[:, t], label_smoothing=label_smoothing)
        for t, (out, w) in enumerate(zip(logits, task_weights))
        if w > 0
    )
    return loss, logits


def fit_heads_lbfgs(heads, features, codes, task_weights, label_smoothing: float, l2: float, max_iter: int = 100):
    """Train the heads to convergence on fixed features (full-batch L-BFGS), in place.

    The first step of LP-FT (Kumar et al., 2022): fine-tuning then starts from a trained head, so
    the gradients reaching the backbone are informative instead of noise from a random head.
    ``l2`` penalises the heads' weights (``l2 / 2 * ||W||**2`` per task, on the mean loss).
    """
    import torch

    features = features.detach().float()
    params = list(heads.parameters())
    optimizer = torch.optim.LBFGS(params, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss, _ = heads_loss(heads, features, codes, task_weights, label_smoothing)
        loss = loss + 0.5 * l2 * sum((h.weight**2).sum() for h in heads)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)


def head_arrays(heads) -> list[tuple[np.ndarray, np.ndarray]]:
    """The trained heads as ``(weight (n_classes, dim), bias (n_classes,))`` float32 arrays."""
    return [
        (h.weight.detach().float().cpu().numpy().copy(), h.bias.detach().float().cpu().numpy().copy()) for h in heads
    ]


def decision(features: np.ndarray, heads: list) -> list[np.ndarray]:
    """Logits of each task for a feature matrix."""
    features = np.asarray(features, dtype=np.float32)
    return [features @ w.T + b for w, b in heads]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def predictions(logits: list, classes: list, multi: bool) -> np.ndarray:
    """Labels from logits: 1-D for one task, one column per task otherwise."""
    labels = [c[np.argmax(out, axis=1)] for out, c in zip(logits, classes)]
    return np.column_stack(labels) if multi else labels[0]


def subset_accuracy(y_true, y_pred, multi: bool) -> float:
    """Accuracy for one task; for several, the share of samples with every task right (as
    :meth:`sklearn.multioutput.MultiOutputClassifier.score`)."""
    y_true = np.asarray(y_true)
    if multi:
        return float(np.mean(np.all(y_true == y_pred, axis=1)))
    return float(np.mean(y_true == y_pred))
