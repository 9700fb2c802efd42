"""What the mobile targets (ExecuTorch, LiteRT, Core ML) share.

Every mobile artifact takes one image at a time: the program is exported with a fixed input of
``1 x C x H x W`` (what a phone app feeds it), and its predictor runs a batch image by image.
INT8 for ExecuTorch and LiteRT goes through PyTorch's PT2E flow (``prepare_pt2e`` -> calibrate ->
``convert_pt2e``) with each backend's own quantizer, calibrated on the training-side images of
:attr:`~export.base.ExportContext.calibration` only; :func:`pt2e_settings` is the one place where
:class:`~export.base.QuantConfig` becomes PT2E quantizer settings.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from export.base import FORMATS, BackendUnavailable, ExportContext, ExportError, QuantConfig, run_hash

BATCH = 1  # mobile programs take one image; predictors loop over a batch
HOST_NOTE = ("latency measured on this host's CPU through the format's desktop runtime stands in for a phone's; "
             "a phone's CPU, threads and delegates (GPU, NPU, Neural Engine) will differ")

# QuantConfig.calibration -> the PT2E activation observer (torchao.quantization.pt2e observers).
ACTIVATION_OBSERVERS = {"minmax": "MinMaxObserver", "entropy": "HistogramObserver"}


def require(fmt: str) -> None:
    """Raise :class:`BackendUnavailable` (with the install hint) when ``fmt``'s packages are absent;
    make torchvision importable first (the converters import it)."""
    reason = FORMATS[fmt].missing()
    if reason:
        raise BackendUnavailable(reason)
    from core._compat import ensure_torchvision

    ensure_torchvision()


def example_input(ctx: ExportContext):
    """A seeded ``1 x C x H x W`` float tensor of the run's input size (the shape the program is fixed to)."""
    import torch

    c, h, w = (int(d) for d in ctx.val_inputs.shape[1:])
    return torch.randn(BATCH, c, h, w, generator=torch.Generator().manual_seed(0))


def deploy_metadata(ctx: ExportContext, precision: str) -> dict[str, str]:
    """What a deployer needs beside the weights: preprocessing, threshold, source run, precision."""
    from importlib import metadata

    run = ctx.run
    try:
        version = metadata.version("cxr-edge")
    except metadata.PackageNotFoundError:
        version = "unknown"
    record = getattr(run, "record", {}) or {}
    out = {"cxr_edge.backbone": str(record.get("backbone", "")), "cxr_edge.precision": precision,
           "cxr_edge.output": "logit of PNEUMONIA; probability = sigmoid(logit); positive when probability >= "
                              "threshold",
           "cxr_edge.version": version}
    if "preprocess" in record:
        out["cxr_edge.preprocess"] = json.dumps(run.preprocess.to_dict())
    if "threshold" in record:
        out["cxr_edge.threshold"] = repr(run.threshold)
    if "split" in record:
        out.update({"cxr_edge.source_run": ctx.source_run(), "cxr_edge.run_hash": run_hash(run),
                    "cxr_edge.split_hash": record["split"]["hash"]})
    return out


# --------------------------------------------------------------------------------- PT2E INT8


def pt2e_settings(q: QuantConfig) -> dict[str, Any]:
    """The PT2E quantizer settings for ``q``, as plain values (recorded in the facts).

    Weights: INT8 symmetric, per output channel unless ``per_channel=False``. Activations: INT8
    per tensor, affine unless ``symmetric_activations``; their ranges from MinMaxObserver
    (``minmax``, the default: the global extremes over the calibration set) or HistogramObserver
    (``entropy``: the histogram search of PyTorch's quantizers). There is no percentile observer
    in PT2E: asking for one is an error, not a silent substitute.
    """
    if q.calibration not in ACTIVATION_OBSERVERS:
        raise ExportError(f"calibration {q.calibration!r} has no PT2E observer; the mobile targets take "
                          f"{' or '.join(ACTIVATION_OBSERVERS)} (--calibration)")
    if q.accuracy_aware:
        raise ExportError("accuracy-aware quantization exists only for OpenVINO; drop --accuracy-aware")
    return {"flow": "PT2E (torch.export -> prepare_pt2e -> calibrate -> convert_pt2e)",
            "weights": "int8 symmetric " + ("per-channel" if q.per_channel else "per-tensor"),
            "activations": "int8 per-tensor " + ("symmetric" if q.symmetric_activations else "affine"),
            "activation_observer": ACTIVATION_OBSERVERS[q.calibration], "per_channel": q.per_channel,
            "ignored": list(q.ignored)}


