"""Training objectives of :class:`~skdeep.finetune.FineTunedTextClassifier`, one small object per ``loss``.

Each objective owns everything that depends on the ``loss`` name: how an epoch's batches are drawn,
the loss on one batch, the measure on held-out texts used for early stopping, and its own trainable
weights besides the encoder's. The classifier looks the objective up once in :data:`OBJECTIVES`.

The losses are sentence-transformers' own where one fits: ``CosineSimilarityLoss`` for SetFit's
pairs and ``BatchAllTripletLoss`` (which never builds a batch x batch x batch tensor). Two are
written here because sentence-transformers has no single-text equivalent: ``SoftmaxLoss`` classifies
*pairs* of texts (the concatenation ``(u, v, |u - v|)``), and no loss compares every pair within a
batch of labelled texts.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LOSSES", "OBJECTIVES", "make_objective", "make_pairs"]

#: Margin of the triplet loss, on the scale of Euclidean distances between unit vectors (0 to 2).
TRIPLET_MARGIN = 0.5


def make_pairs(labels: np.ndarray, pairs_per_sample: int, rng: np.random.RandomState):
    """SetFit's pair sampling: per sample and round, one same-class and one other-class partner.

    Returns index arrays ``(first, second)`` and the target similarity (1.0 or 0.0) of each pair.
    A sample alone in its class gets no positive pair (it has no partner).
    """
    n = len(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    first, second, target = [], [], []
    for _ in range(pairs_per_sample):
        for i in range(n):
            same = by_class[labels[i]]
            if len(same) > 1:
                j = i
                while j == i:
                    j = same[rng.randint(len(same))]
                first.append(i), second.append(j), target.append(1.0)
            other = np.flatnonzero(labels != labels[i])
            first.append(i), second.append(other[rng.randint(len(other))]), target.append(0.0)
    order = rng.permutation(len(first))
    return np.asarray(first)[order], np.asarray(second)[order], np.asarray(target, dtype=np.float32)[order]


class _Objective:
    """Base of the objectives: batches of shuffled labelled texts, validated by cosine similarity.

    Parameters
    ----------
    model : SentenceTransformer
        The model being tuned (sentence-transformers losses hold a reference to it).
    n_classes : int
        Number of classes; labels are the codes ``0 .. n_classes - 1``.
    batch_size : int
        Texts (or pairs, for :class:`_CosinePairs`) per optimiser step.
    pairs_per_sample : int
        Pairs drawn per text and epoch (only :class:`_CosinePairs` uses it).
    device : torch.device
        Where extra weights live.
    """

    def __init__(self, model, *, n_classes, batch_size, pairs_per_sample, device):
        self.n_classes = n_classes
        self.batch_size = batch_size
        self.pairs_per_sample = pairs_per_sample
        self.device = device

    def epoch_batches(self, codes, rng) -> list[tuple]:
        """Index batches for one epoch, numbering the texts of ``codes``: here ``(indices,)`` of shuffled texts."""
        order = rng.permutation(len(codes))
        return [(order[s : s + self.batch_size],) for s in range(0, len(order), self.batch_size)]

    def batch_loss(self, embed, batch, texts, codes):
        """The loss of one batch from :meth:`epoch_batches`, as a scalar tensor to back-propagate.

        ``embed`` maps a list of texts to their embeddings (with gradients); ``texts`` and
        ``codes`` are what the batch's indices point into.
        """
        import torch

        (idx,) = batch
        emb = embed([texts[i] for i in idx])
        return self.loss_from_embeddings(emb, torch.as_tensor(codes[idx], device=emb.device))

    def loss_from_embeddings(self, emb, labels):
        raise NotImplementedError

    def validation_loss(self, embed_all, val_texts, val_codes, ref_texts, ref_codes) -> float:
        """Measure the objective on held-out texts (``embed_all`` embeds a list, without gradients).

        Here: the squared error between the cosine similarity of each held-out text to each
        reference training text and 1 (same class) or 0, i.e. how well unseen texts land near
        their own class and away from the others.
        """
        import torch.nn.functional as F

        val_emb, ref_emb = embed_all(val_texts), embed_all(ref_texts)
        cos = F.normalize(val_emb, dim=1) @ F.normalize(ref_emb, dim=1).T
        target = (val_codes[:, None] == ref_codes[None, :]).to(cos.dtype)
        return float(F.mse_loss(cos, target))

    def parameters(self) -> list:
        """Trainable weights of the objective itself (besides the encoder's)."""
        return []


class _CosinePairs(_Objective):
    """SetFit: squared error between the cosine similarity of a pair and 1 (same class) or 0.

    Batches are ``batch_size`` pairs from :func:`make_pairs`; both sides of a batch are embedded in
    one forward pass. The loss is sentence-transformers' ``CosineSimilarityLoss``.
    """

    def __init__(self, model, **kwargs):
        from sentence_transformers.sentence_transformer import losses

        super().__init__(model, **kwargs)
        self.loss = losses.CosineSimilarityLoss(model)

    def epoch_batches(self, codes, rng):
        a, b, t = make_pairs(codes, self.pairs_per_sample, rng)
        size = self.batch_size
        return [(a[s : s + size], b[s : s + size], t[s : s + size]) for s in range(0, len(a), size)]

    def batch_loss(self, embed, batch, texts, codes):
        import torch

        a, b, target = batch
        emb = embed([texts[i] for i in a] + [texts[i] for i in b])
        return self.loss_from_embeddings(emb[: len(a)], emb[len(a) :], torch.as_tensor(target, device=emb.device))

    def loss_from_embeddings(self, first, second, target):
        return self.loss.compute_loss_from_embeddings([first, second], target)


class _Pairwise(_Objective):
    """``CosineSimilarityLoss`` over every pair within a batch of labelled texts.

    Written here on the ``batch x batch`` similarity matrix: feeding the ``batch**2 / 2`` pairs to
    ``CosineSimilarityLoss`` would copy every embedding ``batch`` times.
    """

    def loss_from_embeddings(self, emb, labels):
        import torch
        import torch.nn.functional as F

        unit = F.normalize(emb, dim=1)
        cos = unit @ unit.T
        target = (labels[:, None] == labels[None, :]).to(cos.dtype)
        upper = torch.triu_indices(len(labels), len(labels), offset=1, device=cos.device)
        return F.mse_loss(cos[upper[0], upper[1]], target[upper[0], upper[1]])


class _BatchAllTriplet(_Objective):
    """Batch-all triplet loss (sentence-transformers' ``BatchAllTripletLoss``) between unit vectors.

    The mean over the triplets (anchor, positive, negative) of a batch that violate the margin of
    ``max(d(a, p) - d(a, n) + margin, 0)``, with Euclidean distances between normalised embeddings
    (at most 2; the margin is :data:`TRIPLET_MARGIN`). Memory grows as ``batch * positives * batch``.
    """

    def __init__(self, model, **kwargs):
        from sentence_transformers.sentence_transformer import losses

        super().__init__(model, **kwargs)
        self.loss = losses.BatchAllTripletLoss(model, margin=TRIPLET_MARGIN)

    def loss_from_embeddings(self, emb, labels):
        import torch.nn.functional as F

        return self.loss.compute_loss_from_embeddings([F.normalize(emb, dim=1)], labels)


class _Softmax(_Objective):
    """Cross-entropy of a linear layer on the embedding (classic fine-tuning; the layer is then discarded).

    Validated by the cross-entropy on the held-out texts.
    """

    def __init__(self, model, **kwargs):
        import torch

        super().__init__(model, **kwargs)
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.classifier = torch.nn.Linear(get_dim(), self.n_classes).to(self.device)

    def loss_from_embeddings(self, emb, labels):
        import torch.nn.functional as F

        return F.cross_entropy(self.classifier(emb), labels)

    def validation_loss(self, embed_all, val_texts, val_codes, ref_texts, ref_codes):
        return float(self.loss_from_embeddings(embed_all(val_texts), val_codes))

    def parameters(self):
        return list(self.classifier.parameters())


#: The objective of each ``loss`` name.
OBJECTIVES = {"cosine": _CosinePairs, "pairwise": _Pairwise, "triplet": _BatchAllTriplet, "softmax": _Softmax}
LOSSES = tuple(OBJECTIVES)


class _MultiTask:
    """Several tasks (columns of a 2-D ``y``) on one encoder: the weighted sum of one objective per task.

    Batch-of-texts objectives (``"pairwise"``, ``"triplet"``, ``"softmax"``) embed each batch once
    and add up every task's loss on it. SetFit's pairs (``"cosine"``) are drawn per task (a pair is
    similar for one task and not for another), tagged with their task and shuffled together; each
    batch's loss is weighted by its task's weight.

    Parameters
    ----------
    objectives : list of _Objective
        One per task.
    task_weights : sequence of float
    """

    def __init__(self, objectives, task_weights):
        self.objectives = list(objectives)
        self.task_weights = [float(w) for w in task_weights]
        self.pairs = isinstance(self.objectives[0], _CosinePairs)

    def epoch_batches(self, codes, rng):
        if not self.pairs:
            return self.objectives[0].epoch_batches(codes[:, 0], rng)
        batches = [
            (t, *batch)
            for t, objective in enumerate(self.objectives)
            if self.task_weights[t] > 0
            for batch in objective.epoch_batches(codes[:, t], rng)
        ]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch_loss(self, embed, batch, texts, codes):
        import torch

        if self.pairs:
            t, *rest = batch
            return self.task_weights[t] * self.objectives[t].batch_loss(embed, tuple(rest), texts, codes[:, t])
        (idx,) = batch
        emb = embed([texts[i] for i in idx])
        labels = torch.as_tensor(codes[idx], device=emb.device)
        return sum(
            w * objective.loss_from_embeddings(emb, labels[:, t])
            for t, (objective, w) in enumerate(zip(self.objectives, self.task_weights))
            if w > 0
        )

    def validation_loss(self, embed_all, val_texts, val_codes, ref_texts, ref_codes) -> float:
        return sum(
            w * objective.validation_loss(embed_all, val_texts, val_codes[:, t], ref_texts, ref_codes[:, t])
            for t, (objective, w) in enumerate(zip(self.objectives, self.task_weights))
            if w > 0
        )

    def parameters(self) -> list:
        return [p for objective in self.objectives for p in objective.parameters()]


def make_objective(loss: str, model, codes: np.ndarray, *, task_weights, batch_size, pairs_per_sample, device):
    """The objective of ``loss`` for integer ``codes``: 1-D (one task) or 2-D (one column per task)."""
    kwargs = dict(batch_size=batch_size, pairs_per_sample=pairs_per_sample, device=device)
    if codes.ndim == 1:
        return OBJECTIVES[loss](model, n_classes=int(codes.max()) + 1, **kwargs)
    objectives = [
        OBJECTIVES[loss](model, n_classes=int(codes[:, t].max()) + 1, **kwargs) for t in range(codes.shape[1])
    ]
    return _MultiTask(objectives, task_weights)
