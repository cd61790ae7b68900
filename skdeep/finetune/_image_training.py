"""The training loop of :class:`~skdeep.finetune.FineTunedImageClassifier`.

LP-FT (the head first fitted on frozen features), then epochs of gradual unfreezing with
discriminative learning rates, mixed precision, augmentation and early stopping on held-out images.
Kept apart from the estimator so that its module stays the estimator's API.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import _heads, _lora, _training

#: L2 penalties tried by the head's L-BFGS fit on frozen features (``probe_init``), on the mean loss;
#: the best on the held-out images is kept (without them, PROBE_L2).
PROBE_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
PROBE_L2 = 1e-3


def _backbone_root(body):
    """The module whose children are the backbone's stages (timm: the model itself, head included)."""
    from ..backends.image import _TimmFeatures

    if isinstance(body, _TimmFeatures):
        return body.model, True
    return body, False  # torchvision: a feature-extraction graph that stops before the head


def _head_names(root, is_timm: bool) -> set:
    from ..backends.image import _HEAD_NAMES

    return {name for name, _ in root.named_children() if name in _HEAD_NAMES} if is_timm else set()


def train_image_model(
    est, backend, pixels, codes, classes, task_weights, train_idx, val_idx, rng, augment, device, precision
):
    """Train ``est``'s heads (and backbone, per ``est.unfreeze``) in place; return (heads, LoRA adapter or None).

    Sets ``est.layer_groups_``, ``probe_l2_``, ``history_``, ``n_epochs_`` and ``best_epoch_``.
    """
    import torch

    features = backend.module
    root, is_timm = _backbone_root(features.body)
    exclude = _head_names(root, is_timm)
    lora_config, only = None, None
    if est.lora:
        lora_config = _lora.vision_config(root, est.lora_rank, exclude)
        _lora.inject(root, lora_config)
        only = _lora.is_lora_param
        features.to(device=device, memory_format=torch.channels_last)
    groups = _training.layer_groups(root, exclude)
    est.layer_groups_ = [list(g.names) for g in groups]
    heads = _heads.make_heads(backend.dim, classes, device)
    optimizer = _training.make_optimizer(
        groups,
        list(heads.parameters()),
        learning_rate=est.learning_rate,
        lr_decay=est.lr_decay,
        weight_decay=est.weight_decay,
        only=only,
    )
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    normalize = backend.preprocess.normalizer(device)
    frozen_train = frozen_val = None  # features of the fully frozen backbone, computed once
    codes_t = torch.as_tensor(codes, device=device)
    weights_t = [float(w) for w in task_weights]
    steps_per_epoch = math.ceil(len(train_idx) / est.batch_size)
    total = steps_per_epoch * est.max_epochs
    warmup = max(1, int(0.05 * total))

    def batch_pixels(idx, train):
        x = pixels[torch.as_tensor(idx)]
        if train and augment is not None:
            x = torch.stack([augment(img.permute(2, 0, 1)) for img in x]).permute(0, 2, 3, 1)
        if device.type == "cuda":
            x = x.pin_memory()
        x = x.to(device, non_blocking=True)
        return normalize(x).contiguous(memory_format=torch.channels_last)

    def embed_all(idx):
        """Features of images ``idx`` with the whole model in eval mode, without gradients."""
        features.eval()
        out = []
        with torch.no_grad(), _training.train_autocast(device, precision):
            for s in range(0, len(idx), est.batch_size):
                out.append(features(batch_pixels(idx[s : s + est.batch_size], False)).float())
        return torch.cat(out) if out else torch.zeros(0, backend.dim, device=device)

    def evaluate(val_feats):
        """(mean accuracy over tasks, loss) of the heads on held-out features."""
        heads.eval()
        with torch.no_grad():
            val_codes = codes_t[torch.as_tensor(val_idx, device=device)]
            loss, logits = _heads.heads_loss(heads, val_feats, val_codes, weights_t, est.label_smoothing)
            accuracies = [(out.argmax(1) == val_codes[:, t]).float().mean().item() for t, out in enumerate(logits)]
        return float(np.mean(accuracies)), float(loss)

    est.probe_l2_ = None
    if est.probe_init:
        # LP-FT: the head(s) first learn to convergence on the frozen features, with the L2
        # penalty that does best on the held-out images.
        _training.set_trainable(root, groups, 0)
        frozen_train = embed_all(train_idx)
        train_codes = codes_t[torch.as_tensor(train_idx, device=device)]
        frozen_val = embed_all(val_idx) if len(val_idx) else None
        init = {n: v.clone() for n, v in heads.state_dict().items()}
        best = None
        for l2 in PROBE_L2_GRID if frozen_val is not None else (PROBE_L2,):
            heads.load_state_dict(init)
            _heads.fit_heads_lbfgs(heads, frozen_train, train_codes, weights_t, est.label_smoothing, l2=l2)
            score, loss = evaluate(frozen_val) if frozen_val is not None else (0.0, 0.0)
            if best is None or (score, -loss) > best[0]:
                best = ((score, -loss), l2, {n: v.clone() for n, v in heads.state_dict().items()})
        heads.load_state_dict(best[2])
        est.probe_l2_ = best[1]
    stopper = _training.EarlyStopping(est.n_iter_no_change)
    progress = _training.Progress(est.show_progress, est.max_epochs, "Fine-tuning")
    history, best_state, step, unfrozen = [], None, 0, None
    try:
        for epoch in range(est.max_epochs):
            start = time.perf_counter()
            k = _training.unfrozen_groups(est.unfreeze, epoch, len(groups), est.head_epochs, est.stage_epochs)
            if k != unfrozen:
                if unfrozen is not None:
                    stopper.reset_patience()
                unfrozen = k
            if k == 0 and augment is None and frozen_train is None:
                frozen_train = embed_all(train_idx)
            order = rng.permutation(len(train_idx))
            losses = []
            _training.set_trainable(root, groups, k, only=only, bn_stats=est.train_bn_stats)
            heads.train()
            for s in range(0, len(order), est.batch_size):
                pos = order[s : s + est.batch_size]
                _training.set_lr(optimizer, _training.lr_factor(step, total, warmup))
                with _training.train_autocast(device, precision):
                    if k == 0 and augment is None:
                        feats = frozen_train[torch.as_tensor(pos, device=device)]
                    elif k == 0:
                        with torch.no_grad():
                            feats = features(batch_pixels(train_idx[pos], True))
                    else:
                        feats = features(batch_pixels(train_idx[pos], True))
                    loss, _ = _heads.heads_loss(
                        heads,
                        feats,
                        codes_t[torch.as_tensor(train_idx[pos], device=device)],
                        weights_t,
                        est.label_smoothing,
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                losses.append(loss.detach())
                step += 1
            record = {
                "epoch": epoch + 1,
                "unfrozen": k,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": float(torch.stack(losses).float().mean()),
                "val_loss": None,
                "val_score": None,
            }
            if len(val_idx):
                if k == 0:
                    frozen_val = embed_all(val_idx) if frozen_val is None else frozen_val
                    val_feats = frozen_val
                else:
                    val_feats = embed_all(val_idx)
                score, val_loss = evaluate(val_feats)
                record.update(val_loss=val_loss, val_score=score)
                if stopper.update(epoch + 1, score, val_loss):
                    best_state = (
                        {n: v.detach().clone() for n, v in root.state_dict().items()},
                        {n: v.detach().clone() for n, v in heads.state_dict().items()},
                    )
            record["seconds"] = time.perf_counter() - start
            history.append(record)
            progress.update(record)
            if len(val_idx) and stopper.should_stop:
                break
    finally:
        progress.close()
    if best_state is not None:
        root.load_state_dict(best_state[0])
        heads.load_state_dict(best_state[1])
    root.eval()
    heads.eval()
    est.history_ = history
    est.n_epochs_ = len(history)
    est.best_epoch_ = stopper.best_epoch if best_state is not None else len(history)
    adapter = _lora.extract(root, lora_config) if est.lora else None
    return heads, adapter
