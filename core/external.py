"""Accuracy on a new cohort: trained runs or exported artifacts scored on an outside data set.

Every image of the outside data (a Kermany-layout folder or a CSV, :func:`core.data.read_source`) is scored by
each model at its own **validation** threshold (never one chosen on these data), with the metrics and 95% CIs of
the internal test side (:func:`core.metrics.summarize`; patients resampled where the data name them), Brier
score and ECE (:mod:`core.calibration`), and beside each figure the model's internal test figure and the change.
Several models also give their mean-probability ensemble, its threshold chosen on their common validation side.

The internal figures come from the run's saved split. Their probabilities (validation and test side, per model and
TTA setting) are cached in the run folder (``evaluate_cache.json``, keyed by the sha256 of ``run.json`` and the
split hash), so a second evaluation decodes no internal image. As information only, each model also gets the
threshold on the outside data that would restore its validation sensitivity (``local_operating_point``), and a
label-free shift warning (:mod:`core.shift`).

A model is a run folder (or a folder of runs), an export folder (its ``manifest.json``), or one artifact file of
an export folder; artifacts are loaded with the benchmark's loaders (:func:`bench.backends.artifact_targets`),
so every format the benchmark measures works, and take their threshold and source run from their manifest record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import io
from core.calibration import calibration_summary, threshold_for_sensitivity
from core.data import DataError, known_patients, load_images, read_source
from core.metrics import METRICS, choose_operating_point, ci_method, ensemble_probabilities, point_metrics, summarize
from core.runs import Run, RunError, find_runs, load_run
from core.tta import TTA_VIEWS, sigmoid, tta_probabilities

REPORT_FORMAT = "cxr-edge-external-eval/1"
CACHE_FILE = "evaluate_cache.json"
CACHE_FORMAT = "cxr-edge-eval-cache/1"
SHOWN = ("roc_auc", "pr_auc", "sensitivity", "specificity", "precision", "f1", "accuracy")


@dataclass
class Scorer:
    """One model to evaluate: a run's PyTorch model or a loaded artifact, with its source run and threshold."""

    name: str
    run: Run
    threshold: float
    predictor: Any  # predict(float32 NCHW) -> logits
    key: str  # names it in the run's cache: "pytorch fp32" or "<format> <precision> <sha256[:16]>"
    model: Any = None  # the PyTorch model of a run (gives features); None for an artifact
    artifact: dict[str, Any] | None = None

    @property
    def preprocess(self):
        return self.run.preprocess


# ------------------------------------------------------------------------------------------ models


