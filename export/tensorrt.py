"""TensorRT engine target, built from the ONNX hub with TensorRT 10's Python API.

Not run on the development machines (no TensorRT, no GPU): the pure-Python decisions below (the
spec, flags, profile shapes, the Q/DQ source and its checks, the inspector parser) are unit-tested;
``build``/``load`` follow TensorRT 10's documented API and are untested. docs/tensorrt.md says why
each precision is built the way it is: fp32 weakly typed with TF32 cleared; fp16 with
``BuilderFlag.FP16``; int8 by explicit quantization, a ``STRONGLY_TYPED`` network parsed from the
symmetric QDQ ONNX of ``export.onnx``, with no precision flag and no calibrator.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.base import FORMATS, PRECISIONS, BackendUnavailable, ExportContext, ExportError, PrecisionError

INSTALL_HINT = ("see docs/tensorrt.md (pip install 'cxr-edge[tensorrt]' on a CUDA machine that can reach "
                "NVIDIA's wheels)")


@dataclass(frozen=True)
class EngineSpec:
    """What to build: precision, the dynamic-batch optimization profile, workspace and timing cache."""

    precision: str
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64
    workspace_gb: float = 4.0
    timing_cache: Path | None = None  # None: $CXR_EDGE_CACHE/tensorrt/<TensorRT version>-<GPU>.timing-cache

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not known; choose from {', '.join(PRECISIONS)}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"the batch profile must satisfy 1 <= min <= opt <= max; got min={self.min_batch}, "
                             f"opt={self.opt_batch}, max={self.max_batch} (default 1, 8, 64)")
        if not self.workspace_gb > 0:
            raise ValueError(f"workspace_gb={self.workspace_gb} must be > 0 (default 4)")


def network_flags(spec: EngineSpec) -> list[str]:
    """``NetworkDefinitionCreationFlag`` names: strongly typed for the Q/DQ (INT8) network only."""
    return ["STRONGLY_TYPED"] if spec.precision == "int8" else []


def builder_flags(spec: EngineSpec, trt_major: int = 10) -> list[str]:
    """``BuilderFlag`` names to set. A strongly typed network takes its precisions from the graph."""
    if spec.precision == "fp16":
        if trt_major >= 11:
            raise BackendUnavailable(
                f"TensorRT {trt_major} removed BuilderFlag.FP16 (strong typing only); the FP16 engine here needs "
                "TensorRT 10: pip install 'tensorrt>=10,<11'")
        return ["FP16"]
    return []


def cleared_flags(spec: EngineSpec) -> list[str]:
    """``BuilderFlag`` names to clear: TF32 for FP32, so that FP32 convolutions and matmuls stay FP32."""
    return ["TF32"] if spec.precision == "fp32" else []


def profile_shapes(spec: EngineSpec, chw: tuple[int, int, int]) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes of the optimization profile."""
    c, h, w = (int(d) for d in chw)
    return tuple((b, c, h, w) for b in (spec.min_batch, spec.opt_batch, spec.max_batch))


