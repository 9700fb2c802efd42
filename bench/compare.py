"""Two benchmarks of the same artifacts side by side: does a second run reproduce the first?

:func:`compare` matches the ok rows of two results documents by (backbone, format, precision, device,
runtime) and reports per row

- the largest change of the test accuracy figures (the evaluation is deterministic on the same split and
  threshold, so a reproduction changes nothing);
- the change of p50 latency at each batch size both runs timed, ``|b - a| / min(a, b)``, against the band
  (``spread``) the two runs stated for that row (the larger of the two): a change inside it is what the
  runs said to expect, one outside it is drift between the runs that the rounds within one run did not see;
- the same for the p50 relative to the speed probe timed in the same turns (``b1_rel``, where both runs have
  it), meant for a machine that ran slower or faster as a whole (the probe tracks that only roughly).

Latency on a shared machine also moves as a whole between runs (every row slower by a similar factor when the
host is busier): per batch size the summary gives that factor (geometric mean of the p50 ratios), each row's
change left after it, and the rank correlation of the rows, and :func:`conclusions` says whether what a
deployer reads off the page (the Pareto-optimal artifacts, the pick under each latency budget) is the same.

Settings that make two runs incomparable (threads, device, timing settings, CPU model, library versions)
are listed in ``differences`` rather than refused: the user decides whether that is the question.
"""

from __future__ import annotations

