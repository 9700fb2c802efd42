"""OpenVINO IR target: FP32, FP16 (compressed weights) and INT8 (NNCF post-training quantization,
optionally accuracy-aware), converted from the ONNX hub file when there is one, else from PyTorch.

Every build reads its saved IR back and counts what is in it (Constants by element type,
FakeQuantize nodes, which Convolution/MatMul weights are low precision); an IR whose precision is
not the one asked for raises :class:`~export.base.PrecisionError`.

NNCF arguments are derived from :class:`~export.base.QuantConfig` here and nowhere else:
``symmetric_activations`` picks the preset (False: MIXED, True: PERFORMANCE), ``per_channel=False``
becomes per-tensor weights, ``ignored`` becomes an ``nncf.IgnoredScope`` (each entry a glob over
OpenVINO node names, as for the ONNX target, or ``type:GroupConvolution`` for an operation type:
the way to keep MobileNet/EfficientNet depthwise convolutions in float). ``calibration`` picks NNCF's
activation range estimator: ``minmax`` -> MINMAX (global min/max over the calibration set, as the
ONNX target), ``percentile`` -> MEAN_QUANTILE, ``entropy`` -> HISTOGRAM.

Measured on the synthetic from-scratch runs: NNCF's own default (MEAN_MINMAX, the mean of per-image
extremes) clips activations that these models use, and MobileNet-V2 INT8 moved a validation
probability by 0.27 (MINMAX: 0.04, the ONNX target: 0.04). SmoothQuant, which NNCF applies to
transformers by default, cost ViT-B/16 0.09 val ROC-AUC and 22% of its decisions; without it the
largest probability change was 0.008. So SmoothQuant is off (``smooth_quant: false`` in the facts).
"""

from __future__ import annotations

import fnmatch
import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from export.base import (
    FORMATS,
    PRECISIONS,
    BackendUnavailable,
    ExportContext,
    ExportError,
    KeepFloat,
    PrecisionError,
    QuantConfig,
    keep_float_patterns,
)

# Operations whose second input is a weight tensor; what "a layer in INT8" means for this report.
WEIGHTED_OPS = frozenset({"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"})
LOW_PRECISION = frozenset({"i8", "u8", "i4", "u4", "nf4", "f8e4m3", "f8e5m2"})
_INDEX_TYPES = frozenset({"i32", "i64"})
# Nodes walked through from a weighted op towards its weight constant (decompression subgraphs).
_WEIGHT_PATH = frozenset({"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze",
                          "FakeQuantize", "FakeConvert"})


def _openvino():
    if importlib.util.find_spec("openvino") is None:
        raise BackendUnavailable("OpenVINO is not installed: pip install 'cxr-edge[openvino]'")
    import openvino

    return openvino


