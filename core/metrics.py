"""Classification metrics for the pneumonia classifiers, with stratified bootstrap 95 % CIs.

Pure functions over numpy arrays: ``y_true`` (0 = NORMAL, 1 = PNEUMONIA) and ``scores``, the
predicted probability of PNEUMONIA. A case is predicted positive iff ``score >= threshold``.
Point estimates come from scikit-learn; the bootstrap recomputes the same metrics in a vectorised
form (checked against scikit-learn in the tests) so that 1000 replicates take well under a second.
The operating threshold is chosen on validation data (:func:`choose_operating_point`) and then
applied unchanged to the test set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

METRICS = ("accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc", "pr_auc")
_CHUNK_CELLS = 4_000_000  # bootstrap weights held at once (replicates x samples), ~32 MB of float64


def _check_inputs(y_true: Any, scores: Any, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(y, s)`` as 1-D int and float arrays."""
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.size == 0:
        raise ValueError("y_true is empty; metrics need at least one labelled case")
    if y.size != s.size:
        raise ValueError(f"y_true has {y.size} labels but scores has {s.size} values; give one score per case")
    if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
        bad = sorted({str(v) for v in np.unique(y) if v not in (0, 1)})[:5]
        raise ValueError(f"y_true must be 0 (NORMAL) or 1 (PNEUMONIA); got other values {', '.join(bad)}")
    if not np.isfinite(s).all() or s.min() < 0 or s.max() > 1:
        raise ValueError(
            f"scores must be finite probabilities in [0, 1]; got min {np.nanmin(s)!r}, max {np.nanmax(s)!r}, "
            f"{int((~np.isfinite(s)).sum())} non-finite (apply a sigmoid to logits first)"
        )
    if threshold is not None and not (np.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold={threshold!r} is not allowed; use a probability in [0, 1]")
    return y.astype(np.int64), s


def _require_both_classes(y: np.ndarray, what: str) -> None:
    present = np.unique(y)
    if present.size < 2:
        raise ValueError(f"{what} needs both classes in y_true; got only {int(present[0])} (n={y.size})")


def point_metrics(y_true: Any, scores: Any, threshold: float) -> dict[str, float]:
    """Every metric in :data:`METRICS` at ``threshold`` (AUCs ignore it), from scikit-learn."""
    y, s = _check_inputs(y_true, scores, threshold)
    _require_both_classes(y, "ROC-AUC")
    pred = (s >= threshold).astype(np.int64)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "sensitivity": float(recall_score(y, pred, pos_label=1, zero_division=0)),
        "specificity": float(recall_score(y, pred, pos_label=0, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y, s)),
        "pr_auc": float(average_precision_score(y, s)),
    }


