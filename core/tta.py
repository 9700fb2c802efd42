"""Test-time augmentation: a few fixed, label-preserving views of a batch, their probabilities averaged.

Chest radiographs are not mirror-symmetric (the heart sits on the patient's left), so no flips; the views are
the image itself and four small translations (4% of the side, edges repeated), which model the framing
differences between acquisitions. The same views in every scoring path (``evaluate``, the bench's accuracy,
``predict``), applied to the normalised ``NCHW`` float batch that every predictor takes, so they need no
preprocessing change and work for every exported format.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TTA_VIEWS = ("identity", "right", "left", "down", "up")


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate ``NCHW`` ``x`` by (dy, dx) pixels, filling the uncovered border with the edge values."""
    h, w = x.shape[-2:]
    pad = ((0, 0), (0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)))
    padded = np.pad(x, pad, mode="edge")
    top, left = max(-dy, 0), max(-dx, 0)
    return np.ascontiguousarray(padded[:, :, top:top + h, left:left + w])


def tta_views(x: np.ndarray) -> list[np.ndarray]:
    """The views of :data:`TTA_VIEWS`, in that order, for a normalised float ``NCHW`` batch."""
    if x.ndim != 4:
        raise ValueError(f"TTA needs an NCHW batch; got an array of shape {x.shape}")
    s = max(1, round(0.04 * x.shape[-1]))
    offsets = {"identity": (0, 0), "right": (0, s), "left": (0, -s), "down": (s, 0), "up": (-s, 0)}
    return [x if name == "identity" else _shift(x, *offsets[name]) for name in TTA_VIEWS]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    z = np.clip(np.asarray(logits, dtype=np.float64), -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-z))


def tta_probabilities(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Mean PNEUMONIA probability over the TTA views; ``predict`` maps a batch to logits (``N`` or ``Nx1``)."""
    probs = [sigmoid(np.asarray(predict(view)).reshape(len(view), -1)[:, -1]) for view in tta_views(x)]
    return np.mean(probs, axis=0)
