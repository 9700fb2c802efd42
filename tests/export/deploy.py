"""Helpers of the predict and package tests: the tiny run of tests/export/conftest.py exported once per test
session to ONNX and (where installed) OpenVINO at FP32 and INT8, kept on disk so that every test module that
asks reuses it, and a benchmark of them with short settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

HAS_OPENVINO = bool(importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"))
FORMATS = ["onnx"] + (["openvino"] if HAS_OPENVINO else [])


def deploy_artifacts(tmp_path_factory, run) -> Path:
    """ONNX (and OpenVINO) FP32 and INT8 of ``run`` in one export folder, exported on first use."""
    from export.manifest import read_manifest
    from export.pipeline import export_runs

    out = tmp_path_factory.getbasetemp() / "deploy-artifacts"
    want = len(FORMATS) * 2
    if len([r for r in read_manifest(out) if r.get("status") == "ok"]) < want:
        records = export_runs([run], out, FORMATS, ["fp32", "int8"], {}, progress=False)
        assert [r["status"] for r in records] == ["ok"] * want, [r.get("error") for r in records]
    return out


def deploy_results(tmp_path_factory, artifacts: Path) -> Path:
    """A real `cxr-edge bench` of ``artifacts`` with short settings (fidelity columns included)."""
    from typer.testing import CliRunner

    from cli.main import app

    out = tmp_path_factory.getbasetemp() / "deploy-results"
    if not (out / "results.json").is_file():
        args = ["bench", str(artifacts), "--out", str(out), "--batches", "1,8", "--budget-s", "0.2", "--min-iters",
                "3", "--warmup", "1", "--rounds", "2", "--n-boot", "50", "--threads", "2", "--no-progress",
                "--fidelity-n", "2", "--fidelity-steps", "4"]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
    return out


def image_paths(run) -> list[Path]:
    return [Path(s.path) for s in run.split().samples("test")]


def bench_probabilities(record: dict, artifacts: Path, run, paths: list[Path]) -> np.ndarray:
    """Probabilities of the benchmark's own predictor for ``record`` on ``paths`` (decoded as training did)."""
    from core.data import Sample, load_images
    from export.base import predict_batched
    from export.pipeline import load_artifact

    images, kept, _ = load_images([Sample(str(p), 0, "") for p in paths], run.preprocess, progress=False)
    assert len(kept) == len(paths)
    logits = predict_batched(load_artifact(record, artifacts, threads=2), run.preprocess.normalize(images), 8)
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
