"""The accuracy columns of a bench row: test metrics with bootstrap 95 % CIs at the run's validation threshold
(:func:`core.metrics.summarize`), and agreement with the PyTorch FP32 row of the same run."""

from __future__ import annotations

from typing import Any

import numpy as np

# core.metrics names whose column would clash with a row's identity ("precision" is fp32/fp16/int8 here).
METRIC_COLUMNS = {"precision": "ppv"}


def accuracy_columns(labels: np.ndarray, probs: np.ndarray, threshold: float, *, n_boot: int, seed: int,
                     patients: list[str] | None = None) -> dict[str, Any]:
    """ROC-AUC, PR-AUC, sensitivity, specificity, F1, accuracy and precision (as ``ppv``: the row's ``precision``
    is its numeric precision), each with its 95 % CI (``<name>_lo``, ``<name>_hi``), flat; the CIs resample
    ``patients`` when given (``ci_method`` says which)."""
    from core.metrics import summarize

    s = summarize(labels, probs, threshold, n_boot=n_boot, seed=seed, patients=patients)
    row: dict[str, Any] = {"n_test": s["n"], "n_test_pos": s["n_pos"], "n_test_patients": s["n_patients"],
                           "ci_method": s["ci_method"]}
    for name, m in s["metrics"].items():
        name = METRIC_COLUMNS.get(name, name)
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = m["value"], m["ci95"][0], m["ci95"][1]
    row.update({f"{k}_count": v for k, v in s["confusion"].items()})
    return row


def agreement_columns(probs: np.ndarray, reference: np.ndarray | None, auc: float, reference_auc: float | None,
                      threshold: float) -> dict[str, Any]:
    """Decision agreement with the PyTorch FP32 row, the largest probability change and the ROC-AUC change."""
    if reference is None:
        return {"agreement": None, "max_abs_prob": None, "auc_change": None}
    return {"agreement": float(np.mean((probs >= threshold) == (reference >= threshold))),
            "max_abs_prob": float(np.max(np.abs(probs - reference))),
            "auc_change": None if reference_auc is None else float(auc - reference_auc)}
