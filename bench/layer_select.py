"""Choose a run's Grad-CAM target layer (`cxr-edge fidelity --layer auto`), or its CAM method and layer
(`--method auto`), on validation images with lesion masks.

A CNN's last stage is a coarse grid at small inputs (4 x 4 at 128 px), and whether an earlier stage explains
better differs by backbone. Picking the layer by the test images' pointing game would overstate it, as a
threshold picked on test would; here the layer is picked on the **validation** side, as the decision
threshold is, and the test figures are then measured at that layer once.

Rule: among the candidate layers (each stage output with a stride of at least 8, i.e. a grid of at most
size / 8 cells, and the registry's layer at the final grid), keep those whose heatmaps pass the
randomization sanity check on the validation images, and take the one with the highest validation
pointing game; a tie goes to the coarser layer, then to the method named first. When none passes, the
registry's layer is kept, and the record says so. Under ``--method auto`` the candidates are every
(method, layer) pair of :data:`AUTO_METHODS`: which method explains best differs by backbone (on the synthetic
set HiResCAM's ResNet-18 maps often peak on the bright spine, which occluding shows the model does not use,
and point 0.71 on validation; XGrad-CAM's at the same layer point 0.84).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.data import DataError

RULE = ("highest validation pointing game among the stage outputs of stride >= 8 whose heatmaps pass the "
        "randomization sanity check; ties to the coarser layer, then the method named first; none passing: "
        "the registry's layer")
AUTO_METHODS = ("hirescam", "xgradcam", "gradcam")  # --method auto: the candidates, in tie-break order
MIN_POINTING = 0.8  # below this validation pointing game the chosen heatmaps are flagged as not localising


def localisation_warning(selection: dict[str, Any], min_pointing: float = MIN_POINTING) -> str | None:
    """A warning for a deployer when the chosen candidate's validation pointing game is below ``min_pointing``
    (or no candidate passed the sanity check); None when the heatmaps localise on validation."""
    chosen = [c for c in selection["candidates"] if c.get("sanity_passed")
              and (c["method"], c["layer"]) == (selection["method"], selection["layer"])]
    if not chosen:
        return (f"no {selection['side']} candidate passed the sanity check; the heatmaps at the registry's layer "
                "are not a validated explanation of this model")
    pg = chosen[0]["pointing_game"]
    if pg is None or pg >= min_pointing:
        return None
    n = selection["n_images"]
    return (f"its best heatmaps point at the lesion on {round(pg * n)} of {n} {selection['side']} images "
            f"({pg:.3f}, below {min_pointing:g}): a heatmap of this run does not reliably mark the lesion")


def candidate_layers(backbone: str, model, size: int, registry_layer: str) -> list[tuple[str, int]]:
    """``(layer, grid)`` candidates, finest first: stage outputs with grid <= size / 8 finer than the final
    grid, then ``registry_layer`` for the final grid (ViT-B/16: its one layer)."""
    from bench.sanity import stage_outputs

    stages = stage_outputs(backbone, model, size)
    final = stages[-1][1]
    finer = [(name, grid) for name, grid in stages if grid > final and grid * 8 <= size]
    return finer + [(registry_layer, final)]


def choose(candidates: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The chosen candidate under :data:`RULE` and why; None when no candidate passes the sanity check.
    ``candidates`` are finest first, each with ``pointing_game`` and ``sanity_passed``."""
    passing = [(i, c) for i, c in enumerate(candidates) if c["sanity_passed"] and c["pointing_game"] is not None]
    if not passing:
        return None, "no candidate layer passed the sanity check on validation; the registry's layer is kept"
    methods = list(dict.fromkeys(c.get("method") for c in candidates))
    best = max(passing, key=lambda ic: (ic[1]["pointing_game"], -ic[1]["grid"], -methods.index(ic[1].get("method"))))[1]
    return best, (f"highest validation pointing game ({best['pointing_game']:.2f}) among the "
                  f"{len(passing)} of {len(candidates)} candidates that pass the sanity check")


def select_layer(run, *, method: str = "gradcam", side: str = "val", n: int = 32, boxes: str | Path | None = None,
                 tolerance: int | None = None, device: str = "cpu", max_spearman: float = 0.5,
                 methods: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Measure every candidate layer of ``run`` (for each of ``methods``, default just ``method``) on up to
    ``n`` PNEUMONIA images of ``side`` (pointing game and sanity check) and choose one by :data:`RULE`.
    Returns the record stored as ``layer_selection`` (``layer`` and ``method`` chosen, every candidate)."""
    from bench.fidelity import fp32_heatmaps
    from bench.localization import default_tolerance, fidelity_images, pointing_game, pointing_points
    from bench.sanity import sanity_check

    if side == "test":
        raise ValueError("the layer is chosen on 'val' (or 'train'), never on the test images it is then judged on")
    fs = fidelity_images(run, side=side, n=n, boxes=boxes)
    if fs.masks is None:
        raise DataError(f"--layer auto chooses the layer by the pointing game on {side!r} lesion masks, and "
                        f"{run.path} has none (the synthetic set has them); pass --boxes boxes.csv, or name the "
                        "layer: --layer BACKBONE=LAYER")
    size, backbone = run.preprocess.size, run.record["backbone"]
    tol = default_tolerance(size) if tolerance is None else tolerance
    model = run.build_model()
    rows = []
    for m in methods or (method,):
        for layer, grid in candidate_layers(backbone, model, size, run.backbone.cam_layer):
            cams = fp32_heatmaps(run, fs.inputs, None, method=m, device=device, model=model, layer=layer)
            pg = pointing_game(pointing_points(cams.grids, size), fs.masks, tolerance=tol)["pointing_game"]
            check = sanity_check(model, backbone, fs.inputs, trained_cams=cams.cams, method=m, device=device,
                                 max_spearman=max_spearman, layer=layer, with_head=False)
            rows.append({"method": m, "layer": layer, "grid": grid, "pointing_game": pg,
                         "sanity_spearman_last_stage": check["spearman_last_stage"], "sanity_passed": check["passed"]})
    best, why = choose(rows)
    record = {"layer": best["layer"] if best else run.backbone.cam_layer,
              "method": best["method"] if best else (methods or (method,))[0], "reason": why, "rule": RULE,
              "side": side, "n_images": len(fs.paths), "pointing_tolerance_px": tol,
              "mask_source": fs.mask_source, "candidates": rows, "min_pointing": MIN_POINTING}
    record["warning"] = localisation_warning(record)
    return record
