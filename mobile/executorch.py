"""ExecuTorch target: a ``.pte`` program lowered to the XNNPACK backend, FP32 or INT8.

FP32: ``torch.export`` -> ``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])`` ->
``to_executorch()``. INT8: the same after PT2E quantization with XNNPACK's quantizer (weights
symmetric per channel, activations per tensor), calibrated on training-side images
(:func:`mobile.common.pt2e_quantize`). The program's input is fixed at ``1 x C x H x W``.

Each build counts what it made: graph nodes left outside the XNNPACK delegate (they run on
ExecuTorch's portable CPU kernels, slowly) and, for INT8, the quantize/dequantize nodes; an INT8
program without quantized weights raises :class:`~export.base.PrecisionError`.

The runtime is ExecuTorch's Python bindings (``executorch.runtime``), the same C++ runtime and
XNNPACK kernels a phone app links, built for this host's x86 CPU.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from export.base import ExportContext, ExportError, PrecisionError
from mobile import common

PRECISIONS = ("fp32", "int8")


def build(ctx: ExportContext, precision: str, dest: Path) -> dict[str, Any]:
    """Write the ``.pte`` program of ``precision`` to ``dest``; return what was built (facts)."""
    if precision not in PRECISIONS:
        raise ExportError(f"ExecuTorch here has {' and '.join(PRECISIONS)} paths, not {precision!r} (XNNPACK runs "
                          "FP16 only on ARM CPUs)")
    common.require("executorch")
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    example = common.example_input(ctx)
    model, facts = ctx.model.eval(), {"input_shape": list(example.shape), "backend": "XNNPACK"}
    if precision == "int8":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        facts["quantization"] = common.pt2e_settings(ctx.quant)
        config = common.pt2e_config(get_symmetric_quantization_config(is_per_channel=ctx.quant.per_channel), ctx.quant)
        quantizer = XNNPACKQuantizer().set_global(config)
        model, counts = common.pt2e_quantize(model, example, quantizer, ctx.calibration)
        facts["quantization"].update(quantizer="executorch XNNPACKQuantizer", **counts)
    with common.quiet(), torch.no_grad():
        program = torch.export.export(model, (example,))
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        facts.update(graph_counts(edge.exported_program().graph_module))
        buffer = edge.to_executorch().buffer
    dest.write_bytes(buffer)
    if precision == "int8" and not facts["quantization"]["weight_dequantize"]:
        raise PrecisionError("the INT8 program has no quantized weights")
    return {**facts, "seconds": round(time.perf_counter() - t0, 3)}


def graph_counts(graph_module) -> dict[str, Any]:
    """How much of the lowered graph XNNPACK took: delegate calls and the operators left outside it."""
    calls = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    delegates = sum("executorch_call_delegate" in str(n.target) for n in calls)
    outside = Counter(_op_name(n.target) for n in calls
                      if "executorch_call_delegate" not in str(n.target) and "getitem" not in str(n.target))
    return {"xnnpack_delegates": delegates, "ops_outside_delegate": dict(sorted(outside.items()))}


def _op_name(target) -> str:
    """``aten.cat.default`` for an edge operator (its str() appends the whole schema)."""
    text = str(target)
    if text.startswith("<") and ": " in text:
        return text.split(": ", 1)[1].split(">", 1)[0]
    return text


class ExecuTorchPredictor:
    """A ``.pte`` program in ExecuTorch's runtime: ``predict(float32 NCHW) -> logits (N,)``, image by image.

    ``threads`` sets the XNNPACK thread pool, which is one per process: a predictor whose count
    differs from the pool's resets the pool and loads its method again before running (running a
    method across a pool reset crashes the runtime), so predictors with different counts can
    take turns in one process.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        common.require("executorch")
        from executorch.runtime import Runtime

        self.path, self.threads = Path(path), int(threads) if threads else None
        if not self.path.is_file():
            raise ExportError(f"ExecuTorch program {str(self.path)!r} does not exist; build it with `cxr-edge export`")
        self._program = Runtime.get().load_program(self.path)
        self._pool_size = None
        self._method = self._load()
        meta = self._method.metadata
        if meta.num_inputs() != 1:
            raise ExportError(f"{self.path} takes {meta.num_inputs()} inputs; expected one image tensor")
        self.input_shape = tuple(int(d) for d in meta.input_tensor_meta(0).sizes())

    def _load(self):
        from executorch.extension.pybindings import portable_lib

        if self.threads and portable_lib._threadpool_get_thread_count() != self.threads:
            with common.quiet_fd():
                portable_lib._unsafe_reset_threadpool(self.threads)
        self._pool_size = portable_lib._threadpool_get_thread_count()
        with common.quiet_fd():
            return self._program.load_method("forward")

    def _ready(self):
        from executorch.extension.pybindings import portable_lib

        current = portable_lib._threadpool_get_thread_count()
        if current != self._pool_size or (self.threads and current != self.threads):
            self._method = self._load()  # the pool changed under this method since it was loaded
        return self._method

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim == 4:
            common.check_input(self.input_shape, x.shape, self.path)
        method = self._ready()
        return common.per_image(lambda one: method.execute([torch.from_numpy(one)])[0].numpy(), x, self.path)


def load(path: Path, threads: int | None = None) -> ExecuTorchPredictor:
    """Load a ``.pte`` program; ``threads`` sets the XNNPACK thread pool (default: the runtime's)."""
    return ExecuTorchPredictor(path, threads=threads)
