"""The environment block every benchmark result carries: machine, accelerator, libraries, settings.

A latency figure means nothing without the CPU (and its vector extensions), the GPU, the library
versions and the thread count it was measured with; this module collects them once per benchmark.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from core import io

# CPU flags that decide which kernels onnxruntime, OpenVINO and PyTorch pick (INT8 dot products,
# bf16/fp16 arithmetic, vector width); the full flag list is long and says little more.
RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                  "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")
_EXTRA_VERSIONS = ("onnxslim", "tensorrt", "executorch", "coremltools", "ai-edge-litert", "onnxruntime-gpu",
                   "matplotlib", "cxr-edge")


def cpu_info(path: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model, logical core count and the relevant instruction-set flags (from /proc/cpuinfo on Linux)."""
    model, flags = None, []
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model is None:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = value.split()
    except OSError:
        pass
    have = set(flags)
    return {"model": model or io._cpu_model(), "logical_cores": os.cpu_count(),
            "flags": [f for f in RELEVANT_FLAGS if f in have]}


def gpu_info() -> dict[str, Any] | None:
    """Name, compute capability, memory and driver-visible CUDA version of GPU 0; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def runtime_info() -> dict[str, Any]:
    """What each runtime can run on here: onnxruntime execution providers, OpenVINO devices."""
    info: dict[str, Any] = {}
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    if importlib.util.find_spec("openvino"):
        try:
            import openvino as ov

            info["openvino_devices"] = list(ov.Core().available_devices)
        except Exception as err:  # a broken plugin must not stop the benchmark
            info["openvino_devices_error"] = f"{type(err).__name__}: {err}"
    return info


def versions() -> dict[str, str]:
    return io.versions(_EXTRA_VERSIONS)


def environment(settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full block written into results.json: date, host, CPU, GPU, runtimes, versions, settings."""
    import torch

    base = io.environment()
    return {
        "date": base["date"],
        "host": base["host"],
        "platform": base["platform"],
        "cpu": cpu_info(),
        "gpu": gpu_info(),
        "torch_threads": torch.get_num_threads(),
        "runtimes": runtime_info(),
        "versions": versions(),
        "settings": settings or {},
    }
