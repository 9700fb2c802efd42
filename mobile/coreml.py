"""Core ML target: an ``.mlpackage`` (ML program) converted by coremltools, FP16 (what iOS runs on the
Neural Engine) or FP32.

Conversion: ``torch.export`` (decomposed to ATen) -> ``coremltools.convert(convert_to="mlprogram",
compute_precision=...)``, input ``input`` fixed at ``1 x C x H x W`` (float32), output ``logit``
(float32; an FP16 program casts inside). When the export path fails, a TorchScript trace is tried
and both errors are recorded.

Core ML predicts only on macOS (its runtime is part of the OS). On any other host the build ends
with a structural check instead of a parity check: the saved package loads as a spec, its input and
output have the expected names, shapes and types, and its weights are of the precision asked for
(counted from the ML program's constants). The manifest record says ``verified: false`` with
:func:`unverified_reason`, and :func:`load` raises :class:`~export.base.BackendUnavailable` with it.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from export.base import BackendUnavailable, ExportContext, ExportError, PrecisionError
from mobile import common

PRECISIONS = ("fp32", "fp16")
INPUT, OUTPUT = "input", "logit"
MIN_FP16_SHARE = 0.95  # share of float weight elements that must be FP16 in an FP16 package
DEPLOYMENT_TARGET = "iOS17"


def unverified_reason() -> str | None:
    """None where Core ML can run a package (macOS with coremltools' runtime), else why it cannot."""
    if platform.system() != "Darwin":
        return (f"Core ML predicts only on macOS (this host runs {platform.system()}); the package was converted "
                "and checked structurally (spec, input/output names and shapes, weight precision), not run")
    try:
        import coremltools.libcoremlpython  # noqa: F401
    except ImportError as err:
        return f"coremltools' Core ML runtime bindings do not load on this Mac: {err}"
    return None


def build(ctx: ExportContext, precision: str, dest: Path) -> dict[str, Any]:
    """Write the ``.mlpackage`` folder of ``precision`` to ``dest``; return what was built (facts)."""
    if precision not in PRECISIONS:
        raise ExportError(f"Core ML here has {' and '.join(PRECISIONS)} paths, not {precision!r} (INT8 weight "
                          "compression would need coremltools.optimize; not built)")
    common.require("coreml")
    import coremltools as ct

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    example = common.example_input(ctx)
    shape = tuple(int(d) for d in example.shape)
    kwargs = dict(inputs=[ct.TensorType(name=INPUT, shape=shape, dtype=np.float32)],
                  outputs=[ct.TensorType(name=OUTPUT)], convert_to="mlprogram",
                  compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                  minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET))
    facts: dict[str, Any] = {"input_shape": list(shape), "deployment_target": DEPLOYMENT_TARGET,
                             "coremltools": ct.__version__}
    mlmodel, facts["source"] = _convert(ctx.model.eval(), example, kwargs, facts)
    mlmodel.short_description = "Chest X-ray pneumonia classifier (cxr-edge): one logit per image"
    for key, value in common.deploy_metadata(ctx, precision).items():
        mlmodel.user_defined_metadata[key] = value
    with common.quiet():
        mlmodel.save(str(dest))
    facts.update(structure(dest, shape))
    check_precision(facts, precision, dest)
    return {**facts, "seconds": round(time.perf_counter() - t0, 3)}


def _convert(model, example, kwargs: dict[str, Any], facts: dict[str, Any]):
    import coremltools as ct
    import torch

    try:
        with common.quiet(), torch.no_grad():
            program = torch.export.export(model, (example,)).run_decompositions({})
            return ct.convert(program, **kwargs), "torch.export"
    except Exception as err:
        facts["export_error"] = f"{type(err).__name__}: {str(err)[:1500]}"
    try:
        with common.quiet(), torch.no_grad():
            traced = torch.jit.trace(model, example)
            return ct.convert(traced, **kwargs), "torch.jit.trace (torch.export failed)"
    except Exception as err:
        raise ExportError(f"coremltools could not convert the model: from torch.export: {facts['export_error']}; "
                          f"from a TorchScript trace: {type(err).__name__}: {str(err)[:1500]}") from err


