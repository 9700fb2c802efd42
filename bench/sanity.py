"""The model-randomization sanity check of heatmaps (Adebayo et al. 2018, cascading randomization).

Heatmaps of a trained model are compared with those of copies whose classifier head, then head and
last stage, are re-initialised: an explanation that keeps its rank correlation with the trained
model's maps does not depend on what the model learnt (an edge detector would pass unnoticed).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np


def last_stage(backbone: str, model, size: int = 64) -> str:
    """Dotted name of the first module of ``model``'s last stage: everything from it on is randomized in the
    cascading sanity check.

    The last stage of a CNN is every layer that runs at its coarsest grid, as ResNet's ``layer4`` (conv5_x)
    does: for each family, the first of its stage modules whose output already has the final grid. So
    DenseNet's starts at ``transition3`` (its pooling makes the final grid; ``denseblock4`` alone would leave
    the half of its output channels that it passes through from earlier stages untouched) and MobileNets'
    and EfficientNet's at the last block with stride 2, not at the 1x1 convolution after it. ViT keeps one
    grid throughout: its last block.
    """
    if "layer4" in dict(model.named_children()):  # ResNets
        return "layer4"
    if hasattr(model, "patch_embed"):  # ViT
        return f"blocks.{len(model.blocks) - 1}"
    stages = _stage_grids(backbone, model, size)
    final = stages[-1][1]
    return next(n for n, g in stages if g == final)


def _stage_grids(backbone: str, model, size: int) -> list[tuple[str, int]]:
    """``(dotted name, output grid)`` of each stage module of a CNN, in order, from one forward pass."""
    import torch

    names = dict(model.named_children())
    if "layer4" in names:  # ResNets
        stages = [(n, names[n]) for n in ("layer1", "layer2", "layer3", "layer4")]
    elif "features" in names and hasattr(model.features, "denseblock4"):  # DenseNet
        stages = [(f"features.{n}", m) for n, m in model.features.named_children()]
    elif "blocks" in names and not hasattr(model, "patch_embed"):  # EfficientNet, MobileNets
        stages = [(f"blocks.{n}", m) for n, m in model.blocks.named_children()]
    elif isinstance(getattr(model, "feature_info", None), list):  # the baselines (core/baselines.py): timm's format
        stages = [(f["module"], model.get_submodule(f["module"])) for f in model.feature_info]
    else:
        raise ValueError(f"no stages known for {backbone}; add them to bench.sanity._stage_grids")
    grids: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: grids.__setitem__(n, out.shape[-1]))
             for n, m in stages]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            # on the model's own device: the Explainer moves a shared model to the GPU in place
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return [(n, grids[n]) for n, _ in stages if n in grids]


def stage_outputs(backbone: str, model, size: int) -> list[tuple[str, int]]:
    """The output of each stage of a CNN at input ``size``: for every grid the network runs at, the last of
    its stage modules with that grid, as ``(dotted name, grid)``, finest first. ResNet-18 at 128 px:
    ``layer1`` 32, ``layer2`` 16, ``layer3`` 8, ``layer4`` 4; MobileNets and EfficientNet ``blocks.1``,
    ``blocks.2``, ``blocks.4``, ``blocks.6``; DenseNet-121 its dense blocks (its last, ``norm5``).
    ViT-B/16 has one grid: its last block."""
    if hasattr(model, "patch_embed"):
        return [(f"blocks.{len(model.blocks) - 1}", size // model.patch_embed.patch_size[0])]
    out: list[tuple[str, int]] = []
    for name, grid in _stage_grids(backbone, model, size):
        if out and out[-1][1] == grid:
            out[-1] = (name, grid)
        else:
            out.append((name, grid))
    return out


def randomized_copy(model, start: str | None, seed: int = 0):
    """A copy of ``model`` whose classifier head, and (if ``start`` is a module name) every module from
    ``start`` on in definition order, are re-initialised (Adebayo et al. 2018, cascading randomization)."""
    import torch

    rand = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    head = rand.get_classifier()
    head_names = {n for n, m in rand.named_modules() if m is head or any(m is s for s in head.modules())}
    passed = start is None
    for name, module in rand.named_modules():
        if start is not None and (name == start or name.startswith(start + ".")):
            passed = True
        if not (passed and start is not None) and name not in head_names:
            continue
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
        else:
            with torch.no_grad():
                for p in own:
                    p.normal_(0.0, 0.02)
    # Parameters held directly by the model (ViT pos_embed, cls_token) come after no stage: kept.
    return rand


def sanity_check(model, backbone: str, inputs: np.ndarray, targets: Sequence[int] | np.ndarray | None = None, *,
                 trained_cams: np.ndarray | None = None, method: str = "gradcam", device: str = "cpu",
                 max_spearman: float = 0.5, seed: int = 0, layer: str | None = None,
                 with_head: bool = True) -> dict[str, Any]:
    """Model-randomization test (Adebayo et al. 2018): heatmaps after re-initialising the head, then the
    head and the last stage, must lose their rank correlation with the trained model's heatmaps.

    Passes when the absolute mean Spearman correlation after randomizing the head and the last stage
    is below ``max_spearman`` (a random head can also invert a map: strong negative correlation
    means the map still follows the trained features). Constant maps (Grad-CAM's ReLU can zero
    everything) count as correlation 0. The head-only figures are reported beside it (``with_head=False``
    leaves them out, saving one heatmap pass: the verdict does not use them).
    """
    from bench.fidelity import cam_agreement
    from core.gradcam import Explainer

    size = np.asarray(inputs).shape[-1]
    if trained_cams is None:
        with Explainer(model, backbone, size, method=method, device=device, layer=layer) as ex:
            trained_cams = ex(inputs, targets).cams
    stage = last_stage(backbone, model, size)
    out: dict[str, Any] = {"method": method, "max_spearman": max_spearman, "last_stage": stage}
    cascade = [("head", None), ("last_stage", stage)] if with_head else [("last_stage", stage)]
    for key, start in cascade:
        rand = randomized_copy(model, start, seed=seed)
        with Explainer(rand, backbone, size, method=method, device=device, layer=layer) as ex:
            cams = ex(inputs, targets).cams
        agree = cam_agreement(trained_cams, cams)
        out[f"spearman_{key}"] = agree["spearman"]
        out[f"top_overlap_{key}"] = agree["top_overlap"]
    out["passed"] = bool(abs(out["spearman_last_stage"]) < max_spearman)
    return out
