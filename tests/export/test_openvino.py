"""OpenVINO IR: every precision round-trips (build, load, predict, compare with PyTorch) on a tiny
random-weight ResNet-18 at 32 px with seeded synthetic inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from export.base import (
    FORMATS,
    TOLERANCES,
    ExportContext,
    ExportError,
    PrecisionError,
    QuantConfig,
    TorchPredictor,
    logit_ratio,
)

MISSING = FORMATS["openvino"].missing()
pytestmark = [pytest.mark.openvino, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]
SIZE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ExportContext:
    """A context built by hand: model, training-side calibration, validation images and labels."""
    import torch

    from core.registry import get
    from core.runs import Run

    torch.manual_seed(0)
    model = get("resnet18").build(SIZE).eval()
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((16, 3, SIZE, SIZE)).astype(np.float32)
    val = rng.standard_normal((24, 3, SIZE, SIZE)).astype(np.float32)
    reference = TorchPredictor(model).predict(val)
    labels = (reference > np.median(reference)).astype(int)
    work = tmp_path_factory.mktemp("ov-work")
    return ExportContext(run=Run(work, {"backbone": "resnet18"}), model=model, calibration=calibration,
                         val_inputs=val, val_labels=labels, reference_logits=reference, quant=QuantConfig(),
                         work_dir=work)


@pytest.fixture(scope="module")
def hub(tiny, tmp_path_factory) -> Path:
    """The FP32 ONNX file of the tiny model with a dynamic batch, as the ONNX target makes it."""
    import torch

    path = tmp_path_factory.mktemp("ov-hub") / "onnx-fp32.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(tiny.model, (torch.zeros(2, 3, SIZE, SIZE),), str(path), dynamo=True, opset_version=18,
                      input_names=["input"], output_names=["logit"], dynamic_shapes=({0: batch},))
    return path


def _ctx(tiny: ExportContext, hub: Path | None = None, **quant) -> ExportContext:
    return dataclasses.replace(tiny, onnx_fp32=hub, quant=QuantConfig(**quant), facts={})


def _probs(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(logits, np.float64)))


def test_fp32_from_torch_matches_pytorch_at_any_batch(tiny, tmp_path):
    import torch

    from export import openvino

    facts = openvino.build(_ctx(tiny), "fp32", tmp_path / "m.xml")
    assert facts["source"] == "torch"
    weights = sum(m.weight.numel() for m in tiny.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert (tmp_path / "m.bin").stat().st_size >= 4 * weights  # every convolution and linear weight, in FP32
    assert facts["input_shape"] == f"[?,3,{SIZE},{SIZE}]"
    assert facts["counts"]["fake_quantize"] == 0 and "f16" not in facts["counts"]["constants"]
    predictor = openvino.load(tmp_path / "m.xml", threads=2)
    assert predictor.device == "CPU" and predictor.config["INFERENCE_PRECISION_HINT"] == "f32"
    logits = predictor.predict(tiny.val_inputs)
    assert logits.shape == (len(tiny.val_inputs),) and logits.dtype == np.float32
    assert logit_ratio(tiny.reference_logits, logits, **TOLERANCES["fp32"]) <= 1
    for n in (1, 5):  # the IR's batch is dynamic
        np.testing.assert_allclose(predictor.predict(tiny.val_inputs[:n]), logits[:n], atol=1e-6)


def test_fp16_from_onnx_hub_has_fp16_weights(tiny, hub, tmp_path):
    from export import openvino

    facts = openvino.build(_ctx(tiny, hub), "fp16", tmp_path / "m.xml")
    assert facts["source"] == "onnx" and facts["compress_to_fp16"]
    counts = facts["counts"]
    assert counts["constants"]["f16"] > 0
    assert counts["weighted_ops"] == {"fp16": 21}  # 20 convolutions and the classifier, all FP16
    logits = openvino.load(tmp_path / "m.xml").predict(tiny.val_inputs)
    assert np.max(np.abs(_probs(logits) - _probs(tiny.reference_logits))) <= TOLERANCES["fp16"]["max_abs_prob"]


def test_int8_is_quantized_from_training_side_calibration(tiny, hub, tmp_path):
    from export import openvino

    facts = openvino.build(_ctx(tiny, hub), "int8", tmp_path / "m.xml")
    counts = facts["counts"]
    assert counts["fake_quantize"] > 0 and counts["constants"]["i8"] > 0
    assert counts["weighted_ops"] == {"int8": 21} and counts["float_weighted_ops"] == []
    assert facts["calibration_images"] == len(tiny.calibration) and facts["calibration_side"] == "train"
    assert facts["nncf_args"] == {"preset": "MIXED", "subset_size": 16, "model_type": None,
                                  "per_channel_weights": True, "ignored_scope": None, "ignored_source": None,
                                  "activations_range_estimator": "MINMAX", "smooth_quant": False}
    predictor = openvino.load(tmp_path / "m.xml")
    logits = predictor.predict(tiny.val_inputs)
    assert np.corrcoef(logits, tiny.reference_logits)[0, 1] > 0.95
    assert np.max(np.abs(_probs(logits) - _probs(tiny.reference_logits))) <= TOLERANCES["int8"]["max_abs_prob"]
    np.testing.assert_allclose(predictor.predict(tiny.val_inputs[:1]), logits[:1], atol=1e-5)


def test_int8_depthwise_model_gives_the_same_logit_at_batch_one(tiny, tmp_path):
    """OpenVINO 2026.4.1's CPU plugin runs INT8 depthwise convolutions of a dynamic-batch IR wrongly
    at batch 1 (a random MobileNet-V3 on AMD EPYC: 30% of the logit off) or crashes at batches 1-3
    (Intel Xeon with AMX); the predictor compiles each batch size with a static shape."""
    import torch

    from core.registry import get
    from core.runs import Run
    from export import openvino

    torch.manual_seed(0)
    model = get("mobilenetv3_large_100").build(SIZE).eval()
    ctx = dataclasses.replace(_ctx(tiny), model=model, run=Run(tmp_path, {"backbone": "mobilenetv3_large_100"}))
    facts = openvino.build(ctx, "int8", tmp_path / "m.xml")
    assert facts["counts"]["weighted_ops"]["int8"] == 64  # including the 15 depthwise GroupConvolutions
    predictor = openvino.load(tmp_path / "m.xml")
    assert facts["nncf_args"]["ignored_source"] == "mobilenetv3_large_100 default"  # its SE products stay float
    x = tiny.val_inputs[:6]
    # The bug put the logit 30% off; the float Multiply kernels differ by batch by ~3e-4 of a logit of ~0.014.
    np.testing.assert_allclose(predictor.predict(x[:1]), predictor.predict(x)[:1], atol=1e-3)
    np.testing.assert_allclose(predictor.predict(x[:2]), predictor.predict(x)[:2], atol=1e-3)
    # On an AMX CPU the dynamic-batch IR crashed the process at batches 1-3; each size runs statically.
    np.testing.assert_allclose(predictor.predict(x[:3]), predictor.predict(x)[:3], atol=1e-3)
    assert sorted(predictor._requests) == [1, 2, 3, 6]
    predictor.predict(x[:5])  # a fifth size evicts the least recently used (1; 6 was used last)
    assert sorted(predictor._requests) == [2, 3, 5, 6]


def test_int8_ignored_scope_keeps_layers_in_float(tiny, hub, tmp_path):
    from export import openvino

    facts = openvino.build(_ctx(tiny, hub, ignored=("type:MatMul",)), "int8", tmp_path / "m.xml")
    assert facts["nncf_args"]["ignored_scope"] == {"patterns": [], "types": ["MatMul"]}
    assert [op["type"] for op in facts["counts"]["float_weighted_ops"]] == ["MatMul"]
    assert facts["counts"]["weighted_ops"] == {"int8": 20, "fp32": 1}


def test_ignored_pattern_that_matches_nothing_is_an_error(tiny, hub, tmp_path):
    from export import openvino

    with pytest.raises(ExportError, match="node names"):
        openvino.build(_ctx(tiny, hub, ignored=("no_such_layer",)), "int8", tmp_path / "m.xml")


def test_accuracy_aware_within_budget_reverts_nothing(tiny, hub, tmp_path):
    from export import openvino

    facts = openvino.build(_ctx(tiny, hub, accuracy_aware=True, max_auc_drop=0.05), "int8", tmp_path / "m.xml")
    aa = facts["accuracy_aware"]
    assert aa["metric"] == "val ROC-AUC" and aa["val_images"] == len(tiny.val_inputs)
    assert aa["within_budget"] and aa["auc_drop"] <= 0.05 and aa["reverted_ops"] == []
    assert facts["counts"]["fake_quantize"] > 0
    # NNCF ran it at a static batch of one; the saved IR has its dynamic batch back
    import openvino as ov
    assert ov.Core().read_model(str(tmp_path / "m.xml")).inputs[0].partial_shape[0].is_dynamic
    predictor = openvino.load(tmp_path / "m.xml")
    assert predictor.predict(tiny.val_inputs[:5]).shape == (5,)


@pytest.mark.slow
def test_accuracy_aware_reverts_layers_to_meet_the_budget(tiny, hub, tmp_path):
    """Labels alternating along PyTorch's ranking make the AUC sensitive to every small INT8 error,
    so NNCF has to put layers back into float (about 20 s)."""
    from export import openvino

    labels = np.zeros(len(tiny.reference_logits), int)
    labels[np.argsort(tiny.reference_logits)[1::2]] = 1
    ctx = dataclasses.replace(_ctx(tiny, hub, accuracy_aware=True, max_auc_drop=0.01), val_labels=labels)
    facts = openvino.build(ctx, "int8", tmp_path / "m.xml")
    aa = facts["accuracy_aware"]
    assert aa["reverted_ops"] and aa["auc_drop"] <= 0.01
    assert facts["counts"]["weighted_ops"]["fp32"] == len(aa["reverted_ops"])


def test_nncf_arguments_translate_the_quant_config():
    import fnmatch

    from export.openvino import nncf_arguments

    vit = nncf_arguments(QuantConfig(symmetric_activations=True, per_channel=False,
                                     ignored=("blocks.0.*", "type:GroupConvolution")), "vit_base_patch16_224", 7)
    assert vit == {"preset": "PERFORMANCE", "subset_size": 7, "model_type": "TRANSFORMER", "per_channel_weights": False,
                   "ignored_scope": {"patterns": [fnmatch.translate("blocks.0.*")], "types": ["GroupConvolution"]},
                   "ignored_source": "user", "activations_range_estimator": "MINMAX", "smooth_quant": False}
    assert nncf_arguments(QuantConfig(), "mobilenetv3_large_100", 300)["model_type"] is None
    # EfficientNet-B0 keeps its squeeze-excite/SiLU products in float unless the user names layers.
    effnet = nncf_arguments(QuantConfig(), "efficientnet_b0", 300)
    assert effnet["ignored_scope"] == {"patterns": [], "types": ["Multiply"]}
    assert effnet["ignored_source"] == "efficientnet_b0 default"
    mine = nncf_arguments(QuantConfig(ignored=("type:MatMul",)), "efficientnet_b0", 300)
    assert mine["ignored_scope"] == {"patterns": [], "types": ["MatMul"]} and mine["ignored_source"] == "user"
    onnx_names = nncf_arguments(QuantConfig(ignored=("type:Mul", "type:Conv")), "resnet18", 300)  # ONNX's spelling
    assert onnx_names["ignored_scope"] == {"patterns": [], "types": ["Multiply", "Convolution"]}
    assert nncf_arguments(QuantConfig(), "mobilenetv2_100", 300)["ignored_scope"] is None
    assert nncf_arguments(QuantConfig(calibration="percentile"), "resnet18", 300)["activations_range_estimator"] \
        == "MEAN_QUANTILE"


def test_nncf_keyword_arguments_are_accepted_by_nncf():
    """Every setting reaches NNCF under a name its entry points take (per-tensor weights included)."""
    import inspect

    import nncf

    from export.openvino import _nncf_kwargs, nncf_arguments

    kwargs = _nncf_kwargs(nncf_arguments(QuantConfig(per_channel=False, ignored=("type:GroupConvolution",)),
                                         "vit_base_patch16_224", 10))
    assert set(kwargs) <= set(inspect.signature(nncf.quantize).parameters)
    adv = kwargs["advanced_parameters"]
    assert adv.smooth_quant_alphas.matmul == -1 and adv.weights_quantization_params.per_channel is False
    assert adv.activations_range_estimator_params == \
        nncf.quantization.range_estimator.RangeEstimatorParametersSet.MINMAX


def test_int8_ignored_glob_matches_onnx_node_names(tiny, hub, tmp_path):
    from export import openvino

    facts = openvino.build(_ctx(tiny, hub, ignored=("node_linear*",)), "int8", tmp_path / "m.xml")
    assert [op["name"] for op in facts["counts"]["float_weighted_ops"]] == ["node_linear/WithoutBiases"]


@pytest.mark.parametrize("precision, counts, message", [
    ("int8", {"constants": {"f32": 9}, "fake_quantize": 0, "fake_convert": 0, "weighted_ops": {"fp32": 3}}, "INT8"),
    ("fp16", {"constants": {"f32": 9}, "fake_quantize": 0, "fake_convert": 0, "weighted_ops": {"fp32": 3}}, "f16"),
    ("fp16", {"constants": {"f16": 8, "f32": 1}, "fake_quantize": 0, "fake_convert": 0,
              "weighted_ops": {"fp16": 2, "fp32": 1}}, "f32 weights"),
    ("fp32", {"constants": {"f32": 9, "i8": 3}, "fake_quantize": 2, "fake_convert": 0, "weighted_ops": {"int8": 3}},
     "quantize nodes"),
    ("fp32", {"constants": {"f16": 9}, "fake_quantize": 0, "fake_convert": 0, "weighted_ops": {"fp16": 3}}, "f16"),
])
def test_precision_check_rejects_the_wrong_artifact(precision, counts, message):
    from export.openvino import check_precision

    with pytest.raises(PrecisionError, match=message):
        check_precision(counts, precision)


def test_load_reports_a_missing_file(tmp_path):
    from export import openvino

    with pytest.raises(ExportError, match="does not exist"):
        openvino.load(tmp_path / "nothing.xml")


def test_predict_runs_the_request_on_its_own_input_tensor(tiny, tmp_path):
    """predict copies the batch into the request's own input tensor and runs it without arguments (handing OpenVINO
    the batch through ``infer({0: x})`` made its calls 2-3x slower than the runtime's own loop), and a batch of
    another image size is a clear error naming the shape the IR takes."""
    from export import openvino

    openvino.build(_ctx(tiny), "fp32", tmp_path / "m.xml")
    predictor = openvino.load(tmp_path / "m.xml")
    x = tiny.val_inputs[:3]
    first = predictor.predict(x)
    seen: list = []

    class Spy:  # the compiled request, with its infer() calls recorded
        def __init__(self, request):
            self.request = request

        def __getattr__(self, name):
            return getattr(self.request, name)

        def infer(self, *args, **kwargs):
            seen.append((args, kwargs))
            return self.request.infer(*args, **kwargs)

    predictor._requests[3] = Spy(predictor._requests[3])
    again = predictor.predict(x)
    assert seen == [((), {})] and np.array_equal(first, again)
    with pytest.raises(ValueError, match=r"m.xml takes batches of shape N x 3 x 32 x 32; got 1 x 3 x 16 x 16"):
        predictor.predict(np.zeros((1, 3, 16, 16), np.float32))
