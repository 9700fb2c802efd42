"""ONNX: the hub every other target starts from, and a deployable format of its own (onnxruntime).

FP32 is exported once per run with the dynamo exporter (the legacy TorchScript exporter only as a
fallback, recorded), checked with ``onnx.checker`` and simplified with onnxslim. FP16 and INT8 are
made from that file: FP16 by onnxruntime's float16 converter with FP32 inputs and outputs, INT8 by
onnxruntime static quantization in QDQ format, calibrated on training-side images only. Each build
counts what it made and raises :class:`~export.base.PrecisionError` when it is not what was asked.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from export.base import ExportContext, ExportError, KeepFloat, keep_float_patterns, run_hash
from export.onnx_graph import check_fp16, check_int8, describe, toposort

OPSET = 18
INPUT, OUTPUT = "input", "logit"
MAX_BATCH = 1024
_PROTO_LIMIT = 2**31 - 2**20  # protobuf's 2 GB, less a margin: above it weights go to a side file


# ----------------------------------------------------------------------------------------- build


def build(ctx: ExportContext, precision: str, dest: Path) -> dict[str, Any]:
    """Write the ONNX artifact of ``precision`` to ``dest``; return what was built (facts)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    hub = ensure_fp32(ctx)
    if precision == "fp32":
        _copy_model(hub, dest)
        return dict(ctx.facts["onnx_fp32"])
    if precision == "fp16":
        return _build_fp16(ctx, hub, dest)
    if precision == "int8":
        return _build_int8(ctx, hub, dest)
    raise ExportError(f"precision {precision!r} is not known to the ONNX exporter; choose fp32, fp16 or int8")


def ensure_fp32(ctx: ExportContext) -> Path:
    """The run's FP32 ONNX file (the hub), exported into ``ctx.work_dir`` on first use.

    A failed export is remembered in ``ctx.facts["hub_error"]`` and raised again, not retried.
    """
    if ctx.onnx_fp32 is not None and Path(ctx.onnx_fp32).exists():
        return Path(ctx.onnx_fp32)
    if "hub_error" in ctx.facts:
        raise ExportError(f"the FP32 ONNX file could not be exported: {ctx.facts['hub_error']}")
    dest = Path(ctx.work_dir) / "hub" / "onnx-fp32.onnx"
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        ctx.facts["onnx_fp32"] = _export_fp32(ctx, dest)
    except Exception as err:
        ctx.facts["hub_error"] = f"{type(err).__name__}: {err}"
        raise
    ctx.onnx_fp32 = dest
    return dest


def _export_fp32(ctx: ExportContext, dest: Path) -> dict[str, Any]:
    import onnx

    t0 = time.perf_counter()
    raw, facts = _torch_export(ctx, dest.parent)
    before = len(raw.graph.node)
    try:
        import onnxslim

        model = onnxslim.slim(raw)
        if model is None or not model.graph.node:
            raise ExportError("onnxslim returned an empty model")
        facts["slim"] = {"ok": True, "nodes_before": before, "nodes_after": len(model.graph.node)}
    except Exception as err:  # a failed simplification leaves a correct, larger graph: keep it, say why
        model, facts["slim"] = raw, {"ok": False, "nodes_before": before, "error": f"{type(err).__name__}: {err}"}
    set_metadata(model, ctx, "fp32")
    _save(model, dest)
    try:
        onnx.checker.check_model(str(dest), full_check=True)
    except Exception as err:
        if model is raw:
            raise
        facts["slim"] = {"ok": False, "nodes_before": before, "error": f"the checker rejected the slimmed graph: {err}"}
        model = raw
        set_metadata(model, ctx, "fp32")
        _save(model, dest)
        onnx.checker.check_model(str(dest), full_check=True)
    return {**facts, **describe(model), "seconds": round(time.perf_counter() - t0, 3)}


def _torch_export(ctx: ExportContext, work: Path):
    """(ModelProto, facts) from the dynamo exporter, or from the legacy one when dynamo fails."""
    import onnx
    import torch

    c, size = ctx.run.preprocess.channels, ctx.run.preprocess.size
    x = torch.randn(2, c, size, size, generator=torch.Generator().manual_seed(0))  # batch 2: 1 would specialise
    model = ctx.model.eval()
    facts: dict[str, Any] = {"opset": OPSET, "input": INPUT, "output": OUTPUT, "dynamic_batch": [1, MAX_BATCH]}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=OPSET, dynamic_shapes=({0: batch},),
                                        input_names=[INPUT], output_names=[OUTPUT], verbose=False)
        return program.model_proto, {**facts, "exporter": "dynamo"}
    except Exception as err:
        facts["dynamo_error"] = f"{type(err).__name__}: {str(err)[:2000]}"
    legacy = work / "legacy.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(legacy), dynamo=False, opset_version=OPSET, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    except Exception as err:
        raise ExportError(f"both ONNX exporters failed for {ctx.run.record['backbone']}: dynamo: "
                          f"{facts['dynamo_error'][:500]}; legacy: {type(err).__name__}: {err}") from err
    proto = onnx.load(str(legacy))
    legacy.unlink()
    return proto, {**facts, "exporter": "torchscript (legacy fallback)"}