def onnx_input(onnx_path: Path) -> tuple[str, list[int | None]]:
    """Name and dims (None where symbolic) of the ONNX model's one graph input."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ExportError(f"{onnx_path} has {len(inputs)} inputs; expected one image tensor")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def check_input(dims: list[int | None], spec: EngineSpec) -> tuple[int, int, int]:
    """The static C, H, W of an N x C x H x W input whose batch the profile can cover."""
    if len(dims) != 4 or any(d is None or d <= 0 for d in dims[1:]):
        raise ExportError(f"TensorRT needs an N x C x H x W input with fixed C, H, W; the ONNX input is {dims}")
    if dims[0] is not None and not (spec.min_batch == spec.opt_batch == spec.max_batch == dims[0]):
        raise ExportError(f"the ONNX input has a fixed batch of {dims[0]}, so the profile "
                          f"{spec.min_batch}/{spec.opt_batch}/{spec.max_batch} cannot apply; export it with a "
                          "dynamic batch (export.onnx does) or set min = opt = max = that batch")
    return dims[1], dims[2], dims[3]


def check_qdq(onnx_path: Path, precision: str = "int8") -> dict[str, Any]:
    """Count Q/DQ nodes and check they are what TensorRT's explicit quantization accepts.

    INT8 needs Q/DQ pairs with signed INT8, all-zero zero points (TensorRT quantizes symmetrically);
    FP32/FP16 sources must have none (they would make part of the engine INT8).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [inits[n.input[2]] for n in nodes if len(n.input) > 2 and n.input[2] in inits]
    types = sorted({onnx.helper.tensor_dtype_to_np_dtype(z.data_type).name for z in zero_points})
    inline = [z for z in zero_points if z.data_location != onnx.TensorProto.EXTERNAL]
    nonzero = sum(bool(np.any(numpy_helper.to_array(z))) for z in inline)
    facts = {"quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in nodes),
             "dequantize_nodes": sum(n.op_type == "DequantizeLinear" for n in nodes),
             "zero_point_types": types, "nonzero_zero_points": int(nonzero)}
    if precision != "int8":
        if nodes:
            raise PrecisionError(f"{onnx_path} has {len(nodes)} Q/DQ nodes; a {precision.upper()} engine must be "
                                 "built from the unquantized FP32 ONNX file")
        return facts
    if not facts["quantize_nodes"] or not facts["dequantize_nodes"]:
        raise PrecisionError(f"an INT8 engine was asked for but {onnx_path} has {facts['quantize_nodes']} "
                             f"QuantizeLinear and {facts['dequantize_nodes']} DequantizeLinear nodes; build it from "
                             "the QDQ ONNX of export.onnx.build(ctx, 'int8', ...)")
    if set(types) - {"int8"} or nonzero:
        raise PrecisionError(f"{onnx_path} quantizes with zero-point types {types} and {nonzero} non-zero zero "
                             "points; TensorRT accepts only symmetric INT8 (QuantConfig.symmetric_activations=True; "
                             "INT32 biases folded with fold_bias_dequantize)")
    return facts


def source_onnx(ctx: ExportContext, precision: str, work: Path) -> tuple[Path, dict[str, Any]]:
    """The ONNX file an engine of ``precision`` is built from: the FP32 hub, or for INT8 the QDQ ONNX
    made from it with symmetric activations (a TensorRT requirement, recorded in the facts)."""
    from export import onnx as onnx_target

    hub = onnx_target.ensure_fp32(ctx)
    if precision != "int8":
        return hub, {"onnx": "fp32 hub"}
    quant = dataclasses.replace(ctx.quant, symmetric_activations=True)
    dest = Path(work) / "tensorrt-qdq" / "onnx-int8.onnx"
    dest.parent.mkdir(parents=True, exist_ok=True)
    facts = onnx_target.build(dataclasses.replace(ctx, quant=quant), "int8", dest)
    changed = {} if ctx.quant.symmetric_activations else {"symmetric_activations": [False, True]}
    return dest, {"onnx": "QDQ int8 (export.onnx)", "qdq_build": facts, "quant": quant.to_dict(),
                  "quant_changed": changed, "int32_bias_folded": fold_bias_dequantize(dest)}


