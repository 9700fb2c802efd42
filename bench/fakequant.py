"""A fake-quantized (simulated INT8) copy of a PyTorch model, so INT8 heatmaps exist.

Deployed INT8 artifacts (onnxruntime QDQ, OpenVINO/NNCF) have no gradients, so Grad-CAM cannot be
computed on them. This copy stands for them: every convolution and linear layer gets its weights
fake-quantized to int8 per output channel (symmetric), and its input activations fake-quantized
per tensor (uint8 asymmetric, or int8 symmetric), with ranges calibrated on the same training-side
images the export used (:func:`export.base.calibration_set`, the same count and seed), by min/max or
percentile as :class:`export.base.QuantConfig` says. That is the QDQ scheme of the ONNX INT8
artifacts. ``torch.fake_quantize_*`` pass gradients straight through, so Grad-CAM works.

It is a stand-in, not the artifact: runtimes also quantize other operations (Add, pooling) and
round in their own kernels. NNCF's own PyTorch backend would be the closer twin of the OpenVINO
INT8 artifacts, but it compiles a C++ extension on first use (minutes on two cores, where it timed
out), so it is not used here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class FakeQuantUnavailable(ValueError):
    """The calibration asked for cannot be simulated here (the message says which)."""


class _FakeQuant(nn.Module):
    """Wraps one Conv2d or Linear: records input ranges while calibrating, then fake-quantizes."""

    def __init__(self, inner: nn.Module, *, per_channel: bool, symmetric_activations: bool, method: str,
                 percentile: float) -> None:
        super().__init__()
        self.inner = inner
        self.per_channel, self.symmetric = per_channel, symmetric_activations
        self.method, self.percentile = method, percentile
        self.calibrating = True
        self.lo, self.hi = float("inf"), float("-inf")
        self._samples: list[np.ndarray] = []
        self.act_scale = 1.0
        self.act_zero = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            v = x.detach().float()
            self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
            if self.method == "percentile":
                flat = v.reshape(-1)
                idx = torch.randint(0, flat.numel(), (min(flat.numel(), 20000),), generator=_GEN)
                self._samples.append(flat[idx].cpu().numpy())
            return self.inner(x)
        qmin, qmax = (-128, 127) if self.symmetric else (0, 255)
        xq = torch.fake_quantize_per_tensor_affine(x, self.act_scale, self.act_zero, qmin, qmax)
        return self._run(xq, self._weight())

    def _weight(self) -> torch.Tensor:
        w = self.inner.weight
        if self.per_channel:
            amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1).clamp_min(1e-12)
            scale = (amax / 127.0).float()
            zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
            return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)
        amax = max(float(w.detach().abs().max()), 1e-12)
        return torch.fake_quantize_per_tensor_affine(w, amax / 127.0, 0, -127, 127)

    def _run(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if isinstance(self.inner, nn.Conv2d):
            return self.inner._conv_forward(x, w, self.inner.bias)
        return F.linear(x, w, self.inner.bias)

    def finish(self) -> None:
        """Turn recorded ranges into scale and zero point (always including 0, as QDQ does)."""
        lo, hi = self.lo, self.hi
        if self.method == "percentile" and self._samples:
            s = np.concatenate(self._samples)
            lo, hi = float(np.percentile(s, 100 - self.percentile)), float(np.percentile(s, self.percentile))
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if self.symmetric:
            amax = max(abs(lo), abs(hi), 1e-8)
            self.act_scale, self.act_zero = amax / 127.0, 0
        else:
            self.act_scale = max(hi - lo, 1e-8) / 255.0
            self.act_zero = int(np.clip(round(-lo / self.act_scale), 0, 255))
        self._samples = []
        self.calibrating = False


_GEN = torch.Generator().manual_seed(0)


def fake_quantize(model: nn.Module, calibration: np.ndarray, *, calibration_method: str = "minmax",
                  per_channel: bool = True, symmetric_activations: bool = False, percentile: float = 99.999,
                  batch_size: int = 16) -> nn.Module:
    """A fake-quantized copy of ``model`` (eval mode), calibrated on normalised ``calibration`` images.

    Module paths are kept (each Conv2d/Linear ``x`` becomes ``x.inner`` inside a wrapper at ``x``), so
    the registry's Grad-CAM target layers resolve unchanged. Entropy calibration is not simulated.
    """
    import copy

    if calibration_method not in ("minmax", "percentile"):
        raise FakeQuantUnavailable(f"{calibration_method} calibration is not simulated by the fake-quantized "
                                   f"PyTorch model (minmax and percentile are)")
    if len(calibration) == 0:
        raise FakeQuantUnavailable("no calibration images")
    q = copy.deepcopy(model).eval()
    wrappers: list[_FakeQuant] = []
    for name, module in list(q.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (nn.Conv2d, nn.Linear)) and not isinstance(child, _FakeQuant):
                w = _FakeQuant(child, per_channel=per_channel, symmetric_activations=symmetric_activations,
                               method=calibration_method, percentile=percentile)
                setattr(module, child_name, w)
                wrappers.append(w)
    with torch.inference_mode():
        for i in range(0, len(calibration), batch_size):
            q(torch.from_numpy(np.ascontiguousarray(calibration[i:i + batch_size], np.float32)))
    for w in wrappers:
        w.finish()
    return q


def from_config(model: nn.Module, calibration: np.ndarray, config: dict[str, Any] | None) -> nn.Module:
    """:func:`fake_quantize` with the settings of an artifact's ``calibration`` record (QuantConfig fields)."""
    cfg = config or {}
    return fake_quantize(model, calibration, calibration_method=str(cfg.get("calibration", "minmax")),
                         per_channel=bool(cfg.get("per_channel", True)),
                         symmetric_activations=bool(cfg.get("symmetric_activations", False)),
                         percentile=float(cfg.get("percentile", 99.999)))
