"""Grad-CAM heatmaps for every backbone of the registry, built on pytorch-grad-cam.

One :class:`Explainer` per model: the registry names the target layer (a dotted path) and, for the
ViT, the reshape of tokens to a grid computed from the input size, so any size works. Inputs are
prepared with exactly the run's :class:`~core.preprocess.Preprocess` (the seed project resized
differently for its CAMs than for training). Heatmaps come back as float32 ``N x H x W`` arrays in
``[0, 1]`` at the model's input resolution (pytorch-grad-cam's ReLU, per-image min-max scaling and
bilinear upsampling).

The model has one logit (PNEUMONIA). The explained class of each image is given as 0/1 per image:
class 1 explains the logit, class 0 its negation (pytorch-grad-cam's ``BinaryClassifierOutputTarget``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core import io, registry
from core._compat import ensure_torchvision
from core.preprocess import Preprocess

METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "xgradcam")


class CamError(ValueError):
    """A Grad-CAM request that cannot be honoured; the message says how to fix it."""


def _method_class(method: str):
    """pytorch-grad-cam's class for ``method``, made to return the heatmap at the target layer's own grid.

    pytorch-grad-cam min-max scales the layer's map and then resizes it to the input with OpenCV's
    bilinear rule; here the resize is done by :meth:`Explainer.__call__` with the same rule, so the
    heatmaps are identical, and the grid (where the evidence actually sits: e.g. 2 x 2 cells for a
    stride-32 CNN at 64 px) is kept for the pointing game.
    """
    ensure_torchvision()
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "layercam": LayerCAM,
               "xgradcam": XGradCAM}
    try:
        base = classes[method]
    except KeyError:
        raise CamError(f"CAM method {method!r} is not known; choose one of {', '.join(METHODS)}") from None

    class AtLayerGrid(base):  # type: ignore[misc, valid-type]
        def get_target_width_height(self, input_tensor):  # None: scale_cam_image skips its resize
            return None

    AtLayerGrid.__name__ = base.__name__
    return AtLayerGrid


def upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Layer-grid heatmaps ``N x h x w`` -> ``N x size x size``, bilinear as pytorch-grad-cam does (OpenCV)."""
    import cv2

    g = np.asarray(grid, np.float32)
    return np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in g]) if len(g) else \
        np.zeros((0, size, size), np.float32)


