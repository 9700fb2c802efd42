"""Every fidelity measure of one run's FP32 model in one call (`cxr-edge fidelity RUN`): localisation
(:mod:`bench.localization`), deletion/insertion, ROAD and heatmap agreement (:mod:`bench.fidelity`), the
randomization sanity check (:mod:`bench.sanity`), in phases a progress bar can follow."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.fidelity import (
    LowerPrecisionUnavailable,
    cam_agreement,
    deletion_insertion,
    fp32_heatmaps,
    lower_precision_heatmaps,
    road,
)
from bench.localization import (
    default_tolerance,
    energy_in_mask,
    fidelity_images,
    lesion_occlusion,
    pointing_game,
    pointing_points,
)
from bench.sanity import sanity_check

PHASES = ("heatmaps", "lesion occlusion, deletion/insertion", "ROAD", "sanity check", "heatmap agreement")


def fidelity_phases(with_road: bool = True, with_sanity: bool = True) -> list[str]:
    """The phases :func:`run_fidelity` goes through with these options, in order (for a progress bar)."""
    return [p for p in PHASES if (p != "ROAD" or with_road) and (p != "sanity check" or with_sanity)]


def run_fidelity(run, *, side: str = "test", n: int = 32, method: str = "gradcam", steps: int = 32,
                 device: str = "cpu", boxes: str | Path | None = None, with_road: bool = True,
                 with_sanity: bool = True, with_int8: bool = True, tolerance: int | None = None,
                 layer: str | None = None, on_phase: Callable[[str | None], None] | None = None) -> dict[str, Any]:
    """Every fidelity measure of one run's FP32 PyTorch model: localisation (pointing game, energy in
    mask, and whether the model uses the lesion at all: :func:`~bench.localization.lesion_occlusion`),
    deletion/insertion AUC, ROAD, the randomization sanity check, time per heatmap, and the
    agreement of FP16/BF16 (CUDA) and fake-quantized INT8 heatmaps with FP32.

    ``tolerance``: pointing-game tolerance in input pixels; default 15 px at 224 scaled to the input
    size (Zhang et al. 2018 used 15 px), e.g. 4 px at 64. ``on_phase`` is called with each phase's name
    (:func:`fidelity_phases`) as it starts, and with None at the end.
    """
    import torch

    from export.base import TorchPredictor

    phase = on_phase or (lambda name: None)
    phase("heatmaps")
    pre = run.preprocess
    clock = {"start": time.perf_counter()}
    fs = fidelity_images(run, side=side, n=n, boxes=boxes)
    model = run.build_model()
    cams = fp32_heatmaps(run, fs.inputs, None, method=method, device=device, model=model, layer=layer)
    tol = default_tolerance(pre.size) if tolerance is None else tolerance
    out: dict[str, Any] = {
        "run": str(run.path), "backbone": run.record["backbone"], "size": pre.size, "method": method,
        "layer": layer or run.backbone.cam_layer, "grid": list(cams.grids.shape[1:]), "side": side,
        "n_images": len(fs.paths),
        "explained_class": "PNEUMONIA", "split_hash": run.split().hash, "device": str(device),
        "val_roc_auc": run.record.get("val", {}).get("metrics", {}).get("roc_auc", {}).get("value"),
        "seconds_per_heatmap": cams.seconds_per_image,
    }
    if fs.masks is not None:
        pg = pointing_game(pointing_points(cams.grids, pre.size), fs.masks, tolerance=tol)
        en = energy_in_mask(cams.cams, fs.masks)
        out.update(pointing_game=pg["pointing_game"], pointing_tolerance_px=tol,
                   pointing_game_strict=pointing_game(pointing_points(cams.grids, pre.size), fs.masks)["pointing_game"],
                   energy_in_mask=en["energy_in_mask"], mask_area=en["mask_area"], mask_source=fs.mask_source)
    clock["heatmaps"] = time.perf_counter()
    phase("lesion occlusion, deletion/insertion")
    predictor = TorchPredictor(model, device)
    if fs.masks is not None:
        out["lesion_occlusion"] = lesion_occlusion(predictor.predict, fs.inputs, fs.masks)
    di = deletion_insertion(predictor.predict, fs.inputs, cams.cams, steps=steps, mean=pre.mean, std=pre.std)
    rng = np.random.default_rng(0)
    rand = deletion_insertion(predictor.predict, fs.inputs, rng.random(cams.cams.shape).astype(np.float32),
                              steps=steps, mean=pre.mean, std=pre.std)
    out.update(deletion_auc=di["deletion_auc"], insertion_auc=di["insertion_auc"],
               deletion_auc_random=rand["deletion_auc"], insertion_auc_random=rand["insertion_auc"], steps=steps)
    clock["deletion_insertion"] = time.perf_counter()
    if with_road:
        phase("ROAD")
        out["road"] = road(model, fs.inputs, cams.cams, device=device)["road"]
        clock["road"] = time.perf_counter()
    if with_sanity:
        phase("sanity check")
        out["sanity"] = sanity_check(model, run.record["backbone"], fs.inputs, trained_cams=cams.cams, method=method,
                                     device=device, layer=layer)
        clock["sanity"] = time.perf_counter()
    phase("heatmap agreement")
    agreement: dict[str, Any] = {}
    for prec in ("fp16", "bf16") if torch.cuda.is_available() else ():
        other, source = lower_precision_heatmaps(run, fs.inputs, None, prec, device="cuda", method=method, layer=layer)
        agreement[prec] = {**cam_agreement(cams.cams, other), "source": source}
        agreement[prec].pop("spearman_per_image")
    if with_int8:
        try:
            other, source = lower_precision_heatmaps(run, fs.inputs, None, "int8", method=method, layer=layer)
            agreement["int8"] = {**cam_agreement(cams.cams, other), "source": source}
            agreement["int8"].pop("spearman_per_image")
        except LowerPrecisionUnavailable as why:
            agreement["int8"] = {"spearman": None, "source": str(why)}
    clock["agreement"] = time.perf_counter()
    out["cam_agreement"] = agreement
    marks = list(clock.items())
    out["seconds"] = {k: round(t - marks[i][1], 2) for i, (k, t) in enumerate(marks[1:])}
    phase(None)
    return out
