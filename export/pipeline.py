"""From trained runs to checked artifacts and one manifest: the loop behind `cxr-edge export`.

For every run and every (format, precision) asked for, build the artifact into a temporary folder
beside its final place, load it back, compare it with the PyTorch model on the run's validation
images, and only then move it into place. A failure becomes a record with its error, never a crash
of the loop; ``<out>/manifest.json`` is rewritten atomically after every artifact.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core import io
from export.base import (
    FORMATS,
    PRECISIONS,
    ExportContext,
    ExportError,
    Format,
    ParityError,
    QuantConfig,
    TorchPredictor,
    artifact_files,
    artifact_name,
    calibration_set,
    file_bytes,
    file_sha256,
    get_format,
    keep_float_patterns,
    parity,
    predict_batched,
    run_hash,
)
from export.manifest import _key, read_manifest, write_manifest

HUB_USERS = ("openvino", "tensorrt")  # formats built from the FP32 ONNX file when it exists


def export_runs(runs: Sequence, out_dir: str | Path, formats: Sequence[Format | str], precisions: Sequence[str],
                quant_overrides: dict[str, Any] | None = None, verify: bool = True, progress: bool = True,
                console=None, force: bool = False, jobs: int = 1) -> list[dict[str, Any]]:
    """Export each run to each format and precision; return one record per artifact (ok, failed or skipped).

    ``jobs`` > 1 exports that many runs at a time, each in a worker process pinned to its own share of
    the CPU cores (:mod:`core.parallel`); the records, the manifest and the artifacts are the same.

    ``quant_overrides`` are :class:`~export.base.QuantConfig` fields applied on top of each target's
    preset (``accuracy_aware`` goes to OpenVINO only). With ``verify=False`` an artifact beyond
    tolerance is kept, its figures recorded and ``verified`` false. An artifact already in ``out_dir``
    that this request would build again (:func:`reusable`: same run, settings, library versions and
    file) is kept and its record returned with ``reused`` set, unless ``force``.
    """
    out_dir = Path(out_dir)
    fmts = _order([get_format(f) if isinstance(f, str) else f for f in formats])
    precs = [p for p in PRECISIONS if p in set(precisions)]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precs:
        raise ValueError(f"precision(s) {unknown or list(precisions)} not known; choose from {', '.join(PRECISIONS)}")
    quants = quant_configs(fmts, quant_overrides or {})
    _check_unique(runs)
    earlier = {} if force else {_key(r): r for r in read_manifest(out_dir)}  # a broken manifest stops us here
    missing = {f.name: f.missing() for f in fmts}
    records: list[dict[str, Any]] = []
    jobs = min(jobs, len(runs))
    if jobs > 1:
        return _export_parallel(runs, fmts, precs, quants, missing, out_dir, verify, earlier, jobs, progress, console)
    with _progress(progress, console) as bar:
        task = bar.add_task("export", total=len(runs) * len(fmts) * len(precs))
        for run in runs:
            def starting(fmt: Format, precision: str, name: str = run.record["backbone"]) -> None:
                bar.update(task, description=f"{name} {fmt.name} {precision}")

            with contextlib.closing(_export_run(run, fmts, precs, quants, missing, out_dir, verify, starting,
                                                earlier)) as done:
                for record in done:
                    records.append(commit(out_dir, record))
                    bar.advance(task)
    return records


def _export_parallel(runs, fmts, precs, quants, missing, out_dir, verify, earlier, jobs, progress, console):
    """:func:`export_runs` with runs spread over ``jobs`` pinned workers; the parent alone writes the manifest."""
    from core.parallel import run_jobs

    order = sorted(runs, key=_cost, reverse=True)  # the costliest first, so that no worker is left with it at the end
    names = [f.name for f in fmts]
    args = [(str(r.path), names, precs, quants, missing, str(out_dir), verify,
             {k: v for k, v in earlier.items() if k[0] == _name(r)}, r.skip_bad) for r in order]
    got: dict[str, list[dict[str, Any]]] = {_name(r): [] for r in runs}
    doing: dict[str, str] = {}
    with _progress(progress, console) as bar:
        task = bar.add_task("export", total=len(runs) * len(fmts) * len(precs))

        def on_message(message: tuple) -> None:
            kind, name, payload = message
            if kind == "start":
                doing[name] = f"{name} {payload}"
            else:
                got[name].append(commit(out_dir, payload))
                bar.advance(task)
                if len(got[name]) == len(fmts) * len(precs):
                    doing.pop(name, None)
            bar.update(task, description=" | ".join(doing.values()) or "export")

        def on_error(i: int, err: BaseException) -> None:
            run = order[i]
            done = {(r["format"], r["precision"]) for r in got[_name(run)]}
            for fmt in fmts:
                for precision in precs:
                    if (fmt.name, precision) not in done:
                        on_message(("record", _name(run), io.json_safe({
                            **_identity(run, fmt, precision, out_dir), "status": "failed",
                            "error": f"the export worker stopped: {type(err).__name__}: {err}"})))

        run_jobs(_export_job, args, jobs, on_message=on_message, on_error=on_error)
    return [rec for r in runs for rec in got[_name(r)]]


def _export_job(run_path: str, fmt_names: list[str], precs: list[str], quants: dict[str, QuantConfig],
                missing: dict[str, str | None], out_dir: str, verify: bool,
                earlier: dict[tuple[str, str, str], dict[str, Any]], skip_bad: bool = False) -> None:
    """One run's artifacts in a worker process; each record goes to the parent as it is made."""
    from core.parallel import send
    from core.runs import load_run

    run = load_run(run_path, skip_bad)
    fmts = [get_format(n) for n in fmt_names]
    name = _name(run)
    with contextlib.closing(_export_run(run, fmts, precs, quants, missing, Path(out_dir), verify,
                                        lambda fmt, precision: send("start", name, f"{fmt.name} {precision}"),
                                        earlier)) as done:
        for record in done:
            send("record", name, record)


