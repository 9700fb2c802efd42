"""Cost of a model and of a loaded predictor: parameters, FLOPs, bytes on disk, memory.

Parameters and FLOPs are properties of the backbone at its input size, counted once on the PyTorch
model (FLOPs by ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as two
FLOPs, for one image); every artifact of that backbone shares them. Memory is measured on the whole
process, because onnxruntime, OpenVINO and TensorRT allocate outside Python's heap where
``tracemalloc`` cannot see: the Linux peak-RSS counter (VmHWM) is reset before a predictor is loaded
and read after it has run its largest batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def model_cost(model, size: int, channels: int = 3) -> dict[str, Any]:
    """Parameters (millions) and GFLOPs for one ``channels x size x size`` image of a PyTorch model."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    x = torch.zeros(1, channels, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return {"params_m": params / 1e6, "gflops": counter.get_total_flops() / 1e9,
            "flops_method": f"torch FlopCounterMode, batch 1 at {size}x{size}, multiply-add = 2 FLOPs"}


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mib() -> float | None:
    """Resident memory of this process now, in MiB (None where /proc is absent)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


class PeakMemory:
    """Peak resident memory added while the ``with`` block runs (load + a run of the largest batch).

    ``peak_mib`` is the process's peak RSS during the block minus its RSS at the start; ``method`` says
    whether the peak counter could be reset (Linux) or only the RSS after the block was read.
    """

    def __init__(self) -> None:
        self.start: float | None = None
        self.peak_mib: float | None = None
        self.method = "unavailable"

    def __enter__(self) -> "PeakMemory":
        _release_free_memory()
        self.reset = _reset_peak()
        self.start = rss_mib()
        return self

    def __exit__(self, *exc) -> None:
        end = rss_mib()
        hwm = _status_kib("VmHWM")
        if self.start is None or end is None:
            return
        if self.reset and hwm is not None:
            self.peak_mib, self.method = max(hwm / 1024, end) - self.start, "peak RSS (VmHWM reset) - RSS before load"
        else:
            self.peak_mib, self.method = end - self.start, "RSS after - RSS before load (peak counter not resettable)"


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc ``malloc_trim``), so that a new
    predictor's allocations show up as RSS growth instead of silently reusing memory freed earlier."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the figure may then undercount


def _reset_peak() -> bool:
    """Reset the process's peak-RSS counter (writing 5 to /proc/self/clear_refs, Linux >= 4.0)."""
    if not _CLEAR_REFS.exists() or not os.access(_CLEAR_REFS, os.W_OK):
        return False
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class GpuPeak:
    """Peak CUDA memory that PyTorch's allocator handed out inside the block, above what was already allocated
    when it began, in MiB (``mib``; None without CUDA). Other rows' predictors stay loaded while the benchmark
    interleaves them, so the device-wide peak alone would count their memory too.

    Only PyTorch allocations (PyTorch eager, CUDA graphs' private pools, TensorRT through torch buffers);
    onnxruntime's CUDA arena and OpenVINO's GPU plugin are not counted.
    """

    def __init__(self, device=None) -> None:
        self.device, self.mib = device, None

    def __enter__(self) -> "GpuPeak":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if torch.cuda.is_available():
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.before) / 2**20
