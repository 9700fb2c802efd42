"""What can be benchmarked for one backbone on one device: a list of :class:`Target` objects.

A target is one row of the table: an identity (backbone, format, precision, device, runtime) and
either a loader that returns a predictor (``predict(float32 NCHW) -> logits``) or the reason it is
skipped. PyTorch eager FP32 comes first, as the reference every other row is compared with; on CUDA
it is joined by PyTorch FP16/BF16 autocast with channels-last memory format and by the three replayed as
CUDA graphs, and with ``compile`` by ``torch.compile`` variants. Each manifest record becomes one target
per runtime that can run it on the device (onnxruntime's CPU, CUDA or TensorRT execution provider;
OpenVINO's CPU or GPU device; TensorRT engines on CUDA). A runtime that is absent gives a skipped row
that says what to install.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEVICES = ("cpu", "cuda")


@dataclass
class Target:
    backbone: str
    format: str
    precision: str
    device: str
    runtime: str
    load: Callable[[], Any] | None = None
    skip_reason: str | None = None
    record: dict[str, Any] | None = None  # the manifest record (None for the PyTorch rows)
    path: str | None = None
    bytes: int | None = None
    reference: bool = False  # the PyTorch eager FP32 row the others are compared with
    sync: Callable[[], None] | None = None  # device synchronisation around timed calls
    check: Callable[[], Any] | None = None  # raises when the file is not the one exported (sha256), before load
    extra: dict[str, Any] = field(default_factory=dict)  # copied into the row (notes, warnings)

    def identity(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "format": self.format, "precision": self.precision,
                "device": self.device, "runtime": self.runtime}


class TorchRunner:
    """A PyTorch model run for benchmarking: eager or compiled, FP32 or autocast FP16/BF16, optionally
    channels-last, on its own copy of the model. Takes and returns host arrays like every other predictor.

    ``cuda_graph``: the forward pass is captured once per input shape as a CUDA graph (``torch.cuda.graph``)
    and replayed from a static input buffer, which removes the per-kernel launch cost of eager mode."""

    def __init__(self, model, device: str = "cpu", amp_dtype: str | None = None, channels_last: bool = False,
                 compile: bool = False, cuda_graph: bool = False) -> None:
        import torch

        self.torch, self.device = torch, torch.device(device)
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device, not {device!r}")
        # A copy of its own: .to() and channels-last change a module in place, and the FP32 model is shared by
        # every PyTorch row and by the row-metric hooks; the copy also makes the weights count in the row's memory.
        model = copy.deepcopy(model).to(self.device).eval()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile else model
        self.amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp_dtype or "")
        self.cuda_graph = cuda_graph
        self.graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

    def _forward(self, x):
        if self.amp is None:
            return self.model(x)
        # no autocast weight cache under graph capture (PyTorch's CUDA graph notes): casts are part of the graph
        with self.torch.autocast(self.device.type, dtype=self.amp, cache_enabled=not self.cuda_graph):
            return self.model(x)

    def _graph(self, shape: tuple[int, ...]):
        """(graph, static input, static output) for this input shape, captured on first use."""
        torch = self.torch
        if shape not in self.graphs:
            static_in = torch.zeros(shape, device=self.device).contiguous(memory_format=self.memory_format)
            side = torch.cuda.Stream(self.device)  # warm-up on a side stream before capture, as the docs ask
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(3):
                    self._forward(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self.graphs[shape] = (graph, static_in, static_out)
        return self.graphs[shape]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x_host = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.cuda_graph:
            graph, static_in, static_out = self._graph(tuple(x_host.shape))
            static_in.copy_(x_host)  # host to device into the captured buffer
            graph.replay()
            return static_out.float().flatten().cpu().numpy()
        with torch.inference_mode():
            x = x_host.to(self.device).contiguous(memory_format=self.memory_format)
            return self._forward(x).float().flatten().cpu().numpy()


def cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


def torch_targets(backbone: str, model, device: str, compile: bool = False,
                  weights_bytes: int | None = None, weights_path: str | None = None) -> list[Target]:
    """The PyTorch rows: eager FP32 (the reference); on CUDA also FP16/BF16 autocast, channels-last, and each of
    the three replayed as a CUDA graph; with ``compile`` a ``torch.compile`` twin of each eager row."""
    import torch

    def make(amp: str | None, cl: bool, comp: bool, graph: bool) -> Callable[[], TorchRunner]:
        return lambda: TorchRunner(model, device, amp_dtype=amp, channels_last=cl, compile=comp, cuda_graph=graph)

    common = {"backbone": backbone, "format": "pytorch", "device": device, "bytes": weights_bytes,
              "path": weights_path}
    sync = cuda_sync if device == "cuda" else None
    variants: list[tuple[str, str | None, bool]] = [("fp32", None, False)]
    if device == "cuda":
        variants += [("fp16", "fp16", True), ("bf16", "bf16", True)]
    modes = [("torch eager", False, False)]
    if device == "cuda":
        modes.append(("torch eager", False, True))
    if compile:
        modes.append(("torch.compile", True, False))
    out = []
    for mode, comp, graph in modes:
        for precision, amp, cl in variants:
            runtime = mode + (f" autocast {amp}, channels-last" if amp else "") + (", CUDA graph" if graph else "")
            t = Target(precision=precision, runtime=runtime, load=make(amp, cl, comp, graph), sync=sync,
                       reference=(precision == "fp32" and not comp and not graph), **common)
            if amp == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
                t.load, t.skip_reason = None, f"this GPU ({torch.cuda.get_device_name(0)}) has no bfloat16 support"
            out.append(t)
    return out


def ort_providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime as ort

    return list(ort.get_available_providers())


def openvino_devices() -> list[str]:
    if importlib.util.find_spec("openvino") is None:
        return []
    import openvino as ov

    return list(ov.Core().available_devices)


def artifact_targets(record: dict[str, Any], artifacts_dir: Path, device: str, threads: int | None) -> list[Target]:
    """The rows of one manifest record on ``device``: loaders where the runtime is present, else skips."""
    from export.base import FORMATS

    base = {"backbone": record.get("backbone", "?"), "format": record.get("format", "?"),
            "precision": record.get("precision", "?"), "device": device, "record": record,
            "path": record.get("path"), "bytes": record.get("bytes")}
    extra = {k: record[k] for k in ("note", "warning") if record.get(k)}
    status = record.get("status")

    def skipped(reason: str, runtime: str = "") -> list[Target]:
        return [Target(runtime=runtime or base["format"], skip_reason=reason, extra=extra, **base)]

    if status != "ok":
        why = record.get("error") or record.get("reason") or "no reason recorded"
        return skipped(f"export {status}: {why}")
    if record.get("verified") is False and record.get("unverified_reason"):
        return skipped(f"not verified: {record['unverified_reason']}")
    fmt = FORMATS.get(base["format"])
    if fmt is None:
        return skipped(f"format {base['format']!r} has no loader in this version of cxr-edge "
                       f"(known: {', '.join(FORMATS)})")
    path = Path(artifacts_dir) / record["path"]
    if not path.exists():
        return skipped(f"the manifest lists {path}, which does not exist; export again")
    # The size is the file's as it is now, and its checksum is compared with the record's before it is loaded:
    # a figure measured on a file changed after export would not describe the exported model.
    from export.base import file_bytes
    from export.manifest import verify_sha256

    base.update(bytes=file_bytes(path), check=lambda: verify_sha256(path, record.get("sha256")))
    missing = next((f"{m} is not installed" for m in fmt.requires if importlib.util.find_spec(m) is None), None)
    sync = cuda_sync if device == "cuda" else None
    from export.pipeline import load_artifact

    def loader(**options) -> Callable[[], Any]:
        return lambda: load_artifact(record, artifacts_dir, **options)

    if fmt.name == "onnx":
        if missing:
            return skipped(f"onnxruntime: {missing}", "onnxruntime")
        if device == "cpu":
            return [Target(runtime="onnxruntime CPU", load=loader(threads=threads, providers=["CPUExecutionProvider"]),
                           extra=extra, **base)]
        have = ort_providers()
        out = []
        for provider, runtime in (("CUDAExecutionProvider", "onnxruntime CUDA"),
                                  ("TensorrtExecutionProvider", "onnxruntime TensorRT")):
            if provider in have:
                out.append(Target(runtime=runtime, load=loader(threads=threads, providers=[provider]), sync=sync,
                                  extra=extra, **base))
            else:
                out.append(Target(runtime=runtime, extra=extra, skip_reason=(
                    f"onnxruntime has no {provider} here (available: {', '.join(have)}); install onnxruntime-gpu "
                    "built for this CUDA (and TensorRT for its provider)"), **base))
        return out
    if fmt.name == "openvino":
        if missing:
            return skipped(f"OpenVINO: {missing}: pip install 'cxr-edge[openvino]'", "OpenVINO")
        ov_device = "CPU" if device == "cpu" else "GPU"
        devices = openvino_devices()
        if ov_device not in devices:
            return skipped(f"OpenVINO sees no {ov_device} device (available: {', '.join(devices) or 'none'}); its GPU "
                           "plugin runs on Intel GPUs, not NVIDIA ones", f"OpenVINO {ov_device}")
        return [Target(runtime=f"OpenVINO {ov_device}", load=loader(threads=threads, device=ov_device), sync=sync,
                       extra=extra, **base)]
    if fmt.name == "tensorrt":
        if device != "cuda":
            return skipped("TensorRT engines run only on an NVIDIA GPU; bench with --device cuda", "TensorRT")
        reason = fmt.missing()
        if reason:
            return skipped(reason, "TensorRT")
        return [Target(runtime="TensorRT", load=loader(), sync=sync, extra=extra, **base)]
    # Any other format (the mobile ones: ExecuTorch, LiteRT, Core ML) runs on the host CPU with its runtime.
    reason = fmt.missing()
    if reason:
        return skipped(reason)
    if device != "cpu":
        return skipped(f"{fmt.name} runs here on the CPU only; bench it with --device cpu", f"{fmt.name} CPU")
    import inspect

    takes_threads = "threads" in inspect.signature(importlib.import_module(fmt.module).load).parameters
    return [Target(runtime=f"{fmt.name} CPU", load=loader(**({"threads": threads} if takes_threads else {})),
                   extra=extra, **base)]