def _cost(run) -> float:
    """How long the run's export takes, roughly: its backbone's relative cost in the registry (the one that
    orders parallel training too)."""
    from core import registry

    return registry.get(_name(run)).train_cost


def _export_run(run, fmts: list[Format], precs: list[str], quants: dict[str, QuantConfig],
                missing: dict[str, str | None], out_dir: Path, verify: bool, starting=None,
                earlier: dict[tuple[str, str, str], dict[str, Any]] | None = None):
    """Yield one record per (format, precision) of one run; the run is prepared once, on first need."""
    ctx, ctx_error, work = None, None, None
    calibrate = "int8" in precs and any(not missing[f.name] and "int8" in f.precisions for f in fmts)
    try:
        for fmt in fmts:
            for precision in precs:
                if starting:
                    starting(fmt, precision)
                reason = missing[fmt.name] or (None if precision in fmt.precisions
                                               else f"{fmt.name} has no {precision} path")
                if reason:
                    yield io.json_safe({**_identity(run, fmt, precision, out_dir), "status": "skipped",
                                        "reason": reason})
                    continue
                prev = (earlier or {}).get((run.record["backbone"], fmt.name, precision))
                if prev is not None and reusable(prev, run, fmt, quants[fmt.name], out_dir, verify):
                    yield {**prev, "reused": io.now()}
                    continue
                if ctx is None and ctx_error is None:
                    work = Path(tempfile.mkdtemp(prefix=".tmp-work-", dir=_mkdir(out_dir / _name(run))))
                    try:
                        ctx = make_context(run, quants[fmt.name], work, calibrate=calibrate)
                        ctx.artifact_dir = out_dir / _name(run)
                    except Exception as err:
                        ctx_error = f"{type(err).__name__}: {err}"
                if ctx_error:
                    yield io.json_safe({**_identity(run, fmt, precision, out_dir), "status": "failed",
                                  "error": f"could not prepare the run: {ctx_error}"})
                else:
                    yield io.json_safe(export_one(ctx, fmt, precision, out_dir, quants[fmt.name], verify))
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def reusable(prev: dict[str, Any], run, fmt: Format, quant: QuantConfig, out_dir: Path,
             verify: bool = True) -> bool:
    """Whether an earlier record is what exporting again would build: an ok, checked artifact of the same
    run (its hash), made by the same library versions, with the same quantization settings (INT8), whose
    file(s) on disk still have the recorded checksum."""
    if prev.get("status") != "ok" or not prev.get("path") or (verify and prev.get("verified") is not True):
        return False
    if prev.get("run_hash") != run_hash(run) or not _same_versions(prev.get("versions") or {}, fmt):
        return False
    if prev["precision"] == "int8":
        recorded = prev.get("calibration") or {}
        settings = {k: v for k, v in recorded.items() if k not in ("n_images", "side", "keep_float")}
        if settings != quant.to_dict():
            return False
        if {k: recorded.get(k) for k in _keep_float(quant, fmt, run)} != _keep_float(quant, fmt, run):
            return False  # e.g. the registry's keep-float default changed since
    final = Path(out_dir) / prev["path"]
    return final.exists() and file_sha256(final) == prev.get("sha256")


