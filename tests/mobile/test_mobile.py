"""Mobile targets: a tiny seeded CNN (three conv layers and a classifier, 16 x 16 px) round-trips through
each format that installs here: build, load, predict, compare with PyTorch. Core ML is converted and
checked structurally (it predicts only on macOS). Each format is skipped, with the reason, when the
`mobile` extra is absent."""

from __future__ import annotations

import dataclasses
import platform
import shutil

import numpy as np
import pytest

from export.base import (
    FORMATS,
    TOLERANCES,
    BackendUnavailable,
    ExportContext,
    ExportError,
    QuantConfig,
    TorchPredictor,
    file_bytes,
    file_sha256,
    logit_ratio,
    parity,
)

SIZE = 16
pytestmark = pytest.mark.mobile


def _skip_without(name: str):
    reason = FORMATS[name].missing()
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def _tiny_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),
                          nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1))
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding it matters
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ExportContext:
    from core.runs import Run

    model = _tiny_model()
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((32, 3, SIZE, SIZE)).astype(np.float32)
    val = rng.standard_normal((24, 3, SIZE, SIZE)).astype(np.float32)
    reference = TorchPredictor(model).predict(val)
    labels = (reference > np.median(reference)).astype(int)
    work = tmp_path_factory.mktemp("mobile-work")
    return ExportContext(run=Run(work, {"backbone": "tiny"}), model=model, calibration=calibration, val_inputs=val,
                         val_labels=labels, reference_logits=reference, quant=QuantConfig(), work_dir=work)


def _threshold(ctx: ExportContext) -> float:
    return float(np.median(1 / (1 + np.exp(-ctx.reference_logits.astype(np.float64)))))


# ------------------------------------------------------------------------------------ ExecuTorch


@_skip_without("executorch")
def test_executorch_fp32_round_trip_is_fully_delegated_and_exact(tiny, tmp_path):
    from mobile import executorch

    facts = executorch.build(tiny, "fp32", tmp_path / "m.pte")
    assert facts["xnnpack_delegates"] >= 1 and facts["ops_outside_delegate"] == {}
    assert facts["input_shape"] == [1, 3, SIZE, SIZE]
    got = executorch.load(tmp_path / "m.pte", threads=1).predict(tiny.val_inputs)
    assert got.shape == tiny.reference_logits.shape and got.dtype == np.float32
    assert logit_ratio(tiny.reference_logits, got, **TOLERANCES["fp32"]) <= 1


@_skip_without("executorch")
def test_executorch_int8_is_quantized_and_within_int8_tolerance(tiny, tmp_path):
    from mobile import executorch

    facts = executorch.build(tiny, "int8", tmp_path / "q.pte")
    q = facts["quantization"]
    assert q["weight_dequantize"] == 4 and q["quantize"] > 0  # three convolutions and the linear layer
    assert q["activation_observer"] == "MinMaxObserver" and q["calibration_images"] == 32
    assert facts["ops_outside_delegate"] == {}
    got = executorch.load(tmp_path / "q.pte").predict(tiny.val_inputs)
    figures = parity(tiny.reference_logits, got, tiny.val_labels, _threshold(tiny), "int8")
    assert figures["within_tolerance"], figures
    assert figures["max_abs_logit"] > 0  # it really is a different (quantized) computation


@_skip_without("executorch")
def test_executorch_predictors_with_different_thread_counts_take_turns(tiny, tmp_path):
    from executorch.extension.pybindings import portable_lib

    from mobile import executorch

    executorch.build(tiny, "fp32", tmp_path / "m.pte")
    one, two = executorch.load(tmp_path / "m.pte", threads=1), executorch.load(tmp_path / "m.pte", threads=2)
    x = tiny.val_inputs[:4]
    a = one.predict(x)
    assert portable_lib._threadpool_get_thread_count() == 1
    b = two.predict(x)
    assert portable_lib._threadpool_get_thread_count() == 2
    np.testing.assert_allclose(one.predict(x), a, atol=1e-6)
    np.testing.assert_allclose(b, a, atol=1e-5)


@_skip_without("executorch")
def test_executorch_rejects_images_of_another_size(tiny, tmp_path):
    from mobile import executorch

    executorch.build(tiny, "fp32", tmp_path / "m.pte")
    with pytest.raises(ValueError, match=r"takes images of shape \(3, 16, 16\)"):
        executorch.load(tmp_path / "m.pte").predict(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ExportError, match="fp16"):
        executorch.build(tiny, "fp16", tmp_path / "h.pte")