def _manifest_of(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """(export folder, record) of an artifact file, from the manifest.json of its folder or the one above."""
    from export.manifest import MANIFEST, read_manifest

    for folder in (path.parent, path.parent.parent):
        if (folder / MANIFEST).is_file():
            for rec in read_manifest(folder):
                if rec.get("path") and (folder / rec["path"]).resolve() == path.resolve():
                    return folder, rec
    return None


def _artifact_scorer(record: dict[str, Any], folder: Path, device: str, threads: int | None) -> Scorer | str:
    """A scorer for one manifest record, or the reason it cannot run here."""
    from bench.backends import artifact_targets
    from export.manifest import verify_sha256

    target = artifact_targets(record, folder, device, threads)[0]
    name = f"{record.get('backbone')} {record.get('format')} {record.get('precision')}"
    if target.skip_reason or target.load is None:
        return f"{name}: {target.skip_reason or 'nothing to load'}"
    if not record.get("source_run"):
        return f"{name}: its manifest record names no source_run, whose split and validation threshold are needed"
    try:
        sha = verify_sha256(folder / record["path"], record.get("sha256"))
        predictor = target.load()
    except Exception as err:  # a changed file, or one its runtime cannot load: a reason, not a traceback
        return f"{name}: {type(err).__name__}: {err}"
    artifact = {"format": record["format"], "precision": record["precision"], "path": str(folder / record["path"]),
                "sha256": sha, "runtime": target.runtime}
    from core.io import recorded_path

    run = load_run(recorded_path(record["source_run"], folder))  # relative to the manifest's folder
    return Scorer(name, run, float(record["threshold"]), predictor,
                  f"{record['format']} {record['precision']} {sha[:16]}", artifact=artifact)


def _run_scorer(run: Run, device: str) -> Scorer:
    from export.base import TorchPredictor

    model = run.build_model().to(device)
    return Scorer(run.record["backbone"], run, run.threshold, TorchPredictor(model, device), "pytorch fp32",
                  model=model)


def resolve_models(paths: list[str | Path], device: str = "cpu", threads: int | None = None
                   ) -> tuple[list[Scorer], list[str]]:
    """Scorers for run folders, folders of runs, export folders and artifact files; and notes on the records of
    an export folder that cannot run here (skipped, with their reasons)."""
    from export.manifest import MANIFEST, read_manifest

    scorers: list[Scorer] = []
    notes: list[str] = []
    for p in map(Path, paths):
        if p.is_dir() and (p / MANIFEST).is_file():
            for rec in read_manifest(p):
                got = _artifact_scorer(rec, p, device, threads)
                if isinstance(got, str):
                    notes.append(f"skipped {got}")
                else:
                    scorers.append(got)
        elif (p.exists() and not p.is_dir()) or p.suffix == ".mlpackage":
            found = _manifest_of(p)
            if found is None:
                raise RunError(f"{p} is not listed in a manifest.json of its folder or the one above; evaluate needs "
                               f"its record (threshold, source run): pass the export folder, or the run folder")
            got = _artifact_scorer(found[1], found[0], device, threads)
            if isinstance(got, str):
                raise RunError(f"cannot evaluate {p}: {got}")
            scorers.append(got)
        else:
            scorers += [_run_scorer(run, device) for run in find_runs([p])]
    if not scorers:
        raise RunError(f"nothing to evaluate in {', '.join(map(str, paths))}: " + ("; ".join(notes) or "no models"))
    _unique_names(scorers)
    return scorers, notes


def _unique_names(scorers: list[Scorer]) -> None:
    """Two models of one name (two runs of a backbone) are told apart by their run folder."""
    names = [s.name for s in scorers]
    for s in scorers:
        if names.count(s.name) > 1:
            s.name = f"{s.name} ({s.run.path.name})" if s.run.path.name != s.name else f"{s.name} ({s.run.path})"


# ------------------------------------------------------------------------------------------ scoring


def probabilities(scorer: Scorer, x: np.ndarray, tta: bool = False, batch: int = 32) -> np.ndarray:
    """PNEUMONIA probabilities of normalised NCHW images (with TTA: the mean over :data:`core.tta.TTA_VIEWS`)."""
    fn = scorer.predictor.predict
    parts = [tta_probabilities(fn, x[i:i + batch]) if tta else sigmoid(np.asarray(fn(x[i:i + batch])).reshape(-1))
             for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _cache_key(scorer: Scorer, tta: bool) -> str:
    return f"{scorer.key} | tta {'on' if tta else 'off'}"


def _read_cache(run: Run, run_hash: str, split_hash: str) -> dict[str, Any]:
    path = run.path / CACHE_FILE
    fresh = {"format": CACHE_FORMAT, "run_hash": run_hash, "split_hash": split_hash, "sides": None, "entries": {}}
    if not path.is_file():
        return fresh
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return fresh
    ok = doc.get("format") == CACHE_FORMAT and doc.get("run_hash") == run_hash and doc.get("split_hash") == split_hash
    return doc if ok else fresh


def internal_probabilities(scorer: Scorer, tta: bool = False, progress: bool = False) -> dict[str, Any]:
    """The model's validation and test probabilities on its run's saved split, with labels and patients; read
    from the run folder's cache, or computed and added to it."""
    from core.datasets import load_sides
    from export.base import run_hash

    run, key = scorer.run, _cache_key(scorer, tta)
    split = run.split()
    doc = _read_cache(run, run_hash(run), split.hash)
    if key not in doc["entries"]:
        sides = load_sides(split, run.preprocess, sides=("val", "test"), progress=progress)[0]
        doc["sides"] = {n: {"labels": s.labels.tolist(), "paths": s.paths, "patients": s.patients}
                        for n, s in sides.items()}
        doc["entries"][key] = {n: probabilities(scorer, run.preprocess.normalize(s.images), tta).tolist()
                               for n, s in sides.items()}
        old = _read_cache(run, doc["run_hash"], doc["split_hash"])  # another evaluation may have added entries
        doc["entries"] = {**old["entries"], **doc["entries"]}
        io.write_json(run.path / CACHE_FILE, doc)
    sides = doc["sides"]
    return {"split_hash": split.hash, "val_labels": np.asarray(sides["val"]["labels"]),
            "test_labels": np.asarray(sides["test"]["labels"]),
            "test_patients": known_patients(sides["test"]["paths"], sides["test"]["patients"]),
            "val": np.asarray(doc["entries"][key]["val"]), "test": np.asarray(doc["entries"][key]["test"])}


@dataclass
class OutsideData:
    """The outside data set, decoded once per preprocessing: labels, patients (when known) and skipped files."""

    source: Any
    labels: np.ndarray
    paths: list[str]
    patients: list[str] | None
    images: dict[Any, np.ndarray]  # Preprocess -> uint8 NxHxWxC
    skipped: list[tuple[str, str]]


def load_outside(data: str | Path, preprocesses: list[Any], skip_bad: bool = False,
                 progress: bool = False) -> OutsideData:
    source = read_source(data, skip_bad=skip_bad)
    images: dict[Any, np.ndarray] = {}
    kept_paths, skipped = None, list(source.skipped)
    for pre in dict.fromkeys(preprocesses):
        arr, kept, bad = load_images(source.samples, pre, skip_bad=skip_bad, progress=progress)
        images[pre] = arr
        if kept_paths is None:
            kept_paths, kept_samples, skipped = [s.path for s in kept], kept, skipped + bad
    if not kept_samples:
        raise DataError(f"no image of {source.root} could be decoded ({len(skipped)} skipped); check the files")
    labels = np.asarray([s.label for s in kept_samples], np.int64)
    if len(np.unique(labels)) < 2:
        raise DataError(f"{source.root} has images of one class only after skipping bad files; ROC-AUC and the "
                        f"sensitivity/specificity need NORMAL and PNEUMONIA images")
    patients = known_patients(kept_paths, [s.patient for s in kept_samples])
    return OutsideData(source, labels, kept_paths, patients, images, skipped)


# ------------------------------------------------------------------------------------------ figures


def figures(labels: np.ndarray, probs: np.ndarray, threshold: float, patients: list[str] | None, *, n_boot: int,
            seed: int) -> dict[str, Any]:
    """summarize() plus Brier score and ECE."""
    return {**summarize(labels, probs, threshold, n_boot=n_boot, seed=seed, patients=patients),
            **calibration_summary(labels, probs)}


def change(outside: dict[str, Any], internal: dict[str, Any]) -> dict[str, float]:
    """Outside minus internal test, per metric and for Brier score and ECE."""
    out = {m: outside["metrics"][m]["value"] - internal["metrics"][m]["value"] for m in METRICS}
    out.update({k: outside[k] - internal[k] for k in ("brier", "ece")})
    return out


def local_operating_point(labels: np.ndarray, probs: np.ndarray, val_labels: np.ndarray, val_probs: np.ndarray,
                          threshold: float) -> dict[str, Any]:
    """Information only: the threshold on these data that gives back the model's validation sensitivity."""
    target = point_metrics(val_labels, val_probs, threshold)["sensitivity"]
    return {**threshold_for_sensitivity(labels, probs, target), "n_images": int(len(labels)),
            "target_sensitivity": target, "validation_threshold": threshold,
            "note": "information only: chosen on these labelled data, so its figures here are optimistic"}


def _model_record(scorer: Scorer, outside: OutsideData, probs: np.ndarray, internal: dict[str, Any], shift,
                  n_boot: int, seed: int) -> dict[str, Any]:
    from export.base import run_hash

    ext = figures(outside.labels, probs, scorer.threshold, outside.patients, n_boot=n_boot, seed=seed)
    test = figures(internal["test_labels"], internal["test"], scorer.threshold, internal["test_patients"],
                   n_boot=n_boot, seed=seed)
    return {"name": scorer.name, "kind": "artifact" if scorer.artifact else "run",
            "backbone": scorer.run.record["backbone"], "run": str(scorer.run.path), "run_hash": run_hash(scorer.run),
            "split_hash": internal["split_hash"], "artifact": scorer.artifact, "threshold": scorer.threshold,
            "threshold_chosen_on": "val", "outside": ext, "internal_test": test, "change": change(ext, test),
            "local_operating_point": local_operating_point(outside.labels, probs, internal["val_labels"],
                                                           internal["val"], scorer.threshold),
            "shift": shift.to_dict()}


def _shift_report(scorer: Scorer, outside: OutsideData, probs: np.ndarray, val_probs: np.ndarray, device: str,
                  progress: bool):
    from core.shift import ShiftReference, check_shift, features_of, reference_for_run

    if scorer.model is None:
        return check_shift(ShiftReference(val_probs, scorer.threshold), probs)
    ref = reference_for_run(scorer.run, device=device, progress=progress).with_probs(val_probs)
    feats = features_of(scorer.model, outside.images[scorer.preprocess], scorer.preprocess, device=device)
    return check_shift(ref, probs, feats)


def _ensemble(scorers: list[Scorer], outside: OutsideData, probs: list[np.ndarray], internals: list[dict[str, Any]],
              n_boot: int, seed: int) -> dict[str, Any]:
    if len({i["split_hash"] for i in internals}) > 1:
        return {"skipped": "the models come from different splits; an ensemble's threshold needs one validation side"}
    first = internals[0]
    val = ensemble_probabilities([i["val"] for i in internals])
    threshold = choose_operating_point(first["val_labels"], val)["threshold"]
    ext_p, test_p = ensemble_probabilities(probs), ensemble_probabilities([i["test"] for i in internals])
    ext = figures(outside.labels, ext_p, threshold, outside.patients, n_boot=n_boot, seed=seed)
    test = figures(first["test_labels"], test_p, threshold, first["test_patients"], n_boot=n_boot, seed=seed)
    return {"name": "ensemble (mean prob.)", "members": [s.name for s in scorers], "method": "mean of probabilities",
            "split_hash": first["split_hash"], "threshold": threshold, "threshold_chosen_on": "val (Youden's J on "
            "the ensemble's validation probabilities)", "outside": ext, "internal_test": test,
            "change": change(ext, test), "local_operating_point": local_operating_point(
                outside.labels, ext_p, first["val_labels"], val, threshold), "probs": ext_p, "test_probs": test_p}


def evaluate_external(paths: list[str | Path], data: str | Path, *, skip_bad: bool = False, tta: bool = False,
                      n_boot: int = 1000, seed: int = 0, device: str = "auto", threads: int | None = None,
                      progress: bool = False) -> dict[str, Any]:
    """The report of :mod:`core.external` (module docstring) as a JSON-ready dict; ``_curves`` holds the
    probabilities for the reliability diagram (dropped before writing)."""
    from core.train import resolve_device

    dev = str(resolve_device(device))
    scorers, notes = resolve_models(paths, "cuda" if dev.startswith("cuda") else "cpu", threads)
    outside = load_outside(data, [s.preprocess for s in scorers], skip_bad, progress)
    models, probs, internals, curves = [], [], [], {"internal test": {}, "outside data": {}}
    for s in scorers:
        p = probabilities(s, s.preprocess.normalize(outside.images[s.preprocess]), tta)
        internal = internal_probabilities(s, tta, progress)
        shift = _shift_report(s, outside, p, internal["val"], dev, progress)
        models.append(_model_record(s, outside, p, internal, shift, n_boot, seed))
        probs.append(p)
        internals.append(internal)
        curves["internal test"][s.name] = (internal["test_labels"], internal["test"])
        curves["outside data"][s.name] = (outside.labels, p)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT, "created": io.now(), "data": _data_record(outside),
        "method": _method(outside, tta, n_boot, seed), "models": models, "notes": notes,
        "environment": io.environment(),
    }
    if len(scorers) > 1:
        ens = _ensemble(scorers, outside, probs, internals, n_boot, seed)
        if "probs" in ens:
            curves["internal test"][ens["name"]] = (internals[0]["test_labels"], ens.pop("test_probs"))
            curves["outside data"][ens["name"]] = (outside.labels, ens.pop("probs"))
        report["ensemble"] = ens
    report["_curves"] = curves
    return report


def _data_record(outside: OutsideData) -> dict[str, Any]:
    return {"source": outside.source.root, "kind": outside.source.kind, "n_images": int(len(outside.labels)),
            "n_pos": int(outside.labels.sum()), "n_patients": len(set(outside.patients)) if outside.patients else None,
            "patients_known": outside.patients is not None, "n_skipped": len(outside.skipped),
            "skipped": [list(s) for s in outside.skipped]}


def _method(outside: OutsideData, tta: bool, n_boot: int, seed: int) -> dict[str, Any]:
    return {"threshold": "each model's own, chosen on its validation side (never on these data)",
            "ci_method": ci_method(n_boot, outside.patients is not None), "ci_seed": seed,
            "internal_ci_method": "patient bootstrap where the split names patients, else image (per record)",
            "tta": {"on": tta, "views": list(TTA_VIEWS) if tta else ["identity"]},
            "calibration": "Brier score; ECE over 15 equal-width bins",
            "internal_test": "the test side of each model's saved split (split_hash per model)"}


# ------------------------------------------------------------------------------------------ output

_LABELS = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "sensitivity": "sensitivity", "specificity": "specificity",
           "precision": "PPV", "f1": "F1", "accuracy": "accuracy", "brier": "Brier", "ece": "ECE (15 bins)"}


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(model, figure, outside value [95% CI], internal test value, change) for every model and the ensemble."""
    rows = []
    records = list(report["models"]) + ([report["ensemble"]] if "outside" in report.get("ensemble", {}) else [])
    for rec in records:
        for i, key in enumerate((*SHOWN, "brier", "ece")):
            ext, test = rec["outside"], rec["internal_test"]
            if key in METRICS:
                m = ext["metrics"][key]
                cell = f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"
                internal = test["metrics"][key]["value"]
            else:
                cell, internal = f"{ext[key]:.3f}", test[key]
            rows.append((rec["name"] if i == 0 else "", _LABELS[key], cell, f"{internal:.3f}",
                         f"{rec['change'][key]:+.3f}"))
    return rows


def summary_lines(report: dict[str, Any]) -> list[str]:
    """How the figures were obtained, the local operating points and the shift warnings, one line each."""
    d, m = report["data"], report["method"]
    lines = [f"{d['n_images']} images of {d['source']} ({d['n_pos']} PNEUMONIA"
             + (f", {d['n_patients']} patients" if d["patients_known"] else ", patients unknown") + ")"
             + (f"; {d['n_skipped']} unreadable file(s) skipped (listed in the JSON)" if d["n_skipped"] else ""),
             f"thresholds: each model's own from validation; CIs: {m['ci_method']}; TTA "
             f"{'on (' + ', '.join(m['tta']['views']) + ')' if m['tta']['on'] else 'off'}"]
    for rec in report["models"] + ([report["ensemble"]] if "outside" in report.get("ensemble", {}) else []):
        lop = rec["local_operating_point"]
        lines.append(f"{rec['name']}: threshold {rec['threshold']:.3f} (val); to restore its validation sensitivity "
                     f"{lop['target_sensitivity']:.3f} here the threshold would be {lop['threshold']:.3f} "
                     f"(specificity {lop['specificity']:.3f}; information only)")
        shift = rec.get("shift")
        if shift:
            state = "SHIFT: " + "; ".join(shift["reasons"]) if shift["shifted"] else "no shift detected"
            lines.append(f"  {state}" + (f" ({shift['notes'][0]})" if shift["notes"] else ""))
    lines += [f"note: {n}" for n in report.get("notes", [])]
    if "skipped" in report.get("ensemble", {}):
        lines.append(f"no ensemble: {report['ensemble']['skipped']}")
    return lines


def write_report(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """The JSON report (atomically) and, beside it, ``<stem>-reliability.png`` (internal test | outside data)."""
    from core.calibration import plot_reliability

    out = Path(out)
    curves = report.pop("_curves", None)
    png = out.with_name(f"{out.stem}-reliability.png")
    if curves:
        d = report["data"]
        tta = "on" if report["method"]["tta"]["on"] else "off"
        plot_reliability(curves, png, title=f"reliability: internal test sides against {Path(d['source']).name} "
                                            f"({d['n_images']} images); TTA {tta}")
    report["reliability_png"] = png.name
    io.write_json(out, io.json_safe(report))
    return out, png