KEEP_FLOAT_FORMATS = ("onnx", "openvino", "tensorrt")  # the INT8 paths that keep layers in float


def _keep_float(quant: QuantConfig, fmt: Format, run) -> dict[str, Any]:
    """``{"keep_float": patterns}`` a format's INT8 build keeps in float for this run (the user's, else the
    backbone's default); empty for formats that keep nothing in float."""
    if fmt.name not in KEEP_FLOAT_FORMATS:
        return {}
    return {"keep_float": list(keep_float_patterns(quant, run.record["backbone"])[0])}


# Libraries every artifact depends on (the model, the ONNX hub file OpenVINO and TensorRT start from);
# each format adds its own runtime (Format.requires).
_BUILD_LIBRARIES = ("python", "torch", "torchvision", "timm", "numpy", "cxr-edge", "onnx", "onnxslim", "onnxscript")


def _same_versions(recorded: dict[str, str], fmt: Format) -> bool:
    """Whether the libraries that build ``fmt`` have the versions recorded (other formats' extras may differ)."""
    now = _versions()
    names = _BUILD_LIBRARIES + tuple(m.replace("_", "-") for m in fmt.requires)
    return all(recorded.get(n) == now.get(n) for n in names)


def quant_configs(formats: Sequence[Format], overrides: dict[str, Any]) -> dict[str, QuantConfig]:
    """One validated :class:`QuantConfig` per target: its preset, then the user's overrides."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    aware = bool(overrides.pop("accuracy_aware", False))
    if aware and "openvino" not in [f.name for f in formats]:
        raise ValueError("--accuracy-aware exists only for OpenVINO INT8 (nncf accuracy control); add openvino to "
                         f"--formats (given: {', '.join(f.name for f in formats)}) or drop --accuracy-aware")
    QuantConfig(**overrides)  # the shared fields are checked once, whatever the formats
    return {f.name: QuantConfig.preset(f.name, **overrides, **({"accuracy_aware": aware} if f.name == "openvino"
                                                                else {})) for f in formats}


def make_context(run, quant: QuantConfig, work_dir: Path, calibrate: bool = True) -> ExportContext:
    """The model, training-side calibration images, validation images and PyTorch's logits on them."""
    from core.datasets import load_sides

    split, pre = run.split(), run.preprocess
    model = run.build_model()
    sides, found = load_sides(split, pre, sides=("val",), progress=False)
    val = sides["val"]
    if len(val.labels) == 0:
        raise ExportError(f"the split of {run.path} has no validation images to check the artifacts on")
    val_inputs = pre.normalize(val.images)
    calibration = (calibration_set(split, pre, quant.n_calibration, quant.seed) if calibrate
                   else np.zeros((0, pre.channels, pre.size, pre.size), np.float32))
    reference = predict_batched(TorchPredictor(model), val_inputs)
    left_out = {"val": split.left_out("val") + len(found), "val_found_unreadable": [p for p, _ in found]}
    return ExportContext(run=run, model=model, calibration=calibration, val_inputs=val_inputs, val_labels=val.labels,
                         reference_logits=reference, quant=quant, work_dir=work_dir,
                         left_out=left_out if left_out["val"] else {})


