"""Which rows a device gets, and the CUDA paths: run where a GPU is present, skipped with the reason here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench import backends
from tests.bench.conftest import fast_config

NO_GPU = None if torch.cuda.is_available() else "no CUDA GPU visible to torch on this machine"


def onnx_record(artifacts):
    manifest = json.loads((artifacts / "manifest.json").read_text())
    return next(r for r in manifest["artifacts"] if r["precision"] == "fp32")


def test_cpu_gets_one_pytorch_row_and_compile_adds_its_twin():
    model = torch.nn.Linear(1, 1)
    assert [(t.precision, t.runtime, t.reference) for t in backends.torch_targets("m", model, "cpu")] == \
        [("fp32", "torch eager", True)]
    rows = backends.torch_targets("m", model, "cpu", compile=True)
    assert [t.runtime for t in rows] == ["torch eager", "torch.compile"] and not rows[1].reference


def test_cuda_pytorch_rows_are_fp32_fp16_bf16_channels_last_eager_and_graphed():
    rows = backends.torch_targets("m", torch.nn.Linear(1, 1), "cuda")
    assert [t.precision for t in rows] == ["fp32", "fp16", "bf16"] * 2
    assert all("channels-last" in t.runtime for t in rows[1:3] + rows[4:]) and rows[0].sync is backends.cuda_sync
    assert [t.reference for t in rows] == [True] + [False] * 5
    assert rows[3].runtime == "torch eager, CUDA graph" and all(t.runtime.endswith("CUDA graph") for t in rows[3:])
    assert len({t.runtime for t in rows}) == 6


def test_cuda_graph_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        backends.TorchRunner(torch.nn.Linear(1, 1), "cpu", cuda_graph=True)


def test_onnx_on_cuda_names_both_execution_providers(clean_artifacts):
    rows = backends.artifact_targets(onnx_record(clean_artifacts), clean_artifacts, "cuda", 2)
    assert [t.runtime for t in rows] == ["onnxruntime CUDA", "onnxruntime TensorRT"]
    have = backends.ort_providers()
    for t, provider in zip(rows, ("CUDAExecutionProvider", "TensorrtExecutionProvider")):
        if provider in have:
            assert t.load is not None and t.skip_reason is None
        else:
            assert t.load is None and provider in t.skip_reason and "onnxruntime-gpu" in t.skip_reason


@pytest.mark.openvino
def test_openvino_on_cuda_needs_an_openvino_gpu_device(clean_artifacts):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    rec = {**onnx_record(clean_artifacts), "format": "openvino", "path": "resnet18/onnx-fp32.onnx"}
    (t,) = backends.artifact_targets(rec, clean_artifacts, "cuda", 2)
    assert t.runtime == "OpenVINO GPU"
    if "GPU" not in backends.openvino_devices():
        assert "sees no GPU device" in t.skip_reason and "Intel GPUs" in t.skip_reason


def test_a_record_whose_file_is_gone_is_skipped(clean_artifacts):
    rec = {**onnx_record(clean_artifacts), "path": "resnet18/gone.onnx"}
    (t,) = backends.artifact_targets(rec, clean_artifacts, "cpu", 2)
    assert t.skip_reason and "does not exist; export again" in t.skip_reason


def test_no_verify_artifacts_are_benchmarked_with_their_warning(clean_artifacts):
    rec = {**onnx_record(clean_artifacts), "verified": False, "warning": "differs beyond tolerance"}
    (t,) = backends.artifact_targets(rec, clean_artifacts, "cpu", 2)
    assert t.load is not None and t.extra == {"warning": "differs beyond tolerance"}


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error():
    from bench.runner import BenchConfig

    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        BenchConfig(device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU is not None, reason=NO_GPU or "")
def test_torch_runner_on_cuda_matches_fp32_within_half_precision():
    from core.registry import get

    model = get("resnet18").build(32).eval()
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ref = backends.TorchRunner(model, "cpu").predict(x)
    for amp in (None, "fp16", "bf16"):
        for graph in (False, True):
            runner = backends.TorchRunner(model, "cuda", amp_dtype=amp, channels_last=amp is not None, cuda_graph=graph)
            out = runner.predict(x)
            assert out.shape == (4,) and np.allclose(out, ref, atol=1e-3 if amp is None else 0.1)
            if graph:  # a replay reads the new input, not the one captured; a new shape gets its own graph
                assert np.allclose(runner.predict(x[::-1].copy()), out[::-1], atol=1e-3 if amp is None else 0.1)
                assert runner.predict(x[:2]).shape == (2,) and len(runner.graphs) == 2


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU is not None, reason=NO_GPU or "")
def test_bench_on_cuda_end_to_end(clean_artifacts):
    from bench.runner import bench_artifacts

    doc = bench_artifacts(clean_artifacts, fast_config(device="cuda"), progress=False)
    rows = {(r["format"], r["precision"], r["runtime"]): r for r in doc["rows"]}
    assert rows[("pytorch", "fp32", "torch eager")]["status"] == "ok"
    fp16 = rows[("pytorch", "fp16", "torch eager autocast fp16, channels-last")]
    assert fp16["status"] == "ok" and fp16["agreement"] >= 0.9 and fp16["gpu_peak_mib"] > 0
    assert doc["environment"]["gpu"]["name"]
    assert all(r["status"] in ("ok", "skipped") for r in doc["rows"]), [r.get("error") for r in doc["rows"]]


def test_torch_runner_leaves_the_shared_model_alone():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(1))
    model(torch.zeros(1, 3, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner = backends.TorchRunner(model, "cpu", channels_last=True)
    out = runner.predict(np.zeros((2, 3, 8, 8), np.float32))
    assert out.shape == (2,) and runner.model is not model
    assert all(torch.equal(before[k], v) and v.is_contiguous() for k, v in model.state_dict().items())
