"""Two benchmarks of the same artifacts side by side: does a second run reproduce the first?

:func:`compare` matches the ok rows of two results documents by (backbone, format, precision, device,
runtime) and reports per row

- the largest change of the test accuracy figures (the evaluation is deterministic on the same split and
  threshold, so a reproduction changes nothing);
- the change of p50 latency at each batch size both runs timed, ``|b - a| / min(a, b)`` (the formula of
  the ``spread`` column), against the spread the two runs stated for that row (the larger of the two):
  a change inside it is what the runs said to expect, one outside it is drift between the runs that the
  rounds within one run did not see.

Settings that make two runs incomparable (threads, device, timing settings, CPU model, library versions)
are listed in ``differences`` rather than refused: the user decides whether that is the question.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

ACCURACY = ("roc_auc", "pr_auc", "sensitivity", "specificity", "accuracy", "f1")
_KEY = ("backbone", "format", "precision", "device", "runtime")


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(k)) for k in _KEY)


def relative_change(a: float, b: float) -> float | None:
    """``|b - a| / min(a, b)``; None unless both are positive."""
    if not (isinstance(a, (int, float)) and isinstance(b, (int, float))) or min(a, b) <= 0:
        return None
    return float(abs(b - a) / min(a, b))


@dataclass
class Comparison:
    a: str
    b: str
    batches: list[int]
    rows: list[dict[str, Any]] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    def summary(self, batch: int, bound: float) -> dict[str, Any]:
        """Counts for one batch size: rows compared, inside their stated spread, inside ``bound``."""
        rows = [r for r in self.rows if r.get(f"b{batch}_change") is not None]
        if not rows:
            return {"batch": batch, "n": 0}
        changes = [r[f"b{batch}_change"] for r in rows]
        worst = max(rows, key=lambda r: r[f"b{batch}_change"])
        return {"batch": batch, "n": len(rows), "bound": bound,
                "within_spread": sum(bool(r[f"b{batch}_within_spread"]) for r in rows),
                "within_bound": sum(c <= bound for c in changes), "median_change": statistics.median(changes),
                "median_spread": statistics.median(r[f"b{batch}_spread"] for r in rows),
                "largest_change": worst[f"b{batch}_change"], "largest_row": worst["row"]}

    def accuracy_identical(self) -> int:
        return sum(r["accuracy_max_change"] == 0 for r in self.rows if r["accuracy_max_change"] is not None)

    def to_dict(self, bound: float) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = [self.summary(b, bound) for b in self.batches]
        d["accuracy_identical"] = self.accuracy_identical()
        return d


def _name(key: tuple[str, ...]) -> str:
    return " ".join(key[:4]) + ("" if key[4] in ("None", "") else f" ({key[4]})")


def _settings(doc: dict[str, Any]) -> dict[str, Any]:
    env = doc.get("environment", {})
    s = dict(env.get("settings", {}))
    s.pop("backbones", None)
    return {**{f"setting {k}": v for k, v in s.items()}, "CPU": env.get("cpu", {}).get("model"),
            **{f"version of {k}": v for k, v in env.get("versions", {}).items()}}


def compare(a: dict[str, Any], b: dict[str, Any], a_name: str = "a", b_name: str = "b") -> Comparison:
    """Match the ok rows of two results documents (``bench.runner.read_results``) and compare them."""
    ok_a = {row_key(r): r for r in a.get("rows", []) if r.get("status") == "ok"}
    ok_b = {row_key(r): r for r in b.get("rows", []) if r.get("status") == "ok"}
    batches = sorted({int(k[1:-len("_p50_ms")]) for r in list(ok_a.values()) + list(ok_b.values())
                      for k in r if k.startswith("b") and k.endswith("_p50_ms")})
    cmp = Comparison(a=a_name, b=b_name, batches=[], only_a=[_name(k) for k in ok_a if k not in ok_b],
                     only_b=[_name(k) for k in ok_b if k not in ok_a])
    sa, sb = _settings(a), _settings(b)
    cmp.differences = [f"{k}: {sa.get(k)} -> {sb.get(k)}" for k in dict.fromkeys([*sa, *sb]) if sa.get(k) != sb.get(k)]
    for key, ra in ok_a.items():
        rb = ok_b.get(key)
        if rb is None:
            continue
        acc = [abs(rb[m] - ra[m]) for m in ACCURACY
               if isinstance(ra.get(m), (int, float)) and isinstance(rb.get(m), (int, float))]
        row: dict[str, Any] = {"row": _name(key), "accuracy_max_change": max(acc) if acc else None,
                               "roc_auc_a": ra.get("roc_auc"), "roc_auc_b": rb.get("roc_auc")}
        for n in batches:
            pa, pb = ra.get(f"b{n}_p50_ms"), rb.get(f"b{n}_p50_ms")
            change = relative_change(pa, pb)
            if change is None:
                continue
            spreads = [s for s in (ra.get(f"b{n}_spread"), rb.get(f"b{n}_spread")) if isinstance(s, (int, float))]
            spread = max(spreads) if spreads else None
            row.update({f"b{n}_p50_a": pa, f"b{n}_p50_b": pb, f"b{n}_change": change, f"b{n}_spread": spread,
                        f"b{n}_within_spread": spread is not None and change <= spread})
        cmp.rows.append(row)
    cmp.batches = [n for n in batches if any(f"b{n}_change" in r for r in cmp.rows)]
    return cmp


def summary_lines(cmp: Comparison, bound: float = 0.10) -> list[str]:
    """The comparison in words: accuracy, then per batch size how many rows' p50 reproduced."""
    if not cmp.rows:
        return [f"{cmp.a} and {cmp.b} have no ok row in common."]
    lines = [f"Accuracy: {cmp.accuracy_identical()} of {len(cmp.rows)} rows have identical test figures "
             f"({', '.join(ACCURACY)})" + ("." if cmp.accuracy_identical() == len(cmp.rows) else
                                           f"; largest change {max(r['accuracy_max_change'] or 0 for r in cmp.rows):.4f}.")]
    for n in cmp.batches:
        s = cmp.summary(n, bound)
        lines.append(f"p50 latency at batch {n}: {s['within_spread']} of {s['n']} rows changed by no more than the "
                     f"spread their runs stated (median change {s['median_change']:.1%}, median stated spread "
                     f"{s['median_spread']:.1%}); {s['within_bound']} of {s['n']} within {bound:.0%}; largest "
                     f"{s['largest_change']:.0%} ({s['largest_row']}).")
    if cmp.only_a or cmp.only_b:
        lines.append(f"Rows ok in only one run: {len(cmp.only_a)} in {cmp.a}, {len(cmp.only_b)} in {cmp.b}.")
    if cmp.differences:
        lines.append("Settings that differ: " + "; ".join(cmp.differences) + ".")
    return lines