def export_one(ctx: ExportContext, fmt: Format, precision: str, out_dir: Path, quant: QuantConfig,
               verify: bool = True) -> dict[str, Any]:
    """Build, load and compare; any error becomes a "failed" record.

    An ok artifact is left in a temporary folder beside its final place (the record's ``_staged``): :func:`commit`
    puts it in place together with its manifest record."""
    run = ctx.run
    rel = artifact_name(run.record["backbone"], fmt, precision)
    final = out_dir / rel
    record = _identity(run, fmt, precision, out_dir)
    if fmt.note:
        record["note"] = fmt.note
    if ctx.left_out:  # validation images the parity check left out: recorded as unreadable, or found so now
        record["images_left_out"] = ctx.left_out
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{fmt.name}-{precision}-", dir=_mkdir(final.parent)))
    t0, staged = time.perf_counter(), False
    try:
        module = importlib.import_module(fmt.module)
        if fmt.name in HUB_USERS and not _try_hub(ctx):
            record["hub_error"] = ctx.facts["hub_error"]  # the target had to start from PyTorch, or fails
        ctx.quant = quant
        if precision == "int8":
            record["calibration"] = {**quant.to_dict(), "n_images": int(len(ctx.calibration)), "side": "train",
                                     **_keep_float(quant, fmt, run)}
        facts = module.build(ctx, precision, tmp / final.name)
        record.update(facts=facts, export_seconds=round(time.perf_counter() - t0, 3))
        if not (tmp / final.name).exists():
            raise ExportError(f"{fmt.module}.build() wrote no {final.name}")
        unverified = getattr(module, "unverified_reason", lambda: None)()  # e.g. Core ML off macOS
        if unverified:
            record.update(verified=False, unverified_reason=unverified)
        else:
            t1 = time.perf_counter()
            logits = predict_batched(module.load(tmp / final.name), ctx.val_inputs)
            figures = parity(ctx.reference_logits, logits, ctx.val_labels, run.threshold, precision)
            record.update(parity=figures, parity_seconds=round(time.perf_counter() - t1, 3), verified=verify)
            if not figures["within_tolerance"]:
                message = parity_message(ctx, record, figures, verify)
                if verify:
                    raise ParityError(message)
                record["warning"] = message
        built = tmp / final.name
        record.update(status="ok", path=rel, bytes=file_bytes(built), sha256=file_sha256(built), _staged=str(built))
        staged = True
    except Exception as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}")
        record.setdefault("export_seconds", round(time.perf_counter() - t0, 3))
    finally:
        if not staged:
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def commit(out_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write one record into ``out_dir/manifest.json`` and, for a newly built artifact, put its file(s) in place,
    as one step: when the manifest cannot be written the new file(s) are removed and an earlier artifact they
    were replacing is put back, so no file is left on disk that the manifest does not describe."""
    staged = record.pop("_staged", None)
    if staged is None:
        write_manifest(out_dir, [record])
        return record
    built, final = Path(staged), Path(out_dir) / record["path"]
    aside = _set_aside(final)
    try:
        _move_into_place(built, final)
        write_manifest(out_dir, [record])
    except BaseException as err:
        _remove_artifact(final)
        for old, original in aside:
            os.replace(old, original)
        if isinstance(err, OSError):
            raise ExportError(f"could not write {Path(out_dir) / 'manifest.json'} ({err}); {final} was not kept and "
                              f"the artifact that was there (if any) is back: make {out_dir} writable or export "
                              "to another --out") from err
        raise
    finally:
        shutil.rmtree(built.parent, ignore_errors=True)
    for old, _ in aside:
        _remove_artifact(old)
    return record


def _set_aside(final: Path) -> list[tuple[Path, Path]]:
    """Rename the files of an artifact already at ``final`` to hidden names beside it: (hidden, original) pairs."""
    if final.is_dir():
        present = [final]
    else:
        present = [f for f in artifact_files(final) if f.exists()]
    pairs = [(f.with_name(f".old-{os.getpid()}-{f.name}"), f) for f in present]
    for hidden, original in pairs:
        os.replace(original, hidden)
    return pairs


def _remove_artifact(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
        return
    for f in artifact_files(path):
        f.unlink(missing_ok=True)


def parity_message(ctx: ExportContext, record: dict[str, Any], f: dict[str, Any], verify: bool = True) -> str:
    text = (f"{record['backbone']} {record['format']} {record['precision']} differs from PyTorch beyond tolerance on "
            f"{f['n']} validation images: {'; '.join(f['failures'])} (max |logit difference| {f['max_abs_logit']:.3g}, "
            f"max |probability difference| {f['max_abs_prob']:.3g}, decision agreement {f['agreement']:.3f}, "
            f"val ROC-AUC {_num(f['val_auc_reference'])} -> {_num(f['val_auc'])})")
    p = 1 / (1 + np.exp(-np.asarray(ctx.reference_logits, np.float64)))
    if f["agreement"] < 1 and p.max() - p.min() < 0.05:
        text += (f". PyTorch's own validation probabilities span only {p.min():.4f}..{p.max():.4f} around the "
                 f"threshold {record['threshold']:.4f} (an undertrained model?), so tiny differences flip decisions")
    if not verify:
        return text + ". Kept because of --no-verify"
    return text + ". Not written; export with --no-verify to keep it anyway"


def _num(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4f}"


def _try_hub(ctx: ExportContext) -> bool:
    """Make the FP32 ONNX file for targets that start from it; False (the error in ``ctx.facts["hub_error"]``)
    when it cannot be made, as such a target may still convert from PyTorch."""
    from export import onnx as onnx_target

    try:
        onnx_target.ensure_fp32(ctx)
        return True
    except Exception:
        return False


def _move_into_place(built: Path, final: Path) -> None:
    """Side files first, the main file last (each an atomic rename); a folder artifact (.mlpackage) in one rename.
    The files of an older build are set aside first (:func:`commit`)."""
    if built.is_dir():
        os.replace(built, final)
        return
    files = artifact_files(built)
    for f in files[1:] + files[:1]:
        os.replace(f, final.parent / f.name)


def load_artifact(record_or_path: dict[str, Any] | str | Path, out_dir: str | Path | None = None, **options):
    """A predictor for a manifest record (its path is relative to ``out_dir``) or an artifact file."""
    if isinstance(record_or_path, dict):
        rec = record_or_path
        if rec.get("status") != "ok" or not rec.get("path"):
            raise ExportError(f"{rec.get('backbone')} {rec.get('format')} {rec.get('precision')} has no artifact "
                              f"(status {rec.get('status')}: {rec.get('error') or rec.get('reason')})")
        path, fmt = Path(out_dir or ".") / rec["path"], get_format(rec["format"])
    else:
        path = Path(record_or_path)
        matches = [f for f in FORMATS.values() if path.name.endswith(f.suffix)]
        if not matches:
            raise ValueError(f"cannot tell the format of {path}: expected a name ending in "
                             f"{', '.join(f.suffix for f in FORMATS.values())}")
        fmt = matches[0]
    return importlib.import_module(fmt.module).load(path, **options)


# -------------------------------------------------------------------------------------- helpers


def _identity(run, fmt: Format, precision: str, out_dir: Path) -> dict[str, Any]:
    """The fields every record of ``run``'s artifact starts with; ``source_run`` relative to the manifest's folder."""
    return {"backbone": run.record["backbone"], "format": fmt.name, "precision": precision, "status": None,
            "path": None, "bytes": None, "sha256": None, "source_run": io.portable_path(run.path, out_dir),
            "run_hash": run_hash(run), "split_hash": run.record["split"]["hash"],
            "preprocess": run.preprocess.to_dict(), "threshold": run.threshold, "created": io.now(),
            "versions": _versions()}


def _versions() -> dict[str, str]:
    return io.versions(("cxr-edge", "onnxslim", "onnxscript", "tensorrt", "executorch", "litert-torch",
                        "ai-edge-litert", "coremltools"))


def _order(formats: list[Format]) -> list[Format]:
    """ONNX first (the hub others start from); no format twice."""
    seen: dict[str, Format] = {}
    for f in sorted(formats, key=lambda f: f.name != "onnx"):
        seen.setdefault(f.name, f)
    return list(seen.values())


def _check_unique(runs: Sequence) -> None:
    by: dict[str, list[str]] = {}
    for run in runs:
        by.setdefault(run.record["backbone"], []).append(str(run.path))
    for name, paths in by.items():
        if len(paths) > 1:
            raise ValueError(f"{len(paths)} runs are of backbone {name} ({', '.join(paths)}); their artifacts would "
                             f"overwrite each other: export them to different --out folders")


def _name(run) -> str:
    return run.record["backbone"]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _progress(enabled: bool, console=None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not enabled, transient=False)
