"""TensorRT: the pure-Python decisions always; the real build only where TensorRT and a GPU exist
(never on the development machines, so those tests skip with the reason from FORMATS)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from export.base import FORMATS, TOLERANCES, BackendUnavailable, ExportError, PrecisionError, QuantConfig
from export.tensorrt import (
    EngineSpec,
    builder_flags,
    check_engine_precision,
    check_input,
    check_qdq,
    cleared_flags,
    engine_precisions,
    network_flags,
    onnx_input,
    profile_shapes,
    timing_cache_path,
)

MISSING = FORMATS["tensorrt"].missing()


# ------------------------------------------------------------------------------ decisions


def test_engine_spec_defaults_and_validation():
    spec = EngineSpec("fp16")
    assert (spec.min_batch, spec.opt_batch, spec.max_batch, spec.workspace_gb) == (1, 8, 64, 4.0)
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        EngineSpec("fp16", min_batch=4, opt_batch=2)
    with pytest.raises(ValueError, match="1 <= min"):
        EngineSpec("fp32", min_batch=0)
    with pytest.raises(ValueError, match="precision 'int4'"):
        EngineSpec("int4")
    with pytest.raises(ValueError, match="workspace_gb"):
        EngineSpec("fp32", workspace_gb=0)


@pytest.mark.parametrize("precision, network, flags, cleared", [
    ("fp32", [], [], ["TF32"]),
    ("fp16", [], ["FP16"], []),
    ("int8", ["STRONGLY_TYPED"], [], []),  # explicit quantization: types come from the Q/DQ graph
])
def test_flags_per_precision(precision, network, flags, cleared):
    spec = EngineSpec(precision)
    assert network_flags(spec) == network and builder_flags(spec) == flags and cleared_flags(spec) == cleared


def test_fp16_on_tensorrt_11_names_the_fix():
    with pytest.raises(BackendUnavailable, match="tensorrt>=10,<11"):
        builder_flags(EngineSpec("fp16"), trt_major=11)
    assert builder_flags(EngineSpec("int8"), trt_major=11) == []


def test_profile_shapes():
    assert profile_shapes(EngineSpec("fp32"), (3, 224, 224)) == ((1, 3, 224, 224), (8, 3, 224, 224),
                                                                 (64, 3, 224, 224))
    assert profile_shapes(EngineSpec("fp32", 2, 2, 2), (1, 64, 64)) == ((2, 1, 64, 64),) * 3


def test_check_input_needs_static_image_dims_and_a_coverable_batch():
    assert check_input([None, 3, 32, 32], EngineSpec("fp32")) == (3, 32, 32)
    assert check_input([4, 3, 32, 32], EngineSpec("fp32", 4, 4, 4)) == (3, 32, 32)
    with pytest.raises(ExportError, match="fixed batch of 1"):
        check_input([1, 3, 32, 32], EngineSpec("fp32"))
    with pytest.raises(ExportError, match="fixed C, H, W"):
        check_input([None, 3, None, 32], EngineSpec("fp32"))


def test_timing_cache_is_per_tensorrt_version_and_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_EDGE_CACHE", str(tmp_path))
    path = timing_cache_path(EngineSpec("fp16"), "10.13.3", "NVIDIA H100 80GB HBM3", "9.0")
    assert path == tmp_path / "tensorrt" / "10.13.3-NVIDIA-H100-80GB-HBM3-sm9.0.timing-cache"
    assert timing_cache_path(EngineSpec("fp16", timing_cache=tmp_path / "x"), "10", "g", "8.6") == tmp_path / "x"


def _layer(*types: str, key: str = "Format/Datatype") -> dict:
    return {"Name": "l", "LayerType": "CaskConvolution", "Inputs": [{"Name": "a", key: types[0]}],
            "Outputs": [{"Name": "b", key: types[-1]}]}


def test_engine_precisions_reads_tensorrt_10_and_11_inspector_json():
    v10 = {"Layers": [_layer("Int8 NC/32HW32"), _layer("Half format where channel % 8 == 0"),
                      _layer("Row major linear FP32"), "reformat"], "Bindings": ["input", "logit"]}
    assert engine_precisions(json.dumps(v10)) == {"int8": 1, "fp16": 1, "fp32": 1, "layers": 4, "unknown": 1}
    v11 = {"Layers": [_layer("Int8", key="DataType"), _layer("Float", key="DataType")]}
    assert engine_precisions(json.dumps(v11))["int8"] == 1 and engine_precisions(json.dumps(v11))["fp32"] == 1


def test_check_engine_precision():
    counts = {"int8": 0, "fp16": 0, "fp32": 5, "layers": 5, "unknown": 0}
    assert check_engine_precision(counts, "fp32").startswith("verified")
    for precision in ("int8", "fp16"):
        with pytest.raises(PrecisionError, match=precision.upper()):
            check_engine_precision(counts, precision)
    with pytest.raises(PrecisionError, match="reduced-precision"):
        check_engine_precision({**counts, "fp16": 2}, "fp32")
    assert check_engine_precision({"int8": 0, "fp16": 0, "fp32": 0, "layers": 0, "unknown": 0}, "int8").startswith(
        "not verified")


# ----------------------------------------------------------------------- the ONNX it consumes


def _conv_onnx(path: Path, zero_point: np.ndarray | None, int32_bias: bool = False) -> Path:
    """Input -> (Q -> DQ) -> Conv, batch symbolic; zero_point None builds the graph without Q/DQ;
    ``int32_bias`` adds a bias through DequantizeLinear of INT32, as onnxruntime writes it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.linspace(-1, 1, 108, dtype=np.float32).reshape(4, 3, 3, 3), "w")]
    nodes, x, conv_inputs = [], "input", ["w"]
    if zero_point is not None:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(zero_point, "zp")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "s", "zp"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"])]
        x = "dq"
    if int32_bias:
        inits += [numpy_helper.from_array(np.array([100, -7, 0, 3], np.int32), "b_q"),
                  numpy_helper.from_array(np.array([0.01, 0.02, 0.03, 0.04], np.float32), "b_s"),
                  numpy_helper.from_array(np.zeros(4, np.int32), "b_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_zp"], ["b"], axis=0))
        conv_inputs.append("b")
    nodes.append(helper.make_node("Conv", [x, *conv_inputs], ["logit"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", 4, 6, 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    return path


def test_check_qdq_accepts_symmetric_int8_only(tmp_path):
    good = _conv_onnx(tmp_path / "sym.onnx", np.array(0, np.int8))
    assert check_qdq(good) == {"quantize_nodes": 1, "dequantize_nodes": 1, "zero_point_types": ["int8"],
                               "nonzero_zero_points": 0}
    assert onnx_input(good) == ("input", [None, 3, 8, 8])
    with pytest.raises(PrecisionError, match="symmetric INT8"):
        check_qdq(_conv_onnx(tmp_path / "asym.onnx", np.array(128, np.uint8)))
    with pytest.raises(PrecisionError, match="symmetric INT8"):
        check_qdq(_conv_onnx(tmp_path / "shift.onnx", np.array(3, np.int8)))
    with pytest.raises(PrecisionError, match="int32"):  # TensorRT's parser rejects DequantizeLinear of INT32
        check_qdq(_conv_onnx(tmp_path / "bias.onnx", np.array(0, np.int8), int32_bias=True))


def test_check_qdq_rejects_mismatched_sources(tmp_path):
    plain = _conv_onnx(tmp_path / "plain.onnx", None)
    assert check_qdq(plain, "fp16")["quantize_nodes"] == 0
    with pytest.raises(PrecisionError, match="0 QuantizeLinear"):
        check_qdq(plain, "int8")
    with pytest.raises(PrecisionError, match="unquantized FP32"):
        check_qdq(_conv_onnx(tmp_path / "q.onnx", np.array(0, np.int8)), "fp16")


def test_fold_bias_dequantize_keeps_the_outputs(tmp_path):
    import onnxruntime as ort

    from export.tensorrt import fold_bias_dequantize

    path = _conv_onnx(tmp_path / "bias.onnx", np.array(0, np.int8), int32_bias=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    assert fold_bias_dequantize(path) == 1 and fold_bias_dequantize(path) == 0
    np.testing.assert_allclose(ort.InferenceSession(str(path)).run(None, {"input": x})[0], before, atol=1e-6)
    assert check_qdq(path)["zero_point_types"] == ["int8"]


def _hand_made_ctx(work: Path, quant: QuantConfig):
    """A random-weight ResNet-18 at 32 px in a minimal run folder: enough for export.onnx."""
    import torch

    from core import io
    from core.preprocess import Preprocess
    from core.registry import get
    from core.runs import Run
    from export.base import ExportContext, TorchPredictor

    record = {"backbone": "resnet18", "preprocess": Preprocess.for_model(32).to_dict(),
              "threshold": {"threshold": 0.5}, "split": {"hash": "hand-made"}}
    io.write_json(work / "run.json", record)
    torch.manual_seed(0)
    model = get("resnet18").build(32).eval()
    rng = np.random.default_rng(0)
    cal, val = (rng.standard_normal((n, 3, 32, 32)).astype(np.float32) for n in (16, 8))
    ref = TorchPredictor(model).predict(val)
    return ExportContext(run=Run(work, record), model=model, calibration=cal, val_inputs=val,
                         val_labels=(ref > np.median(ref)).astype(int), reference_logits=ref, quant=quant,
                         work_dir=work)


def test_int8_source_is_a_symmetric_qdq_onnx(tmp_path):
    from export.tensorrt import source_onnx

    ctx = _hand_made_ctx(tmp_path, QuantConfig.preset("onnx"))
    path, facts = source_onnx(ctx, "int8", tmp_path)
    assert facts["quant_changed"] == {"symmetric_activations": [False, True]}  # TensorRT's requirement, recorded
    assert ctx.quant.symmetric_activations is False  # the caller's config is untouched
    assert facts["int32_bias_folded"] > 0  # onnxruntime quantizes biases; TensorRT cannot parse them
    qdq = check_qdq(path, "int8")
    assert qdq["quantize_nodes"] > 0 and qdq["zero_point_types"] == ["int8"] and qdq["nonzero_zero_points"] == 0
    assert onnx_input(path)[1][0] is None  # dynamic batch for the optimization profile
    hub, _ = source_onnx(ctx, "fp16", tmp_path)
    assert hub == ctx.onnx_fp32 and check_qdq(hub, "fp16")["quantize_nodes"] == 0


# ----------------------------------------------------------------- without TensorRT or a GPU


@pytest.mark.skipif(MISSING is None, reason="TensorRT and a GPU are present")
def test_build_and_load_without_tensorrt_raise_backend_unavailable(tmp_path):
    from export import tensorrt

    with pytest.raises(BackendUnavailable, match="docs/tensorrt.md") as err:
        tensorrt.build(None, "fp16", tmp_path / "m.engine")
    assert "pip install" in str(err.value) or "GPU" in str(err.value)
    with pytest.raises(BackendUnavailable):
        tensorrt.load(tmp_path / "m.engine")


def test_without_a_gpu_the_reason_is_the_gpu(monkeypatch, tmp_path):
    import torch

    from export import tensorrt

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    present = dataclasses.replace(FORMATS["tensorrt"], requires=("json",))  # pretend tensorrt is installed
    monkeypatch.setitem(FORMATS, "tensorrt", present)
    with pytest.raises(BackendUnavailable, match="needs an NVIDIA GPU"):
        tensorrt.build(None, "int8", tmp_path / "m.engine")


# ------------------------------------------------------------------ the real thing (GPU only)


@pytest.fixture(scope="module")
def trt_ctx(tmp_path_factory, trained_run):
    """The tiny trained run's export context (its probabilities are spread: parity means something)."""
    from export.pipeline import make_context

    return make_context(trained_run, QuantConfig.preset("tensorrt", n_calibration=16), tmp_path_factory.mktemp("trt"))


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_round_trip(trt_ctx, precision, tmp_path):
    from export import tensorrt
    from export.base import parity

    ctx = dataclasses.replace(trt_ctx, work_dir=tmp_path)
    spec = EngineSpec(precision, 1, 4, 8, workspace_gb=1, timing_cache=tmp_path / "timing.cache")
    facts = tensorrt.build(ctx, precision, tmp_path / "m.engine", spec=spec)
    assert facts["tensorrt_version"] and facts["gpu"] and facts["compute_capability"]
    assert facts["profile"]["max"][0] == 8 and (tmp_path / "timing.cache").is_file()
    predictor = tensorrt.load(tmp_path / "m.engine")
    logits = predictor.predict(ctx.val_inputs)  # more images than max_batch: run in chunks
    figures = parity(ctx.reference_logits, logits, ctx.val_labels, ctx.run.threshold, precision)
    assert figures["within_tolerance"], figures["failures"]
    one = predictor.predict(ctx.val_inputs[:1])  # batch 1, the profile's minimum
    np.testing.assert_allclose(one, logits[:1], atol=TOLERANCES["fp16"]["max_abs_prob"])
    assert predictor.predict(ctx.val_inputs[:5]).shape == (5,)
