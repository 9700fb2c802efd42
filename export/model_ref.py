"""What `cxr-edge predict` and `cxr-edge package` are pointed at, resolved into one :class:`ModelRef`.

MODEL may be

- a run folder (``run.json``): the PyTorch FP32 model;
- an export folder (``manifest.json``) with ``pick="BACKBONE/FORMAT/PRECISION"``;
- one artifact file (ONNX, OpenVINO ``.xml``, ExecuTorch ``.pte``, LiteRT ``.tflite``, TensorRT ``.engine``):
  its manifest record when a ``manifest.json`` up to two folders above lists it, else (ONNX only) the
  preprocessing and threshold stored in its metadata at export;
- a bundle folder (``model.json``, written by `cxr-edge package`).

Preprocessing and threshold always come from the model's own record, never from the user. Where a record
carries the artifact's sha256 the file is checked against it before anything is loaded. Predictors come from
the benchmark's loaders (:mod:`bench.backends`), so predict runs every format exactly as the bench measured it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.preprocess import Preprocess
from export.base import FORMATS

BUNDLE_FILE = "model.json"
BUNDLE_FORMAT = "cxr-edge-bundle/1"


class ModelError(ValueError):
    """A MODEL argument that cannot be used; the message names it and says what to pass instead."""


@dataclass
class ModelRef:
    """One model ready to load: identity, preprocessing and threshold from its record, and where they came from."""

    kind: str  # "run", "artifact" or "bundle"
    backbone: str
    format: str  # "pytorch" for a run
    precision: str
    path: Path  # the artifact file, or the run folder
    preprocess: Preprocess
    threshold: float
    sha256: str
    described_by: str  # the record that gave preprocessing and threshold
    threshold_chosen_on: str = "val"
    record: dict[str, Any] = field(default_factory=dict)  # manifest record, model.json or run.json
    source_run: Path | None = None  # the run folder the artifact was exported from, where known
    run_hash: str | None = None

    @property
    def model_id(self) -> str:
        """``backbone/format/precision@sha256-prefix``: names exactly which file gave a prediction."""
        return f"{self.backbone}/{self.format}/{self.precision}@{self.sha256[:12]}"

    def load(self, threads: int | None = None):
        """A predictor (``predict(float32 NCHW) -> logits``) from the benchmark's loader for this format."""
        from bench.backends import artifact_targets, torch_targets

        if self.kind == "run":
            from core.runs import load_run

            return torch_targets(self.backbone, load_run(self.path).build_model(), "cpu")[0].load()
        device = "cuda" if self.format == "tensorrt" else "cpu"
        record = {"backbone": self.backbone, "format": self.format, "precision": self.precision, "status": "ok",
                  "path": self.path.name}
        target = artifact_targets(record, self.path.parent, device, threads)[0]
        if target.skip_reason or target.load is None:
            raise ModelError(f"cannot run {self.path} here: {target.skip_reason}")
        return target.load()


def parse_pick(pick: str) -> tuple[str, str, str]:
    parts = [p.strip() for p in pick.split("/")]
    if len(parts) != 3 or not all(parts):
        raise ModelError(f"--pick {pick!r}: expected BACKBONE/FORMAT/PRECISION, e.g. resnet18/onnx/int8")
    return parts[0], parts[1], parts[2]


def resolve(model: str | Path, pick: str | None = None) -> ModelRef:
    """The :class:`ModelRef` of a run, export folder (with ``pick``), artifact file or bundle."""
    path = Path(model)
    if not path.exists():
        raise ModelError(f"model {path} does not exist; give a run folder, an export folder with --pick, an "
                         "artifact file or a bundle folder")
    if pick is not None and not (path / "manifest.json").is_file():
        raise ModelError(f"--pick {pick} applies to an export folder (with manifest.json); {path} is not one")
    if path.is_dir():
        if (path / BUNDLE_FILE).is_file():
            return _from_bundle(path)
        if (path / "manifest.json").is_file():
            if pick is None:
                raise ModelError(f"{path} is an export folder: choose an artifact with --pick BACKBONE/FORMAT/"
                                 f"PRECISION (ok there: {', '.join(_picks(path)) or 'none'})")
            return _from_manifest(path, parse_pick(pick))
        if (path / "run.json").is_file():
            return _from_run(path)
        raise ModelError(f"{path} is neither a run folder (run.json), an export folder (manifest.json) nor a "
                         f"bundle ({BUNDLE_FILE}); point at one of them or at an artifact file")
    return _from_file(path)


def _picks(export_dir: Path) -> list[str]:
    from export.manifest import read_manifest

    return [f"{r['backbone']}/{r['format']}/{r['precision']}" for r in read_manifest(export_dir)
            if r.get("status") == "ok"]


def source_run_path(record: dict[str, Any], base: Path) -> Path | None:
    """The record's ``source_run``: an absolute path as written, a relative one read from ``base``."""
    src = record.get("source_run")
    if not src:
        return None
    p = Path(src)
    return p if p.is_absolute() else (base / p)


def _from_manifest(export_dir: Path, pick: tuple[str, str, str]) -> ModelRef:
    from export.manifest import read_manifest

    records = read_manifest(export_dir)
    rec = next((r for r in records if (r.get("backbone"), r.get("format"), r.get("precision")) == pick), None)
    if rec is None:
        raise ModelError(f"{export_dir / 'manifest.json'} lists no {'/'.join(pick)}; ok there: "
                         f"{', '.join(_picks(export_dir)) or 'none'}")
    return _from_record(rec, export_dir)


