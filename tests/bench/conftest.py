"""A tiny trained run (shared with the export tests) exported to ONNX at FP32, FP16 and INT8, and a
manifest beside it that also holds the rows a benchmark must survive: a failed export, an artifact
that cannot be loaded, a TensorRT engine on a CPU machine and an unverified mobile artifact."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.export.conftest import tiny_run


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory, tiny_split):
    return tiny_run(tmp_path_factory, tiny_split)


@pytest.fixture(scope="session")
def clean_artifacts(tmp_path_factory, bench_run) -> Path:
    """ONNX FP32/FP16/INT8 of the tiny run, exported by the real pipeline."""
    from export.pipeline import export_runs

    out = tmp_path_factory.mktemp("bench-artifacts")
    records = export_runs([bench_run], out, ["onnx"], ["fp32", "fp16", "int8"], {}, progress=False)
    assert [r["status"] for r in records] == ["ok"] * 3, [r.get("error") for r in records]
    return out


@pytest.fixture(scope="session")
def messy_artifacts(tmp_path_factory, clean_artifacts) -> Path:
    """The clean artifacts plus records that must become skipped or failed rows, never a crash."""
    from core import io

    out = tmp_path_factory.mktemp("bench-messy")
    shutil.copytree(clean_artifacts, out, dirs_exist_ok=True)
    manifest = json.loads((out / "manifest.json").read_text())
    fp32 = next(r for r in manifest["artifacts"] if r["precision"] == "fp32")
    (out / "resnet18" / "broken.onnx").write_bytes(b"not an onnx file")
    (out / "resnet18" / "tensorrt-fp16.engine").write_bytes(b"engine bytes")
    manifest["artifacts"] += [
        {**fp32, "format": "openvino", "precision": "int8", "status": "failed", "path": None,
         "error": "ParityError: differs from PyTorch beyond tolerance"},
        {**fp32, "precision": "int8-broken", "path": "resnet18/broken.onnx", "bytes": 16,
         "sha256": hashlib.sha256(b"not an onnx file").hexdigest()},
        {**fp32, "format": "tensorrt", "precision": "fp16", "path": "resnet18/tensorrt-fp16.engine", "bytes": 12},
        {**fp32, "format": "coreml", "precision": "fp16", "path": "resnet18/model.mlpackage", "verified": False,
         "unverified_reason": "Core ML cannot predict on Linux", "note": "built with coremltools 9.0"},
    ]
    io.write_json(out / "manifest.json", manifest)
    return out


def fast_config(**overrides):
    from bench.latency import LatencyConfig
    from bench.runner import BenchConfig

    lat = LatencyConfig(batches=(1, 4), warmup=1, min_iters=3, budget_s=0.2, rounds=2)
    return BenchConfig(**{"latency": lat, "n_boot": 50, "threads": 2, **overrides})


def copy_artifacts(src: Path, dst: Path, run) -> Path:
    """A copy of an artifacts folder somewhere else, its records naming ``run`` relative to the copy."""
    from core import io

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["artifacts"] = [{**r, "source_run": io.portable_path(run.path, dst)} for r in manifest["artifacts"]]
    io.write_json(dst / "manifest.json", manifest)
    return dst
