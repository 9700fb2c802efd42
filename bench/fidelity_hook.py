"""Explanation fidelity as columns of every benchmark row: do the deployed model's explanations still
describe what it does?

:func:`explanation_fidelity` is a per-row metric hook (:data:`bench.runner.ROW_METRICS`). For each run it
computes once, on the first ``n`` PNEUMONIA images of the test side (the benchmark's own inputs): the FP32
PyTorch model's Grad-CAM heatmaps (the pixel ranking every artifact of the run is judged by) and the
randomization sanity check. For each artifact row it then measures deletion and insertion AUC with the
artifact's own predictor, and, where a gradient-carrying stand-in exists (INT8: the PyTorch model
fake-quantized with the same calibration; FP16/BF16: autocast on CUDA), the heatmap agreement with FP32.

Columns: ``deletion_auc`` (lower is better), ``insertion_auc`` (higher is better), ``cam_agreement``
(Spearman with FP32), ``cam_top10_overlap``, ``sanity_ok`` (the backbone's randomization check) and
``fidelity_ms_per_image``. :data:`SETTINGS` holds the sizes; ``cxr-edge bench --fidelity-n 0`` turns it off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class FidelitySettings:
    n: int = 8  # PNEUMONIA test images per run (0: no fidelity columns)
    steps: int = 16  # deletion/insertion steps
    sanity: bool = True
    method: str = "gradcam"


SETTINGS = FidelitySettings()
_PER_RUN: dict[str, dict[str, Any]] = {}


def reset() -> None:
    """Forget the per-run heatmaps (a new benchmark starts)."""
    _PER_RUN.clear()


def _per_run(ctx) -> dict[str, Any]:
    from bench.fidelity import fp32_heatmaps
    from bench.sanity import sanity_check

    key = str(getattr(ctx.run, "path", id(ctx.run)))
    if key in _PER_RUN:
        return _PER_RUN[key]
    _PER_RUN.clear()  # the benchmark scores one run's rows after another: keep one run's heatmaps and stand-ins
    pos = np.flatnonzero(np.asarray(ctx.labels) == 1)[:SETTINGS.n]
    if len(pos) == 0:
        raise ValueError("the test side has no PNEUMONIA images to measure explanation fidelity on")
    x = np.ascontiguousarray(ctx.inputs[pos], dtype=np.float32)
    targets = np.ones(len(x), dtype=np.int64)
    cams = fp32_heatmaps(ctx.run, x, targets, method=SETTINGS.method, model=ctx.model)
    info: dict[str, Any] = {"inputs": x, "targets": targets, "cams": cams.cams, "cache": {},
                            "cam_ms": 1000 * cams.seconds / len(x)}
    if SETTINGS.sanity:
        import copy

        check = sanity_check(copy.deepcopy(ctx.model), ctx.run.backbone, x, targets, trained_cams=cams.cams,
                             method=SETTINGS.method)
        info["sanity_ok"] = bool(check.get("passed", check.get("ok")))
    _PER_RUN[key] = info
    return info


def explanation_fidelity(ctx) -> dict[str, Any]:
    """The fidelity columns of one benchmark row (see the module docstring)."""
    from bench.fidelity import artifact_fidelity

    if SETTINGS.n <= 0:
        return {}
    info = _per_run(ctx)
    calibration = (ctx.record or {}).get("calibration")  # the INT8 stand-in uses the artifact's own calibration
    precision = str(ctx.row.get("precision", "fp32"))
    precision = precision if precision in ("fp32", "fp16", "bf16", "int8") else "fp32"
    fid = artifact_fidelity(ctx.run.path, ctx.predictor.predict, info["inputs"], info["cams"], precision=precision,
                            targets=info["targets"], calibration=calibration, steps=SETTINGS.steps,
                            device="cpu", cache=info["cache"])
    out = {k: fid.get(k) for k in ("deletion_auc", "insertion_auc", "cam_agreement", "cam_top10_overlap")}
    out["fidelity_ms_per_image"] = round(1000 * fid["fidelity_seconds"] / max(1, fid["fidelity_n_images"]), 1)
    out["fp32_cam_ms_per_image"] = round(info["cam_ms"], 1)
    if "sanity_ok" in info:
        out["sanity_ok"] = info["sanity_ok"]
    if fid.get("cam_agreement") is None and precision != "fp32":
        out["cam_agreement_note"] = fid.get("cam_agreement_source")
    return out
