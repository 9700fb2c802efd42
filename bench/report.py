"""From results.json to what people read: table.md, table.csv, pareto.png and the terminal table.

Pareto optimality is computed per device over the ok rows, twice: ROC-AUC against p50 latency at batch 1
(``pareto_latency``) and against bytes on disk (``pareto_bytes``). A row is optimal when no other row has an
ROC-AUC at least as high and a cost at least as low, one of them strictly. The ROC-AUC of that choice is the
**validation** one (``val_roc_auc``), so that choosing does not spend the test side; the test figures are what
is reported (:func:`choice_key`; results made before rows carried ``val_roc_auc`` fall back to test, and say so).

Columns that rows carry beyond the ones this module knows (figures added by per-row metric hooks,
see :data:`bench.runner.ROW_METRICS`) are shown too, after the known ones (:func:`extra_columns`).
"""

from __future__ import annotations

import csv
import io as _io
import math
import re
from pathlib import Path
from typing import Any

from bench.choice import CHOICE_KEY, choice_key, choice_text
from core import io

TABLE_MD, TABLE_CSV, PARETO_PNG = "table.md", "table.csv", "pareto.png"

_IDENTITY = ("backbone", "format", "precision", "device", "runtime", "status")
_TEXT = {"reason", "error", "warning", "note", "path", "memory_method", "split_hash", "runtime", "ci_method"}
_KNOWN = set(_IDENTITY) | _TEXT | {
    "bytes", "threads", "params_m", "gflops", "threshold", "load_s", "peak_mem_mib", "gpu_peak_mib", "n_test",
    "n_test_pos", "n_test_patients", "n_val", "val_roc_auc", "agreement", "max_abs_prob", "auc_change",
    "pareto_latency", "pareto_bytes", "unverified_reason",
}
_KNOWN_PATTERN = re.compile(r"^(b\d+_\w+|(accuracy|ppv|sensitivity|specificity|f1|roc_auc|pr_auc)(_lo|_hi)?"
                            r"|(tp|fp|tn|fn)_count)$")