def _from_record(rec: dict[str, Any], export_dir: Path) -> ModelRef:
    from export.manifest import verify_sha256

    name = f"{rec.get('backbone')}/{rec.get('format')}/{rec.get('precision')}"
    if rec.get("status") != "ok" or not rec.get("path"):
        why = rec.get("error") or rec.get("reason") or "no reason recorded"
        raise ModelError(f"{name} in {export_dir / 'manifest.json'} has no usable artifact (export "
                         f"{rec.get('status')}: {why}); choose another --pick or export it again")
    path = export_dir / rec["path"]
    if not path.exists():
        raise ModelError(f"{export_dir / 'manifest.json'} lists {path}, which does not exist; export again")
    if not rec.get("sha256"):
        raise ModelError(f"the manifest record of {path} has no sha256 to check the file against; export again")
    sha = verify_sha256(path, rec["sha256"])
    return ModelRef(kind="artifact", backbone=rec["backbone"], format=rec["format"], precision=rec["precision"],
                    path=path, preprocess=Preprocess.from_dict(rec["preprocess"]), threshold=float(rec["threshold"]),
                    sha256=sha, described_by=f"the manifest record in {export_dir / 'manifest.json'}", record=rec,
                    source_run=source_run_path(rec, export_dir), run_hash=rec.get("run_hash"))


def _from_run(run_dir: Path) -> ModelRef:
    from core.runs import load_run
    from export.base import file_sha256, run_hash

    run = load_run(run_dir)
    return ModelRef(kind="run", backbone=run.record["backbone"], format="pytorch", precision="fp32", path=run_dir,
                    preprocess=run.preprocess, threshold=run.threshold,
                    sha256=file_sha256(run_dir / "model.safetensors"), described_by=f"{run_dir / 'run.json'}",
                    threshold_chosen_on=str(run.record["threshold"].get("chosen_on", "val")), record=run.record,
                    source_run=run_dir, run_hash=run_hash(run))


def _from_file(path: Path) -> ModelRef:
    fmt = next((f for f in FORMATS.values() if path.name.endswith(f.suffix)), None)
    if fmt is None:
        raise ModelError(f"cannot tell the format of {path}: expected a name ending in "
                         f"{', '.join(f.suffix for f in FORMATS.values())}, or a run, export or bundle folder")
    for export_dir in (path.parent, path.parent.parent):
        rec = _listed(path, export_dir)
        if rec is not None:
            return _from_record(rec, export_dir)
    if fmt.name == "onnx":
        return _from_onnx_metadata(path)
    raise ModelError(f"{path} is not listed in a manifest.json beside it or one folder up, and only ONNX files "
                     "carry their preprocessing and threshold inside; pass the export folder with --pick or a bundle")


def _listed(path: Path, export_dir: Path) -> dict[str, Any] | None:
    from export.manifest import read_manifest

    if not (export_dir / "manifest.json").is_file():
        return None
    target = path.resolve()
    return next((r for r in read_manifest(export_dir)
                 if r.get("path") and (export_dir / r["path"]).resolve() == target), None)


def _from_onnx_metadata(path: Path) -> ModelRef:
    import onnx

    from export.base import file_sha256

    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as err:  # protobuf raises its own DecodeError for a damaged file
        raise ModelError(f"{path} cannot be read as ONNX ({type(err).__name__}: {err}); export it again") from None
    needed = ("cxr_edge.backbone", "cxr_edge.precision", "cxr_edge.preprocess", "cxr_edge.threshold")
    absent = [k for k in needed if k not in meta]
    if absent:
        raise ModelError(f"{path} carries no cxr-edge metadata ({', '.join(absent)} absent) and no manifest lists "
                         "it: its preprocessing and threshold are unknown. Use an artifact of `cxr-edge export`")
    try:
        pre = Preprocess.from_dict(json.loads(meta["cxr_edge.preprocess"]))
        threshold = float(meta["cxr_edge.threshold"])
    except (ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{path}: its cxr-edge metadata cannot be read ({err}); export it again") from None
    src = meta.get("cxr_edge.source_run")
    return ModelRef(kind="artifact", backbone=meta["cxr_edge.backbone"], format="onnx",
                    precision=meta["cxr_edge.precision"], path=path, preprocess=pre, threshold=threshold,
                    sha256=file_sha256(path), described_by=f"the ONNX metadata of {path}",
                    record={"backbone": meta["cxr_edge.backbone"], "format": "onnx",
                            "precision": meta["cxr_edge.precision"], "preprocess": pre.to_dict(),
                            "threshold": threshold, "source_run": src, "run_hash": meta.get("cxr_edge.run_hash"),
                            "split_hash": meta.get("cxr_edge.split_hash")},
                    source_run=source_run_path({"source_run": src}, path.parent),
                    run_hash=meta.get("cxr_edge.run_hash"))


def read_bundle(bundle: Path) -> dict[str, Any]:
    """A bundle's model.json, checked."""
    from core import io

    return io.read_format_json(bundle / BUNDLE_FILE, BUNDLE_FORMAT, "package the model again with `cxr-edge package`",
                               ModelError)


def _from_bundle(bundle: Path) -> ModelRef:
    from export.manifest import verify_sha256

    doc = read_bundle(bundle)
    m, art, thr = doc["model"], doc["artifact"], doc["threshold"]
    path = bundle / art["file"]
    if not path.exists():
        raise ModelError(f"{bundle / BUNDLE_FILE} names {art['file']}, which is not in the bundle; package it again")
    sha = verify_sha256(path, art["sha256"])
    return ModelRef(kind="bundle", backbone=m["backbone"], format=m["format"], precision=m["precision"], path=path,
                    preprocess=Preprocess.from_dict(doc["preprocess"]), threshold=float(thr["value"]), sha256=sha,
                    described_by=f"{bundle / BUNDLE_FILE}", threshold_chosen_on=str(thr.get("chosen_on", "val")),
                    record=doc, run_hash=doc.get("source_run", {}).get("run_hash"))

