"""LiteRT (TensorFlow Lite) target: a ``.tflite`` flatbuffer converted by litert-torch, FP32 or INT8.

FP32: ``litert_torch.convert(model, (example,))``. INT8 is full-integer: PT2E quantization with
litert-torch's quantizer (weights symmetric per channel, activations per tensor, static ranges from
the training-side calibration images; :func:`mobile.common.pt2e_quantize`), then converted with
``quant_config``; the program's input and output are INT8 too, and the predictor quantizes and
dequantizes them with the scales stored in the file. The input is fixed at ``1 x C x H x W``.

No TensorFlow is needed: conversion is litert-torch's own MLIR pipeline, and the runtime is
ai-edge-litert's ``Interpreter`` (the LiteRT C++ runtime with its XNNPACK CPU delegate, built for
this host). Each build reads its file back and counts operators and the precision of the weights of
every convolution and fully connected layer; an INT8 file without INT8 weights, or an FP32 file with
them, raises :class:`~export.base.PrecisionError`.
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
WEIGHTED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"})


def build(ctx: ExportContext, precision: str, dest: Path) -> dict[str, Any]:
    """Write the ``.tflite`` file of ``precision`` to ``dest``; return what was built (facts)."""
    if precision not in PRECISIONS:
        raise ExportError(f"LiteRT here has {' and '.join(PRECISIONS)} paths, not {precision!r}")
    common.require("litert")
    import litert_torch

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    example = common.example_input(ctx)
    model, facts, kwargs = ctx.model.eval(), {"input_shape": list(example.shape)}, {}
    if precision == "int8":
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig as LiteRTQuantConfig

        facts["quantization"] = {**common.pt2e_settings(ctx.quant), "mode": "full integer (static ranges)"}
        config = common.pt2e_config(get_symmetric_quantization_config(is_per_channel=ctx.quant.per_channel,
                                                                      is_dynamic=False), ctx.quant)
        quantizer = PT2EQuantizer().set_global(config)
        model, counts = common.pt2e_quantize(model, example, quantizer, ctx.calibration, fold_quantize=False)
        facts["quantization"].update(quantizer="litert_torch PT2EQuantizer", **counts)
        kwargs["quant_config"] = LiteRTQuantConfig(pt2e_quantizer=quantizer)
    with common.quiet(), common.quiet_fd(), common.quiet_fd(1):
        edge = litert_torch.convert(model, (example,), **kwargs)
        edge.export(str(dest))
    facts.update(describe(dest))
    check_precision(facts, precision, dest)
    return {**facts, "converter": f"litert_torch {litert_torch.__version__}",
            "seconds": round(time.perf_counter() - t0, 3)}


def describe(path: Path) -> dict[str, Any]:
    """Operators of a ``.tflite`` file, its input/output types and its weighted layers by weight type."""
    interpreter = _interpreter(path)
    ops = interpreter._get_ops_details()  # the public API has no operator list; this one is stable since TF 2.4
    weights: Counter[str] = Counter()
    for op in ops:
        if op["op_name"] in WEIGHTED_OPS and len(op["inputs"]) > 1:
            weights[np.dtype(op["operand_types"][1]).name] += 1
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    return {"ops": dict(sorted(Counter(op["op_name"] for op in ops).items())), "weighted_ops": dict(weights),
            "input": {"shape": [int(d) for d in inp["shape"]], "dtype": np.dtype(inp["dtype"]).name},
            "output": {"shape": [int(d) for d in out["shape"]], "dtype": np.dtype(out["dtype"]).name}}


def check_precision(facts: dict[str, Any], precision: str, where: Path) -> None:
    w = facts["weighted_ops"]
    if not w:
        raise PrecisionError(f"{where} has no convolution or fully connected layer; the conversion lost the model")
    if precision == "int8" and not w.get("int8"):
        raise PrecisionError(f"{where} was asked to be INT8 but its layers' weights are {w}")
    if precision == "fp32" and set(w) != {"float32"}:
        raise PrecisionError(f"{where} was asked to be FP32 but its layers' weights are {w}")


def _interpreter(path: Path, threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    kwargs = {"num_threads": int(threads)} if threads else {}
    with common.quiet_fd():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_path=str(path), **kwargs)
        interpreter.allocate_tensors()
    return interpreter


class LiteRTPredictor:
    """A ``.tflite`` file in ai-edge-litert's interpreter: ``predict(float32 NCHW) -> logits (N,)``, image by
    image; INT8 input and output are (de)quantized with the file's own scale and zero point."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        common.require("litert")
        self.path, self.threads = Path(path), threads
        if not self.path.is_file():
            raise ExportError(f"LiteRT file {str(self.path)!r} does not exist; build it with `cxr-edge export`")
        self.interpreter = _interpreter(self.path, threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.input["shape"])

    def _one(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.input["dtype"])
        if dtype != np.float32:
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])
        if np.dtype(self.output["dtype"]) != np.float32:
            scale, zero = self.output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim == 4:
            common.check_input(self.input_shape, x.shape, self.path)
        return common.per_image(self._one, x, self.path)


def load(path: Path, threads: int | None = None) -> LiteRTPredictor:
    """Load a ``.tflite`` file; ``threads`` sets the interpreter's threads (default: the runtime's)."""
    return LiteRTPredictor(path, threads=threads)