def extra_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Numeric or yes/no columns that rows carry beyond the known ones, in order of first appearance
    (e.g. Grad-CAM fidelity's ``deletion_auc``); ``*_error`` columns go to the notes instead."""
    seen: dict[str, bool] = {}
    for row in rows:
        for k, v in row.items():
            if k in _KNOWN or _KNOWN_PATTERN.match(k) or k.endswith("_error"):
                continue
            if isinstance(v, (bool, int, float)) or v is None:
                seen.setdefault(k, True)
            else:
                seen[k] = False
    return [k for k, numeric in seen.items() if numeric and any(r.get(k) is not None for r in rows)]


#: What the choices (Pareto set, `recommend`, what to ship) rank by, and the words that say so.
def mark_pareto(rows: list[dict[str, Any]], batch: int = 1) -> None:
    """Set ``pareto_latency`` and ``pareto_bytes`` on every row (False for rows that are not ok), ranking by
    :func:`choice_key`."""
    auc = choice_key(rows)
    for key, cost_key in (("pareto_latency", f"b{batch}_p50_ms"), ("pareto_bytes", "bytes")):
        for row in rows:
            row[key] = False
        for device in {r.get("device") for r in rows}:
            pts = [r for r in rows if r.get("device") == device and r.get("status") == "ok"
                   and _finite(r.get(auc)) and _finite(r.get(cost_key))]
            for r in pts:
                r[key] = not any(o is not r and o[auc] >= r[auc] and o[cost_key] <= r[cost_key]
                                 and (o[auc] > r[auc] or o[cost_key] < r[cost_key]) for o in pts)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------------------------- table cells


def _f(x: Any, fmt: str) -> str:
    return format(x, fmt) if _finite(x) else ""


def _auc_cell(r: dict[str, Any]) -> str:
    if not _finite(r.get("roc_auc")):
        return ""
    return f"{r['roc_auc']:.3f} ({r['roc_auc_lo']:.3f}-{r['roc_auc_hi']:.3f})"


def _short_auc_cell(r: dict[str, Any]) -> str:
    """``0.983 (.974-.990)``: the ROC-AUC cell of the narrow view."""
    if not _finite(r.get("roc_auc")):
        return ""
    lo, hi = (f"{r[k]:.3f}".removeprefix("0") for k in ("roc_auc_lo", "roc_auc_hi"))
    return f"{r['roc_auc']:.3f} ({lo}-{hi})"


def _latency_cell(r: dict[str, Any], batch: int, figure: str = "p50_ms") -> str:
    """``p50 ±band%`` of a batch size; ``figure="rel"``: the p50 relative to the speed probe and its band."""
    p50 = r.get(f"b{batch}_{figure}")
    if not _finite(p50):
        return ""
    digits = ".2f" if p50 < 10 else ".1f"
    s = r.get(f"b{batch}_{'spread' if figure == 'p50_ms' else figure + '_spread'}")
    return f"{p50:{digits}}" + (f" ±{100 * s:.0f}%" if _finite(s) else "")


def _best_ips(r: dict[str, Any]) -> str:
    ips = [(v, k) for k, v in r.items() if re.fullmatch(r"b\d+_ips", k) and _finite(v)]
    if not ips:
        return ""
    v, k = max(ips)
    return f"{v:.0f} (b{k[1:-4]})"


def _pareto_cell(r: dict[str, Any]) -> str:
    return ("L" if r.get("pareto_latency") else "") + ("B" if r.get("pareto_bytes") else "")


def _extra_cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return _f(v, ".3f") if _finite(v) else ""


def _reason(r: dict[str, Any]) -> str:
    parts = [r.get("error") or r.get("reason") or ""]
    parts += [f"{k}: {v}" for k, v in r.items() if k.endswith("_error") and v]
    parts += [r[k] for k in ("note", "warning") if r.get(k)]
    return "; ".join(p for p in parts if p)


_COMPACT_DROP = ("f1", "p99", "params", "gflops", "probe", "val")

#: The columns of the terminal's default view: it fits 100 characters (`cxr-edge table --columns` picks others).
SUMMARY_COLUMNS = ("backbone", "artifact", "auc", "sens", "spec", "p50", "mb", "pareto")


def columns(rows: list[dict[str, Any]], batches: list[int], compact: bool = False) -> list[tuple[str, str, Any]]:
    """(key, header, cell function) of the readable table; extra columns last, keyed by their row key.
    ``compact`` leaves out F1, p99, the probe ratio, parameters and GFLOPs (for narrow terminals; table.md and
    table.csv have them all). The keys name columns for `cxr-edge table --columns`."""
    big = max(batches) if batches else 1
    cols: list[tuple[str, str, Any]] = [
        ("backbone", "backbone", lambda r: r["backbone"]),
        ("artifact", "artifact", lambda r: f"{r['format']} {r['precision']}"),
        ("runtime", "runtime", lambda r: r.get("runtime", "")),
        ("status", "status", lambda r: r["status"]),
        ("auc", "ROC-AUC (95% CI)", _auc_cell),
        ("val", "val AUC", lambda r: _f(r.get("val_roc_auc"), ".3f")),
        ("dauc", "ΔAUC", lambda r: _f(r.get("auc_change"), "+.4f")),
        ("agree", "agree", lambda r: _f(r.get("agreement"), ".3f")),
        ("sens", "sens", lambda r: _f(r.get("sensitivity"), ".3f")),
        ("spec", "spec", lambda r: _f(r.get("specificity"), ".3f")),
        ("f1", "F1", lambda r: _f(r.get("f1"), ".3f")),
        ("p50", "p50 ms b1 (±band)", lambda r: _latency_cell(r, 1) if 1 in batches else ""),
        ("probe", "b1 / probe", lambda r: _latency_cell(r, 1, "rel")),
        ("p99", "p99 ms b1", lambda r: _f(r.get("b1_p99_ms"), ".2f")),
        ("p50big", f"p50 ms b{big}", lambda r: _latency_cell(r, big)),
        ("ips", "img/s (best batch)", _best_ips),
        ("mb", "MB", lambda r: _f((r.get("bytes") or math.nan) / 1e6, ".2f")),
        ("params", "params M", lambda r: _f(r.get("params_m"), ".2f")),
        ("gflops", "GFLOPs", lambda r: _f(r.get("gflops"), ".3f")),
        ("mem", "mem MiB", lambda r: _f(r.get("peak_mem_mib"), ".0f")),
        ("pareto", "Pareto", _pareto_cell),
    ]
    if 1 not in batches:
        cols = [c for c in cols if c[0] not in ("p50", "probe", "p99")]
    if not any(_finite(r.get(CHOICE_KEY)) for r in rows):
        cols = [c for c in cols if c[0] != "val"]
    if not any(_finite(r.get("b1_rel")) for r in rows):
        cols = [c for c in cols if c[0] != "probe"]
    if compact:
        cols = [c for c in cols if c[0] not in _COMPACT_DROP]
    cols += [(k, _EXTRA_HEADERS.get(k, k), lambda r, k=k: _extra_cell(r.get(k))) for k in extra_columns(rows)]
    return cols


def select_columns(cols: list[tuple[str, str, Any]], keys: list[str] | tuple[str, ...]) -> list[tuple[str, str, Any]]:
    """The columns named by ``keys``, in that order; an unknown key is an error listing the known ones."""
    by_key = {c[0]: c for c in cols}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise ValueError(f"--columns: {', '.join(unknown)} is not a column of these results; choose from "
                         f"{', '.join(by_key)}")
    return [by_key[k] for k in keys]


def parse_columns(text: str) -> list[str]:
    """``"backbone, auc,p50"`` -> ``["backbone", "auc", "p50"]``; an empty list is an error."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise ValueError(f"--columns {text!r} names no column; give them comma-separated, e.g. backbone,artifact,auc")
    return keys


#: Short headers of the columns that hooks add (table.csv keeps the keys themselves).
_EXTRA_HEADERS = {"deletion_auc": "del AUC", "insertion_auc": "ins AUC", "cam_agreement": "CAM rho",
                  "cam_top10_overlap": "CAM top10", "sanity_ok": "sanity", "fidelity_ms_per_image": "fid ms/img",
                  "fp32_cam_ms_per_image": "CAM ms/img"}


def note_numbers(rows: list[dict[str, Any]]) -> dict[str, int]:
    numbers: dict[str, int] = {}
    for r in rows:
        if _reason(r):
            numbers.setdefault(_reason(r), len(numbers) + 1)
    return numbers


def batches_of(doc: dict[str, Any]) -> list[int]:
    return list(doc.get("environment", {}).get("settings", {}).get("latency", {}).get("batches", [1]))


# ------------------------------------------------------------------------------------ documents


def environment_lines(doc: dict[str, Any]) -> list[str]:
    env = doc.get("environment", {})
    cpu, gpu, v = env.get("cpu", {}), env.get("gpu"), env.get("versions", {})
    settings = env.get("settings", {})
    lines = [
        f"date {env.get('date')}, host {env.get('host')}, device {settings.get('device')}, "
        f"threads {settings.get('threads_used')}",
        f"CPU: {cpu.get('model')} ({cpu.get('logical_cores')} logical cores; {' '.join(cpu.get('flags', []))})",
        f"GPU: {gpu['name']} (compute {gpu['compute_capability']}, {gpu['memory_gib']} GiB, CUDA {gpu['cuda']})"
        if gpu else "GPU: none",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]
    runtimes = env.get("runtimes", {})
    if runtimes:
        lines.append("runtimes: " + "; ".join(f"{k} {', '.join(val) if isinstance(val, list) else val}"
                                             for k, val in runtimes.items()))
    for name, info in doc.get("backbones", {}).items():
        if "error" in info:
            lines.append(f"{name}: {info['error']}")
            continue
        pre = info.get("preprocess_one_image", {})
        lines.append(f"{name}: run {info.get('run')} ({info.get('init')}, {info.get('size')} px, "
                     f"{info.get('epochs_run')} epochs), split {info.get('split_hash')}, test {info.get('n_test')} "
                     f"images ({info.get('n_test_pos')} pneumonia), threshold {_f(info.get('threshold'), '.4f')} "
                     f"(chosen on val); preprocessing one image {_f(pre.get('ms_p50'), '.2f')} ms (p50 of "
                     f"{pre.get('n')}, apart from the model)" + (f"; WARNING {info['warning']}" if info.get("warning")
                                                                   else ""))
    return lines


def markdown(doc: dict[str, Any]) -> str:
    rows, batches = doc["rows"], batches_of(doc)
    cols = columns(rows, batches)
    notes = note_numbers(rows)
    out = [f"# Benchmark: {doc.get('artifacts')}", "", doc.get("method", ""), ""]
    out += [f"- {line}" for line in environment_lines(doc)]
    out += ["", "| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [str(fn(r)).replace("|", "\\|") for _, _, fn in cols]
        if _reason(r):
            cells[3] += f" [{notes[_reason(r)]}]"
        out.append("| " + " | ".join(cells) + " |")
    out += ["", f"Pareto: L = no other row on this device has a higher ROC-AUC at a lower p50 latency (batch 1); "
            f"B = the same against bytes on disk ({choice_text(rows)}). val AUC: validation ROC-AUC. "
            "ΔAUC and agree: against PyTorch eager FP32 of the same run. "
            "±band: the 95% interval for a repeat's p50 on this machine at the speed it ran, from the medians of "
            "rounds timed one after another. b1 / probe: p50 at batch 1 relative to a fixed PyTorch convolution "
            "timed in the same turns (meant to cancel a whole-machine slowdown; it tracks one only roughly).", ""]
    for reason, i in notes.items():
        out.append(f"{i}. {reason}")
    if not doc.get("complete", True):
        out += ["", "**Incomplete: the benchmark was interrupted; these are the backbones finished so far.**"]
    return "\n".join(out) + "\n"


def csv_text(rows: list[dict[str, Any]]) -> str:
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(keys), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    return buf.getvalue()


def rich_table(doc: dict[str, Any], compact: bool = False, keys: list[str] | tuple[str, ...] | None = None,
               rows: list[dict[str, Any]] | None = None, title: str | None = None, narrow: bool = False):
    """The table for the terminal (`cxr-edge table`): every row and column by default; ``keys`` picks columns
    (see :func:`columns`), ``rows`` a subset of the rows, ``compact`` drops the wide columns for narrow
    terminals, ``narrow`` puts two spaces between columns instead of three and shortens the p50 header."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    rows = doc["rows"] if rows is None else rows
    cols = columns(doc["rows"], batches_of(doc), compact)
    if keys is not None:
        cols = select_columns(cols, keys)
    notes = note_numbers(doc["rows"])
    table = Table(title=title or _title(doc), box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1, 0, 0) if narrow else (0, 1), show_edge=not narrow,
                  caption=f"Pareto (L, B): {choice_text(doc['rows'])}")
    if narrow:
        cols = [(key, _NARROW_HEADERS.get(key, header), _NARROW_CELLS.get(key, fn)) for key, header, fn in cols]
    for key, header, _ in cols:
        table.add_column(header, justify="left" if key in ("backbone", "artifact", "runtime", "status") else "right",
                         no_wrap=True)
    style = {"ok": "green", "failed": "bold red", "skipped": "yellow"}
    at = {key: i for i, (key, _, _) in enumerate(cols)}
    for i, r in enumerate(rows):
        cells = [escape(str(fn(r))) for _, _, fn in cols]
        if "status" in at:
            if _reason(r):
                cells[at["status"]] += f" [{notes[_reason(r)]}]"
            cells[at["status"]] = f"[{style.get(r['status'], '')}]{cells[at['status']]}"
        if "pareto" in at and (r.get("pareto_latency") or r.get("pareto_bytes")):
            cells[at["pareto"]] = f"[bold cyan]{cells[at['pareto']]}"
        last = i + 1 == len(rows) or rows[i + 1]["backbone"] != r["backbone"]
        table.add_row(*cells, end_section=not narrow and last and i + 1 < len(rows))
    return table


