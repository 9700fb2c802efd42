"""`cxr-edge predict --heatmaps DIR`: Grad-CAM overlays of the predicted images from the source run's FP32
PyTorch model (:mod:`core.gradcam`), whatever format and precision gave the prediction.

An exported artifact has no gradients, so its heatmap is its FP32 model's: the registry's CAM layer, or the
layer (and method) the run records as chosen (``layer_selection``, as `cxr-edge fidelity --layer auto` names
it). When the artifact is not that FP32 model (another format or a lower precision), every picture and
``heatmaps.json`` say so: the quantized model's own evidence may differ (`cxr-edge fidelity` measures by how much).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core import io

CAPTION_PX = 14


def _unique(stem: str, seen: dict[str, int]) -> str:
    seen[stem] = seen.get(stem, 0) + 1
    return stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"


class HeatmapWriter:
    """Writes ``<image>.png`` (overlay with a caption) and ``<image>.npy`` (heatmap in [0, 1] at the model's input
    size) per decoded image into ``out_dir``, and ``heatmaps.json`` on :meth:`close`."""

    def __init__(self, ref, out_dir: Path, run_dir: Path | None, force: bool = False) -> None:
        from core.gradcam import Explainer
        from core.runs import load_run
        from export.base import run_hash

        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and any(self.out_dir.iterdir()) and not force:
            raise ValueError(f"--heatmaps {self.out_dir} is not empty (earlier heatmaps?); choose an empty folder "
                             "or pass --force to write over files of the same names")
        if run_dir is None:
            raise ValueError(f"--heatmaps needs the FP32 PyTorch run that {ref.model_id} was exported from, and its "
                             "record names none that exists here; pass it with --run RUN_FOLDER")
        run = load_run(run_dir)
        if run.preprocess != ref.preprocess:
            raise ValueError(f"run {run_dir} prepares images as {run.preprocess.to_dict()}, the model as "
                             f"{ref.preprocess.to_dict()}: it is not the model's source run; pass the right --run")
        self.warning = None
        if ref.run_hash and run_hash(run) != ref.run_hash:
            self.warning = (f"run {run_dir} has changed since {ref.model_id} was exported from it (run.json hash "
                            "differs): its heatmaps may not match the model")
        choice = run.record.get("layer_selection") or {}
        self.layer = choice.get("layer") or run.backbone.cam_layer
        self.method = choice.get("method") or "gradcam"
        self.same_model = ref.format == "pytorch"
        self.caption = f"Grad-CAM of FP32 {run.record['backbone']}" + (
            "" if self.same_model else f" (prediction: {ref.format} {ref.precision})")
        self.explainer = Explainer(run.build_model(), run.backbone, ref.preprocess.size, method=self.method,
                                   layer=self.layer)
        self.record: dict[str, Any] = {
            "model": ref.model_id, "explained_model": f"FP32 PyTorch model of run {Path(run_dir).name}",
            "run_hash": run_hash(run), "layer": self.layer, "method": self.method,
            "explained_class": "PNEUMONIA (the model's one logit)",
            "note": None if self.same_model else (
                f"the heatmaps are the FP32 model's, not the {ref.format} {ref.precision} artifact's that gave the "
                "probabilities; its own evidence may differ (`cxr-edge fidelity` measures heatmap agreement)"),
            "warning": self.warning, "files": []}
        self.seen: dict[str, int] = {}
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, batch, rows: list[dict[str, Any]]) -> None:
        """Heatmaps of one decoded batch (:class:`export.predict.Decoded`); each row gets its ``heatmap`` file."""
        if not len(batch.images):
            return
        cams = self.explainer(batch.x).cams
        good = [row for row in rows if not row["error"]]
        for row, img, cam in zip(good, batch.images, cams):
            name = _unique(Path(row["path"]).stem, self.seen)
            png = self.out_dir / f"{name}.png"
            io.write_atomic(self.out_dir / f"{name}.npy", lambda p, c=cam: _save_npy(p, c))
            picture = self._picture(img, cam)
            io.write_atomic(png, lambda p, a=picture: _save_png(p, a))
            row["heatmap"] = str(png)
            self.record["files"].append({"image": row["path"], "png": png.name, "npy": f"{name}.npy"})

    def _picture(self, image: np.ndarray, cam: np.ndarray) -> np.ndarray:
        from PIL import Image, ImageDraw

        from core.gradcam import overlay

        pic = Image.fromarray(overlay(image, cam))
        side = max(256, pic.width)
        pic = pic.resize((side, side), Image.BILINEAR)
        canvas = Image.new("RGB", (side, side + CAPTION_PX), "black")
        canvas.paste(pic, (0, CAPTION_PX))
        ImageDraw.Draw(canvas).text((3, 1), self.caption, fill="white")
        return np.asarray(canvas)

    def close(self) -> Path:
        self.explainer.close()
        return io.write_json(self.out_dir / "heatmaps.json", self.record)


def _save_npy(path: Path, cam: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.asarray(cam, np.float32), allow_pickle=False)


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path, format="PNG")
