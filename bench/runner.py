"""The benchmark loop behind `cxr-edge bench`: every artifact of a manifest, plus PyTorch eager FP32 per
backbone, measured the same way through ``predict(batch) -> logits``.

For each backbone (in manifest order) the loop

1. loads the source run of its artifacts, the test side of the run's saved split, and the FP32 model;
   counts parameters and FLOPs once (:func:`bench.cost.model_cost`);
2. loads each target (:mod:`bench.backends`) while watching peak memory, scores it on the test side
   at the run's validation threshold (:func:`core.metrics.summarize`, bootstrap 95 % CIs), scores its
   validation ROC-AUC (``val_roc_auc``: what the Pareto set and `recommend` choose by), compares its
   decisions and ROC-AUC with the PyTorch FP32 row, and applies the per-row metric hooks
   (:data:`ROW_METRICS`);
3. releases it, and later times the scored targets in ``rounds`` rounds, one after another, each cut into
   short blocks that take turns across the targets (block 1 of every target, then block 2 …), so that drift of
   the machine hits every row of a round alike, while the drift over the minutes of the benchmark shows in the
   band (``spread``) that the rounds' medians give each p50. The targets are reloaded for the timing a window
   at a time, the windows' memory bounded by ``max_memory_gb`` and every round visiting every window
   (:mod:`bench.windows`).
   By default (``interleave="all"``) this happens once, for the targets of every backbone together, after
   all are scored; ``interleave="backbone"`` times each backbone's targets before scoring the next.

A fixed PyTorch convolution (the speed probe, :mod:`bench.latency`) is timed before and after, and on the
CPU also in turns with the targets: each row's p50 is stated relative to it as well (``b1_rel``), so that a
machine whose speed changed between two benchmarks shows it (`cxr-edge compare`). Reading and writing
results.json is :mod:`bench.results_file`.

Nothing aborts the loop: a target that fails at any step becomes a row with ``status`` "failed" and its
``error``; a target that cannot run here (export failed, runtime absent, unverified) becomes a
"skipped" row with its ``reason``. Rows are flat dicts (one per backbone, format, precision, device and
runtime) so that they go straight to JSON and CSV.
"""

from __future__ import annotations

import gc
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import cost, latency, windows
from bench.accuracy import accuracy_columns, agreement_columns
from bench.backends import Target, artifact_targets, torch_targets
from bench.choice import CHOICE_TEXT
from bench.results_file import RESULTS_FORMAT
from bench.settings import BenchConfig, method_text
from core import io
from core.data import known_patients


@dataclass
class RowContext:
    """What a per-row metric hook may use. ``predictor`` is the loaded artifact (or PyTorch variant);
    ``model`` the FP32 PyTorch model on the CPU (for gradients, e.g. Grad-CAM); ``inputs`` the
    normalised test images (float32 NCHW) with ``labels``; ``probs`` this row's test probabilities and
    ``reference_probs`` the PyTorch FP32 row's (None while scoring that row itself); ``record`` the artifact's
    manifest record (its calibration settings, for instance)."""

    run: Any
    model: Any
    predictor: Any
    row: dict[str, Any]
    inputs: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    reference_probs: np.ndarray | None
    threshold: float
    device: str
    config: BenchConfig
    record: dict[str, Any] | None = None  # the artifact's manifest record (None for the PyTorch rows)


RowMetric = Callable[[RowContext], dict[str, Any]]

#: Per-row metric hooks: the one place where more figures join a row. Each hook takes a
#: :class:`RowContext` of an ok row (after accuracy, before latency) and returns flat ``{column: value}``
#: pairs that are merged into the row; its name (``fn.__name__``) is recorded, and an exception becomes
#: ``<name>_error`` in the row, never a failed benchmark. Columns a hook adds (e.g. Grad-CAM fidelity's
#: ``deletion_auc``, ``insertion_auc``, ``cam_agreement``, ``sanity_ok``) appear in table.md, table.csv and
#: ``cxr-edge table`` by themselves (:func:`bench.report.extra_columns`). Add one with
#: :func:`register_row_metric`, e.g. from the module that computes it, imported by the CLI.
ROW_METRICS: list[RowMetric] = []