#: Shorter headers of the narrow view (its footer says that the ± is a band and the batch is 1).
_NARROW_HEADERS = {"p50": "p50 ms b1"}
#: Shorter cells of the narrow view.
_NARROW_CELLS = {"auc": _short_auc_cell, "mb": lambda r: _f((r.get("bytes") or math.nan) / 1e6, ".1f")}


def _title(doc: dict[str, Any]) -> str:
    env = doc.get("environment", {})
    return (f"{doc.get('artifacts')} on {env.get('settings', {}).get('device')} "
            f"({env.get('cpu', {}).get('model')}, {_threads(env)})")


# ------------------------------------------------------------------------------ terminal summary


def pareto_rows(doc: dict[str, Any], batch: int = 1) -> list[dict[str, Any]]:
    """The ok rows on a Pareto frontier (latency or bytes), per device, fastest first."""
    front = [r for r in doc["rows"] if r.get("status") == "ok" and (r.get("pareto_latency") or r.get("pareto_bytes"))]
    return sorted(front, key=lambda r: (str(r.get("device")), r.get(f"b{batch}_p50_ms") or math.inf))


def summary_table(doc: dict[str, Any], keys: list[str] | tuple[str, ...] | None = None):
    """The Pareto-optimal rows with the columns that fit 100 characters (:data:`SUMMARY_COLUMNS`)."""
    available = {c[0] for c in columns(doc["rows"], batches_of(doc))}
    keys = keys or [k for k in SUMMARY_COLUMNS if k in available]
    return rich_table(doc, keys=keys, rows=pareto_rows(doc), title="Pareto-optimal: " + _title(doc), narrow=True)