import math
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
    conclusions: dict[str, Any] = field(default_factory=dict)
    probes: dict[str, Any] = field(default_factory=dict)

    def summary(self, batch: int, bound: float) -> dict[str, Any]:
        """Counts for one batch size: rows compared, inside their stated spread, inside ``bound``."""
        rows = [r for r in self.rows if r.get(f"b{batch}_change") is not None]
        if not rows:
            return {"batch": batch, "n": 0}
        changes = [r[f"b{batch}_change"] for r in rows]
        worst = max(rows, key=lambda r: r[f"b{batch}_change"])
        pa = [r[f"b{batch}_p50_a"] for r in rows]
        pb = [r[f"b{batch}_p50_b"] for r in rows]
        factor = math.exp(statistics.fmean(math.log(b / a) for a, b in zip(pa, pb)))
        residual = [abs(b / a / factor - 1.0) for a, b in zip(pa, pb)]
        return {"batch": batch, "n": len(rows), "bound": bound, "machine_factor": factor,
                "residual_median": statistics.median(residual), "residual_largest": max(residual),
                "residual_within_bound": sum(x <= bound for x in residual), "rank_spearman": _spearman(pa, pb),
                "within_spread": sum(bool(r[f"b{batch}_within_spread"]) for r in rows),
                **_rel_summary(rows, batch),
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


def _rel_summary(rows: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """Counts of the probe-relative p50 (rows where both runs have it): within their band, median change."""
    rel = [r for r in rows if r.get(f"b{batch}_rel_change") is not None]
    if not rel:
        return {}
    worst = max(rel, key=lambda r: r[f"b{batch}_rel_change"])
    return {"rel_n": len(rel), "rel_within_spread": sum(bool(r[f"b{batch}_rel_within_spread"]) for r in rel),
            "rel_median_change": statistics.median(r[f"b{batch}_rel_change"] for r in rel),
            "rel_median_spread": statistics.median(r[f"b{batch}_rel_spread"] for r in rel),
            "rel_largest_change": worst[f"b{batch}_rel_change"], "rel_largest_row": worst["row"]}


def _versus(ra: dict[str, Any], rb: dict[str, Any], value: str, band: str) -> tuple[float | None, float | None]:
    """The relative change of column ``value`` from run a to run b and the larger of the two runs' ``band``."""
    change = relative_change(ra.get(value), rb.get(value))
    bands = [s for s in (ra.get(band), rb.get(band)) if isinstance(s, (int, float))]
    return change, max(bands) if bands else None


def _probe_ms(doc: dict[str, Any], in_turns: bool = False) -> float | None:
    """A benchmark's speed probe (``bench.latency``): with ``in_turns``, the mean of its medians timed in turns
    with the rows (None where it has none), else the mean of the probes before and after its timing."""
    p = doc.get("environment", {}).get("speed_probe") or {}
    if in_turns:
        turns = [t["ms"] for t in p.get("in_turns", []) if isinstance(t.get("ms"), (int, float))]
        return statistics.fmean(turns) if turns else None
    ms = [p.get(k) for k in ("before_ms", "after_ms") if isinstance(p.get(k), (int, float)) and p.get(k) > 0]
    return statistics.fmean(ms) if ms else None


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def conclusions(a: dict[str, Any], b: dict[str, Any], budgets_ms: tuple[float, ...] | None = None,
                batch: int = 1) -> dict[str, Any]:
    """What a deployer reads off each run, side by side: the Pareto-optimal rows (test ROC-AUC against p50 at
    ``batch``, as the report marks them) and the row ``bench.recommend`` picks under each budget."""
    from bench.recommend import BUDGETS_MS, recommend
    from bench.report import mark_pareto

    budgets_ms = BUDGETS_MS if budgets_ms is None else budgets_ms
    out: dict[str, Any] = {"batch": batch}
    fronts, picks = [], []
    for doc in (a, b):
        rows = [dict(r) for r in doc.get("rows", [])]
        mark_pareto(rows, batch=batch)
        fronts.append(sorted(_name(row_key(r)) for r in rows if r.get("pareto_latency")))
        per_budget = {}
        for ms in budgets_ms:
            try:
                best = recommend({"rows": rows}, ms, batch=batch).best
            except ValueError:  # several devices or no timed rows: nothing to pick from
                best = None
            per_budget[f"{ms:g}"] = None if best is None else _name(row_key(best))
        picks.append(per_budget)
    out["pareto_a"], out["pareto_b"] = fronts
    out["pareto_same"] = fronts[0] == fronts[1]
    out["picks_a"], out["picks_b"] = picks
    out["picks_same"] = picks[0] == picks[1]
    return out


def _name(key: tuple[str, ...]) -> str:
    return " ".join(key[:4]) + ("" if key[4] in ("None", "") else f" ({key[4]})")


def _settings(doc: dict[str, Any]) -> dict[str, Any]:
    env = doc.get("environment", {})
    s = dict(env.get("settings", {}))
    s.pop("backbones", None)
    flat = {}
    for k, v in s.items():  # nested settings (latency: {...}) one key each, so a difference names the key
        flat.update({f"setting {k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {f"setting {k}": v})
    return {**flat, "CPU": env.get("cpu", {}).get("model"),
            **{f"version of {k}": v for k, v in env.get("versions", {}).items()}}


def compare(a: dict[str, Any], b: dict[str, Any], a_name: str = "a", b_name: str = "b") -> Comparison:
    """Match the ok rows of two results documents (``bench.results_file.read_results``) and compare them."""
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
            change, spread = _versus(ra, rb, f"b{n}_p50_ms", f"b{n}_spread")
            if change is None:
                continue
            row.update({f"b{n}_p50_a": ra[f"b{n}_p50_ms"], f"b{n}_p50_b": rb[f"b{n}_p50_ms"], f"b{n}_change": change,
                        f"b{n}_spread": spread, f"b{n}_within_spread": spread is not None and change <= spread})
            rel, rel_spread = _versus(ra, rb, f"b{n}_rel", f"b{n}_rel_spread")
            if rel is not None:
                row.update({f"b{n}_rel_change": rel, f"b{n}_rel_spread": rel_spread,
                            f"b{n}_rel_within_spread": rel_spread is not None and rel <= rel_spread})
        cmp.rows.append(row)
    cmp.batches = [n for n in batches if any(f"b{n}_change" in r for r in cmp.rows)]
    turns = bool(_probe_ms(a, True) and _probe_ms(b, True))
    pa, pb = _probe_ms(a, turns), _probe_ms(b, turns)
    if pa and pb:
        cmp.probes = {"a_ms": pa, "b_ms": pb, "factor": pb / pa, "in_turns": turns,
                      "workload": a["environment"]["speed_probe"].get("workload")}
    if cmp.rows and 1 in cmp.batches:
        cmp.conclusions = conclusions(a, b)
    return cmp


def factor_words(f: float) -> str:
    """A ratio of second to first as words: 1.2 -> "20.0% slower", 0.9 -> "10.0% faster"."""
    return f"{f - 1:.1%} slower" if f >= 1 else f"{1 - f:.1%} faster"


def changed_picks(c: dict[str, Any]) -> list[str]:
    """``"<budget> ms: <first run's pick> -> <second's>"`` for each budget whose pick changed (:func:`conclusions`)."""
    return [f"{k} ms: {c['picks_a'][k]} -> {c['picks_b'][k]}" for k in c["picks_a"]
            if c["picks_a"][k] != c["picks_b"][k]]


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summary_lines(cmp: Comparison, bound: float = 0.10) -> list[str]:
    """The comparison in words: accuracy, then per batch size how many rows' p50 reproduced."""
    if not cmp.rows:
        return [f"{cmp.a} and {cmp.b} have no ok row in common."]
    lines = [f"Accuracy: {cmp.accuracy_identical()} of {len(cmp.rows)} rows have identical test figures "
             f"({', '.join(ACCURACY)})" + ("." if cmp.accuracy_identical() == len(cmp.rows) else
                                           f"; largest change "
                                           f"{max(r['accuracy_max_change'] or 0 for r in cmp.rows):.4f}.")]
    for n in cmp.batches:
        s = cmp.summary(n, bound)
        lines.append(f"p50 latency at batch {n}: {s['within_spread']} of {s['n']} rows changed by no more than the "
                     f"band their runs stated (median change {s['median_change']:.1%}, median stated band "
                     f"{s['median_spread']:.1%}); {s['within_bound']} of {s['n']} within {bound:.0%}; largest "
                     f"{s['largest_change']:.0%} ({s['largest_row']}).")
        if s.get("rel_n"):
            lines.append(f"  Relative to the speed probe timed in the same turns: {s['rel_within_spread']} of "
                         f"{s['rel_n']} rows within their stated band (median change {s['rel_median_change']:.1%}, "
                         f"median band {s['rel_median_spread']:.1%}; largest {s['rel_largest_change']:.0%}, "
                         f"{s['rel_largest_row']}).")
        lines.append(f"  As a whole the second run was {factor_words(s['machine_factor'])}; after that factor rows "
                     f"moved by a median {s['residual_median']:.1%} (largest {s['residual_largest']:.0%}, "
                     f"{s['residual_within_bound']} of {s['n']} within {bound:.0%}); rank correlation of the rows' "
                     f"p50 {_num(s['rank_spearman'])}.")
    if cmp.probes:
        lines.append(f"Speed probe ({cmp.probes['workload']}; "
                     f"{'timed in turns with the rows' if cmp.probes['in_turns'] else 'before and after the timing'}): "
                     f"{cmp.probes['a_ms']:.2f} ms -> {cmp.probes['b_ms']:.2f} ms "
                     f"({factor_words(cmp.probes['factor'])}).")
    c = cmp.conclusions
    if c:
        lines.append(f"Conclusions at batch {c['batch']}: Pareto-optimal rows "
                     + ("the same" if c["pareto_same"] else f"differ ({len(c['pareto_a'])} -> {len(c['pareto_b'])})")
                     + "; picks under " + ", ".join(f"{k} ms" for k in c["picks_a"])
                     + (" the same." if c["picks_same"] else " differ: " + "; ".join(changed_picks(c)) + "."))
    if cmp.only_a or cmp.only_b:
        lines.append(f"Rows ok in only one run: {len(cmp.only_a)} in {cmp.a}, {len(cmp.only_b)} in {cmp.b}.")
    if cmp.differences:
        lines.append("Settings that differ: " + "; ".join(cmp.differences) + ".")
    return lines