def build(ctx: ExportContext, precision: str, dest: Path) -> dict[str, Any]:
    """Write ``dest`` (.xml) and its .bin; return the facts of what was built."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not known; choose from {', '.join(PRECISIONS)}")
    dest = Path(dest)
    if dest.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is written as .xml (+ .bin); got {str(dest)!r}")
    reason = FORMATS["openvino"].missing()
    if reason:
        raise BackendUnavailable(reason)
    ov = _openvino()
    model, source = _convert(ctx, ov)
    facts: dict[str, Any] = {"source": source, "openvino_version": ov.get_version(),
                             "input_shape": str(model.inputs[0].partial_shape)}
    if precision == "int8":
        # Quantize at a static batch of 1 (the calibration items' shape): OpenVINO 2026.4's CPU plugin
        # runs INT8 depthwise convolutions of a dynamic-batch model wrongly at batch 1 (see
        # OpenVinoPredictor), which would mislead the accuracy-aware validation.
        chw = list(model.inputs[0].partial_shape)[1:]
        model.reshape({model.inputs[0]: ov.PartialShape([1, *chw])})
        model, quant_facts = _quantize(ctx, model)
        model.reshape({model.inputs[0]: ov.PartialShape([-1, *chw])})
        facts.update(quant_facts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    facts["compress_to_fp16"] = precision == "fp16"
    ov.save_model(model, str(dest), compress_to_fp16=precision == "fp16")
    counts = ir_counts(ov.Core().read_model(str(dest)))
    facts["counts"] = counts
    aa = facts.get("accuracy_aware")
    if aa is not None:
        aa["reverted_ops"] = _reverted(counts["float_weighted_ops"], facts["keep_float"])
    try:
        check_precision(counts, precision, dest)
    except PrecisionError as err:
        if aa is None:
            raise
        raise PrecisionError(
            f"{err}. Accuracy-aware quantization reverted {len(aa['reverted_ops'])} layers to float to keep the "
            f"val ROC-AUC drop within {aa['max_auc_drop']} (fp32 {aa['val_auc_fp32']:.4f}, result "
            f"{aa['val_auc_int8']:.4f}); allow a larger --max-auc-drop or keep only some layers in float") from err
    return facts


def _convert(ctx: ExportContext, ov) -> tuple[Any, str]:
    """ONNX hub file when present (the same graph every target starts from), else the torch model."""
    chw = tuple(int(d) for d in ctx.val_inputs.shape[1:])
    if ctx.onnx_fp32 is not None:
        model, source = ov.convert_model(str(ctx.onnx_fp32)), "onnx"
    else:
        import torch

        model, source = ov.convert_model(ctx.model.eval(), example_input=torch.zeros(1, *chw)), "torch"
    if len(model.inputs) != 1:
        raise ExportError(f"expected a model with one input image tensor; {source} model has {len(model.inputs)}")
    model.reshape({model.inputs[0]: ov.PartialShape([-1, *chw])})  # dynamic batch, fixed image size
    # A model converted from torch has unnamed tensors; NNCF's accuracy control looks outputs up by name.
    for port, name in ((model.inputs[0], "input"), (model.outputs[0], "logits")):
        if not port.get_names():
            port.get_tensor().set_names({name})
    return model, source


# --- INT8 ----------------------------------------------------------------------------------------

# QuantConfig.calibration -> nncf.quantization.range_estimator.RangeEstimatorParametersSet member.
RANGE_ESTIMATORS = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}


def ignored_patterns(quant: QuantConfig, backbone: str) -> tuple[str, ...]:
    """The user's ignored patterns, else the backbone's registry default (``Backbone.keep_float``)."""
    return keep_float_patterns(quant, backbone)[0]


def nncf_arguments(quant: QuantConfig, backbone: str, n_calibration: int) -> dict[str, Any]:
    """The NNCF arguments for this config, as plain values (recorded in the facts)."""
    ignored, source, _ = keep_float_patterns(quant, backbone)
    keep = KeepFloat(ignored)
    return {
        "preset": "PERFORMANCE" if quant.symmetric_activations else "MIXED",
        "subset_size": int(n_calibration),
        "model_type": "TRANSFORMER" if backbone.startswith("vit") else None,
        "per_channel_weights": quant.per_channel,
        # The same glob syntax as the ONNX target's nodes_to_exclude, as the regular expressions NNCF takes.
        "ignored_scope": {"patterns": [fnmatch.translate(g) for g in keep.globs], "types": list(keep.types("openvino"))}
        if ignored else None,
        "ignored_source": source,
        "activations_range_estimator": RANGE_ESTIMATORS[quant.calibration],
        "smooth_quant": False,
    }


def _nncf_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        QuantizationParameters,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    kwargs: dict[str, Any] = {"preset": getattr(nncf.QuantizationPreset, args["preset"]),
                              "subset_size": args["subset_size"]}
    if args["model_type"]:
        kwargs["model_type"] = getattr(nncf.ModelType, args["model_type"])
    if args["ignored_scope"]:
        kwargs["ignored_scope"] = nncf.IgnoredScope(**args["ignored_scope"])
    advanced: dict[str, Any] = {
        "activations_range_estimator_params": getattr(RangeEstimatorParametersSet, args["activations_range_estimator"]),
    }
    if not args["smooth_quant"]:
        advanced["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)  # -1: off
    if not args["per_channel_weights"]:
        advanced["weights_quantization_params"] = QuantizationParameters(per_channel=False)
    kwargs["advanced_parameters"] = AdvancedQuantizationParameters(**advanced)
    return kwargs


def _quantize(ctx: ExportContext, model) -> tuple[Any, dict[str, Any]]:
    import nncf

    cal = np.ascontiguousarray(ctx.calibration, np.float32)
    if cal.ndim != 4 or len(cal) == 0:
        raise ExportError(f"calibration set must be a non-empty N x C x H x W array; got shape {cal.shape}")
    backbone = str(ctx.run.record.get("backbone", "")) if ctx.run is not None else ""
    args = nncf_arguments(ctx.quant, backbone, len(cal))
    kwargs = _nncf_kwargs(args)
    # One image per item: NNCF's subset_size counts items, and per-image statistics do not depend
    # on how the set was batched.
    calibration = nncf.Dataset([cal[i:i + 1] for i in range(len(cal))])
    facts: dict[str, Any] = {"nncf_version": nncf.__version__, "nncf_args": args,
                             "calibration_images": len(cal), "calibration_side": "train",
                             "keep_float": list(ignored_patterns(ctx.quant, backbone)),
                             "keep_float_why": keep_float_patterns(ctx.quant, backbone)[2]}
    try:
        if not ctx.quant.accuracy_aware:
            return nncf.quantize(model, calibration, **kwargs), facts
        quantized, aa = _quantize_accuracy_aware(ctx, model, calibration, kwargs)
    except nncf.ValidationError as err:
        names = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in WEIGHTED_OPS][:5]
        raise ExportError(f"NNCF rejected the quantization settings: {' '.join(str(err).split())} Ignored globs "
                          f"match OpenVINO node names, e.g. {', '.join(names)}; or give an op type as "
                          "type:GroupConvolution") from err
    facts["accuracy_aware"] = aa
    return quantized, facts


def _quantize_accuracy_aware(ctx: ExportContext, model, calibration, kwargs: dict[str, Any]):
    """``nncf.quantize_with_accuracy_control`` with validation ROC-AUC as the metric.

    ROC-AUC is not a mean over images, so the validation function returns each image's output as
    well: NNCF then ranks quantizers by the change of outputs (its 'logits mode') and uses the AUC
    only to decide when the drop is within ``max_auc_drop``.
    """
    import nncf
    from sklearn.metrics import roc_auc_score

    x, y = np.ascontiguousarray(ctx.val_inputs, np.float32), np.asarray(ctx.val_labels).astype(int)
    if len(np.unique(y)) != 2:
        raise ExportError("accuracy-aware quantization needs validation images of both classes for ROC-AUC; "
                          f"got labels {sorted(set(y.tolist()))}")
    validation = nncf.Dataset([(x[i:i + 1], int(y[i])) for i in range(len(x))], lambda item: item[0])

    def validate(compiled_model, items) -> tuple[float | None, list[list[np.ndarray]]]:
        outputs, labels = [], []
        for image, label in items:
            outputs.append([np.array(compiled_model(image)[0])])
            labels.append(label)
        if len(set(labels)) < 2:  # NNCF probes the function with a single item: no AUC defined
            return None, outputs
        return float(roc_auc_score(labels, [float(o[0].reshape(-1)[0]) for o in outputs])), outputs

    kwargs = dict(kwargs)  # the same settings under the name this entry point gives them
    kwargs["advanced_quantization_parameters"] = kwargs.pop("advanced_parameters", None)
    ov = _openvino()
    auc_fp32, _ = validate(ov.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), validation.get_data())
    quantized = nncf.quantize_with_accuracy_control(
        model, calibration, validation, validate, max_drop=ctx.quant.max_auc_drop,
        drop_type=nncf.DropType.ABSOLUTE, **kwargs)
    auc_int8, _ = validate(ov.compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}),
                           validation.get_data())
    return quantized, {"max_auc_drop": ctx.quant.max_auc_drop, "drop_type": "ABSOLUTE", "metric": "val ROC-AUC",
                       "val_images": len(x), "val_auc_fp32": auc_fp32, "val_auc_int8": auc_int8,
                       "auc_drop": auc_fp32 - auc_int8, "within_budget": auc_fp32 - auc_int8 <= ctx.quant.max_auc_drop}


def _reverted(float_ops: list[dict[str, str]], ignored: list[str]) -> list[dict[str, str]]:
    """Weighted ops left in float that the ignored scope does not explain: NNCF's reverted layers
    (plain NNCF quantization leaves no Convolution/MatMul weight in float)."""
    keep = KeepFloat(tuple(ignored))
    return [op for op in float_ops if not keep.hits(op["name"], op["type"], "openvino")]


# --- what was built --------------------------------------------------------------------------------

def _etype(node) -> str:
    return node.get_output_element_type(0).get_type_name()


def _weight_types(op) -> set[str] | None:
    """Element types of the constants feeding ``op``'s weight input, or None when that input is an
    activation (e.g. the two operands of an attention MatMul)."""
    types: set[str] = set()
    stack, seen = [op.input_value(1).get_node()], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        kind = node.get_type_name()
        if kind == "Constant":
            if _etype(node) not in _INDEX_TYPES:
                types.add(_etype(node))
        elif kind in _WEIGHT_PATH:
            inputs = node.inputs()[:1] if kind in ("FakeQuantize", "FakeConvert", "Reshape") else node.inputs()
            stack += [i.get_source_output().get_node() for i in inputs]
        else:
            return None
    return types or None


def ir_counts(model) -> dict[str, Any]:
    """Constants by element type, quantize nodes, and weighted ops by weight precision."""
    ops = list(model.get_ops())
    constants = Counter(_etype(op) for op in ops if op.get_type_name() == "Constant")
    weights: Counter[str] = Counter()
    float_ops: list[dict[str, str]] = []
    for op in ops:
        if op.get_type_name() not in WEIGHTED_OPS:
            continue
        types = _weight_types(op)
        if types is None:
            continue
        kind = "int8" if types & LOW_PRECISION else "fp16" if "f16" in types else "fp32"
        weights[kind] += 1
        if kind != "int8":
            float_ops.append({"name": op.get_friendly_name(), "type": op.get_type_name()})
    return {
        "constants": dict(sorted(constants.items())),
        "fake_quantize": sum(op.get_type_name() == "FakeQuantize" for op in ops),
        "fake_convert": sum(op.get_type_name() == "FakeConvert" for op in ops),
        "weighted_ops": dict(sorted(weights.items())),
        "float_weighted_ops": float_ops,
    }


def check_precision(counts: dict[str, Any], precision: str, where: Path | str = "the IR") -> None:
    """Raise PrecisionError when the counted IR is not of ``precision``."""
    consts, weighted = counts["constants"], counts["weighted_ops"]
    low = sum(n for t, n in consts.items() if t in LOW_PRECISION)
    quantizers = counts["fake_quantize"] + counts["fake_convert"]
    if precision == "int8":
        if not counts["fake_quantize"] or not low or not weighted.get("int8"):
            raise PrecisionError(
                f"{where} was asked to be INT8 but has {counts['fake_quantize']} FakeQuantize nodes, {low} "
                f"8-bit constants and {weighted.get('int8', 0)} weighted ops with INT8 weights; NNCF quantized "
                "nothing (is the ignored scope covering every layer?)")
    elif quantizers or low:
        raise PrecisionError(f"{where} was asked to be {precision.upper()} but has {quantizers} quantize nodes "
                             f"and {low} low-precision constants")
    elif precision == "fp16" and (not consts.get("f16") or weighted.get("fp32")):
        raise PrecisionError(f"{where} was asked to be FP16 but has {consts.get('f16', 0)} f16 constants and "
                             f"{weighted.get('fp32', 0)} weighted ops with f32 weights")
    elif precision == "fp32" and (consts.get("f16") or weighted.get("fp16")):
        raise PrecisionError(f"{where} was asked to be FP32 but has {consts.get('f16')} f16 constants")


# --- running -------------------------------------------------------------------------------------

class OpenVinoPredictor:
    """An IR compiled for one device; ``predict`` takes any batch size (the IR's batch is dynamic).

    Every batch size runs on a static-shape compilation of the same IR for that size (compiled on first
    use, the last ``max_shapes`` kept), never on the dynamic-batch one. OpenVINO 2026.4.1's CPU plugin
    mishandles INT8 depthwise (GroupConvolution) layers of a dynamic-batch model at small batches: on an
    AVX2 CPU without VNNI (AMD EPYC) it computed MobileNet-V3 logits 0.1 off at batch 1; on an AVX-512/AMX
    CPU (Intel Xeon with amx_int8) it crashes the process (segmentation fault) at batches 1, 2 and 3.
    Static shapes agree with FP32 to 5e-4 at every batch on both, and are what a latency deployment compiles.
    """

    def __init__(self, path: Path, threads: int | None = None, device: str = "CPU",
                 precision_hint: str | None = "f32", max_shapes: int = 4) -> None:
        ov = _openvino()
        self.path, self.device = Path(path), device
        if not self.path.is_file():
            raise ExportError(f"OpenVINO IR {str(self.path)!r} does not exist; build it with `cxr-edge export`")
        self.config: dict[str, Any] = {}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision_hint:
            # CPUs with bf16/AMX would otherwise run an FP32 IR in bf16.
            self.config["INFERENCE_PRECISION_HINT"] = precision_hint
        self._ov, self._core = ov, ov.Core()
        self.model = self._core.read_model(str(self.path))
        self.max_shapes = max(1, int(max_shapes))
        self._requests: dict[int, Any] = {}  # batch size -> infer request of its static compilation
        self._request(1)  # compile now, so that a broken IR fails at load time, as it would dynamically

    def _request(self, n: int):
        request = self._requests.pop(n, None)
        if request is None:
            static = self.model.clone()
            static.reshape({static.inputs[0]: self._ov.PartialShape([n, *list(static.inputs[0].partial_shape)[1:]])})
            request = self._core.compile_model(static, self.device, self.config).create_infer_request()
            while len(self._requests) >= self.max_shapes:
                self._requests.pop(next(iter(self._requests)))  # least recently used first
        self._requests[n] = request
        return request

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Logits of a float32 N x C x H x W batch. The batch is copied into the request's own input tensor and
        the request run without arguments: ``request.infer({0: x})`` hands the CPU plugin a new tensor on every
        call, which it then prepares again; that made ResNet-18 INT8 at batch 1 (64 px, 2 threads) take 2-3x the
        time of the runtime's own loop (docs/harness-overhead.md)."""
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"expected a float32 N x C x H x W batch; got shape {x.shape}")
        request = self._request(len(x))
        into = request.get_input_tensor(0).data
        if into.shape != x.shape:
            raise ValueError(f"{self.path} takes batches of shape N x {' x '.join(map(str, into.shape[1:]))}; "
                             f"got {' x '.join(map(str, x.shape))}")
        into[...] = x
        request.infer()
        out = np.array(request.get_output_tensor(0).data, dtype=np.float32).reshape(-1)
        if out.size != len(x):
            raise ExportError(f"{self.path} returned {out.size} values for {len(x)} images; expected one logit each")
        return out


def load(path: Path, threads: int | None = None, device: str = "CPU",
         precision_hint: str | None = "f32") -> OpenVinoPredictor:
    """``precision_hint=None`` keeps the device's default inference precision."""
    return OpenVinoPredictor(path, threads=threads, device=device, precision_hint=precision_hint)