#: What the narrow view's figures mean, under its table.
SUMMARY_LEGEND = "p50 ±: 95% band for a repeat's p50 (batch 1). Pareto: best ROC-AUC for its latency (L), size (B)."


def pick_lines(doc: dict[str, Any], batch: int = 1) -> list[str]:
    """One short line per device and latency budget of :data:`bench.recommend.BUDGETS_MS`: the artifact
    `cxr-edge recommend` picks there (best test ROC-AUC within the budget), or the fastest when none fits."""
    from bench.recommend import BUDGETS_MS, recommend

    key = f"b{batch}_p50_ms"
    devices = sorted({str(r.get("device")) for r in doc["rows"] if r.get("status") == "ok"})
    lines = []
    for device in devices:
        lines.append(f"Best test ROC-AUC within a p50 budget at batch {batch} on {device} (cxr-edge recommend):")
        for budget in BUDGETS_MS:
            try:
                best = recommend(doc, budget, device=device, batch=batch).best
            except ValueError as err:
                lines.append(f"  {budget:g} ms: {err}")
                continue
            if best is None:
                timed = [r for r in doc["rows"] if r.get("device") == device and r.get("status") == "ok"
                         and _finite(r.get(key))]
                fastest = min(timed, key=lambda r: r[key]) if timed else None
                lines.append(f"  {budget:g} ms: nothing fits" + (f" (fastest: {_short(fastest, key)})" if fastest
                                                                  else ""))
                continue
            lines.append(f"  {budget:g} ms: {_short(best, key)}")
    return lines