def register_row_metric(fn: RowMetric) -> RowMetric:
    """Add ``fn`` to :data:`ROW_METRICS` (once); usable as a decorator."""
    if fn not in ROW_METRICS:
        ROW_METRICS.append(fn)
    return fn


# ------------------------------------------------------------------------------------------- loop


def bench_artifacts(artifacts_dir: str | Path, config: BenchConfig, progress: bool = True, console=None,
                    on_backbone: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Benchmark every record of ``artifacts_dir/manifest.json``; return the results document.

    ``on_backbone`` receives the partial document after each backbone (the CLI writes it, so an
    interrupted benchmark keeps what it measured).
    """
    import torch

    from export.manifest import MANIFEST, read_manifest

    artifacts_dir = Path(artifacts_dir)
    if not (artifacts_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{artifacts_dir / MANIFEST} does not exist; export runs there first "
                                f"(`cxr-edge export runs/ --out {artifacts_dir}`) or pass the artifacts folder")
    records = read_manifest(artifacts_dir)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r.get("backbone", "?"), []).append(r)
    if config.backbones:
        unknown = [b for b in config.backbones if b not in groups]
        if unknown:
            raise ValueError(f"backbone(s) {', '.join(unknown)} have no artifacts in {artifacts_dir / MANIFEST} "
                             f"(it has {', '.join(groups) or 'none'})")
        groups = {b: groups[b] for b in config.backbones}
    if not groups:
        raise ValueError(f"{artifacts_dir / MANIFEST} lists no artifacts; export some first")
    if config.threads:
        torch.set_num_threads(config.threads)
    threads = config.threads or torch.get_num_threads()
    from bench import env

    doc: dict[str, Any] = {
        "format": RESULTS_FORMAT, "complete": False, "artifacts": os.path.abspath(artifacts_dir),
        "environment": env.environment({**config.to_dict(), "threads_used": threads}),
        "method": method_text(config, threads), "backbones": {}, "rows": [],
    }
    t0 = time.perf_counter()
    probe = {"workload": latency.PROBE_WORKLOAD, "threads": threads, "before_ms": latency.speed_probe()}
    doc["environment"]["speed_probe"] = probe  # an interrupted benchmark's file keeps the "before" probe
    waiting: list[windows.Waiting] = []
    with _progress(progress, console) as bar:
        for name, recs in groups.items():
            rows, info, scored = bench_backbone(name, recs, artifacts_dir, config, threads, bar)
            doc["rows"] += rows
            doc["backbones"][name] = info
            waiting += scored
            if config.interleave == "backbone":
                _in_turns(probe, _time_interleaved(waiting, config, bar, name))
                waiting = []
            doc["memory"] = _memory(config, probe)
            if on_backbone:
                on_backbone(doc)
        if waiting:
            _in_turns(probe, _time_interleaved(waiting, config, bar, f"all {len(groups)} backbones"))
            waiting = []
    probe["after_ms"] = latency.speed_probe()
    doc["memory"] = _memory(config, probe)
    from bench.report import mark_pareto

    mark_pareto(doc["rows"])
    doc.update(complete=True, seconds=round(time.perf_counter() - t0, 1))
    return doc


def _in_turns(probe: dict[str, Any], timed: dict[str, Any] | None) -> None:
    if timed is not None:
        probe.setdefault("in_turns", []).append(timed)


def _memory(config: BenchConfig, probe: dict[str, Any]) -> dict[str, Any]:
    """The memory block of results.json: the limit on the artifacts loaded at once, the process's peak resident
    memory so far (ru_maxrss) and how each timing was scheduled."""
    return {"max_memory_gb": config.memory_limit_gb, "peak_rss_mib": round(windows.peak_rss_mib(), 1),
            "peak_rss_method": "resource.getrusage(RUSAGE_SELF).ru_maxrss of the benchmark process",
            "timing": [t.get("schedule") for t in probe.get("in_turns", [])]}


def bench_backbone(name: str, records: list[dict[str, Any]], artifacts_dir: Path, config: BenchConfig,
                   threads: int, bar=None) -> tuple[list[dict[str, Any]], dict[str, Any], list[windows.Waiting]]:
    """All rows of one backbone (PyTorch rows first, then the manifest's records in order) scored but not yet
    timed, its facts, and the ok rows to time (their predictors released; the timing loads them again)."""
    info: dict[str, Any] = {}
    task = bar.add_task(name, total=None) if bar is not None else None
    try:
        run, test, val, model = _prepare(name, records, artifacts_dir, config, info)
    except Exception as err:
        error = f"could not prepare the run: {type(err).__name__}: {err}"
        info["error"] = error
        eager = Target(backbone=name, format="pytorch", precision="fp32", device=config.device, runtime="torch eager")
        rows = [_failed_row(t, error, threads) for t in
                [eager] + [t for r in records for t in artifact_targets(r, artifacts_dir, config.device, threads)]]
        if bar is not None:
            bar.update(task, total=1, completed=1, description=f"{name} [red]failed")
        return rows, info, []
    weights = Path(os.path.abspath(run.path)) / "model.safetensors"
    targets = torch_targets(name, model, config.device, config.compile, weights.stat().st_size, str(weights))
    for r in records:
        targets += artifact_targets(r, artifacts_dir, config.device, threads)
    if bar is not None:
        bar.update(task, total=len(targets))
    ctx = _Shared(run=run, model=model, inputs=run.preprocess.normalize(test.images), labels=test.labels,
                  threshold=run.threshold, info=info, config=config, threads=threads,
                  patients=known_patients(test.paths, test.patients),
                  val_inputs=run.preprocess.normalize(val.images), val_labels=val.labels)
    rows, scored = [], []
    for t in targets:
        row, predictor = _load_and_score(t, ctx)
        rows.append(row)
        if predictor is not None:
            scored.append(windows.Waiting(t, row, ctx.inputs))
        del predictor
        _advance(bar, task, f"{name}: {t.format} {t.precision} {t.runtime}")
    if targets and targets[0].format == "pytorch":  # the timing rebuilds PyTorch rows from the run's weights
        for w in scored:
            if w.target.format == "pytorch":
                w.target = rebuilt_from_run(w.target, run, config)
    return rows, info, scored


def rebuilt_from_run(t: Target, run: Any, config: BenchConfig) -> Target:
    """The PyTorch target ``t`` with a loader that builds the model from the run's weights, so that the FP32
    model of every backbone need not stay in memory until the timing."""
    import dataclasses

    fresh = [x for x in torch_targets(t.backbone, _RunModel(run), config.device, config.compile)
             if x.runtime == t.runtime and x.precision == t.precision]
    return dataclasses.replace(t, load=fresh[0].load) if fresh else t


class _RunModel:
    """Stands for a run's FP32 model in :func:`bench.backends.torch_targets`: built from its weights when a loader
    deep-copies it."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def __deepcopy__(self, memo: dict) -> Any:
        return self.run.build_model()


@dataclass
class _Shared:
    run: Any
    model: Any
    inputs: np.ndarray
    labels: np.ndarray
    threshold: float
    info: dict[str, Any]
    config: BenchConfig
    threads: int
    patients: list[str] | None = None  # test images' patients, when known: the CIs resample them
    val_inputs: np.ndarray | None = None  # the validation side, scored for choosing rows (val_roc_auc)
    val_labels: np.ndarray | None = None
    reference_probs: np.ndarray | None = None
    reference_auc: float | None = None


def _prepare(name: str, records: list[dict[str, Any]], artifacts_dir: Path, config: BenchConfig,
             info: dict[str, Any]):
    from core.datasets import load_sides
    from core.runs import load_run
    from export.base import run_hash

    if config.runs_dir:
        run_path = Path(config.runs_dir) / name
    else:
        sources = {r.get("source_run") for r in records if r.get("source_run")}
        if not sources:
            raise ValueError(f"the manifest records of {name} name no source_run; pass --runs RUNS_DIR")
        if len(sources) > 1:
            raise ValueError(f"the artifacts of {name} come from {len(sources)} runs ({', '.join(sorted(sources))});"
                             " pass --runs RUNS_DIR to choose")
        run_path = io.recorded_path(sources.pop(), artifacts_dir)  # relative to the manifest's folder
    run = load_run(run_path, config.skip_bad)
    exported_from = {r.get("run_hash") for r in records if r.get("run_hash")}
    now = run_hash(run)
    if exported_from and exported_from != {now}:
        info["warning"] = (f"{run_path} has changed since its artifacts were exported (run.json hash {now[:12]}, "
                           f"export {', '.join(h[:12] for h in exported_from)}); the FP32 reference is the run as it "
                           "is now: export again")
    split, pre = run.split(), run.preprocess
    sides, found = load_sides(split, pre, sides=("val", "test"), progress=False)
    test, val = sides["test"], sides["val"]
    if split.left_out("test") or found:  # unreadable test images: recorded by the run, or found now (--skip-bad)
        info["test_images_left_out"] = {"recorded": split.left_out("test"), "found_unreadable": [p for p, _ in found]}
    if len(test.labels) == 0 or len(np.unique(test.labels)) < 2:
        raise ValueError(f"the test side of {run_path / 'split.json'} has {len(test.labels)} images and "
                         f"{len(np.unique(test.labels))} class(es); ROC-AUC needs both classes")
    model = run.build_model()
    info.update(run=os.path.abspath(run.path), run_hash=now, split_hash=split.hash, size=pre.size,
                n_test=int(len(test.labels)), n_test_pos=int(test.labels.sum()), threshold=run.threshold,
                threshold_chosen_on="val", init=run.record.get("init"), epochs_run=run.record.get("epochs_run"),
                **cost.model_cost(model, pre.size, pre.channels),
                preprocess_one_image=latency.preprocess_time(test.paths, pre))
    info.update(n_val=int(len(val.labels)), choice=CHOICE_TEXT)
    return run, test, val, model


def _base_row(t: Target, threads: int) -> dict[str, Any]:
    row = {**t.identity(), "status": None, "path": t.path, "bytes": t.bytes, "threads": threads}
    row.update(t.extra)
    return row


def _failed_row(t: Target, error: str, threads: int) -> dict[str, Any]:
    row = _base_row(t, threads)
    if t.skip_reason:
        row.update(status="skipped", reason=t.skip_reason)
    else:
        row.update(status="failed", error=error)
    return row


def _error(err: BaseException, stage: str) -> str:
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{stage}: {type(err).__name__}: {err}{at}"


def _load_and_score(t: Target, ctx: _Shared) -> tuple[dict[str, Any], Any]:
    """The row of one target with accuracy, cost and hook figures, and its live predictor (None unless ok)."""
    from export.base import predict_batched

    row = _base_row(t, ctx.threads)
    info = ctx.info
    row.update(params_m=info.get("params_m"), gflops=info.get("gflops"), split_hash=info.get("split_hash"),
               threshold=ctx.threshold)
    if info.get("warning"):
        row["warning"] = info["warning"]
    if t.skip_reason or t.load is None:
        row.update(status="skipped", reason=t.skip_reason or "nothing to load")
        return row, None
    stage = "checksum"
    predictor = None
    try:
        if t.check is not None:
            t.check()
        stage = "load"
        biggest = latency.make_batch(ctx.inputs, max(ctx.config.latency.batches))
        t0 = time.perf_counter()
        with cost.PeakMemory() as mem, cost.GpuPeak() as gpu:
            predictor = t.load()
            row["load_s"] = time.perf_counter() - t0
            row["rss_mib_after_load"] = cost.rss_mib()
            stage = f"first run at batch {len(biggest)}"
            predictor.predict(biggest)
        row.update(peak_mem_mib=mem.peak_mib, memory_method=mem.method)
        if ctx.config.device == "cuda":
            row["gpu_peak_mib"] = gpu.mib
        stage = "accuracy"
        logits = predict_batched(predictor, ctx.inputs, ctx.config.accuracy_batch)
        if logits.shape != ctx.labels.shape or not np.all(np.isfinite(logits)):
            raise ValueError(f"predict returned {logits.shape} logits ({int(np.sum(~np.isfinite(logits)))} "
                             f"non-finite) for {len(ctx.labels)} test images")
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        row.update(accuracy_columns(ctx.labels, probs, ctx.threshold, n_boot=ctx.config.n_boot, seed=ctx.config.seed,
                                    patients=ctx.patients))
        row.update(_validation_columns(predictor, ctx))
        if t.reference and ctx.reference_probs is None:
            ctx.reference_probs, ctx.reference_auc = probs, row["roc_auc"]
        row.update(agreement_columns(probs, ctx.reference_probs, row["roc_auc"], ctx.reference_auc, ctx.threshold))
        stage = "warm-up"
        for b in ctx.config.latency.batches:
            x = latency.make_batch(ctx.inputs, b)
            for _ in range(max(1, ctx.config.latency.warmup)):  # one at least: lazy compilation (OpenVINO b1)
                predictor.predict(x)
        row["status"] = "ok"
        hook_ctx = RowContext(run=ctx.run, model=ctx.model, predictor=predictor, row=row, inputs=ctx.inputs,
                              labels=ctx.labels, probs=probs, reference_probs=None if t.reference else
                              ctx.reference_probs, threshold=ctx.threshold, device=ctx.config.device,
                              config=ctx.config, record=t.record)
        row.update(row_metrics(hook_ctx))
        return row, predictor
    except Exception as err:
        row.update(status="failed", error=_error(err, stage))
        return row, None


def _validation_columns(predictor, ctx: _Shared) -> dict[str, Any]:
    """ROC-AUC on the run's validation side: what the Pareto set and `recommend` choose by (never test)."""
    from core.metrics import roc_auc_or_nan
    from export.base import predict_batched

    if ctx.val_inputs is None or len(ctx.val_inputs) == 0:
        return {"n_val": 0, "val_roc_auc": None}
    logits = predict_batched(predictor, ctx.val_inputs, ctx.config.accuracy_batch).astype(np.float64)
    return {"n_val": int(len(ctx.val_labels)), "val_roc_auc": roc_auc_or_nan(ctx.val_labels, logits)}


def row_metrics(ctx: RowContext) -> dict[str, Any]:
    """The figures of every hook in :data:`ROW_METRICS` for one row; a failing hook adds ``<name>_error``."""
    out: dict[str, Any] = {}
    for fn in ROW_METRICS:
        name = getattr(fn, "__name__", "row_metric")
        try:
            out.update(fn(ctx))
        except Exception as err:
            out[f"{name}_error"] = f"{type(err).__name__}: {err}"
    return out


def _time_interleaved(waiting: list[windows.Waiting], config: BenchConfig, bar, label: str) -> dict[str, Any] | None:
    """Time the waiting rows in turns, reloaded a window at a time (:func:`bench.windows.time_in_windows`), on the
    CPU with the speed probe taking its turns in every window, give each row its figures
    (:func:`bench.latency.row_figures`, relative to the probe of its own window; a target that raised becomes a
    failed row). Returns the probe's median per round and the schedule (None off the CPU or when it failed)."""
    lat = config.latency
    limit_mib = config.memory_limit_gb * 1024
    plan = windows.plan_windows([w.mib for w in waiting], limit_mib)
    task = bar.add_task(f"timing {label}", total=(len(waiting) + len(plan)) * lat.rounds) if bar else None  # probe

    def turn(j: int, r: int, i: int) -> None:
        _advance(bar, task, f"timing {label}: round {r + 1}/{lat.rounds}, block {j + 1}/{lat.blocks}",
                 1 / lat.blocks)

    cpu = config.device == "cpu"
    times, errors, schedule = windows.time_in_windows(waiting, lat, limit_mib, probe=cpu,
                                                      passes=config.window_passes, on_turn=turn)
    where = {i: k for k, members in enumerate(schedule.windows) for i in members}
    for i, w in enumerate(waiting):
        if w.mib > limit_mib:
            w.row["memory_warning"] = windows.oversize_warning(w.row, config.memory_limit_gb)
        if i in errors:
            w.row.update(status="failed", error=_error(*errors[i]))
            continue
        w.row.update(latency.row_figures(times[i], windows.probe_rounds(schedule, where[i], lat.rounds) if cpu
                                         else None))
    waiting.clear()
    gc.collect()
    if config.device == "cuda":
        import torch

        torch.cuda.empty_cache()
    probe = windows.probe_rounds_all(schedule, lat.rounds) if cpu else None
    return None if probe is None else {"timed": label, "round_ms": probe, "ms": float(np.median(probe)),
                                       "schedule": {**schedule.to_dict(), "limit_mib": round(limit_mib)}}


def _advance(bar, task, description: str, advance: float = 1) -> None:
    if bar is not None:
        bar.update(task, advance=advance, description=description)


def _progress(enabled: bool, console=None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not enabled, transient=False)
