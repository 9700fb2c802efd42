"""Pick the artifact to ship from benchmark results: the best validation ROC-AUC inside a latency budget.

Candidates are the ok rows measured on the device asked for, at the batch size asked for, whose p50
latency is within the budget and (optionally) whose test sensitivity is at least a floor. The best
is the one with the highest **validation** ROC-AUC (so the choice does not spend the test side; results without
it fall back to test ROC-AUC and say so, :func:`bench.report.choice_key`); ties go to the faster, then the smaller
artifact. The figures reported are the test ones. The answer explains itself: the figures of the choice, the
runner-up, and how many rows each rule excluded, or, when nothing fits, what the closest rows would need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bench.choice import CHOICE_KEY, choice_key, choice_text


@dataclass
class Recommendation:
    best: dict[str, Any] | None
    runner_up: dict[str, Any] | None
    candidates: int
    excluded: dict[str, int] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)  # the explanation, one sentence per line


#: The latency budgets (ms) that docs/RESULTS.md answers and `cxr-edge compare` checks the picks of.
BUDGETS_MS = (10.0, 30.0, 100.0)


def as_json(rec: Recommendation) -> dict[str, Any]:
    """The recommendation as one JSON object: ``pick`` (``BACKBONE/FORMAT/PRECISION``, what `cxr-edge package
    --pick` and `cxr-edge predict --pick` take; None when nothing fits), the rows, counts and explanation."""
    pick = None if rec.best is None else "/".join(str(rec.best[k]) for k in ("backbone", "format", "precision"))
    return {"pick": pick, "best": rec.best, "runner_up": rec.runner_up, "candidates": rec.candidates,
            "excluded": rec.excluded, "lines": rec.lines}


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def describe(r: dict[str, Any], batch: int) -> str:
    """One line with the figures that matter for a choice."""
    mb = f"{r['bytes'] / 1e6:.2f} MB" if _ok(r.get("bytes")) else "size n/a"
    spread = r.get(f"b{batch}_spread")
    val = f"validation ROC-AUC {r['val_roc_auc']:.3f}, " if _ok(r.get("val_roc_auc")) else ""
    return (f"{r['backbone']} {r['format']} {r['precision']} ({r.get('runtime')}): {val}"
            f"test ROC-AUC {r['roc_auc']:.3f} "
            f"(95% CI {r['roc_auc_lo']:.3f}-{r['roc_auc_hi']:.3f}), sensitivity {r['sensitivity']:.3f}, specificity "
            f"{r['specificity']:.3f}, p50 {r[f'b{batch}_p50_ms']:.2f} ms at batch {batch}"
            + (f" (±{100 * spread:.0f}% for a repeat)" if _ok(spread) else "")
            + f", p99 {r.get(f'b{batch}_p99_ms', math.nan):.2f} ms, {mb}")


def recommend(doc: dict[str, Any], budget_ms: float, device: str | None = None, batch: int = 1,
              min_sensitivity: float | None = None, formats: tuple[str, ...] = ()) -> Recommendation:
    """The best ok row of ``doc`` (a results.json document) within the budget; see the module docstring.
    ``formats``: only rows of these formats compete (e.g. ``("onnx", "openvino")`` for what a bundle runs)."""
    if not budget_ms > 0:
        raise ValueError(f"--budget-ms {budget_ms} must be a positive number of milliseconds, e.g. 20")
    if min_sensitivity is not None and not 0 <= min_sensitivity <= 1:
        raise ValueError(f"--min-sensitivity {min_sensitivity} must lie in [0, 1], e.g. 0.95")
    rows = doc["rows"]
    devices = sorted({r.get("device") for r in rows})
    device = device or (devices[0] if len(devices) == 1 else None)
    if device is None:
        raise ValueError(f"these results hold devices {', '.join(devices)}; choose one with --device")
    if device not in devices:
        raise ValueError(f"these results were measured on {', '.join(devices) or 'no device'}, not {device}; "
                         f"bench on {device} first or pass --device {devices[0]}")
    key = f"b{batch}_p50_ms"
    ok = [r for r in rows if r.get("device") == device and r.get("status") == "ok"]
    timed = [r for r in ok if _ok(r.get(key)) and _ok(r.get("roc_auc"))]
    if ok and not timed:
        have = sorted({int(k[1:-7]) for r in ok for k in r if k.startswith("b") and k.endswith("_p50_ms")})
        raise ValueError(f"no row was timed at batch {batch}; these results have batch(es) "
                         f"{', '.join(map(str, have))}: pass --batch one of them")
    excluded = {"not ok (failed or skipped)": sum(1 for r in rows if r.get("device") == device) - len(ok)}
    if formats:
        unknown = sorted(set(formats) - {r.get("format") for r in rows})
        if unknown:
            raise ValueError(f"--formats: these results hold no {', '.join(unknown)} rows (they have "
                             f"{', '.join(sorted({str(r.get('format')) for r in rows}))})")
        kept = [r for r in timed if r.get("format") in formats]
        excluded[f"not {'/'.join(formats)}"] = len(timed) - len(kept)
        timed = kept
    fast = [r for r in timed if r[key] <= budget_ms]
    excluded[f"slower than {budget_ms:g} ms"] = len(timed) - len(fast)
    cands = fast
    if min_sensitivity is not None:
        cands = [r for r in fast if r["sensitivity"] >= min_sensitivity]
        excluded[f"sensitivity below {min_sensitivity:g}"] = len(fast) - len(cands)
    auc = choice_key(rows)
    cands.sort(key=lambda r: (-r[auc], r[key], r.get("bytes") or math.inf))
    rec = Recommendation(best=cands[0] if cands else None, runner_up=cands[1] if len(cands) > 1 else None,
                         candidates=len(cands), excluded={k: v for k, v in excluded.items() if v})
    where = f"on {device} at batch {batch}"
    if rec.best is None:
        rec.lines.append(f"No artifact fits: none of the {len(timed)} timed rows {where} has p50 <= {budget_ms:g} ms"
                         + (f" and sensitivity >= {min_sensitivity:g}" if min_sensitivity is not None else "") + ".")
        if timed:
            fastest = min(timed, key=lambda r: r[key])
            rec.lines.append(f"Fastest: {describe(fastest, batch)}.")
            if min_sensitivity is not None:
                sens = [r for r in timed if r["sensitivity"] >= min_sensitivity]
                if sens:
                    quick = min(sens, key=lambda r: r[key])
                    rec.lines.append(f"Fastest with sensitivity >= {min_sensitivity:g}: {describe(quick, batch)}; "
                                     f"it needs a budget of {quick[key]:.1f} ms.")
                else:
                    best_sens = max(timed, key=lambda r: r["sensitivity"])
                    rec.lines.append(f"No row reaches sensitivity {min_sensitivity:g} at its validation threshold "
                                     f"(best {best_sens['sensitivity']:.3f}: {best_sens['backbone']} "
                                     f"{best_sens['format']} {best_sens['precision']}).")
        return rec
    b = rec.best
    rec.lines.append(f"Recommended {where}: {describe(b, batch)}.")
    basis = "validation" if auc == CHOICE_KEY else "test"
    why = (f"Why: the highest {basis} ROC-AUC among {len(cands)} row(s) with p50 <= {budget_ms:g} ms"
           + (f" and sensitivity >= {min_sensitivity:g}" if min_sensitivity is not None else "")
           + f" ({choice_text(rows)}).")
    rec.lines.append(why)
    if rec.runner_up:
        r = rec.runner_up
        gap = b[auc] - r[auc]
        overlap = r["roc_auc_hi"] >= b["roc_auc_lo"]
        rec.lines.append(f"Runner-up: {describe(r, batch)}; {basis} ROC-AUC {gap:.3f} lower"
                         + ("; its test ROC-AUC is inside the recommended row's 95% CI: the two are not clearly "
                            "different in accuracy, so weigh latency and size too." if overlap else "."))
    if _ok(b.get("auc_change")):
        rec.lines.append(f"Against its PyTorch FP32 model: ROC-AUC change {b['auc_change']:+.4f}, decisions agree on "
                         f"{100 * b['agreement']:.1f}% of test images.")
    if rec.excluded:
        rec.lines.append("Excluded: " + ", ".join(f"{n} {why}" for why, n in rec.excluded.items()) + ".")
    return rec