def fold_bias_dequantize(onnx_path: Path) -> int:
    """Replace each DequantizeLinear of an INT32 constant (onnxruntime's quantized Conv/Gemm biases)
    by the float constant it computes, in place; return how many. TensorRT's parser accepts only
    INT8/FP8/INT4 inputs to DequantizeLinear (onnx/onnx-tensorrt#850) and adds biases in float anyway."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(onnx_path))
    graph, inits = model.graph, {i.name: i for i in model.graph.initializer}
    folded = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
              and inits[n.input[0]].data_type == TensorProto.INT32]
    for node in folded:
        q, scale = (numpy_helper.to_array(inits[x]).astype(np.float64) for x in node.input[:2])
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else 0
        graph.initializer.append(numpy_helper.from_array(((q - zp) * scale).astype(np.float32), node.output[0]))
        graph.node.remove(node)
    used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    if folded:
        onnx.save(model, str(onnx_path))
    return len(folded)


def timing_cache_path(spec: EngineSpec, trt_version: str, gpu_name: str, capability: str) -> Path:
    """One cache per TensorRT version and GPU model (the only ones it is valid for), reused across builds."""
    if spec.timing_cache is not None:
        return Path(spec.timing_cache)
    from core.synthetic import default_cache_dir

    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{trt_version}-{gpu_name}-sm{capability}").strip("-")
    return default_cache_dir() / "tensorrt" / f"{slug}.timing-cache"


_TYPES = (("int8", ("int8",)), ("fp16", ("half", "fp16")), ("fp32", ("float", "fp32")))


def engine_precisions(info_json: str) -> dict[str, int]:
    """Layers of an engine by the lowest data type among their inputs and outputs, from the engine
    inspector's JSON (TensorRT 10: ``"Format/Datatype"`` strings; 11: ``"DataType"`` fields)."""
    counts = {"int8": 0, "fp16": 0, "fp32": 0, "layers": 0, "unknown": 0}
    for layer in json.loads(info_json).get("Layers", []):
        counts["layers"] += 1
        tensors = layer.get("Outputs", []) + layer.get("Inputs", []) if isinstance(layer, dict) else []
        text = " ".join(f"{t.get('DataType', '')} {t.get('Format/Datatype', '')}" for t in tensors
                        if isinstance(t, dict)).lower()
        kind = next((k for k, words in _TYPES if any(re.search(rf"\b{w}\b", text) for w in words)), None)
        counts[kind or "unknown"] += 1  # names-only verbosity lists layers as plain strings: unknown
    return counts


def check_engine_precision(counts: dict[str, int], precision: str) -> str:
    """Raise PrecisionError when the engine's layers contradict ``precision``; say what was checked."""
    if counts["layers"] == 0 or counts["layers"] == counts["unknown"]:
        return "not verified: the engine inspector reported no layer data types"
    if precision == "int8" and counts["int8"] == 0:
        raise PrecisionError(f"the INT8 engine has no INT8 layers ({counts}); TensorRT ignored the Q/DQ nodes")
    if precision == "fp16" and counts["fp16"] == 0:
        raise PrecisionError(f"the FP16 engine has no FP16 layers ({counts}); TensorRT chose FP32 everywhere")
    if precision == "fp32" and (counts["fp16"] or counts["int8"]):
        raise PrecisionError(f"the FP32 engine has reduced-precision layers ({counts})")
    return "verified from the engine inspector's layer data types"


# ----------------------------------------------------------------------------- TensorRT itself

def _tensorrt():
    """The tensorrt module, or BackendUnavailable (not ImportError) saying what is missing."""
    reason = FORMATS["tensorrt"].missing()
    if reason:
        raise BackendUnavailable(f"{reason}; {INSTALL_HINT}")
    try:
        import tensorrt as trt
    except (ImportError, OSError) as err:  # the wheel is there but its CUDA libraries are not
        raise BackendUnavailable(f"tensorrt is installed but does not load ({err}); {INSTALL_HINT}") from err
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is too old; this path is written for TensorRT 10")
    return trt


def gpu_record(device: int = 0) -> dict[str, str]:
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return {"gpu": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}",
            "cuda": str(torch.version.cuda)}


def _bits(enum, names: list[str]) -> int:
    return sum(1 << int(getattr(enum, n)) for n in names)