def _short(r: dict[str, Any], key: str) -> str:
    """A row in a few words: name, test ROC-AUC, p50 and size."""
    auc = f"ROC-AUC {r['roc_auc']:.3f}" if _finite(r.get("roc_auc")) else "ROC-AUC n/a"
    mb = f", {r['bytes'] / 1e6:.1f} MB" if _finite(r.get("bytes")) else ""
    return f"{r['backbone']} {r['format']} {r['precision']}, {auc}, p50 {r[key]:.2f} ms{mb}"


# ---------------------------------------------------------------------------------------- plot

_MARKERS = {("pytorch", "fp32"): "o", ("pytorch", "fp16"): "h", ("pytorch", "bf16"): "H",
            ("onnx", "fp32"): "s", ("onnx", "fp16"): "D", ("onnx", "int8"): "d",
            ("openvino", "fp32"): "^", ("openvino", "fp16"): ">", ("openvino", "int8"): "v",
            ("tensorrt", "fp32"): "p", ("tensorrt", "fp16"): "P", ("tensorrt", "int8"): "X",
            ("executorch", "fp32"): "*", ("executorch", "int8"): "+", ("litert", "fp32"): "<", ("litert", "int8"): "4"}


_LINE_MARKERS = set("+x1234|_")


def plot(doc: dict[str, Any], path: str | Path) -> Path:
    """pareto.png: ROC-AUC against p50 latency at batch 1 (log x) and against bytes (log x); a colour per
    backbone, a marker per format and precision, the Pareto frontier of each device drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    rows = [r for r in doc["rows"] if r.get("status") == "ok" and _finite(r.get("roc_auc"))]
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    cmap = plt.get_cmap("tab10")
    colour = {b: cmap(i % 10) for i, b in enumerate(backbones)}
    kinds = list(dict.fromkeys((r["format"], r["precision"]) for r in rows))
    spare = iter("x123|_8")
    marker = {k: _MARKERS.get(k) or next(spare, "*") for k in kinds}
    devices = list(dict.fromkeys(r["device"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.6), layout="constrained")
    panels = (("b1_p50_ms", "pareto_latency", "p50 latency at batch 1 (ms, log scale)"),
              ("bytes", "pareto_bytes", "artifact size (MB, log scale)"))
    for ax, (key, flag, label) in zip(axes, panels):
        scale = 1e-6 if key == "bytes" else 1.0
        for r in rows:
            if _finite(r.get(key)):
                hollow = len(devices) > 1 and r["device"] != devices[0]
                m = marker[(r["format"], r["precision"])]
                if m in _LINE_MARKERS:  # drawn with lines only: colour them, thicker on a second device
                    ax.scatter(r[key] * scale, r["roc_auc"], s=80, marker=m, c=[colour[r["backbone"]]],
                               linewidths=1.2 if hollow else 2.2, alpha=0.9, zorder=3)
                    continue
                ax.scatter(r[key] * scale, r["roc_auc"], s=60, marker=m,
                           facecolors="none" if hollow else colour[r["backbone"]], edgecolors=colour[r["backbone"]],
                           linewidths=1.2, alpha=0.9, zorder=3)
        for device in devices:
            front = sorted((r[key] * scale, r["roc_auc"]) for r in rows
                           if r["device"] == device and r.get(flag) and _finite(r.get(key)))
            if front:
                xs, ys = zip(*front)
                ax.step(xs, ys, where="post", color="0.3", lw=1, ls="--", zorder=2,
                        label=f"Pareto frontier ({device})")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.set_xlabel(label)
        ax.set_ylabel("test ROC-AUC (frontier: Pareto set chosen on validation ROC-AUC)"
                      if choice_key(doc["rows"]) == CHOICE_KEY else "test ROC-AUC")
        ax.grid(True, which="both", alpha=0.25)
        if any(r.get(flag) for r in rows):
            ax.legend(loc="lower right", fontsize=8)
    env = doc.get("environment", {})
    cpu = env.get("cpu", {}).get("model")
    gpu = (env.get("gpu") or {}).get("name")
    fig.suptitle(f"Accuracy against cost — {', '.join(devices)}; {gpu or cpu}, "
                 f"{_threads(env)}", fontsize=11)
    colour_handles = [Line2D([], [], marker="o", ls="", color=colour[b], label=b) for b in backbones]
    marker_handles = [Line2D([], [], marker=marker[k], ls="", color="0.35", markerfacecolor="0.35",
                             label=f"{k[0]} {k[1]}") for k in kinds]
    fig.legend(handles=colour_handles, loc="outside right upper", fontsize=8, title="backbone (colour)",
               title_fontsize=8, frameon=False)
    fig.legend(handles=marker_handles, loc="outside right lower", fontsize=8, frameon=False, title_fontsize=8,
               title="artifact (marker)" + (f"\nhollow: {', '.join(devices[1:])}" if len(devices) > 1 else ""))
    if not rows:
        for ax in axes:
            ax.text(0.5, 0.5, "no ok rows to plot", ha="center", va="center", transform=ax.transAxes)
    path = Path(path)
    io.write_atomic(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return path


def write_reports(doc: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """table.md, table.csv and pareto.png beside results.json, each written atomically; paths relative to
    ``out_dir`` as in results.json."""
    from bench.results_file import portable

    out_dir = Path(out_dir)
    doc = portable(doc, out_dir)
    paths = [io.write_atomic(out_dir / TABLE_MD, lambda p: p.write_text(markdown(doc))),
             io.write_atomic(out_dir / TABLE_CSV, lambda p: p.write_text(csv_text(doc["rows"])))]
    paths.append(plot(doc, out_dir / PARETO_PNG))
    return paths


def _threads(env: dict[str, Any]) -> str:
    n = env.get("settings", {}).get("threads_used")
    return f"{n} thread" + ("" if n == 1 else "s")
