"""Make ``import torchvision`` (and so timm and pytorch-grad-cam) work on a CPU-only torch.

The registry's torchvision 0.28.0 is built against CUDA; on the local CPU build of torch 2.13 its
compiled extension fails to load and the import dies with
``RuntimeError: operator torchvision::nms does not exist`` while registering fake kernels.
Defining the two operator schemas first lets models, transforms and datasets import (the C++ ops
nms/roi_align themselves stay unavailable, and a classifier does not need them). This is done only
when the real extension fails, and only here.
"""

from __future__ import annotations

import importlib
import sys

_PATCHED = False


def ensure_torchvision() -> bool:
    """Import torchvision, patching the missing operator schemas if needed.

    Returns True when the patch was applied, False when torchvision imported on its own.
    """
    global _PATCHED
    if "torchvision" in sys.modules and not _PATCHED:
        return False
    try:
        importlib.import_module("torchvision")
        return _PATCHED
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    # Keep the library object alive for the life of the process.
    globals()["_LIB"] = lib
    importlib.import_module("torchvision")
    _PATCHED = True
    return True