def pt2e_config(base_config, q: QuantConfig):
    """``base_config`` (a backend's ``get_symmetric_quantization_config(is_per_channel=...)``) with the
    activation observer and symmetry that ``q`` asks for."""
    import dataclasses

    import torch
    from torchao.quantization.pt2e import observer

    observer_cls = getattr(observer, ACTIVATION_OBSERVERS[q.calibration])

    def activation(spec):
        if spec is None:
            return None
        qscheme = torch.per_tensor_symmetric if q.symmetric_activations else torch.per_tensor_affine
        return dataclasses.replace(spec, qscheme=qscheme,
                                   observer_or_fake_quant_ctr=observer_cls.with_args(eps=2**-12))

    return dataclasses.replace(base_config, input_activation=activation(base_config.input_activation),
                               output_activation=activation(base_config.output_activation))


def pt2e_quantize(model, example, quantizer, calibration: np.ndarray, fold_quantize: bool = True):
    """Export ``model`` at ``example``'s shape, insert the quantizer's observers, run the training-side
    ``calibration`` images through it one at a time, and convert. Returns (module, facts).

    ``fold_quantize``: store weights as INT8 constants (ExecuTorch's XNNPACK lowering needs this) or keep
    them float with quantize/dequantize nodes (litert-torch's converter folds them itself)."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    cal = np.ascontiguousarray(calibration, np.float32)
    if cal.ndim != 4 or len(cal) == 0:
        raise ExportError(f"INT8 needs a non-empty N x C x H x W calibration set; got shape {cal.shape}")
    with quiet():
        graph = torch.export.export(model.eval(), (example,)).module()
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for i in range(len(cal)):
                prepared(torch.from_numpy(cal[i:i + 1]))
        converted = convert_pt2e(prepared, fold_quantize=fold_quantize)
    counts = quant_node_counts(converted)
    if not counts["quantize"] or not counts["weight_dequantize"]:
        from export.base import PrecisionError

        raise PrecisionError(f"PT2E inserted {counts['quantize']} quantize and {counts['weight_dequantize']} weight "
                             "dequantize nodes: the quantizer annotated nothing of this model")
    return converted, {**counts, "calibration_images": int(len(cal)), "calibration_side": "train"}


def quant_node_counts(graph_module) -> dict[str, int]:
    """Quantize / dequantize nodes of a converted PT2E graph, and how many dequantize a weight
    (a constant, per channel or per tensor) rather than an activation."""
    quantize = dequantize = weights = 0
    for node in graph_module.graph.nodes:
        target = str(node.target) if node.op == "call_function" else ""
        if "dequantize_per" in target:
            dequantize += 1
            src = node.args[0] if node.args else None
            while getattr(src, "op", None) == "call_function" and "quantize" in str(src.target):
                src = src.args[0] if src.args else None
            weights += getattr(src, "op", None) == "get_attr"
        elif "quantize_per" in target:
            quantize += 1
    return {"quantize": quantize, "dequantize": dequantize, "weight_dequantize": weights}


# --------------------------------------------------------------------------------- running


def per_image(run_one: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, where: Path) -> np.ndarray:
    """Run ``run_one`` (``1 x C x H x W`` -> logits) on each image of ``batch``; ``N`` float32 logits."""
    x = np.ascontiguousarray(batch, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected a float32 N x C x H x W batch; got shape {x.shape}")
    out = []
    for i in range(len(x)):
        y = np.asarray(run_one(x[i:i + 1]), np.float32).reshape(-1)
        if y.size != 1:
            raise ExportError(f"{where} returned {y.size} values for one image; expected one logit")
        out.append(y)
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def check_input(expected: tuple[int, ...], got: tuple[int, ...], where: Path) -> None:
    if tuple(expected[1:]) != tuple(got[1:]):
        raise ValueError(f"{where} takes images of shape {tuple(expected[1:])} (C x H x W); got {tuple(got[1:])}: "
                         "preprocess with the run's size")


# --------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep converters' prints, progress bars and warnings (hundreds of lines per model) off the user's screen;
    errors still raise."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def quiet_fd(fd: int = 2) -> Iterator[None]:
    """Silence a native library's writes to a file descriptor (stderr by default) for a block."""
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
