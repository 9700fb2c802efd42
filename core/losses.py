"""Sigmoid focal loss for the one-logit pneumonia classifiers.

Kermany's training set is about 27 % NORMAL and 73 % PNEUMONIA, and most of its images are easy.
Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection", eq. 5) scales the binary
cross-entropy of each example by ``alpha_t * (1 - p_t) ** gamma``, so that confident, correct
predictions contribute little and the rarer class can be weighted up:

    p = sigmoid(x);  p_t = p if y == 1 else 1 - p
    alpha_t = alpha if y == 1 else 1 - alpha        (1 when alpha is None)
    FL = -alpha_t * (1 - p_t) ** gamma * log(p_t)

With ``gamma=0`` and ``alpha=None`` it is exactly ``binary_cross_entropy_with_logits``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


class FocalLoss(torch.nn.Module):
    """Sigmoid focal loss over one logit per image.

    ``alpha`` weights the positive class (PNEUMONIA); see :func:`alpha_from_frequency` for a value
    taken from the label frequencies. ``forward`` takes logits of shape ``(N,)`` or ``(N, 1)`` and
    targets of the same ``N`` (0/1, int or float; soft targets in [0, 1] also work).
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, reduction: str = "mean") -> None:
        super().__init__()
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not np.isfinite(gamma) or gamma < 0:
            raise ValueError(
                f"gamma={gamma!r} is not allowed; use a finite number >= 0 (2.0 in the paper, 0 gives BCE)"
            )
        if alpha is not None and (
            isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0
        ):
            raise ValueError(
                f"alpha={alpha!r} is not allowed; use a number in [0, 1] (the weight of the positive class) "
                "or None for no class weighting"
            )
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is not known; choose one of {', '.join(REDUCTIONS)}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction!r}"

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        x, y = _flatten_pair(logits, targets)
        # -log(p_t), computed from the logits without forming sigmoid(x) first (stable at |x| >> 1).
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        loss = ce
        if self.gamma > 0:
            # 1 - p_t = y * sigmoid(-x) + (1 - y) * sigmoid(x): no cancellation in 1 - p when p ~ 1.
            # The clamp keeps the gradient of base**gamma finite for gamma < 1 where base underflows
            # to 0 (at such points the loss and its true gradient are ~0 anyway).
            base = y * torch.sigmoid(-x) + (1 - y) * torch.sigmoid(x)
            base = base.clamp_min(torch.finfo(base.dtype).tiny)
            loss = base.pow(self.gamma) * loss
        if self.alpha is not None:
            loss = (self.alpha * y + (1 - self.alpha) * (1 - y)) * loss
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def _flatten_pair(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes and dtypes; return float logits and targets, both of shape ``(N,)``."""
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
        raise TypeError(
            f"logits and targets must be torch tensors; got {type(logits).__name__} and {type(targets).__name__}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor; got dtype {logits.dtype}")
    x, y = logits, targets
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if x.dim() != 1:
        raise ValueError(f"logits have shape {tuple(logits.shape)}; expected (N,) or (N, 1): one logit per image")
    if y.shape != x.shape:
        raise ValueError(
            f"targets have shape {tuple(targets.shape)} but logits have shape {tuple(logits.shape)}; "
            "give one target per logit, as (N,) or (N, 1)"
        )
    y = y.to(dtype=x.dtype)
    if y.numel() and bool(((y < 0) | (y > 1)).any()):
        raise ValueError(
            "targets must lie in [0, 1] (0 = NORMAL, 1 = PNEUMONIA); "
            f"got values from {y.min().item()} to {y.max().item()}"
        )
    return x, y


def alpha_from_frequency(labels: Sequence[int] | np.ndarray | Tensor) -> float:
    """Focal-loss ``alpha`` (weight of the positive class) from training labels: ``n_neg / n``.

    The rarer class gets the larger weight: with Kermany's ~27 % NORMAL this gives alpha ~ 0.27,
    so PNEUMONIA (positive) examples are weighted 0.27 and NORMAL ones 0.73.
    """
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError("labels are empty; alpha_from_frequency needs the training labels (0 = NORMAL, 1 = PNEUMONIA)")
    if arr.dtype.kind not in "biuf" or not np.isin(arr, (0, 1)).all():
        bad = sorted({str(v) for v in np.unique(arr) if v not in (0, 1)})[:5]
        raise ValueError(f"labels must be 0 or 1; got other values {', '.join(bad)}")
    n = arr.size
    n_neg = int(np.count_nonzero(arr == 0))
    if n_neg in (0, n):
        only = 0 if n_neg == n else 1
        raise ValueError(
            f"labels hold only class {only} (n={n}); "
            "alpha_from_frequency needs both classes to weigh one against the other"
        )
    return n_neg / n


LOSSES = ("focal", "bce", "weighted-bce")  # --loss choices; focal is the paper's


class ClassWeightedBCE(torch.nn.Module):
    """Binary cross-entropy with one weight per class, as Keras' ``class_weight`` applies it: each image's loss is
    multiplied by the weight of its class (soft targets: ``w1 * y * -log p + w0 * (1 - y) * -log(1 - p)``).

    ``weights`` is ``(w_NORMAL, w_PNEUMONIA)``; :func:`class_weights_from_frequency` takes them from the training
    labels. ``(1, 1)`` is plain BCE.
    """

    def __init__(self, weights: tuple[float, float] = (1.0, 1.0), reduction: str = "mean") -> None:
        super().__init__()
        if len(weights) != 2 or not all(np.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"class weights {weights!r} are not allowed; give two finite numbers >= 0 "
                             "(NORMAL, PNEUMONIA)")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is not known; choose one of {', '.join(REDUCTIONS)}")
        self.weights = (float(weights[0]), float(weights[1]))
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"weights={self.weights}, reduction={self.reduction!r}"

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        x, y = _flatten_pair(logits, targets)
        w0, w1 = self.weights
        loss = w1 * y * F.softplus(-x) + w0 * (1 - y) * F.softplus(x)  # -log sigmoid(x), -log(1 - sigmoid(x))
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def class_weights_from_frequency(labels: Sequence[int] | np.ndarray | Tensor) -> tuple[float, float]:
    """``(w_NORMAL, w_PNEUMONIA)`` from training labels: scikit-learn's ``compute_class_weight("balanced")``,
    ``n / (2 * n_class)``, so that each class contributes half of the loss (Kermany's ~27 % NORMAL: ~1.85, ~0.68)."""
    from sklearn.utils.class_weight import compute_class_weight

    alpha_from_frequency(labels)  # the same checks: not empty, 0/1 only, both classes present
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    w = compute_class_weight("balanced", classes=np.array([0, 1]), y=arr.reshape(-1).astype(int))
    return float(w[0]), float(w[1])


def make_loss(name: str, labels: Sequence[int] | np.ndarray | Tensor, *, gamma: float = 2.0,
              alpha: float | None = None) -> tuple[torch.nn.Module, dict]:
    """The training loss ``name`` (one of :data:`LOSSES`) for a training side with ``labels``, and its record for
    run.json (what it is and where its weights came from)."""
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    counts = {"NORMAL": int(np.count_nonzero(arr == 0)), "PNEUMONIA": int(np.count_nonzero(arr == 1))}
    if name == "focal":
        a = alpha if alpha is not None else alpha_from_frequency(arr)
        return FocalLoss(gamma=gamma, alpha=a), {
            "name": "sigmoid focal", "gamma": gamma, "alpha": a,
            "alpha_source": "config" if alpha is not None else "training-side class frequency"}
    if name == "bce":
        return ClassWeightedBCE((1.0, 1.0)), {"name": "binary cross-entropy", "class_weights": None}
    if name == "weighted-bce":
        w = class_weights_from_frequency(arr)
        return ClassWeightedBCE(w), {
            "name": "class-weighted binary cross-entropy", "class_weights": {"NORMAL": w[0], "PNEUMONIA": w[1]},
            "weights_source": "training-side class frequency: n / (2 * n_class) (scikit-learn 'balanced')",
            "train_counts": counts}
    raise ValueError(f"loss {name!r} is not known; choose one of {', '.join(LOSSES)}")
