"""ONNX target: every precision round-trips (export, load, predict, compare) and is what was asked for."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from export import onnx as onnx_target
from export.base import ExportError, PrecisionError, QuantConfig, TorchPredictor, parity, predict_batched, run_hash


def _artifact(exported, precision):
    records, out = exported
    rec = next(r for r in records if r["precision"] == precision)
    assert rec["status"] == "ok", rec.get("error")
    return rec, out / rec["path"]


def _fresh(ctx, tmp_path, **changes):
    """A copy of the context with no hub yet, working in tmp_path."""
    return replace(ctx, work_dir=tmp_path, onnx_fp32=None, facts={}, **changes)


def test_fp32_round_trip_matches_pytorch_with_a_dynamic_batch(exported, onnx_ctx):
    rec, path = _artifact(exported, "fp32")
    predictor = onnx_target.load(path, threads=1)
    # one intra-op thread runs on the caller's thread: no spinning pool for the benchmark to wait out
    assert predictor.settle_s == 0.0 and onnx_target.load(path, threads=2).settle_s > 0
    assert predictor.providers == ["CPUExecutionProvider"]
    x = onnx_ctx.val_inputs
    reference = TorchPredictor(onnx_ctx.model).predict(x)
    for batch in (1, 3, len(x)):
        got = predict_batched(predictor, x, batch_size=batch)
        assert got.shape == reference.shape and got.dtype == np.float32
        assert np.max(np.abs(got - reference)) <= 1e-4
    assert rec["parity"]["max_abs_logit"] <= 1e-4 and rec["parity"]["within_tolerance"]
    facts = rec["facts"]
    assert facts["exporter"] == "dynamo" and facts["opset"] == 18 and facts["slim"]["ok"]
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logit"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch dimension is symbolic


def test_every_artifact_carries_preprocessing_threshold_and_source_run(exported, trained_run):
    for precision in ("fp32", "fp16", "int8"):
        _, path = _artifact(exported, precision)
        meta = onnx_target.load(path).metadata
        assert meta["cxr_edge.precision"] == precision
        assert json.loads(meta["cxr_edge.preprocess"]) == trained_run.preprocess.to_dict()
        assert float(meta["cxr_edge.threshold"]) == trained_run.threshold
        assert meta["cxr_edge.backbone"] == "resnet18" and meta["cxr_edge.run_hash"] == run_hash(trained_run)
        assert meta["cxr_edge.split_hash"] == trained_run.record["split"]["hash"]
        assert (path.parent / meta["cxr_edge.source_run"]).resolve() == trained_run.path.resolve()  # relative
        assert meta["cxr_edge.version"] and "sigmoid" in meta["cxr_edge.output"]


def test_fp16_has_fp16_weights_and_fp32_inputs_and_outputs(exported, onnx_ctx):
    rec, path = _artifact(exported, "fp16")
    model = onnx.load(str(path))
    dtypes = {onnx.helper.tensor_dtype_to_np_dtype(i.data_type).name for i in model.graph.initializer}
    assert "float16" in dtypes and rec["facts"]["fp32_weight_share"] <= 0.05
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    got = onnx_target.load(path).predict(onnx_ctx.val_inputs)
    p = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    assert np.max(np.abs(p(got) - p(onnx_ctx.reference_logits))) <= 0.02
    assert rec["parity"]["within_tolerance"], rec["parity"]


def test_int8_is_qdq_with_int8_weights_calibrated_on_training_images(exported, trained_run):
    rec, path = _artifact(exported, "int8")
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    assert rec["facts"]["int8_weights"] >= 20  # every conv of ResNet-18 and its classifier
    q = rec["facts"]["quantization"]
    assert q["format"] == "QDQ" and q["per_channel"] and q["calibrate_method"] == "Percentile"
    cal = rec["calibration"]
    assert cal["side"] == "train" and cal["n_images"] == len(trained_run.split().side("train"))
    assert rec["parity"]["within_tolerance"], rec["parity"]
    assert onnx_target.load(path).predict(np.zeros((2, 3, 32, 32), np.float32)).shape == (2,)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibrations_work_on_a_short_last_batch(onnx_ctx, tmp_path, method):
    ctx = replace(onnx_ctx, quant=QuantConfig.preset("onnx", calibration=method))
    assert len(ctx.calibration) % 16  # the reader's last batch is short
    facts = onnx_target.build(ctx, "int8", tmp_path / "onnx-int8.onnx")
    assert facts["quantization"]["calibrate_method"] == method.capitalize() and facts["int8_weights"] >= 20
    got = onnx_target.load(tmp_path / "onnx-int8.onnx").predict(ctx.val_inputs)
    figures = parity(ctx.reference_logits, got, ctx.val_labels, ctx.run.threshold, "int8")
    assert figures["within_tolerance"], figures


def test_fp16_that_stayed_fp32_is_a_precision_error(onnx_ctx, tmp_path, monkeypatch):
    import onnxruntime.transformers.float16 as f16

    monkeypatch.setattr(f16, "convert_float_to_float16", lambda model, **kw: model)
    with pytest.raises(PrecisionError, match="no FP16 weights"):
        onnx_target.build(onnx_ctx, "fp16", tmp_path / "onnx-fp16.onnx")


def test_int8_without_qdq_nodes_is_a_precision_error():
    with pytest.raises(PrecisionError, match="quantization did nothing"):
        onnx_target.check_int8({"quantize_nodes": 0, "dequantize_nodes": 0, "int8_weights": 0})
    with pytest.raises(PrecisionError, match="no INT8 weights"):
        onnx_target.check_int8({"quantize_nodes": 3, "dequantize_nodes": 3, "int8_weights": 0})
    with pytest.raises(PrecisionError, match="still FP32"):
        onnx_target.check_fp16({"initializer_elements": {"float16": 10, "float32": 90}})


def test_quantization_arguments_follow_the_config(onnx_ctx):
    model = onnx.load(str(onnx_ctx.onnx_fp32))
    first = model.graph.node[0].name
    ctx = replace(onnx_ctx, quant=QuantConfig.preset("onnx", calibration="percentile", percentile=99.9,
                                                     symmetric_activations=True, per_channel=False,
                                                     ignored=(first,)))
    args = onnx_target.quant_args(ctx, model)
    assert args["record"]["calibrate_method"] == "Percentile" and args["record"]["activation_type"] == "QInt8"
    assert args["kwargs"]["extra_options"] == {"ActivationSymmetric": True, "WeightSymmetric": True,
                                               "CalibStridedMinMax": 1, "CalibPercentile": 99.9}
    assert args["kwargs"]["nodes_to_exclude"] == [first] and args["kwargs"]["per_channel"] is False
    ctx = replace(onnx_ctx, quant=QuantConfig.preset("onnx", ignored=("no_such_node*",)))
    with pytest.raises(ExportError, match="matches no node"):
        onnx_target.quant_args(ctx, model)
    convs = sorted(n.name for n in model.graph.node if n.op_type == "Conv")
    ctx = replace(onnx_ctx, quant=QuantConfig.preset("onnx", ignored=("type:Conv",)))
    assert convs and onnx_target.quant_args(ctx, model)["kwargs"]["nodes_to_exclude"] == convs
    ctx = replace(onnx_ctx, quant=QuantConfig.preset("onnx", ignored=("type:Convolution",)))  # OpenVINO's name
    assert onnx_target.quant_args(ctx, model)["kwargs"]["nodes_to_exclude"] == convs
    ctx = replace(onnx_ctx, quant=QuantConfig.preset("onnx", ignored=("type:LSTM",)))
    with pytest.raises(ExportError, match="op types: .*Conv"):
        onnx_target.quant_args(ctx, model)


def test_legacy_exporter_and_unslimmed_graph_are_fallbacks_that_are_recorded(onnx_ctx, tmp_path, monkeypatch):
    import onnxslim
    import torch

    real_export = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kw):
        if dynamo:
            raise RuntimeError("simulated dynamo failure")
        return real_export(*args, dynamo=False, **kw)

    def slim_fails(model, *a, **kw):
        raise RuntimeError("simulated onnxslim failure")

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    monkeypatch.setattr(onnxslim, "slim", slim_fails)
    ctx = _fresh(onnx_ctx, tmp_path)
    facts = onnx_target.build(ctx, "fp32", tmp_path / "onnx-fp32.onnx")
    assert facts["exporter"].startswith("torchscript") and "simulated dynamo" in facts["dynamo_error"]
    assert facts["slim"]["ok"] is False and "simulated onnxslim" in facts["slim"]["error"]
    got = onnx_target.load(tmp_path / "onnx-fp32.onnx").predict(onnx_ctx.val_inputs)
    assert np.max(np.abs(got - onnx_ctx.reference_logits)) <= 1e-4


def test_a_failed_hub_is_remembered_not_retried(onnx_ctx, tmp_path, monkeypatch):
    calls = []

    def boom(ctx, work):
        calls.append(1)
        raise RuntimeError("both exporters broke")

    monkeypatch.setattr(onnx_target, "_torch_export", boom)
    ctx = _fresh(onnx_ctx, tmp_path)
    with pytest.raises(RuntimeError, match="both exporters broke"):
        onnx_target.build(ctx, "fp32", tmp_path / "a.onnx")
    with pytest.raises(ExportError, match="could not be exported: RuntimeError: both exporters broke"):
        onnx_target.build(ctx, "int8", tmp_path / "b.onnx")
    assert len(calls) == 1


def test_toposort_puts_producers_first():
    from onnx import helper

    a = helper.make_node("Relu", ["x"], ["y"], name="a")
    b = helper.make_node("Relu", ["y"], ["z"], name="b")
    graph = helper.make_graph([b, a], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1])])
    onnx_target.toposort(graph)
    assert [n.name for n in graph.node] == ["a", "b"]


def test_load_of_a_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="cxr-edge export"):
        onnx_target.load(tmp_path / "nothing.onnx")


def _mobilenetv3_ctx(tmp_path: Path):
    """MobileNet-V3-Large at 32 px with seeded random weights; calibration and validation images drawn alike."""
    import torch

    from core.registry import get
    from core.runs import Run
    from export.base import ExportContext, TorchPredictor

    torch.manual_seed(0)
    model = get("mobilenetv3_large_100").build(32).eval()
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
    val = rng.standard_normal((48, 3, 32, 32)).astype(np.float32)
    reference = TorchPredictor(model).predict(val)
    labels = (reference > np.median(reference)).astype(int)
    record = {"backbone": "mobilenetv3_large_100", "preprocess": get("mobilenetv3_large_100").preprocess(32).to_dict(),
              "threshold": {"threshold": 0.5}, "split": {"hash": "seeded"}}
    (tmp_path / "run.json").write_text(json.dumps(record))
    return ExportContext(run=Run(tmp_path, record), model=model,
                         calibration=calibration, val_inputs=val, val_labels=labels, reference_logits=reference,
                         quant=QuantConfig.preset("onnx"), work_dir=tmp_path)


def test_mobilenetv3_int8_keeps_its_gate_and_hard_swish_products_in_float(tmp_path, monkeypatch):
    """The registry's keep-float default (squeeze-excite gates, hard-swish products: Mul) reaches onnxruntime's
    nodes_to_exclude, so that no gate is quantized before the Mul that applies it."""
    import dataclasses

    from core import registry

    ctx = _mobilenetv3_ctx(tmp_path)
    facts = onnx_target.build(ctx, "int8", tmp_path / "kept.onnx")
    q = facts["quantization"]
    assert q["keep_float"] == ["type:Mul"] and q["keep_float_source"] == "mobilenetv3_large_100 default"
    assert "hard-swish" in q["keep_float_why"] and len(q["nodes_to_exclude"]) >= 20
    assert _quantized_gates(tmp_path / "kept.onnx") == 0  # the gates (HardSigmoid outputs) stay float
    assert facts["named_nodes"] > 0  # the pre-processing's unnamed nodes got names: "" excludes nothing by mistake
    assert "" not in q["nodes_to_exclude"]
    # Without the registry's default, every gate is quantized (what every earlier version built). With random
    # weights the gates do not decide the output, so only the graph is compared here; on the trained default demo
    # run keeping them in float halved the largest probability change (0.149 -> 0.075).
    plain = dataclasses.replace(registry.BACKBONES["mobilenetv3_large_100"], keep_float=())
    monkeypatch.setitem(registry.BACKBONES, "mobilenetv3_large_100", plain)
    onnx_target.build(ctx, "int8", tmp_path / "plain.onnx")
    assert _quantized_gates(tmp_path / "plain.onnx") >= 20  # 8 squeeze-excite and the hard-swish gates


def _quantized_gates(path: Path) -> int:
    """QuantizeLinear nodes that read a HardSigmoid's output (a gate in 0..1 that a Mul applies)."""
    graph = onnx.load(str(path)).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    return sum(n.op_type == "QuantizeLinear" and producer.get(n.input[0]) == "HardSigmoid" for n in graph.node)
