"""`cxr-edge package`: a folder to copy to the device that runs a model with nothing but numpy, Pillow and the
model's runtime.

The bundle holds the artifact (with its side files), ``model.json`` (what the model is, how to feed it, where
its threshold was chosen and every figure recorded for it), ``MODEL_CARD.md`` (written from model.json by
:mod:`export.model_card`), the standalone ``predict.py`` (:mod:`export.bundle_predict`, copied as it is) and
its ``requirements.txt``. It is built in a temporary folder beside ``out`` and renamed into place, so an
interrupted package leaves no half bundle, and an existing bundle is replaced only with ``force``.

External evaluation (``--evaluation EVAL.json``, e.g. from `cxr-edge evaluate --data`): any JSON object; it is
stored verbatim under ``external_evaluation.document`` and summarised from whichever of these top-level keys it
has: ``data`` (what was evaluated), ``n_images``, ``metrics`` (name -> number or ``{value, ci95}``), ``shift``
(a distribution-shift warning), ``local_operating_point``. ``--threshold-from EVAL.json`` adopts its
``local_operating_point: {threshold, n_images, target_sensitivity}`` as the bundle's threshold.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from core import io
from core.data import LABELS
from export.model_ref import BUNDLE_FILE, BUNDLE_FORMAT, ModelError, ModelRef

RUNTIMES = {"onnx": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino")}  # format: (runtime, pip)
TEST_METRICS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "f1", "accuracy", "ppv")
FIDELITY_COLUMNS = ("deletion_auc", "insertion_auc", "cam_agreement", "cam_top10_overlap", "sanity_ok")
OUTPUT_TEXT = "logit of PNEUMONIA; probability = sigmoid(logit); PNEUMONIA when probability >= threshold"


def package(ref: ModelRef, out: Path, *, results: Path | None = None, evaluation: Path | None = None,
            threshold_from: Path | None = None, run_dir: Path | None = None, force: bool = False) -> Path:
    """Write the bundle of ``ref`` (an ONNX or OpenVINO artifact) to ``out``; return ``out``."""
    out = Path(out)
    if ref.kind == "bundle":
        raise ModelError(f"{ref.path.parent} is already a bundle: copy it, or package from the export folder "
                         "(`cxr-edge package artifacts --pick BACKBONE/FORMAT/PRECISION`)")
    if ref.format not in RUNTIMES:
        raise ModelError(f"{ref.model_id}: a bundle's predict.py runs ONNX and OpenVINO artifacts, not "
                         f"{ref.format}; package one of those (`cxr-edge export --formats onnx,openvino`)")
    if out.exists() and not force:
        raise ValueError(f"{out} already exists (an earlier bundle?); pass --force to replace it or choose another "
                         "--out")
    doc = model_json(ref, results=results, evaluation=evaluation, threshold_from=threshold_from, run_dir=run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _fill(tmp, ref, doc)
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fill(folder: Path, ref: ModelRef, doc: dict[str, Any]) -> None:
    from export.base import artifact_files, file_sha256
    from export.model_card import model_card

    for f in artifact_files(ref.path):
        shutil.copyfile(f, folder / f.name)  # same names: the IR names its .bin, ONNX its external data file
    if file_sha256(folder / ref.path.name) != doc["artifact"]["sha256"]:
        raise ModelError(f"the copy of {ref.path} in the bundle does not match its sha256; was it changed while "
                         "packaging? Package again")
    io.write_json(folder / BUNDLE_FILE, io.json_safe(doc))
    (folder / "MODEL_CARD.md").write_text(model_card(doc))
    shutil.copy(Path(__file__).with_name("bundle_predict.py"), folder / "predict.py")  # executable, as the source
    (folder / "requirements.txt").write_text(requirements(doc))


def _swap(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed only once ``tmp`` is in."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def requirements(doc: dict[str, Any]) -> str:
    """numpy and Pillow, and the runtime pinned at the version the artifact was exported and checked with."""
    pip = RUNTIMES[doc["model"]["format"]][1]
    version = (doc.get("versions") or {}).get(pip)
    return ("# what predict.py needs (pydicom too, for DICOM files)\nnumpy>=1.26\npillow>=10\n"
            + (f"{pip}=={version}\n" if version else f"{pip}\n"))


# ------------------------------------------------------------------------------------------ model.json


def model_json(ref: ModelRef, *, results: Path | None, evaluation: Path | None, threshold_from: Path | None,
               run_dir: Path | None) -> dict[str, Any]:
    """Everything the bundle says about its model, from the records only."""
    from export.base import artifact_files, file_bytes

    rec = ref.record
    run = _source_run(ref, run_dir)
    row, env = _results_row(ref, results) if results else (None, None)
    doc: dict[str, Any] = {
        "format": BUNDLE_FORMAT, "created": io.now(),
        "model": {"id": ref.model_id, "backbone": ref.backbone, "format": ref.format, "precision": ref.precision,
                  "runtime": RUNTIMES[ref.format][0], "timm_id": run.record.get("timm_id")},
        "artifact": {"file": ref.path.name, "files": [f.name for f in artifact_files(ref.path)],
                     "sha256": ref.sha256, "bytes": file_bytes(ref.path)},
        "labels": list(LABELS), "output": OUTPUT_TEXT, "preprocess": ref.preprocess.to_dict(),
        "threshold": _validation_threshold(ref, run),
        "source_run": _run_facts(ref, run),
        "versions": rec.get("versions") or {},
        "export": {k: rec[k] for k in ("created", "calibration", "keep_float", "note", "warning") if rec.get(k)},
        "figures": {"validation": run.record.get("val"),
                    "test": _test_figures(row), "latency": _latency(row, env),
                    "quantization": _quantization(rec, row), "explanation_fidelity": _fidelity(row)},
        "external_evaluation": None,
    }
    if evaluation is not None:
        doc["external_evaluation"] = external_evaluation(_read_json(evaluation, "--evaluation"), evaluation.name)
    if threshold_from is not None:
        doc["threshold"] = local_threshold(_read_json(threshold_from, "--threshold-from"), threshold_from,
                                           doc["threshold"])
    doc["model"]["threshold"] = doc["threshold"]["value"]
    return doc


def _source_run(ref: ModelRef, run_dir: Path | None):
    from core.runs import load_run

    path = run_dir or ref.source_run
    if path is None or not Path(path).is_dir():
        raise ModelError(f"the source run of {ref.model_id} ({path or 'not recorded'}) is not here, and the card needs "
                         "its record (initialisation, data, validation figures): pass it with --run RUN_FOLDER")
    run = load_run(path)
    if ref.run_hash:
        from export.base import run_hash

        if run_hash(run) != ref.run_hash:
            raise ModelError(f"run {path} is not the one {ref.model_id} was exported from (run.json hash "
                             f"{run_hash(run)[:12]}, recorded {ref.run_hash[:12]}); pass the right --run")
    return run


def _validation_threshold(ref: ModelRef, run) -> dict[str, Any]:
    t = dict(run.record["threshold"])
    return {"value": ref.threshold, "chosen_on": "val", "method": t.get("method", "Youden's J on the validation side"),
            "validation_threshold": ref.threshold, "n_images": (run.record.get("val") or {}).get("n"),
            "record": {k: v for k, v in t.items() if k != "threshold"}}


def _data_name(source: str) -> str:
    """The data set's name without the machine's path: its folder, or a CSV with the folder it sits in."""
    p = Path(source)
    return f"{p.parent.name}/{p.name}" if p.suffix.lower() == ".csv" else p.name


def _run_facts(ref: ModelRef, run) -> dict[str, Any]:
    r = run.record
    cfg = r.get("config") or {}
    data = r.get("data") or {}
    return {"name": Path(run.path).name, "run_hash": ref.run_hash, "split_hash": r["split"]["hash"],
            "init": r.get("init"), "epochs_run": r.get("epochs_run"), "best_epoch": r.get("best_epoch"),
            "size": ref.preprocess.size, "config": {k: cfg.get(k) for k in ("epochs", "batch_size", "lr", "seed",
                                                                              "cutmix", "threads") if k in cfg},
            "loss": r.get("loss"), "data": {"source": _data_name(str(data.get("source") or r["split"].get("source"))),
                                             "kind": data.get("kind"), "skipped_files": data.get("skipped_files")},
            "split": {k: r["split"].get(k) for k in ("method", "seed", "counts")}}


def _results_row(ref: ModelRef, results: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from bench.results_file import read_results

    doc = read_results(results)
    rows = [r for r in doc["rows"] if (r.get("backbone"), r.get("format"), r.get("precision")) ==
            (ref.backbone, ref.format, ref.precision) and r.get("status") == "ok"]
    rows.sort(key=lambda r: r.get("device") != "cpu")
    if not rows:
        raise ModelError(f"{results} has no ok row of {ref.backbone} {ref.format} {ref.precision}; bench the "
                         "artifact first or leave out --results")
    row = rows[0]
    split = (ref.record.get("split_hash") or (ref.record.get("source_run") or {}).get("split_hash"))
    if row.get("split_hash") and split and row["split_hash"] != split:
        raise ModelError(f"the {results} row of {ref.model_id} was measured on split {row['split_hash']}, the "
                         f"artifact comes from split {split}: these results describe another model")
    if row.get("bytes") and ref.record.get("bytes") and row["bytes"] != ref.record["bytes"]:
        raise ModelError(f"the {results} row of {ref.model_id} describes a file of {row['bytes']} bytes, the "
                         f"artifact has {ref.record['bytes']}: bench this artifact again")
    return row, doc.get("environment") or {}


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _test_figures(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    metrics = {m: {"value": row[m], "ci95": [row.get(f"{m}_lo"), row.get(f"{m}_hi")]}
               for m in TEST_METRICS if _num(row.get(m))}
    return {"n": row.get("n_test"), "n_pos": row.get("n_test_pos"), "threshold": row.get("threshold"),
            "split_hash": row.get("split_hash"), "side": "test", "metrics": metrics,
            "confusion": {k: row.get(f"{k}_count") for k in ("tp", "fp", "tn", "fn")},
            "measured_by": "cxr-edge bench (bootstrap 95% CIs)", "runtime": row.get("runtime")}


def _latency(row: dict[str, Any] | None, env: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    batches = sorted({int(k[1:-7]) for k in row if k.startswith("b") and k.endswith("_p50_ms") and _num(row[k])})
    if not batches:
        return None
    cpu = (env or {}).get("cpu") or {}
    return {"batches": {str(b): {"p50_ms": row.get(f"b{b}_p50_ms"), "p99_ms": row.get(f"b{b}_p99_ms"),
                                 "images_per_s": row.get(f"b{b}_ips"), "spread": row.get(f"b{b}_spread")}
                        for b in batches},
            "threads": row.get("threads"), "device": row.get("device"), "runtime": row.get("runtime"),
            "machine": {"cpu": cpu.get("model"), "logical_cores": cpu.get("logical_cores"),
                        "flags": cpu.get("flags"), "gpu": ((env or {}).get("gpu") or {}).get("name")}}


def _quantization(rec: dict[str, Any], row: dict[str, Any] | None) -> dict[str, Any] | None:
    parity = rec.get("parity")
    test = None
    if row is not None and row.get("agreement") is not None:
        test = {k: row.get(k) for k in ("agreement", "max_abs_prob", "auc_change")}
    if parity is None and test is None:
        return None
    keep = ("n", "max_abs_logit", "max_abs_prob", "agreement", "val_auc_reference", "val_auc", "auc_change",
            "within_tolerance")
    return {"against": "the FP32 PyTorch model of the source run",
            "validation": {k: parity.get(k) for k in keep} if parity else None, "test": test}


def _fidelity(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    found = {k: row[k] for k in FIDELITY_COLUMNS if row.get(k) is not None}
    return found or None


def _read_json(path: Path, option: str) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{option} {path} does not exist; give the JSON of `cxr-edge evaluate --data`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{option} {path} is not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{option} {path} holds a JSON {type(doc).__name__}, not an object")
    return doc


def external_evaluation(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """The evaluation stored verbatim, with a summary of the keys this version understands (see module doc)."""
    metrics = {}
    for k, v in (doc.get("metrics") or {}).items() if isinstance(doc.get("metrics"), dict) else ():
        value = v.get("value") if isinstance(v, dict) else v
        if _num(value):
            metrics[k] = {"value": value, "ci95": v.get("ci95") if isinstance(v, dict) else None}
    summary = {"data": doc.get("data"), "n_images": doc.get("n_images"), "metrics": metrics,
               "shift": doc.get("shift"), "local_operating_point": doc.get("local_operating_point")}
    return {"file": name, "summary": {k: v for k, v in summary.items() if v not in (None, {})}, "document": doc}


def local_threshold(doc: dict[str, Any], path: Path, validation: dict[str, Any]) -> dict[str, Any]:
    """The site's own operating point of ``doc`` as the bundle's threshold (validation's kept beside it)."""
    op = doc.get("local_operating_point")
    if not isinstance(op, dict):
        raise ValueError(f"--threshold-from {path} has no local_operating_point {{threshold, n_images, "
                         "target_sensitivity}}; evaluate on the site's own labelled sample first")
    t, n = op.get("threshold"), op.get("n_images")
    if not _num(t) or not 0 < t < 1:
        raise ValueError(f"--threshold-from {path}: local_operating_point.threshold {t!r} must be a probability "
                         "in (0, 1)")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"--threshold-from {path}: local_operating_point.n_images {n!r} must be a positive count")
    target = op.get("target_sensitivity")
    return {"value": float(t), "chosen_on": "site sample", "n_images": n,
            "target_sensitivity": target if _num(target) else None,
            "method": "the site's own labelled sample" + (f", sensitivity >= {target:g}" if _num(target) else ""),
            "source_file": Path(path).name, "validation_threshold": validation["value"],
            "record": validation.get("record")}