def _weighted_metrics(weights: np.ndarray, y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Metrics of each resample, given as a ``(B, n)`` matrix of how often each case was drawn.

    Equivalent to scikit-learn on the repeated cases; every row must hold both classes.
    """
    order = np.argsort(-s, kind="stable")
    w, ys, ss = weights[:, order], y[order], s[order]
    wp, wn = w * ys, w * (1 - ys)
    n_pos, n_neg = wp.sum(axis=1), wn.sum(axis=1)
    above = ss >= threshold
    tp, fp = wp[:, above].sum(axis=1), wn[:, above].sum(axis=1)
    tn, fn = n_neg - fp, n_pos - tp
    # Cumulative counts at each distinct score (descending), as in sklearn's _binary_clf_curve.
    ends = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]
    tps = np.cumsum(wp, axis=1)[:, ends]
    fps = np.cumsum(wn, axis=1)[:, ends]
    zero = np.zeros((w.shape[0], 1))
    d_tps, d_fps = np.diff(tps, axis=1, prepend=zero), np.diff(fps, axis=1, prepend=zero)
    # ROC-AUC: trapezoids under (fps, tps); ties become diagonal segments, as in roc_auc_score.
    auc = (d_fps * (tps - d_tps / 2)).sum(axis=1) / (n_pos * n_neg)
    # Average precision: sum of recall steps times precision there (average_precision_score).
    called = tps + fps
    prec_curve = np.divide(tps, called, out=np.zeros_like(tps), where=called > 0)
    ap = (d_tps * prec_curve).sum(axis=1) / n_pos
    predicted = tp + fp
    return {
        "accuracy": (tp + tn) / (n_pos + n_neg),
        "precision": np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0),
        "sensitivity": tp / n_pos,
        "specificity": tn / n_neg,
        "f1": 2 * tp / (2 * tp + fp + fn),
        "roc_auc": auc,
        "pr_auc": ap,
    }


def _stratified_counts(rng: np.random.Generator, n_boot: int, size: int) -> np.ndarray:
    """``(n_boot, size)`` draw counts for resampling ``size`` cases with replacement."""
    idx = rng.integers(0, size, size=(n_boot, size)) + size * np.arange(n_boot)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * size).reshape(n_boot, size).astype(np.float64)


def _patient_index(patients: Any, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(patient index of each case, class of each patient)`` with a patient's class its highest label, or None
    when ``patients`` is None. Raises when the ids do not match the cases one to one."""
    if patients is None:
        return None
    ids = np.asarray(patients, dtype=object).reshape(-1)
    if ids.size != y.size:
        raise ValueError(f"patients has {ids.size} ids but y_true has {y.size} labels; give one patient id per case")
    _, index = np.unique(ids.astype(str), return_inverse=True)
    classes = np.zeros(index.max() + 1, np.int64)
    np.maximum.at(classes, index, y)
    return index, classes


def ci_method(n_boot: int, by_patient: bool) -> str:
    """The words every record uses to name how its intervals were made."""
    unit = "patient" if by_patient else "image"
    return f"{unit} bootstrap, stratified, {n_boot} replicates"


def _resample_weights(rng: np.random.Generator, b: int, y: np.ndarray,
                      groups: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``(b, n)`` draw counts of each case: images stratified by label, or whole patients stratified by class."""
    if groups is None:
        weights = np.zeros((b, y.size))
        for members in (np.flatnonzero(y == 1), np.flatnonzero(y == 0)):
            weights[:, members] = _stratified_counts(rng, b, members.size)
        return weights
    index, classes = groups
    per_patient = np.zeros((b, classes.size))
    for members in (np.flatnonzero(classes == 1), np.flatnonzero(classes == 0)):
        per_patient[:, members] = _stratified_counts(rng, b, members.size)
    return per_patient[:, index]


def _check_boot(n_boot: Any, alpha: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r} is not allowed; use a positive integer (1000 is usual)")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha!r} is not allowed; use a level in (0, 1), e.g. 0.05 for a 95 % interval")


def bootstrap_ci(
    y_true: Any,
    scores: Any,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    patients: Any = None,
) -> dict[str, tuple[float, float]]:
    """Percentile ``1 - alpha`` confidence interval of every metric in :data:`METRICS`.

    Resampling is stratified: positives and negatives are resampled separately, keeping their
    counts, so every replicate has both classes and the AUCs are always defined. With ``patients``
    (one id per case) whole patients are resampled instead, stratified by the patient's class (its
    highest label): images of one patient are not independent, and an interval that treats them so is
    too narrow. Without a NORMAL-only patient (every NORMAL image belongs to a PNEUMONIA patient) a
    replicate could lack NORMAL images, so that raises.
    """
    y, s = _check_inputs(y_true, scores, threshold)
    _require_both_classes(y, "ROC-AUC (and a stratified bootstrap)")
    _check_boot(n_boot, alpha)
    groups = _patient_index(patients, y)
    if groups is not None and np.unique(groups[1]).size < 2:
        raise ValueError("a patient bootstrap needs NORMAL-only and PNEUMONIA patients; every patient here has "
                         "PNEUMONIA images: pass patients=None to resample images")
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // y.size)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        weights = _resample_weights(rng, b, y, groups)
        for name, values in _weighted_metrics(weights, y, s, threshold).items():
            parts[name].append(values)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    out = {}
    for name in METRICS:
        lo, hi = np.percentile(np.concatenate(parts[name]), q)
        out[name] = (float(lo), float(hi))
    return out


def summarize(y_true: Any, scores: Any, threshold: float, n_boot: int = 1000, seed: int = 0,
              patients: Any = None) -> dict[str, Any]:
    """JSON-ready report of one model on one split: metrics with 95 % CIs and the confusion matrix.

    ``patients`` (one id per case, or None): the CIs resample patients rather than images
    (:func:`bootstrap_ci`), unless no patient is NORMAL-only; ``ci_method`` names which, as every record must.
    """
    y, s = _check_inputs(y_true, scores, threshold)
    values = point_metrics(y, s, threshold)
    groups = _patient_index(patients, y)
    by_patient = groups is not None and np.unique(groups[1]).size == 2  # else images (bootstrap_ci says why)
    cis = bootstrap_ci(y, s, threshold, n_boot=n_boot, seed=seed, patients=patients if by_patient else None)
    tn, fp, fn, tp = confusion_matrix(y, (s >= threshold).astype(np.int64), labels=[0, 1]).ravel()
    return {
        "n": int(y.size),
        "n_pos": int(y.sum()),
        "n_patients": int(groups[1].size) if by_patient else None,
        "threshold": float(threshold),
        "metrics": {name: {"value": values[name], "ci95": list(cis[name])} for name in METRICS},
        "confusion": {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)},
        "ci_method": ci_method(n_boot, by_patient),
        "bootstrap": {"n": int(n_boot), "seed": int(seed), "method": "stratified percentile",
                      "unit": "patient" if by_patient else "image"},
    }


def _roc_points(y_true: Any, scores: Any, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct finite score: ``(threshold, sensitivity, specificity)``."""
    y, s = _check_inputs(y_true, scores)
    _require_both_classes(y, what)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    # roc_curve starts with threshold=inf (nothing called positive). As a probability cut that point
    # is the smallest number above the top score, which exists in [0, 1] unless the top score is 1.0.
    thr = thr.copy()
    top = float(s.max())
    thr[0] = np.nextafter(top, np.inf) if top < 1.0 else np.inf
    keep = np.isfinite(thr)
    return thr[keep], tpr[keep], 1.0 - fpr[keep]


def roc_auc_or_nan(y_true: Any, scores: Any) -> float:
    """ROC-AUC, or NaN when ``y_true`` holds one class only (a tiny validation side): for per-epoch
    tracking and parity figures, where a missing AUC must not stop the work."""
    y = np.asarray(y_true)
    return float(roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else float("nan")


def youden_threshold(y_true: Any, scores: Any) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 on validation data.

    Candidates are the observed scores (and the cut just above the top score), so the result is
    finite and in [0, 1]. Among ties the highest threshold (the most specific) wins.
    """
    thr, sens, spec = _roc_points(y_true, scores, "Youden's threshold (from the ROC curve)")
    return float(thr[np.argmax(sens + spec - 1.0)])


def sensitivity_at_specificity(y_true: Any, scores: Any, min_specificity: float = 0.90) -> dict[str, float]:
    """The operating point with the highest sensitivity among those with specificity >= ``min_specificity``.

    Among equal sensitivities the highest threshold (the most specific) wins. The cut just above the
    top score (specificity 1, sensitivity 0) is always a candidate; only when the top score is a
    NORMAL case scored exactly 1.0 can no threshold in [0, 1] reach the specificity, which raises.
    """
    if not (np.isfinite(min_specificity) and 0.0 <= min_specificity <= 1.0):
        raise ValueError(f"min_specificity={min_specificity!r} is not allowed; use a fraction in [0, 1], e.g. 0.90")
    thr, sens, spec = _roc_points(y_true, scores, "sensitivity at specificity (from the ROC curve)")
    ok = np.flatnonzero(spec >= min_specificity - 1e-12)  # 1 - fpr is not always exact in floating point
    if ok.size == 0:
        raise ValueError(
            f"no threshold in [0, 1] reaches specificity >= {min_specificity}; the best is {spec.max():.4f}"
        )
    best = ok[np.argmax(sens[ok])]
    return {"threshold": float(thr[best]), "sensitivity": float(sens[best]), "specificity": float(spec[best])}


def choose_operating_point(y_true: Any, scores: Any) -> dict[str, Any]:
    """Operating point picked on validation data: Youden's threshold, plus sensitivity at 90 % specificity."""
    y, s = _check_inputs(y_true, scores)
    threshold = youden_threshold(y, s)
    values = point_metrics(y, s, threshold)
    return {
        "method": "youden",
        "threshold": threshold,
        "sensitivity": values["sensitivity"],
        "specificity": values["specificity"],
        "at_spec90": sensitivity_at_specificity(y, s, 0.90),
    }


def ensemble_probabilities(prob_list: list[np.ndarray]) -> np.ndarray:
    """Ensemble several models by averaging their PNEUMONIA probabilities.

    Probabilities are averaged rather than logits summed: the mean of probabilities is still a
    probability in [0, 1], so a threshold chosen on validation data keeps its meaning, whereas a
    sum of logits grows with the number of models and changes the scale the threshold was set on.
    """
    if isinstance(prob_list, np.ndarray) or len(prob_list) == 0:
        raise ValueError("prob_list must be a non-empty list of probability arrays, one per model")
    arrays = [np.asarray(p, dtype=np.float64).reshape(-1) for p in prob_list]
    sizes = [a.size for a in arrays]
    if len(set(sizes)) != 1:
        raise ValueError(f"every model must score the same cases; got arrays of lengths {sizes}")
    for i, a in enumerate(arrays):
        if a.size == 0 or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError(
                f"prob_list[{i}] must hold finite probabilities in [0, 1] (apply a sigmoid to logits first)"
            )
    return np.mean(np.stack(arrays), axis=0)