def structure(path: Path, shape: tuple[int, ...]) -> dict[str, Any]:
    """Read the saved package back without Core ML's runtime: spec, input/output, operations and the
    element types of its constants (weights)."""
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    with common.quiet():
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    if not spec.HasField("mlProgram"):
        raise ExportError(f"{path} is not an ML program (spec type {spec.WhichOneof('Type')})")
    inputs = [(i.name, [int(d) for d in i.type.multiArrayType.shape]) for i in spec.description.input]
    outputs = [o.name for o in spec.description.output]
    if inputs != [(INPUT, list(shape))] or outputs != [OUTPUT]:
        raise ExportError(f"{path} has inputs {inputs} and outputs {outputs}; expected [({INPUT!r}, {list(shape)})] "
                          f"and [{OUTPUT!r}]")
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    ops: Counter[str] = Counter()
    elements: Counter[str] = Counter()
    for op in block.operations:
        ops[op.type] += 1
        if op.type != "const" or "val" not in op.attributes:
            continue
        tensor = op.attributes["val"].type.tensorType
        dims = [int(d.constant.size) for d in tensor.dimensions]
        n = int(np.prod(dims)) if dims else 1
        if n > 1:
            elements[MIL_pb2.DataType.Name(tensor.dataType).lower()] += n
    return {"spec_version": int(spec.specificationVersion), "opset": function.opset,
            "input": {"name": INPUT, "shape": list(shape), "dtype": "float32"}, "output": OUTPUT,
            "ops": dict(sorted(ops.items())), "constant_elements": dict(sorted(elements.items())),
            "metadata": dict(spec.description.metadata.userDefined)}


def check_precision(facts: dict[str, Any], precision: str, where: Path) -> None:
    e = facts["constant_elements"]
    fp16, fp32 = e.get("float16", 0), e.get("float32", 0)
    if fp16 + fp32 == 0:
        raise PrecisionError(f"{where} has no float weights; the conversion lost the model")
    share = fp16 / (fp16 + fp32)
    facts["fp16_weight_share"] = round(share, 6)
    if precision == "fp16" and share < MIN_FP16_SHARE:
        raise PrecisionError(f"{where} was asked to be FP16 but only {share:.1%} of its weight elements are FP16")
    if precision == "fp32" and fp16:
        raise PrecisionError(f"{where} was asked to be FP32 but holds {fp16} FP16 weight elements")


class CoreMLPredictor:
    """An ``.mlpackage`` in Core ML (macOS only): ``predict(float32 NCHW) -> logits (N,)``, image by image.

    ``threads`` has no Core ML counterpart (the OS schedules its compute units); it is accepted so
    that the benchmark can ask every predictor the same way, and ``compute_units`` chooses CPU_ONLY
    (the default, comparable with the other CPU rows), CPU_AND_GPU, CPU_AND_NE or ALL.
    """

    def __init__(self, path: Path, threads: int | None = None, compute_units: str = "CPU_ONLY") -> None:
        common.require("coreml")
        reason = unverified_reason()
        if reason:
            raise BackendUnavailable(reason)
        import coremltools as ct

        self.path, self.threads = Path(path), threads
        if not self.path.is_dir():
            raise ExportError(f"Core ML package {str(self.path)!r} does not exist; build it with `cxr-edge export`")
        self.model = ct.models.MLModel(str(self.path), compute_units=getattr(ct.ComputeUnit, compute_units))
        spec = self.model.get_spec()
        self.input_shape = tuple(int(d) for d in spec.description.input[0].type.multiArrayType.shape)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim == 4:
            common.check_input(self.input_shape, x.shape, self.path)
        return common.per_image(lambda one: self.model.predict({INPUT: one})[OUTPUT], x, self.path)


def load(path: Path, threads: int | None = None, compute_units: str = "CPU_ONLY") -> CoreMLPredictor:
    """Load an ``.mlpackage`` (macOS only; elsewhere :class:`BackendUnavailable` with the reason)."""
    return CoreMLPredictor(path, threads=threads, compute_units=compute_units)
