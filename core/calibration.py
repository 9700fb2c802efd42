"""How far predicted probabilities can be taken at their word: Brier score, expected calibration error, the
reliability diagram, and the threshold that would give back a target sensitivity on new data.

Pure functions over ``y_true`` (0 NORMAL, 1 PNEUMONIA) and ``scores`` (probability of PNEUMONIA), like
:mod:`core.metrics`. The expected calibration error (ECE, Naeini et al. 2015; Guo et al. 2017) uses equal-width
bins over [0, 1]: ``sum_b (n_b / n) * |mean(y in b) - mean(p in b)|``; a score of exactly 1.0 falls in the last bin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import brier_score_loss

from core.metrics import _check_inputs, _roc_points

ECE_BINS = 15


def brier_score(y_true: Any, scores: Any) -> float:
    """Mean squared difference between probability and outcome (0 is perfect; 0.25 is a constant 0.5)."""
    y, s = _check_inputs(y_true, scores)
    return float(brier_score_loss(y, s))


def reliability_bins(y_true: Any, scores: Any, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Per equal-width bin: its edges, number of cases, mean probability and observed PNEUMONIA rate
    (None for an empty bin)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r} is not allowed; use a positive integer (15 is usual)")
    y, s = _check_inputs(y_true, scores)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    sum_p = np.bincount(which, weights=s, minlength=n_bins)
    sum_y = np.bincount(which, weights=y, minlength=n_bins)
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "mean_probability": [float(p / c) if c else None for p, c in zip(sum_p, count)],
        "observed_rate": [float(v / c) if c else None for v, c in zip(sum_y, count)],
    }


def expected_calibration_error(y_true: Any, scores: Any, n_bins: int = ECE_BINS) -> float:
    """ECE over ``n_bins`` equal-width bins (module docstring)."""
    bins = reliability_bins(y_true, scores, n_bins)
    n = sum(bins["count"])
    return float(sum(c / n * abs(o - p) for c, o, p in zip(bins["count"], bins["observed_rate"],
                                                          bins["mean_probability"]) if c))


def calibration_summary(y_true: Any, scores: Any, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Brier score, ECE and the reliability bins, JSON-ready."""
    return {"brier": brier_score(y_true, scores), "ece": expected_calibration_error(y_true, scores, n_bins),
            "ece_bins": n_bins, "reliability": reliability_bins(y_true, scores, n_bins)}


def threshold_for_sensitivity(y_true: Any, scores: Any, target: float) -> dict[str, float]:
    """The highest threshold whose sensitivity on these data is at least ``target`` (so the most specific one),
    with the sensitivity and specificity it gives."""
    if not (np.isfinite(target) and 0.0 <= target <= 1.0):
        raise ValueError(f"target sensitivity {target!r} is not allowed; use a fraction in [0, 1]")
    thr, sens, spec = _roc_points(y_true, scores, "a threshold for a target sensitivity")
    ok = np.flatnonzero(sens >= target - 1e-12)  # the last ROC point has sensitivity 1, so ok is never empty
    best = ok[np.argmax(thr[ok])]
    return {"threshold": float(thr[best]), "sensitivity": float(sens[best]), "specificity": float(spec[best])}


def plot_reliability(panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: str | Path,
                     title: str = "", n_bins: int = ECE_BINS) -> Path:
    """A reliability diagram per panel (e.g. ``{"internal test": {...}, "outside data": {...}}``), side by side:
    each model's observed PNEUMONIA rate against its mean probability per bin, the diagonal, ECE in the legend.
    ``panels[name][model] = (y_true, scores)``. Written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core import io

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.0), squeeze=False, layout="constrained")
    for ax, (name, curves) in zip(axes[0], panels.items()):
        ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="perfectly calibrated")
        for model, (y, s) in curves.items():
            bins = reliability_bins(y, s, n_bins)
            pts = [(p, o) for p, o in zip(bins["mean_probability"], bins["observed_rate"]) if p is not None]
            ece = expected_calibration_error(y, s, n_bins)
            ax.plot(*zip(*pts), marker="o", ms=3, lw=1.2, label=f"{model} (ECE {ece:.3f}, n={len(y)})")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability of PNEUMONIA",
               ylabel="observed share of PNEUMONIA", title=name)
        ax.grid(True, alpha=0.25)
        ax.legend(loc="upper left", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    io.write_atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)
