"""A tiny trained run shared by the export tests, its export context and one real ONNX export of it.

ResNet-18 at 32 px, 2 epochs on the 60-image synthetic set: about ten seconds on two cores, and its
validation probabilities are spread wide enough for INT8 parity to mean something (MobileNet-V3
after so little training scores every image within 0.001 of its threshold).
"""

from __future__ import annotations

from pathlib import Path

import pytest

BACKBONE = "resnet18"


def tiny_run(tmp_path_factory: pytest.TempPathFactory, split):
    """Train once per test session (shared with tests/cli), then load the run folder."""
    from core.datasets import load_sides
    from core.registry import get
    from core.runs import is_complete, load_run
    from core.train import TrainConfig, fit

    run_dir = tmp_path_factory.getbasetemp() / "export-runs" / BACKBONE
    if not is_complete(run_dir):
        config = TrainConfig(backbone=BACKBONE, size=32, epochs=2, batch_size=8, lr=5e-3, seed=7, threads=2)
        sides = load_sides(split, get(BACKBONE).preprocess(config.size), sides=("train", "val"), progress=False)[0]
        fit(config, split, sides, run_dir)
    return load_run(run_dir)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_split):
    return tiny_run(tmp_path_factory, tiny_split)


@pytest.fixture(scope="session")
def onnx_ctx(tmp_path_factory, trained_run, exported):
    """An export context whose FP32 ONNX hub is the exported one (so FP32 builds here are a copy)."""
    import shutil

    from export.base import QuantConfig
    from export.pipeline import make_context

    records, out = exported
    fp32 = next(r for r in records if r["precision"] == "fp32")
    ctx = make_context(trained_run, QuantConfig.preset("onnx"), tmp_path_factory.mktemp("onnx-work"))
    hub = ctx.work_dir / "hub" / "onnx-fp32.onnx"
    hub.parent.mkdir()
    shutil.copyfile(out / fp32["path"], hub)
    ctx.onnx_fp32, ctx.facts["onnx_fp32"] = hub, fp32["facts"]
    return ctx


@pytest.fixture(scope="session")
def exported(tmp_path_factory, trained_run) -> tuple[list[dict], Path]:
    """The real pipeline, once: ONNX at FP32, FP16 and INT8."""
    from export.pipeline import export_runs

    out = tmp_path_factory.mktemp("artifacts")
    records = export_runs([trained_run], out, ["onnx"], ["fp32", "fp16", "int8"], {}, progress=False)
    return records, out