def _build_fp16(ctx: ExportContext, hub: Path, dest: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every value clipped to the FP16 range
        model = convert_float_to_float16(onnx.load(str(hub)), keep_io_types=True)
    toposort(model.graph)  # the converter appends its input Casts last; the checker wants producers first
    set_metadata(model, ctx, "fp16")
    _save(model, dest)
    onnx.checker.check_model(str(dest), full_check=True)
    facts = {**describe(model), "converter": "onnxruntime.transformers.float16 (keep_io_types=True)"}
    check_fp16(facts)
    return {**facts, "source": "onnx-fp32", "seconds": round(time.perf_counter() - t0, 3)}


def _build_int8(ctx: ExportContext, hub: Path, dest: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    facts: dict[str, Any] = {"source": "onnx-fp32"}
    pre = dest.parent / f".{dest.stem}-pre.onnx"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(hub), str(pre))
        source, facts["pre_process"] = pre, "ok"
    except Exception as err:  # quantization still works without it, with less fusion
        source, facts["pre_process"] = hub, f"failed, quantized the FP32 model as is: {type(err).__name__}: {err}"
    graph = onnx.load(str(source))
    named = name_nodes(graph)
    if named:  # the nodes the pre-processing made have no names, and nodes_to_exclude matches by name
        _save(graph, pre)
        source, facts["named_nodes"] = pre, named
    args = quant_args(ctx, graph)
    del graph
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")  # Entropy and Percentile print their progress
            quantize_static(str(source), str(dest), CalibrationReader(ctx.calibration), quant_format=QuantFormat.QDQ,
                            **args["kwargs"])
    finally:
        pre.unlink(missing_ok=True)
        pre.with_name(pre.name + ".data").unlink(missing_ok=True)
    model = onnx.load(str(dest))
    set_metadata(model, ctx, "int8")
    _save(model, dest)
    onnx.checker.check_model(str(dest), full_check=True)
    facts.update(describe(model), quantization=args["record"], calibration_images=int(len(ctx.calibration)))
    check_int8(facts)
    return {**facts, "seconds": round(time.perf_counter() - t0, 3)}


def name_nodes(model) -> int:
    """Give every unnamed node of ``model`` a name of its own (``<op type>_<n>``, unused elsewhere); return how many.

    onnxruntime's ``quant_pre_process`` leaves the nodes it makes (e.g. the HardSigmoid and Mul of a decomposed
    HardSwish) unnamed, and ``quantize_static`` matches ``nodes_to_exclude`` by name: excluding "" would keep
    every unnamed node in float, whatever its type, and naming one of them would not be possible."""
    taken = {n.name for n in model.graph.node if n.name}
    count = 0
    for i, node in enumerate(model.graph.node):
        if node.name:
            continue
        name = f"{node.op_type}_{i}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
        count += 1
    return count


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's quantizer logs one root-logger WARNING per 1-D weight ("Axis 1 is out-of-range",
    hundreds for DenseNet's BatchNorm scales, which stay per-tensor); keep them off the user's screen."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quant_args(ctx: ExportContext, model) -> dict[str, Any]:
    """Translate the run's :class:`~export.base.QuantConfig` into ``quantize_static`` arguments (here only)."""
    from onnxruntime.quantization import CalibrationMethod, QuantType

    q = ctx.quant
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[q.calibration]
    extra: dict[str, Any] = {"ActivationSymmetric": q.symmetric_activations, "WeightSymmetric": True,
                             "CalibStridedMinMax": 1}  # one reader batch per pass: bounded memory (see the reader)
    if q.calibration == "percentile":
        extra["CalibPercentile"] = q.percentile
    nodes = [(n.name, n.op_type) for n in model.graph.node]
    backbone = str((getattr(ctx.run, "record", None) or {}).get("backbone", ""))
    patterns, source, why = keep_float_patterns(q, backbone)
    keep = KeepFloat(patterns)
    excluded = sorted({name for name, op in nodes if keep.hits(name, op, "onnx")})
    for pat in keep.unmatched(nodes, "onnx"):
        raise ExportError(f"ignored pattern {pat!r} matches no node of the ONNX graph; node names look like "
                          f"{', '.join(name for name, _ in nodes[:5])}, …; op types: "
                          f"{', '.join(sorted({op for _, op in nodes}))} (as type:Conv)")
    activation = QuantType.QInt8 if q.symmetric_activations else QuantType.QUInt8
    kwargs = dict(per_channel=q.per_channel, calibrate_method=method, activation_type=activation,
                  weight_type=QuantType.QInt8, nodes_to_exclude=excluded or None, extra_options=extra)
    record = {"format": "QDQ", "per_channel": q.per_channel, "calibrate_method": method.name,
              "activation_type": activation.name, "weight_type": "QInt8", "nodes_to_exclude": excluded,
              "keep_float": list(patterns), "keep_float_source": source, "keep_float_why": why or None,
              "extra_options": extra}
    return {"kwargs": kwargs, "record": record}


class CalibrationReader:
    """Feeds the training-side calibration images to onnxruntime's calibrator, ``batch`` at a time.

    With ``CalibStridedMinMax=1`` onnxruntime calibrates one batch per pass and merges ranges and
    histograms, so memory holds one batch of activations, not all of them (Entropy and Percentile
    otherwise keep every activation of every image), and a short last batch is no problem.
    """

    def __init__(self, images: np.ndarray, batch: int = 16) -> None:
        self.batches = [np.ascontiguousarray(images[i:i + batch], np.float32) for i in range(0, len(images), batch)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.todo = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.todo, None)
        return None if batch is None else {INPUT: batch}

    def rewind(self) -> None:
        self.set_range(0, len(self.batches))


# ---------------------------------------------------------------------------- what was built


def set_metadata(model, ctx: ExportContext, precision: str) -> None:
    """Store what a deployer needs beside the weights: preprocessing, threshold, source run, precision."""
    from importlib import metadata

    run = ctx.run
    try:
        version = metadata.version("cxr-edge")
    except metadata.PackageNotFoundError:
        version = "unknown"
    props = {
        "cxr_edge.backbone": run.record["backbone"],
        "cxr_edge.precision": precision,
        "cxr_edge.preprocess": json.dumps(run.preprocess.to_dict()),
        "cxr_edge.threshold": repr(run.threshold),
        "cxr_edge.output": "logit of PNEUMONIA; probability = sigmoid(logit); positive when probability >= threshold",
        "cxr_edge.source_run": ctx.source_run(),
        "cxr_edge.run_hash": run_hash(run),
        "cxr_edge.split_hash": run.record["split"]["hash"],
        "cxr_edge.version": version,
    }
    kept = [p for p in model.metadata_props if not p.key.startswith("cxr_edge.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def _save(model, dest: Path) -> None:
    """One file below protobuf's 2 GB limit; weights in ``<name>.data`` beside it above."""
    import onnx

    side = dest.with_name(dest.name + ".data")
    side.unlink(missing_ok=True)
    if model.ByteSize() < _PROTO_LIMIT:
        onnx.save(model, str(dest))
    else:
        onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=side.name)


def _copy_model(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)
    side = src.with_name(src.name + ".data")
    if side.exists():  # the location stored in the graph is the side file's name: keep names equal
        if src.name != dest.name:
            raise ExportError(f"cannot copy {src} with external data to another name ({dest.name})")
        shutil.copyfile(side, dest.with_name(dest.name + ".data"))


# ------------------------------------------------------------------------------------------ load


class OnnxPredictor:
    """An ONNX artifact in an onnxruntime session: ``predict(float32 NCHW) -> logits (N,)``.

    ``settle_s``: onnxruntime's intra-op threads keep spinning for tens of milliseconds after a run returns
    (its default, which makes back-to-back calls faster). The benchmark waits this long after timing an
    onnxruntime artifact before timing the next one, which would otherwise run on a core the spinning thread
    holds: measured on 2 cores, OpenVINO ResNet-18 FP32 took 7.1 ms after itself but 11.9 ms right after an
    onnxruntime block, and 7.1 ms again after a 50 ms pause. With one intra-op thread onnxruntime runs on the
    caller's thread and has no pool to spin, so there is nothing to wait for."""

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX artifact {self.path} does not exist; export it with `cxr-edge export`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.path), options, providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()
        self.threads = threads

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(self.session.run(None, {self.input_name: x})[0], np.float32).reshape(-1)

    @property
    def settle_s(self) -> float:
        return 0.0 if self.threads == 1 else 0.05

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)


def load(path: Path, threads: int | None = None, providers: list[str] | None = None) -> OnnxPredictor:
    """Load an ONNX artifact; ``threads`` sets onnxruntime's intra-op threads, ``providers`` default to CPU."""
    return OnnxPredictor(path, threads=threads, providers=providers)