class _Autocast(nn.Module):
    """Runs the wrapped model under autocast (FP16/BF16) and returns FP32 logits; hooks on inner layers still fire."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.model, self.dtype, self.device_type = model, dtype, device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            return self.model(x).float()


def autocast_model(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """``model`` wrapped to run in ``precision`` ("fp16"/"bf16") autocast on a CUDA ``device``.

    Autocast runs convolutions and matrix products in half precision and keeps gradients flowing,
    so Grad-CAM of the half-precision model exists. Only on CUDA: CPU autocast is not how any
    artifact of this project runs FP16, so a CPU heatmap would describe no deployed model.
    """
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise CamError(f"autocast precision {precision!r} is not known; choose fp16 or bf16")
    if device.type != "cuda":
        raise CamError(f"{precision} autocast heatmaps need a CUDA device; got {device}")
    return _Autocast(model, dtypes[precision], "cuda").to(device).eval()


@dataclass
class CamBatch:
    """Heatmaps of a set of images and what it took to make them."""

    cams: np.ndarray  # float32 N x H x W in [0, 1], at the input resolution
    grids: np.ndarray  # float32 N x h x w in [0, 1], at the target layer's resolution
    logits: np.ndarray  # float32 N, the model's logit on each (unperturbed) input
    targets: np.ndarray  # int64 N, the explained class of each image (1 PNEUMONIA, 0 NORMAL)
    seconds: float  # wall time of all heatmaps (forward + backward + CAM), batching included
    method: str
    device: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(1, len(self.cams))


class Explainer:
    """Grad-CAM (or Grad-CAM++ / HiResCAM) of one model at its registry target layer.

    ``model`` may be the trained model, a randomized copy, an autocast wrapper or a fake-quantized
    copy: ``layer_model`` is where the target layer is looked up (defaults to ``model``). Use it as a
    context manager, or call :meth:`close`, to remove pytorch-grad-cam's hooks.
    """

    def __init__(self, model: nn.Module, backbone: registry.Backbone | str, size: int, *, method: str = "gradcam",
                 device: str | torch.device = "cpu", layer_model: nn.Module | None = None,
                 layer: str | None = None) -> None:
        self.backbone = registry.get(backbone) if isinstance(backbone, str) else backbone
        self.method, self.size = method, int(size)
        self.device = torch.device(device)
        cls = _method_class(method)
        self.model = model.to(self.device).eval()
        where = layer_model if layer_model is not None else model
        path = layer or self.backbone.cam_layer
        try:
            target = where.get_submodule(path)
        except AttributeError as err:
            raise CamError(f"{self.backbone.name} has no layer {path!r} for Grad-CAM ({err}); check the registry "
                           f"entry's cam_layer") from None
        self.layer = path
        self._cam = cls(model=self.model, target_layers=[target],
                        reshape_transform=self.backbone.reshape_transform(self.size))

    def __enter__(self) -> "Explainer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._cam.activations_and_grads.release()

    def __call__(self, inputs: np.ndarray, targets: Sequence[int] | np.ndarray | None = None, *,
                 batch_size: int = 16) -> CamBatch:
        """Heatmaps of normalised float32 ``N x C x H x W`` inputs, in batches of ``batch_size``.

        ``targets``: the explained class per image (0/1); ``None`` explains PNEUMONIA (1) everywhere.
        """
        from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

        x = np.asarray(inputs, np.float32)
        if x.ndim != 4 or x.shape[2] != self.size or x.shape[3] != self.size:
            raise CamError(f"inputs of shape {x.shape} do not fit: expected N x C x {self.size} x {self.size}, "
                           f"prepared with the run's preprocessing")
        n = len(x)
        tgt = np.ones(n, np.int64) if targets is None else np.asarray(targets, np.int64).reshape(-1)
        if len(tgt) != n or not np.isin(tgt, (0, 1)).all():
            raise CamError(f"targets must be one 0/1 class per image ({n} images); got {tgt[:8]}")
        grids: list[np.ndarray] = []
        logits = np.empty(n, np.float32)
        t0 = time.perf_counter()
        for i in range(0, n, batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(self.device)
            out = self._cam(input_tensor=xb,
                            targets=[BinaryClassifierOutputTarget(int(t)) for t in tgt[i:i + batch_size]])
            grids.append(np.asarray(out, np.float32).reshape(len(xb), *np.shape(out)[-2:]))
            logits[i:i + len(xb)] = self._cam.outputs.detach().float().reshape(-1).cpu().numpy()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        grid = np.nan_to_num(np.concatenate(grids) if grids else np.zeros((0, 1, 1), np.float32), nan=0.0)
        grid = grid.clip(0.0, 1.0)
        cams = upsample(grid, self.size).clip(0.0, 1.0)
        seconds = time.perf_counter() - t0
        return CamBatch(cams, grid, logits, tgt, seconds, self.method, str(self.device))


def explain(model: nn.Module, backbone: registry.Backbone | str, preprocess: Preprocess, images: np.ndarray,
            targets: Sequence[int] | np.ndarray | None = None, *, method: str = "gradcam",
            device: str | torch.device = "cpu", batch_size: int = 16, layer: str | None = None) -> CamBatch:
    """Heatmaps of uint8 ``N x H x W x C`` images prepared by ``preprocess`` (see :class:`Explainer`;
    ``layer`` overrides the registry's target layer)."""
    with Explainer(model, backbone, preprocess.size, method=method, device=device, layer=layer) as ex:
        return ex(preprocess.normalize(images), targets, batch_size=batch_size)


# ------------------------------------------------------------------------------------- pictures


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB picture of a grayscale/RGB uint8 ``H x W [x C]`` image with a JET heatmap blended on top."""
    import cv2

    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., 0] if img.shape[2] in (1, 3) else img.mean(axis=2)
    rgb = np.repeat(img.astype(np.float32)[..., None] / 255.0, 3, axis=2)
    heat = cv2.applyColorMap(np.uint8(255 * np.clip(cam, 0, 1)), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return np.uint8(255 * np.clip((1 - alpha) * rgb + alpha * heat, 0, 1))


def _upscale(arr: np.ndarray, min_side: int) -> np.ndarray:
    from PIL import Image

    h, w = arr.shape[:2]
    if min(h, w) >= min_side:
        return arr
    f = int(np.ceil(min_side / min(h, w)))
    return np.asarray(Image.fromarray(arr).resize((w * f, h * f), Image.NEAREST))


def _save_npy(path: Path, array) -> None:
    """np.save to exactly ``path`` (given a name, np.save appends ``.npy`` to a temporary file's name)."""
    with open(path, "wb") as f:
        np.save(f, np.asarray(array, np.float32), allow_pickle=False)


def save_heatmaps(out_dir: str | Path, names: Sequence[str], images: np.ndarray, cams: np.ndarray,
                  *, min_side: int = 256) -> list[dict[str, str]]:
    """Write ``<name>.npy`` (raw float32 heatmap at input resolution) and ``<name>.png`` (overlay,
    enlarged to at least ``min_side`` pixels for viewing) per image; returns the paths written."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, img, cam in zip(names, images, cams):
        npy, png = out / f"{name}.npy", out / f"{name}.png"
        io.write_atomic(npy, lambda p, c=cam: _save_npy(p, c))
        pic = _upscale(overlay(img, cam), min_side)
        io.write_atomic(png, lambda p, a=pic: Image.fromarray(a).save(p, format="PNG"))
        written.append({"npy": str(npy), "png": str(png)})
    return written


def contact_sheet(path: str | Path, images: np.ndarray, columns: dict[str, np.ndarray],
                  row_labels: Sequence[str] | None = None, *, cell: int = 128) -> Path:
    """One PNG: a row per image; first column the image, then one heatmap overlay per entry of
    ``columns`` (title -> ``N x H x W`` heatmaps). Images may differ in size per column; each cell is
    resized to ``cell`` pixels."""
    from PIL import Image, ImageDraw

    n = len(images)
    titles = ["image", *columns]
    head, side = 16, 0
    sheet = Image.new("RGB", (side + cell * len(titles), head + cell * n), "white")
    draw = ImageDraw.Draw(sheet)
    for j, title in enumerate(titles):
        draw.text((j * cell + 3, 2), title[: cell // 6], fill="black")
    for i in range(n):
        img = np.asarray(images[i])
        gray = img[..., 0] if img.ndim == 3 else img
        cells = [np.repeat(gray[..., None], 3, axis=2)]
        for cams in columns.values():
            cam = cams[i]
            src = gray if cam.shape == gray.shape else np.asarray(
                Image.fromarray(gray).resize(cam.shape[::-1], Image.BILINEAR))
            cells.append(overlay(src, cam))
        for j, c in enumerate(cells):
            sheet.paste(Image.fromarray(c).resize((cell, cell), Image.BILINEAR), (side + j * cell, head + i * cell))
        if row_labels is not None:
            draw.text((3, head + i * cell + 3), str(row_labels[i])[: cell // 6], fill="yellow")
    return io.write_atomic(path, lambda p: sheet.save(p, format="PNG"))


def parse_layers(specs: Sequence[str] | None, backbones: Sequence[str]) -> dict[str, str]:
    """``["resnet18=layer3", ...]`` -> ``{"resnet18": "layer3"}``: per-backbone target layers that override
    the registry's (a finer layer localises better at small inputs). Names must be among ``backbones``.
    ``auto`` (alone: every backbone not named otherwise; or ``BACKBONE=auto``) is passed through as the
    layer "auto" for `cxr-edge fidelity` to choose (:mod:`bench.layer_select`)."""
    out: dict[str, str] = {}
    for spec in specs or ():
        if spec.strip() == "auto":  # every backbone (`cxr-edge fidelity` chooses on validation images)
            out.update({b: "auto" for b in backbones if b not in out})
            continue
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise CamError(f"--layer {spec!r}: expected BACKBONE=LAYER, e.g. resnet18=layer3 (a dotted module path)")
        if name not in backbones:
            raise CamError(f"--layer {spec!r}: no run of backbone {name!r} here; runs: {', '.join(backbones)}")
        out[name] = path
    return out