# ---------------------------------------------------------------------------------------- LiteRT


@_skip_without("litert")
def test_litert_fp32_round_trip_matches_pytorch(tiny, tmp_path):
    from mobile import litert

    facts = litert.build(tiny, "fp32", tmp_path / "m.tflite")
    assert facts["weighted_ops"] == {"float32": 4}
    assert facts["input"] == {"shape": [1, 3, SIZE, SIZE], "dtype": "float32"}
    got = litert.load(tmp_path / "m.tflite", threads=2).predict(tiny.val_inputs)
    assert got.shape == tiny.reference_logits.shape and got.dtype == np.float32
    assert logit_ratio(tiny.reference_logits, got, **TOLERANCES["fp32"]) <= 1


@_skip_without("litert")
def test_litert_int8_is_full_integer_and_within_int8_tolerance(tiny, tmp_path):
    from mobile import litert

    facts = litert.build(tiny, "int8", tmp_path / "q.tflite")
    assert facts["weighted_ops"] == {"int8": 4}
    assert facts["input"]["dtype"] == "int8" and facts["output"]["dtype"] == "int8"
    assert facts["quantization"]["calibration_side"] == "train"
    got = litert.load(tmp_path / "q.tflite", threads=1).predict(tiny.val_inputs)
    figures = parity(tiny.reference_logits, got, tiny.val_labels, _threshold(tiny), "int8")
    assert figures["within_tolerance"], figures
    assert figures["max_abs_logit"] > 0


# --------------------------------------------------------------------------------------- Core ML


@_skip_without("coreml")
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_coreml_package_is_converted_and_checked_structurally(tiny, tmp_path, precision):
    from mobile import coreml

    dest = tmp_path / f"m-{precision}.mlpackage"
    facts = coreml.build(tiny, precision, dest)
    assert dest.is_dir() and facts["input"]["shape"] == [1, 3, SIZE, SIZE] and facts["output"] == "logit"
    assert facts["ops"].get("conv") == 3 and facts["ops"].get("linear") == 1
    assert facts["fp16_weight_share"] == (1.0 if precision == "fp16" else 0.0)
    assert facts["metadata"]["cxr_edge.precision"] == precision
    assert file_bytes(dest) == sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) > 0
    digest = file_sha256(dest)
    moved = tmp_path / "elsewhere" / dest.name
    shutil.copytree(dest, moved)
    assert len(digest) == 64 and file_sha256(moved) == digest  # over relative paths: the package can move
    inner = next(f for f in sorted(moved.rglob("*")) if f.is_file())
    inner.write_bytes(inner.read_bytes() + b"\0")
    assert file_sha256(moved) != digest  # and any file's bytes count


@_skip_without("coreml")
@pytest.mark.skipif(platform.system() == "Darwin", reason="off macOS only: Core ML runs on macOS")
def test_coreml_off_macos_says_why_it_cannot_predict(tiny, tmp_path):
    from mobile import coreml

    reason = coreml.unverified_reason()
    assert reason and "macOS" in reason
    coreml.build(tiny, "fp16", tmp_path / "m.mlpackage")
    with pytest.raises(BackendUnavailable, match="macOS"):
        coreml.load(tmp_path / "m.mlpackage")


# ------------------------------------------------------------------------------- shared behaviour


def test_a_missing_mobile_extra_is_a_skip_with_the_install_hint():
    for name in ("executorch", "litert", "coreml"):
        fmt = dataclasses.replace(FORMATS[name], requires=("cxr_edge_no_such_module",))
        reason = fmt.missing()
        assert "pip install 'cxr-edge[mobile]'" in reason and "just setup-mobile" in reason
        assert "host" in FORMATS[name].note


def test_pt2e_settings_follow_the_quant_config_and_reject_what_pt2e_lacks():
    from mobile.common import pt2e_settings

    assert pt2e_settings(QuantConfig())["activation_observer"] == "MinMaxObserver"
    s = pt2e_settings(QuantConfig(calibration="entropy", per_channel=False, symmetric_activations=True))
    assert s["activation_observer"] == "HistogramObserver"
    assert "per-tensor" in s["weights"] and "symmetric" in s["activations"]
    with pytest.raises(ExportError, match="percentile"):
        pt2e_settings(QuantConfig(calibration="percentile"))
