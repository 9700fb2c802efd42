"""The one preprocessing definition used by training, evaluation, export and Grad-CAM.

Every run and every artifact stores a :class:`Preprocess` as JSON, and every stage rebuilds it
from there, so an image is prepared identically wherever it is used (the seed project resized with
OpenCV for training and PIL for its CAMs; this is the single place that decides).

Pipeline: decode -> grayscale (8-bit) -> resize to ``size x size`` (PIL bilinear, aspect ratio
not kept, as the Kermany images are distributed) -> optional histogram equalisation of the resized image
(``equalize="histogram"``: PIL's ``ImageOps.equalize``, set by the ``equalize`` training recipes) -> repeat to
``channels`` -> uint8 ``HxWxC``.
Normalisation with ``mean``/``std`` happens on batches, as float32 ``NCHW``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RULES = ("squash",)
EQUALIZE_RULES = ("none", "histogram")


@dataclass(frozen=True)
class Preprocess:
    size: int = 64
    channels: int = 3
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)
    resize: str = "squash"
    equalize: str = "none"  # "histogram": global histogram equalisation of the resized grayscale image

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 16:
            raise ValueError(f"image size {self.size!r} is too small; use an integer >= 16 (e.g. 64, 128, 224)")
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels!r} is not supported; use 1 or 3")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean {self.mean} and std {self.std} must have one value per channel ({self.channels})"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std {self.std} must be positive")
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"resize rule {self.resize!r} is not known; choose one of {', '.join(RESIZE_RULES)}")
        if self.equalize not in EQUALIZE_RULES:
            raise ValueError(f"equalize rule {self.equalize!r} is not known; choose one of "
                             f"{', '.join(EQUALIZE_RULES)}")

    @classmethod
    def for_model(cls, size: int, channels: int = 3) -> "Preprocess":
        mean = IMAGENET_MEAN if channels == 3 else (float(np.mean(IMAGENET_MEAN)),)
        std = IMAGENET_STD if channels == 3 else (float(np.mean(IMAGENET_STD)),)
        return cls(size=size, channels=channels, mean=tuple(mean), std=tuple(std))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(
            size=int(d["size"]),
            channels=int(d["channels"]),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
            resize=str(d.get("resize", "squash")),
            equalize=str(d.get("equalize", "none")),
        )

    def image_to_uint8(self, image: Image.Image) -> np.ndarray:
        """A decoded PIL image (any mode, any size) -> uint8 array ``size x size x channels``."""
        gray = image.convert("L") if image.mode != "L" else image
        if gray.size != (self.size, self.size):
            gray = gray.resize((self.size, self.size), Image.BILINEAR)
        if self.equalize == "histogram":
            from PIL import ImageOps

            gray = ImageOps.equalize(gray)
        arr = np.asarray(gray, dtype=np.uint8)
        return np.repeat(arr[:, :, None], self.channels, axis=2)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 ``NxHxWxC`` (or one ``HxWxC``) -> float32 ``NxCxHxW`` normalised input."""
        if batch.ndim == 3:
            batch = batch[None]
        x = batch.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
