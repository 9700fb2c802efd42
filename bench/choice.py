"""Which figure picks an artifact: validation ROC-AUC, so that the test side only reports (the Pareto set,
``recommend`` and the report's "what to ship" all rank by :func:`choice_key` and say so with :func:`choice_text`).
Results made before rows carried ``val_roc_auc`` fall back to test ROC-AUC, and say that instead."""

from __future__ import annotations

import math
from typing import Any

CHOICE_KEY = "val_roc_auc"
CHOICE_TEXT = "chosen on validation ROC-AUC; figures on test"
FALLBACK_TEXT = ("chosen on test ROC-AUC: these results hold no validation ROC-AUC (benchmarked before it was "
                 "scored); bench again to choose on validation")


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def choice_key(rows: list[dict[str, Any]]) -> str:
    """``val_roc_auc`` when every ok row with a test ROC-AUC has it, else ``roc_auc`` (older results)."""
    ok = [r for r in rows if r.get("status") == "ok" and finite(r.get("roc_auc"))]
    return CHOICE_KEY if all(finite(r.get(CHOICE_KEY)) for r in ok) else "roc_auc"


def choice_text(rows: list[dict[str, Any]]) -> str:
    return CHOICE_TEXT if choice_key(rows) == CHOICE_KEY else FALLBACK_TEXT
