"""`cxr-edge export`: trained runs -> checked ONNX / OpenVINO / TensorRT / mobile (ExecuTorch, LiteRT, Core ML)
artifacts and artifacts/manifest.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import Progress, SkipBadLater, console, friendly, out, print_notes

_REASON_CHARS = 700


@friendly
def export(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, or a folder of runs (e.g. runs/).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Artifacts folder: <out>/<backbone>/<format>-"
                                          "<precision>.<ext> and <out>/manifest.json.")] = Path("artifacts"),
    formats: Annotated[str, typer.Option("--formats", "-f", help="Comma-separated: onnx, openvino, tensorrt, "
                                         "executorch, litert, coreml; or 'all' (absent backends are listed as "
                                         "skipped, with the reason and the install hint).")]
    = "onnx,openvino",
    precisions: Annotated[str, typer.Option("--precisions", "-p", help="Comma-separated: fp32, fp16, int8; or "
                                            "'all'.")] = "all",
    calibration: Annotated[str | None, typer.Option("--calibration", help="INT8 calibration: minmax, entropy or "
                                                    "percentile. Default: each target's preset (onnx percentile, "
                                                    "tensorrt entropy, openvino minmax; NNCF maps percentile to "
                                                    "MEAN_QUANTILE and entropy to HISTOGRAM). ExecuTorch/LiteRT "
                                                    "(PT2E): minmax or entropy (histogram).")]
    = None,
    n_calibration: Annotated[int, typer.Option("--n-calibration", min=1,
                                               help="Calibration images, drawn (seeded) from the "
                                               "training side of the run's split only.")] = 300,
    accuracy_aware: Annotated[bool, typer.Option("--accuracy-aware", help="OpenVINO INT8 only: NNCF quantization "
                                                 "with accuracy control on the validation side.")] = False,
    max_auc_drop: Annotated[float, typer.Option("--max-auc-drop", help="Budget of --accuracy-aware: largest "
                                                "validation ROC-AUC drop allowed, in (0, 1).")] = 0.005,
    keep_float: Annotated[list[str] | None, typer.Option("--keep-float", help="INT8: keep these layers in float "
                                                         "(repeatable): a glob over graph node names "
                                                         "('node_Conv_1*') or an op type ('type:Mul'; ONNX and "
                                                         "OpenVINO names both work, Mul = Multiply). "
                                                         "Replaces the backbone's "
                                                         "default (OpenVINO EfficientNet-B0 and MobileNet-V3: "
                                                         "type:Multiply).")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Experts: keep artifacts that differ from PyTorch "
                                            "beyond tolerance (figures still recorded, marked unverified).")] = False,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="Exit 0 even when some artifacts failed their "
                                             "checks (they stay failed rows in the manifest; `just demo` uses this "
                                             "so a pipeline run reports them instead of stopping).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Build every artifact again, even one already in --out that "
                                        "is what this request would build (same run, settings, library versions "
                                        "and checksum; such artifacts are kept by default).")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1,
                                      help="Export this many runs at a time, each in a process pinned "
                                      "to its own share of the CPU cores (Linux; 2 on a 2-core machine saves about "
                                      "a third of the time: the exporters are mostly single-threaded Python).")] = 1,
    skip_bad: SkipBadLater = False,
    progress: Progress = True,
) -> None:
    """Export trained runs and check every artifact against PyTorch on the run's validation images.

    ONNX FP32 (dynamo exporter, simplified) is the hub; FP16 and INT8 (static QDQ) are made from it.
    Tolerances: FP32 |logit difference| <= 1e-4 + 1e-4 x |logit|; FP16/INT8 max |probability difference|,
    decision agreement and validation ROC-AUC change. Mobile formats (ExecuTorch, LiteRT, Core ML;
    extra `mobile`) take one image at a time; Core ML off macOS is converted and checked
    structurally only (marked unverified). Exit status 1 when any artifact failed
    (0 with --keep-going). Run again after an interruption: artifacts already built and checked for the
    same run and settings are kept (--force rebuilds them).
    """
    from core.runs import find_runs
    from export.base import ExportError, parse_formats, parse_precisions
    from export.manifest import MANIFEST
    from export.pipeline import export_runs, quant_configs

    fmts, precs = parse_formats(formats), parse_precisions(precisions)
    overrides: dict[str, Any] = {"calibration": calibration.strip().lower() if calibration else None,
                                 "n_calibration": n_calibration, "accuracy_aware": accuracy_aware,
                                 "max_auc_drop": max_auc_drop,
                                 "ignored": tuple(p.strip() for p in keep_float if p.strip()) if keep_float else None}
    quant_configs(fmts, overrides)  # a bad option fails here, before any run is read
    found = find_runs(runs, skip_bad=skip_bad)
    print_notes([r.left_out_note(("train", "val")) for r in found])
    try:
        records = export_runs(found, out_dir, fmts, precs, overrides, verify=not no_verify, progress=progress,
                              console=console, force=force, jobs=jobs)
    except ExportError as err:  # before any artifact: a broken manifest, an impossible request
        raise ValueError(str(err)) from err
    out.print(_table(records, out_dir))
    _notes(records)
    print_notes([f"{r['backbone']}: {len(r['images_left_out']['val_found_unreadable'])} validation image(s) found "
                 f"unreadable and skipped (--skip-bad); listed under images_left_out in the manifest"
                 for r in records if (r.get("images_left_out") or {}).get("val_found_unreadable")])
    kept = sum(1 for r in records if r.get("reused"))
    if kept:
        out.print(f"{kept} artifact(s) kept from an earlier export (same run, settings, library versions and "
                  "checksum); --force builds them again")
    out.print(f"manifest: {out_dir / MANIFEST}")
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(records)} artifact(s) failed[/bold red]; the reasons are in "
                      f"the table and in {out_dir / MANIFEST}")
        if not keep_going:
            raise typer.Exit(1)


def _table(records: list[dict[str, Any]], out_dir: Path) -> Table:
    from rich import box

    n_val = next((r["parity"]["n"] for r in records if r.get("parity")), None)
    title = f"artifacts in {out_dir}" + (f" (checked on {n_val} validation images)" if n_val else "")
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("backbone", "artifact", "status", "MB"):
        table.add_column(col, no_wrap=True, justify="right" if col == "MB" else "left")
    table.add_column("parity vs PyTorch", min_width=13)
    style = {"ok": "green", "failed": "bold red", "skipped": "yellow"}
    notes = _note_numbers(records)
    for i, r in enumerate(records):
        unverified = r["status"] == "ok" and (r.get("warning") or r.get("verified") is False)
        status = r["status"] + (" (unverified)" if unverified else "") + (" (kept)" if r.get("reused") else "")
        if _reason(r):
            status += f" [{notes[_reason(r)]}]"
        first = i == 0 or records[i - 1]["backbone"] != r["backbone"]
        last = i + 1 == len(records) or records[i + 1]["backbone"] != r["backbone"]
        table.add_row(r["backbone"] if first else "", f"{r['format']} {r['precision']}",
                      f"[{style.get(r['status'], '')}]{escape(status)}",
                      f"{r['bytes'] / 1e6:.2f}" if r.get("bytes") else "", _parity_cell(r),
                      end_section=last and i + 1 < len(records))
    return table


def _note_numbers(records: list[dict[str, Any]]) -> dict[str, int]:
    numbers: dict[str, int] = {}
    for r in records:
        if _reason(r):
            numbers.setdefault(_reason(r), len(numbers) + 1)
    return numbers


def _notes(records: list[dict[str, Any]]) -> None:
    """The reasons of skipped and failed rows under the table (they are long), each reason once."""
    for reason, i in _note_numbers(records).items():
        rows = [r for r in records if _reason(r) == reason]
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(r["format"], []).append(r)
        where = "; ".join(f"{fmt} {'/'.join(dict.fromkeys(r['precision'] for r in rs))} of "
                          f"{', '.join(dict.fromkeys(r['backbone'] for r in rs))}" for fmt, rs in groups.items())
        if len(reason) > _REASON_CHARS:
            reason = reason[:_REASON_CHARS] + "… (full text in the manifest)"
        out.print(f"[{i}] {rows[0]['status']}, {where}: {reason}", highlight=False, markup=False)


def _reason(r: dict[str, Any]) -> str:
    return r.get("error") or r.get("reason") or r.get("warning") or r.get("unverified_reason") or ""


def _parity_cell(r: dict[str, Any]) -> str:
    f = r.get("parity")
    if not f:
        return ""
    if r["precision"] == "fp32":
        ratio = f" ({f['logit_ratio']:.2f} of bound)" if f.get("logit_ratio") is not None else ""
        return f"Δlogit {f['max_abs_logit']:.1e}{ratio}"
    auc = f"ΔAUC {f['auc_change']:+.4f}" if f.get("auc_change") is not None else "ΔAUC n/a"
    dp = f["max_abs_prob"]
    return (f"Δp {dp:.1e}" if dp < 1e-3 else f"Δp {dp:.4f}") + f", agree {f['agreement']:.3f}, {auc}"