def build(ctx: ExportContext, precision: str, dest: Path, spec: EngineSpec | None = None) -> dict[str, Any]:
    """Build a serialized engine at ``dest`` (.engine) and return the record of what was built."""
    spec = spec or EngineSpec(precision)
    if spec.precision != precision:
        raise ValueError(f"spec is for {spec.precision}, but {precision} was asked for")
    trt = _tensorrt()
    major = int(trt.__version__.split(".")[0])
    flags = builder_flags(spec, major)
    dest = Path(dest)
    onnx_path, facts = source_onnx(ctx, precision, Path(ctx.work_dir))
    facts["qdq"] = check_qdq(onnx_path, precision)
    name, dims = onnx_input(onnx_path)
    shapes = profile_shapes(spec, check_input(dims, spec))
    gpu = gpu_record()
    cache_path = timing_cache_path(spec, trt.__version__, gpu["gpu"], gpu["compute_capability"])

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_bits(trt.NetworkDefinitionCreationFlag, network_flags(spec)))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_gb * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # lets the inspector report layer types
    for f in flags:
        config.set_flag(getattr(trt.BuilderFlag, f))
    cleared = [f for f in cleared_flags(spec) if hasattr(trt.BuilderFlag, f)]
    for f in cleared:
        config.clear_flag(getattr(trt.BuilderFlag, f))
    profile = builder.create_optimization_profile()
    profile.set_shape(name, *shapes)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT could not build the {precision} engine from {onnx_path} (see its log above)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(memoryview(plan))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))

    layers = engine_precisions(_inspect(trt, logger, plan, name, shapes[1]))
    return {**facts, "tensorrt_version": trt.__version__, **gpu, "build_seconds": round(time.perf_counter() - t0, 3),
            "network_flags": network_flags(spec), "builder_flags": flags, "cleared_flags": cleared,
            "input": name, "profile": {"min": shapes[0], "opt": shapes[1], "max": shapes[2]},
            "workspace_gb": spec.workspace_gb, "timing_cache": str(cache_path), "layers": layers,
            "precision_check": check_engine_precision(layers, precision),
            "note": "an engine runs only on this GPU model with this TensorRT version"}


def _inspect(trt, logger, plan, name: str, shape: tuple[int, ...]) -> str:
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    context.set_input_shape(name, shape)  # with shapes set, the inspector reports formats and types
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


class TensorRtPredictor:
    """A deserialized engine on one GPU; ``predict`` copies a batch in, runs, copies logits out.

    Batches larger than the profile's maximum are run in chunks of that size.
    """

    def __init__(self, path: Path, device: int = 0) -> None:
        trt = _tensorrt()
        import torch

        self.torch, self.path, self.device = torch, Path(path), torch.device("cuda", device)
        if not self.path.is_file():
            raise ExportError(f"TensorRT engine {str(self.path)!r} does not exist; build it with `cxr-edge export`")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ExportError(
                f"TensorRT {trt.__version__} could not load {self.path} on {gpu_record(device)['gpu']}: an engine "
                "runs only on the GPU model and TensorRT version it was built with (see the manifest); rebuild it "
                "here with `cxr-edge export --formats tensorrt`")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise ExportError(f"{self.path} has inputs {ins} and outputs {outs}; expected one of each")
        self.input, self.output = ins[0], outs[0]
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input, 0)[2][0])
        self.in_dtype = _torch_dtype(trt, torch, self.engine.get_tensor_dtype(self.input))
        self.out_dtype = _torch_dtype(trt, torch, self.engine.get_tensor_dtype(self.output))
        self.context = self.engine.create_execution_context()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"expected a float32 N x C x H x W batch; got shape {x.shape}")
        return np.concatenate([self._run(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)])

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.cuda.device(self.device):
            xt = torch.from_numpy(x).to(self.device, dtype=self.in_dtype)
            self.context.set_input_shape(self.input, tuple(xt.shape))
            out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.out_dtype,
                              device=self.device)
            self.context.set_tensor_address(self.input, xt.data_ptr())
            self.context.set_tensor_address(self.output, out.data_ptr())
            stream = torch.cuda.current_stream(self.device)  # the stream the input copy was queued on
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise ExportError(f"TensorRT failed to run {self.path} on a batch of {len(x)}")
            stream.synchronize()
        return out.float().reshape(-1).cpu().numpy()


def _torch_dtype(trt, torch, dtype):
    if dtype not in (table := {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}):
        raise ExportError(f"engine I/O type {dtype} is not supported here; expected FP32 input and output")
    return table[dtype]


def load(path: Path, device: int = 0) -> TensorRtPredictor:
    return TensorRtPredictor(path, device=device)
