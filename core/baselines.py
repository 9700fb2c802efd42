"""The seed studies' own small CNNs, trained from scratch, as registry baselines beside the seven timm backbones.

``cnn3``: the three-layer CNN of the first study (conv 32/64/128, 3x3 kernels, ReLU, 2x2 max-pooling each; flatten;
dense 256 with ReLU and dropout 0.5; one logit). ``gapcnn``: the small CNN with global average pooling of the
second study, whose class activation map is its last convolution's output (Zhou et al. 2016, CAM).

Both behave like timm models where the project relies on it: ``get_classifier`` / ``reset_classifier``,
``forward_features`` / ``forward_head(pre_logits=True)``, ``num_features``, ``pretrained_cfg`` (its ``classifier``
names the head) and ``feature_info`` (the stage modules and their strides, as timm lists them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class InputSizeError(ValueError):
    """An input whose size a model with a size-bound layer (cnn3's flatten + dense) cannot take."""


def _block(c_in: int, c_out: int, *, norm: bool, pool: bool) -> nn.Sequential:
    """conv 3x3 ('same' padding) [+ BatchNorm] + ReLU [+ 2x2 max-pool]."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=False))
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Baseline(nn.Module):
    """What both baselines share: the timm-like surface over ``features`` and a ``fc`` classifier."""

    features: nn.Sequential
    fc: nn.Module
    num_features: int
    num_classes: int

    def _finish(self, arch: str, in_chans: int, channels: tuple[int, ...], strides: tuple[int, ...]) -> None:
        self.pretrained_cfg: dict[str, Any] = {"architecture": arch, "classifier": "fc",
                                               "num_classes": self.num_classes}
        self.default_cfg = self.pretrained_cfg
        self.feature_info = [{"num_chs": c, "reduction": r, "module": f"features.{i}"}
                             for i, (c, r) in enumerate(zip(channels, strides))]
        self.in_chans = in_chans

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier of ``num_classes`` outputs (0: identity, as timm does)."""
        self.num_classes = num_classes
        self.pretrained_cfg["num_classes"] = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CNN3(_Baseline):
    """Three conv blocks (32/64/128 channels), flatten, dense 256 + ReLU + dropout, classifier.

    The flatten ties the dense layer to the input size the model was built for (``img_size``): its weights hold
    ``128 * (img_size // 8) ** 2`` inputs, and another size is refused with :class:`InputSizeError`.
    """

    def __init__(self, img_size: int = 224, num_classes: int = 1, in_chans: int = 3, drop_rate: float = 0.5,
                 hidden: int = 256) -> None:
        super().__init__()
        if img_size < 8:
            raise InputSizeError(f"cnn3 needs an input of at least 8 px (three 2x2 poolings); got {img_size}")
        self.img_size, self.num_classes, self.drop_rate = img_size, num_classes, drop_rate
        self.features = nn.Sequential(_block(in_chans, 32, norm=False, pool=True),
                                      _block(32, 64, norm=False, pool=True),
                                      _block(64, 128, norm=False, pool=True))
        grid = img_size // 8
        self.flat_features = 128 * grid * grid
        self.dense = nn.Linear(self.flat_features, hidden)
        self.act = nn.ReLU(inplace=False)
        self.drop = nn.Dropout(drop_rate)
        self.num_features = hidden
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()
        self._finish("cnn3", in_chans, (32, 64, 128), (2, 4, 8))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise InputSizeError(
                f"cnn3 was built for {self.img_size}x{self.img_size} inputs (its dense layer takes the flattened "
                f"{128}x{self.img_size // 8}x{self.img_size // 8} map); got {tuple(x.shape[-2:])}. Resize the images "
                f"to {self.img_size} px, or train a cnn3 at the size you need")
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.act(self.dense(torch.flatten(x, 1))))
        return x if pre_logits else self.fc(x)


class GapCNN(_Baseline):
    """Four conv blocks (32/64/128 with BatchNorm, ReLU and 2x2 max-pooling; then 256 without pooling), global
    average pooling, [dropout], classifier. Any input size; its CAM is the last block's output (``features.3``)."""

    def __init__(self, img_size: int = 224, num_classes: int = 1, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.img_size, self.num_classes, self.drop_rate = img_size, num_classes, drop_rate
        self.features = nn.Sequential(_block(in_chans, 32, norm=True, pool=True),
                                      _block(32, 64, norm=True, pool=True),
                                      _block(64, 128, norm=True, pool=True),
                                      _block(128, 256, norm=True, pool=False))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.num_features = 256
        self.fc = nn.Linear(256, num_classes) if num_classes > 0 else nn.Identity()
        self._finish("gapcnn", in_chans, (32, 64, 128, 256), (2, 4, 8, 8))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(torch.flatten(self.global_pool(x), 1))
        return x if pre_logits else self.fc(x)


def cnn3(img_size: int, num_classes: int = 1, **kwargs: Any) -> CNN3:
    return CNN3(img_size=img_size, num_classes=num_classes, **kwargs)


def gapcnn(img_size: int, num_classes: int = 1, **kwargs: Any) -> GapCNN:
    return GapCNN(img_size=img_size, num_classes=num_classes, **kwargs)
